//! celeriac's next fire times against the pinned Python Celery's
//! `celery.schedules` (`crontab`, and `schedule` with and without `relative`),
//! for thousands of random expressions, intervals, zones and start instants
//! (most near the daylight-saving changes of Europe/Berlin and
//! America/New_York). `tests/python/beat_schedule_oracle.py` computes Python's
//! answers in one run per test.
//!
//! Every difference must be one of the cases where Python is wrong, which the
//! crate README documents; anything else fails the test, listing the cases.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed assertion

use std::collections::BTreeMap;
use std::process::Command;

use celeriac_beat::schedule::{Crontab, Interval};
use jiff::civil::DateTime;
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

/// Why celeriac and Python may differ (see beat/README.md, "Crontabs and
/// daylight saving, against Python").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Known {
    /// Fall back: an every-hour crontab runs in the second pass of the
    /// repeated hour; Python skips that pass (celery #10107).
    SecondPassOfEveryHour,
    /// Spring forward: a time in the gap runs at the shifted instant even when
    /// the last run lies after the gap's wall clock but before that instant;
    /// Python reads the wall clock and skips the day's run.
    GapShiftedRunKept,
    /// Fall back: with the last run in the second pass of the repeated hour,
    /// Python's next run is the same wall time in the *first* pass, an hour
    /// in the past, so celery beat finds the entry due on every tick and sends
    /// it again and again until the hour is over.
    NextBeforeLastRun,
}

fn wall_kind(tz: &TimeZone, wall: DateTime) -> AmbiguousOffset {
    tz.to_ambiguous_timestamp(wall).offset()
}

/// The wall-clock reading of `t` with the offset in force `back` before it.
fn wall_with_earlier_offset(tz: &TimeZone, t: Timestamp, back: SignedDuration) -> DateTime {
    tz.to_offset(t.checked_sub(back).unwrap()).to_datetime(t)
}

fn matches(cron: &Crontab, wall: DateTime) -> bool {
    cron.next_wall_time(wall) == Some(wall)
}

fn classify(cron: &Crontab, tz: &TimeZone, after: Timestamp, ours: Timestamp, python: Timestamp) -> Option<Known> {
    if python <= after {
        return Some(Known::NextBeforeLastRun);
    }
    let our_wall = tz.to_datetime(ours);
    if ours < python && cron.every_hour() {
        if let AmbiguousOffset::Fold { after: second, .. } = wall_kind(tz, our_wall) {
            if second.to_timestamp(our_wall).unwrap() == ours {
                return Some(Known::SecondPassOfEveryHour);
            }
        }
    }
    if ours < python {
        for back in [1, 2, 3].map(SignedDuration::from_hours) {
            let wall = wall_with_earlier_offset(tz, ours, back);
            if matches!(wall_kind(tz, wall), AmbiguousOffset::Gap { .. }) && matches(cron, wall) {
                return Some(Known::GapShiftedRunKept);
            }
        }
    }
    None
}

/// The oracle's seed: `CELERIAC_SCHEDULE_SEED` to explore, else a fixed one.
fn seed() -> String {
    std::env::var("CELERIAC_SCHEDULE_SEED").unwrap_or_else(|_| "6".into())
}

/// The oracle's JSON lines for `args`.
fn oracle(args: &[&str]) -> Option<Vec<Value>> {
    let python = celeriac_tests::or_skip("the project's Python", celeriac_tests::python())?;
    let script = celeriac_tests::repo_root().join("tests/python/beat_schedule_oracle.py");
    let out = Command::new(python).arg(script).args(args).output().unwrap();
    assert!(out.status.success(), "oracle failed: {}", String::from_utf8_lossy(&out.stderr));
    Some(String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect())
}

#[test]
fn interval_next_fire_times_match_pythons_celery() {
    let Some(cases) = oracle(&["--intervals", "--cases", "4000", "--seed", &seed()]) else {
        return;
    };
    let mut differ = Vec::new();
    for case in &cases {
        let tz = TimeZone::get(case["tz"].as_str().unwrap()).unwrap();
        let every = SignedDuration::from_secs(case["every"].as_i64().unwrap());
        let interval = Interval { every, relative: case["relative"].as_bool().unwrap() };
        let after = instant(case["after"].as_f64().unwrap());
        let python = instant(case["next"].as_f64().unwrap());
        let ours = interval.next_after(after, &tz).unwrap();
        if ours != python {
            differ.push(format!("{case}: celeriac {ours} ({})", tz.to_datetime(ours)));
        }
    }
    assert!(differ.is_empty(), "{} of {} differ:\n{}", differ.len(), cases.len(), differ.join("\n"));
}

fn instant(seconds: f64) -> Timestamp {
    Timestamp::from_microsecond((seconds * 1e6).round() as i64).unwrap()
}

#[test]
fn crontab_next_fire_times_match_pythons_celery() {
    let Some(cases) = oracle(&["--cases", "6000", "--seed", &seed()]) else {
        return;
    };
    let mut zones: BTreeMap<String, TimeZone> = BTreeMap::new();
    let (mut same, mut known) = (0usize, BTreeMap::<Known, Vec<String>>::new());
    let mut unexplained = Vec::new();
    for case in &cases {
        let expr = case["cron"].as_str().unwrap();
        let zone = case["tz"].as_str().unwrap();
        let tz = zones.entry(zone.to_owned()).or_insert_with(|| TimeZone::get(zone).unwrap()).clone();
        let cron = Crontab::parse(expr).unwrap();
        let after = instant(case["after"].as_f64().unwrap());
        let python = instant(case["next"].as_f64().unwrap());
        let ours = cron.next_after(after, &tz).unwrap();
        let show = || {
            format!(
                "{expr:?} in {zone} after {} ({}): celeriac {} ({}), Python {} ({})",
                after,
                tz.to_datetime(after),
                ours,
                tz.to_datetime(ours),
                python,
                tz.to_datetime(python)
            )
        };
        if ours == python {
            same += 1;
        } else {
            match classify(&cron, &tz, after, ours, python) {
                Some(kind) => known.entry(kind).or_default().push(show()),
                None => unexplained.push(show()),
            }
        }
    }
    for (kind, cases) in &known {
        eprintln!("{kind:?}: {} cases, e.g. {}", cases.len(), cases[0]);
    }
    assert!(same > 5000, "only {same} cases agree");
    assert!(unexplained.is_empty(), "{} unexplained differences:\n{}", unexplained.len(), unexplained.join("\n"));
}

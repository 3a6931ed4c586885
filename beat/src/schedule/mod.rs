//! Schedules and their next fire times: intervals, Celery crontabs in a time
//! zone, and RedBeat's rrules (one-off runs among them).
//!
//! A schedule only answers "which slot comes after this one?"; what to do with
//! slots that were missed, and when to send, is the scheduler's business.

pub mod crontab;
pub mod interval;
pub mod rrule;

use celeriac_config::ScheduleSetting;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

pub use crontab::Crontab;
pub use interval::{parse_duration, Interval};
pub use rrule::{Frequency, RRule};

/// `t` to whole microseconds, the precision RedBeat (Python's datetime)
/// stores: slots are kept at it so that every beat, and every restart, derives
/// the same slots (and task ids) from the stored state.
pub fn to_micros(t: Timestamp) -> Timestamp {
    Timestamp::from_microsecond(t.as_microsecond()).unwrap_or(t)
}

/// A duration to the nearest whole microsecond (at least one): seconds
/// written as a float (RedBeat's `every`) read back to the same interval,
/// though `1.000001` is 1.000000999... seconds as a float.
pub fn duration_to_micros(d: SignedDuration) -> SignedDuration {
    let micros = (d.as_nanos().saturating_add(500)) / 1000;
    // Clamped into i64 range: the cast is exact.
    SignedDuration::from_micros(micros.clamp(1, i128::from(i64::MAX)) as i64)
}

/// When an entry runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// Every so often (Celery's `schedule`).
    Interval(Interval),
    /// At wall-clock times in a zone (Celery's `crontab`).
    Crontab(Crontab),
    /// A recurrence from a start time, or a single run (RedBeat's `rrule`).
    RRule(RRule),
}

impl Schedule {
    /// Reads a `schedule` setting: seconds, or text that is an RFC 3339 instant
    /// (a one-off run), a five-field crontab, an `@hourly`-style shortcut, or a
    /// duration (`"30s"`, `"1h30m"`).
    pub fn parse(setting: &ScheduleSetting, relative: bool) -> Result<Schedule, String> {
        let text = match setting {
            ScheduleSetting::Seconds(secs) => {
                let every = SignedDuration::try_from_secs_f64(*secs)
                    .ok()
                    .filter(|d| d.is_positive() && *d <= crate::redbeat::MAX_INTERVAL)
                    .map(duration_to_micros)
                    .ok_or_else(|| {
                        format!(
                            "{} is not a positive number of seconds, at most 100 years",
                            crate::entry::number(*secs)
                        )
                    })?;
                return Ok(Schedule::Interval(Interval { every, relative }));
            }
            ScheduleSetting::Text(text) => text.trim(),
        };
        if let Some(expanded) = shortcut(text) {
            return Ok(Schedule::Crontab(Crontab::parse(expanded)?));
        }
        if text.split_whitespace().count() == 5 {
            return Crontab::parse(text).map(Schedule::Crontab).map_err(|e| format!("crontab {text:?}: {e}"));
        }
        let looks_like_date = text.len() >= 10 && text.as_bytes()[4] == b'-' && text.as_bytes()[7] == b'-';
        if looks_like_date {
            return match text.parse::<Timestamp>() {
                Ok(at) => Ok(Schedule::RRule(RRule::once(at))),
                Err(e) => Err(format!(
                    "{text:?} is not an RFC 3339 instant such as 2026-03-01T12:00:00Z or 2026-03-01T13:00:00+01:00 \
                     (with its UTC offset): {e}"
                )),
            };
        }
        parse_duration(text)
            .and_then(|every| {
                if every > crate::redbeat::MAX_INTERVAL {
                    return Err(format!("duration {text:?} is longer than 100 years"));
                }
                Ok(Schedule::Interval(Interval { every: duration_to_micros(every), relative }))
            })
            .map_err(|e| {
                format!(
                "{e}; a schedule is seconds, a duration, a five-field crontab (\"*/5 * * * *\") or an RFC 3339 instant"
            )
            })
    }

    /// The first slot after `last`, the previous slot (`None`: the entry never
    /// ran, which only rrules answer: with their first occurrence). Crontabs
    /// and relative intervals read wall clocks in `tz`.
    /// A slot is always later than the one before it (a schedule that cannot
    /// move forward has no more slots), so no caller can loop on one.
    pub fn next_after(&self, last: Option<Timestamp>, tz: &TimeZone) -> Option<Timestamp> {
        let next = match (self, last) {
            (Schedule::RRule(rule), last) => rule.next_after(last),
            (_, None) => None,
            (Schedule::Interval(interval), Some(last)) => interval.next_after(last, tz),
            (Schedule::Crontab(cron), Some(last)) => cron.next_after(last, tz),
        };
        next.filter(|n| last.is_none_or(|l| *n > l))
    }

    /// The slots after `last` and at or before `now`: the latest, how many,
    /// and the most recent `limit` of them (oldest first).
    pub fn due(&self, last: Option<Timestamp>, now: Timestamp, tz: &TimeZone, limit: usize) -> Option<DueSlots> {
        let first = self.next_after(last, tz).filter(|t| *t <= now)?;
        let limit = limit.max(1);
        if let (Schedule::Interval(interval), Some(last)) = (self, last) {
            if let Some(latest) = interval.latest_at_or_before(last, now) {
                let every = interval.every.as_nanos().max(1);
                let count = now.duration_since(last).as_nanos() / every;
                let count = usize::try_from(count).unwrap_or(usize::MAX);
                let mut recent = Vec::new();
                for k in (0..count.min(limit)).rev() {
                    // In nanoseconds as i128: k * every may exceed what a
                    // duration holds, the slot itself (after `last`) cannot.
                    let back = every.checked_mul(i128::try_from(k).ok()?)?;
                    recent.push(Timestamp::from_nanosecond(latest.as_nanosecond().checked_sub(back)?).ok()?);
                }
                return Some(DueSlots { latest, count, recent });
            }
        }
        // Walk the slots; after a long downtime of a frequent schedule, stop
        // counting one by one and take the tail from a window before `now`
        // that holds enough of them (the count is then a lower bound).
        let walk = |from: Timestamp, cap: usize| {
            let mut recent = std::collections::VecDeque::with_capacity(limit.min(1024));
            recent.push_back(from);
            let (mut count, mut latest) = (1usize, from);
            while let Some(next) = self.next_after(Some(latest), tz).filter(|t| *t <= now) {
                latest = next;
                count += 1;
                if recent.len() == limit {
                    recent.pop_front();
                }
                recent.push_back(next);
                if count >= cap {
                    return (DueSlots { latest, count, recent: recent.into() }, true);
                }
            }
            (DueSlots { latest, count, recent: recent.into() }, false)
        };
        // The first WALK_CAP slots: the answer when there are no more, and
        // the fallback when no window before `now` holds the latest ones
        // (the schedule then catches up WALK_CAP slots a tick).
        let (from_first, capped) = walk(first, WALK_CAP);
        if !capped {
            return Some(from_first);
        }
        // Windows before `now`, grown by the density of slots the last one
        // held, so the walk takes about twice `limit` steps (an hourly
        // schedule last run centuries ago is not walked hour by hour).
        const MAX_WINDOW_HOURS: i64 = 24 * 366 * 30;
        // `lo`: a window that held fewer than `limit` slots; `hi`: one whose
        // walk ran past its cap (denser than the growth assumed).
        let (mut lo, mut hi, mut hours) = (0i64, i64::MAX, 1i64);
        loop {
            let from = now.checked_sub(SignedDuration::from_hours(hours)).ok()?.max(first);
            let held = match self.next_after(Some(from), tz).filter(|t| *t <= now) {
                Some(start) => match walk(start, limit.saturating_mul(8).max(WALK_CAP)) {
                    (due, false) => Some(due),
                    (_, true) => None,
                },
                None => Some(DueSlots { latest: from, count: 0, recent: Vec::new() }),
            };
            match held {
                Some(mut due) if due.count >= limit || from == first || hours >= MAX_WINDOW_HOURS => {
                    if due.recent.is_empty() {
                        return Some(from_first);
                    }
                    due.count = due.count.max(WALK_CAP);
                    return Some(due);
                }
                Some(due) => {
                    lo = hours;
                    let factor = i64::try_from(limit / due.count.max(1)).unwrap_or(i64::MAX).saturating_mul(2).max(24);
                    hours = hours.saturating_mul(factor).min(MAX_WINDOW_HOURS).min(hi.saturating_sub(1));
                }
                None => {
                    hi = hours;
                    hours = lo + (hi - lo) / 2;
                }
            }
            if hours <= lo {
                return Some(from_first);
            }
        }
    }

    /// How the schedule reads to a person.
    pub fn describe(&self) -> String {
        match self {
            Schedule::Interval(i) => i.describe(),
            Schedule::Crontab(c) => format!("crontab {c}"),
            Schedule::RRule(r) => r.describe(),
        }
    }

    /// Whether the app or entry time zone matters to this schedule.
    pub fn uses_time_zone(&self) -> bool {
        match self {
            Schedule::Interval(i) => i.relative,
            Schedule::Crontab(_) => true,
            Schedule::RRule(_) => false,
        }
    }
}

/// How many due slots are counted one by one before [`Schedule::due`]
/// looks only at a window before now.
const WALK_CAP: usize = 10_000;

/// The slots that came due since the last one.
#[derive(Debug, Clone, PartialEq)]
pub struct DueSlots {
    /// The most recent due slot.
    pub latest: Timestamp,
    /// How many slots are due, the latest included (at least this many when
    /// there were more than 10 000).
    pub count: usize,
    /// The most recent due slots, oldest first, at most the asked limit.
    pub recent: Vec<Timestamp>,
}

fn shortcut(text: &str) -> Option<&'static str> {
    Some(match text {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Schedule, String> {
        Schedule::parse(&ScheduleSetting::Text(text.into()), false)
    }

    #[test]
    fn text_is_read_by_its_shape() {
        assert!(matches!(parse("30s"), Ok(Schedule::Interval(_))));
        assert!(matches!(parse("*/5 9-17 * * mon-fri"), Ok(Schedule::Crontab(_))));
        assert!(matches!(parse("@hourly"), Ok(Schedule::Crontab(_))));
        assert!(matches!(parse("2026-03-01T12:00:00Z"), Ok(Schedule::RRule(r)) if r.is_once()));
        assert!(parse("2026-03-01T12:00:00").unwrap_err().contains("UTC offset"));
        assert!(parse("*/5 * * * 8").unwrap_err().contains("day_of_week"));
        assert!(parse("often").unwrap_err().contains("crontab"));
    }

    #[test]
    fn a_year_of_downtime_of_a_minutely_crontab_is_found_quickly() {
        let cron = parse("* * * * *").unwrap();
        let last: Timestamp = "2025-01-01T00:00:00Z".parse().unwrap();
        let now: Timestamp = "2026-01-01T00:00:30Z".parse().unwrap();
        let due = cron.due(Some(last), now, &TimeZone::UTC, 100).unwrap();
        assert_eq!(due.latest.to_string(), "2026-01-01T00:00:00Z");
        assert_eq!((due.recent.len(), due.recent[0].to_string()), (100, "2025-12-31T22:21:00Z".to_string()));
        assert!(due.count >= 10_000);
    }

    #[test]
    fn a_relative_hourly_interval_last_run_centuries_ago_is_caught_up_from_a_window() {
        // Found by the beat_entry fuzz target: the window search walked
        // thirty years of hourly slots one by one.
        let s = Schedule::parse(&ScheduleSetting::Seconds(3600.0), true).unwrap();
        let tz = TimeZone::get("America/New_York").unwrap();
        let last: Timestamp = "1013-10-25T01:30:00Z".parse().unwrap();
        let now: Timestamp = "2026-12-03T15:10:00Z".parse().unwrap();
        let due = s.due(Some(last), now, &tz, 10_000).unwrap();
        assert_eq!(due.latest.to_string(), "2026-12-03T15:00:00Z");
        assert_eq!(due.recent.len(), 10_000);
        assert!(due.recent.windows(2).all(|w| w[0] < w[1]), "oldest first, each later");
        assert!(due.count >= 10_000);
    }

    #[test]
    fn due_slots_after_downtime() {
        let s = Schedule::parse(&ScheduleSetting::Seconds(10.0), false).unwrap();
        let last: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let now: Timestamp = "2026-01-01T00:01:05Z".parse().unwrap();
        let due = s.due(Some(last), now, &TimeZone::UTC, 3).unwrap();
        assert_eq!((due.count, due.latest.to_string()), (6, "2026-01-01T00:01:00Z".to_string()));
        assert_eq!(due.recent.len(), 3);
        assert_eq!(due.recent[0].to_string(), "2026-01-01T00:00:40Z");
        let cron = parse("*/20 * * * *").unwrap();
        let now: Timestamp = "2026-01-01T01:05:00Z".parse().unwrap();
        let due = cron.due(Some(last), now, &TimeZone::UTC, 10).unwrap();
        assert_eq!((due.count, due.recent.len()), (3, 3));
        assert!(cron.due(Some(now), now, &TimeZone::UTC, 10).is_none());
    }

    #[test]
    fn slots_only_move_forward_and_ancient_last_runs_do_not_hang() {
        // A relative interval shorter than its one-second resolution.
        let tiny = Interval { every: SignedDuration::from_micros(1), relative: true };
        let s = Schedule::Interval(tiny);
        let t: Timestamp = "2026-01-01T00:00:00.5Z".parse().unwrap();
        let next = s.next_after(Some(t), &TimeZone::UTC).unwrap();
        assert_eq!(next.to_string(), "2026-01-01T00:00:01Z");
        // A last run in year -9000 and a microsecond interval: the latest slot
        // by arithmetic, not by walking.
        let ancient: Timestamp = "-009000-01-01T00:00:00Z".parse().unwrap();
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let every = Schedule::Interval(Interval { every: SignedDuration::from_micros(1), relative: false });
        let due = every.due(Some(ancient), now, &TimeZone::UTC, 10_000).unwrap();
        assert_eq!((due.recent.len(), *due.recent.last().unwrap()), (10_000, due.latest));
        assert!(now.duration_since(due.latest) < SignedDuration::from_micros(1));
        let started = std::time::Instant::now();
        for text in ["* * * * *", "0 0 29 2 mon"] {
            let cron = parse(text).unwrap();
            let due = cron.due(Some(ancient), now, &TimeZone::UTC, 10_000);
            assert!(due.is_some_and(|d| d.latest <= now), "{text}");
        }
        let relative = Schedule::Interval(Interval { every: SignedDuration::from_secs(1), relative: true });
        assert!(relative.due(Some(ancient), now, &TimeZone::UTC, 100).is_some());
        // At the very start of time a crontab may find no slot; it returns.
        let _ = parse("* * * * *").unwrap().due(Some(Timestamp::MIN), now, &TimeZone::UTC, 100);
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
        // A century-long interval near the end of time has no next slot.
        let long = Schedule::Interval(Interval { every: crate::redbeat::MAX_INTERVAL, relative: false });
        assert_eq!(long.next_after(Some(Timestamp::MAX), &TimeZone::UTC), None);
        assert!(long.due(Some(Timestamp::MIN), Timestamp::MAX, &TimeZone::UTC, 10_000).is_some());
    }
}

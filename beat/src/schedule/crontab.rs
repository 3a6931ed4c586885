//! Celery's crontab: five fields (`minute hour day_of_month month_of_year
//! day_of_week`) read as `celery.schedules.crontab` reads them, and the next
//! fire time computed in a time zone, daylight-saving changes included.
//!
//! Field syntax is Celery's: `*`, `*/step`, `a`, `a-b` (a range may wrap:
//! `fri-mon`), `a-b/step`, lists of these; day of week 0 = Sunday to 6 =
//! Saturday, with names (`mon`, `monday`); months 1-12 with names (`jan`). As in
//! Celery, a day must match the day of month, the month *and* the day of week
//! (classic cron runs when either day field matches).
//!
//! What a crontab means in a zone with daylight-saving changes (see the crate
//! README for the comparison with Python):
//! - a wall-clock time that does not exist (the spring-forward gap) runs at
//!   the instant it names with the offset before the change (`02:30` in
//!   Europe/Berlin's gap runs at 03:30 CEST), as RFC 5545 and Python's
//!   `zoneinfo` read it;
//! - a wall-clock time that occurs twice (fall back) runs at its first
//!   occurrence, and at its second one too when the schedule runs every hour
//!   (hour field `*`): an hourly job runs every real hour, a daily 02:30 job runs
//!   once.

use std::fmt;

use jiff::civil::{Date, DateTime};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{SignedDuration, Timestamp};
use serde_json::Value as Json;

/// Which of the five fields, with its range and names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// Minute, 0-59.
    Minute,
    /// Hour, 0-23.
    Hour,
    /// Day of the month, 1-31.
    DayOfMonth,
    /// Month, 1-12 or `jan`-`dec`.
    MonthOfYear,
    /// Day of the week, 0 (Sunday) - 6, or `sun`-`sat`.
    DayOfWeek,
}

const DAY_NAMES: [&str; 7] = ["sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"];
const MONTH_NAMES: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];
/// Longest month lengths (February of a leap year), as Celery checks them.
const MAX_DAYS: [u8; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

impl Field {
    /// Celery's name of the field.
    pub fn name(self) -> &'static str {
        match self {
            Field::Minute => "minute",
            Field::Hour => "hour",
            Field::DayOfMonth => "day_of_month",
            Field::MonthOfYear => "month_of_year",
            Field::DayOfWeek => "day_of_week",
        }
    }

    fn range(self) -> (u8, u8) {
        match self {
            Field::Minute => (0, 59),
            Field::Hour => (0, 23),
            Field::DayOfMonth => (1, 31),
            Field::MonthOfYear => (1, 12),
            Field::DayOfWeek => (0, 6),
        }
    }

    /// A number or, in the month and day-of-week fields, a name (three letters
    /// or the whole word, any case).
    fn number(self, token: &str) -> Result<u8, String> {
        let (min, max) = self.range();
        let value = if !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit()) {
            token.parse::<u32>().map_err(|_| format!("{token:?} is too large"))?
        } else {
            let lower = token.to_ascii_lowercase();
            let names: &[&str] = match self {
                Field::DayOfWeek => &DAY_NAMES,
                Field::MonthOfYear => &MONTH_NAMES,
                _ => &[],
            };
            let found = names.iter().position(|n| lower.len() >= 3 && n.starts_with(&lower) && lower.len() <= n.len());
            match found {
                Some(i) if self == Field::DayOfWeek => i as u32,
                Some(i) => i as u32 + 1,
                None if names.is_empty() => return Err(format!("{token:?} is not a number")),
                None => {
                    let short: Vec<&str> = names.iter().map(|n| &n[..3]).collect();
                    return Err(format!("{token:?} is not a number {min}-{max} or a name ({})", short.join(", ")));
                }
            }
        };
        if value == 7 && self == Field::DayOfWeek {
            return Err("7 is not a day of the week in Celery's numbering: Sunday is 0".into());
        }
        if value < u32::from(min) || value > u32::from(max) {
            return Err(format!("{value} is out of range {min}-{max}"));
        }
        Ok(value as u8)
    }

    /// Expands one field's text into the set of its values (a bit per value).
    pub fn parse(self, text: &str) -> Result<u64, String> {
        let (min, max) = self.range();
        let mut bits = 0u64;
        for part in text.split(',') {
            if part.is_empty() {
                return Err(format!("empty item in {text:?}"));
            }
            let (base, step) = match part.split_once('/') {
                Some((base, step)) => {
                    let step: usize = step
                        .parse()
                        .ok()
                        .filter(|s| *s > 0)
                        .ok_or_else(|| format!("step {step:?} in {part:?} must be a whole number above 0"))?;
                    (base, Some(step))
                }
                None => (part, None),
            };
            let values: Vec<u8> = if base == "*" {
                (min..=max).collect()
            } else if let Some((from, to)) = base.split_once('-') {
                let (from, to) = (self.number(from)?, self.number(to)?);
                if to < from {
                    // Celery wraps a reversed range around the end of the field.
                    (from..=max).chain(min..=to).collect()
                } else {
                    (from..=to).collect()
                }
            } else {
                if step.is_some() {
                    return Err(format!("{part:?}: a step needs `*` or a range before it (e.g. {base}-{max}/...)"));
                }
                vec![self.number(base)?]
            };
            for v in values.iter().step_by(step.unwrap_or(1)) {
                bits |= 1 << v;
            }
        }
        Ok(bits)
    }
}

/// One field as written (kept for display and for RedBeat's definition) and
/// its values.
#[derive(Debug, Clone, PartialEq)]
struct Spec {
    /// As given: a string, a number or a list of numbers (RedBeat keeps
    /// Python's `crontab(minute=0, hour=[8, 20])` arguments as they were).
    written: Json,
    bits: u64,
}

impl Spec {
    fn from_json(field: Field, value: &Json) -> Result<Spec, String> {
        let bits = match value {
            Json::String(s) => field.parse(s)?,
            Json::Number(n) => {
                let v = n.as_u64().filter(|v| *v <= 255).ok_or_else(|| format!("{n} is not a whole number 0-255"))?;
                field.parse(&v.to_string())?
            }
            Json::Array(items) => {
                let mut bits = 0;
                for item in items {
                    match item {
                        Json::Number(_) => bits |= Spec::from_json(field, item)?.bits,
                        other => return Err(format!("{} in a list is not a number", crate::entry::brief(other))),
                    }
                }
                if bits == 0 {
                    return Err("an empty list matches nothing".into());
                }
                bits
            }
            other => {
                return Err(format!(
                    "{} is not a crontab field (expected text, a number or a list)",
                    crate::entry::brief(other)
                ))
            }
        };
        Ok(Spec { written: value.clone(), bits })
    }

    fn has(&self, v: i8) -> bool {
        (0..64).contains(&v) && self.bits & (1 << v) != 0
    }

    fn text(&self) -> String {
        match &self.written {
            Json::String(s) => s.clone(),
            Json::Array(items) => items.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(","),
            other => other.to_string(),
        }
    }

    /// The smallest value >= `from`, if any.
    fn at_or_after(&self, from: i8) -> Option<i8> {
        (from.max(0)..64).find(|v| self.has(*v))
    }
}

/// A Celery crontab.
#[derive(Debug, Clone, PartialEq)]
pub struct Crontab {
    minute: Spec,
    hour: Spec,
    day_of_month: Spec,
    month_of_year: Spec,
    day_of_week: Spec,
}

/// How far apart the earliest and latest readings of one wall-clock time can
/// be in any zone (daylight saving moves clocks by at most two hours today).
const ZONE_SHIFT: SignedDuration = SignedDuration::from_hours(3);

impl Crontab {
    /// Parses `"m h dom mon dow"` (Celery's `crontab.from_string` order).
    pub fn parse(text: &str) -> Result<Crontab, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [minute, hour, dom, month, dow] = fields[..] else {
            return Err(format!(
                "expected five fields `minute hour day_of_month month_of_year day_of_week`, found {}",
                fields.len()
            ));
        };
        let s = |v: &str| Json::String(v.to_owned());
        Crontab::from_fields(&s(minute), &s(hour), &s(dow), &s(dom), &s(month))
    }

    /// A crontab from Celery's keyword arguments (`crontab(minute=..., hour=...,
    /// day_of_week=..., day_of_month=..., month_of_year=...)`), each a string,
    /// a number or a list of numbers, as RedBeat stores them.
    pub fn from_fields(minute: &Json, hour: &Json, dow: &Json, dom: &Json, month: &Json) -> Result<Crontab, String> {
        let spec = |field: Field, value: &Json| {
            Spec::from_json(field, value)
                .map_err(|e| format!("{} {}: {}", field.name(), crate::entry::brief(value), crate::entry::cut(&e, 200)))
        };
        let cron = Crontab {
            minute: spec(Field::Minute, minute)?,
            hour: spec(Field::Hour, hour)?,
            day_of_month: spec(Field::DayOfMonth, dom)?,
            month_of_year: spec(Field::MonthOfYear, month)?,
            day_of_week: spec(Field::DayOfWeek, dow)?,
        };
        let possible = (1..=12u8).any(|m| {
            cron.month_of_year.has(m as i8)
                && (1..=MAX_DAYS[usize::from(m - 1)]).any(|d| cron.day_of_month.has(d as i8))
        });
        if !possible {
            return Err(format!(
                "day_of_month {} never occurs in month_of_year {}",
                cron.day_of_month.text(),
                cron.month_of_year.text()
            ));
        }
        Ok(cron)
    }

    /// The fields as written, in Celery's keyword order: minute, hour,
    /// day_of_week, day_of_month, month_of_year.
    pub fn fields(&self) -> [(&'static str, &Json); 5] {
        [
            ("minute", &self.minute.written),
            ("hour", &self.hour.written),
            ("day_of_week", &self.day_of_week.written),
            ("day_of_month", &self.day_of_month.written),
            ("month_of_year", &self.month_of_year.written),
        ]
    }

    /// Whether the hour field matches every hour: such a schedule also runs in
    /// the second pass of a repeated (fall-back) hour.
    pub fn every_hour(&self) -> bool {
        self.hour.bits == (1 << 24) - 1
    }

    fn date_matches(&self, date: Date) -> bool {
        self.month_of_year.has(date.month())
            && self.day_of_month.has(date.day())
            && self.day_of_week.has(date.weekday().to_sunday_zero_offset())
    }

    /// The first matching wall-clock minute at or after `from` (seconds are
    /// rounded up to the next minute), or `None` past year 9999.
    pub fn next_wall_time(&self, from: DateTime) -> Option<DateTime> {
        let mut t = from;
        if t.second() != 0 || t.subsec_nanosecond() != 0 {
            t = t.date().at(t.hour(), t.minute(), 0, 0).checked_add(SignedDuration::from_mins(1)).ok()?;
        }
        // Each step moves to the next month, day, hour or minute that can
        // match; 28 years cover every month/day/weekday combination.
        for _ in 0..200_000 {
            let date = t.date();
            if !self.month_of_year.has(date.month()) {
                let next = date.first_of_month().checked_add(jiff::Span::new().months(1)).ok()?;
                t = next.at(0, 0, 0, 0);
                continue;
            }
            if !self.date_matches(date) {
                t = date.tomorrow().ok()?.at(0, 0, 0, 0);
                continue;
            }
            if !self.hour.has(t.hour()) {
                t = match self.hour.at_or_after(t.hour() + 1).filter(|h| *h < 24) {
                    Some(h) => date.at(h, 0, 0, 0),
                    None => date.tomorrow().ok()?.at(0, 0, 0, 0),
                };
                continue;
            }
            match self.minute.at_or_after(t.minute()).filter(|m| *m < 60) {
                Some(m) => return Some(date.at(t.hour(), m, 0, 0)),
                None => {
                    t = date.at(t.hour(), 0, 0, 0).checked_add(SignedDuration::from_hours(1)).ok()?;
                }
            }
        }
        None
    }

    /// The instants a matching wall-clock time stands for in `tz`: one
    /// normally, the gap-shifted one in a spring-forward gap, the first (and,
    /// for every-hour schedules, also the second) occurrence in a fold.
    fn instants(&self, wall: DateTime, tz: &TimeZone) -> [Option<Timestamp>; 2] {
        let ambiguous = tz.to_ambiguous_timestamp(wall);
        let at = |offset: jiff::tz::Offset| offset.to_timestamp(wall).ok();
        match ambiguous.offset() {
            AmbiguousOffset::Unambiguous { offset } => [at(offset), None],
            AmbiguousOffset::Gap { before, .. } => [at(before), None],
            AmbiguousOffset::Fold { before, after } => [at(before), self.every_hour().then(|| at(after)).flatten()],
        }
    }

    /// The first fire time strictly after `after`, in zone `tz`.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let wall = tz.to_datetime(after);
        // Away from any offset change, wall time and real time run together:
        // the next matching wall time is the answer.
        let on_minute = wall.second() == 0 && wall.subsec_nanosecond() == 0;
        let from = if on_minute { wall.checked_add(SignedDuration::from_mins(1)).ok()? } else { wall };
        let candidate = self.next_wall_time(from)?;
        if let AmbiguousOffset::Unambiguous { offset } = tz.to_ambiguous_timestamp(candidate).offset() {
            let instant = offset.to_timestamp(candidate).ok()?;
            // (A change exactly at `after` counts as before it: `preceding` is strict.)
            let just_after = after.checked_add(SignedDuration::from_nanos(1)).ok()?;
            let horizon = after.checked_sub(ZONE_SHIFT).ok()?;
            let calm_before = tz.preceding(just_after).next().is_none_or(|t| t.timestamp() < horizon);
            let calm_after = tz.following(after).next().is_none_or(|t| t.timestamp() > instant);
            if calm_before && calm_after && instant > after {
                return Some(instant);
            }
        }
        self.next_after_near_changes(after, wall, tz)
    }

    /// [`Crontab::next_after`] when an offset change is near: every wall time
    /// that can stand for an instant after `after` is looked at.
    fn next_after_near_changes(&self, after: Timestamp, wall: DateTime, tz: &TimeZone) -> Option<Timestamp> {
        // Wall times up to ZONE_SHIFT before `after`'s own may still be later
        // instants (the second pass of a fold, a gap-shifted time).
        let mut cursor = wall.checked_sub(ZONE_SHIFT).ok()?;
        let mut best: Option<(Timestamp, DateTime)> = None;
        loop {
            let candidate = self.next_wall_time(cursor)?;
            if let Some((_, best_wall)) = best {
                if candidate > best_wall.checked_add(ZONE_SHIFT).ok()? {
                    break;
                }
            }
            for instant in self.instants(candidate, tz).into_iter().flatten() {
                if instant > after && best.is_none_or(|(b, _)| instant < b) {
                    best = Some((instant, candidate));
                }
            }
            cursor = candidate.checked_add(SignedDuration::from_mins(1)).ok()?;
        }
        best.map(|(instant, _)| instant)
    }
}

impl fmt::Display for Crontab {
    /// The five fields in `from_string` order: `m h dom mon dow`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} {}",
            self.minute.text(),
            self.hour.text(),
            self.day_of_month.text(),
            self.month_of_year.text(),
            self.day_of_week.text()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(field: Field, text: &str) -> Vec<u8> {
        let bits = field.parse(text).unwrap();
        (0..64).filter(|v| bits & (1 << v) != 0).collect()
    }

    #[test]
    fn fields_expand_as_celerys_parser() {
        assert_eq!(values(Field::Minute, "*/15"), [0, 15, 30, 45]);
        assert_eq!(values(Field::DayOfMonth, "*/3"), [1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31]);
        assert_eq!(values(Field::MonthOfYear, "2-12/2"), [2, 4, 6, 8, 10, 12]);
        assert_eq!(values(Field::Minute, "1,13,30-45/5,50"), [1, 13, 30, 35, 40, 45, 50]);
        assert_eq!(values(Field::DayOfWeek, "mon-fri"), [1, 2, 3, 4, 5]);
        assert_eq!(values(Field::DayOfWeek, "fri-mon"), [0, 1, 5, 6]);
        assert_eq!(values(Field::DayOfWeek, "Sunday,SAT"), [0, 6]);
        assert_eq!(values(Field::MonthOfYear, "jan,dec"), [1, 12]);
        // A wrapped range with a step walks the wrapped list, as Celery slices it.
        assert_eq!(values(Field::Hour, "22-3/2"), [0, 2, 22]);
    }

    #[test]
    fn bad_fields_say_what_is_wrong() {
        let err = |f: Field, t: &str| f.parse(t).unwrap_err();
        assert!(err(Field::DayOfWeek, "7").contains("Sunday is 0"));
        assert!(err(Field::Minute, "60").contains("out of range 0-59"));
        assert!(err(Field::DayOfWeek, "mon-fry").contains("sun, mon"));
        assert!(err(Field::Minute, "*/0").contains("above 0"));
        assert!(err(Field::Minute, "5/15").contains("5-59/"));
        assert!(err(Field::Minute, "1,,2").contains("empty"));
        assert!(err(Field::Minute, "mon").contains("not a number"));
        assert!(Crontab::parse("0 0 30 2 *").unwrap_err().contains("never occurs"));
        assert!(Crontab::parse("* * * *").unwrap_err().contains("five fields"));
    }

    #[test]
    fn redbeat_fields_may_be_numbers_and_lists() {
        let c = Crontab::from_fields(
            &Json::from(0),
            &serde_json::json!([8, 20]),
            &Json::from("*"),
            &Json::from("*"),
            &Json::from("*"),
        )
        .unwrap();
        assert_eq!(c.to_string(), "0 8,20 * * *");
        let utc = TimeZone::UTC;
        let t: Timestamp = "2026-05-01T09:00:00Z".parse().unwrap();
        assert_eq!(c.next_after(t, &utc).unwrap().to_string(), "2026-05-01T20:00:00Z");
    }

    #[test]
    fn days_must_match_day_of_month_and_day_of_week() {
        // Friday the 13th, as Celery reads it (both day fields must match).
        let c = Crontab::parse("0 0 13 * fri").unwrap();
        let t: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(c.next_after(t, &TimeZone::UTC).unwrap().to_string(), "2026-02-13T00:00:00Z");
        let leap = Crontab::parse("0 12 29 feb mon").unwrap();
        assert_eq!(leap.next_after(t, &TimeZone::UTC).unwrap().to_string(), "2044-02-29T12:00:00Z");
    }

    #[test]
    fn the_shortcut_away_from_offset_changes_agrees_with_the_full_search() {
        let zones = ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "UTC"];
        let crons = ["*/15 * * * *", "30 2 * * *", "0 * * * sun", "50-10 1-3 * * *", "59 23 31 12 *"];
        let start: Timestamp = "2025-01-01T00:00:00Z".parse().unwrap();
        let end: Timestamp = "2027-01-01T00:00:00Z".parse().unwrap();
        for zone in zones {
            let tz = TimeZone::get(zone).unwrap();
            // Two years in coarse steps, and densely around each offset change.
            let mut instants: Vec<Timestamp> =
                (0..1000).map(|k| start.checked_add(SignedDuration::from_secs(k * 63_193)).unwrap()).collect();
            for change in tz.following(start).take_while(|t| t.timestamp() < end) {
                for k in -50..50 {
                    instants.push(change.timestamp().checked_add(SignedDuration::from_secs(k * 433)).unwrap());
                }
            }
            for t in instants {
                for cron in crons {
                    let c = Crontab::parse(cron).unwrap();
                    let full = c.next_after_near_changes(t, tz.to_datetime(t), &tz);
                    assert_eq!(c.next_after(t, &tz), full, "{cron} in {zone} after {t}");
                }
            }
        }
    }

    #[test]
    fn daylight_saving_changes() {
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        let next = |c: &str, t: &str| Crontab::parse(c).unwrap().next_after(t.parse().unwrap(), &berlin).unwrap();
        // Spring forward (2026-03-29, 02:00 CET -> 03:00 CEST): 02:30 does not exist.
        assert_eq!(next("30 2 * * *", "2026-03-29T00:00:00Z").to_string(), "2026-03-29T01:30:00Z");
        assert_eq!(next("*/15 * * * *", "2026-03-29T00:45:00Z").to_string(), "2026-03-29T01:00:00Z");
        // Fall back (2026-10-25, 03:00 CEST -> 02:00 CET): 02:30 happens twice.
        assert_eq!(next("30 2 * * *", "2026-10-24T12:00:00Z").to_string(), "2026-10-25T00:30:00Z");
        assert_eq!(next("30 2 * * *", "2026-10-25T00:30:00Z").to_string(), "2026-10-26T01:30:00Z");
        // ... but an hourly job runs in both passes of the repeated hour.
        assert_eq!(next("0 * * * *", "2026-10-25T00:00:00Z").to_string(), "2026-10-25T01:00:00Z");
        assert_eq!(next("0 * * * *", "2026-10-25T01:00:00Z").to_string(), "2026-10-25T02:00:00Z");
    }
}

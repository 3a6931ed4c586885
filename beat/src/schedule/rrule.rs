//! RedBeat's `rrule` schedules, the part celeriac runs: a frequency
//! (`SECONDLY` ... `YEARLY`) times `interval` from `dtstart`, bounded by
//! `count` and `until`, as `dateutil.rrule` expands a rule with no `by*`
//! parts. `rrule(count=1, dtstart=...)` is how RedBeat spells a one-off run,
//! and how celeriac writes its own one-off entries.
//!
//! `dtstart` carries a fixed UTC offset (RedBeat stores its minutes), so
//! daily and longer steps keep that offset's wall-clock time. A monthly or
//! yearly step landing on a day the month lacks (January 31 plus a month) is
//! skipped, as dateutil skips it.

use jiff::civil::DateTime;
use jiff::tz::Offset;
use jiff::{SignedDuration, Span, Timestamp};

/// How far apart occurrences are, dateutil's constants (`YEARLY` = 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frequency {
    /// Every `interval` years.
    Yearly,
    /// Every `interval` months.
    Monthly,
    /// Every `interval` weeks.
    Weekly,
    /// Every `interval` days.
    Daily,
    /// Every `interval` hours.
    Hourly,
    /// Every `interval` minutes.
    Minutely,
    /// Every `interval` seconds.
    Secondly,
}

impl Frequency {
    /// From dateutil's number (0 = YEARLY ... 6 = SECONDLY) or name.
    pub fn from_json(value: &serde_json::Value) -> Result<Frequency, String> {
        const NAMES: [&str; 7] = ["YEARLY", "MONTHLY", "WEEKLY", "DAILY", "HOURLY", "MINUTELY", "SECONDLY"];
        let index = match value {
            serde_json::Value::Number(n) => n.as_u64().and_then(|n| usize::try_from(n).ok()),
            serde_json::Value::String(s) => NAMES.iter().position(|n| n.eq_ignore_ascii_case(s)),
            _ => None,
        };
        let all = [
            Frequency::Yearly,
            Frequency::Monthly,
            Frequency::Weekly,
            Frequency::Daily,
            Frequency::Hourly,
            Frequency::Minutely,
            Frequency::Secondly,
        ];
        index.and_then(|i| all.get(i).copied()).ok_or_else(|| {
            format!("rrule freq {} is not one of 0-6 or {}", crate::entry::brief(value), NAMES.join(", "))
        })
    }

    /// dateutil's number.
    pub fn number(self) -> u8 {
        self as u8
    }

    fn fixed(self) -> Option<SignedDuration> {
        match self {
            Frequency::Weekly => Some(SignedDuration::from_hours(7 * 24)),
            Frequency::Daily => Some(SignedDuration::from_hours(24)),
            Frequency::Hourly => Some(SignedDuration::from_hours(1)),
            Frequency::Minutely => Some(SignedDuration::from_mins(1)),
            Frequency::Secondly => Some(SignedDuration::from_secs(1)),
            Frequency::Yearly | Frequency::Monthly => None,
        }
    }
}

/// A recurrence rule without `by*` parts.
#[derive(Debug, Clone, PartialEq)]
pub struct RRule {
    /// The step's unit.
    pub freq: Frequency,
    /// Units per step (at least 1).
    pub interval: u32,
    /// The first occurrence.
    pub dtstart: Timestamp,
    /// The UTC offset `dtstart` was given in.
    pub offset: Offset,
    /// Most occurrences, counting the first.
    pub count: Option<u32>,
    /// No occurrence after this.
    pub until: Option<Timestamp>,
}

impl RRule {
    /// A single run at `at` (`rrule(count=1, dtstart=at)`).
    pub fn once(at: Timestamp) -> RRule {
        RRule { freq: Frequency::Daily, interval: 1, dtstart: at, offset: Offset::UTC, count: Some(1), until: None }
    }

    /// Whether this is a single run.
    pub fn is_once(&self) -> bool {
        self.count == Some(1)
    }

    /// The `k`-th occurrence (0 = dtstart), or `None` if the calendar skips it.
    fn occurrence(&self, k: i64) -> Option<Timestamp> {
        let steps = k.checked_mul(i64::from(self.interval))?;
        match self.freq.fixed() {
            Some(unit) => self.dtstart.checked_add(unit.checked_mul(i32::try_from(steps).ok()?)?).ok(),
            None => {
                let start: DateTime = self.offset.to_datetime(self.dtstart);
                let span = match self.freq {
                    Frequency::Yearly => Span::new().try_years(steps).ok()?,
                    _ => Span::new().try_months(steps).ok()?,
                };
                let moved = start.checked_add(span).ok()?;
                // jiff clamps January 31 + 1 month to February 28; dateutil skips it.
                if moved.day() != start.day() {
                    return None;
                }
                self.offset.to_timestamp(moved).ok()
            }
        }
    }

    /// The first occurrence strictly after `after` (`None` = before everything).
    pub fn next_after(&self, after: Option<Timestamp>) -> Option<Timestamp> {
        let limit = i64::from(self.count.unwrap_or(u32::MAX));
        // Start near the answer: fixed steps are arithmetic, calendar steps
        // are at least 28 days.
        let mut k = match (after, self.freq.fixed()) {
            (Some(after), Some(unit)) if after > self.dtstart => {
                let step = unit.as_nanos() * i128::from(self.interval);
                i64::try_from(after.duration_since(self.dtstart).as_nanos() / step).ok()?
            }
            (Some(after), None) if after > self.dtstart => {
                let days = after.duration_since(self.dtstart).as_secs() / 86_400;
                let per = if self.freq == Frequency::Yearly { 366 } else { 31 };
                (days / (per * i64::from(self.interval))).saturating_sub(1)
            }
            _ => 0,
        };
        let mut misses = 0;
        while k < limit {
            match self.occurrence(k) {
                Some(t) if self.until.is_some_and(|u| t > u) => return None,
                Some(t) if after.is_none_or(|a| t > a) => return Some(t),
                Some(_) => misses = 0,
                None => {
                    misses += 1;
                    // February 29 yearly recurs within 8 years; give up well after.
                    if misses > 400 {
                        return None;
                    }
                }
            }
            k += 1;
        }
        None
    }

    /// `once at ...` or `every 2 DAILY steps from ...`.
    pub fn describe(&self) -> String {
        if self.is_once() {
            return format!("once at {}", self.dtstart);
        }
        let mut text = format!("rrule {:?} x{} from {}", self.freq, self.interval, self.dtstart);
        if let Some(count) = self.count {
            text.push_str(&format!(", {count} times"));
        }
        if let Some(until) = self.until {
            text.push_str(&format!(", until {until}"));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn occurrences_as_dateutil_expands_them() {
        let start: Timestamp = "2026-01-31T09:00:00Z".parse().unwrap();
        let monthly = RRule {
            freq: Frequency::Monthly,
            interval: 1,
            dtstart: start,
            offset: Offset::UTC,
            count: None,
            until: None,
        };
        // February has no 31st: skipped.
        assert_eq!(monthly.next_after(Some(start)).unwrap().to_string(), "2026-03-31T09:00:00Z");
        let once = RRule::once(start);
        assert_eq!(once.next_after(None), Some(start));
        assert_eq!(once.next_after(Some(start)), None);
        let hourly = RRule {
            freq: Frequency::Hourly,
            interval: 2,
            dtstart: start,
            offset: Offset::UTC,
            count: Some(3),
            until: None,
        };
        let after: Timestamp = "2026-01-31T12:30:00Z".parse().unwrap();
        assert_eq!(hourly.next_after(Some(after)).unwrap().to_string(), "2026-01-31T13:00:00Z");
        let late: Timestamp = "2026-01-31T13:00:00Z".parse().unwrap();
        assert_eq!(hourly.next_after(Some(late)), None, "count=3 ends at 13:00");
    }
}

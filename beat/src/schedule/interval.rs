//! Interval schedules (`schedule = 30`, `"30s"`, `"1h30m"`), Celery's
//! `schedule(run_every, relative)`.
//!
//! A run's slot is the previous slot plus the interval in real (UTC) time, so
//! runs never drift with send latency. With `relative`, slots are rounded
//! down to the interval's resolution (days, hours or minutes) on the app's
//! wall clock, never to or before the previous slot, as Celery rounds them.

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

/// Every `every`, optionally aligned to the clock.
#[derive(Debug, Clone, PartialEq)]
pub struct Interval {
    /// Time between runs (positive).
    pub every: SignedDuration,
    /// Round slots to the interval's resolution (Celery's `relative`).
    pub relative: bool,
}

/// Parses a duration: a number of seconds (`"30"`, `"2.5"`), units
/// (`"30s"`, `"1h30m"`, `"2d"`, `"500ms"`) or ISO 8601 (`"PT30S"`).
pub fn parse_duration(text: &str) -> Result<SignedDuration, String> {
    let t = text.trim();
    let parsed = match t.parse::<f64>() {
        Ok(secs) if secs.is_finite() => SignedDuration::try_from_secs_f64(secs).map_err(|e| e.to_string()),
        // Days and weeks count as 24 hours and 7 days.
        _ => t
            .parse::<jiff::Span>()
            .and_then(|span| span.to_duration(jiff::SpanRelativeTo::days_are_24_hours()))
            .map_err(|e| e.to_string()),
    };
    match parsed {
        Ok(d) if d.is_positive() => Ok(d),
        Ok(_) => Err(format!("duration {text:?} must be longer than zero")),
        Err(e) => Err(format!("{text:?} is not a duration such as 30s, 1h30m, 2d or PT30S ({e})")),
    }
}

/// Celery's `delta_resolution` unit for an interval: a day, an hour, a
/// minute, else a second (Celery drops the microseconds of a rounded time).
fn resolution(every: SignedDuration) -> SignedDuration {
    [SignedDuration::from_hours(24), SignedDuration::from_hours(1), SignedDuration::from_mins(1)]
        .into_iter()
        .find(|unit| every >= *unit)
        .unwrap_or(SignedDuration::from_secs(1))
}

fn round_down(wall: DateTime, unit: SignedDuration) -> DateTime {
    if unit >= SignedDuration::from_hours(24) {
        wall.date().at(0, 0, 0, 0)
    } else if unit >= SignedDuration::from_hours(1) {
        wall.date().at(wall.hour(), 0, 0, 0)
    } else if unit >= SignedDuration::from_mins(1) {
        wall.date().at(wall.hour(), wall.minute(), 0, 0)
    } else {
        wall.date().at(wall.hour(), wall.minute(), wall.second(), 0)
    }
}

/// The instants a wall-clock time stands for: one, the gap-shifted one in a
/// spring-forward gap, or both occurrences in a fall-back fold.
fn occurrences(tz: &TimeZone, wall: DateTime) -> Vec<Timestamp> {
    use jiff::tz::AmbiguousOffset;
    let at = |offset: jiff::tz::Offset| offset.to_timestamp(wall).ok();
    match tz.to_ambiguous_timestamp(wall).offset() {
        AmbiguousOffset::Unambiguous { offset } | AmbiguousOffset::Gap { before: offset, .. } => {
            at(offset).into_iter().collect()
        }
        AmbiguousOffset::Fold { before, after } => [at(before), at(after)].into_iter().flatten().collect(),
    }
}

impl Interval {
    /// The slot after `last`: `last + every`; with `relative`, the latest
    /// boundary of the interval's resolution (days, hours, minutes, else whole
    /// seconds, in `tz`'s wall clock) at or
    /// before that and still after `last`, else the next boundary after
    /// `last`, as Celery's `remaining(relative=True)` picks it (both
    /// occurrences of a repeated wall time are candidates; days are calendar
    /// days).
    pub fn next_after(&self, last: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let end = last.checked_add(self.every).ok()?;
        if !self.relative {
            return Some(end);
        }
        let unit = resolution(self.every);
        let wall_end = tz.to_datetime(last).checked_add(self.every).ok()?;
        if unit >= SignedDuration::from_hours(24) {
            // Calendar days: the first local midnight after `last`, counting
            // `every` days on the wall clock.
            let candidates = occurrences(tz, round_down(wall_end, unit));
            return candidates.into_iter().filter(|c| *c > last).min().or(Some(end));
        }
        let mut candidates = occurrences(tz, round_down(tz.to_datetime(end), unit));
        let rounded =
            candidates.iter().copied().filter(|c| *c <= end).max().or_else(|| candidates.iter().copied().min());
        if rounded.is_some_and(|r| r > last) {
            return rounded;
        }
        if unit < SignedDuration::from_mins(1) {
            // Shorter than a second: rounding to the second lands on or before
            // the previous slot (where Celery finds the entry due on every
            // tick); the next whole second is the slot.
            let next = round_down(tz.to_datetime(end), unit).checked_add(unit).ok()?;
            return occurrences(tz, next).into_iter().filter(|c| *c > last).min().or(Some(end));
        }
        // The boundary fell on or before the previous slot (a fold, or an
        // interval shorter than its resolution): also try the next boundary
        // and the wall-clock end.
        let next = round_down(tz.to_datetime(end), unit).checked_add(unit).ok()?;
        candidates.extend(occurrences(tz, next));
        candidates.extend(occurrences(tz, round_down(wall_end, unit)));
        let future: Vec<Timestamp> = candidates.into_iter().filter(|c| *c > last).collect();
        future.iter().copied().filter(|c| *c <= end).max().or_else(|| future.iter().copied().min()).or(Some(end))
    }

    /// The last slot at or before `now` on the grid `last + k * every`
    /// (not for `relative` intervals), without stepping one by one.
    pub fn latest_at_or_before(&self, last: Timestamp, now: Timestamp) -> Option<Timestamp> {
        if self.relative || now <= last {
            return None;
        }
        // In nanoseconds as i128: centuries of microsecond slots fit.
        let every = self.every.as_nanos().max(1);
        let behind = now.as_nanosecond().checked_sub(last.as_nanosecond())?;
        let steps = behind / every;
        if steps == 0 {
            return None;
        }
        Timestamp::from_nanosecond(last.as_nanosecond().checked_add(steps.checked_mul(every)?)?).ok()
    }

    /// The interval as Python writes it: `every 30s`, `every 1h 30m`.
    pub fn describe(&self) -> String {
        let text = format!("{:#}", self.every);
        format!("every {text}{}", if self.relative { " (relative)" } else { "" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_several_spellings() {
        let secs = |t: &str| parse_duration(t).unwrap().as_secs_f64();
        assert_eq!(secs("30"), 30.0);
        assert_eq!(secs("2.5"), 2.5);
        assert_eq!(secs("30s"), 30.0);
        assert_eq!(secs("1h30m"), 5400.0);
        assert_eq!(secs("2d"), 172_800.0);
        assert_eq!(secs("PT1M"), 60.0);
        assert_eq!(secs("500ms"), 0.5);
        assert!(parse_duration("0s").unwrap_err().contains("longer than zero"));
        assert!(parse_duration("soon").unwrap_err().contains("not a duration"));
    }

    #[test]
    fn slots_follow_the_grid_not_the_sends() {
        let i = Interval { every: SignedDuration::from_secs(10), relative: false };
        let t: Timestamp = "2026-01-01T00:00:00.250Z".parse().unwrap();
        assert_eq!(i.next_after(t, &TimeZone::UTC).unwrap().to_string(), "2026-01-01T00:00:10.25Z");
        let now: Timestamp = "2026-01-01T00:01:05Z".parse().unwrap();
        assert_eq!(i.latest_at_or_before(t, now).unwrap().to_string(), "2026-01-01T00:01:00.25Z");
    }

    #[test]
    fn relative_intervals_round_to_their_resolution() {
        let hourly = Interval { every: SignedDuration::from_hours(1), relative: true };
        let t: Timestamp = "2026-01-01T10:17:00Z".parse().unwrap();
        assert_eq!(hourly.next_after(t, &TimeZone::UTC).unwrap().to_string(), "2026-01-01T11:00:00Z");
        let t: Timestamp = "2026-01-01T11:00:00Z".parse().unwrap();
        assert_eq!(hourly.next_after(t, &TimeZone::UTC).unwrap().to_string(), "2026-01-01T12:00:00Z");
        let daily = Interval { every: SignedDuration::from_hours(24), relative: true };
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        let t: Timestamp = "2026-03-28T15:00:00Z".parse().unwrap();
        // Local midnight after the spring-forward day, not 24 h later.
        assert_eq!(daily.next_after(t, &berlin).unwrap().to_string(), "2026-03-28T23:00:00Z");
    }
}

//! Python's `datetime`, `date` and `time` as they appear on the wire.
//!
//! Celery writes instants with `datetime.isoformat()` (`eta`, `expires`,
//! `date_done`, kombu's `datetime` marker) and reads them with
//! `datetime.fromisoformat()`. These types keep what Python keeps, microsecond
//! precision and an optional UTC offset, and print exactly what Python prints, so
//! a decoded value re-encodes to the same text.

use std::fmt::{self, Write as _};
use std::time::Duration;

use jiff::civil;
use jiff::tz::Offset;
use jiff::{Timestamp, ZonedDateTime};

/// A Python `datetime.datetime`: a civil date and time, aware when it has an offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PyDateTime {
    /// The wall-clock date and time (microsecond precision).
    pub civil: civil::DateTime,
    /// The UTC offset; `None` for a naive datetime.
    pub offset: Option<Offset>,
}

/// A Python `datetime.date`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PyDate(pub civil::Date);

/// A Python `datetime.time`, aware when it has an offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PyTime {
    /// The wall-clock time (microsecond precision).
    pub civil: civil::Time,
    /// The UTC offset; `None` for a naive time.
    pub offset: Option<Offset>,
}

/// Why an ISO-8601 text could not be read as Python would read it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid isoformat string {text:?}: {reason}")]
pub struct IsoParseError {
    text: String,
    reason: &'static str,
}

fn err(text: &str, reason: &'static str) -> IsoParseError {
    IsoParseError { text: text.to_owned(), reason }
}

impl PyDateTime {
    /// An aware datetime for an instant, shown at the given offset.
    pub fn from_timestamp(ts: Timestamp, offset: Offset) -> PyDateTime {
        let civil = truncate_to_micros(offset.to_datetime(ts));
        PyDateTime { civil, offset: Some(offset) }
    }

    /// An aware datetime for an instant in a time zone, with the offset in force
    /// there at that instant (what Celery's `app.now()` gives with `timezone` set).
    pub fn from_zoned(zoned: &ZonedDateTime) -> PyDateTime {
        PyDateTime::from_timestamp(zoned.timestamp(), zoned.offset())
    }

    /// The current instant in UTC, as Python's `datetime.now(timezone.utc)`.
    pub fn now_utc() -> PyDateTime {
        PyDateTime::from_timestamp(Timestamp::now(), Offset::UTC)
    }

    /// The instant this datetime names; a naive value is taken as UTC, as Celery
    /// does for `eta` and `expires` (`maybe_make_aware(naive_as_utc=True)`).
    /// Fails for the few values Python allows whose instant is past the range
    /// of [`Timestamp`] (`9999-12-31T23:00:00-05:00`).
    pub fn to_timestamp(&self) -> Result<Timestamp, jiff::Error> {
        self.offset.unwrap_or(Offset::UTC).to_timestamp(self.civil)
    }

    /// As [`PyDateTime::to_timestamp`], but an instant past the range of
    /// [`Timestamp`] is clamped to its end ([`Timestamp::MAX`] for the last day
    /// of year 9999, [`Timestamp::MIN`] for the first ones): "never" and
    /// "long ago", which is what such a value means to Python.
    pub fn to_timestamp_saturating(&self) -> Timestamp {
        self.to_timestamp().unwrap_or(if self.civil.year() > 0 { Timestamp::MAX } else { Timestamp::MIN })
    }

    /// Reads what Python 3.11's `datetime.fromisoformat` reads in practice:
    /// `YYYY-MM-DD[Thh[:mm[:ss[.f…]]]][Z|±hh[:mm[:ss[.ffffff]]]]`, basic forms
    /// without separators, any one-character date/time separator, and a bare date.
    pub fn parse_iso(text: &str) -> Result<PyDateTime, IsoParseError> {
        let (date, rest) = parse_date_prefix(text)?;
        if rest.is_empty() {
            let civil = date.to_datetime(civil::Time::midnight());
            return Ok(PyDateTime { civil, offset: None });
        }
        // Python accepts any single character as the date/time separator.
        let sep_len = rest.chars().next().map_or(0, char::len_utf8);
        let time_text = &rest[sep_len..];
        let (time, offset) = parse_time_and_offset(text, time_text)?;
        Ok(PyDateTime { civil: date.to_datetime(time), offset })
    }

    /// Python's `isoformat()`: `2026-11-24T12:59:38.873607-05:00`; the fraction
    /// only when the microseconds are not zero, the offset only when aware.
    pub fn to_iso(&self) -> String {
        let mut out = String::with_capacity(32);
        write_date(&mut out, self.civil.date());
        out.push('T');
        write_time(&mut out, self.civil.time());
        if let Some(offset) = self.offset {
            write_offset(&mut out, offset);
        }
        out
    }
}

impl fmt::Display for PyDateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_iso())
    }
}

impl PyDate {
    /// Reads `YYYY-MM-DD` (or `YYYYMMDD`); kombu decodes dates through
    /// `datetime.fromisoformat(o).date()`, so a full datetime is accepted too.
    pub fn parse_iso(text: &str) -> Result<PyDate, IsoParseError> {
        Ok(PyDate(PyDateTime::parse_iso(text)?.civil.date()))
    }

    /// Python's `date.isoformat()`.
    pub fn to_iso(&self) -> String {
        let mut out = String::with_capacity(10);
        write_date(&mut out, self.0);
        out
    }
}

impl PyTime {
    /// Reads what Python's `time.fromisoformat` reads: `hh[:mm[:ss[.f…]]]` with an
    /// optional offset.
    pub fn parse_iso(text: &str) -> Result<PyTime, IsoParseError> {
        let (civil, offset) = parse_time_and_offset(text, text)?;
        Ok(PyTime { civil, offset })
    }

    /// Python's `time.isoformat()`.
    pub fn to_iso(&self) -> String {
        let mut out = String::with_capacity(21);
        write_time(&mut out, self.civil);
        if let Some(offset) = self.offset {
            write_offset(&mut out, offset);
        }
        out
    }
}

/// The longest [`Duration`] [`duration_from_secs`] gives: 100 years
/// (3,155,760,000 seconds), "never" for any timer, and small enough to add to
/// any `Instant` or `Timestamp` of this century without overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(3_155_760_000);

/// Converts a number of seconds from a message (a time limit, countdown or
/// expiry) to a [`Duration`], never panicking, whatever the value:
///
/// - NaN: `None`, there is no such duration (the caller decides: Celery's
///   timers never fire for NaN, and `timedelta(seconds=nan)` raises);
/// - zero, negative, `-0.0` and `-inf`: [`Duration::ZERO`], already due;
/// - `+inf`, `1e300`, anything above [`MAX_DURATION`]: [`MAX_DURATION`], never;
/// - anything else: the nearest `Duration`, to the nanosecond.
pub fn duration_from_secs(secs: f64) -> Option<Duration> {
    if secs.is_nan() {
        None
    } else if secs <= 0.0 {
        Some(Duration::ZERO)
    } else if secs >= MAX_DURATION.as_secs_f64() {
        Some(MAX_DURATION)
    } else {
        Some(Duration::try_from_secs_f64(secs).map_or(MAX_DURATION, |d| d.min(MAX_DURATION)))
    }
}

/// [`duration_from_secs`] for whole seconds: negative is zero, more than
/// [`MAX_DURATION`] is [`MAX_DURATION`].
pub fn duration_from_int_secs(secs: i64) -> Duration {
    u64::try_from(secs).map_or(Duration::ZERO, |s| Duration::from_secs(s).min(MAX_DURATION))
}

fn truncate_to_micros(dt: civil::DateTime) -> civil::DateTime {
    let nanos = dt.subsec_nanosecond();
    dt.with().subsec_nanosecond(nanos - nanos % 1000).build().unwrap_or(dt)
}

fn write_date(out: &mut String, d: civil::Date) {
    let _ = write!(out, "{:04}-{:02}-{:02}", d.year(), d.month(), d.day());
}

fn write_time(out: &mut String, t: civil::Time) {
    let _ = write!(out, "{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second());
    let micros = t.subsec_nanosecond() / 1000;
    if micros != 0 {
        let _ = write!(out, ".{micros:06}");
    }
}

fn write_offset(out: &mut String, offset: Offset) {
    let total = offset.seconds();
    let sign = if total < 0 { '-' } else { '+' };
    let abs = total.unsigned_abs();
    let _ = write!(out, "{sign}{:02}:{:02}", abs / 3600, (abs / 60) % 60);
    if abs % 60 != 0 {
        let _ = write!(out, ":{:02}", abs % 60);
    }
}

fn digits(text: &str, n: usize) -> Option<i32> {
    let part = text.get(..n)?;
    if part.len() == n && part.bytes().all(|b| b.is_ascii_digit()) {
        part.parse().ok()
    } else {
        None
    }
}

fn parse_date_prefix(text: &str) -> Result<(civil::Date, &str), IsoParseError> {
    let year = digits(text, 4).ok_or_else(|| err(text, "expected a four-digit year"))?;
    let (month, day, rest) = if text.as_bytes().get(4) == Some(&b'-') {
        let month = digits(&text[5..], 2).ok_or_else(|| err(text, "expected a two-digit month"))?;
        if text.as_bytes().get(7) != Some(&b'-') {
            return Err(err(text, "expected '-' after the month"));
        }
        let day = digits(&text[8..], 2).ok_or_else(|| err(text, "expected a two-digit day"))?;
        (month, day, &text[10..])
    } else {
        let month = digits(&text[4..], 2).ok_or_else(|| err(text, "expected a two-digit month"))?;
        let day = digits(&text[6..], 2).ok_or_else(|| err(text, "expected a two-digit day"))?;
        (month, day, &text[8..])
    };
    if year < 1 {
        // Python's datetime.MINYEAR.
        return Err(err(text, "year 0 is out of range"));
    }
    let date = civil::Date::new(year as i16, month as i8, day as i8)
        .map_err(|_| err(text, "day is out of range for month"))?;
    Ok((date, rest))
}

/// Parses `hh[:mm[:ss[.f…]]]` then an optional `Z` or `±hh[:mm[:ss[.ffffff]]]`.
fn parse_time_and_offset(whole: &str, text: &str) -> Result<(civil::Time, Option<Offset>), IsoParseError> {
    let split = text.find(['+', '-', 'Z', 'z']).unwrap_or(text.len());
    let (time_part, tz_part) = text.split_at(split);
    let time = parse_clock(whole, time_part, true)?;
    let offset = match tz_part {
        "" => None,
        "Z" | "z" => Some(Offset::UTC),
        _ => {
            let negative = tz_part.starts_with('-');
            let clock = parse_clock(whole, &tz_part[1..], false)?;
            let seconds = clock.hour() as i32 * 3600 + clock.minute() as i32 * 60 + clock.second() as i32;
            if clock.subsec_nanosecond() != 0 {
                return Err(err(whole, "sub-second UTC offsets are not supported"));
            }
            let seconds = if negative { -seconds } else { seconds };
            Some(Offset::from_seconds(seconds).map_err(|_| err(whole, "UTC offset out of range"))?)
        }
    };
    Ok((time, offset))
}

fn parse_clock(whole: &str, text: &str, allow_fraction: bool) -> Result<civil::Time, IsoParseError> {
    let (main, fraction) = match text.split_once(['.', ',']) {
        Some((m, f)) if allow_fraction || !f.is_empty() => (m, Some(f)),
        Some(_) => return Err(err(whole, "empty fraction")),
        None => (text, None),
    };
    let fields: Vec<i32> = if main.contains(':') {
        main.split(':')
            .map(|p| if p.len() == 2 { digits(p, 2) } else { None })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| err(whole, "expected two-digit time fields"))?
    } else if main.len() % 2 == 0 && !main.is_empty() {
        (0..main.len() / 2)
            .map(|i| main.get(i * 2..).and_then(|rest| digits(rest, 2)))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| err(whole, "expected two-digit time fields"))?
    } else {
        return Err(err(whole, "expected a time"));
    };
    if fields.is_empty() || fields.len() > 3 {
        return Err(err(whole, "expected hh[:mm[:ss]]"));
    }
    let nanos = match fraction {
        None => 0,
        Some(f) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => {
            // Python keeps microseconds and drops further digits.
            let mut micros: i32 = 0;
            for i in 0..6 {
                micros = micros * 10 + f.as_bytes().get(i).map_or(0, |b| i32::from(b - b'0'));
            }
            micros * 1000
        }
        Some(_) => return Err(err(whole, "invalid fraction of a second")),
    };
    let get = |i: usize| fields.get(i).copied().unwrap_or(0);
    civil::Time::new(get(0) as i8, get(1) as i8, get(2) as i8, nanos).map_err(|_| err(whole, "time field out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_python_isoformat() {
        for text in [
            "2026-11-24T12:59:38.873607-05:00",
            "2024-01-02T03:04:05.678901+00:00",
            "2024-01-02T03:04:05",
            "2024-01-02T03:04:05+05:30",
            "2024-01-02T00:00:00.000001",
        ] {
            assert_eq!(PyDateTime::parse_iso(text).unwrap().to_iso(), text);
        }
    }

    #[test]
    fn reads_what_fromisoformat_reads() {
        let z = PyDateTime::parse_iso("2024-01-02T03:04:05Z").unwrap();
        assert_eq!(z.to_iso(), "2024-01-02T03:04:05+00:00");
        let bare = PyDateTime::parse_iso("2024-01-02").unwrap();
        assert_eq!(bare.to_iso(), "2024-01-02T00:00:00");
        let space = PyDateTime::parse_iso("2024-01-02 03:04:05.5+01:00").unwrap();
        assert_eq!(space.to_iso(), "2024-01-02T03:04:05.500000+01:00");
        let basic = PyDateTime::parse_iso("20240102T030405").unwrap();
        assert_eq!(basic.to_iso(), "2024-01-02T03:04:05");
        let nanos = PyDateTime::parse_iso("2024-01-02T03:04:05.123456789").unwrap();
        assert_eq!(nanos.to_iso(), "2024-01-02T03:04:05.123456");
    }

    #[test]
    fn refuses_nonsense_without_panicking() {
        for bad in [
            "",
            "2024",
            "2024-13-01",
            "2024-02-30T00:00",
            "2024-01-02T25:00",
            "2024-01-02T03:04:05+",
            "x024-01-02",
            "2024-01-02T03:04:05.",
            "2024-01-02T3",
        ] {
            assert!(PyDateTime::parse_iso(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn extreme_and_garbage_datetimes_are_errors_not_panics() {
        for bad in [
            "0000-01-01T00:00:00",
            "10000-01-01T00:00:00",
            "9999-12-31T23:59:60",
            "2024-01-02T03:04:05+24:00",
            "2024-01-02T03:04:05-99:99",
            "2024-01-02T03:04:05+05:30:00.5",
            "2024-01-02Ta€",
            "2024-01-02T€€",
            "2024-01-02T12:34:5€",
            "２０２４-01-02",
            "2024-01-02T03:04:05.1234567890123456789012345678901234567890x",
            "-001-01-01",
            "2024-00-01",
            "2024-01-00",
        ] {
            assert!(PyDateTime::parse_iso(bad).is_err(), "{bad}");
        }
        // Python accepts these; their instants are past jiff's range at the top only.
        let last = PyDateTime::parse_iso("9999-12-31T23:59:59.999999-05:00").unwrap();
        assert!(last.to_timestamp().is_err());
        assert_eq!(last.to_timestamp_saturating(), Timestamp::MAX);
        let first = PyDateTime::parse_iso("0001-01-01T00:00:00+23:59").unwrap();
        assert_eq!(first.to_timestamp_saturating(), first.to_timestamp().unwrap());
        let naive_last = PyDateTime::parse_iso("9999-12-31T23:59:59.999999").unwrap();
        assert_eq!(naive_last.to_iso(), "9999-12-31T23:59:59.999999");
        assert!(naive_last.to_timestamp_saturating() <= Timestamp::MAX);
    }

    #[test]
    fn seconds_convert_to_durations_without_panicking() {
        let cases = [
            (f64::NAN, None),
            (-f64::NAN, None),
            (f64::INFINITY, Some(MAX_DURATION)),
            (f64::NEG_INFINITY, Some(Duration::ZERO)),
            (1e300, Some(MAX_DURATION)),
            (-1e300, Some(Duration::ZERO)),
            (f64::MAX, Some(MAX_DURATION)),
            (1.8446744073709552e19, Some(MAX_DURATION)),
            (3_155_760_000.0, Some(MAX_DURATION)),
            (-1.0, Some(Duration::ZERO)),
            (-0.0, Some(Duration::ZERO)),
            (0.0, Some(Duration::ZERO)),
            (5e-324, Some(Duration::ZERO)),
            (1.6e-9, Some(Duration::from_nanos(2))),
            (0.5, Some(Duration::from_millis(500))),
            (30.0, Some(Duration::from_secs(30))),
            (3_155_759_999.5, Some(Duration::new(3_155_759_999, 500_000_000))),
        ];
        for (secs, want) in cases {
            assert_eq!(duration_from_secs(secs), want, "{secs}");
        }
        for (secs, want) in [
            (i64::MIN, Duration::ZERO),
            (-1, Duration::ZERO),
            (0, Duration::ZERO),
            (7, Duration::from_secs(7)),
            (i64::MAX, MAX_DURATION),
        ] {
            assert_eq!(duration_from_int_secs(secs), want, "{secs}");
        }
        // The longest duration is safe to add to now.
        assert!(std::time::Instant::now().checked_add(MAX_DURATION).is_some());
        assert!(Timestamp::now().checked_add(MAX_DURATION).is_ok());
    }

    #[test]
    fn naive_is_taken_as_utc() {
        let naive = PyDateTime::parse_iso("2024-01-02T03:04:05").unwrap();
        let aware = PyDateTime::parse_iso("2024-01-02T04:04:05+01:00").unwrap();
        assert_eq!(naive.to_timestamp().unwrap(), aware.to_timestamp().unwrap());
    }

    #[test]
    fn dates_and_times() {
        assert_eq!(PyDate::parse_iso("2024-01-02").unwrap().to_iso(), "2024-01-02");
        assert_eq!(PyTime::parse_iso("03:04:05").unwrap().to_iso(), "03:04:05");
        assert_eq!(PyTime::parse_iso("03:04:05.000100+02:00").unwrap().to_iso(), "03:04:05.000100+02:00");
    }

    #[test]
    fn zoned_keeps_the_local_offset() {
        let ts: Timestamp = "2026-11-24T17:59:38.873607Z".parse().unwrap();
        let zoned = ts.in_tz("America/New_York").unwrap();
        assert_eq!(PyDateTime::from_zoned(&zoned).to_iso(), "2026-11-24T12:59:38.873607-05:00");
    }
}

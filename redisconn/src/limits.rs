//! The accepted range of every number a connection URL or a setting gives:
//! [`Limit`] says what is accepted and turns text or a number into a value
//! (or a [`Duration`]) only when it is inside, so nothing downstream can
//! overflow, divide by zero or panic (`Duration::from_secs_f64(1e300)` would).
//!
//! The constants are the ranges of the numbers the broker's and the result
//! backend's URLs share with their settings; `celeriac-config` uses the same
//! constants for the settings, so a value means the same wherever it is given.

use std::fmt;
use std::time::Duration;

/// What a number counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Seconds; fractions allowed (`2.5`).
    Seconds,
    /// A whole number of things (connections, retries, tasks, a database number, a port).
    Whole,
    /// A whole number of bytes.
    Bytes,
}

/// The accepted values of one number: `min..=max` in `unit`, with an optional
/// note on what a special value means (`"0 disables"`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limit {
    /// The smallest accepted value.
    pub min: f64,
    /// The largest accepted value.
    pub max: f64,
    /// What the number counts (whole units or fractional seconds).
    pub unit: Unit,
    /// What a special value means, shown with the range (empty if none).
    pub note: &'static str,
}

/// A value outside its [`Limit`], or not a number at all.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("expected {limit}")]
pub struct OutOfRange {
    /// The value as given (text as written, numbers in short form).
    pub value: String,
    /// What is accepted.
    pub limit: Limit,
}

impl Limit {
    /// Seconds from `min` to `max`, fractions allowed.
    pub const fn seconds(min: f64, max: f64) -> Limit {
        Limit { min, max, unit: Unit::Seconds, note: "" }
    }

    /// A whole number from `min` to `max`.
    pub const fn whole(min: u64, max: u64) -> Limit {
        Limit { min: min as f64, max: max as f64, unit: Unit::Whole, note: "" }
    }

    /// A whole number of bytes from `min` to `max`.
    pub const fn bytes(min: u64, max: u64) -> Limit {
        Limit { min: min as f64, max: max as f64, unit: Unit::Bytes, note: "" }
    }

    /// The same range with a note on what a special value means.
    pub const fn note(self, note: &'static str) -> Limit {
        Limit { note, ..self }
    }

    /// Whether `value` is accepted: finite, inside the range, and whole where
    /// the unit is.
    pub fn contains(&self, value: f64) -> bool {
        value.is_finite()
            && value >= self.min
            && value <= self.max
            && (self.unit == Unit::Seconds || value.fract() == 0.0)
    }

    /// `value` if accepted.
    pub fn check(&self, value: f64) -> Result<f64, OutOfRange> {
        if self.contains(value) {
            Ok(value)
        } else {
            Err(OutOfRange { value: short(value), limit: *self })
        }
    }

    /// A whole `value` (from an integer setting) if accepted.
    pub fn check_whole(&self, value: u128) -> Result<u64, OutOfRange> {
        let fits = u64::try_from(value).ok().filter(|v| {
            // Exact for every bound we use (all below 2^53).
            let v = *v as f64;
            v >= self.min && v <= self.max
        });
        fits.ok_or_else(|| OutOfRange { value: value.to_string(), limit: *self })
    }

    /// Reads a number written as text (a URL query value, an environment
    /// variable): Python's `float()` spellings for seconds, digits only for
    /// whole numbers (as Python's `int()`).
    pub fn parse(&self, text: &str) -> Result<f64, OutOfRange> {
        let out = || OutOfRange { value: text.to_owned(), limit: *self };
        let trimmed = text.trim();
        let value = match self.unit {
            Unit::Seconds => trimmed.parse::<f64>().map_err(|_| out())?,
            Unit::Whole | Unit::Bytes => {
                let digits = trimmed.strip_prefix('+').unwrap_or(trimmed);
                let negative = digits.starts_with('-');
                let whole = digits.trim_start_matches('-');
                if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit() || b == b'_') {
                    return Err(out());
                }
                // Very long numbers are simply out of range.
                match whole.replace('_', "").parse::<u64>() {
                    Ok(v) if negative => -(v as f64),
                    Ok(v) => v as f64,
                    Err(_) => return Err(out()),
                }
            }
        };
        self.check(value).map_err(|_| out())
    }

    /// Reads a whole number written as text into any integer type the range fits.
    pub fn parse_whole<T: TryFrom<u64>>(&self, text: &str) -> Result<T, OutOfRange> {
        let value = self.parse(text)?;
        // In range, hence whole and non-negative when min >= 0.
        T::try_from(value as u64).map_err(|_| OutOfRange { value: text.to_owned(), limit: *self })
    }

    /// `seconds` as a [`Duration`], if accepted.
    pub fn duration(&self, seconds: f64) -> Result<Duration, OutOfRange> {
        let secs = self.check(seconds)?;
        Duration::try_from_secs_f64(secs).map_err(|_| OutOfRange { value: short(seconds), limit: *self })
    }

    /// Reads seconds written as text into a [`Duration`], if accepted.
    pub fn parse_duration(&self, text: &str) -> Result<Duration, OutOfRange> {
        let secs = self.parse(text)?;
        self.duration(secs).map_err(|e| OutOfRange { value: text.to_owned(), ..e })
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (min, max) = (short(self.min), short(self.max));
        match self.unit {
            Unit::Seconds => write!(f, "a number of seconds from {min} to {max}")?,
            Unit::Whole => write!(f, "a whole number from {min} to {max}")?,
            Unit::Bytes => write!(f, "a whole number of bytes from {min} to {max}")?,
        }
        if !self.note.is_empty() {
            write!(f, " ({})", self.note)?;
        }
        Ok(())
    }
}

/// A number as a person writes it: `86400`, `0.5`, `1e300`, `inf`, `NaN`.
pub fn short(value: f64) -> String {
    let magnitude = value.abs();
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "inf" } else { "-inf" }.into()
    } else if magnitude != 0.0 && !(1e-4..1e16).contains(&magnitude) {
        format!("{value:e}")
    } else {
        format!("{value}")
    }
}

const DAY: f64 = 86_400.0;
const YEAR: f64 = 365.0 * DAY;

/// `socket_timeout`: how long a command may wait for its reply (1 ms to a day).
pub const SOCKET_TIMEOUT: Limit = Limit::seconds(0.001, DAY);
/// `socket_connect_timeout`: how long connecting may take (1 ms to a day).
pub const SOCKET_CONNECT_TIMEOUT: Limit = Limit::seconds(0.001, DAY);
/// `visibility_timeout`: how long a reserved message stays unacknowledged
/// before it is restored (1 ms to a year).
pub const VISIBILITY_TIMEOUT: Limit = Limit::seconds(0.001, YEAR);
/// `polling_interval` (the `BRPOP` timeout of the Redis transport): 1 ms to an hour.
pub const POLLING_INTERVAL: Limit = Limit::seconds(0.001, 3600.0);
/// `health_check_interval`: 0 (no checks) to a day.
pub const HEALTH_CHECK_INTERVAL: Limit = Limit::seconds(0.0, DAY).note("0 disables the checks");
/// `unacked_restore_interval`: the visibility sweep's timer (1 ms to a day).
pub const UNACKED_RESTORE_INTERVAL: Limit = Limit::seconds(0.001, DAY);
/// `unacked_restore_limit`: messages restored per sweep.
pub const UNACKED_RESTORE_LIMIT: Limit = Limit::whole(1, 1_000_000);
/// `max_connections`: connections per process.
pub const MAX_CONNECTIONS: Limit = Limit::whole(1, 100_000);
/// A database number (`/0`, `?db=`, `?virtual_host=`); the server's own
/// `databases` setting is the real bound, reported when connecting.
pub const DB: Limit = Limit::whole(0, i32::MAX as u64 - 1);
/// A TCP port.
pub const PORT: Limit = Limit::whole(1, 65_535);
/// `retry_policy["max_retries"]` of the result backend.
pub const RETRY_MAX_RETRIES: Limit = Limit::whole(0, 1_000_000);
/// `retry_policy["interval_start"]`, `["interval_step"]`, `["interval_max"]`: 0 to an hour.
pub const RETRY_INTERVAL: Limit = Limit::seconds(0.0, 3600.0);
/// redis-py's `socket_read_size` (read and ignored by celeriac).
pub const SOCKET_READ_SIZE: Limit = Limit::bytes(1, 1 << 30);
/// redis-py's `timeout` of a blocking pool (read and ignored by celeriac).
pub const POOL_TIMEOUT: Limit = Limit::seconds(0.0, DAY);
/// The RESP `protocol` version (read and ignored by celeriac).
pub const PROTOCOL: Limit = Limit::whole(2, 3);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extremes_are_refused_without_panicking() {
        for text in ["inf", "-inf", "nan", "NaN", "1e300", "-1", "", "abc", "0x10", "1e-300"] {
            assert!(SOCKET_TIMEOUT.parse_duration(text).is_err(), "{text}");
        }
        for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e300, -1.0, f64::MAX, f64::MIN_POSITIVE] {
            assert!(SOCKET_TIMEOUT.duration(value).is_err(), "{value}");
        }
        for text in ["1.5", "-1", "1e3", "99999999999999999999999999", "", "+", "--1", "0"] {
            assert!(MAX_CONNECTIONS.parse(text).is_err(), "{text}");
        }
        assert_eq!(MAX_CONNECTIONS.parse_whole::<usize>(" +12 "), Ok(12));
        assert_eq!(SOCKET_TIMEOUT.parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(HEALTH_CHECK_INTERVAL.parse_duration("0"), Ok(Duration::ZERO));
        assert!(PORT.check_whole(0).is_err() && PORT.check_whole(65_536).is_err() && PORT.check_whole(1).is_ok());
        assert!(DB.check_whole(u128::MAX).is_err());
    }

    #[test]
    fn messages_name_the_range() {
        let err = SOCKET_TIMEOUT.parse("1e300").unwrap_err();
        assert_eq!(err.value, "1e300");
        assert_eq!(err.to_string(), "expected a number of seconds from 0.001 to 86400");
        assert_eq!(HEALTH_CHECK_INTERVAL.to_string(), "a number of seconds from 0 to 86400 (0 disables the checks)");
        assert_eq!(DB.to_string(), "a whole number from 0 to 2147483646");
        assert_eq!(SOCKET_TIMEOUT.check(f64::NAN).unwrap_err().value, "NaN");
        assert_eq!(short(1e300), "1e300");
        assert_eq!(short(-0.5), "-0.5");
    }
}

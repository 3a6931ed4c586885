//! RedBeat's Redis layout and JSON, read and written byte-compatibly, so that
//! entries written by RedBeat's Python classes run in celeriac and celeriac's
//! entries run in RedBeat:
//!
//! - `<prefix><name>` (`redbeat:poll`): a hash with `definition` (name, task,
//!   args, kwargs, options, schedule, enabled) and `meta` (`last_run_at`,
//!   `total_run_count`), both RedBeat's own JSON (`{"__type__": "interval", ...}`,
//!   not kombu's);
//! - `<prefix>:schedule` (`redbeat::schedule`): a sorted set of entry keys
//!   scored by the next due time in whole UTC seconds (`-1`: never again);
//! - `<prefix>:statics` (`redbeat::statics`): names of entries that came from
//!   the configuration, so removed ones can be deleted;
//! - the lease at `redbeat::lock` (see [`crate::store`]).
//!
//! celeriac adds two hash fields RedBeat never reads: `celeriac` (the entry's
//! safety options, [`crate::entry::Extras`]) and `celeriac_run` (run state:
//! the schedule the last slot belongs to, the last task id, a send in flight).
//! `meta.last_run_at` holds the *slot* of the last run, not the time it was
//! sent, so a RedBeat that takes over continues the same grid.

use celeriac_config::Settings;
use jiff::civil::DateTime;
use jiff::tz::{Offset, TimeZone};
use jiff::Timestamp;
use serde_json::{json, Value as Json};

use crate::entry::{brief, cut, number, truthy, Entry, Extras, Origin, Parts};
use crate::schedule::{Crontab, Frequency, Interval, RRule, Schedule};
use crate::BeatError;

/// RedBeat's key names for a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// The prefix (`redbeat:`).
    pub prefix: String,
    /// `<prefix>:schedule`.
    pub schedule: String,
    /// `<prefix>:statics`.
    pub statics: String,
    /// The lease key (`redbeat_lock_key`, default `<prefix>:lock`).
    pub lock: String,
}

impl Keys {
    /// The keys for the settings' `redbeat_key_prefix` and `redbeat_lock_key`.
    pub fn from_settings(settings: &Settings) -> Keys {
        Keys::new(&settings.redbeat_key_prefix, &settings.redbeat_lock_key())
    }

    /// The keys for `prefix`, with the lease at `lock`.
    pub fn new(prefix: &str, lock: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
            schedule: format!("{prefix}:schedule"),
            statics: format!("{prefix}:statics"),
            lock: lock.to_owned(),
        }
    }

    /// An entry's hash key.
    pub fn entry(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The entry name of a hash key.
    pub fn name<'a>(&self, key: &'a str) -> &'a str {
        key.strip_prefix(self.prefix.as_str()).unwrap_or(key)
    }
}

/// A schedule as RedBeat's encoder writes it.
pub fn schedule_to_json(schedule: &Schedule) -> Json {
    match schedule {
        Schedule::Interval(i) => {
            json!({"__type__": "interval", "every": i.every.as_secs_f64(), "relative": i.relative})
        }
        Schedule::Crontab(c) => {
            let mut map = serde_json::Map::new();
            map.insert("__type__".into(), "crontab".into());
            for (name, value) in c.fields() {
                map.insert(name.into(), value.clone());
            }
            // RedBeat's order: minute, hour, day_of_week, day_of_month, month_of_year.
            Json::Object(map)
        }
        Schedule::RRule(r) => {
            let minutes = f64::from(r.offset.seconds()) / 60.0;
            let mut v = json!({
                "__type__": "rrule", "freq": r.freq.number(), "interval": r.interval, "wkst": null,
                "count": r.count, "bysetpos": null, "bymonth": null, "bymonthday": null, "byyearday": null,
                "byeaster": null, "byweekno": null, "byweekday": null, "byhour": null, "byminute": null,
                "bysecond": null, "dtstart": r.dtstart.as_second(), "dtstart_tz": minutes,
            });
            if let (Some(until), Json::Object(map)) = (r.until, &mut v) {
                map.insert("until".into(), until.as_second().into());
                map.insert("until_tz".into(), minutes.into());
            }
            v
        }
    }
}

/// The longest interval beat runs: a hundred years (longer ones are typing
/// errors, and their slots would leave the calendar).
pub const MAX_INTERVAL: jiff::SignedDuration = jiff::SignedDuration::from_hours(100 * 366 * 24);

/// A UTC offset given in minutes (RedBeat's `dtstart_tz`); absent or null is UTC.
fn offset_minutes(key: &str, v: Option<&Json>) -> Result<Offset, String> {
    let minutes = match v {
        None | Some(Json::Null) => 0.0,
        Some(x) => x.as_f64().ok_or_else(|| format!("{key} {} is not a number of minutes", brief(x)))?,
    };
    let seconds = (minutes * 60.0).round();
    if !seconds.is_finite() || seconds.abs() >= 86_400.0 {
        return Err(format!("{key}: an offset of {} minutes is out of range (less than a day)", number(minutes)));
    }
    // In range: the cast is exact.
    Offset::from_seconds(seconds as i32).map_err(|e| e.to_string())
}

/// A whole number field of a schedule: absent or null gives `None`.
fn whole(v: &Json, key: &str, what: &str) -> Result<Option<u64>, String> {
    match v.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(x) => x.as_u64().map(Some).ok_or_else(|| format!("{key} {} is not {what}", brief(x))),
    }
}

/// A schedule from RedBeat's JSON, every field checked: a value that is out
/// of range or of the wrong type is an error naming it, never a panic.
pub fn schedule_from_json(v: &Json) -> Result<Schedule, String> {
    if !v.is_object() {
        return Err(format!("schedule {} is not an object with __type__ interval, crontab or rrule", brief(v)));
    }
    let kind = match v.get("__type__") {
        None | Some(Json::Null) => "",
        Some(Json::String(kind)) => kind.as_str(),
        Some(other) => return Err(format!("schedule __type__ {} is not text", brief(other))),
    };
    match kind {
        "interval" => {
            let every = match v.get("every") {
                Some(Json::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
                other => {
                    return Err(format!(
                        "interval every={} must be a number of seconds",
                        other.map_or_else(|| "(missing)".to_owned(), brief)
                    ))
                }
            };
            let every = jiff::SignedDuration::try_from_secs_f64(every)
                .ok()
                .filter(|d| d.is_positive() && *d <= MAX_INTERVAL)
                .map(crate::schedule::duration_to_micros)
                .ok_or_else(|| {
                    format!("interval every={} must be a positive number of seconds, at most 100 years", number(every))
                })?;
            // Celery's `if self.relative`: Python truthiness.
            let relative = v.get("relative").is_some_and(truthy);
            Ok(Schedule::Interval(Interval { every, relative }))
        }
        "crontab" => {
            let star = Json::String("*".into());
            let f = |name: &str| v.get(name).filter(|x| !x.is_null()).unwrap_or(&star).clone();
            Crontab::from_fields(&f("minute"), &f("hour"), &f("day_of_week"), &f("day_of_month"), &f("month_of_year"))
                .map(Schedule::Crontab)
        }
        "rrule" => {
            const UNSUPPORTED: [&str; 11] = [
                "bysetpos",
                "bymonth",
                "bymonthday",
                "byyearday",
                "byeaster",
                "byweekno",
                "byweekday",
                "byhour",
                "byminute",
                "bysecond",
                "wkst",
            ];
            if let Some(part) = UNSUPPORTED.iter().find(|p| v.get(**p).is_some_and(|x| !x.is_null())) {
                return Err(format!(
                    "rrule with {part} is not supported by celeriac (only freq, interval, dtstart, count, until)"
                ));
            }
            let freq = Frequency::from_json(v.get("freq").unwrap_or(&Json::Null))?;
            let interval = match whole(v, "interval", "a whole number of steps above 0")? {
                None => 1,
                Some(n) => u32::try_from(n)
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("rrule interval {n} must be 1 to {}", u32::MAX))?,
            };
            let offset = offset_minutes("rrule dtstart_tz", v.get("dtstart_tz"))?;
            let second = |key: &str| -> Result<Option<Timestamp>, String> {
                match v.get(key).filter(|x| !x.is_null()) {
                    None => Ok(None),
                    Some(x) => {
                        let s = x
                            .as_f64()
                            .filter(|s| s.is_finite())
                            .ok_or_else(|| format!("rrule {key} {} is not a UNIX time in seconds", brief(x)))?;
                        // `as` saturates; out-of-range seconds are refused by jiff.
                        Timestamp::from_second(s.floor() as i64)
                            .map(Some)
                            .map_err(|e| format!("rrule {key} {}: {e}", number(s)))
                    }
                }
            };
            let dtstart = second("dtstart")?
                .ok_or("rrule without dtstart: RedBeat takes it from the clock when it builds the rule; give one")?;
            let count = whole(v, "count", "a whole number of runs")?.map(|n| u32::try_from(n).unwrap_or(u32::MAX));
            Ok(Schedule::RRule(RRule { freq, interval, dtstart, offset, count, until: second("until")? }))
        }
        "" => Err("schedule without __type__ (expected interval, crontab or rrule)".into()),
        other => Err(format!("schedule type {:?} is not supported (interval, crontab and rrule are)", cut(other, 40))),
    }
}

/// A datetime as RedBeat's encoder writes it, in UTC.
pub fn datetime_to_json(at: Timestamp) -> Json {
    let dt = TimeZone::UTC.to_datetime(at);
    json!({
        "__type__": "datetime", "year": dt.year(), "month": dt.month(), "day": dt.day(),
        "hour": dt.hour(), "minute": dt.minute(), "second": dt.second(),
        "microsecond": dt.subsec_nanosecond() / 1000, "timezone": "UTC",
    })
}

/// A datetime from RedBeat's JSON: `timezone` is a zone name or an offset in
/// seconds; a wall time that is ambiguous in its zone is read as Python's
/// `fold=0` reads it. Each field is checked as Python's `datetime(...)` does.
pub fn datetime_from_json(v: &Json) -> Result<Timestamp, String> {
    if !v.is_object() {
        return Err(format!("datetime {} is not RedBeat's datetime object", brief(v)));
    }
    let n = |k: &str| match v.get(k) {
        Some(x) => x.as_i64().ok_or_else(|| format!("datetime {k} {} is not a whole number", brief(x))),
        None => Err(format!("datetime without {k}: {}", brief(v))),
    };
    let small = |k: &str| n(k).and_then(|x| i8::try_from(x).map_err(|_| format!("datetime {k} {x} is out of range")));
    let year = n("year")?;
    let year = i16::try_from(year).map_err(|_| format!("datetime year {year} is out of range"))?;
    let micro = match v.get("microsecond") {
        None | Some(Json::Null) => 0,
        Some(_) => n("microsecond")?,
    };
    let micro = i32::try_from(micro)
        .ok()
        .filter(|m| (0..1_000_000).contains(m))
        .ok_or_else(|| format!("datetime microsecond {micro} is not 0-999999"))?;
    let wall = DateTime::new(
        year,
        small("month")?,
        small("day")?,
        small("hour")?,
        small("minute")?,
        small("second")?,
        micro * 1000,
    )
    .map_err(|e| format!("datetime {}: {e}", brief(v)))?;
    let zone = v.get("timezone").cloned().unwrap_or(Json::String("UTC".into()));
    match zone {
        Json::String(name) => {
            let tz = crate::entry::time_zone(&name)?;
            tz.to_ambiguous_timestamp(wall).compatible().map_err(|e| e.to_string())
        }
        Json::Number(secs) => {
            let secs = secs.as_f64().unwrap_or(f64::NAN);
            offset_minutes("datetime timezone", Some(&Json::from(secs / 60.0)))?
                .to_timestamp(wall)
                .map_err(|e| e.to_string())
        }
        other => Err(format!("datetime timezone {} is neither a zone name nor seconds", brief(&other))),
    }
}

/// An entry's `definition`, field for field as RedBeat's `save()` writes it.
pub fn definition_json(entry: &Entry) -> Json {
    json!({
        "name": entry.name,
        "task": entry.task,
        "args": entry.args,
        "kwargs": entry.kwargs,
        "options": entry.options,
        "schedule": schedule_to_json(&entry.schedule),
        "enabled": entry.enabled,
    })
}

/// Decodes an entry from its hash fields (`definition`, and `celeriac` if
/// present), each field checked: the error names the entry and says what is
/// wrong. Unknown send options are returned for the caller to warn about.
pub fn entry_from_hash(
    key: &str,
    keys: &Keys,
    definition: &str,
    extras: Option<&str>,
    origin: Origin,
    app_tz: &TimeZone,
    cron_deadline: Option<f64>,
) -> Result<(Entry, Vec<String>), BeatError> {
    let fallback = keys.name(key).to_owned();
    let d: Json = serde_json::from_str(definition)
        .map_err(|e| BeatError::entry(&fallback, format!("{key} definition is not JSON: {e}")))?;
    let Some(fields) = d.as_object() else {
        return Err(BeatError::entry(&fallback, format!("{key} definition {} is not a JSON object", brief(&d))));
    };
    let name = match fields.get("name") {
        None | Some(Json::Null) => fallback,
        Some(Json::String(name)) if *name == fallback => fallback,
        Some(other) => {
            return Err(BeatError::entry(
                &fallback,
                format!(
                    "{key}: definition name {} is not the key's name {fallback:?} (RedBeat keeps an entry at \
                     <prefix><name>; write it under its own name)",
                    brief(other)
                ),
            ))
        }
    };
    let bad = |what: String| BeatError::entry(&name, format!("{key}: {what}"));
    let task = match fields.get("task") {
        Some(Json::String(task)) => task.clone(),
        None | Some(Json::Null) => return Err(bad("definition has no task".into())),
        Some(other) => return Err(bad(format!("task {} is not a task name", brief(other)))),
    };
    let args = match fields.get("args") {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::Array(a)) => a.clone(),
        Some(other) => return Err(bad(format!("args {} is not a list", brief(other)))),
    };
    let object = |field: &str| match fields.get(field) {
        None | Some(Json::Null) => Ok(serde_json::Map::new()),
        Some(Json::Object(m)) => Ok(m.clone()),
        Some(other) => Err(bad(format!("{field} {} is not an object", brief(other)))),
    };
    let schedule = match fields.get("schedule") {
        None | Some(Json::Null) => return Err(bad("definition has no schedule".into())),
        Some(s) => schedule_from_json(s).map_err(&bad)?,
    };
    let extras: Extras = match extras {
        Some(text) => {
            let wrong = |e: String| bad(format!("the celeriac field: {e} (delete the field to use the defaults)"));
            let v: Json = serde_json::from_str(text).map_err(|e| wrong(e.to_string()))?;
            if !v.is_object() {
                return Err(wrong(format!("{} is not an object", brief(&v))));
            }
            serde_json::from_value(v).map_err(|e| wrong(e.to_string()))?
        }
        None => Extras::default(),
    };
    let options = object("options")?;
    let parts = Parts {
        name: name.clone(),
        task,
        args,
        kwargs: object("kwargs")?,
        options,
        schedule,
        // RedBeat's `if not entry.enabled`: Python truthiness; absent is enabled.
        enabled: fields.get("enabled").is_none_or(truthy),
        extras,
        origin,
    };
    let entry = Entry::build(parts, app_tz, cron_deadline)?;
    let (_, unknown) = crate::entry::send_options(&entry.options).map_err(&bad)?;
    Ok((entry, unknown))
}

/// RedBeat's `meta` for a last run at `slot` (none: never ran).
pub fn meta_json(last_run_at: Option<Timestamp>, total_run_count: u64) -> Json {
    json!({
        "last_run_at": last_run_at.map(datetime_to_json),
        "total_run_count": total_run_count,
    })
}

/// `last_run_at` and `total_run_count` from RedBeat's `meta` (missing: never
/// ran), each checked.
pub fn meta_from_json(text: Option<&str>) -> Result<(Option<Timestamp>, u64), String> {
    let Some(text) = text.filter(|t| !t.is_empty()) else { return Ok((None, 0)) };
    let v: Json = serde_json::from_str(text).map_err(|e| format!("meta is not JSON: {e}"))?;
    if !v.is_object() {
        return Err(format!("meta {} is not a JSON object", brief(&v)));
    }
    let last = match v.get("last_run_at") {
        None | Some(Json::Null) => None,
        Some(dt) => Some(datetime_from_json(dt).map_err(|e| format!("meta last_run_at: {e}"))?),
    };
    let count = match v.get("total_run_count") {
        None | Some(Json::Null) => 0,
        Some(n) => {
            n.as_u64().ok_or_else(|| format!("meta total_run_count {} is not a whole number of runs", brief(n)))?
        }
    };
    Ok((last, count))
}

/// The zset score RedBeat reads: the next due time in whole UTC seconds, `-1`
/// for never.
pub fn score(next: Option<Timestamp>) -> i64 {
    next.map_or(-1, |t| t.as_second())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redbeats_captured_json_decodes() {
        let interval = json!({"__type__": "interval", "every": 3.0, "relative": false});
        assert!(matches!(schedule_from_json(&interval), Ok(Schedule::Interval(i)) if i.every.as_secs() == 3));
        let cron = json!({"__type__": "crontab", "minute": "*/5", "hour": "9-17", "day_of_week": "mon-fri",
                          "day_of_month": "*", "month_of_year": "*"});
        let decoded = schedule_from_json(&cron).unwrap();
        assert_eq!(schedule_to_json(&decoded), cron);
        let meta = r#"{"last_run_at": {"__type__": "datetime", "year": 2026, "month": 11, "day": 24, "hour": 17, "minute": 59, "second": 42, "microsecond": 910083, "timezone": "UTC"}, "total_run_count": 2}"#;
        let (last, count) = meta_from_json(Some(meta)).unwrap();
        assert_eq!((last.unwrap().to_string(), count), ("2026-11-24T17:59:42.910083Z".into(), 2));
        assert_eq!(meta_from_json(Some(r#"{"last_run_at": null}"#)).unwrap(), (None, 0));
    }

    #[test]
    fn datetimes_in_zones_and_offsets() {
        let berlin = json!({"__type__": "datetime", "year": 2026, "month": 7, "day": 1, "hour": 12, "minute": 0,
                            "second": 0, "microsecond": 0, "timezone": "Europe/Berlin"});
        assert_eq!(datetime_from_json(&berlin).unwrap().to_string(), "2026-07-01T10:00:00Z");
        let offset = json!({"__type__": "datetime", "year": 2026, "month": 7, "day": 1, "hour": 12, "minute": 0,
                            "second": 0, "microsecond": 0, "timezone": 3600.0});
        assert_eq!(datetime_from_json(&offset).unwrap().to_string(), "2026-07-01T11:00:00Z");
        let t: Timestamp = "2026-07-01T10:00:00.5Z".parse().unwrap();
        assert_eq!(datetime_from_json(&datetime_to_json(t)).unwrap(), t);
    }

    #[test]
    fn one_off_runs_are_rrules_with_count_one() {
        let at: Timestamp = "2026-03-01T12:00:00Z".parse().unwrap();
        let v = schedule_to_json(&Schedule::RRule(RRule::once(at)));
        assert_eq!(
            (v["count"].as_u64(), v["dtstart"].as_i64(), v["freq"].as_u64()),
            (Some(1), Some(at.as_second()), Some(3))
        );
        assert!(matches!(schedule_from_json(&v), Ok(Schedule::RRule(r)) if r.is_once() && r.dtstart == at));
        let by = json!({"__type__": "rrule", "freq": 3, "dtstart": 0, "byhour": [3]});
        assert!(schedule_from_json(&by).unwrap_err().contains("byhour"));
    }

    #[test]
    fn schedules_with_extreme_values_are_errors_not_panics() {
        let bad = [
            json!({"__type__": "interval", "every": 1e300}),
            json!({"__type__": "interval", "every": -1}),
            json!({"__type__": "interval", "every": 0}),
            json!({"__type__": "interval", "every": 1e-300}),
            json!({"__type__": "interval", "every": "10"}),
            json!({"__type__": "interval", "every": [10]}),
            json!({"__type__": "interval"}),
            json!({"__type__": "interval", "every": 4e9}),
            json!({"__type__": "crontab", "minute": 1e300}),
            json!({"__type__": "crontab", "minute": -1}),
            json!({"__type__": "crontab", "minute": u64::MAX}),
            json!({"__type__": "crontab", "hour": [[1]]}),
            json!({"__type__": "crontab", "hour": []}),
            json!({"__type__": "crontab", "minute": "*/99999999999999999999999"}),
            json!({"__type__": "crontab", "minute": "1-99999999999"}),
            json!({"__type__": "rrule", "freq": 3}),
            json!({"__type__": "rrule", "freq": -1, "dtstart": 0}),
            json!({"__type__": "rrule", "freq": 1e300, "dtstart": 0}),
            json!({"__type__": "rrule", "freq": 3, "dtstart": 1e300}),
            json!({"__type__": "rrule", "freq": 3, "dtstart": -1e300}),
            json!({"__type__": "rrule", "freq": 3, "dtstart": 0, "interval": 0}),
            json!({"__type__": "rrule", "freq": 3, "dtstart": 0, "interval": 1e300}),
            json!({"__type__": "rrule", "freq": 3, "dtstart": 0, "count": -1}),
            json!({"__type__": "rrule", "freq": 3, "dtstart": 0, "dtstart_tz": 1e300}),
            json!({"__type__": "rrule", "freq": 3, "dtstart": 0, "dtstart_tz": "+01:00"}),
            json!({"__type__": "rrule", "freq": 3, "dtstart": 0, "until": "tomorrow"}),
            json!({"__type__": 5}),
            json!({"__type__": "solar"}),
            json!([1, 2]),
            json!(null),
        ];
        for v in bad {
            let e = schedule_from_json(&v).expect_err(&v.to_string());
            assert!(e.len() < 400, "{v}: {e}");
        }
        // Far but valid: an rrule in year 9999 with a huge count simply ends.
        let far = json!({"__type__": "rrule", "freq": 0, "dtstart": 253_402_207_000i64, "interval": u32::MAX,
                         "count": u64::MAX});
        let Ok(Schedule::RRule(r)) = schedule_from_json(&far) else { panic!("{far}") };
        assert_eq!(r.next_after(Some(r.dtstart)), None);
    }

    #[test]
    fn datetimes_and_meta_with_extreme_values_are_errors_not_panics() {
        let dt = |over: Json| {
            let mut v = json!({"__type__": "datetime", "year": 2026, "month": 1, "day": 1, "hour": 0, "minute": 0,
                               "second": 0, "microsecond": 0, "timezone": "UTC"});
            if let (Json::Object(m), Json::Object(o)) = (&mut v, over) {
                m.extend(o);
            }
            v
        };
        for over in [
            json!({"year": 1e300}),
            json!({"year": 100_000}),
            json!({"year": -1e300}),
            json!({"microsecond": 1_000_000_000_000i64}),
            json!({"microsecond": 2_147_484}),
            json!({"microsecond": -1}),
            json!({"month": 13}),
            json!({"day": 0}),
            json!({"hour": 255}),
            json!({"second": "0"}),
            json!({"timezone": "Mars/Olympus"}),
            json!({"timezone": 1e300}),
            json!({"timezone": -86_400}),
            json!({"timezone": [3600]}),
        ] {
            let v = dt(over.clone());
            assert!(datetime_from_json(&v).is_err(), "{over}");
            let meta = json!({"last_run_at": v}).to_string();
            assert!(meta_from_json(Some(&meta)).unwrap_err().contains("last_run_at"), "{over}");
        }
        for meta in [
            r#"{"total_run_count": -1}"#,
            r#"{"total_run_count": 1e300}"#,
            r#"{"total_run_count": "3"}"#,
            r#"{"last_run_at": "2026-01-01T00:00:00Z"}"#,
            "[1]",
            "nonsense",
            "1e400",
        ] {
            assert!(meta_from_json(Some(meta)).is_err(), "{meta}");
        }
        assert_eq!(meta_from_json(Some(&format!(r#"{{"total_run_count": {}}}"#, u64::MAX))).unwrap().1, u64::MAX);
    }

    #[test]
    fn definitions_are_checked_field_by_field() {
        let keys = Keys::new("redbeat:", "redbeat::lock");
        let load = |d: Json| {
            entry_from_hash("redbeat:e", &keys, &d.to_string(), None, Origin::Dynamic, &TimeZone::UTC, None)
                .map(|(e, _)| e)
                .map_err(|e| e.to_string())
        };
        let good = json!({"name": "e", "task": "t", "schedule": {"__type__": "interval", "every": 1.0}});
        assert!(load(good.clone()).is_ok());
        let with = |k: &str, v: Json| {
            let mut d = good.clone();
            d[k] = v;
            d
        };
        for (d, says) in [
            (with("name", json!("other")), "is not the key's name"),
            (with("name", json!(5)), "is not the key's name"),
            (with("task", json!(5)), "task 5"),
            (with("task", json!("  ")), "must name a task"),
            (with("args", json!({"a": 1})), "args"),
            (with("kwargs", json!("k")), "kwargs"),
            (with("options", json!(1)), "options"),
            (with("schedule", json!(null)), "no schedule"),
            (json!([good.clone()]), "not a JSON object"),
        ] {
            let e = load(d.clone()).expect_err(&d.to_string());
            assert!(e.contains(says), "{d}: {e}");
        }
        for (value, enabled) in [(json!(0), false), (json!("yes"), true), (json!(null), false), (json!([]), false)] {
            assert_eq!(load(with("enabled", value.clone())).unwrap().enabled, enabled, "{value}");
        }
        let text = "x".repeat(10_000);
        let e = load(with("args", json!(text))).unwrap_err();
        assert!(e.len() < 300, "{e}");
    }
}

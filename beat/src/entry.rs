//! Beat entries: Celery's fields (`task`, `args`, `kwargs`, `options`,
//! `schedule`) plus celeriac's safety options (no-overlap, catch-up policy,
//! starting deadline, per-entry time zone), built from the TOML settings or
//! decoded from RedBeat's Redis layout, and the send options they turn into.

use celeriac_broker::{Expires, SendOptions};
use celeriac_config::{BeatEntrySettings, CatchUpPolicy};
use celeriac_protocol::codec::{Compression, ContentType};
use celeriac_protocol::time::PyDateTime;
use celeriac_protocol::{Map, Value};
use jiff::tz::TimeZone;
use jiff::SignedDuration;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::schedule::Schedule;
use crate::BeatError;

/// How long an unfinished previous run blocks a no-overlap entry by default.
pub const DEFAULT_NO_OVERLAP_TIMEOUT: SignedDuration = SignedDuration::from_hours(1);
/// Most missed slots `catch_up = "all"` sends by default.
pub const DEFAULT_MAX_CATCH_UP: u32 = 100;
/// How late a slot may be and still count as on time under `catch_up = "skip"`.
pub const DEFAULT_SKIP_GRACE: SignedDuration = SignedDuration::from_secs(30);
/// The most `max_catch_up` may be: `all` never sends more slots than this in one tick.
pub const MAX_CATCH_UP: u32 = 10_000;
/// The most seconds an option (`expires`, `countdown`, time limits) may say:
/// ten years. Larger values are typing errors, and do not fit every clock.
pub const MAX_OPTION_SECONDS: f64 = 315_360_000.0;
/// How deep `args`, `kwargs` and `options` may nest (lists in maps in lists...):
/// what beat sends must decode in every worker.
pub const MAX_NESTING: usize = 64;
/// How much of an offending value an error message shows.
const SHOWN: usize = 60;

/// Where an entry was defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// In `beat_schedule` (the TOML file), reloaded on SIGHUP.
    Static,
    /// In Redis, written by RedBeat's classes or any other program.
    Dynamic,
}

/// celeriac's part of an entry, beside RedBeat's `definition`: the hash field
/// `celeriac` of `redbeat:<name>` (RedBeat ignores it). Every field may be
/// left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extras {
    /// Zone of a crontab (default: the app `timezone`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Skip a slot while the previous run is unfinished.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_overlap: bool,
    /// Seconds after which an unfinished previous run no longer blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_overlap_timeout: Option<f64>,
    /// `once`, `skip` or `all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up: Option<CatchUpPolicy>,
    /// Most slots `all` sends after downtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_catch_up: Option<u32>,
    /// Seconds after its slot a run may still be sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starting_deadline: Option<f64>,
}

/// One periodic task.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The entry's name (`redbeat:<name>` in Redis).
    pub name: String,
    /// The task name sent.
    pub task: String,
    /// Positional arguments, as written.
    pub args: Vec<Json>,
    /// Keyword arguments, as written.
    pub kwargs: serde_json::Map<String, Json>,
    /// Publishing options, as written (Celery's `apply_async` keywords).
    pub options: serde_json::Map<String, Json>,
    /// The options as the producer takes them (no task id yet).
    pub send: SendOptions,
    /// When it runs.
    pub schedule: Schedule,
    /// The zone its wall-clock schedule is read in.
    pub tz: TimeZone,
    /// Whether it runs at all.
    pub enabled: bool,
    /// celeriac's options.
    pub extras: Extras,
    /// The starting deadline in force: the entry's own, else
    /// `beat_cron_starting_deadline` for a crontab.
    pub starting_deadline: Option<SignedDuration>,
    /// Where it was defined.
    pub origin: Origin,
}

/// Options beat knows how to send; anything else is refused in the TOML file
/// and ignored (with a warning) in a dynamic entry.
pub const KNOWN_OPTIONS: [&str; 14] = [
    "queue",
    "exchange",
    "routing_key",
    "priority",
    "expires",
    "countdown",
    "eta",
    "headers",
    "time_limit",
    "soft_time_limit",
    "ignore_result",
    "shadow",
    "serializer",
    "compression",
];

/// A JSON value as the protocol's value (plain JSON types only).
pub fn json_to_value(j: &Json) -> Value {
    match j {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::Str(s.clone()),
        Json::Array(items) => Value::List(items.iter().map(json_to_value).collect()),
        Json::Object(map) => Value::Map(map.iter().map(|(k, v)| (k.clone(), json_to_value(v))).collect()),
    }
}

/// `text` cut to `max` characters (with an ellipsis), for messages.
pub fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((end, _)) => format!("{}...", &text[..end]),
    }
}

/// A JSON value as an error message shows it: its JSON text, cut short, so a
/// megabyte of garbage in an entry makes a one-line message.
pub fn brief(v: &Json) -> String {
    cut(&v.to_string(), SHOWN)
}

/// A float for messages: `1e300`, not three hundred digits.
pub fn number(f: f64) -> String {
    if f != 0.0 && f.is_finite() && !(1e-4..1e15).contains(&f.abs()) {
        format!("{f:e}")
    } else {
        f.to_string()
    }
}

/// How deep a JSON value nests (a scalar is 0, `[1]` is 1), counted without
/// recursion so any depth is safe to measure.
pub fn nesting(v: &Json) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        match v {
            Json::Array(items) => stack.extend(items.iter().map(|i| (i, depth + 1))),
            Json::Object(map) => stack.extend(map.values().map(|i| (i, depth + 1))),
            _ => {}
        }
    }
    deepest
}

/// Python's truthiness of a JSON value (`None`, `False`, `0`, `0.0`, `""`,
/// `[]`, `{}` are false), as RedBeat's `if not entry.enabled` reads it.
pub fn truthy(v: &Json) -> bool {
    match v {
        Json::Null => false,
        Json::Bool(b) => *b,
        Json::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Json::String(s) => !s.is_empty(),
        Json::Array(a) => !a.is_empty(),
        Json::Object(m) => !m.is_empty(),
    }
}

fn seconds(option: &str, v: &Json) -> Result<f64, String> {
    v.as_f64().filter(|s| s.is_finite() && (0.0..=MAX_OPTION_SECONDS).contains(s)).ok_or_else(|| {
        format!("options.{option} = {}: expected seconds, from 0 to {MAX_OPTION_SECONDS} (ten years)", brief(v))
    })
}

fn duration(option: &str, v: &Json) -> Result<std::time::Duration, String> {
    let secs = seconds(option, v)?;
    std::time::Duration::try_from_secs_f64(secs).map_err(|e| format!("options.{option} = {}: {e}", number(secs)))
}

fn text<'a>(option: &str, v: &'a Json) -> Result<&'a str, String> {
    v.as_str().ok_or_else(|| format!("options.{option} = {}: expected text", brief(v)))
}

/// Reads Celery's `apply_async` options. Unknown options are returned, not
/// refused: the caller decides.
pub fn send_options(options: &serde_json::Map<String, Json>) -> Result<(SendOptions, Vec<String>), String> {
    let mut o = SendOptions::default();
    let mut unknown = Vec::new();
    for (key, v) in options {
        match key.as_str() {
            "queue" => o.queue = Some(text(key, v)?.to_owned()),
            "exchange" => o.exchange = Some(text(key, v)?.to_owned()),
            "routing_key" => o.routing_key = Some(text(key, v)?.to_owned()),
            "priority" => {
                let p = v.as_u64().and_then(|p| u8::try_from(p).ok()).ok_or_else(|| {
                    format!("options.priority = {}: expected a whole number 0-255 (0-9 on Redis)", brief(v))
                })?;
                o.priority = Some(p);
            }
            "expires" => {
                o.expires = Some(match v {
                    Json::String(at) => Expires::At(PyDateTime::parse_iso(at).map_err(|e| {
                        format!("options.expires = {:?}: not seconds or an ISO time: {e}", cut(at, SHOWN))
                    })?),
                    other => Expires::In(duration(key, other)?),
                })
            }
            "countdown" => o.countdown = Some(duration(key, v)?),
            "eta" => {
                let at = text(key, v)?;
                o.eta =
                    Some(PyDateTime::parse_iso(at).map_err(|e| format!("options.eta = {:?}: {e}", cut(at, SHOWN)))?);
            }
            "headers" => match v {
                Json::Object(map) => o.headers = map.iter().map(|(k, v)| (k.clone(), json_to_value(v))).collect(),
                other => return Err(format!("options.headers = {}: expected a table of headers", brief(other))),
            },
            "time_limit" => o.time_limit = Some(seconds(key, v)?),
            "soft_time_limit" => o.soft_time_limit = Some(seconds(key, v)?),
            "ignore_result" => {
                o.ignore_result = Some(
                    v.as_bool()
                        .ok_or_else(|| format!("options.ignore_result = {}: expected true or false", brief(v)))?,
                )
            }
            "shadow" => o.shadow = Some(text(key, v)?.to_owned()),
            "serializer" => {
                let name = text(key, v)?;
                o.serializer =
                    Some(ContentType::parse(name).filter(|c| !matches!(c, ContentType::Pickle)).ok_or_else(|| {
                        format!("options.serializer = {:?}: use json, msgpack or yaml", cut(name, SHOWN))
                    })?);
            }
            "compression" => {
                let name = text(key, v)?;
                o.compression = Some(Compression::parse(name).ok_or_else(|| {
                    format!("options.compression = {:?}: use gzip, bzip2, lzma, zstd or brotli", cut(name, SHOWN))
                })?);
            }
            _ => unknown.push(key.clone()),
        }
    }
    // celery beat marks what it sends (Celery 5.5+).
    o.headers.insert("celery_beat_task".into(), Value::Bool(true));
    Ok((o, unknown))
}

/// A zone by IANA name, with an error that says what to write.
pub fn time_zone(name: &str) -> Result<TimeZone, String> {
    TimeZone::get(name)
        .map_err(|e| format!("unknown time zone {:?} (use an IANA name such as Europe/Berlin): {e}", cut(name, SHOWN)))
}

fn positive_secs(field: &str, v: Option<f64>) -> Result<Option<SignedDuration>, String> {
    match v {
        None => Ok(None),
        Some(s) => SignedDuration::try_from_secs_f64(s)
            .ok()
            .filter(|d| d.is_positive())
            .map(Some)
            .ok_or_else(|| format!("{field} = {}: expected a positive number of seconds", number(s))),
    }
}

/// What an entry is made of, from either source.
pub(crate) struct Parts {
    pub name: String,
    pub task: String,
    pub args: Vec<Json>,
    pub kwargs: serde_json::Map<String, Json>,
    pub options: serde_json::Map<String, Json>,
    pub schedule: Schedule,
    pub enabled: bool,
    pub extras: Extras,
    pub origin: Origin,
}

impl Entry {
    /// An entry of `beat_schedule`. `app_tz` is the app `timezone`;
    /// `cron_deadline` is `beat_cron_starting_deadline`.
    pub fn from_settings(
        name: &str,
        s: &BeatEntrySettings,
        app_tz: &TimeZone,
        cron_deadline: Option<f64>,
    ) -> Result<Entry, BeatError> {
        let field = |f: &str, e: String| BeatError::entry(name, format!("{f}: {e}"));
        let schedule = Schedule::parse(&s.schedule, s.relative).map_err(|e| field("schedule", e))?;
        let extras = Extras {
            timezone: s.timezone.clone(),
            no_overlap: s.no_overlap,
            no_overlap_timeout: s.no_overlap_timeout,
            catch_up: s.catch_up,
            max_catch_up: s.max_catch_up,
            starting_deadline: s.starting_deadline,
        };
        let entry = Entry::build(
            Parts {
                name: name.to_owned(),
                task: s.task.clone(),
                args: s.args.clone(),
                kwargs: s.kwargs.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                options: s.options.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                schedule,
                enabled: s.enabled,
                extras,
                origin: Origin::Static,
            },
            app_tz,
            cron_deadline,
        )?;
        let (_, unknown) = send_options(&entry.options).map_err(|e| BeatError::entry(name, e))?;
        if let Some(key) = unknown.first() {
            return Err(BeatError::entry(
                name,
                format!("options.{}: unknown option; beat sends {}", cut(key, SHOWN), KNOWN_OPTIONS.join(", ")),
            ));
        }
        Ok(entry)
    }

    /// Checks and assembles an entry; unknown options are left for the caller.
    pub(crate) fn build(p: Parts, app_tz: &TimeZone, cron_deadline: Option<f64>) -> Result<Entry, BeatError> {
        let name = p.name;
        let err = |e: String| BeatError::entry(&name, e);
        if p.task.trim().is_empty() {
            return Err(err("task: must name a task".into()));
        }
        let tz = match &p.extras.timezone {
            Some(zone) => time_zone(zone).map_err(|e| err(format!("timezone: {e}")))?,
            None => app_tz.clone(),
        };
        if p.extras.timezone.is_some() && !matches!(p.schedule, Schedule::Crontab(_)) && !p.schedule.uses_time_zone() {
            tracing::debug!(entry = %name, "timezone only changes crontabs and relative intervals");
        }
        positive_secs("no_overlap_timeout", p.extras.no_overlap_timeout).map_err(&err)?;
        if p.extras.max_catch_up == Some(0) {
            return Err(err("max_catch_up = 0: expected at least 1".into()));
        }
        if let Some(n) = p.extras.max_catch_up.filter(|n| *n > MAX_CATCH_UP) {
            return Err(err(format!("max_catch_up = {n}: at most {MAX_CATCH_UP}")));
        }
        let deepest = |values: &mut dyn Iterator<Item = &Json>| values.map(nesting).max().map_or(0, |d| d + 1);
        for (field, depth) in [
            ("args", deepest(&mut p.args.iter())),
            ("kwargs", deepest(&mut p.kwargs.values())),
            ("options", deepest(&mut p.options.values())),
        ] {
            if depth > MAX_NESTING {
                return Err(err(format!("{field} nest {depth} levels deep; beat sends at most {MAX_NESTING}")));
            }
        }
        let own = positive_secs("starting_deadline", p.extras.starting_deadline).map_err(&err)?;
        let cron = match p.schedule {
            Schedule::Crontab(_) => positive_secs("beat_cron_starting_deadline", cron_deadline).map_err(&err)?,
            _ => None,
        };
        let (send, _) = send_options(&p.options).map_err(&err)?;
        Ok(Entry {
            starting_deadline: own.or(cron),
            name: name.clone(),
            task: p.task,
            args: p.args,
            kwargs: p.kwargs,
            options: p.options,
            send,
            schedule: p.schedule,
            tz,
            enabled: p.enabled,
            extras: p.extras,
            origin: p.origin,
        })
    }

    /// What to do with missed slots.
    pub fn catch_up(&self) -> CatchUpPolicy {
        self.extras.catch_up.unwrap_or_default()
    }

    /// Most missed slots `all` sends.
    pub fn max_catch_up(&self) -> u32 {
        self.extras.max_catch_up.unwrap_or(DEFAULT_MAX_CATCH_UP)
    }

    /// How long an unfinished previous run blocks this entry (no-overlap).
    pub fn no_overlap_timeout(&self) -> SignedDuration {
        self.extras
            .no_overlap_timeout
            .and_then(|s| SignedDuration::try_from_secs_f64(s).ok())
            .unwrap_or(DEFAULT_NO_OVERLAP_TIMEOUT)
    }

    /// The args as the protocol sends them.
    pub fn arg_values(&self) -> Vec<Value> {
        self.args.iter().map(json_to_value).collect()
    }

    /// The kwargs as the protocol sends them.
    pub fn kwarg_values(&self) -> Map {
        self.kwargs.iter().map(|(k, v)| (k.clone(), json_to_value(v))).collect()
    }

    /// The zone's name for logs (`UTC`, `Europe/Berlin`).
    pub fn zone_name(&self) -> String {
        self.tz.iana_name().unwrap_or("local").to_owned()
    }

    /// What identifies "the same schedule": the schedule as RedBeat stores it,
    /// the zone it is read in, and whether the entry is enabled. When it
    /// changes, the entry starts afresh from now instead of catching up.
    pub fn fingerprint(&self) -> String {
        let zone = self.schedule.uses_time_zone().then(|| self.zone_name());
        serde_json::json!({
            "schedule": crate::redbeat::schedule_to_json(&self.schedule),
            "zone": zone,
            "enabled": self.enabled,
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use celeriac_config::ScheduleSetting;

    fn settings(schedule: &str, options: Json) -> BeatEntrySettings {
        let mut s: BeatEntrySettings =
            serde_json::from_value(serde_json::json!({"task": "managers.poll", "schedule": 10})).unwrap();
        s.schedule = ScheduleSetting::Text(schedule.into());
        s.options = serde_json::from_value(options).unwrap();
        s
    }

    #[test]
    fn options_become_send_options() {
        let e = Entry::from_settings(
            "poll",
            &settings("10s", serde_json::json!({"queue": "workflow.staging", "expires": 8, "priority": 5})),
            &TimeZone::UTC,
            None,
        )
        .unwrap();
        assert_eq!(e.send.queue.as_deref(), Some("workflow.staging"));
        assert_eq!(e.send.priority, Some(5));
        assert_eq!(e.send.expires, Some(Expires::In(std::time::Duration::from_secs(8))));
        assert_eq!(e.send.headers.get("celery_beat_task"), Some(&Value::Bool(true)));
    }

    #[test]
    fn bad_entries_are_refused_by_name() {
        let err =
            |s: BeatEntrySettings| Entry::from_settings("poll", &s, &TimeZone::UTC, None).unwrap_err().to_string();
        assert!(err(settings("10s", serde_json::json!({"queu": "x"}))).contains("beat_schedule.poll: options.queu"));
        assert!(err(settings("* * * * mon-fry", serde_json::json!({}))).contains("beat_schedule.poll: schedule"));
        let mut s = settings("0 3 * * *", serde_json::json!({}));
        s.timezone = Some("Europe/Berlinn".into());
        assert!(err(s).contains("timezone"));
        let s = settings("10s", serde_json::json!({"serializer": "pickle"}));
        assert!(err(s).contains("json, msgpack or yaml"));
    }

    #[test]
    fn the_cron_deadline_applies_to_crontabs_only() {
        let cron = Entry::from_settings("c", &settings("0 * * * *", serde_json::json!({})), &TimeZone::UTC, Some(60.0));
        assert_eq!(cron.unwrap().starting_deadline, Some(SignedDuration::from_secs(60)));
        let every = Entry::from_settings("i", &settings("10s", serde_json::json!({})), &TimeZone::UTC, Some(60.0));
        assert_eq!(every.unwrap().starting_deadline, None);
    }

    #[test]
    fn extreme_numbers_in_a_toml_entry_are_errors_naming_it() {
        let err = |s: BeatEntrySettings| match Entry::from_settings("poll", &s, &TimeZone::UTC, Some(30.0)) {
            Ok(_) => panic!("{s:?} was accepted"),
            Err(e) => e.to_string(),
        };
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e300, -1.0, 0.0, 1e-300, 4e9] {
            let mut s = settings("10s", serde_json::json!({}));
            s.schedule = ScheduleSetting::Seconds(bad);
            assert!(err(s).starts_with("beat_schedule.poll: schedule"), "{bad}");
            for field in ["no_overlap_timeout", "starting_deadline"] {
                let mut s = settings("10s", serde_json::json!({}));
                if field == "no_overlap_timeout" {
                    s.no_overlap_timeout = Some(bad);
                } else {
                    s.starting_deadline = Some(bad);
                }
                if bad > 0.0 && bad.is_finite() && bad < 1e10 && bad > 1e-9 {
                    continue; // 4e9 seconds is a long but real deadline
                }
                assert!(err(s).contains(field), "{field} = {bad}");
            }
        }
        for (option, bad) in [
            ("expires", serde_json::json!(1e300)),
            ("expires", serde_json::json!(-1)),
            ("expires", serde_json::json!(4e8)),
            ("countdown", serde_json::json!(1e300)),
            ("countdown", serde_json::json!(true)),
            ("time_limit", serde_json::json!(1e300)),
            ("soft_time_limit", serde_json::json!(-0.5)),
            ("priority", serde_json::json!(1e300)),
            ("priority", serde_json::json!(-1)),
            ("priority", serde_json::json!(256)),
            ("priority", serde_json::json!(u64::MAX)),
            ("expires", serde_json::json!("2026-13-45T99:99:99")),
            ("eta", serde_json::json!("x".repeat(100_000))),
            ("headers", serde_json::json!([1])),
            ("queue", serde_json::json!({"a": [1, 2, 3]})),
        ] {
            let e = err(settings("10s", serde_json::json!({ option: bad })));
            assert!(e.contains(&format!("options.{option}")), "{option} = {bad}: {e}");
            assert!(e.len() < 800, "a message of {} bytes", e.len());
        }
        let mut deep = serde_json::json!(1);
        for _ in 0..100 {
            deep = serde_json::json!([deep]);
        }
        let mut s = settings("10s", serde_json::json!({"headers": {"h": deep.clone()}}));
        assert!(err(s.clone()).contains("options nest"));
        s.options.clear();
        s.args = vec![deep];
        assert!(err(s.clone()).contains("args nest"));
        s.args.clear();
        s.max_catch_up = Some(u32::MAX);
        assert!(err(s).contains("max_catch_up"));
    }

    #[test]
    fn python_truthiness_and_short_messages() {
        let t = |v: serde_json::Value| truthy(&v);
        assert!(!t(serde_json::json!(null)) && !t(serde_json::json!(0)) && !t(serde_json::json!(0.0)));
        assert!(!t(serde_json::json!("")) && !t(serde_json::json!([])) && !t(serde_json::json!({})));
        assert!(t(serde_json::json!("no")) && t(serde_json::json!([0])) && t(serde_json::json!(-1)));
        assert_eq!(cut("héllo wörld", 5), "héllo...");
        assert_eq!(brief(&serde_json::json!("x".repeat(1000))).chars().count(), SHOWN + 3);
        assert_eq!(number(1e300), "1e300");
        assert_eq!(number(2.5), "2.5");
        let mut deep = serde_json::json!(0);
        for _ in 0..100_000 {
            deep = Json::Array(vec![deep]);
        }
        assert_eq!(nesting(&deep), 100_000);
        // Dropping so deep a value recurses; take it apart by hand.
        let mut v = deep;
        while let serde_json::Value::Array(mut items) = v {
            v = items.pop().unwrap_or(serde_json::Value::Null);
        }
    }
}

//! The accepted range of every numeric setting, in one table
//! ([`NUMERIC_SETTINGS`]), checked wherever a value comes from: the TOML file
//! and the environment before the values are typed (so `-1`, `1e300`, `inf`
//! or `"many"` get an error naming the setting and its range, never a bare
//! type error), the typed [`Settings`] in [`Settings::validate`] (flags, code),
//! and the command-line flags ([`check_flag`]).
//!
//! The connection numbers share their ranges with the broker's and the result
//! backend's URL query parameters (`celeriac_redisconn::limits`).

use celeriac_redisconn::limits::{self as conn, short, Limit};
use config::{Value, ValueKind};

use crate::{ConfigError, ScheduleSetting, Settings};

const DAY: f64 = 86_400.0;
const YEAR: f64 = 365.0 * DAY;

/// One numeric setting and its range.
#[derive(Clone, Copy)]
pub struct Numeric {
    /// Where it is: `worker_concurrency`, `broker_transport_options.visibility_timeout`;
    /// `*` stands for any entry of a table (`beat_schedule.*.schedule`), `[]`
    /// for each item of a list (`broker_transport_options.priority_steps[]`).
    pub path: &'static str,
    /// The accepted values.
    pub limit: Limit,
    /// Whether text is a valid value too (a crontab `schedule`, an ISO `expires`),
    /// checked elsewhere.
    pub text_ok: bool,
    /// The values set in typed settings, with their concrete paths.
    get: fn(&Settings) -> Vec<(String, f64)>,
}

impl std::fmt::Debug for Numeric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.limit)
    }
}

const fn n(path: &'static str, limit: Limit, get: fn(&Settings) -> Vec<(String, f64)>) -> Numeric {
    Numeric { path, limit, text_ok: false, get }
}

fn one(path: &str, value: Option<f64>) -> Vec<(String, f64)> {
    value.map(|v| vec![(path.to_owned(), v)]).unwrap_or_default()
}

/// Every beat entry's numeric field (`field` of its options when `option`).
fn entries(s: &Settings, field: &str, value: impl Fn(&crate::BeatEntrySettings) -> Option<f64>) -> Vec<(String, f64)> {
    s.beat_schedule.iter().filter_map(|(name, e)| Some((format!("beat_schedule.{name}.{field}"), value(e)?))).collect()
}

fn option(e: &crate::BeatEntrySettings, key: &str) -> Option<f64> {
    e.options.get(key).and_then(serde_json::Value::as_f64)
}

/// Every numeric setting celeriac reads, with its range.
pub const NUMERIC_SETTINGS: &[Numeric] = &[
    // ---- broker ---------------------------------------------------------
    n("broker_connection_max_retries", Limit::whole(0, 1_000_000), |s| {
        one("broker_connection_max_retries", s.broker_connection_max_retries.map(f64::from))
    }),
    n("broker_connection_timeout", Limit::seconds(0.001, DAY), |s| {
        one("broker_connection_timeout", Some(s.broker_connection_timeout))
    }),
    n("broker_heartbeat", Limit::seconds(0.0, 65_535.0).note("0 disables"), |s| {
        one("broker_heartbeat", s.broker_heartbeat)
    }),
    n("broker_transport_options.visibility_timeout", conn::VISIBILITY_TIMEOUT, |s| {
        one("broker_transport_options.visibility_timeout", Some(s.broker_transport_options.visibility_timeout))
    }),
    n("broker_transport_options.priority_steps[]", Limit::whole(0, 255), |s| {
        let steps = s.broker_transport_options.priority_steps.iter().enumerate();
        steps.map(|(i, v)| (format!("broker_transport_options.priority_steps[{i}]"), f64::from(*v))).collect()
    }),
    n("broker_transport_options.polling_interval", conn::POLLING_INTERVAL, |s| {
        one("broker_transport_options.polling_interval", s.broker_transport_options.polling_interval)
    }),
    n("broker_transport_options.unacked_restore_limit", conn::UNACKED_RESTORE_LIMIT, |s| {
        let v = s.broker_transport_options.unacked_restore_limit.map(|v| v as f64);
        one("broker_transport_options.unacked_restore_limit", v)
    }),
    n("broker_transport_options.socket_timeout", conn::SOCKET_TIMEOUT, |s| {
        one("broker_transport_options.socket_timeout", s.broker_transport_options.socket_timeout)
    }),
    n("broker_transport_options.socket_connect_timeout", conn::SOCKET_CONNECT_TIMEOUT, |s| {
        one("broker_transport_options.socket_connect_timeout", s.broker_transport_options.socket_connect_timeout)
    }),
    n("broker_transport_options.health_check_interval", conn::HEALTH_CHECK_INTERVAL, |s| {
        one("broker_transport_options.health_check_interval", Some(s.broker_transport_options.health_check_interval))
    }),
    n("broker_transport_options.max_connections", conn::MAX_CONNECTIONS, |s| {
        one("broker_transport_options.max_connections", Some(s.broker_transport_options.max_connections as f64))
    }),
    // ---- results --------------------------------------------------------
    n("result_expires", Limit::whole(0, 10 * 365 * 86_400).note("seconds; 0 keeps results forever"), |s| {
        one("result_expires", s.result_expires.map(|v| v as f64))
    }),
    n("result_backend_transport_options.retry_policy.max_retries", conn::RETRY_MAX_RETRIES, |s| {
        let p = s.result_backend_transport_options.retry_policy.as_ref();
        one("result_backend_transport_options.retry_policy.max_retries", p.map(|p| f64::from(p.max_retries)))
    }),
    n("result_backend_transport_options.retry_policy.interval_start", conn::RETRY_INTERVAL, |s| {
        let p = s.result_backend_transport_options.retry_policy.as_ref();
        one("result_backend_transport_options.retry_policy.interval_start", p.map(|p| p.interval_start))
    }),
    n("result_backend_transport_options.retry_policy.interval_step", conn::RETRY_INTERVAL, |s| {
        let p = s.result_backend_transport_options.retry_policy.as_ref();
        one("result_backend_transport_options.retry_policy.interval_step", p.map(|p| p.interval_step))
    }),
    n("result_backend_transport_options.retry_policy.interval_max", conn::RETRY_INTERVAL, |s| {
        let p = s.result_backend_transport_options.retry_policy.as_ref();
        one("result_backend_transport_options.retry_policy.interval_max", p.map(|p| p.interval_max))
    }),
    // ---- messages and routing -------------------------------------------
    n("task_protocol", Limit::whole(1, 2), |s| one("task_protocol", Some(f64::from(s.task_protocol)))),
    n("task_default_priority", Limit::whole(0, 255), |s| {
        one("task_default_priority", s.task_default_priority.map(f64::from))
    }),
    n("task_queues.*.max_priority", Limit::whole(1, 255), |s| {
        let queues = s.task_queues.iter();
        queues
            .filter_map(|(q, v)| Some((format!("task_queues.{q}.max_priority"), f64::from(v.max_priority?))))
            .collect()
    }),
    n("task_queue_max_priority", Limit::whole(1, 255), |s| {
        one("task_queue_max_priority", s.task_queue_max_priority.map(f64::from))
    }),
    n("task_routes.*.priority", Limit::whole(0, 255), |s| {
        let routes = s.task_routes.iter();
        routes.filter_map(|(r, v)| Some((format!("task_routes.{r}.priority"), f64::from(v.priority?)))).collect()
    }),
    // ---- task execution -------------------------------------------------
    n("task_time_limit", Limit::seconds(0.001, YEAR), |s| one("task_time_limit", s.task_time_limit)),
    n("task_soft_time_limit", Limit::seconds(0.001, YEAR), |s| one("task_soft_time_limit", s.task_soft_time_limit)),
    // ---- worker ---------------------------------------------------------
    n("worker_concurrency", Limit::whole(1, 100_000), |s| {
        one("worker_concurrency", s.worker_concurrency.map(|v| v as f64))
    }),
    n("worker_prefetch_multiplier", Limit::whole(0, 10_000).note("0 reserves without limit"), |s| {
        one("worker_prefetch_multiplier", Some(s.worker_prefetch_multiplier as f64))
    }),
    n("worker_soft_shutdown_timeout", Limit::seconds(0.0, YEAR).note("0 waits without limit"), |s| {
        one("worker_soft_shutdown_timeout", Some(s.worker_soft_shutdown_timeout))
    }),
    n("worker_heartbeat_interval", Limit::seconds(0.1, 3600.0), |s| {
        one("worker_heartbeat_interval", Some(s.worker_heartbeat_interval))
    }),
    n("worker_max_scheduled_tasks", Limit::whole(1, 10_000_000), |s| {
        one("worker_max_scheduled_tasks", Some(s.worker_max_scheduled_tasks as f64))
    }),
    n("worker_max_message_size", Limit::bytes(1, 1 << 31), |s| {
        one("worker_max_message_size", Some(s.worker_max_message_size as f64))
    }),
    // ---- events ---------------------------------------------------------
    n("event_queue_ttl", Limit::seconds(0.001, 2_147_483.0).note("AMQP takes 32-bit milliseconds"), |s| {
        one("event_queue_ttl", s.event_queue_ttl)
    }),
    n("event_queue_expires", Limit::seconds(0.001, 2_147_483.0).note("AMQP takes 32-bit milliseconds"), |s| {
        one("event_queue_expires", s.event_queue_expires)
    }),
    // ---- beat -----------------------------------------------------------
    n("beat_max_loop_interval", Limit::seconds(0.001, DAY), |s| {
        one("beat_max_loop_interval", Some(s.beat_max_loop_interval))
    }),
    n("beat_cron_starting_deadline", Limit::seconds(0.001, YEAR), |s| {
        one("beat_cron_starting_deadline", s.beat_cron_starting_deadline)
    }),
    n("beat_health_ttl", Limit::seconds(1.0, DAY), |s| one("beat_health_ttl", Some(s.beat_health_ttl))),
    n("redbeat_lock_timeout", Limit::seconds(0.001, DAY), |s| one("redbeat_lock_timeout", s.redbeat_lock_timeout)),
    Numeric {
        path: "beat_schedule.*.schedule",
        limit: Limit::seconds(0.001, 10.0 * YEAR),
        text_ok: true,
        get: |s| {
            entries(s, "schedule", |e| match e.schedule {
                ScheduleSetting::Seconds(v) => Some(v),
                ScheduleSetting::Text(_) => None,
            })
        },
    },
    n("beat_schedule.*.no_overlap_timeout", Limit::seconds(0.001, YEAR), |s| {
        entries(s, "no_overlap_timeout", |e| e.no_overlap_timeout)
    }),
    n("beat_schedule.*.max_catch_up", Limit::whole(1, 100_000), |s| {
        entries(s, "max_catch_up", |e| e.max_catch_up.map(f64::from))
    }),
    n("beat_schedule.*.starting_deadline", Limit::seconds(0.001, YEAR), |s| {
        entries(s, "starting_deadline", |e| e.starting_deadline)
    }),
    n("beat_schedule.*.options.countdown", Limit::seconds(0.0, YEAR), |s| {
        entries(s, "options.countdown", |e| option(e, "countdown"))
    }),
    Numeric {
        path: "beat_schedule.*.options.expires",
        limit: Limit::seconds(0.0, 10.0 * YEAR),
        text_ok: true,
        get: |s| entries(s, "options.expires", |e| option(e, "expires")),
    },
    n("beat_schedule.*.options.time_limit", Limit::seconds(0.001, YEAR), |s| {
        entries(s, "options.time_limit", |e| option(e, "time_limit"))
    }),
    n("beat_schedule.*.options.soft_time_limit", Limit::seconds(0.001, YEAR), |s| {
        entries(s, "options.soft_time_limit", |e| option(e, "soft_time_limit"))
    }),
    n("beat_schedule.*.options.priority", Limit::whole(0, 255), |s| {
        entries(s, "options.priority", |e| option(e, "priority"))
    }),
];

/// The range of the numeric setting at `path` (as written in [`NUMERIC_SETTINGS`]).
pub fn limit_of(path: &str) -> Option<Limit> {
    NUMERIC_SETTINGS.iter().find(|n| n.path == path).map(|n| n.limit)
}

/// Reads a command-line flag's value for the setting `setting` within its
/// range: the message names the setting and the range.
pub fn check_flag<T: TryFrom<u64>>(setting: &str, text: &str) -> Result<T, String> {
    let limit = limit_of(setting).ok_or_else(|| format!("{setting} is not a numeric setting"))?;
    limit.parse_whole(text).map_err(|e| format!("{setting}: {e}"))
}

/// Checks the typed values (from any source) against their ranges.
pub(crate) fn check_settings(settings: &Settings) -> Result<(), ConfigError> {
    for numeric in NUMERIC_SETTINGS {
        for (path, value) in (numeric.get)(settings) {
            numeric.limit.check(value).map_err(|e| ConfigError::value(&path, short(value), e.to_string()))?;
        }
    }
    Ok(())
}

/// Checks the raw values of a file and the environment, before they are
/// typed: a number in range, or (where the setting takes text too) text.
/// `source` says where a top-level setting came from, for the message.
pub(crate) fn check_raw(root: &config::Map<String, Value>, source: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
    for numeric in NUMERIC_SETTINGS {
        let mut found = Vec::new();
        let mut segments = numeric.path.split('.');
        if let Some(first) = segments.next() {
            collect(Some(root), first, segments.collect::<Vec<_>>().as_slice(), String::new(), &mut found);
        }
        for (path, value) in found {
            let top = path.split(['.', '[']).next().unwrap_or_default();
            let error = |shown: String, reason: String| ConfigError::value(&path, shown, reason + &source(top));
            let expected = format!("expected {}", numeric.limit);
            match &value.kind {
                ValueKind::Nil => {}
                ValueKind::I64(v) => {
                    check_int(i128::from(*v), numeric.limit).map_err(|()| error(v.to_string(), expected))?
                }
                ValueKind::U64(v) => {
                    check_int(i128::from(*v), numeric.limit).map_err(|()| error(v.to_string(), expected))?
                }
                ValueKind::I128(v) => check_int(*v, numeric.limit).map_err(|()| error(v.to_string(), expected))?,
                ValueKind::U128(v) => {
                    let v = i128::try_from(*v).unwrap_or(i128::MAX);
                    check_int(v, numeric.limit).map_err(|()| error(v.to_string(), expected))?
                }
                ValueKind::Float(v) => {
                    numeric.limit.check(*v).map_err(|_| error(short(*v), expected))?;
                }
                ValueKind::String(_) if numeric.text_ok => {}
                other => return Err(error(shown(other), expected)),
            }
        }
    }
    Ok(())
}

fn check_int(value: i128, limit: Limit) -> Result<(), ()> {
    let whole = u128::try_from(value).map_err(|_| ())?;
    match limit.unit {
        celeriac_redisconn::limits::Unit::Seconds => limit.check(whole as f64).map(drop).map_err(|_| ()),
        _ => limit.check_whole(whole).map(drop).map_err(|_| ()),
    }
}

/// A raw value as the message shows it.
fn shown(kind: &ValueKind) -> String {
    match kind {
        ValueKind::String(s) => format!("{s:?}"),
        ValueKind::Boolean(b) => b.to_string(),
        ValueKind::Table(_) => "a table".into(),
        ValueKind::Array(_) => "a list".into(),
        other => other.to_string(),
    }
}

/// The values at `segment.rest...` under `table`, with their concrete paths.
fn collect<'a>(
    table: Option<&'a config::Map<String, Value>>,
    segment: &str,
    rest: &[&str],
    prefix: String,
    out: &mut Vec<(String, &'a Value)>,
) {
    let Some(table) = table else { return };
    let join = |key: &str| if prefix.is_empty() { key.to_owned() } else { format!("{prefix}.{key}") };
    let (key, items) = match segment.strip_suffix("[]") {
        Some(key) => (key, true),
        None => (segment, false),
    };
    let picked: Vec<(String, &Value)> = if key == "*" {
        table.iter().map(|(k, v)| (join(k), v)).collect()
    } else {
        table.get(key).map(|v| vec![(join(key), v)]).unwrap_or_default()
    };
    for (path, value) in picked {
        let values: Vec<(String, &Value)> = match (&value.kind, items) {
            (ValueKind::Array(list), true) => {
                list.iter().enumerate().map(|(i, v)| (format!("{path}[{i}]"), v)).collect()
            }
            _ => vec![(path, value)],
        };
        for (path, value) in values {
            match (rest.split_first(), &value.kind) {
                (None, _) => out.push((path, value)),
                (Some((next, rest)), ValueKind::Table(inner)) => collect(Some(inner), next, rest, path, out),
                // Not a table where one is expected: the typed load says so.
                (Some(_), _) => {}
            }
        }
    }
}

//! From `send_task`'s keyword arguments, as a canvas's signatures carry them
//! (`task_id`, `queue`, `countdown`, `chain`, `chord`, `link`, stamps, ...),
//! to the producer's [`SendOptions`].
//!
//! Celery passes keys it does not know on as message properties; celeriac
//! sends only the ones below (and `reply_to` is always the producer's).

use std::time::Duration;

use celeriac_broker::{Expires, SendOptions};
use celeriac_protocol::codec::{Compression, ContentType};
use celeriac_protocol::time::PyDateTime;
use celeriac_protocol::{Map, Signature, Value};

use crate::CanvasError;

fn invalid(task: &str, reason: String) -> CanvasError {
    CanvasError::Invalid { task: task.to_owned(), reason }
}

fn text(options: &Map, key: &str) -> Option<String> {
    match options.get(key) {
        Some(Value::Str(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// Seconds as a duration: negative is now, NaN or out of range is none.
fn duration(v: &Value) -> Option<Duration> {
    v.as_f64().and_then(|s| Duration::try_from_secs_f64(s.max(0.0)).ok())
}

fn datetime(task: &str, key: &str, v: &Value) -> Result<Option<PyDateTime>, CanvasError> {
    match v {
        Value::DateTime(d) => Ok(Some(*d)),
        Value::Str(s) => PyDateTime::parse_iso(s)
            .map(Some)
            .map_err(|e| invalid(task, format!("{key} {s:?} is not an ISO 8601 time: {e}"))),
        Value::Null => Ok(None),
        other => Err(invalid(task, format!("{key} is a {}, expected a datetime", other.type_name()))),
    }
}

fn signatures(task: &str, key: &str, v: Option<&Value>) -> Result<Vec<Signature>, CanvasError> {
    let parse = |item: &Value| Signature::from_value(item).map_err(|e| invalid(task, format!("{key}: {e}")));
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::List(items)) => items.iter().filter(|i| !i.is_null()).map(parse).collect(),
        Some(one) => Ok(vec![parse(one)?]),
    }
}

fn finite(task: &str, key: &str, v: Option<&Value>) -> Result<Option<f64>, CanvasError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(f) if f.is_finite() && f >= 0.0 => Ok(Some(f)),
            _ => Err(invalid(task, format!("{key} must be a number of seconds, got {}", v.type_name()))),
        },
    }
}

/// The producer's options for sending `task` with `options` (what
/// `app.send_task(task, args, kwargs, **options)` reads).
pub(crate) fn send_options(task: &str, options: &Map) -> Result<SendOptions, CanvasError> {
    let o = options;
    let priority = match o.get("priority") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .and_then(|p| u8::try_from(p).ok())
                .ok_or_else(|| invalid(task, format!("priority must be an integer 0-255, got {}", v.type_name())))?,
        ),
    };
    let expires = match o.get("expires") {
        None | Some(Value::Null) => None,
        Some(v @ (Value::DateTime(_) | Value::Str(_))) => datetime(task, "expires", v)?.map(Expires::At),
        Some(v) => Some(Expires::In(duration(v).ok_or_else(|| {
            invalid(task, format!("expires is a {}, expected seconds or a datetime", v.type_name()))
        })?)),
    };
    let mut send = SendOptions {
        task_id: text(o, "task_id"),
        // An empty queue name is kept: the producer refuses it (it names no
        // queue), rather than sending to the default queue instead.
        queue: o.get("queue").and_then(Value::as_str).map(str::to_owned),
        exchange: text(o, "exchange"),
        routing_key: text(o, "routing_key"),
        priority,
        countdown: o.get("countdown").and_then(duration).filter(|d| !d.is_zero()),
        eta: match o.get("eta") {
            Some(v) => datetime(task, "eta", v)?,
            None => None,
        },
        expires,
        time_limit: finite(task, "time_limit", o.get("time_limit"))?,
        soft_time_limit: finite(task, "soft_time_limit", o.get("soft_time_limit"))?,
        ignore_result: match o.get("ignore_result") {
            Some(Value::Bool(b)) => Some(*b),
            Some(v) if !v.is_null() => Some(v.is_truthy()),
            _ => None,
        },
        shadow: text(o, "shadow"),
        parent_id: text(o, "parent_id"),
        root_id: text(o, "root_id"),
        group_id: text(o, "group_id"),
        group_index: o.get("group_index").and_then(Value::as_i64),
        retries: o.get("retries").and_then(Value::as_i64),
        replaced_task_nesting: o.get("replaced_task_nesting").and_then(Value::as_i64),
        link: signatures(task, "link", o.get("link"))?,
        link_error: signatures(task, "link_error", o.get("link_error"))?,
        chain: signatures(task, "chain", o.get("chain"))?,
        chord: signatures(task, "chord", o.get("chord"))?.pop(),
        serializer: match text(o, "serializer") {
            Some(name) => match ContentType::parse(&name) {
                Some(ct @ (ContentType::Json | ContentType::Msgpack | ContentType::Yaml)) => Some(ct),
                _ => {
                    return Err(invalid(
                        task,
                        format!("serializer {name:?} cannot be sent by celeriac; use json, msgpack or yaml"),
                    ))
                }
            },
            None => None,
        },
        compression: match text(o, "compression") {
            Some(name) => {
                Some(Compression::parse(&name).ok_or_else(|| invalid(task, format!("unknown compression {name:?}")))?)
            }
            None => None,
        },
        ..SendOptions::default()
    };
    if let Some(Value::Map(headers)) = o.get("headers") {
        send.headers = headers.clone();
    }
    // Stamps: `stamped_headers` names the options that are stamps.
    if let Some(Value::List(names)) = o.get("stamped_headers") {
        for name in names.iter().filter_map(Value::as_str) {
            send.stamps.insert(name.to_owned(), o.get(name).cloned().unwrap_or(Value::Null));
        }
    }
    Ok(send)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_values_are_errors_not_panics() {
        for (key, value) in [
            ("priority", Value::Int(-1)),
            ("priority", Value::Float(f64::NAN)),
            ("time_limit", Value::Float(f64::INFINITY)),
            ("time_limit", Value::Float(-1.0)),
            ("expires", Value::Str("tomorrow".into())),
            ("expires", Value::List(vec![])),
            ("eta", Value::Int(5)),
            ("serializer", Value::Str("pickle".into())),
            ("link", Value::Int(3)),
        ] {
            let mut o = Map::new();
            o.insert(key.into(), value.clone());
            assert!(send_options("t", &o).is_err(), "{key}={value:?} accepted");
        }
        for (key, value) in
            [("countdown", Value::Float(1e300)), ("countdown", Value::Float(f64::NAN)), ("expires", Value::Float(-5.0))]
        {
            let mut o = Map::new();
            o.insert(key.into(), value);
            assert!(send_options("t", &o).is_ok(), "{key}");
        }
    }

    #[test]
    fn options_map_to_the_producer() {
        let mut o = Map::new();
        o.insert("task_id".into(), "id".into());
        o.insert("countdown".into(), Value::Int(10));
        o.insert("expires".into(), Value::Float(2.5));
        o.insert("group_index".into(), Value::Int(1));
        o.insert("mystamp".into(), "v1".into());
        o.insert("stamped_headers".into(), Value::List(vec!["mystamp".into()]));
        let s = send_options("t", &o).unwrap();
        assert_eq!(s.task_id.as_deref(), Some("id"));
        assert_eq!(s.countdown, Some(Duration::from_secs(10)));
        assert_eq!(s.expires, Some(Expires::In(Duration::from_millis(2500))));
        assert_eq!(s.group_index, Some(1));
        assert_eq!(s.stamps.get("mystamp"), Some(&Value::Str("v1".into())));
    }
}

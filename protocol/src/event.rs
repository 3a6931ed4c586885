//! Celery events: the dicts workers and producers publish on the `celeryev`
//! exchange for Flower, `celery events` and celery-exporter.
//!
//! An event is a flat map with Celery's key order: `hostname`, `utcoffset`,
//! `pid`, `clock`, the event's own fields, `timestamp`, `type`. It is sent as a
//! JSON message with the header `hostname` and routing key `<group>.<name>`
//! (`task-succeeded` → `task.succeeded`); on Redis the `celeryev` exchange is a
//! fanout, so every event is a `PUBLISH`.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::codec::{CodecError, ContentType};
use crate::task::TaskMessage;
use crate::{Map, Message, Value};

/// The exchange events are published on (Celery's `event_exchange`).
pub const EVENT_EXCHANGE: &str = "celeryev";

/// A Lamport clock, as Celery's `app.clock`: every event sent moves it forward,
/// every event or control message received with a clock moves it past that.
#[derive(Debug, Default)]
pub struct LamportClock(AtomicU64);

impl LamportClock {
    /// A clock at 0.
    pub fn new() -> LamportClock {
        LamportClock::default()
    }

    /// Advances the clock for a local event and returns the new value.
    pub fn forward(&self) -> u64 {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Moves the clock past `other` (a value received), returning the new value.
    pub fn adjust(&self, other: u64) -> u64 {
        let mut current = self.0.load(Ordering::SeqCst);
        loop {
            let next = current.max(other) + 1;
            match self.0.compare_exchange(current, next, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return next,
                Err(seen) => current = seen,
            }
        }
    }

    /// The current value.
    pub fn value(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Python's `celery.utils.time.utcoffset()` (Celery 5.7): hours *west* of
/// UTC as a float, exact (UTC-5 gives 5.0, UTC+5:30 gives -5.5), for the local
/// zone now.
pub fn utcoffset() -> f64 {
    let east = jiff::tz::TimeZone::system().to_offset(jiff::Timestamp::now()).seconds();
    utcoffset_for(east)
}

/// [`utcoffset`] for an offset of `east_seconds` east of UTC.
pub fn utcoffset_for(east_seconds: i32) -> f64 {
    -f64::from(east_seconds) / 3600.0
}

/// Seconds since the epoch as a float, as Python's `time.time()`.
pub fn now_timestamp() -> f64 {
    jiff::Timestamp::now().as_microsecond() as f64 / 1e6
}

/// Who sends events: the node name, the process id and the clock.
#[derive(Debug)]
pub struct EventSource {
    /// Node name (`celeriac@host`, or `gen<pid>@host` for a producer).
    pub hostname: String,
    /// The process id.
    pub pid: u32,
    /// The sender's Lamport clock.
    pub clock: LamportClock,
}

impl EventSource {
    /// A source for `hostname` in this process.
    pub fn new(hostname: impl Into<String>) -> EventSource {
        EventSource { hostname: hostname.into(), pid: std::process::id(), clock: LamportClock::new() }
    }

    /// An event of `kind` (`worker-heartbeat`, `task-succeeded`, ...) with
    /// `fields`, stamped now with the next clock value.
    pub fn event(&self, kind: &str, fields: Map) -> Event {
        let mut map = Map::new();
        map.insert("hostname".into(), Value::Str(self.hostname.clone()));
        map.insert("utcoffset".into(), Value::Float(utcoffset()));
        map.insert("pid".into(), Value::Int(i64::from(self.pid)));
        map.insert("clock".into(), Value::Int(i64::try_from(self.clock.forward()).unwrap_or(i64::MAX)));
        for (k, v) in fields {
            map.insert(k, v);
        }
        map.insert("timestamp".into(), Value::Float(now_timestamp()));
        map.insert("type".into(), Value::Str(kind.to_owned()));
        Event { kind: kind.to_owned(), hostname: self.hostname.clone(), fields: map }
    }
}

/// One event, ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    kind: String,
    hostname: String,
    fields: Map,
}

impl Event {
    /// The event type (`task-sent`).
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The whole event as Python receives it.
    pub fn fields(&self) -> &Map {
        &self.fields
    }

    /// The routing key: the type with `-` as `.` (`task.sent`).
    pub fn routing_key(&self) -> String {
        self.kind.replace('-', ".")
    }

    /// The message: JSON body, header `hostname`, `delivery_mode` 1.
    pub fn to_message(&self) -> Result<Message, CodecError> {
        event_message(&self.hostname, &Value::Map(self.fields.clone()))
    }
}

/// Several task events in one message (`task.multi`), as a worker flushes its
/// buffer; `events` must not be empty.
pub fn batch_message(hostname: &str, events: &[Event]) -> Result<Message, CodecError> {
    let list = events.iter().map(|e| Value::Map(e.fields.clone())).collect();
    event_message(hostname, &Value::List(list))
}

fn event_message(hostname: &str, body: &Value) -> Result<Message, CodecError> {
    let mut headers = Map::new();
    headers.insert("hostname".into(), Value::Str(hostname.to_owned()));
    let mut properties = Map::new();
    properties.insert("delivery_mode".into(), Value::Int(1));
    Message::with_body(headers, properties, 0, ContentType::Json, None, body)
}

/// The `argsrepr` header, or `saferepr(args, 1024)` as Celery computes it.
pub fn args_repr(task: &TaskMessage) -> String {
    let maxlevels = crate::result::SAFEREPR_MAXLEVELS;
    task.headers.argsrepr.clone().unwrap_or_else(|| crate::result::saferepr_tuple(&task.args, Some(1024), maxlevels))
}

/// The `kwargsrepr` header, or `saferepr(kwargs, 1024)`.
pub fn kwargs_repr(task: &TaskMessage) -> String {
    let maxlevels = crate::result::SAFEREPR_MAXLEVELS;
    task.headers.kwargsrepr.clone().unwrap_or_else(|| crate::result::saferepr_dict(&task.kwargs, Some(1024), maxlevels))
}

fn opt_iso(v: &Option<crate::PyDateTime>) -> Value {
    v.as_ref().map_or(Value::Null, |d| Value::Str(d.to_iso()))
}

/// The fields of `task-sent` for `task`, published to `exchange` with
/// `routing_key` for `queue` (args and kwargs as their repr strings).
pub fn task_sent_fields(task: &TaskMessage, queue: &str, exchange: &str, routing_key: &str) -> Map {
    let h = &task.headers;
    let mut m = Map::new();
    m.insert("uuid".into(), Value::Str(h.id.clone()));
    m.insert("root_id".into(), h.root_id.clone().into());
    m.insert("parent_id".into(), h.parent_id.clone().into());
    m.insert("name".into(), Value::Str(h.task.clone()));
    m.insert("args".into(), Value::Str(args_repr(task)));
    m.insert("kwargs".into(), Value::Str(kwargs_repr(task)));
    m.insert("retries".into(), Value::Int(h.retries));
    m.insert("eta".into(), opt_iso(&h.eta));
    m.insert("expires".into(), opt_iso(&h.expires));
    m.insert("queue".into(), Value::Str(queue.to_owned()));
    m.insert("exchange".into(), Value::Str(exchange.to_owned()));
    m.insert("routing_key".into(), Value::Str(routing_key.to_owned()));
    m
}

/// The fields of `task-received` (before any ETA wait).
pub fn task_received_fields(task: &TaskMessage) -> Map {
    let h = &task.headers;
    let mut m = Map::new();
    m.insert("uuid".into(), Value::Str(h.id.clone()));
    m.insert("name".into(), Value::Str(h.shadow.clone().unwrap_or_else(|| h.task.clone())));
    m.insert("args".into(), Value::Str(args_repr(task)));
    m.insert("kwargs".into(), Value::Str(kwargs_repr(task)));
    m.insert("root_id".into(), h.root_id.clone().into());
    m.insert("parent_id".into(), h.parent_id.clone().into());
    m.insert("retries".into(), Value::Int(h.retries));
    m.insert("eta".into(), opt_iso(&h.eta));
    m.insert("expires".into(), opt_iso(&h.expires));
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utcoffset_is_hours_west_exact_like_python() {
        assert_eq!(utcoffset_for(0), 0.0);
        assert_eq!(utcoffset_for(-5 * 3600), 5.0);
        assert_eq!(utcoffset_for(5 * 3600 + 1800), -5.5);
        assert_eq!(utcoffset_for(3600), -1.0);
    }

    #[test]
    fn clocks_move_forward_and_past_what_they_see() {
        let c = LamportClock::new();
        assert_eq!(c.forward(), 1);
        assert_eq!(c.adjust(10), 11);
        assert_eq!(c.adjust(3), 12);
        assert_eq!(c.forward(), 13);
    }

    #[test]
    fn events_have_celerys_key_order_and_routing_key() {
        let source = EventSource::new("celeriac@vm");
        let mut fields = Map::new();
        fields.insert("uuid".into(), Value::Str("id-1".into()));
        let event = source.event("task-succeeded", fields);
        let keys: Vec<&str> = event.fields().keys().map(String::as_str).collect();
        assert_eq!(keys, ["hostname", "utcoffset", "pid", "clock", "uuid", "timestamp", "type"]);
        assert_eq!(event.routing_key(), "task.succeeded");
        assert_eq!(event.fields().get("clock"), Some(&Value::Int(1)));
        let message = event.to_message().unwrap();
        assert_eq!(message.headers.get("hostname"), Some(&Value::Str("celeriac@vm".into())));
        assert_eq!(message.content_type, "application/json");
    }
}

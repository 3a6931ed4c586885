//! Celery task messages: protocol v2 read and written, protocol v1 (and the
//! v1-body-with-v2-headers "hybrid") read and upgraded to the same model.
//!
//! Detection follows Celery's consumer: a `task` header means v2; otherwise a
//! dict body with a `task` key is v1; anything else is not a task message. Every
//! header Python sends is a typed field; headers celeriac does not know (custom
//! `apply_async(headers=...)`, `redelivered`, future Celery additions) are kept in
//! order and written back after the standard ones, as Celery writes them.

use std::time::Duration;

use crate::codec::{Compression, ContentType};
use crate::error::ProtocolError;
use crate::limits::DecodeLimits;
use crate::message::Message;
use crate::signature::{self, Signature};
use crate::time::{self, PyDateTime};
use crate::value::{Map, Value};

/// Which protocol a message used on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Protocol {
    /// Protocol 1: empty headers, everything in a dict body.
    V1,
    /// Protocol 2 (Celery ≥ 4 default): metadata in headers, body `[args, kwargs, embed]`.
    #[default]
    V2,
    /// A `task` header with a v1-style dict body (Celery's `hybrid_to_proto2` case).
    Hybrid,
}

/// A number of seconds as Python sent it: an `int` stays an `int` on the way back.
///
/// Any number is kept, NaN, the infinities and negative values included (Python
/// accepts them too); [`Seconds::to_duration`] says what each means as a
/// [`Duration`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Seconds {
    /// A whole number of seconds.
    Int(i64),
    /// A fractional number of seconds (or an `int` beyond 64 bits, as the
    /// nearest float: either way it means "never" in practice).
    Float(f64),
}

impl Seconds {
    /// The value in seconds.
    pub fn as_f64(self) -> f64 {
        match self {
            Seconds::Int(i) => i as f64,
            Seconds::Float(f) => f,
        }
    }

    /// The value as a [`Duration`], never panicking: see
    /// [`time::duration_from_secs`] (negative → zero, huge or infinite →
    /// [`time::MAX_DURATION`], NaN → `None`).
    pub fn to_duration(self) -> Option<Duration> {
        match self {
            Seconds::Int(i) => Some(time::duration_from_int_secs(i)),
            Seconds::Float(f) => time::duration_from_secs(f),
        }
    }

    /// Reads a number of seconds: an int (any size), a float (any value), or
    /// `None` for null; anything else is refused with what it was.
    pub fn from_value(value: &Value) -> Result<Option<Seconds>, String> {
        match value {
            Value::Null => Ok(None),
            Value::Int(i) => Ok(Some(Seconds::Int(*i))),
            Value::BigInt(b) => Ok(Some(Seconds::Float(b.to_f64()))),
            Value::Float(f) => Ok(Some(Seconds::Float(*f))),
            other => Err(format!("{} is not a number of seconds", describe(other))),
        }
    }

    /// The value as Python sent it (`int` or `float`).
    pub fn to_value(self) -> Value {
        match self {
            Seconds::Int(i) => Value::Int(i),
            Seconds::Float(f) => Value::Float(f),
        }
    }
}

/// A value for an error message: its Python type and (shortened) JSON text.
fn describe(value: &Value) -> String {
    let mut text = crate::json::to_string(value).unwrap_or_else(|_| "?".into());
    if text.len() > 60 {
        let cut = (0..=57).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        text.truncate(cut);
        text.push_str("...");
    }
    let article = if value.type_name() == "int" { "an" } else { "a" };
    format!("{article} {} ({text})", value.type_name())
}

/// The `timelimit` header: `[hard, soft]`, hard first (Celery's docs say otherwise; the code does this).
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct TimeLimits {
    /// `time_limit`: the task is killed after this long.
    pub hard: Option<Seconds>,
    /// `soft_time_limit`: the task is told to stop after this long.
    pub soft: Option<Seconds>,
}

/// The metadata of a task message (the v2 headers).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct TaskHeaders {
    /// Producer language; `"py"` from Python.
    pub lang: Option<String>,
    /// Registered task name.
    pub task: String,
    /// Task id (also the `correlation_id` property).
    pub id: String,
    /// Display name override used in logs and events.
    pub shadow: Option<String>,
    /// Run no earlier than this instant.
    pub eta: Option<PyDateTime>,
    /// Revoke (as expired) if not started by this instant.
    pub expires: Option<PyDateTime>,
    /// Group id, for group and chord members.
    pub group: Option<String>,
    /// Position in the group; the chord join's ordering.
    pub group_index: Option<i64>,
    /// How many times the task was retried.
    pub retries: i64,
    /// Hard and soft time limits.
    pub timelimit: TimeLimits,
    /// Id of the workflow's first task.
    pub root_id: Option<String>,
    /// Id of the task that sent this one.
    pub parent_id: Option<String>,
    /// `repr(args)`, for logs and events.
    pub argsrepr: Option<String>,
    /// `repr(kwargs)`, for logs and events.
    pub kwargsrepr: Option<String>,
    /// Producer node name, `gen<pid>@<host>`.
    pub origin: Option<String>,
    /// Skip storing the result; `None` means "as the task is configured" (Celery 5.7 sends null).
    pub ignore_result: Option<bool>,
    /// How many times `Task.replace` replaced this task.
    pub replaced_task_nesting: i64,
    /// Names of stamp headers (stamping API).
    pub stamped_headers: Option<Vec<String>>,
    /// Stamps, `{name: value}`.
    pub stamps: Map,
    /// Every other header (custom headers, `redelivered`, `meth`, ...), in order.
    pub extra: Map,
}

/// `embed`, the third element of a v2 body: what happens after the task.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Embed {
    /// Tasks to call with the result (`link`).
    pub callbacks: Option<Vec<Signature>>,
    /// Tasks to call on failure (`link_error`).
    pub errbacks: Option<Vec<Signature>>,
    /// The rest of a chain, in reverse order: the next step is the last element.
    pub chain: Option<Vec<Signature>>,
    /// The chord body, on chord header members.
    pub chord: Option<Signature>,
    /// Unknown embed keys, in order.
    pub extra: Map,
}

/// A decoded Celery task message.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct TaskMessage {
    /// The protocol it arrived in (and is written back in).
    pub protocol: Protocol,
    /// The metadata.
    pub headers: TaskHeaders,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map,
    /// Callbacks, errbacks, chain and chord.
    pub embed: Embed,
    /// Protocol 1 only: the message headers sent beside the task (custom
    /// `headers=` of `apply_async`), which v1 keeps outside the body. Written
    /// back as they came.
    pub v1_message_headers: Map,
}

impl TaskMessage {
    /// A new protocol-2 message for `task` with the given id; `root_id` is the id,
    /// as Celery sets it for a task sent outside any workflow.
    pub fn new(task: impl Into<String>, id: impl Into<String>) -> TaskMessage {
        let id = id.into();
        TaskMessage {
            protocol: Protocol::V2,
            headers: TaskHeaders {
                lang: Some("rs".into()),
                task: task.into(),
                root_id: Some(id.clone()),
                id,
                ..TaskHeaders::default()
            },
            ..TaskMessage::default()
        }
    }

    /// Reads a task from a message with any content type celeriac reads (pickle
    /// is refused) and the default bounds of [`DecodeLimits`]: for messages a
    /// process made or trusts. A worker uses [`TaskMessage::from_message_with`]
    /// with its `accept_content` and `worker_max_message_size`.
    pub fn from_message(message: &Message) -> Result<TaskMessage, ProtocolError> {
        TaskMessage::from_message_with(message, &DecodeLimits::any_content())
    }

    /// As [`TaskMessage::from_message`], refusing bodies larger than `limit`
    /// bytes raw or decompressed.
    pub fn from_message_with_limit(message: &Message, limit: usize) -> Result<TaskMessage, ProtocolError> {
        let limits = DecodeLimits { max_body_bytes: limit, max_decoded_bytes: limit, ..DecodeLimits::any_content() };
        TaskMessage::from_message_with(message, &limits)
    }

    /// Reads a task from a message delivered by a broker, within `limits`:
    /// the content type is checked against `accept_content` before anything is
    /// decompressed or parsed, the raw and decompressed sizes, nesting and value
    /// count are bounded, then every header is type-checked. Each failure is a
    /// [`ProtocolError`] whose [`ProtocolError::kind`] names it.
    pub fn from_message_with(message: &Message, limits: &DecodeLimits) -> Result<TaskMessage, ProtocolError> {
        let body = message.decode_body_with(limits)?;
        TaskMessage::from_parts(&message.headers, body)
    }

    /// Reads a task from message headers and a decoded body, telling v2, v1 and hybrid apart.
    pub fn from_parts(headers: &Map, body: Value) -> Result<TaskMessage, ProtocolError> {
        if headers.contains_key("task") {
            match body {
                Value::List(parts) => {
                    let mut task = TaskMessage { protocol: Protocol::V2, ..TaskMessage::default() };
                    task.headers = TaskHeaders::from_map(headers)?;
                    let [args, kwargs, embed]: [Value; 3] = parts.try_into().map_err(|parts: Vec<Value>| {
                        ProtocolError::Body(format!("expected [args, kwargs, embed], got a list of {}", parts.len()))
                    })?;
                    task.args = body_args(args)?;
                    task.kwargs = body_kwargs(kwargs)?;
                    task.embed = Embed::from_value(embed)?;
                    Ok(task)
                }
                Value::Map(body) => {
                    // v1 fields from the body, overlaid by the real headers.
                    let mut merged = v1_headers(&body);
                    for (k, v) in headers {
                        merged.insert(k.clone(), v.clone());
                    }
                    let mut task = TaskMessage::from_v1_body(body)?;
                    task.protocol = Protocol::Hybrid;
                    task.headers = TaskHeaders::from_map(&merged)?;
                    Ok(task)
                }
                other => {
                    Err(ProtocolError::Body(format!("expected [args, kwargs, embed], got a {}", other.type_name())))
                }
            }
        } else {
            match body {
                Value::Map(body) if body.contains_key("task") => {
                    let mut task = TaskMessage::from_v1_body(body.clone())?;
                    task.headers = TaskHeaders::from_map(&v1_headers(&body))?;
                    task.v1_message_headers = headers.clone();
                    Ok(task)
                }
                _ => Err(ProtocolError::NotATask(
                    "no `task` header (protocol 2) and no `task` key in the body (protocol 1)".into(),
                )),
            }
        }
    }

    fn from_v1_body(body: Map) -> Result<TaskMessage, ProtocolError> {
        let mut embed = Embed {
            callbacks: signature::list_from_value(body.get("callbacks"), "callbacks")?,
            errbacks: signature::list_from_value(body.get("errbacks"), "errbacks")?,
            ..Embed::default()
        };
        embed.chord = match body.get("chord") {
            None | Some(Value::Null) => None,
            Some(v) => Some(Signature::from_value(v)?),
        };
        Ok(TaskMessage {
            protocol: Protocol::V1,
            headers: TaskHeaders::default(),
            args: body_args(body.get("args").cloned().unwrap_or(Value::List(Vec::new())))?,
            kwargs: body_kwargs(body.get("kwargs").cloned().unwrap_or(Value::Map(Map::new())))?,
            embed,
            v1_message_headers: Map::new(),
        })
    }

    /// The body value: `[args, kwargs, embed]` for v2, the v1 dict otherwise.
    pub fn body_value(&self) -> Value {
        match self.protocol {
            Protocol::V2 => Value::List(vec![
                Value::List(self.args.clone()),
                Value::Map(self.kwargs.clone()),
                self.embed.to_value(),
            ]),
            Protocol::V1 | Protocol::Hybrid => Value::Map(self.v1_body()),
        }
    }

    /// The headers to send: the v2 headers (for v1, the message headers it came with).
    pub fn header_map(&self) -> Map {
        match self.protocol {
            Protocol::V2 | Protocol::Hybrid => self.headers.to_map(),
            Protocol::V1 => self.v1_message_headers.clone(),
        }
    }

    /// Builds the message to publish. `properties` are the publisher's
    /// (`correlation_id`, `reply_to`, `delivery_mode`, ...), in order.
    pub fn to_message(
        &self,
        properties: Map,
        priority: u8,
        content_type: ContentType,
        compression: Option<Compression>,
    ) -> Result<Message, ProtocolError> {
        Ok(Message::with_body(self.header_map(), properties, priority, content_type, compression, &self.body_value())?)
    }

    /// The properties Celery sends with a task: `correlation_id` = id, `reply_to`,
    /// `delivery_mode` 2 (persistent), and `expiration` in milliseconds when `expires` is set.
    pub fn default_properties(&self, reply_to: Option<&str>, expiration_ms: Option<u64>) -> Map {
        let mut props = Map::new();
        props.insert("correlation_id".into(), Value::Str(self.headers.id.clone()));
        props.insert("reply_to".into(), reply_to.map(str::to_owned).into());
        props.insert("delivery_mode".into(), Value::Int(2));
        if let Some(ms) = expiration_ms {
            props.insert("expiration".into(), Value::Str(ms.to_string()));
        }
        props
    }

    /// The name to show in logs and events: `shadow` if set, else the task name.
    pub fn display_name(&self) -> &str {
        self.headers.shadow.as_deref().unwrap_or(&self.headers.task)
    }

    /// Celery's `as_task_v1` layout, known keys in its order, then extras.
    fn v1_body(&self) -> Map {
        let h = &self.headers;
        let mut extra = h.extra.clone();
        let utc = extra.shift_remove("utc").unwrap_or(Value::Bool(true));
        let taskset = extra.shift_remove("taskset").unwrap_or(Value::Null);
        let mut body = Map::new();
        body.insert("task".into(), Value::Str(h.task.clone()));
        body.insert("id".into(), Value::Str(h.id.clone()));
        body.insert("args".into(), Value::List(self.args.clone()));
        body.insert("kwargs".into(), Value::Map(self.kwargs.clone()));
        body.insert("group".into(), h.group.clone().into());
        body.insert("group_index".into(), h.group_index.into());
        body.insert("retries".into(), Value::Int(h.retries));
        body.insert("eta".into(), h.eta.map(|d| d.to_iso()).into());
        body.insert("expires".into(), h.expires.map(|d| d.to_iso()).into());
        body.insert("utc".into(), utc);
        body.insert("callbacks".into(), signature::list_to_value(&self.embed.callbacks));
        body.insert("errbacks".into(), signature::list_to_value(&self.embed.errbacks));
        body.insert("timelimit".into(), h.timelimit_value());
        body.insert("taskset".into(), taskset);
        body.insert("chord".into(), self.embed.chord.as_ref().map_or(Value::Null, Signature::to_value));
        if self.protocol == Protocol::V1 {
            for (k, v) in extra {
                body.entry(k).or_insert(v);
            }
        }
        body
    }
}

fn body_args(value: Value) -> Result<Vec<Value>, ProtocolError> {
    match value {
        Value::List(l) => Ok(l),
        Value::Null => Ok(Vec::new()),
        other => Err(ProtocolError::Body(format!("args is a {}, expected a list", other.type_name()))),
    }
}

fn body_kwargs(value: Value) -> Result<Map, ProtocolError> {
    match value {
        Value::Map(m) => Ok(m),
        Value::Null => Ok(Map::new()),
        other => Err(ProtocolError::Body(format!(
            "kwargs is a {}, expected a mapping (Celery: 'Task keyword arguments must be a mapping')",
            other.type_name()
        ))),
    }
}

/// The header view of a v1 body: the keys Celery's `hybrid_to_proto2` lifts,
/// plus v1's own `utc`, `taskset` and any unknown keys (kept as extras so a v1
/// message is written back as it came).
fn v1_headers(body: &Map) -> Map {
    let mut headers = Map::new();
    for (k, v) in body {
        match k.as_str() {
            "args" | "kwargs" | "callbacks" | "errbacks" | "chord" | "chain" => {}
            _ => {
                headers.insert(k.clone(), v.clone());
            }
        }
    }
    if !headers.contains_key("group") {
        if let Some(taskset) = body.get("taskset").filter(|v| !v.is_null()) {
            headers.insert("group".into(), taskset.clone());
        }
    }
    headers
}

const V2_KEYS: [&str; 19] = [
    "lang",
    "task",
    "id",
    "shadow",
    "eta",
    "expires",
    "group",
    "group_index",
    "retries",
    "timelimit",
    "root_id",
    "parent_id",
    "argsrepr",
    "kwargsrepr",
    "origin",
    "ignore_result",
    "replaced_task_nesting",
    "stamped_headers",
    "stamps",
];

impl TaskHeaders {
    /// Reads v2 headers, keeping unknown ones in `extra` (and dropping the
    /// message-level `compression` header, which belongs to [`Message`]).
    pub fn from_map(map: &Map) -> Result<TaskHeaders, ProtocolError> {
        let mut h = TaskHeaders {
            task: req_str(map, "task")?,
            id: req_str(map, "id")?,
            lang: opt_str(map, "lang")?,
            shadow: opt_str(map, "shadow")?,
            eta: opt_datetime(map, "eta")?,
            expires: opt_datetime(map, "expires")?,
            group: opt_str(map, "group")?,
            group_index: opt_int(map, "group_index")?,
            retries: opt_int(map, "retries")?.unwrap_or(0),
            timelimit: timelimits(map)?,
            root_id: opt_str(map, "root_id")?,
            parent_id: opt_str(map, "parent_id")?,
            argsrepr: opt_str(map, "argsrepr")?,
            kwargsrepr: opt_str(map, "kwargsrepr")?,
            origin: opt_str(map, "origin")?,
            ignore_result: match map.get("ignore_result") {
                None | Some(Value::Null) => None,
                Some(Value::Bool(b)) => Some(*b),
                // Python reads it for truthiness.
                Some(Value::Int(i)) => Some(*i != 0),
                Some(other) => return Err(ProtocolError::header("ignore_result", format!("a {}", other.type_name()))),
            },
            replaced_task_nesting: opt_int(map, "replaced_task_nesting")?.unwrap_or(0),
            stamped_headers: match map.get("stamped_headers") {
                None | Some(Value::Null) => None,
                Some(Value::List(items)) => Some(
                    items
                        .iter()
                        .map(|v| v.as_str().map(str::to_owned))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| ProtocolError::header("stamped_headers", "expected a list of names"))?,
                ),
                Some(other) => {
                    return Err(ProtocolError::header("stamped_headers", format!("a {}", other.type_name())))
                }
            },
            stamps: match map.get("stamps") {
                None | Some(Value::Null) => Map::new(),
                Some(Value::Map(m)) => m.clone(),
                Some(other) => return Err(ProtocolError::header("stamps", format!("a {}", other.type_name()))),
            },
            extra: Map::new(),
        };
        for (k, v) in map {
            if !V2_KEYS.contains(&k.as_str()) && k != "compression" {
                h.extra.insert(k.clone(), v.clone());
            }
        }
        Ok(h)
    }

    /// Writes the headers in Celery's emission order, then the extras.
    pub fn to_map(&self) -> Map {
        let mut m = Map::with_capacity(V2_KEYS.len() + self.extra.len());
        m.insert("lang".into(), self.lang.clone().into());
        m.insert("task".into(), Value::Str(self.task.clone()));
        m.insert("id".into(), Value::Str(self.id.clone()));
        m.insert("shadow".into(), self.shadow.clone().into());
        m.insert("eta".into(), self.eta.map(|d| d.to_iso()).into());
        m.insert("expires".into(), self.expires.map(|d| d.to_iso()).into());
        m.insert("group".into(), self.group.clone().into());
        m.insert("group_index".into(), self.group_index.into());
        m.insert("retries".into(), Value::Int(self.retries));
        m.insert("timelimit".into(), self.timelimit_value());
        m.insert("root_id".into(), self.root_id.clone().into());
        m.insert("parent_id".into(), self.parent_id.clone().into());
        m.insert("argsrepr".into(), self.argsrepr.clone().into());
        m.insert("kwargsrepr".into(), self.kwargsrepr.clone().into());
        m.insert("origin".into(), self.origin.clone().into());
        m.insert("ignore_result".into(), self.ignore_result.into());
        m.insert("replaced_task_nesting".into(), Value::Int(self.replaced_task_nesting));
        m.insert(
            "stamped_headers".into(),
            self.stamped_headers
                .as_ref()
                .map_or(Value::Null, |names| Value::List(names.iter().map(|n| Value::Str(n.clone())).collect())),
        );
        m.insert("stamps".into(), Value::Map(self.stamps.clone()));
        for (k, v) in &self.extra {
            m.insert(k.clone(), v.clone());
        }
        m
    }

    fn timelimit_value(&self) -> Value {
        let side = |s: Option<Seconds>| s.map_or(Value::Null, Seconds::to_value);
        Value::List(vec![side(self.timelimit.hard), side(self.timelimit.soft)])
    }

    /// The instant of `eta`, if any: a naive value is UTC (as Celery reads
    /// it), and one past the last instant representable (year 9999 with a
    /// negative offset) saturates to [`jiff::Timestamp::MAX`], "never".
    pub fn eta_instant(&self) -> Option<jiff::Timestamp> {
        self.eta.map(|d| d.to_timestamp_saturating())
    }

    /// The instant of `expires`, if any, read as [`TaskHeaders::eta_instant`] reads `eta`.
    pub fn expires_instant(&self) -> Option<jiff::Timestamp> {
        self.expires.map(|d| d.to_timestamp_saturating())
    }

    /// True when kombu marked the message as restored or requeued.
    pub fn redelivered(&self) -> bool {
        self.extra.get("redelivered").and_then(Value::as_bool).unwrap_or(false)
    }
}

impl Embed {
    /// Reads the embed dict of a v2 body (null is read as empty).
    pub fn from_value(value: Value) -> Result<Embed, ProtocolError> {
        let map = match value {
            Value::Map(m) => m,
            Value::Null => Map::new(),
            other => return Err(ProtocolError::Body(format!("embed is a {}, expected a dict", other.type_name()))),
        };
        let mut embed = Embed {
            callbacks: signature::list_from_value(map.get("callbacks"), "callbacks")?,
            errbacks: signature::list_from_value(map.get("errbacks"), "errbacks")?,
            chain: signature::list_from_value(map.get("chain"), "chain")?,
            chord: match map.get("chord") {
                None | Some(Value::Null) => None,
                Some(v) => Some(Signature::from_value(v).map_err(|e| ProtocolError::Body(format!("chord: {e}")))?),
            },
            extra: Map::new(),
        };
        for (k, v) in map {
            if !matches!(k.as_str(), "callbacks" | "errbacks" | "chain" | "chord") {
                embed.extra.insert(k, v);
            }
        }
        Ok(embed)
    }

    /// Writes the embed dict: `callbacks`, `errbacks`, `chain`, `chord`, then extras.
    pub fn to_value(&self) -> Value {
        let mut m = Map::with_capacity(4 + self.extra.len());
        m.insert("callbacks".into(), signature::list_to_value(&self.callbacks));
        m.insert("errbacks".into(), signature::list_to_value(&self.errbacks));
        m.insert("chain".into(), signature::list_to_value(&self.chain));
        m.insert("chord".into(), self.chord.as_ref().map_or(Value::Null, Signature::to_value));
        for (k, v) in &self.extra {
            m.insert(k.clone(), v.clone());
        }
        Value::Map(m)
    }
}

fn req_str(map: &Map, name: &str) -> Result<String, ProtocolError> {
    opt_str(map, name)?.ok_or_else(|| ProtocolError::header(name, "missing"))
}

fn opt_str(map: &Map, name: &str) -> Result<Option<String>, ProtocolError> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Str(s)) => Ok(Some(s.clone())),
        // Ids sent as UUID objects (kombu's uuid marker) are read as their text.
        Some(Value::Uuid(u)) => Ok(Some(u.hyphenated().to_string())),
        Some(other) => Err(ProtocolError::header(name, format!("a {}, expected a string", other.type_name()))),
    }
}

/// An int header. Anything else, a float or a numeric string included, is
/// refused: Celery accepts such a message and fails only when it does
/// arithmetic with the value (`retries + 1` on retry), so refusing it up front
/// dead-letters what would otherwise fail later.
fn opt_int(map: &Map, name: &str) -> Result<Option<i64>, ProtocolError> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Int(i)) => Ok(Some(*i)),
        Some(Value::BigInt(b)) => Err(ProtocolError::header(name, format!("{b} is outside the 64-bit range"))),
        Some(other) => Err(ProtocolError::header(name, format!("{}, expected an int", describe(other)))),
    }
}

fn opt_datetime(map: &Map, name: &str) -> Result<Option<PyDateTime>, ProtocolError> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Str(s)) => {
            PyDateTime::parse_iso(s).map(Some).map_err(|e| ProtocolError::header(name, e.to_string()))
        }
        Some(Value::DateTime(d)) => Ok(Some(*d)),
        Some(other) => Err(ProtocolError::header(name, format!("{}, expected an ISO-8601 string", describe(other)))),
    }
}

/// `timelimit`: `[hard, soft]`, each a number of seconds or null. Like Celery
/// (`if timelimit: ...`), null or an empty list means no limits; any number is
/// kept as it came (NaN, infinities, negative, huge) for the worker to map
/// with [`Seconds::to_duration`].
fn timelimits(map: &Map) -> Result<TimeLimits, ProtocolError> {
    let side = |v: &Value, which: &str| {
        Seconds::from_value(v).map_err(|reason| ProtocolError::header("timelimit", format!("{which} limit: {reason}")))
    };
    match map.get("timelimit") {
        None | Some(Value::Null) => Ok(TimeLimits::default()),
        Some(Value::List(items)) => match items.as_slice() {
            [] => Ok(TimeLimits::default()),
            [hard, soft] => Ok(TimeLimits { hard: side(hard, "hard")?, soft: side(soft, "soft")? }),
            _ => Err(ProtocolError::header(
                "timelimit",
                format!("a list of {} items, expected [hard, soft]", items.len()),
            )),
        },
        Some(other) => Err(ProtocolError::header("timelimit", format!("{}, expected [hard, soft]", describe(other)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Envelope;
    use crate::json;

    fn v2_headers() -> Map {
        let text = r#"{"lang": "py", "task": "tasks.add", "id": "11111111-1111-4111-8111-111111111111", "shadow": null, "eta": "2026-11-24T12:59:38.873607-05:00", "expires": null, "group": null, "group_index": null, "retries": 0, "timelimit": [1, 0.5], "root_id": "11111111-1111-4111-8111-111111111111", "parent_id": null, "argsrepr": "(2, 2)", "kwargsrepr": "{}", "origin": "gen10158@vm", "ignore_result": false, "replaced_task_nesting": 0, "stamped_headers": null, "stamps": {}, "x-custom": {"a": [1]}}"#;
        json::from_str(text).unwrap().as_map().unwrap().clone()
    }

    #[test]
    fn v2_headers_round_trip_with_custom_headers_last() {
        let map = v2_headers();
        let h = TaskHeaders::from_map(&map).unwrap();
        assert_eq!(h.timelimit.hard, Some(Seconds::Int(1)));
        assert_eq!(h.timelimit.soft, Some(Seconds::Float(0.5)));
        assert_eq!(h.eta.unwrap().to_iso(), "2026-11-24T12:59:38.873607-05:00");
        assert_eq!(h.extra.keys().collect::<Vec<_>>(), ["x-custom"]);
        assert_eq!(json::to_string(&Value::Map(h.to_map())).unwrap(), json::to_string(&Value::Map(map)).unwrap());
    }

    #[test]
    fn v1_body_is_upgraded_and_written_back_as_v1() {
        let body = json::from_str(r#"{"task": "p1.add", "id": "eeeeeeee-0000-4000-8000-000000000001", "args": [2, 2], "kwargs": {}, "group": null, "group_index": null, "retries": 0, "eta": "2026-11-24T17:59:08.851498+00:00", "expires": "2026-11-24T17:59:58.851498+00:00", "utc": true, "callbacks": null, "errbacks": null, "timelimit": [null, null], "taskset": null, "chord": null}"#).unwrap();
        let text = json::to_string(&body).unwrap();
        let task = TaskMessage::from_parts(&Map::new(), body).unwrap();
        assert_eq!(task.protocol, Protocol::V1);
        assert_eq!(task.headers.task, "p1.add");
        assert_eq!(task.args, vec![Value::Int(2), Value::Int(2)]);
        assert!(task.headers.expires.is_some());
        assert!(task.header_map().is_empty());
        assert_eq!(json::to_string(&task.body_value()).unwrap(), text);
    }

    #[test]
    fn hybrid_takes_body_fields_and_header_overrides() {
        let mut headers = Map::new();
        headers.insert("task".into(), "tasks.mul".into());
        headers.insert("id".into(), "abc".into());
        headers.insert("retries".into(), Value::Int(2));
        let body =
            json::from_str(r#"{"task": "tasks.ignored", "id": "zzz", "args": [3], "kwargs": {"y": 4}, "retries": 1}"#)
                .unwrap();
        let task = TaskMessage::from_parts(&headers, body).unwrap();
        assert_eq!(task.protocol, Protocol::Hybrid);
        assert_eq!(
            (task.headers.task.as_str(), task.headers.id.as_str(), task.headers.retries),
            ("tasks.mul", "abc", 2)
        );
        assert_eq!(task.kwargs.get("y"), Some(&Value::Int(4)));
    }

    #[test]
    fn not_a_task_and_bad_shapes_are_errors() {
        assert!(matches!(TaskMessage::from_parts(&Map::new(), Value::List(vec![])), Err(ProtocolError::NotATask(_))));
        let headers = v2_headers();
        for body in ["[[1], {}]", "[1, {}, {}]", "[[1], [], {}]", "[[1], {}, []]", "[[1], {}, {\"chain\": 5}]", "\"x\""]
        {
            assert!(TaskMessage::from_parts(&headers, json::from_str(body).unwrap()).is_err(), "{body}");
        }
        let mut bad = headers.clone();
        bad.insert("eta".into(), "tomorrow".into());
        assert!(matches!(TaskHeaders::from_map(&bad), Err(ProtocolError::Header { .. })));
        bad = headers.clone();
        bad.insert("timelimit".into(), json::from_str("[1]").unwrap());
        assert!(TaskHeaders::from_map(&bad).is_err());
        bad = headers;
        bad.shift_remove("id");
        assert!(TaskHeaders::from_map(&bad).is_err());
    }

    fn with(name: &str, json_value: &str) -> Result<TaskHeaders, ProtocolError> {
        let mut map = v2_headers();
        map.insert(name.into(), json::from_str(json_value).unwrap());
        TaskHeaders::from_map(&map)
    }

    fn header_error(name: &str, json_value: &str) -> String {
        match with(name, json_value) {
            Err(e @ ProtocolError::Header { .. }) => {
                assert_eq!(e.kind(), crate::ErrorKind::InvalidHeader);
                let text = e.to_string();
                assert!(text.starts_with(&format!("invalid header {name:?}")), "{text}");
                text
            }
            other => panic!("{name} = {json_value}: expected a header error, got {other:?}"),
        }
    }

    #[test]
    fn timelimit_keeps_any_number_and_refuses_other_types() {
        let limits = |text: &str| with("timelimit", text).unwrap().timelimit;
        let nan = limits("[NaN, Infinity]");
        assert!(matches!(nan.hard, Some(Seconds::Float(f)) if f.is_nan()));
        assert_eq!(nan.soft, Some(Seconds::Float(f64::INFINITY)));
        assert_eq!(nan.hard.unwrap().to_duration(), None);
        assert_eq!(nan.soft.unwrap().to_duration(), Some(time::MAX_DURATION));
        let odd = limits("[1e300, -1]");
        assert_eq!((odd.hard, odd.soft), (Some(Seconds::Float(1e300)), Some(Seconds::Int(-1))));
        assert_eq!(odd.hard.unwrap().to_duration(), Some(time::MAX_DURATION));
        assert_eq!(odd.soft.unwrap().to_duration(), Some(Duration::ZERO));
        let huge = limits("[-Infinity, 123456789012345678901234567890]");
        assert_eq!(huge.hard.unwrap().to_duration(), Some(Duration::ZERO));
        assert_eq!(huge.soft, Some(Seconds::Float(1.2345678901234568e29)));
        assert_eq!(limits("[9223372036854775807, 1e-9]").hard.unwrap().to_duration(), Some(time::MAX_DURATION));
        // Falsy means no limits, as Celery's `if timelimit:`.
        assert_eq!(limits("[]"), TimeLimits::default());
        assert_eq!(limits("null"), TimeLimits::default());
        // Wrong types and shapes are refused, naming what was wrong.
        assert!(header_error("timelimit", "[\"10\", null]")
            .contains("hard limit: a str (\"10\") is not a number of seconds"));
        assert!(header_error("timelimit", "[null, [1]]").contains("soft limit: a list"));
        assert!(header_error("timelimit", "[true, null]").contains("a bool"));
        assert!(header_error("timelimit", "[1, 2, 3]").contains("a list of 3 items"));
        assert!(header_error("timelimit", "[1]").contains("a list of 1 items"));
        assert!(header_error("timelimit", "5").contains("an int (5), expected [hard, soft]"));
        assert!(header_error("timelimit", "\"ab\"").contains("expected [hard, soft]"));
        assert!(header_error("timelimit", "{\"hard\": 1}").contains("a dict"));
    }

    #[test]
    fn int_headers_refuse_everything_but_ints() {
        for name in ["retries", "group_index", "replaced_task_nesting"] {
            for bad in [
                "NaN",
                "Infinity",
                "-Infinity",
                "1e300",
                "2.0",
                "\"3\"",
                "[1]",
                "{}",
                "true",
                "123456789012345678901234567890",
            ] {
                let text = header_error(name, bad);
                assert!(text.contains("expected an int") || text.contains("outside the 64-bit range"), "{text}");
            }
        }
        assert_eq!(with("retries", "-1").unwrap().retries, -1);
        assert_eq!(with("retries", "9223372036854775807").unwrap().retries, i64::MAX);
        assert_eq!(with("group_index", "-9223372036854775808").unwrap().group_index, Some(i64::MIN));
        assert!(header_error("retries", "\"3\"").contains("a str (\"3\"), expected an int"));
        // A long value is shortened in the message.
        let long = format!("\"{}\"", "é".repeat(100));
        assert!(header_error("retries", &long).len() < 200);
    }

    #[test]
    fn eta_and_expires_refuse_what_celery_refuses() {
        for name in ["eta", "expires"] {
            for bad in [
                "1700000000",
                "1e300",
                "NaN",
                "\"\"",
                "\"tomorrow\"",
                "[\"2024-01-01T00:00:00\"]",
                "{}",
                "true",
                "\"0000-01-01T00:00:00\"",
                "\"2024-13-01T00:00:00\"",
                "\"2024-01-01T00:00:00+24:00\"",
                "\"99999-01-01\"",
            ] {
                header_error(name, bad);
            }
        }
        // The far future is kept; its instant saturates to "never".
        let h = with("eta", "\"9999-12-31T23:59:59.999999-05:00\"").unwrap();
        assert_eq!(h.eta.unwrap().to_iso(), "9999-12-31T23:59:59.999999-05:00");
        assert_eq!(h.eta_instant(), Some(jiff::Timestamp::MAX));
        let h = with("expires", "\"0001-01-01T00:00:00\"").unwrap();
        assert!(h.expires_instant().unwrap() < jiff::Timestamp::UNIX_EPOCH);
        assert_eq!(with("eta", "null").unwrap().eta_instant(), None);
    }

    #[test]
    fn hostile_v1_bodies_are_errors_naming_the_field() {
        let v1 = |field: &str, value: &str| {
            let text = format!(r#"{{"task": "t", "id": "i", "args": [], "kwargs": {{}}, "{field}": {value}}}"#);
            TaskMessage::from_parts(&Map::new(), json::from_str(&text).unwrap())
        };
        for (field, value) in [("retries", "NaN"), ("eta", "1e300"), ("expires", "-1"), ("timelimit", "[\"x\", 1]")] {
            let err = v1(field, value).unwrap_err();
            assert!(matches!(&err, ProtocolError::Header { name, .. } if name == field), "{field}: {err}");
        }
        let ok = v1("timelimit", "[1e300, NaN]").unwrap();
        assert_eq!(ok.headers.timelimit.hard, Some(Seconds::Float(1e300)));
        // A v1 body's `time_limit`/`soft_time_limit` are not Celery fields: kept as they came.
        let extra = v1("soft_time_limit", "NaN").unwrap();
        assert!(extra.headers.extra.get("soft_time_limit").unwrap().as_f64().unwrap().is_nan());
    }

    #[test]
    fn decoding_with_limits_refuses_by_kind() {
        use crate::limits::{Accept, DecodeLimits, ErrorKind};
        let mut task = TaskMessage::new("tasks.add", "id-1");
        task.args = vec![Value::List(vec![Value::Int(1); 100])];
        let props = task.default_properties(None, None);
        let json_msg = task.to_message(props.clone(), 0, ContentType::Json, None).unwrap();
        let yaml_msg = task.to_message(props.clone(), 0, ContentType::Yaml, Some(Compression::Zstd)).unwrap();
        let kind = |m: &Message, l: &DecodeLimits| TaskMessage::from_message_with(m, l).unwrap_err().kind();
        let default = DecodeLimits::default();
        assert_eq!(TaskMessage::from_message_with(&json_msg, &default).unwrap(), task);
        assert_eq!(kind(&yaml_msg, &default), ErrorKind::ContentDisallowed);
        let yaml_ok = DecodeLimits { accept: Accept::from_names(["json", "yaml"]).unwrap(), ..DecodeLimits::default() };
        assert_eq!(TaskMessage::from_message_with(&yaml_msg, &yaml_ok).unwrap(), task);
        let few = DecodeLimits { max_elements: 50, ..yaml_ok.clone() };
        assert_eq!(kind(&json_msg, &few), ErrorKind::TooManyElements);
        assert_eq!(kind(&yaml_msg, &few), ErrorKind::TooManyElements);
        let shallow = DecodeLimits { max_depth: 2, ..yaml_ok.clone() };
        assert_eq!(kind(&json_msg, &shallow), ErrorKind::TooDeep);
        let tiny = DecodeLimits::new(Accept::any(), 64);
        assert_eq!(kind(&json_msg, &tiny), ErrorKind::BodyTooLarge);
        // The old entry points keep working, with any content type.
        assert_eq!(TaskMessage::from_message(&yaml_msg).unwrap(), task);
        assert_eq!(TaskMessage::from_message_with_limit(&yaml_msg, 1 << 20).unwrap(), task);
        let mut bad = json_msg.clone();
        bad.headers.insert("retries".into(), Value::Str("3".into()));
        let err = TaskMessage::from_message_with(&bad, &default).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidHeader);
        assert!(err.reason().starts_with("invalid_header: invalid header \"retries\""), "{}", err.reason());
    }

    #[test]
    fn compressed_message_round_trips() {
        let mut task = TaskMessage::new("tasks.add", "id-1");
        task.args = vec![Value::Int(1), Value::Str("é".into())];
        let props = task.default_properties(Some("reply"), None);
        for ct in [ContentType::Json, ContentType::Msgpack] {
            let msg = task.to_message(props.clone(), 3, ct, Some(Compression::Zlib)).unwrap();
            assert_eq!(msg.headers.get("compression"), Some(&Value::Str("application/x-gzip".into())));
            let env = Envelope::new(msg, "", "celery");
            let back = Envelope::from_slice(env.to_json().unwrap().as_bytes()).unwrap();
            assert_eq!(back.message.priority, 3);
            assert_eq!(TaskMessage::from_message(&back.message).unwrap(), task);
        }
    }

    #[test]
    fn pickle_is_refused_before_anything_else() {
        let msg = Message {
            headers: v2_headers(),
            properties: Map::new(),
            priority: 0,
            content_type: "application/x-python-serialize".into(),
            content_encoding: "binary".into(),
            body: b"\x80\x04\x95".to_vec(),
        };
        let err = TaskMessage::from_message(&msg).unwrap_err();
        assert!(err.to_string().contains("refusing to decode a pickle body"), "{err}");
    }
}

//! The JSON envelope kombu's Redis transport pushes onto a list, and the
//! `[envelope, exchange, routing_key]` record it keeps in the `unacked` hash.
//!
//! The layout is kombu's to the byte: top-level keys `body`, `content-encoding`,
//! `content-type`, `headers`, `properties`; the body base64-encoded; inside
//! `properties`, the publisher's properties first, then `delivery_info`,
//! `priority`, `body_encoding` and the `delivery_tag` (a uuid4 that identifies
//! the message for ack emulation and never changes, even on restore).

use base64::Engine as _;

use crate::error::ProtocolError;
use crate::json::{self, JsonError};
use crate::limits::DecodeLimits;
use crate::message::Message;
use crate::value::{Map, Value};

/// How the body is stored in the envelope (`properties.body_encoding`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum BodyEncoding {
    /// Standard base64 with padding: kombu's default.
    #[default]
    Base64,
    /// The body stored as text, when the transport option `body_encoding` is
    /// `utf-8` or empty; the string names it as found (`""` when absent or null).
    Text(String),
}

/// Where a message was published: `properties.delivery_info`.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct DeliveryInfo {
    /// The exchange (`""` for Celery's default direct routing).
    pub exchange: String,
    /// The routing key (the queue name under the anonymous exchange).
    pub routing_key: String,
    /// Set to true by kombu when the message was restored or requeued.
    pub redelivered: Option<bool>,
    /// Any other keys, preserved in order.
    pub extra: Map,
}

/// A Redis list element: a [`Message`] with kombu's delivery bookkeeping.
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    /// The message itself.
    pub message: Message,
    /// Where it was published.
    pub delivery_info: DeliveryInfo,
    /// kombu's per-publish uuid4, the key of the `unacked` hash.
    pub delivery_tag: String,
    /// How `body` is stored.
    pub body_encoding: BodyEncoding,
}

fn env_err(reason: impl Into<String>) -> ProtocolError {
    ProtocolError::Envelope(reason.into())
}

fn take_str(map: &mut Map, key: &str) -> Result<Option<String>, ProtocolError> {
    match map.shift_remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Str(s)) => Ok(Some(s)),
        Some(other) => Err(env_err(format!("{key} is a {}, expected a string", other.type_name()))),
    }
}

/// The priority kombu's virtual transport reads from `properties.priority`
/// (`_get_message_priority`): `int(priority)` clamped to 0..=255, and the
/// default 0 when `int()` refuses the value. A message is never refused for
/// its priority. Where Python's `int()` overflows (`inf`) this saturates.
pub fn priority_like_kombu(value: &Value) -> u8 {
    let clamp = |p: i128| p.clamp(0, 255) as u8;
    match value {
        Value::Int(p) => clamp(i128::from(*p)),
        Value::BigInt(b) => {
            if b.as_str().starts_with('-') {
                0
            } else {
                255
            }
        }
        // int(3.9) is 3; int(nan) raises ValueError (the default); int(inf) overflows.
        Value::Float(f) if f.is_nan() => 0,
        Value::Float(f) => clamp(f.trunc().clamp(-1.0, 256.0) as i128),
        Value::Bool(b) => u8::from(*b),
        // int(" 7 ") is 7; int("7.5") and int("high") raise ValueError.
        Value::Str(s) => s.trim().parse::<i128>().map_or(0, clamp),
        _ => 0,
    }
}

impl Envelope {
    /// Whether the message was restored or requeued before (kombu sets
    /// `delivery_info.redelivered` and the `redelivered` header).
    pub fn redelivered(&self) -> bool {
        self.delivery_info.redelivered == Some(true)
            || matches!(self.message.headers.get("redelivered"), Some(Value::Bool(true)))
    }

    /// A new envelope for publishing, with a fresh delivery tag and base64 body.
    pub fn new(message: Message, exchange: &str, routing_key: &str) -> Envelope {
        Envelope {
            message,
            delivery_info: DeliveryInfo {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
                ..DeliveryInfo::default()
            },
            delivery_tag: uuid::Uuid::new_v4().to_string(),
            body_encoding: BodyEncoding::Base64,
        }
    }

    /// An empty envelope (no headers, body or tag), to stand in for one moved
    /// out of a structure.
    pub fn placeholder() -> Envelope {
        Envelope {
            message: Message {
                headers: Map::new(),
                properties: Map::new(),
                priority: 0,
                content_type: String::new(),
                content_encoding: String::new(),
                body: Vec::new(),
            },
            delivery_info: DeliveryInfo::default(),
            delivery_tag: String::new(),
            body_encoding: BodyEncoding::Base64,
        }
    }

    /// Reads an envelope from the bytes of a Redis list element, with the
    /// bounds of [`json::from_slice`].
    pub fn from_slice(bytes: &[u8]) -> Result<Envelope, ProtocolError> {
        let value = json::from_slice(bytes).map_err(|e| env_err(e.to_string()))?;
        Envelope::from_value(value)
    }

    /// Reads an envelope from the bytes of a Redis list element within
    /// `limits`: the element may be at most [`DecodeLimits::max_envelope_bytes`]
    /// long (checked before parsing), and its JSON is bounded in nesting and
    /// values. The body is only unwrapped here; its content type and size are
    /// checked when it is decoded ([`Message::decode_body_with`]).
    pub fn from_slice_with(bytes: &[u8], limits: &DecodeLimits) -> Result<Envelope, ProtocolError> {
        let max = limits.max_envelope_bytes();
        if bytes.len() > max {
            return Err(ProtocolError::EnvelopeTooLarge { limit: max, size: bytes.len() });
        }
        let value = json::from_slice_with(bytes, limits).map_err(|e| match e {
            JsonError::TooDeep { .. } | JsonError::TooManyElements { .. } => ProtocolError::Codec(e.into()),
            other => env_err(other.to_string()),
        })?;
        Envelope::from_value(value)
    }

    /// Reads an envelope from its decoded JSON value.
    pub fn from_value(value: Value) -> Result<Envelope, ProtocolError> {
        let Value::Map(mut top) = value else {
            return Err(env_err(format!("expected a JSON object, got a {}", value.type_name())));
        };
        let body_text = take_str(&mut top, "body")?.ok_or_else(|| env_err("missing body"))?;
        let content_encoding = take_str(&mut top, "content-encoding")?.unwrap_or_default();
        let content_type = take_str(&mut top, "content-type")?.unwrap_or_default();
        let headers = match top.shift_remove("headers") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Map(m)) => m,
            Some(other) => return Err(env_err(format!("headers is a {}, expected an object", other.type_name()))),
        };
        let mut properties = match top.shift_remove("properties") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Map(m)) => m,
            Some(other) => return Err(env_err(format!("properties is a {}, expected an object", other.type_name()))),
        };
        let delivery_info = match properties.shift_remove("delivery_info") {
            None | Some(Value::Null) => DeliveryInfo::default(),
            Some(Value::Map(mut m)) => DeliveryInfo {
                exchange: take_str(&mut m, "exchange")?.unwrap_or_default(),
                routing_key: take_str(&mut m, "routing_key")?.unwrap_or_default(),
                redelivered: match m.shift_remove("redelivered") {
                    None | Some(Value::Null) => None,
                    Some(Value::Bool(b)) => Some(b),
                    Some(other) => {
                        return Err(env_err(format!("delivery_info.redelivered is a {}", other.type_name())))
                    }
                },
                extra: m,
            },
            Some(other) => return Err(env_err(format!("delivery_info is a {}", other.type_name()))),
        };
        let priority = properties.shift_remove("priority").map_or(0, |p| priority_like_kombu(&p));
        let body_encoding = match take_str(&mut properties, "body_encoding")? {
            Some(e) if e == "base64" => BodyEncoding::Base64,
            other => BodyEncoding::Text(other.unwrap_or_default()),
        };
        let delivery_tag = match properties.shift_remove("delivery_tag") {
            None | Some(Value::Null) => String::new(),
            Some(Value::Str(s)) => s,
            // kombu tags are uuid strings; anything else is kept as its JSON text.
            Some(other) => json::to_string(&other).map_err(|e| env_err(e.to_string()))?,
        };
        let body = match body_encoding {
            BodyEncoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(body_text.as_bytes())
                .map_err(|e| env_err(format!("body is not valid base64: {e}")))?,
            BodyEncoding::Text(_) => body_text.into_bytes(),
        };
        Ok(Envelope {
            message: Message { headers, properties, priority, content_type, content_encoding, body },
            delivery_info,
            delivery_tag,
            body_encoding,
        })
    }

    /// The envelope as kombu writes it, byte for byte.
    pub fn to_json(&self) -> Result<String, ProtocolError> {
        let mut out = String::with_capacity(self.message.body.len() * 4 / 3 + 512);
        self.write_json(&mut out)?;
        Ok(out)
    }

    fn write_json(&self, out: &mut String) -> Result<(), ProtocolError> {
        let m = &self.message;
        out.push_str("{\"body\": ");
        match &self.body_encoding {
            BodyEncoding::Base64 => {
                out.push('"');
                base64::engine::general_purpose::STANDARD.encode_string(&m.body, out);
                out.push('"');
            }
            BodyEncoding::Text(_) => {
                let text = std::str::from_utf8(&m.body)
                    .map_err(|_| env_err("a body stored as text must be UTF-8; use base64 body encoding"))?;
                json::write_str(out, text);
            }
        }
        out.push_str(", \"content-encoding\": ");
        json::write_str(out, &m.content_encoding);
        out.push_str(", \"content-type\": ");
        json::write_str(out, &m.content_type);
        out.push_str(", \"headers\": ");
        json::write_map(out, &m.headers).map_err(|e| env_err(e.to_string()))?;
        out.push_str(", \"properties\": {");
        for (key, value) in &m.properties {
            json::write_str(out, key);
            out.push_str(": ");
            json::write_value(out, value).map_err(|e| env_err(e.to_string()))?;
            out.push_str(", ");
        }
        out.push_str("\"delivery_info\": {\"exchange\": ");
        json::write_str(out, &self.delivery_info.exchange);
        out.push_str(", \"routing_key\": ");
        json::write_str(out, &self.delivery_info.routing_key);
        if let Some(r) = self.delivery_info.redelivered {
            out.push_str(if r { ", \"redelivered\": true" } else { ", \"redelivered\": false" });
        }
        for (key, value) in &self.delivery_info.extra {
            out.push_str(", ");
            json::write_str(out, key);
            out.push_str(": ");
            json::write_value(out, value).map_err(|e| env_err(e.to_string()))?;
        }
        out.push_str("}, \"priority\": ");
        out.push_str(&m.priority.to_string());
        out.push_str(", \"body_encoding\": ");
        match &self.body_encoding {
            BodyEncoding::Base64 => out.push_str("\"base64\""),
            BodyEncoding::Text(name) => json::write_str(out, name),
        }
        out.push_str(", \"delivery_tag\": ");
        json::write_str(out, &self.delivery_tag);
        out.push_str("}}");
        Ok(())
    }

    /// Marks the message redelivered as kombu does when it restores or requeues
    /// it: `headers.redelivered = true` and `delivery_info.redelivered = true`.
    pub fn mark_redelivered(&mut self) {
        self.message.headers.insert("redelivered".into(), Value::Bool(true));
        self.delivery_info.redelivered = Some(true);
    }

    /// The value kombu stores in the `unacked` hash for this message:
    /// `[envelope, exchange, routing_key]`.
    pub fn to_unacked_json(&self) -> Result<String, ProtocolError> {
        let mut out = String::with_capacity(self.message.body.len() * 4 / 3 + 600);
        out.push('[');
        self.write_json(&mut out)?;
        out.push_str(", ");
        json::write_str(&mut out, &self.delivery_info.exchange);
        out.push_str(", ");
        json::write_str(&mut out, &self.delivery_info.routing_key);
        out.push(']');
        Ok(out)
    }

    /// Reads an `unacked` hash value: the envelope, and the exchange and routing
    /// key kombu uses to find the queue to restore it to.
    pub fn from_unacked_slice(bytes: &[u8]) -> Result<(Envelope, String, String), ProtocolError> {
        let value = json::from_slice(bytes).map_err(|e| env_err(e.to_string()))?;
        let Value::List(items) = value else {
            return Err(env_err("an unacked entry is a [envelope, exchange, routing_key] list"));
        };
        let mut items = items.into_iter();
        match (items.next(), items.next(), items.next(), items.next()) {
            (Some(env), Some(Value::Str(exchange)), Some(Value::Str(routing_key)), None) => {
                Ok((Envelope::from_value(env)?, exchange, routing_key))
            }
            _ => Err(env_err("an unacked entry is a [envelope, exchange, routing_key] list")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The envelope captured from Celery 5.6.3 in the protocol reference (section 2.1).
    const CAPTURED: &str = r#"{"body": "W1syLCAyXSwge30sIHsiY2FsbGJhY2tzIjogbnVsbCwgImVycmJhY2tzIjogbnVsbCwgImNoYWluIjogbnVsbCwgImNob3JkIjogbnVsbH1d", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"lang": "py", "task": "tasks.add", "id": "11111111-1111-4111-8111-111111111111", "shadow": null, "eta": null, "expires": null, "group": null, "group_index": null, "retries": 0, "timelimit": [null, null], "root_id": "11111111-1111-4111-8111-111111111111", "parent_id": null, "argsrepr": "(2, 2)", "kwargsrepr": "{}", "origin": "gen10158@vm", "ignore_result": false, "replaced_task_nesting": 0, "stamped_headers": null, "stamps": {}}, "properties": {"correlation_id": "11111111-1111-4111-8111-111111111111", "reply_to": "09d41851-7b91-3efb-80b1-9158859fe3b1", "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": "celery"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "5a8b63ef-51ae-4afe-abbf-6f38d14812b0"}}"#;

    #[test]
    fn captured_envelope_round_trips_byte_for_byte() {
        let env = Envelope::from_slice(CAPTURED.as_bytes()).unwrap();
        assert_eq!(env.delivery_tag, "5a8b63ef-51ae-4afe-abbf-6f38d14812b0");
        assert_eq!(env.delivery_info.routing_key, "celery");
        assert_eq!(env.message.correlation_id(), Some("11111111-1111-4111-8111-111111111111"));
        assert_eq!(
            env.message.body,
            br#"[[2, 2], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#
        );
        assert_eq!(env.to_json().unwrap(), CAPTURED);
    }

    #[test]
    fn redelivery_and_unacked_entry() {
        let mut env = Envelope::from_slice(CAPTURED.as_bytes()).unwrap();
        env.mark_redelivered();
        let text = env.to_json().unwrap();
        assert!(text.contains(r#""stamps": {}, "redelivered": true}"#));
        assert!(text.contains(r#""routing_key": "celery", "redelivered": true}"#));
        let entry = env.to_unacked_json().unwrap();
        assert!(entry.ends_with(r#", "", "celery"]"#));
        let (back, exchange, rk) = Envelope::from_unacked_slice(entry.as_bytes()).unwrap();
        assert_eq!((back, exchange.as_str(), rk.as_str()), (env, "", "celery"));
    }

    #[test]
    fn malformed_envelopes_are_errors() {
        for bad in [
            "[]",
            "{}",
            r#"{"body": 1}"#,
            r#"{"body": "!!!", "properties": {"body_encoding": "base64"}}"#,
            r#"{"body": "", "headers": [], "properties": {}}"#,
            r#"{"body": "", "properties": {"delivery_info": 5}}"#,
        ] {
            assert!(Envelope::from_slice(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(Envelope::from_unacked_slice(b"[1, 2]").is_err());
    }

    #[test]
    fn any_priority_is_read_as_kombu_reads_it() {
        let cases = [
            ("0", 0),
            ("9", 9),
            ("255", 255),
            ("300", 255),
            ("-1", 0),
            ("-9223372036854775808", 0),
            ("123456789012345678901234567890", 255),
            ("-123456789012345678901234567890", 0),
            ("3.9", 3),
            ("-0.5", 0),
            ("1e300", 255),
            ("-1e300", 0),
            ("NaN", 0),
            ("Infinity", 255),
            ("-Infinity", 0),
            ("true", 1),
            ("\" 7 \"", 7),
            ("\"7.5\"", 0),
            ("\"high\"", 0),
            ("[5]", 0),
            ("{}", 0),
            ("null", 0),
        ];
        for (text, want) in cases {
            let raw = format!(r#"{{"body": "", "properties": {{"priority": {text}, "body_encoding": "base64"}}}}"#);
            let env = Envelope::from_slice(raw.as_bytes()).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(env.message.priority, want, "{text}");
        }
    }

    #[test]
    fn bounded_envelopes() {
        let ok = Envelope::from_slice_with(CAPTURED.as_bytes(), &DecodeLimits::default()).unwrap();
        assert_eq!(ok, Envelope::from_slice(CAPTURED.as_bytes()).unwrap());
        // A body of 200 KB in an envelope for bodies of at most 1000 bytes.
        let huge = format!(r#"{{"body": "{}"}}"#, "A".repeat(200_000));
        let limits = DecodeLimits { max_body_bytes: 1000, ..DecodeLimits::default() };
        let big = Envelope::from_slice_with(huge.as_bytes(), &limits).unwrap_err();
        assert!(matches!(big, ProtocolError::EnvelopeTooLarge { size, .. } if size == huge.len()));
        assert_eq!(big.kind(), crate::ErrorKind::BodyTooLarge);
        let limits = DecodeLimits { max_depth: 4, max_elements: 40, ..DecodeLimits::default() };
        let deep = r#"{"body": "", "headers": {"a": [[[[1]]]]}}"#;
        let err = Envelope::from_slice_with(deep.as_bytes(), &limits).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::TooDeep, "{err}");
        let wide = format!(r#"{{"body": "", "headers": {{"a": [{}1]}}}}"#, "1, ".repeat(50));
        let err = Envelope::from_slice_with(wide.as_bytes(), &limits).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::TooManyElements, "{err}");
        let err = Envelope::from_slice_with(b"{", &limits).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::MalformedEnvelope, "{err}");
    }
}

//! The pure first steps of a remote-control request, before anything acts on
//! it: decoding the body within bounds ([`decode_body`]), deciding whether it
//! is addressed to this node ([`addressed_to`], kombu's `Node.handle_message`)
//! and reading its envelope ([`Request::parse`], kombu's `Node.dispatch`).
//!
//! Every input ends in a value or a [`RequestError`]; none panics, allocates
//! beyond a fixed multiple of [`MAX_BODY`], or takes more than linear time.

use celeriac_protocol::codec::{self, ContentType};
use celeriac_protocol::{Map, Message, Value};

use super::glob::Glob;

/// Largest request body taken, in bytes, compressed or not (a `revoke` of
/// 100 000 UUIDs is about 4 MB of JSON).
pub const MAX_BODY: usize = 4 << 20;
/// Largest body taken in a serializer other than JSON, whose decoded size
/// cannot be estimated before decoding.
pub const MAX_BODY_OTHER: usize = 1 << 20;
/// Most values (scalars and containers) a JSON body may hold: keeps the
/// decoded request within a few tens of megabytes whatever its shape.
pub const MAX_VALUES: usize = 250_000;

/// Why a request was dropped without an answer (there is nobody to answer,
/// or Python would not answer either).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    /// The body is larger than the bound.
    #[error("a request of {len} bytes is larger than the {max} bytes taken; send fewer ids per request")]
    TooLarge {
        /// Its size (after decompression when compressed).
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The JSON body holds too many values.
    #[error("a request of more than {max} values was refused; send fewer ids per request")]
    TooManyValues {
        /// The bound.
        max: usize,
    },
    /// The body cannot be decoded.
    #[error("cannot decode a request: {0}")]
    Decode(String),
    /// The body is no dict.
    #[error("a request that is a {type_name}, not a dict, was ignored")]
    NotADict {
        /// The Python type of the body.
        type_name: &'static str,
    },
    /// No `method` (Python's `dispatch()` fails before running anything).
    #[error("a request without a method was ignored")]
    NoMethod,
    /// `destination` of a type Python cannot search (`hostname in 5`).
    #[error("a request with a destination of type {type_name} was ignored; send a list of node names")]
    Destination {
        /// The Python type sent.
        type_name: &'static str,
    },
    /// `pattern` that is no string.
    #[error("a request with a pattern of type {type_name} was ignored; send a string")]
    Pattern {
        /// The Python type sent.
        type_name: &'static str,
    },
    /// A matcher celeriac does not have (kombu raises `MatcherNotInstalled`).
    #[error("the {matcher} matcher is not supported by celeriac (only glob); request ignored")]
    Matcher {
        /// Its name (shortened).
        matcher: String,
    },
}

/// Decodes a request body within the bounds above: the size before
/// decompression and decoding, the number of JSON values, pickle refused.
pub fn decode_body(message: &Message) -> Result<Map, RequestError> {
    if message.body.len() > MAX_BODY {
        return Err(RequestError::TooLarge { len: message.body.len(), max: MAX_BODY });
    }
    let content_type = message.content_type().map_err(|e| RequestError::Decode(e.to_string()))?;
    let compression = message.compression().map_err(|e| RequestError::Decode(e.to_string()))?;
    let inflated;
    let bytes: &[u8] = match compression {
        Some(c) => {
            inflated = c.decompress(&message.body, MAX_BODY).map_err(|e| RequestError::Decode(e.to_string()))?;
            &inflated
        }
        None => &message.body,
    };
    decode_bytes(content_type, bytes)
}

/// Decodes a body of `content_type` already decompressed (see [`decode_body`]).
pub fn decode_bytes(content_type: ContentType, bytes: &[u8]) -> Result<Map, RequestError> {
    match content_type {
        ContentType::Json => {
            if bytes.len() > MAX_BODY {
                return Err(RequestError::TooLarge { len: bytes.len(), max: MAX_BODY });
            }
            if json_values_upper_bound(bytes) > MAX_VALUES {
                return Err(RequestError::TooManyValues { max: MAX_VALUES });
            }
        }
        ContentType::Pickle => return Err(RequestError::Decode("pickle is never decoded".into())),
        _ => {
            if bytes.len() > MAX_BODY_OTHER {
                return Err(RequestError::TooLarge { len: bytes.len(), max: MAX_BODY_OTHER });
            }
        }
    }
    match codec::decode(content_type, bytes) {
        Ok(Value::Map(body)) => Ok(body),
        Ok(other) => Err(RequestError::NotADict { type_name: other.type_name() }),
        Err(e) => Err(RequestError::Decode(e.to_string())),
    }
}

/// An upper bound of the values a JSON text holds: one more than its commas
/// and colons outside strings, plus its brackets. One pass, no allocation.
pub fn json_values_upper_bound(bytes: &[u8]) -> usize {
    let mut n = 1usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b',' | b':' | b'[' | b'{' => n = n.saturating_add(1),
            _ => {}
        }
    }
    n
}

/// Whether a request is for the node `hostname`, as kombu decides it:
/// a truthy `destination` must contain it (a list of names, or Python's `in`
/// on a string or dict); else a truthy `pattern` with a truthy `matcher` must
/// match it (`glob` only; kombu's `pcre` is refused, clearly, rather than
/// run through a backtracking engine); else every node is addressed.
pub fn addressed_to(body: &Map, hostname: &str) -> Result<bool, RequestError> {
    if let Some(destination) = body.get("destination").filter(|d| d.is_truthy()) {
        return match destination {
            Value::List(nodes) => Ok(nodes.iter().any(|n| n.as_str() == Some(hostname))),
            // `hostname in "a@x,b@y"` is a substring test in Python.
            Value::Str(s) => Ok(s.contains(hostname)),
            Value::Map(m) => Ok(m.contains_key(hostname)),
            other => Err(RequestError::Destination { type_name: other.type_name() }),
        };
    }
    let pattern = body.get("pattern").filter(|p| p.is_truthy());
    let matcher = body.get("matcher").filter(|m| m.is_truthy());
    let (Some(pattern), Some(matcher)) = (pattern, matcher) else { return Ok(true) };
    match matcher {
        Value::Str(m) if m == "glob" => {}
        Value::Str(m) => {
            let shown: String = m.chars().filter(|c| !c.is_control()).take(40).collect();
            return Err(RequestError::Matcher { matcher: format!("{shown:?}") });
        }
        other => return Err(RequestError::Matcher { matcher: format!("<{}>", other.type_name()) }),
    }
    match pattern {
        Value::Str(p) => Ok(Glob::new(p).matches(hostname)),
        other => Err(RequestError::Pattern { type_name: other.type_name() }),
    }
}

/// Where a reply goes.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplyTo {
    /// The reply exchange.
    pub exchange: String,
    /// The caller's routing key.
    pub routing_key: String,
}

/// A request's envelope: what to run and where the answer goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The `method` as sent (a string, normally).
    pub method: Value,
    /// The `arguments` as sent, if any.
    pub arguments: Option<Value>,
    /// Where to reply; `None` for a cast (no reply wanted, or no usable address).
    pub reply_to: Option<ReplyTo>,
    /// The reply's `ticket` header (`None` if absent).
    pub ticket: Value,
}

impl Request {
    /// Reads the envelope fields of a decoded body.
    pub fn parse(body: &Map) -> Result<Request, RequestError> {
        let method = body.get("method").cloned().ok_or(RequestError::NoMethod)?;
        let reply_to = match body.get("reply_to") {
            Some(Value::Map(r)) => match (r.get("exchange"), r.get("routing_key")) {
                (Some(Value::Str(exchange)), Some(Value::Str(routing_key))) => {
                    Some(ReplyTo { exchange: exchange.clone(), routing_key: routing_key.clone() })
                }
                _ => None,
            },
            _ => None,
        };
        Ok(Request {
            method,
            arguments: body.get("arguments").cloned(),
            reply_to,
            ticket: body.get("ticket").cloned().unwrap_or(Value::Null),
        })
    }

    /// The method for logs and the `method` metric label: a known command's
    /// canonical name, else `other`.
    pub fn label(&self) -> &'static str {
        self.method.as_str().and_then(super::command::canonical).unwrap_or("other")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> Map {
        match decode_bytes(ContentType::Json, json.as_bytes()) {
            Ok(m) => m,
            Err(e) => panic!("{json}: {e}"),
        }
    }

    #[test]
    fn destinations_as_pythons_in() {
        let me = "rs@host";
        let to = |json: &str| addressed_to(&body(json), me);
        assert_eq!(to(r#"{"destination": ["py@host", "rs@host"]}"#), Ok(true));
        assert_eq!(to(r#"{"destination": ["py@host"]}"#), Ok(false));
        assert_eq!(to(r#"{"destination": [1, null, {"a": 1}, [], "rs@host"]}"#), Ok(true));
        assert_eq!(to(r#"{"destination": []}"#), Ok(true), "empty: everyone");
        assert_eq!(to(r#"{"destination": null}"#), Ok(true));
        assert_eq!(to(r#"{"destination": "py@host,rs@host"}"#), Ok(true), "a string: substring");
        assert_eq!(to(r#"{"destination": {"rs@host": 1}}"#), Ok(true));
        assert_eq!(to(r#"{"destination": 5}"#), Err(RequestError::Destination { type_name: "int" }));
        assert_eq!(to(r#"{"destination": ["py@host"], "pattern": "*", "matcher": "glob"}"#), Ok(false));
        let many: Vec<String> = (0..200_000).map(|i| format!("\"n{i}@h\"")).collect();
        let json = format!(r#"{{"destination": [{}]}}"#, many.join(","));
        assert_eq!(addressed_to(&body(&json), me), Ok(false));
    }

    #[test]
    fn patterns_need_a_matcher_as_in_kombu() {
        let me = "rs@host";
        let to = |json: &str| addressed_to(&body(json), me);
        assert_eq!(to(r#"{"pattern": "rs@*", "matcher": "glob"}"#), Ok(true));
        assert_eq!(to(r#"{"pattern": "py@*", "matcher": "glob"}"#), Ok(false));
        assert_eq!(to(r#"{"pattern": "py@*"}"#), Ok(true), "no matcher: everyone, as kombu");
        assert_eq!(to(r#"{"pattern": "py@*", "matcher": null}"#), Ok(true));
        assert!(matches!(to(r#"{"pattern": "py@.*", "matcher": "pcre"}"#), Err(RequestError::Matcher { .. })));
        assert!(matches!(to(r#"{"pattern": "x", "matcher": 5}"#), Err(RequestError::Matcher { .. })));
        assert_eq!(to(r#"{"pattern": [1], "matcher": "glob"}"#), Err(RequestError::Pattern { type_name: "list" }));
        let trap = format!(r#"{{"pattern": "{}b", "matcher": "glob"}}"#, "*a".repeat(100_000));
        assert_eq!(addressed_to(&body(&trap), &"a".repeat(100)), Ok(false));
    }

    #[test]
    fn bodies_are_bounded_before_decoding() {
        let big = format!(r#"{{"method": "ping", "pad": "{}"}}"#, "x".repeat(MAX_BODY));
        let message = |body: Vec<u8>, content_type: &str| Message {
            headers: Map::new(),
            properties: Map::new(),
            priority: 0,
            content_type: content_type.into(),
            content_encoding: "utf-8".into(),
            body,
        };
        assert!(matches!(
            decode_body(&message(big.into_bytes(), "application/json")),
            Err(RequestError::TooLarge { .. })
        ));
        let flat = format!("[{}0]", "0,".repeat(MAX_VALUES));
        assert_eq!(
            decode_body(&message(flat.into_bytes(), "application/json")),
            Err(RequestError::TooManyValues { max: MAX_VALUES })
        );
        assert!(matches!(
            decode_body(&message(b"\x80\x03}q\x00.".to_vec(), "application/x-python-serialize")),
            Err(RequestError::Decode(_))
        ));
        assert!(matches!(decode_body(&message(b"{".to_vec(), "application/json")), Err(RequestError::Decode(_))));
        assert!(matches!(
            decode_body(&message(b"[1]".to_vec(), "application/json")),
            Err(RequestError::NotADict { .. })
        ));
        let deep = format!("{{\"a\": {}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(decode_body(&message(deep.into_bytes(), "application/json")), Err(RequestError::Decode(_))));
        assert!(decode_body(&message(br#"{"method": "ping"}"#.to_vec(), "application/json")).is_ok());
        // A body that inflates beyond the bound is refused while inflating.
        let zeros = vec![b' '; MAX_BODY + 10];
        let packed = celeriac_protocol::Compression::Zlib.compress(&zeros).unwrap();
        let mut m = message(packed, "application/json");
        m.headers.insert("compression".into(), Value::Str("application/x-gzip".into()));
        assert!(decode_body(&m).is_err());
    }

    #[test]
    fn value_counting_skips_strings() {
        assert_eq!(json_values_upper_bound(br#"{"a": "x,y:[{", "b": [1, 2]}"#), 7);
        assert_eq!(json_values_upper_bound(br#""a\"b,""#), 1);
    }

    #[test]
    fn envelopes() {
        let r = Request::parse(&body(
            r#"{"method": "ping", "arguments": {}, "ticket": "t", "reply_to": {"exchange": "reply.celery.pidbox", "routing_key": "k"}}"#,
        ))
        .unwrap();
        assert_eq!(r.reply_to, Some(ReplyTo { exchange: "reply.celery.pidbox".into(), routing_key: "k".into() }));
        assert_eq!((r.label(), &r.ticket), ("ping", &Value::Str("t".into())));
        let cast = Request::parse(&body(r#"{"method": "dump_conf", "reply_to": {"exchange": 1}}"#)).unwrap();
        assert_eq!((&cast.reply_to, cast.label()), (&None, "conf"));
        assert_eq!(Request::parse(&body(r#"{"arguments": {}}"#)), Err(RequestError::NoMethod));
        assert_eq!(Request::parse(&body(r#"{"method": [1]}"#)).map(|r| r.label()), Ok("other"));
    }
}

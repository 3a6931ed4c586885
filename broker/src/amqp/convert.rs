//! Messages to and from AMQP: celeriac's [`Message`] as py-amqp puts it on the
//! wire (properties, an application-headers field table, the raw body), and
//! back.
//!
//! Header values are typed as py-amqp writes them (`celery-protocol.md`
//! §1.9): `str` → long string, `bool` → `t`, `float` → `d`, `int` → signed
//! 32-bit, or signed 64-bit past its range, `None` → void, lists → arrays,
//! dicts → tables, datetimes → timestamps. Reading accepts every AMQP type
//! (RabbitMQ adds `x-death` arrays of tables with timestamps when it
//! dead-letters). Nesting deeper than [`MAX_DEPTH`] is refused, never followed.

use celeriac_protocol::time::PyDateTime;
use celeriac_protocol::{Map, Message, Value};
use lapin::types::{AMQPValue, DecimalValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

/// Deepest nesting of header tables and arrays read or written.
pub(crate) const MAX_DEPTH: usize = 64;

/// The AMQP properties kombu maps from a message's properties; any other
/// property key is not sent (py-amqp drops unknown keys too).
const AMQP_PROPERTIES: [&str; 8] =
    ["correlation_id", "reply_to", "expiration", "message_id", "type", "user_id", "app_id", "cluster_id"];

/// Why a value could not be converted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TooDeep;

/// A header value as py-amqp would type it.
pub(crate) fn to_amqp(value: &Value, depth: usize) -> Result<AMQPValue, TooDeep> {
    if depth > MAX_DEPTH {
        return Err(TooDeep);
    }
    Ok(match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Int(i) => match i32::try_from(*i) {
            Ok(small) => AMQPValue::LongInt(small),
            Err(_) => AMQPValue::LongLongInt(*i),
        },
        // py-amqp cannot send these either; the digits keep the value.
        Value::BigInt(b) => AMQPValue::LongString(LongString::from(b.as_str())),
        Value::Float(f) => AMQPValue::Double(*f),
        Value::Str(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        Value::Bytes(b) => AMQPValue::ByteArray(b.clone().into()),
        Value::List(items) => {
            let mut array = FieldArray::default();
            for item in items {
                array.push(to_amqp(item, depth + 1)?);
            }
            AMQPValue::FieldArray(array)
        }
        Value::Map(map) => AMQPValue::FieldTable(to_table(map, depth + 1)?),
        Value::DateTime(dt) => match dt.to_timestamp().ok().and_then(|t| u64::try_from(t.as_second()).ok()) {
            Some(secs) => AMQPValue::Timestamp(secs),
            None => AMQPValue::LongString(LongString::from(dt.to_iso())),
        },
        Value::Date(d) => AMQPValue::LongString(LongString::from(d.to_iso())),
        Value::Time(t) => AMQPValue::LongString(LongString::from(t.to_iso())),
        Value::Uuid(u) => AMQPValue::LongString(LongString::from(u.to_string())),
        Value::Decimal(d) => AMQPValue::LongString(LongString::from(d.as_str())),
    })
}

/// A map as a field table (keys longer than 255 bytes cannot be sent and are refused).
pub(crate) fn to_table(map: &Map, depth: usize) -> Result<FieldTable, TooDeep> {
    let mut table = FieldTable::default();
    for (key, value) in map {
        table.insert(ShortString::from(key.clone()), to_amqp(value, depth)?);
    }
    Ok(table)
}

/// A header value read from the wire.
pub(crate) fn from_amqp(value: &AMQPValue, depth: usize) -> Result<Value, TooDeep> {
    if depth > MAX_DEPTH {
        return Err(TooDeep);
    }
    Ok(match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(i) => Value::Int(i64::from(*i)),
        AMQPValue::ShortShortUInt(i) => Value::Int(i64::from(*i)),
        AMQPValue::ShortInt(i) => Value::Int(i64::from(*i)),
        AMQPValue::ShortUInt(i) => Value::Int(i64::from(*i)),
        AMQPValue::LongInt(i) => Value::Int(i64::from(*i)),
        AMQPValue::LongUInt(i) => Value::Int(i64::from(*i)),
        AMQPValue::LongLongInt(i) => Value::Int(*i),
        AMQPValue::Float(f) => Value::Float(f64::from(*f)),
        AMQPValue::Double(f) => Value::Float(*f),
        AMQPValue::DecimalValue(d) => decimal(d),
        AMQPValue::ShortString(s) => Value::Str(s.as_str().to_owned()),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => Value::Str(text.to_owned()),
            Err(_) => Value::Bytes(s.as_bytes().to_vec()),
        },
        AMQPValue::FieldArray(items) => {
            let mut out = Vec::with_capacity(items.as_slice().len());
            for item in items.as_slice() {
                out.push(from_amqp(item, depth + 1)?);
            }
            Value::List(out)
        }
        AMQPValue::Timestamp(secs) => {
            let ts = i64::try_from(*secs).ok().and_then(|s| jiff::Timestamp::from_second(s).ok());
            match ts {
                Some(ts) => Value::DateTime(PyDateTime::from_timestamp(ts, jiff::tz::Offset::UTC)),
                None => Value::Int(i64::try_from(*secs).unwrap_or(i64::MAX)),
            }
        }
        AMQPValue::FieldTable(table) => Value::Map(from_table(table, depth + 1)?),
        AMQPValue::ByteArray(bytes) => Value::Bytes(bytes.as_slice().to_vec()),
        AMQPValue::Void => Value::Null,
    })
}

/// A field table as a map.
pub(crate) fn from_table(table: &FieldTable, depth: usize) -> Result<Map, TooDeep> {
    let mut map = Map::with_capacity(table.inner().len());
    for (key, value) in table {
        map.insert(key.as_str().to_owned(), from_amqp(value, depth)?);
    }
    Ok(map)
}

/// An AMQP decimal (scale, unsigned value) as Python's `Decimal` text.
fn decimal(d: &DecimalValue) -> Value {
    let digits = d.value.to_string();
    let scale = usize::from(d.scale);
    let text = if scale == 0 {
        digits
    } else if digits.len() > scale {
        format!("{}.{}", &digits[..digits.len() - scale], &digits[digits.len() - scale..])
    } else {
        format!("0.{}{}", "0".repeat(scale - digits.len()), digits)
    };
    celeriac_protocol::value::Decimal::parse(&text).map(Value::Decimal).unwrap_or(Value::Str(text))
}

/// What to publish: the AMQP properties and the body of `message`. The
/// delivery mode is the message's own (kombu sends 2 for tasks and control
/// requests, 1 for events and replies), 2 when it has none.
pub(crate) fn to_properties(message: &Message) -> Result<BasicProperties, TooDeep> {
    let mut props = BasicProperties::default()
        .with_content_type(ShortString::from(message.content_type.clone()))
        .with_content_encoding(ShortString::from(message.content_encoding.clone()))
        .with_priority(message.priority)
        .with_headers(to_table(&message.headers, 1)?);
    let mode = message.properties.get("delivery_mode").and_then(Value::as_i64).and_then(|m| u8::try_from(m).ok());
    props = props.with_delivery_mode(mode.filter(|m| *m == 1 || *m == 2).unwrap_or(2));
    for key in AMQP_PROPERTIES {
        let Some(value) = message.properties.get(key) else { continue };
        let text = match value {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            _ => continue,
        };
        let text = ShortString::from(text);
        props = match key {
            "correlation_id" => props.with_correlation_id(text),
            "reply_to" => props.with_reply_to(text),
            "expiration" => props.with_expiration(text),
            "message_id" => props.with_message_id(text),
            "type" => props.with_type(text),
            "user_id" => props.with_user_id(text),
            "app_id" => props.with_app_id(text),
            _ => props.with_cluster_id(text),
        };
    }
    if let Some(ts) = message.properties.get("timestamp").and_then(Value::as_i64).and_then(|t| u64::try_from(t).ok()) {
        props = props.with_timestamp(ts);
    }
    Ok(props)
}

/// A received message: headers, properties (as kombu's `Message.properties`
/// lists them), priority, content type and encoding, and the body as it came.
pub(crate) fn from_delivery(properties: &BasicProperties, body: Vec<u8>) -> Result<Message, TooDeep> {
    let headers = match properties.headers() {
        Some(table) => from_table(table, 1)?,
        None => Map::new(),
    };
    let mut props = Map::with_capacity(4);
    let text = |v: &Option<ShortString>| v.as_ref().map(|s| Value::Str(s.as_str().to_owned()));
    let pairs = [
        ("correlation_id", text(properties.correlation_id())),
        ("reply_to", text(properties.reply_to())),
        ("expiration", text(properties.expiration())),
        ("message_id", text(properties.message_id())),
        ("type", text(properties.kind())),
        ("user_id", text(properties.user_id())),
        ("app_id", text(properties.app_id())),
        ("cluster_id", text(properties.cluster_id())),
    ];
    for (key, value) in pairs {
        if let Some(value) = value {
            props.insert(key.into(), value);
        }
    }
    if let Some(mode) = properties.delivery_mode() {
        props.insert("delivery_mode".into(), Value::Int(i64::from(*mode)));
    }
    if let Some(ts) = properties.timestamp() {
        props.insert("timestamp".into(), Value::Int(i64::try_from(*ts).unwrap_or(i64::MAX)));
    }
    Ok(Message {
        headers,
        properties: props,
        priority: properties.priority().unwrap_or(0),
        content_type: properties.content_type().as_ref().map(|s| s.as_str().to_owned()).unwrap_or_default(),
        content_encoding: properties.content_encoding().as_ref().map(|s| s.as_str().to_owned()).unwrap_or_default(),
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ints_are_typed_as_py_amqp_types_them() {
        assert_eq!(to_amqp(&Value::Int(5), 0).unwrap(), AMQPValue::LongInt(5));
        assert_eq!(to_amqp(&Value::Int(2_147_483_648), 0).unwrap(), AMQPValue::LongLongInt(2_147_483_648));
        assert_eq!(to_amqp(&Value::Null, 0).unwrap(), AMQPValue::Void);
        let limits = Value::List(vec![Value::Null, Value::Null]);
        assert_eq!(to_amqp(&limits, 0).unwrap(), AMQPValue::FieldArray(vec![AMQPValue::Void, AMQPValue::Void].into()));
    }

    #[test]
    fn a_message_survives_the_round_trip() {
        let mut headers = Map::new();
        headers.insert("task".into(), "tasks.add".into());
        headers.insert("retries".into(), Value::Int(0));
        headers.insert("timelimit".into(), Value::List(vec![Value::Null, Value::Float(1.5)]));
        headers.insert("stamps".into(), Value::Map(Map::new()));
        let mut properties = Map::new();
        properties.insert("correlation_id".into(), "id-1".into());
        properties.insert("reply_to".into(), "oid".into());
        properties.insert("delivery_mode".into(), Value::Int(2));
        properties.insert("expiration".into(), "60000".into());
        let message = Message {
            headers,
            properties,
            priority: 3,
            content_type: "application/json".into(),
            content_encoding: "utf-8".into(),
            body: b"[[2, 2], {}, {}]".to_vec(),
        };
        let props = to_properties(&message).unwrap();
        assert_eq!(*props.delivery_mode(), Some(2));
        assert_eq!(props.expiration().as_ref().map(|s| s.as_str()), Some("60000"));
        let back = from_delivery(&props, message.body.clone()).unwrap();
        assert_eq!(back.headers, message.headers);
        assert_eq!(back.priority, 3);
        assert_eq!(back.properties.get("correlation_id"), Some(&Value::Str("id-1".into())));
        assert_eq!(back.properties.get("delivery_mode"), Some(&Value::Int(2)));
        assert_eq!(back.body, message.body);
    }

    #[test]
    fn deep_nesting_is_refused_both_ways() {
        let mut v = Value::Null;
        for _ in 0..(MAX_DEPTH + 5) {
            v = Value::List(vec![v]);
        }
        assert_eq!(to_amqp(&v, 0), Err(TooDeep));
        let mut a = AMQPValue::Void;
        for _ in 0..(MAX_DEPTH + 5) {
            a = AMQPValue::FieldArray(vec![a].into());
        }
        assert_eq!(from_amqp(&a, 0), Err(TooDeep));
    }

    #[test]
    fn rabbitmq_death_headers_are_read() {
        let mut death = FieldTable::default();
        death.insert("count".into(), AMQPValue::LongLongInt(1));
        death.insert("reason".into(), AMQPValue::LongString("expired".into()));
        death.insert("time".into(), AMQPValue::Timestamp(1_700_000_000));
        death.insert("routing-keys".into(), AMQPValue::FieldArray(vec![AMQPValue::LongString("q".into())].into()));
        let mut table = FieldTable::default();
        table.insert("x-death".into(), AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into()));
        table.insert("x-delivery-count".into(), AMQPValue::LongInt(0));
        let map = from_table(&table, 1).unwrap();
        let Some(Value::List(deaths)) = map.get("x-death") else { panic!("{map:?}") };
        let Value::Map(first) = &deaths[0] else { panic!() };
        assert!(matches!(first.get("time"), Some(Value::DateTime(_))));
        assert_eq!(
            decimal(&DecimalValue { scale: 2, value: 110 }),
            Value::Decimal(celeriac_protocol::value::Decimal::parse("1.10").unwrap())
        );
    }
}

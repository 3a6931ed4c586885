//! msgpack bodies as kombu writes them (`packb(use_bin_type=True)`) and reads
//! them (`unpackb(raw=False)`): strings are UTF-8 `str`, `bin` is `bytes`.
//!
//! Python's msgpack cannot carry datetimes, UUIDs or Decimals without extension
//! hooks that kombu does not install, so encoding one is an error here too.

use rmpv::Value as Mp;

use crate::codec::CodecError;
#[cfg(test)]
use crate::value::BigInt;
use crate::value::{Map, Value};

/// Nesting bound, as for JSON.
const MAX_DEPTH: usize = crate::json::MAX_DEPTH;

/// Reads a msgpack body.
pub fn from_slice(mut bytes: &[u8]) -> Result<Value, CodecError> {
    let total = bytes.len();
    let mp = rmpv::decode::read_value_with_max_depth(&mut bytes, MAX_DEPTH)
        .map_err(|e| CodecError::Msgpack(e.to_string()))?;
    if !bytes.is_empty() {
        return Err(CodecError::Msgpack(format!(
            "extra data after the msgpack value ({} of {total} bytes unread)",
            bytes.len()
        )));
    }
    convert_in(mp)
}

/// Writes a value as msgpack.
pub fn to_vec(value: &Value) -> Result<Vec<u8>, CodecError> {
    let mp = convert_out(value)?;
    let mut out = Vec::with_capacity(64);
    rmpv::encode::write_value(&mut out, &mp).map_err(|e| CodecError::Msgpack(e.to_string()))?;
    Ok(out)
}

fn convert_in(mp: Mp) -> Result<Value, CodecError> {
    Ok(match mp {
        Mp::Nil => Value::Null,
        Mp::Boolean(b) => Value::Bool(b),
        Mp::Integer(i) => match (i.as_i64(), i.as_u64()) {
            (Some(v), _) => Value::Int(v),
            (None, Some(v)) => Value::from(v),
            (None, None) => return Err(CodecError::Msgpack("integer out of range".into())),
        },
        Mp::F32(f) => Value::Float(f.into()),
        Mp::F64(f) => Value::Float(f),
        Mp::String(s) => match s.into_str() {
            Some(s) => Value::Str(s),
            None => return Err(CodecError::Msgpack("str is not valid UTF-8 (Python reads it with raw=False)".into())),
        },
        Mp::Binary(b) => Value::Bytes(b),
        Mp::Array(items) => Value::List(items.into_iter().map(convert_in).collect::<Result<_, _>>()?),
        Mp::Map(pairs) => {
            let mut map = Map::with_capacity(pairs.len());
            for (k, v) in pairs {
                let key = match k {
                    Mp::String(s) => {
                        s.into_str().ok_or_else(|| CodecError::Msgpack("map key is not valid UTF-8".into()))?
                    }
                    other => {
                        return Err(CodecError::Msgpack(format!(
                            "map key {other} is not a string; celeriac carries dicts with str keys only"
                        )))
                    }
                };
                map.insert(key, convert_in(v)?);
            }
            Value::Map(map)
        }
        Mp::Ext(kind, _) => return Err(CodecError::Msgpack(format!("extension type {kind} is not used by kombu"))),
    })
}

fn convert_out(value: &Value) -> Result<Mp, CodecError> {
    let refuse = |what: &str| {
        Err(CodecError::Msgpack(format!(
            "a {what} cannot be sent as msgpack (Python's msgpack refuses it too); use the json serializer"
        )))
    };
    Ok(match value {
        Value::Null => Mp::Nil,
        Value::Bool(b) => Mp::Boolean(*b),
        Value::Int(i) => Mp::from(*i),
        Value::BigInt(b) => match b.to_i128().and_then(|v| u64::try_from(v).ok()) {
            Some(v) => Mp::from(v),
            None => return refuse("integer outside the 64-bit range"),
        },
        Value::Float(f) => Mp::F64(*f),
        Value::Str(s) => Mp::String(s.as_str().into()),
        Value::Bytes(b) => Mp::Binary(b.clone()),
        Value::List(items) => Mp::Array(items.iter().map(convert_out).collect::<Result<_, _>>()?),
        Value::Map(map) => Mp::Map(
            map.iter()
                .map(|(k, v)| Ok((Mp::String(k.as_str().into()), convert_out(v)?)))
                .collect::<Result<_, CodecError>>()?,
        ),
        Value::DateTime(_) => return refuse("datetime"),
        Value::Date(_) => return refuse("date"),
        Value::Time(_) => return refuse("time"),
        Value::Uuid(_) => return refuse("UUID"),
        Value::Decimal(_) => return refuse("Decimal"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn reads_the_captured_kombu_body() {
        // From the protocol reference: [[1, "x"], {"k": [1]}, {callbacks..chord: None}].
        let raw = base64::engine::general_purpose::STANDARD
            .decode("k5IBoXiBoWuRAYSpY2FsbGJhY2tzwKhlcnJiYWNrc8ClY2hhaW7ApWNob3JkwA==")
            .unwrap();
        let v = from_slice(&raw).unwrap();
        assert_eq!(
            crate::json::to_string(&v).unwrap(),
            r#"[[1, "x"], {"k": [1]}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#
        );
        assert_eq!(to_vec(&v).unwrap(), raw);
    }

    #[test]
    fn big_unsigned_and_bytes_round_trip() {
        let v = Value::List(vec![Value::from(u64::MAX), Value::Bytes(vec![0, 255]), Value::Float(-0.0)]);
        assert_eq!(from_slice(&to_vec(&v).unwrap()).unwrap(), v);
        let too_big = Value::BigInt(BigInt::parse("1180591620717411303424").unwrap());
        assert!(to_vec(&too_big).is_err());
    }

    #[test]
    fn truncated_and_trailing_input_is_an_error() {
        assert!(from_slice(&[0x93, 0x01]).is_err());
        assert!(from_slice(&[0x01, 0x02]).is_err());
        assert!(from_slice(&[0x81, 0x01, 0x02]).is_err());
    }
}

//! msgpack bodies as kombu writes them (`packb(use_bin_type=True)`) and reads
//! them (`unpackb(raw=False)`): strings are UTF-8 `str`, `bin` is `bytes`.
//!
//! Python's msgpack cannot carry datetimes, UUIDs or Decimals without extension
//! hooks that kombu does not install, so encoding one is an error here too.
//! Reading is a bounded reader of its own (writing uses `rmpv`): lengths are
//! checked before anything is reserved for them, nesting and values are counted.

use rmpv::Value as Mp;

use crate::codec::CodecError;
use crate::limits::{Budget, DecodeLimits};
#[cfg(test)]
use crate::value::BigInt;
use crate::value::{Map, Value};

/// Reads a msgpack body with the bounds of [`crate::codec::decode`]: for bodies
/// a process trusts.
pub fn from_slice(bytes: &[u8]) -> Result<Value, CodecError> {
    let limits = DecodeLimits { max_elements: crate::codec::TRUSTED_MAX_ELEMENTS, ..DecodeLimits::any_content() };
    from_slice_with(bytes, &limits)
}

/// Reads a msgpack body within `limits`' nesting and value bounds, as Python's
/// `msgpack.unpackb(raw=False)` reads it. A collection's length is checked
/// against the bound and the bytes left before anything is allocated for it,
/// so a header claiming 2^32 elements costs nothing.
pub fn from_slice_with(bytes: &[u8], limits: &DecodeLimits) -> Result<Value, CodecError> {
    let mut reader = Reader { bytes, pos: 0, budget: Budget::new(limits) };
    let value = reader.value(0)?;
    if reader.pos != bytes.len() {
        return Err(CodecError::Msgpack(format!(
            "extra data after the msgpack value ({} of {} bytes unread)",
            bytes.len() - reader.pos,
            bytes.len()
        )));
    }
    Ok(value)
}

/// A bounded recursive-descent msgpack reader over a byte slice.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    budget: Budget,
}

fn malformed(reason: impl Into<String>) -> CodecError {
    CodecError::Msgpack(reason.into())
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.bytes.len()).ok_or_else(|| {
            malformed(format!(
                "truncated input: {n} bytes needed at byte {}, {} left",
                self.pos,
                self.bytes.len() - self.pos
            ))
        })?;
        let slice = self.bytes.get(self.pos..end).unwrap_or_default();
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.array::<1>()?[0])
    }

    /// A big-endian length of 1, 2 or 4 bytes.
    fn len(&mut self, width: usize) -> Result<usize, CodecError> {
        let n = match width {
            1 => u32::from(self.u8()?),
            2 => u32::from(u16::from_be_bytes(self.array()?)),
            _ => u32::from_be_bytes(self.array()?),
        };
        usize::try_from(n).map_err(|_| malformed("length does not fit in memory"))
    }

    /// Reads one value inside `depth` enclosing arrays and maps. Kept small:
    /// it is the frame that repeats per level of nesting.
    fn value(&mut self, depth: usize) -> Result<Value, CodecError> {
        if !self.budget.take(1) {
            return Err(CodecError::TooManyElements { limit: self.budget.max_elements() });
        }
        let marker = self.u8()?;
        match marker {
            0x80..=0x8f => self.map(usize::from(marker & 0x0f), depth),
            0x90..=0x9f => self.list(usize::from(marker & 0x0f), depth),
            0xdc => {
                let n = self.len(2)?;
                self.list(n, depth)
            }
            0xdd => {
                let n = self.len(4)?;
                self.list(n, depth)
            }
            0xde => {
                let n = self.len(2)?;
                self.map(n, depth)
            }
            0xdf => {
                let n = self.len(4)?;
                self.map(n, depth)
            }
            _ => self.scalar(marker),
        }
    }

    /// Reads the rest of a value that is not an array or a map.
    #[inline(never)]
    fn scalar(&mut self, marker: u8) -> Result<Value, CodecError> {
        Ok(match marker {
            0x00..=0x7f => Value::Int(i64::from(marker)),
            0xa0..=0xbf => Value::Str(self.str(usize::from(marker & 0x1f))?),
            0xc0 => Value::Null,
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0xc4..=0xc6 => {
                let n = self.len(1 << (marker - 0xc4))?;
                Value::Bytes(self.take(n)?.to_vec())
            }
            0xc7..=0xc9 => {
                let n = self.len(1 << (marker - 0xc7))?;
                return Err(self.ext(n));
            }
            0xca => Value::Float(f64::from(f32::from_be_bytes(self.array()?))),
            0xcb => Value::Float(f64::from_be_bytes(self.array()?)),
            0xcc => Value::Int(i64::from(self.u8()?)),
            0xcd => Value::Int(i64::from(u16::from_be_bytes(self.array()?))),
            0xce => Value::Int(i64::from(u32::from_be_bytes(self.array()?))),
            0xcf => Value::from(u64::from_be_bytes(self.array()?)),
            0xd0 => Value::Int(i64::from(i8::from_be_bytes(self.array()?))),
            0xd1 => Value::Int(i64::from(i16::from_be_bytes(self.array()?))),
            0xd2 => Value::Int(i64::from(i32::from_be_bytes(self.array()?))),
            0xd3 => Value::Int(i64::from_be_bytes(self.array()?)),
            0xd4..=0xd8 => return Err(self.ext(1 << (marker - 0xd4))),
            0xd9..=0xdb => {
                let n = self.len(1 << (marker - 0xd9))?;
                Value::Str(self.str(n)?)
            }
            0xe0..=0xff => Value::Int(i64::from(i8::from_be_bytes([marker]))),
            // 0xc1, and the collection markers `value` handles.
            _ => return Err(malformed(format!("marker 0x{marker:02x} is not a msgpack value here"))),
        })
    }

    fn str(&mut self, n: usize) -> Result<String, CodecError> {
        let bytes = self.take(n)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| malformed("str is not valid UTF-8 (Python reads it with raw=False)"))
    }

    /// An extension value of `n` data bytes: kombu installs no extension types.
    fn ext(&mut self, n: usize) -> CodecError {
        match self.u8() {
            Ok(kind) => match self.take(n) {
                Ok(_) => malformed(format!("extension type {} is not used by kombu", i8::from_be_bytes([kind]))),
                Err(e) => e,
            },
            Err(e) => e,
        }
    }

    /// Checks a collection of `n` entries of `per_entry` values each (at
    /// least a byte apiece) before reading it, and returns the capacity that is
    /// then safe to reserve.
    fn open(&self, n: usize, per_entry: usize, depth: usize) -> Result<usize, CodecError> {
        if !self.budget.depth_ok(depth + 1) {
            return Err(CodecError::TooDeep { limit: self.budget.max_depth() });
        }
        let values = n.saturating_mul(per_entry);
        if !self.budget.has_room(values) {
            return Err(CodecError::TooManyElements { limit: self.budget.max_elements() });
        }
        let left = self.bytes.len() - self.pos;
        if values > left {
            return Err(malformed(format!("truncated input: a collection of {n} entries in {left} bytes")));
        }
        Ok(n)
    }

    fn list(&mut self, n: usize, depth: usize) -> Result<Value, CodecError> {
        let mut items = Vec::with_capacity(self.open(n, 1, depth)?.min(1024));
        for _ in 0..n {
            items.push(self.value(depth + 1)?);
        }
        Ok(Value::List(items))
    }

    fn map(&mut self, n: usize, depth: usize) -> Result<Value, CodecError> {
        let mut map = Map::with_capacity(self.open(n, 2, depth)?.min(1024));
        for _ in 0..n {
            let key = match self.value(depth + 1)? {
                Value::Str(s) => s,
                other => {
                    return Err(malformed(format!(
                        "map key of type {} is not a string; celeriac carries dicts with str keys only",
                        other.type_name()
                    )))
                }
            };
            let value = self.value(depth + 1)?;
            map.insert(key, value);
        }
        Ok(Value::Map(map))
    }
}

/// Writes a value as msgpack.
pub fn to_vec(value: &Value) -> Result<Vec<u8>, CodecError> {
    let mp = convert_out(value)?;
    let mut out = Vec::with_capacity(64);
    rmpv::encode::write_value(&mut out, &mp).map_err(|e| CodecError::Msgpack(e.to_string()))?;
    Ok(out)
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
    fn headers_claiming_huge_lengths_allocate_nothing() {
        use crate::limits::DecodeLimits;
        let limits = DecodeLimits::default();
        let too_many = |limit| Err(CodecError::TooManyElements { limit });
        // array32 / map32 claiming 2^32-1 entries in a 5-byte message: the bound first.
        assert_eq!(from_slice_with(&[0xdd, 0xff, 0xff, 0xff, 0xff], &limits), too_many(1_000_000));
        assert_eq!(from_slice_with(&[0xdf, 0xff, 0xff, 0xff, 0xff], &limits), too_many(1_000_000));
        // Within the bound but longer than the bytes left: truncated, nothing reserved.
        let unbounded = DecodeLimits { max_elements: usize::MAX, ..DecodeLimits::default() };
        for header in [[0xdd, 0xff, 0xff, 0xff, 0xff], [0xdf, 0xff, 0xff, 0xff, 0xff]] {
            let err = from_slice_with(&header, &unbounded).unwrap_err();
            assert!(err.to_string().contains("truncated"), "{err}");
        }
        // str32 / bin32 / ext32 claiming 4 GiB.
        for marker in [0xdb, 0xc6, 0xc9] {
            let err = from_slice_with(&[marker, 0xff, 0xff, 0xff, 0xff, b'x'], &limits).unwrap_err();
            assert!(err.to_string().contains("truncated"), "{err}");
        }
        // A map of 600 000 entries is 1.2 million values.
        let mut wide = vec![0xde, 0xff, 0xff];
        wide.extend(std::iter::repeat_n([0xa0, 0xc0], 0xffff).flatten());
        assert!(from_slice_with(&wide, &limits).is_ok());
        let small = DecodeLimits { max_elements: 100_000, ..DecodeLimits::default() };
        assert_eq!(from_slice_with(&wide, &small), too_many(100_000));
    }

    #[test]
    fn nesting_is_bounded_without_recursing_past_it() {
        use crate::limits::DecodeLimits;
        let limits = DecodeLimits::default();
        // 100 000 nested one-element arrays, then nested maps.
        let mut deep = vec![0x91u8; 100_000];
        deep.push(0xc0);
        assert_eq!(from_slice_with(&deep, &limits), Err(CodecError::TooDeep { limit: 512 }));
        let deep_maps: Vec<u8> = std::iter::repeat_n([0x81, 0xa1, b'k'], 100_000).flatten().chain([0xc0]).collect();
        assert_eq!(from_slice_with(&deep_maps, &limits), Err(CodecError::TooDeep { limit: 512 }));
        let mut at = vec![0x91u8; 512];
        at.push(0xc0);
        assert!(from_slice_with(&at, &limits).is_ok());
        at.insert(0, 0x91);
        assert_eq!(from_slice_with(&at, &limits), Err(CodecError::TooDeep { limit: 512 }));
    }

    #[test]
    fn reads_every_marker_as_python_msgpack_does() {
        // Bytes from Python: msgpack.packb([...], use_bin_type=True).
        let cases: [(&[u8], Value); 16] = [
            (&[0x7f], Value::Int(127)),
            (&[0xe0], Value::Int(-32)),
            (&[0xcc, 0xff], Value::Int(255)),
            (&[0xcd, 0xff, 0xff], Value::Int(65535)),
            (&[0xce, 0xff, 0xff, 0xff, 0xff], Value::Int(4294967295)),
            (&[0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], Value::from(u64::MAX)),
            (&[0xd0, 0x80], Value::Int(-128)),
            (&[0xd1, 0x80, 0x00], Value::Int(-32768)),
            (&[0xd2, 0x80, 0, 0, 0], Value::Int(-2147483648)),
            (&[0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0], Value::Int(i64::MIN)),
            (&[0xca, 0x7f, 0xc0, 0, 0], Value::Float(f64::NAN)),
            (&[0xcb, 0x7f, 0xf0, 0, 0, 0, 0, 0, 0], Value::Float(f64::INFINITY)),
            (&[0xd9, 1, b'a'], Value::Str("a".into())),
            (&[0xc4, 1, 0xff], Value::Bytes(vec![0xff])),
            (&[0xc2], Value::Bool(false)),
            (&[0xdc, 0, 1, 0xc3], Value::List(vec![Value::Bool(true)])),
        ];
        for (bytes, want) in cases {
            assert_eq!(from_slice(bytes).unwrap(), want, "{bytes:x?}");
        }
        for bad in [&[0xc1][..], &[0xd4, 1, 0], &[0xc7, 1, 5, 0], &[0xa1, 0xff], &[0x81, 0x01, 0xc0]] {
            assert!(from_slice(bad).is_err(), "{bad:x?}");
        }
    }

    #[test]
    fn truncated_and_trailing_input_is_an_error() {
        assert!(from_slice(&[0x93, 0x01]).is_err());
        assert!(from_slice(&[0x01, 0x02]).is_err());
        assert!(from_slice(&[0x81, 0x01, 0x02]).is_err());
    }
}

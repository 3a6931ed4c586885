//! The dynamic value that task arguments, results and headers are made of.
//!
//! It is the data model of kombu's serializers, not of any one format: besides
//! JSON's types it carries Python's unbounded integers, bytes and the values that
//! kombu's JSON encoder wraps in `{"__type__": ..., "__value__": ...}` markers
//! (datetime, date, time, UUID, Decimal). Maps keep their insertion order, as
//! Python dicts do, so a decoded message re-encodes to the same bytes.

use std::fmt;

use indexmap::IndexMap;

use crate::time::{PyDate, PyDateTime, PyTime};

/// An ordered map with string keys: a Python dict as it crosses the wire.
pub type Map = IndexMap<String, Value>;

/// A value as Python's kombu serializers carry it.
#[derive(Clone, Debug)]
pub enum Value {
    /// Python `None`.
    Null,
    /// Python `bool`.
    Bool(bool),
    /// A Python `int` that fits in 64 bits.
    Int(i64),
    /// A Python `int` outside the 64-bit range (Python's ints are unbounded).
    BigInt(BigInt),
    /// A Python `float`, including NaN and the infinities Python's JSON allows.
    Float(f64),
    /// A Python `str`.
    Str(String),
    /// Python `bytes` (msgpack `bin`, kombu JSON `bytes`/`base64` markers, YAML `!!binary`).
    Bytes(Vec<u8>),
    /// A Python `list` or `tuple`.
    List(Vec<Value>),
    /// A Python `dict` with string keys, in insertion order.
    Map(Map),
    /// A Python `datetime.datetime`, aware or naive.
    DateTime(PyDateTime),
    /// A Python `datetime.date`.
    Date(PyDate),
    /// A Python `datetime.time`.
    Time(PyTime),
    /// A Python `uuid.UUID`.
    Uuid(uuid::Uuid),
    /// A Python `decimal.Decimal`, kept as its exact text.
    Decimal(Decimal),
}

impl PartialEq for Value {
    /// Equality that makes round trips checkable: floats compare by bit pattern
    /// (so `-0.0 != 0.0`), except that every NaN equals every NaN; an `int` never
    /// equals a `float`.
    fn eq(&self, other: &Self) -> bool {
        use Value::*;
        match (self, other) {
            (Null, Null) => true,
            (Bool(a), Bool(b)) => a == b,
            (Int(a), Int(b)) => a == b,
            (BigInt(a), BigInt(b)) => a == b,
            (Float(a), Float(b)) => (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits(),
            (Str(a), Str(b)) => a == b,
            (Bytes(a), Bytes(b)) => a == b,
            (List(a), List(b)) => a == b,
            // As in Python, dicts are equal whatever their order; byte-level
            // comparisons of encodings are what check order.
            (Map(a), Map(b)) => a == b,
            (DateTime(a), DateTime(b)) => a == b,
            (Date(a), Date(b)) => a == b,
            (Time(a), Time(b)) => a == b,
            (Uuid(a), Uuid(b)) => a == b,
            (Decimal(a), Decimal(b)) => a == b,
            _ => false,
        }
    }
}

impl Value {
    /// The Python type name of this value, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Map(_) => "dict",
            Value::DateTime(_) => "datetime",
            Value::Date(_) => "date",
            Value::Time(_) => "time",
            Value::Uuid(_) => "UUID",
            Value::Decimal(_) => "Decimal",
        }
    }

    /// Python's truth (`bool(x)`): `None`, `False`, zero and empty strings and
    /// containers are false, everything else true.
    pub fn is_truthy(&self) -> bool {
        match self {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            Value::Float(f) => *f != 0.0,
            Value::Str(s) => !s.is_empty(),
            Value::Bytes(b) => !b.is_empty(),
            Value::List(l) => !l.is_empty(),
            Value::Map(m) => !m.is_empty(),
            _ => true,
        }
    }

    /// True for Python `None`.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The string, if this is a `str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is an `int` that fits in an `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The number as a float, if this is an `int` or a `float` (bools are not numbers here).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// The boolean, if this is a `bool`.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The items, if this is a `list`.
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }

    /// The map, if this is a `dict`.
    pub fn as_map(&self) -> Option<&Map> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// Looks a key up, if this is a `dict`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_map().and_then(|m| m.get(key))
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Int(v.into())
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Int(v.into())
    }
}
impl From<u64> for Value {
    fn from(v: u64) -> Self {
        match i64::try_from(v) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::BigInt(BigInt::from_i128(v.into())),
        }
    }
}
impl From<i128> for Value {
    fn from(v: i128) -> Self {
        match i64::try_from(v) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::BigInt(BigInt::from_i128(v)),
        }
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Str(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Str(v)
    }
}
impl From<Vec<Value>> for Value {
    fn from(v: Vec<Value>) -> Self {
        Value::List(v)
    }
}
impl From<Map> for Value {
    fn from(v: Map) -> Self {
        Value::Map(v)
    }
}
impl From<uuid::Uuid> for Value {
    fn from(v: uuid::Uuid) -> Self {
        Value::Uuid(v)
    }
}
impl From<PyDateTime> for Value {
    fn from(v: PyDateTime) -> Self {
        Value::DateTime(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// A Python `int` outside the `i64` range, kept as its decimal digits.
///
/// Python sends `2**70` as a bare JSON integer; it must survive a round trip
/// exactly, so it is neither rounded to a float nor truncated.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BigInt(String);

impl BigInt {
    /// Parses decimal digits with an optional leading `-`. Leading zeros and
    /// empty input are refused, as Python's JSON refuses them.
    pub fn parse(text: &str) -> Option<BigInt> {
        let digits = text.strip_prefix('-').unwrap_or(text);
        let valid = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'));
        valid.then(|| BigInt(text.to_owned()))
    }

    /// Makes one from a 128-bit integer.
    pub fn from_i128(v: i128) -> BigInt {
        BigInt(v.to_string())
    }

    /// The decimal text, e.g. `"1180591620717411303424"`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The value as an `i128`, if it fits.
    pub fn to_i128(&self) -> Option<i128> {
        self.0.parse().ok()
    }

    /// The value as an `f64` (rounded), for callers that accept that.
    pub fn to_f64(&self) -> f64 {
        self.0.parse().unwrap_or(f64::NAN)
    }
}

impl fmt::Display for BigInt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Python `decimal.Decimal`, kept as the text `str(Decimal)` gives, so no
/// digit is lost or invented.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Decimal(String);

impl Decimal {
    /// Accepts what Python's `Decimal(str)` accepts for finite numbers
    /// (`"1.10"`, `"-3E+5"`) and the specials `NaN`, `sNaN`, `Infinity`, `Inf`
    /// with an optional sign.
    pub fn parse(text: &str) -> Option<Decimal> {
        let t = text.trim();
        let unsigned = t.strip_prefix(['-', '+']).unwrap_or(t);
        let lower = unsigned.to_ascii_lowercase();
        if matches!(lower.as_str(), "nan" | "snan" | "inf" | "infinity")
            || lower.strip_prefix("nan").is_some_and(|d| d.bytes().all(|b| b.is_ascii_digit()))
            || lower.strip_prefix("snan").is_some_and(|d| d.bytes().all(|b| b.is_ascii_digit()))
        {
            return Some(Decimal(t.to_owned()));
        }
        let (mantissa, exponent) = match lower.split_once('e') {
            Some((m, e)) => (m, Some(e)),
            None => (lower.as_str(), None),
        };
        let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let digits_ok = |s: &str| s.bytes().all(|b| b.is_ascii_digit() || b == b'_');
        let mantissa_ok = digits_ok(int_part)
            && digits_ok(frac_part)
            && (int_part.bytes().any(|b| b.is_ascii_digit()) || frac_part.bytes().any(|b| b.is_ascii_digit()));
        let exponent_ok = exponent.is_none_or(|e| {
            let e = e.strip_prefix(['-', '+']).unwrap_or(e);
            !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit())
        });
        (mantissa_ok && exponent_ok).then(|| Decimal(t.to_owned()))
    }

    /// The exact text, e.g. `"1.10"`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bigint_refuses_what_python_json_refuses() {
        assert!(BigInt::parse("1180591620717411303424").is_some());
        assert!(BigInt::parse("-1267650600228229401496703205376").is_some());
        assert!(BigInt::parse("0").is_some());
        assert!(BigInt::parse("007").is_none());
        assert!(BigInt::parse("-").is_none());
        assert!(BigInt::parse("1.5").is_none());
        assert!(BigInt::parse("").is_none());
    }

    #[test]
    fn u64_beyond_i64_becomes_bigint() {
        assert_eq!(Value::from(u64::MAX), Value::BigInt(BigInt::parse("18446744073709551615").unwrap()));
        assert_eq!(Value::from(5u64), Value::Int(5));
    }

    #[test]
    fn decimal_accepts_python_forms() {
        for ok in ["1.10", "-3E+5", "0", ".5", "5.", "NaN", "-Infinity", "sNaN", "1_000.5"] {
            assert!(Decimal::parse(ok).is_some(), "{ok}");
        }
        for bad in ["", "abc", "1e", "--1", "1.2.3"] {
            assert!(Decimal::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn float_equality_is_exact() {
        assert_eq!(Value::Float(f64::NAN), Value::Float(f64::NAN));
        assert_ne!(Value::Float(0.0), Value::Float(-0.0));
        assert_ne!(Value::Int(1), Value::Float(1.0));
    }
}

//! kombu's JSON, read and written exactly as Python does it.
//!
//! Writing matches `kombu.utils.json.dumps` byte for byte: `", "` and `": "`
//! separators, ASCII-only output with `\uXXXX` escapes (surrogate pairs above the
//! BMP), Python's `repr` for floats, `NaN`/`Infinity` for the non-finite ones, and
//! `{"__type__": ..., "__value__": ...}` markers for datetime, date, time, UUID,
//! Decimal and bytes. Reading accepts everything Python's `json.loads` accepts
//! (including `NaN`, `Infinity` and integers of any size) and turns markers back
//! into typed values, refusing unknown markers as kombu's `object_hook` does.
//! Reading is bounded: nesting and the number of values by
//! [`DecodeLimits`] (checked as the parser goes, so
//! it never recurses past the bound), integer literals to [`MAX_INT_DIGITS`]
//! digits as CPython bounds them.

use std::fmt::Write as _;

use base64::Engine as _;

use crate::limits::{Budget, DecodeLimits};
use crate::time::{PyDate, PyDateTime, PyTime};
use crate::value::{BigInt, Decimal, Map, Value};

/// Nesting deeper than this is refused by [`from_str`] and [`from_slice`]
/// ([`DecodeLimits::max_depth`] sets it for [`from_slice_with`]): Python's own
/// decoder stops near 1000 levels with a `RecursionError`, and a bound keeps
/// malformed input from exhausting the stack.
pub const MAX_DEPTH: usize = crate::limits::DEFAULT_MAX_DEPTH;

/// The most digits an integer literal may have: CPython ≥ 3.11's `json.loads`
/// refuses longer ones (`sys.get_int_max_str_digits()`), so no Python producer
/// writes one, and the bound keeps big-integer handling cheap.
pub const MAX_INT_DIGITS: usize = 4300;

/// Why a JSON text could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JsonError {
    /// The bytes are not UTF-8; kombu decodes them as UTF-8 before parsing.
    #[error("JSON body is not valid UTF-8 (at byte {0})")]
    NotUtf8(usize),
    /// The text is not JSON as Python reads it.
    #[error("invalid JSON at byte {offset}: {reason}")]
    Syntax {
        /// Byte offset of the problem.
        offset: usize,
        /// What was wrong.
        reason: String,
    },
    /// A `__type__` marker that kombu would not decode either.
    #[error("invalid kombu type marker: {0}")]
    Marker(String),
    /// A value that JSON cannot carry.
    #[error("cannot write JSON: {0}")]
    Unencodable(String),
    /// Lists and dicts nest deeper than the bound.
    #[error("JSON nests lists and dicts deeper than {limit} levels")]
    TooDeep {
        /// The most levels allowed.
        limit: usize,
    },
    /// The text holds more values than the bound.
    #[error("JSON holds more than {limit} values")]
    TooManyElements {
        /// The most values allowed.
        limit: usize,
    },
}

/// The bounds of [`from_str`] and [`from_slice`]: [`MAX_DEPTH`] levels and
/// [`crate::codec::TRUSTED_MAX_ELEMENTS`] values.
fn trusted_limits() -> DecodeLimits {
    DecodeLimits { max_elements: crate::codec::TRUSTED_MAX_ELEMENTS, ..DecodeLimits::any_content() }
}

/// Reads kombu JSON from bytes (which must be UTF-8, as kombu requires), with
/// the bounds of [`from_str`].
pub fn from_slice(bytes: &[u8]) -> Result<Value, JsonError> {
    from_slice_with(bytes, &trusted_limits())
}

/// Reads kombu JSON from bytes within `limits`' nesting and value bounds.
pub fn from_slice_with(bytes: &[u8], limits: &DecodeLimits) -> Result<Value, JsonError> {
    let text = std::str::from_utf8(bytes).map_err(|e| JsonError::NotUtf8(e.valid_up_to()))?;
    from_str_with(text, limits)
}

/// Reads kombu JSON from text, at most [`MAX_DEPTH`] levels deep and
/// [`crate::codec::TRUSTED_MAX_ELEMENTS`] values: for text a process trusts.
pub fn from_str(text: &str) -> Result<Value, JsonError> {
    from_str_with(text, &trusted_limits())
}

/// Reads kombu JSON from text within `limits`' nesting and value bounds.
pub fn from_str_with(text: &str, limits: &DecodeLimits) -> Result<Value, JsonError> {
    let mut parser = Parser { src: text.as_bytes(), text, pos: 0, budget: Budget::new(limits) };
    parser.skip_ws();
    let value = parser.value(0)?;
    parser.skip_ws();
    if parser.pos != parser.src.len() {
        return Err(parser.error("extra data after the JSON value"));
    }
    Ok(value)
}

/// Writes a value as kombu's `dumps` would, byte for byte.
pub fn to_string(value: &Value) -> Result<String, JsonError> {
    let mut out = String::with_capacity(128);
    write_value(&mut out, value)?;
    Ok(out)
}

/// Writes a value as kombu's `dumps` would, into bytes.
pub fn to_vec(value: &Value) -> Result<Vec<u8>, JsonError> {
    to_string(value).map(String::into_bytes)
}

/// Appends a value as kombu JSON to `out`.
pub fn write_value(out: &mut String, value: &Value) -> Result<(), JsonError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::BigInt(b) => out.push_str(b.as_str()),
        Value::Float(f) => write_float(out, *f),
        Value::Str(s) => write_str(out, s),
        Value::Bytes(b) => match std::str::from_utf8(b) {
            Ok(s) => write_marker(out, "bytes", |o| write_str(o, s)),
            Err(_) => {
                let encoded = base64::engine::general_purpose::STANDARD.encode(b);
                write_marker(out, "base64", |o| write_str(o, &encoded))
            }
        },
        Value::List(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, item)?;
            }
            out.push(']');
        }
        Value::Map(map) => write_map(out, map)?,
        Value::DateTime(dt) => write_marker(out, "datetime", |o| write_str(o, &dt.to_iso())),
        Value::Date(d) => write_marker(out, "date", |o| write_str(o, &d.to_iso())),
        Value::Time(t) => write_marker(out, "time", |o| write_str(o, &t.to_iso())),
        Value::Decimal(d) => write_marker(out, "decimal", |o| write_str(o, d.as_str())),
        // kombu 5.7 writes only the hex (older kombu added "version"; both are read).
        Value::Uuid(u) => write_marker(out, "uuid", |o| {
            o.push_str("{\"hex\": ");
            write_str(o, &u.simple().to_string());
            o.push('}');
        }),
    }
    Ok(())
}

/// Appends a map as kombu JSON to `out`.
pub fn write_map(out: &mut String, map: &Map) -> Result<(), JsonError> {
    out.push('{');
    for (i, (key, item)) in map.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_str(out, key);
        out.push_str(": ");
        write_value(out, item)?;
    }
    out.push('}');
    Ok(())
}

fn write_marker(out: &mut String, marker: &str, value: impl FnOnce(&mut String)) {
    out.push_str("{\"__type__\": \"");
    out.push_str(marker);
    out.push_str("\", \"__value__\": ");
    value(out);
    out.push('}');
}

/// Appends a string literal with Python's `ensure_ascii=True` escaping.
pub fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// Appends a float as Python's `float.__repr__` (and `json.dumps`) writes it.
pub fn write_float(out: &mut String, f: f64) {
    if f.is_nan() {
        out.push_str("NaN");
    } else if f.is_infinite() {
        out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
    } else {
        out.push_str(&python_float_repr(f));
    }
}

/// Python's `repr(float)`: the shortest digits that round-trip, in fixed
/// notation for decimal exponents from -4 to 15, else as `1.5e+300`.
pub fn python_float_repr(f: f64) -> String {
    // `{:e}` gives the shortest round-trip digits as `d.ddde±x`.
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let mut out = String::with_capacity(digits.len() + 8);
    if negative {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        if exp < 0 {
            out.push_str("0.");
            for _ in 0..(-exp - 1) {
                out.push('0');
            }
            out.push_str(&digits);
        } else {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                for _ in digits.len()..int_len {
                    out.push('0');
                }
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.unsigned_abs());
    }
    out
}

struct Parser<'a> {
    src: &'a [u8],
    text: &'a str,
    pos: usize,
    budget: Budget,
}

impl<'a> Parser<'a> {
    fn error(&self, reason: impl Into<String>) -> JsonError {
        JsonError::Syntax { offset: self.pos, reason: reason.into() }
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.src.get(self.pos) {
            self.pos += 1;
        }
    }

    fn eat_literal(&mut self, literal: &str, value: Value) -> Result<Value, JsonError> {
        if self.src[self.pos..].starts_with(literal.as_bytes()) {
            self.pos += literal.len();
            Ok(value)
        } else {
            Err(self.error("unexpected character"))
        }
    }

    /// Reads one value inside `depth` enclosing lists and dicts.
    fn value(&mut self, depth: usize) -> Result<Value, JsonError> {
        if !self.budget.take(1) {
            return Err(JsonError::TooManyElements { limit: self.budget.max_elements() });
        }
        if matches!(self.src.get(self.pos), Some(b'[' | b'{')) && !self.budget.depth_ok(depth + 1) {
            return Err(JsonError::TooDeep { limit: self.budget.max_depth() });
        }
        match self.src.get(self.pos) {
            None => Err(self.error("unexpected end of input")),
            Some(b'n') => self.eat_literal("null", Value::Null),
            Some(b't') => self.eat_literal("true", Value::Bool(true)),
            Some(b'f') => self.eat_literal("false", Value::Bool(false)),
            Some(b'N') => self.eat_literal("NaN", Value::Float(f64::NAN)),
            Some(b'I') => self.eat_literal("Infinity", Value::Float(f64::INFINITY)),
            Some(b'"') => self.string().map(Value::Str),
            Some(b'[') => self.list(depth),
            Some(b'{') => self.object(depth),
            Some(b'-') if self.src[self.pos..].starts_with(b"-Infinity") => {
                self.pos += "-Infinity".len();
                Ok(Value::Float(f64::NEG_INFINITY))
            }
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.error("unexpected character")),
        }
    }

    fn list(&mut self, depth: usize) -> Result<Value, JsonError> {
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.src.get(self.pos) == Some(&b']') {
            self.pos += 1;
            return Ok(Value::List(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value(depth + 1)?);
            self.skip_ws();
            match self.src.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::List(items));
                }
                _ => return Err(self.error("expected ',' or ']'")),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, JsonError> {
        self.pos += 1;
        let mut map = Map::new();
        self.skip_ws();
        if self.src.get(self.pos) == Some(&b'}') {
            self.pos += 1;
            return Ok(Value::Map(map));
        }
        loop {
            self.skip_ws();
            if self.src.get(self.pos) != Some(&b'"') {
                return Err(self.error("expected a string key"));
            }
            if !self.budget.take(1) {
                return Err(JsonError::TooManyElements { limit: self.budget.max_elements() });
            }
            let key = self.string()?;
            self.skip_ws();
            if self.src.get(self.pos) != Some(&b':') {
                return Err(self.error("expected ':'"));
            }
            self.pos += 1;
            self.skip_ws();
            let item = self.value(depth + 1)?;
            // Python keeps the last value of a repeated key (at the first key's place).
            map.insert(key, item);
            self.skip_ws();
            match self.src.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return decode_marker(map);
                }
                _ => return Err(self.error("expected ',' or '}'")),
            }
        }
    }

    fn number(&mut self) -> Result<Value, JsonError> {
        let start = self.pos;
        if self.src.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        match self.src.get(self.pos) {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                while let Some(b'0'..=b'9') = self.src.get(self.pos) {
                    self.pos += 1;
                }
            }
            _ => return Err(self.error("expected a digit")),
        }
        let mut is_float = false;
        if self.src.get(self.pos) == Some(&b'.') && matches!(self.src.get(self.pos + 1), Some(b'0'..=b'9')) {
            is_float = true;
            self.pos += 1;
            while let Some(b'0'..=b'9') = self.src.get(self.pos) {
                self.pos += 1;
            }
        }
        if let Some(b'e' | b'E') = self.src.get(self.pos) {
            let mark = self.pos;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.src.get(self.pos) {
                self.pos += 1;
            }
            if matches!(self.src.get(self.pos), Some(b'0'..=b'9')) {
                is_float = true;
                while let Some(b'0'..=b'9') = self.src.get(self.pos) {
                    self.pos += 1;
                }
            } else {
                // Python's scanner stops before a bare `e`; what follows is then extra data.
                self.pos = mark;
            }
        }
        let text = self.text.get(start..self.pos).unwrap_or_default();
        if !is_float && text.trim_start_matches('-').len() > MAX_INT_DIGITS {
            self.pos = start;
            return Err(self.error(format!(
                "integer with more than {MAX_INT_DIGITS} digits (Python's json refuses it too: sys.get_int_max_str_digits)"
            )));
        }
        if is_float {
            text.parse::<f64>().map(Value::Float).map_err(|_| self.error("invalid number"))
        } else if let Ok(i) = text.parse::<i64>() {
            Ok(Value::Int(i))
        } else {
            let normalized = if text == "-0" { "0" } else { text };
            BigInt::parse(normalized).map(Value::BigInt).ok_or_else(|| self.error("invalid integer"))
        }
    }

    fn string(&mut self) -> Result<String, JsonError> {
        self.pos += 1;
        let mut out = String::new();
        let mut run_start = self.pos;
        loop {
            let Some(&b) = self.src.get(self.pos) else {
                return Err(self.error("unterminated string"));
            };
            match b {
                b'"' => {
                    out.push_str(&self.text[run_start..self.pos]);
                    self.pos += 1;
                    return Ok(out);
                }
                b'\\' => {
                    out.push_str(&self.text[run_start..self.pos]);
                    self.pos += 1;
                    self.escape(&mut out)?;
                    run_start = self.pos;
                }
                0..=0x1f => return Err(self.error("control character in string")),
                _ => self.pos += 1,
            }
        }
    }

    fn escape(&mut self, out: &mut String) -> Result<(), JsonError> {
        let Some(&b) = self.src.get(self.pos) else {
            return Err(self.error("unterminated escape"));
        };
        self.pos += 1;
        let c = match b {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{08}',
            b'f' => '\u{0c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let first = self.hex4()?;
                if (0xD800..0xDC00).contains(&first) {
                    if self.src[self.pos..].starts_with(b"\\u") {
                        self.pos += 2;
                        let second = self.hex4()?;
                        if (0xDC00..0xE000).contains(&second) {
                            let code = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00);
                            char::from_u32(code).ok_or_else(|| self.error("invalid surrogate pair"))?
                        } else {
                            return Err(self.error("lone surrogate in string (not representable)"));
                        }
                    } else {
                        return Err(self.error("lone surrogate in string (not representable)"));
                    }
                } else {
                    char::from_u32(first).ok_or_else(|| self.error("lone surrogate in string (not representable)"))?
                }
            }
            _ => return Err(self.error("invalid escape")),
        };
        out.push(c);
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let hex = self.src.get(self.pos..self.pos + 4).ok_or_else(|| self.error("short \\u escape"))?;
        let mut v = 0u32;
        for &h in hex {
            v = v * 16 + (h as char).to_digit(16).ok_or_else(|| self.error("invalid \\u escape"))?;
        }
        self.pos += 4;
        Ok(v)
    }
}

/// kombu's `object_hook`: a dict whose keys are exactly `__type__` and
/// `__value__` is a typed value; any other dict stays a dict.
fn decode_marker(map: Map) -> Result<Value, JsonError> {
    if map.len() != 2 || !map.contains_key("__type__") || !map.contains_key("__value__") {
        return Ok(Value::Map(map));
    }
    let marker = map.get("__type__").and_then(Value::as_str).unwrap_or_default();
    let value = &map["__value__"];
    let text = || value.as_str().ok_or_else(|| JsonError::Marker(format!("{marker} value is not a string")));
    let bad = |e: &dyn std::fmt::Display| JsonError::Marker(format!("{marker}: {e}"));
    Ok(match marker {
        "datetime" => Value::DateTime(PyDateTime::parse_iso(text()?).map_err(|e| bad(&e))?),
        "date" => Value::Date(PyDate::parse_iso(text()?).map_err(|e| bad(&e))?),
        "time" => Value::Time(PyTime::parse_iso(text()?).map_err(|e| bad(&e))?),
        "decimal" => Value::Decimal(Decimal::parse(text()?).ok_or_else(|| bad(&"not a decimal number"))?),
        "bytes" => Value::Bytes(text()?.as_bytes().to_vec()),
        "base64" => Value::Bytes(base64::engine::general_purpose::STANDARD.decode(text()?).map_err(|e| bad(&e))?),
        "uuid" => {
            let hex = value.get("hex").and_then(Value::as_str).ok_or_else(|| bad(&"expected {\"hex\": ...}"))?;
            Value::Uuid(uuid::Uuid::try_parse(hex).map_err(|e| bad(&e))?)
        }
        other => return Err(JsonError::Marker(format!("unsupported __type__ {other:?}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(text: &str) -> String {
        to_string(&from_str(text).unwrap()).unwrap()
    }

    #[test]
    fn writes_python_separators_and_escapes() {
        let text = r#"[[2, 2], {"k": "caf\u00e9 \ud83d\ude00 \"q\" \\ \n\u007f"}, {"callbacks": null}]"#;
        assert_eq!(rt(text), text);
    }

    #[test]
    fn floats_match_python_repr() {
        let cases = [
            (0.1, "0.1"),
            (1.0, "1.0"),
            (-0.0, "-0.0"),
            (1e300, "1e+300"),
            (1.5e-7, "1.5e-07"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (123456789012345.6, "123456789012345.6"),
            (1e16, "1e+16"),
            (9999999999999998.0, "9999999999999998.0"),
            (2.5, "2.5"),
            (100.0, "100.0"),
            (f64::MAX, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
        ];
        for (f, want) in cases {
            assert_eq!(python_float_repr(f), want, "{f}");
        }
        assert_eq!(rt("[NaN, Infinity, -Infinity]"), "[NaN, Infinity, -Infinity]");
    }

    #[test]
    fn big_integers_survive() {
        assert_eq!(
            rt("[1180591620717411303424, -1267650600228229401496703205376, 9223372036854775808]"),
            "[1180591620717411303424, -1267650600228229401496703205376, 9223372036854775808]"
        );
        assert_eq!(from_str("-0").unwrap(), Value::Int(0));
        assert_eq!(from_str("1.0").unwrap(), Value::Float(1.0));
        assert_eq!(from_str("1E2").unwrap(), Value::Float(100.0));
    }

    #[test]
    fn markers_decode_and_reencode() {
        let text = r#"[{"__type__": "datetime", "__value__": "2024-01-02T03:04:05.678901+00:00"}, {"__type__": "date", "__value__": "2024-01-02"}, {"__type__": "time", "__value__": "03:04:05"}, {"__type__": "uuid", "__value__": {"hex": "12345678123456781234567812345678"}}, {"__type__": "decimal", "__value__": "1.10"}, {"__type__": "bytes", "__value__": "hello"}, {"__type__": "base64", "__value__": "/wA="}]"#;
        let v = from_str(text).unwrap();
        let items = v.as_list().unwrap();
        assert!(matches!(items[0], Value::DateTime(_)));
        assert_eq!(items[5], Value::Bytes(b"hello".to_vec()));
        assert_eq!(items[6], Value::Bytes(vec![0xff, 0]));
        assert_eq!(to_string(&v).unwrap(), text);
        // Older kombu's form with "version" is read too, and written as 5.7 writes it.
        let old =
            from_str(r#"{"__type__": "uuid", "__value__": {"hex": "12345678123441238234567812345678", "version": 4}}"#)
                .unwrap();
        assert_eq!(
            to_string(&old).unwrap(),
            r#"{"__type__": "uuid", "__value__": {"hex": "12345678123441238234567812345678"}}"#
        );
    }

    #[test]
    fn unknown_marker_is_refused_like_kombu() {
        assert!(matches!(from_str(r#"{"__type__": "set", "__value__": [1]}"#), Err(JsonError::Marker(_))));
        // Three keys: an ordinary dict.
        assert!(matches!(from_str(r#"{"__type__": "set", "__value__": [1], "x": 1}"#), Ok(Value::Map(_))));
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for bad in [
            "",
            "[",
            "[1,",
            "{\"a\"",
            "{\"a\":}",
            "\"\\ud800\"",
            "\"\\u12\"",
            "01",
            "[1]x",
            "-",
            "tru",
            "\"\u{1}\"",
            "1.",
            "{1: 2}",
            "[1 2]",
        ] {
            assert!(from_str(bad).is_err(), "{bad:?}");
        }
        assert!(from_slice(b"\xff").is_err());
        let deep = "[".repeat(MAX_DEPTH + 10);
        assert!(from_str(&deep).is_err());
    }

    #[test]
    fn non_finite_and_overflowing_numbers_read_as_python_reads_them() {
        // json.loads: NaN/Infinity literals, and a float literal too large is inf.
        let v = from_str(
            "[NaN, Infinity, -Infinity, 1e400, -1e400, 1e-400, 1E999999999999999999999, 1.7976931348623157e308]",
        )
        .unwrap();
        let f: Vec<f64> = v.as_list().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert!(f[0].is_nan());
        assert_eq!(
            &f[1..],
            [f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY, 0.0, f64::INFINITY, f64::MAX]
        );
        // And they are written back as Python writes them.
        assert_eq!(rt("[1e400, -1e400]"), "[Infinity, -Infinity]");
        // Python's json refuses these spellings too.
        for bad in ["nan", "inf", "-NaN", "+1", "Infinity1", ".5", "1e", "0x10"] {
            assert!(from_str(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn integers_are_bounded_as_python_bounds_them() {
        let ok = "9".repeat(MAX_INT_DIGITS);
        assert!(matches!(from_str(&ok), Ok(Value::BigInt(_))));
        assert!(matches!(from_str(&format!("-{ok}")), Ok(Value::BigInt(_))));
        let err = from_str(&format!("[{ok}9]")).unwrap_err();
        assert!(err.to_string().contains("more than 4300 digits"), "{err}");
        // A float literal has no such bound in Python.
        assert!(matches!(from_str(&format!("{ok}9.0")), Ok(Value::Float(_))));
    }

    #[test]
    fn depth_is_bounded_without_recursing_past_it() {
        let limits = DecodeLimits::default();
        for open in ["[", "{\"a\": ", "[{\"k\": "] {
            // 100 000 levels: refused quickly, no stack overflow.
            let deep = open.repeat(100_000);
            assert_eq!(from_str_with(&deep, &limits), Err(JsonError::TooDeep { limit: 512 }), "{open}");
        }
        let at = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(from_str_with(&at(512), &limits).is_ok());
        assert_eq!(from_str_with(&at(513), &limits), Err(JsonError::TooDeep { limit: 512 }));
        let shallow = DecodeLimits { max_depth: 2, ..DecodeLimits::default() };
        assert!(from_str_with("[[1], {\"a\": [2]}]", &shallow).is_err());
        assert!(from_str_with("[[1], {\"a\": 2}]", &shallow).is_ok());
        // Whatever is configured, the ceiling holds.
        let unlimited = DecodeLimits { max_depth: usize::MAX, ..DecodeLimits::default() };
        let ceiling = crate::limits::MAX_DEPTH_CEILING;
        assert_eq!(from_str_with(&at(ceiling + 1), &unlimited), Err(JsonError::TooDeep { limit: ceiling }));
    }

    #[test]
    fn a_value_at_the_depth_ceiling_is_safe_to_use_on_a_small_stack() {
        use crate::codec::CodecError;
        // Decoding, dropping, cloning, comparing and encoding recurse per level:
        // at the ceiling they must fit in a worker thread's stack (tokio's is
        // 2 MiB), even in a debug build.
        let half = crate::limits::MAX_DEPTH_CEILING / 2;
        let text = format!("{}1{}", "[{\"a\": ".repeat(half), "}]".repeat(half));
        let unlimited = DecodeLimits { max_depth: usize::MAX, ..DecodeLimits::default() };
        let handle = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                let v = from_str_with(&text, &unlimited).unwrap();
                let copy = v.clone();
                assert_eq!(copy, v);
                assert_eq!(to_string(&v).unwrap(), text);
                // celeriac writes YAML in flow style, which its reader takes to 255 levels only.
                let yaml = crate::yaml::to_vec(&v).unwrap();
                let limit = crate::yaml::MAX_FLOW_DEPTH;
                assert_eq!(crate::yaml::from_slice_with(&yaml, &unlimited), Err(CodecError::TooDeep { limit }));
                let msgpack = crate::msgpack::to_vec(&v).unwrap();
                assert_eq!(crate::msgpack::from_slice_with(&msgpack, &unlimited).unwrap(), v);
                let _ = format!("{v:?}");
                drop(v);
            })
            .unwrap();
        handle.join().unwrap();
    }

    #[test]
    fn values_are_counted_keys_included() {
        let limits = DecodeLimits { max_elements: 5, ..DecodeLimits::default() };
        // [1, 2, 3, 4]: the list and four ints.
        assert!(from_str_with("[1, 2, 3, 4]", &limits).is_ok());
        assert_eq!(from_str_with("[1, 2, 3, 4, 5]", &limits), Err(JsonError::TooManyElements { limit: 5 }));
        // {"a": 1, "b": 2}: the dict, two keys, two ints.
        assert!(from_str_with("{\"a\": 1, \"b\": 2}", &limits).is_ok());
        assert!(from_str_with("{\"a\": 1, \"b\": [2]}", &limits).is_err());
        // Two million values in 4 MB: refused by the default bound, a million.
        let wide = format!("[{}0]", "0,".repeat(2_000_000));
        let err = from_slice_with(wide.as_bytes(), &DecodeLimits::default()).unwrap_err();
        assert_eq!(err, JsonError::TooManyElements { limit: 1_000_000 });
        assert_eq!(crate::codec::CodecError::from(err).kind(), crate::limits::ErrorKind::TooManyElements);
    }

    #[test]
    fn duplicate_keys_keep_the_last_value_at_the_first_place() {
        assert_eq!(rt(r#"{"a": 1, "b": 2, "a": 3}"#), r#"{"a": 3, "b": 2}"#);
    }
}

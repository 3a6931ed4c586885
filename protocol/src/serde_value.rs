//! serde for [`Value`]: task arguments decode into the caller's own types, and
//! whatever a task returns encodes into a `Value` for the result backend.
//!
//! The mapping is the one a Python user expects: lists and tuples are
//! sequences, dicts are maps, `None` is unit/`Option::None`. Values JSON has no
//! type for read as text (datetime, date and time in ISO form, UUID as
//! hyphenated text, Decimal as its digits), so `String`, `uuid::Uuid` or `jiff`
//! types with serde support take them. Python ints beyond 64 bits fit `i128`/
//! `u128` when they can.
//!
//! A [`Value`] that goes through serde and back keeps its type, so a task
//! returning an argument (or a struct holding [`Value`] fields) gives Python
//! back a `datetime`, not a `str`: `Value` serializes a datetime, date, time,
//! UUID or Decimal as a newtype struct with a reserved name around its text
//! (other serializers, such as serde_json's, see just the text), and
//! deserializes through another reserved newtype name that this module's
//! deserializer answers with the typed value.

use std::fmt;

use serde::de::{self, DeserializeOwned, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{self, Serialize};

use crate::value::{BigInt, Map, Value};

/// Converting between [`Value`] and a serde type failed; the message says
/// which field and what was expected.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ValueError(pub String);

impl de::Error for ValueError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ValueError(msg.to_string())
    }
}

impl ser::Error for ValueError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ValueError(msg.to_string())
    }
}

/// Decodes a value into `T`.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, ValueError> {
    T::deserialize(value)
}

/// Encodes `T` as a value.
pub fn to_value<T: Serialize + ?Sized>(value: &T) -> Result<Value, ValueError> {
    value.serialize(ValueSerializer)
}

// ---------------------------------------------------------------------------
// Deserialize: Value as a Deserializer.

impl<'de> de::Deserializer<'de> for Value {
    type Error = ValueError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(b),
            Value::Int(i) => visitor.visit_i64(i),
            Value::BigInt(b) => match b.to_i128() {
                Some(i) if i >= 0 => match u128::try_from(i) {
                    Ok(u) => visitor.visit_u128(u),
                    Err(_) => visitor.visit_i128(i),
                },
                Some(i) => visitor.visit_i128(i),
                None => match b.as_str().parse::<u128>() {
                    Ok(u) => visitor.visit_u128(u),
                    Err(_) => visitor.visit_string(b.as_str().to_owned()),
                },
            },
            Value::Float(f) => visitor.visit_f64(f),
            Value::Str(s) => visitor.visit_string(s),
            Value::Bytes(b) => visitor.visit_byte_buf(b),
            Value::List(items) => visitor.visit_seq(SeqDeser { iter: items.into_iter() }),
            Value::Map(map) => visitor.visit_map(MapDeser { iter: map.into_iter(), value: None }),
            Value::DateTime(d) => visitor.visit_string(d.to_iso()),
            Value::Date(d) => visitor.visit_string(d.to_iso()),
            Value::Time(t) => visitor.visit_string(t.to_iso()),
            Value::Uuid(u) => visitor.visit_string(u.hyphenated().to_string()),
            Value::Decimal(d) => visitor.visit_string(d.as_str().to_owned()),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self {
            Value::Null => visitor.visit_none(),
            other => visitor.visit_some(other),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        if name == EXACT {
            return visitor.visit_newtype_struct(Exact(self));
        }
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        match self {
            Value::Str(s) => visitor.visit_enum(s.into_deserializer()),
            Value::Map(map) if map.len() == 1 => {
                let Some((variant, value)) = map.into_iter().next() else {
                    return Err(ValueError("expected a one-key map naming the variant".into()));
                };
                visitor.visit_enum(EnumDeser { variant, value })
            }
            other => Err(ValueError(format!("expected a variant name or a one-key map, got {}", other.type_name()))),
        }
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self {
            Value::Int(i) => visitor.visit_f64(i as f64),
            Value::BigInt(b) => visitor.visit_f64(b.to_f64()),
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self {
            Value::Null => visitor.visit_unit(),
            Value::List(l) if l.is_empty() => visitor.visit_unit(),
            other => other.deserialize_any(visitor),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 char str string
        bytes byte_buf unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

struct SeqDeser {
    iter: std::vec::IntoIter<Value>,
}

impl<'de> SeqAccess<'de> for SeqDeser {
    type Error = ValueError;

    fn next_element_seed<T: de::DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, ValueError> {
        self.iter.next().map(|v| seed.deserialize(v)).transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

struct MapDeser {
    iter: indexmap::map::IntoIter<String, Value>,
    value: Option<Value>,
}

impl<'de> MapAccess<'de> for MapDeser {
    type Error = ValueError;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, ValueError> {
        match self.iter.next() {
            Some((k, v)) => {
                self.value = Some(v);
                seed.deserialize(Value::Str(k)).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, ValueError> {
        let value = self.value.take().ok_or_else(|| ValueError("a map value was asked for before its key".into()))?;
        seed.deserialize(value)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

struct EnumDeser {
    variant: String,
    value: Value,
}

impl<'de> de::EnumAccess<'de> for EnumDeser {
    type Error = ValueError;
    type Variant = Value;

    fn variant_seed<V: de::DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Value), ValueError> {
        let variant = seed.deserialize(Value::Str(self.variant))?;
        Ok((variant, self.value))
    }
}

impl<'de> de::VariantAccess<'de> for Value {
    type Error = ValueError;

    fn unit_variant(self) -> Result<(), ValueError> {
        match self {
            Value::Null => Ok(()),
            other => Err(ValueError(format!("expected no value for a unit variant, got {}", other.type_name()))),
        }
    }

    fn newtype_variant_seed<T: de::DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, ValueError> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, ValueError> {
        de::Deserializer::deserialize_seq(self, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        de::Deserializer::deserialize_map(self, visitor)
    }
}

impl<'de> IntoDeserializer<'de, ValueError> for Value {
    type Deserializer = Value;

    fn into_deserializer(self) -> Value {
        self
    }
}

// ---------------------------------------------------------------------------
// Serialize: a Serializer producing Value, and Value itself as Serialize.

impl Serialize for Value {
    fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use ser::{SerializeMap, SerializeSeq};
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::BigInt(b) => match b.to_i128() {
                Some(i) => s.serialize_i128(i),
                None => match b.as_str().parse::<u128>() {
                    Ok(u) => s.serialize_u128(u),
                    Err(_) => s.serialize_str(b.as_str()),
                },
            },
            Value::Float(f) => s.serialize_f64(*f),
            Value::Str(v) => s.serialize_str(v),
            Value::Bytes(b) => s.serialize_bytes(b),
            Value::List(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Value::Map(map) => {
                let mut m = s.serialize_map(Some(map.len()))?;
                for (k, v) in map {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
            Value::DateTime(d) => s.serialize_newtype_struct(TYPED_DATETIME, &d.to_iso()),
            Value::Date(d) => s.serialize_newtype_struct(TYPED_DATE, &d.to_iso()),
            Value::Time(t) => s.serialize_newtype_struct(TYPED_TIME, &t.to_iso()),
            Value::Uuid(u) => s.serialize_newtype_struct(TYPED_UUID, &u.hyphenated().to_string()),
            Value::Decimal(d) => s.serialize_newtype_struct(TYPED_DECIMAL, d.as_str()),
        }
    }
}

/// Prefix of the reserved newtype names (and map keys) that carry a typed
/// value's text through serde.
const TYPED: &str = "$celeriac::typed::";
const TYPED_DATETIME: &str = "$celeriac::typed::datetime";
const TYPED_DATE: &str = "$celeriac::typed::date";
const TYPED_TIME: &str = "$celeriac::typed::time";
const TYPED_UUID: &str = "$celeriac::typed::uuid";
const TYPED_DECIMAL: &str = "$celeriac::typed::decimal";
/// The newtype name `Value` asks a deserializer for: this module's answers
/// with typed values as one-entry maps `{TYPED_<kind>: text}`.
const EXACT: &str = "$celeriac::exact";

/// The typed value of `kind` (`datetime`, ...) written as `text`, or `None`
/// if the text does not read as one.
fn typed(kind: &str, text: &str) -> Option<Value> {
    use crate::time::{PyDate, PyDateTime, PyTime};
    Some(match kind {
        "datetime" => Value::DateTime(PyDateTime::parse_iso(text).ok()?),
        "date" => Value::Date(PyDate::parse_iso(text).ok()?),
        "time" => Value::Time(PyTime::parse_iso(text).ok()?),
        "uuid" => Value::Uuid(uuid::Uuid::try_parse(text).ok()?),
        "decimal" => Value::Decimal(crate::value::Decimal::parse(text)?),
        _ => return None,
    })
}

impl<'de> de::Deserialize<'de> for Value {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        // Other deserializers treat an unknown newtype as its content.
        d.deserialize_newtype_struct(EXACT, ValueVisitor)
    }
}

/// A [`Value`] deserialized for a [`Value`]: typed values come out as
/// one-entry maps that [`ValueVisitor`] turns back into them.
struct Exact(Value);

impl<'de> de::Deserializer<'de> for Exact {
    type Error = ValueError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        let (name, text) = match self.0 {
            Value::DateTime(d) => (TYPED_DATETIME, d.to_iso()),
            Value::Date(d) => (TYPED_DATE, d.to_iso()),
            Value::Time(t) => (TYPED_TIME, t.to_iso()),
            Value::Uuid(u) => (TYPED_UUID, u.hyphenated().to_string()),
            Value::Decimal(d) => (TYPED_DECIMAL, d.as_str().to_owned()),
            other => return other.deserialize_any(visitor),
        };
        let mut m = Map::with_capacity(1);
        m.insert(name.to_owned(), Value::Str(text));
        visitor.visit_map(MapDeser { iter: m.into_iter(), value: None })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u128<E>(self, v: u128) -> Result<Value, E> {
        Ok(int_from_u128(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Bytes(v.to_vec()))
    }
    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Value, E> {
        Ok(Value::Bytes(v))
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_newtype_struct<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::with_capacity(access.size_hint().unwrap_or(0).min(4096));
        while let Some(k) = access.next_key::<String>()? {
            let v: Value = access.next_value()?;
            map.insert(k, v);
        }
        // A typed value passed through `Exact`: exactly one reserved key.
        if map.len() == 1 {
            if let Some((k, Value::Str(text))) = map.first() {
                if let Some(value) = k.strip_prefix(TYPED).and_then(|kind| typed(kind, text)) {
                    return Ok(value);
                }
            }
        }
        Ok(Value::Map(map))
    }
}

fn int_from_u128(v: u128) -> Value {
    match i64::try_from(v) {
        Ok(i) => Value::Int(i),
        Err(_) => Value::BigInt(BigInt::parse(&v.to_string()).unwrap_or_else(|| BigInt::from_i128(i128::MAX))),
    }
}

/// The [`ser::Serializer`] that builds a [`Value`].
pub struct ValueSerializer;

/// Builds a list (sequences, tuples, tuple variants).
pub struct SeqBuilder {
    items: Vec<Value>,
    variant: Option<&'static str>,
}

/// Builds a map (maps, structs, struct variants).
pub struct MapBuilder {
    map: Map,
    key: Option<String>,
    variant: Option<&'static str>,
}

fn wrap(variant: Option<&'static str>, value: Value) -> Value {
    match variant {
        Some(name) => {
            let mut m = Map::with_capacity(1);
            m.insert(name.to_owned(), value);
            Value::Map(m)
        }
        None => value,
    }
}

impl ser::Serializer for ValueSerializer {
    type Ok = Value;
    type Error = ValueError;
    type SerializeSeq = SeqBuilder;
    type SerializeTuple = SeqBuilder;
    type SerializeTupleStruct = SeqBuilder;
    type SerializeTupleVariant = SeqBuilder;
    type SerializeMap = MapBuilder;
    type SerializeStruct = MapBuilder;
    type SerializeStructVariant = MapBuilder;

    fn serialize_bool(self, v: bool) -> Result<Value, ValueError> {
        Ok(Value::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Value, ValueError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_i16(self, v: i16) -> Result<Value, ValueError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_i32(self, v: i32) -> Result<Value, ValueError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_i64(self, v: i64) -> Result<Value, ValueError> {
        Ok(Value::Int(v))
    }
    fn serialize_i128(self, v: i128) -> Result<Value, ValueError> {
        Ok(Value::from(v))
    }
    fn serialize_u8(self, v: u8) -> Result<Value, ValueError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_u16(self, v: u16) -> Result<Value, ValueError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_u32(self, v: u32) -> Result<Value, ValueError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_u64(self, v: u64) -> Result<Value, ValueError> {
        Ok(Value::from(v))
    }
    fn serialize_u128(self, v: u128) -> Result<Value, ValueError> {
        Ok(int_from_u128(v))
    }
    fn serialize_f32(self, v: f32) -> Result<Value, ValueError> {
        Ok(Value::Float(v.into()))
    }
    fn serialize_f64(self, v: f64) -> Result<Value, ValueError> {
        Ok(Value::Float(v))
    }
    fn serialize_char(self, v: char) -> Result<Value, ValueError> {
        Ok(Value::Str(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<Value, ValueError> {
        Ok(Value::Str(v.to_owned()))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Value, ValueError> {
        Ok(Value::Bytes(v.to_vec()))
    }
    fn serialize_none(self) -> Result<Value, ValueError> {
        Ok(Value::Null)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<Value, ValueError> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<Value, ValueError> {
        Ok(Value::Null)
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<Value, ValueError> {
        Ok(Value::Null)
    }
    fn serialize_unit_variant(self, _name: &'static str, _i: u32, variant: &'static str) -> Result<Value, ValueError> {
        Ok(Value::Str(variant.to_owned()))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, name: &'static str, v: &T) -> Result<Value, ValueError> {
        let inner = v.serialize(self)?;
        if let (Some(kind), Value::Str(text)) = (name.strip_prefix(TYPED), &inner) {
            return typed(kind, text).ok_or_else(|| ValueError(format!("{text:?} is not a {kind}")));
        }
        Ok(inner)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _i: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<Value, ValueError> {
        Ok(wrap(Some(variant), v.serialize(self)?))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<SeqBuilder, ValueError> {
        Ok(SeqBuilder { items: Vec::with_capacity(len.unwrap_or(0).min(4096)), variant: None })
    }
    fn serialize_tuple(self, len: usize) -> Result<SeqBuilder, ValueError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<SeqBuilder, ValueError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _i: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<SeqBuilder, ValueError> {
        Ok(SeqBuilder { items: Vec::with_capacity(len.min(4096)), variant: Some(variant) })
    }
    fn serialize_map(self, len: Option<usize>) -> Result<MapBuilder, ValueError> {
        Ok(MapBuilder { map: Map::with_capacity(len.unwrap_or(0).min(4096)), key: None, variant: None })
    }
    fn serialize_struct(self, _name: &'static str, len: usize) -> Result<MapBuilder, ValueError> {
        self.serialize_map(Some(len))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _i: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<MapBuilder, ValueError> {
        Ok(MapBuilder { map: Map::with_capacity(len.min(4096)), key: None, variant: Some(variant) })
    }
}

impl ser::SerializeSeq for SeqBuilder {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), ValueError> {
        self.items.push(v.serialize(ValueSerializer)?);
        Ok(())
    }
    fn end(self) -> Result<Value, ValueError> {
        Ok(wrap(self.variant, Value::List(self.items)))
    }
}

impl ser::SerializeTuple for SeqBuilder {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), ValueError> {
        ser::SerializeSeq::serialize_element(self, v)
    }
    fn end(self) -> Result<Value, ValueError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleStruct for SeqBuilder {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), ValueError> {
        ser::SerializeSeq::serialize_element(self, v)
    }
    fn end(self) -> Result<Value, ValueError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleVariant for SeqBuilder {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), ValueError> {
        ser::SerializeSeq::serialize_element(self, v)
    }
    fn end(self) -> Result<Value, ValueError> {
        ser::SerializeSeq::end(self)
    }
}

/// A map key as Python's JSON encoder writes it: strings as they are,
/// numbers and booleans as their text.
fn key_text(key: Value) -> Result<String, ValueError> {
    match key {
        Value::Str(s) => Ok(s),
        Value::Int(i) => Ok(i.to_string()),
        Value::BigInt(b) => Ok(b.to_string()),
        Value::Bool(b) => Ok(if b { "true" } else { "false" }.to_owned()),
        Value::Null => Ok("null".to_owned()),
        Value::Float(f) => Ok(crate::json::python_float_repr(f)),
        Value::Uuid(u) => Ok(u.hyphenated().to_string()),
        other => Err(ValueError(format!("a map key must be text or a number, not {}", other.type_name()))),
    }
}

impl ser::SerializeMap for MapBuilder {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), ValueError> {
        self.key = Some(key_text(k.serialize(ValueSerializer)?)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), ValueError> {
        let key = self.key.take().ok_or_else(|| ValueError("a map value came before its key".into()))?;
        self.map.insert(key, v.serialize(ValueSerializer)?);
        Ok(())
    }
    fn end(self) -> Result<Value, ValueError> {
        Ok(wrap(self.variant, Value::Map(self.map)))
    }
}

impl ser::SerializeStruct for MapBuilder {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, v: &T) -> Result<(), ValueError> {
        self.map.insert(key.to_owned(), v.serialize(ValueSerializer)?);
        Ok(())
    }
    fn end(self) -> Result<Value, ValueError> {
        Ok(wrap(self.variant, Value::Map(self.map)))
    }
}

impl ser::SerializeStructVariant for MapBuilder {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, v: &T) -> Result<(), ValueError> {
        ser::SerializeStruct::serialize_field(self, key, v)
    }
    fn end(self) -> Result<Value, ValueError> {
        ser::SerializeStruct::end(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Deserialize, Serialize)]
    struct Transfer {
        source: String,
        dest: String,
        #[serde(default)]
        retries: u32,
        checksum: Option<String>,
        size: u64,
    }

    #[derive(Debug, PartialEq, Deserialize, Serialize)]
    enum Mode {
        Fast,
        Slow { factor: f64 },
    }

    #[test]
    fn python_args_decode_into_rust_types() {
        let args = Value::List(vec![Value::Int(2), Value::Float(3.5), "x".into()]);
        let (a, b, c): (i64, f64, String) = from_value(args).unwrap();
        assert_eq!((a, b, c.as_str()), (2, 3.5, "x"));

        let ints = Value::List(vec![Value::Int(1), Value::Int(2)]);
        // An int where a float is expected reads as Python would.
        let floats: Vec<f64> = from_value(ints).unwrap();
        assert_eq!(floats, vec![1.0, 2.0]);

        let mut kwargs = Map::new();
        kwargs.insert("source".into(), "/a".into());
        kwargs.insert("dest".into(), "/b".into());
        kwargs.insert("checksum".into(), Value::Null);
        kwargs.insert("size".into(), Value::Int(10));
        let t: Transfer = from_value(Value::Map(kwargs)).unwrap();
        assert_eq!(t, Transfer { source: "/a".into(), dest: "/b".into(), retries: 0, checksum: None, size: 10 });
    }

    #[test]
    fn errors_name_what_was_wrong() {
        let mut kwargs = Map::new();
        kwargs.insert("source".into(), Value::Int(1));
        let err = from_value::<Transfer>(Value::Map(kwargs)).unwrap_err();
        assert!(err.0.contains("expected a string"), "{err}");
        let err = from_value::<(i64, i64)>(Value::List(vec![Value::Int(1)])).unwrap_err();
        assert!(err.0.contains("length 1") || err.0.contains("tuple"), "{err}");
    }

    #[test]
    fn big_ints_and_marker_types() {
        let big = Value::BigInt(BigInt::parse("18446744073709551616").unwrap());
        let v: u128 = from_value(big.clone()).unwrap();
        assert_eq!(v, 1u128 << 64);
        assert_eq!(to_value(&v).unwrap(), big);
        let u = uuid::Uuid::from_u128(0x1234);
        let s: String = from_value(Value::Uuid(u)).unwrap();
        assert_eq!(s, u.hyphenated().to_string());
        let parsed: uuid::Uuid = from_value(Value::Uuid(u)).unwrap();
        assert_eq!(parsed, u);
    }

    #[test]
    fn rust_values_encode_as_python_expects() {
        let t = Transfer { source: "/a".into(), dest: "/b".into(), retries: 1, checksum: None, size: 3 };
        let v = to_value(&t).unwrap();
        assert_eq!(
            crate::json::to_string(&v).unwrap(),
            r#"{"source": "/a", "dest": "/b", "retries": 1, "checksum": null, "size": 3}"#
        );
        assert_eq!(to_value(&(1, "a")).unwrap(), Value::List(vec![Value::Int(1), "a".into()]));
        assert_eq!(to_value(&Mode::Fast).unwrap(), Value::Str("Fast".into()));
        let slow = to_value(&Mode::Slow { factor: 2.0 }).unwrap();
        assert_eq!(from_value::<Mode>(slow).unwrap(), Mode::Slow { factor: 2.0 });
        let mut keyed = std::collections::BTreeMap::new();
        keyed.insert(1, "one");
        assert_eq!(crate::json::to_string(&to_value(&keyed).unwrap()).unwrap(), r#"{"1": "one"}"#);
    }

    #[test]
    fn value_round_trips_through_serde() {
        let text = r#"{"a": [1, 2.5, "x", null, true], "b": {"c": []}}"#;
        let v = crate::json::from_str(text).unwrap();
        let again: Value = from_value(v.clone()).unwrap();
        assert_eq!(again, v);
        assert_eq!(to_value(&v).unwrap(), v);
    }

    #[test]
    fn typed_values_keep_their_type_through_serde() {
        use crate::time::{PyDate, PyDateTime, PyTime};
        let typed = vec![
            Value::DateTime(PyDateTime::parse_iso("2024-01-02T03:04:05.678901+00:00").unwrap()),
            Value::DateTime(PyDateTime::parse_iso("2024-01-02T03:04:05").unwrap()),
            Value::Date(PyDate::parse_iso("2024-01-02").unwrap()),
            Value::Time(PyTime::parse_iso("03:04:05.000001").unwrap()),
            Value::Uuid(uuid::Uuid::from_u128(5)),
            Value::Decimal(crate::value::Decimal::parse("1.10").unwrap()),
        ];
        for v in &typed {
            // A task returning a Value, or taking one.
            assert_eq!(&to_value(v).unwrap(), v);
            assert_eq!(&from_value::<Value>(v.clone()).unwrap(), v);
        }
        // Nested in the caller's own types.
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct Out {
            when: Value,
            all: Vec<Value>,
        }
        let out = Out { when: typed[0].clone(), all: typed.clone() };
        let v = to_value(&out).unwrap();
        let Value::Map(m) = &v else { panic!("{v:?}") };
        assert_eq!(m.get("when"), Some(&typed[0]));
        assert_eq!(m.get("all"), Some(&Value::List(typed.clone())));
        assert_eq!(from_value::<Out>(v).unwrap(), out);
        // Text for types that want text, and for other serializers.
        let s: String = from_value(typed[0].clone()).unwrap();
        assert_eq!(s, "2024-01-02T03:04:05.678901+00:00");
        assert_eq!(serde_json::to_string(&typed[4]).unwrap(), "\"00000000-0000-0000-0000-000000000005\"");
        // A one-entry map with a reserved key that is not a typed value stays a map.
        let mut odd = Map::new();
        odd.insert("$celeriac::typed::datetime".into(), Value::Str("not a date".into()));
        let odd = Value::Map(odd);
        assert_eq!(from_value::<Value>(odd.clone()).unwrap(), odd);
        // And serde_json values deserialize as before.
        let j: Value = serde_json::from_str(r#"{"a": [1, "x"]}"#).unwrap();
        assert!(matches!(j, Value::Map(_)));
    }
}

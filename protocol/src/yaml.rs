//! kombu's YAML bodies (`application/x-yaml`), read as PyYAML's
//! `yaml.safe_load` reads them and written so that `safe_load` gives back the
//! same Python object.
//!
//! kombu registers `yaml.safe_dump` / `yaml.safe_load`. PyYAML implements YAML
//! 1.1, whose plain-scalar resolution differs from YAML 1.2 (what `yaml-rust2`
//! resolves), so this module takes only the event stream from `yaml-rust2` and
//! resolves and constructs every node itself, following PyYAML 6's
//! `SafeLoader` (`resolver.py`, `constructor.py`):
//!
//! - plain scalars: `~`/`null`/`Null`/`NULL`/empty are `None`; `yes`/`no`/`true`/
//!   `false`/`on`/`off` (lower, Capitalised or UPPER) are bools; ints are decimal,
//!   `0x` hex, `0` octal (not `0o`), `0b` binary, with `_` separators and
//!   sexagesimal `1:30`; floats need a `.` (`1.0e+3`; `1e3` and `1.0e3` are
//!   strings) or are `.inf`/`-.inf`/`.nan`; `2024-01-02` is a date and
//!   `2024-01-02 03:04:05[.f][±hh[:mm]|Z]` a datetime (aware when it has an
//!   offset, as PyYAML ≥ 5.1 makes it); `<<` is a merge key;
//! - quoted and block scalars are strings;
//! - the tags `!!str`, `!!int`, `!!float`, `!!bool`, `!!null`, `!!binary`,
//!   `!!timestamp`, `!!seq`, `!!map`, `!!set`, `!!omap`, `!!pairs` and `!!merge`
//!   are honoured; `!!python/...` and every other tag are refused, as
//!   `safe_load` refuses them;
//! - aliases are expanded (PyYAML shares the object; this model has no sharing),
//!   and every copy counts against [`DecodeLimits::max_elements`] (its values)
//!   and [`DecodeLimits::max_decoded_bytes`] (its strings' bytes), which stops
//!   "billion laughs" bombs after a bounded amount of work and memory; the copy
//!   kept of each anchored node counts too.
//!
//! This model's dicts have `str` keys. A YAML mapping key that is an `int`,
//! `float`, `bool` or `None` is converted to text the way `json.dumps` converts
//! dict keys (`1` → `"1"`, `True` → `"true"`, `None` → `"null"`, `1.5` →
//! `"1.5"`), so a task sees what it would have seen had the producer used the
//! json serializer; keys of any other type (dates, bytes) are refused, as
//! `json.dumps` refuses them. A `!!set` becomes a list of its members, and
//! `!!omap`/`!!pairs` a list of `[key, value]` lists (Python gives a list of
//! tuples).
//!
//! Writing uses flow style with double-quoted strings, which PyYAML reads back to
//! the identical object; it does not try to match `safe_dump`'s block layout.
//! Datetimes are written as `!!timestamp "2024-01-02 03:04:05+00:00"` (tagged and
//! quoted, so PyYAML before 5.1, which refused `:` in flow-context plain scalars,
//! reads them too) and bytes as `!!binary "<base64>"`.
//!
//! Where the syntax (not the resolution) of YAML 1.1 and 1.2 differs, this reads
//! what `yaml-rust2` reads. Checked against PyYAML 6.0.3 on random documents,
//! that shows in inputs `safe_dump` does not write: raw NEL/LS/PS characters
//! (`safe_dump(allow_unicode=True)` only; PyYAML takes them for line breaks, here
//! they are text), a redefined anchor (PyYAML refuses it), an empty flow key
//! `{: x}` (refused by PyYAML) and a bare `-` inside a flow collection (refused
//! here). Keys that Python merges because they compare equal (`1`, `1.0`, `True`)
//! stay separate here.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use base64::Engine as _;
use jiff::civil;
use jiff::tz::Offset;
use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::codec::CodecError;
use crate::json::{python_float_repr, MAX_DEPTH};
use crate::limits::{Budget, DecodeLimits};
use crate::time::{PyDate, PyDateTime};
use crate::value::{BigInt, Map, Value};

/// The most values that alias copies (and the copies kept of anchored nodes)
/// may add to a document, whatever [`DecodeLimits::max_elements`] allows:
/// PyYAML shares aliased objects, but this model copies them, so this bounds
/// the memory a "billion laughs" document can make this reader use (some
/// 100 MB) before it is refused.
pub const MAX_ALIAS_EXPANSION: usize = 1_000_000;

/// The deepest nesting of flow collections (`[...]`, `{...}`) the YAML scanner
/// reads, whatever [`DecodeLimits::max_depth`] allows (block collections go
/// to that bound). PyYAML has no such bound, but `safe_dump` writes block style.
pub const MAX_FLOW_DEPTH: usize = 255;

/// The most digits an integer scalar may have: CPython ≥ 3.11 refuses to convert
/// longer decimal strings (`sys.get_int_max_str_digits()`), so no Python
/// producer can write one, and the bound keeps the conversion cheap.
pub const MAX_INT_DIGITS: usize = crate::json::MAX_INT_DIGITS;

/// The prefix of YAML's standard tags (`!!str` is `tag:yaml.org,2002:str`).
const CORE: &str = "tag:yaml.org,2002:";

fn error(reason: impl Into<String>) -> CodecError {
    CodecError::Yaml(reason.into())
}

fn at(mark: &Marker, reason: impl std::fmt::Display) -> CodecError {
    error(format!("{reason} (line {}, column {})", mark.line(), mark.col() + 1))
}

/// Reads a YAML body as `yaml.safe_load` would (one document; an empty stream is
/// `None`), with the bounds of [`crate::codec::decode`]: for bodies a process trusts.
pub fn from_slice(bytes: &[u8]) -> Result<Value, CodecError> {
    let limits = DecodeLimits {
        max_elements: crate::codec::TRUSTED_MAX_ELEMENTS,
        max_decoded_bytes: crate::codec::DEFAULT_DECOMPRESSED_LIMIT,
        ..DecodeLimits::any_content()
    };
    from_slice_with(bytes, &limits)
}

/// Reads a YAML body as `yaml.safe_load` would, within `limits`: nesting, values
/// (alias copies included) and the bytes of the body plus those alias copies add.
pub fn from_slice_with(bytes: &[u8], limits: &DecodeLimits) -> Result<Value, CodecError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| error(format!("body is not valid UTF-8 (at byte {})", e.valid_up_to())))?;
    check_printable(text)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let loader = Loader {
        frames: Vec::new(),
        anchors: HashMap::new(),
        budget: Budget::new(limits),
        copied_bytes: bytes.len(),
        max_bytes: limits.max_decoded_bytes,
        copied_nodes: 0,
        root: None,
    };
    loader.load(text)
}

/// What a node costs to copy: its values, and the bytes of its strings and binaries.
#[derive(Clone, Copy, Debug, Default)]
struct Weight {
    nodes: usize,
    bytes: usize,
}

impl Weight {
    const ONE: Weight = Weight { nodes: 1, bytes: 0 };

    fn add(self, other: Weight) -> Weight {
        Weight { nodes: self.nodes.saturating_add(other.nodes), bytes: self.bytes.saturating_add(other.bytes) }
    }
}

/// PyYAML's reader refuses control characters and other non-printable code
/// points anywhere in the stream (escapes inside double quotes are fine).
fn check_printable(text: &str) -> Result<(), CodecError> {
    for (offset, c) in text.char_indices() {
        let ok = matches!(c,
            '\t' | '\n' | '\r' | ' '..='~' | '\u{85}' | '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..);
        if !ok {
            return Err(error(format!(
                "unacceptable character #x{:04x} at byte {offset}: special characters are not allowed",
                c as u32
            )));
        }
    }
    Ok(())
}

/// A finished node, as its parent receives it.
enum Node {
    /// An ordinary value, with its weight.
    Value(Value, Weight),
    /// A one-pair mapping inside `!!omap`/`!!pairs`, key unconverted.
    Pair(Value, Value, Weight),
    /// The merge key `<<`.
    Merge,
    /// The value key `=` (a plain string only when used as a mapping key).
    ValueKey,
}

#[derive(Clone, Copy, PartialEq)]
enum SeqKind {
    Seq,
    /// `!!omap` or `!!pairs`: a sequence of one-pair mappings.
    Pairs,
}

#[derive(Clone, Copy, PartialEq)]
enum MapKind {
    Map,
    Set,
    /// A mapping directly inside `!!omap`/`!!pairs`.
    PairItem,
}

enum KeySlot {
    Key(Value),
    Merge,
}

enum Frame {
    Seq {
        kind: SeqKind,
        anchor: usize,
        items: Vec<Value>,
        weight: Weight,
    },
    Map {
        kind: MapKind,
        anchor: usize,
        /// Entries merged in with `<<`, in the order PyYAML's `flatten_mapping` puts them.
        merged: Vec<Map>,
        pairs: Vec<(Value, Value)>,
        key: Option<KeySlot>,
        weight: Weight,
    },
}

struct Loader {
    frames: Vec<Frame>,
    anchors: HashMap<usize, (Value, Weight)>,
    /// Counts every value made, alias copies included.
    budget: Budget,
    /// The body's bytes plus those alias copies (and anchor copies) add.
    copied_bytes: usize,
    /// [`DecodeLimits::max_decoded_bytes`].
    max_bytes: usize,
    /// Values copied by aliases and anchors so far (bounded by [`MAX_ALIAS_EXPANSION`]).
    copied_nodes: usize,
    root: Option<Value>,
}

impl Loader {
    fn load(mut self, text: &str) -> Result<Value, CodecError> {
        let mut parser = Parser::new_from_str(text);
        let mut documents = 0usize;
        loop {
            let (event, mark) = parser.next_token().map_err(|e| {
                if e.info() == "recursion limit exceeded" {
                    CodecError::TooDeep { limit: MAX_FLOW_DEPTH }
                } else {
                    error(e.to_string())
                }
            })?;
            match event {
                Event::StreamEnd => break,
                Event::Nothing | Event::StreamStart | Event::DocumentEnd => {}
                Event::DocumentStart => {
                    documents += 1;
                    if documents > 1 {
                        return Err(at(&mark, "expected a single document in the stream, but found another document"));
                    }
                }
                Event::Alias(id) => {
                    let Some((value, weight)) = self.anchors.get(&id) else {
                        return Err(at(&mark, "found undefined or recursive alias"));
                    };
                    let weight = *weight;
                    // Counted before the copy is made.
                    charge(&mut self.budget, &mut self.copied_nodes, &mut self.copied_bytes, self.max_bytes, weight)?;
                    let node = Node::Value(value.clone(), weight);
                    self.deliver(node, &mark)?;
                }
                Event::Scalar(text, style, anchor, tag) => {
                    self.count(1)?;
                    let node = scalar(text, style, tag.as_ref()).map_err(|e| at(&mark, e))?;
                    self.finish(node, anchor, &mark)?;
                }
                Event::SequenceStart(anchor, tag) => {
                    self.check_depth(&mark)?;
                    let kind = match full_tag(tag.as_ref()).as_deref() {
                        None | Some("!") => SeqKind::Seq,
                        Some(t) => match t.strip_prefix(CORE) {
                            Some("seq") => SeqKind::Seq,
                            Some("omap" | "pairs") => SeqKind::Pairs,
                            _ => return Err(at(&mark, tag_refusal(t, "sequence"))),
                        },
                    };
                    self.frames.push(Frame::Seq { kind, anchor, items: Vec::new(), weight: Weight::ONE });
                }
                Event::MappingStart(anchor, tag) => {
                    self.check_depth(&mark)?;
                    let in_pairs = matches!(self.frames.last(), Some(Frame::Seq { kind: SeqKind::Pairs, .. }));
                    let kind = match full_tag(tag.as_ref()).as_deref() {
                        None | Some("!") if in_pairs => MapKind::PairItem,
                        None | Some("!") => MapKind::Map,
                        Some(t) => match t.strip_prefix(CORE) {
                            Some("map") if in_pairs => MapKind::PairItem,
                            Some("map") => MapKind::Map,
                            Some("set") => MapKind::Set,
                            _ => return Err(at(&mark, tag_refusal(t, "mapping"))),
                        },
                    };
                    if in_pairs && kind != MapKind::PairItem {
                        return Err(at(&mark, "expected a plain mapping of length 1 in !!omap/!!pairs"));
                    }
                    self.frames.push(Frame::Map {
                        kind,
                        anchor,
                        merged: Vec::new(),
                        pairs: Vec::new(),
                        key: None,
                        weight: Weight::ONE,
                    });
                }
                Event::SequenceEnd | Event::MappingEnd => {
                    let frame = self.frames.pop().ok_or_else(|| at(&mark, "unbalanced collection end"))?;
                    let (node, anchor) = close(frame).map_err(|e| at(&mark, e))?;
                    self.finish(node, anchor, &mark)?;
                }
            }
        }
        match self.root.take() {
            Some(root) => Ok(root),
            None => {
                // An empty stream is None: one value too.
                self.count(1)?;
                Ok(Value::Null)
            }
        }
    }

    /// Counts a new collection and checks how deep it is.
    fn check_depth(&mut self, _mark: &Marker) -> Result<(), CodecError> {
        self.count(1)?;
        if !self.budget.depth_ok(self.frames.len() + 1) {
            return Err(CodecError::TooDeep { limit: self.budget.max_depth() });
        }
        Ok(())
    }

    fn count(&mut self, nodes: usize) -> Result<(), CodecError> {
        if self.budget.take(nodes) {
            Ok(())
        } else {
            Err(CodecError::TooManyElements { limit: self.budget.max_elements() })
        }
    }

    /// Records an anchored node (the copy kept counts like an alias copy), then
    /// hands it to its parent.
    fn finish(&mut self, node: Node, anchor: usize, mark: &Marker) -> Result<(), CodecError> {
        if anchor != 0 {
            if let Node::Value(value, weight) = &node {
                charge(&mut self.budget, &mut self.copied_nodes, &mut self.copied_bytes, self.max_bytes, *weight)?;
                self.anchors.insert(anchor, (value.clone(), *weight));
            }
        }
        self.deliver(node, mark)
    }

    fn deliver(&mut self, node: Node, mark: &Marker) -> Result<(), CodecError> {
        let Some(frame) = self.frames.last_mut() else {
            return match node {
                Node::Value(value, _) => {
                    self.root = Some(value);
                    Ok(())
                }
                Node::Merge => Err(at(mark, no_constructor("merge"))),
                Node::ValueKey => Err(at(mark, no_constructor("value"))),
                Node::Pair(..) => Err(at(mark, "unexpected !!omap item")),
            };
        };
        match frame {
            Frame::Seq { kind, items, weight, .. } => match (node, *kind) {
                (Node::Value(value, w), SeqKind::Seq) => {
                    items.push(value);
                    *weight = weight.add(w);
                }
                (Node::Pair(key, value, w), SeqKind::Pairs) => {
                    items.push(Value::List(vec![key, value]));
                    *weight = weight.add(w);
                }
                (Node::Value(..), SeqKind::Pairs) => {
                    return Err(at(mark, "expected a mapping of length 1 in !!omap/!!pairs"));
                }
                (Node::Merge, _) => return Err(at(mark, no_constructor("merge"))),
                (Node::ValueKey, _) => return Err(at(mark, no_constructor("value"))),
                (Node::Pair(..), SeqKind::Seq) => return Err(at(mark, "unexpected !!omap item")),
            },
            Frame::Map { kind, merged, pairs, key, weight, .. } => match key.take() {
                None => {
                    *key = Some(match node {
                        Node::Value(Value::List(_) | Value::Map(_), _) => {
                            return Err(at(mark, "found unhashable key (a list or dict) in a mapping"));
                        }
                        Node::Value(k, w) => {
                            *weight = weight.add(w);
                            KeySlot::Key(k)
                        }
                        Node::Merge if *kind != MapKind::PairItem => KeySlot::Merge,
                        Node::Merge => return Err(at(mark, no_constructor("merge"))),
                        Node::ValueKey if *kind != MapKind::PairItem => KeySlot::Key(Value::Str("=".into())),
                        Node::ValueKey => return Err(at(mark, no_constructor("value"))),
                        Node::Pair(..) => return Err(at(mark, "unexpected !!omap item")),
                    });
                }
                Some(slot) => {
                    let (value, w) = match node {
                        Node::Value(value, w) => (value, w),
                        Node::Merge => return Err(at(mark, no_constructor("merge"))),
                        Node::ValueKey => return Err(at(mark, no_constructor("value"))),
                        Node::Pair(..) => return Err(at(mark, "unexpected !!omap item")),
                    };
                    *weight = weight.add(w);
                    match slot {
                        KeySlot::Key(k) => pairs.push((k, value)),
                        KeySlot::Merge => match value {
                            Value::Map(m) => merged.push(m),
                            Value::List(list) => {
                                // PyYAML merges a list of mappings last-first, so
                                // the earlier ones win.
                                let mut maps = Vec::with_capacity(list.len());
                                for item in list {
                                    match item {
                                        Value::Map(m) => maps.push(m),
                                        other => {
                                            return Err(at(
                                                mark,
                                                format!(
                                                    "expected a mapping for merging, but found {}",
                                                    other.type_name()
                                                ),
                                            ))
                                        }
                                    }
                                }
                                merged.extend(maps.into_iter().rev());
                            }
                            other => {
                                return Err(at(
                                    mark,
                                    format!(
                                        "expected a mapping or list of mappings for merging, but found {}",
                                        other.type_name()
                                    ),
                                ))
                            }
                        },
                    }
                }
            },
        }
        Ok(())
    }
}

/// Counts a copy of a node of `weight` against the value budget, the alias
/// bound and the byte bound, before it is made.
fn charge(
    budget: &mut Budget,
    copied_nodes: &mut usize,
    copied_bytes: &mut usize,
    max_bytes: usize,
    weight: Weight,
) -> Result<(), CodecError> {
    *copied_nodes = copied_nodes.saturating_add(weight.nodes);
    if !budget.take(weight.nodes) || *copied_nodes > MAX_ALIAS_EXPANSION {
        return Err(CodecError::TooManyElements { limit: budget.max_elements().min(MAX_ALIAS_EXPANSION) });
    }
    *copied_bytes = copied_bytes.saturating_add(weight.bytes);
    if *copied_bytes > max_bytes {
        return Err(CodecError::TooLarge { limit: max_bytes });
    }
    Ok(())
}

/// Builds the finished node of a collection.
fn close(frame: Frame) -> Result<(Node, usize), String> {
    match frame {
        Frame::Seq { items, anchor, weight, .. } => Ok((Node::Value(Value::List(items), weight), anchor)),
        Frame::Map { kind, anchor, merged, pairs, key, weight } => {
            if key.is_some() {
                return Err("mapping key without a value".into());
            }
            let node = match kind {
                MapKind::PairItem => {
                    let mut pairs = pairs.into_iter();
                    match (pairs.next(), pairs.next()) {
                        (Some((k, v)), None) => Node::Pair(k, v, weight),
                        _ => return Err("expected a single mapping item in !!omap/!!pairs".into()),
                    }
                }
                MapKind::Map => {
                    let mut map = Map::with_capacity(pairs.len());
                    for (k, v) in merged.into_iter().flatten() {
                        map.insert(k, v);
                    }
                    for (k, v) in pairs {
                        map.insert(key_text(&k)?, v);
                    }
                    Node::Value(Value::Map(map), weight)
                }
                MapKind::Set => {
                    let mut seen = HashSet::new();
                    let mut members = Vec::new();
                    let keys = merged
                        .into_iter()
                        .flatten()
                        .map(|(k, _)| Value::Str(k))
                        .chain(pairs.into_iter().map(|(k, _)| k));
                    for k in keys {
                        let identity = crate::json::to_string(&k).map_err(|e| e.to_string())?;
                        if seen.insert(identity) {
                            members.push(k);
                        }
                    }
                    Node::Value(Value::List(members), weight)
                }
            };
            Ok((node, anchor))
        }
    }
}

/// A mapping key as this model's `str` keys carry it: `json.dumps`'s conversion.
fn key_text(key: &Value) -> Result<String, String> {
    Ok(match key {
        Value::Str(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        Value::BigInt(b) => b.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".into(),
        Value::Float(f) => {
            let mut out = String::new();
            crate::json::write_float(&mut out, *f);
            out
        }
        other => {
            return Err(format!(
                "mapping key of type {} is not supported: celeriac dicts have str keys \
                 (int, float, bool and None keys are converted as json.dumps converts them)",
                other.type_name()
            ))
        }
    })
}

fn full_tag(tag: Option<&Tag>) -> Option<String> {
    tag.map(|t| format!("{}{}", t.handle, t.suffix))
}

fn no_constructor(name: &str) -> String {
    format!("could not determine a constructor for the tag '{CORE}{name}'")
}

/// Why a tag on a node of `kind` is refused.
fn tag_refusal(tag: &str, kind: &str) -> String {
    match tag.strip_prefix(CORE) {
        Some(rest) if rest.starts_with("python/") => format!(
            "refusing the Python-specific tag !!{rest}: yaml.safe_load refuses it too (it would build \
             arbitrary Python objects)"
        ),
        Some(rest @ ("str" | "int" | "float" | "bool" | "null" | "binary" | "timestamp" | "merge" | "value")) => {
            format!("expected a scalar node for !!{rest}, but found a {kind}")
        }
        Some(rest @ ("seq" | "omap" | "pairs")) => format!("expected a sequence node for !!{rest}, but found a {kind}"),
        Some(rest @ ("map" | "set")) => format!("expected a mapping node for !!{rest}, but found a {kind}"),
        _ => format!("could not determine a constructor for the tag '{tag}' (yaml.safe_load refuses it too)"),
    }
}

/// A scalar's text, resolved and constructed as PyYAML's SafeLoader does.
fn scalar(text: String, style: TScalarStyle, tag: Option<&Tag>) -> Result<Node, String> {
    let plain = style == TScalarStyle::Plain;
    let tag = full_tag(tag);
    let value = match tag.as_deref() {
        None if plain => return resolve_plain(text),
        None => Value::Str(text),
        // PyYAML resolves a scalar with the non-specific tag `!` as if it were plain.
        Some("!") => return resolve_plain(text),
        Some(t) => match t.strip_prefix(CORE) {
            Some("str") => Value::Str(text),
            Some("null") => Value::Null,
            Some("bool") => match text.to_lowercase().as_str() {
                "yes" | "true" | "on" => Value::Bool(true),
                "no" | "false" | "off" => Value::Bool(false),
                _ => return Err(format!("invalid !!bool value {text:?}")),
            },
            Some("int") => construct_int(&text)?,
            Some("float") => construct_float(&text)?,
            Some("binary") => Value::Bytes(decode_base64(&text)?),
            Some("timestamp") => {
                construct_timestamp(&text)?.ok_or_else(|| format!("invalid !!timestamp value {text:?}"))?
            }
            Some("merge") => return Ok(Node::Merge),
            Some("value") => return Ok(Node::ValueKey),
            _ => return Err(tag_refusal(t, "scalar")),
        },
    };
    let weight = scalar_weight(&value);
    Ok(Node::Value(value, weight))
}

fn scalar_weight(value: &Value) -> Weight {
    let bytes = match value {
        Value::Str(s) => s.len(),
        Value::Bytes(b) => b.len(),
        _ => 0,
    };
    Weight { nodes: 1, bytes }
}

/// PyYAML 1.1 implicit resolution of a plain scalar.
fn resolve_plain(text: String) -> Result<Node, String> {
    let value = match text.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => Value::Null,
        "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => Value::Bool(true),
        "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => Value::Bool(false),
        "<<" => return Ok(Node::Merge),
        "=" => return Ok(Node::ValueKey),
        t if is_float(t) => construct_float(t)?,
        t if is_int(t) => construct_int(t)?,
        t => match timestamp_parts(t) {
            Some(parts) if parts.implicit() => parts.construct()?,
            _ => Value::Str(text),
        },
    };
    let weight = scalar_weight(&value);
    Ok(Node::Value(value, weight))
}

fn strip_sign(b: &[u8]) -> &[u8] {
    match b.first() {
        Some(b'-' | b'+') => &b[1..],
        _ => b,
    }
}

fn count_while(b: &[u8], pred: impl Fn(u8) -> bool) -> usize {
    b.iter().take_while(|&&c| pred(c)).count()
}

fn digit_or_underscore(c: u8) -> bool {
    c.is_ascii_digit() || c == b'_'
}

/// `(?:[eE][-+][0-9]+)?$`
fn optional_exponent(b: &[u8]) -> bool {
    match b {
        [] => true,
        [b'e' | b'E', b'-' | b'+', digits @ ..] => !digits.is_empty() && digits.iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

/// `(?::[0-5]?[0-9])+`, returning what follows, or `None` if there is no group.
fn sexagesimal_groups(mut b: &[u8]) -> Option<&[u8]> {
    let mut groups = 0;
    while let [b':', rest @ ..] = b {
        b = match rest {
            [b'0'..=b'5', b'0'..=b'9', tail @ ..] => tail,
            [b'0'..=b'9', tail @ ..] => tail,
            _ => return None,
        };
        groups += 1;
    }
    (groups > 0).then_some(b)
}

/// PyYAML's implicit float pattern.
fn is_float(text: &str) -> bool {
    let b = text.as_bytes();
    if matches!(strip_sign(b), b".inf" | b".Inf" | b".INF") || matches!(b, b".nan" | b".NaN" | b".NAN") {
        return true;
    }
    // \.[0-9][0-9_]*(?:[eE][-+][0-9]+)?  (no sign allowed)
    if let [b'.', first, rest @ ..] = b {
        return first.is_ascii_digit() && optional_exponent(&rest[count_while(rest, digit_or_underscore)..]);
    }
    let u = strip_sign(b);
    if !u.first().is_some_and(u8::is_ascii_digit) {
        return false;
    }
    let rest = &u[count_while(u, digit_or_underscore)..];
    if let [b'.', frac @ ..] = rest {
        // [-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+][0-9]+)?
        return optional_exponent(&frac[count_while(frac, digit_or_underscore)..]);
    }
    // [-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    match sexagesimal_groups(rest) {
        Some([b'.', frac @ ..]) => frac.iter().all(|&c| digit_or_underscore(c)),
        _ => false,
    }
}

/// PyYAML's implicit int pattern.
fn is_int(text: &str) -> bool {
    let u = strip_sign(text.as_bytes());
    match u {
        [b'0', b'b', rest @ ..] => !rest.is_empty() && rest.iter().all(|c| matches!(c, b'0' | b'1' | b'_')),
        [b'0', b'x', rest @ ..] => !rest.is_empty() && rest.iter().all(|&c| c.is_ascii_hexdigit() || c == b'_'),
        [b'0'] => true,
        [b'0', rest @ ..] => rest.iter().all(|c| matches!(c, b'0'..=b'7' | b'_')),
        [b'1'..=b'9', rest @ ..] => {
            let tail = &rest[count_while(rest, digit_or_underscore)..];
            tail.is_empty() || sexagesimal_groups(tail).is_some_and(<[u8]>::is_empty)
        }
        _ => false,
    }
}

/// `construct_yaml_int`: `_` dropped, sign, then `0b`, `0x`, leading-`0` octal,
/// `a:b:c` base 60 or decimal. Python ints are unbounded; beyond `i64` this gives
/// a [`BigInt`].
fn construct_int(text: &str) -> Result<Value, String> {
    let cleaned: String = text.chars().filter(|&c| c != '_').collect();
    let bad = || format!("invalid integer {text:?}");
    let (negative, body) = match cleaned.as_bytes().first() {
        None => return Err(bad()),
        Some(b'-') => (true, &cleaned[1..]),
        Some(b'+') => (false, &cleaned[1..]),
        Some(_) => (false, cleaned.as_str()),
    };
    let magnitude = if body == "0" {
        Natural::default()
    } else if let Some(digits) = body.strip_prefix("0b") {
        Natural::parse(digits, 2).ok_or_else(bad)?
    } else if let Some(digits) = body.strip_prefix("0x") {
        Natural::parse(digits, 16).ok_or_else(bad)?
    } else if let Some(digits) = body.strip_prefix('0') {
        // Python's int(value, 8) also takes an `0o` prefix.
        let digits = digits.strip_prefix(['o', 'O']).unwrap_or(digits);
        Natural::parse(if digits.is_empty() { "0" } else { digits }, 8).ok_or_else(bad)?
    } else if body.contains(':') {
        let mut parts = body.split(':');
        let mut n = Natural::parse(parts.next().unwrap_or_default(), 10).ok_or_else(bad)?;
        for part in parts {
            let digit: u32 = part.parse().ok().filter(|d| *d < 1_000_000_000).ok_or_else(bad)?;
            n.mul_add(60, digit);
        }
        n
    } else {
        Natural::parse(body, 10).ok_or_else(bad)?
    };
    magnitude.to_value(negative).ok_or_else(bad)
}

/// A non-negative integer of any size, in base 10⁹ limbs (least significant first).
#[derive(Default)]
struct Natural(Vec<u32>);

impl Natural {
    const BASE: u64 = 1_000_000_000;

    fn parse(digits: &str, radix: u32) -> Option<Natural> {
        if digits.is_empty() || digits.len() > MAX_INT_DIGITS {
            return None;
        }
        let mut n = Natural::default();
        for c in digits.chars() {
            n.mul_add(radix, c.to_digit(radix)?);
        }
        Some(n)
    }

    fn mul_add(&mut self, mul: u32, add: u32) {
        let mut carry = u64::from(add);
        for limb in &mut self.0 {
            let v = u64::from(*limb) * u64::from(mul) + carry;
            *limb = (v % Self::BASE) as u32;
            carry = v / Self::BASE;
        }
        while carry > 0 {
            self.0.push((carry % Self::BASE) as u32);
            carry /= Self::BASE;
        }
    }

    fn to_value(&self, negative: bool) -> Option<Value> {
        let mut text = String::with_capacity(self.0.len() * 9 + 1);
        if negative && self.0.iter().any(|&l| l != 0) {
            text.push('-');
        }
        match self.0.iter().rposition(|&l| l != 0) {
            None => text.push('0'),
            Some(top) => {
                let _ = write!(text, "{}", self.0[top]);
                for limb in self.0[..top].iter().rev() {
                    let _ = write!(text, "{limb:09}");
                }
            }
        }
        Some(match text.parse::<i64>() {
            Ok(i) => Value::Int(i),
            Err(_) => Value::BigInt(BigInt::parse(&text)?),
        })
    }
}

/// `construct_yaml_float`: `_` dropped, lower-cased, `.inf`/`.nan`, base 60, or
/// Python's `float()`.
fn construct_float(text: &str) -> Result<Value, String> {
    let cleaned: String = text.chars().filter(|&c| c != '_').collect::<String>().to_lowercase();
    let bad = || format!("invalid float {text:?}");
    let (sign, body) = match cleaned.as_bytes().first() {
        None => return Err(bad()),
        Some(b'-') => (-1.0, &cleaned[1..]),
        Some(b'+') => (1.0, &cleaned[1..]),
        Some(_) => (1.0, cleaned.as_str()),
    };
    let parse = |s: &str| -> Result<f64, String> {
        // Python's float() reads what Rust's parser reads here, bar "." alone.
        s.trim().parse::<f64>().map_err(|_| bad())
    };
    let value = match body {
        ".inf" => sign * f64::INFINITY,
        ".nan" => f64::NAN,
        _ if body.contains(':') => {
            // Python's loop: least significant part first, base growing by 60.
            let mut total = 0.0;
            let mut base = 1.0;
            for part in body.rsplit(':') {
                total += parse(part)? * base;
                base *= 60.0;
            }
            sign * total
        }
        _ => sign * parse(body)?,
    };
    Ok(Value::Float(value))
}

/// The groups of PyYAML's `timestamp_regexp`.
struct TimestampParts<'a> {
    year: &'a str,
    month: &'a str,
    day: &'a str,
    time: Option<TimeParts<'a>>,
}

struct TimeParts<'a> {
    hour: &'a str,
    minute: &'a str,
    second: &'a str,
    fraction: Option<&'a str>,
    /// `Some(None)` for `Z`, `Some(Some((sign, hour, minute)))` for an offset.
    tz: Option<Option<(u8, &'a str, Option<&'a str>)>>,
}

fn take_digits(s: &str, min: usize, max: usize) -> Option<(&str, &str)> {
    let n = s.bytes().take(max).take_while(u8::is_ascii_digit).count();
    (n >= min).then(|| s.split_at(n))
}

/// Matches PyYAML's constructor pattern
/// `YYYY-M[M]-D[D]([Tt]|[ \t]+)h[h]:mm:ss(\.f*)?([ \t]*(Z|[-+]h[h](:mm)?))?`.
fn timestamp_parts(text: &str) -> Option<TimestampParts<'_>> {
    let (year, rest) = take_digits(text, 4, 4)?;
    let (month, rest) = take_digits(rest.strip_prefix('-')?, 1, 2)?;
    let (day, rest) = take_digits(rest.strip_prefix('-')?, 1, 2)?;
    if rest.is_empty() {
        return Some(TimestampParts { year, month, day, time: None });
    }
    let rest = match rest.strip_prefix(['T', 't']) {
        Some(r) => r,
        None => {
            let r = rest.trim_start_matches([' ', '\t']);
            if r.len() == rest.len() {
                return None;
            }
            r
        }
    };
    let (hour, rest) = take_digits(rest, 1, 2)?;
    let (minute, rest) = take_digits(rest.strip_prefix(':')?, 2, 2)?;
    let (second, mut rest) = take_digits(rest.strip_prefix(':')?, 2, 2)?;
    let mut fraction = None;
    if let Some(r) = rest.strip_prefix('.') {
        let n = r.bytes().take_while(u8::is_ascii_digit).count();
        fraction = Some(&r[..n]);
        rest = &r[n..];
    }
    let mut tz = None;
    if !rest.is_empty() {
        let r = rest.trim_start_matches([' ', '\t']);
        if r == "Z" {
            tz = Some(None);
        } else {
            let sign = *r.as_bytes().first().filter(|c| matches!(c, b'+' | b'-'))?;
            let (tz_hour, r) = take_digits(&r[1..], 1, 2)?;
            let tz_minute = match r.strip_prefix(':') {
                Some(m) => {
                    let (m, tail) = take_digits(m, 2, 2)?;
                    if !tail.is_empty() {
                        return None;
                    }
                    Some(m)
                }
                None if r.is_empty() => None,
                None => return None,
            };
            tz = Some(Some((sign, tz_hour, tz_minute)));
        }
    }
    Some(TimestampParts { year, month, day, time: Some(TimeParts { hour, minute, second, fraction, tz }) })
}

impl TimestampParts<'_> {
    /// The implicit resolver's pattern is stricter for a bare date: `YYYY-MM-DD`.
    fn implicit(&self) -> bool {
        self.time.is_some() || (self.month.len() == 2 && self.day.len() == 2)
    }

    /// `construct_yaml_timestamp`: a date, or a datetime that is aware when an
    /// offset or `Z` is given.
    fn construct(&self) -> Result<Value, String> {
        let num = |s: &str| s.parse::<i32>().unwrap_or(i32::MAX);
        let invalid = |what: &str| format!("invalid timestamp: {what}");
        let year = num(self.year);
        if year < 1 {
            return Err(invalid("year 0 is out of range"));
        }
        let date = civil::Date::new(year as i16, num(self.month).min(99) as i8, num(self.day).min(99) as i8)
            .map_err(|_| invalid("day is out of range for month"))?;
        let Some(time) = &self.time else {
            return Ok(Value::Date(PyDate(date)));
        };
        let micros = time.fraction.map_or(0, |f| {
            let mut micros = 0;
            for i in 0..6 {
                micros = micros * 10 + f.as_bytes().get(i).map_or(0, |b| i32::from(b - b'0'));
            }
            micros
        });
        let clock = civil::Time::new(
            num(time.hour).min(99) as i8,
            num(time.minute).min(99) as i8,
            num(time.second).min(99) as i8,
            micros * 1000,
        )
        .map_err(|_| invalid("time field out of range"))?;
        let offset = match time.tz {
            None => None,
            Some(None) => Some(Offset::UTC),
            Some(Some((sign, hours, minutes))) => {
                let seconds = num(hours) * 3600 + minutes.map_or(0, num) * 60;
                if seconds >= 24 * 3600 {
                    return Err(invalid("UTC offset must be less than 24 hours"));
                }
                let seconds = if sign == b'-' { -seconds } else { seconds };
                Some(Offset::from_seconds(seconds).map_err(|_| invalid("UTC offset out of range"))?)
            }
        };
        Ok(Value::DateTime(PyDateTime { civil: date.to_datetime(clock), offset }))
    }
}

fn construct_timestamp(text: &str) -> Result<Option<Value>, String> {
    timestamp_parts(text).map(|parts| parts.construct()).transpose()
}

/// `base64.decodebytes` (binascii's non-strict mode): characters outside the
/// alphabet are skipped, decoding stops at the first complete padding, and a
/// partial final quantum is an error.
fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    if !text.is_ascii() {
        return Err("failed to convert base64 data into ascii".into());
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut quad_pos, mut left, mut pads) = (0u8, 0u32, 0u8);
    for c in text.bytes() {
        if c == b'=' {
            if quad_pos >= 2 {
                pads += 1;
                if quad_pos + pads >= 4 {
                    return Ok(out);
                }
            }
            continue;
        }
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => continue,
        };
        let v = u32::from(v);
        pads = 0;
        match quad_pos {
            0 => {
                left = v;
                quad_pos = 1;
            }
            1 => {
                out.push(((left << 2) | (v >> 4)) as u8);
                left = v & 0x0f;
                quad_pos = 2;
            }
            2 => {
                out.push(((left << 4) | (v >> 2)) as u8);
                left = v & 0x03;
                quad_pos = 3;
            }
            _ => {
                out.push(((left << 6) | v) as u8);
                quad_pos = 0;
            }
        }
    }
    match quad_pos {
        0 => Ok(out),
        1 => Err("failed to decode base64 data: invalid number of data characters".into()),
        _ => Err("failed to decode base64 data: incorrect padding".into()),
    }
}

/// Writes a value as YAML that `yaml.safe_load` reads back to the same Python
/// object: one line of flow style, strings double-quoted, ending in a newline.
///
/// `datetime.time`, `UUID` and `Decimal` have no safe YAML form
/// (`yaml.safe_dump` refuses them too), so they are an error, as are datetimes
/// outside what PyYAML's timestamp pattern can carry (years beyond 1–9999,
/// UTC offsets with seconds).
pub fn to_vec(value: &Value) -> Result<Vec<u8>, CodecError> {
    let mut out = String::with_capacity(128);
    write_value(&mut out, value, 0)?;
    out.push('\n');
    Ok(out.into_bytes())
}

/// Keys whose quoted form is longer than this are written as explicit `? key`
/// entries: PyYAML only looks 1024 characters ahead for the `:` of a simple key.
const SIMPLE_KEY_LIMIT: usize = 128;

fn write_value(out: &mut String, value: &Value, depth: usize) -> Result<(), CodecError> {
    if depth > MAX_DEPTH {
        return Err(CodecError::Unencodable(format!("nesting deeper than {MAX_DEPTH} levels")));
    }
    let refuse = |what: &str| {
        Err(CodecError::Yaml(format!(
            "a {what} cannot be sent as YAML (PyYAML's safe_dump refuses it too); use the json serializer"
        )))
    };
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
        Value::Bytes(b) => {
            out.push_str("!!binary \"");
            out.push_str(&base64::engine::general_purpose::STANDARD.encode(b));
            out.push('"');
        }
        Value::List(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, item, depth + 1)?;
            }
            out.push(']');
        }
        Value::Map(map) => {
            out.push('{');
            // PyYAML's safe_dump sorts mapping keys (sort_keys=True), so a
            // Python reader sees the same order from celeriac as from Python.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                let start = out.len();
                write_str(out, key);
                if out[start..].chars().count() > SIMPLE_KEY_LIMIT {
                    out.insert_str(start, "? ");
                }
                out.push_str(": ");
                write_value(out, item, depth + 1)?;
            }
            out.push('}');
        }
        Value::DateTime(dt) => {
            let Some(text) = timestamp_text(dt) else {
                return refuse("datetime outside years 1-9999 or with a UTC offset in seconds");
            };
            // Tagged and quoted, so PyYAML versions before 5.1 (which refused `:`
            // inside plain scalars in flow context) read it too.
            out.push_str("!!timestamp \"");
            out.push_str(&text);
            out.push('"');
        }
        Value::Date(d) => {
            let year = d.0.year();
            if !(1..=9999).contains(&year) {
                return refuse("date outside years 1-9999");
            }
            out.push_str(&d.to_iso());
        }
        Value::Time(_) => return refuse("datetime.time"),
        Value::Uuid(_) => return refuse("UUID"),
        Value::Decimal(_) => return refuse("Decimal"),
    }
    Ok(())
}

/// PyYAML's float form: always a `.` before any exponent, `.inf`, `-.inf`, `.nan`.
fn write_float(out: &mut String, f: f64) {
    if f.is_nan() {
        out.push_str(".nan");
    } else if f.is_infinite() {
        out.push_str(if f > 0.0 { ".inf" } else { "-.inf" });
    } else {
        let repr = python_float_repr(f);
        match repr.split_once('e') {
            Some((mantissa, exp)) if !mantissa.contains('.') => {
                let _ = write!(out, "{mantissa}.0e{exp}");
            }
            _ => out.push_str(&repr),
        }
    }
}

/// `2024-01-02 03:04:05[.ffffff][±hh:mm]`, or `None` when PyYAML's pattern
/// cannot carry it.
fn timestamp_text(dt: &PyDateTime) -> Option<String> {
    let c = dt.civil;
    if !(1..=9999).contains(&c.year()) {
        return None;
    }
    let mut out =
        format!("{:04}-{:02}-{:02} {:02}:{:02}:{:02}", c.year(), c.month(), c.day(), c.hour(), c.minute(), c.second());
    let micros = c.subsec_nanosecond() / 1000;
    if micros != 0 {
        let _ = write!(out, ".{micros:06}");
    }
    if let Some(offset) = dt.offset {
        let total = offset.seconds();
        if total % 60 != 0 {
            return None;
        }
        let abs = total.unsigned_abs();
        let _ = write!(out, "{}{:02}:{:02}", if total < 0 { '-' } else { '+' }, abs / 3600, abs / 60 % 60);
    }
    Some(out)
}

/// A double-quoted scalar: printable characters as they are, everything else
/// (and line breaks, which would be folded) escaped.
fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            ' '..='~' => out.push(c),
            '\u{0}'..='\u{9f}' => {
                let _ = write!(out, "\\x{:02X}", c as u32);
            }
            '\u{2028}' => out.push_str("\\L"),
            '\u{2029}' => out.push_str("\\P"),
            '\u{feff}' | '\u{fffe}' | '\u{ffff}' => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            _ => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Value {
        from_slice(text.as_bytes()).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    fn s(text: &str) -> Value {
        Value::Str(text.into())
    }

    fn big(text: &str) -> Value {
        Value::BigInt(BigInt::parse(text).unwrap())
    }

    fn dt(text: &str) -> Value {
        Value::DateTime(PyDateTime::parse_iso(text).unwrap())
    }

    fn round_trip(v: &Value) -> Value {
        let bytes = to_vec(v).unwrap();
        from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(&bytes)))
    }

    /// Every row was checked against PyYAML 6.0.3's `yaml.safe_load`.
    #[test]
    fn plain_scalars_resolve_as_pyyaml_does() {
        let cases: Vec<(&str, Value)> = vec![
            ("~", Value::Null),
            ("null", Value::Null),
            ("Null", Value::Null),
            ("NULL", Value::Null),
            ("nULL", s("nULL")),
            ("", Value::Null),
            ("yes", Value::Bool(true)),
            ("Yes", Value::Bool(true)),
            ("YES", Value::Bool(true)),
            ("yEs", s("yEs")),
            ("no", Value::Bool(false)),
            ("NO", Value::Bool(false)),
            ("on", Value::Bool(true)),
            ("On", Value::Bool(true)),
            ("OFF", Value::Bool(false)),
            ("off", Value::Bool(false)),
            ("y", s("y")),
            ("n", s("n")),
            ("true", Value::Bool(true)),
            ("True", Value::Bool(true)),
            ("TRUE", Value::Bool(true)),
            ("tRue", s("tRue")),
            ("false", Value::Bool(false)),
            ("0", Value::Int(0)),
            ("-0", Value::Int(0)),
            ("+0", Value::Int(0)),
            ("00", Value::Int(0)),
            ("007", Value::Int(7)),
            ("08", s("08")),
            ("0_7", Value::Int(7)),
            ("0b101", Value::Int(5)),
            ("-0b1_0", Value::Int(-2)),
            ("0b", s("0b")),
            ("0x1F", Value::Int(31)),
            ("0X1F", s("0X1F")),
            ("-0x_ff", Value::Int(-255)),
            ("0o17", s("0o17")),
            ("017", Value::Int(15)),
            ("1_000", Value::Int(1000)),
            ("+12", Value::Int(12)),
            ("-12", Value::Int(-12)),
            ("1:30", Value::Int(90)),
            ("-1:30:05", Value::Int(-5405)),
            ("1:60", s("1:60")),
            ("08:30", s("08:30")),
            ("0:30", s("0:30")),
            ("1:2:3", Value::Int(3723)),
            ("190:20:30.15", Value::Float(685230.15)),
            ("1.5:30", s("1.5:30")),
            ("1.5", Value::Float(1.5)),
            ("1.", Value::Float(1.0)),
            ("0.", Value::Float(0.0)),
            ("-1.", Value::Float(-1.0)),
            ("+1.5", Value::Float(1.5)),
            ("-.5", s("-.5")),
            (".5", Value::Float(0.5)),
            ("._5", s("._5")),
            ("1e3", s("1e3")),
            ("1.0e3", s("1.0e3")),
            ("1.0e+3", Value::Float(1000.0)),
            ("1.0E-3", Value::Float(0.001)),
            ("1_0.5_0", Value::Float(10.5)),
            ("1.0e+03", Value::Float(1000.0)),
            (".inf", Value::Float(f64::INFINITY)),
            ("-.inf", Value::Float(f64::NEG_INFINITY)),
            ("+.inf", Value::Float(f64::INFINITY)),
            (".Inf", Value::Float(f64::INFINITY)),
            (".INF", Value::Float(f64::INFINITY)),
            (".NaN", Value::Float(f64::NAN)),
            (".nan", Value::Float(f64::NAN)),
            ("-.nan", s("-.nan")),
            ("NaN", s("NaN")),
            ("inf", s("inf")),
            ("123456789012345678901234567890", big("123456789012345678901234567890")),
            ("-9223372036854775809", big("-9223372036854775809")),
            ("9223372036854775807", Value::Int(i64::MAX)),
            ("-9223372036854775808", Value::Int(i64::MIN)),
            ("0x10000000000000000", big("18446744073709551616")),
            ("2024-01-01", Value::Date(PyDate::parse_iso("2024-01-01").unwrap())),
            ("2024-1-1", s("2024-1-1")),
            ("2024-01-01 12:00:00", dt("2024-01-01T12:00:00")),
            ("2024-01-01T12:00:00Z", dt("2024-01-01T12:00:00+00:00")),
            ("2024-01-01t12:00:00.5+02:00", dt("2024-01-01T12:00:00.500000+02:00")),
            ("2024-1-1 1:02:03", dt("2024-01-01T01:02:03")),
            ("2024-01-01 12:00:00 -5", dt("2024-01-01T12:00:00-05:00")),
            ("2024-01-01   12:00:00.1234567 +05:30", dt("2024-01-01T12:00:00.123456+05:30")),
            ("2024-01-01 12:00:00.", dt("2024-01-01T12:00:00")),
            ("2024-01-01T12:00:00z", s("2024-01-01T12:00:00z")),
            ("0x", s("0x")),
            ("1__", Value::Int(1)),
            ("+", s("+")),
            (".", s(".")),
            ("1_", Value::Int(1)),
            ("_1", s("_1")),
            ("0b2", s("0b2")),
            ("0_", Value::Int(0)),
            ("hello world", s("hello world")),
        ];
        for (text, want) in cases {
            assert_eq!(load(text), want, "{text:?}");
        }
    }

    #[test]
    fn quoted_and_block_scalars_are_strings() {
        assert_eq!(load("'123'"), s("123"));
        assert_eq!(load("\"yes\""), s("yes"));
        assert_eq!(load("\"\""), s(""));
        assert_eq!(load("|\n  2024-01-01\n"), s("2024-01-01\n"));
        assert_eq!(load(">-\n  null\n"), s("null"));
        // PyYAML resolves a scalar tagged with the bare `!` as if it were plain.
        assert_eq!(load("! 12"), Value::Int(12));
    }

    #[test]
    fn explicit_tags_are_honoured() {
        assert_eq!(load("!!str 12"), s("12"));
        assert_eq!(load("!!str"), s(""));
        assert_eq!(load("!!int \"0x1f\""), Value::Int(31));
        assert_eq!(load("!!int '0o17'"), Value::Int(15));
        assert_eq!(load("!!float '1e3'"), Value::Float(1000.0));
        assert_eq!(load("!!float 7"), Value::Float(7.0));
        assert_eq!(load("!!bool 'YeS'"), Value::Bool(true));
        assert_eq!(load("!!null 'anything'"), Value::Null);
        assert_eq!(load("!!binary AP8="), Value::Bytes(vec![0, 255]));
        assert_eq!(load("!!binary |\n  AP8=\n"), Value::Bytes(vec![0, 255]));
        assert_eq!(load("!!timestamp '2024-1-2'"), Value::Date(PyDate::parse_iso("2024-01-02").unwrap()));
        assert_eq!(load("!<tag:yaml.org,2002:str> 5"), s("5"));
        assert_eq!(load("!!seq [1]"), Value::List(vec![Value::Int(1)]));
        assert_eq!(load("!!map {a: 1}"), load("{a: 1}"));
        assert!(from_slice(b"!!bool maybe").is_err());
        assert!(from_slice(b"!!int 1.5").is_err());
        assert!(from_slice(b"!!timestamp yesterday").is_err());
        assert!(from_slice(b"!!str [1]").is_err());
        assert!(from_slice(b"!!seq 1").is_err());
    }

    #[test]
    fn python_and_unknown_tags_are_refused() {
        for text in [
            "!!python/object/apply:os.system ['echo pwned']",
            "!!python/name:os.system ''",
            "!!python/object:foo.Bar {x: 1}",
            "[1, !!python/tuple [1, 2]]",
            "a: !!python/bytes 'AA=='",
        ] {
            let err = from_slice(text.as_bytes()).unwrap_err().to_string();
            assert!(err.contains("refusing the Python-specific tag !!python/"), "{text}: {err}");
        }
        let err = from_slice(b"!custom 1").unwrap_err().to_string();
        assert!(err.contains("could not determine a constructor for the tag '!custom'"), "{err}");
        assert!(from_slice(b"<<").is_err());
        assert!(from_slice(b"[=]").is_err());
    }

    #[test]
    fn binary_decodes_as_base64_decodebytes() {
        for (text, want) in [
            ("YQ==", &b"a"[..]),
            ("YR==", b"a"),
            ("Y Q=\n=", b"a"),
            ("YQ==YQ==", b"a"),
            ("!YQ==", b"a"),
            ("YWJ=", b"ab"),
            ("YWJj", b"abc"),
            ("", b""),
        ] {
            assert_eq!(decode_base64(text).unwrap(), want, "{text:?}");
        }
        for bad in ["YQ", "YQ=", "Y===", "é"] {
            assert!(decode_base64(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn anchors_and_merge_keys() {
        assert_eq!(load("[&x {a: 1}, *x]"), load("[{a: 1}, {a: 1}]"));
        let merged = load("base: &b {a: 1, b: 2}\nother: &o {c: 3, a: 9}\nm:\n  x: 0\n  <<: [*b, *o]\n  b: 5\n");
        // Merged entries come first (earlier sources win), then the mapping's own keys.
        assert_eq!(crate::json::to_string(merged.get("m").unwrap()).unwrap(), r#"{"c": 3, "a": 1, "b": 5, "x": 0}"#);
        let single = load("b: &b {a: 1}\nm: {<<: *b, z: 2}");
        assert_eq!(crate::json::to_string(single.get("m").unwrap()).unwrap(), r#"{"a": 1, "z": 2}"#);
        // A quoted "<<" is an ordinary key.
        assert_eq!(crate::json::to_string(&load("{'<<': 1}")).unwrap(), r#"{"<<": 1}"#);
        assert!(from_slice(b"m: {<<: 1}").is_err());
        assert!(from_slice(b"[*nope]").is_err());
        // A self-reference is refused rather than looped on.
        assert!(from_slice(b"&a [*a]").is_err());
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut doc =
            String::from("a0: &a0 [\"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\"]\n");
        for i in 1..10 {
            let p = i - 1;
            let _ = writeln!(doc, "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]");
        }
        let err = from_slice(doc.as_bytes()).unwrap_err();
        assert_eq!(err, CodecError::TooManyElements { limit: MAX_ALIAS_EXPANSION });
        // A modest amount of sharing is fine.
        assert!(from_slice(b"a: &a [1, 2, 3]\nb: [*a, *a, *a]").is_ok());
    }

    #[test]
    fn billion_laughs_stops_early_within_the_limits() {
        use crate::limits::DecodeLimits;
        // The classic: 9 levels of 10 aliases, 10^9 strings from under 1 KB.
        let mut doc =
            String::from("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
        let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
        for pair in names.windows(2) {
            let refs = vec![format!("*{}", pair[0]); 10].join(",");
            doc.push_str(&format!("{}: &{} [{refs}]\n", pair[1], pair[1]));
        }
        assert!(doc.len() < 1024);
        let started = std::time::Instant::now();
        let err = from_slice_with(doc.as_bytes(), &DecodeLimits::default()).unwrap_err();
        assert_eq!(err, CodecError::TooManyElements { limit: MAX_ALIAS_EXPANSION });
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
        // A smaller value bound stops it sooner, with that bound named.
        let small = DecodeLimits { max_elements: 5000, ..DecodeLimits::default() };
        assert_eq!(from_slice_with(doc.as_bytes(), &small), Err(CodecError::TooManyElements { limit: 5000 }));
        // Aliases of one long string: few values, many bytes.
        let long = "x".repeat(10_000);
        let doc = format!("s: &s \"{long}\"\nl: [{}]\n", vec!["*s"; 1000].join(", "));
        let tight = DecodeLimits { max_decoded_bytes: 1 << 20, ..DecodeLimits::default() };
        assert_eq!(from_slice_with(doc.as_bytes(), &tight), Err(CodecError::TooLarge { limit: 1 << 20 }));
        assert!(from_slice_with(doc.as_bytes(), &DecodeLimits::default()).is_ok());
    }

    #[test]
    fn nested_anchors_pay_for_the_copies_they_keep() {
        use crate::limits::DecodeLimits;
        // 300 anchored levels around a list of 5000 values: each anchor keeps a
        // copy of everything inside it, 1.5 million values without an alias.
        let mut nested = String::new();
        for i in 0..300 {
            nested.push_str(&format!("&a{i} ["));
        }
        nested.push_str(&format!("[{}]", "1, ".repeat(5000)));
        nested.push_str(&"]".repeat(300));
        let flow = DecodeLimits::default();
        // The flow scanner stops at 255 levels; in block style it goes deeper.
        assert_eq!(from_slice_with(nested.as_bytes(), &flow), Err(CodecError::TooDeep { limit: MAX_FLOW_DEPTH }));
        let mut block = String::new();
        for i in 0..300 {
            block.push_str(&format!("{}- &a{i}\n", "  ".repeat(i)));
        }
        block.push_str(&format!("{}- [{}]\n", "  ".repeat(300), "1, ".repeat(5000)));
        let err = from_slice_with(block.as_bytes(), &flow).unwrap_err();
        assert_eq!(err, CodecError::TooManyElements { limit: MAX_ALIAS_EXPANSION });
    }

    #[test]
    fn nesting_is_bounded_for_block_and_flow_collections() {
        use crate::limits::DecodeLimits;
        let limits = DecodeLimits::default();
        // "- - - - ... x": 100 000 nested block sequences on one line.
        let block = format!("{}x", "- ".repeat(100_000));
        assert_eq!(from_slice_with(block.as_bytes(), &limits), Err(CodecError::TooDeep { limit: 512 }));
        let maps: String = (0..2000).map(|i| format!("{}k:\n", " ".repeat(i))).collect();
        assert_eq!(from_slice_with(maps.as_bytes(), &limits), Err(CodecError::TooDeep { limit: 512 }));
        let flow = "[".repeat(100_000);
        assert_eq!(from_slice_with(flow.as_bytes(), &limits), Err(CodecError::TooDeep { limit: MAX_FLOW_DEPTH }));
        let shallow = DecodeLimits { max_depth: 3, ..DecodeLimits::default() };
        assert!(from_slice_with(b"- - - x", &shallow).is_ok());
        assert_eq!(from_slice_with(b"- - - - x", &shallow), Err(CodecError::TooDeep { limit: 3 }));
        // An empty stream is one value, None.
        let none = DecodeLimits { max_elements: 0, ..DecodeLimits::default() };
        assert_eq!(from_slice_with(b"", &none), Err(CodecError::TooManyElements { limit: 0 }));
        assert_eq!(from_slice_with(b"", &shallow), Ok(Value::Null));
    }

    #[test]
    fn keys_convert_as_json_dumps_would() {
        let v = load("{1: a, 1.5: b, true: c, ~: d, 0x10: e, '1': f}");
        assert_eq!(
            crate::json::to_string(&v).unwrap(),
            r#"{"1": "f", "1.5": "b", "true": "c", "null": "d", "16": "e"}"#
        );
        assert!(from_slice(b"{2024-01-01: x}").is_err());
        assert!(from_slice(b"{[1]: x}").is_err());
        assert!(from_slice(b"? {a: 1}\n: x").is_err());
    }

    #[test]
    fn sets_and_ordered_maps() {
        assert_eq!(load("!!set {1, b, 1}"), Value::List(vec![Value::Int(1), s("b")]));
        assert_eq!(
            load("!!omap [a: 1, 2: b]"),
            Value::List(vec![Value::List(vec![s("a"), Value::Int(1)]), Value::List(vec![Value::Int(2), s("b")])])
        );
        assert_eq!(load("!!pairs\n- a: 1\n- a: 2\n"), load("[[a, 1], [a, 2]]"));
        assert!(from_slice(b"!!omap [1]").is_err());
        assert!(from_slice(b"!!omap [{a: 1, b: 2}]").is_err());
    }

    #[test]
    fn documents_and_encoding() {
        assert_eq!(load(""), Value::Null);
        assert_eq!(load("# only a comment\n"), Value::Null);
        assert_eq!(load("--- 5\n..."), Value::Int(5));
        assert_eq!(load("\u{feff}a: 1"), load("a: 1"));
        assert!(from_slice(b"--- 1\n--- 2\n").unwrap_err().to_string().contains("single document"));
        assert!(from_slice(b"\xff").is_err());
        assert!(from_slice(b"a: \x01").is_err());
        assert!(from_slice(b"[1, 2").is_err());
        assert!(from_slice(b"{a: 1").is_err());
        let deep = "[".repeat(MAX_DEPTH + 5);
        assert!(from_slice(deep.as_bytes()).is_err());
    }

    /// Bodies as PyYAML 6.0.3's `yaml.safe_dump` writes them.
    #[test]
    fn reads_what_safe_dump_writes() {
        let body = "- - 2\n  - 2\n- {}\n- callbacks: null\n  chain: null\n  chord: null\n  errbacks: null\n";
        assert_eq!(
            crate::json::to_string(&load(body)).unwrap(),
            r#"[[2, 2], {}, {"callbacks": null, "chain": null, "chord": null, "errbacks": null}]"#
        );
        let body = "b: !!binary |\n  AP8=\nbig: 1180591620717411303424\nf:\n- 1.0e+300\n- -0.0\n- .inf\n- .nan\n- 0.1\nlong: 'word word word word word word word word word word word word word word word\n  word word word word word word word word word word word word word word word '\ns: \"caf\\xE9 \\U0001F600 \\0\\a\\t\\n\\\"'\\\\ \\N\\L\"\n";
        let v = load(body);
        assert_eq!(v.get("b"), Some(&Value::Bytes(vec![0, 255])));
        assert_eq!(v.get("big"), Some(&big("1180591620717411303424")));
        assert_eq!(
            v.get("f"),
            Some(&Value::List(vec![
                Value::Float(1e300),
                Value::Float(-0.0),
                Value::Float(f64::INFINITY),
                Value::Float(f64::NAN),
                Value::Float(0.1)
            ]))
        );
        assert_eq!(v.get("long"), Some(&s(&"word ".repeat(30))));
        assert_eq!(v.get("s"), Some(&s("caf\u{e9} \u{1F600} \0\u{7}\t\n\"'\\ \u{85}\u{2028}")));
        let v = load("d: 2024-01-02\ndt: 2024-01-02 03:04:05.678901-05:00\nn: 2024-01-02 03:04:05\n");
        assert_eq!(v.get("d"), Some(&Value::Date(PyDate::parse_iso("2024-01-02").unwrap())));
        assert_eq!(v.get("dt"), Some(&dt("2024-01-02T03:04:05.678901-05:00")));
        assert_eq!(v.get("n"), Some(&dt("2024-01-02T03:04:05")));
        let v = load("colon: 'a: b'\nempty: ''\nhash: '#x'\nmulti: 'line1\n\n  line2\n\n  '\nnum: '123'\nsp: ' lead'\n'yes': 'yes'\n");
        assert_eq!(
            crate::json::to_string(&v).unwrap(),
            r##"{"colon": "a: b", "empty": "", "hash": "#x", "multi": "line1\nline2\n", "num": "123", "sp": " lead", "yes": "yes"}"##
        );
    }

    #[test]
    fn writes_flow_yaml() {
        let v = crate::json::from_str(
            r#"[[2, 2], {"k": "caf\u00e9 \"q\" \\ \n\t\u0001\u007f\u0085\u2028"}, {"callbacks": null, "f": [1e300, 0.5, -0.0, NaN, Infinity, -Infinity, true]}]"#,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(to_vec(&v).unwrap()).unwrap(),
            "[[2, 2], {\"k\": \"caf\u{e9} \\\"q\\\" \\\\ \\n\\t\\x01\\x7F\\x85\\L\"}, {\"callbacks\": null, \"f\": [1.0e+300, 0.5, -0.0, .nan, .inf, -.inf, true]}]\n"
        );
        let v = Value::List(vec![
            Value::Bytes(vec![0, 255]),
            dt("2024-01-02T03:04:05.678901-05:00"),
            dt("2024-01-02T03:04:05"),
            Value::Date(PyDate::parse_iso("2024-01-02").unwrap()),
            big("-1180591620717411303424"),
        ]);
        assert_eq!(
            String::from_utf8(to_vec(&v).unwrap()).unwrap(),
            "[!!binary \"AP8=\", !!timestamp \"2024-01-02 03:04:05.678901-05:00\", !!timestamp \"2024-01-02 03:04:05\", 2024-01-02, -1180591620717411303424]\n"
        );
    }

    #[test]
    fn round_trips() {
        let text = r##"[[1, "x", "yes", "1e3", "", "~", "null", "2024-01-01", "  padded  ", "a: b", "- x", "#c", "'q'", "\u00e9\ud83d\ude00\ufeff\uffff"], {"nested": {"deep": [[], {}]}, "n": null, "b": false, "i": -9223372036854775808, "big": 1180591620717411303424, "f": [0.1, 1e-07, 1e+16, 5e-324, -0.0, 123.456]}, {"__type__": "datetime", "__value__": "2024-01-02T03:04:05.678901+00:00"}, {"__type__": "date", "__value__": "0001-01-01"}, {"__type__": "base64", "__value__": "/wA="}]"##;
        let v = crate::json::from_str(text).unwrap();
        assert_eq!(round_trip(&v), v);
        let mut long_key = Map::new();
        long_key.insert("k".repeat(2000), Value::Int(1));
        long_key.insert("short".into(), Value::Int(2));
        let v = Value::Map(long_key);
        assert_eq!(round_trip(&v), v);
        for scalar in [Value::Null, Value::Int(0), s("plain"), Value::Float(f64::NAN), Value::Bytes(vec![])] {
            assert_eq!(round_trip(&scalar), scalar);
        }
    }

    #[test]
    fn types_without_a_safe_form_are_refused() {
        let time = Value::Time(crate::time::PyTime::parse_iso("03:04:05").unwrap());
        let uuid = Value::Uuid(uuid::Uuid::nil());
        let decimal = Value::Decimal(crate::value::Decimal::parse("1.10").unwrap());
        for (v, name) in [(time, "datetime.time"), (uuid, "UUID"), (decimal, "Decimal")] {
            let err = to_vec(&Value::List(vec![v])).unwrap_err().to_string();
            assert!(err.contains(name) && err.contains("safe_dump refuses"), "{err}");
        }
        let odd_offset = PyDateTime::parse_iso("2024-01-02T03:04:05+05:30:15").unwrap();
        assert!(to_vec(&Value::DateTime(odd_offset)).is_err());
    }

    #[test]
    fn invalid_timestamps_are_errors() {
        for bad in ["2024-13-01", "2024-02-30", "0000-01-01", "2024-01-01 25:00:00", "2024-01-01 12:00:00+24"] {
            assert!(from_slice(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn huge_integers_are_bounded() {
        let digits = "7".repeat(MAX_INT_DIGITS + 1);
        assert!(from_slice(digits.as_bytes()).is_err());
        let ok = "7".repeat(MAX_INT_DIGITS);
        assert!(matches!(load(&ok), Value::BigInt(_)));
    }
}

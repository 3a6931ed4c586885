//! Bounds on decoding what a broker delivers, so that no message, however it was
//! made, can exhaust memory or the stack, or be decoded with a serializer the
//! consumer did not accept.
//!
//! A [`DecodeLimits`] value travels with every decode of a message body
//! ([`crate::Message::decode_body_with`], [`crate::TaskMessage::from_message_with`],
//! [`crate::Envelope::from_slice_with`]). The checks run in this order, each
//! before any work the next one would do:
//!
//! 1. the content type against [`Accept`] (kombu's `accept` semantics), before
//!    anything is decompressed or parsed;
//! 2. the raw body size against [`DecodeLimits::max_body_bytes`], before
//!    decompression;
//! 3. decompression streams into a buffer that never grows past
//!    [`DecodeLimits::max_decoded_bytes`];
//! 4. parsing counts nesting ([`DecodeLimits::max_depth`]) and values
//!    ([`DecodeLimits::max_elements`]) as it goes, YAML alias copies included.

use std::fmt;

/// The largest raw or decoded body accepted by default: 64 MiB, the default of
/// the `worker_max_message_size` setting.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// The deepest nesting of lists and dicts accepted by default. Python's `json`
/// gives up near 1000 levels (its recursion limit, less the caller's frames);
/// no Celery message needs more than a few dozen.
pub const DEFAULT_MAX_DEPTH: usize = 512;

/// The hard ceiling on nesting, whatever [`DecodeLimits::max_depth`] says (so
/// a setting can lower the default, not raise it): decoding, dropping,
/// cloning, comparing and encoding a [`crate::Value`] recurse once per level.
/// At 512 levels the hungriest of them (msgpack encoding) needs about 1.5 MiB
/// of stack in a debug build and a quarter of that optimised, within the 2 MiB
/// of a tokio worker thread; at 1000 levels a debug build overflows it.
pub const MAX_DEPTH_CEILING: usize = 512;

/// The most values (every scalar, list, dict and dict key, at any depth) a
/// body may hold by default. At about 100 bytes per value in memory, a body at this bound
/// costs some 100 MB; a JSON body of 64 MiB could otherwise hold 32 million.
pub const DEFAULT_MAX_ELEMENTS: usize = 1_000_000;

/// Content types kombu always accepts, whatever `accept` says (its
/// `TRUSTED_CONTENT`): raw bytes and raw text need no deserializer.
pub const TRUSTED_CONTENT: [&str; 2] = ["application/data", "application/text"];

/// The content types a consumer accepts: Celery's `accept_content`, read as
/// kombu's `prepare_accept_content` reads it.
///
/// A name with a `/` is a mime type taken as it is (`application/json`); a
/// name without is a serializer name mapped to its mime type (`json` →
/// `application/json`, `msgpack`, `yaml`, `pickle`). A message's
/// `content_type` is then compared exactly, as kombu compares it; an empty one
/// counts as `application/data`, and [`TRUSTED_CONTENT`] always passes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accept {
    /// `None`: every content type (pickle is still refused by the codec).
    mime_types: Option<Vec<String>>,
}

/// A serializer name in `accept_content` that kombu does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no serializer named {0:?}: accept_content takes json, msgpack, yaml or a mime type such as application/json")]
pub struct UnknownSerializer(pub String);

impl Accept {
    /// Every content type celeriac can read (pickle is still refused when decoded).
    pub fn any() -> Accept {
        Accept { mime_types: None }
    }

    /// JSON only: Celery's default `accept_content = ['json']`.
    pub fn json() -> Accept {
        Accept { mime_types: Some(vec!["application/json".to_owned()]) }
    }

    /// Reads `accept_content`: serializer names or mime types, as kombu does.
    pub fn from_names<I, S>(names: I) -> Result<Accept, UnknownSerializer>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut mime_types: Vec<String> = Vec::new();
        for name in names {
            let name = name.as_ref();
            let mime = if name.contains('/') {
                name.to_owned()
            } else {
                match name {
                    "json" => "application/json",
                    "msgpack" => "application/x-msgpack",
                    "yaml" => "application/x-yaml",
                    "pickle" => "application/x-python-serialize",
                    other => return Err(UnknownSerializer(other.to_owned())),
                }
                .to_owned()
            };
            if !mime_types.contains(&mime) {
                mime_types.push(mime);
            }
        }
        Ok(Accept { mime_types: Some(mime_types) })
    }

    /// True when a message with this `content_type` may be decoded.
    pub fn allows(&self, content_type: &str) -> bool {
        let content_type = if content_type.is_empty() { "application/data" } else { content_type };
        match &self.mime_types {
            None => true,
            Some(list) => TRUSTED_CONTENT.contains(&content_type) || list.iter().any(|m| m == content_type),
        }
    }

    /// The accepted mime types; `None` when every type is accepted.
    pub fn mime_types(&self) -> Option<&[String]> {
        self.mime_types.as_deref()
    }
}

impl Default for Accept {
    /// JSON only, as Celery's default.
    fn default() -> Accept {
        Accept::json()
    }
}

impl fmt::Display for Accept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.mime_types {
            None => f.write_str("any content type"),
            Some(list) => f.write_str(&list.join(", ")),
        }
    }
}

/// The bounds a consumer decodes message bodies within. See the module
/// documentation for the order of the checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Content types that may be decoded at all (default: JSON only).
    pub accept: Accept,
    /// The largest body as it arrives, before decompression, in bytes.
    pub max_body_bytes: usize,
    /// The largest body after decompression, in bytes; YAML alias copies of
    /// strings and bytes count towards it too.
    pub max_decoded_bytes: usize,
    /// The deepest nesting of lists and dicts (a top-level list is level 1).
    /// Never more than [`MAX_DEPTH_CEILING`], whatever is set here.
    pub max_depth: usize,
    /// The most values a body may hold: every scalar, list, dict and dict key
    /// at any depth, each copy made by a YAML alias included.
    pub max_elements: usize,
}

impl Default for DecodeLimits {
    /// Celery's `accept_content` default (JSON only), 64 MiB raw and decoded,
    /// 512 levels, a million values.
    fn default() -> DecodeLimits {
        DecodeLimits {
            accept: Accept::json(),
            max_body_bytes: DEFAULT_MAX_MESSAGE_SIZE,
            max_decoded_bytes: DEFAULT_MAX_MESSAGE_SIZE,
            max_depth: DEFAULT_MAX_DEPTH,
            max_elements: DEFAULT_MAX_ELEMENTS,
        }
    }
}

impl DecodeLimits {
    /// The defaults with `accept` as the accepted content types and
    /// `max_message_size` bytes as both the raw and the decoded bound (what a
    /// worker builds from `accept_content` and `worker_max_message_size`).
    pub fn new(accept: Accept, max_message_size: usize) -> DecodeLimits {
        DecodeLimits {
            accept,
            max_body_bytes: max_message_size,
            max_decoded_bytes: max_message_size,
            ..Self::default()
        }
    }

    /// The defaults, but accepting every content type celeriac reads: for
    /// messages a process produced itself or otherwise trusts the sender of.
    pub fn any_content() -> DecodeLimits {
        DecodeLimits { accept: Accept::any(), ..Self::default() }
    }

    /// The nesting bound actually applied: [`DecodeLimits::max_depth`], at most
    /// [`MAX_DEPTH_CEILING`].
    pub fn depth(&self) -> usize {
        self.max_depth.min(MAX_DEPTH_CEILING)
    }

    /// The largest Redis envelope worth parsing: a base64 body of
    /// [`DecodeLimits::max_body_bytes`] (4/3 of it) plus as much again for
    /// headers and properties, plus 64 KiB.
    pub fn max_envelope_bytes(&self) -> usize {
        let base64 = (self.max_body_bytes / 3).saturating_mul(4).saturating_add(4);
        base64.saturating_add(self.max_body_bytes).saturating_add(64 * 1024)
    }
}

/// Why a message could not be decoded, as one word: the label of the worker's
/// decode-error metric and the start of the `x-celeriac-error` reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The content type is not in `accept_content`, or is pickle.
    ContentDisallowed,
    /// The content type is not one celeriac can read.
    UnknownContentType,
    /// The `compression` header names an unknown method.
    UnknownCompression,
    /// The compressed body is corrupt.
    DecompressionFailed,
    /// The raw body is larger than `max_body_bytes`.
    BodyTooLarge,
    /// The decompressed (or alias-expanded) body is larger than `max_decoded_bytes`.
    DecodedTooLarge,
    /// Lists and dicts nest deeper than `max_depth`.
    TooDeep,
    /// The body holds more values than `max_elements`.
    TooManyElements,
    /// The body is not valid JSON, msgpack, YAML or UTF-8 text.
    MalformedBody,
    /// The Redis list element is not a kombu envelope.
    MalformedEnvelope,
    /// The message is neither a protocol 1 nor a protocol 2 task.
    NotATask,
    /// A task header has the wrong type or an unreadable value.
    InvalidHeader,
    /// The task body does not have Celery's shape.
    InvalidBody,
    /// A canvas signature (link, chain, chord) is malformed.
    InvalidSignature,
    /// A value cannot be encoded (only when writing).
    Unencodable,
}

impl ErrorKind {
    /// Every kind, for registering metric labels up front.
    pub const ALL: [ErrorKind; 15] = [
        ErrorKind::ContentDisallowed,
        ErrorKind::UnknownContentType,
        ErrorKind::UnknownCompression,
        ErrorKind::DecompressionFailed,
        ErrorKind::BodyTooLarge,
        ErrorKind::DecodedTooLarge,
        ErrorKind::TooDeep,
        ErrorKind::TooManyElements,
        ErrorKind::MalformedBody,
        ErrorKind::MalformedEnvelope,
        ErrorKind::NotATask,
        ErrorKind::InvalidHeader,
        ErrorKind::InvalidBody,
        ErrorKind::InvalidSignature,
        ErrorKind::Unencodable,
    ];

    /// The kind as a snake_case word, e.g. `content_disallowed`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::ContentDisallowed => "content_disallowed",
            ErrorKind::UnknownContentType => "unknown_content_type",
            ErrorKind::UnknownCompression => "unknown_compression",
            ErrorKind::DecompressionFailed => "decompression_failed",
            ErrorKind::BodyTooLarge => "body_too_large",
            ErrorKind::DecodedTooLarge => "decoded_too_large",
            ErrorKind::TooDeep => "too_deep",
            ErrorKind::TooManyElements => "too_many_elements",
            ErrorKind::MalformedBody => "malformed_body",
            ErrorKind::MalformedEnvelope => "malformed_envelope",
            ErrorKind::NotATask => "not_a_task",
            ErrorKind::InvalidHeader => "invalid_header",
            ErrorKind::InvalidBody => "invalid_body",
            ErrorKind::InvalidSignature => "invalid_signature",
            ErrorKind::Unencodable => "unencodable",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counts values and nesting while a decoder builds a [`crate::Value`].
#[derive(Debug)]
pub(crate) struct Budget {
    max_depth: usize,
    max_elements: usize,
    elements: usize,
}

impl Budget {
    pub(crate) fn new(limits: &DecodeLimits) -> Budget {
        Budget { max_depth: limits.depth(), max_elements: limits.max_elements, elements: 0 }
    }

    /// Counts `n` more values; false when that passes the bound.
    pub(crate) fn take(&mut self, n: usize) -> bool {
        self.elements = self.elements.saturating_add(n);
        self.elements <= self.max_elements
    }

    /// True when `n` more values would still be within the bound (nothing is counted).
    pub(crate) fn has_room(&self, n: usize) -> bool {
        self.elements.saturating_add(n) <= self.max_elements
    }

    /// True when a container at nesting `level` (1 for the outermost) is allowed.
    pub(crate) fn depth_ok(&self, level: usize) -> bool {
        level <= self.max_depth
    }

    pub(crate) fn max_depth(&self) -> usize {
        self.max_depth
    }

    pub(crate) fn max_elements(&self) -> usize {
        self.max_elements
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_reads_names_and_mime_types_as_kombu_does() {
        let accept = Accept::from_names(["json", "application/x-msgpack"]).unwrap();
        assert_eq!(accept.mime_types().unwrap(), ["application/json", "application/x-msgpack"]);
        assert!(accept.allows("application/json"));
        assert!(accept.allows("application/x-msgpack"));
        assert!(!accept.allows("application/x-yaml"));
        assert!(!accept.allows("application/x-python-serialize"));
        // Compared exactly: kombu does not parse parameters or aliases.
        assert!(!accept.allows("json"));
        assert!(!accept.allows("application/json; charset=utf-8"));
        assert!(!accept.allows("APPLICATION/JSON"));
        // Trusted raw types always pass; an empty type is raw data.
        assert!(accept.allows("application/data"));
        assert!(accept.allows("application/text"));
        assert!(accept.allows(""));
        assert!(!accept.allows("text/plain"));
        assert_eq!(Accept::from_names(["jsn"]), Err(UnknownSerializer("jsn".into())));
        assert_eq!(Accept::from_names(["yaml", "yaml"]).unwrap().mime_types().unwrap().len(), 1);
        assert!(Accept::any().allows("application/x-yaml"));
        assert_eq!(Accept::default(), Accept::json());
    }

    #[test]
    fn defaults_and_ceiling() {
        let d = DecodeLimits::default();
        assert_eq!(
            (d.max_body_bytes, d.max_decoded_bytes, d.depth(), d.max_elements),
            (64 << 20, 64 << 20, 512, 1_000_000)
        );
        let deep = DecodeLimits { max_depth: usize::MAX, ..DecodeLimits::default() };
        assert_eq!(deep.depth(), MAX_DEPTH_CEILING);
        let huge = DecodeLimits::new(Accept::any(), usize::MAX);
        assert_eq!(huge.max_envelope_bytes(), usize::MAX);
        assert!(DecodeLimits::default().max_envelope_bytes() > (64 << 20) * 4 / 3);
    }

    #[test]
    fn every_kind_has_a_distinct_label() {
        let labels: std::collections::HashSet<_> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(labels.len(), ErrorKind::ALL.len());
    }
}

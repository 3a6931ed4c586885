//! Serializers and compression, named as kombu names them.
//!
//! A body travels as `content_type` + `content_encoding` + bytes, optionally
//! compressed (the `compression` header holds the compression's mime type). This
//! module turns those bytes into a [`Value`] and back. Pickle is recognised so it
//! can be refused with a clear error: a Rust process must never unpickle.

use std::fmt;
use std::io::{Read, Write};

use crate::limits::{DecodeLimits, ErrorKind};
use crate::value::Value;
use crate::{json, msgpack, yaml};

/// The content types a celeriac process can read or write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContentType {
    /// `application/json`, kombu's default, with its `__type__` markers.
    Json,
    /// `application/x-msgpack`.
    Msgpack,
    /// `application/x-yaml` (PyYAML `safe_dump`/`safe_load`).
    Yaml,
    /// `application/x-python-serialize`: recognised, never decoded.
    Pickle,
    /// `application/data`: raw bytes.
    Binary,
    /// `text/plain`: a raw string.
    Text,
}

impl ContentType {
    /// Looks a mime type or kombu serializer name up (`"application/json"` or `"json"`).
    pub fn parse(name: &str) -> Option<ContentType> {
        Some(match name {
            "application/json" | "json" => ContentType::Json,
            "application/x-msgpack" | "msgpack" => ContentType::Msgpack,
            "application/x-yaml" | "yaml" => ContentType::Yaml,
            "application/x-python-serialize" | "pickle" => ContentType::Pickle,
            "application/data" => ContentType::Binary,
            "text/plain" | "application/text" => ContentType::Text,
            _ => return None,
        })
    }

    /// The mime type kombu puts in `content_type`.
    pub fn mime(self) -> &'static str {
        match self {
            ContentType::Json => "application/json",
            ContentType::Msgpack => "application/x-msgpack",
            ContentType::Yaml => "application/x-yaml",
            ContentType::Pickle => "application/x-python-serialize",
            ContentType::Binary => "application/data",
            ContentType::Text => "text/plain",
        }
    }

    /// The serializer name used in Celery settings (`task_serializer = "json"`).
    pub fn serializer_name(self) -> &'static str {
        match self {
            ContentType::Json => "json",
            ContentType::Msgpack => "msgpack",
            ContentType::Yaml => "yaml",
            ContentType::Pickle => "pickle",
            ContentType::Binary => "raw",
            ContentType::Text => "raw",
        }
    }

    /// The `content_encoding` kombu pairs with this content type.
    pub fn encoding(self) -> &'static str {
        match self {
            ContentType::Json | ContentType::Yaml | ContentType::Text => "utf-8",
            ContentType::Msgpack | ContentType::Pickle | ContentType::Binary => "binary",
        }
    }
}

impl fmt::Display for ContentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.mime())
    }
}

/// Compression of a message body, as kombu's `compression` header names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    /// `application/x-gzip`: zlib's `compress()` (zlib framing, despite the name).
    Zlib,
    /// `application/x-bz2`.
    Bzip2,
    /// `application/x-lzma`: Python's `lzma.compress`, the xz container.
    Lzma,
    /// `application/zstd`.
    Zstd,
    /// `application/x-brotli`.
    Brotli,
}

impl Compression {
    /// Looks a mime type or one of kombu's aliases up (`"zlib"`, `"gzip"`, `"bzip2"`, `"xz"` ...).
    pub fn parse(name: &str) -> Option<Compression> {
        Some(match name {
            "application/x-gzip" | "zlib" | "gzip" => Compression::Zlib,
            "application/x-bz2" | "bz2" | "bzip2" | "bzip" => Compression::Bzip2,
            "application/x-lzma" | "lzma" | "xz" => Compression::Lzma,
            "application/zstd" | "zstd" | "zstandard" => Compression::Zstd,
            "application/x-brotli" | "brotli" => Compression::Brotli,
            _ => return None,
        })
    }

    /// The mime type kombu writes in the `compression` header.
    pub fn mime(self) -> &'static str {
        match self {
            Compression::Zlib => "application/x-gzip",
            Compression::Bzip2 => "application/x-bz2",
            Compression::Lzma => "application/x-lzma",
            Compression::Zstd => "application/zstd",
            Compression::Brotli => "application/x-brotli",
        }
    }

    /// Compresses a serialized body.
    pub fn compress(self, data: &[u8]) -> Result<Vec<u8>, CodecError> {
        let io = |e: std::io::Error| CodecError::Compression { compression: self, reason: e.to_string() };
        match self {
            Compression::Zlib => {
                let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
                enc.write_all(data).map_err(io)?;
                enc.finish().map_err(io)
            }
            Compression::Bzip2 => {
                let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
                enc.write_all(data).map_err(io)?;
                enc.finish().map_err(io)
            }
            Compression::Lzma => {
                let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 6);
                enc.write_all(data).map_err(io)?;
                enc.finish().map_err(io)
            }
            Compression::Zstd => zstd::encode_all(data, 3).map_err(io),
            Compression::Brotli => {
                let mut out = Vec::new();
                let params = brotli::enc::BrotliEncoderParams::default();
                brotli::BrotliCompress(&mut &data[..], &mut out, &params).map_err(io)?;
                Ok(out)
            }
        }
    }

    /// Decompresses a body, refusing output larger than `limit` bytes so a small
    /// malicious message cannot exhaust memory: the output buffer never grows
    /// past `limit` bytes, and decompression stops at the first byte beyond it.
    /// The decoders' own memory is bounded too (zstd windows up to
    /// [`ZSTD_WINDOW_LOG_MAX`], lzma/xz dictionaries up to [`LZMA_MEMLIMIT`]).
    pub fn decompress(self, data: &[u8], limit: usize) -> Result<Vec<u8>, CodecError> {
        let io = |e: std::io::Error| CodecError::Compression { compression: self, reason: e.to_string() };
        let read = match self {
            Compression::Zlib => read_bounded(flate2::read::ZlibDecoder::new(data), limit),
            Compression::Bzip2 => read_bounded(bzip2::read::BzDecoder::new(data), limit),
            Compression::Lzma => {
                // Python's lzma.decompress auto-detects the .xz and legacy .lzma formats.
                let stream = liblzma::stream::Stream::new_auto_decoder(LZMA_MEMLIMIT, 0).map_err(|e| io(e.into()))?;
                read_bounded(liblzma::read::XzDecoder::new_stream(data, stream), limit)
            }
            Compression::Zstd => {
                let mut decoder = zstd::stream::read::Decoder::with_buffer(data).map_err(io)?;
                decoder.window_log_max(ZSTD_WINDOW_LOG_MAX).map_err(io)?;
                read_bounded(decoder, limit)
            }
            Compression::Brotli => read_bounded(brotli::Decompressor::new(data, 4096), limit),
        };
        match read {
            Ok(Some(out)) => Ok(out),
            Ok(None) => Err(CodecError::TooLarge { limit }),
            Err(e) => Err(io(e)),
        }
    }
}

/// The largest zstd window (as a power of two) a body may ask the decoder for:
/// 2^27 bytes, zstd's own default bound, which every level of Python's
/// `zstandard` stays within.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 27;

/// The most memory the lzma/xz decoder may use (its dictionary): 256 MiB, four
/// times what `lzma.compress(preset=9)` needs. Python's default preset 6 uses 8 MiB.
pub const LZMA_MEMLIMIT: u64 = 256 * 1024 * 1024;

/// Reads `reader` to its end into a buffer that never holds (or reserves) more
/// than `limit` bytes; `None` when there is more than that.
fn read_bounded(mut reader: impl Read, limit: usize) -> std::io::Result<Option<Vec<u8>>> {
    const CHUNK: usize = 64 * 1024;
    let mut chunk = vec![0u8; CHUNK];
    let mut out: Vec<u8> = Vec::new();
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => return Ok(Some(out)),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let Some(needed) = out.len().checked_add(n).filter(|&needed| needed <= limit) else {
            return Ok(None);
        };
        if needed > out.capacity() {
            // Grow geometrically, as Vec would, but never past the limit.
            let target = out.capacity().saturating_mul(2).max(needed).max(CHUNK.min(limit)).min(limit);
            out.reserve_exact(target - out.len());
        }
        out.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.mime())
    }
}

/// The largest decompressed body accepted by default: 256 MiB.
pub const DEFAULT_DECOMPRESSED_LIMIT: usize = 256 * 1024 * 1024;

/// Why a body could not be decoded or encoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    /// The content type is pickle, which celeriac never decodes.
    #[error(
        "refusing to decode a pickle body (application/x-python-serialize): unpickling runs \
         arbitrary code; have the producer use task_serializer='json' (or msgpack/yaml)"
    )]
    PickleRefused,
    /// The content type is not among the accepted ones (`accept_content`);
    /// checked before anything is decompressed or parsed.
    #[error(
        "refusing to deserialize untrusted content of type {content_type:?}: accept_content allows {}; \
         have the producer use one of those serializers, or add this one to accept_content",
        accepted.join(", ")
    )]
    ContentDisallowed {
        /// The message's `content_type`, as it came.
        content_type: String,
        /// The accepted mime types.
        accepted: Vec<String>,
    },
    /// The content type is not one kombu defines.
    #[error(
        "unknown content type {0:?}: celeriac reads application/json, application/x-msgpack and application/x-yaml"
    )]
    UnknownContentType(String),
    /// The compression header names a method celeriac does not know.
    #[error("unknown compression {0:?}: celeriac reads zlib (application/x-gzip), bz2, lzma, zstd and brotli")]
    UnknownCompression(String),
    /// Decompression failed.
    #[error("cannot decompress {compression} body: {reason}")]
    Compression {
        /// The method that failed.
        compression: Compression,
        /// What the decompressor reported.
        reason: String,
    },
    /// The raw body, as it arrived, exceeds the limit; checked before decompression.
    #[error(
        "message body is {size} bytes, more than the {limit}-byte limit (worker_max_message_size); \
         send large data out of band, or raise the limit"
    )]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
        /// The body's size in bytes.
        size: usize,
    },
    /// The decompressed body (or what YAML aliases copy) exceeds the limit.
    #[error(
        "decoded body is larger than the {limit}-byte limit (a compression or alias bomb?); \
         raise worker_max_message_size if such bodies are expected"
    )]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// Lists and dicts nest deeper than the limit.
    #[error("body nests lists and dicts deeper than {limit} levels; flatten the task's arguments")]
    TooDeep {
        /// The most levels allowed.
        limit: usize,
    },
    /// The body holds more values than the limit.
    #[error(
        "body holds more than {limit} values (each copy made by a YAML alias counts); \
         send large data out of band"
    )]
    TooManyElements {
        /// The most values allowed.
        limit: usize,
    },
    /// A JSON body could not be read or written.
    #[error(transparent)]
    Json(json::JsonError),
    /// A msgpack body could not be read or written.
    #[error("msgpack: {0}")]
    Msgpack(String),
    /// A YAML body could not be read or written.
    #[error("yaml: {0}")]
    Yaml(String),
    /// The value cannot be written with the chosen content type.
    #[error("cannot encode: {0}")]
    Unencodable(String),
    /// A text body is not UTF-8.
    #[error("text/plain body is not valid UTF-8")]
    TextNotUtf8,
}

impl From<json::JsonError> for CodecError {
    /// JSON's limit errors become the format-independent ones.
    fn from(e: json::JsonError) -> CodecError {
        match e {
            json::JsonError::TooDeep { limit } => CodecError::TooDeep { limit },
            json::JsonError::TooManyElements { limit } => CodecError::TooManyElements { limit },
            other => CodecError::Json(other),
        }
    }
}

impl CodecError {
    /// What kind of failure this is, for metrics and dead-letter reasons.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CodecError::PickleRefused | CodecError::ContentDisallowed { .. } => ErrorKind::ContentDisallowed,
            CodecError::UnknownContentType(_) => ErrorKind::UnknownContentType,
            CodecError::UnknownCompression(_) => ErrorKind::UnknownCompression,
            CodecError::Compression { .. } => ErrorKind::DecompressionFailed,
            CodecError::BodyTooLarge { .. } => ErrorKind::BodyTooLarge,
            CodecError::TooLarge { .. } => ErrorKind::DecodedTooLarge,
            CodecError::TooDeep { .. } => ErrorKind::TooDeep,
            CodecError::TooManyElements { .. } => ErrorKind::TooManyElements,
            CodecError::Json(json::JsonError::Unencodable(_)) | CodecError::Unencodable(_) => ErrorKind::Unencodable,
            CodecError::Json(_) | CodecError::Msgpack(_) | CodecError::Yaml(_) | CodecError::TextNotUtf8 => {
                ErrorKind::MalformedBody
            }
        }
    }
}

/// The most values [`decode`] accepts: sixteen times the default of
/// [`DecodeLimits`], for result records and other bodies a process reads from
/// its own stores.
pub const TRUSTED_MAX_ELEMENTS: usize = 16 * crate::limits::DEFAULT_MAX_ELEMENTS;

/// Decodes a (decompressed) body of the given content type for a reader that
/// trusts the writer (result records): any content type but pickle, the default
/// nesting bound, at most [`TRUSTED_MAX_ELEMENTS`] values and
/// [`DEFAULT_DECOMPRESSED_LIMIT`] bytes of YAML alias copies. Use
/// [`decode_with`] for anything a broker delivers.
pub fn decode(content_type: ContentType, body: &[u8]) -> Result<Value, CodecError> {
    let limits = DecodeLimits {
        max_elements: TRUSTED_MAX_ELEMENTS,
        max_body_bytes: DEFAULT_DECOMPRESSED_LIMIT,
        max_decoded_bytes: DEFAULT_DECOMPRESSED_LIMIT,
        ..DecodeLimits::any_content()
    };
    decode_with(content_type, body, &limits)
}

/// Decodes a (decompressed) body of the given content type within `limits`'
/// nesting and value bounds (the content type and sizes are the caller's to
/// check; [`crate::Message::decode_body_with`] does all of it).
pub fn decode_with(content_type: ContentType, body: &[u8], limits: &DecodeLimits) -> Result<Value, CodecError> {
    match content_type {
        ContentType::Json => Ok(json::from_slice_with(body, limits)?),
        ContentType::Msgpack => msgpack::from_slice_with(body, limits),
        ContentType::Yaml => yaml::from_slice_with(body, limits),
        ContentType::Pickle => Err(CodecError::PickleRefused),
        ContentType::Binary => Ok(Value::Bytes(body.to_vec())),
        ContentType::Text => String::from_utf8(body.to_vec()).map(Value::Str).map_err(|_| CodecError::TextNotUtf8),
    }
}

/// Encodes a value with the given content type (before any compression).
pub fn encode(content_type: ContentType, value: &Value) -> Result<Vec<u8>, CodecError> {
    match content_type {
        ContentType::Json => Ok(json::to_vec(value)?),
        ContentType::Msgpack => msgpack::to_vec(value),
        ContentType::Yaml => yaml::to_vec(value),
        ContentType::Pickle => Err(CodecError::PickleRefused),
        ContentType::Binary => match value {
            Value::Bytes(b) => Ok(b.clone()),
            other => Err(CodecError::Unencodable(format!("application/data carries bytes, not {}", other.type_name()))),
        },
        ContentType::Text => match value {
            Value::Str(s) => Ok(s.as_bytes().to_vec()),
            other => Err(CodecError::Unencodable(format!("text/plain carries a str, not {}", other.type_name()))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_compression_round_trips() {
        let data = b"[[2, 2], {}, {\"callbacks\": null}]".repeat(50);
        for c in [Compression::Zlib, Compression::Bzip2, Compression::Lzma, Compression::Zstd, Compression::Brotli] {
            let packed = c.compress(&data).unwrap();
            assert_ne!(packed, data);
            assert_eq!(c.decompress(&packed, DEFAULT_DECOMPRESSED_LIMIT).unwrap(), data, "{c}");
            assert_eq!(Compression::parse(c.mime()), Some(c));
        }
    }

    #[test]
    fn decompression_bomb_is_refused() {
        let data = vec![0u8; 1 << 20];
        let packed = Compression::Zlib.compress(&data).unwrap();
        assert_eq!(Compression::Zlib.decompress(&packed, 1000), Err(CodecError::TooLarge { limit: 1000 }));
    }

    #[test]
    fn every_compression_stops_a_bomb_at_the_limit() {
        // 2 MiB of zeros packs into a few KB with every method.
        let data = vec![0u8; 2 << 20];
        for c in [Compression::Zlib, Compression::Bzip2, Compression::Lzma, Compression::Zstd, Compression::Brotli] {
            let packed = c.compress(&data).unwrap();
            assert!(packed.len() < 16 * 1024, "{c}: {} bytes", packed.len());
            let started = std::time::Instant::now();
            assert_eq!(c.decompress(&packed, 1 << 18), Err(CodecError::TooLarge { limit: 1 << 18 }), "{c}");
            assert!(started.elapsed() < std::time::Duration::from_secs(5), "{c} took {:?}", started.elapsed());
            // Exactly at the limit is fine; one byte less is not.
            assert_eq!(c.decompress(&packed, 2 << 20).map(|v| v.len()), Ok(2 << 20), "{c}");
            assert_eq!(c.decompress(&packed, (2 << 20) - 1), Err(CodecError::TooLarge { limit: (2 << 20) - 1 }));
            assert_eq!(c.decompress(&packed, 0), Err(CodecError::TooLarge { limit: 0 }), "{c}");
        }
    }

    #[test]
    fn the_output_buffer_never_reserves_past_the_limit() {
        for limit in [0, 1, 1000, 64 * 1024, 64 * 1024 + 1, 1 << 20, 3 << 20] {
            // An endless stream of zeros: refused once the limit is passed.
            assert_eq!(read_bounded(std::io::repeat(0), limit).unwrap(), None, "{limit}");
            let out = read_bounded(&vec![7u8; limit][..], limit).unwrap().unwrap();
            assert_eq!(out.len(), limit);
            assert!(out.capacity() <= limit.max(1), "{limit}: capacity {}", out.capacity());
        }
    }

    #[test]
    fn limits_are_checked_in_order_before_any_work() {
        use crate::limits::{Accept, DecodeLimits, ErrorKind};
        use crate::message::Message;
        let mut headers = crate::value::Map::new();
        headers.insert("compression".into(), Value::Str("application/x-gzip".into()));
        let msg = |content_type: &str, body: Vec<u8>| Message {
            headers: headers.clone(),
            properties: crate::value::Map::new(),
            priority: 0,
            content_type: content_type.into(),
            content_encoding: "binary".into(),
            body,
        };
        let limits = DecodeLimits { max_body_bytes: 100, ..DecodeLimits::default() };
        // Garbage that is not zlib, too large, in a type not accepted: the type is checked first.
        let kind = |m: &Message, l: &DecodeLimits| m.decode_body_with(l).unwrap_err().kind();
        let garbage = vec![0xffu8; 1000];
        assert_eq!(kind(&msg("application/x-msgpack", garbage.clone()), &limits), ErrorKind::ContentDisallowed);
        assert_eq!(
            kind(&msg("application/x-python-serialize", garbage.clone()), &limits),
            ErrorKind::ContentDisallowed
        );
        let any = DecodeLimits { accept: Accept::any(), ..limits.clone() };
        let err = msg("application/x-python-serialize", garbage.clone()).decode_body_with(&any).unwrap_err();
        assert_eq!(err, CodecError::PickleRefused.into());
        // Then the raw size, before decompressing.
        let err = msg("application/json", garbage.clone()).decode_body_with(&limits).unwrap_err();
        assert_eq!(err, CodecError::BodyTooLarge { limit: 100, size: 1000 }.into());
        assert_eq!(err.kind(), ErrorKind::BodyTooLarge);
        // Then decompression.
        assert_eq!(kind(&msg("application/json", vec![0xff; 50]), &limits), ErrorKind::DecompressionFailed);
        let bomb = Compression::Zlib.compress(&vec![b' '; 1 << 20]).unwrap();
        let small = DecodeLimits { max_body_bytes: 1 << 20, max_decoded_bytes: 4096, ..DecodeLimits::default() };
        let err = msg("application/json", bomb).decode_body_with(&small).unwrap_err();
        assert_eq!(err, CodecError::TooLarge { limit: 4096 }.into());
        assert_eq!(err.kind(), ErrorKind::DecodedTooLarge);
        // The message names what was refused and what is accepted.
        let err = msg("application/x-yaml", b"[]".to_vec()).decode_body_with(&DecodeLimits::default()).unwrap_err();
        assert_eq!(
            err,
            CodecError::ContentDisallowed {
                content_type: "application/x-yaml".into(),
                accepted: vec!["application/json".into()]
            }
            .into()
        );
        let text = err.reason();
        assert!(
            text.starts_with(
                "content_disallowed: refusing to deserialize untrusted content of type \"application/x-yaml\""
            ),
            "{text}"
        );
        assert!(text.contains("accept_content allows application/json"), "{text}");
        // Unknown compression and unknown content types have their own kinds.
        let mut odd = msg("application/json", b"[]".to_vec());
        odd.headers.insert("compression".into(), Value::Str("application/x-lz4".into()));
        assert_eq!(kind(&odd, &limits), ErrorKind::UnknownCompression);
        let any = DecodeLimits::any_content();
        assert_eq!(kind(&msg("application/x-unknown", b"[]".to_vec()), &any), ErrorKind::UnknownContentType);
        // Raw bytes are trusted (kombu's TRUSTED_CONTENT), an empty type is raw bytes.
        let mut raw = msg("", b"abc".to_vec());
        raw.headers.clear();
        assert_eq!(raw.decode_body_with(&DecodeLimits::default()).unwrap(), Value::Bytes(b"abc".to_vec()));
    }

    #[test]
    fn every_codec_error_has_a_kind() {
        use crate::limits::ErrorKind;
        let cases = [
            (CodecError::PickleRefused, ErrorKind::ContentDisallowed),
            (CodecError::TextNotUtf8, ErrorKind::MalformedBody),
            (CodecError::Msgpack("x".into()), ErrorKind::MalformedBody),
            (CodecError::Yaml("x".into()), ErrorKind::MalformedBody),
            (CodecError::Json(json::JsonError::NotUtf8(0)), ErrorKind::MalformedBody),
            (CodecError::from(json::JsonError::TooDeep { limit: 1 }), ErrorKind::TooDeep),
            (CodecError::from(json::JsonError::TooManyElements { limit: 1 }), ErrorKind::TooManyElements),
            (CodecError::Unencodable("x".into()), ErrorKind::Unencodable),
            (CodecError::UnknownCompression("x".into()), ErrorKind::UnknownCompression),
        ];
        for (err, kind) in cases {
            assert_eq!(err.kind(), kind, "{err}");
        }
    }

    #[test]
    fn garbage_is_an_error() {
        for c in [Compression::Zlib, Compression::Bzip2, Compression::Lzma, Compression::Zstd, Compression::Brotli] {
            assert!(c.decompress(b"\x00\x01garbage", 1000).is_err(), "{c}");
        }
    }

    #[test]
    fn pickle_is_refused_with_a_clear_error() {
        let err = decode(ContentType::Pickle, b"\x80\x04K\x01.").unwrap_err();
        assert_eq!(err, CodecError::PickleRefused);
        assert!(err.to_string().contains("task_serializer='json'"));
    }
}

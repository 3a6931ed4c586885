//! Stored values as bytes: the result serializer, and Celery 5.7's in-band
//! compression marker.
//!
//! A stored record has nowhere to keep a `compression` header, so Celery 5.7
//! (`result_compression`) writes compressed records as
//! `b"\x00celery-compressed\x00" + <compression mime> + b"\x00" + <compressed body>`.
//! Records are read by the marker, not by the setting, so a reader without
//! compression still reads what a compressing writer stored, and the reverse.

use celeriac_protocol::codec::{self, DEFAULT_DECOMPRESSED_LIMIT};
use celeriac_protocol::{CodecError, Compression, ContentType, Value};

/// The marker in front of a compressed record.
pub const COMPRESSED_PAYLOAD_MAGIC: &[u8] = b"\x00celery-compressed\x00";

/// Encodes and decodes stored values with the configured serializer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadCodec {
    /// The result serializer.
    pub serializer: ContentType,
    /// Compression for what is written.
    pub compression: Option<Compression>,
}

impl PayloadCodec {
    /// Serializes (and compresses, if configured) a value, as `Backend.encode`.
    pub fn encode(&self, value: &Value) -> Result<Vec<u8>, CodecError> {
        let body = codec::encode(self.serializer, value)?;
        match self.compression {
            None => Ok(body),
            Some(compression) => {
                let packed = compression.compress(&body)?;
                let mime = compression.mime().as_bytes();
                let mut out = Vec::with_capacity(COMPRESSED_PAYLOAD_MAGIC.len() + mime.len() + 1 + packed.len());
                out.extend_from_slice(COMPRESSED_PAYLOAD_MAGIC);
                out.extend_from_slice(mime);
                out.push(0);
                out.extend_from_slice(&packed);
                Ok(out)
            }
        }
    }

    /// Decompresses a marked payload and deserializes it, as `Backend.decode`.
    pub fn decode(&self, payload: &[u8]) -> Result<Value, CodecError> {
        match payload.strip_prefix(COMPRESSED_PAYLOAD_MAGIC) {
            None => codec::decode(self.serializer, payload),
            Some(rest) => {
                let nul = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
                let mime = String::from_utf8_lossy(&rest[..nul]);
                let compression = Compression::parse(&mime)
                    .ok_or_else(|| CodecError::UnknownCompression(mime.clone().into_owned()))?;
                let body =
                    compression.decompress(rest.get(nul + 1..).unwrap_or_default(), DEFAULT_DECOMPRESSED_LIMIT)?;
                codec::decode(self.serializer, &body)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use celeriac_protocol::json;

    #[test]
    fn plain_json_is_the_serializer_output() {
        let codec = PayloadCodec { serializer: ContentType::Json, compression: None };
        let value = json::from_str(r#"{"status": "SUCCESS", "result": 4}"#).unwrap();
        assert_eq!(codec.encode(&value).unwrap(), br#"{"status": "SUCCESS", "result": 4}"#);
        assert_eq!(codec.decode(br#"{"status": "SUCCESS", "result": 4}"#).unwrap(), value);
    }

    #[test]
    fn compressed_records_carry_the_marker_and_read_without_the_setting() {
        let value = json::from_str(r#"{"result": [1, 2, 3], "status": "SUCCESS"}"#).unwrap();
        let writer = PayloadCodec { serializer: ContentType::Json, compression: Some(Compression::Zlib) };
        let packed = writer.encode(&value).unwrap();
        assert!(packed.starts_with(b"\x00celery-compressed\x00application/x-gzip\x00"), "{packed:?}");
        let reader = PayloadCodec { serializer: ContentType::Json, compression: None };
        assert_eq!(reader.decode(&packed).unwrap(), value);
        let mut unknown = COMPRESSED_PAYLOAD_MAGIC.to_vec();
        unknown.extend_from_slice(b"application/x-rar\x00xx");
        assert!(matches!(reader.decode(&unknown), Err(CodecError::UnknownCompression(m)) if m == "application/x-rar"));
        assert!(reader.decode(b"not json").is_err());
    }
}

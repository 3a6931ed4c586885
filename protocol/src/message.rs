//! kombu's transport-neutral message: headers, properties, and a serialized body.
//!
//! Both transports carry the same thing. On Redis it is wrapped in the JSON
//! envelope of [`crate::envelope`]; on AMQP the headers become
//! `application_headers` and the properties become basic properties. Nothing here
//! knows about tasks; [`crate::task`] reads a task out of a `Message`.

use crate::codec::{self, CodecError, Compression, ContentType};
use crate::error::clip;
use crate::error::ProtocolError;
use crate::limits::DecodeLimits;
use crate::value::{Map, Value};

/// A message as kombu's `Producer.publish` makes it and a consumer receives it.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// Application headers (for a task: `task`, `id`, `eta`, ...; `compression` if compressed).
    pub headers: Map,
    /// Publisher properties in the order they were given (`correlation_id`,
    /// `reply_to`, `delivery_mode`, `expiration`, and any extras such as `origin`);
    /// the priority is kept apart in [`Message::priority`].
    pub properties: Map,
    /// The message priority (0-255; kombu always sends one, default 0).
    pub priority: u8,
    /// The body's mime type, e.g. `application/json`.
    pub content_type: String,
    /// The body's text encoding, e.g. `utf-8` or `binary`.
    pub content_encoding: String,
    /// The serialized body, compressed when `headers.compression` is set.
    pub body: Vec<u8>,
}

impl Message {
    /// Serializes `value` with `content_type`, compresses it if asked, and records
    /// both the way kombu does (`compression` header holds the mime type).
    pub fn with_body(
        mut headers: Map,
        properties: Map,
        priority: u8,
        content_type: ContentType,
        compression: Option<Compression>,
        value: &Value,
    ) -> Result<Message, CodecError> {
        let mut body = codec::encode(content_type, value)?;
        if let Some(c) = compression {
            body = c.compress(&body)?;
            headers.insert("compression".into(), Value::Str(c.mime().into()));
        }
        Ok(Message {
            headers,
            properties,
            priority,
            content_type: content_type.mime().to_owned(),
            content_encoding: content_type.encoding().to_owned(),
            body,
        })
    }

    /// The content type, if celeriac knows it.
    pub fn content_type(&self) -> Result<ContentType, CodecError> {
        ContentType::parse(&self.content_type).ok_or_else(|| CodecError::UnknownContentType(clip(&self.content_type)))
    }

    /// The compression named by the `compression` header, if any.
    pub fn compression(&self) -> Result<Option<Compression>, CodecError> {
        match self.headers.get("compression") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Str(name)) => {
                Compression::parse(name).map(Some).ok_or_else(|| CodecError::UnknownCompression(clip(name)))
            }
            Some(other) => Err(CodecError::UnknownCompression(clip(&format!("{other:?}")))),
        }
    }

    /// Decompresses and deserializes the body with any content type celeriac
    /// reads, refusing pickle and bodies larger than `limit` bytes raw or
    /// decompressed, and the default nesting and value bounds of
    /// [`DecodeLimits`]. A consumer of broker messages should use
    /// [`Message::decode_body_with`] and its `accept_content`.
    pub fn decode_body(&self, limit: usize) -> Result<Value, ProtocolError> {
        self.decode_body_with(&DecodeLimits {
            max_body_bytes: limit,
            max_decoded_bytes: limit,
            ..DecodeLimits::any_content()
        })
    }

    /// Decompresses and deserializes the body within `limits`, checking in this
    /// order, each before the work the next would do: the content type against
    /// `limits.accept` (an empty one is kombu's `application/data`), pickle, the
    /// raw size, the compression header, the decompressed size (decompression
    /// stops at the limit), then nesting and values while parsing.
    pub fn decode_body_with(&self, limits: &DecodeLimits) -> Result<Value, ProtocolError> {
        if !limits.accept.allows(&self.content_type) {
            return Err(CodecError::ContentDisallowed {
                content_type: clip(&self.content_type),
                accepted: limits.accept.mime_types().map(<[String]>::to_vec).unwrap_or_default(),
            }
            .into());
        }
        let content_type = if self.content_type.is_empty() { ContentType::Binary } else { self.content_type()? };
        if content_type == ContentType::Pickle {
            return Err(CodecError::PickleRefused.into());
        }
        if self.body.len() > limits.max_body_bytes {
            return Err(CodecError::BodyTooLarge { limit: limits.max_body_bytes, size: self.body.len() }.into());
        }
        let value = match self.compression()? {
            Some(c) => codec::decode_with(content_type, &c.decompress(&self.body, limits.max_decoded_bytes)?, limits)?,
            None => codec::decode_with(content_type, &self.body, limits)?,
        };
        Ok(value)
    }

    /// The `correlation_id` property (the task id for task messages).
    pub fn correlation_id(&self) -> Option<&str> {
        self.properties.get("correlation_id").and_then(Value::as_str)
    }

    /// The `reply_to` property (the client's reply queue, used by the rpc backend).
    pub fn reply_to(&self) -> Option<&str> {
        self.properties.get("reply_to").and_then(Value::as_str)
    }

    /// The `delivery_mode` property: 2 persistent (tasks), 1 transient (events, replies).
    pub fn delivery_mode(&self) -> Option<i64> {
        self.properties.get("delivery_mode").and_then(Value::as_i64)
    }
}

//! The error every decoding step of a message can end in.
//!
//! A worker that gets one of these must not ack the message away: it rejects it
//! to a dead-letter queue (or requeues it) and logs the reason, which is this
//! error's text.

use crate::codec::CodecError;
use crate::limits::ErrorKind;

/// Why bytes from a broker are not a usable Celery message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProtocolError {
    /// The Redis list element is not kombu's JSON envelope.
    #[error("not a kombu message envelope: {0}")]
    Envelope(String),
    /// The Redis list element is larger than any envelope of a body within
    /// the limit can be; checked before it is parsed.
    #[error(
        "message is {size} bytes, more than the {limit} bytes the envelope of a body within \
         worker_max_message_size can take; send large data out of band, or raise the limit"
    )]
    EnvelopeTooLarge {
        /// The limit in bytes ([`crate::DecodeLimits::max_envelope_bytes`]).
        limit: usize,
        /// The element's size in bytes.
        size: usize,
    },
    /// The body could not be decompressed or deserialized.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// Neither a protocol v2 message (no `task` header) nor a v1 body with `task`.
    #[error("not a Celery task message: {0}")]
    NotATask(String),
    /// A header has the wrong type or an unreadable value.
    #[error("invalid header {name:?}: {reason}")]
    Header {
        /// The header's name.
        name: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The body does not have the shape Celery gives it.
    #[error("invalid task body: {0}")]
    Body(String),
    /// A canvas signature (link, chain, chord) is malformed.
    #[error("invalid signature: {0}")]
    Signature(String),
}

impl ProtocolError {
    /// What kind of failure this is: the worker's metric label and the start of
    /// the `x-celeriac-error` reason of a dead-lettered message.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ProtocolError::Envelope(_) => ErrorKind::MalformedEnvelope,
            ProtocolError::EnvelopeTooLarge { .. } => ErrorKind::BodyTooLarge,
            ProtocolError::Codec(e) => e.kind(),
            ProtocolError::NotATask(_) => ErrorKind::NotATask,
            ProtocolError::Header { .. } => ErrorKind::InvalidHeader,
            ProtocolError::Body(_) => ErrorKind::InvalidBody,
            ProtocolError::Signature(_) => ErrorKind::InvalidSignature,
        }
    }

    /// The reason to record with a dead-lettered message (`x-celeriac-error`):
    /// the kind, a colon, and this error's text.
    /// At most [`MAX_REASON`] characters, however large what the message
    /// carried.
    pub fn reason(&self) -> String {
        let reason = format!("{}: {self}", self.kind());
        match reason.char_indices().nth(MAX_REASON) {
            Some((at, _)) => format!("{}...", &reason[..at]),
            None => reason,
        }
    }

    pub(crate) fn header(name: &str, reason: impl Into<String>) -> ProtocolError {
        ProtocolError::Header { name: clip(name), reason: clip(&reason.into()) }
    }
}

/// Longest [`ProtocolError::reason`], in characters.
pub const MAX_REASON: usize = 500;

/// At most 200 characters of a text from the network, for error messages:
/// a hostile value must not turn into a megabyte log line.
pub(crate) fn clip(text: &str) -> String {
    match text.char_indices().nth(200) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}

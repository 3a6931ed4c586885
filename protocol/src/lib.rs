//! Celery's wire formats, and nothing else: no sockets, no files, no clocks
//! beyond what a caller passes in.
//!
//! Every other celeriac crate touches message bytes only through this crate's
//! typed model:
//! - [`value`] and [`time`]: the data Python sends (unbounded ints, bytes,
//!   datetimes, UUIDs, Decimals) with insertion-ordered maps;
//! - [`json`], [`msgpack`], [`yaml`] and [`codec`]: kombu's serializers and
//!   compression; pickle is recognised and refused;
//! - [`limits`]: what a consumer accepts (`accept_content`) and the bounds on
//!   size, nesting and values every decode of a delivered message runs within;
//! - [`message`]: kombu's transport-neutral message (headers, properties, body);
//! - [`envelope`]: the JSON envelope kombu's Redis transport pushes onto lists;
//! - [`task`] and [`signature`]: Celery task messages, protocol v2 (and v1, read
//!   and upgraded), with canvas signatures;
//! - [`result`]: the records result backends store;
//! - [`serde_value`]: task arguments into Rust types and results back, via serde.

pub mod codec;
pub mod envelope;
pub mod error;
pub mod event;
pub mod json;
pub mod limits;
pub mod message;
pub mod msgpack;
pub mod result;
pub mod serde_value;
pub mod signature;
pub mod task;
pub mod time;
pub mod value;
pub mod yaml;

pub use codec::{CodecError, Compression, ContentType};
pub use envelope::Envelope;
pub use error::ProtocolError;
pub use limits::{Accept, DecodeLimits, ErrorKind};
pub use message::Message;
pub use result::{ExceptionInfo, GroupMeta, ResultMeta, ResultTuple, State};
pub use serde_value::{from_value, to_value, ValueError};
pub use signature::Signature;
pub use task::{TaskHeaders, TaskMessage};

pub use time::{PyDate, PyDateTime, PyTime};
pub use value::{BigInt, Decimal, Map, Value};

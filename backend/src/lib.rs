//! Result backends for celeriac: Celery 5.7's Redis result store, shared with
//! Python Celery so that `AsyncResult.get()` reads what a Rust worker stored and
//! the reverse.
//!
//! - [`options`]: `result_backend` URLs (`redis://`, `rediss://`,
//!   `redis+socket://`, `sentinel://`) and the `result_*` settings;
//! - [`RedisBackend`]: storing task records (never over a stored SUCCESS),
//!   reading them, waiting for them over one shared pub/sub connection, group
//!   records;
//! - [`chord`]: the native chord join (`.j/.t/.s/.d/.c` keys), interoperable
//!   with Python workers completing parts of the same chord;
//! - [`ResultHandle`]: an `AsyncResult` for one task id;
//! - [`payload`]: the serializer and Celery 5.7's compressed-record marker;
//! - [`rpc`]: the `rpc://` backend, results sent as messages to the client's
//!   reply queue on RabbitMQ, as Celery's `RPCBackend`.
//!
//! The record formats themselves are in [`celeriac_protocol::result`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), celeriac_backend::BackendError> {
//! use celeriac_backend::RedisBackend;
//! use celeriac_protocol::{result::ResultMeta, time::PyDateTime, Value};
//!
//! let backend = RedisBackend::from_url("redis://localhost:6379/0").await?;
//! backend.store(&ResultMeta::success("task-id", Value::Int(4), PyDateTime::now_utc())).await?;
//! let value = backend.result("task-id").get(Some(std::time::Duration::from_secs(5))).await;
//! # Ok(()) }
//! ```

pub mod backend;
pub mod chord;
mod connection;
mod consumer;
pub mod error;
pub mod handle;
pub mod options;
pub mod payload;
pub mod rpc;

pub use backend::{RedisBackend, StoreOutcome};
pub use chord::{chord_error, ChordClaim, ChordFailure, ChordOutcome, ChordReady};
pub use error::BackendError;
pub use handle::{GetError, ResultHandle, TaskFailed};
pub use options::{BackendOptions, CertReqs, Endpoint, RetryPolicy, TlsOptions, TransportOptions};
pub use payload::PayloadCodec;
pub use rpc::{is_rpc_url, RpcBackend};

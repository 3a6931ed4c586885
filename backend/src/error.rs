//! The one error type of this crate, with messages that say what to change.

use std::time::Duration;

use celeriac_protocol::result::ResultError;
use celeriac_protocol::CodecError;

/// Why a result-backend operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The result backend URL cannot be used.
    #[error("invalid result backend URL {url}: {reason}")]
    InvalidUrl {
        /// The URL, with its password masked.
        url: String,
        /// What is wrong and what to write instead.
        reason: String,
    },
    /// A setting has a value the backend cannot use.
    #[error("invalid result backend setting {setting}: {reason}")]
    InvalidSetting {
        /// The setting's Celery name (`result_serializer`, `ssl_ca_certs`, ...).
        setting: &'static str,
        /// What is wrong and what to write instead.
        reason: String,
    },
    /// A TLS file (CA bundle, client certificate or key) could not be read.
    #[error("cannot read the {what} {path}: {source}")]
    TlsFile {
        /// Which file (`ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile`).
        what: &'static str,
        /// Its path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No connection to Redis could be made.
    #[error("cannot connect to the result backend {url}: {source}; is Redis running and reachable?")]
    Connect {
        /// The URL, with its password masked.
        url: String,
        /// What redis reported.
        source: redis::RedisError,
    },
    /// A Redis command failed.
    #[error("result backend {op} on {key:?} failed: {source}")]
    Redis {
        /// The operation (`GET`, `store`, `chord join`, ...).
        op: &'static str,
        /// The key it was working on.
        key: String,
        /// What redis reported.
        source: redis::RedisError,
    },
    /// A stored record could not be decoded with the configured serializer.
    #[error(
        "cannot decode the record at {key:?} with result_serializer {serializer:?}: {source}; \
         do all workers and clients use the same result_serializer?"
    )]
    Decode {
        /// The key the record came from (or the channel it was published on).
        key: String,
        /// The configured serializer's name.
        serializer: &'static str,
        /// What the codec reported.
        source: CodecError,
    },
    /// A decoded record does not have Celery's shape.
    #[error("the record at {key:?} is not a Celery result record: {source}")]
    Record {
        /// The key the record came from.
        key: String,
        /// What was wrong with it.
        source: ResultError,
    },
    /// A value could not be encoded with the configured serializer.
    #[error("cannot encode the record for {key:?} with result_serializer {serializer:?}: {source}")]
    Encode {
        /// The key the record was meant for.
        key: String,
        /// The configured serializer's name.
        serializer: &'static str,
        /// What the codec reported.
        source: CodecError,
    },
    /// The encoded record is larger than Redis accepts.
    #[error("the record for {key:?} is {size} bytes, more than Redis's 512 MiB limit; return less data from the task")]
    TooLarge {
        /// The key the record was meant for.
        key: String,
        /// Its encoded size in bytes.
        size: usize,
    },
    /// A task or group id was empty.
    #[error("{what} must not be empty")]
    EmptyId {
        /// Which id (`task_id`, `group_id`).
        what: &'static str,
    },
    /// A task did not become ready in time.
    #[error("timed out after {timeout:?} waiting for the result of task {task_id}")]
    Timeout {
        /// The task waited for.
        task_id: String,
        /// How long was waited.
        timeout: Duration,
    },
    /// The `rpc://` backend could not send a result over the broker.
    #[error("cannot send the result over RabbitMQ (rpc:// backend): {0}")]
    Rpc(String),
}

impl BackendError {
    /// Whether the error is a lost or refused connection (worth retrying once
    /// Redis is back), as opposed to bad data or a bad setting.
    pub fn is_connection(&self) -> bool {
        match self {
            BackendError::Connect { .. } => true,
            BackendError::Redis { source, .. } => is_retryable(source),
            _ => false,
        }
    }
}

/// The shared connection code's errors, in the backend's words.
impl From<celeriac_redisconn::Error> for BackendError {
    fn from(e: celeriac_redisconn::Error) -> Self {
        use celeriac_redisconn::Error;
        match e {
            Error::Url { url, problem } => BackendError::InvalidUrl { url, reason: problem.to_string() },
            Error::NotSentinel { ref url, .. } => BackendError::InvalidUrl { url: url.clone(), reason: e.to_string() },
            Error::CertReqs(_) => BackendError::InvalidSetting { setting: "ssl_cert_reqs", reason: e.to_string() },
            Error::TlsFile { option, path, source } => {
                BackendError::TlsFile { what: option, path: path.display().to_string(), source }
            }
            Error::HalfClientCert => BackendError::InvalidSetting { setting: "ssl_certfile", reason: e.to_string() },
            Error::NoMasterName => BackendError::InvalidSetting {
                setting: "master_name",
                reason: "a sentinel:// result backend needs result_backend_transport_options = \
                         {\"master_name\": \"<the Sentinel service name>\"}"
                    .into(),
            },
            Error::Client { url, source } => BackendError::Connect { url, source },
        }
    }
}

/// Errors worth retrying: the connection broke, was refused or timed out,
/// or the server asked to come back later (see
/// [`celeriac_redisconn::is_transient`], shared with the broker).
pub(crate) fn is_retryable(err: &redis::RedisError) -> bool {
    celeriac_redisconn::is_transient(err)
}

//! The broker's error type: what went wrong, and what a person can do about it.

use std::time::Duration;

/// Everything a broker operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker URL or an option is not usable.
    #[error("invalid broker configuration: {0}")]
    Config(String),

    /// A TLS file named in the options could not be read.
    #[error("cannot read the TLS {what} file {path}: {source}; check the ssl_* options of the broker URL")]
    TlsFile {
        /// Which file (`CA certificates`, `client certificate`, `client key`).
        what: &'static str,
        /// Its path.
        path: String,
        /// Why it could not be read.
        source: std::io::Error,
    },

    /// Redis could not be reached, or the connection broke.
    #[error("cannot talk to Redis at {url}: {source}; is the server up and reachable?")]
    Connection {
        /// The broker URL, password masked.
        url: String,
        /// The client's error.
        source: redis::RedisError,
    },

    /// Redis refused the credentials (`AUTH`) or the ACL user lacks a permission.
    #[error("Redis at {url} refused us: {source}; check the user and password in the broker URL and the user's ACL")]
    Auth {
        /// The broker URL, password masked.
        url: String,
        /// The server's answer.
        source: redis::RedisError,
    },

    /// Redis answered a command with an error.
    #[error("Redis command {command} failed: {source}")]
    Command {
        /// What we were doing.
        command: &'static str,
        /// The server's answer.
        source: redis::RedisError,
    },

    /// An operation kept failing on transient errors for longer than allowed.
    #[error("{operation} did not succeed within {waited:?}; last error: {last}")]
    GaveUp {
        /// What we were doing.
        operation: &'static str,
        /// How long we retried.
        waited: Duration,
        /// The last error seen.
        last: Box<BrokerError>,
    },

    /// A message could not be turned into the Redis envelope, or read from it.
    #[error(transparent)]
    Protocol(#[from] celeriac_protocol::ProtocolError),

    /// A popped list element is not a kombu envelope.
    #[error(
        "undecodable message on queue {queue:?}: {reason}{}",
        if *.dead_lettered { " (moved to the dead-letter queue)" } else { "" }
    )]
    Undecodable {
        /// The queue it came from.
        queue: String,
        /// What is wrong, as one word (the protocol's error kind, e.g.
        /// `body_too_large`, `malformed_envelope`): a metric label.
        kind: &'static str,
        /// Why it could not be read.
        reason: String,
        /// The element as it was stored.
        raw: Vec<u8>,
        /// Whether it was moved to the configured dead-letter queue (otherwise
        /// it is only in this error, or still in `unacked` if it had a tag).
        dead_lettered: bool,
    },

    /// Publishing to the anonymous exchange needs a routing key (the queue name).
    #[error("cannot publish to the anonymous exchange without a routing key; give the queue name as routing key")]
    NoRoutingKey,

    /// The delivery was already acked, rejected or requeued.
    #[error("delivery {tag} was already {how}; a delivery is settled once")]
    AlreadySettled {
        /// Its delivery tag.
        tag: String,
        /// How it was settled.
        how: &'static str,
    },

    /// The consumer was closed.
    #[error("the consumer is closed")]
    Closed,

    /// RabbitMQ could not be reached, or the connection or channel broke.
    #[error("cannot talk to RabbitMQ at {url}: {source}; is the broker up and reachable?")]
    Amqp {
        /// The broker URL, password masked.
        url: String,
        /// The client's error.
        source: lapin::Error,
    },

    /// RabbitMQ refused an operation (and closed the channel it came on):
    /// a declaration that differs from the existing queue or exchange
    /// (`PRECONDITION_FAILED`), a missing queue, a refused permission.
    #[error("RabbitMQ refused {operation}: {code} {text}{}", refusal_hint(*.code))]
    AmqpRefused {
        /// What we were doing.
        operation: String,
        /// The AMQP reply code (406, 404, 403, ...).
        code: u16,
        /// The broker's reply text.
        text: String,
    },

    /// A delivery's channel closed before it was settled: RabbitMQ has put
    /// the message back already, so it is not settled on another channel.
    #[error(
        "delivery {tag} came on a channel that has closed; RabbitMQ redelivers the message, so it is not settled here"
    )]
    ChannelGone {
        /// Its delivery tag (empty when no delivery is concerned).
        tag: String,
    },

    /// A held delivery is no longer this consumer's: the visibility timeout
    /// handed it to another consumer, or a newer delivery of the message
    /// holds it. It must not run or be settled here.
    #[error("delivery {tag} is no longer held by this consumer ({why}); it is not run or settled here")]
    NotHeld {
        /// Its delivery tag.
        tag: String,
        /// What happened to it.
        why: &'static str,
    },

    /// RabbitMQ did not take a publish (a negative publisher confirm).
    #[error("RabbitMQ did not accept a message published to {exchange:?} with routing key {routing_key:?} (nack); it was not stored, send it again")]
    Nacked {
        /// The exchange.
        exchange: String,
        /// The routing key.
        routing_key: String,
    },
}

/// What to do about an AMQP refusal.
fn refusal_hint(code: u16) -> &'static str {
    match code {
        406 => "; the queue or exchange exists with other arguments: make task_queues (queue_arguments, x-max-priority, x-queue-type) match how it was declared, or delete it",
        404 => "; declare it first (task_create_missing_queues) or check its name",
        403 => "; the user lacks a permission on this vhost",
        _ => "",
    }
}

impl BrokerError {
    /// Whether the error says a held delivery is no longer this consumer's
    /// (restored to another, its channel closed, handed back): it must not
    /// run or be settled here.
    pub fn delivery_lost(&self) -> bool {
        matches!(
            self,
            BrokerError::NotHeld { .. } | BrokerError::ChannelGone { .. } | BrokerError::AlreadySettled { .. }
        )
    }

    /// Whether retrying (after reconnecting) may succeed: lost connections,
    /// timeouts, a server still loading its data, a failover in progress
    /// (RabbitMQ nacks publishes to a quorum queue while it elects a new
    /// leader: the message was not stored, and sending it again is right).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            BrokerError::Connection { .. }
                | BrokerError::Amqp { .. }
                | BrokerError::ChannelGone { .. }
                | BrokerError::Nacked { .. }
        )
    }

    /// Sorts a Redis error into [`BrokerError::Auth`], [`BrokerError::Connection`]
    /// (transient) or [`BrokerError::Command`].
    pub(crate) fn from_redis(url: &str, command: &'static str, source: redis::RedisError) -> BrokerError {
        if is_auth_redis(&source) {
            BrokerError::Auth { url: url.to_owned(), source }
        } else if is_transient_redis(&source) {
            BrokerError::Connection { url: url.to_owned(), source }
        } else {
            BrokerError::Command { command, source }
        }
    }
}

/// The shared connection code's errors, in the broker's words.
impl From<celeriac_redisconn::Error> for BrokerError {
    fn from(e: celeriac_redisconn::Error) -> Self {
        use celeriac_redisconn::{Error, UrlProblem};
        BrokerError::Config(match e {
            Error::Url { url, problem } => match problem {
                UrlProblem::BadEscape(near) => format!("bad percent escape in the broker URL near {near:?}"),
                UrlProblem::InvalidUtf8 => "the broker URL decodes to invalid UTF-8".into(),
                UrlProblem::NoScheme => format!("cannot parse broker URL {url}: expected scheme://..."),
                UrlProblem::UnclosedBracket => format!("cannot parse broker URL {url}: unclosed [ in the host"),
                UrlProblem::JunkAfterHost => format!("cannot parse broker URL {url}: junk after the host"),
                UrlProblem::BadPort(_) => format!("cannot parse broker URL {url}: the port is not a number"),
            },
            Error::NotSentinel { scheme, .. } => format!("cannot mix {scheme}:// with sentinel:// in one broker URL"),
            Error::CertReqs(value) => {
                format!("unknown ssl_cert_reqs {:?}; use required, optional or none", value.to_ascii_lowercase())
            }
            Error::TlsFile { option, path, source } => {
                let what = match option {
                    "ssl_ca_certs" => "CA certificates",
                    "ssl_certfile" => "client certificate",
                    _ => "client key",
                };
                return BrokerError::TlsFile { what, path: path.display().to_string(), source };
            }
            Error::HalfClientCert => "ssl_certfile and ssl_keyfile must be given together".into(),
            Error::NoMasterName => "'master_name' transport option must be specified for sentinel://".into(),
            Error::Client { url, source } => format!("{url}: {source}"),
        })
    }
}

/// Whether a Redis client error means "the connection is gone or not ready yet".
pub(crate) fn is_transient_redis(e: &redis::RedisError) -> bool {
    celeriac_redisconn::is_transient(e)
}

/// Whether a Redis error is an authentication or ACL refusal.
impl From<celeriac_protocol::CodecError> for BrokerError {
    fn from(e: celeriac_protocol::CodecError) -> BrokerError {
        BrokerError::Protocol(e.into())
    }
}

pub(crate) fn is_auth_redis(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    matches!(e.kind(), ErrorKind::AuthenticationFailed | ErrorKind::Server(ServerErrorKind::NoPerm))
        || e.code().is_some_and(|c| c == "NOAUTH" || c == "WRONGPASS" || c == "NOPERM")
}

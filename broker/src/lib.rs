//! Broker transports for celeriac, behind one [`Broker`]/[`Consumer`]/[`Delivery`] API.
//!
//! - [`RedisBroker`]: Redis exactly as kombu 5.7 uses it: list per queue with
//!   priority sub-queues, `_kombu.binding.*` sets, fanout over PUB/SUB, and ack
//!   emulation in `unacked`/`unacked_index` with the visibility-timeout sweep, so
//!   Python and Rust workers consume the same queues and restore each other's
//!   messages after a crash;
//! - [`MemoryBroker`]: the same semantics in memory, for unit tests;
//! - [`AmqpBroker`]: AMQP 0-9-1 (RabbitMQ) through lapin, with kombu's
//!   topology, qos, quorum queues and native delayed delivery;
//!
//! Each implements [`Transport`] (and its consumers' settling), which
//! [`Broker`] wraps. The crate moves [`celeriac_protocol::Message`]s and never
//! looks inside a body. Modules: [`options`] (URL and transport options), [`keys`] (Redis key
//! names), [`topic`] (topic routing), [`exchange`], [`backoff`], and the
//! consumer/delivery types.

pub mod amqp;
pub mod backoff;
mod broker;
mod consumer;
mod delivery;
pub mod error;
pub mod exchange;
pub mod keys;
pub mod memory;
pub mod options;
pub mod producer;
pub mod redis;
mod subscription;
pub mod topic;
pub mod transport;
mod window;

pub use amqp::{AmqpBroker, AmqpOptions};
pub use broker::Broker;
pub use consumer::{Consumer, ConsumerControl};
pub use delivery::{Delivery, ParkedDelivery, SettleOutcome, Settlement};
pub use error::BrokerError;
pub use exchange::ExchangeKind;
pub use memory::MemoryBroker;
pub use options::{CertReqs, FanoutPrefix, QueueOrderStrategy, RedisEndpoint, RedisOptions, Secret, TlsOptions};
pub use producer::{Expires, Outgoing, Producer, ProducerConfig, SendOptions};
pub use redis::{RedisBroker, RestoreOutcome};
pub use subscription::{FanoutMessage, Subscription};
pub use transport::{BrokerFuture, Transport};

/// The current Unix time in seconds (what kombu's `time.time()` gives).
pub(crate) fn now_secs() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<T: Send + Sync>() {}

    #[test]
    fn handles_move_between_tasks_and_threads() {
        send_sync::<Broker>();
        send_sync::<RedisBroker>();
        send_sync::<MemoryBroker>();
        send_sync::<AmqpBroker>();
        send_sync::<Consumer>();
        send_sync::<Delivery>();
        send_sync::<Subscription>();
        send_sync::<BrokerError>();
    }
}

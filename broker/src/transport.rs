//! The transport interface: what a broker (Redis, AMQP, in memory, ...) must
//! offer so the worker, beat, producer and CLI can use it through
//! [`crate::Broker`] without knowing which one the URL chose.
//!
//! Two traits, both object safe:
//! - [`Transport`]: publish, declare exchanges and queues, consume with a
//!   prefetch window, subscribe to a broadcast (fanout) or topic exchange,
//!   queue length/purge/delete;
//! - `Settle` (crate-private): how the transport acks, rejects, requeues and hands back the
//!   deliveries a consumer holds. A [`crate::Delivery`] and a
//!   [`crate::Consumer`] carry one as a trait object, so neither names a
//!   transport.
//!
//! Adding a broker means one new module implementing both traits, plus the
//! URL scheme in [`crate::Broker::from_url`].

use std::any::Any;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use celeriac_protocol::Message;

use crate::consumer::Consumer;
use crate::delivery::Settlement;
use crate::error::BrokerError;
use crate::exchange::ExchangeKind;
use crate::subscription::Subscription;
use crate::window::{Held, Window};

/// A boxed, sendable future returning `Result<T, BrokerError>`: what the
/// traits' async operations return (they must be object safe).
pub type BrokerFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, BrokerError>> + Send + 'a>>;

/// A broker transport (see the module docs). Implementations are cheap
/// handles sharing their connections; [`crate::Broker`] holds one in an `Arc`.
pub trait Transport: Send + Sync + Debug + 'static {
    /// The broker URL, password masked.
    fn masked_url(&self) -> String;

    /// Declares (or, on Redis, records for this process) an exchange of `kind`.
    fn declare_exchange(&self, name: &str, kind: ExchangeKind);

    /// Declares `queue` and binds it to `exchange` with `routing_key`.
    fn declare_queue<'a>(&'a self, queue: &'a str, exchange: &'a str, routing_key: &'a str) -> BrokerFuture<'a, ()>;

    /// Publishes `message` to `exchange` with `routing_key`.
    fn publish<'a>(&'a self, exchange: &'a str, routing_key: &'a str, message: &'a Message) -> BrokerFuture<'a, ()>;

    /// The queues a publish to `exchange` with `routing_key` would reach, as
    /// far as the transport can tell (empty: nobody is bound).
    fn bound_queues<'a>(&'a self, exchange: &'a str, routing_key: &'a str) -> BrokerFuture<'a, Vec<String>>;

    /// Messages waiting in `queue`.
    fn queue_len<'a>(&'a self, queue: &'a str) -> BrokerFuture<'a, u64>;

    /// Empties `queue`; returns how many messages were removed.
    fn purge<'a>(&'a self, queue: &'a str) -> BrokerFuture<'a, u64>;

    /// Deletes `queue` and its bindings.
    fn delete_queue<'a>(&'a self, queue: &'a str) -> BrokerFuture<'a, ()>;

    /// A consumer of `queues` with `prefetch` (0 = unlimited); spawns its
    /// tasks on the current Tokio runtime.
    fn consumer(&self, queues: &[String], prefetch: usize) -> Consumer;

    /// Subscribes to a broadcast exchange (remote control's fanout, the
    /// events topic exchange) with `binding_key`.
    fn subscribe<'a>(&'a self, exchange: &'a str, binding_key: &'a str) -> BrokerFuture<'a, Subscription>;

    /// [`Transport::subscribe`] through a queue named `queue`, where the
    /// transport has queues (a worker's `<node>.celery.pidbox` on AMQP);
    /// others subscribe as [`Transport::subscribe`] does.
    fn subscribe_queue<'a>(
        &'a self,
        exchange: &'a str,
        binding_key: &'a str,
        queue: &'a str,
    ) -> BrokerFuture<'a, Subscription> {
        let _ = queue;
        self.subscribe(exchange, binding_key)
    }

    /// Restores messages unacked for longer than the visibility timeout
    /// (transports whose broker redelivers by itself return 0).
    fn restore_visible(&self) -> BrokerFuture<'_, usize> {
        Box::pin(async { Ok(0) })
    }

    /// Connections lost and replaced since start.
    fn reconnects(&self) -> u64 {
        0
    }

    /// Settlements waiting for the broker to come back.
    fn deferred_settlements(&self) -> usize {
        0
    }

    /// The transport as `Any`, for callers that need a transport's own API
    /// (beat's Redis lease on the broker's Redis).
    fn as_any(&self) -> &dyn Any;
}

/// How a transport settles what a consumer holds (see the module docs).
/// `held` is what the consumer's window recorded for the delivery.
pub(crate) trait Settle: Send + Sync + Debug + 'static {
    /// The message is done: remove it for good.
    fn ack<'a>(&'a self, held: &'a Held) -> BrokerFuture<'a, ()>;

    /// Drop the message without requeueing it.
    fn reject<'a>(&'a self, held: &'a Held) -> BrokerFuture<'a, ()>;

    /// Put the message back on its queue, redelivered.
    fn requeue<'a>(&'a self, held: &'a Held) -> BrokerFuture<'a, ()>;

    /// The message is still being worked on (a long-held ETA task).
    fn extend<'a>(&'a self, window: &'a Window, seq: u64, held: &'a Held) -> BrokerFuture<'a, ()>;

    /// Hands a settlement that failed to a background retrier; false if the
    /// transport has none (or it is full).
    fn defer(&self, _held: Held, _how: Settlement) -> bool {
        false
    }

    /// Hands every held delivery back to the broker (consumer shutdown);
    /// returns how many went back.
    fn restore_all<'a>(&'a self, held: &'a [(u64, Held)]) -> BrokerFuture<'a, usize>;
}

/// What a consumer and its deliveries use to settle.
pub(crate) type Settler = Arc<dyn Settle>;

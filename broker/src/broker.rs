//! [`Broker`]: one type over the transports, so the worker, beat and CLI need
//! not know which one the configuration chose.

use celeriac_protocol::Message;

use crate::consumer::Consumer;
use crate::error::BrokerError;
use crate::exchange::ExchangeKind;
use crate::memory::MemoryBroker;
use crate::redis::{RedisBroker, Subscription};

/// A broker connection of any transport; cheap to clone.
#[derive(Clone, Debug)]
pub enum Broker {
    /// Redis, exactly as kombu uses it.
    Redis(RedisBroker),
    /// In memory, for tests.
    Memory(MemoryBroker),
}

impl Broker {
    /// A broker for a URL: `memory://` for the in-memory broker, else Redis
    /// (`redis://`, `rediss://`, `redis+socket://`, `sentinel://`). Connects lazily.
    pub fn from_url(url: &str) -> Result<Broker, BrokerError> {
        if url.starts_with("memory://") {
            return Ok(Broker::Memory(MemoryBroker::default()));
        }
        Ok(Broker::Redis(RedisBroker::from_url(url)?))
    }

    /// The URL, password masked.
    pub fn masked_url(&self) -> String {
        match self {
            Broker::Redis(b) => b.masked_url().to_owned(),
            Broker::Memory(_) => "memory://".to_owned(),
        }
    }

    /// Records an exchange's type for this process.
    pub fn declare_exchange(&self, name: &str, kind: ExchangeKind) {
        match self {
            Broker::Redis(b) => b.declare_exchange(name, kind),
            Broker::Memory(b) => b.declare_exchange(name, kind),
        }
    }

    /// Binds `queue` to `exchange` with `routing_key`.
    pub async fn declare_queue(&self, queue: &str, exchange: &str, routing_key: &str) -> Result<(), BrokerError> {
        match self {
            Broker::Redis(b) => b.declare_queue(queue, exchange, routing_key).await,
            Broker::Memory(b) => {
                b.declare_queue(queue, exchange, routing_key);
                Ok(())
            }
        }
    }

    /// Publishes `message` to `exchange` with `routing_key`.
    pub async fn publish(&self, exchange: &str, routing_key: &str, message: &Message) -> Result<(), BrokerError> {
        match self {
            Broker::Redis(b) => b.publish(exchange, routing_key, message).await,
            Broker::Memory(b) => b.publish(exchange, routing_key, message),
        }
    }

    /// The queues a publish to `exchange` with `routing_key` would reach,
    /// ignoring the dead-letter queue (empty: nobody is bound).
    pub async fn bound_queues(&self, exchange: &str, routing_key: &str) -> Result<Vec<String>, BrokerError> {
        match self {
            Broker::Redis(b) => b.bound_queues(exchange, routing_key).await,
            Broker::Memory(b) => Ok(b.bound_queues(exchange, routing_key)),
        }
    }

    /// Connections lost and replaced since start (0 for the in-memory broker).
    pub fn reconnects(&self) -> u64 {
        match self {
            Broker::Redis(b) => b.reconnects(),
            Broker::Memory(_) => 0,
        }
    }

    /// Settlements (acks, rejects, requeues) waiting for the broker to come
    /// back (see [`crate::Delivery::settle`]); 0 for the in-memory broker.
    pub fn deferred_settlements(&self) -> usize {
        match self {
            Broker::Redis(b) => b.deferred_settlements(),
            Broker::Memory(_) => 0,
        }
    }

    /// Publishes a Celery event on the `celeryev` exchange (declare it as a
    /// fanout first, as Celery does on Redis).
    pub async fn publish_event(&self, event: &celeriac_protocol::event::Event) -> Result<(), BrokerError> {
        let message = event.to_message()?;
        self.publish(celeriac_protocol::event::EVENT_EXCHANGE, &event.routing_key(), &message).await
    }

    /// Publishes several task events of node `hostname` as one `task.multi`
    /// message (one event goes out alone), as a Python worker flushes its buffer.
    pub async fn publish_events(
        &self,
        hostname: &str,
        events: &[celeriac_protocol::event::Event],
    ) -> Result<(), BrokerError> {
        match events {
            [] => Ok(()),
            [one] => self.publish_event(one).await,
            many => {
                let message = celeriac_protocol::event::batch_message(hostname, many)?;
                self.publish(celeriac_protocol::event::EVENT_EXCHANGE, "task.multi", &message).await
            }
        }
    }

    /// Messages waiting in `queue`.
    pub async fn queue_len(&self, queue: &str) -> Result<u64, BrokerError> {
        match self {
            Broker::Redis(b) => b.queue_len(queue).await,
            Broker::Memory(b) => Ok(b.queue_len(queue)),
        }
    }

    /// Empties `queue`; returns how many messages were removed.
    pub async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        match self {
            Broker::Redis(b) => b.purge(queue).await,
            Broker::Memory(b) => Ok(b.purge(queue)),
        }
    }

    /// Deletes `queue` and its bindings.
    pub async fn delete_queue(&self, queue: &str) -> Result<(), BrokerError> {
        match self {
            Broker::Redis(b) => b.delete_queue(queue).await,
            Broker::Memory(b) => {
                b.delete_queue(queue);
                Ok(())
            }
        }
    }

    /// A consumer of `queues` with `prefetch` (0 = unlimited); call it from
    /// within a Tokio runtime (it spawns its fetch task there).
    pub fn consumer(&self, queues: &[String], prefetch: usize) -> Consumer {
        match self {
            Broker::Redis(b) => b.consumer(queues, prefetch),
            Broker::Memory(b) => b.consumer(queues, prefetch),
        }
    }

    /// Subscribes to a fanout exchange.
    pub async fn subscribe(&self, exchange: &str, binding_key: &str) -> Result<Subscription, BrokerError> {
        match self {
            Broker::Redis(b) => b.subscribe(exchange, binding_key).await,
            Broker::Memory(b) => Ok(b.subscribe(exchange, binding_key)),
        }
    }

    /// Restores messages unacked for longer than the visibility timeout.
    pub async fn restore_visible(&self) -> Result<usize, BrokerError> {
        match self {
            Broker::Redis(b) => b.restore_visible().await,
            Broker::Memory(b) => Ok(b.restore_visible()),
        }
    }
}

impl From<RedisBroker> for Broker {
    fn from(b: RedisBroker) -> Self {
        Broker::Redis(b)
    }
}

impl From<MemoryBroker> for Broker {
    fn from(b: MemoryBroker) -> Self {
        Broker::Memory(b)
    }
}

//! [`Broker`]: one handle over any [`Transport`], so the worker, beat and CLI
//! need not know which one the configuration chose.

use std::sync::Arc;

use celeriac_protocol::Message;

use crate::amqp::AmqpBroker;
use crate::consumer::Consumer;
use crate::error::BrokerError;
use crate::exchange::ExchangeKind;
use crate::memory::MemoryBroker;
use crate::redis::RedisBroker;
use crate::subscription::Subscription;
use crate::transport::Transport;

/// A broker connection of any transport; cheap to clone (clones share the
/// transport and its connections).
#[derive(Clone, Debug)]
pub struct Broker {
    transport: Arc<dyn Transport>,
}

impl Broker {
    /// A broker over `transport`.
    pub fn new(transport: impl Transport) -> Broker {
        Broker { transport: Arc::new(transport) }
    }

    /// A broker over a shared transport.
    pub fn from_transport(transport: Arc<dyn Transport>) -> Broker {
        Broker { transport }
    }

    /// A Redis broker (the constructor's name is kept from when `Broker` was an enum).
    #[allow(non_snake_case)]
    pub fn Redis(broker: RedisBroker) -> Broker {
        Broker::new(broker)
    }

    /// An in-memory broker (the constructor's name is kept from when `Broker` was an enum).
    #[allow(non_snake_case)]
    pub fn Memory(broker: MemoryBroker) -> Broker {
        Broker::new(broker)
    }

    /// A broker for a URL: `memory://` for the in-memory broker; `amqp://`,
    /// `amqps://` (and `pyamqp://`, failover lists `amqp://h1;amqp://h2`) for
    /// RabbitMQ; else Redis (`redis://`, `rediss://`, `redis+socket://`,
    /// `sentinel://`). Connects lazily.
    pub fn from_url(url: &str) -> Result<Broker, BrokerError> {
        if url.starts_with("memory://") {
            return Ok(Broker::new(MemoryBroker::default()));
        }
        if crate::amqp::is_amqp_url(url) {
            return Ok(Broker::new(AmqpBroker::from_url(url)?));
        }
        Ok(Broker::new(RedisBroker::from_url(url)?))
    }

    /// The transport.
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.transport
    }

    /// The Redis transport, when this broker is Redis.
    pub fn as_redis(&self) -> Option<&RedisBroker> {
        self.transport.as_any().downcast_ref()
    }

    /// The in-memory transport, when this broker is one.
    pub fn as_memory(&self) -> Option<&MemoryBroker> {
        self.transport.as_any().downcast_ref()
    }

    /// The AMQP transport, when this broker is RabbitMQ.
    pub fn as_amqp(&self) -> Option<&AmqpBroker> {
        self.transport.as_any().downcast_ref()
    }

    /// The URL, password masked.
    pub fn masked_url(&self) -> String {
        self.transport.masked_url()
    }

    /// Declares an exchange (on Redis: records its type for this process).
    pub fn declare_exchange(&self, name: &str, kind: ExchangeKind) {
        self.transport.declare_exchange(name, kind);
    }

    /// Declares `queue` and binds it to `exchange` with `routing_key`.
    pub async fn declare_queue(&self, queue: &str, exchange: &str, routing_key: &str) -> Result<(), BrokerError> {
        self.transport.declare_queue(queue, exchange, routing_key).await
    }

    /// Publishes `message` to `exchange` with `routing_key`.
    pub async fn publish(&self, exchange: &str, routing_key: &str, message: &Message) -> Result<(), BrokerError> {
        self.transport.publish(exchange, routing_key, message).await
    }

    /// The queues a publish to `exchange` with `routing_key` would reach,
    /// ignoring the dead-letter queue (empty: nobody is bound).
    pub async fn bound_queues(&self, exchange: &str, routing_key: &str) -> Result<Vec<String>, BrokerError> {
        self.transport.bound_queues(exchange, routing_key).await
    }

    /// Connections lost and replaced since start (0 for the in-memory broker).
    pub fn reconnects(&self) -> u64 {
        self.transport.reconnects()
    }

    /// Settlements (acks, rejects, requeues) waiting for the broker to come
    /// back (see [`crate::Delivery::settle`]); 0 for the in-memory broker.
    pub fn deferred_settlements(&self) -> usize {
        self.transport.deferred_settlements()
    }

    /// Publishes a Celery event on the `celeryev` exchange (declare it first:
    /// as a fanout on Redis, as Celery does; AMQP declares it as a topic).
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
        self.transport.queue_len(queue).await
    }

    /// Empties `queue`; returns how many messages were removed.
    pub async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        self.transport.purge(queue).await
    }

    /// Deletes `queue` and its bindings.
    pub async fn delete_queue(&self, queue: &str) -> Result<(), BrokerError> {
        self.transport.delete_queue(queue).await
    }

    /// A consumer of `queues` with `prefetch` (0 = unlimited); call it from
    /// within a Tokio runtime (it spawns its fetch task there).
    pub fn consumer(&self, queues: &[String], prefetch: usize) -> Consumer {
        self.transport.consumer(queues, prefetch)
    }

    /// Subscribes to a broadcast exchange (remote control's fanout, events).
    pub async fn subscribe(&self, exchange: &str, binding_key: &str) -> Result<Subscription, BrokerError> {
        self.transport.subscribe(exchange, binding_key).await
    }

    /// Subscribes through a queue named `queue` where the transport has
    /// queues (AMQP: a worker's `<node>.celery.pidbox`, as kombu names it);
    /// elsewhere the same as [`Broker::subscribe`].
    pub async fn subscribe_queue(
        &self,
        exchange: &str,
        binding_key: &str,
        queue: &str,
    ) -> Result<Subscription, BrokerError> {
        self.transport.subscribe_queue(exchange, binding_key, queue).await
    }

    /// Restores messages unacked for longer than the visibility timeout
    /// (Redis; other brokers redeliver by themselves and return 0).
    pub async fn restore_visible(&self) -> Result<usize, BrokerError> {
        self.transport.restore_visible().await
    }
}

impl From<RedisBroker> for Broker {
    fn from(b: RedisBroker) -> Self {
        Broker::new(b)
    }
}

impl From<MemoryBroker> for Broker {
    fn from(b: MemoryBroker) -> Self {
        Broker::new(b)
    }
}

impl From<AmqpBroker> for Broker {
    fn from(b: AmqpBroker) -> Self {
        Broker::new(b)
    }
}

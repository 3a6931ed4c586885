//! The Redis transport, identical in Redis to kombu's (`kombu/transport/redis.py`).
//!
//! - [`RedisBroker`]: publish (anonymous, direct, topic, fanout exchanges),
//!   queue declaration with kombu's bindings, length, purge, delete, the
//!   visibility sweep, fanout subscriptions, consumers;
//! - `consumer`: the fetch task (atomic pop-and-record script, `BRPOP` wait);
//! - `acks`: acks settled in batches (one script call for all acks waiting);
//! - `restore`: ack, requeue, restore and the visibility sweep;
//! - `pubsub`: fanout subscriptions;
//! - `connection` and `scripts`: connections and the Lua scripts.

mod acks;
mod connection;
mod consumer;
mod deferred;
mod pubsub;
mod restore;
mod scripts;
mod settle;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use celeriac_protocol::{Envelope, Message};

use crate::backoff::Backoff;
use crate::consumer::Consumer;
use crate::error::BrokerError;
use crate::exchange::{self, Binding, ExchangeKind, ExchangeRegistry};
use crate::keys::KeySpace;
use crate::options::RedisOptions;
use crate::topic;

/// Kept here for callers that import them from the Redis module.
pub use crate::subscription::{FanoutMessage, Subscription};
use deferred::DeferredKind;
pub use restore::RestoreOutcome;
pub(crate) use settle::RedisSettler;

use connection::{Connector, SharedConnection};
use scripts::Scripts;

/// How long to keep retrying an operation on transient errors.
#[derive(Clone, Copy, Debug)]
pub(crate) enum RetryLimit {
    /// At most this many attempts.
    Attempts(u32),
    /// Until this much time has passed.
    For(Duration),
}

/// The shared state behind a [`RedisBroker`] and its consumers and deliveries.
pub(crate) struct Inner {
    pub options: RedisOptions,
    pub keys: KeySpace,
    pub connector: Arc<Connector>,
    pub conn: SharedConnection,
    pub registry: ExchangeRegistry,
    pub scripts: Scripts,
    /// Acks settled in batches.
    pub acks: acks::AckBatcher,
    /// Settlements waiting for Redis to come back.
    pub deferred: deferred::Deferred,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisInner").field("url", &self.connector.url()).finish_non_exhaustive()
    }
}

/// The current time as kombu writes it into `unacked_index` (`time.time()`,
/// formatted as Python's `repr(float)`).
pub(crate) fn now_score() -> String {
    celeriac_protocol::json::python_float_repr(now_secs())
}

pub(crate) use crate::now_secs;

impl Inner {
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.options.reconnect_backoff_min, self.options.reconnect_backoff_max)
    }

    /// Runs `f` until it succeeds, fails for good, or the limit is reached;
    /// transient failures are retried after a backoff.
    pub async fn retrying<T, F, Fut>(&self, what: &'static str, limit: RetryLimit, mut f: F) -> Result<T, BrokerError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, BrokerError>>,
    {
        let start = Instant::now();
        let mut backoff = self.backoff();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let error = match f().await {
                Ok(v) => return Ok(v),
                Err(e) if !e.is_transient() => return Err(e),
                Err(e) => e,
            };
            let delay = backoff.next_delay();
            let exhausted = match limit {
                RetryLimit::Attempts(n) => attempts >= n.max(1),
                RetryLimit::For(d) => start.elapsed() + delay > d,
            };
            if exhausted {
                return Err(BrokerError::GaveUp { operation: what, waited: start.elapsed(), last: Box::new(error) });
            }
            tracing::warn!(error = %error, retry_in = ?delay, "{what} failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// Runs a script on the shared connection.
    pub async fn eval<T: redis::FromRedisValue>(
        &self,
        what: &'static str,
        script: &redis::Script,
        keys: &[&str],
        args: &[&[u8]],
    ) -> Result<T, BrokerError> {
        self.conn
            .run(what, |mut conn| async move {
                let mut invocation = script.prepare_invoke();
                for key in keys {
                    invocation.key(*key);
                }
                for arg in args {
                    invocation.arg(*arg);
                }
                invocation.invoke_async(&mut conn).await
            })
            .await
    }

    /// kombu's `_lookup(exchange, routing_key)`: the queues a message goes to.
    /// With `deliver`, a topic exchange never routes to the dead-letter queue
    /// (`TopicExchange.deliver` filters it out).
    pub async fn lookup(&self, exchange: &str, routing_key: &str, deliver: bool) -> Result<Vec<String>, BrokerError> {
        self.lookup_with(exchange, routing_key, deliver, self.options.deadletter_queue.as_deref()).await
    }

    /// [`Inner::lookup`] with an explicit dead-letter queue (`None`: unrouted
    /// messages match nothing).
    pub async fn lookup_with(
        &self,
        exchange: &str,
        routing_key: &str,
        deliver: bool,
        deadletter: Option<&str>,
    ) -> Result<Vec<String>, BrokerError> {
        if exchange.is_empty() {
            return Ok(exchange::route_anonymous(routing_key, deadletter));
        }
        let kind = self.registry.kind_of(exchange);
        let key = self.keys.binding_key(exchange);
        let members: Vec<String> = self
            .conn
            .run("SMEMBERS", |mut conn| async move { redis::cmd("SMEMBERS").arg(&key).query_async(&mut conn).await })
            .await?;
        let bindings = members.iter().filter_map(|member| {
            let parsed = self.keys.parse_binding_member(member);
            if parsed.is_none() {
                tracing::warn!(exchange, member = member.as_str(), "ignoring a malformed binding member");
            }
            parsed
        });
        Ok(exchange::route(kind, bindings, routing_key, deadletter, deliver))
    }
}

/// A connection to a Redis broker, shared by clones (see the module docs).
#[derive(Clone, Debug)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

impl RedisBroker {
    /// A broker for `options`; connects lazily, on first use.
    pub fn new(options: RedisOptions) -> Result<RedisBroker, BrokerError> {
        options.validate()?;
        let connector = Arc::new(Connector::new(&options)?);
        let timeout = options
            .socket_timeout
            .or_else(|| (!options.health_check_interval.is_zero()).then_some(options.health_check_interval));
        let conn = SharedConnection::new(connector.clone(), timeout);
        Ok(RedisBroker {
            inner: Arc::new(Inner {
                keys: KeySpace::new(&options),
                options,
                connector,
                conn,
                registry: ExchangeRegistry::default(),
                scripts: Scripts::new(),
                acks: acks::AckBatcher::default(),
                deferred: deferred::Deferred::default(),
            }),
        })
    }

    /// A broker for `options`, checked with a `PING` (as kombu does when it
    /// opens a channel).
    pub async fn connect(options: RedisOptions) -> Result<RedisBroker, BrokerError> {
        let broker = RedisBroker::new(options)?;
        broker.ping().await?;
        Ok(broker)
    }

    /// A broker for a URL with default transport options (see [`RedisOptions::from_url`]).
    pub fn from_url(url: &str) -> Result<RedisBroker, BrokerError> {
        RedisBroker::new(RedisOptions::from_url(url)?)
    }

    /// The options in use.
    pub fn options(&self) -> &RedisOptions {
        &self.inner.options
    }

    /// The key names in use.
    pub fn keys(&self) -> &KeySpace {
        &self.inner.keys
    }

    /// The broker URL with the password masked.
    pub fn masked_url(&self) -> &str {
        self.inner.connector.url()
    }

    /// Settlements waiting for Redis to come back (see [`crate::Delivery::settle`]).
    pub fn deferred_settlements(&self) -> usize {
        self.inner.deferred.len()
    }

    /// Checks the server answers.
    pub async fn ping(&self) -> Result<(), BrokerError> {
        self.inner
            .conn
            .run("PING", |mut conn| async move { redis::cmd("PING").query_async::<String>(&mut conn).await })
            .await
            .map(drop)
    }

    /// Records an exchange's type for this process (kombu keeps exchanges in
    /// memory only; undeclared exchanges are `direct`).
    pub fn declare_exchange(&self, name: &str, kind: ExchangeKind) {
        self.inner.registry.declare(name, kind);
    }

    /// The type this process gives `exchange`.
    pub fn exchange_kind(&self, exchange: &str) -> ExchangeKind {
        self.inner.registry.kind_of(exchange)
    }

    /// Binds `queue` to `exchange` with `routing_key`, as kombu's `queue_bind`:
    /// `SADD _kombu.binding.<exchange>` and `_kombu.binding_permanent.<exchange>`
    /// the member `<routing_key>\x06\x16<pattern>\x06\x16<queue>` (pattern only
    /// for topic exchanges). Nothing is written for the anonymous exchange.
    pub async fn declare_queue(&self, queue: &str, exchange: &str, routing_key: &str) -> Result<(), BrokerError> {
        if exchange.is_empty() {
            return Ok(());
        }
        let pattern = match self.inner.registry.kind_of(exchange) {
            ExchangeKind::Topic => topic::key_to_pattern(routing_key),
            ExchangeKind::Direct | ExchangeKind::Fanout => String::new(),
        };
        let member = self.inner.keys.binding_member(routing_key, &pattern, queue);
        let (key, permanent) = (self.inner.keys.binding_key(exchange), self.inner.keys.binding_permanent_key(exchange));
        self.inner
            .retrying(
                "declaring a queue binding",
                RetryLimit::Attempts(self.inner.options.publish_connect_retries),
                || {
                    let (key, permanent, member) = (&key, &permanent, &member);
                    self.inner.conn.run("SADD", move |mut conn| async move {
                        redis::pipe()
                            .atomic()
                            .cmd("SADD")
                            .arg(key)
                            .arg(member)
                            .ignore()
                            .cmd("SADD")
                            .arg(permanent)
                            .arg(member)
                            .ignore()
                            .exec_async(&mut conn)
                            .await
                    })
                },
            )
            .await?;
        self.inner.registry.add_binding(
            queue,
            Binding { exchange: exchange.to_owned(), routing_key: routing_key.to_owned(), pattern },
        );
        Ok(())
    }

    /// Removes one binding (`SREM` from both binding sets).
    pub async fn unbind_queue(&self, queue: &str, exchange: &str, routing_key: &str) -> Result<(), BrokerError> {
        let pattern = match self.inner.registry.kind_of(exchange) {
            ExchangeKind::Topic => topic::key_to_pattern(routing_key),
            _ => String::new(),
        };
        let binding = Binding { exchange: exchange.to_owned(), routing_key: routing_key.to_owned(), pattern };
        self.srem_binding(queue, &binding).await?;
        self.inner.registry.remove_binding(queue, &binding);
        Ok(())
    }

    async fn srem_binding(&self, queue: &str, b: &Binding) -> Result<(), BrokerError> {
        let member = self.inner.keys.binding_member(&b.routing_key, &b.pattern, queue);
        let (key, permanent) =
            (self.inner.keys.binding_key(&b.exchange), self.inner.keys.binding_permanent_key(&b.exchange));
        self.inner
            .conn
            .run("SREM", |mut conn| async move {
                redis::pipe()
                    .cmd("SREM")
                    .arg(&key)
                    .arg(&member)
                    .ignore()
                    .cmd("SREM")
                    .arg(&permanent)
                    .arg(&member)
                    .ignore()
                    .exec_async(&mut conn)
                    .await
            })
            .await
    }

    /// Deletes a queue as kombu's `queue_delete`: removes the bindings this
    /// process made for it and `DEL`s all its priority lists.
    pub async fn delete_queue(&self, queue: &str) -> Result<(), BrokerError> {
        for binding in self.inner.registry.take_bindings(queue) {
            self.srem_binding(queue, &binding).await?;
        }
        let keys = self.inner.keys.queue_keys(queue);
        self.inner
            .conn
            .run("DEL", |mut conn| async move {
                let mut pipe = redis::pipe();
                for key in &keys {
                    pipe.cmd("DEL").arg(key).ignore();
                }
                pipe.exec_async(&mut conn).await
            })
            .await
    }

    /// Messages waiting in `queue`, all priorities (`LLEN` of each list).
    pub async fn queue_len(&self, queue: &str) -> Result<u64, BrokerError> {
        let keys = self.inner.keys.queue_keys(queue);
        let sizes: Vec<u64> = self
            .inner
            .conn
            .run("LLEN", |mut conn| async move {
                let mut pipe = redis::pipe();
                for key in &keys {
                    pipe.cmd("LLEN").arg(key);
                }
                pipe.query_async(&mut conn).await
            })
            .await?;
        Ok(sizes.iter().sum())
    }

    /// Empties `queue` (all priorities) in one transaction; returns how many
    /// messages were removed (kombu's `_purge`).
    pub async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        let keys = self.inner.keys.queue_keys(queue);
        let replies: Vec<u64> = self
            .inner
            .conn
            .run("LLEN/DEL", |mut conn| async move {
                let mut pipe = redis::pipe();
                pipe.atomic();
                for key in &keys {
                    pipe.cmd("LLEN").arg(key).cmd("DEL").arg(key);
                }
                pipe.query_async(&mut conn).await
            })
            .await?;
        Ok(replies.iter().step_by(2).sum())
    }

    /// Entries in the `unacked` hash (all consumers of this database).
    pub async fn unacked_len(&self) -> Result<u64, BrokerError> {
        let key = self.inner.keys.unacked().to_owned();
        self.inner
            .conn
            .run("HLEN", |mut conn| async move { redis::cmd("HLEN").arg(&key).query_async(&mut conn).await })
            .await
    }

    /// The queues a publish to `exchange` with `routing_key` reaches now.
    pub async fn route(&self, exchange: &str, routing_key: &str) -> Result<Vec<String>, BrokerError> {
        self.inner.lookup(exchange, routing_key, true).await
    }

    /// Publishes as kombu's `basic_publish`: wraps the message in the Redis
    /// envelope (new uuid4 delivery tag, `delivery_info`, base64 body) and
    /// - anonymous exchange: `LPUSH` to the routing key's list for the message priority;
    /// - direct/topic exchange: `LPUSH` to every bound queue that matches
    ///   (`SMEMBERS _kombu.binding.<exchange>`); no match drops the message (or
    ///   sends it to the dead-letter queue), as kombu does, with a warning;
    /// - fanout exchange: `PUBLISH` on `/{db}.<exchange>[/<routing_key>]`.
    ///
    /// Connection failures are retried `publish_connect_retries` times, so a
    /// publish whose reply was lost may be stored twice (at least once, like
    /// Celery's publish retry).
    pub async fn publish(&self, exchange: &str, routing_key: &str, message: &Message) -> Result<(), BrokerError> {
        let mut envelope = Envelope::new(message.clone(), exchange, routing_key);
        envelope.body_encoding = self.inner.options.body_encoding.clone();
        self.publish_envelope(&envelope).await
    }

    /// Publishes a ready envelope (its `delivery_info` says where).
    pub async fn publish_envelope(&self, envelope: &Envelope) -> Result<(), BrokerError> {
        let payload = envelope.to_json()?;
        let (exchange, routing_key) = (&envelope.delivery_info.exchange, &envelope.delivery_info.routing_key);
        let limit = RetryLimit::Attempts(self.inner.options.publish_connect_retries.saturating_add(1));
        if !exchange.is_empty() && self.inner.registry.kind_of(exchange) == ExchangeKind::Fanout {
            let channel = self.inner.keys.fanout_publish_channel(exchange, routing_key);
            return self
                .inner
                .retrying("publishing", limit, || {
                    let (channel, payload) = (&channel, &payload);
                    self.inner.conn.run("PUBLISH", move |mut conn| async move {
                        redis::cmd("PUBLISH").arg(channel).arg(payload).exec_async(&mut conn).await
                    })
                })
                .await;
        }
        if exchange.is_empty() && routing_key.is_empty() {
            return Err(BrokerError::NoRoutingKey);
        }
        if !exchange.is_empty() && self.inner.registry.kind_of(exchange) == ExchangeKind::Direct {
            // Routing and pushing in one script: one round trip, as kombu's
            // two commands would be. Nothing bound: kombu's fallback below.
            let binding = self.inner.keys.binding_key(exchange);
            let suffix = self.inner.keys.step_suffix(self.inner.keys.priority_step(envelope.message.priority));
            let keys = &self.inner.keys;
            let pushed: i64 =
                self.inner
                    .retrying("publishing", limit, || {
                        let args: [&[u8]; 5] = [
                            routing_key.as_bytes(),
                            payload.as_bytes(),
                            keys.sep().as_bytes(),
                            keys.prefix().as_bytes(),
                            suffix.as_bytes(),
                        ];
                        let binding = binding.as_str();
                        async move {
                            self.inner.eval("publishing", &self.inner.scripts.publish_direct, &[binding], &args).await
                        }
                    })
                    .await?;
            if pushed > 0 {
                return Ok(());
            }
        }
        let queues = self.inner.retrying("routing", limit, || self.inner.lookup(exchange, routing_key, true)).await?;
        if queues.is_empty() {
            tracing::warn!(exchange = %exchange, routing_key = %routing_key, "message has no route: no queue is bound to the exchange with this key; dropped as kombu does");
            return Ok(());
        }
        let keys: Vec<String> =
            queues.iter().map(|q| self.inner.keys.queue_key_for_priority(q, envelope.message.priority)).collect();
        self.inner
            .retrying("publishing", limit, || {
                let (keys, payload) = (&keys, &payload);
                self.inner.conn.run("LPUSH", move |mut conn| async move {
                    let mut pipe = redis::pipe();
                    for key in keys {
                        pipe.cmd("LPUSH").arg(key).arg(payload).ignore();
                    }
                    pipe.exec_async(&mut conn).await
                })
            })
            .await
    }

    /// A consumer of `queues` holding at most `prefetch` unacked deliveries (0 =
    /// unlimited). It sweeps for messages past the visibility timeout at start
    /// and every [`RedisOptions::restore_visible_every`]. Its tasks are spawned
    /// on the current Tokio runtime, so call it from within one.
    pub fn consumer(&self, queues: &[String], prefetch: usize) -> Consumer {
        consumer::start(self.inner.clone(), queues, prefetch)
    }

    /// kombu's `QoS.restore_visible`: under `unacked_mutex`, puts every message
    /// delivered longer than `visibility_timeout` ago back at the consuming end
    /// of its queue with `redelivered` set. Returns how many were restored (0
    /// when another process holds the lock).
    pub async fn restore_visible(&self) -> Result<usize, BrokerError> {
        self.inner.restore_visible().await
    }

    /// kombu's `restore_by_tag`: moves one `unacked` message back to its queue
    /// (`RPUSH`, or `LPUSH` with `leftmost`), `redelivered` set.
    pub async fn restore_by_tag(&self, tag: &str, leftmost: bool) -> Result<RestoreOutcome, BrokerError> {
        self.inner.restore_by_tag(tag, leftmost, None).await
    }

    /// Connections to Redis lost and replaced since start (for metrics).
    pub fn reconnects(&self) -> u64 {
        self.inner.connector.reconnects()
    }

    /// The queues bound to `exchange` that `routing_key` reaches, without the
    /// dead-letter fallback (empty: a publish would not be delivered).
    pub async fn bound_queues(&self, exchange: &str, routing_key: &str) -> Result<Vec<String>, BrokerError> {
        self.inner.lookup_with(exchange, routing_key, true, None).await
    }

    /// Subscribes to a fanout exchange: `PSUBSCRIBE /{db}.<exchange>/<binding_key>`
    /// (`#` becomes `*`; an empty key subscribes to `/{db}.<exchange>`). Returns
    /// once the subscription is active; it resubscribes after reconnecting
    /// (messages published meanwhile are lost, as on any PUB/SUB).
    pub async fn subscribe(&self, exchange: &str, binding_key: &str) -> Result<Subscription, BrokerError> {
        pubsub::subscribe(self.inner.clone(), exchange, binding_key).await
    }
}

impl crate::transport::Transport for RedisBroker {
    fn masked_url(&self) -> String {
        RedisBroker::masked_url(self).to_owned()
    }

    fn declare_exchange(&self, name: &str, kind: ExchangeKind) {
        RedisBroker::declare_exchange(self, name, kind);
    }

    fn declare_queue<'a>(
        &'a self,
        queue: &'a str,
        exchange: &'a str,
        routing_key: &'a str,
    ) -> crate::BrokerFuture<'a, ()> {
        Box::pin(RedisBroker::declare_queue(self, queue, exchange, routing_key))
    }

    fn publish<'a>(
        &'a self,
        exchange: &'a str,
        routing_key: &'a str,
        message: &'a Message,
    ) -> crate::BrokerFuture<'a, ()> {
        Box::pin(RedisBroker::publish(self, exchange, routing_key, message))
    }

    fn bound_queues<'a>(&'a self, exchange: &'a str, routing_key: &'a str) -> crate::BrokerFuture<'a, Vec<String>> {
        Box::pin(RedisBroker::bound_queues(self, exchange, routing_key))
    }

    fn queue_len<'a>(&'a self, queue: &'a str) -> crate::BrokerFuture<'a, u64> {
        Box::pin(RedisBroker::queue_len(self, queue))
    }

    fn purge<'a>(&'a self, queue: &'a str) -> crate::BrokerFuture<'a, u64> {
        Box::pin(RedisBroker::purge(self, queue))
    }

    fn delete_queue<'a>(&'a self, queue: &'a str) -> crate::BrokerFuture<'a, ()> {
        Box::pin(RedisBroker::delete_queue(self, queue))
    }

    fn consumer(&self, queues: &[String], prefetch: usize) -> Consumer {
        RedisBroker::consumer(self, queues, prefetch)
    }

    fn subscribe<'a>(&'a self, exchange: &'a str, binding_key: &'a str) -> crate::BrokerFuture<'a, Subscription> {
        Box::pin(RedisBroker::subscribe(self, exchange, binding_key))
    }

    fn restore_visible(&self) -> crate::BrokerFuture<'_, usize> {
        Box::pin(RedisBroker::restore_visible(self))
    }

    fn reconnects(&self) -> u64 {
        RedisBroker::reconnects(self)
    }

    fn deferred_settlements(&self) -> usize {
        RedisBroker::deferred_settlements(self)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

//! The AMQP 0-9-1 transport (RabbitMQ) through lapin, declaring and using the
//! broker exactly as kombu/py-amqp do (`shared/reference/amqp.md`), so Python
//! and Rust workers, producers, Flower and `celery inspect` share one vhost.
//!
//! - [`AmqpBroker`]: one connection per broker handle (reconnected with
//!   capped, jittered backoff, over the failover list), a publish channel in
//!   confirm mode (every publish waits for the broker's confirm), declares
//!   on short-lived channels so a refused declaration (406) never kills the
//!   publish channel;
//! - `consumer`: a channel per consumer with `basic.qos` following the
//!   prefetch window (global for classic queues, per consumer for quorum
//!   queues), deliveries acked/rejected on the channel they came on;
//! - `acks`: which ready acks go out together as one `basic.ack(multiple=true)`;
//! - `subscribe`: exclusive auto-delete queues bound to the remote-control
//!   fanout or the events topic exchange;
//! - `delayed`: Celery 5.5's native delayed delivery for quorum queues;
//! - `convert`: messages to and from AMQP properties and field tables;
//! - `tls`: `amqps://` with `broker_use_ssl` (CA, client certificate, `cert_reqs`);
//! - `options`: URLs (failover lists), queue specs and settings.

mod acks;
mod consumer;
mod convert;
pub mod delayed;
pub mod options;
mod subscribe;
mod tls;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use celeriac_protocol::{Message, Value};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ConnectionProperties};

use crate::backoff::Backoff;
use crate::consumer::Consumer;
use crate::error::BrokerError;
use crate::exchange::ExchangeKind;
use crate::subscription::Subscription;
use crate::transport::{BrokerFuture, Transport};

pub use options::{is_amqp_url, AmqpEndpoint, AmqpOptions, AmqpTls, QueueSpec, QueueType};

/// A live connection and its publish channel.
#[derive(Clone)]
pub(crate) struct Link {
    pub conn: Arc<Connection>,
    publish: Channel,
    /// Which connection this is (1 for the first); deliveries remember it.
    pub generation: u64,
}

impl Link {
    fn alive(&self) -> bool {
        self.conn.status().connected() && self.publish.status().connected()
    }
}

/// State shared by a broker handle, its consumers and subscriptions.
pub(crate) struct AmqpInner {
    pub options: AmqpOptions,
    masked: String,
    link: tokio::sync::Mutex<Option<Link>>,
    generation: AtomicU64,
    reconnects: AtomicU64,
    next_endpoint: AtomicUsize,
    /// Exchange types given by `declare_exchange`.
    kinds: Mutex<HashMap<String, ExchangeKind>>,
    /// Names declared on the current connection: `(generation, names)`.
    declared: Mutex<(u64, HashSet<String>)>,
    /// Consumer tags handed out (`None1`, `None2`, ... as kombu's).
    tags: AtomicU64,
    /// Where results of consumed tasks go (see [`AmqpBroker::reply_to`]).
    pub replies: Mutex<ReplyRoutes>,
    /// Acks sent by the consumers, and in how many frames.
    pub ack_stats: Arc<consumer::AckStats>,
}

/// Most reply routes remembered; the oldest are forgotten first.
const MAX_REPLY_ROUTES: usize = 100_000;

/// Task id → `reply_to` of the deliveries consumed (for the `rpc://` result
/// backend), bounded, oldest forgotten first.
#[derive(Debug, Default)]
pub(crate) struct ReplyRoutes {
    routes: HashMap<String, String>,
    order: std::collections::VecDeque<String>,
}

impl ReplyRoutes {
    pub fn insert(&mut self, task_id: String, reply_to: String) {
        if self.routes.insert(task_id.clone(), reply_to).is_none() {
            self.order.push_back(task_id);
        }
        while self.order.len() > MAX_REPLY_ROUTES {
            if let Some(old) = self.order.pop_front() {
                self.routes.remove(&old);
            }
        }
    }

    pub fn get(&self, task_id: &str) -> Option<String> {
        self.routes.get(task_id).cloned()
    }
}

impl std::fmt::Debug for AmqpInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpInner").field("url", &self.masked).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AmqpInner {
    /// Sorts a lapin error: refusals by the broker are not retried, the rest is.
    pub fn error(&self, operation: &str, e: lapin::Error) -> BrokerError {
        if let lapin::Error::ProtocolError(amqp) = &e {
            let code = amqp.get_id();
            // Soft errors close the channel; 403 also arrives as a hard one at login.
            if matches!(amqp.kind(), lapin::protocol::AMQPErrorKind::Soft(_)) || code == 403 || code == 530 {
                return BrokerError::AmqpRefused {
                    operation: operation.to_owned(),
                    code,
                    text: amqp.get_message().as_str().to_owned(),
                };
            }
        }
        BrokerError::Amqp { url: self.masked.clone(), source: e }
    }

    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.options.backoff_min, self.options.backoff_max)
    }

    /// The current connection, made (or made again) if needed, trying each
    /// address of the failover list once.
    pub async fn link(&self) -> Result<Link, BrokerError> {
        let mut slot = self.link.lock().await;
        if let Some(link) = slot.as_ref() {
            if link.alive() {
                return Ok(link.clone());
            }
            if link.conn.status().connected() {
                // Only the publish channel died (the broker closed it): open another.
                let publish = self.publish_channel(&link.conn).await?;
                let link = Link { publish, ..link.clone() };
                *slot = Some(link.clone());
                return Ok(link);
            }
        }
        let had = slot.is_some();
        let (conn, endpoint) = self.connect().await?;
        let conn = Arc::new(conn);
        let publish = self.publish_channel(&conn).await?;
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        if had {
            self.reconnects.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("Connection to broker lost; reconnected to {}", endpoint.masked());
        } else {
            tracing::info!("Connected to {}", endpoint.masked());
        }
        watch_blocked(conn.clone());
        let link = Link { conn, publish, generation };
        *slot = Some(link.clone());
        Ok(link)
    }

    async fn publish_channel(&self, conn: &Connection) -> Result<Channel, BrokerError> {
        let channel = conn.create_channel().await.map_err(|e| self.error("opening a channel", e))?;
        if self.options.confirm_publish {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| self.error("turning on publisher confirms", e))?;
        }
        Ok(channel)
    }

    /// One attempt per address, starting after the last one used.
    async fn connect(&self) -> Result<(Connection, AmqpEndpoint), BrokerError> {
        let endpoints = &self.options.endpoints;
        let start = self.next_endpoint.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..endpoints.len() {
            let index = (start + i) % endpoints.len();
            let endpoint = &endpoints[index];
            match self.connect_to(endpoint).await {
                Ok(conn) => {
                    self.next_endpoint.store(index, Ordering::Relaxed);
                    return Ok((conn, endpoint.clone()));
                }
                Err(e) => {
                    if endpoints.len() > 1 {
                        tracing::warn!(error = %e, "cannot connect to {}; trying the next broker", endpoint.masked());
                    }
                    // The next attempt starts with the next address.
                    self.next_endpoint.store(index + 1, Ordering::Relaxed);
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| BrokerError::Config("the AMQP broker URL names no host".into())))
    }

    async fn connect_to(&self, endpoint: &AmqpEndpoint) -> Result<Connection, BrokerError> {
        use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
        let uri = AMQPUri {
            scheme: if endpoint.tls { AMQPScheme::AMQPS } else { AMQPScheme::AMQP },
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo { username: endpoint.user.clone(), password: endpoint.password.clone() },
                host: endpoint.host.clone(),
                port: endpoint.port,
            },
            vhost: endpoint.vhost.clone(),
            query: AMQPQueryString {
                frame_max: endpoint.frame_max,
                channel_max: endpoint.channel_max,
                heartbeat: Some(endpoint.heartbeat.unwrap_or(self.options.heartbeat)),
                connection_timeout: endpoint.connection_timeout_ms,
                ..AMQPQueryString::default()
            },
        };
        let properties = ConnectionProperties::default()
            .with_connection_name(LongString::from("celeriac"))
            .with_executor(tokio_executor_trait::Tokio::current())
            .with_reactor(tokio_reactor_trait::Tokio);
        let connecting = async {
            if endpoint.tls {
                let (connector, asked) = tls::connector(&self.options.tls)?;
                Connection::connector(uri, tls::connect_fn(connector), properties).await.map_err(|e| {
                    tls::explain(&e, &endpoint.masked())
                        .unwrap_or_else(|| self.error("connecting", tls::with_cert_hint(e, &asked)))
                })
            } else {
                Connection::connect_uri(uri, properties).await.map_err(|e| self.error("connecting", e))
            }
        };
        match tokio::time::timeout(self.options.connect_timeout, connecting).await {
            Ok(result) => result,
            Err(_) => Err(BrokerError::Amqp {
                url: endpoint.masked(),
                source: lapin::Error::IOError(Arc::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {:?} (broker_connection_timeout)", self.options.connect_timeout),
                ))),
            }),
        }
    }

    /// Runs `f` with the current connection until it succeeds, fails for
    /// good, or `max_retries` attempts failed on transient errors.
    pub async fn retrying<T, F, Fut>(&self, what: &'static str, mut f: F) -> Result<T, BrokerError>
    where
        F: FnMut(Link) -> Fut,
        Fut: Future<Output = Result<T, BrokerError>>,
    {
        let start = std::time::Instant::now();
        let mut backoff = self.backoff();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let error = match self.link().await {
                Ok(link) => match f(link).await {
                    Ok(v) => return Ok(v),
                    Err(e) => e,
                },
                Err(e) => e,
            };
            if !error.is_transient() || self.options.max_retries.is_some_and(|max| attempts > max) {
                if attempts == 1 || !error.is_transient() {
                    return Err(error);
                }
                return Err(BrokerError::GaveUp { operation: what, waited: start.elapsed(), last: Box::new(error) });
            }
            let delay = backoff.next_delay();
            tracing::warn!(error = %error, retry_in = ?delay, "{what} failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// Whether `name` was declared on connection `generation` (and records it).
    fn first_declare(&self, generation: u64, name: &str) -> bool {
        let mut d = lock(&self.declared);
        if d.0 != generation {
            *d = (generation, HashSet::new());
        }
        d.1.insert(name.to_owned())
    }

    fn forget_declared(&self, name: &str) {
        lock(&self.declared).1.remove(name);
    }

    /// An exchange's type and durability: Celery's own exchanges as kombu
    /// declares them, else what `task_queues`/`declare_exchange` said, else
    /// `task_default_exchange_type`; durable.
    pub fn exchange_attrs(&self, name: &str) -> (ExchangeKind, bool) {
        let o = &self.options;
        if name == o.event_exchange {
            return (ExchangeKind::Topic, true);
        }
        if name == o.pidbox_exchange() {
            return (ExchangeKind::Fanout, false);
        }
        if name == o.reply_exchange() {
            return (ExchangeKind::Direct, false);
        }
        if name.starts_with(delayed::EXCHANGE_PREFIX) {
            return (ExchangeKind::Topic, true);
        }
        let from_spec = o.queues.iter().find_map(|(q, spec)| {
            let exchange = spec.exchange.as_deref().unwrap_or(q);
            (exchange == name).then_some(spec.exchange_type).flatten()
        });
        let kind = from_spec.or_else(|| lock(&self.kinds).get(name).copied()).unwrap_or(o.default_exchange_type);
        (kind, true)
    }

    /// The arguments and type of `queue` as kombu would declare it.
    pub fn queue_arguments(&self, queue: &str) -> Result<(FieldTable, QueueType), BrokerError> {
        let o = &self.options;
        let mut args: Vec<(String, Value)> = Vec::new();
        let queue_type = match o.queues.get(queue) {
            Some(spec) => {
                args.extend(spec.arguments.iter().cloned());
                spec.queue_type().unwrap_or_default()
            }
            None => {
                if o.default_queue_type == QueueType::Quorum {
                    args.push(("x-queue-type".into(), Value::Str("quorum".into())));
                } else if let Some(max) = o.default_max_priority {
                    args.push(("x-max-priority".into(), Value::Int(i64::from(max))));
                }
                o.default_queue_type
            }
        };
        let mut table = FieldTable::default();
        for (key, value) in &args {
            let v = convert::to_amqp(value, 1)
                .map_err(|_| BrokerError::Config(format!("queue argument {key} of {queue} nests too deep")))?;
            table.insert(ShortString::from(key.clone()), v);
        }
        Ok((table, queue_type))
    }

    /// Whether any queue this process knows is a quorum queue (Celery's
    /// `detect_quorum_queues`).
    pub fn quorum_detected(&self) -> bool {
        let o = &self.options;
        o.detect_quorum_queues
            && (o.default_queue_type == QueueType::Quorum
                || o.queues.values().any(|s| s.queue_type() == Some(QueueType::Quorum)))
    }

    /// Declares `name` on a short-lived channel of `link`, once per connection.
    async fn ensure_exchange(&self, link: &Link, name: &str) -> Result<(), BrokerError> {
        if name.is_empty() || !self.first_declare(link.generation, &format!("exchange:{name}")) {
            return Ok(());
        }
        let result = async {
            let channel = link.conn.create_channel().await.map_err(|e| self.error("opening a channel", e))?;
            let declared = self.declare_exchange_on(&channel, name).await;
            let _ = channel.close(200, "declared").await;
            declared
        }
        .await;
        match result {
            Err(BrokerError::AmqpRefused { code: 406, text, .. }) => {
                // It exists with other attributes: publishing to it still works.
                tracing::warn!(
                    "exchange {name} exists with other attributes than celeriac's ({text}); using it as it is"
                );
                Ok(())
            }
            Err(e) => {
                self.forget_declared(&format!("exchange:{name}"));
                Err(e)
            }
            Ok(()) => Ok(()),
        }
    }

    async fn declare_exchange_on(&self, channel: &Channel, name: &str) -> Result<(), BrokerError> {
        let (kind, durable) = self.exchange_attrs(name);
        channel
            .exchange_declare(
                name,
                lapin_kind(kind),
                ExchangeDeclareOptions { durable, auto_delete: false, ..ExchangeDeclareOptions::default() },
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.error(&format!("declaring the exchange {name}"), e))
    }

    /// Declares `queue` (kombu's flags and arguments), its exchange and the
    /// binding, on a short-lived channel; with quorum queues detected, also
    /// the native delayed delivery bindings of the queue.
    pub async fn declare_queue_on(
        &self,
        link: &Link,
        queue: &str,
        exchange: &str,
        routing_key: &str,
    ) -> Result<QueueType, BrokerError> {
        let (arguments, queue_type) = self.queue_arguments(queue)?;
        let channel = link.conn.create_channel().await.map_err(|e| self.error("opening a channel", e))?;
        let result = async {
            if !exchange.is_empty() {
                self.declare_exchange_on(&channel, exchange).await?;
            }
            channel
                .queue_declare(
                    queue,
                    QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() },
                    arguments,
                )
                .await
                .map_err(|e| self.error(&format!("declaring the queue {queue}"), e))?;
            if !exchange.is_empty() {
                channel
                    .queue_bind(queue, exchange, routing_key, QueueBindOptions::default(), FieldTable::default())
                    .await
                    .map_err(|e| self.error(&format!("binding the queue {queue} to {exchange}"), e))?;
            }
            Ok::<_, BrokerError>(())
        }
        .await;
        let _ = channel.close(200, "declared").await;
        result?;
        Ok(queue_type)
    }

    /// Binds `queue` (exchange `exchange`, key `routing_key`) for native
    /// delayed delivery, declaring the 28 levels first (once per connection).
    pub async fn bind_delayed(
        &self,
        link: &Link,
        queue: &str,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), BrokerError> {
        let channel = link.conn.create_channel().await.map_err(|e| self.error("opening a channel", e))?;
        let result = async {
            if self.first_declare(link.generation, "delayed-delivery-topology") {
                if let Err(e) = delayed::declare_topology(self, &channel).await {
                    self.forget_declared("delayed-delivery-topology");
                    return Err(e);
                }
            }
            if exchange.is_empty() {
                return Ok(());
            }
            let key = format!("#.{routing_key}");
            channel
                .exchange_bind(
                    exchange,
                    delayed::DELIVERY_EXCHANGE,
                    &key,
                    ExchangeBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| self.error(&format!("binding {exchange} for delayed delivery"), e))?;
            channel
                .queue_bind(queue, exchange, &key, QueueBindOptions::default(), FieldTable::default())
                .await
                .map_err(|e| self.error(&format!("binding {queue} for delayed delivery"), e))
        }
        .await;
        let _ = channel.close(200, "declared").await;
        result
    }

    /// The next consumer tag, `None<n>` as kombu's (its tag prefix is unset).
    pub fn consumer_tag(&self) -> String {
        format!("None{}", self.tags.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

/// lapin's name for an exchange type.
pub(crate) fn lapin_kind(kind: ExchangeKind) -> lapin::ExchangeKind {
    match kind {
        ExchangeKind::Direct => lapin::ExchangeKind::Direct,
        ExchangeKind::Topic => lapin::ExchangeKind::Topic,
        ExchangeKind::Fanout => lapin::ExchangeKind::Fanout,
    }
}

/// Logs when RabbitMQ blocks the connection (a memory or disk alarm:
/// RabbitMQ stops reading from publishing connections, so publishes and
/// their confirms wait) and when it lets it go, until the connection ends.
/// py-amqp's words for the reason are "connection blocked, see broker logs".
fn watch_blocked(conn: Arc<Connection>) {
    tokio::spawn(async move {
        let mut blocked = false;
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
        while conn.status().connected() {
            tick.tick().await;
            let now = conn.status().blocked();
            if now != blocked {
                if now {
                    tracing::warn!(
                        "Connection to broker blocked: connection blocked, see broker logs (a RabbitMQ memory or \
                         disk alarm); publishing waits until it is unblocked"
                    );
                } else {
                    tracing::info!("Connection to broker unblocked");
                }
                blocked = now;
            }
        }
    });
}

/// An AMQP broker handle (see the module docs); clones share the connection.
#[derive(Clone, Debug)]
pub struct AmqpBroker {
    inner: Arc<AmqpInner>,
}

impl AmqpBroker {
    /// A broker for `options`; connects lazily, on first use.
    pub fn new(options: AmqpOptions) -> Result<AmqpBroker, BrokerError> {
        options.validate()?;
        if options.endpoints.iter().any(|e| e.tls) {
            // The files are read now too, so a bad one stops the start.
            tls::connector(&options.tls)?;
            if let Some(warning) = options.tls.cert_reqs.warning("broker") {
                tracing::warn!("{warning}");
            }
        }
        let masked = options.endpoints.iter().map(AmqpEndpoint::masked).collect::<Vec<_>>().join(";");
        Ok(AmqpBroker {
            inner: Arc::new(AmqpInner {
                options,
                masked,
                link: tokio::sync::Mutex::new(None),
                generation: AtomicU64::new(0),
                reconnects: AtomicU64::new(0),
                next_endpoint: AtomicUsize::new(0),
                kinds: Mutex::new(HashMap::new()),
                declared: Mutex::new((0, HashSet::new())),
                tags: AtomicU64::new(0),
                replies: Mutex::new(ReplyRoutes::default()),
                ack_stats: Arc::default(),
            }),
        })
    }

    /// A broker for a URL with default options.
    pub fn from_url(url: &str) -> Result<AmqpBroker, BrokerError> {
        AmqpBroker::new(AmqpOptions::from_url(url)?)
    }

    /// The options in use.
    pub fn options(&self) -> &AmqpOptions {
        &self.inner.options
    }

    /// Connects now (the transport otherwise connects on first use).
    pub async fn connect(&self) -> Result<(), BrokerError> {
        self.inner.retrying("connecting", |_| async { Ok(()) }).await
    }

    /// Publishes `message`: to `exchange` (declared first, once per
    /// connection) with `routing_key`, with the message's delivery mode and
    /// priority, waiting for the broker's confirm. With quorum queues and a
    /// non-direct exchange, an ETA message goes through native delayed
    /// delivery (`celery_delayed_27`), as Celery's `send_task` does.
    pub async fn publish(&self, exchange: &str, routing_key: &str, message: &Message) -> Result<(), BrokerError> {
        let inner = &self.inner;
        if exchange.is_empty() && routing_key.is_empty() {
            return Err(BrokerError::NoRoutingKey);
        }
        let properties = convert::to_properties(message)
            .map_err(|_| BrokerError::Config("a message header nests deeper than AMQP allows here".into()))?;
        let (exchange, routing_key) = match delayed::route(inner, exchange, routing_key, message)? {
            Some(delayed) => delayed,
            None => (exchange.to_owned(), routing_key.to_owned()),
        };
        let (exchange, routing_key) = (exchange.as_str(), routing_key.as_str());
        inner
            .retrying("publishing", |link| {
                let properties = properties.clone();
                async move {
                    inner.ensure_exchange(&link, exchange).await?;
                    let confirm = link
                        .publish
                        .basic_publish(exchange, routing_key, BasicPublishOptions::default(), &message.body, properties)
                        .await
                        .map_err(|e| inner.error("publishing", e))?;
                    if !inner.options.confirm_publish {
                        return Ok(());
                    }
                    match confirm.await.map_err(|e| inner.error("publishing", e))? {
                        Confirmation::Nack(_) => Err(BrokerError::Nacked {
                            exchange: exchange.to_owned(),
                            routing_key: routing_key.to_owned(),
                        }),
                        Confirmation::Ack(_) | Confirmation::NotRequested => Ok(()),
                    }
                }
            })
            .await
    }

    /// Declares `queue`, its exchange and the binding as kombu does (durable;
    /// arguments from `task_queues` or the defaults). A queue or exchange that
    /// exists with other arguments is refused by RabbitMQ
    /// ([`BrokerError::AmqpRefused`], 406).
    pub async fn declare_queue(&self, queue: &str, exchange: &str, routing_key: &str) -> Result<(), BrokerError> {
        let inner = &self.inner;
        inner
            .retrying("declaring a queue", |link| async move {
                inner.declare_queue_on(&link, queue, exchange, routing_key).await.map(drop)
            })
            .await
    }

    /// Messages ready in `queue` (a passive declare; 0 if it does not exist).
    pub async fn queue_len(&self, queue: &str) -> Result<u64, BrokerError> {
        let inner = &self.inner;
        inner
            .retrying("counting messages", |link| async move {
                let channel = link.conn.create_channel().await.map_err(|e| inner.error("opening a channel", e))?;
                let declared = channel
                    .queue_declare(
                        queue,
                        QueueDeclareOptions { passive: true, ..Default::default() },
                        FieldTable::default(),
                    )
                    .await;
                let _ = channel.close(200, "done").await;
                match declared {
                    Ok(q) => Ok(u64::from(q.message_count())),
                    Err(e) => match inner.error("counting messages", e) {
                        BrokerError::AmqpRefused { code: 404, .. } => Ok(0),
                        other => Err(other),
                    },
                }
            })
            .await
    }

    /// Empties `queue`; returns how many messages were removed (0 for a
    /// queue that does not exist, as `celery purge` counts it).
    pub async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        let inner = &self.inner;
        inner
            .retrying("purging a queue", |link| async move {
                let channel = link.conn.create_channel().await.map_err(|e| inner.error("opening a channel", e))?;
                let purged = channel.queue_purge(queue, QueuePurgeOptions::default()).await;
                let _ = channel.close(200, "done").await;
                match purged {
                    Ok(n) => Ok(u64::from(n)),
                    Err(e) => match inner.error(&format!("purging {queue}"), e) {
                        BrokerError::AmqpRefused { code: 404, .. } => Ok(0),
                        other => Err(other),
                    },
                }
            })
            .await
    }

    /// Deletes `queue` (and with it its bindings).
    pub async fn delete_queue(&self, queue: &str) -> Result<(), BrokerError> {
        let inner = &self.inner;
        inner
            .retrying("deleting a queue", |link| async move {
                let channel = link.conn.create_channel().await.map_err(|e| inner.error("opening a channel", e))?;
                let deleted = channel.queue_delete(queue, QueueDeleteOptions::default()).await;
                let _ = channel.close(200, "done").await;
                deleted.map(drop).map_err(|e| inner.error(&format!("deleting {queue}"), e))
            })
            .await
    }

    /// Records an exchange's type; it is declared before its first use
    /// (Celery's own exchanges keep kombu's types whatever is given here:
    /// `celeryev` is a topic exchange on AMQP).
    pub fn declare_exchange(&self, name: &str, kind: ExchangeKind) {
        lock(&self.inner.kinds).insert(name.to_owned(), kind);
    }

    /// A consumer of `queues` (see the `consumer` module).
    pub fn consumer(&self, queues: &[String], prefetch: usize) -> Consumer {
        consumer::start(self.inner.clone(), queues, prefetch)
    }

    /// Subscribes to a broadcast exchange through an exclusive auto-delete
    /// queue bound with `binding_key` (see the `subscribe` module).
    pub async fn subscribe(&self, exchange: &str, binding_key: &str) -> Result<Subscription, BrokerError> {
        subscribe::subscribe(self.inner.clone(), exchange, binding_key, None).await
    }

    /// [`AmqpBroker::subscribe`] with the queue's name given (a control
    /// client's `<oid>.reply.celery.pidbox`, a worker's `<node>.celery.pidbox`).
    pub async fn subscribe_queue(
        &self,
        exchange: &str,
        binding_key: &str,
        queue: &str,
    ) -> Result<Subscription, BrokerError> {
        subscribe::subscribe(self.inner.clone(), exchange, binding_key, Some(queue.to_owned())).await
    }

    /// Deliveries acked by this handle's consumers, and the `basic.ack`
    /// frames that carried them (fewer when acks were batched as
    /// `multiple=true`).
    pub fn ack_counts(&self) -> (u64, u64) {
        let s = &self.inner.ack_stats;
        (s.acked.load(Ordering::Relaxed), s.frames.load(Ordering::Relaxed))
    }

    /// Whether the connection is up now (false before first use, and from
    /// when a lost connection is noticed, by a failed read or missed
    /// heartbeats, until it is made again).
    pub async fn is_connected(&self) -> bool {
        self.inner.link.lock().await.as_ref().is_some_and(Link::alive)
    }

    /// Connections lost and replaced since start.
    pub fn reconnects(&self) -> u64 {
        self.inner.reconnects.load(Ordering::Relaxed)
    }

    /// The `reply_to` of a task this broker's consumers received (its
    /// correlation id or `id` header), for the `rpc://` result backend, which
    /// sends the result there. The most recent 100,000 are remembered.
    pub fn reply_to(&self, task_id: &str) -> Option<String> {
        lock(&self.inner.replies).get(task_id)
    }

    /// Closes the connection (consumers and subscriptions reconnect if still running).
    pub async fn close(&self) {
        if let Some(link) = self.inner.link.lock().await.take() {
            let _ = link.conn.close(200, "bye").await;
        }
    }
}

impl Transport for AmqpBroker {
    fn masked_url(&self) -> String {
        self.inner.masked.clone()
    }

    fn declare_exchange(&self, name: &str, kind: ExchangeKind) {
        AmqpBroker::declare_exchange(self, name, kind);
    }

    fn declare_queue<'a>(&'a self, queue: &'a str, exchange: &'a str, routing_key: &'a str) -> BrokerFuture<'a, ()> {
        Box::pin(AmqpBroker::declare_queue(self, queue, exchange, routing_key))
    }

    fn publish<'a>(&'a self, exchange: &'a str, routing_key: &'a str, message: &'a Message) -> BrokerFuture<'a, ()> {
        Box::pin(AmqpBroker::publish(self, exchange, routing_key, message))
    }

    /// AMQP cannot list bindings: the routing key's queue is assumed bound
    /// (RabbitMQ itself drops what no queue is bound for).
    fn bound_queues<'a>(&'a self, _exchange: &'a str, routing_key: &'a str) -> BrokerFuture<'a, Vec<String>> {
        let queues = vec![routing_key.to_owned()];
        Box::pin(async move { Ok(queues) })
    }

    fn queue_len<'a>(&'a self, queue: &'a str) -> BrokerFuture<'a, u64> {
        Box::pin(AmqpBroker::queue_len(self, queue))
    }

    fn purge<'a>(&'a self, queue: &'a str) -> BrokerFuture<'a, u64> {
        Box::pin(AmqpBroker::purge(self, queue))
    }

    fn delete_queue<'a>(&'a self, queue: &'a str) -> BrokerFuture<'a, ()> {
        Box::pin(AmqpBroker::delete_queue(self, queue))
    }

    fn consumer(&self, queues: &[String], prefetch: usize) -> Consumer {
        AmqpBroker::consumer(self, queues, prefetch)
    }

    fn subscribe<'a>(&'a self, exchange: &'a str, binding_key: &'a str) -> BrokerFuture<'a, Subscription> {
        Box::pin(AmqpBroker::subscribe(self, exchange, binding_key))
    }

    fn subscribe_queue<'a>(
        &'a self,
        exchange: &'a str,
        binding_key: &'a str,
        queue: &'a str,
    ) -> BrokerFuture<'a, Subscription> {
        Box::pin(AmqpBroker::subscribe_queue(self, exchange, binding_key, queue))
    }

    fn reconnects(&self) -> u64 {
        AmqpBroker::reconnects(self)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A header value as an AMQP long string (for queue arguments given as text).
pub(crate) fn long_str(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text))
}

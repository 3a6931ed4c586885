//! The AMQP consumer: one channel, a `basic.consume` per queue (`no_ack`
//! off, consumer tags `None<n>` as kombu's), and `basic.qos` following the
//! prefetch window: `global` for classic queues as Celery sends it, per
//! consumer when quorum queues are detected ("Global QoS is disabled"), raised
//! and lowered as ETA messages are held and released.
//!
//! Deliveries are settled on the channel they came on (`basic.ack`,
//! `basic.reject` with or without requeue). Acks ready together go out as one
//! `basic.ack(multiple=true)` when no lower tag of the channel is still open
//! (see `acks`); a reject or requeue is always one `basic.reject` of its tag. When that channel is gone (a
//! lost connection, a closed channel) RabbitMQ has already put its unacked
//! messages back, so a settle of such a delivery fails
//! ([`BrokerError::ChannelGone`]) instead of acking a different message that
//! happens to carry the same tag on a new channel. The task reconnects with
//! backoff and consumes again, forever, until stopped.
//!
//! Stopping closes the channel: RabbitMQ requeues what was held and not
//! settled, as it does when a Python worker stops.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use celeriac_protocol::envelope::{BodyEncoding, DeliveryInfo};
use celeriac_protocol::Envelope;
use futures_util::stream::{BoxStream, SelectAll};
use futures_util::{FutureExt as _, StreamExt as _};
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::acks::{AckBook, AckFrame, NotOpen};
use super::{convert, AmqpInner, QueueType};
use crate::consumer::{Consumer, Feed};
use crate::delivery::Delivery;
use crate::error::BrokerError;
use crate::exchange::ExchangeKind;
use crate::options::QueueOrderStrategy;
use crate::transport::{BrokerFuture, Settle, Settler};
use crate::window::{Held, Window};

type Incoming = (String, Result<lapin::message::Delivery, lapin::Error>);

/// Starts a consumer's task.
pub(crate) fn start(inner: Arc<AmqpInner>, queues: &[String], prefetch: usize) -> Consumer {
    let window = Arc::new(Window::new(queues, prefetch, None, QueueOrderStrategy::RoundRobin));
    let (tx, rx) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let settler = Arc::new(AmqpSettler::new(inner.masked.clone(), inner.ack_stats.clone()));
    let task = tokio::spawn(run(inner, window.clone(), tx, stop.clone(), settler.clone()));
    Consumer::new(window, rx, stop, vec![task], settler as Settler)
}

/// Reconnects and consumes again until stopped.
async fn run(inner: Arc<AmqpInner>, window: Arc<Window>, tx: Feed, stop: CancellationToken, settler: Arc<AmqpSettler>) {
    let mut backoff = inner.backoff();
    let mut session = 0u64;
    loop {
        session += 1;
        let mut s = Session { inner: &inner, window: &window, tx: &tx, stop: &stop, settler: &settler, session };
        let error = match s.run(&mut backoff).await {
            Ok(()) => return,
            Err(e) => e,
        };
        settler.clear();
        if stop.is_cancelled() || tx.is_closed() {
            return;
        }
        let delay = backoff.next_delay();
        if error.is_transient() {
            tracing::warn!(
                error = %error,
                retry_in = ?delay,
                "consumer: Connection to broker lost. Trying to re-establish the connection..."
            );
        } else {
            tracing::error!(error = %error, retry_in = ?delay, "consumer: cannot consume; trying again");
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return,
        }
    }
}

struct Session<'a> {
    inner: &'a Arc<AmqpInner>,
    window: &'a Arc<Window>,
    tx: &'a Feed,
    stop: &'a CancellationToken,
    settler: &'a Arc<AmqpSettler>,
    session: u64,
}

impl Session<'_> {
    /// The exchange and binding key of `queue` (`task_queues`, else Celery's default).
    fn binding(&self, queue: &str) -> (String, String) {
        match self.inner.options.queues.get(queue) {
            Some(spec) => (
                spec.exchange.clone().unwrap_or_else(|| queue.to_owned()),
                spec.routing_key.clone().unwrap_or_else(|| queue.to_owned()),
            ),
            None => (queue.to_owned(), queue.to_owned()),
        }
    }

    /// One channel's life: declare, qos, consume, deliver until it breaks
    /// (an error) or the consumer stops (`Ok`).
    async fn run(&mut self, backoff: &mut crate::backoff::Backoff) -> Result<(), BrokerError> {
        let inner = self.inner;
        let link = inner.link().await?;
        let mut quorum = false;
        for queue in self.window.queues() {
            let (exchange, key) = self.binding(&queue);
            quorum |= inner.declare_queue_on(&link, &queue, &exchange, &key).await? == QueueType::Quorum;
        }
        let quorum_qos = quorum && inner.options.detect_quorum_queues;
        if inner.quorum_detected() {
            for queue in self.window.queues() {
                let (exchange, key) = self.binding(&queue);
                if inner.exchange_attrs(&exchange).0 == ExchangeKind::Direct {
                    tracing::warn!("Exchange {exchange} is a direct exchange and native delayed delivery do not support direct exchanges. ETA tasks published to this exchange will block the worker until the ETA arrives.");
                    inner.bind_delayed(&link, &queue, "", &key).await?;
                } else {
                    inner.bind_delayed(&link, &queue, &exchange, &key).await?;
                }
            }
        }
        if quorum_qos && self.session == 1 {
            tracing::info!("Global QoS is disabled. Prefetch count is now static.");
        }
        let channel = link.conn.create_channel().await.map_err(|e| inner.error("opening a channel", e))?;
        let global = !quorum_qos;
        let mut qos = self.window.prefetch();
        self.qos(&channel, qos, global).await?;
        self.settler.set(self.session, channel.clone());
        let mut streams: SelectAll<BoxStream<'static, Incoming>> = SelectAll::new();
        let mut tags: HashMap<String, String> = HashMap::new();
        for queue in self.window.queues() {
            self.consume(&channel, &queue, &mut streams, &mut tags).await?;
        }
        backoff.reset();
        let mut check = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => {
                    // RabbitMQ requeues everything held and unsettled.
                    self.settler.clear();
                    let _ = channel.close(200, "consumer stopped").await;
                    return Ok(());
                }
                _ = self.tx.closed() => {
                    self.settler.clear();
                    let _ = channel.close(200, "consumer gone").await;
                    return Ok(());
                }
                _ = self.window.changed.notified() => {
                    let prefetch = self.window.prefetch();
                    if prefetch != qos {
                        self.qos(&channel, prefetch, global).await?;
                        qos = prefetch;
                    }
                    let wanted = self.window.queues();
                    for queue in &wanted {
                        if !tags.contains_key(queue) {
                            let (exchange, key) = self.binding(queue);
                            inner.declare_queue_on(&link, queue, &exchange, &key).await?;
                            self.consume(&channel, queue, &mut streams, &mut tags).await?;
                        }
                    }
                    let gone: Vec<String> = tags.keys().filter(|q| !wanted.contains(q)).cloned().collect();
                    for queue in gone {
                        if let Some(tag) = tags.remove(&queue) {
                            channel
                                .basic_cancel(&tag, BasicCancelOptions::default())
                                .await
                                .map_err(|e| inner.error("cancelling a consumer", e))?;
                            tracing::info!("Stopped consuming from {queue}");
                        }
                    }
                }
                _ = check.tick() => {
                    if !channel.status().connected() {
                        return Err(inner.error("consuming", lapin::Error::InvalidChannelState(channel.status().state())));
                    }
                }
                item = streams.next(), if !streams.is_empty() => {
                    // Then what else is ready already (up to a prefetch window's worth),
                    // without going round the select for each.
                    let mut item = item;
                    let mut budget = self.window.prefetch().clamp(1, 1024);
                    while let Some(next) = item.take() {
                        match next {
                            (queue, Ok(delivery)) => self.deliver(queue, delivery).await?,
                            (_, Err(e)) => return Err(inner.error("consuming", e)),
                        }
                        budget -= 1;
                        if budget > 0 {
                            item = streams.next().now_or_never().flatten();
                        }
                    }
                }
            }
        }
    }

    /// Records where the task's result goes, for the `rpc://` backend.
    fn remember_reply_route(&self, message: &celeriac_protocol::Message) {
        let text =
            |v: Option<&celeriac_protocol::Value>| v.and_then(celeriac_protocol::Value::as_str).map(str::to_owned);
        let Some(reply_to) = text(message.properties.get("reply_to")).filter(|r| !r.is_empty()) else { return };
        let id = text(message.headers.get("id")).or_else(|| text(message.properties.get("correlation_id")));
        if let Some(id) = id {
            self.inner.replies.lock().unwrap_or_else(|p| p.into_inner()).insert(id, reply_to);
        }
    }

    async fn qos(&self, channel: &Channel, prefetch: usize, global: bool) -> Result<(), BrokerError> {
        // AMQP's prefetch count is 16 bits; more is as good as unlimited.
        let count = u16::try_from(prefetch).unwrap_or(u16::MAX);
        channel
            .basic_qos(count, BasicQosOptions { global })
            .await
            .map_err(|e| self.inner.error("setting the prefetch count (basic.qos)", e))
    }

    async fn consume(
        &self,
        channel: &Channel,
        queue: &str,
        streams: &mut SelectAll<BoxStream<'static, Incoming>>,
        tags: &mut HashMap<String, String>,
    ) -> Result<(), BrokerError> {
        let tag = self.inner.consumer_tag();
        let consumer = channel
            .basic_consume(queue, &tag, BasicConsumeOptions::default(), FieldTable::default())
            .await
            .map_err(|e| self.inner.error(&format!("consuming from {queue}"), e))?;
        let name = queue.to_owned();
        streams.push(consumer.map(move |d| (name.clone(), d)).boxed());
        tags.insert(queue.to_owned(), tag);
        Ok(())
    }

    async fn deliver(&self, queue: String, d: lapin::message::Delivery) -> Result<(), BrokerError> {
        let tag = d.delivery_tag;
        self.settler.seen(self.session, tag);
        if !self.window.is_active(&queue) {
            // Cancelled while this was on its way: back to the queue.
            return self.settler.reject_tag(self.session, tag, true).await;
        }
        let message = match convert::from_delivery(&d.properties, d.data) {
            Ok(message) => message,
            Err(_) => {
                self.settler.reject_tag(self.session, tag, false).await?;
                let _ = self.tx.send(Err(BrokerError::Undecodable {
                    queue,
                    kind: "too_deep",
                    reason: format!("the message headers nest deeper than {} levels", convert::MAX_DEPTH),
                    raw: Vec::new(),
                    dead_lettered: false,
                }));
                return Ok(());
            }
        };
        self.remember_reply_route(&message);
        // Built here rather than with `Envelope::new`, which makes a uuid tag
        // only to have it replaced by the broker's.
        let envelope = Envelope {
            message,
            delivery_info: DeliveryInfo {
                exchange: d.exchange.as_str().to_owned(),
                routing_key: d.routing_key.as_str().to_owned(),
                redelivered: Some(d.redelivered),
                ..DeliveryInfo::default()
            },
            delivery_tag: tag.to_string(),
            body_encoding: BodyEncoding::Base64,
        };
        let seq = self.window.hold(&envelope.delivery_tag, Some(self.session.to_string()));
        let delivery = Delivery::new(envelope, queue, self.settler.clone() as Settler, self.window.clone(), seq);
        if self.tx.send(Ok(delivery)).is_err() {
            tracing::debug!("consumer gone; RabbitMQ requeues the message when the channel closes");
        }
        Ok(())
    }
}

/// What waits for an ack frame to be sent.
type AckWaiter = oneshot::Sender<Result<(), lapin::Error>>;

/// The consumer's current channel and its tags' bookkeeping.
#[derive(Debug)]
struct Current {
    session: u64,
    channel: Channel,
    book: AckBook<AckWaiter>,
}

/// Settles deliveries on the channel they came on (see the module docs).
/// A held delivery records its channel's session in its first score.
///
/// Acks go through the channel's [`AckBook`]: an ack asked for while
/// another is being sent waits for it and then goes out with every ack
/// that gathered meanwhile, as one `basic.ack(multiple=true)` where the
/// book allows it.
#[derive(Debug)]
pub(crate) struct AmqpSettler {
    current: Mutex<Option<Current>>,
    /// Held by whoever sends the gathered acks (one sender at a time keeps
    /// the frames in the order they were planned).
    sending: tokio::sync::Mutex<()>,
    url: String,
    stats: Arc<AckStats>,
}

/// Acks sent by a broker handle's consumers, and in how many frames.
#[derive(Debug, Default)]
pub(crate) struct AckStats {
    /// Deliveries acked.
    pub acked: AtomicU64,
    /// `basic.ack` frames sent for them.
    pub frames: AtomicU64,
}

impl AmqpSettler {
    pub(crate) fn new(url: String, stats: Arc<AckStats>) -> AmqpSettler {
        AmqpSettler { current: Mutex::new(None), sending: tokio::sync::Mutex::new(()), url, stats }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Current>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, session: u64, channel: Channel) {
        *self.lock() = Some(Current { session, channel, book: AckBook::default() });
    }

    fn clear(&self) {
        *self.lock() = None;
    }

    /// Records a delivery of channel `session`.
    fn seen(&self, session: u64, tag: u64) {
        if let Some(c) = self.lock().as_mut().filter(|c| c.session == session) {
            c.book.seen(tag);
        }
    }

    /// The session and tag `held` came with.
    fn parse(held: &Held) -> Result<(u64, u64), BrokerError> {
        let gone = || BrokerError::ChannelGone { tag: held.tag.clone() };
        let session: u64 = held.scores.first().and_then(|s| s.parse().ok()).ok_or_else(gone)?;
        let tag: u64 = held.tag.parse().map_err(|_| gone())?;
        Ok((session, tag))
    }

    /// Runs `f` on the current channel if it is still `session`'s and open.
    fn with_current<T>(
        &self,
        session: u64,
        tag: u64,
        f: impl FnOnce(&mut Current) -> Result<T, NotOpen>,
    ) -> Result<T, BrokerError> {
        let gone = || BrokerError::ChannelGone { tag: tag.to_string() };
        let mut current = self.lock();
        match current.as_mut() {
            Some(c) if c.session == session && c.channel.status().connected() => f(c).map_err(|_| gone()),
            _ => Err(gone()),
        }
    }

    fn lapin_error(&self, e: lapin::Error) -> BrokerError {
        BrokerError::Amqp { url: self.url.clone(), source: e }
    }

    async fn ack_tag(&self, session: u64, tag: u64) -> Result<(), BrokerError> {
        let (tx, mut rx) = oneshot::channel();
        self.with_current(session, tag, |c| c.book.request_ack(tag, tx))?;
        let gone = || BrokerError::ChannelGone { tag: tag.to_string() };
        let sending = self.sending.lock().await;
        match rx.try_recv() {
            Ok(result) => return result.map_err(|e| self.lapin_error(e)),
            Err(oneshot::error::TryRecvError::Closed) => return Err(gone()),
            Err(oneshot::error::TryRecvError::Empty) => {}
        }
        // Nobody sent it yet: send it, with every ack gathered meanwhile.
        let planned = {
            let mut current = self.lock();
            current.as_mut().filter(|c| c.session == session).map(|c| (c.channel.clone(), c.book.plan()))
        };
        if let Some((channel, plan)) = planned {
            for (frame, waiters) in plan {
                let multiple = matches!(frame, AckFrame::Multiple(_));
                let result = channel.basic_ack(frame.tag(), BasicAckOptions { multiple }).await;
                if result.is_ok() {
                    self.stats.acked.fetch_add(waiters.len() as u64, Ordering::Relaxed);
                    self.stats.frames.fetch_add(1, Ordering::Relaxed);
                }
                for waiter in waiters {
                    let _ = waiter.send(result.clone());
                }
            }
        }
        drop(sending);
        rx.await.map_err(|_| gone())?.map_err(|e| self.lapin_error(e))
    }

    /// Exactly one `basic.reject` of `tag`; no multiple ack covers it meanwhile.
    async fn reject_tag(&self, session: u64, tag: u64, requeue: bool) -> Result<(), BrokerError> {
        let channel = self.with_current(session, tag, |c| c.book.begin_other(tag).map(|()| c.channel.clone()))?;
        let result = channel.basic_reject(tag, BasicRejectOptions { requeue }).await;
        if let Some(c) = self.lock().as_mut().filter(|c| c.session == session) {
            c.book.finish_other(tag);
        }
        result.map_err(|e| self.lapin_error(e))
    }

    async fn reject(&self, held: &Held, requeue: bool) -> Result<(), BrokerError> {
        let (session, tag) = Self::parse(held)?;
        self.reject_tag(session, tag, requeue).await
    }
}

impl Settle for AmqpSettler {
    fn ack<'a>(&'a self, held: &'a Held) -> BrokerFuture<'a, ()> {
        Box::pin(async move {
            let (session, tag) = Self::parse(held)?;
            self.ack_tag(session, tag).await
        })
    }

    fn reject<'a>(&'a self, held: &'a Held) -> BrokerFuture<'a, ()> {
        Box::pin(AmqpSettler::reject(self, held, false))
    }

    fn requeue<'a>(&'a self, held: &'a Held) -> BrokerFuture<'a, ()> {
        Box::pin(AmqpSettler::reject(self, held, true))
    }

    /// Nothing to refresh on RabbitMQ (it has no visibility timeout; mind its
    /// `consumer_timeout` for ETAs further out than 30 minutes), but a
    /// delivery whose channel has closed is no longer ours: RabbitMQ has
    /// redelivered it.
    fn extend<'a>(&'a self, _window: &'a Window, _seq: u64, held: &'a Held) -> BrokerFuture<'a, ()> {
        Box::pin(async move {
            let (session, tag) = Self::parse(held)?;
            self.with_current(session, tag, |_| Ok(()))
        })
    }

    /// Requeues each held delivery whose channel is open; the others were
    /// requeued by RabbitMQ when their channel closed. All count as restored.
    fn restore_all<'a>(&'a self, held: &'a [(u64, Held)]) -> BrokerFuture<'a, usize> {
        Box::pin(async move {
            for (_, h) in held {
                if let Err(e) = AmqpSettler::reject(self, h, true).await {
                    tracing::debug!(delivery_tag = %h.tag, error = %e, "requeued by RabbitMQ with its channel");
                }
            }
            Ok(held.len())
        })
    }
}

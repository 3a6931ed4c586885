//! Broadcast subscriptions on AMQP, as kombu's `Mailbox` and `EventReceiver`
//! make them: an exclusive, auto-delete, non-durable queue bound to the
//! exchange, consumed with `no_ack`.
//!
//! - remote control (`celery.pidbox`, fanout): queue `<name>.celery.pidbox`,
//!   `x-expires` 10 s, `x-message-ttl` 300 s, bound with an empty key;
//! - events (`celeryev`, topic): queue `celeryev.<uuid>`, `x-expires` and
//!   `x-message-ttl` from `event_queue_expires`/`event_queue_ttl` (60 s, 5 s);
//! - replies (`reply.celery.pidbox`, direct): `<oid>.reply.celery.pidbox`,
//!   as the control exchange's;
//! - any other exchange: an exclusive auto-delete queue without arguments.
//!
//! A task owns the channel; after a lost connection it declares and
//! consumes again with backoff (messages sent meanwhile are lost, as on a
//! Python worker). Dropping the subscription closes the channel, and
//! RabbitMQ deletes the queue.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{convert, AmqpInner};
use crate::error::BrokerError;
use crate::subscription::{FanoutMessage, Subscription, SUBSCRIPTION_BUFFER};

/// `x-expires` and `x-message-ttl` of the control queues (kombu's Mailbox).
const PIDBOX_EXPIRES: Duration = Duration::from_secs(10);
const PIDBOX_TTL: Duration = Duration::from_secs(300);

fn millis(d: Duration) -> AMQPValue {
    let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    i32::try_from(ms).map(AMQPValue::LongInt).unwrap_or(AMQPValue::LongLongInt(ms))
}

/// The queue name and arguments for a subscription to `exchange`.
fn queue_for(inner: &AmqpInner, exchange: &str, name: Option<String>) -> (String, FieldTable) {
    let o = &inner.options;
    let mut args = FieldTable::default();
    let mut put = |key: &str, d: Option<Duration>| {
        if let Some(d) = d {
            args.insert(ShortString::from(key), millis(d));
        }
    };
    let uuid = uuid::Uuid::new_v4();
    let name = if exchange == o.pidbox_exchange() || exchange == o.reply_exchange() {
        put("x-expires", Some(PIDBOX_EXPIRES));
        put("x-message-ttl", Some(PIDBOX_TTL));
        name.unwrap_or_else(|| format!("{uuid}.{exchange}"))
    } else if exchange == o.event_exchange {
        put("x-expires", o.event_queue_expires);
        put("x-message-ttl", o.event_queue_ttl);
        name.unwrap_or_else(|| format!("{exchange}.{uuid}"))
    } else {
        name.unwrap_or_else(|| format!("{exchange}.{uuid}"))
    };
    (name, args)
}

pub(crate) async fn subscribe(
    inner: Arc<AmqpInner>,
    exchange: &str,
    binding_key: &str,
    queue: Option<String>,
) -> Result<Subscription, BrokerError> {
    let (queue, args) = queue_for(&inner, exchange, queue);
    let (tx, rx) = mpsc::channel(SUBSCRIPTION_BUFFER);
    let (ready_tx, ready_rx) = oneshot::channel();
    let stop = CancellationToken::new();
    let job = Job {
        inner,
        exchange: exchange.to_owned(),
        binding_key: binding_key.to_owned(),
        queue: queue.clone(),
        args,
        tx,
        stop: stop.clone(),
    };
    tokio::spawn(job.run(ready_tx));
    match ready_rx.await {
        Ok(Ok(())) => Ok(Subscription::new(rx, queue, stop.drop_guard())),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(BrokerError::Closed),
    }
}

struct Job {
    inner: Arc<AmqpInner>,
    exchange: String,
    binding_key: String,
    queue: String,
    args: FieldTable,
    tx: mpsc::Sender<Result<FanoutMessage, BrokerError>>,
    stop: CancellationToken,
}

impl Job {
    async fn run(self, ready: oneshot::Sender<Result<(), BrokerError>>) {
        let mut ready = Some(ready);
        let mut backoff = self.inner.backoff();
        loop {
            let consumer = self.open().await;
            let (channel, mut consumer) = match consumer {
                Ok(c) => c,
                Err(e) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(Err(e));
                        return;
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?delay, queue = %self.queue, "subscription lost; subscribing again");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => continue,
                        _ = self.stop.cancelled() => return,
                    }
                }
            };
            match ready.take() {
                Some(r) => {
                    if r.send(Ok(())).is_err() {
                        let _ = channel.close(200, "unsubscribed").await;
                        return;
                    }
                }
                None => tracing::info!(queue = %self.queue, "subscription restored"),
            }
            backoff.reset();
            loop {
                tokio::select! {
                    _ = self.stop.cancelled() => {
                        let _ = channel.close(200, "unsubscribed").await;
                        return;
                    }
                    _ = self.tx.closed() => {
                        let _ = channel.close(200, "unsubscribed").await;
                        return;
                    }
                    next = consumer.next() => match next {
                        Some(Ok(d)) => {
                            let item = match convert::from_delivery(&d.properties, d.data) {
                                Ok(message) => {
                                    let mut envelope = celeriac_protocol::Envelope::new(message, d.exchange.as_str(), d.routing_key.as_str());
                                    envelope.delivery_tag = d.delivery_tag.to_string();
                                    Ok(FanoutMessage {
                                        exchange: d.exchange.as_str().to_owned(),
                                        routing_key: Some(d.routing_key.as_str().to_owned()),
                                        channel: self.queue.clone(),
                                        envelope,
                                    })
                                }
                                Err(_) => Err(BrokerError::Undecodable {
                                    queue: self.queue.clone(),
                                    kind: "too_deep",
                                    reason: format!("the message headers nest deeper than {} levels", convert::MAX_DEPTH),
                                    raw: Vec::new(),
                                    dead_lettered: false,
                                }),
                            };
                            // A reader that falls behind slows this down;
                            // RabbitMQ holds the rest (up to the queue's TTL).
                            if self.tx.send(item).await.is_err() {
                                let _ = channel.close(200, "unsubscribed").await;
                                return;
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, queue = %self.queue, "subscription channel lost; subscribing again");
                            break;
                        }
                        None => break,
                    }
                }
            }
        }
    }

    async fn open(&self) -> Result<(lapin::Channel, lapin::Consumer), BrokerError> {
        let inner = &self.inner;
        let link = inner.link().await?;
        let channel = link.conn.create_channel().await.map_err(|e| inner.error("opening a channel", e))?;
        let result = async {
            inner.declare_exchange_on(&channel, &self.exchange).await?;
            channel
                .queue_declare(
                    &self.queue,
                    QueueDeclareOptions { durable: false, exclusive: true, auto_delete: true, ..Default::default() },
                    self.args.clone(),
                )
                .await
                .map_err(|e| inner.error(&format!("declaring the queue {}", self.queue), e))?;
            channel
                .queue_bind(
                    &self.queue,
                    &self.exchange,
                    &self.binding_key,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| inner.error(&format!("binding {} to {}", self.queue, self.exchange), e))?;
            let consumer = channel
                .basic_consume(
                    &self.queue,
                    &inner.consumer_tag(),
                    BasicConsumeOptions { no_ack: true, ..Default::default() },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| inner.error(&format!("consuming from {}", self.queue), e))?;
            Ok::<_, BrokerError>(consumer)
        }
        .await;
        match result {
            Ok(consumer) => Ok((channel, consumer)),
            Err(e) => {
                let _ = channel.close(200, "failed").await;
                Err(e)
            }
        }
    }
}

//! Fanout exchanges on Redis: `PSUBSCRIBE` to `/{db}.<exchange>/<pattern>`,
//! receiving kombu envelopes (events, remote-control broadcasts).
//!
//! A task owns the PUB/SUB connection and forwards messages; after a lost
//! connection it reconnects with backoff and subscribes again. A `PING` every
//! health-check interval finds half-open connections, as kombu 5.7's
//! `maybe_check_subclient_health` does.

use std::sync::Arc;
use std::time::Duration;

use celeriac_protocol::Envelope;
use futures_util::StreamExt as _;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::Inner;
use crate::error::BrokerError;
use crate::subscription::{FanoutMessage, Subscription, SUBSCRIPTION_BUFFER};

pub(crate) async fn subscribe(
    inner: Arc<Inner>,
    exchange: &str,
    binding_key: &str,
) -> Result<Subscription, BrokerError> {
    let pattern = inner.keys.fanout_subscribe_pattern(exchange, binding_key);
    let (tx, rx) = mpsc::channel(SUBSCRIPTION_BUFFER);
    let (ready_tx, ready_rx) = oneshot::channel();
    let stop = CancellationToken::new();
    tokio::spawn(listen(inner, pattern.clone(), tx, ready_tx, stop.clone()));
    match ready_rx.await {
        Ok(Ok(())) => Ok(Subscription::new(rx, pattern, stop.drop_guard())),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(BrokerError::Closed),
    }
}

async fn listen(
    inner: Arc<Inner>,
    pattern: String,
    tx: mpsc::Sender<Result<FanoutMessage, BrokerError>>,
    ready: oneshot::Sender<Result<(), BrokerError>>,
    stop: CancellationToken,
) {
    let mut ready = Some(ready);
    let mut backoff = inner.backoff();
    let health = inner.options.health_check_interval;
    loop {
        let connected = async {
            let mut pubsub = inner.connector.pubsub().await?;
            pubsub
                .psubscribe(&pattern)
                .await
                .map_err(|e| BrokerError::from_redis(inner.connector.url(), "PSUBSCRIBE", e))?;
            Ok::<_, BrokerError>(pubsub)
        }
        .await;
        let pubsub = match connected {
            Ok(p) => p,
            Err(e) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(e));
                    return;
                }
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, pattern = %pattern, "fanout subscription lost; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue,
                    _ = stop.cancelled() => return,
                }
            }
        };
        if let Some(r) = ready.take() {
            if r.send(Ok(())).is_err() {
                return;
            }
        } else {
            tracing::info!(pattern = %pattern, "fanout subscription restored");
        }
        backoff.reset();
        let (mut sink, mut stream) = pubsub.split();
        let mut ping_due = tokio::time::interval(if health.is_zero() { Duration::from_secs(3600) } else { health });
        ping_due.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tx.closed() => return,
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    let full = msg.get_channel_name();
                    let (exchange, routing_key) = inner.keys.parse_fanout_channel(full);
                    let (exchange, routing_key) = (exchange.to_owned(), routing_key.map(str::to_owned));
                    let channel = full.strip_prefix(inner.keys.prefix()).unwrap_or(full).to_owned();
                    let payload = msg.get_payload_bytes();
                    let item = match Envelope::from_slice(payload) {
                        Ok(envelope) => Ok(FanoutMessage { exchange, routing_key, channel, envelope }),
                        Err(e) => {
                            tracing::warn!(channel = %channel, error = %e, "cannot process a fanout message");
                            Err(BrokerError::Undecodable { queue: channel, kind: e.kind().as_str(), reason: e.reason(), raw: payload.to_vec(), dead_lettered: false })
                        }
                    };
                    // A reader that falls behind slows this down; Redis then
                    // drops the connection past its pub/sub output limit,
                    // and the subscription is made again (messages published
                    // meanwhile are lost, as on any PUB/SUB).
                    if tx.send(item).await.is_err() {
                        return;
                    }
                }
                _ = ping_due.tick(), if !health.is_zero() => {
                    match tokio::time::timeout(health, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        _ => {
                            tracing::warn!(pattern = %pattern, "fanout connection missed its health check; reconnecting");
                            break;
                        }
                    }
                }
            }
        }
    }
}

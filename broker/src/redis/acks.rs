//! Acks in batches: every ack (and reject) of a broker goes through one
//! background task that takes all acks waiting at that moment and settles
//! them with one `ACK_MANY` script, the same check and the same `ZREM
//! unacked_index` + `HDEL unacked` per tag as the single-tag script, so kombu's
//! bookkeeping is exactly as before. Under load this turns one round trip
//! (and one script call) per task into one per batch; an idle worker's ack
//! still goes out at once.
//!
//! Each caller waits for its own tag's outcome, so an ack has happened when
//! [`crate::Delivery::ack`] returns, as before. If a batch cannot be run (the
//! batch task is gone with its runtime, or Redis kept failing), its callers
//! settle one by one through the single-tag path, with its retries and errors.

use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{mpsc, oneshot};

use super::{Inner, RetryLimit};
use crate::error::BrokerError;
use crate::window::Held;

/// Most tags settled by one script call.
const MAX_BATCH: usize = 512;

/// One ack waiting for its batch.
struct Request {
    tag: String,
    scores: Vec<String>,
    /// The script's answer for this tag (see `ACK`), or `None`: settle alone.
    reply: oneshot::Sender<Option<i64>>,
}

/// The batching front of a broker's acks (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct AckBatcher {
    tx: Mutex<Option<mpsc::UnboundedSender<Request>>>,
}

impl AckBatcher {
    /// Settles `held` in the next batch; its outcome code, or `None` when it
    /// has to be settled alone.
    pub async fn ack(&self, inner: &Arc<Inner>, held: &Held) -> Option<i64> {
        let (reply, answer) = oneshot::channel();
        let request = Request { tag: held.tag.clone(), scores: held.scores.clone(), reply };
        self.sender(inner)?.send(request).ok()?;
        answer.await.ok().flatten()
    }

    /// The batch task's queue, (re)starting the task on the current runtime
    /// if there is none or it ended with its runtime.
    fn sender(&self, inner: &Arc<Inner>) -> Option<mpsc::UnboundedSender<Request>> {
        let mut slot = self.tx.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(tx) = slot.as_ref().filter(|tx| !tx.is_closed()) {
            return Some(tx.clone());
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (tx, rx) = mpsc::unbounded_channel();
        runtime.spawn(run(Arc::downgrade(inner), rx));
        *slot = Some(tx.clone());
        Some(tx)
    }
}

/// The batch task: ends when the broker is dropped.
async fn run(inner: Weak<Inner>, mut rx: mpsc::UnboundedReceiver<Request>) {
    let mut batch: Vec<Request> = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let Some(broker) = inner.upgrade() else { break };
        let outcome = broker.ack_many(&batch).await;
        drop(broker);
        match outcome {
            Ok(codes) if codes.len() == batch.len() => {
                for (request, code) in batch.drain(..).zip(codes) {
                    let _ = request.reply.send(Some(code));
                }
            }
            Ok(_) | Err(_) => {
                if let Err(e) = outcome {
                    tracing::warn!(error = %e, acks = batch.len(), "a batch of acks failed; settling them one by one");
                }
                for request in batch.drain(..) {
                    let _ = request.reply.send(None);
                }
            }
        }
    }
}

impl Inner {
    /// Runs `ACK_MANY` for `batch`: one outcome code per tag, in order.
    async fn ack_many(&self, batch: &[Request]) -> Result<Vec<i64>, BrokerError> {
        let keys = [self.keys.unacked(), self.keys.unacked_index()];
        let counts: Vec<String> = batch.iter().map(|r| r.scores.len().to_string()).collect();
        let mut args: Vec<&[u8]> = Vec::with_capacity(batch.len() * 3);
        for (request, count) in batch.iter().zip(&counts) {
            args.push(request.tag.as_bytes());
            args.push(count.as_bytes());
            args.extend(request.scores.iter().map(|s| s.as_bytes()));
        }
        let limit = RetryLimit::For(self.options.settle_timeout);
        self.retrying("ack", limit, || self.eval("ack", &self.scripts.ack_many, &keys, &args)).await
    }
}

//! Settlements that could not reach Redis, retried in the background.
//!
//! A worker that finished a task must not keep its prefetch slot because Redis
//! is down: the slot would stay taken until a restart, and a long outage would
//! leave the worker with no room to fetch once Redis is back. So when an ack,
//! reject or requeue keeps failing, the delivery hands it here and frees its
//! slot. One background task per broker retries the oldest first, with the
//! reconnect backoff, until Redis answers.
//!
//! Nothing is lost if a deferred settlement never happens (the worker stops
//! first, or the queue is full): the message is still in kombu's `unacked`
//! with the score this consumer wrote, so the visibility sweep of any worker,
//! Python or Rust, restores it after `visibility_timeout`: at least once, as
//! kombu promises. The score guard of the scripts keeps a late ack from
//! removing a later delivery of the same message.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::Inner;
use crate::window::Held;

/// Most settlements waiting at once; beyond it they are left to the
/// visibility timeout (each is a tag and a score, about 100 bytes).
const MAX_DEFERRED: usize = 100_000;

/// What a deferred settlement does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DeferredKind {
    /// Remove from `unacked` (an ack or a reject).
    Remove,
    /// Put back on its queue (a requeue).
    Requeue,
}

#[derive(Debug, Default)]
struct Queue {
    waiting: VecDeque<(Held, DeferredKind)>,
    /// The retry task, while it runs (it ends when nothing waits, or with
    /// the runtime it was spawned on).
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The broker's deferred settlements (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Deferred {
    queue: Mutex<Queue>,
}

impl Deferred {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Settlements waiting now.
    pub fn len(&self) -> usize {
        self.lock().waiting.len()
    }

    /// Queues a settlement; false if too many wait already (it is then left
    /// to the visibility timeout) or there is no runtime to retry it on.
    pub fn push(&self, inner: &Arc<Inner>, held: Held, kind: DeferredKind) -> bool {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return false };
        let mut q = self.lock();
        if q.waiting.len() >= MAX_DEFERRED {
            tracing::error!(
                delivery_tag = %held.tag,
                waiting = q.waiting.len(),
                "too many settlements wait for Redis; this message is left in unacked for the visibility timeout"
            );
            return false;
        }
        q.waiting.push_back((held, kind));
        if q.task.as_ref().is_none_or(|t| t.is_finished()) {
            q.task = Some(runtime.spawn(run(Arc::downgrade(inner))));
        }
        true
    }
}

/// Retries the waiting settlements, oldest first, until none is left or the
/// broker is dropped.
async fn run(inner: Weak<Inner>) {
    let mut backoff = None;
    loop {
        let Some(broker) = inner.upgrade() else { return };
        let next = {
            let mut q = broker.deferred.lock();
            match q.waiting.front() {
                Some(item) => Some(item.clone()),
                None => {
                    q.task = None;
                    None
                }
            }
        };
        let Some((held, kind)) = next else { return };
        let outcome = match kind {
            DeferredKind::Remove => broker.ack_once(&held).await.map(drop),
            DeferredKind::Requeue => broker.requeue_once(&held).await,
        };
        match outcome {
            Ok(()) => {
                backoff = None;
                broker.deferred.lock().waiting.pop_front();
                tracing::info!(delivery_tag = %held.tag, ?kind, "a deferred settlement reached Redis");
            }
            Err(e) if e.is_transient() => {
                let delay = backoff.get_or_insert_with(|| broker.backoff()).next_delay();
                tracing::debug!(error = %e, retry_in = ?delay, waiting = broker.deferred.len(), "deferred settlements still wait for Redis");
                drop(broker);
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                // Not something waiting fixes: leave it to the visibility timeout.
                tracing::error!(delivery_tag = %held.tag, error = %e, "a deferred settlement failed; the message is left in unacked for the visibility timeout");
                broker.deferred.lock().waiting.pop_front();
            }
        }
    }
}

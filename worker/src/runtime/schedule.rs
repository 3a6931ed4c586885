//! Scheduling: what an admitted task waits for before it runs, in order:
//! its ETA or countdown (parked in the [`super::timer`] without an execution
//! slot, its visibility kept fresh so no other worker restores it meanwhile),
//! its rate limit, and an execution slot (`-c`). A worker that stops while a
//! task waits leaves the message unacked, and the shutdown hands it back to
//! its queue.

use celeriac_protocol::TaskMessage;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::Shared;

/// The ETA of `task` if it is still ahead of `now`. An ETA past the last
/// instant jiff knows (year 9999 in some offsets) reads as that instant, so
/// the task is held for ever, as Celery's timer would hold it.
pub(super) fn eta_ahead(task: &TaskMessage, now: jiff::Timestamp) -> Option<jiff::Timestamp> {
    task.headers.eta_instant().filter(|eta| *eta > now)
}

impl Shared {
    /// Waits for the task's rate limit and an execution slot, and returns
    /// the slot; `None` when the worker stops first. (Its ETA, if any, has
    /// passed: the timer held it until then.)
    pub(super) async fn schedule(&self, task: &TaskMessage, stop: &CancellationToken) -> Option<OwnedSemaphorePermit> {
        let wait = self.rate_limits.reserve(&task.headers.task);
        if !wait.is_zero() {
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => None,
            permit = self.permits.clone().acquire_owned() => permit.ok(),
        }
    }
}

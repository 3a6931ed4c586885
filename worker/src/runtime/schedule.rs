//! Scheduling: what an admitted task waits for before it runs, in order:
//! its ETA or countdown (held without an execution slot, its visibility kept
//! fresh so no other worker restores it meanwhile), its rate limit, and an
//! execution slot (`-c`). A worker that stops while a task waits leaves the
//! message unacked, and the shutdown hands it back to its queue.

use std::sync::atomic::Ordering;
use std::time::Duration;

use celeriac_broker::{ConsumerControl, Delivery};
use celeriac_protocol::time::PyDateTime;
use celeriac_protocol::TaskMessage;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::Shared;
use crate::state::Phase;

impl Shared {
    /// Waits until the task may run and returns its execution slot; `None`
    /// when the worker stops first.
    pub(super) async fn schedule(
        &self,
        delivery: &mut Delivery,
        task: &TaskMessage,
        control: &ConsumerControl,
        stop: &CancellationToken,
    ) -> Option<OwnedSemaphorePermit> {
        let (id, name) = (&task.headers.id, &task.headers.task);
        // An ETA past the last instant jiff knows (year 9999 in some offsets)
        // is held for ever, as Celery's timer would hold it.
        if let Some(eta) = task.headers.eta_instant() {
            if eta > jiff::Timestamp::now() {
                let _held = Held::hold(self, control);
                let text = task.headers.eta.as_ref().map(PyDateTime::to_iso).unwrap_or_default();
                self.state.set_phase(id, Phase::Scheduled { eta: text, priority: delivery.message().priority });
                loop {
                    let wait = eta.duration_since(jiff::Timestamp::now());
                    if wait.is_negative() || wait.is_zero() {
                        break;
                    }
                    let step = Duration::try_from(wait).unwrap_or(Duration::MAX).min(self.config.eta_refresh);
                    tokio::select! {
                        _ = stop.cancelled() => return None,
                        _ = tokio::time::sleep(step) => {}
                    }
                    if let Err(e) = Box::pin(delivery.extend_visibility()).await {
                        warn!("could not refresh the visibility of ETA task {id}: {e}");
                    }
                }
                self.state.set_phase(id, Phase::Reserved);
            }
        }
        let wait = self.rate_limits.reserve(name);
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

/// Counts a held ETA task, and gives the prefetch window a slot for it while
/// fewer than `max_scheduled_tasks` are held (Celery's
/// `qos.increment_eventually`); undone on drop.
struct Held<'a> {
    shared: &'a Shared,
    control: &'a ConsumerControl,
    widened: bool,
}

impl<'a> Held<'a> {
    fn hold(shared: &'a Shared, control: &'a ConsumerControl) -> Held<'a> {
        let before = shared.scheduled.fetch_add(1, Ordering::Relaxed);
        let widened = before < shared.config.max_scheduled_tasks;
        if widened {
            control.increment_prefetch();
        } else if before == shared.config.max_scheduled_tasks {
            warn!("{before} ETA tasks held (worker_max_scheduled_tasks): reserving no more until some are due");
        }
        Held { shared, control, widened }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.shared.scheduled.fetch_sub(1, Ordering::Relaxed);
        if self.widened {
            self.control.decrement_prefetch();
        }
    }
}

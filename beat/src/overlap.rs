//! No-overlap: whether an entry's previous run is still queued or running,
//! judged from the result backend as Celery stores it, so it works whichever
//! worker (Python or Rust) runs the task.
//!
//! A run counts as unfinished while its result is PENDING (queued, or
//! running on a worker without `task_track_started`), RECEIVED, STARTED,
//! RETRY or a custom state; SUCCESS, FAILURE, REVOKED (expired runs too),
//! REJECTED and IGNORED are finished. Results must be stored for this to work
//! (no `ignore_result` on those tasks); a result that expired or never comes
//! blocks only until the entry's `no_overlap_timeout`.

use std::future::Future;
use std::pin::Pin;

use celeriac_protocol::result::State;

/// A future of a task's state.
pub type StateFuture<'a> = Pin<Box<dyn Future<Output = Result<State, String>> + Send + 'a>>;

/// Reads task states (the result backend).
pub trait TaskStates: Send + Sync {
    /// The stored state of `task_id` (PENDING when nothing is stored).
    fn state<'a>(&'a self, task_id: &'a str) -> StateFuture<'a>;
}

impl TaskStates for celeriac_backend::RedisBackend {
    fn state<'a>(&'a self, task_id: &'a str) -> StateFuture<'a> {
        Box::pin(async move { self.get(task_id).await.map(|meta| meta.status).map_err(|e| e.to_string()) })
    }
}

/// Whether a run in `state` may still be queued or running.
pub fn unfinished(state: &State) -> bool {
    !matches!(state, State::Success | State::Failure | State::Revoked | State::Rejected | State::Ignored)
}

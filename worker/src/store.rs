//! Where a worker puts task outcomes: the [`ResultStore`] trait, and its
//! implementation for Celery's Redis result backend (results and the chord
//! join a header task takes part in).

use std::sync::Arc;

use celeriac_backend::{BackendError, ChordClaim, ChordOutcome, RedisBackend};
use celeriac_protocol::result::{GroupMeta, ResultMeta, ResultTuple, State};
use celeriac_protocol::Value;
use futures_util::future::BoxFuture;

/// A chord header task's part of the join: which chord, where in it, and how
/// it ended.
#[derive(Debug, Clone)]
pub struct ChordPartReturn {
    /// The chord's group id.
    pub group_id: String,
    /// The task's position in the header (`group_index`).
    pub group_index: Option<i64>,
    /// The header task's id.
    pub task_id: String,
    /// How it ended (SUCCESS, FAILURE, REVOKED).
    pub state: State,
    /// The return value or the serialized exception, as stored.
    pub result: Value,
    /// This run's claim token: the same on every retry of this part, so a
    /// retry after a lost reply still owns the claim it took.
    pub token: String,
}

/// Why a store operation failed, and whether waiting can help.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    /// What happened, for the log.
    pub message: String,
    /// The store could not be reached (an outage): worth retrying. Other
    /// errors (a value it cannot encode, a bad record) will fail again.
    pub transient: bool,
}

impl StoreError {
    /// An outage: the worker retries until the store is back.
    pub fn unreachable(message: impl Into<String>) -> StoreError {
        StoreError { message: message.into(), transient: true }
    }

    /// An error retrying cannot fix.
    pub fn permanent(message: impl Into<String>) -> StoreError {
        StoreError { message: message.into(), transient: false }
    }
}

impl From<BackendError> for StoreError {
    fn from(e: BackendError) -> StoreError {
        StoreError { transient: e.is_connection(), message: e.to_string() }
    }
}

/// Where outcomes go (the Redis result backend in production). A transient
/// error makes the worker retry until the store is back (or it stops, and
/// then a late-ack message is not acknowledged); other errors are logged.
pub trait ResultStore: Send + Sync + 'static {
    /// Stores a record.
    fn store(&self, meta: Arc<ResultMeta>) -> BoxFuture<'static, Result<(), StoreError>>;

    /// The stored state of `task_id`, if any (PENDING when nothing is stored).
    /// A store that cannot read says `None`.
    fn state(&self, task_id: &str) -> BoxFuture<'static, Result<Option<State>, StoreError>> {
        let _ = task_id;
        Box::pin(async { Ok(None) })
    }

    /// The stored record of `task_id` (a PENDING one when nothing is
    /// stored); `None` from a store that cannot read.
    fn meta(&self, task_id: &str) -> BoxFuture<'static, Result<Option<ResultMeta>, StoreError>> {
        let _ = task_id;
        Box::pin(async { Ok(None) })
    }

    /// Records a finished chord header task (Celery's `on_chord_part_return`).
    /// A store without chord support reports the chord as never complete.
    /// Called again with the same part (and token) after a transient error.
    fn on_chord_part_return(&self, part: Arc<ChordPartReturn>) -> BoxFuture<'static, Result<ChordOutcome, StoreError>> {
        let _ = part;
        Box::pin(async { Ok(ChordOutcome::NotReady { ready: 0, total: None }) })
    }

    /// Records that chord `group_id` completes after `size` header parts
    /// (Celery's `set_chord_size`), before its header is sent. A store
    /// without chord support refuses: the chord could never complete.
    fn set_chord_size(&self, group_id: &str, size: u64) -> BoxFuture<'static, Result<(), StoreError>> {
        let _ = size;
        let group_id = group_id.to_owned();
        Box::pin(async move {
            Err(StoreError::permanent(format!("chord {group_id}: this result store cannot join chords")))
        })
    }

    /// Saves a chord's header group result when a part of it is a group
    /// (Celery's `apply_chord`), so the join keeps the nesting. A store that
    /// cannot join chords has nothing to save.
    fn apply_chord(&self, header: &ResultTuple) -> BoxFuture<'static, Result<(), StoreError>> {
        let _ = header;
        Box::pin(async { Ok(()) })
    }

    /// Raises the size of chord `group_id` by one (Celery's `add_to_chord`:
    /// `INCR .t`), before a new part is sent.
    fn add_to_chord(&self, group_id: &str) -> BoxFuture<'static, Result<(), StoreError>> {
        let group_id = group_id.to_owned();
        Box::pin(async move {
            Err(StoreError::permanent(format!("chord {group_id}: this result store cannot join chords")))
        })
    }

    /// After the body of a completed chord was sent: cleans up the join.
    fn finish_chord(&self, claim: ChordClaim) -> BoxFuture<'static, Result<(), StoreError>> {
        let _ = claim;
        Box::pin(async { Ok(()) })
    }
}

/// The `rpc://` backend: results go to the task's reply queue on RabbitMQ.
/// No state is kept there (`state` reads nothing), and chords need a backend
/// that stores (a chord with `rpc://` never completes, as in Celery).
impl ResultStore for celeriac_backend::RpcBackend {
    fn store(&self, meta: Arc<ResultMeta>) -> BoxFuture<'static, Result<(), StoreError>> {
        let backend = self.clone();
        Box::pin(async move { backend.store(&meta).await.map(drop).map_err(StoreError::from) })
    }
}

impl ResultStore for RedisBackend {
    fn store(&self, meta: Arc<ResultMeta>) -> BoxFuture<'static, Result<(), StoreError>> {
        let backend = self.clone();
        Box::pin(async move { backend.store(&meta).await.map(|_| ()).map_err(StoreError::from) })
    }

    fn state(&self, task_id: &str) -> BoxFuture<'static, Result<Option<State>, StoreError>> {
        let (backend, id) = (self.clone(), task_id.to_owned());
        Box::pin(async move { backend.get(&id).await.map(|m| Some(m.status)).map_err(StoreError::from) })
    }

    fn meta(&self, task_id: &str) -> BoxFuture<'static, Result<Option<ResultMeta>, StoreError>> {
        let (backend, id) = (self.clone(), task_id.to_owned());
        Box::pin(async move { backend.get(&id).await.map(Some).map_err(StoreError::from) })
    }

    fn on_chord_part_return(&self, part: Arc<ChordPartReturn>) -> BoxFuture<'static, Result<ChordOutcome, StoreError>> {
        let backend = self.clone();
        Box::pin(async move {
            backend
                .on_chord_part_return_as(
                    &part.group_id,
                    part.group_index,
                    &part.task_id,
                    &part.state,
                    &part.result,
                    &part.token,
                )
                .await
                .map_err(StoreError::from)
        })
    }

    fn set_chord_size(&self, group_id: &str, size: u64) -> BoxFuture<'static, Result<(), StoreError>> {
        let (backend, group_id) = (self.clone(), group_id.to_owned());
        Box::pin(async move { backend.set_chord_size(&group_id, size).await.map_err(StoreError::from) })
    }

    fn apply_chord(&self, header: &ResultTuple) -> BoxFuture<'static, Result<(), StoreError>> {
        let (backend, meta) = (self.clone(), GroupMeta::new(header.clone()));
        Box::pin(async move { backend.apply_chord(meta.group_id(), &meta).await.map(drop).map_err(StoreError::from) })
    }

    fn add_to_chord(&self, group_id: &str) -> BoxFuture<'static, Result<(), StoreError>> {
        let (backend, group_id) = (self.clone(), group_id.to_owned());
        Box::pin(async move { backend.add_to_chord(&group_id).await.map(drop).map_err(StoreError::from) })
    }

    fn finish_chord(&self, claim: ChordClaim) -> BoxFuture<'static, Result<(), StoreError>> {
        let backend = self.clone();
        Box::pin(async move { backend.finish_chord(&claim).await.map(|_| ()).map_err(StoreError::from) })
    }
}

/// A worker's result store as the canvas applier's chord sizes (an outage
/// stays transient, so the applier's caller retries it).
pub(crate) struct ChordSizesOf(pub Arc<dyn ResultStore>);

impl From<StoreError> for celeriac_client::ChordSizeError {
    fn from(e: StoreError) -> celeriac_client::ChordSizeError {
        celeriac_client::ChordSizeError { message: e.message, transient: e.transient }
    }
}

impl celeriac_client::ChordSizes for ChordSizesOf {
    fn set_chord_size(&self, group_id: &str, size: u64) -> BoxFuture<'_, Result<(), celeriac_client::ChordSizeError>> {
        let fut = self.0.set_chord_size(group_id, size);
        Box::pin(async move { fut.await.map_err(Into::into) })
    }

    fn apply_chord(&self, header: &ResultTuple) -> BoxFuture<'_, Result<(), celeriac_client::ChordSizeError>> {
        let fut = self.0.apply_chord(header);
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}

//! Where a worker puts task outcomes: the [`ResultStore`] trait, and its
//! implementation for Celery's Redis result backend (results and the chord
//! join a header task takes part in).

use celeriac_backend::{ChordClaim, ChordOutcome, RedisBackend};
use celeriac_protocol::result::{ResultMeta, State};
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
}

/// Where outcomes go (the Redis result backend in production). Errors are
/// logged by the worker, never fatal to it.
pub trait ResultStore: Send + Sync + 'static {
    /// Stores a record.
    fn store(&self, meta: ResultMeta) -> BoxFuture<'static, Result<(), String>>;

    /// The stored state of `task_id`, if any (PENDING when nothing is stored).
    /// A store that cannot read says `None`.
    fn state(&self, task_id: &str) -> BoxFuture<'static, Result<Option<State>, String>> {
        let _ = task_id;
        Box::pin(async { Ok(None) })
    }

    /// Records a finished chord header task (Celery's `on_chord_part_return`).
    /// A store without chord support reports the chord as never complete.
    fn on_chord_part_return(&self, part: ChordPartReturn) -> BoxFuture<'static, Result<ChordOutcome, String>> {
        let _ = part;
        Box::pin(async { Ok(ChordOutcome::NotReady { ready: 0, total: None }) })
    }

    /// After the body of a completed chord was sent: cleans up the join.
    fn finish_chord(&self, claim: ChordClaim) -> BoxFuture<'static, Result<(), String>> {
        let _ = claim;
        Box::pin(async { Ok(()) })
    }
}

impl ResultStore for RedisBackend {
    fn store(&self, meta: ResultMeta) -> BoxFuture<'static, Result<(), String>> {
        let backend = self.clone();
        Box::pin(async move { backend.store(&meta).await.map(|_| ()).map_err(|e| e.to_string()) })
    }

    fn state(&self, task_id: &str) -> BoxFuture<'static, Result<Option<State>, String>> {
        let (backend, id) = (self.clone(), task_id.to_owned());
        Box::pin(async move { backend.get(&id).await.map(|m| Some(m.status)).map_err(|e| e.to_string()) })
    }

    fn on_chord_part_return(&self, part: ChordPartReturn) -> BoxFuture<'static, Result<ChordOutcome, String>> {
        let backend = self.clone();
        Box::pin(async move {
            backend
                .on_chord_part_return(&part.group_id, part.group_index, &part.task_id, &part.state, &part.result)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn finish_chord(&self, claim: ChordClaim) -> BoxFuture<'static, Result<(), String>> {
        let backend = self.clone();
        Box::pin(async move { backend.finish_chord(&claim).await.map(|_| ()).map_err(|e| e.to_string()) })
    }
}

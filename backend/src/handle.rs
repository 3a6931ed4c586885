//! [`ResultHandle`]: what Celery's `AsyncResult` is to a Python client, for one
//! task id: its state, its result once ready (re-raising a failure as
//! [`TaskFailed`]), and forgetting it.

use std::fmt;
use std::time::Duration;

use celeriac_protocol::result::{ExceptionInfo, ResultMeta, State};
use celeriac_protocol::Value;

use crate::backend::RedisBackend;
use crate::error::BackendError;

/// A task's stored failure: what `AsyncResult.get()` raises in Python.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskFailed {
    /// The task.
    pub task_id: String,
    /// FAILURE or REVOKED.
    pub state: State,
    /// The exception (for REVOKED, `celery.exceptions.TaskRevokedError`).
    pub exception: ExceptionInfo,
    /// The formatted traceback, if the worker stored one.
    pub traceback: Option<String>,
}

impl TaskFailed {
    /// The failure of a record in a propagating state (FAILURE, REVOKED), or
    /// `None` for any other state.
    pub fn from_meta(meta: &ResultMeta) -> Result<Option<TaskFailed>, BackendError> {
        if !meta.status.propagates() {
            return Ok(None);
        }
        let exception = meta
            .exception()
            .map_err(|source| BackendError::Record { key: meta.task_id.clone(), source })?
            .unwrap_or_else(|| ExceptionInfo::new("builtins", "Exception", Vec::new()));
        Ok(Some(TaskFailed {
            task_id: meta.task_id.clone(),
            state: meta.status.clone(),
            exception,
            traceback: meta.traceback.clone(),
        }))
    }

    /// Python's `repr()` of the exception, e.g. `ValueError('bad')`.
    pub fn python_repr(&self) -> String {
        self.exception.python_repr()
    }
}

impl fmt::Display for TaskFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let module = self.exception.exc_module.as_deref().unwrap_or("?");
        write!(f, "task {} {}: {}.{}", self.task_id, self.state, module, self.python_repr())
    }
}

impl std::error::Error for TaskFailed {}

/// Why [`ResultHandle::get`] returned no value.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    /// The task failed or was revoked: the exception Python would re-raise.
    #[error(transparent)]
    Failed(TaskFailed),
    /// The task was not ready in time.
    #[error("timed out after {timeout:?} waiting for the result of task {task_id}")]
    Timeout {
        /// The task.
        task_id: String,
        /// How long was waited.
        timeout: Duration,
    },
    /// The backend could not be read.
    #[error(transparent)]
    Backend(BackendError),
}

impl From<BackendError> for GetError {
    fn from(e: BackendError) -> GetError {
        match e {
            BackendError::Timeout { task_id, timeout } => GetError::Timeout { task_id, timeout },
            other => GetError::Backend(other),
        }
    }
}

impl GetError {
    /// The task's failure, if that is what this is.
    pub fn task_failed(&self) -> Option<&TaskFailed> {
        match self {
            GetError::Failed(failed) => Some(failed),
            _ => None,
        }
    }
}

/// An `AsyncResult`: one task's result in the backend.
#[derive(Clone, Debug)]
pub struct ResultHandle {
    backend: RedisBackend,
    id: String,
}

impl ResultHandle {
    pub(crate) fn new(backend: RedisBackend, task_id: &str) -> ResultHandle {
        ResultHandle { backend, id: task_id.to_owned() }
    }

    /// The task id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The stored record (PENDING when there is none).
    pub async fn meta(&self) -> Result<ResultMeta, BackendError> {
        self.backend.get(&self.id).await
    }

    /// The task's state (`AsyncResult.state`).
    pub async fn state(&self) -> Result<State, BackendError> {
        Ok(self.meta().await?.status)
    }

    /// Whether the task has finished (`AsyncResult.ready()`).
    pub async fn ready(&self) -> Result<bool, BackendError> {
        Ok(self.meta().await?.status.is_ready())
    }

    /// Waits for the task (for ever when `timeout` is `None`) and returns its
    /// return value, or its failure as [`GetError::Failed`] (`AsyncResult.get()`
    /// with `propagate=True`).
    pub async fn get(&self, timeout: Option<Duration>) -> Result<Value, GetError> {
        let meta = self.backend.wait(&self.id, timeout).await?;
        match TaskFailed::from_meta(&meta)? {
            Some(failed) => Err(GetError::Failed(failed)),
            None => Ok(meta.result),
        }
    }

    /// Deletes the stored result (`AsyncResult.forget()`).
    pub async fn forget(&self) -> Result<(), BackendError> {
        self.backend.forget(&self.id).await
    }
}

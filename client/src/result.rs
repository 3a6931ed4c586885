//! Sending a task by name and getting a handle
//! that waits for its result, as Python's `app.send_task(...)` returns an
//! `AsyncResult`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use celeriac_backend::RedisBackend;
//! use celeriac_broker::{Broker, Producer, ProducerConfig, SendOptions};
//! use celeriac_protocol::Map;
//! use celeriac_client::Client;
//!
//! let broker = Broker::from_url("redis://127.0.0.1:6379/0")?;
//! let backend = RedisBackend::from_url("redis://127.0.0.1:6379/1").await?;
//! let client = Client::new(Producer::new(broker, ProducerConfig::default()), Some(backend));
//! let result = client.send_task("tasks.add", vec![2.into(), 3.into()], Map::new(), SendOptions::default()).await?;
//! let value = result.get(Some(std::time::Duration::from_secs(10))).await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use celeriac_backend::{GetError, RedisBackend, ResultHandle};
use celeriac_broker::{BrokerError, Producer, SendOptions};
use celeriac_protocol::result::ResultMeta;
use celeriac_protocol::{Map, Value};

/// Why a result cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    /// No result backend was configured (Celery's `DisabledBackend`).
    #[error("no result backend is configured for task {0}; set result_backend to read results")]
    NoBackend(String),
    /// The wait failed, timed out, or the task failed.
    #[error(transparent)]
    Get(Box<GetError>),
}

impl From<GetError> for ResultError {
    fn from(e: GetError) -> ResultError {
        ResultError::Get(Box::new(e))
    }
}

/// Sends tasks and reads their results. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    producer: Producer,
    backend: Option<RedisBackend>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("backend", &self.backend.as_ref().map(RedisBackend::url)).finish()
    }
}

impl Client {
    /// A client publishing through `producer` and reading results from
    /// `backend` (`None`: results disabled).
    pub fn new(producer: Producer, backend: Option<RedisBackend>) -> Client {
        Client { producer, backend }
    }

    /// The producer.
    pub fn producer(&self) -> &Producer {
        &self.producer
    }

    /// The result backend, if any.
    pub fn backend(&self) -> Option<&RedisBackend> {
        self.backend.as_ref()
    }

    /// Sends task `name` with `args`, `kwargs` and `options` (queue, routing
    /// key, priority, countdown, eta, expires, headers, time limits, links).
    pub async fn send_task(
        &self,
        name: &str,
        args: Vec<Value>,
        kwargs: Map,
        options: SendOptions,
    ) -> Result<AsyncResult, BrokerError> {
        let id = self.producer.send_task(name, args, kwargs, options).await?;
        Ok(self.result(&id))
    }

    /// The result of a task sent before, by id.
    pub fn result(&self, task_id: &str) -> AsyncResult {
        AsyncResult { id: task_id.to_owned(), handle: self.backend.as_ref().map(|b| b.result(task_id)) }
    }
}

/// A sent task's result: its id, and a way to wait for it.
#[derive(Clone, Debug)]
pub struct AsyncResult {
    id: String,
    handle: Option<ResultHandle>,
}

impl AsyncResult {
    /// The task id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Waits (for ever when `timeout` is `None`) and returns the task's
    /// return value, or the exception it raised as [`GetError::Failed`].
    pub async fn get(&self, timeout: Option<Duration>) -> Result<Value, ResultError> {
        Ok(self.handle()?.get(timeout).await?)
    }

    /// The stored record now (PENDING when there is none).
    pub async fn meta(&self) -> Result<ResultMeta, ResultError> {
        Ok(self.handle()?.meta().await.map_err(GetError::from)?)
    }

    fn handle(&self) -> Result<&ResultHandle, ResultError> {
        self.handle.as_ref().ok_or_else(|| ResultError::NoBackend(self.id.clone()))
    }
}

//! Sending a task or a canvas and getting a handle that waits for its
//! result: [`Client::send_task`] as Python's `app.send_task(...)`,
//! [`Client::apply_async`] as `sig.apply_async()`, returning an
//! [`AsyncResult`] or, for a group, a [`GroupResult`] (with their parents,
//! as Celery links a chain's results).
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

use std::time::{Duration, Instant};

use celeriac_backend::{GetError, RedisBackend, ResultHandle};
use celeriac_broker::{BrokerError, Producer, SendOptions};
use celeriac_protocol::result::{ResultMeta, ResultTuple};
use celeriac_protocol::{Map, Value};
use futures_util::future::BoxFuture;

use crate::engine::{Engine, Op, R};
use crate::signature::Signature;
use crate::CanvasError;

/// Why a result cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    /// No result backend was configured (Celery's `DisabledBackend`).
    #[error("no result backend is configured for task {0}; set result_backend to read results")]
    NoBackend(String),
    /// The wait failed, timed out, or the task failed.
    #[error(transparent)]
    Get(Box<GetError>),
    /// The task's record lists children that are not result tuples.
    #[error("the children of task {0} cannot be read: {1}")]
    Children(String, String),
}

impl From<GetError> for ResultError {
    fn from(e: GetError) -> ResultError {
        ResultError::Get(Box::new(e))
    }
}

/// Why a client could not be made from URLs.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The broker URL was refused.
    #[error("cannot use the broker: {0}")]
    Broker(BrokerError),
    /// The result backend could not be reached or its URL was refused.
    #[error("cannot use the result backend: {0}")]
    Backend(celeriac_backend::BackendError),
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
    /// A client for a broker URL (`redis://`, `rediss://`, ...) and an
    /// optional Redis result backend URL, with the default producer settings
    /// (queue `celery`, JSON, UTC).
    pub async fn from_urls(broker: &str, backend: Option<&str>) -> Result<Client, ConnectError> {
        let broker = celeriac_broker::Broker::from_url(broker).map_err(ConnectError::Broker)?;
        let backend = match backend {
            Some(url) => Some(RedisBackend::from_url(url).await.map_err(ConnectError::Backend)?),
            None => None,
        };
        Ok(Client::new(Producer::new(broker, celeriac_broker::ProducerConfig::default()), backend))
    }

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
        AsyncResult { id: task_id.to_owned(), backend: self.backend.clone(), parent: None }
    }

    /// The result of a group sent before, from its id and its members' ids
    /// (Celery's `GroupResult(id, [AsyncResult(m) ...])`).
    pub fn group_result<S: AsRef<str>>(&self, group_id: &str, members: &[S]) -> GroupResult {
        GroupResult {
            id: group_id.to_owned(),
            results: members.iter().map(|m| CanvasResult::Task(self.result(m.as_ref()))).collect(),
            parent: None,
        }
    }

    /// A result read from Celery's result tuple (what a parent's `children`
    /// holds, `result_from_tuple`).
    pub fn result_from_tuple(&self, tuple: &ResultTuple) -> CanvasResult {
        tuple_result(&self.backend, tuple, 0)
    }

    /// Sends a signature of any canvas type (`sig.apply_async()`): the
    /// messages and chord sizes Celery 5.7 sends and writes for it, in the
    /// same order. Returns the task's result, for a chain the last task's
    /// (its parents are the earlier steps), for a group a [`GroupResult`],
    /// for a chord the body's (its parent is the header's group).
    pub async fn apply_async(&self, sig: &Signature) -> Result<CanvasResult, CanvasError> {
        self.apply_async_with(sig, Vec::new(), Map::new(), Map::new()).await
    }

    /// `sig.apply_async(args, kwargs, **options)`: `args` are prepended to the
    /// signature's (unless it is immutable), `kwargs` and `options` merged in.
    pub async fn apply_async_with(
        &self,
        sig: &Signature,
        args: Vec<Value>,
        kwargs: Map,
        options: Map,
    ) -> Result<CanvasResult, CanvasError> {
        sig.check()?;
        let refused = |e: crate::engine::Refused| CanvasError::Invalid { task: sig.name().to_owned(), reason: e.0 };
        sig.node.check_links(0).map_err(refused)?;
        crate::engine::check_link_options(sig.name(), &options, 0).map_err(refused)?;
        let mut engine = Engine::new(self.producer.config().reply_to.clone());
        let res = engine
            .apply_async(sig.node.clone(), args, kwargs, options)
            .map_err(|e| CanvasError::Invalid { task: sig.name().to_owned(), reason: e.0 })?
            .ok_or_else(|| CanvasError::Invalid {
                task: sig.name().to_owned(),
                reason: "an empty chain sends nothing".into(),
            })?;
        if let Some(why) = engine.over_limits() {
            return Err(CanvasError::Invalid { task: sig.name().to_owned(), reason: why.to_owned() });
        }
        // Checked before the first message goes out: every message's
        // options, and a backend for the chords.
        let ops = std::mem::take(&mut engine.ops);
        let mut checked = Vec::with_capacity(ops.len());
        for op in ops {
            let send = match &op {
                Op::Send { task, options, .. } => Some(crate::apply::send_options(task, options)?),
                Op::ChordSize { group_id, .. } if self.backend.is_none() => {
                    return Err(CanvasError::NoBackend(group_id.clone()))
                }
                _ => None,
            };
            checked.push((op, send));
        }
        for (op, send) in checked {
            // Boxed: the producer's and backend's futures are deep, and a
            // caller's async fn that awaits several canvases would otherwise
            // need a higher `recursion_limit` to compute its own layout.
            let perform: BoxFuture<'_, Result<(), CanvasError>> = Box::pin(self.perform(op, send));
            perform.await?;
        }
        Ok(self.canvas_result(&engine, res))
    }

    /// Gives every task, group and chord body of `sig` its id now, as Celery's
    /// `sig.freeze()`, and returns the result the canvas will have: applying
    /// the frozen signature sends exactly these ids.
    pub fn freeze(&self, sig: &mut Signature) -> Result<CanvasResult, CanvasError> {
        sig.check()?;
        let mut engine = Engine::new(self.producer.config().reply_to.clone());
        let res = engine.freeze(&mut sig.node, crate::engine::Freeze::default());
        Ok(self.canvas_result(&engine, res))
    }

    async fn perform(&self, op: Op, send: Option<SendOptions>) -> Result<(), CanvasError> {
        match op {
            Op::Send { task, args, kwargs, .. } => {
                let send = send.unwrap_or_default();
                self.producer.send_task(&task, args, kwargs, send).await?;
            }
            Op::ChordSize { group_id, size } => {
                let backend = self.backend.as_ref().ok_or_else(|| CanvasError::NoBackend(group_id.clone()))?;
                backend.set_chord_size(&group_id, size).await.map_err(|e| CanvasError::ChordSize {
                    group_id,
                    transient: e.is_connection(),
                    reason: e.to_string(),
                })?;
            }
            Op::ApplyChord { header } => {
                if let Some(backend) = &self.backend {
                    let group_id = header.id.clone();
                    backend.apply_chord(&group_id, &celeriac_protocol::GroupMeta::new(header)).await.map_err(|e| {
                        CanvasError::ChordSize { group_id, transient: e.is_connection(), reason: e.to_string() }
                    })?;
                }
            }
        }
        Ok(())
    }

    fn canvas_result(&self, engine: &Engine, r: R) -> CanvasResult {
        self.result_from_tuple(&engine.tuple(r))
    }
}

/// What applying a canvas returns: a task's result or a group's.
#[derive(Clone, Debug)]
pub enum CanvasResult {
    /// One task (a chain's last, a chord's body).
    Task(AsyncResult),
    /// A group.
    Group(GroupResult),
}

impl CanvasResult {
    /// The task or group id.
    pub fn id(&self) -> &str {
        match self {
            CanvasResult::Task(r) => r.id(),
            CanvasResult::Group(g) => g.id(),
        }
    }

    /// The previous step's result (a chain's earlier task, a chord's header).
    pub fn parent(&self) -> Option<&CanvasResult> {
        match self {
            CanvasResult::Task(r) => r.parent(),
            CanvasResult::Group(g) => g.parent(),
        }
    }

    /// Waits for the value: a task's return value, or the list of a group's.
    /// (A boxed future: a group's members are canvas results themselves.)
    pub fn get(&self, timeout: Option<Duration>) -> BoxFuture<'_, Result<Value, ResultError>> {
        match self {
            CanvasResult::Task(r) => Box::pin(r.get(timeout)),
            CanvasResult::Group(g) => Box::pin(g.get(timeout)),
        }
    }

    /// The task's result, if this is one.
    pub fn as_task(&self) -> Option<&AsyncResult> {
        match self {
            CanvasResult::Task(r) => Some(r),
            CanvasResult::Group(_) => None,
        }
    }

    /// The group's result, if this is one.
    pub fn as_group(&self) -> Option<&GroupResult> {
        match self {
            CanvasResult::Group(g) => Some(g),
            CanvasResult::Task(_) => None,
        }
    }

    /// Celery's `as_tuple()` of it (with parents).
    pub fn to_tuple(&self) -> ResultTuple {
        let mut t = match self {
            CanvasResult::Task(r) => ResultTuple::task(r.id()),
            CanvasResult::Group(g) => {
                ResultTuple::group(g.id(), g.results().iter().map(CanvasResult::to_tuple).collect())
            }
        };
        if let Some(p) = self.parent() {
            t = t.with_parent(p.to_tuple());
        }
        t
    }
}

/// A group's result: its id and its members' results, in order (Celery's
/// `GroupResult`).
#[derive(Clone, Debug)]
pub struct GroupResult {
    id: String,
    results: Vec<CanvasResult>,
    parent: Option<Box<CanvasResult>>,
}

impl GroupResult {
    /// The group id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The members' results, in the group's order (`results`, `children`).
    pub fn results(&self) -> &[CanvasResult] {
        &self.results
    }

    /// The previous step's result, when the group followed a task in a chain.
    pub fn parent(&self) -> Option<&CanvasResult> {
        self.parent.as_deref()
    }

    /// Waits for every member, in order, and returns their values as a list
    /// (`GroupResult.get()`); the first member that failed fails it. The
    /// timeout is for the whole group.
    pub async fn get(&self, timeout: Option<Duration>) -> Result<Value, ResultError> {
        let deadline = timeout.map(|t| (Instant::now() + t, t));
        let mut values = Vec::with_capacity(self.results.len());
        for member in &self.results {
            let left = match deadline {
                Some((at, total)) => match at.checked_duration_since(Instant::now()) {
                    Some(left) => Some(left),
                    None => return Err(GetError::Timeout { task_id: member.id().to_owned(), timeout: total }.into()),
                },
                None => None,
            };
            values.push(member.get(left).await?);
        }
        Ok(Value::List(values))
    }

    /// How many members have finished successfully (`completed_count()`).
    pub async fn completed_count(&self) -> Result<usize, ResultError> {
        let mut n = 0;
        for member in &self.results {
            if let CanvasResult::Task(r) = member {
                if r.meta().await?.status == celeriac_protocol::State::Success {
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Whether every member has finished (`ready()`).
    pub async fn ready(&self) -> Result<bool, ResultError> {
        for member in &self.results {
            let ready = match member {
                CanvasResult::Task(r) => r.meta().await?.status.is_ready(),
                CanvasResult::Group(g) => Box::pin(g.ready()).await?,
            };
            if !ready {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// A sent task's result: its id, and a way to wait for it.
#[derive(Clone, Debug)]
pub struct AsyncResult {
    id: String,
    backend: Option<RedisBackend>,
    parent: Option<Box<CanvasResult>>,
}

impl AsyncResult {
    /// The task id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The previous step's result (a chain's earlier task, a chord body's
    /// header group), as Celery links them when a canvas is applied.
    pub fn parent(&self) -> Option<&CanvasResult> {
        self.parent.as_deref()
    }

    /// The results of what the task started, as its stored record lists them
    /// (`AsyncResult.children`: the next chain step, a group it applied, its
    /// links). Empty until the task has finished.
    pub async fn children(&self) -> Result<Vec<CanvasResult>, ResultError> {
        let meta = self.meta().await?;
        let mut out = Vec::with_capacity(meta.children.len());
        for child in &meta.children {
            let tuple =
                ResultTuple::from_value(child).map_err(|e| ResultError::Children(self.id.clone(), e.to_string()))?;
            out.push(tuple_result(&self.backend, &tuple, 0));
        }
        Ok(out)
    }

    /// Waits (for ever when `timeout` is `None`) and returns the task's
    /// return value, or the exception it raised as [`GetError::Failed`].
    pub async fn get(&self, timeout: Option<Duration>) -> Result<Value, ResultError> {
        let handle = self.handle()?;
        // Boxed as in `apply_async_with`: callers' futures stay shallow.
        let wait: BoxFuture<'_, Result<Value, GetError>> = Box::pin(handle.get(timeout));
        Ok(wait.await?)
    }

    /// The stored record now (PENDING when there is none).
    pub async fn meta(&self) -> Result<ResultMeta, ResultError> {
        let handle = self.handle()?;
        let read: BoxFuture<'_, Result<ResultMeta, celeriac_backend::BackendError>> = Box::pin(handle.meta());
        Ok(read.await.map_err(GetError::from)?)
    }

    fn handle(&self) -> Result<ResultHandle, ResultError> {
        self.backend.as_ref().map(|b| b.result(&self.id)).ok_or_else(|| ResultError::NoBackend(self.id.clone()))
    }
}

/// A result from Celery's result tuple (`result_from_tuple`), reading from `backend`.
fn tuple_result(backend: &Option<RedisBackend>, tuple: &ResultTuple, depth: usize) -> CanvasResult {
    let parent = match (&tuple.parent, depth < 64) {
        (Some(p), true) => Some(Box::new(tuple_result(backend, p, depth + 1))),
        _ => None,
    };
    match &tuple.children {
        Some(members) => CanvasResult::Group(GroupResult {
            id: tuple.id.clone(),
            results: if depth < 64 {
                members.iter().map(|m| tuple_result(backend, m, depth + 1)).collect()
            } else {
                Vec::new()
            },
            parent,
        }),
        None => CanvasResult::Task(AsyncResult { id: tuple.id.clone(), backend: backend.clone(), parent }),
    }
}

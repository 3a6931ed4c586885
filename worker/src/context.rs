//! `Ctx`: what a running task knows about itself and can ask of its worker.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use celeriac_client::{Applied, Lineage};
use celeriac_protocol::task::Embed;
use celeriac_protocol::Signature;

use celeriac_protocol::envelope::DeliveryInfo;
use celeriac_protocol::task::TaskHeaders;
use celeriac_protocol::time::PyDateTime;
use celeriac_protocol::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::TaskError;

/// What the worker does for a task on request (store a state, ...). The
/// runtime implements it; unit tests can supply their own.
pub trait WorkerServices: Send + Sync + 'static {
    /// Stores a custom state (`PROGRESS`, ...) with `meta` for `task_id`.
    fn update_state(
        &self,
        task_id: &str,
        state: &str,
        meta: Value,
    ) -> futures_util::future::BoxFuture<'static, Result<(), TaskError>>;
    /// Whether `task_id` has been revoked.
    fn is_revoked(&self, task_id: &str) -> bool;

    /// Applies a canvas signature (task, group, chain, chord) in `lineage`,
    /// as `sig.apply_async()` from inside a Python task.
    fn apply(
        &self,
        sig: Signature,
        lineage: Lineage,
    ) -> futures_util::future::BoxFuture<'static, Result<Applied, TaskError>> {
        let _ = (sig, lineage);
        Box::pin(async {
            Err(TaskError::builtin("RuntimeError", "this task runs outside a worker: nothing can be sent"))
        })
    }

    /// The stored records of `task_ids`, in order (PENDING for those with
    /// none), as `AsyncResult` reads them.
    fn results(
        &self,
        task_ids: Vec<String>,
    ) -> futures_util::future::BoxFuture<'static, Result<Vec<celeriac_protocol::ResultMeta>, TaskError>> {
        let _ = task_ids;
        Box::pin(async { Err(TaskError::builtin("NotImplementedError", "this worker has no result backend to read")) })
    }

    /// Stores a record (a final state for a task other than the running one).
    fn store(
        &self,
        meta: celeriac_protocol::ResultMeta,
    ) -> futures_util::future::BoxFuture<'static, Result<(), TaskError>> {
        let _ = meta;
        Box::pin(async { Err(TaskError::builtin("NotImplementedError", "this worker has no result backend")) })
    }

    /// The task of this worker named `name`, for calling it in-process (as
    /// Python's `task(*args)`, which `celery.map` does).
    fn task(&self, name: &str) -> Option<crate::Task> {
        let _ = name;
        None
    }

    /// Raises the size of chord `group_id` by one (the backend's
    /// `add_to_chord`), before a task joins it.
    fn add_to_chord(&self, group_id: &str) -> futures_util::future::BoxFuture<'static, Result<(), TaskError>> {
        let _ = group_id;
        Box::pin(async {
            Err(TaskError::builtin("RuntimeError", "this task runs outside a worker: no chord to add to"))
        })
    }
}

/// Services that do nothing: for running a handler outside a worker.
#[derive(Debug, Default)]
pub struct NoServices;

impl WorkerServices for NoServices {
    fn update_state(
        &self,
        _task_id: &str,
        _state: &str,
        _meta: Value,
    ) -> futures_util::future::BoxFuture<'static, Result<(), TaskError>> {
        Box::pin(async { Ok(()) })
    }
    fn is_revoked(&self, _task_id: &str) -> bool {
        false
    }
}

/// The request a task runs for: the message's metadata and where it came from.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    /// The task message headers (id, name, retries, root/parent/group ids, eta, ...).
    pub headers: TaskHeaders,
    /// Positional arguments as sent.
    pub args: Vec<Value>,
    /// Keyword arguments as sent.
    pub kwargs: Map,
    /// Exchange and routing key the message arrived with.
    pub delivery_info: DeliveryInfo,
    /// The worker's node name (`celeriac@host`).
    pub hostname: String,
    /// Whether the message was delivered before (restored or requeued).
    pub redelivered: bool,
    /// The message's publisher properties (`correlation_id`, `reply_to`,
    /// `app_id`, ...), as Python's `request.properties`.
    pub properties: Map,
    /// The message priority (Python's `delivery_info['priority']`).
    pub priority: u8,
    /// What happens after the task: links, error links, the rest of its
    /// chain, the chord it is a header part of (Python's `request.callbacks`,
    /// `.errbacks`, `.chain`, `.chord`).
    pub embed: Embed,
}

/// The task's context: an extractor (`ctx: Ctx`) giving the request's
/// metadata, retry helpers, state updates and the soft time limit / revoke
/// signals. Cheap to clone.
#[derive(Clone)]
pub struct Ctx {
    inner: Arc<CtxInner>,
}

struct CtxInner {
    request: RequestInfo,
    services: Arc<dyn WorkerServices>,
    soft_limit: CancellationToken,
    terminate: CancellationToken,
    /// What the task sent while it ran (its result's `children`).
    trail: Mutex<Vec<Applied>>,
    /// What the task asked to be replaced with.
    replacement: Mutex<Option<Signature>>,
    /// How deep in in-process calls (`call_local`) this context is.
    local_depth: usize,
}

/// The deepest chain of in-process task calls (`celery.map` of
/// `celery.starmap` of ...) a message can make.
const MAX_LOCAL_DEPTH: usize = 16;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").field("id", &self.id()).field("name", &self.name()).finish()
    }
}

impl Ctx {
    /// A context for `request`; the runtime cancels `soft_limit` when the soft
    /// time limit passes and `terminate` on `revoke --terminate`.
    pub fn new(
        request: RequestInfo,
        services: Arc<dyn WorkerServices>,
        soft_limit: CancellationToken,
        terminate: CancellationToken,
    ) -> Ctx {
        Ctx {
            inner: Arc::new(CtxInner {
                request,
                services,
                soft_limit,
                terminate,
                trail: Mutex::default(),
                replacement: Mutex::default(),
                local_depth: 0,
            }),
        }
    }

    /// A context with no worker behind it (for calling a task in tests).
    pub fn detached(request: RequestInfo) -> Ctx {
        Ctx::new(request, Arc::new(NoServices), CancellationToken::new(), CancellationToken::new())
    }

    /// The whole request.
    pub fn request(&self) -> &RequestInfo {
        &self.inner.request
    }

    /// Task id.
    pub fn id(&self) -> &str {
        &self.inner.request.headers.id
    }

    /// Task name.
    pub fn name(&self) -> &str {
        &self.inner.request.headers.task
    }

    /// How many times it was retried before this run.
    pub fn retries(&self) -> i64 {
        self.inner.request.headers.retries
    }

    /// Id of the first task of the workflow.
    pub fn root_id(&self) -> Option<&str> {
        self.inner.request.headers.root_id.as_deref()
    }

    /// Id of the task that sent this one.
    pub fn parent_id(&self) -> Option<&str> {
        self.inner.request.headers.parent_id.as_deref()
    }

    /// Id of the group it belongs to.
    pub fn group_id(&self) -> Option<&str> {
        self.inner.request.headers.group.as_deref()
    }

    /// When it was scheduled to run, if it had an ETA or countdown.
    pub fn eta(&self) -> Option<&PyDateTime> {
        self.inner.request.headers.eta.as_ref()
    }

    /// All headers, including custom ones (`headers.extra`).
    pub fn headers(&self) -> &TaskHeaders {
        &self.inner.request.headers
    }

    /// The worker's node name.
    pub fn hostname(&self) -> &str {
        &self.inner.request.hostname
    }

    /// Exchange and routing key it arrived with.
    pub fn delivery_info(&self) -> &DeliveryInfo {
        &self.inner.request.delivery_info
    }

    /// The message's publisher properties.
    pub fn properties(&self) -> &Map {
        &self.inner.request.properties
    }

    /// The message priority (0 when the producer set none).
    pub fn priority(&self) -> u8 {
        self.inner.request.priority
    }

    /// A retry after the task's default delay: `return Err(ctx.retry("busy"))`.
    pub fn retry(&self, reason: impl Into<String>) -> TaskError {
        TaskError::retry(reason)
    }

    /// A retry after `countdown`.
    pub fn retry_in(&self, reason: impl Into<String>, countdown: Duration) -> TaskError {
        TaskError::retry_in(reason, countdown)
    }

    /// Stores a custom state (e.g. `PROGRESS` with `{"done": 3, "total": 10}`)
    /// that Python's `AsyncResult.state`/`.info` show.
    pub async fn update_state(&self, state: &str, meta: Value) -> Result<(), TaskError> {
        self.inner.services.update_state(self.id(), state, meta).await
    }

    /// Whether this task has been revoked meanwhile.
    pub fn is_revoked(&self) -> bool {
        self.inner.terminate.is_cancelled() || self.inner.services.is_revoked(self.id())
    }

    /// Whether the soft time limit has passed: the task should wrap up.
    pub fn soft_time_limit_exceeded(&self) -> bool {
        self.inner.soft_limit.is_cancelled()
    }

    /// Completes when the soft time limit passes (never, without one): for
    /// `tokio::select!` against the work, to clean up in time.
    pub async fn soft_time_limit(&self) {
        self.inner.soft_limit.cancelled().await;
    }

    /// Completes when the task is revoked with `terminate`.
    pub async fn terminated(&self) {
        self.inner.terminate.cancelled().await;
    }

    /// Applies a signature (a task, group, chain or chord) as a child of this
    /// task, as `sig.apply_async()` from inside a Python task: its
    /// `parent_id` is this task, its `root_id` this task's root, and it is
    /// listed in this task's result as one of its `children`.
    pub async fn apply(&self, sig: impl Into<Signature>) -> Result<Applied, TaskError> {
        let applied = self.inner.services.apply(sig.into(), self.lineage()).await?;
        lock(&self.inner.trail).push(applied.clone());
        Ok(applied)
    }

    /// Replaces this task with `sig` (Python's `return self.replace(sig)`):
    /// `return Err(ctx.replace(sig))`. The replacement inherits this task's
    /// id (its last task does), its place in a group or chord, its links and
    /// the rest of its chain; nothing is stored for this task itself.
    pub fn replace(&self, sig: impl Into<Signature>) -> TaskError {
        *lock(&self.inner.replacement) = Some(sig.into());
        TaskError::Ignore
    }

    /// Adds `sig` to the chord this task is a header part of (Python's
    /// `self.add_to_chord(sig)`): the chord waits for it too.
    pub async fn add_to_chord(&self, sig: impl Into<Signature>) -> Result<Applied, TaskError> {
        let (Some(chord), Some(group)) = (&self.inner.request.embed.chord, self.group_id()) else {
            return Err(TaskError::builtin("ValueError", "Current task is not member of any chord"));
        };
        let mut sig = sig.into();
        sig.options.insert("group_id".into(), Value::Str(group.to_owned()));
        if let Some(index) = self.inner.request.headers.group_index {
            sig.options.insert("group_index".into(), Value::Int(index));
        }
        sig.options.insert("chord".into(), chord.to_value());
        celeriac_client::freeze(&mut sig);
        self.inner.services.add_to_chord(group).await?;
        self.apply(sig).await
    }

    /// Calls this worker's task `name` here and now, with `args` and
    /// `kwargs`, as Python's `task(*args, **kwargs)` inside a task: no
    /// message, nothing stored, the caller's request otherwise. A name this
    /// worker does not have fails as Celery's `NotRegistered`.
    pub async fn call_local(&self, name: &str, args: Vec<Value>, kwargs: Map) -> Result<Value, TaskError> {
        let Some(task) = self.inner.services.task(name) else {
            return Err(TaskError::custom("celery.exceptions", "NotRegistered", format!("{name:?}")));
        };
        if self.inner.local_depth >= MAX_LOCAL_DEPTH {
            return Err(TaskError::builtin(
                "RecursionError",
                "maximum recursion depth exceeded in in-process task calls",
            ));
        }
        let from = &self.inner.request;
        let mut headers = from.headers.clone();
        headers.task = name.to_owned();
        // The caller's arguments are not copied: a call per item must stay
        // linear in the items.
        let request = RequestInfo {
            headers,
            args,
            kwargs,
            delivery_info: from.delivery_info.clone(),
            hostname: from.hostname.clone(),
            redelivered: from.redelivered,
            properties: from.properties.clone(),
            priority: from.priority,
            embed: Embed::default(),
        };
        let mut ctx =
            Ctx::new(request, self.inner.services.clone(), self.inner.soft_limit.clone(), self.inner.terminate.clone());
        if let Some(inner) = Arc::get_mut(&mut ctx.inner) {
            inner.local_depth = self.inner.local_depth + 1;
        }
        let result = task.handler().call(crate::extract::Invocation::new(ctx.clone())).await;
        // What the inner call sent counts as this task's children.
        let sent = ctx.take_trail();
        lock(&self.inner.trail).extend(sent);
        result
    }

    /// The stored records of `task_ids`, in order (PENDING where nothing
    /// is stored).
    pub async fn results(&self, task_ids: Vec<String>) -> Result<Vec<celeriac_protocol::ResultMeta>, TaskError> {
        self.inner.services.results(task_ids).await
    }

    /// Stores `meta` (a final state for another task: a chord body that
    /// fails because a header part did).
    pub async fn store(&self, meta: celeriac_protocol::ResultMeta) -> Result<(), TaskError> {
        self.inner.services.store(meta).await
    }

    /// The chord body this task is a header part of, if any.
    pub fn chord(&self) -> Option<&Signature> {
        self.inner.request.embed.chord.as_ref()
    }

    /// How many times the task this one replaces was itself replaced.
    pub fn replaced_task_nesting(&self) -> i64 {
        self.inner.request.headers.replaced_task_nesting
    }

    fn lineage(&self) -> Lineage {
        let id = self.id().to_owned();
        Lineage {
            root_id: Some(self.root_id().map(str::to_owned).unwrap_or_else(|| id.clone())),
            parent_id: Some(id),
            priority: None,
        }
    }

    /// What the task sent while it ran, in order (taken once).
    pub(crate) fn take_trail(&self) -> Vec<Applied> {
        std::mem::take(&mut *lock(&self.inner.trail))
    }

    /// The signature the task asked to be replaced with (taken once).
    pub(crate) fn take_replacement(&self) -> Option<Signature> {
        lock(&self.inner.replacement).take()
    }

    /// The error to return after noticing the soft time limit: Python sees
    /// `SoftTimeLimitExceeded`, as from a Python task.
    pub fn soft_time_limit_error(&self) -> TaskError {
        TaskError::custom("billiard.exceptions", "SoftTimeLimitExceeded", "SoftTimeLimitExceeded()")
    }
}

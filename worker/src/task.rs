//! A registered task: its name, its handler and Celery's per-task options.

use std::sync::Arc;
use std::time::Duration;

use crate::handler::{AsyncFn, BlockingFn, BlockingHandler, Handler, SharedHandler};

/// Celery's per-task options, with Celery's defaults. `None` means "use the
/// worker's setting" (e.g. `task_acks_late`).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskOptions {
    /// Queue the producer routes it to by default (informational on the worker).
    pub queue: Option<String>,
    /// Most retries; `None` retries forever. Celery's default is 3.
    pub max_retries: Option<u32>,
    /// Delay before a retry that names none. Celery's default is 180 s.
    pub default_retry_delay: Duration,
    /// Failure kinds (exception type names, or `TaskError::with_kind`) retried
    /// automatically; `"*"` retries every failure.
    pub autoretry_for: Vec<String>,
    /// Exponential backoff for automatic retries: base delay (Celery's
    /// `retry_backoff`; `None` uses `default_retry_delay` every time).
    pub retry_backoff: Option<Duration>,
    /// Longest backoff delay (Celery's default 600 s).
    pub retry_backoff_max: Duration,
    /// Randomise backoff delays in `[0, delay]` (Celery's default true).
    pub retry_jitter: bool,
    /// Ack after running instead of before.
    pub acks_late: Option<bool>,
    /// With late acks, ack failures and time-outs too.
    pub acks_on_failure_or_timeout: Option<bool>,
    /// Requeue when the worker dies while running it (late acks).
    pub reject_on_worker_lost: Option<bool>,
    /// Store no result.
    pub ignore_result: Option<bool>,
    /// Hard time limit.
    pub time_limit: Option<Duration>,
    /// Soft time limit.
    pub soft_time_limit: Option<Duration>,
    /// Rate limit (`"10/s"`, `"100/m"`, `"1000/h"`).
    pub rate_limit: Option<String>,
    /// Store STARTED when it starts.
    pub track_started: Option<bool>,
    /// Serializer of what it sends (retries, callbacks): `json`, `msgpack`, `yaml`.
    pub serializer: Option<String>,
    /// Used as an error callback (`link_error`), it is called in the failing
    /// task's worker with the failed request, the exception and the
    /// traceback before its own arguments, as Celery calls a "new-style"
    /// errback `def errback(request, exc, traceback, ...)`; otherwise an
    /// errback is sent as a task with the failed task's id as first argument.
    pub errback_takes_request: bool,
}

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions {
            queue: None,
            max_retries: Some(3),
            default_retry_delay: Duration::from_secs(180),
            autoretry_for: Vec::new(),
            retry_backoff: None,
            retry_backoff_max: Duration::from_secs(600),
            retry_jitter: true,
            acks_late: None,
            acks_on_failure_or_timeout: None,
            reject_on_worker_lost: None,
            ignore_result: None,
            time_limit: None,
            soft_time_limit: None,
            rate_limit: None,
            track_started: None,
            serializer: None,
            errback_takes_request: false,
        }
    }
}

/// One parameter a task declares for its callers (the task manifest of
/// `celeriac tasks --json`, and Python stubs made from it): a name, a Python
/// type annotation, and how it is passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// The parameter's name.
    pub name: String,
    /// A Python annotation (`int`, `str`, `float`, `bool`, `list`, `dict`,
    /// `Any`, `Optional[int]`, ...).
    pub annotation: String,
    /// `true`: a keyword-only parameter with the default `None` (sent in
    /// `kwargs`); `false`: a required positional one (sent in `args`).
    pub keyword: bool,
}

/// A task: a name, a handler, options. Built with [`Task::new`] (async) or
/// [`Task::blocking`] and the option methods, then added to a `Registry`.
#[derive(Clone)]
pub struct Task {
    pub(crate) name: String,
    pub(crate) handler: SharedHandler,
    pub(crate) options: TaskOptions,
    /// The handler's extractor types as Rust spells them (`type_name`).
    pub(crate) extractors: &'static str,
    pub(crate) params: Vec<Param>,
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task").field("name", &self.name).field("options", &self.options).finish()
    }
}

impl Task {
    /// An async task: `Task::new("tasks.add", add)` with
    /// `async fn add(Args((a, b)): Args<(i64, i64)>) -> Result<i64, TaskError>`.
    pub fn new<H: Handler<M>, M: 'static>(name: impl Into<String>, handler: H) -> Task {
        Task {
            name: name.into(),
            handler: Arc::new(AsyncFn { handler, _marker: std::marker::PhantomData }),
            options: TaskOptions::default(),
            extractors: std::any::type_name::<M>(),
            params: Vec::new(),
        }
    }

    /// A blocking task, run on the blocking pool (CPU-heavy or blocking I/O).
    pub fn blocking<H: BlockingHandler<M>, M: 'static>(name: impl Into<String>, handler: H) -> Task {
        Task {
            name: name.into(),
            handler: Arc::new(BlockingFn { handler, _marker: std::marker::PhantomData }),
            options: TaskOptions::default(),
            extractors: std::any::type_name::<M>(),
            params: Vec::new(),
        }
    }

    /// The registered name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The options.
    pub fn options(&self) -> &TaskOptions {
        &self.options
    }

    /// The handler.
    pub fn handler(&self) -> &SharedHandler {
        &self.handler
    }

    /// The handler's parameter types as Rust spells them, e.g.
    /// `(celeriac_worker::extract::Args<(u64,)>,)`: what the task manifest
    /// reads positional types from when no [`Task::arg`] names them.
    pub fn extractors(&self) -> &'static str {
        self.extractors
    }

    /// The parameters declared with [`Task::arg`] and [`Task::kwarg`], in order.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Declares the next positional parameter: its name and Python type
    /// (`.arg("run", "int")`), for the task manifest and Python stubs.
    pub fn arg(mut self, name: impl Into<String>, annotation: impl Into<String>) -> Task {
        self.params.push(Param { name: name.into(), annotation: annotation.into(), keyword: false });
        self
    }

    /// Declares an optional keyword parameter (default `None`):
    /// `.kwarg("detector", "str")`, for the task manifest and Python stubs.
    pub fn kwarg(mut self, name: impl Into<String>, annotation: impl Into<String>) -> Task {
        self.params.push(Param { name: name.into(), annotation: annotation.into(), keyword: true });
        self
    }

    /// Replaces all options.
    pub fn with_options(mut self, options: TaskOptions) -> Task {
        self.options = options;
        self
    }

    /// Default queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Task {
        self.options.queue = Some(queue.into());
        self
    }

    /// Most retries (`None`: forever).
    pub fn max_retries(mut self, n: Option<u32>) -> Task {
        self.options.max_retries = n;
        self
    }

    /// Delay of a retry that names none.
    pub fn default_retry_delay(mut self, d: Duration) -> Task {
        self.options.default_retry_delay = d;
        self
    }

    /// Retry these failure kinds automatically, with exponential backoff from
    /// `backoff` (`None`: the default retry delay) and jitter.
    pub fn autoretry_for<I, S>(mut self, kinds: I, backoff: Option<Duration>) -> Task
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.options.autoretry_for = kinds.into_iter().map(Into::into).collect();
        self.options.retry_backoff = backoff;
        self
    }

    /// Turns backoff jitter on or off.
    pub fn retry_jitter(mut self, on: bool) -> Task {
        self.options.retry_jitter = on;
        self
    }

    /// Called as a "new-style" errback when linked as an error callback
    /// (see [`TaskOptions::errback_takes_request`]).
    pub fn errback_takes_request(mut self, on: bool) -> Task {
        self.options.errback_takes_request = on;
        self
    }

    /// Ack late (after running).
    pub fn acks_late(mut self, on: bool) -> Task {
        self.options.acks_late = Some(on);
        self
    }

    /// Store no result.
    pub fn ignore_result(mut self, on: bool) -> Task {
        self.options.ignore_result = Some(on);
        self
    }

    /// Hard time limit.
    pub fn time_limit(mut self, d: Duration) -> Task {
        self.options.time_limit = Some(d);
        self
    }

    /// Soft time limit.
    pub fn soft_time_limit(mut self, d: Duration) -> Task {
        self.options.soft_time_limit = Some(d);
        self
    }

    /// Rate limit (`"10/s"`).
    pub fn rate_limit(mut self, rate: impl Into<String>) -> Task {
        self.options.rate_limit = Some(rate.into());
        self
    }

    /// Store STARTED when it starts.
    pub fn track_started(mut self, on: bool) -> Task {
        self.options.track_started = Some(on);
        self
    }

    /// Serializer of messages it sends.
    pub fn serializer(mut self, name: impl Into<String>) -> Task {
        self.options.serializer = Some(name.into());
        self
    }
}

//! The worker loop: take deliveries from the broker, decode them, and run
//! each task the way Celery's worker does (ack early or late, ETA timer,
//! expiry and revocation, soft and hard time limits, retries, links), storing
//! outcomes through a [`ResultStore`].
//!
//! Concurrency is a semaphore of `concurrency` permits; the broker's prefetch
//! window (`concurrency x prefetch_multiplier`) bounds what is reserved. ETA
//! tasks wait in timers without a permit, their visibility refreshed so no
//! other worker restores them meanwhile.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use celeriac_backend::ChordOutcome;
use celeriac_broker::{Broker, BrokerError, ConsumerControl, Delivery, Producer};
use celeriac_config::UnknownTaskPolicy;
use celeriac_protocol::event::task_received_fields;
use celeriac_protocol::result::{ExceptionInfo, Extended, ResultMeta, ResultTuple};
use celeriac_protocol::time::PyDateTime;
use celeriac_protocol::{Map, TaskMessage, Value};
use futures_util::future::BoxFuture;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument};

use crate::context::{Ctx, RequestInfo, WorkerServices};
use crate::events::Events;
use crate::extract::Invocation;
use crate::metrics::Metrics;
use crate::rate::RateLimits;
use crate::state::{Phase, WorkerState};
use crate::store::{ChordPartReturn, ResultStore};
use crate::{Registry, Task, TaskError};

/// Worker-wide settings (Celery's names in comments).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Node name (`-n`), e.g. `celeriac@host`.
    pub hostname: String,
    /// Queues to consume (`-Q`).
    pub queues: Vec<String>,
    /// Tasks run at once (`-c`).
    pub concurrency: usize,
    /// `worker_prefetch_multiplier` (0: unlimited).
    pub prefetch_multiplier: usize,
    /// `task_acks_late`.
    pub acks_late: bool,
    /// `task_acks_on_failure_or_timeout`.
    pub acks_on_failure_or_timeout: bool,
    /// `task_track_started`.
    pub track_started: bool,
    /// `task_ignore_result`.
    pub ignore_result: bool,
    /// `result_extended`.
    pub result_extended: bool,
    /// What to do with unknown tasks.
    pub unknown_task: UnknownTaskPolicy,
    /// Queue for undecodable messages and (by policy) unknown tasks.
    pub dead_letter_queue: String,
    /// Warm shutdown: how long running tasks may finish.
    pub shutdown_timeout: Duration,
    /// How often held ETA messages have their visibility refreshed.
    pub eta_refresh: Duration,
    /// `task_time_limit` for tasks that set none.
    pub time_limit: Option<Duration>,
    /// `task_soft_time_limit` for tasks that set none.
    pub soft_time_limit: Option<Duration>,
    /// `task_reject_on_worker_lost`: with acks_late, a task whose execution
    /// was lost (it panicked) is requeued instead of failing with
    /// `WorkerLostError`.
    pub reject_on_worker_lost: bool,
    /// `task_default_rate_limit` for tasks that set none (`"10/s"`).
    pub default_rate_limit: Option<String>,
    /// `worker_disable_rate_limits`.
    pub disable_rate_limits: bool,
    /// `worker_max_scheduled_tasks`: ETA tasks held at once before the prefetch
    /// window stops growing for them (so the worker stops reserving).
    pub max_scheduled_tasks: usize,
    /// `worker_send_task_events` (`-E`): send task events from the start.
    pub send_task_events: bool,
    /// `worker_heartbeat_interval`: seconds between `worker-heartbeat` events
    /// (0 sends none).
    pub heartbeat_interval: f64,
    /// Answer remote control (`celery inspect`/`celery control`, Flower).
    pub remote_control: bool,
    /// `--statedb`: a file keeping revoked ids across restarts.
    pub statedb: Option<std::path::PathBuf>,
    /// The settings `inspect conf` reports (Celery's names, passwords
    /// masked); the live values of this config are merged over them.
    pub conf: Map,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            hostname: format!("celeriac@{}", celeriac_broker::producer::hostname()),
            queues: vec!["celery".into()],
            concurrency: std::thread::available_parallelism().map(usize::from).unwrap_or(1),
            prefetch_multiplier: 4,
            acks_late: false,
            acks_on_failure_or_timeout: true,
            track_started: false,
            ignore_result: false,
            result_extended: false,
            unknown_task: UnknownTaskPolicy::Reject,
            dead_letter_queue: "celeriac.dead_letter".into(),
            shutdown_timeout: Duration::from_secs(30),
            eta_refresh: Duration::from_secs(600),
            time_limit: None,
            soft_time_limit: None,
            reject_on_worker_lost: false,
            default_rate_limit: None,
            disable_rate_limits: false,
            max_scheduled_tasks: 100_000,
            send_task_events: false,
            heartbeat_interval: 2.0,
            remote_control: true,
            statedb: None,
            conf: Map::new(),
        }
    }
}

/// A worker: a registry of tasks, a broker, a producer (for retries and
/// callbacks) and an optional result store.
pub struct Worker {
    shared: Arc<Shared>,
    cold: CancellationToken,
}

pub(crate) struct Shared {
    pub(crate) registry: Registry,
    pub(crate) broker: Broker,
    pub(crate) producer: Producer,
    pub(crate) config: WorkerConfig,
    /// The result store and revoked ids, shared with every task's `Ctx`.
    pub(crate) services: Arc<Services>,
    /// Per-task rate limits.
    pub(crate) rate_limits: RateLimits,
    /// ETA tasks held now.
    pub(crate) scheduled: AtomicUsize,
    /// The requests held, counts, revoked ids.
    pub(crate) state: Arc<WorkerState>,
    /// Events (and the node's clock).
    pub(crate) events: Arc<Events>,
    /// Execution slots (`-c`), grown and shrunk by remote control.
    pub(crate) permits: Arc<Semaphore>,
    /// The slots there are now.
    pub(crate) concurrency: AtomicUsize,
    /// The running consumer's window and queues, for remote control.
    pub(crate) consumer: Mutex<Option<ConsumerControl>>,
    /// Time limits set by the `time_limit` command: task name → (hard, soft).
    pub(crate) time_limits: Mutex<HashMap<String, TimeLimitOverride>>,
    /// Prometheus metrics, when exported.
    pub(crate) metrics: Option<Arc<Metrics>>,
}

/// What `Ctx` asks of the worker.
pub(crate) struct Services {
    pub(crate) results: Option<Arc<dyn ResultStore>>,
    state: Arc<WorkerState>,
}

impl WorkerServices for Services {
    fn update_state(&self, task_id: &str, state: &str, meta: Value) -> BoxFuture<'static, Result<(), TaskError>> {
        let record = ResultMeta::new(task_id, state.into(), meta);
        let results = self.results.clone();
        Box::pin(async move {
            match results {
                Some(r) => r.store(record).await.map_err(TaskError::fail),
                None => Ok(()),
            }
        })
    }
    fn is_revoked(&self, task_id: &str) -> bool {
        self.state.revoked().contains(task_id)
    }
}

impl Worker {
    /// A worker for `registry` on `broker`.
    pub fn new(
        registry: Registry,
        broker: Broker,
        producer: Producer,
        results: Option<Arc<dyn ResultStore>>,
        config: WorkerConfig,
    ) -> Worker {
        let state = Arc::new(WorkerState::new(config.statedb.clone()));
        let services = Arc::new(Services { results, state: state.clone() });
        let events =
            Events::start(broker.clone(), &config.hostname, config.send_task_events, config.heartbeat_interval);
        let concurrency = config.concurrency.max(1);
        let rate_limits = RateLimits::new();
        if !config.disable_rate_limits {
            for task in registry.tasks() {
                let Some(text) = task.options().rate_limit.as_ref().or(config.default_rate_limit.as_ref()) else {
                    continue;
                };
                match celeriac_config::parse_rate_limit(text) {
                    Ok(rate) => rate_limits.set(task.name(), rate),
                    Err(e) => error!("ignoring the rate limit {text:?} of {}: {e}", task.name()),
                }
            }
        }
        let shared = Shared {
            registry,
            broker,
            producer,
            config,
            services,
            rate_limits,
            scheduled: AtomicUsize::new(0),
            state,
            events,
            permits: Arc::new(Semaphore::new(concurrency)),
            concurrency: AtomicUsize::new(concurrency),
            consumer: Mutex::new(None),
            time_limits: Mutex::default(),
            metrics: None,
        };
        Worker { shared: Arc::new(shared), cold: CancellationToken::new() }
    }

    /// Cancel this token to turn a warm shutdown cold: running tasks are
    /// abandoned at once and every unacknowledged message goes back to the
    /// broker (a second SIGTERM/SIGINT, or SIGQUIT).
    pub fn cold_shutdown(&self) -> CancellationToken {
        self.cold.clone()
    }

    /// The per-task rate limits (changed at run time by remote control).
    pub fn rate_limits(&self) -> &RateLimits {
        &self.shared.rate_limits
    }

    /// ETA/countdown tasks held now.
    pub fn scheduled(&self) -> usize {
        self.shared.scheduled.load(Ordering::Relaxed)
    }

    /// Exports Prometheus metrics through `metrics` (see [`Metrics::serve`]).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Worker {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.metrics = Some(metrics);
        }
        self
    }

    /// The live state: requests held, counts, revoked ids.
    pub fn state(&self) -> &WorkerState {
        &self.shared.state
    }

    /// Consumes until `shutdown` is cancelled, then shuts down warm: stops
    /// consuming, lets running tasks finish within the shutdown timeout, and
    /// hands everything reserved but not started back to the broker.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), BrokerError> {
        // Boxed as a trait object: the whole worker's future type is deep
        // enough to exceed rustc's layout query depth in callers.
        let run: BoxFuture<'_, Result<(), BrokerError>> = Box::pin(self.run_inner(shutdown));
        run.await
    }

    async fn run_inner(&self, shutdown: CancellationToken) -> Result<(), BrokerError> {
        let shared = &self.shared;
        let cfg = &shared.config;
        let prefetch = cfg.concurrency.saturating_mul(cfg.prefetch_multiplier);
        let mut consumer = shared.broker.consumer(&cfg.queues, prefetch);
        let control = consumer.control();
        if let Ok(mut slot) = shared.consumer.lock() {
            *slot = Some(control.clone());
        }
        let background = CancellationToken::new();
        let mut helpers = JoinSet::new();
        if cfg.remote_control {
            match crate::control::Pidbox::subscribe(shared.clone()).await {
                Ok(pidbox) => {
                    helpers.spawn(pidbox.serve(shutdown.clone(), background.clone()));
                }
                Err(e) => warn!("remote control is off: cannot subscribe to the control exchange: {e}"),
            }
        }
        shared.events.worker("worker-online", 0, 0).await;
        if cfg.heartbeat_interval > 0.0 {
            helpers.spawn(heartbeat(shared.clone(), background.clone()));
        }
        if let Some(metrics) = shared.metrics.clone() {
            helpers.spawn(gauges(shared.clone(), metrics, background.clone()));
        }
        info!(hostname = %cfg.hostname, queues = ?cfg.queues, concurrency = cfg.concurrency, "{} ready.", cfg.hostname);
        let mut running = JoinSet::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(done) = running.join_next(), if !running.is_empty() => {
                    if let Err(e) = done {
                        error!("a task runner ended abnormally: {e}");
                    }
                }
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let shared = shared.clone();
                        let stop = shutdown.clone();
                        let control = control.clone();
                        running.spawn(Box::pin(shared.handle(delivery, control, stop)));
                    }
                    Some(Err(e)) => warn!("consumer: {e}"),
                    None => break,
                },
            }
        }
        info!("warm shutdown: waiting up to {:?} for {} task(s)", cfg.shutdown_timeout, running.len());
        let finish = tokio::time::timeout(cfg.shutdown_timeout, async { while running.join_next().await.is_some() {} });
        let drained = tokio::select! {
            drained = finish => drained.is_ok(),
            _ = self.cold.cancelled() => false,
        };
        if !drained {
            if self.cold.is_cancelled() {
                warn!("cold shutdown: abandoning {} task(s), their messages go back to the queue", running.len());
            } else {
                warn!(
                    "shutdown timeout passed; abandoning {} task(s), their messages go back to the queue",
                    running.len()
                );
            }
            running.abort_all();
            while running.join_next().await.is_some() {}
        }
        if let Err(e) = consumer.restore_unacked().await {
            error!("could not restore unacknowledged messages: {e}");
        }
        background.cancel();
        while helpers.join_next().await.is_some() {}
        shared.events.close().await;
        shared.events.worker("worker-offline", 0, shared.state.processed()).await;
        Ok(())
    }
}

/// Refreshes the metrics' gauges every second until `stop`.
async fn gauges(shared: Arc<Shared>, metrics: Arc<Metrics>, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let state = &shared.state;
        metrics.set_gauge("celery_worker_tasks_active", state.active_count() as f64);
        metrics.set_gauge("celeriac_worker_reserved", state.reserved().len() as f64);
        metrics.set_gauge("celeriac_worker_scheduled", state.scheduled().len() as f64);
        metrics.set_gauge("celeriac_worker_processed_total", state.processed() as f64);
        metrics.set_gauge("celeriac_worker_concurrency", shared.concurrency.load(Ordering::Relaxed) as f64);
        let prefetch = shared.consumer.lock().ok().and_then(|c| c.as_ref().map(|c| c.prefetch())).unwrap_or(0);
        metrics.set_gauge("celeriac_worker_prefetch_count", prefetch as f64);
        metrics.set_gauge("celeriac_broker_reconnects_total", shared.broker.reconnects() as f64);
    }
}

/// Sends `worker-heartbeat` every `heartbeat_interval` seconds until `stop`.
async fn heartbeat(shared: Arc<Shared>, stop: CancellationToken) {
    let period = Duration::from_secs_f64(shared.config.heartbeat_interval.max(0.1));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {
                shared.events.worker("worker-heartbeat", shared.state.active_count(), shared.state.processed()).await;
            }
        }
    }
}

/// How one execution ended.
enum Outcome {
    Success(Value),
    Failed(TaskError),
    TimedOut(Duration),
    Terminated,
    Panicked(String),
}

impl Shared {
    async fn handle(self: Arc<Self>, mut delivery: Delivery, control: ConsumerControl, stop: CancellationToken) {
        let task = match TaskMessage::from_message(delivery.message()) {
            Ok(task) => task,
            Err(e) => {
                error!(tag = delivery.delivery_tag(), "cannot decode a message from {}: {e}", delivery.queue);
                Box::pin(self.dead_letter(&mut delivery, &format!("undecodable: {e}"))).await;
                return;
            }
        };
        let name = task.headers.task.clone();
        let id = task.headers.id.clone();
        let span = tracing::info_span!("task", %id, %name);
        async move {
            info!("Task {name}[{id}] received");
            let terminate = self.state.received(&task, &delivery, &self.config.hostname);
            if self.reporting() {
                self.report("task-received", &task, task_received_fields(&task));
            }
            let ran = Box::pin(self.process(&mut delivery, &task, &control, &stop, terminate)).await;
            self.state.finished(&id, &name, ran);
        }
        .instrument(span)
        .await
    }

    /// Everything between receipt and the end of a task; returns whether it ran.
    async fn process(
        &self,
        delivery: &mut Delivery,
        task: &TaskMessage,
        control: &ConsumerControl,
        stop: &CancellationToken,
        terminate: CancellationToken,
    ) -> bool {
        let (id, name) = (&task.headers.id, &task.headers.task);
        let Some(def) = self.registry.get(name) else {
            Box::pin(self.unknown(delivery, task)).await;
            return false;
        };
        if Box::pin(self.discard_if_revoked(delivery, task)).await {
            return false;
        }
        if Box::pin(self.discard_if_expired(delivery, task)).await {
            return false;
        }
        // ETA: wait without a permit, keeping the message's visibility fresh.
        if let Some(eta) = task.headers.eta.and_then(|e| e.to_timestamp().ok()) {
            let _held = Scheduled::hold(self, control);
            if let Some(text) = task.headers.eta.as_ref().map(PyDateTime::to_iso) {
                self.state.set_phase(id, Phase::Scheduled { eta: text, priority: delivery.message().priority });
            }
            loop {
                let wait = eta.duration_since(jiff::Timestamp::now());
                if wait.is_negative() || wait.is_zero() {
                    break;
                }
                let step = Duration::try_from(wait).unwrap_or_default().min(self.config.eta_refresh);
                tokio::select! {
                    _ = stop.cancelled() => {
                        delivery.leave_unacked(); // restored on shutdown
                        return false;
                    }
                    _ = tokio::time::sleep(step) => {}
                }
                if let Err(e) = Box::pin(delivery.extend_visibility()).await {
                    warn!("could not refresh the visibility of ETA task {id}: {e}");
                }
            }
            self.state.set_phase(id, Phase::Reserved);
        }
        let wait = self.rate_limits.reserve(name);
        if !wait.is_zero() {
            tokio::select! {
                _ = stop.cancelled() => {
                    delivery.leave_unacked(); // restored on shutdown
                    return false;
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
        let permit = tokio::select! {
            biased;
            _ = stop.cancelled() => None,
            permit = self.permits.clone().acquire_owned() => permit.ok(),
        };
        let Some(permit) = permit else {
            delivery.leave_unacked(); // restored on shutdown
            return false;
        };
        // Revoked or expired while it waited?
        if Box::pin(self.discard_if_revoked(delivery, task)).await
            || Box::pin(self.discard_if_expired(delivery, task)).await
        {
            return false;
        }
        Box::pin(self.execute(delivery, def, task, terminate, permit)).await;
        true
    }

    /// Discards a revoked task as Celery does: REVOKED stored, message acked.
    async fn discard_if_revoked(&self, delivery: &mut Delivery, task: &TaskMessage) -> bool {
        let (id, name) = (&task.headers.id, &task.headers.task);
        if !self.state.revoked().contains(id) {
            return false;
        }
        info!("Discarding revoked task: {name}[{id}]");
        self.finished(ResultMeta::revoked(id, "revoked", PyDateTime::now_utc()), task, true).await;
        self.report("task-revoked", task, revoked_fields(id, false, false));
        settle(delivery, Settle::Ack).await;
        true
    }

    /// Discards a task past its `expires` as Celery does: REVOKED (expired).
    async fn discard_if_expired(&self, delivery: &mut Delivery, task: &TaskMessage) -> bool {
        let (id, name) = (&task.headers.id, &task.headers.task);
        let Some(expires) = task.headers.expires.and_then(|e| e.to_timestamp().ok()) else { return false };
        if expires > jiff::Timestamp::now() {
            return false;
        }
        info!("Discarding expired task: {name}[{id}]");
        self.finished(ResultMeta::revoked(id, "expired", PyDateTime::now_utc()), task, true).await;
        self.report("task-revoked", task, revoked_fields(id, false, true));
        settle(delivery, Settle::Ack).await;
        true
    }

    /// Whether task events or metrics want to hear of tasks (so the fields
    /// are built only then).
    fn reporting(&self) -> bool {
        self.metrics.is_some() || self.events.task_events()
    }

    /// Sends a task event and counts it in the metrics.
    fn report(&self, kind: &str, task: &TaskMessage, fields: Map) {
        if !self.reporting() {
            return;
        }
        if let Some(metrics) = &self.metrics {
            metrics.observe(kind, task, &fields);
        }
        self.events.task(kind, fields);
    }

    /// Runs the task in the slot `permit` holds; the slot is given back as
    /// soon as the handler is done, before results are stored and the
    /// message is acked (it stays in `unacked` until then).
    async fn execute(
        &self,
        delivery: &mut Delivery,
        def: &Task,
        task: &TaskMessage,
        terminate: CancellationToken,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let opts = def.options();
        let cfg = &self.config;
        let acks_late = opts.acks_late.unwrap_or(cfg.acks_late);
        let ack_failures = opts.acks_on_failure_or_timeout.unwrap_or(cfg.acks_on_failure_or_timeout);
        let ignore_result = opts.ignore_result.or(task.headers.ignore_result).unwrap_or(cfg.ignore_result);
        let id = task.headers.id.clone();
        let name = task.headers.task.clone();
        if !acks_late {
            settle(delivery, Settle::Ack).await;
        }
        let time_start = celeriac_protocol::event::now_timestamp();
        self.state.set_phase(&id, Phase::Active { time_start, acknowledged: !acks_late });
        if self.reporting() {
            self.report("task-started", task, uuid_fields(&id));
        }
        if opts.track_started.unwrap_or(cfg.track_started) && !ignore_result {
            self.store(self.extend(ResultMeta::started(&id, std::process::id(), &cfg.hostname), task, delivery)).await;
        }

        // The message's limits win, then those set by the `time_limit`
        // command, then the task's, then the worker's.
        let secs = |s: f64| Duration::from_secs_f64(s.max(0.0));
        let (set_hard, set_soft) = self.time_limits.lock().ok().and_then(|t| t.get(&name).copied()).unwrap_or_default();
        let hard = task
            .headers
            .timelimit
            .hard
            .map(|s| secs(s.as_f64()))
            .or(set_hard.map(secs))
            .or(opts.time_limit)
            .or(cfg.time_limit);
        let soft = task
            .headers
            .timelimit
            .soft
            .map(|s| secs(s.as_f64()))
            .or(set_soft.map(secs))
            .or(opts.soft_time_limit)
            .or(cfg.soft_time_limit);
        let soft_token = CancellationToken::new();
        let request = RequestInfo {
            headers: task.headers.clone(),
            args: task.args.clone(),
            kwargs: task.kwargs.clone(),
            delivery_info: delivery.envelope.delivery_info.clone(),
            hostname: cfg.hostname.clone(),
            redelivered: delivery.redelivered(),
            properties: delivery.message().properties.clone(),
            priority: delivery.message().priority,
        };
        let ctx = Ctx::new(request, self.services.clone(), soft_token.clone(), terminate.clone());
        let inv = Invocation::new(ctx);
        let started = Instant::now();
        let mut handle = tokio::spawn(def.handler().call(inv));
        let soft_timer = soft.map(|d| {
            let t = soft_token.clone();
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                t.cancel();
            })
        });
        let limit = async {
            match hard {
                Some(limit) => tokio::time::sleep(limit).await,
                None => std::future::pending().await,
            }
        };
        let outcome = tokio::select! {
            joined = &mut handle => joined_outcome(joined),
            _ = limit => {
                handle.abort();
                Outcome::TimedOut(hard.unwrap_or_default())
            }
            _ = terminate.cancelled() => {
                handle.abort();
                Outcome::Terminated
            }
        };
        if let Some(t) = soft_timer {
            t.abort();
        }
        drop(permit);
        let runtime = started.elapsed().as_secs_f64();

        match outcome {
            Outcome::Success(value) => {
                info!(
                    "Task {name}[{id}] succeeded in {runtime:.3}s: {}",
                    celeriac_protocol::result::saferepr(&value, Some(1024), 3)
                );
                // As Celery: callbacks and the next chain step go out first,
                // and the stored result names them as its children.
                let children = self.send_callbacks(task, &value).await;
                let mut meta =
                    self.extend(ResultMeta::success(&id, value.clone(), PyDateTime::now_utc()), task, delivery);
                meta.children = children.iter().map(|child| ResultTuple::task(child).to_value()).collect();
                self.finished(meta, task, !ignore_result).await;
                if self.reporting() {
                    let mut fields = uuid_fields(&id);
                    let repr = celeriac_protocol::result::saferepr(&value, Some(1024), 3);
                    fields.insert("result".into(), Value::Str(repr));
                    fields.insert("runtime".into(), Value::Float(runtime));
                    self.report("task-succeeded", task, fields);
                }
                if acks_late {
                    settle(delivery, Settle::Ack).await;
                }
            }
            Outcome::Failed(err @ TaskError::Retry { .. }) => {
                let stored = err.exception();
                let TaskError::Retry { reason, countdown, eta, max_retries, exc, arguments, .. } = err else {
                    return;
                };
                let plan = RetryPlan {
                    reason,
                    stored,
                    on_exhaustion: exc.map(|e| *e),
                    delay: countdown.unwrap_or(opts.default_retry_delay),
                    eta,
                    max_retries: max_retries.or(opts.max_retries),
                    arguments: arguments.map(|a| *a),
                };
                self.retry_or_fail(delivery, task, plan, acks_late).await;
            }
            Outcome::Failed(err @ TaskError::Failure { .. }) if autoretries(def, &err) => {
                // Celery's autoretry: `task.retry(exc=exc)`, so the exception is
                // what RETRY stores and what the task finally fails with.
                let retries = u32::try_from(task.headers.retries.max(0)).unwrap_or(u32::MAX);
                let exc = err.exception();
                let plan = RetryPlan {
                    reason: exc.python_repr(),
                    stored: exc.clone(),
                    on_exhaustion: Some(exc),
                    delay: backoff(opts, retries),
                    eta: None,
                    max_retries: opts.max_retries,
                    arguments: None,
                };
                self.retry_or_fail(delivery, task, plan, acks_late).await;
            }
            Outcome::Failed(err @ TaskError::Reject { .. }) => {
                let TaskError::Reject { ref reason, requeue } = err else { return };
                info!("Task {name}[{id}] rejected (requeue={requeue}): {reason}");
                let mut fields = uuid_fields(&id);
                fields.insert("requeue".into(), Value::Bool(requeue));
                self.report("task-rejected", task, fields);
                if !requeue {
                    // Celery 5.7 records a final rejection as FAILURE(Reject).
                    let meta = ResultMeta::failure(&id, &err.exception(), None, PyDateTime::now_utc());
                    self.finished(self.extend(meta, task, delivery), task, !ignore_result).await;
                }
                settle(delivery, if requeue { Settle::Requeue } else { Settle::Reject }).await;
            }
            Outcome::Failed(TaskError::Ignore) => {
                settle(delivery, Settle::Ack).await;
            }
            Outcome::Failed(err) => {
                let exc = err.exception();
                error!("Task {name}[{id}] raised unexpected: {}", exc.python_repr());
                self.fail(delivery, task, &exc, traceback_of(&err), acks_late, ack_failures).await;
            }
            Outcome::TimedOut(limit) => {
                error!("Task {name}[{id}] hard time limit ({}s) exceeded", limit.as_secs_f64());
                let exc = ExceptionInfo::new(
                    "billiard.exceptions",
                    "TimeLimitExceeded",
                    vec![Value::Float(limit.as_secs_f64())],
                );
                self.fail(delivery, task, &exc, None, acks_late, ack_failures).await;
            }
            Outcome::Terminated => {
                // revoke --terminate: REVOKED, as Celery's terminated request.
                info!("Terminating {name}[{id}] (revoked)");
                let meta = ResultMeta::revoked(&id, "terminated", PyDateTime::now_utc());
                self.finished(self.extend(meta, task, delivery), task, true).await;
                let signum = self.state.termination_signal(&id).unwrap_or(15);
                let mut fields = revoked_fields(&id, true, false);
                fields.insert("signum".into(), Value::Int(signum));
                self.report("task-revoked", task, fields);
                if acks_late {
                    settle(delivery, if ack_failures { Settle::Ack } else { Settle::Requeue }).await;
                }
            }
            Outcome::Panicked(msg) => {
                // A panic is the Rust worker's lost child process: Celery's
                // WorkerLostError, or a requeue with reject_on_worker_lost.
                let text = format!("Worker exited prematurely: task {name}[{id}] panicked: {msg}");
                error!("Task handler raised error: WorkerLostError({text:?})");
                let reject = opts.reject_on_worker_lost.unwrap_or(cfg.reject_on_worker_lost);
                if acks_late && reject {
                    settle(delivery, Settle::Requeue).await;
                } else {
                    let exc = ExceptionInfo::new("billiard.exceptions", "WorkerLostError", vec![Value::Str(text)]);
                    self.fail(delivery, task, &exc, None, acks_late, ack_failures).await;
                }
            }
        }
    }

    async fn retry_or_fail(&self, delivery: &mut Delivery, task: &TaskMessage, plan: RetryPlan, acks_late: bool) {
        let RetryPlan { reason, stored, on_exhaustion, delay, eta, max_retries, arguments } = plan;
        let retries = task.headers.retries;
        let (id, name) = (&task.headers.id, &task.headers.task);
        if max_retries.is_some_and(|max| retries >= i64::from(max)) {
            let exc = on_exhaustion.unwrap_or_else(|| {
                ExceptionInfo::new(
                    "celery.exceptions",
                    "MaxRetriesExceededError",
                    vec![Value::Str(format!("Can't retry {name}[{id}] args:{:?} kwargs:{:?}", task.args, task.kwargs))],
                )
            });
            error!("Task {name}[{id}] max retries exceeded ({retries}): {reason}");
            self.fail(delivery, task, &exc, None, acks_late, true).await;
            return;
        }
        let mut next = task.clone();
        if let Some(new) = arguments {
            if let Some(args) = new.args {
                next.args = args;
                next.headers.argsrepr = None;
                next.headers.argsrepr = Some(celeriac_protocol::event::args_repr(&next));
            }
            if let Some(kwargs) = new.kwargs {
                next.kwargs = kwargs;
                next.headers.kwargsrepr = None;
                next.headers.kwargsrepr = Some(celeriac_protocol::event::kwargs_repr(&next));
            }
        }
        next.headers.retries = retries + 1;
        next.headers.parent_id = Some(id.clone());
        next.headers.eta = Some(eta.unwrap_or_else(|| {
            let at = jiff::Timestamp::now()
                .checked_add(jiff::SignedDuration::try_from(delay).unwrap_or(jiff::SignedDuration::ZERO))
                .unwrap_or(jiff::Timestamp::MAX);
            PyDateTime::from_timestamp(at, jiff::tz::Offset::UTC)
        }));
        let info = &delivery.envelope.delivery_info;
        let priority = delivery.message().priority;
        match self.producer.resend(&next, &info.exchange, &info.routing_key, priority).await {
            Ok(()) => {
                info!("Task {name}[{id}] retry: Retry in {}s: {reason}", delay.as_secs_f64());
                self.store(self.extend(ResultMeta::retry(id, &stored, None), task, delivery)).await;
                let mut fields = uuid_fields(id);
                fields.insert("exception".into(), Value::Str(stored.python_repr()));
                fields.insert("traceback".into(), Value::Str(String::new()));
                self.report("task-retried", task, fields);
                settle(delivery, Settle::Ack).await;
            }
            Err(e) => {
                error!("could not publish the retry of {name}[{id}]: {e}; requeueing the original");
                settle(delivery, Settle::Requeue).await;
            }
        }
    }

    async fn fail(
        &self,
        delivery: &mut Delivery,
        task: &TaskMessage,
        exc: &ExceptionInfo,
        traceback: Option<String>,
        acks_late: bool,
        ack_failures: bool,
    ) {
        let id = &task.headers.id;
        let mut fields = uuid_fields(id);
        fields.insert("exception".into(), Value::Str(exc.python_repr()));
        fields.insert("traceback".into(), Value::Str(traceback.clone().unwrap_or_default()));
        let meta = self.extend(ResultMeta::failure(id, exc, traceback, PyDateTime::now_utc()), task, delivery);
        self.finished(meta, task, true).await;
        self.report("task-failed", task, fields);
        // Old-style errbacks get the failed task's id before their own
        // arguments, as Celery sends them.
        for errback in task.embed.errbacks.iter().flatten() {
            let mut sig = errback.clone();
            if !sig.immutable {
                sig.args.insert(0, Value::Str(id.clone()));
            }
            self.send_signature(&sig, task).await;
        }
        if acks_late {
            settle(delivery, if ack_failures { Settle::Ack } else { Settle::Requeue }).await;
        }
    }

    /// Sends the links and the next step of the chain; returns their ids.
    async fn send_callbacks(&self, task: &TaskMessage, result: &Value) -> Vec<String> {
        let mut sent = Vec::new();
        for link in task.embed.callbacks.iter().flatten() {
            let mut sig = link.clone();
            if !sig.immutable {
                sig.args = sig.args_with_parent_result(result);
            }
            sent.extend(self.send_signature(&sig, task).await);
        }
        if let Some(chain) = &task.embed.chain {
            if let Some((next, rest)) = chain.split_last() {
                let mut sig = next.clone();
                if !sig.immutable {
                    sig.args = sig.args_with_parent_result(result);
                }
                if !rest.is_empty() {
                    sig.options.insert("chain".into(), Value::List(rest.iter().map(|s| s.to_value()).collect()));
                }
                sent.extend(self.send_signature(&sig, task).await);
            }
        }
        sent
    }

    /// Sends a signature as a child of `parent`, honouring its options;
    /// returns the id it was sent with (`None` if it could not be sent).
    async fn send_signature(&self, sig: &celeriac_protocol::Signature, parent: &TaskMessage) -> Option<String> {
        let opt = |k: &str| sig.options.get(k).and_then(Value::as_str).map(str::to_owned);
        let mut options = celeriac_broker::SendOptions {
            task_id: opt("task_id"),
            queue: opt("queue"),
            exchange: opt("exchange"),
            routing_key: opt("routing_key"),
            priority: sig.options.get("priority").and_then(Value::as_i64).and_then(|p| u8::try_from(p).ok()),
            parent_id: Some(parent.headers.id.clone()),
            root_id: parent.headers.root_id.clone().or_else(|| Some(parent.headers.id.clone())),
            group_id: opt("group_id"),
            ..Default::default()
        };
        if let Some(Value::List(chain)) = sig.options.get("chain") {
            options.chain = chain.iter().filter_map(|v| celeriac_protocol::Signature::from_value(v).ok()).collect();
        }
        options.link = option_signatures(sig, "link");
        options.link_error = option_signatures(sig, "link_error");
        match self.producer.send_task(&sig.task, sig.args.clone(), sig.kwargs.clone(), options).await {
            Ok(id) => Some(id),
            Err(e) => {
                error!("could not send {} after {}[{}]: {e}", sig.task, parent.headers.task, parent.headers.id);
                None
            }
        }
    }

    fn extend(&self, mut meta: ResultMeta, task: &TaskMessage, delivery: &Delivery) -> ResultMeta {
        if self.config.result_extended {
            meta.extended = Some(Extended::new(
                &task.headers.task,
                Value::List(task.args.clone()),
                Value::Map(task.kwargs.clone()),
                &self.config.hostname,
                task.headers.retries,
                Some(&delivery.envelope.delivery_info.routing_key),
            ));
        }
        meta.parent_id = task.headers.parent_id.clone();
        meta.group_id = task.headers.group.clone();
        meta
    }

    /// Stores a final state (when `store`), then, for a chord header task,
    /// records its part of the join and sends or fails the body when it was
    /// the last part (Celery's `mark_as_done`/`mark_as_failure`/`mark_as_revoked`).
    async fn finished(&self, meta: ResultMeta, task: &TaskMessage, store: bool) {
        let part = match (&task.embed.chord, &task.headers.group) {
            (Some(_), Some(group_id)) => Some(ChordPartReturn {
                group_id: group_id.clone(),
                group_index: task.headers.group_index,
                task_id: task.headers.id.clone(),
                state: meta.status.clone(),
                result: meta.result.clone(),
            }),
            _ => None,
        };
        if store {
            self.store(meta).await;
        }
        if let Some(part) = part {
            self.chord_part_return(part, task).await;
        }
    }

    async fn chord_part_return(&self, part: ChordPartReturn, task: &TaskMessage) {
        let Some(body) = &task.embed.chord else { return };
        let Some(results) = &self.services.results else {
            warn!(
                "Task {}[{}] is part of a chord, but this worker has no result backend",
                task.headers.task, part.task_id
            );
            return;
        };
        let group_id = part.group_id.clone();
        match results.on_chord_part_return(part).await {
            Ok(ChordOutcome::Ready(ready)) => {
                let mut sig = body.clone();
                if !sig.immutable {
                    sig.args = sig.args_with_parent_result(&Value::List(ready.results));
                }
                self.send_signature(&sig, task).await;
                if let Err(e) = results.finish_chord(ready.claim).await {
                    error!("could not clean up chord {group_id}: {e}");
                }
            }
            Ok(ChordOutcome::Failed(failure)) => {
                let exc = failure.exception();
                let body_id = body.options.get("task_id").and_then(Value::as_str).map(str::to_owned);
                error!("Chord {group_id:?} raised: {}", exc.python_repr());
                if let Some(body_id) = body_id {
                    self.store(ResultMeta::failure(&body_id, &exc, None, PyDateTime::now_utc())).await;
                    for errback in option_signatures(body, "link_error") {
                        let mut sig = errback;
                        if !sig.immutable {
                            sig.args.insert(0, Value::Str(body_id.clone()));
                        }
                        self.send_signature(&sig, task).await;
                    }
                }
            }
            Ok(_) => {}
            Err(e) => error!("could not record the chord part of {}: {e}", task.headers.id),
        }
    }

    async fn store(&self, meta: ResultMeta) {
        if let Some(results) = &self.services.results {
            if let Err(e) = results.store(meta).await {
                error!("could not store a result: {e}");
            }
        }
    }

    async fn unknown(&self, delivery: &mut Delivery, task: &TaskMessage) {
        let (id, name) = (&task.headers.id, &task.headers.task);
        match self.config.unknown_task {
            UnknownTaskPolicy::Reject => {
                error!("Received unregistered task of type '{name}'. The message has been ignored and discarded.");
                let exc = ExceptionInfo::new("celery.exceptions", "NotRegistered", vec![Value::Str(name.clone())]);
                self.store(ResultMeta::failure(id, &exc, None, PyDateTime::now_utc())).await;
                settle(delivery, Settle::Reject).await;
            }
            UnknownTaskPolicy::Requeue => {
                warn!("Received unregistered task of type '{name}'; requeued for another worker");
                settle(delivery, Settle::Requeue).await;
            }
            UnknownTaskPolicy::DeadLetter => {
                warn!("Received unregistered task of type '{name}'; moved to {}", self.config.dead_letter_queue);
                self.dead_letter(delivery, &format!("unregistered task {name}")).await;
            }
        }
    }

    /// Moves the message, untouched but for an `x-celeriac-error` header, to
    /// the dead-letter queue; only then acks it. If that fails it is requeued.
    async fn dead_letter(&self, delivery: &mut Delivery, reason: &str) {
        let mut message = delivery.message().clone();
        message.headers.insert("x-celeriac-error".into(), Value::Str(reason.to_owned()));
        let mut info = Map::new();
        info.insert("queue".into(), Value::Str(delivery.queue.clone()));
        message.headers.insert("x-celeriac-origin".into(), Value::Map(info));
        let dlq = &self.config.dead_letter_queue;
        match self.broker.publish("", dlq, &message).await {
            Ok(()) => settle(delivery, Settle::Ack).await,
            Err(e) => {
                error!("could not move a message to {dlq}: {e}; requeueing it");
                settle(delivery, Settle::Requeue).await;
            }
        }
    }
}

fn joined_outcome(joined: Result<Result<Value, TaskError>, tokio::task::JoinError>) -> Outcome {
    match joined {
        Ok(Ok(v)) => Outcome::Success(v),
        Ok(Err(e)) => Outcome::Failed(e),
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            Outcome::Panicked(msg)
        }
        Err(e) => Outcome::Panicked(e.to_string()),
    }
}

/// Hard and soft limits in seconds set at run time for a task name.
pub(crate) type TimeLimitOverride = (Option<f64>, Option<f64>);

/// `{"uuid": id}`, the start of every task event.
fn uuid_fields(id: &str) -> Map {
    let mut m = Map::new();
    m.insert("uuid".into(), Value::Str(id.to_owned()));
    m
}

/// The fields of `task-revoked`.
fn revoked_fields(id: &str, terminated: bool, expired: bool) -> Map {
    let mut m = uuid_fields(id);
    m.insert("terminated".into(), Value::Bool(terminated));
    m.insert("signum".into(), if terminated { Value::Int(15) } else { Value::Null });
    m.insert("expired".into(), Value::Bool(expired));
    m
}

/// How to retry a task, and what to fail it with when it may not.
struct RetryPlan {
    /// For the log line.
    reason: String,
    /// The exception stored with the RETRY state.
    stored: ExceptionInfo,
    /// Raised once retries are used up (else `MaxRetriesExceededError`).
    on_exhaustion: Option<ExceptionInfo>,
    delay: Duration,
    eta: Option<PyDateTime>,
    max_retries: Option<u32>,
    /// New arguments for the retry.
    arguments: Option<crate::error::RetryArguments>,
}

/// Counts a held ETA task, and gives the prefetch window a slot for it while
/// fewer than `max_scheduled_tasks` are held (Celery's
/// `qos.increment_eventually`); undone on drop.
struct Scheduled<'a> {
    shared: &'a Shared,
    control: &'a ConsumerControl,
    widened: bool,
}

impl<'a> Scheduled<'a> {
    fn hold(shared: &'a Shared, control: &'a ConsumerControl) -> Scheduled<'a> {
        let before = shared.scheduled.fetch_add(1, Ordering::Relaxed);
        let widened = before < shared.config.max_scheduled_tasks;
        if widened {
            control.increment_prefetch();
        } else if before == shared.config.max_scheduled_tasks {
            warn!("{before} ETA tasks held (worker_max_scheduled_tasks): reserving no more until some are due");
        }
        Scheduled { shared, control, widened }
    }
}

impl Drop for Scheduled<'_> {
    fn drop(&mut self) {
        self.shared.scheduled.fetch_sub(1, Ordering::Relaxed);
        if self.widened {
            self.control.decrement_prefetch();
        }
    }
}

/// The signatures under `key` (`link`, `link_error`) in a signature's
/// options: one, a list of them, or none.
fn option_signatures(sig: &celeriac_protocol::Signature, key: &str) -> Vec<celeriac_protocol::Signature> {
    match sig.options.get(key) {
        Some(Value::List(items)) => {
            items.iter().filter_map(|v| celeriac_protocol::Signature::from_value(v).ok()).collect()
        }
        Some(v @ Value::Map(_)) => celeriac_protocol::Signature::from_value(v).ok().into_iter().collect(),
        _ => Vec::new(),
    }
}

fn autoretries(def: &Task, err: &TaskError) -> bool {
    let kinds = &def.options().autoretry_for;
    err.kind().is_some_and(|k| kinds.iter().any(|want| want == "*" || want == k))
}

/// Celery's `get_exponential_backoff_interval`: `base * 2^retries`, capped,
/// with full jitter.
fn backoff(opts: &crate::TaskOptions, retries: u32) -> Duration {
    let Some(base) = opts.retry_backoff else { return opts.default_retry_delay };
    let factor = 2u32.saturating_pow(retries.min(30));
    let delay = base.saturating_mul(factor).min(opts.retry_backoff_max);
    if opts.retry_jitter {
        delay.mul_f64(rand::random::<f64>())
    } else {
        delay
    }
}

fn traceback_of(err: &TaskError) -> Option<String> {
    match err {
        TaskError::Failure { traceback: Some(t), .. } => Some(t.clone()),
        TaskError::Failure { exc_type, message, .. } => {
            Some(format!("Traceback (most recent call last):\n  (celeriac task)\n{exc_type}: {message}\n"))
        }
        _ => None,
    }
}

enum Settle {
    Ack,
    Reject,
    Requeue,
}

async fn settle(delivery: &mut Delivery, how: Settle) {
    if delivery.is_settled() {
        return;
    }
    let result = match how {
        Settle::Ack => delivery.ack().await,
        Settle::Reject => delivery.reject().await,
        Settle::Requeue => delivery.requeue().await,
    };
    if let Err(e) = result {
        error!(tag = delivery.delivery_tag(), "could not settle a delivery: {e}");
    }
}

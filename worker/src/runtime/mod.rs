//! The worker: take deliveries from the broker and run each task the way
//! Celery's worker does, storing outcomes through a [`ResultStore`].
//!
//! A delivery moves one way through one stage per concern:
//!
//! - `admit`: decode within `accept_content` and the size limit, then
//!   decide: run, unknown, revoked or expired;
//! - `schedule`: wait for the ETA (parked in the `timer`, its visibility
//!   kept fresh), the rate limit and an execution slot (`-c`);
//! - `execute`: run the handler under time limits resolved once by
//!   `limits`;
//! - `record`: results, events, retries, callbacks and chord parts, with
//!   the result store retried through outages;
//! - `settle`: one `AckPolicy` decides ack, requeue, reject or
//!   leave-for-restore.
//!
//! Nothing a message carries can panic the worker; should a runner panic
//! anyway, its task is failed and its message dead-lettered, not lost.

mod admit;
mod execute;
mod limits;
mod record;
mod replace;
mod schedule;
mod settle;
mod timer;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use celeriac_broker::{Broker, BrokerError, ConsumerControl, Delivery, Producer};
use celeriac_config::UnknownTaskPolicy;
use celeriac_protocol::event::task_received_fields;
use celeriac_protocol::result::ResultMeta;
use celeriac_protocol::time::PyDateTime;
use celeriac_protocol::{Map, Value};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument};

use celeriac_protocol::limits::Accept;

use crate::context::WorkerServices;
use crate::events::Events;
use crate::metrics::Metrics;
use crate::rate::RateLimits;
use crate::state::WorkerState;
use crate::store::ResultStore;
use crate::{Registry, TaskError};

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
    /// With `unknown_task = requeue`: how many workers may hand an unknown
    /// task on before it is dead-lettered (so no queue spins it for ever).
    pub unknown_task_max_requeues: u32,
    /// `accept_content`: content types a task message may have (kombu
    /// names or MIME types); others are dead-lettered undecoded.
    pub accept_content: Vec<String>,
    /// `worker_max_message_size`: the largest task message body, in bytes,
    /// as it arrives and once decompressed.
    pub max_message_size: usize,
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
            unknown_task_max_requeues: 10,
            accept_content: vec!["json".into()],
            max_message_size: 64 * 1024 * 1024,
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
    pub(crate) scheduled: Arc<AtomicUsize>,
    /// The requests held, counts, revoked ids.
    pub(crate) state: Arc<WorkerState>,
    /// Events (and the node's clock).
    pub(crate) events: Arc<Events>,
    /// Execution slots (`-c`), grown and shrunk by remote control.
    pub(crate) permits: Arc<Semaphore>,
    /// The order in which tasks get slots: the order they arrived.
    pub(crate) line: Arc<schedule::Line>,
    /// The slots there are now.
    pub(crate) concurrency: AtomicUsize,
    /// The running consumer's window and queues, for remote control.
    pub(crate) consumer: Mutex<Option<ConsumerControl>>,
    /// Time limits set by the `time_limit` command: task name → (hard, soft).
    pub(crate) time_limits: Mutex<HashMap<String, TimeLimitOverride>>,
    /// Prometheus metrics, when exported.
    pub(crate) metrics: Option<Arc<Metrics>>,
    /// What a task message must be to be decoded.
    acceptance: admit::Acceptance,
    /// The content types remote-control requests may have (`accept_content`).
    pub(crate) accept: celeriac_protocol::limits::Accept,
}

/// The signatures an option or argument holds: one (a map), a list of
/// them, or none; what is not a signature is left out.
pub(crate) fn signatures_in(value: Option<&Value>) -> Vec<celeriac_protocol::Signature> {
    use celeriac_protocol::Signature;
    match value {
        Some(Value::List(items)) => items.iter().filter_map(|v| Signature::from_value(v).ok()).collect(),
        Some(one @ Value::Map(_)) => Signature::from_value(one).ok().into_iter().collect(),
        _ => Vec::new(),
    }
}

/// What `Ctx` asks of the worker.
pub(crate) struct Services {
    pub(crate) results: Option<Arc<dyn ResultStore>>,
    state: Arc<WorkerState>,
    producer: Producer,
    /// The worker's tasks, for in-process calls (`celery.map`).
    registry: Registry,
    /// What a canvas a task applies may build (`worker_max_message_size`).
    plan_limits: celeriac_client::PlanLimits,
}

impl WorkerServices for Services {
    fn update_state(&self, task_id: &str, state: &str, meta: Value) -> BoxFuture<'static, Result<(), TaskError>> {
        let record = Arc::new(ResultMeta::new(task_id, state.into(), meta));
        let results = self.results.clone();
        Box::pin(async move {
            match results {
                Some(r) => r.store(record).await.map_err(|e| TaskError::fail(e.to_string())),
                None => Ok(()),
            }
        })
    }
    fn is_revoked(&self, task_id: &str) -> bool {
        self.state.revoked().contains(task_id)
    }

    fn apply(
        &self,
        sig: celeriac_protocol::Signature,
        lineage: celeriac_client::Lineage,
    ) -> BoxFuture<'static, Result<celeriac_client::Applied, TaskError>> {
        let (producer, results, limits) = (self.producer.clone(), self.results.clone(), self.plan_limits);
        Box::pin(async move {
            // Frozen by the applier as Celery's apply_async freezes it: a
            // group inside a chord header takes the outer group's id then.
            let chords = results.map(crate::store::ChordSizesOf);
            let applier = celeriac_client::Applier::new(
                &producer,
                chords.as_ref().map(|c| c as &dyn celeriac_client::ChordSizes),
            )
            .with_limits(limits);
            applier
                .apply(sig, None, Vec::new(), &lineage)
                .await
                .map_err(|e| TaskError::custom("kombu.exceptions", "OperationalError", e.to_string()))
        })
    }

    fn task(&self, name: &str) -> Option<crate::Task> {
        self.registry.get(name).cloned()
    }

    fn results(&self, task_ids: Vec<String>) -> BoxFuture<'static, Result<Vec<ResultMeta>, TaskError>> {
        let results = self.results.clone();
        Box::pin(async move {
            let Some(results) = results else {
                return Err(TaskError::builtin("NotImplementedError", "this worker has no result backend to read"));
            };
            let mut out = Vec::with_capacity(task_ids.len().min(1024));
            for id in task_ids {
                let meta = results.meta(&id).await.map_err(|e| TaskError::fail(e.to_string()))?;
                out.push(meta.unwrap_or_else(|| ResultMeta::new(&id, celeriac_protocol::State::Pending, Value::Null)));
            }
            Ok(out)
        })
    }

    fn store(&self, meta: ResultMeta) -> BoxFuture<'static, Result<(), TaskError>> {
        let results = self.results.clone();
        Box::pin(async move {
            match results {
                Some(r) => r.store(Arc::new(meta)).await.map_err(|e| TaskError::fail(e.to_string())),
                None => Ok(()),
            }
        })
    }

    fn add_to_chord(&self, group_id: &str) -> BoxFuture<'static, Result<(), TaskError>> {
        let (results, group_id) = (self.results.clone(), group_id.to_owned());
        Box::pin(async move {
            match results {
                Some(r) => r.add_to_chord(&group_id).await.map_err(|e| TaskError::fail(e.to_string())),
                None => Err(TaskError::builtin("NotImplementedError", "add_to_chord needs a result backend")),
            }
        })
    }
}

impl Worker {
    /// A worker for `registry` on `broker`.
    pub fn new(
        mut registry: Registry,
        broker: Broker,
        producer: Producer,
        results: Option<Arc<dyn ResultStore>>,
        config: WorkerConfig,
    ) -> Worker {
        crate::builtins::add_missing(&mut registry);
        let state = Arc::new(WorkerState::new(config.statedb.clone()));
        let services = Arc::new(Services {
            results,
            state: state.clone(),
            producer: producer.clone(),
            registry: registry.clone(),
            plan_limits: record::plan_limits(config.max_message_size),
        });
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
        let acceptance = admit::Acceptance::new(&config.accept_content, config.max_message_size);
        let accept =
            celeriac_protocol::limits::Accept::from_names(&config.accept_content).unwrap_or_else(|_| Accept::json());
        let shared = Shared {
            acceptance,
            accept,
            registry,
            broker,
            producer,
            config,
            services,
            rate_limits,
            scheduled: Arc::default(),
            state,
            events,
            permits: Arc::new(Semaphore::new(concurrency)),
            line: Arc::default(),
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
        // Names that are not registered here share one label value, so
        // messages cannot create series at will.
        metrics.known_tasks(self.shared.registry.tasks().map(|t| t.name().to_owned()));
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
        if cfg.statedb.is_some() {
            helpers.spawn(flush_statedb(shared.clone(), background.clone()));
        }
        let (park, parked) = mpsc::unbounded_channel();
        let (due_tx, mut due) = mpsc::unbounded_channel();
        let timer = timer::Timer::new(
            timer::TimerConfig { refresh: cfg.eta_refresh, max_scheduled: cfg.max_scheduled_tasks },
            control.clone(),
            shared.scheduled.clone(),
            due_tx,
        );
        // Its own token: the timer also stops when the consumer ends.
        let timer_stop = shutdown.child_token();
        let mut timer = tokio::spawn(timer.run(parked, timer_stop.clone()));
        let mut timer_ended = false;
        let lane = Arc::new(Lane { stop: shutdown.clone(), park });
        info!(hostname = %cfg.hostname, queues = ?cfg.queues, concurrency = cfg.concurrency, "{} ready.", cfg.hostname);
        let mut running = JoinSet::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(done) = running.join_next(), if !running.is_empty() => {
                    if let Err(e) = done {
                        // Panics are caught inside the runner; this is an abort.
                        error!("a task runner ended abnormally: {e}");
                    }
                }
                ended = &mut timer, if !timer_ended => {
                    // Only a bug ends it early: stop, so that a supervisor
                    // restarts the worker instead of it holding ETA tasks
                    // no timer will ever hand back.
                    // (It also ends, correctly, with the shutdown this
                    // select may not have picked yet.)
                    timer_ended = true;
                    if !shutdown.is_cancelled() {
                        error!("the ETA timer ended while the worker runs ({ended:?}); shutting down");
                    }
                    break;
                }
                Some(parked) = due.recv() => {
                    running.spawn(Box::pin(shared.clone().handle_due(parked, lane.clone())));
                }
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        // Its place in line for a slot is taken now, in the
                        // order the consumer hands deliveries over.
                        let ticket = shared.line.ticket();
                        running.spawn(Box::pin(shared.clone().handle(delivery, lane.clone(), Pass::Received(ticket))));
                    }
                    Some(Err(e)) => {
                        if let BrokerError::Undecodable { kind, .. } = &e {
                            shared.count_refused(kind);
                        }
                        warn!("consumer: {e}");
                    }
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
        // The timer leaves what it holds unacked when it stops; so does this
        // with what it made due meanwhile.
        timer_stop.cancel();
        if !timer_ended {
            if let Err(e) = timer.await {
                error!("the ETA timer ended abnormally: {e}");
            }
        }
        due.close();
        while let Ok(mut parked) = due.try_recv() {
            parked.leave_unacked();
        }
        // Bounded: during an outage the messages come back after the
        // visibility timeout anyway.
        match tokio::time::timeout(SHUTDOWN_STEP, consumer.restore_unacked()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                error!("could not restore unacknowledged messages: {e}; they come back after the visibility timeout")
            }
            Err(_) => error!(
                "restoring unacknowledged messages took over {SHUTDOWN_STEP:?}; the rest come back after the visibility timeout"
            ),
        }
        let deferred = shared.broker.deferred_settlements();
        if deferred > 0 {
            warn!(
                "{deferred} ack(s) or requeue(s) did not reach the broker; those messages come back after the visibility timeout"
            );
        }
        background.cancel();
        while helpers.join_next().await.is_some() {}
        shared.events.close().await;
        let offline = shared.events.worker("worker-offline", 0, shared.state.processed());
        if tokio::time::timeout(SHUTDOWN_STEP, offline).await.is_err() {
            warn!("the worker-offline event could not be sent within {SHUTDOWN_STEP:?}");
        }
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
        metrics.set_gauge("celeriac_worker_reserved", state.reserved_count() as f64);
        metrics.set_gauge("celeriac_worker_scheduled", shared.scheduled.load(Ordering::Relaxed) as f64);
        metrics.set_gauge("celeriac_worker_processed_total", state.processed() as f64);
        metrics.set_gauge("celeriac_worker_concurrency", shared.concurrency.load(Ordering::Relaxed) as f64);
        let prefetch = shared.consumer.lock().ok().and_then(|c| c.as_ref().map(|c| c.prefetch())).unwrap_or(0);
        metrics.set_gauge("celeriac_worker_prefetch_count", prefetch as f64);
        metrics.set_gauge("celeriac_broker_reconnects_total", shared.broker.reconnects() as f64);
    }
}

/// Writes the revoked ids to the state file every second when they changed
/// (revokes only mark it changed), on a blocking thread, and once more at the end.
async fn flush_statedb(shared: Arc<Shared>, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    loop {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = ticks.tick() => false,
        };
        let state = shared.state.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || state.revoked().flush()).await {
            error!("writing the state file failed: {e}");
        }
        if stopping {
            return;
        }
    }
}

/// Sends `worker-heartbeat` every `heartbeat_interval` seconds until `stop`.
async fn heartbeat(shared: Arc<Shared>, stop: CancellationToken) {
    let period =
        Duration::try_from_secs_f64(shared.config.heartbeat_interval.max(0.1)).unwrap_or(Duration::from_secs(2));
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

/// The longest each shutdown step that talks to the broker (handing back
/// unacked messages, the `worker-offline` event) may take.
const SHUTDOWN_STEP: Duration = Duration::from_secs(30);

/// Hard and soft limits in seconds set at run time for a task name.
pub(crate) type TimeLimitOverride = (Option<f64>, Option<f64>);

/// Forgets a received request when dropped, however its runner ends,
/// unless it was [`Tracked::keep`]t for a later pass.
struct Tracked<'a> {
    state: &'a WorkerState,
    id: &'a str,
    name: &'a str,
    kept: bool,
}

impl Tracked<'_> {
    /// The request stays held: its delivery is parked in the timer.
    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.state.finished(self.id, self.name, true);
        }
    }
}

/// What every runner of one consumer shares: the worker's stop token and
/// the ETA timer's inbox.
struct Lane {
    stop: CancellationToken,
    park: mpsc::UnboundedSender<timer::Parked>,
}

/// Which pass through the stages a delivery is on.
#[derive(Debug)]
enum Pass {
    /// Just received: recorded, reported, admitted. With its place in line
    /// for a slot, taken in the order the consumer handed deliveries over;
    /// given up before anything that can wait (a refusal, a discard): only
    /// the wait for a slot may hold the line.
    Received(schedule::Ticket),
    /// Its ETA has come (it was received and admitted before it was parked);
    /// it takes its place in line once its visibility is refreshed.
    Due,
}

/// How a pass ended.
enum Flow {
    /// The delivery was settled (or deliberately left unacked).
    Done,
    /// The task (this id) waits for its ETA: park the delivery in the timer.
    Park(jiff::Timestamp, String),
}

impl Shared {
    /// Takes one delivery through the stages (see the module docs). A panic
    /// in the runner itself (never in a task's handler: those are caught as
    /// lost executions) fails the task and dead-letters its message.
    async fn handle(self: Arc<Self>, mut delivery: Delivery, lane: Arc<Lane>, pass: Pass) {
        let run = AssertUnwindSafe(self.process(&mut delivery, &lane, pass)).catch_unwind().await;
        match run {
            Ok(Flow::Done) => {}
            Ok(Flow::Park(eta, id)) => {
                let delivery = delivery.park();
                self.state.parked(&id, delivery.envelope_text(), self.acceptance.limits());
                let parked = timer::Parked { delivery, eta };
                if let Err(mpsc::error::SendError(mut parked)) = lane.park.send(parked) {
                    // The timer has stopped with the worker: restored on shutdown.
                    parked.delivery.leave_unacked();
                }
            }
            Err(panic) => {
                let text = panic_text(panic.as_ref());
                let cleanup = AssertUnwindSafe(self.runner_panicked(&mut delivery, &text)).catch_unwind().await;
                if cleanup.is_err() {
                    error!("handling a panicked task runner panicked too; its message is left for restore");
                    delivery.leave_unacked();
                }
            }
        }
    }

    /// A parked delivery whose ETA has come: parsed again, then through the
    /// rest of the stages.
    async fn handle_due(self: Arc<Self>, parked: celeriac_broker::ParkedDelivery, lane: Arc<Lane>) {
        match parked.unpark() {
            Ok(delivery) => self.handle(delivery, lane, Pass::Due).await,
            Err(mut parked) => {
                // Never seen (parking checks the text reads back): left to
                // the visibility timeout rather than run without its message.
                error!("a held ETA message could not be read back; it is left for the visibility timeout");
                parked.abandon();
            }
        }
    }

    async fn process(&self, delivery: &mut Delivery, lane: &Lane, pass: Pass) -> Flow {
        let stop = &lane.stop;
        // Its place in line for a slot (a due task takes one further down).
        let (due, ticket) = match pass {
            Pass::Received(ticket) => (false, Some(ticket)),
            Pass::Due => (true, None),
        };
        let task = match admit::decode(delivery.message(), &self.acceptance) {
            Ok(task) => task,
            Err(refusal) => {
                drop(ticket);
                Box::pin(self.refuse(delivery, &refusal)).await;
                return Flow::Done;
            }
        };
        let (id, name) = (task.headers.id.as_str(), task.headers.task.as_str());
        let span = tracing::info_span!("task", %id, %name);
        async {
            let terminate = if due {
                self.state.due(id, &task, delivery)
            } else {
                info!("Task {name}[{id}] received");
                let terminate = self.state.received(&task, delivery, &self.config.hostname);
                if let Some(metrics) = &self.metrics {
                    metrics.note_queue(id, &delivery.queue);
                }
                if self.reporting() {
                    self.report("task-received", &task, task_received_fields(&task));
                }
                terminate
            };
            let tracked = Tracked { state: &self.state, id, name, kept: false };
            if due {
                // A full visibility timeout from the start, as for any task;
                // and one that is no longer ours (restored to another
                // consumer, its channel closed) is not run here.
                if let Err(e) = Box::pin(delivery.extend_visibility()).await {
                    if e.delivery_lost() {
                        warn!("ETA task {name}[{id}] is not run here: {e}");
                        delivery.abandon();
                        return Flow::Done;
                    }
                    warn!("could not refresh the visibility of ETA task {id} as it became due: {e}");
                }
            }
            let now = jiff::Timestamp::now();
            let verdict = if due {
                // Admitted before it was parked: only revocation and expiry
                // can have changed.
                match self.registry.get(name) {
                    Some(def) => admit::still_wanted(&self.state, &task, now).unwrap_or(admit::Verdict::Run(def)),
                    None => admit::Verdict::Unknown,
                }
            } else {
                admit::admit(&self.registry, &self.state, &task, now)
            };
            let ticket = match verdict {
                admit::Verdict::Run(_) => ticket,
                // Nothing to wait for a slot: the line goes on while this
                // one is handed on or discarded (which can wait out an outage).
                _ => {
                    drop(ticket);
                    None
                }
            };
            match verdict {
                admit::Verdict::Unknown => Box::pin(self.unknown(delivery, &task, stop)).await,
                admit::Verdict::Revoked => {
                    Box::pin(self.discard(delivery, &task, record::Discard::Revoked, stop)).await
                }
                admit::Verdict::Expired => {
                    Box::pin(self.discard(delivery, &task, record::Discard::Expired, stop)).await
                }
                admit::Verdict::Run(def) => {
                    if let Some(eta) = schedule::eta_ahead(&task, now).filter(|_| !due) {
                        let text = task.headers.eta.as_ref().map(PyDateTime::to_iso).unwrap_or_default();
                        let priority = delivery.message().priority;
                        self.state.set_phase(id, crate::state::Phase::Scheduled { eta: text, priority });
                        tracked.keep();
                        return Flow::Park(eta, id.to_owned());
                    }
                    let ticket = ticket.unwrap_or_else(|| self.line.ticket());
                    Box::pin(self.run_task(delivery, def, &task, stop, terminate, ticket)).await;
                }
            }
            Flow::Done
        }
        .instrument(span)
        .await
    }

    /// Schedules, executes, records and settles an admitted task.
    async fn run_task(
        &self,
        delivery: &mut Delivery,
        def: &crate::Task,
        task: &celeriac_protocol::TaskMessage,
        stop: &CancellationToken,
        terminate: CancellationToken,
        ticket: schedule::Ticket,
    ) {
        let Some(permit) = Box::pin(self.schedule(task, ticket, stop)).await else {
            delivery.leave_unacked(); // the worker stops: restored on shutdown
            return;
        };
        // Revoked or expired while it waited for its rate limit or a slot?
        // Then the slot goes on to the next task at once: discarding stores
        // REVOKED, which can wait out an outage.
        if let Some(verdict) = admit::still_wanted(&self.state, task, jiff::Timestamp::now()) {
            drop(permit);
            let why = match verdict {
                admit::Verdict::Revoked => record::Discard::Revoked,
                _ => record::Discard::Expired,
            };
            return Box::pin(self.discard(delivery, task, why, stop)).await;
        }
        let policy = self.ack_policy(def);
        if policy.acks_early() {
            settle::settle_now(delivery, celeriac_broker::Settlement::Ack).await;
        }
        let run = Box::pin(self.execute(delivery, def, task, terminate, permit, &policy)).await;
        let (ending, recorded) = Box::pin(self.record(delivery, def, task, run, stop, &policy)).await;
        settle::settle(delivery, policy.after(ending, recorded)).await;
    }

    /// The acknowledgement rules of `def` on this worker.
    fn ack_policy(&self, def: &crate::Task) -> settle::AckPolicy {
        let (opts, cfg) = (def.options(), &self.config);
        settle::AckPolicy {
            acks_late: opts.acks_late.unwrap_or(cfg.acks_late),
            ack_failures: opts.acks_on_failure_or_timeout.unwrap_or(cfg.acks_on_failure_or_timeout),
            reject_on_worker_lost: opts.reject_on_worker_lost.unwrap_or(cfg.reject_on_worker_lost),
        }
    }

    /// After the runner panicked: FAILURE stored if the message names a task,
    /// and the message, unless it was settled already, dead-lettered.
    async fn runner_panicked(&self, delivery: &mut Delivery, text: &str) {
        error!(delivery_tag = delivery.delivery_tag(), "a task runner panicked (a celeriac bug): {text}");
        self.count_refused("runner_panic");
        if let Ok(task) = admit::decode(delivery.message(), &self.acceptance) {
            let exc = celeriac_protocol::result::ExceptionInfo::new(
                "billiard.exceptions",
                "WorkerLostError",
                vec![Value::Str(format!("celeriac's runner of task {} failed: {text}", task.headers.id))],
            );
            let meta =
                ResultMeta::failure(&task.headers.id, &exc, None, celeriac_protocol::time::PyDateTime::now_utc());
            // One attempt: a runner that failed this way must not wait out an outage.
            let once = CancellationToken::new();
            once.cancel();
            let _ = self.store(meta, &once).await;
        }
        if !delivery.is_settled() {
            self.dead_letter(delivery, &format!("runner_panic: {text}")).await;
        }
    }
}

/// The message of a panic payload.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

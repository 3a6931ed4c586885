//! Remote control (Celery's pidbox): the worker listens on the `celery.pidbox`
//! fanout exchange, runs the commands addressed to it (`ping`, `stats`,
//! `active`, `revoke`, `rate_limit`, `add_consumer`, `shutdown`, ...) and
//! replies on `reply.celery.pidbox` with Python's reply shapes, so `celery
//! inspect`, `celery control` and Flower treat it like any Celery worker.
//!
//! A request goes through pure steps first ([`request`]: bounded decoding,
//! addressing, envelope; [`command`]: a typed command with checked
//! arguments), then is acted on here. Every request ends in a log line and,
//! if it fails, in Celery's error reply and a count in
//! `celeriac_control_errors_total{method}`; a command that panics or runs
//! too long is answered with an error and the control loop goes on.

pub mod command;
pub mod glob;
pub mod request;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use celeriac_broker::{BrokerError, ExchangeKind, Subscription};
use celeriac_protocol::codec::ContentType;
use celeriac_protocol::result::{ResultMeta, State};
use celeriac_protocol::time::PyDateTime;
use celeriac_protocol::{Map, Message, Value};
use futures_util::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

pub use command::{Command, CommandError};
pub use request::{Request, RequestError};

use crate::runtime::Shared;
use crate::state::{Phase, WorkerState};
use command::{Rate, TaskKey, MAX_CONCURRENCY, MAX_REVOKE_IDS};

/// The request exchange (`<control_exchange>.pidbox`).
pub const PIDBOX_EXCHANGE: &str = "celery.pidbox";
/// The reply exchange.
pub const REPLY_EXCHANGE: &str = "reply.celery.pidbox";
/// How long one command may run before it is answered with a `TimeoutError`.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Most queues `add_consumer` lets a worker consume from.
pub const MAX_QUEUES: usize = 1_000;
/// Result-backend lookups a `revoke` runs at once.
const REVOKE_BACKEND_CONCURRENCY: usize = 16;
/// How long a `revoke` spends marking ids REVOKED in the result backend;
/// ids not reached by then keep their stored state (they are revoked in the
/// worker all the same), so a huge list cannot hold the control loop.
const REVOKE_BACKEND_BUDGET: Duration = Duration::from_secs(30);
/// Ids named in one log line at most.
const LOGGED_IDS: usize = 20;
/// `consumer.timer.call_at(eta, ..., priority=6)`: what `scheduled` reports.
const ETA_TIMER_PRIORITY: i64 = 6;
/// The Celery release whose protocol celeriac speaks (the pinned peers).
const CELERY_COMPAT: &str = "5.7.0";

/// The worker's end of the pidbox.
pub(crate) struct Pidbox {
    shared: Arc<Shared>,
    subscription: Subscription,
}

/// What a command answers.
#[derive(Debug)]
pub(crate) enum Reply {
    /// Reply with this value (when the caller asked for a reply).
    Value(Value),
    /// Send nothing (`shutdown`).
    None,
}

fn ok(text: impl Into<String>) -> Result<Reply, CommandError> {
    Ok(Reply::Value(one("ok", Value::Str(text.into()))))
}

fn one(key: &str, value: Value) -> Value {
    let mut m = Map::new();
    m.insert(key.into(), value);
    Value::Map(m)
}

fn count(n: impl TryInto<i64>) -> Value {
    Value::Int(n.try_into().unwrap_or(i64::MAX))
}

/// The text of a panic's payload.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// Runs one command's future so that whatever it does ends in a result: a
/// panic becomes [`CommandError::Panicked`], running past `limit`
/// [`CommandError::TimedOut`].
pub(crate) async fn guarded<T>(
    method: &'static str,
    limit: Duration,
    fut: impl Future<Output = Result<T, CommandError>>,
) -> Result<T, CommandError> {
    match tokio::time::timeout(limit, AssertUnwindSafe(fut).catch_unwind()).await {
        Err(_) => Err(CommandError::TimedOut { method, seconds: limit.as_secs() }),
        Ok(Err(panic)) => Err(CommandError::Panicked { method, message: panic_text(panic.as_ref()) }),
        Ok(Ok(result)) => result,
    }
}

/// Up to [`LOGGED_IDS`] ids for a log line, with how many more there are.
fn some_ids(ids: &[String]) -> String {
    let shown: Vec<&str> = ids.iter().take(LOGGED_IDS).map(String::as_str).collect();
    match ids.len().saturating_sub(LOGGED_IDS) {
        0 => shown.join(", "),
        more => format!("{} (and {more} more)", shown.join(", ")),
    }
}

/// The method label of a body that could not be dispatched.
fn body_label(body: &Map) -> &'static str {
    body.get("method").and_then(Value::as_str).and_then(command::canonical).unwrap_or("other")
}

impl Pidbox {
    /// Subscribes to the control exchange; the worker is reachable once this
    /// returns.
    pub(crate) async fn subscribe(shared: Arc<Shared>) -> Result<Pidbox, BrokerError> {
        shared.broker.declare_exchange(PIDBOX_EXCHANGE, ExchangeKind::Fanout);
        shared.broker.declare_exchange(REPLY_EXCHANGE, ExchangeKind::Direct);
        // On AMQP the queue is `<node>.celery.pidbox`, as kombu's Mailbox names it.
        let queue = format!("{}.{PIDBOX_EXCHANGE}", shared.config.hostname);
        let subscription = shared.broker.subscribe_queue(PIDBOX_EXCHANGE, "", &queue).await?;
        Ok(Pidbox { shared, subscription })
    }

    /// Answers commands until `stop`; `shutdown` cancels `shutdown`. No
    /// request ends this loop, not even one that panics.
    pub(crate) async fn serve(mut self, shutdown: CancellationToken, stop: CancellationToken) {
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                next = self.subscription.next() => next,
            };
            match next {
                Some(Ok(message)) => {
                    let handled =
                        AssertUnwindSafe(self.on_message(&message.envelope.message, &shutdown)).catch_unwind().await;
                    if let Err(panic) = handled {
                        error!(
                            "remote control: a request failed inside celeriac ({}); it was dropped and the control loop goes on",
                            panic_text(panic.as_ref())
                        );
                        self.count_error("invalid");
                    }
                }
                Some(Err(e)) => warn!("remote control: {e}"),
                None => return,
            }
        }
    }

    fn count_error(&self, method: &str) {
        if let Some(metrics) = &self.shared.metrics {
            metrics.control_error(method);
        }
    }

    /// A request dropped without a reply: logged and counted.
    fn dropped(&self, method: &'static str, e: &RequestError) {
        warn!("remote control: {e}");
        self.count_error(method);
    }

    async fn on_message(&self, message: &Message, shutdown: &CancellationToken) {
        if let Some(clock) = message.headers.get("clock").and_then(Value::as_i64) {
            self.shared.events.clock().adjust(u64::try_from(clock).unwrap_or(0));
        }
        let expires = message.headers.get("expires").and_then(Value::as_f64).unwrap_or(0.0);
        if expires > 0.0 && expires < celeriac_protocol::event::now_timestamp() {
            debug!("remote control: dropping an expired request");
            return;
        }
        // As kombu's Mailbox: only the content types of accept_content.
        if !self.shared.accept.allows(&message.content_type) {
            let e = RequestError::Decode(format!(
                "content type {:?} is not in accept_content",
                message.content_type.chars().take(100).collect::<String>()
            ));
            return self.dropped("invalid", &e);
        }
        let body = match request::decode_body(message) {
            Ok(body) => body,
            Err(e) => return self.dropped("invalid", &e),
        };
        match request::addressed_to(&body, &self.shared.config.hostname) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => return self.dropped(body_label(&body), &e),
        }
        let request = match Request::parse(&body) {
            Ok(request) => request,
            Err(e) => return self.dropped("invalid", &e),
        };
        let method = request.label();
        debug!(method, "remote control command");
        let outcome = match Command::parse(&request.method, request.arguments.as_ref()) {
            Ok(command) => guarded(command.name(), COMMAND_TIMEOUT, self.act(command, shutdown)).await,
            Err(e) => Err(e),
        };
        let value = match outcome {
            Ok(Reply::None) => return,
            Ok(Reply::Value(value)) => value,
            Err(e) => {
                match e {
                    CommandError::Panicked { .. } | CommandError::TimedOut { .. } => error!("remote control: {e}"),
                    _ => warn!("remote control: {method}: {e}"),
                }
                self.count_error(method);
                e.reply()
            }
        };
        match &request.reply_to {
            // Replies go to the reply exchange only, never (say) into a task
            // queue's exchange named by the request.
            Some(to) if to.exchange != REPLY_EXCHANGE => {
                let shown: String = to.exchange.chars().filter(|c| !c.is_control()).take(100).collect();
                warn!("remote control: a {method} reply to the exchange {shown:?} was not sent; replies go to {REPLY_EXCHANGE}");
                self.count_error(method);
            }
            Some(to) => self.reply(&to.exchange, &to.routing_key, &request.ticket, value).await,
            None => {}
        }
    }

    async fn reply(&self, exchange: &str, routing_key: &str, ticket: &Value, value: Value) {
        let shared = &self.shared;
        // A client that gave up has removed its binding: drop the reply then,
        // as kombu does, rather than leave it in a queue nobody reads.
        match shared.broker.bound_queues(exchange, routing_key).await {
            Ok(queues) if queues.is_empty() => return debug!("remote control: the caller is gone; reply dropped"),
            Ok(_) => {}
            Err(e) => return warn!("remote control: cannot route a reply: {e}"),
        }
        let mut headers = Map::new();
        headers.insert("ticket".into(), ticket.clone());
        headers.insert("clock".into(), count(shared.events.clock().forward()));
        let mut properties = Map::new();
        properties.insert("delivery_mode".into(), Value::Int(1));
        let body = one(&shared.config.hostname, value);
        let sent = match Message::with_body(headers, properties, 0, ContentType::Json, None, &body) {
            Ok(message) => shared.broker.publish(exchange, routing_key, &message).await,
            Err(e) => Err(e.into()),
        };
        if let Err(e) = sent {
            warn!("remote control: cannot send a reply: {e}");
        }
    }

    /// Runs a checked command.
    /// The scheduled requests' info, read back from up to hundreds of
    /// thousands of held messages on a blocking thread, not a runtime one.
    async fn scheduled(state: Arc<WorkerState>) -> Vec<(String, u8, Map)> {
        match tokio::task::spawn_blocking(move || state.scheduled()).await {
            Ok(scheduled) => scheduled,
            Err(e) => {
                warn!("inspect scheduled: reading the held requests failed ({e}); answering none");
                Vec::new()
            }
        }
    }

    async fn act(&self, command: Command, shutdown: &CancellationToken) -> Result<Reply, CommandError> {
        let shared = &self.shared;
        let value = |v: Value| Ok(Reply::Value(v));
        match command {
            Command::Ping => ok("pong"),
            Command::Clock => value(one("clock", count(shared.events.clock().value()))),
            Command::Hello { from_node, revoked } => value(self.hello(from_node, revoked)),
            Command::Stats => value(self.stats()),
            Command::Active { safe } => value(infos(shared.state.active(), safe)),
            Command::Reserved => value(infos(shared.state.reserved(), false)),
            Command::Scheduled => value(Value::List(
                Self::scheduled(shared.state.clone())
                    .await
                    .into_iter()
                    .map(|(eta, _, info)| {
                        let mut m = Map::new();
                        m.insert("eta".into(), Value::Str(eta));
                        // The timer entry's priority, which Celery sets to 6
                        // for every ETA request (not the message priority).
                        m.insert("priority".into(), Value::Int(ETA_TIMER_PRIORITY));
                        m.insert("request".into(), Value::Map(info));
                        Value::Map(m)
                    })
                    .collect(),
            )),
            Command::Registered { items, builtins } => value(self.registered(&items, builtins)),
            Command::ActiveQueues => value(self.active_queues()),
            Command::Revoked => value(Value::List(shared.state.revoked().ids().into_iter().map(Value::Str).collect())),
            Command::QueryTask { ids } => value(Self::query_task(shared.state.clone(), ids).await),
            Command::Conf => value(self.conf()),
            Command::Report => ok(self.report()),
            Command::Revoke { ids, terminate, signal, .. } => self.revoke(ids, terminate, signal).await,
            Command::RevokeByStampedHeaders { headers, terminate, signal, repr } => {
                shared.state.revoked_stamps().add(&headers);
                info!("Tasks flagged as revoked by stamped headers: {repr}");
                if !terminate {
                    return ok(format!("headers {repr} flagged as revoked, but not terminated"));
                }
                let matched = shared.state.terminate_stamped(&headers, signal);
                if matched.is_empty() {
                    return ok(format!("headers {repr} were not terminated"));
                }
                // Celery's reply shows its defaultdict of sets.
                let entries: Vec<String> = matched
                    .iter()
                    .map(|(h, vs)| {
                        let set: Vec<String> = vs.iter().map(celeriac_protocol::result::python_repr).collect();
                        format!(
                            "{}: {{{}}}",
                            celeriac_protocol::result::python_repr(&Value::Str(h.clone())),
                            set.join(", ")
                        )
                    })
                    .collect();
                ok(format!("headers defaultdict(<class 'set'>, {{{}}}) revoked", entries.join(", ")))
            }
            Command::RateLimit { task, rate, truthy, text } => self.rate_limit(task, rate, truthy, &text),
            Command::TimeLimit { task, limits } => self.time_limit(task, limits),
            Command::AddConsumer { queue, exchange, routing_key } => {
                self.add_consumer(&queue, exchange.as_deref(), routing_key.as_deref()).await
            }
            Command::CancelConsumer { queue } => {
                if let Some(c) = self.consumer() {
                    c.cancel_queue(&queue);
                }
                info!("Remote control: no longer consuming from {queue}");
                ok(format!("no longer consuming from {queue}"))
            }
            Command::PoolGrow { n } => {
                let now = shared.concurrency.load(Ordering::Relaxed);
                self.resize("pool_grow", now.saturating_add(n))?;
                ok("pool will grow")
            }
            Command::PoolShrink { n } => {
                let now = shared.concurrency.load(Ordering::Relaxed);
                self.resize("pool_shrink", now.saturating_sub(n).max(1))?;
                ok("pool will shrink")
            }
            Command::Autoscale { max, min } => {
                let now = shared.concurrency.load(Ordering::Relaxed);
                let max = max.unwrap_or(now);
                let min = min.unwrap_or(max).min(max);
                self.resize("autoscale", max)?;
                ok(format!("autoscale now max={max} min={min}"))
            }
            Command::EnableEvents => {
                if shared.events.set_task_events(true) {
                    ok("task events already enabled")
                } else {
                    info!("Events of group {{task}} enabled by remote.");
                    ok("task events enabled")
                }
            }
            Command::DisableEvents => {
                if shared.events.set_task_events(false) {
                    info!("Events of group {{task}} disabled by remote.");
                    ok("task events disabled")
                } else {
                    ok("task events already disabled")
                }
            }
            Command::Heartbeat => {
                shared.events.manual_heartbeat().await;
                value(Value::Null)
            }
            Command::Election => value(Value::Null),
            // Python's answer when `worker_pool_restarts` is off; there is no
            // pool of processes to restart here.
            Command::PoolRestart => {
                Err(CommandError::Refused { method: "pool_restart", message: "Pool restarts not enabled".into() })
            }
            Command::Shutdown { msg } => {
                warn!("{msg}");
                shutdown.cancel();
                Ok(Reply::None)
            }
        }
    }

    fn consumer(&self) -> Option<celeriac_broker::ConsumerControl> {
        self.shared.consumer.lock().ok().and_then(|c| c.clone())
    }

    /// Mingle's `hello` from a starting worker: merge its revoked ids, answer
    /// with ours (none to ourselves). Celery 5.7 sends and expects the ids
    /// alone, oldest first; older Celery sent `{id: stamp}`. Either way only
    /// the ids are taken, revoked from now on: the stamps come from another
    /// host's clock (Python's are `time.monotonic()`), so they mean nothing here.
    fn hello(&self, from_node: Option<String>, theirs: Vec<String>) -> Value {
        if from_node.as_deref() == Some(self.shared.config.hostname.as_str()) {
            return Value::Null;
        }
        let revoked = self.shared.state.revoked();
        if !theirs.is_empty() {
            let from: String =
                from_node.as_deref().unwrap_or("?").chars().filter(|c| !c.is_control()).take(100).collect();
            info!("sync with {from}: {} revoked id(s)", theirs.len());
            revoked.add(theirs.iter().map(String::as_str));
        }
        let mut m = Map::new();
        m.insert("revoked".into(), Value::List(revoked.ids().into_iter().map(Value::Str).collect()));
        m.insert("clock".into(), count(self.shared.events.clock().forward()));
        Value::Map(m)
    }

    fn stats(&self) -> Value {
        let shared = &self.shared;
        let cfg = &shared.config;
        let pid = std::process::id();
        let mut total = Map::new();
        for (name, n) in shared.state.totals() {
            total.insert(name, count(n));
        }
        let concurrency = shared.concurrency.load(Ordering::Relaxed);
        let mut pool = Map::new();
        pool.insert("implementation".into(), Value::Str("celeriac:TokioPool".into()));
        pool.insert("max-concurrency".into(), count(concurrency));
        pool.insert("processes".into(), Value::List(vec![count(pid)]));
        pool.insert("max-tasks-per-child".into(), Value::Str("N/A".into()));
        pool.insert("put-guarded-by-semaphore".into(), Value::Bool(true));
        let limit = |d: Option<std::time::Duration>| d.map_or(Value::Int(0), |d| Value::Float(d.as_secs_f64()));
        pool.insert("timeouts".into(), Value::List(vec![limit(cfg.soft_time_limit), limit(cfg.time_limit)]));
        let mut m = Map::new();
        m.insert("total".into(), Value::Map(total));
        m.insert("pid".into(), count(pid));
        m.insert("clock".into(), Value::Str(shared.events.clock().value().to_string()));
        m.insert("uptime".into(), count(shared.state.uptime().as_secs()));
        m.insert("pool".into(), Value::Map(pool));
        m.insert("broker".into(), Value::Map(broker_info(&shared.broker.masked_url())));
        m.insert("prefetch_count".into(), count(self.consumer().map_or(0, |c| c.prefetch())));
        m.insert("rusage".into(), Value::Map(rusage()));
        Value::Map(m)
    }

    /// Registered task names; with task info items (Celery's default:
    /// `exchange`, `routing_key`, `rate_limit`), `name [item=value ...]` for
    /// the items a task has, as `str()` of Python's task attribute. `items`
    /// come deduplicated from the parser, so a reply is never larger than
    /// the tasks times the attributes there are.
    fn registered(&self, items: &[String], builtins: bool) -> Value {
        let shared = &self.shared;
        let mut names: Vec<String> = shared
            .registry
            .tasks()
            .filter(|t| builtins || !t.name().starts_with("celery."))
            .map(|t| {
                let fields: Vec<String> =
                    items.iter().filter_map(|item| task_attribute(t, item).map(|v| format!("{item}={v}"))).collect();
                if fields.is_empty() {
                    t.name().to_owned()
                } else {
                    format!("{} [{}]", t.name(), fields.join(" "))
                }
            })
            .collect();
        names.sort();
        Value::List(names.into_iter().map(Value::Str).collect())
    }

    /// `inspect report`: Celery's bug-report layout, with celeriac's facts.
    fn report(&self) -> String {
        let cfg = &self.shared.config;
        let url = self.shared.broker.masked_url();
        let transport = url.split_once("://").map_or("memory", |(scheme, _)| scheme);
        let mut text = format!(
            "\nsoftware -> celery:{CELERY_COMPAT} (protocol; celeriac:{} in Rust, tokio)\n\
             platform -> system:{} arch:{}\n\
             node     -> {} pid:{}\n\
             settings -> transport:{transport}\n\n",
            env!("CARGO_PKG_VERSION"),
            crate::events::system_name(),
            std::env::consts::ARCH,
            cfg.hostname,
            std::process::id(),
        );
        if let Value::Map(conf) = self.conf() {
            for (key, value) in conf {
                text.push_str(&format!("{key}: {}\n", celeriac_protocol::result::python_repr(&value)));
            }
        }
        text
    }

    fn active_queues(&self) -> Value {
        let queues = self.consumer().map(|c| c.queues()).unwrap_or_else(|| self.shared.config.queues.clone());
        Value::List(queues.iter().map(|q| queue_dict(q)).collect())
    }

    /// `query_task`: each id once (a request may repeat one many times),
    /// on a blocking thread, since a held ETA request's info is read back
    /// from its message.
    async fn query_task(state: Arc<WorkerState>, ids: Vec<String>) -> Value {
        let answer = tokio::task::spawn_blocking(move || Self::query_ids(&state, ids)).await;
        answer.unwrap_or_else(|e| {
            warn!("inspect query_task: reading the requests failed ({e}); answering none");
            Value::Map(Map::new())
        })
    }

    fn query_ids(state: &WorkerState, ids: Vec<String>) -> Value {
        let mut m = Map::new();
        let mut seen = std::collections::HashSet::new();
        for id in ids {
            if !seen.insert(id.clone()) {
                continue;
            }
            if let Some((phase, info)) = state.query(&id) {
                let state = match phase {
                    Phase::Active { .. } => "active",
                    Phase::Reserved => "reserved",
                    Phase::Scheduled { .. } => "scheduled",
                };
                m.insert(id, Value::List(vec![Value::Str(state.into()), Value::Map(info)]));
            }
        }
        Value::Map(m)
    }

    fn conf(&self) -> Value {
        let cfg = &self.shared.config;
        let mut m = cfg.conf.clone();
        // Celery's `conf` masks a password with eight stars.
        let url = self.shared.broker.masked_url().replacen(":**@", ":********@", 1);
        m.insert("broker_url".into(), Value::Str(url));
        m.insert("worker_concurrency".into(), count(self.shared.concurrency.load(Ordering::Relaxed)));
        m.insert("worker_prefetch_multiplier".into(), count(cfg.prefetch_multiplier));
        m.insert("task_acks_late".into(), Value::Bool(cfg.acks_late));
        m.insert("task_track_started".into(), Value::Bool(cfg.track_started));
        m.insert("task_ignore_result".into(), Value::Bool(cfg.ignore_result));
        m.insert("result_extended".into(), Value::Bool(cfg.result_extended));
        m.insert("worker_send_task_events".into(), Value::Bool(self.shared.events.task_events()));
        m.insert("task_default_queue".into(), Value::Str(cfg.queues.first().cloned().unwrap_or_default()));
        Value::Map(m)
    }

    /// Revokes `ids` (the last [`MAX_REVOKE_IDS`] of them: the revoked set
    /// keeps no more), marks the ones with no final state REVOKED in the
    /// result backend (a bounded number of lookups at once, for at most
    /// [`REVOKE_BACKEND_BUDGET`]), and terminates the running ones when asked.
    async fn revoke(&self, ids: Vec<String>, terminate: bool, signum: i64) -> Result<Reply, CommandError> {
        let shared = &self.shared;
        let kept = &ids[ids.len().saturating_sub(MAX_REVOKE_IDS)..];
        shared.state.revoked().add(kept.iter().map(String::as_str));
        // Celery 5.6.2+ records REVOKED at once, but only over PENDING,
        // RECEIVED, RETRY or REJECTED (5.7): never over a result, nor over a
        // task started here or elsewhere, which ends as it ends.
        if let Some(results) = &shared.services.results {
            let started = std::time::Instant::now();
            let marking =
                futures_util::stream::iter(kept).for_each_concurrent(REVOKE_BACKEND_CONCURRENCY, |id| async move {
                    let running = shared.state.is_active(id);
                    if running {
                        return;
                    }
                    let overwritable = match results.state(id).await {
                        Ok(Some(state)) => {
                            matches!(state, State::Pending | State::Received | State::Retry | State::Rejected)
                        }
                        Ok(None) => true,
                        Err(e) => {
                            warn!("could not read the state of {id}: {e}");
                            false
                        }
                    };
                    if overwritable {
                        let meta = ResultMeta::revoked(id, "revoked", PyDateTime::now_utc());
                        if let Err(e) = results.store(Arc::new(meta)).await {
                            warn!("could not store REVOKED for {id}: {e}");
                        }
                    }
                });
            if tokio::time::timeout(REVOKE_BACKEND_BUDGET, marking).await.is_err() {
                warn!(
                    "revoke: marking {} id(s) REVOKED in the result backend stopped after {} s; the ids not reached \
                     keep their stored state (the worker discards them all the same); send fewer ids per request",
                    kept.len(),
                    REVOKE_BACKEND_BUDGET.as_secs()
                );
            } else {
                debug!(
                    "revoke: {} id(s) checked in the result backend in {:.1} s",
                    kept.len(),
                    started.elapsed().as_secs_f64()
                );
            }
        }
        if terminate {
            let terminated: Vec<String> =
                kept.iter().filter(|id| shared.state.terminate(id, signum)).cloned().collect();
            if terminated.is_empty() {
                return ok("terminate: tasks unknown");
            }
            info!("Terminating {} ({signum})", some_ids(&terminated));
            return ok(format!("terminate: {}", terminated.join(", ")));
        }
        info!("Tasks flagged as revoked: {}", some_ids(&ids));
        ok(format!("tasks {} flagged as revoked", python_set(&ids)))
    }

    /// The registered task `task`, or Celery's `unknown task` error.
    fn known_task(&self, task: &TaskKey, what: &str) -> Result<String, CommandError> {
        match task {
            TaskKey::Name(name) if self.shared.registry.get(name).is_some() => Ok(name.clone()),
            TaskKey::Name(name) => {
                let shown: String = name.chars().filter(|c| !c.is_control()).take(200).collect();
                warn!("{what} attempt for unknown task {shown}");
                Err(CommandError::UnknownTask)
            }
            TaskKey::NotAName => Err(CommandError::UnknownTask),
        }
    }

    fn rate_limit(&self, task: TaskKey, rate: Rate, truthy: bool, text: &str) -> Result<Reply, CommandError> {
        let task = self.known_task(&task, "Rate limit")?;
        self.shared.rate_limits.set(
            &task,
            match rate {
                Rate::Off => None,
                Rate::PerSecond(r) => Some(r),
            },
        );
        if !truthy {
            info!("Rate limits disabled for tasks of type {task}");
            return ok("rate limit disabled successfully");
        }
        info!("New rate limit for tasks of type {task}: {text}.");
        ok("new rate limit set successfully")
    }

    /// `time_limit`: the task first (an unknown one wins, as in Python),
    /// then the limits, already checked to be sane seconds.
    fn time_limit(
        &self,
        task: TaskKey,
        limits: Result<(Option<f64>, Option<f64>), CommandError>,
    ) -> Result<Reply, CommandError> {
        let task = self.known_task(&task, "Change time limit")?;
        let (hard, soft) = limits?;
        if let Ok(mut limits) = self.shared.time_limits.lock() {
            limits.insert(task.clone(), (hard, soft));
        }
        info!("New time limits for tasks of type {task}: soft={soft:?} hard={hard:?}");
        ok("time limits set successfully")
    }

    async fn add_consumer(
        &self,
        queue: &str,
        exchange: Option<&str>,
        routing_key: Option<&str>,
    ) -> Result<Reply, CommandError> {
        let refused = |message: String| CommandError::Refused { method: "add_consumer", message };
        let Some(consumer) = self.consumer() else { return Err(refused("the worker is not consuming yet".into())) };
        let queues = consumer.queues();
        if queues.iter().any(|q| q == queue) {
            return ok(format!("already consuming from {queue}"));
        }
        if queues.len() >= MAX_QUEUES {
            return Err(refused(format!(
                "the worker already consumes from {} queues, the most it takes; cancel_consumer some first",
                queues.len()
            )));
        }
        let exchange = exchange.unwrap_or(queue);
        let routing_key = routing_key.unwrap_or(queue);
        if let Err(e) = self.shared.broker.declare_queue(queue, exchange, routing_key).await {
            return Err(refused(format!("cannot declare {queue}: {e}")));
        }
        consumer.add_queue(queue);
        info!("Remote control: started consuming from {queue}");
        ok(format!("add consumer {queue}"))
    }

    /// Sets the pool to `target` slots (at least one, at most
    /// [`MAX_CONCURRENCY`] or the size the worker started with), and the
    /// prefetch window with it.
    fn resize(&self, method: &'static str, target: usize) -> Result<(), CommandError> {
        let shared = &self.shared;
        let cap = MAX_CONCURRENCY.max(shared.config.concurrency);
        if target > cap {
            return Err(CommandError::Refused {
                method,
                message: format!("the pool would have {target} slots, more than the {cap} a worker may have"),
            });
        }
        let target = target.max(1);
        let now = shared.concurrency.load(Ordering::Relaxed);
        if target > now {
            shared.permits.add_permits(target - now);
        } else if target < now {
            // Slots in use are taken away as they free up.
            let permits = shared.permits.clone();
            let n = u32::try_from(now - target).unwrap_or(u32::MAX);
            tokio::spawn(async move {
                if let Ok(p) = permits.acquire_many_owned(n).await {
                    p.forget();
                }
            });
        }
        shared.concurrency.store(target, Ordering::Relaxed);
        if let Some(c) = self.consumer() {
            let multiplier = shared.config.prefetch_multiplier;
            if multiplier > 0 && c.prefetch() > 0 {
                let change = (target as i128 - now as i128).saturating_mul(multiplier as i128);
                let prefetch = (c.prefetch() as i128).saturating_add(change).clamp(1, usize::MAX as i128);
                c.set_prefetch(usize::try_from(prefetch).unwrap_or(1));
            }
        }
        info!("Pool resized to {target}");
        Ok(())
    }
}

/// `str(getattr(task, item))` for the task attributes celeriac has; `None`
/// where Python's would be `None` (or the attribute is unknown).
fn task_attribute(task: &crate::Task, item: &str) -> Option<String> {
    let o = task.options();
    let secs = |d: std::time::Duration| {
        let s = d.as_secs_f64();
        if s.fract() == 0.0 {
            format!("{}", s as u64)
        } else {
            format!("{s}")
        }
    };
    let flag = |b: bool| if b { "True" } else { "False" }.to_owned();
    match item {
        "name" => Some(task.name().to_owned()),
        "rate_limit" => o.rate_limit.clone(),
        "queue" => o.queue.clone(),
        "time_limit" => o.time_limit.map(secs),
        "soft_time_limit" => o.soft_time_limit.map(secs),
        "max_retries" => o.max_retries.map(|n| n.to_string()),
        "default_retry_delay" => Some(secs(o.default_retry_delay)),
        "acks_late" => o.acks_late.map(flag),
        "ignore_result" => o.ignore_result.map(flag),
        "track_started" => o.track_started.map(flag),
        "serializer" => o.serializer.clone(),
        _ => None,
    }
}

/// Request infos; with `safe`, args and kwargs as repr strings.
fn infos(list: Vec<Map>, safe: bool) -> Value {
    Value::List(
        list.into_iter()
            .map(|mut info| {
                if safe {
                    let maxlevels = celeriac_protocol::result::SAFEREPR_MAXLEVELS;
                    if let Some(Value::List(args)) = info.get("args") {
                        let text = celeriac_protocol::result::saferepr_tuple(args, Some(1024), maxlevels);
                        info.insert("args".into(), Value::Str(text));
                    }
                    if let Some(Value::Map(kwargs)) = info.get("kwargs") {
                        let text = celeriac_protocol::result::saferepr_dict(kwargs, Some(1024), maxlevels);
                        info.insert("kwargs".into(), Value::Str(text));
                    }
                }
                Value::Map(info)
            })
            .collect(),
    )
}

/// A Python set's repr of ids (`{'a', 'b'}`, sorted; `set()` when empty).
fn python_set(ids: &[String]) -> String {
    if ids.is_empty() {
        return "set()".into();
    }
    let mut sorted: Vec<&String> = ids.iter().collect();
    sorted.sort();
    let inner: Vec<String> =
        sorted.iter().map(|id| celeriac_protocol::result::python_repr(&Value::Str((*id).clone()))).collect();
    format!("{{{}}}", inner.join(", "))
}

/// `Queue.as_dict(recurse=True)` of a queue on Celery's default direct exchange.
fn queue_dict(name: &str) -> Value {
    let mut exchange = Map::new();
    exchange.insert("name".into(), Value::Str(name.to_owned()));
    exchange.insert("type".into(), Value::Str("direct".into()));
    exchange.insert("arguments".into(), Value::Null);
    exchange.insert("durable".into(), Value::Bool(true));
    exchange.insert("passive".into(), Value::Bool(false));
    exchange.insert("auto_delete".into(), Value::Bool(false));
    exchange.insert("delivery_mode".into(), Value::Null);
    exchange.insert("no_declare".into(), Value::Bool(false));
    let mut m = Map::new();
    m.insert("name".into(), Value::Str(name.to_owned()));
    m.insert("exchange".into(), Value::Map(exchange));
    m.insert("routing_key".into(), Value::Str(name.to_owned()));
    for key in ["queue_arguments", "binding_arguments", "consumer_arguments"] {
        m.insert(key.into(), Value::Null);
    }
    m.insert("durable".into(), Value::Bool(true));
    m.insert("exclusive".into(), Value::Bool(false));
    m.insert("auto_delete".into(), Value::Bool(false));
    m.insert("no_ack".into(), Value::Bool(false));
    m.insert("alias".into(), Value::Null);
    m.insert("bindings".into(), Value::List(Vec::new()));
    m.insert("no_declare".into(), Value::Null);
    for key in ["expires", "message_ttl", "max_length", "max_length_bytes", "max_priority"] {
        m.insert(key.into(), Value::Null);
    }
    Value::Map(m)
}

/// `stats["broker"]` from the (masked) broker URL.
fn broker_info(url: &str) -> Map {
    let (scheme, rest) = url.split_once("://").unwrap_or(("memory", ""));
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let (hostport, vhost) = rest.split_once('/').unwrap_or((rest, "0"));
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h.to_owned(), p.parse::<i64>().map_or(Value::Null, Value::Int)),
        None => (hostport.to_owned(), Value::Null),
    };
    let mut m = Map::new();
    m.insert("hostname".into(), Value::Str(host));
    m.insert("userid".into(), Value::Null);
    m.insert("virtual_host".into(), Value::Str(if vhost.is_empty() { "0".into() } else { vhost.to_owned() }));
    m.insert("port".into(), port);
    m.insert("insist".into(), Value::Bool(false));
    m.insert("ssl".into(), Value::Bool(scheme == "rediss"));
    m.insert("transport".into(), Value::Str(if scheme.starts_with("redis") { "redis".into() } else { scheme.into() }));
    m.insert("connect_timeout".into(), Value::Int(4));
    m.insert("transport_options".into(), Value::Map(Map::new()));
    m.insert("login_method".into(), Value::Null);
    m.insert("uri_prefix".into(), Value::Null);
    m.insert("heartbeat".into(), Value::Float(120.0));
    m.insert("failover_strategy".into(), Value::Str("round-robin".into()));
    m.insert("alternates".into(), Value::List(Vec::new()));
    m.insert("credential_provider".into(), Value::Null);
    m
}

/// Resource usage like Python's `resource.getrusage` (Linux `/proc`).
fn rusage() -> Map {
    let ticks = 100.0; // USER_HZ on Linux
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let num = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let maxrss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(0);
    let mut m = Map::new();
    // After the `)` of the command name, utime and stime are fields 12 and 13.
    m.insert("utime".into(), Value::Float(num(11) / ticks));
    m.insert("stime".into(), Value::Float(num(12) / ticks));
    m.insert("maxrss".into(), Value::Int(maxrss));
    for key in ["ixrss", "idrss", "isrss", "minflt", "majflt", "nswap", "inblock", "oublock", "msgsnd", "msgrcv"] {
        m.insert(key.into(), Value::Int(0));
    }
    m.insert("nsignals".into(), Value::Int(0));
    m.insert("nvcsw".into(), Value::Int(0));
    m.insert("nivcsw".into(), Value::Int(0));
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One `query_task` request repeating an id 200,000 times (a few MB on
    /// the wire) answers that id once, and unknown ids not at all.
    #[tokio::test]
    async fn query_task_answers_each_id_once_however_often_it_is_asked() {
        use celeriac_broker::{Broker, MemoryBroker, Producer, ProducerConfig, SendOptions};
        let broker = Broker::Memory(MemoryBroker::default());
        broker.declare_queue("celery", "celery", "celery").await.unwrap();
        let producer = Producer::new(broker.clone(), ProducerConfig::default());
        let id = producer.send_task("tasks.add", Vec::new(), Map::new(), SendOptions::default()).await.unwrap();
        let mut consumer = broker.consumer(&["celery".to_owned()], 1);
        let delivery = consumer.next().await.unwrap().unwrap();
        let task = celeriac_protocol::TaskMessage::from_message(delivery.message()).unwrap();
        let state = Arc::new(WorkerState::new(None));
        state.received(&task, &delivery, "w@h");
        let mut ids = vec![id.clone(); 200_000];
        ids.extend(["", "nope", &"x".repeat(100_000)].map(String::from));
        let Value::Map(answer) = Pidbox::query_task(state, ids).await else { panic!("not a map") };
        assert_eq!(answer.keys().collect::<Vec<_>>(), [&id]);
        let Some(Value::List(entry)) = answer.get(&id) else { panic!("{answer:?}") };
        assert_eq!(entry[0], Value::Str("reserved".into()));
    }

    #[test]
    fn flags_are_true_as_in_python() {
        assert!(Value::Int(1).is_truthy(), "Flower's terminate=1");
        assert!(Value::Bool(true).is_truthy());
        for falsy in [Value::Int(0), Value::Bool(false), Value::Null, Value::Str(String::new())] {
            assert!(!falsy.is_truthy(), "{falsy:?}");
        }
    }

    #[test]
    fn revoked_ids_read_like_a_python_set() {
        assert_eq!(python_set(&["b".into(), "a".into()]), "{'a', 'b'}");
        assert_eq!(python_set(&[]), "set()");
    }

    #[test]
    fn broker_info_comes_from_the_masked_url() {
        let info = broker_info("redis://:**@127.0.0.1:6390/2");
        assert_eq!(info.get("hostname"), Some(&Value::Str("127.0.0.1".into())));
        assert_eq!(info.get("port"), Some(&Value::Int(6390)));
        assert_eq!(info.get("virtual_host"), Some(&Value::Str("2".into())));
        assert_eq!(info.get("transport"), Some(&Value::Str("redis".into())));
    }

    #[test]
    fn long_id_lists_are_shortened_in_logs() {
        let ids: Vec<String> = (0..100_000).map(|i| format!("id-{i}")).collect();
        let line = some_ids(&ids);
        assert!(line.ends_with("(and 99980 more)") && line.len() < 400, "{line}");
        assert_eq!(some_ids(&ids[..2]), "id-0, id-1");
    }

    #[tokio::test]
    async fn a_panicking_or_slow_command_ends_in_an_error_reply() {
        let panicked = guarded("stats", COMMAND_TIMEOUT, async {
            if std::hint::black_box(true) {
                panic!("boom");
            }
            Ok(1)
        })
        .await;
        assert_eq!(panicked, Err(CommandError::Panicked { method: "stats", message: "boom".into() }));
        let text = panicked.unwrap_err().reply_text();
        assert!(text.starts_with("RuntimeError('stats failed inside celeriac (boom)"), "{text}");
        let slow = guarded("revoke", Duration::from_millis(10), async {
            std::future::pending::<()>().await;
            Ok(1)
        })
        .await;
        assert_eq!(slow, Err(CommandError::TimedOut { method: "revoke", seconds: 0 }));
        assert_eq!(guarded("ping", COMMAND_TIMEOUT, async { Ok(7) }).await, Ok(7));
    }
}

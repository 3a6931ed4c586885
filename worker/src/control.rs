//! Remote control (Celery's pidbox): the worker listens on the `celery.pidbox`
//! fanout exchange, runs the commands addressed to it (`ping`, `stats`,
//! `active`, `revoke`, `rate_limit`, `add_consumer`, `shutdown`, ...) and
//! replies on `reply.celery.pidbox` with Python's reply shapes, so `celery
//! inspect`, `celery control` and Flower treat it like any Celery worker.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use celeriac_broker::{BrokerError, ExchangeKind, Subscription};
use celeriac_protocol::codec::ContentType;
use celeriac_protocol::result::{ResultMeta, State};
use celeriac_protocol::time::PyDateTime;
use celeriac_protocol::{Map, Message, Value};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::runtime::Shared;
use crate::state::Phase;

/// The request exchange (`<control_exchange>.pidbox`).
pub const PIDBOX_EXCHANGE: &str = "celery.pidbox";
/// The reply exchange.
pub const REPLY_EXCHANGE: &str = "reply.celery.pidbox";
/// Largest control message body read.
const MAX_BODY: usize = 1 << 20;
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
enum Reply {
    /// Reply with this value (when the caller asked for a reply).
    Value(Value),
    /// Send nothing (`shutdown`).
    None,
}

fn ok(text: impl Into<String>) -> Reply {
    Reply::Value(one("ok", Value::Str(text.into())))
}

fn nok(text: impl Into<String>) -> Reply {
    Reply::Value(one("error", Value::Str(text.into())))
}

fn one(key: &str, value: Value) -> Value {
    let mut m = Map::new();
    m.insert(key.into(), value);
    Value::Map(m)
}

fn count(n: impl TryInto<i64>) -> Value {
    Value::Int(n.try_into().unwrap_or(i64::MAX))
}

impl Pidbox {
    /// Subscribes to the control exchange; the worker is reachable once this
    /// returns.
    pub(crate) async fn subscribe(shared: Arc<Shared>) -> Result<Pidbox, BrokerError> {
        shared.broker.declare_exchange(PIDBOX_EXCHANGE, ExchangeKind::Fanout);
        shared.broker.declare_exchange(REPLY_EXCHANGE, ExchangeKind::Direct);
        let subscription = shared.broker.subscribe(PIDBOX_EXCHANGE, "").await?;
        Ok(Pidbox { shared, subscription })
    }

    /// Answers commands until `stop`; `shutdown` cancels `shutdown`.
    pub(crate) async fn serve(mut self, shutdown: CancellationToken, stop: CancellationToken) {
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                next = self.subscription.next() => next,
            };
            match next {
                Some(Ok(message)) => self.on_message(&message.envelope.message, &shutdown).await,
                Some(Err(e)) => warn!("remote control: {e}"),
                None => return,
            }
        }
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
        let body = match message.decode_body(MAX_BODY) {
            Ok(Value::Map(body)) => body,
            Ok(_) => return warn!("remote control: a request that is not a dict was ignored"),
            Err(e) => return warn!("remote control: cannot decode a request: {e}"),
        };
        if !self.addressed_to_us(&body) {
            return;
        }
        let method = body.get("method").and_then(Value::as_str).unwrap_or_default().to_owned();
        let empty = Map::new();
        let args = body.get("arguments").and_then(Value::as_map).unwrap_or(&empty);
        debug!(method, "remote control command");
        let reply = self.dispatch(&method, args, shutdown).await;
        let (Reply::Value(value), Some(ticket), Some(reply_to)) =
            (reply, body.get("ticket").and_then(Value::as_str), body.get("reply_to").and_then(Value::as_map))
        else {
            return;
        };
        let exchange = reply_to.get("exchange").and_then(Value::as_str).unwrap_or(REPLY_EXCHANGE);
        let routing_key = reply_to.get("routing_key").and_then(Value::as_str).unwrap_or_default();
        self.reply(exchange, routing_key, ticket, value).await;
    }

    /// `destination` (a list of node names), else `pattern` with `matcher`
    /// (`glob`; `pcre` is not supported and matches nothing), else everyone.
    fn addressed_to_us(&self, body: &Map) -> bool {
        let me = &self.shared.config.hostname;
        if let Some(Value::List(nodes)) = body.get("destination") {
            if !nodes.is_empty() {
                return nodes.iter().any(|n| n.as_str() == Some(me.as_str()));
            }
        }
        if let Some(pattern) = body.get("pattern").and_then(Value::as_str) {
            return match body.get("matcher").and_then(Value::as_str) {
                None | Some("glob") => glob_match(pattern, me),
                Some(other) => {
                    warn!("remote control: the {other:?} matcher is not supported; request ignored");
                    false
                }
            };
        }
        true
    }

    async fn reply(&self, exchange: &str, routing_key: &str, ticket: &str, value: Value) {
        let shared = &self.shared;
        // A client that gave up has removed its binding: drop the reply then,
        // as kombu does, rather than leave it in a queue nobody reads.
        match shared.broker.bound_queues(exchange, routing_key).await {
            Ok(queues) if queues.is_empty() => return debug!("remote control: the caller is gone; reply dropped"),
            Ok(_) => {}
            Err(e) => return warn!("remote control: cannot route a reply: {e}"),
        }
        let mut headers = Map::new();
        headers.insert("ticket".into(), Value::Str(ticket.to_owned()));
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

    async fn dispatch(&self, method: &str, args: &Map, shutdown: &CancellationToken) -> Reply {
        let shared = &self.shared;
        let arg_str = |k: &str| args.get(k).and_then(Value::as_str).map(str::to_owned);
        match method {
            "ping" => ok("pong"),
            "clock" => Reply::Value(one("clock", count(shared.events.clock().value()))),
            "hello" => self.hello(args),
            "stats" => Reply::Value(self.stats()),
            "active" => Reply::Value(infos(shared.state.active(), safe(args))),
            "reserved" => Reply::Value(infos(shared.state.reserved(), safe(args))),
            "scheduled" => Reply::Value(Value::List(
                shared
                    .state
                    .scheduled()
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
            "registered" | "dump_tasks" => Reply::Value(self.registered(args)),
            "active_queues" => Reply::Value(self.active_queues()),
            "revoked" | "dump_revoked" => {
                Reply::Value(Value::List(shared.state.revoked().ids().into_iter().map(Value::Str).collect()))
            }
            "query_task" => Reply::Value(self.query_task(args)),
            "conf" | "dump_conf" => Reply::Value(self.conf()),
            "report" => ok(self.report()),
            "revoke" => self.revoke(args, truthy(args.get("terminate"))).await,
            "terminate" => self.revoke(args, true).await,
            "rate_limit" => self.rate_limit(args),
            "time_limit" => self.time_limit(args),
            "add_consumer" => match arg_str("queue") {
                Some(queue) => self.add_consumer(&queue, args).await,
                None => nok("add_consumer needs a queue"),
            },
            "cancel_consumer" => match arg_str("queue") {
                Some(queue) => {
                    if let Some(c) = self.consumer() {
                        c.cancel_queue(&queue);
                    }
                    info!("Remote control: no longer consuming from {queue}");
                    ok(format!("no longer consuming from {queue}"))
                }
                None => nok("cancel_consumer needs a queue"),
            },
            "pool_grow" => {
                self.resize(to_usize(args.get("n")).unwrap_or(1) as i64);
                ok("pool will grow")
            }
            "pool_shrink" => {
                self.resize(-(to_usize(args.get("n")).unwrap_or(1) as i64));
                ok("pool will shrink")
            }
            "autoscale" => {
                let max = to_usize(args.get("max")).unwrap_or(shared.concurrency.load(Ordering::Relaxed));
                let min = to_usize(args.get("min")).unwrap_or(max);
                let now = shared.concurrency.load(Ordering::Relaxed) as i64;
                self.resize(max as i64 - now);
                ok(format!("autoscale now max={max} min={min}"))
            }
            "enable_events" => {
                if shared.events.set_task_events(true) {
                    ok("task events already enabled")
                } else {
                    info!("Events of group {{task}} enabled by remote.");
                    ok("task events enabled")
                }
            }
            "disable_events" => {
                if shared.events.set_task_events(false) {
                    info!("Events of group {{task}} disabled by remote.");
                    ok("task events disabled")
                } else {
                    ok("task events already disabled")
                }
            }
            "heartbeat" => {
                shared.events.manual_heartbeat().await;
                Reply::Value(Value::Null)
            }
            "election" => Reply::Value(Value::Null),
            // Python's answer when `worker_pool_restarts` is off; there is no
            // pool of processes to restart here.
            "pool_restart" => nok("ValueError('Pool restarts not enabled')"),
            "shutdown" => {
                warn!("Got shutdown from remote");
                shutdown.cancel();
                Reply::None
            }
            other => nok(format!("KeyError('{other}')")),
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
    fn hello(&self, args: &Map) -> Reply {
        if args.get("from_node").and_then(Value::as_str) == Some(self.shared.config.hostname.as_str()) {
            return Reply::Value(Value::Null);
        }
        let revoked = self.shared.state.revoked();
        let theirs: Vec<&str> = match args.get("revoked") {
            Some(Value::List(ids)) => ids.iter().filter_map(Value::as_str).collect(),
            Some(Value::Map(ids)) => ids.keys().map(String::as_str).collect(),
            _ => Vec::new(),
        };
        if !theirs.is_empty() {
            let from = args.get("from_node").and_then(Value::as_str).unwrap_or("?");
            info!("sync with {from}: {} revoked id(s)", theirs.len());
            revoked.add(theirs);
        }
        let mut m = Map::new();
        m.insert("revoked".into(), Value::List(revoked.ids().into_iter().map(Value::Str).collect()));
        m.insert("clock".into(), count(self.shared.events.clock().forward()));
        Reply::Value(Value::Map(m))
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
    /// the items a task has, as `str()` of Python's task attribute.
    fn registered(&self, args: &Map) -> Value {
        let mut items: Vec<String> = match args.get("taskinfoitems") {
            Some(Value::List(l)) => l.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            Some(Value::Str(one)) => vec![one.clone()],
            _ => Vec::new(),
        };
        items.retain(|i| !i.starts_with('_'));
        if items.is_empty() {
            items = ["exchange", "routing_key", "rate_limit"].map(String::from).to_vec();
        }
        let shared = &self.shared;
        let mut names: Vec<String> = shared
            .registry
            .tasks()
            .filter(|t| !t.name().starts_with("celery."))
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

    fn query_task(&self, args: &Map) -> Value {
        let ids: Vec<String> = match args.get("ids") {
            Some(Value::List(l)) => l.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            Some(Value::Str(id)) => vec![id.clone()],
            _ => Vec::new(),
        };
        let mut m = Map::new();
        for id in ids {
            if let Some((phase, info)) = self.shared.state.query(&id) {
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

    async fn revoke(&self, args: &Map, terminate: bool) -> Reply {
        let ids: Vec<String> = match args.get("task_id") {
            Some(Value::Str(id)) => vec![id.clone()],
            Some(Value::List(l)) => l.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            _ => return nok("revoke needs a task_id"),
        };
        let shared = &self.shared;
        shared.state.revoked().add(ids.iter().map(String::as_str));
        // Celery 5.6.2+ records REVOKED at once, but only over PENDING,
        // RECEIVED, RETRY or REJECTED (5.7): never over a result, nor over a
        // task started here or elsewhere, which ends as it ends.
        if let Some(results) = &shared.services.results {
            for id in &ids {
                let running = matches!(shared.state.query(id), Some((Phase::Active { .. }, _)));
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
                if !running && overwritable {
                    let meta = ResultMeta::revoked(id, "revoked", PyDateTime::now_utc());
                    if let Err(e) = results.store(Arc::new(meta)).await {
                        warn!("could not store REVOKED for {id}: {e}");
                    }
                }
            }
        }
        let listed = python_set(&ids);
        info!("Tasks flagged as revoked: {}", ids.join(", "));
        if terminate {
            let signum = signal_number(args.get("signal"));
            let terminated: Vec<String> = ids.iter().filter(|id| shared.state.terminate(id, signum)).cloned().collect();
            if terminated.is_empty() {
                return ok("terminate: tasks unknown");
            }
            return ok(format!("terminate: {}", terminated.join(", ")));
        }
        ok(format!("tasks {listed} flagged as revoked"))
    }

    fn rate_limit(&self, args: &Map) -> Reply {
        let Some(task) = args.get("task_name").and_then(Value::as_str) else { return nok("unknown task") };
        if self.shared.registry.get(task).is_none() {
            return nok("unknown task");
        }
        let text = match args.get("rate_limit") {
            Some(Value::Str(s)) => s.clone(),
            Some(Value::Int(n)) => n.to_string(),
            Some(Value::Float(f)) => f.to_string(),
            _ => String::new(),
        };
        if text.is_empty() || text == "0" {
            self.shared.rate_limits.set(task, None);
            return ok("rate limit disabled successfully");
        }
        match celeriac_config::parse_rate_limit(&text) {
            Ok(rate) => {
                self.shared.rate_limits.set(task, rate);
                info!("New rate limit for tasks of type {task}: {text}.");
                ok("new rate limit set successfully")
            }
            Err(e) => nok(format!("Invalid rate limit string: {e}")),
        }
    }

    fn time_limit(&self, args: &Map) -> Reply {
        let Some(task) = args.get("task_name").and_then(Value::as_str) else { return nok("unknown task") };
        if self.shared.registry.get(task).is_none() {
            return nok("unknown task");
        }
        // None or 0 is no limit (as Python's falsy limit): the task's own applies.
        let hard = args.get("hard").and_then(Value::as_f64).filter(|s| *s > 0.0);
        let soft = args.get("soft").and_then(Value::as_f64).filter(|s| *s > 0.0);
        if let Ok(mut limits) = self.shared.time_limits.lock() {
            limits.insert(task.to_owned(), (hard, soft));
        }
        info!("New time limits for tasks of type {task}: soft={soft:?} hard={hard:?}");
        ok("time limits set successfully")
    }

    async fn add_consumer(&self, queue: &str, args: &Map) -> Reply {
        let Some(consumer) = self.consumer() else { return nok("the worker is not consuming yet") };
        if consumer.queues().iter().any(|q| q == queue) {
            return ok(format!("already consuming from {queue}"));
        }
        let exchange = args.get("exchange").and_then(Value::as_str).unwrap_or(queue);
        let routing_key = args.get("routing_key").and_then(Value::as_str).unwrap_or(queue);
        if let Err(e) = self.shared.broker.declare_queue(queue, exchange, routing_key).await {
            return nok(format!("cannot declare {queue}: {e}"));
        }
        consumer.add_queue(queue);
        info!("Remote control: started consuming from {queue}");
        ok(format!("add consumer {queue}"))
    }

    /// Grows (`delta > 0`) or shrinks the pool, and the prefetch window with it.
    fn resize(&self, delta: i64) {
        let shared = &self.shared;
        let now = shared.concurrency.load(Ordering::Relaxed) as i64;
        let target = (now + delta).max(1);
        let change = target - now;
        if change > 0 {
            shared.permits.add_permits(change as usize);
        } else if change < 0 {
            // Slots in use are taken away as they free up.
            let permits = shared.permits.clone();
            let n = change.unsigned_abs() as u32;
            tokio::spawn(async move {
                if let Ok(p) = permits.acquire_many_owned(n).await {
                    p.forget();
                }
            });
        }
        shared.concurrency.store(target as usize, Ordering::Relaxed);
        if let Some(c) = self.consumer() {
            let multiplier = shared.config.prefetch_multiplier;
            if multiplier > 0 && c.prefetch() > 0 {
                let prefetch = (c.prefetch() as i64 + change * multiplier as i64).max(1);
                c.set_prefetch(prefetch as usize);
            }
        }
        info!("Pool resized to {target}");
    }
}

/// A signal named as `celery control revoke --signal` sends it (`SIGKILL`,
/// `KILL`, `9`); SIGTERM when absent or unknown.
fn signal_number(v: Option<&Value>) -> i64 {
    let name = match v {
        Some(Value::Int(n)) => return *n,
        Some(Value::Str(s)) => s.trim().to_ascii_uppercase(),
        _ => return 15,
    };
    if let Ok(n) = name.parse::<i64>() {
        return n;
    }
    match name.strip_prefix("SIG").unwrap_or(&name) {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "KILL" => 9,
        "USR1" => 10,
        "USR2" => 12,
        _ => 15,
    }
}

fn safe(args: &Map) -> bool {
    truthy(args.get("safe"))
}

/// Python's truth of an argument: Flower sends `terminate=1` (its
/// `strtobool` gives an int), Celery's client `True`.
fn truthy(v: Option<&Value>) -> bool {
    v.is_some_and(Value::is_truthy)
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

fn to_usize(v: Option<&Value>) -> Option<usize> {
    v.and_then(Value::as_i64).and_then(|n| usize::try_from(n).ok())
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

/// A Python set's repr of ids (`{'a', 'b'}`), sorted.
fn python_set(ids: &[String]) -> String {
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

/// Shell-style `*` and `?` matching, as kombu's `glob` matcher.
fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some('?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    go(&p, &n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_node_names() {
        assert!(glob_match("celeriac@*", "celeriac@vm"));
        assert!(glob_match("w?@vm", "w1@vm"));
        assert!(!glob_match("py@*", "celeriac@vm"));
    }

    #[test]
    fn flags_are_true_as_in_python() {
        assert!(truthy(Some(&Value::Int(1))), "Flower's terminate=1");
        assert!(truthy(Some(&Value::Bool(true))));
        for falsy in [Value::Int(0), Value::Bool(false), Value::Null, Value::Str(String::new())] {
            assert!(!truthy(Some(&falsy)), "{falsy:?}");
        }
        assert!(!truthy(None));
    }

    #[test]
    fn revoked_ids_read_like_a_python_set() {
        assert_eq!(python_set(&["b".into(), "a".into()]), "{'a', 'b'}");
    }

    #[test]
    fn broker_info_comes_from_the_masked_url() {
        let info = broker_info("redis://:**@127.0.0.1:6390/2");
        assert_eq!(info.get("hostname"), Some(&Value::Str("127.0.0.1".into())));
        assert_eq!(info.get("port"), Some(&Value::Int(6390)));
        assert_eq!(info.get("virtual_host"), Some(&Value::Str("2".into())));
        assert_eq!(info.get("transport"), Some(&Value::Str("redis".into())));
    }
}

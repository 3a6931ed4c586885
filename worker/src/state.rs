//! What the worker holds right now, for remote control and events: every
//! request it received and has not finished (reserved, scheduled by ETA, or
//! active), counts of what it processed, and the revoked ids it shares with
//! other workers (optionally kept across restarts in a state file).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use celeriac_broker::Delivery;
use celeriac_protocol::event::now_timestamp;
use celeriac_protocol::{Map, TaskMessage, Value};
use tokio_util::sync::CancellationToken;

/// Where a request is in its life.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// Prefetched, waiting for a slot (or its rate limit).
    Reserved,
    /// Waiting for its ETA (`eta` as ISO text).
    Scheduled {
        /// When it is due.
        eta: String,
        /// The message priority.
        priority: u8,
    },
    /// Running since `time_start` (epoch seconds).
    Active {
        /// When it started.
        time_start: f64,
        /// Whether its message was acknowledged (early acks).
        acknowledged: bool,
    },
}

/// One request the worker holds.
#[derive(Debug, Clone)]
struct Tracked {
    info: Map,
    phase: Phase,
    terminate: CancellationToken,
    /// The signal a `revoke --terminate` named (15 for SIGTERM).
    signum: Option<i64>,
}

/// The worker's live state (see the module docs). Cheap to share in an `Arc`.
#[derive(Debug)]
pub struct WorkerState {
    /// By id, oldest first: a retry is received under the same id before the
    /// run that sent it has finished.
    requests: Mutex<HashMap<String, Vec<Tracked>>>,
    totals: Mutex<BTreeMap<String, u64>>,
    processed: AtomicU64,
    started: Instant,
    revoked: Revoked,
}

impl WorkerState {
    /// An empty state; revoked ids come from `statedb` if given and readable.
    pub fn new(statedb: Option<PathBuf>) -> WorkerState {
        WorkerState {
            requests: Mutex::default(),
            totals: Mutex::default(),
            processed: AtomicU64::new(0),
            started: Instant::now(),
            revoked: Revoked::load(statedb),
        }
    }

    /// Records a received request; returns the token that terminates it.
    pub fn received(&self, task: &TaskMessage, delivery: &Delivery, hostname: &str) -> CancellationToken {
        let terminate = CancellationToken::new();
        let info = request_info(task, delivery, hostname);
        let tracked = Tracked { info, phase: Phase::Reserved, terminate, signum: None };
        let token = tracked.terminate.clone();
        if let Ok(mut r) = self.requests.lock() {
            r.entry(task.headers.id.clone()).or_default().push(tracked);
        }
        token
    }

    /// Moves a request (the latest received under `id`) to `phase`. A request that becomes active is counted
    /// as processed there and then, as Celery's `task_accepted` counts it (so
    /// `stats["total"]` and the heartbeat's `processed` include running tasks).
    pub fn set_phase(&self, id: &str, phase: Phase) {
        let mut accepted = None;
        if let Ok(mut r) = self.requests.lock() {
            if let Some(t) = r.get_mut(id).and_then(|held| held.last_mut()) {
                if let Phase::Active { time_start, acknowledged } = &phase {
                    t.info.insert("time_start".into(), Value::Float(*time_start));
                    t.info.insert("acknowledged".into(), Value::Bool(*acknowledged));
                    t.info.insert("worker_pid".into(), Value::Int(i64::from(std::process::id())));
                    if !matches!(t.phase, Phase::Active { .. }) {
                        accepted = t.info.get("name").and_then(Value::as_str).map(str::to_owned);
                    }
                }
                t.phase = phase;
            }
        }
        if let Some(name) = accepted {
            self.processed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut t) = self.totals.lock() {
                *t.entry(name).or_default() += 1;
            }
        }
    }

    /// Forgets a finished request, the oldest received under `id` (it was
    /// counted when it became active; `_name` and `_ran` are kept for the callers).
    pub fn finished(&self, id: &str, _name: &str, _ran: bool) {
        if let Ok(mut r) = self.requests.lock() {
            if let Some(held) = r.get_mut(id) {
                if !held.is_empty() {
                    held.remove(0);
                }
                if held.is_empty() {
                    r.remove(id);
                }
            }
        }
    }

    /// Tasks accepted for execution (started) since start.
    pub fn processed(&self) -> u64 {
        self.processed.load(Ordering::Relaxed)
    }

    /// Executions by task name (`stats["total"]`).
    pub fn totals(&self) -> BTreeMap<String, u64> {
        self.totals.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Seconds since the worker started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// `Request.info()` of the requests in phases matching `which`.
    fn infos(&self, which: impl Fn(&Phase) -> bool) -> Vec<(Phase, Map)> {
        let Ok(r) = self.requests.lock() else { return Vec::new() };
        let mut out: Vec<(Phase, Map)> =
            r.values().flatten().filter(|t| which(&t.phase)).map(|t| (t.phase.clone(), t.info.clone())).collect();
        out.sort_by(|a, b| a.1.get("id").map(Value::as_str).cmp(&b.1.get("id").map(Value::as_str)));
        out
    }

    /// Running requests (`inspect active`).
    pub fn active(&self) -> Vec<Map> {
        self.infos(|p| matches!(p, Phase::Active { .. })).into_iter().map(|(_, i)| i).collect()
    }

    /// Prefetched requests not started, ETA ones excluded (`inspect reserved`).
    pub fn reserved(&self) -> Vec<Map> {
        self.infos(|p| matches!(p, Phase::Reserved)).into_iter().map(|(_, i)| i).collect()
    }

    /// Requests waiting for their ETA, with it (`inspect scheduled`).
    pub fn scheduled(&self) -> Vec<(String, u8, Map)> {
        self.infos(|p| matches!(p, Phase::Scheduled { .. }))
            .into_iter()
            .filter_map(|(p, i)| match p {
                Phase::Scheduled { eta, priority } => Some((eta, priority, i)),
                _ => None,
            })
            .collect()
    }

    /// Number of running requests.
    pub fn active_count(&self) -> usize {
        self.infos(|p| matches!(p, Phase::Active { .. })).len()
    }

    /// The phase and info of `id`, if the worker holds it (`query_task`):
    /// its running request if one is, else the latest received.
    pub fn query(&self, id: &str) -> Option<(Phase, Map)> {
        let r = self.requests.lock().ok()?;
        let held = r.get(id)?;
        let running = held.iter().find(|t| matches!(t.phase, Phase::Active { .. }));
        running.or(held.last()).map(|t| (t.phase.clone(), t.info.clone()))
    }

    /// Terminates `id` if it is running, recording `signum` for its
    /// `task-revoked` event; returns whether it was running.
    pub fn terminate(&self, id: &str, signum: i64) -> bool {
        let Ok(mut r) = self.requests.lock() else { return false };
        let mut running = false;
        for t in r.get_mut(id).into_iter().flatten().filter(|t| matches!(t.phase, Phase::Active { .. })) {
            t.signum = Some(signum);
            t.terminate.cancel();
            running = true;
        }
        running
    }

    /// The signal `id` was terminated with, if it was.
    pub fn termination_signal(&self, id: &str) -> Option<i64> {
        let r = self.requests.lock().ok()?;
        r.get(id).into_iter().flatten().find_map(|t| t.signum)
    }

    /// The revoked ids.
    pub fn revoked(&self) -> &Revoked {
        &self.revoked
    }
}

/// `Request.info()`: what `inspect active/reserved/scheduled` show of a request.
fn request_info(task: &TaskMessage, delivery: &Delivery, hostname: &str) -> Map {
    let h = &task.headers;
    let mut m = Map::new();
    m.insert("id".into(), Value::Str(h.id.clone()));
    m.insert("name".into(), Value::Str(h.task.clone()));
    m.insert("args".into(), Value::List(task.args.clone()));
    m.insert("kwargs".into(), Value::Map(task.kwargs.clone()));
    m.insert("type".into(), Value::Str(h.task.clone()));
    m.insert("hostname".into(), Value::Str(hostname.to_owned()));
    m.insert("time_start".into(), Value::Null);
    m.insert("acknowledged".into(), Value::Bool(false));
    let mut info = Map::new();
    info.insert("exchange".into(), Value::Str(delivery.envelope.delivery_info.exchange.clone()));
    info.insert("routing_key".into(), Value::Str(delivery.envelope.delivery_info.routing_key.clone()));
    info.insert("priority".into(), Value::Int(i64::from(delivery.message().priority)));
    info.insert("redelivered".into(), Value::Bool(delivery.redelivered()));
    m.insert("delivery_info".into(), Value::Map(info));
    // Python's `Request.worker_pid` is set when the pool runs it.
    m.insert("worker_pid".into(), Value::Null);
    m
}

/// How long a revoked id is remembered, and how many (Celery's
/// `REVOKES_MAX`/`REVOKE_EXPIRES`).
const REVOKE_EXPIRES: f64 = 10_800.0;
const REVOKES_MAX: usize = 50_000;

/// Revoked task ids with when they were revoked, shared with every worker
/// that receives the `revoke` broadcast (and with Python workers through
/// mingle's `hello`); kept in a JSON state file when one is given.
#[derive(Debug)]
pub struct Revoked {
    ids: Mutex<HashMap<String, f64>>,
    file: Option<PathBuf>,
}

impl Revoked {
    fn load(file: Option<PathBuf>) -> Revoked {
        let mut ids = HashMap::new();
        if let Some(path) = &file {
            match std::fs::read(path) {
                Ok(bytes) => match celeriac_protocol::json::from_slice(&bytes) {
                    Ok(Value::Map(m)) => {
                        if let Some(Value::Map(revoked)) = m.get("revoked") {
                            for (id, at) in revoked {
                                ids.insert(id.clone(), at.as_f64().unwrap_or_else(now_timestamp));
                            }
                        }
                    }
                    _ => tracing::warn!("ignoring the unreadable state file {}", path.display()),
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("cannot read the state file {}: {e}", path.display()),
            }
        }
        let revoked = Revoked { ids: Mutex::new(ids), file };
        revoked.purge();
        revoked
    }

    /// Whether `id` is revoked.
    pub fn contains(&self, id: &str) -> bool {
        self.ids.lock().map(|ids| ids.contains_key(id)).unwrap_or(false)
    }

    /// Revokes `ids` (now), saving the state file.
    pub fn add<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        self.merge(ids.into_iter().map(|id| (id.to_owned(), now_timestamp())));
    }

    /// Merges ids with their revocation times (from another worker's `hello`).
    pub fn merge(&self, entries: impl IntoIterator<Item = (String, f64)>) {
        if let Ok(mut ids) = self.ids.lock() {
            for (id, at) in entries {
                ids.insert(id, at);
            }
        }
        self.purge();
        self.save();
    }

    /// The ids, oldest first.
    pub fn ids(&self) -> Vec<String> {
        self.entries().into_iter().map(|(id, _)| id).collect()
    }

    /// The ids with their times, oldest first.
    pub fn entries(&self) -> Vec<(String, f64)> {
        let Ok(ids) = self.ids.lock() else { return Vec::new() };
        let mut v: Vec<(String, f64)> = ids.iter().map(|(k, t)| (k.clone(), *t)).collect();
        v.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        v
    }

    fn purge(&self) {
        let Ok(mut ids) = self.ids.lock() else { return };
        let horizon = now_timestamp() - REVOKE_EXPIRES;
        ids.retain(|_, at| *at >= horizon);
        if ids.len() > REVOKES_MAX {
            let mut by_age: Vec<(String, f64)> = ids.iter().map(|(k, t)| (k.clone(), *t)).collect();
            by_age.sort_by(|a, b| a.1.total_cmp(&b.1));
            for (id, _) in by_age.into_iter().take(ids.len() - REVOKES_MAX) {
                ids.remove(&id);
            }
        }
    }

    /// Writes the state file atomically (a temporary file renamed over it).
    fn save(&self) {
        let Some(path) = &self.file else { return };
        let mut revoked = Map::new();
        for (id, at) in self.entries() {
            revoked.insert(id, Value::Float(at));
        }
        let mut doc = Map::new();
        doc.insert("revoked".into(), Value::Map(revoked));
        let Ok(text) = celeriac_protocol::json::to_string(&Value::Map(doc)) else { return };
        let tmp = path.with_extension("tmp");
        let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::warn!("cannot write the state file {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoked_ids_survive_a_restart_through_the_state_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.state");
        let state = WorkerState::new(Some(path.clone()));
        state.revoked().add(["a", "b"]);
        assert!(state.revoked().contains("a"));
        let again = WorkerState::new(Some(path));
        assert_eq!(again.revoked().ids(), ["a", "b"]);
        assert!(!again.revoked().contains("c"));
    }

    #[tokio::test]
    async fn a_request_counts_as_processed_when_it_starts() {
        use celeriac_broker::{Broker, MemoryBroker, Producer, ProducerConfig, SendOptions};
        let broker = Broker::Memory(MemoryBroker::default());
        broker.declare_queue("celery", "celery", "celery").await.unwrap();
        let producer = Producer::new(broker.clone(), ProducerConfig::default());
        let id = producer.send_task("tasks.add", Vec::new(), Map::new(), SendOptions::default()).await.unwrap();
        let mut consumer = broker.consumer(&["celery".to_owned()], 1);
        let mut delivery = consumer.next().await.unwrap().unwrap();
        let task = TaskMessage::from_message(delivery.message()).unwrap();

        let state = WorkerState::new(None);
        state.received(&task, &delivery, "w@h");
        assert_eq!((state.processed(), state.totals().len()), (0, 0), "a reserved request is not processed");
        assert_eq!(state.reserved().len(), 1);
        assert_eq!(state.reserved()[0].get("worker_pid"), Some(&Value::Null), "no process runs it yet");
        let active = Phase::Active { time_start: 1.0, acknowledged: true };
        state.set_phase(&id, active.clone());
        state.set_phase(&id, active);
        assert_eq!(state.processed(), 1, "counted once, when it became active");
        assert_eq!(state.totals().get("tasks.add"), Some(&1));
        assert_eq!((state.active_count(), state.reserved().len()), (1, 0));
        assert_eq!(state.active()[0].get("worker_pid"), Some(&Value::Int(i64::from(std::process::id()))));
        // Its retry arrives (same id) before this run is done with it.
        state.received(&task, &delivery, "w@h");
        state.finished(&id, "tasks.add", true);
        assert_eq!((state.active_count(), state.reserved().len()), (0, 1), "the retry is still held");
        state.set_phase(&id, Phase::Active { time_start: 2.0, acknowledged: true });
        assert_eq!(state.processed(), 2, "the retry's run counts too");
        assert!(state.terminate(&id, 15), "the retry can be terminated");
        state.finished(&id, "tasks.add", true);
        assert_eq!((state.processed(), state.active_count(), state.query(&id)), (2, 0, None));
        delivery.ack().await.unwrap();
    }

    #[test]
    fn old_revocations_expire() {
        let state = WorkerState::new(None);
        state.revoked().merge([("old".to_owned(), now_timestamp() - REVOKE_EXPIRES - 10.0)]);
        state.revoked().add(["new"]);
        assert_eq!(state.revoked().ids(), ["new"]);
    }
}

//! What the worker holds right now, for remote control and events: every
//! request it received and has not finished (reserved, scheduled by ETA, or
//! active), counts of what it processed, and the revoked ids it shares with
//! other workers (optionally kept across restarts in a state file).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use celeriac_broker::Delivery;
use celeriac_protocol::event::now_timestamp;
use celeriac_protocol::limits::DecodeLimits;
use celeriac_protocol::{Envelope, Map, TaskMessage, Value};
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

/// A request's `Request.info()`: a map while it is reserved or running; while
/// it waits for its ETA (for hours, perhaps, and by the ten thousand), where
/// only `inspect scheduled` reads it, it is rebuilt from the held message
/// itself (shared with the ETA timer, not copied), or kept as packed JSON
/// text when that message is not at hand.
#[derive(Debug, Clone)]
enum Info {
    /// Boxed: a held ETA task's entry should not carry a map's room.
    Map(Box<Map>),
    /// Shared, so `inspect` copies it out of the lock for the price of a count.
    Packed(Arc<str>),
    /// The envelope's kombu JSON text; the info is rebuilt from it on demand.
    Message(Arc<str>),
}

impl Info {
    /// Packs the map, unless its JSON would not read back the same (bytes,
    /// NaN, nesting beyond the JSON reader's bounds): that one stays a map.
    fn pack(&mut self) {
        let Info::Map(map) = self else { return };
        let mut text = String::new();
        if celeriac_protocol::json::write_map(&mut text, map).is_err() {
            return;
        }
        if matches!(celeriac_protocol::json::from_str(&text), Ok(Value::Map(back)) if back == **map) {
            *self = Info::Packed(Arc::from(text));
        }
    }

    /// The map, unpacked first if need be.
    fn map_mut(&mut self, hostname: &str, limits: &DecodeLimits) -> &mut Map {
        if !matches!(self, Info::Map(_)) {
            *self = Info::Map(Box::new(self.to_map(hostname, limits)));
        }
        match self {
            Info::Map(map) => map,
            // Not reached: unpacked above.
            Info::Packed(_) | Info::Message(_) => {
                *self = Info::Map(Box::default());
                self.map_mut(hostname, limits)
            }
        }
    }

    /// A copy of the map.
    fn to_map(&self, hostname: &str, limits: &DecodeLimits) -> Map {
        match self {
            Info::Map(map) => map.as_ref().clone(),
            Info::Packed(text) => match celeriac_protocol::json::from_str(text) {
                Ok(Value::Map(map)) => map,
                // `pack` read it back before keeping it.
                _ => Map::new(),
            },
            // `parked` rebuilt it before keeping it.
            Info::Message(envelope) => rebuild_info(envelope, hostname, limits).unwrap_or_else(|| {
                tracing::warn!("the request info of a held ETA task did not read back from its message");
                Map::new()
            }),
        }
    }
}

/// `Request.info()` read again from a held message's kombu JSON text.
/// Decoded within the worker's own limits, which admitted it.
fn rebuild_info(envelope: &str, hostname: &str, limits: &DecodeLimits) -> Option<Map> {
    let envelope = celeriac_protocol::Envelope::from_slice(envelope.as_bytes()).ok()?;
    let task = TaskMessage::from_message_with(&envelope.message, limits).ok()?;
    Some(request_info(&task, &envelope, hostname))
}

/// One request the worker holds.
#[derive(Debug, Clone)]
struct Tracked {
    info: Info,
    /// The request's stamps (`stamps` header), for `revoke_by_stamped_headers`;
    /// `None` when it has none (most requests).
    stamps: Option<Box<Map>>,
    phase: Phase,
    /// Made when the request is received, dropped while the ETA timer holds
    /// it (nothing terminates a task that is not running) and made again
    /// when it is due.
    terminate: Option<CancellationToken>,
    /// The signal a `revoke --terminate` named (15 for SIGTERM).
    signum: Option<i64>,
}

/// The worker's live state (see the module docs). Cheap to share in an `Arc`.
#[derive(Debug)]
pub struct WorkerState {
    /// By id, oldest first: a retry is received under the same id before the
    /// run that sent it has finished.
    requests: Mutex<HashMap<Box<str>, Vec<Tracked>>>,
    totals: Mutex<BTreeMap<String, u64>>,
    processed: AtomicU64,
    started: Instant,
    revoked: Revoked,
    revoked_stamps: RevokedStamps,
    /// The worker's name, for the `hostname` of rebuilt request info (set
    /// by the first request received).
    hostname: OnceLock<Box<str>>,
    /// The worker's decoding limits, for rebuilt request info (set by the
    /// first request parked).
    limits: OnceLock<DecodeLimits>,
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
            revoked_stamps: RevokedStamps::default(),
            hostname: OnceLock::new(),
            limits: OnceLock::new(),
        }
    }

    /// Records a received request; returns the token that terminates it.
    pub fn received(&self, task: &TaskMessage, delivery: &Delivery, hostname: &str) -> CancellationToken {
        self.hostname.get_or_init(|| hostname.into());
        let terminate = CancellationToken::new();
        let info = request_info(task, &delivery.envelope, hostname);
        let stamps = &task.headers.stamps;
        let tracked = Tracked {
            info: Info::Map(Box::new(info)),
            stamps: (!stamps.is_empty()).then(|| Box::new(stamps.clone())),
            phase: Phase::Reserved,
            terminate: Some(terminate.clone()),
            signum: None,
        };
        // Almost always the only request under its id: room for one.
        lock(&self.requests)
            .entry(task.headers.id.as_str().into())
            .or_insert_with(|| Vec::with_capacity(1))
            .push(tracked);
        terminate
    }

    /// Moves a request (the latest received under `id`) to `phase`. A request that becomes active is counted
    /// as processed there and then, as Celery's `task_accepted` counts it (so
    /// `stats["total"]` and the heartbeat's `processed` include running tasks).
    pub fn set_phase(&self, id: &str, phase: Phase) {
        let mut accepted = None;
        let (hostname, limits) = (self.hostname(), self.limits());
        {
            let mut r = lock(&self.requests);
            if let Some(t) = r.get_mut(id).and_then(|held| held.last_mut()) {
                if let Phase::Active { time_start, acknowledged } = &phase {
                    let info = t.info.map_mut(hostname, limits);
                    info.insert("time_start".into(), Value::Float(*time_start));
                    info.insert("acknowledged".into(), Value::Bool(*acknowledged));
                    info.insert("worker_pid".into(), Value::Int(i64::from(std::process::id())));
                    if !matches!(t.phase, Phase::Active { .. }) {
                        accepted = info.get("name").and_then(Value::as_str).map(str::to_owned);
                    }
                }
                // A scheduled one's is packed or shared once the timer holds
                // its message (`parked`).
                if !matches!(phase, Phase::Scheduled { .. }) {
                    t.info.map_mut(hostname, limits);
                }
                t.phase = phase;
            }
        }
        if let Some(name) = accepted {
            self.processed.fetch_add(1, Ordering::Relaxed);
            *lock(&self.totals).entry(name).or_default() += 1;
        }
    }

    /// A scheduled request (the latest scheduled under `id`) is now held by
    /// the ETA timer as `envelope` (its kombu JSON text, `None` if the timer
    /// keeps it parsed): its info is rebuilt from that text from now on
    /// instead of being kept twice, or packed when there is no text; its
    /// terminate token is dropped until it is due.
    ///
    /// The text is kept only if the info rebuilt from it (within `limits`,
    /// the worker's, which admitted it) is the map held now, as it is for a
    /// request just received: one parse per held task, done outside the
    /// state's lock, that makes every later rebuild exact.
    pub(crate) fn parked(&self, id: &str, envelope: Option<Arc<str>>, limits: &DecodeLimits) {
        let limits = self.limits.get_or_init(|| limits.clone());
        let rebuilt = envelope.as_deref().and_then(|text| rebuild_info(text, self.hostname(), limits));
        let mut r = lock(&self.requests);
        let Some(t) = r.get_mut(id).and_then(|held| latest_scheduled(held)) else { return };
        t.terminate = None;
        match (envelope, rebuilt) {
            (Some(text), Some(rebuilt)) if matches!(&t.info, Info::Map(map) if **map == rebuilt) => {
                t.info = Info::Message(text);
            }
            _ => t.info.pack(),
        }
    }

    /// A held request (the latest scheduled under `id`) is due: reserved
    /// again with `info` (built by the caller from the message it has
    /// parsed anyway, outside the lock); returns its terminate token, made
    /// again. A fresh token if the request is no longer held.
    pub(crate) fn due(&self, id: &str, task: &TaskMessage, delivery: &Delivery) -> CancellationToken {
        let info = request_info(task, &delivery.envelope, self.hostname());
        let mut r = lock(&self.requests);
        let Some(t) = r.get_mut(id).and_then(|held| latest_scheduled(held)) else {
            return CancellationToken::new();
        };
        t.phase = Phase::Reserved;
        t.info = Info::Map(Box::new(info));
        t.terminate.get_or_insert_with(CancellationToken::new).clone()
    }

    /// Whether a request under `id` is running (no info copied or rebuilt).
    pub fn is_active(&self, id: &str) -> bool {
        lock(&self.requests).get(id).is_some_and(|held| held.iter().any(|t| matches!(t.phase, Phase::Active { .. })))
    }

    fn limits(&self) -> &DecodeLimits {
        self.limits.get_or_init(DecodeLimits::any_content)
    }

    fn hostname(&self) -> &str {
        self.hostname.get().map_or("", |h| h)
    }

    /// Forgets a finished request, the oldest received under `id` (it was
    /// counted when it became active; `_name` and `_ran` are kept for the callers).
    pub fn finished(&self, id: &str, _name: &str, _ran: bool) {
        let mut r = lock(&self.requests);
        if let Some(held) = r.get_mut(id) {
            if !held.is_empty() {
                held.remove(0);
            }
            if held.is_empty() {
                r.remove(id);
            }
        }
    }

    /// Tasks accepted for execution (started) since start.
    pub fn processed(&self) -> u64 {
        self.processed.load(Ordering::Relaxed)
    }

    /// Executions by task name (`stats["total"]`).
    pub fn totals(&self) -> BTreeMap<String, u64> {
        lock(&self.totals).clone()
    }

    /// Seconds since the worker started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// `Request.info()` of the requests in phases matching `which`.
    /// The infos are copied under the lock and unpacked after it.
    fn infos(&self, which: impl Fn(&Phase) -> bool) -> Vec<(Phase, Map)> {
        let held: Vec<(Phase, Info)> = {
            let r = lock(&self.requests);
            r.values().flatten().filter(|t| which(&t.phase)).map(|t| (t.phase.clone(), t.info.clone())).collect()
        };
        let (hostname, limits) = (self.hostname(), self.limits());
        let mut out: Vec<(Phase, Map)> = held.into_iter().map(|(p, info)| (p, info.to_map(hostname, limits))).collect();
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
        lock(&self.requests).values().flatten().filter(|t| matches!(t.phase, Phase::Active { .. })).count()
    }

    /// Number of requests reserved and not started (without copying their
    /// info, as [`WorkerState::reserved`] does).
    pub fn reserved_count(&self) -> usize {
        lock(&self.requests).values().flatten().filter(|t| matches!(t.phase, Phase::Reserved)).count()
    }

    /// The phase and info of `id`, if the worker holds it (`query_task`):
    /// its running request if one is, else the latest received.
    pub fn query(&self, id: &str) -> Option<(Phase, Map)> {
        let (phase, info) = {
            let r = lock(&self.requests);
            let held = r.get(id)?;
            let running = held.iter().find(|t| matches!(t.phase, Phase::Active { .. }));
            running.or(held.last()).map(|t| (t.phase.clone(), t.info.clone()))?
        };
        Some((phase, info.to_map(self.hostname(), self.limits())))
    }

    /// Terminates `id` if it is running, recording `signum` for its
    /// `task-revoked` event; returns whether it was running.
    pub fn terminate(&self, id: &str, signum: i64) -> bool {
        let mut r = lock(&self.requests);
        let mut running = false;
        for t in r.get_mut(id).into_iter().flatten().filter(|t| matches!(t.phase, Phase::Active { .. })) {
            t.signum = Some(signum);
            if let Some(token) = &t.terminate {
                token.cancel();
            }
            running = true;
        }
        running
    }

    /// Terminates every running request with a stamp among `headers`
    /// (`revoke_by_stamped_headers` with `terminate`); returns, by header,
    /// the stamp values that matched.
    pub fn terminate_stamped(&self, headers: &[(String, Vec<Value>)], signum: i64) -> Vec<(String, Vec<Value>)> {
        let wanted: HashMap<&str, HashSet<String>> =
            headers.iter().map(|(h, vs)| (h.as_str(), vs.iter().map(stamp_key).collect())).collect();
        let mut matched: Vec<(String, Vec<Value>)> = Vec::new();
        let mut seen: HashMap<String, (usize, HashSet<String>)> = HashMap::new();
        let mut r = lock(&self.requests);
        for t in r.values_mut().flatten().filter(|t| matches!(t.phase, Phase::Active { .. })) {
            let Some(stamps) = &t.stamps else { continue };
            for (header, stamp) in stamps.iter().take(STAMP_CHECK_MAX_HEADERS) {
                let Some(keys) = wanted.get(header.as_str()) else { continue };
                let values: &[Value] = match stamp {
                    Value::List(items) => items,
                    one => std::slice::from_ref(one),
                };
                let hits: Vec<&Value> =
                    values.iter().take(STAMP_CHECK_MAX_VALUES).filter(|v| keys.contains(&stamp_key(v))).collect();
                if hits.is_empty() {
                    continue;
                }
                t.signum = Some(signum);
                if let Some(token) = &t.terminate {
                    token.cancel();
                }
                let (slot, known) = seen.entry(header.clone()).or_insert_with(|| {
                    matched.push((header.clone(), Vec::new()));
                    (matched.len() - 1, HashSet::new())
                });
                for hit in hits {
                    if known.insert(stamp_key(hit)) {
                        if let Some((_, values)) = matched.get_mut(*slot) {
                            values.push(hit.clone());
                        }
                    }
                }
            }
        }
        matched
    }

    /// The stamp values revoked by `revoke_by_stamped_headers`, by header.
    pub fn revoked_stamps(&self) -> &RevokedStamps {
        &self.revoked_stamps
    }

    /// The signal `id` was terminated with, if it was.
    pub fn termination_signal(&self, id: &str) -> Option<i64> {
        let r = lock(&self.requests);
        r.get(id).into_iter().flatten().find_map(|t| t.signum)
    }

    /// The revoked ids.
    pub fn revoked(&self) -> &Revoked {
        &self.revoked
    }
}

/// The latest request under one id that waits for its ETA (duplicates of an
/// id can be received meanwhile).
fn latest_scheduled(held: &mut [Tracked]) -> Option<&mut Tracked> {
    held.iter_mut().rev().find(|t| matches!(t.phase, Phase::Scheduled { .. }))
}

/// `Request.info()`: what `inspect active/reserved/scheduled` show of a request.
fn request_info(task: &TaskMessage, envelope: &Envelope, hostname: &str) -> Map {
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
    info.insert("exchange".into(), Value::Str(envelope.delivery_info.exchange.clone()));
    info.insert("routing_key".into(), Value::Str(envelope.delivery_info.routing_key.clone()));
    info.insert("priority".into(), Value::Int(i64::from(envelope.message.priority)));
    info.insert("redelivered".into(), Value::Bool(envelope.redelivered()));
    m.insert("delivery_info".into(), Value::Map(info));
    // Python's `Request.worker_pid` is set when the pool runs it.
    m.insert("worker_pid".into(), Value::Null);
    m
}

/// How long a revoked id is remembered, in seconds (Celery's `REVOKE_EXPIRES`).
pub const REVOKE_EXPIRES: f64 = 10_800.0;
/// How many revoked ids are remembered; the oldest go first (Celery's `REVOKES_MAX`).
pub const REVOKES_MAX: usize = 50_000;
/// Longest task id kept in the revoked set (Celery's ids are 36-character UUIDs).
pub const MAX_TASK_ID_LEN: usize = 512;
/// Largest state file read at startup: a full revoked set of the longest ids
/// is well under this.
pub const MAX_STATE_FILE: u64 = 64 << 20;

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// Reading it failed.
    #[error("cannot read the state file {path}: {source}; the worker starts with no revoked ids")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// It is no regular file (a directory, a FIFO, a device).
    #[error("the state file {path} is not a regular file; the worker starts with no revoked ids (point --statedb at a file)")]
    NotAFile {
        /// The file.
        path: String,
    },
    /// It is larger than [`MAX_STATE_FILE`].
    #[error("the state file {path} is {len} bytes, more than the {max} read; the worker starts with no revoked ids and rewrites it")]
    TooLarge {
        /// The file.
        path: String,
        /// Its size.
        len: u64,
        /// The bound.
        max: u64,
    },
    /// Its content is not celeriac's state.
    #[error("the state file {path} is not a celeriac state file ({reason}); the worker starts with no revoked ids and rewrites it")]
    Unreadable {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Writing it failed.
    #[error(
        "cannot write the state file {path}: {source}; revoked ids will not survive a restart until this is fixed"
    )]
    Write {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Locks `m`, going on with its data if a panic poisoned it (every update
/// here leaves the data consistent, so a poisoned lock must not silence the
/// worker's state for the rest of its life).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Celery's `LimitedSet`: ids with the time they were revoked, at most
/// [`REVOKES_MAX`], each forgotten [`REVOKE_EXPIRES`] seconds after; adding an
/// id again renews it. Ordered by (time, insertion), so purging takes the
/// oldest first in O(log n) each.
#[derive(Debug, Default)]
struct LimitedSet {
    keys: HashMap<Arc<str>, (u64, u64)>,
    order: BTreeMap<(u64, u64), (Arc<str>, f64)>,
    next: u64,
}

impl LimitedSet {
    /// Adds `id` revoked at `at` (epoch seconds; finite, not negative).
    fn add(&mut self, id: &str, at: f64) {
        if let Some(old) = self.keys.remove(id) {
            self.order.remove(&old);
        }
        // For finite non-negative floats the bit patterns sort as the values.
        let key = (at.to_bits(), self.next);
        self.next += 1;
        let id: Arc<str> = Arc::from(id);
        self.keys.insert(id.clone(), key);
        self.order.insert(key, (id, at));
    }

    fn purge(&mut self, now: f64) {
        let horizon = now - REVOKE_EXPIRES;
        while let Some((_, (id, at))) = self.order.first_key_value() {
            if self.order.len() <= REVOKES_MAX && *at >= horizon {
                break;
            }
            let id = id.clone();
            self.order.pop_first();
            self.keys.remove(&id);
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.keys.contains_key(id)
    }

    fn entries(&self) -> Vec<(String, f64)> {
        self.order.values().map(|(id, at)| (id.to_string(), *at)).collect()
    }
}

/// A revocation time as given, or now when it is not a time this clock can
/// use (not finite, negative, or in the future).
fn sane_time(at: f64, now: f64) -> f64 {
    if at.is_finite() && (0.0..=now).contains(&at) {
        at
    } else {
        now
    }
}

/// Revoked task ids with when they were revoked, shared with every worker
/// that receives the `revoke` broadcast (and with Python workers through
/// mingle's `hello`); kept in a JSON state file when one is given.
#[derive(Debug)]
pub struct Revoked {
    ids: Mutex<LimitedSet>,
    file: Option<PathBuf>,
    /// Held while a snapshot is taken and written, so writes land in order.
    saving: Mutex<()>,
    /// Changed since the file was last written.
    dirty: std::sync::atomic::AtomicBool,
}

impl Revoked {
    fn load(file: Option<PathBuf>) -> Revoked {
        let mut set = LimitedSet::default();
        if let Some(path) = &file {
            match read_state_file(path) {
                Ok(mut entries) => {
                    let now = now_timestamp();
                    for entry in &mut entries {
                        entry.1 = sane_time(entry.1, now);
                    }
                    entries.sort_by(|a, b| a.1.total_cmp(&b.1));
                    let skip = entries.len().saturating_sub(REVOKES_MAX);
                    for (id, at) in entries.into_iter().skip(skip) {
                        set.add(&id, at);
                    }
                    set.purge(now);
                }
                Err(e) => tracing::warn!("{e}"),
            }
        }
        Revoked { ids: Mutex::new(set), file, saving: Mutex::new(()), dirty: std::sync::atomic::AtomicBool::new(false) }
    }

    /// Whether `id` is revoked.
    pub fn contains(&self, id: &str) -> bool {
        lock(&self.ids).contains(id)
    }

    /// Revokes `ids` (now); the state file is written by the next
    /// [`Revoked::flush`] (the worker's, every second). Ids longer than
    /// [`MAX_TASK_ID_LEN`] are left out; of more than [`REVOKES_MAX`], the last
    /// ones are kept.
    pub fn add<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let now = now_timestamp();
        self.merge(ids.into_iter().map(|id| (id.to_owned(), now)));
    }

    /// Merges ids with their revocation times (epoch seconds; a time that is
    /// not finite, negative or in the future counts as now).
    pub fn merge(&self, entries: impl IntoIterator<Item = (String, f64)>) {
        let now = now_timestamp();
        {
            let mut set = lock(&self.ids);
            for (id, at) in entries {
                if id.chars().count() <= MAX_TASK_ID_LEN {
                    set.add(&id, sane_time(at, now));
                    // Keeps memory at the bound while a huge list streams in.
                    if set.order.len() > REVOKES_MAX {
                        set.purge(now);
                    }
                }
            }
            set.purge(now);
        }
        // Written by the worker's flush, every second on a blocking thread:
        // never here, on the runtime thread that answers remote control.
        self.dirty.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Writes the state file if something changed since it was last
    /// written (see [`write_state_file`]); failures are logged.
    pub fn flush(&self) {
        if self.dirty.swap(false, std::sync::atomic::Ordering::AcqRel) {
            self.save();
        }
    }

    /// The ids, oldest first.
    pub fn ids(&self) -> Vec<String> {
        self.entries().into_iter().map(|(id, _)| id).collect()
    }

    /// The ids with their times, oldest first (expired ones left out).
    pub fn entries(&self) -> Vec<(String, f64)> {
        let mut set = lock(&self.ids);
        set.purge(now_timestamp());
        set.entries()
    }

    /// How many ids are held.
    pub fn len(&self) -> usize {
        lock(&self.ids).keys.len()
    }

    /// Whether no id is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the state file (see [`write_state_file`]); failures are logged.
    fn save(&self) {
        let Some(path) = &self.file else { return };
        let _saving = lock(&self.saving);
        let mut revoked = Map::new();
        for (id, at) in self.entries() {
            revoked.insert(id, Value::Float(at));
        }
        let mut doc = Map::new();
        doc.insert("revoked".into(), Value::Map(revoked));
        let text = match celeriac_protocol::json::to_string(&Value::Map(doc)) {
            Ok(text) => text,
            Err(e) => return tracing::warn!("cannot encode the state file {}: {e}", path.display()),
        };
        if let Err(e) = write_state_file(path, text.as_bytes()) {
            tracing::warn!("{e}");
        }
    }
}

/// Reads the revoked ids of a state file: at most [`MAX_STATE_FILE`] bytes
/// of a regular file, `{"revoked": {id: time, ...}}`. A missing file is an
/// empty state.
pub fn read_state_file(path: &Path) -> Result<Vec<(String, f64)>, StateFileError> {
    let shown = || path.display().to_string();
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(StateFileError::Read { path: shown(), source }),
    };
    // Opening a FIFO would block until a writer came: look before opening.
    if !meta.is_file() {
        return Err(StateFileError::NotAFile { path: shown() });
    }
    if meta.len() > MAX_STATE_FILE {
        return Err(StateFileError::TooLarge { path: shown(), len: meta.len(), max: MAX_STATE_FILE });
    }
    let mut bytes = Vec::new();
    let read = std::fs::File::open(path).and_then(|f| f.take(MAX_STATE_FILE + 1).read_to_end(&mut bytes));
    if let Err(source) = read {
        return Err(StateFileError::Read { path: shown(), source });
    }
    if bytes.len() as u64 > MAX_STATE_FILE {
        return Err(StateFileError::TooLarge { path: shown(), len: bytes.len() as u64, max: MAX_STATE_FILE });
    }
    let unreadable = |reason: String| StateFileError::Unreadable { path: shown(), reason };
    let doc = celeriac_protocol::json::from_slice(&bytes).map_err(|e| unreadable(e.to_string()))?;
    let Value::Map(doc) = doc else { return Err(unreadable(format!("a {}, not a dict", doc.type_name()))) };
    match doc.get("revoked") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Map(revoked)) => {
            let now = now_timestamp();
            Ok(revoked
                .iter()
                .filter(|(id, _)| id.chars().count() <= MAX_TASK_ID_LEN)
                .map(|(id, at)| (id.clone(), at.as_f64().unwrap_or(now)))
                .collect())
        }
        Some(other) => Err(unreadable(format!("\"revoked\" is a {}, not a dict", other.type_name()))),
    }
}

/// Replaces `path` with `bytes` atomically and durably: a temporary file
/// with an unpredictable name in the same directory, mode 0600, written and
/// fsynced, renamed over `path`, then the directory fsynced so the rename
/// survives a crash. A reader sees the old file or the new one, never a part.
pub fn write_state_file(path: &Path, bytes: &[u8]) -> Result<(), StateFileError> {
    let failed = |source: std::io::Error| StateFileError::Write { path: path.display().to_string(), source };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let prefix = format!(".{name}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o600));
    }
    let mut tmp = builder.tempfile_in(dir).map_err(failed)?;
    tmp.write_all(bytes).map_err(failed)?;
    tmp.as_file().sync_all().map_err(failed)?;
    tmp.persist(path).map_err(|e| failed(e.error))?;
    // The rename is durable once the directory is.
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(failed)?;
    Ok(())
}

/// A stamp's values: a list's items, or the value itself (Celery's `maybe_list`).
pub fn stamp_values(stamp: &Value) -> Vec<Value> {
    match stamp {
        Value::List(items) => items.clone(),
        other => vec![other.clone()],
    }
}

/// Most stamp values kept by `revoke_by_stamped_headers` (the oldest go first).
pub const REVOKED_STAMPS_MAX: usize = 50_000;

/// Most stamped headers of one message checked against revoked stamps, and
/// most values of one stamp: a message cannot make the check expensive.
pub const STAMP_CHECK_MAX_HEADERS: usize = 64;
/// See [`STAMP_CHECK_MAX_HEADERS`].
pub const STAMP_CHECK_MAX_VALUES: usize = 1024;

/// The key a stamp value is compared by (values are compared as they were
/// sent; a map's keys in its order).
pub fn stamp_key(value: &Value) -> String {
    format!("{value:?}")
}

/// Stamp values revoked by `revoke_by_stamped_headers`, by header (Celery's
/// `worker_state.revoked_stamps`), bounded to [`REVOKED_STAMPS_MAX`] values
/// (the oldest go first). Lookups are hashed.
#[derive(Debug, Default)]
pub struct RevokedStamps {
    inner: Mutex<RevokedInner>,
}

#[derive(Debug, Default)]
struct RevokedInner {
    by_header: HashMap<String, HashSet<String>>,
    /// (header, key), oldest first.
    order: VecDeque<(String, String)>,
}

impl RevokedStamps {
    /// Revokes `values` of each header.
    pub fn add(&self, headers: &[(String, Vec<Value>)]) {
        let mut all = lock(&self.inner);
        for (header, values) in headers {
            for value in values {
                let key = stamp_key(value);
                if all.by_header.entry(header.clone()).or_default().insert(key.clone()) {
                    all.order.push_back((header.clone(), key));
                }
            }
        }
        while all.order.len() > REVOKED_STAMPS_MAX {
            let Some((header, key)) = all.order.pop_front() else { break };
            if let Some(set) = all.by_header.get_mut(&header) {
                set.remove(&key);
                if set.is_empty() {
                    all.by_header.remove(&header);
                }
            }
        }
    }

    /// The first stamp of `stamps` (with `stamped_headers` naming them) that
    /// is revoked, as `(header, value)`, checked as Celery's `Request.revoked`:
    /// a revoked header the message has no stamp for is skipped, the first
    /// matching value wins. At most [`STAMP_CHECK_MAX_HEADERS`] headers and
    /// [`STAMP_CHECK_MAX_VALUES`] values of each are looked at.
    pub fn matching(&self, stamped_headers: &[String], stamps: &Map) -> Option<(String, Value)> {
        let all = lock(&self.inner);
        if all.by_header.is_empty() {
            return None;
        }
        for header in stamped_headers.iter().take(STAMP_CHECK_MAX_HEADERS) {
            let Some(revoked) = all.by_header.get(header) else { continue };
            let Some(stamp) = stamps.get(header) else { continue };
            let values: &[Value] = match stamp {
                Value::List(items) => items,
                one => std::slice::from_ref(one),
            };
            if let Some(v) = values.iter().take(STAMP_CHECK_MAX_VALUES).find(|v| revoked.contains(&stamp_key(v))) {
                return Some((header.clone(), v.clone()));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scheduled_requests_info_is_packed_and_reads_back_the_same() {
        let mut map = Map::new();
        map.insert("id".into(), Value::Str("id-1".into()));
        map.insert("args".into(), Value::List(vec![Value::Int(1), Value::Float(2.5), Value::Str("é\u{1F600}".into())]));
        map.insert("kwargs".into(), Value::Map(Map::new()));
        map.insert("time_start".into(), Value::Null);
        let mut info = Info::Map(Box::new(map.clone()));
        info.pack();
        assert!(matches!(info, Info::Packed(_)));
        assert_eq!(info.to_map("h", &DecodeLimits::any_content()), map);
        info.map_mut("h", &DecodeLimits::any_content()).insert("acknowledged".into(), Value::Bool(true));
        assert!(matches!(info, Info::Map(_)), "unpacked to be changed");
        // An info always reads back as it was (what JSON would carry
        // differently stays a map).
        for odd in [Value::Float(f64::NAN), Value::Float(f64::INFINITY), Value::Float(1e300), Value::Bytes(vec![0, 1])]
        {
            let mut map = map.clone();
            map.insert("args".into(), Value::List(vec![odd.clone()]));
            let mut info = Info::Map(Box::new(map.clone()));
            info.pack();
            assert_eq!(info.to_map("h", &DecodeLimits::any_content()), map, "{odd:?}");
        }
    }

    #[test]
    fn a_revoked_stamp_is_found_as_celery_finds_it() {
        let revoked = RevokedStamps::default();
        revoked.add(&[("b".into(), vec![Value::Str("X".into())]), ("a".into(), vec![Value::Str("Y".into())])]);
        let mut stamps = Map::new();
        stamps.insert("b".into(), Value::List(vec![Value::Str("W".into()), Value::Str("X".into())]));
        // `a` is revoked but the message has no stamp for it: skipped, and
        // `b` is still checked.
        let headers = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(revoked.matching(&headers, &stamps), Some(("b".into(), Value::Str("X".into()))));
        stamps.insert("a".into(), Value::Str("Z".into()));
        // `a` matches nothing: `b` is still checked.
        assert_eq!(revoked.matching(&headers, &stamps), Some(("b".into(), Value::Str("X".into()))));
        stamps.insert("b".into(), Value::Str("nope".into()));
        assert_eq!(revoked.matching(&headers, &stamps), None);
    }

    #[test]
    fn revoked_stamps_keep_the_newest_and_stay_bounded() {
        let revoked = RevokedStamps::default();
        let many: Vec<Value> = (0..REVOKED_STAMPS_MAX as i64 + 10).map(Value::Int).collect();
        revoked.add(&[("h".into(), many)]);
        let mut stamps = Map::new();
        stamps.insert("h".into(), Value::Int(0));
        let headers = vec!["h".to_owned()];
        assert_eq!(revoked.matching(&headers, &stamps), None, "the oldest went first");
        stamps.insert("h".into(), Value::Int(REVOKED_STAMPS_MAX as i64 + 9));
        assert!(revoked.matching(&headers, &stamps).is_some());
    }

    #[test]
    fn revoked_ids_survive_a_restart_through_the_state_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.state");
        let state = WorkerState::new(Some(path.clone()));
        state.revoked().add(["a", "b"]);
        assert!(state.revoked().contains("a"));
        state.revoked().flush(); // as the worker does every second
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
        assert_eq!((state.reserved().len(), state.reserved_count()), (1, 1));
        assert_eq!(state.reserved()[0].get("worker_pid"), Some(&Value::Null), "no process runs it yet");
        let active = Phase::Active { time_start: 1.0, acknowledged: true };
        state.set_phase(&id, active.clone());
        state.set_phase(&id, active);
        assert_eq!(state.processed(), 1, "counted once, when it became active");
        assert_eq!(state.totals().get("tasks.add"), Some(&1));
        assert_eq!((state.active_count(), state.reserved().len(), state.reserved_count()), (1, 0, 0));
        assert_eq!(state.active()[0].get("worker_pid"), Some(&Value::Int(i64::from(std::process::id()))));
        // Its retry arrives (same id) before this run is done with it.
        state.received(&task, &delivery, "w@h");
        state.finished(&id, "tasks.add", true);
        assert_eq!((state.active_count(), state.reserved_count()), (0, 1), "the retry is still held");
        state.set_phase(&id, Phase::Active { time_start: 2.0, acknowledged: true });
        assert_eq!(state.processed(), 2, "the retry's run counts too");
        assert!(state.terminate(&id, 15), "the retry can be terminated");
        state.finished(&id, "tasks.add", true);
        assert_eq!((state.processed(), state.active_count(), state.query(&id)), (2, 0, None));
        delivery.ack().await.unwrap();
    }

    #[tokio::test]
    async fn a_held_eta_requests_info_is_read_from_its_message_and_matches_the_received_one() {
        use celeriac_broker::{Broker, MemoryBroker, Producer, ProducerConfig, SendOptions};
        let broker = Broker::Memory(MemoryBroker::default());
        broker.declare_queue("celery", "celery", "celery").await.unwrap();
        let producer = Producer::new(broker.clone(), ProducerConfig::default());
        let mut kwargs = Map::new();
        kwargs.insert("path".into(), Value::Str("/data/é\u{1F600}".into()));
        let args = vec![Value::Int(-1), Value::Float(1e300), Value::List(vec![Value::Null, Value::Bool(true)])];
        // kombu's JSON carries NaN as Python writes it.
        let odd = vec![Value::Float(f64::NAN)];
        let mut ids = Vec::new();
        for args in [args, odd] {
            ids.push(producer.send_task("tasks.add", args, kwargs.clone(), SendOptions::default()).await.unwrap());
        }
        let mut consumer = broker.consumer(&["celery".to_owned()], 2);
        let state = WorkerState::new(None);
        for id in &ids {
            let delivery = consumer.next().await.unwrap().unwrap();
            let task = TaskMessage::from_message(delivery.message()).unwrap();
            state.received(&task, &delivery, "w@h");
            let before = state.query(id).unwrap().1;
            state.set_phase(id, Phase::Scheduled { eta: "2026-12-03T00:00:00+00:00".into(), priority: 0 });
            let parked = delivery.park();
            // Without the message's text (a timer that keeps it parsed) the
            // info is packed instead.
            let text = parked.envelope_text().filter(|_| id == &ids[0]);
            state.parked(id, text, &DecodeLimits::any_content());
            let shared = lock(&state.requests).get(id.as_str()).map(|h| matches!(h[0].info, Info::Message(_)));
            let packed = lock(&state.requests).get(id.as_str()).map(|h| matches!(h[0].info, Info::Packed(_)));
            assert_eq!((shared, packed), (Some(id == &ids[0]), Some(id != &ids[0])));
            let (eta, priority, info) =
                state.scheduled().into_iter().find(|s| s.2.get("id") == before.get("id")).unwrap();
            assert_eq!((eta.as_str(), priority), ("2026-12-03T00:00:00+00:00", 0));
            if id == &ids[0] {
                assert_eq!(info, before, "inspect scheduled shows what it showed when received");
            } else {
                assert!(
                    matches!(info.get("args"), Some(Value::List(a)) if matches!(a[0], Value::Float(f) if f.is_nan()))
                );
            }
            assert!(lock(&state.requests)[id.as_str()][0].terminate.is_none(), "no token while it waits");
            // Due: reserved again, its info a map, a terminate token made.
            let mut again = parked.unpark().unwrap();
            let token = state.due(id, &task, &again);
            assert!(!token.is_cancelled());
            assert_eq!(state.reserved(), std::slice::from_ref(&before));
            state.set_phase(id, Phase::Active { time_start: 1.0, acknowledged: false });
            assert!(state.terminate(id, 15));
            assert!(token.is_cancelled(), "the token made at due is the one terminate cancels");
            state.finished(id, "tasks.add", true);
            again.ack().await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_duplicate_id_received_while_one_waits_for_its_eta_keeps_its_own_terminate_token() {
        use celeriac_broker::{Broker, MemoryBroker, Producer, ProducerConfig, SendOptions};
        let broker = Broker::Memory(MemoryBroker::default());
        broker.declare_queue("celery", "celery", "celery").await.unwrap();
        let producer = Producer::new(broker.clone(), ProducerConfig::default());
        let id = producer.send_task("tasks.add", Vec::new(), Map::new(), SendOptions::default()).await.unwrap();
        let options = SendOptions { task_id: Some(id.clone()), ..SendOptions::default() };
        producer.send_task("tasks.add", Vec::new(), Map::new(), options).await.unwrap();
        let mut consumer = broker.consumer(&["celery".to_owned()], 2);
        let (first, mut second) = (consumer.next().await.unwrap().unwrap(), consumer.next().await.unwrap().unwrap());
        let task = TaskMessage::from_message(first.message()).unwrap();
        let state = WorkerState::new(None);
        state.received(&task, &first, "w@h");
        state.set_phase(&id, Phase::Scheduled { eta: "2026-12-03T00:00:00+00:00".into(), priority: 0 });
        // The duplicate arrives before the first is parked.
        let token = state.received(&task, &second, "w@h");
        let parked = first.park();
        state.parked(&id, parked.envelope_text(), &DecodeLimits::any_content());
        state.set_phase(&id, Phase::Active { time_start: 1.0, acknowledged: false });
        assert!(state.terminate(&id, 15));
        assert!(token.is_cancelled(), "the running duplicate's own token is cancelled");
        state.finished(&id, "tasks.add", true);
        second.ack().await.unwrap();
        parked.unpark().unwrap().ack().await.unwrap();
    }

    #[test]
    fn the_state_file_is_replaced_atomically_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.state");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let state = WorkerState::new(Some(path.clone()));
        state.revoked().add(["a"]);
        state.revoked().add(["b"]);
        // Revoking writes nothing itself: the worker flushes every second.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
        state.revoked().flush();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
        let names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        assert_eq!(names, ["worker.state"], "no temporary file is left behind");
        let entries = read_state_file(&path).unwrap();
        assert_eq!(entries.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        // A directory that does not exist is a clear write error, not a panic.
        assert!(write_state_file(Path::new("no-such-dir/x.state"), b"{}").is_err());
    }

    #[test]
    fn hostile_state_files_are_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };
        let err = |path: &Path| read_state_file(path).unwrap_err().to_string();
        assert!(err(&file("garbage", b"\x00\xff{[")).contains("not a celeriac state file"));
        assert!(err(&file("list", b"[1, 2]")).contains("a list, not a dict"));
        assert!(err(&file("wrong", br#"{"revoked": [1, 2]}"#)).contains("not a dict"));
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(err(&file("deep", deep.as_bytes())).contains("not a celeriac state file"));
        let huge = dir.path().join("huge");
        std::fs::File::create(&huge).unwrap().set_len(MAX_STATE_FILE + 1).unwrap();
        assert!(err(&huge).contains("more than the"), "{}", err(&huge));
        assert!(err(dir.path()).contains("not a regular file"));
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().map(|s| s.success()).unwrap_or(false);
        if made {
            assert!(err(&fifo).contains("not a regular file"), "a FIFO is not opened (it would block)");
        }
        assert_eq!(read_state_file(&dir.path().join("absent")).unwrap(), Vec::new());
        // Every one of them: a worker that starts with no revoked ids.
        for name in ["garbage", "list", "wrong", "deep", "huge"] {
            let state = WorkerState::new(Some(dir.path().join(name)));
            assert!(state.revoked().is_empty(), "{name}");
        }
    }

    #[test]
    fn odd_times_and_ids_in_the_state_file_are_tamed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.state");
        let now = now_timestamp();
        let long = "x".repeat(MAX_TASK_ID_LEN + 1);
        let text = format!(
            r#"{{"revoked": {{"nan": NaN, "inf": Infinity, "future": 1e300, "negative": -5, "text": "x", "old": {}, "fine": {}, "{long}": {now}}}}}"#,
            now - REVOKE_EXPIRES - 60.0,
            now - 60.0,
        );
        std::fs::write(&path, text).unwrap();
        let state = WorkerState::new(Some(path));
        let entries = state.revoked().entries();
        let ids: Vec<&str> = entries.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids[0], "fine", "{ids:?}");
        for id in ["nan", "inf", "future", "negative", "text"] {
            assert!(ids.contains(&id), "an unusable time counts as now: {id} in {ids:?}");
        }
        assert!(!ids.contains(&"old"), "expired");
        assert!(!ids.contains(&long.as_str()), "too long to be an id");
        assert!(entries.iter().all(|(_, at)| at.is_finite() && *at <= now_timestamp()));
    }

    #[test]
    fn the_revoked_set_is_bounded_like_celerys_limited_set() {
        let state = WorkerState::new(None);
        let ids: Vec<String> = (0..100_000).map(|i| format!("id-{i}")).collect();
        let start = Instant::now();
        state.revoked().add(ids.iter().map(String::as_str));
        assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
        assert_eq!(state.revoked().len(), REVOKES_MAX);
        assert!(!state.revoked().contains("id-0") && state.revoked().contains("id-99999"), "the oldest go first");
        assert_eq!(state.revoked().ids().first().map(String::as_str), Some("id-50000"));
        // Revoked again, an id is renewed: now the newest.
        state.revoked().add(["id-50000"]);
        assert_eq!(state.revoked().ids().last().map(String::as_str), Some("id-50000"));
        state.revoked().add(["one-more"]);
        assert!(!state.revoked().contains("id-50001"), "the oldest left to make room");
        assert!(state.revoked().contains("id-50000"));
        state.revoked().add([long_id().as_str()]);
        assert!(!state.revoked().contains(&long_id()));
    }

    fn long_id() -> String {
        "y".repeat(MAX_TASK_ID_LEN + 1)
    }

    #[test]
    fn old_revocations_expire() {
        let state = WorkerState::new(None);
        state.revoked().merge([("old".to_owned(), now_timestamp() - REVOKE_EXPIRES - 10.0)]);
        state.revoked().add(["new"]);
        assert_eq!(state.revoked().ids(), ["new"]);
    }
}

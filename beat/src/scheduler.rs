//! The beat loop: take or keep the leader lease, write the health key, load
//! the entries and their state, and send what is due, slot by slot.
//!
//! For each entry a tick decides ([`decide`]) from the last slot, the
//! schedule, the catch-up policy and the starting deadline; then each slot is
//! sent, fenced by the lease:
//!
//! - when the broker is the store's own Redis, one script checks the lease,
//!   pushes the message and records the slot as sent: both or neither;
//! - otherwise the slot is recorded first (fenced, with the task id marked as
//!   in flight), the lease is renewed (fenced) and the message published, then
//!   the send is confirmed. A leader that finds a send in flight from a beat
//!   that died or lost the lease in between sends it again under the same
//!   task id, so nothing recorded is lost; task ids are derived from the entry
//!   and the slot, so a repeat is recognisable as one.
//!
//! Entries that cannot be run (see [`crate::store::Loaded::Broken`]) are
//! logged once per change, counted in the health key and skipped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use celeriac_broker::{ExchangeKind, Outgoing, Producer};
use celeriac_config::CatchUpPolicy;
use celeriac_protocol::envelope::Envelope;
use celeriac_protocol::event::{task_sent_fields, EventSource};
use celeriac_protocol::result::{saferepr, SAFEREPR_MAXLEVELS};
use celeriac_protocol::Value;
use jiff::{SignedDuration, Timestamp};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::clock::Clock;
use crate::entry::{Entry, DEFAULT_SKIP_GRACE};
use crate::health::{Counters, Health};
use crate::overlap::{unfinished, TaskStates};
use crate::schedule::Schedule;
use crate::state::{EntryState, Pending};
use crate::store::{LeaseEvent, Loaded, Sent, Store};

/// How beat runs.
#[derive(Debug, Clone)]
pub struct BeatConfig {
    /// Longest sleep between ticks (`beat_max_loop_interval`).
    pub max_interval: Duration,
    /// How long the leader lease lasts (Redis only); ticks come at least
    /// three times per lease.
    pub lease_ttl: Duration,
    /// Log what would be sent; send, record and write nothing.
    pub dry_run: bool,
    /// Default grace of `catch_up = "skip"`.
    pub skip_grace: SignedDuration,
    /// Part of every derived task id (RedBeat's key prefix), so two
    /// deployments with the same entry names do not share ids.
    pub namespace: String,
    /// The broker is the store's Redis (same server and database): each
    /// message is pushed by the script that checks the lease and records the
    /// send, so a beat that lost the lease cannot publish.
    pub publish_in_store: bool,
}

impl Default for BeatConfig {
    fn default() -> Self {
        BeatConfig {
            max_interval: Duration::from_secs(300),
            lease_ttl: Duration::from_secs(30),
            dry_run: false,
            skip_grace: DEFAULT_SKIP_GRACE,
            namespace: "redbeat:".into(),
            publish_in_store: false,
        }
    }
}

/// What [`decide`] found for an entry at a tick.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// State to record before anything is sent (a new entry's start, a
    /// changed schedule's new start, the schedule's fingerprint).
    pub update: Option<EntryState>,
    /// Slots to send now, oldest first.
    pub sends: Vec<Timestamp>,
    /// The latest due slot: the entry's last slot once this tick is done.
    pub latest: Option<Timestamp>,
    /// Due slots that are not sent (catch-up policy, starting deadline).
    pub dropped: usize,
    /// The first slot after this tick's.
    pub next: Option<Timestamp>,
    /// Why the state changed, for the log.
    pub note: Option<String>,
}

/// The state of an entry seen for the first time at `now`: it starts from
/// now (its first run is its first slot after now), except an rrule, whose
/// occurrences are fixed from its `dtstart`.
pub fn fresh_state(entry: &Entry, now: Timestamp) -> EntryState {
    let mut state = EntryState::default();
    if !matches!(entry.schedule, Schedule::RRule(_)) {
        state.last_run_at = Some(crate::schedule::to_micros(now));
    }
    state.run.fingerprint = Some(entry.fingerprint());
    state
}

/// Decides what an entry does at `now` given its state. `watched_since` is
/// when this beat started following the lease without a break (as leader or
/// standby): under `catch_up = "skip"` a slot that came due since then is not
/// downtime but a leadership change, and is sent however late.
pub fn decide(
    entry: &Entry,
    state: &EntryState,
    now: Timestamp,
    skip_grace: SignedDuration,
    watched_since: Option<Timestamp>,
) -> Decision {
    let fingerprint = entry.fingerprint();
    let mut st = state.clone();
    let mut update = None;
    let mut note = None;
    let is_rrule = matches!(entry.schedule, Schedule::RRule(_));
    if !entry.enabled {
        if st.run.fingerprint.as_deref() != Some(fingerprint.as_str()) {
            st.run.fingerprint = Some(fingerprint);
            update = Some(st);
        }
        return Decision { update, sends: vec![], latest: None, dropped: 0, next: None, note: None };
    }
    match st.run.fingerprint.as_deref() {
        _ if st.last_run_at.is_none() && !is_rrule => {
            st = fresh_state(entry, now);
            note = Some("new entry".to_owned());
            update = Some(st.clone());
        }
        Some(old) if old != fingerprint => {
            st.last_run_at = Some(crate::schedule::to_micros(st.last_run_at.map_or(now, |l| l.max(now))));
            st.run.fingerprint = Some(fingerprint);
            note = Some("schedule changed (or enabled again): starting from now, without catching up".to_owned());
            update = Some(st.clone());
        }
        None => {
            st.run.fingerprint = Some(fingerprint);
            update = Some(st.clone());
        }
        Some(_) => {}
    }
    let policy = entry.catch_up();
    // `skip` may send every slot of a leadership change, as `all` sends them.
    let many = policy == CatchUpPolicy::All || (policy == CatchUpPolicy::Skip && watched_since.is_some());
    let limit = if many { entry.max_catch_up() as usize } else { 1 };
    let Some(due) = entry.schedule.due(st.last_run_at, now, &entry.tz, limit) else {
        let next = entry.schedule.next_after(st.last_run_at, &entry.tz);
        return Decision { update, sends: vec![], latest: None, dropped: 0, next, note };
    };
    let deadline = entry.starting_deadline;
    let late = |slot: Timestamp| now.duration_since(slot);
    let stale = |slot: Timestamp| deadline.is_some_and(|d| late(slot) > d);
    let sends: Vec<Timestamp> = match policy {
        CatchUpPolicy::Once => [due.latest].into_iter().filter(|s| !stale(*s)).collect(),
        CatchUpPolicy::Skip => {
            // Slots that came due while this beat followed the lease are no
            // downtime: each is sent (a failover delays them, it does not
            // drop them). Otherwise only a slot within the grace is.
            let grace = deadline.unwrap_or(skip_grace);
            let watched = |slot: Timestamp| watched_since.is_some_and(|w| slot >= w);
            let mut sends: Vec<Timestamp> = due.recent.iter().copied().filter(|s| watched(*s)).collect();
            if sends.is_empty() && late(due.latest) <= grace {
                sends.push(due.latest);
            }
            sends
        }
        CatchUpPolicy::All => due.recent.iter().copied().filter(|s| !stale(*s)).collect(),
    };
    Decision {
        update,
        dropped: due.count.saturating_sub(sends.len()),
        sends,
        latest: Some(due.latest),
        next: entry.schedule.next_after(Some(due.latest), &entry.tz),
        note,
    }
}

/// The task id of an entry's slot: a UUID (version 5) of the namespace, the
/// entry name and the slot, the same whichever beat sends it.
pub fn task_id(namespace: &str, entry: &str, slot: Timestamp) -> String {
    let name = format!("celeriac-beat:{namespace}{entry}@{slot}");
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, name.as_bytes()).to_string()
}

/// Why a tick stopped early.
enum Stop {
    /// The lease is gone: no more sends this tick.
    LeaseLost,
    /// Something failed; try this entry again soon.
    Retry,
}

/// How a running beat is steered from outside.
#[derive(Debug)]
pub struct Control {
    /// Cancelled to stop (the lease is released on the way out).
    pub shutdown: CancellationToken,
    /// New static entries (SIGHUP's reload).
    pub reload: mpsc::Receiver<Vec<Entry>>,
}

/// A beat: the static entries, the store, and how it sends.
pub struct Beat {
    config: BeatConfig,
    statics: Vec<Entry>,
    store: Store,
    producer: Producer,
    states: Option<Arc<dyn TaskStates>>,
    health: Option<Health>,
    clock: Arc<dyn Clock>,
    leader: bool,
    statics_synced: bool,
    dry: HashMap<String, EntryState>,
    warned: HashMap<String, String>,
    /// Entries that cannot be run, by key, with the reason (logged once per change).
    broken: BTreeMap<String, String>,
    /// Entries whose message cannot be built, by name, with the reason.
    unsendable: BTreeMap<String, String>,
    /// Since when this beat has followed the lease without a break.
    watching_since: Option<Timestamp>,
    /// Queues whose binding this beat declared (fenced sends).
    declared: HashSet<String>,
    /// The `task-sent` events of fenced sends.
    events: EventSource,
    counters: Counters,
    ticks: tokio::sync::watch::Sender<u64>,
    metrics: Option<Arc<crate::metrics::BeatMetrics>>,
    /// Called right before a message is published (tests: a stall there).
    #[cfg(test)]
    before_publish: Option<Box<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for Beat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Beat").field("store", &self.store).field("leader", &self.leader).finish_non_exhaustive()
    }
}

const RETRY: SignedDuration = SignedDuration::from_secs(2);

fn later(now: Timestamp, by: Duration) -> Timestamp {
    now.checked_add(SignedDuration::try_from(by).unwrap_or(SignedDuration::MAX)).unwrap_or(Timestamp::MAX)
}

fn seconds(d: SignedDuration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

impl Beat {
    /// A beat sending through `producer` (which should have
    /// `send_sent_event` on, as beat's tasks must be visible to monitors).
    pub fn new(
        config: BeatConfig,
        statics: Vec<Entry>,
        store: Store,
        producer: Producer,
        clock: Arc<dyn Clock>,
    ) -> Beat {
        Beat {
            config,
            statics,
            store,
            states: None,
            health: None,
            clock,
            leader: false,
            statics_synced: false,
            dry: HashMap::new(),
            warned: HashMap::new(),
            broken: BTreeMap::new(),
            unsendable: BTreeMap::new(),
            watching_since: None,
            declared: HashSet::new(),
            events: EventSource::new(producer.config().origin.clone()),
            producer,
            counters: Counters::default(),
            ticks: tokio::sync::watch::channel(0).0,
            metrics: None,
            #[cfg(test)]
            before_publish: None,
        }
    }

    /// Counts finished ticks, for tests and embedding programs that want to
    /// await the next one instead of sleeping.
    pub fn ticks(&self) -> tokio::sync::watch::Receiver<u64> {
        self.ticks.subscribe()
    }

    /// Publishes the counters, the lease and each send's lag to `metrics`
    /// (`celeriac beat --metrics-addr`).
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::BeatMetrics>) -> Beat {
        self.metrics = Some(metrics);
        self
    }

    /// Judges no-overlap entries with `states` (the result backend).
    pub fn with_task_states(mut self, states: Arc<dyn TaskStates>) -> Beat {
        self.states = Some(states);
        self
    }

    /// Writes the health key on every tick while leading.
    pub fn with_health(mut self, health: Health) -> Beat {
        self.health = Some(health);
        self
    }

    /// Whether this beat leads (always, with a state file).
    pub fn is_leader(&self) -> bool {
        self.leader
    }

    /// What it has done so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Replaces the static entries (SIGHUP); the leader writes them to Redis
    /// on its next tick.
    pub fn set_statics(&mut self, statics: Vec<Entry>) {
        self.statics = statics;
        self.statics_synced = false;
    }

    /// The longest sleep: `max_interval`, and a third of the lease and of the
    /// health key's TTL, so both are renewed in time.
    fn max_sleep(&self) -> Duration {
        let mut bound = self.config.max_interval;
        if matches!(self.store, Store::Redis(_)) && !self.config.dry_run {
            bound = bound.min(self.config.lease_ttl / 3);
        }
        if let Some(h) = &self.health {
            bound = bound.min(h.ttl() / 3);
        }
        bound.max(Duration::from_millis(10))
    }

    /// Runs ticks until `control.shutdown`, then releases the lease.
    pub async fn run(mut self, mut control: Control) {
        info!(
            "beat: Starting... ({}{})",
            match &self.store {
                Store::File(f) => format!("state in {}", f.path().display()),
                Store::Redis(r) => format!("state and lease in {} ({})", r.url(), r.keys().lock),
            },
            if self.config.dry_run { "; dry run: nothing is sent or recorded" } else { "" }
        );
        let mut reloads_open = true;
        loop {
            if control.shutdown.is_cancelled() {
                break;
            }
            let wake = self.tick().await;
            let clock = self.clock.clone();
            tokio::select! {
                _ = clock.sleep_until(wake) => {}
                _ = control.shutdown.cancelled() => break,
                reload = control.reload.recv(), if reloads_open => match reload {
                    Some(statics) => {
                        info!("beat: Reloaded beat_schedule: {} static entries", statics.len());
                        self.set_statics(statics);
                    }
                    // Nobody can reload any more (the sender is gone): stop listening.
                    None => reloads_open = false,
                },
            }
        }
        if let Store::Redis(r) = &mut self.store {
            let held = r.holds_lease();
            match r.release().await {
                Ok(()) if held => info!("beat: Released the leader lease"),
                Ok(()) => {}
                Err(e) => warn!("beat: could not release the leader lease (it expires by itself): {e}"),
            }
        }
        info!("beat: Stopped.");
    }

    /// Logs the entries that became broken or changed how (one line each),
    /// and those that are usable again or gone, and keeps the set for the
    /// health key.
    fn report_broken(&mut self, now: BTreeMap<String, String>) {
        for (key, reason) in &now {
            if self.broken.get(key) != Some(reason) {
                warn!("beat: Entry {key} cannot be run; skipped, left in place untouched: {reason}");
            }
        }
        for key in self.broken.keys().filter(|k| !now.contains_key(*k)) {
            info!("beat: Entry {key} is no longer broken (fixed or removed)");
        }
        self.broken = now;
    }

    /// The entries beat cannot run now, by key, with the reason: broken in
    /// Redis, or with a message that cannot be built.
    pub fn broken(&self) -> BTreeMap<String, String> {
        let mut all = self.broken.clone();
        for (name, reason) in &self.unsendable {
            let key = match &self.store {
                Store::Redis(r) => r.keys().entry(name),
                Store::File(_) => name.clone(),
            };
            all.insert(key, reason.clone());
        }
        all
    }

    fn warn_once(&mut self, key: &str, message: String) {
        if self.warned.get(key) != Some(&message) {
            warn!("{message}");
            self.warned.insert(key.to_owned(), message);
        }
    }

    /// Leader election. `Ok(None)`: lead this tick; `Ok(Some(wait))`: stand by.
    async fn campaign(&mut self, now: Timestamp) -> Result<Option<Duration>, crate::BeatError> {
        let Store::Redis(r) = &mut self.store else {
            self.leader = true;
            return Ok(None);
        };
        if self.config.dry_run {
            self.leader = true;
            return Ok(None);
        }
        let (event, wait) = r.campaign().await?;
        match event {
            LeaseEvent::Acquired => {
                info!(
                    "beat: Acquired the leader lease {} ({}s); this beat sends",
                    r.keys().lock,
                    self.config.lease_ttl.as_secs_f64()
                );
                self.leader = true;
                self.statics_synced = false;
            }
            LeaseEvent::Kept => self.leader = true,
            LeaseEvent::Lost => {
                self.counters.lease_lost = self.counters.lease_lost.saturating_add(1);
                warn!("beat: Lost the leader lease {}: another beat holds it now; standing by", r.keys().lock);
                self.leader = false;
                return Ok(Some(Duration::ZERO));
            }
            LeaseEvent::Standby => {
                if self.leader {
                    self.leader = false;
                }
                debug!("beat: standing by; the leader lease may be free in {wait:?}");
                return Ok(Some(wait));
            }
        }
        if !self.statics_synced {
            if r.sync_statics(&self.statics, now).await? {
                self.statics_synced = true;
            } else {
                self.leader = false;
                return Ok(Some(Duration::ZERO));
            }
        }
        Ok(None)
    }

    /// The entries with their state.
    async fn load(&mut self) -> Result<Vec<(Entry, EntryState)>, crate::BeatError> {
        let mut out = Vec::new();
        match &mut self.store {
            Store::File(f) => {
                let names: Vec<&str> = self.statics.iter().map(|e| e.name.as_str()).collect();
                if !self.config.dry_run {
                    f.retain(&names);
                }
                for e in &self.statics {
                    out.push((e.clone(), f.state(&e.name)));
                }
            }
            Store::Redis(r) => {
                let loaded = r.load().await?;
                let mut problems = Vec::new();
                let mut broken = BTreeMap::new();
                for item in loaded {
                    match item {
                        Loaded::Entry(entry, state, unknown) => {
                            if !unknown.is_empty() {
                                let unknown: Vec<String> =
                                    unknown.iter().take(10).map(|u| crate::entry::cut(u, 60)).collect();
                                problems.push((
                                    format!("options:{}", entry.name),
                                    format!(
                                        "beat: entry {} has options beat does not send, ignored: {}",
                                        entry.name,
                                        unknown.join(", ")
                                    ),
                                ));
                            }
                            out.push((*entry, state));
                        }
                        Loaded::Broken { key, reason } => {
                            broken.insert(key, crate::entry::cut(&reason, 500));
                        }
                    }
                }
                for (key, message) in problems {
                    self.warn_once(&key, message);
                }
                self.report_broken(broken);
                if self.config.dry_run {
                    // A dry run shows the configuration as it is now, with the
                    // state Redis has (none for entries not written yet).
                    for s in &self.statics {
                        match out.iter_mut().find(|(e, _)| e.name == s.name) {
                            Some((e, _)) => *e = s.clone(),
                            None => out.push((s.clone(), EntryState::default())),
                        }
                    }
                } else if self.statics_synced && self.statics.iter().any(|s| !out.iter().any(|(e, _)| e.name == s.name))
                {
                    // Deleted or evicted: the configuration still has them.
                    self.statics_synced = false;
                }
            }
        }
        if self.config.dry_run {
            for (entry, state) in &mut out {
                if let Some(dry) = self.dry.get(&entry.name) {
                    *state = dry.clone();
                }
            }
        }
        Ok(out)
    }

    /// Records an entry's state. `Err(LeaseLost)` when the lease is gone.
    async fn record(&mut self, entry: &Entry, state: &EntryState, next: Option<Timestamp>) -> Result<bool, Stop> {
        if self.config.dry_run {
            self.dry.insert(entry.name.clone(), state.clone());
            return Ok(true);
        }
        let outcome = match &mut self.store {
            Store::File(f) => f.put(&entry.name, state).map(|()| Some(true)),
            Store::Redis(r) => r.commit(entry, state, next).await,
        };
        match outcome {
            Ok(Some(exists)) => Ok(exists),
            Ok(None) => {
                self.lost_lease(entry);
                Err(Stop::LeaseLost)
            }
            Err(e) => {
                error!("beat: cannot record the state of {}: {e}", entry.name);
                Err(Stop::Retry)
            }
        }
    }

    fn lost_lease(&mut self, entry: &Entry) {
        self.counters.lease_lost = self.counters.lease_lost.saturating_add(1);
        self.leader = false;
        warn!("beat: Lost the leader lease before sending {}; standing by", entry.name);
    }

    /// One tick; returns when the next one is due.
    pub async fn tick(&mut self) -> Timestamp {
        let wake = self.tick_once().await;
        if let Some(m) = &self.metrics {
            m.update(&self.counters, self.leader);
        }
        self.ticks.send_modify(|n| *n += 1);
        wake
    }

    async fn tick_once(&mut self) -> Timestamp {
        let now = self.clock.now();
        let bound = later(now, self.max_sleep());
        let campaign = Box::pin(self.campaign(now)).await;
        if campaign.is_ok() {
            self.watching_since.get_or_insert(now);
        }
        match campaign {
            Ok(None) => {}
            Ok(Some(wait)) => return later(now, wait).min(bound),
            Err(e) => {
                self.watching_since = None;
                self.leader = false;
                self.warn_once("campaign", format!("beat: cannot reach Redis for the leader lease, not sending: {e}"));
                return later(now, Duration::from_secs(1)).min(bound);
            }
        }
        self.warned.remove("campaign");
        let entries = match Box::pin(self.load()).await {
            Ok(entries) => entries,
            Err(e) => {
                self.warn_once("load", format!("beat: cannot load the entries, not sending: {e}"));
                return now.checked_add(RETRY).unwrap_or(bound).min(bound);
            }
        };
        self.warned.remove("load");
        self.unsendable.retain(|name, _| entries.iter().any(|(e, _)| &e.name == name));
        self.counters.entries = entries.len();
        let mut order: Vec<(Option<Timestamp>, Entry, EntryState)> =
            entries.into_iter().map(|(e, s)| (e.schedule.next_after(s.last_run_at, &e.tz), e, s)).collect();
        order.sort_by_key(|(first, _, _)| first.unwrap_or(Timestamp::MAX));
        let mut wake = bound;
        let mut next_run: Option<Timestamp> = None;
        for (_, entry, state) in order {
            // Boxed: the future of a whole entry is large.
            match Box::pin(self.run_entry(&entry, state, now)).await {
                Ok(Some(next)) => {
                    wake = wake.min(next);
                    next_run = Some(next_run.map_or(next, |n: Timestamp| n.min(next)));
                }
                Ok(None) => {}
                Err(Stop::LeaseLost) => return now,
                Err(Stop::Retry) => wake = wake.min(now.checked_add(RETRY).unwrap_or(bound)),
            }
        }
        self.counters.next_run = next_run;
        self.counters.broken = self.broken();
        if !self.config.dry_run {
            if let Some(h) = &mut self.health {
                if let Err(e) = h.write(self.clock.now(), &self.counters).await {
                    self.warned.insert("health".into(), String::new());
                    warn!("beat: cannot write the health key: {e}");
                }
            }
        }
        wake.max(now)
    }

    /// Handles one entry: a send in flight, a new or changed schedule, due slots.
    async fn run_entry(
        &mut self,
        entry: &Entry,
        mut state: EntryState,
        now: Timestamp,
    ) -> Result<Option<Timestamp>, Stop> {
        if let Some(pending) = state.run.pending.clone() {
            self.resend(entry, &mut state, &pending, now).await?;
        }
        let d = decide(entry, &state, now, self.config.skip_grace, self.watching_since);
        if let Some(update) = &d.update {
            let next = entry.schedule.next_after(update.last_run_at, &entry.tz);
            if !self.record(entry, update, next).await? {
                return Ok(None);
            }
            if let (Some(note), Some(next)) = (&d.note, next) {
                info!("beat: {}: {note}; next run at {next} ({})", entry.name, describe_local(entry, next));
            }
            state = update.clone();
        }
        let Some(latest) = d.latest else { return Ok(d.next) };
        if d.dropped > 0 {
            let dropped = u64::try_from(d.dropped).unwrap_or(u64::MAX);
            state.run.missed = state.run.missed.saturating_add(dropped);
            self.counters.missed = self.counters.missed.saturating_add(dropped);
            info!(
                "Scheduler: {} missed {} slot{} up to {latest} (catch_up {}{}); {}",
                entry.name,
                d.dropped,
                if d.dropped == 1 { "" } else { "s" },
                format!("{:?}", entry.catch_up()).to_lowercase(),
                entry.starting_deadline.map(|s| format!(", starting deadline {}", seconds(s))).unwrap_or_default(),
                if d.sends.is_empty() { "sending none".to_owned() } else { format!("sending {}", d.sends.len()) }
            );
        }
        for slot in &d.sends {
            if let Some(reason) = self.overlapping(entry, &state, now).await {
                state.last_run_at = Some(*slot);
                state.run.skipped_overlap = state.run.skipped_overlap.saturating_add(1);
                self.counters.skipped_overlap = self.counters.skipped_overlap.saturating_add(1);
                info!(
                    "Scheduler: Skipping due task {} ({}) slot={slot}: {reason} (skipped {} so far)",
                    entry.name, entry.task, state.run.skipped_overlap
                );
                let next = entry.schedule.next_after(Some(*slot), &entry.tz);
                if !self.record(entry, &state, next).await? {
                    return Ok(None);
                }
                continue;
            }
            Box::pin(self.send(entry, &mut state, *slot, now)).await?;
        }
        if state.last_run_at.is_none_or(|l| l < latest) {
            state.last_run_at = Some(latest);
            if !self.record(entry, &state, d.next).await? {
                return Ok(None);
            }
        }
        Ok(d.next)
    }

    /// Why the entry's previous run still blocks it, if it does.
    async fn overlapping(&mut self, entry: &Entry, state: &EntryState, now: Timestamp) -> Option<String> {
        if !entry.extras.no_overlap {
            return None;
        }
        let id = state.run.last_task_id.as_deref()?;
        // The bound needs the send time: without one, or with one later than
        // now by more than the bound (not clock skew), the previous run cannot
        // block this one for good, so it does not block it at all.
        let timeout = entry.no_overlap_timeout();
        let since = now.duration_since(state.run.last_sent_at()?);
        if since >= timeout || since <= -timeout {
            return None;
        }
        let since = Some(since);
        let Some(states) = self.states.clone() else {
            self.warn_once(
                &format!("no-overlap:{}", entry.name),
                format!("beat: {} has no_overlap but beat has no result backend to judge it by; sending", entry.name),
            );
            return None;
        };
        match states.state(id).await {
            Ok(s) if unfinished(&s) => Some(format!(
                "its previous run {id} is still {}{}",
                s.as_str(),
                since.map(|s| format!(" after {}", seconds(s))).unwrap_or_default()
            )),
            Ok(_) => None,
            Err(e) => Some(format!("the result backend cannot say whether its previous run {id} finished ({e})")),
        }
    }

    /// Sends one slot: in one fenced script with its record when the broker
    /// is the store's Redis, else recorded (fenced), renewed, published and
    /// confirmed.
    async fn send(
        &mut self,
        entry: &Entry,
        state: &mut EntryState,
        slot: Timestamp,
        now: Timestamp,
    ) -> Result<(), Stop> {
        let id = task_id(&self.config.namespace, &entry.name, slot);
        let lag = now.duration_since(slot);
        if self.config.dry_run {
            info!(
                "Scheduler: Would send due task {} ({}) id={id} slot={slot} lag={} (dry run)",
                entry.name,
                entry.task,
                seconds(lag)
            );
            state.last_run_at = Some(slot);
            state.total_run_count = state.total_run_count.saturating_add(1);
            self.dry.insert(entry.name.clone(), state.clone());
            return Ok(());
        }
        let out = self.build(entry, &id, now)?;
        let mut next_state = state.clone();
        next_state.last_run_at = Some(slot);
        next_state.total_run_count = next_state.total_run_count.saturating_add(1);
        next_state.run.last_task_id = Some(id.clone());
        next_state.run.last_sent_at = Some(now.to_string());
        let next = entry.schedule.next_after(Some(slot), &entry.tz);
        if self.publish_fenced(entry, &out, &next_state, next).await? {
            *state = next_state;
        } else {
            next_state.run.pending = Some(Pending { slot: slot.to_string(), task_id: id.clone() });
            if !self.record(entry, &next_state, next).await? {
                return Ok(());
            }
            *state = next_state;
            self.publish_unfenced(entry, &out).await.inspect_err(|_| {
                error!("Scheduler: slot {slot} of {} stays recorded and is sent again", entry.name);
            })?;
            state.run.pending = None;
            self.record(entry, state, next).await?;
        }
        info!("Scheduler: Sending due task {} ({}) id={id} slot={slot} lag={}", entry.name, entry.task, seconds(lag));
        self.counters.sent = self.counters.sent.saturating_add(1);
        if let Some(m) = &self.metrics {
            m.observe_lag(lag.as_secs_f64());
        }
        Ok(())
    }

    /// Sends a run a beat recorded but may not have sent.
    async fn resend(&mut self, entry: &Entry, state: &mut EntryState, p: &Pending, now: Timestamp) -> Result<(), Stop> {
        if self.config.dry_run {
            info!("Scheduler: Would send again {} slot {} id={} (dry run)", entry.name, p.slot, p.task_id);
            state.run.pending = None;
            return Ok(());
        }
        let out = self.build(entry, &p.task_id, now)?;
        let mut confirmed = state.clone();
        confirmed.run.pending = None;
        let next = entry.schedule.next_after(state.last_run_at, &entry.tz);
        if !self.publish_fenced(entry, &out, &confirmed, next).await? {
            self.publish_unfenced(entry, &out).await?;
            self.record(entry, &confirmed, next).await?;
        }
        *state = confirmed;
        warn!(
            "Scheduler: Sent {} ({}) slot {} again, id={} (same id): it was recorded but not confirmed, by a beat \
             that stopped or failed in between",
            entry.name, entry.task, p.slot, p.task_id
        );
        self.counters.sent = self.counters.sent.saturating_add(1);
        Ok(())
    }

    /// Builds one run as celery beat sends it: an ordinary task message with
    /// the entry's options, the `celery_beat_task` header, the args as a list.
    /// A message that cannot be built is reported with the broken entries.
    fn build(&mut self, entry: &Entry, id: &str, now: Timestamp) -> Result<Outgoing, Stop> {
        let mut options = entry.send.clone();
        options.task_id = Some(id.to_owned());
        let args = entry.arg_values();
        let repr = saferepr(&Value::List(args.clone()), Some(1024), SAFEREPR_MAXLEVELS);
        match self.producer.build(&entry.task, args, entry.kwarg_values(), &options, now) {
            Ok(mut out) => {
                out.task.headers.argsrepr = Some(repr.clone());
                out.message.headers.insert("argsrepr".into(), Value::Str(repr));
                self.unsendable.remove(&entry.name);
                Ok(out)
            }
            Err(e) => {
                let reason = format!("its task message cannot be built: {e}");
                if self.unsendable.get(&entry.name) != Some(&reason) {
                    error!("beat: Entry {} cannot be run; skipped: {reason}", entry.name);
                }
                self.unsendable.insert(entry.name.clone(), reason);
                Err(Stop::Retry)
            }
        }
    }

    /// Pushes the message and records `sent` in one fenced script, when the
    /// broker is the store's Redis and the route is to queues (not a fanout).
    /// `Ok(false)`: not possible here; publish otherwise.
    async fn publish_fenced(
        &mut self,
        entry: &Entry,
        out: &Outgoing,
        sent: &EntryState,
        next: Option<Timestamp>,
    ) -> Result<bool, Stop> {
        if !self.config.publish_in_store {
            return Ok(false);
        }
        // Only a Redis broker can take the task in the same transaction as
        // the state; on AMQP beat publishes (with confirms) and then records.
        let (Store::Redis(_), Some(broker)) = (&self.store, self.producer.broker().as_redis()) else {
            return Ok(false);
        };
        if !out.exchange.is_empty() && broker.exchange_kind(&out.exchange) == ExchangeKind::Fanout {
            return Ok(false);
        }
        let broker = broker.clone();
        let routed = async {
            if let Some(queue) = out.queue.as_ref().filter(|q| !self.declared.contains(*q)) {
                broker.declare_queue(queue, queue, queue).await.map_err(|e| e.to_string())?;
            }
            let queues = broker.route(&out.exchange, &out.routing_key).await.map_err(|e| e.to_string())?;
            let mut envelope = Envelope::new(out.message.clone(), &out.exchange, &out.routing_key);
            envelope.body_encoding = broker.options().body_encoding.clone();
            let payload = envelope.to_json().map_err(|e| e.to_string())?;
            Ok::<_, String>((queues, payload))
        };
        let (queues, payload) = match routed.await {
            Ok(routed) => routed,
            Err(e) => {
                error!("Scheduler: Message Error: sending {} ({}): {e}", entry.name, entry.task);
                return Err(Stop::Retry);
            }
        };
        if let Some(queue) = &out.queue {
            self.declared.insert(queue.clone());
        }
        if queues.is_empty() {
            warn!(
                exchange = %out.exchange, routing_key = %out.routing_key,
                "message has no route: no queue is bound to the exchange with this key; dropped as kombu does"
            );
        }
        let lists: Vec<String> =
            queues.iter().map(|q| broker.keys().queue_key_for_priority(q, out.message.priority)).collect();
        #[cfg(test)]
        if let Some(stall) = &self.before_publish {
            stall();
        }
        let Store::Redis(r) = &mut self.store else { return Ok(false) };
        match r.send_fenced(entry, sent, next, &lists, &payload).await {
            Ok(Sent::Done) => {}
            Ok(Sent::LeaseLost) => {
                self.lost_lease(entry);
                return Err(Stop::LeaseLost);
            }
            Ok(Sent::Gone) => {
                info!("beat: {} was deleted while it was being sent; nothing sent", entry.name);
                return Err(Stop::Retry);
            }
            Ok(Sent::NotAList) => {
                error!(
                    "Scheduler: Message Error: sending {}: a key of queue(s) {} holds something other than a list; \
                     nothing sent",
                    entry.name,
                    queues.join(", ")
                );
                return Err(Stop::Retry);
            }
            Err(e) => {
                error!("Scheduler: Message Error: sending {} ({}): {e}", entry.name, entry.task);
                return Err(Stop::Retry);
            }
        }
        if self.producer.config().send_sent_event {
            let queue = out.queue.clone().unwrap_or_else(|| out.routing_key.clone());
            let fields = task_sent_fields(&out.task, &queue, &out.exchange, &out.routing_key);
            let event = self.events.event("task-sent", fields);
            if let Err(e) = self.producer.broker().publish_event(&event).await {
                warn!(task_id = %out.task.headers.id, "could not send the task-sent event: {e}");
            }
        }
        Ok(true)
    }

    /// Publishes through the producer, after renewing the lease (fenced)
    /// when there is one: a beat that lost it does not publish, and the
    /// recorded send is left to the next leader.
    async fn publish_unfenced(&mut self, entry: &Entry, out: &Outgoing) -> Result<(), Stop> {
        #[cfg(test)]
        if let Some(stall) = &self.before_publish {
            stall();
        }
        if let Store::Redis(r) = &mut self.store {
            match r.renew().await {
                Ok(true) => {}
                Ok(false) => {
                    self.lost_lease(entry);
                    return Err(Stop::LeaseLost);
                }
                Err(e) => {
                    error!("Scheduler: not sending {}: {e}", entry.name);
                    return Err(Stop::Retry);
                }
            }
        }
        if let Err(source) = self.producer.publish(out).await {
            let e = crate::BeatError::Send {
                entry: entry.name.clone(),
                task: entry.task.clone(),
                source: Box::new(source),
            };
            error!("Scheduler: Message Error: {e}");
            return Err(Stop::Retry);
        }
        Ok(())
    }
}

/// `10:00:00+01:00 Europe/Berlin`, for logs.
pub fn describe_local(entry: &Entry, at: Timestamp) -> String {
    let zoned = at.to_zoned_datetime(entry.tz.clone());
    format!("{} {}", zoned.strftime("%Y-%m-%d %H:%M:%S%:z"), entry.zone_name())
}

#[cfg(test)]
mod tests {
    use super::*;
    use celeriac_config::{BeatEntrySettings, ScheduleSetting};
    use jiff::tz::TimeZone;

    fn entry(schedule: &str, extra: serde_json::Value) -> Entry {
        let mut v = serde_json::json!({"task": "managers.poll", "schedule": 1});
        if let (Some(map), serde_json::Value::Object(extra)) = (v.as_object_mut(), extra) {
            map.extend(extra);
        }
        let mut s: BeatEntrySettings = serde_json::from_value(v).unwrap();
        s.schedule = ScheduleSetting::Text(schedule.into());
        Entry::from_settings("poll", &s, &TimeZone::UTC, None).unwrap()
    }

    fn at(t: &str) -> Timestamp {
        t.parse().unwrap()
    }

    fn ran(entry: &Entry, last: &str) -> EntryState {
        let mut s = fresh_state(entry, at(last));
        s.total_run_count = 1;
        s
    }

    #[test]
    fn a_new_entry_waits_for_its_first_slot() {
        let e = entry("10s", serde_json::json!({}));
        let d = decide(&e, &EntryState::default(), at("2026-01-01T00:00:00Z"), DEFAULT_SKIP_GRACE, None);
        assert!(d.sends.is_empty());
        assert_eq!(d.update.unwrap().last_run_at, Some(at("2026-01-01T00:00:00Z")));
        assert_eq!(d.next, Some(at("2026-01-01T00:00:10Z")));
    }

    #[test]
    fn catch_up_policies_after_downtime() {
        let now = at("2026-01-01T00:01:05Z");
        let once = entry("10s", serde_json::json!({}));
        let d = decide(&once, &ran(&once, "2026-01-01T00:00:00Z"), now, DEFAULT_SKIP_GRACE, None);
        assert_eq!((d.sends.clone(), d.dropped), (vec![at("2026-01-01T00:01:00Z")], 5));
        assert_eq!(d.next, Some(at("2026-01-01T00:01:10Z")));

        let all = entry("10s", serde_json::json!({"catch_up": "all", "max_catch_up": 4}));
        let d = decide(&all, &ran(&all, "2026-01-01T00:00:00Z"), now, DEFAULT_SKIP_GRACE, None);
        assert_eq!(d.sends.len(), 4);
        assert_eq!((d.sends[0], d.sends[3], d.dropped), (at("2026-01-01T00:00:30Z"), at("2026-01-01T00:01:00Z"), 2));

        let skip = entry("0 * * * *", serde_json::json!({"catch_up": "skip"}));
        let d =
            decide(&skip, &ran(&skip, "2026-01-01T00:00:00Z"), at("2026-01-01T03:20:00Z"), DEFAULT_SKIP_GRACE, None);
        assert_eq!((d.sends.len(), d.dropped, d.latest), (0, 3, Some(at("2026-01-01T03:00:00Z"))));
        let d =
            decide(&skip, &ran(&skip, "2026-01-01T00:00:00Z"), at("2026-01-01T03:00:02Z"), DEFAULT_SKIP_GRACE, None);
        assert_eq!((d.sends, d.dropped), (vec![at("2026-01-01T03:00:00Z")], 2));
    }

    #[test]
    fn the_starting_deadline_drops_stale_slots() {
        let e = entry("0 * * * *", serde_json::json!({"starting_deadline": 60}));
        let d = decide(&e, &ran(&e, "2026-01-01T00:00:00Z"), at("2026-01-01T01:05:00Z"), DEFAULT_SKIP_GRACE, None);
        assert_eq!((d.sends.len(), d.dropped), (0, 1));
        let d = decide(&e, &ran(&e, "2026-01-01T00:00:00Z"), at("2026-01-01T01:00:30Z"), DEFAULT_SKIP_GRACE, None);
        assert_eq!(d.sends.len(), 1);
    }

    #[test]
    fn a_changed_schedule_starts_from_now_without_catching_up() {
        let old = entry("1h", serde_json::json!({}));
        let state = ran(&old, "2026-01-01T00:00:00Z");
        let new = entry("10s", serde_json::json!({}));
        let now = at("2026-01-01T00:30:00Z");
        let d = decide(&new, &state, now, DEFAULT_SKIP_GRACE, None);
        assert!(d.sends.is_empty());
        assert_eq!(d.update.unwrap().last_run_at, Some(now));
        assert_eq!(d.next, Some(at("2026-01-01T00:30:10Z")));
    }

    #[test]
    fn slots_stay_on_the_grid_whatever_the_send_time() {
        let e = entry("10s", serde_json::json!({}));
        let state = ran(&e, "2026-01-01T00:00:00Z");
        // The tick runs late: the slot is still 00:00:10 and the next 00:00:20.
        let d = decide(&e, &state, at("2026-01-01T00:00:13.5Z"), DEFAULT_SKIP_GRACE, None);
        assert_eq!((d.sends, d.next), (vec![at("2026-01-01T00:00:10Z")], Some(at("2026-01-01T00:00:20Z"))));
    }

    #[test]
    fn task_ids_are_the_same_for_the_same_slot() {
        let slot = at("2026-01-01T00:00:10Z");
        assert_eq!(task_id("redbeat:", "poll", slot), task_id("redbeat:", "poll", slot));
        assert_ne!(task_id("redbeat:", "poll", slot), task_id("redbeat:", "other", slot));
        assert_eq!(task_id("redbeat:", "poll", slot).len(), 36);
    }

    #[test]
    fn skip_sends_a_late_slot_that_came_due_while_this_beat_was_watching() {
        let e = entry("0 * * * *", serde_json::json!({"catch_up": "skip"}));
        let state = ran(&e, "2026-01-01T00:00:00Z");
        let now = at("2026-01-01T01:00:45Z");
        // Downtime: nobody was there when 01:00 came due; 45 s is past the grace.
        let d = decide(&e, &state, now, DEFAULT_SKIP_GRACE, Some(at("2026-01-01T01:00:40Z")));
        assert_eq!((d.sends.len(), d.dropped), (0, 1));
        // A leadership change: this beat stood by since before the slot.
        let d = decide(&e, &state, now, DEFAULT_SKIP_GRACE, Some(at("2026-01-01T00:10:00Z")));
        assert_eq!((d.sends, d.dropped), (vec![at("2026-01-01T01:00:00Z")], 0));
        // Two slots in a long handover: both, not only the latest; a slot
        // from before this beat was there stays dropped.
        let later = at("2026-01-01T02:00:45Z");
        let d = decide(&e, &state, later, DEFAULT_SKIP_GRACE, Some(at("2026-01-01T00:10:00Z")));
        assert_eq!((d.sends, d.dropped), (vec![at("2026-01-01T01:00:00Z"), at("2026-01-01T02:00:00Z")], 0));
        let d = decide(&e, &state, later, DEFAULT_SKIP_GRACE, Some(at("2026-01-01T01:30:00Z")));
        assert_eq!((d.sends, d.dropped), (vec![at("2026-01-01T02:00:00Z")], 1));
    }

    /// Two beats sharing a private redis-server (state and lease), sending
    /// through `broker`, on one manual clock.
    mod shared {
        use super::*;
        use crate::redbeat::Keys;
        use crate::{ManualClock, RedisStore};
        use celeriac_broker::{Broker, MemoryBroker, ProducerConfig, RedisBroker};
        use celeriac_tests::RedisServer;
        use std::sync::Mutex;

        pub(super) const T0: &str = "2026-03-01T12:00:00Z";

        pub(super) async fn beat(
            redis: &RedisServer,
            broker: &Broker,
            clock: &ManualClock,
            toml: &str,
            publish_in_store: bool,
        ) -> Beat {
            let (con, url) = crate::store::redis::connect(&redis.url(), None).await.unwrap();
            let keys = Keys::new("redbeat:", "redbeat::lock");
            let ttl = Duration::from_secs(30);
            let store = Store::Redis(Box::new(RedisStore::new(con, url, keys, ttl, TimeZone::UTC, None)));
            let s = celeriac_config::load_from_str(toml, "", Vec::new()).unwrap().settings;
            let statics = s
                .beat_schedule
                .iter()
                .map(|(n, e)| Entry::from_settings(n, e, &TimeZone::UTC, None).unwrap())
                .collect();
            let producer = Producer::new(broker.clone(), ProducerConfig::default());
            let config = BeatConfig { lease_ttl: ttl, publish_in_store, ..BeatConfig::default() };
            Beat::new(config, statics, store, producer, Arc::new(clock.clone()))
        }

        /// A hook that hands the lease to another beat, as a pause longer
        /// than the lease at that point would.
        pub(super) fn steal_lease(redis: &RedisServer) -> Box<dyn Fn() + Send + Sync> {
            let con = Mutex::new(redis::Client::open(redis.url()).unwrap().get_connection().unwrap());
            Box::new(move || {
                let mut con = con.lock().unwrap();
                redis::cmd("SET")
                    .arg("redbeat::lock")
                    .arg("another-beat")
                    .arg("PX")
                    .arg(60_000)
                    .exec(&mut *con)
                    .unwrap();
            })
        }

        pub(super) fn del_lease(redis: &RedisServer) {
            let mut con = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
            redis::cmd("DEL").arg("redbeat::lock").exec(&mut con).unwrap();
        }

        pub(super) fn plus(secs: f64) -> Timestamp {
            at(T0).checked_add(SignedDuration::try_from_secs_f64(secs).unwrap()).unwrap()
        }

        pub(super) fn memory() -> (MemoryBroker, Broker) {
            let m = MemoryBroker::default();
            (m.clone(), Broker::Memory(m))
        }

        pub(super) fn redis_broker(redis: &RedisServer) -> Broker {
            Broker::Redis(RedisBroker::from_url(&redis.url()).unwrap())
        }
    }

    const POLL: &str = "[beat_schedule.poll]\ntask = \"managers.poll\"\nschedule = 10\noptions = { queue = \"q\" }\n";

    /// Ids of the task messages in a Redis list, oldest first.
    fn ids_in(redis: &celeriac_tests::RedisServer, list: &str) -> Vec<String> {
        let mut con = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
        let raw: Vec<String> = redis::cmd("LRANGE").arg(list).arg(0).arg(-1).query(&mut con).unwrap();
        raw.iter()
            .rev()
            .map(|m| {
                serde_json::from_str::<serde_json::Value>(m).unwrap()["headers"]["id"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    #[tokio::test]
    async fn a_leader_that_lost_the_lease_before_its_fenced_send_pushes_nothing() {
        use shared::*;
        let Some(redis) = celeriac_tests::or_skip("redis-server", celeriac_tests::RedisServer::start()) else {
            return;
        };
        let broker = redis_broker(&redis);
        let clock = crate::ManualClock::new(at(T0));
        let mut a = beat(&redis, &broker, &clock, POLL, true).await;
        let mut b = beat(&redis, &broker, &clock, POLL, true).await;
        a.tick().await;
        b.tick().await;
        assert!(a.is_leader() && !b.is_leader());
        // The slot of T0+10s comes due; A stalls right before its send and
        // another beat holds the lease when A goes on.
        a.before_publish = Some(steal_lease(&redis));
        clock.set(plus(10.0));
        a.tick().await;
        assert_eq!(ids_in(&redis, "q"), Vec::<String>::new(), "a beat without the lease pushed a message");
        assert_eq!(a.counters().lease_lost, 1);
        // The other beat goes away; B takes over and sends the slot, once.
        del_lease(&redis);
        clock.set(plus(10.5));
        b.tick().await;
        assert!(b.is_leader());
        assert_eq!(ids_in(&redis, "q"), vec![task_id("redbeat:", "poll", plus(10.0))]);
        a.before_publish = None;
        clock.set(plus(11.0));
        a.tick().await;
        b.tick().await;
        assert_eq!(ids_in(&redis, "q").len(), 1, "the slot was sent twice");
    }

    #[tokio::test]
    async fn a_leader_that_lost_the_lease_before_publishing_leaves_the_recorded_slot_to_the_next() {
        use shared::*;
        let Some(redis) = celeriac_tests::or_skip("redis-server", celeriac_tests::RedisServer::start()) else {
            return;
        };
        // The broker is not the store's Redis: record, renew, publish, confirm.
        let (memory, broker) = memory();
        let clock = crate::ManualClock::new(at(T0));
        let mut a = beat(&redis, &broker, &clock, POLL, false).await;
        let mut b = beat(&redis, &broker, &clock, POLL, false).await;
        a.tick().await;
        b.tick().await;
        a.before_publish = Some(steal_lease(&redis));
        clock.set(plus(10.0));
        a.tick().await;
        assert_eq!(memory.queue_len("q"), 0, "a beat without the lease published");
        del_lease(&redis);
        clock.set(plus(10.5));
        b.tick().await;
        let sent: Vec<serde_json::Value> =
            memory.list("q", 0).iter().map(|m| serde_json::from_str(m).unwrap()).collect();
        assert_eq!(sent.len(), 1);
        assert_eq!(
            sent[0]["headers"]["id"],
            task_id("redbeat:", "poll", plus(10.0)).as_str(),
            "the recorded slot, resent"
        );
    }

    #[tokio::test]
    async fn skip_does_not_drop_a_slot_that_came_due_during_a_failover() {
        use shared::*;
        let Some(redis) = celeriac_tests::or_skip("redis-server", celeriac_tests::RedisServer::start()) else {
            return;
        };
        let (memory, broker) = memory();
        let toml = "[beat_schedule.poll]\ntask = \"managers.poll\"\nschedule = 60\ncatch_up = \"skip\"\noptions = { queue = \"q\" }\n";
        let clock = crate::ManualClock::new(at(T0));
        let mut a = beat(&redis, &broker, &clock, toml, false).await;
        let mut b = beat(&redis, &broker, &clock, toml, false).await;
        a.tick().await;
        b.tick().await;
        // A dies at once; its lease runs out; B takes over 45 s after the slot
        // of T0+60s, later than the 30 s grace of `skip`.
        del_lease(&redis);
        clock.set(plus(105.0));
        b.tick().await;
        assert!(b.is_leader());
        let ids: Vec<String> = memory
            .list("q", 0)
            .iter()
            .map(|m| {
                serde_json::from_str::<serde_json::Value>(m).unwrap()["headers"]["id"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(ids, vec![task_id("redbeat:", "poll", plus(60.0))], "the failover's slot was dropped");
        // Downtime is still skipped: B dies too, and C starts after the next slot.
        del_lease(&redis);
        clock.set(plus(165.0));
        let mut c = beat(&redis, &broker, &clock, toml, false).await;
        c.tick().await;
        assert!(c.is_leader());
        assert_eq!(memory.queue_len("q"), 1, "a slot missed while no beat ran was sent under skip");
        assert_eq!(c.counters().missed, 1);
    }
}

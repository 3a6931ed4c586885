//! The scheduler driven tick by tick on a manual clock, with the state file
//! and the in-memory broker: what is sent, when, with which headers, after
//! downtime (catch-up policies), with no-overlap, in a dry run, and after a
//! beat died between recording and sending a slot. Hours pass in
//! milliseconds.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed assertion

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use celeriac_beat::overlap::{StateFuture, TaskStates};
use celeriac_beat::scheduler::task_id;
use celeriac_beat::state::Pending;
use celeriac_beat::{Beat, BeatConfig, Entry, FileStore, ManualClock, Store};
use celeriac_broker::{Broker, MemoryBroker, Producer, ProducerConfig};
use celeriac_config::load_from_str;
use celeriac_protocol::result::State;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

const T0: &str = "2026-03-01T12:00:00Z";

fn at(t: &str) -> Timestamp {
    t.parse().unwrap()
}

fn plus(secs: i64) -> Timestamp {
    at(T0).checked_add(SignedDuration::from_secs(secs)).unwrap()
}

fn entries(toml: &str) -> Vec<Entry> {
    let s = load_from_str(toml, " in the test", Vec::new()).unwrap().settings;
    s.beat_schedule.iter().map(|(n, e)| Entry::from_settings(n, e, &TimeZone::UTC, None).unwrap()).collect()
}

struct Rig {
    memory: MemoryBroker,
    clock: ManualClock,
    beat: Beat,
}

fn rig(toml: &str, state: &Path, config: BeatConfig) -> Rig {
    rig_with(toml, state, config, None)
}

fn rig_with(toml: &str, state: &Path, config: BeatConfig, states: Option<Arc<dyn TaskStates>>) -> Rig {
    let memory = MemoryBroker::default();
    let producer = Producer::new(
        Broker::Memory(memory.clone()),
        ProducerConfig { send_sent_event: true, ..ProducerConfig::default() },
    );
    let clock = ManualClock::new(at(T0));
    let store = if config.dry_run { FileStore::open_read_only(state) } else { FileStore::open(state) }.unwrap();
    let mut beat = Beat::new(config, entries(toml), Store::File(store), producer, Arc::new(clock.clone()));
    if let Some(states) = states {
        beat = beat.with_task_states(states);
    }
    Rig { memory, clock, beat }
}

impl Rig {
    async fn tick_at(&mut self, t: Timestamp) -> Timestamp {
        self.clock.set(t);
        self.beat.tick().await
    }

    /// Messages on `queue`, oldest first, as JSON envelopes with decoded bodies.
    fn sent(&self, queue: &str) -> Vec<Value> {
        let mut out: Vec<Value> = self.memory.list(queue, 0).iter().map(|m| serde_json::from_str(m).unwrap()).collect();
        out.reverse(); // LPUSH: the newest is first
        out
    }
}

fn header<'a>(message: &'a Value, name: &str) -> &'a Value {
    &message["headers"][name]
}

const POLL: &str = r#"
[beat_schedule.trigger-manager]
task = "datacenter.poll_triggers"
schedule = "10s"
args = [1, "staging"]
options = { queue = "workflow.staging", expires = 9 }
"#;

#[tokio::test]
async fn an_interval_runs_on_its_grid_with_celery_beats_headers() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = rig(POLL, &dir.path().join("state.json"), BeatConfig::default());
    // First sight: the entry starts now and runs one interval later.
    let wake = r.tick_at(at(T0)).await;
    assert_eq!(wake, plus(10));
    assert!(r.sent("workflow.staging").is_empty());
    // A late tick sends the 10 s slot; the next slot stays at 20 s, no drift.
    assert_eq!(r.tick_at(plus(13)).await, plus(20));
    let sent = r.sent("workflow.staging");
    assert_eq!(sent.len(), 1);
    let m = &sent[0];
    assert_eq!(header(m, "task"), "datacenter.poll_triggers");
    assert_eq!(header(m, "id").as_str().unwrap(), task_id("redbeat:", "trigger-manager", plus(10)));
    assert_eq!(header(m, "celery_beat_task"), &Value::Bool(true));
    assert_eq!(header(m, "argsrepr"), "[1, 'staging']");
    assert!(header(m, "expires").as_str().unwrap().starts_with("2026-03-01T12:00:22"), "{m}");
    assert_eq!(m["properties"]["expiration"], "9000");
    r.tick_at(plus(20)).await;
    r.tick_at(plus(20)).await; // a second tick at the same time sends nothing more
    assert_eq!(r.sent("workflow.staging").len(), 2);
    assert_eq!(r.beat.counters().sent, 2);
}

#[tokio::test]
async fn downtime_is_caught_up_as_each_entry_says() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let toml = r#"
[beat_schedule.once]
task = "t.once"
schedule = 10
options = { queue = "q" }
[beat_schedule.all]
task = "t.all"
schedule = 10
catch_up = "all"
max_catch_up = 4
options = { queue = "q" }
[beat_schedule.skip]
task = "t.skip"
schedule = 60
catch_up = "skip"
options = { queue = "q" }
"#;
    {
        let mut r = rig(toml, &state, BeatConfig::default());
        r.tick_at(at(T0)).await;
        r.tick_at(plus(10)).await;
        assert_eq!(r.sent("q").len(), 2);
    } // the beat stops; its state file stays
    let mut r = rig(toml, &state, BeatConfig::default());
    // At 105 s: slots 20..100 of the 10 s entries were missed, and slot 60 of
    // `skip`, 45 s ago (its grace is 30 s).
    r.tick_at(plus(105)).await;
    let names: Vec<String> = r.sent("q").iter().map(|m| header(m, "task").as_str().unwrap().to_owned()).collect();
    let count = |t: &str| names.iter().filter(|n| *n == t).count();
    assert_eq!((count("t.once"), count("t.all"), count("t.skip")), (1, 4, 0), "{names:?}");
    let ids: Vec<String> = r.sent("q").iter().map(|m| header(m, "id").as_str().unwrap().to_owned()).collect();
    for slot in [70, 80, 90, 100] {
        assert!(ids.contains(&task_id("redbeat:", "all", plus(slot))), "slot {slot} of `all` was not sent");
    }
    assert!(ids.contains(&task_id("redbeat:", "once", plus(100))));
    // Then every entry is back on its grid.
    assert_eq!(r.tick_at(plus(110)).await, plus(120));
    assert_eq!(r.sent("q").len(), 5 + 2);
}

#[tokio::test]
async fn a_dry_run_sends_and_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    {
        let mut r = rig(POLL, &state, BeatConfig::default());
        r.tick_at(at(T0)).await;
    }
    let before = std::fs::read(&state).unwrap();
    let mut r = rig(POLL, &state, BeatConfig { dry_run: true, ..BeatConfig::default() });
    for s in [10, 20, 30] {
        r.tick_at(plus(s)).await;
    }
    assert!(r.sent("workflow.staging").is_empty());
    assert_eq!(std::fs::read(&state).unwrap(), before);
    // The real beat (lock free: the dry run took none) still sees the untouched state.
    let mut real = rig(POLL, &state, BeatConfig::default());
    real.tick_at(plus(30)).await;
    assert_eq!(real.sent("workflow.staging").len(), 1);
}

#[derive(Default)]
struct Results(Mutex<HashMap<String, State>>);

impl TaskStates for Results {
    fn state<'a>(&'a self, task_id: &'a str) -> StateFuture<'a> {
        let state = self.0.lock().unwrap().get(task_id).cloned().unwrap_or(State::Pending);
        Box::pin(async move { Ok(state) })
    }
}

#[tokio::test]
async fn no_overlap_skips_slots_while_the_last_run_is_unfinished() {
    let dir = tempfile::tempdir().unwrap();
    let toml = r#"
[beat_schedule.poll]
task = "t.poll"
schedule = 10
no_overlap = true
no_overlap_timeout = 60
options = { queue = "q" }
"#;
    let results = Arc::new(Results::default());
    let mut r = rig_with(toml, &dir.path().join("state.json"), BeatConfig::default(), Some(results.clone()));
    r.tick_at(at(T0)).await;
    r.tick_at(plus(10)).await;
    let first = task_id("redbeat:", "poll", plus(10));
    // Queued (PENDING), then running (STARTED): both block.
    r.tick_at(plus(20)).await;
    results.0.lock().unwrap().insert(first.clone(), State::Started);
    r.tick_at(plus(30)).await;
    assert_eq!((r.sent("q").len(), r.beat.counters().skipped_overlap), (1, 2));
    // Done: the next slot is sent.
    results.0.lock().unwrap().insert(first, State::Success);
    r.tick_at(plus(40)).await;
    assert_eq!(r.sent("q").len(), 2);
    // A run that never finishes blocks only until no_overlap_timeout (60 s).
    for s in [50, 60, 70, 80, 90] {
        r.tick_at(plus(s)).await;
    }
    assert_eq!(r.sent("q").len(), 2);
    r.tick_at(plus(100)).await;
    assert_eq!(r.sent("q").len(), 3);
    assert_eq!(r.beat.counters().skipped_overlap, 7);
}

#[tokio::test]
async fn no_overlap_is_not_held_for_good_by_a_send_time_in_the_far_future() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let toml = "[beat_schedule.poll]\ntask = \"t.poll\"\nschedule = 10\nno_overlap = true\nno_overlap_timeout = 60\n\
                options = { queue = \"q\" }\n";
    let results = Arc::new(Results::default());
    {
        let mut r = rig_with(toml, &state, BeatConfig::default(), Some(results.clone()));
        r.tick_at(at(T0)).await;
    }
    // A run that never finishes, "sent" in year 9999 (a skewed or tampered record).
    let mut store = FileStore::open(&state).unwrap();
    let mut s = store.state("poll");
    s.run.last_task_id = Some(task_id("redbeat:", "poll", at(T0)));
    s.run.last_sent_at = Some("9999-01-01T00:00:00Z".into());
    store.put("poll", &s).unwrap();
    drop(store);
    let mut r = rig_with(toml, &state, BeatConfig::default(), Some(results));
    r.tick_at(plus(10)).await;
    assert_eq!(r.sent("q").len(), 1, "a send time in the future blocked the entry");
}

#[tokio::test]
async fn a_recorded_but_unconfirmed_send_is_sent_again_with_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    {
        let mut r = rig(POLL, &state, BeatConfig::default());
        r.tick_at(at(T0)).await;
    }
    // What a beat killed between recording slot 10 and publishing it leaves behind.
    let mut store = FileStore::open(&state).unwrap();
    let mut s = store.state("trigger-manager");
    let id = task_id("redbeat:", "trigger-manager", plus(10));
    s.last_run_at = Some(plus(10));
    s.total_run_count = 1;
    s.run.pending = Some(Pending { slot: plus(10).to_string(), task_id: id.clone() });
    store.put("trigger-manager", &s).unwrap();
    drop(store);
    let mut r = rig(POLL, &state, BeatConfig::default());
    r.tick_at(plus(12)).await;
    let sent = r.sent("workflow.staging");
    assert_eq!(sent.len(), 1);
    assert_eq!(header(&sent[0], "id").as_str().unwrap(), id);
    // Slot 10 is not sent a third time; slot 20 comes next.
    r.tick_at(plus(20)).await;
    let ids: Vec<String> =
        r.sent("workflow.staging").iter().map(|m| header(m, "id").as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, [id, task_id("redbeat:", "trigger-manager", plus(20))]);
}

#[tokio::test]
async fn a_crontab_follows_the_wall_clock_across_days() {
    let dir = tempfile::tempdir().unwrap();
    let toml = r#"
[beat_schedule.nightly]
task = "reports.nightly"
schedule = "30 2 * * *"
timezone = "Europe/Berlin"
options = { queue = "q" }
"#;
    let mut r = rig(toml, &dir.path().join("state.json"), BeatConfig::default());
    // 2026-03-28 noon UTC; the next night is the spring-forward one.
    let start = at("2026-03-28T12:00:00Z");
    let wake = r.tick_at(start).await;
    assert!(wake <= at("2026-03-29T01:30:00Z"));
    // 02:30 does not exist on 2026-03-29 in Berlin: it runs at 03:30 CEST (01:30 UTC).
    r.tick_at(at("2026-03-29T01:30:00Z")).await;
    r.tick_at(at("2026-03-30T00:30:00Z")).await;
    let ids: Vec<String> = r.sent("q").iter().map(|m| header(m, "id").as_str().unwrap().to_owned()).collect();
    assert_eq!(
        ids,
        [
            task_id("redbeat:", "nightly", at("2026-03-29T01:30:00Z")),
            task_id("redbeat:", "nightly", at("2026-03-30T00:30:00Z"))
        ]
    );
}

#[tokio::test]
async fn the_loop_wakes_at_each_slot_reloads_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let r = rig(POLL, &dir.path().join("state.json"), BeatConfig::default());
    let (memory, clock) = (r.memory.clone(), r.clock.clone());
    let mut ticks = r.beat.ticks();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (reload_tx, reload) = tokio::sync::mpsc::channel(1);
    let running = tokio::spawn(r.beat.run(celeriac_beat::Control { shutdown: shutdown.clone(), reload }));
    ticks.wait_for(|t| *t >= 1).await.unwrap(); // the first tick: the entry starts now
    clock.set(plus(10));
    ticks.wait_for(|t| *t >= 2).await.unwrap();
    assert_eq!(memory.list("workflow.staging", 0).len(), 1);
    // A reload replaces the entry; the next slot of the new one comes 5 s after it is seen.
    reload_tx.send(entries(&POLL.replace("10s", "5s").replace("trigger-manager", "other"))).await.unwrap();
    ticks.wait_for(|t| *t >= 3).await.unwrap();
    clock.set(plus(15));
    ticks.wait_for(|t| *t >= 4).await.unwrap();
    assert_eq!(memory.list("workflow.staging", 0).len(), 2);
    shutdown.cancel();
    running.await.unwrap();
}

//! The Redis store against a private redis-server: the lease (one holder,
//! standby wake-up, release), fencing (a beat that lost the lease cannot
//! record), and entries saved from Rust read back by celeriac and by RedBeat.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed assertion

use std::process::Command;
use std::time::Duration;

use celeriac_beat::redbeat::Keys;
use celeriac_beat::store::{LeaseEvent, Loaded};
use celeriac_beat::{Entry, EntryState, RedisStore};
use celeriac_tests::RedisServer;
use jiff::tz::TimeZone;
use jiff::Timestamp;

async fn store(redis: &RedisServer, ttl: Duration) -> RedisStore {
    let (con, url) = celeriac_beat::store::redis::connect(&redis.url(), None).await.unwrap();
    RedisStore::new(con, url, Keys::new("redbeat:", "redbeat::lock"), ttl, TimeZone::UTC, None)
}

fn entry(name: &str, toml: &str) -> Entry {
    let text = format!("[beat_schedule.{name}]\n{toml}");
    let s = celeriac_config::load_from_str(&text, "", Vec::new()).unwrap().settings;
    Entry::from_settings(name, &s.beat_schedule[name], &TimeZone::UTC, None).unwrap()
}

#[tokio::test]
async fn one_lease_holder_and_fenced_writes() {
    let Some(redis) = celeriac_tests::or_skip("redis-server", RedisServer::start()) else {
        return;
    };
    let ttl = Duration::from_secs(5);
    let (mut a, mut b) = (store(&redis, ttl).await, store(&redis, ttl).await);
    assert_eq!(a.campaign().await.unwrap().0, LeaseEvent::Acquired);
    let (event, wait) = b.campaign().await.unwrap();
    assert_eq!(event, LeaseEvent::Standby);
    assert!(wait > Duration::from_secs(4) && wait <= ttl + Duration::from_millis(1), "{wait:?}");
    assert_eq!(a.campaign().await.unwrap().0, LeaseEvent::Kept);

    let poll = entry("poll", "task = \"t\"\nschedule = 10\n");
    let now = Timestamp::now();
    assert!(a.sync_statics(std::slice::from_ref(&poll), now).await.unwrap());
    let state = EntryState { last_run_at: Some(now), total_run_count: 1, ..EntryState::default() };
    assert_eq!(a.commit(&poll, &state, None).await.unwrap(), Some(true));

    // The lease expires under A (a long pause): B takes it, A can write nothing.
    let mut admin = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
    let _: () = redis::cmd("DEL").arg("redbeat::lock").query(&mut admin).unwrap();
    assert_eq!(b.campaign().await.unwrap().0, LeaseEvent::Acquired);
    assert_eq!(a.commit(&poll, &state, None).await.unwrap(), None, "a fenced write after the lease was lost");
    assert!(!a.holds_lease());
    assert_eq!(a.campaign().await.unwrap().0, LeaseEvent::Standby);
    // A clean stop frees the lease at once.
    b.release().await.unwrap();
    assert_eq!(a.campaign().await.unwrap().0, LeaseEvent::Acquired);
}

#[tokio::test]
async fn entries_saved_from_rust_are_read_by_celeriac_and_redbeat() {
    let (Some(redis), Some(python)) =
        (celeriac_tests::or_skip("redis-server", RedisServer::start()), celeriac_tests::python_peer())
    else {
        return;
    };
    let mut s = store(&redis, Duration::from_secs(5)).await;
    let e = entry(
        "nightly",
        "task = \"reports.nightly\"\nschedule = \"30 2 * * mon-fri\"\nno_overlap = true\noptions = { queue = \"q\" }\n",
    );
    let now = Timestamp::now();
    s.save_entry(&e, now).await.unwrap();
    let loaded = s.load().await.unwrap();
    let [Loaded::Entry(back, state, unknown)] = &loaded[..] else { panic!("{loaded:?}") };
    assert!(back.extras.no_overlap && unknown.is_empty());
    assert_eq!(back.fingerprint(), e.fingerprint());
    assert_eq!(state.last_run_at.map(|t| t.as_microsecond()), Some(now.as_microsecond()));

    let out = Command::new(python)
        .arg(celeriac_tests::repo_root().join("tests/python/redbeat_peer.py"))
        .args(["--redis", &redis.url(), "read", "nightly"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["schedule"]["hour"], serde_json::json!([2]));
    assert_eq!(seen["schedule"]["day_of_week"], serde_json::json!([1, 2, 3, 4, 5]));
    assert_eq!(seen["options"]["queue"], "q");
    assert_eq!(seen["is_due"], false);

    s.delete_entry("nightly").await.unwrap();
    assert!(s.load().await.unwrap().is_empty());
}

/// Runs `tests/python/redbeat_peer.py` with `args` and returns its stdout lines as JSON.
fn peer(python: &std::path::Path, redis: &RedisServer, args: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new(python)
        .arg(celeriac_tests::repo_root().join("tests/python/redbeat_peer.py"))
        .args(["--redis", &redis.url()])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "redbeat_peer {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test]
async fn every_broken_shape_python_writes_is_reported_by_name_and_the_good_entries_load() {
    let (Some(redis), Some(python)) =
        (celeriac_tests::or_skip("redis-server", RedisServer::start()), celeriac_tests::python_peer())
    else {
        return;
    };
    let written = peer(&python, &redis, &["broken"]).remove(0);
    assert_eq!(written["nan_refused"], true, "Redis stores no NaN score");
    let mut s = store(&redis, Duration::from_secs(5)).await;
    let loaded = s.load().await.unwrap();
    let mut broken = std::collections::BTreeMap::new();
    let mut good = Vec::new();
    for item in loaded {
        match item {
            Loaded::Broken { key, reason } => {
                assert!(reason.len() < 2000, "{key}: a reason of {} bytes", reason.len());
                broken.insert(key, reason);
            }
            Loaded::Entry(entry, _, _) => good.push(entry.name.clone()),
        }
    }
    for b in written["broken"].as_array().unwrap() {
        let (key, expect) = (b["key"].as_str().unwrap(), b["expect"].as_str().unwrap());
        let reason = broken.get(key).unwrap_or_else(|| panic!("{key} is not reported broken; good: {good:?}"));
        assert!(reason.contains(expect), "{key}: {reason:?} does not say {expect:?}");
    }
    assert_eq!(broken.len(), written["broken"].as_array().unwrap().len(), "{broken:#?}");
    let mut expected: Vec<String> =
        written["good"].as_array().unwrap().iter().map(|g| g.as_str().unwrap().to_owned()).collect();
    expected.sort();
    good.sort();
    assert_eq!(good, expected);
    // Reading is not repairing: every broken hash is left as it was.
    let mut admin = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
    let members: i64 = redis::cmd("ZCARD").arg("redbeat::schedule").query(&mut admin).unwrap();
    assert_eq!(members as usize, broken.len() + good.len());
}

#[tokio::test]
async fn enabled_is_read_with_pythons_truthiness_as_redbeat_reads_it() {
    let (Some(redis), Some(python)) =
        (celeriac_tests::or_skip("redis-server", RedisServer::start()), celeriac_tests::python_peer())
    else {
        return;
    };
    let python_says = peer(&python, &redis, &["truthiness"]);
    let mut s = store(&redis, Duration::from_secs(5)).await;
    let ours: std::collections::BTreeMap<String, bool> = s
        .load()
        .await
        .unwrap()
        .into_iter()
        .map(|item| match item {
            Loaded::Entry(e, _, _) => (e.name.clone(), e.enabled),
            Loaded::Broken { key, reason } => panic!("{key}: {reason}"),
        })
        .collect();
    assert_eq!(ours.len(), python_says.len());
    for p in &python_says {
        let name = p["name"].as_str().unwrap();
        assert_eq!(ours[name], p["enabled"].as_bool().unwrap(), "enabled = {} ({name})", p["value"]);
    }
    assert!(ours.values().any(|e| *e) && ours.values().any(|e| !*e));
}

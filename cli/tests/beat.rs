//! `celeriac beat` end to end: the real binary against a private redis-server,
//! with Python Celery workers, RedBeat's own classes and a RedBeat beat as
//! peers.
//!
//! - three beats, the leader killed with SIGKILL again and again: every slot of
//!   a 1-second entry is sent exactly once, with no gap longer than the lease;
//! - RedBeat interop both ways, and the shared lease excluding a RedBeat beat;
//! - no-overlap with a slow task on a Python worker; catch-up after a stop;
//! - SIGHUP reloads, `--dry-run`, `--explain`, task-sent events, the health key.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed assertion

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use celeriac_beat::scheduler::task_id;
use celeriac_tests::{wait_until, CeleryWorker, LoggedProcess, RedisServer};
use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn apps_dir() -> PathBuf {
    celeriac_tests::repo_root().join("tests/python/apps")
}

/// Starts `celeriac beat` with the settings `toml` (written beside the redis
/// server's files), from `dir` (where a state file lands), and waits until it runs.
fn beat(redis: &RedisServer, name: &str, toml: &str, flags: &[&str]) -> LoggedProcess {
    let config = redis.dir().join(format!("{name}.toml"));
    std::fs::write(&config, toml).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_celeriac"));
    command.args(["beat", "--config"]).arg(&config).args(["-l", "info"]).args(flags).current_dir(redis.dir());
    let log = redis.dir().join(format!("{name}.log"));
    let process = LoggedProcess::spawn(command, name, log, "beat: Starting...").unwrap();
    process.wait_ready(WAIT).unwrap();
    process
}

fn admin(redis: &RedisServer) -> redis::Connection {
    redis::Client::open(redis.url()).unwrap().get_connection().unwrap()
}

/// The task messages on `queue`, oldest first.
fn messages(con: &mut redis::Connection, queue: &str) -> Vec<Value> {
    let raw: Vec<String> = redis::cmd("LRANGE").arg(queue).arg(0).arg(-1).query(con).unwrap();
    raw.iter().rev().map(|m| serde_json::from_str(m).unwrap()).collect()
}

fn ids(messages: &[Value]) -> Vec<String> {
    messages.iter().map(|m| m["headers"]["id"].as_str().unwrap().to_owned()).collect()
}

fn get(con: &mut redis::Connection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query(con).unwrap()
}

fn hget(con: &mut redis::Connection, key: &str, field: &str) -> Option<String> {
    redis::cmd("HGET").arg(key).arg(field).query(con).unwrap()
}

/// The pid of the beat that wrote `health:beat` last (the leader).
fn leader_pid(con: &mut redis::Connection) -> Option<u32> {
    let record: Value = serde_json::from_str(&get(con, "health:beat")?).ok()?;
    record["pid"].as_u64().map(|p| p as u32)
}

/// `meta.last_run_at` and `total_run_count` of a RedBeat hash.
fn meta(con: &mut redis::Connection, key: &str) -> (Timestamp, u64) {
    let meta = hget(con, key, "meta").unwrap();
    let (last, count) = celeriac_beat::redbeat::meta_from_json(Some(&meta)).unwrap();
    (last.unwrap(), count)
}

/// When each run of `entry` was sent, from the beats' log lines.
fn send_times(logs: &[PathBuf], entry: &str) -> Vec<Timestamp> {
    let sending = format!("Sending due task {entry} ");
    let again = format!("Sent {entry} ");
    let mut times: Vec<Timestamp> = logs
        .iter()
        .flat_map(|path| {
            std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect::<Vec<_>>()
        })
        .filter(|line| line.contains(&sending) || line.contains(&again))
        .filter_map(|line| line.split_whitespace().next().and_then(|t| t.parse().ok()))
        .collect();
    times.sort();
    times
}

#[test]
fn three_beats_send_every_slot_once_while_leaders_are_killed() {
    let (Some(redis), Some(_)) =
        (celeriac_tests::or_skip("redis-server", RedisServer::start()), celeriac_tests::python_peer())
    else {
        return;
    };
    let lease = 2.0;
    let toml = format!(
        r#"
broker_url = "{url}"
redbeat_redis_url = "{url}"
redbeat_lock_timeout = {lease}
beat_max_loop_interval = 1
beat_health_ttl = 3

[beat_schedule.pulse]
task = "beat_app.tick"
schedule = 1
catch_up = "all"
options = {{ queue = "pulse" }}
"#,
        url = redis.url()
    );
    let mut con = admin(&redis);
    let mut beats: Vec<LoggedProcess> = (0..3).map(|i| beat(&redis, &format!("beat-{i}"), &toml, &[])).collect();
    let mut logs: Vec<PathBuf> = beats.iter().map(|b| b.log_path().to_path_buf()).collect();
    assert!(wait_until(WAIT, || leader_pid(&mut con).is_some()), "no beat became the leader");
    for round in 0..4 {
        // Let the leader send a few slots, then kill it mid-flight.
        let before = messages(&mut con, "pulse").len();
        assert!(wait_until(WAIT, || messages(&mut con, "pulse").len() >= before + 2), "round {round}: no sends");
        let pid = leader_pid(&mut con).unwrap();
        let index = beats.iter().position(|b| b.id() == pid).expect("the leader is one of ours");
        let mut dead = beats.remove(index);
        dead.signal("KILL");
        assert!(dead.wait_timeout(WAIT).is_some());
        let name = format!("beat-{}", 3 + round);
        beats.push(beat(&redis, &name, &toml, &[]));
        logs.push(beats.last().unwrap().log_path().to_path_buf());
        assert!(
            wait_until(WAIT, || leader_pid(&mut con).is_some_and(|p| p != pid)),
            "round {round}: no standby took over from {pid}"
        );
    }
    let before = messages(&mut con, "pulse").len();
    assert!(wait_until(WAIT, || messages(&mut con, "pulse").len() >= before + 2));
    for b in &mut beats {
        b.signal("TERM");
    }
    for b in &mut beats {
        assert!(b.wait_timeout(WAIT).unwrap().success());
    }
    assert_eq!(get(&mut con, "redbeat::lock"), None, "a clean stop releases the lease");

    // Every slot from the first to the last, each sent once: the ids are the
    // slots' own, so the queue must hold exactly the ids of the grid.
    let (last, count) = meta(&mut con, "redbeat:pulse");
    let sent = ids(&messages(&mut con, "pulse"));
    let expected: Vec<String> = (0..count as i64)
        .map(|k| {
            task_id("redbeat:", "pulse", last.checked_sub(SignedDuration::from_secs(count as i64 - 1 - k)).unwrap())
        })
        .collect();
    let unique: HashSet<&String> = sent.iter().collect();
    assert_eq!(unique.len(), sent.len(), "a slot was sent twice");
    assert_eq!(sent, expected, "the queue is not the grid's slots, in order, each once");
    assert!(count >= 10, "only {count} slots in the run");

    let times = send_times(&logs, "pulse");
    assert_eq!(times.len(), sent.len(), "a send without its log line");
    let gap = times.windows(2).map(|w| w[1].duration_since(w[0])).max().unwrap();
    eprintln!("{count} slots; longest gap between sends {gap:#}, lease {lease}s");
    assert!(gap.as_secs_f64() < lease + 1.0, "a gap of {gap:#} with a {lease}s lease");
}

#[test]
fn a_redis_outage_pauses_beat_and_it_resumes_without_a_restart() {
    let Some(mut redis) = celeriac_tests::or_skip("redis-server", RedisServer::start()) else {
        return;
    };
    let toml = format!(
        "broker_url = \"{url}\"\nredbeat_redis_url = \"{url}\"\nredbeat_lock_timeout = 3\nbeat_max_loop_interval = 1\n\n\
         [beat_schedule.pulse]\ntask = \"beat_app.tick\"\nschedule = 1\noptions = {{ queue = \"pulse\" }}\n",
        url = redis.url()
    );
    let mut b = beat(&redis, "beat", &toml, &[]);
    let mut con = admin(&redis);
    assert!(wait_until(WAIT, || messages(&mut con, "pulse").len() >= 2));
    // The server dies (and comes back empty, as without persistence).
    redis.kill();
    assert!(wait_until(WAIT, || b.log().contains("cannot reach Redis")), "{}", b.log());
    redis.restart().unwrap();
    let mut con = admin(&redis);
    assert!(wait_until(WAIT, || messages(&mut con, "pulse").len() >= 2), "beat did not resume:\n{}", b.log());
    assert!(b.try_wait().is_none(), "beat exited on a lost connection");
    b.signal("TERM");
    assert!(b.wait_timeout(WAIT).unwrap().success());
}

/// Runs `tests/python/redbeat_peer.py` and returns its JSON lines.
fn redbeat_peer(redis: &RedisServer, args: &[&str]) -> Vec<Value> {
    let python = celeriac_tests::python().unwrap();
    let out = Command::new(python)
        .arg(celeriac_tests::repo_root().join("tests/python/redbeat_peer.py"))
        .args(["--redis", &redis.url()])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "redbeat_peer {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn redbeat_entries_run_in_celeriac_and_celeriacs_entries_read_in_redbeat() {
    let (Some(redis), Some(_)) =
        (celeriac_tests::or_skip("redis-server", RedisServer::start()), celeriac_tests::python_peer())
    else {
        return;
    };
    let toml = format!(
        r#"
broker_url = "{url}"
redbeat_redis_url = "{url}"
redbeat_lock_timeout = 3
beat_max_loop_interval = 1

[beat_schedule.celeriac-interval]
task = "beat_app.tick"
schedule = "1s"
args = [1, "a"]
options = {{ queue = "interop", expires = 30 }}

[beat_schedule.celeriac-cron]
task = "beat_app.tick"
schedule = "*/5 9-17 * * mon-fri"

[beat_schedule.celeriac-once]
task = "beat_app.tick"
schedule = "2030-01-01T00:00:00Z"
"#,
        url = redis.url()
    );
    let mut con = admin(&redis);
    let mut b = beat(&redis, "beat", &toml, &[]);
    // An application adds an entry with RedBeat's own class while beat runs.
    redbeat_peer(
        &redis,
        &[
            "create",
            "py-every",
            "beat_app.tick",
            "--every",
            "1",
            "--args",
            "[7]",
            "--options",
            r#"{"queue": "interop"}"#,
        ],
    );
    let sent_by = |con: &mut redis::Connection, repr: &str| {
        messages(con, "interop").iter().filter(|m| m["headers"]["argsrepr"] == repr).count()
    };
    assert!(wait_until(WAIT, || sent_by(&mut con, "[7]") >= 2), "the RedBeat entry was not sent:\n{}", b.log());
    assert!(sent_by(&mut con, "[1, 'a']") >= 1);
    let m = messages(&mut con, "interop").into_iter().find(|m| m["headers"]["argsrepr"] == "[7]").unwrap();
    assert_eq!(m["headers"]["task"], "beat_app.tick");
    assert_eq!(m["headers"]["celery_beat_task"], true);

    // RedBeat reads what celeriac wrote: definitions, schedules, last runs.
    let read = redbeat_peer(&redis, &["read", "celeriac-interval", "celeriac-cron", "celeriac-once", "py-every"]);
    let by_name: BTreeMap<&str, &Value> = read.iter().map(|r| (r["name"].as_str().unwrap(), r)).collect();
    let interval = by_name["celeriac-interval"];
    assert_eq!(interval["schedule"], serde_json::json!({"type": "interval", "every": 1.0, "relative": false}));
    assert_eq!(
        (interval["args"].clone(), interval["options"]["queue"].clone()),
        (serde_json::json!([1, "a"]), "interop".into())
    );
    let (last, count) = meta(&mut con, "redbeat:celeriac-interval");
    assert!(count >= 1 && interval["total_run_count"].as_u64().unwrap() >= 1);
    let seen = interval["last_run_at"].as_f64().unwrap();
    assert!((seen - last.as_millisecond() as f64 / 1000.0).abs() < 5.0, "{seen} vs {last}");
    if interval["is_due"] == false {
        // RedBeat's next run is celeriac's next slot: one second after the last.
        let next = interval["now"].as_f64().unwrap() + interval["next_in"].as_f64().unwrap();
        assert!((next - seen - 1.0).abs() < 0.05, "RedBeat's next run {next}, last slot {seen}");
    }
    let cron = &by_name["celeriac-cron"]["schedule"];
    assert_eq!(cron["minute"], serde_json::json!((0..60).step_by(5).collect::<Vec<_>>()));
    assert_eq!((cron["hour"][0].clone(), cron["day_of_week"].clone()), (9.into(), serde_json::json!([1, 2, 3, 4, 5])));
    let once = by_name["celeriac-once"];
    assert_eq!(once["schedule"]["type"], "rrule");
    assert_eq!(once["is_due"], false, "RedBeat does not run the 2030 one-off now");
    assert!(by_name["py-every"]["last_run_at"].is_number(), "celeriac recorded its runs in RedBeat's meta");

    // Deleting the entry from Python stops it, without a restart.
    redbeat_peer(&redis, &["delete", "py-every"]);
    let settled = sent_by(&mut con, "[7]");
    let others = sent_by(&mut con, "[1, 'a']");
    assert!(wait_until(WAIT, || sent_by(&mut con, "[1, 'a']") >= others + 2));
    assert!(sent_by(&mut con, "[7]") <= settled + 1, "a deleted entry kept running");
    b.signal("TERM");
    assert!(b.wait_timeout(WAIT).unwrap().success());
}

/// A RedBeat beat (`celery beat -S redbeat.RedBeatScheduler`) from the test app.
fn redbeat_beat(redis: &RedisServer, name: &str) -> LoggedProcess {
    let python = celeriac_tests::python().unwrap();
    let mut command = Command::new(python);
    command
        // DEBUG: RedBeat then logs each tick (lock extended, entries selected,
        // sleep), so a failure shows where a stalled RedBeat spent its time.
        .args(["-m", "celery", "-A", "beat_app", "beat", "-S", "redbeat.RedBeatScheduler", "--loglevel", "DEBUG"])
        .args(["-s", &redis.dir().join(format!("{name}-schedule")).display().to_string()])
        .current_dir(apps_dir())
        .env("PYTHONPATH", apps_dir())
        .env("CELERIAC_TEST_BROKER", redis.url())
        .env("CELERIAC_TEST_REDBEAT", redis.url())
        .env("CELERIAC_TEST_REDBEAT_LOCK", "3");
    let process =
        LoggedProcess::spawn(command, name, redis.dir().join(format!("{name}.log")), "beat: Starting...").unwrap();
    process.wait_ready(WAIT).unwrap();
    process
}

/// Whether a task id is one of celeriac's (UUID version 5, derived from the
/// slot) rather than RedBeat's (version 4).
fn celeriacs(id: &str) -> bool {
    id.as_bytes().get(14) == Some(&b'5')
}

#[test]
fn the_lease_is_redbeats_lock_so_a_redbeat_beat_is_excluded_during_a_migration() {
    let (Some(redis), Some(_)) =
        (celeriac_tests::or_skip("redis-server", RedisServer::start()), celeriac_tests::python_peer())
    else {
        return;
    };
    let toml = format!(
        "broker_url = \"{url}\"\nredbeat_redis_url = \"{url}\"\nredbeat_lock_timeout = 3\nbeat_max_loop_interval = 1\n",
        url = redis.url()
    );
    let mut con = admin(&redis);
    redbeat_peer(
        &redis,
        &["create", "shared", "beat_app.tick", "--every", "1", "--options", r#"{"queue": "migrate"}"#],
    );
    let sent = |con: &mut redis::Connection| ids(&messages(con, "migrate"));
    // RedBeat leads; celeriac stands by and sends nothing.
    let mut redbeat = redbeat_beat(&redis, "redbeat-1");
    assert!(wait_until(WAIT, || sent(&mut con).len() >= 2), "RedBeat sent nothing:\n{}", redbeat.log());
    let mut ours = beat(&redis, "celeriac", &toml, &[]);
    let mark = sent(&mut con).len();
    assert!(wait_until(WAIT, || sent(&mut con).len() >= mark + 2));
    assert!(sent(&mut con).iter().all(|id| !celeriacs(id)), "celeriac sent while RedBeat held the lock");
    // RedBeat stops and releases the lock: celeriac takes over the same entry.
    redbeat.signal("TERM");
    assert!(redbeat.wait_timeout(WAIT).is_some());
    assert!(wait_until(WAIT, || sent(&mut con).iter().filter(|id| celeriacs(id)).count() >= 2), "{}", ours.log());
    // And back: a RedBeat beat waits while celeriac leads, then takes over.
    let mut redbeat = redbeat_beat(&redis, "redbeat-2");
    let mark = sent(&mut con).len();
    assert!(wait_until(WAIT, || sent(&mut con).len() >= mark + 2));
    assert!(sent(&mut con)[mark..].iter().all(|id| celeriacs(id)), "RedBeat sent while celeriac held the lock");
    ours.signal("TERM");
    assert!(ours.wait_timeout(WAIT).unwrap().success());
    let mark = sent(&mut con).len();
    assert!(
        wait_until(WAIT, || sent(&mut con)[mark..].iter().filter(|id| !celeriacs(id)).count() >= 2),
        "{}",
        redbeat.log()
    );
    // One sender at a time throughout: consecutive sends at least ~1 s apart
    // would need send times; the ids show who sent, and each phase had one.
    redbeat.signal("TERM");
    let _ = redbeat.wait_timeout(WAIT);
}

#[test]
fn no_overlap_holds_back_a_slow_poll_running_on_a_python_worker() {
    let (Some(redis), Some(python)) =
        (celeriac_tests::or_skip("redis-server", RedisServer::start()), celeriac_tests::python_peer())
    else {
        return;
    };
    let backend = redis.url_db(1);
    let worker = CeleryWorker::builder(&python, "beat_app", &apps_dir())
        .queues("slow")
        .args(&["--pool=threads", "-c", "4", "--loglevel=INFO"])
        .env("CELERIAC_TEST_BROKER", &redis.url())
        .env("CELERIAC_TEST_BACKEND", &backend)
        .log(redis.dir().join("worker.log"))
        .start()
        .unwrap();
    worker.wait_ready(WAIT).unwrap();
    let toml = format!(
        r#"
broker_url = "{url}"
result_backend = "{backend}"
beat_max_loop_interval = 1

[beat_schedule.slow]
task = "beat_app.slow_poll"
schedule = 1
args = [1.6]
no_overlap = true
options = {{ queue = "slow" }}
"#,
        url = redis.url()
    );
    let mut b = beat(&redis, "beat", &toml, &["-s", "beat-state.json"]);
    let mut results = redis::Client::open(backend.as_str()).unwrap().get_connection().unwrap();
    let runs = |con: &mut redis::Connection| -> Vec<String> {
        redis::cmd("LRANGE").arg("beat_app:runs").arg(0).arg(-1).query(con).unwrap()
    };
    assert!(
        wait_until(WAIT, || runs(&mut results).iter().filter(|r| r.starts_with("end")).count() >= 3),
        "{}",
        b.log()
    );
    b.signal("TERM");
    assert!(b.wait_timeout(WAIT).unwrap().success());
    // Runs one after another: each starts after the previous one ended.
    let mut spans: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for line in runs(&mut results) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let t: f64 = parts[2].parse().unwrap();
        let span = spans.entry(parts[1].to_owned()).or_insert((f64::MAX, f64::MAX));
        if parts[0] == "start" {
            span.0 = t
        } else {
            span.1 = t
        }
    }
    let mut spans: Vec<(f64, f64)> = spans.into_values().collect();
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    for w in spans.windows(2) {
        assert!(w[1].0 >= w[0].1, "runs overlap: {spans:?}");
    }
    let log = b.log();
    assert!(log.contains("Skipping due task slow (beat_app.slow_poll)"), "{log}");
    assert!(log.contains("is still PENDING") || log.contains("is still STARTED"), "{log}");
}

#[test]
fn after_a_stop_entries_catch_up_as_configured() {
    let Some(redis) = celeriac_tests::or_skip("redis-server", RedisServer::start()) else {
        return;
    };
    let toml = format!(
        r#"
broker_url = "{url}"
beat_max_loop_interval = 1

[beat_schedule.every-missed]
task = "beat_app.tick"
schedule = 1
catch_up = "all"
options = {{ queue = "all" }}

[beat_schedule.once]
task = "beat_app.tick"
schedule = 1
options = {{ queue = "once" }}
"#,
        url = redis.url()
    );
    let mut con = admin(&redis);
    let state = redis.dir().join("beat-state.json");
    let flags = ["-s", "beat-state.json"];
    let mut b = beat(&redis, "beat-1", &toml, &flags);
    assert!(wait_until(WAIT, || messages(&mut con, "all").len() >= 2));
    b.signal("TERM");
    assert!(b.wait_timeout(WAIT).unwrap().success());
    let stopped = (messages(&mut con, "all").len(), messages(&mut con, "once").len());
    // Down for a while: several slots pass unsent.
    let file: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let before =
        celeriac_beat::redbeat::meta_from_json(Some(&file["entries"]["every-missed"]["meta"].to_string())).unwrap();
    std::thread::sleep(Duration::from_millis(3500)); // downtime is the subject here, not a wait for an event
    let mut b = beat(&redis, "beat-2", &toml, &flags);
    assert!(wait_until(WAIT, || messages(&mut con, "once").len() > stopped.1));
    b.signal("TERM");
    assert!(b.wait_timeout(WAIT).unwrap().success());
    // `all` sent every slot of the grid from before the stop on; `once` one for the gap.
    let file: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let (last, count) =
        celeriac_beat::redbeat::meta_from_json(Some(&file["entries"]["every-missed"]["meta"].to_string())).unwrap();
    let first = before.0.unwrap().checked_sub(SignedDuration::from_secs(before.1 as i64 - 1)).unwrap();
    let expected: Vec<String> = (0..count as i64)
        .map(|k| task_id("redbeat:", "every-missed", first.checked_add(SignedDuration::from_secs(k)).unwrap()))
        .collect();
    assert_eq!(last.unwrap(), first.checked_add(SignedDuration::from_secs(count as i64 - 1)).unwrap());
    assert_eq!(ids(&messages(&mut con, "all")), expected, "catch_up = all: every slot once, in order");
    let all_after = messages(&mut con, "all").len() - stopped.0;
    let once_after = messages(&mut con, "once").len() - stopped.1;
    assert!(all_after >= 3 && once_after < all_after, "all sent {all_after}, once {once_after}");
    let log = b.log();
    assert!(log.contains("once missed"), "{log}");
}

#[test]
fn sighup_reloads_the_schedule_and_every_send_has_a_task_sent_event() {
    let (Some(redis), Some(python)) =
        (celeriac_tests::or_skip("redis-server", RedisServer::start()), celeriac_tests::python_peer())
    else {
        return;
    };
    let entry = |name: &str, queue: &str| {
        format!(
            "broker_url = \"{url}\"\nbeat_max_loop_interval = 1\n\n[beat_schedule.{name}]\ntask = \"beat_app.tick\"\nschedule = 1\noptions = {{ queue = \"{queue}\" }}\n",
            url = redis.url()
        )
    };
    // Celery's own event receiver, listening before beat starts.
    let mut events = Command::new(python)
        .arg(celeriac_tests::repo_root().join("tests/python/capture_events.py"))
        .args(["--broker", &redis.url(), "--types", "task-sent", "--limit", "2", "--timeout", "30"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut con = admin(&redis);
    assert!(wait_until(WAIT, || redis::cmd("PUBSUB").arg("NUMPAT").query::<i64>(&mut con).unwrap() > 0));
    let mut b = beat(&redis, "beat", &entry("first", "q1"), &["-s", "beat-state.json"]);
    let seen: Vec<Value> = BufReader::new(events.stdout.take().unwrap())
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    assert!(events.wait().unwrap().success());
    assert_eq!(seen.len(), 2, "two sends, two task-sent events");
    let sent = ids(&messages(&mut con, "q1"));
    for e in &seen {
        assert_eq!((e["name"].as_str(), e["queue"].as_str()), (Some("beat_app.tick"), Some("q1")), "{e}");
        assert!(sent.contains(&e["uuid"].as_str().unwrap().to_owned()), "{e} is not a sent task: {sent:?}");
    }
    // The file now has another entry; SIGHUP swaps the schedule without a restart.
    std::fs::write(redis.dir().join("beat.toml"), entry("second", "q2")).unwrap();
    b.signal("HUP");
    assert!(wait_until(WAIT, || !messages(&mut con, "q2").is_empty()), "{}", b.log());
    let first_count = messages(&mut con, "q1").len();
    assert!(wait_until(WAIT, || messages(&mut con, "q2").len() >= 3));
    assert!(messages(&mut con, "q1").len() <= first_count + 1, "the removed entry kept running");
    // A broken file keeps the running schedule.
    std::fs::write(redis.dir().join("beat.toml"), "[beat_schedule.x]\ntask = \"t\"\nschedule = \"every so often\"\n")
        .unwrap();
    b.signal("HUP");
    let now = messages(&mut con, "q2").len();
    assert!(wait_until(WAIT, || messages(&mut con, "q2").len() >= now + 2));
    assert!(b.log().contains("keeping the current schedule"), "{}", b.log());
    b.signal("TERM");
    assert!(b.wait_timeout(WAIT).unwrap().success());
    assert!(b.log().contains("Reloaded beat_schedule: 1 static entries"));
}

#[test]
fn dry_run_sends_nothing_and_explain_shows_fire_times_in_zone_and_utc() {
    let Some(redis) = celeriac_tests::or_skip("redis-server", RedisServer::start()) else {
        return;
    };
    let toml = format!(
        r#"
broker_url = "{url}"
redbeat_redis_url = "{url}"
beat_max_loop_interval = 1
timezone = "America/New_York"

[beat_schedule.pulse]
task = "beat_app.tick"
schedule = 1
options = {{ queue = "dry" }}

[beat_schedule.nightly]
task = "reports.nightly"
schedule = "30 2 * * *"
timezone = "Europe/Berlin"
"#,
        url = redis.url()
    );
    let mut con = admin(&redis);
    let mut b = beat(&redis, "beat", &toml, &["--dry-run"]);
    assert!(wait_until(WAIT, || b.log().contains("Would send due task pulse")), "{}", b.log());
    b.signal("TERM");
    assert!(b.wait_timeout(WAIT).unwrap().success());
    assert!(messages(&mut con, "dry").is_empty());
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con).unwrap();
    assert!(keys.is_empty(), "a dry run wrote {keys:?}");

    let config = redis.dir().join("beat.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_celeriac"))
        .args(["beat", "--config"])
        .arg(&config)
        .args(["--explain", "--count", "3"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("nightly  reports.nightly"), "{text}");
    assert!(text.contains("02:30:00 CE") && text.contains("Europe/Berlin"), "{text}");
    assert_eq!(text.lines().filter(|l| l.contains("02:30:00 CE") && l.ends_with(":30:00Z")).count(), 3, "{text}");
    assert!(text.contains("every 1s"), "{text}");
    let bad = Command::new(env!("CARGO_BIN_EXE_celeriac"))
        .args(["beat", "-b", "redis://127.0.0.1:1/0", "-s"])
        .arg(redis.dir().join("x.json"))
        .args(["--config"])
        .arg(write(redis.dir(), "bad.toml", "[beat_schedule.x]\ntask = \"t\"\nschedule = \"0 0 * * 7\"\n"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("beat_schedule.x") && err.contains("Sunday is 0"), "{err}");
}

/// The one message on the queue named `queue` (in whichever priority list),
/// as sent, with what differs between any two sends (ids, times, host, the
/// queue's name) blanked in place, so key order is compared too.
fn normalized_message(con: &mut redis::Connection, queue: &str) -> (String, String) {
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{queue}*")).query(con).unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let mut raw: String = redis::cmd("LINDEX").arg(&keys[0]).arg(-1).query(con).unwrap();
    let m: Value = serde_json::from_str(&raw).unwrap();
    let expires = m["headers"]["expires"].as_str().unwrap();
    assert!(expires.ends_with("+00:00"), "{expires}");
    let volatile = [
        &m["headers"]["id"],
        &m["headers"]["origin"],
        &m["headers"]["expires"],
        &m["properties"]["reply_to"],
        &m["properties"]["delivery_tag"],
    ];
    for v in volatile {
        raw = raw.replace(&format!("\"{}\"", v.as_str().unwrap()), "\"-\"");
    }
    raw = raw.replace(&format!("\"routing_key\": \"{queue}\""), "\"routing_key\": \"-\"");
    (keys[0].trim_start_matches(queue).to_owned(), raw)
}

#[test]
fn messages_are_the_ones_celery_beat_sends() {
    let (Some(redis), Some(python)) =
        (celeriac_tests::or_skip("redis-server", RedisServer::start()), celeriac_tests::python_peer())
    else {
        return;
    };
    let entry = |queue: &str| {
        serde_json::json!({"task": "dc.unknown_here", "schedule": 1, "args": [1, "x"], "kwargs": {"k": 2},
                           "options": {"queue": queue, "expires": 30, "priority": 5, "headers": {"tenant": "dc1"}}})
    };
    let mut con = admin(&redis);
    // celery beat (its default scheduler) with the entry on queue `py`...
    let mut command = Command::new(&python);
    command
        .args(["-m", "celery", "-A", "beat_app", "beat", "--loglevel", "INFO", "-s"])
        .arg(redis.dir().join("celerybeat-schedule"))
        .current_dir(apps_dir())
        .env("PYTHONPATH", apps_dir())
        .env("CELERIAC_TEST_BROKER", redis.url())
        .env("CELERIAC_TEST_BEAT_SCHEDULE", serde_json::json!({"e": entry("py")}).to_string());
    let mut celery =
        LoggedProcess::spawn(command, "celery beat", redis.dir().join("celery-beat.log"), "beat: Starting...").unwrap();
    celery.wait_ready(WAIT).unwrap();
    // ... and celeriac beat with the same entry on queue `rs`.
    let toml = format!(
        r#"
broker_url = "{url}"
beat_max_loop_interval = 1
[beat_schedule.e]
task = "dc.unknown_here"
schedule = 1
args = [1, "x"]
kwargs = {{ k = 2 }}
options = {{ queue = "rs", expires = 30, priority = 5, headers = {{ tenant = "dc1" }} }}
"#,
        url = redis.url()
    );
    let mut ours = beat(&redis, "beat", &toml, &["-s", "beat-state.json"]);
    let has = |con: &mut redis::Connection, q: &str| {
        !redis::cmd("KEYS").arg(format!("{q}*")).query::<Vec<String>>(con).unwrap().is_empty()
    };
    assert!(wait_until(WAIT, || has(&mut con, "py") && has(&mut con, "rs")), "{}", celery.log());
    celery.signal("TERM");
    ours.signal("TERM");
    let _ = celery.wait_timeout(WAIT);
    assert!(ours.wait_timeout(WAIT).unwrap().success());
    let (py_list, py) = normalized_message(&mut con, "py");
    let (rs_list, rs) = normalized_message(&mut con, "rs");
    assert_eq!(rs_list, py_list, "the same priority list");
    assert_eq!(
        serde_json::to_string(&rs).unwrap(),
        serde_json::to_string(&py).unwrap(),
        "celeriac's message differs from celery beat's"
    );
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The health record of the leading beat.
fn health(con: &mut redis::Connection) -> Option<Value> {
    serde_json::from_str(&get(con, "health:beat")?).ok()
}

/// How many lines of `log` report `key` as broken.
fn reports(log: &str, key: &str) -> usize {
    let needle = format!("Entry {key} cannot be run");
    log.lines().filter(|l| l.contains(&needle)).count()
}

#[test]
fn broken_entries_written_by_python_are_reported_and_skipped_by_leader_and_standby() {
    let (Some(redis), Some(_)) =
        (celeriac_tests::or_skip("redis-server", RedisServer::start()), celeriac_tests::python_peer())
    else {
        return;
    };
    // No redbeat_redis_url: state and lease in the broker's Redis.
    let toml = format!(
        r#"
broker_url = "{url}"
redbeat_lock_timeout = 2
beat_max_loop_interval = 1
beat_health_ttl = 3

[beat_schedule.pulse]
task = "beat_app.tick"
schedule = 1
args = ["pulse"]
options = {{ queue = "good" }}
"#,
        url = redis.url()
    );
    let mut con = admin(&redis);
    let mut beats = vec![beat(&redis, "beat-0", &toml, &[]), beat(&redis, "beat-1", &toml, &[])];
    assert!(wait_until(WAIT, || leader_pid(&mut con).is_some()), "no beat became the leader");
    redbeat_peer(
        &redis,
        &[
            "create",
            "good-redbeat",
            "beat_app.tick",
            "--every",
            "1",
            "--args",
            r#"["good-redbeat"]"#,
            "--options",
            r#"{"queue": "good"}"#,
        ],
    );
    let written = redbeat_peer(&redis, &["broken"]).remove(0);
    let broken: Vec<(String, String)> = written["broken"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["key"].as_str().unwrap().to_owned(), b["expect"].as_str().unwrap().to_owned()))
        .collect();
    let mut good: Vec<String> =
        written["good"].as_array().unwrap().iter().map(|g| g.as_str().unwrap().to_owned()).collect();
    good.extend(["pulse".to_owned(), "good-redbeat".to_owned()]);
    let sends = |con: &mut redis::Connection, label: &str| {
        let repr = format!("['{label}']");
        messages(con, "good").iter().filter(|m| m["headers"]["argsrepr"] == repr.as_str()).count()
    };
    let all_sent = |con: &mut redis::Connection, at_least: usize| good.iter().all(|g| sends(con, g) >= at_least);

    // Every broken entry in the health key, with its reason; the good ones run.
    let reported = |con: &mut redis::Connection| {
        health(con).is_some_and(|h| {
            h["broken_entries"] == broken.len()
                && broken.iter().all(|(k, expect)| h["broken"][k].as_str().is_some_and(|r| r.contains(expect)))
        })
    };
    assert!(wait_until(WAIT, || reported(&mut con)), "{:#}", health(&mut con).unwrap_or_default());
    assert!(
        wait_until(WAIT, || all_sent(&mut con, 3)),
        "{:?}",
        good.iter().map(|g| sends(&mut con, g)).collect::<Vec<_>>()
    );
    assert!(messages(&mut con, "broken").is_empty(), "a broken entry was sent");
    for b in &mut beats {
        assert!(b.try_wait().is_none(), "a beat exited:\n{}", b.log());
    }
    // Each broken entry is logged once by the leader, not at every tick.
    let leader = leader_pid(&mut con).unwrap();
    let index = beats.iter().position(|b| b.id() == leader).unwrap();
    let log = beats[index].log();
    for (key, _) in &broken {
        assert_eq!(reports(&log, key), 1, "{key}:\n{log}");
    }

    // A fix runs; a different breakage is logged again, once.
    let fixed = r#"{"name": "bad-args-text", "task": "beat_app.tick", "args": ["fixed"], "options": {"queue": "good"},
                    "schedule": {"__type__": "interval", "every": 1.0, "relative": false}}"#;
    redbeat_peer(&redis, &["definition", "bad-args-text", fixed]);
    let worse = r#"{"name": "bad-every-text", "task": "t", "schedule": {"__type__": "interval", "every": -1}}"#;
    redbeat_peer(&redis, &["definition", "bad-every-text", worse]);
    assert!(wait_until(WAIT, || sends(&mut con, "fixed") >= 2), "{}", beats[index].log());
    assert!(wait_until(WAIT, || health(&mut con).is_some_and(|h| h["broken_entries"] == broken.len() - 1)));
    let log = beats[index].log();
    assert!(log.contains("Entry redbeat:bad-args-text is no longer broken"), "{log}");
    assert_eq!(reports(&log, "redbeat:bad-every-text"), 2, "{log}");
    assert!(log.lines().any(|l| l.contains("redbeat:bad-every-text cannot be run") && l.contains("every=-1")));

    // The leader dies; the standby takes over without tripping on any of them.
    let mut dead = beats.remove(index);
    dead.signal("KILL");
    assert!(dead.wait_timeout(WAIT).is_some());
    assert!(wait_until(WAIT, || leader_pid(&mut con).is_some_and(|p| p != leader)), "no takeover");
    let mark: Vec<usize> = good.iter().map(|g| sends(&mut con, g)).collect();
    assert!(
        wait_until(WAIT, || good.iter().zip(&mark).all(|(g, m)| sends(&mut con, g) >= m + 2)),
        "{}",
        beats[0].log()
    );
    assert!(wait_until(WAIT, || health(&mut con).is_some_and(|h| h["broken_entries"] == broken.len() - 1)));
    assert!(beats[0].try_wait().is_none(), "the new leader exited:\n{}", beats[0].log());
    let log = beats[0].log();
    for (key, _) in broken.iter().filter(|(k, _)| k != "redbeat:bad-args-text") {
        assert_eq!(reports(&log, key), 1, "{key}:\n{log}");
    }
    // Broken entries are left as they were written.
    let kept: bool = redis::cmd("HEXISTS").arg("redbeat:bad-not-json").arg("definition").query(&mut con).unwrap();
    assert!(kept);
    beats[0].signal("TERM");
    assert!(beats[0].wait_timeout(WAIT).unwrap().success());
}

#[test]
fn two_beats_on_one_redis_broker_share_state_and_lease_by_default() {
    let Some(redis) = celeriac_tests::or_skip("redis-server", RedisServer::start()) else {
        return;
    };
    let lease = 2.0;
    let toml = format!(
        r#"
broker_url = "{url}"
redbeat_lock_timeout = {lease}
beat_max_loop_interval = 1

[beat_schedule.pulse]
task = "beat_app.tick"
schedule = 1
catch_up = "all"
options = {{ queue = "pulse" }}
"#,
        url = redis.url()
    );
    let mut con = admin(&redis);
    let mut beats = vec![beat(&redis, "beat-a", &toml, &[]), beat(&redis, "beat-b", &toml, &[])];
    assert!(wait_until(WAIT, || messages(&mut con, "pulse").len() >= 3), "{}", beats[0].log());
    assert!(get(&mut con, "redbeat::lock").is_some(), "the lease is in the broker's Redis");
    for b in &beats {
        let log = b.log();
        assert!(log.contains("State and leader lease in") && log.contains("the broker's Redis"), "{log}");
    }
    let pid = leader_pid(&mut con).unwrap();
    let index = beats.iter().position(|b| b.id() == pid).unwrap();
    let mut dead = beats.remove(index);
    dead.signal("KILL");
    assert!(dead.wait_timeout(WAIT).is_some());
    assert!(wait_until(WAIT, || leader_pid(&mut con).is_some_and(|p| p != pid)));
    let before = messages(&mut con, "pulse").len();
    assert!(wait_until(WAIT, || messages(&mut con, "pulse").len() >= before + 3));
    beats[0].signal("TERM");
    assert!(beats[0].wait_timeout(WAIT).unwrap().success());
    assert!(!redis.dir().join("celerybeat-schedule.json").exists(), "a state file was written");

    // Each slot once, in order, whichever beat sent it.
    let (last, count) = meta(&mut con, "redbeat:pulse");
    let expected: Vec<String> = (0..count as i64)
        .map(|k| {
            task_id("redbeat:", "pulse", last.checked_sub(SignedDuration::from_secs(count as i64 - 1 - k)).unwrap())
        })
        .collect();
    assert_eq!(ids(&messages(&mut con, "pulse")), expected, "not every slot once, in order");
}

#[test]
fn skip_sends_the_slots_that_came_due_while_the_lease_moved() {
    let Some(redis) = celeriac_tests::or_skip("redis-server", RedisServer::start()) else {
        return;
    };
    // Slots every 2 s, a grace of 0.5 s, a lease of 3 s: a slot comes due
    // while the lease of a killed leader runs out, and is late by more than
    // the grace when the standby takes over.
    let toml = format!(
        r#"
broker_url = "{url}"
redbeat_lock_timeout = 3
beat_max_loop_interval = 1

[beat_schedule.pulse]
task = "beat_app.tick"
schedule = 2
catch_up = "skip"
starting_deadline = 0.5
options = {{ queue = "skip" }}
"#,
        url = redis.url()
    );
    let mut con = admin(&redis);
    let mut beats = vec![beat(&redis, "beat-a", &toml, &[]), beat(&redis, "beat-b", &toml, &[])];
    assert!(wait_until(WAIT, || !messages(&mut con, "skip").is_empty()));
    let sent = messages(&mut con, "skip").len();
    // Right after a send, kill the leader.
    assert!(wait_until(WAIT, || messages(&mut con, "skip").len() > sent));
    let pid = leader_pid(&mut con).unwrap();
    let index = beats.iter().position(|b| b.id() == pid).unwrap();
    let mut dead = beats.remove(index);
    dead.signal("KILL");
    assert!(dead.wait_timeout(WAIT).is_some());
    let killed_at = messages(&mut con, "skip").len();
    assert!(wait_until(WAIT, || messages(&mut con, "skip").len() >= killed_at + 3), "{}", beats[0].log());
    beats[0].signal("TERM");
    assert!(beats[0].wait_timeout(WAIT).unwrap().success());
    let (last, count) = meta(&mut con, "redbeat:pulse");
    let sent = ids(&messages(&mut con, "skip"));
    let expected: Vec<String> = (0..sent.len() as i64)
        .map(|k| {
            let back = SignedDuration::from_secs(2 * (sent.len() as i64 - 1 - k));
            task_id("redbeat:", "pulse", last.checked_sub(back).unwrap())
        })
        .collect();
    assert_eq!(sent, expected, "a slot was dropped (or repeated) around the failover:\n{}", beats[0].log());
    assert_eq!(count as usize, sent.len());
    assert!(beats[0].log().contains("lag="), "{}", beats[0].log());
}

#[test]
fn the_brokers_redis_is_reached_with_the_brokers_tls_settings() {
    let Some(certs) = celeriac_tests::or_skip("openssl", celeriac_tests::TestCertificates::generate()) else {
        return;
    };
    let Some(redis) = celeriac_tests::or_skip("redis-server with TLS", RedisServer::start_tls(&certs)) else {
        return;
    };
    // Client certificates are required: only `broker_use_ssl` gets beat in.
    let toml = format!(
        r#"
broker_url = "rediss://localhost:{port}/0"
redbeat_lock_timeout = 3
beat_max_loop_interval = 1

[broker_use_ssl]
ssl_cert_reqs = "required"
ssl_ca_certs = "{ca}"
ssl_certfile = "{cert}"
ssl_keyfile = "{key}"

[beat_schedule.pulse]
task = "beat_app.tick"
schedule = 1
options = {{ queue = "tls" }}
"#,
        port = redis.tls_port().unwrap(),
        ca = certs.path("ca.pem"),
        cert = certs.path("client.pem"),
        key = certs.path("client.key"),
    );
    let mut con = admin(&redis);
    let mut b = beat(&redis, "beat", &toml, &[]);
    assert!(wait_until(WAIT, || messages(&mut con, "tls").len() >= 2), "{}", b.log());
    assert!(get(&mut con, "redbeat::lock").is_some(), "the lease is in the broker's Redis");
    assert!(leader_pid(&mut con).is_some(), "the health key is in the broker's Redis");
    b.signal("TERM");
    assert!(b.wait_timeout(WAIT).unwrap().success());
}

//! The fault suite: `celeriac worker` binaries against a real redis-server
//! that is killed and restarted mid-run, workers that are SIGKILLed and
//! SIGSTOPped, and every class of hostile message published by a real Python
//! kombu producer. After each fault a Python client checks that every task
//! has a result or is still queued, and that the worker answers
//! `celery inspect ping` and runs new work, without a restart.
//!
//! `CELERIAC_FAULT_OUTAGE_SECS` sets the length of the Redis outage (15 s by
//! default; the README's "Failure modes" numbers come from a run with 300).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed assertion

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use celeriac_tests::{wait_until, LoggedProcess, RedisServer};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

/// A redis-server that keeps every write across a kill (`appendfsync always`).
fn durable_redis() -> Option<RedisServer> {
    celeriac_tests::or_skip(
        "redis-server",
        RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]),
    )
}

/// The options of a broker URL that let a visibility sweep restore a dead
/// worker's messages within seconds: `visibility_timeout` of `secs`, and a
/// sweep every second.
fn quick_restore(redis: &RedisServer, secs: u32) -> String {
    format!("{}?visibility_timeout={secs}&unacked_restore_interval=0.1", redis.url())
}

/// Starts `celeriac worker` named `<name>@faults` on `broker` (the result
/// backend is the same Redis), waiting until it is ready.
fn worker(redis: &RedisServer, broker: &str, name: &str, flags: &[&str], env: &[(&str, &str)]) -> LoggedProcess {
    let backend = redis.url();
    let node = format!("{name}@faults");
    let mut command = Command::new(env!("CARGO_BIN_EXE_celeriac"));
    command
        .args(["worker", "-b", broker, "--result-backend", &backend, "--tasks", "builtin,conformance", "-l", "info"])
        .args(["-n", &node])
        .args(flags)
        .envs(env.iter().copied());
    let log = redis.dir().join(format!("celeriac-{name}-{}.log", std::process::id()));
    let worker = LoggedProcess::spawn(command, "celeriac worker", log, " ready.").unwrap();
    worker.wait_ready(WAIT).unwrap();
    worker
}

/// Runs `fault_client.py <args>` with `stdin`; its JSON output.
fn client(args: &[&str], stdin: &str) -> Value {
    let python = celeriac_tests::python().unwrap();
    let script = celeriac_tests::repo_root().join("tests/python/fault_client.py");
    let mut child = Command::new(python)
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "fault_client.py {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn send(url: &str, queue: &str, name: &str, args: Value, count: usize) -> Vec<String> {
    let sent = client(
        &[
            "send",
            "--broker",
            url,
            "--queue",
            queue,
            "--name",
            name,
            "--args",
            &args.to_string(),
            "--count",
            &count.to_string(),
        ],
        "",
    );
    sent.as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect()
}

/// Each id's final state, or where its message is (QUEUED, UNACKED, MISSING).
fn check(url: &str, ids: &[String], timeout: Duration) -> BTreeMap<String, String> {
    let out = client(
        &["check", "--broker", url, "--backend", url, "--timeout", &timeout.as_secs().to_string()],
        &serde_json::to_string(ids).unwrap(),
    );
    out.as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned())).collect()
}

fn pings(url: &str, node: &str) -> bool {
    client(&["ping", "--broker", url, "--node", node], "")["pong"] == json!(true)
}

fn not_succeeded(states: &BTreeMap<String, String>) -> BTreeMap<&String, &String> {
    states.iter().filter(|(_, s)| s.as_str() != "SUCCESS").collect()
}

fn alive(worker: &mut LoggedProcess) -> bool {
    worker.try_wait().is_none()
}

#[test]
fn a_redis_outage_loses_nothing_and_needs_no_restart() {
    let (Some(mut redis), Some(_)) = (durable_redis(), celeriac_tests::python_peer()) else { return };
    let outage = Duration::from_secs(
        std::env::var("CELERIAC_FAULT_OUTAGE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(15),
    );
    let url = redis.url();
    let mut early = worker(&redis, &url, "early", &["-Q", "early", "-c", "4"], &[]);
    let mut late = worker(&redis, &url, "late", &["-Q", "late", "-c", "4"], &[("CELERIAC_TASK_ACKS_LATE", "true")]);
    let task = "t.integration.tasks.sleeping";
    let mut ids = send(&url, "early", task, json!([0.5]), 40);
    ids.extend(send(&url, "late", task, json!([0.5]), 40));
    // Work is in flight on both workers when Redis goes.
    assert!(wait_until(WAIT, || early.log().contains("succeeded in") && late.log().contains("succeeded in")));
    redis.kill();
    let killed_at = Instant::now();
    std::thread::sleep(outage); // the fault itself, not a wait for an event
    redis.restart().unwrap();
    let back_at = Instant::now();
    // New work is taken without a restart.
    let mut fresh = send(&url, "early", "t.integration.tasks.add", json!([1, 2]), 1);
    fresh.extend(send(&url, "late", "t.integration.tasks.add", json!([3, 4]), 1));
    let states = check(&url, &fresh, WAIT);
    let recovery = back_at.elapsed();
    assert!(not_succeeded(&states).is_empty(), "new work after the outage: {states:?}");
    let states = check(&url, &ids, WAIT);
    assert!(not_succeeded(&states).is_empty(), "every task ran: {:?}", not_succeeded(&states));
    // The control subscription reconnects on its own backoff (at most
    // `reconnect_backoff_max` after Redis is back): wait for the answer.
    for node in ["early", "late"] {
        let node = format!("{node}@faults");
        assert!(wait_until(WAIT, || pings(&url, &node)), "{node} answers inspect ping");
    }
    assert!(alive(&mut early) && alive(&mut late), "both workers are still running");
    let mut a = redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();
    let unacked: u64 = redis::cmd("HLEN").arg("unacked").query(&mut a).unwrap();
    assert_eq!(unacked, 0, "every deferred ack reached Redis");
    eprintln!(
        "outage of {:?} with 80 tasks in flight: new work done {recovery:?} after Redis came back; all 80 results stored",
        back_at - killed_at
    );
}

#[test]
fn a_killed_worker_loses_no_late_ack_task() {
    let (Some(redis), Some(_)) = (durable_redis(), celeriac_tests::python_peer()) else { return };
    let url = quick_restore(&redis, 3);
    let late = [("CELERIAC_TASK_ACKS_LATE", "true")];
    let mut first = worker(&redis, &url, "first", &["-Q", "killed", "-c", "4"], &late);
    let ids = send(&redis.url(), "killed", "t.integration.tasks.sleeping", json!([1]), 20);
    assert!(wait_until(WAIT, || first.log().contains("received")));
    first.signal("KILL");
    first.wait_timeout(WAIT);
    let _second = worker(&redis, &url, "second", &["-Q", "killed", "-c", "4"], &late);
    let states = check(&redis.url(), &ids, WAIT);
    assert!(not_succeeded(&states).is_empty(), "every task ran: {:?}", not_succeeded(&states));
}

#[test]
fn a_stopped_worker_that_wakes_up_does_not_undo_the_work_of_others() {
    let (Some(redis), Some(_)) = (durable_redis(), celeriac_tests::python_peer()) else { return };
    let url = quick_restore(&redis, 2);
    let late = [("CELERIAC_TASK_ACKS_LATE", "true")];
    let sleeper = worker(&redis, &url, "sleeper", &["-Q", "stopped", "-c", "2"], &late);
    let ids = send(&redis.url(), "stopped", "t.integration.tasks.sleeping", json!([0.5]), 10);
    assert!(wait_until(WAIT, || sleeper.log().contains("received")));
    sleeper.signal("STOP");
    let other = worker(&redis, &url, "other", &["-Q", "stopped", "-c", "4"], &late);
    let states = check(&redis.url(), &ids, WAIT);
    assert!(not_succeeded(&states).is_empty(), "the other worker ran everything: {:?}", not_succeeded(&states));
    sleeper.signal("CONT");
    assert!(pings(&redis.url(), "sleeper@faults"), "the woken worker answers");
    let fresh = send(&redis.url(), "stopped", "t.integration.tasks.add", json!([2, 2]), 4);
    let states = check(&redis.url(), &fresh, WAIT);
    assert!(not_succeeded(&states).is_empty(), "{states:?}");
    let mut a = redis::Client::open(redis.url().as_str()).unwrap().get_connection().unwrap();
    assert!(
        wait_until(WAIT, || redis::cmd("HLEN").arg("unacked").query::<u64>(&mut a).unwrap() == 0),
        "the woken worker's late acks settle (its stale ones change nothing)"
    );
    drop(other);
}

#[test]
fn hostile_messages_from_python_are_dead_lettered_and_the_worker_goes_on() {
    let (Some(redis), Some(_)) = (durable_redis(), celeriac_tests::python_peer()) else { return };
    let url = redis.url();
    let env = [("CELERIAC_WORKER_MAX_MESSAGE_SIZE", "1048576")];
    let metrics_addr = format!("127.0.0.1:{}", celeriac_tests::free_port().unwrap());
    let flags = ["-Q", "hostile", "-c", "2", "--metrics-addr", metrics_addr.as_str()];
    let mut w = worker(&redis, &url, "target", &flags, &env);
    let sent = client(&["hostile", "--broker", &url, "--queue", "hostile"], "");
    let sent = sent.as_array().unwrap();
    // The worker goes on: a good task sent after them all runs.
    let good = send(&url, "hostile", "t.integration.tasks.add", json!([2, 3]), 1);
    let states = check(&url, &good, WAIT);
    assert!(not_succeeded(&states).is_empty(), "a good task after the hostile ones: {states:?}\n{}", w.log());
    assert!(pings(&url, "target@faults"));
    assert!(alive(&mut w), "the worker is still running:\n{}", w.log());

    // Every hostile message is accounted for: dead-lettered with a reason,
    // finished with a stored state, or (the far-future ETA) still held.
    let mut a = redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();
    let parked: Vec<Vec<u8>> = redis::cmd("LRANGE").arg("celeriac.dead_letter").arg(0).arg(-1).query(&mut a).unwrap();
    let mut reasons: BTreeMap<String, String> = BTreeMap::new();
    for raw in &parked {
        // Python's json writes NaN; celeriac's reader takes what kombu's does.
        // An element the broker could not read at all (too large to parse)
        // was parked as it was, without a reason header.
        let Ok(envelope) = celeriac_protocol::Envelope::from_slice(raw) else { continue };
        let headers = &envelope.message.headers;
        let reason = headers.get("x-celeriac-error").and_then(celeriac_protocol::Value::as_str);
        let reason = reason.unwrap_or("parked as it was by the broker (unreadable within the limits)");
        if let Some(id) = headers.get("id").and_then(celeriac_protocol::Value::as_str) {
            reasons.insert(id.to_owned(), reason.to_owned());
        }
    }
    let ids: Vec<String> = sent.iter().filter_map(|s| s["id"].as_str().map(str::to_owned)).collect();
    let unparked: Vec<String> = ids.iter().filter(|id| !reasons.contains_key(*id)).cloned().collect();
    let states = check(&url, &unparked, Duration::from_secs(10));
    let mut report = Vec::new();
    for s in sent {
        let class = s["class"].as_str().unwrap();
        let outcome = match s["id"].as_str() {
            Some(id) => reasons.get(id).cloned().or_else(|| states.get(id).cloned()).unwrap_or_default(),
            None => "(no id)".into(),
        };
        report.push(format!("{class}: {outcome}"));
        assert!(!outcome.contains("MISSING") && !outcome.is_empty(), "{class} was lost: {report:#?}");
    }
    let outcome = |class: &str| report.iter().find(|r| r.starts_with(&format!("{class}:"))).cloned().unwrap();
    for class in ["msgpack", "pickle", "unknown content type"] {
        assert!(outcome(class).contains("content_disallowed"), "{}", outcome(class));
    }
    assert!(outcome("too large").contains("parked as it was"), "{}", outcome("too large"));
    assert!(outcome("eta year 9999").ends_with("UNACKED"), "{}", outcome("eta year 9999"));
    eprintln!("{report:#?}");
    assert!(parked.len() >= 10, "{report:#?}");

    // Each refusal is counted by kind; task names nobody registered do not
    // become label values.
    send(&url, "hostile", "attacker.chosen.name.1", json!([]), 1);
    let unknown = send(&url, "hostile", "attacker.chosen.name.2", json!([]), 1);
    check(&url, &unknown, WAIT);
    let metrics = scrape(&metrics_addr);
    let count = |reason: &str| {
        let prefix = format!("celeriac_messages_refused_total{{reason=\"{reason}\"");
        metrics
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>()
    };
    assert_eq!(count("content_disallowed"), 3, "{metrics}");
    assert_eq!(count("body_too_large"), 1, "{metrics}");
    assert_eq!(count("unknown_task"), 2, "{metrics}");
    assert!(!metrics.contains("attacker.chosen"), "{metrics}");
    assert!(metrics.contains("name=\"<unregistered>\""), "{metrics}");
}

/// `GET /metrics` from a worker's `--metrics-addr`.
fn scrape(addr: &str) -> String {
    use std::io::Read as _;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    out
}

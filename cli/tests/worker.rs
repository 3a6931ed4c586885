//! `celeriac worker` end to end: the real binary with the built-in and
//! conformance task sets, Python Celery as the producer and result reader,
//! a private redis-server as broker and backend.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed assertion

use std::process::Command;
use std::time::Duration;

use celeriac_tests::{LoggedProcess, RedisServer};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

/// Starts `celeriac worker` on `url` (broker and backend) with extra flags
/// and environment, and waits until it is ready.
fn celeriac_worker(redis: &RedisServer, url: &str, flags: &[&str], env: &[(&str, &str)]) -> LoggedProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_celeriac"));
    command
        .args(["worker", "-b", url, "--result-backend", url, "--tasks", "builtin,conformance", "-l", "info"])
        .args(flags)
        .env("REDIS_HOST", "127.0.0.1")
        .env("REDIS_PORT", redis.port().to_string())
        .envs(env.iter().copied());
    let log = redis.dir().join(format!("celeriac-worker-{}.log", std::process::id()));
    let worker = LoggedProcess::spawn(command, "celeriac worker", log, " ready.").unwrap();
    worker.wait_ready(WAIT).unwrap();
    worker
}

/// Sends `calls` with Python Celery's `send_task` and returns what
/// `AsyncResult.get()` gave for each (see tests/python/call_tasks.py).
fn python_calls(url: &str, calls: Value, wait: bool) -> Vec<Value> {
    let lines = celeriac_tests::python_calls(url, &calls.to_string(), wait, 30).unwrap();
    lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn admin(url: &str) -> redis::Connection {
    redis::Client::open(url).unwrap().get_connection().unwrap()
}

fn int(conn: &mut redis::Connection, args: &[&str]) -> i64 {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(conn).unwrap()
}

#[test]
fn python_calls_rust_tasks_by_name_and_reads_their_results() {
    let (Some(redis), Some(_)) = (
        celeriac_tests::or_skip("redis-server", RedisServer::start_with(&["--requirepass", "s3cret"])),
        celeriac_tests::python_peer(),
    ) else {
        return;
    };
    let url = format!("redis://:s3cret@127.0.0.1:{}/0", redis.port());
    let worker = celeriac_worker(&redis, &url, &["-c", "4", "-n", "e2e@%h"], &[]);
    let out = python_calls(
        &url,
        json!([
            {"name": "celeriac.ping"},
            {"name": "celery.ping"},
            {"name": "t.integration.tasks.add", "args": [2, 40]},
            {"name": "t.integration.tasks.fail", "args": ["disk full"]},
            {"name": "t.integration.tasks.retry_once"},
            {"name": "t.integration.tasks.sleeping", "args": [5], "options": {"time_limit": 1}},
            {"name": "tasks.not_compiled_in", "args": [1]},
        ]),
        true,
    );
    assert_eq!(out[0]["result"], json!("pong"));
    assert_eq!(out[1]["result"], json!("pong"));
    assert_eq!(out[2]["result"], json!(42));
    // Python re-raises an exception of a module it has not imported as a class
    // it makes up in celery.exceptions; the stored record names the real module.
    assert_eq!(
        (&out[3]["state"], &out[3]["exc_type"], &out[3]["exc_args"]),
        (&json!("FAILURE"), &json!("ExpectedException"), &json!(["Task expected to fail", "disk full"])),
        "{:?}",
        out[3]
    );
    let stored: String = redis::cmd("GET")
        .arg(format!("celery-task-meta-{}", out[3]["id"].as_str().unwrap()))
        .query(&mut admin(&url))
        .unwrap();
    assert!(stored.contains(r#""exc_module": "t.integration.tasks""#), "{stored}");
    assert_eq!(out[4]["result"], json!(1), "retry_once returns the retry count: {:?}", out[4]);
    assert_eq!(
        (&out[5]["state"], &out[5]["exc_type"]),
        (&json!("FAILURE"), &json!("TimeLimitExceeded")),
        "{:?}",
        out[5]
    );
    assert_eq!((&out[6]["state"], &out[6]["exc_type"]), (&json!("FAILURE"), &json!("NotRegistered")), "{:?}", out[6]);

    let log = worker.log();
    assert!(log.contains("e2e@"), "the node name is in the banner:\n{log}");
    assert!(log.contains(&format!("redis://:**@127.0.0.1:{}/0", redis.port())), "masked broker URL:\n{log}");
    assert!(!log.contains("s3cret"), "the password leaked into the log:\n{log}");
    assert!(log.contains("t.integration.tasks.add"), "registered tasks are listed:\n{log}");
    assert!(log.contains("Task t.integration.tasks.add[") && log.contains("succeeded in"), "Celery-like lines:\n{log}");
}

#[test]
fn warm_shutdown_finishes_running_tasks_and_hands_back_the_rest() {
    let (Some(redis), Some(_)) = (celeriac_tests::redis(), celeriac_tests::python_peer()) else { return };
    let url = redis.url();
    let mut worker = celeriac_worker(&redis, &url, &["-c", "1", "--prefetch-multiplier", "1"], &[]);
    let sent = python_calls(
        &url,
        json!([
            {"name": "t.integration.tasks.sleeping", "args": [2]},
            {"name": "t.integration.tasks.add", "args": [1, 1], "options": {"countdown": 3600}},
            {"name": "t.integration.tasks.add", "args": [2, 2], "options": {"countdown": 3600}},
        ]),
        false,
    );
    let mut a = admin(&url);
    // The running task was acked as it started; both ETA tasks are reserved
    // (each widens the prefetch window of one).
    assert!(celeriac_tests::wait_until(WAIT, || int(&mut a, &["HLEN", "unacked"]) == 2
        && int(&mut a, &["LLEN", "celery"]) == 0));
    worker.signal("TERM");
    let status = worker.wait_timeout(WAIT).expect("the worker did not stop");
    assert!(status.success(), "exit status {status:?}\n{}", worker.log());
    // The sleeping task was acked when it started and ran to the end...
    let python = celeriac_tests::python().unwrap();
    let got = Command::new(python)
        .arg(celeriac_tests::repo_root().join("tests/python/get_results.py"))
        .args(["--backend", &url, "--timeout", "10", sent[0]["id"].as_str().unwrap()])
        .output()
        .unwrap();
    let line: Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(line["state"], json!("SUCCESS"), "{line:?}\n{}", worker.log());
    // ...and the ETA tasks went back to the queue, nothing left unacked.
    assert_eq!(int(&mut a, &["LLEN", "celery"]), 2);
    assert_eq!(int(&mut a, &["HLEN", "unacked"]), 0);
}

#[test]
fn a_second_signal_turns_the_shutdown_cold_and_acks_late_work_goes_back() {
    let (Some(redis), Some(_)) = (celeriac_tests::redis(), celeriac_tests::python_peer()) else { return };
    let url = redis.url();
    let env = [("CELERIAC_TASK_ACKS_LATE", "1"), ("CELERIAC_TASK_TRACK_STARTED", "1")];
    let mut worker = celeriac_worker(&redis, &url, &["-c", "1"], &env);
    let sent = python_calls(&url, json!([{"name": "t.integration.tasks.sleeping", "args": [120]}]), false);
    let key = format!("celery-task-meta-{}", sent[0]["id"].as_str().unwrap());
    let mut a = admin(&url);
    let started = celeriac_tests::wait_until(WAIT, || {
        let meta: Option<String> = redis::cmd("GET").arg(&key).query(&mut a).unwrap();
        meta.is_some_and(|m| m.contains("STARTED"))
    });
    assert!(started, "the task never started:\n{}", worker.log());
    worker.signal("TERM");
    assert!(celeriac_tests::wait_until(WAIT, || worker.log().contains("Warm shutdown")));
    assert!(worker.try_wait().is_none(), "a warm shutdown waits for the running task");
    worker.signal("TERM");
    let status = worker.wait_timeout(WAIT).expect("the cold shutdown did not stop the worker");
    assert!(status.success(), "exit status {status:?}\n{}", worker.log());
    assert_eq!(int(&mut a, &["LLEN", "celery"]), 1, "the abandoned acks_late task is back in its queue");
    assert_eq!(int(&mut a, &["HLEN", "unacked"]), 0);
}

#[test]
fn unknown_flags_tasks_and_settings_are_refused_clearly() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_celeriac")).args(args).envs(env.iter().copied()).output().unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&["worker", "-b", "memory://", "--tasks", "builtin,nope"], &[]);
    assert!(err.contains("nope") && err.contains("conformance"), "{err}");
    let err = run(&["worker", "-b", "memory://"], &[("CELERIAC_WORKER_PREFETCH_MULTIPLIER", "many")]);
    assert!(err.contains("worker_prefetch_multiplier"), "{err}");
    let err = run(&["worker", "-b", "memory://", "-l", "LOUD"], &[]);
    assert!(err.contains("LOUD"), "{err}");
}

#[test]
fn canvases_from_python_run_on_celeriac() {
    let (Some(redis), Some(python)) = (celeriac_tests::redis(), celeriac_tests::python_peer()) else { return };
    let url = redis.url();
    let worker = celeriac_worker(&redis, &url, &["-c", "4"], &[]);
    let out = Command::new(python)
        .arg(celeriac_tests::repo_root().join("tests/python/canvas_calls.py"))
        .args(["--broker", &url, "--backend", &url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    let log = worker.log();
    assert_eq!(got["chain"], json!({"result": 60}), "{got}\n{log}");
    assert_eq!(got["group"], json!({"result": [0, 2, 4, 6]}), "{got}\n{log}");
    assert_eq!(got["chord"], json!({"result": 20}), "the chord body got every header result: {got}\n{log}");
    assert_eq!(got["chord_failed"]["exc_type"], json!("ExpectedException"), "{got}\n{log}");
    assert_eq!(got["chord_failed_body"], json!({"state": "FAILURE", "exc_type": "ChordError"}), "{got}\n{log}");
    assert_eq!(got["link"], json!({"result": 42}), "{got}");
    assert_eq!(got["link_child"], json!({"result": 42}), "the callback got the parent's result: {got}\n{log}");
}

#[test]
fn expiry_retries_and_time_limits_as_python_sees_them() {
    let (Some(redis), Some(_)) = (celeriac_tests::redis(), celeriac_tests::python_peer()) else { return };
    let url = redis.url();
    let worker = celeriac_worker(&redis, &url, &["-c", "4"], &[]);
    let out = python_calls(
        &url,
        json!([
            {"name": "t.integration.tasks.add", "args": [1, 1], "options": {"expires": 0.001}},
            {"name": "t.integration.tasks.retry_once", "kwargs": {"max_retries": 0}},
            {"name": "t.integration.tasks.sleeping", "args": [10], "options": {"soft_time_limit": 1}},
            {"name": "t.integration.tasks.retry_once_headers", "options": {"headers": {"x-run": "r7"}}},
        ]),
        true,
    );
    let log = worker.log();
    assert_eq!(
        (&out[0]["state"], &out[0]["exc_type"]),
        (&json!("REVOKED"), &json!("TaskRevokedError")),
        "{:?}\n{log}",
        out[0]
    );
    assert_eq!(
        (&out[1]["state"], &out[1]["exc_type"]),
        (&json!("FAILURE"), &json!("MaxRetriesExceededError")),
        "{:?}\n{log}",
        out[1]
    );
    assert_eq!(
        (&out[2]["state"], &out[2]["exc_type"]),
        (&json!("FAILURE"), &json!("SoftTimeLimitExceeded")),
        "{:?}\n{log}",
        out[2]
    );
    assert_eq!(out[3]["result"]["x-run"], json!("r7"), "custom headers survive the retry: {:?}\n{log}", out[3]);
}

#[test]
fn rate_limits_dead_letters_and_undecodable_messages() {
    let (Some(redis), Some(_)) = (celeriac_tests::redis(), celeriac_tests::python_peer()) else { return };
    let url = redis.url();
    let env = [("CELERIAC_WORKER_UNKNOWN_TASK", "dead_letter"), ("CELERIAC_TASK_DEFAULT_RATE_LIMIT", "4/s")];
    let worker = celeriac_worker(&redis, &url, &["-c", "4"], &env);
    let mut a = admin(&url);
    let _: () = redis::cmd("LPUSH").arg("celery").arg("this is not a kombu message").query(&mut a).unwrap();
    let out = python_calls(
        &url,
        json!([
            {"name": "tasks.only_python_has_this", "args": [1]},
            {"name": "t.integration.tasks.add", "args": [1, 1]},
            {"name": "t.integration.tasks.add", "args": [2, 2]},
            {"name": "t.integration.tasks.add", "args": [3, 3]},
        ]),
        false,
    );
    let ids: Vec<&str> = out[1..].iter().map(|l| l["id"].as_str().unwrap()).collect();
    let python = celeriac_tests::python().unwrap();
    let got = Command::new(python)
        .arg(celeriac_tests::repo_root().join("tests/python/get_results.py"))
        .args(["--backend", &url, "--timeout", "30"])
        .args(&ids)
        .output()
        .unwrap();
    let lines: Vec<Value> =
        String::from_utf8_lossy(&got.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let results: Vec<&Value> = lines.iter().map(|l| &l["result"]).collect();
    assert_eq!(results, [&json!(2), &json!(4), &json!(6)], "{lines:?}");
    // 4/s with a bucket of one: the three runs span at least two intervals.
    let done: Vec<f64> = lines.iter().map(|l| l["done_at"].as_f64().unwrap()).collect();
    let span = done.iter().cloned().fold(f64::MIN, f64::max) - done.iter().cloned().fold(f64::MAX, f64::min);
    assert!(span >= 0.45, "rate limit not applied: results done within {span:.3}s");
    // The unknown task and the undecodable message were parked, not dropped.
    assert!(
        celeriac_tests::wait_until(WAIT, || int(&mut a, &["LLEN", "celeriac.dead_letter"]) == 2),
        "{}",
        worker.log()
    );
    let parked: Vec<String> = redis::cmd("LRANGE").arg("celeriac.dead_letter").arg(0).arg(-1).query(&mut a).unwrap();
    assert!(parked.iter().any(|m| m.contains("unregistered task tasks.only_python_has_this")), "{parked:?}");
    assert!(parked.iter().any(|m| m == "this is not a kombu message"), "{parked:?}");
    assert_eq!(int(&mut a, &["HLEN", "unacked"]), 0);
}

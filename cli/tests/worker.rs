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
    for threads in ["0", "1025", "-1", "1e3", "many"] {
        let err = run(&["worker", "-b", "memory://", "--runtime-threads", threads], &[]);
        assert!(err.contains("--runtime-threads"), "{threads}: {err}");
    }
    for threads in ["0", "two", ""] {
        let err = run(&["worker", "-b", "memory://"], &[("TOKIO_WORKER_THREADS", threads)]);
        assert!(err.contains("TOKIO_WORKER_THREADS") && !err.contains("panicked"), "{threads:?}: {err}");
    }
}

/// `--runtime-threads 1`: the consumer, the main loop, remote control and
/// every task on one thread. Results, failures, retries, hard and soft
/// time limits, `celery inspect ping` and a warm shutdown behave as on the
/// default runtime.
#[test]
fn a_worker_on_one_runtime_thread_behaves_as_on_many() {
    let (Some(redis), Some(_)) = (celeriac_tests::redis(), celeriac_tests::python_peer()) else { return };
    let url = redis.url();
    let mut worker =
        celeriac_worker(&redis, &url, &["-c", "8", "--runtime-threads", "1", "-n", "one@runtime-test"], &[]);
    let out = python_calls(
        &url,
        json!([
            {"name": "t.integration.tasks.add", "args": [2, 40]},
            {"name": "t.integration.tasks.fail", "args": ["disk full"]},
            {"name": "t.integration.tasks.retry_once"},
            {"name": "t.integration.tasks.sleeping", "args": [30], "options": {"time_limit": 1}},
            {"name": "t.integration.tasks.sleeping", "args": [30], "options": {"soft_time_limit": 1}},
        ]),
        true,
    );
    let log = worker.log();
    assert_eq!(out[0]["result"], json!(42), "{:?}\n{log}", out[0]);
    assert_eq!(out[1]["exc_type"], json!("ExpectedException"), "{:?}\n{log}", out[1]);
    assert_eq!(out[2]["result"], json!(1), "{:?}\n{log}", out[2]);
    assert_eq!(out[3]["exc_type"], json!("TimeLimitExceeded"), "{:?}\n{log}", out[3]);
    assert_eq!(out[4]["exc_type"], json!("SoftTimeLimitExceeded"), "{:?}\n{log}", out[4]);
    let (ok, pong, err) = celery(&url, &["inspect", "ping", "--json", "-t", "10", "-d", "one@runtime-test"]);
    assert!(ok && pong.contains("pong"), "celery inspect ping: {pong}\n{err}\n{log}");
    worker.signal("TERM");
    let status = worker.wait_timeout(WAIT).expect("the worker did not stop");
    assert!(status.success(), "exit status {status:?}\n{}", worker.log());
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
    assert_eq!(got["starmap"], json!({"result": [2, 4]}), "{got}\n{log}");
    assert_eq!(got["map"], json!({"result": [1, "a", null]}), "{got}\n{log}");
    assert_eq!(got["unlock"], json!({"result": 6}), "chord_unlock sent the callback with the values: {got}\n{log}");
    assert_eq!(got["unlock_failed"]["exc_type"], json!("ChordError"), "{got}\n{log}");
    assert!(
        got["unlock_failed"]["exc_args"][0].as_str().unwrap().starts_with("Dependency "),
        "Celery's ChordError text: {got}"
    );
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

/// Runs `celeriac <args>` expecting it to fail at startup; returns its stderr.
fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_celeriac")).args(args).envs(env.iter().copied()).output().unwrap();
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A settings file in a fresh temp dir (removed with the returned guard).
fn settings_file(name: &str, text: &str) -> (std::path::PathBuf, TempDir) {
    let dir = TempDir(std::env::temp_dir().join(format!("celeriac-cli-{name}-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let path = dir.0.join("worker.toml");
    std::fs::write(&path, text).unwrap();
    (path, dir)
}

/// Removes its directory when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn out_of_range_numbers_stop_startup_naming_the_setting_and_its_range() {
    // A flag.
    let err = refused(&["worker", "-b", "memory://", "-c", "1000000000"], &[]);
    assert!(err.contains("worker_concurrency") && err.contains("from 1 to 100000"), "{err}");
    let err = refused(&["worker", "-b", "memory://", "--prefetch-multiplier", "-1"], &[]);
    assert!(err.contains("worker_prefetch_multiplier") && err.contains("from 0 to 10000"), "{err}");
    let err = refused(&["worker", "-b", "memory://", "-c", "-1"], &[]);
    assert!(err.contains("worker_concurrency") && err.contains("from 1 to 100000"), "{err}");
    // The environment.
    let err = refused(&["worker", "-b", "memory://"], &[("CELERIAC_WORKER_HEARTBEAT_INTERVAL", "inf")]);
    assert!(
        err.contains("`worker_heartbeat_interval`")
            && err.contains("from 0.1 to 3600")
            && err.contains("CELERIAC_WORKER_HEARTBEAT_INTERVAL"),
        "{err}"
    );
    // The file.
    let (path, _dir) = settings_file("range", "[broker_transport_options]\nvisibility_timeout = 1e300\n");
    let err = refused(&["worker", "-b", "memory://", "--config", path.to_str().unwrap()], &[]);
    assert!(
        err.contains("`broker_transport_options.visibility_timeout` = 1e300")
            && err.contains("from 0.001 to 31536000")
            && err.contains("worker.toml"),
        "{err}"
    );
    // The query of the broker and the result backend URLs, password masked.
    let err = refused(&["worker", "-b", "redis://:s3cret@127.0.0.1:1/0?polling_interval=-1"], &[]);
    assert!(err.contains("polling_interval") && err.contains("from 0.001 to 3600"), "{err}");
    let backend = "redis://:s3cret@127.0.0.1:1/0?socket_timeout=nan";
    let err = refused(&["worker", "-b", "memory://", "--result-backend", backend], &[]);
    assert!(err.contains("socket_timeout") && err.contains("from 0.001 to 86400"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
}

/// `celery -A mixed <args>` (tests/python/apps/mixed.py) on `url`: whether it
/// exited 0, and its stdout and stderr.
fn celery(url: &str, args: &[&str]) -> (bool, String, String) {
    let apps = celeriac_tests::repo_root().join("tests/python/apps");
    let out = Command::new(celeriac_tests::python().unwrap())
        .args(["-m", "celery", "-A", "mixed"])
        .args(args)
        .current_dir(&apps)
        .env("PYTHONPATH", &apps)
        .env("CELERIAC_TEST_BROKER", url)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn no_password_reaches_the_log_or_inspect_conf_and_report() {
    let (Some(redis), Some(_)) = (
        celeriac_tests::or_skip("redis-server", RedisServer::start_with(&["--requirepass", "s3cret"])),
        celeriac_tests::python_peer(),
    ) else {
        return;
    };
    let url = format!("redis://:s3cret@127.0.0.1:{}/0", redis.port());
    let (path, _dir) = settings_file(
        "secrets",
        &format!(
            "redbeat_redis_url = \"redis://:s3cret@127.0.0.1:{port}/1\"\n\
             [broker_transport_options.sentinel_kwargs]\npassword = \"s3cret\"\n\
             [result_backend_transport_options.sentinel_kwargs]\npassword = \"s3cret\"\n",
            port = redis.port()
        ),
    );
    let node = "secrets@test-host";
    let mut worker = celeriac_worker(
        &redis,
        &url,
        &["-n", node, "--config", path.to_str().unwrap(), "-E"],
        &[("RUST_LOG", "debug")],
    );
    let out = python_calls(&url, json!([{"name": "t.integration.tasks.add", "args": [1, 2]}]), true);
    assert_eq!(out[0]["result"], json!(3), "{:?}", out[0]);

    let (ok, conf, err) = celery(&url, &["inspect", "conf", "--json", "-t", "10", "-d", node]);
    assert!(ok, "celery inspect conf failed:\n{conf}\n{err}");
    let replies: Value = serde_json::from_str(conf.trim()).unwrap();
    let mine = &replies[node];
    assert_eq!(mine["broker_url"], json!(format!("redis://:********@127.0.0.1:{}/0", redis.port())), "{mine}");
    assert_eq!(mine["broker_transport_options"]["sentinel_kwargs"]["password"], json!("********"), "{mine}");
    assert_eq!(mine["redbeat_redis_url"], json!(format!("redis://:********@127.0.0.1:{}/1", redis.port())));
    let (ok, report, err) = celery(&url, &["inspect", "report", "--json", "-t", "10", "-d", node]);
    assert!(ok && report.contains("redbeat_redis_url"), "celery inspect report failed:\n{report}\n{err}");

    worker.signal("TERM");
    worker.wait_timeout(WAIT).expect("the worker did not stop");
    let log = worker.log();
    assert!(log.contains("********") || log.contains(":**@"), "the log shows masked URLs:\n{log}");
    for (what, text) in [("inspect conf", &conf), ("inspect report", &report), ("the worker's log", &log)] {
        assert!(!text.contains("s3cret"), "the password leaked into {what}:\n{text}");
    }
}

/// A worker started with `args` (no fixed broker), ready or not.
fn spawn_worker(dir: &std::path::Path, name: &str, args: &[&str]) -> LoggedProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_celeriac"));
    command.args(["worker", "--tasks", "builtin,conformance", "-l", "info"]).args(args);
    LoggedProcess::spawn(command, "celeriac worker", dir.join(format!("{name}-{}.log", std::process::id())), " ready.")
        .unwrap()
}

/// `broker_use_ssl` with a `sentinel://` broker: TLS to the Sentinel (which
/// listens on TLS only) and to the master it names (its TLS port), proved by a
/// task Python sends on the master's plain port and celeriac runs.
#[test]
fn a_sentinel_broker_with_tls_speaks_tls_to_the_sentinel_and_the_master() {
    let Some(certs) = celeriac_tests::or_skip("openssl", celeriac_tests::TestCertificates::generate()) else {
        return;
    };
    let (Some(master), Some(_)) =
        (celeriac_tests::or_skip("redis-server", RedisServer::start_tls(&certs)), celeriac_tests::python_peer())
    else {
        return;
    };
    let tls_port = master.tls_port().unwrap();
    let sentinel = celeriac_tests::SentinelServer::start_tls(tls_port, "tlsmaster", &certs).unwrap();
    let plain = master.url();
    let (path, _dir) = settings_file(
        "sentinel-tls",
        &format!(
            "[broker_transport_options]\nmaster_name = \"tlsmaster\"\n\
             [broker_use_ssl]\nssl_cert_reqs = \"required\"\nssl_ca_certs = \"{}\"\n\
             ssl_certfile = \"{}\"\nssl_keyfile = \"{}\"\n",
            certs.path("ca.pem"),
            certs.path("client.pem"),
            certs.path("client.key")
        ),
    );
    let broker = format!("sentinel://127.0.0.1:{}/0", sentinel.port());
    let config = path.to_str().unwrap();
    let worker =
        spawn_worker(master.dir(), "sentinel-tls", &["-b", &broker, "--result-backend", &plain, "--config", config]);
    worker.wait_ready(WAIT).unwrap_or_else(|e| panic!("{e}\n{}", worker.log()));
    let out = python_calls(&plain, json!([{"name": "t.integration.tasks.add", "args": [20, 22]}]), true);
    assert_eq!(out[0]["result"], json!(42), "{:?}\n{}", out[0], worker.log());
    let log = worker.log();
    assert!(log.contains(&format!("sentinel://127.0.0.1:{}/0?ssl_cert_reqs=required", sentinel.port())), "{log}");
}

/// `ssl_cert_reqs=none` on the broker is warned about as on the backend, and
/// a Sentinel broker that could not present its client certificate to an
/// unverified master is refused at startup rather than run without it.
#[test]
fn an_unverified_broker_certificate_is_warned_about_or_refused() {
    let Some(certs) = celeriac_tests::or_skip("openssl", celeriac_tests::TestCertificates::generate()) else {
        return;
    };
    let Some(master) = celeriac_tests::or_skip("redis-server", RedisServer::start_tls(&certs)) else { return };
    let tls_port = master.tls_port().unwrap();
    let client = format!("ssl_certfile={}&ssl_keyfile={}", certs.path("client.pem"), certs.path("client.key"));
    let broker = format!("rediss://127.0.0.1:{tls_port}/0?ssl_cert_reqs=none&{client}");
    let worker = spawn_worker(master.dir(), "cert-none", &["-b", &broker, "--result-backend", &master.url()]);
    worker.wait_ready(WAIT).unwrap_or_else(|e| panic!("{e}\n{}", worker.log()));
    let log = worker.log();
    let warning = "ssl_cert_reqs=CERT_NONE: the broker's certificate is not verified, so the connection is open to \
                   man-in-the-middle attacks; give ssl_ca_certs instead";
    assert!(log.contains(warning), "{log}");
    drop(worker);

    let sentinel = format!("sentinel://127.0.0.1:1/0?master_name=m&ssl_cert_reqs=none&{client}");
    let err = refused(&["worker", "-b", &sentinel], &[]);
    assert!(err.contains("ssl_cert_reqs=none cannot present a client certificate"), "{err}");
}

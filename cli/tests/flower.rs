//! Flower (the pinned 2.2.0) watching a mixed fleet: a `celeriac worker -E`
//! and a Python Celery worker on one private Redis. Through Flower's HTTP API
//! the celeriac worker is listed with its stats and registered tasks, the
//! tasks it ran with their state, arguments, result and runtime, and a revoke
//! from Flower cancels a running celeriac task; Flower's worker buttons
//! (pool, rate limit, time limit, queues, shutdown) get the replies they expect.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed assertion

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use celeriac_tests::{LoggedProcess, RedisServer};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);
const RS: &str = "celeriac@flower-host";
const PY: &str = "celery@flower-host";

fn python_dir() -> PathBuf {
    celeriac_tests::repo_root().join("tests/python")
}

/// `celeriac worker -E` with the conformance tasks, ready.
fn celeriac_worker(redis: &RedisServer, node: &str) -> LoggedProcess {
    let url = redis.url();
    let mut command = Command::new(env!("CARGO_BIN_EXE_celeriac"));
    command
        .args(["worker", "-b", &url, "--result-backend", &url, "--tasks", "builtin,conformance", "-l", "info"])
        .args(["-E", "-c", "2", "-n", node])
        .env("CELERIAC_TASK_TRACK_STARTED", "1");
    let worker = LoggedProcess::spawn(command, "celeriac worker", redis.dir().join("celeriac.log"), " ready.").unwrap();
    worker.wait_ready(WAIT).unwrap();
    worker
}

/// A Python worker of the `mixed` app with task events and heartbeats on
/// (Flower shows a worker without heartbeats as offline), consuming `py`.
fn python_worker(redis: &RedisServer, python: &Path, node: &str) -> LoggedProcess {
    let apps = python_dir().join("apps");
    let mut command = Command::new(python);
    command
        .args(["-m", "celery", "-A", "mixed", "worker", "--pool=solo", "-E", "-n", node, "-Q", "py"])
        .args(["--without-gossip", "--without-mingle", "--loglevel=INFO"])
        .current_dir(&apps)
        .env("PYTHONPATH", &apps)
        .env("CELERIAC_TEST_BROKER", redis.url());
    let log = redis.dir().join("python-worker.log");
    let worker = LoggedProcess::spawn(command, "celery worker", log, " ready.").unwrap();
    worker.wait_ready(WAIT).unwrap();
    worker
}

fn admin(url: &str) -> redis::Connection {
    redis::Client::open(url).unwrap().get_connection().unwrap()
}

fn numpat(conn: &mut redis::Connection) -> i64 {
    redis::cmd("PUBSUB").arg("NUMPAT").query(conn).unwrap()
}

/// Flower on a free loopback port, its API open (`FLOWER_UNAUTHENTICATED_API`),
/// with tests/python/apps/flower_app.py (stubs named like celeriac's tasks,
/// which its task buttons need), answering and subscribed to the events.
/// Returns it and its address.
fn flower(redis: &RedisServer, python: &Path) -> (LoggedProcess, String) {
    let mut conn = admin(&redis.url());
    let before = numpat(&mut conn);
    let port = celeriac_tests::free_port().unwrap();
    let apps = python_dir().join("apps");
    let mut command = Command::new(python);
    command
        .args(["-m", "celery", "-A", "flower_app", "--broker", &redis.url(), "flower"])
        .args([format!("--port={port}"), "--address=127.0.0.1".into(), "--inspect_timeout=2000".into()])
        .env("FLOWER_UNAUTHENTICATED_API", "true")
        .env("PYTHONPATH", &apps)
        .current_dir(&apps);
    let flower = LoggedProcess::spawn(command, "flower", redis.dir().join("flower.log"), "Visit me at").unwrap();
    flower.wait_ready(WAIT).unwrap();
    let addr = format!("127.0.0.1:{port}");
    let up = celeriac_tests::wait_until(WAIT, || {
        std::net::TcpStream::connect(&addr).is_ok() && http(&addr, "GET", "/healthcheck").0 == 200
    });
    assert!(up, "{}", flower.log());
    // Its event receiver is subscribed before anything is sent.
    assert!(celeriac_tests::wait_until(WAIT, || numpat(&mut conn) > before), "{}", flower.log());
    (flower, addr)
}

/// One HTTP/1.0 request: the status code and the body.
fn http(addr: &str, method: &str, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(stream, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, body.to_owned())
}

/// A JSON API call that must answer 200.
fn api(addr: &str, method: &str, path: &str) -> Value {
    let (code, body) = http(addr, method, path);
    assert_eq!(code, 200, "{method} {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{method} {path}: {e}: {body}"))
}

/// Sends `calls` with Python Celery's `send_task` (tests/python/call_tasks.py);
/// with `wait`, what `AsyncResult.get()` gave, else the ids.
fn python_calls(url: &str, calls: Value, wait: bool) -> Vec<Value> {
    let lines = celeriac_tests::python_calls(url, &calls.to_string(), wait, 20).unwrap();
    lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn id_of(line: &Value) -> String {
    line["id"].as_str().unwrap().to_owned()
}

/// Polls Flower's `/api/tasks` until `ready` holds for it.
fn tasks_until(addr: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let mut tasks = Value::Null;
    let ok = celeriac_tests::wait_until(WAIT, || {
        tasks = api(addr, "GET", "/api/tasks");
        ready(&tasks)
    });
    assert!(ok, "{tasks:#}");
    tasks
}

#[test]
fn flower_lists_celeriac_beside_python_and_revokes_its_tasks() {
    let (Some(redis), Some(python)) = (celeriac_tests::redis(), celeriac_tests::python_peer()) else { return };
    let url = redis.url();
    let mut rs = celeriac_worker(&redis, RS);
    let _py = python_worker(&redis, &python, PY);
    let (flower, addr) = flower(&redis, &python);

    let done = python_calls(
        &url,
        json!([
            {"name": "t.integration.tasks.add", "args": [2, 3]},
            {"name": "t.integration.tasks.fail", "args": ["disk full"]},
            {"name": "tasks.add", "args": [20, 22], "options": {"queue": "py"}},
        ]),
        true,
    );
    let [added, failed, python_added] = &done.iter().map(id_of).collect::<Vec<_>>()[..] else { unreachable!() };

    // Workers: both listed from Flower's inspect calls, both online from their
    // heartbeats. (A refresh joins an inspection already under way, such as
    // the one Flower started with: ask until the stats count the tasks.)
    let totals = json!({"t.integration.tasks.add": 1, "t.integration.tasks.fail": 1});
    let mut workers = Value::Null;
    let counted = celeriac_tests::wait_until(WAIT, || {
        workers = api(&addr, "GET", &format!("/api/workers?refresh=1&workername={RS}"));
        workers[RS]["stats"]["total"] == totals
    });
    assert!(counted, "{workers:#}");
    let w = &workers[RS];
    assert_eq!(w["stats"]["pool"]["max-concurrency"], json!(2), "{w:#}");
    assert_eq!(w["stats"]["pid"], json!(rs.id()), "{w:#}");
    assert_eq!(w["stats"]["broker"]["transport"], json!("redis"), "{w:#}");
    let registered = w["registered"].as_array().unwrap();
    assert!(registered.contains(&json!("t.integration.tasks.add")), "{w:#}");
    assert!(registered.contains(&json!("t.integration.tasks.sleeping")), "{w:#}");
    assert_eq!(w["active_queues"][0]["name"], json!("celery"), "{w:#}");
    assert_eq!(w["conf"]["worker_send_task_events"], json!(true), "{w:#}");
    for key in ["active", "reserved", "scheduled", "revoked"] {
        assert_eq!(w[key], json!([]), "{key}: {w:#}");
    }
    let workers = api(&addr, "GET", &format!("/api/workers?refresh=1&workername={PY}"));
    assert!(workers[PY]["registered"].as_array().unwrap().contains(&json!("tasks.add")), "{workers:#}");
    assert_eq!(workers[PY]["stats"]["total"], json!({"tasks.add": 1}), "{workers:#}");
    let all = api(&addr, "GET", "/api/workers");
    assert!(all[RS]["stats"].is_object() && all[PY]["stats"].is_object(), "both listed: {all:#}");
    let mut status = Value::Null;
    let online = celeriac_tests::wait_until(WAIT, || {
        status = api(&addr, "GET", "/api/workers?status=1");
        status[RS] == true && status[PY] == true
    });
    assert!(online, "{status}");

    // Tasks: what celeriac ran, from its task events.
    let tasks = tasks_until(&addr, |t| {
        t[added.as_str()]["state"] == "SUCCESS"
            && t[failed.as_str()]["state"] == "FAILURE"
            && t[python_added.as_str()]["state"] == "SUCCESS"
    });
    let t = &tasks[added.as_str()];
    assert_eq!(t["name"], json!("t.integration.tasks.add"), "{t:#}");
    assert_eq!((&t["args"], &t["kwargs"], &t["result"]), (&json!("[2, 3]"), &json!("{}"), &json!("5")), "{t:#}");
    assert_eq!(t["worker"], json!(RS), "{t:#}");
    assert!(t["runtime"].as_f64().is_some_and(|r| (0.0..5.0).contains(&r)), "{t:#}");
    for key in ["received", "started", "succeeded"] {
        assert!(t[key].as_f64().is_some_and(|s| s > 1.0e9), "{key}: {t:#}");
    }
    let f = &tasks[failed.as_str()];
    assert_eq!(f["exception"], json!("ExpectedException('Task expected to fail', 'disk full')"), "{f:#}");
    assert_eq!(f["worker"], json!(RS), "{f:#}");
    assert_eq!(tasks[python_added.as_str()]["worker"], json!(PY), "{tasks:#}");
    let info = api(&addr, "GET", &format!("/api/task/info/{added}"));
    assert_eq!((&info["state"], &info["result"]), (&json!("SUCCESS"), &json!("5")), "{info:#}");

    // The pages render with celeriac in them (the worker page indexes its stats).
    let (code, page) = http(&addr, "GET", &format!("/worker/{RS}"));
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("t.integration.tasks.add"), "registered tasks on the worker page");
    for page in ["/workers", "/tasks", "/broker"] {
        assert_eq!(http(&addr, "GET", page).0, 200, "{page}");
    }
    let lengths = api(&addr, "GET", "/api/queues/length");
    assert_eq!(lengths["active_queues"], json!([{"name": "celery", "messages": 0}, {"name": "py", "messages": 0}]));

    // Revoke from Flower, terminate=true: the running celeriac task is cancelled.
    let sleeping =
        id_of(&python_calls(&url, json!([{"name": "t.integration.tasks.sleeping", "args": [30]}]), false)[0]);
    tasks_until(&addr, |t| t[sleeping.as_str()]["state"] == "STARTED");
    let revoked = api(&addr, "POST", &format!("/api/task/revoke/{sleeping}?terminate=true"));
    assert_eq!(revoked, json!({"message": format!("Revoked '{sleeping}'")}));
    let tasks = tasks_until(&addr, |t| t[sleeping.as_str()]["state"] == "REVOKED");
    assert!(tasks[sleeping.as_str()]["revoked"].is_f64(), "{tasks:#}");
    let log = rs.log();
    assert!(log.contains(&format!("Terminating t.integration.tasks.sleeping[{sleeping}]")), "{log}");
    assert!(!log.contains(&format!("sleeping[{sleeping}] succeeded")), "{log}");

    // Flower's worker buttons: each checks for an `ok` in celeriac's reply.
    let buttons = [
        format!("/api/worker/pool/grow/{RS}?n=1"),
        format!("/api/worker/pool/shrink/{RS}?n=1"),
        format!("/api/worker/queue/add-consumer/{RS}?queue=extra"),
        format!("/api/worker/queue/cancel-consumer/{RS}?queue=extra"),
        format!("/api/task/rate-limit/t.integration.tasks.add?workername={RS}&ratelimit=100/m"),
        format!("/api/task/timeout/t.integration.tasks.add?workername={RS}&soft=10&hard=20"),
    ];
    for path in &buttons {
        let reply = api(&addr, "POST", path);
        assert!(reply["message"].is_string(), "{path}: {reply}");
    }
    // A task Flower's own app does not declare: Flower refuses before asking any worker.
    let (code, body) =
        http(&addr, "POST", &format!("/api/task/rate-limit/t.integration.tasks.mul?workername={RS}&ratelimit=1/s"));
    assert_eq!((code, body.contains("Unknown task")), (404, true), "{body}");
    let (code, body) = http(&addr, "POST", &format!("/api/worker/pool/restart/{RS}"));
    assert_eq!(code, 403, "no pool to restart, as a Python worker without worker_pool_restarts: {body}");

    let reply = api(&addr, "POST", &format!("/api/worker/shutdown/{RS}"));
    assert!(reply["message"].is_string(), "{reply}");
    let stopped = rs.wait_timeout(WAIT).expect("Flower's shutdown did not stop celeriac");
    assert!(stopped.success(), "{}", rs.log());
    let mut status = Value::Null;
    let offline = celeriac_tests::wait_until(WAIT, || {
        status = api(&addr, "GET", "/api/workers?status=1");
        status[RS] == false && status[PY] == true
    });
    assert!(offline, "worker-offline shows celeriac offline: {status}\n{}", flower.log());
}

/// Screenshots of Flower's workers and tasks pages with a mixed fleet, for
/// the README (docs/flower-*.png). Needs headless Chromium (`apt-get install
/// chromium`); run it by name:
/// `cargo test -p celeriac --test flower -- --ignored flower_screenshots`.
#[test]
#[ignore = "writes docs/flower-*.png; needs chromium"]
fn flower_screenshots_for_the_docs() {
    let (Some(redis), Some(python)) = (celeriac_tests::redis(), celeriac_tests::python_peer()) else { return };
    let Some(chromium) = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()))
    else {
        panic!("no chromium on PATH");
    };
    let url = redis.url();
    let _rs = celeriac_worker(&redis, "celeriac@node1");
    let _py = python_worker(&redis, &python, "celery@node1");
    let (_flower, addr) = flower(&redis, &python);
    python_calls(
        &url,
        json!([
            {"name": "t.integration.tasks.add", "args": [2, 3]},
            {"name": "t.integration.tasks.mul", "args": [6, 7]},
            {"name": "t.integration.tasks.fail", "args": ["disk full"]},
            {"name": "t.integration.tasks.retry_once"},
            {"name": "celeriac.ping"},
            {"name": "tasks.add", "args": [20, 22], "options": {"queue": "py"}},
            {"name": "tasks.mul", "args": [3, 4], "options": {"queue": "py"}},
            {"name": "tasks.echo", "args": ["hello"], "options": {"queue": "py"}},
        ]),
        true,
    );
    let running = python_calls(&url, json!([{"name": "t.integration.tasks.sleeping", "args": [30]}]), false);
    tasks_until(&addr, |t| t[running[0]["id"].as_str().unwrap()]["state"] == "STARTED");
    let mut status = Value::Null;
    assert!(celeriac_tests::wait_until(WAIT, || {
        status = api(&addr, "GET", "/api/workers?status=1");
        status["celeriac@node1"] == true && status["celery@node1"] == true
    }));
    let docs = celeriac_tests::repo_root().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    let pages = [
        ("/workers", "flower-workers.png", 560),
        ("/tasks", "flower-tasks.png", 760),
        ("/worker/celeriac@node1", "flower-worker-celeriac.png", 900),
    ];
    for (page, file, height) in pages {
        let out = docs.join(file);
        let status = Command::new(chromium)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"])
            .arg(format!("--window-size=1400,{height}"))
            .arg("--virtual-time-budget=4000")
            .arg(format!("--screenshot={}", out.display()))
            .arg(format!("http://{addr}{page}"))
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success() && out.is_file(), "{page}");
    }
    let sleeping = running[0]["id"].as_str().unwrap();
    api(&addr, "POST", &format!("/api/task/revoke/{sleeping}?terminate=true"));
}

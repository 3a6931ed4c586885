//! `celeriac worker` on RabbitMQ (the run's shared node,
//! `CELERIAC_TEST_AMQP_URL`), end to end against Python Celery 5.7: Python
//! sends tasks over `amqp://` and reads their results from Redis; Celery's
//! own remote-control client (`celery inspect`'s) and event receiver (what
//! Flower uses) talk to the worker over the pidbox and `celeryev` exchanges;
//! a warm shutdown hands held ETA messages back to RabbitMQ; Flower watches a
//! celeriac worker on RabbitMQ.
//! Each test consumes a queue of its own, so tests share the node safely.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed assertion

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use celeriac_tests::{LoggedProcess, RedisServer};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

fn python_dir() -> PathBuf {
    celeriac_tests::repo_root().join("tests/python")
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}{}x{nanos}", std::process::id())
}

/// Starts `celeriac worker` on the AMQP broker `amqp` consuming `queue`,
/// results in `redis`, and waits until it is ready.
fn celeriac_worker(amqp: &str, redis: &RedisServer, queue: &str, node: &str, flags: &[&str]) -> LoggedProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_celeriac"));
    command
        .args(["worker", "-b", amqp, "--result-backend", &redis.url(), "--tasks", "builtin,conformance"])
        .args(["-l", "info", "-Q", queue, "-n", node])
        .args(flags)
        .env("REDIS_HOST", "127.0.0.1")
        .env("REDIS_PORT", redis.port().to_string());
    let log = redis.dir().join(format!("celeriac-amqp-worker-{node}.log"));
    let worker = LoggedProcess::spawn(command, "celeriac worker", log, " ready.").unwrap();
    worker.wait_ready(WAIT).unwrap();
    worker
}

/// Python's `send_task` over `amqp`, results read from `redis` (call_tasks.py).
fn python_calls(amqp: &str, redis: &RedisServer, calls: Value, wait: bool) -> Vec<Value> {
    use std::io::Write;
    let mut child = Command::new(celeriac_tests::python().unwrap())
        .arg(python_dir().join("call_tasks.py"))
        .args(["--broker", amqp, "--backend", &redis.url(), "--timeout", "30"])
        .args(if wait { &[][..] } else { &["--no-wait"][..] })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(calls.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "call_tasks.py failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Celery's remote-control client over `amqp` (control_call.py): the replies by node.
fn broadcast(amqp: &str, node: &str, method: &str) -> serde_json::Map<String, Value> {
    let out = Command::new(celeriac_tests::python().unwrap())
        .arg(python_dir().join("control_call.py"))
        .args(["--broker", amqp, "--method", method, "--destination", node, "--timeout", "10"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "control_call.py failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let replies: Vec<serde_json::Map<String, Value>> = serde_json::from_str(text.trim()).unwrap();
    replies.into_iter().flatten().collect()
}

#[test]
fn python_calls_rust_tasks_over_amqp_and_controls_the_worker() {
    let (Some(amqp), Some(redis), Some(_)) =
        (celeriac_tests::amqp(), celeriac_tests::redis(), celeriac_tests::python_peer())
    else {
        return;
    };
    let queue = unique("amqpw");
    let node = format!("{queue}@test");
    let worker = celeriac_worker(&amqp, &redis, &queue, &node, &["-c", "2", "-E"]);
    let q = json!({"queue": queue});
    let out = python_calls(
        &amqp,
        &redis,
        json!([
            {"name": "celeriac.ping", "options": q},
            {"name": "t.integration.tasks.add", "args": [2, 40], "options": q},
            {"name": "t.integration.tasks.fail", "args": ["disk full"], "options": q},
            {"name": "t.integration.tasks.retry_once", "options": q},
            {"name": "t.integration.tasks.add", "args": [1, 2], "options": {"queue": queue, "countdown": 1}},
            {"name": "tasks.not_compiled_in", "args": [1], "options": q},
        ]),
        true,
    );
    assert_eq!(out[0]["result"], json!("pong"), "{out:?}");
    assert_eq!(out[1]["result"], json!(42));
    assert_eq!((&out[2]["state"], &out[2]["exc_type"]), (&json!("FAILURE"), &json!("ExpectedException")));
    assert_eq!(out[3]["result"], json!(1), "retry_once re-sent itself over AMQP: {:?}", out[3]);
    assert_eq!(out[4]["result"], json!(3), "an ETA task held and run: {:?}", out[4]);
    assert_eq!((&out[5]["state"], &out[5]["exc_type"]), (&json!("FAILURE"), &json!("NotRegistered")));

    // celery inspect / control, as Flower sends them, over celery.pidbox.
    let ping = broadcast(&amqp, &node, "ping");
    assert_eq!(ping.get(&node), Some(&json!({"ok": "pong"})), "{ping:?}");
    let queues = broadcast(&amqp, &node, "active_queues");
    let names: Vec<&str> = queues[&node].as_array().unwrap().iter().filter_map(|q| q["name"].as_str()).collect();
    assert_eq!(names, [queue.as_str()]);

    // Events reach Celery's EventReceiver on the celeryev topic exchange.
    let events = Command::new(celeriac_tests::python().unwrap())
        .arg(python_dir().join("capture_events.py"))
        .args(["--broker", &amqp, "--limit", "1", "--timeout", "20", "--types", "worker-heartbeat"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&events.stdout);
    assert!(events.status.success(), "{text}\n{}", String::from_utf8_lossy(&events.stderr));
    let heartbeat: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(heartbeat["type"], json!("worker-heartbeat"));

    let log = worker.log();
    assert!(log.contains("amqp://guest:**@127.0.0.1"), "masked broker URL in the banner:\n{log}");
    assert!(log.contains("Task t.integration.tasks.add[") && log.contains("succeeded in"), "{log}");
}

#[test]
fn warm_shutdown_hands_held_messages_back_to_rabbitmq() {
    let (Some(amqp), Some(redis), Some(_)) =
        (celeriac_tests::amqp(), celeriac_tests::redis(), celeriac_tests::python_peer())
    else {
        return;
    };
    let queue = unique("amqpshut");
    let node = format!("{queue}@test");
    let mut worker = celeriac_worker(&amqp, &redis, &queue, &node, &["-c", "1", "--prefetch-multiplier", "1"]);
    let sent = python_calls(
        &amqp,
        &redis,
        json!([
            {"name": "t.integration.tasks.add", "args": [1, 1], "options": {"queue": queue, "countdown": 3600}},
            {"name": "t.integration.tasks.add", "args": [2, 2], "options": {"queue": queue, "countdown": 3600}},
        ]),
        false,
    );
    // Both ETA messages are held at once although prefetch is 1: each held
    // ETA raises basic.qos by one, as Celery's worker does.
    let scheduled = (0..100)
        .find_map(|_| {
            let replies = broadcast(&amqp, &node, "scheduled");
            let n = replies.get(&node).and_then(Value::as_array).map_or(0, Vec::len);
            (n == 2).then_some(n)
        })
        .expect("both ETA tasks held");
    assert_eq!(scheduled, 2);
    worker.signal("TERM");
    let status = worker.wait_timeout(WAIT).expect("the worker did not stop");
    assert!(status.success(), "exit status {status:?}\n{}", worker.log());
    // The two messages are back in the queue for the next worker.
    let python = celeriac_tests::python().unwrap();
    let count = Command::new(python)
        .arg("-c")
        .arg(
            "import sys\nfrom kombu import Connection\nwith Connection(sys.argv[1]) as c:\n    \
             print(c.default_channel.queue_declare(sys.argv[2], passive=True).message_count)",
        )
        .args([&amqp, &queue])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&count.stdout).trim(), "2", "{sent:?} {}", worker.log());
}

#[test]
fn beat_sends_on_amqp_and_a_worker_runs_it() {
    let (Some(amqp), Some(redis), Some(_)) =
        (celeriac_tests::amqp(), celeriac_tests::redis(), celeriac_tests::python_peer())
    else {
        return;
    };
    let queue = unique("amqpbeat");
    let node = format!("{queue}@test");
    let _worker = celeriac_worker(&amqp, &redis, &queue, &node, &["-c", "2"]);
    // Beat's state in a local file (no Redis named): it sends on RabbitMQ.
    let config = redis.dir().join("beat-amqp.toml");
    std::fs::write(
        &config,
        format!(
            "broker_url = \"{amqp}\"\nresult_backend = \"{backend}\"\nbeat_schedule_filename = \"{state}\"\n\n\
             [beat_schedule.sum]\ntask = \"t.integration.tasks.add\"\nschedule = 1\nargs = [20, 22]\n\
             options = {{ queue = \"{queue}\" }}\n",
            backend = redis.url(),
            state = redis.dir().join("beat-amqp-state.json").display(),
        ),
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_celeriac"));
    command.args(["beat", "--config"]).arg(&config).args(["-l", "info"]).current_dir(redis.dir());
    let beat = LoggedProcess::spawn(command, "beat", redis.dir().join("beat-amqp.log"), "beat: Starting...").unwrap();
    beat.wait_ready(WAIT).unwrap();
    // Every task beat sends is run by the worker: three results of 42 in Redis.
    let mut con = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
    let done = celeriac_tests::wait_until(WAIT, || {
        let keys: Vec<String> = redis::cmd("KEYS").arg("celery-task-meta-*").query(&mut con).unwrap_or_default();
        keys.len() >= 3
    });
    assert!(done, "beat's tasks did not run:\n{}\n{}", beat.log(), _worker.log());
    let keys: Vec<String> = redis::cmd("KEYS").arg("celery-task-meta-*").query(&mut con).unwrap();
    let record: String = redis::cmd("GET").arg(&keys[0]).query(&mut con).unwrap();
    assert!(record.contains(r#""result": 42"#) && record.contains("SUCCESS"), "{record}");
    assert!(beat.log().contains("Scheduler: Sending due task sum"), "{}", beat.log());
}

#[test]
fn python_clients_read_results_over_rpc() {
    let (Some(amqp), Some(redis), Some(_)) =
        (celeriac_tests::amqp(), celeriac_tests::redis(), celeriac_tests::python_peer())
    else {
        return;
    };
    let queue = unique("amqprpc");
    let node = format!("{queue}@test");
    let mut command = Command::new(env!("CARGO_BIN_EXE_celeriac"));
    command
        .args(["worker", "-b", &amqp, "--result-backend", "rpc://", "--tasks", "builtin,conformance"])
        .args(["-l", "info", "-Q", &queue, "-n", &node, "-c", "2"]);
    let log = redis.dir().join("celeriac-rpc-worker.log");
    let worker = LoggedProcess::spawn(command, "celeriac worker", log, " ready.").unwrap();
    worker.wait_ready(WAIT).unwrap();
    // call_tasks.py with backend rpc://: Celery's RPCBackend reads the replies.
    let mut child = Command::new(celeriac_tests::python().unwrap())
        .arg(python_dir().join("call_tasks.py"))
        .args(["--broker", &amqp, "--backend", "rpc://", "--timeout", "30"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let calls = json!([
        {"name": "t.integration.tasks.add", "args": [2, 40], "options": {"queue": queue}},
        {"name": "t.integration.tasks.fail", "args": ["disk full"], "options": {"queue": queue}},
    ]);
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(calls.to_string().as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}\n{}", String::from_utf8_lossy(&out.stderr), worker.log());
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["state"], json!("SUCCESS"), "{lines:?}");
    assert_eq!(lines[0]["result"], json!(42));
    assert_eq!((&lines[1]["state"], &lines[1]["exc_type"]), (&json!("FAILURE"), &json!("ExpectedException")));
}

/// One HTTP/1.0 request to Flower: the status code and the body.
fn http(addr: &str, method: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(stream, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, body.to_owned())
}

/// A Flower API call that must answer 200, as JSON.
fn api(addr: &str, method: &str, path: &str) -> Value {
    let (code, body) = http(addr, method, path);
    assert_eq!(code, 200, "{method} {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{method} {path}: {e}: {body}"))
}

#[test]
fn flower_watches_a_celeriac_worker_on_rabbitmq() {
    let (Some(amqp), Some(redis), Some(python)) =
        (celeriac_tests::amqp(), celeriac_tests::redis(), celeriac_tests::python_peer())
    else {
        return;
    };
    let queue = unique("amqpflower");
    let node = format!("{queue}@test");
    let _worker = celeriac_worker(&amqp, &redis, &queue, &node, &["-c", "2", "-E"]);
    let port = celeriac_tests::free_port().unwrap();
    let apps = python_dir().join("apps");
    let mut command = Command::new(python);
    command
        .args(["-m", "celery", "-A", "flower_app", "--broker", &amqp, "flower"])
        .args([format!("--port={port}"), "--address=127.0.0.1".into(), "--inspect_timeout=3000".into()])
        .env("FLOWER_UNAUTHENTICATED_API", "true")
        .env("PYTHONPATH", &apps)
        .current_dir(&apps);
    let flower = LoggedProcess::spawn(command, "flower", redis.dir().join("flower-amqp.log"), "Visit me at").unwrap();
    flower.wait_ready(WAIT).unwrap();
    let addr = format!("127.0.0.1:{port}");
    let up = celeriac_tests::wait_until(WAIT, || {
        std::net::TcpStream::connect(&addr).is_ok() && http(&addr, "GET", "/healthcheck").0 == 200
    });
    assert!(up, "{}", flower.log());
    // Online from its heartbeats on celeryev: Flower's event receiver is
    // subscribed, so the task events that follow reach it.
    let mut status = Value::Null;
    let online = celeriac_tests::wait_until(WAIT, || {
        status = api(&addr, "GET", "/api/workers?status=1");
        status[node.as_str()] == true
    });
    assert!(online, "{status}\n{}", flower.log());
    let q = json!({"queue": queue});
    let done =
        python_calls(&amqp, &redis, json!([{"name": "t.integration.tasks.add", "args": [2, 3], "options": q}]), true);
    let id = done[0]["id"].as_str().unwrap().to_owned();

    // The worker, from Flower's broadcasts over celery.pidbox.
    let mut workers = Value::Null;
    let counted = celeriac_tests::wait_until(WAIT, || {
        workers = api(&addr, "GET", &format!("/api/workers?refresh=1&workername={node}"));
        workers[node.as_str()]["stats"]["total"] == json!({"t.integration.tasks.add": 1})
    });
    assert!(counted, "{workers:#}\n{}", flower.log());
    let w = &workers[node.as_str()];
    assert_eq!(w["stats"]["broker"]["transport"], json!("amqp"), "{w:#}");
    assert_eq!(w["active_queues"][0]["name"], json!(queue), "{w:#}");
    assert!(w["registered"].as_array().unwrap().contains(&json!("t.integration.tasks.add")), "{w:#}");
    // The task, from its events on celeryev.
    let mut tasks = Value::Null;
    let seen = celeriac_tests::wait_until(WAIT, || {
        tasks = api(&addr, "GET", "/api/tasks");
        tasks[id.as_str()]["state"] == "SUCCESS"
    });
    assert!(seen, "{tasks:#}");
    assert_eq!((&tasks[id.as_str()]["result"], &tasks[id.as_str()]["worker"]), (&json!("5"), &json!(node)));
    // A worker button: the reply carries celeriac's `ok`.
    let path = format!("/api/task/rate-limit/t.integration.tasks.add?workername={node}&ratelimit=100/m");
    let reply = api(&addr, "POST", &path);
    assert!(reply["message"].as_str().is_some_and(|m| m.contains("new rate limit")), "{reply}");
}

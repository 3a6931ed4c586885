//! The operator's commands of the real `celeriac` binary against a real
//! fleet: a celeriac worker and a Python Celery worker on a private
//! redis-server, and on RabbitMQ (the run's shared node). Where Celery's own command line does the same thing
//! (`celery inspect`, `celery control`, `celery purge`, `celery result`),
//! both run and their answers are compared side by side.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed assertion

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use celeriac_tests::{CeleryWorker, LoggedProcess, RedisServer};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);
const RS: &str = "rs@ops-host";
const PY: &str = "py@ops-host";

fn apps() -> PathBuf {
    celeriac_tests::repo_root().join("tests/python/apps")
}

fn celeriac(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_celeriac")).args(args).output().unwrap()
}

/// `celeriac <args> -b URL --json` (and `--result-backend URL`): its exit
/// status and stdout as JSON.
fn celeriac_json(url: &str, args: &[&str]) -> (Option<i32>, Value) {
    let out = celeriac(&[args, &["-b", url, "--result-backend", url, "--json"]].concat());
    let text = String::from_utf8_lossy(&out.stdout);
    let value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("celeriac {args:?}: {e}: {text}\n{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), value)
}

/// The pinned `celery -A mixed <args>`: exit status, stdout, stderr.
fn celery(url: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(celeriac_tests::python().unwrap())
        .args(["-m", "celery", "-A", "mixed"])
        .args(args)
        .current_dir(apps())
        .env("PYTHONPATH", apps())
        .env("CELERIAC_TEST_BROKER", url)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

fn celeriac_worker(redis: &RedisServer, extra: &[&str]) -> LoggedProcess {
    let url = redis.url();
    let mut command = Command::new(env!("CARGO_BIN_EXE_celeriac"));
    command
        .args(["worker", "-b", &url, "--result-backend", &url, "--tasks", "builtin,conformance", "-n", RS])
        .args(extra);
    let worker = LoggedProcess::spawn(command, "celeriac worker", redis.dir().join("rs.log"), " ready.").unwrap();
    worker.wait_ready(WAIT).unwrap();
    worker
}

fn python_worker(redis: &RedisServer, python: &Path) -> CeleryWorker {
    let worker = CeleryWorker::builder(python, "mixed", &apps())
        .queues("py")
        .args(&["--pool=solo", "-n", PY, "--loglevel=INFO"])
        .env("CELERIAC_TEST_BROKER", &redis.url())
        .log(redis.dir().join("py.log"))
        .start()
        .unwrap();
    worker.wait_ready(WAIT).unwrap();
    worker
}

/// Sends `calls` with Python Celery's `send_task`, not waiting: their ids.
fn send(url: &str, calls: Value) -> Vec<String> {
    let lines = celeriac_tests::python_calls(url, &calls.to_string(), false, 20).unwrap();
    lines.iter().map(|l| serde_json::from_str::<Value>(l).unwrap()["id"].as_str().unwrap().to_owned()).collect()
}

/// Replies with the values that change from one call to the next removed.
fn steady(mut v: Value) -> Value {
    if let Some(m) = v.as_object_mut() {
        for node in m.values_mut() {
            if let Some(stats) = node.as_object_mut() {
                for key in ["clock", "uptime", "rusage", "total", "pid", "pool", "prefetch_count"] {
                    stats.remove(key);
                }
            }
        }
    }
    v
}

#[test]
fn the_operator_commands_work_on_a_mixed_fleet_as_celerys_do() {
    let (Some(redis), Some(python)) = (celeriac_tests::redis(), celeriac_tests::python_peer()) else { return };
    let url = redis.url();
    let rs = celeriac_worker(&redis, &["-Q", "celery,workflow.hpc", "-c", "1"]);
    let _py = python_worker(&redis, &python);
    let both = format!("{RS},{PY}");

    // inspect: the same replies as `celery inspect` gets, from both workers.
    for command in [&["ping"][..], &["registered"], &["active_queues"], &["stats"], &["revoked"]] {
        let (code, ours) = celeriac_json(&url, &[&["inspect"], command, &["-d", &both, "-t", "10"]].concat());
        assert_eq!(code, Some(0), "{command:?}");
        let (ok, theirs, err) = celery(&url, &[&["inspect"], command, &["--json", "-t", "10", "-d", &both]].concat());
        assert_eq!(ok, Some(0), "celery inspect {command:?}: {err}");
        let theirs: Value = serde_json::from_str(theirs.trim()).unwrap();
        assert_eq!(steady(ours.clone()), steady(theirs), "inspect {command:?}:\n{}", rs.log());
        assert_eq!(ours.as_object().unwrap().len(), 2, "{ours}");
    }
    // control: a list of {node: reply}, as `celery control --json`.
    let (code, ours) = celeriac_json(&url, &["control", "rate_limit", "tasks.add", "10/m", "-d", &both, "-t", "10"]);
    assert_eq!(code, Some(0));
    let (_, theirs, _) =
        celery(&url, &["control", "rate_limit", "tasks.add", "10/m", "--json", "-t", "10", "-d", &both]);
    let sorted = |v: &Value| {
        let mut list: Vec<String> = v.as_array().unwrap().iter().map(Value::to_string).collect();
        list.sort();
        list
    };
    assert_eq!(sorted(&ours), sorted(&serde_json::from_str(theirs.trim()).unwrap()));
    assert!(ours.to_string().contains("unknown task"), "celeriac has no tasks.add: {ours}");
    assert!(ours.to_string().contains("new rate limit set successfully"), "{ours}");

    // call: Python's task on the Python worker, a conformance task on celeriac's.
    let (code, on_py) =
        celeriac_json(&url, &["call", "tasks.add", "--args", "[2, 3]", "-Q", "py", "--wait", "-t", "20"]);
    assert_eq!((code, &on_py["state"], &on_py["result"]), (Some(0), &json!("SUCCESS"), &json!(5)), "{on_py}");
    let (_, on_rs) = celeriac_json(&url, &["call", "t.integration.tasks.add", "-a", "[40, 2]", "-w", "-t", "20"]);
    assert_eq!(on_rs["result"], json!(42), "{on_rs}\n{}", rs.log());
    // result: the record as Celery's `celery result` reads it.
    let id = on_py["id"].as_str().unwrap();
    let (code, record) = celeriac_json(&url, &["result", id]);
    assert_eq!((code, &record["status"], &record["result"]), (Some(0), &json!("SUCCESS"), &json!(5)), "{record}");
    let (_, text, _) = celery(&url, &["result", id]);
    let ours = celeriac(&["result", id, "-b", &url, "--result-backend", &url]);
    assert_eq!(String::from_utf8_lossy(&ours.stdout).trim(), text.trim(), "the same text as `celery result`");
    // A failing task: its exception, exit status 1.
    let (code, failed) =
        celeriac_json(&url, &["call", "tasks.fail", "--args", "[\"boom\"]", "-Q", "py", "--wait", "-t", "20"]);
    assert_eq!((code, &failed["state"]), (Some(1), &json!("FAILURE")), "{failed}");
    assert_eq!(failed["exception"]["exc_type"], "ValueError");

    // status and queues: depths by priority in a queue nobody consumes, the
    // unacked messages a worker holds (an ETA task), both workers.
    send(
        &url,
        json!([
            {"name": "tasks.add", "args": [1, 1], "options": {"queue": "idle", "priority": 0}},
            {"name": "tasks.add", "args": [1, 2], "options": {"queue": "idle", "priority": 0}},
            {"name": "tasks.add", "args": [1, 3], "options": {"queue": "idle", "priority": 9}},
            {"name": "t.integration.tasks.add", "args": [1, 4], "options": {"countdown": 3600}},
        ]),
    );
    let mut admin = redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();
    let held =
        celeriac_tests::wait_until(WAIT, || redis::cmd("HLEN").arg("unacked").query::<i64>(&mut admin).unwrap() == 1);
    assert!(held, "{}", rs.log());
    let (code, status) = celeriac_json(&url, &["status", "-Q", "idle"]);
    assert_eq!(code, Some(0), "{status}");
    let names: Vec<&str> = status["workers"].as_array().unwrap().iter().map(|w| w["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec![PY, RS], "{status}");
    let rs_view = status["workers"].as_array().unwrap().iter().find(|w| w["name"] == RS).unwrap();
    assert_eq!((rs_view["scheduled"].clone(), rs_view["concurrency"].clone()), (json!(1), json!(1)), "{status}");
    let queue = |name: &str| status["queues"].as_array().unwrap().iter().find(|q| q["name"] == name).cloned().unwrap();
    assert_eq!(queue("idle")["messages"], json!(3), "{status}");
    assert_eq!(queue("idle")["by_priority"], json!({"0": 2, "9": 1}), "priority sub-queues: {status}");
    assert_eq!(queue("idle")["consumers"], json!([]));
    assert_eq!(queue("celery")["unacked"], json!(1), "{status}");
    assert_eq!(queue("py")["consumers"], json!([PY]));
    assert_eq!(status["unacked"], json!(1));
    let (_, queues) = celeriac_json(&url, &["queues"]);
    let listed: Vec<&str> = queues.as_array().unwrap().iter().map(|q| q["name"].as_str().unwrap()).collect();
    for name in ["celery", "idle", "py", "workflow.hpc"] {
        assert!(listed.contains(&name), "{name} in {queues}");
    }
    // monitor: one JSON document per refresh.
    let out = celeriac(&["monitor", "-b", &url, "--json", "--count", "2", "--interval", "0.2", "-t", "0.5"]);
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[1]["workers"][0]["rate"].is_number());

    // purge: what `celery purge` would remove, and its words.
    let (code, purged) = celeriac_json(&url, &["purge", "-Q", "idle", "-f"]);
    assert_eq!((code, purged), (Some(0), json!({"purged": {"idle": 3}, "total": 3})));
    send(&url, json!([{"name": "tasks.add", "args": [1, 1], "options": {"queue": "idle"}}]));
    let (_, theirs, _) = celery(&url, &["purge", "-Q", "idle", "-f"]);
    send(&url, json!([{"name": "tasks.add", "args": [1, 1], "options": {"queue": "idle"}}]));
    let ours = celeriac(&["purge", "-Q", "idle", "-f", "-b", &url]);
    assert_eq!(String::from_utf8_lossy(&ours.stdout).trim(), theirs.trim());
    let refused = celeriac(&["purge", "-Q", "idle", "-b", &url]);
    assert!(!refused.status.success(), "no -f and no terminal: nothing is purged without asking");
}

#[test]
fn no_worker_answering_exits_69_as_celery_inspect() {
    let Some(redis) = celeriac_tests::redis() else { return };
    let url = redis.url();
    let ours = celeriac(&["inspect", "ping", "-b", &url, "-t", "0.3"]);
    let (theirs, _, _) = celery(&url, &["inspect", "ping", "-t", "0.3"]);
    assert_eq!(ours.status.code(), theirs);
    assert_eq!(ours.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&ours.stderr).contains("No nodes replied"));
    let usage = celeriac(&["inspect", "nosuch", "-b", &url]);
    assert!(String::from_utf8_lossy(&usage.stderr).contains("Available inspect commands"));
}

/// `celeriac <args> -b BROKER --result-backend BACKEND --json`: exit status
/// and stdout as JSON.
fn celeriac_json_on(broker: &str, backend: &str, args: &[&str]) -> (Option<i32>, Value) {
    let out = celeriac(&[args, &["-b", broker, "--result-backend", backend, "--json"]].concat());
    let text = String::from_utf8_lossy(&out.stdout);
    let value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("celeriac {args:?}: {e}: {text}\n{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), value)
}

/// The pinned `celery -A mixed <args>` on `broker` with results in `backend`.
fn celery_on(broker: &str, backend: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(celeriac_tests::python().unwrap())
        .args(["-m", "celery", "-A", "mixed"])
        .args(args)
        .current_dir(apps())
        .env("PYTHONPATH", apps())
        .env("CELERIAC_TEST_BROKER", broker)
        .env("CELERIAC_TEST_BACKEND", backend)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// The operator commands on RabbitMQ (the run's shared node, results in a
/// private Redis): remote control over the `celery.pidbox` fanout with
/// replies on `reply.celery.pidbox`, answered by a Python and a celeriac
/// worker as `celery inspect`/`control` get them; depths by passive
/// `queue.declare`; `call`, `result` and `purge` beside Celery's. Queue and
/// node names are unique, as other tests share the node.
#[test]
fn the_operator_commands_work_on_rabbitmq_as_celerys_do() {
    let (Some(amqp), Some(redis), Some(python)) =
        (celeriac_tests::amqp(), celeriac_tests::redis(), celeriac_tests::python_peer())
    else {
        return;
    };
    let backend = redis.url();
    let tag = format!("{}x{}", std::process::id(), redis.port());
    let (rs, py) = (format!("rs{tag}@ops-amqp"), format!("py{tag}@ops-amqp"));
    let (rq, pq, idle) = (format!("rq{tag}"), format!("pq{tag}"), format!("idle{tag}"));
    let mut command = Command::new(env!("CARGO_BIN_EXE_celeriac"));
    command
        .args(["worker", "-b", &amqp, "--result-backend", &backend, "--tasks", "builtin,conformance"])
        .args(["-n", &rs, "-Q", &rq, "-c", "1"]);
    let rs_worker = LoggedProcess::spawn(command, "celeriac worker", redis.dir().join("rs.log"), " ready.").unwrap();
    let py_worker = CeleryWorker::builder(&python, "mixed", &apps())
        .queues(&pq)
        .args(&["--pool=solo", "-n", &py, "--loglevel=INFO"])
        .env("CELERIAC_TEST_BROKER", &amqp)
        .env("CELERIAC_TEST_BACKEND", &backend)
        .log(redis.dir().join("py.log"))
        .start()
        .unwrap();
    rs_worker.wait_ready(WAIT).unwrap();
    py_worker.wait_ready(WAIT).unwrap();
    let both = format!("{rs},{py}");
    let ours = |args: &[&str]| celeriac_json_on(&amqp, &backend, args);
    let theirs = |args: &[&str]| celery_on(&amqp, &backend, args);

    // inspect: the replies `celery inspect` gets, from both workers.
    for command in [&["ping"][..], &["active_queues"], &["registered"], &["stats"]] {
        let (code, got) = ours(&[&["inspect"], command, &["-d", &both, "-t", "10"]].concat());
        assert_eq!(code, Some(0), "{command:?}: {got}");
        let (ok, text, err) = theirs(&[&["inspect"], command, &["--json", "-t", "10", "-d", &both]].concat());
        assert_eq!(ok, Some(0), "celery inspect {command:?}: {err}");
        let want: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(steady(got.clone()), steady(want), "inspect {command:?}:\n{}", rs_worker.log());
        assert_eq!(got.as_object().unwrap().len(), 2, "{got}");
    }
    // control: the same list of {node: reply} as `celery control --json`.
    let (code, got) = ours(&["control", "rate_limit", "tasks.add", "10/m", "-d", &both, "-t", "10"]);
    assert_eq!(code, Some(0));
    let (_, text, _) = theirs(&["control", "rate_limit", "tasks.add", "10/m", "--json", "-t", "10", "-d", &both]);
    let sorted = |v: &Value| {
        let mut list: Vec<String> = v.as_array().unwrap().iter().map(Value::to_string).collect();
        list.sort();
        list
    };
    assert_eq!(sorted(&got), sorted(&serde_json::from_str(text.trim()).unwrap()));
    assert!(got.to_string().contains("new rate limit set successfully"), "{got}");
    // No node of that name: nobody answers, exit 69 as `celery inspect`.
    let nobody = celeriac(&["inspect", "ping", "-d", "nobody@ops-amqp", "-t", "0.5", "-b", &amqp]);
    let (theirs_code, _, _) = theirs(&["inspect", "ping", "-d", "nobody@ops-amqp", "-t", "0.5"]);
    assert_eq!((nobody.status.code(), theirs_code), (Some(69), Some(69)));

    // call and result, over AMQP with results in Redis.
    let (code, on_py) = ours(&["call", "tasks.add", "--args", "[2, 3]", "-Q", &pq, "--wait", "-t", "20"]);
    assert_eq!((code, &on_py["result"]), (Some(0), &json!(5)), "{on_py}\n{}", py_worker.log());
    let (_, on_rs) = ours(&["call", "t.integration.tasks.add", "-a", "[40, 2]", "-Q", &rq, "-w", "-t", "20"]);
    assert_eq!(on_rs["result"], json!(42), "{on_rs}\n{}", rs_worker.log());
    let id = on_py["id"].as_str().unwrap();
    let (_, text, _) = theirs(&["result", id]);
    let out = celeriac(&["result", id, "-b", &amqp, "--result-backend", &backend]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), text.trim(), "the same text as `celery result`");

    // status and queues: ready messages in a queue nobody consumes, an ETA
    // task held by the celeriac worker; AMQP reports no unacked counts.
    let calls = json!([
        {"name": "tasks.add", "args": [1, 1], "options": {"queue": idle}},
        {"name": "tasks.add", "args": [1, 2], "options": {"queue": idle}},
        {"name": "tasks.add", "args": [1, 3], "options": {"queue": idle}},
        {"name": "t.integration.tasks.add", "args": [1, 4], "options": {"queue": rq, "countdown": 3600}},
    ]);
    celeriac_tests::python_calls_on(&amqp, &backend, &calls.to_string(), false, 20).unwrap();
    let mut status = Value::Null;
    let held = celeriac_tests::wait_until(WAIT, || {
        status = ours(&["status", "-d", &both, "-Q", &idle, "-t", "5"]).1;
        let workers = status["workers"].as_array().cloned().unwrap_or_default();
        workers.iter().any(|w| w["name"] == rs.as_str() && w["scheduled"] == json!(1))
    });
    assert!(held, "{status}\n{}", rs_worker.log());
    let mut names: Vec<&str> =
        status["workers"].as_array().unwrap().iter().map(|w| w["name"].as_str().unwrap()).collect();
    names.sort_unstable();
    let mut want = vec![py.as_str(), rs.as_str()];
    want.sort_unstable();
    assert_eq!(names, want, "{status}");
    let queue = |name: &str| status["queues"].as_array().unwrap().iter().find(|q| q["name"] == name).cloned().unwrap();
    assert_eq!(queue(&idle)["messages"], json!(3), "{status}");
    assert_eq!(queue(&idle)["consumers"], json!([]));
    assert_eq!(queue(&idle)["unacked"], Value::Null);
    assert_eq!(queue(&pq)["consumers"], json!([py.as_str()]));
    assert_eq!(queue(&rq)["messages"], json!(0), "the ETA message is held, not ready: {status}");
    assert_eq!(status["unacked"], Value::Null);
    let (code, queues) = ours(&["queues", "-Q", &format!("{idle},{rq},{pq}")]);
    assert_eq!(code, Some(0));
    let depth: Vec<(&str, &Value)> =
        queues.as_array().unwrap().iter().map(|q| (q["name"].as_str().unwrap(), &q["messages"])).collect();
    assert!(depth.contains(&(idle.as_str(), &json!(3))), "{queues}");
    let text = celeriac(&["status", "-b", &amqp, "-d", &both, "-t", "5"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(&rs) && text.contains(&py) && text.contains("not reported"), "{text}");
    let out =
        celeriac(&["monitor", "-b", &amqp, "--json", "--count", "2", "--interval", "0.2", "-t", "2", "-d", &both]);
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(lines[1]["workers"].as_array().unwrap().len(), 2, "{:?}", lines[1]);

    // purge: what `celery purge` removes, and its words.
    let (code, purged) = ours(&["purge", "-Q", &idle, "-f"]);
    assert_eq!((code, purged), (Some(0), json!({"purged": {idle.as_str(): 3}, "total": 3})));
    let one = json!([{"name": "tasks.add", "args": [1, 1], "options": {"queue": idle}}]).to_string();
    celeriac_tests::python_calls_on(&amqp, &backend, &one, false, 20).unwrap();
    let (_, text, err) = theirs(&["purge", "-Q", &idle, "-f"]);
    assert!(text.contains("Purged 1 message"), "{text}{err}");
    celeriac_tests::python_calls_on(&amqp, &backend, &one, false, 20).unwrap();
    let out = celeriac(&["purge", "-Q", &idle, "-f", "-b", &amqp]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), text.trim());
    // A queue that does not exist purges nothing, as with Celery.
    let (code, purged) = ours(&["purge", "-Q", &format!("nosuch{tag}"), "-f"]);
    assert_eq!((code, &purged["total"]), (Some(0), &json!(0)), "{purged}");
    drop(rs_worker);
    drop(py_worker);
    let _ = ours(&["purge", "-Q", &format!("{rq},{pq},{idle}"), "-f"]);
}

/// Celery's command-line habits on the real binary: a repeated option takes
/// its last value, `--opt=value` and `-c4`, case-insensitive log levels,
/// `-Q a,b`, `%n`/`%h`/`%i` in the node name, log file, pid file and state
/// file, expanded as the pinned Celery's `node_format` does.
#[test]
fn the_worker_takes_celerys_command_line_habits() {
    let (Some(redis), Some(python)) = (celeriac_tests::redis(), celeriac_tests::python_peer()) else { return };
    let url = redis.url();
    let dir = redis.dir();
    let (log, pid, state) = (dir.join("%n-%i.log"), dir.join("%n.pid"), dir.join("%n.state"));
    let mut command = Command::new(env!("CARGO_BIN_EXE_celeriac"));
    command.args(["worker", "-b", &url, "-n", "first@%h", "-n", "hab@%h", "-c4", "--concurrency=2", "-l", "debug"]);
    command.args([
        "--loglevel=iNfO",
        "-Q",
        "x",
        "-Q",
        "celery,habits",
        "--prefetch-multiplier",
        "7",
        "--prefetch-multiplier=1",
    ]);
    command.args([
        "--logfile",
        log.to_str().unwrap(),
        "--pidfile",
        pid.to_str().unwrap(),
        "-S",
        state.to_str().unwrap(),
    ]);
    // Its log goes to the log file: a `ping` says it is ready.
    let worker = LoggedProcess::spawn(command, "celeriac worker", dir.join("habits-stdout.log"), " ready.").unwrap();
    let host = celeriac_broker::producer::hostname();
    let node = format!("hab@{host}");
    let answers = || celeriac(&["inspect", "ping", "-b", &url, "-d", &node, "-t", "1"]).status.success();
    assert!(celeriac_tests::wait_until(WAIT, answers), "{}", worker.log());
    let (_, stats) = celeriac_json(&url, &["inspect", "stats", "-d", &node, "-t", "10"]);
    assert_eq!(stats[&node]["pool"]["max-concurrency"], json!(2), "{stats}");
    assert_eq!(stats[&node]["prefetch_count"], json!(2), "1 x 2 slots: {stats}");
    let (_, queues) = celeriac_json(&url, &["inspect", "active_queues", "-d", &node, "-t", "10"]);
    let names: Vec<&str> = queues[&node].as_array().unwrap().iter().map(|q| q["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["celery", "habits"]);
    // The file names as Python's node_format gives them.
    let expanded = Command::new(&python)
        .args(["-c", "import sys; from celery.utils.nodenames import node_format as f; print('\\n'.join(f(a, sys.argv[1]) for a in sys.argv[2:]))"])
        .args([&node, log.to_str().unwrap(), pid.to_str().unwrap(), state.to_str().unwrap()])
        .output()
        .unwrap();
    let expanded: Vec<String> = String::from_utf8_lossy(&expanded.stdout).lines().map(str::to_owned).collect();
    assert_eq!(expanded.len(), 3, "{expanded:?}");
    let log_text = std::fs::read_to_string(&expanded[0]).unwrap();
    assert!(log_text.contains("ready") || log_text.contains("INFO"), "{log_text}");
    assert!(!log_text.contains("DEBUG"), "the last -l (iNfO) wins");
    assert_eq!(std::fs::read_to_string(&expanded[1]).unwrap().trim(), stats[&node]["pid"].to_string());
    // A second worker on the same pid file refuses to start.
    let second = Command::new(env!("CARGO_BIN_EXE_celeriac"))
        .args(["worker", "-b", &url, "-n", "hab@%h", "--pidfile", pid.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("still running"));
    drop(worker);
    assert!(!Path::new(&expanded[1]).exists(), "the pid file goes with the worker");
}

/// `GET /metrics` on `addr`: the body.
fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else { return String::new() };
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(stream, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()
}

/// `celeriac beat --metrics-addr`: the leader counts what it sends and the
/// lag of each send, a standby says it is not the leader.
#[test]
fn beat_metrics_count_sends_and_show_the_leader() {
    let Some(redis) = celeriac_tests::redis() else { return };
    let config = redis.dir().join("beat.toml");
    std::fs::write(
        &config,
        format!(
            "broker_url = \"{}\"\nbeat_max_loop_interval = 1\nredbeat_lock_timeout = 30\nbeat_health_service = \"ops-beat\"\n\
             [beat_schedule.tick]\ntask = \"celeriac.ping\"\nschedule = 1\n",
            redis.url()
        ),
    )
    .unwrap();
    let start = |name: &str, addr: &str| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_celeriac"));
        command.args(["beat", "--config"]).arg(&config).args(["-l", "info", "--metrics-addr", addr]);
        let beat =
            LoggedProcess::spawn(command, name, redis.dir().join(format!("{name}.log")), "beat: Starting...").unwrap();
        beat.wait_ready(WAIT).unwrap();
        beat
    };
    let (a, b) = (
        format!("127.0.0.1:{}", celeriac_tests::free_port().unwrap()),
        format!("127.0.0.1:{}", celeriac_tests::free_port().unwrap()),
    );
    let leader = start("beat-a", &a);
    let mut last = String::new();
    let sent = celeriac_tests::wait_until(WAIT, || {
        last = scrape(&a);
        last.contains("celeriac_beat_leader{service=\"ops-beat\"} 1")
            && last
                .lines()
                .any(|l| l.starts_with("celeriac_beat_sent_total") && !l.ends_with(" 0") && !l.ends_with(" 1"))
    });
    assert!(sent, "{last}\n{}", leader.log());
    assert!(last.contains("# TYPE celeriac_beat_send_lag_seconds histogram"));
    assert!(last.contains("celeriac_beat_skipped_total{service=\"ops-beat\",reason=\"overlap\"} 0"), "{last}");
    let count: f64 = last
        .lines()
        .find(|l| l.starts_with("celeriac_beat_send_lag_seconds_count"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(count >= 2.0, "{last}");
    let standby = start("beat-b", &b);
    let standing_by =
        celeriac_tests::wait_until(WAIT, || scrape(&b).contains("celeriac_beat_leader{service=\"ops-beat\"} 0"));
    assert!(standing_by, "{}", standby.log());
}

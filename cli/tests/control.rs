//! Remote control, events and metrics of the real `celeriac worker`, end to
//! end against Python Celery's own tools: the pinned `celery inspect` and
//! `celery control` command line, Celery's client for what that command line
//! cannot send, Celery's `EventReceiver` (what Flower and `celery events` run),
//! a Python worker answering beside it, and a Prometheus scrape parsed by
//! `prometheus_client`. A private redis-server is broker and backend.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed assertion

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use celeriac_tests::{CeleryWorker, ChildGuard, LoggedProcess, RedisServer};
use serde_json::{json, Map, Value};

const WAIT: Duration = Duration::from_secs(30);
/// The celeriac node and the Python node (`-n`).
const RS: &str = "rs@ctl-host";
const PY: &str = "py@ctl-host";

fn python_dir() -> PathBuf {
    celeriac_tests::repo_root().join("tests/python")
}

/// Starts `celeriac worker -n <node>` on the test Redis (broker and backend)
/// with the conformance tasks and extra flags/environment; waits until ready.
fn celeriac_worker(redis: &RedisServer, node: &str, flags: &[&str], env: &[(&str, &str)]) -> LoggedProcess {
    static STARTED: AtomicUsize = AtomicUsize::new(0);
    let url = redis.url();
    let mut command = Command::new(env!("CARGO_BIN_EXE_celeriac"));
    command
        .args(["worker", "-b", &url, "--result-backend", &url, "--tasks", "builtin,conformance", "-l", "info"])
        .args(["-n", node])
        .args(flags)
        .envs(env.iter().copied());
    let n = STARTED.fetch_add(1, Ordering::Relaxed);
    let log = redis.dir().join(format!("celeriac-{node}-{n}.log"));
    let worker = LoggedProcess::spawn(command, "celeriac worker", log, " ready.").unwrap();
    worker.wait_ready(WAIT).unwrap();
    worker
}

/// A Python Celery worker of the `mixed` app (tests/python/apps/mixed.py)
/// named [`PY`], consuming `queues`.
fn python_worker(redis: &RedisServer, python: &Path, queues: &str) -> CeleryWorker {
    let worker = CeleryWorker::builder(python, "mixed", &python_dir().join("apps"))
        .queues(queues)
        .args(&["--pool=solo", "-n", PY, "--loglevel=INFO"])
        .env("CELERIAC_TEST_BROKER", &redis.url())
        .log(redis.dir().join("python-worker.log"))
        .start()
        .unwrap();
    worker.wait_ready(WAIT).unwrap();
    worker
}

/// Runs the pinned `celery -A mixed <args>`; returns whether it exited 0, its
/// stdout and its stderr.
fn celery(url: &str, args: &[&str]) -> (bool, String, String) {
    let apps = python_dir().join("apps");
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

/// `celery inspect <command> --json -d <nodes>`: the replies by node. It
/// returns as soon as every node answered (Celery's limit = the destinations).
fn inspect(url: &str, nodes: &[&str], command: &[&str]) -> Map<String, Value> {
    let dest = nodes.join(",");
    let (ok, out, err) = celery(url, &[&["inspect"], command, &["--json", "-t", "10", "-d", &dest]].concat());
    assert!(ok, "celery inspect {command:?} failed:\n{out}\n{err}");
    let replies: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    let replies = replies.as_object().unwrap().clone();
    assert_eq!(replies.len(), nodes.len(), "inspect {command:?}: not every node answered: {replies:?}");
    replies
}

/// `celery control <command> --json -d <nodes>`: the replies (a list of
/// `{node: reply}`), merged by node; every node must answer once.
fn control(url: &str, nodes: &[&str], command: &[&str]) -> Map<String, Value> {
    let dest = nodes.join(",");
    let (ok, out, err) = celery(url, &[&["control"], command, &["--json", "-t", "10", "-d", &dest]].concat());
    assert!(ok, "celery control {command:?} failed:\n{out}\n{err}");
    merge_replies(&serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}")), nodes.len())
}

fn merge_replies(list: &Value, expected: usize) -> Map<String, Value> {
    let mut merged = Map::new();
    for reply in list.as_array().unwrap_or_else(|| panic!("not a list of replies: {list}")) {
        for (node, value) in reply.as_object().unwrap() {
            assert!(merged.insert(node.clone(), value.clone()).is_none(), "{node} answered twice: {list}");
        }
    }
    assert_eq!(merged.len(), expected, "not every node answered: {list}");
    merged
}

/// One command through Celery's own `app.control.broadcast` (for what the
/// command line refuses to send): the replies, merged by node.
fn broadcast(url: &str, nodes: &[&str], method: &str, arguments: Value) -> Map<String, Value> {
    let out = Command::new(celeriac_tests::python().unwrap())
        .arg(python_dir().join("control_call.py"))
        .args(["--broker", url, "--method", method, "--arguments", &arguments.to_string()])
        .args(["--destination", &nodes.join(",")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    merge_replies(&serde_json::from_slice(&out.stdout).unwrap(), nodes.len())
}

/// Sends `calls` with Python Celery's `send_task`; with `wait`, returns what
/// `AsyncResult.get()` gave for each, else their ids (tests/python/call_tasks.py).
fn python_calls(url: &str, calls: Value, wait: bool) -> Vec<Value> {
    let lines = celeriac_tests::python_calls(url, &calls.to_string(), wait, 20).unwrap();
    lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// What Python's `AsyncResult.get()` reads for each id (tests/python/get_results.py).
fn python_results(url: &str, ids: &[&str], timeout: u32) -> Vec<Value> {
    let out = Command::new(celeriac_tests::python().unwrap())
        .arg(python_dir().join("get_results.py"))
        .args(["--backend", url, "--timeout", &timeout.to_string()])
        .args(ids)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn id_of(line: &Value) -> String {
    line["id"].as_str().unwrap().to_owned()
}

/// A task id chosen by the test (Celery takes any string).
fn fresh_id(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn admin(url: &str) -> redis::Connection {
    redis::Client::open(url).unwrap().get_connection().unwrap()
}

fn redis_int(conn: &mut redis::Connection, args: &[&str]) -> i64 {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(conn).unwrap()
}

/// The state stored for `id` in the result backend, if any.
fn stored_state(conn: &mut redis::Connection, id: &str) -> Option<String> {
    let meta: Option<String> = redis::cmd("GET").arg(format!("celery-task-meta-{id}")).query(conn).unwrap();
    meta.map(|m| serde_json::from_str::<Value>(&m).unwrap()["status"].as_str().unwrap_or_default().to_owned())
}

/// Waits until the worker runs `id` (`task_track_started` stores STARTED).
fn await_started(conn: &mut redis::Connection, id: &str, worker: &LoggedProcess) {
    assert!(
        celeriac_tests::wait_until(WAIT, || stored_state(conn, id).as_deref() == Some("STARTED")),
        "{id} never started:\n{}",
        worker.log()
    );
}

fn names(queues: &Value) -> Vec<&str> {
    queues.as_array().unwrap().iter().map(|q| q["name"].as_str().unwrap()).collect()
}

/// The nodes a test talks to: celeriac alone, or celeriac and a Python worker.
fn nodes(mixed: bool) -> Vec<&'static str> {
    if mixed {
        vec![RS, PY]
    } else {
        vec![RS]
    }
}

// ---------------------------------------------------------------------------
// celery inspect

/// `celery inspect ping|stats|active|registered|active_queues|reserved|scheduled|query_task`
/// while celeriac holds one running, one reserved and one ETA task.
fn inspect_answers(mixed: bool) {
    let (Some(redis), Some(python)) = (celeriac_tests::redis(), celeriac_tests::python_peer()) else { return };
    let url = redis.url();
    let env = [("CELERIAC_TASK_TRACK_STARTED", "1")];
    let rs = celeriac_worker(&redis, RS, &["-c", "1", "--prefetch-multiplier", "4", "-Q", "celery"], &env);
    let _py = mixed.then(|| python_worker(&redis, &python, "py"));
    let nodes = nodes(mixed);
    let mut a = admin(&url);

    let mut first = vec![json!({"name": "t.integration.tasks.add", "args": [1, 1]})];
    if mixed {
        first.push(json!({"name": "tasks.add", "args": [2, 2], "options": {"queue": "py"}}));
    }
    let done = python_calls(&url, Value::Array(first), true);
    assert!(done.iter().all(|l| l["state"] == "SUCCESS"), "{done:?}");
    // The slot taken first, then what waits for it (sent after, so their
    // order on the worker is certain).
    let running = id_of(&python_calls(&url, json!([{"name": "t.integration.tasks.sleeping", "args": [30]}]), false)[0]);
    await_started(&mut a, &running, &rs);
    let held = python_calls(
        &url,
        json!([
            {"name": "t.integration.tasks.add", "args": [2, 3]},
            {"name": "t.integration.tasks.add", "args": [3, 4], "options": {"countdown": 3600}},
        ]),
        false,
    );
    let (reserved, scheduled) = (id_of(&held[0]), id_of(&held[1]));
    // The running task was acked as it started; the other two are held unacked.
    let held_back = celeriac_tests::wait_until(WAIT, || {
        redis_int(&mut a, &["HLEN", "unacked"]) == 2 && redis_int(&mut a, &["LLEN", "celery"]) == 0
    });
    assert!(held_back, "{}", rs.log());

    let commands: Vec<Vec<&str>> = vec![
        vec!["ping"],
        vec!["stats"],
        vec!["active"],
        vec!["registered"],
        vec!["active_queues"],
        vec!["reserved"],
        vec!["scheduled"],
        vec!["query_task", &running],
        vec!["registered", "name"],
        vec!["report"],
    ];
    let replies: Vec<Map<String, Value>> = std::thread::scope(|s| {
        let (url, nodes) = (&url, &nodes);
        let handles: Vec<_> = commands.iter().map(|c| s.spawn(move || inspect(url, nodes, c))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let [ping, stats, active, registered, queues, reserved_r, scheduled_r, query, named, report] = &replies[..] else {
        unreachable!()
    };
    let log = rs.log();
    for node in &nodes {
        assert_eq!(ping[*node], json!({"ok": "pong"}), "{node}");
    }

    let st = &stats[RS];
    // Counted as they start, as Celery does: the finished add and the running sleeping.
    assert_eq!(st["total"], json!({"t.integration.tasks.add": 1, "t.integration.tasks.sleeping": 1}), "{st}");
    assert_eq!(st["pid"], json!(rs.id()), "{st}");
    assert_eq!(st["pool"]["max-concurrency"], json!(1), "{st}");
    assert_eq!(st["pool"]["processes"], json!([rs.id()]), "{st}");
    assert_eq!(st["broker"]["port"], json!(redis.port()), "{st}");
    assert_eq!(st["broker"]["transport"], json!("redis"), "{st}");
    assert_eq!(st["broker"]["hostname"], json!("127.0.0.1"), "{st}");
    // 1 slot x 4, plus one for the ETA task it holds (Celery's qos increment).
    assert_eq!(st["prefetch_count"], json!(5), "{st}");
    assert!(st["clock"].as_str().unwrap().parse::<u64>().unwrap() > 0, "clock is a string of an int: {st}");
    assert!(st["uptime"].is_u64() && st["rusage"]["maxrss"].as_u64().unwrap() > 0, "{st}");

    let act = active[RS].as_array().unwrap();
    assert_eq!(act.len(), 1, "{act:?}");
    assert_eq!(act[0]["id"], json!(running));
    assert_eq!(act[0]["name"], json!("t.integration.tasks.sleeping"));
    assert_eq!(act[0]["type"], json!("t.integration.tasks.sleeping"));
    assert_eq!(act[0]["args"], json!([30]));
    assert_eq!(act[0]["kwargs"], json!({}));
    assert_eq!(act[0]["hostname"], json!(RS));
    assert_eq!(act[0]["acknowledged"], json!(true));
    assert_eq!(act[0]["worker_pid"], json!(rs.id()));
    assert_eq!(act[0]["delivery_info"]["routing_key"], json!("celery"), "{act:?}");
    assert!(act[0]["time_start"].as_f64().unwrap() > 1.0e9, "{act:?}");

    let res = reserved_r[RS].as_array().unwrap();
    assert_eq!((res.len(), &res[0]["id"], &res[0]["args"]), (1, &json!(reserved), &json!([2, 3])), "{res:?}");
    assert_eq!((&res[0]["acknowledged"], &res[0]["worker_pid"]), (&json!(false), &Value::Null), "{res:?}");
    let sch = scheduled_r[RS].as_array().unwrap();
    assert_eq!((sch.len(), &sch[0]["request"]["id"]), (1, &json!(scheduled)), "{sch:?}");
    let eta = sch[0]["eta"].as_str().unwrap();
    assert!(eta.contains('T') && (eta.ends_with("+00:00") || eta.ends_with('Z')), "an ISO eta: {eta}");
    // Celery's timer priority for every ETA request; no process runs it yet.
    assert_eq!((&sch[0]["priority"], &sch[0]["request"]["worker_pid"]), (&json!(6), &Value::Null), "{sch:?}");

    let reg: Vec<&str> = registered[RS].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    for name in ["celeriac.ping", "t.integration.tasks.add", "t.integration.tasks.sleeping"] {
        assert!(reg.contains(&name), "{name} not in {reg:?}");
    }
    assert!(!reg.iter().any(|n| n.starts_with("celery.")), "celery.* tasks are left out, as Python does: {reg:?}");
    assert!(reg.windows(2).all(|w| w[0] < w[1]), "sorted: {reg:?}");

    for node in &nodes {
        // `registered name`: every task as `NAME [name=NAME]`.
        for line in named[*node].as_array().unwrap() {
            let line = line.as_str().unwrap();
            let (task, item) = line.split_once(' ').unwrap_or((line, ""));
            assert_eq!(item, format!("[name={task}]"), "{node}: {line}");
        }
        let text = report[*node]["ok"].as_str().unwrap();
        assert!(text.contains("software -> celery:"), "{node}: {text}");
    }
    let q = &queues[RS].as_array().unwrap()[0];
    assert_eq!(names(&queues[RS]), ["celery"]);
    assert_eq!((&q["exchange"]["name"], &q["exchange"]["type"]), (&json!("celery"), &json!("direct")), "{q}");
    assert_eq!(q["routing_key"], json!("celery"));

    let (state, info) = (&query[RS][&running][0], &query[RS][&running][1]);
    assert_eq!((state, &info["id"]), (&json!("active"), &json!(running)), "{query:?}");

    if mixed {
        // The Python worker answered the same calls, in the same shapes.
        assert_eq!(stats[PY]["total"], json!({"tasks.add": 1}));
        assert_eq!(stats[PY]["broker"]["port"], st["broker"]["port"]);
        assert_eq!((&active[PY], &reserved_r[PY], &scheduled_r[PY]), (&json!([]), &json!([]), &json!([])));
        assert_eq!(names(&queues[PY]), ["py"]);
        // The same keys as Python's replies, all the way down.
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<std::collections::BTreeSet<_>>();
        assert_eq!(keys(&queues[PY][0]), keys(q), "active_queues");
        assert_eq!(keys(&queues[PY][0]["exchange"]), keys(&q["exchange"]), "active_queues exchange");
        for part in ["", "broker", "pool", "rusage"] {
            let (ours, theirs) = if part.is_empty() { (st, &stats[PY]) } else { (&st[part], &stats[PY][part]) };
            assert_eq!(keys(ours), keys(theirs), "stats {part}");
        }
        assert!(registered[PY].as_array().unwrap().contains(&json!("tasks.add")), "{registered:?}");
        assert_eq!(query[PY], json!({}));
    }

    // Done: cancel the running task so the worker stops at once.
    let replies = control(&url, &[RS], &["terminate", "SIGTERM", &running]);
    assert_eq!(replies[RS], json!({"ok": format!("terminate: {running}")}), "{log}");
}

#[test]
fn celery_inspect_answers_from_celeriac_alone() {
    inspect_answers(false);
}

#[test]
fn celery_inspect_answers_from_celeriac_beside_a_python_worker() {
    inspect_answers(true);
}

// ---------------------------------------------------------------------------
// celery control revoke / terminate

fn revoke_and_terminate(mixed: bool) {
    let (Some(redis), Some(python)) = (celeriac_tests::redis(), celeriac_tests::python_peer()) else { return };
    let url = redis.url();
    let env = [("CELERIAC_TASK_TRACK_STARTED", "1")];
    let rs = celeriac_worker(&redis, RS, &["-c", "1"], &env);
    let _py = mixed.then(|| python_worker(&redis, &python, "py"));
    let nodes = nodes(mixed);
    let mut a = admin(&url);
    let running = id_of(&python_calls(&url, json!([{"name": "t.integration.tasks.sleeping", "args": [30]}]), false)[0]);
    await_started(&mut a, &running, &rs);
    let queued = id_of(&python_calls(&url, json!([{"name": "t.integration.tasks.add", "args": [1, 2]}]), false)[0]);
    let held_back = celeriac_tests::wait_until(WAIT, || redis_int(&mut a, &["HLEN", "unacked"]) == 1);
    assert!(held_back, "{}", rs.log());

    // Revoked without terminate, a running task runs on: its STARTED stays
    // (Celery leaves a running task's state alone; a client waiting on it
    // must not read REVOKED).
    let replies = control(&url, &nodes, &["revoke", &running]);
    assert!(replies[RS]["ok"].is_string(), "{replies:?}");
    assert_eq!(stored_state(&mut a, &running).as_deref(), Some("STARTED"));
    // A queued task: every worker flags it; celeriac skips it when its turn comes.
    let replies = control(&url, &nodes, &["revoke", &queued]);
    for node in &nodes {
        assert_eq!(replies[*node], json!({"ok": format!("tasks {{'{queued}'}} flagged as revoked")}), "{node}");
    }
    // The running one: celeriac cancels it; a worker that does not run it says so.
    let replies = control(&url, &nodes, &["terminate", "SIGTERM", &running]);
    assert_eq!(replies[RS], json!({"ok": format!("terminate: {running}")}));
    if mixed {
        assert_eq!(replies[PY], json!({"ok": "terminate: tasks unknown"}));
    }
    let results = python_results(&url, &[running.as_str(), queued.as_str()], 10);
    let log = rs.log();
    for line in &results {
        assert_eq!(
            (&line["state"], &line["exc_type"]),
            (&json!("REVOKED"), &json!("TaskRevokedError")),
            "{line}\n{log}"
        );
    }
    assert!(log.contains(&format!("Discarding revoked task: t.integration.tasks.add[{queued}]")), "{log}");
    assert!(!log.contains(&format!("t.integration.tasks.add[{queued}] succeeded")), "it ran:\n{log}");
    assert!(!log.contains(&format!("sleeping[{running}] succeeded")), "it was not cancelled:\n{log}");

    // Both ids are in every worker's revoked set; the queued task never counted as run.
    let revoked = inspect(&url, &nodes, &["revoked"]);
    for node in &nodes {
        let ids = revoked[*node].as_array().unwrap();
        assert!(ids.contains(&json!(running)) && ids.contains(&json!(queued)), "{node}: {ids:?}");
    }
    let stats = inspect(&url, &[RS], &["stats"]);
    assert_eq!(stats[RS]["total"], json!({"t.integration.tasks.sleeping": 1}), "{stats:?}");
    assert_eq!(redis_int(&mut a, &["HLEN", "unacked"]), 0, "the skipped message was acked");
}

#[test]
fn celery_control_revoke_and_terminate_on_celeriac_alone() {
    revoke_and_terminate(false);
}

#[test]
fn celery_control_revoke_and_terminate_beside_a_python_worker() {
    revoke_and_terminate(true);
}

/// Celery (5.6.2+) marks a revoked id REVOKED only while nothing final is
/// stored: revoking a task that already failed keeps its FAILURE, as a
/// Python worker does.
#[test]
fn revoking_a_finished_task_keeps_its_result() {
    let (Some(redis), Some(_)) = (celeriac_tests::redis(), celeriac_tests::python_peer()) else { return };
    let url = redis.url();
    let _rs = celeriac_worker(&redis, RS, &["-c", "1"], &[]);
    let failed = python_calls(&url, json!([{"name": "t.integration.tasks.fail", "args": ["x"]}]), true);
    let id = id_of(&failed[0]);
    let replies = control(&url, &[RS], &["revoke", &id]);
    assert!(replies[RS]["ok"].is_string(), "{replies:?}");
    assert_eq!(stored_state(&mut admin(&url), &id).as_deref(), Some("FAILURE"));
}

#[test]
fn statedb_keeps_revoked_ids_across_a_restart() {
    let (Some(redis), Some(_)) = (celeriac_tests::redis(), celeriac_tests::python_peer()) else { return };
    let url = redis.url();
    let statedb = redis.dir().join("celeriac-worker.state");
    let path = statedb.to_str().unwrap();
    let revoked = fresh_id("revoked-before-restart");
    let mut first = celeriac_worker(&redis, RS, &["-S", path], &[]);
    let replies = control(&url, &[RS], &["revoke", &revoked]);
    assert!(replies[RS]["ok"].as_str().unwrap().contains(&revoked), "{replies:?}");
    first.signal("TERM");
    assert!(first.wait_timeout(WAIT).is_some_and(|s| s.success()), "{}", first.log());
    let saved = std::fs::read_to_string(&statedb).unwrap();
    assert!(saved.contains(&revoked), "{saved}");

    let second = celeriac_worker(&redis, RS, &["-S", path], &[]);
    let listed = inspect(&url, &[RS], &["revoked"]);
    assert_eq!(listed[RS], json!([revoked]), "the revoked id came back from {path}");
    // Forget the REVOKED stored at revoke time: what follows is the worker's doing.
    let _: () = redis::cmd("DEL").arg(format!("celery-task-meta-{revoked}")).query(&mut admin(&url)).unwrap();
    let out = python_calls(
        &url,
        json!([{"name": "t.integration.tasks.add", "args": [1, 1], "options": {"task_id": revoked}}]),
        true,
    );
    assert_eq!(
        (&out[0]["state"], &out[0]["exc_type"]),
        (&json!("REVOKED"), &json!("TaskRevokedError")),
        "{out:?}\n{}",
        second.log()
    );
    assert!(second.log().contains(&format!("Discarding revoked task: t.integration.tasks.add[{revoked}]")));
    drop(second);

    // Without the state file a new worker knows nothing of it.
    let _third = celeriac_worker(&redis, RS, &[], &[]);
    assert_eq!(inspect(&url, &[RS], &["revoked"])[RS], json!([]));
}

/// A Python worker of the `mixed` app with mingle on (the harness turns it
/// off) and a `--statedb`, consuming `py`.
fn python_worker_with_mingle(redis: &RedisServer, python: &Path, statedb: &Path, log: &str) -> LoggedProcess {
    let apps = python_dir().join("apps");
    let mut command = Command::new(python);
    command
        .args(["-m", "celery", "-A", "mixed", "worker", "--pool=solo", "-n", PY, "-Q", "py"])
        .args(["--without-gossip", "--without-heartbeat", "--loglevel=INFO", "--statedb"])
        .arg(statedb)
        .current_dir(&apps)
        .env("PYTHONPATH", &apps)
        .env("CELERIAC_TEST_BROKER", redis.url());
    let worker = LoggedProcess::spawn(command, "celery worker (mingle)", redis.dir().join(log), " ready.").unwrap();
    worker.wait_ready(WAIT).unwrap();
    worker
}

/// Mingle: a starting Python worker sends its revoked ids (Celery 5.7: a
/// list) in `hello` and takes celeriac's from the reply.
#[test]
fn mingle_shares_revoked_ids_between_python_and_celeriac() {
    let (Some(redis), Some(python)) = (celeriac_tests::redis(), celeriac_tests::python_peer()) else { return };
    let url = redis.url();
    let statedb = redis.dir().join("python-worker.state");
    let _rs = celeriac_worker(&redis, RS, &[], &[]);
    // The first Python worker only fills its state file (mingle off: the harness's default).
    let mut first = CeleryWorker::builder(&python, "mixed", &python_dir().join("apps"))
        .queues("py")
        .args(&["--pool=solo", "-n", PY, "--loglevel=INFO", "--statedb", statedb.to_str().unwrap()])
        .env("CELERIAC_TEST_BROKER", &url)
        .log(redis.dir().join("python-first.log"))
        .start()
        .unwrap();
    first.wait_ready(WAIT).unwrap();
    let (ours, theirs) = (fresh_id("revoked-on-celeriac"), fresh_id("revoked-on-python"));
    assert!(control(&url, &[RS], &["revoke", &ours])[RS]["ok"].is_string());
    assert!(control(&url, &[PY], &["revoke", &theirs])[PY]["ok"].is_string());
    first.signal("TERM");
    assert!(first.wait_timeout(WAIT).is_some(), "{}", first.log());

    // Restarted, the Python worker brings `theirs` from its state file.
    let second = python_worker_with_mingle(&redis, &python, &statedb, "python-mingle.log");
    assert!(second.log().contains("mingle: sync with 1 nodes"), "{}", second.log());
    let revoked = inspect(&url, &[RS, PY], &["revoked"]);
    for node in [RS, PY] {
        let ids = revoked[node].as_array().unwrap();
        assert!(ids.contains(&json!(ours)) && ids.contains(&json!(theirs)), "{node}: {ids:?}");
    }
}

// ---------------------------------------------------------------------------
// celery control rate_limit / time_limit / add_consumer / cancel_consumer /
// an unknown command / shutdown

/// Runs `celery control` calls at once (each is a Python process): the
/// replies, in order.
fn controls(url: &str, calls: &[(&[&str], &[&str])]) -> Vec<Map<String, Value>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = calls.iter().map(|(nodes, cmd)| s.spawn(move || control(url, nodes, cmd))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn limits_consumers_and_shutdown(mixed: bool) {
    let (Some(redis), Some(python)) = (celeriac_tests::redis(), celeriac_tests::python_peer()) else { return };
    let url = redis.url();
    let mut rs = celeriac_worker(&redis, RS, &["-c", "2", "-Q", "celery"], &[]);
    let mut py = mixed.then(|| python_worker(&redis, &python, "py"));
    let nodes = nodes(mixed);
    let mut a = admin(&url);
    let add = "t.integration.tasks.add";
    let sleeping = "t.integration.tasks.sleeping";

    // rate_limit and time_limit: set on the worker that has the task, the
    // others say they lack it; add_consumer: every worker takes the queue.
    let replies = controls(
        &url,
        &[
            (&nodes, &["rate_limit", add, "4/s"]),
            (&[RS], &["rate_limit", "tasks.nobody_has_this", "4/s"]),
            (&[RS], &["rate_limit", add, "often"]),
            (&nodes, &["time_limit", sleeping, "0.3", "5"]),
            (&nodes, &["add_consumer", "extra"]),
        ],
    );
    let [rate, unknown, invalid, time, added] = &replies[..] else { unreachable!() };
    assert_eq!(rate[RS], json!({"ok": "new rate limit set successfully"}));
    assert_eq!(unknown[RS], json!({"error": "unknown task"}));
    assert!(invalid[RS]["error"].as_str().unwrap().starts_with("Invalid rate limit string: "), "{invalid:?}");
    assert_eq!(time[RS], json!({"ok": "time limits set successfully"}));
    for node in &nodes {
        assert_eq!(added[*node], json!({"ok": "add consumer extra"}), "{node}");
    }
    if mixed {
        assert_eq!((&rate[PY], &time[PY]), (&json!({"error": "unknown task"}), &json!({"error": "unknown task"})));
    }

    // Their effect: three adds 4/s apart, sleeping(10) stopped by its new
    // soft limit of 0.3 s, and (alone: the Python worker lacks the task) an
    // add taken from the new queue.
    let mut calls = vec![
        json!({"name": add, "args": [1, 1]}),
        json!({"name": add, "args": [2, 2]}),
        json!({"name": add, "args": [3, 3]}),
        json!({"name": sleeping, "args": [10]}),
    ];
    if !mixed {
        calls.push(json!({"name": add, "args": [5, 5], "options": {"queue": "extra"}}));
    }
    let started = Instant::now();
    let out = python_calls(&url, Value::Array(calls), true);
    let done: Vec<f64> = out[..3].iter().map(|l| l["done_at"].as_f64().unwrap()).collect();
    let span = done.iter().cloned().fold(f64::MIN, f64::max) - done.iter().cloned().fold(f64::MAX, f64::min);
    assert!(span >= 0.45, "4/s set by rate_limit not applied: three runs within {span:.3}s: {out:?}");
    assert_eq!((&out[3]["state"], &out[3]["exc_type"]), (&json!("FAILURE"), &json!("SoftTimeLimitExceeded")));
    assert!(started.elapsed() < Duration::from_secs(5), "the soft limit of 0.3 s did not apply");
    if !mixed {
        assert_eq!(out[4]["result"], json!(10), "{out:?}\n{}", rs.log());
    }
    // (Python adds and cancels a consumer soon after it replied.)
    let mut queues = Map::new();
    let listed = celeriac_tests::wait_until(WAIT, || {
        queues = inspect(&url, &nodes, &["active_queues"]);
        !mixed || names(&queues[PY]) == ["py", "extra"]
    });
    assert!(listed, "{queues:?}");
    assert_eq!(names(&queues[RS]), ["celery", "extra"]);

    // cancel_consumer: every worker stops consuming it. An unknown command
    // gets Python's error reply, from every worker alike.
    let (cancelled, unknown) = std::thread::scope(|s| {
        let cancel = s.spawn(|| control(&url, &nodes, &["cancel_consumer", "extra"]));
        let unknown = s.spawn(|| broadcast(&url, &nodes, "no_such_command", json!({})));
        (cancel.join().unwrap(), unknown.join().unwrap())
    });
    for node in &nodes {
        assert_eq!(cancelled[*node], json!({"ok": "no longer consuming from extra"}), "{node}");
        assert_eq!(unknown[*node], json!({"error": "KeyError('no_such_command')"}), "{node}");
    }
    let listed = celeriac_tests::wait_until(WAIT, || {
        queues = inspect(&url, &nodes, &["active_queues"]);
        !mixed || names(&queues[PY]) == ["py"]
    });
    assert!(listed, "{queues:?}");
    assert_eq!(names(&queues[RS]), ["celery"]);
    let parked = python_calls(
        &url,
        json!([{"name": add, "args": [6, 6], "options": {"queue": "extra"}}, {"name": add, "args": [7, 7]}]),
        false,
    );
    let out = python_results(&url, &[parked[1]["id"].as_str().unwrap()], 10);
    assert_eq!(out[0]["result"], json!(14));
    assert_eq!(redis_int(&mut a, &["LLEN", "extra"]), 1, "{parked:?} was consumed after cancel_consumer");

    // shutdown: no worker replies (as Python's), every one stops.
    let (ok, _, err) = celery(&url, &["control", "shutdown", "--json", "-t", "0.5", "-d", &nodes.join(",")]);
    assert!(!ok && err.contains("No nodes replied"), "{err}");
    let status = rs.wait_timeout(WAIT).expect("celeriac did not stop on shutdown");
    assert!(status.success(), "{status:?}\n{}", rs.log());
    assert!(rs.log().contains("Got shutdown from remote"), "{}", rs.log());
    if let Some(py) = py.as_mut() {
        assert!(py.wait_timeout(WAIT).is_some(), "the Python worker did not stop");
    }
}

#[test]
fn celery_control_limits_consumers_and_shutdown_on_celeriac_alone() {
    limits_consumers_and_shutdown(false);
}

#[test]
fn celery_control_limits_consumers_and_shutdown_beside_a_python_worker() {
    limits_consumers_and_shutdown(true);
}

// ---------------------------------------------------------------------------
// Events, as Celery's EventReceiver sees them

/// A running tests/python/watch_events.py: its events as they arrive.
struct EventWatch {
    _child: ChildGuard,
    events: mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl EventWatch {
    /// Starts the receiver and waits until its subscription is live.
    fn start(url: &str, until: &str, hostname: &str) -> EventWatch {
        let mut conn = admin(url);
        let before = redis_int(&mut conn, &["PUBSUB", "NUMPAT"]);
        let mut child = Command::new(celeriac_tests::python().unwrap())
            .arg(python_dir().join("watch_events.py"))
            .args(["--broker", url, "--until", until, "--hostname", hostname, "--timeout", "30"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(serde_json::from_str::<Value>(&line).unwrap()).is_err() {
                    return;
                }
            }
        });
        assert!(celeriac_tests::wait_until(WAIT, || redis_int(&mut conn, &["PUBSUB", "NUMPAT"]) > before));
        EventWatch { _child: ChildGuard::new("watch_events.py", child), events, seen: Vec::new() }
    }

    /// The first event matching `want`: one seen already, else the next to
    /// arrive that does.
    fn next(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        if let Some(event) = self.seen.iter().find(|e| want(e)) {
            return event.clone();
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) => {
                    self.seen.push(event.clone());
                    if want(&event) {
                        return event;
                    }
                }
                Err(_) => panic!("no {what} event; saw:\n{}", self.dump()),
            }
        }
    }

    /// Waits for `kind` about task `id`.
    fn task(&mut self, kind: &str, id: &str) -> Value {
        self.next(&format!("{kind} {id}"), |e| e["type"] == kind && e["uuid"] == id)
    }

    fn dump(&self) -> String {
        self.seen.iter().map(Value::to_string).collect::<Vec<_>>().join("\n")
    }

    /// Every event seen so far about task `id`.
    fn about(&self, id: &str) -> Vec<&Value> {
        self.seen.iter().filter(|e| e["uuid"] == id).collect()
    }
}

/// The fields every event has (Celery's `Event()` plus the receiver's
/// `local_received`), from celeriac node `rs` with main process `pid`.
fn assert_standard_fields(event: &Value, pid: u32) {
    assert_eq!(event["hostname"], json!(RS), "{event}");
    assert_eq!(event["pid"], json!(pid), "{event}");
    assert!(event["clock"].as_u64().is_some_and(|c| c > 0), "{event}");
    assert!(event["utcoffset"].is_f64(), "Celery 5.7 sends a float: {event}");
    assert!(event["timestamp"].as_f64().is_some_and(|t| t > 1.0e9), "{event}");
    assert!(event["local_received"].is_f64(), "{event}");
}

fn assert_worker_fields(event: &Value, freq: f64) {
    assert_eq!(event["freq"], json!(freq), "{event}");
    assert!(event["active"].is_u64() && event["processed"].is_u64(), "{event}");
    let loadavg = event["loadavg"].as_array().unwrap();
    assert!(loadavg.len() == 3 && loadavg.iter().all(Value::is_f64), "{event}");
    assert_eq!(event["sw_ident"], json!("celeriac"), "{event}");
    assert!(event["sw_ver"].as_str().is_some_and(|v| !v.is_empty()), "{event}");
    assert_eq!(event["sw_sys"], json!("Linux"), "{event}");
}

#[test]
fn a_python_event_receiver_sees_worker_and_task_events() {
    let (Some(redis), Some(_)) = (celeriac_tests::redis(), celeriac_tests::python_peer()) else { return };
    let url = redis.url();
    let mut watch = EventWatch::start(&url, "worker-offline", RS);
    let env = [("CELERIAC_TASK_TRACK_STARTED", "1")];
    let mut rs = celeriac_worker(&redis, RS, &["-E", "-c", "4"], &env);
    let pid = rs.id();
    let online = watch.next("worker-online", |e| e["type"] == "worker-online");
    assert_standard_fields(&online, pid);
    assert_worker_fields(&online, 2.0);

    // Revoked before it arrives: received, then revoked without running.
    let revoked = fresh_id("revoked");
    assert!(control(&url, &[RS], &["revoke", &revoked])[RS]["ok"].is_string());
    let sent = python_calls(
        &url,
        json!([
            {"name": "t.integration.tasks.add", "args": [2, 3], "kwargs": {}},
            {"name": "t.integration.tasks.fail", "args": ["disk full"]},
            {"name": "t.integration.tasks.retry_once"},
            {"name": "t.integration.tasks.reject_without_requeue"},
            {"name": "t.integration.tasks.add", "args": [1, 1], "options": {"task_id": revoked}},
            {"name": "t.integration.tasks.sleeping", "args": [30]},
        ]),
        false,
    );
    let ids: Vec<String> = sent.iter().map(id_of).collect();
    let [added, failed, retried, rejected, _, sleeping] = &ids[..] else { unreachable!() };

    let received = watch.task("task-received", added);
    assert_standard_fields(&received, pid);
    assert_eq!(received["name"], json!("t.integration.tasks.add"), "{received}");
    assert_eq!((&received["args"], &received["kwargs"]), (&json!("[2, 3]"), &json!("{}")), "{received}");
    assert_eq!((&received["retries"], &received["root_id"]), (&json!(0), &json!(added)), "{received}");
    for key in ["parent_id", "eta", "expires"] {
        assert!(received.get(key).is_some_and(Value::is_null), "{key} in {received}");
    }
    let started = watch.task("task-started", added);
    assert_standard_fields(&started, pid);
    let succeeded = watch.task("task-succeeded", added);
    assert_standard_fields(&succeeded, pid);
    assert_eq!(succeeded["result"], json!("5"), "the result's repr: {succeeded}");
    assert!(succeeded["runtime"].as_f64().is_some_and(|r| (0.0..5.0).contains(&r)), "{succeeded}");

    let fail = watch.task("task-failed", failed);
    assert_standard_fields(&fail, pid);
    assert_eq!(fail["exception"], json!("ExpectedException('Task expected to fail', 'disk full')"), "{fail}");
    assert!(fail["traceback"].as_str().is_some_and(|t| t.contains("ExpectedException")), "{fail}");

    let retry = watch.task("task-retried", retried);
    assert!(retry["exception"].as_str().is_some_and(|e| !e.is_empty()), "{retry}");
    assert!(retry.get("traceback").is_some(), "{retry}");
    let again = watch.next("task-received of the retry", |e| {
        e["type"] == "task-received" && e["uuid"] == retried.as_str() && e["retries"] == 1
    });
    assert_eq!(again["name"], json!("t.integration.tasks.retry_once"));
    watch.task("task-succeeded", retried);

    let reject = watch.task("task-rejected", rejected);
    assert_eq!(reject["requeue"], json!(false), "{reject}");

    let discarded = watch.task("task-revoked", &revoked);
    assert_eq!((&discarded["terminated"], &discarded["expired"]), (&json!(false), &json!(false)), "{discarded}");
    assert!(watch.about(&revoked).iter().all(|e| e["type"] != "task-started"), "it ran:\n{}", watch.dump());

    watch.task("task-started", sleeping);
    let replies =
        broadcast(&url, &[RS], "revoke", json!({"task_id": sleeping, "terminate": true, "signal": "SIGTERM"}));
    assert_eq!(replies[RS], json!({"ok": format!("terminate: {sleeping}")}));
    let terminated = watch.task("task-revoked", sleeping);
    assert_eq!((&terminated["terminated"], &terminated["signum"]), (&json!(true), &json!(15)), "{terminated}");
    assert_eq!(terminated["expired"], json!(false), "{terminated}");

    // A periodic heartbeat, counting what ran (the revoked one did not).
    let beat =
        watch.next("worker-heartbeat", |e| e["type"] == "worker-heartbeat" && e["processed"] == 6 && e["active"] == 0);
    assert_standard_fields(&beat, pid);
    assert_worker_fields(&beat, 2.0);

    rs.signal("TERM");
    let offline = watch.next("worker-offline", |e| e["type"] == "worker-offline");
    assert_standard_fields(&offline, pid);
    assert!(rs.wait_timeout(WAIT).is_some_and(|s| s.success()));
    // What Flower's State needs of every event (task events included).
    for event in &watch.seen {
        assert_standard_fields(event, pid);
        if event["type"].as_str().unwrap().starts_with("task-") {
            assert!(event["uuid"].is_string(), "{event}");
        }
    }
    // One Lamport clock: every event has its own tick, the last one the highest.
    let clocks: Vec<u64> = watch.seen.iter().map(|e| e["clock"].as_u64().unwrap()).collect();
    let mut unique = clocks.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), clocks.len(), "clock values repeat: {clocks:?}");
    assert_eq!(offline["clock"].as_u64(), unique.last().copied(), "{clocks:?}");
}

/// Python's `celery.utils.time.utcoffset()` under time zone `tz`.
fn python_utcoffset(tz: &str) -> f64 {
    let out = Command::new(celeriac_tests::python().unwrap())
        .args(["-c", "from celery.utils.time import utcoffset; print(utcoffset())"])
        .env("TZ", tz)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// A celeriac worker's `utcoffset` in zone `tz` against a Python worker's
/// there: receivers shift every timestamp by it (`adjust_timestamp`).
fn utcoffset_like_python(tz: &str) {
    let (Some(redis), Some(_)) = (celeriac_tests::redis(), celeriac_tests::python_peer()) else { return };
    let mut watch = EventWatch::start(&redis.url(), "worker-online", RS);
    let _rs = celeriac_worker(&redis, RS, &[], &[("TZ", tz)]);
    let online = watch.next("worker-online", |e| e["type"] == "worker-online");
    assert_eq!(online["utcoffset"].as_f64(), Some(python_utcoffset(tz)), "{tz}: {online}");
}

#[test]
fn utcoffset_is_pythons_in_a_zone_west_of_utc() {
    utcoffset_like_python("America/New_York");
}

#[test]
fn utcoffset_is_pythons_in_a_half_hour_zone() {
    utcoffset_like_python("Asia/Kolkata");
}

#[test]
fn enable_events_and_disable_events_toggle_task_events() {
    let (Some(redis), Some(_)) = (celeriac_tests::redis(), celeriac_tests::python_peer()) else { return };
    let url = redis.url();
    let mut watch = EventWatch::start(&url, "worker-offline", RS);
    let rs = celeriac_worker(&redis, RS, &["-c", "2"], &[]);
    watch.next("worker-online", |e| e["type"] == "worker-online");
    let add = |x: i64| python_calls(&url, json!([{"name": "t.integration.tasks.add", "args": [x, x]}]), true);
    let quiet = id_of(&add(1)[0]);

    let replies = control(&url, &[RS], &["enable_events"]);
    assert_eq!(replies[RS], json!({"ok": "task events enabled"}));
    let replies = control(&url, &[RS], &["enable_events"]);
    assert_eq!(replies[RS], json!({"ok": "task events already enabled"}));
    let loud = id_of(&add(2)[0]);
    let done = watch.task("task-succeeded", &loud);
    assert_eq!(done["result"], json!("4"));
    assert!(watch.about(&quiet).is_empty(), "task events before enable_events:\n{}", watch.dump());

    let replies = control(&url, &[RS], &["disable_events"]);
    assert_eq!(replies[RS], json!({"ok": "task events disabled"}));
    let quiet_again = id_of(&add(3)[0]);
    // The heartbeat command: an extra worker-heartbeat with freq 5 and only
    // the software fields, as Celery sends it; replies None.
    let replies = control(&url, &[RS], &["heartbeat"]);
    assert_eq!(replies[RS], Value::Null);
    let beat = watch.next("the requested heartbeat", |e| e["type"] == "worker-heartbeat" && e["freq"] == 5.0);
    assert_eq!(beat["sw_ident"], json!("celeriac"), "{beat}");
    assert!(beat.get("active").is_none(), "{beat}");
    assert_eq!(control(&url, &[RS], &["enable_events"])[RS], json!({"ok": "task events enabled"}));
    let last = id_of(&add(4)[0]);
    watch.task("task-succeeded", &last);
    assert!(watch.about(&quiet_again).is_empty(), "task events after disable_events:\n{}", watch.dump());

    rs.signal("TERM");
    watch.next("worker-offline", |e| e["type"] == "worker-offline");
}

// ---------------------------------------------------------------------------
// Prometheus metrics

/// `GET path` on `addr` (HTTP/1.0): the status line and the body.
fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (head.lines().next().unwrap_or_default().to_owned(), body.to_owned())
}

/// One parsed sample: its name, labels and value.
type Sample = (String, Map<String, Value>, f64);

/// The samples of an exposition as parsed by prometheus_client
/// (tests/python/parse_metrics.py): (sample name, labels, value), with each
/// family's type.
fn parse_metrics(text: &str) -> (Vec<Sample>, Map<String, Value>) {
    let mut child = Command::new(celeriac_tests::python().unwrap())
        .arg(python_dir().join("parse_metrics.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}\n{text}", String::from_utf8_lossy(&out.stderr));
    let mut samples = Vec::new();
    let mut types = Map::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let family: Value = serde_json::from_str(line).unwrap();
        types.insert(family["name"].as_str().unwrap().to_owned(), family["type"].clone());
        for s in family["samples"].as_array().unwrap() {
            samples.push((
                s[0].as_str().unwrap().to_owned(),
                s[1].as_object().unwrap().clone(),
                s[2].as_f64().unwrap(),
            ));
        }
    }
    (samples, types)
}

#[test]
fn prometheus_metrics_count_tasks_with_celery_exporters_names() {
    let (Some(redis), Some(_)) = (celeriac_tests::redis(), celeriac_tests::python_peer()) else { return };
    let url = redis.url();
    let addr = format!("127.0.0.1:{}", celeriac_tests::free_port().unwrap());
    let _rs = celeriac_worker(&redis, "rs@metrics-host", &["-c", "3", "--metrics-addr", &addr], &[]);
    let out = python_calls(
        &url,
        json!([
            {"name": "t.integration.tasks.add", "args": [1, 2]},
            {"name": "t.integration.tasks.add", "args": [3, 4]},
            {"name": "t.integration.tasks.fail", "args": ["boom"]},
            {"name": "t.integration.tasks.sleeping", "args": [0.3]},
        ]),
        true,
    );
    assert_eq!(out.iter().filter(|l| l["state"] == "SUCCESS").count(), 3, "{out:?}");
    let host = |extra: &[(&str, &str)]| {
        let mut m = Map::new();
        for (k, v) in extra {
            m.insert((*k).into(), json!(v));
        }
        m.insert("hostname".into(), json!("metrics-host"));
        m
    };
    // Task series carry the queue the message came from, as celery-exporter's.
    let task = |extra: &[(&str, &str)]| {
        let mut m = host(extra);
        m.insert("queue_name".into(), json!("celery"));
        m
    };
    let value = |samples: &[Sample], name: &str, labels: &Map<String, Value>| {
        samples.iter().find(|(n, l, _)| n == name && l == labels).map(|(_, _, v)| *v)
    };
    // The counters move after the results are stored: scrape until they did.
    let add = [("name", "t.integration.tasks.add")];
    let mut last = String::new();
    let counted = celeriac_tests::wait_until(WAIT, || {
        let (status, body) = http_get(&addr, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        last = body;
        last.contains("celery_task_succeeded_total{name=\"t.integration.tasks.sleeping\"")
            && last.contains("celery_worker_tasks_active{hostname=\"metrics-host\"} 0")
    });
    assert!(counted, "{last}");
    let (samples, types) = parse_metrics(&last);
    let v = |name: &str, labels: Map<String, Value>| value(&samples, name, &labels);
    for state in ["received", "started", "succeeded"] {
        assert_eq!(v(&format!("celery_task_{state}_total"), task(&add)), Some(2.0), "{state}\n{last}");
        assert_eq!(types[&format!("celery_task_{state}")], json!("counter"));
    }
    let fail = [("name", "t.integration.tasks.fail"), ("exception", "ExpectedException")];
    assert_eq!(v("celery_task_failed_total", task(&fail)), Some(1.0), "{last}");
    assert_eq!(types["celery_task_runtime"], json!("histogram"));
    assert_eq!(v("celery_task_runtime_count", task(&add)), Some(2.0), "{last}");
    let sleeping = [("name", "t.integration.tasks.sleeping")];
    let slept = v("celery_task_runtime_sum", task(&sleeping)).unwrap();
    assert!((0.3..5.0).contains(&slept), "runtime of sleeping(0.3): {slept}");
    let below = |le: &str| v("celery_task_runtime_bucket", task(&[sleeping[0], ("le", le)]));
    assert_eq!((below("0.25"), below("0.5"), below("+Inf")), (Some(0.0), Some(1.0), Some(1.0)), "{last}");
    // Bounds spelled as prometheus_client (celery-exporter) spells them.
    assert_eq!((below("1.0"), below("10.0")), (Some(1.0), Some(1.0)), "{last}");
    // Buckets are cumulative.
    let buckets: Vec<f64> = samples
        .iter()
        .filter(|(n, l, _)| n == "celery_task_runtime_bucket" && l["name"] == "t.integration.tasks.add")
        .map(|(_, _, v)| *v)
        .collect();
    assert!(buckets.len() > 10 && buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert_eq!(v("celery_worker_up", host(&[])), Some(1.0), "{last}");
    assert_eq!(v("celery_worker_tasks_active", host(&[])), Some(0.0));
    assert_eq!(v("celeriac_worker_concurrency", host(&[])), Some(3.0));
    assert_eq!(v("celeriac_worker_prefetch_count", host(&[])), Some(12.0));
    assert_eq!(v("celeriac_worker_reserved", host(&[])), Some(0.0));
    assert_eq!(v("celeriac_broker_reconnects_total", host(&[])), Some(0.0));
    // celery-exporter's queue gauges, for its Grafana dashboards.
    let queue = |name: &str| {
        let mut m = Map::new();
        m.insert("queue_name".into(), json!(name));
        m
    };
    assert_eq!(v("celery_queue_length", queue("celery")), Some(0.0), "{last}");
    assert_eq!(v("celery_active_process_count", queue("celery")), Some(3.0));
    assert_eq!(v("celery_active_worker_count", queue("celery")), Some(1.0));

    let (status, _) = http_get(&addr, "/elsewhere");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}

// ---------------------------------------------------------------------------
// Hostile remote-control requests

/// Sends `requests` with tests/python/control_raw.py (kombu's way, any
/// shape): for each, its name and the replies merged by node.
fn raw_requests(url: &str, requests: &[Value], timeout: f64) -> Vec<(String, Map<String, Value>, f64)> {
    let mut child = Command::new(celeriac_tests::python().unwrap())
        .arg(python_dir().join("control_raw.py"))
        .args(["--broker", url, "--timeout", &timeout.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input: String = requests.iter().map(|r| format!("{r}\n")).collect();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let line: Value = serde_json::from_str(line).unwrap();
            let mut merged = Map::new();
            for reply in line["replies"].as_array().unwrap() {
                for (node, value) in reply.as_object().unwrap() {
                    assert!(merged.insert(node.clone(), value.clone()).is_none(), "{node} answered twice: {line}");
                }
            }
            (line["name"].as_str().unwrap().to_owned(), merged, line["seconds"].as_f64().unwrap())
        })
        .collect()
}

/// A request to `nodes` (all of them when empty) wanting their replies.
fn ask(name: &str, nodes: &[&str], method: Value, arguments: Value) -> Value {
    let mut body = json!({"method": method, "arguments": arguments});
    if !nodes.is_empty() {
        body["destination"] = json!(nodes);
    }
    json!({"name": name, "body": body, "reply": true, "limit": nodes.len().max(1)})
}

/// Every hostile request of the issue against a running `celeriac worker`
/// with a Python worker beside it: where Python answers, celeriac answers
/// the same; where Python would take a value it cannot use, celeriac refuses
/// it with Celery's error reply; what cannot be answered is dropped with a
/// log line. Each failure is counted; afterwards both still answer `ping`
/// and celeriac still runs tasks.
#[test]
fn hostile_control_requests_get_defined_answers_and_the_worker_lives_on() {
    let (Some(redis), Some(python)) = (celeriac_tests::redis(), celeriac_tests::python_peer()) else { return };
    let url = redis.url();
    let addr = format!("127.0.0.1:{}", celeriac_tests::free_port().unwrap());
    let rs = celeriac_worker(&redis, RS, &["-c", "2", "--metrics-addr", &addr], &[]);
    let _py = python_worker(&redis, &python, "py");
    let both = [RS, PY];
    let add = "t.integration.tasks.add";

    // 1. Broken requests both answer: the same reply, word for word.
    let same = vec![
        ask("unknown", &both, json!("no_such_cmd"), json!({})),
        ask("int method", &both, json!(5), json!({})),
        ask("list method", &both, json!([1]), json!({})),
        ask("missing args", &both, json!("rate_limit"), json!({})),
        ask("rate not a number", &both, json!("rate_limit"), json!({"task_name": "tasks.nobody", "rate_limit": "x/s"})),
        ask("rate unit", &both, json!("rate_limit"), json!({"task_name": "tasks.nobody", "rate_limit": "5/q"})),
        ask(
            "rate unknown task",
            &both,
            json!("rate_limit"),
            json!({"task_name": "tasks.nobody", "rate_limit": "10/m"}),
        ),
        ask("time unknown task", &both, json!("time_limit"), json!({"task_name": "tasks.nobody", "hard": 10})),
        ask("time list task", &both, json!("time_limit"), json!({"task_name": [1]})),
        ask("revoke int", &both, json!("revoke"), json!({"task_id": 5})),
        ask("revoke dict", &both, json!("revoke"), json!({"task_id": {"a": 1}})),
        ask("lower signal", &both, json!("revoke"), json!({"task_id": "h-1", "terminate": true, "signal": "kill"})),
        ask("no signal", &both, json!("revoke"), json!({"task_id": "h-2", "terminate": true, "signal": "NOPE"})),
        ask("query list", &both, json!("query_task"), json!({"ids": [[1]]})),
        ask("hello bare", &both, json!("hello"), json!({})),
        ask("report extra", &both, json!("report"), json!({"x": 1})),
        ask("autoscale extra", &both, json!("autoscale"), json!({"max": 2, "foo": 1})),
        ask("state twice", &both, json!("ping"), json!({"state": 1})),
        ask("events extra", &both, json!("enable_events"), json!({"x": 1})),
    ];
    let replies = raw_requests(&url, &same, 10.0);
    assert_eq!(replies.len(), same.len());
    for (name, by_node, _) in &replies {
        assert_eq!(by_node.len(), 2, "{name}: {by_node:?}\n{}", rs.log());
        assert!(by_node[PY]["error"].is_string(), "{name}: Python answers with an error: {by_node:?}");
        assert_eq!(by_node[RS], by_node[PY], "{name}");
    }

    // 2. Addressing of any shape: kombu's rules, a linear-time glob.
    let trap = format!("{}b", "*a".repeat(10_000));
    let addressed = vec![
        json!({"name": "dest string", "body": {"method": "ping", "destination": "rs@ctl-host py@ctl-host"}, "reply": true, "limit": 2}),
        json!({"name": "dest mixed", "body": {"method": "ping", "destination": [1, null, {"a": 1}, RS]}, "reply": true, "limit": 1}),
        json!({"name": "long dest", "body": {"method": "ping", "destination": {"$ids": ["n@", 100_000]}}, "reply": true, "limit": 2}),
        json!({"name": "glob", "body": {"method": "ping", "pattern": "*@ctl-host", "matcher": "glob"}, "reply": true, "limit": 2}),
        json!({"name": "glob trap", "body": {"method": "ping", "pattern": trap, "matcher": "glob"}, "reply": true, "limit": 2}),
        json!({"name": "pcre", "body": {"method": "ping", "pattern": "rs@.*|py@.*", "matcher": "pcre"}, "reply": true, "limit": 2}),
        json!({"name": "dest int", "body": {"method": "ping", "destination": 5}, "reply": true, "limit": 2}),
    ];
    let got = raw_requests(&url, &addressed, 2.0);
    let nodes_of = |i: usize| {
        let mut nodes = got[i].1.keys().cloned().collect::<Vec<_>>();
        nodes.sort_by_key(|n| n != RS);
        nodes
    };
    assert_eq!(nodes_of(0), [RS, PY], "a string destination is searched as Python's `in`");
    assert_eq!(nodes_of(1), [RS]);
    assert!(nodes_of(2).is_empty(), "{:?}", got[2]);
    assert_eq!(nodes_of(3), [RS, PY]);
    assert!(nodes_of(4).is_empty(), "{:?}", got[4]);
    assert!(got[4].2 < 10.0, "the glob trap took {}s", got[4].2);
    assert_eq!(nodes_of(5), [PY], "pcre is refused by celeriac, run by Python");
    assert!(nodes_of(6).is_empty(), "neither can search an int");

    // 3. Values Python would take and choke on later: refused with Celery's
    // error reply. Sent to celeriac alone (a Python pool would fork 10^12
    // processes).
    let only = [RS];
    let nan = json!({"$float": "nan"});
    let inf = json!({"$float": "inf"});
    let huge = json!({"$int": "1".repeat(40)});
    let refused: Vec<(Value, &str)> = vec![
        (
            ask("args list", &only, json!("ping"), json!([1, 2])),
            "TypeError('celery.worker.control.ping() argument after ** must be a mapping, not list')",
        ),
        (
            ask("grow 1e12", &only, json!("pool_grow"), json!({"n": 1_000_000_000_000_i64})),
            "ValueError('pool_grow(): n=1000000000000 is out of range",
        ),
        (ask("grow -1", &only, json!("pool_grow"), json!({"n": -1})), "ValueError('pool_grow(): n=-1 is out of range"),
        (
            ask("grow str", &only, json!("pool_grow"), json!({"n": "x"})),
            "TypeError('pool_grow(): n must be an int, not str')",
        ),
        (
            ask("grow nan", &only, json!("pool_grow"), json!({"n": nan})),
            "TypeError('pool_grow(): n must be an int, not float')",
        ),
        (ask("grow huge", &only, json!("pool_grow"), json!({"n": huge})), "ValueError('pool_grow(): n=1111"),
        (
            ask("shrink 1e12", &only, json!("pool_shrink"), json!({"n": 1_000_000_000_000_i64})),
            "ValueError('pool_shrink(): n=",
        ),
        (
            ask("autoscale 1e12", &only, json!("autoscale"), json!({"max": 1_000_000_000_000_i64})),
            "ValueError('autoscale(): max=",
        ),
        (
            ask("autoscale str", &only, json!("autoscale"), json!({"max": "x"})),
            "TypeError('autoscale(): max must be an int",
        ),
        (
            ask("autoscale min>max", &only, json!("autoscale"), json!({"max": 2, "min": 5})),
            "ValueError('autoscale(): min=5",
        ),
        (
            ask("rate negative", &only, json!("rate_limit"), json!({"task_name": add, "rate_limit": "-5/m"})),
            "Invalid rate limit string: ValueError(",
        ),
        (
            ask("rate nan", &only, json!("rate_limit"), json!({"task_name": add, "rate_limit": "nan/s"})),
            "Invalid rate limit string: ValueError(",
        ),
        (
            ask("rate inf", &only, json!("rate_limit"), json!({"task_name": add, "rate_limit": "inf/s"})),
            "Invalid rate limit string: ValueError(",
        ),
        (
            ask("rate float nan", &only, json!("rate_limit"), json!({"task_name": add, "rate_limit": nan})),
            "Invalid rate limit string: ValueError(",
        ),
        (
            ask("time nan", &only, json!("time_limit"), json!({"task_name": add, "hard": nan})),
            "ValueError('time_limit(): hard=nan is out of range",
        ),
        (
            ask("time inf", &only, json!("time_limit"), json!({"task_name": add, "soft": inf})),
            "ValueError('time_limit(): soft=inf is out of range",
        ),
        (
            ask("time -1", &only, json!("time_limit"), json!({"task_name": add, "hard": -1})),
            "ValueError('time_limit(): hard=-1.0 is out of range",
        ),
        (
            ask("time 1e300", &only, json!("time_limit"), json!({"task_name": add, "hard": 1e300})),
            "ValueError('time_limit(): hard=1e+300 is out of range",
        ),
        (
            ask("time str", &only, json!("time_limit"), json!({"task_name": add, "hard": "10"})),
            "TypeError('time_limit(): hard must be a number, not str')",
        ),
        (
            ask("queue long", &only, json!("add_consumer"), json!({"queue": "q".repeat(300)})),
            "ValueError('add_consumer(): queue is 300 characters long",
        ),
        (
            ask("queue int", &only, json!("add_consumer"), json!({"queue": 5})),
            "TypeError('add_consumer(): queue must be a str, not int')",
        ),
        (
            ask("id long", &only, json!("revoke"), json!({"task_id": "i".repeat(10_000)})),
            "ValueError('revoke(): task_id is 10000 characters long",
        ),
        (ask("huge method", &only, json!({"$repeat": ["m", 500_000]}), json!({})), "KeyError('mmmm"),
        (ask("restart", &only, json!("pool_restart"), json!({})), "ValueError('Pool restarts not enabled')"),
    ];
    let requests: Vec<Value> = refused.iter().map(|(r, _)| r.clone()).collect();
    let replies = raw_requests(&url, &requests, 10.0);
    for ((name, by_node, _), (_, expected)) in replies.iter().zip(&refused) {
        let text = by_node.get(RS).and_then(|r| r["error"].as_str()).unwrap_or_else(|| panic!("{name}: {by_node:?}"));
        assert!(text.starts_with(expected), "{name}: {text}");
        assert!(text.len() < 1000, "{name}: a reply of {} bytes", text.len());
    }

    // 4. Extreme values that are still values: taken, and harmless.
    let taken = vec![
        ask("rate 1e300", &only, json!("rate_limit"), json!({"task_name": add, "rate_limit": "1e300/s"})),
        ask("rate 1e-300", &only, json!("rate_limit"), json!({"task_name": add, "rate_limit": "1e-300/s"})),
        ask("rate off", &only, json!("rate_limit"), json!({"task_name": add, "rate_limit": 0})),
        ask("time off", &only, json!("time_limit"), json!({"task_name": add, "hard": null, "soft": 0})),
        ask("grow 3", &only, json!("pool_grow"), json!({"n": 3})),
        ask("shrink lots", &only, json!("pool_shrink"), json!({"n": 9_999})),
        ask("items 50k", &only, json!("registered"), json!({"taskinfoitems": {"$list": ["name", 50_000]}})),
        ask("revoke 100k", &only, json!("revoke"), json!({"task_id": {"$ids": ["00000000-0000-4000-8000-", 100_000]}})),
        ask("revoked", &only, json!("revoked"), json!({})),
        ask(
            "hello 60k",
            &only,
            json!("hello"),
            json!({"from_node": "other@node", "revoked": {"$ids": ["hello-", 60_000]}}),
        ),
    ];
    let replies = raw_requests(&url, &taken, 60.0);
    let reply = |i: usize| replies[i].1.get(RS).cloned().unwrap_or_else(|| panic!("{:?}\n{}", replies[i], rs.log()));
    assert_eq!(reply(0), json!({"ok": "new rate limit set successfully"}));
    assert_eq!(reply(1), json!({"ok": "new rate limit set successfully"}));
    assert_eq!(reply(2), json!({"ok": "rate limit disabled successfully"}));
    assert_eq!(reply(3), json!({"ok": "time limits set successfully"}));
    assert_eq!(reply(4), json!({"ok": "pool will grow"}));
    assert_eq!(reply(5), json!({"ok": "pool will shrink"}));
    for line in reply(6).as_array().unwrap() {
        let line = line.as_str().unwrap();
        assert_eq!(line.matches("name=").count(), 1, "one entry per attribute, as a Python dict: {line}");
    }
    let revoked = reply(7)["ok"].as_str().unwrap().to_owned();
    assert!(revoked.starts_with("tasks {'00000000-0000-4000-8000-0'"), "{}", &revoked[..100]);
    eprintln!("revoking 100k ids took {:.1}s", replies[7].2);
    assert!(replies[7].2 < 45.0, "revoking 100k ids took {}s", replies[7].2);
    let listed = reply(8).as_array().unwrap().len();
    assert_eq!(listed, 50_000, "Celery's REVOKES_MAX");
    let hello = reply(9);
    assert_eq!(hello["revoked"].as_array().unwrap().len(), 50_000);
    assert!(hello["revoked"].as_array().unwrap().contains(&json!("hello-59999")));

    // 5. What cannot be answered is dropped, with a log line.
    let dropped = vec![
        json!({"name": "not json", "raw": "{\"method\": \"ping\", "}),
        json!({"name": "too big", "body": {"method": "ping", "destination": [RS], "pad": {"$repeat": ["x", 5 << 20]}}, "reply": true, "limit": 1}),
        json!({"name": "no method", "body": {"arguments": {}, "destination": [RS]}, "reply": true, "limit": 1}),
        json!({"name": "too deep", "body": {"method": "ping", "destination": [RS], "arguments": {"a": {"$nest": 600}}}, "reply": true, "limit": 1}),
        json!({"name": "too many values", "body": {"method": "ping", "destination": [RS], "pad": {"$list": [0, 300_000]}}, "reply": true, "limit": 1}),
    ];
    // A reply aimed at the task queue's exchange is not sent there.
    let mut misdirected = ask("misdirected", &only, json!("ping"), json!({}));
    misdirected["body"]["reply_to"] = json!({"exchange": "celery", "routing_key": "celery"});
    misdirected["reply"] = json!(false);
    raw_requests(&url, &[misdirected], 2.0);
    let replies = raw_requests(&url, &dropped, 2.0);
    for (name, by_node, _) in &replies {
        assert!(by_node.is_empty(), "{name}: {by_node:?}");
    }

    // Both still answer, and celeriac still runs tasks.
    let pong = inspect(&url, &both, &["ping"]);
    for node in both {
        assert_eq!(pong[node], json!({"ok": "pong"}), "{node}");
    }
    let out = python_calls(&url, json!([{"name": add, "args": [20, 22]}, {"name": add, "args": [1, 2]}]), true);
    assert_eq!((&out[0]["result"], &out[1]["result"]), (&json!(42), &json!(3)), "{out:?}\n{}", rs.log());
    let stats = inspect(&url, &[RS], &["stats"]);
    assert_eq!(stats[RS]["pool"]["max-concurrency"], json!(1), "grown by 3 from 2, then shrunk to the floor of 1");

    let log = rs.log();
    assert!(!log.contains("panicked"), "{log}");
    for line in [
        "remote control: a request of 5",
        "the \"pcre\" matcher is not supported",
        "remote control: a request without a method was ignored",
        "remote control: cannot decode a request",
        "remote control: a request of more than 250000 values was refused",
        "remote control: pool_grow: pool_grow(): n=1000000000000 is out of range",
        "a ping reply to the exchange \"celery\" was not sent",
    ] {
        assert!(log.contains(line), "no {line:?} in the log:\n{log}");
    }
    let (_, body) = http_get(&addr, "/metrics");
    let (samples, _) = parse_metrics(&body);
    let errors = |method: &str| {
        samples
            .iter()
            .find(|(n, l, _)| n == "celeriac_control_errors_total" && l["method"] == method)
            .map_or(0.0, |(_, _, v)| *v)
    };
    assert_eq!(errors("pool_grow"), 5.0, "{body}");
    assert_eq!(errors("time_limit"), 7.0, "{body}");
    assert_eq!(errors("other"), 4.0, "unknown, int and list methods, the huge name: {body}");
    assert!(errors("invalid") >= 4.0, "{body}");
    assert_eq!(errors("ping"), 5.0, "args list, state twice, pcre, an int destination, misdirected: {body}");
    let mut a = admin(&url);
    assert_eq!(redis_int(&mut a, &["LLEN", "celeriac.dead_letter"]), 0, "no reply landed in the task queue");
}

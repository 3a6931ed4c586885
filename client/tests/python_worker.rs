//! Canvases built with celeriac's client and run by a real Python Celery
//! worker (solo pool, from the project's .venv): every shape's `get()`
//! returns what Python's own `apply_async().get()` returns for the same
//! canvas, run by the same worker, and the result tree (parents, group
//! members, children, links, errbacks) is where Celery puts it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed assertion

use std::process::Command;
use std::time::Duration;

use celeriac_client::{chain, chord, group, CanvasResult, Client, ResultError, Signature};
use celeriac_protocol::{json, Map, Value};
use celeriac_tests::{CeleryWorker, RedisServer};

const WAIT: Option<Duration> = Some(Duration::from_secs(60));

fn python_worker(redis: &RedisServer) -> CeleryWorker {
    let python = celeriac_tests::python().unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python");
    let worker = CeleryWorker::builder(&python, "canvas_app", &dir)
        .queues("celery,workflow.staging")
        .args(&["--pool=solo", "-l", "info", "-n", "py@%h"])
        .env("CELERIAC_TEST_BROKER", &redis.url())
        .log(redis.dir().join("python-worker.log"))
        .start()
        .unwrap();
    worker.wait_ready(Duration::from_secs(60)).unwrap();
    worker
}

fn add(x: i64, y: i64) -> Signature {
    Signature::new("tasks.add").args((x, y))
}

fn add1(y: i64) -> Signature {
    Signature::new("tasks.add").args((y,))
}

fn tsum() -> Signature {
    Signature::new("tasks.tsum")
}

/// The canvases both sides build, by name, in the same order as `PYTHON`.
fn canvases() -> Vec<(&'static str, Signature)> {
    vec![
        ("task", add(2, 3)),
        ("chain", chain([add(1, 2), add1(10), Signature::new("tasks.mul").arg(2)])),
        ("chain_immutable", add(1, 1) | Signature::new("tasks.add").args((5, 5)).si()),
        ("group", group((0..5).map(|i| add(i, i)))),
        ("chord", chord([add(1, 1), add(2, 2), add(3, 3)], tsum())),
        ("chain_group_task", chain([add(1, 1), group([add1(1), add1(2)]), tsum()])),
        ("chain_chord_middle", chain([add(1, 1), chord([add1(1), add1(2)], tsum()), add1(100)])),
        ("chord_chain_body", chord([add(1, 1), add(2, 2)], chain([tsum(), Signature::new("tasks.mul").arg(10)]))),
        ("group_of_canvases", group([chain([add(1, 1), add1(2)]), chord([add(1, 1), add(2, 2)], tsum()), add(7, 7)])),
        ("chain_group_last", chain([add(1, 2), group([add1(3), add1(4)])])),
    ]
}

/// The same canvases in Python, run by the same worker: one JSON object of
/// `get()` values by name.
const PYTHON: &str = r#"
import json, os, sys
sys.path.insert(0, os.environ["CANVAS_APP_DIR"])
from celery import chain, chord, group
from canvas_app import app, add, mul, tsum
canvases = {
    "task": add.s(2, 3),
    "chain": chain(add.s(1, 2), add.s(10), mul.s(2)),
    "chain_immutable": add.s(1, 1) | add.si(5, 5),
    "group": group(add.s(i, i) for i in range(5)),
    "chord": chord([add.s(1, 1), add.s(2, 2), add.s(3, 3)], tsum.s()),
    "chain_group_task": chain(add.s(1, 1), group(add.s(1), add.s(2)), tsum.s()),
    "chain_chord_middle": chain(add.s(1, 1), chord([add.s(1), add.s(2)], tsum.s()), add.s(100)),
    "chord_chain_body": chord([add.s(1, 1), add.s(2, 2)], chain(tsum.s(), mul.s(10))),
    "group_of_canvases": group(chain(add.s(1, 1), add.s(2)), chord([add.s(1, 1), add.s(2, 2)], tsum.s()), add.s(7, 7)),
    "chain_group_last": chain(add.s(1, 2), group(add.s(3), add.s(4))),
}
results = {name: sig.apply_async() for name, sig in canvases.items()}
print(json.dumps({name: r.get(timeout=60) for name, r in results.items()}))
"#;

fn python_values(redis: &RedisServer) -> Map {
    let python = celeriac_tests::python().unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python");
    let out = Command::new(python)
        .args(["-c", PYTHON])
        .env("CANVAS_APP_DIR", &dir)
        .env("CELERIAC_TEST_BROKER", redis.url())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the Python canvases failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    json::from_str(text.trim()).unwrap().as_map().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_worker_runs_every_canvas_shape_celeriac_sends() {
    let (Some(redis), Some(_)) = (celeriac_tests::redis(), celeriac_tests::python_peer()) else { return };
    let _worker = python_worker(&redis);
    let client = Client::from_urls(&redis.url(), Some(&redis.url())).await.unwrap();

    let mut sent = Vec::new();
    for (name, sig) in canvases() {
        sent.push((name, client.apply_async(&sig).await.unwrap()));
    }
    let mut ours = Map::new();
    for (name, result) in &sent {
        ours.insert((*name).to_owned(), result.get(WAIT).await.unwrap_or_else(|e| panic!("{name}: {e}")));
    }
    let theirs = python_values(&redis);
    assert_eq!(ours, theirs, "celeriac's canvases give what Python's give");
    // And the values are the arithmetic, not two equal mistakes.
    assert_eq!(ours.get("chain_chord_middle"), Some(&Value::Int(107)));
    assert_eq!(ours.get("group"), Some(&json::from_str("[0, 2, 4, 6, 8]").unwrap()));
    assert_eq!(ours.get("group_of_canvases"), Some(&json::from_str("[4, 6, 14]").unwrap()));

    // The result tree: a chain's last result has the earlier steps as parents.
    let (_, chained) = &sent[1];
    let middle = chained.parent().unwrap();
    assert_eq!(middle.get(WAIT).await.unwrap(), Value::Int(13));
    assert_eq!(middle.parent().unwrap().get(WAIT).await.unwrap(), Value::Int(3));
    assert!(middle.parent().unwrap().parent().is_none());
    // Celery records the next step as the first step's child.
    let first = middle.parent().unwrap().as_task().unwrap();
    let children = first.children().await.unwrap();
    assert_eq!(children.iter().map(CanvasResult::id).collect::<Vec<_>>(), [middle.id()]);
    // A chord's result is its body's, whose parent is the header group.
    let (_, chorded) = &sent[4];
    let header = chorded.parent().and_then(CanvasResult::as_group).unwrap();
    assert_eq!(header.results().len(), 3);
    assert_eq!(header.get(WAIT).await.unwrap(), json::from_str("[2, 4, 6]").unwrap());
    assert!(header.ready().await.unwrap());
    assert_eq!(header.completed_count().await.unwrap(), 3);
    // A group's members, in order.
    let (_, grouped) = &sent[3];
    let members = grouped.as_group().unwrap().results();
    assert_eq!(members.len(), 5);
    assert_eq!(members[4].get(WAIT).await.unwrap(), Value::Int(8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_links_and_errbacks_reach_a_python_worker() {
    let (Some(redis), Some(_)) = (celeriac_tests::redis(), celeriac_tests::python_peer()) else { return };
    let _worker = python_worker(&redis);
    let client = Client::from_urls(&redis.url(), Some(&redis.url())).await.unwrap();

    // Options on a task in a chain.
    let mut headers = Map::new();
    headers.insert("x-tenant".into(), "acme".into());
    let echo = Signature::new("tasks.echo")
        .arg("hello")
        .kwarg("flag", true)
        .queue("workflow.staging")
        .priority(7)
        .countdown(Duration::from_millis(200))
        .expires_in(Duration::from_secs(600))
        .time_limit(Duration::from_secs(60))
        .soft_time_limit(Duration::from_secs_f64(30.5))
        .headers(headers);
    let r = client.apply_async(&chain([add(1, 1), echo]).stamp("run", "r42")).await.unwrap();
    let got = r.get(WAIT).await.unwrap();
    let got = got.as_map().unwrap();
    assert_eq!(got.get("args"), Some(&json::from_str(r#"[2, "hello"]"#).unwrap()), "{got:?}");
    assert_eq!(got.get("kwargs"), Some(&json::from_str(r#"{"flag": true}"#).unwrap()));
    assert_eq!(got.get("routing_key"), Some(&Value::Str("workflow.staging".into())));
    assert_eq!(got.get("priority"), Some(&Value::Int(7)));
    assert_eq!(got.get("headers"), Some(&json::from_str(r#"{"x-tenant": "acme"}"#).unwrap()));
    assert_eq!(got.get("timelimit"), Some(&json::from_str("[60, 30.5]").unwrap()));
    assert_eq!(got.get("stamps"), Some(&json::from_str(r#"{"run": "r42"}"#).unwrap()), "{got:?}");

    // A link gets the result; its id is pinned so it can be read.
    let link_id = uuid::Uuid::new_v4().to_string();
    let linked = add(2, 3).link(Signature::new("tasks.mul").arg(10).task_id(&link_id));
    let r = client.apply_async(&linked).await.unwrap();
    assert_eq!(r.get(WAIT).await.unwrap(), Value::Int(5));
    assert_eq!(client.result(&link_id).get(WAIT).await.unwrap(), Value::Int(50));

    // An errback gets the failed task's id; the failure is Python's ValueError.
    let errback_id = uuid::Uuid::new_v4().to_string();
    let failing =
        Signature::new("tasks.fail").arg("bad input").link_error(Signature::new("tasks.on_error").task_id(&errback_id));
    let r = client.apply_async(&failing).await.unwrap();
    match r.get(WAIT).await {
        Err(ResultError::Get(e)) => {
            let failed = e.task_failed().unwrap();
            assert_eq!(failed.exception.exc_type, "ValueError");
            assert_eq!(failed.exception.exc_message, [Value::Str("bad input".into())]);
        }
        other => panic!("expected the ValueError, got {other:?}"),
    }
    assert_eq!(client.result(&errback_id).get(WAIT).await.unwrap(), Value::Str(format!("handled {}", r.id())));

    // A group with a failing member fails its get(), as GroupResult.get() raises.
    let g = client.apply_async(&group([add(1, 1), Signature::new("tasks.fail").arg("boom")])).await.unwrap();
    match g.get(WAIT).await {
        Err(ResultError::Get(e)) => assert_eq!(e.task_failed().unwrap().exception.exc_type, "ValueError"),
        other => panic!("expected the member's ValueError, got {other:?}"),
    }
}

/// The README's "Canvas" workflow as Python builds it, in Celery's dict form.
const README_FLOW: &str = r#"
from celery import Celery, chain, group
from kombu.utils.json import dumps
app = Celery("datacenter", broker="memory://")
sig = lambda name, *a, **kw: app.signature(name, args=a, kwargs=kw)
flow = chain(
    sig("workflow.stage", "/data/run42"),
    group(sig("workflow.hpc", detector=d) for d in ("d1", "d2", "d3")),
    sig("workflow.report").set(queue="reports"),
).on_error(sig("workflow.alert", "run42").set(immutable=True))
print(dumps(flow))
"#;

#[test]
fn the_readme_workflow_is_the_signature_python_builds() {
    let Some(python) = celeriac_tests::python_peer() else { return };
    let out = Command::new(python).args(["-c", README_FLOW]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let theirs = String::from_utf8(out.stdout).unwrap();

    let stage = |p: &str| Signature::new("workflow.stage").arg(p);
    let hpc = |d: &str| Signature::new("workflow.hpc").kwarg("detector", d);
    let report = Signature::new("workflow.report");
    let flow = chain([stage("/data/run42"), group(["d1", "d2", "d3"].map(hpc)), report.queue("reports")])
        .link_error(Signature::new("workflow.alert").arg("run42").si());
    let ours = json::to_string(&flow.to_wire().unwrap().to_value()).unwrap();
    assert_eq!(ours, theirs.trim(), "the same workflow, byte for byte in Celery's dict form");
}

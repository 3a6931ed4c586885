//! The Rust producer against Python Celery: tasks celeriac sends are run by a
//! real Python worker, and Python reads their results, with every option
//! (countdown, eta, expires, priority, queue, custom headers, time limits, link
//! and link_error) arriving as Python's own `apply_async` would send it.
//!
//! The first two tests run on both brokers: Redis, and RabbitMQ (the run's
//! shared node, queues of their own; results in Redis either way).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed assertion

use std::process::Command;
use std::time::Duration;

use celeriac_broker::{Broker, Expires, Producer, ProducerConfig, SendOptions};
use celeriac_protocol::{json, Map, Signature, Value};
use celeriac_tests::{CeleryWorker, RedisServer};

/// Starts a Python Celery worker (solo pool) on `queues` and waits until it
/// says it is ready.
fn python_worker(redis: &RedisServer, queues: &str) -> CeleryWorker {
    python_worker_on(&redis.url(), redis, queues, "py@%h")
}

/// [`python_worker`] on the broker `broker`, results in `redis`.
fn python_worker_on(broker: &str, redis: &RedisServer, queues: &str, node: &str) -> CeleryWorker {
    let python = celeriac_tests::python().unwrap();
    let apps = celeriac_tests::repo_root().join("tests/python/apps");
    let worker = CeleryWorker::builder(&python, "mixed", &apps)
        .queues(queues)
        .args(&["--pool=solo", "-l", "info", "-n", node, "--without-gossip", "--without-mingle"])
        .env("CELERIAC_TEST_BROKER", broker)
        .env("CELERIAC_TEST_BACKEND", &redis.url())
        .start()
        .unwrap();
    worker.wait_ready(Duration::from_secs(60)).unwrap();
    worker
}

/// Where a parametrised test runs: the broker, the Redis for results, and
/// the names of its default and second queue.
struct Fleet {
    broker: String,
    redis: RedisServer,
    default_queue: String,
    hpc_queue: String,
    node: String,
}

/// On Redis: `celery` and `workflow.hpc`. On RabbitMQ (shared by the run):
/// queues of this test's own, unless `default_queue` is given.
fn fleet(amqp: bool, default_queue: Option<&str>) -> Option<Fleet> {
    let (Some(redis), Some(_)) = (celeriac_tests::redis(), celeriac_tests::python_peer()) else { return None };
    if !amqp {
        let broker = redis.url();
        return Some(Fleet {
            broker,
            redis,
            default_queue: "celery".into(),
            hpc_queue: "workflow.hpc".into(),
            node: "py@%h".into(),
        });
    }
    let broker = celeriac_tests::amqp()?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    Some(Fleet {
        broker,
        redis,
        default_queue: default_queue.map_or_else(|| format!("celery-{id}"), str::to_owned),
        hpc_queue: format!("workflow.hpc-{id}"),
        node: format!("py-{id}@%h"),
    })
}

impl Fleet {
    fn producer(&self) -> Producer {
        let config = ProducerConfig { default_queue: self.default_queue.clone(), ..ProducerConfig::default() };
        Producer::new(Broker::from_url(&self.broker).unwrap(), config)
    }

    fn python_worker(&self, queues: &[&str]) -> CeleryWorker {
        python_worker_on(&self.broker, &self.redis, &queues.join(","), &self.node)
    }
}

/// Python's view of the results: one JSON object per id.
fn python_results(redis: &RedisServer, ids: &[String]) -> Vec<Map> {
    let python = celeriac_tests::python().unwrap();
    let out = Command::new(python)
        .arg(celeriac_tests::repo_root().join("tests/python/get_results.py"))
        .args(["--backend", &redis.url(), "--timeout", "30"])
        .args(ids)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "results did not arrive:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    text.lines().map(|l| json::from_str(l).unwrap().as_map().unwrap().clone()).collect()
}

fn producer(redis: &RedisServer) -> Producer {
    Producer::new(Broker::from_url(&redis.url()).unwrap(), ProducerConfig::default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_worker_runs_what_celeriac_sends() {
    runs_what_celeriac_sends(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_worker_runs_what_celeriac_sends_on_rabbitmq() {
    runs_what_celeriac_sends(true).await;
}

async fn runs_what_celeriac_sends(amqp: bool) {
    let Some(f) = fleet(amqp, None) else { return };
    let redis = &f.redis;
    let _worker = f.python_worker(&[&f.default_queue, &f.hpc_queue]);
    let p = f.producer();

    let add = p.send_task("tasks.add", vec![2.into(), 3.into()], Map::new(), SendOptions::default()).await.unwrap();

    let mut kwargs = Map::new();
    kwargs.insert("path".into(), "/data/ü".into());
    let mut headers = Map::new();
    headers.insert("x-tenant".into(), "acme".into());
    let echo = p
        .send_task(
            "tasks.echo",
            vec![Value::Int(1), "two".into()],
            kwargs,
            SendOptions {
                queue: Some(f.hpc_queue.clone()),
                priority: Some(7),
                countdown: Some(Duration::from_millis(300)),
                expires: Some(Expires::In(Duration::from_secs(600))),
                headers,
                time_limit: Some(60.0),
                soft_time_limit: Some(30.5),
                ..SendOptions::default()
            },
        )
        .await
        .unwrap();

    let fail = p.send_task("tasks.fail", vec!["bad input".into()], Map::new(), SendOptions::default()).await.unwrap();

    let results = python_results(redis, &[add, echo, fail]);
    assert_eq!(results[0].get("result"), Some(&Value::Int(5)), "{:?}", results[0]);

    let e = results[1].get("result").and_then(Value::as_map).unwrap();
    assert_eq!(e.get("args"), Some(&Value::List(vec![Value::Int(1), "two".into()])));
    assert_eq!(e.get("kwargs").and_then(|k| k.get("path")), Some(&Value::Str("/data/ü".into())));
    assert_eq!(e.get("routing_key"), Some(&Value::Str(f.hpc_queue.clone())));
    assert_eq!(e.get("priority"), Some(&Value::Int(7)));
    assert!(e.get("eta").and_then(Value::as_str).is_some(), "eta lost: {e:?}");
    assert!(e.get("expires").and_then(Value::as_str).is_some(), "expires lost: {e:?}");
    assert_eq!(e.get("headers").and_then(|h| h.get("x-tenant")), Some(&Value::Str("acme".into())));
    assert_eq!(e.get("timelimit"), Some(&Value::List(vec![Value::Int(60), Value::Float(30.5)])));

    let f = &results[2];
    assert_eq!(f.get("state"), Some(&Value::Str("FAILURE".into())));
    assert_eq!(f.get("exc_type"), Some(&Value::Str("ValueError".into())));
    assert_eq!(f.get("exc_args"), Some(&Value::List(vec!["bad input".into()])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_and_errbacks_sent_from_rust_are_followed_by_python() {
    links_and_errbacks(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_and_errbacks_sent_from_rust_are_followed_by_python_on_rabbitmq() {
    links_and_errbacks(true).await;
}

async fn links_and_errbacks(amqp: bool) {
    // Python sends the callbacks to its default queue, `celery`: on the shared
    // RabbitMQ node this is the only test of the run consuming it.
    let Some(f) = fleet(amqp, Some("celery")) else { return };
    let redis = &f.redis;
    let _worker = f.python_worker(&[&f.default_queue]);
    let p = f.producer();

    // add(2, 3) | mul(_, 10): the link gets the parent's result prepended.
    let mut link = Signature::new("tasks.mul");
    link.args = vec![Value::Int(10)];
    let link_id = uuid::Uuid::new_v4().to_string();
    link.options.insert("task_id".into(), link_id.clone().into());
    p.send_task(
        "tasks.add",
        vec![2.into(), 3.into()],
        Map::new(),
        SendOptions { link: vec![link], ..SendOptions::default() },
    )
    .await
    .unwrap();

    // fail(...) with an errback: the errback gets the failed task's id.
    let mut errback = Signature::new("tasks.echo");
    let errback_id = uuid::Uuid::new_v4().to_string();
    errback.options.insert("task_id".into(), errback_id.clone().into());
    let failed = p
        .send_task(
            "tasks.fail",
            vec!["x".into()],
            Map::new(),
            SendOptions { link_error: vec![errback], ..SendOptions::default() },
        )
        .await
        .unwrap();

    let results = python_results(redis, &[link_id, errback_id]);
    assert_eq!(results[0].get("result"), Some(&Value::Int(50)), "{:?}", results[0]);
    let args = results[1].get("result").and_then(|r| r.get("args")).cloned();
    assert_eq!(args, Some(Value::List(vec![Value::Str(failed)])), "{:?}", results[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_waits_for_what_a_python_worker_returns() {
    use celeriac_backend::{GetError, RedisBackend};
    use celeriac_worker::{Client, ResultError};
    let (Some(redis), Some(_)) = (celeriac_tests::redis(), celeriac_tests::python_peer()) else { return };
    let _worker = python_worker(&redis, "celery");
    let backend = RedisBackend::from_url(&redis.url()).await.unwrap();
    let client = Client::new(producer(&redis), Some(backend));
    let wait = Some(Duration::from_secs(30));

    let sum = client.send_task("tasks.add", vec![20.into(), 22.into()], Map::new(), SendOptions::default()).await;
    assert_eq!(sum.unwrap().get(wait).await.unwrap(), Value::Int(42));

    let failed = client.send_task("tasks.fail", vec!["no such run".into()], Map::new(), SendOptions::default());
    match failed.await.unwrap().get(wait).await {
        Err(ResultError::Get(e)) => match *e {
            GetError::Failed(f) => assert_eq!(f.python_repr(), "ValueError('no such run')"),
            other => panic!("expected the ValueError Python raised, got {other:?}"),
        },
        other => panic!("expected the ValueError Python raised, got {other:?}"),
    }

    let no_results = Client::new(producer(&redis), None);
    let sent = no_results.send_task("tasks.add", vec![1.into(), 1.into()], Map::new(), SendOptions::default());
    assert!(matches!(sent.await.unwrap().get(wait).await, Err(ResultError::NoBackend(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_sent_events_reach_a_python_event_receiver() {
    task_sent_events(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_sent_events_reach_a_python_event_receiver_on_rabbitmq() {
    task_sent_events(true).await;
}

async fn task_sent_events(amqp: bool) {
    let Some(f) = fleet(amqp, None) else { return };
    let python = celeriac_tests::python().unwrap();
    let mut receiver = std::process::Command::new(python)
        .arg(celeriac_tests::repo_root().join("tests/python/capture_events.py"))
        .args(["--broker", &f.broker, "--limit", "1", "--types", "task-sent"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let config = ProducerConfig { send_sent_event: true, ..ProducerConfig::default() };
    let p = Producer::new(Broker::from_url(&f.broker).unwrap(), config);
    let options = SendOptions { queue: Some(f.hpc_queue.clone()), ..SendOptions::default() };
    let id = if amqp {
        // The receiver's queue exists once it consumes; events sent before are
        // dropped by RabbitMQ, so send until one arrives.
        let stdout = receiver.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
            let _ = tx.send(line);
        });
        let mut sent = Vec::new();
        let line = loop {
            sent.push(p.send_task("tasks.add", vec![2.into(), 3.into()], Map::new(), options.clone()).await.unwrap());
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
                break line;
            }
            assert!(sent.len() < 60, "no task-sent event arrived");
        };
        assert!(receiver.wait().unwrap().success());
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(sent.iter().any(|id| event["uuid"] == serde_json::json!(id)), "{event}");
        check_sent_event(&event, &f, &p);
        p.broker().delete_queue(&f.hpc_queue).await.unwrap();
        return;
    } else {
        let mut admin = redis::Client::open(f.redis.url()).unwrap().get_connection().unwrap();
        let subscribed = celeriac_tests::wait_until(Duration::from_secs(30), || {
            redis::cmd("PUBSUB").arg("NUMPAT").query::<i64>(&mut admin).unwrap() > 0
        });
        assert!(subscribed, "the Python event receiver never subscribed");
        p.send_task("tasks.add", vec![2.into(), 3.into()], Map::new(), options).await.unwrap()
    };
    let out = receiver.wait_with_output().unwrap();
    assert!(out.status.success(), "no task-sent event arrived");
    let event: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(event["uuid"], serde_json::json!(id));
    check_sent_event(&event, &f, &p);
}

fn check_sent_event(event: &serde_json::Value, f: &Fleet, p: &Producer) {
    assert_eq!(event["name"], "tasks.add");
    assert_eq!(event["args"], "(2, 3)");
    assert_eq!(event["queue"], serde_json::json!(f.hpc_queue));
    assert_eq!(event["hostname"], serde_json::json!(p.config().origin));
    assert!(event["clock"].is_u64() && event["timestamp"].is_f64(), "{event}");
}

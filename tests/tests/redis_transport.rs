//! The Redis transport end to end: a private redis-server per test, and the
//! pinned Python Celery/kombu as peers (tests/python/peers/).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed assertion

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use celeriac_broker::{BrokerError, Consumer, Delivery, ExchangeKind, RedisBroker, RedisOptions, RestoreOutcome};
use celeriac_protocol::{ContentType, Envelope, Message, TaskMessage, Value};
use celeriac_tests::{CeleryWorker, RedisServer, SentinelServer, TestCertificates};
use serde_json::json;

/// Longest wait for anything a test expects to happen.
const WAIT: Duration = Duration::from_secs(20);

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("celeriac_broker=info")),
        )
        .with_test_writer()
        .try_init();
}

fn peers_dir() -> PathBuf {
    celeriac_tests::repo_root().join("tests/python/peers")
}

/// Runs `kombu_peer.py <command>` with a JSON request; its JSON answer.
fn py(python: &Path, command: &str, request: serde_json::Value) -> serde_json::Value {
    let mut child = Command::new(python)
        .arg(peers_dir().join("kombu_peer.py"))
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python");
    child.stdin.take().unwrap().write_all(request.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "kombu_peer.py {command} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("kombu_peer.py {command} printed no JSON ({e})"))
}

/// [`py`] on the blocking pool, for use while Rust tasks run.
async fn py_async(python: &Path, command: &'static str, request: serde_json::Value) -> serde_json::Value {
    let python = python.to_path_buf();
    tokio::task::spawn_blocking(move || py(&python, command, request)).await.unwrap()
}

/// A Python Celery worker with one slot of `pool` consuming `queues`.
fn celery_worker(
    python: &Path,
    broker_url: &str,
    side_url: &str,
    queues: &str,
    pool: &str,
    env: &[(&str, &str)],
) -> CeleryWorker {
    let mut builder = CeleryWorker::builder(python, "redis_transport_app", &peers_dir())
        .queues(queues)
        .args(&["--concurrency=1", &format!("--pool={pool}"), "--loglevel=WARNING"])
        .args(&[&format!("--hostname={queues}@celeriac-test")])
        .env("CELERIAC_BROKER_URL", broker_url)
        .env("CELERIAC_SIDE_URL", side_url);
    for (k, v) in env {
        builder = builder.env(k, v);
    }
    builder.start().expect("start celery worker")
}

/// A plain (synchronous) Redis connection for inspecting keys.
fn admin(url: &str) -> redis::Connection {
    redis::Client::open(url).unwrap().get_connection().unwrap()
}

fn q<T: redis::FromRedisValue>(conn: &mut redis::Connection, args: &[&str]) -> T {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(conn).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn lrange(conn: &mut redis::Connection, key: &str) -> Vec<Vec<u8>> {
    q(conn, &["LRANGE", key, "0", "-1"])
}

/// Options with quick reconnects, for tests.
fn fast(url: &str) -> RedisOptions {
    let mut o = RedisOptions::from_url(url).unwrap();
    o.reconnect_backoff_min = Duration::from_millis(20);
    o.reconnect_backoff_max = Duration::from_millis(300);
    o.settle_timeout = WAIT;
    o
}

/// A Celery task message (protocol 2, JSON) with the given id and args.
fn task(name: &str, id: &str, args: Vec<Value>, priority: u8) -> Message {
    let mut t = TaskMessage::new(name, id);
    t.args = args;
    t.headers.argsrepr = Some("()".into());
    t.headers.kwargsrepr = Some("{}".into());
    t.to_message(t.default_properties(None, None), priority, ContentType::Json, None).unwrap()
}

fn task_id(d: &Delivery) -> String {
    d.message().headers.get("id").and_then(Value::as_str).unwrap_or_default().to_owned()
}

fn raw_id(raw: &[u8]) -> String {
    Envelope::from_slice(raw).unwrap().message.headers.get("id").and_then(Value::as_str).unwrap().to_owned()
}

async fn next(consumer: &mut Consumer) -> Delivery {
    match tokio::time::timeout(WAIT, consumer.next()).await {
        Ok(Some(Ok(d))) => d,
        Ok(Some(Err(e))) => panic!("consumer error: {e}"),
        Ok(None) => panic!("consumer closed"),
        Err(_) => panic!("no delivery within {WAIT:?}"),
    }
}

fn strs(v: &serde_json::Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_owned()).collect()
}

/// How often each id was seen, for assertion messages.
fn duplicates(ids: &[String]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for id in ids {
        *counts.entry(id.clone()).or_insert(0) += 1;
    }
    counts.into_iter().filter(|(_, n)| *n > 1).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn python_messages_reach_rust_as_kombu_wrote_them() {
    init_logs();
    let Some(redis) = celeriac_tests::redis() else { return };
    let Some(python) = celeriac_tests::python_peer() else { return };
    let url = redis.url();
    let ids = strs(&py(
        &python,
        "send",
        json!({"url": url, "tasks": [
            {"name": "tasks.plain", "args": [1]},
            {"name": "tasks.p5", "args": [2], "priority": 5},
            {"name": "tasks.p9", "args": [3], "priority": 9},
            {"name": "tasks.custom", "args": [4], "queue": "other"},
        ]}),
    ));
    let mut a = admin(&url);
    let mut raw_by_id = BTreeMap::new();
    for (key, expected) in [("celery", 0), ("celery\x06\x163", 1), ("celery\x06\x169", 2), ("other", 3)] {
        let list = lrange(&mut a, key);
        assert_eq!(list.len(), 1, "kombu put one message in {key:?}");
        assert_eq!(raw_id(&list[0]), ids[expected], "{key:?}");
        raw_by_id.insert(ids[expected].clone(), list[0].clone());
    }

    let broker = RedisBroker::connect(fast(&url)).await.unwrap();
    let mut consumer = broker.consumer(&["celery".to_owned(), "other".to_owned()], 10);
    let mut deliveries = Vec::new();
    for _ in 0..4 {
        deliveries.push(next(&mut consumer).await);
    }
    let got: Vec<String> = deliveries.iter().map(task_id).collect();
    // kombu's BRPOP order: step 0 of celery, then other (rotated), then steps 3 and 9.
    assert_eq!(got, vec![ids[0].clone(), ids[3].clone(), ids[1].clone(), ids[2].clone()]);
    let queues: Vec<&str> = deliveries.iter().map(|d| d.queue.as_str()).collect();
    assert_eq!(queues, ["celery", "other", "celery", "celery"]);

    let mut items = Vec::new();
    for d in &deliveries {
        let raw = &raw_by_id[&task_id(d)];
        assert_eq!(d.envelope.to_json().unwrap().as_bytes(), raw.as_slice(), "envelope differs from LRANGE");
        assert!(!d.redelivered());
        let info = &d.envelope.delivery_info;
        items.push(json!([String::from_utf8(raw.clone()).unwrap(), info.exchange, info.routing_key]));
    }
    let expected = strs(&py(&python, "unacked_values", json!({"items": items})));
    assert_eq!(q::<u64>(&mut a, &["HLEN", "unacked"]), 4);
    assert_eq!(q::<u64>(&mut a, &["ZCARD", "unacked_index"]), 4);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    for (d, want) in deliveries.iter().zip(&expected) {
        let stored: Vec<u8> = q(&mut a, &["HGET", "unacked", d.delivery_tag()]);
        assert_eq!(String::from_utf8(stored).unwrap(), *want, "unacked value is not kombu's");
        let score: f64 = q(&mut a, &["ZSCORE", "unacked_index", d.delivery_tag()]);
        assert!((now - 30.0..=now + 1.0).contains(&score), "unacked_index score {score} is not the delivery time");
    }
    for d in &mut deliveries {
        d.ack().await.unwrap();
    }
    assert_eq!(q::<u64>(&mut a, &["HLEN", "unacked"]), 0);
    assert_eq!(q::<u64>(&mut a, &["ZCARD", "unacked_index"]), 0);
    assert_eq!(consumer.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn rust_publishes_and_a_python_worker_runs_the_tasks() {
    init_logs();
    let Some(redis) = celeriac_tests::redis() else { return };
    let Some(python) = celeriac_tests::python_peer() else { return };
    let (url, side) = (redis.url(), redis.url_db(15));
    let broker = RedisBroker::connect(fast(&url)).await.unwrap();
    broker.declare_queue("rs2py", "rs2py", "rs2py").await.unwrap();
    let mut a = admin(&url);
    let members: Vec<String> = q(&mut a, &["SMEMBERS", "_kombu.binding.rs2py"]);
    assert_eq!(members, ["rs2py\x06\x16\x06\x16rs2py"]);
    let permanent: Vec<String> = q(&mut a, &["SMEMBERS", "_kombu.binding_permanent.rs2py"]);
    assert_eq!(permanent, members);
    for i in 0..6i64 {
        let id = uuid::Uuid::new_v4().to_string();
        let message = task("record", &id, vec![Value::Int(i)], if i == 5 { 9 } else { 0 });
        // Half through the anonymous exchange, half through the bound direct exchange.
        let exchange = if i % 2 == 0 { "" } else { "rs2py" };
        broker.publish(exchange, "rs2py", &message).await.unwrap();
    }
    assert_eq!(broker.queue_len("rs2py").await.unwrap(), 6);
    assert_eq!(lrange(&mut a, "rs2py\x06\x169").len(), 1, "priority 9 goes to its sub-queue");

    let _worker = celery_worker(&python, &url, &side, "rs2py", "solo", &[]);
    let mut s = admin(&side);
    let mut seen = BTreeSet::new();
    while seen.len() < 6 {
        let popped: Option<(String, String)> =
            redis::cmd("BLPOP").arg("celeriac:test:recorded").arg(WAIT.as_secs()).query(&mut s).unwrap();
        let (_, value) = popped.unwrap_or_else(|| panic!("the Python worker ran only {seen:?} within {WAIT:?}"));
        assert!(seen.insert(value.clone()), "task {value} ran twice");
    }
    assert_eq!(seen, (0..6).map(|i| i.to_string()).collect());
    assert_eq!(broker.queue_len("rs2py").await.unwrap(), 0);
}

/// The lists of a Redis database and their lengths (binding sets left out).
fn lists(conn: &mut redis::Connection) -> BTreeMap<String, i64> {
    let keys: Vec<String> = q(conn, &["KEYS", "*"]);
    let mut out = BTreeMap::new();
    for key in keys {
        let kind: String = q(conn, &["TYPE", &key]);
        if kind == "list" {
            out.insert(key.clone(), q(conn, &["LLEN", &key]));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn direct_exchange_publishes_land_where_kombus_do() {
    init_logs();
    let Some(redis) = celeriac_tests::redis() else { return };
    let Some(python) = celeriac_tests::python_peer() else { return };
    let url = redis.url();
    let mut a = admin(&url);
    let sep = "\x06\x16";
    for prefix in ["", "pfx:"] {
        let _: () = q(&mut a, &["FLUSHDB"]);
        let binding = format!("{prefix}_kombu.binding.ex");
        // `qa` bound twice under `rk` (another pattern), `qb` once, `qc`
        // under another key.
        for member in [["rk", "rk", "qa"], ["rk", "", "qa"], ["rk", "rk", "qb"], ["other", "other", "qc"]] {
            let _: i64 = q(&mut a, &["SADD", &binding, &member.join(sep)]);
        }
        let mut options = fast(&url);
        options.global_keyprefix = prefix.to_owned();
        let broker = RedisBroker::connect(options).await.unwrap();
        let mut transport_options = serde_json::Map::new();
        if !prefix.is_empty() {
            transport_options.insert("global_keyprefix".into(), json!(prefix));
        }
        for priority in [0u8, 5] {
            broker.publish("ex", "rk", &task("t", "id", vec![], priority)).await.unwrap();
            let ours = lists(&mut a);
            for key in ours.keys() {
                let _: i64 = q(&mut a, &["DEL", key]);
            }
            py(
                &python,
                "publish_direct",
                json!({"url": url, "transport_options": transport_options, "exchange": "ex",
                       "routing_key": "rk", "priority": priority, "body": {"x": 1}}),
            );
            let theirs = lists(&mut a);
            for key in theirs.keys() {
                let _: i64 = q(&mut a, &["DEL", key]);
            }
            assert_eq!(ours, theirs, "prefix {prefix:?}, priority {priority}");
            assert_eq!(ours.len(), 2, "qa once and qb: {ours:?}");
        }
    }
    // Members that are not three parts (kombu itself would fail on them)
    // are skipped; the well-formed ones still route.
    let _: () = q(&mut a, &["FLUSHDB"]);
    for member in ["rk\x06\x16qz", "rk\x06\x16rk\x06\x16qq\x06\x16extra", "rk\x06\x16rk\x06\x16qa"] {
        let _: i64 = q(&mut a, &["SADD", "_kombu.binding.ex", member]);
    }
    let broker = RedisBroker::connect(fast(&url)).await.unwrap();
    broker.publish("ex", "rk", &task("t", "id", vec![], 0)).await.unwrap();
    assert_eq!(lists(&mut a), BTreeMap::from([("qa".to_owned(), 1)]));
    // Nothing bound under the key: kombu's fallback, the dead-letter queue
    // when one is set.
    let mut options = fast(&url);
    options.deadletter_queue = Some("dead".into());
    let broker = RedisBroker::connect(options).await.unwrap();
    broker.publish("ex", "nothing", &task("t", "id", vec![], 0)).await.unwrap();
    assert_eq!(lists(&mut a), BTreeMap::from([("qa".to_owned(), 1), ("dead".to_owned(), 1)]));
}

/// Publishes the same mix of priorities to queues `a` and `b` of `broker`.
async fn publish_mix(broker: &RedisBroker, mix: &[(&str, u8)]) {
    for (i, (queue, priority)) in mix.iter().enumerate() {
        broker.publish("", queue, &task("tasks.mix", &format!("m{i:02}"), vec![], *priority)).await.unwrap();
    }
}

/// The order a Rust consumer of `queues` gets everything in, acking each.
async fn rust_order(broker: &RedisBroker, queues: &[&str], prefetch: usize, count: usize) -> Vec<String> {
    let queues: Vec<String> = queues.iter().map(|s| s.to_string()).collect();
    let mut consumer = broker.consumer(&queues, prefetch);
    let mut order = Vec::new();
    for _ in 0..count {
        let mut d = next(&mut consumer).await;
        order.push(task_id(&d));
        d.ack().await.unwrap();
    }
    order
}

fn python_order(python: &Path, url: &str, queues: &[&str], count: usize) -> Vec<String> {
    let drained = py(python, "drain", json!({"url": url, "queues": queues, "count": count, "prefetch": 1}));
    drained.as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn priorities_come_out_in_kombus_order() {
    init_logs();
    let Some(redis) = celeriac_tests::redis() else { return };
    let Some(python) = celeriac_tests::python_peer() else { return };
    let mix = [
        ("a", 0),
        ("b", 5),
        ("a", 9),
        ("b", 3),
        ("a", 0),
        ("b", 7),
        ("a", 1),
        ("b", 9),
        ("a", 6),
        ("b", 2),
        ("a", 4),
        ("b", 0),
    ];
    let (ours, theirs) = (redis.url_db(0), redis.url_db(1));
    let rust_broker = RedisBroker::connect(fast(&ours)).await.unwrap();
    let copy_broker = RedisBroker::connect(fast(&theirs)).await.unwrap();
    publish_mix(&rust_broker, &mix).await;
    publish_mix(&copy_broker, &mix).await;
    let rust = rust_order(&rust_broker, &["a", "b"], 0, mix.len()).await;
    let python = {
        let python = python.clone();
        tokio::task::spawn_blocking(move || python_order(&python, &theirs, &["a", "b"], mix.len())).await.unwrap()
    };
    assert_eq!(rust, python, "Rust and kombu consumed in different orders");
    // And the order means what kombu means: lower priority numbers first, step by step.
    let step = |id: &String| {
        let i: usize = id[1..].parse().unwrap();
        [0u8, 0, 0, 3, 3, 3, 6, 6, 6, 9][mix[i].1 as usize]
    };
    let steps: Vec<u8> = rust.iter().map(step).collect();
    assert!(steps.windows(2).all(|w| w[0] <= w[1]), "priority steps out of order: {steps:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn queues_are_consumed_round_robin_like_kombu() {
    init_logs();
    let Some(redis) = celeriac_tests::redis() else { return };
    let Some(python) = celeriac_tests::python_peer() else { return };
    let mut mix = Vec::new();
    for queue in ["a", "b", "c"] {
        for _ in 0..3 {
            mix.push((queue, 0u8));
        }
    }
    let (ours, theirs) = (redis.url_db(0), redis.url_db(1));
    let rust_broker = RedisBroker::connect(fast(&ours)).await.unwrap();
    let copy_broker = RedisBroker::connect(fast(&theirs)).await.unwrap();
    publish_mix(&rust_broker, &mix).await;
    publish_mix(&copy_broker, &mix).await;
    let rust = rust_order(&rust_broker, &["a", "b", "c"], 1, mix.len()).await;
    let python =
        tokio::task::spawn_blocking(move || python_order(&python, &theirs, &["a", "b", "c"], 9)).await.unwrap();
    assert_eq!(rust, ["m00", "m03", "m06", "m01", "m04", "m07", "m02", "m05", "m08"], "not round robin");
    assert_eq!(rust, python, "Rust and kombu consumed in different orders");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_python_worker_is_restored_by_rust() {
    init_logs();
    let Some(redis) = celeriac_tests::redis() else { return };
    let Some(python) = celeriac_tests::python_peer() else { return };
    let (url, side) = (redis.url(), redis.url_db(15));
    let broker = RedisBroker::connect(fast(&url)).await.unwrap();
    let ids: Vec<String> = (0..6).map(|i| format!("block-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        broker.publish("", "crash", &task("block", id, vec![Value::Int(i as i64)], 0)).await.unwrap();
    }
    // The threads pool keeps the consumer loop free while a task runs, so the
    // worker prefetches (the solo pool only fetches between tasks).
    let mut worker = celery_worker(
        &python,
        &url,
        &side,
        "crash",
        "threads",
        &[("CELERIAC_ACKS_LATE", "1"), ("CELERIAC_PREFETCH_MULTIPLIER", "4")],
    );
    let mut s = admin(&side);
    let started: Option<(String, String)> =
        redis::cmd("BLPOP").arg("celeriac:test:started").arg(WAIT.as_secs()).query(&mut s).unwrap();
    assert!(started.is_some(), "the Python worker did not start a task");
    let mut a = admin(&url);
    // One slot × prefetch multiplier 4: the running task and three reserved ones are unacked.
    let held = celeriac_tests::wait_until(WAIT, || q::<u64>(&mut a, &["HLEN", "unacked"]) == 4);
    assert!(held, "the Python worker holds {} unacked messages, expected 4", q::<u64>(&mut a, &["HLEN", "unacked"]));
    worker.signal("KILL");
    assert!(worker.wait_timeout(WAIT).is_some(), "the worker did not die");
    assert_eq!(broker.queue_len("crash").await.unwrap(), 2);

    let mut options = fast(&url);
    options.visibility_timeout = Duration::from_secs(2);
    options.unacked_restore_interval = Duration::from_millis(200);
    options.unacked_restore_throttle = 1;
    let rust = RedisBroker::connect(options).await.unwrap();
    let mut consumer = rust.consumer(&["crash".to_owned()], 0);
    let mut got = Vec::new();
    let mut redelivered = 0;
    let deadline = Instant::now() + WAIT;
    while got.iter().collect::<BTreeSet<_>>().len() < ids.len() && Instant::now() < deadline {
        let mut d = next(&mut consumer).await;
        got.push(task_id(&d));
        redelivered += usize::from(d.redelivered());
        d.ack().await.unwrap();
    }
    let unique: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(unique, ids.iter().cloned().collect(), "lost messages; got {got:?}");
    assert_eq!(got.len(), ids.len(), "duplicates: {:?}", duplicates(&got));
    assert_eq!(redelivered, 4, "the four restored messages carry redelivered=true");
    assert_eq!(q::<u64>(&mut a, &["HLEN", "unacked"]), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_rust_consumer_is_restored_by_kombu() {
    init_logs();
    let Some(redis) = celeriac_tests::redis() else { return };
    let Some(python) = celeriac_tests::python_peer() else { return };
    let url = redis.url();
    let broker = RedisBroker::connect(fast(&url)).await.unwrap();
    let ids: Vec<String> = (0..5).map(|i| format!("rcrash-{i}")).collect();
    for id in &ids {
        broker.publish("", "rcrash", &task("tasks.x", id, vec![], 0)).await.unwrap();
    }
    let mut consumer = broker.consumer(&["rcrash".to_owned()], 5);
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(next(&mut consumer).await);
    }
    let mut a = admin(&url);
    assert_eq!(q::<u64>(&mut a, &["HLEN", "unacked"]), 5);
    // What a crash leaves: unacked records, no restore.
    drop(held);
    drop(consumer);
    let drained = py_async(
        &python,
        "drain",
        json!({"url": url, "queues": ["rcrash"], "count": 5, "prefetch": 10,
               "transport_options": {"visibility_timeout": 1, "unacked_restore_throttle": 1}}),
    )
    .await;
    let got: Vec<String> = drained.as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect();
    let unique: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(unique, ids.iter().cloned().collect(), "kombu did not restore everything; got {got:?}");
    assert_eq!(got.len(), ids.len(), "duplicates: {:?}", duplicates(&got));
    assert!(drained.as_array().unwrap().iter().all(|m| m["redelivered"] == json!(true)));
    assert_eq!(q::<u64>(&mut a, &["HLEN", "unacked"]), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn requeue_reject_and_restore_match_kombu() {
    init_logs();
    let Some(redis) = celeriac_tests::redis() else { return };
    let Some(python) = celeriac_tests::python_peer() else { return };
    let url = redis.url();
    let broker = RedisBroker::connect(fast(&url)).await.unwrap();
    for id in ["A", "B", "C"] {
        broker.publish("", "rq", &task("tasks.x", id, vec![], 0)).await.unwrap();
    }
    let mut a = admin(&url);
    let original: BTreeMap<String, String> =
        lrange(&mut a, "rq").into_iter().map(|raw| (raw_id(&raw), String::from_utf8(raw).unwrap())).collect();
    let expect_redelivered =
        |id: &str| -> String { strs(&py(&python, "redelivered", json!({"items": [original[id]]}))).remove(0) };

    let mut consumer = broker.consumer(&["rq".to_owned()], 1);
    let mut d = next(&mut consumer).await;
    assert_eq!(task_id(&d), "A");
    d.requeue().await.unwrap();
    d.requeue().await.unwrap();
    assert!(matches!(d.ack().await, Err(BrokerError::AlreadySettled { .. })));
    // The freed slot takes B from the consuming end; A waits at the far end.
    let mut b = next(&mut consumer).await;
    assert_eq!(task_id(&b), "B");
    let list = lrange(&mut a, "rq");
    assert_eq!(list.len(), 2);
    assert_eq!(
        String::from_utf8(list[0].clone()).unwrap(),
        expect_redelivered("A"),
        "requeue is an LPUSH of kombu's redelivered payload"
    );
    assert_eq!(String::from_utf8(list[1].clone()).unwrap(), original["C"]);
    b.reject().await.unwrap();
    assert_eq!(q::<u64>(&mut a, &["HEXISTS", "unacked", b.delivery_tag()]), 0, "reject drops the message");
    assert_eq!(q::<Option<f64>>(&mut a, &["ZSCORE", "unacked_index", b.delivery_tag()]), None);
    let c = next(&mut consumer).await;
    assert_eq!(task_id(&c), "C");
    assert_eq!(consumer.restore_unacked().await.unwrap(), 1);
    let list = lrange(&mut a, "rq");
    assert_eq!(list.len(), 2);
    assert_eq!(raw_id(&list[0]), "A");
    assert_eq!(
        String::from_utf8(list[1].clone()).unwrap(),
        expect_redelivered("C"),
        "restore is an RPUSH of kombu's redelivered payload"
    );
    assert_eq!(q::<u64>(&mut a, &["HLEN", "unacked"]), 0);
    drop(c);

    // The restored message is next, then the requeued one; both say redelivered.
    let mut consumer = broker.consumer(&["rq".to_owned()], 0);
    for id in ["C", "A"] {
        let mut d = next(&mut consumer).await;
        assert_eq!((task_id(&d).as_str(), d.redelivered()), (id, true));
        d.ack().await.unwrap();
    }

    // kombu's own requeue puts the message at the same end with the same bytes.
    for id in ["X", "Y"] {
        broker.publish("", "pyrq", &task("tasks.x", id, vec![], 0)).await.unwrap();
    }
    let raw_x = lrange(&mut a, "pyrq").into_iter().find(|r| raw_id(r) == "X").unwrap();
    let requeued = py(&python, "drain", json!({"url": url, "queues": ["pyrq"], "count": 1, "requeue": true}));
    assert_eq!(requeued[0]["id"], "X");
    let list = lrange(&mut a, "pyrq");
    let want = strs(&py(&python, "redelivered", json!({"items": [String::from_utf8(raw_x).unwrap()]}))).remove(0);
    assert_eq!(String::from_utf8(list[0].clone()).unwrap(), want, "kombu's requeue differs from ours");
    assert_eq!(raw_id(&list[1]), "Y");
}

#[tokio::test(flavor = "multi_thread")]
async fn consuming_survives_client_kill_and_a_server_restart() {
    init_logs();
    let Some(mut redis) = celeriac_tests::redis() else { return };
    let url = redis.url();
    let broker = RedisBroker::connect(fast(&url)).await.unwrap();
    for i in 0..30 {
        broker.publish("", "drop", &task("tasks.x", &format!("k{i:02}"), vec![], 0)).await.unwrap();
    }
    broker.declare_exchange("bcast", ExchangeKind::Fanout);
    let mut sub = broker.subscribe("bcast", "").await.unwrap();
    let mut consumer = broker.consumer(&["drop".to_owned()], 10);
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(next(&mut consumer).await);
    }
    let mut a = admin(&url);
    let killed: u64 = q(&mut a, &["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]);
    assert!(killed >= 1, "expected our connections to be killed, killed {killed}");
    let killed: u64 = q(&mut a, &["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert_eq!(killed, 1, "the subscription's connection");
    // The subscription comes back by itself (messages published meanwhile are lost, as on any PUB/SUB).
    let resubscribed = celeriac_tests::wait_until(WAIT, || q::<u64>(&mut a, &["PUBSUB", "NUMPAT"]) == 1);
    assert!(resubscribed, "the fanout subscription did not come back");
    broker.publish("bcast", "", &task("tasks.x", "after-kill", vec![], 0)).await.unwrap();
    let m = tokio::time::timeout(WAIT, sub.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(m.envelope.message.headers.get("id"), Some(&Value::Str("after-kill".into())));
    let mut got: Vec<String> = Vec::new();
    for mut d in held.drain(..) {
        got.push(task_id(&d));
        d.ack().await.expect("in-flight deliveries stay ackable after the connection drops");
    }
    while got.len() < 30 {
        let mut d = next(&mut consumer).await;
        got.push(task_id(&d));
        d.ack().await.unwrap();
    }
    let unique: BTreeSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), 30, "duplicates: {:?}", duplicates(&got));
    assert_eq!(q::<u64>(&mut a, &["HLEN", "unacked"]), 0);

    // A restart loses the server's data; the consumer reconnects and goes on.
    for i in 0..3 {
        broker.publish("", "drop", &task("tasks.x", &format!("before-{i}"), vec![], 0)).await.unwrap();
    }
    for _ in 0..3 {
        held.push(next(&mut consumer).await);
    }
    redis.restart().unwrap();
    for mut d in held.drain(..) {
        d.ack().await.expect("acking after a restart is a no-op, not an error");
    }
    let mut after = Vec::new();
    for i in 0..10 {
        broker.publish("", "drop", &task("tasks.x", &format!("after-{i}"), vec![], 0)).await.unwrap();
    }
    while after.len() < 10 {
        let mut d = next(&mut consumer).await;
        after.push(task_id(&d));
        d.ack().await.unwrap();
    }
    let expected: Vec<String> = (0..10).map(|i| format!("after-{i}")).collect();
    assert_eq!(after, expected);
    let mut a = admin(&url);
    assert_eq!(q::<u64>(&mut a, &["HLEN", "unacked"]), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn global_keyprefix_interoperates_with_kombu() {
    init_logs();
    let Some(redis) = celeriac_tests::redis() else { return };
    let Some(python) = celeriac_tests::python_peer() else { return };
    let url = redis.url();
    let transport = json!({"global_keyprefix": "pfx:"});
    let ids =
        strs(&py(&python, "send", json!({"url": url, "transport_options": transport, "tasks": [{"name": "tasks.p"}]})));
    let mut a = admin(&url);
    assert_eq!(q::<u64>(&mut a, &["EXISTS", "celery"]), 0);
    assert_eq!(q::<u64>(&mut a, &["LLEN", "pfx:celery"]), 1);
    assert_eq!(q::<u64>(&mut a, &["SCARD", "pfx:_kombu.binding.celery"]), 1);

    let mut options = fast(&url);
    options.global_keyprefix = "pfx:".into();
    let broker = RedisBroker::connect(options).await.unwrap();
    let mut consumer = broker.consumer(&["celery".to_owned()], 1);
    let mut d = next(&mut consumer).await;
    assert_eq!(task_id(&d), ids[0]);
    assert_eq!(q::<u64>(&mut a, &["HLEN", "pfx:unacked"]), 1);
    assert_eq!(q::<u64>(&mut a, &["ZCARD", "pfx:unacked_index"]), 1);
    assert_eq!(q::<u64>(&mut a, &["EXISTS", "unacked"]), 0);
    d.ack().await.unwrap();
    assert_eq!(q::<u64>(&mut a, &["HLEN", "pfx:unacked"]), 0);
    consumer.close().await;

    for id in ["r1", "r2"] {
        broker.publish("", "celery", &task("tasks.p", id, vec![], 0)).await.unwrap();
    }
    let drained = py_async(
        &python,
        "drain",
        json!({"url": url, "transport_options": transport, "queues": ["celery"], "count": 2}),
    )
    .await;
    let got: Vec<&str> = drained.as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(got, ["r1", "r2"]);

    broker.declare_exchange("bcast", ExchangeKind::Fanout);
    let mut sub = broker.subscribe("bcast", "#").await.unwrap();
    assert_eq!(sub.pattern(), "pfx:/0.bcast/*");
    py_async(
        &python,
        "publish_fanout",
        json!({"url": url, "transport_options": transport, "exchange": "bcast", "routing_key": "x.y", "body": {"hello": 1}}),
    )
    .await;
    let m = tokio::time::timeout(WAIT, sub.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(
        (m.exchange.as_str(), m.routing_key.as_deref(), m.channel.as_str()),
        ("bcast", Some("x.y"), "/0.bcast/x.y")
    );
    assert_eq!(m.envelope.message.body, br#"{"hello": 1}"#);
}

#[tokio::test(flavor = "multi_thread")]
async fn acl_user_password_and_unix_socket() {
    init_logs();
    let Some(python) = celeriac_tests::python_peer() else { return };
    let Some(redis) = celeriac_tests::or_skip(
        "redis-server",
        celeriac_tests::RedisServer::start_with(&[
            "--user", "worker", "on", ">s3cret", "~*", "&*", "+@all", "--user", "default", "off",
        ]),
    ) else {
        return;
    };
    let url = format!("redis://worker:s3cret@127.0.0.1:{}/0", redis.port());
    let ids = strs(&py(&python, "send", json!({"url": url, "tasks": [{"name": "tasks.acl"}]})));
    let broker = RedisBroker::connect(fast(&url)).await.unwrap();
    assert_eq!(broker.masked_url(), format!("redis://worker:**@127.0.0.1:{}/0", redis.port()));
    let mut consumer = broker.consumer(&["celery".to_owned()], 1);
    let mut d = next(&mut consumer).await;
    assert_eq!(task_id(&d), ids[0]);
    d.ack().await.unwrap();
    assert_eq!(broker.unacked_len().await.unwrap(), 0);

    let wrong = format!("redis://worker:nope@127.0.0.1:{}/0", redis.port());
    let err = RedisBroker::connect(fast(&wrong)).await.unwrap_err();
    assert!(matches!(err, BrokerError::Auth { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("worker:**@") && !text.contains("nope"), "{text}");

    // kombu's unix socket spelling, with a database.
    let Some(plain) = celeriac_tests::redis() else { return };
    let socket_url = format!("redis+socket://{}?virtual_host=2", plain.socket_path().display());
    let ids = strs(&py(&python, "send", json!({"url": socket_url, "tasks": [{"name": "tasks.sock"}]})));
    let broker = RedisBroker::connect(fast(&socket_url)).await.unwrap();
    let mut consumer = broker.consumer(&["celery".to_owned()], 1);
    let mut d = next(&mut consumer).await;
    assert_eq!(task_id(&d), ids[0]);
    let mut db2 = admin(&plain.url_db(2));
    assert_eq!(q::<u64>(&mut db2, &["HLEN", "unacked"]), 1, "the unix socket URL's virtual_host selects db 2");
    d.ack().await.unwrap();
    assert_eq!(q::<u64>(&mut db2, &["HLEN", "unacked"]), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_late_ack_never_removes_a_later_delivery() {
    init_logs();
    let Some(redis) = celeriac_tests::redis() else { return };
    let url = redis.url();
    let broker = RedisBroker::connect(fast(&url)).await.unwrap();
    broker.publish("", "late", &task("tasks.x", "late-1", vec![], 0)).await.unwrap();
    let mut first = broker.consumer(&["late".to_owned()], 1);
    let mut stale = next(&mut first).await;
    // Another process decides the message timed out and restores it (kombu's restore_by_tag)...
    let sweeper = RedisBroker::connect(fast(&url)).await.unwrap();
    assert_eq!(sweeper.restore_by_tag(stale.delivery_tag(), false).await.unwrap(), RestoreOutcome::Restored);
    // ...and a second consumer holds it now, under the same delivery tag.
    let mut second = broker.consumer(&["late".to_owned()], 1);
    let mut fresh = next(&mut second).await;
    assert_eq!(fresh.delivery_tag(), stale.delivery_tag());
    assert!(fresh.redelivered());
    stale.ack().await.unwrap();
    let mut a = admin(&url);
    assert_eq!(q::<u64>(&mut a, &["HLEN", "unacked"]), 1, "the late ack removed the second delivery's record");
    fresh.ack().await.unwrap();
    assert_eq!(q::<u64>(&mut a, &["HLEN", "unacked"]), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn extend_visibility_keeps_the_sweep_away() {
    init_logs();
    let Some(redis) = celeriac_tests::redis() else { return };
    let url = redis.url();
    let broker = RedisBroker::connect(fast(&url)).await.unwrap();
    for id in ["kept", "lapsed"] {
        broker.publish("", "eta", &task("tasks.x", id, vec![], 0)).await.unwrap();
    }
    let mut consumer = broker.consumer(&["eta".to_owned()], 2);
    let mut kept = next(&mut consumer).await;
    let lapsed = next(&mut consumer).await;
    assert_eq!((task_id(&kept).as_str(), task_id(&lapsed).as_str()), ("kept", "lapsed"));
    // The subject is time passing: both deliveries become older than the sweeper's timeout.
    tokio::time::sleep(Duration::from_millis(600)).await;
    kept.extend_visibility().await.unwrap();
    let mut sweeper_options = fast(&url);
    sweeper_options.visibility_timeout = Duration::from_millis(500);
    let sweeper = RedisBroker::connect(sweeper_options).await.unwrap();
    assert_eq!(sweeper.restore_visible().await.unwrap(), 1, "only the unextended message is restored");
    assert_eq!(broker.queue_len("eta").await.unwrap(), 1);
    // Deliveries stay ackable after their consumer closed.
    consumer.close().await;
    kept.ack().await.unwrap();
    let mut a = admin(&url);
    assert_eq!(q::<u64>(&mut a, &["HLEN", "unacked"]), 0);
    drop(lapsed);
}

#[tokio::test(flavor = "multi_thread")]
async fn undecodable_elements_are_reported_and_dead_lettered() {
    init_logs();
    let Some(redis) = celeriac_tests::redis() else { return };
    let url = redis.url();
    let mut options = fast(&url);
    options.deadletter_queue = Some("dead".into());
    let broker = RedisBroker::connect(options).await.unwrap();
    let mut a = admin(&url);
    q::<u64>(&mut a, &["LPUSH", "bad", "not json at all"]);
    broker.publish("", "bad", &task("tasks.x", "good", vec![], 0)).await.unwrap();
    let mut consumer = broker.consumer(&["bad".to_owned()], 5);
    match tokio::time::timeout(WAIT, consumer.next()).await.unwrap().unwrap() {
        Err(BrokerError::Undecodable { queue, raw, dead_lettered, .. }) => {
            assert_eq!((queue.as_str(), raw.as_slice(), dead_lettered), ("bad", &b"not json at all"[..], true));
        }
        other => panic!("expected an undecodable message, got {other:?}"),
    }
    assert_eq!(lrange(&mut a, "dead"), [b"not json at all".to_vec()]);
    let mut d = next(&mut consumer).await;
    assert_eq!(task_id(&d), "good");
    d.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn topic_and_fanout_exchanges_route_like_kombu() {
    init_logs();
    let Some(redis) = celeriac_tests::redis() else { return };
    let url = redis.url();
    let broker = RedisBroker::connect(fast(&url)).await.unwrap();
    broker.declare_exchange("events", ExchangeKind::Topic);
    broker.declare_queue("workers", "events", "worker.#").await.unwrap();
    broker.declare_queue("tasks", "events", "task.*").await.unwrap();
    let mut a = admin(&url);
    let mut members: Vec<String> = q(&mut a, &["SMEMBERS", "_kombu.binding.events"]);
    members.sort();
    assert_eq!(
        members,
        ["task.*\x06\x16^task\\.[^\\.]+$\x06\x16tasks", "worker.#\x06\x16^worker\\..*?$\x06\x16workers"]
    );
    for (rk, id) in [("worker.online", "w1"), ("task.sent", "t1"), ("task.sent.x", "none"), ("worker.a.b", "w2")] {
        broker.publish("events", rk, &task("tasks.x", id, vec![], 0)).await.unwrap();
    }
    assert_eq!(broker.queue_len("workers").await.unwrap(), 2);
    assert_eq!(broker.queue_len("tasks").await.unwrap(), 1);
    broker.delete_queue("tasks").await.unwrap();
    assert_eq!(q::<u64>(&mut a, &["SCARD", "_kombu.binding.events"]), 1);
    assert_eq!(broker.purge("workers").await.unwrap(), 2);

    // A short health check: the subscription must answer its PINGs, not reconnect.
    let mut options = fast(&url);
    options.health_check_interval = Duration::from_millis(100);
    let broker = RedisBroker::connect(options).await.unwrap();
    broker.declare_exchange("celery.pidbox", ExchangeKind::Fanout);
    let mut sub = broker.subscribe("celery.pidbox", "").await.unwrap();
    let mut watcher = admin(&url);
    let pubsub_clients = |c: &mut redis::Connection| -> String {
        let list: String = q(c, &["CLIENT", "LIST", "TYPE", "pubsub"]);
        list.lines().map(|l| l.split(' ').next().unwrap_or("").to_owned()).collect::<Vec<_>>().join(",")
    };
    let before = pubsub_clients(&mut watcher);
    // The subject is time passing: several health checks happen meanwhile.
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(pubsub_clients(&mut watcher), before, "the subscription reconnected instead of answering PINGs");
    broker.publish("celery.pidbox", "", &task("tasks.x", "ping", vec![], 0)).await.unwrap();
    let m = tokio::time::timeout(WAIT, sub.next()).await.unwrap().unwrap().unwrap();
    assert_eq!((m.exchange.as_str(), m.channel.as_str()), ("celery.pidbox", "/0.celery.pidbox"));
    assert_eq!(m.envelope.message.headers.get("id"), Some(&Value::Str("ping".into())));
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_verifies_the_server_and_presents_a_client_certificate() {
    init_logs();
    let Some(python) = celeriac_tests::python_peer() else { return };
    let Some(certs) = celeriac_tests::or_skip("openssl test certificates", TestCertificates::generate()) else {
        return;
    };
    let Some(redis) = celeriac_tests::or_skip("redis-server with TLS", RedisServer::start_tls(&certs)) else {
        return;
    };
    let tls_port = redis.tls_port().unwrap();
    let ca = certs.path("ca.pem");
    let file = |name: &str| certs.path(name);
    let base = format!("rediss://127.0.0.1:{tls_port}/0");
    let client = format!("ssl_certfile={}&ssl_keyfile={}", file("client.pem"), file("client.key"));
    let verified = format!("{base}?ssl_cert_reqs=required&ssl_ca_certs={ca}&{client}");

    // kombu sends over TLS; Rust, verifying the server against the CA, consumes.
    let ids = strs(&py(&python, "send", json!({"url": verified, "tasks": [{"name": "tasks.tls"}]})));
    let broker = RedisBroker::connect(fast(&verified)).await.unwrap();
    assert_eq!(broker.masked_url(), base);
    let mut consumer = broker.consumer(&["celery".to_owned()], 1);
    let mut d = next(&mut consumer).await;
    assert_eq!(task_id(&d), ids[0]);
    d.ack().await.unwrap();

    // Verification is on by default: the system roots do not know our CA.
    let unknown_ca = format!("{base}?{client}");
    assert!(RedisBroker::connect(fast(&unknown_ca)).await.is_err(), "a server signed by an unknown CA was accepted");
    // ssl_cert_reqs=none turns it off.
    let unverified = format!("{base}?ssl_cert_reqs=none&{client}");
    RedisBroker::connect(fast(&unverified)).await.expect("ssl_cert_reqs=none accepts any server certificate");
    // The server requires a client certificate.
    let no_client_cert = format!("{base}?ssl_cert_reqs=required&ssl_ca_certs={ca}");
    assert!(RedisBroker::connect(fast(&no_client_cert)).await.is_err(), "connected without a client certificate");
    // A missing file is reported before connecting.
    let missing = format!("{base}?ssl_ca_certs=/nonexistent/ca.pem");
    assert!(matches!(RedisBroker::connect(fast(&missing)).await, Err(BrokerError::TlsFile { .. })));
}

#[tokio::test(flavor = "multi_thread")]
async fn sentinel_finds_the_master() {
    init_logs();
    let Some(master) = celeriac_tests::redis() else { return };
    let Some(python) = celeriac_tests::python_peer() else { return };
    let sentinel = SentinelServer::start(master.port(), "mymaster").unwrap();
    let port = sentinel.port();
    let url = format!("sentinel://127.0.0.1:{port};sentinel://127.0.0.1:1?master_name=mymaster");
    let broker = RedisBroker::connect(fast(&url)).await.unwrap();
    broker.publish("", "viasentinel", &task("tasks.s", "s1", vec![], 0)).await.unwrap();
    let mut direct = admin(&master.url());
    assert_eq!(q::<u64>(&mut direct, &["LLEN", "viasentinel"]), 1, "the message did not reach the master");
    // kombu reads the same sentinel URL (master_name as a transport option).
    let drained = py_async(
        &python,
        "drain",
        json!({"url": format!("sentinel://127.0.0.1:{port}"), "transport_options": {"master_name": "mymaster"},
               "queues": ["viasentinel"], "count": 1}),
    )
    .await;
    assert_eq!(drained[0]["id"], "s1");
}

/// Rough throughput figures: `cargo test --release -p celeriac-tests --test redis_transport throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement, not a check"]
async fn throughput() {
    let Some(redis) = celeriac_tests::redis() else { return };
    let broker = RedisBroker::connect(fast(&redis.url())).await.unwrap();
    let n = 20_000;
    let message = task("tasks.x", "t", vec![Value::Int(1)], 0);
    let start = Instant::now();
    let mut publishes = Vec::new();
    for _ in 0..n {
        let (b, m) = (broker.clone(), message.clone());
        publishes.push(tokio::spawn(async move { b.publish("", "bench", &m).await }));
    }
    for p in publishes {
        p.await.unwrap().unwrap();
    }
    let published = start.elapsed();
    let start = Instant::now();
    let mut consumer = broker.consumer(&["bench".to_owned()], 200);
    let mut acks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let mut d = next(&mut consumer).await;
        acks.spawn(async move { d.ack().await });
    }
    while let Some(r) = acks.join_next().await {
        r.unwrap().unwrap();
    }
    let consumed = start.elapsed();
    eprintln!(
        "published {n} in {published:?} ({:.0}/s); consumed and acked in {consumed:?} ({:.0}/s)",
        n as f64 / published.as_secs_f64(),
        n as f64 / consumed.as_secs_f64()
    );
    assert_eq!(broker.unacked_len().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn queues_and_prefetch_change_at_runtime() {
    init_logs();
    let Some(redis) = celeriac_tests::redis() else { return };
    let url = redis.url();
    let broker = RedisBroker::connect(fast(&url)).await.unwrap();
    for i in 0..4 {
        broker.publish("", "one", &task("tasks.x", &format!("one-{i}"), vec![], 0)).await.unwrap();
    }
    let mut consumer = broker.consumer(&["one".to_owned()], 1);
    let mut first = next(&mut consumer).await;
    assert_eq!(task_id(&first), "one-0");
    assert_eq!(broker.queue_len("one").await.unwrap(), 3, "prefetch 1 holds one message");
    consumer.set_prefetch(3);
    let second = next(&mut consumer).await;
    let third = next(&mut consumer).await;
    assert_eq!((task_id(&second).as_str(), task_id(&third).as_str()), ("one-1", "one-2"));
    assert_eq!(consumer.in_flight(), 3);
    assert_eq!(broker.queue_len("one").await.unwrap(), 1);

    // add_consumer: a queue joins, and its messages arrive.
    assert!(consumer.add_queue("two"));
    assert!(!consumer.add_queue("two"));
    first.ack().await.unwrap();
    broker.publish("", "two", &task("tasks.x", "two-0", vec![], 0)).await.unwrap();
    let mut seen = BTreeSet::new();
    let mut held = vec![second, third];
    while seen.len() < 2 {
        let d = next(&mut consumer).await;
        seen.insert(task_id(&d));
        held.push(d);
        let mut oldest = held.remove(0);
        oldest.ack().await.unwrap();
    }
    assert_eq!(seen, ["one-3".to_owned(), "two-0".to_owned()].into());

    // cancel_consumer: its messages stay in Redis.
    assert!(consumer.cancel_queue("one"));
    assert_eq!(consumer.queues(), ["two"]);
    broker.publish("", "one", &task("tasks.x", "one-late", vec![], 0)).await.unwrap();
    broker.publish("", "two", &task("tasks.x", "two-1", vec![], 0)).await.unwrap();
    for mut d in held.drain(..) {
        d.ack().await.unwrap();
    }
    let d = next(&mut consumer).await;
    assert_eq!(task_id(&d), "two-1");
    assert_eq!(broker.queue_len("one").await.unwrap(), 1, "a cancelled queue is not consumed");
    drop(d);
}

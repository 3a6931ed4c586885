//! The AMQP transport against RabbitMQ and Python Celery/kombu 5.7 on the run's
//! shared node (`CELERIAC_TEST_AMQP_URL`): declarations that neither side
//! refuses (PRECONDITION_FAILED), messages that read the same both ways,
//! prefetch, ack/reject/requeue, the control fanout, quorum queues and native
//! delayed delivery in both directions, a Python worker running what
//! celeriac sends, a lost connection, and `amqps://` with the certificate
//! verified. Every test works in queues of its own (uuid names), so
//! tests share the node safely.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed assertion

use std::process::{Command, Stdio};
use std::time::Duration;

use celeriac_broker::amqp::{AmqpOptions, QueueSpec};
use celeriac_broker::{AmqpBroker, Broker, ExchangeKind, Producer, ProducerConfig, SendOptions};
use celeriac_protocol::{Map, Value};

const WAIT: Duration = Duration::from_secs(30);

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Runs tests/python/amqp_peer.py; its stdout lines.
fn peer(url: &str, extra: &[&str], stdin: &str) -> Vec<String> {
    use std::io::Write;
    let python = celeriac_tests::python().unwrap();
    let mut child = Command::new(python)
        .arg(celeriac_tests::repo_root().join("tests/python/amqp_peer.py"))
        .args(["--broker", url])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "amqp_peer.py failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    text.lines().map(str::to_owned).collect()
}

fn broker(options: AmqpOptions) -> Broker {
    Broker::new(AmqpBroker::new(options).unwrap())
}

async fn next(consumer: &mut celeriac_broker::Consumer) -> celeriac_broker::Delivery {
    loop {
        let mut d = tokio::time::timeout(WAIT, consumer.next()).await.expect("a delivery in time").unwrap().unwrap();
        if d.message().headers.get("id") != Some(&Value::Str("probe".into())) {
            return d;
        }
        d.ack().await.unwrap(); // a late readiness probe
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declarations_match_kombus_both_ways() {
    let (Some(url), Some(_)) = (celeriac_tests::amqp(), celeriac_tests::python_peer()) else { return };
    let (plain, prio, quorum, topic) = (unique("plain"), unique("prio"), unique("quorum"), unique("topic"));
    let mut options = AmqpOptions::from_url(&url).unwrap();
    options.queues.insert(
        prio.clone(),
        QueueSpec { arguments: vec![("x-max-priority".into(), Value::Int(10))], ..QueueSpec::default() },
    );
    options.queues.insert(
        quorum.clone(),
        QueueSpec { arguments: vec![("x-queue-type".into(), "quorum".into())], ..QueueSpec::default() },
    );
    options.queues.insert(
        topic.clone(),
        QueueSpec { exchange_type: Some(ExchangeKind::Topic), routing_key: Some("t.#".into()), ..QueueSpec::default() },
    );
    let b = broker(options);
    // celeriac first, then kombu: kombu's declarations are accepted as equivalent.
    b.declare_queue(&plain, &plain, &plain).await.unwrap();
    b.declare_queue(&prio, &prio, &prio).await.unwrap();
    b.declare_queue(&quorum, &quorum, &quorum).await.unwrap();
    b.declare_queue(&topic, &topic, "t.#").await.unwrap();
    let spec = serde_json::json!([
        {"name": plain},
        {"name": prio, "queue_arguments": {"x-max-priority": 10}},
        {"name": quorum, "queue_arguments": {"x-queue-type": "quorum"}},
        {"name": topic, "exchange_type": "topic", "routing_key": "t.#"},
        // Without the argument kombu is refused, as against a Python-declared queue.
        {"name": prio},
    ]);
    let lines = peer(&url, &["declare"], &spec.to_string());
    assert_eq!(lines[..4], ["ok", "ok", "ok", "ok"], "{lines:?}");
    assert!(lines[4].contains("PRECONDITION_FAILED") && lines[4].contains("x-max-priority"), "{lines:?}");

    // kombu first, then celeriac: same.
    let (plain2, prio2) = (unique("plain"), unique("prio"));
    let spec = serde_json::json!([{"name": plain2}, {"name": prio2, "queue_arguments": {"x-max-priority": 10}}]);
    assert_eq!(peer(&url, &["declare"], &spec.to_string()), ["ok", "ok"]);
    b.declare_queue(&plain2, &plain2, &plain2).await.unwrap();
    // A queue declared with other arguments is a configuration error, not a lost connection.
    let err = b.declare_queue(&prio2, &prio2, &prio2).await.unwrap_err();
    assert!(err.to_string().contains("406") && err.to_string().contains("x-max-priority"), "{err}");
    // The broker handle still works after the refusal (the declare channel was closed, not the connection).
    b.declare_queue(&plain2, &plain2, &plain2).await.unwrap();
    for q in [plain, prio, quorum, topic, plain2, prio2] {
        b.delete_queue(&q).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_ack_reject_and_requeue() {
    let Some(url) = celeriac_tests::amqp() else { return };
    let q = unique("settle");
    let b = broker(AmqpOptions::from_url(&url).unwrap());
    b.declare_queue(&q, &q, &q).await.unwrap();
    let producer = Producer::new(b.clone(), ProducerConfig::default());
    let mut ids = Vec::new();
    for i in 0..3 {
        let options = SendOptions { queue: Some(q.clone()), ..SendOptions::default() };
        ids.push(
            producer.send_task("tasks.add", vec![Value::Int(i), Value::Int(1)], Map::new(), options).await.unwrap(),
        );
    }
    assert_eq!(b.queue_len(&q).await.unwrap(), 3, "confirmed publishes are in the queue");

    let mut consumer = b.consumer(std::slice::from_ref(&q), 2);
    let mut first = next(&mut consumer).await;
    let mut second = next(&mut consumer).await;
    assert_eq!(first.message().headers.get("id"), Some(&Value::Str(ids[0].clone())));
    assert_eq!(first.queue, q);
    assert!(!first.redelivered());
    // The broker holds the third back: prefetch 2, two unacked.
    assert!(tokio::time::timeout(Duration::from_millis(500), consumer.next()).await.is_err());
    assert_eq!(consumer.in_flight(), 2);

    first.ack().await.unwrap();
    let mut third = next(&mut consumer).await;
    assert_eq!(third.message().headers.get("id"), Some(&Value::Str(ids[2].clone())));
    second.requeue().await.unwrap();
    let mut again = next(&mut consumer).await;
    assert_eq!(again.message().headers.get("id"), Some(&Value::Str(ids[1].clone())));
    assert!(again.redelivered(), "a requeued message comes back redelivered");
    again.reject().await.unwrap();
    // Raising the prefetch reaches the broker (basic.qos) without a new consumer.
    consumer.set_prefetch(10);
    third.ack().await.unwrap();
    assert_eq!(consumer.restore_unacked().await.unwrap(), 0);
    assert_eq!(b.queue_len(&q).await.unwrap(), 0, "acked and rejected messages are gone");
    b.delete_queue(&q).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_messages_read_as_python_sends_them_and_back() {
    let (Some(url), Some(_)) = (celeriac_tests::amqp(), celeriac_tests::python_peer()) else { return };
    let q = unique("fromprod");
    let b = broker(AmqpOptions::from_url(&url).unwrap());
    b.declare_queue(&q, &q, &q).await.unwrap();
    let calls = serde_json::json!([{"name": "tasks.add", "args": [2, 2],
        "options": {"queue": q, "priority": 3, "countdown": 5, "expires": 60}}]);
    let id = peer(&url, &["send"], &calls.to_string()).remove(0);
    let mut consumer = b.consumer(std::slice::from_ref(&q), 1);
    let mut d = next(&mut consumer).await;
    let m = d.message().clone();
    assert_eq!(m.headers.get("id"), Some(&Value::Str(id.clone())));
    assert_eq!(m.headers.get("task"), Some(&Value::Str("tasks.add".into())));
    assert!(matches!(m.headers.get("eta"), Some(Value::Str(eta)) if eta.ends_with("+00:00")));
    assert_eq!(m.headers.get("timelimit"), Some(&Value::List(vec![Value::Null, Value::Null])));
    assert_eq!(m.properties.get("correlation_id"), Some(&Value::Str(id)));
    assert_eq!(m.properties.get("delivery_mode"), Some(&Value::Int(2)));
    assert!(matches!(m.properties.get("expiration"), Some(Value::Str(ms)) if ms.parse::<u64>().unwrap() <= 60_000));
    assert_eq!(m.priority, 3);
    assert_eq!((m.content_type.as_str(), m.content_encoding.as_str()), ("application/json", "utf-8"));
    assert_eq!(d.envelope.delivery_info.exchange, "");
    assert_eq!(d.envelope.delivery_info.routing_key, q);
    let body: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
    assert_eq!(body[0], serde_json::json!([2, 2]));
    d.ack().await.unwrap();

    // And what celeriac publishes, Python reads the same way (basic_get).
    let producer = Producer::new(b.clone(), ProducerConfig::default());
    let options = SendOptions { queue: Some(q.clone()), priority: Some(3), ..SendOptions::default() };
    let sent = producer.send_task("tasks.add", vec![Value::Int(2), Value::Int(2)], Map::new(), options).await.unwrap();
    consumer.close().await;
    let got: serde_json::Value = serde_json::from_str(&peer(&url, &["get", &q], "")[0]).unwrap();
    assert_eq!(got["headers"]["id"], serde_json::json!(sent));
    assert_eq!(got["headers"]["timelimit"], serde_json::json!([null, null]));
    assert_eq!(got["headers"]["retries"], serde_json::json!(0));
    assert_eq!(got["properties"]["priority"], serde_json::json!(3));
    assert_eq!(got["properties"]["delivery_mode"], serde_json::json!(2));
    assert_eq!(got["properties"]["correlation_id"], serde_json::json!(sent));
    assert_eq!(got["properties"]["content_type"], serde_json::json!("application/json"));
    assert_eq!(got["delivery_info"]["routing_key"], serde_json::json!(q));
    b.delete_queue(&q).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_broadcasts_reach_a_fanout_subscription() {
    let (Some(url), Some(_)) = (celeriac_tests::amqp(), celeriac_tests::python_peer()) else { return };
    let b = broker(AmqpOptions::from_url(&url).unwrap());
    b.declare_exchange("celery.pidbox", ExchangeKind::Fanout);
    let mut sub = b.subscribe("celery.pidbox", "").await.unwrap();
    let python = celeriac_tests::python().unwrap();
    let status = Command::new(python)
        .arg(celeriac_tests::repo_root().join("tests/python/control_call.py"))
        .args(["--broker", &url, "--method", "ping", "--timeout", "0.5"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let got = tokio::time::timeout(WAIT, sub.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(got.exchange, "celery.pidbox");
    let body: serde_json::Value = serde_json::from_slice(&got.envelope.message.body).unwrap();
    assert_eq!(body["method"], serde_json::json!("ping"));
    assert_eq!(body["reply_to"]["exchange"], serde_json::json!("reply.celery.pidbox"));
    assert_eq!(got.envelope.message.properties.get("delivery_mode"), Some(&Value::Int(2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queues_delay_etas_natively_both_ways() {
    let (Some(url), Some(_)) = (celeriac_tests::amqp(), celeriac_tests::python_peer()) else { return };
    let q = unique("qtopic");
    let mut options = AmqpOptions::from_url(&url).unwrap();
    options.queues.insert(
        q.clone(),
        QueueSpec {
            exchange_type: Some(ExchangeKind::Topic),
            arguments: vec![("x-queue-type".into(), "quorum".into())],
            ..QueueSpec::default()
        },
    );
    let b = broker(options);
    b.declare_queue(&q, &q, &q).await.unwrap();
    // The consumer sets up the delayed-delivery topology and binds the queue:
    // it is ready once a probe through celery_delayed_delivery reaches it.
    let mut consumer = b.consumer(std::slice::from_ref(&q), 4);
    let mut probe = celeriac_protocol::Message::with_body(
        Map::new(),
        Map::new(),
        0,
        celeriac_protocol::codec::ContentType::Json,
        None,
        &Value::Null,
    )
    .unwrap();
    probe.headers.insert("id".into(), "probe".into());
    tokio::time::timeout(WAIT, async {
        loop {
            b.publish("celery_delayed_delivery", &format!("probe.{q}"), &probe).await.unwrap();
            if let Ok(Some(Ok(mut d))) = tokio::time::timeout(Duration::from_millis(300), consumer.next()).await {
                d.ack().await.unwrap();
                break;
            }
        }
    })
    .await
    .unwrap();
    // Python with the same quorum queue publishes a countdown through celery_delayed_27.
    let queues =
        serde_json::json!([{"name": q, "exchange_type": "topic", "queue_arguments": {"x-queue-type": "quorum"}}]);
    let calls = serde_json::json!([{"name": "tasks.add", "args": [1, 1], "options": {"queue": q, "countdown": 2}}]);
    let started = std::time::Instant::now();
    let id = peer(&url, &["--queues", &queues.to_string(), "send"], &calls.to_string()).remove(0);
    let mut d = next(&mut consumer).await;
    assert!(started.elapsed() >= Duration::from_secs(1), "held back by the delay levels");
    assert_eq!(d.message().headers.get("id"), Some(&Value::Str(id)));
    // Dead-lettered last by the lowest level whose bit is 1 (level 1 for 2 s).
    assert_eq!(d.envelope.delivery_info.exchange, "celery_delayed_0");
    assert!(
        d.envelope.delivery_info.routing_key.ends_with(&format!(".1.0.{q}")),
        "{}",
        d.envelope.delivery_info.routing_key
    );
    assert!(d.message().headers.contains_key("x-death"), "RabbitMQ's dead-letter headers are read");
    d.ack().await.unwrap();

    // celeriac's producer does the same for an ETA to that queue's topic exchange.
    let producer = Producer::new(b.clone(), ProducerConfig::default());
    let options = SendOptions {
        exchange: Some(q.clone()),
        routing_key: Some(q.clone()),
        countdown: Some(Duration::from_secs(2)),
        ..SendOptions::default()
    };
    let sent = producer.send_task("tasks.add", vec![Value::Int(1), Value::Int(2)], Map::new(), options).await.unwrap();
    let mut d = next(&mut consumer).await;
    assert_eq!(d.message().headers.get("id"), Some(&Value::Str(sent)));
    assert!(d.envelope.delivery_info.exchange.starts_with("celery_delayed_"), "{:?}", d.envelope.delivery_info);
    d.ack().await.unwrap();
    consumer.close().await;
    b.delete_queue(&q).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_worker_runs_what_celeriac_sends_on_amqp() {
    let (Some(url), Some(redis), Some(python)) =
        (celeriac_tests::amqp(), celeriac_tests::redis(), celeriac_tests::python_peer())
    else {
        return;
    };
    let q = unique("pyworker");
    let apps = celeriac_tests::repo_root().join("tests/python/apps");
    let worker = celeriac_tests::CeleryWorker::builder(&python, "mixed", &apps)
        .queues(&q)
        .args(&["--pool=solo", "-l", "info", "-n", &format!("{q}@%h"), "--without-gossip", "--without-mingle"])
        .env("CELERIAC_TEST_BROKER", &url)
        .env("CELERIAC_TEST_BACKEND", &redis.url())
        .start()
        .unwrap();
    worker.wait_ready(Duration::from_secs(60)).unwrap();
    let producer = Producer::new(Broker::from_url(&url).unwrap(), ProducerConfig::default());
    let options = SendOptions { queue: Some(q.clone()), ..SendOptions::default() };
    let id = producer.send_task("tasks.add", vec![Value::Int(20), Value::Int(22)], Map::new(), options).await.unwrap();
    let out = Command::new(&python)
        .arg(celeriac_tests::repo_root().join("tests/python/get_results.py"))
        .args(["--backend", &redis.url(), "--timeout", "30", &id])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(line["state"], serde_json::json!("SUCCESS"), "{line}");
    assert_eq!(line["result"], serde_json::json!(42));
    drop(worker);
    producer.broker().delete_queue(&q).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_redelivers_and_old_deliveries_are_not_acked_on_the_new_channel() {
    let Some(url) = celeriac_tests::amqp() else { return };
    let q = unique("reconnect");
    let amqp = AmqpBroker::from_url(&url).unwrap();
    let b = Broker::new(amqp.clone());
    b.declare_queue(&q, &q, &q).await.unwrap();
    let producer = Producer::new(b.clone(), ProducerConfig::default());
    let options = SendOptions { queue: Some(q.clone()), ..SendOptions::default() };
    let id = producer.send_task("tasks.add", vec![Value::Int(1), Value::Int(1)], Map::new(), options).await.unwrap();

    let mut consumer = b.consumer(std::slice::from_ref(&q), 4);
    let mut first = next(&mut consumer).await;
    assert!(!first.redelivered());
    // The connection goes away under the consumer: RabbitMQ requeues the
    // message, the consumer reconnects and gets it again, redelivered.
    amqp.close().await;
    let mut again = next(&mut consumer).await;
    assert_eq!(again.message().headers.get("id"), Some(&Value::Str(id)));
    assert!(again.redelivered());
    // The first delivery's tag means nothing on the new channel: it is refused,
    // and does not ack the redelivered message (which carries tag 1 as well).
    let err = first.ack().await.unwrap_err();
    assert!(matches!(err, celeriac_broker::BrokerError::ChannelGone { .. }), "{err}");
    again.ack().await.unwrap();
    consumer.close().await;
    assert_eq!(b.queue_len(&q).await.unwrap(), 0);
    b.delete_queue(&q).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_verifies_the_brokers_certificate() {
    let Some((url, ca)) = celeriac_tests::amqps() else { return };
    // Trusting the private CA that signed the node's certificate (broker_use_ssl
    // ssl_ca_certs): a verified TLS connection that carries tasks as a plain one.
    let mut options = AmqpOptions::from_url(&url).unwrap();
    assert!(options.endpoints[0].tls);
    options.tls.ca_certs = Some(ca);
    let b = Broker::new(AmqpBroker::new(options).unwrap());
    let q = unique("tls");
    b.declare_queue(&q, &q, &q).await.unwrap();
    let producer = Producer::new(b.clone(), ProducerConfig::default());
    let options = SendOptions { queue: Some(q.clone()), ..SendOptions::default() };
    let id = producer.send_task("tasks.add", vec![Value::Int(2), Value::Int(2)], Map::new(), options).await.unwrap();
    let mut consumer = b.consumer(std::slice::from_ref(&q), 1);
    let mut got = next(&mut consumer).await;
    assert_eq!(got.message().headers.get("id"), Some(&Value::Str(id)));
    got.ack().await.unwrap();
    consumer.close().await;
    b.delete_queue(&q).await.unwrap();

    // Without that CA (the system's roots only) the certificate is refused:
    // verification is never turned off.
    let mut options = AmqpOptions::from_url(&url).unwrap();
    options.max_retries = Some(1);
    options.backoff_max = Duration::from_millis(200);
    let untrusted = AmqpBroker::new(options).unwrap();
    let err = tokio::time::timeout(WAIT, untrusted.connect()).await.expect("a refusal, not a hang").unwrap_err();
    let text = format!("{err} {err:?}").to_lowercase();
    assert!(text.contains("certificate") || text.contains("unknownissuer"), "{text}");
}

/// Acks finishing out of order go out batched (`basic.ack(multiple=true)`)
/// and settle exactly the finished deliveries: after a reconnect only the
/// ones still running (and the requeued one) come back, the rejected one
/// never does, and nothing acked is delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_acks_settle_exactly_the_finished_deliveries() {
    let Some(url) = celeriac_tests::amqp() else { return };
    let q = unique("batch");
    let amqp = AmqpBroker::from_url(&url).unwrap();
    let b = Broker::new(amqp.clone());
    b.declare_queue(&q, &q, &q).await.unwrap();
    let producer = Producer::new(b.clone(), ProducerConfig::default());
    const N: usize = 40;
    let mut ids = Vec::new();
    for i in 0..N {
        let options = SendOptions { queue: Some(q.clone()), ..SendOptions::default() };
        ids.push(producer.send_task("tasks.add", vec![Value::Int(i as i64)], Map::new(), options).await.unwrap());
    }
    let mut consumer = b.consumer(std::slice::from_ref(&q), N);
    let mut got = Vec::new();
    for _ in 0..N {
        got.push(next(&mut consumer).await);
    }
    let id_of = |d: &celeriac_broker::Delivery| match d.message().headers.get("id") {
        Some(Value::Str(s)) => s.clone(),
        other => panic!("no id: {other:?}"),
    };
    assert_eq!(got.iter().map(id_of).collect::<Vec<_>>(), ids, "delivered in order");
    // Still running: two near the end; requeued: one; rejected: one; the rest acked
    // in a shuffled order, all at once.
    let (running, requeued, rejected) = ([ids[36].clone(), ids[37].clone()], ids[20].clone(), ids[30].clone());
    let mut acks = Vec::new();
    let mut kept = Vec::new();
    for mut d in got {
        let id = id_of(&d);
        if running.contains(&id) {
            kept.push(d);
        } else if id == requeued {
            d.requeue().await.unwrap();
        } else if id == rejected {
            d.reject().await.unwrap();
        } else {
            acks.push(d);
        }
    }
    // The requeued one comes straight back (there is room): it runs now too.
    let again = next(&mut consumer).await;
    assert_eq!(id_of(&again), requeued);
    assert!(again.redelivered());
    kept.push(again);
    let mut seed = 7u64;
    for i in (1..acks.len()).rev() {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        acks.swap(i, (seed >> 33) as usize % (i + 1));
    }
    let acked: Vec<String> = acks.iter().map(id_of).collect();
    let results = futures_util::future::join_all(acks.iter_mut().map(|d| d.ack())).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let (count, frames) = amqp.ack_counts();
    assert_eq!(count, acked.len() as u64);
    assert!(frames < count / 4, "{count} acks in {frames} frames: not batched");

    // The connection goes: RabbitMQ requeues what was not settled.
    amqp.close().await;
    let mut back = Vec::new();
    for _ in 0..3 {
        let d = next(&mut consumer).await;
        assert!(d.redelivered());
        back.push(d);
    }
    let mut back_ids: Vec<String> = back.iter().map(id_of).collect();
    back_ids.sort();
    let mut want = vec![running[0].clone(), running[1].clone(), requeued.clone()];
    want.sort();
    assert_eq!(back_ids, want, "exactly the unsettled ones come back");
    for d in &mut back {
        d.ack().await.unwrap();
    }
    // Anything else coming back would be queued ahead of this one.
    let options = SendOptions { queue: Some(q.clone()), ..SendOptions::default() };
    let last = producer.send_task("tasks.add", vec![], Map::new(), options).await.unwrap();
    let mut d = next(&mut consumer).await;
    assert_eq!(id_of(&d), last, "no acked or rejected message was delivered again");
    d.ack().await.unwrap();
    assert!(!acked.contains(&rejected));
    for mut d in kept {
        // Their channel is gone (RabbitMQ redelivered them above): never acked on the new one.
        let err = d.ack().await.unwrap_err();
        assert!(matches!(err, celeriac_broker::BrokerError::ChannelGone { .. }), "{err}");
    }
    consumer.close().await;
    assert_eq!(b.queue_len(&q).await.unwrap(), 0);
    b.delete_queue(&q).await.unwrap();
}

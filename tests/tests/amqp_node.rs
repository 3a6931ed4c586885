//! The AMQP transport against a RabbitMQ node of this file's own (started
//! once, its tests one at a time), for what would disturb the run's shared
//! node:
//!
//! - `amqps://` whose TLS listener wants a client certificate
//!   (`verify_peer`, `fail_if_no_peer_cert`): the right CA and certificate
//!   connect; no certificate, a wrong CA, a certificate of another CA and an
//!   encrypted key each fail with an error naming the setting to change;
//!   `ssl_cert_reqs=CERT_NONE` in the URL connects without the CA;
//! - a memory alarm (`set_vm_memory_high_watermark 0`) blocks the publishing
//!   connection: the block and the unblock are logged, the publishes wait
//!   and then arrive, each task once;
//! - heartbeats: the negotiated value is `broker_heartbeat`'s, and a frozen
//!   node (SIGSTOP) is noticed after two silent heartbeat intervals; the
//!   consumer reconnects when the node runs again.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed assertion

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use celeriac_broker::amqp::AmqpOptions;
use celeriac_broker::{AmqpBroker, Broker, Delivery, Producer, ProducerConfig, SendOptions};
use celeriac_protocol::{Map, Value};
use celeriac_tests::{NodeOptions, RabbitNode, TestCertificates};

const WAIT: Duration = Duration::from_secs(30);

/// The file's node, with client certificates required on its TLS listener.
fn node() -> Option<&'static RabbitNode> {
    static NODE: OnceLock<Result<RabbitNode, String>> = OnceLock::new();
    let started =
        NODE.get_or_init(|| RabbitNode::start_with(NodeOptions { verify_clients: true }).map_err(|e| e.to_string()));
    celeriac_tests::or_skip(
        "RabbitMQ",
        started.as_ref().map_err(|e| celeriac_tests::HarnessError::NotReady {
            what: "a RabbitMQ node".into(),
            seconds: 0,
            log: e.clone(),
        }),
    )
}

/// One test at a time on the node (an alarm or a pause would stall the others).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Every log line of the process, for the tests that look for one.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer: Arc<Mutex<Vec<u8>>> = Arc::default();
        let writer = Capture(buffer.clone());
        use tracing_subscriber::util::SubscriberInitExt as _;
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish()
            .try_init();
        buffer
    })
}

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stderr().write_all(buf)?;
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Waits until the logs hold `text` (after `from` bytes).
async fn logged(text: &str, from: usize) {
    let start = Instant::now();
    loop {
        if String::from_utf8_lossy(&logs().lock().unwrap()[from..]).contains(text) {
            return;
        }
        assert!(start.elapsed() < WAIT, "no log line with {text:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

fn id_of(d: &Delivery) -> String {
    match d.message().headers.get("id") {
        Some(Value::Str(s)) => s.clone(),
        other => panic!("no id: {other:?}"),
    }
}

async fn next(consumer: &mut celeriac_broker::Consumer) -> Delivery {
    tokio::time::timeout(WAIT, consumer.next()).await.expect("a delivery in time").unwrap().unwrap()
}

async fn send(producer: &Producer, queue: &str) -> String {
    let options = SendOptions { queue: Some(queue.to_owned()), ..SendOptions::default() };
    producer.send_task("tasks.add", vec![Value::Int(1)], Map::new(), options).await.unwrap()
}

/// A task through `options`' broker and back: the connection works.
async fn round_trip(options: AmqpOptions) {
    let b = Broker::new(AmqpBroker::new(options).unwrap());
    let q = unique("tls");
    b.declare_queue(&q, &q, &q).await.unwrap();
    let producer = Producer::new(b.clone(), ProducerConfig::default());
    let id = send(&producer, &q).await;
    let mut consumer = b.consumer(std::slice::from_ref(&q), 1);
    let mut got = next(&mut consumer).await;
    assert_eq!(id_of(&got), id);
    got.ack().await.unwrap();
    consumer.close().await;
    b.delete_queue(&q).await.unwrap();
}

/// The error of connecting with `options` (at construction or first use).
async fn refusal(mut options: AmqpOptions) -> String {
    options.max_retries = Some(1);
    options.backoff_max = Duration::from_millis(100);
    let broker = match AmqpBroker::new(options) {
        Ok(b) => b,
        Err(e) => return e.to_string(),
    };
    let err = tokio::time::timeout(WAIT, broker.connect()).await.expect("a refusal, not a hang").unwrap_err();
    err.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_with_a_client_certificate() {
    let Some(node) = node() else { return };
    let _serial = SERIAL.lock().await;
    let certs = node.certificates();
    let url = node.amqps_url();
    let with = |ca: &str, client: Option<(&TestCertificates, &str, &str)>| {
        let mut o = AmqpOptions::from_url(&url).unwrap();
        o.tls.ca_certs = Some(certs.file(ca));
        if let Some((set, cert, key)) = client {
            o.tls.certfile = Some(set.file(cert));
            o.tls.keyfile = Some(set.file(key));
        }
        o
    };
    // Verified both ways: the node's CA, a client certificate it signed.
    round_trip(with("ca.pem", Some((certs, "client.pem", "client.key")))).await;

    // Python's load_cert_chain(certfile) also finds the key inside certfile.
    let both = certs.dir().join("client-and-key.pem");
    let text = std::fs::read_to_string(certs.file("client.pem")).unwrap()
        + &std::fs::read_to_string(certs.file("client.key")).unwrap();
    std::fs::write(&both, text).unwrap();
    let mut o = with("ca.pem", None);
    o.tls.certfile = Some(both);
    round_trip(o).await;

    // No client certificate: the node refuses, and the error says what to set.
    let err = refusal(with("ca.pem", None)).await;
    assert!(err.contains("certfile"), "{err}");

    // A CA that did not sign the node's certificate.
    let other = TestCertificates::generate().unwrap();
    let mut o = with("ca.pem", Some((certs, "client.pem", "client.key")));
    o.tls.ca_certs = Some(other.file("ca.pem"));
    let err = refusal(o).await;
    assert!(err.contains("not trusted"), "{err}");
    assert!(err.contains("ca_certs"), "{err}");

    // A client certificate the node's CA did not sign.
    let err = refusal(with("ca.pem", Some((&other, "client.pem", "client.key")))).await;
    assert!(err.contains("certfile"), "{err}");

    // An encrypted key: refused before connecting, with the command that helps.
    let locked = other.dir().join("locked.key");
    let out = std::process::Command::new("openssl")
        .args(["pkey", "-aes256", "-passout", "pass:secret", "-in"])
        .arg(certs.file("client.key"))
        .arg("-out")
        .arg(&locked)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut o = with("ca.pem", Some((certs, "client.pem", "client.key")));
    o.tls.keyfile = Some(locked);
    let err = refusal(o).await;
    assert!(err.contains("encrypted") && err.contains("openssl pkey"), "{err}");

    // ssl_cert_reqs=CERT_NONE in the URL (as kombu takes it): no CA needed.
    let insecure = format!(
        "{url}?ssl_cert_reqs=CERT_NONE&ssl_certfile={}&ssl_keyfile={}",
        certs.path("client.pem"),
        certs.path("client.key")
    );
    round_trip(AmqpOptions::from_url(&insecure).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_alarm_blocks_publishing_and_nothing_is_lost_or_doubled() {
    let Some(node) = node() else { return };
    let _serial = SERIAL.lock().await;
    let from = logs().lock().unwrap().len();
    let url = node.url();
    let q = unique("blocked");
    // The worker's side: a consuming connection of its own.
    let consuming = Broker::new(AmqpBroker::from_url(&url).unwrap());
    consuming.declare_queue(&q, &q, &q).await.unwrap();
    let mut consumer = consuming.consumer(std::slice::from_ref(&q), 100);
    let producer = Producer::new(Broker::new(AmqpBroker::from_url(&url).unwrap()), ProducerConfig::default());
    let mut sent = vec![send(&producer, &q).await];

    node.ctl(&["set_vm_memory_high_watermark", "0"]).unwrap();
    let blocked_publishes = {
        let (producer, q) = (producer.clone(), q.clone());
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..10 {
                ids.push(send(&producer, &q).await);
            }
            ids
        })
    };
    logged("Connection to broker blocked", from).await;
    // Blocked: nothing of those got through (the consumer's connection,
    // which does not publish, still answers).
    assert!(!blocked_publishes.is_finished());
    assert_eq!(consuming.queue_len(&q).await.unwrap(), 0);
    let first = next(&mut consumer).await;
    let mut got = vec![id_of(&first)];
    let mut held = vec![first];

    node.ctl(&["set_vm_memory_high_watermark", "0.4"]).unwrap();
    sent.extend(tokio::time::timeout(WAIT, blocked_publishes).await.expect("publishes resume").unwrap());
    logged("Connection to broker unblocked", from).await;
    while got.len() < sent.len() {
        let d = next(&mut consumer).await;
        got.push(id_of(&d));
        held.push(d);
    }
    for d in &mut held {
        d.ack().await.unwrap();
    }
    // A duplicate would be queued ahead of this one.
    let last = send(&producer, &q).await;
    let mut d = next(&mut consumer).await;
    assert_eq!(id_of(&d), last, "a task came twice");
    d.ack().await.unwrap();
    assert_eq!(got, sent, "every task once, in order");
    consumer.close().await;
    consuming.delete_queue(&q).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_notice_a_frozen_node_and_the_consumer_comes_back() {
    let Some(node) = node() else { return };
    let _serial = SERIAL.lock().await;
    let from = logs().lock().unwrap().len();
    let mut options = AmqpOptions::from_url(&node.url()).unwrap();
    options.heartbeat = 2; // broker_heartbeat
    let amqp = AmqpBroker::new(options).unwrap();
    let b = Broker::new(amqp.clone());
    let q = unique("heartbeat");
    b.declare_queue(&q, &q, &q).await.unwrap();
    let producer = Producer::new(b.clone(), ProducerConfig::default());
    let mut consumer = b.consumer(std::slice::from_ref(&q), 4);
    let id = send(&producer, &q).await;
    let mut d = next(&mut consumer).await;
    assert_eq!(id_of(&d), id);
    d.ack().await.unwrap();

    // The broker's side of the connection: the heartbeat it agreed to.
    let table = node.ctl(&["list_connections", "-q", "--no-table-headers", "client_properties", "timeout"]).unwrap();
    // Our connections name themselves "celeriac" (client property connection_name).
    let ours: Vec<&str> = table.lines().filter(|l| l.contains("\"celeriac\"")).collect();
    assert!(!ours.is_empty(), "{table}");
    assert!(ours.iter().all(|l| l.split_whitespace().last() == Some("2")), "{table}");

    // Frozen: no frame, no heartbeat. lapin gives up after two intervals of silence.
    node.pause().unwrap();
    let paused = Instant::now();
    let noticed = loop {
        if !amqp.is_connected().await {
            break paused.elapsed();
        }
        if paused.elapsed() > WAIT {
            node.resume().unwrap();
            panic!("a frozen node went unnoticed for {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    node.resume().unwrap();
    assert!(noticed >= Duration::from_secs(2), "noticed after {noticed:?}: before a heartbeat was even due");
    assert!(noticed < Duration::from_secs(12), "noticed only after {noticed:?}");
    logged("consumer: Connection to broker lost", from).await;

    // Back: the consumer consumes again on a new connection.
    let id = send(&producer, &q).await;
    let mut d = next(&mut consumer).await;
    assert_eq!(id_of(&d), id);
    d.ack().await.unwrap();
    assert!(amqp.reconnects() >= 1);
    consumer.close().await;
    b.delete_queue(&q).await.unwrap();
}

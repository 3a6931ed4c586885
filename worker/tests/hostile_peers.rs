//! What a hostile peer on the broker, or a struggling Redis, could do to a
//! worker, and what must happen instead (each test failed before its fix):
//!
//! - a late-ack task whose callback can never be published fails, as in
//!   Celery, instead of holding its prefetch slot for the worker's life;
//! - a callback bigger than `worker_max_message_size` fails the task
//!   before anything is sent;
//! - a result-backend blip while a callback chord's size is written is
//!   retried, resuming where it stopped (no header part sent twice);
//! - a result backend answering `LOADING` (a Redis restarted with
//!   persistence) is waited for: the late-ack message is not acked away;
//! - a message that cannot even be dead-lettered is refused once and left
//!   for the visibility timeout, not spun through the queue;
//! - closing the task-event buffer during a partition is bounded;
//! - a huge list element is moved to the dead-letter list unread, instead
//!   of being parsed inside Redis.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed assertion
#![recursion_limit = "256"]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use celeriac_broker::{Broker, BrokerError, MemoryBroker, Producer, ProducerConfig, RedisOptions};
use celeriac_protocol::result::{ResultMeta, State};
use celeriac_protocol::{ContentType, Map, Signature, TaskMessage, Value};
use celeriac_worker::metrics::Metrics;
use celeriac_worker::{Args, Registry, ResultStore, StoreError, Task, TaskError, Worker, WorkerConfig};
use futures_util::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

fn init_log() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("celeriac_worker=info")),
        )
        .with_test_writer()
        .try_init();
}

async fn add(Args((a, b)): Args<(i64, i64)>) -> Result<i64, TaskError> {
    Ok(a + b)
}

/// Final results, as they are stored.
struct Results(mpsc::UnboundedSender<ResultMeta>);

impl ResultStore for Results {
    fn store(&self, meta: Arc<ResultMeta>) -> BoxFuture<'static, Result<(), StoreError>> {
        if meta.status.is_ready() {
            let _ = self.0.send(Arc::unwrap_or_clone(meta));
        }
        Box::pin(async { Ok(()) })
    }
}

fn start(
    broker: Broker,
    results: Option<Arc<dyn ResultStore>>,
    config: WorkerConfig,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    start_with_metrics(broker, results, config, None)
}

fn start_with_metrics(
    broker: Broker,
    results: Option<Arc<dyn ResultStore>>,
    config: WorkerConfig,
    metrics: Option<Arc<Metrics>>,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let producer = Producer::new(broker.clone(), ProducerConfig::default());
    let registry = Registry::new().with(Task::new("tasks.add", add));
    let config = WorkerConfig { shutdown_timeout: Duration::from_secs(2), ..config };
    let mut worker = Worker::new(registry, broker, producer, results, config);
    if let Some(metrics) = metrics {
        worker = worker.with_metrics(metrics);
    }
    let stop = CancellationToken::new();
    let token = stop.clone();
    (stop, tokio::spawn(async move { worker.run(token).await.unwrap() }))
}

fn message(task: &TaskMessage, content_type: ContentType) -> celeriac_protocol::Message {
    task.to_message(task.default_properties(None, None), 0, content_type, None).unwrap()
}

fn add_task(id: &str) -> TaskMessage {
    let mut t = TaskMessage::new("tasks.add", id.to_owned());
    t.args = vec![1.into(), 2.into()];
    t
}

fn refused(metrics: &Metrics, reason: &str) -> u64 {
    metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("celeriac_messages_refused_total") && l.contains(&format!("reason=\"{reason}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_that_can_never_be_sent_fails_the_task_instead_of_holding_its_slot() {
    init_log();
    let memory = MemoryBroker::default();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let config = WorkerConfig { acks_late: true, concurrency: 2, prefetch_multiplier: 1, ..WorkerConfig::default() };
    let (stop, run) = start(Broker::Memory(memory.clone()), Some(Arc::new(Results(tx))), config);
    for i in 0..2 {
        // A link to the queue "": no route, and never will be.
        let mut t = add_task(&format!("hostile-{i}"));
        let mut link = Signature::new("tasks.add");
        link.options.insert("queue".into(), Value::Str(String::new()));
        link.immutable = true;
        t.embed.callbacks = Some(vec![link]);
        memory.publish("", "celery", &message(&t, ContentType::Json)).unwrap();
    }
    for _ in 0..2 {
        let meta = tokio::time::timeout(WAIT, rx.recv()).await.unwrap().unwrap();
        let exc = meta.exception().unwrap().unwrap();
        assert_eq!((meta.status, exc.exc_type.as_str()), (State::Failure, "OperationalError"), "as Celery's tracer");
    }
    // Both prefetch slots are free: an ordinary task runs.
    memory.publish("", "celery", &message(&add_task("ordinary"), ContentType::Json)).unwrap();
    let meta = tokio::time::timeout(WAIT, rx.recv()).await.expect("the ordinary task ran").unwrap();
    assert_eq!((meta.task_id.as_str(), meta.result), ("ordinary", Value::Int(3)));
    stop.cancel();
    run.await.unwrap();
    assert_eq!((memory.queue_len("celery"), memory.unacked_len()), (0, 0));
}

/// A link whose message would be bigger than `worker_max_message_size`
/// (the task's large result is prepended to its arguments) is refused before
/// anything is sent: every worker would refuse the message. The task fails
/// with the reason and the late-ack message is settled. (A canvas whose plan
/// would grow past the planning budget, such as chords nested in chord
/// bodies, is refused the same way; see the client's unit tests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_too_large_to_send_fails_the_task_before_sending_anything() {
    init_log();
    async fn big() -> Result<String, TaskError> {
        Ok("x".repeat(300 * 1024))
    }
    let memory = MemoryBroker::default();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let broker = Broker::Memory(memory.clone());
    let producer = Producer::new(broker.clone(), ProducerConfig::default());
    let registry = Registry::new().with(Task::new("tasks.add", add)).with(Task::new("tasks.big", big));
    let config = WorkerConfig {
        acks_late: true,
        max_message_size: 256 * 1024,
        shutdown_timeout: Duration::from_secs(2),
        ..WorkerConfig::default()
    };
    let results: Arc<dyn ResultStore> = Arc::new(Results(tx));
    let worker = Worker::new(registry, broker, producer, Some(results), config);
    let stop = CancellationToken::new();
    let token = stop.clone();
    let run = tokio::spawn(async move { worker.run(token).await.unwrap() });
    let mut t = TaskMessage::new("tasks.big", "too-large".to_owned());
    t.embed.callbacks = Some(vec![Signature::new("tasks.add")]);
    memory.publish("", "celery", &message(&t, ContentType::Json)).unwrap();
    let meta = tokio::time::timeout(WAIT, rx.recv()).await.unwrap().unwrap();
    let exc = meta.exception().unwrap().unwrap();
    assert_eq!((meta.status, exc.exc_type.as_str()), (State::Failure, "OperationalError"));
    let why = exc.exc_message.first().and_then(Value::as_str).unwrap_or_default().to_owned();
    assert!(why.contains("worker_max_message_size"), "{why}");
    stop.cancel();
    run.await.unwrap();
    assert_eq!((memory.queue_len("celery"), memory.unacked_len()), (0, 0), "nothing sent, the message settled");
}

/// Final results, and a result backend that is unreachable the first time a
/// chord's size is written.
struct ChordBlip {
    results: mpsc::UnboundedSender<ResultMeta>,
    sizes: Arc<std::sync::Mutex<Vec<(String, u64)>>>,
}

impl ResultStore for ChordBlip {
    fn store(&self, meta: Arc<ResultMeta>) -> BoxFuture<'static, Result<(), StoreError>> {
        if meta.status.is_ready() {
            let _ = self.results.send(Arc::unwrap_or_clone(meta));
        }
        Box::pin(async { Ok(()) })
    }

    fn set_chord_size(&self, group_id: &str, size: u64) -> BoxFuture<'static, Result<(), StoreError>> {
        let mut sizes = self.sizes.lock().unwrap();
        sizes.push((group_id.to_owned(), size));
        let first = sizes.len() == 1;
        Box::pin(async move {
            if first {
                Err(StoreError::unreachable("Error connecting to the result backend: Connection refused"))
            } else {
                Ok(())
            }
        })
    }
}

/// A short result-backend outage while a callback chord's size is written
/// is retried like a broker outage, and the retry resumes there: the header
/// parts sent before it are not sent again (each runs once), the task
/// succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_backend_blip_while_sizing_a_chord_is_retried_from_where_it_stopped() {
    init_log();
    let memory = MemoryBroker::default();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let store = ChordBlip { results: tx, sizes: sizes.clone() };
    let config = WorkerConfig { acks_late: true, ..WorkerConfig::default() };
    let (stop, run) = start(Broker::Memory(memory.clone()), Some(Arc::new(store)), config);
    let part = |i: i64| {
        let mut s = Signature::new("tasks.add");
        s.args = vec![i.into(), 1.into()];
        s.immutable = true;
        s
    };
    let mut t = add_task("blip");
    t.embed.callbacks = Some(vec![chord_of(vec![part(1), part(2), part(3)], Signature::new("tasks.add"))]);
    memory.publish("", "celery", &message(&t, ContentType::Json)).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let meta = tokio::time::timeout(WAIT, rx.recv()).await.unwrap().unwrap();
        assert_eq!(meta.status, State::Success, "{meta:?}");
        seen.push((meta.task_id.clone(), meta.result.clone()));
    }
    // The parts sent before the blip may finish before the task does.
    assert_eq!(seen.iter().filter(|(id, _)| id == "blip").count(), 1);
    let mut parts: Vec<Value> = seen.iter().filter(|(id, _)| id != "blip").map(|(_, r)| r.clone()).collect();
    parts.sort_by_key(|v| v.as_i64());
    assert_eq!(parts, [Value::Int(2), Value::Int(3), Value::Int(4)]);
    stop.cancel();
    run.await.unwrap();
    assert!(rx.try_recv().is_err(), "no header part ran twice");
    assert_eq!((memory.queue_len("celery"), memory.unacked_len()), (0, 0));
    let sizes = sizes.lock().unwrap().clone();
    assert_eq!(sizes.len(), 2, "written again only because it failed: {sizes:?}");
    assert_eq!(sizes[1].1, 3);
}

fn chord_of(header: Vec<Signature>, body: Signature) -> Signature {
    let mut group = Signature::new("celery.group");
    group.subtask_type = Some("group".into());
    group.kwargs.insert("tasks".into(), Value::List(header.iter().map(Signature::to_value).collect()));
    let mut c = Signature::new("celery.chord");
    c.subtask_type = Some("chord".into());
    c.kwargs.insert("header".into(), group.to_value());
    c.kwargs.insert("body".into(), body.to_value());
    c.kwargs.insert("kwargs".into(), Value::Map(Map::new()));
    c
}

/// A fake Redis that answers connection set-up but `-LOADING` to every data
/// command (a Redis restarted with persistence, loading its dataset), and
/// counts the data commands.
async fn loading_redis(seen: Arc<AtomicUsize>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some((command, used)) = first_word(&buf) {
                        buf.drain(..used);
                        let reply: &[u8] = match command.to_ascii_uppercase().as_str() {
                            "PING" => b"+PONG\r\n",
                            "CLIENT" | "SELECT" | "AUTH" | "HELLO" => b"+OK\r\n",
                            _ => {
                                seen.fetch_add(1, Ordering::SeqCst);
                                b"-LOADING Redis is loading the dataset in memory\r\n"
                            }
                        };
                        if sock.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

/// The first word of one complete RESP array of bulk strings in `buf`, and
/// the bytes it takes.
fn first_word(buf: &[u8]) -> Option<(String, usize)> {
    let line = |from: usize| -> Option<(String, usize)> {
        let end = buf.get(from..)?.windows(2).position(|w| w == b"\r\n")? + from;
        Some((String::from_utf8_lossy(&buf[from..end]).into_owned(), end + 2))
    };
    let (head, mut at) = line(0)?;
    let n: usize = head.strip_prefix('*')?.parse().ok()?;
    let mut first = None;
    for _ in 0..n {
        let (len, next) = line(at)?;
        let len: usize = len.strip_prefix('$')?.parse().ok()?;
        if buf.len() < next + len + 2 {
            return None;
        }
        first.get_or_insert_with(|| String::from_utf8_lossy(&buf[next..next + len]).into_owned());
        at = next + len + 2;
    }
    Some((first.unwrap_or_default(), at))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loading_result_backend_is_waited_for_and_the_message_kept() {
    init_log();
    let seen = Arc::new(AtomicUsize::new(0));
    let port = loading_redis(seen.clone()).await;
    let backend = celeriac_backend::RedisBackend::from_url(&format!("redis://127.0.0.1:{port}/0")).await.unwrap();
    let memory = MemoryBroker::default();
    let config = WorkerConfig { acks_late: true, concurrency: 1, ..WorkerConfig::default() };
    let (stop, run) = start(Broker::Memory(memory.clone()), Some(Arc::new(backend)), config);
    memory.publish("", "celery", &message(&add_task("loading-1"), ContentType::Json)).unwrap();
    // The worker keeps trying to store the result...
    let before = seen.load(Ordering::SeqCst);
    while seen.load(Ordering::SeqCst) < before + 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(memory.unacked_len(), 1, "...and the message is not acked meanwhile");
    stop.cancel();
    run.await.unwrap();
    assert_eq!(memory.queue_len("celery"), 1, "at shutdown it goes back to its queue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_cannot_be_dead_lettered_is_refused_once_not_spun() {
    init_log();
    let Some(server) = celeriac_tests::redis() else { return };
    let mut admin = redis::Client::open(server.url()).unwrap().get_connection().unwrap();
    let () = redis::cmd("SET").arg("celeriac.dead_letter").arg("not a list").query(&mut admin).unwrap();
    let broker = Broker::from_url(&server.url()).unwrap();
    let metrics = Arc::new(Metrics::new("w@h"));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let config = WorkerConfig { concurrency: 1, prefetch_multiplier: 1, ..WorkerConfig::default() };
    let (stop, run) = start_with_metrics(broker.clone(), Some(Arc::new(Results(tx))), config, Some(metrics.clone()));
    // A YAML message: refused (content_disallowed), and the dead-letter key is a string.
    broker.publish("", "celery", &message(&add_task("yaml-1"), ContentType::Yaml)).await.unwrap();
    while refused(&metrics, "dead_letter_failed") == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Its prefetch slot (the only one) is free: an ordinary task runs...
    broker.publish("", "celery", &message(&add_task("after"), ContentType::Json)).await.unwrap();
    let meta = tokio::time::timeout(WAIT, rx.recv()).await.expect("the ordinary task ran").unwrap();
    assert_eq!(meta.task_id, "after");
    // ...and the refused one was not taken again meanwhile: it waits in unacked.
    assert_eq!(refused(&metrics, "content_disallowed"), 1);
    let unacked: u64 = redis::cmd("HLEN").arg("unacked").query(&mut admin).unwrap();
    assert_eq!(unacked, 1);
    stop.cancel();
    run.await.unwrap();
}

/// A server that accepts connections and never answers: a partition that
/// lets the handshake through, or a hung server.
async fn silent_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_event_buffer_during_a_partition_is_bounded() {
    init_log();
    let port = silent_server().await;
    let broker = Broker::from_url(&format!("redis://127.0.0.1:{port}/0")).unwrap();
    let events = celeriac_worker::events::Events::start(broker, "w@h", true, 2.0);
    for i in 0..1000 {
        let mut fields = Map::new();
        fields.insert("uuid".into(), Value::Str(format!("id-{i}")));
        events.task("task-received", fields);
    }
    let deadline = celeriac_worker::events::CLOSE_DEADLINE + Duration::from_secs(10);
    assert!(tokio::time::timeout(deadline, events.close()).await.is_ok(), "close() still running after {deadline:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_list_element_is_parked_unread_not_parsed_inside_redis() {
    init_log();
    let Some(server) = celeriac_tests::redis() else { return };
    let mut admin = redis::Client::open(server.url()).unwrap().get_connection().unwrap();
    // 8 MB of JSON no kombu envelope looks like: parsing it in Lua takes long.
    let element = format!("[{}0]", "0,".repeat(4_000_000));
    let () = redis::cmd("LPUSH").arg("celery").arg(&element).query(&mut admin).map(|_: i64| ()).unwrap();
    // Every command from here is logged with its time inside Redis.
    let () = redis::cmd("CONFIG").arg("SET").arg("slowlog-max-len").arg("100000").query(&mut admin).unwrap();
    let () = redis::cmd("CONFIG").arg("SET").arg("slowlog-log-slower-than").arg("0").query(&mut admin).unwrap();
    let () = redis::cmd("SLOWLOG").arg("RESET").query(&mut admin).unwrap();
    let mut options = RedisOptions::from_url(&server.url()).unwrap();
    options.max_message_size = 1 << 20;
    options.deadletter_queue = Some("celeriac.dead_letter".into());
    let broker = celeriac_broker::RedisBroker::new(options).unwrap();
    let mut consumer = broker.consumer(&["celery".to_owned()], 1);
    match tokio::time::timeout(WAIT, consumer.next()).await.unwrap() {
        Some(Err(BrokerError::Undecodable { kind, dead_lettered, .. })) => {
            assert_eq!((kind, dead_lettered), ("body_too_large", true));
        }
        other => panic!(
            "expected the element to be refused, got {:?}",
            other.map(|r| r.map(|d| d.delivery_tag().to_owned()))
        ),
    }
    let parked: u64 = redis::cmd("LLEN").arg("celeriac.dead_letter").query(&mut admin).unwrap();
    assert_eq!(parked, 1);
    // What parsing the element inside Redis costs, on this machine and its
    // load now: the consumer's scripts must have taken a small part of it.
    let () = redis::cmd("LPUSH").arg("parse.me").arg(&element).query(&mut admin).map(|_: i64| ()).unwrap();
    let decode = "cjson.decode(redis.call('LINDEX', KEYS[1], 0)) return 1";
    let _: i64 = redis::cmd("EVAL").arg(decode).arg(1).arg("parse.me").query(&mut admin).unwrap();
    let slow: Vec<(i64, i64, i64, Vec<String>)> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .query::<Vec<redis::Value>>(&mut admin)
        .unwrap()
        .into_iter()
        .map(|entry| match entry {
            redis::Value::Array(fields) => {
                let int = |v: &redis::Value| if let redis::Value::Int(i) = v { *i } else { 0 };
                let args = match &fields[3] {
                    redis::Value::Array(a) => a
                        .iter()
                        .map(|v| match v {
                            redis::Value::BulkString(b) => String::from_utf8_lossy(&b[..b.len().min(64)]).into_owned(),
                            _ => String::new(),
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                (int(&fields[0]), int(&fields[1]), int(&fields[2]), args)
            }
            other => panic!("a slowlog entry that is no array: {other:?}"),
        })
        .collect();
    let took = |command: &str| -> i64 {
        slow.iter().filter(|e| e.3.first().is_some_and(|c| c == command)).map(|e| e.2).max().unwrap_or(0)
    };
    let (parse, scripts) = (took("EVAL"), took("EVALSHA"));
    assert!(scripts > 0, "no script of the consumer was logged: {slow:?}");
    assert!(
        scripts * 4 < parse,
        "the consumer's longest script took {scripts} µs inside Redis, parsing the element takes {parse} µs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_eta_message_restored_by_the_visibility_timeout_runs_once() {
    init_log();
    let Some(server) = celeriac_tests::redis() else { return };
    let mut options = RedisOptions::from_url(&server.url()).unwrap();
    // The sweep hands the held message back (to this same worker) while it
    // waits for its ETA: the worker then holds two deliveries of one message.
    options.visibility_timeout = Duration::from_secs(1);
    options.unacked_restore_interval = Duration::from_millis(200);
    options.unacked_restore_throttle = 1;
    let broker = Broker::Redis(celeriac_broker::RedisBroker::new(options).unwrap());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let config = WorkerConfig { eta_refresh: Duration::from_secs(3600), ..WorkerConfig::default() };
    let (stop, run) = start(broker.clone(), Some(Arc::new(Results(tx))), config);
    let mut t = add_task("held-twice");
    let eta = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(4);
    t.headers.eta = Some(celeriac_protocol::time::PyDateTime::from_timestamp(eta, jiff::tz::Offset::UTC));
    broker.publish("", "celery", &message(&t, ContentType::Json)).await.unwrap();
    let mut admin = redis::Client::open(server.url()).unwrap().get_connection().unwrap();
    let redelivered = tokio::time::timeout(WAIT, async {
        loop {
            // kombu's restore marks the element it pushes back.
            let unacked: Vec<String> = redis::cmd("HVALS").arg("unacked").query(&mut admin).unwrap();
            if unacked.iter().any(|v| v.contains("\"redelivered\": true")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(redelivered.is_ok(), "the sweep did not hand the held message back within {WAIT:?}");
    let meta = tokio::time::timeout(WAIT, rx.recv()).await.unwrap().unwrap();
    assert_eq!((meta.task_id.as_str(), meta.result), ("held-twice", Value::Int(3)));
    // Both deliveries are done with once nothing is unacked or queued.
    tokio::time::timeout(WAIT, async {
        loop {
            let held: i64 = redis::cmd("HLEN").arg("unacked").query(&mut admin).unwrap();
            let queued: i64 = redis::cmd("LLEN").arg("celery").query(&mut admin).unwrap();
            if held == 0 && queued == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("both deliveries settled or dropped");
    stop.cancel();
    run.await.unwrap();
    assert!(rx.try_recv().is_err(), "the task ran twice");
}

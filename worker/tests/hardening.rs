//! The worker under hostile input and a failing result store, on the
//! in-memory broker: no panic from any header value, a runner that panics
//! anyway loses nothing, results are retried through an outage and a
//! late-ack message whose result could not be stored is not acked away, and
//! an unknown task cannot circle through the queues for ever.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed assertion
// Settling a delivery is a deep future (the Redis settler is in its type).
#![recursion_limit = "256"]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use celeriac_broker::{Broker, Consumer, Delivery, MemoryBroker, Producer, ProducerConfig, SendOptions};
use celeriac_config::UnknownTaskPolicy;
use celeriac_protocol::result::{ResultMeta, State};
use celeriac_protocol::task::{Seconds, TimeLimits};
use celeriac_protocol::time::PyDateTime;
use celeriac_protocol::{ContentType, Map, TaskMessage, Value};
use celeriac_worker::{Args, Ctx, Registry, ResultStore, StoreError, Task, TaskError, Worker, WorkerConfig};
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

/// A result store that can misbehave: fail transiently, or panic, on the
/// records `fault` picks.
struct Store {
    tx: mpsc::UnboundedSender<ResultMeta>,
    fault: Fault,
    failures: AtomicUsize,
}

#[derive(Clone, Copy)]
enum Fault {
    None,
    /// Unreachable for this many attempts, then fine.
    Outage(usize),
    /// Panics when storing a SUCCESS.
    PanicOnSuccess,
}

impl ResultStore for Store {
    fn store(&self, meta: Arc<ResultMeta>) -> BoxFuture<'static, Result<(), StoreError>> {
        match self.fault {
            Fault::Outage(n) if self.failures.fetch_add(1, Ordering::SeqCst) < n => {
                return Box::pin(async { Err(StoreError::unreachable("connection refused")) });
            }
            Fault::PanicOnSuccess if meta.status == State::Success => panic!("a buggy result store"),
            _ => {}
        }
        let _ = self.tx.send(Arc::unwrap_or_clone(meta));
        Box::pin(async { Ok(()) })
    }
}

async fn add(Args((a, b)): Args<(i64, i64)>) -> Result<i64, TaskError> {
    Ok(a + b)
}

async fn sleepy() -> Result<(), TaskError> {
    tokio::time::sleep(Duration::from_secs(30)).await;
    Ok(())
}

async fn again(ctx: Ctx) -> Result<(), TaskError> {
    Err(ctx.retry_in("again", Duration::ZERO))
}

struct Setup {
    producer: Producer,
    broker: MemoryBroker,
    results: mpsc::UnboundedReceiver<ResultMeta>,
    stop: CancellationToken,
    run: tokio::task::JoinHandle<()>,
}

fn start(config: WorkerConfig, fault: Fault) -> Setup {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("celeriac_worker=info")),
        )
        .with_test_writer()
        .try_init();
    let memory = MemoryBroker::default();
    let broker = Broker::Memory(memory.clone());
    let producer = Producer::new(broker.clone(), ProducerConfig::default());
    let registry = Registry::new()
        .with(Task::new("tasks.add", add))
        .with(Task::new("tasks.sleepy", sleepy))
        .with(Task::new("tasks.again", again).max_retries(3));
    let (tx, rx) = mpsc::unbounded_channel();
    let store = Store { tx, fault, failures: AtomicUsize::new(0) };
    let config = WorkerConfig { shutdown_timeout: Duration::from_secs(5), concurrency: 2, ..config };
    let worker = Worker::new(registry, broker, producer.clone(), Some(Arc::new(store)), config);
    let stop = CancellationToken::new();
    let token = stop.clone();
    let run = tokio::spawn(async move { worker.run(token).await.unwrap() });
    Setup { producer, broker: memory, results: rx, stop, run }
}

impl Setup {
    async fn result(&mut self) -> ResultMeta {
        loop {
            let meta = tokio::time::timeout(WAIT, self.results.recv()).await.expect("a result").unwrap();
            if meta.status.is_ready() {
                return meta;
            }
        }
    }

    async fn send(&self, task: &TaskMessage) {
        let message = task.to_message(task.default_properties(None, None), 0, ContentType::Json, None).unwrap();
        self.broker.publish("", "celery", &message).unwrap();
    }

    fn dead_letters(&self) -> Consumer {
        Broker::Memory(self.broker.clone()).consumer(&["celeriac.dead_letter".to_owned()], 10)
    }

    async fn stop(self) -> MemoryBroker {
        self.stop.cancel();
        self.run.await.unwrap();
        self.broker
    }
}

async fn next(consumer: &mut Consumer) -> Delivery {
    tokio::time::timeout(WAIT, consumer.next()).await.expect("a delivery").unwrap().unwrap()
}

fn header<'a>(d: &'a Delivery, key: &str) -> Option<&'a Value> {
    d.message().headers.get(key)
}

fn task(name: &str, args: Vec<Value>) -> TaskMessage {
    let mut t = TaskMessage::new(name, uuid::Uuid::new_v4().to_string());
    t.args = args;
    t
}

#[tokio::test]
async fn no_header_value_panics_the_worker() {
    let mut s = start(WorkerConfig::default(), Fault::None);
    // Limits that mean "none" in billiard: the task runs normally.
    for (hard, soft) in [(f64::NAN, f64::NAN), (f64::INFINITY, f64::NEG_INFINITY), (1e300, 0.0), (0.0, 0.0)] {
        let mut t = task("tasks.add", vec![1.into(), 2.into()]);
        t.headers.timelimit = TimeLimits { hard: Some(Seconds::Float(hard)), soft: Some(Seconds::Float(soft.abs())) };
        s.send(&t).await;
        let meta = s.result().await;
        assert_eq!((meta.task_id, meta.status, meta.result), (t.headers.id, State::Success, Value::Int(3)), "{hard}");
    }
    // A limit already past fires at once.
    for hard in [-1.0, -1e300, f64::NEG_INFINITY] {
        let mut t = task("tasks.sleepy", vec![]);
        t.headers.timelimit = TimeLimits { hard: Some(Seconds::Float(hard)), soft: None };
        s.send(&t).await;
        let meta = s.result().await;
        assert_eq!(meta.exception().unwrap().unwrap().exc_type, "TimeLimitExceeded", "{hard}");
    }
    let mut t = task("tasks.sleepy", vec![]);
    t.headers.timelimit = TimeLimits { hard: Some(Seconds::Int(i64::MIN)), soft: Some(Seconds::Int(i64::MAX)) };
    s.send(&t).await;
    assert_eq!(s.result().await.exception().unwrap().unwrap().exc_type, "TimeLimitExceeded");
    // Retry counts at the ends of the range.
    // (A negative count retries up to max_retries, as in Celery.)
    for retries in [i64::MAX, 3, -1] {
        let mut t = task("tasks.again", vec![]);
        t.headers.retries = retries;
        s.send(&t).await;
        let meta = s.result().await;
        let exc = meta.exception().unwrap().unwrap();
        assert_eq!(exc.exc_type, "MaxRetriesExceededError", "retries {retries}");
    }
    // An expiry in year 1 is long past; an ETA in year 9999 is held.
    let mut t = task("tasks.add", vec![1.into(), 1.into()]);
    t.headers.expires = Some(PyDateTime::parse_iso("0001-01-01T00:00:00+00:00").unwrap());
    s.send(&t).await;
    assert_eq!(s.result().await.status, State::Revoked);
    let mut t = task("tasks.add", vec![1.into(), 1.into()]);
    t.headers.eta = Some(PyDateTime::parse_iso("9999-12-31T23:59:59.999999+14:00").unwrap());
    s.send(&t).await;
    let mut t = task("tasks.add", vec![2.into(), 2.into()]);
    t.headers.eta = Some(PyDateTime::parse_iso("1970-01-01T00:00:00+00:00").unwrap());
    s.send(&t).await;
    assert_eq!(s.result().await.result, Value::Int(4), "an ETA long past runs now");
    let broker = s.stop().await;
    assert_eq!(broker.queue_len("celery"), 1, "the far-future ETA task went back to the queue");
}

#[tokio::test]
async fn a_runner_that_panics_fails_its_task_and_keeps_its_message() {
    let mut s = start(WorkerConfig { acks_late: true, ..WorkerConfig::default() }, Fault::PanicOnSuccess);
    let mut dead = s.dead_letters();
    let t = task("tasks.add", vec![2.into(), 2.into()]);
    s.send(&t).await;
    let meta = s.result().await;
    assert_eq!(meta.task_id, t.headers.id);
    let exc = meta.exception().unwrap().unwrap();
    assert_eq!((exc.exc_module.as_deref(), exc.exc_type.as_str()), (Some("billiard.exceptions"), "WorkerLostError"));
    let mut parked = next(&mut dead).await;
    let reason = header(&parked, "x-celeriac-error").and_then(Value::as_str).unwrap().to_owned();
    assert!(reason.starts_with("runner_panic: a buggy result store"), "{reason}");
    assert_eq!(header(&parked, "id"), Some(&Value::Str(t.headers.id.clone())), "the message itself, untouched");
    parked.ack().await.unwrap();
    // The worker goes on: a task whose result is not a SUCCESS still runs.
    s.send(&task("tasks.again", vec![])).await;
    assert_eq!(s.result().await.status, State::Failure);
    let broker = s.stop().await;
    assert_eq!(broker.unacked_len(), 0);
    assert_eq!(broker.queue_len("celery"), 0);
}

#[tokio::test]
async fn results_are_stored_once_the_backend_is_back() {
    let mut s = start(WorkerConfig { acks_late: true, ..WorkerConfig::default() }, Fault::Outage(5));
    let t = task("tasks.add", vec![20.into(), 22.into()]);
    s.send(&t).await;
    let meta = s.result().await;
    assert_eq!((meta.task_id, meta.result), (t.headers.id, Value::Int(42)));
    let broker = s.stop().await;
    assert_eq!((broker.unacked_len(), broker.queue_len("celery")), (0, 0), "acked once stored");
}

#[tokio::test]
async fn a_late_ack_message_whose_result_cannot_be_stored_is_not_acked_away() {
    let s = start(WorkerConfig { acks_late: true, ..WorkerConfig::default() }, Fault::Outage(usize::MAX));
    s.send(&task("tasks.add", vec![1.into(), 1.into()])).await;
    // The runner is retrying the store when the worker stops: the message
    // goes back to its queue for another run.
    let broker = s.broker.clone();
    while broker.unacked_len() == 0 {
        tokio::task::yield_now().await;
    }
    let broker = s.stop().await;
    assert_eq!(broker.queue_len("celery"), 1, "handed back, not acked");
    assert_eq!(broker.unacked_len(), 0);
}

#[tokio::test]
async fn an_unknown_task_is_handed_on_a_bounded_number_of_times() {
    let config = WorkerConfig {
        unknown_task: UnknownTaskPolicy::Requeue,
        unknown_task_max_requeues: 2,
        ..WorkerConfig::default()
    };
    let s = start(config, Fault::None);
    let mut dead = s.dead_letters();
    let id = s.producer.send_task("tasks.nobody", vec![], Map::new(), SendOptions::default()).await.unwrap();
    let parked = next(&mut dead).await;
    assert_eq!(header(&parked, "id"), Some(&Value::Str(id)));
    assert_eq!(header(&parked, "x-celeriac-unknown-hops"), Some(&Value::Int(2)));
    let reason = header(&parked, "x-celeriac-error").and_then(Value::as_str).unwrap();
    assert!(reason.contains("handed on 2 times"), "{reason}");
    s.stop().await;
}

#[tokio::test]
async fn messages_outside_accept_content_or_too_large_are_dead_lettered_with_the_reason() {
    let config = WorkerConfig { max_message_size: 4096, ..WorkerConfig::default() };
    let s = start(config, Fault::None);
    let mut dead = s.dead_letters();
    let t = task("tasks.add", vec![1.into(), 1.into()]);
    let yaml = t.to_message(t.default_properties(None, None), 0, ContentType::Yaml, None).unwrap();
    s.broker.publish("", "celery", &yaml).unwrap();
    let parked = next(&mut dead).await;
    let reason = header(&parked, "x-celeriac-error").and_then(Value::as_str).unwrap();
    assert!(reason.starts_with("content_disallowed:"), "{reason}");
    let big = task("tasks.add", vec![Value::Str("x".repeat(8192)), 1.into()]);
    s.send(&big).await;
    let parked = next(&mut dead).await;
    let reason = header(&parked, "x-celeriac-error").and_then(Value::as_str).unwrap();
    assert!(reason.starts_with("body_too_large:"), "{reason}");
    s.stop().await;
}

//! The worker loop on the in-memory broker: results stored, retries
//! re-published, unknown and undecodable messages never lost.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed assertion

use std::sync::Arc;
use std::time::Duration;

use celeriac_broker::{Broker, MemoryBroker, Producer, ProducerConfig, SendOptions};
use celeriac_config::UnknownTaskPolicy;
use celeriac_protocol::result::{ResultMeta, State};
use celeriac_protocol::{Map, Message, Value};
use celeriac_worker::{Args, Ctx, Registry, ResultStore, StoreError, Task, TaskError, Worker, WorkerConfig};
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

struct Channel(mpsc::UnboundedSender<ResultMeta>);

impl ResultStore for Channel {
    fn store(&self, meta: std::sync::Arc<ResultMeta>) -> BoxFuture<'static, Result<(), StoreError>> {
        let _ = self.0.send(std::sync::Arc::unwrap_or_clone(meta));
        Box::pin(async { Ok(()) })
    }
}

async fn add(Args((a, b)): Args<(i64, i64)>) -> Result<i64, TaskError> {
    Ok(a + b)
}

async fn flaky(ctx: Ctx) -> Result<&'static str, TaskError> {
    if ctx.retries() < 2 {
        return Err(ctx.retry_in("not yet", Duration::from_millis(10)));
    }
    Ok("done")
}

async fn boom(Args((msg,)): Args<(String,)>) -> Result<(), TaskError> {
    Err(TaskError::builtin("ValueError", msg))
}

async fn slow() -> Result<(), TaskError> {
    tokio::time::sleep(Duration::from_secs(30)).await;
    Ok(())
}

struct Setup {
    producer: Producer,
    broker: Broker,
    results: mpsc::UnboundedReceiver<ResultMeta>,
    stop: CancellationToken,
    run: tokio::task::JoinHandle<()>,
}

fn start(policy: UnknownTaskPolicy) -> Setup {
    start_with(WorkerConfig { concurrency: 2, unknown_task: policy, ..WorkerConfig::default() })
}

async fn panics() -> Result<(), TaskError> {
    panic!("index out of range")
}

async fn panics_once(ctx: Ctx) -> Result<&'static str, TaskError> {
    if !ctx.request().redelivered {
        panic!("first delivery");
    }
    Ok("second delivery")
}

async fn fails_once(ctx: Ctx) -> Result<&'static str, TaskError> {
    if !ctx.request().redelivered {
        return Err(TaskError::builtin("IOError", "first delivery"));
    }
    Ok("second delivery")
}

async fn limited(Args((tx,)): Args<(String,)>) -> Result<String, TaskError> {
    Ok(tx)
}

/// An in-memory broker and a producer on it.
fn memory_broker() -> (Broker, Producer) {
    let broker = Broker::Memory(MemoryBroker::default());
    let producer = Producer::new(broker.clone(), ProducerConfig::default());
    (broker, producer)
}

/// Runs a worker of `registry` on `broker` storing into `store` until the
/// returned token is cancelled (then await the handle).
fn run_worker(
    broker: &Broker,
    producer: &Producer,
    registry: Registry,
    store: Arc<dyn ResultStore>,
    config: WorkerConfig,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let worker = Worker::new(registry, broker.clone(), producer.clone(), Some(store), config);
    let stop = CancellationToken::new();
    let token = stop.clone();
    (stop, tokio::spawn(async move { worker.run(token).await.unwrap() }))
}

fn start_with(config: WorkerConfig) -> Setup {
    let (broker, producer) = memory_broker();
    let registry = Registry::new()
        .with(Task::new("tasks.add", add))
        .with(Task::new("tasks.flaky", flaky))
        .with(Task::new("tasks.boom", boom))
        .with(Task::new("tasks.slow", slow).time_limit(Duration::from_millis(50)))
        .with(Task::new("tasks.panics", panics))
        .with(Task::new("tasks.limited", limited).rate_limit("5/s"))
        .with(Task::new("tasks.panics_once", panics_once))
        .with(Task::new("tasks.fails_once", fails_once));
    let (tx, rx) = mpsc::unbounded_channel();
    let config = WorkerConfig { shutdown_timeout: Duration::from_secs(5), ..config };
    let (stop, run) = run_worker(&broker, &producer, registry, Arc::new(Channel(tx)), config);
    Setup { producer, broker, results: rx, stop, run }
}

async fn next_final(rx: &mut mpsc::UnboundedReceiver<ResultMeta>) -> ResultMeta {
    loop {
        let meta = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
        if meta.status.is_ready() {
            return meta;
        }
    }
}

#[tokio::test]
async fn a_task_runs_and_its_result_is_stored() {
    let mut s = start(UnknownTaskPolicy::Reject);
    let id =
        s.producer.send_task("tasks.add", vec![2.into(), 3.into()], Map::new(), SendOptions::default()).await.unwrap();
    let meta = next_final(&mut s.results).await;
    assert_eq!((meta.task_id.as_str(), &meta.status, &meta.result), (id.as_str(), &State::Success, &Value::Int(5)));
    s.stop.cancel();
    s.run.await.unwrap();
}

#[tokio::test]
async fn retries_are_republished_until_they_succeed() {
    let mut s = start(UnknownTaskPolicy::Reject);
    s.producer.send_task("tasks.flaky", vec![], Map::new(), SendOptions::default()).await.unwrap();
    let mut retries = 0;
    let meta = loop {
        let meta = tokio::time::timeout(Duration::from_secs(10), s.results.recv()).await.unwrap().unwrap();
        if meta.status == State::Retry {
            retries += 1;
        } else if meta.status.is_ready() {
            break meta;
        }
    };
    assert_eq!(retries, 2);
    assert_eq!(meta.result, Value::Str("done".into()));
    s.stop.cancel();
    s.run.await.unwrap();
}

#[tokio::test]
async fn failures_and_time_limits_are_stored_as_python_exceptions() {
    let mut s = start(UnknownTaskPolicy::Reject);
    s.producer.send_task("tasks.boom", vec!["bad".into()], Map::new(), SendOptions::default()).await.unwrap();
    let meta = next_final(&mut s.results).await;
    let exc = meta.exception().unwrap().unwrap();
    assert_eq!((meta.status, exc.exc_type.as_str()), (State::Failure, "ValueError"));
    assert_eq!(exc.exc_message, vec![Value::Str("bad".into())]);

    s.producer.send_task("tasks.slow", vec![], Map::new(), SendOptions::default()).await.unwrap();
    let meta = next_final(&mut s.results).await;
    assert_eq!(meta.exception().unwrap().unwrap().exc_type, "TimeLimitExceeded");
    s.stop.cancel();
    s.run.await.unwrap();
}

#[tokio::test]
async fn unknown_tasks_fail_as_not_registered_by_default() {
    let mut s = start(UnknownTaskPolicy::Reject);
    s.producer.send_task("tasks.nope", vec![], Map::new(), SendOptions::default()).await.unwrap();
    let meta = next_final(&mut s.results).await;
    assert_eq!(meta.exception().unwrap().unwrap().exc_type, "NotRegistered");
    s.stop.cancel();
    s.run.await.unwrap();
}

#[tokio::test]
async fn undecodable_and_unknown_messages_go_to_the_dead_letter_queue() {
    let s = start(UnknownTaskPolicy::DeadLetter);
    let junk = Message::with_body(
        Map::new(),
        Map::new(),
        0,
        celeriac_protocol::ContentType::Json,
        None,
        &Value::Str("not a task".into()),
    )
    .unwrap();
    s.broker.publish("", "celery", &junk).await.unwrap();
    s.producer.send_task("tasks.nope", vec![], Map::new(), SendOptions::default()).await.unwrap();
    let mut moved = 0;
    for _ in 0..200 {
        moved = s.broker.queue_len("celeriac.dead_letter").await.unwrap();
        if moved == 2 {
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(moved, 2, "both messages must be in the dead-letter queue");
    s.stop.cancel();
    s.run.await.unwrap();
}

#[tokio::test]
async fn a_panicking_task_fails_as_a_lost_worker() {
    let mut s = start(UnknownTaskPolicy::Reject);
    s.producer.send_task("tasks.panics", vec![], Map::new(), SendOptions::default()).await.unwrap();
    let meta = next_final(&mut s.results).await;
    let exc = meta.exception().unwrap().unwrap();
    assert_eq!((exc.exc_module.as_deref(), exc.exc_type.as_str()), (Some("billiard.exceptions"), "WorkerLostError"));
    s.stop.cancel();
    s.run.await.unwrap();
}

#[tokio::test]
async fn held_eta_tasks_do_not_fill_the_prefetch_window() {
    // One slot, prefetch 1: without Celery's window widening the first ETA
    // task would block everything behind it for a minute.
    let mut s = start_with(WorkerConfig { concurrency: 1, prefetch_multiplier: 1, ..WorkerConfig::default() });
    let later = SendOptions { countdown: Some(Duration::from_secs(60)), ..SendOptions::default() };
    for _ in 0..3 {
        s.producer.send_task("tasks.add", vec![1.into(), 1.into()], Map::new(), later.clone()).await.unwrap();
    }
    let now = s.producer.send_task("tasks.add", vec![2.into(), 2.into()], Map::new(), SendOptions::default());
    let id = now.await.unwrap();
    let meta = next_final(&mut s.results).await;
    assert_eq!((meta.task_id, meta.result), (id, Value::Int(4)));
    s.stop.cancel();
    s.run.await.unwrap();
    assert_eq!(s.broker.queue_len("celery").await.unwrap(), 3, "the ETA tasks go back to the queue on shutdown");
}

#[tokio::test]
async fn rate_limited_tasks_are_spaced() {
    let mut s = start(UnknownTaskPolicy::Reject);
    let began = std::time::Instant::now();
    for i in 0..3 {
        s.producer
            .send_task("tasks.limited", vec![i.to_string().into()], Map::new(), SendOptions::default())
            .await
            .unwrap();
    }
    for _ in 0..3 {
        next_final(&mut s.results).await;
    }
    // 5/s with a bucket of one: the third run waits two intervals (400 ms).
    assert!(began.elapsed() >= Duration::from_millis(390), "ran within {:?}", began.elapsed());
    s.stop.cancel();
    s.run.await.unwrap();
}

#[tokio::test]
async fn a_lost_execution_is_requeued_with_reject_on_worker_lost() {
    let config = WorkerConfig { acks_late: true, reject_on_worker_lost: true, ..WorkerConfig::default() };
    let mut s = start_with(config);
    s.producer.send_task("tasks.panics_once", vec![], Map::new(), SendOptions::default()).await.unwrap();
    let meta = next_final(&mut s.results).await;
    assert_eq!((meta.status, meta.result), (State::Success, Value::Str("second delivery".into())));
    s.stop.cancel();
    s.run.await.unwrap();
}

#[tokio::test]
async fn failures_are_requeued_when_acks_on_failure_is_off() {
    let config = WorkerConfig { acks_late: true, acks_on_failure_or_timeout: false, ..WorkerConfig::default() };
    let mut s = start_with(config);
    s.producer.send_task("tasks.fails_once", vec![], Map::new(), SendOptions::default()).await.unwrap();
    let first = next_final(&mut s.results).await;
    assert_eq!(first.status, State::Failure, "the failure is stored...");
    let second = next_final(&mut s.results).await;
    assert_eq!(second.result, Value::Str("second delivery".into()), "...and the message comes back");
    s.stop.cancel();
    s.run.await.unwrap();
}

#[tokio::test]
async fn a_task_that_expires_while_waiting_for_a_slot_is_revoked() {
    let mut s = start_with(WorkerConfig { concurrency: 1, ..WorkerConfig::default() });
    // tasks.slow holds the only slot for its 50 ms hard limit.
    s.producer.send_task("tasks.slow", vec![], Map::new(), SendOptions::default()).await.unwrap();
    let soon = SendOptions {
        expires: Some(celeriac_broker::Expires::In(Duration::from_millis(20))),
        ..SendOptions::default()
    };
    let id = s.producer.send_task("tasks.add", vec![1.into(), 1.into()], Map::new(), soon).await.unwrap();
    let first = next_final(&mut s.results).await;
    assert_eq!(first.exception().unwrap().unwrap().exc_type, "TimeLimitExceeded");
    let second = next_final(&mut s.results).await;
    assert_eq!((second.task_id, second.status), (id, State::Revoked));
    s.stop.cancel();
    s.run.await.unwrap();
}

#[tokio::test]
async fn a_failure_fails_the_rest_of_its_chain_as_celery_does() {
    // Celery's `_fail_chain`: every later step with an id gets the failure,
    // so whoever waits on the chain's last result is not left waiting; a
    // step that is a chord fails through to its body.
    let mut s = start(UnknownTaskPolicy::Reject);
    let mut next = celeriac_protocol::Signature::new("tasks.add");
    next.args = vec![1.into()];
    next.options.insert("task_id".into(), "step-2".into());
    let mut body = celeriac_protocol::Signature::new("tasks.add");
    body.options.insert("task_id".into(), "chord-body".into());
    let mut chord = celeriac_protocol::Signature::new("celery.chord");
    chord.subtask_type = Some("chord".into());
    chord.kwargs.insert("header".into(), Value::List(vec![]));
    chord.kwargs.insert("body".into(), body.to_value());
    // The chain is stored last step first, as Celery sends it.
    let options = SendOptions { chain: vec![chord, next], ..SendOptions::default() };
    let id = s.producer.send_task("tasks.boom", vec!["bad".into()], Map::new(), options).await.unwrap();
    let mut failed = std::collections::BTreeMap::new();
    while failed.len() < 3 {
        let meta = next_final(&mut s.results).await;
        assert_eq!(meta.status, State::Failure, "{meta:?}");
        assert_eq!(meta.exception().unwrap().unwrap().exc_type, "ValueError");
        failed.insert(meta.task_id.clone(), ());
    }
    let ids: Vec<&str> = failed.keys().map(String::as_str).collect();
    let mut want = vec![id.as_str(), "step-2", "chord-body"];
    want.sort_unstable();
    assert_eq!(ids, want);
    s.stop.cancel();
    s.run.await.unwrap();
}

#[tokio::test]
async fn a_message_run_twice_sends_its_callbacks_under_the_same_ids() {
    // Two links without ids go out as one group the worker names itself (its
    // id and its members' ids). A message delivered twice (the worker that
    // sent its callbacks died before the ack) must name them the same again,
    // or the callbacks run twice under fresh ids and their results double.
    let mut s = start(UnknownTaskPolicy::Reject);
    let link = |n: i64| {
        let mut sig = celeriac_protocol::Signature::new("tasks.add");
        sig.args = vec![n.into()];
        sig
    };
    for _ in 0..2 {
        let options = SendOptions {
            task_id: Some("twice-sent".into()),
            link: vec![link(10), link(100)],
            ..SendOptions::default()
        };
        s.producer.send_task("tasks.add", vec![1.into(), 2.into()], Map::new(), options).await.unwrap();
    }
    let mut seen: std::collections::BTreeMap<String, (Value, usize)> = std::collections::BTreeMap::new();
    while seen.values().map(|(_, n)| n).sum::<usize>() < 6 {
        let meta = next_final(&mut s.results).await;
        assert_eq!(meta.status, State::Success, "{meta:?}");
        seen.entry(meta.task_id.clone()).or_insert((meta.result.clone(), 0)).1 += 1;
    }
    let runs: Vec<(String, i64, usize)> =
        seen.into_iter().map(|(id, (value, n))| (id, value.as_i64().unwrap(), n)).collect();
    assert_eq!(runs.len(), 3, "each callback kept its id on the second run: {runs:?}");
    let mut values: Vec<(i64, usize)> = runs.iter().map(|(_, v, n)| (*v, *n)).collect();
    values.sort_unstable();
    assert_eq!(values, vec![(3, 2), (13, 2), (103, 2)]);
    s.stop.cancel();
    s.run.await.unwrap();
}

static STARTED: std::sync::Mutex<Vec<i64>> = std::sync::Mutex::new(Vec::new());

async fn record_start(Args((n,)): Args<(i64,)>) -> Result<i64, TaskError> {
    STARTED.lock().unwrap().push(n);
    tokio::task::yield_now().await;
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_get_slots_in_the_order_their_messages_arrived() {
    // One slot, several messages prefetched, their runners on two threads:
    // a message read after another must not take the slot first (a Python
    // worker's pool gets them in order; Celery's test_expired relies on it).
    let (broker, producer) = memory_broker();
    for n in 0..300 {
        producer.send_task("tasks.record_start", vec![n.into()], Map::new(), SendOptions::default()).await.unwrap();
    }
    let registry = Registry::new().with(Task::new("tasks.record_start", record_start));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let config = WorkerConfig { concurrency: 1, prefetch_multiplier: 16, ..WorkerConfig::default() };
    let (stop, run) = run_worker(&broker, &producer, registry, Arc::new(Channel(tx)), config);
    for _ in 0..300 {
        next_final(&mut rx).await;
    }
    let started = STARTED.lock().unwrap().clone();
    assert_eq!(started, (0..300).collect::<Vec<i64>>());
    stop.cancel();
    run.await.unwrap();
}

/// A result store that never finishes storing a REVOKED state (a backend
/// gone quiet), and passes every other state on.
struct HangsOnRevoked(mpsc::UnboundedSender<ResultMeta>);

impl ResultStore for HangsOnRevoked {
    fn store(&self, meta: std::sync::Arc<ResultMeta>) -> BoxFuture<'static, Result<(), StoreError>> {
        if meta.status == State::Revoked {
            return Box::pin(std::future::pending());
        }
        let _ = self.0.send(std::sync::Arc::unwrap_or_clone(meta));
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discarded_task_waiting_on_its_result_does_not_hold_the_line_for_slots() {
    // Only the wait for a slot keeps the tasks behind in line: an expired
    // task whose REVOKED state cannot be stored (yet) gives its place up.
    let (broker, producer) = memory_broker();
    let expired = SendOptions {
        expires: Some(celeriac_broker::Expires::At(celeriac_protocol::time::PyDateTime::now_utc())),
        ..SendOptions::default()
    };
    producer.send_task("tasks.add", vec![1.into(), 1.into()], Map::new(), expired).await.unwrap();
    let id =
        producer.send_task("tasks.add", vec![2.into(), 3.into()], Map::new(), SendOptions::default()).await.unwrap();
    let registry = Registry::new().with(Task::new("tasks.add", add));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let config = WorkerConfig { concurrency: 1, shutdown_timeout: Duration::from_secs(1), ..WorkerConfig::default() };
    let (stop, run) = run_worker(&broker, &producer, registry, Arc::new(HangsOnRevoked(tx)), config);
    let meta = next_final(&mut rx).await;
    assert_eq!((meta.task_id.as_str(), meta.status), (id.as_str(), State::Success));
    assert_eq!(meta.result, Value::Int(5));
    stop.cancel();
    run.await.unwrap();
}

/// Replaces itself with `add(n, n) | add(1) | again(n - 1)` until `n` is 0;
/// every round keeps the task's id (the chain's last task takes it), and the
/// plan names the two `add`s.
async fn again(ctx: Ctx, Args((n,)): Args<(i64,)>) -> Result<&'static str, TaskError> {
    use celeriac_client::{chain, Signature as Sig};
    if n == 0 {
        return Ok("done");
    }
    let replacement = chain([
        Sig::new("tasks.add").args((n, n)),
        Sig::new("tasks.add").args((1,)),
        Sig::new("tasks.again").args((n - 1,)).si(),
    ]);
    Err(ctx.replace(replacement.to_wire().unwrap()))
}

#[tokio::test]
async fn a_task_that_replaces_itself_names_each_rounds_callbacks_afresh() {
    // Each round's replacement is planned under the same task id; its
    // `replaced_task_nesting` tells the rounds apart, so every round's steps
    // get ids of their own (as Python's fresh uuids), not the last round's.
    let (broker, producer) = memory_broker();
    let registry = Registry::new().with(Task::new("tasks.add", add)).with(Task::new("tasks.again", again));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let config = WorkerConfig { concurrency: 2, ..WorkerConfig::default() };
    let (stop, run) = run_worker(&broker, &producer, registry, Arc::new(Channel(tx)), config);
    let id = producer.send_task("tasks.again", vec![3.into()], Map::new(), SendOptions::default()).await.unwrap();
    let mut adds = std::collections::BTreeSet::new();
    loop {
        let meta = next_final(&mut rx).await;
        assert_eq!(meta.status, State::Success, "{meta:?}");
        if meta.task_id == id {
            assert_eq!(meta.result, Value::Str("done".into()));
            break;
        }
        adds.insert(meta.task_id.clone());
    }
    assert_eq!(adds.len(), 6, "three rounds of two steps, each under its own id: {adds:?}");
    stop.cancel();
    run.await.unwrap();
}

async fn nap() -> Result<(), TaskError> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_expires_waiting_for_a_slot_gives_the_slot_on_before_it_is_discarded() {
    // The only slot is busy; the next task expires while it waits, and its
    // REVOKED state cannot be stored (yet): the task after it still runs.
    let (broker, producer) = memory_broker();
    producer.send_task("tasks.nap", vec![], Map::new(), SendOptions::default()).await.unwrap();
    let expires = SendOptions {
        expires: Some(celeriac_broker::Expires::In(Duration::from_millis(100))),
        ..SendOptions::default()
    };
    producer.send_task("tasks.add", vec![1.into(), 1.into()], Map::new(), expires).await.unwrap();
    let id =
        producer.send_task("tasks.add", vec![2.into(), 3.into()], Map::new(), SendOptions::default()).await.unwrap();
    let registry = Registry::new().with(Task::new("tasks.add", add)).with(Task::new("tasks.nap", nap));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let config = WorkerConfig { concurrency: 1, shutdown_timeout: Duration::from_secs(1), ..WorkerConfig::default() };
    let (stop, run) = run_worker(&broker, &producer, registry, Arc::new(HangsOnRevoked(tx)), config);
    let mut last = next_final(&mut rx).await;
    if last.task_id != id {
        last = next_final(&mut rx).await; // the nap's
    }
    assert_eq!((last.task_id.as_str(), last.status, &last.result), (id.as_str(), State::Success, &Value::Int(5)));
    stop.cancel();
    run.await.unwrap();
}

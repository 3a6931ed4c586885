#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The conformance set run by a real celeriac worker on the in-memory broker:
//! what the suite observes (the stored outcome) for the tasks whose behaviour
//! depends on the runtime as much as on the task (retries, rejections,
//! priorities and headers kept across a retry).

use std::sync::Arc;
use std::time::Duration;

use celeriac_broker::{Broker, MemoryBroker, Producer, ProducerConfig, SendOptions};
use celeriac_protocol::result::{ResultMeta, State};
use celeriac_protocol::{Map, Signature, Value};
use celeriac_tasks::conformance::{task_name, MODULE};
use celeriac_tasks::TaskSetConfig;
use celeriac_worker::{ResultStore, StoreError, Worker, WorkerConfig};
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

struct Running {
    producer: Producer,
    results: mpsc::UnboundedReceiver<ResultMeta>,
    stop: CancellationToken,
    run: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start(suite_redis: &str) -> Running {
        let broker = Broker::Memory(MemoryBroker::default());
        let producer = Producer::new(broker.clone(), ProducerConfig::default());
        let config = TaskSetConfig::default().with_suite_redis_url(suite_redis);
        let registry = celeriac_tasks::registry(["conformance"], &config).unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let worker_config =
            WorkerConfig { concurrency: 2, shutdown_timeout: Duration::from_secs(5), ..WorkerConfig::default() };
        let worker = Worker::new(registry, broker, producer.clone(), Some(Arc::new(Channel(tx))), worker_config);
        let stop = CancellationToken::new();
        let token = stop.clone();
        let run = tokio::spawn(async move { worker.run(token).await.unwrap() });
        Running { producer, results: rx, stop, run }
    }

    async fn send(&self, short: &str, args: Vec<Value>, kwargs: Map, options: SendOptions) -> String {
        self.producer.send_task(&task_name(short), args, kwargs, options).await.unwrap()
    }

    /// Every record stored for `id` up to its final one.
    async fn outcome(&mut self, id: &str) -> Vec<ResultMeta> {
        let mut seen = Vec::new();
        loop {
            let meta = tokio::time::timeout(Duration::from_secs(10), self.results.recv())
                .await
                .unwrap_or_else(|_| panic!("no final result for {id}; stored so far: {seen:?}"))
                .unwrap();
            if meta.task_id != id {
                continue;
            }
            let done = meta.status.is_ready();
            seen.push(meta);
            if done {
                return seen;
            }
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.run.await.unwrap();
    }
}

fn exc_of(meta: &ResultMeta) -> (String, String, Vec<Value>) {
    let exc = meta.exception().unwrap().unwrap();
    (exc.exc_module.unwrap_or_default(), exc.exc_type, exc.exc_message)
}

fn s(text: &str) -> Value {
    Value::Str(text.into())
}

fn kw(pairs: &[(&str, Value)]) -> Map {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
}

const NO_REDIS: &str = "redis://127.0.0.1:1/0";

#[tokio::test]
async fn results_and_failures_as_the_suite_reads_them() {
    let mut w = Running::start(NO_REDIS);
    let id =
        w.send("add", vec![Value::Int(4), Value::Int(4)], kw(&[("z", Value::Int(4))]), SendOptions::default()).await;
    let last = w.outcome(&id).await.pop().unwrap();
    assert_eq!((last.status, last.result), (State::Success, Value::Int(12)));

    let id = w.send("fail", vec![], Map::new(), SendOptions::default()).await;
    let last = w.outcome(&id).await.pop().unwrap();
    assert_eq!(last.status, State::Failure);
    assert_eq!(exc_of(&last), (MODULE.to_owned(), "ExpectedException".to_owned(), vec![s("Task expected to fail")]));

    let id = w.send("add_not_typed", vec![Value::Int(5)], Map::new(), SendOptions::default()).await;
    let last = w.outcome(&id).await.pop().unwrap();
    assert_eq!((&last.status, exc_of(&last).1.as_str()), (&State::Failure, "TypeError"));
    w.stop().await;
}

#[tokio::test]
async fn retries_keep_priority_and_headers_and_end_as_celery_does() {
    let mut w = Running::start(NO_REDIS);
    let id = w.send("retry_once", vec![], Map::new(), SendOptions::default()).await;
    let records = w.outcome(&id).await;
    let states: Vec<_> = records.iter().map(|m| m.status.clone()).collect();
    assert_eq!(states, [State::Retry, State::Success]);
    assert_eq!(records[1].result, Value::Int(1));

    let id = w
        .send("retry_once_priority", vec![], Map::new(), SendOptions { priority: Some(7), ..Default::default() })
        .await;
    assert_eq!(w.outcome(&id).await.pop().unwrap().result, Value::Int(7));

    let headers = kw(&[("x-test-header", s("test-value"))]);
    let id = w.send("retry_once_headers", vec![], Map::new(), SendOptions { headers, ..Default::default() }).await;
    let last = w.outcome(&id).await.pop().unwrap();
    assert_eq!(last.result.get("x-test-header"), Some(&s("test-value")));

    // retry(exc=UnpickleableException('foo', 'bar'), max_retries=1): RETRY, then FAILURE with that exception.
    let retry_kwargs = Value::Map(kw(&[("countdown", Value::Int(0)), ("max_retries", Value::Int(1))]));
    let id = w
        .send(
            "retry_unpickleable",
            vec![s("foo"), s("bar")],
            kw(&[("retry_kwargs", retry_kwargs)]),
            SendOptions::default(),
        )
        .await;
    let records = w.outcome(&id).await;
    assert_eq!(records.iter().map(|m| m.status.clone()).collect::<Vec<_>>(), [State::Retry, State::Failure]);
    // RETRY stores the retried exception itself, as Celery's mark_as_retry.
    assert_eq!(exc_of(&records[0]), (MODULE.to_owned(), "UnpickleableException".to_owned(), vec![s("foo")]));
    assert_eq!(exc_of(&records[1]), (MODULE.to_owned(), "UnpickleableException".to_owned(), vec![s("foo")]));

    // Automatic retry on ValueError with backoff (base 1 s, jittered).
    let id = w.producer.send_task("auto_retry_class_task", vec![], Map::new(), SendOptions::default()).await.unwrap();
    assert_eq!(w.outcome(&id).await.pop().unwrap().result, Value::Int(1));
    w.stop().await;
}

#[tokio::test]
async fn a_requeued_rejection_is_redelivered_and_succeeds() {
    let mut w = Running::start(NO_REDIS);
    let id = w.send("reject_then_succeed", vec![], Map::new(), SendOptions::default()).await;
    let last = w.outcome(&id).await.pop().unwrap();
    assert_eq!((last.status, last.result), (State::Success, s("second-pass")));
    w.stop().await;
}

#[tokio::test]
async fn a_rejection_without_requeue_is_stored_as_failure() {
    let mut w = Running::start(NO_REDIS);
    let id = w.send("reject_without_requeue", vec![], Map::new(), SendOptions::default()).await;
    let last = w.outcome(&id).await.pop().unwrap();
    assert_eq!(last.status, State::Failure);
    assert_eq!(exc_of(&last).1, "Reject");
    w.stop().await;
}

#[tokio::test]
async fn fail_keeps_every_exception_argument() {
    let mut w = Running::start(NO_REDIS);
    let id = w.send("fail", vec![s("test")], Map::new(), SendOptions::default()).await;
    let last = w.outcome(&id).await.pop().unwrap();
    assert_eq!(exc_of(&last).2, vec![s("Task expected to fail"), s("test")]);
    w.stop().await;
}

#[tokio::test]
async fn an_old_style_errback_keeps_its_own_arguments() {
    let Some(server) = celeriac_tests::redis() else { return };
    let mut w = Running::start(&server.url());
    let mut errback = Signature::new(task_name("errback_old_style_with_args"));
    errback.args = vec![s("stored")];
    let options = SendOptions { link_error: vec![errback], ..Default::default() };
    let id = w.send("fail", vec![], Map::new(), options).await;
    assert_eq!(w.outcome(&id).await.pop().unwrap().status, State::Failure);
    let mut con = redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let got: Option<(String, String)> = redis::cmd("BLPOP").arg(&id).arg(10).query_async(&mut con).await.unwrap();
    assert_eq!(got.map(|(_, v)| v).as_deref(), Some("stored"));
    w.stop().await;
}

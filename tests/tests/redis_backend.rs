//! celeriac's Redis result backend against a real Redis and Python Celery 5.7
//! (tests/python/backend_peer.py): Python's `AsyncResult.get()` reads what Rust
//! stored and the reverse, waiting is woken by Python's publishes, groups and
//! chords are shared, and a chord whose header runs partly on a real Python
//! worker and partly in Rust fires its body exactly once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed assertion

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use celeriac_backend::{
    BackendError, BackendOptions, ChordOutcome, GetError, RedisBackend, RetryPolicy, StoreOutcome, TaskFailed,
};
use celeriac_protocol::envelope::Envelope;
use celeriac_protocol::result::{ExceptionInfo, Extended, GroupMeta, ResultMeta, ResultTuple, State};
use celeriac_protocol::time::PyDateTime;
use celeriac_protocol::{json, BigInt, Map, TaskMessage, Value};
use celeriac_tests::{CeleryWorker, RedisServer, SentinelServer, TestCertificates};
use futures_util::future::join_all;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

macro_rules! obj {
    ($($k:expr => $v:expr),* $(,)?) => {{
        #[allow(unused_mut)]
        let mut m = Map::new();
        $( m.insert(String::from($k), Value::from($v)); )*
        Value::Map(m)
    }};
}

fn list<T: Into<Value>>(items: impl IntoIterator<Item = T>) -> Value {
    Value::List(items.into_iter().map(Into::into).collect())
}

fn uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn now() -> PyDateTime {
    PyDateTime::now_utc()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("expected a str, got {v:?}"))
}

fn field<'a>(v: &'a Value, name: &str) -> &'a Value {
    v.get(name).unwrap_or_else(|| panic!("no {name:?} in {}", json::to_string(v).unwrap()))
}

/// A private Redis and the Python virtualenv, or a skip.
fn peers() -> Option<(RedisServer, PathBuf)> {
    let redis = celeriac_tests::redis()?;
    let python = celeriac_tests::python_peer()?;
    Some((redis, python))
}

/// Options for the test server: Celery's defaults, but retries that fit a test.
fn options(url: &str) -> BackendOptions {
    let mut o = BackendOptions::from_url(url).unwrap();
    o.transport.retry_policy = RetryPolicy {
        max_retries: Some(100),
        interval_start: Duration::ZERO,
        interval_step: Duration::from_millis(50),
        interval_max: Duration::from_millis(100),
    };
    o
}

async fn backend(url: &str) -> RedisBackend {
    RedisBackend::connect(options(url)).await.unwrap()
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap()
}

/// Checks `condition` every few milliseconds for up to 10 s: for states no event
/// announces (another connection's subscriptions).
async fn poll_until<F, Fut>(mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// Whether a waiter gets subscribed to `key` (one subscriber) within the wait.
async fn subscribed(url: &str, key: &str) -> bool {
    let con = raw(url).await;
    poll_until(|| {
        let (mut con, key) = (con.clone(), key.to_owned());
        async move {
            let (_, n): (String, i64) =
                redis::cmd("PUBSUB").arg("NUMSUB").arg(&key).query_async(&mut con).await.unwrap();
            n == 1
        }
    })
    .await
}

/// Runs tests/python/backend_peer.py.
struct Peer {
    python: PathBuf,
    url: String,
}

fn python_dir() -> PathBuf {
    celeriac_tests::repo_root().join("tests/python")
}

impl Peer {
    fn new(python: &Path, url: &str) -> Peer {
        Peer { python: python.to_owned(), url: url.to_owned() }
    }

    /// `python backend_peer.py <command>` with `request` (plus `url`) on stdin.
    async fn run(&self, command: &str, mut request: Value) -> Value {
        if let Value::Map(m) = &mut request {
            m.entry("url".to_owned()).or_insert_with(|| Value::from(self.url.as_str()));
        }
        let mut child = tokio::process::Command::new(&self.python)
            .arg(python_dir().join("backend_peer.py"))
            .arg(command)
            .current_dir(python_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(json::to_string(&request).unwrap().as_bytes()).await.unwrap();
        drop(stdin);
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await.unwrap().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "backend_peer.py {command} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("backend_peer.py {command} printed {stdout:?}: {e}"))
    }

    async fn read(&self, conf: Value, items: Vec<Value>) -> Vec<Value> {
        self.run("read", obj! {"conf" => conf, "items" => items}).await.as_list().unwrap().to_vec()
    }

    async fn store(&self, conf: Value, items: Vec<Value>) {
        self.run("store", obj! {"conf" => conf, "items" => items}).await;
    }
}

fn get_item(id: &str) -> Value {
    obj! {"id" => id, "get" => true, "timeout" => 10}
}

fn peek_item(id: &str) -> Value {
    obj! {"id" => id, "get" => false}
}

/// `(type, module, args)` of an exception Python described.
fn exc_of(described: &Value) -> (String, String, Value) {
    (s(field(described, "type")).to_owned(), s(field(described, "module")).to_owned(), field(described, "args").clone())
}

/// 1. Every kind of value Rust stores comes back equal from Python's `get()`,
///    with each serializer, and compressed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_gets_the_values_rust_stored() {
    let Some((redis, python)) = peers() else { return };
    let peer = Peer::new(&python, &redis.url());
    let common = || {
        vec![
            Value::Int(42),
            Value::from("a string"),
            Value::Null,
            Value::Bool(true),
            list([1, 2, 3]),
            obj! {"a" => 1, "b" => list([Value::from("x"), Value::Null]), "c" => obj!{"deep" => list([obj!{"x" => 1.5}])}},
            Value::from("unicode: é ✓ 😀 \u{2028} \"quotes\" 'single'"),
            Value::Int(-9_007_199_254_740_993),
        ]
    };
    let mut json_values = common();
    json_values.extend([
        Value::BigInt(BigInt::parse("1267650600228229401496703205376").unwrap()),
        Value::Float(0.1),
        Value::from(PyDateTime::parse_iso("2026-03-04T05:06:07.890123+02:00").unwrap()),
        obj! {"when" => PyDateTime::parse_iso("2025-12-31T23:59:59").unwrap()},
    ]);
    let cases =
        [("json", "", json_values), ("msgpack", "", common()), ("yaml", "", common()), ("json", "gzip", common())];
    let runs = cases.into_iter().map(|(serializer, compression, values)| {
        let (peer, redis) = (&peer, &redis);
        async move {
            let mut o = options(&redis.url());
            o.set_serializer(serializer).unwrap();
            o.set_compression(compression).unwrap();
            let backend = RedisBackend::connect(o).await.unwrap();
            let mut ids = Vec::new();
            for value in &values {
                let id = uid();
                assert_eq!(
                    backend.store(&ResultMeta::success(&id, value.clone(), now())).await.unwrap(),
                    StoreOutcome::Stored
                );
                ids.push(id);
            }
            let mut conf = obj! {"result_serializer" => serializer, "result_accept_content" => list([serializer])};
            if !compression.is_empty() {
                conf = obj! {"result_serializer" => serializer, "result_compression" => compression};
            }
            let read = peer.read(conf, ids.iter().map(|id| get_item(id)).collect()).await;
            for ((value, entry), id) in values.iter().zip(&read).zip(&ids) {
                assert_eq!(s(field(entry, "state")), "SUCCESS", "{serializer}: {entry:?}");
                assert_eq!(field(entry, "value"), value, "{serializer}/{compression}: {id}");
            }
            // And Rust reads back what it wrote.
            for (id, value) in ids.iter().zip(&values) {
                assert_eq!(&backend.get(id).await.unwrap().result, value);
            }
        }
    });
    join_all(runs).await;
}

/// 1b. `result_extended`: Python sees Rust's name/args/kwargs/worker/queue/retries,
///     and Rust reads Python's; without it Rust writes none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_results_both_ways() {
    let Some((redis, python)) = peers() else { return };
    let peer = Peer::new(&python, &redis.url());
    let mut o = options(&redis.url());
    o.result_extended = true;
    let backend = RedisBackend::connect(o).await.unwrap();
    let id = uid();
    let mut meta = ResultMeta::success(&id, Value::Int(5), now());
    meta.extended =
        Some(Extended::new("peer.add", list([2, 3]), obj! {"scale" => 1}, "rust@host", 2, Some("workflow.hpc")));
    meta.group_id = Some("g-1".into());
    meta.parent_id = Some("p-1".into());
    backend.store(&meta).await.unwrap();

    let py_id = uid();
    let request = obj! {
        "name" => "peer.add", "args" => list([7, 8]), "kwargs" => obj!{"k" => "v"},
        "worker" => "py@host", "retries" => 3, "queue" => "workflow.staging", "group" => "g-2", "parent_id" => "p-2",
    };
    let conf = obj! {"result_extended" => true};
    peer.store(conf.clone(), vec![obj! {"op" => "done", "id" => py_id.as_str(), "result" => 15, "request" => request}])
        .await;
    let read = peer.read(conf, vec![get_item(&id)]).await;
    let entry = &read[0];
    assert_eq!(field(entry, "value"), &Value::Int(5));
    assert_eq!(s(field(entry, "name")), "peer.add");
    assert_eq!(field(entry, "args"), &list([2, 3]));
    assert_eq!(field(entry, "kwargs"), &obj! {"scale" => 1});
    assert_eq!(s(field(entry, "worker")), "rust@host");
    assert_eq!(s(field(entry, "queue")), "workflow.hpc");
    assert_eq!(field(entry, "retries"), &Value::Int(2));

    let got = backend.get(&py_id).await.unwrap();
    let ext = got.extended.as_ref().unwrap();
    assert_eq!(ext.name.as_deref(), Some("peer.add"));
    assert_eq!((&ext.args, &ext.kwargs), (&list([7, 8]), &obj! {"k" => "v"}));
    assert_eq!(
        (ext.worker.as_deref(), ext.queue.as_deref(), ext.retries),
        (Some("py@host"), Some("workflow.staging"), Some(3))
    );
    assert_eq!((got.group_id.as_deref(), got.parent_id.as_deref()), (Some("g-2"), Some("p-2")));

    // Without result_extended the request fields stay out of the record.
    let plain = crate::backend(&redis.url()).await;
    let plain_id = uid();
    plain.store(&ResultMeta { task_id: plain_id.clone(), ..meta }).await.unwrap();
    let mut con = raw(&redis.url()).await;
    let text: String = redis::cmd("GET").arg(plain.keys().task(&plain_id)).query_async(&mut con).await.unwrap();
    assert!(
        text.starts_with(r#"{"status": "SUCCESS", "result": 5, "traceback": null, "children": [], "date_done": ""#),
        "{text}"
    );
    assert!(text.ends_with(&format!(r#""group_id": "g-1", "parent_id": "p-1", "task_id": "{plain_id}"}}"#)), "{text}");
}

/// 2. Rust's FAILURE/REVOKED/RETRY records make Python raise (or show) the
///    right exception types with the right args.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_raises_the_exceptions_rust_stored() {
    let Some((redis, python)) = peers() else { return };
    let peer = Peer::new(&python, &redis.url());
    let backend = backend(&redis.url()).await;
    let cases = [
        (ExceptionInfo::builtin("ValueError", "bad"), ("ValueError", "builtins", list(["bad"]))),
        (ExceptionInfo::builtin("KeyError", "missing"), ("KeyError", "builtins", list(["missing"]))),
        (
            ExceptionInfo::new("backend_peer", "CustomError", vec![Value::from("odd"), Value::Int(7)]),
            ("CustomError", "backend_peer", list([Value::from("odd"), Value::Int(7)])),
        ),
        // A type Python cannot import: Celery synthesizes it in celery.exceptions.
        (
            ExceptionInfo::new("celeriac.calibration", "CalibrationError", vec![Value::from("drift 3.2")]),
            ("CalibrationError", "celery.exceptions", list(["drift 3.2"])),
        ),
    ];
    let mut items = Vec::new();
    for (exc, _) in &cases {
        let id = uid();
        let tb = Some("Traceback (most recent call last):\n  celeriac worker\nValueError: bad\n".to_owned());
        backend.store(&ResultMeta::failure(&id, exc, tb, now())).await.unwrap();
        items.push(get_item(&id));
    }
    let revoked = uid();
    backend.store(&ResultMeta::revoked(&revoked, "terminated", now())).await.unwrap();
    items.push(get_item(&revoked));
    let retry = uid();
    backend
        .store(&ResultMeta::retry(&retry, &ExceptionInfo::builtin("RuntimeError", "try again"), None))
        .await
        .unwrap();
    items.push(peek_item(&retry));

    let read = peer.read(obj! {}, items).await;
    for ((_, (ty, module, args)), entry) in cases.iter().zip(&read) {
        assert_eq!(s(field(entry, "state")), "FAILURE");
        let raised = field(entry, "raised");
        assert_eq!(exc_of(raised), (ty.to_string(), module.to_string(), args.clone()), "{entry:?}");
        assert_eq!(field(raised, "is_exception"), &Value::Bool(true));
        assert!(s(field(entry, "traceback")).contains("celeriac worker"));
    }
    let entry = &read[4];
    assert_eq!(s(field(entry, "state")), "REVOKED");
    assert_eq!(
        exc_of(field(entry, "raised")),
        ("TaskRevokedError".into(), "celery.exceptions".into(), list(["terminated"]))
    );
    let entry = &read[5];
    assert_eq!(s(field(entry, "state")), "RETRY");
    assert_eq!(exc_of(field(entry, "result_exc")), ("RuntimeError".into(), "builtins".into(), list(["try again"])));
    assert_eq!(field(entry, "date_done"), &Value::Null);
}

/// 3. What Python's backend stores (`mark_as_done`, `mark_as_failure`, ...)
///    Rust reads with the same state, value and exception; `wait` and
///    `ResultHandle::get` re-raise failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_reads_what_python_stored() {
    let Some((redis, python)) = peers() else { return };
    let peer = Peer::new(&python, &redis.url());
    let backend = backend(&redis.url()).await;
    let ids: Vec<String> = (0..7).map(|_| uid()).collect();
    let value =
        obj! {"n" => 1, "when" => PyDateTime::parse_iso("2026-01-01T00:00:00+00:00").unwrap(), "l" => list([1.5])};
    peer.store(
        obj! {},
        vec![
            obj! {"op" => "done", "id" => ids[0].as_str(), "result" => value.clone()},
            obj! {"op" => "failure", "id" => ids[1].as_str(), "exc" => obj!{"type" => "ValueError", "args" => list(["bad"])}, "traceback" => "TB"},
            obj! {"op" => "failure", "id" => ids[2].as_str(), "exc" => obj!{"type" => "CustomError", "args" => list([Value::from("odd"), Value::Int(7)])}},
            obj! {"op" => "revoked", "id" => ids[3].as_str(), "reason" => "expired"},
            obj! {"op" => "retry", "id" => ids[4].as_str(), "exc" => obj!{"type" => "RuntimeError", "args" => list(["again"])}},
            obj! {"op" => "started", "id" => ids[5].as_str(), "pid" => 321, "hostname" => "py@peer"},
            obj! {"op" => "store_result", "id" => ids[6].as_str(), "result" => obj!{"done" => 3}, "state" => "PROGRESS"},
        ],
    )
    .await;

    // A record Python compressed (result_compression, Celery 5.7) reads the same.
    let packed = uid();
    peer.store(
        obj! {"result_compression" => "bzip2"},
        vec![obj! {"op" => "done", "id" => packed.as_str(), "result" => value.clone()}],
    )
    .await;
    let mut con = raw(&redis.url()).await;
    let stored: Vec<u8> = redis::cmd("GET").arg(backend.keys().task(&packed)).query_async(&mut con).await.unwrap();
    assert!(stored.starts_with(b"\x00celery-compressed\x00application/x-bz2\x00"), "{stored:?}");
    assert_eq!(backend.get(&packed).await.unwrap().result, value);

    let ok = backend.wait(&ids[0], Some(Duration::from_secs(5))).await.unwrap();
    assert_eq!((ok.status.clone(), &ok.result, ok.task_id.as_str()), (State::Success, &value, ids[0].as_str()));
    assert_eq!(ok.date_done.unwrap().offset.map(|o| o.seconds()), Some(0));
    assert_eq!(backend.result(&ids[0]).get(None).await.unwrap(), value);

    let failed = backend.result(&ids[1]).get(Some(Duration::from_secs(5))).await.unwrap_err();
    let failed = failed.task_failed().unwrap();
    assert_eq!(failed.exception, ExceptionInfo::builtin("ValueError", "bad"));
    assert_eq!((failed.state.clone(), failed.traceback.as_deref()), (State::Failure, Some("TB")));
    assert_eq!(failed.python_repr(), "ValueError('bad')");

    let GetError::Failed(custom) = backend.result(&ids[2]).get(None).await.unwrap_err() else { panic!() };
    assert_eq!(
        custom.exception,
        ExceptionInfo::new("backend_peer", "CustomError", vec![Value::from("odd"), Value::Int(7)])
    );

    let GetError::Failed(revoked) = backend.result(&ids[3]).get(None).await.unwrap_err() else { panic!() };
    assert_eq!((revoked.state, revoked.exception), (State::Revoked, ExceptionInfo::revoked("expired")));

    let retry = backend.get(&ids[4]).await.unwrap();
    assert_eq!(retry.status, State::Retry);
    assert_eq!(retry.exception().unwrap(), Some(ExceptionInfo::builtin("RuntimeError", "again")));
    let started = backend.get(&ids[5]).await.unwrap();
    assert_eq!((started.status, started.result), (State::Started, obj! {"pid" => 321, "hostname" => "py@peer"}));
    let progress = backend.get(&ids[6]).await.unwrap();
    assert_eq!((progress.status, progress.result), (State::Custom("PROGRESS".into()), obj! {"done" => 3}));
    assert!(!backend.result(&ids[4]).ready().await.unwrap());

    // get_many: one MGET, in order, PENDING where nothing is stored.
    let missing = uid();
    let many = backend.get_many(&[ids[0].as_str(), missing.as_str(), ids[3].as_str()]).await.unwrap();
    assert_eq!(
        many.iter().map(|m| (m.task_id.as_str(), m.status.clone())).collect::<Vec<_>>(),
        [(ids[0].as_str(), State::Success), (missing.as_str(), State::Pending), (ids[3].as_str(), State::Revoked)]
    );

    // forget: gone for both.
    backend.result(&ids[0]).forget().await.unwrap();
    assert_eq!(backend.get(&ids[0]).await.unwrap().status, State::Pending);
    let read = peer.read(obj! {}, vec![peek_item(&ids[0])]).await;
    assert_eq!(s(field(&read[0], "state")), "PENDING");
}

/// 4. `wait` is woken by Python's PUBLISH (the polling fallback is set to a
///    minute, so only pub/sub can wake it in time) and times out on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_is_woken_by_a_python_store_and_times_out() {
    let Some((redis, python)) = peers() else { return };
    let peer = Peer::new(&python, &redis.url());
    let mut o = options(&redis.url());
    o.poll_interval = Duration::from_secs(60);
    let backend = RedisBackend::connect(o).await.unwrap();
    let mut con = raw(&redis.url()).await;
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut con).await.unwrap();
    let id = uid();
    let waiter = {
        let (backend, id) = (backend.clone(), id.clone());
        tokio::spawn(async move { backend.wait(&id, Some(Duration::from_secs(30))).await })
    };
    // Python stores only once Rust is subscribed, so the record arrives by PUBLISH.
    let key = backend.keys().task(&id);
    peer.store(
        obj! {},
        vec![
            obj! {"op" => "await_subscriber", "key" => key.as_str()},
            obj! {"op" => "started", "id" => id.as_str()},
            obj! {"op" => "done", "id" => id.as_str(), "result" => "woken"},
        ],
    )
    .await;
    let stored_at = Instant::now();
    let meta = tokio::time::timeout(Duration::from_secs(10), waiter).await.unwrap().unwrap().unwrap();
    assert_eq!((meta.status, meta.result), (State::Success, Value::from("woken")));
    assert!(stored_at.elapsed() < Duration::from_secs(5), "woken {:?} after the store", stored_at.elapsed());
    // One GET by the waiter (after SUBSCRIBE) and one per Python store: the
    // waiter was woken by the PUBLISH, not by reading again.
    let stats: String = redis::cmd("INFO").arg("commandstats").query_async(&mut con).await.unwrap();
    let gets = stats.lines().find_map(|l| l.strip_prefix("cmdstat_get:calls=")).and_then(|l| l.split(',').next());
    assert_eq!(gets, Some("3"), "{stats}");
    assert_eq!(backend.waiting(), 0);

    // A task nobody stores: Timeout after the timeout, not before, not much after.
    let start = Instant::now();
    let err = backend.wait(&uid(), Some(Duration::from_millis(300))).await.unwrap_err();
    let waited = start.elapsed();
    assert!(matches!(err, BackendError::Timeout { .. }), "{err}");
    assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(3), "{waited:?}");
    let err = backend.result(&uid()).get(Some(Duration::from_millis(50))).await.unwrap_err();
    assert!(matches!(err, GetError::Timeout { .. }), "{err}");

    // A record stored before the wait starts is found by the read after SUBSCRIBE.
    let early = uid();
    backend.store(&ResultMeta::success(&early, Value::Int(1), now())).await.unwrap();
    assert_eq!(backend.wait(&early, Some(Duration::from_secs(1))).await.unwrap().result, Value::Int(1));
}

/// 4b. Hundreds of waiters share one pub/sub connection; each gets its task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_waiters_share_one_pubsub_connection() {
    let Some(redis) = celeriac_tests::redis() else { return };
    let mut o = options(&redis.url());
    o.poll_interval = Duration::from_secs(60);
    let backend = RedisBackend::connect(o).await.unwrap();
    let ids: Vec<String> = (0..300).map(|_| uid()).collect();
    // Two waiters per task.
    let waiters: Vec<_> = ids
        .iter()
        .chain(ids.iter())
        .map(|id| {
            let (backend, id) = (backend.clone(), id.clone());
            tokio::spawn(async move { backend.wait(&id, Some(Duration::from_secs(20))).await })
        })
        .collect();
    let mut con = raw(&redis.url()).await;
    let subscribed = poll_until(|| {
        let mut con = con.clone();
        async move {
            let channels: Vec<String> =
                redis::cmd("PUBSUB").arg("CHANNELS").arg("celery-task-meta-*").query_async(&mut con).await.unwrap();
            channels.len() == 300
        }
    })
    .await;
    assert!(subscribed, "the waiters never all subscribed");
    let clients: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut con).await.unwrap();
    let pubsub_connections = clients.lines().filter(|l| !l.contains(" sub=0 ")).count();
    assert_eq!(pubsub_connections, 1, "{clients}");
    assert_eq!(backend.waiting(), ids.len());

    let writer = crate::backend(&redis.url()).await;
    join_all(ids.iter().enumerate().map(|(i, id)| {
        let writer = &writer;
        async move { writer.store(&ResultMeta::success(id, Value::from(i as i64), now())).await.unwrap() }
    }))
    .await;
    for (i, waiter) in join_all(waiters).await.into_iter().enumerate() {
        let meta = waiter.unwrap().unwrap();
        assert_eq!(meta.result, Value::from((i % ids.len()) as i64));
    }
    assert_eq!(backend.waiting(), 0);
}

/// 4c. After Redis restarts, stores reconnect and waiters re-subscribe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_redis_restart() {
    let Some(mut redis) = celeriac_tests::redis() else { return };
    let mut o = options(&redis.url());
    o.poll_interval = Duration::from_secs(60);
    let backend = RedisBackend::connect(o).await.unwrap();
    let id = uid();
    let waiter = {
        let (backend, id) = (backend.clone(), id.clone());
        tokio::spawn(async move { backend.wait(&id, Some(Duration::from_secs(30))).await })
    };
    assert!(subscribed(&redis.url(), &backend.keys().task(&id)).await, "the waiter never subscribed");
    let redis = tokio::task::spawn_blocking(move || {
        redis.restart().unwrap();
        redis
    })
    .await
    .unwrap();
    assert_eq!(
        backend.store(&ResultMeta::success(&id, Value::from("after"), now())).await.unwrap(),
        StoreOutcome::Stored
    );
    let meta = tokio::time::timeout(Duration::from_secs(20), waiter).await.unwrap().unwrap().unwrap();
    assert_eq!(meta.result, Value::from("after"));
    assert_eq!(backend.get(&id).await.unwrap().result, Value::from("after"));
    drop(redis);
}

/// 5. A stored SUCCESS is never overwritten, whoever stored it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_is_never_overwritten() {
    let Some((redis, python)) = peers() else { return };
    let peer = Peer::new(&python, &redis.url());
    let backend = backend(&redis.url()).await;
    let mut con = raw(&redis.url()).await;
    let id = uid();
    // STARTED then SUCCESS: overwrites are fine until SUCCESS.
    assert_eq!(backend.store(&ResultMeta::started(&id, 1, "w@h")).await.unwrap(), StoreOutcome::Stored);
    assert_eq!(backend.store(&ResultMeta::success(&id, Value::Int(1), now())).await.unwrap(), StoreOutcome::Stored);
    let key = backend.keys().task(&id);
    let before: Vec<u8> = redis::cmd("GET").arg(&key).query_async(&mut con).await.unwrap();
    let exc = ExceptionInfo::builtin("RuntimeError", "late");
    for late in [
        ResultMeta::retry(&id, &exc, None),
        ResultMeta::started(&id, 2, "w2@h"),
        ResultMeta::failure(&id, &exc, None, now()),
        ResultMeta::success(&id, Value::Int(2), now()),
    ] {
        assert_eq!(backend.store(&late).await.unwrap(), StoreOutcome::KeptSuccess, "{}", late.status);
    }
    let after: Vec<u8> = redis::cmd("GET").arg(&key).query_async(&mut con).await.unwrap();
    assert_eq!(before, after);

    // Python's SUCCESS is kept against Rust, and Rust's against Python.
    let py_id = uid();
    peer.store(obj! {}, vec![obj! {"op" => "done", "id" => py_id.as_str(), "result" => "py"}]).await;
    assert_eq!(
        backend.store(&ResultMeta::failure(&py_id, &exc, None, now())).await.unwrap(),
        StoreOutcome::KeptSuccess
    );
    peer.store(
        obj! {},
        vec![
            obj! {"op" => "retry", "id" => id.as_str(), "exc" => obj!{"type" => "RuntimeError", "args" => list(["x"])}},
        ],
    )
    .await;
    let read = peer.read(obj! {}, vec![get_item(&py_id), get_item(&id)]).await;
    assert_eq!(field(&read[0], "value"), &Value::from("py"));
    assert_eq!(field(&read[1], "value"), &Value::Int(1));
}

/// 6. Groups: saved by one side, restored by the other, deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_both_ways() {
    let Some((redis, python)) = peers() else { return };
    let peer = Peer::new(&python, &redis.url());
    let backend = backend(&redis.url()).await;
    let gid = uid();
    let (a, b, inner, c) = (uid(), uid(), uid(), uid());
    let group = GroupMeta::new(ResultTuple::group(
        &gid,
        vec![
            ResultTuple::task(&a),
            ResultTuple::task(&b).with_parent(ResultTuple::task(&a)),
            ResultTuple::group(&inner, vec![ResultTuple::task(&c)]),
        ],
    ));
    backend.save_group(&gid, &group).await.unwrap();
    let restored = peer.run("group_restore", obj! {"group" => gid.as_str()}).await;
    assert_eq!(restored, group.result.to_value());
    let mut con = raw(&redis.url()).await;
    let ttl: i64 = redis::cmd("TTL").arg(backend.keys().group(&gid)).query_async(&mut con).await.unwrap();
    assert!((86_390..=86_400).contains(&ttl), "{ttl}");

    let py_gid = uid();
    peer.run(
        "group_save",
        obj! {"group" => py_gid.as_str(), "members" => list([Value::from(a.as_str()), obj!{"group" => inner.as_str(), "members" => list([c.as_str()])}])},
    )
    .await;
    let got = backend.restore_group(&py_gid).await.unwrap().unwrap();
    assert_eq!(got.group_id(), py_gid);
    assert_eq!(got.members(), [ResultTuple::task(&a), ResultTuple::group(&inner, vec![ResultTuple::task(&c)])]);

    backend.delete_group(&py_gid).await.unwrap();
    assert!(backend.restore_group(&py_gid).await.unwrap().is_none());
    assert_eq!(peer.run("group_restore", obj! {"group" => py_gid.as_str()}).await, Value::Null);
}

/// The chord body messages Python's backend published (to the `body` queue).
async fn body_messages(url: &str) -> Vec<TaskMessage> {
    queue_messages(url, "body").await
}

async fn queue_messages(url: &str, queue: &str) -> Vec<TaskMessage> {
    let mut con = raw(url).await;
    let raw: Vec<Vec<u8>> = redis::cmd("LRANGE").arg(queue).arg(0).arg(-1).query_async(&mut con).await.unwrap();
    raw.iter()
        .rev()
        .map(|bytes| TaskMessage::from_message(&Envelope::from_slice(bytes).unwrap().message).unwrap())
        .collect()
}

async fn get_string(url: &str, key: &str) -> Option<String> {
    let mut con = raw(url).await;
    redis::cmd("GET").arg(key).query_async(&mut con).await.unwrap()
}

async fn exists(url: &str, keys: &[&String]) -> i64 {
    let mut con = raw(url).await;
    redis::cmd("EXISTS").arg(keys).query_async(&mut con).await.unwrap()
}

fn part(group: &str, index: i64, id: &str, body: &str, result: Value) -> Value {
    obj! {"group" => group, "index" => index, "id" => id, "body_id" => body, "result" => result}
}

/// 7a. Python sets the size, Rust completes every part (out of order, with a
///     duplicate): the body results come in group_index order, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_completes_a_chord_python_sized() {
    let Some((redis, python)) = peers() else { return };
    let peer = Peer::new(&python, &redis.url());
    let backend = backend(&redis.url()).await;
    let gid = uid();
    peer.run("set_chord_size", obj! {"group" => gid.as_str(), "size" => 4}).await;
    let ids: Vec<String> = (0..4).map(|_| uid()).collect();
    let mut outcomes = Vec::new();
    for (n, i) in [2usize, 0, 2, 3, 1].into_iter().enumerate() {
        // The second run of part 2 returns something else, and must not count.
        let result = Value::from(if n == 2 { 999 } else { i as i64 * 10 });
        let outcome =
            backend.on_chord_part_return(&gid, Some(i as i64), &ids[i], &State::Success, &result).await.unwrap();
        outcomes.push((n, outcome));
    }
    assert_eq!(outcomes[0].1, ChordOutcome::NotReady { ready: 1, total: Some(4) });
    assert_eq!(outcomes[1].1, ChordOutcome::NotReady { ready: 2, total: Some(4) });
    // The duplicate of part 2 counts once, with its first result.
    assert_eq!(outcomes[2].1, ChordOutcome::NotReady { ready: 2, total: Some(4) });
    assert_eq!(outcomes[3].1, ChordOutcome::NotReady { ready: 3, total: Some(4) });
    let ChordOutcome::Ready(ready) = outcomes.pop().unwrap().1 else { panic!("{outcomes:?}") };
    assert_eq!(ready.results, [0, 10, 20, 30].map(Value::from));
    let keys = backend.keys().chord(&gid);
    assert_eq!(get_string(&redis.url(), &keys.claim).await.as_deref().map(str::len), Some(32));
    // While this worker holds the claim, a redelivered part fires nothing, on
    // either side.
    let again = backend.on_chord_part_return(&gid, Some(3), &ids[3], &State::Success, &Value::Int(30)).await.unwrap();
    assert_eq!(again, ChordOutcome::ClaimedElsewhere);
    let body = uid();
    peer.run("chord_part", obj! {"items" => list([part(&gid, 3, &ids[3], &body, Value::Int(30))])}).await;
    assert!(body_messages(&redis.url()).await.is_empty());
    assert!(backend.finish_chord(&ready.claim).await.unwrap());
    assert_eq!(get_string(&redis.url(), &keys.claim).await.as_deref(), Some("done"));
    assert_eq!(exists(&redis.url(), &[&keys.join, &keys.size, &keys.done, &keys.total]).await, 0);
    // A late duplicate neither fires nor re-creates the join keys.
    let late = backend.on_chord_part_return(&gid, Some(1), &ids[1], &State::Success, &Value::Int(10)).await.unwrap();
    assert_eq!(late, ChordOutcome::AlreadyDone);
    assert_eq!(exists(&redis.url(), &[&keys.join, &keys.done]).await, 0);
    // A second cleanup finds the claim no longer its own.
    assert!(!backend.finish_chord(&ready.claim).await.unwrap());
    // Python agrees: a late part from Python does nothing either.
    peer.run("chord_part", obj! {"items" => list([part(&gid, 0, &ids[0], &body, Value::Int(0))])}).await;
    assert!(body_messages(&redis.url()).await.is_empty());
}

/// 7b. Rust sets the size, Python completes every part: Python publishes the
///     body once, with the results in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_completes_a_chord_rust_sized() {
    let Some((redis, python)) = peers() else { return };
    let peer = Peer::new(&python, &redis.url());
    let backend = backend(&redis.url()).await;
    let (gid, body) = (uid(), uid());
    backend.set_chord_size(&gid, 3).await.unwrap();
    let keys = backend.keys().chord(&gid);
    let mut con = raw(&redis.url()).await;
    let ttl: i64 = redis::cmd("TTL").arg(&keys.size).query_async(&mut con).await.unwrap();
    assert!((86_390..=86_400).contains(&ttl), "{ttl}");
    let ids: Vec<String> = (0..3).map(|_| uid()).collect();
    let items = [2usize, 0, 1].map(|i| part(&gid, i as i64, &ids[i], &body, list([Value::from(i as i64)])));
    peer.run("chord_part", obj! {"items" => Value::List(items.to_vec())}).await;
    let bodies = body_messages(&redis.url()).await;
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0].headers.id, body);
    assert_eq!(bodies[0].args[0], list([list([0]), list([1]), list([2])]));
    assert_eq!(get_string(&redis.url(), &keys.claim).await.as_deref(), Some("done"));
    // Rust's late duplicate is ignored.
    let late = backend.on_chord_part_return(&gid, Some(0), &ids[0], &State::Success, &Value::Null).await.unwrap();
    assert_eq!(late, ChordOutcome::AlreadyDone);
}

/// 7c. Parts completed by both sides, in both orders: whoever records the last
///     part fires the body, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_chords_fire_once_whoever_finishes() {
    let Some((redis, python)) = peers() else { return };
    let peer = Peer::new(&python, &redis.url());
    let backend = backend(&redis.url()).await;
    // Chord X: Rust 0 and 2, Python 1 (and a duplicate of 0), Rust 3 last.
    let (x, x_body) = (uid(), uid());
    let xs: Vec<String> = (0..4).map(|_| uid()).collect();
    backend.set_chord_size(&x, 4).await.unwrap();
    for i in [0usize, 2] {
        let o = backend.on_chord_part_return(&x, Some(i as i64), &xs[i], &State::Success, &Value::from(i as i64)).await;
        assert!(matches!(o.unwrap(), ChordOutcome::NotReady { .. }));
    }
    peer.run(
        "chord_part",
        obj! {"items" => list([part(&x, 1, &xs[1], &x_body, Value::Int(1)), part(&x, 0, &xs[0], &x_body, Value::Int(0))])},
    )
    .await;
    let last = backend.on_chord_part_return(&x, Some(3), &xs[3], &State::Success, &Value::Int(3)).await.unwrap();
    let ChordOutcome::Ready(ready) = last else { panic!("{last:?}") };
    assert_eq!(ready.results, [0, 1, 2, 3].map(Value::from));
    assert!(backend.finish_chord(&ready.claim).await.unwrap());
    assert!(body_messages(&redis.url()).await.is_empty(), "Python sent a body Rust was to send");

    // Chord Y: sized by Python, Rust 0 and 1, Python 3 then 2 last.
    let (y, y_body) = (uid(), uid());
    let ys: Vec<String> = (0..4).map(|_| uid()).collect();
    peer.run("set_chord_size", obj! {"group" => y.as_str(), "size" => 4}).await;
    for i in [1usize, 0] {
        let result = obj! {"i" => i as i64};
        let o = backend.on_chord_part_return(&y, Some(i as i64), &ys[i], &State::Success, &result).await.unwrap();
        assert!(matches!(o, ChordOutcome::NotReady { .. }), "{o:?}");
    }
    let py_parts = [3usize, 2].map(|i| part(&y, i as i64, &ys[i], &y_body, obj! {"i" => i as i64}));
    peer.run("chord_part", obj! {"items" => Value::List(py_parts.to_vec())}).await;
    let bodies = body_messages(&redis.url()).await;
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0].args[0], list((0..4).map(|i| obj! {"i" => i})));
}

/// 7d. Both sides record parts of one chord at the same time (Python in one
///     process, Rust from 20 concurrent tasks): exactly one of them fires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_parts_from_both_sides_fire_once() {
    let Some((redis, python)) = peers() else { return };
    let peer = Peer::new(&python, &redis.url());
    let backend = backend(&redis.url()).await;
    let (gid, body) = (uid(), uid());
    let n = 40;
    let ids: Vec<String> = (0..n).map(|_| uid()).collect();
    backend.set_chord_size(&gid, n as u64).await.unwrap();
    let py_items: Vec<Value> =
        (0..n).filter(|i| i % 2 == 1).map(|i| part(&gid, i as i64, &ids[i], &body, Value::from(i as i64))).collect();
    let python_side = peer.run("chord_part", obj! {"items" => py_items});
    let rust_side = join_all((0..n).filter(|i| i % 2 == 0).map(|i| {
        let (backend, gid, id) = (backend.clone(), gid.clone(), ids[i].clone());
        tokio::spawn(async move {
            backend.on_chord_part_return(&gid, Some(i as i64), &id, &State::Success, &Value::from(i as i64)).await
        })
    }));
    let (_, rust_outcomes) = tokio::join!(python_side, rust_side);
    let readies: Vec<_> = rust_outcomes
        .into_iter()
        .filter_map(|o| match o.unwrap().unwrap() {
            ChordOutcome::Ready(ready) => Some(ready),
            ChordOutcome::NotReady { .. } | ChordOutcome::ClaimedElsewhere => None,
            other => panic!("{other:?}"),
        })
        .collect();
    let bodies = body_messages(&redis.url()).await;
    assert_eq!(readies.len() + bodies.len(), 1, "the body fired {} times", readies.len() + bodies.len());
    let want = list((0..n as i64).map(Value::from));
    match readies.first() {
        Some(ready) => {
            assert_eq!(Value::List(ready.results.clone()), want);
            assert!(backend.finish_chord(&ready.claim).await.unwrap());
        }
        None => assert_eq!(bodies[0].args[0], want),
    }
}

/// 7e. A failed header part fails the chord with the same ChordError text on
///     both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_part_fails_the_chord_on_both_sides() {
    let Some((redis, python)) = peers() else { return };
    let peer = Peer::new(&python, &redis.url());
    let backend = backend(&redis.url()).await;
    // Python records the failure, Rust completes the chord.
    let (gid, body, bad, good) = (uid(), uid(), uid(), uid());
    backend.set_chord_size(&gid, 2).await.unwrap();
    let failing = obj! {"group" => gid.as_str(), "index" => 0, "id" => bad.as_str(), "body_id" => body.as_str(),
    "state" => "FAILURE", "exc" => obj!{"type" => "ValueError", "args" => list(["bad"])}};
    peer.run("chord_part", obj! {"items" => list([failing])}).await;
    let outcome = backend.on_chord_part_return(&gid, Some(1), &good, &State::Success, &Value::Int(1)).await.unwrap();
    let ChordOutcome::Failed(failure) = outcome else { panic!("{outcome:?}") };
    assert_eq!(failure.message, format!("Dependency {bad} raised ValueError('bad')"));
    assert_eq!(failure.culprit.as_deref(), Some(bad.as_str()));
    assert_eq!(get_string(&redis.url(), &backend.keys().chord(&gid).size).await, None);
    // The worker stores the ChordError on the body, as chord_error_from_stack does.
    backend.store(&ResultMeta::failure(&body, &failure.exception(), None, now())).await.unwrap();
    let read = peer.read(obj! {}, vec![get_item(&body)]).await;
    assert_eq!(
        exc_of(field(&read[0], "raised")),
        ("ChordError".into(), "celery.exceptions".into(), list([failure.message.as_str()]))
    );

    // Rust records the failure, Python completes the chord and fails the body.
    let (gid, body, bad, good) = (uid(), uid(), uid(), uid());
    peer.run("set_chord_size", obj! {"group" => gid.as_str(), "size" => 2}).await;
    let exc = ExceptionInfo::builtin("ValueError", "bad");
    backend.store(&ResultMeta::failure(&bad, &exc, None, now())).await.unwrap();
    let o = backend.on_chord_part_return(&gid, Some(0), &bad, &State::Failure, &exc.to_value()).await.unwrap();
    assert_eq!(o, ChordOutcome::NotReady { ready: 1, total: Some(2) });
    peer.run("chord_part", obj! {"items" => list([part(&gid, 1, &good, &body, Value::Int(1))])}).await;
    assert!(body_messages(&redis.url()).await.is_empty());
    let GetError::Failed(failed) = backend.result(&body).get(Some(Duration::from_secs(5))).await.unwrap_err() else {
        panic!()
    };
    let want = TaskFailed {
        task_id: body.clone(),
        state: State::Failure,
        exception: celeriac_backend::chord_error(&format!("Dependency {bad} raised ValueError('bad')")),
        traceback: failed.traceback.clone(),
    };
    assert_eq!(failed, want);
}

/// 7f. `add_to_chord`, unordered joins (`result_chord_ordered=False` on both
///     sides) and headers with nested groups (`apply_chord`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_parts_unordered_joins_and_nested_headers() {
    let Some((redis, python)) = peers() else { return };
    let peer = Peer::new(&python, &redis.url());
    let backend = backend(&redis.url()).await;

    // add_to_chord: size 1 plus one added part.
    let gid = uid();
    backend.set_chord_size(&gid, 1).await.unwrap();
    assert_eq!(backend.add_to_chord(&gid).await.unwrap(), 1);
    let o = backend.on_chord_part_return(&gid, Some(0), &uid(), &State::Success, &Value::Int(0)).await.unwrap();
    assert_eq!(o, ChordOutcome::NotReady { ready: 1, total: Some(2) });
    let o = backend.on_chord_part_return(&gid, None, &uid(), &State::Success, &Value::Int(9)).await.unwrap();
    let ChordOutcome::Ready(ready) = o else { panic!("{o:?}") };
    assert_eq!(ready.results, [Value::Int(0), Value::Int(9)]);

    // Unordered: completion order, Python joining Rust's RPUSHed parts.
    let mut o = options(&redis.url());
    o.transport.result_chord_ordered = false;
    let unordered = RedisBackend::connect(o).await.unwrap();
    let (gid, body) = (uid(), uid());
    unordered.set_chord_size(&gid, 3).await.unwrap();
    for i in [2, 0] {
        unordered.on_chord_part_return(&gid, Some(i), &uid(), &State::Success, &Value::from(i)).await.unwrap();
    }
    peer.run(
        "chord_part",
        obj! {"conf" => obj!{"result_backend_transport_options" => obj!{"result_chord_ordered" => false}},
        "items" => list([part(&gid, 1, &uid(), &body, Value::Int(1))])},
    )
    .await;
    assert_eq!(body_messages(&redis.url()).await[0].args[0], list([2, 0, 1]));

    // A header with a nested group: the join keeps the nesting.
    let (gid, inner) = (uid(), uid());
    let (a, b, c) = (uid(), uid(), uid());
    let header = GroupMeta::new(ResultTuple::group(
        &gid,
        vec![ResultTuple::task(&a), ResultTuple::group(&inner, vec![ResultTuple::task(&b), ResultTuple::task(&c)])],
    ));
    assert!(backend.apply_chord(&gid, &header).await.unwrap());
    assert!(!backend
        .apply_chord(&uid(), &GroupMeta::new(ResultTuple::group("flat", vec![ResultTuple::task(&a)])))
        .await
        .unwrap());
    assert_eq!(peer.run("group_restore", obj! {"group" => gid.as_str()}).await, header.result.to_value());
    backend.set_chord_size(&gid, 3).await.unwrap();
    for (i, id) in [&a, &b, &c].into_iter().enumerate() {
        let value = Value::from(i as i64 + 100);
        backend.store(&ResultMeta::success(id, value.clone(), now())).await.unwrap();
        let o = backend.on_chord_part_return(&gid, Some(i as i64), id, &State::Success, &value).await.unwrap();
        if i == 2 {
            let ChordOutcome::Ready(ready) = o else { panic!("{o:?}") };
            assert_eq!(ready.results, [Value::Int(100), list([101, 102])]);
        }
    }
}

/// 8. TTLs follow result_expires / result_failure_expires, and a
///    global_keyprefix gives Python's keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_and_key_prefix_match_python() {
    let Some((redis, python)) = peers() else { return };
    let peer = Peer::new(&python, &redis.url());
    let mut con = raw(&redis.url()).await;
    let ttl = |key: String| {
        let mut con = con.clone();
        async move { redis::cmd("TTL").arg(key).query_async::<i64>(&mut con).await.unwrap() }
    };
    let mut o = options(&redis.url());
    o.result_expires = Some(Duration::from_secs(600));
    o.result_failure_expires = Some(Duration::from_secs(60));
    let short = RedisBackend::connect(o).await.unwrap();
    let (ok, failed) = (uid(), uid());
    short.store(&ResultMeta::success(&ok, Value::Null, now())).await.unwrap();
    short.store(&ResultMeta::failure(&failed, &ExceptionInfo::builtin("ValueError", "x"), None, now())).await.unwrap();
    let t = ttl(short.keys().task(&ok)).await;
    assert!((590..=600).contains(&t), "{t}");
    let t = ttl(short.keys().task(&failed)).await;
    assert!((50..=60).contains(&t), "{t}");
    let mut o = options(&redis.url());
    o.result_expires = None;
    let forever = RedisBackend::connect(o).await.unwrap();
    let id = uid();
    forever.store(&ResultMeta::success(&id, Value::Null, now())).await.unwrap();
    assert_eq!(ttl(forever.keys().task(&id)).await, -1);
    // Python's result_expires=600 gives the same TTL.
    let py = uid();
    peer.store(obj! {"result_expires" => 600}, vec![obj! {"op" => "done", "id" => py.as_str(), "result" => 1}]).await;
    let t = ttl(short.keys().task(&py)).await;
    assert!((590..=600).contains(&t), "{t}");

    // global_keyprefix: the same keys as Python's, and each reads the other's.
    let conf = obj! {"result_backend_transport_options" => obj!{"global_keyprefix" => "site"}};
    let mut o = options(&redis.url());
    o.transport.global_keyprefix = "site".into();
    let prefixed = RedisBackend::connect(o).await.unwrap();
    let keys = peer.run("keys", obj! {"conf" => conf.clone(), "task" => "T", "group" => "G"}).await;
    assert_eq!(s(field(&keys, "task")), prefixed.keys().task("T"));
    assert_eq!(s(field(&keys, "group")), prefixed.keys().group("G"));
    assert_eq!(s(field(&keys, "chord_join")), prefixed.keys().chord("G").join);
    assert_eq!(prefixed.keys().task("T"), "site_celery-task-meta-T");
    let (rust_id, py_id) = (uid(), uid());
    prefixed.store(&ResultMeta::success(&rust_id, Value::from("from rust"), now())).await.unwrap();
    peer.store(conf.clone(), vec![obj! {"op" => "done", "id" => py_id.as_str(), "result" => "from python"}]).await;
    let read = peer.read(conf, vec![get_item(&rust_id)]).await;
    assert_eq!(field(&read[0], "value"), &Value::from("from rust"));
    assert_eq!(prefixed.get(&py_id).await.unwrap().result, Value::from("from python"));
    let exists: bool =
        redis::cmd("EXISTS").arg(format!("site_celery-task-meta-{py_id}")).query_async(&mut con).await.unwrap();
    assert!(exists);
    assert_eq!(forever.get(&py_id).await.unwrap().status, State::Pending);
}

/// Other endpoints: a password, the unix socket (Celery's `redis+socket://`
/// spelling, read by Python too), and the errors for wrong ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_and_unix_sockets() {
    let Some(redis) = celeriac_tests::or_skip("redis-server", RedisServer::start_with(&["--requirepass", "s3cret"]))
    else {
        return;
    };
    let url = format!("redis://:s3cret@127.0.0.1:{}/2", redis.port());
    let backend = RedisBackend::connect(options(&url)).await.unwrap();
    let id = uid();
    backend.store(&ResultMeta::success(&id, Value::Int(1), now())).await.unwrap();
    assert_eq!(backend.get(&id).await.unwrap().result, Value::Int(1));
    assert!(!format!("{backend:?}").contains("s3cret"));
    let wrong = format!("redis://:nope@127.0.0.1:{}/2", redis.port());
    let err = RedisBackend::connect(options(&wrong)).await.unwrap_err();
    assert!(matches!(err, BackendError::Connect { .. }), "{err}");
    assert!(!err.to_string().contains("nope"), "{err}");

    let socket = format!("redis+socket://:s3cret@{}?virtual_host=2", redis.socket_path().display());
    let over_socket = RedisBackend::connect(options(&socket)).await.unwrap();
    assert_eq!(over_socket.get(&id).await.unwrap().result, Value::Int(1));
    // Pub/sub authenticates over the socket too: the waiter is subscribed.
    let later = uid();
    let waiter = {
        let (backend, later) = (over_socket.clone(), later.clone());
        tokio::spawn(async move { backend.wait(&later, Some(Duration::from_secs(10))).await })
    };
    assert!(subscribed(&url, &over_socket.keys().task(&later)).await);
    backend.store(&ResultMeta::success(&later, Value::Int(2), now())).await.unwrap();
    assert_eq!(waiter.await.unwrap().unwrap().result, Value::Int(2));
    if let Some(python) = celeriac_tests::python_peer() {
        let peer = Peer::new(&python, &socket);
        let read = peer.read(obj! {}, vec![get_item(&id)]).await;
        assert_eq!(field(&read[0], "value"), &Value::Int(1));
    }
    let err = RedisBackend::from_url(&format!("redis://127.0.0.1:{}/0", celeriac_tests::free_port().unwrap()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is Redis running"), "{err}");
}

/// TLS with verification against a private CA and a client certificate (the
/// server requires one), and refusal without either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_certificate_verification() {
    if celeriac_tests::redis().is_none() {
        return;
    }
    let certs = TestCertificates::generate().unwrap();
    let (ca, client_cert, client_key) = (certs.path("ca.pem"), certs.path("client.pem"), certs.path("client.key"));
    let redis = RedisServer::start_tls(&certs).unwrap();
    let tls_port = redis.tls_port().unwrap();
    let base = format!("rediss://127.0.0.1:{tls_port}/0");
    let client = format!("ssl_certfile={client_cert}&ssl_keyfile={client_key}");
    let url = format!("{base}?ssl_cert_reqs=required&ssl_ca_certs={ca}&{client}");
    let backend = RedisBackend::connect(options(&url)).await.unwrap();
    let id = uid();
    backend.store(&ResultMeta::success(&id, Value::from("over tls"), now())).await.unwrap();
    assert_eq!(backend.get(&id).await.unwrap().result, Value::from("over tls"));
    // The same record over plain TCP.
    assert_eq!(crate::backend(&redis.url()).await.get(&id).await.unwrap().result, Value::from("over tls"));
    // ssl_cert_reqs=none: encrypted without verification, as Celery allows (with a warning).
    let unverified = RedisBackend::connect(options(&format!("{base}?ssl_cert_reqs=CERT_NONE&{client}"))).await.unwrap();
    assert_eq!(unverified.get(&id).await.unwrap().result, Value::from("over tls"));
    // Refused: the server's CA is not trusted; no client certificate; a missing file.
    for (url, says) in [
        (format!("{base}?{client}"), "cannot connect"),
        (format!("{base}?ssl_ca_certs={ca}"), "cannot connect"),
        (format!("{base}?ssl_ca_certs=/nonexistent/ca.pem"), "ssl_ca_certs"),
        (format!("{base}?ssl_certfile={client_cert}"), "ssl_keyfile"),
    ] {
        let mut o = options(&url);
        o.socket_connect_timeout = Some(Duration::from_secs(2));
        o.transport.retry_policy = RetryPolicy::none();
        let err = RedisBackend::connect(o).await.unwrap_err();
        assert!(err.to_string().contains(says), "{url}: {err}");
    }
}

/// Sentinel: the master is looked up by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_finds_the_master() {
    let Some(redis) = celeriac_tests::redis() else { return };
    let sentinel = SentinelServer::start(redis.port(), "results").unwrap();
    let url = format!("sentinel://127.0.0.1:{}/3", sentinel.port());
    let mut o = options(&url);
    o.transport.master_name = Some("results".into());
    let backend = RedisBackend::connect(o).await.unwrap();
    let id = uid();
    backend.store(&ResultMeta::success(&id, Value::Int(3), now())).await.unwrap();
    assert_eq!(crate::backend(&redis.url_db(3)).await.get(&id).await.unwrap().result, Value::Int(3));
    let mut missing = options(&url);
    missing.transport.master_name = None;
    let err = RedisBackend::connect(missing).await.unwrap_err();
    assert!(err.to_string().contains("master_name"), "{err}");
}

/// A real `celery worker`, sharing results and chords with Rust.
fn start_worker(python: &Path, url: &str, log: PathBuf) -> CeleryWorker {
    CeleryWorker::builder(python, "backend_peer", &python_dir())
        .queues("celery")
        .args(&["--pool=solo", "-n", "peer@%h", "--loglevel=INFO"])
        .env("CELERIAC_PEER_URL", url)
        .env("CELERIAC_PEER_CONF", "{}")
        .log(log)
        .start()
        .unwrap()
}

/// 3/7. A real Python worker runs tasks Rust waits for, and part of two chords
/// whose other parts Rust runs: chord A's last part runs on Python, which sends
/// the body; chord B's last part runs in Rust, which gets the results to send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_worker_and_rust_share_results_and_chords() {
    let Some((redis, python)) = peers() else { return };
    let url = redis.url();
    let peer = Peer::new(&python, &url);
    let backend = backend(&url).await;
    let (body_a, body_b) = (uid(), uid());
    let sent = peer
        .run(
            "send",
            obj! {
                "chords" => list([
                    obj!{"n" => 6, "rust_indices" => list([1, 3, 4]), "body_id" => body_a.as_str()},
                    obj!{"n" => 5, "rust_indices" => list([0, 4]), "body_id" => body_b.as_str()},
                ]),
                "tasks" => list(["add", "fail", "fail_custom"]),
            },
        )
        .await;
    let chords = field(&sent, "chords").as_list().unwrap();
    let (group_a, group_b) = (s(field(&chords[0], "group")).to_owned(), s(field(&chords[1], "group")).to_owned());
    let rust_parts = queue_messages(&url, "rust").await;
    assert_eq!(rust_parts.len(), 5);
    let rust_ids: Vec<String> = rust_parts.iter().map(|m| m.headers.id.clone()).collect();
    let run_part = |m: TaskMessage| {
        let backend = backend.clone();
        async move {
            let x = m.args[0].as_i64().unwrap() + m.args[1].as_i64().unwrap();
            backend.store(&ResultMeta::success(&m.headers.id, Value::Int(x), now())).await.unwrap();
            let group = m.headers.group.clone().unwrap();
            backend
                .on_chord_part_return(&group, m.headers.group_index, &m.headers.id, &State::Success, &Value::Int(x))
                .await
                .unwrap()
        }
    };
    let (parts_a, parts_b): (Vec<_>, Vec<_>) =
        rust_parts.into_iter().partition(|m| m.headers.group.as_deref() == Some(group_a.as_str()));
    // Chord A: Rust's parts first.
    for m in parts_a {
        assert!(matches!(run_part(m).await, ChordOutcome::NotReady { .. }));
    }
    let mut worker = start_worker(&python, &url, redis.dir().join("worker.log"));
    let log = worker.log_path().to_path_buf();
    let wait = |id: String| {
        let backend = backend.clone();
        async move { backend.result(&id).get(Some(Duration::from_secs(30))).await }
    };
    let tasks = field(&sent, "tasks");
    let add = wait(s(field(tasks, "add")).to_owned()).await;
    assert_eq!(add.unwrap_or_else(|e| panic!("{e}\n{}", std::fs::read_to_string(&log).unwrap())), Value::Int(5));
    let fail = wait(s(field(tasks, "fail")).to_owned()).await.unwrap_err();
    let failed = fail.task_failed().unwrap();
    assert_eq!(failed.exception, ExceptionInfo::builtin("ValueError", "bad"));
    assert!(failed.traceback.as_deref().unwrap().contains("raise ValueError(message)"));
    let custom = wait(s(field(tasks, "fail_custom")).to_owned()).await.unwrap_err();
    assert_eq!(
        custom.task_failed().unwrap().exception,
        ExceptionInfo::new("backend_peer", "CustomError", vec![Value::from("odd"), Value::Int(7)])
    );
    // Every header task Python runs is done...
    for chord in chords {
        for id in field(chord, "header").as_list().unwrap().iter().map(s).filter(|id| !rust_ids.iter().any(|r| r == id))
        {
            let done = wait(id.to_owned()).await;
            done.unwrap_or_else(|e| panic!("{e}\n{}", std::fs::read_to_string(&log).unwrap()));
        }
    }
    // ...and once the worker has shut down warmly, so is its last chord call.
    let status = tokio::task::spawn_blocking(move || worker.stop(Duration::from_secs(20))).await.unwrap();
    assert!(status.is_some());
    let bodies = body_messages(&url).await;
    assert_eq!(bodies.len(), 1, "{}", std::fs::read_to_string(&log).unwrap());
    assert_eq!(bodies[0].headers.id, body_a);
    assert_eq!(bodies[0].args[0], list([0, 2, 4, 6, 8, 10]));
    // Chord B: Rust runs the last parts and gets the results to send.
    let mut outcomes = Vec::new();
    for m in parts_b {
        outcomes.push(run_part(m).await);
    }
    let ChordOutcome::Ready(ready) = outcomes.pop().unwrap() else { panic!("{outcomes:?}") };
    assert!(outcomes.iter().all(|o| matches!(o, ChordOutcome::NotReady { .. })), "{outcomes:?}");
    assert_eq!(ready.results, [0, 2, 4, 6, 8].map(Value::from));
    assert!(backend.finish_chord(&ready.claim).await.unwrap());
    assert_eq!(body_messages(&url).await.len(), 1);
    for group in [&group_a, &group_b] {
        assert_eq!(get_string(&url, &backend.keys().chord(group).claim).await.as_deref(), Some("done"));
    }
}

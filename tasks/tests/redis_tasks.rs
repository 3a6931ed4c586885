#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The tasks that write to Redis, against a private redis-server: the
//! heartbeat's key, value and TTL, and the suite's `redis_echo`, `redis_count`,
//! `sum_and_record`, `redis_echo_group_id` and old-style errbacks.

use celeriac_protocol::{Map, Value};
use celeriac_tasks::builtin::{Heartbeat, HEARTBEAT};
use celeriac_tasks::conformance::task_name;
use celeriac_tasks::TaskSetConfig;
use celeriac_worker::{Ctx, Invocation, Registry, RequestInfo, TaskError};
use redis::AsyncCommands;

fn request(name: &str, args: Vec<Value>, kwargs: Map) -> RequestInfo {
    let mut request = RequestInfo::default();
    request.headers.id = "task-7".into();
    request.headers.task = name.into();
    request.args = args;
    request.kwargs = kwargs;
    request
}

async fn run(registry: &Registry, request: RequestInfo) -> Result<Value, TaskError> {
    let task = registry.get(&request.headers.task).unwrap();
    task.handler().call(Invocation::new(Ctx::detached(request))).await
}

async fn client(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap()
}

fn s(text: &str) -> Value {
    Value::Str(text.into())
}

#[tokio::test]
async fn heartbeat_writes_health_key_with_ttl() {
    let Some(server) = celeriac_tests::redis() else { return };
    let config = TaskSetConfig::default().with_redis_url(server.url_db(3)).with_node_name("celeriac@fallback-host");
    let registry = celeriac_tasks::registry(["builtin"], &config).unwrap();

    let mut req = request(HEARTBEAT, vec![s("manager")], Map::new());
    req.hostname = "celeriac@node-a".into();
    let returned = run(&registry, req).await.unwrap();

    let mut con = client(&server.url_db(3)).await;
    let raw: String = con.get("health:manager").await.unwrap();
    let stored: Heartbeat = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        (stored.service.as_str(), stored.node.as_str(), stored.hostname.as_str()),
        ("manager", "celeriac@node-a", "node-a")
    );
    assert_eq!((stored.pid, stored.ttl, stored.version.as_str()), (std::process::id(), 60, env!("CARGO_PKG_VERSION")));
    assert!(stored.timestamp.ends_with("+00:00"), "{}", stored.timestamp);
    let positions: Vec<usize> = ["service", "node", "hostname", "pid", "timestamp", "ttl", "version"]
        .iter()
        .map(|k| raw.find(&format!("\"{k}\":")).unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{raw}");
    assert_eq!(returned, celeriac_protocol::to_value(&stored).unwrap());
    let ttl: i64 = con.ttl("health:manager").await.unwrap();
    assert!((55..=60).contains(&ttl), "ttl {ttl}");

    // ttl by keyword, a fraction rounded up; outside a worker the configured node name.
    let mut kwargs = Map::new();
    kwargs.insert("ttl".into(), Value::Float(4.5));
    run(&registry, request(HEARTBEAT, vec![s("poller")], kwargs)).await.unwrap();
    let stored: Heartbeat = serde_json::from_str(&con.get::<_, String>("health:poller").await.unwrap()).unwrap();
    assert_eq!(
        (stored.ttl, stored.node.as_str(), stored.hostname.as_str()),
        (5, "celeriac@fallback-host", "fallback-host")
    );
    let ttl: i64 = con.ttl("health:poller").await.unwrap();
    assert!((1..=5).contains(&ttl), "ttl {ttl}");
}

#[tokio::test]
async fn heartbeat_over_a_unix_socket() {
    let Some(server) = celeriac_tests::redis() else { return };
    let url = format!("redis+socket://{}?virtual_host=2", server.socket_path().display());
    let config = TaskSetConfig::default().with_redis_url(url).with_heartbeat_ttl(std::time::Duration::from_secs(90));
    let registry = celeriac_tasks::registry(["builtin"], &config).unwrap();
    run(&registry, request(HEARTBEAT, vec![s("beat")], Map::new())).await.unwrap();
    let mut con = client(&server.url_db(2)).await;
    let ttl: i64 = con.ttl("health:beat").await.unwrap();
    assert!((85..=90).contains(&ttl), "ttl {ttl}");
}

#[tokio::test]
async fn an_unreachable_redis_is_a_connection_error() {
    let port = celeriac_tests::free_port().unwrap();
    let config = TaskSetConfig::default()
        .with_redis_url(format!("redis://127.0.0.1:{port}/0"))
        .with_suite_redis_url(format!("redis://127.0.0.1:{port}/0"));
    let registry = celeriac_tasks::registry(["builtin", "conformance"], &config).unwrap();
    for req in
        [request(HEARTBEAT, vec![s("manager")], Map::new()), request(&task_name("redis_count"), vec![], Map::new())]
    {
        match run(&registry, req).await {
            Err(TaskError::Failure { exc_module, exc_type, .. }) => {
                assert_eq!((exc_module.as_str(), exc_type.as_str()), ("redis.exceptions", "ConnectionError"));
            }
            other => panic!("expected a ConnectionError, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn suite_tasks_write_where_the_suite_reads() {
    let Some(server) = celeriac_tests::redis() else { return };
    let config = TaskSetConfig::default().with_suite_redis_url(server.url());
    let registry = celeriac_tasks::registry(["conformance"], &config).unwrap();
    let mut con = client(&server.url()).await;
    let kw = |pairs: &[(&str, Value)]| pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect::<Map>();

    // redis_echo: default key, a named key, numbers as Python's str().
    assert_eq!(run(&registry, request(&task_name("redis_echo"), vec![s("hello")], Map::new())).await, Ok(Value::Null));
    let named = kw(&[("redis_key", s("echo-2"))]);
    run(&registry, request(&task_name("redis_echo"), vec![Value::Float(1.5)], named)).await.unwrap();
    assert_eq!(con.lrange::<_, Vec<String>>("redis-echo", 0, -1).await.unwrap(), ["hello"]);
    assert_eq!(con.lrange::<_, Vec<String>>("echo-2", 0, -1).await.unwrap(), ["1.5"]);
    match run(&registry, request(&task_name("redis_echo"), vec![Value::Bool(true)], Map::new())).await {
        Err(TaskError::Failure { exc_type, message, .. }) => {
            assert_eq!(exc_type, "DataError");
            assert!(message.contains("'bool'"), "{message}");
        }
        other => panic!("expected a DataError, got {other:?}"),
    }

    // redis_count: the default key and a named one.
    for _ in 0..2 {
        run(&registry, request(&task_name("redis_count"), vec![], Map::new())).await.unwrap();
    }
    run(&registry, request(&task_name("redis_count"), vec![], kw(&[("redis_key", s("count-x"))]))).await.unwrap();
    assert_eq!(con.get::<_, i64>("redis-count").await.unwrap(), 2);
    assert_eq!(con.get::<_, i64>("count-x").await.unwrap(), 1);

    // sum_and_record: the sum, and this task's id pushed.
    let values = Value::List(vec![Value::Int(1), Value::Int(1), Value::Int(1)]);
    let out = run(&registry, request(&task_name("sum_and_record"), vec![values, s("record")], Map::new())).await;
    assert_eq!(out, Ok(Value::Int(3)));
    assert_eq!(con.lrange::<_, Vec<String>>("record", 0, -1).await.unwrap(), ["task-7"]);

    // redis_echo_group_id: the group id; without a group, redis-py's DataError.
    let mut req = request(&task_name("redis_echo_group_id"), vec![Value::Int(42)], Map::new());
    req.headers.group = Some("group-1".into());
    run(&registry, req).await.unwrap();
    assert_eq!(con.lrange::<_, Vec<String>>("redis-group-ids", 0, -1).await.unwrap(), ["group-1"]);
    let no_group = request(&task_name("redis_echo_group_id"), vec![Value::Int(42)], Map::new());
    assert!(
        matches!(run(&registry, no_group).await, Err(TaskError::Failure { exc_type, .. }) if exc_type == "DataError")
    );

    // Old-style errbacks: keyed by the failed task's id.
    let out = run(&registry, request(&task_name("errback_old_style"), vec![s("failed-1")], Map::new())).await;
    assert_eq!(out, Ok(s("failed-1")));
    assert_eq!(con.get::<_, i64>("failed-1").await.unwrap(), 1);
    let with_label = kw(&[("label", s("stored"))]);
    run(&registry, request(&task_name("errback_old_style_with_args"), vec![s("failed-2")], with_label)).await.unwrap();
    assert_eq!(con.lrange::<_, Vec<String>>("failed-2", 0, -1).await.unwrap(), ["stored"]);
}

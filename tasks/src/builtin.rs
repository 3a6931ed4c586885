//! The `builtin` set: tasks every celeriac worker can offer.
//!
//! - `celeriac.ping()` returns `"pong"`;
//! - `celeriac.health.heartbeat(service, ttl=None)` writes `health:<service>`
//!   to Redis with `SET key value EX ttl`: a JSON [`Heartbeat`] saying which
//!   worker ran it and when. Monitoring reads the key; when heartbeats stop
//!   the key expires and the service counts as down. It returns the record.

use std::sync::Arc;
use std::time::Duration;

use celeriac_protocol::time::PyDateTime;
use celeriac_protocol::Value;
use celeriac_worker::{Ctx, RawArgs, Registry, Task, TaskError};
use serde::{Deserialize, Serialize};

use crate::pyargs::{Param, PySignature};
use crate::redis_link::{redis_error, RedisLink};
use crate::{TaskSet, TaskSetConfig, TaskSetError};

/// The set, as [`crate::SETS`] lists it.
pub const SET: TaskSet =
    TaskSet::new("builtin", "celeriac.ping and celeriac.health.heartbeat (health:<service> in Redis)", registry);

/// Name of the ping task.
pub const PING: &str = "celeriac.ping";
/// Name of the heartbeat task.
pub const HEARTBEAT: &str = "celeriac.health.heartbeat";
/// Prefix of the heartbeat keys: `health:<service>`.
pub const HEARTBEAT_KEY_PREFIX: &str = "health:";

/// The Redis key the heartbeat of `service` is written to.
pub fn heartbeat_key(service: &str) -> String {
    format!("{HEARTBEAT_KEY_PREFIX}{service}")
}

/// The value of a `health:<service>` key (JSON, fields in this order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The service the heartbeat is for.
    pub service: String,
    /// The worker's node name (`celeriac@host`).
    pub node: String,
    /// The host part of the node name.
    pub hostname: String,
    /// The worker's process id.
    pub pid: u32,
    /// When it was written: ISO-8601 in UTC, as Python's `isoformat()`
    /// (`2026-03-01T12:00:00.123456+00:00`).
    pub timestamp: String,
    /// The key's TTL in seconds.
    pub ttl: u64,
    /// The celeriac version that wrote it.
    pub version: String,
}

/// The set's tasks: ping and heartbeat (the heartbeat with
/// [`TaskSetConfig::redis_url`]; without one it fails saying so).
pub fn registry(config: &TaskSetConfig) -> Result<Registry, TaskSetError> {
    let link = match &config.redis_url {
        Some(url) => Some(Arc::new(RedisLink::new(
            SET.name(),
            url,
            config.redis_master_name.as_deref(),
            config.redis_sentinel_password.as_deref(),
            Some(Duration::from_secs(30)),
        )?)),
        None => None,
    };
    let heartbeat =
        Arc::new(HeartbeatTask { link, node_name: config.node_name.clone(), default_ttl: config.heartbeat_ttl });
    Ok(Registry::new().with(Task::new(PING, ping)).with(Task::new(HEARTBEAT, move |ctx: Ctx, raw: RawArgs| {
        let heartbeat = heartbeat.clone();
        async move { heartbeat.run(ctx, raw).await }
    })))
}

const PING_SIG: PySignature = PySignature::new("ping", &[]);

async fn ping(RawArgs(args, kwargs): RawArgs) -> Result<&'static str, TaskError> {
    PING_SIG.bind(args, kwargs)?;
    Ok("pong")
}

const HEARTBEAT_SIG: PySignature = PySignature::new("heartbeat", &[Param::required("service"), Param::optional("ttl")]);

struct HeartbeatTask {
    link: Option<Arc<RedisLink>>,
    node_name: Option<String>,
    default_ttl: Duration,
}

impl HeartbeatTask {
    async fn run(&self, ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Result<Heartbeat, TaskError> {
        let mut bound = HEARTBEAT_SIG.bind(args, kwargs)?;
        let service = match bound.take("service") {
            Some(Value::Str(s)) if !s.is_empty() => s,
            Some(Value::Str(_)) => return Err(TaskError::builtin("ValueError", "heartbeat: service is empty")),
            other => {
                return Err(TaskError::builtin(
                    "TypeError",
                    format!(
                        "heartbeat: service must be a str, not {}",
                        crate::pyops::type_name(&other.unwrap_or(Value::Null))
                    ),
                ))
            }
        };
        let ttl = match bound.take("ttl") {
            None | Some(Value::Null) => self.default_ttl,
            Some(v) => crate::pyops::seconds(&v)?,
        };
        // SET ... EX takes whole seconds, at least one.
        let ttl_secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        if ttl_secs == 0 {
            return Err(TaskError::builtin("ValueError", "heartbeat: ttl must be positive"));
        }
        let Some(link) = &self.link else {
            return Err(TaskError::fail(
                "celeriac.health.heartbeat has no Redis: run the worker with a redis:// broker or result backend",
            ));
        };
        let node = match (ctx.hostname(), &self.node_name) {
            (from_request, _) if !from_request.is_empty() => from_request.to_owned(),
            (_, Some(configured)) => configured.clone(),
            _ => String::new(),
        };
        let record = Heartbeat {
            hostname: node.rsplit_once('@').map_or(node.as_str(), |(_, host)| host).to_owned(),
            node,
            service,
            pid: std::process::id(),
            timestamp: PyDateTime::now_utc().to_iso(),
            ttl: ttl_secs,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let key = heartbeat_key(&record.service);
        let json = serde_json::to_string(&record)
            .map_err(|e| TaskError::fail(format!("heartbeat: cannot encode the record: {e}")))?;
        let mut con = link.connection().await?;
        redis::cmd("SET")
            .arg(&key)
            .arg(json)
            .arg("EX")
            .arg(ttl_secs)
            .query_async::<()>(&mut con)
            .await
            .map_err(|e| redis_error(&format!("SET {key} on {}", link.url()), e))?;
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use celeriac_worker::{Invocation, RequestInfo};

    fn call(registry: &Registry, name: &str, args: Vec<Value>) -> Result<Value, TaskError> {
        let mut request = RequestInfo::default();
        request.headers.id = "id-1".into();
        request.headers.task = name.into();
        request.args = args;
        let task = registry.get(name).unwrap();
        futures_block(task.handler().call(Invocation::new(Ctx::detached(request))))
    }

    fn futures_block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    }

    #[test]
    fn ping_pongs() {
        let registry = registry(&TaskSetConfig::default()).unwrap();
        assert_eq!(call(&registry, PING, vec![]), Ok(Value::Str("pong".into())));
        assert!(
            matches!(call(&registry, PING, vec![Value::Int(1)]), Err(TaskError::Failure { exc_type, .. }) if exc_type == "TypeError")
        );
    }

    #[test]
    fn heartbeat_without_redis_says_so() {
        let registry = registry(&TaskSetConfig::default()).unwrap();
        match call(&registry, HEARTBEAT, vec![Value::Str("manager".into())]) {
            Err(TaskError::Failure { message, .. }) => assert!(message.contains("no Redis"), "{message}"),
            other => panic!("expected a failure, got {other:?}"),
        }
        assert!(
            matches!(call(&registry, HEARTBEAT, vec![]), Err(TaskError::Failure { exc_type, .. }) if exc_type == "TypeError")
        );
        assert!(matches!(
            call(&registry, HEARTBEAT, vec![Value::Str("m".into()), Value::Int(0)]),
            Err(TaskError::Failure { exc_type, .. }) if exc_type == "ValueError"
        ));
    }
}

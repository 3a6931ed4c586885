//! The Redis connection of tasks that touch Redis themselves (the heartbeat,
//! the suite's `redis_echo`): the URL is read when the set is built, so a bad
//! one stops the worker at startup; the connection is made on first use and
//! shared, and redis's connection manager reconnects after it breaks.
//! Failures reach Python as redis-py's exceptions (`redis.exceptions.ConnectionError`, ...).

use std::time::Duration;

use celeriac_backend::BackendOptions;
use celeriac_redisconn::Target;
use celeriac_worker::TaskError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::TaskSetError;

/// One lazily connected Redis.
pub(crate) struct RedisLink {
    url: String,
    target: Target,
    connect_timeout: Duration,
    config: ConnectionManagerConfig,
    manager: tokio::sync::OnceCell<ConnectionManager>,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink").field("url", &self.url).finish_non_exhaustive()
    }
}

impl RedisLink {
    /// Reads `url` (a Celery result-backend URL) for the set `set`; nothing
    /// connects yet. `response_timeout` `None` waits as long as a command takes.
    pub(crate) fn new(
        set: &'static str,
        url: &str,
        master_name: Option<&str>,
        sentinel_password: Option<&str>,
        response_timeout: Option<Duration>,
    ) -> Result<RedisLink, TaskSetError> {
        let masked = celeriac_redisconn::mask_password(url);
        let invalid = |reason: String| TaskSetError::Redis { set, url: masked.clone(), reason };
        let mut options = BackendOptions::from_url(url).map_err(|e| invalid(e.to_string()))?;
        options.transport.master_name = master_name.map(str::to_owned).or(options.transport.master_name);
        options.transport.sentinel_password =
            sentinel_password.map(str::to_owned).or(options.transport.sentinel_password);
        let settings =
            celeriac_redisconn::redis_settings(options.db, options.username.as_deref(), options.password.as_deref());
        let url = options.masked_url();
        let target = options
            .endpoint
            .target(
                settings,
                options.transport.master_name.as_deref(),
                options.transport.sentinel_password.as_deref(),
                &url,
            )
            .map_err(|e| invalid(e.to_string()))?;
        let connect_timeout = options.socket_connect_timeout.unwrap_or(celeriac_redisconn::DEFAULT_CONNECT_TIMEOUT);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(response_timeout)
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        Ok(RedisLink { url, target, connect_timeout, config, manager: tokio::sync::OnceCell::new() })
    }

    /// The URL, password masked.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The shared connection, made now if this is the first use.
    pub(crate) async fn connection(&self) -> Result<ConnectionManager, TaskError> {
        let manager = self
            .manager
            .get_or_try_init(|| async {
                let client = match &self.target {
                    Target::Direct(client) => client.clone(),
                    Target::Sentinel(sentinel) => {
                        let asked = tokio::time::timeout(self.connect_timeout, async {
                            sentinel.lock().await.async_get_client().await
                        });
                        match asked.await {
                            Ok(client) => client?,
                            Err(_) => return Err(timed_out("timed out asking the Sentinels for the master")),
                        }
                    }
                };
                let connecting = ConnectionManager::new_with_config(client, self.config.clone());
                match tokio::time::timeout(self.connect_timeout * 3, connecting).await {
                    Ok(manager) => manager,
                    Err(_) => Err(timed_out("timed out connecting")),
                }
            })
            .await
            .map_err(|e| redis_error(&format!("connecting to {}", self.url), e))?;
        Ok(manager.clone())
    }
}

fn timed_out(what: &'static str) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
}

/// A redis failure as redis-py would raise it: `ConnectionError`,
/// `TimeoutError` or `ResponseError` from `redis.exceptions`.
pub(crate) fn redis_error(doing: &str, e: redis::RedisError) -> TaskError {
    let exc_type = if e.is_timeout() {
        "TimeoutError"
    } else if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
        "ConnectionError"
    } else {
        "ResponseError"
    };
    TaskError::custom("redis.exceptions", exc_type, format!("{doing}: {e}"))
}

/// A value as redis-py sends it as a command argument: `str` as UTF-8,
/// `bytes` as they are, numbers as their text (`repr` for a `float`); it
/// refuses anything else with redis-py's `DataError`.
pub(crate) fn redis_arg(v: &celeriac_protocol::Value) -> Result<Vec<u8>, TaskError> {
    use celeriac_protocol::Value;
    match v {
        Value::Str(s) => Ok(s.as_bytes().to_vec()),
        Value::Bytes(b) => Ok(b.clone()),
        Value::Int(_) | Value::BigInt(_) | Value::Float(_) => {
            Ok(celeriac_protocol::result::python_repr(v).into_bytes())
        }
        other => Err(TaskError::custom(
            "redis.exceptions",
            "DataError",
            format!(
                "Invalid input of type: '{}'. Convert to a bytes, string, int or float first.",
                crate::pyops::type_name(other)
            ),
        )),
    }
}

//! Connections to Redis: the client for the configured endpoint (TCP, TLS,
//! unix socket, or the master that Sentinel names), one shared multiplexed
//! connection that reconnects after it breaks, and Celery's retry policy for
//! connection errors.
//!
//! Reconnection is lazy: a command that fails on a broken connection makes the
//! connection manager reconnect, and [`Connection::run`] tries the command
//! again after the policy's interval. With Sentinel, a failed command also asks
//! the Sentinels for the master again, so a failover is followed.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use celeriac_redisconn::Target;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSub};
use redis::Client;

use crate::error::{is_retryable, BackendError};
use crate::options::{BackendOptions, Endpoint, RetryPolicy, TlsOptions, DEFAULT_CONNECT_TIMEOUT};

/// The connection in use, and which lookup it came from.
#[derive(Clone)]
struct Current {
    client: Client,
    manager: ConnectionManager,
    generation: u64,
}

/// A shared, self-healing connection to the result backend's Redis.
#[derive(Clone)]
pub(crate) struct Connection {
    inner: Arc<Inner>,
}

struct Inner {
    target: Target,
    url: String,
    manager_config: ConnectionManagerConfig,
    connect_timeout: Duration,
    retry_policy: RetryPolicy,
    current: RwLock<Current>,
}

/// Warns at startup when the server's certificate is not verified, in the
/// broker's words (`CertReqs::warning`).
fn warn_cert_reqs(tls: &TlsOptions, url: &str) {
    if let Some(warning) = tls.cert_reqs.warning("result backend") {
        tracing::warn!(url, "{warning}");
    }
}

impl Connection {
    /// Builds the client (reading TLS files now, so a bad path fails early) and
    /// connects.
    pub async fn connect(options: &BackendOptions) -> Result<Connection, BackendError> {
        let url = options.masked_url();
        if let Endpoint::Tls { tls, .. } | Endpoint::Sentinel { tls: Some(tls), .. } = &options.endpoint {
            warn_cert_reqs(tls, &url);
        }
        let settings =
            celeriac_redisconn::redis_settings(options.db, options.username.as_deref(), options.password.as_deref());
        let (master_name, sentinel_password) =
            (options.transport.master_name.as_deref(), options.transport.sentinel_password.as_deref());
        let target = options.endpoint.target(settings, master_name, sentinel_password, &url)?;
        let connect_timeout = options.socket_connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        // One quick reconnect attempt per command; the retry policy does the rest.
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(options.socket_timeout)
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let client = resolve(&target, &url, connect_timeout).await?;
        let manager = new_manager(&client, manager_config.clone(), &url, connect_timeout).await?;
        if let Some(name) = &options.client_name {
            let mut con = manager.clone();
            let _: () = redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg(name)
                .query_async(&mut con)
                .await
                .map_err(|source| BackendError::Redis { op: "CLIENT SETNAME", key: name.clone(), source })?;
        }
        tracing::debug!(url = %url, "connected to the result backend");
        Ok(Connection {
            inner: Arc::new(Inner {
                target,
                url,
                manager_config,
                connect_timeout,
                retry_policy: options.transport.retry_policy.clone(),
                current: RwLock::new(Current { client, manager, generation: 0 }),
            }),
        })
    }

    fn current(&self) -> Current {
        match self.inner.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The URL with its password masked.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The shared multiplexed connection, for commands that must not be retried.
    pub fn manager(&self) -> ConnectionManager {
        self.current().manager
    }

    /// A new dedicated pub/sub connection to the current server.
    pub async fn pubsub(&self) -> redis::RedisResult<PubSub> {
        let client = self.current().client;
        match tokio::time::timeout(self.inner.connect_timeout, client.get_async_pubsub()).await {
            Ok(result) => result,
            Err(_) => Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "timed out connecting to Redis for pub/sub",
            ))),
        }
    }

    /// Runs `command` on the shared connection, retrying connection errors as
    /// Celery's `ensure` does (the policy's intervals, up to `max_retries`).
    /// Only for commands that are safe to run twice.
    pub async fn run<T, F, Fut>(&self, op: &'static str, key: &str, mut command: F) -> Result<T, BackendError>
    where
        F: FnMut(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let policy = &self.inner.retry_policy;
        let mut retry: u32 = 0;
        loop {
            let current = self.current();
            match command(current.manager).await {
                Ok(value) => return Ok(value),
                Err(source) if is_retryable(&source) && policy.max_retries.is_none_or(|max| retry < max) => {
                    let wait = policy.interval(retry);
                    tracing::error!(
                        url = %self.inner.url,
                        op,
                        key,
                        error = %source,
                        "Connection to Redis lost: Retry ({retry}/{}) in {wait:?}",
                        policy.max_retries.map_or_else(|| "Inf".to_owned(), |m| m.to_string())
                    );
                    tokio::time::sleep(wait).await;
                    self.refresh(current.generation).await;
                    retry += 1;
                }
                Err(source) => return Err(BackendError::Redis { op, key: key.to_owned(), source }),
            }
        }
    }

    /// After a connection error under Sentinel: ask the Sentinels for the master
    /// again and connect to it, unless another caller already did.
    async fn refresh(&self, seen_generation: u64) {
        if !matches!(self.inner.target, Target::Sentinel(_)) {
            return;
        }
        let client = match resolve(&self.inner.target, &self.inner.url, self.inner.connect_timeout).await {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!(url = %self.inner.url, error = %e, "cannot look the master up through Sentinel");
                return;
            }
        };
        if self.current().generation != seen_generation {
            return;
        }
        match new_manager(&client, self.inner.manager_config.clone(), &self.inner.url, self.inner.connect_timeout).await
        {
            Ok(manager) => {
                let mut guard = match self.inner.current.write() {
                    Ok(guard) => guard,
                    Err(poisoned) => poisoned.into_inner(),
                };
                if guard.generation == seen_generation {
                    tracing::info!(url = %self.inner.url, master = ?client.get_connection_info().addr(), "result backend follows the Sentinel master");
                    *guard = Current { client, manager, generation: seen_generation + 1 };
                }
            }
            Err(e) => tracing::warn!(url = %self.inner.url, error = %e, "cannot connect to the master Sentinel named"),
        }
    }
}

/// The server to talk to now (under Sentinel, the master it names).
async fn resolve(target: &Target, url: &str, timeout: Duration) -> Result<Client, BackendError> {
    let sentinel = match target {
        Target::Direct(client) => return Ok(client.clone()),
        Target::Sentinel(sentinel) => sentinel,
    };
    let master = tokio::time::timeout(timeout, sentinel.lock().await.async_get_client()).await.unwrap_or_else(|_| {
        let timed_out = std::io::ErrorKind::TimedOut;
        Err(redis::RedisError::from(std::io::Error::new(timed_out, "timed out asking the Sentinels for the master")))
    });
    master.map_err(|source| BackendError::Connect { url: url.to_owned(), source })
}

async fn new_manager(
    client: &Client,
    config: ConnectionManagerConfig,
    url: &str,
    timeout: Duration,
) -> Result<ConnectionManager, BackendError> {
    let connecting = ConnectionManager::new_with_config(client.clone(), config);
    // The manager's own connection timeout covers each attempt; this bounds the
    // attempts together.
    match tokio::time::timeout(timeout.saturating_mul(3), connecting).await {
        Ok(result) => result.map_err(|source| BackendError::Connect { url: url.to_owned(), source }),
        Err(_) => Err(BackendError::Connect {
            url: url.to_owned(),
            source: redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out connecting")),
        }),
    }
}

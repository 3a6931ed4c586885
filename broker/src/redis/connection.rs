//! Connections to Redis: building the client for the configured endpoint (TCP,
//! TLS, unix socket, or the master named by Sentinel) and a shared multiplexed
//! connection that is replaced after it breaks.
//!
//! Reconnection is lazy: an operation that fails on a broken connection marks
//! it, and the next operation connects again. Callers that must not give up
//! (the consumer loop, settling) wrap operations in [`Backoff`](crate::backoff::Backoff).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use celeriac_redisconn::{Target, DEFAULT_CONNECT_TIMEOUT};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client};

use crate::error::BrokerError;
use crate::options::{RedisEndpoint, RedisOptions, Secret};

/// Knows how to open connections to the configured server.
pub(crate) struct Connector {
    target: Target,
    url: String,
    client_name: Option<String>,
    connect_timeout: Duration,
    reconnects: AtomicU64,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Connector {
    /// Builds the client (reading TLS files now, so a bad path fails early),
    /// warning when the server's certificate is not verified.
    pub fn new(options: &RedisOptions) -> Result<Connector, BrokerError> {
        let url = options.masked_url();
        // Said once at startup, in the result backend's words.
        if let Some(warning) = options.tls.as_ref().and_then(|tls| tls.cert_reqs.warning("broker")) {
            tracing::warn!(url = %url, "{warning}");
        }
        let password = options.password.as_ref().map(Secret::expose);
        let settings = celeriac_redisconn::redis_settings(options.db, options.username.as_deref(), password);
        let master_name = match &options.endpoint {
            RedisEndpoint::Sentinel { master_name, .. } => master_name.as_deref().filter(|m| !m.is_empty()),
            _ => None,
        };
        let sentinel_password = options.sentinel_password.as_ref().map(Secret::expose);
        let target = options.connection_endpoint().target(settings, master_name, sentinel_password, &url)?;
        Ok(Connector {
            target,
            url,
            client_name: options.client_name.clone(),
            connect_timeout: options.socket_connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            reconnects: AtomicU64::new(0),
        })
    }

    /// Counts a lost connection being replaced.
    pub fn note_reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// Lost connections replaced so far.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// The broker URL, password masked.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn err(&self, command: &'static str, e: redis::RedisError) -> BrokerError {
        BrokerError::from_redis(&self.url, command, e)
    }

    /// A client for the server to talk to now (for Sentinel: the current master).
    pub async fn client(&self) -> Result<Client, BrokerError> {
        match &self.target {
            Target::Direct(client) => Ok(client.clone()),
            Target::Sentinel(sentinel) => {
                let mut sentinel = sentinel.lock().await;
                match tokio::time::timeout(self.connect_timeout, sentinel.async_get_client()).await {
                    Ok(result) => result.map_err(|e| self.err("SENTINEL get-master-addr-by-name", e)),
                    Err(_) => Err(self.timeout_error()),
                }
            }
        }
    }

    fn timeout_error(&self) -> BrokerError {
        BrokerError::Connection {
            url: self.url.clone(),
            source: redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {:?}", self.connect_timeout),
            )),
        }
    }

    /// A new multiplexed connection whose commands time out after `response_timeout`.
    pub async fn connect(&self, response_timeout: Option<Duration>) -> Result<MultiplexedConnection, BrokerError> {
        let client = self.client().await?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(response_timeout);
        let mut conn =
            client.get_multiplexed_async_connection_with_config(&config).await.map_err(|e| self.err("connect", e))?;
        if let Some(name) = &self.client_name {
            redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg(name)
                .exec_async(&mut conn)
                .await
                .map_err(|e| self.err("CLIENT SETNAME", e))?;
        }
        Ok(conn)
    }

    /// A new connection in PUB/SUB mode.
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, BrokerError> {
        let client = self.client().await?;
        match tokio::time::timeout(self.connect_timeout, client.get_async_pubsub()).await {
            Ok(result) => result.map_err(|e| self.err("connect", e)),
            Err(_) => Err(self.timeout_error()),
        }
    }
}

/// One multiplexed connection shared by many tasks, replaced after it breaks.
#[derive(Debug)]
pub(crate) struct SharedConnection {
    connector: Arc<Connector>,
    response_timeout: Option<Duration>,
    slot: tokio::sync::Mutex<Option<(u64, MultiplexedConnection)>>,
    generation: AtomicU64,
}

impl SharedConnection {
    /// A connection (not opened yet) whose commands time out after `response_timeout`.
    pub fn new(connector: Arc<Connector>, response_timeout: Option<Duration>) -> SharedConnection {
        SharedConnection {
            connector,
            response_timeout,
            slot: tokio::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
        }
    }

    /// The current connection and its generation, connecting first if needed.
    pub async fn get(&self) -> Result<(u64, MultiplexedConnection), BrokerError> {
        let mut slot = self.slot.lock().await;
        if let Some((generation, conn)) = slot.as_ref() {
            return Ok((*generation, conn.clone()));
        }
        let conn = self.connector.connect(self.response_timeout).await?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        if generation > 1 {
            self.connector.note_reconnect();
            tracing::info!(url = self.connector.url(), "reconnected to Redis");
        }
        *slot = Some((generation, conn.clone()));
        Ok((generation, conn))
    }

    /// Drops the connection of `generation` (if still current) after it failed.
    pub async fn invalidate(&self, generation: u64) {
        let mut slot = self.slot.lock().await;
        if slot.as_ref().is_some_and(|(g, _)| *g == generation) {
            *slot = None;
        }
    }

    /// Runs `f` on the connection; a transient failure marks the connection
    /// for replacement.
    pub async fn run<T, F, Fut>(&self, command: &'static str, f: F) -> Result<T, BrokerError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let (generation, conn) = self.get().await?;
        match f(conn).await {
            Ok(v) => Ok(v),
            Err(e) => {
                let error = BrokerError::from_redis(self.connector.url(), command, e);
                if error.is_transient() || matches!(error, BrokerError::Auth { .. }) {
                    self.invalidate(generation).await;
                }
                Err(error)
            }
        }
    }
}

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

use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSub};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    Client, ClientTlsConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo, TlsCertificates,
};

use crate::error::{is_retryable, BackendError};
use crate::options::{BackendOptions, CertReqs, Endpoint, RetryPolicy, TlsOptions, DEFAULT_CONNECT_TIMEOUT};

/// How the server is found.
enum Target {
    /// A fixed address.
    Direct(Client),
    /// The master a Sentinel names, looked up again after connection errors.
    Sentinel { sentinel: tokio::sync::Mutex<SentinelClient> },
}

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

fn read_file(what: &'static str, path: &std::path::Path) -> Result<Vec<u8>, BackendError> {
    std::fs::read(path).map_err(|source| BackendError::TlsFile { what, path: path.display().to_string(), source })
}

fn tls_certificates(tls: &TlsOptions) -> Result<TlsCertificates, BackendError> {
    let client_tls = match (&tls.certfile, &tls.keyfile) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: read_file("ssl_certfile", cert)?,
            client_key: read_file("ssl_keyfile", key)?,
        }),
        (None, None) => None,
        _ => {
            return Err(BackendError::InvalidSetting {
                setting: "ssl_certfile",
                reason: "a client certificate needs both ssl_certfile and ssl_keyfile".into(),
            })
        }
    };
    let root_cert = tls.ca_certs.as_deref().map(|p| read_file("ssl_ca_certs", p)).transpose()?;
    Ok(TlsCertificates { client_tls, root_cert })
}

fn warn_cert_reqs(tls: &TlsOptions, url: &str) {
    match tls.cert_reqs {
        CertReqs::Required => {}
        CertReqs::Optional => tracing::warn!(
            url,
            "ssl_cert_reqs=CERT_OPTIONAL: a client verifies the server's certificate anyway, as with CERT_REQUIRED"
        ),
        CertReqs::None => tracing::warn!(
            url,
            "ssl_cert_reqs=CERT_NONE: the result backend's certificate is not verified, so the connection is open \
             to man-in-the-middle attacks; give ssl_ca_certs instead"
        ),
    }
}

impl Connection {
    /// Builds the client (reading TLS files now, so a bad path fails early) and
    /// connects.
    pub async fn connect(options: &BackendOptions) -> Result<Connection, BackendError> {
        let url = options.masked_url();
        let config_err = |source: redis::RedisError| BackendError::Connect { url: url.clone(), source };
        let mut settings = RedisConnectionInfo::default().set_db(options.db);
        if let Some(user) = &options.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &options.password {
            settings = settings.set_password(password);
        }
        let info = |addr: ConnectionAddr| -> Result<ConnectionInfo, BackendError> {
            Ok(addr.into_connection_info().map_err(config_err)?.set_redis_settings(settings.clone()))
        };
        let target = match &options.endpoint {
            Endpoint::Tcp { host, port } => {
                Target::Direct(Client::open(info(ConnectionAddr::Tcp(host.clone(), *port))?).map_err(config_err)?)
            }
            Endpoint::Unix { path } => {
                Target::Direct(Client::open(info(ConnectionAddr::Unix(path.clone()))?).map_err(config_err)?)
            }
            Endpoint::Tls { host, port, tls } => {
                warn_cert_reqs(tls, &url);
                let addr = ConnectionAddr::TcpTls {
                    host: host.clone(),
                    port: *port,
                    insecure: tls.cert_reqs == CertReqs::None,
                    tls_params: None,
                };
                Target::Direct(Client::build_with_tls(info(addr)?, tls_certificates(tls)?).map_err(config_err)?)
            }
            Endpoint::Sentinel { nodes } => {
                let master = options.transport.master_name.clone().ok_or_else(|| BackendError::InvalidSetting {
                    setting: "master_name",
                    reason: "a sentinel:// result backend needs result_backend_transport_options = \
                             {\"master_name\": \"<the Sentinel service name>\"}"
                        .into(),
                })?;
                let mut sentinel_settings = RedisConnectionInfo::default();
                if let Some(password) = &options.transport.sentinel_password {
                    sentinel_settings = sentinel_settings.set_password(password);
                }
                let node_infos = nodes
                    .iter()
                    .map(|(host, port)| {
                        Ok(ConnectionAddr::Tcp(host.clone(), *port)
                            .into_connection_info()
                            .map_err(config_err)?
                            .set_redis_settings(sentinel_settings.clone()))
                    })
                    .collect::<Result<Vec<_>, BackendError>>()?;
                let node_info = SentinelNodeConnectionInfo::default().set_redis_connection_info(settings.clone());
                let sentinel = SentinelClient::build(node_infos, master, Some(node_info), SentinelServerType::Master)
                    .map_err(config_err)?;
                Target::Sentinel { sentinel: tokio::sync::Mutex::new(sentinel) }
            }
        };
        let connect_timeout = options.socket_connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        // One quick reconnect attempt per command; the retry policy does the rest.
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(options.socket_timeout)
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let client = match &target {
            Target::Direct(client) => client.clone(),
            Target::Sentinel { sentinel } => resolve_master(sentinel, &url, connect_timeout).await?,
        };
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
        let Target::Sentinel { sentinel } = &self.inner.target else { return };
        let client = match resolve_master(sentinel, &self.inner.url, self.inner.connect_timeout).await {
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

async fn resolve_master(
    sentinel: &tokio::sync::Mutex<SentinelClient>,
    url: &str,
    timeout: Duration,
) -> Result<Client, BackendError> {
    let mut sentinel = sentinel.lock().await;
    match tokio::time::timeout(timeout, sentinel.async_get_client()).await {
        Ok(result) => result.map_err(|source| BackendError::Connect { url: url.to_owned(), source }),
        Err(_) => Err(BackendError::Connect {
            url: url.to_owned(),
            source: redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "timed out asking the Sentinels for the master",
            )),
        }),
    }
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
    match tokio::time::timeout(timeout * 3, connecting).await {
        Ok(result) => result.map_err(|source| BackendError::Connect { url: url.to_owned(), source }),
        Err(_) => Err(BackendError::Connect {
            url: url.to_owned(),
            source: redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out connecting")),
        }),
    }
}

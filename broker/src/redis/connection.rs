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

use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, Client, ClientTlsConfig, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};

use crate::error::BrokerError;
use crate::options::{CertReqs, RedisEndpoint, RedisOptions};

/// Connecting takes at most this long when `socket_connect_timeout` is unset.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

enum Target {
    Direct(Client),
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

/// Knows how to open connections to the configured server.
pub(crate) struct Connector {
    target: Target,
    url: String,
    client_name: Option<String>,
    connect_timeout: Duration,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector").field("url", &self.url).finish_non_exhaustive()
    }
}

fn read_file(what: &'static str, path: &std::path::Path) -> Result<Vec<u8>, BrokerError> {
    std::fs::read(path).map_err(|source| BrokerError::TlsFile { what, path: path.display().to_string(), source })
}

impl Connector {
    /// Builds the client (reading TLS files now, so a bad path fails early).
    pub fn new(options: &RedisOptions) -> Result<Connector, BrokerError> {
        let url = options.masked_url();
        let config_err = |e: redis::RedisError| BrokerError::Config(format!("{url}: {e}"));
        let mut settings = RedisConnectionInfo::default().set_db(options.db);
        if let Some(user) = &options.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &options.password {
            settings = settings.set_password(password.expose());
        }
        let target = match &options.endpoint {
            RedisEndpoint::Tcp { host, port } => {
                let addr = match &options.tls {
                    Some(tls) => {
                        // rustls needs a process-wide provider for the no-verification mode.
                        let _ = rustls::crypto::ring::default_provider().install_default();
                        ConnectionAddr::TcpTls {
                            host: host.clone(),
                            port: *port,
                            insecure: tls.cert_reqs == CertReqs::None,
                            tls_params: None,
                        }
                    }
                    None => ConnectionAddr::Tcp(host.clone(), *port),
                };
                let info = addr.into_connection_info().map_err(config_err)?.set_redis_settings(settings);
                let client = match &options.tls {
                    Some(tls) if tls.ca_certs.is_some() || tls.certfile.is_some() => {
                        let root_cert = tls.ca_certs.as_deref().map(|p| read_file("CA certificates", p)).transpose()?;
                        let client_tls = match (&tls.certfile, &tls.keyfile) {
                            (Some(cert), Some(key)) => Some(ClientTlsConfig {
                                client_cert: read_file("client certificate", cert)?,
                                client_key: read_file("client key", key)?,
                            }),
                            _ => None,
                        };
                        Client::build_with_tls(info, redis::TlsCertificates { client_tls, root_cert })
                            .map_err(config_err)?
                    }
                    _ => Client::open(info).map_err(config_err)?,
                };
                Target::Direct(client)
            }
            RedisEndpoint::Unix { path } => {
                let info = ConnectionAddr::Unix(path.clone())
                    .into_connection_info()
                    .map_err(config_err)?
                    .set_redis_settings(settings);
                Target::Direct(Client::open(info).map_err(config_err)?)
            }
            RedisEndpoint::Sentinel { nodes, master_name } => {
                let master = master_name.clone().filter(|m| !m.is_empty()).ok_or_else(|| {
                    BrokerError::Config("'master_name' transport option must be specified for sentinel://".into())
                })?;
                let addrs = nodes.iter().map(|(h, p)| ConnectionAddr::Tcp(h.clone(), *p));
                let mut builder = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)
                    .map_err(config_err)?
                    .set_client_to_redis_db(options.db);
                if let Some(user) = &options.username {
                    builder = builder.set_client_to_redis_username(user);
                }
                if let Some(password) = &options.password {
                    builder = builder.set_client_to_redis_password(password.expose());
                }
                Target::Sentinel(tokio::sync::Mutex::new(builder.build().map_err(config_err)?))
            }
        };
        Ok(Connector {
            target,
            url,
            client_name: options.client_name.clone(),
            connect_timeout: options.socket_connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        })
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

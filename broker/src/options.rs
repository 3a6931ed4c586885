//! The Redis transport's options, with kombu's names and defaults, and the
//! broker URLs kombu accepts for them.
//!
//! URL forms (as `kombu.Connection` reads them):
//! - `redis://[user:password@]host[:port][/db]` (port 6379, db 0 by default);
//! - `rediss://...?ssl_cert_reqs=required&ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem&ssl_keyfile=/k.pem`
//!   (`ssl_cert_reqs=none` turns certificate verification off, as kombu's `CERT_NONE`);
//! - `redis+socket:///path/redis.sock?virtual_host=db`: kombu's spelling for a unix
//!   socket (`socket://` too; redis-py's `unix:///path?db=N` is also accepted);
//! - `sentinel://host:port[;sentinel://host2:port2...]` with the `master_name` option
//!   (as a query parameter or set on [`RedisOptions::endpoint`]); `ssl_*` query
//!   parameters (or [`RedisOptions::tls`]) make it TLS to the Sentinels and to
//!   the master alike.
//!
//! Query parameters that name a transport option (`visibility_timeout`,
//! `global_keyprefix`, `master_name`, `polling_interval`, ...) set it too.
//! Every number is range-checked ([`celeriac_redisconn::limits`]): a value
//! outside its range (`inf`, `1e300`, `-1`, `0` where meaningless) is refused
//! with the option's name and the accepted range.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use celeriac_protocol::envelope::BodyEncoding;
use celeriac_redisconn::limits::{self, Limit};
use celeriac_redisconn::{mask_password, segments, sentinel_nodes, Dialect, Endpoint, UrlParts, TLS_PARAMS};
pub use celeriac_redisconn::{CertReqs, TlsOptions, DEFAULT_PORT, DEFAULT_SENTINEL_PORT};

use crate::error::BrokerError;

/// The order in which a consumer's queues are tried (kombu's `queue_order_strategy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum QueueOrderStrategy {
    /// After a message from queue X, X moves to the end of the list (kombu's default).
    #[default]
    RoundRobin,
    /// Always in alphabetical order.
    Sorted,
    /// Always in the order the queues were given.
    Priority,
}

impl std::str::FromStr for QueueOrderStrategy {
    type Err = BrokerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "round_robin" => Ok(QueueOrderStrategy::RoundRobin),
            "sorted" => Ok(QueueOrderStrategy::Sorted),
            "priority" => Ok(QueueOrderStrategy::Priority),
            other => Err(BrokerError::Config(format!(
                "unknown queue_order_strategy {other:?}; use round_robin, sorted or priority"
            ))),
        }
    }
}

/// The prefix of fanout (PUB/SUB) channels (kombu's `fanout_prefix`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum FanoutPrefix {
    /// `/{db}.`, with the database number: kombu 4+'s default (`fanout_prefix=True`).
    #[default]
    Db,
    /// No prefix (`fanout_prefix=False`, kombu 3 compatible).
    Disabled,
    /// A custom prefix; `{db}` in it is replaced by the database number.
    Custom(String),
}

/// Where the Redis server is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisEndpoint {
    /// Host and port.
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
    },
    /// A unix domain socket.
    Unix {
        /// The socket's path.
        path: PathBuf,
    },
    /// The current master of a Sentinel-managed group.
    Sentinel {
        /// The Sentinel nodes to ask.
        nodes: Vec<(String, u16)>,
        /// The group's name (kombu's `master_name` transport option; required).
        master_name: Option<String>,
    },
}

/// A password, never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a password.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The password itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"**\"")
    }
}

/// Options of the Redis transport: connection, kombu's transport options, and
/// celeriac's own knobs (batching, backoff).
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// The server.
    pub endpoint: RedisEndpoint,
    /// Database number (kombu's virtual host).
    pub db: i64,
    /// ACL user name (Redis 6+).
    pub username: Option<String>,
    /// Password (`AUTH`).
    pub password: Option<Secret>,
    /// TLS (`rediss://`, or `sentinel://` to the Sentinels and the master alike), if any.
    pub tls: Option<TlsOptions>,
    /// The Sentinel nodes' own password (kombu's `sentinel_kwargs["password"]`);
    /// the URL's password is the master's.
    pub sentinel_password: Option<Secret>,

    /// Seconds a delivered message may stay unacked before any consumer of the
    /// database restores it (kombu default 3600 s).
    pub visibility_timeout: Duration,
    /// Priority sub-queue steps (kombu default `[0, 3, 6, 9]`).
    pub priority_steps: Vec<u8>,
    /// Separator in priority queue names and binding members (`"\x06\x16"`).
    pub sep: String,
    /// Queue order of the consumer.
    pub queue_order_strategy: QueueOrderStrategy,
    /// Prepended as is to every key kombu prefixes (queues, bindings, `unacked*`,
    /// fanout channels).
    pub global_keyprefix: String,
    /// Prefix of fanout channels.
    pub fanout_prefix: FanoutPrefix,
    /// Whether fanout channels carry the routing key (`/{db}.<exchange>/<routing_key>`).
    pub fanout_patterns: bool,
    /// The hash of unacked messages (`unacked`).
    pub unacked_key: String,
    /// The sorted set of delivery times (`unacked_index`).
    pub unacked_index_key: String,
    /// The visibility sweep's lock (`unacked_mutex`).
    pub unacked_mutex_key: String,
    /// How long the sweep's lock lives (kombu default 300 s).
    pub unacked_mutex_expire: Duration,
    /// At most this many messages per sweep (kombu default: no limit).
    pub unacked_restore_limit: Option<usize>,
    /// Period of the visibility sweep timer (kombu default 10 s).
    pub unacked_restore_interval: Duration,
    /// Only every Nth timer tick sweeps (kombu default 10, so about every 100 s).
    pub unacked_restore_throttle: u32,
    /// Server-side timeout of `BRPOP` (kombu's `brpop_timeout`/`polling_interval`, 1 s).
    pub brpop_timeout: Duration,
    /// How message bodies are stored (base64 by default).
    pub body_encoding: BodyEncoding,
    /// Queue for messages that cannot be routed or decoded (kombu's `deadletter_queue`).
    pub deadletter_queue: Option<String>,
    /// Largest message body a consumer reads (the worker's
    /// `worker_max_message_size`): a list element too long to hold such a
    /// body is not parsed, and goes to `deadletter_queue` as undecodable.
    pub max_message_size: usize,
    /// Timeout of ordinary commands (kombu `socket_timeout`; `None` uses the health check interval).
    pub socket_timeout: Option<Duration>,
    /// Timeout of connecting (kombu `socket_connect_timeout`; `None` means 10 s).
    pub socket_connect_timeout: Option<Duration>,
    /// Idle connections are checked this often; a `BRPOP` overdue by this much
    /// is treated as a dead connection (kombu default 25 s; zero disables).
    pub health_check_interval: Duration,
    /// `CLIENT SETNAME` for our connections.
    pub client_name: Option<String>,

    /// Upper bound on unacked deliveries held by one consumer, applied also when
    /// the consumer's prefetch is 0 (unlimited); `None` for no bound (kombu).
    pub max_prefetch: Option<usize>,
    /// At most this many messages are popped (and recorded as unacked) per round trip.
    pub fetch_batch: usize,
    /// First delay before reconnecting after a lost connection.
    pub reconnect_backoff_min: Duration,
    /// Longest delay between reconnection attempts (exponential, with jitter).
    pub reconnect_backoff_max: Duration,
    /// How long ack/reject/requeue keep retrying on transient errors before
    /// returning an error (the delivery stays unsettled and can be retried).
    pub settle_timeout: Duration,
    /// How often to retry connecting on `publish` before giving up.
    pub publish_connect_retries: u32,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            endpoint: RedisEndpoint::Tcp { host: "localhost".into(), port: DEFAULT_PORT },
            db: 0,
            username: None,
            password: None,
            tls: None,
            sentinel_password: None,
            visibility_timeout: Duration::from_secs(3600),
            priority_steps: vec![0, 3, 6, 9],
            sep: "\x06\x16".into(),
            queue_order_strategy: QueueOrderStrategy::RoundRobin,
            global_keyprefix: String::new(),
            fanout_prefix: FanoutPrefix::Db,
            fanout_patterns: true,
            unacked_key: "unacked".into(),
            unacked_index_key: "unacked_index".into(),
            unacked_mutex_key: "unacked_mutex".into(),
            unacked_mutex_expire: Duration::from_secs(300),
            unacked_restore_limit: None,
            unacked_restore_interval: Duration::from_secs(10),
            unacked_restore_throttle: 10,
            brpop_timeout: Duration::from_secs(1),
            body_encoding: BodyEncoding::Base64,
            deadletter_queue: None,
            max_message_size: celeriac_protocol::limits::DEFAULT_MAX_MESSAGE_SIZE,
            socket_timeout: None,
            socket_connect_timeout: None,
            health_check_interval: Duration::from_secs(25),
            client_name: None,
            max_prefetch: None,
            fetch_batch: 64,
            reconnect_backoff_min: Duration::from_millis(100),
            reconnect_backoff_max: Duration::from_secs(10),
            settle_timeout: Duration::from_secs(60),
            publish_connect_retries: 3,
        }
    }
}

impl RedisOptions {
    /// Options from a broker URL (see the module docs), other options at their defaults.
    pub fn from_url(url: &str) -> Result<RedisOptions, BrokerError> {
        let mut options = RedisOptions::default();
        options.apply_url(url)?;
        Ok(options)
    }

    /// Sets the connection part (and any transport options in the query) from a URL.
    pub fn apply_url(&mut self, url: &str) -> Result<(), BrokerError> {
        let first = segments(url).next().ok_or_else(|| BrokerError::Config("the broker URL is empty".into()))?;
        let parsed = UrlParts::parse(first, Dialect::Kombu)?;
        match parsed.scheme.as_str() {
            "redis" | "rediss" => {
                if segments(url).count() > 1 {
                    return Err(BrokerError::Config(format!(
                        "only sentinel:// URLs can be joined with ';' (got {})",
                        mask_password(url)
                    )));
                }
                let (host, port) = parsed.host_port(DEFAULT_PORT);
                self.endpoint = RedisEndpoint::Tcp { host, port };
                self.db = parse_db(&parsed.path)?;
                self.tls = (parsed.scheme == "rediss").then(TlsOptions::default);
            }
            "redis+socket" | "socket" | "unix" | "redis+unix" => {
                let path = parsed.socket_path().ok_or_else(|| {
                    BrokerError::Config(format!(
                        "{} needs the socket's path, e.g. redis+socket:///var/run/redis.sock",
                        mask_password(url)
                    ))
                })?;
                self.endpoint = RedisEndpoint::Unix { path };
                self.db = 0;
                self.tls = None;
            }
            "sentinel" => {
                let nodes = sentinel_nodes(url, Dialect::Kombu)?;
                let addrs = nodes.iter().map(|node| node.host_port(DEFAULT_SENTINEL_PORT)).collect();
                self.endpoint = RedisEndpoint::Sentinel { nodes: addrs, master_name: None };
                self.tls = None;
                for node in nodes.iter().skip(1) {
                    self.apply_query(&node.query)?;
                }
                self.db = parse_db(&parsed.path)?;
            }
            other => {
                return Err(BrokerError::Config(format!(
                    "unsupported broker URL scheme {other:?}; use redis://, rediss://, redis+socket:// or sentinel://"
                )))
            }
        }
        self.username = parsed.username.clone().filter(|u| !u.is_empty());
        self.password = parsed.password.clone().map(Secret);
        self.apply_query(&parsed.query)?;
        Ok(())
    }

    fn apply_query(&mut self, query: &[(String, String)]) -> Result<(), BrokerError> {
        for (key, value) in query {
            let secs = |limit: Limit| {
                limit.parse_duration(value).map_err(|e| BrokerError::Config(format!("{key}={value:?}: {e}")))
            };
            match key.as_str() {
                "virtual_host" | "db" => {
                    self.db = limits::DB
                        .parse_whole(value.trim_start_matches('/'))
                        .map_err(|e| BrokerError::Config(format!("{key}={value:?}: {e}")))?;
                }
                tls if TLS_PARAMS.contains(&tls) => self.tls_mut()?.set(tls, value, Dialect::Kombu)?,
                "master_name" => match &mut self.endpoint {
                    RedisEndpoint::Sentinel { master_name, .. } => *master_name = Some(value.clone()),
                    _ => return Err(BrokerError::Config("master_name is only for sentinel:// URLs".into())),
                },
                "visibility_timeout" => self.visibility_timeout = secs(limits::VISIBILITY_TIMEOUT)?,
                "global_keyprefix" => self.global_keyprefix = value.clone(),
                "queue_order_strategy" => self.queue_order_strategy = value.parse()?,
                "polling_interval" | "brpop_timeout" => self.brpop_timeout = secs(limits::POLLING_INTERVAL)?,
                "socket_timeout" => self.socket_timeout = Some(secs(limits::SOCKET_TIMEOUT)?),
                "socket_connect_timeout" => self.socket_connect_timeout = Some(secs(limits::SOCKET_CONNECT_TIMEOUT)?),
                "health_check_interval" => self.health_check_interval = secs(limits::HEALTH_CHECK_INTERVAL)?,
                "client_name" => self.client_name = Some(value.clone()),
                "unacked_restore_interval" => {
                    self.unacked_restore_interval = secs(limits::UNACKED_RESTORE_INTERVAL)?;
                }
                "unacked_restore_limit" => {
                    self.unacked_restore_limit = Some(
                        limits::UNACKED_RESTORE_LIMIT
                            .parse_whole(value)
                            .map_err(|e| BrokerError::Config(format!("{key}={value:?}: {e}")))?,
                    );
                }
                other => {
                    tracing::warn!(option = other, "ignoring an unknown query parameter of the broker URL");
                }
            }
        }
        Ok(())
    }

    /// The TLS settings a `ssl_*` query parameter changes: a `rediss://` URL's,
    /// or a `sentinel://` URL's (which turns TLS on, as in kombu).
    fn tls_mut(&mut self) -> Result<&mut TlsOptions, BrokerError> {
        if matches!(self.endpoint, RedisEndpoint::Sentinel { .. }) {
            return Ok(self.tls.get_or_insert_with(TlsOptions::default));
        }
        self.tls
            .as_mut()
            .ok_or_else(|| BrokerError::Config("ssl_* options need a rediss:// (or sentinel://) URL".into()))
    }

    /// Checks the options for values kombu would not accept or that cannot work.
    pub fn validate(&self) -> Result<(), BrokerError> {
        if self.priority_steps.is_empty() {
            return Err(BrokerError::Config("priority_steps must not be empty (kombu uses [0, 3, 6, 9])".into()));
        }
        if self.sep.is_empty() {
            return Err(BrokerError::Config("sep must not be empty (kombu uses \"\\x06\\x16\")".into()));
        }
        let db = u128::try_from(self.db).unwrap_or(u128::MAX);
        limits::DB.check_whole(db).map_err(|e| BrokerError::Config(format!("database number {}: {e}", self.db)))?;
        for (name, value, limit) in [
            ("visibility_timeout", Some(self.visibility_timeout), limits::VISIBILITY_TIMEOUT),
            ("polling_interval", Some(self.brpop_timeout), limits::POLLING_INTERVAL),
            ("socket_timeout", self.socket_timeout, limits::SOCKET_TIMEOUT),
            ("socket_connect_timeout", self.socket_connect_timeout, limits::SOCKET_CONNECT_TIMEOUT),
            ("health_check_interval", Some(self.health_check_interval), limits::HEALTH_CHECK_INTERVAL),
            ("unacked_restore_interval", Some(self.unacked_restore_interval), limits::UNACKED_RESTORE_INTERVAL),
        ] {
            if let Some(value) = value {
                limit.check(value.as_secs_f64()).map_err(|e| BrokerError::Config(format!("{name}: {e}")))?;
            }
        }
        if let Some(n) = self.unacked_restore_limit {
            let n = u128::try_from(n).unwrap_or(u128::MAX);
            limits::UNACKED_RESTORE_LIMIT
                .check_whole(n)
                .map_err(|e| BrokerError::Config(format!("unacked_restore_limit: {e}")))?;
        }
        if self.tls.is_some() && matches!(self.endpoint, RedisEndpoint::Unix { .. }) {
            return Err(BrokerError::Config(
                "TLS settings (broker_use_ssl, ssl_*) cannot apply to a unix socket; use rediss:// or drop them".into(),
            ));
        }
        if let RedisEndpoint::Sentinel { nodes, master_name } = &self.endpoint {
            if nodes.is_empty() {
                return Err(BrokerError::Config("a sentinel:// URL needs at least one node".into()));
            }
            if master_name.as_deref().unwrap_or("").is_empty() {
                return Err(BrokerError::Config(
                    "'master_name' must be given for sentinel:// (e.g. ?master_name=mymaster)".into(),
                ));
            }
        }
        if let Some(tls) = &self.tls {
            if tls.certfile.is_some() != tls.keyfile.is_some() {
                return Err(BrokerError::Config("ssl_certfile and ssl_keyfile must be given together".into()));
            }
        }
        if self.fetch_batch == 0 {
            return Err(BrokerError::Config("fetch_batch must be at least 1".into()));
        }
        if self.brpop_timeout.is_zero() {
            return Err(BrokerError::Config(
                "brpop_timeout must be above zero (BRPOP 0 would block forever and hide dead connections)".into(),
            ));
        }
        Ok(())
    }

    /// How often the consumer sweeps for messages past the visibility timeout:
    /// `unacked_restore_interval × unacked_restore_throttle`, as kombu's timer does.
    pub fn restore_visible_every(&self) -> Duration {
        self.unacked_restore_interval.saturating_mul(self.unacked_restore_throttle.max(1))
    }

    /// The fanout channel prefix with the database number filled in.
    pub fn fanout_prefix_str(&self) -> String {
        match &self.fanout_prefix {
            FanoutPrefix::Db => format!("/{}.", self.db),
            FanoutPrefix::Disabled => String::new(),
            FanoutPrefix::Custom(p) => p.replace("{db}", &self.db.to_string()),
        }
    }

    /// The broker URL with the password masked, for logs: `redis://:**@host:6379/0`.
    pub fn masked_url(&self) -> String {
        let endpoint = self.connection_endpoint();
        endpoint.masked_url(self.db, self.username.as_deref(), self.password.is_some(), Dialect::Kombu)
    }

    /// The endpoint in the shape the connection code takes (TLS in it, no master name).
    pub(crate) fn connection_endpoint(&self) -> Endpoint {
        match (&self.endpoint, &self.tls) {
            (RedisEndpoint::Tcp { host, port }, Some(tls)) => {
                Endpoint::Tls { host: host.clone(), port: *port, tls: tls.clone() }
            }
            (RedisEndpoint::Tcp { host, port }, None) => Endpoint::Tcp { host: host.clone(), port: *port },
            (RedisEndpoint::Unix { path }, _) => Endpoint::Unix { path: path.clone() },
            (RedisEndpoint::Sentinel { nodes, .. }, tls) => {
                Endpoint::Sentinel { nodes: nodes.clone(), tls: tls.clone() }
            }
        }
    }
}

fn parse_db(path: &str) -> Result<i64, BrokerError> {
    let trimmed = path.trim_start_matches('/');
    if trimmed.is_empty() {
        return Ok(0);
    }
    limits::DB.parse_whole::<i64>(trimmed).map_err(|e| BrokerError::Config(format!("database {path:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_url_with_password_and_db() {
        let o = RedisOptions::from_url("redis://:s3cr%40t@example.org:6380/2").unwrap();
        assert_eq!(o.endpoint, RedisEndpoint::Tcp { host: "example.org".into(), port: 6380 });
        assert_eq!(o.db, 2);
        assert_eq!(o.username, None);
        assert_eq!(o.password.as_ref().map(Secret::expose), Some("s3cr@t"));
        assert_eq!(o.masked_url(), "redis://:**@example.org:6380/2");
        assert!(!format!("{o:?}").contains("s3cr"), "Debug must not show the password");
        assert_eq!(o.fanout_prefix_str(), "/2.");
    }

    #[test]
    fn defaults_are_kombus() {
        let o = RedisOptions::from_url("redis://h").unwrap();
        assert_eq!(o.endpoint, RedisEndpoint::Tcp { host: "h".into(), port: 6379 });
        assert_eq!(o.db, 0);
        assert_eq!(o.visibility_timeout, Duration::from_secs(3600));
        assert_eq!(o.priority_steps, vec![0, 3, 6, 9]);
        assert_eq!(o.sep, "\x06\x16");
        assert_eq!(o.brpop_timeout, Duration::from_secs(1));
        assert_eq!(o.restore_visible_every(), Duration::from_secs(100));
        assert_eq!(o.masked_url(), "redis://h:6379/0");
        assert!(RedisOptions::from_url("redis://h/").unwrap().db == 0);
    }

    #[test]
    fn acl_user() {
        let o = RedisOptions::from_url("redis://worker:pw@127.0.0.1:7000/1").unwrap();
        assert_eq!(o.username.as_deref(), Some("worker"));
        assert_eq!(o.masked_url(), "redis://worker:**@127.0.0.1:7000/1");
    }

    #[test]
    fn rediss_with_kombu_ssl_query() {
        let o = RedisOptions::from_url(
            "rediss://h:6390/0?ssl_cert_reqs=required&ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem&ssl_keyfile=/k.pem",
        )
        .unwrap();
        let tls = o.tls.clone().unwrap();
        assert_eq!(tls.cert_reqs, CertReqs::Required);
        assert_eq!(tls.ca_certs, Some(PathBuf::from("/ca.pem")));
        assert_eq!(tls.certfile, Some(PathBuf::from("/c.pem")));
        assert_eq!(tls.keyfile, Some(PathBuf::from("/k.pem")));
        assert_eq!(o.masked_url(), "rediss://h:6390/0");
        let none = RedisOptions::from_url("rediss://h/0?ssl_cert_reqs=CERT_NONE").unwrap();
        assert_eq!(none.tls.unwrap().cert_reqs, CertReqs::None);
        assert!(RedisOptions::from_url("redis://h/0?ssl_cert_reqs=none").is_err(), "ssl options need rediss");
        assert!(RedisOptions::from_url("rediss://h/0?ssl_cert_reqs=maybe").is_err());
        let mut half = RedisOptions::from_url("rediss://h/0?ssl_certfile=/c.pem").unwrap();
        assert!(half.validate().is_err(), "a cert without a key is refused");
        half.tls = Some(TlsOptions::default());
        half.validate().unwrap();
    }

    #[test]
    fn unix_socket_in_kombus_spelling() {
        let o = RedisOptions::from_url("redis+socket:///tmp/redis.sock?virtual_host=3").unwrap();
        assert_eq!(o.endpoint, RedisEndpoint::Unix { path: "/tmp/redis.sock".into() });
        assert_eq!(o.db, 3);
        assert_eq!(o.masked_url(), "redis+socket:///tmp/redis.sock?virtual_host=3");
        let o = RedisOptions::from_url("unix://:pw@/tmp/redis.sock?db=4").unwrap();
        assert_eq!(o.db, 4);
        assert_eq!(o.masked_url(), "redis+socket://:**@/tmp/redis.sock?virtual_host=4");
        assert!(RedisOptions::from_url("redis+socket://").is_err());
    }

    #[test]
    fn sentinel_list_with_master_name() {
        let o =
            RedisOptions::from_url("sentinel://:pw@a:26379/1;sentinel://b;sentinel://[::1]:26381?master_name=mymaster")
                .unwrap();
        assert_eq!(
            o.endpoint,
            RedisEndpoint::Sentinel {
                nodes: vec![("a".into(), 26379), ("b".into(), 26379), ("::1".into(), 26381)],
                master_name: Some("mymaster".into()),
            }
        );
        assert_eq!(o.db, 1);
        o.validate().unwrap();
        assert_eq!(o.masked_url(), "sentinel://:**@a:26379/1;sentinel://:**@b:26379/1;sentinel://:**@[::1]:26381/1");
        let missing = RedisOptions::from_url("sentinel://a:26379").unwrap();
        let err = missing.validate().unwrap_err().to_string();
        assert!(err.contains("master_name"), "{err}");
    }

    #[test]
    fn transport_options_in_the_query() {
        let o = RedisOptions::from_url(
            "redis://h/0?visibility_timeout=2.5&global_keyprefix=pfx:&queue_order_strategy=sorted&polling_interval=0.2",
        )
        .unwrap();
        assert_eq!(o.visibility_timeout, Duration::from_millis(2500));
        assert_eq!(o.global_keyprefix, "pfx:");
        assert_eq!(o.queue_order_strategy, QueueOrderStrategy::Sorted);
        assert_eq!(o.brpop_timeout, Duration::from_millis(200));
        assert!(RedisOptions::from_url("redis://h/0?visibility_timeout=soon").is_err());
        assert!(RedisOptions::from_url("redis://h/0?queue_order_strategy=random").is_err());
    }

    #[test]
    fn bad_urls_are_refused_without_showing_the_password() {
        for bad in ["redis://:pw@h:port/0", "redis://:pw@h/x", "amqp://:pw@h/", "redis://:pw@h/0;redis://h", "h:6379"] {
            let err = RedisOptions::from_url(bad).unwrap_err().to_string();
            assert!(!err.contains("pw@"), "{bad}: {err}");
        }
    }

    /// Every number of the query, with the values that must not get through:
    /// each is refused with the option's name and the accepted range.
    #[test]
    fn every_number_in_the_query_is_range_checked() {
        let extremes = ["inf", "-inf", "nan", "1e300", "-1", "abc", "", "99999999999999999999999"];
        for (option, zero_ok) in [
            ("visibility_timeout", false),
            ("polling_interval", false),
            ("brpop_timeout", false),
            ("socket_timeout", false),
            ("socket_connect_timeout", false),
            ("health_check_interval", true),
            ("unacked_restore_interval", false),
            ("unacked_restore_limit", false),
            ("db", true),
            ("virtual_host", true),
        ] {
            let zero = if zero_ok { vec![] } else { vec!["0"] };
            for bad in extremes.iter().chain(&zero) {
                let url = format!("redis://:pw@h/0?{option}={bad}");
                let err = RedisOptions::from_url(&url).map(|_| ()).unwrap_err().to_string();
                assert!(err.contains(option) || option == "brpop_timeout", "{url}: {err}");
                assert!(err.contains("expected") && err.contains(" to "), "{url}: {err}");
                assert!(!err.contains("pw"), "{url}: {err}");
            }
        }
        for bad in ["/-1", "/2147483647", "/1.5", "/1e3"] {
            let url = format!("redis://h{bad}");
            let err = RedisOptions::from_url(&url).map(|_| ()).unwrap_err().to_string();
            assert!(err.contains("database") && err.contains("2147483646"), "{url}: {err}");
        }
        assert!(RedisOptions::from_url("redis://h:0/0").is_err(), "port 0 is refused");
        let o = RedisOptions::from_url("redis://h/2147483646?health_check_interval=0&unacked_restore_limit=5").unwrap();
        assert_eq!((o.db, o.health_check_interval, o.unacked_restore_limit), (2_147_483_646, Duration::ZERO, Some(5)));
        // Set in code, out of range: refused by validate().
        let mut o = RedisOptions::from_url("redis://h").unwrap();
        o.visibility_timeout = Duration::MAX;
        assert!(o.validate().unwrap_err().to_string().contains("visibility_timeout"));
    }

    #[test]
    fn sentinel_takes_tls_from_the_query_or_the_options() {
        let o = RedisOptions::from_url("sentinel://:pw@a:26379;sentinel://b?master_name=m&ssl_cert_reqs=none").unwrap();
        assert_eq!(o.tls.as_ref().map(|t| t.cert_reqs), Some(CertReqs::None));
        let Endpoint::Sentinel { tls: Some(tls), nodes } = o.connection_endpoint() else { panic!("no TLS") };
        assert_eq!((tls.cert_reqs, nodes.len()), (CertReqs::None, 2));
        assert!(o.masked_url().ends_with("?ssl_cert_reqs=none"), "{}", o.masked_url());
        let mut plain = RedisOptions::from_url("sentinel://a?master_name=m").unwrap();
        assert!(matches!(plain.connection_endpoint(), Endpoint::Sentinel { tls: None, .. }));
        plain.tls = Some(TlsOptions::default());
        assert!(matches!(plain.connection_endpoint(), Endpoint::Sentinel { tls: Some(_), .. }));
        let mut unix = RedisOptions::from_url("redis+socket:///tmp/r.sock").unwrap();
        unix.tls = Some(TlsOptions::default());
        assert!(unix.validate().unwrap_err().to_string().contains("unix socket"));
    }

    #[test]
    fn custom_and_disabled_fanout_prefix() {
        let mut o = RedisOptions::from_url("redis://h/5").unwrap();
        o.fanout_prefix = FanoutPrefix::Disabled;
        assert_eq!(o.fanout_prefix_str(), "");
        o.fanout_prefix = FanoutPrefix::Custom("/x{db}.".into());
        assert_eq!(o.fanout_prefix_str(), "/x5.");
    }
}

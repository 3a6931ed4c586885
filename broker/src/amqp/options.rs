//! AMQP broker URLs and options, read as kombu reads them.
//!
//! - `amqp://user:password@host:port/vhost` (also `pyamqp://`, `librabbitmq://`),
//!   `amqps://` for TLS; user and password default to `guest`, the port to
//!   5672 (5671 with TLS), an empty path to the vhost `/` (`//` too), other
//!   paths are percent-decoded;
//! - failover: several URLs joined by `;` (`amqp://h1;amqp://h2`), tried in
//!   turn on every (re)connect, as kombu's `failover_strategy=round-robin`;
//! - query: `heartbeat`, `connection_timeout` (ms), `frame_max`, `channel_max`,
//!   and for TLS `ssl_cert_reqs` (`none`/`CERT_NONE`, ...), `ssl_ca_certs`,
//!   `ssl_certfile`, `ssl_keyfile`.
//!
//! The topology options (queue arguments, quorum queues, exchange types) come
//! from the Celery settings through [`AmqpOptions`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use celeriac_protocol::Value;
use celeriac_redisconn::CertReqs;

use crate::error::BrokerError;
use crate::exchange::ExchangeKind;

/// One broker address of a (failover) URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmqpEndpoint {
    /// TLS (`amqps://`).
    pub tls: bool,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
    /// Virtual host.
    pub vhost: String,
    /// `heartbeat` from the query, seconds.
    pub heartbeat: Option<u16>,
    /// `connection_timeout` from the query, milliseconds.
    pub connection_timeout_ms: Option<u64>,
    /// `frame_max` from the query.
    pub frame_max: Option<u32>,
    /// `channel_max` from the query.
    pub channel_max: Option<u16>,
}

impl AmqpEndpoint {
    /// The address as a URL with the password masked (`**`, as kombu's `as_uri`).
    pub fn masked(&self) -> String {
        let scheme = if self.tls { "amqps" } else { "amqp" };
        let vhost = if self.vhost == "/" { "/".to_owned() } else { self.vhost.clone() };
        format!("{scheme}://{}:**@{}:{}/{vhost}", self.user, self.host, self.port)
    }
}

/// The type of a queue (`x-queue-type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QueueType {
    /// RabbitMQ's classic queue (no `x-queue-type` argument is sent).
    #[default]
    Classic,
    /// A replicated quorum queue (`x-queue-type: quorum`): durable, never
    /// exclusive or auto-delete, no `x-max-priority`.
    Quorum,
}

impl std::str::FromStr for QueueType {
    type Err = BrokerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "classic" => Ok(QueueType::Classic),
            "quorum" => Ok(QueueType::Quorum),
            other => Err(BrokerError::Config(format!(
                "task_default_queue_type {other:?} is not a queue type; use classic or quorum"
            ))),
        }
    }
}

/// How a queue is declared: the `task_queues` entry of Celery's settings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueSpec {
    /// Its exchange (default: the queue's name).
    pub exchange: Option<String>,
    /// The exchange's type (default: `task_default_exchange_type`).
    pub exchange_type: Option<ExchangeKind>,
    /// Its binding key (default: the queue's name).
    pub routing_key: Option<String>,
    /// Queue arguments as given (`x-max-priority`, `x-queue-type`, ...).
    pub arguments: Vec<(String, Value)>,
}

impl QueueSpec {
    /// The `x-queue-type` it asks for, if any.
    pub fn queue_type(&self) -> Option<QueueType> {
        self.arguments.iter().find(|(k, _)| k == "x-queue-type").and_then(|(_, v)| v.as_str()?.parse().ok())
    }
}

/// TLS for `amqps://` (`broker_use_ssl`, or the `ssl_*` options of the
/// URL), as py-amqp's `SSLTransport` takes it (see the `tls` module).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AmqpTls {
    /// Whether the broker's certificate is verified (`cert_reqs`; `CERT_NONE` accepts any).
    pub cert_reqs: CertReqs,
    /// CA certificates (PEM) to verify the broker with, instead of the system's (`ca_certs`).
    pub ca_certs: Option<PathBuf>,
    /// Client certificate (PEM) for brokers that ask for one (`certfile`).
    pub certfile: Option<PathBuf>,
    /// The client certificate's unencrypted PEM key (`keyfile`; default: a key inside `certfile`).
    pub keyfile: Option<PathBuf>,
}

impl AmqpTls {
    /// Sets one of `ssl_cert_reqs`/`cert_reqs`, `ssl_ca_certs`/`ca_certs`,
    /// `ssl_certfile`/`certfile`, `ssl_keyfile`/`keyfile` (other keys: `false`).
    /// `cert_reqs` takes what Celery accepts: `required`/`CERT_REQUIRED`,
    /// `optional`/`CERT_OPTIONAL`, `none`/`CERT_NONE`, in any case, or
    /// Python's `ssl.CERT_*` numbers 2, 1, 0.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool, BrokerError> {
        match key.strip_prefix("ssl_").unwrap_or(key) {
            "cert_reqs" => {
                self.cert_reqs = match value.trim() {
                    "0" => CertReqs::None,
                    "1" => CertReqs::Optional,
                    "2" => CertReqs::Required,
                    text => text.parse().map_err(|_| {
                        BrokerError::Config(format!(
                            "{key}={value:?} names no certificate requirement; use CERT_REQUIRED, CERT_OPTIONAL or \
                             CERT_NONE (or required, optional, none)"
                        ))
                    })?,
                }
            }
            "ca_certs" => self.ca_certs = Some(value.into()),
            "certfile" => self.certfile = Some(value.into()),
            "keyfile" => self.keyfile = Some(value.into()),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// Everything the AMQP transport is configured with.
#[derive(Clone, Debug)]
pub struct AmqpOptions {
    /// The addresses, tried in turn (failover).
    pub endpoints: Vec<AmqpEndpoint>,
    /// Heartbeat asked for, seconds (`broker_heartbeat`; 0 disables; the
    /// broker may lower it). A `heartbeat` in the URL wins.
    pub heartbeat: u16,
    /// How long one connection attempt may take (`broker_connection_timeout`).
    pub connect_timeout: Duration,
    /// Attempts before an operation gives up on an unreachable broker
    /// (`broker_connection_max_retries`; `None`: forever). Consumers and
    /// subscriptions retry forever.
    pub max_retries: Option<u32>,
    /// Shortest wait before reconnecting.
    pub backoff_min: Duration,
    /// Longest wait before reconnecting.
    pub backoff_max: Duration,
    /// Wait for the broker's confirm of every publish (`confirm_publish`).
    pub confirm_publish: bool,
    /// Declared queues by name (`task_queues`).
    pub queues: HashMap<String, QueueSpec>,
    /// The type of queues not in `queues` (`task_default_queue_type`).
    pub default_queue_type: QueueType,
    /// The type of exchanges not declared otherwise (`task_default_exchange_type`).
    pub default_exchange_type: ExchangeKind,
    /// `x-max-priority` of queues not in `queues` (`task_queue_max_priority`).
    pub default_max_priority: Option<u8>,
    /// Consumers of quorum queues use per-consumer qos and set up native
    /// delayed delivery (`worker_detect_quorum_queues`).
    pub detect_quorum_queues: bool,
    /// The events exchange (`event_exchange`), a durable topic exchange.
    pub event_exchange: String,
    /// Remote control's name (`control_exchange`): `<name>.pidbox` is the
    /// fanout exchange, `reply.<name>.pidbox` the replies' direct exchange.
    pub control_exchange: String,
    /// `x-message-ttl` of event queues (`event_queue_ttl`).
    pub event_queue_ttl: Option<Duration>,
    /// `x-expires` of event queues (`event_queue_expires`).
    pub event_queue_expires: Option<Duration>,
    /// TLS settings.
    pub tls: AmqpTls,
}

impl Default for AmqpOptions {
    fn default() -> Self {
        AmqpOptions {
            endpoints: Vec::new(),
            heartbeat: 120,
            connect_timeout: Duration::from_secs(4),
            max_retries: Some(100),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            confirm_publish: true,
            queues: HashMap::new(),
            default_queue_type: QueueType::Classic,
            default_exchange_type: ExchangeKind::Direct,
            default_max_priority: None,
            detect_quorum_queues: true,
            event_exchange: "celeryev".into(),
            control_exchange: "celery".into(),
            event_queue_ttl: Some(Duration::from_secs(5)),
            event_queue_expires: Some(Duration::from_secs(60)),
            tls: AmqpTls::default(),
        }
    }
}

/// Whether `url` names an AMQP broker.
pub fn is_amqp_url(url: &str) -> bool {
    let first = url.split(';').next().unwrap_or("").trim();
    ["amqp://", "amqps://", "pyamqp://", "librabbitmq://"].iter().any(|s| first.starts_with(s))
}

impl AmqpOptions {
    /// Options for `url` (one URL or a `;`-separated failover list), defaults
    /// otherwise; `ssl_*` options in an `amqps://` URL's query set [`AmqpOptions::tls`].
    pub fn from_url(url: &str) -> Result<AmqpOptions, BrokerError> {
        let mut tls = AmqpTls::default();
        for one in url.split(';').map(str::trim).filter(|u| !u.is_empty()) {
            let query = one.split_once('?').map_or("", |(_, q)| q);
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                if key.starts_with("ssl_") {
                    tls.set(key, &decode(one, value)?)?;
                }
            }
        }
        Ok(AmqpOptions { endpoints: parse_urls(url)?, tls, ..AmqpOptions::default() })
    }

    /// The remote-control fanout exchange (`celery.pidbox`).
    pub fn pidbox_exchange(&self) -> String {
        format!("{}.pidbox", self.control_exchange)
    }

    /// The remote-control replies' exchange (`reply.celery.pidbox`).
    pub fn reply_exchange(&self) -> String {
        format!("reply.{}.pidbox", self.control_exchange)
    }

    /// Checks the options make sense.
    pub fn validate(&self) -> Result<(), BrokerError> {
        if self.endpoints.is_empty() {
            return Err(BrokerError::Config("the AMQP broker URL names no host".into()));
        }
        Ok(())
    }
}

/// Parses a `;`-separated list of AMQP URLs.
pub fn parse_urls(url: &str) -> Result<Vec<AmqpEndpoint>, BrokerError> {
    url.split(';').map(str::trim).filter(|u| !u.is_empty()).map(parse_one).collect()
}

fn bad(url: &str, why: &str) -> BrokerError {
    BrokerError::Config(format!(
        "cannot parse AMQP URL {}: {why}; expected amqp://user:password@host:port/vhost",
        celeriac_redisconn::mask_password(url)
    ))
}

fn parse_one(url: &str) -> Result<AmqpEndpoint, BrokerError> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad(url, "no scheme"))?;
    let tls = match scheme {
        "amqp" | "pyamqp" | "librabbitmq" => false,
        "amqps" => true,
        other => return Err(bad(url, &format!("unknown scheme {other:?}"))),
    };
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        Some(info) => {
            let (u, p) = info.split_once(':').unwrap_or((info, ""));
            (decode(url, u)?, decode(url, p)?)
        }
        None => ("guest".to_owned(), "guest".to_owned()),
    };
    let (host, port) = if let Some(inner) = hostport.strip_prefix('[') {
        let (h, after) = inner.split_once(']').ok_or_else(|| bad(url, "unclosed [ in the host"))?;
        (h.to_owned(), after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (hostport.to_owned(), None),
        }
    };
    let port = match port.filter(|p| !p.is_empty()) {
        Some(p) => p.parse::<u16>().map_err(|_| bad(url, "the port is not a number from 1 to 65535"))?,
        None if tls => 5671,
        None => 5672,
    };
    let host = if host.is_empty() { "localhost".to_owned() } else { host };
    let vhost = match decode(url, path)? {
        v if v.is_empty() => "/".to_owned(),
        v => v,
    };
    let mut endpoint = AmqpEndpoint {
        tls,
        host,
        port,
        user: if user.is_empty() { "guest".into() } else { user },
        password,
        vhost,
        heartbeat: None,
        connection_timeout_ms: None,
        frame_max: None,
        channel_max: None,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = || value.parse::<u64>().map_err(|_| bad(url, &format!("{key}={value:?} is not a number")));
        match key {
            "heartbeat" => endpoint.heartbeat = Some(u16::try_from(number()?).unwrap_or(u16::MAX)),
            "connection_timeout" => endpoint.connection_timeout_ms = Some(number()?),
            "frame_max" => endpoint.frame_max = Some(u32::try_from(number()?).unwrap_or(u32::MAX)),
            "channel_max" => endpoint.channel_max = Some(u16::try_from(number()?).unwrap_or(u16::MAX)),
            key if key.starts_with("ssl_") => {} // AmqpOptions::from_url reads them
            other => tracing::debug!(option = other, "ignoring an AMQP URL option celeriac does not use"),
        }
    }
    Ok(endpoint)
}

fn decode(url: &str, text: &str) -> Result<String, BrokerError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            let byte =
                hex.and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or_else(|| bad(url, "bad percent escape"))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad(url, "it decodes to invalid UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_read_as_kombu_reads_them() {
        let e = &parse_urls("amqp://guest:guest@localhost:5672//").unwrap()[0];
        assert_eq!((e.host.as_str(), e.port, e.vhost.as_str(), e.tls), ("localhost", 5672, "/", false));
        let e = &parse_urls("amqp://h").unwrap()[0];
        assert_eq!((e.user.as_str(), e.password.as_str(), e.vhost.as_str()), ("guest", "guest", "/"));
        let e = &parse_urls("amqps://u:p%40ss@h/my%2Fvhost?heartbeat=10").unwrap()[0];
        assert_eq!((e.port, e.password.as_str(), e.vhost.as_str(), e.heartbeat), (5671, "p@ss", "my/vhost", Some(10)));
        let all = parse_urls("amqp://h1:5673;amqp://h2:5674//").unwrap();
        assert_eq!(all.iter().map(|e| (e.host.as_str(), e.port)).collect::<Vec<_>>(), [("h1", 5673), ("h2", 5674)]);
        assert_eq!(all[0].masked(), "amqp://guest:**@h1:5673//");
        assert!(parse_urls("amqp://h:notaport").is_err());
        assert!(parse_urls("http://h").is_err());
        assert!(parse_urls("amqp://h/%zz").is_err());
        assert!(is_amqp_url("amqp://a;amqp://b") && is_amqp_url("pyamqp://x") && !is_amqp_url("redis://x"));
    }

    #[test]
    fn tls_options_come_from_the_query_and_take_celerys_spellings() {
        let o = AmqpOptions::from_url("amqps://h?ssl_cert_reqs=CERT_NONE&ssl_ca_certs=%2Fca.pem&heartbeat=5").unwrap();
        assert_eq!(o.tls.cert_reqs, CertReqs::None);
        assert_eq!(o.tls.ca_certs.as_deref(), Some(std::path::Path::new("/ca.pem")));
        assert_eq!(o.endpoints[0].heartbeat, Some(5));
        let mut tls = AmqpTls::default();
        for (value, want) in [("none", CertReqs::None), ("0", CertReqs::None), ("CERT_OPTIONAL", CertReqs::Optional)] {
            assert!(tls.set("cert_reqs", value).unwrap());
            assert_eq!(tls.cert_reqs, want, "{value}");
        }
        assert!(tls.set("ssl_certfile", "/c.pem").unwrap() && tls.set("keyfile", "/k.pem").unwrap());
        assert!(!tls.set("ssl_version", "x").unwrap());
        let err = tls.set("cert_reqs", "maybe").unwrap_err().to_string();
        assert!(err.contains("CERT_NONE"), "{err}");
        assert!(AmqpOptions::from_url("amqps://h?ssl_cert_reqs=sometimes").is_err());
    }

    #[test]
    fn queue_types_come_from_arguments() {
        let spec = QueueSpec { arguments: vec![("x-queue-type".into(), "quorum".into())], ..QueueSpec::default() };
        assert_eq!(spec.queue_type(), Some(QueueType::Quorum));
        assert_eq!(QueueSpec::default().queue_type(), None);
        assert!("lazy".parse::<QueueType>().is_err());
    }
}

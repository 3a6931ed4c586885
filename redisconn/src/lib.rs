//! Redis connection settings shared by the broker and the result backend: URL
//! spellings of kombu and Celery, TLS, Sentinel, password masking.
//!
//! [`UrlParts`] splits one URL by the rules of a [`Dialect`]; [`Endpoint`] is
//! where the server is, with its masked URL and its redis client ([`Target`]);
//! [`TlsOptions`] reads the `ssl_*` files; [`limits`] holds the accepted range
//! of every number a URL gives; [`mask`] keeps passwords out of logs, errors
//! and `inspect conf`. What the broker and the backend read differently (their
//! query options, schemes, database spellings, error wording) stays with them:
//! both convert [`Error`] into their own error type.

use std::path::{Path, PathBuf};
use std::time::Duration;

use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Client, ClientTlsConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};
use redis::{RedisError, TlsCertificates, TlsMode};

pub mod limits;
pub mod mask;

pub use limits::{Limit, OutOfRange};
pub use mask::{is_hidden_setting, mask_password, sanitize_url};

/// Redis's default port.
pub const DEFAULT_PORT: u16 = 6379;
/// Sentinel's default port (kombu's default for `sentinel://` nodes).
pub const DEFAULT_SENTINEL_PORT: u16 = 26379;
/// How long a connection attempt may take when `socket_connect_timeout` is unset.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Whose rules a URL is read by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// Broker URLs, as kombu: the scheme and `ssl_cert_reqs` in any case, every
    /// node of a masked Sentinel URL with the credentials. Stricter than kombu:
    /// bad `%` escapes and text after `[host]` are refused, `#` and `+` are literal.
    Kombu,
    /// Result backend URLs, as Celery (urllib's rules): the scheme and
    /// `ssl_cert_reqs` as Celery spells them, `#fragment` dropped, `+` in the query
    /// a space, bad `%` escapes kept, credentials on the first Sentinel node only.
    Celery,
}

/// What is wrong with a URL's syntax.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlProblem {
    /// There is no `://`.
    #[error("expected scheme://host... (e.g. redis://localhost:6379/0)")]
    NoScheme,
    /// A `[` without its `]`.
    #[error("unterminated [IPv6] host")]
    UnclosedBracket,
    /// Something other than `:port` after `[host]` ([`Dialect::Kombu`]).
    #[error("junk after the [host]")]
    JunkAfterHost,
    /// The port is not a number from 1 to 65535.
    #[error("port {0:?} is not a number from 1 to 65535")]
    BadPort(String),
    /// A `%` without two hex digits, from there on ([`Dialect::Kombu`]).
    #[error("bad percent escape near {0:?}")]
    BadEscape(String),
    /// The decoded bytes are not UTF-8 ([`Dialect::Kombu`]).
    #[error("the URL decodes to invalid UTF-8")]
    InvalidUtf8,
}

/// Why a URL or connection setting cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A URL cannot be split.
    #[error("cannot parse {url}: {problem}")]
    Url {
        /// The URL (or its `;`-separated part) that failed, password masked.
        url: String,
        /// What is wrong.
        problem: UrlProblem,
    },
    /// A part of a Sentinel URL is not `sentinel://`.
    #[error("every node of a Sentinel URL must be sentinel://, not {scheme}://")]
    NotSentinel {
        /// The whole URL, password masked.
        url: String,
        /// The part's scheme.
        scheme: String,
    },
    /// `ssl_cert_reqs` has a value that names no [`CertReqs`].
    #[error("ssl_cert_reqs={0:?}; use required, optional or none (or CERT_REQUIRED ...)")]
    CertReqs(String),
    /// A TLS file could not be read.
    #[error("cannot read the {option} {}: {source}", .path.display())]
    TlsFile {
        /// The setting that names it: `ssl_ca_certs`, `ssl_certfile` or `ssl_keyfile`.
        option: &'static str,
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `ssl_certfile` without `ssl_keyfile`, or the reverse.
    #[error("a client certificate needs both ssl_certfile and ssl_keyfile")]
    HalfClientCert,
    /// A Sentinel endpoint without the master's name.
    #[error("the Sentinel master's name is not set")]
    NoMasterName,
    /// The redis client refused the settings.
    #[error("{url}: {source}")]
    Client {
        /// The URL, password masked.
        url: String,
        /// What redis reported.
        source: RedisError,
    },
}

/// One `scheme://user:password@host:port/path?query` URL, split as kombu's
/// `url_to_parts` does and percent-decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UrlParts {
    /// The scheme: lowercased for [`Dialect::Kombu`], as written for [`Dialect::Celery`].
    pub scheme: String,
    /// The user name (`Some("")` for `://:password@`).
    pub username: Option<String>,
    /// The password.
    pub password: Option<String>,
    /// The host, without `[]`; empty if none.
    pub host: String,
    /// The port, if given.
    pub port: Option<u16>,
    /// The path from its leading `/` on; empty if none.
    pub path: String,
    /// The query parameters in order.
    pub query: Vec<(String, String)>,
}

impl UrlParts {
    /// Splits and decodes `url` by `dialect`'s rules.
    pub fn parse(url: &str, dialect: Dialect) -> Result<UrlParts, Error> {
        let strict = dialect == Dialect::Kombu;
        let err = |problem| Error::Url { url: mask_password(url), problem };
        let decode = |text: &str| percent_decode(text, strict).map_err(err);
        let (scheme, rest) = url.split_once("://").ok_or_else(|| err(UrlProblem::NoScheme))?;
        let rest = if strict { rest } else { rest.split('#').next().unwrap_or_default() };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (netloc, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (userinfo, hostport) = netloc.rsplit_once('@').map_or((None, netloc), |(u, h)| (Some(u), h));
        let (username, password) = match userinfo.map(|info| info.split_once(':').ok_or(info)) {
            None => (None, None),
            Some(Ok((user, password))) => (Some(decode(user)?), Some(decode(password)?)),
            Some(Err(user)) => (Some(decode(user)?), None),
        };
        let (host, port) = match hostport.strip_prefix('[') {
            Some(bracketed) => {
                let (host, after) = bracketed.split_once(']').ok_or_else(|| err(UrlProblem::UnclosedBracket))?;
                match after.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None if after.is_empty() || !strict => (host, None),
                    None => return Err(err(UrlProblem::JunkAfterHost)),
                }
            }
            None => hostport.rsplit_once(':').map_or((hostport, None), |(host, port)| (host, Some(port))),
        };
        let port = match port.filter(|p| !p.is_empty()) {
            Some(p) => {
                Some(p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| err(UrlProblem::BadPort(p.to_owned())))?)
            }
            None => None,
        };
        let mut pairs = Vec::new();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let pair = if strict { pair.to_owned() } else { pair.replace('+', " ") };
            let (key, value) = pair.split_once('=').unwrap_or((&pair, ""));
            pairs.push((decode(key)?, decode(value)?));
        }
        let scheme = if strict { scheme.to_ascii_lowercase() } else { scheme.to_owned() };
        Ok(UrlParts { scheme, username, password, host: decode(host)?, port, path: decode(path)?, query: pairs })
    }

    /// The host (`localhost` if none) and the port (`default_port` if none).
    pub fn host_port(&self, default_port: u16) -> (String, u16) {
        let host = if self.host.is_empty() { "localhost" } else { &self.host };
        (host.to_owned(), self.port.unwrap_or(default_port))
    }

    /// The path as a unix socket's, unless it is empty or `/`.
    pub fn socket_path(&self) -> Option<PathBuf> {
        (!self.path.is_empty() && self.path != "/").then(|| PathBuf::from(&self.path))
    }
}

/// The non-empty `;`-separated parts of a URL, trimmed.
pub fn segments(url: &str) -> impl Iterator<Item = &str> {
    url.split(';').map(str::trim).filter(|s| !s.is_empty())
}

/// Every part of a `sentinel://a[;sentinel://b...]` URL; the first holds the
/// credentials and the database.
pub fn sentinel_nodes(url: &str, dialect: Dialect) -> Result<Vec<UrlParts>, Error> {
    let node = |segment| match UrlParts::parse(segment, dialect)? {
        parts if parts.scheme == "sentinel" => Ok(parts),
        parts => Err(Error::NotSentinel { url: mask_password(url), scheme: parts.scheme }),
    };
    segments(url).map(node).collect()
}

/// Decodes `%XX` escapes; strict refuses a bad escape or invalid UTF-8, which
/// otherwise stay as they are (as Python's `unquote`).
fn percent_decode(text: &str, strict: bool) -> Result<String, UrlProblem> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).filter(|_| bytes[i] == b'%').and_then(|h| std::str::from_utf8(h).ok());
        match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 3;
                continue;
            }
            None if strict && bytes[i] == b'%' => return Err(UrlProblem::BadEscape(text[i..].to_owned())),
            None => out.push(bytes[i]),
        }
        i += 1;
    }
    match String::from_utf8(out) {
        Err(_) if strict => Err(UrlProblem::InvalidUtf8),
        decoded => Ok(decoded.unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())),
    }
}

/// The query parameters that configure TLS, as kombu and Celery name them.
pub const TLS_PARAMS: [&str; 4] = ["ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile"];

/// Whether the server's certificate is verified (`ssl_cert_reqs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CertReqs {
    /// Verify the certificate chain and host name (`CERT_REQUIRED`, the default).
    #[default]
    Required,
    /// Python's `CERT_OPTIONAL`, which for a client verifies like `CERT_REQUIRED`.
    Optional,
    /// Accept any certificate (`CERT_NONE`): encrypted, but not authenticated.
    None,
}

impl CertReqs {
    /// The lowercase name (`required`, `optional`, `none`), as in a URL query.
    pub fn name(self) -> &'static str {
        match self {
            CertReqs::Required => "required",
            CertReqs::Optional => "optional",
            CertReqs::None => "none",
        }
    }

    /// The warning to log at startup for a setting that does not verify as
    /// one would expect (`None` for `required`). `whose` names the connection:
    /// `"broker"` or `"result backend"`. The broker and the backend log the same words.
    pub fn warning(self, whose: &str) -> Option<String> {
        match self {
            CertReqs::Required => None,
            CertReqs::Optional => Some(
                "ssl_cert_reqs=CERT_OPTIONAL: a client verifies the server's certificate anyway, as with \
                 CERT_REQUIRED"
                    .to_owned(),
            ),
            CertReqs::None => Some(format!(
                "ssl_cert_reqs=CERT_NONE: the {whose}'s certificate is not verified, so the connection is open to \
                 man-in-the-middle attacks; give ssl_ca_certs instead"
            )),
        }
    }

    /// Reads the values Celery accepts: `CERT_REQUIRED`/`required`, `CERT_OPTIONAL`/`optional`,
    /// `CERT_NONE`/`none`.
    pub fn parse(text: &str) -> Option<CertReqs> {
        match text {
            "CERT_REQUIRED" | "required" => Some(CertReqs::Required),
            "CERT_OPTIONAL" | "optional" => Some(CertReqs::Optional),
            "CERT_NONE" | "none" => Some(CertReqs::None),
            _ => None,
        }
    }
}

/// The names of [`CertReqs::parse`] in any case, as the broker takes them.
impl std::str::FromStr for CertReqs {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parse = |text: String| CertReqs::parse(&text);
        parse(s.to_ascii_lowercase()).or_else(|| parse(s.to_ascii_uppercase())).ok_or(Error::CertReqs(s.into()))
    }
}

/// TLS settings: the `rediss://` query, `broker_use_ssl` or `redis_backend_use_ssl`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TlsOptions {
    /// Certificate verification (on by default).
    pub cert_reqs: CertReqs,
    /// PEM bundle of the CAs to trust instead of the system's (`ssl_ca_certs`).
    pub ca_certs: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (`ssl_certfile`).
    pub certfile: Option<PathBuf>,
    /// PEM private key of the client certificate (`ssl_keyfile`).
    pub keyfile: Option<PathBuf>,
}

impl TlsOptions {
    /// Sets what one of the [`TLS_PARAMS`] says (other keys change nothing),
    /// `ssl_cert_reqs` as `dialect` spells it; fails only on a bad `ssl_cert_reqs`.
    pub fn set(&mut self, key: &str, value: &str, dialect: Dialect) -> Result<(), Error> {
        match key {
            "ssl_cert_reqs" if dialect == Dialect::Kombu => self.cert_reqs = value.parse()?,
            "ssl_cert_reqs" => self.cert_reqs = CertReqs::parse(value).ok_or(Error::CertReqs(value.into()))?,
            "ssl_ca_certs" => self.ca_certs = Some(value.into()),
            "ssl_certfile" => self.certfile = Some(value.into()),
            "ssl_keyfile" => self.keyfile = Some(value.into()),
            _ => {}
        }
        Ok(())
    }

    /// Reads the client certificate and key, and the CA bundle, if given.
    pub fn certificates(&self) -> Result<TlsCertificates, Error> {
        let read = |option, path: &Path| {
            std::fs::read(path).map_err(|source| Error::TlsFile { option, path: path.to_owned(), source })
        };
        let client_tls = match (&self.certfile, &self.keyfile) {
            (Some(cert), Some(key)) => Some(ClientTlsConfig {
                client_cert: read("ssl_certfile", cert)?,
                client_key: read("ssl_keyfile", key)?,
            }),
            (None, None) => None,
            _ => return Err(Error::HalfClientCert),
        };
        let root_cert = self.ca_certs.as_deref().map(|p| read("ssl_ca_certs", p)).transpose()?;
        Ok(TlsCertificates { client_tls, root_cert })
    }
}

/// Where the Redis server is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// Plain TCP (`redis://`).
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
    },
    /// TCP with TLS (`rediss://`).
    Tls {
        /// Host name or address (also the name the certificate must carry).
        host: String,
        /// Port.
        port: u16,
        /// Certificate settings.
        tls: TlsOptions,
    },
    /// A unix socket (`redis+socket:///path`).
    Unix {
        /// The socket's path.
        path: PathBuf,
    },
    /// The master Redis Sentinel names (`sentinel://`).
    Sentinel {
        /// The Sentinel nodes, tried in order.
        nodes: Vec<(String, u16)>,
        /// TLS to the Sentinels and to the master alike, with the same
        /// certificate settings; `None` is plain TCP to both.
        tls: Option<TlsOptions>,
    },
}

/// The redis client for an [`Endpoint`].
pub enum Target {
    /// A fixed server.
    Direct(Client),
    /// The Sentinels, to ask for the master (again after a failover).
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

/// Whether waiting can fix a Redis error, for the broker and the result
/// backend alike: the connection broke, was refused or timed out; or the
/// server said to come back later (`LOADING` after a restart with
/// persistence, `BUSY` while a script runs, `OOM` at `maxmemory`,
/// `MASTERDOWN`/`READONLY`/`TRYAGAIN` around a failover), or Sentinel knows
/// no master yet. Everything else (a wrong type, a refused script, bad
/// credentials) fails again if retried.
pub fn is_transient(e: &redis::RedisError) -> bool {
    use redis::ErrorKind;
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || matches!(
            e.code(),
            Some("LOADING" | "BUSY" | "OOM" | "MASTERDOWN" | "READONLY" | "TRYAGAIN" | "CLUSTERDOWN" | "NOREPLICAS")
        )
        || matches!(e.kind(), ErrorKind::MasterNameNotFoundBySentinel | ErrorKind::NoValidReplicasFoundBySentinel)
}

/// The database and credentials for the server (under Sentinel, for the master).
pub fn redis_settings(db: i64, username: Option<&str>, password: Option<&str>) -> RedisConnectionInfo {
    let settings = RedisConnectionInfo::default().set_db(db);
    let settings = if let Some(user) = username { settings.set_username(user) } else { settings };
    if let Some(password) = password {
        settings.set_password(password)
    } else {
        settings
    }
}

impl Endpoint {
    /// The URL for logs, password masked: `redis://user:**@host:6379/0`,
    /// `redis+socket:///path?virtual_host=0`, `sentinel://...;sentinel://...`.
    pub fn masked_url(&self, db: i64, username: Option<&str>, has_password: bool, dialect: Dialect) -> String {
        let user = username.unwrap_or("");
        let auth = match has_password {
            true => format!("{user}:**@"),
            false if user.is_empty() => String::new(),
            false => format!("{user}@"),
        };
        let host = |host: &String| if host.contains(':') { format!("[{host}]") } else { host.clone() };
        match self {
            Endpoint::Tcp { host: h, port } => format!("redis://{auth}{}:{port}/{db}", host(h)),
            Endpoint::Tls { host: h, port, .. } => format!("rediss://{auth}{}:{port}/{db}", host(h)),
            Endpoint::Unix { path } => format!("redis+socket://{auth}{}?virtual_host={db}", path.display()),
            Endpoint::Sentinel { nodes, tls } => {
                let node = |(i, (h, port)): (usize, &(String, u16))| {
                    let auth = if i == 0 || dialect == Dialect::Kombu { auth.as_str() } else { "" };
                    format!("sentinel://{auth}{}:{port}/{db}", host(h))
                };
                let list = nodes.iter().enumerate().map(node).collect::<Vec<_>>().join(";");
                match tls {
                    Some(tls) => format!("{list}?ssl_cert_reqs={}", tls.cert_reqs.name()),
                    None => list,
                }
            }
        }
    }

    /// The client, with the TLS files read now so that a bad path fails early.
    /// Sentinel needs the master's name; `sentinel_password` is the Sentinel
    /// nodes' own. `url` (masked) is for error messages.
    pub fn target(
        &self,
        settings: RedisConnectionInfo,
        master_name: Option<&str>,
        sentinel_password: Option<&str>,
        url: &str,
    ) -> Result<Target, Error> {
        let client_err = |source| Error::Client { url: url.to_owned(), source };
        let info = |addr: ConnectionAddr, settings| -> Result<ConnectionInfo, Error> {
            Ok(addr.into_connection_info().map_err(client_err)?.set_redis_settings(settings))
        };
        let client = match self {
            Endpoint::Tcp { host, port } => Client::open(info(ConnectionAddr::Tcp(host.clone(), *port), settings)?),
            Endpoint::Unix { path } => Client::open(info(ConnectionAddr::Unix(path.clone()), settings)?),
            Endpoint::Tls { host, port, tls } => {
                // rustls needs a process-wide provider for the no-verification mode.
                let _ = rustls::crypto::ring::default_provider().install_default();
                let insecure = tls.cert_reqs == CertReqs::None;
                let addr = ConnectionAddr::TcpTls { host: host.clone(), port: *port, insecure, tls_params: None };
                Client::build_with_tls(info(addr, settings)?, tls.certificates()?)
            }
            Endpoint::Sentinel { nodes, tls } => {
                let master = master_name.ok_or(Error::NoMasterName)?;
                let sentinel = sentinel_client(nodes, tls.as_ref(), master, &settings, sentinel_password, url)?;
                return Ok(Target::Sentinel(tokio::sync::Mutex::new(sentinel)));
            }
        };
        Ok(Target::Direct(client.map_err(client_err)?))
    }
}

/// The Sentinel client: plain TCP to the Sentinels and the master, or TLS to
/// both with the same certificate settings (never TLS to one and plain TCP to
/// the other). The master's address comes from the Sentinels, so with
/// verification on its certificate must name the address they report.
fn sentinel_client(
    nodes: &[(String, u16)],
    tls: Option<&TlsOptions>,
    master: &str,
    settings: &RedisConnectionInfo,
    sentinel_password: Option<&str>,
    url: &str,
) -> Result<SentinelClient, Error> {
    let client_err = |source| Error::Client { url: url.to_owned(), source };
    let insecure = tls.is_some_and(|t| t.cert_reqs == CertReqs::None);
    let addrs = nodes.iter().map(|(host, port)| match tls {
        Some(_) => ConnectionAddr::TcpTls { host: host.clone(), port: *port, insecure, tls_params: None },
        None => ConnectionAddr::Tcp(host.clone(), *port),
    });
    let mut builder = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master).map_err(client_err)?;
    builder = builder.set_client_to_redis_db(settings.db());
    if let Some(user) = settings.username() {
        builder = builder.set_client_to_redis_username(user);
    }
    if let Some(password) = settings.password() {
        builder = builder.set_client_to_redis_password(password);
    }
    if let Some(password) = sentinel_password {
        builder = builder.set_client_to_sentinel_password(password);
    }
    if let Some(tls) = tls {
        // rustls needs a process-wide provider for the no-verification mode.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certificates = tls.certificates()?;
        if insecure && certificates.client_tls.is_some() {
            // redis sends no client certificate to an unverified master.
            return Err(client_err(RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "a sentinel:// connection with ssl_cert_reqs=none cannot present a client certificate \
                 (ssl_certfile, ssl_keyfile) to the master; give ssl_ca_certs and verify certificates instead",
            ))));
        }
        let mode = if insecure { TlsMode::Insecure } else { TlsMode::Secure };
        builder = builder
            .set_client_to_redis_tls_mode(mode)
            .set_client_to_sentinel_tls_mode(mode)
            .set_client_to_sentinel_certificates(tls.certificates()?)
            .set_client_to_redis_certificates(certificates);
    }
    builder.build().map_err(client_err)
}

// Behaviour through the broker and the backend is tested by their unit tests
// and the end-to-end suites; these pin what differs between the dialects.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialects() {
        let p = UrlParts::parse("REDIS://us%40r:p%3Aw@[::1]:6380/2?a=b+c%2B#d", Dialect::Kombu).unwrap();
        let (username, password, query) =
            (Some("us@r".into()), Some("p:w".into()), vec![("a".into(), "b+c+#d".into())]);
        let (host, port, path) = ("::1".into(), Some(6380), "/2".into());
        assert_eq!(p, UrlParts { scheme: "redis".into(), username, password, host, port, path, query });
        let p = UrlParts::parse("REDIS://:p%zz@h/0?a=b+c%2B#d", Dialect::Celery).unwrap();
        assert_eq!((p.scheme.as_str(), p.password.as_deref(), p.query[0].1.as_str()), ("REDIS", Some("p%zz"), "b c+"));
        for (url, problem) in [
            ("redis://:p%zz@h", UrlProblem::BadEscape("%zz".into())),
            ("redis://h/%ff", UrlProblem::InvalidUtf8),
            ("redis://[::1]x/0", UrlProblem::JunkAfterHost),
        ] {
            let Err(Error::Url { problem: got, .. }) = UrlParts::parse(url, Dialect::Kombu) else { panic!("{url}") };
            assert_eq!(got, problem, "{url}");
        }
        assert_eq!(("Cert_None".parse::<CertReqs>().unwrap(), CertReqs::parse("cert_none")), (CertReqs::None, None));
        for port in ["0", "65536", "-1", "x"] {
            let url = format!("redis://h:{port}/0");
            let Err(Error::Url { problem, .. }) = UrlParts::parse(&url, Dialect::Kombu) else { panic!("{url}") };
            assert_eq!(problem, UrlProblem::BadPort(port.into()), "{url}");
        }
    }

    #[test]
    fn sentinel_with_tls_is_tls_to_every_node_or_refused() {
        let nodes = vec![("127.0.0.1".to_owned(), 26379)];
        let settings = redis_settings(1, None, Some("pw"));
        let endpoint = |tls| Endpoint::Sentinel { nodes: nodes.clone(), tls };
        let plain = endpoint(None).target(settings.clone(), Some("m"), None, "sentinel://x");
        assert!(matches!(plain, Ok(Target::Sentinel(_))));
        let verified = endpoint(Some(TlsOptions::default())).target(settings.clone(), Some("m"), None, "sentinel://x");
        assert!(matches!(verified, Ok(Target::Sentinel(_))));
        assert_eq!(
            endpoint(Some(TlsOptions::default())).masked_url(1, None, true, Dialect::Kombu),
            "sentinel://:**@127.0.0.1:26379/1?ssl_cert_reqs=required"
        );
        // An unverified master would get no client certificate: refused.
        let dir = std::env::temp_dir().join(format!("celeriac-redisconn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("c.pem"), dir.join("k.pem"));
        std::fs::write(&cert, "not read").unwrap();
        std::fs::write(&key, "not read").unwrap();
        let tls = TlsOptions { cert_reqs: CertReqs::None, certfile: Some(cert), keyfile: Some(key), ca_certs: None };
        let refused = endpoint(Some(tls)).target(settings, Some("m"), None, "sentinel://x");
        let Err(Error::Client { source, .. }) = refused else { panic!("an unverified master with a client cert") };
        assert!(source.to_string().contains("ssl_cert_reqs=none"), "{source}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn masking() {
        for (url, masked) in [
            ("redis://u:secret@h:1/0", "redis://u:**@h:1/0"),
            ("sentinel://:a@h1;sentinel://:b@h2/0", "sentinel://:**@h1;sentinel://:**@h2/0"),
            ("redis://:pa/ss@h/0", "redis://:**@h/0"),
            ("redis://h/0", "redis://h/0"),
            ("nonsense", "nonsense"),
        ] {
            assert_eq!(mask_password(url), masked, "{url}");
        }
    }
}

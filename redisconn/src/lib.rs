//! Redis connection settings shared by the broker and the result backend: URL
//! spellings of kombu and Celery, TLS, Sentinel, password masking.
//!
//! [`UrlParts`] splits one URL by the rules of a [`Dialect`]; [`Endpoint`] is
//! where the server is, with its masked URL and its redis client ([`Target`]);
//! [`TlsOptions`] reads the `ssl_*` files. What the broker and the backend read
//! differently (their query options, schemes, database spellings, error wording)
//! stays with them: both convert [`Error`] into their own error type.

use std::path::{Path, PathBuf};
use std::time::Duration;

use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Client, ClientTlsConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};
use redis::{RedisError, TlsCertificates};

/// Redis's default port.
pub const DEFAULT_PORT: u16 = 6379;
/// Sentinel's default port (kombu's default for `sentinel://` nodes).
pub const DEFAULT_SENTINEL_PORT: u16 = 26379;
/// How long a connection attempt may take when `socket_connect_timeout` is unset.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A query parameter's number of seconds (`2.5`), if it is a finite, non-negative number.
pub fn seconds(value: &str) -> Option<Duration> {
    value.parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0).map(Duration::from_secs_f64)
}

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
    /// The port is not a number.
    #[error("port {0:?} is not a number from 0 to 65535")]
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
            Some(p) => Some(p.parse::<u16>().map_err(|_| err(UrlProblem::BadPort(p.to_owned())))?),
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

/// Any URL (parsable or not, `;`-separated or not) with every password replaced
/// by `**`: whatever stands between the first `:` after `://` and the last `@`
/// before the next `://`.
pub fn mask_password(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(start) = rest.find("://").map(|i| i + 3) {
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let end = rest.find("://").unwrap_or(rest.len());
        let userinfo = rest[..end].rfind('@').map(|at| &rest[..at]);
        let (keep, skip) = match userinfo.and_then(|info| Some((info.find(':')?, info.len()))) {
            Some((colon, at)) => (colon, at),
            None => (end, end),
        };
        out.push_str(&rest[..keep]);
        out.push_str(if keep < skip { ":**" } else { "" });
        rest = &rest[skip..];
    }
    out + rest
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
    },
}

/// The redis client for an [`Endpoint`].
pub enum Target {
    /// A fixed server.
    Direct(Client),
    /// The Sentinels, to ask for the master (again after a failover).
    Sentinel(tokio::sync::Mutex<SentinelClient>),
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
            Endpoint::Sentinel { nodes } => {
                let node = |(i, (h, port)): (usize, &(String, u16))| {
                    let auth = if i == 0 || dialect == Dialect::Kombu { auth.as_str() } else { "" };
                    format!("sentinel://{auth}{}:{port}/{db}", host(h))
                };
                nodes.iter().enumerate().map(node).collect::<Vec<_>>().join(";")
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
            Endpoint::Sentinel { nodes } => {
                let master = master_name.ok_or(Error::NoMasterName)?;
                let node_settings = redis_settings(0, None, sentinel_password);
                let node = |(host, port): &(String, u16)| {
                    info(ConnectionAddr::Tcp(host.clone(), *port), node_settings.clone())
                };
                let nodes = nodes.iter().map(node).collect::<Result<Vec<_>, Error>>()?;
                let master_info = SentinelNodeConnectionInfo::default().set_redis_connection_info(settings);
                let sentinel = SentinelClient::build(nodes, master, Some(master_info), SentinelServerType::Master);
                return Ok(Target::Sentinel(tokio::sync::Mutex::new(sentinel.map_err(client_err)?)));
            }
        };
        Ok(Target::Direct(client.map_err(client_err)?))
    }
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

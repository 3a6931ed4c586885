//! The Redis result backend's settings, with Celery's names and defaults, and
//! the `result_backend` URLs Celery accepts for it.
//!
//! URL forms (as `celery.backends.redis.RedisBackend._params_from_url` reads them):
//! - `redis://[user:password@]host[:port][/db]`: port 6379 and db 0 by default; a
//!   `?db=N` query overrides the path;
//! - `rediss://...?ssl_cert_reqs=required&ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem&ssl_keyfile=/k.pem`:
//!   TLS; the certificate is verified unless `ssl_cert_reqs` is `none`/`CERT_NONE`
//!   (Celery insists on `ssl_cert_reqs` being present; celeriac defaults it to `required`);
//! - `redis+socket:///path/redis.sock?virtual_host=N`: Celery's spelling for a unix
//!   socket (the `+` selects the Redis backend, `socket://` the socket; the db is
//!   `virtual_host` or `db`). `socket:///path` and redis-py's `unix:///path?db=N` are
//!   accepted too, though Celery itself does not accept those two;
//! - `sentinel://[:password@]host:port[/db][;sentinel://host2:port2...]`: Sentinel
//!   nodes; the master's name is `result_backend_transport_options["master_name"]`
//!   ([`TransportOptions::master_name`]); the password and db (from the first node)
//!   are the master's, as in Celery.
//!
//! Query parameters that redis-py would also take and that change nothing here
//! (`health_check_interval`, `max_connections`, ...) are ignored with a debug log
//! once their value passed redis-py's type check; unknown ones with a warning.
//! Every number is range-checked ([`celeriac_redisconn::limits`]): a value
//! outside its range (`inf`, `1e300`, `-1`, `0` where meaningless) is refused
//! with the parameter's name and the accepted range. A `sentinel://` URL takes
//! no `ssl_*` parameters: TLS to its Sentinels and master comes from
//! `redis_backend_use_ssl` (see [`Endpoint::Sentinel`]).

use std::time::Duration;

use celeriac_protocol::{Compression, ContentType};
use celeriac_redisconn::limits::{self, Limit};
use celeriac_redisconn::{mask_password, sentinel_nodes, Dialect, UrlParts, TLS_PARAMS};
pub use celeriac_redisconn::{CertReqs, Endpoint, TlsOptions, DEFAULT_CONNECT_TIMEOUT, DEFAULT_PORT};

use crate::error::BackendError;
/// Celery's `result_expires` default: one day.
pub const DEFAULT_RESULT_EXPIRES: Duration = Duration::from_secs(86_400);
/// Celery's `redis_socket_timeout` default.
pub const DEFAULT_SOCKET_TIMEOUT: Duration = Duration::from_secs(120);

/// How connection errors are retried (Celery's `RedisBackend.retry_policy`,
/// overridable with `result_backend_transport_options["retry_policy"]`): the
/// n-th retry waits `min(interval_start + n * interval_step, interval_max)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt; `None` retries for ever.
    pub max_retries: Option<u32>,
    /// The first wait.
    pub interval_start: Duration,
    /// How much each wait grows.
    pub interval_step: Duration,
    /// The longest wait.
    pub interval_max: Duration,
}

impl Default for RetryPolicy {
    /// Celery's: 20 retries, waiting 0 s, then 1 s each time.
    fn default() -> Self {
        RetryPolicy {
            max_retries: Some(20),
            interval_start: Duration::ZERO,
            interval_step: Duration::from_secs(1),
            interval_max: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> RetryPolicy {
        RetryPolicy { max_retries: Some(0), ..RetryPolicy::default() }
    }

    /// The wait before retry number `retry` (0-based).
    pub fn interval(&self, retry: u32) -> Duration {
        self.interval_start.saturating_add(self.interval_step.saturating_mul(retry)).min(self.interval_max)
    }
}

/// `result_backend_transport_options`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportOptions {
    /// `global_keyprefix`: prepended to every key (with a `_` added unless it
    /// ends in one of `:_-.`).
    pub global_keyprefix: String,
    /// `result_chord_ordered` (default true): chord header results go in a
    /// sorted set scored by `group_index`; false uses a list in completion order.
    /// Every worker of a deployment must agree.
    pub result_chord_ordered: bool,
    /// `master_name`: the Sentinel service name (required for `sentinel://`).
    pub master_name: Option<String>,
    /// `sentinel_kwargs["password"]`: the password of the Sentinel nodes
    /// themselves (the URL's password is the master's).
    pub sentinel_password: Option<String>,
    /// `retry_policy`.
    pub retry_policy: RetryPolicy,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            global_keyprefix: String::new(),
            result_chord_ordered: true,
            master_name: None,
            sentinel_password: None,
            retry_policy: RetryPolicy::default(),
        }
    }
}

/// Everything the Redis result backend needs: where Redis is, and Celery's
/// `result_*` settings.
#[derive(Clone, PartialEq, Eq)]
pub struct BackendOptions {
    /// Where Redis is.
    pub endpoint: Endpoint,
    /// The database number.
    pub db: i64,
    /// ACL user name (Redis 6+).
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// `redis_socket_timeout`: how long a command may wait for its reply (default 120 s).
    pub socket_timeout: Option<Duration>,
    /// `redis_socket_connect_timeout`: how long connecting may take (default 10 s).
    pub socket_connect_timeout: Option<Duration>,
    /// `redis_client_name`: sent with `CLIENT SETNAME`.
    pub client_name: Option<String>,
    /// `result_serializer` (default json; msgpack and yaml too; never pickle).
    pub result_serializer: ContentType,
    /// `result_compression` (default none): compress stored records as Celery
    /// 5.7 does. Compressed records are read whatever this says.
    pub result_compression: Option<Compression>,
    /// `result_expires` (default one day): the TTL of every record; `None` or
    /// under a second stores without expiry (plain `SET`).
    pub result_expires: Option<Duration>,
    /// `result_failure_expires`: the TTL of FAILURE records; `None` uses
    /// `result_expires`, zero keeps them for ever.
    pub result_failure_expires: Option<Duration>,
    /// `result_chord_expires`: the TTL of the chord join keys; `None` uses
    /// `result_expires`, zero keeps them for ever.
    pub result_chord_expires: Option<Duration>,
    /// `result_extended`: store the task's name, args, kwargs, worker, retries
    /// and queue with its result (when the record carries them).
    pub result_extended: bool,
    /// `result_chord_join_timeout` (default 3 s): how long the worker that
    /// completes a chord waits for nested group results; it also sizes the
    /// claim on the chord (twice this, at least 5 s).
    pub result_chord_join_timeout: Duration,
    /// How long the claim on a completed chord is held while the worker publishes
    /// the body. Celery derives it from `task_publish_retry_policy` and
    /// `broker_connection_timeout`: 21 s with their defaults.
    pub chord_publish_lease: Duration,
    /// How often a waiter reads the record while pub/sub is unavailable (Celery's
    /// `interval`, 0.5 s; at most 1 s, as the waiter also tries to subscribe again).
    pub poll_interval: Duration,
    /// `result_backend_transport_options`.
    pub transport: TransportOptions,
}

impl std::fmt::Debug for BackendOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendOptions")
            .field("url", &self.masked_url())
            .field("result_serializer", &self.result_serializer)
            .field("result_compression", &self.result_compression)
            .field("result_expires", &self.result_expires)
            .field("result_failure_expires", &self.result_failure_expires)
            .field("result_chord_expires", &self.result_chord_expires)
            .field("result_extended", &self.result_extended)
            .field("transport", &MaskedTransport(&self.transport))
            .finish_non_exhaustive()
    }
}

struct MaskedTransport<'a>(&'a TransportOptions);

impl std::fmt::Debug for MaskedTransport<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.0;
        f.debug_struct("TransportOptions")
            .field("global_keyprefix", &t.global_keyprefix)
            .field("result_chord_ordered", &t.result_chord_ordered)
            .field("master_name", &t.master_name)
            .field("sentinel_password", &t.sentinel_password.as_ref().map(|_| "**"))
            .field("retry_policy", &t.retry_policy)
            .finish()
    }
}

impl BackendOptions {
    /// Options for an endpoint with Celery's defaults for everything else.
    pub fn new(endpoint: Endpoint) -> BackendOptions {
        BackendOptions {
            endpoint,
            db: 0,
            username: None,
            password: None,
            socket_timeout: Some(DEFAULT_SOCKET_TIMEOUT),
            socket_connect_timeout: None,
            client_name: None,
            result_serializer: ContentType::Json,
            result_compression: None,
            result_expires: Some(DEFAULT_RESULT_EXPIRES),
            result_failure_expires: None,
            result_chord_expires: None,
            result_extended: false,
            result_chord_join_timeout: Duration::from_secs(3),
            chord_publish_lease: Duration::from_secs(21),
            poll_interval: Duration::from_millis(500),
            transport: TransportOptions::default(),
        }
    }

    /// Reads a `result_backend` URL (see the module docs for the forms); every
    /// other setting keeps Celery's default.
    pub fn from_url(url: &str) -> Result<BackendOptions, BackendError> {
        parse_url(url)
    }

    /// Sets `result_serializer` by its Celery name (`json`, `msgpack`, `yaml`).
    pub fn set_serializer(&mut self, name: &str) -> Result<(), BackendError> {
        self.result_serializer = match ContentType::parse(name) {
            Some(ct @ (ContentType::Json | ContentType::Msgpack | ContentType::Yaml)) => ct,
            Some(ContentType::Pickle) => {
                return Err(BackendError::InvalidSetting {
                    setting: "result_serializer",
                    reason: "pickle results cannot be read or written by celeriac (unpickling runs arbitrary \
                             code); set result_serializer = 'json' on every worker and client"
                        .into(),
                })
            }
            _ => {
                return Err(BackendError::InvalidSetting {
                    setting: "result_serializer",
                    reason: format!("unknown serializer {name:?}; use json, msgpack or yaml"),
                })
            }
        };
        Ok(())
    }

    /// Sets `result_compression` by kombu's name (`gzip`/`zlib`, `bzip2`, `lzma`,
    /// `zstd`, `brotli`); an empty name turns compression off.
    pub fn set_compression(&mut self, name: &str) -> Result<(), BackendError> {
        if name.is_empty() {
            self.result_compression = None;
            return Ok(());
        }
        self.result_compression = Some(Compression::parse(name).ok_or_else(|| BackendError::InvalidSetting {
            setting: "result_compression",
            reason: format!("unknown compression {name:?}; use gzip, bzip2, lzma, zstd or brotli"),
        })?);
        Ok(())
    }

    /// The TTL in whole seconds of a record (a FAILURE one when `failure`), or
    /// `None` for no expiry (Celery truncates the setting to an int; zero means none).
    pub fn expires_secs(&self, failure: bool) -> Option<u64> {
        let expires = match (failure, self.result_failure_expires) {
            (true, Some(failure_expires)) => Some(failure_expires),
            _ => self.result_expires,
        };
        expires.map(|d| d.as_secs()).filter(|s| *s > 0)
    }

    /// The TTL of the chord keys in whole seconds (`chord_expires`), or `None`.
    pub fn chord_expires_secs(&self) -> Option<u64> {
        match self.result_chord_expires {
            Some(d) => Some(d.as_secs()).filter(|s| *s > 0),
            None => self.expires_secs(false),
        }
    }

    /// The TTL the chord join gives the group record (`_chord_result_expires`):
    /// never less than `result_expires`, and none if either is unset.
    pub fn chord_result_expires_secs(&self) -> Option<u64> {
        match (self.chord_expires_secs(), self.expires_secs(false)) {
            (Some(chord), Some(results)) => Some(chord.max(results)),
            _ => None,
        }
    }

    /// The URL with the password masked, for logs (as kombu's `sanitize_url`).
    pub fn masked_url(&self) -> String {
        self.endpoint.masked_url(self.db, self.username.as_deref(), self.password.is_some(), Dialect::Celery)
    }
}

fn non_empty(s: String) -> Option<String> {
    if s.is_empty() {
        None
    } else {
        Some(s)
    }
}

fn parse_db(text: &str, masked: &str, what: &str) -> Result<i64, BackendError> {
    let trimmed = text.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(0);
    }
    limits::DB.parse_whole(trimmed).map_err(|e| BackendError::InvalidUrl {
        url: masked.to_owned(),
        reason: format!("the database ({what}) {text:?} is not a number in range: {e}"),
    })
}

fn parse_seconds(value: &str, masked: &str, name: &str, limit: Limit) -> Result<Duration, BackendError> {
    limit
        .parse_duration(value)
        .map_err(|e| BackendError::InvalidUrl { url: masked.to_owned(), reason: format!("{name}={value:?}: {e}") })
}

/// Query parameters redis-py takes that change nothing for celeriac, with
/// the range of those that are numbers (redis-py refuses a value that is not
/// one; celeriac refuses one out of range too).
const IGNORED_PARAMS: [(&str, Option<Limit>); 10] = [
    ("health_check_interval", Some(limits::HEALTH_CHECK_INTERVAL)),
    ("max_connections", Some(limits::MAX_CONNECTIONS)),
    ("retry_on_timeout", None),
    ("socket_keepalive", None),
    ("socket_read_size", Some(limits::SOCKET_READ_SIZE)),
    ("ssl_check_hostname", None),
    ("protocol", Some(limits::PROTOCOL)),
    ("timeout", Some(limits::POOL_TIMEOUT)),
    ("retry_on_error", None),
    ("legacy_responses", None),
];

fn parse_url(url: &str) -> Result<BackendOptions, BackendError> {
    let masked = mask_password(url);
    let invalid = |reason: String| BackendError::InvalidUrl { url: masked.clone(), reason };
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or_default();
    if scheme == "sentinel" {
        return parse_sentinel(url, &masked);
    }
    let mut parts = UrlParts::parse(url, Dialect::Celery).map_err(url_error(&masked))?;
    let mut options = match scheme {
        "redis" | "rediss" => {
            let (host, port) = parts.host_port(DEFAULT_PORT);
            let mut options = if scheme == "rediss" {
                let mut tls = TlsOptions::default();
                take_tls(&mut parts.query, &mut tls, &masked)?;
                BackendOptions::new(Endpoint::Tls { host, port, tls })
            } else {
                if let Some((k, _)) = parts.query.iter().find(|(k, _)| TLS_PARAMS.contains(&k.as_str())) {
                    return Err(invalid(format!(
                        "{k} is a TLS parameter but the scheme is redis://; a Redis TLS URL uses rediss://"
                    )));
                }
                BackendOptions::new(Endpoint::Tcp { host, port })
            };
            // Celery reads the db from the path; virtual_host is dropped.
            parts.query.retain(|(k, _)| k != "virtual_host");
            options.db = parse_db(path_of(&parts), &masked, "path")?;
            options
        }
        "redis+socket" | "socket" | "unix" | "redis+unix" => {
            let path = parts.socket_path().ok_or_else(|| {
                invalid("a unix socket URL needs the socket's path: redis+socket:///run/redis/redis.sock".into())
            })?;
            if !parts.host.is_empty() {
                return Err(invalid(format!(
                    "a unix socket URL has no host: write {scheme}:///{path} (three slashes)",
                    path = path_of(&parts).trim_start_matches('/')
                )));
            }
            let mut options = BackendOptions::new(Endpoint::Unix { path });
            if let Some(i) = parts.query.iter().position(|(k, _)| k == "virtual_host") {
                let (_, v) = parts.query.remove(i);
                options.db = parse_db(&v, &masked, "virtual_host")?;
            }
            options
        }
        other => {
            return Err(invalid(format!(
                "scheme {other:?} is not a Redis result backend; use redis://, rediss://, \
                 redis+socket:///path or sentinel://"
            )))
        }
    };
    options.username = parts.username.and_then(non_empty);
    options.password = parts.password.and_then(non_empty);
    apply_query(&mut options, parts.query, &masked)?;
    Ok(options)
}

/// Turns a URL error of the shared parser into one about the whole URL `masked`
/// (a bad node of a Sentinel list included).
fn url_error(masked: &str) -> impl Fn(celeriac_redisconn::Error) -> BackendError + '_ {
    move |e| match e {
        celeriac_redisconn::Error::Url { problem, .. } => {
            BackendError::InvalidUrl { url: masked.to_owned(), reason: problem.to_string() }
        }
        e @ celeriac_redisconn::Error::CertReqs(_) => {
            BackendError::InvalidUrl { url: masked.to_owned(), reason: e.to_string() }
        }
        other => other.into(),
    }
}

/// The path without its leading `/`.
fn path_of(parts: &UrlParts) -> &str {
    parts.path.strip_prefix('/').unwrap_or(&parts.path)
}

fn take_tls(query: &mut Vec<(String, String)>, tls: &mut TlsOptions, masked: &str) -> Result<(), BackendError> {
    let mut rest = Vec::with_capacity(query.len());
    for (k, v) in query.drain(..) {
        // An empty file name is not taken (it stays an unknown parameter).
        if TLS_PARAMS.contains(&k.as_str()) && (k == "ssl_cert_reqs" || !v.is_empty()) {
            tls.set(&k, &v, Dialect::Celery).map_err(url_error(masked))?;
        } else {
            rest.push((k, v));
        }
    }
    *query = rest;
    Ok(())
}

fn apply_query(options: &mut BackendOptions, query: Vec<(String, String)>, masked: &str) -> Result<(), BackendError> {
    for (k, v) in query {
        match k.as_str() {
            // Query parameters override the path, as in Celery.
            "db" => options.db = parse_db(&v, masked, "db")?,
            "socket_timeout" => {
                options.socket_timeout = Some(parse_seconds(&v, masked, &k, limits::SOCKET_TIMEOUT)?);
            }
            "socket_connect_timeout" => {
                options.socket_connect_timeout = Some(parse_seconds(&v, masked, &k, limits::SOCKET_CONNECT_TIMEOUT)?);
            }
            "client_name" => options.client_name = non_empty(v),
            name if TLS_PARAMS.contains(&name) && matches!(options.endpoint, Endpoint::Sentinel { .. }) => {
                return Err(BackendError::InvalidUrl {
                    url: masked.to_owned(),
                    reason: format!(
                        "{name} is a TLS parameter, which only a rediss:// URL takes; for TLS with sentinel://, \
                         set redis_backend_use_ssl"
                    ),
                })
            }
            name => match IGNORED_PARAMS.iter().find(|(ignored, _)| *ignored == name) {
                Some((_, limit)) => {
                    if let Some(limit) = limit {
                        limit.parse(&v).map_err(|e| BackendError::InvalidUrl {
                            url: masked.to_owned(),
                            reason: format!("{name}={v:?}: {e}"),
                        })?;
                    }
                    tracing::debug!(
                        url = masked,
                        parameter = name,
                        "result backend URL parameter has no effect in celeriac"
                    )
                }
                None => {
                    tracing::warn!(url = masked, parameter = name, "ignoring unknown result backend URL parameter")
                }
            },
        }
    }
    Ok(())
}

fn parse_sentinel(url: &str, masked: &str) -> Result<BackendOptions, BackendError> {
    let nodes = sentinel_nodes(url, Dialect::Celery).map_err(url_error(masked))?;
    // Celery's default port for a node without one is Redis's, not Sentinel's.
    let addrs = nodes.iter().map(|node| node.host_port(DEFAULT_PORT)).collect();
    let Some(first) = nodes.into_iter().next() else {
        return Err(BackendError::InvalidUrl { url: masked.to_owned(), reason: "no Sentinel nodes".into() });
    };
    let mut options = BackendOptions::new(Endpoint::Sentinel { nodes: addrs, tls: None });
    options.db = parse_db(path_of(&first), masked, "path")?;
    options.username = first.username.and_then(non_empty);
    options.password = first.password.and_then(non_empty);
    apply_query(&mut options, first.query, masked)?;
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> Endpoint {
        Endpoint::Tcp { host: host.into(), port }
    }

    /// The expectations are what Celery 5.7's `RedisBackend(url).connparams` holds.
    #[test]
    fn redis_urls_as_celery_reads_them() {
        let o = BackendOptions::from_url("redis://:secret@localhost:6380/3").unwrap();
        assert_eq!(
            (o.endpoint.clone(), o.db, o.password.as_deref(), o.username.as_deref()),
            (tcp("localhost", 6380), 3, Some("secret"), None)
        );
        assert_eq!(o.masked_url(), "redis://:**@localhost:6380/3");
        assert!(!format!("{o:?}").contains("secret"));

        let o = BackendOptions::from_url("redis://user:p%40ss@h/").unwrap();
        assert_eq!(
            (o.endpoint.clone(), o.db, o.username.as_deref(), o.password.as_deref()),
            (tcp("h", 6379), 0, Some("user"), Some("p@ss"))
        );
        assert_eq!(o.masked_url(), "redis://user:**@h:6379/0");

        let o = BackendOptions::from_url("redis://h").unwrap();
        assert_eq!((o.endpoint, o.db), (tcp("h", 6379), 0));
        // ?db= overrides the path; virtual_host is dropped for redis://.
        assert_eq!(BackendOptions::from_url("redis://h/2?db=5").unwrap().db, 5);
        assert_eq!(BackendOptions::from_url("redis://h/2?virtual_host=7").unwrap().db, 2);
        assert_eq!(BackendOptions::from_url("redis://").unwrap().endpoint, tcp("localhost", 6379));
        assert_eq!(BackendOptions::from_url("redis://[::1]:7000/1").unwrap().endpoint, tcp("::1", 7000));
        let o =
            BackendOptions::from_url("redis://h?socket_timeout=2.5&socket_connect_timeout=1&client_name=w1").unwrap();
        assert_eq!(o.socket_timeout, Some(Duration::from_millis(2500)));
        assert_eq!(o.socket_connect_timeout, Some(Duration::from_secs(1)));
        assert_eq!(o.client_name.as_deref(), Some("w1"));
    }

    #[test]
    fn tls_urls() {
        let o = BackendOptions::from_url(
            "rediss://:pw@h:6390/1?ssl_cert_reqs=required&ssl_ca_certs=%2Ftmp%2Fca.pem&ssl_certfile=/c.pem&ssl_keyfile=/k.pem",
        )
        .unwrap();
        let Endpoint::Tls { host, port, tls } = &o.endpoint else { panic!("{o:?}") };
        assert_eq!((host.as_str(), *port, o.db), ("h", 6390, 1));
        assert_eq!(tls.cert_reqs, CertReqs::Required);
        assert_eq!(tls.ca_certs.as_deref(), Some(std::path::Path::new("/tmp/ca.pem")));
        assert_eq!(tls.certfile.as_deref(), Some(std::path::Path::new("/c.pem")));
        assert_eq!(tls.keyfile.as_deref(), Some(std::path::Path::new("/k.pem")));
        assert_eq!(o.masked_url(), "rediss://:**@h:6390/1");
        // Verification is on unless turned off.
        let Endpoint::Tls { tls, .. } = BackendOptions::from_url("rediss://h").unwrap().endpoint else { panic!() };
        assert_eq!(tls.cert_reqs, CertReqs::Required);
        for (text, want) in
            [("CERT_NONE", CertReqs::None), ("none", CertReqs::None), ("CERT_OPTIONAL", CertReqs::Optional)]
        {
            let Endpoint::Tls { tls, .. } =
                BackendOptions::from_url(&format!("rediss://h?ssl_cert_reqs={text}")).unwrap().endpoint
            else {
                panic!()
            };
            assert_eq!(tls.cert_reqs, want);
        }
        let err = BackendOptions::from_url("rediss://h?ssl_cert_reqs=maybe").unwrap_err();
        assert!(err.to_string().contains("use required, optional or none"), "{err}");
        // TLS parameters on redis:// are refused, as Celery refuses them.
        let err = BackendOptions::from_url("redis://:pw@h?ssl_cert_reqs=required").unwrap_err();
        assert!(err.to_string().contains("rediss://"), "{err}");
        assert!(!err.to_string().contains("pw"), "{err}");
    }

    #[test]
    fn unix_socket_urls() {
        let o = BackendOptions::from_url("redis+socket:///tmp/r.sock?virtual_host=2").unwrap();
        assert_eq!((o.endpoint.clone(), o.db), (Endpoint::Unix { path: "/tmp/r.sock".into() }, 2));
        assert_eq!(o.masked_url(), "redis+socket:///tmp/r.sock?virtual_host=2");
        assert_eq!(BackendOptions::from_url("redis+socket:///tmp/r.sock?db=4").unwrap().db, 4);
        assert_eq!(BackendOptions::from_url("socket:///tmp/r.sock").unwrap().db, 0);
        let o = BackendOptions::from_url("unix:///run/redis.sock?db=3").unwrap();
        assert_eq!((o.endpoint, o.db), (Endpoint::Unix { path: "/run/redis.sock".into() }, 3));
        let err = BackendOptions::from_url("redis+socket://tmp/r.sock").unwrap_err();
        assert!(err.to_string().contains("three slashes"), "{err}");
        assert!(BackendOptions::from_url("redis+socket://").is_err());
    }

    #[test]
    fn sentinel_urls() {
        let o = BackendOptions::from_url("sentinel://:pw@h1:26379/1;sentinel://h2:26380/1").unwrap();
        assert_eq!(
            o.endpoint,
            Endpoint::Sentinel { nodes: vec![("h1".into(), 26379), ("h2".into(), 26380)], tls: None }
        );
        assert_eq!((o.db, o.password.as_deref()), (1, Some("pw")));
        assert_eq!(o.masked_url(), "sentinel://:**@h1:26379/1;sentinel://h2:26380/1");
        // Celery's default port for a node without one is Redis's, not Sentinel's.
        let o = BackendOptions::from_url("sentinel://h1").unwrap();
        assert_eq!(o.endpoint, Endpoint::Sentinel { nodes: vec![("h1".into(), 6379)], tls: None });
        assert!(BackendOptions::from_url("sentinel://h1;redis://h2").is_err());
    }

    #[test]
    fn bad_urls_say_what_to_write() {
        for (url, hint) in [
            ("localhost:6379", "scheme://"),
            ("amqp://guest@h//", "redis://"),
            ("redis://h:notaport/0", "port"),
            ("redis://h/zero", "not a number"),
            ("redis://h?socket_timeout=soon", "seconds"),
        ] {
            let err = BackendOptions::from_url(url).unwrap_err();
            assert!(err.to_string().contains(hint), "{url}: {err}");
        }
    }

    /// Every number of the query (redis-py's numeric parameters included,
    /// though celeriac ignores them), with the values that must not get through.
    #[test]
    fn every_number_in_the_query_is_range_checked() {
        let extremes = ["inf", "-inf", "nan", "1e300", "-1", "abc", "99999999999999999999999"];
        for (param, zero_ok) in [
            ("socket_timeout", false),
            ("socket_connect_timeout", false),
            ("health_check_interval", true),
            ("max_connections", false),
            ("socket_read_size", false),
            ("protocol", false),
            ("timeout", true),
            ("db", true),
        ] {
            let zero = if zero_ok { vec![] } else { vec!["0"] };
            for bad in extremes.iter().chain(&zero) {
                let url = format!("redis://:pw@h/0?{param}={bad}");
                let err = BackendOptions::from_url(&url).unwrap_err().to_string();
                assert!(err.contains(param) || param == "db", "{url}: {err}");
                assert!(err.contains("expected") && err.contains(" to "), "{url}: {err}");
                assert!(!err.contains("pw"), "{url}: {err}");
            }
        }
        for url in ["redis://h/-1", "redis://h/2147483647", "redis+socket:///r.sock?virtual_host=-2", "redis://h:0"] {
            assert!(BackendOptions::from_url(url).is_err(), "{url}");
        }
        let o = BackendOptions::from_url("redis://h/0?health_check_interval=0&max_connections=100&protocol=3").unwrap();
        assert_eq!(o.db, 0);
        // A sentinel:// URL takes TLS from redis_backend_use_ssl, never silently from nowhere.
        let err = BackendOptions::from_url("sentinel://h1?ssl_cert_reqs=required").unwrap_err().to_string();
        assert!(err.contains("redis_backend_use_ssl"), "{err}");
        let huge = RetryPolicy { interval_start: Duration::MAX, interval_max: Duration::MAX, ..RetryPolicy::default() };
        assert_eq!(huge.interval(u32::MAX), Duration::MAX);
    }

    #[test]
    fn serializer_and_compression_settings() {
        let mut o = BackendOptions::new(tcp("h", 1));
        o.set_serializer("msgpack").unwrap();
        assert_eq!(o.result_serializer, ContentType::Msgpack);
        o.set_serializer("application/x-yaml").unwrap();
        assert_eq!(o.result_serializer, ContentType::Yaml);
        assert!(o.set_serializer("pickle").unwrap_err().to_string().contains("result_serializer = 'json'"));
        assert!(o.set_serializer("xml").is_err());
        o.set_compression("gzip").unwrap();
        assert_eq!(o.result_compression, Some(Compression::Zlib));
        o.set_compression("").unwrap();
        assert_eq!(o.result_compression, None);
        assert!(o.set_compression("rar").is_err());
    }

    /// `RedisBackend.expires`, `failure_expires`, `chord_expires` and
    /// `_chord_result_expires` as Celery 5.7 computes them.
    #[test]
    fn expiry_rules() {
        let mut o = BackendOptions::new(tcp("h", 1));
        assert_eq!((o.expires_secs(false), o.expires_secs(true)), (Some(86_400), Some(86_400)));
        assert_eq!((o.chord_expires_secs(), o.chord_result_expires_secs()), (Some(86_400), Some(86_400)));
        o.result_failure_expires = Some(Duration::from_secs(60));
        o.result_chord_expires = Some(Duration::from_secs(100_000));
        assert_eq!((o.expires_secs(false), o.expires_secs(true)), (Some(86_400), Some(60)));
        assert_eq!((o.chord_expires_secs(), o.chord_result_expires_secs()), (Some(100_000), Some(100_000)));
        o.result_chord_expires = Some(Duration::from_secs(10));
        assert_eq!(o.chord_result_expires_secs(), Some(86_400));
        o.result_failure_expires = Some(Duration::ZERO);
        assert_eq!(o.expires_secs(true), None);
        // int(0.5) == 0: no expiry at all.
        o.result_expires = Some(Duration::from_millis(500));
        o.result_chord_expires = None;
        assert_eq!((o.expires_secs(false), o.chord_expires_secs(), o.chord_result_expires_secs()), (None, None, None));
        o.result_expires = None;
        assert_eq!(o.expires_secs(false), None);
    }

    #[test]
    fn retry_intervals() {
        let p = RetryPolicy::default();
        assert_eq!(
            (p.interval(0), p.interval(1), p.interval(5)),
            (Duration::ZERO, Duration::from_secs(1), Duration::from_secs(1))
        );
        let p =
            RetryPolicy { interval_step: Duration::from_millis(200), interval_max: Duration::from_millis(500), ..p };
        assert_eq!((p.interval(2), p.interval(3)), (Duration::from_millis(400), Duration::from_millis(500)));
        assert_eq!(RetryPolicy::none().max_retries, Some(0));
    }
}

//! Keeping secrets out of logs, banners, error messages and `inspect conf`:
//! Celery's rule for which settings are hidden (its `HIDDEN_SETTINGS`
//! pattern) and the URL masking of Celery and kombu.
//!
//! - [`is_hidden_setting`]: a name containing `API`, `TOKEN`, `KEY`, `SECRET`,
//!   `PASS`, `PROFANITIES_LIST`, `SIGNATURE`, `DATABASE` or `BEAT_DBURI` (any
//!   case) has its whole value shown as `********`;
//! - [`mask_password`] (logs, errors: `**`) and [`sanitize_url`] (`inspect conf`:
//!   `********`): every password of a URL, or of a `;` list of URLs, and every
//!   query parameter with a hidden name (`?password=...`), whatever the
//!   spelling, parsable or not;
//! - [`broker_url_as_uri`]: `broker_url` as Celery shows it in `inspect conf`
//!   (kombu's `Connection.as_uri(mask=...)`).
//!
//! celeriac hides a little more than Celery: the query parameters with hidden
//! names, and the password of any setting whose name contains `URL`
//! (`redbeat_redis_url`), which Celery would show.

use crate::{Dialect, UrlParts, DEFAULT_PORT, DEFAULT_SENTINEL_PORT};

/// What Celery shows instead of a hidden value (eight stars).
pub const MASK: &str = "********";

/// What celeriac's logs and errors show instead of a password (kombu's `**`).
pub const LOG_MASK: &str = "**";

/// The words of Celery's `HIDDEN_SETTINGS` pattern, matched anywhere in a
/// setting's name, in any case.
pub const HIDDEN_WORDS: [&str; 9] =
    ["API", "TOKEN", "KEY", "SECRET", "PASS", "PROFANITIES_LIST", "SIGNATURE", "DATABASE", "BEAT_DBURI"];

/// Whether Celery hides the whole value of the setting `name` (its
/// `HIDDEN_SETTINGS.search(name)`): `api_token`, `redbeat_key_prefix`,
/// `ssl_keyfile`, `password`, `task_default_routing_key`, ...
pub fn is_hidden_setting(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    HIDDEN_WORDS.iter().any(|word| upper.contains(word))
}

/// How a setting's value is shown in `inspect conf` and `report`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shown {
    /// Replaced as a whole by [`MASK`] (a hidden name).
    Hidden,
    /// `broker_url`, `broker_read_url`, `broker_write_url`: as kombu shows it.
    BrokerUrl,
    /// A URL with its passwords masked: names containing `backend` (Celery's
    /// rule) or `url` (celeriac's, for `redbeat_redis_url`).
    Url,
    /// As it is.
    AsIs,
}

/// Celery's `filter_hidden_settings` rule for one name (a mapping value is
/// filtered entry by entry instead, whatever its name).
pub fn shown(name: &str) -> Shown {
    let lower = name.to_ascii_lowercase();
    if is_hidden_setting(name) {
        Shown::Hidden
    } else if matches!(lower.as_str(), "broker_url" | "broker_read_url" | "broker_write_url") {
        Shown::BrokerUrl
    } else if lower.contains("backend") || lower.contains("url") {
        Shown::Url
    } else {
        Shown::AsIs
    }
}

/// Any text holding URLs (one, a `;` list, or a message quoting them), with
/// every password and every query value of a hidden name replaced by `**`:
/// for logs and error messages.
pub fn mask_password(url: &str) -> String {
    mask_url(url, LOG_MASK)
}

/// [`mask_password`] with Celery's eight stars, as Celery's `sanitize_url`
/// shows `result_backend` in `inspect conf`.
pub fn sanitize_url(url: &str) -> String {
    mask_url(url, MASK)
}

/// Any text with every URL password replaced by `mask`: whatever stands
/// between the first `:` after `://` and the last `@` before the query (or
/// the next `://`), and the value of every query parameter with a hidden
/// name. Text without `://` but with an `@` (a URL missing its scheme) has
/// everything before its last `@` masked.
pub fn mask_url(text: &str, mask: &str) -> String {
    if !text.contains("://") {
        return match text.rfind('@') {
            Some(at) => format!("{mask}{}", &text[at..]),
            None => text.to_owned(),
        };
    }
    let mut out = String::with_capacity(text.len() + mask.len());
    let mut rest = text;
    while let Some(start) = rest.find("://").map(|i| i + 3) {
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let end = rest.find("://").unwrap_or(rest.len());
        // A `;` before the next `://` starts the next URL of a list.
        let end = rest[..end].rfind(';').filter(|_| end < rest.len()).unwrap_or(end);
        let segment = &rest[..end];
        let query_at = segment.find('?').unwrap_or(segment.len());
        let (before_query, query) = segment.split_at(query_at);
        match before_query.rfind('@').and_then(|at| Some((before_query[..at].find(':')?, at))) {
            Some((colon, at)) => {
                out.push_str(&before_query[..colon]);
                out.push(':');
                out.push_str(mask);
                out.push_str(&before_query[at..]);
            }
            None => out.push_str(before_query),
        }
        out.push_str(&mask_query(query, mask));
        rest = &rest[end..];
    }
    out + rest
}

/// `?a=1&password=x` with the values of hidden names masked.
fn mask_query(query: &str, mask: &str) -> String {
    let Some(pairs) = query.strip_prefix('?') else { return query.to_owned() };
    let masked: Vec<String> = pairs
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if is_hidden_setting(key) => format!("{key}={mask}"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("?{}", masked.join("&"))
}

/// `broker_url` as Celery's `inspect conf` shows it: kombu's
/// `Connection(url).as_uri(mask='********')`. The password is always shown as
/// masked (even when there is none), the default port and virtual host are
/// filled in, the query is dropped, and only the first node of a Sentinel
/// list is kept: `redis://h` → `redis://:********@h:6379//`. A URL that does
/// not parse is shown with [`sanitize_url`].
pub fn broker_url_as_uri(url: &str) -> String {
    let first = crate::segments(url).next().unwrap_or_default();
    let Ok(parts) = UrlParts::parse(first, Dialect::Kombu) else { return sanitize_url(url) };
    let scheme = parts.scheme.as_str();
    if matches!(scheme, "redis+socket" | "socket" | "unix" | "redis+unix") {
        // kombu keeps the socket URL as written, query dropped, with its own `**`.
        let path = first.split('?').next().unwrap_or_default();
        return mask_password(path);
    }
    let (default_user, default_port) = match scheme {
        "redis" | "rediss" => ("", Some(DEFAULT_PORT)),
        "sentinel" => ("", Some(DEFAULT_SENTINEL_PORT)),
        "amqp" | "pyamqp" => ("guest", Some(5672)),
        "amqps" => ("guest", Some(5671)),
        _ => ("", None),
    };
    let user = parts.username.as_deref().filter(|u| !u.is_empty()).unwrap_or(default_user);
    let host = if parts.host.is_empty() { "localhost" } else { &parts.host };
    let port = parts.port.or(default_port).map(|p| format!(":{p}")).unwrap_or_default();
    let vhost = parts.path.strip_prefix('/').filter(|p| !p.is_empty()).unwrap_or("/");
    format!("{scheme}://{}:{MASK}@{}{port}/{vhost}", quote(user), quote(host))
}

/// Python's `urllib.parse.quote(text, safe='')`.
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"_.-~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_names_are_celerys() {
        for name in ["api_token", "SECRET", "broker_password", "ssl_keyfile", "redbeat_key_prefix", "database_url"] {
            assert!(is_hidden_setting(name), "{name}");
        }
        for name in ["broker_url", "worker_concurrency", "master_name", "ssl_certfile", "ssl_ca_certs"] {
            assert!(!is_hidden_setting(name), "{name}");
        }
        assert_eq!(shown("broker_url"), Shown::BrokerUrl);
        assert_eq!(shown("result_backend"), Shown::Url);
        assert_eq!(shown("redbeat_redis_url"), Shown::Url);
        assert_eq!(shown("database_url"), Shown::Hidden);
    }

    #[test]
    fn every_password_of_any_text_is_masked() {
        for (url, masked) in [
            ("redis://u:secret@h:1/0", "redis://u:**@h:1/0"),
            ("sentinel://:a@h1;sentinel://:b@h2/0", "sentinel://:**@h1;sentinel://:**@h2/0"),
            ("redis://:pa/ss@h/0", "redis://:**@h/0"),
            ("redis://h/0", "redis://h/0"),
            ("nonsense", "nonsense"),
            ("user:pass@host:6379", "**@host:6379"),
            ("redis://h/0?password=x&db=1", "redis://h/0?password=**&db=1"),
            ("redis://h/0?client_name=a@b", "redis://h/0?client_name=a@b"),
            ("cannot reach redis://:pw@h/0: refused", "cannot reach redis://:**@h/0: refused"),
            ("redis://:p@h/0 and redis://:q@k/1", "redis://:**@h/0 and redis://:**@k/1"),
        ] {
            assert_eq!(mask_password(url), masked, "{url}");
        }
        assert_eq!(
            sanitize_url("redis://u:pw@h:1/2?ssl_cert_reqs=none"),
            "redis://u:********@h:1/2?ssl_cert_reqs=none"
        );
    }

    /// What Celery 5.7 and kombu 5.7 show (`filter_hidden_settings({'broker_url': url})`).
    #[test]
    fn broker_urls_as_kombu_shows_them() {
        for (url, shown) in [
            ("redis://h", "redis://:********@h:6379//"),
            ("redis://u:p@h/3", "redis://u:********@h:6379/3"),
            ("redis://u@h/3", "redis://u:********@h:6379/3"),
            ("rediss://h:1/2?ssl_cert_reqs=required", "rediss://:********@h:1/2"),
            ("sentinel://:p@a:1/2;sentinel://:p@b:2/2", "sentinel://:********@a:1/2"),
            ("sentinel://a:1;sentinel://b:2", "sentinel://:********@a:1//"),
            ("redis://:p%40x@h/0", "redis://:********@h:6379/0"),
            ("redis://us%40r:p@h/1", "redis://us%40r:********@h:6379/1"),
            ("redis://[::1]:6379/0", "redis://:********@%3A%3A1:6379/0"),
            ("redis+socket:///tmp/s?virtual_host=3", "redis+socket:///tmp/s"),
            ("redis+socket://:pw@/tmp/s", "redis+socket://:**@/tmp/s"),
            ("amqp://h", "amqp://guest:********@h:5672//"),
            ("memory://", "memory://:********@localhost//"),
        ] {
            assert_eq!(broker_url_as_uri(url), shown, "{url}");
        }
        assert_eq!(broker_url_as_uri("redis://:pw@h:port/0"), "redis://:********@h:port/0");
    }
}

//! The settings as `inspect conf` and `report` show them: Celery's
//! `filter_hidden_settings` over the settings tree, with the rule of
//! `celeriac_redisconn::mask` for each name.
//!
//! A mapping is filtered entry by entry, whatever its name; a hidden name
//! (`API`, `TOKEN`, `KEY`, `SECRET`, `PASS`, `PROFANITIES_LIST`, `SIGNATURE`,
//! `DATABASE`, `BEAT_DBURI`, any case) shows `********` whatever its value;
//! `broker_url` shows as kombu's `as_uri`; a name with `backend` or `url`, and
//! any other text holding `://`, has its passwords masked.

use celeriac_redisconn::mask::{broker_url_as_uri, sanitize_url, shown, Shown, MASK};
use serde_json::{Map, Value as Json};

use crate::Settings;

/// Celery's `filter_hidden_settings(conf)`: `conf` with every secret masked.
pub fn filter_hidden_settings(conf: &Map<String, Json>) -> Map<String, Json> {
    conf.iter().map(|(key, value)| (key.clone(), censor(key, value))).collect()
}

fn censor(key: &str, value: &Json) -> Json {
    if let Json::Object(map) = value {
        return Json::Object(filter_hidden_settings(map));
    }
    match (shown(key), value) {
        (Shown::Hidden, _) => Json::String(MASK.into()),
        (Shown::BrokerUrl, Json::String(url)) => Json::String(broker_url_as_uri(url)),
        (_, Json::String(text)) if text.contains("://") => Json::String(sanitize_url(text)),
        (Shown::Url, Json::String(text)) if text.contains('@') => Json::String(sanitize_url(text)),
        _ => value.clone(),
    }
}

impl Settings {
    /// Every setting under its Celery name, secrets masked
    /// ([`filter_hidden_settings`]): what `inspect conf` reports.
    pub fn censored(&self) -> Map<String, Json> {
        match serde_json::to_value(self) {
            Ok(Json::Object(map)) => filter_hidden_settings(&map),
            _ => Map::new(),
        }
    }
}

/// Settings print censored, so a debug log never shows a password.
impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.censored()).finish()
    }
}

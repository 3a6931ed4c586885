//! What the task sets need to know about their surroundings: where Redis is,
//! the worker's node name, the heartbeat's default TTL. The CLI fills it from
//! its settings; every field has a default.

use std::time::Duration;

use celeriac_redisconn::mask_password;

/// Where the suite's tasks find Redis when neither [`TaskSetConfig::suite_redis_url`]
/// nor `REDIS_HOST`/`REDIS_PORT` say otherwise (as `t/integration/tasks.py`).
pub const DEFAULT_SUITE_REDIS: (&str, u16) = ("localhost", 6379);

/// The heartbeat's TTL when the call gives none.
pub const DEFAULT_HEARTBEAT_TTL: Duration = Duration::from_secs(60);

/// Configuration shared by the task sets.
#[derive(Clone, PartialEq, Eq)]
pub struct TaskSetConfig {
    /// The Redis the built-in tasks write to (`health:<service>`), as a Celery
    /// result-backend URL (`redis://`, `rediss://...?ssl_cert_reqs=...`,
    /// `redis+socket:///path`, `sentinel://`). The CLI passes the broker URL
    /// when it is Redis, else the result backend's. Without it the heartbeat
    /// fails with a message saying so; `celeriac.ping` still works.
    pub redis_url: Option<String>,
    /// With a `sentinel://` URL: the master's name (Celery's `master_name`
    /// transport option).
    pub redis_master_name: Option<String>,
    /// With a `sentinel://` URL: the Sentinel nodes' own password.
    pub redis_sentinel_password: Option<String>,
    /// The worker's node name (`celeriac@host`), for tasks run outside a
    /// worker; inside one the request's hostname wins.
    pub node_name: Option<String>,
    /// The heartbeat's TTL when the call gives none.
    pub heartbeat_ttl: Duration,
    /// The Redis the conformance tasks use (`redis_echo`, `redis_count`, ...).
    /// `None` reads `REDIS_HOST` and `REDIS_PORT` as Celery's suite does
    /// (default `localhost:6379`, database 0), so the worker and the pytest
    /// process look at the same keys.
    pub suite_redis_url: Option<String>,
}

impl Default for TaskSetConfig {
    fn default() -> Self {
        TaskSetConfig {
            redis_url: None,
            redis_master_name: None,
            redis_sentinel_password: None,
            node_name: None,
            heartbeat_ttl: DEFAULT_HEARTBEAT_TTL,
            suite_redis_url: None,
        }
    }
}

impl std::fmt::Debug for TaskSetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskSetConfig")
            .field("redis_url", &self.redis_url.as_deref().map(mask_password))
            .field("redis_master_name", &self.redis_master_name)
            .field("redis_sentinel_password", &self.redis_sentinel_password.as_ref().map(|_| "**"))
            .field("node_name", &self.node_name)
            .field("heartbeat_ttl", &self.heartbeat_ttl)
            .field("suite_redis_url", &self.suite_redis_url.as_deref().map(mask_password))
            .finish()
    }
}

impl TaskSetConfig {
    /// Sets [`TaskSetConfig::redis_url`].
    pub fn with_redis_url(mut self, url: impl Into<String>) -> TaskSetConfig {
        self.redis_url = Some(url.into());
        self
    }

    /// Sets [`TaskSetConfig::node_name`].
    pub fn with_node_name(mut self, name: impl Into<String>) -> TaskSetConfig {
        self.node_name = Some(name.into());
        self
    }

    /// Sets [`TaskSetConfig::heartbeat_ttl`].
    pub fn with_heartbeat_ttl(mut self, ttl: Duration) -> TaskSetConfig {
        self.heartbeat_ttl = ttl;
        self
    }

    /// Sets [`TaskSetConfig::suite_redis_url`].
    pub fn with_suite_redis_url(mut self, url: impl Into<String>) -> TaskSetConfig {
        self.suite_redis_url = Some(url.into());
        self
    }

    /// The conformance tasks' Redis: [`TaskSetConfig::suite_redis_url`], else
    /// `redis://$REDIS_HOST:$REDIS_PORT/0` with the suite's defaults.
    pub fn resolved_suite_redis_url(&self) -> String {
        if let Some(url) = &self.suite_redis_url {
            return url.clone();
        }
        let var = |name| std::env::var(name).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let host = var("REDIS_HOST").unwrap_or_else(|| DEFAULT_SUITE_REDIS.0.to_owned());
        let port = var("REDIS_PORT").unwrap_or_else(|| DEFAULT_SUITE_REDIS.1.to_string());
        let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host };
        format!("redis://{host}:{port}/0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_masks_secrets() {
        let mut config = TaskSetConfig::default().with_redis_url("redis://:hunter2@h:6379/0");
        config.redis_sentinel_password = Some("s3cret".into());
        let text = format!("{config:?}");
        assert!(!text.contains("hunter2") && !text.contains("s3cret"), "{text}");
    }

    #[test]
    fn explicit_suite_url_wins() {
        let config = TaskSetConfig::default().with_suite_redis_url("redis://h:1/2");
        assert_eq!(config.resolved_suite_redis_url(), "redis://h:1/2");
    }
}

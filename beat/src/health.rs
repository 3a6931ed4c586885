//! The health key `health:<service>`: the leading beat rewrites it with a TTL
//! on every tick, so the key exists exactly while some beat is sending.
//! Its JSON starts with the fields of the `celeriac.health.heartbeat` task
//! (service, node, hostname, pid, timestamp, ttl, version) and adds beat's:
//! role, entries, sent, skipped, missed, lease_lost, next_run, and
//! `broken_entries` (how many entries cannot be run) with `broken` (up to 100
//! of them: key -> reason).

use std::time::Duration;

use celeriac_protocol::time::PyDateTime;
use jiff::Timestamp;
use redis::aio::ConnectionManager;
use serde_json::json;

use crate::BeatError;

/// The health key name for a service.
pub fn health_key(service: &str) -> String {
    format!("health:{service}")
}

/// What the health record reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Entries loaded on the last tick.
    pub entries: usize,
    /// Runs sent by this process.
    pub sent: u64,
    /// Slots skipped because the previous run was unfinished.
    pub skipped_overlap: u64,
    /// Slots dropped by catch-up policies and starting deadlines.
    pub missed: u64,
    /// Times this process lost the leader lease.
    pub lease_lost: u64,
    /// The next slot of any entry.
    pub next_run: Option<Timestamp>,
    /// Entries that cannot be run (by key, with the reason), skipped.
    pub broken: std::collections::BTreeMap<String, String>,
}

/// Most broken entries the health record names (all are counted).
pub const MAX_BROKEN_NAMED: usize = 100;

/// Writes `health:<service>`.
pub struct Health {
    con: ConnectionManager,
    url: String,
    service: String,
    node: String,
    ttl: Duration,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health").field("key", &health_key(&self.service)).field("url", &self.url).finish()
    }
}

impl Health {
    /// A writer of `health:<service>` on `con` (`url` masked, for errors), with
    /// `node` (`gen<pid>@host`) and a TTL.
    pub fn new(con: ConnectionManager, url: String, service: &str, node: &str, ttl: Duration) -> Health {
        Health { con, url, service: service.to_owned(), node: node.to_owned(), ttl }
    }

    /// The TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The record for `now`.
    pub fn record(&self, now: Timestamp, c: &Counters) -> serde_json::Value {
        let ttl = self.ttl.as_secs() + u64::from(self.ttl.subsec_nanos() > 0);
        let hostname = self.node.split_once('@').map_or(self.node.as_str(), |(_, h)| h);
        json!({
            "service": self.service,
            "node": self.node,
            "hostname": hostname,
            "pid": std::process::id(),
            "timestamp": PyDateTime::from_timestamp(now, jiff::tz::Offset::UTC).to_iso(),
            "ttl": ttl,
            "version": env!("CARGO_PKG_VERSION"),
            "role": "leader",
            "entries": c.entries,
            "sent": c.sent,
            "skipped": c.skipped_overlap,
            "missed": c.missed,
            "lease_lost": c.lease_lost,
            "next_run": c.next_run.map(|t| PyDateTime::from_timestamp(t, jiff::tz::Offset::UTC).to_iso()),
            "broken_entries": c.broken.len(),
            "broken": c.broken.iter().take(MAX_BROKEN_NAMED)
                .map(|(k, reason)| (k.clone(), serde_json::Value::from(crate::entry::cut(reason, 300))))
                .collect::<serde_json::Map<_, _>>(),
        })
    }

    /// `SET health:<service> <json> EX <ttl>`.
    pub async fn write(&mut self, now: Timestamp, c: &Counters) -> Result<(), BeatError> {
        let record = self.record(now, c);
        let ttl = record["ttl"].as_u64().unwrap_or(60).max(1);
        let _: () = redis::cmd("SET")
            .arg(health_key(&self.service))
            .arg(record.to_string())
            .arg("EX")
            .arg(ttl)
            .query_async(&mut self.con)
            .await
            .map_err(|source| BeatError::Redis {
                url: self.url.clone(),
                doing: "writing the health key",
                source: Box::new(source),
            })?;
        Ok(())
    }
}

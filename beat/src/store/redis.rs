//! State, dynamic entries and the leader lease in Redis, in RedBeat's layout
//! (see [`crate::redbeat`]).
//!
//! Every write a leader makes is fenced: a Lua script checks that the lease
//! key still holds this beat's token before it changes anything, so a beat
//! that lost its lease (a pause longer than the lease, a network split)
//! cannot record or send a slot another leader owns.

use std::collections::HashSet;
use std::time::Duration;

use jiff::Timestamp;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use crate::entry::{Entry, Origin};
use crate::redbeat::{self, Keys};
use crate::state::EntryState;
use crate::BeatError;

/// Extends the lease to exactly `ttl` if this beat holds it (RedBeat's
/// extend-to semantics, so either scheduler can hold the same key).
const EXTEND: &str = r"
local token = redis.call('get', KEYS[1])
if not token or token ~= ARGV[1] then return 0 end
redis.call('pexpire', KEYS[1], ARGV[2])
return 1
";

const RELEASE: &str = r"
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
";

/// Records an entry's state and next due time, if this beat still leads and
/// the entry still exists. KEYS: lock, entry, schedule; ARGV: token, meta,
/// run, score.
const COMMIT: &str = r"
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('exists', KEYS[2]) == 0 then return -1 end
redis.call('hset', KEYS[2], 'meta', ARGV[2], 'celeriac_run', ARGV[3])
redis.call('zadd', KEYS[3], ARGV[4], KEYS[2])
return 1
";

/// Writes a static entry's definition (keeping its state, or starting it).
/// KEYS: lock, entry, schedule, statics; ARGV: token, name, definition,
/// celeriac, meta, run, score.
const SYNC_STATIC: &str = r"
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('hset', KEYS[2], 'definition', ARGV[3], 'celeriac', ARGV[4])
if redis.call('hsetnx', KEYS[2], 'meta', ARGV[5]) == 1 then
  redis.call('hset', KEYS[2], 'celeriac_run', ARGV[6])
  redis.call('zadd', KEYS[3], ARGV[7], KEYS[2])
elseif not redis.call('zscore', KEYS[3], KEYS[2]) then
  redis.call('zadd', KEYS[3], ARGV[7], KEYS[2])
end
redis.call('sadd', KEYS[4], ARGV[2])
return 1
";

/// Deletes a static entry that left the configuration. KEYS: lock, entry,
/// schedule, statics; ARGV: token, name.
const REMOVE_STATIC: &str = r"
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('del', KEYS[2])
redis.call('zrem', KEYS[3], KEYS[2])
redis.call('srem', KEYS[4], ARGV[2])
return 1
";

/// What happened to the lease this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEvent {
    /// This beat just became the leader.
    Acquired,
    /// This beat leads and extended the lease.
    Kept,
    /// This beat led but another holds the lease now (or it expired).
    Lost,
    /// Another beat leads.
    Standby,
}

/// An entry loaded from Redis, or why it could not be.
#[derive(Debug)]
pub enum Loaded {
    /// The entry, its state, and send options it does not know.
    Entry(Box<Entry>, EntryState, Vec<String>),
    /// The entry's hash cannot be used (it is kept, and reported).
    Broken {
        /// Its key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// The Redis side of beat.
pub struct RedisStore {
    url: String,
    con: ConnectionManager,
    keys: Keys,
    token: String,
    ttl: Duration,
    held: bool,
    read_only: bool,
    app_tz: jiff::tz::TimeZone,
    cron_deadline: Option<f64>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("url", &self.url).field("keys", &self.keys).finish_non_exhaustive()
    }
}

/// Connects to a Redis URL in Celery's spellings (`redis://`, `rediss://`,
/// `redis+socket://`, `sentinel://` with `master_name`). `url` in errors is
/// the masked one.
pub async fn connect(url: &str, master_name: Option<&str>) -> Result<(ConnectionManager, String), BeatError> {
    let masked = celeriac_redisconn::mask_password(url);
    let setting = |reason: String| BeatError::Setting { setting: "redbeat_redis_url", reason };
    let mut options = celeriac_backend::BackendOptions::from_url(url).map_err(|e| setting(e.to_string()))?;
    if master_name.is_some() {
        options.transport.master_name = master_name.map(str::to_owned);
    }
    let settings =
        celeriac_redisconn::redis_settings(options.db, options.username.as_deref(), options.password.as_deref());
    let target = options
        .endpoint
        .target(
            settings,
            options.transport.master_name.as_deref(),
            options.transport.sentinel_password.as_deref(),
            &masked,
        )
        .map_err(|e| setting(e.to_string()))?;
    let redis_err = |doing, source| BeatError::Redis { url: masked.clone(), doing, source: Box::new(source) };
    let client = match target {
        celeriac_redisconn::Target::Direct(client) => client,
        celeriac_redisconn::Target::Sentinel(sentinel) => sentinel
            .lock()
            .await
            .async_get_client()
            .await
            .map_err(|e| redis_err("asking Sentinel for the master", e))?,
    };
    let timeout = options.socket_connect_timeout.unwrap_or(celeriac_redisconn::DEFAULT_CONNECT_TIMEOUT);
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(1));
    let con = ConnectionManager::new_with_config(client, config).await.map_err(|e| redis_err("connecting", e))?;
    Ok((con, masked))
}

impl RedisStore {
    /// A store on `con` with RedBeat's `keys`; the lease lasts `ttl`. Entries
    /// read from Redis use `app_tz` and `cron_deadline` as static ones do.
    pub fn new(
        con: ConnectionManager,
        url: String,
        keys: Keys,
        ttl: Duration,
        app_tz: jiff::tz::TimeZone,
        cron_deadline: Option<f64>,
    ) -> RedisStore {
        let token = uuid::Uuid::new_v4().simple().to_string();
        RedisStore { url, con, keys, token, ttl, held: false, read_only: false, app_tz, cron_deadline }
    }

    /// A store that only reads (`--dry-run`, `--explain`): it never takes the
    /// lease and never tidies the schedule.
    pub fn read_only(mut self) -> RedisStore {
        self.read_only = true;
        self
    }

    /// The URL, password masked.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// RedBeat's key names.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The connection (for the health key).
    pub fn connection(&self) -> ConnectionManager {
        self.con.clone()
    }

    fn fail(&self, doing: &'static str) -> impl Fn(redis::RedisError) -> BeatError + '_ {
        move |source| BeatError::Redis { url: self.url.clone(), doing, source: Box::new(source) }
    }

    /// Takes or keeps the lease. Returns what happened and, for a standby,
    /// how long until the lease may be free.
    pub async fn campaign(&mut self) -> Result<(LeaseEvent, Duration), BeatError> {
        let ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        if self.held {
            let kept: i64 = Script::new(EXTEND)
                .key(&self.keys.lock)
                .arg(&self.token)
                .arg(ms)
                .invoke_async(&mut self.con)
                .await
                .map_err(self.fail("extending the leader lease"))?;
            if kept == 1 {
                return Ok((LeaseEvent::Kept, self.ttl));
            }
            self.held = false;
            return Ok((LeaseEvent::Lost, Duration::ZERO));
        }
        let set: Option<String> = redis::cmd("SET")
            .arg(&self.keys.lock)
            .arg(&self.token)
            .arg("NX")
            .arg("PX")
            .arg(ms)
            .query_async(&mut self.con)
            .await
            .map_err(self.fail("taking the leader lease"))?;
        if set.is_some() {
            self.held = true;
            return Ok((LeaseEvent::Acquired, self.ttl));
        }
        let left: i64 = redis::cmd("PTTL")
            .arg(&self.keys.lock)
            .query_async(&mut self.con)
            .await
            .map_err(self.fail("reading the leader lease"))?;
        // -2: gone already (try again at once); -1: no expiry (a foreign lock).
        let wait = match left {
            -2 => Duration::from_millis(1),
            n if n < 0 => self.ttl,
            n => Duration::from_millis(n.unsigned_abs() + 1),
        };
        Ok((LeaseEvent::Standby, wait))
    }

    /// Whether this beat believes it holds the lease.
    pub fn holds_lease(&self) -> bool {
        self.held
    }

    /// Gives the lease up at once (clean shutdown), if still held.
    pub async fn release(&mut self) -> Result<(), BeatError> {
        if !self.held {
            return Ok(());
        }
        self.held = false;
        let _: i64 = Script::new(RELEASE)
            .key(&self.keys.lock)
            .arg(&self.token)
            .invoke_async(&mut self.con)
            .await
            .map_err(self.fail("releasing the leader lease"))?;
        Ok(())
    }

    /// Writes the configured entries (the leader does, on taking the lease
    /// and on SIGHUP), starting new ones at `now`, and deletes static entries
    /// that left the configuration. Returns false if the lease was lost.
    pub async fn sync_statics(&mut self, statics: &[Entry], now: Timestamp) -> Result<bool, BeatError> {
        let previous: HashSet<String> = redis::cmd("SMEMBERS")
            .arg(&self.keys.statics)
            .query_async(&mut self.con)
            .await
            .map_err(self.fail("reading the static entry names"))?;
        for name in previous.iter().filter(|n| !statics.iter().any(|e| &e.name == *n)) {
            let done: i64 = Script::new(REMOVE_STATIC)
                .key(&self.keys.lock)
                .key(self.keys.entry(name))
                .key(&self.keys.schedule)
                .key(&self.keys.statics)
                .arg(&self.token)
                .arg(name)
                .invoke_async(&mut self.con)
                .await
                .map_err(self.fail("removing a static entry"))?;
            if done == 0 {
                return Ok(false);
            }
            tracing::info!("beat: Removed static entry {name}: it is no longer in beat_schedule");
        }
        for entry in statics {
            let start = crate::scheduler::fresh_state(entry, now);
            let next = entry.schedule.next_after(start.last_run_at, &entry.tz);
            let extras = serde_json::to_string(&entry.extras).unwrap_or_else(|_| "{}".into());
            let done: i64 = Script::new(SYNC_STATIC)
                .key(&self.keys.lock)
                .key(self.keys.entry(&entry.name))
                .key(&self.keys.schedule)
                .key(&self.keys.statics)
                .arg(&self.token)
                .arg(&entry.name)
                .arg(redbeat::definition_json(entry).to_string())
                .arg(extras)
                .arg(start.meta_json())
                .arg(start.run_json())
                .arg(redbeat::score(next))
                .invoke_async(&mut self.con)
                .await
                .map_err(self.fail("writing a static entry"))?;
            if done == 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Every entry in the schedule zset, with its state.
    pub async fn load(&mut self) -> Result<Vec<Loaded>, BeatError> {
        let keys: Vec<String> = redis::cmd("ZRANGE")
            .arg(&self.keys.schedule)
            .arg(0)
            .arg(-1)
            .query_async(&mut self.con)
            .await
            .map_err(self.fail("reading the schedule"))?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let statics: HashSet<String> = redis::cmd("SMEMBERS")
            .arg(&self.keys.statics)
            .query_async(&mut self.con)
            .await
            .map_err(self.fail("reading the static entry names"))?;
        let mut pipe = redis::pipe();
        for key in &keys {
            pipe.cmd("HMGET").arg(key).arg("definition").arg("meta").arg("celeriac").arg("celeriac_run");
        }
        type Fields = (Option<String>, Option<String>, Option<String>, Option<String>);
        let rows: Vec<Fields> = pipe.query_async(&mut self.con).await.map_err(self.fail("reading the entries"))?;
        let mut out = Vec::with_capacity(keys.len());
        let mut gone = Vec::new();
        for (key, (definition, meta, extras, run)) in keys.into_iter().zip(rows) {
            let Some(definition) = definition else {
                gone.push(key);
                continue;
            };
            let name = self.keys.name(&key);
            let origin = if statics.contains(name) { Origin::Static } else { Origin::Dynamic };
            let entry = redbeat::entry_from_hash(
                &key,
                &self.keys,
                &definition,
                extras.as_deref(),
                origin,
                &self.app_tz,
                self.cron_deadline,
            );
            let state = EntryState::from_fields(meta.as_deref(), run.as_deref());
            out.push(match (entry, state) {
                (Ok((entry, unknown)), Ok(state)) => Loaded::Entry(Box::new(entry), state, unknown),
                (Err(e), _) => Loaded::Broken { key, reason: e.to_string() },
                (_, Err(e)) => Loaded::Broken { key, reason: e },
            });
        }
        if !gone.is_empty() && !self.read_only {
            tracing::warn!(
                "beat: {} in {} ha{} no hash (deleted or evicted); removing from the schedule",
                gone.join(", "),
                self.keys.schedule,
                if gone.len() == 1 { "s" } else { "ve" }
            );
            let _: i64 = redis::cmd("ZREM")
                .arg(&self.keys.schedule)
                .arg(&gone)
                .query_async(&mut self.con)
                .await
                .map_err(self.fail("removing vanished entries"))?;
        }
        Ok(out)
    }

    /// Records an entry's state and next due time. `Ok(None)`: the lease is
    /// lost; `Ok(Some(false))`: the entry was deleted meanwhile.
    pub async fn commit(
        &mut self,
        entry: &Entry,
        state: &EntryState,
        next: Option<Timestamp>,
    ) -> Result<Option<bool>, BeatError> {
        let done: i64 = Script::new(COMMIT)
            .key(&self.keys.lock)
            .key(self.keys.entry(&entry.name))
            .key(&self.keys.schedule)
            .arg(&self.token)
            .arg(state.meta_json())
            .arg(state.run_json())
            .arg(redbeat::score(next))
            .invoke_async(&mut self.con)
            .await
            .map_err(self.fail("recording a run"))?;
        Ok(match done {
            0 => {
                self.held = false;
                None
            }
            -1 => Some(false),
            _ => Some(true),
        })
    }

    /// Writes a dynamic entry the way RedBeat's `RedBeatSchedulerEntry.save()`
    /// does (definition replaced, state kept or started at `now`), for programs
    /// that add entries at run time. Not fenced: any process may add entries.
    pub async fn save_entry(&mut self, entry: &Entry, now: Timestamp) -> Result<(), BeatError> {
        let key = self.keys.entry(&entry.name);
        let start = crate::scheduler::fresh_state(entry, now);
        let next = entry.schedule.next_after(start.last_run_at, &entry.tz);
        let extras = serde_json::to_string(&entry.extras).unwrap_or_else(|_| "{}".into());
        let _: () = redis::pipe()
            .atomic()
            .cmd("HSET")
            .arg(&key)
            .arg("definition")
            .arg(redbeat::definition_json(entry).to_string())
            .arg("celeriac")
            .arg(extras)
            .ignore()
            .cmd("HSETNX")
            .arg(&key)
            .arg("meta")
            .arg(start.meta_json())
            .ignore()
            .cmd("HSETNX")
            .arg(&key)
            .arg("celeriac_run")
            .arg(start.run_json())
            .ignore()
            .cmd("ZADD")
            .arg(&self.keys.schedule)
            .arg("NX")
            .arg(redbeat::score(next))
            .arg(&key)
            .ignore()
            .query_async(&mut self.con)
            .await
            .map_err(self.fail("saving an entry"))?;
        Ok(())
    }

    /// Deletes a dynamic entry (RedBeat's `delete()`).
    pub async fn delete_entry(&mut self, name: &str) -> Result<(), BeatError> {
        let key = self.keys.entry(name);
        let _: () = redis::pipe()
            .atomic()
            .cmd("ZREM")
            .arg(&self.keys.schedule)
            .arg(&key)
            .ignore()
            .cmd("DEL")
            .arg(&key)
            .ignore()
            .query_async(&mut self.con)
            .await
            .map_err(self.fail("deleting an entry"))?;
        Ok(())
    }
}

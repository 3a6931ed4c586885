//! State, dynamic entries and the leader lease in Redis, in RedBeat's layout
//! (see [`crate::redbeat`]).
//!
//! Every write a leader makes is fenced: a Lua script checks that the lease
//! key still holds this beat's token before it changes anything, so a beat
//! that lost its lease (a pause longer than the lease, a network split)
//! cannot record or send a slot another leader owns. When the broker is this
//! same Redis, the task message itself is pushed by such a script, together
//! with the state that says it was sent ([`RedisStore::send_fenced`]).
//!
//! Entries are read defensively: any program can write `redbeat:<name>`
//! hashes, so a key of another type, a field that is not UTF-8 or larger than
//! [`MAX_FIELD_BYTES`], or a member of the schedule that is not UTF-8 makes
//! that one entry [`Loaded::Broken`], never the whole load fail.

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

/// Publishes a task message and records the send, if this beat still leads
/// and the entry still exists; nothing is written otherwise, so a message is
/// in a queue exactly when its slot is recorded as sent. KEYS: lock, entry,
/// schedule, then the queue lists; ARGV: token, meta, run, score, message.
const SEND: &str = r"
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('exists', KEYS[2]) == 0 then return -1 end
for i = 4, #KEYS do
  local kind = redis.call('type', KEYS[i])['ok']
  if kind ~= 'list' and kind ~= 'none' then return -2 end
end
for i = 4, #KEYS do redis.call('lpush', KEYS[i], ARGV[5]) end
redis.call('hset', KEYS[2], 'meta', ARGV[2], 'celeriac_run', ARGV[3])
redis.call('zadd', KEYS[3], ARGV[4], KEYS[2])
return 1
";

/// Reads the fields beat uses of each entry key, or why it cannot: the key's
/// type when it is not a hash, a field's size when it is larger than the
/// limit. KEYS: entry keys; ARGV: the largest field read, in bytes.
const LOAD: &str = r"
local out = {}
local limit = tonumber(ARGV[1])
local fields = {'definition', 'meta', 'celeriac', 'celeriac_run'}
for i, key in ipairs(KEYS) do
  local kind = redis.call('type', key)['ok']
  if kind == 'hash' then
    local row = {'hash'}
    for j, field in ipairs(fields) do
      local size = redis.call('hstrlen', key, field)
      if size > limit then row[j + 1] = size else row[j + 1] = redis.call('hget', key, field) end
    end
    out[i] = row
  else
    out[i] = {kind}
  end
end
return out
";

/// The largest hash field beat reads: a `definition` is a few hundred bytes;
/// a larger field makes its entry broken instead of filling beat's memory.
pub const MAX_FIELD_BYTES: usize = 1 << 20;

/// Entry keys read per script call.
const LOAD_CHUNK: usize = 256;

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
        /// Its key (not UTF-8 bytes escaped).
        key: String,
        /// Why.
        reason: String,
    },
}

/// What the fenced send did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Published and recorded.
    Done,
    /// Nothing written: this beat no longer holds the lease.
    LeaseLost,
    /// Nothing written: the entry was deleted meanwhile.
    Gone,
    /// Nothing written: a queue's key holds something other than a list.
    NotAList,
}

/// A Redis key or member for messages: its text, with bytes that are not
/// UTF-8 escaped.
fn shown(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => crate::entry::cut(text, 200),
        Err(_) => crate::entry::cut(&bytes.escape_ascii().to_string(), 200),
    }
}

/// One hash field as read by [`LOAD`]: text, absent, or why not.
fn field(key: &str, name: &str, v: Option<&redis::Value>) -> Result<Option<String>, String> {
    match v {
        None | Some(redis::Value::Nil) => Ok(None),
        Some(redis::Value::BulkString(bytes)) => String::from_utf8(bytes.clone())
            .map(Some)
            .map_err(|e| format!("{key} field {name} is not UTF-8 text (byte {})", e.utf8_error().valid_up_to())),
        Some(redis::Value::Int(size)) => {
            Err(format!("{key} field {name} is {size} bytes; beat reads fields up to {MAX_FIELD_BYTES} bytes"))
        }
        Some(other) => Err(format!("{key} field {name}: unexpected reply {other:?}")),
    }
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
    connect_with_tls(url, master_name, None).await
}

/// [`connect`], with TLS settings in kombu's spelling (the broker's
/// `broker_use_ssl`, which RedBeat also applies to the broker's Redis when it
/// keeps its state there): they turn TLS on for a `redis://` URL too.
pub async fn connect_with_tls(
    url: &str,
    master_name: Option<&str>,
    tls: Option<&celeriac_config::TlsSettings>,
) -> Result<(ConnectionManager, String), BeatError> {
    let masked = celeriac_redisconn::mask_password(url);
    let setting = |reason: String| BeatError::Setting { setting: "redbeat_redis_url", reason };
    let mut options = celeriac_backend::BackendOptions::from_url(url).map_err(|e| setting(e.to_string()))?;
    if master_name.is_some() {
        options.transport.master_name = master_name.map(str::to_owned);
    }
    if let Some(ssl) = tls {
        use celeriac_redisconn::Endpoint;
        if let Endpoint::Tcp { host, port } = &options.endpoint {
            options.endpoint = Endpoint::Tls { host: host.clone(), port: *port, tls: Default::default() };
        }
        if let Endpoint::Tls { tls, .. } = &mut options.endpoint {
            let pairs = [
                ("ssl_cert_reqs", Some(&ssl.ssl_cert_reqs)),
                ("ssl_ca_certs", ssl.ssl_ca_certs.as_ref()),
                ("ssl_certfile", ssl.ssl_certfile.as_ref()),
                ("ssl_keyfile", ssl.ssl_keyfile.as_ref()),
            ];
            for (key, value) in pairs {
                if let Some(value) = value {
                    tls.set(key, value, celeriac_redisconn::Dialect::Kombu)
                        .map_err(|e| BeatError::Setting { setting: "broker_use_ssl", reason: format!("{key}: {e}") })?;
                }
            }
        }
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
        // Bytes, not text: any program may have added a name that is not UTF-8.
        let previous: Vec<Vec<u8>> = redis::cmd("SMEMBERS")
            .arg(&self.keys.statics)
            .query_async(&mut self.con)
            .await
            .map_err(self.fail("reading the static entry names"))?;
        for name in previous.iter().filter(|n| !statics.iter().any(|e| e.name.as_bytes() == n.as_slice())) {
            let mut key = self.keys.prefix.as_bytes().to_vec();
            key.extend_from_slice(name);
            let done: i64 = Script::new(REMOVE_STATIC)
                .key(&self.keys.lock)
                .key(key)
                .key(&self.keys.schedule)
                .key(&self.keys.statics)
                .arg(&self.token)
                .arg(name.as_slice())
                .invoke_async(&mut self.con)
                .await
                .map_err(self.fail("removing a static entry"))?;
            if done == 0 {
                return Ok(false);
            }
            tracing::info!("beat: Removed static entry {}: it is no longer in beat_schedule", shown(name));
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

    /// Every entry in the schedule zset, with its state. An entry that
    /// cannot be used is [`Loaded::Broken`] with the reason; only a failure
    /// of Redis itself fails the load. Scores are not read: celeriac decides
    /// from `meta` and rewrites an entry's score whenever it records it, so a
    /// score of `inf`, `-inf` or `1e300` changes nothing.
    pub async fn load(&mut self) -> Result<Vec<Loaded>, BeatError> {
        let members: Vec<Vec<u8>> = redis::cmd("ZRANGE")
            .arg(&self.keys.schedule)
            .arg(0)
            .arg(-1)
            .query_async(&mut self.con)
            .await
            .map_err(self.fail("reading the schedule"))?;
        if members.is_empty() {
            return Ok(Vec::new());
        }
        let statics: Vec<Vec<u8>> = redis::cmd("SMEMBERS")
            .arg(&self.keys.statics)
            .query_async(&mut self.con)
            .await
            .map_err(self.fail("reading the static entry names"))?;
        let statics: HashSet<String> = statics.into_iter().filter_map(|s| String::from_utf8(s).ok()).collect();
        let mut out = Vec::with_capacity(members.len());
        let mut keys = Vec::with_capacity(members.len());
        for member in members {
            match String::from_utf8(member) {
                Ok(key) => keys.push(key),
                Err(e) => out.push(Loaded::Broken {
                    key: shown(e.as_bytes()),
                    reason: format!(
                        "the member of {} is not UTF-8 text; remove it (ZREM) and write the entry under a UTF-8 name",
                        self.keys.schedule
                    ),
                }),
            }
        }
        let script = Script::new(LOAD);
        let mut rows: Vec<Vec<redis::Value>> = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(LOAD_CHUNK) {
            let mut invocation = script.prepare_invoke();
            for key in chunk {
                invocation.key(key);
            }
            invocation.arg(MAX_FIELD_BYTES);
            let part: Vec<Vec<redis::Value>> =
                invocation.invoke_async(&mut self.con).await.map_err(self.fail("reading the entries"))?;
            rows.extend(part);
        }
        let mut gone = Vec::new();
        for (key, row) in keys.into_iter().zip(rows) {
            let kind = match row.first() {
                Some(redis::Value::BulkString(kind)) => String::from_utf8_lossy(kind).into_owned(),
                Some(redis::Value::SimpleString(kind)) => kind.clone(),
                _ => String::new(),
            };
            match kind.as_str() {
                "hash" => {}
                "none" => {
                    gone.push(key);
                    continue;
                }
                other => {
                    out.push(Loaded::Broken {
                        reason: format!("{key} is a Redis {other}, not a hash (RedBeat's entries are hashes)"),
                        key,
                    });
                    continue;
                }
            }
            let fields: Result<Vec<Option<String>>, String> = ["definition", "meta", "celeriac", "celeriac_run"]
                .iter()
                .enumerate()
                .map(|(i, name)| field(&key, name, row.get(i + 1)))
                .collect();
            let (definition, meta, extras, run) = match fields.as_deref() {
                Ok([d, m, e, r]) => (d.clone(), m.clone(), e.clone(), r.clone()),
                Ok(_) => (None, None, None, None),
                Err(reason) => {
                    out.push(Loaded::Broken { reason: reason.clone(), key });
                    continue;
                }
            };
            let Some(definition) = definition else {
                out.push(Loaded::Broken {
                    reason: format!(
                        "{key} has no definition field (write it as RedBeat's save() does, or delete the key)"
                    ),
                    key,
                });
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
                (_, Err(e)) => Loaded::Broken { reason: format!("{key}: {e}"), key },
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

    /// Extends the lease to its full time if this beat still holds it (the
    /// check right before a publish that [`RedisStore::send_fenced`] cannot
    /// cover). Returns false, and forgets the lease, if it is gone.
    pub async fn renew(&mut self) -> Result<bool, BeatError> {
        let ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let kept: i64 = Script::new(EXTEND)
            .key(&self.keys.lock)
            .arg(&self.token)
            .arg(ms)
            .invoke_async(&mut self.con)
            .await
            .map_err(self.fail("extending the leader lease"))?;
        if kept != 1 {
            self.held = false;
        }
        Ok(kept == 1)
    }

    /// Pushes `message` (a kombu envelope) to the lists `queues` and records
    /// `state` and the next due time, in one script that first checks the
    /// lease: either both happen, or neither. For a broker on this same Redis
    /// server and database only.
    pub async fn send_fenced(
        &mut self,
        entry: &Entry,
        state: &EntryState,
        next: Option<Timestamp>,
        queues: &[String],
        message: &str,
    ) -> Result<Sent, BeatError> {
        let script = Script::new(SEND);
        let mut invocation = script.prepare_invoke();
        invocation.key(&self.keys.lock).key(self.keys.entry(&entry.name)).key(&self.keys.schedule);
        for queue in queues {
            invocation.key(queue);
        }
        invocation.arg(&self.token).arg(state.meta_json()).arg(state.run_json()).arg(redbeat::score(next)).arg(message);
        let done: i64 = invocation.invoke_async(&mut self.con).await.map_err(self.fail("sending a task"))?;
        Ok(match done {
            1 => Sent::Done,
            -1 => Sent::Gone,
            -2 => Sent::NotAList,
            _ => {
                self.held = false;
                Sent::LeaseLost
            }
        })
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

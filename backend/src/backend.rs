//! The Redis result backend: task records, waiting for them, and group records,
//! exactly as Celery 5.7's `RedisBackend` (`celery/backends/redis.py` on top of
//! `BaseKeyValueStoreBackend` in `celery/backends/base.py`).
//!
//! - A record is written as `_store_result` writes it: `GET` the key first and
//!   leave a stored SUCCESS alone (a lost or duplicated worker must not
//!   overwrite it); otherwise one `MULTI` pipeline of `SETEX key <ttl> value`
//!   (`SET` without expiry) and `PUBLISH key value` with the same bytes.
//!   FAILURE records use `result_failure_expires`.
//! - Reading a missing record gives PENDING, as `_get_task_meta_for` does.
//! - Waiting subscribes to the record's channel first and reads it second, so
//!   a record stored in between is seen one way or the other.
//! - Groups are `{"result": group.as_tuple()}` at `celery-taskset-meta-<id>`,
//!   written like task records (`_save_group`).
//!
//! The chord join is in [`crate::chord`].

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use celeriac_protocol::result::{GroupMeta, ResultKeys, ResultMeta, State};
use celeriac_protocol::time::PyDateTime;
use celeriac_protocol::Value;
use tokio::time::Instant;

use crate::chord::ChordScripts;
use crate::connection::Connection;
use crate::consumer::ResultConsumer;
use crate::error::BackendError;
use crate::handle::ResultHandle;
use crate::options::BackendOptions;
use crate::payload::PayloadCodec;

/// Redis's largest string value (`RedisBackend._MAX_STR_VALUE_SIZE`).
pub const MAX_VALUE_SIZE: usize = 512 * 1024 * 1024;

/// The longest a waiter without pub/sub goes before reading its record and
/// trying to subscribe again.
const MAX_RESUBSCRIBE_INTERVAL: Duration = Duration::from_secs(1);

/// What [`RedisBackend::store`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOutcome {
    /// The record was written and published.
    Stored,
    /// A SUCCESS record was already stored, and was kept (nothing written).
    KeptSuccess,
}

/// Celery's Redis result backend. Cheap to clone; clones share one connection
/// for commands and one for pub/sub.
#[derive(Clone)]
pub struct RedisBackend {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) options: BackendOptions,
    pub(crate) keys: ResultKeys,
    pub(crate) codec: PayloadCodec,
    pub(crate) connection: Connection,
    pub(crate) scripts: ChordScripts,
    consumer: OnceLock<ResultConsumer>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend").field("url", &self.inner.connection.url()).finish_non_exhaustive()
    }
}

pub(crate) fn require_id(id: &str, what: &'static str) -> Result<(), BackendError> {
    if id.is_empty() {
        Err(BackendError::EmptyId { what })
    } else {
        Ok(())
    }
}

/// See [`RedisBackend::prepare`].
pub(crate) fn prepare_record(meta: &ResultMeta, extended: bool) -> ResultMeta {
    let mut meta = meta.clone();
    if !extended {
        meta.extended = None;
    }
    if !meta.status.is_ready() {
        meta.date_done = None;
    } else if meta.date_done.is_none() {
        meta.date_done = Some(PyDateTime::now_utc());
    }
    meta
}

/// Sleeps until `deadline`, or for ever without one.
pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

impl RedisBackend {
    /// Connects to the backend (failing now if Redis cannot be reached or the
    /// settings are unusable).
    pub async fn connect(options: BackendOptions) -> Result<RedisBackend, BackendError> {
        let connection = Connection::connect(&options).await?;
        Ok(RedisBackend {
            inner: Arc::new(Inner {
                keys: ResultKeys::new(&options.transport.global_keyprefix),
                codec: PayloadCodec { serializer: options.result_serializer, compression: options.result_compression },
                connection,
                scripts: ChordScripts::new(),
                consumer: OnceLock::new(),
                options,
            }),
        })
    }

    /// Connects with a `result_backend` URL and Celery's defaults.
    pub async fn from_url(url: &str) -> Result<RedisBackend, BackendError> {
        RedisBackend::connect(BackendOptions::from_url(url)?).await
    }

    /// The settings in use.
    pub fn options(&self) -> &BackendOptions {
        &self.inner.options
    }

    /// The key names in use (with the global key prefix).
    pub fn keys(&self) -> &ResultKeys {
        &self.inner.keys
    }

    /// The serializer (and compression) records are written with.
    pub fn codec(&self) -> PayloadCodec {
        self.inner.codec
    }

    /// The masked URL, for logs.
    pub fn url(&self) -> &str {
        self.inner.connection.url()
    }

    /// An `AsyncResult`-like handle on a task's result.
    pub fn result(&self, task_id: &str) -> ResultHandle {
        ResultHandle::new(self.clone(), task_id)
    }

    pub(crate) fn consumer(&self) -> &ResultConsumer {
        self.inner.consumer.get_or_init(|| ResultConsumer::start(self.inner.connection.clone()))
    }

    /// The record as it will be stored: `result_extended` fields only when that
    /// setting is on, and `date_done` set exactly for ready states (to now, if
    /// the caller left it empty), as `_get_result_meta` does.
    pub fn prepare(&self, meta: &ResultMeta) -> ResultMeta {
        prepare_record(meta, self.inner.options.result_extended)
    }

    pub(crate) fn encode_value(&self, key: &str, value: &Value) -> Result<Vec<u8>, BackendError> {
        let bytes = self.inner.codec.encode(value).map_err(|source| BackendError::Encode {
            key: key.to_owned(),
            serializer: self.inner.codec.serializer.serializer_name(),
            source,
        })?;
        if bytes.len() > MAX_VALUE_SIZE {
            return Err(BackendError::TooLarge { key: key.to_owned(), size: bytes.len() });
        }
        Ok(bytes)
    }

    pub(crate) fn decode_value(&self, key: &str, bytes: &[u8]) -> Result<Value, BackendError> {
        self.inner.codec.decode(bytes).map_err(|source| BackendError::Decode {
            key: key.to_owned(),
            serializer: self.inner.codec.serializer.serializer_name(),
            source,
        })
    }

    /// Decodes a stored or published task record.
    pub fn decode_meta(&self, task_id: &str, bytes: &[u8]) -> Result<ResultMeta, BackendError> {
        let key = self.inner.keys.task(task_id);
        let value = self.decode_value(&key, bytes)?;
        let mut meta = ResultMeta::from_value(&value).map_err(|source| BackendError::Record { key, source })?;
        if meta.task_id.is_empty() {
            meta.task_id = task_id.to_owned();
        }
        Ok(meta)
    }

    /// `GET` a key, retried on connection errors.
    pub(crate) async fn get_raw(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        self.inner
            .connection
            .run("GET", key, |mut con| async move { redis::cmd("GET").arg(key).query_async(&mut con).await })
            .await
    }

    /// `SETEX` (or `SET`) and `PUBLISH` the same bytes in one `MULTI`, as
    /// `RedisBackend._set`; retried on connection errors.
    pub(crate) async fn set_and_publish(
        &self,
        op: &'static str,
        key: &str,
        value: &[u8],
        expires: Option<u64>,
    ) -> Result<(), BackendError> {
        self.inner
            .connection
            .run(op, key, |mut con| async move {
                let mut pipe = redis::pipe();
                pipe.atomic();
                match expires {
                    Some(seconds) => pipe.cmd("SETEX").arg(key).arg(seconds).arg(value).ignore(),
                    None => pipe.cmd("SET").arg(key).arg(value).ignore(),
                };
                pipe.cmd("PUBLISH").arg(key).arg(value).ignore();
                pipe.query_async::<()>(&mut con).await
            })
            .await
    }

    /// Stores a task record as Celery's `_store_result`: unless a SUCCESS is
    /// already stored for the task, writes and publishes it (see the module docs).
    pub async fn store(&self, meta: &ResultMeta) -> Result<StoreOutcome, BackendError> {
        require_id(&meta.task_id, "task_id")?;
        let meta = self.prepare(meta);
        let key = self.inner.keys.task(&meta.task_id);
        let value = self.encode_value(&key, &meta.to_value())?;
        if let Some(current) = self.get_raw(&key).await?.filter(|b| !b.is_empty()) {
            let current = self.decode_meta(&meta.task_id, &current)?;
            if current.status == State::Success {
                tracing::warn!(
                    task_id = %meta.task_id,
                    state = %meta.status,
                    "not storing the {} result: the task already stored SUCCESS (a duplicate or redelivered run)",
                    meta.status
                );
                return Ok(StoreOutcome::KeptSuccess);
            }
        }
        let expires = self.inner.options.expires_secs(meta.status == State::Failure);
        self.set_and_publish("store", &key, &value, expires).await?;
        tracing::debug!(task_id = %meta.task_id, state = %meta.status, "stored result");
        Ok(StoreOutcome::Stored)
    }

    /// A task's record; PENDING (with no result) when nothing is stored.
    pub async fn get(&self, task_id: &str) -> Result<ResultMeta, BackendError> {
        require_id(task_id, "task_id")?;
        let key = self.inner.keys.task(task_id);
        match self.get_raw(&key).await? {
            Some(bytes) if !bytes.is_empty() => self.decode_meta(task_id, &bytes),
            _ => Ok(ResultMeta::pending(task_id)),
        }
    }

    /// Many records with one `MGET`, in the order asked (PENDING where missing).
    pub async fn get_many<S: AsRef<str>>(&self, task_ids: &[S]) -> Result<Vec<ResultMeta>, BackendError> {
        if task_ids.is_empty() {
            return Ok(Vec::new());
        }
        for id in task_ids {
            require_id(id.as_ref(), "task_id")?;
        }
        let keys: Vec<String> = task_ids.iter().map(|id| self.inner.keys.task(id.as_ref())).collect();
        let keys = &keys;
        let values: Vec<Option<Vec<u8>>> = self
            .inner
            .connection
            .run("MGET", &keys[0], |mut con| async move { redis::cmd("MGET").arg(keys).query_async(&mut con).await })
            .await?;
        task_ids
            .iter()
            .zip(values)
            .map(|(id, bytes)| match bytes {
                Some(bytes) if !bytes.is_empty() => self.decode_meta(id.as_ref(), &bytes),
                _ => Ok(ResultMeta::pending(id.as_ref())),
            })
            .collect()
    }

    /// Deletes a task's record (`AsyncResult.forget`).
    pub async fn forget(&self, task_id: &str) -> Result<(), BackendError> {
        require_id(task_id, "task_id")?;
        let key = self.inner.keys.task(task_id);
        let key = &key;
        self.inner
            .connection
            .run("DEL", key, |mut con| async move { redis::cmd("DEL").arg(key).query_async::<()>(&mut con).await })
            .await
    }

    /// Waits until the task is ready (SUCCESS, FAILURE or REVOKED) and returns
    /// its record, or [`BackendError::Timeout`] after `timeout`.
    ///
    /// Subscribes to the record's channel (shared with every other waiter of this
    /// backend), then reads the record, then waits for a publish. While pub/sub
    /// is unavailable it reads the record, and tries to subscribe again, every
    /// `poll_interval` (at most every second).
    pub async fn wait(&self, task_id: &str, timeout: Option<Duration>) -> Result<ResultMeta, BackendError> {
        require_id(task_id, "task_id")?;
        let deadline = timeout.map(|t| Instant::now() + t);
        let timed_out = || BackendError::Timeout { task_id: task_id.to_owned(), timeout: timeout.unwrap_or_default() };
        let key = self.inner.keys.task(task_id);
        let mut subscription = self.consumer().register(&key);
        // Without pub/sub: read, and try to subscribe again, this often.
        let retry_every = self.inner.options.poll_interval.min(MAX_RESUBSCRIBE_INTERVAL);
        loop {
            let mut live = tokio::select! {
                subscribed = subscription.subscribe() => match subscribed {
                    Ok(()) => true,
                    Err(reason) => {
                        tracing::debug!(task_id, reason, "cannot subscribe to the result; polling");
                        false
                    }
                },
                _ = sleep_until(deadline) => return Err(timed_out()),
            };
            // Read after subscribing: a record stored from now on is also published to us.
            let read = tokio::select! {
                read = self.get(task_id) => read,
                _ = sleep_until(deadline) => return Err(timed_out()),
            };
            match read {
                Ok(meta) if meta.status.is_ready() => return Ok(meta),
                Ok(_) => {}
                Err(e) if e.is_connection() => {
                    tracing::warn!(task_id, error = %e, "cannot read the result; trying again");
                    live = false;
                }
                Err(e) => return Err(e),
            }
            loop {
                tokio::select! {
                    changed = subscription.latest.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        let payload = subscription.latest.borrow_and_update().clone();
                        if let Some(bytes) = payload {
                            match self.decode_meta(task_id, &bytes) {
                                Ok(meta) if meta.status.is_ready() => return Ok(meta),
                                Ok(_) => {}
                                Err(e) => tracing::warn!(task_id, error = %e, "ignoring an unreadable published result"),
                            }
                        }
                    }
                    // The connection was lost: subscribe again and read again.
                    _ = subscription.generation.changed() => break,
                    _ = tokio::time::sleep(retry_every), if !live => break,
                    _ = sleep_until(deadline) => return Err(timed_out()),
                }
            }
        }
    }

    /// How many tasks are being waited for right now (distinct channels).
    pub fn waiting(&self) -> usize {
        self.inner.consumer.get().map_or(0, ResultConsumer::channels)
    }

    /// Saves a group record as `GroupResult.save()`: `{"result": as_tuple}` at
    /// the group key, with `result_expires`, published like a task record.
    pub async fn save_group(&self, group_id: &str, group: &GroupMeta) -> Result<(), BackendError> {
        require_id(group_id, "group_id")?;
        if group.group_id() != group_id {
            tracing::debug!(group_id, tuple_id = group.group_id(), "saving a group under another id than its tuple's");
        }
        let key = self.inner.keys.group(group_id);
        let value = self.encode_value(&key, &group.to_value())?;
        self.set_and_publish("save_group", &key, &value, self.inner.options.expires_secs(false)).await
    }

    /// Reads a group record (`GroupResult.restore`); `None` when none is stored.
    pub async fn restore_group(&self, group_id: &str) -> Result<Option<GroupMeta>, BackendError> {
        require_id(group_id, "group_id")?;
        let key = self.inner.keys.group(group_id);
        match self.get_raw(&key).await? {
            Some(bytes) if !bytes.is_empty() => {
                let value = self.decode_value(&key, &bytes)?;
                GroupMeta::from_value(&value).map(Some).map_err(|source| BackendError::Record { key, source })
            }
            _ => Ok(None),
        }
    }

    /// Deletes a group record (`GroupResult.delete`).
    pub async fn delete_group(&self, group_id: &str) -> Result<(), BackendError> {
        require_id(group_id, "group_id")?;
        let key = self.inner.keys.group(group_id);
        let key = &key;
        self.inner
            .connection
            .run("DEL", key, |mut con| async move { redis::cmd("DEL").arg(key).query_async::<()>(&mut con).await })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use celeriac_protocol::json;
    use celeriac_protocol::result::{ExceptionInfo, Extended};

    fn when() -> PyDateTime {
        PyDateTime::parse_iso("2026-01-02T03:04:05.123456+00:00").unwrap()
    }

    /// What Celery 5.7's `get_key_for_task/group` give with each
    /// `global_keyprefix` (captured from `RedisBackend` in Python).
    #[test]
    fn key_prefixes_match_celery() {
        for (prefix, task, group, join) in [
            ("", "celery-task-meta-T", "celery-taskset-meta-G", "celery-taskset-meta-G.j"),
            ("pfx", "pfx_celery-task-meta-T", "pfx_celery-taskset-meta-G", "pfx_celery-taskset-meta-G.j"),
            ("pfx:", "pfx:celery-task-meta-T", "pfx:celery-taskset-meta-G", "pfx:celery-taskset-meta-G.j"),
            ("pfx_", "pfx_celery-task-meta-T", "pfx_celery-taskset-meta-G", "pfx_celery-taskset-meta-G.j"),
            ("pfx-", "pfx-celery-task-meta-T", "pfx-celery-taskset-meta-G", "pfx-celery-taskset-meta-G.j"),
            ("pfx.", "pfx.celery-task-meta-T", "pfx.celery-taskset-meta-G", "pfx.celery-taskset-meta-G.j"),
            ("a b", "a b_celery-task-meta-T", "a b_celery-taskset-meta-G", "a b_celery-taskset-meta-G.j"),
        ] {
            let keys = ResultKeys::new(prefix);
            assert_eq!((keys.task("T").as_str(), keys.group("G").as_str()), (task, group), "{prefix:?}");
            let chord = keys.chord("G");
            assert_eq!(chord.join, join);
            assert_eq!(
                [chord.total, chord.size, chord.done, chord.claim],
                [".t", ".s", ".d", ".c"].map(|s| format!("{group}{s}"))
            );
        }
    }

    #[test]
    fn records_are_prepared_as_celery_writes_them() {
        let mut meta = ResultMeta::success("t", Value::Int(4), when());
        meta.extended = Some(Extended::new(
            "tasks.add",
            Value::List(vec![]),
            Value::Map(Default::default()),
            "w@h",
            0,
            Some("celery"),
        ));
        // Without result_extended the request fields are not written.
        let plain = prepare_record(&meta, false);
        assert!(plain.extended.is_none());
        assert_eq!(
            json::to_string(&plain.to_value()).unwrap(),
            r#"{"status": "SUCCESS", "result": 4, "traceback": null, "children": [], "date_done": "2026-01-02T03:04:05.123456+00:00", "task_id": "t"}"#
        );
        assert!(prepare_record(&meta, true).extended.is_some());
        // Ready states always get date_done; others never do.
        let mut undated = ResultMeta::failure("t", &ExceptionInfo::builtin("ValueError", "x"), None, when());
        undated.date_done = None;
        assert!(prepare_record(&undated, false).date_done.is_some());
        let mut retry = ResultMeta::retry("t", &ExceptionInfo::builtin("ValueError", "x"), None);
        retry.date_done = Some(when());
        assert!(prepare_record(&retry, false).date_done.is_none());
    }
}

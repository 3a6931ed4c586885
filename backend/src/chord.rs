//! The Redis backend's native chord join, as Celery 5.7 runs it
//! (`RedisBackend.set_chord_size`, `on_chord_part_return`, `add_to_chord`,
//! `apply_chord`), so Python and Rust workers can complete parts of the same
//! chord and its body is sent exactly once.
//!
//! Keys, all `celery-taskset-meta-<group_id>` plus a suffix ([`ChordKeys`]):
//! - `.s` the chord size, set by the producer before the last header task is
//!   sent (no PUBLISH since 5.7); setting it also deletes `.c`, because a
//!   re-applied frozen chord reuses its group id;
//! - `.j` finished header results `[1, task_id, state, result]` (a sorted set
//!   scored by `group_index`, `+inf` without one; a list when
//!   `result_chord_ordered` is false);
//! - `.d` the set of `<task_id>:<score>` already joined, so a header task that
//!   runs twice (redelivered, acks_late) counts once;
//! - `.t` extra parts added by `add_to_chord`/`Task.replace`;
//! - `.c` the claim: the worker that sees the last part takes it with
//!   `SET NX` inside the same script that records the part, so of two workers
//!   finishing together exactly one sends the body. It is extended while the
//!   body is published, and replaced by `done` once that worker cleans up, so a
//!   late duplicate of a header task neither re-creates the join keys nor sends
//!   the body again.
//!
//! The Lua below is written for celeriac and keeps the semantics of Celery's
//! scripts key for key, with one addition: a claim holding this call's own
//! token counts as claimed, so a call retried after a lost reply still
//! finishes the join (another worker never has that token).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use celeriac_protocol::result::{ChordKeys, ChordPart, ExceptionInfo, GroupMeta, ResultTuple, State};
use celeriac_protocol::Value;
use tokio::time::Instant;

use crate::backend::{require_id, RedisBackend};
use crate::error::BackendError;
use crate::handle::TaskFailed;

/// Records one header result and, if it completes the chord, takes the claim.
/// KEYS: join, total, size, done, group, claim.
/// ARGV: task_id, encoded part, ordered ("1"/"0"), score, expires, group_expires,
/// claim_expires, claim token.
/// Returns {ready count, total diff or nil, size or nil, claimed 0/1}, or
/// {-1, 0, 0, 0} when the chord was already completed.
const PART_RETURN_LUA: &str = r"
local join_key, total_key, size_key = KEYS[1], KEYS[2], KEYS[3]
local done_key, group_key, claim_key = KEYS[4], KEYS[5], KEYS[6]
local task_id, part, ordered, score = ARGV[1], ARGV[2], ARGV[3] == '1', ARGV[4]
local expires, group_expires = tonumber(ARGV[5]), tonumber(ARGV[6])
local claim_expires, token = tonumber(ARGV[7]), ARGV[8]

local holder = redis.call('GET', claim_key)
if holder == 'done' then
    return {-1, 0, 0, 0}
end

local seen = task_id .. ':' .. score
if redis.call('SISMEMBER', done_key, seen) == 0 then
    if ordered then
        redis.call('ZADD', join_key, score, part)
    else
        redis.call('RPUSH', join_key, part)
    end
    redis.call('SADD', done_key, seen)
end

local ready
if ordered then
    ready = redis.call('ZCOUNT', join_key, '-inf', '+inf')
else
    ready = redis.call('LLEN', join_key)
end

if expires > 0 then
    redis.call('EXPIRE', join_key, expires)
    redis.call('EXPIRE', total_key, expires)
    redis.call('EXPIRE', size_key, expires)
    redis.call('EXPIRE', done_key, expires)
    if group_expires > 0 then
        redis.call('EXPIRE', group_key, group_expires)
    end
end

local diff = redis.call('GET', total_key)
local size = redis.call('GET', size_key)
local claimed = 0
if size and ready == tonumber(size) + tonumber(diff or 0) then
    if holder == token or redis.call('SET', claim_key, token, 'NX', 'EX', claim_expires) then
        claimed = 1
    end
end
return {ready, diff, size, claimed}
";

/// Keeps (or retakes, if it lapsed while the chord is still pending) the claim
/// while the body is published. KEYS: claim, size. ARGV: token, seconds.
const CLAIM_EXTEND_LUA: &str = r"
local claim_key, size_key = KEYS[1], KEYS[2]
local token, seconds = ARGV[1], tonumber(ARGV[2])
local holder = redis.call('GET', claim_key)
if holder == token then
    return redis.call('EXPIRE', claim_key, seconds)
end
if not holder and redis.call('EXISTS', size_key) == 1 then
    if redis.call('SET', claim_key, token, 'EX', seconds, 'NX') then
        return 1
    end
end
return 0
";

/// After the body was sent: drops the join keys and leaves `done` in the claim
/// key, if the claim is still ours. KEYS: claim, join, total, size, done.
/// ARGV: token, seconds to keep `done`.
const CLEANUP_LUA: &str = r"
local claim_key = KEYS[1]
if redis.call('GET', claim_key) ~= ARGV[1] then
    return 0
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
local keep = tonumber(ARGV[2])
if keep and keep > 0 then
    redis.call('SET', claim_key, 'done', 'EX', keep)
end
return 1
";

/// The chord scripts, loaded lazily (`EVALSHA`, then `EVAL` on `NOSCRIPT`).
pub(crate) struct ChordScripts {
    part_return: redis::Script,
    claim_extend: redis::Script,
    cleanup: redis::Script,
}

impl ChordScripts {
    pub(crate) fn new() -> ChordScripts {
        ChordScripts {
            part_return: redis::Script::new(PART_RETURN_LUA),
            claim_extend: redis::Script::new(CLAIM_EXTEND_LUA),
            cleanup: redis::Script::new(CLEANUP_LUA),
        }
    }
}

/// `celery.exceptions.ChordError(message)`, what the body of a failed chord stores.
pub fn chord_error(message: &str) -> ExceptionInfo {
    ExceptionInfo::new("celery.exceptions", "ChordError", vec![Value::Str(message.to_owned())])
}

/// The right to send a completed chord's body, held by one worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChordClaim {
    group_id: String,
    token: String,
    done_expires: u64,
}

impl ChordClaim {
    /// The chord's group id.
    pub fn group_id(&self) -> &str {
        &self.group_id
    }
}

/// A completed chord this worker must now send the body of.
#[derive(Clone, Debug, PartialEq)]
#[must_use = "send the chord body with these results, then call RedisBackend::finish_chord"]
pub struct ChordReady {
    /// The header results, ordered by `group_index` (or by completion with
    /// `result_chord_ordered=false`): the body's first argument.
    pub results: Vec<Value>,
    /// The claim; pass it to [`RedisBackend::finish_chord`] after publishing
    /// the body, whether publishing worked or not (Celery cleans up either way).
    pub claim: ChordClaim,
}

/// A chord whose header failed: its body must be stored as FAILURE with
/// [`ChordFailure::exception`] (and its errbacks called), not sent.
#[derive(Clone, Debug, PartialEq)]
pub struct ChordFailure {
    /// The chord's group id.
    pub group_id: String,
    /// The header task that failed, when one did.
    pub culprit: Option<String>,
    /// The `ChordError` text, e.g. `Dependency <id> raised ValueError('bad')`.
    pub message: String,
    /// The failed header task's own exception (the `ChordError`'s
    /// `__cause__` in Celery): what the members of a group body store.
    pub cause: Option<ExceptionInfo>,
}

impl ChordFailure {
    /// The `ChordError` to store on the body.
    pub fn exception(&self) -> ExceptionInfo {
        chord_error(&self.message)
    }
}

/// What [`RedisBackend::on_chord_part_return`] found.
#[derive(Clone, Debug, PartialEq)]
pub enum ChordOutcome {
    /// Not every part has returned yet (`total` is `None` while the producer
    /// has not set the chord size).
    NotReady {
        /// Parts recorded so far.
        ready: u64,
        /// Parts expected (size plus `add_to_chord` additions).
        total: Option<u64>,
    },
    /// Every part returned, but another worker claimed the chord (or this
    /// worker's claim lapsed before it could publish): nothing to do here.
    ClaimedElsewhere,
    /// The chord was completed before; this was a late duplicate part.
    AlreadyDone,
    /// This worker completed the chord: send the body, then `finish_chord`.
    Ready(ChordReady),
    /// This worker completed the chord and a part failed: fail the body.
    Failed(ChordFailure),
}

fn as_int(value: &redis::Value) -> Option<i64> {
    match value {
        redis::Value::Int(i) => Some(*i),
        redis::Value::BulkString(b) => std::str::from_utf8(b).ok()?.trim().parse().ok(),
        redis::Value::SimpleString(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// `claim_expires` and `done_expires` in seconds, as Celery computes them from
/// `result_chord_join_timeout` (`or 5.0`; 3 s gives 6 s and 300 s).
fn claim_lifetimes(join_timeout: Duration) -> (u64, u64) {
    let join = join_timeout.as_secs_f64();
    let join = if join > 0.0 { join } else { 5.0 };
    let claim = ((join * 2.0) as u64).max(5);
    (claim, (claim * 2).max(300))
}

/// Why a completed chord could not be joined.
enum JoinFailure {
    /// The chord fails (`ChordError` text, culprit, the culprit's exception).
    Chord(String, Option<String>, Option<ExceptionInfo>),
    /// Redis could not be read: the caller may try again.
    Backend(BackendError),
}

type JoinFuture<'a> = Pin<Box<dyn Future<Output = Result<Value, JoinFailure>> + Send + 'a>>;

impl RedisBackend {
    fn chord_keys(&self, group_id: &str) -> Result<ChordKeys, BackendError> {
        require_id(group_id, "group_id")?;
        Ok(self.inner.keys.chord(group_id))
    }

    /// Sets the chord size before the last header task is sent (the producer's
    /// part): `DEL .c`, then `SET .s <n>` with `result_chord_expires`.
    pub async fn set_chord_size(&self, group_id: &str, size: u64) -> Result<(), BackendError> {
        let keys = self.chord_keys(group_id)?;
        let keys = &keys;
        let expires = self.inner.options.chord_expires_secs();
        self.inner
            .connection
            .run("set_chord_size", &keys.size, |mut con| async move {
                let mut pipe = redis::pipe();
                pipe.cmd("DEL").arg(&keys.claim).ignore();
                match expires {
                    Some(seconds) => pipe.cmd("SET").arg(&keys.size).arg(size).arg("EX").arg(seconds).ignore(),
                    None => pipe.cmd("SET").arg(&keys.size).arg(size).ignore(),
                };
                pipe.query_async::<()>(&mut con).await
            })
            .await
    }

    /// Adds one part to a running chord (`add_to_chord`, used by `Task.replace`):
    /// `INCR .t`. Returns the new extra count. Not retried, as it is not idempotent.
    pub async fn add_to_chord(&self, group_id: &str) -> Result<i64, BackendError> {
        let keys = self.chord_keys(group_id)?;
        let mut con = self.inner.connection.manager();
        redis::cmd("INCR").arg(&keys.total).query_async(&mut con).await.map_err(|source| BackendError::Redis {
            op: "add_to_chord",
            key: keys.total.clone(),
            source,
        })
    }

    /// The producer's `apply_chord`: when a header member is itself a group,
    /// saves the header as a group record (with `result_chord_expires`, not
    /// published) so the join keeps the nesting. Returns whether it saved.
    pub async fn apply_chord(&self, group_id: &str, header: &GroupMeta) -> Result<bool, BackendError> {
        require_id(group_id, "group_id")?;
        if !header.members().iter().any(ResultTuple::is_group) {
            return Ok(false);
        }
        let key = self.inner.keys.group(group_id);
        let value = self.encode_value(&key, &header.to_value())?;
        let (key, value) = (&key, &value);
        let expires = self.inner.options.chord_expires_secs();
        self.inner
            .connection
            .run("apply_chord", key, |mut con| async move {
                let mut cmd = redis::cmd("SET");
                cmd.arg(key).arg(value);
                if let Some(seconds) = expires {
                    cmd.arg("EX").arg(seconds);
                }
                cmd.query_async::<()>(&mut con).await
            })
            .await?;
        Ok(true)
    }

    /// Records a finished header task of the chord `group_id`, as Celery's
    /// `on_chord_part_return` (which a worker calls after storing the task's own
    /// result, for SUCCESS, FAILURE and REVOKED alike).
    ///
    /// `result` is what the task record holds: the return value, or the
    /// serialized exception. If this part completes the chord and this worker
    /// wins the claim, the header results are joined: [`ChordOutcome::Ready`]
    /// (send the body with them prepended to its args, then call
    /// [`RedisBackend::finish_chord`]) or [`ChordOutcome::Failed`] (store the
    /// `ChordError` on the body). Redis errors while joining are returned as
    /// errors; the claim then lapses after `result_chord_join_timeout * 2` and a
    /// redelivered header task completes the join.
    pub async fn on_chord_part_return(
        &self,
        group_id: &str,
        group_index: Option<i64>,
        task_id: &str,
        state: &State,
        result: &Value,
    ) -> Result<ChordOutcome, BackendError> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        self.on_chord_part_return_as(group_id, group_index, task_id, state, result, &token).await
    }

    /// [`RedisBackend::on_chord_part_return`] with the caller's claim token:
    /// a caller that retries after an error (the reply may have been lost
    /// after the part was joined and the claim taken) passes the same token
    /// each time, so the retry still sees the claim as its own and sends the
    /// body. Use a fresh token per header task run.
    pub async fn on_chord_part_return_as(
        &self,
        group_id: &str,
        group_index: Option<i64>,
        task_id: &str,
        state: &State,
        result: &Value,
        token: &str,
    ) -> Result<ChordOutcome, BackendError> {
        let keys = self.chord_keys(group_id)?;
        require_id(task_id, "task_id")?;
        let part = ChordPart { task_id: task_id.to_owned(), state: state.clone(), result: result.clone() };
        let encoded = self.encode_value(&keys.join, &part.to_value())?;
        let score = group_index.map_or_else(|| "+inf".to_owned(), |i| i.to_string());
        let (claim_expires, done_expires) = claim_lifetimes(self.inner.options.result_chord_join_timeout);
        let options = &self.inner.options;
        let ordered = options.transport.result_chord_ordered;
        let expires = options.chord_expires_secs().unwrap_or(0);
        let group_expires = options.chord_result_expires_secs().unwrap_or(0);
        let group_key = self.inner.keys.group(group_id);
        let script = &self.inner.scripts.part_return;
        let (keys_ref, encoded, score, token_ref, group_key) = (&keys, &encoded, &score, token, &group_key);
        let reply: Vec<redis::Value> = self
            .inner
            .connection
            .run("chord part return", &keys.join, |mut con| async move {
                script
                    .key(&keys_ref.join)
                    .key(&keys_ref.total)
                    .key(&keys_ref.size)
                    .key(&keys_ref.done)
                    .key(group_key)
                    .key(&keys_ref.claim)
                    .arg(task_id)
                    .arg(encoded)
                    .arg(if ordered { "1" } else { "0" })
                    .arg(score)
                    .arg(expires)
                    .arg(group_expires)
                    .arg(claim_expires)
                    .arg(token_ref)
                    .invoke_async(&mut con)
                    .await
            })
            .await?;
        let [ready, diff, size, claimed] = reply.as_slice() else {
            return Err(BackendError::Redis {
                op: "chord part return",
                key: keys.join.clone(),
                source: redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, "expected 4 values")),
            });
        };
        let ready = as_int(ready).unwrap_or(0);
        if ready < 0 {
            tracing::debug!(group_id, task_id, "chord already completed; late duplicate part ignored");
            return Ok(ChordOutcome::AlreadyDone);
        }
        let ready = ready as u64;
        let Some(size) = as_int(size) else {
            return Ok(ChordOutcome::NotReady { ready, total: None });
        };
        let total = (size + as_int(diff).unwrap_or(0)).max(0) as u64;
        if ready != total {
            return Ok(ChordOutcome::NotReady { ready, total: Some(total) });
        }
        if as_int(claimed) != Some(1) {
            tracing::debug!(group_id, task_id, "chord complete; another worker sends the body");
            return Ok(ChordOutcome::ClaimedElsewhere);
        }
        let results = match self.join_chord(group_id, &keys, total).await {
            Ok(results) => results,
            Err(JoinFailure::Backend(e)) => return Err(e),
            Err(JoinFailure::Chord(message, culprit, cause)) => {
                tracing::error!(group_id, error = %message, "Chord {group_id:?} raised: ChordError({message:?})");
                // Drop the size, so a copy of a header task arriving later does
                // not fail the chord again; the recorded results stay.
                let size_key = &keys.size;
                if let Err(e) = self
                    .inner
                    .connection
                    .run("DEL", size_key, |mut con| async move {
                        redis::cmd("DEL").arg(size_key).query_async::<()>(&mut con).await
                    })
                    .await
                {
                    tracing::warn!(group_id, error = %e, "cannot delete the chord size after a failed join");
                }
                return Ok(ChordOutcome::Failed(ChordFailure {
                    group_id: group_id.to_owned(),
                    culprit,
                    message,
                    cause,
                }));
            }
        };
        let lease = self.inner.options.chord_publish_lease.as_secs().max(claim_expires);
        let extend = &self.inner.scripts.claim_extend;
        let extended: i64 = self
            .inner
            .connection
            .run("chord claim", &keys.claim, |mut con| async move {
                extend.key(&keys_ref.claim).key(&keys_ref.size).arg(token_ref).arg(lease).invoke_async(&mut con).await
            })
            .await?;
        if extended == 0 {
            tracing::warn!(group_id, "chord body for {group_id:?} not sent: the claim is no longer this worker's");
            return Ok(ChordOutcome::ClaimedElsewhere);
        }
        Ok(ChordOutcome::Ready(ChordReady {
            results,
            claim: ChordClaim { group_id: group_id.to_owned(), token: token.to_owned(), done_expires },
        }))
    }

    /// After the body of a [`ChordOutcome::Ready`] chord was published (or
    /// failed to be): deletes the join keys and marks the chord done, if the
    /// claim is still this worker's. Returns whether it was.
    pub async fn finish_chord(&self, claim: &ChordClaim) -> Result<bool, BackendError> {
        let keys = self.chord_keys(&claim.group_id)?;
        let keys = &keys;
        let cleanup = &self.inner.scripts.cleanup;
        let cleaned: i64 = self
            .inner
            .connection
            .run("chord cleanup", &keys.claim, |mut con| async move {
                cleanup
                    .key(&keys.claim)
                    .key(&keys.join)
                    .key(&keys.total)
                    .key(&keys.size)
                    .key(&keys.done)
                    .arg(&claim.token)
                    .arg(claim.done_expires)
                    .invoke_async(&mut con)
                    .await
            })
            .await?;
        if cleaned == 0 {
            tracing::warn!(
                group_id = %claim.group_id,
                "the chord claim for {:?} was lost before cleanup; its data is left to expire",
                claim.group_id
            );
        }
        Ok(cleaned == 1)
    }

    /// The header results of a completed chord: from the saved group record
    /// when the header has nested groups, else from the join key.
    async fn join_chord(&self, group_id: &str, keys: &ChordKeys, total: u64) -> Result<Vec<Value>, JoinFailure> {
        match self.restore_group(group_id).await {
            Ok(Some(header)) => {
                let deadline = Instant::now() + self.inner.options.result_chord_join_timeout;
                let mut results = Vec::with_capacity(header.members().len());
                for member in header.members() {
                    results.push(self.join_member(member, deadline).await?);
                }
                return Ok(results);
            }
            Ok(None) => {}
            Err(e) if e.is_connection() => return Err(JoinFailure::Backend(e)),
            Err(e) => return Err(JoinFailure::Chord(format!("Join error: {e}"), None, None)),
        }
        let ordered = self.inner.options.transport.result_chord_ordered;
        let join = &keys.join;
        let members: Vec<Vec<u8>> = self
            .inner
            .connection
            .run("chord join", join, |mut con| async move {
                if ordered {
                    redis::cmd("ZRANGE").arg(join).arg(0).arg(-1).query_async(&mut con).await
                } else {
                    redis::cmd("LRANGE").arg(join).arg(0).arg(total).query_async(&mut con).await
                }
            })
            .await
            .map_err(JoinFailure::Backend)?;
        let mut results = Vec::with_capacity(members.len());
        for bytes in members {
            let part = self
                .decode_value(join, &bytes)
                .map_err(|e| e.to_string())
                .and_then(|value| ChordPart::from_value(&value).map_err(|e| e.to_string()))
                .map_err(|e| JoinFailure::Chord(format!("Join error: {e}"), None, None))?;
            if part.state.propagates() {
                let cause = part.exception().ok().flatten();
                let exception = cause.as_ref().map_or_else(|| "None".to_owned(), ExceptionInfo::python_repr);
                let message = format!("Dependency {} raised {exception}", part.task_id);
                return Err(JoinFailure::Chord(message, Some(part.task_id), cause));
            }
            results.push(part.result);
        }
        Ok(results)
    }

    /// `GroupResult.join_native(propagate=True)` for one member of a nested
    /// header: a task's value, or a group's list of values.
    fn join_member<'a>(&'a self, member: &'a ResultTuple, deadline: Instant) -> JoinFuture<'a> {
        Box::pin(async move {
            if let Some(children) = &member.children {
                let mut values = Vec::with_capacity(children.len());
                for child in children {
                    values.push(self.join_member(child, deadline).await?);
                }
                return Ok(Value::List(values));
            }
            let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            let meta = match self.wait(&member.id, Some(remaining)).await {
                Ok(meta) => meta,
                Err(BackendError::Timeout { .. }) => {
                    return Err(JoinFailure::Chord(
                        "Join error: TimeoutError('The operation timed out.')".into(),
                        None,
                        None,
                    ))
                }
                Err(e) if e.is_connection() => return Err(JoinFailure::Backend(e)),
                Err(e) => return Err(JoinFailure::Chord(format!("Join error: {e}"), Some(member.id.clone()), None)),
            };
            match TaskFailed::from_meta(&meta) {
                Ok(None) => Ok(meta.result),
                Ok(Some(failed)) => Err(JoinFailure::Chord(
                    format!("Join error: {}", failed.python_repr()),
                    Some(member.id.clone()),
                    None,
                )),
                Err(e) => Err(JoinFailure::Chord(format!("Join error: {e}"), Some(member.id.clone()), None)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_lifetimes_as_celery() {
        assert_eq!(claim_lifetimes(Duration::from_secs(3)), (6, 300));
        assert_eq!(claim_lifetimes(Duration::ZERO), (10, 300));
        assert_eq!(claim_lifetimes(Duration::from_millis(1200)), (5, 300));
        assert_eq!(claim_lifetimes(Duration::from_secs(200)), (400, 800));
    }

    #[test]
    fn script_replies_are_read_as_redis_sends_them() {
        assert_eq!(as_int(&redis::Value::Int(-1)), Some(-1));
        assert_eq!(as_int(&redis::Value::BulkString(b"12".to_vec())), Some(12));
        assert_eq!(as_int(&redis::Value::Nil), None);
        assert_eq!(as_int(&redis::Value::BulkString(b"x".to_vec())), None);
    }

    #[test]
    fn chord_errors_are_celery_chord_errors() {
        let failure = ChordFailure {
            group_id: "g".into(),
            culprit: Some("t".into()),
            message: "Dependency t raised ValueError('bad')".into(),
            cause: None,
        };
        let exc = failure.exception();
        assert_eq!((exc.exc_module.as_deref(), exc.exc_type.as_str()), (Some("celery.exceptions"), "ChordError"));
        assert_eq!(exc.python_repr(), "ChordError(\"Dependency t raised ValueError('bad')\")");
    }
}

//! Settling and restoring with kombu's ack emulation: ack (`ZREM`+`HDEL`),
//! requeue (`restore_by_tag(leftmost=True)`, an `LPUSH`), restore at shutdown
//! and after the visibility timeout (`RPUSH`), and the visibility sweep
//! (`QoS.restore_visible`) with its `unacked_mutex`.

use std::sync::Arc;

use celeriac_protocol::Envelope;

use super::{now_score, now_secs, Inner, RetryLimit};
use crate::error::BrokerError;
use crate::window::{Held, Window};

/// What [`restore_by_tag`](super::RedisBroker::restore_by_tag) did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestoreOutcome {
    /// Moved back to its queue(s) with `redelivered` set.
    Restored,
    /// Not in `unacked` (already acked or restored); its index entry was dropped.
    Missing,
    /// A later delivery of the same message holds it now; left alone.
    HeldElsewhere,
    /// No queue is bound for its exchange and routing key; left in `unacked`
    /// (kombu would drop it).
    NoRoute,
    /// Its `unacked` entry is not readable; left in `unacked` (kombu would fail the sweep).
    Unreadable,
    /// It kept changing under us; try again later.
    Contended,
}

impl Inner {
    /// kombu's `restore_by_tag`: reads the `unacked` entry, marks the envelope
    /// redelivered, finds its queue(s) from the stored exchange and routing key
    /// (`_lookup`), and moves it there with one script that checks the entry is
    /// unchanged (kombu's `WATCH unacked`). With `guard`, only if its
    /// `unacked_index` score is one of those.
    pub async fn restore_by_tag(
        &self,
        tag: &str,
        leftmost: bool,
        guard: Option<&[String]>,
    ) -> Result<RestoreOutcome, BrokerError> {
        for _ in 0..8 {
            let key = self.keys.unacked().to_owned();
            let value: Option<Vec<u8>> =
                self.conn
                    .run("HGET", |mut conn| async move {
                        redis::cmd("HGET").arg(&key).arg(tag).query_async(&mut conn).await
                    })
                    .await?;
            let (payload, destinations) = match &value {
                None => (String::new(), Vec::new()),
                Some(v) => match Envelope::from_unacked_slice(v) {
                    Err(e) => {
                        tracing::error!(delivery_tag = tag, error = %e, "cannot restore an unacked message that is not kombu's [envelope, exchange, routing_key]; left in unacked");
                        return Ok(RestoreOutcome::Unreadable);
                    }
                    Ok((mut envelope, exchange, routing_key)) => {
                        envelope.mark_redelivered();
                        let queues = self.lookup(&exchange, &routing_key, false).await?;
                        if queues.is_empty() {
                            tracing::warn!(delivery_tag = tag, exchange = %exchange, routing_key = %routing_key, "cannot restore an unacked message: no queue is bound for it; left in unacked");
                            return Ok(RestoreOutcome::NoRoute);
                        }
                        let priority = envelope.message.priority;
                        let keys = queues.iter().map(|q| self.keys.queue_key_for_priority(q, priority)).collect();
                        (envelope.to_json()?, keys)
                    }
                },
            };
            let mut keys: Vec<&str> = vec![self.keys.unacked(), self.keys.unacked_index()];
            keys.extend(destinations.iter().map(String::as_str));
            let mut args: Vec<&[u8]> = vec![
                tag.as_bytes(),
                value.as_deref().unwrap_or(b""),
                if leftmost { b"L" } else { b"R" },
                payload.as_bytes(),
            ];
            if let Some(scores) = guard {
                args.extend(scores.iter().map(|s| s.as_bytes()));
            }
            let outcome: i64 = self.eval("restore", &self.scripts.restore, &keys, &args).await?;
            match outcome {
                1 => return Ok(RestoreOutcome::Restored),
                0 => return Ok(RestoreOutcome::Missing),
                -2 => return Ok(RestoreOutcome::HeldElsewhere),
                _ => continue,
            }
        }
        tracing::warn!(
            delivery_tag = tag,
            "an unacked message kept changing while being restored; will try again later"
        );
        Ok(RestoreOutcome::Contended)
    }

    /// Acks (or rejects) a held delivery: in the next batch of acks, or on
    /// its own (retrying transient errors up to `settle_timeout`) when the
    /// batch could not be run.
    pub async fn ack_held(inner: &Arc<Inner>, held: &Held) -> Result<(), BrokerError> {
        let removed = match inner.acks.ack(inner, held).await {
            Some(code) => code,
            None => inner.ack_one(held).await?,
        };
        match removed {
            1 => {}
            -1 => {
                tracing::warn!(delivery_tag = %held.tag, "not acking: the message was restored and another delivery of it holds it now")
            }
            _ => {
                tracing::debug!(delivery_tag = %held.tag, "ack: the message was no longer in unacked (restored, or lost with a server restart)")
            }
        }
        Ok(())
    }

    /// Acks one held delivery with the single-tag script; its outcome code.
    async fn ack_one(&self, held: &Held) -> Result<i64, BrokerError> {
        let limit = RetryLimit::For(self.options.settle_timeout);
        self.retrying("ack", limit, || self.ack_once(held)).await
    }

    /// Acks one held delivery with one script call, no retries (for
    /// deferred settlements, which retry on their own schedule).
    pub async fn ack_once(&self, held: &Held) -> Result<i64, BrokerError> {
        let keys = [self.keys.unacked(), self.keys.unacked_index()];
        let mut args: Vec<&[u8]> = vec![held.tag.as_bytes()];
        args.extend(held.scores.iter().map(|s| s.as_bytes()));
        self.eval("ack", &self.scripts.ack, &keys, &args).await
    }

    /// Requeues a held delivery once, no retries (for deferred settlements).
    pub async fn requeue_once(&self, held: &Held) -> Result<(), BrokerError> {
        let outcome = self.restore_by_tag(&held.tag, true, Some(&held.scores)).await?;
        if outcome != RestoreOutcome::Restored {
            tracing::warn!(delivery_tag = %held.tag, ?outcome, "deferred requeue did not move the message");
        }
        Ok(())
    }

    /// Requeues a held delivery (kombu's `reject(requeue=True)`).
    pub async fn requeue_held(&self, held: &Held) -> Result<(), BrokerError> {
        let limit = RetryLimit::For(self.options.settle_timeout);
        let outcome =
            self.retrying("requeue", limit, || self.restore_by_tag(&held.tag, true, Some(&held.scores))).await?;
        if outcome != RestoreOutcome::Restored {
            tracing::warn!(delivery_tag = %held.tag, ?outcome, "requeue did not move the message");
        }
        Ok(())
    }

    /// Raises a held delivery's `unacked_index` score to now.
    pub async fn extend_held(&self, window: &Window, seq: u64, held: &Held) -> Result<(), BrokerError> {
        let score = now_score();
        // Recorded first: if the reply is lost, acks must accept the new score too.
        window.add_score(seq, score.clone(), false);
        let keys = [self.keys.unacked_index()];
        let mut args: Vec<&[u8]> = vec![held.tag.as_bytes(), score.as_bytes()];
        args.extend(held.scores.iter().map(|s| s.as_bytes()));
        let limit = RetryLimit::For(self.options.settle_timeout);
        let result: i64 = self
            .retrying("extend_visibility", limit, || self.eval("extend", &self.scripts.extend, &keys, &args))
            .await?;
        match result {
            1 => {
                window.add_score(seq, score, true);
                Ok(())
            }
            0 => Err(BrokerError::NotHeld {
                tag: held.tag.clone(),
                why: "it is no longer in unacked_index: restored after the visibility timeout",
            }),
            _ => {
                Err(BrokerError::NotHeld { tag: held.tag.clone(), why: "another delivery of the message holds it now" })
            }
        }
    }

    /// Restores every held delivery in delivery order (`RPUSH`, as kombu's
    /// `QoS.restore_unacked`), each only if still ours. Returns how many moved.
    pub async fn restore_all(&self, held: &[(u64, Held)]) -> Result<usize, BrokerError> {
        let mut restored = 0;
        let mut first_error = None;
        for (_, h) in held {
            // Once Redis kept failing for settle_timeout, stop: a shutdown
            // during an outage must not wait that long per message, and the
            // rest come back after the visibility timeout.
            if first_error.is_some() {
                break;
            }
            let limit = RetryLimit::For(self.options.settle_timeout);
            match self.retrying("restore", limit, || self.restore_by_tag(&h.tag, false, Some(&h.scores))).await {
                Ok(RestoreOutcome::Restored) => restored += 1,
                Ok(outcome) => tracing::debug!(delivery_tag = %h.tag, ?outcome, "not restored"),
                Err(e) => {
                    tracing::error!(delivery_tag = %h.tag, error = %e, "could not restore an unacked message; the visibility timeout will");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(restored),
        }
    }

    /// kombu's `QoS.restore_visible` (see [`super::RedisBroker::restore_visible`]).
    pub async fn restore_visible(&self) -> Result<usize, BrokerError> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mutex = self.keys.unacked_mutex().to_owned();
        let expire_ms = u64::try_from(self.options.unacked_mutex_expire.as_millis()).unwrap_or(u64::MAX).max(1);
        let acquired: Option<String> = self
            .conn
            .run("SET NX", |mut conn| {
                let (mutex, token) = (mutex.clone(), token.clone());
                async move {
                    redis::cmd("SET")
                        .arg(&mutex)
                        .arg(&token)
                        .arg("NX")
                        .arg("PX")
                        .arg(expire_ms)
                        .query_async(&mut conn)
                        .await
                }
            })
            .await?;
        if acquired.is_none() {
            tracing::debug!("another consumer holds unacked_mutex; skipping this visibility sweep");
            return Ok(0);
        }
        let result = self.restore_visible_locked().await;
        let release: Result<i64, BrokerError> =
            self.eval("release unacked_mutex", &self.scripts.release_lock, &[&mutex], &[token.as_bytes()]).await;
        if let Err(e) = release {
            tracing::warn!(error = %e, "could not release unacked_mutex; it expires by itself");
        }
        result
    }

    async fn restore_visible_locked(&self) -> Result<usize, BrokerError> {
        let ceil =
            celeriac_protocol::json::python_float_repr(now_secs() - self.options.visibility_timeout.as_secs_f64());
        let index = self.keys.unacked_index().to_owned();
        let limit = self.options.unacked_restore_limit;
        let flat: Vec<String> = self
            .conn
            .run("ZRANGE BYSCORE REV", |mut conn| async move {
                let mut cmd = redis::cmd("ZRANGE");
                cmd.arg(&index).arg(&ceil).arg(0).arg("BYSCORE").arg("REV");
                if let Some(n) = limit {
                    cmd.arg("LIMIT").arg(0).arg(n);
                }
                cmd.arg("WITHSCORES").query_async(&mut conn).await
            })
            .await?;
        let mut restored = 0;
        for pair in flat.chunks(2) {
            let [tag, score] = pair else { continue };
            if self.restore_by_tag(tag, false, Some(std::slice::from_ref(score))).await? == RestoreOutcome::Restored {
                restored += 1;
            }
        }
        if restored > 0 {
            tracing::info!(restored, "restored messages unacked for longer than the visibility timeout");
        }
        Ok(restored)
    }
}

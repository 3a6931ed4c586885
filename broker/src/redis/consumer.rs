//! The Redis consumer's background tasks: fetching and the visibility sweep.
//!
//! Fetching follows kombu's order exactly: keys grouped by priority step, then
//! by queue in cycle order, the queue rotated to the end after each message
//! (round robin). While the window has room it first runs the pop script,
//! which takes up to a batch of messages in that order and records each in
//! `unacked`/`unacked_index` atomically. When that finds nothing it waits in
//! `BRPOP` (server-side timeout `brpop_timeout`), so empty queues cost one
//! blocked connection, not polling; a message popped by `BRPOP` is recorded at
//! once by a script (the same window kombu has between `BRPOP` and `QoS.append`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use celeriac_protocol::Envelope;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::connection::SharedConnection;
use super::RedisSettler;
use super::{now_score, Inner};
use crate::backoff::Backoff;
use crate::consumer::{Consumer, Feed};
use crate::delivery::Delivery;
use crate::error::BrokerError;
use crate::window::Window;

/// Starts a consumer's fetch and sweep tasks.
pub(crate) fn start(inner: Arc<Inner>, queues: &[String], prefetch: usize) -> Consumer {
    let options = &inner.options;
    let window = Arc::new(Window::new(queues, prefetch, options.max_prefetch, options.queue_order_strategy));
    let (tx, rx) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    // A BRPOP reply is due within brpop_timeout; one overdue by the health check
    // interval means a dead connection (kombu 5.7's maybe_check_brpop_health).
    let slack =
        if options.health_check_interval.is_zero() { Duration::from_secs(5) } else { options.health_check_interval };
    let brpop = SharedConnection::new(inner.connector.clone(), Some(options.brpop_timeout + slack));
    let journal = format!("{}celeriac.pop.{}", inner.keys.prefix(), uuid::Uuid::new_v4().simple());
    let settler: crate::transport::Settler = Arc::new(RedisSettler(inner.clone()));
    let fetcher = Fetcher {
        inner: inner.clone(),
        settler: settler.clone(),
        window: window.clone(),
        tx,
        stop: stop.clone(),
        brpop,
        journal,
        pops: AtomicU64::new(0),
        unsure: std::sync::Mutex::new(None),
    };
    let fetch = tokio::spawn(fetcher.run());
    let sweep = tokio::spawn(sweep(inner.clone(), stop.clone()));
    Consumer::new(window, rx, stop, vec![fetch, sweep], settler)
}

/// Runs the visibility sweep at start and then every `restore_visible_every`.
async fn sweep(inner: Arc<Inner>, stop: CancellationToken) {
    let every = inner.options.restore_visible_every().max(Duration::from_millis(10));
    loop {
        if let Err(e) = inner.restore_visible().await {
            tracing::warn!(error = %e, "visibility sweep failed; will try again");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// One popped element.
struct Popped {
    queue: String,
    /// The list it came from (prefixed), to give it back if its queue was cancelled.
    list: String,
    raw: Vec<u8>,
    /// The delivery tag it was recorded under, or empty if the script could not read it.
    tag: String,
}

struct Fetcher {
    inner: Arc<Inner>,
    /// What its deliveries settle through.
    settler: crate::transport::Settler,
    window: Arc<Window>,
    tx: Feed,
    stop: CancellationToken,
    brpop: SharedConnection,
    /// This consumer's pop journal (see `POP` and `RECOVER` in `scripts`).
    journal: String,
    /// Pops run, for their ids.
    pops: AtomicU64,
    /// A pop whose reply was lost: its id and score, to put its batch back
    /// before popping again.
    unsure: std::sync::Mutex<Option<(String, String)>>,
}

impl Fetcher {
    async fn run(self) {
        let mut backoff = self.inner.backoff();
        let batch = self.inner.options.fetch_batch;
        loop {
            if self.stop.is_cancelled() || self.tx.is_closed() {
                break;
            }
            let room = self.window.room(batch);
            let order = self.window.order();
            if room == 0 || order.is_empty() {
                tokio::select! {
                    _ = self.window.changed.notified() => {}
                    _ = self.stop.cancelled() => break,
                    _ = self.tx.closed() => break,
                }
                continue;
            }
            if let Err(e) = self.recover().await {
                if !self.pause(e, &mut backoff).await {
                    break;
                }
                continue;
            }
            match self.pop(&order, room).await {
                Ok(0) => {}
                Ok(_) => {
                    backoff.reset();
                    continue;
                }
                Err(e) => {
                    if !self.pause(e, &mut backoff).await {
                        break;
                    }
                    continue;
                }
            }
            match self.brpop(&order).await {
                Ok(()) => backoff.reset(),
                Err(e) => {
                    if !self.pause(e, &mut backoff).await {
                        break;
                    }
                }
            }
        }
        tracing::debug!("consumer fetch task stopped");
    }

    /// Waits out a failure; false if the consumer stopped meanwhile.
    async fn pause(&self, error: BrokerError, backoff: &mut Backoff) -> bool {
        let delay = backoff.next_delay();
        if error.is_transient() {
            self.inner.connector.note_reconnect();
            tracing::warn!(url = self.inner.connector.url(), error = %error, retry_in = ?delay, "consumer lost its Redis connection; reconnecting");
        } else {
            tracing::error!(url = self.inner.connector.url(), error = %error, retry_in = ?delay, "consumer cannot fetch from Redis");
            let _ = self.tx.send(Err(error));
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = self.stop.cancelled() => false,
        }
    }

    fn record_keys(&self) -> [&str; 2] {
        [self.inner.keys.unacked(), self.inner.keys.unacked_index()]
    }

    /// Runs the pop script for up to `room` messages; returns how many it took.
    async fn pop(&self, order: &[String], room: usize) -> Result<usize, BrokerError> {
        let keys = &self.inner.keys;
        let score = now_score();
        let key_refs = self.record_keys();
        let suffixes: Vec<String> = keys.steps().iter().map(|s| keys.step_suffix(*s)).collect();
        let bases: Vec<String> = order.iter().map(|q| format!("{}{q}", keys.prefix())).collect();
        let (room_s, nsteps) = (room.to_string(), suffixes.len().to_string());
        let pop_id = self.pops.fetch_add(1, Ordering::Relaxed).to_string();
        let journal_ms = self.inner.options.visibility_timeout.as_millis().clamp(1000, 1 << 40).to_string();
        let max_bytes = self.max_element().to_string();
        let mut args: Vec<&[u8]> = vec![
            room_s.as_bytes(),
            score.as_bytes(),
            if self.window.rotates() { b"1" } else { b"0" },
            nsteps.as_bytes(),
            pop_id.as_bytes(),
            journal_ms.as_bytes(),
            max_bytes.as_bytes(),
        ];
        args.extend(suffixes.iter().map(|s| s.as_bytes()));
        args.extend(bases.iter().map(|s| s.as_bytes()));
        let dead_letter = self.dead_letter_key();
        let script_keys = [key_refs[0], key_refs[1], self.journal.as_str(), dead_letter.as_str()];
        let reply: Vec<redis::Value> = match self.inner.eval("pop", &self.inner.scripts.pop, &script_keys, &args).await
        {
            Ok(reply) => reply,
            Err(e) => {
                if e.is_transient() {
                    // The script may have run with its reply lost: its batch
                    // is put back before the next pop.
                    *self.unsure.lock().unwrap_or_else(|p| p.into_inner()) = Some((pop_id, score));
                }
                return Err(e);
            }
        };
        let mut popped = 0;
        for item in reply.chunks(4) {
            let [qi, si, raw, tag] = item else { continue };
            let (Some(qi), Some(si)) = (as_index(qi), as_index(si)) else { continue };
            let (Some(queue), Some(step)) = (order.get(qi), keys.steps().get(si)) else { continue };
            popped += 1;
            self.window.rotate(queue);
            if as_bytes(tag) == b"!" {
                // Too large to read: the script moved it to the dead-letter list.
                self.too_large(queue);
                continue;
            }
            let element = Popped {
                queue: queue.clone(),
                list: keys.queue_key(queue, *step),
                raw: as_bytes(raw),
                tag: String::from_utf8_lossy(&as_bytes(tag)).into_owned(),
            };
            self.deliver(element, &score).await;
        }
        Ok(popped)
    }

    /// The longest list element read: one that can hold a body of
    /// `max_message_size` in kombu's envelope.
    fn max_element(&self) -> usize {
        celeriac_protocol::limits::DecodeLimits::new(
            celeriac_protocol::limits::Accept::any(),
            self.inner.options.max_message_size,
        )
        .max_envelope_bytes()
    }

    /// The dead-letter list's key, or '' without one.
    fn dead_letter_key(&self) -> String {
        self.inner.options.deadletter_queue.as_deref().map(|dl| self.inner.keys.queue_key(dl, 0)).unwrap_or_default()
    }

    /// Reports an element the pop script parked in the dead-letter list
    /// unread because it was too large.
    fn too_large(&self, queue: &str) {
        let limit = self.max_element();
        tracing::error!(queue, limit, "a message larger than the limit was moved to the dead-letter queue unread");
        let reason = format!("body_too_large: the list element is over {limit} bytes (worker_max_message_size)");
        let _ = self.tx.send(Err(BrokerError::Undecodable {
            queue: queue.to_owned(),
            kind: "body_too_large",
            reason,
            raw: Vec::new(),
            dead_lettered: true,
        }));
    }

    /// Puts back the batch of the last pop if its reply was lost (see
    /// `RECOVER`); an error leaves that for the next call.
    async fn recover(&self) -> Result<(), BrokerError> {
        let Some((pop_id, score)) = self.unsure.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            return Ok(());
        };
        let keys = [self.journal.as_str(), self.inner.keys.unacked(), self.inner.keys.unacked_index()];
        let args: [&[u8]; 2] = [pop_id.as_bytes(), score.as_bytes()];
        let restored: i64 = self.inner.eval("recover a lost pop", &self.inner.scripts.recover, &keys, &args).await?;
        *self.unsure.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if restored > 0 {
            tracing::warn!(restored, "the reply to a pop was lost; its messages were put back on their queues");
        }
        Ok(())
    }

    /// Waits for a message with `BRPOP`; records and delivers it.
    async fn brpop(&self, order: &[String]) -> Result<(), BrokerError> {
        let keys = &self.inner.keys;
        let mut lists: Vec<String> = Vec::new();
        let mut by_list: HashMap<Vec<u8>, (String, String)> = HashMap::new();
        for step in keys.steps() {
            for queue in order {
                let list = keys.queue_key(queue, *step);
                by_list.insert(list.clone().into_bytes(), (queue.clone(), list.clone()));
                lists.push(list);
            }
        }
        let timeout = self.inner.options.brpop_timeout;
        let timeout_arg = if timeout.subsec_nanos() == 0 {
            timeout.as_secs().to_string()
        } else {
            format!("{:.3}", timeout.as_secs_f64())
        };
        let reply: Option<(Vec<u8>, Vec<u8>)> = self
            .brpop
            .run("BRPOP", |mut conn| {
                let (lists, timeout_arg) = (&lists, &timeout_arg);
                async move { redis::cmd("BRPOP").arg(lists).arg(timeout_arg).query_async(&mut conn).await }
            })
            .await?;
        let Some((list, raw)) = reply else { return Ok(()) };
        let Some((queue, list)) = by_list.remove(&list) else {
            tracing::error!(list = %String::from_utf8_lossy(&list), "BRPOP answered with a list we did not ask for; pushing the message back");
            let _ = self.give_back_raw(&String::from_utf8_lossy(&list), &raw).await;
            return Ok(());
        };
        self.window.rotate(&queue);
        let score = now_score();
        if raw.len() > self.max_element() && self.inner.options.deadletter_queue.is_some() {
            // Not sent back to Redis to be parsed there: parked as it is.
            let p = Popped { queue, list, raw, tag: String::new() };
            let limit = self.max_element();
            let reason = format!("body_too_large: the list element is over {limit} bytes (worker_max_message_size)");
            self.undecodable(p, "body_too_large", reason, &score).await;
            return Ok(());
        }
        let tag = self.track(&raw, &score).await;
        self.deliver(Popped { queue, list, raw, tag }, &score).await;
        Ok(())
    }

    /// Records a `BRPOP`ped element in `unacked`; retried until it works, since
    /// the element exists only here now.
    async fn track(&self, raw: &[u8], score: &str) -> String {
        let keys = self.record_keys();
        let args: [&[u8]; 2] = [score.as_bytes(), raw];
        let tag = self
            .until_recorded(raw, || self.inner.eval::<Vec<u8>>("track", &self.inner.scripts.track, &keys, &args))
            .await;
        tag.map(|t| String::from_utf8_lossy(&t).into_owned()).unwrap_or_default()
    }

    /// Records an element the script could not read but celeriac can.
    async fn record(&self, envelope: &Envelope, raw: &[u8], score: &str) -> bool {
        let Ok(value) = envelope.to_unacked_json() else { return false };
        let keys = self.record_keys();
        let args: [&[u8]; 3] = [envelope.delivery_tag.as_bytes(), score.as_bytes(), value.as_bytes()];
        self.until_recorded(raw, || self.inner.eval::<i64>("record", &self.inner.scripts.record, &keys, &args))
            .await
            .is_some()
    }

    /// Retries `f` until it works; after the consumer was told to stop, gives up
    /// after a few more attempts (the message, held only here, is then lost and logged).
    async fn until_recorded<T, F, Fut>(&self, raw: &[u8], mut f: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, BrokerError>>,
    {
        let mut backoff = self.inner.backoff();
        let mut after_stop = 0;
        loop {
            match f().await {
                Ok(v) => return Some(v),
                Err(e) => {
                    if self.stop.is_cancelled() {
                        after_stop += 1;
                        if after_stop > 5 {
                            tracing::error!(error = %e, message = %String::from_utf8_lossy(raw), "consumer stopped while Redis is unreachable: a received message could not be recorded and is lost");
                            return None;
                        }
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?delay, "could not record a received message in unacked; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn give_back_raw(&self, list: &str, raw: &[u8]) -> Result<(), BrokerError> {
        let keys = [self.inner.keys.unacked(), self.inner.keys.unacked_index(), list];
        let args: [&[u8]; 2] = [b"", raw];
        self.inner.eval::<i64>("give back", &self.inner.scripts.give_back, &keys, &args).await.map(drop)
    }

    /// Turns a popped element into a delivery and hands it over.
    async fn deliver(&self, mut p: Popped, score: &str) {
        if !self.window.is_active(&p.queue) {
            // Popped while its queue was being cancelled: undo the pop.
            let keys = [self.inner.keys.unacked(), self.inner.keys.unacked_index(), p.list.as_str()];
            let args: [&[u8]; 3] = [p.tag.as_bytes(), &p.raw, score.as_bytes()];
            let result = self
                .inner
                .retrying(
                    "giving back a message of a cancelled queue",
                    super::RetryLimit::For(self.inner.options.settle_timeout),
                    || self.inner.eval::<i64>("give back", &self.inner.scripts.give_back, &keys, &args),
                )
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, delivery_tag = %p.tag, "could not give back a message of a cancelled queue; it stays unacked until the visibility timeout");
            }
            return;
        }
        let limits = celeriac_protocol::limits::DecodeLimits::new(
            celeriac_protocol::limits::Accept::any(),
            self.inner.options.max_message_size,
        );
        let envelope = match Envelope::from_slice_with(&p.raw, &limits) {
            Ok(envelope) if !envelope.delivery_tag.is_empty() => envelope,
            Ok(_) => {
                let reason = "malformed_envelope: no properties.delivery_tag".into();
                return self.undecodable(p, "malformed_envelope", reason, score).await;
            }
            Err(e) => return self.undecodable(p, e.kind().as_str(), e.reason(), score).await,
        };
        if p.tag.is_empty() {
            // Valid for Python's json but not for Lua's decoder (NaN, huge numbers...).
            if !self.record(&envelope, &p.raw, score).await {
                return;
            }
            p.tag = envelope.delivery_tag.clone();
        } else {
            self.make_canonical(&envelope, &p, score).await;
        }
        let seq = self.window.hold(&p.tag, Some(score.to_owned()));
        let delivery = Delivery::new(envelope, p.queue, self.settler.clone(), self.window.clone(), seq);
        if self.tx.send(Ok(delivery)).is_err() {
            tracing::debug!("consumer gone; the message stays unacked");
        }
    }

    /// Reports an element that is not a kombu envelope, after moving it to the
    /// dead-letter queue if one is configured. Otherwise a recorded one stays in
    /// `unacked`, and one that was not recorded exists only in the error (kombu
    /// loses such elements too).
    async fn undecodable(&self, p: Popped, kind: &'static str, reason: String, score: &str) {
        let dead_lettered = match &self.inner.options.deadletter_queue {
            None => false,
            Some(dl) => {
                let dl_key = self.inner.keys.queue_key(dl, 0);
                let keys = [self.inner.keys.unacked(), self.inner.keys.unacked_index(), dl_key.as_str()];
                let args: [&[u8]; 3] = [p.tag.as_bytes(), &p.raw, score.as_bytes()];
                let limit = super::RetryLimit::For(self.inner.options.settle_timeout);
                let moved = self
                    .inner
                    .retrying("dead-lettering", limit, || {
                        self.inner.eval::<i64>("dead-letter", &self.inner.scripts.dead_letter, &keys, &args)
                    })
                    .await;
                matches!(moved, Ok(1))
            }
        };
        tracing::error!(queue = %p.queue, delivery_tag = %p.tag, reason = %reason, dead_lettered, "undecodable message");
        let _ = self.tx.send(Err(BrokerError::Undecodable { queue: p.queue, kind, reason, raw: p.raw, dead_lettered }));
    }

    /// kombu stores `json.dumps([message, exchange, routing_key])` of the parsed
    /// message; the pop script stores the element text as it was. They differ
    /// only when a producer wrote JSON in another layout: then store kombu's.
    async fn make_canonical(&self, envelope: &Envelope, p: &Popped, score: &str) {
        let Ok(canonical) = envelope.to_json() else { return };
        if canonical.as_bytes() == p.raw.as_slice() {
            return;
        }
        let Ok(value) = envelope.to_unacked_json() else { return };
        let keys = [self.inner.keys.unacked(), self.inner.keys.unacked_index()];
        let args: [&[u8]; 3] = [p.tag.as_bytes(), value.as_bytes(), score.as_bytes()];
        if let Err(e) = self.inner.eval::<i64>("fix unacked", &self.inner.scripts.fix_value, &keys, &args).await {
            tracing::warn!(error = %e, delivery_tag = %p.tag, "could not rewrite an unacked entry in kombu's layout");
        }
    }
}

fn as_index(v: &redis::Value) -> Option<usize> {
    match v {
        redis::Value::Int(i) => usize::try_from(*i).ok(),
        _ => None,
    }
}

fn as_bytes(v: &redis::Value) -> Vec<u8> {
    match v {
        redis::Value::BulkString(b) => b.clone(),
        redis::Value::SimpleString(s) => s.clone().into_bytes(),
        _ => Vec::new(),
    }
}

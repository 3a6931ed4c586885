//! An in-memory broker with the Redis transport's semantics, for unit tests of
//! code above the broker (the worker): same envelopes, priority sub-queues,
//! bindings, queue order, prefetch window, ack/reject/requeue/restore and
//! fanout subscriptions, without a server. It keeps what Redis would keep
//! (lists of envelope JSON, an `unacked` map with delivery times) in a mutex,
//! so behaviour matches, but nothing survives the process.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use celeriac_protocol::{Envelope, Message};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::consumer::{Consumer, Feed};
use crate::delivery::Delivery;
use crate::error::BrokerError;
use crate::exchange::{self, ExchangeKind, ExchangeRegistry};
use crate::keys::KeySpace;
use crate::now_secs;
use crate::options::RedisOptions;
use crate::subscription::{FanoutMessage, Subscription, SUBSCRIPTION_BUFFER};
use crate::topic;
use crate::transport::{BrokerFuture, Settle, Settler, Transport};
use crate::window::{Held, Window};

type Subscriber = (String, mpsc::Sender<Result<FanoutMessage, BrokerError>>);

#[derive(Default)]
struct State {
    lists: HashMap<String, VecDeque<String>>,
    bindings: HashMap<String, BTreeSet<String>>,
    /// tag → (`[envelope, exchange, routing_key]` JSON, delivery time).
    unacked: HashMap<String, (String, f64)>,
    subscribers: Vec<Subscriber>,
}

struct MemInner {
    options: RedisOptions,
    keys: KeySpace,
    registry: ExchangeRegistry,
    state: Mutex<State>,
    pushed: watch::Sender<u64>,
}

/// The in-memory broker (see the module docs); clones share the same state.
#[derive(Clone)]
pub struct MemoryBroker {
    inner: Arc<MemInner>,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker").finish_non_exhaustive()
    }
}

impl Default for MemoryBroker {
    fn default() -> Self {
        MemoryBroker::new(RedisOptions::default())
    }
}

impl MemoryBroker {
    /// A broker using the transport options of `options` (priority steps,
    /// queue order, visibility timeout, dead-letter queue, ...); connection
    /// options are ignored.
    pub fn new(options: RedisOptions) -> MemoryBroker {
        let (pushed, _) = watch::channel(0);
        MemoryBroker {
            inner: Arc::new(MemInner {
                keys: KeySpace::new(&options),
                options,
                registry: ExchangeRegistry::default(),
                state: Mutex::new(State::default()),
                pushed,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(&self) {
        self.inner.pushed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Records an exchange's type.
    pub fn declare_exchange(&self, name: &str, kind: ExchangeKind) {
        self.inner.registry.declare(name, kind);
    }

    /// Binds `queue` to `exchange` with `routing_key` (kombu's member format).
    pub fn declare_queue(&self, queue: &str, exchange: &str, routing_key: &str) {
        if exchange.is_empty() {
            return;
        }
        let pattern = match self.inner.registry.kind_of(exchange) {
            ExchangeKind::Topic => topic::key_to_pattern(routing_key),
            _ => String::new(),
        };
        let member = self.inner.keys.binding_member(routing_key, &pattern, queue);
        self.lock().bindings.entry(self.inner.keys.binding_key(exchange)).or_default().insert(member);
    }

    /// Removes `queue`'s lists and every binding naming it.
    pub fn delete_queue(&self, queue: &str) {
        let mut s = self.lock();
        for key in self.inner.keys.queue_keys(queue) {
            s.lists.remove(&key);
        }
        for members in s.bindings.values_mut() {
            members.retain(|m| self.inner.keys.parse_binding_member(m).is_none_or(|(_, _, q)| q != queue));
        }
    }

    /// Messages waiting in `queue`.
    pub fn queue_len(&self, queue: &str) -> u64 {
        let s = self.lock();
        self.inner.keys.queue_keys(queue).iter().map(|k| s.lists.get(k).map_or(0, VecDeque::len) as u64).sum()
    }

    /// Empties `queue`; returns how many messages were removed.
    pub fn purge(&self, queue: &str) -> u64 {
        let mut s = self.lock();
        self.inner.keys.queue_keys(queue).iter().map(|k| s.lists.remove(k).map_or(0, |l| l.len() as u64)).sum()
    }

    /// Entries of the `unacked` map.
    pub fn unacked_len(&self) -> u64 {
        self.lock().unacked.len() as u64
    }

    /// The raw list elements of `queue` at priority `step`, left to right (as `LRANGE 0 -1`).
    pub fn list(&self, queue: &str, step: u8) -> Vec<String> {
        let key = self.inner.keys.queue_key(queue, step);
        self.lock().lists.get(&key).map(|l| l.iter().cloned().collect()).unwrap_or_default()
    }

    /// The queues bound to `exchange` that `routing_key` reaches, without the
    /// dead-letter fallback.
    pub fn bound_queues(&self, exchange: &str, routing_key: &str) -> Vec<String> {
        let s = self.lock();
        self.lookup_with(&s, exchange, routing_key, true, None)
    }

    fn lookup(&self, s: &State, exchange: &str, routing_key: &str, deliver: bool) -> Vec<String> {
        self.lookup_with(s, exchange, routing_key, deliver, self.inner.options.deadletter_queue.as_deref())
    }

    fn lookup_with(
        &self,
        s: &State,
        exchange: &str,
        routing_key: &str,
        deliver: bool,
        deadletter: Option<&str>,
    ) -> Vec<String> {
        if exchange.is_empty() {
            return exchange::route_anonymous(routing_key, deadletter);
        }
        let kind = self.inner.registry.kind_of(exchange);
        let bindings = s
            .bindings
            .get(&self.inner.keys.binding_key(exchange))
            .into_iter()
            .flatten()
            .filter_map(|m| self.inner.keys.parse_binding_member(m));
        exchange::route(kind, bindings, routing_key, deadletter, deliver)
    }

    /// Publishes as the Redis transport does (see [`crate::RedisBroker::publish`]).
    pub fn publish(&self, exchange: &str, routing_key: &str, message: &Message) -> Result<(), BrokerError> {
        let mut envelope = Envelope::new(message.clone(), exchange, routing_key);
        envelope.body_encoding = self.inner.options.body_encoding.clone();
        let payload = envelope.to_json()?;
        let mut s = self.lock();
        if !exchange.is_empty() && self.inner.registry.kind_of(exchange) == ExchangeKind::Fanout {
            let channel = self.inner.keys.fanout_publish_channel(exchange, routing_key);
            let (ex, rk) = self.inner.keys.parse_fanout_channel(&channel);
            let msg = FanoutMessage {
                exchange: ex.to_owned(),
                routing_key: rk.map(str::to_owned),
                channel: channel.strip_prefix(self.inner.keys.prefix()).unwrap_or(&channel).to_owned(),
                envelope,
            };
            s.subscribers.retain(|(pattern, tx)| {
                // A full subscriber misses the message (pub/sub is lossy); a closed one is dropped.
                !glob_matches(pattern, &channel)
                    || !matches!(tx.try_send(Ok(msg.clone())), Err(mpsc::error::TrySendError::Closed(_)))
            });
            return Ok(());
        }
        if exchange.is_empty() && routing_key.is_empty() {
            return Err(BrokerError::NoRoutingKey);
        }
        let queues = self.lookup(&s, exchange, routing_key, true);
        if queues.is_empty() {
            tracing::warn!(exchange, routing_key, "message has no route; dropped as kombu does");
        }
        for q in queues {
            let key = self.inner.keys.queue_key_for_priority(&q, message.priority);
            s.lists.entry(key).or_default().push_front(payload.clone());
        }
        drop(s);
        self.wake();
        Ok(())
    }

    /// Subscribes to a fanout exchange (Redis glob matching of the channel).
    pub fn subscribe(&self, exchange: &str, binding_key: &str) -> Subscription {
        let pattern = self.inner.keys.fanout_subscribe_pattern(exchange, binding_key);
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_BUFFER);
        self.lock().subscribers.push((pattern.clone(), tx));
        Subscription::new(rx, pattern, CancellationToken::new().drop_guard())
    }

    /// A consumer of `queues` (see [`crate::RedisBroker::consumer`]); call it
    /// from within a Tokio runtime.
    pub fn consumer(&self, queues: &[String], prefetch: usize) -> Consumer {
        let o = &self.inner.options;
        let window = Arc::new(Window::new(queues, prefetch, o.max_prefetch, o.queue_order_strategy));
        let (tx, rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let settler: Settler = Arc::new(MemorySettler(self.clone()));
        let task = tokio::spawn(self.clone().fetch(window.clone(), tx, stop.clone(), settler.clone()));
        Consumer::new(window, rx, stop, vec![task], settler)
    }

    async fn fetch(self, window: Arc<Window>, tx: Feed, stop: CancellationToken, settler: Settler) {
        let mut pushed = self.inner.pushed.subscribe();
        loop {
            if stop.is_cancelled() || tx.is_closed() {
                return;
            }
            pushed.mark_unchanged();
            let room = window.room(self.inner.options.fetch_batch);
            let mut got = 0;
            if room > 0 {
                for (queue, raw, tag) in self.pop(&window, room) {
                    got += 1;
                    match Envelope::from_slice(raw.as_bytes()) {
                        Ok(envelope) => {
                            let seq = window.hold(&tag, None);
                            let d = Delivery::new(envelope, queue, settler.clone(), window.clone(), seq);
                            let _ = tx.send(Ok(d));
                        }
                        Err(e) => {
                            let _ = tx.send(Err(BrokerError::Undecodable {
                                queue,
                                kind: e.kind().as_str(),
                                reason: e.reason(),
                                raw: raw.into_bytes(),
                                dead_lettered: false,
                            }));
                        }
                    }
                }
            }
            if got > 0 {
                continue;
            }
            tokio::select! {
                _ = pushed.changed() => {}
                _ = window.changed.notified() => {}
                _ = stop.cancelled() => return,
                _ = tx.closed() => return,
            }
        }
    }

    /// Pops up to `room` messages in kombu's order and records them as unacked.
    fn pop(&self, window: &Window, room: usize) -> Vec<(String, String, String)> {
        let keys = &self.inner.keys;
        let mut s = self.lock();
        let mut out = Vec::new();
        'outer: while out.len() < room {
            let order = window.order();
            for step in keys.steps() {
                for queue in &order {
                    let key = keys.queue_key(queue, *step);
                    let Some(raw) = s.lists.get_mut(&key).and_then(VecDeque::pop_back) else { continue };
                    window.rotate(queue);
                    let tag = match Envelope::from_slice(raw.as_bytes()) {
                        Ok(env) => {
                            let value = env.to_unacked_json().unwrap_or_default();
                            s.unacked.insert(env.delivery_tag.clone(), (value, now_secs()));
                            env.delivery_tag
                        }
                        Err(_) => String::new(),
                    };
                    out.push((queue.clone(), raw, tag));
                    continue 'outer;
                }
            }
            break;
        }
        out
    }

    pub(crate) fn ack_held(&self, held: &Held) {
        self.lock().unacked.remove(&held.tag);
    }

    pub(crate) fn extend_held(&self, held: &Held) {
        if let Some(entry) = self.lock().unacked.get_mut(&held.tag) {
            entry.1 = now_secs();
        }
    }

    /// Moves one unacked message back to its queue(s), `redelivered` set
    /// (`LPUSH` with `leftmost`, else `RPUSH`). Returns whether it moved.
    fn restore_tag(&self, tag: &str, leftmost: bool) -> bool {
        let mut s = self.lock();
        let Some((value, _)) = s.unacked.get(tag).cloned() else { return false };
        let Ok((mut env, exchange, routing_key)) = Envelope::from_unacked_slice(value.as_bytes()) else {
            return false;
        };
        env.mark_redelivered();
        let Ok(payload) = env.to_json() else { return false };
        let queues = self.lookup(&s, &exchange, &routing_key, false);
        if queues.is_empty() {
            return false;
        }
        s.unacked.remove(tag);
        for q in queues {
            let list = s.lists.entry(self.inner.keys.queue_key_for_priority(&q, env.message.priority)).or_default();
            if leftmost {
                list.push_front(payload.clone());
            } else {
                list.push_back(payload.clone());
            }
        }
        drop(s);
        self.wake();
        true
    }

    pub(crate) fn requeue_held(&self, held: &Held) {
        self.restore_tag(&held.tag, true);
    }

    pub(crate) fn restore_all(&self, held: &[(u64, Held)]) -> usize {
        held.iter().filter(|(_, h)| self.restore_tag(&h.tag, false)).count()
    }

    /// Restores messages unacked for longer than the visibility timeout.
    pub fn restore_visible(&self) -> usize {
        let ceil = now_secs() - self.inner.options.visibility_timeout.as_secs_f64();
        let mut due: Vec<(String, f64)> =
            self.lock().unacked.iter().filter(|(_, (_, t))| *t <= ceil).map(|(k, (_, t))| (k.clone(), *t)).collect();
        due.sort_by(|a, b| b.1.total_cmp(&a.1));
        due.iter().filter(|(tag, _)| self.restore_tag(tag, false)).count()
    }
}

/// Settles the in-memory broker's deliveries.
#[derive(Debug)]
struct MemorySettler(MemoryBroker);

impl Settle for MemorySettler {
    fn ack<'a>(&'a self, held: &'a Held) -> BrokerFuture<'a, ()> {
        self.0.ack_held(held);
        Box::pin(async { Ok(()) })
    }

    fn reject<'a>(&'a self, held: &'a Held) -> BrokerFuture<'a, ()> {
        self.0.ack_held(held);
        Box::pin(async { Ok(()) })
    }

    fn requeue<'a>(&'a self, held: &'a Held) -> BrokerFuture<'a, ()> {
        self.0.requeue_held(held);
        Box::pin(async { Ok(()) })
    }

    fn extend<'a>(&'a self, _window: &'a Window, _seq: u64, held: &'a Held) -> BrokerFuture<'a, ()> {
        self.0.extend_held(held);
        Box::pin(async { Ok(()) })
    }

    fn restore_all<'a>(&'a self, held: &'a [(u64, Held)]) -> BrokerFuture<'a, usize> {
        let restored = self.0.restore_all(held);
        Box::pin(async move { Ok(restored) })
    }
}

impl Transport for MemoryBroker {
    fn masked_url(&self) -> String {
        "memory://".to_owned()
    }

    fn declare_exchange(&self, name: &str, kind: ExchangeKind) {
        MemoryBroker::declare_exchange(self, name, kind);
    }

    fn declare_queue<'a>(&'a self, queue: &'a str, exchange: &'a str, routing_key: &'a str) -> BrokerFuture<'a, ()> {
        MemoryBroker::declare_queue(self, queue, exchange, routing_key);
        Box::pin(async { Ok(()) })
    }

    fn publish<'a>(&'a self, exchange: &'a str, routing_key: &'a str, message: &'a Message) -> BrokerFuture<'a, ()> {
        let result = MemoryBroker::publish(self, exchange, routing_key, message);
        Box::pin(async { result })
    }

    fn bound_queues<'a>(&'a self, exchange: &'a str, routing_key: &'a str) -> BrokerFuture<'a, Vec<String>> {
        let queues = MemoryBroker::bound_queues(self, exchange, routing_key);
        Box::pin(async { Ok(queues) })
    }

    fn queue_len<'a>(&'a self, queue: &'a str) -> BrokerFuture<'a, u64> {
        let n = MemoryBroker::queue_len(self, queue);
        Box::pin(async move { Ok(n) })
    }

    fn purge<'a>(&'a self, queue: &'a str) -> BrokerFuture<'a, u64> {
        let n = MemoryBroker::purge(self, queue);
        Box::pin(async move { Ok(n) })
    }

    fn delete_queue<'a>(&'a self, queue: &'a str) -> BrokerFuture<'a, ()> {
        MemoryBroker::delete_queue(self, queue);
        Box::pin(async { Ok(()) })
    }

    fn consumer(&self, queues: &[String], prefetch: usize) -> Consumer {
        MemoryBroker::consumer(self, queues, prefetch)
    }

    fn subscribe<'a>(&'a self, exchange: &'a str, binding_key: &'a str) -> BrokerFuture<'a, Subscription> {
        let subscription = MemoryBroker::subscribe(self, exchange, binding_key);
        Box::pin(async { Ok(subscription) })
    }

    fn restore_visible(&self) -> BrokerFuture<'_, usize> {
        let n = MemoryBroker::restore_visible(self);
        Box::pin(async move { Ok(n) })
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Redis `PSUBSCRIBE` glob matching for the patterns kombu uses (`*`, `?`, literals).
fn glob_matches(pattern: &str, text: &str) -> bool {
    fn go(p: &[char], t: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('*', rest)) => (0..=t.len()).any(|n| go(rest, &t[n..])),
            Some(('?', rest)) => !t.is_empty() && go(rest, &t[1..]),
            Some((c, rest)) => t.first() == Some(c) && go(rest, &t[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    go(&p, &t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use celeriac_protocol::Map;

    fn msg(body: &str, priority: u8) -> Message {
        Message {
            headers: Map::new(),
            properties: Map::new(),
            priority,
            content_type: "application/json".into(),
            content_encoding: "utf-8".into(),
            body: body.as_bytes().to_vec(),
        }
    }

    fn body(d: &Delivery) -> String {
        String::from_utf8(d.message().body.clone()).unwrap()
    }

    #[tokio::test]
    async fn priorities_order_and_ack() {
        let b = MemoryBroker::default();
        b.publish("", "q", &msg("low", 9)).unwrap();
        b.publish("", "q", &msg("first", 0)).unwrap();
        b.publish("", "q", &msg("second", 0)).unwrap();
        assert_eq!(b.queue_len("q"), 3);
        assert_eq!(b.list("q", 9).len(), 1);
        let mut c = b.consumer(&["q".to_string()], 0);
        let mut got = Vec::new();
        for _ in 0..3 {
            let mut d = c.next().await.unwrap().unwrap();
            got.push(body(&d));
            d.ack().await.unwrap();
            d.ack().await.unwrap();
            assert!(d.reject().await.is_err(), "a settled delivery cannot be settled differently");
        }
        assert_eq!(got, ["first", "second", "low"]);
        assert_eq!(b.unacked_len(), 0);
    }

    #[tokio::test]
    async fn prefetch_requeue_and_restore() {
        let b = MemoryBroker::default();
        for i in 0..3 {
            b.publish("", "q", &msg(&i.to_string(), 0)).unwrap();
        }
        let mut c = b.consumer(&["q".to_string()], 2);
        let mut d0 = c.next().await.unwrap().unwrap();
        let mut d1 = c.next().await.unwrap().unwrap();
        assert_eq!((body(&d0), body(&d1)), ("0".into(), "1".into()));
        assert_eq!(c.in_flight(), 2);
        assert_eq!(b.queue_len("q"), 1, "prefetch 2 leaves the third message in the queue");
        d0.requeue().await.unwrap();
        // The requeued message goes to the far end (LPUSH): "2" comes first.
        let d2 = c.next().await.unwrap().unwrap();
        assert_eq!(body(&d2), "2");
        d1.ack().await.unwrap();
        let d3 = c.next().await.unwrap().unwrap();
        assert_eq!(body(&d3), "0");
        assert!(d3.redelivered());
        assert_eq!(b.unacked_len(), 2);
        assert_eq!(c.restore_unacked().await.unwrap(), 2);
        assert!(c.next().await.is_none());
        assert_eq!(b.unacked_len(), 0);
        assert_eq!(b.queue_len("q"), 2);
        drop((d2, d3));
    }

    #[tokio::test]
    async fn topic_and_fanout_routing() {
        let b = MemoryBroker::default();
        b.declare_exchange("ev", ExchangeKind::Topic);
        b.declare_queue("workers", "ev", "worker.#");
        b.publish("ev", "worker.online", &msg("w", 0)).unwrap();
        b.publish("ev", "task.sent", &msg("t", 0)).unwrap();
        assert_eq!(b.queue_len("workers"), 1);
        b.declare_exchange("bc", ExchangeKind::Fanout);
        let mut sub = b.subscribe("bc", "#");
        b.publish("bc", "x.y", &msg("hello", 0)).unwrap();
        let m = sub.next().await.unwrap().unwrap();
        assert_eq!((m.exchange.as_str(), m.routing_key.as_deref()), ("bc", Some("x.y")));
        assert_eq!(m.envelope.message.body, b"hello");
        assert!(glob_matches("/0.celeryev/*", "/0.celeryev/worker.heartbeat"));
        assert!(!glob_matches("/0.celeryev/worker.*", "/0.celeryev/task.sent"));
    }
}

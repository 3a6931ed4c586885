//! A consumer's prefetch window: which queues it reads, in what order, and the
//! deliveries it holds (handed out, not yet settled).
//!
//! This is kombu's `QoS` (`can_consume`: held < prefetch_count, 0 = unlimited)
//! plus its queue cycle (`round_robin_cycle`, `sorted_cycle`, `priority_cycle`).
//! The fetch task reads it to decide how much to pop and in which order;
//! deliveries release their slot when settled.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::options::QueueOrderStrategy;

/// One held delivery.
#[derive(Clone, Debug)]
pub(crate) struct Held {
    /// The delivery tag.
    pub tag: String,
    /// The `unacked_index` scores it may carry (the last one written, plus any
    /// whose write had an unknown outcome).
    pub scores: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct WindowState {
    prefetch: usize,
    max_prefetch: Option<usize>,
    queues: Vec<String>,
    cycle: Vec<String>,
    held: HashMap<u64, Held>,
    next_seq: u64,
    restoring: bool,
}

/// The shared window (see the module docs).
#[derive(Debug)]
pub(crate) struct Window {
    state: Mutex<WindowState>,
    strategy: QueueOrderStrategy,
    /// Signalled whenever room opens up or the queues change.
    pub changed: Notify,
    /// Queue names shared by parked deliveries (one per name ever consumed).
    names: Mutex<Vec<Arc<str>>>,
}

impl Window {
    pub fn new(
        queues: &[String],
        prefetch: usize,
        max_prefetch: Option<usize>,
        strategy: QueueOrderStrategy,
    ) -> Window {
        let mut unique: Vec<String> = Vec::new();
        for q in queues {
            if !unique.contains(q) {
                unique.push(q.clone());
            }
        }
        Window {
            state: Mutex::new(WindowState {
                prefetch,
                max_prefetch,
                cycle: unique.clone(),
                queues: unique,
                held: HashMap::new(),
                next_seq: 0,
                restoring: false,
            }),
            strategy,
            changed: Notify::new(),
            names: Mutex::default(),
        }
    }

    /// `queue`'s name as one shared string, so ten thousand parked
    /// deliveries from one queue do not each keep a copy.
    pub fn shared_name(&self, queue: &str) -> Arc<str> {
        let mut names = self.names.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(name) = names.iter().find(|n| ***n == *queue) {
            return name.clone();
        }
        // Names no parked delivery uses any more go (queues come and go
        // with add_consumer/cancel_consumer).
        names.retain(|n| Arc::strong_count(n) > 1);
        let name: Arc<str> = Arc::from(queue);
        names.push(name.clone());
        name
    }

    fn lock(&self) -> MutexGuard<'_, WindowState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How many more deliveries may be fetched now, at most `batch`.
    pub fn room(&self, batch: usize) -> usize {
        let s = self.lock();
        let limit = match (s.prefetch, s.max_prefetch) {
            (0, None) => usize::MAX,
            (0, Some(max)) => max,
            (p, Some(max)) => p.min(max),
            (p, None) => p,
        };
        limit.saturating_sub(s.held.len()).min(batch)
    }

    /// The queues in the order to try them now (kombu's `_queue_cycle.consume`).
    pub fn order(&self) -> Vec<String> {
        let s = self.lock();
        let mut order = s.cycle.clone();
        if self.strategy == QueueOrderStrategy::Sorted {
            order.sort();
        }
        order
    }

    /// Whether queue order rotates after each message.
    pub fn rotates(&self) -> bool {
        self.strategy == QueueOrderStrategy::RoundRobin
    }

    /// Records that a message came from `queue` (`_queue_cycle.rotate`).
    pub fn rotate(&self, queue: &str) {
        if !self.rotates() {
            return;
        }
        let mut s = self.lock();
        if let Some(pos) = s.cycle.iter().position(|q| q == queue) {
            let q = s.cycle.remove(pos);
            s.cycle.push(q);
        }
    }

    /// Whether `queue` is consumed.
    pub fn is_active(&self, queue: &str) -> bool {
        self.lock().queues.iter().any(|q| q == queue)
    }

    /// Starts holding a delivery; returns its sequence number.
    pub fn hold(&self, tag: &str, score: Option<String>) -> u64 {
        let mut s = self.lock();
        s.next_seq += 1;
        let seq = s.next_seq;
        s.held.insert(seq, Held { tag: tag.to_owned(), scores: score.into_iter().collect() });
        seq
    }

    /// Stops holding a delivery (settled); returns what was held.
    pub fn release(&self, seq: u64) -> Option<Held> {
        let held = self.lock().held.remove(&seq);
        if held.is_some() {
            self.changed.notify_one();
        }
        held
    }

    /// The delivery held under `seq`, if still held.
    pub fn held(&self, seq: u64) -> Option<Held> {
        self.lock().held.get(&seq).cloned()
    }

    /// Adds a score a delivery may now carry; with `confirmed`, it becomes the only one.
    pub fn add_score(&self, seq: u64, score: String, confirmed: bool) {
        if let Some(h) = self.lock().held.get_mut(&seq) {
            if confirmed {
                h.scores.clear();
            }
            if !h.scores.contains(&score) {
                h.scores.push(score);
            }
        }
    }

    /// Number of held deliveries.
    pub fn in_flight(&self) -> usize {
        self.lock().held.len()
    }

    /// The prefetch count (0 = unlimited).
    pub fn prefetch(&self) -> usize {
        self.lock().prefetch
    }

    /// Changes the prefetch count (kombu's `basic_qos`).
    pub fn set_prefetch(&self, prefetch: usize) {
        self.lock().prefetch = prefetch;
        self.changed.notify_one();
    }

    /// Raises the prefetch count by one, unless it is 0 (unlimited): Celery's
    /// `qos.increment_eventually`, so a held ETA message does not take a slot
    /// of the window.
    pub fn increment_prefetch(&self) {
        let mut s = self.lock();
        if s.prefetch != 0 {
            s.prefetch += 1;
            drop(s);
            self.changed.notify_one();
        }
    }

    /// Lowers the prefetch count by one, never to 0 (which would mean
    /// unlimited): Celery's `qos.decrement_eventually`.
    pub fn decrement_prefetch(&self) {
        let mut s = self.lock();
        if s.prefetch > 1 {
            s.prefetch -= 1;
            drop(s);
            // A transport that tells the broker (AMQP's basic.qos) hears of it.
            self.changed.notify_one();
        }
    }

    /// The consumed queues, in the order given.
    pub fn queues(&self) -> Vec<String> {
        self.lock().queues.clone()
    }

    /// Starts consuming `queue`; false if it already was. Resets the cycle, as
    /// kombu's `_update_queue_cycle` does.
    pub fn add_queue(&self, queue: &str) -> bool {
        let mut s = self.lock();
        if s.queues.iter().any(|q| q == queue) {
            return false;
        }
        s.queues.push(queue.to_owned());
        s.cycle = s.queues.clone();
        drop(s);
        self.changed.notify_one();
        true
    }

    /// Stops consuming `queue`; false if it was not consumed.
    pub fn cancel_queue(&self, queue: &str) -> bool {
        let mut s = self.lock();
        let before = s.queues.len();
        s.queues.retain(|q| q != queue);
        let removed = s.queues.len() != before;
        s.cycle = s.queues.clone();
        drop(s);
        self.changed.notify_one();
        removed
    }

    /// Marks the window as being handed back: dropped deliveries are expected.
    pub fn start_restoring(&self) {
        self.lock().restoring = true;
    }

    /// Whether [`Window::start_restoring`] was called.
    pub fn is_restoring(&self) -> bool {
        self.lock().restoring
    }

    /// Takes every held delivery, in delivery order.
    pub fn take_all(&self) -> Vec<(u64, Held)> {
        let mut all: Vec<(u64, Held)> = self.lock().held.drain().collect();
        all.sort_by_key(|(seq, _)| *seq);
        self.changed.notify_one();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn round_robin_moves_the_last_used_queue_to_the_end() {
        let w = Window::new(&names(&["a", "b", "c", "a"]), 0, None, QueueOrderStrategy::RoundRobin);
        assert_eq!(w.order(), names(&["a", "b", "c"]));
        w.rotate("a");
        assert_eq!(w.order(), names(&["b", "c", "a"]));
        w.rotate("c");
        assert_eq!(w.order(), names(&["b", "a", "c"]));
        assert!(w.add_queue("d"));
        assert_eq!(w.order(), names(&["a", "b", "c", "d"]), "a new queue resets the cycle");
        assert!(w.cancel_queue("b"));
        assert!(!w.cancel_queue("b"));
        assert_eq!(w.queues(), names(&["a", "c", "d"]));
    }

    #[test]
    fn sorted_and_priority_orders_do_not_rotate() {
        let w = Window::new(&names(&["b", "a"]), 0, None, QueueOrderStrategy::Sorted);
        w.rotate("a");
        assert_eq!(w.order(), names(&["a", "b"]));
        let w = Window::new(&names(&["b", "a"]), 0, None, QueueOrderStrategy::Priority);
        w.rotate("b");
        assert_eq!(w.order(), names(&["b", "a"]));
    }

    #[test]
    fn room_follows_prefetch_and_held_deliveries() {
        let w = Window::new(&names(&["q"]), 2, None, QueueOrderStrategy::RoundRobin);
        assert_eq!(w.room(10), 2);
        let a = w.hold("t1", Some("1.5".into()));
        assert_eq!(w.room(10), 1);
        w.hold("t2", None);
        assert_eq!(w.room(10), 0);
        assert_eq!(w.release(a).map(|h| h.tag), Some("t1".into()));
        assert!(w.release(a).is_none(), "released once");
        assert_eq!(w.room(10), 1);
        w.set_prefetch(0);
        assert_eq!(w.room(10), 10, "prefetch 0 is unlimited, bounded by the batch");
        let capped = Window::new(&names(&["q"]), 0, Some(3), QueueOrderStrategy::RoundRobin);
        assert_eq!(capped.room(10), 3);
    }

    #[test]
    fn scores_accumulate_until_confirmed() {
        let w = Window::new(&names(&["q"]), 0, None, QueueOrderStrategy::RoundRobin);
        let s = w.hold("t", Some("1".into()));
        w.add_score(s, "2".into(), false);
        assert_eq!(w.held(s).unwrap().scores, names(&["1", "2"]));
        w.add_score(s, "3".into(), true);
        assert_eq!(w.held(s).unwrap().scores, names(&["3"]));
        let taken = w.take_all();
        assert_eq!(taken.len(), 1);
        assert_eq!(w.in_flight(), 0);
    }
}

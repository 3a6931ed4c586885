//! The ETA timer: every admitted task whose ETA or countdown is still ahead is
//! parked here, as its bare delivery, until it is due. One task owns them all
//! in a heap ordered by when each next needs attention: its ETA, or, for ETAs
//! further away than `eta_refresh`, the next refresh of its visibility (so no
//! other worker's visibility sweep restores a message this worker still
//! holds). A due delivery goes back to the worker's main loop, which runs it
//! through the rest of the stages.
//!
//! Holding the delivery, packed as its JSON text
//! ([`celeriac_broker::Delivery::park`]), rather
//! than a waiting future and a parsed message per task keeps a held task at
//! about the size of its message. While it is held, a task counts in
//! `scheduled` and widens the prefetch window by one slot (Celery's
//! `qos.increment_eventually`) as long as fewer than `worker_max_scheduled_tasks`
//! are held. When the worker stops, whatever is parked is left unacked, and
//! the shutdown hands it back to its queue.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use celeriac_broker::{ConsumerControl, ParkedDelivery};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// A delivery handed to the timer, due at `eta`.
#[derive(Debug)]
pub(super) struct Parked {
    /// The held message, packed ([`celeriac_broker::Delivery::park`]).
    pub delivery: ParkedDelivery,
    /// When its task is due (wall clock).
    pub eta: jiff::Timestamp,
}

/// What the timer needs to know of the worker.
#[derive(Clone)]
pub(super) struct TimerConfig {
    /// How often a held message's visibility is refreshed.
    pub refresh: Duration,
    /// `worker_max_scheduled_tasks`.
    pub max_scheduled: usize,
}

/// Visibility refreshes run at once at most; the others wait their turn
/// (an outage must not start thousands of retrying calls together).
const MAX_REFRESHING: usize = 64;
/// How soon a refresh that failed (the broker unreachable) is tried again.
const REFRESH_RETRY: Duration = Duration::from_secs(15);

/// One parked delivery and when the timer next looks at it.
struct Entry {
    wake: Instant,
    seq: u64,
    eta: jiff::Timestamp,
    /// When its visibility must be refreshed next.
    refresh_at: Instant,
    delivery: ParkedDelivery,
    /// Whether it widened the prefetch window (undone when it leaves).
    widened: bool,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    /// Reversed, so the max-heap yields the earliest wake first (then the
    /// earliest parked).
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.wake, other.seq).cmp(&(self.wake, self.seq))
    }
}

/// When a task due at `eta` is due, seen at `now`/`wall`: `None` if it is.
pub(super) fn until_due(eta: jiff::Timestamp, wall: jiff::Timestamp, now: Instant) -> Option<Instant> {
    let wait = eta.duration_since(wall);
    if wait.is_negative() || wait.is_zero() {
        return None;
    }
    let wait = Duration::try_from(wait).unwrap_or(Duration::MAX);
    // Far ETAs (year 9999) are looked at again in a year, and then again.
    Some(now.checked_add(wait).unwrap_or(now + Duration::from_secs(365 * 86_400)))
}

/// The timer's state, owned by its task (see the module docs).
pub(super) struct Timer {
    config: TimerConfig,
    control: ConsumerControl,
    scheduled: Arc<AtomicUsize>,
    /// Held entries that widened the window (at most `max_scheduled`).
    widened: usize,
    heap: BinaryHeap<Entry>,
    next_seq: u64,
    due: mpsc::UnboundedSender<ParkedDelivery>,
    /// Visibility refreshes under way, each holding its entry; `true` when
    /// the refresh went through.
    refreshing: JoinSet<(Entry, Refreshed)>,
}

/// How a visibility refresh went.
enum Refreshed {
    Yes,
    /// The broker could not be reached: try again soon.
    Failed,
    /// The message is no longer this consumer's: hand it on at once, the
    /// worker drops it.
    Lost,
    /// The worker stops.
    Stopped,
}

impl Timer {
    /// A timer that hands due deliveries to `due` and counts held ones in
    /// `scheduled`.
    pub(super) fn new(
        config: TimerConfig,
        control: ConsumerControl,
        scheduled: Arc<AtomicUsize>,
        due: mpsc::UnboundedSender<ParkedDelivery>,
    ) -> Timer {
        Timer {
            config,
            control,
            scheduled,
            widened: 0,
            heap: BinaryHeap::new(),
            next_seq: 0,
            due,
            refreshing: JoinSet::new(),
        }
    }

    /// Runs until `stop`: takes parked deliveries from `park`, hands each to
    /// `due` when it is, and refreshes the visibility of the others. On `stop`
    /// every delivery still held is left unacked for the shutdown's restore.
    pub(super) async fn run(mut self, mut park: mpsc::UnboundedReceiver<Parked>, stop: CancellationToken) {
        loop {
            let wake = self.heap.peek().map(|e| e.wake);
            // Due work first: a flood of new ETA messages cannot hold back
            // those that are due.
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = sleep_until(wake), if wake.is_some() => self.wake(&stop),
                Some(done) = self.refreshing.join_next(), if !self.refreshing.is_empty() => {
                    if let Ok((entry, how)) = done {
                        self.refreshed(entry, how);
                    }
                }
                parked = park.recv() => match parked {
                    Some(p) => self.hold(p),
                    None => break,
                },
            }
        }
        // Anything parked meanwhile stays unacked too.
        park.close();
        while let Ok(p) = park.try_recv() {
            self.hold(p);
        }
        for mut entry in std::mem::take(&mut self.heap) {
            entry.delivery.leave_unacked();
            self.release(&entry);
        }
        while let Some(done) = self.refreshing.join_next().await {
            if let Ok((mut entry, _)) = done {
                entry.delivery.leave_unacked();
                self.release(&entry);
            }
        }
    }

    /// Takes a newly parked delivery in.
    fn hold(&mut self, p: Parked) {
        let before = self.scheduled.fetch_add(1, Ordering::Relaxed);
        let widened = self.widened < self.config.max_scheduled;
        if widened {
            self.widened += 1;
            self.control.increment_prefetch();
        } else if before == self.config.max_scheduled {
            warn!("{before} ETA tasks held (worker_max_scheduled_tasks): reserving no more until some are due");
        }
        let now = Instant::now();
        let refresh_at = now.checked_add(self.config.refresh).unwrap_or(now);
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut entry = Entry { wake: now, seq, eta: p.eta, refresh_at, delivery: p.delivery, widened };
        self.schedule(&mut entry);
        self.push(entry);
    }

    /// Adds an entry to the heap, growing it by a quarter rather than
    /// doubling it (ten thousand held tasks must not pay for sixteen
    /// thousand slots; the amortised cost stays constant).
    fn push(&mut self, entry: Entry) {
        if self.heap.len() == self.heap.capacity() {
            self.heap.reserve_exact((self.heap.len() / 4).max(64));
        }
        self.heap.push(entry);
    }

    /// Gives back most of the heap's room after a flood of held tasks has
    /// gone (kept within twice what is held).
    fn shrink(&mut self) {
        let len = self.heap.len();
        if self.heap.capacity() > 4 * len + 1024 {
            self.heap.shrink_to(2 * len);
        }
    }

    /// Sets when to look at `entry` next: at its ETA, or at its next
    /// refresh if that comes first.
    fn schedule(&self, entry: &mut Entry) {
        let now = Instant::now();
        entry.wake = match until_due(entry.eta, jiff::Timestamp::now(), now) {
            Some(due) => due.min(entry.refresh_at),
            None => now,
        };
    }

    /// Handles every entry whose wake time has come: due ones go to the
    /// worker (which refreshes their visibility as they start), the others
    /// have their visibility refreshed if it is time.
    fn wake(&mut self, stop: &CancellationToken) {
        let now = Instant::now();
        while self.heap.peek().is_some_and(|e| e.wake <= now) {
            let Some(mut entry) = self.heap.pop() else { break };
            if until_due(entry.eta, jiff::Timestamp::now(), now).is_none() {
                self.hand_on(entry);
            } else if entry.refresh_at > now {
                // Woken early (the wall clock moved): back to sleep.
                self.schedule(&mut entry);
                self.push(entry);
            } else if self.refreshing.len() >= MAX_REFRESHING {
                entry.wake = now + Duration::from_millis(100);
                self.push(entry);
                break;
            } else {
                self.refreshing.spawn(refresh(entry, stop.clone()));
            }
        }
        self.shrink();
    }

    /// Puts an entry back after its refresh.
    fn refreshed(&mut self, mut entry: Entry, how: Refreshed) {
        let now = Instant::now();
        match how {
            Refreshed::Yes => entry.refresh_at = now.checked_add(self.config.refresh).unwrap_or(now),
            Refreshed::Failed => entry.refresh_at = now + REFRESH_RETRY.min(self.config.refresh),
            Refreshed::Lost => return self.hand_on(entry),
            Refreshed::Stopped => {
                entry.delivery.leave_unacked();
                return self.release(&entry);
            }
        }
        self.schedule(&mut entry);
        self.push(entry);
    }

    /// Hands an entry to the worker.
    fn hand_on(&mut self, entry: Entry) {
        self.release(&entry);
        if let Err(mpsc::error::SendError(mut delivery)) = self.due.send(entry.delivery) {
            // The worker is stopping: the shutdown restores it.
            delivery.leave_unacked();
        }
    }

    /// Undoes what holding `entry` counted.
    fn release(&mut self, entry: &Entry) {
        self.scheduled.fetch_sub(1, Ordering::Relaxed);
        if entry.widened {
            self.widened = self.widened.saturating_sub(1);
            self.control.decrement_prefetch();
        }
    }
}

/// Sleeps until `at` (for ever without one; the select guard skips that).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Refreshes one held message's visibility.
async fn refresh(mut entry: Entry, stop: CancellationToken) -> (Entry, Refreshed) {
    let how = tokio::select! {
        biased;
        _ = stop.cancelled() => Refreshed::Stopped,
        r = entry.delivery.extend_visibility() => match r {
            Ok(()) => Refreshed::Yes,
            Err(e) if e.delivery_lost() => Refreshed::Lost,
            Err(e) => {
                warn!("could not refresh the visibility of a held ETA message (tried again in {REFRESH_RETRY:?}): {e}");
                Refreshed::Failed
            }
        }
    };
    (entry, how)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn a_task_is_due_at_its_eta_and_far_etas_never_overflow() {
        let now = Instant::now();
        assert_eq!(until_due(ts(1000), ts(1000), now), None, "due at its ETA");
        assert_eq!(until_due(ts(999), ts(1000), now), None, "overdue");
        assert_eq!(until_due(ts(1010), ts(1000), now), Some(now + Duration::from_secs(10)));
        // The last instant jiff knows: held, looked at again later.
        assert!(until_due(jiff::Timestamp::MAX, ts(1000), now).is_some_and(|at| at > now));
        assert!(until_due(jiff::Timestamp::MAX, jiff::Timestamp::MIN, now).is_some_and(|at| at > now));
    }

    /// A memory broker with `n` task messages queued, a consumer with a
    /// window of `n`, and its deliveries.
    async fn deliveries(n: usize) -> (celeriac_broker::Consumer, Vec<celeriac_broker::Delivery>) {
        use celeriac_broker::{Broker, MemoryBroker};
        let memory = MemoryBroker::default();
        memory.declare_queue("q", "", "q");
        for i in 0..n {
            let task = celeriac_protocol::TaskMessage::new("tasks.held", format!("id-{i}"));
            let message = task
                .to_message(task.default_properties(None, None), 0, celeriac_protocol::codec::ContentType::Json, None)
                .unwrap();
            memory.publish("", "q", &message).unwrap();
        }
        let broker = Broker::Memory(memory);
        let mut consumer = broker.consumer(&["q".to_owned()], n);
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(consumer.next().await.unwrap().unwrap());
        }
        (consumer, out)
    }

    fn id(delivery: &celeriac_broker::Delivery) -> String {
        match delivery.message().headers.get("id") {
            Some(celeriac_protocol::Value::Str(s)) => s.clone(),
            other => panic!("no id: {other:?}"),
        }
    }

    #[tokio::test]
    async fn due_deliveries_come_back_in_eta_order_and_the_window_shrinks_back() {
        let (consumer, held) = deliveries(4).await;
        let control = consumer.control();
        let (due_tx, mut due) = mpsc::unbounded_channel();
        let (park, parked) = mpsc::unbounded_channel();
        let scheduled = Arc::new(AtomicUsize::new(0));
        let config = TimerConfig { refresh: Duration::from_secs(600), max_scheduled: 2 };
        let timer = Timer::new(config, control.clone(), scheduled.clone(), due_tx);
        let stop = CancellationToken::new();
        let task = tokio::spawn(timer.run(parked, stop.clone()));
        let prefetch = control.prefetch();
        let now = jiff::Timestamp::now();
        let ms = |n: i64| now.checked_add(jiff::SignedDuration::from_millis(n)).unwrap();
        // id-0 in 300 ms, id-1 overdue, id-2 in 150 ms, id-3 in an hour.
        for (delivery, eta) in held.into_iter().zip([ms(300), ms(-5), ms(150), ms(3_600_000)]) {
            park.send(Parked { delivery: delivery.park(), eta }).unwrap();
        }
        let mut order = Vec::new();
        for _ in 0..3 {
            let mut d = due.recv().await.unwrap().unpark().unwrap();
            order.push(id(&d));
            d.ack().await.unwrap();
        }
        assert_eq!(order, ["id-1", "id-2", "id-0"]);
        assert_eq!(scheduled.load(Ordering::Relaxed), 1, "id-3 is still held");
        // Only the first two parked widened the window
        // (worker_max_scheduled_tasks = 2), and both have left.
        assert_eq!(control.prefetch(), prefetch);
        stop.cancel();
        task.await.unwrap();
        assert_eq!(scheduled.load(Ordering::Relaxed), 0);
        assert_eq!(control.prefetch(), prefetch, "the window is back to its size");
        assert!(due.try_recv().is_err(), "the held one was left unacked, not run");
        assert_eq!(consumer.control().in_flight(), 1, "id-3 stays unacked for the restore");
    }

    #[tokio::test]
    async fn the_heap_grows_by_a_quarter_and_gives_its_room_back() {
        let n = 2_000;
        let (consumer, held) = deliveries(n).await;
        let (due_tx, mut due) = mpsc::unbounded_channel();
        let config = TimerConfig { refresh: Duration::from_secs(600), max_scheduled: n };
        let mut timer = Timer::new(config, consumer.control(), Arc::new(AtomicUsize::new(0)), due_tx);
        let past = jiff::Timestamp::now().checked_sub(jiff::SignedDuration::from_secs(1)).unwrap();
        for delivery in held {
            timer.hold(Parked { delivery: delivery.park(), eta: past });
            let (len, cap) = (timer.heap.len(), timer.heap.capacity());
            assert!(cap <= len + len / 4 + 64, "{cap} slots for {len} held");
        }
        // All due: handed on, and the room goes back.
        timer.wake(&CancellationToken::new());
        assert!(timer.heap.is_empty());
        assert!(timer.heap.capacity() <= 1024, "{} slots kept for none held", timer.heap.capacity());
        for _ in 0..n {
            due.recv().await.unwrap().unpark().unwrap().ack().await.unwrap();
        }
    }
}

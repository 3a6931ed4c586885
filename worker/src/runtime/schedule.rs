//! Scheduling: what an admitted task waits for before it runs, in order:
//! its ETA or countdown (parked in the [`super::timer`] without an execution
//! slot, its visibility kept fresh so no other worker restores it meanwhile),
//! its rate limit, and an execution slot (`-c`). Slots go to tasks in the
//! order their messages arrived ([`Line`]), as a Python worker's single
//! consumer hands them to its pool: runners run side by side on several
//! threads, and a message read after another must not overtake it for the
//! last free slot. A worker that stops while a task waits leaves the message
//! unacked, and the shutdown hands it back to its queue.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use celeriac_protocol::TaskMessage;
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

use super::Shared;

/// The ETA of `task` if it is still ahead of `now`. An ETA past the last
/// instant jiff knows (year 9999 in some offsets) reads as that instant, so
/// the task is held for ever, as Celery's timer would hold it.
pub(super) fn eta_ahead(task: &TaskMessage, now: jiff::Timestamp) -> Option<jiff::Timestamp> {
    task.headers.eta_instant().filter(|eta| *eta > now)
}

impl Shared {
    /// Waits for the task's rate limit and an execution slot, and returns
    /// the slot; `None` when the worker stops first. (Its ETA, if any, has
    /// passed: the timer held it until then.) `ticket` is the task's place
    /// in line for a slot; a task that waits for its rate limit gives its
    /// place up meanwhile (the tasks behind it go on, as in Celery, whose
    /// rate-limited tasks wait in a bucket) and queues again afterwards.
    pub(super) async fn schedule(
        &self,
        task: &TaskMessage,
        mut ticket: Ticket,
        stop: &CancellationToken,
    ) -> Option<OwnedSemaphorePermit> {
        let wait = self.rate_limits.reserve(&task.headers.task);
        if !wait.is_zero() {
            drop(ticket);
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep(wait) => {}
            }
            ticket = self.line.ticket();
        }
        if !ticket.turn(stop).await {
            return None;
        }
        let permit = tokio::select! {
            biased;
            _ = stop.cancelled() => None,
            permit = self.permits.clone().acquire_owned() => permit.ok(),
        };
        // The next in line waits for a slot only once this one has it.
        drop(ticket);
        permit
    }
}

/// The line for execution slots: tickets in the order they were taken (the
/// order the consumer handed the deliveries over); a ticket's turn comes
/// when every earlier ticket has gone through (got its slot, or was given
/// up: the task was parked for its ETA, refused, discarded, or the worker
/// stops). One lock per ticket taken, per turn and per pass; only the task
/// whose turn comes is woken.
#[derive(Debug, Default)]
pub(crate) struct Line {
    state: Mutex<LineState>,
}

/// Room the line keeps when it empties.
const SPARE: usize = 1024;

#[derive(Debug, Default)]
struct LineState {
    /// The number of the first ticket not through yet.
    first: u64,
    /// For each ticket from `first` on, whether it is through.
    through: VecDeque<bool>,
    /// Tickets waiting for their turn, by number.
    waiting: HashMap<u64, oneshot::Sender<()>>,
}

impl Line {
    fn lock(&self) -> MutexGuard<'_, LineState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place at the end of the line.
    pub(crate) fn ticket(self: &Arc<Self>) -> Ticket {
        let mut state = self.lock();
        let number = state.first + state.through.len() as u64;
        state.through.push_back(false);
        Ticket { number, line: self.clone() }
    }

    /// Tickets taken and not through yet.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().through.len()
    }
}

/// A place in the [`Line`]; dropping it lets it through.
#[derive(Debug)]
pub(crate) struct Ticket {
    number: u64,
    line: Arc<Line>,
}

impl Ticket {
    /// Waits until every earlier ticket is through; false when `stop` comes
    /// first.
    async fn turn(&self, stop: &CancellationToken) -> bool {
        let waiting = {
            let mut state = self.line.lock();
            if state.first == self.number {
                None
            } else {
                let (tx, rx) = oneshot::channel();
                state.waiting.insert(self.number, tx);
                Some(rx)
            }
        };
        match waiting {
            None => true,
            Some(rx) => tokio::select! {
                biased;
                _ = stop.cancelled() => false,
                // An error cannot come (the line keeps the sender until it
                // sends); either way the wait is over.
                _ = rx => true,
            },
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.line.lock();
        state.waiting.remove(&self.number);
        let Some(offset) = self.number.checked_sub(state.first) else { return };
        if let Some(through) = usize::try_from(offset).ok().and_then(|i| state.through.get_mut(i)) {
            *through = true;
        }
        let mut advanced = false;
        while state.through.front() == Some(&true) {
            state.through.pop_front();
            state.first += 1;
            advanced = true;
        }
        if advanced {
            let first = state.first;
            if let Some(next) = state.waiting.remove(&first) {
                let _ = next.send(());
            }
            // After a burst (a wide prefetch window), give the room back.
            if state.through.is_empty() && state.through.capacity() > SPARE {
                state.through.shrink_to(SPARE);
            }
            if state.waiting.is_empty() && state.waiting.capacity() > SPARE {
                state.waiting.shrink_to(SPARE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Whether `fut` is still pending after the runtime had a chance to run it.
    async fn pending<F: std::future::Future + Unpin>(fut: &mut F) -> bool {
        tokio::time::timeout(Duration::from_millis(20), fut).await.is_err()
    }

    #[tokio::test]
    async fn turns_come_in_ticket_order_whatever_order_they_are_awaited() {
        let line = Arc::new(Line::default());
        let stop = CancellationToken::new();
        let (a, b, c) = (line.ticket(), line.ticket(), line.ticket());
        // The third and the second ask first: they wait for the first.
        let mut c_turn = Box::pin(async move { c.turn(&CancellationToken::new()).await });
        assert!(pending(&mut c_turn).await);
        let mut b_turn = Box::pin(async move {
            let ok = b.turn(&CancellationToken::new()).await;
            (ok, b)
        });
        assert!(pending(&mut b_turn).await);
        assert!(a.turn(&stop).await, "the first ticket's turn is now");
        drop(a);
        let (ok, b) = b_turn.await;
        assert!(ok);
        assert!(pending(&mut c_turn).await, "the third waits until the second is through");
        drop(b);
        assert!(c_turn.await);
        assert_eq!(line.len(), 0);
    }

    #[tokio::test]
    async fn a_ticket_given_up_out_of_order_lets_the_line_through_once_the_earlier_ones_are() {
        let line = Arc::new(Line::default());
        let (a, b, c) = (line.ticket(), line.ticket(), line.ticket());
        // The second is given up (parked for its ETA) while the first still waits.
        drop(b);
        let mut c_turn = Box::pin(async move { c.turn(&CancellationToken::new()).await });
        assert!(pending(&mut c_turn).await, "the first is not through yet");
        drop(a);
        assert!(c_turn.await);
        assert_eq!(line.len(), 0);
        // A fresh ticket on an empty line goes straight through.
        let d = line.ticket();
        assert!(d.turn(&CancellationToken::new()).await);
    }

    #[tokio::test]
    async fn a_stop_ends_the_wait_and_gives_the_place_up() {
        let line = Arc::new(Line::default());
        let (a, b, c) = (line.ticket(), line.ticket(), line.ticket());
        let stop = CancellationToken::new();
        stop.cancel();
        assert!(!b.turn(&stop).await);
        drop(b);
        drop(a);
        assert!(c.turn(&CancellationToken::new()).await);
        drop(c);
        assert_eq!(line.len(), 0);
        assert!(line.lock().waiting.is_empty(), "no waiter is left behind");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_runners_get_their_turns_in_order_on_a_multi_thread_runtime() {
        let line = Arc::new(Line::default());
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut runners = tokio::task::JoinSet::new();
        for n in 0..200u32 {
            let ticket = line.ticket();
            let order = order.clone();
            runners.spawn(async move {
                if n % 7 == 3 {
                    return; // given up: parked, refused
                }
                tokio::task::yield_now().await;
                assert!(ticket.turn(&CancellationToken::new()).await);
                order.lock().unwrap().push(n);
            });
        }
        while let Some(done) = runners.join_next().await {
            done.unwrap();
        }
        let order = order.lock().unwrap().clone();
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(order, sorted);
        assert_eq!(order.len(), 200 - (0..200).filter(|n| n % 7 == 3).count());
        assert_eq!(line.len(), 0);
    }

    #[test]
    fn an_emptied_line_gives_back_the_room_of_a_burst() {
        let line = Arc::new(Line::default());
        let tickets: Vec<Ticket> = (0..20_000).map(|_| line.ticket()).collect();
        assert!(line.lock().through.capacity() >= 20_000);
        drop(tickets);
        let state = line.lock();
        assert!(state.through.is_empty());
        assert!(state.through.capacity() <= 2 * SPARE, "{}", state.through.capacity());
    }
}

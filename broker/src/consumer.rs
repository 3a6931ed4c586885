//! The consumer: deliveries from a set of queues, within a prefetch window,
//! whatever the transport.
//!
//! A background task fetches while the window has room and hands deliveries
//! over a channel, so [`Consumer::next`] is cancel-safe (a `select!` that drops
//! it loses nothing). Dropping the consumer stops fetching and leaves held
//! messages unacked, which in Redis looks exactly like a crashed worker: they
//! come back after the visibility timeout. A clean shutdown calls
//! [`Consumer::restore_unacked`] instead.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::delivery::Delivery;
use crate::error::BrokerError;
use crate::transport::Settler;
use crate::window::Window;

/// What the fetch task sends.
pub(crate) type Feed = mpsc::UnboundedSender<Result<Delivery, BrokerError>>;

/// Deliveries from a set of queues (see the module docs).
#[derive(Debug)]
pub struct Consumer {
    window: Arc<Window>,
    rx: mpsc::UnboundedReceiver<Result<Delivery, BrokerError>>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    source: Settler,
    closed: bool,
}

impl Consumer {
    pub(crate) fn new(
        window: Arc<Window>,
        rx: mpsc::UnboundedReceiver<Result<Delivery, BrokerError>>,
        stop: CancellationToken,
        tasks: Vec<JoinHandle<()>>,
        source: Settler,
    ) -> Consumer {
        Consumer { window, rx, stop, tasks, source, closed: false }
    }

    /// The next delivery; `None` once the consumer is closed. Connection
    /// trouble is retried inside (and logged); errors returned here are about
    /// one message (undecodable) or need an operator (refused credentials).
    pub async fn next(&mut self) -> Option<Result<Delivery, BrokerError>> {
        if self.closed {
            return None;
        }
        self.rx.recv().await
    }

    /// A handle that changes the prefetch window and the consumed queues
    /// while another task owns the consumer (ETA bookkeeping, remote control).
    pub fn control(&self) -> ConsumerControl {
        ConsumerControl { window: self.window.clone() }
    }

    /// Changes the prefetch count (0 = unlimited), as `basic_qos` does.
    pub fn set_prefetch(&self, prefetch: usize) {
        self.window.set_prefetch(prefetch);
    }

    /// The prefetch count.
    pub fn prefetch(&self) -> usize {
        self.window.prefetch()
    }

    /// Deliveries handed out (or waiting in the channel) and not settled yet.
    pub fn in_flight(&self) -> usize {
        self.window.in_flight()
    }

    /// Starts consuming `queue` too (the `add_consumer` control command); false
    /// if it already was.
    pub fn add_queue(&self, queue: &str) -> bool {
        self.window.add_queue(queue)
    }

    /// Stops consuming `queue` (`cancel_consumer`); false if it was not consumed.
    /// A message popped from it while cancelling is pushed back, not delivered.
    pub fn cancel_queue(&self, queue: &str) -> bool {
        self.window.cancel_queue(queue)
    }

    /// The consumed queues.
    pub fn queues(&self) -> Vec<String> {
        self.window.queues()
    }

    /// Stops fetching and hands back every held delivery, acked or not yet
    /// received, as kombu's `restore_unacked_once` does at shutdown: each goes
    /// back to the consuming end of its queue (`RPUSH`) with `redelivered` set.
    /// Call it after the deliveries being worked on were settled. Returns how
    /// many were restored; the consumer is closed afterwards.
    pub async fn restore_unacked(&mut self) -> Result<usize, BrokerError> {
        self.window.start_restoring();
        self.stop_fetching().await;
        let held = self.window.take_all();
        if held.is_empty() {
            return Ok(0);
        }
        tracing::info!("Restoring {} unacknowledged message(s)", held.len());
        self.source.restore_all(&held).await
    }

    /// Stops fetching and waits for the fetch task to finish, leaving held
    /// messages unacked (as a crash would).
    pub async fn close(mut self) {
        self.window.start_restoring();
        self.stop_fetching().await;
    }

    async fn stop_fetching(&mut self) {
        self.stop.cancel();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        self.closed = true;
        self.rx.close();
        while self.rx.try_recv().is_ok() {}
    }
}

/// Changes a running consumer's prefetch window and queues. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ConsumerControl {
    window: Arc<Window>,
}

impl ConsumerControl {
    /// The prefetch count (0 = unlimited).
    pub fn prefetch(&self) -> usize {
        self.window.prefetch()
    }

    /// Changes the prefetch count, as `basic_qos` does.
    pub fn set_prefetch(&self, prefetch: usize) {
        self.window.set_prefetch(prefetch);
    }

    /// One more slot (unless unlimited): a held ETA message leaves the window
    /// its room, as Celery's `qos.increment_eventually`.
    pub fn increment_prefetch(&self) {
        self.window.increment_prefetch();
    }

    /// One slot fewer (never below 1), when an ETA message is released.
    pub fn decrement_prefetch(&self) {
        self.window.decrement_prefetch();
    }

    /// Deliveries handed out and not settled yet.
    pub fn in_flight(&self) -> usize {
        self.window.in_flight()
    }

    /// Starts consuming `queue`; false if it already was.
    pub fn add_queue(&self, queue: &str) -> bool {
        self.window.add_queue(queue)
    }

    /// Stops consuming `queue`; false if it was not consumed.
    pub fn cancel_queue(&self, queue: &str) -> bool {
        self.window.cancel_queue(queue)
    }

    /// The consumed queues.
    pub fn queues(&self) -> Vec<String> {
        self.window.queues()
    }
}

impl futures_util::Stream for Consumer {
    type Item = Result<Delivery, BrokerError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.closed {
            return Poll::Ready(None);
        }
        this.rx.poll_recv(cx)
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

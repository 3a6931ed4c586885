//! The clock beat reads and sleeps on, injectable so tests can travel in time.
//!
//! [`SystemClock`] sleeps on tokio's monotonic timer in short steps and reads
//! the wall clock again after each, so a wall-clock jump (NTP, a suspended
//! laptop) delays nothing by more than a step. [`ManualClock`] stands still
//! until a test moves it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::watch;

/// A future that completes at a wall-clock time.
pub type Sleep<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Where beat gets the time from.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current wall-clock time.
    fn now(&self) -> Timestamp;
    /// Completes once [`Clock::now`] has reached `at`.
    fn sleep_until(&self, at: Timestamp) -> Sleep<'_>;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

/// The longest single sleep before the wall clock is read again.
const STEP: Duration = Duration::from_secs(1);

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    fn sleep_until(&self, at: Timestamp) -> Sleep<'_> {
        Box::pin(async move {
            loop {
                let left = at.duration_since(Timestamp::now());
                if !left.is_positive() {
                    return;
                }
                let left = Duration::try_from(left).unwrap_or(STEP);
                tokio::time::sleep(left.min(STEP)).await;
            }
        })
    }
}

/// A clock that moves only when told to (for tests).
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<Timestamp>>,
    moved: Arc<watch::Sender<Timestamp>>,
}

impl ManualClock {
    /// A clock showing `start`.
    pub fn new(start: Timestamp) -> ManualClock {
        ManualClock { now: Arc::new(Mutex::new(start)), moved: Arc::new(watch::channel(start).0) }
    }

    /// Sets the time (it may go backwards, as a wall clock can).
    pub fn set(&self, to: Timestamp) {
        if let Ok(mut now) = self.now.lock() {
            *now = to;
        }
        self.moved.send_replace(to);
    }

    /// Moves the time forward by `by`.
    pub fn advance(&self, by: jiff::SignedDuration) {
        let to = self.now().checked_add(by).unwrap_or(Timestamp::MAX);
        self.set(to);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        self.now.lock().map(|t| *t).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn sleep_until(&self, at: Timestamp) -> Sleep<'_> {
        let mut moved = self.moved.subscribe();
        Box::pin(async move {
            while self.now() < at {
                if moved.changed().await.is_err() {
                    return;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_clock_wakes_sleepers_when_moved() {
        let start: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let clock = ManualClock::new(start);
        let sleeper = clock.clone();
        let at = start.checked_add(jiff::SignedDuration::from_secs(60)).unwrap();
        let woke = tokio::spawn(async move { sleeper.sleep_until(at).await });
        clock.advance(jiff::SignedDuration::from_secs(30));
        tokio::task::yield_now().await;
        assert!(!woke.is_finished());
        clock.advance(jiff::SignedDuration::from_secs(30));
        woke.await.unwrap();
    }
}

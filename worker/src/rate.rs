//! Per-task rate limits, as Celery's worker applies them: a token bucket of
//! capacity one per task name, refilled at the task's rate (`"10/s"`,
//! `"100/m"`, `"1000/h"`). A rate-limited task waits for its token before it
//! takes an execution slot, so it never blocks other tasks.
//!
//! Limits can change at run time (the `rate_limit` remote-control command).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The longest wait between two tokens of one task (a year): what a rate
/// such as `"1e-300/s"` is spaced by, instead of overflowing.
pub const MAX_INTERVAL: Duration = Duration::from_secs(365 * 24 * 3600);

/// One task's bucket: the time its next token is free.
#[derive(Debug)]
struct Bucket {
    /// Seconds between tokens.
    interval: Duration,
    /// When the next token may be taken.
    next_free: Instant,
}

/// Rate limits by task name.
#[derive(Debug, Default)]
pub struct RateLimits {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimits {
    /// No limits.
    pub fn new() -> RateLimits {
        RateLimits::default()
    }

    /// Sets (`Some(tasks per second)`) or clears (`None`, or a rate that is
    /// not a positive finite number) the limit for `task`. A rate so low that
    /// its tokens would be more than [`MAX_INTERVAL`] apart is spaced by that.
    pub fn set(&self, task: &str, per_second: Option<f64>) {
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match per_second.filter(|r| *r > 0.0 && r.is_finite()) {
            Some(rate) => {
                // 1/rate overflows a Duration (or is infinite) for tiny rates.
                let interval = Duration::try_from_secs_f64(1.0 / rate).unwrap_or(MAX_INTERVAL).min(MAX_INTERVAL);
                let bucket = buckets.entry(task.to_owned()).or_insert(Bucket { interval, next_free: Instant::now() });
                bucket.interval = interval;
            }
            None => {
                buckets.remove(task);
            }
        }
    }

    /// The limit of `task` in tasks per second, if it has one.
    pub fn get(&self, task: &str) -> Option<f64> {
        let buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        buckets.get(task).map(|b| 1.0 / b.interval.as_secs_f64())
    }

    /// Takes a token for `task`, returning how long the caller must wait
    /// before running it (zero when a token was free). Each call reserves the
    /// next slot, so concurrent callers are spaced by the interval.
    pub fn reserve(&self, task: &str) -> Duration {
        self.reserve_at(task, Instant::now())
    }

    fn reserve_at(&self, task: &str, now: Instant) -> Duration {
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(bucket) = buckets.get_mut(task) else { return Duration::ZERO };
        // Capacity one: an idle bucket holds a single token, not a backlog.
        let at = bucket.next_free.max(now);
        bucket.next_free = at.checked_add(bucket.interval).unwrap_or(at);
        at.saturating_duration_since(now)
    }

    /// Waits for a token for `task`.
    pub async fn acquire(&self, task: &str) {
        let wait = self.reserve(task);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_spaced_by_the_rate() {
        let limits = RateLimits::new();
        limits.set("t", Some(10.0));
        let now = Instant::now();
        assert_eq!(limits.reserve_at("t", now), Duration::ZERO);
        assert_eq!(limits.reserve_at("t", now), Duration::from_millis(100));
        assert_eq!(limits.reserve_at("t", now), Duration::from_millis(200));
        assert_eq!(limits.reserve_at("other", now), Duration::ZERO, "unlimited tasks never wait");
    }

    #[test]
    fn an_idle_bucket_holds_one_token_only() {
        let limits = RateLimits::new();
        limits.set("t", Some(1.0));
        let now = Instant::now();
        assert_eq!(limits.reserve_at("t", now), Duration::ZERO);
        let later = now + Duration::from_secs(10);
        assert_eq!(limits.reserve_at("t", later), Duration::ZERO);
        assert_eq!(limits.reserve_at("t", later), Duration::from_secs(1));
    }

    #[test]
    fn extreme_rates_neither_panic_nor_overflow() {
        let limits = RateLimits::new();
        for rate in [1e300, f64::MAX, f64::MIN_POSITIVE, 1e-300, 5e-324] {
            let task = format!("t{rate}");
            limits.set(&task, Some(rate));
            let now = Instant::now();
            for i in 0..3 {
                assert!(limits.reserve_at(&task, now) <= MAX_INTERVAL * i, "{rate}");
            }
        }
        limits.set("t", Some(1e-300));
        assert_eq!(limits.get("t"), Some(1.0 / MAX_INTERVAL.as_secs_f64()), "spaced by the cap");
        for off in [f64::NAN, f64::INFINITY, -1.0, 0.0] {
            limits.set("t", Some(off));
            assert_eq!(limits.get("t"), None, "{off}");
        }
    }

    #[test]
    fn limits_change_and_clear_at_run_time() {
        let limits = RateLimits::new();
        limits.set("t", Some(2.0));
        assert_eq!(limits.get("t"), Some(2.0));
        limits.set("t", Some(0.0));
        assert_eq!(limits.get("t"), None);
        let now = Instant::now();
        assert_eq!(limits.reserve_at("t", now), Duration::ZERO);
        assert_eq!(limits.reserve_at("t", now), Duration::ZERO);
    }
}

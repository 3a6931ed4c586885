//! Prometheus metrics of a beat (`celeriac beat --metrics-addr`): runs
//! sent, slots skipped (no-overlap) and missed (catch-up, starting
//! deadlines), the lag of each send behind its slot, whether this beat holds
//! the leader lease, and its entries. The scheduler updates them after every
//! tick and send ([`crate::Beat::with_metrics`]); [`BeatMetrics::render`]
//! writes the text exposition format.

use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::health::Counters;

/// Buckets of `celeriac_beat_send_lag_seconds`: a send is normally within
/// a second of its slot; minutes mean a beat that was down or overloaded.
const LAG_BUCKETS: [f64; 12] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

#[derive(Debug, Default)]
struct Inner {
    counters: Counters,
    leader: bool,
    lag_counts: [u64; LAG_BUCKETS.len()],
    lag_count: u64,
    lag_sum: f64,
    last_lag: f64,
}

/// A beat's metrics. Shared in an `Arc` between the scheduler and the endpoint.
#[derive(Debug)]
pub struct BeatMetrics {
    service: String,
    inner: Mutex<Inner>,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl BeatMetrics {
    /// Metrics of the beat of `service` (`beat_health_service`, the `service` label).
    pub fn new(service: &str) -> BeatMetrics {
        BeatMetrics { service: service.to_owned(), inner: Mutex::default() }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the scheduler's counters and lease after a tick.
    pub fn update(&self, counters: &Counters, leader: bool) {
        let mut inner = self.lock();
        inner.counters = counters.clone();
        inner.leader = leader;
    }

    /// Records how far behind its slot a run was sent, in seconds (a
    /// negative or non-finite value counts as 0).
    pub fn observe_lag(&self, seconds: f64) {
        let lag = if seconds.is_finite() { seconds.max(0.0) } else { 0.0 };
        let mut inner = self.lock();
        for (i, bound) in LAG_BUCKETS.iter().enumerate() {
            if lag <= *bound {
                inner.lag_counts[i] += 1;
            }
        }
        inner.lag_count += 1;
        inner.lag_sum += lag;
        inner.last_lag = lag;
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let inner = self.lock();
        let c = &inner.counters;
        let l = format!("service=\"{}\"", escape(&self.service));
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, labels: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        };
        metric("celeriac_beat_up", "gauge", "The beat runs.", &l, "1".into());
        metric(
            "celeriac_beat_leader",
            "gauge",
            "1 while this beat holds the leader lease and sends.",
            &l,
            u8::from(inner.leader).to_string(),
        );
        metric("celeriac_beat_sent_total", "counter", "Runs sent by this beat.", &l, c.sent.to_string());
        let _ = writeln!(out, "# HELP celeriac_beat_skipped_total Slots not sent: overlap (the previous run was unfinished), missed (catch-up policy or starting deadline).");
        let _ = writeln!(out, "# TYPE celeriac_beat_skipped_total counter");
        let _ = writeln!(out, "celeriac_beat_skipped_total{{{l},reason=\"overlap\"}} {}", c.skipped_overlap);
        let _ = writeln!(out, "celeriac_beat_skipped_total{{{l},reason=\"missed\"}} {}", c.missed);
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name}{{{l}}} {value}");
        };
        metric(
            "celeriac_beat_lease_lost_total",
            "counter",
            "Times this beat lost the leader lease.",
            c.lease_lost.to_string(),
        );
        metric("celeriac_beat_entries", "gauge", "Entries loaded on the last tick.", c.entries.to_string());
        metric(
            "celeriac_beat_broken_entries",
            "gauge",
            "Entries that cannot be run (skipped).",
            c.broken.len().to_string(),
        );
        metric(
            "celeriac_beat_last_lag_seconds",
            "gauge",
            "How far behind its slot the last run was sent.",
            format!("{:?}", inner.last_lag),
        );
        if let Some(next) = c.next_run {
            let secs = next.as_millisecond() as f64 / 1000.0;
            metric(
                "celeriac_beat_next_run_timestamp_seconds",
                "gauge",
                "The next slot of any entry (Unix time).",
                format!("{secs:?}"),
            );
        }
        let _ = writeln!(out, "# HELP celeriac_beat_send_lag_seconds How far behind its slot each run was sent.");
        let _ = writeln!(out, "# TYPE celeriac_beat_send_lag_seconds histogram");
        for (bound, n) in LAG_BUCKETS.iter().zip(inner.lag_counts) {
            let _ = writeln!(out, "celeriac_beat_send_lag_seconds_bucket{{{l},le=\"{bound:?}\"}} {n}");
        }
        let _ = writeln!(out, "celeriac_beat_send_lag_seconds_bucket{{{l},le=\"+Inf\"}} {}", inner.lag_count);
        let _ = writeln!(out, "celeriac_beat_send_lag_seconds_count{{{l}}} {}", inner.lag_count);
        let _ = writeln!(out, "celeriac_beat_send_lag_seconds_sum{{{l}}} {:?}", inner.lag_sum);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_lease_and_lag_are_rendered() {
        let m = BeatMetrics::new("beat-\"a\"");
        let counters = Counters { sent: 3, skipped_overlap: 2, missed: 1, entries: 4, ..Counters::default() };
        m.update(&counters, true);
        m.observe_lag(0.2);
        m.observe_lag(f64::NAN);
        m.observe_lag(1e300);
        let text = m.render();
        let l = r#"service="beat-\"a\"""#;
        assert!(text.contains(&format!("celeriac_beat_sent_total{{{l}}} 3")), "{text}");
        assert!(text.contains(&format!("celeriac_beat_leader{{{l}}} 1")));
        assert!(text.contains(&format!("celeriac_beat_skipped_total{{{l},reason=\"overlap\"}} 2")));
        assert!(text.contains(&format!("celeriac_beat_skipped_total{{{l},reason=\"missed\"}} 1")));
        assert!(text.contains(&format!("celeriac_beat_send_lag_seconds_bucket{{{l},le=\"0.25\"}} 2")), "{text}");
        assert!(text.contains(&format!("celeriac_beat_send_lag_seconds_count{{{l}}} 3")));
        assert!(text.contains(&format!("celeriac_beat_entries{{{l}}} 4")));
        m.update(&counters, false);
        assert!(m.render().contains(&format!("celeriac_beat_leader{{{l}}} 0")));
    }
}

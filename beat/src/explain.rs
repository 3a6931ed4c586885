//! `celeriac beat --explain`: each entry's next fire times, in its zone and
//! in UTC, from its recorded last slot (or from now for an entry never run).

use std::fmt::Write;

use jiff::Timestamp;

use crate::entry::Entry;
use crate::scheduler::fresh_state;
use crate::state::EntryState;

/// The text for `entries` (with their state, if known) from `now`, `count`
/// fire times each.
pub fn explain(entries: &[(Entry, Option<EntryState>)], now: Timestamp, count: usize) -> String {
    let mut out = String::new();
    for (entry, state) in entries {
        let state = state.clone().filter(|s| s.last_run_at.is_some()).unwrap_or_else(|| fresh_state(entry, now));
        let _ = writeln!(
            out,
            "{}  {} ({:?}){}",
            entry.name,
            entry.task,
            entry.origin,
            if entry.enabled { "" } else { "  [disabled]" }
        );
        let _ = writeln!(out, "  schedule: {}  zone: {}", entry.schedule.describe(), entry.zone_name());
        let mut safety = format!("catch_up {:?}", entry.catch_up()).to_lowercase();
        if entry.extras.no_overlap {
            safety.push_str(&format!(", no_overlap (bound {}s)", entry.no_overlap_timeout().as_secs_f64()));
        }
        if let Some(d) = entry.starting_deadline {
            safety.push_str(&format!(", starting deadline {}s", d.as_secs_f64()));
        }
        if !entry.options.is_empty() {
            safety.push_str(&format!(", options {}", serde_json::Value::Object(entry.options.clone())));
        }
        let _ = writeln!(out, "  {safety}");
        match state.last_run_at {
            Some(last) if state.total_run_count > 0 => {
                let _ = writeln!(out, "  last run: {last} ({} runs)", state.total_run_count);
            }
            _ => {}
        }
        let mut last = state.last_run_at;
        for _ in 0..count {
            match entry.schedule.next_after(last, &entry.tz) {
                Some(next) => {
                    let local = next.to_zoned_datetime(entry.tz.clone());
                    let _ = writeln!(
                        out,
                        "    {}  {}  = {}",
                        local.strftime("%Y-%m-%d %H:%M:%S %Z (%:z)"),
                        entry.zone_name(),
                        next.strftime("%Y-%m-%dT%H:%M:%SZ")
                    );
                    last = Some(next);
                }
                None => {
                    let _ = writeln!(out, "    (no more runs)");
                    break;
                }
            }
        }
    }
    out
}

//! What beat remembers about an entry between ticks, restarts and leaders:
//! RedBeat's `meta` (the last run's slot and the run count) and celeriac's run
//! state (the schedule that slot belongs to, the last task id for no-overlap,
//! a send in flight, counters).

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// A send that was recorded but not yet confirmed: a leader that finds one
/// sends it again under the same task id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The slot, RFC 3339.
    pub slot: String,
    /// The task id it is sent with.
    pub task_id: String,
}

/// celeriac's run state of an entry (the `celeriac_run` hash field).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunState {
    /// [`crate::Entry::fingerprint`] of the schedule the last slot belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The task id of the last send, for no-overlap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_task_id: Option<String>,
    /// When the last send happened, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_sent_at: Option<String>,
    /// A send recorded but not confirmed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
    /// Slots skipped because the previous run was unfinished.
    pub skipped_overlap: u64,
    /// Slots dropped by the catch-up policy or the starting deadline.
    pub missed: u64,
}

impl RunState {
    /// `last_sent_at` as a time.
    pub fn last_sent_at(&self) -> Option<Timestamp> {
        self.last_sent_at.as_deref().and_then(|t| t.parse().ok())
    }
}

/// An entry's whole state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EntryState {
    /// The slot of the last run (RedBeat's `meta.last_run_at`), or the time
    /// the entry was first seen; `None` for an entry never seen before.
    pub last_run_at: Option<Timestamp>,
    /// Runs sent (RedBeat's `meta.total_run_count`).
    pub total_run_count: u64,
    /// celeriac's part.
    pub run: RunState,
}

impl EntryState {
    /// RedBeat's `meta` JSON.
    pub fn meta_json(&self) -> String {
        crate::redbeat::meta_json(self.last_run_at, self.total_run_count).to_string()
    }

    /// The `celeriac_run` JSON.
    pub fn run_json(&self) -> String {
        serde_json::to_string(&self.run).unwrap_or_else(|_| "{}".into())
    }

    /// Reads the two fields (either may be missing).
    pub fn from_fields(meta: Option<&str>, run: Option<&str>) -> Result<EntryState, String> {
        let (last_run_at, total_run_count) = crate::redbeat::meta_from_json(meta)?;
        let run = match run.filter(|r| !r.is_empty()) {
            Some(text) => {
                let bad = |e: String| {
                    format!("celeriac_run is not celeriac's run state ({e}); delete the field to start it afresh")
                };
                let v: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
                if !v.is_object() {
                    return Err(bad(format!("{} is not an object", crate::entry::brief(&v))));
                }
                let run: RunState = serde_json::from_value(v).map_err(|e| bad(e.to_string()))?;
                let uuid = |id: &str| uuid::Uuid::parse_str(id).is_ok();
                if let Some(p) = &run.pending {
                    if !uuid(&p.task_id) || p.slot.parse::<Timestamp>().is_err() {
                        return Err(bad(format!(
                            "pending send {:?} at {:?} is not a task id and a time",
                            crate::entry::cut(&p.task_id, 40),
                            crate::entry::cut(&p.slot, 40)
                        )));
                    }
                }
                if let Some(at) = run.last_sent_at.as_deref().filter(|at| at.parse::<Timestamp>().is_err()) {
                    return Err(bad(format!("last_sent_at {:?} is not a time", crate::entry::cut(at, 40))));
                }
                if let Some(id) = run.last_task_id.as_deref().filter(|id| !uuid(id)) {
                    return Err(bad(format!("last_task_id {:?} is not a task id", crate::entry::cut(id, 40))));
                }
                run
            }
            None => RunState::default(),
        };
        Ok(EntryState { last_run_at, total_run_count, run })
    }
}

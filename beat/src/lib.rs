//! celeriac beat: interval, crontab and one-off schedules, a leader lease so several
//! beats send each slot once, no-overlap locks and persisted last-run state.

pub mod schedule;

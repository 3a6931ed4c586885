//! celeriac beat: the periodic scheduler that replaces `celery beat` and
//! RedBeat, and runs safely as several instances.
//!
//! - [`schedule`]: intervals without drift, Celery crontabs in a time zone
//!   (daylight-saving changes handled), RedBeat rrules and one-off runs;
//! - [`entry`]: entries with Celery's fields and celeriac's safety options;
//! - [`redbeat`]: RedBeat's Redis layout and JSON, read and written as RedBeat does;
//! - [`store`]: state in a local file, or in Redis with a leader lease;
//! - [`scheduler`]: the loop: lease, catch-up, no-overlap, sending, health;
//! - [`overlap`], [`health`], [`explain`], [`clock`]: no-overlap judged from the
//!   result backend, the `health:<service>` key, `--explain`, the injectable clock;
//! - [`metrics`]: Prometheus metrics (sent, skipped, lag, leader).

pub mod clock;
pub mod entry;
mod error;
pub mod explain;
pub mod health;
pub mod metrics;
pub mod overlap;
pub mod redbeat;
pub mod schedule;
pub mod scheduler;
pub mod state;
pub mod store;

pub use clock::{Clock, ManualClock, SystemClock};
pub use entry::{Entry, Extras, Origin};
pub use error::BeatError;
pub use scheduler::{Beat, BeatConfig, Control};
pub use state::EntryState;
pub use store::{FileStore, RedisStore, Store};

//! Settings for celeriac, under Celery's own names (`broker_url`, `result_backend`,
//! `task_routes`, `worker_concurrency`, `beat_schedule`, ...), loaded from a TOML
//! file and the environment and validated before anything connects.
//!
//! - [`Settings`]: every setting celeriac reads, with Celery's defaults;
//! - [`load`]: file + environment layering (`CELERY_BROKER_URL`,
//!   `CELERY_RESULT_BACKEND`, `CELERIAC_<SETTING>`), with errors that name the
//!   bad setting;
//! - [`routes`]: Celery's `task_routes` matching (exact names and globs).

mod error;
mod load;
pub mod routes;
mod settings;

pub use error::ConfigError;
pub use load::{load, load_from_str, Loaded};
pub use routes::Route;
pub use settings::*;

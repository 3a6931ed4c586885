//! Settings for celeriac, under Celery's own names (`broker_url`, `result_backend`,
//! `task_routes`, `worker_concurrency`, `beat_schedule`, ...), loaded from a TOML
//! file and the environment and validated before anything connects.
//!
//! - [`Settings`]: every setting celeriac reads, with Celery's defaults;
//! - [`load`]: file + environment layering (`CELERY_BROKER_URL`,
//!   `CELERY_RESULT_BACKEND`, `CELERIAC_<SETTING>`), with errors that name the
//!   bad setting;
//! - [`routes`]: Celery's `task_routes` matching (exact names and globs);
//! - [`NUMERIC_SETTINGS`]: the accepted range of every numeric setting, checked
//!   from every source (file, environment, flags, code) with an error naming
//!   the setting and the range;
//! - [`filter_hidden_settings`]: the settings as `inspect conf` shows them, with
//!   Celery's rule for secrets (passwords, keys, tokens, URLs' passwords).

mod censor;
mod error;
mod limits;
mod load;
pub mod routes;
mod settings;

pub use censor::filter_hidden_settings;
pub use error::ConfigError;
pub use limits::{check_flag, limit_of, Numeric, NUMERIC_SETTINGS};
pub use load::{load, load_from_str, Loaded};
pub use routes::Route;
pub use settings::*;

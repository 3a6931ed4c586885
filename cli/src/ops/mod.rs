//! The operator's commands: `celeriac status`, `monitor`, `inspect`,
//! `control`, `call`, `result`, `purge`, `queues` and `tasks`. They talk to
//! the whole fleet, Python workers too, exactly as `celery inspect` and
//! `celery control` do (the pidbox, [`pidbox`]), read queue depths the way
//! kombu lays them out in Redis ([`depths`]), and print either text for a
//! person or, with `--json`, one JSON document for a script.

pub mod call;
pub mod depths;
pub mod manifest;
pub mod pidbox;
pub mod remote;
pub mod status;

use std::path::PathBuf;
use std::time::Duration;

use celeriac_config::Settings;
use clap::Args;

use crate::error::CliError;

/// Celery's exit status when no worker answered (`EX_UNAVAILABLE`).
pub const EX_UNAVAILABLE: u8 = 69;

/// Where the fleet is: the flags every operator command shares.
#[derive(Args, Debug, Clone, Default)]
pub struct Fleet {
    /// Broker URL (`broker_url`), e.g. redis://127.0.0.1:6379/0.
    #[arg(short = 'b', long)]
    pub broker: Option<String>,
    /// Result backend URL (`result_backend`).
    #[arg(long)]
    pub result_backend: Option<String>,
    /// Settings file (TOML, Celery's setting names).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print one JSON document (for scripts) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Log level: DEBUG, INFO, WARNING, ERROR or CRITICAL.
    #[arg(short = 'l', long, default_value = "WARNING")]
    pub loglevel: String,
}

impl Fleet {
    /// Starts logging and reads the settings (file, environment, flags).
    pub fn settings(&self) -> Result<Settings, CliError> {
        let level = crate::logging::level(&self.loglevel).map_err(CliError::Setting)?;
        crate::logging::init(level);
        let mut settings = celeriac_config::load(self.config.as_deref())?.settings;
        if let Some(url) = &self.broker {
            settings.broker_url = url.clone();
        }
        if let Some(url) = &self.result_backend {
            settings.result_backend = Some(url.clone());
        }
        settings.validate()?;
        Ok(settings)
    }
}

/// Seconds from a flag as a duration: 0.001 to one day.
pub fn seconds(flag: &str, text: &str) -> Result<Duration, String> {
    let secs: f64 = text.trim().parse().map_err(|_| format!("{flag}: {text:?} is not a number of seconds"))?;
    if !(0.001..=86_400.0).contains(&secs) {
        return Err(format!("{flag}: {text} is out of range; use 0.001 to 86400 seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Prints `value` as one line of JSON.
pub fn print_json(value: &serde_json::Value) {
    println!("{}", serde_json::to_string(value).unwrap_or_else(|_| "null".into()));
}

/// A protocol value as JSON (non-finite floats become `null`, bytes a string).
pub fn to_json(value: &celeriac_protocol::Value) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

/// A JSON value as a protocol value.
pub fn from_json(value: &serde_json::Value) -> Result<celeriac_protocol::Value, String> {
    celeriac_protocol::json::from_str(&value.to_string()).map_err(|e| e.to_string())
}

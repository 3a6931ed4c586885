//! What can be wrong with a configuration, said so a person can fix it.

use std::path::PathBuf;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file or the environment holds an unknown setting or a value of the
    /// wrong type. The message names the setting (`unknown field ...`).
    #[error("invalid configuration{origin}: {message}")]
    Invalid {
        /// Where it came from (`" in worker.toml"`), or empty.
        origin: String,
        /// The parser's message, naming the setting.
        message: String,
    },
    /// A setting has a well-typed but unusable value.
    #[error("setting `{setting}` = {value}: {reason}")]
    Value {
        /// The setting's Celery name.
        setting: String,
        /// The value as given.
        value: String,
        /// What is wrong and what is expected.
        reason: String,
    },
}

impl ConfigError {
    pub(crate) fn value(setting: &str, value: impl std::fmt::Display, reason: impl Into<String>) -> Self {
        ConfigError::Value { setting: setting.into(), value: value.to_string(), reason: reason.into() }
    }
}

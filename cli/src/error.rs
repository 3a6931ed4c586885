//! What can stop the `celeriac` command, each with a message that says what
//! to fix.

/// An error that ends the command with a non-zero exit status.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The settings file or environment is wrong.
    #[error(transparent)]
    Config(#[from] celeriac_config::ConfigError),
    /// A setting has a value celeriac cannot use.
    #[error("invalid setting: {0}")]
    Setting(String),
    /// The broker could not be set up.
    #[error("broker: {0}")]
    Broker(#[from] celeriac_broker::BrokerError),
    /// The result backend could not be set up.
    #[error("result backend: {0}")]
    Backend(#[from] celeriac_backend::BackendError),
    /// `--tasks` named something that is not compiled in.
    #[error("{0}")]
    Tasks(String),
    /// The beat scheduler could not start or run.
    #[error("beat: {0}")]
    Beat(#[from] celeriac_beat::BeatError),
    /// A signal handler could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// An operator command could not do what it was asked.
    #[error("{0}")]
    Operator(String),
    /// No worker answered a remote-control request in time (exit status 69,
    /// as `celery inspect`).
    #[error("No nodes replied within time constraint (is a worker running on this broker? raise -t/--timeout)")]
    NoReplies,
    /// A task sent with `--wait` failed, or its result could not be read.
    #[error("{0}")]
    TaskFailed(String),
}

impl CliError {
    /// The process exit status for this error: Celery's `EX_UNAVAILABLE`
    /// (69) when no worker answered, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::NoReplies => crate::ops::EX_UNAVAILABLE,
            _ => 1,
        }
    }
}

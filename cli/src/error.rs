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
}

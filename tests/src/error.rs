//! Why the harness could not provide a peer.

use std::path::PathBuf;

/// A peer the harness could not start or find.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The program is not installed.
    #[error("{program} not found on PATH; run scripts/setup to install it")]
    NotInstalled {
        /// The program that was looked for.
        program: String,
    },
    /// Starting or talking to the program failed at the OS level.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The server started but never answered.
    #[error("{what} did not become ready within {seconds}s; its log: {log}")]
    NotReady {
        /// The server.
        what: String,
        /// How long we waited.
        seconds: u64,
        /// The tail of its log, to show why.
        log: String,
    },
    /// A Python helper ran but failed.
    #[error("{what} failed: {output}")]
    PeerFailed {
        /// The helper.
        what: String,
        /// Its stdout and stderr, to show why.
        output: String,
    },
    /// The project virtualenv is missing.
    #[error("no Python interpreter at {0}; run scripts/setup to create the virtualenv")]
    NoVirtualenv(PathBuf),
}

impl HarnessError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        HarnessError::Io { what: what.into(), source }
    }
}

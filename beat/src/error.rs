//! What can stop beat, each said so an operator can act on it.

/// A beat failure.
#[derive(Debug, thiserror::Error)]
pub enum BeatError {
    /// An entry of `beat_schedule` (or a dynamic entry in Redis) cannot be used.
    #[error("beat_schedule.{entry}: {reason}")]
    Entry {
        /// The entry's name.
        entry: String,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// A setting beat needs has a value it cannot use.
    #[error("setting `{setting}`: {reason}")]
    Setting {
        /// The setting's name.
        setting: &'static str,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// Beat's Redis (RedBeat's layout, the lease, the health key) failed.
    #[error("beat's Redis at {url}: {doing}: {source}")]
    Redis {
        /// The URL, password masked.
        url: String,
        /// What beat was doing.
        doing: &'static str,
        /// The client's error.
        #[source]
        source: Box<redis::RedisError>,
    },
    /// The local state file cannot be read, written or locked.
    #[error("beat state file {path}: {reason}")]
    StateFile {
        /// The file.
        path: std::path::PathBuf,
        /// What happened and what to do.
        reason: String,
    },
    /// Publishing a task failed.
    #[error("sending {entry} ({task}): {source}")]
    Send {
        /// The entry's name.
        entry: String,
        /// The task's name.
        task: String,
        /// The broker's error.
        #[source]
        source: Box<celeriac_broker::BrokerError>,
    },
    /// The result backend, asked whether a previous run finished, failed.
    #[error("result backend, asked about task {task_id}: {reason}")]
    Backend {
        /// The task asked about.
        task_id: String,
        /// The backend's error.
        reason: String,
    },
}

impl BeatError {
    /// An entry error; the name and the reason are cut short, so that an
    /// entry written with megabytes of garbage still makes a one-line message.
    pub(crate) fn entry(entry: &str, reason: impl Into<String>) -> BeatError {
        BeatError::Entry { entry: crate::entry::cut(entry, 200), reason: crate::entry::cut(&reason.into(), 500) }
    }
}

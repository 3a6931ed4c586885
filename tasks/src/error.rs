//! Why a task set cannot be built.

/// A set that cannot be built from the names and configuration given.
#[derive(Debug, thiserror::Error)]
pub enum TaskSetError {
    /// No set has that name.
    #[error("unknown task set {name:?}; the available sets are: {available}")]
    UnknownSet {
        /// The name asked for.
        name: String,
        /// The names there are, comma-separated.
        available: String,
    },
    /// The Redis URL a set's tasks would use cannot be read.
    #[error("task set {set}: cannot use the Redis at {url}: {reason}")]
    Redis {
        /// The set.
        set: &'static str,
        /// The URL, password masked.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

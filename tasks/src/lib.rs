//! Ready task sets for celeriac workers, picked by name (`celeriac worker --tasks
//! builtin,conformance`):
//!
//! - [`builtin`]: `celeriac.ping` and `celeriac.health.heartbeat` (a
//!   `health:<service>` key with a TTL in Redis);
//! - [`conformance`]: the tasks of Celery's own integration suite
//!   (`t/integration/tasks.py` at Celery 5.7.0) under the same names, plus
//!   `celery.ping`, so that suite can judge a celeriac worker.
//!
//! A set is a function from a [`TaskSetConfig`] (where Redis is, the node name,
//! the heartbeat TTL) to a worker [`Registry`]; [`SETS`] lists them and
//! [`registry`] merges the sets named in a list:
//!
//! ```
//! use celeriac_tasks::{TaskSetConfig, SETS};
//!
//! let config = TaskSetConfig::default().with_redis_url("redis://localhost:6379/0");
//! let registry = celeriac_tasks::registry(celeriac_tasks::parse_set_list("builtin, conformance"), &config)?;
//! assert!(registry.get("celeriac.ping").is_some() && registry.get("t.integration.tasks.add").is_some());
//!
//! let err = celeriac_tasks::registry(["builtin", "nope"], &config).unwrap_err();
//! assert_eq!(err.to_string(), "unknown task set \"nope\"; the available sets are: builtin, conformance");
//! assert_eq!(SETS.len(), 2);
//! # Ok::<(), celeriac_tasks::TaskSetError>(())
//! ```
//!
//! The other modules are what the sets are written with, usable by any task
//! author who wants Python's behaviour: [`pyargs`] binds arguments as a Python
//! signature does, [`pyops`] does Python's `+`, `*` and `sum` on values, and
//! [`pyexc`] raises Python exceptions and retries as Celery's `self.retry`.

pub mod builtin;
pub mod config;
pub mod conformance;
pub mod error;
pub mod pyargs;
pub mod pyexc;
pub mod pyops;
mod redis_link;

use celeriac_worker::Registry;

pub use config::TaskSetConfig;
pub use error::TaskSetError;

/// A named set of tasks a worker can register.
#[derive(Clone, Copy)]
pub struct TaskSet {
    name: &'static str,
    summary: &'static str,
    build: fn(&TaskSetConfig) -> Result<Registry, TaskSetError>,
}

impl std::fmt::Debug for TaskSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskSet").field("name", &self.name).field("summary", &self.summary).finish()
    }
}

impl TaskSet {
    /// A set called `name`, built by `build`.
    pub const fn new(
        name: &'static str,
        summary: &'static str,
        build: fn(&TaskSetConfig) -> Result<Registry, TaskSetError>,
    ) -> TaskSet {
        TaskSet { name, summary, build }
    }

    /// The name `--tasks` selects it by.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// One line on what it holds, for `--help` and error messages.
    pub fn summary(&self) -> &'static str {
        self.summary
    }

    /// Its tasks, configured by `config`. Fails only on a configuration the
    /// set cannot use (a malformed Redis URL); nothing connects yet.
    pub fn registry(&self, config: &TaskSetConfig) -> Result<Registry, TaskSetError> {
        (self.build)(config)
    }
}

/// Every set, in the order `--help` lists them.
pub const SETS: &[TaskSet] = &[builtin::SET, conformance::SET];

/// The set called `name`.
pub fn set(name: &str) -> Option<&'static TaskSet> {
    SETS.iter().find(|s| s.name == name)
}

/// The names of all sets, comma-separated (`builtin, conformance`).
pub fn available() -> String {
    SETS.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
}

/// The names in a `--tasks` value: split on commas, trimmed, empty parts dropped.
pub fn parse_set_list(spec: &str) -> impl Iterator<Item = &str> {
    spec.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// The tasks of every set in `names`, merged into one registry (a name given
/// twice is built once). An unknown name fails with [`TaskSetError::UnknownSet`],
/// whose message names the available sets.
pub fn registry<I, S>(names: I, config: &TaskSetConfig) -> Result<Registry, TaskSetError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut chosen: Vec<&'static TaskSet> = Vec::new();
    for name in names {
        let name = name.as_ref();
        let found =
            set(name).ok_or_else(|| TaskSetError::UnknownSet { name: name.to_owned(), available: available() })?;
        if !chosen.iter().any(|s| s.name == found.name) {
            chosen.push(found);
        }
    }
    let mut registry = Registry::new();
    for s in chosen {
        registry.merge(s.registry(config)?);
    }
    Ok(registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_by_name() {
        assert_eq!(available(), "builtin, conformance");
        assert_eq!(set("builtin").map(TaskSet::name), Some("builtin"));
        assert!(set("Builtin").is_none());
        assert_eq!(parse_set_list(" builtin,,conformance ,").collect::<Vec<_>>(), ["builtin", "conformance"]);

        let config = TaskSetConfig::default();
        let both = registry(["builtin", "conformance", "builtin"], &config).unwrap();
        let alone = set("conformance").unwrap().registry(&config).unwrap();
        assert_eq!(both.len(), alone.len() + 2);

        match registry(["conformance", "polls"], &config) {
            Err(TaskSetError::UnknownSet { name, available }) => {
                assert_eq!((name.as_str(), available.as_str()), ("polls", "builtin, conformance"));
            }
            other => panic!("expected an unknown set, got {other:?}"),
        }
        assert!(registry(Vec::<String>::new(), &config).unwrap().is_empty());
    }

    #[test]
    fn a_bad_redis_url_fails_the_set() {
        let config = TaskSetConfig::default().with_redis_url("ftp://u:secret@h/0");
        let err = registry(["builtin"], &config).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("builtin") && text.contains("ftp://u:**@h/0") && !text.contains("secret"), "{text}");
    }
}

//! A real Python Celery worker as a test peer: `python -m celery -A <app>
//! worker` from the project virtualenv, its log kept in a file, stopped on drop.

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::LoggedProcess;
use crate::HarnessError;

/// How to start a Celery worker; see [`CeleryWorker::builder`].
#[derive(Debug, Clone)]
pub struct CeleryWorkerBuilder {
    python: PathBuf,
    app: String,
    dir: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: Option<PathBuf>,
}

impl CeleryWorkerBuilder {
    /// `-Q`: the queues to consume.
    pub fn queues(self, queues: &str) -> Self {
        self.args(&["-Q", queues])
    }

    /// Extra `celery worker` arguments (`--pool=solo`, `-n`, `--loglevel=INFO`, ...).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// An environment variable for the worker (the app reads its broker from one).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Where its output goes (default: a file in a temp location named by the app).
    pub fn log(mut self, path: PathBuf) -> Self {
        self.log = Some(path);
        self
    }

    /// Starts the worker. Gossip, mingle and heartbeats are off: tests talk to
    /// one worker and want no broadcast traffic from it.
    pub fn start(self) -> Result<CeleryWorker, HarnessError> {
        let log = self
            .log
            .unwrap_or_else(|| std::env::temp_dir().join(format!("celeriac-{}-{}.log", self.app, std::process::id())));
        let mut command = Command::new(&self.python);
        command
            .args(["-m", "celery", "-A", &self.app, "worker"])
            .args(["--without-gossip", "--without-mingle", "--without-heartbeat"])
            .args(&self.args)
            .current_dir(&self.dir)
            .env("PYTHONPATH", &self.dir)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        let process = LoggedProcess::spawn(command, &format!("celery worker -A {}", self.app), log, " ready.")?;
        Ok(CeleryWorker { process })
    }
}

/// A running Python Celery worker; derefs to its [`ChildGuard`](crate::ChildGuard) for signals
/// and stopping.
#[derive(Debug)]
pub struct CeleryWorker {
    process: LoggedProcess,
}

impl CeleryWorker {
    /// A worker of app module `app` found in `dir`, run by `python`.
    pub fn builder(python: &Path, app: &str, dir: &Path) -> CeleryWorkerBuilder {
        CeleryWorkerBuilder {
            python: python.to_path_buf(),
            app: app.into(),
            dir: dir.to_path_buf(),
            args: Vec::new(),
            env: Vec::new(),
            log: None,
        }
    }
}

impl Deref for CeleryWorker {
    type Target = LoggedProcess;
    fn deref(&self) -> &LoggedProcess {
        &self.process
    }
}

impl DerefMut for CeleryWorker {
    fn deref_mut(&mut self) -> &mut LoggedProcess {
        &mut self.process
    }
}

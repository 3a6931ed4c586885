//! A real Python Celery worker as a test peer: `python -m celery -A <app>
//! worker` from the project virtualenv, its log kept in a file, stopped on drop.

use std::io::{BufRead, BufReader, Write};
use std::ops::{Deref, DerefMut};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::child::ChildGuard;
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
        let mut file = std::fs::File::create(&log).map_err(|e| HarnessError::io("creating the worker log", e))?;
        let mut child = Command::new(&self.python)
            .args(["-m", "celery", "-A", &self.app, "worker"])
            .args(["--without-gossip", "--without-mingle", "--without-heartbeat"])
            .args(&self.args)
            .current_dir(&self.dir)
            .env("PYTHONPATH", &self.dir)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| HarnessError::io("starting celery worker", e))?;
        let stderr = child.stderr.take();
        let guard = ChildGuard::new(format!("celery worker -A {}", self.app), child);
        // A thread copies its output to the log and reports the "ready." line,
        // so readiness is an event, and the worker never blocks on a full pipe.
        let (ready_tx, ready) = mpsc::channel();
        if let Some(stderr) = stderr {
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let _ = writeln!(file, "{line}");
                    if line.contains(" ready.") {
                        let _ = ready_tx.send(());
                    }
                }
            });
        }
        Ok(CeleryWorker { guard, log, ready })
    }
}

/// A running Python Celery worker; derefs to its [`ChildGuard`] for signals
/// and stopping.
#[derive(Debug)]
pub struct CeleryWorker {
    guard: ChildGuard,
    log: PathBuf,
    ready: mpsc::Receiver<()>,
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

    /// Waits until the worker logs that it is ready (needs `--loglevel=INFO`
    /// or lower).
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), HarnessError> {
        self.ready.recv_timeout(timeout).map_err(|_| HarnessError::NotReady {
            what: "the Python Celery worker".into(),
            seconds: timeout.as_secs(),
            log: crate::net::tail(&self.log, 4000),
        })
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Deref for CeleryWorker {
    type Target = ChildGuard;
    fn deref(&self) -> &ChildGuard {
        &self.guard
    }
}

impl DerefMut for CeleryWorker {
    fn deref_mut(&mut self) -> &mut ChildGuard {
        &mut self.guard
    }
}

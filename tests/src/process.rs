//! A long-running child process whose output goes to a log file and whose
//! readiness is a line it prints: how the harness runs workers, Python's or
//! celeriac's.

use std::io::{BufRead, BufReader, Write};
use std::ops::{Deref, DerefMut};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::child::ChildGuard;
use crate::HarnessError;

/// A child process with its stdout and stderr in a log file, stopped on drop;
/// derefs to its [`ChildGuard`] for signals and stopping.
#[derive(Debug)]
pub struct LoggedProcess {
    guard: ChildGuard,
    name: String,
    log: PathBuf,
    ready: mpsc::Receiver<()>,
}

impl LoggedProcess {
    /// Starts `command` in its own process group, its stdout and stderr
    /// appended to `log`; a line containing `ready_marker` on stderr makes
    /// [`LoggedProcess::wait_ready`] return.
    pub fn spawn(mut command: Command, name: &str, log: PathBuf, ready_marker: &str) -> Result<Self, HarnessError> {
        let mut file = std::fs::File::create(&log).map_err(|e| HarnessError::io("creating a process log", e))?;
        let stdout = file.try_clone().map_err(|e| HarnessError::io("opening a process log", e))?;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| HarnessError::io(format!("starting {name}"), e))?;
        let stderr = child.stderr.take();
        let guard = ChildGuard::new(name, child);
        // A thread copies stderr to the log and reports the ready line, so
        // readiness is an event, and the child never blocks on a full pipe.
        let (ready_tx, ready) = mpsc::channel();
        let marker = ready_marker.to_owned();
        if let Some(stderr) = stderr {
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let _ = writeln!(file, "{line}");
                    if line.contains(&marker) {
                        let _ = ready_tx.send(());
                    }
                }
            });
        }
        Ok(LoggedProcess { guard, name: name.to_owned(), log, ready })
    }

    /// Waits until the process prints its ready line.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), HarnessError> {
        self.ready.recv_timeout(timeout).map_err(|_| HarnessError::NotReady {
            what: self.name.clone(),
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

impl Deref for LoggedProcess {
    type Target = ChildGuard;
    fn deref(&self) -> &ChildGuard {
        &self.guard
    }
}

impl DerefMut for LoggedProcess {
    fn deref_mut(&mut self) -> &mut ChildGuard {
        &mut self.guard
    }
}

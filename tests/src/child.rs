//! Child processes that die with the test that started them.

use std::process::{Child, ExitStatus};
use std::time::Duration;

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
///
/// The child is started in its own process group so the whole group (a Celery
/// worker and its pool processes, a shell and what it ran) goes with it.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
    name: String,
}

impl ChildGuard {
    /// Guards `child`; `name` is used in messages.
    pub fn new(name: impl Into<String>, child: Child) -> Self {
        ChildGuard { child: Some(child), name: name.into() }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The child, for reading its pipes.
    pub fn child_mut(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    /// Whether it has exited, without waiting.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends `signal` (a name such as `KILL`, `TERM`, `INT`) to the process group.
    pub fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            signal_group(signal, child.id());
        }
    }

    /// Waits up to `timeout` for the child to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        crate::wait_until(timeout, || {
            status = self.try_wait();
            status.is_some()
        });
        status
    }

    /// Stops the child: SIGTERM, up to `grace` to exit, then SIGKILL. Returns its status.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        let pid = child.id();
        signal_group("TERM", pid);
        let mut status = None;
        crate::wait_until(grace, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        if status.is_none() {
            eprintln!("harness: {} (pid {pid}) ignored SIGTERM for {grace:?}; killing it", self.name);
            send_signal("KILL", &format!("-{pid}"));
            let _ = child.kill();
            status = child.wait().ok();
        }
        status
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

/// Signals the process group led by `pid` once (a worker counts signals: a
/// second SIGTERM means a cold shutdown), or `pid` alone if it leads none.
fn signal_group(signal: &str, pid: u32) {
    if !send_signal(signal, &format!("-{pid}")) {
        send_signal(signal, &pid.to_string());
    }
}

/// `kill -<signal> <target>`; the harness avoids libc so it stays `unsafe`-free.
/// Returns whether `kill` succeeded.
pub(crate) fn send_signal(signal: &str, target: &str) -> bool {
    std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(target)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

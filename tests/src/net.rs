//! Free loopback ports and readiness polling.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use crate::HarnessError;

/// A TCP port on 127.0.0.1 that was free a moment ago (bound, then released).
pub fn free_port() -> Result<u16, HarnessError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| HarnessError::io("binding a free port", e))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| HarnessError::io("reading a bound port", e))
}

/// Polls `ready` until it returns true or `timeout` passes; returns whether it did.
///
/// For waiting on a process that gives no other signal (a server's port); tests
/// themselves await events instead.
pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Whether `program` resolves on PATH (or is a path to an executable file).
pub(crate) fn which(program: &str) -> Option<std::path::PathBuf> {
    let candidate = std::path::Path::new(program);
    if candidate.components().count() > 1 {
        return candidate.is_file().then(|| candidate.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].iter().map(Into::into))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// The last `max` bytes of a file, for error messages.
pub(crate) fn tail(path: &std::path::Path, max: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(max);
            String::from_utf8_lossy(&bytes[start..]).into_owned()
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

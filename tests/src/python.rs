//! The project virtualenv's Python, where the pinned Celery, kombu and Flower live.

use std::path::PathBuf;

use crate::HarnessError;

/// The repository root (the workspace directory).
pub fn repo_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// Where `scripts/setup` puts the virtualenv's interpreter.
pub fn venv_python() -> PathBuf {
    repo_root().join(".venv/bin/python")
}

/// The interpreter to run Python peers with: `CELERIAC_PYTHON` if set, else the
/// project virtualenv's.
pub fn python() -> Result<PathBuf, HarnessError> {
    let path = std::env::var_os("CELERIAC_PYTHON").map(PathBuf::from).unwrap_or_else(venv_python);
    if path.is_file() {
        Ok(path)
    } else {
        Err(HarnessError::NoVirtualenv(path))
    }
}

/// Sends tasks by name with Python Celery (`tests/python/call_tasks.py`) on
/// `url` (broker and result backend). `calls` is its JSON input, a list of
/// `{"name", "args"?, "kwargs"?, "options"?}`. With `wait`, returns one JSON
/// line per call with what `AsyncResult.get()` gave (waiting up to
/// `timeout_secs` each); without, lines with the ids only.
pub fn python_calls(url: &str, calls: &str, wait: bool, timeout_secs: u32) -> Result<Vec<String>, HarnessError> {
    python_calls_on(url, url, calls, wait, timeout_secs)
}

/// [`python_calls`] with the broker and the result backend apart (a Python
/// client on RabbitMQ with its results in Redis).
pub fn python_calls_on(
    broker: &str,
    backend: &str,
    calls: &str,
    wait: bool,
    timeout_secs: u32,
) -> Result<Vec<String>, HarnessError> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let timeout = timeout_secs.to_string();
    let mut command = Command::new(python()?);
    command.arg(repo_root().join("tests/python/call_tasks.py")).args(["--broker", broker, "--backend", backend]);
    command.args(["--timeout", timeout.as_str()]);
    if !wait {
        command.arg("--no-wait");
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| HarnessError::io("starting call_tasks.py", e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(calls.as_bytes()).map_err(|e| HarnessError::io("writing to call_tasks.py", e))?;
    }
    let out = child.wait_with_output().map_err(|e| HarnessError::io("waiting for call_tasks.py", e))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let output = format!("{text}\n{}", String::from_utf8_lossy(&out.stderr));
        return Err(HarnessError::PeerFailed { what: "call_tasks.py".into(), output });
    }
    Ok(text.lines().map(str::to_owned).collect())
}

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

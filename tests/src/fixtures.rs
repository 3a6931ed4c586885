//! The golden fixtures under `tests/fixtures/` (captured from real Celery and
//! kombu by `tests/fixtures/capture.py`), read as text for any test to parse.

use crate::HarnessError;

/// Every `tests/fixtures/<kind>/*.json` as `(name, text)`, sorted by name
/// (`kind` is `messages` or `results`).
pub fn fixture_files(kind: &str) -> Result<Vec<(String, String)>, HarnessError> {
    let dir = crate::repo_root().join("tests/fixtures").join(kind);
    let entries = std::fs::read_dir(&dir).map_err(|e| HarnessError::io(format!("reading {}", dir.display()), e))?;
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| HarnessError::io(format!("listing {}", dir.display()), e))?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| HarnessError::io(format!("reading {}", path.display()), e))?;
            let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            out.push((name, text));
        }
    }
    out.sort();
    Ok(out)
}

//! State without Redis: one JSON file (`beat_schedule_filename`, `-s`),
//! rewritten atomically after every change (a temporary file, fsync, rename),
//! and locked so that a second beat on the same file refuses to start instead
//! of sending every slot twice.
//!
//! ```json
//! {"celeriac_beat": 1, "entries": {"poll": {"meta": {...RedBeat's meta...}, "run": {...}}}}
//! ```

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::state::{EntryState, RunState};
use crate::BeatError;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    meta: Json,
    #[serde(default)]
    run: RunState,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct FileFormat {
    celeriac_beat: u32,
    #[serde(default)]
    entries: BTreeMap<String, Saved>,
}

/// Beat's state in a local file.
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
    /// Held for the store's lifetime (none when opened to read only).
    lock: Option<File>,
    entries: BTreeMap<String, EntryState>,
}

fn err(path: &Path, reason: impl Into<String>) -> BeatError {
    BeatError::StateFile { path: path.to_path_buf(), reason: reason.into() }
}

impl FileStore {
    /// Opens (or starts) the state file at `path` and locks it.
    pub fn open(path: &Path) -> Result<FileStore, BeatError> {
        let lock_path = PathBuf::from(format!("{}.lock", path.display()));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| err(path, format!("cannot create the lock file {}: {e}", lock_path.display())))?;
        match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                return Err(err(
                    path,
                    "another celeriac beat is using this file; run one beat per state file (-s), or share state \
                     and a leader lease through Redis (redbeat_redis_url) to run several",
                ))
            }
            Err(e) => return Err(err(path, format!("cannot lock {}: {e}", lock_path.display()))),
        }
        let mut store = FileStore::open_read_only(path)?;
        store.lock = Some(lock);
        Ok(store)
    }

    /// Reads the state file without locking it (`--dry-run`, `--explain`:
    /// they never write it, and may run beside the beat that does).
    pub fn open_read_only(path: &Path) -> Result<FileStore, BeatError> {
        let entries = match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(path, &text)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(err(path, format!("cannot read it: {e}"))),
        };
        Ok(FileStore { path: path.to_path_buf(), lock: None, entries })
    }

    fn parse(path: &Path, text: &str) -> Result<BTreeMap<String, EntryState>, BeatError> {
        let file: FileFormat = serde_json::from_str(text).map_err(|e| {
            err(path, format!("not a celeriac beat state file ({e}); move it away to start afresh (every entry then waits for its next slot)"))
        })?;
        if file.celeriac_beat != 1 {
            return Err(err(
                path,
                format!("state format {} is newer than this celeriac knows (1)", file.celeriac_beat),
            ));
        }
        file.entries
            .into_iter()
            .map(|(name, saved)| {
                let meta = saved.meta.to_string();
                let (last_run_at, total_run_count) =
                    crate::redbeat::meta_from_json(Some(&meta)).map_err(|e| err(path, format!("entry {name}: {e}")))?;
                Ok((name, EntryState { last_run_at, total_run_count, run: saved.run }))
            })
            .collect()
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The state of entry `name` (default: never seen).
    pub fn state(&self, name: &str) -> EntryState {
        self.entries.get(name).cloned().unwrap_or_default()
    }

    /// Forgets entries that are no longer configured (written with the next change).
    pub fn retain(&mut self, names: &[&str]) {
        self.entries.retain(|name, _| names.contains(&name.as_str()));
    }

    /// Records `state` for `name` and rewrites the file atomically.
    pub fn put(&mut self, name: &str, state: &EntryState) -> Result<(), BeatError> {
        if self.lock.is_none() {
            return Err(err(&self.path, "opened read-only; nothing is written"));
        }
        self.entries.insert(name.to_owned(), state.clone());
        self.write()
    }

    fn write(&self) -> Result<(), BeatError> {
        let file = FileFormat {
            celeriac_beat: 1,
            entries: self
                .entries
                .iter()
                .map(|(name, s)| {
                    let meta = crate::redbeat::meta_json(s.last_run_at, s.total_run_count);
                    (name.clone(), Saved { meta, run: s.run.clone() })
                })
                .collect(),
        };
        let text = serde_json::to_vec_pretty(&file).map_err(|e| err(&self.path, e.to_string()))?;
        let tmp = PathBuf::from(format!("{}.tmp", self.path.display()));
        let written = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)?.sync_all()?;
            }
            Ok::<(), std::io::Error>(())
        })();
        written.map_err(|e| err(&self.path, format!("cannot write it: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_a_reopen_and_a_second_beat_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("beat-state.json");
        let mut store = FileStore::open(&path).unwrap();
        let state = EntryState {
            last_run_at: Some("2026-01-01T00:00:10Z".parse().unwrap()),
            total_run_count: 3,
            run: RunState { last_task_id: Some("t-1".into()), ..RunState::default() },
        };
        store.put("poll", &state).unwrap();
        let again = FileStore::open(&path).unwrap_err().to_string();
        assert!(again.contains("another celeriac beat"), "{again}");
        drop(store);
        let store = FileStore::open(&path).unwrap();
        assert_eq!(store.state("poll"), state);
        assert_eq!(store.state("other"), EntryState::default());
    }

    #[test]
    fn a_foreign_file_is_refused_with_advice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("celerybeat-schedule");
        std::fs::write(&path, b"\x00pickled shelve").unwrap();
        let e = FileStore::open(&path).unwrap_err().to_string();
        assert!(e.contains("move it away"), "{e}");
    }
}

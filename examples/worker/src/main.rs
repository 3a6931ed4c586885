//! A worker binary of your own: your tasks as plain functions, registered by
//! name in a task set, and celeriac's whole command line around them
//! (`science-worker worker -b redis://... -Q science -c 8`, the banner,
//! signals, settings files). Python calls the tasks by name:
//!
//! ```python
//! app.send_task("science.calibrate", args=[42], kwargs={"detector": "d7"}).get()
//! ```
//!
//! Everything a task author needs comes from the one crate `celeriac`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use celeriac::{Args, Ctx, Kwargs, Registry, State, Task, TaskError, TaskSet};
use serde::{Deserialize, Serialize};

/// Keyword arguments of `science.calibrate`, as Python passes them.
#[derive(Deserialize)]
struct Calibration {
    detector: String,
    #[serde(default = "default_passes")]
    passes: u32,
}

fn default_passes() -> u32 {
    3
}

/// What `science.calibrate` returns: a dict on the Python side.
#[derive(Serialize)]
struct Calibrated {
    run: u64,
    detector: String,
    gain: f64,
}

/// CPU-bound work: a blocking function, run on the blocking pool.
fn calibrate(Args((run,)): Args<(u64,)>, Kwargs(c): Kwargs<Calibration>) -> Result<Calibrated, TaskError> {
    if c.detector.is_empty() {
        return Err(TaskError::builtin("ValueError", "detector must not be empty"));
    }
    let gain = (1..=c.passes).fold(1.0, |g, pass| g * (1.0 + 1.0 / f64::from(pass + 1) / run.max(1) as f64));
    Ok(Calibrated { run, detector: c.detector, gain })
}

/// I/O-bound work: an async function that retries while its input is not there yet.
async fn stage(ctx: Ctx, Args((path,)): Args<(String,)>) -> Result<String, TaskError> {
    if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
        return Err(ctx.retry_in(format!("{path} not there yet"), Duration::from_secs(5)));
    }
    Ok(format!("staged {path} on {}", ctx.hostname()))
}

/// Where the runs' files are: a shared resource, registered once with the
/// task set and given to every task that takes a `State<Arc<DataRoot>>`
/// (a database pool or an HTTP client is registered the same way).
struct DataRoot {
    dir: PathBuf,
}

/// What `science.checksum` returns.
#[derive(Serialize)]
struct Checksum {
    bytes: u64,
    sum: u64,
}

/// Reads a run's file under the data root. `?` on the I/O error makes it the
/// exception Python raises for it: a missing file is `FileNotFoundError`
/// with `errno` 2, as from a Python task calling `open()`.
async fn checksum(State(root): State<Arc<DataRoot>>, Args((name,)): Args<(String,)>) -> Result<Checksum, TaskError> {
    if name.contains('/') || name.starts_with('.') {
        return Err(TaskError::builtin("ValueError", format!("{name:?} is not a file name")));
    }
    let data = tokio::fs::read(root.dir.join(&name)).await?;
    Ok(Checksum { bytes: data.len() as u64, sum: data.iter().map(|&b| u64::from(b)).sum() })
}

/// The task set `--tasks science` selects (and the default, with `builtin`).
const SCIENCE: TaskSet = TaskSet::new("science", "calibration, staging and checksums", |_config| {
    let data_root = std::env::var_os("SCIENCE_DATA_ROOT").map_or_else(std::env::temp_dir, PathBuf::from);
    Ok(Registry::new()
        .with_state(Arc::new(DataRoot { dir: data_root }))
        .with(
            Task::blocking("science.calibrate", calibrate)
                .time_limit(Duration::from_secs(600))
                .queue("science")
                // For the task manifest (`science-worker tasks --json`) and Python stubs.
                .arg("run", "int")
                .kwarg("detector", "str")
                .kwarg("passes", "int"),
        )
        .with(Task::new("science.stage", stage).acks_late(true).max_retries(20).queue("science"))
        .with(Task::new("science.checksum", checksum).queue("science")))
});

fn main() -> std::process::ExitCode {
    celeriac::main_with(&[SCIENCE])
}

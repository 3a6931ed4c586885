//! A worker binary of your own: your tasks as plain functions, registered by
//! name in a task set, and celeriac's whole command line around them
//! (`science-worker worker -b redis://... -Q science -c 8`, the banner,
//! signals, settings files). Python calls the tasks by name:
//!
//! ```python
//! app.send_task("science.calibrate", args=[42], kwargs={"detector": "d7"}).get()
//! ```

use std::time::Duration;

use celeriac::TaskSet;
use celeriac_worker::{Args, Ctx, Kwargs, Registry, Task, TaskError};
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

/// The task set `--tasks science` selects (and the default, with `builtin`).
const SCIENCE: TaskSet = TaskSet::new("science", "calibration and staging", |_config| {
    Ok(Registry::new()
        .with(
            Task::blocking("science.calibrate", calibrate)
                .time_limit(Duration::from_secs(600))
                .queue("science")
                // For the task manifest (`science-worker tasks --json`) and Python stubs.
                .arg("run", "int")
                .kwarg("detector", "str")
                .kwarg("passes", "int"),
        )
        .with(Task::new("science.stage", stage).acks_late(true).max_retries(Some(20)).queue("science")))
});

fn main() -> std::process::ExitCode {
    celeriac::main_with(&[SCIENCE])
}

//! The `celeriac` command as a library: `celeriac worker` with the task sets
//! compiled in, and [`main_with`] for a user's own worker binary that adds
//! its task sets to the built-in ones (see `examples/worker/`).
//!
//! ```no_run
//! use celeriac::TaskSet;
//! use celeriac_worker::{Args, Registry, Task, TaskError};
//!
//! async fn calibrate(Args((run,)): Args<(u64,)>) -> Result<String, TaskError> {
//!     Ok(format!("run {run} calibrated"))
//! }
//!
//! const MINE: TaskSet = TaskSet::new("science", "the calibration tasks", |_| {
//!     Ok(Registry::new().with(Task::new("science.calibrate", calibrate)))
//! });
//!
//! fn main() -> std::process::ExitCode {
//!     celeriac::main_with(&[MINE]) // `my-worker worker -b redis://... --tasks builtin,science`
//! }
//! ```

mod assemble;
pub mod beat;
mod error;
mod logging;
pub mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use celeriac_tasks::TaskSet;
pub use error::CliError;

/// A Celery-protocol-compatible worker, beat scheduler and client.
#[derive(Parser, Debug)]
#[command(name = "celeriac", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a worker: consume queues and execute tasks, as `celery worker`.
    Worker(worker::WorkerArgs),
    /// Run the periodic scheduler, as `celery beat` (RedBeat-compatible with Redis).
    Beat(beat::BeatArgs),
}

/// Runs the command line with the built-in task sets and `extra` ones (a
/// user's own), returning the process exit code.
pub fn main_with(extra: &'static [TaskSet]) -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("celeriac: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match cli.command {
        Command::Worker(args) => runtime.block_on(worker::run(args, extra)),
        Command::Beat(args) => runtime.block_on(beat::run(args)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("celeriac: {e}");
            ExitCode::FAILURE
        }
    }
}

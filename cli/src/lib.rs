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
pub mod habits;
mod logging;
pub mod ops;
pub mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use celeriac_tasks::TaskSet;
pub use celeriac_worker::{Args, Ctx, Kwargs, Registry, State, Task, TaskError};
pub use error::CliError;

/// A Celery-protocol-compatible worker, beat scheduler and client.
///
/// Options follow Celery's habits: a repeated option takes its last value
/// (wrapper scripts append flags), `--opt=value` and `-c4` both work, and
/// `-Q a,b` lists queues.
#[derive(Parser, Debug)]
#[command(name = "celeriac", version, about, args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a worker: consume queues and execute tasks, as `celery worker`.
    #[command(args_override_self = true)]
    Worker(worker::WorkerArgs),
    /// Run the periodic scheduler, as `celery beat` (RedBeat-compatible with Redis).
    #[command(args_override_self = true)]
    Beat(beat::BeatArgs),
    /// The fleet at a glance: workers, their pools and tasks, queue depths
    /// (every priority, unacked), rates.
    #[command(args_override_self = true)]
    Status(ops::status::StatusArgs),
    /// `status` refreshed every 2 seconds in the terminal (`--json`: one line each).
    #[command(args_override_self = true)]
    Monitor(ops::status::MonitorArgs),
    /// Ask the workers something, as `celery inspect` (ping, stats, active, ...).
    #[command(args_override_self = true)]
    Inspect(ops::remote::RemoteArgs),
    /// Tell the workers to do something, as `celery control` (revoke, rate_limit, ...).
    #[command(args_override_self = true)]
    Control(ops::remote::RemoteArgs),
    /// Send a task by name, as `celery call`; `--wait` prints its result.
    #[command(args_override_self = true)]
    Call(ops::call::CallArgs),
    /// Show a task's state or result, as `celery result`.
    #[command(args_override_self = true)]
    Result(ops::call::ResultArgs),
    /// Remove every message waiting in queues, as `celery purge`.
    #[command(args_override_self = true)]
    Purge(ops::status::PurgeArgs),
    /// List the queues with their depths and consumers.
    #[command(args_override_self = true)]
    Queues(ops::status::QueuesArgs),
    /// List the tasks this binary registers; `--json` is the manifest for `celeriac_shim`.
    #[command(args_override_self = true)]
    Tasks(ops::manifest::TasksArgs),
}

/// Runs the command line with the built-in task sets and `extra` ones (a
/// user's own), returning the process exit code. Every command is there,
/// so `my-worker tasks --json` lists the user's tasks too.
pub fn main_with(extra: &'static [TaskSet]) -> ExitCode {
    main_from(std::env::args_os(), extra)
}

/// [`main_with`] for the given command line (the program name first).
pub fn main_from<I, T>(args: I, extra: &'static [TaskSet]) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    if let Command::Tasks(args) = cli.command {
        return exit(ops::manifest::run(args, extra));
    }
    let threads = match &cli.command {
        Command::Worker(args) => args.runtime_threads,
        _ => None,
    };
    let runtime = match runtime(threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("celeriac: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async move {
        match cli.command {
            Command::Worker(args) => worker::run(args, extra).await,
            Command::Beat(args) => beat::run(args).await,
            Command::Status(args) => ops::status::status(args).await,
            Command::Monitor(args) => ops::status::monitor(args).await,
            Command::Inspect(args) => ops::remote::run(args, false).await,
            Command::Control(args) => ops::remote::run(args, true).await,
            Command::Call(args) => ops::call::call(args).await,
            Command::Result(args) => ops::call::result(args).await,
            Command::Purge(args) => ops::status::purge(args).await,
            Command::Queues(args) => ops::status::queues(args).await,
            Command::Tasks(_) => Ok(()),
        }
    });
    // Background tasks (a blocked BRPOP, a subscription) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    exit(outcome)
}

/// The async runtime: one thread (`--runtime-threads 1`: the main loop,
/// the consumer and every task on the thread that started them), else
/// tokio's multi-thread scheduler with that many threads (default: one per
/// CPU, or `TOKIO_WORKER_THREADS`). Blocking tasks run on tokio's blocking
/// pool with either.
fn runtime(threads: Option<u16>) -> std::io::Result<tokio::runtime::Runtime> {
    // tokio panics on a value it cannot use; say what is wrong instead.
    if let Some(value) = std::env::var_os("TOKIO_WORKER_THREADS").filter(|_| threads.is_none()) {
        let usable = value.to_str().and_then(|v| v.parse::<usize>().ok()).is_some_and(|n| n > 0);
        if !usable {
            let value = value.to_string_lossy();
            return Err(std::io::Error::other(format!(
                "TOKIO_WORKER_THREADS={value:?} is not a number of threads above 0"
            )));
        }
    }
    match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread().worker_threads(usize::from(n)).enable_all().build(),
        None => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
    }
}

fn exit(outcome: Result<(), CliError>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("celeriac: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Cli {
        Cli::try_parse_from(line.split_whitespace()).unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    #[test]
    fn options_follow_clicks_habits() {
        let Command::Worker(w) =
            parse("celeriac worker -c4 -c 8 --loglevel=info -Q a,b -Q c,d -n x@%h -n y@%h").command
        else {
            panic!()
        };
        assert_eq!(w.concurrency, Some(8), "the last -c wins");
        assert_eq!(w.queues, vec!["c", "d"], "the last -Q wins, split at commas");
        assert_eq!(w.hostname, "y@%h");
        assert_eq!(w.loglevel, "info");
        let Command::Worker(w) = parse("celeriac worker --concurrency=3").command else { panic!() };
        assert_eq!(w.concurrency, Some(3));
        let Command::Inspect(i) = parse("celeriac inspect ping -t 1 -t 2.5 -d a@h -d b@h,c@h --json").command else {
            panic!()
        };
        assert_eq!(i.timeout, std::time::Duration::from_millis(2500));
        assert_eq!(i.destination, vec!["b@h", "c@h"]);
        let Command::Beat(b) = parse("celeriac beat -l DEBUG -l warning --max-interval=5").command else { panic!() };
        assert_eq!((b.loglevel.as_str(), b.max_interval), ("warning", Some(5.0)));
    }
}

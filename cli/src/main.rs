//! The `celeriac` command: `celeriac worker` runs a worker with the task sets
//! compiled in; more subcommands (`beat`, `call`, `inspect`, `control`)
//! arrive with the crates that implement them.

mod assemble;
mod error;
mod logging;
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("celeriac: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match cli.command {
        Command::Worker(args) => runtime.block_on(worker::run(args)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("celeriac: {e}");
            ExitCode::FAILURE
        }
    }
}

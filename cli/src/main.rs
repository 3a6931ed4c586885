//! The `celeriac` command. Subcommands (`worker`, `beat`, `call`, `inspect`,
//! `control`, ...) arrive with the crates that implement them.

use clap::Parser;

/// A Celery-protocol-compatible worker, beat scheduler and client.
#[derive(Parser, Debug)]
#[command(name = "celeriac", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    println!("celeriac {}: no subcommands yet; see the README for what exists", env!("CARGO_PKG_VERSION"));
}

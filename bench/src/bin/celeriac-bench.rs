//! `celeriac-bench`: runs the benchmarks (see the `celeriac_bench` crate docs)
//! and writes the table into BENCHMARKS.md and the numbers into JSON.
//! `scripts/bench` builds and runs it in release mode.
//!
//! ```text
//! celeriac-bench [--smoke] [--only celeriac,prefork,threads,rusty]
//!                [--drain N] [--enqueue N] [--latency N] [--eta N]
//!                [--celeriac-c N] [--celeriac-prefetch N] [--celeriac-threads N] [--rusty-prefetch N]
//!                [--markdown PATH | --no-markdown] [--json PATH]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use celeriac_bench::{report, Peer, Plan};

fn usage() -> ExitCode {
    eprintln!(
        "usage: celeriac-bench [--smoke] [--only celeriac,prefork,threads,rusty] [--drain N] [--enqueue N] \
         [--latency N] [--eta N] [--celeriac-c N] [--celeriac-prefetch N] [--celeriac-threads N] [--rusty-prefetch N] \
         [--markdown PATH | --no-markdown] [--json PATH]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    // The worker binaries are built beside this one.
    let dir = std::env::current_exe().ok().and_then(|exe| exe.parent().map(PathBuf::from)).unwrap_or_default();
    let (worker, rusty) = (dir.join("bench-worker"), dir.join("rusty-worker"));
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut plan =
        if args.iter().any(|a| a == "--smoke") { Plan::smoke(worker, rusty) } else { Plan::full(worker, rusty) };
    let root = celeriac_tests::repo_root();
    let mut markdown = Some(root.join("BENCHMARKS.md"));
    let mut json = root.join("target/bench/results.json");
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned();
        let mut number = |slot: &mut usize| match value().and_then(|v| v.parse().ok()) {
            Some(n) => {
                *slot = n;
                true
            }
            None => false,
        };
        let fine = match flag.as_str() {
            "--smoke" => true,
            "--drain" => number(&mut plan.drain_tasks),
            "--enqueue" => number(&mut plan.enqueue_tasks),
            "--latency" => {
                let ok = number(&mut plan.latency_tasks);
                plan.latency_warmup = plan.latency_warmup.min(plan.latency_tasks / 5);
                ok
            }
            "--eta" => number(&mut plan.eta_tasks),
            "--celeriac-c" => number(&mut plan.celeriac_concurrency),
            "--celeriac-prefetch" => number(&mut plan.celeriac_prefetch_multiplier),
            // celeriac's --runtime-threads; 0: its default (a thread per CPU).
            "--celeriac-threads" => match value().and_then(|v| v.parse::<u16>().ok()) {
                Some(n) => {
                    plan.celeriac_runtime_threads = (n > 0).then_some(n);
                    true
                }
                None => false,
            },
            "--rusty-prefetch" => number(&mut plan.rusty_prefetch),
            "--only" => match value() {
                Some(list) => {
                    let peers: Option<Vec<Peer>> = list.split(',').map(Peer::from_key).collect();
                    peers.map(|p| plan.peers = p).is_some()
                }
                None => false,
            },
            "--markdown" => value().map(|v| markdown = Some(PathBuf::from(v))).is_some(),
            "--no-markdown" => {
                markdown = None;
                true
            }
            "--json" => value().map(|v| json = PathBuf::from(v)).is_some(),
            _ => false,
        };
        if !fine {
            return usage();
        }
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("celeriac-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = match runtime.block_on(celeriac_bench::run(&plan)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("celeriac-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let section = report.markdown();
    println!("{section}");
    if let Some(path) = markdown {
        let doc = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".into());
        if let Err(e) = std::fs::write(&path, report::splice(&doc, &section)) {
            eprintln!("celeriac-bench: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        eprintln!("celeriac-bench: table written to {}", path.display());
    }
    if let Some(parent) = json.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let text = serde_json::to_string_pretty(&report.json()).unwrap_or_default();
    if let Err(e) = std::fs::write(&json, text + "\n") {
        eprintln!("celeriac-bench: cannot write {}: {e}", json.display());
        return ExitCode::FAILURE;
    }
    eprintln!("celeriac-bench: numbers written to {}", json.display());
    let failures = report.failures();
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        for f in failures {
            eprintln!("celeriac-bench: {f}");
        }
        ExitCode::FAILURE
    }
}

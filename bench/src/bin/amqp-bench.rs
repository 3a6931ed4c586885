//! `scripts/bench --amqp`: the AMQP drain rows (see `celeriac_bench::amqp`):
//! celeriac, Python Celery prefork and rusty-celery on one private RabbitMQ
//! node, the table written into BENCHMARKS.md between its AMQP markers.
//!
//! ```text
//! amqp-bench [--smoke] [--drain N] [--only celeriac,prefork,rusty] [--no-markdown]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use celeriac_bench::{amqp, Peer, Plan};

const BEGIN: &str = "<!-- scripts/bench --amqp: table begin -->";
const END: &str = "<!-- scripts/bench --amqp: table end -->";

fn main() -> ExitCode {
    let dir = std::env::current_exe().ok().and_then(|exe| exe.parent().map(PathBuf::from)).unwrap_or_default();
    let (worker, rusty) = (dir.join("bench-worker"), dir.join("rusty-worker"));
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut plan =
        if args.iter().any(|a| a == "--smoke") { Plan::smoke(worker, rusty) } else { Plan::full(worker, rusty) };
    plan.peers = vec![Peer::Celeriac, Peer::PythonPrefork, Peer::Rusty];
    let mut markdown = Some(celeriac_tests::repo_root().join("BENCHMARKS.md"));
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let fine = match flag.as_str() {
            "--smoke" => true,
            "--drain" => it.next().and_then(|v| v.parse().ok()).map(|n| plan.drain_tasks = n).is_some(),
            "--only" => it
                .next()
                .and_then(|list| list.split(',').map(Peer::from_key).collect::<Option<Vec<_>>>())
                .map(|p| plan.peers = p)
                .is_some(),
            "--no-markdown" => {
                markdown = None;
                true
            }
            _ => false,
        };
        if !fine {
            eprintln!("usage: amqp-bench [--smoke] [--drain N] [--only celeriac,prefork,rusty] [--no-markdown]");
            return ExitCode::from(2);
        }
    }
    let node = match celeriac_tests::RabbitNode::start() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("amqp-bench: cannot start RabbitMQ: {e}");
            return ExitCode::FAILURE;
        }
    };
    let version = node.ctl(&["version"]).map(|v| v.trim().to_owned()).unwrap_or_else(|_| "?".into());
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("amqp-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _ = std::fs::create_dir_all(&plan.log_dir);
    let machine = celeriac_bench::machine::Machine::probe(&plan);
    let mut runs = Vec::new();
    for peer in plan.peers.clone() {
        if peer.is_python() && plan.python.is_none() {
            runs.push((peer, Err("no Python virtualenv (.venv); run scripts/setup".to_owned())));
            continue;
        }
        eprintln!("amqp-bench: {} — drain {} tasks", peer.label(), plan.drain_tasks);
        let run = runtime.block_on(amqp::drain(&plan, &node, peer)).map_err(|e| e.to_string());
        if let Ok(d) = &run {
            eprintln!("amqp-bench: {} — {:.0} tasks/s", peer.label(), d.rate());
        }
        runs.push((peer, run));
    }
    let section = amqp::markdown(&plan, &runs, &version, &machine, celeriac_bench::machine::load_average());
    println!("{section}");
    if let Some(path) = markdown {
        let doc = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".into());
        let block = format!("{BEGIN}\n{section}{END}");
        let new = match (doc.find(BEGIN), doc.find(END)) {
            (Some(b), Some(e)) if e > b => format!("{}{block}{}", &doc[..b], &doc[e + END.len()..]),
            _ => format!("{}\n\n## AMQP (RabbitMQ)\n\n{block}\n", doc.trim_end()),
        };
        if let Err(e) = std::fs::write(&path, new) {
            eprintln!("amqp-bench: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if runs.iter().any(|(_, r)| r.is_err()) {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

//! `scripts/bench`: celeriac measured beside the workers a team would
//! otherwise run, on one private Redis, the same workload, in one run.
//!
//! The peers are Python Celery (prefork `-c 2`, and threads) and rusty-celery
//! (the `celery` crate). Each is started in turn by the harness
//! ([`peers`]); the phases ([`phases`]) are:
//!
//! - **drain**: N pre-queued no-op tasks (`acks_late`, results ignored), time
//!   from worker start until the queue and the unacked bookkeeping are empty;
//! - **drain with results**: the same with results in the Redis backend;
//! - **enqueue**: tasks per second sent by the Rust producer (an awaited loop,
//!   and with sends in flight together), Python's `apply_async` in a loop, and
//!   rusty-celery's `send_task` in a loop;
//! - **latency**: enqueue-to-start and enqueue-to-result at a steady rate on
//!   an idle worker;
//! - **memory**: RSS when idle, and while holding N ETA tasks.
//!
//! [`report`] writes the table into BENCHMARKS.md and everything into JSON.
//! The smoke test (`tests/smoke.rs`) runs the same code with a few thousand
//! tasks and no timing assertions.

pub mod amqp;
pub mod load;
pub mod machine;
pub mod peers;
pub mod phases;
pub mod procs;
pub mod report;

use std::path::PathBuf;
use std::time::Duration;

pub use peers::Peer;
pub use report::Report;

/// The list rusty-celery's `bench.stamp` pushes `"<sent> <started>"` to (and
/// transport-drain `"<sent> <received>"`).
pub const RUSTY_STAMPS: &str = "bench:stamps";

/// Reports that the `bench.stamp` sent at `sent` was in hand at `at`: the
/// line `"<sent> <at>"` on [`RUSTY_STAMPS`], for the latency phase of the
/// peers without a result backend.
pub async fn push_stamp(conn: &mut redis::aio::MultiplexedConnection, sent: f64, at: f64) -> redis::RedisResult<()> {
    redis::cmd("RPUSH").arg(RUSTY_STAMPS).arg(format!("{sent} {at}")).query_async(conn).await
}

/// The wall-clock time as Unix seconds (what `time.time()` gives in Python).
pub fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Why a phase (or the whole run) could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Redis answered with an error or the connection broke.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The celeriac producer failed.
    #[error("producer: {0}")]
    Broker(#[from] celeriac_broker::BrokerError),
    /// A server or worker could not be started.
    #[error("harness: {0}")]
    Harness(#[from] celeriac_tests::HarnessError),
    /// A file or process could not be used.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// Anything else, said in words.
    #[error("{0}")]
    Other(String),
}

impl BenchError {
    /// An I/O error while doing `what`.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> BenchError {
        BenchError::Io { what: what.into(), source }
    }
}

/// What a run measures, and with what.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Tasks pre-queued for each drain.
    pub drain_tasks: usize,
    /// Tasks each producer sends in the enqueue phase.
    pub enqueue_tasks: usize,
    /// Tasks sent in the latency phase (the first `latency_warmup` are not counted).
    pub latency_tasks: usize,
    /// Latency samples dropped at the start.
    pub latency_warmup: usize,
    /// Tasks per second in the latency phase.
    pub latency_rate: u32,
    /// ETA tasks held in the memory phase.
    pub eta_tasks: usize,
    /// The workers to measure, in order.
    pub peers: Vec<Peer>,
    /// celeriac's `-c`.
    pub celeriac_concurrency: usize,
    /// celeriac's `--prefetch-multiplier`.
    pub celeriac_prefetch_multiplier: usize,
    /// celeriac's `--runtime-threads` (None: its default, one per CPU).
    pub celeriac_runtime_threads: Option<u16>,
    /// Python Celery's `-c` (prefork and threads).
    pub python_concurrency: usize,
    /// rusty-celery's prefetch count.
    pub rusty_prefetch: usize,
    /// The `bench-worker` binary (celeriac with the bench tasks).
    pub bench_worker: PathBuf,
    /// The `rusty-worker` binary.
    pub rusty_worker: PathBuf,
    /// The `transport-drain` binary (celeriac's transport alone); drained
    /// after the peers when [`Plan::transport`] is set.
    pub transport_drain: PathBuf,
    /// Also drain with celeriac's transport alone (where the time goes).
    pub transport: bool,
    /// How many times a short drain (under 15 s) is run; the median counts.
    pub drain_repeats: usize,
    /// Also drain with celeriac at this `-c` and its default runtime (the
    /// defaults a user gets on this machine), to show what the settings do.
    pub celeriac_narrow: Option<usize>,
    /// Also drain with celeriac's `-c` and its default runtime (one thread
    /// per CPU), to show what `--runtime-threads` does.
    pub celeriac_multi: bool,
    /// The Python interpreter with Celery (None: the Python peers are skipped).
    pub python: Option<PathBuf>,
    /// `bench/python`.
    pub python_dir: PathBuf,
    /// Where worker logs go.
    pub log_dir: PathBuf,
    /// Longest a single drain or wait may take before it counts as failed.
    pub phase_timeout: Duration,
    /// How long a worker is left alone before idle memory is read.
    pub settle: Duration,
}

impl Plan {
    /// The full benchmark of issue 7 (50,000 drained tasks, 10,000 ETA tasks...).
    pub fn full(bench_worker: PathBuf, rusty_worker: PathBuf) -> Plan {
        let root = celeriac_tests::repo_root();
        Plan {
            drain_tasks: 50_000,
            enqueue_tasks: 20_000,
            latency_tasks: 5_000,
            latency_warmup: 500,
            latency_rate: 1_000,
            eta_tasks: 10_000,
            peers: Peer::ALL.to_vec(),
            celeriac_concurrency: 64,
            celeriac_prefetch_multiplier: 4,
            celeriac_runtime_threads: Some(1),
            python_concurrency: 2,
            rusty_prefetch: 8,
            transport_drain: bench_worker.with_file_name("transport-drain"),
            transport: true,
            celeriac_narrow: std::thread::available_parallelism().map(usize::from).ok().or(Some(2)),
            celeriac_multi: true,
            drain_repeats: 3,
            bench_worker,
            rusty_worker,
            python: celeriac_tests::python().ok(),
            python_dir: root.join("bench/python"),
            log_dir: root.join("target/bench"),
            phase_timeout: Duration::from_secs(900),
            settle: Duration::from_secs(2),
        }
    }

    /// The CI smoke version: every phase and peer, a few thousand tasks.
    pub fn smoke(bench_worker: PathBuf, rusty_worker: PathBuf) -> Plan {
        Plan {
            drain_tasks: 500,
            enqueue_tasks: 300,
            latency_tasks: 200,
            latency_warmup: 50,
            eta_tasks: 200,
            peers: vec![Peer::Celeriac, Peer::PythonPrefork, Peer::Rusty],
            phase_timeout: Duration::from_secs(120),
            settle: Duration::from_millis(300),
            drain_repeats: 1,
            ..Plan::full(bench_worker, rusty_worker)
        }
    }
}

/// Runs every phase for every peer of `plan` against one private Redis.
/// A phase that fails for one peer is recorded as failed; the run goes on.
pub async fn run(plan: &Plan) -> Result<Report, BenchError> {
    std::fs::create_dir_all(&plan.log_dir).map_err(|e| BenchError::io("creating the log dir", e))?;
    let redis = celeriac_tests::RedisServer::start()?;
    let mut report = Report::new(plan, machine::Machine::probe(plan));
    let env = phases::Env::connect(plan, &redis).await?;
    for peer in plan.peers.iter().copied() {
        if peer.is_python() && plan.python.is_none() {
            report.skip(peer, "no Python virtualenv (.venv); run scripts/setup");
            continue;
        }
        eprintln!("bench: {} — drain", peer.label());
        report.drain.insert(peer, phases::drain_median(&env, peer, false).await.map_err(|e| e.to_string()));
        eprintln!("bench: {} — drain with results", peer.label());
        report.drain_results.insert(peer, phases::drain_median(&env, peer, true).await.map_err(|e| e.to_string()));
        eprintln!("bench: {} — latency", peer.label());
        report.latency.insert(peer, phases::latency(&env, peer).await.map_err(|e| e.to_string()));
        eprintln!("bench: {} — memory", peer.label());
        report.memory.insert(peer, phases::memory(&env, peer).await.map_err(|e| e.to_string()));
    }
    if let Some(c) = plan.celeriac_narrow.filter(|_| plan.peers.contains(&Peer::Celeriac)) {
        eprintln!("bench: celeriac -c {c} — drain");
        let mut narrow = env.clone();
        narrow.plan.celeriac_concurrency = c;
        narrow.plan.celeriac_runtime_threads = None;
        report.narrow =
            Some((c, phases::drain_median(&narrow, Peer::Celeriac, false).await.map_err(|e| e.to_string())));
    }
    if plan.celeriac_multi && plan.celeriac_runtime_threads.is_some() && plan.peers.contains(&Peer::Celeriac) {
        eprintln!("bench: celeriac, default runtime — drain");
        let mut multi = env.clone();
        multi.plan.celeriac_runtime_threads = None;
        report.multi = Some(phases::drain_median(&multi, Peer::Celeriac, false).await.map_err(|e| e.to_string()));
    }
    if plan.transport {
        eprintln!("bench: {} — drain", Peer::Transport.label());
        report.transport = Some(phases::drain_median(&env, Peer::Transport, false).await.map_err(|e| e.to_string()));
        eprintln!("bench: {} — latency", Peer::Transport.label());
        report.transport_latency = Some(phases::latency(&env, Peer::Transport).await.map_err(|e| e.to_string()));
        eprintln!("bench: {} — latency", Peer::Bare.label());
        report.bare_latency = Some(phases::latency(&env, Peer::Bare).await.map_err(|e| e.to_string()));
    }
    eprintln!("bench: enqueue");
    report.enqueue = phases::enqueue(&env).await;
    report.finish(machine::load_average());
    Ok(report)
}

//! The workers under test and how each is started: celeriac (`bench-worker`),
//! Python Celery with the prefork pool and with threads, and rusty-celery
//! (`rusty-worker`). Every one runs the same task names with `acks_late`, at
//! log level WARNING (no per-task log lines anywhere).

use std::process::Command;

use celeriac_tests::LoggedProcess;

use crate::{BenchError, Plan};

/// A worker implementation under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    /// celeriac.
    Celeriac,
    /// Python Celery, prefork pool.
    PythonPrefork,
    /// Python Celery, threads pool.
    PythonThreads,
    /// rusty-celery (the `celery` crate).
    Rusty,
    /// celeriac's Redis transport alone: consume and ack, no task runtime
    /// (a diagnostic, not a worker).
    Transport,
    /// A bare `BRPOP` loop on the queue, recording nothing in `unacked`:
    /// the floor of enqueue → delivered on this machine (a diagnostic).
    Bare,
}

impl Peer {
    /// Every peer, in table order.
    pub const ALL: [Peer; 4] = [Peer::Celeriac, Peer::PythonPrefork, Peer::PythonThreads, Peer::Rusty];

    /// Short name (JSON keys, command line).
    pub fn key(self) -> &'static str {
        match self {
            Peer::Celeriac => "celeriac",
            Peer::PythonPrefork => "prefork",
            Peer::PythonThreads => "threads",
            Peer::Rusty => "rusty",
            Peer::Transport => "transport",
            Peer::Bare => "bare",
        }
    }

    /// Parses [`Peer::key`].
    pub fn from_key(key: &str) -> Option<Peer> {
        Peer::ALL.into_iter().find(|p| p.key() == key)
    }

    /// Column title.
    pub fn label(self) -> &'static str {
        match self {
            Peer::Celeriac => "celeriac",
            Peer::PythonPrefork => "Python prefork",
            Peer::PythonThreads => "Python threads",
            Peer::Rusty => "rusty-celery",
            Peer::Transport => "celeriac transport only",
            Peer::Bare => "bare BRPOP client",
        }
    }

    /// Whether it is a Python Celery worker.
    pub fn is_python(self) -> bool {
        matches!(self, Peer::PythonPrefork | Peer::PythonThreads)
    }

    /// Whether it can store results in the Redis backend.
    pub fn stores_results(self) -> bool {
        !matches!(self, Peer::Rusty | Peer::Transport | Peer::Bare)
    }

    /// The hashes that hold its in-flight messages: kombu's `unacked` (and its
    /// index), or rusty-celery's own process map.
    pub fn inflight_keys(self, queue: &str) -> Vec<String> {
        match self {
            Peer::Rusty => vec![format!("_celery.{queue}_process_map")],
            Peer::Bare => Vec::new(),
            _ => vec!["unacked".into()],
        }
    }

    /// How it was configured, for the table.
    pub fn settings(self, plan: &Plan) -> String {
        match self {
            Peer::Celeriac => format!(
                "`-c {} --prefetch-multiplier {}{}`, async no-op",
                plan.celeriac_concurrency,
                plan.celeriac_prefetch_multiplier,
                plan.celeriac_runtime_threads.map(|n| format!(" --runtime-threads {n}")).unwrap_or_default()
            ),
            Peer::PythonPrefork => format!("`-P prefork -c {}`, prefetch multiplier 4", plan.python_concurrency),
            Peer::PythonThreads => format!("`-P threads -c {}`, prefetch multiplier 4", plan.python_concurrency),
            Peer::Rusty => format!("prefetch_count {}", plan.rusty_prefetch),
            Peer::Transport => format!(
                "`RedisBroker` consumer, prefetch {}, every delivery acked at once",
                plan.celeriac_concurrency * plan.celeriac_prefetch_multiplier
            ),
            Peer::Bare => "one redis-rs connection in `BRPOP`, nothing recorded, nothing acked".into(),
        }
    }

    /// Starts it on `queue` of `broker`, storing results in `backend` if given.
    pub fn spawn(self, plan: &Plan, broker: &str, backend: Option<&str>, queue: &str) -> Result<Worker, BenchError> {
        let log = plan.log_dir.join(format!("{}-{queue}.log", self.key()));
        let command = match self {
            Peer::Celeriac => {
                let mut c = Command::new(&plan.bench_worker);
                c.args(["worker", "-b", broker, "-Q", queue, "-n", "bench@%h", "-l", "WARNING", "--tasks", "bench"])
                    .args(["-c", &plan.celeriac_concurrency.to_string()])
                    .args(["--prefetch-multiplier", &plan.celeriac_prefetch_multiplier.to_string()])
                    .env("CELERIAC_TASK_ACKS_LATE", "1");
                if let Some(n) = plan.celeriac_runtime_threads {
                    c.args(["--runtime-threads", &n.to_string()]);
                }
                match backend {
                    Some(url) => c.args(["--result-backend", url]),
                    None => c.env("CELERIAC_TASK_IGNORE_RESULT", "1"),
                };
                c
            }
            Peer::PythonPrefork | Peer::PythonThreads => {
                let python = plan.python.as_ref().ok_or_else(|| BenchError::Other("no Python".into()))?;
                let pool = if self == Peer::PythonPrefork { "prefork" } else { "threads" };
                let mut c = Command::new(python);
                c.args(["-m", "celery", "-A", "bench_app", "worker", "-Q", queue, "-P", pool, "-l", "WARNING"])
                    .args(["-c", &plan.python_concurrency.to_string(), "-n", "bench@%h"])
                    .args(["--without-gossip", "--without-mingle", "--without-heartbeat"])
                    .current_dir(&plan.python_dir)
                    .env("PYTHONPATH", &plan.python_dir)
                    .env("BENCH_BROKER", broker)
                    .env("BENCH_BACKEND", backend.unwrap_or(""));
                c
            }
            Peer::Transport => {
                let mut c = Command::new(&plan.transport_drain);
                let prefetch = plan.celeriac_concurrency * plan.celeriac_prefetch_multiplier;
                c.args([broker, queue, &prefetch.to_string()]);
                c
            }
            Peer::Bare => {
                let mut c = Command::new(&plan.transport_drain);
                c.args([broker, queue, "0", "--bare"]);
                c
            }
            Peer::Rusty => {
                if backend.is_some() {
                    return Err(BenchError::Other("n/a: rusty-celery 0.5 has no result backend".into()));
                }
                let mut c = Command::new(&plan.rusty_worker);
                c.args(["worker", broker, queue, &plan.rusty_prefetch.to_string()]);
                c
            }
        };
        // Readiness is checked by the phases (a warm-up task), not by a log line.
        let process = LoggedProcess::spawn(command, self.label(), log, "\u{0}never")?;
        Ok(Worker { process })
    }
}

/// A running worker; stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Worker {
    /// The process.
    pub process: LoggedProcess,
}

impl Worker {
    /// The main process id.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Whether it exited already (a crash, a bad flag).
    pub fn exited(&mut self) -> bool {
        self.process.try_wait().is_some()
    }

    /// The end of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = self.process.log();
        let start = log.len().saturating_sub(1500);
        log.get(start..).unwrap_or(&log).to_owned()
    }

    /// Warm shutdown, killed after 60 s.
    pub fn stop(mut self) {
        self.process.stop(std::time::Duration::from_secs(60));
    }
}

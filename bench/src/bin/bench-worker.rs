//! The celeriac side of the benchmarks: `celeriac worker`'s whole command line
//! (`bench-worker worker -b ... -Q ... -c ...`) with the bench task set added:
//!
//! - `bench.noop()`: does nothing and returns `None`;
//! - `bench.stamp(sent)`: returns the wall-clock time (Unix seconds) at which
//!   it started, so the harness can measure enqueue-to-start from the result.
//!
//! Python's `bench/python/bench_app.py` and `rusty-worker` register the same names.

use celeriac::TaskSet;
use celeriac_worker::{Args, Registry, Task, TaskError};

async fn noop() -> Result<(), TaskError> {
    Ok(())
}

async fn stamp(Args((_sent,)): Args<(f64,)>) -> Result<f64, TaskError> {
    Ok(celeriac_bench::unix_now())
}

/// The bench task set (`--tasks bench`, and the default besides `builtin`).
const BENCH: TaskSet = TaskSet::new("bench", "bench.noop and bench.stamp, for scripts/bench", |_config| {
    Ok(Registry::new().with(Task::new("bench.noop", noop)).with(Task::new("bench.stamp", stamp)))
});

fn main() -> std::process::ExitCode {
    celeriac::main_with(&[BENCH])
}

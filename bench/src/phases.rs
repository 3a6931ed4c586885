//! The benchmark phases, each run for one peer on a flushed Redis: drain
//! (with and without results), latency, memory; and the enqueue phase for
//! every producer.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use celeriac_broker::{Producer, SendOptions};
use celeriac_protocol::Value;
use celeriac_tests::RedisServer;

use crate::load::{self, Probe, ResultWatch};
use crate::peers::{Peer, Worker};
use crate::report::{Drain, Enqueue, Latency, Memory, Outcome};
use crate::{procs, BenchError, Plan};

/// What every phase needs: the plan, the Redis URLs and the harness's clients.
#[derive(Clone)]
pub struct Env {
    /// The plan.
    pub plan: Plan,
    /// The broker (database 0).
    pub broker: String,
    /// The result backend (database 1).
    pub backend: String,
    /// Harness commands.
    pub probe: Probe,
    /// The celeriac producer that fills queues for every peer.
    pub producer: Producer,
}

impl Env {
    /// Connects to the private Redis.
    pub async fn connect(plan: &Plan, redis: &RedisServer) -> Result<Env, BenchError> {
        let broker = redis.url_db(0);
        Ok(Env {
            plan: plan.clone(),
            probe: Probe::connect(&broker).await?,
            producer: load::producer(&broker)?,
            backend: redis.url_db(1),
            broker,
        })
    }

    fn spawn(&self, peer: Peer, results: bool, queue: &str) -> Result<Worker, BenchError> {
        let backend = results.then_some(self.backend.as_str());
        peer.spawn(&self.plan, &self.broker, backend, queue)
    }

    /// Sends one `bench.noop` and waits until `worker` has done it: the
    /// worker is up and consuming.
    async fn warm_up(&self, peer: Peer, worker: &mut Worker, queue: &str) -> Result<(), BenchError> {
        load::send_many(&self.producer, "bench.noop", vec![], &load::to_queue(queue), 1, 1).await?;
        let inflight = peer.inflight_keys(queue);
        let waited = self
            .probe
            .wait_drained(queue, &inflight, Instant::now(), Duration::from_secs(120), || !worker.exited())
            .await;
        if let Err(e) = waited {
            return Err(BenchError::Other(format!("{} did not start: {e}\n{}", peer.label(), worker.log_tail())));
        }
        Ok(())
    }
}

/// Drains `plan.drain_tasks` pre-queued no-op tasks; with `results`, stores them.
pub async fn drain(env: &Env, peer: Peer, results: bool) -> Result<Drain, BenchError> {
    if results && !peer.stores_results() {
        return Err(BenchError::Other("n/a: rusty-celery 0.5 has no result backend".into()));
    }
    let queue = "bench.drain";
    let tasks = env.plan.drain_tasks;
    env.probe.flush().await?;
    load::send_many(&env.producer, "bench.noop", vec![], &load::to_queue(queue), tasks, 256).await?;
    let queued = env.probe.llen(queue).await?;
    if queued != tasks as u64 {
        return Err(BenchError::Other(format!("queued {queued} of {tasks} tasks")));
    }
    let inflight = peer.inflight_keys(queue);
    let redis_cpu = env.probe.server_cpu().await?;
    env.probe.reset_stats().await?;
    let (busy, own) = (procs::machine_busy_seconds(), procs::own_cpu_seconds());
    let start = Instant::now();
    let mut worker = env.spawn(peer, results, queue)?;
    let pid = worker.pid();
    let waited = env.probe.wait_drained(queue, &inflight, start, env.plan.phase_timeout, || !worker.exited()).await;
    let worker_cpu_s = procs::cpu_seconds(pid);
    let peak = procs::memory(pid);
    let redis_cpu_s = env.probe.server_cpu().await? - redis_cpu;
    let redis_commands = env.probe.command_stats().await?;
    let other_cpu_s =
        (procs::machine_busy_seconds() - busy) - (procs::own_cpu_seconds() - own) - worker_cpu_s - redis_cpu_s;
    let elapsed = match waited {
        Ok(d) => d,
        Err(e) => return Err(BenchError::Other(format!("{e}\n{}", worker.log_tail()))),
    };
    let results_stored = if results { Some(env.probe.dbsize(1).await?) } else { None };
    worker.stop();
    Ok(Drain {
        tasks,
        seconds: elapsed.as_secs_f64(),
        worker_cpu_s,
        redis_cpu_s,
        peak_hwm_kb: peak.hwm_kb,
        results_stored,
        redis_commands,
        other_cpu_s,
        rates: vec![tasks as f64 / elapsed.as_secs_f64()],
    })
}

/// [`drain`], repeated up to `plan.drain_repeats` times while a run takes
/// under 15 s (a 2-second drain, process start included, varies from run to
/// run); the run with the median rate, carrying every run's rate.
pub async fn drain_median(env: &Env, peer: Peer, results: bool) -> Result<Drain, BenchError> {
    let mut runs = Vec::new();
    while runs.len() < env.plan.drain_repeats.max(1) {
        let d = drain(env, peer, results).await?;
        let long = d.seconds >= 15.0;
        runs.push(d);
        if long {
            break;
        }
    }
    let rates: Vec<f64> = runs.iter().map(Drain::rate).collect();
    runs.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    let mut median = runs.swap_remove(runs.len() / 2);
    median.rates = rates;
    Ok(median)
}

/// Percentile `p` (0..=100) of sorted `values`, nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Sends `bench.stamp` at a steady rate to an idle worker and measures
/// enqueue-to-start and enqueue-to-result.
pub async fn latency(env: &Env, peer: Peer) -> Result<Latency, BenchError> {
    let queue = "bench.latency";
    let plan = &env.plan;
    env.probe.flush().await?;
    let results = peer.stores_results();
    let mut worker = env.spawn(peer, results, queue)?;
    env.warm_up(peer, &mut worker, queue).await?;
    tokio::time::sleep(plan.settle.min(Duration::from_millis(500))).await;
    let watch = if results { Some(ResultWatch::start(&env.broker).await?) } else { None };
    let sent = load::send_steady(&env.producer, queue, plan.latency_tasks, plan.latency_rate).await?;
    // (sent, start, result) per task.
    let mut samples: Vec<(f64, f64, Option<f64>)> = Vec::with_capacity(sent.len());
    match watch {
        Some(watch) => {
            let seen = watch.finish(sent.len(), Duration::from_secs(60)).await;
            for (id, at) in &sent {
                if let Some((Value::Float(started), seen_at)) = seen.get(id) {
                    samples.push((*at, *started, Some(*seen_at)));
                }
            }
        }
        None => {
            let deadline = Instant::now() + Duration::from_secs(60);
            while env.probe.llen(crate::RUSTY_STAMPS).await? < sent.len() as u64 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            for line in env.probe.lrange(crate::RUSTY_STAMPS).await? {
                let mut parts = line.split_whitespace().map(|v| v.parse::<f64>().unwrap_or(f64::NAN));
                if let (Some(at), Some(started)) = (parts.next(), parts.next()) {
                    samples.push((at, started, None));
                }
            }
        }
    }
    worker.stop();
    let missing = sent.len().saturating_sub(samples.len());
    samples.sort_by(|a, b| a.0.total_cmp(&b.0));
    let counted: Vec<_> = samples.iter().skip(plan.latency_warmup).collect();
    if counted.is_empty() {
        return Err(BenchError::Other(format!("no latency samples ({missing} of {} tasks unseen)", sent.len())));
    }
    let ms = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (percentile(&v, 50.0) * 1e3, percentile(&v, 99.0) * 1e3, v.last().copied().unwrap_or(f64::NAN) * 1e3)
    };
    let (start_p50_ms, start_p99_ms, start_max_ms) = ms(counted.iter().map(|(at, s, _)| s - at).collect());
    let result = results.then(|| ms(counted.iter().filter_map(|(at, _, r)| r.map(|r| r - at)).collect()));
    Ok(Latency {
        rate: plan.latency_rate,
        samples: counted.len(),
        missing,
        start_p50_ms,
        start_p99_ms,
        start_max_ms,
        result_p50_ms: result.map(|r| r.0),
        result_p99_ms: result.map(|r| r.1),
    })
}

/// RSS when idle, and while holding `plan.eta_tasks` ETA tasks.
pub async fn memory(env: &Env, peer: Peer) -> Result<Memory, BenchError> {
    let queue = "bench.eta";
    let tasks = env.plan.eta_tasks;
    env.probe.flush().await?;
    let mut worker = env.spawn(peer, false, queue)?;
    let pid = worker.pid();
    env.warm_up(peer, &mut worker, queue).await?;
    tokio::time::sleep(env.plan.settle).await;
    let idle = procs::memory(pid);
    // Due in half an hour: within the default visibility timeout (1 h).
    let later = SendOptions { countdown: Some(Duration::from_secs(1800)), ..load::to_queue(queue) };
    let start = Instant::now();
    load::send_many(&env.producer, "bench.noop", vec![], &later, tasks, 64).await?;
    let inflight = peer.inflight_keys(queue);
    let held = loop {
        let waiting = env.probe.llen(queue).await?;
        let mut held = 0;
        for key in &inflight {
            held += env.probe.hlen(key).await?;
        }
        if (waiting == 0 && held >= tasks as u64) || start.elapsed() > Duration::from_secs(300) || worker.exited() {
            break held;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(env.plan.settle / 2).await;
    let eta = procs::memory(pid);
    let log = worker.log_tail();
    worker.stop();
    if held < tasks as u64 {
        return Err(BenchError::Other(format!("held only {held} of {tasks} ETA tasks after 300 s\n{log}")));
    }
    Ok(Memory {
        idle_rss_kb: idle.rss_kb,
        idle_hwm_kb: idle.hwm_kb,
        eta_tasks: tasks,
        eta_rss_kb: eta.rss_kb,
        eta_hwm_kb: eta.hwm_kb,
        processes: idle.processes,
    })
}

/// Key of the celeriac producer's awaited-loop row in [`enqueue`]'s result.
pub const ENQUEUE_RUST_LOOP: &str = "celeriac Producer, awaited loop";
/// Key of the celeriac producer's awaited loop on a current-thread runtime
/// (no wake-ups between threads: what a sender-only program gets with
/// `#[tokio::main(flavor = "current_thread")]`).
pub const ENQUEUE_RUST_LOOP_CURRENT: &str = "celeriac Producer, awaited loop, current-thread runtime";
/// Key of the celeriac producer's row with sends in flight together.
pub const ENQUEUE_RUST_CONCURRENT: &str = "celeriac Producer, 256 sends in flight";
/// Key of Python's row.
pub const ENQUEUE_PYTHON: &str = "Python apply_async loop";
/// Key of rusty-celery's row.
pub const ENQUEUE_RUSTY: &str = "rusty-celery send_task loop";

/// Tasks per second sent by each producer (one warm-up send each, not timed).
pub async fn enqueue(env: &Env) -> BTreeMap<&'static str, Outcome<Enqueue>> {
    let mut out = BTreeMap::new();
    let count = env.plan.enqueue_tasks;
    let queue = "bench.enqueue";
    for (key, in_flight) in [(ENQUEUE_RUST_LOOP, 1), (ENQUEUE_RUST_CONCURRENT, 256)] {
        let run = async {
            env.probe.flush().await?;
            let options = load::to_queue(queue);
            load::send_many(&env.producer, "bench.noop", vec![], &options, 1, 1).await?;
            let took = load::send_many(&env.producer, "bench.noop", vec![], &options, count, in_flight).await?;
            check_count(env, queue, count + 1).await?;
            Ok::<_, BenchError>(Enqueue { count, seconds: took.as_secs_f64() })
        };
        out.insert(key, run.await.map_err(|e| e.to_string()));
    }
    let current = async {
        env.probe.flush().await?;
        let took = awaited_on_current_thread(env.broker.clone(), queue, count).await?;
        check_count(env, queue, count + 1).await?;
        Ok::<_, BenchError>(Enqueue { count, seconds: took.as_secs_f64() })
    };
    out.insert(ENQUEUE_RUST_LOOP_CURRENT, current.await.map_err(|e| e.to_string()));
    if let Some(python) = &env.plan.python {
        let mut cmd = std::process::Command::new(python);
        cmd.arg("produce.py").args([&env.broker, queue, &count.to_string()]).current_dir(&env.plan.python_dir);
        out.insert(ENQUEUE_PYTHON, external(env, cmd, queue, count).await.map_err(|e| e.to_string()));
    }
    let mut cmd = std::process::Command::new(&env.plan.rusty_worker);
    cmd.args(["produce", &env.broker, queue, &count.to_string()]);
    out.insert(ENQUEUE_RUSTY, external(env, cmd, queue, count).await.map_err(|e| e.to_string()));
    out
}

/// The awaited loop (one warm-up send, then `count` timed) with its own
/// producer on a current-thread runtime in a thread of its own.
async fn awaited_on_current_thread(broker: String, queue: &str, count: usize) -> Result<Duration, BenchError> {
    let queue = queue.to_owned();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let took = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| BenchError::io("starting a current-thread runtime", e))
            .and_then(|rt| {
                rt.block_on(async {
                    let producer = load::producer(&broker)?;
                    let options = load::to_queue(&queue);
                    load::send_many(&producer, "bench.noop", vec![], &options, 1, 1).await?;
                    load::send_many(&producer, "bench.noop", vec![], &options, count, 1).await
                })
            });
        let _ = tx.send(took);
    });
    rx.await.map_err(|_| BenchError::Other("the current-thread producer's thread ended early".into()))?
}

async fn check_count(env: &Env, queue: &str, want: usize) -> Result<(), BenchError> {
    let got = env.probe.llen(queue).await?;
    if got != want as u64 {
        return Err(BenchError::Other(format!("{got} messages in the queue, expected {want}")));
    }
    Ok(())
}

/// Runs a producer process that prints `{"count": .., "seconds": ..}`.
async fn external(env: &Env, mut cmd: std::process::Command, queue: &str, count: usize) -> Result<Enqueue, BenchError> {
    env.probe.flush().await?;
    let out = cmd.output().map_err(|e| BenchError::io("running a producer", e))?;
    if !out.status.success() {
        return Err(BenchError::Other(format!("producer failed: {}", String::from_utf8_lossy(&out.stderr))));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| BenchError::Other(format!("no result line from the producer: {text}")))?;
    let seconds = json.get("seconds").and_then(serde_json::Value::as_f64).unwrap_or(f64::NAN);
    check_count(env, queue, count + 1).await?;
    Ok(Enqueue { count, seconds })
}

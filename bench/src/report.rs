//! The results: a Markdown section for BENCHMARKS.md (the table, ratios
//! celeriac/peer, the targets) and the same numbers as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Value as Json};

use crate::machine::Machine;
use crate::phases::{
    ENQUEUE_PYTHON, ENQUEUE_RUSTY, ENQUEUE_RUST_CONCURRENT, ENQUEUE_RUST_LOOP, ENQUEUE_RUST_LOOP_CURRENT,
};
use crate::{Peer, Plan};

/// A measurement, or why there is none (`"n/a: ..."` when it does not apply).
pub type Outcome<T> = Result<T, String>;

/// One drain.
#[derive(Debug, Clone)]
pub struct Drain {
    /// Tasks drained.
    pub tasks: usize,
    /// From worker start to queue and in-flight bookkeeping empty.
    pub seconds: f64,
    /// CPU seconds of the worker's process tree.
    pub worker_cpu_s: f64,
    /// CPU seconds of redis-server meanwhile.
    pub redis_cpu_s: f64,
    /// Peak RSS of the worker's tree (sum of VmHWM), KiB.
    pub peak_hwm_kb: u64,
    /// Keys in the result database afterwards (results kept), when storing.
    pub results_stored: Option<u64>,
    /// Redis commands run meanwhile: (command, calls, microseconds), the
    /// harness's own polling (`LLEN`, `HLEN`) included.
    pub redis_commands: Vec<(String, u64, u64)>,
    /// CPU seconds the rest of the machine used meanwhile (busy time minus
    /// the worker, redis-server and the harness): other people's work.
    pub other_cpu_s: f64,
    /// Tasks per second of every run when a short drain was repeated (this
    /// one is the median).
    pub rates: Vec<f64>,
}

impl Drain {
    /// Tasks per second.
    pub fn rate(&self) -> f64 {
        self.tasks as f64 / self.seconds
    }
}

/// One producer's enqueue run.
#[derive(Debug, Clone)]
pub struct Enqueue {
    /// Tasks sent.
    pub count: usize,
    /// Seconds it took.
    pub seconds: f64,
}

impl Enqueue {
    /// Tasks per second.
    pub fn rate(&self) -> f64 {
        self.count as f64 / self.seconds
    }
}

/// Latency at a steady rate.
#[derive(Debug, Clone)]
pub struct Latency {
    /// Tasks per second sent.
    pub rate: u32,
    /// Samples counted (after the warm-up).
    pub samples: usize,
    /// Tasks whose start or result was never seen.
    pub missing: usize,
    /// Enqueue-to-start, median, ms.
    pub start_p50_ms: f64,
    /// Enqueue-to-start, 99th percentile, ms.
    pub start_p99_ms: f64,
    /// Enqueue-to-start, worst, ms.
    pub start_max_ms: f64,
    /// Enqueue-to-result (notification seen), median, ms.
    pub result_p50_ms: Option<f64>,
    /// Enqueue-to-result, 99th percentile, ms.
    pub result_p99_ms: Option<f64>,
}

/// Memory of the worker's process tree.
#[derive(Debug, Clone)]
pub struct Memory {
    /// RSS when idle (sum over the tree), KiB.
    pub idle_rss_kb: u64,
    /// Peak RSS up to then (sum of VmHWM), KiB.
    pub idle_hwm_kb: u64,
    /// ETA tasks held.
    pub eta_tasks: usize,
    /// RSS holding them, KiB.
    pub eta_rss_kb: u64,
    /// Peak RSS up to then, KiB.
    pub eta_hwm_kb: u64,
    /// Processes in the tree.
    pub processes: usize,
}

/// Everything a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// The machine and versions.
    pub machine: Machine,
    /// The plan.
    pub plan: Plan,
    /// Drain without results.
    pub drain: BTreeMap<Peer, Outcome<Drain>>,
    /// Drain with results.
    pub drain_results: BTreeMap<Peer, Outcome<Drain>>,
    /// Latency.
    pub latency: BTreeMap<Peer, Outcome<Latency>>,
    /// Memory.
    pub memory: BTreeMap<Peer, Outcome<Memory>>,
    /// Drain by celeriac at the peers' `-c`: (concurrency, outcome).
    pub narrow: Option<(usize, Outcome<Drain>)>,
    /// Drain by celeriac's transport alone.
    pub transport: Option<Outcome<Drain>>,
    /// Drain by celeriac with its default runtime (one thread per CPU).
    pub multi: Option<Outcome<Drain>>,
    /// Enqueue → delivered by celeriac's transport alone, at the latency
    /// phase's rate (the transport's share of enqueue → start).
    pub transport_latency: Option<Outcome<Latency>>,
    /// Enqueue → popped by a bare `BRPOP` client (the floor).
    pub bare_latency: Option<Outcome<Latency>>,
    /// Enqueue rate by producer.
    pub enqueue: BTreeMap<&'static str, Outcome<Enqueue>>,
    /// Peers not run, and why.
    pub skipped: Vec<(Peer, String)>,
    /// Load average at the end.
    pub load_after: [f64; 3],
    /// Unix time the run started.
    pub started: f64,
    /// Seconds the run took.
    pub took: f64,
}

fn ok<T>(o: Option<&Outcome<T>>) -> Option<&T> {
    o.and_then(|r| r.as_ref().ok())
}

fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "—".into();
    }
    let digits = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else if v >= 1.0 {
        2
    } else {
        3
    };
    let text = format!("{v:.digits$}");
    // Thousands separators for the integer part.
    let (int, frac) = text.split_once('.').map_or((text.as_str(), None), |(i, f)| (i, Some(f)));
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    match frac {
        Some(f) => format!("{grouped}.{f}"),
        None => grouped,
    }
}

fn ratio(celeriac: Option<f64>, peer: Option<f64>) -> String {
    match (celeriac, peer) {
        (Some(c), Some(p)) if p > 0.0 && c.is_finite() && p.is_finite() => format!("{}×", fmt_num(c / p)),
        _ => "—".into(),
    }
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

impl Report {
    /// An empty report for `plan` on `machine`.
    pub fn new(plan: &Plan, machine: Machine) -> Report {
        Report {
            machine,
            plan: plan.clone(),
            drain: BTreeMap::new(),
            drain_results: BTreeMap::new(),
            latency: BTreeMap::new(),
            memory: BTreeMap::new(),
            enqueue: BTreeMap::new(),
            transport: None,
            multi: None,
            transport_latency: None,
            bare_latency: None,
            narrow: None,
            skipped: Vec::new(),
            load_after: [0.0; 3],
            started: crate::unix_now(),
            took: 0.0,
        }
    }

    /// Records that `peer` was not run.
    pub fn skip(&mut self, peer: Peer, why: &str) {
        self.skipped.push((peer, why.to_owned()));
    }

    /// Notes the end of the run.
    pub fn finish(&mut self, load_after: [f64; 3]) {
        self.load_after = load_after;
        self.took = crate::unix_now() - self.started;
    }

    /// Every failed or inapplicable measurement, as `phase/peer: reason`.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut note = |phase: &str, who: &str, e: &String| out.push(format!("{phase}/{who}: {e}"));
        for (p, r) in &self.drain {
            if let Err(e) = r {
                note("drain", p.key(), e);
            }
        }
        for (p, r) in &self.drain_results {
            if let Err(e) = r {
                note("drain_results", p.key(), e);
            }
        }
        for (p, r) in &self.latency {
            if let Err(e) = r {
                note("latency", p.key(), e);
            }
        }
        for (p, r) in &self.memory {
            if let Err(e) = r {
                note("memory", p.key(), e);
            }
        }
        if let Some((_, Err(e))) = &self.narrow {
            note("drain", "celeriac_narrow", e);
        }
        if let Some(Err(e)) = &self.transport {
            note("drain", "transport", e);
        }
        if let Some(Err(e)) = &self.multi {
            note("drain", "celeriac_default_runtime", e);
        }
        if let Some(Err(e)) = &self.transport_latency {
            note("latency", "transport", e);
        }
        if let Some(Err(e)) = &self.bare_latency {
            note("latency", "bare", e);
        }
        for (k, r) in &self.enqueue {
            if let Err(e) = r {
                note("enqueue", k, e);
            }
        }
        out
    }

    /// Failures, not counting measurements that do not apply (`n/a`).
    pub fn failures(&self) -> Vec<String> {
        self.problems().into_iter().filter(|p| !p.contains(": n/a")).collect()
    }

    fn peers(&self) -> Vec<Peer> {
        self.plan.peers.iter().copied().filter(|p| !self.skipped.iter().any(|(s, _)| s == p)).collect()
    }

    /// The table section of BENCHMARKS.md.
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let plan = &self.plan;
        let peers = self.peers();
        let others: Vec<Peer> = peers.iter().copied().filter(|p| *p != Peer::Celeriac).collect();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Measured by `scripts/bench` on {} cores ({}), {:.0} GiB, Linux {}; \
             load average {:.2} / {:.2} / {:.2} before and {:.2} / {:.2} / {:.2} after; the run took {:.0} s.\n",
            m.cores,
            m.cpu,
            m.memory_mib as f64 / 1024.0,
            m.kernel,
            m.load_before[0],
            m.load_before[1],
            m.load_before[2],
            self.load_after[0],
            self.load_after[1],
            self.load_after[2],
            self.took
        );
        let _ = writeln!(
            s,
            "Versions: celeriac {}, {}; Python Celery: {} on Python {}; rusty-celery (`celery` crate) {}; Redis {} \
             (one private `redis-server` on loopback, flushed before each phase).\n",
            m.celeriac, m.rustc, m.python_celery, m.python, m.rusty_celery, m.redis
        );
        s.push_str("| worker | settings |\n|---|---|\n");
        for p in &peers {
            let _ = writeln!(s, "| {} | {} |", p.label(), p.settings(plan));
        }
        s.push('\n');
        // The table.
        let _ = write!(s, "| | |");
        for p in &peers {
            let _ = write!(s, " {} |", p.label());
        }
        for p in &others {
            let _ = write!(s, " celeriac / {} |", p.label());
        }
        s.push_str("\n|---|:-:|");
        for _ in 0..peers.len() + others.len() {
            s.push_str("--:|");
        }
        s.push('\n');
        let mut row = |title: String, better: &str, cell: &dyn Fn(Peer) -> (String, Option<f64>)| {
            let _ = write!(s, "| {title} | {better} |");
            for p in &peers {
                let _ = write!(s, " {} |", cell(*p).0);
            }
            let mine = cell(Peer::Celeriac).1;
            for p in &others {
                let _ = write!(s, " {} |", ratio(mine, cell(*p).1));
            }
            s.push('\n');
        };
        let failed = |e: &String| if e.starts_with("n/a") { "n/a".to_owned() } else { "failed".to_owned() };
        for (title, map) in [
            (
                format!("drain {} no-op tasks, `acks_late`, no results: tasks/s", fmt_num(plan.drain_tasks as f64)),
                &self.drain,
            ),
            (
                format!("drain {} no-op tasks, results in Redis: tasks/s", fmt_num(plan.drain_tasks as f64)),
                &self.drain_results,
            ),
        ] {
            row(title, "↑", &|p| match map.get(&p) {
                Some(Ok(d)) if d.rates.len() > 1 => {
                    (format!("{} ({:.2} s, median of {})", fmt_num(d.rate()), d.seconds, d.rates.len()), Some(d.rate()))
                }
                Some(Ok(d)) => (format!("{} ({:.2} s)", fmt_num(d.rate()), d.seconds), Some(d.rate())),
                Some(Err(e)) => (failed(e), None),
                None => ("—".into(), None),
            });
        }
        let enq = |key: &str| ok(self.enqueue.get(key)).map(Enqueue::rate);
        row("enqueue, one awaited send at a time: tasks/s".into(), "↑", &|p| {
            let v = match p {
                Peer::Celeriac => enq(ENQUEUE_RUST_LOOP),
                Peer::PythonPrefork | Peer::PythonThreads => enq(ENQUEUE_PYTHON),
                Peer::Rusty => enq(ENQUEUE_RUSTY),
                Peer::Transport | Peer::Bare => None,
            };
            (v.map_or("—".into(), fmt_num), v)
        });
        row("enqueue, one awaited send at a time, current-thread runtime: tasks/s".into(), "↑", &|p| {
            let v = match p {
                Peer::Celeriac => enq(ENQUEUE_RUST_LOOP_CURRENT),
                _ => None,
            };
            (v.map_or("—".into(), fmt_num), v)
        });
        row("enqueue, 256 sends in flight (Rust async): tasks/s".into(), "↑", &|p| {
            let v = match p {
                Peer::Celeriac => enq(ENQUEUE_RUST_CONCURRENT),
                Peer::PythonPrefork | Peer::PythonThreads => enq(ENQUEUE_PYTHON),
                Peer::Rusty => enq(ENQUEUE_RUSTY),
                Peer::Transport | Peer::Bare => None,
            };
            (v.map_or("—".into(), fmt_num), v)
        });
        let lat = |p: Peer, f: &dyn Fn(&Latency) -> Option<f64>| -> (String, Option<f64>) {
            match self.latency.get(&p) {
                Some(Ok(l)) => {
                    let v = f(l);
                    (v.map_or("n/a".into(), |v| format!("{} ms", fmt_num(v))), v)
                }
                Some(Err(e)) => (failed(e), None),
                None => ("—".into(), None),
            }
        };
        let rate = fmt_num(f64::from(plan.latency_rate));
        row(format!("enqueue → start p50 at {rate} tasks/s"), "↓", &|p| lat(p, &|l| Some(l.start_p50_ms)));
        row(format!("enqueue → start p99 at {rate} tasks/s"), "↓", &|p| lat(p, &|l| Some(l.start_p99_ms)));
        row(format!("enqueue → result p50 at {rate} tasks/s"), "↓", &|p| lat(p, &|l| l.result_p50_ms));
        row(format!("enqueue → result p99 at {rate} tasks/s"), "↓", &|p| lat(p, &|l| l.result_p99_ms));
        let mem = |p: Peer, f: &dyn Fn(&Memory) -> u64| -> (String, Option<f64>) {
            match self.memory.get(&p) {
                Some(Ok(m)) => {
                    let v = mib(f(m));
                    (format!("{} MiB", fmt_num(v)), Some(v))
                }
                Some(Err(e)) => (failed(e), None),
                None => ("—".into(), None),
            }
        };
        row("RSS idle (whole process tree)".into(), "↓", &|p| mem(p, &|m| m.idle_rss_kb));
        row(format!("RSS holding {} ETA tasks", fmt_num(plan.eta_tasks as f64)), "↓", &|p| mem(p, &|m| m.eta_rss_kb));
        s.push_str(
            "\n↑: higher is better, ↓: lower is better; the ratio columns are celeriac's value divided by the peer's. \
             Python's and rusty-celery's producers have no concurrent mode, so both enqueue rows compare with \
             their one loop.\n",
        );
        // Where the time goes, per drained task.
        s.push_str("\nCPU per drained task (no results), from /proc and Redis `INFO`; \"transport only\" is celeriac's \
             consumer acking every delivery at once, without the task runtime, same prefetch window:\n\n\
             | | tasks/s | worker CPU µs/task | redis-server CPU µs/task | Redis script (EVALSHA) µs/task | other processes' CPU meanwhile |\n|---|--:|--:|--:|--:|--:|\n");
        let mut cpu_rows: Vec<(String, &Drain)> =
            peers.iter().filter_map(|p| ok(self.drain.get(p)).map(|d| (p.label().to_owned(), d))).collect();
        if let Some(Ok(d)) = &self.transport {
            cpu_rows.insert(1, (Peer::Transport.label().to_owned(), d));
        }
        if let Some((c, Ok(d))) = &self.narrow {
            let prefetch = c * plan.celeriac_prefetch_multiplier;
            cpu_rows.insert(
                1,
                (
                    format!(
                        "celeriac at its defaults: `-c {c}` (the CPUs; prefetch {prefetch}), a runtime thread per CPU"
                    ),
                    d,
                ),
            );
        }
        if let Some(Ok(d)) = &self.multi {
            let c = plan.celeriac_concurrency;
            cpu_rows.insert(1, (format!("celeriac `-c {c}`, a runtime thread per CPU (no `--runtime-threads`)"), d));
        }
        for (label, d) in cpu_rows {
            let per_task = |v: f64| v * 1e6 / d.tasks as f64;
            let script: u64 =
                d.redis_commands.iter().filter(|(c, _, _)| c.starts_with("eval")).map(|(_, _, u)| *u).sum();
            let _ = writeln!(
                s,
                "| {label} | {} | {} | {} | {} | {:.0}% of a core |",
                fmt_num(d.rate()),
                fmt_num(per_task(d.worker_cpu_s)),
                fmt_num(per_task(d.redis_cpu_s)),
                fmt_num(script as f64 / d.tasks as f64),
                (d.other_cpu_s / d.seconds * 100.0).max(0.0)
            );
        }
        let shown = |l: &Option<Outcome<Latency>>| match l {
            Some(Ok(l)) => format!("p50 {} ms, p99 {} ms", fmt_num(l.start_p50_ms), fmt_num(l.start_p99_ms)),
            Some(Err(e)) => failed(e),
            None => "not run".into(),
        };
        if self.transport_latency.is_some() || self.bare_latency.is_some() {
            let _ = writeln!(
                s,
                "\nWhere enqueue → start goes, at {rate} tasks/s (each time taken as the message is in hand): \
                 a bare `BRPOP` client that records nothing, the floor for any consumer of the queue's list: {}; \
                 celeriac's transport alone (the consumer above: `BRPOP`, then the message recorded in \
                 `unacked` as kombu does, then handed over): {}; the whole worker (the table above): the \
                 transport plus the task runtime.",
                shown(&self.bare_latency),
                shown(&self.transport_latency),
            );
        }
        // Targets.
        s.push_str("\n| target | issue | measured | met |\n|---|:-:|--:|:-:|\n");
        let drain_rate = |p: Peer| ok(self.drain.get(&p)).map(Drain::rate);
        let mut target = |name: &str, issue: u32, value: Option<f64>, unit: &str, met: Option<bool>| {
            let shown = value.map_or("—".into(), |v| format!("{}{unit}", fmt_num(v)));
            let mark = match met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            };
            let _ = writeln!(s, "| {name} | {issue} | {shown} | {mark} |");
        };
        let div = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
        let mb = |v: f64| v * 1e6 / 1048576.0;
        let drained = drain_rate(Peer::Celeriac);
        let r = div(drained, drain_rate(Peer::PythonPrefork));
        target("drain ≥ 40× Python prefork", 7, r, "×", r.map(|r| r >= 40.0));
        let r = div(drained, drain_rate(Peer::Rusty));
        target("drain ≥ 5× rusty-celery", 7, r, "×", r.map(|r| r >= 5.0));
        target("drain ≥ 8× rusty-celery", 15, r, "×", r.map(|r| r >= 8.0));
        target("drain, no results, ≥ 45,000 tasks/s", 15, drained, "/s", drained.map(|v| v >= 45_000.0));
        let v = ok(self.drain_results.get(&Peer::Celeriac)).map(Drain::rate);
        target("drain, results in Redis, ≥ 30,000 tasks/s", 15, v, "/s", v.map(|v| v >= 30_000.0));
        let r = div(enq(ENQUEUE_RUST_LOOP), enq(ENQUEUE_PYTHON));
        target("enqueue from Rust ≥ 20× Python's (awaited loop)", 7, r, "×", r.map(|r| r >= 20.0));
        let v = enq(ENQUEUE_RUST_LOOP).into_iter().chain(enq(ENQUEUE_RUST_LOOP_CURRENT)).reduce(f64::max);
        target(
            "awaited enqueue from Rust ≥ 20,000 tasks/s (the better runtime)",
            15,
            v,
            "/s",
            v.map(|v| v >= 20_000.0),
        );
        let r = div(enq(ENQUEUE_RUST_CONCURRENT), enq(ENQUEUE_PYTHON));
        target("enqueue from Rust ≥ 20× Python's (256 in flight)", 7, r, "×", r.map(|r| r >= 20.0));
        let v = enq(ENQUEUE_RUST_CONCURRENT);
        target("enqueue from Rust, sends in flight, ≥ 100,000 tasks/s", 15, v, "/s", v.map(|v| v >= 100_000.0));
        let mine = ok(self.latency.get(&Peer::Celeriac));
        let v = mine.map(|l| l.start_p99_ms);
        target(&format!("p99 enqueue → start ≤ 5 ms at {rate} tasks/s"), 7, v, " ms", v.map(|v| v <= 5.0));
        target(&format!("p99 enqueue → start ≤ 0.5 ms at {rate} tasks/s"), 15, v, " ms", v.map(|v| v <= 0.5));
        let v = mine.map(|l| l.start_p50_ms);
        target(&format!("p50 enqueue → start ≤ 0.25 ms at {rate} tasks/s"), 15, v, " ms", v.map(|v| v <= 0.25));
        let mine = ok(self.memory.get(&Peer::Celeriac));
        let v = mine.map(|m| mib(m.idle_rss_kb));
        target("idle RSS ≤ 20 MB", 7, v, " MiB", v.map(|v| v <= mb(20.0)));
        target("idle RSS ≤ 12 MiB", 15, v, " MiB", v.map(|v| v <= 12.0));
        let v = mine.map(|m| mib(m.eta_rss_kb));
        let held = fmt_num(plan.eta_tasks as f64);
        target(&format!("{held} ETA tasks held in ≤ 60 MB"), 7, v, " MiB", v.map(|v| v <= mb(60.0)));
        target(&format!("{held} ETA tasks held in ≤ 30 MB"), 15, v, " MiB", v.map(|v| v <= mb(30.0)));
        let problems = self.problems();
        if !problems.is_empty() {
            s.push_str("\nNot measured:\n\n");
            for p in problems {
                let first = p.lines().next().unwrap_or_default().to_owned();
                let _ = writeln!(s, "- {first}");
            }
        }
        for (p, why) in &self.skipped {
            let _ = writeln!(s, "- {} skipped: {why}", p.label());
        }
        s
    }

    /// Everything as JSON.
    pub fn json(&self) -> Json {
        let m = &self.machine;
        let per = |f: &dyn Fn(Peer) -> Json| -> Json {
            Json::Object(self.plan.peers.iter().map(|p| (p.key().to_owned(), f(*p))).collect())
        };
        let drain = |map: &BTreeMap<Peer, Outcome<Drain>>| per(&|p| drain_json(map.get(&p)));
        json!({
            "started_unix": self.started,
            "seconds": self.took,
            "machine": {
                "cores": m.cores, "cpu": m.cpu, "memory_mib": m.memory_mib, "kernel": m.kernel,
                "load_before": m.load_before, "load_after": self.load_after,
            },
            "versions": {
                "celeriac": m.celeriac, "rustc": m.rustc, "python_celery": m.python_celery, "python": m.python,
                "rusty_celery": m.rusty_celery, "redis": m.redis,
            },
            "plan": {
                "drain_tasks": self.plan.drain_tasks, "enqueue_tasks": self.plan.enqueue_tasks,
                "latency_tasks": self.plan.latency_tasks, "latency_warmup": self.plan.latency_warmup,
                "latency_rate": self.plan.latency_rate, "eta_tasks": self.plan.eta_tasks,
                "settings": per(&|p| json!(p.settings(&self.plan))),
            },
            "drain": drain(&self.drain),
            "drain_with_results": drain(&self.drain_results),
            "drain_transport_only": drain_json(self.transport.as_ref()),
            "drain_celeriac_default_runtime": drain_json(self.multi.as_ref()),
            "drain_celeriac_narrow": self.narrow.as_ref().map(|(c, d)| json!({ "concurrency": c, "drain": drain_json(Some(d)) })),
            "enqueue": Json::Object(self.enqueue.iter().map(|(k, r)| ((*k).to_owned(), match r {
                Ok(e) => json!({ "count": e.count, "seconds": e.seconds, "tasks_per_second": e.rate() }),
                Err(e) => json!({ "error": e }),
            })).collect()),
            "latency": per(&|p| latency_json(self.latency.get(&p))),
            "latency_transport_only": latency_json(self.transport_latency.as_ref()),
            "latency_bare_brpop": latency_json(self.bare_latency.as_ref()),
            "memory": per(&|p| match self.memory.get(&p) {
                Some(Ok(mm)) => json!({
                    "idle_rss_kib": mm.idle_rss_kb, "idle_hwm_kib": mm.idle_hwm_kb, "eta_tasks": mm.eta_tasks,
                    "eta_rss_kib": mm.eta_rss_kb, "eta_hwm_kib": mm.eta_hwm_kb, "processes": mm.processes,
                }),
                Some(Err(e)) => json!({ "error": e }),
                None => Json::Null,
            }),
            "skipped": self.skipped.iter().map(|(p, w)| json!({ "peer": p.key(), "why": w })).collect::<Vec<_>>(),
        })
    }
}

/// One latency outcome as JSON (`null` when not run).
fn latency_json(l: Option<&Outcome<Latency>>) -> Json {
    match l {
        Some(Ok(l)) => json!({
            "rate": l.rate, "samples": l.samples, "missing": l.missing,
            "start_p50_ms": l.start_p50_ms, "start_p99_ms": l.start_p99_ms, "start_max_ms": l.start_max_ms,
            "result_p50_ms": l.result_p50_ms, "result_p99_ms": l.result_p99_ms,
        }),
        Some(Err(e)) => json!({ "error": e }),
        None => Json::Null,
    }
}

/// One drain as JSON, with CPU and Redis commands per task.
fn drain_json(d: Option<&Outcome<Drain>>) -> Json {
    match d {
        Some(Ok(d)) => json!({
            "tasks": d.tasks, "seconds": d.seconds, "tasks_per_second": d.rate(),
            "worker_cpu_seconds": d.worker_cpu_s, "redis_cpu_seconds": d.redis_cpu_s,
            "worker_cpu_us_per_task": d.worker_cpu_s * 1e6 / d.tasks as f64,
            "redis_cpu_us_per_task": d.redis_cpu_s * 1e6 / d.tasks as f64,
            "worker_peak_rss_kib": d.peak_hwm_kb, "results_stored": d.results_stored,
            "other_cpu_seconds": d.other_cpu_s, "other_cpu_share": d.other_cpu_s / d.seconds,
            "tasks_per_second_of_each_run": d.rates,
            "redis_commands_per_task": d.redis_commands.iter().map(|(c, calls, usec)| json!({
                "command": c, "calls": *calls as f64 / d.tasks as f64, "usec": *usec as f64 / d.tasks as f64,
            })).collect::<Vec<_>>(),
        }),
        Some(Err(e)) => json!({ "error": e }),
        None => Json::Null,
    }
}

/// Markers around the generated section of BENCHMARKS.md.
pub const BEGIN: &str = "<!-- scripts/bench: table begin -->";
/// End marker.
pub const END: &str = "<!-- scripts/bench: table end -->";

/// `document` with the text between [`BEGIN`] and [`END`] replaced by
/// `section` (appended with the markers if they are missing).
pub fn splice(document: &str, section: &str) -> String {
    let block = format!("{BEGIN}\n{section}{END}");
    match (document.find(BEGIN), document.find(END)) {
        (Some(b), Some(e)) if e > b => format!("{}{block}{}", &document[..b], &document[e + END.len()..]),
        _ => format!("{}\n\n{block}\n", document.trim_end()),
    }
}

//! The AMQP rows of the benchmarks (`scripts/bench --amqp`, the `amqp-bench`
//! binary): the drain of N pre-queued `bench.noop` tasks on a private
//! RabbitMQ node, by celeriac, Python Celery (prefork) and rusty-celery.
//!
//! The queue `bench.amqp` (durable classic, as kombu declares it) is filled
//! by celeriac's producer with publisher confirms (256 sends in flight); every
//! worker runs the task with `acks_late`, results ignored. The time runs from
//! worker start until RabbitMQ reports the queue empty of ready messages
//! (a passive `queue.declare` every 5 ms); then `rabbitmqctl list_queues`
//! must show no message at all (ready or unacked) before the worker is
//! stopped, so every task was acked. The last prefetch window (at most the
//! worker's prefetch count of messages, 256 for celeriac) is acked after the
//! clock stops: under 1 % of 50,000 tasks.

use std::time::{Duration, Instant};

use celeriac_broker::{AmqpBroker, Broker, Producer, ProducerConfig};
use celeriac_tests::RabbitNode;

use crate::machine::Machine;
use crate::peers::Peer;
use crate::{load, procs, BenchError, Plan};

/// The queue drained.
pub const QUEUE: &str = "bench.amqp";

/// One AMQP drain.
#[derive(Debug, Clone)]
pub struct AmqpDrain {
    /// The worker.
    pub peer: Peer,
    /// Tasks drained.
    pub tasks: usize,
    /// Seconds from worker start until no message was ready.
    pub seconds: f64,
    /// Seconds until RabbitMQ held no message at all (rabbitmqctl; coarse).
    pub all_acked_seconds: f64,
    /// CPU seconds of the worker's process tree.
    pub worker_cpu_s: f64,
    /// CPU seconds of the RabbitMQ node (its Erlang VM) meanwhile.
    pub broker_cpu_s: f64,
    /// CPU seconds of every other process meanwhile (the bench itself
    /// excluded): the machine's other load.
    pub other_cpu_s: f64,
    /// Seconds the producer took to queue the tasks (with confirms).
    pub fill_seconds: f64,
}

impl AmqpDrain {
    /// Tasks per second.
    pub fn rate(&self) -> f64 {
        self.tasks as f64 / self.seconds
    }
}

/// Messages in `queue` (ready and unacked), as `rabbitmqctl list_queues` says.
fn messages(node: &RabbitNode, queue: &str) -> Result<Option<u64>, BenchError> {
    let out = node.ctl(&["list_queues", "-q", "--no-table-headers", "name", "messages"])?;
    Ok(out.lines().find_map(|l| {
        let mut parts = l.split_whitespace();
        (parts.next() == Some(queue)).then(|| parts.next().and_then(|n| n.parse().ok())).flatten()
    }))
}

/// Drains `plan.drain_tasks` no-op tasks with `peer` on `node`.
pub async fn drain(plan: &Plan, node: &RabbitNode, peer: Peer) -> Result<AmqpDrain, BenchError> {
    let url = node.url();
    let broker = Broker::new(AmqpBroker::from_url(&url)?);
    let _ = broker.delete_queue(QUEUE).await;
    broker.declare_queue(QUEUE, QUEUE, QUEUE).await?;
    let producer = Producer::new(broker.clone(), ProducerConfig::default());
    let tasks = plan.drain_tasks;
    let fill = load::send_many(&producer, "bench.noop", vec![], &load::to_queue(QUEUE), tasks, 256).await?;
    let queued = broker.queue_len(QUEUE).await?;
    if queued != tasks as u64 {
        return Err(BenchError::Other(format!("queued {queued} of {tasks} tasks")));
    }
    let broker_cpu = procs::cpu_seconds(node.pid());
    let (busy, own) = (procs::machine_busy_seconds(), procs::own_cpu_seconds());
    let start = Instant::now();
    let mut worker = peer.spawn(plan, &url, None, QUEUE)?;
    let pid = worker.pid();
    let ready_empty = loop {
        if broker.queue_len(QUEUE).await? == 0 {
            break start.elapsed();
        }
        if worker.exited() {
            return Err(BenchError::Other(format!("{} exited:\n{}", peer.label(), worker.log_tail())));
        }
        if start.elapsed() > plan.phase_timeout {
            return Err(BenchError::Other(format!("{} did not drain in time:\n{}", peer.label(), worker.log_tail())));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let worker_cpu_s = procs::cpu_seconds(pid);
    let broker_cpu_s = procs::cpu_seconds(node.pid()) - broker_cpu;
    let other_cpu_s =
        (procs::machine_busy_seconds() - busy) - (procs::own_cpu_seconds() - own) - worker_cpu_s - broker_cpu_s;
    let all_acked = loop {
        if messages(node, QUEUE)? == Some(0) {
            break start.elapsed();
        }
        if start.elapsed() > plan.phase_timeout {
            return Err(BenchError::Other(format!("{} left messages unacked:\n{}", peer.label(), worker.log_tail())));
        }
    };
    worker.stop();
    Ok(AmqpDrain {
        peer,
        tasks,
        seconds: ready_empty.as_secs_f64(),
        all_acked_seconds: all_acked.as_secs_f64(),
        worker_cpu_s,
        broker_cpu_s,
        other_cpu_s,
        fill_seconds: fill.as_secs_f64(),
    })
}

/// The markdown section for the drains (and failures) of one run, on
/// `machine` (load average before the run, and `load_after`).
pub fn markdown(
    plan: &Plan,
    runs: &[(Peer, Result<AmqpDrain, String>)],
    rabbit_version: &str,
    machine: &Machine,
    load_after: [f64; 3],
) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "RabbitMQ {rabbit_version} (one private node on loopback), queue `{QUEUE}` (durable classic), \
         {} `bench.noop` tasks queued by celeriac's producer with publisher confirms, drained with `acks_late`, \
         results ignored. The time runs from the worker's start (process start included, as in the Redis \
         drain) until no message is ready.\n",
        plan.drain_tasks
    );
    let [b1, b5, _] = machine.load_before;
    let [a1, a5, _] = load_after;
    let _ = writeln!(
        s,
        "{} cores ({}), celeriac {}, {}, rusty-celery {}; load average before {b1:.2}/{b5:.2}, \
         after {a1:.2}/{a5:.2} (1/5 min).\n",
        machine.cores, machine.cpu, machine.celeriac, machine.python_celery, machine.rusty_celery
    );
    s.push_str(
        "| worker | settings | tasks/s | seconds | worker CPU µs/task | RabbitMQ CPU µs/task | other processes' CPU meanwhile | all acked after (s) | fill with confirms: tasks/s |\n",
    );
    s.push_str("|---|---|--:|--:|--:|--:|--:|--:|--:|\n");
    for (peer, run) in runs {
        match run {
            Ok(d) => {
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.0} | {:.2} | {:.1} | {:.1} | {:.0}% of a core | {:.1} | {:.0} |",
                    peer.label(),
                    peer.settings(plan),
                    d.rate(),
                    d.seconds,
                    d.worker_cpu_s * 1_000_000.0 / d.tasks as f64,
                    d.broker_cpu_s * 1_000_000.0 / d.tasks as f64,
                    (d.other_cpu_s / d.seconds * 100.0).max(0.0),
                    d.all_acked_seconds,
                    d.tasks as f64 / d.fill_seconds
                );
            }
            Err(e) => {
                let first = e.lines().next().unwrap_or("");
                let _ = writeln!(s, "| {} | {} | failed: {first} | | | | | | |", peer.label(), peer.settings(plan));
            }
        }
    }
    s
}

//! `scripts/bench --amqp`: the AMQP drain rows (see `celeriac_bench::amqp`):
//! celeriac, Python Celery prefork and rusty-celery on one private RabbitMQ
//! node, the table written into BENCHMARKS.md between its AMQP markers.
//!
//! ```text
//! amqp-bench [--smoke] [--drain N] [--only celeriac,prefork,rusty] [--no-markdown] [--ceiling]
//!            [-c N] [--prefetch-multiplier N]
//! ```
//!
//! `-c` and `--prefetch-multiplier` change celeriac's worker settings (the
//! defaults are the Redis drain's: `-c 64 --prefetch-multiplier 4`).
//!
//! `--ceiling` then measures what RabbitMQ itself allows on this machine,
//! with no worker: a bare lapin consumer draining the same number of tasks
//! with `no_ack` (autoack), with one `basic.ack` per delivery, and with one
//! `basic.ack(multiple=true)` per 64 deliveries; and celeriac's AMQP
//! consumer alone (acking each delivery at once, batched as the worker's
//! acks are). Printed only, not written into BENCHMARKS.md.

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
    let mut ceiling = false;
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
            "-c" => it.next().and_then(|v| v.parse().ok()).map(|n| plan.celeriac_concurrency = n).is_some(),
            "--prefetch-multiplier" => {
                it.next().and_then(|v| v.parse().ok()).map(|n| plan.celeriac_prefetch_multiplier = n).is_some()
            }
            "--ceiling" => {
                ceiling = true;
                true
            }
            _ => false,
        };
        if !fine {
            eprintln!(
                "usage: amqp-bench [--smoke] [--drain N] [--only celeriac,prefork,rusty] [--no-markdown] [--ceiling] \
                 [-c N] [--prefetch-multiplier N]"
            );
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
    if ceiling {
        for mode in [Raw::AutoAck, Raw::AckEach, Raw::AckMultiple, Raw::Transport] {
            match runtime.block_on(raw_drain(&node.url(), plan.drain_tasks, mode)) {
                Ok(rate) => eprintln!("amqp-bench: ceiling, {} — {rate:.0} tasks/s", mode.label()),
                Err(e) => eprintln!("amqp-bench: ceiling, {} failed: {e}", mode.label()),
            }
        }
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

/// How `--ceiling` drains.
#[derive(Clone, Copy, Debug)]
enum Raw {
    /// lapin, `no_ack`.
    AutoAck,
    /// lapin, `basic.ack` per delivery.
    AckEach,
    /// lapin, `basic.ack(multiple=true)` per 64 deliveries.
    AckMultiple,
    /// celeriac's AMQP consumer, each delivery acked at once.
    Transport,
}

impl Raw {
    fn label(self) -> &'static str {
        match self {
            Raw::AutoAck => "lapin consumer, autoack (no_ack)",
            Raw::AckEach => "lapin consumer, one basic.ack per delivery",
            Raw::AckMultiple => "lapin consumer, basic.ack(multiple) per 64 deliveries",
            Raw::Transport => "celeriac AMQP consumer alone, acks batched",
        }
    }
}

/// Fills the bench queue with `tasks` no-op tasks, then drains it as `mode`
/// says, prefetch 256; the rate from the first `basic.consume` to the last delivery handled.
async fn raw_drain(url: &str, tasks: usize, mode: Raw) -> Result<f64, String> {
    use celeriac_broker::{AmqpBroker, Broker, Producer, ProducerConfig};
    use futures_util::StreamExt as _;
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};

    let amqp = AmqpBroker::from_url(url).map_err(|e| e.to_string())?;
    let broker = Broker::new(amqp.clone());
    let queue = amqp::QUEUE;
    let _ = broker.delete_queue(queue).await;
    broker.declare_queue(queue, queue, queue).await.map_err(|e| e.to_string())?;
    let producer = Producer::new(broker.clone(), ProducerConfig::default());
    celeriac_bench::load::send_many(
        &producer,
        "bench.noop",
        vec![],
        &celeriac_bench::load::to_queue(queue),
        tasks,
        256,
    )
    .await
    .map_err(|e| e.to_string())?;
    let start = std::time::Instant::now();
    if let Raw::Transport = mode {
        let mut consumer = broker.consumer(&[queue.to_owned()], 256);
        let mut acks = futures_util::stream::FuturesUnordered::new();
        let mut received = 0;
        while received < tasks || !acks.is_empty() {
            tokio::select! {
                Some(d) = consumer.next(), if received < tasks => {
                    let mut d = d.map_err(|e| e.to_string())?;
                    received += 1;
                    acks.push(async move { d.ack().await });
                }
                Some(done) = acks.next() => done.map_err(|e| e.to_string())?,
            }
        }
        let rate = tasks as f64 / start.elapsed().as_secs_f64();
        let (acked, frames) = amqp.ack_counts();
        eprintln!("amqp-bench: ceiling, transport: {acked} acks in {frames} basic.ack frames");
        consumer.close().await;
        return Ok(rate);
    }
    let properties = lapin::ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    let conn = lapin::Connection::connect(url, properties).await.map_err(|e| e.to_string())?;
    let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
    channel.basic_qos(256, BasicQosOptions { global: true }).await.map_err(|e| e.to_string())?;
    let no_ack = matches!(mode, Raw::AutoAck);
    let mut consumer = channel
        .basic_consume(queue, "ceiling", BasicConsumeOptions { no_ack, ..Default::default() }, Default::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut received = 0;
    while received < tasks {
        let delivery = consumer.next().await.ok_or("the consumer ended")?.map_err(|e| e.to_string())?;
        received += 1;
        let tag = delivery.delivery_tag;
        match mode {
            Raw::AckEach => channel.basic_ack(tag, BasicAckOptions { multiple: false }).await,
            Raw::AckMultiple if received % 64 == 0 || received == tasks => {
                channel.basic_ack(tag, BasicAckOptions { multiple: true }).await
            }
            _ => Ok(()),
        }
        .map_err(|e| e.to_string())?;
    }
    let rate = tasks as f64 / start.elapsed().as_secs_f64();
    let _ = conn.close(200, "done").await;
    Ok(rate)
}

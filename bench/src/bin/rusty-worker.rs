//! The Rust peer of the benchmarks: rusty-celery (the `celery` crate) as a
//! worker of the bench tasks, and as a producer for the enqueue benchmark.
//!
//! ```text
//! rusty-worker worker  <broker-url> <queue> <prefetch>
//! rusty-worker produce <broker-url> <queue> <count>     # prints {"count":..,"seconds":..}
//! ```
//!
//! rusty-celery 0.5's Redis broker pops with `RPOP <queue>` and keeps
//! in-flight messages in its own hash `_celery.<queue>_process_map` (HSET on
//! receipt, HDEL on ack), not kombu's `unacked`/`unacked_index`; it has no
//! result backend. `bench.stamp(sent)` therefore reports its start time by
//! `RPUSH bench:stamps "<sent> <started>"` (after taking the time).

#![allow(non_local_definitions)] // from the `celery::task` macro

use std::sync::OnceLock;
use std::time::Instant;

use celery::prelude::*;

/// Where `bench.stamp` reports (set at startup).
static STAMPS: OnceLock<redis::Client> = OnceLock::new();

#[celery::task(name = "bench.noop")]
fn noop() -> TaskResult<()> {
    Ok(())
}

#[celery::task(name = "bench.stamp")]
async fn stamp(sent: f64) -> TaskResult<()> {
    let started = celeriac_bench::unix_now();
    if let Some(client) = STAMPS.get() {
        if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
            let _ = celeriac_bench::push_stamp(&mut conn, sent, started).await;
        }
    }
    Ok(())
}

async fn app(
    broker: &str,
    queue: &str,
    prefetch: u16,
) -> Result<std::sync::Arc<celery::Celery>, Box<dyn std::error::Error>> {
    let celery = celery::CeleryBuilder::new("bench", broker)
        .default_queue(queue)
        .prefetch_count(prefetch)
        .acks_late(true)
        .build()
        .await?;
    celery.register_task::<noop>().await?;
    celery.register_task::<stamp>().await?;
    Ok(std::sync::Arc::new(celery))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: rusty-worker worker|produce <broker-url> <queue> <prefetch|count>";
    let [_, mode, broker, queue, n] = args.as_slice() else { return Err(usage.into()) };
    let n: u32 = n.parse()?;
    match mode.as_str() {
        "worker" => {
            // On AMQP only bench.noop runs (the drain): no stamps to report.
            if broker.starts_with("redis") {
                let _ = STAMPS.set(redis::Client::open(broker.as_str())?);
            }
            let app = app(broker, queue, u16::try_from(n)?).await?;
            eprintln!("rusty-worker ready.");
            app.consume_from(&[queue.as_str()]).await?;
            Ok(())
        }
        "produce" => {
            let app = app(broker, queue, 1).await?;
            app.send_task(noop::new()).await?; // connection warm
            let start = Instant::now();
            for _ in 0..n {
                app.send_task(noop::new()).await?;
            }
            let seconds = start.elapsed().as_secs_f64();
            println!("{{\"count\": {n}, \"seconds\": {seconds}}}");
            Ok(())
        }
        _ => Err(usage.into()),
    }
}

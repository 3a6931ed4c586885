//! celeriac's Redis transport alone, for the "where the time goes" rows of
//! the benchmarks: consumes a queue with the same prefetch window as the
//! worker and acks every delivery at once (no task decoding, no task
//! runtime). Runs until killed.
//!
//! A `bench.stamp(sent)` delivery is also reported the way rusty-worker
//! reports it (`RPUSH bench:stamps "<sent> <received>"`, the time taken as
//! the delivery is handed over), so the latency phase can measure the
//! transport's share of enqueue → start.
//!
//! With `--bare` it is not celeriac's transport but a bare `BRPOP` loop on
//! the queue's list (one redis-rs connection, nothing recorded in `unacked`,
//! nothing acked): the floor of enqueue → delivered for any consumer.
//!
//! ```text
//! transport-drain <broker-url> <queue> <prefetch> [--bare]
//! ```

// The ack future is deep (batching, retries, the script call).
#![recursion_limit = "256"]

use celeriac_broker::RedisBroker;
use celeriac_protocol::Value;

// One runtime thread, as the worker runs in the bench (`--runtime-threads 1`).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (url, queue, prefetch, bare) = match args.as_slice() {
        [_, url, queue, prefetch] => (url, queue, prefetch, false),
        [_, url, queue, prefetch, flag] if flag == "--bare" => (url, queue, prefetch, true),
        _ => return Err("usage: transport-drain <broker-url> <queue> <prefetch> [--bare]".into()),
    };
    let stamps = redis::Client::open(url.as_str())?.get_multiplexed_async_connection().await?;
    if bare {
        return bare_brpop(url, queue, stamps).await;
    }
    let broker = RedisBroker::from_url(url)?;
    let mut consumer = broker.consumer(std::slice::from_ref(queue), prefetch.parse()?);
    eprintln!("transport-drain ready.");
    while let Some(next) = consumer.next().await {
        match next {
            Ok(mut delivery) => {
                let received = celeriac_bench::unix_now();
                // Only a stamp task costs more than the ack (the drain's no-ops do not).
                let stamp = stamp_sent(delivery.message()).map(|sent| (sent, stamps.clone()));
                tokio::spawn(async move {
                    if let Err(e) = delivery.ack().await {
                        eprintln!("transport-drain: ack failed: {e}");
                    }
                    if let Some((sent, mut stamps)) = stamp {
                        if let Err(e) = celeriac_bench::push_stamp(&mut stamps, sent, received).await {
                            eprintln!("transport-drain: stamp not recorded: {e}");
                        }
                    }
                });
            }
            Err(e) => eprintln!("transport-drain: {e}"),
        }
    }
    Ok(())
}

/// `--bare`: pops with `BRPOP` until killed, stamping `bench.stamp` messages.
async fn bare_brpop(
    url: &str,
    queue: &str,
    mut stamps: redis::aio::MultiplexedConnection,
) -> Result<(), Box<dyn std::error::Error>> {
    // Short waits: the connection has a response timeout.
    let mut conn = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
    eprintln!("transport-drain --bare ready.");
    loop {
        let popped: Option<(String, Vec<u8>)> =
            redis::cmd("BRPOP").arg(queue).arg("0.1").query_async(&mut conn).await?;
        let Some((_, raw)) = popped else { continue };
        let received = celeriac_bench::unix_now();
        let Ok(envelope) = celeriac_protocol::Envelope::from_slice(&raw) else { continue };
        if let Some(sent) = stamp_sent(&envelope.message) {
            celeriac_bench::push_stamp(&mut stamps, sent, received).await?;
        }
    }
}

/// The `sent` argument of a `bench.stamp` message (protocol 2 body
/// `[args, kwargs, embed]`), read only for that task.
fn stamp_sent(message: &celeriac_protocol::Message) -> Option<f64> {
    if !matches!(message.headers.get("task"), Some(Value::Str(name)) if name == "bench.stamp") {
        return None;
    }
    let Ok(Value::List(body)) = message.decode_body(1 << 20) else { return None };
    match body.first() {
        Some(Value::List(args)) => match args.first() {
            Some(Value::Float(sent)) => Some(*sent),
            _ => None,
        },
        _ => None,
    }
}

//! celeriac's Redis transport alone, for the "where the time goes" row of
//! the benchmarks: consumes a queue with the same prefetch window as the
//! worker and acks every delivery at once (no task decoding, no task
//! runtime). Runs until killed.
//!
//! ```text
//! transport-drain <broker-url> <queue> <prefetch>
//! ```

// The ack future is deep (batching, retries, the script call).
#![recursion_limit = "256"]

use celeriac_broker::RedisBroker;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, queue, prefetch] = args.as_slice() else {
        return Err("usage: transport-drain <broker-url> <queue> <prefetch>".into());
    };
    let broker = RedisBroker::from_url(url)?;
    let mut consumer = broker.consumer(std::slice::from_ref(queue), prefetch.parse()?);
    eprintln!("transport-drain ready.");
    while let Some(next) = consumer.next().await {
        match next {
            Ok(mut delivery) => {
                tokio::spawn(async move {
                    if let Err(e) = delivery.ack().await {
                        eprintln!("transport-drain: ack failed: {e}");
                    }
                });
            }
            Err(e) => eprintln!("transport-drain: {e}"),
        }
    }
    Ok(())
}

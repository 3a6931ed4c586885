//! Load generation and observation: filling queues with the celeriac
//! producer, sending at a steady rate, and watching queues, in-flight hashes
//! and result notifications in Redis.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use celeriac_broker::{Broker, Producer, ProducerConfig, SendOptions};
use celeriac_protocol::{Map, Value};
use futures_util::{stream, StreamExt};
use redis::aio::MultiplexedConnection;

use crate::BenchError;

/// A plain connection for the harness's own commands.
#[derive(Clone)]
pub struct Probe {
    conn: MultiplexedConnection,
}

impl Probe {
    /// Connects to `url`.
    pub async fn connect(url: &str) -> Result<Probe, BenchError> {
        let client = redis::Client::open(url)?;
        Ok(Probe { conn: client.get_multiplexed_async_connection().await? })
    }

    /// `FLUSHALL`: every database empty.
    pub async fn flush(&self) -> Result<(), BenchError> {
        redis::cmd("FLUSHALL").exec_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    /// `LLEN`.
    pub async fn llen(&self, key: &str) -> Result<u64, BenchError> {
        Ok(redis::cmd("LLEN").arg(key).query_async(&mut self.conn.clone()).await?)
    }

    /// `HLEN`.
    pub async fn hlen(&self, key: &str) -> Result<u64, BenchError> {
        Ok(redis::cmd("HLEN").arg(key).query_async(&mut self.conn.clone()).await?)
    }

    /// Keys in database `db`.
    pub async fn dbsize(&self, db: u32) -> Result<u64, BenchError> {
        let mut conn = self.conn.clone();
        let (_, size): ((), u64) = redis::pipe().cmd("SELECT").arg(db).cmd("DBSIZE").query_async(&mut conn).await?;
        redis::cmd("SELECT").arg(0).exec_async(&mut conn).await?;
        Ok(size)
    }

    /// CPU seconds redis-server has used (`INFO cpu`: user + sys).
    pub async fn server_cpu(&self) -> Result<f64, BenchError> {
        let info: String = redis::cmd("INFO").arg("cpu").query_async(&mut self.conn.clone()).await?;
        Ok(info
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                matches!(k, "used_cpu_sys" | "used_cpu_user").then(|| v.trim().parse::<f64>().ok())?
            })
            .sum())
    }

    /// `CONFIG RESETSTAT`: command statistics start again from zero.
    pub async fn reset_stats(&self) -> Result<(), BenchError> {
        redis::cmd("CONFIG").arg("RESETSTAT").exec_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    /// `INFO commandstats`: (command, calls, microseconds) for each command run
    /// since the last [`Probe::reset_stats`], most time first.
    pub async fn command_stats(&self) -> Result<Vec<(String, u64, u64)>, BenchError> {
        let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut self.conn.clone()).await?;
        let mut out: Vec<(String, u64, u64)> = info
            .lines()
            .filter_map(|l| {
                let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
                let field =
                    |k: &str| rest.split(',').find_map(|kv| kv.strip_prefix(k)?.strip_prefix('=')?.parse::<u64>().ok());
                Some((name.to_owned(), field("calls")?, field("usec")?))
            })
            .collect();
        out.sort_by_key(|c| std::cmp::Reverse(c.2));
        Ok(out)
    }

    /// `LRANGE key 0 -1`.
    pub async fn lrange(&self, key: &str) -> Result<Vec<String>, BenchError> {
        Ok(redis::cmd("LRANGE").arg(key).arg(0).arg(-1).query_async(&mut self.conn.clone()).await?)
    }

    /// Messages waiting in `queue` plus entries in the `inflight` hashes.
    pub async fn outstanding(&self, queue: &str, inflight: &[String]) -> Result<u64, BenchError> {
        let mut pipe = redis::pipe();
        pipe.cmd("LLEN").arg(queue);
        for key in inflight {
            pipe.cmd("HLEN").arg(key);
        }
        let counts: Vec<u64> = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(counts.iter().sum())
    }

    /// Polls every 2 ms until [`Probe::outstanding`] is 0; the time it took
    /// from `since`, or an error after `timeout` (or if `alive` says the
    /// worker died).
    pub async fn wait_drained(
        &self,
        queue: &str,
        inflight: &[String],
        since: Instant,
        timeout: Duration,
        mut alive: impl FnMut() -> bool,
    ) -> Result<Duration, BenchError> {
        loop {
            let left = self.outstanding(queue, inflight).await?;
            if left == 0 {
                return Ok(since.elapsed());
            }
            if since.elapsed() > timeout {
                return Err(BenchError::Other(format!("{left} tasks still outstanding after {timeout:?}")));
            }
            if !alive() {
                return Err(BenchError::Other(format!("the worker exited with {left} tasks outstanding")));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// A celeriac producer on `url` (JSON, as Celery's defaults).
pub fn producer(url: &str) -> Result<Producer, BenchError> {
    Ok(Producer::new(Broker::from_url(url)?, ProducerConfig::default()))
}

/// Options to send to `queue`.
pub fn to_queue(queue: &str) -> SendOptions {
    SendOptions { queue: Some(queue.to_owned()), ..SendOptions::default() }
}

/// Sends `count` tasks `name(args)` with up to `in_flight` sends outstanding
/// at once; returns how long it took.
pub async fn send_many(
    producer: &Producer,
    name: &str,
    args: Vec<Value>,
    options: &SendOptions,
    count: usize,
    in_flight: usize,
) -> Result<Duration, BenchError> {
    let start = Instant::now();
    if in_flight <= 1 {
        for _ in 0..count {
            producer.send_task(name, args.clone(), Map::new(), options.clone()).await?;
        }
    } else {
        let mut sends = stream::iter(0..count)
            .map(|_| producer.send_task(name, args.clone(), Map::new(), options.clone()))
            .buffer_unordered(in_flight);
        while let Some(sent) = sends.next().await {
            sent?;
        }
    }
    Ok(start.elapsed())
}

/// Sends `count` `bench.stamp(sent)` tasks at `rate` per second; returns each
/// task id with its send time (Unix seconds).
pub async fn send_steady(
    producer: &Producer,
    queue: &str,
    count: usize,
    rate: u32,
) -> Result<HashMap<String, f64>, BenchError> {
    let mut sent = HashMap::with_capacity(count);
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let options = to_queue(queue);
    for _ in 0..count {
        ticks.tick().await;
        let at = crate::unix_now();
        let id = producer.send_task("bench.stamp", vec![Value::Float(at)], Map::new(), options.clone()).await?;
        sent.insert(id, at);
    }
    Ok(sent)
}

/// Result notifications seen on `celery-task-meta-*`: task id → (the task's
/// result, the time it was seen).
pub struct ResultWatch {
    handle: tokio::task::JoinHandle<HashMap<String, (Value, f64)>>,
    stop: tokio::sync::oneshot::Sender<(usize, tokio::time::Instant)>,
}

impl ResultWatch {
    /// Subscribes (the subscription is active when this returns).
    pub async fn start(url: &str) -> Result<ResultWatch, BenchError> {
        let client = redis::Client::open(url)?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.psubscribe("celery-task-meta-*").await?;
        let (stop, mut stop_rx) = tokio::sync::oneshot::channel::<(usize, tokio::time::Instant)>();
        let handle = tokio::spawn(async move {
            let mut seen = HashMap::new();
            let mut messages = pubsub.into_on_message();
            let mut want: Option<usize> = None;
            let far = tokio::time::Instant::now() + Duration::from_secs(86_400);
            let deadline = tokio::time::sleep_until(far);
            tokio::pin!(deadline);
            loop {
                if want.is_some_and(|w| seen.len() >= w) {
                    break;
                }
                tokio::select! {
                    m = messages.next() => {
                        let Some(m) = m else { break };
                        let at = crate::unix_now();
                        let Ok(meta) = serde_json::from_slice::<serde_json::Value>(m.get_payload_bytes()) else { continue };
                        let id = meta.get("task_id").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
                        let result = match meta.get("result") {
                            Some(serde_json::Value::Number(n)) => Value::Float(n.as_f64().unwrap_or(0.0)),
                            _ => Value::Null,
                        };
                        seen.insert(id, (result, at));
                    }
                    w = &mut stop_rx, if want.is_none() => {
                        let (count, until) = w.unwrap_or((0, tokio::time::Instant::now()));
                        want = Some(count);
                        deadline.as_mut().reset(until);
                    }
                    _ = &mut deadline => break,
                }
            }
            seen
        });
        Ok(ResultWatch { handle, stop })
    }

    /// Waits until `count` results were seen (or `timeout` passed), then
    /// returns those seen.
    pub async fn finish(self, count: usize, timeout: Duration) -> HashMap<String, (Value, f64)> {
        let _ = self.stop.send((count, tokio::time::Instant::now() + timeout));
        self.handle.await.unwrap_or_default()
    }
}

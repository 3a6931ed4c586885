//! Queue depths. On Redis, as kombu keeps them: each queue is a list per
//! priority step (`q`, `q\x06\x163`, `q\x06\x166`, `q\x06\x169` with the
//! default steps), messages delivered but not acked wait in the `unacked`
//! hash, and a queue is known by its bindings (`_kombu.binding.<exchange>`).
//! Also the operator's own connection to the broker's Redis (for reading
//! replies and depths), made from the broker's settings so TLS, unix sockets,
//! ACL users and Sentinel work as they do for the worker.
//!
//! On RabbitMQ ([`DepthReader::Transport`]) a queue's ready messages come
//! from a passive `queue.declare` (what `celery inspect active_queues` users
//! read with `rabbitmqctl list_queues`); AMQP 0-9-1 reports neither the
//! unacked count nor the list of queues, so those are left out and the
//! queues shown are the ones asked for, consumed or configured.

use std::collections::BTreeMap;

use celeriac_broker::{Broker, RedisBroker, RedisEndpoint, RedisOptions};
use celeriac_redisconn::{Endpoint, Target};
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use serde_json::{json, Value};

use crate::error::CliError;

/// How many `unacked` entries are read at most to count them per queue;
/// past that only the total is given.
pub const UNACKED_SCAN_LIMIT: u64 = 10_000;

/// How long one read of the broker may take before the command gives up.
pub const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// `fut` within [`READ_TIMEOUT`] (the operator's connection has no response
/// timeout of its own, as it also waits in `BRPOP`).
pub async fn bounded<T>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, CliError>>,
) -> Result<T, CliError> {
    tokio::time::timeout(READ_TIMEOUT, fut).await.unwrap_or_else(|_| {
        Err(CliError::Operator(format!("the broker did not answer {what} within {READ_TIMEOUT:?}")))
    })
}

/// Queues that are the fleet's plumbing, not task queues: the pidbox node
/// queues, reply queues and event queues.
pub fn is_plumbing(queue: &str) -> bool {
    queue.ends_with(".celery.pidbox") || queue.ends_with(".reply.celery.pidbox") || queue.starts_with("celeryev.")
}

fn redis_err(what: String) -> impl Fn(redis::RedisError) -> CliError {
    move |e| CliError::Operator(format!("Redis {what}: {e}"))
}

/// A new connection to the Redis of `broker` (no response timeout: it may
/// block in `BRPOP`).
pub async fn connect(broker: &RedisBroker) -> Result<MultiplexedConnection, CliError> {
    let o: &RedisOptions = broker.options();
    let url = broker.masked_url().to_owned();
    let endpoint = match (&o.endpoint, &o.tls) {
        (RedisEndpoint::Tcp { host, port }, Some(tls)) => {
            Endpoint::Tls { host: host.clone(), port: *port, tls: tls.clone() }
        }
        (RedisEndpoint::Tcp { host, port }, None) => Endpoint::Tcp { host: host.clone(), port: *port },
        (RedisEndpoint::Unix { path }, _) => Endpoint::Unix { path: path.clone() },
        (RedisEndpoint::Sentinel { nodes, .. }, tls) => Endpoint::Sentinel { nodes: nodes.clone(), tls: tls.clone() },
    };
    let master = match &o.endpoint {
        RedisEndpoint::Sentinel { master_name, .. } => master_name.as_deref().filter(|m| !m.is_empty()),
        _ => None,
    };
    let settings =
        celeriac_redisconn::redis_settings(o.db, o.username.as_deref(), o.password.as_ref().map(|p| p.expose()));
    let sentinel_password = o.sentinel_password.as_ref().map(|p| p.expose());
    let target = endpoint
        .target(settings, master, sentinel_password, &url)
        .map_err(|e| CliError::Operator(format!("broker {url}: {e}")))?;
    let client = match target {
        Target::Direct(client) => client,
        Target::Sentinel(sentinel) => {
            sentinel.lock().await.async_get_client().await.map_err(redis_err(format!("Sentinel of {url}")))?
        }
    };
    let timeout = o.socket_connect_timeout.unwrap_or(celeriac_redisconn::DEFAULT_CONNECT_TIMEOUT);
    let config = AsyncConnectionConfig::new().set_connection_timeout(Some(timeout)).set_response_timeout(None);
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| CliError::Operator(format!("cannot reach the broker at {url}: {e}")))
}

/// Where depths are read from: the broker's Redis, or the transport itself
/// (RabbitMQ).
pub enum DepthReader {
    /// kombu's Redis layout, through the operator's own connection.
    Redis {
        /// The broker.
        broker: RedisBroker,
        /// The connection reads go through.
        con: MultiplexedConnection,
    },
    /// Through the transport (a passive `queue.declare` per queue on AMQP).
    Transport {
        /// The broker.
        broker: Broker,
        /// The queues the settings declare (`task_queues`), since the broker
        /// cannot list its queues.
        declared: Vec<String>,
    },
}

impl DepthReader {
    /// A reader for `broker`; `declared` are the settings' queues, shown
    /// where the broker cannot list them.
    pub async fn open(broker: &Broker, declared: Vec<String>) -> Result<DepthReader, CliError> {
        match broker.as_redis() {
            Some(redis) => Ok(DepthReader::Redis { broker: redis.clone(), con: connect(redis).await? }),
            None => Ok(DepthReader::Transport { broker: broker.clone(), declared }),
        }
    }

    /// The task queues the broker knows of (Redis: the bound ones; AMQP:
    /// those the settings declare).
    pub async fn known_queues(&mut self) -> Result<Vec<String>, CliError> {
        match self {
            DepthReader::Redis { broker, con } => bounded("listing the bound queues", bound_queues(broker, con)).await,
            DepthReader::Transport { declared, .. } => Ok(declared.clone()),
        }
    }

    /// The depths of `queues`.
    pub async fn read(&mut self, queues: &[String]) -> Result<Depths, CliError> {
        match self {
            DepthReader::Redis { broker, con } => bounded("reading queue depths", read(broker, con, queues)).await,
            DepthReader::Transport { broker, .. } => {
                bounded("reading queue depths", read_transport(broker, queues)).await
            }
        }
    }
}

/// Depths through the transport: ready messages per queue (0 for a queue
/// that does not exist), no unacked counts.
async fn read_transport(broker: &Broker, queues: &[String]) -> Result<Depths, CliError> {
    let mut out = Depths { unacked_total: None, ..Depths::default() };
    for queue in queues {
        let messages = broker.queue_len(queue).await?;
        out.queues.insert(queue.clone(), Depth { messages, ..Depth::default() });
    }
    Ok(out)
}

/// One queue's depth.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Depth {
    /// Messages waiting, all priorities.
    pub messages: u64,
    /// Messages waiting per priority step (`0`, `3`, `6`, `9` by default),
    /// only the steps that hold some.
    pub by_priority: BTreeMap<u8, u64>,
    /// Messages of this queue delivered and not yet acked (when counted).
    pub unacked: Option<u64>,
}

impl Depth {
    /// As JSON.
    pub fn to_json(&self) -> Value {
        let by: serde_json::Map<String, Value> =
            self.by_priority.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        json!({"messages": self.messages, "by_priority": by, "unacked": self.unacked})
    }
}

/// What the broker holds: depths per queue and the `unacked` total.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Depths {
    /// Each queue asked about.
    pub queues: BTreeMap<String, Depth>,
    /// Entries of the `unacked` hash (all queues); `None` where the broker
    /// does not say (AMQP).
    pub unacked_total: Option<u64>,
    /// Whether `unacked` was counted per queue (not when it is larger than
    /// [`UNACKED_SCAN_LIMIT`]).
    pub unacked_by_queue: bool,
}

/// Reads the depths of `queues` (each priority list), and the `unacked`
/// hash: its size, and per queue (by the routing key each entry was
/// delivered with) while it has at most [`UNACKED_SCAN_LIMIT`] entries.
pub async fn read(
    broker: &RedisBroker,
    con: &mut MultiplexedConnection,
    queues: &[String],
) -> Result<Depths, CliError> {
    let keys = broker.keys();
    let steps: Vec<u8> = keys.steps().to_vec();
    let mut pipe = redis::pipe();
    for queue in queues {
        for step in &steps {
            pipe.cmd("LLEN").arg(keys.queue_key(queue, *step));
        }
    }
    let unacked_key = keys.unacked().to_owned();
    pipe.cmd("HLEN").arg(&unacked_key);
    let mut lens: Vec<u64> =
        pipe.query_async(con).await.map_err(redis_err(format!("LLEN of the queues {queues:?}")))?;
    let unacked_total = lens.pop().unwrap_or(0);
    let mut out = Depths { unacked_total: Some(unacked_total), ..Depths::default() };
    let mut lens = lens.into_iter();
    for queue in queues {
        let mut depth = Depth::default();
        for step in &steps {
            let n = lens.next().unwrap_or(0);
            depth.messages += n;
            if n > 0 {
                depth.by_priority.insert(*step, n);
            }
        }
        out.queues.insert(queue.clone(), depth);
    }
    if unacked_total <= UNACKED_SCAN_LIMIT {
        let per = unacked_per_routing_key(con, &unacked_key).await?;
        for (queue, depth) in out.queues.iter_mut() {
            depth.unacked = Some(per.get(queue).copied().unwrap_or(0));
        }
        out.unacked_by_queue = true;
    }
    Ok(out)
}

/// `unacked` entries counted by the routing key they were delivered with
/// (the queue, under Celery's default routing). Each entry is kombu's
/// `[envelope, exchange, routing_key]`.
async fn unacked_per_routing_key(
    con: &mut MultiplexedConnection,
    key: &str,
) -> Result<BTreeMap<String, u64>, CliError> {
    let mut per = BTreeMap::new();
    let mut cursor: u64 = 0;
    let mut seen: u64 = 0;
    loop {
        let (next, pairs): (u64, Vec<(String, Vec<u8>)>) = redis::cmd("HSCAN")
            .arg(key)
            .arg(cursor)
            .arg("COUNT")
            .arg(500)
            .query_async(con)
            .await
            .map_err(redis_err(format!("HSCAN {key}")))?;
        for (_, raw) in pairs {
            seen += 1;
            if let Ok((_, _, routing_key)) = celeriac_protocol::Envelope::from_unacked_slice(&raw) {
                *per.entry(routing_key).or_insert(0) += 1;
            }
        }
        if next == 0 || seen > UNACKED_SCAN_LIMIT * 2 {
            return Ok(per);
        }
        cursor = next;
    }
}

/// The task queues bound in the broker (`_kombu.binding.*` sets), without
/// the fleet's plumbing. A queue nobody declared yet is not among them.
pub async fn bound_queues(broker: &RedisBroker, con: &mut MultiplexedConnection) -> Result<Vec<String>, CliError> {
    let keys = broker.keys();
    let mut found = std::collections::BTreeSet::new();
    // `_kombu.binding.<exchange>` and kombu 5.7's `_kombu.binding_permanent.<exchange>`
    // (not its `_kombu.binding_deadlines` sorted set).
    let mut sets = Vec::new();
    for pattern in [format!("{}*", keys.binding_key("")), format!("{}*", keys.binding_permanent_key(""))] {
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(con)
                .await
                .map_err(redis_err(format!("SCAN {pattern}")))?;
            sets.extend(batch);
            if next == 0 || sets.len() > 10_000 {
                break;
            }
            cursor = next;
        }
    }
    for set in sets {
        let members: Vec<String> =
            redis::cmd("SMEMBERS").arg(&set).query_async(con).await.map_err(redis_err(format!("SMEMBERS {set}")))?;
        for member in &members {
            if let Some((_, _, queue)) = keys.parse_binding_member(member) {
                if !is_plumbing(queue) {
                    found.insert(queue.to_owned());
                }
            }
        }
    }
    Ok(found.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plumbing_queues_are_not_task_queues() {
        assert!(is_plumbing("w1@h.celery.pidbox"));
        assert!(is_plumbing("c0ffee.reply.celery.pidbox"));
        assert!(is_plumbing("celeryev.1234"));
        assert!(!is_plumbing("workflow.hpc"));
        assert!(!is_plumbing("celery"));
    }

    #[test]
    fn depths_as_json_name_each_priority_step() {
        let mut d = Depth { messages: 5, unacked: Some(1), ..Depth::default() };
        d.by_priority.insert(0, 2);
        d.by_priority.insert(9, 3);
        assert_eq!(d.to_json(), json!({"messages": 5, "by_priority": {"0": 2, "9": 3}, "unacked": 1}));
    }
}

//! The caller's end of remote control, as kombu's `Mailbox` is for `celery
//! inspect`/`celery control`: declare a reply queue `<oid>.reply.celery.pidbox`
//! bound to the `reply.celery.pidbox` exchange, broadcast the request on the
//! `celery.pidbox` fanout (`method`, `arguments`, `destination`, `ticket`,
//! `reply_to`; headers `clock` and `expires`), collect the replies carrying
//! our ticket until `limit` came or `timeout` passed, then delete the queue
//! so late replies are dropped by the workers. Python and celeriac workers
//! answer it alike.
//!
//! On Redis the reply queue is kombu's list, read with `BRPOP` on the
//! operator's own connection. On RabbitMQ it is a queue of its own
//! (non-durable, auto-delete, `x-expires` 10 s, `x-message-ttl` 300 s as
//! kombu declares it), bound and consumed before the request goes out, and
//! gone when the call ends.

use std::time::{Duration, Instant};

use celeriac_broker::{Broker, ExchangeKind, RedisBroker, Subscription};
use celeriac_protocol::codec::ContentType;
use celeriac_protocol::{Envelope, Map, Message, Value};
use celeriac_worker::control::{request, PIDBOX_EXCHANGE, REPLY_EXCHANGE};
use redis::aio::MultiplexedConnection;
use tracing::debug;

use crate::error::CliError;

/// Largest reply element read (a `stats` or `conf` reply is a few kB; a
/// `revoked` list of 100 000 ids about 4 MB).
const MAX_REPLY_BYTES: usize = 16 << 20;

/// One request to the fleet.
#[derive(Debug, Clone)]
pub struct Call {
    /// The command (`ping`, `stats`, `revoke`, ...).
    pub method: String,
    /// Its arguments.
    pub arguments: Map,
    /// The nodes addressed (`None`: every node).
    pub destination: Option<Vec<String>>,
    /// How long to wait for replies.
    pub timeout: Duration,
    /// Stop after this many replies (default: one per destination).
    pub limit: Option<usize>,
    /// Whether replies are wanted (`false`: a cast).
    pub reply: bool,
}

impl Call {
    /// A call of `method` to every node, waiting `timeout` for replies.
    pub fn new(method: &str, arguments: Map, timeout: Duration) -> Call {
        Call { method: method.to_owned(), arguments, destination: None, timeout, limit: None, reply: true }
    }

    /// Addresses `nodes` only (empty: everyone).
    pub fn to(mut self, nodes: &[String]) -> Call {
        self.destination = if nodes.is_empty() { None } else { Some(nodes.to_vec()) };
        self
    }
}

/// The caller's mailbox on one broker.
pub struct Mailbox {
    broker: Broker,
    /// The broker's Redis, when it is one (replies are read from its list).
    redis: Option<RedisBroker>,
}

impl Mailbox {
    /// A mailbox on `broker` (Redis or AMQP).
    pub fn new(broker: &Broker) -> Result<Mailbox, CliError> {
        broker.declare_exchange(PIDBOX_EXCHANGE, ExchangeKind::Fanout);
        broker.declare_exchange(REPLY_EXCHANGE, ExchangeKind::Direct);
        Ok(Mailbox { broker: broker.clone(), redis: broker.as_redis().cloned() })
    }

    /// Sends `call` and returns the replies in arrival order, each as
    /// `(node, value)`.
    pub async fn call(&self, call: &Call) -> Result<Vec<(String, Value)>, CliError> {
        match &self.redis {
            Some(redis) => self.call_redis(redis, call).await,
            None => self.call_queued(call).await,
        }
    }

    async fn call_redis(&self, redis: &RedisBroker, call: &Call) -> Result<Vec<(String, Value)>, CliError> {
        let oid = uuid_v4();
        let ticket = uuid_v4();
        let queue = format!("{oid}.{REPLY_EXCHANGE}");
        let mut con = match call.reply {
            true => Some(super::depths::connect(redis).await?),
            false => None,
        };
        if call.reply {
            self.broker.declare_queue(&queue, REPLY_EXCHANGE, &oid).await?;
        }
        let sent = self.publish(call, call.reply.then_some((&oid, &ticket))).await;
        let replies = match (sent, con.as_mut()) {
            (Err(e), _) => Err(e),
            (Ok(()), None) => Ok(Vec::new()),
            (Ok(()), Some(con)) => self.collect(redis, con, &queue, &ticket, call).await,
        };
        if call.reply {
            // Late replies now find no binding and are dropped by the workers.
            if let Err(e) = self.broker.delete_queue(&queue).await {
                debug!("remote control: cannot delete the reply queue {queue}: {e}");
            }
        }
        replies
    }

    /// A call on a transport with queues of its own (AMQP): the reply queue
    /// is subscribed before the request goes out, and dropped after.
    async fn call_queued(&self, call: &Call) -> Result<Vec<(String, Value)>, CliError> {
        if !call.reply {
            return self.publish(call, None).await.map(|()| Vec::new());
        }
        let oid = uuid_v4();
        let ticket = uuid_v4();
        let queue = format!("{oid}.{REPLY_EXCHANGE}");
        let mut replies = self.broker.subscribe_queue(REPLY_EXCHANGE, &oid, &queue).await?;
        self.publish(call, Some((&oid, &ticket))).await?;
        collect_subscribed(&mut replies, &ticket, call).await
        // Dropping the subscription deletes the queue: late replies are dropped.
    }

    async fn publish(&self, call: &Call, reply: Option<(&String, &String)>) -> Result<(), CliError> {
        let mut body = Map::new();
        body.insert("method".into(), Value::Str(call.method.clone()));
        body.insert("arguments".into(), Value::Map(call.arguments.clone()));
        let destination = match &call.destination {
            Some(nodes) => Value::List(nodes.iter().cloned().map(Value::Str).collect()),
            None => Value::Null,
        };
        body.insert("destination".into(), destination);
        body.insert("pattern".into(), Value::Null);
        body.insert("matcher".into(), Value::Null);
        if let Some((oid, ticket)) = reply {
            body.insert("ticket".into(), Value::Str(ticket.clone()));
            let mut to = Map::new();
            to.insert("exchange".into(), Value::Str(REPLY_EXCHANGE.into()));
            to.insert("routing_key".into(), Value::Str(oid.clone()));
            body.insert("reply_to".into(), Value::Map(to));
        }
        let mut headers = Map::new();
        headers.insert("clock".into(), Value::Int(1));
        let expires = celeriac_protocol::event::now_timestamp() + call.timeout.as_secs_f64();
        headers.insert("expires".into(), Value::Float(expires));
        let mut properties = Map::new();
        properties.insert("delivery_mode".into(), Value::Int(2));
        let message = Message::with_body(headers, properties, 0, ContentType::Json, None, &Value::Map(body))
            .map_err(|e| CliError::Operator(format!("cannot encode the {} request: {e}", call.method)))?;
        self.broker.publish(PIDBOX_EXCHANGE, "", &message).await?;
        Ok(())
    }

    async fn collect(
        &self,
        redis: &RedisBroker,
        con: &mut MultiplexedConnection,
        queue: &str,
        ticket: &str,
        call: &Call,
    ) -> Result<Vec<(String, Value)>, CliError> {
        let limit = reply_limit(call);
        let keys = redis.keys().queue_keys(queue);
        let deadline = Instant::now() + call.timeout;
        let mut replies = Vec::new();
        while limit.is_none_or(|n| replies.len() < n) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            // BRPOP takes fractional seconds (Redis 6+); 0 would block for ever.
            let wait = left.as_secs_f64().max(0.001);
            let mut cmd = redis::cmd("BRPOP");
            cmd.arg(&keys).arg(wait);
            let brpop = cmd.query_async::<Option<(String, Vec<u8>)>>(con);
            // The server answers by `wait`; a stalled server must not hold the command.
            let popped = tokio::time::timeout(left + Duration::from_secs(5), brpop)
                .await
                .map_err(|_| CliError::Operator("the broker stopped answering while replies were read".into()))?
                .map_err(|e| CliError::Operator(format!("reading replies: {e}")))?;
            let Some((_, raw)) = popped else { break };
            match read_reply(&raw, ticket) {
                Ok(Some(mut got)) => replies.append(&mut got),
                Ok(None) => debug!("remote control: a reply to another request was dropped"),
                Err(e) => tracing::warn!("remote control: an unreadable reply was dropped: {e}"),
            }
        }
        Ok(replies)
    }
}

/// How many replies to wait for: `limit`, else one per destination, else
/// all that come within the timeout.
fn reply_limit(call: &Call) -> Option<usize> {
    call.limit.or_else(|| call.destination.as_ref().map(Vec::len)).filter(|n| *n > 0)
}

/// Replies from a subscribed reply queue, as [`Mailbox::call`] collects them.
async fn collect_subscribed(
    replies: &mut Subscription,
    ticket: &str,
    call: &Call,
) -> Result<Vec<(String, Value)>, CliError> {
    let limit = reply_limit(call);
    let deadline = tokio::time::Instant::now() + call.timeout;
    let mut got = Vec::new();
    while limit.is_none_or(|n| got.len() < n) {
        let next = match tokio::time::timeout_at(deadline, replies.next()).await {
            Err(_) => break,
            Ok(next) => next,
        };
        match next {
            None => return Err(CliError::Operator("the reply queue was closed while replies were read".into())),
            Some(Err(e)) => tracing::warn!("remote control: an unreadable reply was dropped: {e}"),
            Some(Ok(m)) => match read_reply_message(&m.envelope.message, ticket) {
                Ok(Some(mut replies)) => got.append(&mut replies),
                Ok(None) => debug!("remote control: a reply to another request was dropped"),
                Err(e) => tracing::warn!("remote control: an unreadable reply was dropped: {e}"),
            },
        }
    }
    Ok(got)
}

/// The `(node, value)` pairs of one reply element, if it carries `ticket`
/// and has not expired.
pub fn read_reply(raw: &[u8], ticket: &str) -> Result<Option<Vec<(String, Value)>>, String> {
    if raw.len() > MAX_REPLY_BYTES {
        return Err(format!("{} bytes, more than the {MAX_REPLY_BYTES} read", raw.len()));
    }
    let envelope = Envelope::from_slice(raw).map_err(|e| e.to_string())?;
    read_reply_message(&envelope.message, ticket)
}

/// The `(node, value)` pairs of one reply message, if it carries `ticket`
/// and has not expired.
pub fn read_reply_message(message: &Message, ticket: &str) -> Result<Option<Vec<(String, Value)>>, String> {
    // kombu keeps replies without a ticket header as ours.
    if let Some(theirs) = message.headers.get("ticket").and_then(Value::as_str) {
        if theirs != ticket {
            return Ok(None);
        }
    }
    let expires = message.headers.get("expires").and_then(Value::as_f64).unwrap_or(0.0);
    if expires > 0.0 && expires < celeriac_protocol::event::now_timestamp() {
        return Ok(None);
    }
    let body = request::decode_body(message).map_err(|e| e.to_string())?;
    Ok(Some(body.into_iter().collect()))
}

/// A random UUID in its text form.
pub fn uuid_v4() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn element(ticket: Option<&str>, body: &str) -> Vec<u8> {
        let mut headers = Map::new();
        if let Some(t) = ticket {
            headers.insert("ticket".into(), Value::Str(t.into()));
        }
        let value = celeriac_protocol::json::from_str(body).unwrap();
        let message = Message::with_body(headers, Map::new(), 0, ContentType::Json, None, &value).unwrap();
        Envelope::new(message, REPLY_EXCHANGE, "oid").to_json().unwrap().into_bytes()
    }

    #[test]
    fn replies_are_kept_by_ticket() {
        let ours = read_reply(&element(Some("t1"), r#"{"w1@h": {"ok": "pong"}}"#), "t1").unwrap().unwrap();
        assert_eq!(ours.len(), 1);
        assert_eq!(ours[0].0, "w1@h");
        assert_eq!(read_reply(&element(Some("t2"), r#"{"w1@h": {"ok": "pong"}}"#), "t1").unwrap(), None);
        assert!(read_reply(&element(None, r#"{"w1@h": 1}"#), "t1").unwrap().is_some());
        assert!(read_reply(&element(Some("t1"), "[1, 2]"), "t1").is_err());
        assert!(read_reply(b"not json", "t1").is_err());
    }
}

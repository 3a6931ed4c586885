//! The caller's end of remote control, as kombu's `Mailbox` is for `celery
//! inspect`/`celery control`: declare a reply queue `<oid>.reply.celery.pidbox`
//! bound to the `reply.celery.pidbox` exchange, broadcast the request on the
//! `celery.pidbox` fanout (`method`, `arguments`, `destination`, `ticket`,
//! `reply_to`; headers `clock` and `expires`), collect the replies carrying
//! our ticket until `limit` came or `timeout` passed, then delete the queue
//! so late replies are dropped by the workers. Python and celeriac workers
//! answer it alike.

use std::time::{Duration, Instant};

use celeriac_broker::{Broker, ExchangeKind, RedisBroker};
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

/// The caller's mailbox on one Redis broker.
pub struct Mailbox {
    broker: Broker,
    redis: RedisBroker,
}

impl Mailbox {
    /// A mailbox on `broker` (Redis; other transports are refused with a message).
    pub fn new(broker: &Broker) -> Result<Mailbox, CliError> {
        let redis = super::depths::redis_of(broker, "remote control")?.clone();
        broker.declare_exchange(PIDBOX_EXCHANGE, ExchangeKind::Fanout);
        broker.declare_exchange(REPLY_EXCHANGE, ExchangeKind::Direct);
        Ok(Mailbox { broker: broker.clone(), redis })
    }

    /// Sends `call` and returns the replies in arrival order, each as
    /// `(node, value)`.
    pub async fn call(&self, call: &Call) -> Result<Vec<(String, Value)>, CliError> {
        let oid = uuid_v4();
        let ticket = uuid_v4();
        let queue = format!("{oid}.{REPLY_EXCHANGE}");
        let mut con = match call.reply {
            true => Some(super::depths::connect(&self.redis).await?),
            false => None,
        };
        if call.reply {
            self.broker.declare_queue(&queue, REPLY_EXCHANGE, &oid).await?;
        }
        let sent = self.publish(call, call.reply.then_some((&oid, &ticket))).await;
        let replies = match (sent, con.as_mut()) {
            (Err(e), _) => Err(e),
            (Ok(()), None) => Ok(Vec::new()),
            (Ok(()), Some(con)) => self.collect(con, &queue, &ticket, call).await,
        };
        if call.reply {
            // Late replies now find no binding and are dropped by the workers.
            if let Err(e) = self.broker.delete_queue(&queue).await {
                debug!("remote control: cannot delete the reply queue {queue}: {e}");
            }
        }
        replies
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
        con: &mut MultiplexedConnection,
        queue: &str,
        ticket: &str,
        call: &Call,
    ) -> Result<Vec<(String, Value)>, CliError> {
        let limit = call.limit.or_else(|| call.destination.as_ref().map(Vec::len)).filter(|n| *n > 0);
        let keys = self.redis.keys().queue_keys(queue);
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

/// The `(node, value)` pairs of one reply element, if it carries `ticket`
/// and has not expired.
pub fn read_reply(raw: &[u8], ticket: &str) -> Result<Option<Vec<(String, Value)>>, String> {
    if raw.len() > MAX_REPLY_BYTES {
        return Err(format!("{} bytes, more than the {MAX_REPLY_BYTES} read", raw.len()));
    }
    let envelope = Envelope::from_slice(raw).map_err(|e| e.to_string())?;
    let message = &envelope.message;
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

//! Celery 5.5's native delayed delivery on RabbitMQ (kombu's
//! `native_delayed_delivery`), used with quorum queues, which cannot hold
//! ETA messages for long: a message to run in `n` seconds is published to
//! the topic exchange `celery_delayed_27` with the 28 bits of `n` (most
//! significant first, dot-separated) before its routing key. Level `L`'s
//! quorum queue holds messages whose bit `L` is 1 for 2^L seconds
//! (`x-message-ttl`) and dead-letters them one level down; bit 0 set to 0
//! passes a level by an exchange binding. `celery_delayed_delivery` finally
//! routes `#.<routing key>` back to the task's exchange.
//!
//! The worker declares the topology and binds its queues (non-direct
//! exchanges only; a direct exchange is warned about, as Celery does); the
//! producer side rewrites the exchange and routing key of ETA messages when
//! quorum queues are configured and the target exchange is not direct.

use celeriac_protocol::time::PyDateTime;
use celeriac_protocol::{Message, Value};
use lapin::options::{ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::Channel;

use super::{long_str, AmqpInner};
use crate::error::BrokerError;
use crate::exchange::ExchangeKind;

/// Bits of the delay (kombu's `MAX_NUMBER_OF_BITS_TO_USE`): at most 2^28-1 s.
pub const BITS: u32 = 28;
/// Start of the level exchanges' and queues' names.
pub const EXCHANGE_PREFIX: &str = "celery_delayed_";
/// The exchange that routes due messages back to their exchange.
pub const DELIVERY_EXCHANGE: &str = "celery_delayed_delivery";
/// Where delayed messages are published.
pub const ENTRY_EXCHANGE: &str = "celery_delayed_27";

/// Level `level`'s exchange and queue name.
pub fn level_name(level: u32) -> String {
    format!("{EXCHANGE_PREFIX}{level}")
}

/// kombu's `calculate_routing_key`: the delay's 28 bits joined by `.`, then
/// `.routing_key` (a delay prefix it already carries, from an earlier
/// delayed retry, is replaced). `None` when the delay is under one second
/// or the key is empty (Python raises `ValueError` there).
pub fn routing_key(countdown_secs: u64, routing_key: &str) -> Option<String> {
    if countdown_secs < 1 || routing_key.is_empty() {
        return None;
    }
    let n = countdown_secs.min((1 << BITS) - 1);
    let bits: Vec<String> = (0..BITS).rev().map(|b| ((n >> b) & 1).to_string()).collect();
    Some(format!("{}.{}", bits.join("."), strip_delay_prefix(routing_key)))
}

/// The routing key without a leading `(0|1).` × 28 delay prefix.
fn strip_delay_prefix(key: &str) -> &str {
    let bytes = key.as_bytes();
    let prefix = 2 * BITS as usize;
    if bytes.len() < prefix {
        return key;
    }
    let is_prefix = (0..BITS as usize).all(|i| matches!(bytes[2 * i], b'0' | b'1') && bytes[2 * i + 1] == b'.');
    if is_prefix {
        &key[prefix..]
    } else {
        key
    }
}

/// Where the producer sends `message`: `Some((celery_delayed_27, key))` for
/// an ETA message to a non-direct exchange while quorum queues are
/// configured (Celery's `send_task`), else `None` (publish as given).
pub(crate) fn route(
    inner: &AmqpInner,
    exchange: &str,
    routing_key: &str,
    message: &Message,
) -> Result<Option<(String, String)>, BrokerError> {
    if exchange.is_empty() || exchange.starts_with(EXCHANGE_PREFIX) || !inner.quorum_detected() {
        return Ok(None);
    }
    if inner.exchange_attrs(exchange).0 == ExchangeKind::Direct {
        return Ok(None);
    }
    let Some(Value::Str(eta)) = message.headers.get("eta") else { return Ok(None) };
    let Ok(eta) = PyDateTime::parse_iso(eta) else { return Ok(None) };
    let Ok(at) = eta.to_timestamp() else { return Ok(None) };
    let countdown = at.as_second().saturating_sub(jiff::Timestamp::now().as_second());
    if countdown <= 0 {
        return Ok(None);
    }
    let key = routing_key_for(u64::try_from(countdown).unwrap_or(0), routing_key)?;
    Ok(Some((ENTRY_EXCHANGE.to_owned(), key)))
}

fn routing_key_for(countdown: u64, key: &str) -> Result<String, BrokerError> {
    routing_key(countdown, key).ok_or_else(|| {
        BrokerError::Config(format!(
            "cannot delay a message by {countdown} s with routing key {key:?} through native delayed delivery: the countdown must be at least 1 s and the routing key not empty"
        ))
    })
}

/// Declares the 28 levels and `celery_delayed_delivery` as kombu does, in
/// its order (levels 27 to 0, then the exchange bindings, then the
/// delivery exchange).
pub(crate) async fn declare_topology(inner: &AmqpInner, channel: &Channel) -> Result<(), BrokerError> {
    let err = |what: String| move |e| inner.error(&what, e);
    let topic = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
    let mut key = "1.#".to_owned();
    for level in (0..BITS).rev() {
        let name = level_name(level);
        channel
            .exchange_declare(&name, lapin::ExchangeKind::Topic, topic, FieldTable::default())
            .await
            .map_err(err(format!("declaring the exchange {name}")))?;
        let dead_letter = if level > 0 { level_name(level - 1) } else { DELIVERY_EXCHANGE.to_owned() };
        let mut args = FieldTable::default();
        args.insert(ShortString::from("x-queue-type"), long_str("quorum"));
        args.insert(ShortString::from("x-overflow"), long_str("reject-publish"));
        let ttl = (1i64 << level) * 1000;
        let ttl = i32::try_from(ttl).map(AMQPValue::LongInt).unwrap_or(AMQPValue::LongLongInt(ttl));
        args.insert(ShortString::from("x-message-ttl"), ttl);
        args.insert(ShortString::from("x-dead-letter-exchange"), long_str(&dead_letter));
        args.insert(ShortString::from("x-dead-letter-strategy"), long_str("at-least-once"));
        channel
            .queue_declare(&name, QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() }, args)
            .await
            .map_err(err(format!("declaring the queue {name}")))?;
        channel
            .queue_bind(&name, &name, &key, QueueBindOptions::default(), FieldTable::default())
            .await
            .map_err(err(format!("binding the queue {name}")))?;
        key = format!("*.{key}");
    }
    let mut key = "0.#".to_owned();
    for level in (1..BITS).rev() {
        let (source, destination) = (level_name(level), level_name(level - 1));
        channel
            .exchange_bind(&destination, &source, &key, ExchangeBindOptions::default(), FieldTable::default())
            .await
            .map_err(err(format!("binding the exchange {destination} to {source}")))?;
        key = format!("*.{key}");
    }
    channel
        .exchange_declare(DELIVERY_EXCHANGE, lapin::ExchangeKind::Topic, topic, FieldTable::default())
        .await
        .map_err(err(format!("declaring the exchange {DELIVERY_EXCHANGE}")))?;
    channel
        .exchange_bind(DELIVERY_EXCHANGE, &level_name(0), &key, ExchangeBindOptions::default(), FieldTable::default())
        .await
        .map_err(err(format!("binding the exchange {DELIVERY_EXCHANGE}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_kombus() {
        // Captured from Python: countdown=30 and 20 with routing key qtopic.
        assert_eq!(
            routing_key(30, "qtopic").unwrap(),
            "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.1.1.1.0.qtopic"
        );
        assert!(routing_key(20, "qtopic").unwrap().ends_with("0.1.0.1.0.0.qtopic"));
        assert_eq!(routing_key(0, "q"), None);
        assert_eq!(routing_key(5, ""), None);
        let again = routing_key(3, &routing_key(30, "qtopic").unwrap()).unwrap();
        assert!(again.ends_with(".1.1.qtopic") && again.matches('.').count() == 28, "{again}");
        assert!(routing_key(u64::MAX, "q").unwrap().starts_with("1.1.1."), "saturates at 2^28-1");
    }
}

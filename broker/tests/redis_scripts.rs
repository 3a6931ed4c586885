#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The Redis transport's fast paths against a real server: the pop script
//! reads the delivery tag from the envelope's last key without decoding the
//! whole element, and must never be fooled by a nested or escaped
//! `"properties"`; acks settled in batches must leave `unacked` and
//! `unacked_index` exactly as single acks do.

use std::time::Duration;

use celeriac_broker::{Delivery, RedisBroker, RedisOptions};

const WAIT: Duration = Duration::from_secs(20);

fn options(url: &str) -> RedisOptions {
    let mut o = RedisOptions::from_url(url).unwrap();
    o.settle_timeout = WAIT;
    o
}

fn admin(url: &str) -> redis::Connection {
    redis::Client::open(url).unwrap().get_connection().unwrap()
}

async fn next(consumer: &mut celeriac_broker::Consumer) -> Delivery {
    match tokio::time::timeout(WAIT, consumer.next()).await {
        Ok(Some(Ok(d))) => d,
        other => panic!("no delivery: {other:?}"),
    }
}

/// The real `properties` of the envelopes below.
fn properties(tag: &str) -> String {
    format!(
        r#"{{"correlation_id": "{tag}", "delivery_mode": 2, "delivery_info": {{"exchange": "", "routing_key": "q"}}, "priority": 0, "body_encoding": "base64", "delivery_tag": "{tag}"}}"#
    )
}

/// A decoy that must never be taken for the envelope's properties.
const DECOY: &str = r#"{"delivery_tag": "decoy", "delivery_info": {"exchange": "x", "routing_key": "y"}}"#;

fn headers(id: &str, extra: &str) -> String {
    format!(r#"{{"lang": "py", "task": "tasks.x", "id": "{id}"{extra}}}"#)
}

const BODY: &str = r#""body": "W10=", "content-encoding": "utf-8", "content-type": "application/json""#;

/// kombu's layout: properties last.
fn python_layout(tag: &str) -> String {
    format!(r#"{{{BODY}, "headers": {}, "properties": {}}}"#, headers(tag, ""), properties(tag))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pop_script_finds_the_envelopes_own_delivery_tag() {
    let Some(redis) = celeriac_tests::redis() else { return };
    let url = redis.url();
    let broker = RedisBroker::connect(options(&url)).await.unwrap();
    let mut a = admin(&url);
    let elements = [
        ("python", python_layout("python")),
        // Compact JSON (serde_json's separators), properties last.
        ("compact", python_layout("compact").replace(": ", ":").replace(", ", ",")),
        // Properties first; the last key holds a nested "properties" object.
        (
            "nested",
            format!(
                r#"{{"properties": {}, {BODY}, "headers": {}}}"#,
                properties("nested"),
                headers("nested", &format!(r#", "properties": {DECOY}"#))
            ),
        ),
        // The last top-level key ends in an escaped "properties": a decoy too.
        (
            "escaped",
            format!(
                r#"{{"properties": {}, {BODY}, "headers": {}, "x\"properties": {DECOY}}}"#,
                properties("escaped"),
                headers("escaped", "")
            ),
        ),
        // Whitespace after the envelope.
        ("spaced", format!("{}\n ", python_layout("spaced"))),
    ];
    for (_, raw) in &elements {
        redis::cmd("LPUSH").arg("q").arg(raw).exec(&mut a).unwrap();
    }
    let mut consumer = broker.consumer(&["q".to_owned()], 10);
    let mut deliveries = Vec::new();
    for (tag, _) in &elements {
        let d = next(&mut consumer).await;
        assert_eq!(d.delivery_tag(), *tag);
        let value: Vec<u8> = redis::cmd("HGET").arg("unacked").arg(*tag).query(&mut a).unwrap();
        let text = String::from_utf8(value).unwrap();
        assert!(text.ends_with(r#", "", "q"]"#), "{tag}: unacked value {text}");
        let score: Option<f64> = redis::cmd("ZSCORE").arg("unacked_index").arg(*tag).query(&mut a).unwrap();
        assert!(score.is_some(), "{tag} is indexed");
        deliveries.push(d);
    }
    let decoy: bool = redis::cmd("HEXISTS").arg("unacked").arg("decoy").query(&mut a).unwrap();
    assert!(!decoy, "a decoy tag was recorded");
    for mut d in deliveries {
        d.ack().await.unwrap();
    }
    assert_eq!(broker.unacked_len().await.unwrap(), 0);
    let indexed: u64 = redis::cmd("ZCARD").arg("unacked_index").query(&mut a).unwrap();
    assert_eq!(indexed, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn batched_acks_settle_every_delivery_and_only_ours() {
    let Some(redis) = celeriac_tests::redis() else { return };
    let url = redis.url();
    let broker = RedisBroker::connect(options(&url)).await.unwrap();
    let mut a = admin(&url);
    let n = 600;
    for i in 0..n {
        redis::cmd("LPUSH").arg("q").arg(python_layout(&format!("t{i}"))).exec(&mut a).unwrap();
    }
    let mut consumer = broker.consumer(&["q".to_owned()], 0);
    let mut deliveries = Vec::new();
    for _ in 0..n {
        deliveries.push(next(&mut consumer).await);
    }
    // One of them was restored meanwhile and is held by a later delivery
    // (another score): its ack must leave it alone.
    redis::cmd("ZADD").arg("unacked_index").arg(1.0).arg("t7").exec(&mut a).unwrap();
    let mut acks = tokio::task::JoinSet::new();
    for mut d in deliveries {
        acks.spawn(async move { d.ack().await });
    }
    while let Some(done) = acks.join_next().await {
        done.unwrap().unwrap();
    }
    assert_eq!(broker.unacked_len().await.unwrap(), 1);
    let left: Vec<String> = redis::cmd("HKEYS").arg("unacked").query(&mut a).unwrap();
    assert_eq!(left, ["t7"]);
    let indexed: Vec<String> = redis::cmd("ZRANGE").arg("unacked_index").arg(0).arg(-1).query(&mut a).unwrap();
    assert_eq!(indexed, ["t7"]);
}

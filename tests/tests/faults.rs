//! Faults under the Redis transport: replies lost on the wire and Redis out
//! of reach, injected with the harness's [`FaultProxy`] between celeriac and a
//! private redis-server (which keeps its data, as a network partition would).
//! What must hold: nothing is lost, no prefetch slot leaks, and recovery does
//! not wait for the visibility timeout when it need not.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed assertion

use std::collections::BTreeSet;
use std::time::Duration;

use celeriac_broker::{Consumer, Delivery, RedisBroker, RedisOptions, SettleOutcome, Settlement};
use celeriac_protocol::{ContentType, Message, TaskMessage, Value};
use celeriac_tests::FaultProxy;

/// Longest wait for anything a test expects to happen (far below the
/// visibility timeout, so a message restored only by it fails the test).
const WAIT: Duration = Duration::from_secs(20);

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("celeriac_broker=info")),
        )
        .with_test_writer()
        .try_init();
}

/// Options through the proxy: quick reconnects, short settle retries, and a
/// visibility timeout of an hour.
fn through(proxy: &FaultProxy) -> RedisOptions {
    let mut o = RedisOptions::from_url(&proxy.redis_url(0)).unwrap();
    o.reconnect_backoff_min = Duration::from_millis(20);
    o.reconnect_backoff_max = Duration::from_millis(200);
    o.settle_timeout = Duration::from_millis(500);
    o.visibility_timeout = Duration::from_secs(3600);
    o
}

fn admin(url: &str) -> redis::Connection {
    redis::Client::open(url).unwrap().get_connection().unwrap()
}

fn count(conn: &mut redis::Connection, cmd: &str, key: &str) -> u64 {
    redis::cmd(cmd).arg(key).query(conn).unwrap()
}

fn task(id: &str) -> Message {
    let mut t = TaskMessage::new("tasks.x", id);
    t.headers.argsrepr = Some("()".into());
    t.headers.kwargsrepr = Some("{}".into());
    t.to_message(t.default_properties(None, None), 0, ContentType::Json, None).unwrap()
}

fn task_id(d: &Delivery) -> String {
    d.message().headers.get("id").and_then(Value::as_str).unwrap_or_default().to_owned()
}

async fn next(consumer: &mut Consumer) -> Delivery {
    match tokio::time::timeout(WAIT, consumer.next()).await {
        Ok(Some(Ok(d))) => d,
        Ok(Some(Err(e))) => panic!("consumer error: {e}"),
        Ok(None) => panic!("consumer closed"),
        Err(_) => panic!("no delivery within {WAIT:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pop_whose_reply_is_lost_puts_its_batch_back_at_once() {
    init_logs();
    let Some(redis) = celeriac_tests::redis() else { return };
    let direct = RedisBroker::connect(RedisOptions::from_url(&redis.url()).unwrap()).await.unwrap();
    let proxy = FaultProxy::start(redis.port()).unwrap();
    let broker = RedisBroker::connect(through(&proxy)).await.unwrap();
    let mut consumer = broker.consumer(&["lost".to_owned()], 10);
    // One message first, so the pop script is loaded (the cut must hit a
    // pop that runs, not the EVALSHA that Redis answers with NOSCRIPT).
    direct.publish("", "lost", &task("warm-up")).await.unwrap();
    next(&mut consumer).await.ack().await.unwrap();
    // The pop script is the only request naming the consumer's pop journal.
    proxy.cut_reply_after(b"celeriac.pop.");
    let mut a = admin(&redis.url());
    let mut pipe = redis::pipe();
    for i in 0..5 {
        let message = task(&format!("m{i}"));
        pipe.cmd("LPUSH").arg("lost").arg(celeriac_protocol::Envelope::new(message, "", "lost").to_json().unwrap());
    }
    let () = pipe.query(&mut a).unwrap();
    let mut got = Vec::new();
    while got.len() < 5 {
        let mut d = next(&mut consumer).await;
        got.push(task_id(&d));
        d.ack().await.unwrap();
    }
    assert_eq!(proxy.cuts(), 1, "the first pop's reply was to be lost");
    let unique: BTreeSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), 5, "each message once: {got:?}");
    // The batch came back in its order: the first popped is delivered first.
    assert_eq!(got, ["m0", "m1", "m2", "m3", "m4"]);
    assert_eq!(count(&mut a, "HLEN", "unacked"), 0, "nothing left in unacked");
    assert_eq!(count(&mut a, "LLEN", "lost"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn settling_while_redis_is_unreachable_frees_the_slot_and_lands_later() {
    init_logs();
    let Some(redis) = celeriac_tests::redis() else { return };
    let proxy = FaultProxy::start(redis.port()).unwrap();
    let broker = RedisBroker::connect(through(&proxy)).await.unwrap();
    for i in 0..4 {
        broker.publish("", "outage", &task(&format!("o{i}"))).await.unwrap();
    }
    let mut consumer = broker.consumer(&["outage".to_owned()], 2);
    let mut first = next(&mut consumer).await;
    let mut second = next(&mut consumer).await;
    assert_eq!(consumer.in_flight(), 2);

    proxy.block();
    let acked = first.settle(Settlement::Ack).await;
    assert!(matches!(acked, SettleOutcome::Deferred(_)), "an ack during the outage is deferred: {acked:?}");
    let requeued = second.settle(Settlement::Requeue).await;
    assert!(matches!(requeued, SettleOutcome::Deferred(_)), "a requeue too: {requeued:?}");
    assert_eq!(consumer.in_flight(), 0, "both prefetch slots are free again");
    assert_eq!(broker.deferred_settlements(), 2);

    proxy.unblock();
    // The requeued one comes back, the other two were never taken.
    let mut rest = Vec::new();
    while rest.len() < 3 {
        let mut d = next(&mut consumer).await;
        rest.push(task_id(&d));
        d.ack().await.unwrap();
    }
    rest.sort();
    assert_eq!(rest, ["o1", "o2", "o3"]);
    let mut a = admin(&redis.url());
    let drained = celeriac_tests::wait_until(WAIT, || {
        broker.deferred_settlements() == 0 && count(&mut a, "HLEN", "unacked") == 0
    });
    assert!(drained, "the deferred ack reached Redis: {} waiting", broker.deferred_settlements());
}

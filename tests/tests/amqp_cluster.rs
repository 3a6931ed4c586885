//! A three-node RabbitMQ cluster (`scripts/rabbit-cluster`) with a quorum
//! queue: celeriac publishes (with confirms) and consumes (acking each) through
//! the failover URL `amqp://n1;amqp://n2;amqp://n3` while the node both are
//! connected to is stopped mid-run. Nothing is lost: every task sent is
//! received at least once (a publish or delivery caught by the stop may come
//! twice, as AMQP's at-least-once allows).
//!
//! Starting three nodes takes most of a minute, so this runs only with
//! `CELERIAC_TEST_CLUSTER=1` (`scripts/test` sets it).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed assertion

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use celeriac_broker::amqp::{AmqpOptions, QueueSpec};
use celeriac_broker::{AmqpBroker, Broker, Producer, ProducerConfig, SendOptions};
use celeriac_protocol::{Map, Value};

const TASKS: i64 = 3000;

/// The cluster, stopped on drop.
struct Cluster {
    dir: tempfile::TempDir,
    url: String,
}

impl Cluster {
    fn script() -> PathBuf {
        celeriac_tests::repo_root().join("scripts/rabbit-cluster")
    }

    fn run(dir: &Path, args: &[&str]) -> String {
        let out =
            Command::new(Self::script()).args([args[0], dir.to_str().unwrap()]).args(&args[1..]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "rabbit-cluster {args:?} failed:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    fn start() -> Cluster {
        let dir = tempfile::Builder::new().prefix("celeriac-cluster-").tempdir().unwrap();
        let out = Self::run(dir.path(), &["start"]);
        let url = out.lines().find_map(|l| l.strip_prefix("CELERIAC_CLUSTER_URL=")).unwrap().to_owned();
        Cluster { dir, url }
    }

    fn stop_node(&self, n: u8) {
        Self::run(self.dir.path(), &["stop-node", &n.to_string()]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(Self::script()).args(["stop", self.dir.path().to_str().unwrap_or("")]).output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stops_mid_run_and_no_task_is_lost() {
    if std::env::var("CELERIAC_TEST_CLUSTER").map_or(true, |v| v != "1") {
        eprintln!("skipping: set CELERIAC_TEST_CLUSTER=1 to start a three-node RabbitMQ cluster (scripts/test does)");
        return;
    }
    let cluster = Cluster::start();
    let queue = "clustered".to_owned();
    let mut options = AmqpOptions::from_url(&cluster.url).unwrap();
    options.queues.insert(
        queue.clone(),
        QueueSpec { arguments: vec![("x-queue-type".into(), "quorum".into())], ..QueueSpec::default() },
    );
    options.max_retries = Some(50);
    let broker = Broker::new(AmqpBroker::new(options.clone()).unwrap());
    broker.declare_queue(&queue, &queue, &queue).await.unwrap();

    // The consumer has a connection of its own, as a worker would.
    let consumer_broker = Broker::new(AmqpBroker::new(options).unwrap());
    let seen: Arc<Mutex<(HashSet<i64>, usize)>> = Arc::default();
    let mut consumer = consumer_broker.consumer(std::slice::from_ref(&queue), 100);
    let counted = seen.clone();
    let consuming = tokio::spawn(async move {
        while let Some(next) = consumer.next().await {
            let Ok(mut d) = next else { continue };
            if let Some(Value::List(args)) = celeriac_protocol::json::from_slice(&d.message().body)
                .ok()
                .and_then(|body| body.as_list().and_then(|b| b.first().cloned()))
            {
                if let Some(Value::Int(n)) = args.first() {
                    let mut s = counted.lock().unwrap();
                    s.0.insert(*n);
                    s.1 += 1;
                }
            }
            // An ack on a channel that died is refused; RabbitMQ redelivers.
            let _ = d.ack().await;
            if counted.lock().unwrap().0.len() as i64 == TASKS {
                return;
            }
        }
    });

    let producer = Producer::new(broker.clone(), ProducerConfig::default());
    for n in 0..TASKS {
        if n == TASKS / 3 {
            // Both connections went to node 1, the first of the failover list.
            cluster.stop_node(1);
        }
        let options = SendOptions { queue: Some(queue.clone()), ..SendOptions::default() };
        producer.send_task("tasks.add", vec![Value::Int(n), Value::Int(0)], Map::new(), options).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(180), consuming).await.expect("every task arrives").unwrap();
    let (ids, deliveries) = {
        let s = seen.lock().unwrap();
        (s.0.len() as i64, s.1)
    };
    assert_eq!(ids, TASKS, "every task sent was received");
    eprintln!("{TASKS} tasks, {deliveries} deliveries ({} redelivered or sent twice)", deliveries as i64 - TASKS);
    assert!(broker.reconnects() >= 1 && consumer_broker.reconnects() >= 1, "both failed over");
}

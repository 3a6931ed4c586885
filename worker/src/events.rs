//! The worker's events, as a Python worker sends them: `worker-online`,
//! `worker-heartbeat` every `freq` seconds and `worker-offline` always; task
//! events (`task-received` ... `task-revoked`) only with `-E` or after the
//! `enable_events` control command. Task events are buffered and flushed in
//! `task.multi` batches, as a Python worker with an event loop does; worker
//! events go out at once.
//!
//! The task-event buffer is bounded ([`BUFFER`] events): while the broker
//! is unreachable, events beyond it are dropped and counted (events are
//! monitoring, not work; Flower catches up from the next ones), so an outage
//! cannot grow the worker's memory without limit.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use celeriac_broker::{Broker, ExchangeKind};
use celeriac_protocol::event::{Event, EventSource, LamportClock, EVENT_EXCHANGE};
use celeriac_protocol::{Map, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::warn;

/// Most task events in one `task.multi` message.
const BATCH: usize = 100;

/// Most task events waiting to be sent.
pub const BUFFER: usize = 10_000;

/// Publishes the worker's events (see the module docs). Shared in an `Arc`.
#[derive(Debug)]
pub struct Events {
    source: EventSource,
    broker: Broker,
    task_events: AtomicBool,
    freq: f64,
    buffer: Mutex<Option<mpsc::Sender<Event>>>,
    flusher: Mutex<Option<JoinHandle<()>>>,
    /// Task events dropped because the buffer was full.
    dropped: AtomicU64,
}

impl Events {
    /// Events of node `hostname` on `broker`; task events on when
    /// `task_events`; heartbeats every `freq` seconds. Starts the flusher of
    /// the task-event buffer on the current tokio runtime, if there is one.
    pub fn start(broker: Broker, hostname: &str, task_events: bool, freq: f64) -> Arc<Events> {
        broker.declare_exchange(EVENT_EXCHANGE, ExchangeKind::Fanout);
        let (tx, rx) = mpsc::channel(BUFFER);
        let events = Arc::new(Events {
            source: EventSource::new(hostname),
            broker: broker.clone(),
            task_events: AtomicBool::new(task_events),
            freq,
            buffer: Mutex::new(Some(tx)),
            flusher: Mutex::new(None),
            dropped: AtomicU64::new(0),
        });
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let flusher = runtime.spawn(flush(broker, hostname.to_owned(), rx));
                if let Ok(mut f) = events.flusher.lock() {
                    *f = Some(flusher);
                }
            }
            Err(_) => warn!("the worker was built outside a tokio runtime: task events will not be sent"),
        }
        events
    }

    /// The node's Lamport clock (remote control moves it too).
    pub fn clock(&self) -> &LamportClock {
        &self.source.clock
    }

    /// Whether task events are sent.
    pub fn task_events(&self) -> bool {
        self.task_events.load(Ordering::Relaxed)
    }

    /// Turns task events on or off; returns whether they were on.
    pub fn set_task_events(&self, on: bool) -> bool {
        self.task_events.swap(on, Ordering::Relaxed)
    }

    /// The heartbeat interval, seconds.
    pub fn freq(&self) -> f64 {
        self.freq
    }

    /// Queues a task event (`task-started`, ...) when task events are on.
    pub fn task(&self, kind: &str, fields: Map) {
        if !self.task_events() {
            return;
        }
        let event = self.source.event(kind, fields);
        let full = match self.buffer.lock() {
            Ok(buffer) => {
                buffer.as_ref().is_some_and(|tx| matches!(tx.try_send(event), Err(mpsc::error::TrySendError::Full(_))))
            }
            Err(_) => false,
        };
        if full {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                warn!("{dropped} task event(s) dropped so far: the broker does not take them as fast as they come");
            }
        }
    }

    /// Task events dropped because the broker did not take them in time.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Sends a worker event now, with the fields Flower shows.
    pub async fn worker(&self, kind: &str, active: usize, processed: u64) {
        let mut fields = Map::new();
        fields.insert("freq".into(), Value::Float(self.freq));
        fields.insert("active".into(), Value::Int(i64::try_from(active).unwrap_or(i64::MAX)));
        fields.insert("processed".into(), Value::Int(i64::try_from(processed).unwrap_or(i64::MAX)));
        fields.insert("loadavg".into(), Value::List(loadavg().into_iter().map(Value::Float).collect()));
        software(&mut fields);
        self.publish(self.source.event(kind, fields)).await;
    }

    /// The extra heartbeat the `heartbeat` control command asks for: `freq` 5
    /// and the software fields only, as Celery sends it.
    pub async fn manual_heartbeat(&self) {
        let mut fields = Map::new();
        fields.insert("freq".into(), Value::Float(5.0));
        software(&mut fields);
        self.publish(self.source.event("worker-heartbeat", fields)).await;
    }

    async fn publish(&self, event: Event) {
        if let Err(e) = self.broker.publish_event(&event).await {
            warn!("could not send the {} event: {e}", event.kind());
        }
    }

    /// Flushes the task events still buffered and stops the flusher, giving
    /// up (and saying how many were dropped) after [`CLOSE_DEADLINE`]: a
    /// shutdown during an outage must not wait for every batch's retries.
    pub async fn close(&self) {
        if let Ok(mut buffer) = self.buffer.lock() {
            buffer.take();
        }
        let flusher = self.flusher.lock().ok().and_then(|mut f| f.take());
        if let Some(mut flusher) = flusher {
            if tokio::time::timeout(CLOSE_DEADLINE, &mut flusher).await.is_err() {
                flusher.abort();
                warn!("task events still buffered after {CLOSE_DEADLINE:?} were dropped: the broker did not take them");
            }
        }
    }
}

/// How long [`Events::close`] waits for the buffered task events to go out.
pub const CLOSE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// Sends buffered task events: alone when one is waiting, else up to
/// [`BATCH`] in a `task.multi` list.
async fn flush(broker: Broker, hostname: String, mut rx: mpsc::Receiver<Event>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        if let Err(e) = broker.publish_events(&hostname, &batch).await {
            warn!("could not send {} task event(s): {e}", batch.len());
        }
    }
}

/// `sw_ident`, `sw_ver`, `sw_sys`.
fn software(fields: &mut Map) {
    fields.insert("sw_ident".into(), Value::Str("celeriac".into()));
    fields.insert("sw_ver".into(), Value::Str(env!("CARGO_PKG_VERSION").into()));
    fields.insert("sw_sys".into(), Value::Str(system_name().into()));
}

/// Python's `platform.system()`.
pub fn system_name() -> &'static str {
    match std::env::consts::OS {
        "linux" => "Linux",
        "macos" => "Darwin",
        "windows" => "Windows",
        "freebsd" => "FreeBSD",
        other => other,
    }
}

/// The load averages, rounded up to two decimals as Celery does.
pub fn loadavg() -> Vec<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let values: Vec<f64> = text
        .split_whitespace()
        .take(3)
        .filter_map(|v| v.parse::<f64>().ok())
        .map(|x| (x * 100.0).ceil() / 100.0)
        .collect();
    if values.len() == 3 {
        values
    } else {
        vec![0.0, 0.0, 0.0]
    }
}

//! The producer: sends a task by name the way Celery's `apply_async` /
//! `send_task` does (headers, body, properties, routing), so Python and Rust
//! workers run it alike.
//!
//! Only message building and routing live here; waiting for a result is the
//! result backend's job (`celeriac_backend`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use celeriac_protocol::codec::{Compression, ContentType};
use celeriac_protocol::event::{task_sent_fields, EventSource, EVENT_EXCHANGE};
use celeriac_protocol::result::{saferepr_dict, saferepr_tuple, SAFEREPR_MAXLEVELS};
use celeriac_protocol::task::{Seconds, TaskMessage, TimeLimits};
use celeriac_protocol::time::PyDateTime;
use celeriac_protocol::{Map, Message, Signature, Value};
use jiff::tz::TimeZone;
use jiff::Timestamp;

use crate::{Broker, BrokerError, ExchangeKind};

/// Longest `argsrepr`/`kwargsrepr`, as Celery's `argsrepr_maxsize`.
const REPR_MAXSIZE: usize = 1024;

/// When a task expires.
#[derive(Debug, Clone, PartialEq)]
pub enum Expires {
    /// After this long from sending.
    In(Duration),
    /// At this time.
    At(PyDateTime),
}

/// Options of one send, named as `apply_async`'s keyword arguments.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SendOptions {
    /// Task id (default: a new uuid4).
    pub task_id: Option<String>,
    /// Queue; with no exchange given, published through the default exchange
    /// with the queue's name as routing key (as Celery does for direct queues).
    pub queue: Option<String>,
    /// Exchange (named direct, topic or fanout exchange).
    pub exchange: Option<String>,
    /// Routing key.
    pub routing_key: Option<String>,
    /// Message priority (0-9; on Redis 0 is served first).
    pub priority: Option<u8>,
    /// Run no earlier than this long from now.
    pub countdown: Option<Duration>,
    /// Run no earlier than this time (wins over `countdown`).
    pub eta: Option<PyDateTime>,
    /// Expire (REVOKED) if not started by then.
    pub expires: Option<Expires>,
    /// Custom headers, kept beside Celery's own.
    pub headers: Map,
    /// Hard time limit.
    pub time_limit: Option<f64>,
    /// Soft time limit.
    pub soft_time_limit: Option<f64>,
    /// Tasks to call with the result on success.
    pub link: Vec<Signature>,
    /// Tasks to call with the task id on failure.
    pub link_error: Vec<Signature>,
    /// The rest of a chain, in Celery's reversed order (next task last).
    pub chain: Vec<Signature>,
    /// The chord body this task is a header of.
    pub chord: Option<Signature>,
    /// Store no result.
    pub ignore_result: Option<bool>,
    /// Name shown in logs instead of the task name.
    pub shadow: Option<String>,
    /// Workflow bookkeeping: parent task id.
    pub parent_id: Option<String>,
    /// Workflow bookkeeping: root task id (default: the task's own id).
    pub root_id: Option<String>,
    /// Group id.
    pub group_id: Option<String>,
    /// Position in the group.
    pub group_index: Option<i64>,
    /// Retries so far (for re-sends).
    pub retries: Option<i64>,
    /// How many times `Task.replace` replaced the task this one replaces
    /// (`replaced_task_nesting`).
    pub replaced_task_nesting: Option<i64>,
    /// Stamps (`sig.stamp(...)`): written as the `stamps` header with their
    /// names in `stamped_headers`, as Celery does.
    pub stamps: Map,
    /// Serializer (default: the producer's).
    pub serializer: Option<ContentType>,
    /// Compression (default: the producer's).
    pub compression: Option<Compression>,
}

/// Producer-wide settings.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Queue for tasks sent without one (`task_default_queue`).
    pub default_queue: String,
    /// Serializer (`task_serializer`).
    pub serializer: ContentType,
    /// Compression (`task_compression`).
    pub compression: Option<Compression>,
    /// The app time zone: countdown/expires times are written in it, as Celery does.
    pub timezone: TimeZone,
    /// `origin` header: `gen<pid>@<host>` like Celery's anonymous node name.
    pub origin: String,
    /// `reply_to` property (Celery's app `thread_oid`).
    pub reply_to: String,
    /// `task_send_sent_event`: publish a `task-sent` event for every task sent,
    /// so Flower and celery-exporter see it before a worker does.
    pub send_sent_event: bool,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            default_queue: "celery".into(),
            serializer: ContentType::Json,
            compression: None,
            timezone: TimeZone::UTC,
            origin: format!("gen{}@{}", std::process::id(), hostname()),
            reply_to: uuid::Uuid::new_v4().to_string(),
            send_sent_event: false,
        }
    }
}

/// The machine's host name (for `origin` and node names).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// A message ready to publish, and where to.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The task as sent.
    pub task: TaskMessage,
    /// The encoded message.
    pub message: Message,
    /// Exchange to publish to (`""` for a queue reached directly).
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// The queue, when known, to declare before the first publish.
    pub queue: Option<String>,
}

/// Sends tasks. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Producer {
    broker: Broker,
    config: Arc<ProducerConfig>,
    declared: Arc<Mutex<HashSet<String>>>,
    events: Arc<EventSource>,
}

impl Producer {
    /// A producer on `broker` with `config`.
    pub fn new(broker: Broker, config: ProducerConfig) -> Producer {
        let events = Arc::new(EventSource::new(config.origin.clone()));
        if config.send_sent_event {
            broker.declare_exchange(EVENT_EXCHANGE, ExchangeKind::Fanout);
        }
        Producer { broker, config: Arc::new(config), declared: Arc::default(), events }
    }

    /// The broker it publishes through.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// The settings.
    pub fn config(&self) -> &ProducerConfig {
        &self.config
    }

    /// Sends task `name` with `args` and `kwargs`; returns the task id.
    pub async fn send_task(
        &self,
        name: &str,
        args: Vec<Value>,
        kwargs: Map,
        options: SendOptions,
    ) -> Result<String, BrokerError> {
        let out = self.build(name, args, kwargs, &options, Timestamp::now())?;
        self.publish(&out).await?;
        Ok(out.task.headers.id)
    }

    /// Publishes a built message, declaring its queue's binding first (once
    /// per queue per producer), as kombu's `maybe_declare` does.
    pub async fn publish(&self, out: &Outgoing) -> Result<(), BrokerError> {
        if let Some(queue) = &out.queue {
            let first = self.declared.lock().map(|mut d| d.insert(queue.clone())).unwrap_or(true);
            if first {
                self.broker.declare_queue(queue, queue, queue).await?;
            }
        }
        self.broker.publish(&out.exchange, &out.routing_key, &out.message).await?;
        if self.config.send_sent_event {
            self.send_sent_event(out).await;
        }
        Ok(())
    }

    /// Publishes `task-sent` for `out`. Like Celery's (sent with `retry=False`),
    /// a failure is logged, never returned: the task itself was sent.
    async fn send_sent_event(&self, out: &Outgoing) {
        let queue = out.queue.clone().unwrap_or_else(|| out.routing_key.clone());
        let fields = task_sent_fields(&out.task, &queue, &out.exchange, &out.routing_key);
        let event = self.events.event("task-sent", fields);
        if let Err(e) = self.broker.publish_event(&event).await {
            tracing::warn!(task_id = %out.task.headers.id, "could not send the task-sent event: {e}");
        }
    }

    /// Re-sends an existing task message (retries, callbacks, chain steps)
    /// to `queue` or its own routing, keeping its headers.
    pub async fn resend(
        &self,
        task: &TaskMessage,
        exchange: &str,
        routing_key: &str,
        priority: u8,
    ) -> Result<(), BrokerError> {
        let expiration_ms = task.headers.expires.as_ref().and_then(|e| millis_until(e, Timestamp::now()));
        let props = task.default_properties(Some(&self.config.reply_to), expiration_ms);
        let message = task.to_message(props, priority, self.config.serializer, self.config.compression)?;
        let queue = (exchange.is_empty()).then(|| routing_key.to_owned());
        self.publish(&Outgoing {
            task: task.clone(),
            message,
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            queue,
        })
        .await
    }

    /// Builds the message `send_task` would publish at time `now`, without
    /// sending it.
    pub fn build(
        &self,
        name: &str,
        args: Vec<Value>,
        kwargs: Map,
        o: &SendOptions,
        now: Timestamp,
    ) -> Result<Outgoing, BrokerError> {
        let id = o.task_id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let mut task = TaskMessage::new(name, id.clone());
        let h = &mut task.headers;
        h.lang = Some("py".into());
        h.shadow = o.shadow.clone();
        h.eta = match (&o.eta, o.countdown) {
            (Some(eta), _) => Some(*eta),
            (None, Some(cd)) => Some(self.local_time(now, cd)),
            (None, None) => None,
        };
        h.expires = match &o.expires {
            Some(Expires::At(at)) => Some(*at),
            Some(Expires::In(d)) => Some(self.local_time(now, *d)),
            None => None,
        };
        h.group = o.group_id.clone();
        h.group_index = o.group_index;
        h.retries = o.retries.unwrap_or(0);
        h.timelimit = TimeLimits { hard: o.time_limit.map(seconds), soft: o.soft_time_limit.map(seconds) };
        h.root_id = Some(o.root_id.clone().unwrap_or_else(|| id.clone()));
        h.parent_id = o.parent_id.clone();
        h.argsrepr = Some(saferepr_tuple(&args, Some(REPR_MAXSIZE), SAFEREPR_MAXLEVELS));
        h.kwargsrepr = Some(saferepr_dict(&kwargs, Some(REPR_MAXSIZE), SAFEREPR_MAXLEVELS));
        h.origin = Some(self.config.origin.clone());
        h.ignore_result = o.ignore_result;
        h.replaced_task_nesting = o.replaced_task_nesting.unwrap_or(0);
        if !o.stamps.is_empty() {
            h.stamped_headers = Some(o.stamps.keys().cloned().collect());
            h.stamps = o.stamps.clone();
        }
        h.extra = o.headers.clone();
        task.args = args;
        task.kwargs = kwargs;
        task.embed.callbacks = (!o.link.is_empty()).then(|| o.link.clone());
        task.embed.errbacks = (!o.link_error.is_empty()).then(|| o.link_error.clone());
        task.embed.chain = (!o.chain.is_empty()).then(|| o.chain.clone());
        task.embed.chord = o.chord.clone();

        let expiration_ms = match &o.expires {
            Some(Expires::In(d)) => Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            Some(Expires::At(at)) => millis_until(at, now),
            None => None,
        };
        let props = task.default_properties(Some(&self.config.reply_to), expiration_ms);
        let content_type = o.serializer.unwrap_or(self.config.serializer);
        let compression = o.compression.or(self.config.compression);
        let message = task.to_message(props, o.priority.unwrap_or(0), content_type, compression)?;

        let (exchange, routing_key, queue) = match (&o.exchange, &o.queue, &o.routing_key) {
            (Some(ex), queue, rk) if !ex.is_empty() => {
                let rk = rk.clone().or_else(|| queue.clone()).unwrap_or_else(|| self.config.default_queue.clone());
                (ex.clone(), rk, None)
            }
            (_, Some(queue), _) => (String::new(), queue.clone(), Some(queue.clone())),
            (_, None, Some(rk)) => (String::new(), rk.clone(), Some(rk.clone())),
            (_, None, None) => {
                (String::new(), self.config.default_queue.clone(), Some(self.config.default_queue.clone()))
            }
        };
        Ok(Outgoing { task, message, exchange, routing_key, queue })
    }

    /// `now + after` in the app time zone, as Celery's `app.now() + timedelta`.
    fn local_time(&self, now: Timestamp, after: Duration) -> PyDateTime {
        let signed = jiff::SignedDuration::try_from(after).unwrap_or(jiff::SignedDuration::MAX);
        let at = now.checked_add(signed).unwrap_or(Timestamp::MAX);
        PyDateTime::from_timestamp(at, self.config.timezone.to_offset(at))
    }
}

fn seconds(v: f64) -> Seconds {
    if v.fract() == 0.0 && v.abs() < 9e15 {
        Seconds::Int(v as i64)
    } else {
        Seconds::Float(v)
    }
}

/// Milliseconds from `now` until `at` (Celery's AMQP `expiration`), if in the future.
fn millis_until(at: &PyDateTime, now: Timestamp) -> Option<u64> {
    let at = at.to_timestamp().ok()?;
    let ms = at.duration_since(now).as_millis();
    u64::try_from(ms.max(0)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBroker;
    use celeriac_protocol::envelope::Envelope;

    fn producer(tz: TimeZone) -> Producer {
        let config = ProducerConfig {
            timezone: tz,
            origin: "gen1@host".into(),
            reply_to: "r".into(),
            ..ProducerConfig::default()
        };
        Producer::new(Broker::Memory(MemoryBroker::default()), config)
    }

    #[test]
    fn headers_and_properties_are_celerys() {
        let p = producer(TimeZone::UTC);
        let now: Timestamp = "2026-01-02T03:04:05Z".parse().unwrap();
        let opts = SendOptions { task_id: Some("id-1".into()), ..SendOptions::default() };
        let out = p.build("tasks.add", vec![Value::Int(2), Value::Int(2)], Map::new(), &opts, now).unwrap();
        let env = Envelope::new(out.message.clone(), &out.exchange, &out.routing_key);
        let text = env.to_json().unwrap();
        assert!(text.contains(r#""headers": {"lang": "py", "task": "tasks.add", "id": "id-1", "shadow": null, "eta": null, "expires": null, "group": null, "group_index": null, "retries": 0, "timelimit": [null, null], "root_id": "id-1", "parent_id": null, "argsrepr": "(2, 2)", "kwargsrepr": "{}", "origin": "gen1@host", "ignore_result": null"#), "{text}");
        assert!(text.contains(r#""properties": {"correlation_id": "id-1", "reply_to": "r", "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": "celery"}"#), "{text}");
        assert_eq!((out.exchange.as_str(), out.routing_key.as_str()), ("", "celery"));
    }

    #[test]
    fn countdown_and_expires_are_written_in_the_app_time_zone() {
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        let p = producer(berlin);
        let now: Timestamp = "2026-01-02T03:04:05Z".parse().unwrap();
        let opts = SendOptions {
            countdown: Some(Duration::from_secs(10)),
            expires: Some(Expires::In(Duration::from_millis(2500))),
            ..SendOptions::default()
        };
        let out = p.build("t", vec![], Map::new(), &opts, now).unwrap();
        assert_eq!(out.task.headers.eta.unwrap().to_iso(), "2026-01-02T04:04:15+01:00");
        assert_eq!(out.task.headers.expires.unwrap().to_iso(), "2026-01-02T04:04:07.500000+01:00");
        assert_eq!(out.message.properties.get("expiration"), Some(&Value::Str("2500".into())));
    }

    #[test]
    fn args_repr_is_a_python_tuple() {
        assert_eq!(saferepr_tuple(&[], Some(REPR_MAXSIZE), SAFEREPR_MAXLEVELS), "()");
        assert_eq!(saferepr_tuple(&[Value::Int(1)], Some(REPR_MAXSIZE), SAFEREPR_MAXLEVELS), "(1,)");
        assert_eq!(saferepr_tuple(&["a".into(), Value::Null], Some(REPR_MAXSIZE), SAFEREPR_MAXLEVELS), "('a', None)");
    }

    #[test]
    fn routing_follows_queue_exchange_and_priority() {
        let p = producer(TimeZone::UTC);
        let now = Timestamp::now();
        let opts = SendOptions { queue: Some("workflow.hpc".into()), priority: Some(9), ..SendOptions::default() };
        let out = p.build("t", vec![], Map::new(), &opts, now).unwrap();
        assert_eq!((out.exchange.as_str(), out.routing_key.as_str()), ("", "workflow.hpc"));
        assert_eq!(out.message.priority, 9);
        let opts = SendOptions {
            exchange: Some("transfers".into()),
            routing_key: Some("transfer.fast".into()),
            ..SendOptions::default()
        };
        let out = p.build("t", vec![], Map::new(), &opts, now).unwrap();
        assert_eq!((out.exchange.as_str(), out.routing_key.as_str(), out.queue), ("transfers", "transfer.fast", None));
    }
}

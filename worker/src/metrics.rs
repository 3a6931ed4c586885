//! Prometheus metrics of a worker, served on `--metrics-addr` at `/metrics`
//! in the text exposition format. Task counters and the runtime histogram
//! use celery-exporter's names and labels (`celery_task_succeeded_total{name,
//! hostname,queue_name}`, `celery_task_runtime`), and the queue gauges its
//! (`celery_queue_length{queue_name}`, `celery_active_worker_count`,
//! `celery_active_process_count`), so its Grafana dashboards work unchanged;
//! gauges for prefetch, reserved and scheduled requests and broker
//! reconnects are celeriac's own (`celeriac_*`).
//!
//! A task's `queue_name` is the queue its message came from, noted when it
//! is received ([`Metrics::note_queue`]); a task never noted counts under
//! [`DEFAULT_QUEUE_LABEL`], as celery-exporter does for a task it knows no
//! queue of.
//!
//! Bounded against hostile input: task names not registered on this worker
//! (once [`Metrics::known_tasks`] was called) share the one label value
//! [`UNREGISTERED`]; no more than [`MAX_SERIES`] label sets are kept; the HTTP
//! endpoint drops a client that does not send its request and read the answer
//! within a timeout, serves a bounded number of connections at once and reads
//! a bounded request head ([`HttpLimits`]).

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use celeriac_protocol::{Map, TaskMessage, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The `name` label of every task not registered on this worker, so names
/// sent by anyone cannot create series without end.
pub const UNREGISTERED: &str = "<unregistered>";
/// Most label sets (series) kept across all counters and histograms; new
/// ones beyond are not recorded, and counted in
/// `celeriac_metrics_series_dropped_total`.
pub const MAX_SERIES: usize = 10_000;
/// Longest `exception` label value.
const MAX_EXCEPTION_LABEL: usize = 100;
/// The `queue_name` of a task whose queue was not noted (celery-exporter's default).
pub const DEFAULT_QUEUE_LABEL: &str = "celery";
/// Most task ids whose queue is remembered at once (the oldest half is
/// forgotten beyond it; those tasks then count under [`DEFAULT_QUEUE_LABEL`]).
pub const MAX_NOTED_QUEUES: usize = 100_000;
/// Most queues with a `celery_queue_length` series.
pub const MAX_QUEUE_SERIES: usize = 1_000;

/// Histogram buckets of `celery_task_runtime` (prometheus_client's defaults,
/// as celery-exporter uses).
const BUCKETS: [f64; 14] = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Debug, Default)]
struct Inner {
    /// (metric, labels) → value.
    counters: BTreeMap<(String, String), u64>,
    /// (task name, queue) → runtimes.
    runtimes: BTreeMap<(String, String), Histogram>,
    gauges: BTreeMap<String, f64>,
    /// The registered task names; `None` until given (every name counts).
    known: Option<HashSet<String>>,
    /// New series not recorded because of [`MAX_SERIES`].
    dropped: u64,
    /// Task id → the queue its message came from, with the order noted.
    queues_by_id: std::collections::HashMap<String, (u64, String)>,
    noted: u64,
    /// Queue → (messages waiting, workers consuming it, their slots).
    queue_gauges: BTreeMap<String, (u64, u64, u64)>,
}

impl Inner {
    fn series(&self) -> usize {
        self.counters.len() + self.runtimes.len()
    }

    /// Adds one to a counter, unless it is new and the series are full.
    fn bump(&mut self, metric: String, labels: String) {
        let full = self.series() >= MAX_SERIES;
        match self.counters.get_mut(&(metric.clone(), labels.clone())) {
            Some(n) => *n += 1,
            None if full => self.dropped += 1,
            None => {
                self.counters.insert((metric, labels), 1);
            }
        }
    }
}

/// The worker's metrics (see the module docs). Shared in an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    hostname: String,
    inner: Mutex<Inner>,
}

/// Bounds of the HTTP endpoint ([`Metrics::serve_with`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HttpLimits {
    /// How long a client has, from connecting, to send its request and read
    /// the answer; then it is dropped (a slow or silent client holds no slot).
    pub request_timeout: Duration,
    /// Connections served at once; more are closed as they come.
    pub max_connections: usize,
    /// Largest request head read; a larger one is answered 431.
    pub max_request_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits { request_timeout: Duration::from_secs(10), max_connections: 32, max_request_bytes: 8192 }
    }
}

/// Why the endpoint turned a connection away (the `reason` label of
/// `celeriac_metrics_requests_rejected_total`).
#[derive(Debug, Clone, Copy)]
enum Rejected {
    Busy,
    Timeout,
    TooLarge,
}

impl Rejected {
    fn label(self) -> &'static str {
        match self {
            Rejected::Busy => "busy",
            Rejected::Timeout => "timeout",
            Rejected::TooLarge => "too_large",
        }
    }
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// celery-exporter's `hostname` label: the part of the node name after `@`.
fn host_label(node: &str) -> &str {
    node.split_once('@').map_or(node, |(_, host)| host)
}

/// Escapes a label value for the exposition format.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The exception class of a `repr` (`ValueError('x')` → `ValueError`), as
/// celery-exporter parses it, cut to [`MAX_EXCEPTION_LABEL`] characters.
fn exception_name(repr: &str) -> String {
    repr.chars().take_while(|c| c.is_alphanumeric() || *c == '_').take(MAX_EXCEPTION_LABEL).collect()
}

impl Metrics {
    /// Metrics of worker node `hostname`.
    pub fn new(hostname: &str) -> Metrics {
        Metrics { hostname: hostname.to_owned(), inner: Mutex::default() }
    }

    /// Gives the task names registered on this worker: from then on, events
    /// of any other name are counted under [`UNREGISTERED`]. Until this is
    /// called every name counts as itself.
    pub fn known_tasks<S: Into<String>>(&self, names: impl IntoIterator<Item = S>) {
        lock(&self.inner).known = Some(names.into_iter().map(Into::into).collect());
    }

    /// The `name` label of task `name`.
    fn task_label<'a>(inner: &Inner, name: &'a str) -> &'a str {
        match &inner.known {
            Some(known) if !known.contains(name) => UNREGISTERED,
            _ => name,
        }
    }

    /// Notes the queue the message of task `id` came from, for the
    /// `queue_name` label of its events. Bounded by [`MAX_NOTED_QUEUES`].
    pub fn note_queue(&self, id: &str, queue: &str) {
        let mut inner = lock(&self.inner);
        if inner.queues_by_id.len() >= MAX_NOTED_QUEUES && !inner.queues_by_id.contains_key(id) {
            let cut = inner.noted.saturating_sub((MAX_NOTED_QUEUES / 2) as u64);
            inner.queues_by_id.retain(|_, (n, _)| *n >= cut);
        }
        inner.noted += 1;
        let n = inner.noted;
        inner.queues_by_id.insert(id.to_owned(), (n, queue.to_owned()));
    }

    /// Sets the queue gauges of `queue`: messages waiting in the broker
    /// (`celery_queue_length`), this worker consuming it
    /// (`celery_active_worker_count` 1) with `slots` task slots
    /// (`celery_active_process_count`). At most [`MAX_QUEUE_SERIES`] queues.
    pub fn set_queue(&self, queue: &str, waiting: u64, slots: u64) {
        let mut inner = lock(&self.inner);
        if inner.queue_gauges.len() >= MAX_QUEUE_SERIES && !inner.queue_gauges.contains_key(queue) {
            inner.dropped += 1;
            return;
        }
        inner.queue_gauges.insert(queue.to_owned(), (waiting, 1, slots));
    }

    /// Forgets the queue gauges of queues not in `keep` (no longer consumed).
    pub fn retain_queues(&self, keep: &[String]) {
        lock(&self.inner).queue_gauges.retain(|q, _| keep.iter().any(|k| k == q));
    }

    /// Counts a task event (`task-succeeded`, ...) of `task` with its fields.
    pub fn observe(&self, kind: &str, task: &TaskMessage, fields: &Map) {
        let Some(state) = kind.strip_prefix("task-") else { return };
        // Event kinds come from the runtime, never from a message.
        if !state.chars().all(|c| c.is_ascii_lowercase()) || state.len() > 20 {
            return;
        }
        let mut inner = lock(&self.inner);
        let name = Self::task_label(&inner, &task.headers.task).to_owned();
        let queue = match inner.queues_by_id.get(&task.headers.id) {
            Some((_, q)) => q.clone(),
            None => DEFAULT_QUEUE_LABEL.to_owned(),
        };
        if matches!(state, "succeeded" | "failed" | "revoked" | "rejected") {
            inner.queues_by_id.remove(&task.headers.id);
        }
        let host = host_label(&self.hostname);
        let mut labels = format!("name=\"{}\",hostname=\"{}\"", escape(&name), escape(host));
        if state == "failed" {
            let exc = fields.get("exception").and_then(Value::as_str).map(exception_name).unwrap_or_default();
            let _ = write!(labels, ",exception=\"{}\"", escape(&exc));
        }
        let _ = write!(labels, ",queue_name=\"{}\"", escape(&queue));
        inner.bump(format!("celery_task_{state}_total"), labels);
        if let (Some(runtime), "succeeded") = (fields.get("runtime").and_then(Value::as_f64), state) {
            let key = (name, queue);
            if !inner.runtimes.contains_key(&key) && inner.series() >= MAX_SERIES {
                inner.dropped += 1;
                return;
            }
            let h = inner.runtimes.entry(key).or_default();
            for (i, bound) in BUCKETS.iter().enumerate() {
                if runtime <= *bound {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum += runtime;
        }
    }

    /// Counts a remote-control request that failed (answered with an error,
    /// or dropped). `method` is a command name; names celeriac does not know
    /// are counted as `other`, so the label has a fixed set of values.
    pub fn control_error(&self, method: &str) {
        let known = crate::control::command::METHODS.contains(&method) || method == "invalid";
        let label = if known { method } else { "other" };
        let labels = format!("method=\"{label}\",hostname=\"{}\"", escape(host_label(&self.hostname)));
        lock(&self.inner).bump("celeriac_control_errors_total".into(), labels);
    }

    /// Counts a message or outcome the worker could not handle the normal
    /// way (`celeriac_messages_refused_total{reason}`): a decode error kind
    /// (`content_disallowed`, `body_too_large`, ...), `unknown_task`,
    /// `result_not_stored`, `runner_panic`, ... Reasons are the runtime's own
    /// words, never a value from a message, so the label set is fixed.
    pub fn refused(&self, reason: &'static str) {
        let labels = format!("reason=\"{reason}\",hostname=\"{}\"", escape(host_label(&self.hostname)));
        lock(&self.inner).bump("celeriac_messages_refused_total".into(), labels);
    }

    /// Sets a gauge (`celery_worker_tasks_active`, `celeriac_worker_reserved`, ...).
    pub fn set_gauge(&self, name: &str, value: f64) {
        lock(&self.inner).gauges.insert(name.to_owned(), value);
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let inner = lock(&self.inner);
        let host = escape(host_label(&self.hostname));
        let mut out = String::new();
        let mut last = "";
        for ((metric, labels), value) in &inner.counters {
            if metric != last {
                let _ = writeln!(out, "# TYPE {metric} counter");
                last = metric;
            }
            let _ = writeln!(out, "{metric}{{{labels}}} {value}");
        }
        if !inner.runtimes.is_empty() {
            let _ = writeln!(out, "# TYPE celery_task_runtime histogram");
        }
        for ((name, queue), h) in &inner.runtimes {
            let labels = format!("name=\"{}\",hostname=\"{host}\",queue_name=\"{}\"", escape(name), escape(queue));
            // `le` as prometheus_client writes it (`1.0`, not `1`), so the
            // series are the same as celery-exporter's.
            for (bound, count) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(out, "celery_task_runtime_bucket{{{labels},le=\"{bound:?}\"}} {count}");
            }
            let _ = writeln!(out, "celery_task_runtime_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "celery_task_runtime_count{{{labels}}} {}", h.count);
            let _ = writeln!(out, "celery_task_runtime_sum{{{labels}}} {}", h.sum);
        }
        let _ = writeln!(out, "# TYPE celery_worker_up gauge");
        let _ = writeln!(out, "celery_worker_up{{hostname=\"{host}\"}} 1");
        for (name, value) in &inner.gauges {
            let kind = if name.ends_with("_total") { "counter" } else { "gauge" };
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name}{{hostname=\"{host}\"}} {value}");
        }
        if !inner.queue_gauges.is_empty() {
            for (i, metric) in ["celery_queue_length", "celery_active_worker_count", "celery_active_process_count"]
                .into_iter()
                .enumerate()
            {
                let _ = writeln!(out, "# TYPE {metric} gauge");
                for (queue, (waiting, workers, slots)) in &inner.queue_gauges {
                    let value = [waiting, workers, slots][i];
                    let _ = writeln!(out, "{metric}{{queue_name=\"{}\"}} {value}", escape(queue));
                }
            }
        }
        let _ = writeln!(out, "# TYPE celeriac_metrics_series_dropped_total counter");
        let _ = writeln!(out, "celeriac_metrics_series_dropped_total{{hostname=\"{host}\"}} {}", inner.dropped);
        out
    }

    /// Serves `GET /metrics` on `addr` until `stop`, within the default
    /// [`HttpLimits`]. Binding errors are returned (a port in use is a
    /// startup error); request errors are logged.
    pub async fn serve(
        self: Arc<Self>,
        addr: SocketAddr,
        stop: CancellationToken,
    ) -> std::io::Result<tokio::task::JoinHandle<()>> {
        self.serve_with(addr, stop, HttpLimits::default()).await
    }

    /// [`Metrics::serve`] within `limits`.
    pub async fn serve_with(
        self: Arc<Self>,
        addr: SocketAddr,
        stop: CancellationToken,
        limits: HttpLimits,
    ) -> std::io::Result<tokio::task::JoinHandle<()>> {
        serve_exposition(self, addr, stop, limits).await
    }
}

/// Something served as a Prometheus text exposition at `/metrics` (the
/// worker's [`Metrics`], a beat's metrics).
pub trait Exposition: Send + Sync + 'static {
    /// The exposition text.
    fn render(&self) -> String;
    /// Counts a connection turned away (`busy`, `timeout`, `too_large`).
    fn rejected(&self, reason: &'static str);
}

impl Exposition for Metrics {
    fn render(&self) -> String {
        Metrics::render(self)
    }

    fn rejected(&self, reason: &'static str) {
        let labels = format!("reason=\"{reason}\",hostname=\"{}\"", escape(host_label(&self.hostname)));
        lock(&self.inner).bump("celeriac_metrics_requests_rejected_total".into(), labels);
    }
}

/// Serves `GET /metrics` of `source` on `addr` until `stop`, within
/// `limits` (a slow or silent client is dropped, connections and request
/// heads are bounded). Binding errors are returned; request errors logged.
pub async fn serve_exposition<E: Exposition>(
    source: Arc<E>,
    addr: SocketAddr,
    stop: CancellationToken,
    limits: HttpLimits,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    info!("metrics at http://{}/metrics", listener.local_addr()?);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    Ok(tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, typically: back off
                        // instead of spinning on the error.
                        warn!("metrics: accept failed: {e}");
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        }
                        continue;
                    }
                },
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                debug!("metrics: {peer} turned away: {} connections are being served", limits.max_connections);
                source.rejected(Rejected::Busy.label());
                drop(stream);
                continue;
            };
            let source = source.clone();
            tokio::spawn(async move {
                let _slot = slot;
                match tokio::time::timeout(limits.request_timeout, answer(source.as_ref(), stream, limits)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => debug!("metrics: serving {peer} failed: {e}"),
                    Err(_) => {
                        debug!(
                            "metrics: {peer} dropped: no complete request and reply within {:?}",
                            limits.request_timeout
                        );
                        source.rejected(Rejected::Timeout.label());
                    }
                }
            });
        }
    }))
}

/// Reads one request head (at most `limits.max_request_bytes`) and answers it.
async fn answer<E: Exposition>(source: &E, mut stream: TcpStream, limits: HttpLimits) -> std::io::Result<()> {
    let mut buf = vec![0u8; limits.max_request_bytes];
    let mut read = 0;
    let complete = loop {
        if read == buf.len() {
            break false;
        }
        let before = read;
        match stream.read(&mut buf[read..]).await? {
            0 => break true,
            n => read += n,
        }
        // Only the new bytes and the three before them can hold the end.
        if buf[before.saturating_sub(3)..read].windows(4).any(|w| w == b"\r\n\r\n") {
            break true;
        }
    };
    let (status, body) = if !complete {
        source.rejected(Rejected::TooLarge.label());
        ("431 Request Header Fields Too Large", "request head too large\n".to_owned())
    } else {
        let request = String::from_utf8_lossy(&buf[..read]);
        let path = request.split_whitespace().nth(1).unwrap_or("");
        if request.starts_with("GET ") && (path == "/metrics" || path == "/") {
            ("200 OK", source.render())
        } else {
            ("404 Not Found", "not found; metrics are at /metrics\n".to_owned())
        }
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_use_celery_exporters_names() {
        let m = Metrics::new("celeriac@node1");
        let task = TaskMessage::new("tasks.add", "id-1");
        let mut fields = Map::new();
        fields.insert("runtime".into(), Value::Float(0.02));
        m.observe("task-succeeded", &task, &fields);
        let mut failed = Map::new();
        failed.insert("exception".into(), Value::Str("ValueError('bad')".into()));
        m.observe("task-failed", &task, &failed);
        m.set_gauge("celery_worker_tasks_active", 2.0);
        let text = m.render();
        assert!(
            text.contains(r#"celery_task_succeeded_total{name="tasks.add",hostname="node1",queue_name="celery"} 1"#),
            "{text}"
        );
        assert!(text.contains(
            r#"celery_task_failed_total{name="tasks.add",hostname="node1",exception="ValueError",queue_name="celery"} 1"#
        ));
        let bucket = |le: &str, n: u32| {
            format!(
                r#"celery_task_runtime_bucket{{name="tasks.add",hostname="node1",queue_name="celery",le="{le}"}} {n}"#
            )
        };
        assert!(text.contains(&bucket("0.025", 1)), "{text}");
        assert!(text.contains(&bucket("0.01", 0)));
        assert!(text.contains(&bucket("1.0", 1)));
        assert!(text.contains(r#"celery_worker_tasks_active{hostname="node1"} 2"#));
    }

    #[test]
    fn unregistered_task_names_share_one_label() {
        let m = Metrics::new("celeriac@node1");
        m.known_tasks(["tasks.add"]);
        let mut fields = Map::new();
        fields.insert("runtime".into(), Value::Float(0.5));
        for i in 0..1000 {
            m.observe("task-received", &TaskMessage::new(format!("random.{i}"), "id"), &Map::new());
            m.observe("task-succeeded", &TaskMessage::new(format!("random.{i}"), "id"), &fields);
        }
        m.observe("task-received", &TaskMessage::new("tasks.add", "id"), &Map::new());
        let text = m.render();
        let unregistered = r#"name="<unregistered>",hostname="node1",queue_name="celery""#;
        assert!(text.contains(&format!("celery_task_received_total{{{unregistered}}} 1000")), "{text}");
        assert!(text.contains(&format!("celery_task_runtime_count{{{unregistered}}} 1000")));
        assert!(text.contains(r#"celery_task_received_total{name="tasks.add",hostname="node1",queue_name="celery"} 1"#));
        assert!(!text.contains("random."), "{text}");
    }

    #[test]
    fn tasks_count_under_the_queue_they_came_from() {
        let m = Metrics::new("w@h");
        let task = TaskMessage::new("tasks.add", "id-7");
        m.note_queue("id-7", "workflow.hpc");
        m.observe("task-received", &task, &Map::new());
        let mut fields = Map::new();
        fields.insert("runtime".into(), Value::Float(0.2));
        m.observe("task-succeeded", &task, &fields);
        // Finished: forgotten, so a later event of that id has no queue.
        m.observe("task-revoked", &task, &Map::new());
        m.set_queue("workflow.hpc", 12, 4);
        m.set_queue("celery", 0, 4);
        m.retain_queues(&["workflow.hpc".to_owned()]);
        let text = m.render();
        assert!(
            text.contains(r#"celery_task_received_total{name="tasks.add",hostname="h",queue_name="workflow.hpc"} 1"#)
        );
        assert!(
            text.contains(r#"celery_task_runtime_count{name="tasks.add",hostname="h",queue_name="workflow.hpc"} 1"#)
        );
        assert!(text.contains(r#"celery_task_revoked_total{name="tasks.add",hostname="h",queue_name="celery"} 1"#));
        assert!(text.contains(r#"celery_queue_length{queue_name="workflow.hpc"} 12"#), "{text}");
        assert!(text.contains(r#"celery_active_worker_count{queue_name="workflow.hpc"} 1"#));
        assert!(text.contains(r#"celery_active_process_count{queue_name="workflow.hpc"} 4"#));
        assert!(!text.contains(r#"queue_length{queue_name="celery"}"#), "{text}");
        for i in 0..(MAX_NOTED_QUEUES + 10) {
            m.note_queue(&format!("id-{i}"), "q");
        }
        assert!(lock(&m.inner).queues_by_id.len() <= MAX_NOTED_QUEUES);
    }

    #[test]
    fn series_are_capped() {
        let m = Metrics::new("w@h");
        let mut failed = Map::new();
        failed.insert("exception".into(), Value::Str(format!("{}('x')", "E".repeat(10_000))));
        for i in 0..(MAX_SERIES + 500) {
            m.observe("task-failed", &TaskMessage::new(format!("t{i}"), "id"), &failed);
        }
        let text = m.render();
        let series = text.lines().filter(|l| l.starts_with("celery_task_failed_total{")).count();
        assert_eq!(series, MAX_SERIES);
        assert!(
            text.contains(r#"celeriac_metrics_series_dropped_total{hostname="h"} 500"#),
            "{}",
            &text[text.len() - 300..]
        );
        let longest = text.lines().map(str::len).max().unwrap_or(0);
        assert!(longest < 400, "the exception label is shortened: {longest}");
    }

    #[test]
    fn control_errors_have_bounded_method_labels() {
        let m = Metrics::new("w@h");
        m.control_error("rate_limit");
        m.control_error("rate_limit");
        m.control_error("invalid");
        for i in 0..100 {
            m.control_error(&format!("made-up-{i}"));
        }
        let text = m.render();
        assert!(text.contains(r#"celeriac_control_errors_total{method="rate_limit",hostname="h"} 2"#), "{text}");
        assert!(text.contains(r#"celeriac_control_errors_total{method="invalid",hostname="h"} 1"#));
        assert!(text.contains(r#"celeriac_control_errors_total{method="other",hostname="h"} 100"#));
        assert!(!text.contains("made-up"));
    }

    /// Starts the endpoint on a free port with `limits`.
    async fn endpoint(limits: HttpLimits) -> (Arc<Metrics>, SocketAddr, CancellationToken) {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let m = Arc::new(Metrics::new("w@h"));
        let stop = CancellationToken::new();
        m.clone().serve_with(addr, stop.clone(), limits).await.unwrap();
        (m, addr, stop)
    }

    /// Everything the server sends until it closes (or `wait` passes).
    async fn read_all(stream: &mut TcpStream, wait: Duration) -> Option<String> {
        let mut out = Vec::new();
        match tokio::time::timeout(wait, stream.read_to_end(&mut out)).await {
            Ok(_) => Some(String::from_utf8_lossy(&out).into_owned()),
            Err(_) => None,
        }
    }

    async fn get(addr: SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
        read_all(&mut s, Duration::from_secs(10)).await.unwrap()
    }

    #[tokio::test]
    async fn silent_and_trickling_clients_are_dropped() {
        let limits = HttpLimits { request_timeout: Duration::from_millis(300), ..HttpLimits::default() };
        let (m, addr, stop) = endpoint(limits).await;
        let started = std::time::Instant::now();
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let closed = read_all(&mut silent, Duration::from_secs(10)).await;
        assert_eq!(closed.as_deref(), Some(""), "closed without an answer");
        assert!(started.elapsed() < Duration::from_secs(5));

        // A byte every 50 ms never completes a request within the timeout.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        let trickle = async {
            for b in b"GET /metrics HTTP/1.0\r\nX: ".iter().cycle() {
                if slow.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        assert!(tokio::time::timeout(Duration::from_secs(10), trickle).await.is_ok(), "the server hung up on it");
        assert!(get(addr).await.starts_with("HTTP/1.1 200 OK"), "others are still served");
        assert!(m.render().contains(r#"celeriac_metrics_requests_rejected_total{reason="timeout",hostname="h"} 2"#));
        stop.cancel();
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed_at_once() {
        let limits =
            HttpLimits { request_timeout: Duration::from_secs(2), max_connections: 2, ..HttpLimits::default() };
        let (m, addr, stop) = endpoint(limits).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            let s = TcpStream::connect(addr).await.unwrap();
            held.push(s);
        }
        // The server takes connections in order: once it has turned one away
        // the two held ones are being served.
        let mut turned_away = false;
        for _ in 0..50 {
            let mut extra = TcpStream::connect(addr).await.unwrap();
            let _ = extra.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await;
            let answer = read_all(&mut extra, Duration::from_secs(5)).await.unwrap_or_default();
            if answer.is_empty() {
                turned_away = true;
                break;
            }
        }
        assert!(turned_away);
        assert!(m.render().contains(r#"reason="busy""#));
        drop(held);
        // Slots free again as those clients go.
        let mut served = false;
        for _ in 0..100 {
            if get(addr).await.starts_with("HTTP/1.1 200 OK") {
                served = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(served);
        stop.cancel();
    }

    #[tokio::test]
    async fn oversized_request_heads_get_431() {
        let (m, addr, stop) = endpoint(HttpLimits::default()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let head = format!("GET /metrics HTTP/1.0\r\nX: {}\r\n\r\n", "a".repeat(20_000));
        let _ = s.write_all(head.as_bytes()).await;
        let answer = read_all(&mut s, Duration::from_secs(10)).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
        assert!(m.render().contains(r#"reason="too_large""#));
        assert!(get(addr).await.contains("celery_worker_up"));
        stop.cancel();
    }
}

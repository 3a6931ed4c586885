//! Prometheus metrics of a worker, served on `--metrics-addr` at `/metrics`
//! in the text exposition format. Task counters and the runtime histogram
//! use celery-exporter's names and labels (`celery_task_succeeded_total{name,
//! hostname}`, `celery_task_runtime`), so its dashboards work unchanged;
//! gauges for prefetch, reserved and scheduled requests and broker
//! reconnects are celeriac's own (`celeriac_*`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Mutex;

use celeriac_protocol::{Map, TaskMessage, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

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
    runtimes: BTreeMap<String, Histogram>,
    gauges: BTreeMap<String, f64>,
}

/// The worker's metrics (see the module docs). Shared in an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    hostname: String,
    inner: Mutex<Inner>,
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
/// celery-exporter parses it.
fn exception_name(repr: &str) -> &str {
    let end = repr.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(repr.len());
    &repr[..end]
}

impl Metrics {
    /// Metrics of worker node `hostname`.
    pub fn new(hostname: &str) -> Metrics {
        Metrics { hostname: hostname.to_owned(), inner: Mutex::default() }
    }

    /// Counts a task event (`task-succeeded`, ...) of `task` with its fields.
    pub fn observe(&self, kind: &str, task: &TaskMessage, fields: &Map) {
        let Some(state) = kind.strip_prefix("task-") else { return };
        let name = &task.headers.task;
        let host = host_label(&self.hostname);
        let mut labels = format!("name=\"{}\",hostname=\"{}\"", escape(name), escape(host));
        if state == "failed" {
            let exc = fields.get("exception").and_then(Value::as_str).map(exception_name).unwrap_or_default();
            let _ = write!(labels, ",exception=\"{}\"", escape(exc));
        }
        let Ok(mut inner) = self.inner.lock() else { return };
        *inner.counters.entry((format!("celery_task_{state}_total"), labels)).or_default() += 1;
        if let (Some(runtime), "succeeded") = (fields.get("runtime").and_then(Value::as_f64), state) {
            let h = inner.runtimes.entry(name.clone()).or_default();
            for (i, bound) in BUCKETS.iter().enumerate() {
                if runtime <= *bound {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum += runtime;
        }
    }

    /// Sets a gauge (`celery_worker_tasks_active`, `celeriac_worker_reserved`, ...).
    pub fn set_gauge(&self, name: &str, value: f64) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.gauges.insert(name.to_owned(), value);
        }
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let Ok(inner) = self.inner.lock() else { return String::new() };
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
        for (name, h) in &inner.runtimes {
            let labels = format!("name=\"{}\",hostname=\"{host}\"", escape(name));
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
        out
    }

    /// Serves `GET /metrics` on `addr` until `stop`. Binding errors are
    /// returned (a port in use is a startup error); request errors are logged.
    pub async fn serve(
        self: std::sync::Arc<Self>,
        addr: SocketAddr,
        stop: CancellationToken,
    ) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let listener = TcpListener::bind(addr).await?;
        info!("metrics at http://{}/metrics", listener.local_addr()?);
        Ok(tokio::spawn(async move {
            loop {
                let (mut stream, peer) = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            warn!("metrics: accept failed: {e}");
                            continue;
                        }
                    },
                };
                let metrics = self.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut read = 0;
                    while read < buf.len() {
                        match stream.read(&mut buf[read..]).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => read += n,
                        }
                        if buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    let request = String::from_utf8_lossy(&buf[..read]);
                    let path = request.split_whitespace().nth(1).unwrap_or("");
                    let (status, body) = if request.starts_with("GET ") && (path == "/metrics" || path == "/") {
                        ("200 OK", metrics.render())
                    } else {
                        ("404 Not Found", "not found; metrics are at /metrics\n".to_owned())
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    if let Err(e) = stream.write_all(response.as_bytes()).await {
                        debug!("metrics: writing to {peer} failed: {e}");
                    }
                });
            }
        }))
    }
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
        assert!(text.contains(r#"celery_task_succeeded_total{name="tasks.add",hostname="node1"} 1"#), "{text}");
        assert!(
            text.contains(r#"celery_task_failed_total{name="tasks.add",hostname="node1",exception="ValueError"} 1"#)
        );
        assert!(text.contains(r#"celery_task_runtime_bucket{name="tasks.add",hostname="node1",le="0.025"} 1"#));
        assert!(text.contains(r#"celery_task_runtime_bucket{name="tasks.add",hostname="node1",le="0.01"} 0"#));
        assert!(text.contains(r#"celery_task_runtime_bucket{name="tasks.add",hostname="node1",le="1.0"} 1"#));
        assert!(text.contains(r#"celery_worker_tasks_active{hostname="node1"} 2"#));
    }
}

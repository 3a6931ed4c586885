//! `celeriac worker`: Celery's worker flags, settings from the file and the
//! environment, the startup banner, and the signals of a Celery worker
//! (SIGTERM/SIGINT warm shutdown, a second one or SIGQUIT cold).

use std::path::PathBuf;
use std::sync::Arc;

use celeriac_broker::{Broker, Producer};
use celeriac_config::Settings;
use celeriac_worker::{Registry, ResultStore, Worker, WorkerConfig};
use clap::Args;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::assemble;

use crate::error::CliError;

/// `celeriac worker` flags; each overrides the setting named beside it.
#[derive(Args, Debug, Default)]
pub struct WorkerArgs {
    /// Broker URL (`broker_url`), e.g. redis://127.0.0.1:6379/0.
    #[arg(short = 'b', long)]
    pub broker: Option<String>,
    /// Result backend URL (`result_backend`).
    #[arg(long)]
    pub result_backend: Option<String>,
    /// Queues to consume, comma separated (default: `task_default_queue`).
    #[arg(short = 'Q', long, value_delimiter = ',', action = clap::ArgAction::Set)]
    pub queues: Vec<String>,
    /// Tasks run at once (`worker_concurrency`, 1 to 100000; default: the number of CPUs).
    #[arg(
        short = 'c',
        long,
        allow_negative_numbers = true,
        value_parser = |v: &str| celeriac_config::check_flag::<usize>("worker_concurrency", v)
    )]
    pub concurrency: Option<usize>,
    /// Node name; `%h` is the host name, `%n` its first label, `%d` the domain.
    #[arg(short = 'n', long, default_value = "celeriac@%h")]
    pub hostname: String,
    /// `worker_prefetch_multiplier`: messages reserved per slot (0 to 10000; 0: no limit).
    #[arg(
        long,
        allow_negative_numbers = true,
        value_parser = |v: &str| celeriac_config::check_flag::<usize>("worker_prefetch_multiplier", v)
    )]
    pub prefetch_multiplier: Option<usize>,
    /// Send task events (`worker_send_task_events`), for Flower and `celery events`.
    #[arg(short = 'E', long = "task-events")]
    pub task_events: bool,
    /// Log level: DEBUG, INFO, WARNING, ERROR or CRITICAL.
    #[arg(short = 'l', long, default_value = "INFO")]
    pub loglevel: String,
    /// Settings file (TOML, Celery's setting names).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Keep revoked task ids in this file across restarts (`worker_state_db`).
    #[arg(short = 'S', long)]
    pub statedb: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (`worker_metrics_addr`), e.g. 127.0.0.1:9808.
    #[arg(long)]
    pub metrics_addr: Option<String>,
    /// Log to this file instead of stderr (`%n`, `%h`, `%d`, `%p`, `%i` expand as in Celery).
    #[arg(short = 'f', long)]
    pub logfile: Option<String>,
    /// Write the process id to this file, refusing to start while another
    /// running process holds it (`%n`, `%h`, ... expand as in Celery).
    #[arg(long)]
    pub pidfile: Option<String>,
    /// Task sets to register, comma separated: `builtin` (celeriac.ping, the
    /// health heartbeat), `conformance` (Celery's integration-suite tasks), and
    /// a custom binary's own sets. Default: `builtin` and the binary's own.
    #[arg(long, value_delimiter = ',', action = clap::ArgAction::Set)]
    pub tasks: Vec<String>,
    /// Threads that run the worker's async runtime (1 to 1024; default: one
    /// per CPU, or `TOKIO_WORKER_THREADS`). 1 runs everything on one thread,
    /// with no wake-ups between threads: the fastest on a small machine
    /// shared with the broker (README, "Choosing `--runtime-threads`").
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub runtime_threads: Option<u16>,
}

/// Expands Celery's node-name placeholders against `host` (`%h` the host,
/// `%n` its first label, `%d` the domain, `%%` a `%`; see
/// [`crate::habits::host_format`]).
pub fn expand_hostname(template: &str, host: &str) -> Result<String, CliError> {
    crate::habits::host_format(template, host)
}

/// The settings after the file, the environment and the flags.
fn settings(args: &WorkerArgs, node: &str) -> Result<Settings, CliError> {
    let mut settings = celeriac_config::load(args.config.as_deref())?.settings;
    if let Some(url) = &args.broker {
        settings.broker_url = url.clone();
    }
    if let Some(url) = &args.result_backend {
        settings.result_backend = Some(url.clone());
    }
    if let Some(c) = args.concurrency {
        settings.worker_concurrency = Some(c);
    }
    if let Some(m) = args.prefetch_multiplier {
        settings.worker_prefetch_multiplier = m;
    }
    if args.task_events {
        settings.worker_send_task_events = true;
    }
    if let Some(path) = &args.statedb {
        settings.worker_state_db = Some(path.clone());
    }
    if let Some(path) = &settings.worker_state_db {
        settings.worker_state_db = Some(crate::habits::node_format(path, node)?);
    }
    if let Some(addr) = &args.metrics_addr {
        settings.worker_metrics_addr = Some(addr.clone());
    }
    settings.validate()?;
    Ok(settings)
}

/// Runs the worker until a signal stops it.
pub async fn run(args: WorkerArgs, extra: &'static [celeriac_tasks::TaskSet]) -> Result<(), CliError> {
    let level = crate::logging::level(&args.loglevel).map_err(CliError::Setting)?;
    let hostname = expand_hostname(&args.hostname, &celeriac_broker::producer::hostname())?;
    let logfile = args.logfile.as_deref().map(|f| crate::habits::node_format(f, &hostname)).transpose()?;
    crate::logging::init_to(level, logfile.as_deref().map(std::path::Path::new)).map_err(CliError::Setting)?;
    let settings = settings(&args, &hostname)?;
    let _pidfile = match &args.pidfile {
        Some(path) => {
            Some(crate::habits::PidFile::create(std::path::Path::new(&crate::habits::node_format(path, &hostname)?))?)
        }
        None => None,
    };

    let broker = assemble::broker(&settings)?;
    let backend = assemble::backend(&settings).await?;
    let producer = Producer::new(broker.clone(), assemble::producer_config(&settings, &hostname)?);
    let mut config = assemble::worker_config(&settings);
    config.hostname = hostname.clone();
    if !args.queues.is_empty() {
        config.queues = args.queues.clone();
    }

    let task_config = celeriac_tasks::TaskSetConfig {
        redis_url: redis_url(&settings)?,
        redis_master_name: settings.broker_transport_options.master_name.clone(),
        node_name: Some(hostname.clone()),
        ..Default::default()
    };
    let registry = registry(&args.tasks, extra, &task_config)?;
    check_rate_limits(&registry)?;
    registry.check_states().map_err(|e| CliError::Tasks(e.to_string()))?;

    for queue in &config.queues {
        let (exchange, routing_key) = binding(&settings, queue);
        broker.declare_queue(queue, &exchange, &routing_key).await?;
    }
    print!("{}", banner(&settings, &config, &broker, &registry));

    let rpc = assemble::rpc_backend(&settings, &broker)?.map(|b| Arc::new(b) as Arc<dyn ResultStore>);
    let results = rpc.or_else(|| backend.map(|b| Arc::new(b) as Arc<dyn ResultStore>));
    let hostname_for_metrics = config.hostname.clone();
    let (broker_for_metrics, queues_for_metrics, slots) = (broker.clone(), config.queues.clone(), config.concurrency);
    let mut worker = Worker::new(registry, broker, producer, results, config);
    let warm = CancellationToken::new();
    let metrics_server = match settings.worker_metrics_addr.as_deref() {
        Some(addr) => {
            let addr: std::net::SocketAddr =
                addr.parse().map_err(|e| CliError::Setting(format!("worker_metrics_addr {addr:?}: {e}")))?;
            let metrics = Arc::new(celeriac_worker::metrics::Metrics::new(&hostname_for_metrics));
            worker = worker.with_metrics(metrics.clone());
            tokio::spawn(queue_gauges(
                broker_for_metrics.clone(),
                metrics.clone(),
                queues_for_metrics.clone(),
                slots,
                warm.child_token(),
            ));
            let server = metrics
                .serve(addr, warm.child_token())
                .await
                .map_err(|e| CliError::Setting(format!("worker_metrics_addr {addr}: cannot listen there: {e}")))?;
            Some(server)
        }
        None => None,
    };
    let cold = worker.cold_shutdown();
    watch_signals(warm.clone(), cold)?;
    worker.run(warm.clone()).await?;
    warm.cancel();
    if let Some(server) = metrics_server {
        let _ = server.await;
    }
    info!("{hostname} stopped.");
    Ok(())
}

/// How often the queue gauges of the metrics are read from the broker.
const QUEUE_GAUGE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Keeps `celery_queue_length{queue_name}` (and the worker and slot counts
/// of celery-exporter) of the consumed queues fresh until `stop`.
async fn queue_gauges(
    broker: celeriac_broker::Broker,
    metrics: Arc<celeriac_worker::metrics::Metrics>,
    queues: Vec<String>,
    slots: usize,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(QUEUE_GAUGE_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        for queue in &queues {
            match broker.queue_len(queue).await {
                Ok(n) => metrics.set_queue(queue, n, u64::try_from(slots).unwrap_or(u64::MAX)),
                Err(e) => tracing::debug!("metrics: cannot read the length of {queue}: {e}"),
            }
        }
    }
}

/// Where the built-in tasks find Redis: the broker's URL when it is Redis,
/// else the result backend's, with the TLS settings of the one chosen
/// (`broker_use_ssl`, `redis_backend_use_ssl`) written into the URL, so the
/// built-ins never talk in plain text to a server the worker reaches over TLS.
fn redis_url(settings: &Settings) -> Result<Option<String>, CliError> {
    let is_redis =
        |url: &str| ["redis://", "rediss://", "redis+socket://", "unix://"].iter().any(|s| url.starts_with(s));
    if is_redis(&settings.broker_url) {
        return with_tls(&settings.broker_url, settings.broker_use_ssl.as_ref()).map(Some);
    }
    match settings.result_backend.as_deref().filter(|u| is_redis(u)) {
        Some(url) => with_tls(url, settings.redis_backend_use_ssl.as_ref()).map(Some),
        None => Ok(None),
    }
}

/// `url` as a `rediss://` URL carrying `ssl`'s settings in Celery's spelling
/// (`ssl_cert_reqs=required&ssl_ca_certs=...`), or as it is without `ssl`.
fn with_tls(url: &str, ssl: Option<&celeriac_config::TlsSettings>) -> Result<String, CliError> {
    let Some(ssl) = ssl else { return Ok(url.to_owned()) };
    let Some(rest) = url.strip_prefix("redis://").or_else(|| url.strip_prefix("rediss://")) else {
        return Err(CliError::Setting(format!(
            "TLS settings cannot apply to {}: use redis:// or rediss://",
            celeriac_redisconn::mask_password(url)
        )));
    };
    let (base, query) = rest.split_once('?').unwrap_or((rest, ""));
    let kept = query.split('&').filter(|p| !p.is_empty() && !p.starts_with("ssl_"));
    let cert_reqs: celeriac_redisconn::CertReqs =
        ssl.ssl_cert_reqs.parse().map_err(|e| CliError::Setting(format!("TLS setting ssl_cert_reqs: {e}")))?;
    let mut params: Vec<String> = kept.map(str::to_owned).collect();
    params.push(format!("ssl_cert_reqs={}", cert_reqs.name()));
    for (key, value) in
        [("ssl_ca_certs", &ssl.ssl_ca_certs), ("ssl_certfile", &ssl.ssl_certfile), ("ssl_keyfile", &ssl.ssl_keyfile)]
    {
        if let Some(path) = value {
            params.push(format!("{key}={}", percent_encode(path)));
        }
    }
    Ok(format!("rediss://{base}?{}", params.join("&")))
}

/// Escapes all but unreserved characters and `/`, for a path in a URL query.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A queue's exchange and routing key: from `task_queues` when declared
/// there, else Celery's default (a direct exchange named like the queue).
fn binding(settings: &Settings, queue: &str) -> (String, String) {
    match settings.task_queues.get(queue) {
        Some(q) => (
            q.exchange.clone().unwrap_or_else(|| queue.to_owned()),
            q.routing_key.clone().unwrap_or_else(|| queue.to_owned()),
        ),
        None => (queue.to_owned(), queue.to_owned()),
    }
}

/// The tasks of the sets named in `--tasks`: celeriac's own and `extra`.
pub(crate) fn registry(
    names: &[String],
    extra: &'static [celeriac_tasks::TaskSet],
    config: &celeriac_tasks::TaskSetConfig,
) -> Result<Registry, CliError> {
    let defaults: Vec<String> =
        std::iter::once("builtin").chain(extra.iter().map(|s| s.name())).map(str::to_owned).collect();
    let names = if names.is_empty() { &defaults[..] } else { names };
    let (own, theirs): (Vec<&String>, Vec<&String>) =
        names.iter().partition(|n| !extra.iter().any(|s| s.name() == n.as_str()));
    let unknown = |name: &str| {
        let mut available = celeriac_tasks::available();
        for set in extra {
            available.push_str(", ");
            available.push_str(set.name());
        }
        CliError::Tasks(format!("no task set named {name:?} is compiled in; available: {available}"))
    };
    if let Some(name) = own.iter().find(|n| celeriac_tasks::set(n).is_none()) {
        return Err(unknown(name));
    }
    let mut registry = celeriac_tasks::registry(own, config).map_err(|e| CliError::Tasks(e.to_string()))?;
    for set in extra.iter().filter(|s| theirs.iter().any(|n| n.as_str() == s.name())) {
        registry.merge(set.registry(config).map_err(|e| CliError::Tasks(e.to_string()))?);
    }
    Ok(registry)
}

fn check_rate_limits(registry: &Registry) -> Result<(), CliError> {
    for task in registry.tasks() {
        if let Some(text) = &task.options().rate_limit {
            celeriac_config::parse_rate_limit(text)
                .map_err(|e| CliError::Setting(format!("rate limit of {}: {e}", task.name())))?;
        }
    }
    Ok(())
}

/// SIGTERM or SIGINT: warm shutdown; a second one, or SIGQUIT: cold.
fn watch_signals(warm: CancellationToken, cold: CancellationToken) -> Result<(), CliError> {
    let mut term = signal(SignalKind::terminate()).map_err(CliError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(CliError::Signals)?;
    let mut quit = signal(SignalKind::quit()).map_err(CliError::Signals)?;
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                _ = quit.recv() => "SIGQUIT",
            };
            if name == "SIGQUIT" || warm.is_cancelled() {
                warn!("worker: Cold shutdown ({name})");
                warm.cancel();
                cold.cancel();
                return;
            }
            warn!("worker: Warm shutdown ({name}); send it again for a cold shutdown");
            warm.cancel();
        }
    });
    Ok(())
}

/// Celery's startup banner, with celeriac's facts.
fn banner(settings: &Settings, config: &WorkerConfig, broker: &Broker, registry: &Registry) -> String {
    let results = match settings.result_backend.as_deref() {
        Some(url) => celeriac_redisconn::mask_password(url),
        None => "disabled://".to_owned(),
    };
    let events =
        if settings.worker_send_task_events { "ON" } else { "OFF (enable -E to monitor tasks in this worker)" };
    let now = jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M:%S UTC");
    let system = format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH);
    let mut out = format!(
        "\n \
-------------- {host} v{version}\n\
--- ***** ----- \n\
-- ******* ---- {system} {now}\n\
- *** --- * --- \n\
- ** ---------- [config]\n\
- ** ---------- .> app:         celeriac\n\
- ** ---------- .> transport:   {transport}\n\
- ** ---------- .> results:     {results}\n\
- *** --- * --- .> concurrency: {concurrency} (tokio)\n\
-- ******* ---- .> task events: {events}\n\
--- ***** ----- \n \
-------------- [queues]\n",
        host = config.hostname,
        version = env!("CARGO_PKG_VERSION"),
        transport = broker.masked_url(),
        concurrency = config.concurrency,
    );
    for queue in &config.queues {
        let (exchange, key) = binding(settings, queue);
        out.push_str(&format!("                .> {queue:<16} exchange={exchange}(direct) key={key}\n"));
    }
    out.push_str("\n[tasks]\n");
    let mut names: Vec<&str> = registry.names().collect();
    names.sort_unstable();
    for name in names {
        out.push_str(&format!("  . {name}\n"));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_expand_like_celery() {
        assert_eq!(expand_hostname("celeriac@%h", "node1.dc.example").unwrap(), "celeriac@node1.dc.example");
        assert_eq!(expand_hostname("w1@%n", "node1.dc.example").unwrap(), "w1@node1");
        assert_eq!(expand_hostname("%n.%d", "node1.dc.example").unwrap(), "node1.dc.example");
        assert_eq!(expand_hostname("a%%b", "h").unwrap(), "a%b");
        assert!(expand_hostname("a%xb", "h").is_err(), "Celery refuses an unknown key");
    }

    #[test]
    fn the_builtins_reach_redis_with_the_brokers_tls() {
        let ssl = celeriac_config::TlsSettings {
            ssl_cert_reqs: "CERT_NONE".into(),
            ssl_ca_certs: Some("/etc/ca dir/ca+1.pem".into()),
            ..Default::default()
        };
        let url = with_tls("redis://:pw@h:6380/2?ssl_cert_reqs=required&x=1", Some(&ssl)).unwrap();
        assert_eq!(url, "rediss://:pw@h:6380/2?x=1&ssl_cert_reqs=none&ssl_ca_certs=/etc/ca%20dir/ca%2B1.pem");
        let options = celeriac_backend::BackendOptions::from_url(&url).unwrap();
        let celeriac_backend::Endpoint::Tls { tls, .. } = options.endpoint else { panic!("{url}: not TLS") };
        assert_eq!(tls.ca_certs.as_deref(), Some(std::path::Path::new("/etc/ca dir/ca+1.pem")));
        assert_eq!(with_tls("redis://h/0", None).unwrap(), "redis://h/0");
        assert!(with_tls("redis+socket:///tmp/r.sock", Some(&ssl)).is_err());
    }

    #[test]
    fn log_levels_take_celerys_names() {
        assert_eq!(crate::logging::level("warning"), Ok("warn"));
        assert_eq!(crate::logging::level("CRITICAL"), Ok("error"));
        assert!(crate::logging::level("loud").is_err());
    }
}

//! `celeriac beat`: Celery beat's flags, settings from the file and the
//! environment, the startup banner, SIGHUP to reload `beat_schedule`,
//! SIGTERM/SIGINT to stop (releasing the leader lease at once), and the
//! operator's `--dry-run` and `--explain`.
//!
//! State, dynamic entries and a leader lease live in Redis in RedBeat's
//! layout, and any number of beats may run (one sends): in
//! `redbeat_redis_url` (`--redis-url`) when set, else in the broker's Redis
//! when the broker is Redis, as RedBeat defaults `redbeat_redis_url` to
//! `broker_url`. The local file `beat_schedule_filename` is used for a broker
//! without Redis, or when `-s FILE` asks for it; then one beat runs alone.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use celeriac_beat::store::redis::{connect, connect_with_tls};
use celeriac_beat::{Beat, BeatConfig, Entry, FileStore, RedisStore, Store};
use celeriac_broker::Producer;
use celeriac_config::Settings;
use clap::Args;
use jiff::tz::TimeZone;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::assemble;
use crate::error::CliError;

/// The lease time when `redbeat_lock_timeout` is not set: a standby takes
/// over at most this long after a leader dies (RedBeat's default is
/// 5 × `beat_max_loop_interval`, 25 minutes).
const DEFAULT_LEASE: f64 = 30.0;

/// `celeriac beat` flags; each overrides the setting named beside it.
#[derive(Args, Debug, Default, Clone)]
pub struct BeatArgs {
    /// Broker URL (`broker_url`), e.g. redis://127.0.0.1:6379/0.
    #[arg(short = 'b', long)]
    pub broker: Option<String>,
    /// Result backend URL (`result_backend`), read to judge no-overlap entries.
    #[arg(long)]
    pub result_backend: Option<String>,
    /// Settings file (TOML, Celery's setting names; `beat_schedule` holds the entries).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Log level: DEBUG, INFO, WARNING, ERROR or CRITICAL.
    #[arg(short = 'l', long, default_value = "INFO")]
    pub loglevel: String,
    /// State file when beat runs without Redis (`beat_schedule_filename`).
    #[arg(short = 's', long = "schedule")]
    pub schedule_file: Option<PathBuf>,
    /// Longest sleep between ticks in seconds (`beat_max_loop_interval`).
    #[arg(long)]
    pub max_interval: Option<f64>,
    /// Redis for state, dynamic entries and the leader lease (`redbeat_redis_url`).
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Seconds the leader lease lasts (`redbeat_lock_timeout`; default 30).
    #[arg(long)]
    pub lease: Option<f64>,
    /// Service name of the health key `health:<name>` (`beat_health_service`).
    #[arg(long)]
    pub health_service: Option<String>,
    /// Seconds the health key lives (`beat_health_ttl`).
    #[arg(long)]
    pub health_ttl: Option<f64>,
    /// Log what would be sent, and send, record and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print each entry's next fire times (in its zone and in UTC) and exit.
    #[arg(long)]
    pub explain: bool,
    /// How many fire times `--explain` prints per entry.
    #[arg(long, default_value_t = 5)]
    pub count: usize,
    /// Serve Prometheus metrics at http://ADDR/metrics (runs sent, slots
    /// skipped, send lag, leader), e.g. 127.0.0.1:9809.
    #[arg(long)]
    pub metrics_addr: Option<String>,
    /// Log to this file instead of stderr (as `celery beat`, not expanded).
    #[arg(short = 'f', long)]
    pub logfile: Option<PathBuf>,
    /// Write the process id to this file, refusing to start while another
    /// running process holds it.
    #[arg(long)]
    pub pidfile: Option<PathBuf>,
}

/// The beat's metrics as the worker's endpoint serves them.
struct Served(Arc<celeriac_beat::metrics::BeatMetrics>);

impl celeriac_worker::metrics::Exposition for Served {
    fn render(&self) -> String {
        self.0.render()
    }

    fn rejected(&self, reason: &'static str) {
        tracing::debug!("beat metrics: a connection was turned away ({reason})");
    }
}

/// The settings after the file, the environment and the flags.
fn settings(args: &BeatArgs) -> Result<Settings, CliError> {
    let mut settings = celeriac_config::load(args.config.as_deref())?.settings;
    if let Some(url) = &args.broker {
        settings.broker_url = url.clone();
    }
    if let Some(url) = &args.result_backend {
        settings.result_backend = Some(url.clone());
    }
    if let Some(file) = &args.schedule_file {
        settings.beat_schedule_filename = file.display().to_string();
    }
    if let Some(s) = args.max_interval {
        settings.beat_max_loop_interval = s;
    }
    if let Some(url) = &args.redis_url {
        settings.redbeat_redis_url = Some(url.clone());
    }
    if let Some(s) = args.lease {
        settings.redbeat_lock_timeout = Some(s);
    }
    if let Some(name) = &args.health_service {
        settings.beat_health_service = name.clone();
    }
    if let Some(s) = args.health_ttl {
        settings.beat_health_ttl = s;
    }
    settings.validate()?;
    Ok(settings)
}

/// The app time zone: `timezone`, else UTC (the system zone when
/// `enable_utc` is off, as Celery).
fn app_timezone(settings: &Settings) -> Result<TimeZone, CliError> {
    match settings.timezone.as_deref() {
        Some(zone) => celeriac_beat::entry::time_zone(zone).map_err(|e| CliError::Setting(format!("timezone: {e}"))),
        None if !settings.enable_utc => Ok(TimeZone::system()),
        None => Ok(TimeZone::UTC),
    }
}

/// The static entries of `beat_schedule`.
fn statics(settings: &Settings, tz: &TimeZone) -> Result<Vec<Entry>, CliError> {
    settings
        .beat_schedule
        .iter()
        .map(|(name, e)| Entry::from_settings(name, e, tz, settings.beat_cron_starting_deadline))
        .collect::<Result<_, _>>()
        .map_err(|e| CliError::Setting(e.to_string()))
}

fn beat_error(e: celeriac_beat::BeatError) -> CliError {
    CliError::Beat(e)
}

fn is_redis(url: &str) -> bool {
    ["redis://", "rediss://", "redis+socket://", "unix://", "sentinel://"].iter().any(|s| url.starts_with(s))
}

/// Where beat keeps its state and lease.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StateAt {
    /// In Redis at this URL, for the reason given (for the startup log).
    Redis { url: String, why: &'static str },
    /// In the local state file.
    File(PathBuf),
}

/// `redbeat_redis_url` when set; else the broker's Redis unless `-s FILE`
/// asks for a file (RedBeat's default, and the one that keeps two beats on
/// two hosts from both sending); else the file.
fn state_at(settings: &Settings, explicit_file: bool) -> StateAt {
    match &settings.redbeat_redis_url {
        Some(url) => StateAt::Redis { url: url.clone(), why: "redbeat_redis_url" },
        None if !explicit_file && is_redis(&settings.broker_url) => StateAt::Redis {
            url: settings.broker_url.clone(),
            why: "the broker's Redis, as redbeat_redis_url is not set (RedBeat's default; -s FILE keeps state in a \
                  file instead, for one beat alone)",
        },
        None => StateAt::File(PathBuf::from(&settings.beat_schedule_filename)),
    }
}

/// A number of seconds from a setting as a duration, refused if it does not fit one.
fn duration(setting: &str, secs: f64) -> Result<Duration, CliError> {
    Duration::try_from_secs_f64(secs).map_err(|e| {
        let secs = celeriac_beat::entry::number(secs);
        CliError::Setting(format!("{setting} = {secs}: not a usable number of seconds ({e})"))
    })
}

/// Connects to beat's Redis (with `tls` settings), retrying until it answers
/// or `stop` fires.
async fn connect_retrying(
    url: &str,
    master: Option<&str>,
    tls: Option<&celeriac_config::TlsSettings>,
    stop: &CancellationToken,
) -> Result<Option<(redis::aio::ConnectionManager, String)>, CliError> {
    let mut wait = Duration::from_millis(500);
    loop {
        match connect_with_tls(url, master, tls).await {
            Ok(found) => return Ok(Some(found)),
            Err(e @ celeriac_beat::BeatError::Setting { .. }) => return Err(beat_error(e)),
            Err(e) => {
                warn!("beat: {e}; retrying in {wait:?}");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.cancelled() => return Ok(None),
                }
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Opens the store where [`state_at`] says (waiting for Redis while `wait`,
/// else failing at once). `None` if stopped while waiting for Redis.
async fn open_store(
    settings: &Settings,
    at: &StateAt,
    tz: &TimeZone,
    read_only: bool,
    wait: Option<&CancellationToken>,
) -> Result<Option<Store>, CliError> {
    let master = settings.broker_transport_options.master_name.as_deref();
    match at {
        StateAt::Redis { url, .. } => {
            // The broker's Redis is reached as the broker is (`broker_use_ssl`).
            let tls = settings.broker_use_ssl.as_ref().filter(|_| *url == settings.broker_url);
            let found = match wait {
                Some(stop) => connect_retrying(url, master, tls, stop).await?,
                None => Some(connect_with_tls(url, master, tls).await.map_err(beat_error)?),
            };
            let Some((con, masked)) = found else { return Ok(None) };
            let keys = celeriac_beat::redbeat::Keys::from_settings(settings);
            let lease = duration("redbeat_lock_timeout", settings.redbeat_lock_timeout.unwrap_or(DEFAULT_LEASE))?;
            let store = RedisStore::new(con, masked, keys, lease, tz.clone(), settings.beat_cron_starting_deadline);
            Ok(Some(Store::Redis(Box::new(if read_only { store.read_only() } else { store }))))
        }
        StateAt::File(path) => {
            let file = if read_only { FileStore::open_read_only(path) } else { FileStore::open(path) };
            Ok(Some(Store::File(file.map_err(beat_error)?)))
        }
    }
}

/// Runs `celeriac beat` until a signal stops it (or prints `--explain`).
pub async fn run(args: BeatArgs) -> Result<(), CliError> {
    let level = crate::logging::level(&args.loglevel).map_err(CliError::Setting)?;
    crate::logging::init_to(level, args.logfile.as_deref()).map_err(CliError::Setting)?;
    let settings = settings(&args)?;
    let _pidfile = args.pidfile.as_deref().map(crate::habits::PidFile::create).transpose()?;
    let tz = app_timezone(&settings)?;
    let statics = statics(&settings, &tz)?;
    let at = state_at(&settings, args.schedule_file.is_some());
    if args.explain {
        return explain(&args, &settings, &at, &tz, statics).await;
    }
    let max_interval = duration("beat_max_loop_interval", settings.beat_max_loop_interval)?;
    let lease_ttl = duration("redbeat_lock_timeout", settings.redbeat_lock_timeout.unwrap_or(DEFAULT_LEASE))?;
    let health_ttl = duration("beat_health_ttl", settings.beat_health_ttl)?;
    let shutdown = CancellationToken::new();
    let (reload_tx, reload) = mpsc::channel(4);
    watch_signals(shutdown.clone(), reload_tx, args.clone())?;
    let Some(store) = open_store(&settings, &at, &tz, args.dry_run, Some(&shutdown)).await? else { return Ok(()) };
    match (&at, &store) {
        (StateAt::Redis { why, .. }, Store::Redis(r)) => {
            info!("beat: State and leader lease in {} ({}): {why}", r.url(), r.keys().lock)
        }
        (_, Store::File(f)) => info!(
            "beat: State in the file {}: {}; run one beat only",
            f.path().display(),
            if is_redis(&settings.broker_url) { "-s asks for it" } else { "the broker is not Redis" }
        ),
        _ => {}
    }

    let origin = format!("gen{}@{}", std::process::id(), celeriac_broker::producer::hostname());
    let mut producer_config = assemble::producer_config(&settings, &origin)?;
    // Flower and celery-exporter learn about beat's tasks from task-sent.
    producer_config.send_sent_event = true;
    let producer = Producer::new(assemble::broker(&settings)?, producer_config);
    let backend = assemble::backend(&settings).await?;
    if backend.is_none() {
        if let Some(e) = statics.iter().find(|e| e.extras.no_overlap) {
            return Err(CliError::Setting(format!(
                "beat_schedule.{}: no_overlap needs the result backend the workers store results in; set \
                 result_backend (or --result-backend)",
                e.name
            )));
        }
    }

    let health = if args.dry_run {
        None
    } else {
        let ttl = health_ttl;
        let service = &settings.beat_health_service;
        match &store {
            Store::Redis(r) => {
                Some(celeriac_beat::health::Health::new(r.connection(), r.url().to_owned(), service, &origin, ttl))
            }
            Store::File(_) if is_redis(&settings.broker_url) => {
                match connect(&settings.broker_url, settings.broker_transport_options.master_name.as_deref()).await {
                    Ok((con, url)) => Some(celeriac_beat::health::Health::new(con, url, service, &origin, ttl)),
                    Err(e) => {
                        warn!("beat: no health key: {e}");
                        None
                    }
                }
            }
            Store::File(_) => {
                info!("beat: no health key: neither redbeat_redis_url nor the broker is Redis");
                None
            }
        }
    };
    print!("{}", banner(&settings, &store, &statics, &producer, args.dry_run, health.is_some()));

    // The broker is this very Redis: messages are pushed by the script that
    // checks the lease, so a beat that lost it cannot publish.
    let publish_in_store = matches!(&at, StateAt::Redis { url, .. } if *url == settings.broker_url);
    let config = BeatConfig {
        max_interval,
        lease_ttl,
        dry_run: args.dry_run,
        namespace: settings.redbeat_key_prefix.clone(),
        publish_in_store,
        ..BeatConfig::default()
    };
    let mut beat = Beat::new(config, statics, store, producer, Arc::new(celeriac_beat::SystemClock));
    if let Some(backend) = backend {
        beat = beat.with_task_states(Arc::new(backend));
    }
    if let Some(health) = health {
        beat = beat.with_health(health);
    }
    let metrics_server = match args.metrics_addr.as_deref() {
        Some(addr) => {
            let addr: std::net::SocketAddr =
                addr.parse().map_err(|e| CliError::Setting(format!("--metrics-addr {addr:?}: {e}")))?;
            let metrics = Arc::new(celeriac_beat::metrics::BeatMetrics::new(&settings.beat_health_service));
            beat = beat.with_metrics(metrics.clone());
            let served = Arc::new(Served(metrics));
            let limits = celeriac_worker::metrics::HttpLimits::default();
            let server = celeriac_worker::metrics::serve_exposition(served, addr, shutdown.child_token(), limits)
                .await
                .map_err(|e| CliError::Setting(format!("--metrics-addr {addr}: cannot listen there: {e}")))?;
            Some(server)
        }
        None => None,
    };
    beat.run(celeriac_beat::Control { shutdown: shutdown.clone(), reload }).await;
    shutdown.cancel();
    if let Some(server) = metrics_server {
        let _ = server.await;
    }
    Ok(())
}

/// `--explain`: next fire times of the static entries and, with Redis, the
/// dynamic ones, from their recorded state.
async fn explain(
    args: &BeatArgs,
    settings: &Settings,
    at: &StateAt,
    tz: &TimeZone,
    statics: Vec<Entry>,
) -> Result<(), CliError> {
    let now = jiff::Timestamp::now();
    let mut rows: Vec<(Entry, Option<celeriac_beat::EntryState>)> = Vec::new();
    let mut broken = Vec::new();
    match open_store(settings, at, tz, true, None).await? {
        Some(Store::File(file)) => rows.extend(statics.into_iter().map(|e| {
            let state = file.state(&e.name);
            (e, Some(state))
        })),
        Some(Store::Redis(mut redis)) => {
            let loaded = redis.load().await.map_err(beat_error)?;
            let mut stored = Vec::new();
            for item in loaded {
                match item {
                    celeriac_beat::store::Loaded::Entry(e, s, _) => stored.push((*e, s)),
                    celeriac_beat::store::Loaded::Broken { key, reason } => broken.push(format!("{key}: {reason}")),
                }
            }
            for e in statics {
                let state = stored.iter().find(|(s, _)| s.name == e.name).map(|(_, st)| st.clone());
                rows.push((e, state));
            }
            for (e, s) in stored {
                if !rows.iter().any(|(r, _)| r.name == e.name) {
                    rows.push((e, Some(s)));
                }
            }
        }
        None => return Ok(()),
    }
    print!("{}", celeriac_beat::explain::explain(&rows, now, args.count));
    for b in broken {
        println!("cannot be run: {b}");
    }
    Ok(())
}

/// SIGTERM or SIGINT: stop (the lease is released); SIGHUP: read the
/// settings again and replace the static entries (a bad file keeps the old ones).
fn watch_signals(stop: CancellationToken, reload: mpsc::Sender<Vec<Entry>>, args: BeatArgs) -> Result<(), CliError> {
    let mut term = signal(SignalKind::terminate()).map_err(CliError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(CliError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(CliError::Signals)?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { info!("beat: Stopping (SIGTERM)"); stop.cancel(); return; }
                _ = int.recv() => { info!("beat: Stopping (SIGINT)"); stop.cancel(); return; }
                _ = hup.recv() => {
                    let fresh = settings(&args).and_then(|s| { let tz = app_timezone(&s)?; statics(&s, &tz) });
                    match fresh {
                        Ok(entries) => { let _ = reload.send(entries).await; }
                        Err(e) => error!("beat: SIGHUP: the settings cannot be used, keeping the current schedule: {e}"),
                    }
                }
            }
        }
    });
    Ok(())
}

/// celery beat's banner, with celeriac's facts.
fn banner(
    settings: &Settings,
    store: &Store,
    statics: &[Entry],
    producer: &Producer,
    dry_run: bool,
    health: bool,
) -> String {
    let now = jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M:%S UTC");
    let (scheduler, db) = match store {
        Store::Redis(r) => (
            "redbeat (Redis: shared state, dynamic entries, leader lease)".to_owned(),
            format!(
                "{}\n    . lock -> {} ({}s)",
                r.url(),
                r.keys().lock,
                settings.redbeat_lock_timeout.unwrap_or(DEFAULT_LEASE)
            ),
        ),
        Store::File(f) => ("file (one beat alone)".to_owned(), f.path().display().to_string()),
    };
    let results = settings.result_backend.as_deref().map(celeriac_redisconn::mask_password);
    let health = if health {
        format!("health:{} ({}s)", settings.beat_health_service, settings.beat_health_ttl)
    } else {
        "none".into()
    };
    let lines = [
        format!("celeriac beat v{} is starting.", env!("CARGO_PKG_VERSION")),
        format!("LocalTime -> {now}"),
        "Configuration ->".into(),
        format!("    . broker -> {}", producer.broker().masked_url()),
        format!("    . results -> {}", results.unwrap_or_else(|| "disabled://".into())),
        format!("    . scheduler -> {scheduler}"),
        format!("    . db -> {db}"),
        format!("    . health -> {health}"),
        format!("    . maxinterval -> {}s", settings.beat_max_loop_interval),
    ];
    let mut out = lines.join("\n");
    out.push('\n');
    if dry_run {
        out.push_str("    . DRY RUN: nothing is sent, recorded or written\n");
    }
    out.push_str(&format!("[{} static entries]\n", statics.len()));
    for e in statics {
        out.push_str(&format!("  . {} -> {} ({})\n", e.name, e.task, e.schedule.describe()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(broker: &str, redbeat: Option<&str>) -> Settings {
        Settings { broker_url: broker.into(), redbeat_redis_url: redbeat.map(str::to_owned), ..Settings::default() }
    }

    #[test]
    fn state_lives_in_the_brokers_redis_unless_a_file_is_asked_for() {
        for broker in ["redis://h:6379/0", "rediss://h:6380/1", "sentinel://h:26379", "redis+socket:///tmp/r.sock"] {
            let at = state_at(&with(broker, None), false);
            assert!(matches!(&at, StateAt::Redis { url, .. } if url == broker), "{broker}: {at:?}");
            assert!(matches!(state_at(&with(broker, None), true), StateAt::File(_)), "{broker} with -s");
        }
        let at = state_at(&with("redis://h/0", Some("redis://other/2")), true);
        assert_eq!(at, StateAt::Redis { url: "redis://other/2".into(), why: "redbeat_redis_url" });
        let at = state_at(&with("amqp://guest@h//", None), false);
        assert_eq!(at, StateAt::File(PathBuf::from("celerybeat-schedule.json")));
    }

    #[test]
    fn seconds_that_fit_no_duration_are_a_setting_error() {
        assert!(duration("beat_health_ttl", 1e300).unwrap_err().to_string().contains("beat_health_ttl = 1e300"));
        assert_eq!(duration("beat_health_ttl", 1.5).unwrap(), Duration::from_millis(1500));
    }
}

//! Every setting celeriac reads, under Celery's name and with Celery's default.
//!
//! Unknown names are refused (a typo must not silently fall back to a default).
//! Settings that exist only in celeriac are marked as such in their docs.

use celeriac_redisconn::mask_password;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::ConfigError;

/// All settings. Field names are Celery's configuration names. `Debug`
/// shows them censored, as `inspect conf` does.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    // ---- broker -------------------------------------------------------------
    /// Broker URL (`redis://`, `rediss://`, `unix://`, `sentinel://`, `amqp://`).
    pub broker_url: String,
    /// Options of the broker transport (kombu's `transport_options`).
    pub broker_transport_options: BrokerTransportOptions,
    /// Retry connecting at startup instead of failing at once.
    pub broker_connection_retry_on_startup: bool,
    /// Retries before giving up on a lost broker connection (`None`: forever).
    pub broker_connection_max_retries: Option<u32>,
    /// Seconds to wait for a broker connection before retrying.
    pub broker_connection_timeout: f64,
    /// AMQP heartbeat in seconds (0 disables).
    pub broker_heartbeat: Option<f64>,
    /// TLS options for `rediss://` and `amqps://` (CA, certificate, key, verification).
    pub broker_use_ssl: Option<TlsSettings>,

    // ---- results ------------------------------------------------------------
    /// Result backend URL (`redis://...`); none stores no results.
    pub result_backend: Option<String>,
    /// Options of the result backend transport.
    pub result_backend_transport_options: ResultBackendTransportOptions,
    /// Seconds results are kept (`SETEX`); 0 or none keeps them forever.
    pub result_expires: Option<u64>,
    /// Store task name, args, kwargs, worker, retries and queue with the result.
    pub result_extended: bool,
    /// Serializer of stored results.
    pub result_serializer: String,
    /// Content types accepted when reading results (default: `accept_content`).
    pub result_accept_content: Option<Vec<String>>,
    /// Compression of stored results.
    pub result_compression: Option<String>,
    /// TLS options for a `rediss://` result backend.
    pub redis_backend_use_ssl: Option<TlsSettings>,

    // ---- messages -----------------------------------------------------------
    /// Serializer of task messages celeriac sends.
    pub task_serializer: String,
    /// Compression of task messages celeriac sends.
    pub task_compression: Option<String>,
    /// Content types a worker accepts; pickle is never accepted.
    pub accept_content: Vec<String>,
    /// Task message protocol sent (2; 1 for very old peers).
    pub task_protocol: u8,
    /// The app time zone (IANA name); eta/expires and crontabs use it.
    pub timezone: Option<String>,
    /// Whether times on the wire are UTC.
    pub enable_utc: bool,

    // ---- routing ------------------------------------------------------------
    /// Queue for tasks with no route.
    pub task_default_queue: String,
    /// Exchange of the default queue (default: the queue's name).
    pub task_default_exchange: Option<String>,
    /// Exchange type of the default exchange.
    pub task_default_exchange_type: String,
    /// Routing key of the default queue (default: the queue's name).
    pub task_default_routing_key: Option<String>,
    /// Priority of tasks sent without one.
    pub task_default_priority: Option<u8>,
    /// Queues by name, with their exchange and routing key.
    pub task_queues: IndexMap<String, QueueSettings>,
    /// Routes by task name or glob (`"transfer.*"`), tried in order.
    pub task_routes: IndexMap<String, crate::Route>,
    /// Create a queue named by a route that is not in `task_queues`.
    pub task_create_missing_queues: bool,
    /// Type of queues not in `task_queues` on RabbitMQ: `classic` or `quorum`
    /// (Celery 5.5+).
    pub task_default_queue_type: String,
    /// `x-max-priority` of queues not in `task_queues` on RabbitMQ (classic queues only).
    pub task_queue_max_priority: Option<u8>,

    // ---- task execution -----------------------------------------------------
    /// Acknowledge after the task ran instead of before.
    pub task_acks_late: bool,
    /// With late acks, ack failed and timed-out tasks too (else requeue them).
    pub task_acks_on_failure_or_timeout: bool,
    /// Requeue a late-ack task whose worker died while running it.
    pub task_reject_on_worker_lost: bool,
    /// Store a STARTED state when a task starts.
    pub task_track_started: bool,
    /// Store no results unless a task asks for them.
    pub task_ignore_result: bool,
    /// Store errors even when results are ignored.
    pub task_store_errors_even_if_ignored: bool,
    /// Hard time limit in seconds for every task.
    pub task_time_limit: Option<f64>,
    /// Soft time limit in seconds for every task.
    pub task_soft_time_limit: Option<f64>,
    /// Rate limit for every task (`"10/s"`, `"100/m"`, `"1000/h"`).
    pub task_default_rate_limit: Option<String>,
    /// Send `task-sent` events from producers.
    pub task_send_sent_event: bool,
    /// Retries for publishing a message on a lost connection.
    pub task_publish_retry: bool,

    // ---- worker -------------------------------------------------------------
    /// Tasks run at once (default: the number of CPUs).
    pub worker_concurrency: Option<usize>,
    /// Messages reserved per concurrency slot (prefetch = concurrency x this; 0 = unlimited).
    pub worker_prefetch_multiplier: usize,
    /// Send task events (`-E`).
    pub worker_send_task_events: bool,
    /// File that keeps revoked task ids across restarts (`--statedb`).
    pub worker_state_db: Option<String>,
    /// Disable all rate limits.
    pub worker_disable_rate_limits: bool,
    /// Seconds a warm shutdown waits for running tasks before it turns cold
    /// (Celery 5.5's soft shutdown; 0 waits without limit).
    pub worker_soft_shutdown_timeout: f64,
    /// Seconds between worker heartbeats.
    pub worker_heartbeat_interval: f64,
    /// Address of the Prometheus metrics endpoint (celeriac only).
    pub worker_metrics_addr: Option<String>,
    /// What to do with a task no worker here knows (celeriac only): `reject`
    /// (Celery's: store `NotRegistered`, drop), `requeue` (leave it for other
    /// workers on a shared queue), or `dead_letter`.
    pub worker_unknown_task: UnknownTaskPolicy,
    /// Queue for messages that cannot be decoded or run (celeriac only).
    pub worker_dead_letter_queue: String,
    /// On RabbitMQ, look for quorum queues among the configured ones: then
    /// prefetch is per consumer (no global qos) and ETA tasks to non-direct
    /// exchanges use native delayed delivery (Celery 5.5+).
    pub worker_detect_quorum_queues: bool,
    /// Most ETA/countdown tasks held at once before the worker stops reserving (celeriac only).
    pub worker_max_scheduled_tasks: usize,
    /// Largest task message a worker decodes, in bytes of the raw body as it
    /// arrives (before decompression; the decoded size is bounded by the same
    /// limit). Larger messages are dead-lettered with the reason (celeriac only).
    pub worker_max_message_size: usize,

    // ---- events and remote control ------------------------------------------
    /// Exchange events are sent on.
    pub event_exchange: String,
    /// Exchange of remote-control commands.
    pub control_exchange: String,
    /// Event queue message TTL in seconds (AMQP).
    pub event_queue_ttl: Option<f64>,
    /// Event queue expiry in seconds (AMQP).
    pub event_queue_expires: Option<f64>,

    // ---- beat ---------------------------------------------------------------
    /// Periodic tasks by entry name.
    pub beat_schedule: IndexMap<String, BeatEntrySettings>,
    /// Longest sleep between beat ticks, in seconds.
    pub beat_max_loop_interval: f64,
    /// Seconds after its slot a missed crontab run may still be sent (none:
    /// any time). An entry's own `starting_deadline` wins, for any schedule.
    pub beat_cron_starting_deadline: Option<f64>,
    /// Local state file of beat when it keeps state without Redis (`-s`).
    pub beat_schedule_filename: String,
    /// Name in beat's health key `health:<name>` (celeriac only).
    pub beat_health_service: String,
    /// Seconds the health key lives unless the leading beat writes it again
    /// (celeriac only); beat ticks at least three times per TTL.
    pub beat_health_ttl: f64,
    /// Redis for beat's dynamic entries, state and lease (RedBeat's setting);
    /// none means the broker's Redis when the broker is Redis (as RedBeat
    /// falls back to `broker_url`), else a local `beat_schedule_filename`
    /// and one beat alone (`celeriac beat -s FILE` asks for the file).
    pub redbeat_redis_url: Option<String>,
    /// Prefix of beat's keys in Redis (RedBeat's setting and default, `redbeat:`).
    pub redbeat_key_prefix: String,
    /// Key of the leader lease (RedBeat's setting; default `<prefix>:lock`,
    /// i.e. `redbeat::lock`; a key not starting with the prefix gets it prepended,
    /// as RedBeat does).
    pub redbeat_lock_key: Option<String>,
    /// Seconds the leader lease lasts unless extended (RedBeat's setting;
    /// celeriac's default is 30 s, so a standby takes over within 30 s).
    pub redbeat_lock_timeout: Option<f64>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            broker_url: "amqp://guest:guest@localhost:5672//".into(),
            broker_transport_options: BrokerTransportOptions::default(),
            broker_connection_retry_on_startup: true,
            broker_connection_max_retries: Some(100),
            broker_connection_timeout: 4.0,
            broker_heartbeat: Some(120.0),
            broker_use_ssl: None,
            result_backend: None,
            result_backend_transport_options: ResultBackendTransportOptions::default(),
            result_expires: Some(86_400),
            result_extended: false,
            result_serializer: "json".into(),
            result_accept_content: None,
            result_compression: None,
            redis_backend_use_ssl: None,
            task_serializer: "json".into(),
            task_compression: None,
            accept_content: vec!["json".into()],
            task_protocol: 2,
            timezone: None,
            enable_utc: true,
            task_default_queue: "celery".into(),
            task_default_exchange: None,
            task_default_exchange_type: "direct".into(),
            task_default_routing_key: None,
            task_default_priority: None,
            task_queues: IndexMap::new(),
            task_routes: IndexMap::new(),
            task_create_missing_queues: true,
            task_default_queue_type: "classic".into(),
            task_queue_max_priority: None,
            task_acks_late: false,
            task_acks_on_failure_or_timeout: true,
            task_reject_on_worker_lost: false,
            task_track_started: false,
            task_ignore_result: false,
            task_store_errors_even_if_ignored: false,
            task_time_limit: None,
            task_soft_time_limit: None,
            task_default_rate_limit: None,
            task_send_sent_event: false,
            task_publish_retry: true,
            worker_concurrency: None,
            worker_prefetch_multiplier: 4,
            worker_send_task_events: false,
            worker_state_db: None,
            worker_disable_rate_limits: false,
            worker_soft_shutdown_timeout: 30.0,
            worker_heartbeat_interval: 2.0,
            worker_metrics_addr: None,
            worker_unknown_task: UnknownTaskPolicy::Reject,
            worker_dead_letter_queue: "celeriac.dead_letter".into(),
            worker_detect_quorum_queues: true,
            worker_max_scheduled_tasks: 100_000,
            worker_max_message_size: 64 * 1024 * 1024,
            event_exchange: "celeryev".into(),
            control_exchange: "celery".into(),
            event_queue_ttl: Some(5.0),
            event_queue_expires: Some(60.0),
            beat_schedule: IndexMap::new(),
            beat_max_loop_interval: 300.0,
            beat_cron_starting_deadline: None,
            beat_schedule_filename: "celerybeat-schedule.json".into(),
            beat_health_service: "beat".into(),
            beat_health_ttl: 60.0,
            redbeat_redis_url: None,
            redbeat_key_prefix: "redbeat:".into(),
            redbeat_lock_key: None,
            redbeat_lock_timeout: None,
        }
    }
}

/// kombu's transport options for the Redis transport (and the few AMQP reads).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerTransportOptions {
    /// Seconds a reserved message may stay unacknowledged before any consumer
    /// restores it. Must exceed the longest ETA/countdown in use.
    pub visibility_timeout: f64,
    /// Prefix added as is to every broker key and channel.
    pub global_keyprefix: String,
    /// Priority sub-queue steps.
    pub priority_steps: Vec<u8>,
    /// Separator in priority sub-queue names and binding members.
    pub sep: String,
    /// `round_robin`, `sorted` or `priority`.
    pub queue_order_strategy: String,
    /// Seconds a blocking pop waits (kombu's `polling_interval` on Redis).
    pub polling_interval: Option<f64>,
    /// Prefix fanout channels with `/{db}.` (true), nothing (false).
    pub fanout_prefix: bool,
    /// Publish fanout messages on `<exchange>/<routing_key>` channels.
    pub fanout_patterns: bool,
    /// Most messages restored per visibility sweep (none: all).
    pub unacked_restore_limit: Option<u64>,
    /// Master name for `sentinel://` URLs.
    pub master_name: Option<String>,
    /// Socket timeout in seconds.
    pub socket_timeout: Option<f64>,
    /// Connect timeout in seconds.
    pub socket_connect_timeout: Option<f64>,
    /// Seconds between connection health checks.
    pub health_check_interval: f64,
    /// Largest number of broker connections per process.
    pub max_connections: usize,
    /// Name the broker connections report (`CLIENT SETNAME`).
    pub client_name: Option<String>,
    /// Bodies as `base64` (kombu's default) or raw `utf-8`.
    pub body_encoding: String,
    /// Settings of the connections to the Sentinel nodes themselves (kombu's
    /// `sentinel_kwargs`): their own password. TLS to them follows `broker_use_ssl`.
    pub sentinel_kwargs: Option<SentinelKwargs>,
    /// RabbitMQ: wait for the broker's confirm of every publish (kombu's
    /// `confirm_publish`; celeriac's default is on, kombu's off).
    pub confirm_publish: bool,
}

impl Default for BrokerTransportOptions {
    fn default() -> Self {
        BrokerTransportOptions {
            visibility_timeout: 3600.0,
            global_keyprefix: String::new(),
            priority_steps: vec![0, 3, 6, 9],
            sep: "\x06\x16".into(),
            queue_order_strategy: "round_robin".into(),
            polling_interval: None,
            fanout_prefix: true,
            fanout_patterns: true,
            unacked_restore_limit: None,
            master_name: None,
            socket_timeout: None,
            socket_connect_timeout: None,
            health_check_interval: 25.0,
            max_connections: 10,
            client_name: None,
            body_encoding: "base64".into(),
            sentinel_kwargs: None,
            confirm_publish: true,
        }
    }
}

/// Transport options of the result backend.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResultBackendTransportOptions {
    /// Prefix of result keys; `_` is added unless it ends in one of `:_-.`.
    pub global_keyprefix: String,
    /// Chord join in a sorted set by group index (true, Celery's default) or a list.
    pub result_chord_ordered: Option<bool>,
    /// Master name for `sentinel://` result backends.
    pub master_name: Option<String>,
    /// Settings of the connections to the Sentinel nodes themselves (Celery's
    /// `sentinel_kwargs`): their own password. TLS to them follows `redis_backend_use_ssl`.
    pub sentinel_kwargs: Option<SentinelKwargs>,
    /// How connection errors are retried (Celery's `retry_policy`; unset
    /// fields keep Celery's 20 retries, 0 s, then 1 s each).
    pub retry_policy: Option<RetryPolicySettings>,
}

/// `sentinel_kwargs`: what the connections to the Sentinel nodes use.
#[derive(Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SentinelKwargs {
    /// The Sentinel nodes' own password (`requirepass` of the Sentinels).
    pub password: Option<String>,
}

/// The password is never shown.
impl std::fmt::Debug for SentinelKwargs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelKwargs").field("password", &self.password.as_ref().map(|_| "********")).finish()
    }
}

/// Celery's `retry_policy` of the result backend: the n-th retry waits
/// `min(interval_start + n * interval_step, interval_max)` seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicySettings {
    /// Retries after the first attempt (Celery's default 20).
    pub max_retries: u32,
    /// The first wait, in seconds (0).
    pub interval_start: f64,
    /// How much each wait grows, in seconds (1).
    pub interval_step: f64,
    /// The longest wait, in seconds (1).
    pub interval_max: f64,
}

impl Default for RetryPolicySettings {
    fn default() -> Self {
        RetryPolicySettings { max_retries: 20, interval_start: 0.0, interval_step: 1.0, interval_max: 1.0 }
    }
}

/// TLS settings, under kombu's and redis-py's names (`ssl_cert_reqs`, ...)
/// or py-amqp's, which `broker_use_ssl` takes on RabbitMQ (`cert_reqs`,
/// `ca_certs`, `certfile`, `keyfile`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// `required` (default), `optional` or `none` (also `CERT_NONE`, ...).
    #[serde(alias = "cert_reqs")]
    pub ssl_cert_reqs: String,
    /// CA bundle file.
    #[serde(alias = "ca_certs")]
    pub ssl_ca_certs: Option<String>,
    /// Client certificate file.
    #[serde(alias = "certfile")]
    pub ssl_certfile: Option<String>,
    /// Client key file.
    #[serde(alias = "keyfile")]
    pub ssl_keyfile: Option<String>,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings { ssl_cert_reqs: "required".into(), ssl_ca_certs: None, ssl_certfile: None, ssl_keyfile: None }
    }
}

/// One entry of `task_queues`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueSettings {
    /// Exchange (default: the queue's name).
    pub exchange: Option<String>,
    /// Exchange type: `direct`, `topic` or `fanout`.
    pub exchange_type: Option<String>,
    /// Routing key (default: the queue's name).
    pub routing_key: Option<String>,
    /// Highest priority (AMQP `x-max-priority`).
    pub max_priority: Option<u8>,
    /// Extra queue arguments (AMQP).
    pub queue_arguments: Option<IndexMap<String, Json>>,
}

/// Celery's handling of an unknown task is `reject`; the others are celeriac's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownTaskPolicy {
    /// Store FAILURE `NotRegistered` and drop the message, as Celery does.
    #[default]
    Reject,
    /// Requeue it for another worker on a shared queue.
    Requeue,
    /// Move it to `worker_dead_letter_queue` with the reason.
    DeadLetter,
}

/// One `beat_schedule` entry, as in Celery plus celeriac's safety options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BeatEntrySettings {
    /// Task name to send.
    pub task: String,
    /// Seconds (a number), a duration (`"30s"`, `"1h30m"`), a five-field
    /// crontab (`"*/5 9-17 * * mon-fri"`) or an RFC 3339 instant.
    pub schedule: ScheduleSetting,
    /// Positional arguments.
    #[serde(default)]
    pub args: Vec<Json>,
    /// Keyword arguments.
    #[serde(default)]
    pub kwargs: IndexMap<String, Json>,
    /// Publishing options (`queue`, `routing_key`, `exchange`, `priority`,
    /// `expires`, `headers`, ...).
    #[serde(default)]
    pub options: IndexMap<String, Json>,
    /// Align interval runs to the clock (Celery's `relative`).
    #[serde(default)]
    pub relative: bool,
    /// Time zone of a crontab (default: the app `timezone`).
    #[serde(default)]
    pub timezone: Option<String>,
    /// Do not send while the previous run is still queued or running, judged
    /// from the result backend (celeriac).
    #[serde(default)]
    pub no_overlap: bool,
    /// Seconds after its send a still-unfinished previous run no longer blocks
    /// the next one (celeriac; default 3600).
    #[serde(default)]
    pub no_overlap_timeout: Option<f64>,
    /// After downtime: `once` (Celery's default), `skip`, or `all` (every missed
    /// slot, at most `max_catch_up`) (celeriac).
    #[serde(default)]
    pub catch_up: Option<CatchUpPolicy>,
    /// Most missed slots sent by `catch_up = "all"` (celeriac; default 100).
    #[serde(default)]
    pub max_catch_up: Option<u32>,
    /// Seconds after its slot a run may still be sent; older slots are dropped
    /// (celeriac; for any schedule, where `beat_cron_starting_deadline` is for
    /// crontabs only).
    #[serde(default)]
    pub starting_deadline: Option<f64>,
    /// Whether the entry runs at all.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// What beat does with the slots an entry missed while no beat was sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum CatchUpPolicy {
    /// Send one run for all the missed slots (Celery's and RedBeat's behaviour).
    #[default]
    Once,
    /// Send nothing for missed slots; run again at the next slot. A slot late
    /// by less than the starting deadline (default 30 s) still counts as on time.
    Skip,
    /// Send every missed slot, oldest first, at most `max_catch_up` of them.
    All,
}

impl TryFrom<String> for CatchUpPolicy {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        match text.as_str() {
            "once" => Ok(CatchUpPolicy::Once),
            "skip" => Ok(CatchUpPolicy::Skip),
            "all" => Ok(CatchUpPolicy::All),
            other => Err(format!("unknown catch_up policy {other:?}: expected once, skip or all")),
        }
    }
}

/// A `schedule` value as written: a number of seconds, or text to be parsed
/// by the scheduler (duration, crontab or instant).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ScheduleSetting {
    /// Seconds between runs.
    Seconds(f64),
    /// A duration, crontab or RFC 3339 instant.
    Text(String),
}

impl Settings {
    /// Checks values the types cannot: every number against its range
    /// ([`crate::NUMERIC_SETTINGS`]), serializers, rate limits, URLs. Called by
    /// [`crate::load`]; call it again after changing settings in code.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !["classic", "quorum"].contains(&self.task_default_queue_type.as_str()) {
            return Err(ConfigError::value(
                "task_default_queue_type",
                &self.task_default_queue_type,
                "expected classic or quorum",
            ));
        }
        const SERIALIZERS: [&str; 3] = ["json", "msgpack", "yaml"];
        for (setting, value) in
            [("task_serializer", &self.task_serializer), ("result_serializer", &self.result_serializer)]
        {
            if value == "pickle" {
                return Err(ConfigError::value(
                    setting,
                    value,
                    "pickle is never used by celeriac: it runs arbitrary code on decode; use json",
                ));
            }
            if !SERIALIZERS.contains(&value.as_str()) {
                return Err(ConfigError::value(setting, value, "expected one of json, msgpack, yaml"));
            }
        }
        for name in self.accept_content.iter().chain(self.result_accept_content.iter().flatten()) {
            let known = ["json", "msgpack", "yaml", "application/json", "application/x-msgpack", "application/x-yaml"];
            if name.contains("pickle") || name == "application/x-python-serialize" {
                return Err(ConfigError::value(
                    "accept_content",
                    name,
                    "pickle cannot be accepted: celeriac never decodes it",
                ));
            }
            if !known.contains(&name.as_str()) {
                return Err(ConfigError::value("accept_content", name, "expected json, msgpack or yaml"));
            }
        }
        for (setting, value) in
            [("task_compression", &self.task_compression), ("result_compression", &self.result_compression)]
        {
            if let Some(v) = value {
                if !["gzip", "zlib", "bzip2", "lzma", "xz", "zstd", "brotli"].contains(&v.as_str()) {
                    return Err(ConfigError::value(setting, v, "expected gzip, zlib, bzip2, lzma, zstd or brotli"));
                }
            }
        }
        crate::limits::check_settings(self)?;
        if let Some(rate) = &self.task_default_rate_limit {
            parse_rate_limit(rate).map_err(|reason| ConfigError::value("task_default_rate_limit", rate, reason))?;
        }
        if !["round_robin", "sorted", "priority"].contains(&self.broker_transport_options.queue_order_strategy.as_str())
        {
            return Err(ConfigError::value(
                "broker_transport_options.queue_order_strategy",
                &self.broker_transport_options.queue_order_strategy,
                "expected round_robin, sorted or priority",
            ));
        }
        for (setting, url) in [("broker_url", Some(&self.broker_url)), ("result_backend", self.result_backend.as_ref())]
        {
            if let Some(url) = url {
                if !url.contains("://") {
                    return Err(ConfigError::value(
                        setting,
                        mask_password(url),
                        "expected a URL such as redis://host:6379/0",
                    ));
                }
            }
        }
        self.validate_beat()?;
        Ok(())
    }

    /// Checks the beat settings the types cannot (the schedules themselves are
    /// parsed by `celeriac-beat`, which names the entry in its errors).
    fn validate_beat(&self) -> Result<(), ConfigError> {
        if self.beat_health_service.trim().is_empty() {
            return Err(ConfigError::value("beat_health_service", "\"\"", "must name the service (health:<name>)"));
        }
        if self.redbeat_key_prefix.is_empty() {
            return Err(ConfigError::value("redbeat_key_prefix", "\"\"", "must not be empty (RedBeat's is redbeat:)"));
        }
        if self.beat_schedule_filename.trim().is_empty() {
            return Err(ConfigError::value("beat_schedule_filename", "\"\"", "must name a file"));
        }
        if let Some(url) = &self.redbeat_redis_url {
            if !url.contains("://") {
                return Err(ConfigError::value(
                    "redbeat_redis_url",
                    mask_password(url),
                    "expected a URL such as redis://host:6379/0",
                ));
            }
        }
        for (name, entry) in &self.beat_schedule {
            let field = |f: &str| format!("beat_schedule.{name}.{f}");
            if name.trim().is_empty() {
                return Err(ConfigError::value("beat_schedule", "\"\"", "an entry needs a name"));
            }
            if entry.task.trim().is_empty() {
                return Err(ConfigError::value(&field("task"), "\"\"", "must name a task"));
            }
        }
        Ok(())
    }

    /// The key of the leader lease: `redbeat_lock_key`, else `<prefix>:lock`;
    /// a key that does not start with the prefix gets it prepended (RedBeat's rule).
    pub fn redbeat_lock_key(&self) -> String {
        let prefix = &self.redbeat_key_prefix;
        match &self.redbeat_lock_key {
            None => format!("{prefix}:lock"),
            Some(key) if key.starts_with(prefix.as_str()) => key.clone(),
            Some(key) => format!("{prefix}{key}"),
        }
    }

    /// Concurrency: the setting, else the number of CPUs.
    pub fn concurrency(&self) -> usize {
        self.worker_concurrency.unwrap_or_else(|| std::thread::available_parallelism().map(usize::from).unwrap_or(1))
    }

    /// Prefetch limit: concurrency x multiplier (0 means unlimited, as in Celery).
    pub fn prefetch_count(&self) -> usize {
        self.concurrency().saturating_mul(self.worker_prefetch_multiplier)
    }

    /// Where a task goes when no route applies: the default queue, and its
    /// exchange and routing key (both the queue's name unless set).
    pub fn default_route(&self) -> crate::Route {
        let queue = self.task_default_queue.clone();
        crate::Route {
            exchange: Some(self.task_default_exchange.clone().unwrap_or_else(|| queue.clone())),
            routing_key: Some(self.task_default_routing_key.clone().unwrap_or_else(|| queue.clone())),
            queue: Some(queue),
            priority: self.task_default_priority,
        }
    }
}

/// The count of a rate limit: 0 (no limit), or from 0.001 to 10^9 tasks per
/// second, minute or hour, so the interval between two tasks is always a
/// usable duration.
pub const RATE_LIMIT_COUNT: (f64, f64) = (0.001, 1e9);

/// A rate limit in tasks per second, from Celery's spelling: `"10/s"`, `"100/m"`,
/// `"1000/h"`, or a bare number (per second). `"0"` means no limit (`None`).
/// The count is 0 or within [`RATE_LIMIT_COUNT`].
pub fn parse_rate_limit(text: &str) -> Result<Option<f64>, String> {
    let text = text.trim();
    let (count, per) = match text.split_once('/') {
        Some((c, unit)) => {
            let per = match unit.trim().chars().next() {
                Some('s') => 1.0,
                Some('m') => 60.0,
                Some('h') => 3600.0,
                _ => return Err(format!("unknown unit in rate limit {text:?}; use /s, /m or /h")),
            };
            (c.trim(), per)
        }
        None => (text, 1.0),
    };
    let count: f64 = count.parse().map_err(|_| format!("rate limit {text:?} is not a number per /s, /m or /h"))?;
    let (min, max) = RATE_LIMIT_COUNT;
    if !(count == 0.0 || (count.is_finite() && (min..=max).contains(&count))) {
        return Err(format!("rate limit {text:?}: the count must be 0 (no limit) or from {min} to {max:e}"));
    }
    Ok((count > 0.0).then_some(count / per))
}

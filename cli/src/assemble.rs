//! From settings to parts: the broker, result backend, producer and worker
//! configurations that `celeriac worker` (and later `celeriac beat`) run
//! with. Only here do Celery's setting names meet the crates' option types.

use std::time::Duration;

use celeriac_backend::{BackendOptions, Endpoint, RedisBackend, RetryPolicy};
use celeriac_broker::{Broker, FanoutPrefix, ProducerConfig, RedisOptions, TlsOptions};
use celeriac_config::{SentinelKwargs, Settings, TlsSettings};
use celeriac_protocol::codec::{Compression, ContentType};
use celeriac_protocol::envelope::BodyEncoding;
use celeriac_redisconn::Dialect;
use celeriac_worker::WorkerConfig;

use crate::error::CliError;

/// Seconds as a duration. Settings are range-checked before they get here
/// (`Settings::validate`); a value set in code past `Duration`'s range
/// saturates instead of panicking.
fn secs(value: f64) -> Duration {
    Duration::try_from_secs_f64(value.max(0.0)).unwrap_or(Duration::MAX)
}

/// The broker for `settings.broker_url`, with `broker_transport_options`
/// and `broker_use_ssl` applied (options in the URL win, as in kombu).
pub fn broker(settings: &Settings) -> Result<Broker, CliError> {
    let url = &settings.broker_url;
    if url.starts_with("memory://") {
        return Ok(Broker::from_url(url)?);
    }
    if celeriac_broker::amqp::is_amqp_url(url) {
        return amqp_broker(settings);
    }
    let t = &settings.broker_transport_options;
    let mut o = RedisOptions {
        visibility_timeout: secs(t.visibility_timeout),
        global_keyprefix: t.global_keyprefix.clone(),
        priority_steps: t.priority_steps.clone(),
        sep: t.sep.clone(),
        queue_order_strategy: t.queue_order_strategy.parse()?,
        fanout_prefix: if t.fanout_prefix { FanoutPrefix::Db } else { FanoutPrefix::Disabled },
        fanout_patterns: t.fanout_patterns,
        unacked_restore_limit: t.unacked_restore_limit.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        socket_timeout: t.socket_timeout.map(secs),
        socket_connect_timeout: t.socket_connect_timeout.map(secs),
        health_check_interval: secs(t.health_check_interval),
        client_name: t.client_name.clone(),
        // An element that is not even a kombu envelope is moved there as it is,
        // atomically, rather than lost.
        deadletter_queue: Some(settings.worker_dead_letter_queue.clone()),
        max_message_size: settings.worker_max_message_size,
        body_encoding: match t.body_encoding.as_str() {
            "base64" => BodyEncoding::Base64,
            other => BodyEncoding::Text(other.to_owned()),
        },
        ..RedisOptions::default()
    };
    if let Some(p) = t.polling_interval {
        o.brpop_timeout = secs(p);
    }
    o.apply_url(url)?;
    if let (Some(master), celeriac_broker::RedisEndpoint::Sentinel { master_name, .. }) =
        (&t.master_name, &mut o.endpoint)
    {
        if master_name.is_none() {
            *master_name = Some(master.clone());
        }
    }
    o.sentinel_password = sentinel_password(t.sentinel_kwargs.as_ref()).map(celeriac_broker::Secret::new);
    // With sentinel:// this is TLS to the Sentinels and to the master alike;
    // a unix socket with TLS settings is refused by the broker.
    if let Some(ssl) = &settings.broker_use_ssl {
        let tls = o.tls.get_or_insert_with(TlsOptions::default);
        apply_tls(tls, ssl, Dialect::Kombu)?;
    }
    Ok(Broker::Redis(celeriac_broker::RedisBroker::new(o)?))
}

/// The RabbitMQ broker for an `amqp://`/`amqps://` `broker_url`: the
/// topology settings (`task_queues`, `task_default_*`, quorum queues), the
/// connection settings and `broker_use_ssl` (CA, client certificate, `cert_reqs`).
fn amqp_broker(settings: &Settings) -> Result<Broker, CliError> {
    use celeriac_broker::amqp::{AmqpOptions, QueueSpec};
    let mut o = AmqpOptions::from_url(&settings.broker_url)?;
    o.heartbeat = settings.broker_heartbeat.map_or(0, |h| h.clamp(0.0, f64::from(u16::MAX)) as u16);
    o.connect_timeout = secs(settings.broker_connection_timeout);
    o.max_retries = settings.broker_connection_max_retries;
    o.confirm_publish = settings.broker_transport_options.confirm_publish;
    o.default_queue_type = settings.task_default_queue_type.parse()?;
    o.default_exchange_type = settings.task_default_exchange_type.parse()?;
    o.default_max_priority = settings.task_queue_max_priority;
    o.detect_quorum_queues = settings.worker_detect_quorum_queues;
    o.event_exchange = settings.event_exchange.clone();
    o.control_exchange = settings.control_exchange.clone();
    o.event_queue_ttl = settings.event_queue_ttl.map(secs);
    o.event_queue_expires = settings.event_queue_expires.map(secs);
    for (name, q) in &settings.task_queues {
        let mut arguments = Vec::new();
        for (key, value) in q.queue_arguments.iter().flatten() {
            let value = celeriac_protocol::serde_value::to_value(value)
                .map_err(|e| CliError::Setting(format!("task_queues.{name}.queue_arguments.{key}: {e}")))?;
            arguments.push((key.clone(), value));
        }
        if let Some(max) = q.max_priority {
            arguments.push(("x-max-priority".into(), celeriac_protocol::Value::Int(i64::from(max))));
        }
        let exchange_type = q.exchange_type.as_deref().map(str::parse).transpose()?;
        let spec =
            QueueSpec { exchange: q.exchange.clone(), exchange_type, routing_key: q.routing_key.clone(), arguments };
        o.queues.insert(name.clone(), spec);
    }
    if let Some(ssl) = &settings.broker_use_ssl {
        // `cert_reqs` left at its default does not undo an `ssl_cert_reqs` of the URL.
        let cert_reqs = Some(&ssl.ssl_cert_reqs).filter(|r| !r.eq_ignore_ascii_case("required"));
        let pairs = [
            ("cert_reqs", cert_reqs),
            ("ca_certs", ssl.ssl_ca_certs.as_ref()),
            ("certfile", ssl.ssl_certfile.as_ref()),
            ("keyfile", ssl.ssl_keyfile.as_ref()),
        ];
        for (key, value) in pairs {
            if let Some(value) = value {
                o.tls.set(key, value).map_err(|e| CliError::Setting(format!("broker_use_ssl.{key}: {e}")))?;
            }
        }
    }
    Ok(Broker::new(celeriac_broker::AmqpBroker::new(o)?))
}

/// `sentinel_kwargs["password"]`, the Sentinel nodes' own.
fn sentinel_password(kwargs: Option<&SentinelKwargs>) -> Option<String> {
    kwargs.and_then(|k| k.password.clone()).filter(|p| !p.is_empty())
}

fn apply_tls(tls: &mut TlsOptions, ssl: &TlsSettings, dialect: Dialect) -> Result<(), CliError> {
    let pairs = [
        ("ssl_cert_reqs", Some(&ssl.ssl_cert_reqs)),
        ("ssl_ca_certs", ssl.ssl_ca_certs.as_ref()),
        ("ssl_certfile", ssl.ssl_certfile.as_ref()),
        ("ssl_keyfile", ssl.ssl_keyfile.as_ref()),
    ];
    for (key, value) in pairs {
        if let Some(value) = value {
            tls.set(key, value, dialect).map_err(|e| CliError::Setting(format!("TLS setting {key}: {e}")))?;
        }
    }
    Ok(())
}

/// The result backend options for `settings.result_backend`, or `None` when
/// results are disabled (no backend configured, as Celery's DisabledBackend).
pub fn backend_options(settings: &Settings) -> Result<Option<BackendOptions>, CliError> {
    let Some(url) = settings.result_backend.as_deref().filter(|u| !u.is_empty()) else { return Ok(None) };
    let mut o = BackendOptions::from_url(url)?;
    o.result_expires = settings.result_expires.map(Duration::from_secs);
    o.result_extended = settings.result_extended;
    o.set_serializer(&settings.result_serializer)?;
    o.set_compression(settings.result_compression.as_deref().unwrap_or(""))?;
    let t = &settings.result_backend_transport_options;
    if !t.global_keyprefix.is_empty() {
        o.transport.global_keyprefix = t.global_keyprefix.clone();
    }
    if let Some(ordered) = t.result_chord_ordered {
        o.transport.result_chord_ordered = ordered;
    }
    if t.master_name.is_some() {
        o.transport.master_name = t.master_name.clone();
    }
    if let Some(password) = sentinel_password(t.sentinel_kwargs.as_ref()) {
        o.transport.sentinel_password = Some(password);
    }
    if let Some(p) = &t.retry_policy {
        o.transport.retry_policy = RetryPolicy {
            max_retries: Some(p.max_retries),
            interval_start: secs(p.interval_start),
            interval_step: secs(p.interval_step),
            interval_max: secs(p.interval_max),
        };
    }
    if let Some(ssl) = &settings.redis_backend_use_ssl {
        // As Celery: the setting turns TLS on for a redis:// URL too; with
        // sentinel:// it is TLS to the Sentinels and to the master alike.
        if let Endpoint::Tcp { host, port } = &o.endpoint {
            o.endpoint = Endpoint::Tls { host: host.clone(), port: *port, tls: TlsOptions::default() };
        }
        match &mut o.endpoint {
            Endpoint::Tls { tls, .. } => apply_tls(tls, ssl, Dialect::Celery)?,
            Endpoint::Sentinel { tls, .. } => {
                apply_tls(tls.get_or_insert_with(TlsOptions::default), ssl, Dialect::Celery)?
            }
            Endpoint::Unix { .. } | Endpoint::Tcp { .. } => {
                return Err(CliError::Setting(
                    "redis_backend_use_ssl cannot apply to a unix socket result backend; use rediss:// or drop it"
                        .into(),
                ))
            }
        }
    }
    Ok(Some(o))
}

/// Connects the result backend, if one is configured.
pub async fn backend(settings: &Settings) -> Result<Option<RedisBackend>, CliError> {
    if settings.result_backend.as_deref().is_some_and(celeriac_backend::is_rpc_url) {
        return Ok(None);
    }
    match backend_options(settings)? {
        Some(options) => Ok(Some(RedisBackend::connect(options).await?)),
        None => Ok(None),
    }
}

/// The `rpc://` result backend over `broker` (which must be RabbitMQ), when
/// `result_backend` names it.
pub fn rpc_backend(settings: &Settings, broker: &Broker) -> Result<Option<celeriac_backend::RpcBackend>, CliError> {
    let Some(url) = settings.result_backend.as_deref().filter(|u| celeriac_backend::is_rpc_url(u)) else {
        return Ok(None);
    };
    let Some(amqp) = broker.as_amqp() else {
        return Err(CliError::Setting(format!("result_backend {url:?} needs an amqp:// broker_url")));
    };
    let mut o = BackendOptions::from_url("redis://localhost")?;
    o.set_serializer(&settings.result_serializer)?;
    o.set_compression(settings.result_compression.as_deref().unwrap_or(""))?;
    let codec = celeriac_backend::PayloadCodec { serializer: o.result_serializer, compression: o.result_compression };
    Ok(Some(celeriac_backend::RpcBackend::new(amqp.clone(), codec, settings.result_extended)))
}

/// The producer's settings: serializer, compression, time zone, default queue.
pub fn producer_config(settings: &Settings, origin: &str) -> Result<ProducerConfig, CliError> {
    let mut config = ProducerConfig { default_queue: settings.task_default_queue.clone(), ..Default::default() };
    config.serializer =
        ContentType::parse(&settings.task_serializer).filter(|ct| !matches!(ct, ContentType::Pickle)).ok_or_else(
            || CliError::Setting(format!("task_serializer {:?}: use json, msgpack or yaml", settings.task_serializer)),
        )?;
    config.compression = match settings.task_compression.as_deref() {
        None | Some("") => None,
        Some(name) => Some(Compression::parse(name).ok_or_else(|| {
            CliError::Setting(format!("task_compression {name:?}: use gzip, bzip2, lzma, zstd or brotli"))
        })?),
    };
    if let Some(zone) = settings.timezone.as_deref().filter(|_| !settings.enable_utc) {
        config.timezone =
            jiff::tz::TimeZone::get(zone).map_err(|e| CliError::Setting(format!("timezone {zone:?}: {e}")))?;
    }
    config.origin = origin.to_owned();
    Ok(config)
}

/// The settings as `inspect conf` and `report` show them: Celery's names,
/// secrets censored by Celery's rule (`Settings::censored`: hidden names as
/// `********`, `broker_url` as kombu shows it, every URL password masked),
/// plus the logging keys Celery always reports.
pub fn conf_report(settings: &Settings) -> celeriac_protocol::Map {
    let censored = serde_json::Value::Object(settings.censored()).to_string();
    let mut conf =
        celeriac_protocol::json::from_str(&censored).ok().and_then(|v| v.as_map().cloned()).unwrap_or_default();
    for (key, value) in [
        ("worker_hijack_root_logger", celeriac_protocol::Value::Bool(false)),
        ("worker_log_color", celeriac_protocol::Value::Bool(false)),
        ("deprecated_settings", celeriac_protocol::Value::List(Vec::new())),
        ("include", celeriac_protocol::Value::List(Vec::new())),
    ] {
        conf.entry(key.to_owned()).or_insert(value);
    }
    conf
}

/// The worker's settings, from Celery's names.
pub fn worker_config(settings: &Settings) -> WorkerConfig {
    let defaults = WorkerConfig::default();
    WorkerConfig {
        queues: vec![settings.task_default_queue.clone()],
        concurrency: settings.worker_concurrency.unwrap_or(defaults.concurrency),
        prefetch_multiplier: settings.worker_prefetch_multiplier,
        acks_late: settings.task_acks_late,
        acks_on_failure_or_timeout: settings.task_acks_on_failure_or_timeout,
        track_started: settings.task_track_started,
        ignore_result: settings.task_ignore_result,
        result_extended: settings.result_extended,
        unknown_task: settings.worker_unknown_task,
        accept_content: settings.accept_content.clone(),
        max_message_size: settings.worker_max_message_size,
        dead_letter_queue: settings.worker_dead_letter_queue.clone(),
        shutdown_timeout: if settings.worker_soft_shutdown_timeout > 0.0 {
            secs(settings.worker_soft_shutdown_timeout)
        } else {
            Duration::MAX
        },
        time_limit: settings.task_time_limit.map(secs),
        soft_time_limit: settings.task_soft_time_limit.map(secs),
        reject_on_worker_lost: settings.task_reject_on_worker_lost,
        default_rate_limit: settings.task_default_rate_limit.clone(),
        disable_rate_limits: settings.worker_disable_rate_limits,
        max_scheduled_tasks: settings.worker_max_scheduled_tasks,
        send_task_events: settings.worker_send_task_events,
        heartbeat_interval: settings.worker_heartbeat_interval,
        statedb: settings.worker_state_db.as_ref().map(std::path::PathBuf::from),
        conf: conf_report(settings),
        // The ETA refresh keeps held messages well inside the visibility timeout.
        eta_refresh: secs(settings.broker_transport_options.visibility_timeout / 4.0).max(Duration::from_secs(1)),
        ..defaults
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml: &str) -> Settings {
        celeriac_config::load_from_str(toml, "", Vec::new()).unwrap().settings
    }

    #[test]
    fn broker_use_ssl_on_amqps_takes_py_amqps_names() {
        // cert_reqs = CERT_NONE: no CA needed (a warning at startup).
        let s = settings("broker_url = \"amqps://localhost\"\n[broker_use_ssl]\ncert_reqs = \"CERT_NONE\"\n");
        assert!(broker(&s).is_ok());
        // The files are read at startup: a missing one is named.
        let s = settings(
            "broker_url = \"amqps://localhost\"\n[broker_use_ssl]\nca_certs = \"/nonexistent/ca.pem\"\n\
             certfile = \"/nonexistent/client.pem\"\nkeyfile = \"/nonexistent/client.key\"\n",
        );
        let err = broker(&s).map(drop).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/"), "{err}");
        let s = settings("broker_url = \"amqps://localhost\"\n[broker_use_ssl]\ncert_reqs = \"sometimes\"\n");
        let err = broker(&s).map(drop).unwrap_err().to_string();
        assert!(err.contains("broker_use_ssl.cert_reqs") && err.contains("CERT_NONE"), "{err}");
    }

    #[test]
    fn sentinel_with_tls_settings_is_tls_for_the_broker_and_the_backend() {
        let s = settings(
            "broker_url = \"sentinel://:s3cret@127.0.0.1:26379/0\"\n\
             result_backend = \"sentinel://:s3cret@127.0.0.1:26379/1\"\n\
             [broker_transport_options]\nmaster_name = \"m\"\n\
             [broker_transport_options.sentinel_kwargs]\npassword = \"s3cret\"\n\
             [broker_use_ssl]\nssl_cert_reqs = \"required\"\n\
             [redis_backend_use_ssl]\nssl_cert_reqs = \"CERT_NONE\"\n\
             [result_backend_transport_options]\nmaster_name = \"m\"\n\
             [result_backend_transport_options.sentinel_kwargs]\npassword = \"s3cret\"\n\
             [result_backend_transport_options.retry_policy]\nmax_retries = 3\ninterval_step = 0.5\n",
        );
        let broker = broker(&s).unwrap();
        assert_eq!(broker.masked_url(), "sentinel://:**@127.0.0.1:26379/0?ssl_cert_reqs=required");
        let o = backend_options(&s).unwrap().unwrap();
        let Endpoint::Sentinel { tls: Some(tls), .. } = &o.endpoint else { panic!("{o:?}") };
        assert_eq!(tls.cert_reqs, celeriac_backend::CertReqs::None);
        assert_eq!(o.transport.sentinel_password.as_deref(), Some("s3cret"));
        assert_eq!(o.transport.retry_policy.max_retries, Some(3));
        assert_eq!(o.transport.retry_policy.interval(2), Duration::from_secs(1));
        assert_eq!(o.transport.retry_policy.interval(1), Duration::from_millis(500));
        let conf = format!("{:?}", conf_report(&s));
        assert!(!conf.contains("s3cret"), "{conf}");
    }

    #[test]
    fn tls_settings_on_a_unix_socket_are_refused() {
        let s = settings("result_backend = \"redis+socket:///tmp/r.sock\"\n[redis_backend_use_ssl]\n");
        assert!(backend_options(&s).unwrap_err().to_string().contains("unix socket"));
        let s = settings("broker_url = \"redis+socket:///tmp/r.sock\"\n[broker_use_ssl]\n");
        assert!(broker(&s).unwrap_err().to_string().contains("unix socket"));
    }
}

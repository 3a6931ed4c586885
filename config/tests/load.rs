//! Loading settings: Celery's names and defaults, the environment on top, and
//! errors that name the bad setting.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed assertion

use celeriac_config::{load_from_str, ConfigError, ScheduleSetting, Settings, UnknownTaskPolicy};

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn defaults_are_celerys() {
    let s = load_from_str("", "", no_env()).unwrap().settings;
    assert_eq!(s, Settings::default());
    assert_eq!(s.task_default_queue, "celery");
    assert_eq!(s.result_expires, Some(86_400));
    assert_eq!(s.worker_prefetch_multiplier, 4);
    assert!(s.task_acks_on_failure_or_timeout);
    assert!(!s.task_acks_late);
    assert_eq!(s.broker_transport_options.visibility_timeout, 3600.0);
    assert_eq!(s.broker_transport_options.priority_steps, vec![0, 3, 6, 9]);
    assert_eq!(s.worker_unknown_task, UnknownTaskPolicy::Reject);
}

#[test]
fn the_example_worker_file_loads() {
    let text = include_str!("../examples/worker.toml");
    let s = load_from_str(text, " in worker.toml", no_env()).unwrap().settings;
    assert!(s.task_queues.contains_key("workflow.staging"));
    assert!(s.result_extended);
}

#[test]
fn an_unknown_setting_is_named_in_the_error() {
    let err = load_from_str("broker_urll = \"redis://x\"\n", " in w.toml", no_env()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ConfigError::Invalid { .. }), "{err:?}");
    assert!(text.contains("broker_urll") && text.contains("w.toml"), "{text}");

    let err = load_from_str("[broker_transport_options]\nvisibilty_timeout = 5\n", "", no_env()).unwrap_err();
    assert!(err.to_string().contains("visibilty_timeout"), "{err}");
}

#[test]
fn a_wrongly_typed_setting_is_named_in_the_error() {
    let err = load_from_str("worker_concurrency = \"many\"\n", "", no_env()).unwrap_err();
    assert!(err.to_string().contains("worker_concurrency"), "{err}");
}

#[test]
fn invalid_values_are_refused_with_a_reason() {
    for (text, setting) in [
        ("task_serializer = \"pickle\"\n", "task_serializer"),
        ("accept_content = [\"json\", \"pickle\"]\n", "accept_content"),
        ("worker_concurrency = 0\n", "worker_concurrency"),
        ("task_default_rate_limit = \"10/fortnight\"\n", "task_default_rate_limit"),
        ("broker_url = \"localhost\"\n", "broker_url"),
        ("[broker_transport_options]\nvisibility_timeout = 0\n", "visibility_timeout"),
    ] {
        let err = load_from_str(text, "", no_env()).unwrap_err();
        assert!(matches!(err, ConfigError::Value { .. }), "{text}: {err:?}");
        assert!(err.to_string().contains(setting), "{text}: {err}");
    }
}

#[test]
fn the_environment_overrides_the_file() {
    let text = "broker_url = \"redis://file/0\"\nworker_concurrency = 2\n";
    let loaded = load_from_str(
        text,
        "",
        env(&[
            ("CELERY_BROKER_URL", "redis://env:6379/1"),
            ("CELERIAC_WORKER_CONCURRENCY", "8"),
            ("CELERIAC_TASK_ACKS_LATE", "true"),
            ("CELERIAC_ACCEPT_CONTENT", "json, msgpack"),
            ("CELERIAC_PYTHON", "/not/a/setting"),
            ("PATH", "/bin"),
        ]),
    )
    .unwrap();
    let s = loaded.settings;
    assert_eq!(s.broker_url, "redis://env:6379/1");
    assert_eq!(s.worker_concurrency, Some(8));
    assert!(s.task_acks_late);
    assert_eq!(s.accept_content, vec!["json", "msgpack"]);
    assert_eq!(loaded.from_env.len(), 4, "{:?}", loaded.from_env);
}

#[test]
fn a_bad_environment_value_names_the_variable() {
    let err = load_from_str("", "", env(&[("CELERIAC_WORKER_CONCURRENCY", "lots")])).unwrap_err();
    assert!(err.to_string().contains("CELERIAC_WORKER_CONCURRENCY"), "{err}");
}

#[test]
fn routes_match_by_name_then_glob_in_order() {
    let text = r#"
task_default_queue = "celery"
[task_queues."workflow.hpc"]
routing_key = "hpc.#"
exchange = "workflow"
[task_routes]
"transfer.copy" = "transfer.fast"
"transfer.*" = { queue = "transfer.bulk", priority = 3 }
"workflow.*" = { queue = "workflow.hpc" }
"#;
    let s = load_from_str(text, "", no_env()).unwrap().settings;
    let r = s.route_for("transfer.copy");
    assert_eq!(r.queue.as_deref(), Some("transfer.fast"));
    assert_eq!(r.routing_key.as_deref(), Some("transfer.fast"));
    let r = s.route_for("transfer.move");
    assert_eq!((r.queue.as_deref(), r.priority), (Some("transfer.bulk"), Some(3)));
    let r = s.route_for("workflow.run");
    assert_eq!(r.exchange.as_deref(), Some("workflow"));
    assert_eq!(r.routing_key.as_deref(), Some("hpc.#"));
    let r = s.route_for("tasks.add");
    assert_eq!(
        (r.queue.as_deref(), r.exchange.as_deref(), r.routing_key.as_deref()),
        (Some("celery"), Some("celery"), Some("celery"))
    );
}

#[test]
fn beat_entries_take_seconds_or_text() {
    let text = r#"
[beat_schedule.trigger-manager]
task = "managers.trigger.poll"
schedule = 30
options = { queue = "workflow.staging", expires = 25 }
no_overlap = true
[beat_schedule.nightly]
task = "reports.nightly"
schedule = "0 3 * * *"
timezone = "Europe/Berlin"
"#;
    let s = load_from_str(text, "", no_env()).unwrap().settings;
    let t = &s.beat_schedule["trigger-manager"];
    assert_eq!(t.schedule, ScheduleSetting::Seconds(30.0));
    assert!(t.no_overlap && t.enabled);
    assert_eq!(s.beat_schedule["nightly"].schedule, ScheduleSetting::Text("0 3 * * *".into()));
    let err = load_from_str("[beat_schedule.x]\ntask = \"t\"\nschedule = 5\nevery = 3\n", "", no_env()).unwrap_err();
    assert!(err.to_string().contains("every"), "{err}");
}

#[test]
fn rate_limits_parse_as_celery_spells_them() {
    use celeriac_config::parse_rate_limit;
    assert_eq!(parse_rate_limit("10/s"), Ok(Some(10.0)));
    assert_eq!(parse_rate_limit("120/m"), Ok(Some(2.0)));
    assert_eq!(parse_rate_limit("3600/h"), Ok(Some(1.0)));
    assert_eq!(parse_rate_limit("5"), Ok(Some(5.0)));
    assert_eq!(parse_rate_limit("0"), Ok(None));
    assert!(parse_rate_limit("x/s").is_err());
}

#[test]
fn beat_safety_options_are_typed_and_checked() {
    use celeriac_config::CatchUpPolicy;
    let text = r#"
[beat_schedule.poll]
task = "managers.poll"
schedule = "10s"
catch_up = "all"
max_catch_up = 5
starting_deadline = 30
"#;
    let s = load_from_str(text, "", no_env()).unwrap().settings;
    let e = &s.beat_schedule["poll"];
    assert_eq!((e.catch_up, e.max_catch_up, e.starting_deadline), (Some(CatchUpPolicy::All), Some(5), Some(30.0)));
    let err = load_from_str("[beat_schedule.x]\ntask = \"t\"\nschedule = 5\ncatch_up = \"twice\"\n", "", no_env())
        .unwrap_err()
        .to_string();
    assert!(err.contains("twice") && err.contains("once") && err.contains("skip"), "{err}");
    let err = load_from_str("[beat_schedule.x]\ntask = \"t\"\nschedule = 5\nmax_catch_up = 0\n", "", no_env())
        .unwrap_err()
        .to_string();
    assert!(err.contains("beat_schedule.x.max_catch_up"), "{err}");
    let err = load_from_str("beat_max_loop_interval = 0\n", "", no_env()).unwrap_err().to_string();
    assert!(err.contains("beat_max_loop_interval"), "{err}");
}

#[test]
fn redbeat_keys_follow_redbeats_rules() {
    let s = Settings::default();
    assert_eq!((s.redbeat_key_prefix.as_str(), s.redbeat_lock_key().as_str()), ("redbeat:", "redbeat::lock"));
    let s = load_from_str("redbeat_key_prefix = \"dc:\"\n", "", no_env()).unwrap().settings;
    assert_eq!(s.redbeat_lock_key(), "dc::lock");
    let s = load_from_str("redbeat_key_prefix = \"dc:\"\nredbeat_lock_key = \"beat-lock\"\n", "", no_env())
        .unwrap()
        .settings;
    assert_eq!(s.redbeat_lock_key(), "dc:beat-lock");
    let env = vec![("CELERIAC_REDBEAT_REDIS_URL".to_string(), "redis://h:6379/2".to_string())];
    let s = load_from_str("", "", env).unwrap().settings;
    assert_eq!(s.redbeat_redis_url.as_deref(), Some("redis://h:6379/2"));
}

//! Secrets in `inspect conf`: the same settings put into a Python Celery 5.7
//! app and through celeriac's `filter_hidden_settings` must come out the
//! same, for every secret-looking name and every broker URL spelling.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed assertion

use std::io::Write;
use std::process::{Command, Stdio};

use celeriac_config::{filter_hidden_settings, load_from_str};
use serde_json::{json, Map, Value};

/// `app.conf.table(with_defaults=False, censored=True)` of a Celery app given
/// `conf`, only the keys of `conf`.
fn celery_censored(python: &std::path::Path, conf: &Value) -> Map<String, Value> {
    let script = "import json, sys\n\
        from celery import Celery\n\
        conf = json.load(sys.stdin)\n\
        app = Celery(set_as_current=False)\n\
        app.conf.update(conf)\n\
        table = app.conf.table(with_defaults=False, censored=True)\n\
        print(json.dumps({k: v for k, v in table.items() if k in conf}))\n";
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn secret_looking_names_are_censored_as_celery_censors_them() {
    let Some(python) = celeriac_tests::python_peer() else { return };
    let conf = json!({
        "broker_url": "redis://:s3cret@localhost:6379/0",
        "result_backend": "redis://u:s3cret@h:1/2?ssl_cert_reqs=none",
        "broker_transport_options": {
            "sentinel_kwargs": {"password": "s3cret"},
            "global_keyprefix": "pfx",
            "master_name": "mymaster",
            "visibility_timeout": 5
        },
        "result_backend_transport_options": {"sentinel_kwargs": {"password": "s3cret"}, "master_name": "m"},
        "broker_use_ssl": {
            "ssl_keyfile": "/k.pem", "ssl_certfile": "/c.pem", "ssl_ca_certs": "/ca.pem", "ssl_cert_reqs": "required"
        },
        "redis_backend_use_ssl": {"ssl_keyfile": "/k.pem", "ssl_cert_reqs": "none"},
        "task_default_routing_key": "rk",
        "redbeat_key_prefix": "redbeat:",
        "redbeat_lock_key": null,
        "task_queues": {"q": {"routing_key": "q.rk", "exchange": "q"}},
        "api_token": "t0ken",
        "secret_key": "k3y",
        "database_url": "postgres://a:s3cret@h/d",
        "request_signature": "sig",
        "beat_dburi": "sqlite:///s3cret.db",
        "profanities_list": ["x"],
        "password": 5,
        "worker_concurrency": 3,
        "task_default_queue": "celery",
        "result_backend_always_retry": true
    });
    let ours = filter_hidden_settings(conf.as_object().unwrap());
    let theirs = celery_censored(&python, &conf);
    for key in conf.as_object().unwrap().keys() {
        assert_eq!(ours.get(key), theirs.get(key), "{key}: celeriac vs Celery");
    }
    assert!(!Value::Object(ours).to_string().contains("s3cret"));
}

#[test]
fn broker_and_backend_urls_are_shown_as_celery_shows_them() {
    let Some(python) = celeriac_tests::python_peer() else { return };
    let urls = [
        "redis://h",
        "redis://:s3cret@localhost:6379/0",
        "redis://user:s3cret@h:7000/3",
        "redis://user@h/3",
        "rediss://:s3cret@h:6380/1?ssl_cert_reqs=required",
        "redis://:p%40ss@h/0",
        "sentinel://:s3cret@a:26379/1;sentinel://:s3cret@b:26380/1",
        "sentinel://a:1;sentinel://b:2",
        "redis+socket:///tmp/redis.sock?virtual_host=3",
        "redis://[::1]:6379/0",
    ];
    for url in urls {
        let conf = json!({"broker_url": url, "result_backend": url});
        let ours = filter_hidden_settings(conf.as_object().unwrap());
        let theirs = celery_censored(&python, &conf);
        assert_eq!(Value::Object(ours.clone()), Value::Object(theirs), "{url}");
        assert!(!Value::Object(ours).to_string().contains("s3cret"), "{url}");
    }
}

/// Where celeriac hides more than Celery: a `url` setting's password, and
/// query values with hidden names.
#[test]
fn celeriac_also_hides_what_celery_would_show() {
    let conf = json!({
        "redbeat_redis_url": "redis://:s3cret@h/0",
        "result_backend": "redis://h/0?password=s3cret",
        "beat_schedule": {"e": {"kwargs": {"target": "redis://:s3cret@h/0"}}}
    });
    let ours = Value::Object(filter_hidden_settings(conf.as_object().unwrap()));
    assert_eq!(ours["redbeat_redis_url"], json!("redis://:********@h/0"));
    assert_eq!(ours["result_backend"], json!("redis://h/0?password=********"));
    assert!(!ours.to_string().contains("s3cret"), "{ours}");
}

/// The typed settings: `censored()` and `{:?}` show no password.
#[test]
fn loaded_settings_print_censored() {
    let text = "broker_url = \"sentinel://:s3cret@a:26379;sentinel://:s3cret@b:26379\"\n\
                result_backend = \"redis://:s3cret@h/0\"\n\
                redbeat_redis_url = \"redis://:s3cret@h/1\"\n\
                [broker_transport_options]\nmaster_name = \"m\"\n\
                [broker_transport_options.sentinel_kwargs]\npassword = \"s3cret\"\n\
                [result_backend_transport_options.sentinel_kwargs]\npassword = \"s3cret\"\n";
    let settings = load_from_str(text, "", Vec::new()).unwrap().settings;
    assert_eq!(
        settings.broker_transport_options.sentinel_kwargs.as_ref().and_then(|k| k.password.as_deref()),
        Some("s3cret")
    );
    let censored = Value::Object(settings.censored());
    assert!(!censored.to_string().contains("s3cret"), "{censored}");
    assert_eq!(censored["broker_url"], json!("sentinel://:********@a:26379//"));
    assert!(!format!("{settings:?}").contains("s3cret"));
    // An error quoting a URL masks it.
    let err = load_from_str("broker_url = \"user:s3cret@host\"\n", "", Vec::new()).unwrap_err().to_string();
    assert!(err.contains("broker_url") && !err.contains("s3cret"), "{err}");
    let err = load_from_str("broker_transport_options = \"redis://:s3cret@h\"\n", "", Vec::new()).unwrap_err();
    assert!(!err.to_string().contains("s3cret"), "{err}");
}

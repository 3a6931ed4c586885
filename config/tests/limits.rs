//! Every numeric setting against the values that must not get through (NaN,
//! infinities, 1e300, -1, 0 where meaningless, past the maximum, the wrong
//! type), from the file, from the environment and in code: each is refused
//! with an error naming the setting and its accepted range, and the bounds
//! themselves are accepted.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed assertion

use celeriac_config::{load_from_str, ConfigError, Settings, NUMERIC_SETTINGS};
use celeriac_redisconn::limits::{short, Unit};

/// A TOML document setting `path` (with `*` an entry named `e`, `[]` a
/// one-item list) to `value`, written as TOML, plus what the entry needs.
fn toml_for(path: &str, value: &str) -> (String, String) {
    let concrete = path.replace('*', "e").replace("[]", "[0]");
    let path = path.replace("[]", "");
    let (table, key) = path.rsplit_once('.').map_or(("", path.as_str()), |(t, k)| (t, k));
    let value = if concrete.ends_with("[0]") { format!("[{value}]") } else { value.to_owned() };
    let table = table.replace('*', "e");
    let mut text = String::new();
    if let Some(options) = table.strip_suffix(".options") {
        text.push_str(&format!("[{options}]\ntask = \"t\"\nschedule = 10\n"));
    }
    if table.starts_with("beat_schedule.") && !table.ends_with(".options") {
        text.push_str(&format!("[{table}]\ntask = \"t\"\n"));
        if key != "schedule" {
            text.push_str("schedule = 10\n");
        }
        text.push_str(&format!("{key} = {value}\n"));
        return (text, concrete);
    }
    if table.is_empty() {
        text.push_str(&format!("{key} = {value}\n"));
    } else {
        text.push_str(&format!("[{table}]\n{key} = {value}\n"));
    }
    (text, concrete)
}

/// The values outside a setting's range, as TOML.
fn bad_values(n: &celeriac_config::Numeric) -> Vec<String> {
    let mut bad: Vec<String> =
        ["nan", "inf", "-inf", "1e300", "-1", "-1e300", "\"many\"", "true", "9223372036854775807"]
            .map(String::from)
            .to_vec();
    if n.limit.min > 0.0 {
        bad.push("0".into());
        bad.push(format!("{:?}", n.limit.min / 2.0));
    }
    match n.limit.unit {
        Unit::Seconds => bad.push(format!("{:?}", n.limit.max * 2.0)),
        Unit::Whole | Unit::Bytes => {
            bad.push(format!("{}", n.limit.max as u64 + 1));
            bad.push(format!("{:?}", n.limit.min + 0.5));
        }
    }
    bad
}

fn bound(value: f64, unit: Unit) -> String {
    match unit {
        Unit::Seconds => format!("{value:?}"),
        Unit::Whole | Unit::Bytes => format!("{}", value as u64),
    }
}

#[test]
fn every_numeric_setting_refuses_extremes_from_the_file() {
    for n in NUMERIC_SETTINGS {
        for value in bad_values(n) {
            if n.text_ok && value.starts_with('"') {
                continue; // text is a crontab or an ISO time there
            }
            let (text, concrete) = toml_for(n.path, &value);
            let err = load_from_str(&text, " in w.toml", Vec::new()).map(drop).unwrap_err();
            let message = err.to_string();
            assert!(matches!(err, ConfigError::Value { .. }), "{}: {value}: {err:?}", n.path);
            assert!(message.contains(&format!("`{concrete}`")), "{}: {value}: {message}", n.path);
            assert!(message.contains(&n.limit.to_string()), "{}: {value}: {message}", n.path);
            assert!(message.contains("w.toml"), "{}: {value}: {message}", n.path);
        }
        for value in [n.limit.min, n.limit.max] {
            let (text, _) = toml_for(n.path, &bound(value, n.limit.unit));
            if let Err(e) = load_from_str(&text, "", Vec::new()) {
                panic!("{}: the bound {} is refused: {e}\n{text}", n.path, short(value));
            }
        }
    }
}

#[test]
fn every_top_level_numeric_setting_refuses_extremes_from_the_environment() {
    let top_level = NUMERIC_SETTINGS.iter().filter(|n| !n.path.contains(['.', '[']));
    let mut checked = 0;
    for n in top_level {
        let var = format!("CELERIAC_{}", n.path.to_ascii_uppercase());
        let mut bad = vec!["inf", "-inf", "nan", "NaN", "1e300", "-1", "many", "99999999999999999999999"];
        let below = format!("{}", n.limit.min / 2.0);
        if n.limit.min > 0.0 {
            bad.extend(["0", below.as_str()]);
        }
        for value in bad {
            let err = load_from_str("", "", vec![(var.clone(), value.to_owned())]).map(drop).unwrap_err();
            let message = err.to_string();
            assert!(matches!(err, ConfigError::Value { .. }), "{var}={value}: {err:?}");
            assert!(message.contains(&format!("`{}`", n.path)), "{var}={value}: {message}");
            assert!(message.contains(&n.limit.to_string()), "{var}={value}: {message}");
            assert!(message.contains(&format!("(from {var})")), "{var}={value}: {message}");
        }
        let max = bound(n.limit.max, n.limit.unit);
        load_from_str("", "", vec![(var.clone(), max.clone())]).unwrap_or_else(|e| panic!("{var}={max}: {e}"));
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} top-level numeric settings");
}

/// A change made to settings in code.
type Change = fn(&mut Settings);

#[test]
fn typed_values_set_in_code_are_checked_too() {
    let cases: Vec<(&str, Change)> = vec![
        ("worker_concurrency", |s| s.worker_concurrency = Some(1_000_000_000)),
        ("worker_concurrency", |s| s.worker_concurrency = Some(0)),
        ("worker_prefetch_multiplier", |s| s.worker_prefetch_multiplier = usize::MAX),
        ("worker_heartbeat_interval", |s| s.worker_heartbeat_interval = f64::NAN),
        ("worker_soft_shutdown_timeout", |s| s.worker_soft_shutdown_timeout = f64::INFINITY),
        ("result_expires", |s| s.result_expires = Some(u64::MAX)),
        ("broker_transport_options.visibility_timeout", |s| s.broker_transport_options.visibility_timeout = 1e300),
        ("broker_transport_options.polling_interval", |s| s.broker_transport_options.polling_interval = Some(-1.0)),
        ("task_time_limit", |s| s.task_time_limit = Some(f64::NEG_INFINITY)),
        ("beat_health_ttl", |s| s.beat_health_ttl = 0.0),
        ("event_queue_ttl", |s| s.event_queue_ttl = Some(f64::NAN)),
    ];
    for (setting, set) in cases {
        let mut s = Settings::default();
        set(&mut s);
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains(&format!("`{setting}`")) && err.contains("expected"), "{setting}: {err}");
    }
    Settings::default().validate().unwrap();
}

#[test]
fn flags_are_read_within_the_settings_range() {
    assert_eq!(celeriac_config::check_flag::<usize>("worker_concurrency", "8"), Ok(8));
    for bad in ["0", "-1", "1000000000", "1e3", "many", "99999999999999999999999"] {
        let err = celeriac_config::check_flag::<usize>("worker_concurrency", bad).unwrap_err();
        assert!(err.contains("worker_concurrency") && err.contains("from 1 to 100000"), "{bad}: {err}");
    }
}

#[test]
fn rate_limits_whose_interval_cannot_be_a_duration_are_refused() {
    for bad in ["1e-300/s", "1e300/s", "inf/s", "nan", "-1/m", "0.0001/h"] {
        assert!(celeriac_config::parse_rate_limit(bad).is_err(), "{bad}");
    }
    assert_eq!(celeriac_config::parse_rate_limit("0.001/h"), Ok(Some(0.001 / 3600.0)));
}

/// The README documents every range.
#[test]
fn the_readme_lists_every_numeric_setting() {
    let readme = include_str!("../README.md");
    for n in NUMERIC_SETTINGS {
        let name = n.path.rsplit('.').next().unwrap_or(n.path);
        let documented = readme.contains(n.path) || readme.contains(&format!("`{name}`"));
        assert!(documented, "config/README.md does not document {}", n.path);
    }
}

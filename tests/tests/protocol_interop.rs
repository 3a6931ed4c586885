//! Python's half of the fixture check: celeriac decodes every golden fixture,
//! re-encodes it, and the real kombu/Celery (tests/python/check_reencoded.py)
//! must decode celeriac's bytes to exactly what it decoded from its own.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed assertion

use std::path::{Path, PathBuf};
use std::process::Command;

use celeriac_protocol::envelope::Envelope;
use celeriac_protocol::result::{GroupMeta, ResultMeta};
use celeriac_protocol::{json, Map, TaskMessage, Value};

fn fixtures(kind: &str) -> Vec<(String, Map)> {
    celeriac_tests::fixture_files(kind)
        .unwrap()
        .into_iter()
        .map(|(name, text)| (name, json::from_str(&text).unwrap().as_map().unwrap().clone()))
        .collect()
}

/// Decodes a fixture's envelope and builds a fresh one from the typed model.
fn reencode_message(name: &str, fixture: &Map) -> Option<String> {
    let raw = fixture.get("envelope").and_then(Value::as_str).unwrap();
    let env = Envelope::from_slice(raw.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let task = match TaskMessage::from_message(&env.message) {
        Ok(task) => task,
        // Pickle is refused by design; nothing to re-encode.
        Err(_) if fixture.get("serializer").and_then(Value::as_str) == Some("pickle") => return None,
        Err(e) => panic!("{name}: {e}"),
    };
    let message = task
        .to_message(
            env.message.properties.clone(),
            env.message.priority,
            env.message.content_type().unwrap(),
            env.message.compression().unwrap(),
        )
        .unwrap();
    Some(Envelope { message, ..env }.to_json().unwrap())
}

fn write_json_object(path: &Path, entries: &[(String, String)]) {
    let mut map = Map::new();
    for (k, v) in entries {
        map.insert(k.clone(), Value::Str(v.clone()));
    }
    std::fs::write(path, json::to_string(&Value::Map(map)).unwrap()).unwrap();
}

fn run_checker(redis_url: &str, args: &[(&str, &PathBuf)]) -> String {
    let python = celeriac_tests::python().unwrap();
    let script = celeriac_tests::repo_root().join("tests/python/check_reencoded.py");
    let mut cmd = Command::new(python);
    cmd.arg(script).args(["--redis-url", redis_url]);
    for (flag, path) in args {
        cmd.arg(flag).arg(path);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "kombu/Celery rejected celeriac's encodings:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn kombu_decodes_celeriacs_reencoded_messages_as_its_own() {
    let (Some(redis), Some(_)) = (celeriac_tests::redis(), celeriac_tests::python_peer()) else { return };
    let entries: Vec<(String, String)> = fixtures("messages")
        .iter()
        .filter_map(|(name, fx)| reencode_message(name, fx).map(|env| (name.clone(), env)))
        .collect();
    assert!(entries.len() >= 40, "only {} fixtures re-encoded", entries.len());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("messages.json");
    write_json_object(&file, &entries);
    let out = run_checker(&redis.url(), &[("--messages", &file)]);
    assert!(out.contains(&format!("{} passed, 0 failed", entries.len())), "{out}");
}

#[test]
fn the_checker_catches_a_wrong_encoding() {
    // The check must be able to fail: a header changed by one character is caught.
    let (Some(redis), Some(_)) = (celeriac_tests::redis(), celeriac_tests::python_peer()) else { return };
    let (name, fx) = fixtures("messages").into_iter().find(|(n, _)| n == "v2_plain").unwrap();
    let text = reencode_message(&name, &fx).unwrap().replace("\"retries\": 0", "\"retries\": 1");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("messages.json");
    write_json_object(&file, &[(name, text)]);
    let python = celeriac_tests::python().unwrap();
    let status = Command::new(python)
        .arg(celeriac_tests::repo_root().join("tests/python/check_reencoded.py"))
        .args(["--redis-url", &redis.url()])
        .arg("--messages")
        .arg(&file)
        .output()
        .unwrap()
        .status;
    assert!(!status.success(), "a wrong header was not detected");
}

/// Decodes a stored result record with celeriac's typed model and writes it again.
fn reencode_result(name: &str, fixture: &Map) -> String {
    let raw = fixture.get("value").and_then(Value::as_str).unwrap();
    match fixture.get("kind").and_then(Value::as_str) {
        Some("chord_size") => raw.trim().parse::<u64>().map(|n| n.to_string()).unwrap(),
        Some("group") => {
            let meta = GroupMeta::from_value(&json::from_str(raw).unwrap()).unwrap_or_else(|e| panic!("{name}: {e}"));
            json::to_string(&meta.to_value()).unwrap()
        }
        _ => {
            let meta = ResultMeta::from_value(&json::from_str(raw).unwrap()).unwrap_or_else(|e| panic!("{name}: {e}"));
            json::to_string(&meta.to_value()).unwrap()
        }
    }
}

#[test]
fn celery_reads_celeriacs_rewritten_result_records() {
    let (Some(redis), Some(_)) = (celeriac_tests::redis(), celeriac_tests::python_peer()) else { return };
    let entries: Vec<(String, String)> =
        fixtures("results").iter().map(|(name, fx)| (name.clone(), reencode_result(name, fx))).collect();
    assert!(entries.len() >= 10, "only {} result fixtures", entries.len());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("results.json");
    write_json_object(&file, &entries);
    let out = run_checker(&redis.url(), &[("--results", &file)]);
    assert!(out.contains(&format!("{} passed, 0 failed", entries.len())), "{out}");
}

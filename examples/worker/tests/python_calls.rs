//! The example binary as a user runs it: Python calls its tasks by name.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed assertion

use std::process::Command;
use std::time::Duration;

use celeriac_tests::LoggedProcess;

#[test]
fn python_calls_the_example_tasks() {
    let (Some(redis), Some(_)) = (celeriac_tests::redis(), celeriac_tests::python_peer()) else { return };
    let url = redis.url();
    let mut command = Command::new(env!("CARGO_BIN_EXE_science-worker"));
    command.args(["worker", "-b", &url, "--result-backend", &url, "-Q", "celery,science", "-c", "2"]);
    let log = redis.dir().join("science-worker.log");
    let worker = LoggedProcess::spawn(command, "science-worker", log, " ready.").unwrap();
    worker.wait_ready(Duration::from_secs(60)).unwrap();

    let calls = serde_json::json!([
        {"name": "science.calibrate", "args": [2], "kwargs": {"detector": "d7", "passes": 1}},
        {"name": "science.calibrate", "args": [2], "kwargs": {"detector": ""}},
        {"name": "celeriac.ping"},
    ]);
    let lines: Vec<serde_json::Value> = celeriac_tests::python_calls(&url, &calls.to_string(), true, 30)
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["result"], serde_json::json!({"run": 2, "detector": "d7", "gain": 1.25}), "{lines:?}");
    assert_eq!(lines[1]["exc_type"], "ValueError", "{lines:?}");
    assert_eq!(lines[2]["result"], "pong", "{lines:?}");
    assert!(worker.log().contains("science.stage"), "the banner lists the set's tasks:\n{}", worker.log());
}

//! The example binary as a user runs it: Python calls its tasks by name.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed assertion

use std::process::Command;
use std::time::Duration;

use celeriac_tests::LoggedProcess;

#[test]
fn python_calls_the_example_tasks() {
    let (Some(redis), Some(_)) = (celeriac_tests::redis(), celeriac_tests::python_peer()) else { return };
    let url = redis.url();
    let data = redis.dir().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("run7.dat"), [1u8, 2, 3, 250]).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_science-worker"));
    command.args(["worker", "-b", &url, "--result-backend", &url, "-Q", "celery,science", "-c", "2"]);
    command.env("SCIENCE_DATA_ROOT", &data);
    let log = redis.dir().join("science-worker.log");
    let worker = LoggedProcess::spawn(command, "science-worker", log, " ready.").unwrap();
    worker.wait_ready(Duration::from_secs(60)).unwrap();

    let calls = serde_json::json!([
        {"name": "science.calibrate", "args": [2], "kwargs": {"detector": "d7", "passes": 1}},
        {"name": "science.calibrate", "args": [2], "kwargs": {"detector": ""}},
        {"name": "celeriac.ping"},
        {"name": "science.checksum", "args": ["run7.dat"], "options": {"queue": "science"}},
        {"name": "science.checksum", "args": ["run8.dat"], "options": {"queue": "science"}},
    ]);
    let lines: Vec<serde_json::Value> = celeriac_tests::python_calls(&url, &calls.to_string(), true, 30)
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["result"], serde_json::json!({"run": 2, "detector": "d7", "gain": 1.25}), "{lines:?}");
    assert_eq!(lines[1]["exc_type"], "ValueError", "{lines:?}");
    assert_eq!(lines[2]["result"], "pong", "{lines:?}");
    // The registered state (the data root) reached the task.
    assert_eq!(lines[3]["result"], serde_json::json!({"bytes": 4, "sum": 256}), "{lines:?}");
    // `?` on the I/O error: Python re-raises the FileNotFoundError it would
    // have raised itself, errno and strerror as its args.
    assert_eq!(lines[4]["exc_type"], "FileNotFoundError", "{lines:?}");
    assert_eq!(lines[4]["exc_module"], "builtins", "{lines:?}");
    assert_eq!(lines[4]["exc_args"], serde_json::json!(["2", "No such file or directory"]), "{lines:?}");
    assert!(worker.log().contains("science.stage"), "the banner lists the set's tasks:\n{}", worker.log());
}

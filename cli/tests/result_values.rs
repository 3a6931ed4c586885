//! Values through a task come back to Python as the same types a Python worker
//! gives: for each serializer (json, msgpack, yaml), a Python worker and a
//! celeriac worker run `t.integration.tasks.identity` on values of every type
//! that serializer carries (datetime, date, time, UUID, Decimal, bytes, big
//! ints, nested containers, and a chain, for a callback's argument), and
//! `tests/python/result_types.py` reports what `AsyncResult.get()` returned and
//! what was stored. The two reports must be equal line by line.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed assertion

use std::process::Command;
use std::time::Duration;

use celeriac_tests::{CeleryWorker, LoggedProcess, RedisServer};

const WAIT: Duration = Duration::from_secs(60);

fn celeriac_worker(redis: &RedisServer, serializer: &str, queue: &str) -> LoggedProcess {
    let config = redis.dir().join(format!("{serializer}.toml"));
    std::fs::write(
        &config,
        format!(
            "task_serializer = \"{serializer}\"\nresult_serializer = \"{serializer}\"\n\
             accept_content = [\"json\", \"msgpack\", \"yaml\"]\n"
        ),
    )
    .unwrap();
    let url = redis.url();
    let mut command = Command::new(env!("CARGO_BIN_EXE_celeriac"));
    command.args(["worker", "-b", &url, "--result-backend", &url, "--tasks", "conformance", "-l", "info"]);
    command.args(["-Q", queue, "-n", &format!("{queue}@test"), "--config"]).arg(&config);
    let log = redis.dir().join(format!("celeriac-{queue}.log"));
    let worker = LoggedProcess::spawn(command, "celeriac worker", log, " ready.").unwrap();
    worker.wait_ready(WAIT).unwrap();
    worker
}

fn python_worker(redis: &RedisServer, python: &std::path::Path, serializer: &str, queue: &str) -> CeleryWorker {
    let apps = celeriac_tests::repo_root().join("tests/python/apps");
    let worker = CeleryWorker::builder(python, "types_app", &apps)
        .queues(queue)
        .args(&["--pool=solo", "-n", &format!("{queue}@test"), "--loglevel=INFO"])
        .env("CELERIAC_TEST_BROKER", &redis.url())
        .env("CELERIAC_TEST_SERIALIZER", serializer)
        .log(redis.dir().join(format!("python-{queue}.log")))
        .start()
        .unwrap();
    worker.wait_ready(WAIT).unwrap();
    worker
}

/// `result_types.py` against `queue`: one report line per value.
fn report(python: &std::path::Path, url: &str, queue: &str, serializer: &str) -> Vec<String> {
    let script = celeriac_tests::repo_root().join("tests/python/result_types.py");
    let out = Command::new(python)
        .arg(script)
        .args(["--broker", url, "--queue", queue, "--serializer", serializer])
        .output()
        .unwrap();
    assert!(out.status.success(), "result_types.py on {queue}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
}

#[test]
fn every_type_every_serializer_comes_back_as_from_a_python_worker() {
    let (Some(redis), Some(python)) = (celeriac_tests::redis(), celeriac_tests::python_peer()) else { return };
    let url = redis.url();
    for serializer in ["json", "msgpack", "yaml"] {
        let (py_queue, rs_queue) = (format!("py-{serializer}"), format!("rs-{serializer}"));
        let _py = python_worker(&redis, &python, serializer, &py_queue);
        let _rs = celeriac_worker(&redis, serializer, &rs_queue);
        let theirs = report(&python, &url, &py_queue, serializer);
        let ours = report(&python, &url, &rs_queue, serializer);
        assert_eq!(theirs.len(), ours.len(), "{serializer}");
        assert!(theirs.len() > 10, "{serializer}: {theirs:?}");
        for (t, o) in theirs.iter().zip(&ours) {
            assert_eq!(o, t, "{serializer}: celeriac (left) and a Python worker (right) differ");
        }
    }
}

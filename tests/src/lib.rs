//! The harness for celeriac's end-to-end tests: real servers and real Python
//! peers, started privately on loopback and stopped again.
//!
//! - [`RedisServer`]: a private `redis-server` in a temp dir on a free port,
//!   stopped on drop (also restartable on the same port, to test reconnection);
//! - [`RabbitNode`]: a private RabbitMQ node with its own node name, ports, epmd
//!   and data dir; [`shared_amqp_url`] gives every test in a run one node;
//! - [`python`]: the project virtualenv's interpreter with the pinned Celery;
//! - [`fixture_files`]: the golden fixtures captured from Celery and kombu;
//! - [`CeleryWorker`]: a real Python Celery worker, readiness awaited from its log
//!   ([`LoggedProcess`] does the same for any command, e.g. `celeriac worker`);
//! - [`TestCertificates`] and [`RedisServer::start_tls`]: TLS with a private CA;
//!   [`SentinelServer`]: a Sentinel watching a private Redis;
//! - [`ChildGuard`]: a child process killed when the guard drops, so a failing
//!   test leaves nothing running.
//!
//! Whether a missing peer skips a test or fails it is decided by
//! [`peers_required`]: on CI (and under `scripts/test`) everything must be there.

mod celery;
mod child;
mod error;
mod fixtures;
mod net;
mod process;
mod proxy;
mod python;
mod rabbitmq;
mod redis;
mod sentinel;
mod tls;

pub use celery::{CeleryWorker, CeleryWorkerBuilder};
pub use child::ChildGuard;
pub use error::HarnessError;
pub use fixtures::fixture_files;
pub use net::{free_port, wait_until};
pub use process::LoggedProcess;
pub use proxy::FaultProxy;
pub use python::{python, python_calls, python_calls_on, repo_root, venv_python};
pub use rabbitmq::{shared_amqp_url, shared_amqps, NodeOptions, RabbitNode, AMQPS_URL_ENV, AMQP_CA_ENV, AMQP_URL_ENV};
pub use redis::RedisServer;
pub use sentinel::SentinelServer;
pub use tls::TestCertificates;

/// Whether missing peers (redis-server, RabbitMQ, the Python virtualenv) fail
/// the test run instead of skipping the tests that need them.
///
/// True when `CI` or `CELERIAC_REQUIRE_PEERS` is set to anything but `0`/`false`
/// or empty; `scripts/test` sets the latter. A developer running one test with
/// plain `cargo test` on a machine without the peers gets a skip message instead.
pub fn peers_required() -> bool {
    ["CELERIAC_REQUIRE_PEERS", "CI"]
        .iter()
        .any(|name| std::env::var(name).map(|v| !matches!(v.trim(), "" | "0" | "false" | "no")).unwrap_or(false))
}

/// Turns a peer that could not be provided into a skip (`None`, with a message
/// on stderr) or, when [`peers_required`], a panic that fails the test.
pub fn or_skip<T>(what: &str, result: Result<T, HarnessError>) -> Option<T> {
    match result {
        Ok(v) => Some(v),
        Err(e) if peers_required() => panic!("{what} is required for this test run: {e}"),
        Err(e) => {
            eprintln!("skipping: {what} unavailable ({e}); run scripts/setup, or set CELERIAC_REQUIRE_PEERS=1 to fail instead");
            None
        }
    }
}

/// A private Redis for one test, or a skip (see [`or_skip`]).
pub fn redis() -> Option<RedisServer> {
    or_skip("redis-server", RedisServer::start())
}

/// The project virtualenv's Python, or a skip (see [`or_skip`]).
pub fn python_peer() -> Option<std::path::PathBuf> {
    or_skip("the Python virtualenv (.venv)", python())
}

/// The run's shared RabbitMQ node, or a skip (see [`or_skip`]).
pub fn amqp() -> Option<String> {
    or_skip("RabbitMQ", shared_amqp_url())
}

/// The run's shared RabbitMQ node over TLS (`amqps://` URL and the CA that
/// signed its certificate), or a skip (see [`or_skip`]).
pub fn amqps() -> Option<(String, std::path::PathBuf)> {
    or_skip("RabbitMQ with TLS", shared_amqps())
}

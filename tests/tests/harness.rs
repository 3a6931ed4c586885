//! The harness itself: servers start, answer, and are gone after drop.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed assertion

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn resp(port: u16, command: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(command).unwrap();
    let mut buf = vec![0u8; 256];
    let n = stream.read(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn redis_starts_answers_and_stops_on_drop() {
    let Some(redis) = celeriac_tests::redis() else {
        return;
    };
    let port = redis.port();
    assert!(redis.url().starts_with("redis://127.0.0.1:"));
    assert_eq!(resp(port, b"SET k v\r\n"), b"+OK\r\n");
    assert_eq!(resp(port, b"GET k\r\n"), b"$1\r\nv\r\n");
    assert!(redis.socket_path().exists());
    drop(redis);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "redis still listening after drop");
}

#[test]
fn redis_restarts_on_the_same_port_without_its_data() {
    let Some(mut redis) = celeriac_tests::redis() else {
        return;
    };
    let port = redis.port();
    assert_eq!(resp(port, b"SET k v\r\n"), b"+OK\r\n");
    redis.kill();
    assert!(!redis.is_up());
    redis.restart().expect("restart");
    assert_eq!(redis.port(), port);
    assert_eq!(resp(port, b"GET k\r\n"), b"$-1\r\n");
}

#[test]
fn two_redis_servers_are_independent() {
    let (Some(a), Some(b)) = (celeriac_tests::redis(), celeriac_tests::redis()) else {
        return;
    };
    assert_ne!(a.port(), b.port());
    assert_eq!(resp(a.port(), b"SET k a\r\n"), b"+OK\r\n");
    assert_eq!(resp(b.port(), b"GET k\r\n"), b"$-1\r\n");
}

#[test]
fn rabbitmq_accepts_amqp_connections() {
    let Some(url) = celeriac_tests::amqp() else {
        return;
    };
    let port: u16 =
        url.rsplit(':').next().and_then(|s| s.split('/').next()).and_then(|p| p.parse().ok()).expect("port in url");
    let reply = resp(port, b"AMQP\x00\x00\x09\x01");
    assert_eq!(reply.first(), Some(&1u8), "expected a Connection.Start method frame, got {reply:?}");
}

#[test]
fn python_virtualenv_has_the_pinned_celery() {
    let Some(python) = celeriac_tests::python_peer() else {
        return;
    };
    let out = std::process::Command::new(python)
        .args(["-c", "import celery, kombu; print(celery.__version__, kombu.__version__)"])
        .output()
        .expect("run python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("5."), "unexpected versions: {text}");
}

#[test]
fn test_certificates_hold_a_ca_and_two_signed_certificates() {
    let Some(certs) = celeriac_tests::or_skip("openssl", celeriac_tests::TestCertificates::generate()) else { return };
    for name in ["ca.pem", "server.pem", "server.key", "client.pem", "client.key"] {
        let len = std::fs::metadata(certs.file(name)).map(|m| m.len()).unwrap_or(0);
        assert!(len > 0, "{name} is missing or empty");
    }
}

//! A private Redis Sentinel watching one master, for `sentinel://` tests.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::child::ChildGuard;
use crate::net::{free_port, wait_until, which};
use crate::HarnessError;

/// A running `redis-server --sentinel`, stopped on drop.
#[derive(Debug)]
pub struct SentinelServer {
    // Field order is drop order: the process before its dir.
    _process: ChildGuard,
    port: u16,
    _dir: tempfile::TempDir,
}

impl SentinelServer {
    /// Starts a sentinel on a free loopback port monitoring the master on
    /// `master_port` under `master_name`, and waits until it listens.
    pub fn start(master_port: u16, master_name: &str) -> Result<SentinelServer, HarnessError> {
        SentinelServer::start_with(master_port, master_name, None)
    }

    /// Starts a sentinel that listens with TLS only (client certificates
    /// required, the server certificate of `certs`) and monitors the master's
    /// TLS port `master_tls_port` over TLS, with the client certificate.
    pub fn start_tls(
        master_tls_port: u16,
        master_name: &str,
        certs: &crate::TestCertificates,
    ) -> Result<SentinelServer, HarnessError> {
        SentinelServer::start_with(master_tls_port, master_name, Some(certs))
    }

    fn start_with(
        master_port: u16,
        master_name: &str,
        certs: Option<&crate::TestCertificates>,
    ) -> Result<SentinelServer, HarnessError> {
        let program = which("redis-server").ok_or(HarnessError::NotInstalled { program: "redis-server".into() })?;
        let dir = tempfile::Builder::new()
            .prefix("celeriac-sentinel-")
            .tempdir()
            .map_err(|e| HarnessError::io("creating a temp dir for the sentinel", e))?;
        let port = free_port()?;
        let conf = dir.path().join("sentinel.conf");
        let listen = match certs {
            None => format!("port {port}\n"),
            Some(c) => format!(
                "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n\
                 tls-client-cert-file {}\ntls-client-key-file {}\ntls-auth-clients yes\ntls-replication yes\n",
                c.path("server.pem"),
                c.path("server.key"),
                c.path("ca.pem"),
                c.path("client.pem"),
                c.path("client.key"),
            ),
        };
        let text = format!(
            "{listen}bind 127.0.0.1\ndir {}\nsentinel monitor {master_name} 127.0.0.1 {master_port} 1\n",
            dir.path().display()
        );
        std::fs::write(&conf, text).map_err(|e| HarnessError::io("writing sentinel.conf", e))?;
        let child = Command::new(program)
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| HarnessError::io("starting redis-server --sentinel", e))?;
        let process = ChildGuard::new("redis sentinel", child);
        let timeout = Duration::from_secs(20);
        if !wait_until(timeout, || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()) {
            return Err(HarnessError::NotReady {
                what: format!("redis sentinel on port {port}"),
                seconds: timeout.as_secs(),
                log: String::new(),
            });
        }
        Ok(SentinelServer { _process: process, port, _dir: dir })
    }

    /// The sentinel's port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

//! A private `redis-server` per test: its own temp dir, loopback port and unix
//! socket, no persistence, stopped on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::child::ChildGuard;
use crate::net::{free_port, tail, wait_until, which};
use crate::HarnessError;

const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running private Redis server.
#[derive(Debug)]
pub struct RedisServer {
    process: Option<ChildGuard>,
    port: u16,
    tls_port: Option<u16>,
    extra_args: Vec<String>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a plain server (no password, no persistence) on a free port.
    pub fn start() -> Result<RedisServer, HarnessError> {
        RedisServer::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments (`--requirepass x`,
    /// TLS options, ...), appended after the harness's own.
    pub fn start_with(extra_args: &[&str]) -> Result<RedisServer, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("celeriac-redis-")
            .tempdir()
            .map_err(|e| HarnessError::io("creating a temp dir for redis", e))?;
        let mut server = RedisServer {
            process: None,
            port: free_port()?,
            tls_port: None,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            dir,
        };
        // A free port can be taken between our probe and the server's bind: retry.
        let mut attempts = 0;
        loop {
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e @ HarnessError::NotInstalled { .. }) => return Err(e),
                Err(e) if attempts >= 3 => return Err(e),
                Err(_) => {
                    attempts += 1;
                    server.port = free_port()?;
                }
            }
        }
    }

    /// Starts a server that also listens with TLS on a second port, with the
    /// server certificate of `certs` and client certificates required.
    pub fn start_tls(certs: &crate::TestCertificates) -> Result<RedisServer, HarnessError> {
        let tls_port = free_port()?;
        let (port, cert, key, ca) =
            (tls_port.to_string(), certs.path("server.pem"), certs.path("server.key"), certs.path("ca.pem"));
        let mut server = RedisServer::start_with(&[
            "--tls-port",
            &port,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "yes",
        ])?;
        server.tls_port = Some(tls_port);
        Ok(server)
    }

    /// The TLS port of a server from [`RedisServer::start_tls`].
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    fn spawn(&mut self) -> Result<(), HarnessError> {
        let program = which("redis-server").ok_or(HarnessError::NotInstalled { program: "redis-server".into() })?;
        let log = self.log_path();
        let child = Command::new(program)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--logfile")
            .arg(&log)
            .arg("--unixsocket")
            .arg(self.socket_path())
            .args(["--unixsocketperm", "700"])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| HarnessError::io("starting redis-server", e))?;
        let mut guard = ChildGuard::new(format!("redis-server :{}", self.port), child);
        let port = self.port;
        let ready = wait_until(READY_TIMEOUT, || guard.try_wait().is_some() || answers(port));
        if !ready || guard.try_wait().is_some() {
            return Err(HarnessError::NotReady {
                what: format!("redis-server on port {port}"),
                seconds: READY_TIMEOUT.as_secs(),
                log: tail(&log, 2000),
            });
        }
        self.process = Some(guard);
        Ok(())
    }

    /// The loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/<db>`.
    pub fn url_db(&self, db: u32) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.port)
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        self.url_db(0)
    }

    /// The server's unix socket.
    pub fn socket_path(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// The server's temp dir (for TLS files and the like).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Kills the server at once (SIGKILL), as a crash or network loss would.
    pub fn kill(&mut self) {
        if let Some(p) = self.process.as_mut() {
            p.signal("KILL");
            p.wait_timeout(Duration::from_secs(10));
        }
        self.process = None;
    }

    /// Starts the server again on the same port (after [`RedisServer::kill`]);
    /// its data is gone, as after a restart without persistence.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.kill();
        self.spawn()
    }

    /// Whether the server answers PING now.
    pub fn is_up(&self) -> bool {
        answers(self.port)
    }
}

/// Whether something on `port` answers a RESP PING (with PONG, or by asking
/// for a password, which still means the server is up).
fn answers(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(n) if n > 0 => buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH"),
        _ => false,
    }
}

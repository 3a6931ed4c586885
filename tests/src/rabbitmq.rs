//! A private RabbitMQ node: own node name, AMQP/distribution/epmd ports, data
//! and log dirs and Erlang cookie, so it never meets a system-wide broker. It
//! also listens for `amqps://` with a certificate from a private CA
//! ([`TestCertificates`]).
//!
//! Starting a node takes seconds, so a test run shares one: `scripts/test`
//! starts it with the `celeriac-testenv` binary and passes its URL in
//! `CELERIAC_TEST_AMQP_URL`; without that, the first test that asks starts one
//! for its process. Either way a watchdog stops the node when its owner exits,
//! even when a test panicked.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::child::ChildGuard;
use crate::net::{free_port, tail, wait_until, which};
use crate::tls::TestCertificates;
use crate::HarnessError;

const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// The environment variable carrying a run-wide node's AMQP URL.
pub const AMQP_URL_ENV: &str = "CELERIAC_TEST_AMQP_URL";

/// The environment variable carrying the same node's `amqps://` URL (its TLS
/// listener, a certificate for `localhost` signed by a private CA).
pub const AMQPS_URL_ENV: &str = "CELERIAC_TEST_AMQPS_URL";

/// The environment variable carrying the path of that private CA (PEM).
pub const AMQP_CA_ENV: &str = "CELERIAC_TEST_AMQP_CA";

/// How [`RabbitNode::start_with`] sets a node up.
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeOptions {
    /// The TLS listener asks for a client certificate and refuses a client
    /// without one signed by the node's CA (`ssl_options.verify =
    /// verify_peer`, `fail_if_no_peer_cert = true`); else it asks for none.
    pub verify_clients: bool,
}

/// A running private RabbitMQ node, stopped on drop.
#[derive(Debug)]
pub struct RabbitNode {
    // Field order is drop order: the broker before its epmd.
    server: ChildGuard,
    epmd: ChildGuard,
    port: u16,
    tls_port: u16,
    epmd_port: u16,
    node_name: String,
    certificates: TestCertificates,
    dir: tempfile::TempDir,
}

impl RabbitNode {
    /// Starts a node and waits until it accepts AMQP connections, plain and
    /// over TLS.
    pub fn start() -> Result<RabbitNode, HarnessError> {
        RabbitNode::start_with(NodeOptions::default())
    }

    /// [`RabbitNode::start`] with `options`.
    pub fn start_with(options: NodeOptions) -> Result<RabbitNode, HarnessError> {
        let server_bin = ["/usr/lib/rabbitmq/bin/rabbitmq-server"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .or_else(|| which("rabbitmq-server"))
            .ok_or(HarnessError::NotInstalled { program: "rabbitmq-server".into() })?;
        let epmd_bin = which("epmd").ok_or(HarnessError::NotInstalled { program: "epmd (erlang)".into() })?;
        let dir = tempfile::Builder::new()
            .prefix("celeriac-rabbit-")
            .tempdir()
            .map_err(|e| HarnessError::io("creating a temp dir for RabbitMQ", e))?;
        let (port, dist_port, epmd_port) = (free_port()?, free_port()?, free_port()?);
        let tls_port = free_port()?;
        let node_name = format!("celeriac-test-{}-{port}@localhost", std::process::id());
        let d = dir.path();
        let certificates = TestCertificates::generate()?;
        std::fs::write(d.join("enabled_plugins"), "[].\n")
            .map_err(|e| HarnessError::io("writing enabled_plugins", e))?;
        let conf = format!(
            "loopback_users = none\n\
             listeners.ssl.1 = 127.0.0.1:{tls_port}\n\
             ssl_options.cacertfile = {}\n\
             ssl_options.certfile = {}\n\
             ssl_options.keyfile = {}\n\
             ssl_options.verify = {}\n\
             ssl_options.fail_if_no_peer_cert = {}\n",
            certificates.path("ca.pem"),
            certificates.path("server.pem"),
            certificates.path("server.key"),
            if options.verify_clients { "verify_peer" } else { "verify_none" },
            options.verify_clients,
        );
        std::fs::write(d.join("rabbitmq.conf"), conf).map_err(|e| HarnessError::io("writing rabbitmq.conf", e))?;

        let epmd = Command::new(epmd_bin)
            .args(["-port", &epmd_port.to_string(), "-address", "127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| HarnessError::io("starting epmd", e))?;
        let epmd = ChildGuard::new("epmd", epmd);

        let log = d.join("server.log");
        let log_file = std::fs::File::create(&log).map_err(|e| HarnessError::io("creating the RabbitMQ log", e))?;
        let log_err = log_file.try_clone().map_err(|e| HarnessError::io("cloning the log handle", e))?;
        let server = Command::new(server_bin)
            .current_dir(d)
            .envs(node_env(d, &node_name, epmd_port))
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_LOGS", "-")
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", d.join("advanced.config"))
            .env("RABBITMQ_CONF_ENV_FILE", d.join("rabbitmq-env.conf"))
            .env("RABBITMQ_PID_FILE", d.join("rabbit.pid"))
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .process_group(0)
            .spawn()
            .map_err(|e| HarnessError::io("starting rabbitmq-server", e))?;
        let mut server = ChildGuard::new(format!("rabbitmq {node_name}"), server);
        watch_owner(&[server.id(), epmd.id()]);

        let ready = wait_until(READY_TIMEOUT, || {
            server.try_wait().is_some() || (speaks_amqp(port) && TcpStream::connect(("127.0.0.1", tls_port)).is_ok())
        });
        if !ready || server.try_wait().is_some() {
            return Err(HarnessError::NotReady {
                what: format!("RabbitMQ node {node_name} on port {port}"),
                seconds: READY_TIMEOUT.as_secs(),
                log: tail(&log, 3000),
            });
        }
        Ok(RabbitNode { server, epmd, port, tls_port, epmd_port, node_name, certificates, dir })
    }

    /// `amqp://guest:guest@127.0.0.1:<port>//`, the spelling kombu and lapin share.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2F", self.port)
    }

    /// `amqps://guest:guest@localhost:<tls port>/%2F`: the TLS listener, whose
    /// certificate (for `localhost` and 127.0.0.1) [`RabbitNode::ca_file`] signed.
    pub fn amqps_url(&self) -> String {
        format!("amqps://guest:guest@localhost:{}/%2F", self.tls_port)
    }

    /// The private CA (PEM) that signed the TLS listener's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.certificates.file("ca.pem")
    }

    /// The certificates of the TLS listener: its CA (`ca.pem`) and a client
    /// certificate it signed (`client.pem`, `client.key`).
    pub fn certificates(&self) -> &TestCertificates {
        &self.certificates
    }

    /// Freezes the node (SIGSTOP to its process group, the Erlang VM
    /// included): connections stay open but nothing answers, not even
    /// heartbeats, until [`RabbitNode::resume`].
    pub fn pause(&self) -> Result<(), HarnessError> {
        self.signal_group("-STOP")
    }

    /// Lets a [`RabbitNode::pause`]d node run again (SIGCONT).
    pub fn resume(&self) -> Result<(), HarnessError> {
        self.signal_group("-CONT")
    }

    fn signal_group(&self, signal: &str) -> Result<(), HarnessError> {
        let status = Command::new("kill")
            .args([signal, "--", &format!("-{}", self.server.id())])
            .stdin(Stdio::null())
            .status()
            .map_err(|e| HarnessError::io("running kill", e))?;
        if !status.success() {
            return Err(HarnessError::io(format!("kill {signal}"), std::io::Error::other(status.to_string())));
        }
        Ok(())
    }

    /// The process id of `rabbitmq-server` (the Erlang VM runs below it).
    pub fn pid(&self) -> u32 {
        self.server.id()
    }

    /// The AMQP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The Erlang node name (`rabbitmqctl -n`).
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The node's data and log dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `rabbitmqctl -n <node> <args>` against this node; its output.
    pub fn ctl(&self, args: &[&str]) -> Result<String, HarnessError> {
        let ctl = ["/usr/lib/rabbitmq/bin/rabbitmqctl"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .or_else(|| which("rabbitmqctl"))
            .ok_or(HarnessError::NotInstalled { program: "rabbitmqctl".into() })?;
        let out = Command::new(ctl)
            .envs(node_env(self.dir.path(), &self.node_name, self.epmd_port))
            .args(["-n", &self.node_name])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| HarnessError::io("running rabbitmqctl", e))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            let output = format!("{text}\n{}", String::from_utf8_lossy(&out.stderr));
            return Err(HarnessError::PeerFailed { what: format!("rabbitmqctl {}", args.join(" ")), output });
        }
        Ok(text)
    }

    /// Stops the node now (it is also stopped on drop).
    pub fn stop(mut self) {
        self.server.stop(Duration::from_secs(30));
        self.epmd.stop(Duration::from_secs(5));
    }
}

fn node_env(dir: &Path, node_name: &str, epmd_port: u16) -> Vec<(String, String)> {
    vec![
        ("HOME".into(), dir.display().to_string()),
        ("RABBITMQ_NODENAME".into(), node_name.into()),
        ("ERL_EPMD_PORT".into(), epmd_port.to_string()),
        ("ERL_EPMD_ADDRESS".into(), "127.0.0.1".into()),
    ]
}

/// Whether something on `port` answers the AMQP 0-9-1 protocol header with a
/// method frame (Connection.Start), i.e. the broker is accepting clients.
fn speaks_amqp(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"AMQP\x00\x00\x09\x01").is_err() {
        return false;
    }
    let mut buf = [0u8; 8];
    matches!(stream.read(&mut buf), Ok(n) if n > 0 && buf[0] == 1)
}

/// Starts a tiny shell that waits for this process to exit, then kills the
/// given process groups: a node outlives no test run, even after a panic or a
/// SIGKILL of the test binary.
fn watch_owner(groups: &[u32]) {
    let owner = std::process::id().to_string();
    let targets: Vec<String> = groups.iter().map(|g| format!("-{g}")).collect();
    let script = "owner=$1; shift; while kill -0 \"$owner\" 2>/dev/null; do sleep 1; done; \
                  kill -TERM \"$@\" 2>/dev/null; sleep 5; kill -KILL \"$@\" 2>/dev/null; exit 0";
    let _ = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("celeriac-watchdog")
        .arg(owner)
        .args(targets)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
}

/// The AMQP URL of the run's shared node: `CELERIAC_TEST_AMQP_URL` when set
/// (as `scripts/test` does), else a node this process starts once and keeps
/// until it exits.
pub fn shared_amqp_url() -> Result<String, HarnessError> {
    if let Ok(url) = std::env::var(AMQP_URL_ENV) {
        if !url.trim().is_empty() {
            return Ok(url);
        }
    }
    process_node().map(RabbitNode::url)
}

/// The run's node over TLS: its `amqps://` URL and the CA file to verify it
/// with, from [`AMQPS_URL_ENV`] and [`AMQP_CA_ENV`], else this process's own
/// node.
pub fn shared_amqps() -> Result<(String, PathBuf), HarnessError> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if let (Some(url), Some(ca)) = (env(AMQPS_URL_ENV), env(AMQP_CA_ENV)) {
        return Ok((url, PathBuf::from(ca)));
    }
    process_node().map(|node| (node.amqps_url(), node.ca_file()))
}

/// The node this process started for itself (once).
fn process_node() -> Result<&'static RabbitNode, HarnessError> {
    static NODE: OnceLock<Result<RabbitNode, String>> = OnceLock::new();
    match NODE.get_or_init(|| RabbitNode::start().map_err(|e| e.to_string())) {
        Ok(node) => Ok(node),
        Err(e) => Err(HarnessError::NotReady { what: "the shared RabbitMQ node".into(), seconds: 0, log: e.clone() }),
    }
}

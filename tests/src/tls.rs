//! Test certificates: a private CA and a server and a client certificate it
//! signed, made with the `openssl` command, for TLS tests against redis-server.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::net::which;
use crate::HarnessError;

/// The files of a private CA and the certificates it signed, in a temp dir
/// that lives as long as this value.
#[derive(Debug)]
pub struct TestCertificates {
    dir: tempfile::TempDir,
}

impl TestCertificates {
    /// Makes a CA, a server certificate for `localhost`/`127.0.0.1` and a
    /// client certificate, valid for two days.
    pub fn generate() -> Result<TestCertificates, HarnessError> {
        let openssl = which("openssl").ok_or(HarnessError::NotInstalled { program: "openssl".into() })?;
        let dir = tempfile::Builder::new()
            .prefix("celeriac-tls-")
            .tempdir()
            .map_err(|e| HarnessError::io("creating a temp dir for certificates", e))?;
        let ext = "[server]\nsubjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n\
                   basicConstraints=CA:FALSE\n[client]\nextendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n";
        std::fs::write(dir.path().join("ext.cnf"), ext).map_err(|e| HarnessError::io("writing ext.cnf", e))?;
        let mut steps =
            vec!["req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=celeriac-test-ca"
                .to_string()];
        for (name, cn) in [("server", "localhost"), ("client", "client")] {
            steps.push(format!("req -newkey rsa:2048 -nodes -keyout {name}.key -out {name}.csr -subj /CN={cn}"));
            steps.push(format!(
                "x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out {name}.pem -days 2 \
                 -extfile ext.cnf -extensions {name}"
            ));
        }
        for step in &steps {
            let out = Command::new(&openssl)
                .args(step.split_whitespace())
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .output()
                .map_err(|e| HarnessError::io("running openssl", e))?;
            if !out.status.success() {
                return Err(HarnessError::io(
                    format!("openssl {step}"),
                    std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
                ));
            }
        }
        Ok(TestCertificates { dir })
    }

    /// The folder holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A file of the set: `ca.pem`, `server.pem`, `server.key`, `client.pem`, `client.key`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `file(name)` as text, for URLs and arguments.
    pub fn path(&self, name: &str) -> String {
        self.file(name).display().to_string()
    }
}

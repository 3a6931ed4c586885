//! TLS for `amqps://`: the rustls client configuration for
//! `broker_use_ssl` (`ca_certs`, `certfile`, `keyfile`, `cert_reqs`, under
//! kombu's and Celery's names) or the `ssl_*` options of the URL, and the
//! connection through it.
//!
//! As py-amqp's `SSLTransport`: with `ca_certs` only those CAs are trusted
//! (else the system's); a client certificate is `certfile` with `keyfile`
//! (or a key inside `certfile`), PEM; `cert_reqs=CERT_NONE` accepts any
//! certificate (encrypted, not authenticated; a warning is logged at
//! startup); `CERT_OPTIONAL` verifies like `CERT_REQUIRED` for a client.
//! Unlike py-amqp without `server_hostname`, the certificate must also
//! name the host of the URL (rustls always checks it), so a certificate
//! for `localhost` does not do for `127.0.0.1`.
//!
//! Failed verifications become configuration errors naming the setting to
//! change; they are not retried as a lost connection is.

use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use celeriac_redisconn::CertReqs;
use lapin::tcp::{RustlsConnector, TcpStream};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::options::AmqpTls;
use crate::error::BrokerError;

/// Set when the broker asked for a client certificate during the
/// handshake, with whether we had one to give: a connection the broker then
/// drops (often seen as a broken pipe or a reset rather than its TLS alert,
/// depending on timing) is explained by [`with_cert_hint`].
#[derive(Clone, Debug, Default)]
pub(crate) struct CertAsked(Arc<AtomicU8>);

// 0: not asked (yet).
const ASKED_NONE: u8 = 1;
const ASKED_SENT: u8 = 2;

/// Our side of client authentication: the configured certificate, if any,
/// given when the broker asks, and the asking remembered.
#[derive(Debug)]
struct ClientCert {
    key: Option<Arc<CertifiedKey>>,
    asked: CertAsked,
}

impl ResolvesClientCert for ClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.asked.0.store(if self.key.is_some() { ASKED_SENT } else { ASKED_NONE }, Ordering::Relaxed);
        self.key.clone()
    }

    fn has_certs(&self) -> bool {
        self.key.is_some()
    }
}

/// Reads the files named by `tls` and builds the connector, once per
/// connection attempt, with what tells whether the broker asked for a
/// client certificate we do not have.
pub(crate) fn connector(tls: &AmqpTls) -> Result<(RustlsConnector, CertAsked), BrokerError> {
    let asked = CertAsked::default();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| BrokerError::Config(format!("TLS: {e}")))?;
    let builder = if tls.cert_reqs == CertReqs::None {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyCertificate(provider.clone())))
    } else {
        builder.with_root_certificates(roots(tls)?)
    };
    let key = match client_identity(tls)? {
        Some((certs, key)) => Some(Arc::new(CertifiedKey::from_der(certs, key, &provider).map_err(|e| {
            BrokerError::Config(format!(
                "broker_use_ssl: the client certificate (certfile) and key (keyfile) do not go together: {e}"
            ))
        })?)),
        None => None,
    };
    let config = builder.with_client_cert_resolver(Arc::new(ClientCert { key, asked: asked.clone() }));
    Ok((RustlsConnector::from(config), asked))
}

/// `ca_certs`, or the system's CAs.
fn roots(tls: &AmqpTls) -> Result<RootCertStore, BrokerError> {
    let mut roots = RootCertStore::empty();
    match &tls.ca_certs {
        Some(path) => {
            let certs = read_certs(path, "CA certificates (ca_certs)")?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(BrokerError::Config(format!(
                    "broker_use_ssl: ca_certs {} holds no usable CA certificate; give a PEM file of the CA that signed \
                     the broker's certificate",
                    path.display()
                )));
            }
        }
        None => {
            let native = rustls_native_certs_or_empty();
            roots.add_parsable_certificates(native);
        }
    }
    Ok(roots)
}

/// The system's CA certificates (what lapin's default TLS trusts).
fn rustls_native_certs_or_empty() -> Vec<CertificateDer<'static>> {
    // The bundle OpenSSL uses on this system; empty if there is none (then
    // only `ca_certs` can make a server trusted, and the error says so).
    let probe = ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"];
    let from_env = std::env::var_os("SSL_CERT_FILE").map(std::path::PathBuf::from);
    from_env
        .into_iter()
        .chain(probe.iter().map(std::path::PathBuf::from))
        .find(|p| p.is_file())
        .and_then(|p| CertificateDer::pem_file_iter(p).ok())
        .map(|it| it.filter_map(Result::ok).collect())
        .unwrap_or_default()
}

fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, BrokerError> {
    let bytes = std::fs::read(path).map_err(|source| BrokerError::TlsFile {
        what,
        path: path.display().to_string(),
        source,
    })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes).filter_map(Result::ok).collect();
    if certs.is_empty() {
        return Err(BrokerError::Config(format!(
            "broker_use_ssl: {} holds no PEM certificate (-----BEGIN CERTIFICATE-----); convert it with \
             `openssl x509 -inform der -in FILE -out FILE.pem`",
            path.display()
        )));
    }
    Ok(certs)
}

/// `certfile` and `keyfile` (or the key inside `certfile`, as Python's
/// `load_cert_chain(certfile)` reads it).
fn client_identity(
    tls: &AmqpTls,
) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, BrokerError> {
    let Some(certfile) = &tls.certfile else {
        if tls.keyfile.is_some() {
            return Err(BrokerError::Config(
                "broker_use_ssl: keyfile is given without certfile; give the client certificate too".into(),
            ));
        }
        return Ok(None);
    };
    let certs = read_certs(certfile, "client certificate (certfile)")?;
    let key_path = tls.keyfile.as_deref().unwrap_or(certfile);
    let bytes = std::fs::read(key_path).map_err(|source| BrokerError::TlsFile {
        what: "client key (keyfile)",
        path: key_path.display().to_string(),
        source,
    })?;
    let key = PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| {
        let encrypted = String::from_utf8_lossy(&bytes).contains("ENCRYPTED");
        BrokerError::Config(format!(
            "broker_use_ssl: no usable private key in {}{}; celeriac reads unencrypted PEM keys (PKCS#8 \
             `BEGIN PRIVATE KEY`, PKCS#1 `BEGIN RSA PRIVATE KEY` or SEC1 `BEGIN EC PRIVATE KEY`){}",
            key_path.display(),
            if encrypted { " (it is encrypted)" } else { "" },
            if encrypted {
                "; write a decrypted copy with `openssl pkey -in KEY -out KEY.plain.pem` and give that as keyfile"
            } else {
                ""
            }
        ))
    })?;
    Ok(Some((certs, key)))
}

/// `cert_reqs=CERT_NONE`: any certificate is accepted (signatures are still
/// checked, so the session is encrypted to whoever holds the key).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Connects `uri` (TCP, then the TLS handshake through `connector`), as
/// lapin's own `connect_with_config` does but with our rustls configuration.
#[allow(clippy::result_large_err)] // lapin's connector type, not ours to shrink
pub(crate) fn connect_fn(
    connector: RustlsConnector,
) -> Box<dyn FnOnce(&lapin::uri::AMQPUri) -> lapin::tcp::HandshakeResult + Send + Sync> {
    Box::new(move |uri: &lapin::uri::AMQPUri| {
        let host = &uri.authority.host;
        let address = if host.contains(':') {
            format!("[{host}]:{}", uri.authority.port) // an IPv6 address
        } else {
            format!("{host}:{}", uri.authority.port)
        };
        let stream = match uri.query.connection_timeout {
            Some(ms) => TcpStream::connect_timeout(address, std::time::Duration::from_millis(ms)),
            None => TcpStream::connect(address),
        }?;
        // Still blocking here: the handshake completes (or fails) in this call.
        let stream = stream.into_rustls(&connector, &uri.authority.host)?;
        stream.set_nonblocking(true)?;
        Ok(stream)
    })
}

/// A TLS failure in `error` turned into a configuration error naming what
/// to change, or `None` if it is not one.
pub(crate) fn explain(error: &lapin::Error, endpoint: &str) -> Option<BrokerError> {
    let text = match error {
        lapin::Error::IOError(io) => tls_text(io),
        _ => None,
    }?;
    let hint = if text.contains("invalid peer certificate") {
        if text.contains("NotValidForName") {
            "the broker's certificate does not name this host; connect with the host name the certificate carries"
        } else {
            "the broker's certificate is not trusted: set broker_use_ssl ca_certs (ssl_ca_certs) to the PEM file \
             of the CA that signed it (or cert_reqs=CERT_NONE to skip verification, unsafe)"
        }
    } else if text.contains("CertificateRequired") || text.contains("HandshakeFailure") {
        "the broker wants a client certificate: set broker_use_ssl certfile and keyfile"
    } else if text.contains("UnknownCA") || text.contains("BadCertificate") || text.contains("DecryptError") {
        "the broker does not trust our client certificate (certfile): use one signed by a CA the broker's \
         ssl_options.cacertfile names"
    } else {
        return None;
    };
    Some(BrokerError::Config(format!("TLS with {endpoint} failed: {text}; {hint}")))
}

/// A connection the broker dropped after asking for a client certificate
/// we do not have (seen as a broken pipe or a reset rather than a TLS
/// alert, depending on timing) says so. It stays a lost connection, retried
/// as one: the broker may also have gone away for another reason.
pub(crate) fn with_cert_hint(error: lapin::Error, asked: &CertAsked) -> lapin::Error {
    let hint = match asked.0.load(Ordering::Relaxed) {
        ASKED_NONE => {
            "the broker asked for a client certificate and none is configured: if it requires one, set \
             broker_use_ssl certfile and keyfile"
        }
        ASKED_SENT => {
            "the broker asked for our client certificate (certfile) and got it: if it does not trust it, use \
             one signed by a CA the broker's ssl_options.cacertfile names"
        }
        _ => return error,
    };
    match error {
        lapin::Error::IOError(io) => {
            lapin::Error::IOError(Arc::new(std::io::Error::new(io.kind(), format!("{io} ({hint})"))))
        }
        other => other,
    }
}

/// The rustls error inside an I/O error, as text.
fn tls_text(io: &std::io::Error) -> Option<String> {
    let inner = io.get_ref()?;
    if let Some(e) = inner.downcast_ref::<rustls::Error>() {
        return Some(e.to_string());
    }
    let text = inner.to_string();
    (text.contains("peer certificate") || text.contains("alert")).then_some(text)
}

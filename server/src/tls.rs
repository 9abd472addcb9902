//! TLS for the listener: rustls (ring provider) with a certificate and key
//! from PEM files, or a CA and server certificate this module makes with
//! rcgen in `<data_dir>/tls/` (`--tls-self-signed`) for a LAN.
//!
//! [`TlsListener`] wraps the TCP listener for `axum::serve`: handshakes run
//! in tasks of their own, so a slow or silent client never holds up the
//! accept loop, and finished connections are handed to axum with their
//! peer address.
//!
//! A leaf: used by `lib.rs` (`serve`, `serve_on`); calls only the file
//! system and rustls.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::Settings;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS certificate {path}: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("cannot read TLS key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("TLS certificate {cert} and key {key} do not make a usable pair: {reason}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("[tls] needs both cert and key (--tls-cert and --tls-key), or self_signed")]
    Incomplete,
    #[error("[tls] cert/key and self_signed exclude each other")]
    Conflict,
    #[error("cannot make the self-signed certificate in {dir}: {reason}")]
    SelfSigned { dir: PathBuf, reason: String },
}

/// Where the self-signed files live, and whether they were just made.
#[derive(Debug, Clone)]
pub struct SelfSigned {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub names: Vec<String>,
    pub created: bool,
}

/// What the listener serves TLS with.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    /// The self-signed files, when they were used.
    pub self_signed: Option<SelfSigned>,
}

/// The rustls server configuration the settings ask for; `None` when TLS
/// is off.
pub fn server_config(settings: &Settings) -> Result<Option<ServerTls>, TlsError> {
    let t = &settings.tls;
    if t.self_signed {
        if t.cert.is_some() || t.key.is_some() {
            return Err(TlsError::Conflict);
        }
        let made = ensure_self_signed(&settings.data_dir.join("tls"), &names(settings))?;
        let config = load(&made.cert, &made.key)?;
        return Ok(Some(ServerTls {
            config,
            self_signed: Some(made),
        }));
    }
    match (&t.cert, &t.key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Ok(Some(ServerTls {
            config: load(cert, key)?,
            self_signed: None,
        })),
        _ => Err(TlsError::Incomplete),
    }
}

/// Reads a PEM chain and key and builds the server configuration (HTTP/1.1
/// by ALPN, TLS 1.2 and 1.3, ring).
pub fn load(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let cert_err = |reason: String| TlsError::Cert {
        path: cert.to_owned(),
        reason,
    };
    let pem = std::fs::read(cert).map_err(|e| cert_err(e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(format!("not PEM: {e}")))?;
    if chain.is_empty() {
        return Err(cert_err("no CERTIFICATE block in the file".into()));
    }
    let key_err = |reason: String| TlsError::Key {
        path: key.to_owned(),
        reason,
    };
    let pem = std::fs::read(key).map_err(|e| key_err(e.to_string()))?;
    let private = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        key_err(format!(
            "no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"
        ))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pair_err = |reason: String| TlsError::Pair {
        cert: cert.to_owned(),
        key: key.to_owned(),
        reason,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| pair_err(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| pair_err(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The names of the self-signed certificate: localhost, 127.0.0.1, ::1,
/// the host name, the listen address (unless it is a wildcard) and the
/// configured extra names, without duplicates.
pub fn names(settings: &Settings) -> Vec<String> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Some(h) = hostname() {
        names.push(h);
    }
    let ip = settings.listen.ip();
    if !ip.is_unspecified() {
        names.push(ip.to_string());
    }
    for s in &settings.tls.san {
        let s = s.trim();
        if !s.is_empty() {
            names.push(s.to_owned());
        }
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.to_ascii_lowercase()));
    names
}

fn hostname() -> Option<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let h = h.trim();
    (!h.is_empty()).then(|| h.to_owned())
}

const CA_CN: &str = "wharf registry CA";

fn ca_params() -> Result<rcgen::CertificateParams, rcgen::Error> {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, CA_CN);
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, "wharf");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut p, 3650);
    Ok(p)
}

/// From yesterday (clock skew) for `days`.
fn validity(p: &mut rcgen::CertificateParams, days: i64) {
    use chrono::Datelike;
    let ymd = |t: chrono::DateTime<chrono::Utc>| {
        rcgen::date_time_ymd(t.year(), t.month() as u8, t.day() as u8)
    };
    let now = chrono::Utc::now();
    p.not_before = ymd(now - chrono::Duration::days(1));
    p.not_after = ymd(now + chrono::Duration::days(days));
}

/// Makes the CA (once) and a server certificate for `names` in `dir`, or
/// reuses them. The server certificate is made again from the same CA when
/// the names changed (a new `--tls-san`), so clients keep trusting it.
/// Keys are written 0600, every file through a temporary file and a rename.
pub fn ensure_self_signed(dir: &Path, names: &[String]) -> Result<SelfSigned, TlsError> {
    let fail = |reason: String| TlsError::SelfSigned {
        dir: dir.to_owned(),
        reason,
    };
    let ca_cert = dir.join("ca.crt");
    let ca_key = dir.join("ca.key");
    let cert = dir.join("server.crt");
    let key = dir.join("server.key");
    let names_file = dir.join("server.names");
    std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    let wanted = names.join("\n");
    let mut created = false;
    let ca_keypair = if ca_cert.exists() && ca_key.exists() {
        let pem = std::fs::read_to_string(&ca_key)
            .map_err(|e| fail(format!("{}: {e}", ca_key.display())))?;
        rcgen::KeyPair::from_pem(&pem).map_err(|e| fail(format!("{}: {e}", ca_key.display())))?
    } else {
        let kp = rcgen::KeyPair::generate().map_err(|e| fail(e.to_string()))?;
        let ca = ca_params()
            .and_then(|p| p.self_signed(&kp))
            .map_err(|e| fail(e.to_string()))?;
        write_file(&ca_key, kp.serialize_pem().as_bytes(), 0o600).map_err(&fail)?;
        write_file(&ca_cert, ca.pem().as_bytes(), 0o644).map_err(&fail)?;
        // A new CA: any old server certificate is not signed by it.
        let _ = std::fs::remove_file(&names_file);
        created = true;
        kp
    };
    let current = std::fs::read_to_string(&names_file).ok();
    if !(cert.exists() && key.exists() && current.as_deref() == Some(wanted.as_str())) {
        let issuer = rcgen::Issuer::new(ca_params().map_err(|e| fail(e.to_string()))?, ca_keypair);
        let mut p = rcgen::CertificateParams::new(names.to_vec())
            .map_err(|e| fail(format!("names {names:?}: {e}")))?;
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(
            rcgen::DnType::CommonName,
            names
                .iter()
                .find(|n| n.parse::<IpAddr>().is_err())
                .map_or("wharf", |n| n.as_str()),
        );
        p.is_ca = rcgen::IsCa::NoCa;
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        p.use_authority_key_identifier_extension = true;
        validity(&mut p, 825);
        let kp = rcgen::KeyPair::generate().map_err(|e| fail(e.to_string()))?;
        let c = p.signed_by(&kp, &issuer).map_err(|e| fail(e.to_string()))?;
        write_file(&key, kp.serialize_pem().as_bytes(), 0o600).map_err(&fail)?;
        write_file(&cert, c.pem().as_bytes(), 0o644).map_err(&fail)?;
        write_file(&names_file, wanted.as_bytes(), 0o644).map_err(&fail)?;
        created = true;
    }
    Ok(SelfSigned {
        dir: dir.to_owned(),
        ca_cert,
        cert,
        key,
        names: names.to_vec(),
        created,
    })
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Logs where the CA goes for docker and for wharf-runner.
pub fn log_ca_instructions(made: &SelfSigned, listen: SocketAddr) {
    let port = listen.port();
    tracing::info!(
        ca = %made.ca_cert.display(),
        created = made.created,
        names = %made.names.join(","),
        "TLS with a self-signed CA; clients must trust {}",
        made.ca_cert.display()
    );
    for name in made.names.iter().filter(|n| {
        !(n.as_str() == "localhost" || n.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()))
    }) {
        let host = if name.contains(':') {
            format!("[{name}]:{port}")
        } else {
            format!("{name}:{port}")
        };
        tracing::info!(
            "for docker and wharf-runner: mkdir -p /etc/docker/certs.d/{host} && cp {} /etc/docker/certs.d/{host}/ca.crt \
             (wharf-runner also reads <its --root>/certs.d/{host}/ca.crt)",
            made.ca_cert.display()
        );
    }
}

/// Time a client gets to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes at once, at most; further accepted sockets wait.
const HANDSHAKE_QUEUE: usize = 256;

/// A listener for `axum::serve` that yields TLS streams. Accepting and the
/// handshakes run in a task of their own; the TCP socket gets TCP_NODELAY.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsListener {
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(HANDSHAKE_QUEUE);
        let acceptor = TlsAcceptor::from(config);
        let task = tokio::spawn(async move {
            let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKE_QUEUE));
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, go on.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let Ok(permit) = handshakes.clone().acquire_owned().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { rx, local, task })
    }
}

/// The peer address of a TLS connection, as axum's connect info.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            // The accept task ended (it never does on its own): no more
            // connections.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn self_signed_is_made_once_and_reissued_for_new_names() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let a = ensure_self_signed(dir.path(), &names).unwrap();
        assert!(a.created);
        let mode = std::fs::metadata(&a.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let ca_mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(ca_mode, 0o600);
        let ca = std::fs::read(&a.ca_cert).unwrap();
        let cert = std::fs::read(&a.cert).unwrap();
        let b = ensure_self_signed(dir.path(), &names).unwrap();
        assert!(!b.created);
        assert_eq!(std::fs::read(&b.cert).unwrap(), cert);
        let mut more = names.clone();
        more.push("registry.lan".into());
        let c = ensure_self_signed(dir.path(), &more).unwrap();
        assert!(c.created);
        assert_eq!(std::fs::read(&c.ca_cert).unwrap(), ca, "the CA is kept");
        assert_ne!(std::fs::read(&c.cert).unwrap(), cert);
        load(&c.cert, &c.key).unwrap();
    }

    #[test]
    fn bad_files_give_one_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let err = load(&missing, &missing).unwrap_err().to_string();
        assert!(err.starts_with("cannot read TLS certificate"), "{err}");
        let made = ensure_self_signed(dir.path(), &["localhost".to_owned()]).unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a key").unwrap();
        let err = load(&made.cert, &junk).unwrap_err().to_string();
        assert!(err.starts_with("cannot read TLS key"), "{err}");
        // The CA's key does not belong to the server certificate.
        let err = load(&made.cert, &dir.path().join("ca.key"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("do not make a usable pair"), "{err}");
    }
}

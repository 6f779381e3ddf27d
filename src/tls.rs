//! TLS on the listener (`http.tls_cert`, `http.tls_key`), with the certificate
//! reloadable while Herald runs.
//!
//! The rustls config asks [`CertStore`] for the certificate on every handshake; a
//! reload swaps what it answers. Connections already open keep the certificate they
//! were made with; new ones get the new one. A reload that fails (unreadable file, key
//! not matching, ...) is logged and leaves the previous certificate in place, so a
//! half-copied file never takes the listener down.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    /// parking_lot: read on each handshake, written on reload, never held across
    /// `.await`.
    current: parking_lot::RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish()
    }
}

fn load(cert: &PathBuf, key: &PathBuf, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("http.tls_cert {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("http.tls_cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "http.tls_cert {}: no certificate in the file",
            cert.display()
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("http.tls_key {}: {e}", key.display()))?;
    let ck = CertifiedKey::from_der(chain, private, provider)
        .map_err(|e| format!("http.tls_key {}: {e}", key.display()))?;
    ck.keys_match()
        .map_err(|e| format!("http.tls_key does not match http.tls_cert: {e}"))?;
    Ok(ck)
}

impl CertStore {
    /// Loads the certificate chain and key; fails with a message naming the file.
    pub fn open(cert: &str, key: &str) -> Result<Arc<CertStore>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (cert_path, key_path) = (PathBuf::from(cert), PathBuf::from(key));
        let first = load(&cert_path, &key_path, &provider)?;
        Ok(Arc::new(CertStore {
            cert_path,
            key_path,
            provider,
            current: parking_lot::RwLock::new(Arc::new(first)),
        }))
    }

    /// Reads the files again; on success new handshakes use the new certificate.
    pub fn reload(&self) -> Result<(), String> {
        let ck = load(&self.cert_path, &self.key_path, &self.provider)?;
        *self.current.write() = Arc::new(ck);
        Ok(())
    }

    /// The listener's rustls config (HTTP/1.1 over TLS: WebSocket and the API).
    pub fn server_config(self: &Arc<Self>) -> Result<ServerConfig, String> {
        let mut cfg = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(cfg)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

/// Reloads the certificate on every SIGHUP until the process ends.
#[cfg(unix)]
pub fn reload_on_sighup(store: Arc<CertStore>) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match store.reload() {
                Ok(()) => {
                    tracing::info!(cert = %store.cert_path.display(), "tls certificate reloaded")
                }
                Err(e) => {
                    tracing::error!(cause = %e, "tls certificate reload failed; keeping the previous one")
                }
            }
        }
    });
    Ok(())
}

#[cfg(not(unix))]
pub fn reload_on_sighup(_store: Arc<CertStore>) -> std::io::Result<()> {
    Ok(())
}

//! rustls in one place: loading PEM certificates and keys into server configs. The ring
//! provider is installed explicitly (no aws-lc).

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {msg}")]
    Load { path: String, msg: String },
    #[error("certificate and key do not fit together: {0}")]
    Config(String),
}

/// Installs the ring crypto provider as the process default (idempotent).
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A server config from a PEM certificate chain and a PEM private key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    install_provider();
    let load = |p: &Path, msg: String| TlsError::Load {
        path: p.display().to_string(),
        msg,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| load(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| load(cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(load(cert, "no certificate found".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| load(key, e.to_string()))?;
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(config))
}

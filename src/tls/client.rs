//! rustls on the sending side: STARTTLS on delivery connections (tenants' servers, senders' MX)
//! and the HTTPS GET of MTA-STS policies.
//!
//! # One handshake, then the policy
//!
//! Every handshake runs with one verifier that checks the server's signature (the server holds
//! the key of the certificate it shows) and accepts any certificate, as MTAs do for
//! opportunistic TLS. The certificate is then judged, before a byte of mail is written, against
//! the destination's [`Policy`]: does the chain verify for the host name under the policy's trust
//! anchors ([`Facts::verified`]), does its SPKI hash match a pin ([`Facts::pinned`])? A policy
//! that requires either and does not get it ends the connection there ([`Refusal`]): nothing was
//! sent in clear and nothing over TLS. Judging after the handshake rather than inside it is what
//! lets one code path report the facts of every connection (an opportunistic one whose
//! certificate does verify is counted `verified`).
//!
//! # Trust anchors
//!
//! The system's store ([`system_roots`]: `/etc/ssl/certs`, or `SSL_CERT_FILE` / `SSL_CERT_DIR`
//! when set), read once per process; or a tenant's own CA file ([`roots_from_pem`]), which then
//! replaces the system's for that tenant.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncWrite};

use super::TlsError;

/// A TLS stream of the sending side.
pub type TlsStream<S> = tokio_rustls::client::TlsStream<S>;

/// What a connection must achieve before mail may go over it.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Trust anchors for [`Facts::verified`].
    pub roots: Arc<RootCertStore>,
    /// The chain must verify for the host name (`tls = "required"`, MTA-STS `enforce`).
    pub require_verified: bool,
    /// SHA-256 hashes of acceptable SubjectPublicKeyInfos; when not empty one must match,
    /// and a match stands in for the CA check (a pinned key is its own authority, as DANE-EE).
    pub pins: Vec<[u8; 32]>,
}

impl Policy {
    /// Whether a connection that cannot do TLS may still carry mail.
    pub fn requires_tls(&self) -> bool {
        self.require_verified || !self.pins.is_empty()
    }
}

/// What one handshake gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// `TLSv1.3`, `TLSv1.2`.
    pub version: String,
    /// The IANA name, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
    /// The chain verifies for the host name under the policy's trust anchors.
    pub verified: bool,
    /// Why not, when it does not (`certificate expired`, `not valid for mx.example` …).
    pub unverified_because: Option<String>,
    /// The leaf's SPKI matched one of the policy's pins.
    pub pinned: bool,
}

impl Facts {
    /// The `result` label of `maildistiller_engine_delivery_tls_total` for mail sent over it.
    pub fn result(&self) -> &'static str {
        match (self.pinned, self.verified) {
            (true, _) => "pinned",
            (false, true) => "verified",
            (false, false) => "unverified",
        }
    }
}

/// Why a connection was not good enough for its policy. Nothing was written over it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    #[error("certificate does not verify for {host}: {why}")]
    NotVerified { host: String, why: String },
    #[error("certificate key of {host} matches no tls_pin")]
    PinMismatch { host: String },
}

/// Accepts any certificate, checks the handshake signatures (see the module docs).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The one client config of the process (its session cache is shared by every connection).
fn client_config() -> Arc<ClientConfig> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            super::install_provider();
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

/// The system's trust anchors, read once per process. An empty store (no CA bundle installed)
/// is logged: every `required` delivery without its own `tls_ca` would then be deferred.
pub fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "reading the system's CA certificates");
            }
            let mut store = RootCertStore::empty();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(
                    "no trusted CA certificates found (install ca-certificates, or set SSL_CERT_FILE): certificates cannot verify"
                );
            }
            Arc::new(store)
        })
        .clone()
}

/// Trust anchors from a PEM file of CA certificates (a tenant's `tls_ca`).
pub fn roots_from_pem(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let load = |msg: String| TlsError::Load {
        path: path.display().to_string(),
        msg,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| load(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| load(e.to_string()))?;
    let mut store = RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(load("no CA certificate found".into()));
    }
    Ok(Arc::new(store))
}

/// A pin as written in the config (`tls_pin`): base64 of a SHA-256 (44 characters).
pub fn parse_pin(text: &str) -> Result<[u8; 32], String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("{text:?} is not base64: {e}"))?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        format!(
            "{text:?} is {} bytes, a SHA-256 pin is 32 (openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64)",
            b.len()
        )
    })
}

/// The SHA-256 of a certificate's SubjectPublicKeyInfo (what `tls_pin` holds), base64.
pub fn spki_pin(cert: &[u8]) -> Option<String> {
    spki_sha256(cert).map(|h| base64::engine::general_purpose::STANDARD.encode(h))
}

fn spki_sha256(cert: &[u8]) -> Option<[u8; 32]> {
    let der = CertificateDer::from(cert);
    let ee = webpki::EndEntityCert::try_from(&der).ok()?;
    let spki = ee.subject_public_key_info();
    ring::digest::digest(&ring::digest::SHA256, spki.as_ref())
        .as_ref()
        .try_into()
        .ok()
}

/// The name a certificate must be valid for: a DNS name, or an IP address (`127.0.0.1` in a
/// tenant's `delivery` checks an IP SAN).
fn server_name(host: &str) -> Result<ServerName<'static>, Refusal> {
    ServerName::try_from(host.trim_end_matches('.').to_owned())
        .map_err(|_| Refusal::Handshake(format!("{host:?} is not a host name")))
}

/// TLS over `stream` (after the server's `220` to STARTTLS, or at once for HTTPS) to `host`,
/// judged against `policy`. `Ok` carries the facts; a [`Refusal`] means the connection must
/// be dropped without writing anything.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    host: &str,
    policy: &Policy,
) -> Result<(TlsStream<S>, Facts), Refusal> {
    let name = server_name(host)?;
    let connector = tokio_rustls::TlsConnector::from(client_config());
    let tls = connector
        .connect(name.clone(), stream)
        .await
        .map_err(|e| Refusal::Handshake(e.to_string()))?;
    let (_, conn) = tls.get_ref();
    let certs = conn.peer_certificates().unwrap_or_default();
    let version = conn
        .protocol_version()
        .map(|v| format!("{v:?}").replace("TLSv1_", "TLSv1."))
        .unwrap_or_default();
    let cipher = conn
        .negotiated_cipher_suite()
        .map(|c| format!("{:?}", c.suite()))
        .unwrap_or_default();
    let (verified, unverified_because) = match verify(certs, &name, &policy.roots) {
        Ok(()) => (true, None),
        Err(why) => (false, Some(why)),
    };
    let pinned = !policy.pins.is_empty()
        && certs
            .first()
            .and_then(|c| spki_sha256(c))
            .is_some_and(|h| policy.pins.contains(&h));
    let facts = Facts {
        version,
        cipher,
        verified,
        unverified_because,
        pinned,
    };
    if !policy.pins.is_empty() && !pinned {
        return Err(Refusal::PinMismatch {
            host: host.to_owned(),
        });
    }
    if policy.require_verified && !verified && !pinned {
        return Err(Refusal::NotVerified {
            host: host.to_owned(),
            why: facts.unverified_because.clone().unwrap_or_default(),
        });
    }
    Ok((tls, facts))
}

/// Does the chain verify for `name` under `roots`? The reason when not, in words.
fn verify(
    certs: &[CertificateDer<'static>],
    name: &ServerName<'_>,
    roots: &Arc<RootCertStore>,
) -> Result<(), String> {
    let Some((leaf, intermediates)) = certs.split_first() else {
        return Err("no certificate".into());
    };
    if roots.is_empty() {
        return Err("no trusted CA certificates".into());
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(
        roots.clone(),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| e.to_string())?;
    verifier
        .verify_server_cert(leaf, intermediates, name, &[], UnixTime::now())
        .map(|_| ())
        .map_err(|e| describe(&e))
}

/// rustls's certificate errors as an operator reads them in `queue show`.
fn describe(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::Expired | C::ExpiredContext { .. } => "certificate expired".into(),
            C::NotValidYet | C::NotValidYetContext { .. } => "certificate not valid yet".into(),
            C::UnknownIssuer => "issuer unknown (self-signed, or a CA that is not trusted)".into(),
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                "not valid for this host name".into()
            }
            C::Revoked => "certificate revoked".into(),
            C::BadSignature => "bad signature".into(),
            C::Other(o) if format!("{o}").contains("CaUsedAsEndEntity") => {
                "a CA certificate shown as the server's own (self-signed?)".into()
            }
            C::Other(o) => o.to_string(),
            other => format!("{other:?}"),
        },
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_base64_sha256() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let pin = spki_pin(cert.der()).unwrap();
        assert_eq!(pin.len(), 44);
        // The SPKI hash is the key's: the same whatever certificate carries it.
        let again = rcgen::CertificateParams::new(vec!["y.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_eq!(spki_pin(again.der()).unwrap(), pin);
        assert_eq!(parse_pin(&pin).unwrap(), spki_sha256(cert.der()).unwrap());
        assert!(parse_pin("not base64!").is_err());
        assert!(parse_pin("AAAA").unwrap_err().contains("3 bytes"));
    }
}

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
    server_config_with_expiry(cert, key).map(|(c, _)| c)
}

/// Like [`server_config`], also returning the leaf certificate's notAfter (Unix seconds) for
/// the expiry metric and alert.
pub fn server_config_with_expiry(
    cert: &Path,
    key: &Path,
) -> Result<(Arc<ServerConfig>, Option<u64>), TlsError> {
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
    let expiry = not_after(&certs[0]);
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok((Arc::new(config), expiry))
}

/// One DER TLV: (tag, content, rest). `None` on anything malformed.
fn tlv(d: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, d) = d.split_first()?;
    let (&first, mut d) = d.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || d.len() < n {
            return None;
        }
        let (bytes, rest) = d.split_at(n);
        d = rest;
        bytes.iter().fold(0usize, |a, b| (a << 8) | usize::from(*b))
    };
    (d.len() >= len).then(|| (tag, &d[..len], &d[len..]))
}

/// The notAfter of an X.509 certificate (Unix seconds), read with a minimal DER walk:
/// Certificate -> tbsCertificate -> [version] serial signature issuer validity.
pub fn not_after(cert: &[u8]) -> Option<u64> {
    let (_, certificate, _) = tlv(cert)?;
    let (_, tbs, _) = tlv(certificate)?;
    let mut rest = tbs;
    let (tag, _, r) = tlv(rest)?;
    if tag == 0xA0 {
        rest = r;
    }
    for _ in 0..3 {
        rest = tlv(rest)?.2; // serial, signature algorithm, issuer
    }
    let (_, validity, _) = tlv(rest)?;
    let (_, _, after) = tlv(validity)?;
    let (tag, time, _) = tlv(after)?;
    let t = std::str::from_utf8(time).ok()?;
    let digits = |s: &str| s.parse::<u64>().ok();
    let (year, rest) = match tag {
        0x17 if t.len() >= 12 => {
            let yy = digits(&t[..2])?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &t[2..])
        }
        0x18 if t.len() >= 14 => (digits(&t[..4])?, &t[4..]),
        _ => return None,
    };
    let (mo, d, h, mi, s) = (
        digits(&rest[..2])?,
        digits(&rest[2..4])?,
        digits(&rest[4..6])?,
        digits(&rest[6..8])?,
        digits(&rest[8..10])?,
    );
    // Days from civil (Howard Hinnant), for years after 1970.
    let (y, m) = if mo <= 2 {
        (year - 1, mo + 9)
    } else {
        (year, mo - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + h * 3600 + mi * 60 + s)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_not_after_of_a_generated_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["x.test".to_string()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 7, 15);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        // 2031-07-15T00:00:00Z
        assert_eq!(super::not_after(cert.der()), Some(1_941_840_000));
        assert_eq!(super::not_after(b"\x30\x03\x02\x01"), None);
        assert_eq!(super::not_after(&[]), None);
    }
}

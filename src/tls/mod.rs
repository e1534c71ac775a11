//! rustls in one place: loading PEM certificates and keys into server configs, the self-signed
//! certificate of the loopback default, and (in [`client`]) the sending side: STARTTLS on
//! delivery and HTTPS for MTA-STS policies. The ring provider is installed explicitly (no aws-lc).

pub mod client;

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

/// The server config of a listener (edge, engine, webmail): `cert` and `key` loaded, after
/// making a self-signed pair there first when `self_signed` is set and neither file exists
/// ([`self_signed_if_missing`] for `names`). Returns the leaf's notAfter too. Called at start
/// and on every reload, so a renewed pair on disk is what the next handshake shows.
pub fn listener_config(
    cert: &Path,
    key: &Path,
    self_signed: bool,
    names: &[String],
) -> Result<(Arc<ServerConfig>, Option<u64>), TlsError> {
    if self_signed && self_signed_if_missing(cert, key, names)? {
        tracing::info!(cert = %cert.display(), key = %key.display(), ?names, "made a self-signed certificate (tls_self_signed)");
    }
    server_config_with_expiry(cert, key)
}

/// The names a self-signed certificate of this host carries: its name, `localhost`, 127.0.0.1.
pub fn self_signed_names(hostname: &str) -> Vec<String> {
    let mut names = vec![hostname.to_owned()];
    for n in ["localhost", "127.0.0.1"] {
        if !names.iter().any(|x| x == n) {
            names.push(n.to_owned());
        }
    }
    names
}

/// Creates a self-signed certificate and its key at `cert` and `key` when neither file exists
/// (the first start of the loopback default, `tls_self_signed = true`); `Ok(false)` when both
/// exist (a certificate an operator put there, or one made before, is never replaced). The
/// certificate names `names` (DNS names or IP addresses) and is valid for ten years; the key
/// file is mode 0600. Edge, engine and webmail call this with the same paths to share one.
pub fn self_signed_if_missing(cert: &Path, key: &Path, names: &[String]) -> Result<bool, TlsError> {
    match (cert.exists(), key.exists()) {
        (true, true) => return Ok(false),
        (false, false) => {}
        (true, false) | (false, true) => {
            return Err(TlsError::Load {
                path: if cert.exists() { key } else { cert }.display().to_string(),
                msg: "missing while the other file of the pair exists: not generating over it"
                    .into(),
            });
        }
    }
    let fail = |p: &Path, msg: String| TlsError::Load {
        path: p.display().to_string(),
        msg,
    };
    let mut params = rcgen::CertificateParams::new(names.to_vec())
        .map_err(|e| fail(cert, format!("names {names:?}: {e}")))?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    let now = std::time::SystemTime::now();
    params.not_before = now.into();
    params.not_after = (now + std::time::Duration::from_secs(10 * 365 * 86_400)).into();
    let pair = rcgen::KeyPair::generate().map_err(|e| fail(key, e.to_string()))?;
    let made = params
        .self_signed(&pair)
        .map_err(|e| fail(cert, e.to_string()))?;
    for p in [cert, key] {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| fail(dir, e.to_string()))?;
        }
    }
    write_new(key, pair.serialize_pem().as_bytes(), 0o600).map_err(|e| fail(key, e.to_string()))?;
    write_new(cert, made.pem().as_bytes(), 0o644).map_err(|e| fail(cert, e.to_string()))?;
    Ok(true)
}

/// Writes a file that must not exist yet, with `mode` from the start (no window in which a
/// key is readable by others).
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The SHA-256 fingerprint of the first certificate in a PEM file, as browsers show it
/// (`AB:CD:…`), for the log line that lets a user check a self-signed certificate.
pub fn fingerprint_sha256(cert: &Path) -> Option<String> {
    let der = CertificateDer::pem_file_iter(cert).ok()?.next()?.ok()?;
    let digest = ring::digest::digest(&ring::digest::SHA256, der.as_ref());
    Some(
        digest
            .as_ref()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
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
    fn self_signed_is_made_once_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (
            dir.path().join("tls/cert.pem"),
            dir.path().join("tls/key.pem"),
        );
        let names = ["mx.test".to_owned(), "127.0.0.1".to_owned()];
        assert!(super::self_signed_if_missing(&cert, &key, &names).unwrap());
        let first = std::fs::read(&cert).unwrap();
        assert!(super::server_config(&cert, &key).is_ok());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Present: kept as it is.
        assert!(!super::self_signed_if_missing(&cert, &key, &names).unwrap());
        assert_eq!(std::fs::read(&cert).unwrap(), first);
        // Half a pair: refused rather than overwritten.
        std::fs::remove_file(&key).unwrap();
        assert!(super::self_signed_if_missing(&cert, &key, &names).is_err());
    }

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

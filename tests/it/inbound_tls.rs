//! Inbound STARTTLS as shipped: `tls_self_signed` makes the edge's and the engine's certificate
//! at first start when its files are missing, and a renewed pair written over the files is
//! what the next handshake shows after a reload (a broken one is refused, the old one stays).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use maildistiller::config::RoleSet;
use maildistiller::ops::Ops;
use maildistiller::tls::client::{Policy, handshake};

use crate::delivery_tls::self_signed;
use crate::engine::{TestEngine, reply};
use crate::mail::Sink;
use crate::support::{fleet_config, write};

/// STARTTLS to `addr`; `Ok` when the server's key is the one of `cert_pem`.
async fn shows(addr: SocketAddr, cert_pem: &str) -> Result<(), String> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    let pin = maildistiller::tls::client::spki_pin(&der).unwrap();
    let policy = Policy {
        roots: Arc::new(rustls::RootCertStore::empty()),
        require_verified: false,
        pins: vec![maildistiller::tls::client::parse_pin(&pin).unwrap()],
    };
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut s = tokio::io::BufReader::new(tcp);
    let banner = reply(&mut s, "").await;
    assert!(banner.starts_with("220"), "{banner}");
    let ehlo = reply(&mut s, "EHLO client.example\r\n").await;
    assert!(ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(reply(&mut s, "STARTTLS\r\n").await.starts_with("220"));
    handshake(s.into_inner(), "localhost", &policy)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Writes a renewed pair over `cert` and `key` (key first, as a renewal tool would do both).
fn renew(cert: &Path, key: &Path) -> String {
    let pair = self_signed(&["localhost"]);
    std::fs::write(key, &pair.key).unwrap();
    std::fs::write(cert, &pair.cert).unwrap();
    pair.cert
}

async fn reload(ops: &Arc<Ops>) {
    let ops = ops.clone();
    tokio::task::spawn_blocking(move || ops.reload())
        .await
        .unwrap()
        .expect("config reloads");
}

/// Made at start, renewed on reload, a broken renewal refused: for one listener.
async fn made_renewed_and_kept(addr: SocketAddr, ops: &Arc<Ops>, cert: &Path, key: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let made = std::fs::read_to_string(cert).expect("certificate made at start");
    let mode = std::fs::metadata(key).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "the key is private: {mode:o}");
    shows(addr, &made).await.expect("the made certificate");

    let renewed = renew(cert, key);
    assert!(
        shows(addr, &renewed).await.is_err(),
        "not before the reload"
    );
    reload(ops).await;
    let mut ok = false;
    for _ in 0..50 {
        if shows(addr, &renewed).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the renewed certificate after the reload");

    // A broken renewal: the reload keeps the certificate in force.
    std::fs::write(key, "not a key").unwrap();
    reload(ops).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    shows(addr, &renewed).await.expect("still the previous one");
}

fn tls_lines(dir: &Path) -> (PathBuf, PathBuf, String) {
    let (cert, key) = (dir.join("tls/cert.pem"), dir.join("tls/key.pem"));
    let lines = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\ntls_self_signed = true\n",
        cert.display(),
        key.display()
    );
    (cert, key, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_makes_its_certificate_and_follows_renewals() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, lines) = tls_lines(dir.path());
    assert!(!cert.exists());
    let text = fleet_config(&format!(
        "[ops]\nlisten = \"127.0.0.1:0\"\n[edge]\nlisten = [\"127.0.0.1:0\"]\nhostname = \"mx.test\"\nconnect_rate_per_ip = 1000\nconnect_rate_per_prefix = 1000\n{lines}"
    ));
    let file = write(dir.path(), "edge.toml", &text);
    let roles = RoleSet {
        edge: true,
        ..RoleSet::default()
    };
    let ops = Ops::new(maildistiller::node::load(&file, roles).expect("valid"));
    let bound = maildistiller::edge::bind(&ops).await.expect("edge binds");
    let addr = bound.smtp[0];
    tokio::spawn(bound.serving);
    made_renewed_and_kept(addr, &ops, &cert, &key).await;
    ops.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_makes_its_certificate_and_follows_renewals() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, lines) = tls_lines(dir.path());
    let (a, g) = (Sink::start().await, Sink::start().await);
    let e = TestEngine::start(&dir.path().join("spool"), a.addr, g.addr, &lines).await;
    made_renewed_and_kept(e.smtp, &e.ops, &cert, &key).await;
    e.stop().await;
}

//! The loopback default as a new user meets it: `config/maildistiller.toml` run by the real
//! binary (`--role all`, its ports moved to free ones and its files to a temp dir), nothing
//! prepared by hand. The edge offers STARTTLS; a message to acme (whose server is not running)
//! is held; the webmail page is up with the self-signed certificate made at first start, the
//! log names its SHA-256 fingerprint (the one the page presents), and the demo user the README
//! names signs in and sees the held message.

use std::collections::HashMap;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::harness::Browser;
use crate::mail::Client;
use crate::support::{bin, eventually, free_port, http, repo};

/// The demo user README.md and the config's comments name.
const DEMO_USER: &str = "bob@acme.example";
const DEMO_PASSWORD: &str = "bob-demo-password";

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sha256_hex(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    d.as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The log without its colours (ANSI escapes).
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut in_escape = false;
    for c in log.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (false, c) => out.push(c),
            (true, 'm') => in_escape = false,
            (true, _) => {}
        }
    }
    out
}

/// The shipped default with every `127.0.0.1:PORT` (and the silos' edge port) moved to a free
/// port, `../target/` to `dir` and `../geo/` to the repository's; returns it and the port map.
fn moved_default(dir: &std::path::Path) -> (String, HashMap<u16, u16>) {
    let text = std::fs::read_to_string(repo().join("config/maildistiller.toml")).unwrap();
    let mut ports = HashMap::new();
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("127.0.0.1:") {
        let (head, tail) = rest.split_at(at + "127.0.0.1:".len());
        out.push_str(head);
        let digits: String = tail.chars().take_while(char::is_ascii_digit).collect();
        let port: u16 = digits.parse().unwrap();
        // acme's server (10025) must stay down: a free port could be taken by another test's
        // server meanwhile, which would then take acme's mail. A bound socket that never
        // listens keeps the port from everyone and refuses connections.
        let new = *ports.entry(port).or_insert_with(|| match port {
            10025 => crate::support::refused_addr().port(),
            _ => free_port(),
        });
        out.push_str(&new.to_string());
        rest = &tail[digits.len()..];
    }
    out.push_str(rest);
    let edge = ports[&2525];
    let out = out
        .replace("edge_port = 2525", &format!("edge_port = {edge}"))
        .replace("\"../target/", &format!("\"{}/", dir.display()))
        .replace("\"../geo/", &format!("\"{}/geo/", repo().display()));
    (out, ports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loopback_default_serves_held_mail_to_its_demo_user_at_first_start() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    // Free ports are free when chosen, not when the child binds them: another test may take
    // one meanwhile. A start that could not bind (exit 71) is tried again with new ports.
    let mut started = None;
    for _ in 0..3 {
        let (text, ports) = moved_default(dir.path());
        assert!(
            text.contains(&format!("listen = [\"127.0.0.1:{}\"]", ports[&8443])),
            "the default turns webmail on"
        );
        let cfg = crate::support::write(dir.path(), "maildistiller.toml", &text);
        let child = bin()
            .args(["--role", "all", "--config", cfg.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let running = Arc::new(std::sync::Mutex::new(Running(child)));
        let ops: std::net::SocketAddr = format!("127.0.0.1:{}", ports[&9125]).parse().unwrap();
        let r = running.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            eventually(Duration::from_secs(60), || {
                if let Ok(Some(status)) = r.lock().unwrap().0.try_wait() {
                    return Some(Err(status.code()));
                }
                http(ops, "GET", "/readyz")
                    .filter(|(c, _)| *c == 200)
                    .map(|_| Ok(()))
            })
        })
        .await
        .unwrap();
        match outcome {
            Some(Ok(())) => {
                started = Some((running, ports));
                break;
            }
            Some(Err(Some(71))) => continue,
            other => panic!(
                "not ready within 60 s ({other:?}): {}",
                plain(&std::fs::read_to_string(&log).unwrap_or_default())
            ),
        }
    }
    let (_running, ports) = started.expect("started within three tries");
    let logged = plain(&std::fs::read_to_string(&log).unwrap_or_default());

    // The certificate was made at first start, and the log names its fingerprint.
    let cert_path = dir.path().join("tls/maildistiller.crt");
    let der = CertificateDer::from_pem_file(&cert_path).expect("a certificate made at first start");
    let line = logged
        .lines()
        .find(|l| l.contains("webmail listening"))
        .unwrap_or_else(|| panic!("{logged}"));
    let web: std::net::SocketAddr = format!("127.0.0.1:{}", ports[&8443]).parse().unwrap();
    assert!(line.contains(&format!("https://{web}/")), "the URL: {line}");
    let logged_fp = line
        .split("certificate_sha256=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(logged_fp, sha256_hex(der.as_ref()), "{line}");

    // The page presents that very certificate.
    maildistiller::tls::install_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.clone()).unwrap();
    let client = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(web).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .expect("the page's certificate names localhost");
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(sha256_hex(presented.as_ref()), logged_fp);

    // The edge offers STARTTLS, and takes a message for acme, whose server is not running.
    let edge: std::net::SocketAddr = format!("127.0.0.1:{}", ports[&2525]).parse().unwrap();
    let mut c = Client::connect(edge).await;
    let ehlo = c.cmd("EHLO newcomer.example", "250").await;
    assert!(ehlo.contains("STARTTLS"), "{ehlo}");
    let r = c
        .mail(
            "alice@example.org",
            &[DEMO_USER],
            "From: alice@example.org\r\nTo: bob@acme.example\r\nSubject: my first held message\r\n\r\nHello Bob.\r\n",
        )
        .await;
    assert!(r.starts_with("250"), "{r}");

    // The demo user signs in and finds it held.
    let mut b = Browser::new(web, &der);
    let r = b.try_login(DEMO_USER, DEMO_PASSWORD).await;
    assert_eq!((r.status, r.location()), (303, "/inbox"), "{}", r.text());
    let mut page = String::new();
    for _ in 0..200 {
        page = b.get("/inbox?view=held").await.text();
        if page.contains("my first held message") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(page.contains("my first held message"), "{page}");
}

/// `engine.webmail.tls_self_signed`: without it a missing certificate stops webmail from
/// starting (with the path in the error); with it the pair is made there and served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webmail_makes_its_certificate_only_when_told_to() {
    use super::harness::{Setup, cert, config_text, down_addr};
    use maildistiller::config::RoleSet;
    use maildistiller::ops::Ops;
    for self_signed in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let c = cert(dir.path());
        let made = dir.path().join("made");
        let mut s = Setup::new(down_addr(), down_addr());
        let line = format!("tls_self_signed = {self_signed}\n");
        s.webmail = &line;
        let text = config_text(dir.path(), &s, &c)
            .replace(
                &c.cert.display().to_string(),
                &made.join("page.crt").display().to_string(),
            )
            .replace(
                &c.key.display().to_string(),
                &made.join("page.key").display().to_string(),
            );
        let cfg = crate::support::write(dir.path(), "engine.toml", &text);
        let roles = RoleSet {
            engine: true,
            ..RoleSet::default()
        };
        let ops = Ops::new(maildistiller::node::load(&cfg, roles).expect("valid config"));
        let bound = maildistiller::engine::bind(&ops)
            .await
            .expect("engine binds");
        let web = maildistiller::webmail::bind(&ops, &bound.store).await;
        if !self_signed {
            let e = web.err().expect("no certificate, no page");
            assert!(e.to_string().contains("page.crt"), "{e}");
            assert!(!made.join("page.crt").exists());
            ops.shutdown.cancel();
            continue;
        }
        let web = web.expect("binds").expect("configured");
        let addr = web.addrs[0];
        tokio::spawn(web.serving);
        let der = CertificateDer::from_pem_file(made.join("page.crt")).expect("made at start");
        let mut b = Browser::new(addr, &der);
        assert_eq!(b.get("/login").await.status, 200);
        ops.shutdown.cancel();
    }
}

//! MTA-STS against a loopback DNS server (the `_mta-sts` TXT record, the policy host's address)
//! and a test HTTPS server serving the policy with a certificate of the test CA: the policy is
//! fetched, cached by id, and enforced (only matching MX hosts, and only over TLS that
//! verifies for the MX name); `testing` reports without refusing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use maildistiller::engine::delivery::client::{Client, ClientError, Target};
use maildistiller::engine::delivery::mta_sts::{Fetcher, Mode, MtaSts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Ca, Pair};
use crate::mail::Sink;

/// An HTTPS server answering every request with `body` as `text/plain`; counts requests.
async fn policy_server(pair: &Pair, body: &'static str) -> (u16, Arc<AtomicUsize>) {
    use rustls_pki_types::pem::PemObject;
    maildistiller::tls::install_provider();
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(pair.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(pair.key.as_bytes()).unwrap();
    let cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (acceptor, h) = (acceptor.clone(), h.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let mut req = vec![0u8; 2048];
                let n = tls.read(&mut req).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&req[..n]).into_owned();
                if !req.starts_with("GET /.well-known/mta-sts.txt ") {
                    let _ = tls.write_all(b"HTTP/1.0 404 Not Found\r\n\r\n").await;
                    return;
                }
                h.fetch_add(1, Ordering::SeqCst);
                let resp = format!(
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, hits)
}

/// The test CA as the only trust anchor.
fn roots(ca: &Ca) -> Arc<rustls::RootCertStore> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let der = rustls_pki_types::CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap();
    roots.add(der).unwrap();
    Arc::new(roots)
}

const ZONE: &str = r#"
[txt]
"_mta-sts.sender.test" = ["v=STSv1; id=20260101;"]
"_mta-sts.badcert.test" = ["v=STSv1; id=1;"]
[a]
"mta-sts.sender.test" = ["127.0.0.1"]
"mta-sts.badcert.test" = ["127.0.0.1"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enforced_policy_is_fetched_cached_and_allows_only_its_mx_over_verified_tls() {
    let ca = Ca::new();
    let dns = crate::scan::dns::start_zone(ZONE).await;
    let policy = "version: STSv1\r\nmode: enforce\r\nmx: *.sender.test\r\nmax_age: 86400\r\n";
    let (port, hits) = policy_server(&ca.leaf(&["mta-sts.sender.test"]), policy).await;
    let sts = MtaSts::new(Fetcher {
        resolver: Some(dns.addr),
        https_port: port,
        roots: roots(&ca),
    });

    let p = sts.policy("sender.test").await.expect("policy fetched");
    assert_eq!(p.mode, Mode::Enforce);
    assert_eq!(p.mx, ["*.sender.test"]);
    // Same TXT id: the cached policy, no second fetch.
    assert_eq!(sts.policy("Sender.Test.").await, Some(p.clone()));
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // A policy host whose certificate is not for its name: no policy (the RFC's fallback).
    assert_eq!(sts.policy("badcert.test").await, None);
    // No TXT record: no policy.
    assert_eq!(sts.policy("plain.test").await, None);

    // Only matching MX hosts are tried, in their order.
    let hosts = vec!["mx.attacker.example".into(), "mx1.sender.test".into()];
    let (plan, allowed) = sts.plan(Some(&p), hosts).unwrap();
    assert_eq!(allowed, ["mx1.sender.test"]);
    assert!(plan.requires_tls());
    let none = sts.plan(Some(&p), vec!["mx.attacker.example".into()]);
    assert!(
        none.unwrap_err()
            .contains("no MX (mx.attacker.example) matches")
    );

    // The MX's certificate must verify for the MX name.
    let sink = Sink::start().await;
    let connect = |host: &'static str| {
        let plan = plan.clone();
        let addr = sink.addr;
        async move {
            let to = Target {
                addr,
                host,
                plan: &plan,
            };
            let d = std::time::Duration::from_secs(5);
            Client::connect(&to, None, "mde1.test", d, d).await
        }
    };
    sink.offer_tls(ca.leaf(&["mx1.sender.test"]).get());
    let c = connect("mx1.sender.test").await.expect("verified TLS");
    assert!(c.tls.as_ref().is_some_and(|f| f.verified));
    c.quit().await;
    sink.offer_tls(ca.leaf(&["mx2.sender.test"]).get());
    let err = connect("mx1.sender.test").await.err().expect("refused");
    assert!(
        matches!(
            &err,
            ClientError::Tls {
                by: "MTA-STS enforce",
                ..
            }
        ),
        "{err}"
    );
    sink.offer_tls(None);
    let err = connect("mx1.sender.test").await.err().expect("refused");
    assert!(err.to_string().contains("STARTTLS not offered"), "{err}");
    assert_eq!(sink.plain_mail.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_testing_policy_reports_and_delivers() {
    let ca = Ca::new();
    let dns = crate::scan::dns::start_zone(ZONE).await;
    let policy = "version: STSv1\nmode: testing\nmx: mx.sender.test\nmax_age: 600\n";
    let (port, _) = policy_server(&ca.leaf(&["mta-sts.sender.test"]), policy).await;
    let sts = MtaSts::new(Fetcher {
        resolver: Some(dns.addr),
        https_port: port,
        roots: roots(&ca),
    });
    let p = sts.policy("sender.test").await.expect("policy fetched");
    assert_eq!(p.mode, Mode::Testing);
    // A non-matching MX stays (testing enforces nothing); the plan only reports.
    let (plan, allowed) = sts.plan(Some(&p), vec!["other.example".into()]).unwrap();
    assert_eq!(allowed, ["other.example"]);
    assert!(!plan.requires_tls());
    assert_eq!(plan.would_refuse(None).as_deref(), Some("no TLS"));
}

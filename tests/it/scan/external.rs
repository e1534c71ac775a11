//! External scanners: clamd (INSTREAM) and rspamd (`/checkv2`) against small fakes on
//! 127.0.0.1:0 that speak the real protocols, their failure modes (down, hanging, nonsense) under
//! each `on_failure` choice, and — when `MAILDISTILLER_CLAMD` names a running clamd (see
//! `tests/clamd/start.sh`) — the real clamd.

use std::net::SocketAddr;

use maildistiller::engine::policy::Disposition;
use maildistiller::engine::scan::Action;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::harness::{Mail, disposition, harness, has};

const EICAR: &[u8] = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

/// How a fake server behaves.
#[derive(Clone, Copy)]
pub(super) enum Fake {
    /// Speaks the protocol; finds EICAR anywhere in the bytes.
    Honest,
    /// Accepts and never answers.
    Hang,
}

/// A fake clamd on TCP: reads `zINSTREAM\0` and chunks, answers `stream: OK` or `FOUND`.
pub(super) async fn fake_clamd(mode: Fake) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut cmd = [0u8; 10];
                if s.read_exact(&mut cmd).await.is_err() || &cmd != b"zINSTREAM\0" {
                    return;
                }
                let mut data = Vec::new();
                loop {
                    let mut len = [0u8; 4];
                    if s.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let n = u32::from_be_bytes(len) as usize;
                    if n == 0 {
                        break;
                    }
                    let mut chunk = vec![0u8; n];
                    if s.read_exact(&mut chunk).await.is_err() {
                        return;
                    }
                    data.extend_from_slice(&chunk);
                }
                if let Fake::Hang = mode {
                    std::future::pending::<()>().await;
                }
                let found = data.windows(EICAR.len()).any(|w| w == EICAR);
                let reply: &[u8] = if found {
                    b"stream: Fake.EICAR FOUND\0"
                } else {
                    b"stream: OK\0"
                };
                let _ = s.write_all(reply).await;
            });
        }
    });
    addr
}

/// An address nothing listens on.
fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn clamd_policy(address: &str, on_failure: &str) -> String {
    format!(
        r#"
[policy.default.scanners]
antivirus = false
clamd = true
[policy.default.clamd]
address = "{address}"
timeout = "500ms"
on_failure = "{on_failure}"
"#
    )
}

#[tokio::test]
async fn clamd_finds_the_virus_the_builtin_scanner_is_off_for() {
    let addr = fake_clamd(Fake::Honest).await;
    let h = harness(&clamd_policy(&format!("tcp:{addr}"), "tempfail")).await;
    let v = h
        .scan_fixture(&Mail::from("alice@good.test"), "eicar.eml")
        .await;
    assert!(has(&v, "virus.clamd"), "{}", v.summary);
    assert!(v.summary.contains("Fake.EICAR"), "{}", v.summary);
    assert!(!has(&v, "virus.eicar"), "the built-in scanner is off");
    assert_eq!(disposition(&v), Disposition::Reject);
    let clean = h
        .scan_fixture(&Mail::from("alice@good.test"), "clean.eml")
        .await;
    assert_eq!(
        disposition(&clean),
        Disposition::Deliver,
        "{}",
        clean.summary
    );
}

#[tokio::test]
async fn clamd_down_temp_fails_when_the_policy_says_so() {
    let h = harness(&clamd_policy(&format!("tcp:{}", dead_addr()), "tempfail")).await;
    let v = h
        .scan_fixture(&Mail::from("alice@good.test"), "clean.eml")
        .await;
    let Action::TempFail { reply } = &v.action else {
        panic!("{:?}: {}", v.action, v.summary);
    };
    let reply = reply.to_string();
    assert!(
        reply.starts_with("451 4.7.1 ") && reply.contains("Q0TEST"),
        "{reply}"
    );
    assert!(v.summary.contains("clamd: unreachable"), "{}", v.summary);
}

#[tokio::test]
async fn clamd_down_fails_open_when_the_policy_says_so() {
    let h = harness(&clamd_policy(&format!("tcp:{}", dead_addr()), "accept")).await;
    let v = h
        .scan_fixture(&Mail::from("alice@good.test"), "clean.eml")
        .await;
    assert_eq!(v.action, Action::Deliver, "{}", v.summary);
    assert!(v.summary.contains("failures=\"clamd"), "{}", v.summary);
    assert!(v.headers.contains("failed=clamd"), "{}", v.headers);
}

#[tokio::test]
async fn clamd_that_never_answers_times_out() {
    let addr = fake_clamd(Fake::Hang).await;
    let h = harness(&clamd_policy(&format!("tcp:{addr}"), "tempfail")).await;
    let v = h
        .scan_fixture(&Mail::from("alice@good.test"), "clean.eml")
        .await;
    assert_eq!(disposition(&v), Disposition::TempFail, "{}", v.summary);
    assert!(v.summary.contains("timed out"), "{}", v.summary);
}

#[tokio::test]
async fn clamd_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clamd.sock");
    let l = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = vec![0u8; 1 << 16];
            let mut seen = Vec::new();
            // Read until the zero-length terminator chunk arrives.
            while !seen.ends_with(&[0, 0, 0, 0]) {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s.write_all(b"stream: OK\0").await;
        }
    });
    let h = harness(&clamd_policy(
        &format!("unix:{}", path.display()),
        "tempfail",
    ))
    .await;
    let v = h
        .scan_fixture(&Mail::from("alice@good.test"), "clean.eml")
        .await;
    assert_eq!(disposition(&v), Disposition::Deliver, "{}", v.summary);
    assert!(!v.summary.contains("failures="), "{}", v.summary);
}

/// The real clamd (`tests/clamd/start.sh`), at every address `MAILDISTILLER_CLAMD` lists
/// (comma-separated `tcp:HOST:PORT` / `unix:/PATH`). Skipped, saying why, when it is not set.
#[tokio::test]
async fn real_clamd_finds_eicar() {
    let Ok(addrs) = std::env::var("MAILDISTILLER_CLAMD") else {
        eprintln!(
            "skipped: MAILDISTILLER_CLAMD is not set (run tests/clamd/start.sh and export what it prints)"
        );
        return;
    };
    for addr in addrs.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        let h = harness(&format!(
            r#"
[policy.default.scanners]
antivirus = false
clamd = true
[policy.default.clamd]
address = "{addr}"
timeout = "30s"
on_failure = "tempfail"
"#
        ))
        .await;
        for file in ["eicar.eml", "virus-zip-forwarded.eml"] {
            let v = h.scan_fixture(&Mail::from("alice@good.test"), file).await;
            assert!(has(&v, "virus.clamd"), "{addr} {file}: {}", v.summary);
            assert!(v.summary.to_lowercase().contains("eicar"), "{}", v.summary);
        }
        let v = h
            .scan_fixture(&Mail::from("alice@good.test"), "clean.eml")
            .await;
        assert_eq!(
            disposition(&v),
            Disposition::Deliver,
            "{addr}: {}",
            v.summary
        );
    }
}

/// A fake rspamd: answers every `/checkv2` with `score`, after checking the envelope headers.
pub(super) async fn fake_rspamd(score: f64) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 8192];
                loop {
                    let Ok(n) = s.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    req.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&req);
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("Content-Length: "))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if body.len() >= len {
                            let ok = head.starts_with("POST /checkv2 ")
                                && head.contains("\r\nIP: 192.0.2.10")
                                && head.contains("\r\nRcpt: bob@acme.example");
                            let json = format!(
                                r#"{{"is_skipped":false,"score":{score},"required_score":15,"action":"add header","symbols":{{"FAKE_SYMBOL":{{"name":"FAKE_SYMBOL","score":{score}}}}}}}"#
                            );
                            let (status, body) = if ok {
                                ("200 OK", json)
                            } else {
                                ("400 Bad Request", "{}".to_owned())
                            };
                            let resp = format!(
                                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            let _ = s.write_all(resp.as_bytes()).await;
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn rspamd_score_is_added_with_its_weight() {
    let addr = fake_rspamd(6.0).await;
    let h = harness(&format!(
        r#"
[policy.default.scanners]
rspamd = true
[policy.default.rspamd]
address = "{addr}"
weight = 2.0
"#
    ))
    .await;
    let v = h
        .scan_fixture(&Mail::from("alice@good.test"), "clean.eml")
        .await;
    assert!(has(&v, "rspamd"), "{}", v.summary);
    assert!(v.summary.contains("FAKE_SYMBOL"), "{}", v.summary);
    // clean.eml scores -1 on its own; rspamd adds 6 x 2.
    assert_eq!(disposition(&v), Disposition::Quarantine, "{}", v.summary);
}

#[tokio::test]
async fn rspamd_down_fails_open_by_default() {
    let h = harness(&format!(
        r#"
[policy.default.scanners]
rspamd = true
[policy.default.rspamd]
address = "{}"
"#,
        dead_addr()
    ))
    .await;
    let v = h
        .scan_fixture(&Mail::from("alice@good.test"), "clean.eml")
        .await;
    assert_eq!(disposition(&v), Disposition::Deliver, "{}", v.summary);
    assert!(v.summary.contains("rspamd: unreachable"), "{}", v.summary);
}

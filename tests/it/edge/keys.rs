//! `[edge]` and engine-reference keys set away from their defaults, each with what a sender or
//! an operator sees change: the listeners' kernel backlog (`ss -lnt`), how many engines one
//! client's session tries before `451 4.4.0`, and an engine drained by config taking no new
//! sessions. Uses the edge tests' fleet (four in-process engines, an edge in lon1).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::{Fleet, by, client_from, msg};
use crate::mail::until;

impl Fleet {
    /// Rewrites the edge's config file with `edit` and reloads it, as an operator would.
    fn edit_and_reload(&self, edit: impl FnOnce(String) -> String) {
        let path = self._dir.path().join("edge.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let edited = edit(text.clone());
        assert_ne!(edited, text, "the edit changed nothing");
        std::fs::write(&path, edited).unwrap();
        self.edge_ops
            .reload()
            .unwrap_or_else(|e| panic!("reload refused: {e}"));
    }

    /// The `address = "…"` line of engine `i` in the edge's config.
    fn engine_line(&self, i: usize) -> String {
        let a = self.engines[i].as_ref().unwrap().proxy.unwrap();
        format!("address = \"{a}\"")
    }
}

/// `backlog = 7`: every SMTP listening socket of the edge has a kernel backlog of 7 (the
/// Send-Q column of `ss -lnt` for a listening socket), not the default 1024.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_is_the_listening_sockets_kernel_backlog() {
    let f = Fleet::start("backlog = 7", 100).await;
    let out = match std::process::Command::new("ss")
        .args(["-Hlnt", &format!("sport = :{}", f.smtp.port())])
        .output()
    {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        other => {
            eprintln!("skipped: `ss` (iproute2) is not available to read backlogs: {other:?}");
            return;
        }
    };
    let backlogs: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert!(!backlogs.is_empty(), "no listener on {}: {out}", f.smtp);
    assert!(backlogs.iter().all(|b| *b == "7"), "{out}");
}

/// A fake engine that passes the edge's health probes (PROXY v2 LOCAL, 220, EHLO, 250) and
/// hangs up on every client session (PROXY v2 with an address) before its greeting: an
/// engine that breaks sessions while its probes still pass.
async fn breaks_sessions() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 16];
                if s.read_exact(&mut head).await.is_err() {
                    return;
                }
                let mut rest = vec![0u8; usize::from(u16::from_be_bytes([head[14], head[15]]))];
                if s.read_exact(&mut rest).await.is_err() || head[12] & 0x0f != 0 {
                    return; // not LOCAL: a client's session, cut
                }
                let _ = s.write_all(b"220 fake.test ESMTP\r\n").await;
                let mut line = [0u8; 512];
                let _ = s.read(&mut line).await;
                let _ = s.write_all(b"250 fake.test\r\n").await;
                let _ = s.read(&mut line).await;
            });
        }
    });
    addr
}

/// `max_connect_attempts = 2`: with both lon1/uk engines breaking sessions, a client gets
/// `451 4.4.0` after two tries, where the default (4) goes on to fra1/uk. Raised to 3 by a
/// reload, the third try reaches fra1/uk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connect_attempts_bounds_the_engines_one_session_tries() {
    let f = Fleet::start("max_connect_attempts = 2", 100).await;
    let (bad0, bad1) = (breaks_sessions().await, breaks_sessions().await);
    let (e0, e1) = (f.engine_line(0), f.engine_line(1));
    f.edit_and_reload(|t| {
        t.replace(&e0, &format!("address = \"{bad0}\""))
            .replace(&e1, &format!("address = \"{bad1}\""))
    });
    let mut c = client_from("127.0.0.2", f.smtp).await;
    c.cmd("EHLO client.example", "250").await;
    c.cmd("MAIL FROM:<a@sender.example>", "250").await;
    c.cmd("RCPT TO:<bob@acme.example>", "451 4.4.0").await;
    c.cmd("QUIT", "221").await;

    f.edit_and_reload(|t| t.replace("max_connect_attempts = 2", "max_connect_attempts = 3"));
    let mut c = client_from("127.0.0.2", f.smtp).await;
    let r = c
        .mail("a@sender.example", &["bob@acme.example"], &msg("third try"))
        .await;
    assert!(r.starts_with("250"), "{r}");
    assert!(until(Duration::from_secs(10), || f.acme.messages().len() == 1).await);
    assert_eq!(by(&f.acme.messages()[0]), "e2.test", "fra1/uk took it");
}

/// `[[silo.cluster.engine]] drain = true`, reloaded: the drained engine takes no new sessions,
/// its cluster peer takes them all (undrained, the two share them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_drained_in_config_takes_no_new_sessions() {
    let f = Fleet::start("", 100).await;
    let e0 = f.engine_line(0);
    f.edit_and_reload(|t| t.replace(&e0, &format!("{e0}\n    drain = true")));
    for i in 0..10 {
        let mut c = client_from("127.0.0.2", f.smtp).await;
        let r = c
            .mail(
                "a@sender.example",
                &["bob@acme.example"],
                &msg(&format!("d{i}")),
            )
            .await;
        assert!(r.starts_with("250"), "{r}");
        c.cmd("QUIT", "221").await;
    }
    assert!(until(Duration::from_secs(10), || f.acme.messages().len() == 10).await);
    let engines: Vec<String> = f.acme.messages().iter().map(by).collect();
    assert!(engines.iter().all(|e| e == "e1.test"), "{engines:?}");
}

//! What the recipient-verification tests stand on: a tenant's server (the recording sink)
//! behind a gate that can be shut and opened again on the same address and that shows each
//! connection's commands; an engine whose `acme` tenant verifies; an edge in front of it; and
//! the small questions the tests ask (one RCPT's reply, one metric).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use maildistiller::config::RoleSet;
use maildistiller::ops::Ops;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use crate::engine::TestEngine;
use crate::mail::{Client, Sink};
use crate::support::{ops_token, write};

/// A forwarder in front of a tenant's server: `close` makes the address refuse connections
/// (the server is down), `open` brings it back; `sessions` shows what each connection sent.
pub struct Gate {
    pub addr: SocketAddr,
    to: SocketAddr,
    /// Each connection's client bytes, in order of connection.
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    /// New connections are taken and never answered (a server that hangs).
    silent: Arc<std::sync::atomic::AtomicBool>,
}

impl Gate {
    pub async fn start(to: SocketAddr) -> Gate {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut g = Gate {
            addr: l.local_addr().unwrap(),
            to,
            seen: Arc::default(),
            tasks: Arc::default(),
            silent: Arc::default(),
        };
        g.serve(l);
        g
    }

    fn serve(&mut self, l: TcpListener) {
        let (to, seen, tasks) = (self.to, self.seen.clone(), self.tasks.clone());
        let silent = self.silent.clone();
        let accept = tokio::spawn(async move {
            let mut hanging = Vec::new();
            while let Ok((client, _)) = l.accept().await {
                if silent.load(std::sync::atomic::Ordering::SeqCst) {
                    hanging.push(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(to).await else {
                    continue;
                };
                let i = {
                    let mut s = seen.lock().unwrap();
                    s.push(Vec::new());
                    s.len() - 1
                };
                let seen = seen.clone();
                let t = tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async {
                        let mut buf = [0u8; 4096];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            seen.lock().unwrap()[i].extend_from_slice(&buf[..n]);
                            if tokio::io::AsyncWriteExt::write_all(&mut sw, &buf[..n])
                                .await
                                .is_err()
                            {
                                break;
                            }
                        }
                        let _ = tokio::io::AsyncWriteExt::shutdown(&mut sw).await;
                    };
                    let down = tokio::io::copy(&mut sr, &mut cw);
                    let _ = tokio::join!(up, down);
                });
                tasks.lock().unwrap().push(t.abort_handle());
            }
        });
        self.tasks.lock().unwrap().push(accept.abort_handle());
    }

    /// The server goes down: the address refuses connections, open ones are cut.
    pub fn close(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    /// New connections are accepted and never greeted (a hanging server).
    pub fn hang(&self) {
        self.silent.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// The server is back on the same address.
    pub async fn open(&mut self) {
        let mut tries = 0;
        let l = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    tracing::debug!(error = %e, "gate address not free yet");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("cannot reopen the gate on {}: {e}", self.addr),
            }
        };
        self.serve(l);
    }

    /// What each connection sent so far.
    pub fn sessions(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    /// Connections that asked about `rcpt` without sending a message: probes.
    pub fn probes_of(&self, rcpt: &str) -> usize {
        let needle = format!("RCPT TO:<{rcpt}>");
        self.sessions()
            .iter()
            .map(|s| {
                if s.contains("DATA") {
                    0
                } else {
                    s.matches(&needle).count()
                }
            })
            .sum()
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.close();
    }
}

/// Engine settings for tests: quick delivery retries and down-detection.
pub const FAST: &str = r#"
[engine.delivery]
retry_base = "200ms"
retry_max = "1s"
dead_after = 2
probe_interval = "200ms"
connect_timeout = "1s"
"#;

/// A tenant's server (sink) behind a gate, and an engine whose `acme` delivers through the
/// gate, with `acme_extra` lines for the tenant and `engine_extra` after `[engine]`.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub sink: Sink,
    pub gate: Gate,
    pub engine: TestEngine,
}

impl Setup {
    pub async fn start(acme_extra: &str, engine_extra: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        Setup::start_in(dir, acme_extra, engine_extra, false).await
    }

    /// Like `start`, the engine also listening for an edge (PROXY from loopback).
    pub async fn start_in(
        dir: tempfile::TempDir,
        acme_extra: &str,
        engine_extra: &str,
        for_edge: bool,
    ) -> Setup {
        let sink = Sink::start().await;
        let gate = Gate::start(sink.addr).await;
        let globex = Sink::start().await;
        let spool = dir.path().join("spool");
        let proxy = if for_edge {
            "proxy_listen = [\"127.0.0.1:0\"]\ntrusted_proxies = [\"127.0.0.0/8\"]\n"
        } else {
            ""
        };
        let extra = format!("{proxy}{engine_extra}\n{FAST}");
        let engine = TestEngine::start_full(
            &spool,
            gate.addr,
            globex.addr,
            &extra,
            "mde1.test",
            acme_extra,
        )
        .await;
        Setup {
            dir,
            sink,
            gate,
            engine,
        }
    }

    /// One RCPT to the engine in a session of its own: its reply.
    pub async fn rcpt(&self, address: &str) -> String {
        rcpt_at(self.engine.smtp, address).await
    }

    /// `maildistiller_engine_rcpt_verify_total` for acme and `result`.
    pub fn verified(&self, result: &str) -> u64 {
        metric(
            &self.engine.ops,
            "maildistiller_engine_rcpt_verify_total{",
            &["tenant=\"acme\"", &format!("result=\"{result}\"")],
        )
    }
}

/// One RCPT in a session of its own (EHLO, MAIL, RCPT, QUIT): the RCPT's reply.
pub async fn rcpt_at(server: SocketAddr, address: &str) -> String {
    let mut c = Client::connect(server).await;
    c.cmd("EHLO client.example", "250").await;
    c.cmd("MAIL FROM:<alice@sender.example>", "250").await;
    let r = c.cmd(&format!("RCPT TO:<{address}>"), "").await;
    c.send(b"QUIT\r\n").await;
    r
}

/// The value of the sample of `family` whose labels include every one of `labels` (0 when
/// there is none yet).
pub fn metric(ops: &Ops, family: &str, labels: &[&str]) -> u64 {
    ops.metrics
        .render()
        .lines()
        .filter(|l| l.starts_with(family) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// An edge in front of `engine` (its PROXY listener), for the tenants `acme` (with
/// `acme_extra`) and `globex`. Returns its SMTP address and its ops (cancel to stop).
pub async fn edge(dir: &Path, engine: SocketAddr, acme_extra: &str) -> (SocketAddr, Arc<Ops>) {
    let text = format!(
        r#"
[node]
silo = "lon1"
[ops]
listen = "127.0.0.1:0"
{token}
[regions.uk]
[[silo]]
name = "lon1"
hostname = "lon1.test"
lat = 51.5
lon = -0.12
  [[silo.cluster]]
  name = "uk"
  region = "uk"
    [[silo.cluster.engine]]
    address = "{engine}"
[[tenant]]
id = "acme"
domains = ["acme.example"]
regions = ["uk"]
delivery = ["127.0.0.1:9"]
{acme_extra}
[[tenant]]
id = "globex"
domains = ["globex.example"]
regions = ["uk"]
delivery = ["127.0.0.1:9"]
[edge]
listen = ["127.0.0.1:0"]
hostname = "edge.test"
  [edge.health]
  interval = "100ms"
  timeout = "100ms"
  rise = 1
  fall = 2
"#,
        token = ops_token(dir),
    );
    let cfg = write(dir, "edge.toml", &text);
    let roles = RoleSet {
        edge: true,
        ..RoleSet::default()
    };
    let snap = maildistiller::node::load(&cfg, roles).expect("edge config valid");
    let ops = Ops::new(snap);
    let bound = maildistiller::edge::bind(&ops).await.expect("edge binds");
    let smtp = bound.smtp[0];
    tokio::spawn(bound.serving);
    (smtp, ops)
}

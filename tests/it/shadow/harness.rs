//! The shadow tests' helper language: a cluster of engines in-process, each with its own spool,
//! shadow listener (bound on 127.0.0.1:0 first, then named in the fleet), ops listener and
//! operator token; engines stopped and started again on the same (or a wiped) spool; a proxy
//! that can cut the links between two engines.
//!
//! `let c = Cluster::new(2, opts).await; let a = c.start(0).await; a.send("subject").await;`

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use maildistiller::config::RoleSet;
use maildistiller::engine;
use maildistiller::ops::Ops;
use maildistiller::shadow::Replicator;
use maildistiller::store::{QueueId, Store};
use tokio::net::TcpListener;

use crate::mail::{Client, until};
use crate::support::{ops_token, write};

pub const SECRET: &str = "shadow-test-secret-0123456789abcdef";

/// How the cluster is configured.
#[derive(Clone)]
pub struct Opts {
    pub on_failure: &'static str,
    pub takeover_after: &'static str,
    pub timeout: &'static str,
    /// Where acme's mail goes (a sink, or an address where nothing listens: held mail).
    pub acme: SocketAddr,
    /// Engines whose shadow address in the fleet is a proxy (index -> proxy address).
    pub via: Vec<(usize, SocketAddr)>,
    /// Engines configured with another secret than the cluster's.
    pub secret_of: Vec<(usize, &'static str)>,
}

impl Opts {
    pub fn new(acme: SocketAddr) -> Opts {
        Opts {
            on_failure: "tempfail",
            takeover_after: "1h",
            timeout: "2s",
            acme,
            via: Vec::new(),
            secret_of: Vec::new(),
        }
    }
}

/// A running engine of the cluster; dropped = shut down.
pub struct Node {
    pub ops: Arc<Ops>,
    pub store: Store,
    pub shadow: Replicator,
    pub smtp: SocketAddr,
    pub ops_addr: SocketAddr,
    /// Its id in the fleet (its `[[silo.cluster.engine]] address`).
    pub id: String,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Node {
    /// Sends one message to `bob@acme.example`; returns the reply to the data.
    pub async fn send(&self, subject: &str) -> String {
        self.send_sized(subject, 0).await
    }

    /// Like [`Node::send`], with `pad` bytes of body.
    pub async fn send_sized(&self, subject: &str, pad: usize) -> String {
        let mut c = Client::connect(self.smtp).await;
        let body = format!(
            "From: a@sender.example\r\nTo: bob@acme.example\r\nSubject: {subject}\r\n\r\nHello.\r\n{}\r\n",
            "y".repeat(pad)
        );
        c.mail("a@sender.example", &["bob@acme.example"], &body)
            .await
    }

    /// Sends and expects a 250; returns the queue id.
    pub async fn accept(&self, subject: &str) -> QueueId {
        let r = self.send(subject).await;
        assert!(r.starts_with("250"), "{subject}: {r}");
        let id = r
            .split("queued as ")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        QueueId::parse(id).unwrap()
    }

    /// A metric's value on this engine (summed over its labels).
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.ops.metrics.render();
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The copies this engine holds for `primary` (held, not taken over).
    pub fn holds_for(&self, primary: &Node) -> Vec<QueueId> {
        let mut v: Vec<QueueId> = self
            .shadow
            .log()
            .of_primary(&primary.id)
            .into_iter()
            .filter(|(_, e)| matches!(e, maildistiller::shadow::Entry::Held(_)))
            .map(|(id, _)| id)
            .collect();
        v.sort();
        v
    }

    /// Graceful stop; waits for the drain.
    pub async fn stop(mut self) {
        self.ops.shutdown.cancel();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.ops.shutdown.cancel();
    }
}

/// A cluster's configuration and directories; engines are started from it.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    /// Where each engine's shadow listener is (its own address, even when the fleet names a
    /// proxy).
    pub listen: Vec<SocketAddr>,
    first: std::sync::Mutex<Vec<Option<TcpListener>>>,
    pub opts: Opts,
}

impl Cluster {
    pub async fn new(n: usize, opts: Opts) -> Cluster {
        let mut listen = Vec::new();
        let mut first = Vec::new();
        for _ in 0..n {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listen.push(l.local_addr().unwrap());
            first.push(Some(l));
        }
        Cluster {
            dir: tempfile::tempdir().unwrap(),
            listen,
            first: std::sync::Mutex::new(first),
            opts,
        }
    }

    pub fn id(i: usize) -> String {
        format!("127.0.0.1:{}", 1001 + i)
    }

    /// The address the fleet gives engine `i` for copies (a proxy, or its listener).
    pub fn fleet_shadow(&self, i: usize) -> SocketAddr {
        self.opts
            .via
            .iter()
            .find(|(k, _)| *k == i)
            .map_or(self.listen[i], |(_, a)| *a)
    }

    pub fn spool(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("e{i}")).join("spool")
    }

    fn config(&self, i: usize) -> String {
        let o = &self.opts;
        let engines: String = (0..self.listen.len())
            .map(|k| {
                format!(
                    "    [[silo.cluster.engine]]\n    address = \"{}\"\n    shadow = \"{}\"\n",
                    Self::id(k),
                    self.fleet_shadow(k)
                )
            })
            .collect();
        let dir = self.dir.path().join(format!("e{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        format!(
            r#"
[ops]
listen = "127.0.0.1:0"
{token}
[regions.uk]
[[silo]]
name = "lon1"
hostname = "lon1.test"
lat = 51.5
lon = -0.1
  [[silo.cluster]]
  name = "uk"
  region = "uk"
{engines}
[[tenant]]
id = "acme"
domains = ["acme.example"]
regions = ["uk"]
delivery = ["{acme}"]
[policy.default]
scanners = {{ auth = false, dnsbl = false }}
rule = [{{ name = "quarantine-me", target = "subject", pattern = "QUARANTINE", action = "quarantine" }}]
[engine]
listen = ["127.0.0.1:0"]
spool_dir = "{spool}"
hostname = "e{i}.test"
redundancy = "shadow"
on_shadow_failure = "{fail}"
takeover_after = "{after}"
[engine.shadow]
listen = ["{me}"]
secret = "{SECRET}"
timeout = "{timeout}"
[engine.delivery]
retry_base = "200ms"
retry_max = "1s"
dead_after = 2
probe_interval = "200ms"
connect_timeout = "1s"
"#,
            token = ops_token(&dir),
            acme = o.acme,
            spool = self.spool(i).display(),
            fail = o.on_failure,
            after = o.takeover_after,
            me = self.fleet_shadow(i),
            timeout = o.timeout,
            SECRET = o
                .secret_of
                .iter()
                .find(|(k, _)| *k == i)
                .map_or(SECRET, |(_, s)| *s),
        )
    }

    /// Starts engine `i` (its first start takes the listener bound in `new`; later ones bind
    /// the same address again).
    pub async fn start(&self, i: usize) -> Node {
        let cfg = write(
            &self.dir.path().join(format!("e{i}")),
            "engine.toml",
            &self.config(i),
        );
        let roles = RoleSet {
            engine: true,
            ..RoleSet::default()
        };
        let snap =
            maildistiller::node::load(&cfg, roles).unwrap_or_else(|e| panic!("test config: {e}"));
        let ops = Ops::new(snap);
        let first = self.first.lock().unwrap()[i].take();
        let l = match first {
            Some(l) => l,
            None => {
                let mut tries = 0;
                loop {
                    match TcpListener::bind(self.listen[i]).await {
                        Ok(l) => break l,
                        Err(e) if tries < 100 => {
                            tries += 1;
                            let _ = e;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => panic!("rebind {}: {e}", self.listen[i]),
                    }
                }
            }
        };
        let bound = engine::bind_with(&ops, vec![l])
            .await
            .expect("engine binds");
        let ops_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ops_addr = ops_l.local_addr().unwrap();
        let _ = ops.ops_addr.set(ops_addr);
        let shadow = bound
            .shadow
            .clone()
            .expect("shadow redundancy is configured");
        let store = bound.store.clone();
        let smtp = bound.addrs[0];
        let task = tokio::spawn(bound.serving);
        tokio::spawn(maildistiller::ops::serve(ops.clone(), ops_l));
        ops.set_ready(true);
        Node {
            ops,
            store,
            shadow,
            smtp,
            ops_addr,
            id: Self::id(i),
            task: Some(task),
        }
    }

    /// Starts every engine (without waiting for links).
    pub async fn start_each(&self) -> Vec<Node> {
        let mut v = Vec::new();
        for i in 0..self.listen.len() {
            v.push(self.start(i).await);
        }
        v
    }

    /// Starts every engine and waits until each has its links up.
    pub async fn start_all(&self) -> Vec<Node> {
        let mut v = Vec::new();
        for i in 0..self.listen.len() {
            v.push(self.start(i).await);
        }
        for n in &v {
            wait_links(n, self.listen.len() - 1).await;
        }
        v
    }
}

/// Waits (bounded) until `n` has `up` links up.
pub async fn wait_links(n: &Node, up: usize) {
    let ok = until(Duration::from_secs(20), || {
        n.metric("maildistiller_engine_shadow_peer_up") as usize >= up
    })
    .await;
    assert!(
        ok,
        "engine {} has {} links up, wanted {up}",
        n.id,
        n.metric("maildistiller_engine_shadow_peer_up")
    );
}

/// A TCP proxy to `to` that can be cut (every connection closed, new ones refused) and healed.
pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<std::sync::atomic::AtomicBool>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Proxy {
    pub async fn start(to: SocketAddr) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, _) = tokio::sync::watch::channel(0u64);
        let generation = Arc::new(tx);
        let (c2, g2) = (cut.clone(), generation.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut a, _)) = l.accept().await else {
                    continue;
                };
                if c2.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(a);
                    continue;
                }
                let mut cut_now = g2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut b) = tokio::net::TcpStream::connect(to).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                        _ = cut_now.changed() => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            cut,
            generation,
        }
    }

    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Subjects the sink got, with how many times each.
pub fn delivered(sink: &crate::mail::Sink) -> std::collections::HashMap<String, usize> {
    let mut m = std::collections::HashMap::new();
    for g in sink.messages() {
        if let Some(s) = g.data.lines().find_map(|l| l.strip_prefix("Subject: ")) {
            *m.entry(s.to_owned()).or_insert(0) += 1;
        }
    }
    m
}

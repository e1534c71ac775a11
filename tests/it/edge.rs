//! The edge in-process in front of real engines (ours, in-process) in two silos: routing by
//! tenant and region, failover and spill-over, admission limits, PIPELINING, STARTTLS through
//! the edge, the real client address at the engine, layer-4 mode.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use maildistiller::config::RoleSet;
use maildistiller::edge;
use maildistiller::ops::Ops;

use crate::engine::TestEngine;
use crate::mail::{Client, Sink, until};
use crate::support::{OPS_TOKEN, ops_token, write};

mod keys; // [edge] keys away from their defaults: backlog, connect attempts, engine drain
mod layer4; // the layer-4 relay under real sessions: megabytes byte for byte, half-close
mod overload; // a busy engine: its 451 4.3.2 relayed, the next connections refused at once with 421 4.3.2

/// Four engines: lon1/uk (e0, e1), fra1/uk (e2), fra1/de (e3); an edge in lon1.
pub(crate) struct Fleet {
    _dir: tempfile::TempDir,
    engines: Vec<Option<TestEngine>>,
    pub(crate) acme: Sink,
    globex: Sink,
    edge_ops: Arc<Ops>,
    pub(crate) smtp: SocketAddr,
    tcp: SocketAddr,
}

impl Fleet {
    pub(crate) async fn start(edge_extra: &str, engine_max: u32) -> Fleet {
        Fleet::start_with(edge_extra, engine_max, "").await
    }

    /// `engine_extra` is appended to every engine's `[engine]`.
    pub(crate) async fn start_with(edge_extra: &str, engine_max: u32, engine_extra: &str) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let (acme, globex) = (Sink::start().await, Sink::start().await);
        let mut engines = Vec::new();
        for i in 0..4 {
            let spool = dir.path().join(format!("e{i}")).join("spool");
            std::fs::create_dir_all(spool.parent().unwrap()).unwrap();
            let extra = format!(
                "proxy_listen = [\"127.0.0.1:0\"]\ntrusted_proxies = [\"127.0.0.0/8\"]\n{engine_extra}"
            );
            engines.push(Some(
                TestEngine::start_named(
                    &spool,
                    acme.addr,
                    globex.addr,
                    &extra,
                    &format!("e{i}.test"),
                )
                .await,
            ));
        }
        let a: Vec<SocketAddr> = engines
            .iter()
            .map(|e| e.as_ref().unwrap().proxy.unwrap())
            .collect();
        let text = format!(
            r#"
[node]
silo = "lon1"
[ops]
listen = "127.0.0.1:0"
{token}
[[geo.override]]
cidr = "127.0.0.2/32"
country = "GB"
[[geo.override]]
cidr = "127.0.0.3/32"
country = "DE"
[regions.uk]
[regions.de]
[[silo]]
name = "lon1"
hostname = "lon1.test"
lat = 51.5
lon = -0.12
  [[silo.cluster]]
  name = "uk"
  region = "uk"
    [[silo.cluster.engine]]
    address = "{a0}"
    max_connections = {engine_max}
    [[silo.cluster.engine]]
    address = "{a1}"
    max_connections = {engine_max}
[[silo]]
name = "fra1"
hostname = "fra1.test"
lat = 50.11
lon = 8.68
  [[silo.cluster]]
  name = "uk"
  region = "uk"
    [[silo.cluster.engine]]
    address = "{a2}"
    max_connections = {engine_max}
  [[silo.cluster]]
  name = "de"
  region = "de"
    [[silo.cluster.engine]]
    address = "{a3}"
    max_connections = {engine_max}
[[tenant]]
id = "acme"
domains = ["acme.example"]
regions = ["uk"]
delivery = ["127.0.0.1:9"]
[[tenant]]
id = "globex"
domains = ["globex.example"]
regions = ["de"]
failover = "any"
delivery = ["127.0.0.1:9"]
[edge]
listen = ["127.0.0.1:0"]
tcp_listen = ["127.0.0.1:0"]
hostname = "edge.test"
connect_timeout = "500ms"
{edge_extra}
  [edge.health]
  interval = "100ms"
  timeout = "100ms"
  rise = 1
  fall = 2
"#,
            a0 = a[0],
            a1 = a[1],
            a2 = a[2],
            a3 = a[3],
            token = ops_token(dir.path()),
        );
        let cfg = write(dir.path(), "edge.toml", &text);
        let roles = RoleSet {
            edge: true,
            ..RoleSet::default()
        };
        let snap = maildistiller::node::load(&cfg, roles).expect("edge config valid");
        let ops = Ops::new(snap);
        let bound = edge::bind(&ops).await.expect("edge binds");
        let (smtp, tcp) = (bound.smtp[0], bound.tcp[0]);
        tokio::spawn(bound.serving);
        Fleet {
            _dir: dir,
            engines,
            acme,
            globex,
            edge_ops: ops,
            smtp,
            tcp,
        }
    }

    /// Stops engine `i` (its port closes).
    async fn kill(&mut self, i: usize) {
        if let Some(e) = self.engines[i].take() {
            e.stop().await;
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.edge_ops.shutdown.cancel();
    }
}

/// Connects from a chosen loopback source address (the geo overrides place 127.0.0.2 in GB).
pub(crate) async fn client_from(src: &str, edge: SocketAddr) -> Client {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    let s = sock.connect(edge).await.unwrap();
    let mut c = Client::from_stream(s);
    c.expect("220 edge.test").await;
    c
}

fn msg(subject: &str) -> String {
    format!("Subject: {subject}\r\n\r\nbody\r\n")
}

/// Which engine (by host name) handled a delivered message.
fn by(m: &crate::mail::Got) -> String {
    m.data
        .split("\tby ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap_or("?")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_tenant_region_and_carries_the_real_client_address() {
    let f = Fleet::start("", 100).await;
    let mut c = client_from("127.0.0.2", f.smtp).await;
    let r = c
        .mail("alice@sender.example", &["bob@acme.example"], &msg("uk"))
        .await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as"), "{r}");
    c.cmd("RSET", "250").await;
    let r = c
        .mail(
            "alice@sender.example",
            &["known@globex.example"],
            &msg("de"),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    c.cmd("QUIT", "221").await;
    assert!(
        until(Duration::from_secs(10), || f.acme.messages().len() == 1
            && f.globex.messages().len() == 1)
        .await
    );
    let uk = &f.acme.messages()[0];
    assert!(
        ["e0.test", "e1.test"].contains(&by(uk).as_str()),
        "acme goes to lon1/uk: {}",
        by(uk)
    );
    assert!(
        uk.data
            .starts_with("Received: from client.example ([127.0.0.2])"),
        "the engine saw the real client: {}",
        uk.data
    );
    assert_eq!(
        by(&f.globex.messages()[0]),
        "e3.test",
        "globex goes to its DE cluster"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_domains_other_tenants_and_pipelining() {
    let f = Fleet::start("", 100).await;
    let mut c = client_from("127.0.0.2", f.smtp).await;
    c.cmd("EHLO client.example", "250").await;
    c.send(b"MAIL FROM:<a@sender.example>\r\nRCPT TO:<x@acme.example>\r\nRCPT TO:<y@globex.example>\r\nRCPT TO:<z@elsewhere.example>\r\nRCPT TO:<w@acme.example>\r\nDATA\r\n").await;
    c.expect("250 2.1.0").await;
    c.expect("250 2.1.5").await;
    c.expect("452 4.5.3").await;
    c.expect("550 5.7.1").await;
    c.expect("250 2.1.5").await;
    c.expect("354").await;
    c.send(b"Subject: p\r\n\r\nx\r\n.\r\nRSET\r\nMAIL FROM:<a@sender.example>\r\nRCPT TO:<known@globex.example>\r\nDATA\r\n").await;
    c.expect("250 2.0.0 Ok").await;
    c.expect("250").await;
    c.expect("250 2.1.0").await;
    c.expect("250 2.1.5").await;
    c.expect("354").await;
    c.send(b"Subject: q\r\n\r\nx\r\n.\r\nQUIT\r\n").await;
    c.expect("250 2.0.0 Ok").await;
    c.expect("221").await;
    assert!(
        until(Duration::from_secs(10), || f.acme.messages().len() == 1
            && f.globex.messages().len() == 1)
        .await
    );
    assert_eq!(
        f.acme.messages()[0].rcpts,
        ["x@acme.example", "w@acme.example"]
    );
    assert_eq!(
        by(&f.globex.messages()[0]),
        "e3.test",
        "the second transaction was routed afresh"
    );
    // Never an open relay, even as the first recipient.
    let mut c = client_from("127.0.0.2", f.smtp).await;
    c.cmd("EHLO client.example", "250").await;
    c.cmd("MAIL FROM:<a@sender.example>", "250").await;
    c.cmd("RCPT TO:<victim@gmail.example>", "550 5.7.1").await;
    c.cmd("DATA", "554").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_the_next_silo_and_region_only_never_leaves_the_region() {
    let mut f = Fleet::start("", 100).await;
    f.kill(0).await;
    f.kill(1).await;
    // Even before health checks notice, a failed connect moves on to the next engine/cluster.
    let mut c = client_from("127.0.0.2", f.smtp).await;
    assert!(
        c.mail("a@sender.example", &["bob@acme.example"], &msg("failover"))
            .await
            .starts_with("250")
    );
    assert!(until(Duration::from_secs(10), || f.acme.messages().len() == 1).await);
    assert_eq!(by(&f.acme.messages()[0]), "e2.test", "fra1/uk took it");
    // Every UK engine down: acme (region-only) gets a 4xx, never the DE cluster.
    f.kill(2).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut c = client_from("127.0.0.2", f.smtp).await;
    c.cmd("EHLO client.example", "250").await;
    c.cmd("MAIL FROM:<a@sender.example>", "250").await;
    c.cmd("RCPT TO:<bob@acme.example>", "451 4.4.0").await;
    // Globex (failover = any) still has its DE cluster.
    c.cmd("RSET", "250").await;
    c.cmd("MAIL FROM:<a@sender.example>", "250").await;
    c.cmd("RCPT TO:<known@globex.example>", "250").await;
    let (_, status) = tokio::task::spawn_blocking({
        let ops = f.edge_ops.clone();
        move || {
            let r = maildistiller::ops::esc("x");
            (
                r,
                ops.status_sections()
                    .iter()
                    .map(|s| s.html())
                    .collect::<String>(),
            )
        }
    })
    .await
    .unwrap();
    assert!(
        status.matches(">DOWN<").count() >= 3,
        "health shows the dead engines: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_cluster_spills_over_to_the_next() {
    let f = Fleet::start("", 1).await;
    // Two sessions fill lon1/uk (e0, e1: one session each).
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = client_from("127.0.0.2", f.smtp).await;
        c.cmd("EHLO client.example", "250").await;
        c.cmd("MAIL FROM:<a@sender.example>", "250").await;
        c.cmd("RCPT TO:<bob@acme.example>", "250").await;
        held.push(c);
    }
    let mut c = client_from("127.0.0.2", f.smtp).await;
    assert!(
        c.mail("a@sender.example", &["bob@acme.example"], &msg("spill"))
            .await
            .starts_with("250")
    );
    assert!(until(Duration::from_secs(10), || f.acme.messages().len() == 1).await);
    assert_eq!(by(&f.acme.messages()[0]), "e2.test", "spilled to fra1/uk");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_limits_answer_before_the_banner() {
    let f = Fleet::start(
        "max_connections_per_ip = 2\nmax_connections_per_prefix = 2\ndeny = [\"127.0.0.9/32\"]\n",
        100,
    )
    .await;
    let _a = client_from("127.0.0.5", f.smtp).await;
    let _b = client_from("127.0.0.5", f.smtp).await;
    let mut c = Client::from_stream({
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.5:0".parse().unwrap()).unwrap();
        sock.connect(f.smtp).await.unwrap()
    });
    c.expect("421 4.7.0").await;
    let mut d = Client::from_stream({
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.9:0".parse().unwrap()).unwrap();
        sock.connect(f.smtp).await.unwrap()
    });
    d.expect("554 5.7.1").await;
}

/// What the sender is told after DATA is the same whether the policy delivers or quarantines:
/// a spammer cannot learn which of its messages were caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_cannot_tell_quarantined_from_delivered_mail() {
    let f = Fleet::start_with(
        "",
        100,
        "[policy.default]\nscanners = { auth = false, dnsbl = false }\n\
         rule = [{ name = \"catch\", target = \"subject\", pattern = \"CATCH\", action = \"quarantine\" }]\n",
    )
    .await;
    let mut c = client_from("127.0.0.2", f.smtp).await;
    let delivered = c
        .mail("alice@sender.example", &["bob@acme.example"], &msg("fine"))
        .await;
    c.cmd("RSET", "250").await;
    let caught = c
        .mail(
            "alice@sender.example",
            &["bob@acme.example"],
            &msg("CATCH me"),
        )
        .await;
    let shape = |r: &str| {
        let (head, id) = r.trim_end().rsplit_once(' ').unwrap();
        assert!(
            id.len() >= 16 && id.chars().all(|c| c.is_ascii_hexdigit()),
            "{r}"
        );
        head.to_owned()
    };
    assert_eq!(shape(&delivered), "250 2.0.0 Ok: queued as");
    assert_eq!(
        shape(&caught),
        shape(&delivered),
        "{caught:?} vs {delivered:?}"
    );
    assert!(until(Duration::from_secs(10), || f.acme.messages().len() == 1).await);
    let quarantined = f
        .engines
        .iter()
        .flatten()
        .flat_map(|e| e.store.list())
        .filter(|l| l.state == maildistiller::store::State::Quarantined)
        .count();
    assert_eq!(quarantined, 1, "the second one was caught");
}

/// `edge.exempt`: a partner's network passes the per-address and per-prefix limits that still
/// stop everyone else from the same /24, without `allow`-only mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exempt_networks_pass_the_per_address_limits() {
    let f = Fleet::start(
        "max_connections_per_ip = 1\nmax_connections_per_prefix = 1\nconnect_rate_per_ip = 1\n\
         connect_rate_per_prefix = 1\nexempt = [\"127.0.0.6/32\"]\n",
        100,
    )
    .await;
    let _first = client_from("127.0.0.5", f.smtp).await;
    let refused = |src: &'static str| {
        let smtp = f.smtp;
        async move {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
            let mut c = Client::from_stream(sock.connect(smtp).await.unwrap());
            c.expect("421 4.7.0").await;
        }
    };
    refused("127.0.0.5").await;
    refused("127.0.0.7").await;
    // The exempt partner: several connections at once, each one serves mail.
    let mut partner = Vec::new();
    for _ in 0..4 {
        partner.push(client_from("127.0.0.6", f.smtp).await);
    }
    for (i, c) in partner.iter_mut().enumerate() {
        let r = c
            .mail(
                "bulk@partner.example",
                &["bob@acme.example"],
                &msg(&format!("p{i}")),
            )
            .await;
        assert!(r.starts_with("250 2.0.0"), "{r}");
    }
    assert!(until(Duration::from_secs(10), || f.acme.messages().len() == 4).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pregreet_talkers_are_refused() {
    let f = Fleet::start("greeting_delay = \"300ms\"\n", 100).await;
    let mut c = Client::connect_raw(f.smtp).await;
    c.send(b"EHLO too.early\r\n").await;
    c.expect("554 5.5.1").await;
    let mut polite = Client::connect_raw(f.smtp).await;
    polite.expect("220").await;
}

/// `edge.max_errors`: the edge's own error replies end the session at the configured count
/// (the default, 10, would answer all three).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_error_cap_is_configured() {
    let f = Fleet::start("max_errors = 2\n", 100).await;
    let mut c = client_from("127.0.0.2", f.smtp).await;
    c.cmd("EHLO client.example", "250").await;
    c.cmd("RCPT TO:<bob@acme.example>", "503 5.5.1").await;
    c.cmd("MAIL FROM:<a@sender.example>", "250").await;
    c.cmd("RCPT TO:<x@elsewhere.example>", "421 4.7.0").await;
    assert!(c.closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_lost_mid_session_costs_the_sender_a_4xx() {
    let mut f = Fleet::start("", 100).await;
    let mut c = client_from("127.0.0.2", f.smtp).await;
    c.cmd("EHLO client.example", "250").await;
    c.cmd("MAIL FROM:<a@sender.example>", "250").await;
    c.cmd("RCPT TO:<bob@acme.example>", "250").await;
    f.kill(0).await;
    f.kill(1).await;
    let r = c.cmd("DATA", "4").await;
    // Either the edge sees the engine gone (421 4.4.2), or DATA crossed the draining engine's
    // own `421 4.3.2 Service shutting down`, which answers it (a 421 may answer any command).
    assert!(
        r.starts_with("421 4.4.2") || r.starts_with("421 4.3.2") || r.starts_with("451 4."),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_through_the_edge_is_reported_to_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["edge.test".to_string()]).unwrap();
    let cert = write(dir.path(), "cert.pem", &ck.cert.pem());
    let key = write(dir.path(), "key.pem", &ck.signing_key.serialize_pem());
    let f = Fleet::start(
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert.display(),
            key.display()
        ),
        100,
    )
    .await;
    maildistiller::tls::install_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut plain =
        tokio::io::BufReader::new(tokio::net::TcpStream::connect(f.smtp).await.unwrap());
    let banner = crate::engine::reply(&mut plain, "").await;
    assert!(banner.starts_with("220"), "{banner}");
    assert!(
        crate::engine::reply(&mut plain, "EHLO client.example\r\n")
            .await
            .contains("STARTTLS")
    );
    assert!(
        crate::engine::reply(&mut plain, "STARTTLS\r\n")
            .await
            .starts_with("220")
    );
    let name = rustls_pki_types::ServerName::try_from("edge.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, plain.into_inner())
        .await
        .expect("handshake");
    let mut s = tokio::io::BufReader::new(tls);
    assert!(
        crate::engine::reply(&mut s, "EHLO client.example\r\n")
            .await
            .starts_with("250")
    );
    assert!(
        crate::engine::reply(&mut s, "MAIL FROM:<a@sender.example>\r\n")
            .await
            .starts_with("250")
    );
    assert!(
        crate::engine::reply(&mut s, "RCPT TO:<bob@acme.example>\r\n")
            .await
            .starts_with("250")
    );
    assert!(
        crate::engine::reply(&mut s, "DATA\r\n")
            .await
            .starts_with("354")
    );
    assert!(
        crate::engine::reply(&mut s, "Subject: tls\r\n\r\nx\r\n.\r\n")
            .await
            .starts_with("250")
    );
    assert!(until(Duration::from_secs(10), || f.acme.messages().len() == 1).await);
    assert!(
        f.acme.messages()[0].data.contains("with ESMTPS"),
        "{}",
        f.acme.messages()[0].data
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layer4_mode_forwards_to_the_nearest_cluster_with_proxy_v2() {
    let f = Fleet::start("", 100).await;
    // A "German" client in tcp mode goes to the nearest cluster to Germany: fra1.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.3:0".parse().unwrap()).unwrap();
    let mut c = Client::from_stream(sock.connect(f.tcp).await.unwrap());
    let banner = c.expect("220").await;
    assert!(
        banner.contains("e2.test") || banner.contains("e3.test"),
        "{banner}"
    );
    let r = c
        .mail("a@sender.example", &["bob@acme.example"], &msg("l4"))
        .await;
    assert!(r.starts_with("250"), "{r}");
    assert!(until(Duration::from_secs(10), || f.acme.messages().len() == 1).await);
    assert!(
        f.acme.messages()[0]
            .data
            .starts_with("Received: from client.example ([127.0.0.3])"),
        "{}",
        f.acme.messages()[0].data
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_drain_engines_through_the_ops_api() {
    let f = Fleet::start("", 100).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops_addr = listener.local_addr().unwrap();
    tokio::spawn(maildistiller::ops::serve(f.edge_ops.clone(), listener));
    let e0 = f.engines[0].as_ref().unwrap().proxy.unwrap();
    let e1 = f.engines[1].as_ref().unwrap().proxy.unwrap();
    let req = move |method: &'static str, path: String| {
        tokio::task::spawn_blocking(move || {
            maildistiller::cli::client::request(ops_addr, method, &path, Some(OPS_TOKEN)).unwrap()
        })
    };
    for e in [e0, e1] {
        let (code, body) = req("POST", format!("/edge/engines/{e}/drain"))
            .await
            .unwrap();
        assert_eq!(code, 200, "{body}");
    }
    let (_, list) = req("GET", "/edge/engines".into()).await.unwrap();
    assert_eq!(list.matches(" drained").count(), 2, "{list}");
    let mut c = client_from("127.0.0.2", f.smtp).await;
    assert!(
        c.mail("a@sender.example", &["bob@acme.example"], &msg("drained"))
            .await
            .starts_with("250")
    );
    assert!(until(Duration::from_secs(10), || f.acme.messages().len() == 1).await);
    assert_eq!(
        by(&f.acme.messages()[0]),
        "e2.test",
        "drained lon1 engines take no new sessions"
    );
    assert_eq!(
        req("POST", "/edge/engines/192.0.2.1:25/drain".into())
            .await
            .unwrap()
            .0,
        404
    );
}

/// `edge.max_line_length` and `edge.data_timeout`, as a client of the edge meets them (the
/// defaults, 1000 bytes and 10 m, would accept both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_line_and_data_limits_are_configured() {
    let f = Fleet::start("max_line_length = 512\ndata_timeout = \"1s\"\n", 100).await;
    let mut c = client_from("127.0.0.2", f.smtp).await;
    c.cmd("EHLO client.example", "250").await;
    c.cmd(&format!("NOOP {}", "x".repeat(505)), "250").await;
    c.cmd(&format!("NOOP {}", "x".repeat(506)), "500 5.5.2")
        .await;
    c.cmd("MAIL FROM:<a@sender.example>", "250").await;
    c.cmd("RCPT TO:<bob@acme.example>", "250").await;
    c.cmd("DATA", "354").await;
    c.send(b"Subject: slow\r\n").await;
    c.expect("421 4.4.2").await;
    assert!(c.closed().await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(f.acme.messages().is_empty());
}

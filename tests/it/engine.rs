//! The engine in-process against a sink standing in for tenants' servers: reception rules,
//! PROXY trust, smuggling, limits, delivery, held mail and its fast drain, DSNs, restart recovery.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use maildistiller::config::RoleSet;
use maildistiller::engine;
use maildistiller::ops::Ops;
use maildistiller::store::{State, Store};

use crate::mail::{Client, Sink, until};
use crate::support::{OPS_TOKEN, ops_token, write};

mod keys; // [engine.delivery] keys away from their defaults: connections, messages per connection
mod memory; // engine.data_memory: bodies beyond the budget spill to a file, stalled senders hold nothing others need
pub(crate) mod overload; // under more load than it can take: scan counters show no check skipped

/// A running engine with its own spool; dropped = shut down.
pub struct TestEngine {
    pub ops: Arc<Ops>,
    pub store: Store,
    /// `engine.listen`: direct senders.
    pub smtp: SocketAddr,
    /// `engine.proxy_listen`, when `extra` configured one: edges.
    pub proxy: Option<SocketAddr>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestEngine {
    /// `acme` and `globex` deliver to `acme_sink` / `globex_sink`; `extra` is appended to `[engine]`.
    pub async fn start(
        spool: &Path,
        acme_sink: SocketAddr,
        globex_sink: SocketAddr,
        extra: &str,
    ) -> TestEngine {
        Self::start_named(spool, acme_sink, globex_sink, extra, "mde1.test").await
    }

    /// Like `start`, with the engine's host name (it appears in `Received:`).
    pub async fn start_named(
        spool: &Path,
        acme_sink: SocketAddr,
        globex_sink: SocketAddr,
        extra: &str,
        hostname: &str,
    ) -> TestEngine {
        Self::start_full(spool, acme_sink, globex_sink, extra, hostname, "").await
    }

    /// Like `start_named`, with extra lines for the `acme` tenant.
    pub async fn start_full(
        spool: &Path,
        acme_sink: SocketAddr,
        globex_sink: SocketAddr,
        extra: &str,
        hostname: &str,
        acme_extra: &str,
    ) -> TestEngine {
        let text = format!(
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
    [[silo.cluster.engine]]
    address = "127.0.0.1:1"
[[tenant]]
id = "acme"
domains = ["acme.example"]
regions = ["uk"]
delivery = ["{acme_sink}"]
{acme_extra}
[[tenant]]
id = "globex"
domains = ["globex.example"]
recipients = ["known", "boss@globex.example"]
regions = ["uk"]
delivery = ["{globex_sink}"]
[engine]
listen = ["127.0.0.1:0"]
spool_dir = "{spool}"
hostname = "{hostname}"
{extra}
"#,
            spool = spool.display(),
            token = ops_token(spool.parent().unwrap()),
        );
        let cfg = write(spool.parent().unwrap(), "engine.toml", &text);
        let snap = maildistiller::node::load(
            &cfg,
            RoleSet {
                engine: true,
                ..RoleSet::default()
            },
        )
        .expect("test config is valid");
        let ops = Ops::new(snap);
        let bound = engine::bind(&ops).await.expect("engine binds");
        let smtp = bound.addrs[0];
        let store = bound.store.clone();
        let proxy = bound.proxy_addrs.first().copied();
        let task = tokio::spawn(bound.serving);
        ops.set_ready(true);
        TestEngine {
            ops,
            store,
            smtp,
            proxy,
            task: Some(task),
        }
    }

    /// Graceful stop; waits for the drain.
    pub async fn stop(mut self) {
        self.ops.shutdown.cancel();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

impl Drop for TestEngine {
    fn drop(&mut self) {
        self.ops.shutdown.cancel();
    }
}

const FAST: &str = r#"
[engine.delivery]
retry_base = "200ms"
retry_max = "1s"
dead_after = 2
probe_interval = "200ms"
connect_timeout = "1s"
"#;

fn msg(subject: &str) -> String {
    format!(
        "From: Alice <alice@sender.example>\r\nTo: bob@acme.example\r\nSubject: {subject}\r\n\r\nHello.\r\n..leading dot\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_delivery_is_byte_identical_with_one_received_header() {
    let dir = tempfile::tempdir().unwrap();
    let (a, g) = (Sink::start().await, Sink::start().await);
    let e = TestEngine::start(&dir.path().join("spool"), a.addr, g.addr, FAST).await;
    let mut c = Client::connect(e.smtp).await;
    let r = c
        .mail("alice@sender.example", &["bob@acme.example"], &msg("one"))
        .await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    c.cmd("QUIT", "221").await;
    assert!(
        until(Duration::from_secs(10), || a.messages().len() == 1).await,
        "delivered"
    );
    let got = &a.messages()[0];
    assert_eq!(got.from, "alice@sender.example");
    assert_eq!(got.rcpts, ["bob@acme.example"]);
    let (received, rest) = got.data.split_once("\r\n\t").unwrap();
    assert!(
        received.starts_with("Received: from client.example ([127.0.0.1])"),
        "{}",
        got.data
    );
    assert!(
        rest.starts_with("by mde1.test (maildistiller) with ESMTP id "),
        "{}",
        got.data
    );
    let body_start = got.data.find("From: Alice").unwrap();
    assert_eq!(
        &got.data[body_start..],
        "From: Alice <alice@sender.example>\r\nTo: bob@acme.example\r\nSubject: one\r\n\r\nHello.\r\n.leading dot\r\n"
    );
    assert_eq!(got.data.matches("Received:").count(), 1);
    assert!(
        until(Duration::from_secs(5), || e.store.is_empty()).await,
        "removed from the queue"
    );
    e.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commands_get_replies_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (a, g) = (Sink::start().await, Sink::start().await);
    let e = TestEngine::start(&dir.path().join("spool"), a.addr, g.addr, FAST).await;
    let mut c = Client::connect(e.smtp).await;
    c.cmd("EHLO pipe.example", "250").await;
    c.send(b"MAIL FROM:<a@sender.example>\r\nRCPT TO:<x@acme.example>\r\nRCPT TO:<nobody@elsewhere.example>\r\nRCPT TO:<y@acme.example>\r\nDATA\r\n").await;
    c.expect("250 2.1.0").await;
    c.expect("250 2.1.5").await;
    c.expect("550 5.7.1").await;
    c.expect("250 2.1.5").await;
    c.expect("354").await;
    c.send(b"Subject: p\r\n\r\nbody\r\n.\r\nMAIL FROM:<b@sender.example>\r\nRCPT TO:<z@acme.example>\r\nDATA\r\n").await;
    c.expect("250 2.0.0").await;
    c.expect("250 2.1.0").await;
    c.expect("250 2.1.5").await;
    c.expect("354").await;
    c.send(b"Subject: q\r\n\r\nbody\r\n.\r\nQUIT\r\n").await;
    c.expect("250 2.0.0").await;
    c.expect("221").await;
    assert!(until(Duration::from_secs(10), || a.messages().len() == 2).await);
    let rcpts: Vec<Vec<String>> = a.messages().iter().map(|m| m.rcpts.clone()).collect();
    assert!(
        rcpts.contains(&vec![
            "x@acme.example".to_string(),
            "y@acme.example".to_string()
        ]),
        "{rcpts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_are_checked_per_tenant_and_never_relayed() {
    let dir = tempfile::tempdir().unwrap();
    let (a, g) = (Sink::start().await, Sink::start().await);
    let e = TestEngine::start(&dir.path().join("spool"), a.addr, g.addr, FAST).await;
    let mut c = Client::connect(e.smtp).await;
    c.cmd("EHLO x.example", "250").await;
    c.cmd("MAIL FROM:<a@sender.example>", "250").await;
    c.cmd("RCPT TO:<victim@gmail.example>", "550 5.7.1").await;
    c.cmd("RCPT TO:<stranger@globex.example>", "550 5.1.1")
        .await;
    c.cmd("RCPT TO:<known@globex.example>", "250").await;
    c.cmd("RCPT TO:<BOSS@Globex.Example>", "250").await;
    // A second tenant in the same transaction: the sender retries it separately.
    c.cmd("RCPT TO:<bob@acme.example>", "452 4.5.3").await;
    c.cmd("RSET", "250").await;
    c.cmd("MAIL FROM:<a@sender.example>", "250").await;
    c.cmd("RCPT TO:<bob@acme.example>", "250").await;
    c.cmd("DATA", "354").await;
    c.send(b"Subject: x\r\n\r\nx\r\n.\r\n").await;
    c.expect("250").await;
    e.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_and_malformed_input_get_the_right_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, g) = (Sink::start().await, Sink::start().await);
    let e = TestEngine::start(
        &dir.path().join("spool"),
        a.addr,
        g.addr,
        "max_message_size = \"2k\"\nmax_errors = 6\n",
    )
    .await;
    let mut c = Client::connect(e.smtp).await;
    c.cmd("MAIL FROM:<a@sender.example>", "503 5.5.1").await;
    c.cmd("EHLO x.example", "250").await;
    c.cmd("MAIL FROM:<a@sender.example> SIZE=999999", "552 5.3.4")
        .await;
    c.cmd("MAIL FROM:<a@sender.example>", "250").await;
    c.cmd("RCPT TO:<bob@acme.example>", "250").await;
    c.cmd("DATA", "354").await;
    let big = "x".repeat(100) + "\r\n";
    c.send(big.repeat(40).as_bytes()).await;
    c.send(b".\r\n").await;
    c.expect("552 5.3.4").await;
    c.cmd("RSET", "250").await;
    c.send(format!("NOOP {}\r\n", "y".repeat(10_000)).as_bytes())
        .await;
    c.expect("500 5.5.2").await;
    c.cmd("NOOP", "250").await;
    // Errors add up to a 421.
    c.cmd("BOGUS", "500").await;
    c.cmd("MAIL FROM:no-brackets@sender.example", "421 4.7.0")
        .await;
    assert!(c.closed().await);
    assert!(a.messages().is_empty());
}

fn proxy_header(client: &str) -> Vec<u8> {
    use maildistiller::proxy::{ProxyInfo, Version, encode};
    let mut v = Vec::new();
    encode(
        &ProxyInfo {
            client: Some(client.parse().unwrap()),
            destination: Some("127.0.0.1:25".parse().unwrap()),
            session_id: Some("edge-sess-42".into()),
            ..ProxyInfo::default()
        },
        Version::V2,
        &mut v,
    );
    v
}

/// An engine with both listeners, `trusted` its `trusted_proxies`; acme's and globex's sinks.
async fn with_proxy_listener(trusted: &str) -> (TestEngine, Sink, Sink, tempfile::TempDir) {
    let (a, g) = (Sink::start().await, Sink::start().await);
    let dir = tempfile::tempdir().unwrap();
    let extra =
        format!("proxy_listen = [\"127.0.0.1:0\"]\ntrusted_proxies = [\"{trusted}\"]\n{FAST}");
    let e = TestEngine::start(&dir.path().join("spool"), a.addr, g.addr, &extra).await;
    (e, a, g, dir)
}

/// Sends one message for acme on `c` and waits for it to be the `nth` delivered, received
/// from `client`.
async fn delivered_from(c: &mut Client, sink: &Sink, subject: &str, nth: usize, client: &str) {
    let r = c
        .mail("alice@sender.example", &["bob@acme.example"], &msg(subject))
        .await;
    assert!(r.starts_with("250"), "{r}");
    assert!(until(Duration::from_secs(10), || sink.messages().len() == nth).await);
    let data = &sink.messages()[nth - 1].data;
    let want = format!("Received: from client.example ([{client}])");
    assert!(data.starts_with(&want), "{data}");
}

/// The edges' listener: PROXY from trusted_proxies required; the real client address is
/// used. The direct listener of the same engine never takes PROXY, even from those networks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_is_a_property_of_the_listener() {
    let (e, a, _g, _dir) = with_proxy_listener("127.0.0.0/8").await;
    let proxy = e.proxy.expect("engine.proxy_listen is bound");

    // An edge: header first, then SMTP as the client it speaks for.
    let mut c = Client::connect_raw(proxy).await;
    c.send(&proxy_header("81.2.69.160:4000")).await;
    c.expect("220").await;
    delivered_from(&mut c, &a, "proxied", 1, "81.2.69.160").await;
    let l = e.store.list();
    assert!(l.is_empty() || l[0].env.session == "edge-sess-42");

    // No header on the edges' listener: refused, without a banner.
    let mut c = Client::connect_raw(proxy).await;
    c.send(b"EHLO direct.example\r\n").await;
    c.expect("421 4.7.0").await;
    assert!(c.closed().await);

    // The direct listener, from a network that may send PROXY elsewhere: the banner comes
    // without anything sent (nobody waits for a header) ...
    let mut c = Client::connect_raw(e.smtp).await;
    c.expect("220").await;
    delivered_from(&mut c, &a, "direct", 2, "127.0.0.1").await;
    // ... and a PROXY header there is refused.
    let mut c = Client::connect_raw(e.smtp).await;
    c.send(&proxy_header("81.2.69.160:4000")).await;
    c.expect("220").await;
    c.expect("554 5.7.0").await;
    assert!(c.closed().await);
    e.stop().await;
}

/// Nobody waits on the direct listener: session after session gets its banner at once. (With
/// the 250 ms wait this replaced, 20 sessions took 5 s; a generous bound stays far below it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_senders_get_the_banner_at_once() {
    let (e, _a, _g, _dir) = with_proxy_listener("127.0.0.0/8").await;
    let start = std::time::Instant::now();
    for _ in 0..20 {
        let mut c = Client::connect_raw(e.smtp).await;
        c.expect("220").await;
    }
    assert!(
        start.elapsed() < Duration::from_millis(2500),
        "20 banners took {:?}",
        start.elapsed()
    );
    e.stop().await;
}

/// The edges' listener takes connections from `trusted_proxies` only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_listener_refuses_untrusted_networks() {
    let (e, a, _g, _dir) = with_proxy_listener("10.0.0.0/8").await;
    let mut c = Client::connect_raw(e.proxy.unwrap()).await;
    c.send(&proxy_header("81.2.69.160:4000")).await;
    c.expect("554 5.7.0").await;
    assert!(c.closed().await);
    assert!(a.messages().is_empty());
    e.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_recipient_results_deliver_bounce_and_defer_independently() {
    let dir = tempfile::tempdir().unwrap();
    let (a, g) = (Sink::start().await, Sink::start().await);
    a.rcpt_reply("gone@acme.example", "550 5.1.1 no such user");
    a.rcpt_reply("full@acme.example", "452 4.2.2 mailbox full");
    let e = TestEngine::start(&dir.path().join("spool"), a.addr, g.addr, FAST).await;
    let mut c = Client::connect(e.smtp).await;
    // The sender is a globex user, so the DSN lands in globex's sink.
    let r = c
        .mail(
            "boss@globex.example",
            &["ok@acme.example", "gone@acme.example", "full@acme.example"],
            &msg("mixed"),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    assert!(
        until(Duration::from_secs(10), || a.messages().len() == 1
            && g.messages().len() == 1)
        .await
    );
    assert_eq!(a.messages()[0].rcpts, ["ok@acme.example"]);
    let dsn = &g.messages()[0];
    assert_eq!(dsn.from, "", "DSNs come from the null sender");
    assert_eq!(dsn.rcpts, ["boss@globex.example"]);
    assert!(
        dsn.data
            .contains("Final-Recipient: rfc822; gone@acme.example"),
        "{}",
        dsn.data
    );
    assert!(
        !dsn.data.contains("full@acme.example\r\nAction"),
        "deferred is not bounced"
    );
    // The deferred recipient is retried; once the mailbox has room it is delivered.
    let id = e.store.list()[0].env.id.clone();
    assert_eq!(e.store.list()[0].progress.pending().count(), 1);
    a.rcpt_reply("full@acme.example", "250 ok now");
    assert!(
        until(Duration::from_secs(10), || e.store.get(&id).is_none()).await,
        "retried and done: {:?}",
        e.store.get(&id)
    );
    assert_eq!(a.messages().len(), 2);
    assert_eq!(a.messages()[1].rcpts, ["full@acme.example"]);
    e.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_down_holds_mail_and_drains_fast_when_back() {
    let dir = tempfile::tempdir().unwrap();
    let g = Sink::start().await;
    // The tenant's server is down: nothing listens on its address.
    let down_addr: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let e = TestEngine::start(
        &dir.path().join("spool"),
        down_addr,
        g.addr,
        &FAST
            .replace("retry_max = \"1s\"", "retry_max = \"1h\"")
            .replace("retry_base = \"200ms\"", "retry_base = \"1h\""),
    )
    .await;
    let mut c = Client::connect(e.smtp).await;
    for i in 0..20 {
        let r = c
            .mail(
                "alice@sender.example",
                &["bob@acme.example"],
                &msg(&format!("held {i}")),
            )
            .await;
        assert!(r.starts_with("250"), "{r}");
        c.cmd("RSET", "250").await;
    }
    let held = || {
        e.store
            .list()
            .iter()
            .filter(|l| l.state == State::Held)
            .count()
    };
    assert!(
        until(Duration::from_secs(30), || held() == 20).await,
        "all held: {}",
        held()
    );
    // Back up: held mail goes out at once, not on the (1 h) retry timer.
    let a = Sink::start_on(down_addr).await;
    assert!(
        until(Duration::from_secs(5), || a.messages().len() == 20).await,
        "drained: {}",
        a.messages().len()
    );
    assert!(until(Duration::from_secs(5), || e.store.is_empty()).await);
    e.stop().await;
}

/// Over one reused connection a message is MAIL, RCPT, DATA and nothing more; only a
/// transaction the server stopped before the data (every recipient refused) is reset, so the
/// next message is not refused as a nested MAIL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_connection_is_reset_only_after_an_unfinished_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let g = Sink::start().await;
    let down_addr: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let e = TestEngine::start_full(
        &dir.path().join("spool"),
        down_addr,
        g.addr,
        FAST,
        "mde1.test",
        "delivery_connections = 1",
    )
    .await;
    let mut c = Client::connect(e.smtp).await;
    // Queued while the server is down, so they go out together, oldest first.
    let rcpts = [
        "gone@acme.example",
        "bob@acme.example",
        "bob@acme.example",
        "bob@acme.example",
    ];
    for (i, rcpt) in rcpts.iter().enumerate() {
        let r = c
            .mail("boss@globex.example", &[rcpt], &msg(&format!("reuse {i}")))
            .await;
        assert!(r.starts_with("250"), "{r}");
        c.cmd("RSET", "250").await;
    }
    let a = Sink::start_on(down_addr).await;
    a.rcpt_reply("gone@acme.example", "550 5.1.1 no such user");
    assert!(
        until(Duration::from_secs(10), || a.messages().len() == 3
            && g.messages().len() == 1)
        .await,
        "delivered {} and bounced {}",
        a.messages().len(),
        g.messages().len()
    );
    use std::sync::atomic::Ordering::SeqCst;
    assert_eq!(a.max_sessions.load(SeqCst), 1, "one connection");
    assert_eq!(
        a.nested_mail.load(SeqCst),
        0,
        "no MAIL inside an open transaction"
    );
    assert_eq!(
        a.rsets.load(SeqCst),
        1,
        "one RSET: after the refused transaction"
    );
    e.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_sends_a_dsn_and_null_senders_get_none() {
    let dir = tempfile::tempdir().unwrap();
    let (a, g) = (Sink::start().await, Sink::start().await);
    a.data_reply(Some("451 4.3.0 try again later"));
    let e = TestEngine::start(
        &dir.path().join("spool"),
        a.addr,
        g.addr,
        &format!("message_lifetime = \"2s\"\n{FAST}"),
    )
    .await;
    let mut c = Client::connect(e.smtp).await;
    assert!(
        c.mail(
            "boss@globex.example",
            &["bob@acme.example"],
            &msg("expiring")
        )
        .await
        .starts_with("250")
    );
    c.cmd("RSET", "250").await;
    assert!(
        c.mail("", &["bob@acme.example"], &msg("bounce of a bounce"))
            .await
            .starts_with("250")
    );
    assert!(
        until(Duration::from_secs(15), || g.messages().len() == 1
            && e.store.is_empty())
        .await,
        "one DSN, queue empty"
    );
    let dsn = &g.messages()[0];
    assert!(dsn.data.contains("expired after"), "{}", dsn.data);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(g.messages().len(), 1, "no DSN for the null sender");
    e.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantined_mail_is_deleted_after_its_lifetime_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (a, g) = (Sink::start().await, Sink::start().await);
    let e = TestEngine::start(
        &dir.path().join("spool"),
        a.addr,
        g.addr,
        &format!(
            "quarantine_lifetime = \"3s\"\n{FAST}\n[policy.default]\n\
             rule = [{{ name = \"q\", target = \"subject\", pattern = \"QUARANTINE\", action = \"quarantine\" }}]\n"
        ),
    )
    .await;
    let mut c = Client::connect(e.smtp).await;
    assert!(
        c.mail(
            "x@sender.example",
            &["bob@acme.example"],
            &msg("QUARANTINE me")
        )
        .await
        .starts_with("250")
    );
    c.cmd("RSET", "250").await;
    assert!(
        c.mail("x@sender.example", &["bob@acme.example"], &msg("fine"))
            .await
            .starts_with("250")
    );
    assert!(
        until(Duration::from_secs(10), || a.messages().len() == 1
            && e.store.len() == 1)
        .await,
        "the clean one is delivered and leaves the queue"
    );
    let listed = e.store.list();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, State::Quarantined, "kept, not delivered");
    let id = listed[0].env.id.clone();
    // Expiry takes it out of the index, deletes its files, then counts it.
    let expired = |m: &str| {
        m.lines().any(|l| {
            l.starts_with("maildistiller_engine_quarantine_expired_total{")
                && l.contains("tenant=\"acme\"")
                && l.ends_with(" 1")
        })
    };
    assert!(
        until(Duration::from_secs(15), || e.store.is_empty()
            && expired(&e.ops.metrics.render()))
        .await,
        "deleted once older than quarantine_lifetime, and counted:\n{}",
        e.ops.metrics.render()
    );
    let spooled = walk(&dir.path().join("spool"));
    assert!(
        !spooled.iter().any(|p| p.contains(id.as_str())),
        "gone from disk: {spooled:?}"
    );
    assert_eq!(a.messages().len(), 1, "never delivered");
    e.stop().await;
}

/// Every file under `dir`, as path strings.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for ent in rd.flatten() {
            let p = ent.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_recovers_queued_mail_and_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let g = Sink::start().await;
    let down_addr: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let e = TestEngine::start(&spool, down_addr, g.addr, FAST).await;
    let mut c = Client::connect(e.smtp).await;
    for i in 0..5 {
        assert!(
            c.mail(
                "alice@sender.example",
                &["bob@acme.example"],
                &msg(&format!("r{i}"))
            )
            .await
            .starts_with("250")
        );
        c.cmd("RSET", "250").await;
    }
    let id = e.store.list()[0].env.id.clone();
    e.stop().await;
    // Never-acknowledged leftovers in tmp/ are discarded at start.
    std::fs::write(
        spool.join("tmp").join("000000000000000000000000.msg"),
        b"half a message",
    )
    .unwrap();
    let a = Sink::start_on(down_addr).await;
    let e = TestEngine::start(&spool, down_addr, g.addr, FAST).await;
    assert!(
        until(Duration::from_secs(10), || a.messages().len() == 5).await,
        "{}",
        a.messages().len()
    );
    assert!(e.store.get(&id).is_none());
    assert!(
        !spool
            .join("tmp")
            .join("000000000000000000000000.msg")
            .exists()
    );
    e.stop().await;
}

/// Sends a command over any stream and reads the whole reply.
pub async fn reply<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut tokio::io::BufReader<S>,
    cmd: &str,
) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    if !cmd.is_empty() {
        s.get_mut().write_all(cmd.as_bytes()).await.unwrap();
    }
    let mut all = String::new();
    loop {
        let mut l = String::new();
        s.read_line(&mut l).await.unwrap();
        all.push_str(&l);
        if l.len() < 4 || l.as_bytes()[3] == b' ' {
            return all;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_upgrades_and_refuses_injected_commands() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["mde1.test".to_string()]).unwrap();
    let cert = write(dir.path(), "cert.pem", &ck.cert.pem());
    let key = write(dir.path(), "key.pem", &ck.signing_key.serialize_pem());
    let (a, g) = (Sink::start().await, Sink::start().await);
    let extra = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\n{FAST}",
        cert.display(),
        key.display()
    );
    let e = TestEngine::start(&dir.path().join("spool"), a.addr, g.addr, &extra).await;

    // Injection: commands pipelined after STARTTLS must not be executed.
    let mut c = Client::connect(e.smtp).await;
    let ehlo = c.cmd("EHLO x.example", "250").await;
    assert!(ehlo.contains("STARTTLS"), "{ehlo}");
    c.send(b"STARTTLS\r\nMAIL FROM:<evil@sender.example>\r\n")
        .await;
    c.expect("554 5.5.1").await;
    assert!(
        c.closed().await,
        "plaintext after STARTTLS closes the session"
    );

    // A real upgrade.
    maildistiller::tls::install_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(e.smtp).await.unwrap();
    let mut plain = BufReader::new(tcp);
    let mut line = String::new();
    plain.read_line(&mut line).await.unwrap();
    plain
        .get_mut()
        .write_all(b"EHLO x.example\r\n")
        .await
        .unwrap();
    loop {
        line.clear();
        plain.read_line(&mut line).await.unwrap();
        if line.as_bytes()[3] == b' ' {
            break;
        }
    }
    plain.get_mut().write_all(b"STARTTLS\r\n").await.unwrap();
    line.clear();
    plain.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("220 2.0.0"), "{line}");
    let name = rustls_pki_types::ServerName::try_from("mde1.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, plain.into_inner())
        .await
        .expect("handshake");
    let mut s = BufReader::new(tls);
    let ehlo = reply(&mut s, "EHLO x.example\r\n").await;
    assert!(
        ehlo.starts_with("250") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    assert!(
        reply(&mut s, "MAIL FROM:<a@sender.example>\r\n")
            .await
            .starts_with("250")
    );
    assert!(
        reply(&mut s, "RCPT TO:<bob@acme.example>\r\n")
            .await
            .starts_with("250")
    );
    assert!(reply(&mut s, "DATA\r\n").await.starts_with("354"));
    assert!(
        reply(&mut s, "Subject: tls\r\n\r\nsecret\r\n.\r\n")
            .await
            .starts_with("250")
    );
    assert!(until(Duration::from_secs(10), || a.messages().len() == 1).await);
    assert!(
        a.messages()[0].data.contains("with ESMTPS id"),
        "{}",
        a.messages()[0].data
    );
    e.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_api_lists_holds_releases_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let g = Sink::start().await;
    let down_addr: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let e = TestEngine::start(&dir.path().join("spool"), down_addr, g.addr, FAST).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops_addr = listener.local_addr().unwrap();
    tokio::spawn(maildistiller::ops::serve(e.ops.clone(), listener));
    let mut c = Client::connect(e.smtp).await;
    for i in 0..2 {
        assert!(
            c.mail(
                "alice@sender.example",
                &["bob@acme.example"],
                &msg(&format!("q{i}"))
            )
            .await
            .starts_with("250")
        );
        c.cmd("RSET", "250").await;
    }
    let ids: Vec<String> = e
        .store
        .list()
        .iter()
        .map(|l| l.env.id.to_string())
        .collect();
    let ops = move |method: &'static str, path: String| {
        tokio::task::spawn_blocking(move || {
            maildistiller::cli::client::request(ops_addr, method, &path, Some(OPS_TOKEN)).unwrap()
        })
    };
    let (code, body) = ops("GET", "/queue".into()).await.unwrap();
    assert_eq!(code, 200);
    assert!(
        body.contains(&ids[0]) && body.contains("-- 2 messages"),
        "{body}"
    );
    let (_, body) = ops("GET", format!("/queue/{}", ids[0])).await.unwrap();
    assert!(
        body.contains("subject:     q0")
            && body.contains("rcpt:        <bob@acme.example> pending"),
        "{body}"
    );
    assert_eq!(
        ops("POST", format!("/queue/{}/suspend", ids[0]))
            .await
            .unwrap()
            .0,
        200
    );
    assert_eq!(
        ops("POST", format!("/queue/{}/hold", ids[0]))
            .await
            .unwrap()
            .0,
        409,
        "already suspended"
    );
    let (_, body) = ops("GET", "/queue?state=suspended".into()).await.unwrap();
    assert!(
        body.contains("-- 1 message") && body.contains(&format!("{}  suspended", ids[0])),
        "{body}"
    );
    // The operator's hold is `suspended`, never confused with `held` (destination down): the
    // old word is not a state, and says which are.
    let (code, body) = ops("GET", "/queue?state=hold".into()).await.unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("held, suspended, quarantined"), "{body}");
    assert_eq!(
        ops("POST", format!("/queue/{}/delete", ids[1]))
            .await
            .unwrap()
            .0,
        200
    );
    assert_eq!(
        ops("GET", format!("/queue/{}", ids[1])).await.unwrap().0,
        404
    );
    assert_eq!(
        ops("GET", "/queue/../../etc/passwd".into())
            .await
            .unwrap()
            .0,
        404
    );
    // The held message is not delivered when the destination comes back; released, it is.
    let a = Sink::start_on(down_addr).await;
    assert_eq!(ops("POST", "/queue/flush".into()).await.unwrap().0, 200);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(a.messages().is_empty(), "on hold means not delivered");
    assert_eq!(
        ops("POST", format!("/queue/{}/release", ids[0]))
            .await
            .unwrap()
            .0,
        200
    );
    assert!(until(Duration::from_secs(5), || a.messages().len() == 1).await);
    e.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_tenant_delivery_rate_and_concurrency_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let g = Sink::start().await;
    let down_addr: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    // acme: one connection, five messages a second (burst five); its server is down at first.
    let limits = "delivery_connections = 1\ndelivery_rate = 5";
    let e = TestEngine::start_full(
        &dir.path().join("spool"),
        down_addr,
        g.addr,
        FAST,
        "mde1.test",
        limits,
    )
    .await;
    let mut c = Client::connect(e.smtp).await;
    for i in 0..20 {
        assert!(
            c.mail(
                "alice@sender.example",
                &["bob@acme.example"],
                &msg(&format!("rate {i}"))
            )
            .await
            .starts_with("250")
        );
        c.cmd("RSET", "250").await;
    }
    let a = Sink::start_on(down_addr).await;
    assert!(
        until(Duration::from_secs(20), || a.messages().len() == 20).await,
        "{}",
        a.messages().len()
    );
    assert_eq!(
        a.max_sessions.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one connection at a time"
    );
    // Never more than burst + rate messages in any one-second window.
    let times: Vec<std::time::Instant> = a.messages().iter().map(|m| m.at).collect();
    for t in &times {
        let window = times
            .iter()
            .filter(|u| **u >= *t && u.duration_since(*t) < Duration::from_secs(1))
            .count();
        assert!(window <= 10, "{window} messages within one second");
    }
    e.stop().await;
}

/// `engine.max_recipients`, `max_line_length`, `max_commands` and `data_timeout`, each as a
/// client meets it (the defaults — 100, 4096, 1000, 10 m — would accept all of this).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_limits_are_configured() {
    let (a, g) = (Sink::start().await, Sink::start().await);
    let dir = tempfile::tempdir().unwrap();
    let extra =
        "max_recipients = 2\nmax_line_length = 512\nmax_commands = 12\ndata_timeout = \"1s\"\n";
    let e = TestEngine::start(&dir.path().join("spool"), a.addr, g.addr, extra).await;
    let mut c = Client::connect(e.smtp).await;
    c.cmd("EHLO client.example", "250").await;
    c.cmd("MAIL FROM:<a@sender.example>", "250").await;
    c.cmd("RCPT TO:<one@acme.example>", "250").await;
    c.cmd("RCPT TO:<two@acme.example>", "250").await;
    c.cmd("RCPT TO:<three@acme.example>", "452 4.5.3").await;
    c.cmd(&format!("NOOP {}", "x".repeat(505)), "250").await;
    c.cmd(&format!("NOOP {}", "x".repeat(506)), "500 5.5.2")
        .await;
    // Six commands so far (a line too long is none); the twelfth is the last one answered.
    for _ in 0..6 {
        c.cmd("NOOP", "250").await;
    }
    c.cmd("NOOP", "421 4.7.0").await;
    assert!(c.closed().await);

    let mut c = Client::connect(e.smtp).await;
    c.cmd("EHLO client.example", "250").await;
    c.cmd("MAIL FROM:<a@sender.example>", "250").await;
    c.cmd("RCPT TO:<one@acme.example>", "250").await;
    c.cmd("DATA", "354").await;
    c.send(b"Subject: slow\r\n").await;
    c.expect("421 4.4.2").await;
    assert!(c.closed().await);
    assert!(e.store.list().is_empty(), "nothing accepted");
    e.stop().await;
}

/// `engine.max_sessions`: one session open, the next client is refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_beyond_max_sessions_are_refused() {
    let (a, g) = (Sink::start().await, Sink::start().await);
    let dir = tempfile::tempdir().unwrap();
    let e = TestEngine::start(
        &dir.path().join("spool"),
        a.addr,
        g.addr,
        "max_sessions = 1\n",
    )
    .await;
    let mut first = Client::connect(e.smtp).await;
    let mut second = Client::connect_raw(e.smtp).await;
    second.expect("421 4.3.2").await;
    assert!(second.closed().await);
    first.cmd("NOOP", "250").await;
    e.stop().await;
}

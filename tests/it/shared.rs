//! The fleet's shared store against a real `redis-server` (`tests/redis/start.sh` says which;
//! `.ci/run` sets `MAILDISTILLER_REDIS_SERVER`). Every test starts its own private instances
//! and in-process engines with `[shared]`; without the variable each prints why and skips.
//!
//! What is proved: a campaign of varied copies through two engines crosses the thresholds and
//! later copies are quarantined at both; a newsletter to many recipients of one tenant is not
//! (one tenant, one network); greylisting's first attempt at one engine lets the retry pass at
//! the other; Redis killed mid-run → mail keeps flowing, `shared_store_up` 0; Redis back →
//! sharing resumes; a paused Redis costs a session no more than `shared.timeout`.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::engine::TestEngine;
use crate::engine::overload::metric;
use crate::mail::{Client, Sink, until};
use crate::support::free_port;

mod cluster;
mod sentinel;

#[path = "../../bench/scan/outbreak.rs"]
mod bench; // what outbreak detection costs a message (bench/scan/outbreak.sh, release mode)

/// The tests' redis-server binary; `None` (after saying why the test skips) when not given.
fn redis_server() -> Option<String> {
    let bin = std::env::var("MAILDISTILLER_REDIS_SERVER").ok();
    if bin.is_none() {
        eprintln!(
            "skipped: MAILDISTILLER_REDIS_SERVER is not set (eval \"$(bash tests/redis/start.sh)\")"
        );
    }
    bin
}

/// A private redis-server on 127.0.0.1 (in memory); killed when dropped.
struct Redis {
    bin: String,
    port: u16,
    child: Option<Child>,
}

impl Redis {
    /// `None` (after saying why) when the tests' redis-server is not given.
    fn start() -> Option<Redis> {
        let bin = redis_server()?;
        let mut r = Redis {
            bin,
            port: free_port(),
            child: None,
        };
        r.up();
        Some(r)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn up(&mut self) {
        let child = Command::new(&self.bin)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let start = Instant::now();
        while self.query(&["PING"]).is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis-server answers"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn con(&self) -> Option<redis::Connection> {
        redis::Client::open(self.url())
            .ok()?
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()
    }

    /// One command, its answer as a redis value.
    fn query(&self, args: &[&str]) -> Option<redis::Value> {
        let mut con = self.con()?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut con).ok()
    }

    fn keys(&self, pattern: &str) -> Vec<String> {
        let Some(mut con) = self.con() else {
            return Vec::new();
        };
        redis::cmd("KEYS")
            .arg(pattern)
            .query(&mut con)
            .unwrap_or_default()
    }

    /// The highest of one count (`r`, `t` or `n`) over every fingerprint under `prefix` (kept in
    /// its sorted set as member `#r`… with the count's negative as its score).
    fn max_count(&self, prefix: &str, count: &str) -> u64 {
        let Some(mut con) = self.con() else {
            return 0;
        };
        self.keys(&format!("{prefix}:o:*:z"))
            .iter()
            .filter_map(|k| {
                redis::cmd("ZSCORE")
                    .arg(k)
                    .arg(format!("#{count}"))
                    .query::<Option<f64>>(&mut con)
                    .ok()
                    .flatten()
            })
            .map(|s| -s as u64)
            .max()
            .unwrap_or(0)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `[engine]` lines for a PROXY listener (the tests choose each copy's client address), then
/// `[shared]` on `redis` with `prefix`, then the policy.
fn config(redis: &Redis, prefix: &str, policy: &str) -> String {
    format!(
        r#"proxy_listen = ["127.0.0.1:0"]
trusted_proxies = ["127.0.0.0/8"]
[shared]
redis = ["{url}"]
prefix = "{prefix}"
timeout = "200ms"
flush_interval = "20ms"
sync_interval = "100ms"
{policy}
"#,
        url = redis.url()
    )
}

const OUTBREAK: &str = r#"
[policy.default.scanners]
outbreak = true
auth = false
[policy.default.outbreak]
recipients = 3
tenants = 2
networks = 2
action = "quarantine"
window = "10m"
score = 7.5
"#;

/// Connects through the engine's PROXY listener as `client`.
async fn via(engine: &TestEngine, client: &str) -> Client {
    let proxy: SocketAddr = engine.proxy.expect("proxy listener");
    let mut c = Client::connect_raw(proxy).await;
    c.send(format!("PROXY TCP4 {client} 127.0.0.1 40000 25\r\n").as_bytes())
        .await;
    c.expect("220").await;
    c
}

/// Whether `engine` knows, without asking the store, a fingerprint seen by `recipients` or
/// more at two tenants from two networks.
fn knows(engine: &TestEngine, recipients: u32) -> bool {
    let fleet = engine
        .ops
        .extension::<maildistiller::shared::Fleet>()
        .expect("the engine's fleet client");
    fleet.spread.known().iter().any(|(_, k)| {
        k.counts.recipients >= recipients && k.counts.tenants >= 2 && k.counts.networks >= 2
    })
}

/// After the campaign's `k`th copy: from the second (two tenants, two networks: spreading),
/// every engine knows the fleet's counts (up to the threshold, 3) without asking — those that
/// did not see the copy from the spreading stream.
async fn all_know(engines: &[&TestEngine], k: u64) {
    if k < 2 {
        return;
    }
    for (n, e) in engines.iter().enumerate() {
        assert!(
            until(Duration::from_secs(5), || knows(e, k.min(3) as u32)).await,
            "engine {} learnt the counts after copy {k}",
            n + 1
        );
    }
}

const PARAGRAPHS: [&str; 4] = [
    "Your mailbox storage has reached its limit and new incoming messages are now being held \
     on the server until the account owner confirms the details we have on file for the account.",
    "To keep receiving mail without interruption please confirm your account details on the \
     secure portal today, it only takes a minute and the held messages are released at once.",
    "Accounts that are not confirmed within forty eight hours will be suspended permanently and \
     every message held for them will be deleted without any further notice to the owner.",
    "This is an automated message sent by the mail administration team of your organisation, \
     please do not reply to it, replies to this address are not read by anyone at all.",
];

/// One copy of the campaign: its own greeting, name and paragraph order.
fn campaign_copy(name: &str, order: [usize; 4], rcpt: &str) -> String {
    let mut body = format!("Dear {name},\r\n\r\n");
    for i in order {
        body.push_str(PARAGRAPHS[i]);
        body.push_str("\r\n\r\n");
    }
    body.push_str("Mail administration\r\n");
    format!(
        "From: Mail Admin <admin@notices.example>\r\nTo: {rcpt}\r\nSubject: Action required: \
         mailbox for {name}\r\n\r\n{body}"
    )
}

/// Sends one copy of the campaign through `engine` from `client`; answers its state and verdict
/// in the engine's store.
async fn send_copy(
    engine: &TestEngine,
    client: &str,
    name: &str,
    order: [usize; 4],
    rcpt: &str,
) -> (String, String) {
    let mut c = via(engine, client).await;
    let reply = c
        .mail(
            "admin@notices.example",
            &[rcpt],
            &campaign_copy(name, order, rcpt),
        )
        .await;
    assert!(reply.starts_with("250"), "{rcpt}: {reply}");
    let id = reply.trim().rsplit(' ').next().unwrap().to_owned();
    let listed = engine
        .store
        .list()
        .into_iter()
        .find(|l| l.env.id.as_str() == id)
        .expect("the message is in its engine's store");
    (listed.state.as_str().to_owned(), listed.env.verdict.clone())
}

#[tokio::test]
async fn a_varied_campaign_through_two_engines_is_acted_on_at_both() {
    let Some(redis) = Redis::start() else { return };
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (acme, globex) = (Sink::start().await, Sink::start().await);
    let cfg = config(&redis, "camp", OUTBREAK);
    let e1 = TestEngine::start(&d1.path().join("spool"), acme.addr, globex.addr, &cfg).await;
    let e2 = TestEngine::start(&d2.path().join("spool"), acme.addr, globex.addr, &cfg).await;
    // (engine, client, name, paragraph order, recipient, expected)
    type Copy<'a> = (
        &'a TestEngine,
        &'a str,
        &'a str,
        [usize; 4],
        &'a str,
        &'a str,
    );
    let copies: [Copy; 5] = [
        (
            &e1,
            "198.51.100.7",
            "Alice",
            [0, 1, 2, 3],
            "bob@acme.example",
            "queued",
        ),
        (
            &e2,
            "203.0.113.9",
            "Mr Known",
            [1, 0, 2, 3],
            "known@globex.example",
            "queued",
        ),
        (
            &e1,
            "198.51.100.8",
            "Carol Jones",
            [0, 1, 3, 2],
            "carol@acme.example",
            "queued",
        ),
        // Three recipients, two tenants, two networks have the fingerprints now: both
        // engines act on the next copies.
        (
            &e2,
            "203.0.113.10",
            "Boss",
            [0, 2, 1, 3],
            "boss@globex.example",
            "quarantined",
        ),
        (
            &e1,
            "198.51.100.9",
            "Dave",
            [0, 1, 2, 3],
            "dave@acme.example",
            "quarantined",
        ),
    ];
    for (i, (engine, client, name, order, rcpt, want)) in copies.into_iter().enumerate() {
        let (state, verdict) = send_copy(engine, client, name, order, rcpt).await;
        if want == "quarantined" {
            assert_eq!(state, "quarantined", "copy {i}: {verdict}");
            assert!(
                verdict.contains("outbreak.fuzzy=+7.5"),
                "outbreak.score: {verdict}"
            );
        } else {
            assert_ne!(state, "quarantined", "copy {i}: {verdict}");
        }
        // The sighting reaches the store (the writer's next batch) before the next copy.
        let k = i as u64 + 1;
        assert!(
            until(Duration::from_secs(5), || redis.max_count("camp", "r")
                >= k.min(3))
            .await,
            "copy {i}'s sighting reached the store"
        );
        all_know(&[&e1, &e2], k).await;
    }
    // The second engine learnt counts from the first one's sightings through the stream.
    let from_fleet =
        |e: &TestEngine| metric(e, "maildistiller_outbreak_updates_total{source=\"fleet\"");
    assert!(from_fleet(&e1) > 0 && from_fleet(&e2) > 0);
    // Sightings live for the policy's window (10 minutes; up to 1.5 times it for a
    // fingerprint seen again), not the default hour.
    let sightings = redis.keys("camp:o:*:z").pop().unwrap();
    let ttl = match redis.query(&["PTTL", &sightings]) {
        Some(redis::Value::Int(ms)) => ms,
        other => panic!("{other:?}"),
    };
    assert!(ttl > 0 && ttl <= 900_000, "outbreak.window: {ttl} ms");
    // Everything written lives under the prefix and carries a hash tag.
    let keys = redis.keys("*");
    assert!(!keys.is_empty());
    assert!(
        keys.iter()
            .all(|k| k.starts_with("camp:") && k.contains('{')),
        "{keys:?}"
    );
    let metrics = e1.ops.metrics.render();
    assert!(
        metrics.contains("maildistiller_outbreak_matched_total{action=\"quarantine\""),
        "{metrics}"
    );
}

/// `outbreak.fingerprints` chooses what counts. On one engine without `[shared]` (its own
/// sightings are the counts), the varied copies of a campaign cross the thresholds by their
/// fuzzy bands (the default); counting the text digest alone, each copy is a text of its own,
/// and only exact copies add up.
#[tokio::test]
async fn the_fingerprints_key_chooses_what_counts() {
    let (acme, globex) = (Sink::start().await, Sink::start().await);
    // Four copies from two networks to two tenants; the thresholds (3 recipients, 2 tenants, 2
    // networks) are crossed with the third copy's own sighting when the copies count as one.
    let copies = [
        ("198.51.100.7", "Alice", [0, 1, 2, 3], "bob@acme.example"),
        (
            "203.0.113.9",
            "Mr Known",
            [1, 0, 2, 3],
            "known@globex.example",
        ),
        (
            "198.51.100.8",
            "Carol Jones",
            [0, 1, 3, 2],
            "carol@acme.example",
        ),
        ("203.0.113.10", "Boss", [0, 2, 1, 3], "boss@globex.example"),
    ];
    let run = |kinds: &'static str, exact: bool| {
        let (acme, globex) = (acme.addr, globex.addr);
        async move {
            let dir = tempfile::tempdir().unwrap();
            let cfg = format!(
                "proxy_listen = [\"127.0.0.1:0\"]\ntrusted_proxies = [\"127.0.0.0/8\"]\n\
                 {OUTBREAK}fingerprints = {kinds}\n"
            );
            let e = TestEngine::start(&dir.path().join("spool"), acme, globex, &cfg).await;
            let mut states = Vec::new();
            for (client, name, order, rcpt) in copies {
                let (name, order) = if exact {
                    ("Alice", [0, 1, 2, 3])
                } else {
                    (name, order)
                };
                let (state, verdict) = send_copy(&e, client, name, order, rcpt).await;
                states.push(format!("{state} {verdict}"));
            }
            states
        }
    };
    let quarantined = |s: &[String]| s.iter().filter(|v| v.starts_with("quarantined")).count();
    let fuzzy = run(r#"["fuzzy"]"#, false).await;
    assert_eq!(quarantined(&fuzzy), 2, "{fuzzy:#?}");
    assert!(fuzzy[2].contains("outbreak.fuzzy="), "{}", fuzzy[2]);
    let text = run(r#"["text"]"#, false).await;
    assert_eq!(quarantined(&text), 0, "{text:#?}");
    let exact = run(r#"["text"]"#, true).await;
    assert_eq!(quarantined(&exact), 2, "{exact:#?}");
    assert!(exact[2].contains("outbreak.text="), "{}", exact[2]);
}

#[tokio::test]
async fn a_newsletter_to_many_recipients_of_one_tenant_is_not_an_outbreak() {
    let Some(redis) = Redis::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (acme, globex) = (Sink::start().await, Sink::start().await);
    let cfg = config(&redis, "news", OUTBREAK);
    let e = TestEngine::start(&dir.path().join("spool"), acme.addr, globex.addr, &cfg).await;
    let letter = campaign_copy("subscriber", [0, 1, 2, 3], "list@acme.example");
    for batch in 0..4 {
        let rcpts: Vec<String> = (0..10)
            .map(|i| format!("user{batch}x{i}@acme.example"))
            .collect();
        let rcpts: Vec<&str> = rcpts.iter().map(String::as_str).collect();
        let mut c = via(&e, "192.0.2.25").await;
        let reply = c.mail("news@letters.example", &rcpts, &letter).await;
        assert!(
            reply.starts_with("250 2.0.0 Ok: queued"),
            "batch {batch}: {reply}"
        );
        assert!(
            until(Duration::from_secs(5), || redis.max_count("news", "r")
                >= (batch + 1) * 10)
            .await
        );
    }
    // Why it is not an outbreak: 40 recipients, but one tenant and one network.
    assert!(redis.max_count("news", "r") >= 40);
    assert_eq!(redis.max_count("news", "t"), 1);
    assert_eq!(redis.max_count("news", "n"), 1);
    assert!(
        e.store
            .list()
            .iter()
            .all(|l| l.state.as_str() != "quarantined")
    );
}

/// The sighting script's counts, straight against the store: members that slide out of the
/// window are taken off the counts, a kind at the cap only refreshes the members it has, a
/// member named twice counts once, and one call counts every fingerprint it is given and
/// answers each one's counts.
#[test]
fn sighting_counts_slide_with_the_window_and_stop_at_the_cap() {
    use maildistiller::shared::outbreak::SIGHTING;
    let Some(redis) = Redis::start() else { return };
    let mut con = redis.con().unwrap();
    let keys = ["w:o:{a}:z", "w:o:{b}:z"];
    // Each fingerprint's counts after the sighting: recipients, tenants, networks, first, last.
    let sight = |con: &mut redis::Connection, now: u64, cap: u32, members: &[&str]| -> Vec<u64> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(SIGHTING)
            .arg(keys.len())
            .arg(&keys)
            .arg(now)
            .arg(100_000)
            .arg(cap);
        cmd.arg(members).query(con).unwrap()
    };
    // A window of 100 s (the keys expire 100 s after their last sighting).
    let t0 = 1_000_000;
    assert_eq!(
        sight(&mut con, t0, 200, &["t1", "n1", "r1", "r2", "r1"]),
        [2, 1, 1, t0, t0, 2, 1, 1, t0, t0],
        "both fingerprints, r1 once"
    );
    let t1 = t0 + 50_000;
    assert_eq!(
        sight(&mut con, t1, 200, &["t2", "n1", "r3"])[..5],
        [3, 2, 1, t0, t1]
    );
    // At t0 + 120 s the first sighting (t0) is out of the window: r1, r2 and t1 go.
    let t2 = t0 + 120_000;
    assert_eq!(
        sight(&mut con, t2, 200, &["t2", "n2", "r3"])[..5],
        [1, 1, 2, t0, t2]
    );
    // A cap of 2: a kind at it keeps its members fresh but takes no new one.
    let t3 = t0 + 130_000;
    assert_eq!(
        sight(&mut con, t3, 2, &["t3", "n3", "r4", "r5"])[..5],
        [2, 2, 2, t0, t3],
        "r4 fits under the cap, r5 does not"
    );
    let t4 = t0 + 140_000;
    assert_eq!(
        sight(&mut con, t4, 2, &["t4", "n4", "r3"])[..5],
        [2, 2, 2, t0, t4],
        "no new member past the cap"
    );
    // What the store holds: the members within the cap, and the counts beside them.
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(keys[0])
        .arg(0)
        .arg(-1)
        .query(&mut con)
        .unwrap();
    for m in [
        "#r", "#t", "#n", "#f", "#x", "r3", "r4", "t2", "t3", "n1", "n2",
    ] {
        assert!(members.iter().any(|x| x == m), "{m} in {members:?}");
    }
    for m in ["r1", "r2", "r5", "t1", "t4", "n3", "n4"] {
        assert!(!members.iter().any(|x| x == m), "{m} in {members:?}");
    }
    assert_eq!(redis.max_count("w", "r"), 2);
    // The expiry: set with the first sighting to the window, renewed to 1.5 windows when
    // less than a window is left, and not touched while more is left: renewed at t1 and t2,
    // not at t3 and t4.
    let mut con2 = redis.con().unwrap();
    let mut expires = || -> (f64, i64) {
        let x: f64 = redis::cmd("ZSCORE")
            .arg(keys[0])
            .arg("#x")
            .query(&mut con2)
            .unwrap();
        let pttl: i64 = redis::cmd("PTTL").arg(keys[0]).query(&mut con2).unwrap();
        (-x, pttl)
    };
    let (x, pttl) = expires();
    assert_eq!(x, (t2 + 150_000) as f64, "renewed at t2 to 1.5 windows");
    assert!(pttl > 100_000 && pttl <= 150_000, "{pttl}");
    let t5 = t4 + 20_000;
    sight(&mut con, t5, 2, &["t3", "n3", "r3"]);
    let (x5, pttl5) = expires();
    assert_eq!(x5, x, "more than a window was left at t5: no renewal");
    assert!(pttl5 <= pttl, "{pttl5} > {pttl}");
    let t6 = t4 + 40_000;
    sight(&mut con, t6, 2, &["t3", "n3", "r3"]);
    assert_eq!(expires().0, (t6 + 150_000) as f64, "renewed at t6");
}

#[tokio::test]
async fn greylisting_lets_the_retry_pass_at_another_engine() {
    let Some(redis) = Redis::start() else { return };
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (acme, globex) = (Sink::start().await, Sink::start().await);
    let policy = "[policy.default.greylist]\nenabled = true\ndelay = \"2s\"\nallow_for = \"1h\"\n";
    let cfg = config(&redis, "grey", policy);
    let e1 = TestEngine::start(&d1.path().join("spool"), acme.addr, globex.addr, &cfg).await;
    let e2 = TestEngine::start(&d2.path().join("spool"), acme.addr, globex.addr, &cfg).await;
    let attempt = |e: &TestEngine, client: &'static str| {
        let proxy = e.proxy.unwrap();
        async move {
            let mut c = Client::connect_raw(proxy).await;
            c.send(format!("PROXY TCP4 {client} 127.0.0.1 40000 25\r\n").as_bytes())
                .await;
            c.expect("220").await;
            c.cmd("EHLO mta.sender.example", "250").await;
            c.cmd("MAIL FROM:<alice@sender.example>", "250").await;
            c.send(b"RCPT TO:<bob@acme.example>\r\n").await;
            c.reply().await
        }
    };
    let first = Instant::now();
    let r = attempt(&e1, "198.51.100.20").await;
    assert!(r.starts_with("451 4.7.1"), "first attempt: {r}");
    assert!(
        until(Duration::from_secs(5), || !redis
            .keys("grey:g:*")
            .is_empty())
        .await
    );
    // Too soon, at the other engine, from another address of the same /24: still greylisted.
    let r = attempt(&e2, "198.51.100.21").await;
    if first.elapsed() < Duration::from_secs(2) {
        assert!(r.starts_with("451 4.7.1"), "early retry: {r}");
    }
    tokio::time::sleep(Duration::from_millis(2300).saturating_sub(first.elapsed())).await;
    let r = attempt(&e2, "198.51.100.22").await;
    assert!(
        r.starts_with("250"),
        "the retry at the other engine passes: {r}"
    );
    // A passed triplet is allowed for `allow_for` (1 hour here, not the default 36 days).
    assert!(
        until(Duration::from_secs(5), || {
            let key = redis.keys("grey:g:*").pop().unwrap_or_default();
            matches!(redis.query(&["PTTL", &key]), Some(redis::Value::Int(ms)) if ms > 2_000_000 && ms <= 3_600_000)
        })
        .await,
        "greylist.allow_for"
    );
    let text = e2.ops.metrics.render();
    assert!(
        text.contains("maildistiller_greylist_total{outcome=\"passed\""),
        "{text}"
    );
}

#[tokio::test]
async fn redis_killed_mid_run_mail_flows_and_sharing_resumes() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (acme, globex) = (Sink::start().await, Sink::start().await);
    let policy = format!("{OUTBREAK}\n[policy.default.greylist]\nenabled = true\n");
    let cfg = config(&redis, "kill", &policy);
    let e = TestEngine::start(&dir.path().join("spool"), acme.addr, globex.addr, &cfg).await;
    let up = |e: &TestEngine| {
        e.ops
            .metrics
            .render()
            .lines()
            .any(|l| l.starts_with("maildistiller_shared_store_up") && l.ends_with(" 1"))
    };
    assert!(
        until(Duration::from_secs(5), || up(&e)).await,
        "the store is up"
    );
    let send = |n: usize| {
        let proxy = e.proxy.unwrap();
        async move {
            let mut c = Client::connect_raw(proxy).await;
            c.send(b"PROXY TCP4 192.0.2.40 127.0.0.1 40000 25\r\n")
                .await;
            c.expect("220").await;
            c.cmd("EHLO mta.sender.example", "250").await;
            c.cmd(&format!("MAIL FROM:<s{n}@sender.example>"), "250")
                .await;
            c.send(b"RCPT TO:<bob@acme.example>\r\n").await;
            c.reply().await
        }
    };
    assert!(
        send(0).await.starts_with("451"),
        "greylisted while the store is up"
    );
    redis.kill();
    let start = Instant::now();
    for n in 1..=5 {
        // Unknown triplets pass while the store is away (fail open), at once.
        let r = send(n).await;
        assert!(r.starts_with("250"), "message {n} with Redis down: {r}");
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "no session waited on the dead store"
    );
    assert!(
        until(Duration::from_secs(5), || !up(&e)).await,
        "store_up is 0"
    );
    redis.up();
    assert!(
        until(Duration::from_secs(10), || up(&e)).await,
        "store_up is 1 again"
    );
    assert!(
        send(99).await.starts_with("451"),
        "greylisting is shared again"
    );
    assert!(
        until(Duration::from_secs(5), || !redis
            .keys("kill:g:*")
            .is_empty())
        .await,
        "writes reach the store again"
    );
}

#[tokio::test]
async fn a_paused_store_costs_a_session_no_more_than_the_timeout() {
    let Some(redis) = Redis::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (acme, globex) = (Sink::start().await, Sink::start().await);
    let policy = format!("{OUTBREAK}\n[policy.default.greylist]\nenabled = true\n");
    let cfg = config(&redis, "pause", &policy);
    let e = TestEngine::start(&dir.path().join("spool"), acme.addr, globex.addr, &cfg).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis
        .query(&["CLIENT", "PAUSE", "30000", "ALL"])
        .expect("paused");
    let start = Instant::now();
    let mut c = via(&e, "192.0.2.50").await;
    let reply = c
        .mail(
            "a@sender.example",
            &["bob@acme.example"],
            &campaign_copy("Paused", [0, 1, 2, 3], "bob@acme.example"),
        )
        .await;
    assert!(reply.starts_with("250"), "{reply}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "the session did not wait for the paused store ({:?})",
        start.elapsed()
    );
    let text = e.ops.metrics.render();
    assert!(
        text.contains("maildistiller_shared_calls_total{op=\"read\",result=\"timeout\""),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_rates_are_summed_across_edges() {
    let Some(redis) = Redis::start() else { return };
    let extra = format!(
        "[edge.fleet_limits]\nconnections_per_minute = 4\nmessages_per_minute = 2\n[shared]\nredis = [\"{}\"]\nprefix = \"lim\"\nsync_interval = \"100ms\"\n",
        redis.url()
    );
    let a = crate::edge::Fleet::start(&extra, 100).await;
    let b = crate::edge::Fleet::start(&extra, 100).await;
    let total = || {
        let Some(mut con) = redis.con() else { return 0 };
        redis
            .keys("lim:r:*:c:*")
            .iter()
            .filter_map(|k| {
                redis::cmd("GET")
                    .arg(k)
                    .query::<Option<u64>>(&mut con)
                    .ok()
                    .flatten()
            })
            .sum::<u64>()
    };
    // Two at each edge: within the limit everywhere (and each edge alone is far below it).
    let mut a1 = crate::edge::client_from("127.0.0.5", a.smtp).await;
    // Two messages a minute from this network: the third transaction's first RCPT is refused.
    a1.cmd("EHLO mta.example", "250").await;
    for _ in 0..2 {
        a1.cmd("MAIL FROM:<s@sender.example>", "250").await;
        a1.cmd("RCPT TO:<bob@acme.example>", "250").await;
        a1.cmd("RSET", "250").await;
    }
    a1.cmd("MAIL FROM:<s@sender.example>", "250").await;
    a1.cmd("RCPT TO:<bob@acme.example>", "451 4.7.1").await;
    let _a2 = crate::edge::client_from("127.0.0.5", a.smtp).await;
    let _b1 = crate::edge::client_from("127.0.0.6", b.smtp).await;
    let _b2 = crate::edge::client_from("127.0.0.6", b.smtp).await;
    assert!(
        until(Duration::from_secs(5), || total() == 4).await,
        "both edges synced: {}",
        total()
    );
    // Both edges learn the fleet's total at their next sync.
    tokio::time::sleep(Duration::from_millis(400)).await;
    for edge in [a.smtp, b.smtp] {
        let mut c = Client::from_stream({
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind("127.0.0.7:0".parse().unwrap()).unwrap();
            sock.connect(edge).await.unwrap()
        });
        c.expect("421 4.7.0").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intel_block_reaches_every_engine_and_is_cited() {
    let Some(redis) = Redis::start() else { return };
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (acme, globex) = (Sink::start().await, Sink::start().await);
    let policy = format!("{OUTBREAK}\n[policy.default.actions]\nblocklist = \"quarantine\"\n");
    let cfg = config(&redis, "intel", &policy);
    let e1 = TestEngine::start(&d1.path().join("spool"), acme.addr, globex.addr, &cfg).await;
    let e2 = TestEngine::start(&d2.path().join("spool"), acme.addr, globex.addr, &cfg).await;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops_addr = l.local_addr().unwrap().to_string();
    tokio::spawn(maildistiller::ops::serve(e1.ops.clone(), l));
    let config = d1.path().join("engine.toml");
    let cli = |args: &[&str]| {
        let mut all = vec![
            "--config",
            config.to_str().unwrap(),
            "intel",
            "--ops",
            &ops_addr,
        ];
        all.extend_from_slice(args);
        let all: Vec<String> = all.iter().map(|s| s.to_string()).collect();
        async move {
            tokio::task::spawn_blocking(move || {
                let refs: Vec<&str> = all.iter().map(String::as_str).collect();
                crate::support::run(&refs)
            })
            .await
            .unwrap()
        }
    };
    let out = cli(&[
        "block",
        "domain",
        "evil.example",
        "--reason",
        "phishing kit",
        "--expire",
        "1h",
    ])
    .await;
    assert!(out.status.success(), "{}", crate::support::stderr(&out));
    let entries = |e: &TestEngine| {
        e.ops
            .metrics
            .render()
            .lines()
            .any(|l| l.starts_with("maildistiller_intel_entries") && l.ends_with(" 1"))
    };
    assert!(
        until(Duration::from_secs(5), || entries(&e1) && entries(&e2)).await,
        "both engines read the feed"
    );
    let msg = "From: a@sender.example\r\nTo: bob@acme.example\r\nSubject: hi\r\n\r\nsee http://login.evil.example/reset now\r\n";
    let mut c = via(&e2, "192.0.2.60").await;
    let reply = c.mail("a@sender.example", &["bob@acme.example"], msg).await;
    assert!(reply.starts_with("250"), "{reply}");
    let l = e2.store.list();
    assert_eq!(l[0].state.as_str(), "quarantined");
    let v = &l[0].env.verdict;
    assert!(
        v.contains("intel.block") && v.contains("phishing kit"),
        "{v}"
    );
    let out = cli(&["list"]).await;
    assert!(
        crate::support::stdout(&out).contains("evil.example"),
        "{}",
        crate::support::stdout(&out)
    );
    let out = cli(&["expire", "domain", "evil.example"]).await;
    assert!(out.status.success(), "{}", crate::support::stderr(&out));
    let out = cli(&["list"]).await;
    assert!(crate::support::stdout(&out).contains("no entries"));
}

#[tokio::test]
async fn writes_wait_for_the_batch_and_a_full_queue_drops_them() {
    let Some(redis) = Redis::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (acme, globex) = (Sink::start().await, Sink::start().await);
    let cfg = config(&redis, "mp", OUTBREAK).replace(
        "flush_interval = \"20ms\"",
        "flush_interval = \"10s\"\nmax_pending = 100",
    );
    let e = TestEngine::start(&dir.path().join("spool"), acme.addr, globex.addr, &cfg).await;
    // One write a message (all its sightings in one script call): 110 messages overflow a
    // queue of 100. Eleven connections at once, so they are all in well before the next batch.
    let proxy = e.proxy.expect("proxy listener");
    let mut senders = tokio::task::JoinSet::new();
    for k in 0..11 {
        senders.spawn(async move {
            let mut c = Client::connect_raw(proxy).await;
            c.send(b"PROXY TCP4 192.0.2.70 127.0.0.1 40000 25\r\n")
                .await;
            c.expect("220").await;
            for n in k * 10..k * 10 + 10 {
                let msg = campaign_copy(
                    &format!("Reader {n}"),
                    [n % 4, (n + 1) % 4, (n + 2) % 4, (n + 3) % 4],
                    "bob@acme.example",
                );
                let reply = c
                    .mail("a@sender.example", &["bob@acme.example"], &msg)
                    .await;
                assert!(reply.starts_with("250"), "{reply}");
            }
        });
    }
    while let Some(r) = senders.join_next().await {
        r.unwrap();
    }
    // The first batch goes at start; the next one is 10 s away: nothing was written yet.
    assert!(redis.keys("mp:o:*").is_empty(), "shared.flush_interval");
    let text = e.ops.metrics.render();
    let dropped: f64 = text
        .lines()
        .find(|l| l.starts_with("maildistiller_shared_writes_dropped_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    assert!(dropped > 0.0, "shared.max_pending: {dropped}");
}

/// `maildistiller_shared_lessons_total{outcome}` of `e`.
fn lessons(e: &TestEngine, outcome: &str) -> u64 {
    e.ops
        .metrics
        .render()
        .lines()
        .find(|l| {
            l.starts_with("maildistiller_shared_lessons_total{")
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// bob reports `spam(id)` to acme's report address at `e`.
async fn report_spam(e: &TestEngine, id: &str) {
    use crate::learning::report;
    use crate::learnt::spam;
    let mut c = Client::connect(e.smtp).await;
    let r = c
        .mail(
            "bob@acme.example",
            &["report-spam@acme.example"],
            &report("bob@acme.example", &spam(id, ".")),
        )
        .await;
    assert!(r.starts_with("250 2.0.0 Report taken"), "{r}");
    c.cmd("QUIT", "221").await;
}

/// A report at one engine teaches every engine's own model: the near-copy through the other
/// engine scores `learnt.spam` (its own model was never taught there); a restart neither
/// counts the lesson twice nor loses it; the same message reported at the second engine too
/// changes nothing (once per message, fleet-wide).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lesson_taught_at_one_engine_is_learnt_by_every_engines_model() {
    use crate::learning::{Controller, learning};
    use crate::learnt::{KEYS, send, spam};
    use maildistiller::engine::learn::model;
    let Some(redis) = Redis::start() else { return };
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (acme, globex) = (Sink::start().await, Sink::start().await);
    let ctl = Controller::start().await;
    let policy = learning(d1.path(), &ctl.addr.to_string(), KEYS)
        .replace("dnsbl = false\n", "dnsbl = false\nlearnt = true\n");
    let cfg = config(&redis, "ls", &policy);
    let (s1, s2) = (d1.path().join("spool"), d2.path().join("spool"));
    let e1 = TestEngine::start(&s1, acme.addr, globex.addr, &cfg).await;
    let e2 = TestEngine::start(&s2, acme.addr, globex.addr, &cfg).await;

    // Untrained everywhere.
    let v = send(&e2, &acme, "deals@offers.test", &spam("f0", ".")).await;
    assert!(!v.contains("learnt"), "{v}");

    // bob reports one at the first engine.
    report_spam(&e1, "f1").await;
    assert_eq!(lessons(&e1, "published"), 1);
    assert!(
        until(Duration::from_secs(10), || lessons(&e2, "learnt") == 1).await,
        "the second engine learnt the lesson: {}",
        e2.ops.metrics.render()
    );
    // Its own lesson came back to the first engine as nothing new.
    assert_eq!(lessons(&e1, "learnt"), 0);
    let journal2 = s2.join("learning").join(model::FILE);
    assert_eq!(model::load(&journal2).unwrap().nspam, 1);

    // The near-copy through the second engine: its own model says spam.
    let v = send(&e2, &acme, "deals@offers.test", &spam("f2", ", friend.")).await;
    assert!(v.contains("learnt.spam(+7.5)"), "{v}");

    // The same message reported at the second engine: rspamd hears it (its own dedup), our
    // models do not count it twice, and nothing more is published.
    report_spam(&e2, "f1").await;
    assert_eq!(lessons(&e2, "published"), 0);
    assert_eq!(model::load(&journal2).unwrap().nspam, 1);

    // A restart of the second engine reads from its journaled position: nothing twice.
    e2.stop().await;
    let e2 = TestEngine::start(&s2, acme.addr, globex.addr, &cfg).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(lessons(&e2, "learnt"), 0);
    assert_eq!(model::load(&journal2).unwrap().nspam, 1);

    // An operator's bulk lesson on the first engine's spool (another process) reaches the
    // second engine's model too.
    let file = crate::support::write(
        d1.path(),
        "engine.toml",
        &crate::support::fleet_config(&format!(
            "[engine]\nspool_dir = \"{}\"\n{cfg}",
            s1.display()
        )),
    );
    let ham = crate::support::write(
        d1.path(),
        "ham.eml",
        "From: Alice <alice@partner.test>\r\nSubject: Minutes\r\nMessage-ID: <h1@partner.test>\r\n\r\n\
         Here are the minutes of our project meeting.\r\n",
    );
    let o = crate::support::run(&[
        "learn",
        "--config",
        file.to_str().unwrap(),
        "--ham",
        ham.to_str().unwrap(),
    ]);
    let out = crate::support::stdout(&o);
    assert!(o.status.success(), "{}", crate::support::stderr(&o));
    assert!(out.contains("1 lessons published to the fleet"), "{out}");
    assert!(
        until(Duration::from_secs(10), || lessons(&e2, "learnt") == 1).await,
        "the operator's lesson reached the second engine"
    );
    assert_eq!(model::load(&journal2).unwrap().nham, 1);
    e2.stop().await;
    e1.stop().await;
}

/// The benchmark (`bench/scan/outbreak.sh` runs it in release mode; never in CI).
#[tokio::test]
#[ignore]
async fn bench_outbreak_cost() {
    let Some(redis) = Redis::start() else { return };
    bench::run(&redis).await;
}

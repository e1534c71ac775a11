//! Recipient verification (`engine::verify`): unknown users refused at RCPT through the edge,
//! call-ahead answers cached within their bounds and lifetimes, mail held for known recipients
//! while the tenant's server is down, recipient files read again when they change.

mod harness;
mod postfix; // the call-ahead against a real Postfix (skips without it)

use std::time::{Duration, Instant};

use maildistiller::store::State;

use crate::mail::{Client, until};
use crate::support::write;
pub use harness::rcpt_at;
use harness::{Setup, edge, metric};

const CALL_AHEAD: &str = "verify = \"call-ahead\"";

fn msg(subject: &str) -> String {
    format!("From: alice@sender.example\r\nSubject: {subject}\r\n\r\nHello.\r\n")
}

/// The sender hears `550 5.1.1` at RCPT time through the edge for a user the tenant's server
/// does not have, `250` for one it has; the message goes to the known one only, and nothing
/// was sent to the tenant's server for the unknown one (no bounce, no backscatter). The edge's
/// config names a recipients file that exists only on engines: edges never read it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_user_gets_550_at_rcpt_through_the_edge_known_user_250() {
    let dir = tempfile::tempdir().unwrap();
    let s = Setup::start_in(dir, CALL_AHEAD, "", true).await;
    s.sink.rcpt_reply(
        "nobody@acme.example",
        "550 5.1.1 <nobody@acme.example>: no such user",
    );
    let edge_acme = "recipients = [\"ceo\"]\nrecipients_file = \"only-on-engines.txt\"\nverify = \"call-ahead\"";
    let (smtp, edge_ops) = edge(s.dir.path(), s.engine.proxy.unwrap(), edge_acme).await;

    let mut c = Client::connect(smtp).await;
    c.cmd("EHLO client.example", "250").await;
    c.cmd("MAIL FROM:<alice@sender.example>", "250").await;
    let r = c.cmd("RCPT TO:<nobody@acme.example>", "550").await;
    assert_eq!(r, "550 5.1.1 Recipient address rejected: user unknown\r\n");
    c.cmd("RCPT TO:<bob@acme.example>", "250 2.1.5").await;
    c.cmd("DATA", "354").await;
    c.send(msg("verified").as_bytes()).await;
    c.send(b".\r\n").await;
    c.expect("250 2.0.0 Ok: queued as").await;
    c.cmd("QUIT", "221").await;

    assert!(
        until(Duration::from_secs(10), || s.sink.messages().len() == 1).await,
        "delivered"
    );
    assert_eq!(s.sink.messages()[0].rcpts, ["bob@acme.example"]);
    assert_eq!(s.gate.probes_of("nobody@acme.example"), 1);
    assert_eq!(s.verified("rejected"), 1);
    assert_eq!(s.verified("accepted"), 1);
    // The probes: the null sender, one recipient per transaction, RSET between, one
    // connection for both (reused), and never DATA.
    let probes: Vec<String> = s
        .gate
        .sessions()
        .into_iter()
        .filter(|x| !x.contains("DATA"))
        .collect();
    assert_eq!(probes.len(), 1, "one probe connection: {probes:?}");
    let p = &probes[0];
    assert!(p.starts_with("EHLO mde1.test\r\n"), "{p}");
    assert!(
        p.contains(
            "MAIL FROM:<>\r\nRCPT TO:<nobody@acme.example>\r\nRSET\r\n\
             MAIL FROM:<>\r\nRCPT TO:<bob@acme.example>\r\nRSET\r\n"
        ),
        "{p}"
    );
    edge_ops.shutdown.cancel();
}

/// A tenant's server goes down after it confirmed bob: mail for bob is still accepted and held
/// (then delivered when the server is back); carol, never asked about, gets `451 4.4.3`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_tenant_with_a_warm_cache_still_gets_its_mail_held() {
    let mut s = Setup::start(CALL_AHEAD, "").await;
    assert!(s.rcpt("bob@acme.example").await.starts_with("250 2.1.5"));
    s.gate.close();

    let mut c = Client::connect(s.engine.smtp).await;
    c.cmd("EHLO client.example", "250").await;
    c.cmd("MAIL FROM:<alice@sender.example>", "250").await;
    c.cmd("RCPT TO:<bob@acme.example>", "250 2.1.5").await;
    let r = c.cmd("RCPT TO:<carol@acme.example>", "451").await;
    assert_eq!(
        r,
        "451 4.4.3 Recipient address verification is not possible now, try again later\r\n"
    );
    c.cmd("DATA", "354").await;
    c.send(msg("while down").as_bytes()).await;
    c.send(b".\r\n").await;
    c.expect("250 2.0.0 Ok: queued as").await;
    c.cmd("QUIT", "221").await;
    let held = || {
        s.engine
            .store
            .list()
            .iter()
            .any(|l| l.state == State::Held && l.env.rcpts == ["bob@acme.example"])
    };
    assert!(until(Duration::from_secs(10), held).await, "held for bob");

    // Now delivery says the destination is down: known recipients are accepted without a
    // probe, unknown ones still get 451.
    assert!(s.rcpt("bob@acme.example").await.starts_with("250 2.1.5"));
    assert!(s.rcpt("carol@acme.example").await.starts_with("451 4.4.3"));
    assert_eq!(
        s.gate.probes_of("carol@acme.example"),
        0,
        "nothing reached it"
    );
    assert_eq!(s.verified("tempfail"), 2);

    s.gate.open().await;
    assert!(
        until(Duration::from_secs(10), || s.sink.messages().len() == 1).await,
        "the held mail is delivered when the server is back"
    );
    assert_eq!(s.sink.messages()[0].rcpts, ["bob@acme.example"]);
}

/// Past `positive_refresh` a known recipient is asked again; a server that does not answer then
/// leaves the cached answer standing (`accepted_while_down`) until `positive_ttl`, after which
/// the recipient is unknown to us again: `451 4.4.3`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_recipient_stands_while_down_until_positive_ttl() {
    let s = Setup::start(
        CALL_AHEAD,
        "[engine.verify]\npositive_refresh = \"100ms\"\npositive_ttl = \"1500ms\"",
    )
    .await;
    assert!(s.rcpt("bob@acme.example").await.starts_with("250 2.1.5"));
    s.gate.close();
    // Let the answer age past the refresh time (a lifetime, not a readiness wait).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(s.rcpt("bob@acme.example").await.starts_with("250 2.1.5"));
    assert_eq!(s.verified("accepted_while_down"), 1);
    let mut last = String::new();
    let expired = async {
        for _ in 0..100 {
            last = s.rcpt("bob@acme.example").await;
            if last.starts_with("451 4.4.3") {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    assert!(expired.await, "forgotten after positive_ttl: {last}");
}

/// A known answer is believed until `positive_refresh` (no probe), then asked again; an unknown
/// one until `negative_ttl`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_asked_again_after_refresh_and_negative_ttl() {
    let s = Setup::start(
        CALL_AHEAD,
        "[engine.verify]\npositive_refresh = \"300ms\"\nnegative_ttl = \"300ms\"",
    )
    .await;
    s.sink.rcpt_reply("x@acme.example", "550 5.1.1 unknown");
    assert!(s.rcpt("x@acme.example").await.starts_with("550 5.1.1"));
    assert!(s.rcpt("bob@acme.example").await.starts_with("250"));
    // The server changes its mind about both.
    s.sink.rcpt_reply("x@acme.example", "250 ok");
    s.sink.rcpt_reply("bob@acme.example", "550 5.1.1 gone");
    assert!(
        s.rcpt("x@acme.example").await.starts_with("550 5.1.1"),
        "cached"
    );
    assert!(
        s.rcpt("bob@acme.example").await.starts_with("250"),
        "cached"
    );
    assert_eq!(s.gate.probes_of("x@acme.example"), 1);
    assert_eq!(s.gate.probes_of("bob@acme.example"), 1);
    let changed = async {
        for _ in 0..50 {
            if s.rcpt("x@acme.example").await.starts_with("250")
                && s.rcpt("bob@acme.example").await.starts_with("550 5.1.1")
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    assert!(changed.await, "asked again after the lifetimes");
    let hits = metric(
        &s.engine.ops,
        "maildistiller_engine_rcpt_verify_cache_total{",
        &["result=\"hit\""],
    );
    assert!(hits >= 2, "{hits}");
}

/// The cache keeps at most `cache_size` known recipients, the least recently used going first:
/// with the server down, the evicted one is no longer known (451), the others are (250). A
/// flood of unknown addresses does not push known ones out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_is_bounded_and_unknown_addresses_do_not_evict_known_ones() {
    let s = Setup::start(CALL_AHEAD, "[engine.verify]\ncache_size = 2").await;
    for i in 0..6 {
        s.sink
            .rcpt_reply(&format!("spam{i}@acme.example"), "550 5.1.1 unknown");
    }
    for a in ["a", "b", "c"] {
        assert!(
            s.rcpt(&format!("{a}@acme.example"))
                .await
                .starts_with("250")
        );
    }
    for i in 0..6 {
        assert!(
            s.rcpt(&format!("spam{i}@acme.example"))
                .await
                .starts_with("550")
        );
    }
    s.gate.close();
    assert!(
        s.rcpt("a@acme.example").await.starts_with("451 4.4.3"),
        "evicted"
    );
    assert!(s.rcpt("b@acme.example").await.starts_with("250"));
    assert!(s.rcpt("c@acme.example").await.starts_with("250"));
    let entries = |answer: &str| {
        metric(
            &s.engine.ops,
            "maildistiller_engine_rcpt_verify_cache_entries{",
            &[&format!("answer=\"{answer}\"")],
        )
    };
    assert_eq!((entries("known"), entries("unknown")), (2, 2));
    let evicted = metric(
        &s.engine.ops,
        "maildistiller_engine_rcpt_verify_cache_evictions_total",
        &[],
    );
    assert_eq!(evicted, 1 + 4);
}

/// A server that takes the connection and never greets costs the sender at most
/// `engine.verify.timeout`, then `451 4.4.3`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_costs_the_probe_timeout_then_451() {
    let s = Setup::start(CALL_AHEAD, "[engine.verify]\ntimeout = \"300ms\"").await;
    s.gate.hang();
    let started = Instant::now();
    let r = s.rcpt("bob@acme.example").await;
    assert!(r.starts_with("451 4.4.3"), "{r}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered after {:?}",
        started.elapsed()
    );
}

/// `engine.verify.sender` is the probes' MAIL FROM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_sender_is_configurable() {
    let s = Setup::start(CALL_AHEAD, "[engine.verify]\nsender = \"verify@mde1.test\"").await;
    assert!(s.rcpt("bob@acme.example").await.starts_with("250"));
    let sessions = s.gate.sessions();
    assert!(
        sessions[0].contains("MAIL FROM:<verify@mde1.test>\r\nRCPT TO:<bob@acme.example>\r\n"),
        "{sessions:?}"
    );
}

/// A recipients file is the list (with the inline `recipients`); a changed file gives new
/// answers without a restart; a broken one keeps the list last read, counted as an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_recipients_file_gives_new_answers_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "acme-recipients.txt",
        "# acme\nbob@acme.example\n@sales.acme.example\n",
    );
    let s = Setup::start_in(
        dir,
        "subdomains = true\nrecipients = [\"ceo\"]\nrecipients_file = \"acme-recipients.txt\"",
        "[engine.verify]\nreload_interval = \"100ms\"",
        false,
    )
    .await;
    assert!(s.rcpt("bob@acme.example").await.starts_with("250"));
    assert!(s.rcpt("anyone@sales.acme.example").await.starts_with("250"));
    assert!(
        s.rcpt("ceo@acme.example").await.starts_with("250"),
        "inline list"
    );
    assert!(s.rcpt("carol@acme.example").await.starts_with("550 5.1.1"));
    assert_eq!(s.verified("unlisted"), 1);

    let next = file.with_extension("new");
    std::fs::write(&next, "carol@acme.example\n").unwrap();
    std::fs::rename(&next, &file).unwrap();
    let mut answers = (String::new(), String::new());
    let swapped = async {
        for _ in 0..30 {
            answers = (
                s.rcpt("carol@acme.example").await,
                s.rcpt("bob@acme.example").await,
            );
            if answers.0.starts_with("250") && answers.1.starts_with("550 5.1.1") {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    assert!(swapped.await, "new file in force within 3 s: {answers:?}");

    std::fs::write(&file, "carol@acme.example\nnot an address\n").unwrap();
    let reload = |result: &str| {
        metric(
            &s.engine.ops,
            "maildistiller_engine_recipients_file_reload_total{",
            &["tenant=\"acme\"", &format!("result=\"{result}\"")],
        )
    };
    assert!(
        until(Duration::from_secs(3), || reload("error") == 1).await,
        "the broken file is counted"
    );
    assert_eq!(reload("ok"), 2);
    assert!(
        s.rcpt("carol@acme.example").await.starts_with("250"),
        "old list kept"
    );
    assert_eq!(s.gate.sessions().len(), 0, "no call-ahead without verify");
}

/// `maildistiller check` (the engine role) refuses a recipients file that does not parse,
/// with the tenant, the file and the line; an edge with the same config does not read it.
#[test]
fn check_refuses_a_broken_recipients_file_on_engines_only() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "acme.txt",
        "bob@acme.example\nbob@globex.example\n",
    );
    let text = crate::support::fleet_config("").replace(
        "[[tenant]]\nid = \"acme\"",
        "[[tenant]]\nid = \"acme\"\nrecipients_file = \"acme.txt\"",
    );
    assert!(
        text.contains("recipients_file"),
        "the fleet config names acme"
    );
    let cfg = write(dir.path(), "fleet.toml", &text);
    let engine = maildistiller::config::RoleSet {
        engine: true,
        ..Default::default()
    };
    let err = maildistiller::node::load(&cfg, engine)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tenant[acme].recipients_file:")
            && err.contains("acme.txt: line 2: \"bob@globex.example\": globex.example is not a domain of this tenant"),
        "{err}"
    );
    let edge = maildistiller::config::RoleSet {
        edge: true,
        ..Default::default()
    };
    assert!(maildistiller::node::load(&cfg, edge).is_ok());
}

/// The edge relays an engine's tempfail as it came, and the message still goes to the
/// recipients that were accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_edge_a_cold_recipient_of_a_down_tenant_gets_451() {
    let dir = tempfile::tempdir().unwrap();
    let s = Setup::start_in(dir, CALL_AHEAD, "", true).await;
    let (smtp, edge_ops) = edge(s.dir.path(), s.engine.proxy.unwrap(), "").await;
    assert!(rcpt_at(smtp, "bob@acme.example").await.starts_with("250"));
    s.gate.close();
    let r = rcpt_at(smtp, "carol@acme.example").await;
    assert!(r.starts_with("451 4.4.3"), "{r}");
    edge_ops.shutdown.cancel();
}

//! `[policy.NAME]` keys set away from their defaults, each with the decision that changes: the
//! action a finding takes, a scanner switched off, a budget that makes a message unscannable or
//! hides text from the rules, a resolver that retries or re-asks, the `Authentication-Results`
//! name, URL lookups, size rules and the external scanners' size limits. The other scan tests run
//! with the defaults, so each case fails if its key is read and then ignored.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use maildistiller::engine::policy::Disposition;
use maildistiller::engine::scan::Action;
use tokio::net::UdpSocket;

use super::external::{Fake, fake_clamd, fake_rspamd};
use super::harness::{Mail, disposition, harness, has};

/// The GTUBE test string (rejected wherever the content scanner sees it).
const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

/// The EICAR test file (a virus wherever the antivirus scanners see it).
const EICAR: &str = r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

fn mail() -> Mail {
    Mail::from("alice@good.test")
}

/// A small message from alice@good.test (SPF passes) with `body` as its text.
fn message(body: &str) -> Vec<u8> {
    format!(
        "From: Alice <alice@good.test>\r\nTo: bob@acme.example\r\nSubject: notes\r\n\
         Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <keys@good.test>\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

/// A message whose author domain fails DMARC and publishes `p=quarantine` (the fixture zone's
/// `dmarc-quarantine.test`), with its envelope.
fn dmarc_quarantine() -> (Mail, &'static [u8]) {
    let mut m = Mail::from("ceo@dmarc-quarantine.test");
    m.helo = "mail.dmarc-quarantine.test".into();
    let raw = b"From: CEO <ceo@dmarc-quarantine.test>\r\nTo: bob@acme.example\r\n\
Subject: invoice\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\
Message-ID: <dmarc-q@dmarc-quarantine.test>\r\n\r\nPlease pay.\r\n";
    (m, raw)
}

#[track_caller]
fn rejected(v: &maildistiller::engine::scan::Verdict) -> String {
    let Action::Reject { reply } = &v.action else {
        panic!("not rejected: {:?}: {}", v.action, v.summary)
    };
    reply.to_string()
}

/// Each of `actions.*` turned around: the finding's disposition follows the key.
#[tokio::test]
async fn finding_actions_follow_the_policy() {
    let h = harness(
        r#"
[policy.default.actions]
virus = "quarantine"
unscannable = "reject"
dmarc_reject = "quarantine"
dmarc_quarantine = "reject"
blocklist = "quarantine"
[policy.default.block]
senders = ["spammer@good.test"]
"#,
    )
    .await;
    // A virus (default reject) is quarantined, with the reason users see in webmail. (EICAR in
    // the text: eicar.eml's `.com` attachment would be quarantined as a blocked one anyway.)
    let v = h.scan(&mail(), &message(EICAR)).await;
    let Action::Quarantine { reason } = &v.action else {
        panic!("{:?}: {}", v.action, v.summary)
    };
    assert!(reason.starts_with("virus: "), "{reason}");
    // An unscannable bomb (default quarantine) is refused in the session.
    let v = h.scan_fixture(&mail(), "bomb.eml").await;
    assert!(has(&v, "unscannable.archive_ratio"), "{}", v.summary);
    assert!(rejected(&v).starts_with("550 5.7.1 "), "{}", v.summary);
    // DMARC p=reject (default reject) is quarantined.
    let mut m = Mail::from("ceo@dmarc-reject.test");
    m.helo = "mail.dmarc-reject.test".into();
    let v = h.scan_fixture(&m, "dmarc-reject.eml").await;
    assert!(has(&v, "dmarc.fail"), "{}", v.summary);
    assert_eq!(disposition(&v), Disposition::Quarantine, "{}", v.summary);
    // DMARC p=quarantine (default quarantine) is rejected.
    let (m, raw) = dmarc_quarantine();
    let v = h.scan(&m, raw).await;
    assert!(has(&v, "dmarc.fail"), "{}", v.summary);
    assert!(rejected(&v).starts_with("550 5.7.1 "), "{}", v.summary);
    // A blocked sender (default reject) is quarantined.
    let v = h
        .scan_fixture(&Mail::from("spammer@good.test"), "clean.eml")
        .await;
    assert_eq!(disposition(&v), Disposition::Quarantine, "{}", v.summary);
}

/// The other half of `finding_actions_follow_the_policy`: by default the DMARC p=quarantine
/// message is quarantined, so the test above proves the key, not the zone fixture.
#[tokio::test]
async fn a_dmarc_quarantine_failure_is_quarantined_by_default() {
    let h = harness("").await;
    let (m, raw) = dmarc_quarantine();
    let v = h.scan(&m, raw).await;
    assert_eq!(disposition(&v), Disposition::Quarantine, "{}", v.summary);
}

#[tokio::test]
async fn attachment_actions_and_the_attachment_scanner_switch() {
    let h = harness(
        r#"
[policy.default.attachments]
encrypted_archives = "reject"
macro_documents = "deliver"
"#,
    )
    .await;
    let v = h.scan_fixture(&mail(), "encrypted-zip.eml").await;
    assert!(has(&v, "attachment.encrypted"), "{}", v.summary);
    assert!(rejected(&v).starts_with("550 5.7.1 "), "{}", v.summary);
    let v = h.scan_fixture(&mail(), "macro-document.eml").await;
    assert!(has(&v, "attachment.macro"), "{}", v.summary);
    assert_eq!(v.action, Action::Deliver, "{}", v.summary);

    let off = harness("[policy.default.scanners]\nattachments = false\n").await;
    let v = off.scan_fixture(&mail(), "blocked-attachment.eml").await;
    assert!(
        !v.summary.contains("attachment."),
        "no attachment finding with the scanner off: {}",
        v.summary
    );
    assert_eq!(v.action, Action::Deliver, "{}", v.summary);
}

#[tokio::test]
async fn header_lines_and_text_budgets() {
    let h = harness(
        r#"
[policy.default.limits]
max_header_lines = 10
max_text_bytes = "1k"
"#,
    )
    .await;
    // Eleven header lines: unscannable, quarantined (actions.unscannable's default).
    let mut raw = String::new();
    for i in 0..6 {
        raw.push_str(&format!("X-Trace-{i}: hop {i}\r\n"));
    }
    raw.push_str(&String::from_utf8(message("hello")).unwrap());
    let v = h.scan(&mail(), raw.as_bytes()).await;
    assert!(has(&v, "unscannable.header_lines"), "{}", v.summary);
    assert_eq!(disposition(&v), Disposition::Quarantine, "{}", v.summary);
    // GTUBE after 2 KB of text is past what rules and GTUBE see.
    let late = message(&format!(
        "{}\r\n{}",
        "lorem ipsum dolor sit amet\r\n".repeat(80),
        GTUBE
    ));
    let v = h.scan(&mail(), &late).await;
    assert!(!has(&v, "gtube"), "{}", v.summary);
    assert_eq!(v.action, Action::Deliver, "{}", v.summary);
    // With the default budgets both are scanned as usual.
    let d = harness("").await;
    assert_eq!(
        disposition(&d.scan(&mail(), raw.as_bytes()).await),
        Disposition::Deliver
    );
    assert!(has(&d.scan(&mail(), &late).await, "gtube"));
}

#[tokio::test]
async fn authserv_id_names_our_authentication_results() {
    let h = harness("[policy.default.auth]\nauthserv_id = \"filter.example.com\"\n").await;
    let v = h.scan_fixture(&mail(), "clean.eml").await;
    assert!(
        v.headers
            .starts_with("Authentication-Results: filter.example.com;"),
        "{}",
        v.headers
    );
    // A forged header claiming our new name is removed from the spooled copy.
    let raw = b"Authentication-Results: filter.example.com; spf=pass\r\nFrom: alice@good.test\r\n\
Subject: hi\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <f@good.test>\r\n\r\nhi\r\n";
    let v = h.scan(&mail(), raw).await;
    let spooled = String::from_utf8(v.apply(raw.to_vec())).unwrap();
    assert_eq!(
        spooled.matches("Authentication-Results:").count(),
        1,
        "{spooled}"
    );
}

#[tokio::test]
async fn url_lookups_stop_at_max_lookups() {
    // The test policy writes `[policy.default.urls]`; tenant acme's override sets the key.
    let h = harness("[policy.default.tenant.acme.urls]\nmax_lookups = 1\n").await;
    // evil.test is on the URI list; here it is the second host, never looked up.
    let second = message("See https://fine.test/a and https://evil.test/b today.");
    let v = h.scan(&mail(), &second).await;
    assert!(!has(&v, "uribl.uribl.test"), "{}", v.summary);
    let first = message("See https://evil.test/b and https://fine.test/a today.");
    let v = h.scan(&mail(), &first).await;
    assert!(has(&v, "uribl.uribl.test"), "{}", v.summary);
    // By default both hosts are looked up.
    let d = harness("").await;
    assert!(has(&d.scan(&mail(), &second).await, "uribl.uribl.test"));
}

#[tokio::test]
async fn size_rules_match_messages_above_their_size() {
    let h = harness(
        r#"
[[policy.default.size]]
name = "big"
above = "1k"
action = "quarantine"
"#,
    )
    .await;
    let small = message("short");
    let v = h.scan(&mail(), &small).await;
    assert!(!has(&v, "size.big"), "{}", v.summary);
    assert_eq!(v.action, Action::Deliver, "{}", v.summary);
    let big = message(&"a line of ordinary text\r\n".repeat(60));
    let v = h.scan(&mail(), &big).await;
    assert!(has(&v, "size.big"), "{}", v.summary);
    assert_eq!(disposition(&v), Disposition::Quarantine, "{}", v.summary);
}

#[tokio::test]
async fn external_scanners_are_not_sent_messages_over_max_size() {
    let clamd = fake_clamd(Fake::Honest).await;
    let rspamd = fake_rspamd(6.0).await;
    let h = harness(&format!(
        r#"
[policy.default.scanners]
antivirus = false
attachments = false
clamd = true
rspamd = true
[policy.default.clamd]
address = "tcp:{clamd}"
on_failure = "accept"
max_size = 500
[policy.default.rspamd]
address = "{rspamd}"
max_size = 500
"#
    ))
    .await;
    // eicar.eml (454 bytes) goes to both: clamd finds the virus, rspamd adds its symbol.
    let v = h.scan_fixture(&mail(), "eicar.eml").await;
    assert!(has(&v, "virus.clamd"), "{}", v.summary);
    assert!(v.summary.contains("FAKE_SYMBOL"), "{}", v.summary);
    // The forwarded zip (1264 bytes) goes to neither: its virus is not found, both count a
    // failure, and the policy (on_failure = accept) delivers.
    let v = h.scan_fixture(&mail(), "virus-zip-forwarded.eml").await;
    assert!(!has(&v, "virus.clamd"), "{}", v.summary);
    assert!(!v.summary.contains("FAKE_SYMBOL"), "{}", v.summary);
    assert!(
        v.summary.contains("over the scanner's size limit"),
        "{}",
        v.summary
    );
    assert!(v.summary.contains("failures=\"clamd"), "{}", v.summary);
    assert!(v.summary.contains("rspamd"), "{}", v.summary);
    assert_eq!(v.action, Action::Deliver, "{}", v.summary);
}

/// A UDP relay in front of the test zone: loses the first `lose` queries of each name and type
/// and counts every query it sees.
struct Relay {
    addr: SocketAddr,
    seen: Arc<Mutex<HashMap<String, usize>>>,
}

impl Relay {
    async fn start(upstream: SocketAddr, lose: usize) -> Relay {
        let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = sock.local_addr().unwrap();
        let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let counts = seen.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, client)) = sock.recv_from(&mut buf).await {
                let query = buf[..n].to_vec();
                let Some(key) = question(&query) else {
                    continue;
                };
                let nth = {
                    let mut c = counts.lock().unwrap();
                    let e = c.entry(key).or_insert(0);
                    *e += 1;
                    *e
                };
                if nth <= lose {
                    continue;
                }
                let sock = sock.clone();
                tokio::spawn(async move {
                    let up = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                    up.send_to(&query, upstream).await.unwrap();
                    let mut b = vec![0u8; 4096];
                    if let Ok(Ok(n)) =
                        tokio::time::timeout(std::time::Duration::from_secs(2), up.recv(&mut b))
                            .await
                    {
                        let _ = sock.send_to(&b[..n], client).await;
                    }
                });
            }
        });
        Relay { addr, seen }
    }

    fn asked(&self, name: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{name}. ")))
            .map(|(_, n)| n)
            .sum()
    }
}

/// `name. TYPE` of a query.
fn question(q: &[u8]) -> Option<String> {
    let m = hickory_proto::op::Message::from_vec(q).ok()?;
    let q = m.queries.first()?;
    Some(format!(
        "{} {}",
        q.name().to_ascii().to_ascii_lowercase(),
        q.query_type()
    ))
}

/// The scan resolver of tenant acme pointed at `relay`, with `dns` settings
/// (`[policy.NAME.tenant.ID]` overrides any policy key for one tenant; the test policy's own
/// `[policy.default.dns]` names the zone's server directly).
fn resolver_via(relay: &Relay, dns: &str) -> String {
    format!(
        "[policy.default.tenant.acme.dns]\nresolver = \"{}\"\n{dns}",
        relay.addr
    )
}

/// `attempts` is how many queries one lookup sends: one lost packet is a temporary error
/// with one attempt, and two lost packets are survived with three (the default, two, would
/// give up).
#[tokio::test]
async fn dns_attempts_is_the_number_of_queries_per_lookup() {
    let zone = super::dns::start().await;
    let lossy = Relay::start(zone.addr, 1).await;
    let h = harness(&resolver_via(&lossy, "timeout = \"100ms\"\nattempts = 1\n")).await;
    let v = h.scan_fixture(&mail(), "clean.eml").await;
    assert!(has(&v, "spf.temperror"), "{}", v.summary);
    assert_eq!(lossy.asked("good.test"), 1, "one query, lost");

    let lossier = Relay::start(zone.addr, 2).await;
    let h = harness(&resolver_via(
        &lossier,
        "timeout = \"100ms\"\nattempts = 3\n",
    ))
    .await;
    let v = h.scan_fixture(&mail(), "clean.eml").await;
    assert!(has(&v, "spf.pass"), "{}", v.summary);
    assert_eq!(
        lossier.asked("good.test"),
        3,
        "two lost, the third answered"
    );
}

/// `negative_ttl = "0s"`: a name that does not exist (the HELO's SPF record) is asked again
/// for the next message; an answer that exists stays cached for its TTL. The default (60 s)
/// would ask once.
#[tokio::test]
async fn dns_negative_ttl_is_how_long_no_such_record_is_cached() {
    let zone = super::dns::start().await;
    let relay = Relay::start(zone.addr, 0).await;
    let h = harness(&resolver_via(&relay, "negative_ttl = \"0s\"\n")).await;
    for _ in 0..2 {
        let v = h.scan_fixture(&mail(), "clean.eml").await;
        assert!(has(&v, "spf.pass"), "{}", v.summary);
    }
    assert_eq!(relay.asked("mail.good.test"), 2, "NXDOMAIN not kept");
    assert_eq!(
        relay.asked("good.test"),
        1,
        "the SPF record kept for its TTL"
    );
}

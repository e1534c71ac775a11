//! Our first line (`scanners.gateway`): each signal fires on the message that shows it, stays
//! quiet on the ordinary and mailing-list cases that look like it, and each key turns its part
//! off. The loopback test DNS knows no PTR names, so every public client lacks FCrDNS here.

use super::harness::{Mail, harness, has};

/// A message with `headers` on top of a plain body.
fn message(headers: &str) -> Vec<u8> {
    format!("{headers}Subject: hello\r\nDate: Mon, 7 Dec 2026 10:00:00 +0000\r\nMessage-ID: <g@x.test>\r\n\r\nHello there.\r\n").into_bytes()
}

#[tokio::test]
async fn gateway_signals_fire_where_they_should() {
    let h = harness("").await;
    let mail = Mail::from("bounce@mailer.other.test");
    // Envelope in one organisation, From in another, recipient named nowhere: three signals,
    // and the sender's domain is new, so the fourth counts beside them.
    let v = h
        .scan(
            &mail,
            &message("From: Shop <news@shop.test>\r\nTo: someone@else.test\r\n"),
        )
        .await;
    for name in [
        "gateway.envelope_mismatch",
        "gateway.undisclosed",
        "gateway.no_fcrdns",
        "gateway.new_sender_domain",
    ] {
        assert!(has(&v, name), "{name}: {}", v.summary);
    }
    // A mailing list: List-Id explains both the envelope and the recipient.
    let v = h
        .scan(&mail, &message("From: Shop <news@shop.test>\r\nTo: list@lists.test\r\nList-Id: <news.lists.test>\r\n"))
        .await;
    assert!(!has(&v, "gateway.envelope_mismatch"), "{}", v.summary);
    assert!(!has(&v, "gateway.undisclosed"), "{}", v.summary);
    // Aligned and addressed to the recipient: neither of those two.
    let aligned = Mail::from("alice@good.test");
    let v = h
        .scan(
            &aligned,
            &message("From: Alice <alice@good.test>\r\nTo: bob@acme.example\r\n"),
        )
        .await;
    assert!(
        !has(&v, "gateway.envelope_mismatch") && !has(&v, "gateway.undisclosed"),
        "{}",
        v.summary
    );
    // Loopback and private clients are not looked up.
    let mut local = Mail::from("alice@good.test");
    local.client = "10.1.2.3".parse().unwrap();
    let v = h
        .scan(
            &local,
            &message("From: Alice <alice@good.test>\r\nTo: bob@acme.example\r\n"),
        )
        .await;
    assert!(!has(&v, "gateway.no_fcrdns"), "{}", v.summary);
}

#[tokio::test]
async fn links_to_unrelated_organisations_count_links_to_the_sender_do_not() {
    let h = harness("").await;
    let mail = Mail::from("alice@good.test");
    let body = |links: &str| {
        format!(
            "From: alice@good.test\r\nTo: bob@acme.example\r\nSubject: x\r\n\r\nSee {links}\r\n"
        )
        .into_bytes()
    };
    let v = h
        .scan(
            &mail,
            &body("http://a.one.test/x http://b.two.test/ http://www.three.test/"),
        )
        .await;
    assert!(has(&v, "gateway.url_unrelated"), "{}", v.summary);
    let v = h
        .scan(
            &mail,
            &body("http://a.one.test/x http://b.two.test/ http://www.good.test/"),
        )
        .await;
    assert!(!has(&v, "gateway.url_unrelated"), "{}", v.summary);
}

#[tokio::test]
async fn each_part_can_be_turned_off() {
    let raw = message("From: Shop <news@shop.test>\r\nTo: someone@else.test\r\n");
    let mail = Mail::from("bounce@mailer.other.test");
    let h = harness("[policy.default.gateway]\nfcrdns = false\nremember_domains = 0\n").await;
    let v = h.scan(&mail, &raw).await;
    assert!(has(&v, "gateway.envelope_mismatch"), "{}", v.summary);
    assert!(
        !has(&v, "gateway.no_fcrdns"),
        "fcrdns = false: {}",
        v.summary
    );
    assert!(
        !has(&v, "gateway.new_sender_domain"),
        "remember_domains = 0: {}",
        v.summary
    );
    let h = harness("[policy.default.scanners]\ngateway = false\n").await;
    let v = h.scan(&mail, &raw).await;
    assert!(
        !v.summary.contains("gateway."),
        "scanners.gateway = false: {}",
        v.summary
    );
}

#[tokio::test]
async fn beside_rspamd_the_client_rdns_counts_once() {
    // rspamd scores the client's reverse DNS itself (RDNS_NONE, HFILTER_HOSTNAME_UNKNOWN): with
    // it on, our FCrDNS stays off so the combined score does not count that fact twice. rspamd
    // is unreachable here (on_failure = accept): only our side of the verdict is looked at.
    let raw = message("From: Shop <news@shop.test>\r\nTo: someone@else.test\r\n");
    let mail = Mail::from("bounce@mailer.other.test");
    let h = harness(
        "[policy.default.scanners]\nrspamd = true\n[policy.default.rspamd]\n\
         address = \"127.0.0.1:1\"\ntimeout = \"2s\"\non_failure = \"accept\"\n",
    )
    .await;
    let v = h.scan(&mail, &raw).await;
    assert!(has(&v, "gateway.envelope_mismatch"), "{}", v.summary);
    assert!(
        !has(&v, "gateway.no_fcrdns"),
        "rspamd on: rDNS is rspamd's: {}",
        v.summary
    );
}

//! Policies and their actions, end to end through `Scanner::scan`: each action's reply,
//! headers and reason; the verdict header and `Authentication-Results`; the spooled message
//! (`Verdict::apply`); shadow policies; per-tenant overrides; tenant and user lists; metrics;
//! and configuration errors reported with their paths.

use maildistiller::engine::policy::Disposition;
use maildistiller::engine::scan::{Action, ScanMetrics};

use super::harness::{Mail, disposition, fixture, harness, has, try_harness};

fn mail() -> Mail {
    Mail::from("alice@good.test")
}

#[tokio::test]
async fn reject_answers_550_with_the_reference_and_adds_no_headers() {
    let h = harness("").await;
    let mut m = mail();
    m.queue_id = "Q7REF".into();
    let v = h.scan_fixture(&m, "gtube.eml").await;
    let Action::Reject { reply } = &v.action else {
        panic!("{:?}", v.action)
    };
    assert_eq!(
        reply.to_string(),
        "550 5.7.1 Message rejected as spam (ref Q7REF)"
    );
    assert!(v.headers.is_empty(), "a rejected message is not spooled");
    assert!(
        v.summary
            .starts_with("action=reject ref=Q7REF tenant=acme policy=default@")
    );
    assert!(v.summary.contains("gtube=+1000.0"), "{}", v.summary);
}

#[tokio::test]
async fn virus_rejection_says_virus_and_nothing_from_the_message() {
    let h = harness("").await;
    let v = h.scan_fixture(&mail(), "virus-zip-forwarded.eml").await;
    let Action::Reject { reply } = &v.action else {
        panic!("{:?}", v.action)
    };
    assert_eq!(
        reply.to_string(),
        "550 5.7.1 Message rejected: virus detected (ref Q0TEST)"
    );
}

#[tokio::test]
async fn quarantine_has_a_reason_and_the_verdict_in_the_spooled_copy() {
    let h = harness("").await;
    let v = h.scan_fixture(&mail(), "blocked-attachment.eml").await;
    let Action::Quarantine { reason } = &v.action else {
        panic!("{:?}", v.action)
    };
    assert!(
        reason.starts_with("blocked attachment: invoice.pdf is exe"),
        "{reason}"
    );
    let spooled = String::from_utf8(v.apply(fixture("blocked-attachment.eml"))).unwrap();
    assert!(spooled.starts_with("Authentication-Results: "), "{spooled}");
    assert!(
        spooled.contains("X-Maildistiller-Verdict: action=quarantine;"),
        "{spooled}"
    );
}

#[tokio::test]
async fn tag_prefixes_the_subject_and_adds_spam_headers() {
    let h = harness("").await;
    let v = h.scan_fixture(&mail(), "tagged.eml").await;
    assert_eq!(v.action, Action::Deliver);
    assert_eq!(disposition(&v), Disposition::Tag);
    let spooled = String::from_utf8(v.apply(fixture("tagged.eml"))).unwrap();
    assert!(
        spooled.contains("\r\nSubject: [SPAM] Last chance: a million dollars\r\n"),
        "{spooled}"
    );
    assert!(spooled.contains("X-Spam-Flag: YES\r\n"), "{spooled}");
    assert!(
        spooled.contains("X-Maildistiller-Verdict: action=tag;"),
        "{spooled}"
    );
}

#[tokio::test]
async fn delivered_mail_carries_the_verdict_and_authentication_results() {
    let h = harness("").await;
    let v = h.scan_fixture(&mail(), "clean.eml").await;
    assert_eq!(v.action, Action::Deliver);
    let ar = v
        .headers
        .lines()
        .find(|l| l.starts_with("Authentication-Results: lon1.in.example.net;"));
    assert!(ar.is_some(), "{}", v.headers);
    assert!(v.headers.contains("spf=pass"), "{}", v.headers);
    assert!(v.headers.contains("dmarc=pass"), "{}", v.headers);
    let r = v.report.as_ref().unwrap();
    assert!(
        v.headers.contains(&format!("policy={}", r.policy)),
        "{}",
        v.headers
    );
    assert!(v.headers.contains("ref=Q0TEST"), "{}", v.headers);
    for line in v.headers.split("\r\n") {
        assert!(line.len() <= 998, "header line too long");
    }
}

#[tokio::test]
async fn forged_copies_of_our_headers_are_removed() {
    let h = harness("").await;
    let raw = b"Received: from x by us\r\nX-Maildistiller-Verdict: action=deliver; score=-100\r\n\
Authentication-Results: lon1.in.example.net; spf=pass; dkim=pass; dmarc=pass\r\n\
From: alice@good.test\r\nSubject: hi\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <f@good.test>\r\n\r\nhi\r\n";
    let v = h.scan(&mail(), raw).await;
    let spooled = String::from_utf8(v.apply(raw.to_vec())).unwrap();
    assert_eq!(
        spooled.matches("X-Maildistiller-Verdict:").count(),
        1,
        "{spooled}"
    );
    assert_eq!(
        spooled.matches("Authentication-Results:").count(),
        1,
        "{spooled}"
    );
    assert!(!spooled.contains("score=-100"));
}

#[tokio::test]
async fn shadow_policy_is_evaluated_and_logged_never_acted_on() {
    let h = harness(
        r#"
[policy.strict]
shadow_of = "default"
thresholds = { tag = -10.0, quarantine = -5.0, reject = 50.0 }
[policy.strict.dns]
resolver = "{resolver}"
"#,
    )
    .await;
    let v = h.scan_fixture(&mail(), "malformed.eml").await;
    assert_eq!(
        v.action,
        Action::Deliver,
        "the live policy decides: {}",
        v.summary
    );
    let r = v.report.as_ref().unwrap();
    assert_eq!(r.shadows.len(), 1);
    assert!(r.shadows[0].0.starts_with("strict@"));
    assert_eq!(r.shadows[0].1.disposition, Disposition::Quarantine);
    assert!(v.summary.contains("shadow=\"strict@"), "{}", v.summary);
    assert!(
        !v.headers.contains("strict"),
        "shadows leave no trace in the message"
    );
}

#[tokio::test]
async fn tenant_overrides_apply_to_that_tenant_only() {
    let h = harness(
        r#"
[policy.default.tenant.acme]
thresholds = { tag = -5.0 }
"#,
    )
    .await;
    let acme = h.scan_fixture(&mail(), "clean.eml").await;
    assert_eq!(disposition(&acme), Disposition::Tag, "{}", acme.summary);
    let mut m = mail();
    m.tenant = "globex".into();
    m.rcpts = vec!["carol@globex.example".into()];
    let globex = h.scan_fixture(&m, "clean.eml").await;
    assert_eq!(
        disposition(&globex),
        Disposition::Deliver,
        "{}",
        globex.summary
    );
    let (a, g) = (acme.report.unwrap(), globex.report.unwrap());
    assert_ne!(a.policy, g.policy, "the override has its own version");
}

#[tokio::test]
async fn lists_at_tenant_and_user_level() {
    let h = harness(
        r#"
[policy.default.tenant.acme]
allow = { domains = ["good.test"] }
[policy.default.tenant.acme.user."bob@acme.example"]
block = { senders = ["promo@good.test"] }
"#,
    )
    .await;
    // Tenant allow list: spam scoring does not decide…
    let v = h
        .scan_fixture(&Mail::from("promo@good.test"), "spam.eml")
        .await;
    assert_eq!(
        disposition(&v),
        Disposition::Reject,
        "bob blocks promo@: {}",
        v.summary
    );
    assert!(
        v.summary
            .contains("listed=\"user block sender promo@good.test\""),
        "{}",
        v.summary
    );
    let mut m = Mail::from("promo@good.test");
    m.rcpts = vec!["eve@acme.example".into()];
    let v = h.scan_fixture(&m, "spam.eml").await;
    assert_eq!(
        disposition(&v),
        Disposition::Deliver,
        "eve: tenant allow: {}",
        v.summary
    );
    // …but viruses still do.
    let v = h.scan_fixture(&m, "eicar.eml").await;
    assert_eq!(disposition(&v), Disposition::Reject, "{}", v.summary);
}

#[tokio::test]
async fn a_blocked_client_is_rejected_without_scanning() {
    let h = harness(
        r#"
[policy.default.block]
networks = ["192.0.2.0/28"]
"#,
    )
    .await;
    let v = h.scan_fixture(&mail(), "clean.eml").await;
    let Action::Reject { reply } = &v.action else {
        panic!("{:?}", v.action)
    };
    assert_eq!(
        reply.to_string(),
        "550 5.7.1 Message rejected by policy (ref Q0TEST)"
    );
    assert!(!has(&v, "spf.pass"), "no scanner ran: {}", v.summary);
}

#[tokio::test]
async fn metrics_count_verdicts_per_tenant() {
    let h = harness("").await;
    let metrics = ScanMetrics::new();
    let registry = prometheus::Registry::new_custom(Some("maildistiller".into()), None).unwrap();
    registry.register(Box::new(metrics.clone())).unwrap();
    let scanner = maildistiller::engine::scan::Scanner::new(&h.snap)
        .unwrap()
        .with_metrics(metrics.clone());
    let tenant = h.snap.topology.tenant("acme").unwrap();
    let rcpts = vec!["bob@acme.example".to_owned()];
    let env = maildistiller::engine::scan::Arrival {
        session_id: "S1",
        queue_id: "Q1",
        client_ip: "192.0.2.10".parse().unwrap(),
        client_country: None,
        helo: "mail.good.test",
        mail_from: "alice@good.test",
        rcpts: &rcpts,
        tenant,
        tls: true,
    };
    for file in ["clean.eml", "spam.eml", "bomb.eml", "gtube.eml"] {
        scanner.scan(&env, &fixture(file)).await;
    }
    assert_eq!(metrics.verdicts("acme", Disposition::Quarantine), 2);
    assert_eq!(metrics.verdicts("acme", Disposition::Reject), 1);
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    for want in [
        "maildistiller_scan_verdicts_total{action=\"deliver\",tenant=\"acme\"} 1",
        "maildistiller_scan_unscannable_total{limit=\"archive_ratio\",tenant=\"acme\"} 1",
        "maildistiller_scan_duration_seconds_count 4",
        // Every configured check ran on every message: none is skipped to keep up.
        "maildistiller_scan_checks_total{check=\"content\",result=\"done\"} 4",
        "maildistiller_scan_checks_total{check=\"antivirus\",result=\"done\"} 4",
    ] {
        assert!(text.contains(want), "{want} in\n{text}");
    }
}

#[tokio::test]
async fn policy_errors_are_reported_with_their_paths() {
    let err = try_harness(
        r#"
[policy.other.limits]
max_parts = 0
[policy.other.attachments]
blocked_types = ["exe", "pdff"]
[[policy.other.rule]]
name = "broken"
target = "body"
pattern = "(unclosed"
"#,
    )
    .await
    .err()
    .expect("invalid");
    for want in [
        "policy.other.limits.max_parts: 0 is out of range",
        "policy.other.attachments.blocked_types[1]: unknown type \"pdff\"",
        "policy.other.rule[0].pattern: invalid regular expression",
    ] {
        assert!(err.contains(want), "{want} in:\n{err}");
    }
}

#[tokio::test]
async fn references_between_policies_and_tenants_are_checked() {
    let err = try_harness(
        r#"
[policy.strict]
shadow_of = "nonexistent"
[policy.strict.tenant.nobody]
thresholds = { tag = 1.0 }
"#,
    )
    .await
    .err()
    .expect("invalid");
    for want in [
        "policy.strict.shadow_of: unknown policy \"nonexistent\"",
        "policy.strict.tenant.nobody: unknown tenant",
    ] {
        assert!(err.contains(want), "{want} in:\n{err}");
    }
}

#[test]
fn shipped_policies_compile() {
    for entry in std::fs::read_dir(crate::support::repo().join("config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let snap = maildistiller::node::load(&path, maildistiller::config::RoleSet::ALL)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let scanner = maildistiller::engine::scan::Scanner::new(&snap)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            scanner
                .policies()
                .labels()
                .iter()
                .any(|l| l.starts_with("default@")),
            "{}",
            path.display()
        );
    }
}

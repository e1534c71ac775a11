//! Scanning without the engine: `Scanner::scan` called directly on fixture messages
//! (`tests/fixtures/scan/*.eml`, cases in `cases.toml`) and on hostile inputs built here, with
//! a loopback DNS server for SPF/DKIM/DMARC/DNSBL and fake (or, when `MAILDISTILLER_CLAMD` is
//! set, real) external scanners.

pub mod dns; // the loopback test zone (tests/fixtures/scan/zone.toml)
mod external; // clamd and rspamd: fakes, failures, fail-open vs temp-fail, real clamd
mod gateway; // our first line: FCrDNS, envelope vs header, link domains, recipients, new domains
mod harness; // config + scanner + envelopes + fixture cases
mod hostile; // bombs, 10,000 parts, 100-level nesting, broken encodings, random mutations
mod keys; // policy keys away from their defaults: actions, switches, budgets, resolver, sizes
mod policy; // actions, headers, shadow mode, overrides, lists, metrics, config errors
pub mod rspamd; // the real rspamd (tests/rspamd/start.sh): verdicts, failures counted, learning, fuzzy
#[path = "../../bench/scan/throughput.rs"]
pub(crate) mod throughput; // the scanning benchmark (bench/scan/run.sh runs it in release mode)

use harness::case;

// One test per fixture case of cases.toml: the scanner and the policy action it proves.

#[tokio::test]
async fn clean_message_is_delivered() {
    case("clean").await;
}

#[tokio::test]
async fn spam_is_quarantined_by_score() {
    case("spam").await;
}

#[tokio::test]
async fn borderline_spam_is_tagged() {
    case("tagged").await;
}

#[tokio::test]
async fn gtube_is_rejected() {
    case("gtube").await;
}

#[tokio::test]
async fn eicar_is_rejected() {
    case("eicar").await;
}

#[tokio::test]
async fn virus_in_a_zip_in_a_forwarded_message_is_found() {
    case("virus_in_zip_in_forwarded_message").await;
}

#[tokio::test]
async fn zip_bomb_is_unscannable_not_a_crash() {
    let v = case("zip_bomb").await;
    let stats = v.report.as_ref().unwrap().stats;
    assert!(
        stats.bytes < 1 << 20,
        "the bomb was never inflated: {stats:?}"
    );
}

#[tokio::test]
async fn malformed_mime_is_scanned_and_noted() {
    case("malformed_mime").await;
}

#[tokio::test]
async fn executable_posing_as_pdf_is_blocked() {
    case("blocked_attachment").await;
}

#[tokio::test]
async fn encrypted_archive_is_recognised() {
    case("encrypted_archive").await;
}

#[tokio::test]
async fn macro_document_is_recognised() {
    case("macro_document").await;
}

#[tokio::test]
async fn valid_dkim_passes() {
    let v = case("dkim_signed").await;
    assert!(v.headers.contains("dkim=pass"), "{}", v.headers);
}

#[tokio::test]
async fn forged_dkim_fails() {
    case("forged_dkim").await;
}

#[tokio::test]
async fn spf_fail_is_scored() {
    let v = case("spf_fail").await;
    assert!(v.headers.contains("spf=fail"), "{}", v.headers);
}

#[tokio::test]
async fn dmarc_reject_is_honoured() {
    let v = case("dmarc_reject").await;
    let maildistiller::engine::scan::Action::Reject { reply } = &v.action else {
        panic!("{:?}", v.action);
    };
    assert!(reply.to_string().starts_with("550 5.7.1 "), "{reply}");
}

#[tokio::test]
async fn dnsbl_listing_adds_its_weight() {
    case("dnsbl_listed").await;
}

#[test]
fn every_fixture_message_has_a_case() {
    let cases = harness::cases();
    for entry in std::fs::read_dir(harness::fixtures()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".eml") && name != "dkim-unsigned.eml" {
            assert!(
                cases.iter().any(|c| c.file == name),
                "{name} is not used by any case in cases.toml"
            );
        }
    }
}

/// Rewrites `dkim-signed.eml` and `dkim-forged.eml` from `dkim-unsigned.eml` with the test key.
#[test]
#[ignore = "rewrites fixtures; run by hand after changing dkim-unsigned.eml"]
fn regenerate_dkim_fixtures() {
    use mail_auth::common::crypto::Ed25519Key;
    use mail_auth::common::headers::HeaderWriter;
    use mail_auth::dkim::DkimSigner;
    use mail_parser::decoders::base64::base64_decode;

    let dir = harness::fixtures();
    let key: toml::Table =
        toml::from_str(&std::fs::read_to_string(dir.join("dkim-ed25519.toml")).unwrap()).unwrap();
    let b64 = |k: &str| base64_decode(key[k].as_str().unwrap().as_bytes()).unwrap();
    let pk = Ed25519Key::from_seed_and_public_key(&b64("seed"), &b64("public")).unwrap();
    let unsigned = std::fs::read(dir.join("dkim-unsigned.eml")).unwrap();
    let sig = DkimSigner::from_key(pk)
        .domain("good.test")
        .selector("sel")
        .headers(["From", "To", "Subject", "Date", "Message-ID"])
        .sign(&unsigned)
        .unwrap();
    let mut signed = sig.to_header().into_bytes();
    signed.extend_from_slice(&unsigned);
    std::fs::write(dir.join("dkim-signed.eml"), &signed).unwrap();
    let forged = String::from_utf8(signed)
        .unwrap()
        .replace("Budget approved: 10000.", "Budget approved: 99000.");
    std::fs::write(dir.join("dkim-forged.eml"), forged).unwrap();
}

/// The scanning benchmark; `bench/scan/run.sh` runs it in release mode.
#[tokio::test]
#[ignore = "benchmark: run bench/scan/run.sh"]
async fn bench_scan_throughput() {
    let builtin =
        harness::harness("[policy.default.scanners]\nauth = false\ndnsbl = false\n").await;
    let with_auth = harness::harness("[policy.default.scanners]\ndnsbl = false\n").await;
    let tenant = builtin.snap.topology.tenant("acme").unwrap();
    let rcpts = vec!["bob@acme.example".to_owned()];
    let env = maildistiller::engine::scan::Arrival {
        session_id: "bench",
        queue_id: "B0",
        client_ip: "192.0.2.10".parse().unwrap(),
        client_country: None,
        helo: "mail.good.test",
        mail_from: "alice@good.test",
        rcpts: &rcpts,
        tenant,
        tls: false,
    };
    throughput::run(&builtin.scanner, &with_auth.scanner, &env).await;
}

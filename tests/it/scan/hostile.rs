//! Hostile input, built here rather than stored: zip bombs (flat, nested, lying headers, too
//! many entries), 10,000-part messages, 100-level nesting of multiparts and of messages, header
//! floods, broken encodings, and random mutations of every fixture. Each is answered with a
//! verdict within its budget — never a panic, never a silent pass — and what was charged to
//! the budget stays under its limits (the bound on the engine's memory).

use std::io::Write;

use maildistiller::engine::policy::Disposition;

use super::harness::{Mail, disposition, fixture, fixtures, harness, has};

fn zip_of(entries: &[(&str, &[u8])], stored: bool) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let method = if stored {
        zip::CompressionMethod::Stored
    } else {
        zip::CompressionMethod::Deflated
    };
    let opts = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, data) in entries {
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len() * 4 / 3 + data.len() / 57 * 2 + 4);
    for (i, c) in data.chunks(3).enumerate() {
        if i > 0 && i % 19 == 0 {
            out.push_str("\r\n");
        }
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for (j, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if j <= c.len() {
                out.push(T[(n >> shift & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A message with one base64 attachment.
fn with_attachment(name: &str, data: &[u8]) -> Vec<u8> {
    format!(
        "From: alice@good.test\r\nSubject: attached\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\
         Message-ID: <h@good.test>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n\
         see attached\r\n--b\r\nContent-Type: application/octet-stream; name=\"{name}\"\r\n\
         Content-Disposition: attachment; filename=\"{name}\"\r\nContent-Transfer-Encoding: base64\r\n\r\n\
         {}\r\n--b--\r\n",
        b64(data)
    )
    .into_bytes()
}

fn mail() -> Mail {
    Mail::from("alice@good.test")
}

/// Scans `raw` under the test policy plus `extra`; checks the budget held.
async fn scan(raw: &[u8], extra: &str) -> maildistiller::engine::scan::Verdict {
    let h = harness(extra).await;
    let v = h.scan(&mail(), raw).await;
    let r = v.report.as_ref().expect("report");
    let limits = &h.snap.config.policies["default"].limits;
    assert!(r.stats.bytes <= limits.max_decoded_bytes.0, "{:?}", r.stats);
    assert!(r.stats.parts <= limits.max_parts, "{:?}", r.stats);
    assert!(
        r.stats.entries <= limits.max_archive_entries,
        "{:?}",
        r.stats
    );
    v
}

fn assert_unscannable(v: &maildistiller::engine::scan::Verdict, limit: &str) {
    let name = format!("unscannable.{limit}");
    assert!(has(v, &name), "no {name}: {}", v.summary);
    assert_eq!(disposition(v), Disposition::Quarantine, "{}", v.summary);
}

#[tokio::test]
async fn ten_thousand_parts_are_refused_before_parsing() {
    let mut raw =
        b"From: a@good.test\r\nSubject: parts\r\nContent-Type: multipart/mixed; boundary=p\r\n\r\n"
            .to_vec();
    for i in 0..10_000 {
        raw.extend_from_slice(
            format!("--p\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n").as_bytes(),
        );
    }
    raw.extend_from_slice(b"--p--\r\n");
    let v = scan(&raw, "").await;
    assert_unscannable(&v, "parts");
    assert_eq!(v.report.as_ref().unwrap().stats.parts, 0, "never walked");
}

#[tokio::test]
async fn hundred_level_multipart_nesting_stops_at_the_depth_limit() {
    let mut raw = b"From: a@good.test\r\nSubject: deep\r\n".to_vec();
    for i in 0..100 {
        raw.extend_from_slice(
            format!("Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n").as_bytes(),
        );
    }
    raw.extend_from_slice(b"Content-Type: text/plain\r\n\r\nbottom\r\n");
    for i in (0..100).rev() {
        raw.extend_from_slice(format!("--b{i}--\r\n").as_bytes());
    }
    assert_unscannable(&scan(&raw, "").await, "depth");
}

#[tokio::test]
async fn hundred_level_message_nesting_stops_at_the_depth_limit() {
    let mut raw = Vec::new();
    for i in 0..100 {
        raw.extend_from_slice(
            format!(
                "From: a{i}@good.test\r\nSubject: fwd {i}\r\nContent-Type: message/rfc822\r\n\r\n"
            )
            .as_bytes(),
        );
    }
    raw.extend_from_slice(b"From: z@good.test\r\nSubject: bottom\r\n\r\nbottom\r\n");
    assert_unscannable(&scan(&raw, "").await, "depth");
}

#[tokio::test]
async fn a_very_long_message_chain_does_not_exhaust_the_stack() {
    let chain = |levels: usize| {
        let mut raw = Vec::new();
        for _ in 0..levels {
            raw.extend_from_slice(b"Content-Type: message/rfc822\r\n\r\n");
        }
        raw.extend_from_slice(b"Subject: bottom\r\n\r\nbottom\r\n");
        raw
    };
    // Just under the pre-flight's bound: mail-parser builds (and drops) the whole chain…
    assert_unscannable(&scan(&chain(250), "").await, "depth");
    // …and again when the chain is an attachment, copied out of its decoded buffer.
    let mut eml = b"From: a@good.test\r\nSubject: chain\r\n".to_vec();
    eml.extend_from_slice(&chain(250));
    let attached = with_attachment("chain.eml", &eml);
    assert_unscannable(&scan(&attached, "").await, "depth");
    // Over it, mail-parser never sees the message.
    assert_unscannable(&scan(&chain(50_000), "").await, "parts");
}

#[tokio::test]
async fn header_floods_are_refused_before_parsing() {
    let mut raw = Vec::new();
    for i in 0..50_000 {
        raw.extend_from_slice(format!("X-Flood-{i}: x\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\nbody\r\n");
    assert_unscannable(&scan(&raw, "").await, "header_lines");
}

#[tokio::test]
async fn nested_zips_stop_at_the_depth_limit() {
    let mut z = zip_of(&[("eicar.com", b"harmless")], false);
    for i in 0..30 {
        z = zip_of(&[(&format!("layer{i}.zip"), &z)], false);
    }
    assert_unscannable(&scan(&with_attachment("layers.zip", &z), "").await, "depth");
}

#[tokio::test]
async fn many_zips_of_incompressible_data_stop_at_the_byte_limit() {
    let mut rng = fastrand::Rng::with_seed(7);
    let chunk: Vec<u8> = (0..200_000).map(|_| rng.u8(..)).collect();
    let inner = zip_of(
        &[("a.bin", &chunk), ("b.bin", &chunk), ("c.bin", &chunk)],
        true,
    );
    let outer = zip_of(
        &[("1.zip", &inner), ("2.zip", &inner), ("3.zip", &inner)],
        true,
    );
    let extra = "[policy.default.limits]\nmax_decoded_bytes = \"3MiB\"\n";
    assert_unscannable(
        &scan(&with_attachment("many.zip", &outer), extra).await,
        "bytes",
    );
}

#[tokio::test]
async fn a_zip_that_lies_about_its_size_is_stopped_while_inflating() {
    let zeros = vec![0u8; 8 << 20];
    let mut z = zip_of(&[("zeros.bin", &zeros)], false);
    // Claim 100 bytes in the local and central headers: the header check passes…
    let local = find(&z, b"PK\x03\x04").unwrap();
    z[local + 22..local + 26].copy_from_slice(&100u32.to_le_bytes());
    let central = find(&z, b"PK\x01\x02").unwrap();
    z[central + 24..central + 28].copy_from_slice(&100u32.to_le_bytes());
    // …and inflating stops at the ratio cap instead of producing 8 MiB.
    let v = scan(&with_attachment("liar.zip", &z), "").await;
    assert_unscannable(&v, "archive_ratio");
    assert!(v.report.as_ref().unwrap().stats.bytes < 4 << 20);
}

#[tokio::test]
async fn too_many_archive_entries_are_refused_from_the_directory() {
    let names: Vec<String> = (0..2000).map(|i| format!("f{i}.txt")).collect();
    let entries: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
    let z = zip_of(&entries, true);
    let v = scan(&with_attachment("many.zip", &z), "").await;
    assert_unscannable(&v, "archive_entries");
    assert_eq!(
        v.report.as_ref().unwrap().stats.entries,
        0,
        "refused before reading"
    );
}

#[tokio::test]
async fn a_zero_time_budget_is_unscannable_time() {
    let extra = "[policy.default.limits]\nmax_time = \"0s\"\n";
    let v = scan(&fixture("clean.eml"), extra).await;
    assert_unscannable(&v, "time");
}

#[tokio::test]
async fn broken_base64_and_invalid_charsets_are_noted_not_fatal() {
    let raw = b"From: a@good.test\r\nSubject: =?bogus-charset?B?!!!?=\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\
Message-ID: <x@good.test>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
--b\r\nContent-Type: text/plain; charset=\"no-such-charset\"\r\nContent-Transfer-Encoding: base64\r\n\r\n\
%%%% not base64 at all %%%%\r\n--b\r\nContent-Type: text/plain; charset=utf-16\r\n\r\n\xff\xfe\xff\r\n--b--\r\n";
    let v = scan(raw, "").await;
    assert!(has(&v, "malformed.mime"), "{}", v.summary);
    assert_eq!(disposition(&v), Disposition::Deliver, "{}", v.summary);
}

#[tokio::test]
async fn random_mutations_of_every_fixture_get_a_verdict() {
    let h = harness("[policy.default.scanners]\nauth = false\ndnsbl = false\n").await;
    let mut rng = fastrand::Rng::with_seed(42);
    let mut files: Vec<_> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    files.sort();
    let mut scanned = 0;
    for path in files {
        let original = std::fs::read(&path).unwrap();
        for _ in 0..25 {
            let mut m = original.clone();
            match rng.u8(0..4) {
                0 => m.truncate(rng.usize(0..=m.len())),
                1 => {
                    for _ in 0..rng.usize(1..20) {
                        let i = rng.usize(0..m.len().max(1));
                        if let Some(b) = m.get_mut(i) {
                            *b = rng.u8(..);
                        }
                    }
                }
                2 => {
                    let i = rng.usize(0..=m.len());
                    let junk: Vec<u8> = (0..rng.usize(1..200)).map(|_| rng.u8(..)).collect();
                    m.splice(i..i, junk);
                }
                _ => {
                    let i = rng.usize(0..=m.len());
                    let j = rng.usize(i..=m.len());
                    m.drain(i..j);
                }
            }
            let v = h.scan(&mail(), &m).await;
            assert!(v.report.is_some(), "{}", path.display());
            scanned += 1;
        }
    }
    assert!(scanned >= 300);
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[tokio::test]
async fn a_pile_of_dkim_signatures_is_not_verified_one_by_one() {
    let signed = String::from_utf8(fixture("dkim-signed.eml")).unwrap();
    let (sig, rest) = signed.split_once("From: ").unwrap();
    let raw = format!("{}From: {rest}", sig.repeat(50));
    let v = scan(raw.as_bytes(), "").await;
    assert!(has(&v, "dkim.permerror"), "{}", v.summary);
    assert!(v.summary.contains("50 signatures"), "{}", v.summary);
}

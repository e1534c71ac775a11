//! Scanning throughput per core: `Scanner::scan` on one thread over a mixed corpus generated
//! here (deterministic), and over 4 KiB messages alone, with the built-in scanners (content,
//! attachments, EICAR) and again with SPF/DKIM/DMARC against a loopback DNS server (answers
//! cached by the resolver, as in production).
//!
//! Compiled into the integration-test binary (`tests/it/scan.rs` includes this file) so it needs
//! no Cargo target of its own; `bench/scan/run.sh` runs it in release mode. Knobs (environment):
//! `SCAN_BENCH_SECONDS` per measurement (default 3), `SCAN_BENCH_ROUNDS` (default 3; the median
//! is reported).

use std::time::{Duration, Instant};

use maildistiller::engine::scan::{Action, Arrival, Scanner};

/// One message of the corpus and what it is.
pub struct Sample {
    pub kind: &'static str,
    pub data: Vec<u8>,
}

const EICAR: &[u8] = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

const WORDS: &[&str] = &[
    "meeting",
    "invoice",
    "quarterly",
    "report",
    "attached",
    "please",
    "review",
    "budget",
    "project",
    "deadline",
    "thanks",
    "regards",
    "schedule",
    "update",
    "customer",
    "order",
    "shipment",
    "contract",
    "draft",
    "minutes",
    "agenda",
    "proposal",
    "team",
    "office",
];

fn text(rng: &mut fastrand::Rng, bytes: usize) -> String {
    let mut s = String::with_capacity(bytes + 80);
    let mut col = 0;
    while s.len() < bytes {
        let w = WORDS[rng.usize(..WORDS.len())];
        s.push_str(w);
        col += w.len() + 1;
        if col > 70 {
            s.push_str("\r\n");
            col = 0;
        } else {
            s.push(' ');
        }
    }
    s.push_str("\r\n");
    s
}

fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len() * 4 / 3 + data.len() / 38 + 4);
    for (i, c) in data.chunks(3).enumerate() {
        if i > 0 && i % 19 == 0 {
            out.push_str("\r\n");
        }
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for (j, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            out.push(if j <= c.len() {
                T[(n >> shift & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in entries {
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn head(i: usize, subject: &str) -> String {
    format!(
        "Received: from client.example ([192.0.2.10])\r\n\tby bench.test (maildistiller) with ESMTP id B{i}\r\n\
         From: Alice <alice@good.test>\r\nTo: bob@acme.example\r\nSubject: {subject}\r\n\
         Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <{i}@good.test>\r\nMIME-Version: 1.0\r\n"
    )
}

fn attachment(boundary: &str, name: &str, ctype: &str, data: &[u8]) -> String {
    format!(
        "--{boundary}\r\nContent-Type: {ctype}; name=\"{name}\"\r\nContent-Disposition: attachment; filename=\"{name}\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}\r\n",
        b64(data)
    )
}

/// A 4 KiB plain-text message (the size the engine's accept-rate goal is stated for).
pub fn plain_4k(rng: &mut fastrand::Rng, i: usize) -> Sample {
    let mut m = head(i, "quarterly report");
    m.push_str("Content-Type: text/plain; charset=utf-8\r\n\r\n");
    let body = text(rng, 4096 - m.len() - 2);
    m.push_str(&body);
    Sample {
        kind: "plain 4 KiB",
        data: m.into_bytes(),
    }
}

/// The mixed corpus: plain, alternative with URLs, spam-like HTML, PDF and zip attachments,
/// forwarded messages, viruses in zips, and a few large attachments.
pub fn corpus(n: usize) -> Vec<Sample> {
    let mut rng = fastrand::Rng::with_seed(2024);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let pick = rng.u32(0..100);
        let s = match pick {
            0..40 => plain_4k(&mut rng, i),
            40..55 => {
                let t = text(&mut rng, 3000);
                let mut m = head(i, "newsletter");
                m.push_str(
                    "Content-Type: multipart/alternative; boundary=\"alt\"\r\n\r\n--alt\r\n",
                );
                m.push_str(&format!(
                    "Content-Type: text/plain\r\n\r\n{t}see https://good.test/a/{i}\r\n"
                ));
                m.push_str(&format!(
                    "--alt\r\nContent-Type: text/html\r\n\r\n<html><body><p>{t}</p><a href=\"https://good.test/b/{i}\">more</a></body></html>\r\n--alt--\r\n"
                ));
                Sample {
                    kind: "alternative 8 KiB",
                    data: m.into_bytes(),
                }
            }
            55..65 => {
                let mut m = head(i, "YOU HAVE WON A MILLION DOLLARS");
                m.push_str("Content-Type: text/html; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n");
                m.push_str(&format!(
                    "<html><body><h1>Congratulations!</h1><p>{}</p><a href=3D\"http://evil.test/claim?id=3D{i}\">claim</a></body></html>\r\n",
                    text(&mut rng, 3000).replace("\r\n", " ")
                ));
                Sample {
                    kind: "spam html 4 KiB",
                    data: m.into_bytes(),
                }
            }
            65..75 => {
                let mut pdf = b"%PDF-1.7\n".to_vec();
                pdf.extend((0..50_000).map(|_| rng.u8(..)));
                let mut m = head(i, "invoice");
                m.push_str("Content-Type: multipart/mixed; boundary=\"mix\"\r\n\r\n--mix\r\nContent-Type: text/plain\r\n\r\n");
                m.push_str(&text(&mut rng, 500));
                m.push_str(&attachment("mix", "invoice.pdf", "application/pdf", &pdf));
                m.push_str("--mix--\r\n");
                Sample {
                    kind: "pdf 70 KiB",
                    data: m.into_bytes(),
                }
            }
            75..85 => {
                let doc = text(&mut rng, 60_000);
                let z = zip_of(&[
                    ("[Content_Types].xml", b"<Types/>"),
                    ("word/document.xml", doc.as_bytes()),
                ]);
                let mut m = head(i, "draft contract");
                m.push_str("Content-Type: multipart/mixed; boundary=\"mix\"\r\n\r\n--mix\r\nContent-Type: text/plain\r\n\r\n");
                m.push_str(&text(&mut rng, 500));
                m.push_str(&attachment(
                    "mix",
                    "contract.docx",
                    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                    &z,
                ));
                m.push_str("--mix--\r\n");
                Sample {
                    kind: "docx (zip) 30 KiB",
                    data: m.into_bytes(),
                }
            }
            85..92 => {
                let inner_zip = zip_of(&[("notes.txt", text(&mut rng, 8000).as_bytes())]);
                let mut inner = String::from(
                    "From: carol@good.test\r\nSubject: notes\r\nMIME-Version: 1.0\r\n",
                );
                inner.push_str("Content-Type: multipart/mixed; boundary=\"in\"\r\n\r\n--in\r\nContent-Type: text/plain\r\n\r\nnotes attached\r\n");
                inner.push_str(&attachment(
                    "in",
                    "notes.zip",
                    "application/zip",
                    &inner_zip,
                ));
                inner.push_str("--in--\r\n");
                let mut m = head(i, "Fwd: notes");
                m.push_str("Content-Type: multipart/mixed; boundary=\"out\"\r\n\r\n--out\r\nContent-Type: text/plain\r\n\r\nforwarding\r\n");
                m.push_str(&format!(
                    "--out\r\nContent-Type: message/rfc822\r\n\r\n{inner}\r\n--out--\r\n"
                ));
                Sample {
                    kind: "forwarded with zip",
                    data: m.into_bytes(),
                }
            }
            92..97 => {
                let z = zip_of(&[("readme.txt", b"hello"), ("eicar.com", EICAR)]);
                let mut m = head(i, "invoice");
                m.push_str("Content-Type: multipart/mixed; boundary=\"mix\"\r\n\r\n--mix\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n");
                m.push_str(&attachment("mix", "invoice.zip", "application/zip", &z));
                m.push_str("--mix--\r\n");
                Sample {
                    kind: "virus in zip",
                    data: m.into_bytes(),
                }
            }
            _ => {
                let img: Vec<u8> = b"\x89PNG\r\n\x1a\n"
                    .iter()
                    .copied()
                    .chain((0..200_000).map(|_| rng.u8(..)))
                    .collect();
                let mut m = head(i, "photos");
                m.push_str("Content-Type: multipart/mixed; boundary=\"mix\"\r\n\r\n--mix\r\nContent-Type: text/plain\r\n\r\nphotos\r\n");
                m.push_str(&attachment("mix", "photo.png", "image/png", &img));
                m.push_str("--mix--\r\n");
                Sample {
                    kind: "png 270 KiB",
                    data: m.into_bytes(),
                }
            }
        };
        out.push(s);
    }
    out
}

/// Messages and bytes per second of one thread scanning `samples` round-robin for `secs`.
pub async fn measure(
    scanner: &Scanner,
    env: &Arrival<'_>,
    samples: &[Sample],
    secs: f64,
) -> (f64, f64, u64) {
    let start = Instant::now();
    let limit = Duration::from_secs_f64(secs);
    let (mut n, mut bytes, mut rejected) = (0u64, 0u64, 0u64);
    'outer: loop {
        for s in samples {
            let v = scanner.scan(env, &s.data).await;
            if matches!(v.action, Action::Reject { .. }) {
                rejected += 1;
            }
            n += 1;
            bytes += s.data.len() as u64;
            if start.elapsed() >= limit {
                break 'outer;
            }
        }
    }
    let t = start.elapsed().as_secs_f64();
    (n as f64 / t, bytes as f64 / t / 1e6, rejected)
}

/// `SCAN_BENCH_SECONDS` per measurement (default 3) and `SCAN_BENCH_ROUNDS` (default 3, at
/// least 1).
pub fn knobs() -> (f64, usize) {
    let secs = std::env::var("SCAN_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3.0);
    let rounds: usize = std::env::var("SCAN_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    (secs, rounds.max(1))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Measures `builtin` (no DNS scanners) and `with_auth` (SPF/DKIM/DMARC too) and prints the table.
pub async fn run(builtin: &Scanner, with_auth: &Scanner, env: &Arrival<'_>) {
    let (secs, rounds) = knobs();
    let mixed = corpus(400);
    let mut rng = fastrand::Rng::with_seed(7);
    let small: Vec<Sample> = (0..200).map(|i| plain_4k(&mut rng, i)).collect();
    let total: usize = mixed.iter().map(|s| s.data.len()).sum();
    let mut kinds: Vec<(&str, usize)> = Vec::new();
    for s in &mixed {
        match kinds.iter_mut().find(|(k, _)| *k == s.kind) {
            Some((_, c)) => *c += 1,
            None => kinds.push((s.kind, 1)),
        }
    }
    println!("scan throughput, one thread (= per core), {rounds} rounds of {secs}s, median");
    println!(
        "mixed corpus: {} messages, {:.1} MB, mean {:.1} KiB: {}",
        mixed.len(),
        total as f64 / 1e6,
        total as f64 / mixed.len() as f64 / 1024.0,
        kinds
            .iter()
            .map(|(k, c)| format!("{k} x{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "{:<60} {:>10} {:>8} {:>10}",
        "scanners / corpus", "msgs/s", "MB/s", "us/msg"
    );
    for (label, scanner) in [
        ("built-in (content, attachments, EICAR)", builtin),
        ("built-in + SPF/DKIM/DMARC (loopback DNS)", with_auth),
    ] {
        for (corpus_name, samples) in [("mixed", &mixed), ("4 KiB plain", &small)] {
            // Warm up (caches, resolver).
            measure(scanner, env, &samples[..samples.len().min(50)], 0.2).await;
            let mut rates = Vec::new();
            let mut mbs = Vec::new();
            for _ in 0..rounds {
                let (r, mb, _) = measure(scanner, env, samples, secs).await;
                rates.push(r);
                mbs.push(mb);
            }
            let (r, mb) = (median(rates), median(mbs));
            println!(
                "{:<60} {:>10.0} {:>8.1} {:>10.1}",
                format!("{label} / {corpus_name}"),
                r,
                mb,
                1e6 / r
            );
        }
    }
}

//! `engine.data_memory`: bodies that do not fit in the engine's memory budget stream to a file
//! and come out the other side unchanged; senders that stall before the final dot hold no
//! memory others need.

use std::time::Duration;

use super::{FAST, TestEngine, msg};
use crate::mail::{Client, Sink, until};

fn spilled(e: &TestEngine) -> u64 {
    e.ops
        .metrics
        .render()
        .lines()
        .find(|l| l.starts_with("maildistiller_engine_data_spilled_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// A 300 KiB message and a 128 KiB budget (64 KiB for bodies being received): the body spills
/// to a file as it streams in, while its sender stalls before the final dot another sender's
/// small message goes through in memory, and when the dot comes the big one is accepted,
/// scanned and delivered byte for byte (dot-stuffing undone, bare LF normalised as always).
/// With the default budget nothing would spill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_beyond_data_memory_streams_to_a_file_and_arrives_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let (a, g) = (Sink::start().await, Sink::start().await);
    let extra = format!("data_memory = \"128KiB\"\n{FAST}");
    let e = TestEngine::start(&dir.path().join("spool"), a.addr, g.addr, &extra).await;
    let mut line = String::new();
    for i in 0..6000 {
        line.push_str(&format!(
            "{i:06} the quick brown fox jumps over the lazy dog...\r\n"
        ));
        if i % 1000 == 0 {
            line.push_str("..a line that starts with a dot\r\nbare\nline feed\r\n");
        }
    }
    let big = format!(
        "From: Alice <alice@sender.example>\r\nTo: bob@acme.example\r\nSubject: big\r\n\r\n{line}"
    );
    assert!(big.len() > 250 * 1024);

    let mut stalled = Client::connect(e.smtp).await;
    stalled.cmd("EHLO client.example", "250").await;
    stalled.cmd("MAIL FROM:<alice@sender.example>", "250").await;
    stalled.cmd("RCPT TO:<bob@acme.example>", "250").await;
    stalled.cmd("DATA", "354").await;
    stalled.send(big.as_bytes()).await;
    assert!(
        until(Duration::from_secs(10), || spilled(&e) == 1).await,
        "the body spilled: {}",
        spilled(&e)
    );

    // Meanwhile a small message is received in memory and delivered.
    let mut c = Client::connect(e.smtp).await;
    let r = c
        .mail("carol@sender.example", &["bob@acme.example"], &msg("small"))
        .await;
    assert!(r.starts_with("250 "), "{r}");
    assert!(until(Duration::from_secs(10), || a.messages().len() == 1).await);
    assert_eq!(spilled(&e), 1, "the small one did not spill");

    stalled.send(b".\r\n").await;
    let r = stalled.reply().await;
    assert!(r.starts_with("250 "), "{r}");
    assert!(until(Duration::from_secs(10), || a.messages().len() == 2).await);
    let got = a
        .messages()
        .into_iter()
        .find(|m| m.data.contains("Subject: big"))
        .expect("the big message delivered");
    let body = got.data.split_once("\r\n\r\n").unwrap().1;
    let want = line
        .replace("\r\n..a line", "\r\n.a line")
        .replace("bare\nline", "bare\r\nline");
    assert_eq!(body.len(), want.len());
    assert!(body == want, "the body arrived unchanged");
}

/// Senders that stall before the final dot with more than the budget between them: each body
/// beyond the receiving half spills, and when they all finish every message is accepted — the
/// ones read back from files wait for memory, they are not refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_stalled_bodies_beyond_the_budget_are_all_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let (a, g) = (Sink::start().await, Sink::start().await);
    let extra = format!("data_memory = \"256KiB\"\n{FAST}");
    let e = TestEngine::start(&dir.path().join("spool"), a.addr, g.addr, &extra).await;
    let body: String = (0..2000)
        .map(|i| format!("line {i:05} of a long message\r\n"))
        .collect();
    let mut clients = Vec::new();
    for i in 0..8 {
        let mut c = Client::connect(e.smtp).await;
        c.cmd("EHLO client.example", "250").await;
        c.cmd("MAIL FROM:<alice@sender.example>", "250").await;
        c.cmd("RCPT TO:<bob@acme.example>", "250").await;
        c.cmd("DATA", "354").await;
        c.send(format!("Subject: stalled {i}\r\n\r\n{body}").as_bytes())
            .await;
        clients.push(c);
    }
    // 8 × ~64 KiB against 128 KiB for receiving: most of them spilled.
    assert!(
        until(Duration::from_secs(10), || spilled(&e) >= 6).await,
        "spilled: {}",
        spilled(&e)
    );
    let mut replies = Vec::new();
    for c in &mut clients {
        c.send(b".\r\n").await;
    }
    for c in &mut clients {
        replies.push(c.reply().await);
    }
    assert!(replies.iter().all(|r| r.starts_with("250 ")), "{replies:?}");
    assert!(until(Duration::from_secs(20), || a.messages().len() == 8).await);
    assert!(a.messages().iter().all(|m| m.data.ends_with(&body)));
}

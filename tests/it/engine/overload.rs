//! The engine under more load than it can take: beyond `engine.max_processing` new recipients
//! are refused at once with `451 4.3.2` while received mail waits its turn, and the scan
//! counters show that every message it acknowledged went through every check its policy
//! configures (`bench/overload/run.py` reads the same counters while it offers twice the
//! pair's capacity).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::{FAST, TestEngine, msg};
use crate::mail::{Client, Sink, until};

/// The value of the first `/metrics` line of `e` that starts with `line_start` (0 if none).
pub(crate) fn metric(e: &TestEngine, line_start: &str) -> u64 {
    e.ops
        .metrics
        .render()
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// The engine's `/metrics` counts each live check once per scanned message, by result: three
/// accepted messages, three `done` for every built-in check, none skipped. (Before, the engine
/// never attached its scan counters, so `/metrics` had no `maildistiller_scan_*` at all.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_is_counted_through_every_check() {
    let dir = tempfile::tempdir().unwrap();
    let (a, g) = (Sink::start().await, Sink::start().await);
    let extra = format!("{FAST}\n[policy.default.scanners]\nauth = false\ndnsbl = false\n");
    let e = TestEngine::start(&dir.path().join("spool"), a.addr, g.addr, &extra).await;
    for i in 0..3 {
        let mut c = Client::connect(e.smtp).await;
        let r = c
            .mail(
                "a@sender.example",
                &["bob@acme.example"],
                &msg(&format!("m{i}")),
            )
            .await;
        assert!(r.starts_with("250"), "{r}");
    }
    for check in ["content", "attachments", "antivirus", "gateway"] {
        let done = format!("maildistiller_scan_checks_total{{check=\"{check}\",result=\"done\",");
        assert_eq!(metric(&e, &done), 3, "{check}:\n{}", e.ops.metrics.render());
    }
    assert!(
        !e.ops.metrics.render().contains("check=\"auth\""),
        "a check the policy turns off is not counted"
    );
    assert_eq!(
        metric(
            &e,
            "maildistiller_scan_verdicts_total{action=\"deliver\",tenant=\"acme\","
        ),
        3
    );
    e.stop().await;
}

/// A clamd that takes connections and never answers (each scan waits for its 3 s timeout,
/// then the policy accepts): returns how many scans reached it, and the `[engine]` lines
/// (`max_processing = 1` and the policy) that make an engine use it.
pub(crate) async fn stuck_clamd() -> (Arc<AtomicUsize>, String) {
    let stuck = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let clamd = stuck.local_addr().unwrap();
    let scans = Arc::new(AtomicUsize::new(0));
    let held = scans.clone();
    tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = stuck.accept().await {
            held.fetch_add(1, Ordering::SeqCst);
            open.push(s);
        }
    });
    let lines = format!(
        "max_processing = 1\n[policy.default.scanners]\nauth = false\ndnsbl = false\n\
         clamd = true\n[policy.default.clamd]\naddress = \"tcp:{clamd}\"\ntimeout = \"3s\"\n\
         on_failure = \"accept\"\n"
    );
    (scans, lines)
}

/// Sends a message on each of `senders` up to its final dot: the first goes into its scan (at
/// the stuck clamd, `scans` reaches 1), the second waits its turn at `engine` (the waiting
/// gauge reaches 1). Returns the sessions, their `250`s still to come.
pub(crate) async fn one_scanning_one_waiting(
    senders: [Client; 2],
    scans: &AtomicUsize,
    engine: &TestEngine,
    msg: &dyn Fn(&str) -> String,
) -> Vec<Client> {
    let mut out = Vec::new();
    for (i, mut c) in senders.into_iter().enumerate() {
        c.cmd("EHLO client.example", "250").await;
        c.cmd("MAIL FROM:<a@sender.example>", "250").await;
        c.cmd("RCPT TO:<bob@acme.example>", "250").await;
        c.cmd("DATA", "354").await;
        c.send(format!("{}.\r\n", msg(&format!("m{i}"))).as_bytes())
            .await;
        out.push(c);
        if i == 0 {
            assert!(until(Duration::from_secs(5), || scans.load(Ordering::SeqCst) == 1).await);
        } else {
            let waiting = || metric(engine, "maildistiller_engine_processing_waiting{");
            assert!(until(Duration::from_secs(5), || waiting() == 1).await);
        }
    }
    out
}

/// `engine.max_processing = 1`, and a clamd that takes connections and never answers (each
/// scan waits for its timeout): message A is being scanned, message B has arrived and waits
/// its turn, so the engine is busy. A third sender is refused at RCPT with `451 4.3.2` while
/// A is still in its scan — before it sends a body, not after a stall — and A and B, already
/// received, are both accepted in turn. Once they are, the third sender's recipient is taken.
/// With the key ignored (four per CPU) B would not wait and the third recipient would get 250.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_processing_new_recipients_get_451_at_once_and_received_mail_waits() {
    let dir = tempfile::tempdir().unwrap();
    let (a_sink, g_sink) = (Sink::start().await, Sink::start().await);
    let (scans, busy) = stuck_clamd().await;
    let extra = format!("{busy}{FAST}");
    let e = TestEngine::start(&dir.path().join("spool"), a_sink.addr, g_sink.addr, &extra).await;
    let senders = [Client::connect(e.smtp).await, Client::connect(e.smtp).await];
    let mut senders = one_scanning_one_waiting(senders, &scans, &e, &msg).await;
    let mut third = Client::connect(e.smtp).await;
    third.cmd("EHLO client.example", "250").await;
    third.cmd("MAIL FROM:<c@sender.example>", "250").await;
    third.cmd("RCPT TO:<bob@acme.example>", "451 4.3.2").await;
    assert_eq!(
        e.store.len(),
        0,
        "refused while the first message was still in its scan"
    );
    assert_eq!(scans.load(Ordering::SeqCst), 1);
    for c in &mut senders {
        c.expect("250").await;
    }
    third.cmd("RCPT TO:<bob@acme.example>", "250").await;
    assert_eq!(metric(&e, "maildistiller_engine_busy_refusals_total{"), 1);
    e.stop().await;
}

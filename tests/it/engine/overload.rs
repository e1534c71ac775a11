//! The engine under more load than it can take: what shows that every message it acknowledged
//! went through every check its policy configures (`bench/overload/run.py` reads the same
//! counters while it offers twice the pair's capacity).

use super::{FAST, TestEngine, msg};
use crate::mail::{Client, Sink};

fn metric(e: &TestEngine, line_start: &str) -> u64 {
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

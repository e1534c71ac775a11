//! Our own classifier (`engine::learn::model`, the `learnt` scanner), trained only through the
//! product's learning path: a user's report teaches spam, `maildistiller learn --ham` (another
//! process, the same spool) teaches ham, and the next near-copies score as such at once, with
//! the policy's `[learnt]` scores. A new engine given only the model's journal scores the same
//! (what a restart reads). rspamd's controller is the recording stand-in of `learning.rs`: the
//! model needs no rspamd.

use std::path::Path;
use std::time::Duration;

use crate::engine::TestEngine;
use crate::learning::{Controller, learning, report};
use crate::mail::{Client, Sink, until};
use crate::support::{run, stderr, write};

pub(crate) fn spam(id: &str, tail: &str) -> String {
    format!(
        "From: Offers <deals@offers.test>\r\nTo: bob@acme.example\r\nSubject: Your exclusive bonus {id}\r\n\
         Message-ID: <{id}@offers.test>\r\n\r\nClaim your exclusive casino bonus today: http://win.offers.test/claim \
         unlimited jackpot credits waiting{tail}\r\n"
    )
}

fn ham(id: &str, tail: &str) -> String {
    format!(
        "From: Alice <alice@partner.test>\r\nTo: bob@acme.example\r\nSubject: Minutes of the project meeting {id}\r\n\
         Message-ID: <{id}@partner.test>\r\n\r\nHere are the minutes of our project meeting; the review of the \
         schedule moves to Tuesday{tail}\r\n"
    )
}

/// The verdict header (unfolded) of the sink's `n`th message (empty until it arrived).
fn verdict(s: &Sink, n: usize) -> String {
    let Some(m) = s.messages().get(n).map(|m| m.data.clone()) else {
        return String::new();
    };
    let mut out = String::new();
    for l in m.lines() {
        if l.starts_with("X-Maildistiller-Verdict:") {
            out = l.to_owned();
        } else if !out.is_empty() && l.starts_with([' ', '\t']) {
            out.push_str(l);
        } else if !out.is_empty() {
            break;
        }
    }
    out
}

pub(crate) async fn send(e: &TestEngine, sink: &Sink, from: &str, body: &str) -> String {
    let n = sink.messages().len();
    let mut c = Client::connect(e.smtp).await;
    let r = c.mail(from, &["bob@acme.example"], body).await;
    assert!(r.starts_with("250"), "{r}");
    c.cmd("QUIT", "221").await;
    assert!(until(Duration::from_secs(20), || sink.messages().len() > n).await);
    verdict(sink, n)
}

pub(crate) const KEYS: &str =
    "[policy.default.learnt]\nspam_cutoff = 0.85\nspam_score = 7.5\nham_score = -2.5\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reported_message_makes_its_near_copy_spam_at_once_and_a_restart_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let (a, g) = (Sink::start().await, Sink::start().await);
    let ctl = Controller::start().await;
    let spool = dir.path().join("spool");
    // scanners.learnt = true: the classifier is asked (it is off by default).
    let extra = learning(dir.path(), &ctl.addr.to_string(), KEYS)
        .replace("dnsbl = false\n", "dnsbl = false\nlearnt = true\n");
    let e = TestEngine::start(&spool, a.addr, g.addr, &extra).await;

    // Untrained: the model says nothing.
    let v = send(&e, &a, "deals@offers.test", &spam("s0", ".")).await;
    assert!(!v.contains("learnt"), "{v}");

    // bob reports one; an operator teaches one ham message from another process.
    let mut c = Client::connect(e.smtp).await;
    let r = c
        .mail(
            "bob@acme.example",
            &["report-spam@acme.example"],
            &report("bob@acme.example", &spam("s1", ".")),
        )
        .await;
    assert!(r.starts_with("250 2.0.0 Report taken"), "{r}");
    c.cmd("QUIT", "221").await;
    let cfg = write(
        dir.path(),
        "engine.toml",
        &crate::support::fleet_config(&format!(
            "[engine]\nspool_dir = \"{}\"\n{extra}",
            spool.display()
        )),
    );
    let h = write(dir.path(), "ham.eml", &ham("h1", "."));
    let o = run(&[
        "learn",
        "--config",
        cfg.to_str().unwrap(),
        "--ham",
        h.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));

    // At once: the near-copies score with the policy's [learnt] points (7.5 tags).
    let v = send(&e, &a, "deals@offers.test", &spam("s2", ", friend.")).await;
    assert!(v.contains("learnt.spam(+7.5)"), "{v}");
    assert!(v.contains("action=tag"), "{v}");
    let v = send(&e, &a, "alice@partner.test", &ham("h2", ", as agreed.")).await;
    assert!(v.contains("learnt.ham(-2.5)"), "{v}");
    e.stop().await;

    // A new engine whose spool holds only the model's journal (what a restart reads).
    let spool2 = dir.path().join("spool2");
    copy_journal(&spool, &spool2);
    let e2 = TestEngine::start(&spool2, a.addr, g.addr, &extra).await;
    let v = send(&e2, &a, "deals@offers.test", &spam("s3", ", dear.")).await;
    assert!(v.contains("learnt.spam(+7.5)"), "{v}");
    e2.stop().await;

    // scanners.learnt = false (the default): the same model, not asked.
    let off = extra.replace("learnt = true\n", "");
    let e3 = TestEngine::start(&spool2, a.addr, g.addr, &off).await;
    let v = send(&e3, &a, "deals@offers.test", &spam("s4", ", dear.")).await;
    assert!(!v.contains("learnt"), "{v}");
    e3.stop().await;
}

fn copy_journal(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("learning")).unwrap();
    std::fs::copy(
        from.join("learning/model.journal"),
        to.join("learning/model.journal"),
    )
    .unwrap();
}

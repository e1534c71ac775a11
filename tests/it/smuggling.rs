//! SMTP smuggling and bare line ends, at the engine and through the edge, under both settings
//! of `engine.bare_newline`: `<CRLF>.<CRLF>` is the only end of data either way, so a smuggled
//! `<LF>.<LF>` and the transaction behind it are one message — taken with its bare LFs written
//! as CRLF (`normalize`, the default) or refused with `550 5.6.0` (`reject`) — and the
//! connection is at a command boundary afterwards.

use std::time::Duration;

use crate::edge::{Fleet, client_from};
use crate::engine::TestEngine;
use crate::mail::{Client, Sink, until};

const FAST: &str = "[engine.delivery]\nretry_base = \"200ms\"\nconnect_timeout = \"1s\"\n";

/// An innocent message, `<LF>.<LF>`, and a whole second transaction behind it; the real end of
/// data comes last.
const SMUGGLED: &[u8] = b"Subject: innocent\r\n\r\nhi\n.\nMAIL FROM:<ceo@acme.example>\r\n\
RCPT TO:<bob@acme.example>\r\nDATA\r\nSubject: smuggled\r\n\r\nwire money\r\n.\r\n";

/// Sends [`SMUGGLED`] (or `body`) in one transaction and returns the reply to it, after
/// checking that the next command is read as a command.
async fn send(c: &mut Client, body: &[u8]) -> String {
    c.cmd("EHLO client.example", "250").await;
    c.cmd("MAIL FROM:<a@sender.example>", "250").await;
    c.cmd("RCPT TO:<bob@acme.example>", "250").await;
    c.cmd("DATA", "354").await;
    c.send(body).await;
    let r = c.reply().await;
    c.cmd("NOOP", "250").await;
    r
}

/// The one message the sink got: one message, the smuggled lines are its text, and every line
/// of it ends with CRLF.
fn one_normalised_message(sink: &Sink) {
    let got = sink.messages();
    assert_eq!(got.len(), 1, "{got:?}");
    let data = &got[0].data;
    assert_eq!(got[0].from, "a@sender.example");
    assert!(
        data.contains("Subject: innocent\r\n\r\nhi\r\n.\r\nMAIL FROM:<ceo@acme.example>\r\n")
            && data.contains("wire money\r\n"),
        "{data:?}"
    );
    assert!(
        data.match_indices('\n')
            .all(|(i, _)| i > 0 && data.as_bytes()[i - 1] == b'\r'),
        "no bare LF is passed on: {data:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_normalises_bare_lf_by_default_and_smuggling_stays_one_message() {
    let dir = tempfile::tempdir().unwrap();
    let (a, g) = (Sink::start().await, Sink::start().await);
    let e = TestEngine::start(&dir.path().join("spool"), a.addr, g.addr, FAST).await;
    let mut c = Client::connect(e.smtp).await;
    let r = send(&mut c, SMUGGLED).await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    assert!(until(Duration::from_secs(10), || !a.messages().is_empty()).await);
    // Proving an absence: a smuggled second message would have arrived by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    one_normalised_message(&a);
    // A bare CR is refused even so: some servers take it for a line end.
    let r = send(
        &mut c,
        b"Subject: cr\r\n\r\nhi\r.\rMAIL FROM:<ceo@acme.example>\r\n.\r\n",
    )
    .await;
    assert!(r.starts_with("550 5.6.0"), "{r}");
    e.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_newline_reject_refuses_the_message_at_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let (a, g) = (Sink::start().await, Sink::start().await);
    let extra = format!("bare_newline = \"reject\"\n{FAST}");
    let e = TestEngine::start(&dir.path().join("spool"), a.addr, g.addr, &extra).await;
    let mut c = Client::connect(e.smtp).await;
    let r = send(&mut c, SMUGGLED).await;
    assert!(r.starts_with("550 5.6.0"), "{r}");
    let r = send(&mut c, b"Subject: unix\r\n\r\nline\nends\r\n.\r\n").await;
    assert!(r.starts_with("550 5.6.0"), "a plain bare LF too: {r}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        a.messages().is_empty(),
        "nothing delivered: {:?}",
        a.messages()
    );
    assert!(e.store.is_empty());
    e.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_edge_smuggling_is_one_normalised_message() {
    let f = Fleet::start_with("", 100, "").await;
    let mut c = client_from("127.0.0.2", f.smtp).await;
    let r = send(&mut c, SMUGGLED).await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    assert!(until(Duration::from_secs(10), || !f.acme.messages().is_empty()).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    one_normalised_message(&f.acme);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_edge_bare_newline_reject_refuses_it() {
    let f = Fleet::start_with("", 100, "bare_newline = \"reject\"\n").await;
    let mut c = client_from("127.0.0.2", f.smtp).await;
    let r = send(&mut c, SMUGGLED).await;
    assert!(r.starts_with("550 5.6.0"), "{r}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(f.acme.messages().is_empty(), "{:?}", f.acme.messages());
}

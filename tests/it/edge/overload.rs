//! The edge in front of a busy engine: the engine's `451 4.3.2` at RCPT is relayed, and the
//! edge turns away the next new connections at once with `421 4.3.2` (no session, no engine
//! connection), then admits again.

use std::sync::atomic::Ordering;

use super::{Fleet, client_from, msg};
use crate::mail::Client;

async fn raw_from(src: &str, edge: std::net::SocketAddr) -> Client {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    Client::from_stream(sock.connect(edge).await.unwrap())
}

/// Engine e0 processes one message at a time (`engine.max_processing = 1`) behind a clamd
/// that never answers: A is in its scan, B waits its turn, so e0 is busy. C's recipient gets
/// e0's `451 4.3.2` through the edge, and for that one busy answer the edge refuses the next
/// `REFUSALS_PER_BUSY` (8) new connections with `421 4.3.2` before any banner, then greets the
/// next one. A and B, already received, are both accepted. Without the edge's part the
/// refused eight would each have got a banner and a session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_engine_makes_the_edge_refuse_new_connections_at_once() {
    let (scans, engine_extra) = crate::engine::overload::stuck_clamd().await;
    let mut f = Fleet::start_with("", 100, &engine_extra).await;
    // acme's mail from lon1 goes to lon1/uk (e0, e1) or fra1/uk (e2): only e0 is left.
    f.kill(1).await;
    f.kill(2).await;
    let senders = [
        client_from("127.0.0.21", f.smtp).await,
        client_from("127.0.0.22", f.smtp).await,
    ];
    let e0 = f.engines[0].as_ref().unwrap();
    let mut senders =
        crate::engine::overload::one_scanning_one_waiting(senders, &scans, e0, &msg).await;
    let mut c = client_from("127.0.0.23", f.smtp).await;
    c.cmd("EHLO client.example", "250").await;
    c.cmd("MAIL FROM:<c@sender.example>", "250").await;
    c.cmd("RCPT TO:<bob@acme.example>", "451 4.3.2").await;
    for i in 0..8 {
        let mut refused = raw_from(&format!("127.0.0.{}", 30 + i), f.smtp).await;
        refused.expect("421 4.3.2 Service busy").await;
        assert!(refused.closed().await);
    }
    let _greeted = client_from("127.0.0.40", f.smtp).await;
    for s in &mut senders {
        s.expect("250").await;
    }
    assert_eq!(
        scans.load(Ordering::SeqCst),
        2,
        "both received messages were scanned"
    );
}

/// Every engine of acme's route at its connection limit (`max_connections = 1`, A holds e0's
/// one session): B's recipient finds no engine it may try (`451 4.4.0`), and for that the edge
/// turns away the next new connections at once with `421 4.3.2`, as after a busy answer,
/// instead of giving each a session up to its recipient for the same `451`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_at_their_connection_limit_make_the_edge_refuse_new_connections_at_once() {
    let mut f = Fleet::start("", 1).await;
    f.kill(1).await;
    f.kill(2).await;
    // The edge's health checks (every 100 ms, down after 2 failures) see them gone: a
    // recipient then finds e0 alone, not two dead engines to try first.
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let mut a = client_from("127.0.0.21", f.smtp).await;
    a.cmd("EHLO client.example", "250").await;
    a.cmd("MAIL FROM:<a@sender.example>", "250").await;
    a.cmd("RCPT TO:<bob@acme.example>", "250").await;
    let mut b = client_from("127.0.0.22", f.smtp).await;
    b.cmd("EHLO client.example", "250").await;
    b.cmd("MAIL FROM:<b@sender.example>", "250").await;
    b.cmd("RCPT TO:<bob@acme.example>", "451 4.4.0").await;
    for i in 0..8 {
        let mut refused = raw_from(&format!("127.0.0.{}", 30 + i), f.smtp).await;
        refused.expect("421 4.3.2 Service busy").await;
        assert!(refused.closed().await);
    }
    // A's message still goes through its engine.
    a.cmd("DATA", "354").await;
    a.send(msg("a").as_bytes()).await;
    a.cmd(".", "250").await;
}

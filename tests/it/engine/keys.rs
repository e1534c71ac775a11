//! `[engine.delivery]` keys set away from their defaults, each as the tenant's server sees it:
//! how many connections deliver to it at once, and how many messages one connection carries.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use super::{FAST, TestEngine, msg};
use crate::mail::{Client, Sink, until};

/// Eighteen messages wait for acme's server (down); when it answers, the engine delivers them
/// over at most `connections_per_destination = 2` connections at once (the default, 10, opens
/// more), each carrying at most `messages_per_connection = 3` (the default, 100, would carry
/// them all over those two): at least six connections in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_connections_per_destination_and_messages_per_connection() {
    let dir = tempfile::tempdir().unwrap();
    let g = Sink::start().await;
    let down: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let e = TestEngine::start(
        &dir.path().join("spool"),
        down,
        g.addr,
        // Appended to FAST's `[engine.delivery]`.
        &format!(
            "{FAST}{}",
            r#"
connections_per_destination = 2
messages_per_connection = 3
"#
        ),
    )
    .await;
    let mut c = Client::connect(e.smtp).await;
    for i in 0..18 {
        let r = c
            .mail(
                "alice@sender.example",
                &["bob@acme.example"],
                &msg(&format!("batch {i}")),
            )
            .await;
        assert!(r.starts_with("250"), "{r}");
        c.cmd("RSET", "250").await;
    }
    let a = Sink::start_on(down).await;
    assert!(
        until(Duration::from_secs(20), || a.messages().len() == 18).await,
        "delivered {}",
        a.messages().len()
    );
    assert_eq!(a.max_sessions.load(SeqCst), 2, "connections at once");
    let connections = a.connections.load(SeqCst);
    assert!(
        connections >= 6,
        "{connections} connections for 18 messages at 3 each"
    );
    e.stop().await;
}

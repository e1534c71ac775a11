//! Two engines of one cluster: a user signed in on one sees, opens, releases and deletes mail
//! held by the other, through the authenticated peer API on the ops listener.

use maildistiller::store::State;

use super::harness::{Setup, WebEngine, down_addr, links, msg};

const SECRET: &str = "0123456789abcdef0123456789abcdef-test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_held_on_a_peer_is_shown_and_acted_on() {
    let dir = tempfile::tempdir().unwrap();
    let (ops_a, ops_b) = (
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    );
    let (addr_a, addr_b) = (ops_a.local_addr().unwrap(), ops_b.local_addr().unwrap());
    let engines = format!(
        "[[silo.cluster.engine]]\naddress = \"127.0.0.1:1\"\nops = \"{addr_a}\"\n\
         [[silo.cluster.engine]]\naddress = \"127.0.0.1:2\"\nops = \"{addr_b}\"\n"
    );
    let webmail = format!("peer_secret = \"{SECRET}\"\n");
    let (down, globex_down) = (down_addr(), down_addr());
    let (a_ops, b_ops) = (addr_a.to_string(), addr_b.to_string());
    let setup = |ops: &'static str| Setup {
        acme_delivery: down,
        globex_delivery: globex_down,
        webmail: &webmail,
        policy: "",
        engines: &engines,
        ops_listen: ops,
    };
    let a_ops: &'static str = a_ops.leak();
    let b_ops: &'static str = b_ops.leak();
    let a = WebEngine::start_with_ops(&dir.path().join("a"), &setup(a_ops), Some(ops_a)).await;
    let b = WebEngine::start_with_ops(&dir.path().join("b"), &setup(b_ops), Some(ops_b)).await;

    b.send(
        "x@sender.example",
        &["bob@acme.example"],
        &msg("bob@acme.example", "held on B"),
    )
    .await;
    b.send(
        "x@sender.example",
        &["bob@acme.example"],
        &msg("bob@acme.example", "QUARANTINE on B"),
    )
    .await;
    b.send(
        "x@sender.example",
        &["boss@globex.example"],
        &msg("boss@globex.example", "globex on B"),
    )
    .await;
    a.send(
        "x@sender.example",
        &["bob@acme.example"],
        &msg("bob@acme.example", "held on A"),
    )
    .await;
    b.wait_listed(3).await;
    a.wait_listed(1).await;

    let mut bob = a.browser();
    bob.login("bob@acme.example").await;
    let page = bob.get("/inbox").await.text();
    for s in [
        "held on A",
        "held on B",
        "QUARANTINE on B",
        "All (3)",
        "Quarantined (1)",
    ] {
        assert!(page.contains(s), "{s}: {page}");
    }
    assert!(!page.contains("globex on B"), "{page}");
    let held_b = links(&bob.get("/inbox?q=held+on+b").await.text()).remove(0);
    let m = bob.get(&held_b).await.text();
    assert!(m.contains("Hello bob@acme.example."), "{m}");
    assert_eq!(bob.get(&format!("{held_b}/raw")).await.status, 200);

    let q_b = links(&bob.get("/inbox?view=quarantine").await.text()).remove(0);
    let csrf = bob.csrf().await;
    let r = bob
        .post(&format!("{q_b}/release"), &[("csrf", &csrf)])
        .await;
    assert_eq!(r.location(), "/inbox?done=released", "{}", r.text());
    assert!(
        b.store.list().iter().all(|l| l.state != State::Quarantined),
        "released on B"
    );
    let r = bob
        .post(&format!("{held_b}/delete"), &[("csrf", &csrf)])
        .await;
    assert_eq!(r.location(), "/inbox?done=deleted");
    assert_eq!(b.store.len(), 2, "deleted on B");

    // The other tenant sees its own mail on B and nothing of acme's.
    let mut boss = a.browser();
    boss.login("boss@globex.example").await;
    let page = boss.get("/inbox").await.text();
    assert!(
        page.contains("globex on B") && !page.contains("on A") && !page.contains("QUARANTINE"),
        "{page}"
    );
    assert_eq!(boss.get(&held_b).await.status, 404);

    // The peer API answers only with the secret.
    let path = "/webmail/peer/list?tenant=acme&user=bob@acme.example&admin=1";
    let ask = move |auth: Option<&'static str>| {
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(addr_b).unwrap();
            let auth = auth
                .map(|a| format!("Authorization: Bearer {a}\r\n"))
                .unwrap_or_default();
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
            )
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
    };
    assert!(ask(None).await.unwrap().starts_with("HTTP/1.1 404"));
    assert!(
        ask(Some("0123456789abcdef0123456789abcdef-nope"))
            .await
            .unwrap()
            .starts_with("HTTP/1.1 404")
    );
    let ok = ask(Some(SECRET)).await.unwrap();
    assert!(
        ok.starts_with("HTTP/1.1 200") && ok.contains("counts\t"),
        "{ok}"
    );

    // B goes away: A still serves its own mail and says some could not be listed (polled:
    // B's ops listener closes as its shutdown completes).
    drop(b);
    let mut page = String::new();
    for _ in 0..50 {
        page = bob.get("/inbox").await.text();
        if page.contains("could not be listed") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        page.contains("held on A") && page.contains("could not be listed"),
        "{page}"
    );
}

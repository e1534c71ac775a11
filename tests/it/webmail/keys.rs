//! `[engine.webmail]` keys set away from their defaults, each as a user or operator meets it:
//! the redirect's target, sessions ended when idle, at their lifetime or when the store is
//! full, sign-in lockouts that last `lockout` and count failures within `login_window`,
//! password checks queued beyond `max_concurrent_logins`, silent connections closed, a slow
//! peer engine given up on, large messages not rendered, and the outage text.

use std::time::{Duration, Instant};

use crate::mail::Sink;

use super::harness::{PASSWORD, Setup, WebEngine, down_addr, field, hash, links, msg};

async fn start(dir: &std::path::Path, webmail: &str) -> (WebEngine, Sink, Sink) {
    let (a, g) = (Sink::start().await, Sink::start().await);
    let mut s = Setup::new(a.addr, g.addr);
    s.webmail = webmail;
    (WebEngine::start(dir, &s).await, a, g)
}

/// `public_url`: plain HTTP redirects to the address users type, not to the request's host
/// and the HTTPS listener's port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_go_to_the_public_url() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::support::free_port();
    let (_e, _a, _g) = start(
        dir.path(),
        &format!(
            "http_redirect_listen = [\"127.0.0.1:{port}\"]\npublic_url = \"https://mail.example.net\"\n"
        ),
    )
    .await;
    let r = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(
            b"GET /inbox?view=held HTTP/1.1\r\nHost: internal.host:8080\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        out
    })
    .await
    .unwrap();
    assert!(r.starts_with("HTTP/1.1 308"), "{r}");
    assert!(
        r.to_lowercase()
            .contains("location: https://mail.example.net/inbox?view=held\r\n"),
        "{r}"
    );
}

/// `session_idle = "10s"`, `session_lifetime = "12s"`: a session left alone ends after ten
/// seconds; a busy one (a request every two seconds) lives until twelve, then ends too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_when_idle_and_at_their_lifetime() {
    let dir = tempfile::tempdir().unwrap();
    let (e, _a, _g) = start(
        dir.path(),
        "session_idle = \"10s\"\nsession_lifetime = \"12s\"\n",
    )
    .await;
    let (mut idle, mut busy) = (e.browser(), e.browser());
    idle.login("bob@acme.example").await;
    busy.login("amy@acme.example").await;
    let signed_in = Instant::now();
    let at =
        |secs: f64| tokio::time::sleep_until((signed_in + Duration::from_secs_f64(secs)).into());
    // Busy: a request every two seconds.
    for t in [2.0, 4.0, 6.0, 8.0] {
        at(t).await;
        assert_eq!(busy.get("/inbox").await.status, 200, "at {t} s");
    }
    at(10.5).await;
    let r = idle.get("/inbox").await;
    assert_eq!(
        (r.status, r.location()),
        (303, "/login"),
        "idle for ten seconds"
    );
    assert_eq!(
        busy.get("/inbox").await.status,
        200,
        "busy, and younger than its lifetime"
    );
    let cut = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = busy.get("/inbox").await;
        if r.status != 200 {
            assert_eq!((r.status, r.location()), (303, "/login"));
            break signed_in.elapsed();
        }
        assert!(
            signed_in.elapsed() < Duration::from_secs(30),
            "the busy session outlived its lifetime"
        );
    };
    assert!(
        cut >= Duration::from_secs(12),
        "ended after {cut:?}, before its lifetime"
    );
}

/// `max_sessions = 2`: a third sign-in ends the least recently used session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_session_store_ends_the_least_recently_used() {
    let dir = tempfile::tempdir().unwrap();
    let (e, _a, _g) = start(dir.path(), "max_sessions = 2\n").await;
    let (mut first, mut second, mut third) = (e.browser(), e.browser(), e.browser());
    first.login("bob@acme.example").await;
    second.login("amy@acme.example").await;
    assert_eq!(first.get("/inbox").await.status, 200);
    assert_eq!(second.get("/inbox").await.status, 200);
    third.login("admin@acme.example").await;
    assert_eq!(first.get("/inbox").await.location(), "/login");
    assert_eq!(second.get("/inbox").await.status, 200);
    assert_eq!(third.get("/inbox").await.status, 200);
}

/// `login_max_failures = 2` with `login_window = "1s"` and `lockout = "1s"`: failures further
/// apart than the window do not add up; a lockout ends after a second (the defaults: fifteen
/// minutes each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_window_and_lockout_are_as_long_as_configured() {
    let dir = tempfile::tempdir().unwrap();
    let (e, _a, _g) = start(
        dir.path(),
        "login_max_failures = 2\nlogin_window = \"1s\"\nlockout = \"1s\"\n",
    )
    .await;
    let mut b = e.browser();
    // Two failures a window apart: not locked.
    assert_eq!(b.try_login("bob@acme.example", "wrong").await.status, 401);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(b.try_login("bob@acme.example", "wrong").await.status, 401);
    let r = b.try_login("bob@acme.example", PASSWORD).await;
    assert_eq!((r.status, r.location()), (303, "/inbox"), "{}", r.text());
    // Two quick failures lock amy; a second later the right password works again.
    let mut b = e.browser();
    for _ in 0..2 {
        assert_eq!(b.try_login("amy@acme.example", "wrong").await.status, 401);
    }
    assert_eq!(b.try_login("amy@acme.example", PASSWORD).await.status, 429);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = b.try_login("amy@acme.example", PASSWORD).await;
        if r.status == 303 {
            break;
        }
        assert_eq!(r.status, 429, "{}", r.text());
        assert!(Instant::now() < deadline, "still locked after five seconds");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An argon2id hash that takes a while to check (the harness's is as cheap as argon2 allows).
fn slow_hash(password: &str) -> String {
    use argon2::PasswordHasher;
    let a = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(8192, 2, 1, None).unwrap(),
    );
    a.hash_password_with_salt(password.as_bytes(), b"webmail-slow-salt")
        .unwrap()
        .to_string()
}

/// `max_concurrent_logins = 1`: four sign-ins sent at once are checked one after another, so
/// their answers come one password check apart; with the default (4) they are checked side by
/// side and come together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_checks_beyond_max_concurrent_logins_wait_their_turn() {
    let dir = tempfile::tempdir().unwrap();
    let (e, _a, _g) = start(dir.path(), "max_concurrent_logins = 1\n").await;
    // bob's password becomes slow to check (a reload, as `maildistiller user` does).
    let text = std::fs::read_to_string(&e.config).unwrap();
    let cheap = hash(PASSWORD);
    let slow = tokio::task::spawn_blocking(|| slow_hash(PASSWORD))
        .await
        .unwrap();
    std::fs::write(&e.config, text.replace(&cheap, &slow)).unwrap();
    e.ops.reload().unwrap_or_else(|err| panic!("{err}"));
    let mut forms = Vec::new();
    for _ in 0..4 {
        let mut b = e.browser();
        let pre = field(&b.get("/login").await.text(), "pre").unwrap();
        forms.push((b, pre));
    }
    // How long one check of this hash takes here.
    let one = tokio::task::spawn_blocking(move || {
        use argon2::PasswordVerifier;
        let started = Instant::now();
        let parsed = argon2::password_hash::phc::PasswordHash::new(&slow).unwrap();
        assert!(
            argon2::Argon2::default()
                .verify_password(PASSWORD.as_bytes(), &parsed)
                .is_ok()
        );
        started.elapsed()
    })
    .await
    .unwrap();
    let start = Instant::now();
    let tasks: Vec<_> = forms
        .into_iter()
        .map(|(mut b, pre)| {
            tokio::spawn(async move {
                let r = b
                    .post(
                        "/login",
                        &[
                            ("pre", &pre),
                            ("address", "bob@acme.example"),
                            ("password", PASSWORD),
                        ],
                    )
                    .await;
                assert_eq!(r.status, 303, "{}", r.text());
                start.elapsed()
            })
        })
        .collect();
    let mut done = Vec::new();
    for t in tasks {
        done.push(t.await.unwrap());
    }
    done.sort();
    // One at a time, the answers are three checks apart from first to last; side by side they
    // come (nearly) together.
    let spread = done[3] - done[0];
    assert!(
        spread >= one.mul_f64(1.5),
        "answers at {done:?}, one check takes {one:?}: checked side by side, not one at a time"
    );
}

/// `idle_timeout = "1s"`: a connection that sends nothing (not even a TLS handshake) is closed
/// by the server, where the default would keep it a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_after_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (e, _a, _g) = start(dir.path(), "idle_timeout = \"1s\"\n").await;
    let web = e.web;
    let read = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut c = std::net::TcpStream::connect(web).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.read(&mut [0u8; 16]).map_err(|e| e.kind())
    })
    .await
    .unwrap();
    assert_eq!(read, Ok(0), "closed by the server");
}

/// `max_render_size = "1k"` and `outage_help`: a held message over a KiB is listed but not
/// rendered (a smaller one is), and the inbox tells users what the operator wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_are_not_rendered_and_the_outage_text_is_the_operators() {
    let dir = tempfile::tempdir().unwrap();
    let g = Sink::start().await;
    let mut s = Setup::new(down_addr(), g.addr);
    s.webmail = "max_render_size = \"1k\"\noutage_help = \"Call the help desk on 0800 123 456.\"\n";
    let e = WebEngine::start(dir.path(), &s).await;
    let big = msg("bob@acme.example", "big one").replace(
        "Hello bob@acme.example.",
        &"A long line of ordinary text.\r\n".repeat(60),
    );
    e.send("alice@sender.example", &["bob@acme.example"], &big)
        .await;
    e.send(
        "alice@sender.example",
        &["bob@acme.example"],
        &msg("bob@acme.example", "small one"),
    )
    .await;
    e.wait_listed(2).await;
    let mut b = e.browser();
    b.login("bob@acme.example").await;
    let inbox = b.get("/inbox").await.text();
    assert!(
        inbox.contains("Call the help desk on 0800 123 456."),
        "{inbox}"
    );
    assert!(
        !inbox.contains("use the phone, a chat tool"),
        "the default text is replaced"
    );
    let big = links(&b.get("/inbox?q=big+one").await.text()).remove(0);
    let page = b.get(&big).await.text();
    assert!(
        page.contains("This message is too large to show here"),
        "{page}"
    );
    assert_eq!(
        b.get(&format!("{big}/raw")).await.status,
        200,
        "still downloadable"
    );
    let small = links(&b.get("/inbox?q=small+one").await.text()).remove(0);
    let page = b.get(&small).await.text();
    assert!(!page.contains("too large"), "{page}");
}

/// A TCP relay to `to` that holds every answer back for `delay`.
async fn slow_relay(to: std::net::SocketAddr, delay: Duration) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(to).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move { tokio::io::copy(&mut cr, &mut sw).await });
                tokio::time::sleep(delay).await;
                let _ = tokio::io::copy(&mut sr, &mut cw).await;
            });
        }
    });
    addr
}

/// `peer_timeout = "200ms"`: a peer engine whose answers take a second is given up on, and the
/// page says its mail could not be listed (the default, 2 s, would have waited for it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_peer_is_given_up_on_after_peer_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (ops_a, ops_b) = (
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    );
    let (addr_a, addr_b) = (ops_a.local_addr().unwrap(), ops_b.local_addr().unwrap());
    let relay = slow_relay(addr_b, Duration::from_secs(1)).await;
    let engines = format!(
        "[[silo.cluster.engine]]\naddress = \"127.0.0.1:1\"\nops = \"{addr_a}\"\n\
         [[silo.cluster.engine]]\naddress = \"127.0.0.1:2\"\nops = \"{relay}\"\n"
    );
    let webmail =
        "peer_secret = \"0123456789abcdef0123456789abcdef-keys\"\npeer_timeout = \"200ms\"\n";
    let (down, globex_down) = (down_addr(), down_addr());
    let (a_ops, b_ops): (&'static str, &'static str) =
        (addr_a.to_string().leak(), addr_b.to_string().leak());
    let setup = |ops: &'static str| Setup {
        acme_delivery: down,
        globex_delivery: globex_down,
        webmail,
        engines: &engines,
        ops_listen: ops,
        policy: "",
    };
    let a = WebEngine::start_with_ops(&dir.path().join("a"), &setup(a_ops), Some(ops_a)).await;
    let b = WebEngine::start_with_ops(&dir.path().join("b"), &setup(b_ops), Some(ops_b)).await;
    b.send(
        "x@sender.example",
        &["bob@acme.example"],
        &msg("bob@acme.example", "held on B"),
    )
    .await;
    b.wait_listed(1).await;
    let mut bob = a.browser();
    bob.login("bob@acme.example").await;
    let page = bob.get("/inbox").await.text();
    assert!(
        page.contains("other server(s) of this service could not be listed"),
        "{page}"
    );
    assert!(!page.contains("held on B"), "{page}");
}

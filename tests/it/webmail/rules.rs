//! Rules that must hold whatever the message looks like and whoever asks (issue 15), over real
//! HTTPS and SMTP: release rights from every finding of the verdict, a user's release touching
//! only their own copy, state changes from other origins refused, "allow this sender" read by
//! the scanner.

use std::time::Duration;

use maildistiller::config::webmail::FindingKind;
use maildistiller::store::{State, Status};

use super::harness::{Setup, WebEngine, field, links, msg};
use crate::mail::{Client, Sink, until};

/// The EICAR test file as `eicar.com`: a virus, and a blocked extension too.
fn eicar(from: &str) -> String {
    let raw = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/scan/eicar.eml"),
    )
    .unwrap();
    raw.replace("\r\n", "\n")
        .replace("From: alice@good.test", &format!("From: {from}"))
        .replace('\n', "\r\n")
}

/// The quarantined messages' kinds of finding, as the store has them.
fn kinds(e: &WebEngine) -> Vec<Vec<FindingKind>> {
    e.store
        .list()
        .iter()
        .filter_map(|l| match &l.progress.status {
            Status::Quarantined { kinds, .. } => Some(kinds.clone()),
            _ => None,
        })
        .collect()
}

/// An engine whose acme server is `a` (a live sink), with one message from `from` to `rcpts`
/// quarantined by the harness's `QUARANTINE` rule.
async fn one_quarantined(dir: &std::path::Path, a: &Sink, from: &str, rcpts: &[&str]) -> WebEngine {
    let g = Sink::start().await;
    let e = WebEngine::start(dir, &Setup::new(a.addr, g.addr)).await;
    e.send(from, rcpts, &msg(&rcpts.join(", "), "QUARANTINE me"))
        .await;
    e.wait_listed(1).await;
    e
}

/// `user` signed in: their browser, the link of their newest message and their CSRF token.
async fn signed_in(e: &WebEngine, user: &str) -> (super::harness::Browser, String, String) {
    let mut b = e.browser();
    b.login(user).await;
    let link = b.message_links("").await.remove(0);
    let csrf = b.csrf().await;
    (b, link, csrf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virus_that_is_also_a_blocked_attachment_is_released_by_admins_only() {
    let dir = tempfile::tempdir().unwrap();
    let (a, g) = (Sink::start().await, Sink::start().await);
    let mut s = Setup::new(a.addr, g.addr);
    s.policy = "actions = { virus = \"quarantine\" }\n";
    // The default, written out: only admins release viruses.
    s.webmail = "admin_release_only = [\"virus\"]\n";
    let e = WebEngine::start(dir.path(), &s).await;
    e.send(
        "alice@good.test",
        &["bob@acme.example"],
        &eicar("alice@good.test"),
    )
    .await;
    e.wait_listed(1).await;
    let k = kinds(&e);
    assert!(
        k[0].contains(&FindingKind::Virus) && k[0].contains(&FindingKind::Attachment),
        "the verdict found both: {k:?}"
    );
    let mut bob = e.browser();
    bob.login("bob@acme.example").await;
    let inbox = bob.get("/inbox").await.text();
    eprintln!("quarantine reason as listed: {inbox}");
    let link = links(&inbox).remove(0);
    let page = bob.get(&link).await.text();
    assert!(
        !page.contains("Release to my mailbox") && page.contains("Only an administrator"),
        "{page}"
    );
    let csrf = field(&inbox, "csrf").unwrap();
    let r = bob
        .post(&format!("{link}/release"), &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        e.store.list()[0].state,
        State::Quarantined,
        "still quarantined"
    );

    let mut admin = e.browser();
    admin.login("admin@acme.example").await;
    let link = admin.message_links("").await.remove(0);
    let csrf = admin.csrf().await;
    let r = admin
        .post(&format!("{link}/release"), &[("csrf", &csrf)])
        .await;
    assert_eq!(r.location(), "/inbox?done=released", "{}", r.text());
    assert!(until(Duration::from_secs(10), || a.messages().len() == 1).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releasing_mail_for_colleagues_releases_only_the_viewers_copy() {
    let dir = tempfile::tempdir().unwrap();
    let a = Sink::start().await;
    let rcpts = ["bob@acme.example", "amy@acme.example"];
    let e = one_quarantined(dir.path(), &a, "a@sender.example", &rcpts).await;
    let (mut bob, link, csrf) = signed_in(&e, "bob@acme.example").await;
    let r = bob
        .post(&format!("{link}/release"), &[("csrf", &csrf)])
        .await;
    assert_eq!(r.location(), "/inbox?done=released", "{}", r.text());
    assert!(until(Duration::from_secs(10), || a.messages().len() == 1).await);
    // Proving an absence: amy's copy would have gone in the same delivery.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = a.messages();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpts, ["bob@acme.example"], "bob's copy only");
    assert_eq!(bob.get(&link).await.status, 404, "gone from bob's page");

    let mut amy = e.browser();
    amy.login("amy@acme.example").await;
    let inbox = amy.get("/inbox?view=quarantine").await.text();
    assert!(
        inbox.contains("QUARANTINE me"),
        "still amy's to decide: {inbox}"
    );
    let link = links(&inbox).remove(0);
    let csrf = field(&inbox, "csrf").unwrap();
    let r = amy
        .post(&format!("{link}/release"), &[("csrf", &csrf)])
        .await;
    assert_eq!(r.location(), "/inbox?done=released", "{}", r.text());
    assert!(until(Duration::from_secs(10), || a.messages().len() == 2).await);
    assert_eq!(a.messages()[1].rcpts, ["amy@acme.example"]);
    assert!(until(Duration::from_secs(5), || e.store.is_empty()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changes_from_another_origin_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = Sink::start().await;
    let e = one_quarantined(dir.path(), &a, "a@sender.example", &["bob@acme.example"]).await;
    let (mut b, link, csrf) = signed_in(&e, "bob@acme.example").await;
    // Pages ask browsers to send their real origin on their own posts: under `no-referrer`
    // they would send `Origin: null`, refused below. Message bodies still leak nothing.
    let inbox = b.get("/inbox").await;
    assert_eq!(inbox.header("referrer-policy"), Some("same-origin"));
    let body = b.get(&format!("{link}/body")).await;
    assert_eq!(body.header("referrer-policy"), Some("no-referrer"));
    for origin in [
        "https://evil.example",
        "null",
        "https://localhost.evil.example",
        "http://localhost",
    ] {
        b.extra = vec![("Origin".into(), origin.into())];
        for (path, form) in [
            (format!("{link}/release"), vec![("csrf", csrf.as_str())]),
            (format!("{link}/delete"), vec![("csrf", csrf.as_str())]),
            (format!("{link}/allow"), vec![("csrf", csrf.as_str())]),
            (
                "/allowed".into(),
                vec![("csrf", csrf.as_str()), ("entry", "x@y.example")],
            ),
            ("/logout".into(), vec![("csrf", csrf.as_str())]),
        ] {
            let r = b.post(&path, &form).await;
            assert_eq!(r.status, 403, "{origin} {path}: {}", r.text());
        }
    }
    // Sign-in from another origin too (login CSRF), with the form's own token.
    let mut other = e.browser();
    let form = other.get("/login").await.text();
    let pre = field(&form, "pre").unwrap();
    other.extra = vec![("Origin".into(), "https://evil.example".into())];
    let r = other
        .post(
            "/login",
            &[
                ("pre", &pre),
                ("address", "bob@acme.example"),
                ("password", super::harness::PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        e.store.list()[0].state,
        State::Quarantined,
        "nothing changed"
    );
    // Our own origin (what a browser sends for this page's forms) works.
    b.extra = vec![("Origin".into(), "https://localhost".into())];
    let r = b.post(&format!("{link}/release"), &[("csrf", &csrf)]).await;
    assert_eq!(r.location(), "/inbox?done=released", "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_this_sender_lets_their_next_message_through_but_never_a_virus() {
    let dir = tempfile::tempdir().unwrap();
    let a = Sink::start().await;
    let e = one_quarantined(
        dir.path(),
        &a,
        "alice@sender.example",
        &["bob@acme.example"],
    )
    .await;
    let (mut bob, link, csrf) = signed_in(&e, "bob@acme.example").await;
    let r = bob.post(&format!("{link}/allow"), &[("csrf", &csrf)]).await;
    assert_eq!(r.location(), "/inbox?done=allowed", "{}", r.text());

    // The same rule fires on the next message, and the allow list mutes it: delivered.
    e.send(
        "alice@sender.example",
        &["bob@acme.example"],
        &msg("bob@acme.example", "QUARANTINE second"),
    )
    .await;
    assert!(
        until(Duration::from_secs(10), || a.messages().len() == 1).await,
        "delivered: {:?}",
        e.store.list().iter().map(|l| l.state).collect::<Vec<_>>()
    );
    let data = a.messages()[0].data.replace("\r\n\t", " ");
    assert!(data.contains("Subject: QUARANTINE second"), "{data}");
    let verdict = data
        .lines()
        .find(|l| l.starts_with("X-Maildistiller-Verdict:"))
        .unwrap_or_default()
        .to_owned();
    assert!(
        verdict.contains("action=deliver")
            && verdict.contains("listed=webmail allow sender alice@sender.example"),
        "the verdict says why: {verdict}"
    );
    assert_eq!(kinds(&e).len(), 1, "only the first stays quarantined");

    // To bob and amy: amy has not allowed alice, so the message is judged as before.
    e.send(
        "alice@sender.example",
        &["bob@acme.example", "amy@acme.example"],
        &msg("bob@acme.example, amy@acme.example", "QUARANTINE third"),
    )
    .await;
    e.wait_listed(2).await;
    assert_eq!(kinds(&e).len(), 2);

    // A virus from the allowed sender is still refused (the policy rejects viruses).
    let mut c = Client::connect(e.smtp).await;
    let r = c
        .mail(
            "alice@sender.example",
            &["bob@acme.example"],
            &eicar("alice@sender.example"),
        )
        .await;
    assert!(r.starts_with("550 5.7.1"), "{r}");
    assert_eq!(a.messages().len(), 1);
}

/// Plain HTTP only redirects, and only to a name configured here: `public_url`, else
/// `engine.hostname` or the listener's address (chosen by the request's `Host`), never the
/// `Host` text itself (no open redirect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_redirected_to_https() {
    let dir = tempfile::tempdir().unwrap();
    let (a, g) = (Sink::start().await, Sink::start().await);
    let port = crate::support::free_port();
    let mut s = Setup::new(a.addr, g.addr);
    let extra = format!("http_redirect_listen = [\"127.0.0.1:{port}\"]\n");
    s.webmail = &extra;
    let e = WebEngine::start(dir.path(), &s).await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let get = |host: &'static str| {
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.write_all(
                format!(
                    "GET /inbox?view=held HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .unwrap();
            let mut out = String::new();
            c.read_to_string(&mut out).unwrap();
            out.to_lowercase()
        })
    };
    // A name of ours (the listener's address) is kept; any other Host gets our first configured
    // name (engine.hostname), never its own text: no open redirect.
    let r = get("127.0.0.1:8080").await.unwrap();
    assert!(r.starts_with("http/1.1 308"), "{r}");
    let want = format!(
        "location: https://127.0.0.1:{}/inbox?view=held",
        e.web.port()
    );
    assert!(r.contains(&want), "{r}");
    for evil in [
        "evil.example",
        "mail.acme.example",
        "mde.test.evil.example:80",
    ] {
        let r = get(evil).await.unwrap();
        let want = format!(
            "location: https://mde.test:{}/inbox?view=held",
            e.web.port()
        );
        assert!(r.contains(&want), "{evil}: {r}");
        assert!(!r.contains("evil") && !r.contains("acme"), "{evil}: {r}");
    }
    // With public_url, that is where everyone goes (read per request: a reload applies).
    std::fs::write(
        &e.config,
        std::fs::read_to_string(&e.config).unwrap().replace(
            "http_redirect_listen",
            "public_url = \"https://mail.example.net\"\nhttp_redirect_listen",
        ),
    )
    .unwrap();
    e.ops.reload().expect("reload");
    let r = get("127.0.0.1:8080").await.unwrap();
    assert!(
        r.contains("location: https://mail.example.net/inbox?view=held"),
        "{r}"
    );
    // Plain HTTP on the HTTPS port is refused by TLS, never served.
    let web = e.web;
    let plain = tokio::task::spawn_blocking(move || crate::support::http(web, "GET", "/inbox"))
        .await
        .unwrap();
    assert!(plain.is_none() || plain.is_some_and(|(code, _)| code != 200));
}

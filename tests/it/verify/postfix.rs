//! The call-ahead against the real peer: a private Postfix instance on loopback as acme's
//! server, refusing users missing from its `relay_recipient_maps` as a tenant's gateway does.
//! Needs the `postfix` binary and root (`.ci/run` installs it); without them it prints a notice
//! and skips.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::engine::TestEngine;
use crate::mail::Sink;
use crate::support::free_port;

/// A Postfix that relays for `acme.example` to the listed recipients only.
struct Postfix {
    dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl Postfix {
    fn start(recipients: &[&str]) -> Option<Postfix> {
        let found = Command::new("postfix").arg("-h").output().is_ok()
            || Path::new("/usr/sbin/postfix").exists();
        #[allow(unsafe_code)]
        let root = unsafe { libc::geteuid() } == 0;
        if !found || !root {
            eprintln!(
                "NOTICE: verify::postfix skipped: needs the postfix binary and root (.ci/run has both)"
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let b = dir.path().display().to_string();
        for d in ["etc", "queue", "data"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let chown = Command::new("chown")
            .args(["postfix", &format!("{b}/data")])
            .status()
            .unwrap();
        assert!(chown.success());
        let port = free_port();
        let map: String = recipients.iter().map(|r| format!("{r} ok\n")).collect();
        std::fs::write(dir.path().join("etc/recipients"), map).unwrap();
        std::fs::write(
            dir.path().join("etc/main.cf"),
            format!(
                "compatibility_level = 3.6\nqueue_directory = {b}/queue\ndata_directory = {b}/data\n\
                 maillog_file = {b}/postfix.log\nmaillog_file_prefixes = {b}\n\
                 myhostname = mx.acme.example\nmydestination =\ninet_interfaces = 127.0.0.1\n\
                 inet_protocols = ipv4\nmynetworks = 127.0.0.0/8\nrelay_domains = acme.example\n\
                 relay_recipient_maps = texthash:{b}/etc/recipients\n\
                 smtpd_relay_restrictions = reject_unauth_destination\nalias_maps =\n\
                 alias_database =\nlocal_recipient_maps =\nsmtp_tls_security_level = none\n"
            ),
        )
        .unwrap();
        let services = [
            format!("127.0.0.1:{port} inet n - n - - smtpd"),
            "pickup unix n - n 60 1 pickup".into(),
            "cleanup unix n - n - 0 cleanup".into(),
            "qmgr unix n - n 300 1 qmgr".into(),
            "rewrite unix - - n - - trivial-rewrite".into(),
            "bounce unix - - n - 0 bounce".into(),
            "defer unix - - n - 0 bounce".into(),
            "trace unix - - n - 0 bounce".into(),
            "verify unix - - n - 1 verify".into(),
            "flush unix n - n 1000? 0 flush".into(),
            "proxymap unix - - n - - proxymap".into(),
            "smtp unix - - n - - smtp".into(),
            "relay unix - - n - - smtp".into(),
            "showq unix n - n - - showq".into(),
            "error unix - - n - - error".into(),
            "retry unix - - n - - error".into(),
            "discard unix - - n - - discard".into(),
            "anvil unix - - n - 1 anvil".into(),
            "scache unix - - n - 1 scache".into(),
            "postlog unix-dgram n - n - 1 postlogd".into(),
        ];
        std::fs::write(dir.path().join("etc/master.cf"), services.join("\n") + "\n").unwrap();
        let started = Command::new("postfix")
            .args(["-c", &format!("{b}/etc"), "start"])
            .output()
            .expect("run postfix");
        assert!(
            started.status.success(),
            "postfix start: {}{} (see {b}/postfix.log)",
            String::from_utf8_lossy(&started.stdout),
            String::from_utf8_lossy(&started.stderr)
        );
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // An external process: its port is the only sign it is up.
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "postfix did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Postfix { dir, addr })
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let etc = self.dir.path().join("etc");
        let _ = Command::new("postfix")
            .args(["-c", &etc.display().to_string(), "stop"])
            .output();
    }
}

/// Postfix refuses the unknown user (`550 5.1.1 … User unknown in relay recipient table`): the
/// sender hears our `550 5.1.1`; the known one is accepted; the second ask of each comes from
/// the cache. Prints the time a probed RCPT and a cached one took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_ahead_against_postfix() {
    let Some(pf) = Postfix::start(&["bob@acme.example"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let globex = Sink::start().await;
    let e = TestEngine::start_full(
        &dir.path().join("spool"),
        pf.addr,
        globex.addr,
        "",
        "mde1.test",
        "verify = \"call-ahead\"",
    )
    .await;
    let timed = |a: &'static str| {
        let smtp = e.smtp;
        async move {
            let t = Instant::now();
            let r = super::rcpt_at(smtp, a).await;
            (r, t.elapsed())
        }
    };
    let (r, probed_unknown) = timed("nobody@acme.example").await;
    assert!(r.starts_with("550 5.1.1"), "{r}");
    let (r, probed_known) = timed("bob@acme.example").await;
    assert!(r.starts_with("250 2.1.5"), "{r}");
    let (r, cached_unknown) = timed("nobody@acme.example").await;
    assert!(r.starts_with("550 5.1.1"), "{r}");
    let (r, cached_known) = timed("bob@acme.example").await;
    assert!(r.starts_with("250 2.1.5"), "{r}");
    let log = std::fs::read_to_string(pf.dir.path().join("postfix.log")).unwrap_or_default();
    assert_eq!(
        log.matches("User unknown in relay recipient table").count(),
        1,
        "Postfix was asked once about nobody@: {log}"
    );
    eprintln!(
        "call-ahead against Postfix, one RCPT session each: probed unknown {probed_unknown:?}, \
         probed known {probed_known:?} (connection reused), cached unknown {cached_unknown:?}, \
         cached known {cached_known:?}"
    );
}

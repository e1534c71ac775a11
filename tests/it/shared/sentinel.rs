//! `[shared] sentinel`: the store behind Redis Sentinel, through a failover. A primary, its
//! replica and one Sentinel (quorum 1) run privately on loopback; the engine is given only the
//! Sentinel's address and the primary's name. Its sightings land on the primary; the primary
//! is killed; Sentinel promotes the replica; mail keeps flowing, and the engine's writes land
//! on the new primary without a restart or a config change.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{OUTBREAK, campaign_copy, via};
use crate::engine::TestEngine;
use crate::mail::{Sink, until};
use crate::support::free_port;

/// One private redis-server (or Sentinel) process; killed when dropped.
pub(super) struct Node {
    pub(super) port: u16,
    child: Option<Child>,
}

impl Node {
    fn start(bin: &str, port: u16, args: &[String]) -> Node {
        let child = Command::new(bin)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let n = Node {
            port,
            child: Some(child),
        };
        let start = Instant::now();
        while n.query(&["PING"]).is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "port {port} answers"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        n
    }

    pub(super) fn server(bin: &str, extra: &[&str]) -> Node {
        let port = free_port();
        let mut args: Vec<String> = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["--port".into(), port.to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        Node::start(bin, port, &args)
    }

    pub(super) fn query(&self, args: &[&str]) -> Option<redis::Value> {
        let mut con = redis::Client::open(format!("redis://127.0.0.1:{}", self.port))
            .ok()?
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut con).ok()
    }

    pub(super) fn dbsize(&self) -> i64 {
        match self.query(&["DBSIZE"]) {
            Some(redis::Value::Int(n)) => n,
            _ => -1,
        }
    }

    /// The port Sentinel names as `name`'s primary.
    fn primary_port(&self, name: &str) -> Option<u16> {
        match self.query(&["SENTINEL", "get-master-addr-by-name", name])? {
            redis::Value::Array(v) => match v.get(1)? {
                redis::Value::BulkString(p) => std::str::from_utf8(p).ok()?.parse().ok(),
                _ => None,
            },
            _ => None,
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test]
async fn writes_follow_the_primary_sentinel_names_through_a_failover() {
    let Some(bin) = super::redis_server() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut primary = Node::server(&bin, &[]);
    let pp = primary.port.to_string();
    let replica = Node::server(&bin, &["--replicaof", "127.0.0.1", &pp]);
    let sp = free_port();
    let conf = dir.path().join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {sp}\nbind 127.0.0.1\nsentinel monitor cell 127.0.0.1 {pp} 1\n\
             sentinel down-after-milliseconds cell 400\nsentinel failover-timeout cell 2000\n"
        ),
    )
    .unwrap();
    let sentinel = Node::start(
        &bin,
        sp,
        &[conf.to_str().unwrap().to_owned(), "--sentinel".into()],
    );
    // Sentinel must have found the replica before it can promote it.
    assert!(
        until(Duration::from_secs(20), || matches!(
            sentinel.query(&["SENTINEL", "replicas", "cell"]),
            Some(redis::Value::Array(v)) if !v.is_empty()
        ))
        .await,
        "Sentinel knows the replica"
    );

    let (acme, globex) = (Sink::start().await, Sink::start().await);
    let cfg = format!(
        r#"proxy_listen = ["127.0.0.1:0"]
trusted_proxies = ["127.0.0.0/8"]
[shared]
redis = ["redis://127.0.0.1:{sp}"]
sentinel = "cell"
prefix = "sent"
timeout = "200ms"
flush_interval = "20ms"
sync_interval = "100ms"
{OUTBREAK}
"#
    );
    let e = TestEngine::start(&dir.path().join("spool"), acme.addr, globex.addr, &cfg).await;
    let mut n = 0u32;
    let mut send = async || {
        n += 1;
        let rcpt = format!("user{n}@acme.example");
        let mut c = via(&e, &format!("198.51.100.{}", n % 250 + 1)).await;
        // Each message with words of its own (letters: digits are normalised away), so it
        // brings new fingerprints, new keys.
        let words: String = (0..40)
            .map(|i| {
                let mut x = (n * 7919 + i * 104_729) as usize;
                let mut w = String::new();
                for _ in 0..7 {
                    w.push((b'a' + (x % 26) as u8) as char);
                    x /= 26;
                }
                w + " "
            })
            .collect();
        let body = campaign_copy("Reader", [0, 1, 2, 3], &rcpt).replace("Dear", &words);
        let reply = c.mail("news@letters.example", &[&rcpt], &body).await;
        assert!(reply.starts_with("250"), "message {n}: {reply}");
    };

    send().await;
    assert!(
        until(Duration::from_secs(5), || primary.dbsize() > 0).await,
        "sightings reach the primary Sentinel names (not the Sentinel itself)"
    );
    assert!(
        until(Duration::from_secs(5), || replica.dbsize()
            == primary.dbsize())
        .await,
        "the replica has caught up"
    );

    primary.kill();
    assert!(
        until(Duration::from_secs(30), || sentinel.primary_port("cell")
            == Some(replica.port))
        .await,
        "Sentinel promotes the replica"
    );
    let before = replica.dbsize();
    // Mail flows throughout; within a few batches the writes find the new primary.
    let start = Instant::now();
    loop {
        send().await;
        if replica.dbsize() > before {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "writes reach the promoted replica ({} keys, as before the failover)",
            replica.dbsize()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

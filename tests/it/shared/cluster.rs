//! `[shared] cluster = true` against a real Redis Cluster: three primaries on loopback, joined
//! by `redis-cli --cluster create`. Keys carry hash tags so every script and pipeline stays in
//! one slot: a varied campaign through two engines is seen fleet-wide and acted on, and its
//! keys are spread over the cluster's nodes (not all on one).

use std::process::{Command, Stdio};
use std::time::Duration;

use super::sentinel::Node;
use super::{OUTBREAK, campaign_copy, via};
use crate::engine::TestEngine;
use crate::mail::{Sink, until};

#[tokio::test]
async fn a_campaign_is_acted_on_through_a_real_cluster() {
    let Some(bin) = super::redis_server() else {
        return;
    };
    let cli = std::path::Path::new(&bin).with_file_name("redis-cli");
    if !cli.exists() {
        eprintln!("skipped: no redis-cli beside {bin} to create a cluster");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nodes: Vec<Node> = (0..3)
        .map(|i| {
            let conf = dir.path().join(format!("nodes-{i}.conf"));
            Node::server(
                &bin,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    conf.to_str().unwrap(),
                    "--dir",
                    dir.path().to_str().unwrap(),
                ],
            )
        })
        .collect();
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let made = Command::new(&cli)
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("redis-cli runs");
    assert!(made.success(), "redis-cli --cluster create");
    let cluster_ok = |n: &Node| {
        n.query(&["CLUSTER", "INFO"])
            .and_then(|v| redis::from_redis_value::<String>(v).ok())
            .is_some_and(|t| t.contains("cluster_state:ok"))
    };
    assert!(
        until(Duration::from_secs(20), || nodes.iter().all(cluster_ok)).await,
        "the cluster is up"
    );

    let seeds: Vec<String> = addrs.iter().map(|a| format!("\"redis://{a}\"")).collect();
    let cfg = format!(
        r#"proxy_listen = ["127.0.0.1:0"]
trusted_proxies = ["127.0.0.0/8"]
[shared]
redis = [{seeds}]
cluster = true
prefix = "clu"
timeout = "500ms"
flush_interval = "20ms"
sync_interval = "100ms"
{OUTBREAK}
"#,
        seeds = seeds.join(", ")
    );
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (acme, globex) = (Sink::start().await, Sink::start().await);
    let e1 = TestEngine::start(&d1.path().join("spool"), acme.addr, globex.addr, &cfg).await;
    let e2 = TestEngine::start(&d2.path().join("spool"), acme.addr, globex.addr, &cfg).await;
    let keys = || {
        nodes
            .iter()
            .map(|n| n.dbsize().max(0))
            .collect::<Vec<i64>>()
    };
    // Three recipients, two tenants, two networks cross the policy's thresholds; the copies
    // after that are quarantined at either engine (each told of the counts by the cluster:
    // the spreading stream lives on one node, the fingerprints' keys on all three).
    let copies: [(&TestEngine, &str, &str, [usize; 4], &str); 5] = [
        (
            &e1,
            "198.51.100.7",
            "Alice",
            [0, 1, 2, 3],
            "bob@acme.example",
        ),
        (
            &e2,
            "203.0.113.9",
            "Mr Known",
            [1, 0, 2, 3],
            "known@globex.example",
        ),
        (
            &e1,
            "198.51.100.8",
            "Carol Jones",
            [0, 1, 3, 2],
            "carol@acme.example",
        ),
        (
            &e2,
            "203.0.113.10",
            "Boss",
            [0, 2, 1, 3],
            "boss@globex.example",
        ),
        (
            &e1,
            "198.51.100.9",
            "Dave",
            [0, 1, 2, 3],
            "dave@acme.example",
        ),
    ];
    let mut states = Vec::new();
    for (i, (engine, client, name, order, rcpt)) in copies.into_iter().enumerate() {
        let mut c = via(engine, client).await;
        let msg = campaign_copy(name, order, rcpt);
        let reply = c.mail("admin@notices.example", &[rcpt], &msg).await;
        assert!(reply.starts_with("250"), "copy {i}: {reply}");
        let id = reply.trim().rsplit(' ').next().unwrap().to_owned();
        let l = engine
            .store
            .list()
            .into_iter()
            .find(|l| l.env.id.as_str() == id);
        states.push(l.map(|l| (l.state.as_str().to_owned(), l.env.verdict.clone())));
        // Each copy's sightings reach the cluster before the next copy is sent.
        let total = |k: Vec<i64>| k.iter().sum::<i64>();
        let before = total(keys());
        let _ = until(Duration::from_secs(3), || total(keys()) > before).await;
        super::all_know(&[&e1, &e2], i as u64 + 1).await;
    }
    let first_three = &states[..3];
    assert!(
        first_three
            .iter()
            .all(|s| s.as_ref().is_some_and(|(st, _)| st != "quarantined")),
        "{states:?}"
    );
    for s in &states[3..] {
        let (st, verdict) = s.as_ref().expect("listed");
        assert_eq!(st, "quarantined", "{verdict}");
        assert!(verdict.contains("outbreak"), "{verdict}");
    }
    let spread = keys();
    assert!(
        spread.iter().filter(|&&k| k > 0).count() >= 2,
        "keys spread over the cluster's nodes by hash tag: {spread:?}"
    );
}

//! Top-level keys set away from their defaults, each with what an operator sees change:
//! `include` brings another file's silos and tenants in; `geo.reload_interval` is how soon a
//! replaced geo database is put in force. (Role sections have their key tests beside their
//! harnesses: `dns/keys.rs`, `edge/keys.rs`, `engine/keys.rs`, `scan/keys.rs`,
//! `webmail/keys.rs`.)

use std::sync::Arc;
use std::time::Duration;

use maildistiller::config::RoleSet;
use maildistiller::ops::Ops;

use crate::support::*;

/// `include = ["fleet.toml"]`: the fleet file's silos and tenants are this node's, and this
/// file's own `[[tenant]]` entries are added to them.
#[test]
fn include_merges_the_shared_fleet_file() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "fleet.toml", &fleet_config(""));
    let main = write(
        dir.path(),
        "node.toml",
        r#"
include = ["fleet.toml"]
[node]
silo = "fra1"
[[tenant]]
id = "initech"
domains = ["initech.example"]
regions = ["de"]
delivery = ["127.0.0.1:10027"]
"#,
    );
    let snap = maildistiller::node::load(&main, RoleSet::ALL).unwrap_or_else(|e| panic!("{e}"));
    let silos: Vec<&str> = snap
        .topology
        .silos
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(silos, ["lon1", "fra1"]);
    assert_eq!(snap.local_silo_name(), "fra1");
    for (domain, tenant) in [
        ("acme.example", "acme"),
        ("globex.example", "globex"),
        ("initech.example", "initech"),
    ] {
        assert_eq!(
            snap.topology
                .tenant_for_domain(domain)
                .map(|t| t.id.0.as_str()),
            Some(tenant),
            "{domain}"
        );
    }
}

/// `geo.reload_interval = "1s"`: a geo database replaced on disk (by rename, as updaters do)
/// is in force within seconds, counted in `maildistiller_geo_reload_total{result="ok"}`. The
/// default, a minute, would not have looked yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn geo_reload_interval_is_how_soon_a_replaced_database_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("geo.mmdb");
    std::fs::copy(geo_db(), &db).unwrap();
    let text = fleet_config("").replace(
        &format!("[geo]\ndatabase = \"{}\"\n", geo_db()),
        &format!(
            "[geo]\ndatabase = \"{}\"\nreload_interval = \"1s\"\n",
            db.display()
        ),
    );
    assert!(text.contains("reload_interval"), "the template changed");
    let cfg = write(dir.path(), "md.toml", &text);
    let ops = Ops::new(maildistiller::node::load(&cfg, RoleSet::ALL).unwrap());
    tokio::spawn(maildistiller::ops::watch_geo(ops.clone()));
    let reloads = |ops: &Arc<Ops>| {
        ops.metrics
            .render()
            .lines()
            .find(|l| l.starts_with("maildistiller_geo_reload_total{") && l.contains("\"ok\""))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert_eq!(reloads(&ops), 0);
    let next = dir.path().join("geo.mmdb.new");
    std::fs::copy(geo_db(), &next).unwrap();
    std::fs::rename(&next, &db).unwrap();
    let ops2 = ops.clone();
    assert!(
        crate::mail::until(Duration::from_secs(10), move || reloads(&ops2) == 1).await,
        "the replaced database was not picked up"
    );
    ops.shutdown.cancel();
}

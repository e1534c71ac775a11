//! The operator's commands, run as the real binary.

use crate::support::*;

#[test]
fn check_prints_a_summary_of_each_shipped_config() {
    for (file, role, want) in [
        (
            "config/maildistiller.toml",
            "all",
            "engine  smtp+PROXY 127.0.0.1:2601 127.0.0.1:2602 127.0.0.1:2603 127.0.0.1:2604 \
             (from 127.0.0.0/8), smtp 127.0.0.1:2526",
        ),
        (
            "config/edge.example.toml",
            "edge",
            "edge    smtp 0.0.0.0:25",
        ),
        (
            "config/engine.example.toml",
            "engine",
            "spool /var/lib/maildistiller/spool",
        ),
        ("config/dns.example.toml", "dns", "zone in.example.net"),
    ] {
        let path = repo().join(file);
        let o = run(&["check", "--config", path.to_str().unwrap(), "--role", role]);
        let out = stdout(&o);
        assert!(o.status.success(), "{file}: {}", stderr(&o));
        assert!(out.contains("): OK"), "{out}");
        assert!(out.contains(want), "{file} summary lacks {want:?}:\n{out}");
    }
}

#[test]
fn check_exits_64_with_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "bad.toml",
        &fleet_config(
            "[[tenant]]\nid = \"x\"\ndomains = [\"acme.example\"]\ndelivery = [\"h\"]\nregions = [\"mars\"]\n",
        ),
    );
    let o = run(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(64));
    let err = stderr(&o);
    assert!(err.contains("has 2 errors"), "{err}");
    assert!(err.contains("tenant[x].domains[0]"), "{err}");
    assert!(
        err.contains(r#"tenant[x].regions[0]: unknown region "mars""#),
        "{err}"
    );
    let o = run(&["check", "--config", "/nonexistent.toml"]);
    assert_eq!(o.status.code(), Some(64));
    assert!(stderr(&o).contains("cannot read"));
}

fn default_config() -> String {
    repo()
        .join("config/maildistiller.toml")
        .display()
        .to_string()
}

#[test]
fn a_gb_sender_and_a_uk_tenant_land_on_the_nearest_uk_cluster_then_the_next() {
    let cfg = default_config();
    let o = run(&[
        "route",
        "--config",
        &cfg,
        "--rcpt",
        "bob@ACME.example",
        "--client",
        "81.2.69.160",
    ]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("GB United Kingdom"), "{out}");
    let first = out
        .lines()
        .find(|l| l.trim_start().starts_with("1. "))
        .unwrap();
    assert!(first.contains("lon1/uk-a"), "{out}");
    assert!(
        out.contains("127.0.0.1:2601 weight 1 max 200 proxy v2  <- would pick"),
        "{out}"
    );

    let o = run(&[
        "route",
        "--config",
        &cfg,
        "--rcpt",
        "bob@acme.example",
        "--client",
        "81.2.69.160",
        "--down",
        "lon1/uk-a",
    ]);
    let out = stdout(&o);
    let first = out
        .lines()
        .find(|l| l.trim_start().starts_with("1. "))
        .unwrap();
    assert!(first.contains("fra1/uk-b"), "{out}");
    assert!(
        out.contains("lon1/de-a: outside the tenant's regions (region-only)"),
        "{out}"
    );

    // Every UK cluster down: no route, and never a German cluster for a region-only tenant.
    let o = run(&[
        "route",
        "--config",
        &cfg,
        "--rcpt",
        "bob@acme.example",
        "--client",
        "81.2.69.160",
        "--down",
        "lon1/uk-a",
        "--down",
        "fra1/uk-b",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(out.contains("451 4.4.0"), "{out}");
    assert!(
        !out.lines().any(|l| l.contains("de-") && l.contains(" up;")),
        "{out}"
    );

    // A tenant with failover = any does go to the other region.
    let o = run(&[
        "route",
        "--config",
        &cfg,
        "--rcpt",
        "x@globex.example",
        "--client",
        "127.0.0.3",
        "--down",
        "lon1/de-a",
        "--down",
        "fra1/de-b",
    ]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("DE Germany"), "{out}");
    let first = out
        .lines()
        .find(|l| l.trim_start().starts_with("1. "))
        .unwrap();
    assert!(
        first.contains("lon1/uk-a") && first.contains("allowed region #2"),
        "{out}"
    );
}

#[test]
fn route_refuses_unknown_domains_like_the_edge_would() {
    let o = run(&[
        "route",
        "--config",
        &default_config(),
        "--rcpt",
        "x@elsewhere.example",
        "--client",
        "192.0.2.1",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("550 5.7.1"));
}

#[test]
fn geo_explains_country_point_and_nearest_silos() {
    let cfg = default_config();
    let o = run(&["geo", "--config", &cfg, "81.2.69.160"]);
    let out = stdout(&o);
    assert!(
        out.contains("GB United Kingdom (EU) — from geo database"),
        "{out}"
    );
    let first = out
        .lines()
        .find(|l| l.trim_start().starts_with("1. "))
        .unwrap();
    assert!(first.contains("lon1"), "{out}");
    // Overrides win: 127.0.0.3 is configured as Germany.
    let out = stdout(&run(&["geo", "--config", &cfg, "127.0.0.3"]));
    assert!(
        out.contains("DE Germany") && out.contains("config override 127.0.0.3/32"),
        "{out}"
    );
    assert!(
        out.lines()
            .find(|l| l.trim_start().starts_with("1. "))
            .unwrap()
            .contains("fra1"),
        "{out}"
    );
    // Loopback without an override is the local silo, not an error.
    let out = stdout(&run(&["geo", "--config", &cfg, "127.0.0.1"]));
    assert!(out.contains("the local silo lon1"), "{out}");
    // IPv6 from the database.
    let out = stdout(&run(&["geo", "--config", &cfg, "2a00:1450:4009::1"]));
    assert!(out.contains("from geo database"), "{out}");
}

#[test]
fn usage_errors_say_so() {
    let o = run(&["--role", "nonsense"]);
    assert_eq!(o.status.code(), Some(64));
    let o = run(&["--config", &default_config()]);
    assert_eq!(o.status.code(), Some(64), "no role and no command");
    assert!(stderr(&o).contains("--role"));
    let o = run(&["--help"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("SIGHUP reloads"));
}

#[test]
fn egress_lists_ranges_and_the_spf_record_from_the_same_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fleet_config("").replace(
        "hostname = \"fra1.in.example.net\"",
        "hostname = \"fra1.in.example.net\"\negress = [\"192.0.2.32/28\", \"2001:db8:f::/64\"]",
    );
    let path = write(dir.path(), "egress.toml", &cfg);
    let o = run(&["egress", "--config", path.to_str().unwrap()]);
    let out = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        out.contains("fra1       192.0.2.32/28 2001:db8:f::/64"),
        "{out}"
    );
    assert!(
        out.contains("v=spf1 ip4:192.0.2.32/28 ip6:2001:db8:f::/64 -all"),
        "{out}"
    );
    // An engine may not deliver from outside its silo's egress.
    let bad = cfg.replace("[[tenant]]\nid = \"acme\"", "[node]\nsilo = \"fra1\"\n[engine.delivery]\nsource_addresses = [\"203.0.113.9\"]\n\n[[tenant]]\nid = \"acme\"");
    let path = write(dir.path(), "bad.toml", &bad);
    let o = run(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(64));
    assert!(stderr(&o).contains("engine.delivery.source_addresses[0]: 203.0.113.9 is outside silo \"fra1\"'s egress ranges"), "{}", stderr(&o));
}

#[test]
fn route_shows_multi_office_placement() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fleet_config(
        "[[tenant]]\nid = \"multi\"\ndomains = [\"multi.example\"]\nregions = [\"de\", \"uk\"]\nplacement = \"nearest-to-sender\"\ndelivery = [\"127.0.0.1:10027\"]\n",
    );
    let path = write(dir.path(), "multi.toml", &cfg);
    // A GB sender: the UK cluster in London, although "de" is listed first.
    let o = run(&[
        "route",
        "--config",
        path.to_str().unwrap(),
        "--rcpt",
        "x@multi.example",
        "--client",
        "127.0.0.2",
    ]);
    let out = stdout(&o);
    assert!(out.contains("placement nearest-to-sender"), "{out}");
    let first = out
        .lines()
        .find(|l| l.trim_start().starts_with("1. "))
        .unwrap();
    assert!(first.contains("lon1/uk-a"), "{out}");
}

/// Exit codes follow the cause: a policy the scanner cannot compile is a config error (64, with
/// its path), found before anything is bound — not a listener that "cannot bind" (71); a queue
/// command whose engine does not answer is "unavailable" (69); an unknown queue state is 64.
#[test]
fn exit_codes_follow_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let path = write(
        dir.path(),
        "bad-policy.toml",
        &fleet_config(&format!(
            "[engine]\nlisten = [\"127.0.0.1:0\"]\nspool_dir = \"{}\"\n[ops]\nlisten = \"127.0.0.1:0\"\n\
             [[policy.default.rule]]\nname = \"broken\"\ntarget = \"body\"\npattern = \"(unclosed\"\n\
             [policy.strict]\nshadow_of = \"nonexistent\"\n",
            spool.display()
        )),
    );
    for args in [
        vec!["check", "--config", path.to_str().unwrap()],
        vec!["--role", "engine", "--config", path.to_str().unwrap()],
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(64), "{args:?}: {}", stderr(&o));
        for want in [
            "policy.default.rule[0].pattern",
            "policy.strict.shadow_of: unknown policy",
        ] {
            assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
        }
        assert!(
            !spool.exists(),
            "nothing was set up before the config was judged"
        );
    }
    // Nobody listens on this port: the queue command cannot reach an engine.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let o = run(&[
        "queue",
        "--config",
        "/nonexistent.toml",
        "--ops",
        &port.to_string(),
        "list",
    ]);
    assert_eq!(o.status.code(), Some(69), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot reach the ops listener"));
    // A state that does not exist is a usage error naming the ones that do (`hold` is the
    // command; the state it leaves a message in is `suspended`), not an empty list.
    let o = run(&[
        "queue",
        "--ops",
        &port.to_string(),
        "list",
        "--state",
        "hold",
    ]);
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("held, suspended, quarantined"),
        "{}",
        stderr(&o)
    );
}

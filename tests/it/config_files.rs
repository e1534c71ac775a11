//! Shipped configs validate; broken configs report every error with its path and never panic.

use maildistiller::config::RoleSet;

use crate::support::*;

#[test]
fn every_shipped_config_validates() {
    let mut n = 0;
    for entry in std::fs::read_dir(repo().join("config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let snap = maildistiller::node::load(&path, RoleSet::ALL)
            .unwrap_or_else(|e| panic!("{} does not validate:\n{e}", path.display()));
        assert!(!snap.topology.silos.is_empty(), "{}", path.display());
        n += 1;
    }
    assert!(
        n >= 5,
        "expected the default, fleet and three role examples, found {n}"
    );
}

#[test]
fn tenant_files_and_includes_are_read() {
    let snap = maildistiller::node::load(&repo().join("config/engine.example.toml"), RoleSet::ALL)
        .unwrap();
    assert_eq!(
        snap.topology.silos.len(),
        3,
        "silos come from the included fleet file"
    );
    assert!(
        snap.topology
            .tenant_for_domain("acme-group.example")
            .is_some(),
        "tenants come from tenants.d"
    );
    assert_eq!(snap.local_silo_name(), "lon1");
}

fn errors_of(text: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "bad.toml", text);
    match maildistiller::node::load(&path, RoleSet::ALL) {
        Ok(_) => panic!("config should not validate:\n{text}"),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

fn assert_has(errors: &[String], want: &str) {
    assert!(
        errors.iter().any(|e| e.contains(want)),
        "no error containing {want:?} in:\n{}",
        errors.join("\n")
    );
}

#[test]
fn broken_config_reports_every_error_with_its_path() {
    let extra = r#"
[[tenant]]
id = "dup"
domains = ["ACME.example"]
regions = ["uk", "xx"]
delivery = ["mx.dup.example:0"]
colour = "blue"

[[tenant]]
id = "nodelivery"
domains = ["nodelivery.example"]

[[tenant]]
id = "typo"
domains = ["typo.example"]
delivery = ["mx.typo.example"]
failover = "sometimes"

[[tenant]]
id = "dup2"
domains = ["dup2.example"]
regions = ["uk", "xx"]
delivery = ["mx.dup2.example:0"]

[edge]
max_connections = 0
command_timeout = "5 minutes"

[engine]
max_message_size = "tiny"
require_proxy = true

[bogus]
x = 1
"#;
    let errors = errors_of(&fleet_config(extra));
    // Unknown key, wrong value, missing field: each names the tenant and the key.
    assert_has(&errors, "tenant[dup].colour: unknown field `colour`");
    assert_has(&errors, "tenant[nodelivery]: missing field `delivery`");
    assert_has(
        &errors,
        "tenant[typo].failover: unknown variant `sometimes`",
    );
    // Semantic errors of the tenants that did parse are reported in the same run.
    assert_has(&errors, r#"tenant[dup2].regions[1]: unknown region "xx""#);
    assert_has(&errors, "tenant[dup2].delivery[0]");
    assert_has(
        &errors,
        r#"edge.command_timeout: invalid duration "5 minutes": unknown unit"#,
    );
    assert_has(&errors, "engine.max_message_size: invalid size");
    // A key that was removed says what to write instead.
    assert_has(
        &errors,
        "engine.require_proxy: removed: PROXY is a property of the listener",
    );
    assert_has(&errors, "bogus: unknown section");
    assert!(errors.len() >= 8, "{errors:#?}");
}

#[test]
fn duplicates_unreachable_tenants_and_nonsense_limits() {
    let extra = r#"
[regions.us]

[[tenant]]
id = "copycat"
domains = ["Acme.Example."]
delivery = ["mx.copycat.example"]

[[tenant]]
id = "lonely"
domains = ["lonely.example"]
regions = ["us"]
delivery = ["mx.lonely.example"]

[[silo]]
name = "lon1"
hostname = "not a hostname"
lat = 95.0
lon = 0.0
  [[silo.cluster]]
  name = "x"
  region = "uk"
    [[silo.cluster.engine]]
    address = "127.0.0.1:2601"
    weight = 0

[edge]
max_connections = 10
max_connections_per_ip = 50

[ops]
listen = "127.0.0.1:2525"

[dns]
[[dns.record]]
name = "spf"
type = "TXT"
value = "v=spf1 ip4:10.0.0.0/8 -all"
"#;
    let errors = errors_of(&fleet_config(extra));
    assert_has(
        &errors,
        r#"tenant[copycat].domains[0]: domain "acme.example" already belongs to tenant "acme""#,
    );
    assert_has(
        &errors,
        "tenant[lonely]: unreachable: no cluster serves any of its regions",
    );
    assert_has(&errors, "silo[lon1]: duplicate silo name");
    assert_has(&errors, "silo[lon1].hostname");
    assert_has(&errors, "lat must be within");
    assert_has(
        &errors,
        "silo[lon1].cluster[x].engine[0].address: 127.0.0.1:2601 is already used by silo[lon1].cluster[uk-a].engine[0]",
    );
    assert_has(&errors, "engine[0].weight: 0 is out of range");
    assert_has(&errors, "edge.max_connections_per_ip: 50 is out of range");
    assert_has(
        &errors,
        "edge.listen[0]: 127.0.0.1:2525 is also the listener of ops.listen",
    );
    // A hand-written SPF record could drift from the egress engines really use.
    assert_has(
        &errors,
        "dns.record[0]: spf.in.example.net TXT is generated from the silos' egress",
    );
}

#[test]
fn geo_database_missing_or_not_an_mmdb() {
    let dir = tempfile::tempdir().unwrap();
    let missing = fleet_config("").replace(&geo_db(), "/nonexistent/geo.mmdb");
    let errors = errors_of(&missing);
    assert_has(
        &errors,
        "geo.database: cannot read geo database /nonexistent/geo.mmdb",
    );
    let junk = write(dir.path(), "junk.mmdb", "this is not a MaxMind database\n");
    let errors = errors_of(&fleet_config("").replace(&geo_db(), &junk.display().to_string()));
    assert_has(&errors, "geo.database: cannot open geo database");
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    for text in [
        "",
        "[[[",
        "silo = 3",
        "[[silo]]\nname = 1",
        "tenant = \"x\"",
        "\u{0}\u{1}binary",
        "[geo]\noverride = 5",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "g.toml", text);
        assert!(
            maildistiller::node::load(&path, RoleSet::ALL).is_err(),
            "{text:?} should not validate"
        );
    }
}

/// Cluster redundancy is refused with the fix when it cannot work: the replication channel on a
/// public or wildcard address, no secret or a short one, an engine the fleet does not know, a
/// cluster with nobody to copy to.
#[test]
fn shadow_redundancy_that_cannot_work_is_refused() {
    let errors = errors_of(&fleet_config(
        r#"
[engine]
redundancy = "shadow"
takeover_after = "10ms"
[engine.shadow]
listen = ["0.0.0.0:2627", "81.2.69.160:2627"]
secret = "short"
"#,
    ));
    assert_has(
        &errors,
        "engine.shadow.listen[0]: 0.0.0.0:2627: the replication channel is never open to the internet",
    );
    assert_has(&errors, "engine.shadow.listen[1]: 81.2.69.160:2627");
    assert_has(&errors, "engine.shadow.secret: at least 32 characters");
    assert_has(&errors, "engine.takeover_after: 10ms is out of range");
    assert_has(
        &errors,
        "engine.shadow.listen: no [[silo.cluster.engine]] has one of these addresses",
    );
    let errors = errors_of(
        &fleet_config(
            r#"
[engine]
redundancy = "shadow"
[engine.shadow]
listen = ["127.0.0.1:2627"]
"#,
        )
        .replace(
            "address = \"127.0.0.1:2601\"",
            "address = \"127.0.0.1:2601\"\n    shadow = \"127.0.0.1:2627\"",
        ),
    );
    assert_has(
        &errors,
        "engine.shadow.secret: required with engine.redundancy = \"shadow\"",
    );
    assert_has(
        &errors,
        "engine.redundancy: cluster \"uk-a\" has no other engine with a `shadow` address",
    );
}

/// Inbound STARTTLS is on in every shipped config that runs an SMTP listener: production
/// examples name certificate files, the loopback default makes a self-signed one (relative
/// to the file, beside its spool).
#[test]
fn every_shipped_smtp_config_offers_starttls() {
    for (file, self_signed) in [
        ("config/edge.example.toml", false),
        ("config/engine.example.toml", false),
        ("config/maildistiller.toml", true),
    ] {
        let snap = maildistiller::node::load(&repo().join(file), RoleSet::ALL).unwrap();
        let (edge, engine) = (&snap.config.edge, &snap.config.engine);
        let (cert, key, made) = if file.contains("engine.") {
            (&engine.tls_cert, &engine.tls_key, engine.tls_self_signed)
        } else {
            (&edge.tls_cert, &edge.tls_key, edge.tls_self_signed)
        };
        assert!(cert.is_some() && key.is_some(), "{file}: no certificate");
        assert_eq!(made, self_signed, "{file}");
        if self_signed {
            assert!(cert.as_ref().unwrap().is_absolute(), "{file}: resolved");
            assert_eq!(engine.tls_cert, edge.tls_cert, "{file}: one pair for both");
        }
    }
}

#[test]
fn delivery_tls_settings_are_checked() {
    let e = errors_of(&fleet_config(
        r#"
[[tenant]]
id = "pinned"
domains = ["pinned.example"]
delivery = ["127.0.0.1:25"]
tls = "never"
tls_pin = ["AAAA"]
tls_ca = "no-such-ca.pem"
"#,
    ));
    assert_has(&e, "tenant[pinned].tls_pin: pins need TLS");
    assert_has(&e, "tenant[pinned].tls_pin[0]: \"AAAA\" is 3 bytes");
    assert_has(&e, "tenant[pinned].tls_ca: ");
    assert_has(&e, "no-such-ca.pem");
    let e = errors_of(&fleet_config("[edge]\ntls_self_signed = true\n"));
    assert_has(&e, "edge.tls_self_signed: needs tls_cert and tls_key");
}

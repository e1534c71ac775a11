//! The real binary as an operator runs it: ops endpoints, reload by SIGHUP and by API (a broken
//! file keeps the old config serving), SIGTERM drains and exits 0.

use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::support::*;

struct Running {
    child: Child,
    ops: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config_text(ops_port: u16, ttl: &str) -> String {
    fleet_config(&format!(
        r#"
[ops]
listen = "127.0.0.1:{ops_port}"
grace_period = "2s"
[edge]
listen = ["127.0.0.1:0"]
[engine]
listen = ["127.0.0.1:0"]
[dns]
listen = ["127.0.0.1:0"]
ttl = "{ttl}"
"#
    ))
}

fn start(dir: &std::path::Path) -> Running {
    let port = free_port();
    let cfg = write(dir, "md.toml", &config_text(port, "60s"));
    let child = bin()
        .args([
            "--role",
            "all",
            "--config",
            cfg.to_str().unwrap(),
            "--log-format",
            "json",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn maildistiller");
    let ops = SocketAddr::from(([127, 0, 0, 1], port));
    let r = Running { child, ops };
    eventually(Duration::from_secs(20), || {
        http(r.ops, "GET", "/readyz").filter(|(s, _)| *s == 200)
    })
    .expect("the process becomes ready");
    r
}

fn metric(ops: SocketAddr, line_start: &str) -> Option<f64> {
    let (_, body) = http(ops, "GET", "/metrics")?;
    body.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn version(ops: SocketAddr) -> String {
    let (_, body) = http(ops, "GET", "/readyz").unwrap();
    body.split("\"config_version\":\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned()
}

fn signal(child: &Child, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[test]
fn ops_endpoints_answer() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(dir.path());
    assert_eq!(http(r.ops, "GET", "/healthz").unwrap().0, 200);
    let (code, body) = http(r.ops, "GET", "/readyz").unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("\"ready\":true"), "{body}");
    let (_, metrics) = http(r.ops, "GET", "/metrics").unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with(r#"maildistiller_config_reload_total{result="ok""#))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(
        line.contains(r#"role="all""#) && line.contains(r#"silo="lon1""#) && line.ends_with(" 0"),
        "{line}"
    );
    assert!(metrics.contains("maildistiller_config_info{"), "{metrics}");
    let (code, status) = http(r.ops, "GET", "/status").unwrap();
    assert_eq!(code, 200);
    assert!(
        status.contains(&version(r.ops)) && status.contains("uk-b"),
        "{status}"
    );
    assert_eq!(http(r.ops, "GET", "/nope").unwrap().0, 404);
}

#[test]
fn sighup_with_a_broken_file_keeps_serving_the_old_config() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(dir.path());
    let cfg = dir.path().join("md.toml");
    let before = version(r.ops);
    let good = std::fs::read_to_string(&cfg).unwrap();

    std::fs::write(
        &cfg,
        good.replace("regions = [\"uk\"]", "regions = [\"mars\"]"),
    )
    .unwrap();
    signal(&r.child, "-HUP");
    let errors = eventually(Duration::from_secs(10), || {
        metric(r.ops, "maildistiller_config_reload_total{result=\"error\"").filter(|v| *v >= 1.0)
    });
    assert_eq!(errors, Some(1.0), "the broken reload is counted");
    assert_eq!(version(r.ops), before, "old config still in force");
    assert_eq!(http(r.ops, "GET", "/readyz").unwrap().0, 200, "still ready");

    // The API says why.
    let (code, body) = http(r.ops, "POST", "/-/reload").unwrap();
    assert_eq!(code, 400);
    assert!(
        body.contains(r#"tenant[acme].regions[0]: unknown region "mars""#),
        "{body}"
    );

    // A good change is taken by SIGHUP.
    std::fs::write(&cfg, good.replace("ttl = \"60s\"", "ttl = \"30s\"")).unwrap();
    signal(&r.child, "-HUP");
    let ok = eventually(Duration::from_secs(10), || {
        metric(r.ops, "maildistiller_config_reload_total{result=\"ok\"").filter(|v| *v >= 1.0)
    });
    assert_eq!(ok, Some(1.0));
    assert_ne!(version(r.ops), before, "new config in force");
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = start(dir.path());
    signal(&r.child, "-TERM");
    let status = eventually(Duration::from_secs(10), || {
        r.child.try_wait().ok().flatten()
    });
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}

#[test]
fn the_edge_takes_its_socket_from_systemd_socket_activation() {
    // systemd-socket-activate (package systemd; .ci/run installs it) plays systemd: it listens,
    // and on the first connection starts the edge with the socket as fd 3 and LISTEN_PID set.
    let tool = "/usr/bin/systemd-socket-activate";
    assert!(
        std::path::Path::new(tool).exists(),
        "{tool} missing: install the systemd package"
    );
    let dir = tempfile::tempdir().unwrap();
    let (port, ops_port) = (free_port(), free_port());
    // edge.listen names an address this machine does not have: binding it would fail, so a
    // banner proves the inherited socket was used instead.
    let cfg = write(
        dir.path(),
        "edge.toml",
        &fleet_config(&format!(
            "[ops]\nlisten = \"127.0.0.1:{ops_port}\"\n[edge]\nlisten = [\"192.0.2.1:25\"]\nhostname = \"activated.test\"\n"
        )),
    );
    let child = std::process::Command::new(tool)
        .args([
            "-l",
            &format!("127.0.0.1:{port}"),
            env!("CARGO_BIN_EXE_maildistiller"),
            "--role",
            "edge",
            "--config",
            cfg.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn systemd-socket-activate");
    let mut r = Running {
        child,
        ops: SocketAddr::from(([127, 0, 0, 1], ops_port)),
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let stream = eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(addr).ok()
    })
    .expect("the activator listens");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut banner = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&stream), &mut banner).unwrap();
    assert!(banner.starts_with("220 activated.test"), "{banner:?}");
    let _ = r.child.kill();
}

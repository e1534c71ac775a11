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
token_file = "ops.token"
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
    start_with(dir, &[])
}

fn start_with(dir: &std::path::Path, env: &[(&str, &str)]) -> Running {
    let port = free_port();
    let cfg = write(dir, "md.toml", &config_text(port, "60s"));
    let child = bin()
        .envs(env.iter().copied())
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

    // The API says why — to the operator. The process made its token file at start (mode
    // 0600); without it the API answers 401, with another token 403, and counts both.
    let token_file = dir.path().join("ops.token");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the token file is the operator's alone"
    );
    let token = std::fs::read_to_string(&token_file).unwrap();
    let token = token.trim();
    assert_eq!(http(r.ops, "POST", "/-/reload").unwrap().0, 401);
    assert_eq!(
        http_with(r.ops, "POST", "/-/reload", Some("not-the-token"))
            .unwrap()
            .0,
        403
    );
    assert_eq!(
        metric(
            r.ops,
            "maildistiller_ops_api_requests_total{result=\"missing\""
        )
        .unwrap_or(0.0)
            + metric(
                r.ops,
                "maildistiller_ops_api_requests_total{result=\"wrong\""
            )
            .unwrap_or(0.0),
        2.0
    );
    let (code, body) = http_with(r.ops, "POST", "/-/reload", Some(token)).unwrap();
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

/// Everything on the ops listener that changes state or shows mail answers only the operator
/// (`ops.token_file`); what Prometheus, load balancers and a browser need stays open.
#[test]
fn the_operator_api_needs_the_operator_credential() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(dir.path());
    let token = std::fs::read_to_string(dir.path().join("ops.token")).unwrap();
    let token = token.trim().to_owned();
    for path in ["/metrics", "/healthz", "/readyz", "/status"] {
        assert_eq!(http(r.ops, "GET", path).unwrap().0, 200, "{path} is open");
    }
    let engine = "127.0.0.1:2601"; // an engine of the fleet config (not running: 404 is fine)
    let operator_api = [
        ("POST", "/-/reload".to_owned()),
        ("POST", "/-/dns/drain?silo=fra1".to_owned()),
        ("POST", "/-/dns/undrain?silo=fra1".to_owned()),
        ("GET", "/queue".to_owned()),
        ("GET", "/queue/0123456789abcdef".to_owned()),
        ("POST", "/queue/flush".to_owned()),
        ("POST", "/queue/0123456789abcdef/flush".to_owned()),
        ("POST", "/queue/0123456789abcdef/suspend".to_owned()),
        ("POST", "/queue/0123456789abcdef/release".to_owned()),
        ("POST", "/queue/0123456789abcdef/delete".to_owned()),
        ("GET", "/edge/engines".to_owned()),
        ("POST", format!("/edge/engines/{engine}/drain")),
        ("POST", format!("/edge/engines/{engine}/undrain")),
    ];
    for (method, path) in &operator_api {
        let (code, body) = http(r.ops, method, path).unwrap();
        assert_eq!(code, 401, "{method} {path} without a credential: {body}");
        let (code, _) = http_with(r.ops, method, path, Some("wrong")).unwrap();
        assert_eq!(code, 403, "{method} {path} with a wrong token");
        let (code, body) = http_with(r.ops, method, path, Some(&token)).unwrap();
        assert!(
            code != 401 && code != 403,
            "{method} {path} as the operator: {code} {body}"
        );
    }
    // `maildistiller queue` reads the same file from the config.
    let cfg = dir.path().join("md.toml");
    let o = run(&["queue", "--config", cfg.to_str().unwrap(), "list"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Under systemd (`Type=notify`): READY=1 only once every listener is bound, RELOADING=1 then
/// READY=1 around a reload (taken or refused), WATCHDOG=1 while the runtime runs, STOPPING=1 when
/// the drain starts.
#[test]
fn systemd_hears_ready_reloading_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let recv = |want: &str| -> String {
        let mut buf = [0u8; 4096];
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            let n = sock.recv(&mut buf).expect("a notification");
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if msg.lines().any(|l| l == want) {
                return msg;
            }
        }
        panic!("no {want} within 10 s");
    };
    let r = start_with(
        dir.path(),
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    let ready = recv("READY=1");
    assert!(ready.contains("STATUS=serving config"), "{ready}");
    // `start` waited for /readyz: READY=1 was sent by then, so it came after the binds.
    recv("WATCHDOG=1");
    recv("WATCHDOG=1");
    signal(&r.child, "-HUP");
    let reloading = recv("RELOADING=1");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    recv("READY=1");
    signal(&r.child, "-TERM");
    recv("STOPPING=1");
}

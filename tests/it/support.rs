//! Helpers shared by the integration tests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The repository root (where `config/` and `geo/` are).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The built `maildistiller` binary.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_maildistiller"))
}

pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("binary runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Absolute path of the shipped geo database, for configs written to temp dirs.
pub fn geo_db() -> String {
    repo()
        .join("geo/geo-whois-asn-country.mmdb")
        .display()
        .to_string()
}

/// A small valid fleet (two silos, two regions, two tenants) with the given extra TOML appended.
pub fn fleet_config(extra: &str) -> String {
    format!(
        r#"
[geo]
database = "{db}"
[[geo.override]]
cidr = "127.0.0.2/32"
country = "GB"

[regions.uk]
[regions.de]

[[silo]]
name = "lon1"
hostname = "lon1.in.example.net"
lat = 51.5
lon = -0.12
  [[silo.cluster]]
  name = "uk-a"
  region = "uk"
    [[silo.cluster.engine]]
    address = "127.0.0.1:2601"
[[silo]]
name = "fra1"
hostname = "fra1.in.example.net"
lat = 50.11
lon = 8.68
  [[silo.cluster]]
  name = "de-b"
  region = "de"
    [[silo.cluster.engine]]
    address = "127.0.0.1:2603"
  [[silo.cluster]]
  name = "uk-b"
  region = "uk"
    [[silo.cluster.engine]]
    address = "127.0.0.1:2604"

[[tenant]]
id = "acme"
domains = ["acme.example"]
regions = ["uk"]
delivery = ["127.0.0.1:10025"]

[[tenant]]
id = "globex"
domains = ["globex.example"]
regions = ["de"]
failover = "any"
delivery = ["127.0.0.1:10026"]
{extra}
"#,
        db = geo_db()
    )
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write temp file");
    p
}

/// A port the kernel just handed out and released (for child processes whose config needs one).
/// An address on 127.0.0.1 where nothing listens for the rest of the test run: a bound socket
/// that never listens (connections are refused), kept open on purpose. A port merely found
/// free could be taken by another test's server meanwhile, which would then take the mail a
/// test meant for a server that is down. For servers that stay down: a test that brings the
/// server back later cannot bind it.
pub fn refused_addr() -> std::net::SocketAddr {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("a socket");
    s.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind 127.0.0.1:0");
    let addr = s
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("an address");
    std::mem::forget(s);
    addr
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// The operator token of every test config that sets `ops.token_file` (see [`ops_token`]).
pub const OPS_TOKEN: &str = "test-operator-token-5f2b9c";

/// Writes the operator token file into `dir`; returns the `[ops]` line that names it.
pub fn ops_token(dir: &Path) -> String {
    let p = write(dir, "ops.token", &format!("{OPS_TOKEN}\n"));
    format!("token_file = \"{}\"", p.display())
}

/// A minimal HTTP/1.1 request; returns (status, body). `None` when nothing listens yet.
pub fn http(addr: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    http_with(addr, method, path, None)
}

/// [`http`] as the operator: with `Authorization: Bearer` [`OPS_TOKEN`].
pub fn http_operator(addr: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    http_with(addr, method, path, Some(OPS_TOKEN))
}

/// [`http`] with a bearer token (or none).
pub fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}Connection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// Polls `f` until it returns `Some`, for at most `limit`.
pub fn eventually<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

//! The webmail tests' helper language: an engine with webmail on 127.0.0.1:0 (a test
//! certificate, fast delivery timers, a policy that quarantines subjects containing
//! `QUARANTINE`), users with cheap argon2 hashes, and a small HTTPS browser that keeps cookies:
//! `b.get("/inbox").await`, `b.post("/login", &[("address", "…")]).await`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use maildistiller::config::RoleSet;
use maildistiller::engine;
use maildistiller::ops::Ops;
use maildistiller::store::{State, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::mail::{Client, until};
use crate::support::write;

pub const PASSWORD: &str = "correct horse battery";

/// A cheap argon2id hash (the tests sign in often; production hashes use the defaults).
pub fn hash(password: &str) -> String {
    use argon2::PasswordHasher;
    let a = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(256, 1, 1, None).unwrap(),
    );
    a.hash_password_with_salt(password.as_bytes(), b"webmail-test-salt")
        .unwrap()
        .to_string()
}

/// The test certificate (for `localhost`), written beside the config.
pub struct Cert {
    pub der: rustls_pki_types::CertificateDer<'static>,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

pub fn cert(dir: &Path) -> Cert {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    Cert {
        der: ck.cert.der().clone(),
        cert: write(dir, "webmail-cert.pem", &ck.cert.pem()),
        key: write(dir, "webmail-key.pem", &ck.signing_key.serialize_pem()),
    }
}

/// What an engine of the tests is configured with.
pub struct Setup<'a> {
    pub acme_delivery: SocketAddr,
    pub globex_delivery: SocketAddr,
    /// Lines added to `[engine.webmail]`.
    pub webmail: &'a str,
    /// Lines added to `[policy.default]`.
    pub policy: &'a str,
    /// `[[silo.cluster.engine]]` entries (TOML) of the one cluster; default one unrelated engine.
    pub engines: &'a str,
    /// `ops.listen` (a pre-bound address for cluster tests).
    pub ops_listen: &'a str,
}

impl Setup<'_> {
    pub fn new(acme: SocketAddr, globex: SocketAddr) -> Setup<'static> {
        Setup {
            acme_delivery: acme,
            globex_delivery: globex,
            webmail: "",
            policy: "",
            engines: "[[silo.cluster.engine]]\naddress = \"127.0.0.1:1\"\n",
            ops_listen: "127.0.0.1:0",
        }
    }
}

/// A running engine with webmail; dropped = shut down.
pub struct WebEngine {
    pub ops: Arc<Ops>,
    pub store: Store,
    pub smtp: SocketAddr,
    pub web: SocketAddr,
    pub cert: rustls_pki_types::CertificateDer<'static>,
    pub spool: std::path::PathBuf,
    pub config: std::path::PathBuf,
}

impl Drop for WebEngine {
    fn drop(&mut self) {
        self.ops.shutdown.cancel();
    }
}

pub fn config_text(dir: &Path, s: &Setup<'_>, c: &Cert) -> String {
    let h = hash(PASSWORD);
    format!(
        r#"
[ops]
listen = "{ops}"
[regions.uk]
[[silo]]
name = "lon1"
hostname = "lon1.test"
lat = 51.5
lon = -0.1
  [[silo.cluster]]
  name = "uk"
  region = "uk"
{engines}
[[tenant]]
id = "acme"
domains = ["acme.example"]
regions = ["uk"]
delivery = ["{acme}"]
  [[tenant.user]]
  address = "bob@acme.example"
  password_hash = "{h}"
  [[tenant.user]]
  address = "Amy@Acme.example"
  password_hash = "{h}"
  [[tenant.user]]
  address = "admin@acme.example"
  password_hash = "{h}"
  admin = true
[[tenant]]
id = "globex"
domains = ["globex.example"]
regions = ["uk"]
delivery = ["{globex}"]
  [[tenant.user]]
  address = "boss@globex.example"
  password_hash = "{h}"
  admin = true
[policy.default]
scanners = {{ auth = false, dnsbl = false }}
rule = [{{ name = "quarantine-me", target = "subject", pattern = "QUARANTINE", action = "quarantine" }}]
{policy}
[engine]
listen = ["127.0.0.1:0"]
spool_dir = "{spool}"
hostname = "mde.test"
[engine.delivery]
retry_base = "200ms"
retry_max = "1s"
dead_after = 2
probe_interval = "200ms"
connect_timeout = "1s"
[engine.webmail]
listen = ["127.0.0.1:0"]
tls_cert = "{cert}"
tls_key = "{key}"
{webmail}
"#,
        ops = s.ops_listen,
        engines = s.engines,
        acme = s.acme_delivery,
        globex = s.globex_delivery,
        spool = dir.join("spool").display(),
        cert = c.cert.display(),
        key = c.key.display(),
        webmail = s.webmail,
        policy = s.policy,
    )
}

impl WebEngine {
    pub async fn start(dir: &Path, s: &Setup<'_>) -> WebEngine {
        Self::start_with_ops(dir, s, None).await
    }

    /// Starts an engine; with `ops`, also serves its ops listener (the peer API) on it.
    pub async fn start_with_ops(
        dir: &Path,
        s: &Setup<'_>,
        ops_listener: Option<tokio::net::TcpListener>,
    ) -> WebEngine {
        std::fs::create_dir_all(dir).unwrap();
        let c = cert(dir);
        let cfg = write(dir, "engine.toml", &config_text(dir, s, &c));
        let roles = RoleSet {
            engine: true,
            ..RoleSet::default()
        };
        let snap =
            maildistiller::node::load(&cfg, roles).unwrap_or_else(|e| panic!("test config: {e}"));
        let ops = Ops::new(snap);
        if let Some(l) = &ops_listener {
            let _ = ops.ops_addr.set(l.local_addr().unwrap());
        }
        let bound = engine::bind(&ops).await.expect("engine binds");
        let store = bound.store.clone();
        tokio::spawn(bound.serving);
        let webmail = maildistiller::webmail::bind(&ops, &store)
            .await
            .expect("webmail binds")
            .expect("webmail is configured");
        let web = webmail.addrs[0];
        tokio::spawn(webmail.serving);
        if let Some(l) = ops_listener {
            tokio::spawn(maildistiller::ops::serve(ops.clone(), l));
        }
        ops.set_ready(true);
        WebEngine {
            ops,
            store,
            smtp: bound.addrs[0],
            web,
            cert: c.der,
            spool: dir.join("spool"),
            config: cfg,
        }
    }

    pub fn browser(&self) -> Browser {
        Browser::new(self.web, &self.cert)
    }

    /// Sends one message over SMTP; returns its queue id.
    pub async fn send(&self, from: &str, rcpts: &[&str], message: &str) -> String {
        let mut c = Client::connect(self.smtp).await;
        let r = c.mail(from, rcpts, message).await;
        assert!(r.starts_with("250"), "{r}");
        c.cmd("QUIT", "221").await;
        r.split("queued as ")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    }

    /// Waits until `n` messages are in a state the page shows (`held` or `quarantined`).
    pub async fn wait_listed(&self, n: usize) {
        let ok = until(Duration::from_secs(20), || {
            self.store
                .list()
                .iter()
                .filter(|l| l.state == State::Held || l.state == State::Quarantined)
                .count()
                == n
        })
        .await;
        assert!(
            ok,
            "{n} held or quarantined: {:?}",
            self.store
                .list()
                .iter()
                .map(|l| l.state)
                .collect::<Vec<_>>()
        );
    }
}

pub fn msg(to: &str, subject: &str) -> String {
    format!(
        "From: Alice Sender <alice@sender.example>\r\nTo: {to}\r\nSubject: {subject}\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\nHello {to}.\r\n"
    )
}

/// A port nothing listens on (a tenant's server that is down).
pub fn down_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn location(&self) -> &str {
        self.header("location").unwrap_or("")
    }
}

/// An HTTPS client with a cookie jar (one connection per request).
#[derive(Clone)]
pub struct Browser {
    pub addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    pub cookies: HashMap<String, String>,
    /// Extra request headers.
    pub extra: Vec<(String, String)>,
}

pub fn form_enc(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                o.push(b as char)
            }
            b' ' => o.push('+'),
            _ => o.push_str(&format!("%{b:02X}")),
        }
    }
    o
}

impl Browser {
    pub fn new(addr: SocketAddr, cert: &rustls_pki_types::CertificateDer<'static>) -> Browser {
        maildistiller::tls::install_provider();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.clone()).unwrap();
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Browser {
            addr,
            tls: Arc::new(tls),
            cookies: HashMap::new(),
            extra: Vec::new(),
        }
    }

    pub async fn request(&mut self, method: &str, path: &str, body: &str) -> Resp {
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut s = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        let cookie: Vec<String> = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        if !cookie.is_empty() {
            req.push_str(&format!("Cookie: {}\r\n", cookie.join("; ")));
        }
        for (k, v) in &self.extra {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if method == "POST" {
            req.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf))
            .await
            .expect("answer within 30 s");
        let r = parse(&buf);
        for (k, v) in &r.headers {
            if k.eq_ignore_ascii_case("set-cookie") {
                let (kv, attrs) = v.split_once(';').unwrap_or((v, ""));
                let (name, value) = kv.split_once('=').unwrap();
                if attrs.contains("Max-Age=0") {
                    self.cookies.remove(name);
                } else {
                    self.cookies.insert(name.to_owned(), value.to_owned());
                }
            }
        }
        r
    }

    pub async fn get(&mut self, path: &str) -> Resp {
        self.request("GET", path, "").await
    }

    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Resp {
        let body: Vec<String> = form
            .iter()
            .map(|(k, v)| format!("{}={}", form_enc(k), form_enc(v)))
            .collect();
        self.request("POST", path, &body.join("&")).await
    }

    /// Signs in through the form; returns the answer to the POST.
    pub async fn try_login(&mut self, address: &str, password: &str) -> Resp {
        let form = self.get("/login").await;
        let pre = field(&form.text(), "pre").expect("login form has its token");
        self.post(
            "/login",
            &[("pre", &pre), ("address", address), ("password", password)],
        )
        .await
    }

    pub async fn login(&mut self, address: &str) {
        let r = self.try_login(address, PASSWORD).await;
        assert_eq!((r.status, r.location()), (303, "/inbox"), "{}", r.text());
    }

    /// The inbox page's message links (`/m/TOKEN`), in order.
    pub async fn message_links(&mut self, query: &str) -> Vec<String> {
        let r = self.get(&format!("/inbox{query}")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        links(&r.text())
    }

    /// The CSRF token of the current session (from the inbox's sign-out form).
    pub async fn csrf(&mut self) -> String {
        let r = self.get("/inbox").await;
        field(&r.text(), "csrf").expect("signed in")
    }
}

/// `value` of the hidden input named `name`.
pub fn field(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\" value=\""))?;
    let rest = &html[at + name.len() + 15..];
    Some(rest[..rest.find('"')?].to_owned())
}

pub fn links(html: &str) -> Vec<String> {
    html.split("href=\"/m/")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .filter(|s| !s.contains('/') && !s.contains('?'))
        .map(|t| format!("/m/{t}"))
        .collect()
}

fn parse(buf: &[u8]) -> Resp {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete answer");
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    let mut body = buf[end + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(nl) = rest.windows(2).position(|w| w == b"\r\n") {
            let n = usize::from_str_radix(std::str::from_utf8(&rest[..nl]).unwrap().trim(), 16)
                .unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&rest[nl + 2..nl + 2 + n]);
            rest = &rest[nl + 4 + n..];
        }
        body = out;
    }
    Resp {
        status,
        headers,
        body,
    }
}

//! Test peers that speak SMTP: a client with a small command language, and a sink standing in for
//! a tenant's mail server that records what it got and can be told to refuse.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A client session: `s.cmd("RCPT TO:<a@b>", "250").await`.
pub struct Client {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl Client {
    /// Connects and reads the banner (expects 220).
    pub async fn connect(addr: SocketAddr) -> Client {
        let mut c = Client::connect_raw(addr).await;
        c.expect("220").await;
        c
    }

    pub async fn connect_raw(addr: SocketAddr) -> Client {
        Client::from_stream(TcpStream::connect(addr).await.expect("connect"))
    }

    pub fn from_stream(s: TcpStream) -> Client {
        let (r, w) = s.into_split();
        Client {
            r: BufReader::new(r),
            w,
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).await.expect("write");
    }

    /// Reads one (possibly multi-line) reply; returns its full text. Panics on timeout.
    pub async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(10), self.r.read_line(&mut line))
                .await
                .expect("reply within 10 s")
                .expect("read");
            if n == 0 {
                return if all.is_empty() { "EOF".into() } else { all };
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] == b' ' {
                return all;
            }
        }
    }

    /// Reads a reply and checks it starts with `want`.
    pub async fn expect(&mut self, want: &str) -> String {
        let r = self.reply().await;
        assert!(r.starts_with(want), "expected {want:?}, got {r:?}");
        r
    }

    pub async fn cmd(&mut self, line: &str, want: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.expect(want).await
    }

    /// EHLO, MAIL, RCPTs, DATA, message; returns the final reply.
    pub async fn mail(&mut self, from: &str, rcpts: &[&str], message: &str) -> String {
        self.cmd("EHLO client.example", "250").await;
        self.cmd(&format!("MAIL FROM:<{from}>"), "250").await;
        for r in rcpts {
            self.cmd(&format!("RCPT TO:<{r}>"), "250").await;
        }
        self.cmd("DATA", "354").await;
        self.send(message.as_bytes()).await;
        self.send(b".\r\n").await;
        self.reply().await
    }

    /// True when the server closed the connection.
    pub async fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.r.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

/// One message as the sink received it.
#[derive(Debug, Clone)]
pub struct Got {
    /// When the sink acknowledged it.
    pub at: std::time::Instant,
    pub from: String,
    pub rcpts: Vec<String>,
    pub data: String,
    /// The session had done STARTTLS.
    pub tls: bool,
}

/// What the sink answers to RCPT for an address (default 250).
#[derive(Default)]
struct Behaviour {
    rcpt: HashMap<String, String>,
    data_reply: Option<String>,
}

/// A tenant's mail server stand-in.
#[derive(Clone)]
pub struct Sink {
    pub addr: SocketAddr,
    pub got: Arc<Mutex<Vec<Got>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    /// Mail sessions open now, and the most ever open at once. A session counts from its first
    /// MAIL FROM until it ends (QUIT or close): the engine's down-destination probe (banner,
    /// QUIT, close) is no delivery connection, and the sink may see its close only after the
    /// engine, told the server is back, has already connected to deliver.
    sessions: Arc<std::sync::atomic::AtomicUsize>,
    pub max_sessions: Arc<std::sync::atomic::AtomicUsize>,
    /// Mail sessions in all, counted as `sessions` is: delivery connections that sent mail.
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    /// RSET commands received.
    pub rsets: Arc<std::sync::atomic::AtomicUsize>,
    /// MAIL commands refused because a transaction was still open (a real server's 503).
    pub nested_mail: Arc<std::sync::atomic::AtomicUsize>,
    /// STARTTLS with this certificate, when set ([`Sink::offer_tls`]).
    tls: Arc<Mutex<Option<Arc<rustls::ServerConfig>>>>,
    /// Leave STARTTLS out of EHLO although configured (what a downgrading attacker does).
    strip_starttls: Arc<std::sync::atomic::AtomicBool>,
    /// Answer STARTTLS with 220, then hang up instead of a handshake (a broken TLS stack).
    break_tls: Arc<std::sync::atomic::AtomicBool>,
    /// MAIL commands that arrived in clear text.
    pub plain_mail: Arc<std::sync::atomic::AtomicUsize>,
    /// TLS handshakes completed.
    pub handshakes: Arc<std::sync::atomic::AtomicUsize>,
}

impl Sink {
    pub async fn start() -> Sink {
        Sink::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(addr: SocketAddr) -> Sink {
        let l = TcpListener::bind(addr).await.expect("bind sink");
        let sink = Sink {
            addr: l.local_addr().unwrap(),
            got: Arc::default(),
            behaviour: Arc::default(),
            sessions: Arc::default(),
            max_sessions: Arc::default(),
            connections: Arc::default(),
            rsets: Arc::default(),
            nested_mail: Arc::default(),
            tls: Arc::default(),
            strip_starttls: Arc::default(),
            break_tls: Arc::default(),
            plain_mail: Arc::default(),
            handshakes: Arc::default(),
        };
        let s = sink.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = l.accept().await else {
                    continue;
                };
                let s2 = s.clone();
                tokio::spawn(async move { s2.session(stream).await });
            }
        });
        sink
    }

    pub fn rcpt_reply(&self, addr: &str, reply: &str) {
        self.behaviour
            .lock()
            .unwrap()
            .rcpt
            .insert(addr.to_ascii_lowercase(), reply.to_owned());
    }

    pub fn data_reply(&self, reply: Option<&str>) {
        self.behaviour.lock().unwrap().data_reply = reply.map(str::to_owned);
    }

    /// Offers STARTTLS with `cert` (PEM chain) and `key` from now on; `None` stops offering it.
    pub fn offer_tls(&self, pair: Option<(&str, &str)>) {
        use rustls_pki_types::pem::PemObject;
        let config = pair.map(|(cert, key)| {
            maildistiller::tls::install_provider();
            let certs = rustls_pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("test certificate");
            let key =
                rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("test key");
            Arc::new(
                rustls::ServerConfig::builder()
                    .with_no_client_auth()
                    .with_single_cert(certs, key)
                    .expect("test certificate and key fit"),
            )
        });
        *self.tls.lock().unwrap() = config;
    }

    /// Leaves STARTTLS out of EHLO (an attacker on the path stripping it), or stops doing so.
    pub fn strip_starttls(&self, strip: bool) {
        self.strip_starttls
            .store(strip, std::sync::atomic::Ordering::SeqCst);
    }

    /// Makes STARTTLS fail after its 220 (the connection closes), or work again.
    pub fn break_tls(&self, broken: bool) {
        self.break_tls
            .store(broken, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn messages(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    async fn session(&self, stream: TcpStream) {
        let mut counted = false;
        self.session_inner(stream, &mut counted).await;
        if counted {
            self.sessions
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    async fn session_inner(&self, stream: TcpStream, counted: &mut bool) {
        let mut stream = stream;
        let _ = stream.write_all(b"220 sink.test ESMTP\r\n").await;
        let tls = match self.commands(stream, counted, false).await {
            Some((plain, cfg)) => tokio_rustls::TlsAcceptor::from(cfg).accept(plain).await,
            None => return,
        };
        if let Ok(tls) = tls {
            self.handshakes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.commands(tls, counted, true).await;
        }
    }

    /// Serves commands until the session ends (`None`) or STARTTLS is accepted: then the
    /// stream to start TLS on, nothing of it read beyond the command.
    async fn commands<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: S,
        counted: &mut bool,
        tls: bool,
    ) -> Option<(S, Arc<rustls::ServerConfig>)> {
        let (r, mut w) = tokio::io::split(stream);
        let mut r = BufReader::new(r);
        let mut from = String::new();
        let mut rcpts = Vec::new();
        // Between an accepted MAIL and the reply to the data (or RSET), as in RFC 5321.
        let mut in_transaction = false;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                return None;
            }
            let upper = line.to_ascii_uppercase();
            let offer = if tls
                || self
                    .strip_starttls
                    .load(std::sync::atomic::Ordering::SeqCst)
            {
                None
            } else {
                self.tls.lock().unwrap().clone()
            };
            let reply: String = if upper.starts_with("EHLO") {
                let starttls = if offer.is_some() {
                    "250-STARTTLS\r\n"
                } else {
                    ""
                };
                format!("250-sink.test\r\n{starttls}250-PIPELINING\r\n250 8BITMIME\r\n")
            } else if upper.starts_with("STARTTLS") {
                let Some(cfg) = offer else {
                    let _ = w.write_all(b"502 5.5.1 no STARTTLS\r\n").await;
                    continue;
                };
                let _ = w.write_all(b"220 2.0.0 go ahead\r\n").await;
                if !r.buffer().is_empty()
                    || self.break_tls.load(std::sync::atomic::Ordering::SeqCst)
                {
                    return None;
                }
                return Some((r.into_inner().unsplit(w), cfg));
            } else if upper.starts_with("MAIL FROM:") && in_transaction {
                self.nested_mail
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                "503 5.5.1 nested MAIL command\r\n".into()
            } else if upper.starts_with("MAIL FROM:") {
                if !tls {
                    self.plain_mail
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                in_transaction = true;
                if !*counted {
                    use std::sync::atomic::Ordering;
                    *counted = true;
                    let now = self.sessions.fetch_add(1, Ordering::SeqCst) + 1;
                    self.max_sessions.fetch_max(now, Ordering::SeqCst);
                    self.connections.fetch_add(1, Ordering::SeqCst);
                }
                from = line[10..]
                    .trim()
                    .trim_start_matches('<')
                    .split('>')
                    .next()
                    .unwrap_or("")
                    .to_owned();
                rcpts.clear();
                "250 ok\r\n".into()
            } else if upper.starts_with("RCPT TO:") {
                let a = line[8..]
                    .trim()
                    .trim_start_matches('<')
                    .split('>')
                    .next()
                    .unwrap_or("")
                    .to_owned();
                let custom = self
                    .behaviour
                    .lock()
                    .unwrap()
                    .rcpt
                    .get(&a.to_ascii_lowercase())
                    .cloned();
                let reply = custom.unwrap_or_else(|| "250 ok".into());
                if reply.starts_with('2') {
                    rcpts.push(a);
                }
                format!("{reply}\r\n")
            } else if upper.starts_with("DATA") {
                if rcpts.is_empty() {
                    "554 no valid recipients\r\n".into()
                } else {
                    let _ = w.write_all(b"354 go\r\n").await;
                    let mut data = String::new();
                    loop {
                        let mut l = String::new();
                        if r.read_line(&mut l).await.unwrap_or(0) == 0 {
                            return None;
                        }
                        if l == ".\r\n" {
                            break;
                        }
                        data.push_str(
                            l.strip_prefix('.')
                                .filter(|_| l.starts_with(".."))
                                .unwrap_or(&l),
                        );
                    }
                    in_transaction = false;
                    let custom = self.behaviour.lock().unwrap().data_reply.clone();
                    match custom {
                        Some(r) => format!("{r}\r\n"),
                        None => {
                            self.got.lock().unwrap().push(Got {
                                at: std::time::Instant::now(),
                                from: from.clone(),
                                rcpts: rcpts.clone(),
                                data,
                                tls,
                            });
                            "250 2.0.0 ok\r\n".into()
                        }
                    }
                }
            } else if upper.starts_with("RSET") {
                self.rsets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                in_transaction = false;
                rcpts.clear();
                "250 ok\r\n".into()
            } else if upper.starts_with("QUIT") {
                // The session ends before its 221: a client may open its next connection as
                // soon as it reads the 221, before this task runs again (a third session seen
                // "at once" where the engine never had more than two).
                if *counted {
                    *counted = false;
                    self.sessions
                        .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                }
                let _ = w.write_all(b"221 bye\r\n").await;
                return None;
            } else {
                "250 ok\r\n".into()
            };
            if w.write_all(reply.as_bytes()).await.is_err() {
                return None;
            }
        }
    }
}

/// Polls `f` every 20 ms until it is true, for at most `limit`.
pub async fn until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = tokio::time::Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

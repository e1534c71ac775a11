//! HTTPS serving: a TLS listener that axum serves like any other (`axum::serve` takes our
//! [`TlsListener`]), the plain-HTTP redirect listener, and the security headers every HTTPS
//! answer carries.
//!
//! Lifecycle of a connection: a permit of `max_connections` is taken *before* `accept`; the TLS
//! handshake runs in its own task with `idle_timeout` (a slow client cannot stall the accept
//! loop); the finished stream is handed to axum through a bounded channel; the connection keeps
//! its permit until it closes. A connection with no bytes moving either way for `idle_timeout`
//! is closed (hyper sets no header timeout of its own here). On shutdown the accept loop stops
//! and axum finishes the requests in flight.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::http::{HeaderValue, Request, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// The client's socket address, for per-IP sign-in limits (`ConnectInfo<ClientAddr>`).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

enum Io {
    Tls(Box<TlsStream<TcpStream>>),
    Plain(TcpStream),
}

/// One accepted connection: the stream, its permit, and its idle deadline.
pub struct Conn {
    io: Io,
    _permit: OwnedSemaphorePermit,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl Conn {
    fn new(io: Io, permit: OwnedSemaphorePermit, idle: Duration) -> Conn {
        Conn {
            io,
            _permit: permit,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }

    fn touch(&mut self) {
        let next = Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }

    /// `Pending` from the stream: is the connection idle for too long?
    fn idle_out(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection idle for too long")
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = match &mut this.io {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
        };
        match r {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.touch();
                }
                Poll::Ready(r)
            }
            Poll::Pending if this.idle_out(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = match &mut this.io {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
        };
        match r {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.touch();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(e) => Poll::Ready(e),
            Poll::Pending if this.idle_out(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Accepted (and, for HTTPS, handshaken) connections for `axum::serve`.
pub struct TlsListener {
    rx: mpsc::Receiver<(Conn, SocketAddr)>,
    local: SocketAddr,
}

/// Connections handed over but not yet picked up by axum.
const HANDOVER: usize = 64;

impl TlsListener {
    /// Starts the accept loop on `l`. `tls: None` accepts plain TCP (the redirect listener).
    pub fn start(
        l: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        max_connections: usize,
        idle: Duration,
        shutdown: CancellationToken,
    ) -> io::Result<TlsListener> {
        let local = l.local_addr()?;
        let (tx, rx) = mpsc::channel(HANDOVER);
        let permits = Arc::new(Semaphore::new(max_connections.max(1)));
        let acceptor = tls.map(TlsAcceptor::from);
        tokio::spawn(async move {
            loop {
                let permit = tokio::select! {
                    p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                    _ = shutdown.cancelled() => return,
                };
                let (tcp, peer) = tokio::select! {
                    a = l.accept() => match a {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!(error = %e, "webmail accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    _ = shutdown.cancelled() => return,
                };
                let _ = tcp.set_nodelay(true);
                let tx = tx.clone();
                match &acceptor {
                    None => {
                        let _ = tx
                            .send((Conn::new(Io::Plain(tcp), permit, idle), peer))
                            .await;
                    }
                    Some(acc) => {
                        let acc = acc.clone();
                        tokio::spawn(async move {
                            match tokio::time::timeout(idle, acc.accept(tcp)).await {
                                Ok(Ok(s)) => {
                                    let conn = Conn::new(Io::Tls(Box::new(s)), permit, idle);
                                    let _ = tx.send((conn, peer)).await;
                                }
                                Ok(Err(e)) => {
                                    tracing::debug!(client = %peer, error = %e, "webmail TLS handshake failed")
                                }
                                Err(_) => {
                                    tracing::debug!(client = %peer, "webmail TLS handshake timed out")
                                }
                            }
                        });
                    }
                }
            }
        });
        Ok(TlsListener { rx, local })
    }
}

impl Listener for TlsListener {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept loop ended (shutdown): axum stops asking once it sees the signal.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for ClientAddr {
    fn connect_info(s: IncomingStream<'_, TlsListener>) -> Self {
        ClientAddr(*s.remote_addr())
    }
}

/// The CSP of every page: no script at all, styles and images only from us, frames only ours
/// (the message body), forms only to us, and nobody may frame us.
pub const PAGE_CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
    frame-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// Adds the security headers to every HTTPS answer; a handler that set its own CSP or frame
/// option (the message frame) keeps it.
pub async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k: header::HeaderName, v: &'static str| {
        h.entry(k).or_insert(HeaderValue::from_static(v));
    };
    set(h, header::STRICT_TRANSPORT_SECURITY, "max-age=31536000");
    set(h, header::CONTENT_SECURITY_POLICY, PAGE_CSP);
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    // Not `no-referrer`: under it browsers send `Origin: null` on the page's own form posts,
    // which the Origin check must refuse. `same-origin` sends nothing to other sites (links in
    // messages, remote images) and the real origin to us.
    set(h, header::REFERRER_POLICY, "same-origin");
    set(h, header::CACHE_CONTROL, "no-store");
    set(
        h,
        header::HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    set(
        h,
        header::HeaderName::from_static("cross-origin-resource-policy"),
        "same-origin",
    );
    res
}

/// The names the redirect listener may send a browser to when `public_url` is unset:
/// `engine.hostname`, then each HTTPS listener's address when it is a specific one (and
/// `localhost` for a loopback listener). Never a name from the request.
pub fn redirect_names(hostname: Option<&str>, https: &[std::net::SocketAddr]) -> Vec<String> {
    let mut names: Vec<String> = hostname
        .map(|h| h.to_ascii_lowercase())
        .into_iter()
        .collect();
    for a in https {
        let ip = a.ip();
        if ip.is_unspecified() {
            continue;
        }
        let lit = match ip {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        };
        if ip.is_loopback() {
            names.push("localhost".into());
        }
        names.push(lit);
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

/// The HTTPS URL for a plain-HTTP request: `public_url`; else the configured name
/// ([`redirect_names`]) the request's `Host` names, or the first one when it names none, with
/// `https_port`. The Location never carries the request's own host text (no open redirect).
/// `None` when there is no name to send anyone to.
pub fn https_url(
    public_url: Option<&str>,
    names: &[String],
    host: Option<&str>,
    https_port: u16,
    uri: &Uri,
) -> Option<String> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    if let Some(base) = public_url {
        return Some(format!("{}{path}", base.trim_end_matches('/')));
    }
    let asked = host.map(|h| {
        let h = h.trim().to_ascii_lowercase();
        match h.strip_prefix('[') {
            Some(v6) => format!("[{}]", v6.split(']').next().unwrap_or("")),
            None => h.split(':').next().unwrap_or("").to_owned(),
        }
    });
    let name = names
        .iter()
        .find(|n| asked.as_deref() == Some(n.as_str()))
        .or_else(|| names.first())?;
    Some(match https_port {
        443 => format!("https://{name}{path}"),
        p => format!("https://{name}:{p}{path}"),
    })
}

/// The redirect listener's only answer.
pub fn redirect(
    req: &Request<axum::body::Body>,
    public_url: Option<&str>,
    names: &[String],
    https_port: u16,
) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    match https_url(public_url, names, host, https_port, req.uri()) {
        Some(url) => (
            StatusCode::PERMANENT_REDIRECT,
            [(header::LOCATION, url)],
            "This page is served over HTTPS only.\n",
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "This page is served over HTTPS only; its address is not configured here.\n",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_requests_are_sent_to_configured_names_only() {
        let uri: Uri = "/inbox?page=2".parse().unwrap();
        let names = redirect_names(
            Some("Mail.Example.net"),
            &[
                "127.0.0.1:8443".parse().unwrap(),
                "[::1]:8443".parse().unwrap(),
            ],
        );
        assert_eq!(
            names,
            ["mail.example.net", "localhost", "127.0.0.1", "[::1]"]
        );
        assert_eq!(
            https_url(None, &names, Some("mail.example.net:80"), 443, &uri).as_deref(),
            Some("https://mail.example.net/inbox?page=2")
        );
        assert_eq!(
            https_url(None, &names, Some("127.0.0.1:8080"), 8443, &uri).as_deref(),
            Some("https://127.0.0.1:8443/inbox?page=2")
        );
        assert_eq!(
            https_url(None, &names, Some("[::1]:80"), 8443, &uri).as_deref(),
            Some("https://[::1]:8443/inbox?page=2")
        );
        // Any other Host gets the first configured name, never its own.
        for evil in [
            "evil.example",
            "evil.example/<x>",
            "mail.example.net.evil.example",
            "",
        ] {
            assert_eq!(
                https_url(None, &names, Some(evil), 443, &uri).as_deref(),
                Some("https://mail.example.net/inbox?page=2"),
                "{evil}"
            );
        }
        assert_eq!(
            https_url(
                Some("https://mail.example.net/"),
                &names,
                Some("evil"),
                1,
                &uri
            )
            .as_deref(),
            Some("https://mail.example.net/inbox?page=2")
        );
        // A wildcard listener and no host name: nowhere to send anyone.
        let none = redirect_names(None, &["0.0.0.0:443".parse().unwrap()]);
        assert!(none.is_empty());
        assert_eq!(
            https_url(None, &none, Some("evil.example"), 443, &uri),
            None
        );
    }
}

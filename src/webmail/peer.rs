//! The cluster-internal API: how one engine's page shows and acts on a user's mail held by the
//! other engines of its cluster. Mounted on the ops listener (a private address) when
//! `engine.webmail.peer_secret` is set; every request carries `Authorization: Bearer SECRET`,
//! compared in constant time, and anything else gets 404 as if the route did not exist.
//!
//! The caller has authenticated the user; the peer applies the same visibility rules
//! (`mailbox.rs`) for the user named in the request, so a peer never hands out more than the
//! user could see on that engine's own page.
//!
//! | request | answer |
//! |---|---|
//! | `GET /webmail/peer/list?tenant&user&admin&view&q&limit` | `counts` line, then one row a line |
//! | `GET /webmail/peer/msg/{id}?tenant&user&admin` | one row line, then the raw message |
//! | `POST /webmail/peer/msg/{id}/{release,delete}?tenant&user&admin` | 200, 403, 404 or 409 with a text |
//! | `POST /webmail/peer/allow?tenant&user&entry&remove` | 200 or 400 |
//!
//! Rows are tab-separated; spool values never hold control characters (see `store/spool/record.rs`).
//! The tenth field, the quarantine's finding kinds, is missing from peers older than it: their
//! rows are read with the kind their reason names.
//! The client speaks HTTP/1.1 with `Connection: close`, with `peer_timeout` for the whole
//! exchange and `MAX_BODY` for the answer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Local;
use super::mailbox::{self, ActionError, Filter, Listing, Row, View};
use super::secret::ct_eq;
use super::sessions::Viewer;
use crate::store::QueueId;

/// Largest answer read from a peer (a listing, or a message and its row).
pub const MAX_BODY: u64 = 1 << 30;

pub fn routes(local: Local) -> Router {
    Router::new()
        .route("/webmail/peer/list", get(list))
        .route("/webmail/peer/msg/{id}", get(message))
        .route("/webmail/peer/msg/{id}/{action}", post(act))
        .route("/webmail/peer/allow", post(allow))
        .with_state(local)
}

/// The ops addresses of the other engines of this engine's cluster. This engine is the one
/// whose SMTP address is one of `engine.listen`, or whose ops address is `ops.listen` (or the
/// bound ops address).
pub fn peers(local: &Local) -> Vec<SocketAddr> {
    let snap = local.ops.config.load();
    let t = &snap.topology;
    let listen = &snap.config.engine.listen;
    let ops_addrs = [
        Some(snap.config.ops.listen),
        local.ops.ops_addr.get().copied(),
    ];
    let is_me = |e: &crate::topology::Engine| {
        listen.contains(&e.address) || (e.ops.is_some() && ops_addrs.contains(&e.ops))
    };
    let Some(me) = t.engines.iter().find(|e| is_me(e)) else {
        return Vec::new();
    };
    t.clusters[me.cluster.0]
        .engines
        .iter()
        .map(|i| &t.engines[i.0])
        .filter(|e| !is_me(e))
        .filter_map(|e| e.ops)
        .collect()
}

fn authorised(local: &Local, headers: &HeaderMap) -> bool {
    let snap = local.ops.config.load();
    let Some(secret) = &snap.config.engine.webmail.peer_secret else {
        return false;
    };
    let sent = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    ct_eq(sent.as_bytes(), secret.as_bytes())
}

fn viewer(q: &HashMap<String, String>) -> Option<Viewer> {
    Some(Viewer {
        tenant: q.get("tenant")?.clone(),
        address: q.get("user")?.to_ascii_lowercase(),
        admin: q.get("admin").is_some_and(|a| a == "1"),
    })
}

fn not_found() -> Response {
    StatusCode::NOT_FOUND.into_response()
}

/// One row as a line.
pub fn encode_row(r: &Row) -> String {
    let clean = |s: &str| s.replace(['\t', '\r', '\n'], " ");
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
        r.id,
        r.received,
        r.size,
        match &r.quarantine {
            Some(_) => "q",
            None => "h",
        },
        clean(r.quarantine.as_deref().unwrap_or("")),
        clean(&r.from),
        clean(&r.header_from),
        clean(&r.subject),
        clean(&r.rcpts.join(",")),
        crate::store::Status::kinds_text(&r.kinds),
    )
}

pub fn decode_row(line: &str) -> Option<Row> {
    let f: Vec<&str> = line.split('\t').collect();
    if f.len() != 9 && f.len() != 10 {
        return None;
    }
    let quarantine = (f[3] == "q").then(|| f[4].to_owned());
    let kinds = match &quarantine {
        Some(reason) => {
            match crate::store::Status::parse("quarantined", reason.clone(), f.get(9).copied()) {
                Ok(crate::store::Status::Quarantined { kinds, .. }) => kinds,
                _ => Vec::new(),
            }
        }
        None => Vec::new(),
    };
    Some(Row {
        id: QueueId::parse(f[0])?,
        received: f[1].parse().ok()?,
        size: f[2].parse().ok()?,
        quarantine,
        kinds,
        from: f[5].to_owned(),
        header_from: f[6].to_owned(),
        subject: f[7].to_owned(),
        rcpts: f[8]
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        peer: None,
    })
}

async fn list(
    State(s): State<Local>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (true, Some(v)) = (authorised(&s, &headers), viewer(&q)) else {
        return not_found();
    };
    let f = Filter {
        view: View::parse(q.get("view").map_or("", String::as_str)),
        search: q.get("q").map(|x| x.to_lowercase()).unwrap_or_default(),
        limit: q
            .get("limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(50)
            .min(100_000),
    };
    let l = mailbox::list(&s, &v, &f);
    let mut out = format!("counts\t{}\t{}\t{}\n", l.held, l.quarantined, l.matching);
    for r in &l.rows {
        out.push_str(&encode_row(r));
        out.push('\n');
    }
    out.into_response()
}

async fn message(
    State(s): State<Local>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (true, Some(v), Some(id)) = (authorised(&s, &headers), viewer(&q), QueueId::parse(&id))
    else {
        return not_found();
    };
    let Some(row) = mailbox::get(&s, &v, &id) else {
        return not_found();
    };
    match s.store.read(&id).await {
        Ok(data) => {
            let mut out = encode_row(&row).into_bytes();
            out.push(b'\n');
            out.extend_from_slice(&data);
            out.into_response()
        }
        Err(_) => not_found(),
    }
}

async fn act(
    State(s): State<Local>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (true, Some(v), Some(id)) = (authorised(&s, &headers), viewer(&q), QueueId::parse(&id))
    else {
        return not_found();
    };
    let r = match action.as_str() {
        "release" => mailbox::release(&s, &v, &id).await,
        "delete" => mailbox::delete(&s, &v, &id).await,
        _ => return not_found(),
    };
    match r {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(e) => (action_status(&e), e.to_string()).into_response(),
    }
}

async fn allow(
    State(s): State<Local>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (true, Some(t), Some(u), Some(e)) = (
        authorised(&s, &headers),
        q.get("tenant").cloned(),
        q.get("user").cloned(),
        q.get("entry").cloned(),
    ) else {
        return not_found();
    };
    let add = q.get("remove").is_none_or(|r| r != "1");
    let dir = s.ops.config.load().config.engine.spool_dir.clone();
    match tokio::task::spawn_blocking(move || crate::store::allow::change(&dir, &t, &u, &e, add))
        .await
    {
        Ok(Ok(_)) => (StatusCode::OK, "ok").into_response(),
        Ok(Err(e)) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The one place action errors become HTTP statuses (peer API and page alike).
pub fn action_status(e: &ActionError) -> StatusCode {
    match e {
        ActionError::NotFound => StatusCode::NOT_FOUND,
        ActionError::Forbidden(_) => StatusCode::FORBIDDEN,
        ActionError::Conflict(_) => StatusCode::CONFLICT,
        ActionError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Why a peer could not answer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer {0}: {1}")]
    Io(SocketAddr, std::io::Error),
    #[error("peer {0} did not answer within {1:?}")]
    Timeout(SocketAddr, Duration),
    #[error("peer {0}: malformed answer")]
    Malformed(SocketAddr),
}

/// Talks to the peers of one engine.
#[derive(Debug, Clone)]
pub struct Client {
    pub secret: String,
    pub timeout: Duration,
}

/// Percent-encodes a query value.
pub fn enc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

fn who(v: &Viewer) -> String {
    format!(
        "tenant={}&user={}&admin={}",
        enc(&v.tenant),
        enc(&v.address),
        if v.admin { 1 } else { 0 }
    )
}

impl Client {
    /// One request; returns (status, body).
    async fn request(
        &self,
        peer: SocketAddr,
        method: &str,
        path: &str,
    ) -> Result<(u16, Vec<u8>), PeerError> {
        let exchange = async {
            let mut s = tokio::net::TcpStream::connect(peer).await?;
            let req = format!(
                "{method} {path} HTTP/1.1\r\nHost: {peer}\r\nAuthorization: Bearer {}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                self.secret
            );
            s.write_all(req.as_bytes()).await?;
            let mut buf = Vec::new();
            (&mut s).take(MAX_BODY).read_to_end(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        };
        let buf = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| PeerError::Timeout(peer, self.timeout))?
            .map_err(|e| PeerError::Io(peer, e))?;
        parse_response(&buf).ok_or(PeerError::Malformed(peer))
    }

    pub async fn list(
        &self,
        peer: SocketAddr,
        v: &Viewer,
        f: &Filter,
    ) -> Result<Listing, PeerError> {
        let path = format!(
            "/webmail/peer/list?{}&view={}&q={}&limit={}",
            who(v),
            f.view.as_str(),
            enc(&f.search),
            f.limit
        );
        let (code, body) = self.request(peer, "GET", &path).await?;
        let text = String::from_utf8(body).map_err(|_| PeerError::Malformed(peer))?;
        let mut lines = text.lines();
        let counts: Vec<usize> = match (code, lines.next()) {
            (200, Some(c)) => c
                .strip_prefix("counts\t")
                .map(|c| c.split('\t').filter_map(|n| n.parse().ok()).collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let [held, quarantined, matching] = counts[..] else {
            return Err(PeerError::Malformed(peer));
        };
        Ok(Listing {
            held,
            quarantined,
            matching,
            rows: lines.filter_map(decode_row).collect(),
        })
    }

    /// The row and raw message, `Ok(None)` when the peer does not show it to this user.
    pub async fn message(
        &self,
        peer: SocketAddr,
        v: &Viewer,
        id: &QueueId,
    ) -> Result<Option<(Row, Vec<u8>)>, PeerError> {
        let (code, body) = self
            .request(peer, "GET", &format!("/webmail/peer/msg/{id}?{}", who(v)))
            .await?;
        if code == 404 {
            return Ok(None);
        }
        let nl = body
            .iter()
            .position(|b| *b == b'\n')
            .ok_or(PeerError::Malformed(peer))?;
        let row = std::str::from_utf8(&body[..nl])
            .ok()
            .and_then(decode_row)
            .ok_or(PeerError::Malformed(peer))?;
        Ok(Some((row, body[nl + 1..].to_vec())))
    }

    /// Release or delete on the peer; maps its answer back to an [`ActionError`].
    pub async fn act(
        &self,
        peer: SocketAddr,
        v: &Viewer,
        id: &QueueId,
        action: &str,
    ) -> Result<(), ActionError> {
        let path = format!("/webmail/peer/msg/{id}/{action}?{}", who(v));
        match self.request(peer, "POST", &path).await {
            Ok((200, _)) => Ok(()),
            Ok((404, _)) => Err(ActionError::NotFound),
            Ok((403, _)) => Err(ActionError::Forbidden(
                "your organisation's policy does not let you do this",
            )),
            Ok((_, b)) => Err(ActionError::Conflict(
                String::from_utf8_lossy(&b).into_owned(),
            )),
            Err(e) => Err(ActionError::Conflict(format!(
                "the engine holding this message did not answer ({e}); try again"
            ))),
        }
    }

    /// Adds (or removes) an entry of a user's allow list on the peer.
    pub async fn allow(
        &self,
        peer: SocketAddr,
        tenant: &str,
        user: &str,
        entry: &str,
        add: bool,
    ) -> Result<(), PeerError> {
        let path = format!(
            "/webmail/peer/allow?tenant={}&user={}&entry={}&remove={}",
            enc(tenant),
            enc(user),
            enc(entry),
            if add { 0 } else { 1 }
        );
        match self.request(peer, "POST", &path).await? {
            (200, _) => Ok(()),
            _ => Err(PeerError::Malformed(peer)),
        }
    }
}

/// (status, body) of an HTTP/1.1 response; de-chunks when needed.
fn parse_response(buf: &[u8]) -> Option<(u16, Vec<u8>)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let body = &buf[end + 4..];
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if !chunked {
        return Some((status, body.to_vec()));
    }
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let nl = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..nl]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[nl + 2..];
        if size == 0 {
            return Some((status, out));
        }
        out.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_responses_parse() {
        let r = Row {
            id: QueueId::generate(),
            received: 1_700_000_000,
            size: 42,
            quarantine: Some("spam score 12.0".into()),
            kinds: vec![
                crate::config::webmail::FindingKind::Virus,
                crate::config::webmail::FindingKind::Attachment,
            ],
            from: "a@x.example".into(),
            header_from: "A \"tab\tbed\" <a@x.example>".into(),
            subject: "hi".into(),
            rcpts: vec!["b@acme.example".into(), "c@acme.example".into()],
            peer: None,
        };
        let back = decode_row(&encode_row(&r)).unwrap();
        assert_eq!(back.header_from, "A \"tab bed\" <a@x.example>");
        assert_eq!(
            Row {
                header_from: r.header_from.clone(),
                ..back
            },
            r
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
            Some((200, b"ok".to_vec()))
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n1\r\n!\r\n0\r\n\r\n"),
            Some((200, b"ok!".to_vec()))
        );
        assert_eq!(enc("a b&c=d@é"), "a%20b%26c%3Dd%40%C3%A9");
        // A peer that sends no kinds: the kind its reason names.
        let old = encode_row(&Row {
            quarantine: Some("virus: EICAR".into()),
            ..r.clone()
        });
        let old = old.rsplit_once('\t').unwrap().0;
        assert_eq!(
            decode_row(old).unwrap().kinds,
            [crate::config::webmail::FindingKind::Virus]
        );
    }
}

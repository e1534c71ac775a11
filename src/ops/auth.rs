//! The operator credential. The ops listener answers `/metrics`, `/healthz`, `/readyz` and
//! `/status` to anyone who reaches it (Prometheus, load balancers, a browser); everything that
//! changes state or shows mail (reload, drains, the queue API) needs `Authorization: Bearer
//! <token>`, the token being the content of `ops.token_file`. A private address is not an
//! access control.
//!
//! The file is read for every request to the operator API (they are rare), so a rotated token
//! takes effect at once, without a reload. The comparison takes the same time wherever the first
//! difference is. The token is never logged; a refusal is counted
//! (`maildistiller_ops_api_requests_total{result}`) and logged with the peer's address only.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::Ops;

/// Longest token file read; a token is a line of text, not a document.
const MAX_TOKEN: u64 = 4096;

/// The token in `path`: its first line, trimmed. Empty or unreadable is an error.
pub fn read_token(path: &Path) -> std::io::Result<String> {
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_TOKEN)
        .read_to_string(&mut text)?;
    let token = text.lines().next().unwrap_or_default().trim().to_owned();
    if token.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} holds no token", path.display()),
        ));
    }
    Ok(token)
}

/// Creates `path` with a fresh random token (32 bytes from the kernel, hex), mode 0600, unless it
/// exists. Returns whether it was created.
pub fn ensure_token_file(path: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    if path.exists() {
        return Ok(false);
    }
    let mut raw = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut raw)?;
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(f, "{token}")?;
    f.sync_all()?;
    Ok(true)
}

/// Equal in time whatever the content (the length may show; tokens are of one length).
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a request to the operator API was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// No `ops.token_file`: the operator API is closed.
    Disabled,
    /// No `Authorization: Bearer` header.
    Missing,
    /// A token that is not the one in the file.
    Wrong,
    /// The file could not be read.
    Unreadable,
}

fn check(ops: &Ops, authorization: Option<&[u8]>) -> Result<(), Refusal> {
    let Some(path) = ops.config.load().config.ops.token_file.clone() else {
        return Err(Refusal::Disabled);
    };
    let Some(given) = authorization.and_then(|h| {
        let h = std::str::from_utf8(h).ok()?;
        let (scheme, token) = h.trim().split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned())
    }) else {
        return Err(Refusal::Missing);
    };
    let want = read_token(&path).map_err(|e| {
        tracing::error!(file = %path.display(), error = %e, "cannot read the operator token file");
        Refusal::Unreadable
    })?;
    if same(given.as_bytes(), want.as_bytes()) {
        Ok(())
    } else {
        Err(Refusal::Wrong)
    }
}

/// Middleware in front of the operator API.
pub async fn require_operator(State(ops): State<Arc<Ops>>, req: Request, next: Next) -> Response {
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes().to_vec());
    match check(&ops, authorization.as_deref()) {
        Ok(()) => {
            ops.metrics.api_auth("ok");
            next.run(req).await
        }
        Err(r) => {
            let (result, status, text) = match r {
                Refusal::Disabled => (
                    "disabled",
                    StatusCode::FORBIDDEN,
                    "the operator API is closed: set ops.token_file\n",
                ),
                Refusal::Missing => (
                    "missing",
                    StatusCode::UNAUTHORIZED,
                    "operator credential required (Authorization: Bearer, ops.token_file)\n",
                ),
                Refusal::Wrong => (
                    "wrong",
                    StatusCode::FORBIDDEN,
                    "wrong operator credential\n",
                ),
                Refusal::Unreadable => (
                    "disabled",
                    StatusCode::FORBIDDEN,
                    "the operator token file cannot be read (see the log)\n",
                ),
            };
            ops.metrics.api_auth(result);
            tracing::warn!(path = %req.uri().path(), refusal = result, "operator API request refused");
            let mut resp = (status, text).into_response();
            if status == StatusCode::UNAUTHORIZED {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer realm=\"maildistiller\""),
                );
            }
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparison_and_token_files() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/ops.token");
        assert!(ensure_token_file(&path).unwrap(), "created");
        let t = read_token(&path).unwrap();
        assert_eq!(t.len(), 64);
        assert!(!ensure_token_file(&path).unwrap(), "kept");
        assert_eq!(read_token(&path).unwrap(), t);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, "\n").unwrap();
        assert!(read_token(&path).is_err(), "an empty file is no token");
    }
}

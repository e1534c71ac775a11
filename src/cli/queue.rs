//! `maildistiller queue list|show|flush|suspend|release|delete|takeover`: a running engine's queue, through
//! the queue API on its ops listener.

use std::net::SocketAddr;

use super::{Failure, QueueAction, client};

/// Percent-encodes a query value (an engine address has `:`, an IPv6 one `[` and `]`).
fn escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'.' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Sends one queue request to the engine at `addr` and prints its answer.
pub fn command(addr: SocketAddr, token: Option<&str>, action: &QueueAction) -> Result<(), Failure> {
    let enc = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            .then(|| s.to_owned())
    };
    let (method, path) = match action {
        QueueAction::List { tenant, state } => {
            let mut q = Vec::new();
            if let Some(t) = tenant.as_deref().and_then(enc) {
                q.push(format!("tenant={t}"));
            }
            if let Some(s) = state {
                q.push(format!("state={}", s.as_str()));
            }
            ("GET", format!("/queue?{}", q.join("&")))
        }
        QueueAction::Show { id } => ("GET", format!("/queue/{}", enc(id).unwrap_or_default())),
        QueueAction::Flush { id: None } => ("POST", "/queue/flush".to_owned()),
        QueueAction::Flush { id: Some(id) } => (
            "POST",
            format!("/queue/{}/flush", enc(id).unwrap_or_default()),
        ),
        QueueAction::Suspend { id } => (
            "POST",
            format!("/queue/{}/suspend", enc(id).unwrap_or_default()),
        ),
        QueueAction::Release { id } => (
            "POST",
            format!("/queue/{}/release", enc(id).unwrap_or_default()),
        ),
        QueueAction::Delete { id } => (
            "POST",
            format!("/queue/{}/delete", enc(id).unwrap_or_default()),
        ),
        QueueAction::Takeover { from } => {
            ("POST", format!("/queue/takeover?from={}", escape(from)))
        }
    };
    match client::request(addr, method, &path, token) {
        Ok((200, body)) => {
            print!("{body}");
            Ok(())
        }
        Ok((404, body)) if body.is_empty() => Err(Failure::Runtime(format!(
            "{addr} has no queue API (is an engine running there?)"
        ))),
        Ok((_, body)) => {
            eprint!("{body}");
            Err(Failure::Refused)
        }
        Err(e) => Err(Failure::Unavailable(format!(
            "cannot reach the ops listener at {addr}: {e}"
        ))),
    }
}

//! clamd as a real external antivirus, over its INSTREAM protocol on a Unix socket or TCP:
//! `zINSTREAM\0`, then the message in chunks (4-byte big-endian length + data), then a zero
//! length; clamd answers `stream: OK`, `stream: NAME FOUND` or `… ERROR`, ending in NUL.
//!
//! The raw message is sent whole (clamd decodes MIME and unpacks archives itself). The
//! exchange is bounded by `clamd.timeout`; a refused connection, a timeout, an `ERROR` answer
//! or a message over `clamd.max_size` is a failure, and `clamd.on_failure` says whether to
//! decide without clamd or answer 451. One connection per message (clamd's `IDSESSION` would
//! save a connect, at the price of a pool whose bound would need its own documentation).

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{Check, Subject};
use crate::config::policy::{ClamdConfig, OnFailure};
use crate::engine::policy::finding::{Category, CheckError, Finding, Outcome};

const NAME: &str = "clamd";
/// Bytes per INSTREAM chunk.
const CHUNK: usize = 64 << 10;
/// Longest answer read.
const MAX_REPLY: usize = 4096;

/// Where clamd listens: `tcp:HOST:PORT` or `unix:/PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClamdAddr {
    Tcp(String),
    Unix(PathBuf),
}

impl ClamdAddr {
    pub fn parse(s: &str) -> Result<ClamdAddr, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            if !p.starts_with('/') {
                return Err(format!("{s:?}: the socket path must be absolute"));
            }
            return Ok(ClamdAddr::Unix(PathBuf::from(p)));
        }
        if let Some(hp) = s.strip_prefix("tcp:") {
            super::http::HostPort::parse(hp)?;
            return Ok(ClamdAddr::Tcp(hp.to_owned()));
        }
        Err(format!("{s:?} is neither tcp:HOST:PORT nor unix:/PATH"))
    }
}

#[derive(Debug)]
pub struct ClamdCheck {
    addr: ClamdAddr,
    timeout: Duration,
    on_failure: OnFailure,
    max_size: u64,
}

impl ClamdCheck {
    pub fn new(c: &ClamdConfig) -> Result<ClamdCheck, String> {
        Ok(ClamdCheck {
            addr: ClamdAddr::parse(&c.address)?,
            timeout: c.timeout.get(),
            on_failure: c.on_failure,
            max_size: c.max_size.0,
        })
    }

    /// Sends `data` and returns clamd's answer, without its trailing NUL.
    async fn instream(&self, data: &[u8]) -> Result<String, CheckError> {
        let unreachable =
            |e: std::io::Error| CheckError::Unreachable(format!("{:?}: {e}", self.addr));
        match &self.addr {
            ClamdAddr::Tcp(hp) => {
                let s = tokio::net::TcpStream::connect(hp.as_str())
                    .await
                    .map_err(unreachable)?;
                exchange(s, data).await
            }
            ClamdAddr::Unix(p) => {
                let s = tokio::net::UnixStream::connect(p)
                    .await
                    .map_err(unreachable)?;
                exchange(s, data).await
            }
        }
    }
}

async fn exchange(
    mut s: impl AsyncRead + AsyncWrite + Unpin,
    data: &[u8],
) -> Result<String, CheckError> {
    let io = |e: std::io::Error| CheckError::Protocol(format!("I/O: {e}"));
    s.write_all(b"zINSTREAM\0").await.map_err(io)?;
    for chunk in data.chunks(CHUNK) {
        s.write_all(&(chunk.len() as u32).to_be_bytes())
            .await
            .map_err(io)?;
        s.write_all(chunk).await.map_err(io)?;
    }
    s.write_all(&0u32.to_be_bytes()).await.map_err(io)?;
    s.flush().await.map_err(io)?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let n = s.read(&mut buf).await.map_err(io)?;
        reply.extend_from_slice(&buf[..n]);
        if n == 0 || reply.contains(&0) || reply.len() > MAX_REPLY {
            break;
        }
    }
    let end = reply.iter().position(|&b| b == 0).unwrap_or(reply.len());
    Ok(String::from_utf8_lossy(&reply[..end]).trim().to_owned())
}

/// `Ok(None)` clean, `Ok(Some(signature))` infected, `Err` anything else.
pub fn parse_reply(reply: &str) -> Result<Option<String>, CheckError> {
    let body = reply.strip_prefix("stream:").unwrap_or(reply).trim();
    if body == "OK" {
        return Ok(None);
    }
    if let Some(sig) = body.strip_suffix(" FOUND") {
        return Ok(Some(sig.trim().to_owned()));
    }
    Err(CheckError::Protocol(format!("clamd answered {reply:?}")))
}

#[async_trait::async_trait]
impl Check for ClamdCheck {
    fn name(&self) -> &'static str {
        NAME
    }

    fn on_failure(&self) -> OnFailure {
        self.on_failure
    }

    async fn check(&self, s: &Subject<'_>) -> Result<Outcome, CheckError> {
        if s.raw.len() as u64 > self.max_size {
            return Err(CheckError::TooLarge(s.raw.len() as u64));
        }
        let reply = tokio::time::timeout(self.timeout, self.instream(s.raw))
            .await
            .map_err(|_| CheckError::Timeout(self.timeout))??;
        let mut out = Outcome::default();
        if let Some(sig) = parse_reply(&reply)? {
            out.findings
                .push(Finding::builtin(NAME, "virus.clamd", Category::Virus, sig));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            ClamdAddr::parse("tcp:127.0.0.1:3310").unwrap(),
            ClamdAddr::Tcp("127.0.0.1:3310".into())
        );
        assert_eq!(
            ClamdAddr::parse("unix:/run/clamd.sock").unwrap(),
            ClamdAddr::Unix("/run/clamd.sock".into())
        );
        assert!(ClamdAddr::parse("unix:rel").is_err());
        assert!(ClamdAddr::parse("127.0.0.1:3310").is_err());
    }

    #[test]
    fn replies() {
        assert_eq!(parse_reply("stream: OK").unwrap(), None);
        assert_eq!(
            parse_reply("stream: Eicar-Signature FOUND")
                .unwrap()
                .as_deref(),
            Some("Eicar-Signature")
        );
        assert!(parse_reply("INSTREAM size limit exceeded. ERROR").is_err());
    }
}

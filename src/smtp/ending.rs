//! Why an SMTP session ended, by cause, for the engine's and the edge's drivers alike; and the
//! one place each cause becomes the reply the client gets ([`Ending::reply`]).

use super::{Reply, replies};

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum Ending {
    /// The protocol ended it (QUIT, a limit, a refused PROXY header): its reply is written.
    #[error("ended by the protocol")]
    Protocol,
    #[error("the client closed the connection")]
    ClientClosed,
    #[error("client connection failed: {0}")]
    ClientIo(#[source] std::io::Error),
    #[error("no command within the command timeout")]
    Timeout,
    #[error("the message did not arrive within the data timeout")]
    DataTimeout,
    #[error("shutting down")]
    Shutdown,
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] std::io::Error),
    /// The edge's `greeting_delay`: the client spoke first.
    #[error("the client talked before the banner")]
    Pregreet,
    /// A PROXY listener, and the peer is not in `trusted_proxies`.
    #[error("a peer outside trusted_proxies connected to a PROXY listener")]
    ProxyUntrusted,
    /// A PROXY listener, and the peer sent something else first (or nothing).
    #[error("no PROXY header")]
    ProxyMissing,
    #[error("invalid PROXY header: {0}")]
    ProxyInvalid(String),
    /// The edge's engine went away mid-session.
    #[error("the mail engine closed the connection")]
    EngineLost,
    #[error("the mail engine did not answer in SMTP: {0}")]
    EngineGarbage(String),
}

impl Ending {
    /// The last reply the client gets, when the cause has one to give.
    pub fn reply(&self) -> Option<Reply> {
        Some(match self {
            Ending::Protocol | Ending::ClientClosed | Ending::ClientIo(_) | Ending::Tls(_) => {
                return None;
            }
            Ending::Timeout => replies::TIMEOUT,
            Ending::DataTimeout => replies::DATA_TIMEOUT,
            Ending::Shutdown => replies::SHUTTING_DOWN,
            Ending::Pregreet => replies::PREGREET,
            Ending::ProxyUntrusted => replies::PROXY_UNTRUSTED,
            Ending::ProxyMissing => replies::PROXY_REQUIRED,
            Ending::ProxyInvalid(_) => replies::PROXY_INVALID,
            // A 4xx, never a 5xx: the sender retries and lands on another engine.
            Ending::EngineLost => replies::ENGINE_LOST,
            Ending::EngineGarbage(_) => replies::ENGINE_ERROR,
        })
    }

    /// Short label for logs.
    pub fn label(&self) -> &'static str {
        match self {
            Ending::Protocol => "protocol",
            Ending::ClientClosed => "client closed",
            Ending::ClientIo(_) => "client i/o error",
            Ending::Timeout => "timeout",
            Ending::DataTimeout => "data timeout",
            Ending::Shutdown => "shutdown",
            Ending::Tls(_) => "tls handshake failed",
            Ending::Pregreet => "pregreet",
            Ending::ProxyUntrusted => "proxy untrusted",
            Ending::ProxyMissing => "proxy missing",
            Ending::ProxyInvalid(_) => "proxy invalid",
            Ending::EngineLost => "engine lost",
            Ending::EngineGarbage(_) => "engine protocol error",
        }
    }
}

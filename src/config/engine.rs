//! `[engine]` and `[engine.delivery]`: the engine role's listeners, session limits, spool,
//! lifetimes and how it delivers to tenants' servers. `[engine.webmail]` and
//! `[engine.verify]` have their own files.

use std::net::SocketAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use super::shadow::{DEFAULT_TAKEOVER_AFTER, OnShadowFailure, Redundancy, ShadowConfig};
use super::units::{Bytes, DeliveryHost, Dur};
use super::validate::{Checker, is_domain};
use super::verify::VerifyConfig;
use super::webmail::WebmailConfig;

/// `--role engine`: reception, spool, delivery, webmail.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// SMTP listeners for direct senders (a relay of your own, tests, benchmarks). Nobody
    /// sends a PROXY header here: one that arrives is refused (`554 5.7.0`). The banner goes
    /// out at once. Default `127.0.0.1:2526`.
    pub listen: Vec<SocketAddr>,
    /// SMTP listeners for edges: the addresses edges connect to (this engine's
    /// `[[silo.cluster.engine]] address`). Every connection must come from `trusted_proxies`
    /// (else `554 5.7.0`) and start with a PROXY v1/v2 header (else `421 4.7.0`), which gives
    /// the real client, the session id, its TLS and country. As HAProxy's `accept-proxy` and
    /// Postfix's `smtpd_upstream_proxy_protocol`. Default none.
    pub proxy_listen: Vec<SocketAddr>,
    /// Spool directory. Relative paths are relative to the config file. Default `spool`.
    pub spool_dir: PathBuf,
    /// Networks allowed to connect to `proxy_listen` (the edges' source addresses). Required
    /// with `proxy_listen`, meaningless without it.
    pub trusted_proxies: Vec<IpNetwork>,
    /// Largest message accepted (SIZE and while streaming). Default 25 MiB.
    pub max_message_size: Bytes,
    /// Recipients per message. Default 100 (RFC 5321 4.5.3.1.8 minimum).
    pub max_recipients: u32,
    /// Longest command line. Default 512 octets... with extensions we allow 4 KiB.
    pub max_line_length: Bytes,
    /// Commands per session before 421. Default 1000.
    pub max_commands: u32,
    /// Errors per session before 421. Default 10.
    pub max_errors: u32,
    /// Idle time between commands. Default 5 m.
    pub command_timeout: Dur,
    /// Time allowed for the whole DATA transfer. Default 10 m.
    pub data_timeout: Dur,
    /// A bare LF (a line end without CR) inside a message: `normalize` (the default) keeps it
    /// as CRLF, `reject` refuses the message (`550 5.6.0`). Either way `<CRLF>.<CRLF>` is the
    /// only end of data and a bare CR is refused (see `src/smtp/data.rs`). As Postfix 3.9's
    /// `smtpd_forbid_bare_newline`. Edges relay the bytes as they are: the engine decides.
    pub bare_newline: BareNewline,
    /// Concurrent sessions. Default 2000.
    pub max_sessions: u32,
    /// Memory for message bodies, all sessions together: half for bodies being received, half
    /// for bodies being scanned and spooled (four times their size each). Small messages stay in
    /// memory (that is what makes reception fast); a body that does not fit in the receiving
    /// half streams on to an unnamed file under `spool_dir/incoming` as it arrives, and is read
    /// back when the other half has room. Bounds what senders that stall before the final dot
    /// can make the engine hold (`max_sessions` × `max_message_size` is 50 GiB by default).
    /// See `src/engine/smtp/body.rs`. Read at start. Default 128 MiB; at least 128 KiB.
    pub data_memory: Bytes,
    /// Messages scanned at once (the work after a message's final dot until its verdict;
    /// spooling is not counted, so every ready message shares the next fsync). Later ones wait
    /// their turn; while as many wait as are being scanned, or four times as many are between
    /// their final dot and their answer, the engine is busy and new recipients get `451 4.3.2`
    /// at RCPT, before their senders send a body, so
    /// the messages it takes keep a short answer time however many senders come. Nothing
    /// received is refused or skipped for load. See `src/engine/smtp/processing.rs`. Read at
    /// start. Default 0: four per CPU.
    pub max_processing: u32,
    /// How long undeliverable mail is kept before a DSN. Default 5 d.
    pub message_lifetime: Dur,
    /// How long a quarantined message stays (readable in webmail, releasable) before it is
    /// deleted. Default 30 d.
    pub quarantine_lifetime: Dur,
    /// Name in the banner, EHLO and `Received:` headers. Default: the host name.
    pub hostname: Option<String>,
    /// PEM certificate chain and key for STARTTLS. Both or neither. Relative paths are relative
    /// to the config file. A renewed pair is picked up on reload (SIGHUP, `POST /-/reload`):
    /// write both files, then reload; a pair that does not load is refused and the previous
    /// certificate stays.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// `none` (default): a message lives on this engine's disk only. `shadow`: `250` only once
    /// the message and its envelope are fsynced here and on another engine of the cluster (its
    /// shadow), which delivers it if this engine is lost. See `src/shadow/mod.rs`.
    pub redundancy: Redundancy,
    /// With `shadow`, when no peer fsyncs the copy within `shadow.timeout`: `tempfail`
    /// (default: `451 4.3.0`, the sender retries) or `accept` (250 with one copy, counted, and
    /// shadowed when a peer is back).
    pub on_shadow_failure: OnShadowFailure,
    /// How long a primary must be unreachable (and agreed down by the cluster's other engines)
    /// before its shadows deliver its copies. Default 5 m: longer than a restart, so a restart
    /// never causes duplicates. `maildistiller queue takeover --from ENGINE` does it at once.
    pub takeover_after: Dur,
    pub shadow: ShadowConfig,
    /// When `tls_cert` and `tls_key` are both missing at start, make a self-signed certificate
    /// there (for the host name, `localhost` and 127.0.0.1; ten years; key mode 0600) and use
    /// it: STARTTLS out of the box on a test or loopback setup. Never replaces existing files.
    /// Senders do not check MX certificates, so it encrypts; it authenticates nothing. Default
    /// false.
    pub tls_self_signed: bool,
    pub delivery: DeliveryConfig,
    pub webmail: WebmailConfig,
    /// Recipient verification: the call-ahead cache, the probe, recipient files.
    pub verify: VerifyConfig,
}

/// `engine.bare_newline`: what a bare LF inside a message leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BareNewline {
    /// Kept as CRLF: the message is taken (kind to senders that write Unix line ends).
    Normalize,
    /// The message is refused with `550 5.6.0`.
    Reject,
}

/// `[engine.delivery]`: how the engine delivers to tenants' servers.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Concurrent connections to one destination (tenant). Default 10.
    pub connections_per_destination: u32,
    /// Concurrent outgoing connections in all. Default 200.
    pub max_connections: u32,
    /// Messages sent over one connection before it is closed. Default 100.
    pub messages_per_connection: u32,
    /// TCP connect timeout. Default 10 s.
    pub connect_timeout: Dur,
    /// Timeout for each reply from the destination. Default 2 m (RFC 5321 4.5.3.2 suggests
    /// longer for DATA; our own default for the final reply is 10 m).
    pub command_timeout: Dur,
    /// First retry after a temporary failure; doubled each time, with ±20 % jitter. Default 1 m.
    pub retry_base: Dur,
    /// Longest retry interval. Default 1 h.
    pub retry_max: Dur,
    /// Consecutive connection failures after which a destination is marked down and its mail
    /// held (no retries until a probe succeeds). Default 3.
    pub dead_after: u32,
    /// How often a down destination is probed (connect, 220, QUIT). When a probe succeeds, held
    /// mail is delivered at once. Default 3 s.
    pub probe_interval: Dur,
    /// Smart host for mail to non-tenant domains (DSNs to senders): `host[:port]`. Without it,
    /// MX records are looked up.
    pub relay: Option<String>,
    /// Source addresses for outgoing connections (egress); the first of the right family is used.
    pub source_addresses: Vec<std::net::IpAddr>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            connections_per_destination: 10,
            max_connections: 200,
            messages_per_connection: 100,
            connect_timeout: Dur::secs(10),
            command_timeout: Dur::secs(120),
            retry_base: Dur::secs(60),
            retry_max: Dur::secs(3600),
            dead_after: 3,
            probe_interval: Dur::secs(3),
            relay: None,
            source_addresses: Vec::new(),
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 2526))],
            spool_dir: PathBuf::from("spool"),
            proxy_listen: Vec::new(),
            trusted_proxies: Vec::new(),
            max_message_size: Bytes(25 << 20),
            max_recipients: 100,
            max_line_length: Bytes(4096),
            max_commands: 1000,
            max_errors: 10,
            command_timeout: Dur::secs(300),
            data_timeout: Dur::secs(600),
            bare_newline: BareNewline::Normalize,
            max_sessions: 2000,
            data_memory: Bytes(128 << 20),
            max_processing: 0,
            message_lifetime: Dur::secs(5 * 86_400),
            quarantine_lifetime: Dur::secs(30 * 86_400),
            hostname: None,
            tls_cert: None,
            tls_key: None,
            redundancy: Redundancy::None,
            on_shadow_failure: OnShadowFailure::Tempfail,
            takeover_after: DEFAULT_TAKEOVER_AFTER,
            shadow: ShadowConfig::default(),
            tls_self_signed: false,
            delivery: DeliveryConfig::default(),
            webmail: Default::default(),
            verify: Default::default(),
        }
    }
}

/// Keys of `[engine]` that were removed, with what to write instead (reported as errors with
/// the fix, not as unknown keys).
pub const REMOVED_KEYS: &[(&str, &str)] = &[
    (
        "require_proxy",
        "removed: PROXY is a property of the listener. Put the addresses edges connect to \
         (this engine's [[silo.cluster.engine]] address) in engine.proxy_listen, where PROXY \
         from engine.trusted_proxies is required; engine.listen is for direct senders and \
         never takes PROXY",
    ),
    (
        "proxy_wait",
        "removed: nothing waits for a PROXY header any more. Edges connect to \
         engine.proxy_listen (PROXY required), direct senders to engine.listen (never PROXY)",
    ),
];

impl EngineConfig {
    pub fn check(&self, k: &mut Checker) {
        let e = self;
        k.range(
            "engine.max_message_size",
            e.max_message_size.0,
            1024,
            2 << 30,
        );
        k.range("engine.max_recipients", e.max_recipients.into(), 1, 100_000);
        k.range("engine.max_line_length", e.max_line_length.0, 512, 1 << 20);
        k.range("engine.max_commands", e.max_commands.into(), 10, 1_000_000);
        k.range("engine.max_errors", e.max_errors.into(), 1, 1000);
        k.range("engine.max_sessions", e.max_sessions.into(), 1, 1_000_000);
        k.range("engine.data_memory", e.data_memory.0, 128 << 10, 1 << 40);
        k.range(
            "engine.max_processing",
            e.max_processing.into(),
            0,
            e.max_sessions.into(),
        );
        k.dur("engine.command_timeout", e.command_timeout, 1000, 3600);
        k.dur("engine.data_timeout", e.data_timeout, 1000, 86_400);
        k.dur(
            "engine.message_lifetime",
            e.message_lifetime,
            1000,
            60 * 86_400,
        );
        k.dur(
            "engine.quarantine_lifetime",
            e.quarantine_lifetime,
            1000,
            365 * 86_400,
        );
        if e.tls_cert.is_some() != e.tls_key.is_some() {
            k.err(
                "engine.tls_cert",
                "give both tls_cert and tls_key, or neither",
            );
        }
        if e.tls_self_signed && e.tls_cert.is_none() {
            k.err(
                "engine.tls_self_signed",
                "needs tls_cert and tls_key: the paths the certificate is made at",
            );
        }
        if let Some(h) = &e.hostname
            && !is_domain(h)
        {
            k.err("engine.hostname", format!("{h:?} is not a DNS name"));
        }
        let d = &e.delivery;
        k.range(
            "engine.delivery.connections_per_destination",
            d.connections_per_destination.into(),
            1,
            1000,
        );
        k.range(
            "engine.delivery.max_connections",
            d.max_connections.into(),
            d.connections_per_destination.max(1).into(),
            100_000,
        );
        k.range(
            "engine.delivery.messages_per_connection",
            d.messages_per_connection.into(),
            1,
            100_000,
        );
        k.dur(
            "engine.delivery.connect_timeout",
            d.connect_timeout,
            100,
            300,
        );
        k.dur(
            "engine.delivery.command_timeout",
            d.command_timeout,
            100,
            3600,
        );
        k.dur("engine.delivery.retry_base", d.retry_base, 100, 86_400);
        k.dur(
            "engine.delivery.retry_max",
            d.retry_max,
            d.retry_base.get().as_millis() as u64,
            7 * 86_400,
        );
        k.range("engine.delivery.dead_after", d.dead_after.into(), 1, 1000);
        k.dur(
            "engine.delivery.probe_interval",
            d.probe_interval,
            100,
            3600,
        );
        if let Some(r) = &d.relay
            && let Err(msg) = r.parse::<DeliveryHost>()
        {
            k.err("engine.delivery.relay", msg);
        }
        e.shadow.check(k);
        e.webmail.check(e.hostname.as_deref(), k);
        e.verify.check(k);
        if !e.proxy_listen.is_empty() && e.trusted_proxies.is_empty() {
            k.err(
                "engine.trusted_proxies",
                "required with engine.proxy_listen: the networks edges connect from",
            );
        }
        if e.proxy_listen.is_empty() && !e.trusted_proxies.is_empty() {
            k.err(
                "engine.trusted_proxies",
                "only engine.proxy_listen takes PROXY headers, and it is empty: move the \
                 addresses edges connect to from engine.listen to engine.proxy_listen",
            );
        }
    }
}

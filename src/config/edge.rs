//! `[edge]`: the edge role's listeners, admission limits, timeouts and engine health checks.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use super::health::HealthConfig;
use super::units::{Bytes, Dur};
use super::validate::{Checker, is_domain};

/// `--role edge`: port 25, admission control, routing to engines.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// SMTP-aware listeners (the default mode). Default `127.0.0.1:2525`.
    pub listen: Vec<SocketAddr>,
    /// Layer-4 listeners (`mode = "tcp"`): PROXY v2 + bytes, routed by client geo to the nearest
    /// healthy cluster, for backends that are not ours. Default none.
    pub tcp_listen: Vec<SocketAddr>,
    /// Name in the banner and EHLO. Default: the host name.
    pub hostname: Option<String>,
    /// Kernel accept backlog. Default 1024.
    pub backlog: u32,
    /// Most concurrent client connections on this node; beyond it new clients get
    /// `421 4.3.2`. Default 10 000.
    pub max_connections: u32,
    /// Most concurrent connections from one address. Default 20.
    pub max_connections_per_ip: u32,
    /// Most concurrent connections from one /24 (v4) or /64 (v6). Default 100.
    pub max_connections_per_prefix: u32,
    /// New connections per second from one address (burst the same). Default 10.
    pub connect_rate_per_ip: u32,
    /// New connections per second from one prefix. Default 50.
    pub connect_rate_per_prefix: u32,
    /// Addresses tracked for per-address limits; the least recently used idle entries are
    /// forgotten beyond it, so a flood of sources cannot grow memory. Default 100 000.
    pub max_tracked_addresses: u32,
    /// Only these networks may connect (empty: everyone).
    pub allow: Vec<IpNetwork>,
    /// These networks are refused with `554 5.7.1` (checked before `allow`).
    pub deny: Vec<IpNetwork>,
    /// Networks exempt from the per-address and per-prefix limits (`max_connections_per_ip`,
    /// `max_connections_per_prefix`, `connect_rate_per_ip`, `connect_rate_per_prefix`): large
    /// providers and partners that send a lot from few addresses. Everyone else is still
    /// admitted; `deny`, `allow` and the node's `max_connections` still apply to them.
    /// Default none.
    pub exempt: Vec<IpNetwork>,
    /// Pause before the banner; a client that talks during it is refused (`554 5.5.1`,
    /// pregreet). Default 0 (off).
    pub greeting_delay: Dur,
    /// Idle time allowed between commands. Default 5 m (RFC 5321 4.5.3.2).
    pub command_timeout: Dur,
    /// Time for a whole DATA transfer. In layer-4 mode (`tcp_listen`), where the edge does not
    /// read the commands, a relayed connection silent both ways this long is closed. Default
    /// 10 m.
    pub data_timeout: Dur,
    /// Error replies in one client session (bad commands, refused recipients) before the edge
    /// ends it with `421 4.7.0`. Replies relayed from an engine count at the engine
    /// (`engine.max_errors`). Default 10.
    pub max_errors: u32,
    /// Longest command line, CRLF included. Default 1000 (RFC 5321 allows 512 plus extension
    /// parameters).
    pub max_line_length: Bytes,
    /// Largest message announced in EHLO SIZE (the engine enforces its own). Default 25 MiB.
    pub max_message_size: Bytes,
    /// Engine connect timeout. Default 2 s.
    pub connect_timeout: Dur,
    /// Engines tried for one client before `451 4.4.0`. Default 4.
    pub max_connect_attempts: u32,
    /// Source addresses for connections to engines (sessions and health probes); the first of
    /// the engine's family is used. Set it on an edge with several addresses so engines see
    /// the address their `trusted_proxies` lists, not whichever one the kernel picks (on
    /// loopback that is 127.0.0.1). Default none: the kernel chooses.
    pub source_addresses: Vec<IpAddr>,
    /// PEM certificate chain and key for STARTTLS. Both or neither. Relative paths are relative
    /// to the config file. A renewed pair is picked up on reload (SIGHUP, `POST /-/reload`):
    /// write both files, then reload; a pair that does not load is refused and the previous
    /// certificate stays.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// When `tls_cert` and `tls_key` are both missing at start, make a self-signed certificate
    /// there (for the host name, `localhost` and 127.0.0.1; ten years; key mode 0600) and use
    /// it: STARTTLS out of the box on a test or loopback setup. Never replaces existing files.
    /// Senders do not check MX certificates, so it encrypts; it authenticates nothing. Default
    /// false.
    pub tls_self_signed: bool,
    /// Health probe settings for engines.
    pub health: HealthConfig,
    /// Rates per client network summed across every edge of every silo (through `[shared]`).
    pub fleet_limits: FleetLimits,
}

/// `[edge.fleet_limits]`: connection and message rates per client network (/24, /64), counted
/// across the whole fleet. The local limits above stay the first line; these are checked
/// against the fleet's totals, which every edge learns once per `shared.sync_interval`, so a
/// sender can exceed one by at most what every edge admits in one interval (see
/// `src/shared/limits.rs`). 0 = off (the default). Refused clients get `421 4.7.0` (connection)
/// or `451 4.7.1` (message) as with the local limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetLimits {
    /// New connections per minute from one network, fleet-wide.
    pub connections_per_minute: u32,
    /// Messages (transactions reaching their first recipient) per minute from one network,
    /// fleet-wide.
    pub messages_per_minute: u32,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 2525))],
            tcp_listen: Vec::new(),
            hostname: None,
            backlog: 1024,
            max_connections: 10_000,
            max_connections_per_ip: 20,
            max_connections_per_prefix: 100,
            connect_rate_per_ip: 10,
            connect_rate_per_prefix: 50,
            max_tracked_addresses: 100_000,
            allow: Vec::new(),
            deny: Vec::new(),
            exempt: Vec::new(),
            greeting_delay: Dur::secs(0),
            command_timeout: Dur::secs(300),
            data_timeout: Dur::secs(600),
            max_errors: 10,
            max_line_length: Bytes(1000),
            max_message_size: Bytes(25 << 20),
            connect_timeout: Dur::secs(2),
            max_connect_attempts: 4,
            source_addresses: Vec::new(),
            tls_cert: None,
            tls_key: None,
            tls_self_signed: false,
            health: HealthConfig::default(),
            fleet_limits: FleetLimits::default(),
        }
    }
}

impl EdgeConfig {
    pub fn check(&self, k: &mut Checker) {
        k.range("edge.backlog", self.backlog.into(), 1, 65_535);
        k.range(
            "edge.max_connections",
            self.max_connections.into(),
            1,
            1_000_000,
        );
        k.range(
            "edge.max_connections_per_ip",
            self.max_connections_per_ip.into(),
            1,
            self.max_connections.max(1).into(),
        );
        k.range(
            "edge.max_connections_per_prefix",
            self.max_connections_per_prefix.into(),
            self.max_connections_per_ip.max(1).into(),
            self.max_connections.max(1).into(),
        );
        k.range(
            "edge.connect_rate_per_ip",
            self.connect_rate_per_ip.into(),
            1,
            1_000_000,
        );
        k.range(
            "edge.connect_rate_per_prefix",
            self.connect_rate_per_prefix.into(),
            self.connect_rate_per_ip.max(1).into(),
            1_000_000,
        );
        k.range(
            "edge.max_tracked_addresses",
            self.max_tracked_addresses.into(),
            1000,
            10_000_000,
        );
        k.dur("edge.greeting_delay", self.greeting_delay, 0, 60);
        k.dur("edge.command_timeout", self.command_timeout, 1000, 3600);
        k.dur("edge.data_timeout", self.data_timeout, 1000, 86_400);
        k.range("edge.max_errors", self.max_errors.into(), 1, 1000);
        k.range("edge.max_line_length", self.max_line_length.0, 512, 65_536);
        k.range(
            "edge.max_message_size",
            self.max_message_size.0,
            1024,
            2 << 30,
        );
        k.dur("edge.connect_timeout", self.connect_timeout, 10, 60);
        k.range(
            "edge.max_connect_attempts",
            self.max_connect_attempts.into(),
            1,
            100,
        );
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            k.err(
                "edge.tls_cert",
                "give both tls_cert and tls_key, or neither",
            );
        }
        if self.tls_self_signed && self.tls_cert.is_none() {
            k.err(
                "edge.tls_self_signed",
                "needs tls_cert and tls_key: the paths the certificate is made at",
            );
        }
        if let Some(h) = &self.hostname
            && !is_domain(h)
        {
            k.err("edge.hostname", format!("{h:?} is not a DNS name"));
        }
        self.health.check("edge.health", k);
        let f = &self.fleet_limits;
        k.range(
            "edge.fleet_limits.connections_per_minute",
            f.connections_per_minute.into(),
            0,
            10_000_000,
        );
        k.range(
            "edge.fleet_limits.messages_per_minute",
            f.messages_per_minute.into(),
            0,
            10_000_000,
        );
    }
}

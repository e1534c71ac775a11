//! The configuration file as operators write it: the whole file ([`Config`]) and the sections
//! every node reads — node, ops, geo, regions, silos with their clusters and engines, tenants.
//! Role sections have a file each beside this one. A serde model that refuses unknown keys.
//!
//! Every section has documented defaults (its `Default` impl), so a minimal file names only the
//! topology. Semantic checks (references, duplicates, ranges) live in `validate.rs`; this file only
//! says what may be written.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use super::units::Dur;
use super::{DnsConfig, EdgeConfig, EngineConfig, PolicyConfig, SharedConfig};

/// The whole file. Top-level sections are deserialised one by one (see `load.rs`) so that one
/// broken section does not hide the errors of the others.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Config {
    pub node: NodeConfig,
    pub ops: OpsConfig,
    pub geo: GeoConfig,
    pub regions: BTreeMap<String, RegionConfig>,
    pub silos: Vec<SiloConfig>,
    pub tenants: Vec<TenantConfig>,
    pub policies: BTreeMap<String, PolicyConfig>,
    pub edge: EdgeConfig,
    pub engine: EngineConfig,
    pub dns: DnsConfig,
    /// The fleet's shared store (Redis/Valkey); empty: local knowledge only.
    pub shared: SharedConfig,
    /// Extra files or directories of `*.toml` files holding `[[tenant]]` entries.
    pub tenant_files: Vec<PathBuf>,
}

/// Who this process is inside the topology.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// The silo this node runs in; its location answers for loopback and private clients, and
    /// it is the receiving silo for routing. Defaults to the first silo in the file.
    pub silo: Option<String>,
    /// A name for logs and `/status`; defaults to the host name.
    pub name: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpsConfig {
    /// HTTP listener for `/metrics`, `/healthz`, `/readyz`, `/status`. Default `127.0.0.1:9125`.
    pub listen: SocketAddr,
    /// How long SIGTERM waits for sessions to finish before cutting them. Default 30 s.
    pub grace_period: Dur,
    /// The operator credential: a file holding a bearer token (one line). Everything on the ops
    /// listener that changes state or shows mail — reload, drains, the queue API — answers only
    /// requests with `Authorization: Bearer <token>`; `/metrics`, `/healthz`, `/readyz` and
    /// `/status` stay open. `maildistiller queue` reads the same file. When the file does not
    /// exist, the process creates it at start (random token, mode 0600). Relative paths are
    /// relative to the config file. Default none: the operator API is closed.
    pub token_file: Option<PathBuf>,
}

impl Default for OpsConfig {
    fn default() -> Self {
        OpsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9125)),
            grace_period: Dur::secs(30),
            token_file: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeoConfig {
    /// A MaxMind DB file: GeoIP2/GeoLite2 Country or City, or the flat `country_code` shape.
    /// Relative paths are relative to the config file. Default: the database shipped with
    /// maildistiller (`geo/` in a checkout, `/usr/share/maildistiller/` when installed).
    pub database: Option<PathBuf>,
    /// How often the database file is checked for replacement (by rename). Default 60 s.
    pub reload_interval: Dur,
    /// CIDR overrides, most specific first wins; they beat the database.
    #[serde(rename = "override")]
    pub overrides: Vec<GeoOverride>,
}

impl Default for GeoConfig {
    fn default() -> Self {
        GeoConfig {
            database: None,
            reload_interval: Dur::secs(60),
            overrides: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GeoOverride {
    pub cidr: IpNetwork,
    /// ISO 3166-1 alpha-2 code; its representative location is used unless lat/lon are given.
    pub country: String,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegionConfig {
    /// Human name, e.g. "United Kingdom".
    pub name: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SiloConfig {
    pub name: String,
    /// Public DNS name of this silo's edges, e.g. `lon1.in.example.net`.
    pub hostname: String,
    pub lat: f64,
    pub lon: f64,
    /// Public edge addresses (v4 and v6) that GeoDNS hands out for this silo.
    #[serde(default)]
    pub edge_addresses: Vec<IpAddr>,
    /// SMTP port of the edges (for GeoDNS health probes). Default 25.
    #[serde(default = "default_smtp_port")]
    pub edge_port: u16,
    /// Operator drain: the silo leaves DNS answers and takes no new routed sessions.
    #[serde(default)]
    pub drain: bool,
    /// Egress: the source ranges this silo's engines deliver from. Tenants allow port 25 only
    /// from these; the SPF record and `maildistiller egress` are generated from them.
    #[serde(default)]
    pub egress: Vec<IpNetwork>,
    #[serde(default, rename = "cluster")]
    pub clusters: Vec<ClusterConfig>,
}

impl ProxyProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyProtocol::V2 => "v2",
            ProxyProtocol::V1 => "v1",
            ProxyProtocol::None => "none",
        }
    }
}

fn default_smtp_port() -> u16 {
    25
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub name: String,
    pub region: String,
    #[serde(default, rename = "engine")]
    pub engines: Vec<EngineRef>,
}

/// How the edge introduces a client to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    /// PROXY protocol v2 with our TLVs (session id, tenant, TLS, country). Our engines.
    #[default]
    V2,
    V1,
    /// Plain SMTP (e.g. `smtp-sink`); the backend sees the edge's address.
    None,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EngineRef {
    /// SMTP address the edges connect to.
    pub address: SocketAddr,
    /// Ops address (`/readyz` load reports). Optional.
    pub ops: Option<SocketAddr>,
    /// Replication address (`engine.shadow.listen` of that engine): where the cluster's other
    /// engines send it copies of their messages. Loopback or private addresses only. Optional:
    /// an engine without one takes no copies.
    #[serde(default)]
    pub shadow: Option<SocketAddr>,
    /// Relative share of new sessions. Default 1.
    #[serde(default = "one")]
    pub weight: u32,
    /// Most concurrent sessions an edge sends it. Default 500. When every engine of a
    /// recipient's route is at its limit, the edge also turns away its next new connections
    /// at the banner (`421 4.3.2`, `edge/admission.rs`): under overload, the lower this is
    /// (down to the sessions the engine serves at full speed), the faster the admitted ones.
    #[serde(default = "default_engine_max")]
    pub max_connections: u32,
    #[serde(default)]
    pub proxy: ProxyProtocol,
    /// Operator drain: no new sessions, current ones finish.
    #[serde(default)]
    pub drain: bool,
}

fn one() -> u32 {
    1
}
fn default_engine_max() -> u32 {
    500
}

/// What a tenant's mail may do when no cluster in its regions can take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Failover {
    /// Data residency: never processed outside the tenant's regions (senders get 4xx and retry).
    #[default]
    RegionOnly,
    /// After the tenant's regions, any healthy cluster, nearest first.
    Any,
}

impl Failover {
    pub fn as_str(self) -> &'static str {
        match self {
            Failover::RegionOnly => "region-only",
            Failover::Any => "any",
        }
    }
}

/// How a tenant's allowed regions are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// `regions` in the order written.
    #[default]
    Ordered,
    /// Any allowed region, the cluster nearest the receiving silo first.
    NearestToSilo,
    /// Any allowed region, the cluster nearest the sender first.
    NearestToSender,
}

impl Placement {
    pub fn as_str(self) -> &'static str {
        match self {
            Placement::Ordered => "ordered",
            Placement::NearestToSilo => "nearest-to-silo",
            Placement::NearestToSender => "nearest-to-sender",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Short stable id: lowercase letters, digits and `-`.
    pub id: String,
    pub name: Option<String>,
    /// Recipient domains (case-insensitive).
    pub domains: Vec<String>,
    /// Also accept any subdomain of the listed domains.
    #[serde(default)]
    pub subdomains: bool,
    /// Allowed regions in order of preference. Empty: any region, nearest to the client.
    #[serde(default)]
    pub regions: Vec<String>,
    #[serde(default)]
    pub failover: Failover,
    /// How allowed regions are chosen among: in the listed order (default), or — for tenants
    /// with offices in several regions — nearest first, to the receiving silo or to the sender.
    #[serde(default)]
    pub placement: Placement,
    /// The tenant's own mail servers, tried in order: `host[:port]` (port 25 by default).
    pub delivery: Vec<String>,
    /// Policy name (see `[policy.NAME]`); default `default`.
    #[serde(default = "default_policy")]
    pub policy: String,
    /// Webmail users.
    #[serde(default, rename = "user")]
    pub users: Vec<UserConfig>,
    /// Known recipients (full addresses, or local parts meaning every domain of the tenant).
    /// Alone, it is the whole truth: others get `550 5.1.1` (at the edge already). With
    /// `recipients_file` the two are one list (the union); with `verify = "call-ahead"` an
    /// address in neither is asked of the tenant's server. Empty, with neither of the others:
    /// every address of the domains is accepted.
    #[serde(default)]
    pub recipients: Vec<String>,
    /// A file of known recipients, one `local@domain` or `@domain` (every address of that
    /// domain) a line; `#` starts a comment, blank lines are ignored; domains must be the
    /// tenant's. Read by engines only, checked by `maildistiller check`, looked at every
    /// `engine.verify.reload_interval` and swapped in whole when it changed; a file that
    /// breaks keeps the list last read (logged, `maildistiller_engine_recipients_file_reload_total
    /// {result="error"}`). Relative paths are relative to the file that defines the tenant.
    /// Default none.
    pub recipients_file: Option<PathBuf>,
    /// How an address in neither `recipients` nor `recipients_file` is judged: `none` (default:
    /// unknown when a list is set, else accepted) or `call-ahead` (the engine asks the tenant's
    /// server with a RCPT probe and caches the answer; see `[engine.verify]`).
    #[serde(default)]
    pub verify: RecipientVerify,
    /// TLS when delivering to the tenant's servers: `opportunistic` (default), `required`,
    /// `never` (see [`DeliveryTls`]).
    #[serde(default)]
    pub tls: DeliveryTls,
    /// A PEM file of CA certificates the tenant's servers' certificates are checked against
    /// (a private CA), instead of the system's trust anchors. Relative to the file that
    /// defines the tenant. Default none: the system's (`/etc/ssl/certs`).
    pub tls_ca: Option<PathBuf>,
    /// Pinned keys: base64 SHA-256 hashes of the SubjectPublicKeyInfo of the tenant's servers'
    /// certificates. When set, delivery needs TLS and a certificate whose key matches one of
    /// them; a match stands in for the CA check (so a self-signed server can be pinned). List
    /// the next key before rotating. Default none.
    #[serde(default)]
    pub tls_pin: Vec<String>,
    /// Most concurrent delivery connections to this tenant's servers (per engine). Default:
    /// `engine.delivery.connections_per_destination`.
    pub delivery_connections: Option<u32>,
    /// Most messages per second delivered to this tenant (per engine), so a recovering server
    /// is not flooded. Default: unlimited.
    pub delivery_rate: Option<u32>,
}

/// How a tenant's recipients outside its lists are judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecipientVerify {
    /// By the lists alone (none set: every address accepted).
    #[default]
    None,
    /// By a RCPT probe to the tenant's server, answers cached.
    CallAhead,
}

impl RecipientVerify {
    pub fn as_str(self) -> &'static str {
        match self {
            RecipientVerify::None => "none",
            RecipientVerify::CallAhead => "call-ahead",
        }
    }
}

impl TenantConfig {
    /// Makes `tls_ca` and `recipients_file` absolute against `dir`, the directory of the file
    /// defining the tenant.
    pub fn resolve_paths(&mut self, dir: &std::path::Path) {
        self.tls_ca = self.tls_ca.as_ref().map(|p| dir.join(p));
        self.recipients_file = self.recipients_file.as_ref().map(|p| dir.join(p));
    }
}

/// STARTTLS towards a tenant's mail server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryTls {
    /// Use STARTTLS when offered, without certificate checks (as MTAs do); plain when not
    /// offered, refused, or when the handshake fails (then once more without it).
    #[default]
    Opportunistic,
    /// Require STARTTLS with a certificate valid for the host name (the system's trust anchors
    /// or `tls_ca`). Not offered, a failed handshake or a certificate that does not verify:
    /// the mail is deferred with the reason (`queue show`), never sent in clear.
    Required,
    /// Never use TLS: for servers whose STARTTLS is broken. `none`, the word before, is read
    /// as `never`.
    #[serde(alias = "none")]
    Never,
}

impl DeliveryTls {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryTls::Opportunistic => "opportunistic",
            DeliveryTls::Required => "required",
            DeliveryTls::Never => "never",
        }
    }
}

fn default_policy() -> String {
    "default".to_owned()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub address: String,
    /// An argon2 PHC string; never a plain password.
    pub password_hash: String,
    #[serde(default)]
    pub admin: bool,
}

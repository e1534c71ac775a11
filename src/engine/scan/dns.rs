//! The resolver the scanners use for SPF, DKIM, DMARC and DNS lists: mail-auth's
//! `MessageAuthenticator` over a hickory resolver. The only file of the scanners that names
//! hickory types (through mail-auth's re-export, so there is one hickory version in the tree);
//! `src/dns/` is the GeoDNS server and does not share this.
//!
//! Lifecycle: one authenticator per distinct `[policy.NAME.dns]` per config snapshot (see
//! `check::Interner`); its answer cache (hickory's, bounded by `CACHE_ENTRIES`) lives as long as
//! the snapshot.

use mail_auth::MessageAuthenticator;
use mail_auth::hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts,
};
use mail_auth::hickory_resolver::system_conf::read_system_conf;

use crate::config::policy::LookupConfig;

/// Answers cached per authenticator.
const CACHE_ENTRIES: u64 = 4096;

/// A resolver config that asks only `addr` (UDP, then TCP on truncation). Delivery's MTA-STS
/// lookups use it too.
pub fn one_server(addr: std::net::SocketAddr) -> ResolverConfig {
    let mut udp = ConnectionConfig::udp();
    udp.port = addr.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = addr.port();
    let ns = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
    ResolverConfig::from_name_servers(vec![ns])
}

/// Builds the authenticator for one `[policy.NAME.dns]`.
pub fn authenticator(cfg: &LookupConfig) -> Result<MessageAuthenticator, String> {
    let (config, mut opts) = match cfg.resolver {
        Some(addr) => (one_server(addr), ResolverOpts::default()),
        None => read_system_conf()
            .map_err(|e| format!("cannot read the system resolver configuration: {e}"))?,
    };
    opts.timeout = cfg.timeout.get();
    // hickory's `attempts` is retries after the first try (its `RetryDnsHandle`); ours counts
    // every try, so `attempts = 1` sends one query.
    opts.attempts = (cfg.attempts as usize).saturating_sub(1);
    opts.cache_size = CACHE_ENTRIES;
    opts.negative_min_ttl = Some(cfg.negative_ttl.get());
    MessageAuthenticator::new(config, opts).map_err(|e| format!("cannot build a resolver: {e}"))
}

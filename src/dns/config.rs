//! `[dns]`: the GeoDNS role's settings.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::config::Dur;
use crate::config::validate::{Checker, is_domain};
use crate::health::HealthConfig;

/// `--role dns`: the authoritative GeoDNS server.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// UDP and TCP listeners. Default `127.0.0.1:5353`.
    pub listen: Vec<SocketAddr>,
    /// The zone served, e.g. `in.example.net`.
    pub zone: String,
    /// Names answered with the nearest healthy silo's edges (relative to the zone or absolute).
    pub service_names: Vec<String>,
    /// TTL of geo answers. Default 60 s.
    pub ttl: Dur,
    /// Health probe settings for silo edges.
    pub health: HealthConfig,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 5353))],
            zone: "in.example.net".to_owned(),
            service_names: vec!["mx".to_owned()],
            ttl: Dur::secs(60),
            health: HealthConfig::default(),
        }
    }
}

impl DnsConfig {
    pub fn check(&self, k: &mut Checker) {
        if !is_domain(&self.zone) {
            k.err("dns.zone", format!("{:?} is not a DNS name", self.zone));
        }
        for (i, n) in self.service_names.iter().enumerate() {
            let ok = n.split('.').all(|l| !l.is_empty() && l.len() <= 63);
            if !ok {
                k.err(format!("dns.service_names[{i}]"), format!("{n:?} is not a DNS name"));
            }
        }
        k.dur("dns.ttl", self.ttl, 0, 86_400);
        self.health.check("dns.health", k);
    }
}

//! Delivery TLS: what a destination's connections must achieve ([`Plan`]), built from a
//! tenant's `tls`, `tls_ca` and `tls_pin` or from a domain's MTA-STS policy, and the checks of
//! those settings that need the TLS code (`check`, run with every config load).
//!
//! | plan | STARTTLS | certificate | when it cannot be met |
//! |---|---|---|---|
//! | `never` | not used | — | — |
//! | `opportunistic` | when offered; plain when not, refused, or the handshake fails | any | — |
//! | `required` | must be offered and succeed | verifies for the host name (system roots or `tls_ca`) | deferred, reason in `queue show`; never clear text |
//! | pinned (`tls_pin`) | must be offered and succeed | its key matches a pin | as `required` |
//! | MTA-STS `enforce` | must | verifies for the MX name (system roots) | as `required` |
//! | MTA-STS `testing` | as opportunistic | judged, and a failure only reported | — |

use std::sync::Arc;

use crate::config::{Config, ConfigError, DeliveryTls};
use crate::tls::client::{self, Facts, Policy};
use crate::topology::TenantTls;

/// What one destination's connections must achieve.
#[derive(Debug, Clone)]
pub struct Plan {
    pub mode: DeliveryTls,
    /// The certificate checks (roots, pins) and whether they must pass.
    pub policy: Policy,
    /// Where a requirement comes from, for reasons and logs: `tls = "required"`, `tls_pin`,
    /// `MTA-STS enforce`.
    pub source: &'static str,
    /// MTA-STS `testing`: judge as `required` would, report a failure, deliver anyway.
    pub report_only: bool,
}

impl Plan {
    /// STARTTLS when offered, no checks: the default for tenants and for mail sent by MX.
    pub fn opportunistic() -> Plan {
        Plan {
            mode: DeliveryTls::Opportunistic,
            policy: Policy {
                roots: client::system_roots(),
                require_verified: false,
                pins: Vec::new(),
            },
            source: "opportunistic",
            report_only: false,
        }
    }

    /// Verified TLS for a destination found by MX under an MTA-STS policy in `enforce` mode.
    pub fn mta_sts_enforce() -> Plan {
        Plan {
            mode: DeliveryTls::Required,
            policy: Policy {
                roots: client::system_roots(),
                require_verified: true,
                pins: Vec::new(),
            },
            source: "MTA-STS enforce",
            report_only: false,
        }
    }

    /// MTA-STS `testing`: opportunistic, with failures reported.
    pub fn mta_sts_testing() -> Plan {
        Plan {
            source: "MTA-STS testing",
            report_only: true,
            ..Plan::opportunistic()
        }
    }

    /// The plan of a tenant's settings. A `tls_ca` that no longer loads (changed on disk since
    /// the config was checked) fails closed: nothing verifies, so `required` mail waits.
    pub fn for_tenant(t: &TenantTls) -> Plan {
        let roots = match &t.ca {
            None => client::system_roots(),
            Some(path) => client::roots_from_pem(path).unwrap_or_else(|e| {
                tracing::error!(error = %e, "tenant tls_ca does not load: no certificate verifies");
                Arc::new(rustls::RootCertStore::empty())
            }),
        };
        let pins: Vec<[u8; 32]> = t
            .pins
            .iter()
            .filter_map(|p| client::parse_pin(p).ok())
            .collect();
        let (mode, source) = match (t.mode, pins.is_empty()) {
            (DeliveryTls::Never, _) => (DeliveryTls::Never, "tls = \"never\""),
            (_, false) => (DeliveryTls::Required, "tls_pin"),
            (DeliveryTls::Required, true) => (DeliveryTls::Required, "tls = \"required\""),
            (DeliveryTls::Opportunistic, true) => (DeliveryTls::Opportunistic, "opportunistic"),
        };
        Plan {
            mode,
            policy: Policy {
                roots,
                require_verified: mode == DeliveryTls::Required,
                pins,
            },
            source,
            report_only: false,
        }
    }

    /// Whether mail may go over a connection without TLS.
    pub fn requires_tls(&self) -> bool {
        self.mode == DeliveryTls::Required
    }

    /// For MTA-STS `testing`: what `enforce` would have refused about this connection.
    pub fn would_refuse(&self, facts: Option<&Facts>) -> Option<String> {
        if !self.report_only {
            return None;
        }
        match facts {
            None => Some("no TLS".into()),
            Some(f) if !f.verified => Some(format!(
                "certificate does not verify: {}",
                f.unverified_because.as_deref().unwrap_or("unknown")
            )),
            Some(_) => None,
        }
    }
}

/// The `result` label of `maildistiller_engine_delivery_tls_total` for mail sent over a
/// connection with these facts (`None`: in clear).
pub fn result_label(facts: Option<&Facts>) -> &'static str {
    facts.map_or("plain", Facts::result)
}

/// The TLS facts of a delivery for its log line.
pub fn describe(facts: Option<&Facts>) -> String {
    match facts {
        None => "none".into(),
        Some(f) => format!(
            "{} {} verified={} pinned={}",
            f.version, f.cipher, f.verified, f.pinned
        ),
    }
}

/// The tenants' TLS settings that need the TLS code to judge: every pin decodes to a SHA-256,
/// every `tls_ca` file holds a CA certificate.
pub fn check(c: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for t in &c.tenants {
        for (i, pin) in t.tls_pin.iter().enumerate() {
            if let Err(e) = client::parse_pin(pin) {
                errors.push(ConfigError::new(
                    format!("tenant[{}].tls_pin[{i}]", t.id),
                    e,
                ));
            }
        }
        if let Some(ca) = &t.tls_ca
            && let Err(e) = client::roots_from_pem(ca)
        {
            errors.push(ConfigError::new(
                format!("tenant[{}].tls_ca", t.id),
                e.to_string(),
            ));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_settings_become_plans() {
        let t = |mode, pins: &[&str]| TenantTls {
            mode,
            ca: None,
            pins: pins.iter().map(|p| p.to_string()).collect(),
        };
        let p = Plan::for_tenant(&t(DeliveryTls::Opportunistic, &[]));
        assert!(!p.requires_tls() && !p.policy.require_verified);
        let p = Plan::for_tenant(&t(DeliveryTls::Required, &[]));
        assert!(p.requires_tls() && p.policy.require_verified);
        assert_eq!(p.source, "tls = \"required\"");
        // A pin makes TLS mandatory whatever `tls` says (short of `never`, refused by validation).
        let pin = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
        let p = Plan::for_tenant(&t(DeliveryTls::Opportunistic, &[pin]));
        assert!(p.requires_tls() && p.policy.pins.len() == 1 && p.source == "tls_pin");
        assert_eq!(
            Plan::for_tenant(&t(DeliveryTls::Never, &[])).mode,
            DeliveryTls::Never
        );
        // MTA-STS testing judges like enforce but enforces nothing.
        let p = Plan::mta_sts_testing();
        assert!(!p.requires_tls() && !p.policy.require_verified);
        assert_eq!(p.would_refuse(None).as_deref(), Some("no TLS"));
        assert!(Plan::mta_sts_enforce().requires_tls());
    }
}

//! MX lookups for mail to domains that are not tenants (DSNs to senders) when no
//! `engine.delivery.relay` is set: RFC 5321 5.1 — the domain's MX records, lowest preference
//! first (equal preferences shuffled); only when the domain has no MX at all, the domain itself
//! (implicit MX); a null MX (RFC 7505, `0 .`) means the domain takes no mail.
//!
//! The only delivery file naming hickory types (through mail-auth's re-export, so the tree has
//! one hickory version). A resolver is built per lookup from the system configuration: DSNs
//! are rare, and a resolver kept across runtimes (tests) or resolv.conf changes would go stale.

use mail_auth::hickory_resolver::TokioResolver;
use mail_auth::hickory_resolver::proto::rr::RData;

/// Longest an MX lookup may take, whatever the resolver's settings.
const LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Where mail for a domain goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exchanges {
    /// Host names to try in this order.
    Hosts(Vec<String>),
    /// RFC 7505 null MX: the domain accepts no mail.
    Null,
    /// The lookup failed (timeout, SERVFAIL): try again later.
    Unknown(String),
}

/// Looks up the exchanges of `domain`.
pub async fn exchanges(domain: &str) -> Exchanges {
    let resolver = match TokioResolver::builder_tokio().and_then(|b| b.build()) {
        Ok(r) => r,
        Err(e) => return Exchanges::Unknown(format!("no resolver: {e}")),
    };
    let fqdn = format!("{}.", domain.trim_end_matches('.'));
    // The resolver's own timeouts and attempts bound this already; this is the backstop.
    let lookup = tokio::time::timeout(LOOKUP_TIMEOUT, resolver.mx_lookup(fqdn.as_str())).await;
    let Ok(lookup) = lookup else {
        return Exchanges::Unknown("MX lookup timed out".to_owned());
    };
    match lookup {
        Ok(lookup) => {
            let mut mx: Vec<(u16, u32, String)> = lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(m) => Some((
                        m.preference,
                        fastrand::u32(..),
                        m.exchange.to_ascii().trim_end_matches('.').to_owned(),
                    )),
                    _ => None,
                })
                .collect();
            if mx.is_empty() {
                return Exchanges::Hosts(vec![domain.to_owned()]);
            }
            order(&mut mx)
        }
        Err(e) if e.is_no_records_found() => Exchanges::Hosts(vec![domain.to_owned()]),
        Err(e) => Exchanges::Unknown(e.to_string()),
    }
}

/// Orders `(preference, tiebreak, host)` records into what to try; an empty set means no MX.
fn order(mx: &mut Vec<(u16, u32, String)>) -> Exchanges {
    if mx.len() == 1 && mx[0].2.is_empty() {
        return Exchanges::Null;
    }
    mx.retain(|m| !m.2.is_empty());
    mx.sort();
    Exchanges::Hosts(mx.drain(..).map(|m| m.2).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_preference_first_and_null_mx() {
        let mut mx = vec![
            (20, 1, "b.example".to_owned()),
            (10, 9, "a.example".to_owned()),
        ];
        assert_eq!(
            order(&mut mx),
            Exchanges::Hosts(vec!["a.example".into(), "b.example".into()])
        );
        let mut null = vec![(0, 0, String::new())];
        assert_eq!(order(&mut null), Exchanges::Null);
    }
}

//! `[engine.verify]`: how an engine verifies recipients before it answers `250` — the bounds
//! and lifetimes of the call-ahead cache, the probe's deadline and sender, how often recipient
//! files are looked at. Which tenants are verified, and how, is theirs to say
//! (`tenant.recipients_file`, `tenant.verify`, in `model.rs`); what the engine does with it is
//! `crate::engine::verify`.
//!
//! The lifetimes follow Postfix's `address_verify_*` defaults: a known recipient is believed
//! for 31 days and asked again after 7, an unknown one is believed for 3 hours.

use serde::{Deserialize, Serialize};

use super::units::Dur;
use super::validate::Checker;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerifyConfig {
    /// Most call-ahead answers remembered per engine, for each kind: up to `cache_size` known
    /// recipients and, apart, up to `cache_size` unknown ones, each set evicting its least
    /// recently used entry when full (so a flood of unknown addresses, a dictionary attack,
    /// never pushes known recipients out). About 150 bytes an entry. Default 100000.
    pub cache_size: u32,
    /// How long a recipient the tenant's server accepted is believed, also while that server
    /// is down (mail for it is then held). Default 31 d.
    pub positive_ttl: Dur,
    /// After this long a known recipient is asked again at its next use; the cached answer
    /// stands while the server does not answer. At most `positive_ttl`. Default 7 d.
    pub positive_refresh: Dur,
    /// How long a recipient the tenant's server refused (5xx) is believed. Default 3 h.
    pub negative_ttl: Dur,
    /// The whole probe (connect, greeting, EHLO, MAIL, RCPT) must answer within this, or the
    /// sender gets `451 4.4.3` (the cached answer, if any, decides instead). Keep it well under
    /// the senders' RCPT timeout (RFC 5321: 5 min) and `edge.command_timeout`. Default 10 s.
    pub timeout: Dur,
    /// The probe's `MAIL FROM`. Default empty: the null sender `<>`, which every server must
    /// accept (RFC 5321 4.5.5: it carries bounces); name an address here for a tenant server
    /// that refuses `<>` in probes. The probe never sends DATA.
    pub sender: String,
    /// How often each `recipients_file` is looked at (size, mtime, inode); a changed file is
    /// read again and swapped in whole. Default 10 s.
    pub reload_interval: Dur,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig {
            cache_size: 100_000,
            positive_ttl: Dur::secs(31 * 86_400),
            positive_refresh: Dur::secs(7 * 86_400),
            negative_ttl: Dur::secs(3 * 3600),
            timeout: Dur::secs(10),
            sender: String::new(),
            reload_interval: Dur::secs(10),
        }
    }
}

impl VerifyConfig {
    pub fn check(&self, k: &mut Checker) {
        k.range(
            "engine.verify.cache_size",
            self.cache_size.into(),
            1,
            10_000_000,
        );
        k.dur(
            "engine.verify.positive_ttl",
            self.positive_ttl,
            100,
            365 * 86_400,
        );
        k.dur(
            "engine.verify.positive_refresh",
            self.positive_refresh,
            100,
            365 * 86_400,
        );
        if self.positive_refresh.get() > self.positive_ttl.get() {
            k.err(
                "engine.verify.positive_refresh",
                format!(
                    "{} is longer than engine.verify.positive_ttl ({}): an answer is forgotten before it is refreshed",
                    self.positive_refresh, self.positive_ttl
                ),
            );
        }
        k.dur(
            "engine.verify.negative_ttl",
            self.negative_ttl,
            100,
            30 * 86_400,
        );
        k.dur("engine.verify.timeout", self.timeout, 100, 120);
        k.dur(
            "engine.verify.reload_interval",
            self.reload_interval,
            100,
            86_400,
        );
        let s = &self.sender;
        let shaped = s.is_empty()
            || s.rsplit_once('@').is_some_and(|(l, d)| {
                !l.is_empty()
                    && super::validate::is_domain(d)
                    && !s
                        .contains(|c: char| c.is_whitespace() || c.is_control() || "<>".contains(c))
            });
        if !shaped {
            k.err(
                "engine.verify.sender",
                format!("{s:?} is not an address (local@domain), nor empty for <>"),
            );
        }
    }
}

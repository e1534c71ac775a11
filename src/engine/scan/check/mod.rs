//! The scanners, each a module behind one small trait, [`Check`]: given a decoded message, return
//! findings (and headers to add) or say that it could not do its job.
//!
//! | module | name | what |
//! |---|---|---|
//! | `auth` | `auth` | SPF, DKIM, DMARC (mail-auth), `Authentication-Results` |
//! | `dnsbl` | `dnsbl` | DNS block/allow lists on the client address, URI block lists |
//! | `content` | `content` | GTUBE, header/subject/body/URL rules, blocked URL domains, size rules, heuristics |
//! | `attachments` | `attachments` | blocked types (by content) and extensions, name/content mismatch, encrypted archives, macros |
//! | `antivirus` | `antivirus` | EICAR, built in |
//! | `clamd` | `clamd` | clamd over INSTREAM (TCP or Unix socket) |
//! | `gateway` | `gateway` | our first line: the client's FCrDNS, envelope vs header, link domains, undisclosed recipients, new sender domains |
//! | `rspamd` | `rspamd` | rspamd over HTTP `/checkv2`; its controller's learning calls |
//! | `learnt` | `learnt` | our own classifier, trained by users' and operators' lessons (`engine::learn::model`) |
//! | `outbreak` | `outbreak` | fingerprints counted fleet-wide (`crate::shared`), the operator's intelligence feed |
//!
//! Lifecycle: checks are built once per config snapshot by [`build`] (regexes compiled, clients
//! configured); checks with external state (resolvers, clamd, rspamd) are shared between the
//! policies that configure them identically, so a shadow policy reuses the live one's answer
//! for the same message. The orchestrator (`scan/mod.rs`) runs a policy's checks concurrently
//! under the message's deadline.

mod antivirus;
mod attachments;
mod auth;
mod clamd;
mod content;
mod dnsbl;
mod gateway;
mod http;
mod json;
mod learnt;
pub mod outbreak;
mod rspamd;

use std::collections::HashMap;
use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use super::Arrival;
use super::decode::Decoded;
use crate::config::ConfigError;
use crate::config::policy::{OnFailure, PolicyConfig};
use crate::engine::policy::finding::{CheckError, Outcome};

pub use clamd::ClamdAddr;
pub use content::{Url, extract_urls};
pub use rspamd::{LearnAs, Learned, RspamdController};

/// A message as the scanners see it.
pub struct Subject<'m> {
    pub envelope: &'m Arrival<'m>,
    /// Header and body as received (CRLF, dot-unstuffed).
    pub raw: &'m [u8],
    pub decoded: &'m Decoded<'m>,
    /// URLs of the decoded text (bounded), extracted once for every scanner.
    pub urls: &'m [Url],
    /// When the message's time budget ends; checks must answer before it.
    pub deadline: Instant,
}

/// One scanner.
#[async_trait::async_trait]
pub trait Check: Send + Sync + fmt::Debug {
    /// Short stable name, used in findings, failures, logs and metrics.
    fn name(&self) -> &'static str;

    /// What the policy configured for when this check fails. Built-in checks never fail.
    fn on_failure(&self) -> OnFailure {
        OnFailure::Accept
    }

    async fn check(&self, subject: &Subject<'_>) -> Result<Outcome, CheckError>;
}

/// Identity of a shared check instance, for remembering its answer within one message.
pub fn identity(check: &Arc<dyn Check>) -> usize {
    Arc::as_ptr(check).cast::<()>() as usize
}

/// Shares checks with external state between policies of one snapshot. Keys are the
/// serialised settings of the check.
#[derive(Default)]
pub struct Interner {
    shared: HashMap<String, Arc<dyn Check>>,
    resolvers: HashMap<String, Arc<mail_auth::MessageAuthenticator>>,
    /// What the fleet knows (the process's client, or local knowledge only).
    fleet: Option<Arc<crate::shared::Fleet>>,
    /// The engine's spool directory, where the learnt model lives (none: no `learnt` check).
    spool_dir: Option<std::path::PathBuf>,
}

impl Interner {
    /// Checks of this snapshot will use `fleet` (the process's shared-store client).
    pub fn with_fleet(fleet: Arc<crate::shared::Fleet>) -> Interner {
        Interner {
            fleet: Some(fleet),
            ..Interner::default()
        }
    }

    /// The `learnt` check reads the model under this spool directory.
    pub fn set_spool_dir(&mut self, dir: &std::path::Path) {
        self.spool_dir = Some(dir.to_path_buf());
    }

    fn fleet(&mut self) -> Arc<crate::shared::Fleet> {
        self.fleet
            .get_or_insert_with(crate::shared::Fleet::local)
            .clone()
    }
}

impl Interner {
    fn get_or(
        &mut self,
        key: String,
        make: impl FnOnce() -> Result<Arc<dyn Check>, String>,
    ) -> Result<Arc<dyn Check>, String> {
        if let Some(c) = self.shared.get(&key) {
            return Ok(c.clone());
        }
        let c = make()?;
        self.shared.insert(key, c.clone());
        Ok(c)
    }

    fn resolver(
        &mut self,
        cfg: &crate::config::policy::LookupConfig,
    ) -> Result<Arc<mail_auth::MessageAuthenticator>, String> {
        let key = toml::to_string(cfg).unwrap_or_default();
        if let Some(r) = self.resolvers.get(&key) {
            return Ok(r.clone());
        }
        let r = Arc::new(super::dns::authenticator(cfg)?);
        self.resolvers.insert(key, r.clone());
        Ok(r)
    }
}

/// The checks a (resolved) policy runs, in a stable order. Errors name the config path.
pub fn build(
    path: &str,
    p: &PolicyConfig,
    authserv_id: &str,
    interner: &mut Interner,
) -> Result<Vec<Arc<dyn Check>>, Vec<ConfigError>> {
    let mut checks: Vec<Arc<dyn Check>> = Vec::new();
    let mut errors = Vec::new();
    let s = &p.scanners;
    // rspamd checks the client's reverse DNS itself (RDNS_NONE, HFILTER_HOSTNAME_UNKNOWN): with
    // it on, our FCrDNS would count the same fact twice in the combined score, so it stays off.
    let fcrdns = s.gateway && p.gateway.fcrdns && !s.rspamd;
    let wants_dns = fcrdns
        || (s.auth)
        || (s.dnsbl && !(p.dnsbl.is_empty() && p.dnswl.is_empty() && p.urls.uribl.is_empty()));
    let resolver = if wants_dns {
        match interner.resolver(&p.dns) {
            Ok(r) => Some(r),
            Err(e) => {
                errors.push(ConfigError::new(format!("{path}.dns"), e));
                None
            }
        }
    } else {
        None
    };
    if s.auth
        && let Some(r) = &resolver
    {
        let key = format!(
            "auth {authserv_id} {}",
            toml::to_string(&p.dns).unwrap_or_default()
        );
        let r = r.clone();
        let id = authserv_id.to_owned();
        if let Ok(c) = interner.get_or(key, || Ok(Arc::new(auth::AuthCheck::new(r, id)))) {
            checks.push(c);
        }
    }
    if s.dnsbl
        && let Some(r) = &resolver
        && let Some(c) = dnsbl::DnsblCheck::new(r.clone(), p)
    {
        checks.push(Arc::new(c));
    }
    if s.gateway {
        checks.push(Arc::new(gateway::GatewayCheck::new(
            &p.gateway,
            resolver.clone().filter(|_| fcrdns),
        )));
    }
    if s.content {
        match content::ContentCheck::new(path, p) {
            Ok(c) => checks.push(Arc::new(c)),
            Err(e) => errors.extend(e),
        }
    }
    if s.attachments {
        checks.push(Arc::new(attachments::AttachmentCheck::new(&p.attachments)));
    }
    if s.antivirus {
        checks.push(Arc::new(antivirus::Eicar));
    }
    if s.clamd {
        let key = format!("clamd {}", toml::to_string(&p.clamd).unwrap_or_default());
        match interner.get_or(key, || {
            clamd::ClamdCheck::new(&p.clamd).map(|c| Arc::new(c) as Arc<dyn Check>)
        }) {
            Ok(c) => checks.push(c),
            Err(e) => errors.push(ConfigError::new(format!("{path}.clamd.address"), e)),
        }
    }
    if s.rspamd {
        let key = format!("rspamd {}", toml::to_string(&p.rspamd).unwrap_or_default());
        match interner.get_or(key, || {
            rspamd::RspamdCheck::new(&p.rspamd).map(|c| Arc::new(c) as Arc<dyn Check>)
        }) {
            Ok(c) => checks.push(c),
            Err(e) => errors.push(ConfigError::new(format!("{path}.rspamd.address"), e)),
        }
    }
    if s.learnt
        && let Some(dir) = interner.spool_dir.clone()
    {
        let key = format!("learnt {}", toml::to_string(&p.learnt).unwrap_or_default());
        if let Ok(c) = interner.get_or(key, || {
            Ok(Arc::new(learnt::LearntCheck::new(&dir, &p.learnt)))
        }) {
            checks.push(c);
        }
    }
    if s.outbreak {
        let key = format!(
            "outbreak {} {}",
            toml::to_string(&p.outbreak).unwrap_or_default(),
            p.actions.blocklist.as_str()
        );
        let fleet = interner.fleet();
        if let Ok(c) = interner.get_or(key, || {
            Ok(Arc::new(outbreak::OutbreakCheck::new(
                &p.outbreak,
                p.actions.blocklist,
                fleet,
            )))
        }) {
            checks.push(c);
        }
    }
    if errors.is_empty() {
        Ok(checks)
    } else {
        Err(errors)
    }
}

/// Validation of the parts of a policy that only the scanners understand (patterns, addresses),
/// without building anything that touches the system.
pub fn check_config(path: &str, p: &PolicyConfig, errors: &mut Vec<ConfigError>) {
    if let Err(e) = content::ContentCheck::new(path, p) {
        errors.extend(e);
    }
    if let Err(e) = ClamdAddr::parse(&p.clamd.address) {
        errors.push(ConfigError::new(format!("{path}.clamd.address"), e));
    }
    if let Err(e) = http::HostPort::parse(&p.rspamd.address) {
        errors.push(ConfigError::new(format!("{path}.rspamd.address"), e));
    }
}

/// Polls every future to completion concurrently, in place (no spawning: the futures borrow
/// the message). Returns outputs in input order.
pub async fn join_all<'f, T>(
    mut futs: Vec<Pin<Box<dyn Future<Output = T> + Send + 'f>>>,
) -> Vec<T> {
    let mut out: Vec<Option<T>> = futs.iter().map(|_| None).collect();
    poll_fn(|cx| {
        let mut pending = false;
        for (slot, f) in out.iter_mut().zip(futs.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *slot = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

//! SPF, DKIM and DMARC with mail-auth, and our `Authentication-Results` header (RFC 8601).
//!
//! SPF checks the HELO identity and then the envelope sender (RFC 7208: the null sender is
//! checked as `postmaster@HELO`); DKIM verifies every signature; DMARC aligns both with the
//! header From. Each gives one finding named by its result (`spf.fail`, `dkim.pass`,
//! `dmarc.fail`…); a DMARC failure's category follows the author domain's published policy,
//! so the policy's `dmarc_reject` / `dmarc_quarantine` actions can honour it. DNS trouble is a
//! `temperror` result, never a scanner failure.

use std::sync::Arc;

use mail_auth::dmarc::Policy as DmarcPolicy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, DmarcResult,
    MessageAuthenticator, SpfResult,
};

use super::{Check, Subject};
use crate::engine::policy::finding::{Category, CheckError, Finding, Outcome};

const NAME: &str = "auth";
/// Signatures verified per message (each costs a DNS lookup and a public-key operation); a
/// message carrying more is a `dkim.permerror` and none are verified.
const MAX_DKIM_SIGNATURES: usize = 8;

pub struct AuthCheck {
    dns: Arc<MessageAuthenticator>,
    authserv_id: String,
}

impl std::fmt::Debug for AuthCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthCheck")
            .field("authserv_id", &self.authserv_id)
            .finish()
    }
}

impl AuthCheck {
    pub fn new(dns: Arc<MessageAuthenticator>, authserv_id: String) -> Self {
        AuthCheck { dns, authserv_id }
    }
}

#[async_trait::async_trait]
impl Check for AuthCheck {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn check(&self, s: &Subject<'_>) -> Result<Outcome, CheckError> {
        let mut out = Outcome::default();
        // A message the pre-flight refused is not handed to another parser either.
        if !s.decoded.parsed {
            return Ok(out);
        }
        let Some(msg) = AuthenticatedMessage::parse(s.raw) else {
            out.findings.push(Finding::builtin(
                NAME,
                "auth.unparseable",
                Category::Spam,
                "no header block",
            ));
            return Ok(out);
        };
        let env = s.envelope;
        let helo = if env.helo.is_empty() {
            "unknown"
        } else {
            env.helo
        };
        let spf = self
            .dns
            .verify_spf(SpfParameters::verify(
                env.client_ip,
                helo,
                &self.authserv_id,
                env.mail_from,
            ))
            .await;
        let signatures = s
            .decoded
            .headers
            .iter()
            .filter(|(n, _)| n == "dkim-signature")
            .count();
        let dkim = if signatures <= MAX_DKIM_SIGNATURES {
            self.dns.verify_dkim(&msg).await
        } else {
            Vec::new()
        };
        let mail_from_domain = env.mail_from.rsplit_once('@').map_or(helo, |(_, d)| d);
        let dmarc = self
            .dns
            .verify_dmarc(DmarcParameters::new(&msg, &dkim, mail_from_domain, &spf))
            .await;

        let ar = AuthenticationResults::new(&self.authserv_id)
            .with_spf_mailfrom_result(&spf, env.client_ip, env.mail_from, helo)
            .with_dkim_results(&dkim, msg.from())
            .with_dmarc_result(&dmarc);
        out.headers
            .push(format!("Authentication-Results: {ar}\r\n"));

        let spf_name = match spf.result() {
            SpfResult::Pass => "spf.pass",
            SpfResult::Fail => "spf.fail",
            SpfResult::SoftFail => "spf.softfail",
            SpfResult::Neutral => "spf.neutral",
            SpfResult::TempError => "spf.temperror",
            SpfResult::PermError => "spf.permerror",
            SpfResult::None => "spf.none",
        };
        out.findings.push(Finding::builtin(
            NAME,
            spf_name,
            Category::Spam,
            format!(
                "{} for {} from {}",
                spf.result(),
                spf.domain(),
                env.client_ip
            ),
        ));

        let (dkim_name, dkim_detail) = if signatures > MAX_DKIM_SIGNATURES {
            (
                "dkim.permerror",
                format!("{signatures} signatures (at most {MAX_DKIM_SIGNATURES} are verified)"),
            )
        } else {
            dkim_summary(&dkim)
        };
        out.findings.push(Finding::builtin(
            NAME,
            dkim_name,
            Category::Spam,
            dkim_detail,
        ));

        let (dmarc_name, category) = match dmarc.result() {
            DmarcResult::Pass => ("dmarc.pass", Category::Spam),
            DmarcResult::Fail(_) => (
                "dmarc.fail",
                match dmarc.policy() {
                    DmarcPolicy::Reject => Category::DmarcReject,
                    DmarcPolicy::Quarantine => Category::DmarcQuarantine,
                    DmarcPolicy::None | DmarcPolicy::Unspecified => Category::Spam,
                },
            ),
            DmarcResult::TempError(_) => ("dmarc.temperror", Category::Spam),
            DmarcResult::PermError(_) => ("dmarc.permerror", Category::Spam),
            DmarcResult::None => ("dmarc.none", Category::Spam),
        };
        let policy = match dmarc.policy() {
            DmarcPolicy::Reject => "reject",
            DmarcPolicy::Quarantine => "quarantine",
            DmarcPolicy::None | DmarcPolicy::Unspecified => "none",
        };
        out.findings.push(Finding::builtin(
            NAME,
            dmarc_name,
            category,
            format!("{} for {} (p={policy})", dmarc.result(), dmarc.domain()),
        ));
        Ok(out)
    }
}

/// The strongest DKIM result over all signatures: one pass is enough; otherwise the worst.
fn dkim_summary(outputs: &[DkimOutput<'_>]) -> (&'static str, String) {
    let rank = |o: &DkimOutput<'_>| -> (u8, &'static str) {
        match o.result() {
            DkimResult::Pass => (0, "dkim.pass"),
            DkimResult::Fail(_) => (1, "dkim.fail"),
            // mail-auth reports a body that no longer matches its hash as neutral; for us
            // that is the signature of a modified (forged) message.
            DkimResult::Neutral(mail_auth::Error::Dkim(
                mail_auth::dkim::DkimError::FailedBodyHashMatch,
            )) => (1, "dkim.fail"),
            DkimResult::PermError(_) => (2, "dkim.permerror"),
            DkimResult::Neutral(_) => (3, "dkim.neutral"),
            DkimResult::TempError(_) => (4, "dkim.temperror"),
            DkimResult::None => (5, "dkim.none"),
        }
    };
    let Some(best) = outputs.iter().min_by_key(|o| rank(o).0) else {
        return ("dkim.none", "no signature".into());
    };
    let name = rank(best).1;
    let domain = best
        .signature()
        .map(|s| format!(" d={}", s.d))
        .unwrap_or_default();
    (
        name,
        format!("{}{domain} ({} signatures)", best.result(), outputs.len()),
    )
}

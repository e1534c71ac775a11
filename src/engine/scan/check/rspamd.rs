//! rspamd as an optional external spam scanner, over its HTTP protocol (`POST /checkv2`, the
//! envelope in request headers, the raw message as the body, a JSON answer).
//!
//! rspamd's score times the policy's `rspamd.weight` becomes the finding `rspamd` (its top
//! symbols in the detail); rspamd's own action is recorded, not obeyed: our policy decides.
//! A refused connection, a timeout, a non-200 status or an unreadable answer is a failure, and
//! the policy's `rspamd.on_failure` says whether to decide without it or answer 451.

use std::time::Duration;

use super::http::{self, HostPort};
use super::json::{self, Json};
use super::{Check, Subject};
use crate::config::policy::{OnFailure, RspamdConfig};
use crate::engine::policy::finding::{CheckError, Finding, Outcome};

const NAME: &str = "rspamd";
/// Largest answer read.
const MAX_RESPONSE: usize = 1 << 20;
/// Symbols quoted in the finding's detail.
const TOP_SYMBOLS: usize = 8;

#[derive(Debug)]
pub struct RspamdCheck {
    to: HostPort,
    timeout: Duration,
    on_failure: OnFailure,
    weight: f64,
    max_size: u64,
}

impl RspamdCheck {
    pub fn new(c: &RspamdConfig) -> Result<RspamdCheck, String> {
        Ok(RspamdCheck {
            to: HostPort::parse(&c.address)?,
            timeout: c.timeout.get(),
            on_failure: c.on_failure,
            weight: c.weight,
            max_size: c.max_size.0,
        })
    }
}

#[async_trait::async_trait]
impl Check for RspamdCheck {
    fn name(&self) -> &'static str {
        NAME
    }

    fn on_failure(&self) -> OnFailure {
        self.on_failure
    }

    async fn check(&self, s: &Subject<'_>) -> Result<Outcome, CheckError> {
        if s.raw.len() as u64 > self.max_size {
            return Err(CheckError::TooLarge(s.raw.len() as u64));
        }
        let env = s.envelope;
        let mut headers = vec![
            ("IP", env.client_ip.to_string()),
            ("Helo", env.helo.to_owned()),
            ("From", env.mail_from.to_owned()),
            ("Queue-Id", env.queue_id.to_owned()),
            ("Pass", "all".to_owned()),
        ];
        for r in env.rcpts {
            headers.push(("Rcpt", r.clone()));
        }
        let call = http::post(&self.to, "/checkv2", &headers, s.raw, MAX_RESPONSE);
        let resp = match tokio::time::timeout(self.timeout, call).await {
            Err(_) => return Err(CheckError::Timeout(self.timeout)),
            Ok(Err(e)) if e.starts_with("connect") => return Err(CheckError::Unreachable(e)),
            Ok(Err(e)) => return Err(CheckError::Protocol(e)),
            Ok(Ok(r)) => r,
        };
        if resp.status != 200 {
            return Err(CheckError::Protocol(format!("HTTP status {}", resp.status)));
        }
        let answer = json::parse(&resp.body).map_err(CheckError::Protocol)?;
        let score = answer
            .get("score")
            .and_then(Json::as_f64)
            .ok_or_else(|| CheckError::Protocol("answer has no score".into()))?;
        let action = answer.get("action").and_then(Json::as_str).unwrap_or("?");
        let mut symbols: Vec<(String, f64)> = match answer.get("symbols") {
            Some(Json::Obj(m)) => m
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.get("score").and_then(Json::as_f64).unwrap_or(0.0),
                    )
                })
                .collect(),
            _ => Vec::new(),
        };
        symbols.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
        let top: Vec<String> = symbols
            .iter()
            .take(TOP_SYMBOLS)
            .map(|(k, v)| format!("{k}({v:.1})"))
            .collect();
        let mut out = Outcome::default();
        out.findings.push(Finding::configured(
            NAME,
            "rspamd".into(),
            score * self.weight,
            None,
            format!("score {score:.2}, action {action:?}: {}", top.join(" ")),
        ));
        Ok(out)
    }
}

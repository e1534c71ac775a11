//! rspamd as an optional external spam scanner, over its HTTP protocol (`POST /checkv2` on the
//! normal worker: the envelope in request headers, the raw message as the body, a JSON answer),
//! and the learning calls of its controller (`/learnspam`, `/learnham`, `/fuzzyadd`).
//!
//! rspamd's score times the policy's `rspamd.weight`, clipped to `rspamd.min_score ..=
//! max_score`, becomes the finding `rspamd` (its raw score, the weight and clip, its action,
//! its reason when it gives one, and its top symbols in the detail: see `config/detect.rs` for
//! why it is clipped); rspamd's own action is recorded, not obeyed: our policy decides. A refused connection, a timeout, a non-200 status,
//! an `error` answer or an unreadable one is a failure, and the policy's `rspamd.on_failure`
//! says whether to decide without it or answer 451.
//!
//! # What rspamd is told (checked against rspamd 3.4)
//!
//! | header | value | why |
//! |---|---|---|
//! | `IP` | the real client (from PROXY) | RBLs, `RDNS_NONE`, `once_received`, reputation |
//! | `Helo` | the client's EHLO/HELO, when it gave one | hfilter's HELO rules |
//! | `From` | the envelope sender, `<>` for the null sender | SPF, `FORGED_SENDER`, bounce rules |
//! | `Rcpt` | each envelope recipient, one header each | `TO_MATCH_ENVRCPT_*`, per-user settings |
//! | `Deliver-To` | the recipient, when there is exactly one | per-user Bayes and settings |
//! | `Queue-Id` | our queue id | rspamd's log and history name our message |
//! | `Log-Tag` | our session id | rspamd's log lines carry the id our logs carry |
//! | `Pass` | `all` | every rule runs, so the symbols explain the score |
//!
//! Not sent, on purpose: `Hostname` (we do not resolve the client's PTR; without the header
//! rspamd resolves it itself, whereas any value would be taken as the verified name), and
//! `User` (it means "authenticated submission": rspamd would skip its inbound checks).
//!
//! # Learning
//!
//! [`RspamdController`] trains rspamd's Bayes classifier (`/learnspam`, `/learnham`; rspamd
//! answers 208 for a message it already learnt as that class, [`Learned::Already`], and 204
//! when its Bayes already classifies the message so, [`Learned::NotNeeded`]) and its fuzzy
//! storage (`/fuzzyadd` with a flag and a weight): a message added there makes its near-copies
//! match as soon as the storage has written it (the fuzzy worker's `sync` period: 60 s by
//! default, 1 s in `tests/rspamd/start.sh`). The controller wants `Password` unless the caller
//! is one of its `secure_ip`s.

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
    min_score: f64,
    max_score: f64,
    max_size: u64,
}

impl RspamdCheck {
    pub fn new(c: &RspamdConfig) -> Result<RspamdCheck, String> {
        Ok(RspamdCheck {
            to: HostPort::parse(&c.address)?,
            timeout: c.timeout.get(),
            on_failure: c.on_failure,
            weight: c.weight,
            min_score: c.min_score,
            max_score: c.max_score,
            max_size: c.max_size.0,
        })
    }
}

/// The request headers for one message (see the module doc for each one's reason).
fn envelope_headers(s: &Subject<'_>) -> Vec<(&'static str, String)> {
    let env = s.envelope;
    let mut headers = vec![("IP", env.client_ip.to_string())];
    if !env.helo.is_empty() {
        headers.push(("Helo", env.helo.to_owned()));
    }
    let from = if env.mail_from.is_empty() {
        "<>".to_owned()
    } else {
        env.mail_from.to_owned()
    };
    headers.push(("From", from));
    for r in env.rcpts {
        headers.push(("Rcpt", r.clone()));
    }
    if let [only] = env.rcpts {
        headers.push(("Deliver-To", only.clone()));
    }
    headers.push(("Queue-Id", env.queue_id.to_owned()));
    if !env.session_id.is_empty() {
        headers.push(("Log-Tag", env.session_id.to_owned()));
    }
    headers.push(("Pass", "all".to_owned()));
    headers
}

/// rspamd's answer to `/checkv2`, as far as we use it.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub score: f64,
    /// rspamd's own reject threshold.
    pub required_score: Option<f64>,
    /// `no action`, `greylist`, `add header`, `rewrite subject`, `soft reject`, `reject`.
    pub action: String,
    /// rspamd stopped early: a pre-filter decided (GTUBE, a rate limit…) or settings skipped it.
    pub skipped: bool,
    /// The reason rspamd would give the sender (`messages.smtp_message`), if any.
    pub message: Option<String>,
    /// Symbols with a non-zero score, strongest first.
    pub symbols: Vec<(String, f64)>,
}

/// Reads a `/checkv2` answer body. An `error` answer or one without a score is an error.
pub fn parse_answer(body: &[u8]) -> Result<Answer, String> {
    let answer = json::parse(body)?;
    if let Some(e) = answer.get("error").and_then(Json::as_str) {
        return Err(format!("rspamd: {e}"));
    }
    let score = answer
        .get("score")
        .and_then(Json::as_f64)
        .ok_or("answer has no score")?;
    let action = answer
        .get("action")
        .and_then(Json::as_str)
        .ok_or("answer has no action")?
        .to_owned();
    let mut symbols: Vec<(String, f64)> = match answer.get("symbols") {
        Some(Json::Obj(m)) => m
            .iter()
            .map(|(k, v)| {
                let s = v.get("score").and_then(Json::as_f64).unwrap_or(0.0);
                (k.clone(), s)
            })
            .filter(|(_, s)| *s != 0.0)
            .collect(),
        _ => Vec::new(),
    };
    symbols.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()).then(a.0.cmp(&b.0)));
    Ok(Answer {
        score,
        required_score: answer.get("required_score").and_then(Json::as_f64),
        action,
        skipped: matches!(answer.get("is_skipped"), Some(Json::Bool(true))),
        message: answer
            .get("messages")
            .and_then(|m| m.get("smtp_message"))
            .and_then(Json::as_str)
            .map(str::to_owned),
        symbols,
    })
}

impl Answer {
    /// The finding's detail: `score 15.00/15, action "reject" (Gtube pattern): GTUBE(0.0) …`.
    fn detail(&self) -> String {
        let mut d = format!("score {:.2}", self.score);
        if let Some(r) = self.required_score {
            d.push_str(&format!("/{r}"));
        }
        d.push_str(&format!(", action {:?}", self.action));
        if self.skipped {
            d.push_str(" (pre-filter)");
        }
        if let Some(m) = &self.message {
            d.push_str(&format!(" ({m})"));
        }
        let top: Vec<String> = self
            .symbols
            .iter()
            .take(TOP_SYMBOLS)
            .map(|(k, v)| format!("{k}({v:.1})"))
            .collect();
        if !top.is_empty() {
            d.push_str(": ");
            d.push_str(&top.join(" "));
        }
        d
    }
}

/// What rspamd's `score` adds to ours: times `weight`, clipped to `min..=max`; with the
/// explanation the verdict line carries (`rspamd 23.10 x1 = 23.1, capped at 15`).
pub fn combine(score: f64, weight: f64, min: f64, max: f64) -> (f64, String) {
    let weighted = score * weight;
    let counted = weighted.clamp(min, max);
    let mut how = format!("rspamd {score:.2} x{weight} = {weighted:.1}");
    if counted > weighted {
        how.push_str(&format!(", floored at {min}"));
    } else if counted < weighted {
        how.push_str(&format!(", capped at {max}"));
    }
    (counted, how)
}

/// One HTTP exchange with rspamd under `timeout`, errors sorted by what the caller must do.
async fn exchange(
    to: &HostPort,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
    timeout: Duration,
) -> Result<http::Response, CheckError> {
    let call = http::post(to, path, headers, body, MAX_RESPONSE);
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(CheckError::Timeout(timeout)),
        Ok(Err(e)) if e.starts_with("connect") => Err(CheckError::Unreachable(e)),
        Ok(Err(e)) => Err(CheckError::Protocol(e)),
        Ok(Ok(r)) => Ok(r),
    }
}

/// `HTTP status N` plus rspamd's own `error` text when the body has one.
fn status_error(resp: &http::Response) -> CheckError {
    let why = json::parse(&resp.body)
        .ok()
        .and_then(|j| j.get("error").and_then(Json::as_str).map(str::to_owned));
    CheckError::Protocol(match why {
        Some(w) => format!("HTTP status {}: {w}", resp.status),
        None => format!("HTTP status {}", resp.status),
    })
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
        let headers = envelope_headers(s);
        let resp = exchange(&self.to, "/checkv2", &headers, s.raw, self.timeout).await?;
        if resp.status != 200 {
            return Err(status_error(&resp));
        }
        let answer = parse_answer(&resp.body).map_err(CheckError::Protocol)?;
        let mut out = Outcome::default();
        let (counted, how) = combine(answer.score, self.weight, self.min_score, self.max_score);
        out.findings.push(Finding::configured(
            NAME,
            "rspamd".into(),
            counted,
            None,
            format!("{how}; {}", answer.detail()),
        ));
        Ok(out)
    }
}

/// What a learning call teaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LearnAs {
    Spam,
    Ham,
}

/// The outcome of a successful learning call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// rspamd learnt it now.
    Now,
    /// rspamd had already learnt this message as this class (HTTP 208): nothing changed.
    Already,
    /// rspamd's learn conditions declined it (HTTP 204): its Bayes already puts the message
    /// in this class with 95 % or more, and rspamd learns only what it gets wrong unless the
    /// call is a bulk one ([`RspamdController::bulk`]).
    NotNeeded,
}

/// A learning call's answer: 200, 208 and 204 are outcomes, anything else an error.
fn learn_outcome(resp: &http::Response) -> Result<Learned, CheckError> {
    match resp.status {
        200 => Ok(Learned::Now),
        208 => Ok(Learned::Already),
        204 => Ok(Learned::NotNeeded),
        _ => Err(status_error(resp)),
    }
}

/// A fuzzy call's answer: 200 is done; 404 "No content to generate fuzzy" means the message
/// has nothing to hash (rspamd 3.4's answer for short text-only mail), anything else an error.
fn fuzzy_outcome(resp: &http::Response) -> Result<bool, CheckError> {
    match resp.status {
        200 => Ok(true),
        404 if String::from_utf8_lossy(&resp.body).contains("No content to generate fuzzy") => {
            Ok(false)
        }
        _ => Err(status_error(resp)),
    }
}

/// rspamd's controller worker (`HOST:PORT`, default port 11334): learning calls.
#[derive(Debug, Clone)]
pub struct RspamdController {
    to: HostPort,
    timeout: Duration,
    password: Option<String>,
    bulk: bool,
}

impl RspamdController {
    /// `password` is sent as `Password` (needed unless we are one of the controller's
    /// `secure_ip`s); `timeout` bounds each call.
    pub fn new(
        address: &str,
        password: Option<String>,
        timeout: Duration,
    ) -> Result<RspamdController, String> {
        Ok(RspamdController {
            to: HostPort::parse(address)?,
            timeout,
            password,
            bulk: false,
        })
    }

    /// Bulk learning (`Learn-Type: bulk`, an operator training a corpus): rspamd learns every
    /// message, also those its Bayes already classifies right. Off by default: a user's report
    /// teaches only what rspamd got wrong.
    pub fn bulk(mut self, yes: bool) -> RspamdController {
        self.bulk = yes;
        self
    }

    fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h: Vec<(&'static str, String)> = self
            .password
            .iter()
            .map(|p| ("Password", p.clone()))
            .collect();
        if self.bulk {
            h.push(("Learn-Type", "bulk".to_owned()));
        }
        h
    }

    /// Trains the Bayes classifier with one raw message.
    pub async fn learn(&self, class: LearnAs, message: &[u8]) -> Result<Learned, CheckError> {
        let path = match class {
            LearnAs::Spam => "/learnspam",
            LearnAs::Ham => "/learnham",
        };
        let resp = exchange(&self.to, path, &self.headers(), message, self.timeout).await?;
        learn_outcome(&resp)
    }

    /// Adds the message's fuzzy hashes to the storage under `flag` (the `flag` of a
    /// `fuzzy_map` entry of the fuzzy_check rule) with `weight`. `Ok(false)`: the message
    /// has nothing rspamd hashes (text parts below its minimum length, no images or
    /// attachments that qualify), so there is nothing to add; its Bayes lesson stands.
    pub async fn fuzzy_add(
        &self,
        message: &[u8],
        flag: u32,
        weight: u32,
    ) -> Result<bool, CheckError> {
        let mut headers = self.headers();
        headers.push(("Flag", flag.to_string()));
        headers.push(("Weight", weight.to_string()));
        let resp = exchange(&self.to, "/fuzzyadd", &headers, message, self.timeout).await?;
        fuzzy_outcome(&resp)
    }

    /// Removes the message's fuzzy hashes under `flag` (undoing [`Self::fuzzy_add`]);
    /// `Ok(false)` as there.
    pub async fn fuzzy_del(&self, message: &[u8], flag: u32) -> Result<bool, CheckError> {
        let mut headers = self.headers();
        headers.push(("Flag", flag.to_string()));
        let resp = exchange(&self.to, "/fuzzydel", &headers, message, self.timeout).await?;
        fuzzy_outcome(&resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// rspamd 3.4's answer to a GTUBE message (a pre-filter result: reject, no scan).
    const GTUBE: &[u8] = br#"{"is_skipped":true,"score":15.0,"required_score":15.0,"action":"reject","symbols":{"GTUBE":{"name":"GTUBE","score":0.0,"metric_score":0.0}},"messages":{"smtp_message":"Gtube pattern"},"message-id":"gtube-1@good.test","time_real":0.08}"#;

    #[test]
    fn reads_a_pre_filter_reject() {
        let a = parse_answer(GTUBE).unwrap();
        assert_eq!(a.score, 15.0);
        assert_eq!(a.action, "reject");
        assert!(a.skipped);
        assert_eq!(a.message.as_deref(), Some("Gtube pattern"));
        assert!(a.symbols.is_empty(), "zero-score symbols are left out");
        assert_eq!(
            a.detail(),
            r#"score 15.00/15, action "reject" (pre-filter) (Gtube pattern)"#
        );
    }

    #[test]
    fn symbols_strongest_first() {
        let a = parse_answer(
            br#"{"is_skipped":false,"score":3.4,"required_score":15,"action":"no action",
               "symbols":{"A":{"score":1.0},"B":{"score":-2.5},"C":{"score":0.0},"D":{"score":4.9}}}"#,
        )
        .unwrap();
        assert_eq!(
            a.symbols,
            vec![("D".into(), 4.9), ("B".into(), -2.5), ("A".into(), 1.0)]
        );
        assert!(
            a.detail().ends_with(": D(4.9) B(-2.5) A(1.0)"),
            "{}",
            a.detail()
        );
    }

    #[test]
    fn scores_combine_by_weight_and_clip() {
        assert_eq!(combine(4.0, 1.5, -5.0, 15.0).0, 6.0);
        let (c, how) = combine(30.0, 1.0, -5.0, 15.0);
        assert_eq!(c, 15.0);
        assert_eq!(how, "rspamd 30.00 x1 = 30.0, capped at 15");
        let (c, how) = combine(-12.0, 1.0, -5.0, 15.0);
        assert_eq!(c, -5.0);
        assert!(how.ends_with("floored at -5"), "{how}");
    }

    #[test]
    fn learning_answers() {
        let r = |status: u16, body: &str| http::Response {
            status,
            body: body.as_bytes().to_vec(),
        };
        assert_eq!(
            learn_outcome(&r(200, r#"{"success":true}"#)),
            Ok(Learned::Now)
        );
        assert_eq!(
            learn_outcome(&r(
                208,
                r#"{"error":"<x> has been already learned as spam"}"#
            )),
            Ok(Learned::Already)
        );
        assert_eq!(
            learn_outcome(&r(
                204,
                r#"{"error":"all learn conditions denied learning ham"}"#
            )),
            Ok(Learned::NotNeeded)
        );
        let Err(CheckError::Protocol(e)) = learn_outcome(&r(403, r#"{"error":"Unauthorized"}"#))
        else {
            panic!("403 is an error");
        };
        assert_eq!(e, "HTTP status 403: Unauthorized");
    }

    #[test]
    fn nothing_to_hash_is_not_a_fuzzy_failure() {
        let r = |status: u16, body: &str| http::Response {
            status,
            body: body.as_bytes().to_vec(),
        };
        assert_eq!(fuzzy_outcome(&r(200, r#"{"success":true}"#)), Ok(true));
        assert_eq!(
            fuzzy_outcome(&r(
                404,
                r#"{"error":"No content to generate fuzzy for flag 11"}"#
            )),
            Ok(false)
        );
        assert!(fuzzy_outcome(&r(404, r#"{"error":"Not found"}"#)).is_err());
        assert!(fuzzy_outcome(&r(500, "")).is_err());
    }

    #[test]
    fn bulk_learning_says_so() {
        let c = RspamdController::new("127.0.0.1:11334", Some("pw".into()), Duration::from_secs(1))
            .unwrap();
        assert_eq!(c.headers(), vec![("Password", "pw".to_owned())]);
        let h = c.bulk(true).headers();
        assert!(h.contains(&("Learn-Type", "bulk".to_owned())), "{h:?}");
    }

    #[test]
    fn errors_and_nonsense_are_errors() {
        let e = parse_answer(br#"{"error":"Empty body is not permitted"}"#).unwrap_err();
        assert!(e.contains("Empty body"), "{e}");
        assert!(parse_answer(br#"{"action":"reject"}"#).is_err());
        assert!(parse_answer(br#"{"score":1}"#).is_err());
        assert!(parse_answer(b"<html>").is_err());
    }
}

//! `learnt`: our own classifier's verdict (`engine/learn/model.rs`), trained only by the
//! lessons users and operators give through the teacher. The message's tokens (the same
//! tokenizer the teacher uses) are scored against the model of this engine's spool, read
//! afresh from its journal, so a lesson taught a moment ago counts now.
//!
//! The finding says how it combines (`config/detect.rs`, `[policy.NAME.learnt]`): spam above
//! `spam_cutoff` adds `spam_score`, ham below `ham_cutoff` adds `ham_score`, the unsure band
//! adds nothing and makes no finding. An unreadable journal is a failure (the policy then
//! decides without it: `on_failure` accept, as for our other built-in checks).

use std::path::Path;
use std::sync::Arc;

use super::{Check, Subject};
use crate::config::detect::LearntConfig;
use crate::engine::learn::{model, tokens};
use crate::engine::policy::finding::{Category, CheckError, Finding, Outcome};

const NAME: &str = "learnt";
/// Clues quoted in the finding's detail.
const TOP_CLUES: usize = 5;

#[derive(Debug)]
pub struct LearntCheck {
    store: Arc<model::Store>,
    cfg: LearntConfig,
}

impl LearntCheck {
    pub fn new(spool_dir: &Path, cfg: &LearntConfig) -> LearntCheck {
        LearntCheck {
            store: model::store(spool_dir),
            cfg: cfg.clone(),
        }
    }
}

/// The finding's name, points and band for probability `p`; none in the unsure band.
fn band(p: f64, c: &LearntConfig) -> Option<(&'static str, f64, String)> {
    if p >= c.spam_cutoff {
        Some((
            "learnt.spam",
            c.spam_score,
            format!("spam >= {}", c.spam_cutoff),
        ))
    } else if p <= c.ham_cutoff {
        Some((
            "learnt.ham",
            c.ham_score,
            format!("ham <= {}", c.ham_cutoff),
        ))
    } else {
        None
    }
}

#[async_trait::async_trait]
impl Check for LearntCheck {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn check(&self, s: &Subject<'_>) -> Result<Outcome, CheckError> {
        self.store
            .refresh()
            .map_err(|e| CheckError::Unreachable(format!("model journal: {e}")))?;
        let toks = tokens::tokenize(s.decoded, s.urls);
        let (score, nspam, nham) = self.store.score(&toks);
        if nspam + nham == 0 {
            return Ok(Outcome::default());
        }
        let Some((name, points, band)) = band(score.p, &self.cfg) else {
            return Ok(Outcome::default());
        };
        let top: Vec<String> = score
            .clues
            .iter()
            .take(TOP_CLUES)
            .map(|(i, p)| format!("{}({p:.2})", toks[*i]))
            .collect();
        let detail = format!(
            "p={:.3} ({band}) {points:+} from {} clues, {nspam} spam/{nham} ham lessons: {}",
            score.p,
            score.clues.len(),
            top.join(" ")
        );
        Ok(Outcome {
            findings: vec![Finding {
                scanner: NAME,
                name: name.to_owned(),
                category: Category::Spam,
                score: points,
                action: None,
                detail,
            }],
            headers: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unsure_band_is_the_policys() {
        let d = LearntConfig::default();
        assert_eq!(band(0.85, &d), None);
        assert_eq!(band(0.1, &d).map(|b| b.1), Some(d.ham_score));
        let c = LearntConfig {
            spam_cutoff: 0.8,
            ham_cutoff: 0.05,
            ..d
        };
        assert_eq!(band(0.85, &c).map(|b| b.0), Some("learnt.spam"));
        assert_eq!(band(0.1, &c), None);
    }
}

//! What a delivery attempt means for a message: a pure function from the server's replies to the
//! new per-recipient state, retry time, and DSN list. Table-tested.

use std::time::Duration;

use super::client::{ClientError, TransactionResult};
use crate::config::DeliveryConfig;
use crate::store::{Envelope, Progress, RcptOutcome};

/// The result of [`apply`].
#[derive(Debug)]
pub struct Outcome {
    pub state: Progress,
    /// Recipient indexes delivered now.
    pub delivered: Vec<usize>,
    /// Recipient indexes that failed permanently now: (index, text, text came from the server).
    pub failures: Vec<(usize, String, bool)>,
    /// No recipient is pending any more.
    pub done: bool,
}

/// What a destination that publishes a null MX (RFC 7505 section 4.1: 556 5.1.10) amounts to:
/// a refusal of the whole transaction.
pub fn null_mx() -> TransactionResult {
    TransactionResult {
        mail: crate::smtp::reply::Received {
            code: 556,
            lines: vec!["5.1.10 Recipient address has null MX".to_owned()],
        },
        rcpts: Vec::new(),
        data: None,
        data_refused: None,
    }
}

/// Backoff for the n-th attempt (1-based): `base * 2^(n-1)`, capped, with ±20 % jitter.
pub fn backoff(attempt: u32, cfg: &DeliveryConfig) -> Duration {
    let base = cfg.retry_base.get().as_secs_f64();
    let max = cfg.retry_max.get().as_secs_f64();
    let raw = (base * 2f64.powi(attempt.saturating_sub(1).min(30) as i32)).min(max);
    Duration::from_secs_f64(raw * (0.8 + 0.4 * fastrand::f64()))
}

/// Applies one attempt's result to `state` for the recipients in `pending` (indexes into the
/// envelope's recipients, in the order they were sent).
pub fn apply(
    env: &Envelope,
    state: &Progress,
    pending: &[usize],
    result: Result<TransactionResult, ClientError>,
    now: u64,
    lifetime: Duration,
    cfg: &DeliveryConfig,
) -> Outcome {
    let mut st = state.clone();
    let mut delivered = Vec::new();
    let mut failures = Vec::new();
    let fail = |st: &mut Progress,
                failures: &mut Vec<(usize, String, bool)>,
                i: usize,
                text: String,
                remote: bool| {
        st.rcpts[i] = Some(RcptOutcome::Failed {
            reply: text.clone(),
        });
        failures.push((i, text, remote));
    };
    match result {
        Err(e) => st.error = e.to_string(),
        Ok(tr) if !tr.mail.is_positive() => {
            let text = format!("{} {}", tr.mail.code, tr.mail.text());
            if tr.mail.code >= 500 {
                for &i in pending {
                    fail(&mut st, &mut failures, i, text.clone(), true);
                }
            }
            st.error = text;
        }
        Ok(tr) => {
            let mut accepted = Vec::new();
            for (k, &i) in pending.iter().enumerate() {
                let Some(r) = tr.rcpts.get(k) else { continue };
                let text = format!("{} {}", r.code, r.text());
                match r.code {
                    200..=299 => accepted.push(i),
                    500..=599 => fail(&mut st, &mut failures, i, text, true),
                    _ => st.error = text,
                }
            }
            match tr.data {
                Some(d) if d.is_positive() => {
                    for i in accepted {
                        st.rcpts[i] = Some(RcptOutcome::Delivered { at: now });
                        delivered.push(i);
                    }
                }
                Some(d) if d.code >= 500 => {
                    let text = format!("{} {}", d.code, d.text());
                    for i in accepted {
                        fail(&mut st, &mut failures, i, text.clone(), true);
                    }
                }
                Some(d) => st.error = format!("{} {}", d.code, d.text()),
                None => match &tr.data_refused {
                    Some(d) if d.code >= 500 && !accepted.is_empty() => {
                        let text = format!("{} {}", d.code, d.text());
                        for i in accepted {
                            fail(&mut st, &mut failures, i, text.clone(), true);
                        }
                    }
                    Some(d) if !accepted.is_empty() => {
                        st.error = format!("{} {}", d.code, d.text())
                    }
                    _ if !accepted.is_empty() => st.error = "DATA was not accepted".into(),
                    _ => {}
                },
            }
        }
    }
    let still: Vec<usize> = st.pending().collect();
    if !still.is_empty() {
        st.attempts += 1;
        if now >= env.received + lifetime.as_secs() {
            let text = format!(
                "expired after {} days in the queue; last error: {}",
                lifetime.as_secs() / 86_400,
                st.error
            );
            for i in still {
                fail(&mut st, &mut failures, i, text.clone(), false);
            }
        } else {
            st.next = now + backoff(st.attempts, cfg).as_secs().max(1);
        }
    }
    let done = st.pending().next().is_none();
    Outcome {
        state: st,
        delivered,
        failures,
        done,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::reply::Received;

    fn env(n: usize) -> Envelope {
        crate::store::test_envelope(n)
    }

    fn r(code: u16) -> Received {
        Received {
            code,
            lines: vec!["x".into()],
        }
    }

    const DAY: Duration = Duration::from_secs(86_400);

    /// A null-MX destination fails every pending recipient at once with RFC 7505's code; the
    /// message is done (no retry for days).
    #[test]
    fn a_null_mx_fails_every_recipient_at_once() {
        let e = env(2);
        let s = Progress::initial(&e);
        let o = apply(
            &e,
            &s,
            &[0, 1],
            Ok(null_mx()),
            1000,
            DAY,
            &DeliveryConfig::default(),
        );
        assert!(o.done);
        assert!(o.delivered.is_empty());
        assert_eq!(o.failures.len(), 2);
        for (_, text, _) in &o.failures {
            assert!(text.starts_with("556 5.1.10"), "{text}");
        }
    }

    #[test]
    fn mixed_recipients_deliver_fail_and_defer_independently() {
        let e = env(3);
        let s = Progress::initial(&e);
        let tr = TransactionResult {
            mail: r(250),
            rcpts: vec![r(250), r(550), r(451)],
            data: Some(r(250)),
            data_refused: None,
        };
        let o = apply(
            &e,
            &s,
            &[0, 1, 2],
            Ok(tr),
            2000,
            DAY,
            &DeliveryConfig::default(),
        );
        assert_eq!(o.delivered, [0]);
        assert_eq!(o.failures.len(), 1);
        assert_eq!(o.failures[0].0, 1);
        assert!(!o.done);
        assert_eq!(o.state.pending().collect::<Vec<_>>(), [2]);
        assert_eq!(o.state.attempts, 1);
        assert!(
            o.state.next >= 2000 + 48 && o.state.next <= 2000 + 72,
            "{}",
            o.state.next
        );

        // Next attempt: only recipient 2 is sent; it succeeds.
        let tr = TransactionResult {
            mail: r(250),
            rcpts: vec![r(250)],
            data: Some(r(250)),
            data_refused: None,
        };
        let o = apply(
            &e,
            &o.state,
            &[2],
            Ok(tr),
            3000,
            DAY,
            &DeliveryConfig::default(),
        );
        assert!(o.done);
        assert_eq!(o.delivered, [2]);
    }

    #[test]
    fn connection_errors_defer_and_expiry_fails_with_our_text() {
        let e = env(1);
        let s = Progress::initial(&e);
        let err = Err(ClientError::Timeout("greeting"));
        let o = apply(&e, &s, &[0], err, 2000, DAY, &DeliveryConfig::default());
        assert!(!o.done && o.failures.is_empty());
        let err = Err(ClientError::Timeout("greeting"));
        let o = apply(
            &e,
            &o.state,
            &[0],
            err,
            1000 + 86_400,
            DAY,
            &DeliveryConfig::default(),
        );
        assert!(o.done);
        assert!(o.failures[0].1.starts_with("expired after 1 days"));
        assert!(!o.failures[0].2, "our own text, not the server's");
    }

    #[test]
    fn data_5xx_fails_accepted_and_mail_5xx_fails_all() {
        let e = env(2);
        let s = Progress::initial(&e);
        let tr = TransactionResult {
            mail: r(250),
            rcpts: vec![r(250), r(250)],
            data: Some(r(554)),
            data_refused: None,
        };
        let o = apply(
            &e,
            &s,
            &[0, 1],
            Ok(tr),
            2000,
            DAY,
            &DeliveryConfig::default(),
        );
        assert!(o.done && o.failures.len() == 2 && o.delivered.is_empty());
        let tr = TransactionResult {
            mail: r(553),
            rcpts: vec![r(553), r(553)],
            data: None,
            data_refused: None,
        };
        let o = apply(
            &e,
            &s,
            &[0, 1],
            Ok(tr),
            2000,
            DAY,
            &DeliveryConfig::default(),
        );
        assert!(o.done && o.failures.len() == 2);
        let tr = TransactionResult {
            mail: r(451),
            rcpts: vec![r(451), r(451)],
            data: None,
            data_refused: None,
        };
        let o = apply(
            &e,
            &s,
            &[0, 1],
            Ok(tr),
            2000,
            DAY,
            &DeliveryConfig::default(),
        );
        assert!(!o.done && o.failures.is_empty());
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let cfg = DeliveryConfig::default();
        for _ in 0..50 {
            let b1 = backoff(1, &cfg).as_secs_f64();
            assert!((48.0..=72.0).contains(&b1), "{b1}");
            let b3 = backoff(3, &cfg).as_secs_f64();
            assert!((192.0..=288.0).contains(&b3), "{b3}");
            let b20 = backoff(20, &cfg).as_secs_f64();
            assert!(b20 <= 3600.0 * 1.2, "{b20}");
        }
    }
}

//! The call-ahead: asking a tenant's server whether it would take a recipient, without sending
//! anything. Over a session opened exactly as deliveries open theirs
//! (`delivery::open_session`: the tenant's hosts in order, the egress source address its
//! firewall lets in, STARTTLS as its `tls` plan says, so a tenant that requires TLS never sees
//! its recipients' addresses in clear), one probe is
//!
//! ```text
//! MAIL FROM:<>            (engine.verify.sender; SMTPUTF8 when the address needs it)
//! RCPT TO:<address>       2xx: known, 5xx: unknown, 4xx: no answer
//! RSET                    never DATA: no message is ever sent
//! ```
//!
//! One recipient per transaction: some servers refuse a null sender with several recipients (a
//! bounce has one). The null sender is what every server must accept (RFC 5321 4.5.5: the
//! tenant's users get their bounces that way, through us); Postfix's own probes use its
//! double-bounce address unless told `<>`, so `engine.verify.sender` names one for a server
//! that refuses `<>`. A refused MAIL, a 4xx, a timeout or no session at all is *no answer*
//! (the caller decides from its cache), never an unknown recipient.
//!
//! Connections are reused: after a probe whose RSET was answered `250`, the session waits idle
//! (at most [`IDLE_KEEP`]) for the tenant's next probe; a reused session that turns out closed
//! is replaced by a fresh one within the same deadline.
//!
//! Bounds: [`CONNECTIONS_PER_TENANT`] probe sessions per tenant at once (a RCPT beyond them
//! waits for one, within its deadline), each used for at most [`PROBES_PER_CONNECTION`] probes
//! (below the error limits servers keep per session: Postfix's soft limit is 10, after which it
//! slows down), idle ones closed after [`IDLE_KEEP`]. These connections come on top of the
//! tenant's delivery connections.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::engine::delivery::{self, Delivery, client::Client};
use crate::store::Dest;

/// Probe sessions open at once to one tenant's servers (per engine).
pub const CONNECTIONS_PER_TENANT: usize = 4;
/// Probes over one session before it is closed.
pub const PROBES_PER_CONNECTION: u32 = 8;
/// How long an idle probe session waits for the next probe.
pub const IDLE_KEEP: Duration = Duration::from_secs(20);

/// What the tenant's server said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// RCPT answered 2xx.
    Accepted,
    /// RCPT answered 5xx: the reply, for the log.
    Refused(String),
    /// No answer about the recipient: why.
    Unanswered(String),
}

/// A session waiting for the next probe.
struct Idle {
    client: Client,
    since: Instant,
    used: u32,
}

/// Probe sessions and their limits, per tenant.
pub struct Prober {
    delivery: Arc<Delivery>,
    /// Tenant id -> idle sessions (at most `CONNECTIONS_PER_TENANT` each).
    idle: Mutex<HashMap<String, Vec<Idle>>>,
    /// Tenant id -> its probe sessions' permits; one entry per tenant that was probed.
    permits: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Prober {
    pub fn new(delivery: Arc<Delivery>) -> Prober {
        Prober {
            delivery,
            idle: Mutex::default(),
            permits: Mutex::default(),
        }
    }

    fn permits(&self, tenant: &str) -> Arc<Semaphore> {
        let mut g = self.permits.lock().unwrap_or_else(|e| e.into_inner());
        g.entry(tenant.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(CONNECTIONS_PER_TENANT)))
            .clone()
    }

    fn take_idle(&self, tenant: &str) -> Option<Idle> {
        let mut g = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = g.get_mut(tenant)?;
        while let Some(idle) = list.pop() {
            if idle.since.elapsed() < IDLE_KEEP {
                return Some(idle);
            }
            tokio::spawn(idle.client.quit());
        }
        None
    }

    fn keep_idle(&self, tenant: &str, client: Client, used: u32) {
        if used >= PROBES_PER_CONNECTION {
            tokio::spawn(client.quit());
            return;
        }
        let mut g = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = g.entry(tenant.to_owned()).or_default();
        if list.len() >= CONNECTIONS_PER_TENANT {
            tokio::spawn(client.quit());
            return;
        }
        list.push(Idle {
            client,
            since: Instant::now(),
            used,
        });
    }

    /// Asks `tenant`'s servers about `address`, giving up at `deadline`.
    pub async fn probe(
        &self,
        tenant: &str,
        address: &str,
        sender: &str,
        deadline: Instant,
    ) -> Probe {
        let permits = self.permits(tenant);
        let Ok(Ok(_permit)) = tokio::time::timeout_at(deadline, permits.acquire_owned()).await
        else {
            return Probe::Unanswered(format!(
                "{CONNECTIONS_PER_TENANT} probes of this tenant already under way"
            ));
        };
        if let Some(mut idle) = self.take_idle(tenant) {
            let asked = tokio::time::timeout_at(deadline, ask(&mut idle.client, sender, address));
            match asked.await {
                Ok(Ok((probe, reusable))) => {
                    if reusable {
                        self.keep_idle(tenant, idle.client, idle.used + 1);
                    }
                    return probe;
                }
                // Closed while idle (the server's own timeout): a fresh session.
                Ok(Err(_)) => {}
                Err(_) => return Probe::Unanswered("timed out".into()),
            }
        }
        let dest = Dest::Tenant(tenant.to_owned());
        let attempt = async {
            let Some(mut client) = delivery::open_session(&self.delivery, &dest).await else {
                return Probe::Unanswered(
                    "no server of the tenant answered (or met its TLS policy)".into(),
                );
            };
            match ask(&mut client, sender, address).await {
                Ok((probe, reusable)) => {
                    if reusable {
                        self.keep_idle(tenant, client, 1);
                    }
                    probe
                }
                Err(e) => Probe::Unanswered(e.to_string()),
            }
        };
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(p) => p,
            Err(_) => Probe::Unanswered("timed out".into()),
        }
    }

    /// Closes idle sessions past [`IDLE_KEEP`] (all of them with `all`, at shutdown).
    pub fn reap(&self, all: bool) {
        let mut g = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        for list in g.values_mut() {
            let (stale, keep): (Vec<Idle>, Vec<Idle>) = std::mem::take(list)
                .into_iter()
                .partition(|i| all || i.since.elapsed() >= IDLE_KEEP);
            *list = keep;
            for i in stale {
                tokio::spawn(i.client.quit());
            }
        }
        g.retain(|_, list| !list.is_empty());
    }
}

/// One probe over an open session: the answer, and whether the session may serve another.
async fn ask(
    c: &mut Client,
    sender: &str,
    address: &str,
) -> Result<(Probe, bool), delivery::client::ClientError> {
    let utf8 = if !address.is_ascii() && c.smtputf8 {
        " SMTPUTF8"
    } else {
        ""
    };
    let mail = c
        .command(&format!("MAIL FROM:<{sender}>{utf8}"), "MAIL")
        .await?;
    if !mail.is_positive() {
        let rset = c.command("RSET", "RSET").await?;
        return Ok((
            Probe::Unanswered(format!(
                "MAIL FROM:<{sender}> answered {} {}",
                mail.code,
                mail.text()
            )),
            rset.code == 250,
        ));
    }
    let rcpt = c.command(&format!("RCPT TO:<{address}>"), "RCPT").await?;
    let probe = match rcpt.code {
        200..=299 => Probe::Accepted,
        500..=599 => Probe::Refused(format!("{} {}", rcpt.code, rcpt.text())),
        _ => Probe::Unanswered(format!("RCPT answered {} {}", rcpt.code, rcpt.text())),
    };
    // The answer stands whatever RSET says; the session serves again only after a clean one.
    let reusable = matches!(c.command("RSET", "RSET").await, Ok(r) if r.code == 250);
    Ok((probe, reusable))
}

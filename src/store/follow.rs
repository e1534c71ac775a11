//! What the store tells whoever follows its messages (cluster redundancy: the engine's shadow
//! copies on other engines, `src/shadow/`), and the two-step acceptance that lets a copy be made
//! elsewhere before a message is announced.
//!
//! # Following
//!
//! A [`Follower`] hears every durable change, after it is on disk and in the index, in the order
//! the store made them: a message that entered other than through SMTP reception (a DSN, with
//! the message it reports on; a copy released from quarantine for some of its recipients, with
//! the original), a new persisted progress (a retry, a release, a suspension), and
//! a message leaving the store (delivered, bounced, deleted, expired, abandoned). Calls are
//! synchronous and must not block: a follower queues what it has to send.
//!
//! # Two-step acceptance
//!
//! SMTP reception with a shadow writes the message to the spool ([`Store::prepare`]), has the
//! copy made meanwhile, and only then either [`Prepared::commit`]s it into the index (it becomes
//! deliverable) or [`Prepared::abandon`]s it (the sender heard 4xx). Nothing is delivered before
//! the decision, so a message the sender was told to retry is not also delivered from here. A
//! crash between the two steps leaves the file in the spool: recovered and delivered at the next
//! start (at least once, never lost). A `Prepared` dropped undecided (its session cancelled,
//! as at shutdown) is abandoned: the `250` comes only after [`Prepared::commit`], so its sender
//! heard nothing and will send it again. Committing it instead delivered a second copy beside
//! the sender's retry (the fleet's cluster-stop scenario found it). If the file cannot be
//! removed, the next start delivers it (at least once).

use std::io;
use std::sync::Arc;

use super::Store;
use super::index::Dest;
use super::spool::{Envelope, Progress, QueueId};

/// Hears the store's durable changes (see the module docs).
pub trait Follower: Send + Sync + std::fmt::Debug {
    /// A message entered the store other than through [`Store::prepare`]: a DSN or a copy
    /// released from quarantine for some recipients (`parent` is the message it reports on or
    /// was released from), or a message adopted from another engine.
    fn accepted(&self, env: &Arc<Envelope>, message: &[u8], parent: Option<&QueueId>);
    /// A message's persisted progress is now `progress`; `None`: it left the store.
    fn changed(&self, id: &QueueId, progress: Option<&Progress>);
}

/// A message on disk, not yet in the index: see the module docs.
#[derive(Debug)]
pub struct Prepared {
    pub(super) store: Store,
    pub(super) env: Option<Envelope>,
    pub(super) dest: Dest,
}

impl Prepared {
    pub fn envelope(&self) -> &Envelope {
        self.env.as_ref().expect("present until decided")
    }

    /// Makes the message deliverable (into the index). Returns its envelope.
    pub fn commit(mut self) -> Arc<Envelope> {
        let env = self.env.take().expect("present until decided");
        self.store.insert(env, self.dest.clone())
    }

    /// Removes the message from disk: it was never acknowledged. A failed removal leaves the
    /// file to the next start, which delivers it (at least once).
    pub async fn abandon(mut self) -> io::Result<()> {
        let env = self.env.take().expect("present until decided");
        let r = self.store.spool.remove(&env.id).await;
        if r.is_ok() {
            self.store.tell(|f| f.changed(&env.id, None));
        }
        r
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if let Some(env) = self.env.take() {
            match self.store.spool.remove_now(&env.id) {
                Ok(()) => {
                    tracing::info!(id = %env.id, "a message whose session ended before its 250 was removed: its sender sends it again");
                    self.store.tell(|f| f.changed(&env.id, None));
                }
                Err(e) => {
                    tracing::warn!(id = %env.id, error = %e, "a message whose session ended before its 250 could not be removed: delivered after the next start (at least once)");
                }
            }
        }
    }
}

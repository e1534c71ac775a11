//! Where a message stands, and the one table of the moves between states.
//!
//! # Names
//!
//! | state | meaning | shown by |
//! |---|---|---|
//! | `queued` | waiting for delivery, never tried | `queue list` |
//! | `deferred` | waiting for its next try after a failed one | `queue list` |
//! | `delivering` | a delivery worker has it now | `queue list` |
//! | `held` | waiting while its destination is down; readable in webmail | `queue list`, webmail "Held" |
//! | `suspended` | set aside by an operator (`queue suspend`), or by delivery for an operator (spool unreadable, DSN not storable); never delivered until released | `queue list` |
//! | `quarantined` | set aside by policy; readable in webmail; released by a user or an operator, or expired | `queue list`, webmail "Quarantine" |
//!
//! `held` is the product's word for mail kept while a tenant's server is down (webmail, the
//! `engine_held_messages` metric, the `HeldMailOld` alert), so it keeps it. The operator's hold is
//! called `suspended` (as Exchange's queue viewer calls it): a word that shares no root with
//! `held`, so nobody reads one for the other. The command stays `queue hold` (Postfix's verb).
//!
//! # Persisted and derived
//!
//! Only [`Status`] is written to disk: what was decided about the message (deliver it, an
//! operator suspended it, policy quarantined it). The rest of the [`State`] is what is true right
//! now, derived in one place ([`State::of`]): a worker has it (`delivering`), its destination is
//! down (`held`), it was tried before (`deferred`). After a restart nothing is in flight and every
//! destination is presumed up, so a message comes back `queued` or `deferred`.
//!
//! # Moves
//!
//! ```text
//!   accepted ───────────────────▶ waiting: queued · deferred · held
//!   accepted, policy says so ───▶ quarantined
//!   queued, deferred ──take────────────▶ delivering   (held is not taken: destination down)
//!   delivering ──defer, give back──────▶ waiting
//!   delivering ──complete──────────────▶ gone         (delivered; failures bounced with DSNs)
//!   delivering ──fault─────────────────▶ suspended
//!   waiting ──suspend──────────────────▶ suspended
//!   suspended, quarantined ──release───▶ waiting      (due now)
//!   quarantined ──release some─────────▶ quarantined  (a copy for those recipients is accepted)
//!   quarantined ──expire───────────────▶ gone
//!   every state but delivering ──delete▶ gone
//! ```
//!
//! Within waiting, a message is `held` while its destination is down and `queued` or `deferred`
//! otherwise: the destination's health moves all its mail at once, not a write per message.
//!
//! [`State::next`] is that table; the store asks it before every change it makes, and an illegal
//! move is an error ([`Illegal`]) — nothing is written.

use crate::config::webmail::FindingKind;

/// The persisted part of a message's state (`status` in the spool's files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// To be delivered (waiting, or being delivered).
    Queued,
    /// Set aside for an operator: not delivered until released.
    Suspended,
    /// Set aside by policy; released by a user or operator. `reason` is for people; `kinds`
    /// (sorted, each once) is every kind of finding of the verdict, what release rights are
    /// decided by (`kinds:` in the spool's files).
    Quarantined {
        reason: String,
        kinds: Vec<FindingKind>,
    },
}

impl Status {
    /// The word written to disk.
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Suspended => "suspended",
            Status::Quarantined { .. } => "quarantined",
        }
    }

    /// A quarantine status; `kinds` sorted and each kept once.
    pub fn quarantined(reason: String, kinds: impl IntoIterator<Item = FindingKind>) -> Status {
        let mut kinds: Vec<FindingKind> = kinds.into_iter().collect();
        kinds.sort();
        kinds.dedup();
        Status::Quarantined { reason, kinds }
    }

    /// The `kinds:` value written to disk (space-separated names).
    pub fn kinds_text(kinds: &[FindingKind]) -> String {
        kinds
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Reads the words written to disk. `hold` is how versions before the rename wrote
    /// `suspended`: their spools are read as they meant it. `kinds` is `None` for quarantined
    /// mail written before kinds were recorded: its one kind is read from its reason's label.
    pub fn parse(word: &str, reason: String, kinds: Option<&str>) -> Result<Status, String> {
        match word {
            "queued" => Ok(Status::Queued),
            "suspended" | "hold" => Ok(Status::Suspended),
            "quarantined" => {
                let kinds: Vec<FindingKind> = match kinds {
                    Some(text) => text
                        .split_whitespace()
                        .filter_map(FindingKind::parse)
                        .collect(),
                    None => legacy_kind(&reason).into_iter().collect(),
                };
                Ok(Status::quarantined(reason, kinds))
            }
            other => Err(format!("unknown status {other:?}")),
        }
    }
}

/// The kind of finding a reason written before kinds were recorded names by its label (the
/// labels `engine::policy::decide` wrote then; frozen here, for old spools only).
fn legacy_kind(reason: &str) -> Option<FindingKind> {
    let labels = [
        ("virus:", FindingKind::Virus),
        ("unscannable:", FindingKind::Unscannable),
        ("blocked attachment:", FindingKind::Attachment),
        ("encrypted archive:", FindingKind::Encrypted),
        ("macro document:", FindingKind::Macro),
        ("DMARC:", FindingKind::Dmarc),
        ("spam score", FindingKind::Spam),
    ];
    labels
        .iter()
        .find(|(l, _)| reason.starts_with(l))
        .map(|(_, k)| *k)
}

/// Where a message stands (see the module docs for each name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Queued,
    Deferred,
    Delivering,
    Held,
    Suspended,
    Quarantined,
}

impl State {
    /// Every state, in the order `queue list --state` documents them.
    pub const ALL: [State; 6] = [
        State::Queued,
        State::Deferred,
        State::Delivering,
        State::Held,
        State::Suspended,
        State::Quarantined,
    ];

    /// Its name in the queue API, the CLI and the `state` label of metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Deferred => "deferred",
            State::Delivering => "delivering",
            State::Held => "held",
            State::Suspended => "suspended",
            State::Quarantined => "quarantined",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// The state of a message whose persisted status is `status`, that a worker has now
    /// (`in_flight`), whose destination is down (`dest_down`), tried `attempts` times.
    pub fn of(status: &Status, in_flight: bool, dest_down: bool, attempts: u32) -> State {
        match status {
            Status::Suspended => State::Suspended,
            Status::Quarantined { .. } => State::Quarantined,
            Status::Queued if in_flight => State::Delivering,
            Status::Queued if dest_down => State::Held,
            Status::Queued if attempts > 0 => State::Deferred,
            Status::Queued => State::Queued,
        }
    }

    /// Waiting for delivery: `queued`, `deferred` or `held`.
    pub fn is_waiting(self) -> bool {
        matches!(self, State::Queued | State::Deferred | State::Held)
    }

    /// The move `event` makes from this state, or why it may not.
    pub fn next(self, event: Event) -> Result<Next, Illegal> {
        use State::*;
        let next = match (self, event) {
            (Queued | Deferred, Event::Take) => Next::To(Delivering),
            (Delivering, Event::GiveBack | Event::Defer) => Next::Waiting,
            (Delivering, Event::Complete) => Next::Gone,
            (Delivering, Event::Fault) => Next::To(Suspended),
            (Queued | Deferred | Held, Event::Suspend) => Next::To(Suspended),
            (Suspended | Quarantined, Event::Release) => Next::Waiting,
            (Quarantined, Event::ReleaseSome) => Next::To(Quarantined),
            (Quarantined, Event::Expire) => Next::Gone,
            (Queued | Deferred | Held | Suspended | Quarantined, Event::Delete) => Next::Gone,
            (from, event) => return Err(Illegal { from, event }),
        };
        Ok(next)
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens to a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A delivery worker takes it.
    Take,
    /// The worker lets it go untried (its connection ended first).
    GiveBack,
    /// An attempt left recipients pending: it waits for the next try.
    Defer,
    /// Every recipient is delivered or failed (DSNs queued): it leaves the store.
    Complete,
    /// Delivery cannot go on (spool unreadable, DSN not storable): set aside for an operator.
    Fault,
    /// An operator suspends it (`queue suspend`).
    Suspend,
    /// An operator (`queue release`) or a webmail user releases it for delivery.
    Release,
    /// A webmail user releases their own copy of mail quarantined for colleagues too: those
    /// recipients leave it (a copy for them is queued); the rest stays quarantined.
    ReleaseSome,
    /// An operator or a webmail user deletes it (no DSN).
    Delete,
    /// Quarantined longer than `engine.quarantine_lifetime`.
    Expire,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Take => "take",
            Event::GiveBack => "give back",
            Event::Defer => "defer",
            Event::Complete => "complete",
            Event::Fault => "set aside",
            Event::Suspend => "suspend",
            Event::Release => "release",
            Event::ReleaseSome => "release some recipients of",
            Event::Delete => "delete",
            Event::Expire => "expire",
        }
    }
}

/// Where a move leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Back to waiting: `queued`, `deferred` or `held`, as [`State::of`] tells from its attempts
    /// and its destination.
    Waiting,
    To(State),
    /// Out of the store (delivered, bounced, deleted, expired).
    Gone,
}

/// A move the table does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the message is {from}: cannot {}{}", event.as_str(), hint(*from))]
pub struct Illegal {
    pub from: State,
    pub event: Event,
}

fn hint(from: State) -> &'static str {
    match from {
        State::Delivering => " while it is being delivered; try again in a moment",
        State::Held => " while its destination is down",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENTS: [Event; 10] = [
        Event::Take,
        Event::GiveBack,
        Event::Defer,
        Event::Complete,
        Event::Fault,
        Event::Suspend,
        Event::Release,
        Event::ReleaseSome,
        Event::Delete,
        Event::Expire,
    ];

    /// The whole table, written out: every (state, event) pair not listed is illegal.
    #[test]
    fn the_table_allows_exactly_these_moves() {
        use State::*;
        let allowed = [
            (Queued, Event::Take, Next::To(Delivering)),
            (Deferred, Event::Take, Next::To(Delivering)),
            (Delivering, Event::GiveBack, Next::Waiting),
            (Delivering, Event::Defer, Next::Waiting),
            (Delivering, Event::Complete, Next::Gone),
            (Delivering, Event::Fault, Next::To(Suspended)),
            (Queued, Event::Suspend, Next::To(Suspended)),
            (Deferred, Event::Suspend, Next::To(Suspended)),
            (Held, Event::Suspend, Next::To(Suspended)),
            (Suspended, Event::Release, Next::Waiting),
            (Quarantined, Event::Release, Next::Waiting),
            (Quarantined, Event::ReleaseSome, Next::To(Quarantined)),
            (Quarantined, Event::Expire, Next::Gone),
            (Queued, Event::Delete, Next::Gone),
            (Deferred, Event::Delete, Next::Gone),
            (Held, Event::Delete, Next::Gone),
            (Suspended, Event::Delete, Next::Gone),
            (Quarantined, Event::Delete, Next::Gone),
        ];
        for s in State::ALL {
            for e in EVENTS {
                let want = allowed
                    .iter()
                    .find(|(a, b, _)| *a == s && *b == e)
                    .map(|(_, _, n)| *n);
                match (s.next(e), want) {
                    (Ok(got), Some(want)) => assert_eq!(got, want, "{s} --{e:?}-->"),
                    (Err(i), None) => assert_eq!((i.from, i.event), (s, e)),
                    (got, want) => panic!("{s} --{e:?}--> {got:?}, want {want:?}"),
                }
            }
        }
    }

    /// The moves a newcomer could get wrong, spelled out.
    #[test]
    fn illegal_moves_are_errors_that_say_why() {
        // Mail of a down destination is not taken: it waits for the probe.
        assert!(State::Held.next(Event::Take).is_err());
        // An operator cannot delete or suspend what a worker is sending right now.
        let e = State::Delivering.next(Event::Delete).unwrap_err();
        assert!(e.to_string().contains("try again"), "{e}");
        assert!(State::Delivering.next(Event::Suspend).is_err());
        // Quarantine is left by release, delete or expiry; never suspended on top.
        assert!(State::Quarantined.next(Event::Suspend).is_err());
        assert!(State::Quarantined.next(Event::Take).is_err());
        // Only quarantined mail expires; a suspended message is not released twice.
        assert!(State::Suspended.next(Event::Expire).is_err());
        assert!(State::Queued.next(Event::Release).is_err());
        assert_eq!(
            State::Queued.next(Event::Release).unwrap_err().to_string(),
            "the message is queued: cannot release"
        );
    }

    /// The derived part: in flight wins over a down destination, which wins over retries;
    /// what was decided (suspended, quarantined) wins over everything.
    #[test]
    fn state_is_derived_from_status_and_what_is_true_now() {
        let q = Status::quarantined("spam".into(), [FindingKind::Spam]);
        assert_eq!(State::of(&Status::Queued, false, false, 0), State::Queued);
        assert_eq!(State::of(&Status::Queued, false, false, 2), State::Deferred);
        assert_eq!(State::of(&Status::Queued, false, true, 2), State::Held);
        assert_eq!(State::of(&Status::Queued, true, true, 2), State::Delivering);
        assert_eq!(
            State::of(&Status::Suspended, false, true, 0),
            State::Suspended
        );
        assert_eq!(State::of(&q, false, true, 0), State::Quarantined);
        for s in State::ALL {
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
        assert_eq!(State::parse("hold"), None, "the old name is not a state");
    }

    /// A spool written before the rename says `hold`: it reads as suspended, and is written
    /// back with the new word.
    #[test]
    fn the_old_word_for_suspended_is_read() {
        assert_eq!(
            Status::parse("hold", String::new(), None),
            Ok(Status::Suspended)
        );
        assert_eq!(Status::Suspended.as_str(), "suspended");
        assert!(Status::parse("held", String::new(), None).is_err());
    }

    /// Quarantined mail written before kinds were recorded keeps the kind its reason names;
    /// new mail has every kind it was written with.
    #[test]
    fn quarantine_kinds_are_read_and_old_reasons_give_theirs() {
        let old = |r: &str| Status::parse("quarantined", r.into(), None).unwrap();
        assert_eq!(
            old("virus: EICAR test file in eicar.com"),
            Status::quarantined(
                "virus: EICAR test file in eicar.com".into(),
                [FindingKind::Virus]
            )
        );
        assert_eq!(
            old("quarantine-me: subject"),
            Status::quarantined("quarantine-me: subject".into(), [])
        );
        assert_eq!(
            Status::parse("quarantined", "x".into(), Some("virus attachment bogus")).unwrap(),
            Status::quarantined("x".into(), [FindingKind::Attachment, FindingKind::Virus])
        );
        assert_eq!(
            Status::kinds_text(&[FindingKind::Virus, FindingKind::Macro]),
            "virus macro"
        );
    }
}

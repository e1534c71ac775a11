//! Cluster redundancy by shadow copies (as Exchange's shadow redundancy): with
//! `engine.redundancy = "shadow"` an engine answers `250` only once the message and its envelope
//! are fsynced on its own disk **and** on one other live engine of its cluster, which delivers
//! the message if the first is lost.
//!
//! # Words
//!
//! | word | meaning |
//! |---|---|
//! | primary | the engine that received the message and said `250`; it delivers it |
//! | shadow | the engine of the same cluster that holds its copy |
//! | copy | the message's spool record (envelope and bytes exactly as the primary spooled them) and its progress, in the shadow's copy log (`log/`), keyed by primary and queue id, tagged with the primary's spool identity (`SPOOL/id`) |
//! | link | a primary's connection to a peer's shadow listener: authenticated, pipelined, one per peer, shared by every session |
//! | takeover | the shadow adopts copies into its own store and delivers them |
//!
//! # When a copy is made, and what follows it
//!
//! - **At reception.** The session builds the copy from exactly what it spools and sends it to
//!   a peer chosen by health (link up, disk not full) and load (fewest copies in flight) *while*
//!   its own spool file is written; `250` once both are fsynced. The copy is one frame on the
//!   link and one record in the shadow's log, whose writer fsyncs everything waiting at once (the
//!   local group commit, on the other side). No extra round trip: the one that carries the copy
//!   is the one that acknowledges it. A failed copy is retried on another peer until
//!   `engine.shadow.timeout`.
//! - **No shadow in time.** `tempfail`: the local file is removed (nothing is delivered from
//!   here) and the sender hears `451 4.3.0`. `accept`: `250` with one copy, counted in
//!   `maildistiller_engine_shadow_unshadowed_total`.
//! - **Later.** A message with no live shadow — accepted alone, its shadow unreachable for
//!   [`PEER_DOWN_AFTER`], a DSN, a message adopted in a takeover — is copied by the re-shadow loop
//!   (every [`RESHADOW_EVERY`]) to a peer that is up.
//! - **Outcomes follow.** The store tells the replicator every durable change (its
//!   [`Follower`](crate::store::Follower)); the change goes to the copy's holder on the same
//!   ordered link: a new progress (a retry, a release, a suspension) updates the copy, leaving the
//!   store (delivered, bounced, deleted, expired) discards it. Quarantined and held mail keep their
//!   copy as long as they live, so webmail and release work after a takeover. A DSN (and a copy
//!   released from quarantine for some recipients) is copied to the holder of the message it
//!   reports on (was released from), ahead of that message's discard (new progress) on the same
//!   ordered link, so the DSN's copy is on disk there before the message's is dropped (when that
//!   link is down, the re-shadow loop copies the DSN). Outcomes a link could not carry are found
//!   again when it comes back: the shadow sends its inventory, and the primary discards what it
//!   no longer holds, and copies again what the shadow no longer lists (it lost its disk).
//!
//! # Failure model
//!
//! | failure | who delivers | what holds |
//! |---|---|---|
//! | primary dies **before** its `250` | the sender, again (it got no `250`) | a local file that was complete is recovered and delivered when the primary comes back with its spool (a duplicate of the sender's retry), and the shadow's copy becomes its copy; an incomplete one is gone, and the shadow discards its copy (same spool identity, unknown message). If the primary never comes back, the shadow delivers the copy after takeover: again a duplicate of the sender's retry (at least once) |
//! | primary dies **after** `250`, back within `takeover_after` | the primary | no duplicate: the shadow's inventory matches, nothing is taken over |
//! | primary lost for good (machine or disk gone) | its shadows, once it has been unreachable for `takeover_after` **and** the cluster's other engines agree | 0 acknowledged lost. Messages it delivered whose discard had not reached the shadow are delivered again (at most the deliveries in flight at the loss) |
//! | primary comes back with a **new, empty spool** | its shadows, at once | the spool identity differs: its old copies are adopted when it connects (`by = "spool-lost"`), not discarded |
//! | shadow dies | the primary | its messages held by that shadow get a copy on another peer once the link has been down [`PEER_DOWN_AFTER`]; new mail goes to other peers; with no other peer, `tempfail` answers `451` and `accept` counts single copies. A shadow that comes back with an empty disk lists none of them: the primary copies them to it (or another peer) again |
//! | both die | nobody, for the messages whose two copies were on them | exactly the messages whose every copy was on the two dead engines are lost. Under `tempfail` no message acknowledged after the first death is lost by the second (its copy is on a live engine, or it was not acknowledged). Of those acknowledged before it: the dead primary's copies on the second engine survive only if it took them over and copied them again before dying (`takeover_after` plus seconds); the second engine's own messages copied on the first survive if it re-shadowed them ([`PEER_DOWN_AFTER`] plus the copy time). Under `accept`, single copies (counted) die with their engine |
//! | partition between primary and shadow | the primary, and the shadow too if the cluster cannot hear the primary | the primary re-shadows elsewhere when it can. The shadow takes over only when every other engine of the cluster that answers also has not heard the primary for `takeover_after` (in a two-engine cluster its own view decides: it cannot tell a partition from a death). At least once: when the link heals the primary learns what was taken over and counts what both delivered (`duplicates_delivered`) |
//! | disk full on the shadow | the primary, copying elsewhere | below its reserve the shadow acknowledges copies with "full" (the primary tries another peer, then `on_shadow_failure`) and still records discards and progress |
//! | primary returns after a takeover | the shadow | the primary reads the inventory, drops the taken-over messages it still holds (`duplicates_avoided`), counts those it delivered meanwhile (`duplicates_delivered`), and the shadow forgets its markers |
//!
//! An engine whose every message would get `451` (`tempfail`, no usable peer) says so on
//! `/readyz` (503, `"unready":["no-shadow"]`): edges route its tenants elsewhere (another cluster
//! of their regions) instead of letting senders retry into the same refusal.
//!
//! Delivery is at least once everywhere: nothing acknowledged is lost while one of its two
//! copies survives; duplicates are possible where the table says so, and counted.
//!
//! # Layout
//!
//! | file | owns |
//! |---|---|
//! | `log/` | the copy log on disk: records, group commit, recovery, compaction |
//! | `wire.rs` | the channel's frames (sans-I/O), the HMAC proofs and the per-frame tags |
//! | `link.rs` | a primary's link to one peer: copies, outcomes, pings, the inventory on reconnect |
//! | `serve.rs` | the shadow listener: proofs, inventory, copies into the log, acknowledgements |
//! | `takeover.rs` | who is down, the cluster's agreement, adoption, the re-shadow loop, `queue takeover` |
//! | `metrics.rs` | `maildistiller_engine_shadow_*` |
//!
//! # Bounds
//!
//! One link per peer, at most [`LINK_QUEUE`] frames waiting on each; the shadow listener takes at
//! most [`MAX_LINKS`] connections; a frame is at most `engine.max_message_size` plus
//! [`FRAME_SLACK`]; a link remembers at most [`UNSENT_MAX`] discards it could not deliver (for
//! counting duplicates); the re-shadow loop has at most [`RESHADOW_IN_FLIGHT`] copies out.
//! Cluster membership (who the peers are) is read at start.

mod link;
mod log;
mod metrics;
mod serve;
mod takeover;
pub mod wire;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use crate::config::{OnShadowFailure, Redundancy};
use crate::ops::Ops;
use crate::store::{Dest, Envelope, Follower, Progress, QueueId, Store};
pub use link::Peer;
pub use log::{Entry, SEGMENT_BYTES, ShadowLog};
use metrics::ShadowMetrics;
pub use takeover::TakeoverError;

/// A link down this long makes its copies count as lost: they are copied again elsewhere.
pub const PEER_DOWN_AFTER: Duration = Duration::from_secs(3);
/// Pings on an idle link (they also carry the peer's view of who it hears).
pub const PING_EVERY: Duration = Duration::from_secs(1);
/// How often unshadowed messages are looked for (and the takeover watch runs).
pub const RESHADOW_EVERY: Duration = Duration::from_secs(1);
/// Frames waiting for one link.
pub const LINK_QUEUE: usize = 4096;
/// Connections the shadow listener takes at once.
pub const MAX_LINKS: usize = 64;
/// Bytes a frame may carry beyond `engine.max_message_size` (envelope, header lines we add).
pub const FRAME_SLACK: u64 = 2 << 20;
/// Discards a link remembers while it is down.
pub const UNSENT_MAX: usize = 100_000;
/// Copies the re-shadow loop has out at once.
pub const RESHADOW_IN_FLIGHT: usize = 64;
/// The readiness hold (`/readyz` 503) of an engine that would answer 451 to every message:
/// `tempfail` and no peer usable. Edges then send its tenants' mail to other engines.
pub const UNREADY: &str = "no-shadow";

/// How the lookups of a takeover route an adopted message (the engine's delivery routing).
pub type Route = Arc<dyn Fn(&Envelope) -> Dest + Send + Sync>;

/// Why no shadow holds a copy.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CopyError {
    #[error("no peer engine is reachable")]
    NoPeer,
    #[error("no shadow acknowledged the copy within {0:?}")]
    Timeout(Duration),
}

/// The engine's replication: its links to the peers (as a primary), its copy log and listener
/// (as a shadow). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Replicator {
    inner: Arc<Shared>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    ops: Arc<Ops>,
    store: Store,
    log: ShadowLog,
    route: RouteBox,
    /// This engine's id: its `[[silo.cluster.engine]] address`.
    me: String,
    /// The other engines of the cluster that take copies.
    peers: Vec<Arc<Peer>>,
    /// Which peer holds each of this engine's messages (by index into `peers`).
    holders: Mutex<HashMap<QueueId, usize>>,
    /// Messages being received: on disk here, their copy in flight, not yet decided.
    preparing: Mutex<HashSet<QueueId>>,
    /// When each engine was last heard on a link it opened to us.
    heard: Mutex<HashMap<String, Instant>>,
    /// When this process started (an engine never heard counts as silent since then).
    started: Instant,
    metrics: ShadowMetrics,
    /// Serialises takeovers with each other and with a returning primary's handshake.
    takeover: tokio::sync::Mutex<()>,
    /// Woken when a link comes up (sessions waiting for a peer).
    peers_changed: tokio::sync::Notify,
}

pub(crate) struct RouteBox(Route);

impl std::fmt::Debug for RouteBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Route")
    }
}

/// A bound replicator: the handle, and the future that serves its listener and links until
/// shutdown.
pub struct Started {
    pub replicator: Replicator,
    pub serving: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

/// This engine's entry in the fleet: the engine whose `shadow` address is one of
/// `engine.shadow.listen`. Returns its id and the other engines of its cluster that take copies
/// (id, shadow address).
pub fn identify(ops: &Ops) -> Option<(String, Vec<(String, SocketAddr)>)> {
    let snap = ops.config.load();
    let t = &snap.topology;
    let listen = &snap.config.engine.shadow.listen;
    let me = t
        .engines
        .iter()
        .find(|e| e.shadow.is_some_and(|a| listen.contains(&a)))?;
    let peers = t.clusters[me.cluster.0]
        .engines
        .iter()
        .map(|i| &t.engines[i.0])
        .filter(|e| e.address != me.address)
        .filter_map(|e| Some((e.address.to_string(), e.shadow?)))
        .collect();
    Some((me.address.to_string(), peers))
}

/// Opens the copy log under `SPOOL/shadow/`, binds the shadow listener (or takes `prebound`),
/// starts a link to every peer, and follows `store`. `None` when `engine.shadow.listen` is empty.
pub async fn start(
    ops: &Arc<Ops>,
    store: &Store,
    route: Route,
    prebound: Vec<TcpListener>,
) -> std::io::Result<Option<Started>> {
    let snap = ops.config.load_full();
    let ecfg = &snap.config.engine;
    if ecfg.shadow.listen.is_empty() {
        return Ok(None);
    }
    let Some((me, peers)) = identify(ops) else {
        return Err(std::io::Error::other(
            "engine.shadow.listen: no [[silo.cluster.engine]] has it as its shadow address",
        ));
    };
    let (log, problems) = ShadowLog::open(&ecfg.spool_dir.join("shadow"), SEGMENT_BYTES)?;
    for p in &problems {
        tracing::error!(problem = %p, "shadow log recovery");
    }
    let mut listeners = prebound;
    if listeners.is_empty() {
        for a in &ecfg.shadow.listen {
            let l = TcpListener::bind(a).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("engine.shadow.listen {a}: {e}"))
            })?;
            listeners.push(l);
        }
    }
    let metrics = ShadowMetrics::new(&ops.metrics);
    let peers: Vec<Arc<Peer>> = peers
        .into_iter()
        .map(|(id, addr)| Arc::new(Peer::new(id, addr)))
        .collect();
    for p in &peers {
        metrics.peer_up.with_label_values(&[&p.id]).set(0);
    }
    let inner = Arc::new(Shared {
        ops: ops.clone(),
        store: store.clone(),
        log,
        route: RouteBox(route),
        me: me.clone(),
        peers,
        holders: Mutex::default(),
        preparing: Mutex::default(),
        heard: Mutex::default(),
        started: Instant::now(),
        metrics,
        takeover: tokio::sync::Mutex::new(()),
        peers_changed: tokio::sync::Notify::new(),
    });
    let r = Replicator { inner };
    r.inner.refresh_readiness();
    let follower: Arc<dyn Follower> = r.inner.clone();
    store.follow(&follower);
    tracing::info!(
        engine = %me,
        peers = ?r.inner.peers.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        held = r.inner.log.per_primary().iter().map(|x| x.1).sum::<usize>(),
        redundancy = ecfg.redundancy.as_str(),
        "shadow redundancy: listening for copies"
    );
    ops.add_status(Arc::new(takeover::Status(r.clone())));
    ops.add_routes(takeover::routes(r.clone()));
    let serving = Box::pin(run(r.clone(), listeners));
    Ok(Some(Started {
        replicator: r,
        serving,
    }))
}

async fn run(r: Replicator, listeners: Vec<TcpListener>) {
    let tracker = tokio_util::task::TaskTracker::new();
    for l in listeners {
        tracker.spawn(serve::accept_loop(r.inner.clone(), l));
    }
    for (i, p) in r.inner.peers.iter().enumerate() {
        tracker.spawn(link::run(r.inner.clone(), i, p.clone()));
    }
    tracker.spawn(takeover::watch(r.inner.clone()));
    tracker.close();
    tracker.wait().await;
}

impl Shared {
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When `engine` was last heard, on a link in either direction.
    fn last_heard(&self, engine: &str) -> Option<Instant> {
        let incoming = Self::lock(&self.heard).get(engine).copied();
        let outgoing = self
            .peers
            .iter()
            .find(|p| p.id == engine)
            .and_then(|p| p.last_ok());
        incoming.max(outgoing)
    }

    /// The peer for a new copy: a link up and not full, the fewest copies in flight (ties
    /// broken at random); `avoid` are peers already tried.
    fn choose(&self, avoid: &[usize]) -> Option<usize> {
        let mut best: Option<(usize, u32, u32)> = None;
        for (i, p) in self.peers.iter().enumerate() {
            if avoid.contains(&i) || !p.usable() {
                continue;
            }
            let (load, tie) = (p.in_flight(), fastrand::u32(..));
            if best.is_none_or(|(_, l, t)| (load, tie) < (l, t)) {
                best = Some((i, load, tie));
            }
        }
        best.map(|(i, ..)| i)
    }

    /// Sends a copy frame (`COPY`, seq unset) and waits for a shadow's fsync, trying other
    /// peers until `deadline`. Returns the peer that holds it.
    async fn place(
        &self,
        id: &QueueId,
        frame: Arc<Vec<u8>>,
        deadline: tokio::time::Instant,
    ) -> Result<usize, CopyError> {
        let mut tried = Vec::new();
        let mut any = false;
        loop {
            let Some(i) = self.choose(&tried) else {
                // Nobody usable now: wait for a link to come up, until the deadline.
                let woke = tokio::time::timeout_at(deadline, self.peers_changed.notified());
                if woke.await.is_err() {
                    self.metrics
                        .copies
                        .with_label_values(&[if any { "timeout" } else { "no_peer" }])
                        .inc();
                    return Err(if any {
                        CopyError::Timeout(self.timeout())
                    } else {
                        CopyError::NoPeer
                    });
                }
                tried.clear();
                continue;
            };
            any = true;
            let sent = Instant::now();
            match self.peers[i]
                .copy(id.clone(), frame.clone(), deadline)
                .await
            {
                Ok(()) => {
                    self.metrics.latency.observe(sent.elapsed().as_secs_f64());
                    self.metrics.copies.with_label_values(&["ok"]).inc();
                    return Ok(i);
                }
                Err(link::Refused::Deadline) => {
                    self.metrics.copies.with_label_values(&["timeout"]).inc();
                    return Err(CopyError::Timeout(self.timeout()));
                }
                Err(link::Refused::Full) => {
                    self.metrics.copies.with_label_values(&["full"]).inc();
                    tried.push(i);
                }
                Err(link::Refused::Error(e)) => {
                    tracing::warn!(peer = %self.peers[i].id, id = %id, error = %e, "copy refused; trying another peer");
                    self.metrics.copies.with_label_values(&["error"]).inc();
                    tried.push(i);
                }
            }
        }
    }

    /// Holds the engine's readiness while every message would get a 451 for want of a shadow.
    fn refresh_readiness(&self) {
        let hold = plan(&self.ops) == Plan::Shadow(OnShadowFailure::Tempfail)
            && !self.peers.iter().any(|p| p.usable());
        self.ops.hold_readiness(UNREADY, hold);
    }

    fn timeout(&self) -> Duration {
        self.ops.config.load().config.engine.shadow.timeout.get()
    }

    fn route(&self, env: &Envelope) -> Dest {
        (self.route.0)(env)
    }
}

/// What reception does for a message, decided by the config in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// One copy (`redundancy = "none"`).
    Single,
    /// A shadow first; on failure, as `on_shadow_failure` says.
    Shadow(OnShadowFailure),
}

/// The plan for a message received now under the config in `ops`.
pub fn plan(ops: &Ops) -> Plan {
    let snap = ops.config.load();
    match snap.config.engine.redundancy {
        Redundancy::None => Plan::Single,
        Redundancy::Shadow => Plan::Shadow(snap.config.engine.on_shadow_failure),
    }
}

impl Replicator {
    /// Copies a message being received (`frame`: [`wire::copy_frame`] of what is spooled) to a
    /// shadow, within `engine.shadow.timeout`. The message counts as being received until
    /// [`Replicator::decided`]. Returns the shadow's engine id.
    pub async fn copy(&self, id: &QueueId, frame: Vec<u8>) -> Result<String, CopyError> {
        let s = &self.inner;
        Shared::lock(&s.preparing).insert(id.clone());
        let deadline = tokio::time::Instant::now() + s.timeout();
        let i = s.place(id, Arc::new(frame), deadline).await?;
        Shared::lock(&s.holders).insert(id.clone(), i);
        Ok(s.peers[i].id.clone())
    }

    /// The session decided (committed or abandoned) a message it copied.
    pub fn decided(&self, id: &QueueId) {
        Shared::lock(&self.inner.preparing).remove(id);
    }

    /// A copy was made but the message was not stored here after all: the shadow discards it.
    pub fn discard(&self, id: &QueueId) {
        self.inner.changed(id, None);
    }

    /// Records how much longer the 250 waited for the shadow than for the local disk.
    pub fn added_wait(&self, d: Duration) {
        self.inner.metrics.added.observe(d.as_secs_f64());
    }

    /// Counts a message answered 250 with a single copy.
    pub fn unshadowed(&self) {
        self.inner.metrics.unshadowed_total.inc();
    }

    /// This engine's id in the fleet.
    pub fn me(&self) -> &str {
        &self.inner.me
    }

    /// The copy log (tests look at it).
    pub fn log(&self) -> &ShadowLog {
        &self.inner.log
    }

    /// The peer holding a message's copy, if any.
    pub fn holder(&self, id: &QueueId) -> Option<String> {
        let i = *Shared::lock(&self.inner.holders).get(id)?;
        Some(self.inner.peers[i].id.clone())
    }

    /// Adopts every copy held for `from` now, as an operator asked (`queue takeover`).
    pub async fn takeover(&self, from: &str) -> Result<usize, TakeoverError> {
        takeover::by_operator(&self.inner, from).await
    }
}

impl Follower for Shared {
    fn accepted(&self, env: &Arc<Envelope>, message: &[u8], parent: Option<&QueueId>) {
        let s = self;
        if plan(&s.ops) == Plan::Single {
            return;
        }
        let holder = parent.and_then(|p| Shared::lock(&s.holders).get(p).copied());
        let Some(i) = holder
            .filter(|&i| s.peers[i].usable())
            .or_else(|| s.choose(&[]))
        else {
            return; // the re-shadow loop will find it
        };
        let progress = s.store.get(&env.id).map(|l| l.progress);
        let frame = wire::copy_frame(env, message, progress.as_ref());
        s.peers[i].copy_later(env.id.clone(), Arc::new(frame));
    }

    fn changed(&self, id: &QueueId, progress: Option<&Progress>) {
        let s = self;
        let holder = {
            let mut h = Shared::lock(&s.holders);
            match progress {
                Some(_) => h.get(id).copied(),
                None => h.remove(id),
            }
        };
        if let Some(i) = holder {
            s.peers[i].outcome(id.clone(), progress.cloned());
        }
    }
}

//! What one node sees and every node must know, through one Redis/Valkey deployment
//! (`[shared]`): fingerprints of scanned mail counted fleet-wide for outbreak detection,
//! greylisting triplets, fleet-wide sender rates for the edges, and the operator's
//! intelligence feed. The only module that names `redis`.
//!
//! # Layout
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | [`Fleet`]: the process's client, its health, the batched writer and the sync loop |
//! | `conn.rs` | connections (standalone or Cluster), one batch of commands with a deadline |
//! | `keys.rs` | every key name, with its hash tag |
//! | `outbreak.rs` | sightings of fingerprints: the fleet's counts and this node's own |
//! | `spread.rs` | what this node knows of the fleet's counts: the sighting script's answers and the spreading stream |
//! | `greylist.rs` | greylisting triplets |
//! | `limits.rs` | fleet-wide sender rates for the edges |
//! | `intel.rs` | the operator's intelligence feed and its API |
//! | `lessons.rs` | what users teach at one engine, learnt by every engine's own model |
//! | `metrics.rs` | `maildistiller_shared_*`, `_outbreak_*`, `_greylist_*`, `_intel_*` |
//!
//! # Nothing waits on the store
//!
//! - **Outbreak counts are never read on the message path**: a message is judged on what this
//!   node already knows (`spread.rs`) — the counts the store answered to its own sightings,
//!   and those other nodes put on the spreading stream, read from the near store every
//!   `shared.flush_interval` — and on its own sightings since.
//! - **Reads on the message path** (a greylisting triplet: one GET per RCPT) go to the store
//!   near the node (`shared.read`: a replica or a per-silo instance) with a deadline
//!   (`shared.timeout`, 50 ms by default). Past it, or when the store is known to be down, the
//!   node decides on its own knowledge: the triplets it saw itself, the last intel feed it read.
//! - **Writes** (sightings, triplets, outbreak markers) never happen on the message path: they
//!   queue (at most `shared.max_pending`, then dropped and counted) and a writer sends them
//!   every `shared.flush_interval` as one pipeline to `shared.redis` (the primary, which may
//!   be in another region: its round trip costs nobody a reply). The writer runs on a thread,
//!   runtime and connection of its own: encoding and answering a batch of thousands of
//!   commands holds up no session, and no read of the message path queues behind a batch.
//!   A message's sightings are one write (one script call for all its fingerprints).
//! - **Syncs** (every `shared.sync_interval`): the intel feed is read in one `HGETALL`, the
//!   edges' rate counters are reconciled, and while the store is down it is tried again
//!   (`PING`). The first answer brings the node back to fleet knowledge.
//!
//! A failed or late call marks the store down (`maildistiller_shared_store_up` 0, alert
//! `MaildistillerSharedStoreDown`) until the next sync answers: no message waits for a store
//! that just failed. Mail keeps flowing either way; nothing acknowledged depends on the store.
//!
//! # Production shape and propagation
//!
//! One primary (or a Cluster's primaries; with `shared.sentinel`, whichever server Redis
//! Sentinel names, followed through a failover: `conn.rs`) in one region takes the writes;
//! each silo has a replica that its nodes read (`shared.read`). A sighting reaches the other
//! silos after: the writer's batch (≤ `flush_interval`, 100 ms) + the round trip to the
//! primary (≤ 100 ms across regions) + replication to the silo's replica (one more one-way
//! trip, asynchronous, typically < 100 ms): **about 0.3 s**, against the ≤ 2 s goal (rspamd's
//! fuzzy sync: 60–90 s). The intel feed is read once per `sync_interval` (1 s): an operator's
//! block is in force everywhere within about 1.3 s. When the link between regions is cut, a
//! silo keeps reading its replica (stale, but its own writes fail and are counted), decides on
//! what it knows, and catches up when the link returns: the replica resynchronises, the writer
//! resumes. Outbreak counts travel the same path, plus one more batch (the spreading stream's
//! append) and the reader's next turn: ~0.4 s (`spread.rs`). One shared instance (all silos on one address) is the simple shape, and the one
//! most integration tests run (`tests/it/shared.rs`); a real three-primary Cluster
//! (`shared/cluster.rs`) and a primary, replica and Sentinel through a failover
//! (`shared/sentinel.rs`) are run too.
//!
//! # Memory and expiry, per key family (`keys.rs`)
//!
//! | family | per entry | expires |
//! |---|---|---|
//! | sightings `P:o:{fp}:z` | one sorted set of who saw it (members `r…`, `t…`, `n…`) its counts (`#r`, `#t`, `#n`, `#f`) and when it expires (`#x`), ≤ [`outbreak::MEMBERS_CAP`] members per kind (≤ 604 members): 232 B for a fingerprint seen once (listpack), 4.2 KB with 123 members (128 entries with the counts), 14 KB with 127 (a skiplist past 128 entries), ~60 KB at the cap (`MEMORY USAGE`, Redis 7.0.15) | 1 to 1.5 times the policy's window after the last sighting (set with the first sighting, renewed when less than a window is left) |
//! | outbreak marker `P:o:{fp}:x` | a string, ~60 B | [`outbreak::MARKER_TTL_MS`] (1 d) |
//! | lessons stream `P:{lessons}` | one stream, a lesson ~3 KB (its token hashes; ≤ 32 KB), ≤ [`lessons::STREAM_MAX`] entries (~30 MB) | trimmed to its length as it is appended to |
//! | spreading stream `P:{spread}` | one stream, ~80 B an entry, ≤ [`spread::STREAM_MAX`] entries (~0.8 MB) | trimmed to its length as it is appended to |
//! | greylisting `P:g:{t}` | a string, ~60 B | `retry_window` (2 d) before the retry passes, then `allow_for` (36 d) |
//! | sender rates `P:r:{net}:c/m:MIN` | an integer, ~60 B | 2 min |
//! | intel feed `P:{intel}` | one hash, ~150 B an entry, ≤ [`intel::MAX_ENTRIES`] | entries carry their own expiry; expired ones are removed when listed |
//!
//! A message writes one sighting per fingerprint: 6 for a plain text (its digest and 5 fuzzy
//! bands), up to 14 with attachments and URL domains. At 100 msg/s with a 1 h window and every
//! message unique that is ~2.2 M fingerprints, ~210 B each: ~460 MB at worst; campaigns and repeated
//! mail share theirs. Size the window to the memory you give Redis (`maxmemory-policy
//! volatile-ttl` keeps it safe).

pub mod conn;
pub mod greylist;
pub mod intel;
pub mod keys;
pub mod lessons;
pub mod limits;
mod metrics;
pub mod outbreak;
pub mod spread;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use redis::Value;
use tokio::sync::mpsc;

use crate::config::{ConfigError, SharedConfig};
use crate::ops::Ops;
pub use conn::{Call, Conn, StoreError};
pub use keys::{Fingerprint, Keys};
pub use metrics::SharedMetrics;

/// Longest wait for a batch of writes or a sync (never on the message path).
pub const WRITE_DEADLINE: Duration = Duration::from_secs(2);

/// Commands sent in one write pipeline at most (the rest wait for the next flush).
pub const MAX_BATCH: usize = 5000;

/// Wall-clock milliseconds since the epoch: what sightings, triplets and minutes are stamped
/// with, the same on every node (their clocks are kept by NTP).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What `maildistiller check` can say about `[shared]` that needs the client: the addresses.
pub fn check(c: &crate::config::Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    if let Err(e) = conn::parse(&c.shared.redis) {
        errors.push(ConfigError::new("shared.redis", e));
    }
    let read: Vec<String> = c
        .shared
        .read
        .iter()
        .filter(|u| *u != "replicas")
        .cloned()
        .collect();
    if let Err(e) = conn::parse(&read) {
        errors.push(ConfigError::new("shared.read", e));
    }
    errors
}

/// `XADD key MAXLEN ~ max *`, for the fields to follow: a stream appended to and trimmed to
/// about its length in the same command.
pub(crate) fn xadd_capped(key: &str, max: usize) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(key).arg("MAXLEN").arg("~").arg(max).arg("*");
    cmd
}

/// A write, and what its answer means.
#[derive(Debug)]
pub(crate) struct Write {
    pub call: Call,
    /// The script body when `call` is an `EVALSHA` (sent as `EVAL` after a `NOSCRIPT`).
    pub script: Option<&'static str>,
    pub then: Then,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Then {
    Nothing,
    /// An outbreak marker set with NX: `OK` means this node found the outbreak first.
    Marker,
    /// A sighting script: it answers these fingerprints' counts (`spread.rs`).
    Counted(Vec<Fingerprint>),
}

/// The process's view of the fleet's shared knowledge (one per process: [`Fleet::for_process`];
/// [`Fleet::local`] for a scanner without a store).
pub struct Fleet {
    pub cfg: SharedConfig,
    pub keys: Keys,
    write: ArcSwapOption<Conn>,
    read: ArcSwapOption<Conn>,
    up: AtomicBool,
    queue: Option<mpsc::Sender<Write>>,
    pub metrics: SharedMetrics,
    pub outbreaks: outbreak::Local,
    /// What this node knows of the fleet's counts (`spread.rs`).
    pub spread: spread::View,
    /// A scanner counts fingerprints here: the writer follows the spreading stream.
    following: AtomicBool,
    pub greylist: greylist::Local,
    pub intel: ArcSwap<intel::Feed>,
    pub rates: limits::Rates,
    lessons: std::sync::OnceLock<lessons::Following>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("redis", &self.cfg.redis)
            .field("up", &self.is_up())
            .finish()
    }
}

impl Fleet {
    /// Local knowledge only: no store, no tasks (scanners built without a process, tests).
    pub fn local() -> Arc<Fleet> {
        Arc::new(Fleet::new(SharedConfig::default(), None))
    }

    pub(crate) fn new(cfg: SharedConfig, queue: Option<mpsc::Sender<Write>>) -> Fleet {
        let enabled = cfg.enabled();
        Fleet {
            keys: Keys::new(&cfg.prefix),
            cfg,
            write: ArcSwapOption::empty(),
            read: ArcSwapOption::empty(),
            // Optimistic: the first call tries the store (and a failure says otherwise).
            up: AtomicBool::new(enabled),
            queue,
            metrics: SharedMetrics::new(),
            outbreaks: outbreak::Local::default(),
            spread: spread::View::default(),
            following: AtomicBool::new(false),
            greylist: greylist::Local::default(),
            intel: ArcSwap::from_pointee(intel::Feed::default()),
            rates: limits::Rates::default(),
            lessons: std::sync::OnceLock::new(),
        }
    }

    /// The process's fleet client, made by the first role that asks (the engine and the edge
    /// of one process share it): connections opened lazily, the writer and the sync loop
    /// started on the current runtime until `ops.shutdown`, its metrics registered, the
    /// intel API mounted on the ops listener. `[shared]` is read once: changing it takes a
    /// restart (a reload that changes it says so).
    pub async fn for_process(ops: &Arc<Ops>) -> Arc<Fleet> {
        if let Some(f) = ops.extension::<Fleet>() {
            return f;
        }
        let cfg = ops.config.load().config.shared.clone();
        let (tx, rx) = if cfg.enabled() {
            let (tx, rx) = mpsc::channel(cfg.max_pending as usize);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let fleet = Arc::new(Fleet::new(cfg, tx));
        let fleet = ops.set_extension(fleet);
        fleet.metrics.register(&ops.metrics);
        fleet.metrics.up.set(i64::from(fleet.is_up()));
        ops.add_routes(intel::routes(fleet.clone()));
        if let Some(rx) = rx {
            fleet.connect().await;
            start_writer(&fleet, rx, ops.shutdown.clone());
            tokio::spawn(sync(fleet.clone(), ops.clone()));
        }
        fleet
    }

    /// Asks the writer to follow the spreading stream (an outbreak scanner was built, with
    /// these thresholds and window: what is worth telling the fleet, `spread.rs`).
    pub fn follow_spread(&self, thresholds: outbreak::Counts, window_ms: u64) {
        self.spread.care(thresholds, window_ms);
        self.following.store(true, Ordering::Relaxed);
    }

    /// A store is configured.
    pub fn enabled(&self) -> bool {
        self.cfg.enabled()
    }

    /// The store answered its last call.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn set_up(&self, up: bool) {
        let was = self.up.swap(up, Ordering::Relaxed);
        self.metrics.up.set(i64::from(up));
        if was != up && self.enabled() {
            if up {
                tracing::info!(redis = ?self.cfg.redis, "shared store answers: fleet knowledge again");
            } else {
                tracing::warn!(redis = ?self.cfg.redis, "shared store down: local knowledge only");
            }
        }
    }

    /// Opens the connections that are not open yet; true when both are.
    async fn connect(&self) -> bool {
        let cfg = &self.cfg;
        if self.write.load().is_none() {
            match Conn::open(cfg, &cfg.redis, false).await {
                Ok(c) => self.write.store(Some(Arc::new(c))),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot connect to shared.redis");
                    return false;
                }
            }
        }
        if self.read.load().is_none() {
            let conn = match cfg.read.as_slice() {
                [] => self.write.load_full(),
                [r] if r == "replicas" => {
                    Conn::open(cfg, &cfg.redis, true).await.ok().map(Arc::new)
                }
                urls => match Conn::open(cfg, urls, false).await {
                    Ok(c) => Some(Arc::new(c)),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot connect to shared.read");
                        None
                    }
                },
            };
            self.read.store(conn);
        }
        self.read.load().is_some()
    }

    /// One batch on the message path: from the near store, within `shared.timeout`. `None`
    /// (decide on local knowledge) when the store is down, late or failing.
    pub async fn read(&self, calls: &[Call]) -> Option<Vec<Value>> {
        let conn = self.read.load_full()?;
        if !self.is_up() {
            self.metrics
                .calls
                .with_label_values(&["read", "skipped"])
                .inc();
            return None;
        }
        self.call("read", &conn, calls, self.cfg.timeout.get())
            .await
    }

    /// A batch on the operator's behalf (the intel API): to the primary, within
    /// [`WRITE_DEADLINE`], whether or not the store was last seen up.
    pub async fn command(&self, calls: &[Call]) -> Result<Vec<Value>, StoreError> {
        let Some(conn) = self.write.load_full() else {
            return Err(StoreError::Connecting(
                "no shared store is configured".into(),
            ));
        };
        let r = conn.batch(calls, WRITE_DEADLINE).await;
        self.set_up(r.is_ok());
        r
    }

    async fn call(
        &self,
        op: &'static str,
        conn: &Conn,
        calls: &[Call],
        deadline: Duration,
    ) -> Option<Vec<Value>> {
        let start = Instant::now();
        match conn.batch(calls, deadline).await {
            Ok(v) => {
                self.metrics.calls.with_label_values(&[op, "ok"]).inc();
                self.metrics
                    .latency
                    .with_label_values(&[op])
                    .observe(start.elapsed().as_secs_f64());
                self.set_up(true);
                Some(v)
            }
            Err(e) => {
                let result = if matches!(e, StoreError::Timeout(_)) {
                    "timeout"
                } else {
                    "error"
                };
                self.metrics.calls.with_label_values(&[op, result]).inc();
                tracing::debug!(op, error = %e, "shared store call failed");
                self.set_up(false);
                None
            }
        }
    }

    /// Queues a write for the next batch (never waits); dropped and counted when the queue
    /// is full or no store is configured.
    pub(crate) fn write(&self, w: Write) {
        let Some(q) = &self.queue else {
            return;
        };
        if q.try_send(w).is_err() {
            self.metrics.dropped.inc();
        }
    }
}

/// Starts the writer on a thread and runtime of its own, with a connection of its own. A flush
/// encodes, sends and reads back up to [`MAX_BATCH`] commands: on the sessions' runtime (a
/// current-thread one, or a worker whose other tasks wait) that would hold up the replies of
/// the sessions beside it, and on the message path's connection it would queue their reads
/// behind the whole batch. Ends at `shutdown` (after a last flush) or when the fleet is gone.
fn start_writer(
    fleet: &Arc<Fleet>,
    rx: mpsc::Receiver<Write>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let fleet = Arc::downgrade(fleet);
    let spawned = std::thread::Builder::new()
        .name("shared-writer".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(writer(fleet, rx, shutdown)),
                Err(e) => tracing::error!(error = %e, "no runtime for the shared-store writer: writes are dropped"),
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "no thread for the shared-store writer: writes are dropped");
    }
}

/// Sends queued writes every `flush_interval`, as one pipeline (at most [`MAX_BATCH`]), and
/// then reads what is new on the spreading stream (when a scanner follows it).
async fn writer(
    fleet: Weak<Fleet>,
    mut rx: mpsc::Receiver<Write>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let Some(cfg) = fleet.upgrade().map(|f| f.cfg.clone()) else {
        return;
    };
    let mut conn: Option<Conn> = None;
    let mut tick = tokio::time::interval(cfg.flush_interval.get());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch: Vec<Write> = Vec::new();
    let mut spread_from = "0".to_owned();
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = shutdown.cancelled() => true,
        };
        let Some(fleet) = fleet.upgrade() else {
            return;
        };
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            if conn.is_none() {
                match Conn::open(&cfg, &cfg.redis, false).await {
                    Ok(c) => conn = Some(c),
                    Err(e) => tracing::debug!(error = %e, "shared-store writer cannot connect"),
                }
            }
            let batch = std::mem::take(&mut batch);
            match &conn {
                Some(c) => flush(&fleet, c, batch).await,
                None => fleet.metrics.dropped.inc_by(batch.len() as u64),
            }
        }
        if fleet.following.load(Ordering::Relaxed) {
            spread_from = fleet.read_spread(spread_from).await;
        }
        fleet.read_lessons().await;
        if stopping {
            return;
        }
    }
}

async fn flush(fleet: &Fleet, conn: &Conn, batch: Vec<Write>) {
    let calls: Vec<Call> = batch.iter().map(|w| w.call.clone()).collect();
    let Some(answers) = fleet.call("write", conn, &calls, WRITE_DEADLINE).await else {
        fleet.metrics.dropped.inc_by(batch.len() as u64);
        return;
    };
    // Scripts the server does not know yet: once more as EVAL (which also caches them).
    let mut again = Vec::new();
    let mut tell = Vec::new();
    for (w, a) in batch.iter().zip(&answers) {
        match a {
            Value::ServerError(e) if e.code() == "NOSCRIPT" && w.script.is_some() => {
                again.push((w, outbreak::as_eval(&w.call, w.script.unwrap_or_default())));
            }
            Value::ServerError(e) => {
                tracing::debug!(error = ?e, "shared store refused a write");
                fleet.metrics.dropped.inc();
            }
            a => tell.extend(after(fleet, &w.then, a)),
        }
    }
    if !again.is_empty() {
        let calls: Vec<Call> = again.iter().map(|(_, c)| c.clone()).collect();
        match fleet.call("write", conn, &calls, WRITE_DEADLINE).await {
            Some(answers) => {
                for ((w, _), a) in again.iter().zip(&answers) {
                    tell.extend(after(fleet, &w.then, a));
                }
            }
            None => fleet.metrics.dropped.inc_by(again.len() as u64),
        }
    }
    // What spread further than this node knew: on the stream for every node, at once.
    if !tell.is_empty()
        && fleet
            .call("write", conn, &tell, WRITE_DEADLINE)
            .await
            .is_none()
    {
        fleet.metrics.dropped.inc_by(tell.len() as u64);
    }
}

/// Takes a write's answer; returns the calls that tell the fleet what it learnt.
fn after(fleet: &Fleet, then: &Then, answer: &Value) -> Vec<Call> {
    match then {
        Then::Marker if matches!(answer, Value::Okay) => {
            fleet.metrics.detected.inc();
            Vec::new()
        }
        Then::Counted(fps) => fleet.answered(fps, answer),
        _ => Vec::new(),
    }
}

/// Every `sync_interval`: reconnects what is not connected, reads the intel feed (which tells
/// whether the store is back), reconciles the edges' rate counters.
async fn sync(fleet: Arc<Fleet>, ops: Arc<Ops>) {
    let mut tick = tokio::time::interval(fleet.cfg.sync_interval.get());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = ops.shutdown.cancelled() => return,
        }
        if !fleet.connect().await {
            fleet.set_up(false);
            continue;
        }
        let snap = ops.config.load();
        if snap.config.shared != fleet.cfg && !warned {
            warned = true;
            tracing::warn!("[shared] changed: restart the process to use the new settings");
        }
        intel::refresh(&fleet).await;
        if fleet.is_up() {
            limits::sync(&fleet, &snap.config.edge.fleet_limits).await;
        }
    }
}

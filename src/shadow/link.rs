//! A primary's link to one peer: it connects to the peer's shadow listener, proves the
//! cluster secret and checks the peer's proof, reads the peer's inventory of this engine's
//! copies and reconciles it with the store, then carries copies, outcomes and pings until it
//! breaks, and starts again.
//!
//! Every session's copies to that peer share the link: a writer task sends what is queued
//! ([`LINK_QUEUE`] at most) in one write, a reader completes each acknowledgement, so copies are
//! pipelined — the round trip that carries a copy is the one that acknowledges it.
//!
//! Lifecycle: connecting → (handshake, inventory, reconcile) → up → down (a read or write error,
//! [`LINK_DEAD`] without a frame, shutdown) → connecting again after a pause (200 ms doubling to
//! 2 s). While down, copies queued for it fail at once (their sessions try another peer) and
//! discards are remembered ([`UNSENT_MAX`]) to count duplicates when the inventory comes.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::wire::{self, AckCode, Dir, Frame, FrameReader, Held, Seal};
use super::{FRAME_SLACK, LINK_QUEUE, PEER_DOWN_AFTER, PING_EVERY, Shared, UNSENT_MAX};
use crate::store::{Change, ChangeError, Illegal, Progress, QueueId, State};

/// A link with no frame from the peer for this long is broken (pings come every second).
pub const LINK_DEAD: Duration = Duration::from_secs(5);
/// Connecting and the handshake must finish within this.
const HANDSHAKE: Duration = Duration::from_secs(5);
/// A write that does not finish within this breaks the link.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a peer did not take a copy.
#[derive(Debug)]
pub enum Refused {
    /// Its disk is below the reserve.
    Full,
    Error(String),
    /// The caller's deadline passed first.
    Deadline,
}

pub(super) enum Out {
    Copy {
        id: QueueId,
        frame: Arc<Vec<u8>>,
        reply: Option<oneshot::Sender<Result<(), Refused>>>,
    },
    Outcome {
        id: QueueId,
        progress: Option<Progress>,
    },
}

#[derive(Debug, Default)]
struct LinkState {
    up: bool,
    /// Since when it has been down (`None` while up or never connected since start).
    down_since: Option<Instant>,
    last_ok: Option<Instant>,
    full: bool,
    in_flight: u32,
    /// The peer's view of whom it hears: (engine, ms since), and when it said so.
    view: Vec<(String, u32)>,
    view_at: Option<Instant>,
}

/// One peer engine, as seen by this engine's link to it.
#[derive(Debug)]
pub struct Peer {
    pub id: String,
    pub addr: SocketAddr,
    tx: mpsc::Sender<Out>,
    rx: Mutex<Option<mpsc::Receiver<Out>>>,
    st: Mutex<LinkState>,
    /// Discards this link could not deliver (counted as duplicates if the peer took the
    /// message over meanwhile).
    unsent: Mutex<HashSet<QueueId>>,
    started: Instant,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Out")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counts a copy in flight for as long as it lives.
struct InFlight<'a>(&'a Peer);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut st = lock(&self.0.st);
        st.in_flight = st.in_flight.saturating_sub(1);
    }
}

impl Peer {
    pub fn new(id: String, addr: SocketAddr) -> Peer {
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        Peer {
            id,
            addr,
            tx,
            rx: Mutex::new(Some(rx)),
            st: Mutex::default(),
            unsent: Mutex::default(),
            started: Instant::now(),
        }
    }

    /// Up, and its disk not full.
    pub fn usable(&self) -> bool {
        let st = lock(&self.st);
        st.up && !st.full
    }

    pub fn up(&self) -> bool {
        lock(&self.st).up
    }

    /// Down (or never up) for at least `d` (since this process started, at the earliest).
    pub fn down_for(&self, d: Duration) -> bool {
        let st = lock(&self.st);
        !st.up && st.down_since.unwrap_or(self.started).elapsed() >= d
    }

    pub fn in_flight(&self) -> u32 {
        lock(&self.st).in_flight
    }

    pub fn last_ok(&self) -> Option<Instant> {
        lock(&self.st).last_ok
    }

    /// What the peer last said about whom it hears, if it said so within `fresh`.
    pub fn view(&self, fresh: Duration) -> Option<Vec<(String, u32)>> {
        let st = lock(&self.st);
        (st.up && st.view_at.is_some_and(|t| t.elapsed() <= fresh)).then(|| st.view.clone())
    }

    /// For `/status`: up, since when down, full, copies in flight.
    pub fn summary(&self) -> (bool, Option<Duration>, bool, u32) {
        let st = lock(&self.st);
        (
            st.up,
            st.down_since.map(|t| t.elapsed()),
            st.full,
            st.in_flight,
        )
    }

    /// Sends a copy and waits for its acknowledgement, until `deadline`.
    pub(super) async fn copy(
        &self,
        id: QueueId,
        frame: Arc<Vec<u8>>,
        deadline: tokio::time::Instant,
    ) -> Result<(), Refused> {
        lock(&self.st).in_flight += 1;
        let _counted = InFlight(self);
        let (tx, rx) = oneshot::channel();
        let out = Out::Copy {
            id,
            frame,
            reply: Some(tx),
        };
        match tokio::time::timeout_at(deadline, self.tx.send(out)).await {
            Err(_) => return Err(Refused::Deadline),
            Ok(Err(_)) => return Err(Refused::Error("link stopped".into())),
            Ok(Ok(())) => {}
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Err(_) => Err(Refused::Deadline),
            Ok(Err(_)) => Err(Refused::Error("link lost".into())),
            Ok(Ok(r)) => r,
        }
    }

    /// Queues a copy nobody waits for (a DSN, an adopted message, a re-shadowed one): the
    /// acknowledgement records the holder. Dropped when the queue is full (found again by the
    /// re-shadow loop).
    pub(super) fn copy_later(&self, id: QueueId, frame: Arc<Vec<u8>>) {
        let _ = self.tx.try_send(Out::Copy {
            id,
            frame,
            reply: None,
        });
    }

    /// Queues an outcome for the copy this peer holds; a discard that cannot be queued is
    /// remembered.
    pub(super) fn outcome(&self, id: QueueId, progress: Option<Progress>) {
        let gone = progress.is_none();
        if self
            .tx
            .try_send(Out::Outcome {
                id: id.clone(),
                progress,
            })
            .is_err()
            && gone
        {
            self.remember(id);
        }
    }

    fn remember(&self, id: QueueId) {
        let mut u = lock(&self.unsent);
        if u.len() < UNSENT_MAX {
            u.insert(id);
        }
    }
}

/// A request sent and not yet acknowledged.
enum Pending {
    Copy {
        id: QueueId,
        reply: Option<oneshot::Sender<Result<(), Refused>>>,
    },
    Outcome {
        id: QueueId,
        gone: bool,
    },
    Ping,
}

type PendingMap = Arc<Mutex<HashMap<u64, Pending>>>;

/// The link task of peer `idx`: runs until shutdown.
pub(super) async fn run(s: Arc<Shared>, idx: usize, peer: Arc<Peer>) {
    let Some(mut rx) = lock(&peer.rx).take() else {
        return;
    };
    let mut pause = Duration::from_millis(200);
    let mut said_down = false;
    loop {
        if s.ops.shutdown.is_cancelled() {
            return;
        }
        match connect(&s, &peer).await {
            Ok((reader, stream_w, seal, items)) => {
                pause = Duration::from_millis(200);
                said_down = false;
                // What queued up while down: discards count for the inventory; the rest goes
                // out after it.
                let mut queued = Vec::new();
                while let Ok(m) = rx.try_recv() {
                    match m {
                        Out::Outcome { id, progress: None } => peer.remember(id),
                        m => queued.push(m),
                    }
                }
                let mut first = reconcile(&s, idx, &peer, items).await;
                first.append(&mut queued);
                {
                    let mut st = lock(&peer.st);
                    st.up = true;
                    st.down_since = None;
                    st.full = false;
                    st.last_ok = Some(Instant::now());
                }
                s.metrics.peer_up.with_label_values(&[&peer.id]).set(1);
                s.refresh_readiness();
                s.peers_changed.notify_waiters();
                tracing::info!(peer = %peer.id, "shadow link up");
                let (back, why) = serve(&s, idx, &peer, rx, reader, (stream_w, seal), first).await;
                rx = back;
                {
                    let mut st = lock(&peer.st);
                    st.up = false;
                    st.down_since = Some(Instant::now());
                }
                s.metrics.peer_up.with_label_values(&[&peer.id]).set(0);
                s.refresh_readiness();
                if !s.ops.shutdown.is_cancelled() {
                    tracing::warn!(peer = %peer.id, reason = %why, "shadow link down");
                }
            }
            Err(e) => {
                if !said_down {
                    tracing::warn!(peer = %peer.id, address = %peer.addr, error = %e, "shadow link cannot connect; retrying");
                    said_down = true;
                }
                let mut st = lock(&peer.st);
                if st.down_since.is_none() {
                    st.down_since = Some(Instant::now());
                }
            }
        }
        // Pause, failing what is queued for this peer meanwhile.
        let until = tokio::time::Instant::now() + pause;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                _ = s.ops.shutdown.cancelled() => return,
                m = rx.recv() => match m {
                    Some(m) => fail(&peer, m),
                    None => return,
                },
            }
        }
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// A queued request the link cannot carry now.
fn fail(peer: &Peer, m: Out) {
    match m {
        Out::Copy { reply, .. } => {
            if let Some(r) = reply {
                let _ = r.send(Err(Refused::Error("link down".into())));
            }
        }
        Out::Outcome { id, progress: None } => peer.remember(id),
        Out::Outcome { .. } => {}
    }
}

type Reader = FrameReader<tokio::net::tcp::OwnedReadHalf>;

/// The link's sending half, and the seal its frames carry.
type Writer = (tokio::net::tcp::OwnedWriteHalf, Seal);

/// Connects, proves, checks the peer's proof, reads the inventory; from there on frames are
/// sealed both ways (see `wire`).
async fn connect(
    s: &Shared,
    peer: &Peer,
) -> std::io::Result<(
    Reader,
    tokio::net::tcp::OwnedWriteHalf,
    Seal,
    Vec<(QueueId, Held)>,
)> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    let (secret, max) = {
        let snap = s.ops.config.load();
        let e = &snap.config.engine;
        (e.shadow.secret.clone(), e.max_message_size.0 + FRAME_SLACK)
    };
    let secret = secret.ok_or_else(|| bad("engine.shadow.secret is not set"))?;
    let steps = async {
        let stream = TcpStream::connect(peer.addr).await?;
        let _ = stream.set_nodelay(true);
        let (r, mut w) = stream.into_split();
        let mut reader = FrameReader::new(r, max);
        let Frame::Hello { nonce: ns, server } = reader.next().await? else {
            return Err(bad("expected HELLO"));
        };
        if server != peer.id {
            return Err(bad(&format!("the engine there says it is {server}")));
        }
        let nc = wire::nonce();
        let mut out = Vec::new();
        Frame::Auth {
            client: s.me.clone(),
            spool: s.store.identity().to_owned(),
            nonce: nc,
            mac: wire::client_mac(&secret, &ns, &nc, &s.me, &server),
        }
        .encode(&mut out);
        w.write_all(&out).await?;
        let Frame::Welcome { mac } = reader.next().await? else {
            return Err(bad("expected WELCOME"));
        };
        if !wire::same_mac(&mac, &wire::server_mac(&secret, &nc, &ns, &server, &s.me)) {
            return Err(bad("the peer could not prove the cluster secret"));
        }
        reader.sealed(Seal::new(&secret, &nc, &ns, Dir::ToPrimary));
        let seal = Seal::new(&secret, &nc, &ns, Dir::ToShadow);
        let mut items = Vec::new();
        loop {
            let Frame::Inventory {
                last,
                items: mut more,
            } = reader.next().await?
            else {
                return Err(bad("expected INVENTORY"));
            };
            items.append(&mut more);
            if last {
                break;
            }
        }
        Ok((reader, w, seal, items))
    };
    tokio::time::timeout(HANDSHAKE, steps)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"))?
}

/// Brings the store and the peer's inventory of this engine's copies together (see the module
/// docs of `shadow`): returns what to send first.
async fn reconcile(s: &Shared, idx: usize, peer: &Peer, items: Vec<(QueueId, Held)>) -> Vec<Out> {
    let unsent = std::mem::take(&mut *lock(&peer.unsent));
    let mut out = Vec::new();
    let (mut avoided, mut twice, mut matched) = (0u64, 0u64, 0usize);
    // Copies this engine believed the peer held but the peer does not list (it lost its disk,
    // or never wrote them): no longer held there; the re-shadow loop copies them again.
    let listed: HashSet<&QueueId> = items.iter().map(|(id, _)| id).collect();
    let forgotten = {
        let mut h = Shared::lock(&s.holders);
        let before = h.len();
        h.retain(|id, i| *i != idx || listed.contains(id));
        before - h.len()
    };
    if forgotten > 0 {
        tracing::warn!(peer = %peer.id, copies = forgotten, "the peer no longer holds copies it had acknowledged (a new disk?): copying them again");
    }
    for (id, h) in items {
        match h {
            Held::TakenOver => {
                out.push(Out::Outcome {
                    id: id.clone(),
                    progress: None,
                });
                Shared::lock(&s.holders).remove(&id);
                if s.store.get(&id).is_none() {
                    if unsent.contains(&id) {
                        twice += 1;
                        tracing::warn!(id = %id, peer = %peer.id, "delivered here and by the engine that took it over (duplicate)");
                    }
                    continue;
                }
                match s.store.change(&id, Change::Delete).await {
                    Ok(_) => {
                        avoided += 1;
                        tracing::info!(id = %id, peer = %peer.id, "taken over by the shadow while this engine was away: dropped here, not delivered twice");
                    }
                    Err(ChangeError::Illegal(Illegal {
                        from: State::Delivering,
                        ..
                    })) => {
                        twice += 1;
                        tracing::warn!(id = %id, peer = %peer.id, "taken over by the shadow but being delivered here now (duplicate)");
                    }
                    Err(e) => {
                        tracing::warn!(id = %id, error = %e, "cannot drop a message taken over by the shadow")
                    }
                }
            }
            Held::Copy => {
                if Shared::lock(&s.preparing).contains(&id) {
                    continue;
                }
                let Some(l) = s.store.get(&id) else {
                    out.push(Out::Outcome { id, progress: None });
                    continue;
                };
                let mut h = Shared::lock(&s.holders);
                match h.get(&id) {
                    Some(&q) if q != idx && s.peers[q].up() => {
                        out.push(Out::Outcome { id, progress: None });
                    }
                    _ => {
                        matched += 1;
                        h.insert(id.clone(), idx);
                        if l.progress != Progress::initial(&l.env) {
                            out.push(Out::Outcome {
                                id,
                                progress: Some(l.progress),
                            });
                        }
                    }
                }
            }
        }
    }
    s.metrics.duplicates_avoided.inc_by(avoided);
    s.metrics.duplicates_delivered.inc_by(twice);
    if avoided + twice > 0 || !out.is_empty() {
        tracing::info!(peer = %peer.id, matched, dropped_taken_over = avoided, duplicates = twice, sent = out.len(), "shadow inventory reconciled");
    }
    out
}

/// Runs an established link until it breaks; returns the queue (for the next connection) and
/// why it ended.
async fn serve(
    s: &Arc<Shared>,
    idx: usize,
    peer: &Arc<Peer>,
    rx: mpsc::Receiver<Out>,
    mut reader: Reader,
    w: Writer,
    first: Vec<Out>,
) -> (mpsc::Receiver<Out>, String) {
    let pending: PendingMap = Arc::default();
    let stop = CancellationToken::new();
    let writer = tokio::spawn(write_loop(
        peer.clone(),
        rx,
        w,
        pending.clone(),
        first,
        stop.clone(),
        s.ops.shutdown.clone(),
    ));
    let why = loop {
        let f = tokio::select! {
            f = tokio::time::timeout(LINK_DEAD, reader.next()) => f,
            _ = stop.cancelled() => break "writer stopped".to_owned(),
        };
        let f = match f {
            Err(_) => break format!("nothing heard for {LINK_DEAD:?}"),
            Ok(Err(e)) => break e.to_string(),
            Ok(Ok(f)) => f,
        };
        lock(&peer.st).last_ok = Some(Instant::now());
        match f {
            Frame::Ack { seq, code, text } => {
                let p = lock(&pending).remove(&seq);
                acked(s, idx, peer, p, code, text);
            }
            Frame::Pong { seq, full, heard } => {
                lock(&pending).remove(&seq);
                let mut st = lock(&peer.st);
                st.full = full;
                st.view = heard;
                st.view_at = Some(Instant::now());
            }
            other => break format!("unexpected frame {other:?}"),
        }
    };
    stop.cancel();
    let (rx, werr) = match writer.await {
        Ok(x) => x,
        Err(e) => {
            // The writer panicked: nothing can be sent on this queue any more.
            tracing::error!(error = %e, "shadow link writer failed");
            let (_, rx) = mpsc::channel(1);
            (rx, Some(e.to_string()))
        }
    };
    // Everything unacknowledged failed.
    for (_, p) in lock(&pending).drain() {
        match p {
            Pending::Copy { reply: Some(r), .. } => {
                let _ = r.send(Err(Refused::Error("link lost".into())));
            }
            Pending::Outcome { id, gone: true } => peer.remember(id),
            _ => {}
        }
    }
    (rx, werr.unwrap_or(why))
}

fn acked(s: &Shared, idx: usize, peer: &Peer, p: Option<Pending>, code: AckCode, text: String) {
    match p {
        Some(Pending::Copy { id, reply }) => {
            let r = match code {
                AckCode::Ok => {
                    let decided = !Shared::lock(&s.preparing).contains(&id);
                    if decided && s.store.get(&id).is_none() {
                        // Acknowledged after its session gave up and removed it: discard.
                        peer.outcome(id, None);
                    } else {
                        Shared::lock(&s.holders).insert(id, idx);
                    }
                    Ok(())
                }
                AckCode::Full => {
                    lock(&peer.st).full = true;
                    Err(Refused::Full)
                }
                AckCode::Error => Err(Refused::Error(text)),
            };
            if let Some(reply) = reply {
                let _ = reply.send(r);
            }
        }
        Some(Pending::Outcome { id, gone: true }) if code != AckCode::Ok => peer.remember(id),
        _ => {}
    }
}

/// Writes what is queued, a batch per write, registering each request before it goes out;
/// pings when idle. Returns the queue when stopped.
async fn write_loop(
    peer: Arc<Peer>,
    mut rx: mpsc::Receiver<Out>,
    (mut w, mut seal): Writer,
    pending: PendingMap,
    first: Vec<Out>,
    stop: CancellationToken,
    shutdown: CancellationToken,
) -> (mpsc::Receiver<Out>, Option<String>) {
    let mut seq = 0u64;
    let mut buf: Vec<u8> = Vec::with_capacity(256 * 1024);
    let mut ping = tokio::time::interval(PING_EVERY);
    let mut batch: Vec<Out> = first;
    let result = loop {
        if batch.is_empty() {
            tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => batch.push(m),
                    None => break None,
                },
                _ = ping.tick() => {
                    seq += 1;
                    lock(&pending).insert(seq, Pending::Ping);
                    let start = buf.len();
                    Frame::Ping { seq }.encode(&mut buf);
                    seal.seal(&mut buf, start);
                }
                _ = stop.cancelled() => break None,
                _ = shutdown.cancelled() => {
                    // Send what is queued (outcomes the shadow should hear), then stop.
                    while let Ok(m) = rx.try_recv() {
                        batch.push(m);
                    }
                    if batch.is_empty() {
                        break None;
                    }
                }
            }
        }
        while buf.len() < 1 << 20 {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        for m in batch.drain(..) {
            seq += 1;
            match m {
                Out::Copy { id, frame, reply } => {
                    lock(&pending).insert(seq, Pending::Copy { id, reply });
                    let start = buf.len();
                    buf.extend_from_slice(&frame);
                    wire::set_seq(&mut buf[start..], seq);
                    seal.seal(&mut buf, start);
                }
                Out::Outcome { id, progress } => {
                    let gone = progress.is_none();
                    let f = match progress {
                        Some(progress) => Frame::Update {
                            seq,
                            id: id.clone(),
                            progress,
                        },
                        None => Frame::Gone {
                            seq,
                            id: id.clone(),
                        },
                    };
                    lock(&pending).insert(seq, Pending::Outcome { id, gone });
                    let start = buf.len();
                    f.encode(&mut buf);
                    seal.seal(&mut buf, start);
                }
            }
        }
        if !buf.is_empty() {
            match tokio::time::timeout(WRITE_TIMEOUT, w.write_all(&buf)).await {
                Ok(Ok(())) => buf.clear(),
                Ok(Err(e)) => break Some(e.to_string()),
                Err(_) => break Some("write timed out".into()),
            }
        }
        if shutdown.is_cancelled() && rx.is_empty() {
            // Give the acknowledgements of the last outcomes a moment.
            tokio::time::sleep(Duration::from_millis(200)).await;
            break None;
        }
    };
    stop.cancel();
    let _ = peer;
    (rx, result)
}

/// Peers down for [`PEER_DOWN_AFTER`] no longer count as holding this engine's copies.
pub fn holds(peer: &Peer) -> bool {
    !peer.down_for(PEER_DOWN_AFTER)
}

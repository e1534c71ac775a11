//! The shadow listener: where the cluster's other engines (primaries) send this engine copies.
//!
//! One connection per primary. Before anything else the primary must prove the cluster secret
//! (and this engine proves it back); a connection that does not, within [`HANDSHAKE`], is closed
//! without a word. Then this engine adopts at once whatever it holds from an *older* spool of
//! that primary (it came back with a new, empty spool: those copies are the only ones left),
//! sends the inventory of what it holds from the current one, and takes frames: each copy,
//! progress and discard is submitted to the copy log as it arrives, and acknowledged in order
//! once the log's group commit has it on disk — the reader never waits for the disk, so one
//! fsync carries everything that arrived meanwhile, from every primary.
//!
//! Bounds: [`MAX_LINKS`] connections; [`ACKS`] requests waiting for their acknowledgement per
//! connection (then the reader waits); a frame at most `max_message_size` + [`FRAME_SLACK`].

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::log::{Entry, Rec};
use super::wire::{self, AckCode, Dir, Frame, FrameReader, Held, Seal};
use super::{FRAME_SLACK, MAX_LINKS, Shared, takeover};
use crate::store::decode_record;

/// A primary must finish its proof within this.
const HANDSHAKE: Duration = Duration::from_secs(5);
/// Requests read and not yet acknowledged, per connection.
const ACKS: usize = 8192;
/// Inventory items per frame.
const INVENTORY_CHUNK: usize = 20_000;
/// A connection with no frame for this long is closed (primaries ping every second).
const IDLE: Duration = Duration::from_secs(10);

pub(super) async fn accept_loop(s: Arc<Shared>, l: TcpListener) {
    let permits = Arc::new(Semaphore::new(MAX_LINKS));
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = s.ops.shutdown.cancelled() => return,
        };
        let (stream, from) = tokio::select! {
            r = l.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "shadow listener accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = s.ops.shutdown.cancelled() => return,
        };
        let s = s.clone();
        tokio::spawn(async move {
            if let Err(e) = conn(&s, stream).await {
                tracing::info!(peer = %from, error = %e, "shadow connection ended");
            }
            drop(permit);
        });
    }
}

/// What the acknowledgement writer waits for, in the order the requests came.
enum Ack {
    Log(u64, oneshot::Receiver<io::Result<()>>),
    Now(u64, AckCode, String),
    Pong(u64),
}

async fn conn(s: &Arc<Shared>, stream: TcpStream) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let (secret, max) = {
        let snap = s.ops.config.load();
        let e = &snap.config.engine;
        (e.shadow.secret.clone(), e.max_message_size.0 + FRAME_SLACK)
    };
    let bad = |m: String| io::Error::new(io::ErrorKind::PermissionDenied, m);
    let secret = secret.ok_or_else(|| bad("engine.shadow.secret is not set".into()))?;
    let (r, mut w) = stream.into_split();
    let mut reader = FrameReader::new(r, max);
    let ns = wire::nonce();
    let mut out = Vec::new();
    Frame::Hello {
        nonce: ns,
        server: s.me.clone(),
    }
    .encode(&mut out);
    w.write_all(&out).await?;
    let auth = tokio::time::timeout(HANDSHAKE, reader.next())
        .await
        .map_err(|_| bad("no proof within the handshake time".into()))??;
    let Frame::Auth {
        client,
        spool,
        nonce: nc,
        mac,
    } = auth
    else {
        return Err(bad("expected AUTH".into()));
    };
    if !s.peers.iter().any(|p| p.id == client) {
        return Err(bad(format!("{client:?} is not an engine of this cluster")));
    }
    if !wire::same_mac(&mac, &wire::client_mac(&secret, &ns, &nc, &client, &s.me)) {
        tracing::warn!(claims = %client, "shadow connection refused: wrong proof of the cluster secret");
        return Err(bad("wrong proof".into()));
    }
    out.clear();
    Frame::Welcome {
        mac: wire::server_mac(&secret, &nc, &ns, &s.me, &client),
    }
    .encode(&mut out);
    w.write_all(&out).await?;
    reader.sealed(Seal::new(&secret, &nc, &ns, Dir::ToShadow));
    let mut seal = Seal::new(&secret, &nc, &ns, Dir::ToPrimary);
    let primary: Arc<str> = Arc::from(client.as_str());
    let spool: Arc<str> = Arc::from(spool.as_str());
    {
        // A takeover of this primary may be running: its inventory waits for it.
        let guard = s.takeover.lock().await;
        let lost = s
            .log
            .of_primary(&primary)
            .iter()
            .any(|(_, e)| matches!(e, Entry::Held(h) if h.spool != spool));
        if lost {
            takeover::adopt(s, &guard, &primary, Some(&spool), "spool-lost").await;
        }
        let items: Vec<_> = s
            .log
            .of_primary(&primary)
            .into_iter()
            .filter_map(|(id, e)| match e {
                Entry::Held(h) if h.spool == spool => Some((id, Held::Copy)),
                Entry::Held(_) => None,
                Entry::Taken { .. } => Some((id, Held::TakenOver)),
            })
            .collect();
        out.clear();
        let mut chunks = items.chunks(INVENTORY_CHUNK).peekable();
        if chunks.peek().is_none() {
            Frame::Inventory {
                last: true,
                items: Vec::new(),
            }
            .encode(&mut out);
            seal.seal(&mut out, 0);
        }
        while let Some(c) = chunks.next() {
            let start = out.len();
            Frame::Inventory {
                last: chunks.peek().is_none(),
                items: c.to_vec(),
            }
            .encode(&mut out);
            seal.seal(&mut out, start);
        }
        w.write_all(&out).await?;
    }
    heard(s, &client);
    tracing::info!(primary = %client, "shadow link from a primary");
    let (tx, rx) = mpsc::channel(ACKS);
    let acks = tokio::spawn(write_acks(s.clone(), w, seal, rx));
    let result = read_loop(s, &mut reader, &primary, &spool, &tx).await;
    drop(tx);
    let _ = acks.await;
    result
}

fn heard(s: &Shared, engine: &str) {
    Shared::lock(&s.heard).insert(engine.to_owned(), Instant::now());
}

async fn read_loop(
    s: &Arc<Shared>,
    reader: &mut FrameReader<tokio::net::tcp::OwnedReadHalf>,
    primary: &Arc<str>,
    spool: &Arc<str>,
    acks: &mpsc::Sender<Ack>,
) -> io::Result<()> {
    loop {
        let f = tokio::select! {
            f = tokio::time::timeout(IDLE, reader.next()) => f
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "primary silent"))??,
            _ = s.ops.shutdown.cancelled() => return Ok(()),
        };
        heard(s, primary);
        let ack = match f {
            Frame::Copy {
                seq,
                id,
                progress,
                data,
            } => match decode_record(&data) {
                Ok((env, _)) if env.id == id => {
                    let rec = Rec::Copy {
                        key: (primary.clone(), id),
                        spool: spool.clone(),
                        progress,
                        data,
                    };
                    Ack::Log(seq, s.log.submit(rec).await)
                }
                Ok(_) => Ack::Now(
                    seq,
                    AckCode::Error,
                    "copy id does not match its envelope".into(),
                ),
                Err(e) => Ack::Now(seq, AckCode::Error, format!("copy unreadable: {e}")),
            },
            Frame::Update { seq, id, progress } => {
                let rec = Rec::Progress {
                    key: (primary.clone(), id),
                    progress,
                };
                Ack::Log(seq, s.log.submit(rec).await)
            }
            Frame::Gone { seq, id } => {
                let key = (primary.clone(), id);
                if s.log.get(&key).is_some() {
                    Ack::Log(seq, s.log.submit(Rec::Gone { key }).await)
                } else {
                    Ack::Now(seq, AckCode::Ok, String::new())
                }
            }
            Frame::Ping { seq } => Ack::Pong(seq),
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unexpected frame from a primary: {other:?}"),
                ));
            }
        };
        if acks.send(ack).await.is_err() {
            return Ok(());
        }
    }
}

/// Writes acknowledgements in request order, flushing when nothing more is ready.
async fn write_acks(
    s: Arc<Shared>,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    mut seal: Seal,
    mut rx: mpsc::Receiver<Ack>,
) {
    let mut buf = Vec::with_capacity(16 * 1024);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(a) = next.take() {
            let frame = match a {
                Ack::Log(seq, done) => {
                    let (code, text) = match done.await {
                        Ok(Ok(())) => (AckCode::Ok, String::new()),
                        Ok(Err(e)) if e.kind() == io::ErrorKind::StorageFull => {
                            (AckCode::Full, e.to_string())
                        }
                        Ok(Err(e)) => (AckCode::Error, e.to_string()),
                        Err(_) => (AckCode::Error, "copy log stopped".into()),
                    };
                    Frame::Ack { seq, code, text }
                }
                Ack::Now(seq, code, text) => Frame::Ack { seq, code, text },
                Ack::Pong(seq) => pong(&s, seq),
            };
            let start = buf.len();
            frame.encode(&mut buf);
            seal.seal(&mut buf, start);
            next = rx.try_recv().ok();
        }
        if w.write_all(&buf).await.is_err() {
            return;
        }
        buf.clear();
    }
}

/// Whether the copy log's disk is near its reserve, and whom this engine hears.
fn pong(s: &Shared, seq: u64) -> Frame {
    let full = crate::sys::free_bytes(s.log.dir()).is_ok_and(|b| b < 2 * super::log::RESERVE);
    let mut heard = Vec::new();
    for p in &s.peers {
        let ms = s.last_heard(&p.id).map_or(u32::MAX, |t| {
            t.elapsed().as_millis().min(u32::MAX as u128 - 1) as u32
        });
        heard.push((p.id.clone(), ms));
    }
    Frame::Pong { seq, full, heard }
}

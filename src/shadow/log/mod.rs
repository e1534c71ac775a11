//! The copy log: where an engine keeps the shadow copies its cluster's other engines send it,
//! durably, so that `250` can be said on their side. One append-only log, group-committed like
//! the spool's directory syncs: every copy, progress report and tombstone waiting when a write
//! starts goes out in that one `write` and that one `fdatasync`, so many sessions' copies share
//! one flush (the log is the shadow's side of the batching the issue asks for).
//!
//! # On disk
//!
//! ```text
//! SPOOL/shadow/seg-<16 hex>.log   segments, numbered in the order they were started
//! ```
//!
//! A segment is a sequence of records: `u32 length, u32 CRC-32 of the body` (little-endian), then
//! the body: `u8 kind, u16 + primary engine id, 24-byte queue id`, and by kind
//!
//! | kind | rest | meaning |
//! |---|---|---|
//! | 1 `COPY` | `u16 + spool identity, u32 + progress, the spool record` | a copy (envelope and message exactly as the primary spooled them, and its progress then) |
//! | 2 `PROGRESS` | progress | the primary recorded an attempt, a release, a suspension |
//! | 3 `TAKEN` | `u64` unix seconds | this engine adopted the copy and delivers it |
//! | 4 `GONE` | — | the copy (or taken marker) is no longer needed |
//!
//! # Durability
//!
//! [`ShadowLog::append`] returns once its record is written and `fdatasync`ed, and only then is
//! it applied to the in-memory index (by the writer, in log order). A crash mid-write leaves a
//! torn tail: recovery replays every segment in order, checks each record's CRC, and truncates the
//! last segment at the first bad record — nothing acknowledged is there, since nothing is
//! acknowledged before its sync. A new segment is started at every start and when the active one
//! passes [`SEGMENT_BYTES`]; its directory entry is synced before a record goes into it.
//!
//! # Space
//!
//! A segment is deleted when nothing in it is live and no record in it is still needed to keep an
//! older record from being replayed back to life (`index.rs` says why and how). A sealed segment
//! less than half live is compacted: its live records (and needed tombstones) are written again
//! into the active segment, after which it goes. So the log holds at most about twice its live
//! bytes plus two segments. A `COPY` that would leave less than [`RESERVE`] free on the file
//! system is refused (`StorageFull`: the primary tries another engine); progress and tombstones
//! are small and always written.
//!
//! # Bounds
//!
//! At most [`QUEUE`] appends wait for the writer (more wait for room); one write carries at most
//! [`BATCH_BYTES`] (plus one record). The index holds one small entry per live copy (no bodies).

mod index;
#[cfg(test)]
mod tests;

use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

pub use index::{Entry, Key};
use index::{Index, Loc, Op};

use crate::store::{Progress, QueueId};

/// A segment is sealed once it is this long (a record larger than that gets a segment alone).
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// The most bytes one write (and its one `fdatasync`) carries, besides its first record.
pub const BATCH_BYTES: usize = 8 << 20;
/// Appends waiting for the writer.
pub const QUEUE: usize = 4096;
/// Free space a copy must leave on the file system (as the spool's own reserve).
pub const RESERVE: u64 = 16 << 20;
/// The longest record body recovery believes (a larger length is a torn header).
const MAX_BODY: u32 = 3 << 30;

const COPY: u8 = 1;
const PROGRESS: u8 = 2;
const TAKEN: u8 = 3;
const GONE: u8 = 4;

/// A record to append.
#[derive(Debug, Clone)]
pub enum Rec {
    Copy {
        key: Key,
        spool: Arc<str>,
        progress: Option<Progress>,
        /// The spool record (`store::encode_record`).
        data: Vec<u8>,
    },
    Progress {
        key: Key,
        progress: Progress,
    },
    Taken {
        key: Key,
        when: u64,
    },
    Gone {
        key: Key,
    },
}

impl Rec {
    fn key(&self) -> &Key {
        match self {
            Rec::Copy { key, .. }
            | Rec::Progress { key, .. }
            | Rec::Taken { key, .. }
            | Rec::Gone { key } => key,
        }
    }

    /// Appends header and body to `out`; returns the index operation it stands for.
    fn encode(&self, out: &mut Vec<u8>) -> Op {
        let start = out.len();
        out.extend_from_slice(&[0; 8]);
        let (primary, id) = self.key();
        let kind = match self {
            Rec::Copy { .. } => COPY,
            Rec::Progress { .. } => PROGRESS,
            Rec::Taken { .. } => TAKEN,
            Rec::Gone { .. } => GONE,
        };
        out.push(kind);
        put_str(out, primary);
        out.extend_from_slice(id.as_str().as_bytes());
        let op = match self {
            Rec::Copy {
                key,
                spool,
                progress,
                data,
            } => {
                put_str(out, spool);
                let mut p = Vec::new();
                if let Some(pr) = progress {
                    pr.encode(&mut p);
                }
                out.extend_from_slice(&(p.len() as u32).to_le_bytes());
                out.extend_from_slice(&p);
                out.extend_from_slice(data);
                Op::Copy {
                    key: key.clone(),
                    spool: spool.clone(),
                    progress: progress.clone(),
                    size: data.len() as u64,
                }
            }
            Rec::Progress { key, progress } => {
                progress.encode(out);
                Op::Progress {
                    key: key.clone(),
                    progress: progress.clone(),
                }
            }
            Rec::Taken { key, when } => {
                out.extend_from_slice(&when.to_le_bytes());
                Op::Taken {
                    key: key.clone(),
                    when: *when,
                }
            }
            Rec::Gone { key } => Op::Gone { key: key.clone() },
        };
        let body = &out[start + 8..];
        let (len, crc) = (body.len() as u32, crc32fast::hash(body));
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        op
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}

/// A record body read back: its operation, and for a copy the spool record's place in the body.
struct Decoded {
    op: Op,
    /// (offset in the body, length) of a copy's spool record.
    data: Option<(usize, usize)>,
}

fn decode(body: &[u8]) -> Option<Decoded> {
    let mut r = Reader { b: body, at: 0 };
    let kind = r.take(1)?[0];
    let primary: Arc<str> = Arc::from(r.str()?);
    let id = QueueId::parse(std::str::from_utf8(r.take(24)?).ok()?)?;
    let key = (primary, id);
    let (op, data) = match kind {
        COPY => {
            let spool: Arc<str> = Arc::from(r.str()?);
            let plen = u32::from_le_bytes(r.take(4)?.try_into().ok()?) as usize;
            let p = r.take(plen)?;
            let progress = if p.is_empty() {
                None
            } else {
                Some(Progress::decode(p).ok()?)
            };
            let data = (r.at, body.len() - r.at);
            let op = Op::Copy {
                key,
                spool,
                progress,
                size: data.1 as u64,
            };
            (op, Some(data))
        }
        PROGRESS => {
            let progress = Progress::decode(r.take(body.len() - r.at)?).ok()?;
            (Op::Progress { key, progress }, None)
        }
        TAKEN => {
            let when = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
            (Op::Taken { key, when }, None)
        }
        GONE => (Op::Gone { key }, None),
        _ => return None,
    };
    Some(Decoded { op, data })
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn str(&mut self) -> Option<&'a str> {
        let n = u16::from_le_bytes(self.take(2)?.try_into().ok()?) as usize;
        std::str::from_utf8(self.take(n)?).ok()
    }
}

fn seg_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("seg-{n:016x}.log"))
}

enum Req {
    Append(Rec, oneshot::Sender<io::Result<()>>),
    /// Compact and delete what may go now (also done after every rollover).
    Maintain(oneshot::Sender<()>),
}

/// The log (cheap to clone).
#[derive(Debug, Clone)]
pub struct ShadowLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    index: Arc<Mutex<Index>>,
    /// The writer thread ends when the last handle (and so this sender) is dropped.
    tx: mpsc::Sender<Req>,
    stats: Arc<Stats>,
}

/// Group commits (one write and one fdatasync each) and the records they carried.
#[derive(Debug, Default)]
struct Stats {
    commits: AtomicU64,
    records: AtomicU64,
}

impl std::fmt::Debug for Req {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Req")
    }
}

impl ShadowLog {
    /// Opens (creating) the log in `dir`, replays it, and starts the writer thread. Returns the
    /// problems recovery found (a torn tail cut, a corrupt segment's rest skipped).
    pub fn open(dir: &Path, segment_bytes: u64) -> io::Result<(ShadowLog, Vec<String>)> {
        std::fs::create_dir_all(dir)?;
        let mut segs: Vec<u64> = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let name = e?.file_name();
            let name = name.to_string_lossy();
            if let Some(n) = name
                .strip_prefix("seg-")
                .and_then(|x| x.strip_suffix(".log"))
                .and_then(|x| u64::from_str_radix(x, 16).ok())
            {
                segs.push(n);
            }
        }
        segs.sort_unstable();
        let mut index = Index::default();
        let mut problems = Vec::new();
        let last = segs.last().copied();
        for &n in &segs {
            replay(dir, n, Some(n) == last, &mut index, &mut problems)?;
        }
        let active = last.map_or(1, |n| n + 1);
        let file = start_segment(dir, active)?;
        index.segs.entry(active).or_default();
        let (tx, rx) = mpsc::channel(QUEUE);
        let inner = Arc::new(Inner {
            dir: dir.to_owned(),
            index: Arc::new(Mutex::new(index)),
            tx,
            stats: Arc::default(),
        });
        let w = Writer {
            dir: inner.dir.clone(),
            index: inner.index.clone(),
            stats: inner.stats.clone(),
            file,
            seg: active,
            len: 0,
            segment_bytes,
        };
        std::thread::Builder::new()
            .name("shadow-log".into())
            .spawn(move || w.run(rx))?;
        let log = ShadowLog { inner };
        // Whatever recovery left deletable or worth compacting goes now.
        log.inner
            .tx
            .try_send(Req::Maintain(oneshot::channel().0))
            .ok();
        Ok((log, problems))
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.inner.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a record; returns once it is on disk and applied.
    pub async fn append(&self, rec: Rec) -> io::Result<()> {
        self.submit(rec)
            .await
            .await
            .map_err(|_| io::Error::other("shadow log writer stopped"))?
    }

    /// Queues a record for the next group commit without waiting for it: the receiver resolves
    /// once it is on disk and applied (an error if the writer stopped).
    pub async fn submit(&self, rec: Rec) -> oneshot::Receiver<io::Result<()>> {
        let (tx, rx) = oneshot::channel();
        // On failure `tx` is dropped with the request: the receiver says so.
        let _ = self.inner.tx.send(Req::Append(rec, tx)).await;
        rx
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Compacts and deletes what may go; returns when done (tests, and a periodic tick).
    pub async fn maintain(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.tx.send(Req::Maintain(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// A key's entry (a copy).
    pub fn get(&self, key: &Key) -> Option<Entry> {
        self.index().entries.get(key).cloned()
    }

    /// Every key of `primary`: (queue id, the entry).
    pub fn of_primary(&self, primary: &str) -> Vec<(QueueId, Entry)> {
        self.index()
            .entries
            .iter()
            .filter(|((p, _), _)| &**p == primary)
            .map(|((_, id), e)| (id.clone(), e.clone()))
            .collect()
    }

    /// Per primary: copies held, their bytes, taken-over markers.
    pub fn per_primary(&self) -> Vec<(Arc<str>, usize, u64, usize)> {
        let mut m: std::collections::BTreeMap<Arc<str>, (usize, u64, usize)> = Default::default();
        for ((p, _), e) in &self.index().entries {
            let x = m.entry(p.clone()).or_default();
            match e {
                Entry::Held(h) => {
                    x.0 += 1;
                    x.1 += h.size;
                }
                Entry::Taken { .. } => x.2 += 1,
            }
        }
        m.into_iter().map(|(p, (a, b, c))| (p, a, b, c)).collect()
    }

    /// (group commits, records committed) since start: how many records share an fsync.
    pub fn commits(&self) -> (u64, u64) {
        (
            self.inner.stats.commits.load(Ordering::Relaxed),
            self.inner.stats.records.load(Ordering::Relaxed),
        )
    }

    /// (segments, bytes) on disk.
    pub fn disk(&self) -> (usize, u64) {
        let g = self.index();
        (g.segs.len(), g.segs.values().map(|s| s.bytes).sum())
    }

    /// A held copy's spool record and its latest progress.
    pub async fn read(&self, key: &Key) -> io::Result<(Vec<u8>, Option<Progress>)> {
        // A compaction may move the record between the lookup and the read: look again.
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no such copy");
        for _ in 0..3 {
            let Some(Entry::Held(h)) = self.get(key) else {
                return Err(io::Error::new(io::ErrorKind::NotFound, "no such copy"));
            };
            let path = seg_path(&self.inner.dir, h.at.seg);
            let at = h.at;
            let r = tokio::task::spawn_blocking(move || read_at(&path, at))
                .await
                .map_err(io::Error::other)?;
            match r {
                Ok(data) => return Ok((data, h.progress)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }
}

/// The spool record inside the `COPY` record at `at` of segment file `path`.
fn read_at(path: &Path, at: Loc) -> io::Result<Vec<u8>> {
    let f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; at.len as usize];
    f.read_exact_at(&mut buf, at.off)?;
    let body = &buf[8..];
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "shadow copy record unreadable");
    if crc32fast::hash(body) != u32::from_le_bytes(buf[4..8].try_into().map_err(|_| bad())?) {
        return Err(bad());
    }
    let d = decode(body).ok_or_else(bad)?;
    let (off, len) = d.data.ok_or_else(bad)?;
    Ok(body[off..off + len].to_vec())
}

/// Replays one segment into `index`. A bad record ends the segment: the last one is truncated
/// there (a torn tail of a crash), an earlier one is reported.
fn replay(
    dir: &Path,
    n: u64,
    last: bool,
    index: &mut Index,
    problems: &mut Vec<String>,
) -> io::Result<()> {
    let path = seg_path(dir, n);
    let mut f = io::BufReader::new(std::fs::File::open(&path)?);
    let mut off = 0u64;
    index.segs.entry(n).or_default();
    loop {
        let mut head = [0u8; 8];
        match read_full(&mut f, &mut head)? {
            0 => break,
            8 => {}
            _ => {
                cut(&path, n, off, last, "torn header", problems)?;
                break;
            }
        }
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
        if len > MAX_BODY {
            cut(&path, n, off, last, "impossible length", problems)?;
            break;
        }
        let mut body = vec![0u8; len as usize];
        if read_full(&mut f, &mut body)? != body.len() || crc32fast::hash(&body) != crc {
            cut(&path, n, off, last, "torn or corrupt record", problems)?;
            break;
        }
        let Some(d) = decode(&body) else {
            cut(&path, n, off, last, "undecodable record", problems)?;
            break;
        };
        let at = Loc {
            seg: n,
            off,
            len: len + 8,
        };
        index.apply(d.op, at);
        off += u64::from(len) + 8;
    }
    index.segs.entry(n).or_default().bytes = off;
    Ok(())
}

fn read_full(f: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn cut(
    path: &Path,
    n: u64,
    off: u64,
    last: bool,
    what: &str,
    problems: &mut Vec<String>,
) -> io::Result<()> {
    if last {
        let f = std::fs::OpenOptions::new().write(true).open(path)?;
        let was = f.metadata()?.len();
        f.set_len(off)?;
        f.sync_all()?;
        problems.push(format!(
            "shadow log segment {n:x}: {what} at {off}; {} bytes of an unacknowledged tail cut",
            was - off
        ));
    } else {
        problems.push(format!(
            "shadow log segment {n:x}: {what} at {off}; the rest of this segment is skipped"
        ));
    }
    Ok(())
}

/// Creates segment `n` and syncs its directory entry.
fn start_segment(dir: &Path, n: u64) -> io::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(seg_path(dir, n))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(f)
}

/// The writer thread: owns the active segment.
struct Writer {
    dir: PathBuf,
    index: Arc<Mutex<Index>>,
    stats: Arc<Stats>,
    file: std::fs::File,
    seg: u64,
    len: u64,
    segment_bytes: u64,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Req>) {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = Vec::new();
            let mut maintain = Vec::new();
            let mut size = 0usize;
            let mut next = Some(first);
            while let Some(req) = next.take() {
                match req {
                    Req::Append(rec, reply) => {
                        size += match &rec {
                            Rec::Copy { data, .. } => data.len() + 128,
                            _ => 128,
                        };
                        batch.push((rec, reply));
                    }
                    Req::Maintain(done) => maintain.push(done),
                }
                if size < BATCH_BYTES {
                    next = rx.try_recv().ok();
                }
            }
            let rolled = self.commit(batch);
            if rolled || !maintain.is_empty() {
                self.maintain();
            }
            for m in maintain {
                let _ = m.send(());
            }
        }
    }

    /// Writes a batch (refusing copies that would eat the reserve), syncs it, applies it, and
    /// answers each caller. Returns whether a new segment was started.
    fn commit(&mut self, batch: Vec<(Rec, oneshot::Sender<io::Result<()>>)>) -> bool {
        if batch.is_empty() {
            return false;
        }
        let mut free = crate::sys::free_bytes(&self.dir).unwrap_or(u64::MAX);
        let mut buf = Vec::new();
        let mut placed = Vec::with_capacity(batch.len());
        for (rec, reply) in batch {
            if let Rec::Copy { data, .. } = &rec {
                let need = data.len() as u64 + 256;
                if free < need + RESERVE {
                    let _ = reply.send(Err(io::Error::new(
                        io::ErrorKind::StorageFull,
                        "shadow log: file system below its reserve",
                    )));
                    continue;
                }
                free -= need;
            }
            let start = buf.len();
            let op = rec.encode(&mut buf);
            placed.push((op, start, buf.len() - start, reply));
        }
        if placed.is_empty() {
            return false;
        }
        let rolled = self.len > 0 && self.len + buf.len() as u64 > self.segment_bytes;
        if rolled && let Err(e) = self.roll() {
            for (.., reply) in placed {
                let _ = reply.send(Err(io::Error::new(e.kind(), e.to_string())));
            }
            return false;
        }
        let base = self.len;
        let written = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // Nothing of this batch was acknowledged: cut it off again (best effort; recovery
            // would cut a torn tail anyway).
            let _ = self.file.set_len(base);
            tracing::error!(error = %e, "shadow log write failed");
            for (.., reply) in placed {
                let _ = reply.send(Err(io::Error::new(e.kind(), e.to_string())));
            }
            return rolled;
        }
        self.len += buf.len() as u64;
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats
            .records
            .fetch_add(placed.len() as u64, Ordering::Relaxed);
        let mut g = self.index.lock().unwrap_or_else(|e| e.into_inner());
        g.segs.entry(self.seg).or_default().bytes = self.len;
        let mut replies = Vec::with_capacity(placed.len());
        for (op, start, len, reply) in placed {
            let at = Loc {
                seg: self.seg,
                off: base + start as u64,
                len: len as u32,
            };
            g.apply(op, at);
            replies.push(reply);
        }
        drop(g);
        for r in replies {
            let _ = r.send(Ok(()));
        }
        rolled
    }

    /// Seals the active segment (already synced) and starts the next.
    fn roll(&mut self) -> io::Result<()> {
        let n = self.seg + 1;
        self.file = start_segment(&self.dir, n)?;
        self.seg = n;
        self.len = 0;
        self.index
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .segs
            .entry(n)
            .or_default();
        Ok(())
    }

    /// Compacts one segment worth it, then deletes every segment that may go.
    fn maintain(&mut self) {
        let n = {
            let g = self.index.lock().unwrap_or_else(|e| e.into_inner());
            g.to_compact(self.seg, self.segment_bytes)
        };
        if let Some(n) = n
            && let Err(e) = self.compact(n)
        {
            tracing::warn!(segment = n, error = %e, "shadow log compaction failed; will try again");
        }
        if let Err(e) = self.delete_dead() {
            tracing::warn!(error = %e, "shadow log: cannot delete a dead segment");
        }
    }

    /// Writes segment `n`'s live records and needed tombstones again, into the active segment.
    fn compact(&mut self, n: u64) -> io::Result<()> {
        let (live, deps) = self
            .index
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .compaction_plan(n);
        let path = seg_path(&self.dir, n);
        let mut recs = Vec::new();
        for key in &live {
            let Some(e) = self
                .index
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entries
                .get(key)
                .cloned()
            else {
                continue;
            };
            match e {
                Entry::Held(h) if h.at.seg == n => {
                    let data = read_at(&path, h.at)?;
                    recs.push(Rec::Copy {
                        key: key.clone(),
                        spool: h.spool.clone(),
                        progress: h.progress.clone(),
                        data,
                    });
                }
                Entry::Held(h) => {
                    if let Some(p) = h.progress {
                        recs.push(Rec::Progress {
                            key: key.clone(),
                            progress: p,
                        });
                    }
                }
                Entry::Taken { when, .. } => recs.push(Rec::Taken {
                    key: key.clone(),
                    when,
                }),
            }
        }
        let dead: Vec<(u64, Key)> = {
            let g = self.index.lock().unwrap_or_else(|e| e.into_inner());
            deps.iter()
                .filter(|(_, k)| !g.entries.contains_key(k))
                .cloned()
                .collect()
        };
        for (_, k) in &dead {
            recs.push(Rec::Gone { key: k.clone() });
        }
        let mut waits = Vec::new();
        let mut batch = Vec::new();
        for r in recs {
            let (tx, rx) = oneshot::channel();
            batch.push((r, tx));
            waits.push(rx);
        }
        self.commit(batch);
        for mut w in waits {
            match w.try_recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(io::Error::other("compaction record not written")),
            }
        }
        let mut g = self.index.lock().unwrap_or_else(|e| e.into_inner());
        for (on, k) in deps {
            if g.entries.contains_key(&k) {
                g.carry_dep(&k, on);
            } else if on != self.seg {
                g.segs.entry(self.seg).or_default().deps.push((on, k));
            }
        }
        g.clear_deps(n);
        Ok(())
    }

    /// Deletes dead segments, a round at a time: a round's unlinks are synced before the next
    /// round (whose segments may have depended on them) is judged.
    fn delete_dead(&mut self) -> io::Result<()> {
        loop {
            let dead = self
                .index
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .deletable_now(self.seg);
            if dead.is_empty() {
                return Ok(());
            }
            for &n in &dead {
                match std::fs::remove_file(seg_path(&self.dir, n)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            std::fs::File::open(&self.dir)?.sync_all()?;
            let mut g = self.index.lock().unwrap_or_else(|e| e.into_inner());
            for n in dead {
                g.remove_seg(n);
            }
        }
    }
}

//! The durable queue: one file per message, written so that `250 queued` is said only after the
//! message and its envelope are on disk, and so that a crash at any instant loses nothing that was
//! acknowledged and delivers nothing half-written.
//!
//! # On-disk format
//!
//! ```text
//! SPOOL/tmp/S/<id>.msg   being written; never read back (removed at start)
//! SPOOL/q/S/<id>.msg     an accepted message: envelope header, blank line, message bytes
//! SPOOL/q/S/<id>.st      its mutable state (absent until the first change)
//! SPOOL/free/<id>.msg    the file of a delivered message, kept to be overwritten by a new one
//! SPOOL/slots            512 reused slots of 128 KiB: the messages that fit (`slots.rs`)
//! SPOOL/id               this spool's identity: 16 random hex digits, written once
//! ```
//!
//! A message whose record fits a slot goes there: one `pwrite`, and one group-committed
//! `fdatasync` of the slot file shared with every session writing at the same time (why that is
//! crash-safe: `slots.rs`). Larger messages, and any message while every slot is taken, are
//! files as described here; state files are files for both.
//!
//! The identity tells a shadow engine (cluster redundancy, `src/shadow/`) whether the primary
//! that reconnects is the same spool that gave it copies, or a new one after the old was lost.
//!
//! `S` is the shard, the id's last hex digit (`0`–`F`). One flat directory serialised every
//! file creation on its lock while ext4 searched for a free inode among thousands of recently
//! deleted ones (perf: a third of the engine's time at 2,000 messages/s); sixteen spread the
//! creations. Files a version without shards left directly in `q/` are moved into their shard
//! at start.
//!
//! Files are recycled: a delivered message's file moves to `free/` and a later message is
//! written over it, so the steady state creates and deletes no inodes. On ext4 without a journal
//! every inode allocation scans past the inodes deleted in the last seconds (`recently_deleted`),
//! which cost a quarter of the engine's CPU at 1,000 messages of 100 KiB per second; a rename
//! costs a directory entry. The pool is bounded ([`POOL_FILES`] files of at most
//! [`POOL_FILE_MAX`] bytes); anything beyond it is deleted. Deleted, expired and quarantined mail
//! is never recycled: it is unlinked.
//!
//! A `.msg` file starts with `MDSPOOL 1` and `key: value` lines (CRLF), then an empty line, then
//! the message exactly as it will be delivered (our `Received:` and verdict headers first). Keys:
//! `id`, `received` (unix seconds), `tenant`, `session`, `client`, `helo`, `from` (empty for the
//! null sender), `rcpt` (one line each, in order), `status` (`queued` or `quarantined`), `reason`,
//! `verdict`, `subject`, `header-from`, `kind` (`message` or `dsn`). Values never contain CR or LF.
//! The `.st` file holds the same kind of lines: `status` (`queued`, `suspended` — written `hold`
//! by versions before the name changed, and read as `suspended` — or `quarantined`),
//! `reason`, `attempts`, `next` (unix seconds), `error`, and `rcpt: N delivered|failed TEXT` for
//! each recipient that is done.
//!
//! # Durability
//!
//! [`Spool::store`] writes `tmp/<id>.msg`, `fdatasync`s it, renames it into `q/`, then waits for
//! the directory to be `fsync`ed. Directory syncs are batched: one `fsync(q/)` commits every rename
//! that happened before it, so many sessions share one ([`DirSync`]). A crash before the directory
//! sync loses only a message that was never acknowledged; a message in `q/` is complete because the
//! rename happened after its data was synced. State files are replaced the same way (write, sync,
//! rename, batched directory sync). Removal deletes `.msg` first, then `.st`; an orphan `.st` is
//! dropped at recovery. A crash after delivery but before the unlink redelivers the message once
//! (counted as a duplicate, never a loss).
//!
//! A message that would leave less than [`SPOOL_RESERVE`] free on the file system is refused
//! (`StorageFull`, so 452 4.3.1) even when a recycled file could hold it without new space.
//!
//! A file enters the pool only after the `fsync` of the shard it left, so no crash can bring back
//! its old name in `q/` pointing at a new message. Writing a new message over a pooled file is the
//! same sequence as a fresh one (write, `fdatasync`, rename into `q/`, directory sync); a crash
//! before the rename leaves garbage in `free/`, which is only ever overwritten. At start, `free/`
//! refills the pool (a name also present in `q/` is dropped).

mod dirsync;
mod record;
mod slots;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[cfg(test)]
use crate::store::state::Status;
pub use dirsync::DirSync;
pub use record::{Envelope, Kind, Progress, RcptOutcome, body_offset};
pub use slots::SLOT_BYTES;

/// A message's id: 12 hex digits of microseconds since the epoch, then 12 random hex digits.
/// Sorts by arrival; not guessable enough to be a capability (webmail uses its own tokens).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(String);

impl QueueId {
    pub fn generate() -> QueueId {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        QueueId(format!(
            "{:012X}{:012X}",
            micros & 0xFFFF_FFFF_FFFF,
            fastrand::u64(..) & 0xFFFF_FFFF_FFFF
        ))
    }

    /// Accepts only ids of our shape (24 upper-case hex digits), so an id is always a safe
    /// file name.
    pub fn parse(s: &str) -> Option<QueueId> {
        (s.len() == 24
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)))
        .then(|| QueueId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for QueueId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A message found at recovery.
#[derive(Debug)]
pub struct Recovered {
    pub envelope: Envelope,
    pub progress: Progress,
}

/// The spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    q: PathBuf,
    tmp: PathBuf,
    free: PathBuf,
    dir_sync: DirSync,
    /// `SPOOL/id`.
    identity: String,
    /// Files in `free/` ready to be overwritten, with their length.
    pool: std::sync::Mutex<Vec<(PathBuf, u64)>>,
    /// `SPOOL/slots`: small messages (see `slots.rs`).
    slots: slots::Slots,
    /// Messages found in slots at open, for [`Spool::recover`].
    in_slots: std::sync::Mutex<Vec<QueueId>>,
    /// Every new message goes to a file (tests of the file spool).
    files_only: bool,
}

/// The queue id a record (envelope header, message) names, if it is one.
fn record_id(record: &[u8]) -> Option<QueueId> {
    Envelope::decode(record).ok().map(|e| e.id)
}

/// Shards of `q/` and `tmp/`.
const SHARDS: usize = 16;

/// Free space a new message must leave on the spool's file system; below it, `store` fails
/// with `StorageFull` (the session answers 452 4.3.1).
pub const SPOOL_RESERVE: u64 = 16 * 1024 * 1024;

/// At most this many delivered messages' files wait in `free/` to be reused.
pub const POOL_FILES: usize = 256;
/// Files larger than this are deleted rather than pooled (the pool holds at most
/// `POOL_FILES * POOL_FILE_MAX` bytes of disk).
pub const POOL_FILE_MAX: u64 = 256 * 1024;

/// The shard of an id: its last hex digit (random), as an index and a directory name.
fn shard(id: &QueueId) -> (usize, &str) {
    let s = &id.0[id.0.len() - 1..];
    (usize::from_str_radix(s, 16).unwrap_or(0), s)
}

fn shard_name(i: usize) -> String {
    format!("{i:X}")
}

impl Spool {
    /// Opens (creating) the spool and clears `tmp/` (never-acknowledged leftovers). Must run
    /// inside the tokio runtime (it starts the directory-sync task).
    pub fn open(dir: &Path) -> io::Result<Spool> {
        Spool::open_with(dir, false)
    }

    /// [`Spool::open`] with every new message stored as a file (tests of the file spool).
    #[cfg(test)]
    pub fn open_files_only(dir: &Path) -> io::Result<Spool> {
        Spool::open_with(dir, true)
    }

    fn open_with(dir: &Path, files_only: bool) -> io::Result<Spool> {
        let q = dir.join("q");
        let tmp = dir.join("tmp");
        let free = dir.join("free");
        std::fs::create_dir_all(&free)?;
        for i in 0..SHARDS {
            std::fs::create_dir_all(q.join(shard_name(i)))?;
            std::fs::create_dir_all(tmp.join(shard_name(i)))?;
        }
        for e in std::fs::read_dir(&tmp)? {
            let p = e?.path();
            if p.is_dir() {
                for f in std::fs::read_dir(&p)? {
                    let _ = std::fs::remove_file(f?.path());
                }
            } else {
                let _ = std::fs::remove_file(p);
            }
        }
        // The shard directories' own entries must survive a crash before the first message.
        std::fs::File::open(&q)?.sync_all()?;
        std::fs::File::open(&tmp)?.sync_all()?;
        migrate_flat(&q)?;
        let identity = identity(dir)?;
        let pool = refill_pool(&q, &free)?;
        let (slots, found) = slots::Slots::open(&dir.join("slots"), record_id)?;
        let dir_sync = DirSync::start(
            (0..SHARDS)
                .map(|i| dirsync::Target::Dir(q.join(shard_name(i))))
                .collect(),
        )?;
        Ok(Spool {
            inner: Arc::new(Inner {
                q,
                tmp,
                free,
                dir_sync,
                identity,
                pool: std::sync::Mutex::new(pool),
                slots,
                in_slots: std::sync::Mutex::new(found),
                files_only,
            }),
        })
    }

    /// This spool's identity (`SPOOL/id`).
    pub fn identity(&self) -> &str {
        &self.inner.identity
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, Vec<(PathBuf, u64)>> {
        self.inner.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Files waiting in the pool (tests).
    #[cfg(test)]
    pub fn pooled(&self) -> usize {
        self.pool().len()
    }

    fn msg_path(&self, id: &QueueId) -> PathBuf {
        self.inner.q.join(shard(id).1).join(format!("{id}.msg"))
    }

    fn st_path(&self, id: &QueueId) -> PathBuf {
        self.inner.q.join(shard(id).1).join(format!("{id}.st"))
    }

    fn tmp_path(&self, id: &QueueId, ext: &str) -> PathBuf {
        self.inner.tmp.join(shard(id).1).join(format!("{id}.{ext}"))
    }

    /// Stores a message durably; returns when it is safe to say 250.
    pub async fn store(&self, envelope: &Envelope, message: &[u8]) -> io::Result<()> {
        // The record after room for a slot's header: written from this one buffer either way.
        let mut framed = Vec::with_capacity(slots::HEADER + message.len() + 512);
        framed.resize(slots::HEADER, 0);
        envelope.encode(&mut framed);
        framed.extend_from_slice(message);
        if !self.inner.files_only && (framed.len() as u64) <= SLOT_BYTES {
            // A slot needs no new space, but the rest of the spool does: keep the reserve.
            if crate::sys::free_bytes(&self.inner.tmp)? < framed.len() as u64 + SPOOL_RESERVE {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "spool file system below its reserve",
                ));
            }
            if let Some(r) = self
                .inner
                .slots
                .store_framed(&envelope.id, &mut framed)
                .await
            {
                return r;
            }
        }
        let fresh = self.tmp_path(&envelope.id, "msg");
        let dst = self.msg_path(&envelope.id);
        let reuse = self.pool().pop();
        let room_at = self.inner.tmp.clone();
        tokio::task::spawn_blocking(move || {
            // A recycled file needs no new space, but the rest of the spool does (state
            // files, DSNs of mail already acknowledged): keep a reserve.
            let buf = &framed[slots::HEADER..];
            if crate::sys::free_bytes(&room_at)? < buf.len() as u64 + SPOOL_RESERVE {
                if let Some((path, _)) = &reuse {
                    let _ = std::fs::remove_file(path);
                }
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "spool file system below its reserve",
                ));
            }
            match reuse {
                Some((path, len)) => match overwrite_synced(&path, len, &dst, buf) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        write_synced(&fresh, &dst, buf)
                    }
                    r => r,
                },
                None => write_synced(&fresh, &dst, buf),
            }
        })
        .await
        .map_err(io::Error::other)??;
        self.inner.dir_sync.sync(shard(&envelope.id).0).await
    }

    /// Replaces the state file durably.
    pub async fn write_state(&self, id: &QueueId, progress: &Progress) -> io::Result<()> {
        self.inner.slots.note_state(id);
        let mut buf = Vec::with_capacity(256);
        progress.encode(&mut buf);
        let tmp = self.tmp_path(id, "st");
        let dst = self.st_path(id);
        tokio::task::spawn_blocking(move || write_synced(&tmp, &dst, &buf))
            .await
            .map_err(io::Error::other)??;
        self.inner.dir_sync.sync(shard(id).0).await
    }

    /// The message bytes (after the envelope header).
    pub async fn read_message(&self, id: &QueueId) -> io::Result<Vec<u8>> {
        if let Some(r) = self
            .inner
            .slots
            .read_message(id, record_id, record::body_offset)
        {
            return r;
        }
        let mut data = tokio::fs::read(&self.msg_path(id)).await?;
        let start = record::body_offset(&data).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "spool file without envelope end",
            )
        })?;
        data.drain(..start);
        Ok(data)
    }

    /// [`Spool::remove`] without the blocking pool, for a `Drop`: two unlinks on this thread.
    pub fn remove_now(&self, id: &QueueId) -> io::Result<()> {
        match self.inner.slots.free(id) {
            Some(state) => {
                if state? {
                    let _ = std::fs::remove_file(self.st_path(id));
                }
                Ok(())
            }
            None => unlink(&self.msg_path(id), &self.st_path(id)),
        }
    }

    /// Frees `id`'s slot if it has one (`None`: it is a file), removing its state file if it
    /// may have one.
    async fn free_slot(&self, id: &QueueId) -> Option<io::Result<()>> {
        let state = match self.inner.slots.free(id)? {
            Ok(state) => state,
            Err(e) => return Some(Err(e)),
        };
        if state {
            let st = self.st_path(id);
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(st)).await;
        }
        Some(Ok(()))
    }

    /// Removes a message and its state. Not synced: a crash may bring it back once.
    pub async fn remove(&self, id: &QueueId) -> io::Result<()> {
        if let Some(r) = self.free_slot(id).await {
            return r;
        }
        let (m, s) = (self.msg_path(id), self.st_path(id));
        tokio::task::spawn_blocking(move || unlink(&m, &s))
            .await
            .map_err(io::Error::other)?
    }

    /// Retires a delivered message: its file goes to the pool of files to overwrite (or is
    /// deleted when the pool is full or the file large), its state is deleted. Returns once the
    /// message is gone from `q/` (not synced: a crash may bring it back once); the file joins the
    /// pool later, after the shard's directory sync.
    pub async fn retire(&self, id: &QueueId) -> io::Result<()> {
        if let Some(r) = self.free_slot(id).await {
            return r;
        }
        let (m, s) = (self.msg_path(id), self.st_path(id));
        let free = self.inner.free.join(format!("{id}.msg"));
        let room = self.pool().len() < POOL_FILES;
        let pooled = tokio::task::spawn_blocking({
            let free = free.clone();
            move || {
                let _ = std::fs::remove_file(&s);
                let len = std::fs::metadata(&m)?.len();
                if room && len <= POOL_FILE_MAX {
                    std::fs::rename(&m, &free)?;
                    Ok(Some(len))
                } else {
                    std::fs::remove_file(&m).map(|()| None)
                }
            }
        })
        .await
        .map_err(io::Error::other)??;
        if let Some(len) = pooled {
            let spool = self.clone();
            let shard = shard(id).0;
            tokio::spawn(async move {
                // Until its old name's removal is on disk, the file must not hold a new message.
                let synced = spool.inner.dir_sync.sync(shard).await.is_ok();
                let pooled = synced && {
                    let mut pool = spool.pool();
                    pool.len() < POOL_FILES && {
                        pool.push((free.clone(), len));
                        true
                    }
                };
                if !pooled {
                    let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(free)).await;
                }
            });
        }
        Ok(())
    }

    /// Reads every message's envelope and state (blocking; call at start before serving).
    pub fn recover(&self) -> io::Result<(Vec<Recovered>, Vec<String>)> {
        let mut found = Vec::new();
        let mut problems = Vec::new();
        let mut paths = Vec::new();
        for i in 0..SHARDS {
            for entry in std::fs::read_dir(self.inner.q.join(shard_name(i)))? {
                paths.push(entry?.path());
            }
        }
        for path in paths {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            let Some((stem, ext)) = name.split_once('.') else {
                continue;
            };
            let Some(id) = QueueId::parse(stem) else {
                continue;
            };
            match ext {
                "msg" => match read_envelope(&path) {
                    Ok(envelope) if envelope.id != id => problems.push(format!(
                        "{name}: holds message {} (a stale name after a crash?); left in place for an operator",
                        envelope.id
                    )),
                    Ok(envelope) => found.push(self.with_progress(envelope, &name, &mut problems)),
                    Err(e) => problems.push(format!("{name}: {e}; left in place for an operator")),
                },
                "st" if !self.msg_path(&id).exists() && !self.inner.slots.holds(&id) => {
                    let _ = std::fs::remove_file(&path);
                }
                _ => {}
            }
        }
        let in_slots = std::mem::take(
            &mut *self
                .inner
                .in_slots
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for id in in_slots {
            let envelope = self
                .inner
                .slots
                .read(&id, record_id)
                .and_then(|r| r.ok())
                .and_then(|r| Envelope::decode(&r).ok());
            let Some(envelope) = envelope else {
                problems.push(format!("slot of {id}: unreadable after open; skipped"));
                continue;
            };
            found.push(self.with_progress(envelope, &format!("{id} (slot)"), &mut problems));
        }
        found.sort_by(|a, b| a.envelope.id.cmp(&b.envelope.id));
        Ok((found, problems))
    }

    /// A recovered message with its state file's progress (none, or unreadable: the initial
    /// one, and an unreadable one is reported under `name`).
    fn with_progress(
        &self,
        envelope: Envelope,
        name: &str,
        problems: &mut Vec<String>,
    ) -> Recovered {
        let progress = match std::fs::read(self.st_path(&envelope.id)) {
            Ok(bytes) => Progress::decode(&bytes).unwrap_or_else(|e| {
                problems.push(format!(
                    "{name}: state unreadable ({e}); retrying from the start"
                ));
                Progress::initial(&envelope)
            }),
            Err(_) => Progress::initial(&envelope),
        };
        Recovered { envelope, progress }
    }
}

/// The spool's identity: read from `SPOOL/id`, or made (16 random hex digits, synced with its
/// directory entry) when the spool is new.
fn identity(dir: &Path) -> io::Result<String> {
    let path = dir.join("id");
    match std::fs::read_to_string(&path) {
        Ok(s) if s.trim().len() == 16 && s.trim().bytes().all(|b| b.is_ascii_hexdigit()) => {
            return Ok(s.trim().to_owned());
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a spool identity", path.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let id = format!("{:016x}", fastrand::u64(..));
    let tmp = dir.join("id.tmp");
    write_synced(&tmp, &path, format!("{id}\n").as_bytes())?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(id)
}

/// Moves spool files left directly in `q/` (by a version without shards) into their shard, then
/// syncs the directories, so an upgrade keeps every queued message.
fn migrate_flat(q: &Path) -> io::Result<()> {
    let mut moved = false;
    for e in std::fs::read_dir(q)? {
        let path = e?.path();
        if path.is_dir() {
            continue;
        }
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(id) = name
            .split_once('.')
            .and_then(|(stem, _)| QueueId::parse(stem))
        else {
            continue;
        };
        std::fs::rename(&path, q.join(shard(&id).1).join(name))?;
        moved = true;
    }
    if moved {
        for i in 0..SHARDS {
            std::fs::File::open(q.join(shard_name(i)))?.sync_all()?;
        }
        std::fs::File::open(q)?.sync_all()?;
    }
    Ok(())
}

/// The pool at start: the files left in `free/`, except names a message in `q/` still has
/// (possible only after a crash on a file system without a journal) and what exceeds the bounds.
fn refill_pool(q: &Path, free: &Path) -> io::Result<Vec<(PathBuf, u64)>> {
    let mut pool = Vec::new();
    for e in std::fs::read_dir(free)? {
        let e = e?;
        let path = e.path();
        let id = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".msg"))
            .and_then(QueueId::parse);
        let len = e.metadata()?.len();
        let keep = id.is_some_and(|id| !q.join(shard(&id).1).join(format!("{id}.msg")).exists())
            && len <= POOL_FILE_MAX
            && pool.len() < POOL_FILES;
        if keep {
            pool.push((path, len));
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
    Ok(pool)
}

/// Writes `buf` over the pooled file `path` (of length `len`), syncs it and renames it to `dst`.
fn overwrite_synced(path: &Path, len: u64, dst: &Path, buf: &[u8]) -> io::Result<()> {
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.write_all(buf)?;
        if len > buf.len() as u64 {
            f.set_len(buf.len() as u64)?;
        }
        f.sync_data()?;
        std::fs::rename(path, dst)
    })();
    if let Err(e) = &result
        && e.kind() != io::ErrorKind::NotFound
    {
        let _ = std::fs::remove_file(path);
    }
    result
}

fn write_synced(tmp: &Path, dst: &Path, buf: &[u8]) -> io::Result<()> {
    let result = (|| {
        let mut f = std::fs::File::create(tmp)?;
        f.write_all(buf)?;
        f.sync_data()?;
        std::fs::rename(tmp, dst)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    result
}

/// Reads only the envelope header of a spool file (bounded).
fn read_envelope(path: &Path) -> io::Result<Envelope> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0;
    loop {
        let k = f.read(&mut buf[n..])?;
        n += k;
        if k == 0 || n == buf.len() || record::body_offset(&buf[..n]).is_some() {
            break;
        }
    }
    Envelope::decode(&buf[..n]).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// A queued message for tenant acme from a@s.example to `n` recipients, received at second
/// 1000 (unit tests).
#[cfg(test)]
pub(crate) fn test_envelope(n: usize) -> Envelope {
    Envelope {
        id: QueueId::generate(),
        received: 1000,
        tenant: "acme".into(),
        session: "s".into(),
        client: "192.0.2.1".parse().expect("an address"),
        helo: "h".into(),
        from: "a@s.example".into(),
        rcpts: (0..n).map(|i| format!("u{i}@acme.example")).collect(),
        status: Status::Queued,
        verdict: String::new(),
        subject: String::new(),
        header_from: String::new(),
        kind: Kind::Message,
        size: 0,
    }
}

/// Unlinks a message file and its state file; the message file's error is the answer (a state
/// file may not exist).
fn unlink(msg: &Path, st: &Path) -> io::Result<()> {
    let r = std::fs::remove_file(msg);
    let _ = std::fs::remove_file(st);
    r
}

#[cfg(test)]
mod tests;

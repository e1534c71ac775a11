//! The durable queue: one file per message, written so that `250 queued` is said only after the
//! message and its envelope are on disk, and so that a crash at any instant loses nothing that was
//! acknowledged and delivers nothing half-written.
//!
//! # On-disk format
//!
//! ```text
//! SPOOL/tmp/<id>.msg     being written; never read back (removed at start)
//! SPOOL/q/<id>.msg       an accepted message: envelope header, blank line, message bytes
//! SPOOL/q/<id>.st        its mutable state (absent until the first change)
//! ```
//!
//! A `.msg` file starts with `MDSPOOL 1` and `key: value` lines (CRLF), then an empty line, then
//! the message exactly as it will be delivered (our `Received:` and verdict headers first). Keys:
//! `id`, `received` (unix seconds), `tenant`, `session`, `client`, `helo`, `from` (empty for the
//! null sender), `rcpt` (one line each, in order), `status` (`queued` or `quarantined`), `reason`,
//! `verdict`, `subject`, `header-from`, `kind` (`message` or `dsn`). Values never contain CR or LF.
//! The `.st` file holds the same kind of lines: `status` (`queued`, `hold`, `quarantined`),
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

mod dirsync;
mod record;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use dirsync::DirSync;
pub use record::{Envelope, Kind, RcptOutcome, State, Status};

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
    pub state: State,
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
    dir_sync: DirSync,
}

impl Spool {
    /// Opens (creating) the spool and clears `tmp/` (never-acknowledged leftovers). Must run
    /// inside the tokio runtime (it starts the directory-sync task).
    pub fn open(dir: &Path) -> io::Result<Spool> {
        let q = dir.join("q");
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&q)?;
        std::fs::create_dir_all(&tmp)?;
        for e in std::fs::read_dir(&tmp)? {
            let _ = std::fs::remove_file(e?.path());
        }
        let dir_sync = DirSync::start(q.clone())?;
        Ok(Spool {
            inner: Arc::new(Inner { q, tmp, dir_sync }),
        })
    }

    fn msg_path(&self, id: &QueueId) -> PathBuf {
        self.inner.q.join(format!("{id}.msg"))
    }

    fn st_path(&self, id: &QueueId) -> PathBuf {
        self.inner.q.join(format!("{id}.st"))
    }

    /// Stores a message durably; returns when it is safe to say 250.
    pub async fn store(&self, envelope: &Envelope, message: &[u8]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(message.len() + 512);
        envelope.encode(&mut buf);
        buf.extend_from_slice(message);
        let tmp = self.inner.tmp.join(format!("{}.msg", envelope.id));
        let dst = self.msg_path(&envelope.id);
        tokio::task::spawn_blocking(move || write_synced(&tmp, &dst, &buf))
            .await
            .map_err(io::Error::other)??;
        self.inner.dir_sync.sync().await
    }

    /// Replaces the state file durably.
    pub async fn write_state(&self, id: &QueueId, state: &State) -> io::Result<()> {
        let mut buf = Vec::with_capacity(256);
        state.encode(&mut buf);
        let tmp = self.inner.tmp.join(format!("{id}.st"));
        let dst = self.st_path(id);
        tokio::task::spawn_blocking(move || write_synced(&tmp, &dst, &buf))
            .await
            .map_err(io::Error::other)??;
        self.inner.dir_sync.sync().await
    }

    /// The message bytes (after the envelope header).
    pub async fn read_message(&self, id: &QueueId) -> io::Result<Vec<u8>> {
        let path = self.msg_path(id);
        let mut data = tokio::fs::read(&path).await?;
        let start = record::body_offset(&data).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "spool file without envelope end",
            )
        })?;
        data.drain(..start);
        Ok(data)
    }

    /// Removes a message and its state. Not synced: a crash may bring it back once.
    pub async fn remove(&self, id: &QueueId) -> io::Result<()> {
        let (m, s) = (self.msg_path(id), self.st_path(id));
        tokio::task::spawn_blocking(move || {
            let r = std::fs::remove_file(&m);
            let _ = std::fs::remove_file(&s);
            r
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Reads every message's envelope and state (blocking; call at start before serving).
    pub fn recover(&self) -> io::Result<(Vec<Recovered>, Vec<String>)> {
        let mut found = Vec::new();
        let mut problems = Vec::new();
        for entry in std::fs::read_dir(&self.inner.q)? {
            let path = entry?.path();
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
                    Ok(envelope) => {
                        let state = match std::fs::read(self.st_path(&id)) {
                            Ok(bytes) => State::decode(&bytes).unwrap_or_else(|e| {
                                problems.push(format!(
                                    "{name}: state unreadable ({e}); retrying from the start"
                                ));
                                State::initial(&envelope)
                            }),
                            Err(_) => State::initial(&envelope),
                        };
                        found.push(Recovered { envelope, state });
                    }
                    Err(e) => problems.push(format!("{name}: {e}; left in place for an operator")),
                },
                "st" if !self.msg_path(&id).exists() => {
                    let _ = std::fs::remove_file(&path);
                }
                _ => {}
            }
        }
        found.sort_by(|a, b| a.envelope.id.cmp(&b.envelope.id));
        Ok((found, problems))
    }
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

//! Slots: small messages live in fixed-size slots of one file that is reused forever, and one
//! `fdatasync` of that file commits every message written into it since the last one (group
//! commit across sessions). A message in a slot costs no inode, no rename and no directory sync;
//! a delivered message's slot is freed by zeroing its header and is written over by a later one.
//!
//! Why: the profile of the engine at 4 KiB one-message-per-connection (issue 19) was dominated
//! by the kernel — per message an `fdatasync` of its own file, an `fsync` of a shard directory,
//! renames, opens and closes, and the blocking-pool hand-offs around each of them. Here a message
//! is one `pwrite` into the page cache and a share of one `fdatasync`.
//!
//! # On disk
//!
//! `SPOOL/slots`: [`SLOTS`] slots of [`SLOT_BYTES`], a sparse file (disk is allocated as slots are
//! first used, and kept: at most `SLOTS * SLOT_BYTES` = 64 MiB). A slot is free (its first 16
//! bytes zero or not a valid header) or holds one message:
//!
//! ```text
//! 0..8    b"MDSLOT01"
//! 8..12   u32 LE  length of the record
//! 12..16  u32 LE  CRC-32 of the record
//! 16..    the record: exactly what a spool file holds (envelope header, empty line, message)
//! ```
//!
//! # Why it is crash-safe
//!
//! - `250` is said only after an `fdatasync` of the slot file that began after the message's
//!   `pwrite` completed ([`DirSync`] with a [`Target::Data`]). `fdatasync` makes the written
//!   bytes, and the block allocation needed to read them back, durable; the file's size never
//!   changes (it is sparse at its full length from creation, synced then).
//! - A crash during a write leaves a slot whose header or body does not match its CRC: recovery
//!   treats it as free. Nothing in it was acknowledged (its sync had not returned), and what it
//!   held before was a freed message — delivered, removed or never acknowledged.
//! - Freeing is a `pwrite` of 16 zero bytes, not synced: a crash may bring a delivered message
//!   back once (delivered twice, never lost), as the file spool's unsynced unlink does. A slot is
//!   freed only after its message's outcome is settled, so a slot written over never held
//!   anything still owed.
//! - The record carries its queue id: a read checks the CRC and the id, so a reader that raced
//!   with the slot's reuse gets `NotFound`, never another message.
//! - A message's state file (`q/S/<id>.st`) stays a file beside the shards, written as before;
//!   an orphan state file (its message gone from slots and files) is dropped at recovery.
//!
//! Messages larger than a slot, and any message when every slot is taken, go to the file spool
//! as before (`mod.rs`): the two coexist, and recovery reads both.
//!
//! Reads, writes and frees of a slot are single `pread`/`pwrite` calls of at most [`SLOT_BYTES`]
//! into the page cache, made on the calling task (a blocking-pool hand-off cost more than the
//! copy); the `fdatasync` runs on the blocking pool.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::QueueId;
use super::dirsync::{DirSync, Target};

/// Bytes per slot (header included): a 100 KiB message with its envelope fits.
pub const SLOT_BYTES: u64 = 128 * 1024;
/// Slots in the file (the file never holds more than `SLOTS * SLOT_BYTES` = 64 MiB).
pub const SLOTS: u32 = 512;

const MAGIC: &[u8; 8] = b"MDSLOT01";
/// Bytes before the record in its slot (magic, length, CRC).
pub const HEADER: usize = 16;
/// Bytes read first when only the message is wanted: its envelope is in them, usually.
const ENVELOPE_READ: usize = 8 * 1024;

/// The slot file and which slot holds which message.
#[derive(Debug)]
pub struct Slots {
    file: Arc<std::fs::File>,
    sync: DirSync,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    /// Free slots; the lowest numbers are taken first (popped from the end).
    free: Vec<u32>,
    by_id: HashMap<QueueId, u32>,
    /// Messages in slots that may have a state file (written one, or found one at recovery).
    with_state: HashSet<QueueId>,
}

impl Slots {
    /// Opens (creating, sparse at full length) the slot file at `path` and reads every valid
    /// slot: returns the slots and the ids of the messages found. `decode_id` reads a record's queue id
    /// (None: not a record, the slot is free). Must run inside the tokio runtime.
    pub fn open(
        path: &Path,
        decode_id: impl Fn(&[u8]) -> Option<QueueId>,
    ) -> io::Result<(Slots, Vec<QueueId>)> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let full = u64::from(SLOTS) * SLOT_BYTES;
        if file.metadata()?.len() != full {
            file.set_len(full)?;
            file.sync_all()?;
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
        }
        let mut table = Table::default();
        let mut found = Vec::new();
        let mut head = [0u8; HEADER];
        for slot in (0..SLOTS).rev() {
            let at = u64::from(slot) * SLOT_BYTES;
            file.read_exact_at(&mut head, at)?;
            let record = match parse_header(&head) {
                Some((len, crc)) => {
                    let mut record = vec![0u8; len];
                    file.read_exact_at(&mut record, at + HEADER as u64)?;
                    (crc32fast::hash(&record) == crc).then_some(record)
                }
                None => None,
            };
            match record.and_then(|r| decode_id(&r)) {
                Some(id) if !table.by_id.contains_key(&id) => {
                    table.by_id.insert(id.clone(), slot);
                    table.with_state.insert(id.clone());
                    found.push(id);
                }
                _ => table.free.push(slot),
            }
        }
        let file = Arc::new(file);
        let sync = DirSync::start(vec![Target::Data(file.clone())])?;
        Ok((
            Slots {
                file,
                sync,
                table: Mutex::new(table),
            },
            found,
        ))
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the record in `framed[HEADER..]` for message `id` into a free slot and waits
    /// until it is synced; the first [`HEADER`] bytes are left for the slot's header (filled
    /// here), so the record is not copied again before it is written. `None`: no slot fits
    /// (too large, or every slot taken), nothing written: use a file. On error the slot is
    /// free again.
    pub async fn store_framed(&self, id: &QueueId, framed: &mut [u8]) -> Option<io::Result<()>> {
        if framed.len() < HEADER || framed.len() as u64 > SLOT_BYTES {
            return None;
        }
        let slot = self.table().free.pop()?;
        let at = u64::from(slot) * SLOT_BYTES;
        let (head, record) = framed.split_at_mut(HEADER);
        head[..8].copy_from_slice(MAGIC);
        head[8..12].copy_from_slice(&(record.len() as u32).to_le_bytes());
        head[12..16].copy_from_slice(&crc32fast::hash(record).to_le_bytes());
        let written = match self.file.write_all_at(framed, at) {
            Ok(()) => self.sync.sync(0).await,
            Err(e) => Err(e),
        };
        let mut t = self.table();
        match written {
            Ok(()) => {
                t.by_id.insert(id.clone(), slot);
                Some(Ok(()))
            }
            Err(e) => {
                drop(t);
                self.release(slot);
                Some(Err(e))
            }
        }
    }

    /// The record of message `id`, if it is in a slot (`Some(Err(NotFound))` if the slot was
    /// freed meanwhile).
    pub fn read(
        &self,
        id: &QueueId,
        decode_id: impl Fn(&[u8]) -> Option<QueueId>,
    ) -> Option<io::Result<Vec<u8>>> {
        let slot = *self.table().by_id.get(id)?;
        let at = u64::from(slot) * SLOT_BYTES;
        let gone = || io::Error::new(io::ErrorKind::NotFound, "message no longer in its slot");
        let read = (|| {
            let mut head = [0u8; HEADER];
            self.file.read_exact_at(&mut head, at)?;
            let (len, crc) = parse_header(&head).ok_or_else(gone)?;
            let mut record = vec![0u8; len];
            self.file.read_exact_at(&mut record, at + HEADER as u64)?;
            if crc32fast::hash(&record) != crc || decode_id(&record).as_ref() != Some(id) {
                return Err(gone());
            }
            Ok(record)
        })();
        Some(read)
    }

    /// The message of `id` (its record after the envelope, which ends at `body_offset`), if it
    /// is in a slot: the envelope is read first, then the message into a buffer of its own,
    /// so that nothing is moved to strip the envelope (`Some(Err(NotFound))` if the slot was
    /// freed meanwhile).
    pub fn read_message(
        &self,
        id: &QueueId,
        decode_id: impl Fn(&[u8]) -> Option<QueueId>,
        body_offset: impl Fn(&[u8]) -> Option<usize>,
    ) -> Option<io::Result<Vec<u8>>> {
        let slot = *self.table().by_id.get(id)?;
        let at = u64::from(slot) * SLOT_BYTES + HEADER as u64;
        let gone = || io::Error::new(io::ErrorKind::NotFound, "message no longer in its slot");
        let read = (|| {
            let mut head = [0u8; HEADER];
            self.file.read_exact_at(&mut head, at - HEADER as u64)?;
            let (len, crc) = parse_header(&head).ok_or_else(gone)?;
            let mut envelope = vec![0u8; len.min(ENVELOPE_READ)];
            self.file.read_exact_at(&mut envelope, at)?;
            if envelope.len() == len {
                // A small record is whole in the first read: cut it here (moving a few KiB
                // costs less than a second read).
                if crc32fast::hash(&envelope) != crc || decode_id(&envelope).as_ref() != Some(id) {
                    return Err(gone());
                }
                let start = body_offset(&envelope).ok_or_else(gone)?;
                envelope.drain(..start);
                return Ok(envelope);
            }
            let Some(start) = body_offset(&envelope) else {
                // A longer envelope (thousands of recipients): the whole record, then cut.
                let mut record = vec![0u8; len];
                self.file.read_exact_at(&mut record, at)?;
                if crc32fast::hash(&record) != crc || decode_id(&record).as_ref() != Some(id) {
                    return Err(gone());
                }
                let start = body_offset(&record).ok_or_else(gone)?;
                record.drain(..start);
                return Ok(record);
            };
            let mut message = vec![0u8; len - start];
            self.file.read_exact_at(&mut message, at + start as u64)?;
            let mut h = crc32fast::Hasher::new();
            h.update(&envelope[..start]);
            h.update(&message);
            if h.finalize() != crc || decode_id(&envelope).as_ref() != Some(id) {
                return Err(gone());
            }
            Ok(message)
        })();
        Some(read)
    }

    /// Whether message `id` is in a slot.
    pub fn holds(&self, id: &QueueId) -> bool {
        self.table().by_id.contains_key(id)
    }

    /// Notes that message `id` (in a slot) has a state file, so freeing it removes that file.
    pub fn note_state(&self, id: &QueueId) {
        let mut t = self.table();
        if t.by_id.contains_key(id) {
            t.with_state.insert(id.clone());
        }
    }

    /// Frees the slot of message `id` (not synced). `None`: not in a slot. `Some(true)`: it may
    /// have a state file to remove.
    pub fn free(&self, id: &QueueId) -> Option<io::Result<bool>> {
        let (slot, state) = {
            let mut t = self.table();
            let slot = t.by_id.remove(id)?;
            (slot, t.with_state.remove(id))
        };
        let r = self
            .file
            .write_all_at(&[0u8; HEADER], u64::from(slot) * SLOT_BYTES);
        // Even when zeroing failed the slot goes back: its next write replaces the header (the
        // record is rewritten whole, header first in the same write).
        self.table().free.push(slot);
        Some(r.map(|()| state))
    }

    fn release(&self, slot: u32) {
        let _ = self
            .file
            .write_all_at(&[0u8; HEADER], u64::from(slot) * SLOT_BYTES);
        self.table().free.push(slot);
    }

    /// Slots in use (tests).
    #[cfg(test)]
    pub fn used(&self) -> usize {
        self.table().by_id.len()
    }
}

/// The record's length and CRC from a slot header, if it is one.
fn parse_header(head: &[u8; HEADER]) -> Option<(usize, u32)> {
    if &head[..8] != MAGIC {
        return None;
    }
    let len = u32::from_le_bytes(head[8..12].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(head[12..16].try_into().ok()?);
    ((len + HEADER) as u64 <= SLOT_BYTES).then_some((len, crc))
}

#[cfg(test)]
mod tests {
    use super::super::{Progress, Spool, test_envelope};
    use super::*;

    fn files_in_q(dir: &Path) -> usize {
        std::fs::read_dir(dir.join("q"))
            .unwrap()
            .map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count())
            .sum()
    }

    fn recovered(dir: &Path) -> Vec<QueueId> {
        let (found, problems) = Spool::open(dir).unwrap().recover().unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        found.into_iter().map(|r| r.envelope.id).collect()
    }

    /// The message reads back whether its envelope is in the first read (a few recipients) or
    /// not (500 recipients: ~10 KB of envelope), and a damaged record does not read at all.
    #[tokio::test]
    async fn a_message_reads_back_after_a_short_or_a_long_envelope() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let body: Vec<u8> = (0..50_000u32)
            .map(|i| b"abcdefgh\r\n"[i as usize % 10])
            .collect();
        let (short, long) = (test_envelope(2), test_envelope(500));
        spool.store(&short, &body).await.unwrap();
        spool.store(&long, &body).await.unwrap();
        assert_eq!(spool.inner.slots.used(), 2);
        assert_eq!(spool.read_message(&short.id).await.unwrap(), body);
        assert_eq!(spool.read_message(&long.id).await.unwrap(), body);
        // A byte of the message changed on disk: the CRC says so, nothing is read.
        let slot = spool.inner.slots.table().by_id[&short.id];
        let at = u64::from(slot) * SLOT_BYTES + HEADER as u64 + 1000;
        spool.inner.slots.file.write_all_at(b"X", at).unwrap();
        let err = spool.read_message(&short.id).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        // A small record (whole in the first read) is checked the same way.
        let small = test_envelope(1);
        spool.store(&small, b"a small message").await.unwrap();
        assert_eq!(
            spool.read_message(&small.id).await.unwrap(),
            b"a small message"
        );
        let slot = spool.inner.slots.table().by_id[&small.id];
        let len = crate::store::encode_record(&small, b"a small message").len() as u64;
        let at = u64::from(slot) * SLOT_BYTES + HEADER as u64 + len - 3;
        spool.inner.slots.file.write_all_at(b"X", at).unwrap();
        let err = spool.read_message(&small.id).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    /// A small message lives in a slot (no file in q/), reads back, is found by a restart with
    /// its state; retired, it is gone for a restart and its slot carries the next message.
    #[tokio::test]
    async fn a_small_message_lives_in_a_slot_and_its_slot_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let (a, b) = (test_envelope(1), test_envelope(1));
        spool.store(&a, b"hello slot").await.unwrap();
        assert_eq!(spool.inner.slots.used(), 1);
        assert_eq!(files_in_q(dir.path()), 0, "no file per message");
        assert_eq!(spool.read_message(&a.id).await.unwrap(), b"hello slot");
        let mut progress = Progress::initial(&a);
        progress.attempts = 3;
        spool.write_state(&a.id, &progress).await.unwrap();
        let (found, problems) = Spool::open(dir.path()).unwrap().recover().unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(found.len(), 1);
        assert_eq!(
            (&found[0].envelope.id, found[0].progress.attempts),
            (&a.id, 3)
        );

        spool.retire(&a.id).await.unwrap();
        assert_eq!(files_in_q(dir.path()), 0, "its state file went with it");
        let err = spool.read_message(&a.id).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(
            recovered(dir.path()).is_empty(),
            "a restart does not bring it back"
        );

        spool.store(&b, b"next").await.unwrap();
        assert_eq!(
            spool.inner.slots.table().by_id.get(&b.id),
            Some(&0),
            "slot 0 again"
        );
        assert_eq!(spool.read_message(&b.id).await.unwrap(), b"next");
        assert_eq!(recovered(dir.path()), vec![b.id.clone()]);
    }

    /// A slot torn by a crash mid-write (its record no longer matches its CRC) is free at
    /// recovery, reported nowhere (it was never acknowledged) and written over; its neighbours
    /// are found whole.
    #[tokio::test]
    async fn a_torn_slot_is_free_at_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let (a, b) = (test_envelope(1), test_envelope(1));
        spool.store(&a, b"first").await.unwrap();
        spool.store(&b, b"second").await.unwrap();
        drop(spool);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("slots"))
            .unwrap();
        // The last byte of slot 0's record changes: the CRC no longer matches.
        let len = crate::store::encode_record(&a, b"first").len() as u64;
        f.write_all_at(b"X", HEADER as u64 + len - 1).unwrap();
        assert_eq!(recovered(dir.path()), vec![b.id.clone()]);
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(
            spool.inner.slots.table().free.last(),
            Some(&0),
            "slot 0 is free"
        );
    }

    /// A message too large for a slot goes to a file, and both kinds are recovered; when every
    /// slot is taken, the next small message goes to a file too.
    #[tokio::test]
    async fn large_messages_and_overflow_go_to_files() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let big = test_envelope(1);
        spool
            .store(&big, &vec![b'b'; SLOT_BYTES as usize])
            .await
            .unwrap();
        assert_eq!(files_in_q(dir.path()), 1);
        spool.inner.slots.table().free.clear();
        let small = test_envelope(1);
        spool.store(&small, b"small").await.unwrap();
        assert_eq!(files_in_q(dir.path()), 2);
        let mut want = vec![big.id.clone(), small.id.clone()];
        want.sort();
        assert_eq!(recovered(dir.path()), want);
        assert_eq!(spool.read_message(&small.id).await.unwrap(), b"small");
    }

    /// A reader that raced with a slot's reuse gets NotFound, never the other message.
    #[tokio::test]
    async fn a_read_of_a_reused_slot_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let (a, b) = (test_envelope(1), test_envelope(1));
        spool.store(&a, b"a").await.unwrap();
        // As a reader that looked the slot up before it was freed and reused would see it.
        let slot = spool.inner.slots.table().by_id[&a.id];
        spool.remove(&a.id).await.unwrap();
        spool.store(&b, b"b").await.unwrap();
        spool.inner.slots.table().by_id.insert(a.id.clone(), slot);
        let r = spool
            .inner
            .slots
            .read(&a.id, super::super::record_id)
            .unwrap();
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}

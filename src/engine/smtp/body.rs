//! Bodies of messages being received: one memory budget for every session, and a file for a
//! body that does not fit.
//!
//! Small messages are received into memory, scanned from memory and written to the spool once:
//! that is what makes reception fast. But a sender can open `max_sessions` sessions, send
//! `max_message_size` each and stall before the final dot; kept in memory, that is tens of GiB.
//! So body memory comes from one budget, `engine.data_memory`, in two halves:
//! - **receiving**: a session takes more of its half as its body grows ([`GROW`] at a time,
//!   never waiting). When that half has none left, the session gives back what it took and its
//!   body goes on to an unnamed file under `spool_dir/incoming` as it streams in ("spilled"),
//!   as Postfix streams every body to its queue file. Senders that stall before the final dot
//!   hold at most this half, whatever their number.
//! - **processing**: at the end of data a body needs [`PROCESSING`] times its size (the copies
//!   scanning and spooling make; one more, [`SHADOW_FRAME`], on an engine that copies its mail
//!   to a shadow: the copy's frame) from the other half, waiting for it (a body larger
//!   than the half waits for all of it); a spilled body is read back then. Only messages being
//!   scanned and spooled hold this half, and they finish without the sender, so a stalled
//!   sender can delay nobody's mail.
//!
//! Nothing is skipped: a spilled message is scanned like any other. The files are unlinked as
//! soon as they are created: a crash leaves nothing behind, and nothing was acknowledged for
//! them (the `250` comes after the spool's own fsync). Writes go to the page cache from the
//! session's task; they happen only while the receiving half is exhausted.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::{IntCounter, IntGauge};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::session::Session;
use crate::ops::Metrics;

/// The budget's unit: permits are KiB.
const UNIT: usize = 1024;
/// A session takes memory from the budget this much at a time (in units): one semaphore call
/// per 64 KiB of body, none for a small message beyond its first.
const GROW: usize = 64;
/// What a body costs while it is scanned and spooled, in multiples of its size: the body, the
/// message with our headers, the message with the verdict's headers, and what the scanner
/// decodes from it.
const PROCESSING: usize = 4;
/// What the shadow copy adds (cluster redundancy, `src/shadow/`): the frame carrying the spool
/// record to the peer, alive until the peer acknowledges it.
const SHADOW_FRAME: usize = 1;
/// A spilled body is written out in pieces of at least this many bytes.
const WRITE_PIECE: usize = 64 * 1024;

/// The engine's memory budget for bodies in flight, and where spilled bodies go.
#[derive(Debug)]
pub struct Budget {
    receiving: Arc<Semaphore>,
    processing: Arc<Semaphore>,
    /// Units in each half.
    half: usize,
    /// Multiples of its size a body takes from the processing half.
    per_body: usize,
    dir: PathBuf,
    next: AtomicU64,
    in_memory: IntGauge,
    spilled: IntCounter,
}

impl Budget {
    /// `bytes` of memory for bodies; spilled bodies under `spool_dir/incoming` (made here,
    /// emptied of anything a crash left). `shadow`: the engine copies its mail to a shadow
    /// (one more body-sized buffer per message being processed).
    pub fn new(
        spool_dir: &Path,
        bytes: u64,
        shadow: bool,
        metrics: &Metrics,
    ) -> std::io::Result<Budget> {
        let dir = spool_dir.join("incoming");
        std::fs::create_dir_all(&dir)?;
        for e in std::fs::read_dir(&dir)?.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        let half = usize::try_from(bytes / 2 / UNIT as u64)
            .unwrap_or(usize::MAX)
            .clamp(GROW, Semaphore::MAX_PERMITS);
        let in_memory = IntGauge::new(
            "engine_data_memory_bytes",
            "Memory taken from engine.data_memory by bodies being received, scanned and spooled.",
        )
        .expect("valid metric");
        let spilled = IntCounter::new(
            "engine_data_spilled_total",
            "Bodies that did not fit in engine.data_memory and streamed to a file under the spool.",
        )
        .expect("valid metric");
        metrics.register(Box::new(in_memory.clone()));
        metrics.register(Box::new(spilled.clone()));
        Ok(Budget {
            receiving: Arc::new(Semaphore::new(half)),
            processing: Arc::new(Semaphore::new(half)),
            half,
            per_body: PROCESSING + if shadow { SHADOW_FRAME } else { 0 },
            dir,
            next: AtomicU64::new(0),
            in_memory,
            spilled,
        })
    }

    fn spill_file(&self) -> std::io::Result<File> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{}-{n}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        std::fs::remove_file(&path)?;
        Ok(f)
    }

    fn give_back(&self, permit: Option<OwnedSemaphorePermit>) {
        if let Some(p) = permit {
            self.in_memory.sub((p.num_permits() * UNIT) as i64);
        }
    }
}

/// One transaction's body: the memory it holds from the budget, or its file.
#[derive(Debug)]
pub struct Body {
    budget: Arc<Budget>,
    receiving: Option<OwnedSemaphorePermit>,
    processing: Option<OwnedSemaphorePermit>,
    file: Option<File>,
    /// Bytes written to `file`.
    written: usize,
}

impl Body {
    pub fn new(budget: Arc<Budget>) -> Body {
        Body {
            budget,
            receiving: None,
            processing: None,
            file: None,
            written: 0,
        }
    }

    /// Gives the memory back: after the message was answered, or when the session ends.
    pub fn release(&mut self) {
        self.budget.give_back(self.receiving.take());
        self.budget.give_back(self.processing.take());
    }

    /// After input during DATA: the body kept in `session` has memory from the receiving half,
    /// or moves to the file.
    pub fn track(&mut self, session: &mut Session) -> std::io::Result<()> {
        let kept = session.body_kept();
        if self.file.is_some() {
            if kept >= WRITE_PIECE {
                self.write(&session.take_body())?;
            }
            return Ok(());
        }
        let need = session.body_memory().div_ceil(UNIT);
        let held = self.receiving.as_ref().map_or(0, |p| p.num_permits());
        if need <= held {
            return Ok(());
        }
        let grow = (need - held).max(GROW) as u32;
        if let Ok(more) = self.budget.receiving.clone().try_acquire_many_owned(grow) {
            self.budget.in_memory.add(i64::from(grow) * UNIT as i64);
            match &mut self.receiving {
                Some(p) => p.merge(more),
                None => self.receiving = Some(more),
            }
            return Ok(());
        }
        self.budget.give_back(self.receiving.take());
        self.file = Some(self.budget.spill_file()?);
        self.budget.spilled.inc();
        self.write(&session.take_body())
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if let Some(f) = &mut self.file {
            f.write_all(bytes)?;
            self.written += bytes.len();
        }
        Ok(())
    }

    /// At the end of data: the whole body in memory (`tail` is what the session still kept),
    /// once the processing half has room for it. The memory stays taken until
    /// [`Body::release`].
    pub async fn complete(&mut self, tail: Vec<u8>) -> std::io::Result<Vec<u8>> {
        let file = self.file.take();
        let size = std::mem::take(&mut self.written) + tail.len();
        self.budget.give_back(self.receiving.take());
        let units = (self.budget.per_body * size.div_ceil(UNIT)).clamp(1, self.budget.half) as u32;
        if let Ok(p) = self
            .budget
            .processing
            .clone()
            .acquire_many_owned(units)
            .await
        {
            self.budget.in_memory.add(i64::from(units) * UNIT as i64);
            self.processing = Some(p);
        }
        let Some(mut file) = file else {
            return Ok(tail);
        };
        let mut body = Vec::with_capacity(size);
        file.seek(SeekFrom::Start(0))?;
        file.read_to_end(&mut body)?;
        body.extend_from_slice(&tail);
        Ok(body)
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        self.release();
    }
}

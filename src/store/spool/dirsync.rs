//! Group commit: every caller of [`DirSync::sync`] waits for a sync of its target (a directory,
//! one of the spool's shards, or the slot file's data) that started after its call, and one round
//! of syncs — each target named by a waiter, once — serves every caller waiting at that moment.
//! Bound: at most 4096 callers wait in the channel; more wait for room (back-pressure).

use std::io;
use std::path::PathBuf;

use tokio::sync::{mpsc, oneshot};

type Waiter = (usize, oneshot::Sender<Result<(), io::ErrorKind>>);

/// What a round syncs.
#[derive(Debug)]
pub enum Target {
    /// `fsync` of a directory (its entries), opened for each round.
    Dir(PathBuf),
    /// `fdatasync` of an open file (its data, and the metadata needed to read it back).
    Data(std::sync::Arc<std::fs::File>),
}

impl Target {
    fn sync(&self) -> io::Result<()> {
        match self {
            Target::Dir(d) => std::fs::File::open(d)?.sync_all(),
            Target::Data(f) => f.sync_data(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DirSync {
    tx: mpsc::Sender<Waiter>,
}

/// Callers waiting for the same fsync (bounded channel capacity).
const QUEUE: usize = 4096;

impl DirSync {
    pub fn start(dirs: Vec<Target>) -> io::Result<DirSync> {
        // Fail early if a directory cannot be opened.
        for d in &dirs {
            if let Target::Dir(d) = d {
                std::fs::File::open(d)?;
            }
        }
        let (tx, mut rx) = mpsc::channel::<Waiter>(QUEUE);
        // A thread of its own: a waiter wakes it and it wakes the waiters, with no runtime task
        // and blocking-pool thread between (each hand-off is a wake-up, and on a busy machine
        // a wake-up waits for a core). It ends when the last handle is dropped.
        std::thread::Builder::new()
            .name("spool-sync".into())
            .spawn(move || {
                let mut batch = Vec::new();
                while let Some(first) = rx.blocking_recv() {
                    batch.push(first);
                    while let Ok(w) = rx.try_recv() {
                        batch.push(w);
                    }
                    let mut which: Vec<usize> = batch.iter().map(|(i, _)| *i).collect();
                    which.sort_unstable();
                    which.dedup();
                    let result = which
                        .into_iter()
                        .try_for_each(|i| dirs[i].sync())
                        .map_err(|e| e.kind());
                    for (_, w) in batch.drain(..) {
                        let _ = w.send(result);
                    }
                }
            })?;
        Ok(DirSync { tx })
    }

    /// Returns once a sync of target `dir` (its index at start) that began after this call has
    /// completed.
    pub async fn sync(&self, dir: usize) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((dir, tx))
            .await
            .map_err(|_| io::Error::other("spool directory syncer stopped"))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(kind)) => Err(io::Error::new(kind, "spool directory fsync failed")),
            Err(_) => Err(io::Error::other("spool directory syncer stopped")),
        }
    }
}

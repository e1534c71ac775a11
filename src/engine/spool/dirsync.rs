//! Group commit of directory entries: every caller of [`DirSync::sync`] waits for one `fsync` of
//! the directory that started after its call, and one `fsync` serves every caller waiting at that
//! moment. Bound: at most 4096 callers wait in the channel; more wait for room (back-pressure).

use std::io;
use std::path::PathBuf;

use tokio::sync::{mpsc, oneshot};

type Waiter = oneshot::Sender<Result<(), io::ErrorKind>>;

#[derive(Debug, Clone)]
pub struct DirSync {
    tx: mpsc::Sender<Waiter>,
}

/// Callers waiting for the same fsync (bounded channel capacity).
const QUEUE: usize = 4096;

impl DirSync {
    pub fn start(dir: PathBuf) -> io::Result<DirSync> {
        // Fail early if the directory cannot be opened.
        std::fs::File::open(&dir)?;
        let (tx, mut rx) = mpsc::channel::<Waiter>(QUEUE);
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while let Some(first) = rx.recv().await {
                batch.push(first);
                while let Ok(w) = rx.try_recv() {
                    batch.push(w);
                }
                let d = dir.clone();
                let result =
                    tokio::task::spawn_blocking(move || std::fs::File::open(&d)?.sync_all())
                        .await
                        .unwrap_or_else(|e| Err(io::Error::other(e)))
                        .map_err(|e| e.kind());
                for w in batch.drain(..) {
                    let _ = w.send(result);
                }
            }
        });
        Ok(DirSync { tx })
    }

    /// Returns once a directory fsync that began after this call has completed.
    pub async fn sync(&self) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(tx)
            .await
            .map_err(|_| io::Error::other("spool directory syncer stopped"))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(kind)) => Err(io::Error::new(kind, "spool directory fsync failed")),
            Err(_) => Err(io::Error::other("spool directory syncer stopped")),
        }
    }
}

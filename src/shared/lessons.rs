//! What users teach, learnt by every engine of the fleet: each engine's own model
//! (`engine/learn/model.rs`) learns the lessons taught at any engine, within about a
//! `shared.flush_interval`.
//!
//! - **Published**: a lesson taught on this node (a user's report, webmail's buttons) that
//!   changed its model is appended to the lessons stream `P:{lessons}` by the writer's next
//!   batch (never on the message path): the node's name, the message's digest, the class and
//!   the token hashes (16 hex digits each, at most `learn::tokens::MAX_PER_MESSAGE`: ≤ 32 KB
//!   an entry, ~3 KB for a typical message), capped at [`STREAM_MAX`] entries.
//! - **Applied**: each `shared.flush_interval` the writer reads the stream from the near store
//!   (`shared.read`), past the position its [`Learner`] journaled, and hands it the other
//!   nodes' lessons (the engine's learner appends them to its spool's model journal in one
//!   fsync, `model::Store::apply_fleet`: each message once per class, a relearn moving it from
//!   the class that model has it in).
//! - **Down or cut off**: lessons are published when the store answers (a failed batch is
//!   counted in `shared_writes_dropped_total`) and read when it is back; an engine away for
//!   longer than the stream holds ([`STREAM_MAX`] lessons) misses the oldest ones (counted:
//!   `shared_lessons_total{outcome="missed"}`, when the stream's first entry is past its
//!   position). rspamd's Bayes and fuzzy hashes, in the same Redis, are fleet-wide already.
//!
//! `maildistiller learn` (an operator's bulk training) publishes the same way, through a
//! [`Publisher`]: its lessons are queued while it teaches and sent in batches when it is done
//! (it fails, saying so, when the store does not take them: they are then learnt by this
//! spool's model and rspamd only).

use std::sync::Arc;

use redis::Value;
use tokio::sync::mpsc;

use super::spread::stream_entries;
use super::{Call, Conn, Fleet, MAX_BATCH, StoreError, Then, WRITE_DEADLINE, Write};
use crate::config::SharedConfig;

/// Entries the lessons stream keeps (`MAXLEN ~`): with ~3 KB a lesson, ~30 MB in the store.
pub const STREAM_MAX: usize = 10_000;
/// Entries read at most per turn.
pub const READ_COUNT: usize = 200;

/// An entry id of the lessons stream (`ms-seq`); `(0, 0)`: none.
pub type StreamId = (u64, u64);

/// One lesson: the message's digest (16 bytes), its class, its token hashes; with its id on
/// the stream when it came from there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lesson {
    pub id: StreamId,
    pub digest: [u8; 16],
    pub spam: bool,
    pub hashes: Vec<u64>,
}

/// What takes the fleet's lessons on this node (the engine's own model).
pub trait Learner: Send + Sync {
    /// The last stream entry it took (durably).
    fn position(&self) -> std::io::Result<StreamId>;
    /// Takes these lessons of other nodes, in stream order, and moves its position to
    /// `read_up_to` (the last entry read, its own included); returns how many were new to it.
    fn learn(&self, lessons: &[Lesson], read_up_to: StreamId) -> std::io::Result<usize>;
}

/// Whose lessons this node learns, and what it calls itself on the stream.
pub struct Following {
    learner: Arc<dyn Learner>,
    node: String,
}

impl std::fmt::Debug for Following {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Following({})", self.node)
    }
}

impl Fleet {
    /// `learner` takes the fleet's lessons; this node's own go out under `node`.
    pub fn follow_lessons(&self, learner: Arc<dyn Learner>, node: &str) {
        let _ = self.lessons.set(Following {
            learner,
            node: node.to_owned(),
        });
    }

    /// Queues a lesson taught here for every other node.
    pub fn publish_lesson(&self, digest: &[u8; 16], spam: bool, hashes: &[u64]) {
        let Some(f) = self.lessons.get() else {
            return;
        };
        let (tag, key) = self.keys.lessons();
        let mut blob = Vec::with_capacity(hashes.len() * 8);
        for h in hashes {
            blob.extend_from_slice(&h.to_le_bytes());
        }
        let mut cmd = super::xadd_capped(&key, STREAM_MAX);
        cmd.arg("n")
            .arg(&f.node)
            .arg("d")
            .arg(hex(digest))
            .arg("c")
            .arg(class_name(spam))
            .arg("h")
            .arg(hex(&blob));
        self.write(Write {
            call: Call { tag, cmd },
            script: None,
            then: Then::Nothing,
        });
        self.metrics.lessons.with_label_values(&["published"]).inc();
    }

    /// One turn of the writer: the other nodes' lessons since the journaled position.
    pub(crate) async fn read_lessons(&self) {
        let Some(f) = self.lessons.get() else {
            return;
        };
        let Some(conn) = self.read.load_full() else {
            return;
        };
        if !self.is_up() {
            return;
        }
        let from = match f.learner.position() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the model journal: fleet lessons wait");
                return;
            }
        };
        let (tag, key) = self.keys.lessons();
        let mut read = redis::cmd("XREAD");
        read.arg("COUNT")
            .arg(READ_COUNT)
            .arg("STREAMS")
            .arg(&key)
            .arg(format!("{}-{}", from.0, from.1));
        let mut calls = vec![Call {
            tag: tag.clone(),
            cmd: read,
        }];
        if from != (0, 0) {
            // The oldest entry the stream still holds: past our position, some were trimmed.
            let mut first = redis::cmd("XRANGE");
            first.arg(&key).arg("-").arg("+").arg("COUNT").arg(1);
            calls.push(Call { tag, cmd: first });
        }
        let Some(answer) = self
            .call("lessons", &conn, &calls, self.cfg.timeout.get())
            .await
        else {
            return;
        };
        if let Some(first) = answer.get(1).and_then(first_id)
            && first > from
            && first.0 > from.0 + 1
        {
            tracing::warn!(
                position = ?from,
                oldest = ?first,
                "the lessons stream was trimmed past this node's position: lessons missed"
            );
            self.metrics.lessons.with_label_values(&["missed"]).inc();
        }
        let mut lessons = Vec::new();
        let mut last = from;
        for (id, fields) in answer.first().map(stream_entries).unwrap_or_default() {
            let Some(id) = parse_id(&id) else { continue };
            last = last.max(id);
            let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.as_str());
            if get("n") == Some(f.node.as_str()) {
                continue;
            }
            let (Some(digest), Some(spam), Some(hashes)) = (
                get("d")
                    .and_then(unhex)
                    .and_then(|d| <[u8; 16]>::try_from(d).ok()),
                get("c").and_then(class_of),
                get("h").and_then(unhex),
            ) else {
                self.metrics.lessons.with_label_values(&["invalid"]).inc();
                continue;
            };
            let hashes = hashes
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
                .collect();
            lessons.push(Lesson {
                id,
                digest,
                spam,
                hashes,
            });
        }
        if last == from {
            return;
        }
        let n = lessons.len();
        match f.learner.learn(&lessons, last) {
            Ok(learnt) => {
                self.metrics
                    .lessons
                    .with_label_values(&["learnt"])
                    .inc_by(learnt as u64);
                self.metrics
                    .lessons
                    .with_label_values(&["known"])
                    .inc_by((n - learnt) as u64);
                tracing::debug!(learnt, up_to = ?last, "fleet lessons applied");
            }
            Err(e) => tracing::warn!(error = %e, "cannot write fleet lessons to the model journal"),
        }
    }
}

/// A fleet client for a command that teaches (`maildistiller learn`): lessons queue in memory
/// (room for `capacity`) and go to the store in [`Publisher::send`].
pub struct Publisher {
    pub fleet: Arc<Fleet>,
    rx: mpsc::Receiver<Write>,
}

impl Publisher {
    /// `None` when `[shared]` is not configured.
    pub fn new(cfg: &SharedConfig, capacity: usize) -> Option<Publisher> {
        if !cfg.enabled() {
            return None;
        }
        let (tx, rx) = mpsc::channel(capacity.max(1));
        Some(Publisher {
            fleet: Arc::new(Fleet::new(cfg.clone(), Some(tx))),
            rx,
        })
    }

    /// Sends the queued lessons to `shared.redis`, [`MAX_BATCH`] at a time; returns how many.
    pub async fn send(mut self) -> Result<usize, StoreError> {
        let mut writes = Vec::new();
        while let Ok(w) = self.rx.try_recv() {
            writes.push(w.call);
        }
        if writes.is_empty() {
            return Ok(0);
        }
        let cfg = &self.fleet.cfg;
        let conn = Conn::open(cfg, &cfg.redis, false).await?;
        for chunk in writes.chunks(MAX_BATCH) {
            for answer in conn.batch(chunk, WRITE_DEADLINE).await? {
                if let Value::ServerError(e) = answer {
                    return Err(StoreError::Connecting(format!(
                        "the store refused a lesson: {e:?}"
                    )));
                }
            }
        }
        Ok(writes.len())
    }
}

fn class_name(spam: bool) -> &'static str {
    if spam { "spam" } else { "ham" }
}

/// `Some(true)` for spam.
fn class_of(s: &str) -> Option<bool> {
    match s {
        "spam" => Some(true),
        "ham" => Some(false),
        _ => None,
    }
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// `ms-seq`.
fn parse_id(s: &str) -> Option<StreamId> {
    let (ms, seq) = s.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// The id of the first entry of an `XRANGE` answer.
fn first_id(v: &Value) -> Option<StreamId> {
    let Value::Array(entries) = v else {
        return None;
    };
    match entries.first()? {
        Value::Array(e) => match e.first()? {
            Value::BulkString(b) => parse_id(std::str::from_utf8(b).ok()?),
            Value::SimpleString(s) => parse_id(s),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_fields_round_trip() {
        assert_eq!(parse_id("1700000000000-3"), Some((1_700_000_000_000, 3)));
        assert_eq!(parse_id("17-x"), None);
        let d = [7u8, 0, 255, 16];
        assert_eq!(unhex(&hex(&d)).as_deref(), Some(&d[..]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
        assert_eq!(class_of(class_name(false)), Some(false));
        assert_eq!(class_of("junk"), None);
        let v = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"5-1".to_vec()),
            Value::Array(vec![]),
        ])]);
        assert_eq!(first_id(&v), Some((5, 1)));
        assert_eq!(first_id(&Value::Array(vec![])), None);
    }
}

//! Our own statistical classifier, trained only by the lessons the [`Teacher`](super::Teacher)
//! takes (users' reports, webmail's buttons, `maildistiller learn`): per token, how many spam
//! and ham lessons contained it; a message's score is the Robinson–Fisher chi-square
//! combination of its tokens' probabilities, as SpamBayes computes it (constants below are
//! SpamBayes' defaults). The `learnt` scanner (`scan/check/learnt.rs`) reads it.
//!
//! # Durable and shared by the processes of one spool
//!
//! Every lesson is one record appended to `SPOOL/learning/model.journal` and fsynced before the
//! teacher reports it done; the in-memory model is the journal replayed. Each reader (the
//! engine's scanner, `maildistiller learn` in another process) follows the file: before each
//! score it looks at the file's length and applies new records, so a lesson taught by any
//! process of this spool counts for the next message. A relearn appends "minus one in the old
//! class" and "plus one in the new" in one record.
//!
//! Records (integers little-endian):
//!
//! | record | fields | what |
//! |---|---|---|
//! | `G` | digest(16) class(`s`/`h`) previous(`s`/`h`/`-`) stream id(u64 ms, u64 seq) n(u32) n×hash(u64) | one lesson: the message's digest ([`super::original::digest`]), its class, the class it is taken out of (a relearn), and for a lesson of another node its id on the fleet's stream (0 for our own) |
//! | `L` | class sign(`+`/`-`) n(u32) n×hash(u64) | a lesson as journals before `G` wrote it (still read) |
//! | `B` | nspam nham n(u32 each) n×(hash u64, spam u32, ham u32) | the counts, first record after a compaction |
//! | `K` | stream id(u64, u64) n(u32) n×(digest(16), class) | after `B`: the fleet stream's position and the digests taught |
//!
//! A partly written last record is not read until it is complete.
//!
//! # Once per message, fleet-wide
//!
//! The model remembers each taught message's digest with its class ([`MAX_TAUGHT`]): a lesson
//! of a message already taught as that class changes nothing, whether it came from this
//! spool's teacher or from the fleet (`shared/lessons.rs`: with `[shared]`, every engine
//! publishes its lessons and applies the others'); a relearn takes the message out of the
//! class this model has it in. The fleet stream's position is journaled with the lessons it
//! brought, so a restart neither applies one twice nor skips one.
//!
//! # Bounds
//!
//! - [`MAX_TOKENS`] distinct tokens in memory (~32 bytes each with the map's overhead, so about
//!   32 MB): past it, the tokens seen in only one lesson are forgotten (then two…), as
//!   bogofilter's maintenance does; replay forgets at the same points, so every reader agrees.
//! - The journal is compacted (the model written as one `B` record into a new file, fsynced,
//!   renamed over it) when it passes [`MAX_JOURNAL`]; writers take an exclusive lock on the
//!   journal for appending and compacting, and readers see the new file by its inode.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};

use crate::engine::scan::check::LearnAs;
use crate::shared::lessons::{Learner, Lesson};

/// Distinct tokens the model keeps.
pub const MAX_TOKENS: usize = 1_000_000;
/// Digests of taught messages remembered (17 bytes each in the journal's `K` record, ~40 in
/// memory); past it, lessons still count, once more if one of them is taught again.
pub const MAX_TAUGHT: usize = 1_000_000;
/// Journal size past which it is compacted.
pub const MAX_JOURNAL: u64 = 64 << 20;
/// The journal's name under `SPOOL/learning/`.
pub const FILE: &str = "model.journal";

/// SpamBayes' `unknown_word_strength` and `unknown_word_prob`.
const S: f64 = 0.45;
const X: f64 = 0.5;
/// Tokens whose probability is within this of 0.5 are not clues (`minimum_prob_strength`).
const MIN_STRENGTH: f64 = 0.1;
/// Strongest clues combined (`max_discriminators`).
const MAX_CLUES: usize = 150;

/// A token's 64-bit key (stable across processes and versions: FNV-1a).
pub fn hash(token: &str) -> u64 {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    token.hash(&mut h);
    h.0
}

struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
}

/// A message's digest as the model keeps it: the first 16 bytes of [`super::original::digest`].
pub type Digest = [u8; 16];

pub use crate::shared::lessons::StreamId;

/// The counts.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Model {
    pub nspam: u32,
    pub nham: u32,
    counts: HashMap<u64, (u32, u32)>,
    /// Messages taught, by digest, with the class they are in now.
    taught: HashMap<Digest, LearnAs>,
    /// The last fleet lesson applied.
    cursor: StreamId,
}

/// A message's score.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    /// 0 (ham) ..= 1 (spam); 0.5 when nothing is known.
    pub p: f64,
    /// Tokens that counted, strongest first, with their probability (at most [`MAX_CLUES`]).
    pub clues: Vec<(usize, f64)>,
}

impl Model {
    pub fn tokens(&self) -> usize {
        self.counts.len()
    }

    /// Spam and ham lessons containing `token`.
    pub fn count(&self, token: &str) -> (u32, u32) {
        self.counts.get(&hash(token)).copied().unwrap_or_default()
    }

    /// The class `digest` was taught as, if this model remembers it.
    pub fn taught(&self, digest: &Digest) -> Option<LearnAs> {
        self.taught.get(digest).copied()
    }

    /// The last fleet lesson applied (`(0, 0)`: none yet).
    pub fn cursor(&self) -> StreamId {
        self.cursor
    }

    /// One lesson of message `digest`: out of `previous` (a relearn), into `class`.
    fn take(
        &mut self,
        digest: Digest,
        class: LearnAs,
        previous: Option<LearnAs>,
        id: StreamId,
        hashes: &[u64],
    ) {
        if let Some(p) = previous.filter(|p| *p != class) {
            self.apply(p, false, hashes);
        }
        self.apply(class, true, hashes);
        if self.taught.len() < MAX_TAUGHT || self.taught.contains_key(&digest) {
            self.taught.insert(digest, class);
        }
        self.cursor = self.cursor.max(id);
    }

    /// One lesson (`plus`) or its reversal.
    pub fn apply(&mut self, class: LearnAs, plus: bool, hashes: &[u64]) {
        let step = |n: &mut u32| {
            *n = if plus {
                n.saturating_add(1)
            } else {
                n.saturating_sub(1)
            }
        };
        match class {
            LearnAs::Spam => step(&mut self.nspam),
            LearnAs::Ham => step(&mut self.nham),
        }
        for h in hashes {
            let c = self.counts.entry(*h).or_default();
            match class {
                LearnAs::Spam => step(&mut c.0),
                LearnAs::Ham => step(&mut c.1),
            }
            if *c == (0, 0) {
                self.counts.remove(h);
            }
        }
        let mut keep_above = 1;
        while self.counts.len() > MAX_TOKENS {
            self.counts.retain(|_, (s, h)| *s + *h > keep_above);
            keep_above += 1;
        }
    }

    /// A token's spam probability (Robinson's f(w)), when it was ever seen.
    fn prob(&self, h: u64) -> Option<f64> {
        let (s, hm) = *self.counts.get(&h)?;
        let sr = f64::from(s) / f64::from(self.nspam.max(1));
        let hr = f64::from(hm) / f64::from(self.nham.max(1));
        if sr + hr == 0.0 {
            return None;
        }
        let p = sr / (sr + hr);
        let n = f64::from(s + hm);
        Some((S * X + n * p) / (S + n))
    }

    /// The chi-square combined probability of these (distinct) tokens.
    pub fn score(&self, hashes: &[u64]) -> Score {
        let mut clues: Vec<(usize, f64)> = hashes
            .iter()
            .enumerate()
            .filter_map(|(i, h)| Some((i, self.prob(*h)?)))
            .filter(|(_, p)| (p - 0.5).abs() >= MIN_STRENGTH)
            .collect();
        clues.sort_by(|a, b| (b.1 - 0.5).abs().total_cmp(&(a.1 - 0.5).abs()));
        clues.truncate(MAX_CLUES);
        if clues.is_empty() {
            return Score { p: 0.5, clues };
        }
        let (mut ln_ham, mut ln_spam) = (0.0, 0.0);
        for (_, p) in &clues {
            ln_spam += (1.0 - p).max(1e-200).ln();
            ln_ham += p.max(1e-200).ln();
        }
        let n = clues.len() as f64;
        let s = 1.0 - chi2q(-2.0 * ln_spam, 2.0 * n);
        let h = 1.0 - chi2q(-2.0 * ln_ham, 2.0 * n);
        Score {
            p: (s - h + 1.0) / 2.0,
            clues,
        }
    }
}

/// P(chi² with `v` (even) degrees of freedom >= `x2`).
fn chi2q(x2: f64, v: f64) -> f64 {
    let m = x2 / 2.0;
    let mut term = (-m).exp();
    let mut sum = term;
    let mut i = 1.0;
    while i < v / 2.0 {
        term *= m / i;
        sum += term;
        i += 1.0;
    }
    sum.min(1.0)
}

/// The model of one spool directory, following its journal.
pub struct Store {
    path: PathBuf,
    state: RwLock<Followed>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "model::Store({})", self.path.display())
    }
}

#[derive(Default)]
struct Followed {
    model: Model,
    /// Bytes of the journal applied, and its inode.
    offset: u64,
    ino: u64,
}

/// One store per spool directory in this process (the scanner and the teacher share it).
pub fn store(spool_dir: &Path) -> Arc<Store> {
    static ALL: super::PerSpool<Store> = OnceLock::new();
    super::per_spool(&ALL, spool_dir, || Store {
        path: spool_dir.join("learning").join(FILE),
        state: RwLock::new(Followed::default()),
    })
}

impl Store {
    /// Reads what other processes (or this one) appended since the last look.
    pub fn refresh(&self) -> std::io::Result<()> {
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        {
            let g = self.state.read().unwrap_or_else(|e| e.into_inner());
            if g.ino == meta.ino() && g.offset == meta.len() {
                return Ok(());
            }
        }
        let mut g = self.state.write().unwrap_or_else(|e| e.into_inner());
        let mut f = File::open(&self.path)?;
        let ino = f.metadata()?.ino();
        if g.ino != ino || f.metadata()?.len() < g.offset {
            *g = Followed {
                ino,
                ..Followed::default()
            };
        }
        f.seek(SeekFrom::Start(g.offset))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        let used = replay(&mut g.model, &buf);
        g.offset += used as u64;
        Ok(())
    }

    /// Scores these tokens against the current model (after [`Store::refresh`]).
    pub fn score(&self, tokens: &[String]) -> (Score, u32, u32) {
        let hashes: Vec<u64> = tokens.iter().map(|t| hash(t)).collect();
        let g = self.state.read().unwrap_or_else(|e| e.into_inner());
        (g.model.score(&hashes), g.model.nspam, g.model.nham)
    }

    /// A copy of the model as it stands (tests, the command line).
    pub fn model(&self) -> Model {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .model
            .clone()
    }

    /// The last fleet lesson applied (after [`Store::refresh`]).
    pub fn cursor(&self) -> StreamId {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .model
            .cursor
    }

    /// Teaches message `digest`'s `tokens` as `class`, taking them out of the class it was
    /// taught before (this model's memory, else `previous`): appended and fsynced, then
    /// applied. Returns the token hashes taught, or `None` when the model already has the
    /// message in `class` (taught here, or by another node of the fleet).
    pub fn teach(
        &self,
        digest: Digest,
        class: LearnAs,
        previous: Option<LearnAs>,
        tokens: &[String],
    ) -> std::io::Result<Option<Vec<u64>>> {
        let hashes: Vec<u64> = tokens.iter().map(|t| hash(t)).collect();
        let taken = self.append(|m, rec| {
            let previous = m.taught(&digest).or(previous);
            if previous == Some(class) {
                return 0;
            }
            lesson(rec, digest, class, previous, (0, 0), &hashes);
            1
        })?;
        Ok((taken > 0).then_some(hashes))
    }

    /// Applies lessons of other nodes, in stream order: those past the position, of a message
    /// not already in that class here, in one append and one fsync; then the position moves to
    /// `read_up_to`, the last entry read (this node's own lessons and invalid entries included,
    /// so that a read of nothing but those is not read again). Returns how many changed the
    /// model. The journal holds the position of the last lesson written; a restart reads the
    /// entries after it again and finds nothing new in them.
    pub fn apply_fleet(&self, lessons: &[Lesson], read_up_to: StreamId) -> std::io::Result<usize> {
        let advance = || {
            let mut g = self.state.write().unwrap_or_else(|e| e.into_inner());
            g.model.cursor = g.model.cursor.max(read_up_to);
        };
        if lessons.iter().all(|l| l.id <= self.cursor()) {
            advance();
            return Ok(0);
        }
        self.append(|m, rec| {
            let mut taken = 0;
            let mut now: HashMap<Digest, LearnAs> = HashMap::new();
            for l in lessons {
                if l.id <= m.cursor {
                    continue;
                }
                let class = if l.spam { LearnAs::Spam } else { LearnAs::Ham };
                let previous = now.get(&l.digest).copied().or_else(|| m.taught(&l.digest));
                if previous == Some(class) {
                    continue;
                }
                lesson(rec, l.digest, class, previous, l.id, &l.hashes);
                now.insert(l.digest, class);
                taken += 1;
            }
            taken
        })
        .inspect(|_| advance())
    }

    /// Under the journal's lock, with the model refreshed: `write` fills a record (returning
    /// how many lessons it holds); a non-empty one is appended and fsynced, the journal
    /// compacted past [`MAX_JOURNAL`], and the model refreshed.
    fn append(&self, write: impl FnOnce(&Model, &mut Vec<u8>) -> usize) -> std::io::Result<usize> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let f = self.locked()?;
        self.refresh()?;
        let mut rec = Vec::new();
        let taken = {
            let g = self.state.read().unwrap_or_else(|e| e.into_inner());
            write(&g.model, &mut rec)
        };
        if rec.is_empty() {
            return Ok(taken);
        }
        (&f).write_all(&rec)?;
        f.sync_data()?;
        if f.metadata()?.len() > MAX_JOURNAL {
            self.refresh()?;
            self.compact()?;
        }
        drop(f);
        self.refresh()?;
        Ok(taken)
    }

    /// The journal, opened for appending and locked exclusively (the file at the path now,
    /// not one a compaction just replaced).
    fn locked(&self) -> std::io::Result<File> {
        loop {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            f.lock()?;
            let now = std::fs::metadata(&self.path)?;
            if now.ino() == f.metadata()?.ino() {
                return Ok(f);
            }
        }
    }

    /// Writes the model as one `B` and one `K` record into a new journal (under the writer's
    /// lock).
    fn compact(&self) -> std::io::Result<()> {
        let g = self.state.read().unwrap_or_else(|e| e.into_inner());
        let m = &g.model;
        let mut rec = Vec::with_capacity(33 + m.counts.len() * 16 + m.taught.len() * 17);
        rec.push(b'B');
        for n in [m.nspam, m.nham, m.counts.len() as u32] {
            rec.extend_from_slice(&n.to_le_bytes());
        }
        for (h, (s, hm)) in &m.counts {
            rec.extend_from_slice(&h.to_le_bytes());
            rec.extend_from_slice(&s.to_le_bytes());
            rec.extend_from_slice(&hm.to_le_bytes());
        }
        rec.push(b'K');
        rec.extend_from_slice(&m.cursor.0.to_le_bytes());
        rec.extend_from_slice(&m.cursor.1.to_le_bytes());
        rec.extend_from_slice(&(m.taught.len() as u32).to_le_bytes());
        for (d, c) in &m.taught {
            rec.extend_from_slice(d);
            rec.push(class_byte(Some(*c)));
        }
        let tmp = self.path.with_extension("compact");
        let mut f = File::create(&tmp)?;
        f.write_all(&rec)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// The fleet's lessons go into this spool's model (`shared/lessons.rs`).
impl Learner for Store {
    fn position(&self) -> std::io::Result<StreamId> {
        self.refresh()?;
        Ok(self.cursor())
    }

    fn learn(&self, lessons: &[Lesson], read_up_to: StreamId) -> std::io::Result<usize> {
        self.apply_fleet(lessons, read_up_to)
    }
}

/// A `G` record.
fn lesson(
    rec: &mut Vec<u8>,
    digest: Digest,
    class: LearnAs,
    previous: Option<LearnAs>,
    id: StreamId,
    hashes: &[u64],
) {
    rec.push(b'G');
    rec.extend_from_slice(&digest);
    rec.push(class_byte(Some(class)));
    rec.push(class_byte(previous));
    rec.extend_from_slice(&id.0.to_le_bytes());
    rec.extend_from_slice(&id.1.to_le_bytes());
    rec.extend_from_slice(&(hashes.len() as u32).to_le_bytes());
    for h in hashes {
        rec.extend_from_slice(&h.to_le_bytes());
    }
}

fn class_byte(c: Option<LearnAs>) -> u8 {
    match c {
        Some(LearnAs::Spam) => b's',
        Some(LearnAs::Ham) => b'h',
        None => b'-',
    }
}

fn class_of(b: u8) -> Option<LearnAs> {
    match b {
        b's' => Some(LearnAs::Spam),
        b'h' => Some(LearnAs::Ham),
        _ => None,
    }
}

/// The model a journal holds (`maildistiller learn --audit`, tests: what a restart reads).
pub fn load(path: &Path) -> std::io::Result<Model> {
    let buf = std::fs::read(path)?;
    let mut m = Model::default();
    replay(&mut m, &buf);
    Ok(m)
}

fn digest_at(b: &[u8], at: usize) -> Option<Digest> {
    b.get(at..at + 16)?.try_into().ok()
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Applies the complete records of `buf`; returns the bytes used. An unknown record stops
/// the replay there (a newer writer's format, or damage): what came before stands.
fn replay(m: &mut Model, buf: &[u8]) -> usize {
    let mut at = 0;
    loop {
        match buf.get(at) {
            Some(b'G') => {
                let Some(n) = u32_at(buf, at + 35) else { break };
                let end = at + 39 + n as usize * 8;
                if end > buf.len() {
                    break;
                }
                let (Some(digest), Some(class), Some(ms), Some(seq)) = (
                    digest_at(buf, at + 1),
                    class_of(buf[at + 17]),
                    u64_at(buf, at + 19),
                    u64_at(buf, at + 27),
                ) else {
                    break;
                };
                let hashes: Vec<u64> = (0..n as usize)
                    .filter_map(|i| u64_at(buf, at + 39 + i * 8))
                    .collect();
                m.take(digest, class, class_of(buf[at + 18]), (ms, seq), &hashes);
                at = end;
            }
            Some(b'K') => {
                let (Some(ms), Some(seq), Some(n)) = (
                    u64_at(buf, at + 1),
                    u64_at(buf, at + 9),
                    u32_at(buf, at + 17),
                ) else {
                    break;
                };
                let end = at + 21 + n as usize * 17;
                if end > buf.len() {
                    break;
                }
                m.cursor = (ms, seq);
                for i in 0..n as usize {
                    let p = at + 21 + i * 17;
                    if let (Some(d), Some(c)) = (digest_at(buf, p), class_of(buf[p + 16])) {
                        m.taught.insert(d, c);
                    }
                }
                at = end;
            }
            Some(b'L') => {
                let Some(n) = u32_at(buf, at + 3) else { break };
                let end = at + 7 + n as usize * 8;
                if end > buf.len() {
                    break;
                }
                let class = if buf[at + 1] == b's' {
                    LearnAs::Spam
                } else {
                    LearnAs::Ham
                };
                let hashes: Vec<u64> = (0..n as usize)
                    .filter_map(|i| u64_at(buf, at + 7 + i * 8))
                    .collect();
                m.apply(class, buf[at + 2] == b'+', &hashes);
                at = end;
            }
            Some(b'B') => {
                let (Some(s), Some(h), Some(n)) = (
                    u32_at(buf, at + 1),
                    u32_at(buf, at + 5),
                    u32_at(buf, at + 9),
                ) else {
                    break;
                };
                let end = at + 13 + n as usize * 16;
                if end > buf.len() {
                    break;
                }
                *m = Model {
                    nspam: s,
                    nham: h,
                    counts: HashMap::with_capacity(n as usize),
                    ..Model::default()
                };
                for i in 0..n as usize {
                    let p = at + 13 + i * 16;
                    if let (Some(k), Some(a), Some(b)) =
                        (u64_at(buf, p), u32_at(buf, p + 8), u32_at(buf, p + 12))
                    {
                        m.counts.insert(k, (a, b));
                    }
                }
                at = end;
            }
            _ => break,
        }
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    fn hashes(text: &str) -> Vec<u64> {
        toks(text).iter().map(|t| hash(t)).collect()
    }

    #[test]
    fn it_separates_spam_like_from_ham_like_text() {
        let mut m = Model::default();
        for i in 0..20 {
            let spam = format!("free money offer click viagra winner cash{i}");
            let ham = format!("meeting agenda project review notes thanks minutes{i}");
            m.apply(LearnAs::Spam, true, &hashes(&spam));
            m.apply(LearnAs::Ham, true, &hashes(&ham));
        }
        assert!(m.score(&hashes("click here free cash offer now")).p > 0.9);
        assert!(m.score(&hashes("project meeting notes for review")).p < 0.1);
        // Nothing known: the middle.
        assert_eq!(m.score(&hashes("entirely unseen words")).p, 0.5);
    }

    #[test]
    fn a_relearn_moves_the_counts_and_the_journal_replays_it() {
        let dir = tempfile::tempdir().unwrap();
        let st = store(dir.path());
        let t = toks("cheap pills offer");
        assert!(
            st.teach([1; 16], LearnAs::Spam, None, &t)
                .unwrap()
                .is_some()
        );
        assert_eq!(st.model().count("pills"), (1, 0));
        // The same message again as spam: once is enough.
        assert_eq!(st.teach([1; 16], LearnAs::Spam, None, &t).unwrap(), None);
        assert_eq!(st.model().nspam, 1);
        // Relearnt as ham: out of spam (the model remembers it, whatever the caller says).
        st.teach([1; 16], LearnAs::Ham, None, &t).unwrap();
        let m = st.model();
        assert_eq!((m.nspam, m.nham, m.count("pills")), (0, 1, (0, 1)));
        assert_eq!(m.taught(&[1; 16]), Some(LearnAs::Ham));
        // Another reader of the same journal (a restart, another process) sees the same.
        let path = dir.path().join("learning").join(FILE);
        assert_eq!(load(&path).unwrap(), m);
        // A partly written record is left for later.
        let buf = std::fs::read(&path).unwrap();
        assert_eq!(
            replay(&mut Model::default(), &buf[..buf.len() - 3]),
            39 + 3 * 8
        );
    }

    #[test]
    fn fleet_lessons_count_once_and_their_position_survives_a_restart_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let st = store(dir.path());
        let path = dir.path().join("learning").join(FILE);
        let spam = hashes("casino bonus claim");
        // Taught here first, then the same message arrives from the fleet: no second count.
        st.teach([1; 16], LearnAs::Spam, None, &toks("casino bonus claim"))
            .unwrap();
        let l = |id: StreamId, d: u8, spam: bool, hashes: Vec<u64>| Lesson {
            id,
            digest: [d; 16],
            spam,
            hashes,
        };
        let fleet = vec![
            l((100, 0), 1, true, spam.clone()),
            l((101, 0), 2, true, hashes("jackpot credits casino")),
            l((102, 0), 2, true, hashes("jackpot credits casino")),
        ];
        assert_eq!(st.apply_fleet(&fleet, (102, 0)).unwrap(), 1);
        let m = st.model();
        assert_eq!(
            (m.nspam, m.count("casino"), m.cursor()),
            (2, (2, 0), (102, 0))
        );
        // Read again (a restart reads from the journaled position): nothing changes.
        assert_eq!(st.apply_fleet(&fleet, (102, 0)).unwrap(), 0);
        let restarted = load(&path).unwrap();
        assert_eq!(restarted.nspam, 2);
        assert!(restarted.cursor() >= (101, 0), "{:?}", restarted.cursor());
        // A relearn from the fleet moves the message out of the class this model has it in.
        let relearn = vec![l((200, 5), 2, false, hashes("jackpot credits casino"))];
        assert_eq!(st.apply_fleet(&relearn, (200, 5)).unwrap(), 1);
        assert_eq!(st.model().count("jackpot"), (0, 1));
        // Compaction keeps the position and the digests taught.
        let before = st.model();
        let f = st.locked().unwrap();
        st.compact().unwrap();
        drop(f);
        let compacted = load(&path).unwrap();
        assert_eq!(compacted, before);
        assert_eq!(compacted.cursor(), (200, 5));
        assert_eq!(compacted.taught(&[2; 16]), Some(LearnAs::Ham));
        assert_eq!(st.apply_fleet(&relearn, (200, 5)).unwrap(), 0);
        // A read of nothing but this node's own lessons still moves the position on: the
        // next read starts after them, not at them again.
        assert_eq!(st.apply_fleet(&[], (250, 0)).unwrap(), 0);
        assert_eq!(st.cursor(), (250, 0));
    }

    #[test]
    fn journals_of_the_older_format_still_replay() {
        let mut buf = Vec::new();
        for (class, sign) in [(b's', b'+'), (b's', b'-'), (b'h', b'+')] {
            buf.extend_from_slice(&[b'L', class, sign]);
            buf.extend_from_slice(&1u32.to_le_bytes());
            buf.extend_from_slice(&hash("pills").to_le_bytes());
        }
        let mut m = Model::default();
        assert_eq!(replay(&mut m, &buf), buf.len());
        assert_eq!((m.nspam, m.nham, m.count("pills")), (0, 1, (0, 1)));
    }

    #[test]
    fn compaction_keeps_the_model() {
        let dir = tempfile::tempdir().unwrap();
        let st = store(dir.path());
        st.teach([1; 16], LearnAs::Spam, None, &toks("a b c"))
            .unwrap();
        st.teach([2; 16], LearnAs::Ham, None, &toks("c d")).unwrap();
        let before = st.model();
        let f = st.locked().unwrap();
        st.compact().unwrap();
        drop(f);
        st.refresh().unwrap();
        assert_eq!(st.model(), before);
        st.teach([3; 16], LearnAs::Ham, None, &toks("d")).unwrap();
        assert_eq!(st.model().count("d"), (0, 2));
    }

    #[test]
    fn the_token_bound_holds() {
        let mut m = Model::default();
        let many: Vec<u64> = (0..MAX_TOKENS as u64 + 10).collect();
        m.apply(LearnAs::Spam, true, &many[..10]);
        m.apply(LearnAs::Spam, true, &many[..10]);
        m.apply(LearnAs::Ham, true, &many);
        assert!(m.tokens() <= MAX_TOKENS);
        // Tokens seen twice or more survive the pruning.
        assert_eq!(m.counts.get(&3), Some(&(2, 1)));
    }
}

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
//! Records: `L` class(`s`/`h`) sign(`+`/`-`) n(u32 LE) n×hash(u64 LE), or, after compaction,
//! one `B` nspam nham n(u32 LE each) n×(hash u64, spam u32, ham u32). A partly written last
//! record is not read until it is complete.
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

/// Distinct tokens the model keeps.
pub const MAX_TOKENS: usize = 1_000_000;
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

/// The counts.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Model {
    pub nspam: u32,
    pub nham: u32,
    counts: HashMap<u64, (u32, u32)>,
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

    /// Teaches `tokens` as `class` (taking them out of `previous` first, for a relearn):
    /// appended and fsynced, then applied.
    pub fn teach(
        &self,
        class: LearnAs,
        previous: Option<LearnAs>,
        tokens: &[String],
    ) -> std::io::Result<()> {
        let hashes: Vec<u64> = tokens.iter().map(|t| hash(t)).collect();
        let mut rec = Vec::with_capacity(16 + hashes.len() * 16);
        if let Some(p) = previous.filter(|p| *p != class) {
            lesson(&mut rec, p, false, &hashes);
        }
        lesson(&mut rec, class, true, &hashes);
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let f = self.locked()?;
        (&f).write_all(&rec)?;
        f.sync_data()?;
        let len = f.metadata()?.len();
        if len > MAX_JOURNAL {
            self.refresh()?;
            self.compact()?;
        }
        drop(f);
        self.refresh()
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

    /// Writes the model as one `B` record into a new journal (under the writer's lock).
    fn compact(&self) -> std::io::Result<()> {
        let g = self.state.read().unwrap_or_else(|e| e.into_inner());
        let m = &g.model;
        let mut rec = Vec::with_capacity(13 + m.counts.len() * 16);
        rec.push(b'B');
        for n in [m.nspam, m.nham, m.counts.len() as u32] {
            rec.extend_from_slice(&n.to_le_bytes());
        }
        for (h, (s, hm)) in &m.counts {
            rec.extend_from_slice(&h.to_le_bytes());
            rec.extend_from_slice(&s.to_le_bytes());
            rec.extend_from_slice(&hm.to_le_bytes());
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

fn lesson(rec: &mut Vec<u8>, class: LearnAs, plus: bool, hashes: &[u64]) {
    rec.push(b'L');
    rec.push(if class == LearnAs::Spam { b's' } else { b'h' });
    rec.push(if plus { b'+' } else { b'-' });
    rec.extend_from_slice(&(hashes.len() as u32).to_le_bytes());
    for h in hashes {
        rec.extend_from_slice(&h.to_le_bytes());
    }
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
        st.teach(LearnAs::Spam, None, &t).unwrap();
        assert_eq!(st.model().count("pills"), (1, 0));
        st.teach(LearnAs::Ham, Some(LearnAs::Spam), &t).unwrap();
        let m = st.model();
        assert_eq!((m.nspam, m.nham, m.count("pills")), (0, 1, (0, 1)));
        // Another reader of the same journal (a restart, another process) sees the same.
        let mut fresh = Model::default();
        let buf = std::fs::read(dir.path().join("learning").join(FILE)).unwrap();
        assert_eq!(replay(&mut fresh, &buf), buf.len());
        assert_eq!(fresh, m);
        // A partly written record is left for later.
        assert_eq!(
            replay(&mut Model::default(), &buf[..buf.len() - 3]),
            7 + 3 * 8 * 2 + 7
        );
    }

    #[test]
    fn compaction_keeps_the_model() {
        let dir = tempfile::tempdir().unwrap();
        let st = store(dir.path());
        st.teach(LearnAs::Spam, None, &toks("a b c")).unwrap();
        st.teach(LearnAs::Ham, None, &toks("c d")).unwrap();
        let before = st.model();
        let f = st.locked().unwrap();
        st.compact().unwrap();
        drop(f);
        st.refresh().unwrap();
        assert_eq!(st.model(), before);
        st.teach(LearnAs::Ham, None, &toks("d")).unwrap();
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

//! The learning audit log: who taught what, when, with what outcome — one line per lesson,
//! appended to `SPOOL/learning/audit.log` and fsynced before the lesson is reported done.
//!
//! Format: tab-separated fields, one lesson a line (`#` lines are comments):
//!
//! ```text
//! time  source  user  tenant  class  digest  outcome  message-id  subject
//! 1796630400  report  bob@acme.example  acme  spam  9f86d0…(64 hex)  learnt  <p1@x>  Cheap watches
//! ```
//!
//! `time` is Unix seconds; `digest` is [`super::original::digest`] in hex; `outcome` is
//! `learnt`, `known` or `duplicate`. Values are cleaned of tabs and control characters and
//! clipped (the subject to 120 characters). The file is read once at first use to restore which
//! messages were taught as what (the dedup memory survives restarts); it grows by about 200
//! bytes a lesson and is the operator's to rotate (a rotated-away file only forgets the dedup
//! memory of what it held: rspamd still answers 208 for those).

use std::io::Write;
use std::path::Path;

use super::Teller;

pub const FILE: &str = "audit.log";

/// One line of the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub time: u64,
    pub source: String,
    pub user: String,
    pub tenant: String,
    pub class: String,
    pub digest: String,
    pub outcome: String,
    pub message_id: String,
    pub subject: String,
}

fn clean(s: &str, n: usize) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(n)
        .collect();
    if s.is_empty() { "-".into() } else { s }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The first 16 bytes of a hex digest, the dedup memory's key.
pub fn key(hex_digest: &str) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex_digest.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A header field's first value, for the log (unfolded, clipped by [`clean`]).
fn field(message: &[u8], name: &str) -> String {
    let head_end = memchr::memmem::find(message, b"\n\n")
        .or_else(|| memchr::memmem::find(message, b"\r\n\r\n"))
        .unwrap_or(message.len().min(64 << 10));
    let head = String::from_utf8_lossy(&message[..head_end]);
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default()
}

impl Entry {
    pub fn new(
        who: &Teller,
        class: &str,
        digest: &[u8; 32],
        outcome: &str,
        message: &[u8],
    ) -> Entry {
        Entry {
            time: crate::store::now_secs(),
            source: who.source.to_owned(),
            user: clean(&who.user, 200),
            tenant: clean(&who.tenant, 100),
            class: class.to_owned(),
            digest: hex(digest),
            outcome: outcome.to_owned(),
            message_id: clean(&field(message, "Message-ID"), 200),
            subject: clean(&field(message, "Subject"), 120),
        }
    }

    fn line(&self) -> String {
        format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            self.time,
            self.source,
            self.user,
            self.tenant,
            self.class,
            self.digest,
            self.outcome,
            self.message_id,
            self.subject
        )
    }

    fn parse(line: &str) -> Option<Entry> {
        let f: Vec<&str> = line.split('\t').collect();
        let [
            time,
            source,
            user,
            tenant,
            class,
            digest,
            outcome,
            message_id,
            subject,
        ] = f[..]
        else {
            return None;
        };
        Some(Entry {
            time: time.parse().ok()?,
            source: source.into(),
            user: user.into(),
            tenant: tenant.into(),
            class: class.into(),
            digest: digest.into(),
            outcome: outcome.into(),
            message_id: message_id.into(),
            subject: subject.into(),
        })
    }
}

/// Appends `e` to `DIR/audit.log` (creating both) and fsyncs it.
pub fn append(dir: &Path, e: &Entry) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(FILE))?;
    f.write_all(e.line().as_bytes())?;
    f.sync_data()
}

/// Every entry of the log (none when it does not exist); lines that do not parse are skipped.
pub fn read(path: &Path) -> std::io::Result<Vec<Entry>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(Entry::parse)
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_are_clean() {
        let dir = tempfile::tempdir().unwrap();
        let who = Teller {
            source: "webmail",
            user: "bob@acme.test".into(),
            tenant: "acme".into(),
            bulk: false,
        };
        let msg = b"Message-ID: <a@b>\r\nSubject: tab\there\r\n\r\nx";
        let e = Entry::new(&who, "spam", &[0xab; 32], "learnt", msg);
        append(dir.path(), &e).unwrap();
        append(dir.path(), &e).unwrap();
        let back = read(&dir.path().join(FILE)).unwrap();
        assert_eq!(back, vec![e.clone(), e]);
        assert_eq!(back[0].subject, "tab here");
        assert_eq!(key(&back[0].digest), Some([0xab; 16]));
    }
}

//! Every key we write, in one place. Each key carries a hash tag (`{…}`): all the keys one
//! command or script touches share it, so a Redis Cluster keeps them in one slot (a script's
//! keys must be; a pipeline is split by tag, `conn.rs`). Keys never hold an address or a
//! recipient in clear: networks, senders and recipients are hashed.

use crate::config::outbreak::FingerprintKind;

/// A fingerprint of a scanned message: its kind and a 64-bit digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint {
    pub kind: FingerprintKind,
    pub digest: u64,
}

impl Fingerprint {
    /// `t`, `f`, `a` or `u` and 16 hex digits: how operators name it (`intel block
    /// fingerprint f0123…`), how verdicts cite it, and its keys' hash tag.
    pub fn id(&self) -> String {
        let k = match self.kind {
            FingerprintKind::Text => 't',
            FingerprintKind::Fuzzy => 'f',
            FingerprintKind::Attachment => 'a',
            FingerprintKind::Url => 'u',
        };
        format!("{k}{:016x}", self.digest)
    }

    /// The inverse of [`Fingerprint::id`].
    pub fn parse(s: &str) -> Option<Fingerprint> {
        let kind = match s.as_bytes().first()? {
            b't' => FingerprintKind::Text,
            b'f' => FingerprintKind::Fuzzy,
            b'a' => FingerprintKind::Attachment,
            b'u' => FingerprintKind::Url,
            _ => return None,
        };
        let hex = &s[1..];
        if hex.len() != 16 {
            return None;
        }
        let digest = u64::from_str_radix(hex, 16).ok()?;
        Some(Fingerprint { kind, digest })
    }
}

/// The names of one deployment's keys (`shared.prefix` first).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

/// The keys of one fingerprint's sightings: one sorted set of who saw it (member: `r`, `t` or
/// `n` and a hashed recipient, tenant or network; score: when last seen, ms) holding its counts
/// too (members `#r`, `#t`, `#n`, `#f`, `#x`, negative scores: `outbreak.rs`), plus the outbreak
/// marker (set once, by the first node that finds the fingerprint over a policy's thresholds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SightingKeys {
    pub tag: String,
    pub members: String,
    pub marker: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    pub fn sightings(&self, fp: &Fingerprint) -> SightingKeys {
        let tag = fp.id();
        let base = format!("{}:o:{{{tag}}}", self.prefix);
        SightingKeys {
            members: format!("{base}:z"),
            marker: format!("{base}:x"),
            tag,
        }
    }

    /// A greylisting triplet (its digest): `(tag, key)`.
    pub fn greylist(&self, triplet: u64) -> (String, String) {
        let tag = format!("g{triplet:016x}");
        let key = format!("{}:g:{{{tag}}}", self.prefix);
        (tag, key)
    }

    /// A network's counter of `what` (`c` connections, `m` messages) in one minute: `(tag, key)`.
    pub fn rate(&self, network: u64, what: char, minute: u64) -> (String, String) {
        let tag = format!("r{network:016x}");
        let key = format!("{}:r:{{{tag}}}:{what}:{minute}", self.prefix);
        (tag, key)
    }

    /// The spreading stream (`spread.rs`): one stream, an entry per fingerprint whose counts
    /// grew past one tenant or network. `(tag, key)`.
    pub fn spread(&self) -> (String, String) {
        ("spread".into(), format!("{}:{{spread}}", self.prefix))
    }

    /// The fleet's lessons: one stream (`lessons.rs`). `(tag, key)`.
    pub fn lessons(&self) -> (String, String) {
        ("lessons".into(), format!("{}:{{lessons}}", self.prefix))
    }

    /// The intelligence feed: one hash (field `kind:value`). `(tag, key)`.
    pub fn intel(&self) -> (String, String) {
        ("intel".into(), format!("{}:{{intel}}", self.prefix))
    }
}

/// The hash tag of a key as Redis Cluster reads it: between the first `{` and the next `}`,
/// when that is not empty; else the whole key.
pub fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{')
        && let Some(len) = key[open + 1..].find('}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_one_call_share_their_hash_tag() {
        let k = Keys::new("md");
        let fp = Fingerprint {
            kind: FingerprintKind::Fuzzy,
            digest: 0xdead_beef,
        };
        let s = k.sightings(&fp);
        for key in [&s.members, &s.marker] {
            assert_eq!(hash_tag(key), s.tag, "{key}");
        }
        assert_eq!(s.members, "md:o:{f00000000deadbeef}:z");
        let (tag, key) = k.greylist(7);
        assert_eq!(hash_tag(&key), tag);
        let (tag, key) = k.rate(9, 'c', 123);
        assert_eq!(hash_tag(&key), tag);
        let (tag, key) = k.intel();
        assert_eq!(hash_tag(&key), tag);
        let (tag, key) = k.spread();
        assert_eq!(hash_tag(&key), tag);
        assert_eq!(Fingerprint::parse(&fp.id()), Some(fp));
        assert_eq!(Fingerprint::parse("x00"), None);
    }
}

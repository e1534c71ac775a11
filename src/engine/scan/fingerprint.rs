//! Fingerprints of a decoded message, for counting it fleet-wide (outbreak detection) and for
//! the operator's intelligence feed. Pure and cheap: one pass over the decoded text, a digest
//! of each attachment's first bytes, the URL domains already extracted.
//!
//! - **text**: the body text normalised (lower case, every run of digits one `0`, punctuation
//!   and spacing gone: words only), digested in order. Equal for copies that differ in
//!   layout, numbers or case.
//! - **fuzzy**: rspamd's idea (word n-gram shingles, min-hashed): every word 3-gram is hashed,
//!   15 min-hashes are kept, and they are cut into 5 bands of 3. Two copies share a given band
//!   with probability J³ for a shingle-set similarity J, and at least one of the five with
//!   1 − (1 − J³)⁵: 0.998 at J = 0.9 (a changed greeting, a changed name, shuffled paragraphs
//!   of a mail of a hundred words), 0.97 at J = 0.8, 0.13 at J = 0.3. Each band is a
//!   fingerprint, so the copies of a varied campaign count together: most copies land on the
//!   campaign's value of each band, and the thresholds are reached as soon as with eight bands
//!   of four (the earlier shape) on mails of 80 words or more, a copy later on 40-word ones (a
//!   simulation of varied copies of random texts). Five bands, not more: every band is a
//!   sighting written and a count read for every message (issue #18's cost goal).
//! - **attachment**: each named attachment's length and first [`ATTACHMENT_PREFIX`] bytes.
//! - **url**: each URL's domain (the last two labels, three under a two-letter ccTLD's short
//!   second level such as `co.uk`).
//!
//! Texts under [`MIN_WORDS`] words get no text or fuzzy fingerprint ("thanks!" is not a
//! campaign). Bounds: [`MAX_WORDS`] words, [`MAX_ATTACHMENTS`], [`MAX_URL_DOMAINS`].

use crate::config::outbreak::FingerprintKind;
use crate::shared::Fingerprint;

use super::check::Url;
use super::decode::Decoded;

pub const MIN_WORDS: usize = 12;
pub const MAX_WORDS: usize = 5000;
pub const BANDS: usize = 5;
pub const ROWS: usize = 3;
pub const MAX_ATTACHMENTS: usize = 4;
pub const MAX_URL_DOMAINS: usize = 4;
/// Bytes of an attachment digested (with its length): enough to tell files apart, bounded.
pub const ATTACHMENT_PREFIX: usize = 64 << 10;
const HASHES: usize = BANDS * ROWS;

/// splitmix64's finaliser: a good 64-bit mix.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A stable digest of bytes, eight at a time (the same on every node and build).
pub fn digest(data: &[u8]) -> u64 {
    let mut h = 0x9e37_79b9_7f4a_7c15 ^ data.len() as u64;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = (h ^ mix(w)).rotate_left(27).wrapping_mul(0x0100_0000_01b3);
    }
    for b in chunks.remainder() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

/// The words of `text`, normalised and hashed (at most [`MAX_WORDS`]).
fn words(text: &str, out: &mut Vec<u64>) {
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut Vec<u64>| {
        if !word.is_empty() && out.len() < MAX_WORDS {
            out.push(digest(word.as_bytes()));
        }
        word.clear();
    };
    let mut in_digits = false;
    for c in text.chars() {
        if c.is_numeric() {
            if !in_digits {
                word.push('0');
            }
            in_digits = true;
        } else if c.is_alphanumeric() {
            in_digits = false;
            word.extend(c.to_lowercase());
        } else {
            in_digits = false;
            flush(&mut word, out);
        }
    }
    flush(&mut word, out);
}

/// HTML source to its text, roughly: tags and entities dropped.
fn html_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len() / 2);
    let mut in_tag = false;
    let mut in_entity = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            '&' if !in_tag => in_entity = true,
            ';' if in_entity => {
                in_entity = false;
                out.push(' ');
            }
            c if c.is_whitespace() && in_entity => {
                in_entity = false;
                out.push(' ');
            }
            c if !in_tag && !in_entity => out.push(c),
            _ => {}
        }
    }
    out
}

/// The domain a URL host is counted under.
pub fn url_domain(host: &str) -> String {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = host.split('.').collect();
    let n = labels.len();
    let keep = if n >= 3 && labels[n - 1].len() == 2 && labels[n - 2].len() <= 3 {
        3
    } else {
        2
    };
    labels[n.saturating_sub(keep)..].join(".")
}

/// Every fingerprint of the message, of the kinds asked for, in a stable order.
pub fn of(decoded: &Decoded<'_>, urls: &[Url], kinds: &[FingerprintKind]) -> Vec<Fingerprint> {
    let mut out = Vec::new();
    let want = |k| kinds.contains(&k);
    if want(FingerprintKind::Text) || want(FingerprintKind::Fuzzy) {
        let mut w = Vec::new();
        words(&decoded.text, &mut w);
        if w.len() < MIN_WORDS && !decoded.html.is_empty() {
            w.clear();
            words(&html_text(&decoded.html), &mut w);
        }
        if w.len() >= MIN_WORDS {
            if want(FingerprintKind::Text) {
                let d = w.iter().fold(0u64, |h, x| mix(h.rotate_left(5) ^ x));
                out.push(Fingerprint {
                    kind: FingerprintKind::Text,
                    digest: d,
                });
            }
            if want(FingerprintKind::Fuzzy) {
                out.extend(bands(&w));
            }
        }
    }
    if want(FingerprintKind::Attachment) {
        let mut n = 0;
        for o in &decoded.objects {
            if n == MAX_ATTACHMENTS {
                break;
            }
            if o.name.is_none() || o.in_archive || o.data.len() < 32 {
                continue;
            }
            let head = &o.data[..o.data.len().min(ATTACHMENT_PREFIX)];
            let d = mix(digest(head) ^ o.data.len() as u64);
            let fp = Fingerprint {
                kind: FingerprintKind::Attachment,
                digest: d,
            };
            if !out.contains(&fp) {
                out.push(fp);
                n += 1;
            }
        }
    }
    if want(FingerprintKind::Url) {
        let mut domains: Vec<String> = Vec::new();
        for u in urls {
            let d = url_domain(&u.host);
            if !d.is_empty() && !domains.contains(&d) {
                domains.push(d);
                if domains.len() == MAX_URL_DOMAINS {
                    break;
                }
            }
        }
        out.extend(domains.iter().map(|d| Fingerprint {
            kind: FingerprintKind::Url,
            digest: digest(d.as_bytes()),
        }));
    }
    out
}

/// The [`BANDS`] band fingerprints of a word sequence.
fn bands(w: &[u64]) -> Vec<Fingerprint> {
    let mut min = [u64::MAX; HASHES];
    for tri in w.windows(3) {
        let s = mix(tri[0] ^ tri[1].rotate_left(21) ^ tri[2].rotate_left(42));
        for (j, m) in min.iter_mut().enumerate() {
            let v = mix(s ^ (j as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            if v < *m {
                *m = v;
            }
        }
    }
    min.chunks(ROWS)
        .enumerate()
        .map(|(b, rows)| Fingerprint {
            kind: FingerprintKind::Fuzzy,
            digest: rows
                .iter()
                .fold(mix(b as u64 + 1), |h, r| mix(h.rotate_left(13) ^ r)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fuzzy(text: &str) -> Vec<u64> {
        let mut w = Vec::new();
        words(text, &mut w);
        bands(&w).into_iter().map(|f| f.digest).collect()
    }

    fn shared(a: &[u64], b: &[u64]) -> usize {
        a.iter().zip(b).filter(|(x, y)| x == y).count()
    }

    const CAMPAIGN: [&str; 4] = [
        "Your mailbox storage is almost full and incoming messages will be held until you act.",
        "To keep receiving mail please confirm your account details on the secure portal today.",
        "Accounts that are not confirmed within forty eight hours will be suspended permanently.",
        "This is an automated message from the mail administration team, do not reply to it.",
    ];

    fn copy(greeting: &str, order: [usize; 4], signature: &str) -> String {
        let mut t = format!("{greeting}\n\n");
        for i in order {
            t.push_str(CAMPAIGN[i]);
            t.push_str("\n\n");
        }
        t.push_str(signature);
        t
    }

    #[test]
    fn varied_copies_share_bands_unrelated_text_does_not() {
        let a = fuzzy(&copy("Dear Alice,", [0, 1, 2, 3], "IT desk"));
        let b = fuzzy(&copy("Hello Bob Smith", [0, 1, 2, 3], "IT desk"));
        let c = fuzzy(&copy("Dear customer", [2, 0, 3, 1], "Mail admin 2024"));
        assert!(shared(&a, &b) >= 3, "changed greeting: {}", shared(&a, &b));
        assert!(
            shared(&a, &c) >= 1,
            "shuffled paragraphs: {}",
            shared(&a, &c)
        );
        let other = fuzzy(
            "The quarterly budget review meeting moves to Thursday at ten in the large room \
             on the second floor, please bring the draft figures and the updated forecast.",
        );
        assert_eq!(shared(&a, &other), 0);
    }

    #[test]
    fn text_digest_ignores_layout_case_and_numbers() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        words("Invoice 12345 is DUE, pay now!", &mut a);
        words("invoice   9 is due pay\r\nnow", &mut b);
        assert_eq!(a, b);
        assert_eq!(
            html_text("<p>Hello&nbsp;<b>world</b></p>")
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["Hello", "world"]
        );
        assert_eq!(url_domain("www.Evil.example."), "evil.example");
        assert_eq!(url_domain("login.bank.co.uk"), "bank.co.uk");
        assert_ne!(digest(b"abcdefgh1"), digest(b"abcdefgh2"));
    }
}

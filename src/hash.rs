//! FNV-1a, the one non-keyed hash of the house: short versions of config files and policies
//! (stable across builds and processes, shown in `/status`, logs and verdicts) and the keys of
//! the DNS name table (short, ours, lower-cased: hash flooding would need control of the config).

use std::hash::Hasher;

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0100_0000_01b3;

/// FNV-1a as a [`Hasher`] (for `HashMap<_, _, BuildHasherDefault<Fnv>>`).
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(OFFSET)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(PRIME);
        }
        self.0 = h;
    }
}

/// 12 hex digits of FNV-1a over `bytes`: a version label.
pub fn short_hex(bytes: &[u8]) -> String {
    let mut h = Fnv::default();
    h.write(bytes);
    format!("{:012x}", h.finish() >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_and_length() {
        // FNV-1a 64 of "" is the offset basis; of "a" the published 0xaf63dc4c8601ec8c.
        let mut h = Fnv::default();
        h.write(b"a");
        assert_eq!(h.finish(), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(short_hex(b""), format!("{:012x}", OFFSET >> 16));
        assert_eq!(short_hex(b"policy").len(), 12);
        assert_ne!(short_hex(b"a"), short_hex(b"b"));
    }
}

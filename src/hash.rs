//! FNV-1a, the one version hash of the house: short, stable labels for config files and
//! policies (the same across builds and processes), shown in `/status`, logs and verdicts. (The
//! DNS name table has its own word-at-a-time hasher in `dns/zone.rs`: it is on the query path.)

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0100_0000_01b3;

/// FNV-1a 64 of `bytes`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
}

/// 12 hex digits of FNV-1a over `bytes`: a version label.
pub fn short_hex(bytes: &[u8]) -> String {
    format!("{:012x}", fnv1a(bytes) >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_and_length() {
        // FNV-1a 64 of "" is the offset basis; of "a" the published 0xaf63dc4c8601ec8c.
        assert_eq!(fnv1a(b""), OFFSET);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(short_hex(b"policy").len(), 12);
        assert_ne!(short_hex(b"a"), short_hex(b"b"));
    }
}

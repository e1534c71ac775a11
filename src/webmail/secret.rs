//! Small security primitives the page needs: random tokens from the operating system's CSPRNG
//! (through rustls' ring provider, already in the build), constant-time comparison, and the
//! argon2 password check that costs the same whether or not the address exists.

use argon2::{Argon2, PasswordHasher, PasswordVerifier};

/// `n` random bytes as lower-case hex. Panics only if the OS has no entropy source at all.
pub fn token(n: usize) -> String {
    let mut buf = vec![0u8; n];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut buf)
        .expect("the operating system's random number generator works");
    hex(&buf)
}

pub fn hex(bytes: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(H[usize::from(b >> 4)] as char);
        s.push(H[usize::from(b & 15)] as char);
    }
    s
}

/// Equality whose time depends only on the lengths, not on where the inputs differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new argon2id hash (default parameters: 19 MiB, 2 passes) of `password`, as a PHC string.
pub fn hash_password(password: &str) -> Result<String, String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Checks `password` against `hash` (a PHC string). When there is no user, `dummy` — a hash
/// made at start with the same parameters as the configured users' — is checked instead, so
/// an unknown address takes as long as a wrong password. Blocking: run on a blocking thread.
pub fn verify(password: &str, hash: Option<&str>, dummy: &str) -> bool {
    let ok = Argon2::default()
        .verify_password(password.as_bytes(), hash.unwrap_or(dummy))
        .is_ok();
    ok && hash.is_some()
}

/// A hash with the parameters of `like` (a configured user's hash) for [`verify`] to burn time
/// on when the address is unknown. Falls back to the default parameters.
pub fn dummy_hash(like: Option<&str>) -> String {
    use argon2::password_hash::phc::PasswordHash;
    let salt = [7u8; 16];
    let params = like
        .and_then(|h| PasswordHash::new(h).ok())
        .and_then(|h| argon2::Params::try_from(&h).ok())
        .unwrap_or_default();
    let a = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    a.hash_password_with_salt(token(16).as_bytes(), &salt)
        .map(|h| h.to_string())
        .unwrap_or_else(|_| {
            "$argon2id$v=19$m=19456,t=2,p=1$BwcHBwcHBwcHBwcHBwcHBw$\
             AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
                .into()
        })
}

/// Standard base64 (with padding), for inline images.
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_hex_and_compare_in_constant_time() {
        let (a, b) = (token(16), token(16));
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert!(ct_eq(a.as_bytes(), a.clone().as_bytes()));
        assert!(!ct_eq(a.as_bytes(), b.as_bytes()));
        assert!(!ct_eq(b"a", b"ab"));
    }

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn passwords_verify_and_unknown_users_never_do() {
        let cheap = "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHRzYWx0$\
                     AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let dummy = dummy_hash(Some(cheap));
        assert!(dummy.contains("m=64,t=1,p=1"), "{dummy}");
        let a = Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            argon2::Params::new(64, 1, 1, None).unwrap(),
        );
        let h = a
            .hash_password_with_salt(b"correct horse", b"0123456789abcdef")
            .unwrap()
            .to_string();
        assert!(verify("correct horse", Some(&h), &dummy));
        assert!(!verify("wrong", Some(&h), &dummy));
        assert!(!verify("anything", None, &dummy));
    }
}

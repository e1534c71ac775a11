//! PROXY protocol (v1 and v2) between edges and engines, with our TLVs. The edge writes it
//! ([`encode`]); the engine reads it ([`read`]) only from trusted networks.
//!
//! Our custom TLVs use the range the spec reserves for applications (0xE0–0xEF):
//!
//! | type | value |
//! |---|---|
//! | `0xE0` | session id (ASCII), the same in edge and engine logs |
//! | `0xE1` | tenant id (ASCII) the edge routed for |
//! | `0xE2` | client country, ISO 3166-1 alpha-2 |
//!
//! Client TLS uses the standard `PP2_TYPE_SSL` (0x20) with version and cipher sub-TLVs.

use std::borrow::Cow;
use std::net::SocketAddr;

use proxy_header::{ParseConfig, ProxiedAddress, ProxyHeader, SslInfo, Tlv};

pub const TLV_SESSION_ID: u8 = 0xE0;
pub const TLV_TENANT: u8 = 0xE1;
pub const TLV_COUNTRY: u8 = 0xE2;

/// The v2 signature; a v1 header starts with `PROXY `.
pub const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Largest header we accept (v2 length field allows 64 KiB; ours are far smaller).
pub const MAX_HEADER: usize = 4096;

/// What a PROXY header told us.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyInfo {
    /// `None` for a LOCAL header (health checks from the proxy itself).
    pub client: Option<SocketAddr>,
    pub destination: Option<SocketAddr>,
    pub session_id: Option<String>,
    pub tenant: Option<String>,
    pub country: Option<String>,
    /// Client TLS version and cipher when the client used TLS to the proxy.
    pub tls: Option<(String, String)>,
}

/// Is `buf` (the first bytes of a connection) possibly a PROXY header? `None`: need more bytes.
pub fn looks_like_proxy(buf: &[u8]) -> Option<bool> {
    let v1 = b"PROXY ";
    let n = buf.len().min(12);
    if buf[..n.min(6)] == v1[..n.min(6)] && n >= 6 {
        return Some(true);
    }
    if buf[..n] == V2_SIGNATURE[..n] {
        return if n == 12 { Some(true) } else { None };
    }
    if n < 6 && buf[..n] == v1[..n] {
        return None;
    }
    Some(false)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyError {
    #[error("incomplete PROXY header")]
    Incomplete,
    #[error("invalid PROXY header: {0}")]
    Invalid(String),
}

/// Parses a header at the start of `buf`: the info and the number of bytes it took.
pub fn parse(buf: &[u8]) -> Result<(ProxyInfo, usize), ProxyError> {
    match ProxyHeader::parse(buf, ParseConfig::default()) {
        Ok((h, used)) => Ok((info(&h), used)),
        Err(proxy_header::Error::BufferTooShort) if buf.len() < MAX_HEADER => {
            Err(ProxyError::Incomplete)
        }
        Err(e) => Err(ProxyError::Invalid(e.to_string())),
    }
}

fn ascii(v: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(v).ok()?;
    (!s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| s.to_owned())
}

fn info(h: &ProxyHeader<'_>) -> ProxyInfo {
    let mut out = ProxyInfo {
        client: h.proxied_address().map(|a| a.source),
        destination: h.proxied_address().map(|a| a.destination),
        ..ProxyInfo::default()
    };
    for tlv in h.tlvs().flatten() {
        match tlv {
            Tlv::Custom(TLV_SESSION_ID, v) => out.session_id = ascii(&v),
            Tlv::Custom(TLV_TENANT, v) => out.tenant = ascii(&v),
            Tlv::Custom(TLV_COUNTRY, v) => out.country = ascii(&v).filter(|c| c.len() == 2),
            Tlv::Ssl(ssl) if ssl.client_ssl() => {
                out.tls = Some((
                    ssl.version().unwrap_or("TLS").to_owned(),
                    ssl.cipher().unwrap_or("").to_owned(),
                ))
            }
            _ => {}
        }
    }
    out
}

/// Which header to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// Encodes a header for `info` (a LOCAL header when `info.client` is `None`). v1 carries only
/// addresses.
pub fn encode(info: &ProxyInfo, version: Version, out: &mut Vec<u8>) {
    let mut header = match (info.client, info.destination) {
        (Some(src), Some(dst)) if src.is_ipv4() == dst.is_ipv4() => {
            ProxyHeader::with_address(ProxiedAddress::stream(src, dst))
        }
        (Some(src), _) => {
            let unspecified: SocketAddr = if src.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            ProxyHeader::with_address(ProxiedAddress::stream(src, unspecified))
        }
        _ => ProxyHeader::with_local(),
    };
    if version == Version::V1 {
        let _ = header.encode_v1(out);
        return;
    }
    let custom = [
        (TLV_SESSION_ID, &info.session_id),
        (TLV_TENANT, &info.tenant),
        (TLV_COUNTRY, &info.country),
    ];
    for (kind, value) in custom {
        if let Some(v) = value {
            header.append_tlv(Tlv::Custom(kind, Cow::Borrowed(v.as_bytes())));
        }
    }
    if let Some((version, cipher)) = &info.tls {
        let mut ssl = SslInfo::new(true, false, false, 0);
        ssl.append_tlv(Tlv::SslVersion(Cow::Borrowed(version)));
        if !cipher.is_empty() {
            ssl.append_tlv(Tlv::SslCipher(Cow::Borrowed(cipher)));
        }
        header.append_tlv(Tlv::Ssl(ssl));
    }
    let _ = header.encode_v2(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_round_trip_with_our_tlvs() {
        let info = ProxyInfo {
            client: Some("81.2.69.160:40000".parse().unwrap()),
            destination: Some("127.0.0.1:2601".parse().unwrap()),
            session_id: Some("s-1234".into()),
            tenant: Some("acme".into()),
            country: Some("GB".into()),
            tls: Some(("TLSv1.3".into(), "TLS13_AES_128_GCM_SHA256".into())),
        };
        let mut buf = Vec::new();
        encode(&info, Version::V2, &mut buf);
        assert_eq!(looks_like_proxy(&buf), Some(true));
        buf.extend_from_slice(b"EHLO x\r\n");
        let (got, used) = parse(&buf).unwrap();
        assert_eq!(got, info);
        assert_eq!(&buf[used..], b"EHLO x\r\n");
    }

    #[test]
    fn v1_local_and_garbage() {
        let mut buf = Vec::new();
        let info = ProxyInfo {
            client: Some("[2001:db8::1]:1234".parse().unwrap()),
            destination: Some("[::1]:25".parse().unwrap()),
            ..ProxyInfo::default()
        };
        encode(&info, Version::V1, &mut buf);
        assert!(buf.starts_with(b"PROXY TCP6 2001:db8::1 ::1 1234 25\r\n"));
        assert_eq!(parse(&buf).unwrap().0.client, info.client);

        let mut local = Vec::new();
        encode(&ProxyInfo::default(), Version::V2, &mut local);
        assert_eq!(parse(&local).unwrap().0.client, None);

        assert_eq!(parse(&local[..10]), Err(ProxyError::Incomplete));
        assert!(matches!(
            parse(b"PROXY TCP4 not an address\r\n"),
            Err(ProxyError::Invalid(_))
        ));
        assert_eq!(looks_like_proxy(b"EHLO"), Some(false));
        assert_eq!(looks_like_proxy(b"PRO"), None);
        assert_eq!(looks_like_proxy(b"\r\n\r\n"), None);
        assert_eq!(looks_like_proxy(b"\r\nXX"), Some(false));
    }
}

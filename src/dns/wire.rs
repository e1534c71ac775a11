//! The request side of the DNS wire format, sans I/O and without allocating: one pass over a
//! datagram or TCP message yields the header fields, the question (lower-cased into a buffer the
//! caller owns) and the EDNS0 options we act on (payload size, version, client subnet, NSID).
//!
//! Everything is bounds-checked against the message; every loop advances by at least one byte
//! of it, so work is linear in its length. Compression pointers are not followed: the question
//! name may not use them (nothing precedes it that it could point to), and names of other
//! records are only skipped, which ends at the first pointer. Loops are therefore impossible.
//!
//! Malformed input maps to what RFC 1035/6891/7871 ask for: too short for a header, or a
//! response, is dropped; an opcode other than QUERY gets NOTIMP; anything else broken gets
//! FORMERR, with the question echoed when it parsed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// DNS header length.
pub const HEADER_LEN: usize = 12;
/// Longest name in wire form (RFC 1035 2.3.4).
pub const MAX_NAME: usize = 255;

/// Response codes (RFC 1035 4.1.1, RFC 6891 9 for BADVERS).
pub mod rcode {
    pub const NOERROR: u8 = 0;
    pub const FORMERR: u8 = 1;
    pub const NXDOMAIN: u8 = 3;
    pub const NOTIMP: u8 = 4;
    pub const REFUSED: u8 = 5;
    pub const BADVERS: u8 = 16;
}

/// EDNS option codes we read.
const OPT_NSID: u16 = 3;
const OPT_ECS: u16 = 8;

/// An EDNS Client Subnet option from a query (RFC 7871 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ecs {
    /// 1 = IPv4, 2 = IPv6.
    pub family: u16,
    pub source: u8,
    /// The address, zero beyond `source` bits.
    pub addr: IpAddr,
    /// The address octets as sent (`ceil(source / 8)` of them), echoed in the answer.
    pub raw: [u8; 16],
    pub raw_len: u8,
}

/// The EDNS0 OPT record of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    /// Requestor's UDP payload size (values under 512 count as 512).
    pub payload: u16,
    pub version: u8,
    pub ecs: Option<Ecs>,
    /// NSID requested.
    pub nsid: bool,
}

/// A well-formed query.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub id: u16,
    /// The header's flags word (QR, opcode, AA, TC, RD, RA, Z, AD, CD, RCODE).
    pub flags: u16,
    /// The question exactly as sent (name, type, class), echoed in the answer.
    pub question: &'a [u8],
    /// Length of the question name in wire form.
    pub name_len: usize,
    pub qtype: u16,
    pub qclass: u16,
    pub edns: Option<Edns>,
}

/// A message we will not answer normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad<'a> {
    /// Too short for a header, or a response: silently dropped (answering responses invites
    /// loops and reflection).
    Drop,
    /// Answer with this rcode, the question if it parsed, and an OPT record if the query had one.
    Reply {
        id: u16,
        flags: u16,
        rcode: u8,
        question: Option<&'a [u8]>,
        edns: Option<Edns>,
    },
}

fn u16_at(m: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*m.get(at)?, *m.get(at + 1)?]))
}

/// Parses a query. `name` receives the question name in lower case (`&name[..name_len]`).
pub fn parse<'a>(msg: &'a [u8], name: &mut [u8; MAX_NAME]) -> Result<Request<'a>, Bad<'a>> {
    if msg.len() < HEADER_LEN {
        return Err(Bad::Drop);
    }
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    if flags & 0x8000 != 0 {
        return Err(Bad::Drop);
    }
    let count = |i: usize| u16::from_be_bytes([msg[4 + 2 * i], msg[5 + 2 * i]]);
    let (qd, an, ns, ar) = (count(0), count(1), count(2), count(3));
    let reply = |rcode, question, edns| Bad::Reply {
        id,
        flags,
        rcode,
        question,
        edns,
    };
    let opcode = (flags >> 11) & 0xF;
    if qd != 1 {
        let rcode = if opcode != 0 {
            rcode::NOTIMP
        } else {
            rcode::FORMERR
        };
        return Err(reply(rcode, None, None));
    }
    let Some(name_len) = question_name(msg, name) else {
        return Err(reply(rcode::FORMERR, None, None));
    };
    let qend = HEADER_LEN + name_len + 4;
    if msg.len() < qend {
        return Err(reply(rcode::FORMERR, None, None));
    }
    let question = &msg[HEADER_LEN..qend];
    if opcode != 0 {
        return Err(reply(rcode::NOTIMP, Some(question), None));
    }
    let qtype = u16::from_be_bytes([question[name_len], question[name_len + 1]]);
    let qclass = u16::from_be_bytes([question[name_len + 2], question[name_len + 3]]);

    let mut pos = qend;
    for _ in 0..u32::from(an) + u32::from(ns) {
        pos = skip_record(msg, pos).ok_or(reply(rcode::FORMERR, Some(question), None))?;
    }
    let mut edns: Option<Edns> = None;
    for _ in 0..ar {
        let owner = pos;
        let after_name = skip_name(msg, pos).ok_or(reply(rcode::FORMERR, Some(question), edns))?;
        let rtype = u16_at(msg, after_name).ok_or(reply(rcode::FORMERR, Some(question), edns))?;
        if rtype != 41 {
            pos = skip_record(msg, pos).ok_or(reply(rcode::FORMERR, Some(question), edns))?;
            continue;
        }
        // OPT: only one, owned by the root (RFC 6891 6.1.1).
        if edns.is_some() || after_name != owner + 1 || msg[owner] != 0 {
            return Err(reply(rcode::FORMERR, Some(question), edns));
        }
        let (e, next) = opt_record(msg, after_name).ok_or(reply(
            rcode::FORMERR,
            Some(question),
            Some(Edns {
                payload: 512,
                version: 0,
                ecs: None,
                nsid: false,
            }),
        ))?;
        edns = Some(e);
        pos = next;
    }
    Ok(Request {
        id,
        flags,
        question,
        name_len,
        qtype,
        qclass,
        edns,
    })
}

/// Reads the uncompressed question name at offset 12, lower-casing it into `out`; returns its
/// wire length.
fn question_name(msg: &[u8], out: &mut [u8; MAX_NAME]) -> Option<usize> {
    let mut pos = HEADER_LEN;
    let mut len = 0;
    loop {
        let l = usize::from(*msg.get(pos)?);
        if l & 0xC0 != 0 {
            return None; // pointer or obsolete label type
        }
        if len + 1 + l > MAX_NAME {
            return None;
        }
        out[len] = l as u8;
        if l == 0 {
            return Some(len + 1);
        }
        let label = msg.get(pos + 1..pos + 1 + l)?;
        for (o, b) in out[len + 1..len + 1 + l].iter_mut().zip(label) {
            *o = b.to_ascii_lowercase();
        }
        len += 1 + l;
        pos += 1 + l;
    }
}

/// Skips a name: labels up to the root label or a compression pointer (not followed).
fn skip_name(msg: &[u8], mut pos: usize) -> Option<usize> {
    let start = pos;
    loop {
        let l = *msg.get(pos)?;
        match l & 0xC0 {
            0x00 if l == 0 => return Some(pos + 1),
            0x00 => pos += 1 + usize::from(l),
            0xC0 => {
                msg.get(pos + 1)?;
                return Some(pos + 2);
            }
            _ => return None,
        }
        if pos - start > MAX_NAME {
            return None;
        }
    }
}

/// Skips a whole resource record.
fn skip_record(msg: &[u8], pos: usize) -> Option<usize> {
    let p = skip_name(msg, pos)?;
    let rdlen = usize::from(u16_at(msg, p + 8)?);
    let end = p + 10 + rdlen;
    (end <= msg.len()).then_some(end)
}

/// Reads an OPT record from its type field on; returns it and the offset after it.
fn opt_record(msg: &[u8], p: usize) -> Option<(Edns, usize)> {
    let payload = u16_at(msg, p + 2)?.max(512);
    let version = *msg.get(p + 5)?;
    let rdlen = usize::from(u16_at(msg, p + 8)?);
    let start = p + 10;
    let end = start + rdlen;
    let data = msg.get(start..end)?;
    let mut e = Edns {
        payload,
        version,
        ecs: None,
        nsid: false,
    };
    let mut at = 0;
    while at < data.len() {
        let code = u16_at(data, at)?;
        let len = usize::from(u16_at(data, at + 2)?);
        let value = data.get(at + 4..at + 4 + len)?;
        match code {
            OPT_ECS if e.ecs.is_some() => return None,
            OPT_ECS => e.ecs = Some(client_subnet(value)?),
            OPT_NSID => e.nsid = true,
            _ => {}
        }
        at += 4 + len;
    }
    Some((e, end))
}

/// An ECS option's value; `None` when RFC 7871 6 says FORMERR.
fn client_subnet(v: &[u8]) -> Option<Ecs> {
    let family = u16_at(v, 0)?;
    let source = *v.get(2)?;
    let addr = v.get(4..)?;
    let max = match family {
        1 => 32,
        2 => 128,
        _ => return None,
    };
    if source > max || addr.len() != usize::from(source).div_ceil(8) {
        return None;
    }
    if let Some(&last) = addr.last() {
        let used = source % 8;
        if used != 0 && last & (0xFF >> used) != 0 {
            return None; // bits set beyond the source prefix
        }
    }
    let mut raw = [0u8; 16];
    raw[..addr.len()].copy_from_slice(addr);
    let ip = if family == 1 {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(raw))
    };
    Some(Ecs {
        family,
        source,
        addr: ip,
        raw,
        raw_len: addr.len() as u8,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `name` (dotted) type `qtype`, with the given additional-section bytes.
    pub(crate) fn query(name: &str, qtype: u16, additional: &[&[u8]]) -> Vec<u8> {
        let mut m = vec![
            0x12,
            0x34,
            0x01,
            0x00,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            additional.len() as u8,
        ];
        for l in name.split('.').filter(|l| !l.is_empty()) {
            m.push(l.len() as u8);
            m.extend(l.bytes());
        }
        m.push(0);
        m.extend(qtype.to_be_bytes());
        m.extend([0, 1]);
        for a in additional {
            m.extend(*a);
        }
        m
    }

    fn opt(options: &[u8]) -> Vec<u8> {
        let mut o = vec![0, 0, 41, 0x04, 0xD0, 0, 0, 0, 0];
        o.extend((options.len() as u16).to_be_bytes());
        o.extend(options);
        o
    }

    fn ecs(family: u16, source: u8, addr: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 8];
        v.extend(((4 + addr.len()) as u16).to_be_bytes());
        v.extend(family.to_be_bytes());
        v.extend([source, 0]);
        v.extend(addr);
        v
    }

    fn formerr(msg: &[u8]) -> bool {
        let mut n = [0; MAX_NAME];
        matches!(
            parse(msg, &mut n),
            Err(Bad::Reply {
                rcode: rcode::FORMERR,
                ..
            })
        )
    }

    #[test]
    fn a_plain_query_parses_and_lowercases() {
        let m = query("MX.In.Example.NET", 1, &[]);
        let mut n = [0; MAX_NAME];
        let r = parse(&m, &mut n).unwrap();
        assert_eq!((r.id, r.qtype, r.qclass, r.edns), (0x1234, 1, 1, None));
        assert_eq!(&n[..r.name_len], b"\x02mx\x02in\x07example\x03net\x00");
        assert_eq!(&r.question[1..3], b"MX", "the question is kept as sent");
    }

    #[test]
    fn edns_and_client_subnet() {
        let o = opt(&ecs(1, 24, &[81, 2, 69]));
        let m = query("mx.in.example.net", 1, &[&o]);
        let mut n = [0; MAX_NAME];
        let e = parse(&m, &mut n).unwrap().edns.unwrap();
        assert_eq!(e.payload, 1232);
        let c = e.ecs.unwrap();
        assert_eq!((c.source, c.addr), (24, "81.2.69.0".parse().unwrap()));
        let v6 = opt(&ecs(2, 56, &[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0x01]));
        let c = parse(&query("a.b", 1, &[&v6]), &mut n)
            .unwrap()
            .edns
            .unwrap()
            .ecs
            .unwrap();
        assert_eq!(c.addr, "2001:db8:0:100::".parse::<IpAddr>().unwrap());
        // Source 0: no address octets.
        let zero = opt(&ecs(1, 0, &[]));
        assert!(parse(&query("a.b", 1, &[&zero]), &mut n).is_ok());
    }

    #[test]
    fn malformed_client_subnets_are_formerr() {
        for bad in [
            ecs(1, 24, &[81, 2]),         // too few octets
            ecs(1, 24, &[81, 2, 69, 1]),  // too many
            ecs(1, 23, &[81, 2, 69]),     // bit 24 set beyond /23
            ecs(1, 33, &[1, 2, 3, 4, 5]), // prefix too long
            ecs(3, 8, &[1]),              // unknown family
        ] {
            assert!(formerr(&query("a.b", 1, &[&opt(&bad)])), "{bad:?}");
        }
        let two = [ecs(1, 8, &[1]), ecs(1, 8, &[2])].concat();
        assert!(formerr(&query("a.b", 1, &[&opt(&two)])), "two ECS options");
    }

    #[test]
    fn garbage_is_dropped_or_formerr() {
        let mut n = [0; MAX_NAME];
        assert_eq!(parse(&[0; 11], &mut n).unwrap_err(), Bad::Drop);
        let mut resp = query("a.b", 1, &[]);
        resp[2] |= 0x80;
        assert_eq!(
            parse(&resp, &mut n).unwrap_err(),
            Bad::Drop,
            "responses are not answered"
        );
        let mut m = query("a.b", 1, &[]);
        m.truncate(m.len() - 2);
        assert!(formerr(&m), "truncated question");
        // A compression pointer in the question (a loop onto itself).
        let mut ptr = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 12];
        ptr.extend([0, 1, 0, 1]);
        assert!(formerr(&ptr));
        // A label running past the end.
        assert!(formerr(&[0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 63, b'a']));
        // A name longer than 255.
        let long = ["abcdefghij"; 30].join(".");
        assert!(formerr(&query(&long, 1, &[])));
        // Two OPT records; OPT not owned by the root; OPT rdata past the end.
        assert!(formerr(&query("a.b", 1, &[&opt(&[]), &opt(&[])])));
        let mut named = opt(&[]);
        named.splice(0..1, [1, b'x', 0]);
        assert!(formerr(&query("a.b", 1, &[&named])));
        let mut short = opt(&[]);
        short[10] = 9;
        assert!(formerr(&query("a.b", 1, &[&short])));
        // Counts promising records that are not there.
        let mut m = query("a.b", 1, &[]);
        m[7] = 3;
        assert!(formerr(&m));
    }

    #[test]
    fn other_opcodes_are_notimp_and_qdcount_must_be_one() {
        let mut n = [0; MAX_NAME];
        let mut m = query("a.b", 1, &[]);
        m[2] = 0x28; // UPDATE
        assert!(matches!(
            parse(&m, &mut n),
            Err(Bad::Reply {
                rcode: rcode::NOTIMP,
                question: Some(_),
                ..
            })
        ));
        let mut m = query("a.b", 1, &[]);
        m[5] = 2;
        assert!(formerr(&m));
    }

    #[test]
    fn other_additional_records_are_skipped() {
        // A TSIG-like record with a compressed owner name, then OPT.
        let mut other = vec![0xC0, 12, 0, 250, 0, 255, 0, 0, 0, 0, 0, 2, 1, 2];
        other.extend(opt(&[0, 3, 0, 0]));
        let m = query("a.b", 1, &[&other]);
        let mut m2 = m.clone();
        m2[11] = 2;
        let mut n = [0; MAX_NAME];
        let e = parse(&m2, &mut n).unwrap().edns.unwrap();
        assert!(e.nsid);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut n = [0; MAX_NAME];
        let base = query("mx.in.example.net", 1, &[&opt(&ecs(1, 24, &[81, 2, 69]))]);
        for i in 0..20_000 {
            let msg: Vec<u8> = if i % 2 == 0 {
                (0..rng.usize(0..600)).map(|_| rng.u8(..)).collect()
            } else {
                let mut m = base.clone();
                for _ in 0..rng.usize(1..6) {
                    let at = rng.usize(0..m.len());
                    m[at] = rng.u8(..);
                }
                m.truncate(rng.usize(0..=m.len()));
                m
            };
            let _ = parse(&msg, &mut n);
        }
    }
}

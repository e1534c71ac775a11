//! The request side of the DNS wire format, sans I/O and without allocating: one pass over a
//! datagram or TCP message yields the header fields, the question (lower-cased into a buffer the
//! caller owns) and the EDNS0 options we act on (payload size, version, client subnet, NSID).
//!
//! Everything is bounds-checked against the message; every loop advances by at least one byte
//! of it, so work is linear in its length. Compression pointers are not followed: the question
//! name may not use them (nothing precedes it that it could point to), and names of other
//! records are only skipped, which ends at the first pointer. Loops are therefore impossible.
//!
//! Malformed input maps to what RFC 1035/6891/7871/8906 ask for (see [`parse`]): too short for
//! a header, or a response, is dropped; an EDNS version above 0 gets BADVERS; an opcode other
//! than QUERY gets NOTIMP; anything else broken gets FORMERR, with the first question echoed
//! when it parsed and the query's OPT record answered whenever it could be found.

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
/// The DO bit of the OPT record's flags (RFC 3225).
const FLAG_DO: u16 = 0x8000;

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
    /// DNSSEC OK (RFC 3225 3): copied into the answer's OPT record.
    pub dnssec_ok: bool,
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
    /// Only version 0 gets this far (others are BADVERS).
    pub edns: Option<Edns>,
}

/// A message we will not answer normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad<'a> {
    /// Too short for a header, or a response: silently dropped (answering responses invites
    /// loops and reflection).
    Drop,
    /// Answer with this rcode (BADVERS included), the first question if it parsed, and an OPT
    /// record when the query had one (RFC 6891 7: errors included).
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
///
/// Like gdnsd, the whole message is walked before the opcode and the question count are
/// judged, so that every reply that can carry the query's OPT record does: the first question,
/// further questions, the answer and authority records, then the additional records with the
/// OPT among them. In order: no header or QR set: dropped; a broken record before the OPT:
/// FORMERR without OPT; an OPT of a version above 0: BADVERS (its options are not read, their
/// meaning is that version's); a broken OPT or option: FORMERR with a plain OPT; an opcode
/// other than QUERY: NOTIMP; a question count other than 1: FORMERR.
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
    let mut pos = HEADER_LEN;
    let mut first = None;
    if qd > 0 {
        let name_len = question_name(msg, name).ok_or_else(|| reply(rcode::FORMERR, None, None))?;
        let qend = HEADER_LEN + name_len + 4;
        let question = msg
            .get(HEADER_LEN..qend)
            .ok_or_else(|| reply(rcode::FORMERR, None, None))?;
        first = Some((question, name_len));
        pos = qend;
    }
    let question = first.map(|(q, _)| q);
    let formerr = |edns| reply(rcode::FORMERR, question, edns);
    for _ in 1..qd {
        pos = skip_name(msg, pos)
            .map(|p| p + 4)
            .filter(|&p| p <= msg.len())
            .ok_or_else(|| formerr(None))?;
    }
    for _ in 0..u32::from(an) + u32::from(ns) {
        pos = skip_record(msg, pos).ok_or_else(|| formerr(None))?;
    }
    let mut edns: Option<Edns> = None;
    for _ in 0..ar {
        let owner = pos;
        let after_name = skip_name(msg, pos).ok_or_else(|| formerr(edns))?;
        let rtype = u16_at(msg, after_name).ok_or_else(|| formerr(edns))?;
        if rtype != 41 {
            pos = skip_record(msg, pos).ok_or_else(|| formerr(edns))?;
            continue;
        }
        // OPT: only one, owned by the root (RFC 6891 6.1.1).
        if edns.is_some() || after_name != owner + 1 || msg[owner] != 0 {
            return Err(formerr(edns));
        }
        let (e, start, end) = opt_header(msg, after_name).ok_or_else(|| formerr(None))?;
        if e.version > 0 {
            return Err(reply(rcode::BADVERS, question, Some(e)));
        }
        let data = msg.get(start..end).ok_or_else(|| formerr(Some(e)))?;
        edns = Some(opt_options(data, e).ok_or_else(|| formerr(Some(e)))?);
        pos = end;
    }
    let opcode = (flags >> 11) & 0xF;
    if opcode != 0 {
        return Err(reply(rcode::NOTIMP, question, edns));
    }
    let Some((question, name_len)) = first.filter(|_| qd == 1) else {
        return Err(formerr(edns));
    };
    let qtype = u16::from_be_bytes([question[name_len], question[name_len + 1]]);
    let qclass = u16::from_be_bytes([question[name_len + 2], question[name_len + 3]]);
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

/// Reads an OPT record's fixed part from its type field on: the EDNS values (no options yet)
/// and where its options start and end (the end is not checked against the message).
fn opt_header(msg: &[u8], p: usize) -> Option<(Edns, usize, usize)> {
    let payload = u16_at(msg, p + 2)?.max(512);
    let version = *msg.get(p + 5)?;
    let flags = u16_at(msg, p + 6)?;
    let rdlen = usize::from(u16_at(msg, p + 8)?);
    let e = Edns {
        payload,
        version,
        dnssec_ok: flags & FLAG_DO != 0,
        ecs: None,
        nsid: false,
    };
    Some((e, p + 10, p + 10 + rdlen))
}

/// Reads a version-0 OPT record's options into `e`; `None` when they are malformed. Unknown
/// options are skipped (RFC 6891 6.1.2).
fn opt_options(data: &[u8], mut e: Edns) -> Option<Edns> {
    let mut at = 0;
    while at < data.len() {
        let code = u16_at(data, at)?;
        let len = usize::from(u16_at(data, at + 2)?);
        let value = data.get(at + 4..at + 4 + len)?;
        match code {
            OPT_ECS if e.ecs.is_some() => return None,
            OPT_ECS => e.ecs = Some(client_subnet(value)?),
            // RFC 5001 2.1: a query's NSID option is empty (gdnsd answers FORMERR too).
            OPT_NSID if !value.is_empty() => return None,
            OPT_NSID => e.nsid = true,
            _ => {}
        }
        at += 4 + len;
    }
    Some(e)
}

/// An ECS option's value; `None` when RFC 7871 6 says FORMERR.
fn client_subnet(v: &[u8]) -> Option<Ecs> {
    let family = u16_at(v, 0)?;
    let source = *v.get(2)?;
    if *v.get(3)? != 0 {
        return None; // the scope is the server's to set (RFC 7871 6: 0 in queries)
    }
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

    /// RFC 6891 7: the OPT record is found for error answers too, and a version above 0 is
    /// BADVERS whatever its options hold.
    #[test]
    fn errors_keep_the_opt_record_and_newer_versions_are_badvers() {
        let mut n = [0; MAX_NAME];
        let mut m = query("a.b", 1, &[&opt(&[])]);
        m[2] = 0x28; // UPDATE
        let Err(Bad::Reply { rcode, edns, .. }) = parse(&m, &mut n) else {
            panic!("not an error reply")
        };
        assert_eq!((rcode, edns.map(|e| e.version)), (rcode::NOTIMP, Some(0)));
        // No question, DO set: FORMERR with the OPT record and its DO bit.
        let mut o = opt(&[]);
        o[7] = 0x80;
        let mut m = query("a.b", 1, &[&o]);
        m.drain(12..12 + 9); // the question "a.b" A IN
        m[5] = 0;
        let Err(Bad::Reply {
            rcode,
            edns,
            question,
            ..
        }) = parse(&m, &mut n)
        else {
            panic!("not an error reply")
        };
        assert_eq!((rcode, question), (rcode::FORMERR, None));
        assert!(edns.is_some_and(|e| e.dnssec_ok));
        let mut v1 = opt(&ecs(9, 99, &[1]));
        v1[6] = 1;
        assert!(matches!(
            parse(&query("a.b", 1, &[&v1]), &mut n),
            Err(Bad::Reply {
                rcode: rcode::BADVERS,
                ..
            })
        ));
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

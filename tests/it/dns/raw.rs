//! The conformance tests' two tools, after gdnsd's `t/`: queries built byte by byte (so they can
//! be as broken as a test needs: lying counts, truncated names, odd OPT records), and answers
//! rendered whole as text — every header bit, every section, the OPT record field by field — so
//! a test states the entire answer a resolver would see and any stray bit or record fails it.
//!
//! Rendering walks the message by its header counts and fails on anything left over or
//! missing, so the counts are checked too. Records other than OPT are decoded by hickory-proto
//! (compression pointers included); the OPT record is read by hand, because what matters in it
//! (extended rcode, version, each flag, each option as sent) is what a decoder would normalise.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use hickory_proto::op::Query as HQuery;
use hickory_proto::rr::{Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

/// Record types the tests ask for.
pub(super) mod t {
    pub const A: u16 = 1;
    pub const NS: u16 = 2;
    pub const SOA: u16 = 6;
    pub const MX: u16 = 15;
    pub const TXT: u16 = 16;
    pub const AAAA: u16 = 28;
    pub const KEY: u16 = 25;
    pub const OPT: u16 = 41;
    pub const IXFR: u16 = 251;
    pub const AXFR: u16 = 252;
    pub const ANY: u16 = 255;
    pub const CAA: u16 = 257;
}

/// Header flag bits (RFC 1035 4.1.1, RFC 4035 for AD/CD).
pub(super) mod flag {
    pub const AA: u16 = 0x0400;
    pub const TC: u16 = 0x0200;
    pub const RD: u16 = 0x0100;
    pub const RA: u16 = 0x0080;
    pub const Z: u16 = 0x0040;
    pub const AD: u16 = 0x0020;
    pub const CD: u16 = 0x0010;
}

/// A name in wire form, uncompressed (`"."` is the root).
pub(super) fn name(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for l in text.split('.').filter(|l| !l.is_empty()) {
        out.push(l.len() as u8);
        out.extend(l.bytes());
    }
    out.push(0);
    out
}

/// A question entry: name, type, class.
pub(super) fn question(n: &str, qtype: u16, class: u16) -> Vec<u8> {
    let mut q = name(n);
    q.extend(qtype.to_be_bytes());
    q.extend(class.to_be_bytes());
    q
}

/// An A record owned by `owner`, as a query may carry one in any section.
pub(super) fn a_record(owner: &str, ip: [u8; 4]) -> Vec<u8> {
    let mut r = name(owner);
    r.extend([0, 1, 0, 1, 0, 0, 0, 255, 0, 4]);
    r.extend(ip);
    r
}

/// A query message; counts follow the sections unless set with [`Query::counts`].
#[derive(Clone)]
pub(super) struct Query {
    id: u16,
    flags: u16,
    questions: Vec<Vec<u8>>,
    sections: [Vec<Vec<u8>>; 3],
    counts: Option<[u16; 4]>,
    tail: Vec<u8>,
}

impl Query {
    /// `name` `qtype` IN, ID 0x1234 (4660), every flag clear.
    pub(super) fn new(n: &str, qtype: u16) -> Query {
        Query::empty().question(question(n, qtype, 1))
    }

    /// A header and nothing else.
    pub(super) fn empty() -> Query {
        Query {
            id: 0x1234,
            flags: 0,
            questions: Vec::new(),
            sections: [Vec::new(), Vec::new(), Vec::new()],
            counts: None,
            tail: Vec::new(),
        }
    }

    pub(super) fn id(mut self, id: u16) -> Query {
        self.id = id;
        self
    }
    /// Sets header bits (see [`flag`]).
    pub(super) fn flags(mut self, f: u16) -> Query {
        self.flags |= f;
        self
    }
    pub(super) fn opcode(mut self, op: u16) -> Query {
        self.flags = (self.flags & !0x7800) | (op << 11);
        self
    }
    /// The first question's class.
    pub(super) fn class(mut self, c: u16) -> Query {
        let q = &mut self.questions[0];
        let at = q.len() - 2;
        q[at..].copy_from_slice(&c.to_be_bytes());
        self
    }
    pub(super) fn question(mut self, q: Vec<u8>) -> Query {
        self.questions.push(q);
        self
    }
    pub(super) fn answer(mut self, rr: Vec<u8>) -> Query {
        self.sections[0].push(rr);
        self
    }
    pub(super) fn authority(mut self, rr: Vec<u8>) -> Query {
        self.sections[1].push(rr);
        self
    }
    pub(super) fn additional(mut self, rr: Vec<u8>) -> Query {
        self.sections[2].push(rr);
        self
    }
    pub(super) fn edns(self, opt: Opt) -> Query {
        self.additional(opt.bytes())
    }
    /// Header counts (QD, AN, NS, AR) that need not match what follows.
    pub(super) fn counts(mut self, c: [u16; 4]) -> Query {
        self.counts = Some(c);
        self
    }
    /// Bytes after everything else (not counted).
    pub(super) fn tail(mut self, b: &[u8]) -> Query {
        self.tail.extend_from_slice(b);
        self
    }

    pub(super) fn bytes(&self) -> Vec<u8> {
        let counts = self.counts.unwrap_or([
            self.questions.len() as u16,
            self.sections[0].len() as u16,
            self.sections[1].len() as u16,
            self.sections[2].len() as u16,
        ]);
        let mut m = Vec::new();
        m.extend(self.id.to_be_bytes());
        m.extend(self.flags.to_be_bytes());
        for c in counts {
            m.extend(c.to_be_bytes());
        }
        for q in &self.questions {
            m.extend(q);
        }
        for s in &self.sections {
            for rr in s {
                m.extend(rr);
            }
        }
        m.extend(&self.tail);
        m
    }
}

/// An OPT record for a query: payload 1232, version 0, no flags, no options.
#[derive(Clone)]
pub(super) struct Opt {
    payload: u16,
    ext_rcode: u8,
    version: u8,
    flags: u16,
    options: Vec<u8>,
    rdlen: Option<u16>,
}

impl Opt {
    pub(super) fn new() -> Opt {
        Opt {
            payload: 1232,
            ext_rcode: 0,
            version: 0,
            flags: 0,
            options: Vec::new(),
            rdlen: None,
        }
    }
    pub(super) fn payload(mut self, p: u16) -> Opt {
        self.payload = p;
        self
    }
    pub(super) fn version(mut self, v: u8) -> Opt {
        self.version = v;
        self
    }
    /// EDNS flags: 0x8000 is DO, the rest must be ignored by servers.
    pub(super) fn flags(mut self, f: u16) -> Opt {
        self.flags |= f;
        self
    }
    pub(super) fn option(mut self, code: u16, value: &[u8]) -> Opt {
        self.options.extend(code.to_be_bytes());
        self.options.extend((value.len() as u16).to_be_bytes());
        self.options.extend(value);
        self
    }
    /// Raw option bytes, as broken as wanted.
    pub(super) fn raw_options(mut self, b: &[u8]) -> Opt {
        self.options.extend_from_slice(b);
        self
    }
    /// An ECS option: family, source prefix, scope prefix, address octets as given.
    pub(super) fn ecs(self, family: u16, source: u8, scope: u8, addr: &[u8]) -> Opt {
        let mut v = family.to_be_bytes().to_vec();
        v.extend([source, scope]);
        v.extend(addr);
        self.option(8, &v)
    }
    /// RDLENGTH that need not match the options.
    pub(super) fn rdlen(mut self, n: u16) -> Opt {
        self.rdlen = Some(n);
        self
    }
    pub(super) fn bytes(&self) -> Vec<u8> {
        let mut o = vec![0];
        o.extend(t::OPT.to_be_bytes());
        o.extend(self.payload.to_be_bytes());
        o.extend([self.ext_rcode, self.version]);
        o.extend(self.flags.to_be_bytes());
        let rdlen = self.rdlen.unwrap_or(self.options.len() as u16);
        o.extend(rdlen.to_be_bytes());
        o.extend(&self.options);
        o
    }
}

/// Sends `q` over UDP from 127.0.0.1; the answer, or `None` after `wait`.
pub(super) fn udp(server: SocketAddr, q: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(wait)).unwrap();
    sock.send_to(q, server).unwrap();
    let mut buf = vec![0; 65535];
    let n = sock.recv(&mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

/// Sends `q` over a new TCP connection and reads one answer.
pub(super) fn tcp(server: SocketAddr, q: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(server).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend(q);
    s.write_all(&framed).unwrap();
    read_framed(&mut s).expect("an answer over TCP")
}

/// One length-prefixed message from `s`; `None` at end of stream or on a read error.
pub(super) fn read_framed(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0; 2];
    s.read_exact(&mut len).ok()?;
    let mut m = vec![0; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut m).ok()?;
    Some(m)
}

const OPCODES: [&str; 7] = ["QUERY", "IQUERY", "STATUS", "3", "NOTIFY", "UPDATE", "DSO"];
const RCODES: [&str; 6] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED",
];

/// The whole answer as text, one line per header, question, record and OPT record:
///
/// ```text
/// id=4660 opcode=QUERY rcode=NOERROR flags=qr,aa
/// QUESTION mx.in.example.net. IN A
/// ANSWER mx.in.example.net. 60 IN A 127.0.0.11
/// OPT payload=1232 version=0 flags=- ECS=81.2.69.0/24/25
/// ```
///
/// The rcode includes the OPT record's upper bits (16 is BADVERS). Panics on a message that
/// does not decode exactly as its counts say.
pub(super) fn render(m: &[u8]) -> String {
    try_render(m).unwrap_or_else(|e| panic!("malformed answer ({e}): {m:02x?}"))
}

fn try_render(m: &[u8]) -> Result<String, String> {
    if m.len() < 12 {
        return Err("shorter than a header".into());
    }
    let flags = u16::from_be_bytes([m[2], m[3]]);
    let count = |i: usize| u16::from_be_bytes([m[4 + 2 * i], m[5 + 2 * i]]);
    let mut lines = Vec::new();
    let mut d = BinDecoder::new(m);
    d.read_slice(12).map_err(|e| e.to_string())?;
    for _ in 0..count(0) {
        let q = HQuery::read(&mut d).map_err(|e| format!("question: {e}"))?;
        let qtype = match q.query_type() {
            RecordType::Unknown(n) => format!("TYPE{n}"),
            other => other.to_string(),
        };
        let class = match u16::from(q.query_class()) {
            1 => "IN".to_owned(),
            3 => "CH".to_owned(),
            4 => "HS".to_owned(),
            255 => "ANY".to_owned(),
            n => format!("CLASS{n}"),
        };
        lines.push(format!("QUESTION {} {class} {qtype}", q.name()));
    }
    let mut ext_rcode = 0u16;
    for (section, n) in [
        ("ANSWER", count(1)),
        ("AUTHORITY", count(2)),
        ("ADDITIONAL", count(3)),
    ] {
        for _ in 0..n {
            let at = d.index();
            if m.get(at) == Some(&0) && m.get(at + 1..at + 3) == Some(&[0, 41]) {
                if section != "ADDITIONAL" {
                    return Err(format!("OPT in the {section} section"));
                }
                let (line, ext, len) = render_opt(&m[at..])?;
                ext_rcode = u16::from(ext) << 4;
                lines.push(line);
                d.read_slice(len).map_err(|e| e.to_string())?;
                continue;
            }
            let r = Record::read(&mut d).map_err(|e| format!("{section}: {e}"))?;
            lines.push(format!("{section} {r}"));
        }
    }
    if d.index() != m.len() {
        return Err(format!(
            "{} bytes after the last record",
            m.len() - d.index()
        ));
    }
    let opcode = usize::from((flags >> 11) & 0xF);
    let rcode = (flags & 0xF) | ext_rcode;
    let rcode = match rcode {
        16 => "BADVERS".to_owned(),
        r => RCODES
            .get(usize::from(r))
            .map_or(r.to_string(), |s| (*s).to_owned()),
    };
    let names = [
        (0x8000, "qr"),
        (flag::AA, "aa"),
        (flag::TC, "tc"),
        (flag::RD, "rd"),
        (flag::RA, "ra"),
        (flag::Z, "z"),
        (flag::AD, "ad"),
        (flag::CD, "cd"),
    ];
    let set: Vec<&str> = names
        .iter()
        .filter(|(b, _)| flags & b != 0)
        .map(|(_, n)| *n)
        .collect();
    let header = format!(
        "id={} opcode={} rcode={rcode} flags={}",
        u16::from_be_bytes([m[0], m[1]]),
        OPCODES
            .get(opcode)
            .map_or(opcode.to_string(), |s| (*s).to_owned()),
        if set.is_empty() {
            "-".to_owned()
        } else {
            set.join(",")
        }
    );
    lines.insert(0, header);
    Ok(lines.join("\n"))
}

/// An OPT record (from its root owner on): its line, extended rcode bits and length.
fn render_opt(o: &[u8]) -> Result<(String, u8, usize), String> {
    let f = |i: usize| o.get(i).copied().ok_or("OPT cut short");
    let payload = u16::from_be_bytes([f(3)?, f(4)?]);
    let (ext, version) = (f(5)?, f(6)?);
    let flags = u16::from_be_bytes([f(7)?, f(8)?]);
    let rdlen = usize::from(u16::from_be_bytes([f(9)?, f(10)?]));
    let data = o.get(11..11 + rdlen).ok_or("OPT rdata cut short")?;
    let flag_text = match flags {
        0 => "-".to_owned(),
        0x8000 => "do".to_owned(),
        other => format!("{other:#06x}"),
    };
    let mut line = format!("OPT payload={payload} version={version} flags={flag_text}");
    let mut at = 0;
    while at < data.len() {
        let code = u16::from_be_bytes([data[at], *data.get(at + 1).ok_or("option")?]);
        let len = usize::from(u16::from_be_bytes([
            *data.get(at + 2).ok_or("option")?,
            *data.get(at + 3).ok_or("option")?,
        ]));
        let v = data.get(at + 4..at + 4 + len).ok_or("option cut short")?;
        line.push(' ');
        line.push_str(&render_option(code, v));
        at += 4 + len;
    }
    Ok((line, ext, 11 + rdlen))
}

fn render_option(code: u16, v: &[u8]) -> String {
    match code {
        3 => format!("NSID={:?}", String::from_utf8_lossy(v)),
        8 if v.len() >= 4 => {
            let family = u16::from_be_bytes([v[0], v[1]]);
            let mut addr = [0u8; 16];
            let raw = &v[4..];
            addr[..raw.len().min(16)].copy_from_slice(&raw[..raw.len().min(16)]);
            let ip = if family == 1 {
                std::net::Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]).to_string()
            } else {
                std::net::Ipv6Addr::from(addr).to_string()
            };
            format!("ECS={ip}/{}/{}", v[2], v[3])
        }
        _ => format!("option{code}={v:02x?}"),
    }
}

/// Asserts that `answer` renders as `expected` (indentation and blank lines ignored).
#[track_caller]
pub(super) fn assert_answer(answer: &[u8], expected: &str) {
    let want: Vec<&str> = expected
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let got = render(answer);
    assert_eq!(
        got.lines().collect::<Vec<_>>(),
        want,
        "\n--- got:\n{got}\n--- wanted:\n{}\n",
        want.join("\n")
    );
}

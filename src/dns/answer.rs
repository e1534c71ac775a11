//! Answering one query: parse, decide, copy pre-encoded records into the caller's buffer.
//!
//! This is the hot path. It allocates nothing once the per-worker [`Scratch`] and output
//! buffer have grown to their working size: the question is echoed from the query, records come
//! from the [`Zone`](super::zone::Zone) as ready-made bytes (owner `C0 0C`), and only the ID,
//! flags, counts, MX preferences, additional-record owner pointers and the OPT record are
//! written per query. Work per query is bounded by the message length (parsing) and the number of
//! silos (ordering).
//!
//! Decisions, in order (after `wire::parse`'s FORMERR, BADVERS and NOTIMP): REFUSED for classes
//! other than IN and ANY, zone transfers and names outside the zone; FORMERR for a query of type OPT; NOTIMP for other
//! meta types; then the name: NXDOMAIN (no such name), NODATA (name exists, type does not; both
//! with the SOA in the authority section), or the answer. ANY gets one RRset (RFC 8482).
//! UDP answers larger than the client's EDNS payload (512 without EDNS) first lose their
//! additional records, then set TC with empty sections.
//!
//! Location: the ECS address when the query has one (source prefix above 0), else the
//! resolver's address; looked up only when more than one silo could answer. The echoed ECS scope
//! is the prefix the geo decision depended on (see [`scope_for`]), 0 when the answer does not
//! depend on location.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::state::Plan;
use super::wire::{self, Bad, Ecs, HEADER_LEN, MAX_NAME, rcode};
use super::zone::{A_LEN, AAAA_LEN, MX_EXCHANGE_AT, MX_PREF_AT, Node, SiloRecords, rtype, unit};
use crate::geo::{Located, Point, Source};

/// Per-worker buffers, reused for every query.
#[derive(Debug)]
pub(crate) struct Scratch {
    name: [u8; MAX_NAME],
    /// (negated closeness, silo) in answer order.
    order: Vec<(f64, u16)>,
    /// Where each MX exchange name was written, and its silo.
    exchanges: Vec<(usize, u16)>,
    /// The last client point and its unit vector: consecutive queries mostly come from the
    /// same place, and the conversion is two sin/cos pairs (it showed in the bench profile).
    last_unit: Option<(Point, [f64; 3])>,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            name: [0; MAX_NAME],
            order: Vec::with_capacity(16),
            exchanges: Vec::with_capacity(16),
            last_unit: None,
        }
    }
}

/// What happened to one query, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub qtype: u16,
    /// Including extended codes (BADVERS = 16).
    pub rcode: u8,
    pub ecs: bool,
    /// The first silo in the answer, for geo answers.
    pub silo: Option<u16>,
    pub truncated: bool,
}

/// The client's place, looked up at most once per query.
struct Client {
    peer: IpAddr,
    ecs: Option<Ecs>,
    resolved: Option<([f64; 3], u8)>,
}

impl Client {
    /// (unit vector, ECS scope). Clients of unknown location stand at this node's silo.
    fn locate(&mut self, plan: &Plan, last: &mut Option<(Point, [f64; 3])>) -> ([f64; 3], u8) {
        if let Some(r) = self.resolved {
            return r;
        }
        let (addr, source) = match self.ecs {
            Some(e) if e.source > 0 => (e.addr, Some(e.source)),
            _ => (self.peer, None),
        };
        let located = plan.snapshot.geo.locate(addr);
        let u = match located.point {
            None => plan.zone.local_unit,
            Some(p) => match *last {
                Some((q, u)) if q == p => u,
                _ => {
                    let u = unit(p);
                    *last = Some((p, u));
                    u
                }
            },
        };
        let scope = source.map_or(0, |s| scope_for(addr, &located, s, &plan.zone.refine));
        self.resolved = Some((u, scope));
        (u, scope)
    }
}

/// Answers `msg` from `peer` into `out`. `None`: drop it (not worth an answer).
pub(crate) fn respond(
    plan: &Plan,
    msg: &[u8],
    peer: IpAddr,
    tcp: bool,
    s: &mut Scratch,
    out: &mut Vec<u8>,
) -> Option<Outcome> {
    let zone = &plan.zone;
    let req = match wire::parse(msg, &mut s.name) {
        Ok(r) => r,
        Err(Bad::Drop) => return None,
        Err(Bad::Reply {
            id,
            flags,
            rcode,
            question,
            edns,
        }) => {
            let w = Writer::start(out, id, flags, question);
            let opt = edns.map(|e| Opt::plain(zone.udp_payload, rcode, e.dnssec_ok));
            w.finish(rcode & 0xF, false, usize::from(u16::MAX), opt);
            let qtype = question
                .and_then(|q| q.get(q.len() - 4..q.len() - 2))
                .map_or(0, |t| u16::from_be_bytes([t[0], t[1]]));
            return Some(Outcome {
                qtype,
                rcode,
                ecs: false,
                silo: None,
                truncated: false,
            });
        }
    };
    let limit = if tcp {
        usize::from(u16::MAX)
    } else {
        usize::from(req.edns.map_or(512, |e| e.payload.min(zone.udp_payload)))
    };
    let ecs = req.edns.and_then(|e| e.ecs);
    let mut w = Writer::start(out, req.id, req.flags, Some(req.question));
    let mut silo = None;
    let mut scope = 0;
    let (rc, aa) = 'decide: {
        match (req.qclass, req.qtype) {
            // IN, or ANY (RFC 1035 3.2.5), which only IN can match here.
            (c, _) if c != 1 && c != 255 => break 'decide (rcode::REFUSED, false),
            (_, rtype::AXFR | rtype::IXFR) => break 'decide (rcode::REFUSED, false),
            (_, rtype::OPT) => break 'decide (rcode::FORMERR, false),
            (_, 128..=254) => break 'decide (rcode::NOTIMP, false),
            _ => {}
        }
        let name = &s.name[..req.name_len];
        let Some(apex_at) = zone.apex_offset(name) else {
            break 'decide (rcode::REFUSED, false);
        };
        let soa_owner = 0xC000 | (HEADER_LEN + apex_at) as u16;
        let Some(node) = zone.node(name) else {
            w.authority(soa_owner, &zone.soa_negative);
            break 'decide (rcode::NXDOMAIN, true);
        };
        let mut client = Client {
            peer,
            ecs,
            resolved: None,
        };
        (silo, scope) = answer_node(plan, node, req.qtype, &mut w, &mut client, s);
        if w.an == 0 {
            w.authority(soa_owner, &zone.soa_negative);
        }
        (rcode::NOERROR, true)
    };
    let opt = req.edns.map(|e| Opt {
        payload: zone.udp_payload,
        ext_rcode: rc >> 4,
        dnssec_ok: e.dnssec_ok,
        ecs: e.ecs.map(|c| (c, if c.source == 0 { 0 } else { scope })),
        nsid: if e.nsid { zone.nsid.as_deref() } else { None },
    });
    let truncated = w.finish(rc & 0xF, aa, limit, opt);
    Some(Outcome {
        qtype: req.qtype,
        rcode: rc,
        ecs: ecs.is_some(),
        silo,
        truncated,
    })
}

/// Fills the answer for a name that exists; returns the first silo answered and the ECS scope.
fn answer_node(
    plan: &Plan,
    node: &Node,
    qtype: u16,
    w: &mut Writer<'_>,
    client: &mut Client,
    s: &mut Scratch,
) -> (Option<u16>, u8) {
    let zone = &plan.zone;
    if qtype != rtype::CNAME
        && let Some(c) = node.rrset(rtype::CNAME)
    {
        w.answer(&c.rrs, c.count);
        return (None, 0);
    }
    match qtype {
        rtype::A | rtype::AAAA => {
            if let Some(set) = node.address {
                return geo_address(plan, set, qtype, w, client, s);
            }
            if let Some(i) = node.silo {
                addresses(&zone.silos[i], qtype, w);
                return (None, 0);
            }
        }
        rtype::MX => {
            if let Some(set) = node.mx {
                return geo_mx(plan, set, w, client, s);
            }
        }
        rtype::ANY => {
            // RFC 8482: one RRset is enough.
            if let Some(set) = node.address {
                let got = geo_address(plan, set, rtype::A, w, client, s);
                if w.an > 0 {
                    return got;
                }
                return geo_address(plan, set, rtype::AAAA, w, client, s);
            }
            if let Some(set) = node.mx {
                return geo_mx(plan, set, w, client, s);
            }
            if let Some(i) = node.silo {
                addresses(&zone.silos[i], rtype::A, w);
                return (None, 0);
            }
            if let Some(r) = node.statics.first() {
                w.answer(&r.rrs, r.count);
            }
            return (None, 0);
        }
        _ => {}
    }
    if let Some(r) = node.rrset(qtype) {
        w.answer(&r.rrs, r.count);
        if r.glue_count > 0 {
            w.begin_additional();
            w.additional(&r.glue, r.glue_count);
        }
    }
    (None, 0)
}

fn addresses(silo: &SiloRecords, qtype: u16, w: &mut Writer<'_>) {
    if qtype == rtype::A {
        w.answer(&silo.a, silo.a_count);
    } else {
        w.answer(&silo.aaaa, silo.aaaa_count);
    }
}

/// Orders the eligible silos of `set` by distance from the client into `s.order`; returns the
/// ECS scope (0 when at most one silo can answer, so location does not matter).
pub(crate) fn order_silos(
    plan: &Plan,
    set: usize,
    client_unit: Option<[f64; 3]>,
    order: &mut Vec<(f64, u16)>,
) {
    let zone = &plan.zone;
    let eligible = &plan.eligible[set].silos;
    order.clear();
    match client_unit {
        None => order.extend(eligible.iter().map(|&i| (0.0, i))),
        Some(c) => {
            for &i in eligible {
                let u = zone.silos[usize::from(i)].unit;
                // Larger dot product = smaller great-circle distance.
                order.push((-(c[0] * u[0] + c[1] * u[1] + c[2] * u[2]), i));
            }
            order.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        }
    }
}

fn order_for(plan: &Plan, set: usize, client: &mut Client, s: &mut Scratch) -> u8 {
    if plan.eligible[set].silos.len() <= 1 {
        order_silos(plan, set, None, &mut s.order);
        return 0;
    }
    let (u, scope) = client.locate(plan, &mut s.last_unit);
    order_silos(plan, set, Some(u), &mut s.order);
    scope
}

fn geo_address(
    plan: &Plan,
    set: usize,
    qtype: u16,
    w: &mut Writer<'_>,
    client: &mut Client,
    s: &mut Scratch,
) -> (Option<u16>, u8) {
    let scope = order_for(plan, set, client, s);
    for &(_, i) in s.order.iter().take(1 + plan.zone.next_silos) {
        addresses(&plan.zone.silos[usize::from(i)], qtype, w);
    }
    (s.order.first().map(|o| o.1), scope)
}

fn geo_mx(
    plan: &Plan,
    set: usize,
    w: &mut Writer<'_>,
    client: &mut Client,
    s: &mut Scratch,
) -> (Option<u16>, u8) {
    let scope = order_for(plan, set, client, s);
    s.exchanges.clear();
    for (k, &(_, i)) in s.order.iter().enumerate() {
        let silo = &plan.zone.silos[usize::from(i)];
        let at = w.out.len();
        w.answer(&silo.mx, 1);
        let pref = u16::try_from(10 * (k + 1)).unwrap_or(u16::MAX);
        w.out[at + MX_PREF_AT..at + MX_PREF_AT + 2].copy_from_slice(&pref.to_be_bytes());
        s.exchanges.push((at + MX_EXCHANGE_AT, i));
    }
    w.begin_additional();
    for &(at, i) in &s.exchanges {
        let silo = &plan.zone.silos[usize::from(i)];
        if !silo.host_in_zone || at >= 0x4000 {
            continue;
        }
        let owner = (0xC000 | at as u16).to_be_bytes();
        w.additional_owned(&silo.a, silo.a_count, A_LEN, owner);
        w.additional_owned(&silo.aaaa, silo.aaaa_count, AAAA_LEN, owner);
    }
    (s.order.first().map(|o| o.1), scope)
}

/// The prefix length the location of `addr` depended on: the length of the rule that placed
/// it (override, local range, database network), lengthened until no more specific override or
/// local range falls inside it — a resolver caching the answer for that prefix must not reuse
/// it for a client the more specific rule places elsewhere. Unknown addresses keep the source
/// prefix.
pub(crate) fn scope_for(addr: IpAddr, located: &Located, source: u8, refine: &[IpNetwork]) -> u8 {
    let bits: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let mut scope = match located.source {
        Source::Unknown => return source,
        _ => located.prefix_len.min(bits),
    };
    loop {
        let mut grew = false;
        for n in refine {
            if n.prefix() <= scope || n.is_ipv4() != addr.is_ipv4() {
                continue;
            }
            let common = common_prefix(addr, n.network());
            if common >= scope {
                scope = (common + 1).min(n.prefix());
                grew = true;
            }
        }
        if !grew {
            return scope.min(bits);
        }
    }
}

fn common_prefix(a: IpAddr, b: IpAddr) -> u8 {
    match (a, b) {
        (IpAddr::V4(x), IpAddr::V4(y)) => (u32::from(x) ^ u32::from(y)).leading_zeros() as u8,
        (IpAddr::V6(x), IpAddr::V6(y)) => (u128::from(x) ^ u128::from(y)).leading_zeros() as u8,
        _ => 0,
    }
}

/// The OPT record of an answer.
#[derive(Debug, Clone, Copy)]
struct Opt<'a> {
    payload: u16,
    ext_rcode: u8,
    /// The query's DO bit, copied (RFC 3225 3); every other flag stays 0 (RFC 6891 6.1.4).
    dnssec_ok: bool,
    ecs: Option<(Ecs, u8)>,
    nsid: Option<&'a [u8]>,
}

impl Opt<'_> {
    /// The OPT record of an error answer: our payload, the rcode's upper bits, DO copied.
    fn plain(payload: u16, rcode: u8, dnssec_ok: bool) -> Opt<'static> {
        Opt {
            payload,
            ext_rcode: rcode >> 4,
            dnssec_ok,
            ecs: None,
            nsid: None,
        }
    }

    fn rdlen(&self) -> usize {
        self.ecs.map_or(0, |(e, _)| 8 + usize::from(e.raw_len))
            + self.nsid.map_or(0, |n| 4 + n.len())
    }

    fn len(&self) -> usize {
        11 + self.rdlen()
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.push(0);
        out.extend_from_slice(&rtype::OPT.to_be_bytes());
        out.extend_from_slice(&self.payload.to_be_bytes());
        let flags: u8 = if self.dnssec_ok { 0x80 } else { 0 };
        out.extend_from_slice(&[self.ext_rcode, 0, flags, 0]);
        out.extend_from_slice(&(self.rdlen() as u16).to_be_bytes());
        if let Some((e, scope)) = self.ecs {
            out.extend_from_slice(&[0, 8]);
            out.extend_from_slice(&(4 + u16::from(e.raw_len)).to_be_bytes());
            out.extend_from_slice(&e.family.to_be_bytes());
            out.extend_from_slice(&[e.source, scope]);
            out.extend_from_slice(&e.raw[..usize::from(e.raw_len)]);
        }
        if let Some(n) = self.nsid {
            out.extend_from_slice(&[0, 3]);
            out.extend_from_slice(&(n.len() as u16).to_be_bytes());
            out.extend_from_slice(n);
        }
    }
}

/// Builds a response in place: header, question, then sections in order.
struct Writer<'o> {
    out: &'o mut Vec<u8>,
    flags: u16,
    an: u16,
    ns: u16,
    ar: u16,
    question_end: usize,
    additional_start: Option<usize>,
}

impl<'o> Writer<'o> {
    fn start(out: &'o mut Vec<u8>, id: u16, flags: u16, question: Option<&[u8]>) -> Writer<'o> {
        out.clear();
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, u8::from(question.is_some()), 0, 0, 0, 0, 0, 0]);
        if let Some(q) = question {
            out.extend_from_slice(q);
        }
        let question_end = out.len();
        Writer {
            out,
            flags,
            an: 0,
            ns: 0,
            ar: 0,
            question_end,
            additional_start: None,
        }
    }

    fn answer(&mut self, rrs: &[u8], count: u16) {
        self.out.extend_from_slice(rrs);
        self.an += count;
    }

    fn authority(&mut self, owner: u16, body: &[u8]) {
        self.out.extend_from_slice(&owner.to_be_bytes());
        self.out.extend_from_slice(body);
        self.ns += 1;
    }

    fn begin_additional(&mut self) {
        self.additional_start.get_or_insert(self.out.len());
    }

    fn additional(&mut self, rrs: &[u8], count: u16) {
        self.out.extend_from_slice(rrs);
        self.ar += count;
    }

    /// Copies fixed-size records and points each one's owner at `owner`.
    fn additional_owned(&mut self, rrs: &[u8], count: u16, stride: usize, owner: [u8; 2]) {
        let at = self.out.len();
        self.out.extend_from_slice(rrs);
        for rr in self.out[at..].chunks_exact_mut(stride) {
            rr[..2].copy_from_slice(&owner);
        }
        self.ar += count;
    }

    /// Adds the OPT record, fits the answer into `limit`, writes flags and counts. Returns
    /// whether it was truncated (TC).
    fn finish(self, rcode: u8, aa: bool, limit: usize, opt: Option<Opt<'_>>) -> bool {
        let Writer {
            out,
            flags,
            mut an,
            mut ns,
            mut ar,
            question_end,
            additional_start,
        } = self;
        let opt_len = opt.map_or(0, |o| o.len());
        let mut tc = false;
        if out.len() + opt_len > limit {
            match additional_start {
                Some(at) if at + opt_len <= limit => {
                    out.truncate(at);
                    ar = 0;
                }
                _ => {
                    out.truncate(question_end);
                    (an, ns, ar) = (0, 0, 0);
                    tc = true;
                }
            }
        }
        if let Some(o) = opt {
            o.write(out);
            ar += 1;
        }
        let [hi, lo] = flags.to_be_bytes();
        out[2] = 0x80 | (hi & 0x79) | if aa { 0x04 } else { 0 } | if tc { 0x02 } else { 0 };
        out[3] = (lo & 0x10) | (rcode & 0x0F);
        out[6..8].copy_from_slice(&an.to_be_bytes());
        out[8..10].copy_from_slice(&ns.to_be_bytes());
        out[10..12].copy_from_slice(&ar.to_be_bytes());
        tc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn located(source: Source, prefix_len: u8) -> Located {
        Located {
            country: None,
            point: None,
            source,
            prefix_len,
        }
    }

    fn nets(list: &[&str]) -> Vec<IpNetwork> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn the_scope_is_the_matched_prefix_made_longer_around_more_specific_rules() {
        let db = located(Source::Database, 18);
        let a: IpAddr = "81.2.69.0".parse().unwrap();
        assert_eq!(scope_for(a, &db, 24, &[]), 18);
        // An override inside the /18 but not covering the client: exclude it.
        assert_eq!(scope_for(a, &db, 24, &nets(&["81.2.69.160/32"])), 25);
        assert_eq!(scope_for(a, &db, 24, &nets(&["81.2.100.0/24"])), 18 + 1);
        // Rules elsewhere, shorter ones and the other family do not matter.
        assert_eq!(
            scope_for(a, &db, 24, &nets(&["10.0.0.0/8", "81.0.0.0/8", "::/1"])),
            18
        );
        // Several rules: lengthened until none is inside.
        assert_eq!(
            scope_for(a, &db, 24, &nets(&["81.2.64.0/22", "81.2.69.128/25"])),
            25
        );
        // Unknown addresses keep the source prefix; a v6 database answer is capped at 128.
        assert_eq!(scope_for(a, &located(Source::Unknown, 0), 24, &[]), 24);
        let v6: IpAddr = "2a01:4f8::".parse().unwrap();
        assert_eq!(scope_for(v6, &located(Source::Database, 32), 56, &[]), 32);
    }
}

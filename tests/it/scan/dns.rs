//! A tiny authoritative DNS server for the scan tests: UDP on 127.0.0.1:0, answering TXT and A
//! records from `tests/fixtures/scan/zone.toml` (or a zone a test gives), NXDOMAIN for
//! everything else. The scanners' resolver is pointed at it through `[policy.NAME.dns]
//! resolver`; MTA-STS lookups (`delivery_tls`) through their fetcher.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, TXT};
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;

#[derive(Debug, Default, serde::Deserialize)]
struct ZoneFile {
    #[serde(default)]
    txt: HashMap<String, Vec<String>>,
    #[serde(default)]
    a: HashMap<String, Vec<Ipv4Addr>>,
}

/// The running server; it stops when the test's runtime ends.
pub struct TestDns {
    pub addr: SocketAddr,
}

/// Starts the server with the fixture zone.
pub async fn start() -> TestDns {
    let path = crate::support::repo().join("tests/fixtures/scan/zone.toml");
    let text = std::fs::read_to_string(&path).expect("zone fixture");
    start_zone(&text).await
}

/// Starts the server with a zone written as the fixture is (`[txt]`, `[a]` tables of names).
pub async fn start_zone(text: &str) -> TestDns {
    let zone: ZoneFile = toml::from_str(text).expect("zone parses");
    let zone = Arc::new(zone);
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
    let addr = sock.local_addr().expect("local addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                return;
            };
            if let Some(reply) = answer(&zone, &buf[..n]) {
                let _ = sock.send_to(&reply, peer).await;
            }
        }
    });
    TestDns { addr }
}

fn answer(zone: &ZoneFile, query: &[u8]) -> Option<Vec<u8>> {
    let req = Message::from_vec(query).ok()?;
    let mut resp = Message::response(req.metadata.id, OpCode::Query);
    resp.metadata.message_type = MessageType::Response;
    resp.metadata.authoritative = true;
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    let q = req.queries.first()?.clone();
    let name = q
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let mut found = false;
    match q.query_type() {
        RecordType::TXT => {
            for t in zone.txt.get(&name).into_iter().flatten() {
                let rdata = RData::TXT(TXT::new(vec![t.clone()]));
                resp.add_answer(Record::from_rdata(q.name().clone(), 60, rdata));
                found = true;
            }
        }
        RecordType::A => {
            for a in zone.a.get(&name).into_iter().flatten() {
                resp.add_answer(Record::from_rdata(q.name().clone(), 60, RData::A(A(*a))));
                found = true;
            }
        }
        _ => {}
    }
    let known = zone.txt.contains_key(&name) || zone.a.contains_key(&name);
    if !found && !known {
        resp.metadata.response_code = ResponseCode::NXDomain;
    }
    resp.add_query(q);
    resp.to_vec().ok()
}

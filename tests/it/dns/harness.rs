//! The helper language of the GeoDNS tests: a [`Geo`] server in its own runtime with stub SMTP
//! edges, queries built as `geo.ask(name, A).ecs(GB).udp()`, and [`Answer`]s decoded with
//! hickory-proto.

use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::{Name, RData, RecordType};
use maildistiller::config::RoleSet;
use maildistiller::dns::DnsState;
use maildistiller::ops::Ops;
use tokio::io::AsyncWriteExt;

use crate::support::*;

pub(super) const SILOS: [(&str, &str); 3] = [
    ("lon1", "127.0.0.11"),
    ("fra1", "127.0.0.12"),
    ("nyc1", "127.0.0.13"),
];
/// ECS subnets placed by the shipped geo database.
pub(super) const GB: &str = "81.2.69.0/24";
pub(super) const DE: &str = "5.9.0.0/24";
pub(super) const US: &str = "8.8.8.0/24";

/// A stub SMTP edge: greets with 220 while running.
pub(super) struct Edge {
    pub(super) addr: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// A GeoDNS server in its own runtime, with its config file and stub edges.
pub(super) struct Geo {
    pub(super) rt: tokio::runtime::Runtime,
    pub(super) ops: Arc<Ops>,
    pub(super) state: Arc<DnsState>,
    pub(super) udp: SocketAddr,
    pub(super) tcp: SocketAddr,
    pub(super) edges: Vec<Edge>,
    pub(super) path: PathBuf,
    _dir: tempfile::TempDir,
}

/// The silos' egress ranges: GeoDNS publishes them as `spf.in.example.net` (nyc1 has none).
const EGRESS: [&str; 3] = [
    "egress = [\"192.0.2.0/24\"]\n",
    "egress = [\"198.51.100.0/25\", \"2001:db8:20::/48\", \"192.0.2.0/24\"]\n",
    "",
];

/// An extra silo far away (for `Geo::start_with`) with 100 edge addresses: its host name,
/// `bulk.in.example.net`, answers 100 A records — too many for 512 or 1232 bytes.
pub(super) fn bulk_silo() -> String {
    let edges: Vec<String> = (1..=100).map(|i| format!("\"127.0.5.{i}\"")).collect();
    format!(
        "[[silo]]\nname = \"bulk\"\nhostname = \"bulk.in.example.net\"\nlat = -89.0\nlon = 0.0\n\
         edge_addresses = [{}]\nedge_port = {{bulk_port}}\n",
        edges.join(", ")
    )
}

pub(super) fn config(edges: &[SocketAddr], silos_extra: &str, dns_extra: &str) -> String {
    let silo = |i: usize, lat: f64, lon: f64, region: &str| {
        format!(
            "[[silo]]\nname = \"{n}\"\nhostname = \"{n}.in.example.net\"\nlat = {lat}\nlon = {lon}\n\
             edge_addresses = [\"{ip}\"]\nedge_port = {port}\n{egress}  [[silo.cluster]]\n  name = \"c\"\n  \
             region = \"{region}\"\n    [[silo.cluster.engine]]\n    address = \"127.0.0.1:{e}\"\n",
            n = SILOS[i].0,
            ip = edges[i].ip(),
            port = edges[i].port(),
            e = 2601 + i,
            egress = EGRESS[i]
        )
    };
    format!(
        r#"
[node]
silo = "lon1"
[geo]
database = "{db}"
[[geo.override]]
cidr = "127.0.0.4/32"
country = "US"
[[geo.override]]
cidr = "81.2.69.160/32"
country = "US"
[regions.uk]
[regions.de]
[regions.us]
{lon}{fra}{nyc}{silos_extra}
[[tenant]]
id = "acme"
domains = ["acme.example"]
regions = ["uk"]
delivery = ["127.0.0.1:10025"]
[[tenant]]
id = "globex"
domains = ["globex.example"]
regions = ["de", "us"]
delivery = ["127.0.0.1:10026"]
[[tenant]]
id = "initech"
domains = ["initech.example"]
delivery = ["127.0.0.1:10027"]

[dns]
listen = ["127.0.0.1:0"]
zone = "in.example.net"
service_names = ["mx"]
mx_names = ["@"]
nsid = "it-ns"
mta_sts_id = "2024"
tls_rpt = "mailto:tls@example.net"
{idle}udp_threads = 2
{dns_extra}
[dns.tenant.globex]
names = ["mail-globex"]
mx_names = ["globex-mx"]
[[dns.ns]]
name = "ns1"
addresses = ["127.0.0.53"]
[[dns.record]]
name = "@"
type = "CAA"
value = '0 issue "letsencrypt.org"'
[dns.health]
interval = "100ms"
timeout = "100ms"
rise = 2
fall = 2
"#,
        db = geo_db(),
        // A test that sets its own idle timeout in `dns_extra` gets it instead.
        idle = if dns_extra.contains("tcp_idle_timeout") {
            ""
        } else {
            "tcp_idle_timeout = \"1s\"\n"
        },
        lon = silo(0, 51.5, -0.12, "uk"),
        fra = silo(1, 50.11, 8.68, "de"),
        nyc = silo(2, 40.71, -74.0, "us"),
    )
}

pub(super) async fn serve_edge(listener: tokio::net::TcpListener) {
    while let Ok((mut s, _)) = listener.accept().await {
        tokio::spawn(async move {
            let _ = s.write_all(b"220 stub edge\r\n").await;
        });
    }
}

impl Geo {
    pub(super) fn start() -> Geo {
        Geo::start_with("", "")
    }

    pub(super) fn start_with(silos_extra: &str, dns_extra: &str) -> Geo {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut edges = Vec::new();
        for (_, ip) in SILOS {
            let l = rt
                .block_on(tokio::net::TcpListener::bind((
                    ip.parse::<IpAddr>().unwrap(),
                    0,
                )))
                .unwrap();
            let addr = l.local_addr().unwrap();
            edges.push(Edge {
                addr,
                task: Some(rt.spawn(serve_edge(l))),
            });
        }
        let addrs: Vec<SocketAddr> = edges.iter().map(|e| e.addr).collect();
        // `{bulk_port}` in extra silos: a fourth stub edge on 127.0.5.1.
        let mut silos_extra = silos_extra.to_owned();
        if silos_extra.contains("{bulk_port}") {
            let l = rt
                .block_on(tokio::net::TcpListener::bind("127.0.5.1:0"))
                .unwrap();
            let addr = l.local_addr().unwrap();
            silos_extra = silos_extra.replace("{bulk_port}", &addr.port().to_string());
            edges.push(Edge {
                addr,
                task: Some(rt.spawn(serve_edge(l))),
            });
        }
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "md.toml",
            &format!(
                "{}\n[ops]\n{}\n",
                config(&addrs, &silos_extra, dns_extra),
                ops_token(dir.path())
            ),
        );
        let roles = RoleSet {
            dns: true,
            ..RoleSet::default()
        };
        let snap = maildistiller::node::load(&path, roles).unwrap_or_else(|e| panic!("{e}"));
        let ops = Ops::new(snap);
        let bound = rt.block_on(maildistiller::dns::bind(&ops)).unwrap();
        let (udp, tcp, state) = (bound.udp_addrs[0], bound.tcp_addrs[0], bound.state());
        rt.spawn(bound.serve());
        let g = Geo {
            rt,
            ops,
            state,
            udp,
            tcp,
            edges,
            path,
            _dir: dir,
        };
        // Every silo's edge has been probed once and is up.
        g.until("all silos probed and up", |g| {
            g.counter("maildistiller_dns_health_probes_total{result=\"ok\"") >= 3.0
                && (0..3).all(|i| g.in_answers(i))
        });
        g
    }

    /// The value of the first metric line starting with `prefix` (0 if none).
    pub(super) fn counter(&self, prefix: &str) -> f64 {
        self.metrics()
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Whether the silo may be answered, as `/metrics` says.
    pub(super) fn in_answers(&self, silo: usize) -> bool {
        let p = format!(
            "maildistiller_dns_silo_in_answers{{answered=\"{}\"",
            SILOS[silo].0
        );
        self.counter(&p) == 1.0
    }

    pub(super) fn metrics(&self) -> String {
        self.ops.metrics.render()
    }

    /// Polls `f` (every 20 ms, at most 10 s) until it holds.
    pub(super) fn until(&self, what: &str, f: impl Fn(&Geo) -> bool) {
        eventually(Duration::from_secs(10), || f(self).then_some(()))
            .unwrap_or_else(|| panic!("never happened: {what}"));
    }

    pub(super) fn ask(&self, name: &str, t: RecordType) -> Ask<'_> {
        let mut msg = Message::query();
        msg.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        msg.set_edns(edns);
        Ask {
            geo: self,
            msg,
            from: "127.0.0.1".parse().unwrap(),
        }
    }

    /// Stops a silo's edge: its address refuses connections.
    pub(super) fn edge_down(&mut self, silo: usize) {
        if let Some(t) = self.edges[silo].task.take() {
            t.abort();
            let _ = self.rt.block_on(t);
        }
    }

    pub(super) fn edge_up(&mut self, silo: usize) {
        let addr = self.edges[silo].addr;
        let l = eventually(Duration::from_secs(10), || {
            self.rt.block_on(tokio::net::TcpListener::bind(addr)).ok()
        })
        .expect("rebind the stub edge");
        self.edges[silo].task = Some(self.rt.spawn(serve_edge(l)));
    }

    pub(super) fn reload(&self, text: &str) -> Result<(), String> {
        std::fs::write(&self.path, text).unwrap();
        self.ops.reload().map(|_| ()).map_err(|e| e.to_string())
    }
}

impl Drop for Geo {
    fn drop(&mut self) {
        self.ops.shutdown.cancel();
    }
}

/// One query being built: `geo.ask(name, A).ecs(GB).udp()`.
pub(super) struct Ask<'a> {
    geo: &'a Geo,
    pub(super) msg: Message,
    from: IpAddr,
}

impl Ask<'_> {
    pub(super) fn ecs(mut self, net: &str) -> Self {
        let cs = ClientSubnet::from_str(net).unwrap();
        self.msg
            .edns
            .as_mut()
            .unwrap()
            .options_mut()
            .insert(EdnsOption::Subnet(cs));
        self
    }
    pub(super) fn no_edns(mut self) -> Self {
        self.msg.edns = None;
        self
    }
    pub(super) fn from(mut self, ip: &str) -> Self {
        self.from = ip.parse().unwrap();
        self
    }
    pub(super) fn edit(mut self, f: impl FnOnce(&mut Message)) -> Self {
        f(&mut self.msg);
        self
    }
    pub(super) fn udp(self) -> Answer {
        let bytes = self.msg.to_vec().unwrap();
        Answer::parse(&udp_exchange(self.geo.udp, self.from, &bytes).expect("an answer"))
    }
    pub(super) fn tcp(self) -> Answer {
        let bytes = self.msg.to_vec().unwrap();
        let mut s = TcpStream::connect(self.geo.tcp).unwrap();
        Answer::parse(&tcp_exchange(&mut s, &[bytes]).remove(0))
    }
}

pub(super) fn udp_exchange(server: SocketAddr, from: IpAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind((from, 0)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    sock.send_to(bytes, server).unwrap();
    let mut buf = vec![0; 65535];
    let n = sock.recv(&mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

/// Writes every query in one go (pipelined), then reads as many answers.
pub(super) fn tcp_exchange(s: &mut TcpStream, queries: &[Vec<u8>]) -> Vec<Vec<u8>> {
    use std::io::{Read, Write};
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut all = Vec::new();
    for q in queries {
        all.extend((q.len() as u16).to_be_bytes());
        all.extend(q);
    }
    s.write_all(&all).unwrap();
    queries
        .iter()
        .map(|_| {
            let mut len = [0; 2];
            s.read_exact(&mut len).unwrap();
            let mut m = vec![0; usize::from(u16::from_be_bytes(len))];
            s.read_exact(&mut m).unwrap();
            m
        })
        .collect()
}

/// A decoded answer with the questions tests ask of it.
pub(super) struct Answer {
    pub(super) msg: Message,
    pub(super) len: usize,
}

impl Answer {
    pub(super) fn parse(bytes: &[u8]) -> Answer {
        Answer {
            msg: Message::from_vec(bytes).unwrap_or_else(|e| panic!("undecodable answer: {e}")),
            len: bytes.len(),
        }
    }
    pub(super) fn rcode(&self) -> ResponseCode {
        self.msg.metadata.response_code
    }
    pub(super) fn aa(&self) -> bool {
        self.msg.metadata.authoritative
    }
    pub(super) fn tc(&self) -> bool {
        self.msg.metadata.truncation
    }
    pub(super) fn addrs(&self) -> Vec<String> {
        self.msg
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0.to_string()),
                RData::AAAA(a) => Some(a.0.to_string()),
                _ => None,
            })
            .collect()
    }
    pub(super) fn mx(&self) -> Vec<(u16, String)> {
        self.msg
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::MX(m) => Some((m.preference, m.exchange.to_ascii())),
                _ => None,
            })
            .collect()
    }
    pub(super) fn types(&self) -> Vec<RecordType> {
        self.msg.answers.iter().map(|r| r.record_type()).collect()
    }
    pub(super) fn scope(&self) -> Option<u8> {
        match self.msg.edns.as_ref()?.option(EdnsCode::Subnet)? {
            EdnsOption::Subnet(c) => Some(c.scope_prefix()),
            _ => None,
        }
    }
    /// NXDOMAIN / NODATA carry the zone's SOA in the authority section.
    pub(super) fn soa_in_authority(&self) -> bool {
        self.msg.answers.is_empty()
            && self.msg.authorities.len() == 1
            && self.msg.authorities[0].record_type() == RecordType::SOA
            && self.msg.authorities[0].name.to_ascii() == "in.example.net."
    }
}

pub(super) fn ip(silo: usize) -> Vec<String> {
    vec![SILOS[silo].1.to_owned()]
}

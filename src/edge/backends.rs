//! What the edge knows about engines: health (active SMTP probes with rise/fall, plus passive
//! ejection on connect failures and 421 greetings), outstanding sessions per engine, and
//! connecting to the best engine for a route with bounded failover.
//!
//! State is keyed by engine address, so it survives config reloads that renumber engines. One
//! probe task per engine address; it ends when the address leaves the config.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::metrics::EdgeMetrics;
use crate::config::ProxyProtocol;
use crate::net::{connect_from, source_for};
use crate::ops::Ops;
use crate::proxy::{self, ProxyInfo};
use crate::smtp::reply;
use crate::snapshot::Snapshot;
use crate::topology::{EngineIdx, EngineLoad, LoadView, Route, Topology};

/// Live state of one engine.
#[derive(Debug)]
pub struct EngineHealth {
    pub address: SocketAddr,
    /// `silo/cluster`, for metrics and logs.
    pub cluster: String,
    healthy: AtomicBool,
    /// Sessions this edge has open to it.
    outstanding: AtomicU32,
    /// Consecutive failures (probe or passive) while up; consecutive successes while down.
    streak: AtomicU32,
    /// Still in the config (its probe task stops when false).
    current: AtomicBool,
    /// Drained at run time through the ops API (no new sessions).
    drained: AtomicBool,
    /// Sessions the engine reports on its `/readyz` (all edges together); 0 when unknown.
    reported_sessions: AtomicU32,
    /// The engine's `/readyz` says it is not ready (starting, draining).
    not_ready: AtomicBool,
    /// Flap damping: how many times in a row it went down again soon after coming up.
    flaps: AtomicU32,
    /// When it last came up (ms on [`clock_ms`]); 0: never came back (up since start).
    up_at_ms: AtomicU64,
}

impl EngineHealth {
    /// A new engine: up (until a probe says otherwise), nothing outstanding.
    fn new(address: SocketAddr, cluster: String) -> EngineHealth {
        EngineHealth {
            address,
            cluster,
            healthy: AtomicBool::new(true),
            outstanding: AtomicU32::new(0),
            streak: AtomicU32::new(0),
            current: AtomicBool::new(true),
            drained: AtomicBool::new(false),
            reported_sessions: AtomicU32::new(0),
            not_ready: AtomicBool::new(false),
            flaps: AtomicU32::new(0),
            up_at_ms: AtomicU64::new(0),
        }
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
    pub fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Relaxed)
    }
    pub fn drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }
    pub fn set_drained(&self, d: bool) {
        self.drained.store(d, Ordering::Relaxed);
    }
    /// What routing sees: usable unless down, drained or reporting not ready; load is the
    /// larger of our own sessions and what the engine reports (other edges' sessions count too).
    fn load(&self) -> EngineLoad {
        EngineLoad {
            healthy: self.healthy() && !self.drained() && !self.not_ready.load(Ordering::Relaxed),
            outstanding: self
                .outstanding()
                .max(self.reported_sessions.load(Ordering::Relaxed)),
        }
    }
}

/// Counts an engine session; dropping it releases the count.
#[derive(Debug)]
pub struct Outstanding(Arc<EngineHealth>);

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
pub struct Backends {
    by_addr: ArcSwap<HashMap<SocketAddr, Arc<EngineHealth>>>,
}

/// [`LoadView`] over the live state for one topology.
pub struct View<'a> {
    map: &'a HashMap<SocketAddr, Arc<EngineHealth>>,
    topology: &'a Topology,
}

impl LoadView for View<'_> {
    fn engine(&self, e: EngineIdx) -> EngineLoad {
        match self.map.get(&self.topology.engines[e.0].address) {
            Some(h) => h.load(),
            None => EngineLoad {
                healthy: true,
                outstanding: 0,
            },
        }
    }
}

/// An open connection to an engine, introduced (PROXY sent) and greeted (220 read).
pub struct EngineConn {
    pub stream: TcpStream,
    pub engine: EngineIdx,
    pub address: SocketAddr,
    /// Bytes the engine sent after its greeting (pipelined replies), to relay later.
    pub leftover: Vec<u8>,
    pub greeting: reply::Received,
    _outstanding: Outstanding,
}

/// Why no engine could be reached.
#[derive(Debug)]
pub struct NoEngine {
    pub tried: usize,
}

impl Backends {
    pub fn map(&self) -> arc_swap::Guard<Arc<HashMap<SocketAddr, Arc<EngineHealth>>>> {
        self.by_addr.load()
    }

    pub fn view<'a>(
        &self,
        map: &'a HashMap<SocketAddr, Arc<EngineHealth>>,
        topology: &'a Topology,
    ) -> View<'a> {
        View { map, topology }
    }

    /// Makes the state match the topology: new engines get state and a probe task; removed
    /// ones are marked so their probe ends.
    pub fn sync(self: &Arc<Self>, ops: &Arc<Ops>, metrics: &EdgeMetrics, snap: &Snapshot) {
        let old = self.by_addr.load_full();
        let mut new = HashMap::new();
        for e in &snap.topology.engines {
            let h = match old.get(&e.address) {
                Some(h) => h.clone(),
                None => {
                    let h = Arc::new(EngineHealth::new(
                        e.address,
                        snap.topology.cluster_label(e.cluster),
                    ));
                    metrics.engine_up(e.address, &h.cluster, true);
                    tokio::spawn(probe_loop(h.clone(), ops.clone(), metrics.clone()));
                    h
                }
            };
            new.insert(e.address, h);
        }
        for (a, h) in old.iter() {
            if !new.contains_key(a) {
                h.current.store(false, Ordering::Relaxed);
            }
        }
        self.by_addr.store(Arc::new(new));
    }

    /// Connects to the first engine that answers, following the route's cluster order and P2C
    /// within each cluster, at most `edge.max_connect_attempts` attempts in all. `greet`: read
    /// the engine's 220 (SMTP-aware mode) or leave it for the client (layer 4).
    pub async fn connect(
        &self,
        snap: &Snapshot,
        route: &Route,
        client: &ProxyInfo,
        metrics: &EdgeMetrics,
        rng: &mut fastrand::Rng,
        greet: bool,
    ) -> Result<EngineConn, NoEngine> {
        let attempts = snap.config.edge.max_connect_attempts;
        let timeout = snap.config.edge.connect_timeout.get();
        let map = self.by_addr.load_full();
        let mut tried: Vec<EngineIdx> = Vec::new();
        for cand in route.usable() {
            loop {
                if tried.len() as u32 >= attempts {
                    return Err(NoEngine { tried: tried.len() });
                }
                let view = self.view(&map, &snap.topology);
                let Some(e) = snap.topology.pick_engine(cand.cluster, &view, &tried, rng) else {
                    break;
                };
                tried.push(e);
                let eng = &snap.topology.engines[e.0];
                let Some(h) = map.get(&eng.address).cloned() else {
                    continue;
                };
                h.outstanding.fetch_add(1, Ordering::Relaxed);
                let guard = Outstanding(h.clone());
                let source = source_for(&snap.config.edge.source_addresses, eng.address);
                match introduce(eng.address, source, eng.proxy, client, timeout, greet).await {
                    Ok((stream, greeting, leftover)) => {
                        passive(&h, true, &snap.config.edge.health, metrics);
                        return Ok(EngineConn {
                            stream,
                            engine: e,
                            address: eng.address,
                            leftover,
                            greeting,
                            _outstanding: guard,
                        });
                    }
                    Err(why) => {
                        metrics.connect_failure(eng.address);
                        tracing::info!(engine = %eng.address, session = client.session_id.as_deref().unwrap_or(""), error = %why, "engine connection failed; trying the next");
                        passive(&h, false, &snap.config.edge.health, metrics);
                    }
                }
            }
        }
        Err(NoEngine { tried: tried.len() })
    }
}

/// Connects (from `source` when given), sends the PROXY header, reads the 220 greeting.
async fn introduce(
    addr: SocketAddr,
    source: Option<IpAddr>,
    proto: ProxyProtocol,
    client: &ProxyInfo,
    timeout: Duration,
    greet: bool,
) -> Result<(TcpStream, reply::Received, Vec<u8>), String> {
    let work = async {
        let mut s = connect_from(addr, source)
            .await
            .map_err(|e| e.to_string())?;
        let _ = s.set_nodelay(true);
        let mut header = Vec::new();
        match proto {
            ProxyProtocol::V2 => proxy::encode(client, proxy::Version::V2, &mut header),
            ProxyProtocol::V1 => proxy::encode(client, proxy::Version::V1, &mut header),
            ProxyProtocol::None => {}
        }
        if !header.is_empty() {
            s.write_all(&header).await.map_err(|e| e.to_string())?;
        }
        if !greet {
            return Ok((
                s,
                reply::Received {
                    code: 0,
                    lines: Vec::new(),
                },
                Vec::new(),
            ));
        }
        let mut buf = Vec::with_capacity(512);
        loop {
            let mut chunk = [0u8; 1024];
            let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed before greeting".to_string());
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some((r, used)) = reply::parse(&buf)? {
                if r.code != 220 {
                    return Err(format!("greeting {} {}", r.code, r.text()));
                }
                let rest = buf.split_off(used);
                return Ok((s, r, rest));
            }
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// Passive health: a failed connection counts like a failed probe; a good one resets the streak.
fn passive(h: &EngineHealth, ok: bool, cfg: &crate::config::HealthConfig, metrics: &EdgeMetrics) {
    if h.healthy() {
        if ok {
            h.streak.store(0, Ordering::Relaxed);
        } else if h.streak.fetch_add(1, Ordering::Relaxed) + 1 >= cfg.fall {
            transition(h, false, "passive: connection failures", cfg, metrics);
        }
    }
}

/// Flap damping (health must not follow an engine that keeps flapping: every flip costs the
/// sessions routed to it a timeout). An engine that goes down again within `STABLE_PROBES`
/// probe intervals of coming back must pass `rise << flaps` probes to return, the shift capped
/// at `MAX_DAMPING_SHIFT` (8 x rise); staying up that long forgets the history. Like Envoy's
/// outlier ejection time growing with consecutive ejections.
const STABLE_PROBES: u64 = 30;
const MAX_DAMPING_SHIFT: u32 = 3;

/// Milliseconds on a monotonic clock starting at 1 (0 means "never").
fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    start.elapsed().as_millis() as u64 + 1
}

/// Successful probes a down engine needs to come back.
fn rise_needed(h: &EngineHealth, cfg: &crate::config::HealthConfig) -> u32 {
    cfg.rise << h.flaps.load(Ordering::Relaxed).min(MAX_DAMPING_SHIFT)
}

/// Records a state change at `now_ms` for flap damping.
fn note_flip(h: &EngineHealth, up: bool, now_ms: u64, cfg: &crate::config::HealthConfig) {
    if up {
        h.up_at_ms.store(now_ms, Ordering::Relaxed);
        return;
    }
    let up_at = h.up_at_ms.load(Ordering::Relaxed);
    let stable_ms = cfg.interval.get().as_millis() as u64 * STABLE_PROBES;
    if up_at != 0 && now_ms.saturating_sub(up_at) < stable_ms {
        let _ = h
            .flaps
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| {
                Some((f + 1).min(16))
            });
    } else {
        h.flaps.store(0, Ordering::Relaxed);
    }
}

fn transition(
    h: &EngineHealth,
    up: bool,
    why: &str,
    cfg: &crate::config::HealthConfig,
    metrics: &EdgeMetrics,
) {
    if h.healthy.swap(up, Ordering::Relaxed) != up {
        h.streak.store(0, Ordering::Relaxed);
        note_flip(h, up, clock_ms(), cfg);
        metrics.engine_up(h.address, &h.cluster, up);
        let flaps = h.flaps.load(Ordering::Relaxed);
        if up {
            tracing::info!(engine = %h.address, cluster = %h.cluster, why, "engine up");
        } else {
            tracing::warn!(engine = %h.address, cluster = %h.cluster, why, flaps, rise_needed = rise_needed(h, cfg), "engine down: no new sessions until it passes its probes");
        }
    }
}

/// One probe: connect, PROXY LOCAL when the engine expects PROXY, 220, EHLO, 250, QUIT.
async fn probe(
    addr: SocketAddr,
    source: Option<IpAddr>,
    proto: ProxyProtocol,
    timeout: Duration,
) -> Result<(), String> {
    let work = async {
        let (mut s, _, mut buf) =
            introduce(addr, source, proto, &ProxyInfo::default(), timeout, true).await?;
        s.write_all(b"EHLO health-probe.maildistiller\r\n")
            .await
            .map_err(|e| e.to_string())?;
        loop {
            if let Some((r, _)) = reply::parse(&buf)? {
                if r.code != 250 {
                    return Err(format!("EHLO answered {}", r.code));
                }
                let _ = s.write_all(b"QUIT\r\n").await;
                return Ok(());
            }
            let mut chunk = [0u8; 1024];
            let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed after greeting".into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// Reads the engine's `/readyz` (`{"ready":..,"sessions":N,...}`) into its load. A failed read
/// leaves the last report; the SMTP probe decides health.
async fn load_report(h: &EngineHealth, ops: SocketAddr, timeout: Duration) {
    let work = async {
        let mut s = TcpStream::connect(ops).await.ok()?;
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: engine\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::new();
        (&mut s).take(8192).read_to_end(&mut buf).await.ok()?;
        Some(String::from_utf8_lossy(&buf).into_owned())
    };
    let Ok(Some(text)) = tokio::time::timeout(timeout, work).await else {
        return;
    };
    let field = |name: &str| {
        text.split(&format!("\"{name}\":"))
            .nth(1)
            .map(|r| r.split([',', '}']).next().unwrap_or("").trim().to_owned())
    };
    h.not_ready.store(
        field("ready").as_deref() == Some("false"),
        Ordering::Relaxed,
    );
    if let Some(n) = field("sessions").and_then(|v| v.parse::<i64>().ok()) {
        h.reported_sessions
            .store(n.clamp(0, u32::MAX as i64) as u32, Ordering::Relaxed);
    }
}

async fn probe_loop(h: Arc<EngineHealth>, ops: Arc<Ops>, metrics: EdgeMetrics) {
    let mut rng = fastrand::Rng::new();
    loop {
        let snap = ops.config.load_full();
        let cfg = snap.config.edge.health.clone();
        let engine = snap
            .topology
            .engines
            .iter()
            .find(|e| e.address == h.address);
        let proto = engine.map(|e| e.proxy).unwrap_or_default();
        let ops_addr = engine.and_then(|e| e.ops);
        let source = source_for(&snap.config.edge.source_addresses, h.address);
        drop(snap);
        // Spread probes so many edges do not hit an engine in lockstep.
        let jitter = cfg.interval.get().mul_f64(0.9 + 0.2 * rng.f64());
        tokio::select! {
            _ = tokio::time::sleep(jitter) => {}
            _ = ops.shutdown.cancelled() => return,
        }
        if !h.current.load(Ordering::Relaxed) {
            return;
        }
        let ok = probe(h.address, source, proto, cfg.timeout.get()).await;
        metrics.probe(h.address, ok.is_ok());
        if let Some(a) = ops_addr {
            load_report(&h, a, cfg.timeout.get()).await;
        }
        let streak = h.streak.fetch_add(1, Ordering::Relaxed) + 1;
        match (h.healthy(), &ok) {
            (true, Ok(())) | (false, Err(_)) => h.streak.store(0, Ordering::Relaxed),
            (true, Err(e)) if streak >= cfg.fall => {
                transition(&h, false, &format!("probe failed: {e}"), &cfg, &metrics)
            }
            (false, Ok(())) if streak >= rise_needed(&h, &cfg) => {
                transition(&h, true, "probes passed", &cfg, &metrics)
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Engines trust edges by address: with `edge.source_addresses` the engine must see that
    /// address, not the kernel's pick (regression: on loopback it was always 127.0.0.1).
    fn health() -> EngineHealth {
        EngineHealth::new("127.0.0.1:25".parse().unwrap(), "lon1/uk".into())
    }

    /// An engine that keeps flapping needs ever more probes to come back; a stable one does
    /// not (regression: the fleet's flapping engine went down and up with every cycle).
    #[test]
    fn flapping_engines_need_more_probes_to_come_back() {
        let cfg = crate::config::HealthConfig::default(); // 2 s interval, rise 2
        let h = health();
        note_flip(&h, false, 10_000, &cfg); // first failure since start: not a flap
        assert_eq!(rise_needed(&h, &cfg), 2);
        let mut t = 10_000;
        for want in [4, 8, 16, 16] {
            t += 5_000;
            note_flip(&h, true, t, &cfg);
            t += 5_000; // down again 5 s after coming up: a flap
            note_flip(&h, false, t, &cfg);
            assert_eq!(rise_needed(&h, &cfg), want);
        }
        note_flip(&h, true, t, &cfg);
        note_flip(&h, false, t + 61_000, &cfg); // up for 30 intervals: history forgotten
        assert_eq!(rise_needed(&h, &cfg), 2);
    }

    #[tokio::test]
    async fn engine_connections_leave_from_the_configured_source() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let src: IpAddr = "127.0.0.7".parse().unwrap();
        let sources = [IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]), src];
        assert_eq!(source_for(&sources, addr), Some(src), "first of the family");
        let (_c, accepted) =
            tokio::join!(connect_from(addr, source_for(&sources, addr)), l.accept());
        assert_eq!(accepted.unwrap().1.ip(), src);
        let (_c, accepted) = tokio::join!(connect_from(addr, None), l.accept());
        assert_eq!(accepted.unwrap().1.ip(), IpAddr::from([127, 0, 0, 1]));
    }
}

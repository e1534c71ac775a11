//! `maildistiller_edge_*` metrics. Engine labels are bounded by the configured engines; tenant
//! and cluster labels by the configured tenants and clusters.

use std::net::SocketAddr;

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts};

use crate::ops::Metrics;

#[derive(Debug, Clone)]
pub struct EdgeMetrics {
    pub connections: IntCounterVec,
    refused: IntCounterVec,
    pub sessions: IntGauge,
    routed: IntCounterVec,
    engine_up: IntGaugeVec,
    probes: IntCounterVec,
    connect_failures: IntCounterVec,
}

impl EdgeMetrics {
    pub fn new(m: &Metrics) -> EdgeMetrics {
        let c = |name: &str, help: &str, labels: &[&str]| {
            let v = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            m.register(Box::new(v.clone()));
            v
        };
        let sessions =
            IntGauge::new("edge_sessions", "Open client connections.").expect("valid metric");
        m.register(Box::new(sessions.clone()));
        let engine_up = IntGaugeVec::new(
            Opts::new(
                "edge_engine_up",
                "1 when the engine passes its health checks.",
            ),
            &["engine", "cluster"],
        )
        .expect("valid metric");
        m.register(Box::new(engine_up.clone()));
        EdgeMetrics {
            connections: c(
                "edge_connections_total",
                "Client connections accepted, by listener mode.",
                &["mode"],
            ),
            refused: c(
                "edge_refused_total",
                "Client connections refused before or at the banner, by reason.",
                &["reason"],
            ),
            sessions,
            routed: c(
                "edge_routed_total",
                "Routing outcomes: routed (by tenant and cluster) or why not.",
                &["tenant", "cluster", "result"],
            ),
            engine_up,
            probes: c(
                "edge_probes_total",
                "Engine health probes by result.",
                &["engine", "result"],
            ),
            connect_failures: c(
                "edge_engine_connect_failures_total",
                "Failed connections to engines.",
                &["engine"],
            ),
        }
    }

    pub fn refused(&self, reason: &str) {
        self.refused.with_label_values(&[reason]).inc();
    }
    pub fn routed(&self, tenant: &str, cluster: &str, result: &str) {
        self.routed
            .with_label_values(&[tenant, cluster, result])
            .inc();
    }
    pub fn engine_up(&self, a: SocketAddr, cluster: &str, up: bool) {
        self.engine_up
            .with_label_values(&[a.to_string().as_str(), cluster])
            .set(i64::from(up));
    }
    pub fn probe(&self, a: SocketAddr, ok: bool) {
        self.probes
            .with_label_values(&[a.to_string().as_str(), if ok { "ok" } else { "fail" }])
            .inc();
    }
    pub fn connect_failure(&self, a: SocketAddr) {
        self.connect_failures
            .with_label_values(&[&a.to_string()])
            .inc();
    }
}

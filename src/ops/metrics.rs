//! The process's Prometheus registry. Every metric is named `maildistiller_*` and carries the
//! constant labels `role` (the roles this process runs) and `silo`. Roles register their own
//! metrics here (`maildistiller_edge_*`, `maildistiller_engine_*`, `maildistiller_dns_*`).

use std::collections::HashMap;

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    reload_total: IntCounterVec,
    geo_reload_total: IntCounterVec,
    api_auth_total: IntCounterVec,
    config_info: IntGaugeVec,
    tls_expiry: IntGaugeVec,
}

impl Metrics {
    pub fn new(role: &str, silo: &str) -> Metrics {
        let labels = HashMap::from([
            ("role".to_owned(), role.to_owned()),
            ("silo".to_owned(), silo.to_owned()),
        ]);
        let registry = Registry::new_custom(Some("maildistiller".into()), Some(labels))
            .expect("constant labels are valid");
        let reload_total = IntCounterVec::new(
            Opts::new(
                "config_reload_total",
                "Config reloads by result (ok, error).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let geo_reload_total = IntCounterVec::new(
            Opts::new(
                "geo_reload_total",
                "Geo database file reloads by result (ok, error).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let api_auth_total = IntCounterVec::new(
            Opts::new(
                "ops_api_requests_total",
                "Requests to the operator API (reload, drains, queue) by credential check: ok, \
                 missing (401), wrong (403), disabled (403: no ops.token_file).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let config_info = IntGaugeVec::new(
            Opts::new("config_info", "The config version in force (value 1)."),
            &["version"],
        )
        .expect("valid metric");
        let tls_expiry = IntGaugeVec::new(
            Opts::new(
                "tls_certificate_expiry_timestamp_seconds",
                "notAfter of the certificate in use, per listener.",
            ),
            &["listener"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(tls_expiry.clone()))
            .expect("registered once");
        for m in [&reload_total, &geo_reload_total, &api_auth_total] {
            registry
                .register(Box::new(m.clone()))
                .expect("registered once");
        }
        registry
            .register(Box::new(config_info.clone()))
            .expect("registered once");
        for r in ["ok", "error"] {
            reload_total.with_label_values(&[r]);
            geo_reload_total.with_label_values(&[r]);
        }
        Metrics {
            registry,
            reload_total,
            geo_reload_total,
            api_auth_total,
            config_info,
            tls_expiry,
        }
    }

    /// Records the certificate in use on a listener (`edge`, `engine`, `webmail`).
    pub fn tls_expiry(&self, listener: &str, not_after: Option<u64>) {
        match not_after {
            Some(t) => self.tls_expiry.with_label_values(&[listener]).set(t as i64),
            None => {
                let _ = self.tls_expiry.remove_label_values(&[listener]);
            }
        }
    }

    pub fn reload(&self, result: &str) {
        self.reload_total.with_label_values(&[result]).inc();
    }

    pub fn api_auth(&self, result: &str) {
        self.api_auth_total.with_label_values(&[result]).inc();
    }

    pub fn geo_reload(&self, result: &str) {
        self.geo_reload_total.with_label_values(&[result]).inc();
    }

    pub fn config_info(&self, version: &str) {
        self.config_info.reset();
        self.config_info.with_label_values(&[version]).set(1);
    }

    /// Registers a role's collector; a name clash is a programming error.
    pub fn register(&self, c: Box<dyn prometheus::core::Collector>) {
        self.registry.register(c).expect("metric names are unique");
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding error: {e}\n"))
    }
}

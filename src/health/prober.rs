//! A [`Prober`] keeps a set of targets (socket addresses) under active checks and publishes
//! whether each is up, for hot paths to read without locks.
//!
//! Lifecycle: the owner calls [`Prober::set_targets`] with the addresses it cares about (again
//! on every config reload); each new target gets one task that probes it every `interval`
//! (start to start, each probe bounded by `timeout`) and feeds the result to its
//! [`Verdict`]; removed targets' tasks stop. Every state change bumps
//! [`Prober::generation`] and wakes [`Prober::wait_change`], so readers rebuild what they derive
//! from health only when something changed. Cancelling the shutdown token stops every task.
//!
//! Bounds: one task per distinct target address; no queue; at most one probe in flight per
//! target. A target leaves within `interval × fall` (plus one `timeout` when it stops answering
//! rather than refusing) and returns within `interval × rise`.
//!
//! Metrics, under the prober's name `N` (`dns`, `edge`): `maildistiller_N_health_up{target}`,
//! `maildistiller_N_health_transitions_total{target,to}`,
//! `maildistiller_N_health_probes_total{result}`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::check::{Check, ProbeError};
use super::state::{Status, Verdict};
use crate::config::HealthConfig;
use crate::ops::Metrics;

/// One probed address.
#[derive(Debug)]
struct Target {
    addr: SocketAddr,
    up: AtomicBool,
    settings: ArcSwap<HealthConfig>,
    cancel: CancellationToken,
    report: Mutex<Report>,
}

/// What `/status` shows about a target.
#[derive(Debug, Clone, Default)]
struct Report {
    decided: bool,
    last_error: Option<String>,
    since: Option<SystemTime>,
}

/// A read-only view of one target, for status pages and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetView {
    pub addr: SocketAddr,
    pub status: Status,
    /// False until the first probe finished (the target counts as up until then).
    pub decided: bool,
    /// The last probe's error, if it failed.
    pub last_error: Option<String>,
    /// When the current status began.
    pub since: Option<SystemTime>,
}

#[derive(Debug)]
struct ProbeMetrics {
    up: IntGaugeVec,
    transitions: IntCounterVec,
    ok: IntCounter,
    failed: IntCounter,
}

impl ProbeMetrics {
    fn new(name: &str, metrics: &Metrics) -> ProbeMetrics {
        let up = IntGaugeVec::new(
            Opts::new(
                format!("{name}_health_up"),
                "Whether a probed target is up (1) or down (0).",
            ),
            &["target"],
        )
        .expect("valid metric");
        let transitions = IntCounterVec::new(
            Opts::new(
                format!("{name}_health_transitions_total"),
                "Health state changes of probed targets, by the state entered.",
            ),
            &["target", "to"],
        )
        .expect("valid metric");
        let probes = IntCounterVec::new(
            Opts::new(
                format!("{name}_health_probes_total"),
                "Health probes run, by result (ok, failed).",
            ),
            &["result"],
        )
        .expect("valid metric");
        metrics.register(Box::new(up.clone()));
        metrics.register(Box::new(transitions.clone()));
        metrics.register(Box::new(probes.clone()));
        ProbeMetrics {
            ok: probes.with_label_values(&["ok"]),
            failed: probes.with_label_values(&["failed"]),
            up,
            transitions,
        }
    }
}

/// Probes a set of targets; see the module docs.
#[derive(Debug)]
pub struct Prober {
    name: String,
    check: Arc<dyn Check>,
    targets: ArcSwap<HashMap<SocketAddr, Arc<Target>>>,
    generation: AtomicU64,
    changed: Notify,
    metrics: ProbeMetrics,
    shutdown: CancellationToken,
    runtime: tokio::runtime::Handle,
    /// Serialises `set_targets`.
    reconcile: Mutex<()>,
}

impl Prober {
    /// A prober named `name` (the metric prefix and log field). Must be called inside a tokio
    /// runtime: probe tasks are spawned on it, also when `set_targets` is called from another
    /// thread. Registers its metrics in `metrics` (one prober per name per registry).
    pub fn new(
        name: &str,
        check: Arc<dyn Check>,
        metrics: &Metrics,
        shutdown: CancellationToken,
    ) -> Arc<Prober> {
        Arc::new(Prober {
            name: name.to_owned(),
            check,
            targets: ArcSwap::from_pointee(HashMap::new()),
            generation: AtomicU64::new(0),
            changed: Notify::new(),
            metrics: ProbeMetrics::new(name, metrics),
            shutdown,
            runtime: tokio::runtime::Handle::current(),
            reconcile: Mutex::new(()),
        })
    }

    /// Makes `addrs` the probed set: new targets start probing now (up until their first
    /// result), kept ones take the new settings at their next probe, dropped ones stop.
    pub fn set_targets(self: &Arc<Self>, addrs: &[SocketAddr], settings: &HealthConfig) {
        let _guard = self.reconcile.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.targets.load_full();
        let mut next = HashMap::with_capacity(addrs.len());
        let mut changed = false;
        for &addr in addrs {
            if next.contains_key(&addr) {
                continue;
            }
            let target = match current.get(&addr) {
                Some(t) => {
                    t.settings.store(Arc::new(settings.clone()));
                    t.clone()
                }
                None => {
                    changed = true;
                    let t = Arc::new(Target {
                        addr,
                        up: AtomicBool::new(true),
                        settings: ArcSwap::from_pointee(settings.clone()),
                        cancel: self.shutdown.child_token(),
                        report: Mutex::new(Report::default()),
                    });
                    self.metrics
                        .up
                        .with_label_values(&[&addr.to_string()])
                        .set(1);
                    self.runtime.spawn(self.clone().run(t.clone()));
                    t
                }
            };
            next.insert(addr, target);
        }
        for (addr, t) in current.iter() {
            if !next.contains_key(addr) {
                changed = true;
                t.cancel.cancel();
                let _ = self.metrics.up.remove_label_values(&[&addr.to_string()]);
            }
        }
        self.targets.store(Arc::new(next));
        if changed {
            self.bump();
        }
    }

    /// Whether `addr` is up; `None` when it is not a target.
    pub fn is_up(&self, addr: SocketAddr) -> Option<bool> {
        self.targets
            .load()
            .get(&addr)
            .map(|t| t.up.load(Ordering::Acquire))
    }

    /// Increases on every state change and every change of the target set.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Waits until the generation differs from `seen`; returns the new one.
    pub async fn wait_change(&self, seen: u64) -> u64 {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = self.generation();
            if now != seen {
                return now;
            }
            notified.await;
        }
    }

    /// Every target, sorted by address.
    pub fn targets(&self) -> Vec<TargetView> {
        let map = self.targets.load();
        let mut v: Vec<TargetView> = map
            .values()
            .map(|t| {
                let r = t.report.lock().unwrap_or_else(|e| e.into_inner()).clone();
                TargetView {
                    addr: t.addr,
                    status: if t.up.load(Ordering::Acquire) {
                        Status::Up
                    } else {
                        Status::Down
                    },
                    decided: r.decided,
                    last_error: r.last_error,
                    since: r.since,
                }
            })
            .collect();
        v.sort_by_key(|t| t.addr);
        v
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    async fn run(self: Arc<Self>, t: Arc<Target>) {
        let mut verdict = Verdict::new();
        loop {
            let settings = t.settings.load_full();
            let started = tokio::time::Instant::now();
            let result = tokio::select! {
                r = tokio::time::timeout(settings.timeout.get(), self.check.check(t.addr)) => {
                    r.unwrap_or(Err(ProbeError::Timeout))
                }
                _ = t.cancel.cancelled() => return,
            };
            let ok = result.is_ok();
            if ok {
                self.metrics.ok.inc();
            } else {
                self.metrics.failed.inc();
            }
            let transition = verdict.observe(ok, settings.rise, settings.fall);
            {
                let mut r = t.report.lock().unwrap_or_else(|e| e.into_inner());
                if !r.decided || transition.is_some() {
                    r.since = Some(SystemTime::now());
                }
                r.decided = true;
                r.last_error = result.as_ref().err().map(|e| e.to_string());
            }
            if let Some(status) = transition {
                self.transition(&t, status, result.err());
            }
            tokio::select! {
                _ = tokio::time::sleep_until(started + settings.interval.get()) => {}
                _ = t.cancel.cancelled() => return,
            }
        }
    }

    fn transition(&self, t: &Target, status: Status, error: Option<ProbeError>) {
        t.up.store(status.is_up(), Ordering::Release);
        let target = t.addr.to_string();
        self.metrics
            .up
            .with_label_values(&[&target])
            .set(i64::from(status.is_up()));
        self.metrics
            .transitions
            .with_label_values(&[&target, status.as_str()])
            .inc();
        match (status, error) {
            (Status::Down, Some(e)) => {
                tracing::warn!(prober = %self.name, target = %target, error = %e, "health: target down")
            }
            (Status::Down, None) => {
                tracing::warn!(prober = %self.name, target = %target, "health: target down")
            }
            (Status::Up, _) => {
                tracing::info!(prober = %self.name, target = %target, "health: target up")
            }
        }
        self.bump();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;
    use async_trait::async_trait;
    use std::collections::HashSet;
    use std::time::Duration;

    /// A check whose answer the test decides per address.
    #[derive(Debug, Default)]
    struct Switch(Mutex<HashSet<SocketAddr>>);

    impl Switch {
        fn set(&self, a: SocketAddr, up: bool) {
            let mut s = self.0.lock().unwrap();
            if up {
                s.insert(a);
            } else {
                s.remove(&a);
            }
        }
    }

    #[async_trait]
    impl Check for Switch {
        async fn check(&self, target: SocketAddr) -> Result<(), ProbeError> {
            if self.0.lock().unwrap().contains(&target) {
                Ok(())
            } else {
                Err(ProbeError::Closed)
            }
        }
    }

    fn fast() -> HealthConfig {
        HealthConfig {
            interval: Dur::millis(20),
            timeout: Dur::millis(20),
            rise: 2,
            fall: 2,
        }
    }

    async fn until(p: &Prober, addr: SocketAddr, up: bool) {
        let mut seen = p.generation();
        let wait = async {
            while p.is_up(addr) != Some(up) || !p.targets().iter().all(|t| t.decided) {
                seen = tokio::select! {
                    g = p.wait_change(seen) => g,
                    // `decided` does not bump the generation; look again shortly.
                    _ = tokio::time::sleep(Duration::from_millis(10)) => seen,
                };
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .unwrap_or_else(|_| panic!("{addr} never became up={up}"));
    }

    #[tokio::test]
    async fn targets_follow_their_checks_and_report_transitions() {
        let metrics = Metrics::new("test", "x");
        let switch = Arc::new(Switch::default());
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        switch.set(a, true);
        let p = Prober::new("t", switch.clone(), &metrics, CancellationToken::new());
        p.set_targets(&[a, b, b], &fast());
        assert_eq!(p.targets().len(), 2, "duplicates are one target");
        until(&p, a, true).await;
        until(&p, b, false).await;

        switch.set(a, false);
        until(&p, a, false).await;
        switch.set(b, true);
        until(&p, b, true).await;

        let text = metrics.render();
        let value = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .and_then(|l| l.rsplit(' ').next())
                .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
                .to_owned()
        };
        let down = r#"maildistiller_t_health_transitions_total{target="127.0.0.1:1",to="down","#;
        assert_eq!(value(down), "1");
        assert_eq!(
            value(r#"maildistiller_t_health_up{target="127.0.0.1:2","#),
            "1"
        );

        p.set_targets(&[b], &fast());
        assert_eq!(p.is_up(a), None, "dropped target");
        assert!(
            !metrics
                .render()
                .contains(r#"maildistiller_t_health_up{target="127.0.0.1:1""#),
            "a dropped target's gauge is removed"
        );
    }

    #[tokio::test]
    async fn shutdown_stops_probing() {
        let metrics = Metrics::new("test", "x");
        let switch = Arc::new(Switch::default());
        let token = CancellationToken::new();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let p = Prober::new("t", switch.clone(), &metrics, token.clone());
        p.set_targets(&[a], &fast());
        until(&p, a, false).await;
        token.cancel();
        switch.set(a, true);
        let seen = p.generation();
        let changed = tokio::time::timeout(Duration::from_millis(200), p.wait_change(seen)).await;
        assert!(changed.is_err(), "no probe ran after shutdown");
        assert_eq!(p.is_up(a), Some(false));
    }
}

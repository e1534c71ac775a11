//! Probe settings shared by the edge (engines) and GeoDNS (silo edges).

use serde::{Deserialize, Serialize};

use super::units::Dur;
use super::validate::Checker;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Time between probes. Default 2 s.
    pub interval: Dur,
    /// Probe timeout. Default 1 s.
    pub timeout: Dur,
    /// Consecutive successes to come up. Default 2.
    pub rise: u32,
    /// Consecutive failures to go down. Default 2.
    pub fall: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: Dur::secs(2),
            timeout: Dur::secs(1),
            rise: 2,
            fall: 2,
        }
    }
}

impl HealthConfig {
    pub fn check(&self, p: &str, k: &mut Checker) {
        k.dur(&format!("{p}.interval"), self.interval, 100, 3600);
        k.dur(&format!("{p}.timeout"), self.timeout, 10, 600);
        if self.timeout > self.interval {
            k.err(
                format!("{p}.timeout"),
                "must not be longer than the interval",
            );
        }
        k.range(&format!("{p}.rise"), self.rise.into(), 1, 100);
        k.range(&format!("{p}.fall"), self.fall.into(), 1, 100);
    }
}

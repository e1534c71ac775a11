//! Health of the things we route to: active probes with interval / rise / fall, passive
//! ejection, and the shared state routing reads.

mod config;

pub use config::HealthConfig;

//! Health of the things we route to: active probes with interval / rise / fall, and the shared
//! state hot paths read without locks.
//!
//! | file | owns |
//! |---|---|
//! | `config.rs` | [`HealthConfig`]: interval, timeout, rise, fall |
//! | `state.rs` | [`Verdict`]: the rise/fall state machine, sans I/O |
//! | `check.rs` | [`Check`]: what one probe does; [`SmtpBanner`] (connect, 220, QUIT) |
//! | `prober.rs` | [`Prober`]: one task per target, lock-free status, generation counter, metrics |
//!
//! GeoDNS probes silo edges with it; the edge reuses it for engines with its own [`Check`].

mod check;
mod prober;
mod state;

pub use check::{Check, Greeting, MAX_GREETING, ProbeError, SmtpBanner, greeting};
pub use prober::{Prober, TargetView};
pub use state::{Status, Verdict};

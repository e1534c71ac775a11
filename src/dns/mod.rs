//! GeoDNS (`--role dns`): the authoritative server of the service's zone. Sending MTAs resolve
//! the names tenants publish as MX targets; the answer decides which silo's edges get the mail.
//! The only module that names hickory types.
//!
//! | file | owns |
//! |---|---|
//! | `records.rs` | `[[dns.record]]` values parsed by hickory-proto (the schema is `config::dns`) |
//! | `zone.rs` | the zone of one config snapshot, as pre-encoded wire records (hickory-proto encodes them) |
//! | `state.rs` | the plan answers are made from: zone + health overlay; reload, health, drain |
//! | `wire.rs` | parsing queries (header, question, EDNS0, ECS), sans I/O, no allocation |
//! | `answer.rs` | one query to one answer: the hot path |
//! | `server.rs` | UDP worker threads (SO_REUSEPORT), TCP with pipelining, shutdown |
//! | `metrics.rs` | per-worker counters flushed to Prometheus |
//! | `status.rs` | the `/status` section and `POST /-/dns/drain`, `/-/dns/undrain` |
//! | `explain.rs` | `maildistiller dns-explain` |
//!
//! Why our own loops rather than hickory-server's `Server` (so hickory-server is not a
//! dependency at all): its per-request task, `Request` decoding and `Message` encoding cost
//! several times what answering does here (parse in place, copy pre-encoded records, patch ID,
//! flags, counts and ECS), and it cannot read PROXY headers.
//! hickory-proto still does what it is good at: parsing record values from the config and encoding
//! every record the zone serves; `dns-explain` and the tests decode our answers with it.
//!
//! Lifecycle: `bind` (listeners, first plan, probes) → `Bound::serve` (answers until
//! `ops.shutdown`). SIGHUP or `POST /-/reload` swaps the config; the next query rebuilds the
//! plan from it (a broken file never gets this far: the old config keeps serving). A health
//! transition or a drain through the ops API takes effect at the next query too.

mod answer;
mod explain;
mod metrics;
mod records;
mod server;
mod state;
mod status;
mod wire;
mod zone;

pub use explain::explain;
pub use records::check_records;
pub use server::{Bound, bind, udp_group};
pub use state::{DnsState, SiloState};

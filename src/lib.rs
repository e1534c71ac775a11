//! maildistiller: an inbound email-hygiene service, one binary with roles.
//!
//! # Layout
//!
//! From the floor up: a room imports only rooms above it in this table's order of dependence
//! (`python3 ops/check_layers.py` prints the graph and fails on a circle).
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | the floor: the schema operators write (one file per section), reading with every error collected, validation. Imports no role |
//! | [`hash`] | FNV-1a: config and policy versions |
//! | [`geo`] | MaxMind DB lookups (the only module naming `maxminddb`), the country table, distances, CIDR overrides |
//! | [`topology`] | silos, clusters, engines, tenants; routing decisions (pure, table-tested) |
//! | [`snapshot`] | one validated config with its topology and geo locator, swapped atomically on reload |
//! | [`proxy`] | PROXY v1/v2 headers between edge and engine, with our TLVs (session id, tenant, country, TLS) |
//! | [`smtp`] | sans-I/O SMTP: commands, replies (every one we write, named once), the receiving session both engine and edge run, the DATA end-of-data recogniser (shared by engine, edge, delivery) |
//! | [`tls`] | rustls in one place: certificates and keys into server configs (and the self-signed pair of the loopback default), the ring provider; the sending side: STARTTLS handshakes judged against a delivery's policy, trust anchors, pins |
//! | [`net`] | listening sockets: binding (SO_REUSEPORT, backlog) and the one bounded accept loop of edge and engine |
//! | [`sys`] | the only `unsafe`: systemd socket activation, GeoDNS `recvmmsg`/`sendmmsg` and its SO_REUSEPORT CPU steering, `statvfs`, the monotonic clock |
//! | [`ops`] | metrics, `/healthz`, `/readyz`, `/status`, signals, reload and shutdown |
//! | [`health`] | active probes (interval, rise, fall), passive ejection, shared health state |
//! | [`explain`] | the text of `maildistiller check`, `route` and `geo` |
//! | [`edge`] | the edge: listeners, admission, the SMTP-aware front session, routing to engines, layer-4 mode |
//! | [`dns`] | GeoDNS: authoritative answers by location and silo health; the only module naming hickory types |
//! | [`shared`] | what every node must know, through one Redis/Valkey deployment (the only module naming `redis`): outbreak sightings, greylisting, fleet-wide sender rates, the intelligence feed; deadlines and fail-open |
//! | [`store`] | the engine's messages: the durable spool and its in-memory index behind one owner; message states and the one table of moves between them |
//! | [`shadow`] | cluster redundancy: shadow copies of acknowledged mail on another engine of the cluster, the copy log, the authenticated replication channel, takeover; the failure model |
//! | [`engine`] | the MDE: SMTP reception, recipient verification (recipient files, call-ahead), scan + policy, delivery, quarantine expiry, the queue API (every message in the store), learning from users' reports |
//! | [`webmail`] | held and quarantined mail over HTTPS, beside the engine: talks to the store, never to the running engine (its learning buttons use the engine room's teacher, a library) |
//! | [`node`] | loads a config with the schema's and every role's checks into a snapshot |
//! | [`cli`] | the top: the command line (the only module naming clap), running roles, exit codes |
//!
//! The binary (`src/main.rs`) is `cli::main`: parse the command line, load and validate the
//! config without binding anything, then bind and run the roles it was asked for.

// No unsafe code anywhere but `sys`, which says why it needs it.
#![deny(unsafe_code)]

pub mod cli;
pub mod config;
pub mod dns;
pub mod edge;
pub mod engine;
pub mod explain;
pub mod geo;
pub mod hash;
pub mod health;
pub mod net;
pub mod node;
pub mod ops;
pub mod proxy;
pub mod shadow;
pub mod shared;
pub mod smtp;
pub mod snapshot;
pub mod store;
pub mod sys;
pub mod tls;
pub mod topology;
pub mod webmail;

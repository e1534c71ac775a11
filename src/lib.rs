//! maildistiller: an inbound email-hygiene service, one binary with roles.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | the floor: the schema operators write (one file per section), reading with every error collected, validation. Imports no role |
//! | [`hash`] | FNV-1a: config and policy versions, the DNS name table's hasher |
//! | [`geo`] | MaxMind DB lookups (the only module naming `maxminddb`), the country table, distances, CIDR overrides |
//! | [`topology`] | silos, clusters, engines, tenants; routing decisions (pure, table-tested) |
//! | [`snapshot`] | one validated config with its topology and geo locator, swapped atomically on reload |
//! | [`proxy`] | PROXY v1/v2 headers between edge and engine, with our TLVs (session id, tenant, country, TLS) |
//! | [`smtp`] | sans-I/O SMTP: commands, replies (every one we write, named once), the receiving session both engine and edge run, the DATA end-of-data recogniser (shared by engine, edge, delivery) |
//! | [`net`] | listening sockets: binding (SO_REUSEPORT, backlog) and the one bounded accept loop of edge and engine |
//! | [`sys`] | the only `unsafe`: adopting sockets from systemd socket activation |
//! | [`ops`] | metrics, `/healthz`, `/readyz`, `/status`, signals, reload and shutdown |
//! | [`explain`] | the text of `maildistiller check`, `route` and `geo` |
//! | [`health`] | active probes (interval, rise, fall), passive ejection, shared health state |
//! | [`edge`] | the edge: listeners, admission, the SMTP-aware front session, routing to engines, layer-4 mode |
//! | [`dns`] | GeoDNS: the only module naming hickory types |
//! | [`engine`] | the MDE: SMTP reception, scan + policy, spool, delivery, webmail |
//! | [`node`] | the top: loads a config with the schema's and every role's checks into a snapshot |
//!
//! The binary (`src/main.rs`) parses the command line, loads and validates the config without
//! binding anything, then binds and runs the roles it was asked for.

// No unsafe code anywhere but `sys` (socket activation), which says why it needs it.
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
pub mod smtp;
pub mod snapshot;
pub mod sys;
pub mod tls;
pub mod topology;

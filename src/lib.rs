//! maildistiller: an inbound email-hygiene service, one binary with roles.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | the TOML model, reading with every error collected, validation, the reloadable [`config::Snapshot`] |
//! | [`geo`] | MaxMind DB lookups (the only module naming `maxminddb`), the country table, distances, CIDR overrides |
//! | [`topology`] | silos, clusters, engines, tenants; routing decisions (pure, table-tested) |
//! | [`ops`] | metrics, `/healthz`, `/readyz`, `/status`, signals, reload and shutdown |
//! | [`explain`] | the text of `maildistiller check`, `route` and `geo` |
//!
//! The binary (`src/main.rs`) parses the command line, loads and validates the config without
//! binding anything, then binds and runs the roles it was asked for.

#![forbid(unsafe_code)]

pub mod config;
pub mod explain;
pub mod geo;
pub mod ops;
pub mod topology;

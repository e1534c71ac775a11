//! GeoDNS (`--role dns`): the only module that names hickory types.

mod config;

pub use config::DnsConfig;

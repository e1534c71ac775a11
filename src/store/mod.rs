//! The message store: the durable spool and its in-memory index.

pub mod index;
pub mod spool;

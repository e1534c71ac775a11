//! The Maildistiller Engine (MDE, `--role engine`): SMTP reception, scanning, durable spool,
//! delivery to the tenant's servers, held mail.

pub mod policy;

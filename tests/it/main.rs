//! The one integration-test binary: real servers in-process or the real binary as a child
//! process, on 127.0.0.1 with ports chosen by the kernel.

/// check / route / geo as an operator runs them.
mod cli;
/// Every shipped config validates; broken ones report every error with its path.
mod config_files;
/// The real engine binary under SIGKILL: no acknowledged message is lost.
mod crash;
/// TLS on delivery against a STARTTLS sink with a test CA: opportunistic, required, pins, MTA-STS.
mod delivery_tls;
/// GeoDNS in-process: geo answers, ECS scope, tenants, MX, negative cases, TC/TCP, health, fuzz.
mod dns;
/// The edge in front of in-process engines: routing, failover, spill-over, admission, TLS, layer 4.
mod edge;
/// The engine in-process: reception, PROXY, smuggling, delivery, held mail, DSN, recovery.
mod engine;
/// Inbound STARTTLS: self-signed at first start, renewed certificates picked up on reload.
mod inbound_tls;
/// Top-level config keys away from their defaults: include, geo reload interval.
mod keys;
/// Learning from users: the report address, webmail's buttons, `maildistiller learn`, near-copies.
mod learning;
/// Our own classifier learnt from those lessons: a reported message's near-copy scores as spam at once, a restart keeps it.
mod learnt;
/// SMTP test peers: a client command language and a recording sink.
mod mail;
/// The real binary: /healthz, /readyz, /metrics, SIGHUP reload, SIGTERM drain.
mod ops_process;
/// Scanning without the engine: fixture cases per scanner, hostile input, policies, clamd, rspamd.
mod scan;
/// Cluster redundancy: shadow copies, takeover, each failure of the model in-process.
mod shadow;
/// The fleet's shared store against a real redis-server: campaigns, greylisting, Redis killed.
mod shared;
/// SMTP smuggling and bare line ends (`engine.bare_newline`), at the engine and through the edge.
mod smuggling;
/// Helpers: temp configs, the binary, a tiny HTTP client.
mod support;
/// Recipient verification: 550 at RCPT through the edge, call-ahead cache, held mail while down, recipient files.
mod verify;
/// Webmail over HTTPS: sign-in, lockout, CSRF, isolation, release/delete, hostile HTML, peers.
mod webmail;

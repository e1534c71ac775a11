//! The one integration-test binary: real servers in-process or the real binary as a child
//! process, on 127.0.0.1 with ports chosen by the kernel.

/// check / route / geo as an operator runs them.
mod cli;
/// Every shipped config validates; broken ones report every error with its path.
mod config_files;
/// The real engine binary under SIGKILL: no acknowledged message is lost.
mod crash;
/// GeoDNS in-process: geo answers, ECS scope, tenants, MX, negative cases, TC/TCP, health, fuzz.
mod dns;
/// The edge in front of in-process engines: routing, failover, spill-over, admission, TLS, layer 4.
mod edge;
/// The engine in-process: reception, PROXY, smuggling, delivery, held mail, DSN, recovery.
mod engine;
/// SMTP test peers: a client command language and a recording sink.
mod mail;
/// The real binary: /healthz, /readyz, /metrics, SIGHUP reload, SIGTERM drain.
mod ops_process;
/// Scanning without the engine: fixture cases per scanner, hostile input, policies, clamd, rspamd.
mod scan;
/// The fleet's shared store against a real redis-server: campaigns, greylisting, Redis killed.
mod shared;
/// Helpers: temp configs, the binary, a tiny HTTP client.
mod support;
/// Webmail over HTTPS: sign-in, lockout, CSRF, isolation, release/delete, hostile HTML, peers.
mod webmail;

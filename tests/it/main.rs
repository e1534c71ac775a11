//! The one integration-test binary: real servers in-process or the real binary as a child
//! process, on 127.0.0.1 with ports chosen by the kernel.

mod cli; // check / route / geo as an operator runs them
mod config_files; // every shipped config validates; broken ones report every error with its path
mod ops_process;
mod support; // helpers: temp configs, the binary, a tiny HTTP client // the real binary: /healthz, /readyz, /metrics, SIGHUP reload, SIGTERM drain

//! systemd's readiness protocol (sd_notify(3)), so `Type=notify` units know when a node really
//! serves: `READY=1` once every listener of every role is bound (and the geo database, policies
//! and spool are loaded — they are, before binding), `RELOADING=1` … `READY=1` around a config
//! reload, `STOPPING=1` when the drain starts, and `WATCHDOG=1` every half `WatchdogSec` while
//! the runtime answers (a wedged runtime stops petting, and systemd restarts the node).
//!
//! Without `NOTIFY_SOCKET` (not started by systemd) every call does nothing. The socket is a
//! Unix datagram socket, a path or an abstract name (`@…`); no unsafe code is needed.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends `state` (newline-separated `KEY=VALUE` lines) to systemd, if it is listening.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = (|| -> std::io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            sock.send_to(state.as_bytes(), &path)?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// The process is serving.
pub fn ready(status: &str) {
    notify(&format!("READY=1\nSTATUS={status}"));
}

/// A reload starts; [`ready`] ends it (whether the new config was taken or refused).
pub fn reloading() {
    notify(&format!(
        "RELOADING=1\nMONOTONIC_USEC={}",
        crate::sys::monotonic_usec()
    ));
}

/// The drain started.
pub fn stopping() {
    notify("STOPPING=1\nSTATUS=draining");
}

/// How often to pet systemd's watchdog: half of `WATCHDOG_USEC`, when it is meant for this
/// process (`WATCHDOG_PID` unset or ours).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Pets the watchdog until `shutdown`; runs on the runtime it vouches for.
pub async fn watchdog(shutdown: tokio_util::sync::CancellationToken) {
    let Some(every) = watchdog_interval() else {
        return;
    };
    loop {
        notify("WATCHDOG=1");
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

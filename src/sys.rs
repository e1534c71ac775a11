//! The one place that needs `unsafe`: adopting listening sockets passed by systemd socket
//! activation (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`; sd_listen_fds(3)). File descriptors
//! 3.. are owned by this process once `LISTEN_PID` names it; each is adopted at most once (the
//! caller takes them at bind time) and checked to be a TCP listener before use.

#![allow(unsafe_code)]

use std::os::fd::FromRawFd;

/// First descriptor systemd passes (SD_LISTEN_FDS_START).
const FIRST_FD: i32 = 3;

/// Sockets passed by systemd for this process, with their names. Empty when not socket-activated.
pub fn listen_fds() -> std::io::Result<Vec<(String, std::net::TcpListener)>> {
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let n: i32 = match std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        Some(n) if pid_ok && (1..=64).contains(&n) => n,
        _ => return Ok(Vec::new()),
    };
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .unwrap_or_default()
        .split(':')
        .map(str::to_owned)
        .collect();
    let mut out = Vec::new();
    for i in 0..n {
        let fd = FIRST_FD + i;
        // SAFETY: systemd passed descriptors FIRST_FD..FIRST_FD+n to this process (LISTEN_PID is
        // ours) and nothing else in the process owns them; each is wrapped exactly once here.
        let l = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        l.local_addr().map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("socket-activated fd {fd} is not a TCP listener: {e}"),
            )
        })?;
        l.set_nonblocking(true)?;
        out.push((names.get(i as usize).cloned().unwrap_or_default(), l));
    }
    Ok(out)
}

//! The GeoDNS benchmark's floor: a UDP "DNS server" that does no DNS. Each query is echoed back
//! with QR set, nothing parsed, nothing counted, nothing looked up. `bench/dns/run.sh` runs it
//! beside gdnsd and `maildistiller --role dns` and divides each server's CPU per query by this
//! one's: what is left above 1.0 is the cost of answering, the rest is the kernel's UDP path.
//!
//! It is a bench tool, not part of the product, built as a cargo example
//! (`cargo build --release --example dns-reflector`) so that it is the same code as ours where it
//! should be: the sockets come from `maildistiller::dns::udp_group` (one SO_REUSEPORT group per
//! address, the same receive buffer, the same steering of datagrams to the socket of the CPU
//! they arrived on, the same read timeout) and the loop uses `maildistiller::sys::UdpBatch`
//! (`recvmmsg` for up to 32 waiting datagrams, one `sendmmsg` for the replies), with the same
//! thread count. A separate C program would have had to copy all of that and could drift from it.
//!
//! Usage: `dns-reflector ADDRESS THREADS` (e.g. `127.0.0.1:15355 2`); runs until killed.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;

/// As `src/dns/server.rs`: datagrams per `recvmmsg`, and the largest query read.
const BATCH: usize = 32;
const BUFFER: usize = 4096;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(threads)) = (args.next(), args.next()) else {
        eprintln!("usage: dns-reflector ADDRESS THREADS");
        return ExitCode::from(64);
    };
    let addr: SocketAddr = addr.parse().expect("ADDRESS: ip:port");
    let threads: usize = threads.parse().expect("THREADS: a number");
    let group = maildistiller::dns::udp_group(addr, threads.max(1)).expect("bind");
    let workers: Vec<_> = group
        .into_iter()
        .map(|sock| std::thread::spawn(move || reflect(&sock)))
        .collect();
    for w in workers {
        let _ = w.join();
    }
    ExitCode::SUCCESS
}

fn reflect(sock: &std::net::UdpSocket) {
    let mut batch = maildistiller::sys::UdpBatch::new(BATCH, BUFFER);
    loop {
        let Ok(n) = batch.recv(sock) else {
            continue; // the read timeout, as our workers see it
        };
        for i in 0..n {
            let (query, from, out) = batch.slot(i);
            if query.len() < 12 || from.is_none() {
                continue;
            }
            out.extend_from_slice(query);
            out[2] |= 0x80;
            batch.answer(i);
        }
        batch.send(sock);
    }
}

//! The load generator of `bench/overload/run.py`: the same sessions as its Python one (one
//! message per connection from source address `127.10.P.H`, the same message), on one thread
//! of a Rust runtime, so that the generator is not what saturates the two cores: the Python
//! one fell seconds behind its schedule at twice the pair's capacity, and its own event loop's
//! lag was counted in the `250`'s latency.
//!
//!     overload-load open   PORT RATE    SECONDS FIRST STEP RUN BODY_BYTES REPLY_TIMEOUT
//!     overload-load closed PORT WORKERS SECONDS FIRST STEP RUN BODY_BYTES REPLY_TIMEOUT
//!
//! `open`: session FIRST, FIRST+STEP, … started at RATE/s on schedule whatever happens to the
//! earlier ones; `closed`: WORKERS sessions back to back. Prints one line per session, `stage
//! TAB reply TAB seconds-from-the-final-dot-to-its-250 (or -) TAB session`, where `stage` is
//! where the session ended (`dot` when the message was answered), then `late TAB seconds`
//! (how far behind its schedule the open loop fell at worst).

use std::cell::{Cell, RefCell};
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;
use tokio::time::{Instant, sleep_until, timeout};

struct Plan {
    port: u16,
    run: String,
    body_bytes: usize,
    reply_timeout: Duration,
}

/// `(stage, reply, dot-to-250 seconds, session)`.
type Outcome = (&'static str, String, Option<f64>, u64);

fn source(k: u64) -> Ipv4Addr {
    let (p, h) = (k % 256, (k / 256) % 32);
    Ipv4Addr::new(127, 10 + (p / 256) as u8, p as u8, h as u8 + 1)
}

fn message(run: &str, i: u64, body_bytes: usize) -> Vec<u8> {
    let head = format!(
        "From: <s{i}@sender{}.example>\r\nTo: <user@tenant.example>\r\nSubject: overload run {run}\r\n\
         Message-ID: <ovl-{run}-{i}@bench.example>\r\nDate: Mon, 07 Dec 2026 18:00:00 +0000\r\n\r\n",
        i % 97
    );
    let line = "The quarterly figures are attached to the minutes of the meeting as agreed.\r\n";
    let lines = (body_bytes.saturating_sub(head.len()) / line.len()).max(1);
    let mut m = head.into_bytes();
    for _ in 0..lines {
        m.extend_from_slice(line.as_bytes());
    }
    m.extend_from_slice(b".\r\n");
    m
}

/// A reply: its code and its first two words (`451 4.3.2`).
async fn reply<R: AsyncBufReadExt + Unpin>(
    r: &mut R,
    limit: Duration,
) -> Result<(String, String), &'static str> {
    let mut line = String::new();
    loop {
        line.clear();
        match timeout(limit, r.read_line(&mut line)).await {
            Err(_) => return Err("timeout"),
            Ok(Err(_)) => return Err("io:Error"),
            Ok(Ok(0)) => return Err("io:ConnectionError"),
            Ok(Ok(_)) => {}
        }
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            let text = line.trim();
            let full: Vec<&str> = text.split_whitespace().take(2).collect();
            return Ok((text.get(..3).unwrap_or(text).to_owned(), full.join(" ")));
        }
    }
}

async fn session(plan: Rc<Plan>, i: u64) -> Outcome {
    let limit = plan.reply_timeout;
    let connect = async {
        let s = TcpSocket::new_v4()?;
        s.bind(SocketAddr::from((source(i), 0)))?;
        s.connect(SocketAddr::from((Ipv4Addr::LOCALHOST, plan.port)))
            .await
    };
    let stream = match timeout(limit, connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => return ("connect", "io:ConnectionError".into(), None, i),
        Err(_) => return ("connect", "timeout".into(), None, i),
    };
    let _ = stream.set_nodelay(true);
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    match reply(&mut r, limit).await {
        Ok((code, _)) if code == "220" => {}
        Ok((_, full)) => return ("banner", full, None, i),
        Err(e) => return ("banner", e.into(), None, i),
    }
    let mail = format!("MAIL FROM:<s{i}@sender{}.example>\r\n", i % 97);
    let steps: [(&'static str, &[u8], &str); 4] = [
        ("ehlo", b"EHLO client.example\r\n", "250"),
        ("mail", mail.as_bytes(), "250"),
        ("rcpt", b"RCPT TO:<user@tenant.example>\r\n", "250"),
        ("data", b"DATA\r\n", "354"),
    ];
    for (stage, cmd, want) in steps {
        if w.write_all(cmd).await.is_err() {
            return (stage, "io:ConnectionError".into(), None, i);
        }
        match reply(&mut r, limit).await {
            Ok((code, _)) if code == want => {}
            Ok((_, full)) => return (stage, full, None, i),
            Err(e) => return (stage, e.into(), None, i),
        }
    }
    if w.write_all(&message(&plan.run, i, plan.body_bytes))
        .await
        .is_err()
    {
        return ("dot", "io:ConnectionError".into(), None, i);
    }
    let t = Instant::now();
    match reply(&mut r, limit).await {
        Ok((code, full)) => {
            let took = t.elapsed().as_secs_f64();
            let _ = w.write_all(b"QUIT\r\n").await;
            ("dot", full, (code == "250").then_some(took), i)
        }
        Err(e) => ("dot", e.into(), None, i),
    }
}

fn arg<T: std::str::FromStr>(args: &[String], n: usize, what: &str) -> T {
    args.get(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("argument {n}: {what}"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).cloned().unwrap_or_default();
    let plan = Rc::new(Plan {
        port: arg(&args, 2, "port"),
        run: arg(&args, 7, "run"),
        body_bytes: arg(&args, 8, "body bytes"),
        reply_timeout: Duration::from_secs_f64(arg(&args, 9, "reply timeout (s)")),
    });
    let amount: f64 = arg(&args, 3, "rate or workers");
    let seconds: f64 = arg(&args, 4, "seconds");
    let (first, step): (u64, u64) = (arg(&args, 5, "first"), arg(&args, 6, "step"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let local = tokio::task::LocalSet::new();
    let results: Rc<RefCell<Vec<Outcome>>> = Rc::default();
    let all = results.clone();
    let late = local.block_on(&rt, async move {
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        let mut late = 0.0f64;
        if mode == "open" {
            let mut n = 0u64;
            loop {
                let due = t0 + Duration::from_secs_f64(n as f64 / amount);
                if due - t0 >= Duration::from_secs_f64(seconds) {
                    break;
                }
                let now = Instant::now();
                if due > now {
                    sleep_until(due).await;
                } else {
                    late = late.max((now - due).as_secs_f64());
                }
                let (plan, all) = (plan.clone(), all.clone());
                tasks.push(tokio::task::spawn_local(async move {
                    let o = session(plan, first + n * step).await;
                    all.borrow_mut().push(o);
                }));
                n += 1;
            }
        } else {
            let end = t0 + Duration::from_secs_f64(seconds);
            let next = Rc::new(Cell::new(0u64));
            for _ in 0..(amount as usize).max(1) {
                let (plan, next, all) = (plan.clone(), next.clone(), all.clone());
                tasks.push(tokio::task::spawn_local(async move {
                    while Instant::now() < end {
                        let k = next.get();
                        next.set(k + 1);
                        let o = session(plan.clone(), first + k * step).await;
                        all.borrow_mut().push(o);
                    }
                }));
            }
        }
        for t in tasks {
            let _ = t.await;
        }
        late
    });
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (stage, reply, took, i) in results.take() {
        let took = took.map_or("-".to_owned(), |t| format!("{t:.6}"));
        let _ = writeln!(out, "{stage}\t{reply}\t{took}\t{i}");
    }
    let _ = writeln!(out, "late\t{late:.6}");
}

//! A minimal HTTP/1.1 client on tokio, enough for rspamd's `/checkv2`: one request per
//! connection (`Connection: close`), a body by `Content-Length`, a response read by
//! `Content-Length`, chunked encoding or until close — all capped in size. The caller bounds
//! the time.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response header block.
const MAX_HEAD: usize = 64 << 10;

/// `host:port` or `[v6]:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    pub fn parse(s: &str) -> Result<HostPort, String> {
        let bad = || format!("{s:?} is not HOST:PORT");
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, tail) = rest.split_once("]:").ok_or_else(bad)?;
            (h, tail)
        } else {
            s.rsplit_once(':').ok_or_else(bad)?
        };
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || port == 0 || host.contains(['/', ' ']) {
            return Err(bad());
        }
        Ok(HostPort {
            host: host.to_owned(),
            port,
        })
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// POSTs `body` to `path` with extra `headers` (values are made single-line).
pub async fn post(
    to: &HostPort,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
    max_response: usize,
) -> Result<Response, String> {
    let mut s = TcpStream::connect((to.host.as_str(), to.port))
        .await
        .map_err(|e| format!("connect {}:{}: {e}", to.host, to.port))?;
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
        to.host,
        body.len()
    );
    for (name, value) in headers {
        let value: String = value.chars().filter(|c| !c.is_control()).collect();
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let io = |e: std::io::Error| format!("I/O: {e}");
    s.write_all(head.as_bytes()).await.map_err(io)?;
    s.write_all(body).await.map_err(io)?;
    s.flush().await.map_err(io)?;
    read_response(&mut s, max_response).await
}

async fn read_response(s: &mut TcpStream, max: usize) -> Result<Response, String> {
    let mut buf = Vec::with_capacity(4096);
    let head_end = loop {
        if let Some(i) = crate::engine::scan::magic::find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err("response header too large".into());
        }
        if read_some(s, &mut buf).await? == 0 {
            return Err("connection closed before the response header".into());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {:?}", head.lines().next().unwrap_or("")))?;
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let mut body = buf.split_off(head_end);
    if let Some(len) = header("content-length") {
        let len: usize = len.parse().map_err(|_| "bad Content-Length".to_owned())?;
        if len > max {
            return Err(format!("response of {len} bytes is too large"));
        }
        while body.len() < len {
            if read_some(s, &mut body).await? == 0 {
                return Err("connection closed inside the response body".into());
            }
        }
        body.truncate(len);
    } else {
        loop {
            if body.len() > max + MAX_HEAD {
                return Err("response too large".into());
            }
            if read_some(s, &mut body).await? == 0 {
                break;
            }
        }
        if header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            body = dechunk(&body).ok_or("bad chunked encoding")?;
        }
        if body.len() > max {
            return Err("response too large".into());
        }
    }
    Ok(Response { status, body })
}

async fn read_some(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<usize, String> {
    let mut chunk = [0u8; 8192];
    let n = s.read(&mut chunk).await.map_err(|e| format!("I/O: {e}"))?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = crate::engine::scan::magic::find(data, b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port() {
        assert_eq!(
            HostPort::parse("127.0.0.1:11333").unwrap(),
            HostPort {
                host: "127.0.0.1".into(),
                port: 11333
            }
        );
        assert_eq!(HostPort::parse("[::1]:80").unwrap().host, "::1");
        assert!(HostPort::parse("nope").is_err());
        assert!(HostPort::parse("h:0").is_err());
    }

    #[test]
    fn chunked() {
        assert_eq!(
            dechunk(b"4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\n\r\n").unwrap(),
            b"Wikipedia"
        );
        assert!(dechunk(b"zz\r\n").is_none());
    }
}

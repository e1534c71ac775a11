//! Reading SMTP replies (client side: delivery, health probes, the edge relaying an engine).

/// A complete reply as received: code and the text of its lines (without code and separator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Received {
    pub fn text(&self) -> String {
        self.lines.join(" / ")
    }
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }
    /// EHLO keywords (upper-cased first word of each line after the first).
    pub fn has_extension(&self, name: &str) -> bool {
        self.lines.iter().skip(1).any(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case(name))
        })
    }
}

/// Largest reply we read (lines × length), against hostile servers.
pub const MAX_REPLY: usize = 64 * 1024;

/// Parses one complete reply from the start of `buf`: the reply and the bytes it used.
/// `Ok(None)`: incomplete. `Err`: not an SMTP reply.
pub fn parse(buf: &[u8]) -> Result<Option<(Received, usize)>, String> {
    let mut pos = 0;
    let mut lines = Vec::new();
    let mut code = None;
    loop {
        let Some(nl) = buf[pos..].iter().position(|&b| b == b'\n') else {
            return if buf.len() > MAX_REPLY {
                Err("reply too long".into())
            } else {
                Ok(None)
            };
        };
        let line = &buf[pos..pos + nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        pos += nl + 1;
        if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
            return Err(format!(
                "not an SMTP reply: {:?}",
                String::from_utf8_lossy(line)
            ));
        }
        let c: u16 = std::str::from_utf8(&line[..3])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if *code.get_or_insert(c) != c {
            return Err("reply code changed within a multi-line reply".into());
        }
        let sep = line.get(3).copied().unwrap_or(b' ');
        lines.push(String::from_utf8_lossy(line.get(4..).unwrap_or_default()).into_owned());
        match sep {
            b' ' => return Ok(Some((Received { code: c, lines }, pos))),
            b'-' => {}
            _ => return Err("bad reply separator".into()),
        }
        if pos > MAX_REPLY {
            return Err("reply too long".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiline_and_partial() {
        let buf = b"250-mx.example\r\n250-PIPELINING\r\n250 STARTTLS\r\n220 next";
        let (r, used) = parse(buf).unwrap().unwrap();
        assert_eq!(r.code, 250);
        assert!(
            r.has_extension("pipelining")
                && r.has_extension("STARTTLS")
                && !r.has_extension("SIZE")
        );
        assert_eq!(&buf[used..], b"220 next");
        assert_eq!(parse(b"250-a\r\n250 b").unwrap(), None);
        assert!(parse(b"hello\r\n").is_err());
        assert!(parse(b"250-a\r\n251 b\r\n").is_err());
        assert_eq!(parse(b"354\r\n").unwrap().unwrap().0.code, 354);
    }
}

//! The DATA phase as a byte-at-a-time state machine: finds the end of data, removes
//! dot-stuffing, counts size, and notices bare CR / bare LF.
//!
//! **End of data is `<CRLF>.<CRLF>` only** (RFC 5321 4.1.1.4), and the message is taken to start
//! at a line start. A bare LF or bare CR never starts or ends a line for this purpose, so
//! `<LF>.<LF>` or `<LF>.<CRLF>` inside a message cannot end it (SMTP smuggling). The edge runs
//! the same machine, so both agree on where a message ends.
//!
//! What a bare line end inside the message leads to (`engine.bare_newline`, the engine's
//! [`crate::config::BareNewline`]), found after reading to the real end of data:
//! - a bare LF, with `normalize` (the default, as Postfix 3.9's `smtpd_forbid_bare_newline =
//!   normalize`), is written as CRLF in the message kept: the message stays one message, its
//!   lines end the standard way, and what follows a smuggled `<LF>.<LF>` is text of that message,
//!   never a command; with `reject` the message is flagged and refused (`550 5.6.0`);
//! - a bare CR is flagged and refused either way: it is no line end for us, but some servers
//!   take it for one, and a message we keep is passed on to them.

/// Where in a line the reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line (after CRLF).
    LineStart,
    /// Saw `.` at a line start.
    Dot,
    /// Saw `.` `CR` at a line start.
    DotCr,
    /// Inside a line.
    Mid,
    /// Saw `CR` inside a line.
    Cr,
}

/// Streaming DATA decoder. Feed it bytes; it tells how many belonged to the message.
#[derive(Debug)]
pub struct DataReader {
    state: State,
    /// Decoded (unstuffed) message bytes, up to `max` (when collecting).
    out: Vec<u8>,
    collect: bool,
    max: usize,
    size: usize,
    /// Write a bare LF as CRLF (rather than keep it as it came).
    normalize_lf: bool,
    /// A bare LF was seen.
    pub bare_lf: bool,
    /// A bare CR was seen.
    pub bare_cr: bool,
}

/// Result of [`DataReader::feed`].
#[derive(Debug, PartialEq, Eq)]
pub enum Feed {
    /// All input consumed, end not reached.
    More,
    /// End of data reached after consuming this many bytes of the input (the rest is the
    /// next command, pipelined).
    Done(usize),
}

impl DataReader {
    /// `max`: largest message kept; bytes beyond are counted, not stored. `collect = false`
    /// only finds the end (the edge).
    pub fn new(max: usize, collect: bool) -> DataReader {
        DataReader {
            state: State::LineStart,
            out: Vec::new(),
            collect,
            max,
            size: 0,
            normalize_lf: false,
            bare_lf: false,
            bare_cr: false,
        }
    }

    /// Bare LFs are kept as CRLF from now on (`engine.bare_newline = "normalize"`).
    pub fn normalizing(mut self, on: bool) -> DataReader {
        self.normalize_lf = on;
        self
    }

    /// Decoded size so far (also beyond `max`).
    pub fn size(&self) -> usize {
        self.size
    }

    pub fn oversized(&self) -> bool {
        self.size > self.max
    }

    pub fn into_message(self) -> Vec<u8> {
        self.out
    }

    /// Bytes kept and not yet taken.
    pub fn kept(&self) -> usize {
        self.out.len()
    }

    /// Memory the kept bytes occupy (the buffer's capacity).
    pub fn memory(&self) -> usize {
        self.out.capacity()
    }

    /// Takes the bytes kept so far (the driver moves them to a file); reading goes on, and
    /// [`DataReader::into_message`] then has only what came after.
    pub fn take_kept(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    #[inline]
    fn emit(&mut self, bytes: &[u8]) {
        self.size += bytes.len();
        if self.collect && self.size <= self.max {
            self.out.extend_from_slice(bytes);
        }
    }

    pub fn feed(&mut self, input: &[u8]) -> Feed {
        let mut i = 0;
        while i < input.len() {
            // Fast path: copy a run of ordinary bytes inside a line.
            if self.state == State::Mid {
                let run = memchr::memchr2(b'\r', b'\n', &input[i..]).unwrap_or(input.len() - i);
                if run > 0 {
                    self.emit(&input[i..i + run]);
                    i += run;
                    continue;
                }
            }
            let b = input[i];
            i += 1;
            self.state = match (self.state, b) {
                (State::LineStart, b'.') => State::Dot,
                (State::DotCr, b'\n') => return Feed::Done(i),
                (State::Dot, b'\r') => State::DotCr,
                (State::DotCr, b'\r') => {
                    // ". CR CR": the first CR is bare.
                    self.bare_cr = true;
                    self.emit(b"\r");
                    State::Cr
                }
                (State::DotCr, other) => {
                    self.bare_cr = true;
                    self.emit(b"\r");
                    self.mid(other)
                }
                (State::Cr, b'\n') => {
                    self.emit(b"\r\n");
                    State::LineStart
                }
                (State::Cr, b'\r') => {
                    self.bare_cr = true;
                    self.emit(b"\r");
                    State::Cr
                }
                (State::Cr, other) => {
                    self.bare_cr = true;
                    self.emit(b"\r");
                    self.mid(other)
                }
                (State::LineStart | State::Dot | State::Mid, other) => self.mid(other),
            };
        }
        Feed::More
    }

    /// A byte inside a line (after a removed stuffing dot, or anywhere).
    #[inline]
    fn mid(&mut self, b: u8) -> State {
        match b {
            b'\r' => State::Cr,
            b'\n' => {
                self.bare_lf = true;
                self.emit(if self.normalize_lf { b"\r\n" } else { b"\n" });
                State::Mid
            }
            _ => {
                self.emit(&[b]);
                State::Mid
            }
        }
    }
}

/// Dot-stuffs `message` for sending (a line starting with `.` gets another), appending to `out`,
/// and terminates it with `.CRLF` (adding a CRLF first if the message does not end with one).
pub fn stuff(message: &[u8], out: &mut Vec<u8>) {
    let mut line_start = true;
    for &b in message {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n';
    }
    if !message.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(chunks: &[&[u8]]) -> (Vec<u8>, bool, Option<usize>) {
        read_with(false, chunks)
    }

    /// (message kept, a bare CR or LF seen, end of data found after this many bytes).
    fn read_with(normalize: bool, chunks: &[&[u8]]) -> (Vec<u8>, bool, Option<usize>) {
        let mut r = DataReader::new(1 << 20, true).normalizing(normalize);
        let mut done = None;
        for (n, c) in chunks.iter().enumerate() {
            if let Feed::Done(k) = r.feed(c) {
                done = Some(n * 1000 + k);
                break;
            }
        }
        let bare = r.bare_lf || r.bare_cr;
        (r.into_message(), bare, done)
    }

    #[test]
    fn ends_only_at_crlf_dot_crlf_and_unstuffs() {
        let (m, bare, done) = read_all(&[b"Subject: x\r\n\r\n..hidden\r\n.\r\nQUIT\r\n"]);
        assert_eq!(m, b"Subject: x\r\n\r\n.hidden\r\n");
        assert!(!bare);
        assert_eq!(done, Some(27));
        // Split across every possible chunk boundary.
        let whole: &[u8] = b"a\r\n.b\r\n.\r\n";
        for cut in 0..whole.len() {
            let (m, _, done) = read_all(&[&whole[..cut], &whole[cut..]]);
            assert_eq!(m, b"a\r\nb\r\n", "cut {cut}");
            assert!(done.is_some(), "cut {cut}");
        }
        // Empty message.
        assert_eq!(read_all(&[b".\r\n"]).0, b"");
    }

    #[test]
    fn smuggling_sequences_do_not_end_the_message() {
        for evil in [
            &b"x\n.\nMAIL FROM:<a@b>\r\n"[..],
            b"x\n.\r\nMAIL FROM:<a@b>\r\n",
            b"x\r.\r\nMAIL",
            b"x\r\n.\nMAIL",
            b"x\r\n.\rMAIL",
        ] {
            let (m, bare, done) = read_all(&[evil]);
            assert_eq!(done, None, "{evil:?} must not end data");
            assert!(bare, "{evil:?} is flagged");
            assert!(
                m.ends_with(b"MAIL FROM:<a@b>\r\n") || m.ends_with(b"MAIL"),
                "{m:?}"
            );
        }
        let (_, bare, done) = read_all(&[b"x\n.\nsmuggled\r\n.\r\n"]);
        assert!(
            bare && done.is_some(),
            "the real end is found, and the message is flagged"
        );
    }

    /// `normalize`: the same end of data, the same flags for bare CR, and a bare LF kept as CRLF,
    /// so a smuggled `<LF>.<LF>` and what follows are lines of the one message.
    #[test]
    fn normalizing_keeps_the_one_end_and_writes_crlf() {
        let evil: &[u8] =
            b"hi\n.\nMAIL FROM:<ceo@acme.example>\r\nDATA\r\nwire money\r\n.\r\nNOOP\r\n";
        for cut in 0..evil.len() {
            let mut r = DataReader::new(1 << 20, true).normalizing(true);
            let mut done = None;
            for (base, part) in [(0, &evil[..cut]), (cut, &evil[cut..])] {
                if done.is_none()
                    && let Feed::Done(n) = r.feed(part)
                {
                    done = Some(base + n);
                }
            }
            assert_eq!(
                done,
                Some(evil.len() - 6),
                "cut {cut}: only CRLF.CRLF ends it"
            );
            assert!(r.bare_lf && !r.bare_cr);
            assert_eq!(
                r.into_message(),
                b"hi\r\n.\r\nMAIL FROM:<ceo@acme.example>\r\nDATA\r\nwire money\r\n",
                "cut {cut}"
            );
        }
        let mut r = DataReader::new(1 << 20, true).normalizing(true);
        assert_eq!(r.feed(b"a\r.\rb\r\n.\r\n"), Feed::Done(10));
        assert!(r.bare_cr, "a bare CR is still flagged");
        // Without normalizing the bytes are kept as they came (and the message is refused).
        let (m, bare, _) = read_with(false, &[b"a\nb\r\n.\r\n"]);
        assert_eq!((m.as_slice(), bare), (&b"a\nb\r\n"[..], true));
    }

    #[test]
    fn size_is_counted_beyond_the_limit_without_storing() {
        let mut r = DataReader::new(4, true);
        assert_eq!(r.feed(b"123456789\r\n.\r\n"), Feed::Done(14));
        assert!(r.oversized());
        assert_eq!(r.size(), 11);
        assert!(r.into_message().len() <= 4);
    }

    #[test]
    fn stuffing_round_trips() {
        let msg = b"a\r\n.b\r\n..c\r\n.\r\nend";
        let mut wire = Vec::new();
        stuff(msg, &mut wire);
        let mut r = DataReader::new(1 << 20, true);
        assert_eq!(r.feed(&wire), Feed::Done(wire.len()));
        assert_eq!(r.into_message(), b"a\r\n.b\r\n..c\r\n.\r\nend\r\n");
    }
}

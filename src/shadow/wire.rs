//! The replication channel's frames, sans-I/O: [`parse`] takes bytes and returns a frame and how
//! many bytes it used, or `None` for "more bytes needed"; encoding appends to a buffer. The
//! async reader on top ([`FrameReader`]) only fills a buffer.
//!
//! A frame is `u32 length` (big-endian, of what follows), `u8 kind`, then the fields. Strings
//! are `u16` length + UTF-8; queue ids are their 24 ASCII hex digits.
//!
//! | kind | direction | fields |
//! |---|---|---|
//! | `HELLO` | shadow → primary | 32-byte nonce, the shadow's engine id |
//! | `AUTH` | primary → shadow | its engine id, its spool identity, 32-byte nonce, HMAC |
//! | `WELCOME` | shadow → primary | HMAC |
//! | `INVENTORY` | shadow → primary | `u8` last, `u32` n, n × (queue id, `u8` 0 held · 1 taken over) |
//! | `COPY` | primary → shadow | `u64` seq, queue id, `u32` + progress, the spool record (rest) |
//! | `UPDATE` | primary → shadow | `u64` seq, queue id, progress (rest) |
//! | `GONE` | primary → shadow | `u64` seq, queue id |
//! | `PING` | primary → shadow | `u64` seq |
//! | `ACK` | shadow → primary | `u64` seq, `u8` 0 ok · 1 full · 2 error, text (rest) |
//! | `PONG` | shadow → primary | `u64` seq, `u8` full, `u16` n, n × (engine id, `u32` ms since heard) |
//!
//! Each side proves the cluster secret: the primary's HMAC-SHA256 covers both nonces and both
//! ids, the shadow's the same in the other order, so neither proof can be replayed or reflected,
//! and the secret never crosses the wire.
//!
//! After the handshake (from the first `INVENTORY` on) every frame is followed by a [`TAG`]-byte
//! tag ([`Seal`]): HMAC-SHA256, cut to 16 bytes, under a key of its own per direction (derived
//! from the secret and both nonces, so it is new for every connection), over the frame's number
//! in that direction and the frame. A frame injected, changed, replayed, reordered or dropped
//! by someone on the path breaks the next tag, and the connection is closed: whoever does not
//! know the secret cannot make a shadow store a copy or forget one. The frames are not
//! encrypted: mail between engines of one cluster crosses the operator's own network, as it
//! does between an edge and its engines.

use std::io;

use ring::hmac;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::store::{Progress, QueueId};

const HELLO: u8 = 1;
const AUTH: u8 = 2;
const WELCOME: u8 = 3;
const INVENTORY: u8 = 4;
const COPY: u8 = 5;
const UPDATE: u8 = 6;
const GONE: u8 = 7;
const PING: u8 = 8;
const ACK: u8 = 9;
const PONG: u8 = 10;

/// The result of a request, as the shadow acknowledges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    Ok,
    /// The shadow's disk is below its reserve: try another engine.
    Full,
    Error,
}

/// What an inventory says of one copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// The shadow holds it for the primary.
    Copy,
    /// The shadow adopted it and delivers it: the primary must not.
    TakenOver,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Hello {
        nonce: [u8; 32],
        server: String,
    },
    Auth {
        client: String,
        spool: String,
        nonce: [u8; 32],
        mac: Vec<u8>,
    },
    Welcome {
        mac: Vec<u8>,
    },
    Inventory {
        last: bool,
        items: Vec<(QueueId, Held)>,
    },
    Copy {
        seq: u64,
        id: QueueId,
        progress: Option<Progress>,
        data: Vec<u8>,
    },
    Update {
        seq: u64,
        id: QueueId,
        progress: Progress,
    },
    Gone {
        seq: u64,
        id: QueueId,
    },
    Ping {
        seq: u64,
    },
    Ack {
        seq: u64,
        code: AckCode,
        text: String,
    },
    Pong {
        seq: u64,
        full: bool,
        heard: Vec<(String, u32)>,
    },
}

/// Bytes of the tag after each frame once the handshake is done.
pub const TAG: usize = 16;

/// Which way a sealed frame goes (each direction has its own key and count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    ToShadow,
    ToPrimary,
}

/// Tags frames going one way, or checks them (see the module doc).
pub struct Seal {
    key: hmac::Key,
    n: u64,
}

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Seal(frame {})", self.n)
    }
}

impl Seal {
    /// The seal of one direction of one connection: `client_nonce` is the primary's (from
    /// `AUTH`), `server_nonce` the shadow's (from `HELLO`).
    pub fn new(secret: &str, client_nonce: &[u8], server_nonce: &[u8], dir: Dir) -> Seal {
        let role = match dir {
            Dir::ToShadow => "to-shadow",
            Dir::ToPrimary => "to-primary",
        };
        let derived = mac(secret, role, client_nonce, server_nonce, "session", "");
        Seal {
            key: hmac::Key::new(hmac::HMAC_SHA256, &derived),
            n: 0,
        }
    }

    fn tag(&mut self, frame: &[u8]) -> [u8; TAG] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&self.n.to_be_bytes());
        ctx.update(frame);
        self.n += 1;
        let mut t = [0u8; TAG];
        t.copy_from_slice(&ctx.sign().as_ref()[..TAG]);
        t
    }

    /// Appends the tag of the frame that starts at `start` in `buf` (everything after it).
    pub fn seal(&mut self, buf: &mut Vec<u8>, start: usize) {
        let t = self.tag(&buf[start..]);
        buf.extend_from_slice(&t);
    }

    /// Whether `tag` is the next frame's tag.
    fn open(&mut self, frame: &[u8], tag: &[u8]) -> bool {
        let want = self.tag(frame);
        same_mac(&want, tag)
    }
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("frame of {0} bytes is larger than allowed")]
    TooLarge(u64),
    #[error("malformed frame (kind {0})")]
    Malformed(u8),
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
}

/// Starts a frame of `kind`; [`finish`] writes its length.
fn begin(out: &mut Vec<u8>, kind: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, kind]);
    start
}

fn finish(out: &mut [u8], start: usize) {
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

impl Frame {
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Frame::Hello { nonce, server } => {
                let s = begin(out, HELLO);
                out.extend_from_slice(nonce);
                put_str(out, server);
                finish(out, s);
            }
            Frame::Auth {
                client,
                spool,
                nonce,
                mac,
            } => {
                let s = begin(out, AUTH);
                put_str(out, client);
                put_str(out, spool);
                out.extend_from_slice(nonce);
                out.extend_from_slice(mac);
                finish(out, s);
            }
            Frame::Welcome { mac } => {
                let s = begin(out, WELCOME);
                out.extend_from_slice(mac);
                finish(out, s);
            }
            Frame::Inventory { last, items } => {
                let s = begin(out, INVENTORY);
                out.push(u8::from(*last));
                out.extend_from_slice(&(items.len() as u32).to_be_bytes());
                for (id, h) in items {
                    out.extend_from_slice(id.as_str().as_bytes());
                    out.push(u8::from(*h == Held::TakenOver));
                }
                finish(out, s);
            }
            Frame::Copy {
                seq,
                id,
                progress,
                data,
            } => {
                let s = copy_head(out, *seq, id, progress.as_ref());
                out.extend_from_slice(data);
                finish(out, s);
            }
            Frame::Update { seq, id, progress } => {
                let s = begin(out, UPDATE);
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(id.as_str().as_bytes());
                progress.encode(out);
                finish(out, s);
            }
            Frame::Gone { seq, id } => {
                let s = begin(out, GONE);
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(id.as_str().as_bytes());
                finish(out, s);
            }
            Frame::Ping { seq } => {
                let s = begin(out, PING);
                out.extend_from_slice(&seq.to_be_bytes());
                finish(out, s);
            }
            Frame::Ack { seq, code, text } => {
                let s = begin(out, ACK);
                out.extend_from_slice(&seq.to_be_bytes());
                out.push(match code {
                    AckCode::Ok => 0,
                    AckCode::Full => 1,
                    AckCode::Error => 2,
                });
                out.extend_from_slice(text.as_bytes());
                finish(out, s);
            }
            Frame::Pong { seq, full, heard } => {
                let s = begin(out, PONG);
                out.extend_from_slice(&seq.to_be_bytes());
                out.push(u8::from(*full));
                out.extend_from_slice(&(heard.len().min(u16::MAX as usize) as u16).to_be_bytes());
                for (e, ms) in heard.iter().take(u16::MAX as usize) {
                    put_str(out, e);
                    out.extend_from_slice(&ms.to_be_bytes());
                }
                finish(out, s);
            }
        }
    }
}

fn copy_head(out: &mut Vec<u8>, seq: u64, id: &QueueId, progress: Option<&Progress>) -> usize {
    let s = begin(out, COPY);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(id.as_str().as_bytes());
    let mut p = Vec::new();
    if let Some(p2) = progress {
        p2.encode(&mut p);
    }
    out.extend_from_slice(&(p.len() as u32).to_be_bytes());
    out.extend_from_slice(&p);
    s
}

/// A `COPY` frame with seq 0 (the link sets it with [`set_seq`]), carrying the spool record of
/// `env` and `message` — built once, by the session, straight from what it spooled.
pub fn copy_frame(
    env: &crate::store::Envelope,
    message: &[u8],
    progress: Option<&Progress>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 1024);
    let s = copy_head(&mut out, 0, &env.id, progress);
    env.encode(&mut out);
    out.extend_from_slice(message);
    finish(&mut out, s);
    out
}

/// Sets the sequence number of an encoded `COPY`, `UPDATE`, `GONE` or `PING` frame.
pub fn set_seq(frame: &mut [u8], seq: u64) {
    frame[5..13].copy_from_slice(&seq.to_be_bytes());
}

struct R<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn rest(&mut self) -> &'a [u8] {
        let s = &self.b[self.at..];
        self.at = self.b.len();
        s
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn str(&mut self) -> Option<String> {
        let n = self.u16()? as usize;
        Some(std::str::from_utf8(self.take(n)?).ok()?.to_owned())
    }
    fn id(&mut self) -> Option<QueueId> {
        QueueId::parse(std::str::from_utf8(self.take(24)?).ok()?)
    }
    fn nonce(&mut self) -> Option<[u8; 32]> {
        self.take(32)?.try_into().ok()
    }
}

/// One frame from the front of `buf`: `Ok(None)` when more bytes are needed.
pub fn parse(buf: &[u8], max: u64) -> Result<Option<(Frame, usize)>, WireError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as u64;
    if len > max {
        return Err(WireError::TooLarge(len));
    }
    let total = 4 + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[4..total];
    let kind = *body.first().ok_or(WireError::Malformed(0))?;
    let frame = body_of(kind, &body[1..]).ok_or(WireError::Malformed(kind))?;
    Ok(Some((frame, total)))
}

fn body_of(kind: u8, b: &[u8]) -> Option<Frame> {
    let mut r = R { b, at: 0 };
    let f = match kind {
        HELLO => Frame::Hello {
            nonce: r.nonce()?,
            server: r.str()?,
        },
        AUTH => Frame::Auth {
            client: r.str()?,
            spool: r.str()?,
            nonce: r.nonce()?,
            mac: r.take(32)?.to_vec(),
        },
        WELCOME => Frame::Welcome {
            mac: r.take(32)?.to_vec(),
        },
        INVENTORY => {
            let last = r.take(1)?[0] == 1;
            let n = r.u32()? as usize;
            let mut items = Vec::with_capacity(n.min(b.len() / 25));
            for _ in 0..n {
                let id = r.id()?;
                let h = match r.take(1)?[0] {
                    0 => Held::Copy,
                    1 => Held::TakenOver,
                    _ => return None,
                };
                items.push((id, h));
            }
            Frame::Inventory { last, items }
        }
        COPY => {
            let seq = r.u64()?;
            let id = r.id()?;
            let plen = r.u32()? as usize;
            let p = r.take(plen)?;
            let progress = if p.is_empty() {
                None
            } else {
                Some(Progress::decode(p).ok()?)
            };
            Frame::Copy {
                seq,
                id,
                progress,
                data: r.rest().to_vec(),
            }
        }
        UPDATE => Frame::Update {
            seq: r.u64()?,
            id: r.id()?,
            progress: Progress::decode(r.rest()).ok()?,
        },
        GONE => Frame::Gone {
            seq: r.u64()?,
            id: r.id()?,
        },
        PING => Frame::Ping { seq: r.u64()? },
        ACK => Frame::Ack {
            seq: r.u64()?,
            code: match r.take(1)?[0] {
                0 => AckCode::Ok,
                1 => AckCode::Full,
                _ => AckCode::Error,
            },
            text: String::from_utf8_lossy(r.rest()).into_owned(),
        },
        PONG => {
            let seq = r.u64()?;
            let full = r.take(1)?[0] == 1;
            let n = r.u16()? as usize;
            let mut heard = Vec::with_capacity(n);
            for _ in 0..n {
                heard.push((r.str()?, r.u32()?));
            }
            Frame::Pong { seq, full, heard }
        }
        _ => return None,
    };
    (r.at == b.len()).then_some(f)
}

/// Reads frames from a byte stream; `max` bounds one frame.
pub struct FrameReader<S> {
    stream: S,
    buf: Vec<u8>,
    pos: usize,
    max: u64,
    /// Once the handshake is done: every frame must carry its tag.
    seal: Option<Seal>,
}

impl<S: AsyncRead + Unpin> FrameReader<S> {
    pub fn new(stream: S, max: u64) -> Self {
        FrameReader {
            stream,
            buf: Vec::with_capacity(64 * 1024),
            pos: 0,
            max,
            seal: None,
        }
    }

    /// From now on every frame must carry its tag under `seal`.
    pub fn sealed(&mut self, seal: Seal) {
        self.seal = Some(seal);
    }

    /// The next frame; `UnexpectedEof` when the peer closed, `InvalidData` for a malformed
    /// frame or one whose tag is wrong.
    pub async fn next(&mut self) -> io::Result<Frame> {
        loop {
            let avail = &self.buf[self.pos..];
            match parse(avail, self.max) {
                Ok(Some((f, used))) => match &mut self.seal {
                    None => {
                        self.pos += used;
                        return Ok(f);
                    }
                    Some(seal) if avail.len() >= used + TAG => {
                        if !seal.open(&avail[..used], &avail[used..used + TAG]) {
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                "a frame's tag is wrong (changed, injected or out of order)",
                            ));
                        }
                        self.pos += used + TAG;
                        return Ok(f);
                    }
                    Some(_) => {} // its tag is still on the way
                },
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            self.buf.reserve(64 * 1024);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

/// 32 random bytes from the operating system.
pub fn nonce() -> [u8; 32] {
    use ring::rand::SecureRandom;
    let mut n = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut n)
        .expect("the operating system's random number generator works");
    n
}

fn mac(secret: &str, role: &str, first: &[u8], second: &[u8], a: &str, b: &str) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = hmac::Context::with_key(&key);
    for part in [
        b"maildistiller-shadow ".as_slice(),
        role.as_bytes(),
        first,
        second,
        a.as_bytes(),
        b"\0",
        b.as_bytes(),
    ] {
        ctx.update(part);
    }
    ctx.sign().as_ref().to_vec()
}

/// The primary's proof: over the shadow's nonce, its own, its id, the shadow's id.
pub fn client_mac(
    secret: &str,
    server_nonce: &[u8],
    client_nonce: &[u8],
    client: &str,
    server: &str,
) -> Vec<u8> {
    mac(secret, "client", server_nonce, client_nonce, client, server)
}

/// The shadow's proof: the same in the other order, so it cannot be the primary's reflected.
pub fn server_mac(
    secret: &str,
    client_nonce: &[u8],
    server_nonce: &[u8],
    server: &str,
    client: &str,
) -> Vec<u8> {
    mac(secret, "server", client_nonce, server_nonce, server, client)
}

/// Compares proofs in constant time.
pub fn same_mac(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> QueueId {
        QueueId::generate()
    }

    #[test]
    fn frames_round_trip_and_split_anywhere() {
        let p = Progress::decode(
            b"status: quarantined\r\nreason: spam\r\nattempts: 0\r\nrcpt: 0 pending\r\n\r\n",
        )
        .unwrap();
        let frames = vec![
            Frame::Hello {
                nonce: [7; 32],
                server: "10.0.0.2:25".into(),
            },
            Frame::Auth {
                client: "10.0.0.1:25".into(),
                spool: "0011223344556677".into(),
                nonce: [9; 32],
                mac: vec![1; 32],
            },
            Frame::Welcome { mac: vec![2; 32] },
            Frame::Inventory {
                last: true,
                items: vec![(id(), Held::Copy), (id(), Held::TakenOver)],
            },
            Frame::Copy {
                seq: 5,
                id: id(),
                progress: Some(p.clone()),
                data: b"MDSPOOL 1\r\n\r\nhi".to_vec(),
            },
            Frame::Copy {
                seq: 6,
                id: id(),
                progress: None,
                data: vec![],
            },
            Frame::Update {
                seq: 7,
                id: id(),
                progress: p,
            },
            Frame::Gone { seq: 8, id: id() },
            Frame::Ping { seq: 9 },
            Frame::Ack {
                seq: 10,
                code: AckCode::Full,
                text: "disk full".into(),
            },
            Frame::Pong {
                seq: 11,
                full: false,
                heard: vec![("10.0.0.3:25".into(), 1500)],
            },
        ];
        let mut buf = Vec::new();
        for f in &frames {
            f.encode(&mut buf);
        }
        // Byte by byte: every prefix is "more", never an error.
        let mut got = Vec::new();
        let mut pos = 0;
        let mut end = 0;
        while pos < buf.len() {
            end = (end + 1).min(buf.len());
            match parse(&buf[pos..end], 1 << 20).unwrap() {
                Some((f, used)) => {
                    got.push(f);
                    pos += used;
                }
                None => assert!(end < buf.len()),
            }
        }
        assert_eq!(got, frames);
    }

    #[test]
    fn a_copy_frame_built_by_the_session_parses_with_its_seq() {
        let env = crate::store::test_envelope(2);
        let mut f = copy_frame(&env, b"Subject: x\r\n\r\nbody\r\n", None);
        set_seq(&mut f, 42);
        let (frame, used) = parse(&f, 1 << 20).unwrap().unwrap();
        assert_eq!(used, f.len());
        let Frame::Copy { seq, id, data, .. } = frame else {
            panic!("{frame:?}")
        };
        assert_eq!((seq, &id), (42, &env.id));
        let (back, msg) = crate::store::decode_record(&data).unwrap();
        assert_eq!(back.rcpts, env.rcpts);
        assert_eq!(msg, b"Subject: x\r\n\r\nbody\r\n");
    }

    #[test]
    fn hostile_frames_are_errors_not_panics() {
        assert!(matches!(
            parse(&[0xff, 0xff, 0xff, 0xff], 1 << 20),
            Err(WireError::TooLarge(_))
        ));
        assert!(parse(&[0, 0, 0, 0], 1 << 20).is_err(), "empty body");
        assert!(parse(&[0, 0, 0, 2, PING, 1], 1 << 20).is_err(), "short");
        assert!(
            parse(&[0, 0, 0, 9, 99, 0, 0, 0, 0, 0, 0, 0, 0], 1 << 20).is_err(),
            "unknown kind"
        );
        let mut b = Vec::new();
        Frame::Inventory {
            last: true,
            items: vec![],
        }
        .encode(&mut b);
        b[6..10].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse(&b, 1 << 20).is_err(), "a count larger than the frame");
        for n in 0..200u8 {
            let junk: Vec<u8> = (0..40)
                .map(|i| n.wrapping_mul(31).wrapping_add(i))
                .collect();
            let mut f = vec![0, 0, 0, 40];
            f.extend_from_slice(&junk);
            let _ = parse(&f, 1 << 20);
        }
    }

    #[test]
    fn proofs_bind_both_nonces_and_both_ids_and_differ_by_direction() {
        let (s, n1, n2) = ("a".repeat(32), [1u8; 32], [2u8; 32]);
        let c = client_mac(&s, &n1, &n2, "A", "B");
        assert!(same_mac(&c, &client_mac(&s, &n1, &n2, "A", "B")));
        assert!(!same_mac(&c, &client_mac(&s, &n2, &n1, "A", "B")));
        assert!(!same_mac(&c, &client_mac(&s, &n1, &n2, "B", "A")));
        assert!(
            !same_mac(&c, &server_mac(&s, &n1, &n2, "A", "B")),
            "not reflectable"
        );
        assert!(!same_mac(
            &c,
            &client_mac(&"b".repeat(32), &n1, &n2, "A", "B")
        ));
    }

    /// Frames sealed by the sender's `Seal`, as they would cross the wire.
    fn sealed_stream(secret: &str, frames: &[Frame]) -> (Vec<u8>, Vec<usize>) {
        let mut seal = Seal::new(secret, &[1; 32], &[2; 32], Dir::ToShadow);
        let (mut buf, mut ends) = (Vec::new(), Vec::new());
        for f in frames {
            let start = buf.len();
            f.encode(&mut buf);
            seal.seal(&mut buf, start);
            ends.push(buf.len());
        }
        (buf, ends)
    }

    /// Reads every frame of `bytes` with a reader sealed by `secret`, fed in 7-byte pieces.
    fn read_sealed(secret: &str, bytes: Vec<u8>) -> Result<Vec<Frame>, io::Error> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async {
                let (mut tx, rx) = tokio::io::duplex(7);
                let feed = tokio::spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    for c in bytes.chunks(7) {
                        if tx.write_all(c).await.is_err() {
                            return;
                        }
                    }
                });
                let mut r = FrameReader::new(rx, 1 << 20);
                r.sealed(Seal::new(secret, &[1; 32], &[2; 32], Dir::ToShadow));
                let mut got = Vec::new();
                loop {
                    match r.next().await {
                        Ok(f) => got.push(f),
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                        Err(e) => return Err(e),
                    }
                }
                let _ = feed.await;
                Ok(got)
            })
    }

    #[test]
    fn sealed_frames_are_read_and_any_tampering_closes_the_link() {
        let secret = "s".repeat(32);
        let frames: Vec<Frame> = (1..=3).map(|seq| Frame::Ping { seq }).collect();
        let (good, ends) = sealed_stream(&secret, &frames);
        assert_eq!(read_sealed(&secret, good.clone()).unwrap(), frames);

        // Each way of meddling, and a peer that does not know the secret.
        let mut flipped = good.clone();
        flipped[ends[0] + 8] ^= 1;
        let replayed = [&good[..ends[1]], &good[..ends[0]]].concat();
        let dropped = [&good[..ends[0]], &good[ends[1]..]].concat();
        let reordered = [&good[ends[0]..ends[1]], &good[..ends[0]]].concat();
        let mut injected = good[..ends[0]].to_vec();
        Frame::Gone {
            seq: 9,
            id: QueueId::generate(),
        }
        .encode(&mut injected);
        injected.extend_from_slice(&[0; TAG]);
        let (stranger, _) = sealed_stream(&"t".repeat(32), &frames);
        for (what, bytes) in [
            ("flipped", flipped),
            ("replayed", replayed),
            ("dropped", dropped),
            ("reordered", reordered),
            ("injected", injected),
            ("wrong secret", stranger),
        ] {
            let e = read_sealed(&secret, bytes).expect_err(what);
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{what}: {e}");
        }
        // The other direction's key does not open these frames either.
        let mut other = Seal::new(&secret, &[1; 32], &[2; 32], Dir::ToPrimary);
        assert!(!other.open(&good[..ends[0] - TAG], &good[ends[0] - TAG..ends[0]]));
    }
}

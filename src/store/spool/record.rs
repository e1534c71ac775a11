//! Envelope and state records: `key: value` lines, CRLF, then an empty line (see the spool
//! module docs for the keys). Plain text so an operator can read a spool file with `less`.

use std::net::IpAddr;

use super::QueueId;
use crate::store::state::Status;

const MAGIC: &str = "MDSPOOL 1";

/// What produced the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Received from a sender.
    Message,
    /// A delivery status notification we generated (never answered with another DSN).
    Dsn,
}

/// The immutable part, written once with the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub id: QueueId,
    /// Unix seconds.
    pub received: u64,
    pub tenant: String,
    pub session: String,
    pub client: IpAddr,
    pub helo: String,
    /// Empty for the null sender.
    pub from: String,
    pub rcpts: Vec<String>,
    pub status: Status,
    pub verdict: String,
    pub subject: String,
    pub header_from: String,
    pub kind: Kind,
    /// Message bytes (as spooled).
    pub size: u64,
}

/// One recipient that is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptOutcome {
    Delivered {
        at: u64,
    },
    /// Permanently failed: the reply (a DSN has been queued for it, unless the sender was null).
    Failed {
        reply: String,
    },
    /// Released from quarantine on its own: a copy of the message for this recipient (and any
    /// others released with it) was queued as `copy`, which delivers it.
    Released {
        copy: QueueId,
    },
}

/// The mutable part: what was decided ([`Status`]), the attempts so far, the next one, and
/// each recipient's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub status: Status,
    pub attempts: u32,
    /// Unix seconds of the next attempt (0: now).
    pub next: u64,
    pub error: String,
    /// Per recipient (same order as the envelope); `None` while pending.
    pub rcpts: Vec<Option<RcptOutcome>>,
}

impl Progress {
    pub fn initial(e: &Envelope) -> Progress {
        Progress {
            status: e.status.clone(),
            attempts: 0,
            next: 0,
            error: String::new(),
            rcpts: vec![None; e.rcpts.len()],
        }
    }

    pub fn pending(&self) -> impl Iterator<Item = usize> + '_ {
        self.rcpts
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_none())
            .map(|(i, _)| i)
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        line(out, "status", self.status.as_str());
        if let Status::Quarantined { reason, kinds } = &self.status {
            line(out, "reason", reason);
            line(out, "kinds", &Status::kinds_text(kinds));
        }
        line(out, "attempts", &self.attempts.to_string());
        line(out, "next", &self.next.to_string());
        line(out, "error", &self.error);
        for (i, r) in self.rcpts.iter().enumerate() {
            match r {
                Some(RcptOutcome::Delivered { at }) => {
                    line(out, "rcpt", &format!("{i} delivered {at}"))
                }
                Some(RcptOutcome::Failed { reply }) => {
                    line(out, "rcpt", &format!("{i} failed {reply}"))
                }
                Some(RcptOutcome::Released { copy }) => {
                    line(out, "rcpt", &format!("{i} released {copy}"))
                }
                None => line(out, "rcpt", &format!("{i} pending")),
            }
        }
        out.extend_from_slice(b"\r\n");
    }

    pub fn decode(bytes: &[u8]) -> Result<Progress, String> {
        let mut s = Progress {
            status: Status::Queued,
            attempts: 0,
            next: 0,
            error: String::new(),
            rcpts: Vec::new(),
        };
        let mut reason = String::new();
        let mut kinds = None;
        let mut status = String::from("queued");
        for (k, v) in fields(bytes)? {
            match k {
                "status" => status = v.to_owned(),
                "reason" => reason = v.to_owned(),
                "kinds" => kinds = Some(v),
                "attempts" => s.attempts = v.parse().map_err(|_| "bad attempts")?,
                "next" => s.next = v.parse().map_err(|_| "bad next")?,
                "error" => s.error = v.to_owned(),
                "rcpt" => {
                    let mut parts = v.splitn(3, ' ');
                    let i: usize = parts
                        .next()
                        .and_then(|x| x.parse().ok())
                        .ok_or("bad rcpt index")?;
                    let outcome = match parts.next() {
                        Some("delivered") => Some(RcptOutcome::Delivered {
                            at: parts.next().and_then(|x| x.parse().ok()).unwrap_or(0),
                        }),
                        Some("failed") => Some(RcptOutcome::Failed {
                            reply: parts.next().unwrap_or("").to_owned(),
                        }),
                        Some("released") => Some(RcptOutcome::Released {
                            copy: parts
                                .next()
                                .and_then(QueueId::parse)
                                .ok_or("bad released copy id")?,
                        }),
                        _ => None,
                    };
                    if i > 100_000 {
                        return Err("rcpt index out of range".into());
                    }
                    if s.rcpts.len() <= i {
                        s.rcpts.resize(i + 1, None);
                    }
                    s.rcpts[i] = outcome;
                }
                _ => {}
            }
        }
        s.status = Status::parse(&status, reason, kinds)?;
        Ok(s)
    }
}

/// Values are single lines: CR, LF and other controls become spaces; length is capped.
fn clean(v: &str) -> String {
    v.chars()
        .take(2000)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn line(out: &mut Vec<u8>, k: &str, v: &str) {
    out.extend_from_slice(k.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(clean(v).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Where the body starts (after the first empty line).
pub fn body_offset(data: &[u8]) -> Option<usize> {
    memchr::memmem::find(data, b"\r\n\r\n").map(|p| p + 4)
}

fn fields(bytes: &[u8]) -> Result<Vec<(&str, &str)>, String> {
    let end = body_offset(bytes).ok_or("no end of header")?;
    let text = std::str::from_utf8(&bytes[..end]).map_err(|_| "header is not UTF-8")?;
    Ok(text
        .split("\r\n")
        .filter_map(|l| {
            l.split_once(": ")
                .or_else(|| l.strip_suffix(':').map(|k| (k, "")))
        })
        .collect())
}

impl Envelope {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(MAGIC.as_bytes());
        out.extend_from_slice(b"\r\n");
        line(out, "id", self.id.as_str());
        line(
            out,
            "kind",
            if self.kind == Kind::Dsn {
                "dsn"
            } else {
                "message"
            },
        );
        line(out, "received", &self.received.to_string());
        line(out, "tenant", &self.tenant);
        line(out, "session", &self.session);
        line(out, "client", &self.client.to_string());
        line(out, "helo", &self.helo);
        line(out, "from", &self.from);
        for r in &self.rcpts {
            line(out, "rcpt", r);
        }
        line(out, "status", self.status.as_str());
        if let Status::Quarantined { reason, kinds } = &self.status {
            line(out, "reason", reason);
            line(out, "kinds", &Status::kinds_text(kinds));
        }
        line(out, "verdict", &self.verdict);
        line(out, "subject", &self.subject);
        line(out, "header-from", &self.header_from);
        line(out, "size", &self.size.to_string());
        out.extend_from_slice(b"\r\n");
    }

    pub fn decode(bytes: &[u8]) -> Result<Envelope, String> {
        if !bytes.starts_with(MAGIC.as_bytes()) {
            return Err("not a spool file (bad magic)".into());
        }
        let mut id = None;
        let mut e = Envelope {
            id: QueueId(String::new()),
            received: 0,
            tenant: String::new(),
            session: String::new(),
            client: IpAddr::from([0, 0, 0, 0]),
            helo: String::new(),
            from: String::new(),
            rcpts: Vec::new(),
            status: Status::Queued,
            verdict: String::new(),
            subject: String::new(),
            header_from: String::new(),
            kind: Kind::Message,
            size: 0,
        };
        let mut status = "queued".to_owned();
        let mut reason = String::new();
        let mut kinds = None;
        for (k, v) in fields(bytes)? {
            match k {
                "id" => id = QueueId::parse(v),
                "kind" => e.kind = if v == "dsn" { Kind::Dsn } else { Kind::Message },
                "received" => e.received = v.parse().map_err(|_| "bad received")?,
                "tenant" => e.tenant = v.to_owned(),
                "session" => e.session = v.to_owned(),
                "client" => e.client = v.parse().map_err(|_| "bad client")?,
                "helo" => e.helo = v.to_owned(),
                "from" => e.from = v.to_owned(),
                "rcpt" => e.rcpts.push(v.to_owned()),
                "status" => status = v.to_owned(),
                "reason" => reason = v.to_owned(),
                "kinds" => kinds = Some(v),
                "verdict" => e.verdict = v.to_owned(),
                "subject" => e.subject = v.to_owned(),
                "header-from" => e.header_from = v.to_owned(),
                "size" => e.size = v.parse().map_err(|_| "bad size")?,
                _ => {}
            }
        }
        e.id = id.ok_or("missing or bad id")?;
        e.status = Status::parse(&status, reason, kinds)?;
        if e.rcpts.is_empty() {
            return Err("no recipients".into());
        }
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::webmail::FindingKind;

    fn env() -> Envelope {
        Envelope {
            id: QueueId::generate(),
            received: 1_700_000_000,
            tenant: "acme".into(),
            session: "s1".into(),
            client: "81.2.69.160".parse().unwrap(),
            helo: "mx.sender.example".into(),
            from: String::new(),
            rcpts: vec!["a@acme.example".into(), "b@acme.example".into()],
            status: Status::quarantined(
                "spam score 9.1\r\ninjected: yes".into(),
                [FindingKind::Virus, FindingKind::Spam],
            ),
            verdict: "quarantine: spam".into(),
            subject: "Hello\nthere".into(),
            header_from: "Alice <a@sender.example>".into(),
            kind: Kind::Message,
            size: 123,
        }
    }

    #[test]
    fn envelope_round_trips_and_values_cannot_inject_lines() {
        let e = env();
        let mut buf = Vec::new();
        e.encode(&mut buf);
        let off = body_offset(&buf).unwrap();
        assert_eq!(off, buf.len());
        let d = Envelope::decode(&buf).unwrap();
        assert_eq!(d.rcpts, e.rcpts);
        assert_eq!(d.from, "");
        assert_eq!(
            d.status,
            Status::quarantined(
                "spam score 9.1  injected: yes".into(),
                [FindingKind::Virus, FindingKind::Spam]
            )
        );
        assert_eq!(d.subject, "Hello there");
        assert!(Envelope::decode(b"garbage\r\n\r\n").is_err());
        assert!(Envelope::decode(b"MDSPOOL 1\r\nid: nope\r\n\r\n").is_err());
    }

    #[test]
    fn state_round_trips() {
        let mut s = Progress::initial(&env());
        s.status = Status::Queued;
        s.attempts = 3;
        s.next = 1_700_000_600;
        s.error = "451 4.3.0 try later".into();
        s.rcpts[1] = Some(RcptOutcome::Failed {
            reply: "550 5.1.1 no such user".into(),
        });
        let mut released = s.clone();
        released.rcpts[0] = Some(RcptOutcome::Released {
            copy: QueueId::generate(),
        });
        let mut buf = Vec::new();
        released.encode(&mut buf);
        assert_eq!(Progress::decode(&buf).unwrap(), released);
        let mut buf = Vec::new();
        s.encode(&mut buf);
        assert_eq!(Progress::decode(&buf).unwrap(), s);
        assert_eq!(s.pending().collect::<Vec<_>>(), [0]);
    }
}

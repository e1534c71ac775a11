//! The edge's SMTP-aware session, sans-I/O: the local phase shared with the engine
//! ([`crate::smtp::server`]) plus what only the edge does — route on the transaction's first
//! recipient, introduce the client to an engine, and from then on relay. It takes the
//! client's bytes ([`Session::client`]) and the engine's ([`Session::engine`]) and returns
//! [`Step`]s; the driver (`front.rs`) does the sockets, the routing and the TLS handshake.
//!
//! What goes where:
//! - Everything the local phase answers is answered here (EHLO, MAIL, RSET, NOOP, errors,
//!   refused recipients), also once an engine is connected; EHLO and RSET are then also told
//!   to the engine, its replies swallowed, so both sides agree on the state.
//! - The first accepted RCPT of a transaction routes ([`Step::Route`]); the driver reuses the
//!   engine or connects one, and the session replays EHLO and MAIL there (replies swallowed)
//!   and sends the RCPT (reply relayed). Later RCPTs, DATA and the body go to the engine; its
//!   replies are relayed as they came. The engine verifies recipients (`engine::verify`): a
//!   RCPT it refuses (`550 5.1.1`, `451 4.4.3`) is taken back out of the transaction here
//!   too, and errors count at the engine (`engine.max_errors`), whose `421` ends the client's
//!   session as well. The body is streamed and its end found exactly as the
//!   engine finds it (the same [`crate::smtp::data::DataReader`]).
//!
//! Reply order under PIPELINING: every client command gets exactly one reply, from the engine
//! or from us; `pending` holds them in command order, so a local reply waits behind engine
//! replies still to come.
//!
//! Bounds: the local phase's (`edge.max_line_length`, `edge.max_errors`); recipients per
//! transaction [`MAX_RECIPIENTS`] (the engine's own, lower, limit is the one senders meet);
//! `pending` holds at most one entry per command of the client's current pipelined batch,
//! since client input is not read while the engine owes the answer to DATA.

use std::collections::VecDeque;

use crate::smtp::ending::Ending;
use crate::smtp::server::{Event, Recipients, Server, SessionLimits, Unroutable};
use crate::smtp::{Reply, replies, reply};
use crate::topology::TenantIdx;

/// Recipients per transaction the edge passes on: the largest `engine.max_recipients` allowed,
/// so an engine's own limit is the one senders meet, and the edge's memory per session is
/// bounded all the same.
pub const MAX_RECIPIENTS: usize = 100_000;

/// What a client command's reply will be, in command order.
#[derive(Debug)]
enum Expect {
    /// The engine's reply, relayed.
    Relay,
    /// The engine's reply to a RCPT (its verdict: recipient files, call-ahead), relayed; a
    /// refusal takes the recipient back out of the transaction `txn`, if it is still open.
    Rcpt { address: String, txn: u64 },
    /// The engine's reply to DATA, relayed: 354 starts the body.
    Data,
    /// The engine's reply to something we sent for ourselves (EHLO, MAIL, RSET): not relayed.
    Swallow,
    /// Our own reply, sent when its turn comes.
    Local(Reply),
}

/// What the driver must do next (after writing [`Session::output`] to the client and
/// [`Session::engine_output`] to the engine).
#[derive(Debug)]
pub enum Step {
    /// Read more from the client (and from the engine, if one is connected).
    More,
    /// Read from the engine only: the client's next bytes wait for its answer.
    WaitEngine,
    /// The bytes just used are message body: send them to the engine as they are.
    Forward,
    /// The transaction's first recipient: route its tenant, then reuse the connected engine
    /// ([`Session::reused`]), or drain and drop it and connect another
    /// ([`Session::connected`]), or give up ([`Session::unavailable`]).
    Route(TenantIdx),
    /// A recipient that cannot be routed (not ours: `None`, or another tenant's): count it.
    Unrouted(Option<TenantIdx>),
    /// Our 220 is in the output: write it, start TLS, then go on.
    StartTls,
    /// The session is over (the output holds its last replies).
    Close(Ending),
}

/// One client session's protocol state.
#[derive(Debug)]
pub struct Session {
    server: Server<TenantIdx>,
    /// STARTTLS is configured (it is offered while no engine is connected).
    starttls: bool,
    /// For the client, in order, not yet written.
    out: Vec<u8>,
    /// For the engine, not yet written.
    to_engine: Vec<u8>,
    pending: VecDeque<Expect>,
    /// The tenant the connected engine was routed for (the driver holds the connection).
    engine: Option<TenantIdx>,
    /// The open transaction's MAIL line (with CRLF), and whether the engine has it.
    mail: Option<(Vec<u8>, bool)>,
    /// The RCPT waiting for its route: its line, address and tenant.
    routing: Option<(Vec<u8>, String, TenantIdx)>,
    /// DATA went to the engine; the client's bytes wait for its answer.
    awaiting_data: bool,
    /// Counts transactions (EHLO, RSET and end of data start a new one), so a late refusal of
    /// a recipient is applied only to the transaction it was part of.
    txn: u64,
    /// QUIT or a limit: the session ends once the replies owed are out.
    closing: bool,
    /// Recipients the engine refused as busy (`451 4.3.2`) not yet told to admission.
    busy: u32,
}

impl Session {
    /// `limits.starttls`: a certificate is configured.
    pub fn new(limits: SessionLimits) -> Session {
        Session {
            starttls: limits.starttls,
            server: Server::new(SessionLimits {
                max_recipients: MAX_RECIPIENTS,
                collect: false,
                ..limits
            }),
            out: Vec::with_capacity(512),
            to_engine: Vec::new(),
            pending: VecDeque::new(),
            engine: None,
            mail: None,
            routing: None,
            awaiting_data: false,
            txn: 0,
            closing: false,
            busy: 0,
        }
    }

    /// Queues the banner.
    pub fn greet(&mut self) {
        self.server.banner().write_to(&mut self.out);
    }

    /// Bytes for the client; the driver writes and clears them.
    pub fn output(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// Bytes for the engine; the driver writes and clears them.
    pub fn engine_output(&mut self) -> &mut Vec<u8> {
        &mut self.to_engine
    }

    /// Frees the output buffers that have been written out (a session waiting for its
    /// client holds none; the next reply allocates again).
    pub fn release_buffers(&mut self) {
        for out in [&mut self.out, &mut self.to_engine] {
            if out.is_empty() {
                *out = Vec::new();
            }
        }
    }

    pub fn in_body(&self) -> bool {
        self.server.in_body()
    }

    /// At a command boundary with nothing owed: shutdown may end the session here.
    pub fn idle(&self) -> bool {
        !self.server.in_body()
            && !self.awaiting_data
            && self.routing.is_none()
            && self.pending.is_empty()
    }

    /// The engine could go without the client noticing: it owes nothing and has no
    /// recipient of the open transaction (the next RCPT connects again, MAIL is replayed).
    pub fn engine_dispensable(&self) -> bool {
        self.idle() && self.server.owner().is_none()
    }

    /// The engine still owes replies.
    pub fn awaiting_engine(&self) -> bool {
        self.pending.iter().any(|p| !matches!(p, Expect::Local(_)))
    }

    /// Handles the start of the client's bytes; returns how many it used and what to do.
    pub fn client(
        &mut self,
        buf: &[u8],
        recipients: &impl Recipients<Owner = TenantIdx>,
    ) -> (usize, Step) {
        let mut used = 0;
        loop {
            if self.closing {
                let step = if self.pending.is_empty() {
                    Step::Close(Ending::Protocol)
                } else {
                    Step::WaitEngine
                };
                return (used, step);
            }
            if let Some((_, _, owner)) = &self.routing {
                return (used, Step::Route(*owner));
            }
            if self.awaiting_data {
                return (used, Step::WaitEngine);
            }
            self.server
                .offer_starttls(self.starttls && self.engine.is_none());
            let (n, event) = self.server.input(&buf[used..], recipients);
            let line = &buf[used..used + n];
            used += n;
            match event {
                Event::More => return (used, Step::More),
                Event::Body => return (used, Step::Forward),
                Event::Message(_) => {
                    // The client's transaction is over; its next MAIL may already follow.
                    self.mail = None;
                    self.txn += 1;
                    self.pending.push_back(Expect::Relay);
                    return (used, Step::Forward);
                }
                Event::Reply(r) => self.local(r),
                Event::RcptRefused { reply, cause } => {
                    self.local(reply);
                    let tenant = match cause {
                        Unroutable::NotOurs => None,
                        Unroutable::OtherOwner(t) => Some(t),
                    };
                    return (used, Step::Unrouted(tenant));
                }
                Event::Hello(r) | Event::Reset(r) => {
                    self.mail = None;
                    self.txn += 1;
                    if self.engine.is_some() {
                        self.forward(line, Expect::Swallow);
                    }
                    self.local(r);
                }
                Event::Mail(r) => {
                    self.mail = Some((with_crlf(line), false));
                    self.local(r);
                }
                Event::Close(r) => {
                    self.local(r);
                    self.closing = true;
                }
                Event::StartTls(r) => {
                    // Offered only without an engine, so nothing is owed before it.
                    r.write_to(&mut self.out);
                    return (used, Step::StartTls);
                }
                Event::Rcpt { address, owner } => {
                    if self.engine.is_some() && self.server.owner().is_some() {
                        let expect = Expect::Rcpt {
                            address: address.clone(),
                            txn: self.txn,
                        };
                        self.forward(line, expect);
                        self.server.accept_rcpt(address, owner);
                    } else {
                        self.routing = Some((with_crlf(line), address, owner));
                        return (used, Step::Route(owner));
                    }
                }
                Event::Data => {
                    self.forward(line, Expect::Data);
                    self.awaiting_data = true;
                    return (used, Step::WaitEngine);
                }
            }
        }
    }

    /// The route's engine is connected (greeted, introduced): replay EHLO and MAIL, send the
    /// RCPT that routed.
    pub fn connected(&mut self) {
        let Some((line, address, owner)) = self.routing.take() else {
            return;
        };
        self.engine = Some(owner);
        let helo = match self.server.helo() {
            "" => "unknown",
            h => h,
        };
        let ehlo = format!("EHLO {helo}\r\n");
        self.forward(ehlo.as_bytes(), Expect::Swallow);
        self.send_rcpt(line, address, owner);
    }

    /// The connected engine serves this route too.
    pub fn reused(&mut self) {
        let Some((line, address, owner)) = self.routing.take() else {
            return;
        };
        self.engine = Some(owner);
        self.send_rcpt(line, address, owner);
    }

    /// No engine could take the recipient: `451 4.4.0`, and the next RCPT routes again.
    pub fn unavailable(&mut self) {
        self.refuse_route(replies::NO_ENGINE);
    }

    /// The recipient that routes is refused with `reply` (a fleet-wide rate); the next RCPT
    /// routes again.
    pub fn refuse_route(&mut self, reply: Reply) {
        self.routing = None;
        self.local(reply);
    }

    /// The engine connection is gone (dropped between transactions, or drained for another).
    pub fn disconnected(&mut self) {
        self.engine = None;
        if let Some((_, sent)) = &mut self.mail {
            *sent = false;
        }
    }

    fn send_rcpt(&mut self, line: Vec<u8>, address: String, owner: TenantIdx) {
        if let Some((mail, sent)) = &mut self.mail
            && !*sent
        {
            *sent = true;
            let mail = mail.clone();
            self.forward(&mail, Expect::Swallow);
        }
        let expect = Expect::Rcpt {
            address: address.clone(),
            txn: self.txn,
        };
        self.forward(&line, expect);
        self.server.accept_rcpt(address, owner);
    }

    /// Handles the engine's bytes: relays or swallows each complete reply in command order.
    /// Returns how many bytes it used.
    pub fn engine(&mut self, buf: &[u8]) -> Result<usize, Ending> {
        let mut pos = 0;
        loop {
            let (r, used) = match reply::parse(&buf[pos..]) {
                Ok(Some(x)) => x,
                Ok(None) => return Ok(pos),
                Err(why) => return Err(Ending::EngineGarbage(why)),
            };
            let raw = &buf[pos..pos + used];
            pos += used;
            let relayed = matches!(
                self.pending.front(),
                Some(Expect::Relay | Expect::Rcpt { .. } | Expect::Data)
            );
            match self.pending.pop_front() {
                Some(Expect::Relay) => self.out.extend_from_slice(raw),
                Some(Expect::Rcpt { address, txn }) => {
                    self.out.extend_from_slice(raw);
                    if r.code == 451 && r.lines.first().is_some_and(|l| l.starts_with("4.3.2")) {
                        self.busy += 1;
                    }
                    if !r.is_positive() && txn == self.txn {
                        self.server.withdraw_rcpt(&address);
                    }
                }
                Some(Expect::Data) => {
                    self.out.extend_from_slice(raw);
                    self.awaiting_data = false;
                    if r.code == 354 {
                        self.server.begin_data();
                    }
                }
                Some(Expect::Swallow) => {
                    if !r.is_positive() {
                        tracing::info!(code = r.code, text = %r.text(), "engine refused a command the edge sent for itself");
                    }
                }
                Some(Expect::Local(l)) => {
                    // Locals never lead the queue (they are written as soon as they do); a
                    // reply here was not asked for.
                    l.write_to(&mut self.out);
                    tracing::debug!(code = r.code, "unsolicited engine reply dropped");
                }
                None => tracing::debug!(code = r.code, "unsolicited engine reply dropped"),
            }
            if relayed && r.code == 421 {
                // The engine closes after a 421 (too many errors, shutting down): so does the
                // client's session, once the replies owed are out.
                self.closing = true;
            }
            while let Some(Expect::Local(_)) = self.pending.front() {
                if let Some(Expect::Local(l)) = self.pending.pop_front() {
                    l.write_to(&mut self.out);
                }
            }
        }
    }

    /// How many recipients the engine refused as busy since the last call (admission sheds
    /// new connections for each: `admission.rs`).
    pub fn take_busy(&mut self) -> u32 {
        std::mem::take(&mut self.busy)
    }

    /// Our reply, written now or queued behind the engine's replies still owed.
    fn local(&mut self, r: Reply) {
        if self.pending.is_empty() {
            r.write_to(&mut self.out);
        } else {
            self.pending.push_back(Expect::Local(r));
        }
    }

    /// A command line for the engine (its line end made CRLF), and what its reply means.
    fn forward(&mut self, line: &[u8], expect: Expect) {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        self.to_engine.extend_from_slice(line);
        self.to_engine.extend_from_slice(b"\r\n");
        self.pending.push_back(expect);
    }
}

/// A command line as received, with CRLF (for replaying it later).
fn with_crlf(line: &[u8]) -> Vec<u8> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut v = Vec::with_capacity(line.len() + 2);
    v.extend_from_slice(line);
    v.extend_from_slice(b"\r\n");
    v
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;

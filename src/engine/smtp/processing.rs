//! Messages being scanned at once, and the early refusal that keeps their wait short when more
//! senders come than the engine can serve.
//!
//! After its final dot a message is scanned and spooled before its `250`: scanning is where an
//! engine spends its CPU. (Spooling is not counted here: it mostly waits for the fsync that
//! every ready message shares, and the more messages are ready, the more share one.) Doing more of them at once than the machine can does not
//! finish more; it only answers every message later (each sender waits longer, its session and
//! its memory are held longer, and past a sender's timeout it sends again what we did take). So:
//! - at most `engine.max_processing` messages are processed at once; the next ones wait their
//!   turn, first come first served ([`Processing::slot`]);
//! - while as many messages wait as are being processed, or [`IN_FLIGHT_PER_TURN`] times that
//!   many are between their final dot and their answer (the spool behind), the engine is *busy*
//!   ([`Processing::busy`]): a new recipient gets `451 4.3.2` at RCPT, before its sender sends
//!   a body, and the sender tries again later (through an edge, the edge relays the `451`).
//!
//! A message already received is never refused for load: it waits its turn, and is scanned by
//! every check its policy configures, as at any other time (nothing is skipped to keep up;
//! `maildistiller_scan_checks_total` shows it). The busy refusal comes before the body, when
//! it costs the sender one round trip and us nothing.
//!
//! Bounds: messages processed at once, `max_processing` (default four per CPU); messages
//! waiting, at most the sessions that were past RCPT when the engine became busy (so at most
//! `engine.max_sessions`), each holding the memory `engine.data_memory` gave its body.

use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus::{IntCounter, IntGauge};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::ops::Metrics;

/// Messages scanned at once per CPU when `engine.max_processing` is 0 (the default): enough
/// to keep every CPU busy while others wait for an external scanner, few enough that a
/// message's wait stays a few service times.
pub const PER_CPU: usize = 4;

/// The engine's processing slots and its busy signal.
#[derive(Debug)]
pub struct Processing {
    slots: Semaphore,
    /// Messages waiting for a slot.
    waiting: AtomicUsize,
    /// Messages between their final dot and their answer (scanning, waiting, spooling).
    in_flight: AtomicUsize,
    limit: usize,
    waiting_gauge: IntGauge,
    busy_total: IntCounter,
}

/// A message's turn to be processed; dropping it lets the next one in.
#[derive(Debug)]
pub struct Slot<'a>(#[allow(dead_code)] Option<SemaphorePermit<'a>>);

/// Counts a message from its final dot to its answer (also when its session goes away).
#[derive(Debug)]
pub struct InFlight<'a>(&'a Processing);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Messages between the final dot and the answer, per message scanned at once, beyond which the
/// engine is busy even when few wait to be scanned: the spool (its shared fsync, a shadow's
/// copy) is what is behind. Four times the turn: well above what a healthy engine holds (the
/// messages of one fsync round), well below what an overload piles up.
pub const IN_FLIGHT_PER_TURN: usize = 4;

/// Counts a waiting message for as long as it waits (also when its session goes away).
struct Waiting<'a>(&'a Processing);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
        self.0.waiting_gauge.dec();
    }
}

impl Processing {
    /// `configured`: `engine.max_processing` (0: [`PER_CPU`] per CPU).
    pub fn new(configured: u32, metrics: &Metrics) -> Processing {
        let limit = match configured {
            0 => PER_CPU * std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            n => n as usize,
        };
        let waiting_gauge = IntGauge::new(
            "engine_processing_waiting",
            "Messages received and waiting for their turn to be scanned and spooled.",
        )
        .expect("valid metric");
        metrics.register(Box::new(waiting_gauge.clone()));
        let busy_total = IntCounter::new(
            "engine_busy_refusals_total",
            "Recipients refused with 451 4.3.2 because as many messages waited as were processed.",
        )
        .expect("valid metric");
        metrics.register(Box::new(busy_total.clone()));
        Processing {
            slots: Semaphore::new(limit),
            waiting: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            limit,
            waiting_gauge,
            busy_total,
        }
    }

    /// Messages processed at once.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// As many messages wait to be scanned as are being scanned, or [`IN_FLIGHT_PER_TURN`]
    /// times that many are between their final dot and their answer: refuse new recipients
    /// (and count it).
    pub fn busy(&self) -> bool {
        let busy = self.waiting.load(Ordering::Acquire) >= self.limit
            || self.in_flight.load(Ordering::Acquire) >= IN_FLIGHT_PER_TURN * self.limit;
        if busy {
            self.busy_total.inc();
        }
        busy
    }

    /// A message's final dot has come: counted until the returned guard is dropped (its answer).
    pub fn arrived(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self)
    }

    /// Waits for this message's turn (first come, first served).
    pub async fn slot(&self) -> Slot<'_> {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        self.waiting_gauge.inc();
        let _waiting = Waiting(self);
        // The semaphore is never closed; without a permit only the bound would be lost.
        Slot(self.slots.acquire().await.ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::task::{Context, Waker};

    fn pending<F: Future>(f: std::pin::Pin<&mut F>) -> bool {
        f.poll(&mut Context::from_waker(Waker::noop())).is_pending()
    }

    #[test]
    fn busy_once_the_spool_holds_four_times_the_turn() {
        let p = Processing::new(2, &Metrics::new("engine", "test"));
        let mut held: Vec<InFlight> = (0..7).map(|_| p.arrived()).collect();
        assert!(!p.busy(), "7 between dot and answer, turn 2");
        held.push(p.arrived());
        assert!(p.busy(), "8 = 4 x 2: busy");
        held.pop();
        assert!(!p.busy(), "an answer given: not busy");
    }

    #[tokio::test]
    async fn busy_once_as_many_wait_as_are_processed() {
        let p = Processing::new(2, &Metrics::new("engine", "test"));
        let (a, b) = (p.slot().await, p.slot().await);
        assert!(!p.busy(), "processing two, none waiting");
        let mut w1 = Box::pin(p.slot());
        assert!(pending(w1.as_mut()));
        assert!(!p.busy(), "one waits");
        let mut w2 = Box::pin(p.slot());
        assert!(pending(w2.as_mut()));
        assert!(p.busy(), "two wait: busy");
        drop(w2); // its session went away while it waited
        assert!(!p.busy());
        drop(a);
        let _c = w1.await;
        assert!(!p.busy());
        drop(b);
        assert_eq!(p.busy_total.get(), 1);
    }
}

//! The budget of one message: one account shared by decoding, unpacking and scanning.
//!
//! Lifecycle: [`Budget::new`] when a message's scan starts (the wall-clock deadline starts
//! then); every step charges it *before* it allocates or works (`charge_bytes` before a buffer
//! is filled, `part` before a MIME part is walked, `entry` before an archive entry is read,
//! `time` between steps); the first refusal ends decoding and becomes the finding
//! `unscannable.<limit>`. A budget is never shared between messages.

use std::time::{Duration, Instant};

use crate::config::policy::ScanLimits;

/// Which limit a message went past.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Exceeded {
    #[error("decoded size over {0} bytes")]
    Bytes(u64),
    #[error("more than {0} MIME parts")]
    Parts(u32),
    #[error("nested deeper than {0} levels")]
    Depth(u32),
    #[error("more than {0} header lines")]
    HeaderLines(u32),
    #[error("more than {0} archive entries")]
    ArchiveEntries(u32),
    #[error("archive entry inflates more than {0}:1")]
    ArchiveRatio(u32),
    #[error("scan took longer than {0:?}")]
    Time(Duration),
}

impl Exceeded {
    /// The limit's short name, used in finding names (`unscannable.parts`) and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Exceeded::Bytes(_) => "bytes",
            Exceeded::Parts(_) => "parts",
            Exceeded::Depth(_) => "depth",
            Exceeded::HeaderLines(_) => "header_lines",
            Exceeded::ArchiveEntries(_) => "archive_entries",
            Exceeded::ArchiveRatio(_) => "archive_ratio",
            Exceeded::Time(_) => "time",
        }
    }

    pub const NAMES: [&'static str; 7] = [
        "bytes",
        "parts",
        "depth",
        "header_lines",
        "archive_entries",
        "archive_ratio",
        "time",
    ];
}

#[derive(Debug, Clone)]
pub struct Budget {
    max_bytes: u64,
    max_parts: u32,
    max_depth: u32,
    pub(crate) max_header_lines: u32,
    max_entries: u32,
    max_ratio: u32,
    max_time: Duration,
    deadline: Instant,
    bytes: u64,
    parts: u32,
    entries: u32,
    deepest: u32,
}

impl Budget {
    pub fn new(limits: &ScanLimits, start: Instant) -> Budget {
        let max_time = limits.max_time.get();
        Budget {
            max_bytes: limits.max_decoded_bytes.0,
            max_parts: limits.max_parts,
            max_depth: limits.max_depth,
            max_header_lines: limits.max_header_lines,
            max_entries: limits.max_archive_entries,
            max_ratio: limits.max_archive_ratio,
            max_time,
            deadline: start + max_time,
            bytes: 0,
            parts: 0,
            entries: 0,
            deepest: 0,
        }
    }

    /// The part limit, for the pre-flight count.
    pub fn max_parts_hint(&self) -> u32 {
        self.max_parts
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Time left before the deadline (zero when past it).
    pub fn time_left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Reserves `n` bytes that are about to be produced.
    pub fn charge_bytes(&mut self, n: u64) -> Result<(), Exceeded> {
        match self.bytes.checked_add(n) {
            Some(total) if total <= self.max_bytes => {
                self.bytes = total;
                Ok(())
            }
            _ => Err(Exceeded::Bytes(self.max_bytes)),
        }
    }

    /// Bytes that may still be produced.
    pub fn bytes_left(&self) -> u64 {
        self.max_bytes - self.bytes
    }

    /// One more MIME part is about to be walked.
    pub fn part(&mut self) -> Result<(), Exceeded> {
        if self.parts >= self.max_parts {
            return Err(Exceeded::Parts(self.max_parts));
        }
        self.parts += 1;
        Ok(())
    }

    /// Something is about to be walked at nesting `depth` (the message itself is 0).
    pub fn depth(&mut self, depth: u32) -> Result<(), Exceeded> {
        if depth > self.max_depth {
            return Err(Exceeded::Depth(self.max_depth));
        }
        self.deepest = self.deepest.max(depth);
        Ok(())
    }

    /// `n` archive entries are announced (by a central directory) or about to be read.
    pub fn entries(&mut self, n: u64) -> Result<(), Exceeded> {
        match u64::from(self.entries).checked_add(n) {
            Some(total) if total <= u64::from(self.max_entries) => {
                self.entries = total as u32;
                Ok(())
            }
            _ => Err(Exceeded::ArchiveEntries(self.max_entries)),
        }
    }

    /// Whether `inflated` bytes from `compressed` bytes is within the ratio.
    pub fn ratio(&self, inflated: u64, compressed: u64) -> Result<(), Exceeded> {
        if inflated > self.ratio_cap(compressed) {
            return Err(Exceeded::ArchiveRatio(self.max_ratio));
        }
        Ok(())
    }

    /// Most bytes `compressed` bytes may inflate to (a small floor spares tiny entries).
    pub fn ratio_cap(&self, compressed: u64) -> u64 {
        compressed.max(64).saturating_mul(u64::from(self.max_ratio))
    }

    /// Between steps: is there time left?
    pub fn time(&self) -> Result<(), Exceeded> {
        if Instant::now() >= self.deadline {
            return Err(Exceeded::Time(self.max_time));
        }
        Ok(())
    }

    pub fn stats(&self) -> Stats {
        Stats {
            bytes: self.bytes,
            parts: self.parts,
            entries: self.entries,
            depth: self.deepest,
        }
    }
}

/// What a message spent, for the verdict and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub bytes: u64,
    pub parts: u32,
    pub entries: u32,
    pub depth: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Bytes, Dur};

    fn limits() -> ScanLimits {
        ScanLimits {
            max_decoded_bytes: Bytes(100),
            max_parts: 2,
            max_depth: 1,
            max_archive_entries: 3,
            max_archive_ratio: 10,
            max_time: Dur::secs(60),
            ..ScanLimits::default()
        }
    }

    #[test]
    fn every_limit_refuses_past_it() {
        let mut b = Budget::new(&limits(), Instant::now());
        assert!(b.charge_bytes(60).is_ok());
        assert_eq!(b.charge_bytes(41), Err(Exceeded::Bytes(100)));
        assert_eq!(b.bytes_left(), 40);
        assert!(b.charge_bytes(u64::MAX).is_err(), "no overflow");
        assert!(b.part().is_ok() && b.part().is_ok());
        assert_eq!(b.part(), Err(Exceeded::Parts(2)));
        assert!(b.depth(1).is_ok());
        assert_eq!(b.depth(2), Err(Exceeded::Depth(1)));
        assert!(b.entries(3).is_ok());
        assert_eq!(b.entries(1), Err(Exceeded::ArchiveEntries(3)));
        assert!(b.ratio(640, 10).is_ok(), "the 64-byte floor");
        assert_eq!(b.ratio(10_001, 1000), Err(Exceeded::ArchiveRatio(10)));
    }

    #[test]
    fn a_zero_time_budget_is_spent_at_once() {
        let l = ScanLimits {
            max_time: Dur::secs(0),
            ..ScanLimits::default()
        };
        let b = Budget::new(&l, Instant::now());
        assert!(matches!(b.time(), Err(Exceeded::Time(_))));
    }
}

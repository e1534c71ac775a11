//! The rise/fall state machine of one probe target, with no I/O and no clock: it is fed probe
//! results and says when the target changes state.
//!
//! Lifecycle of a target:
//!
//! ```text
//!   new ──first result──▶ Up or Down            (the first probe decides at once)
//!   Up   ── `fall` failures in a row ──▶ Down   (a success resets the count)
//!   Down ── `rise` successes in a row ──▶ Up    (a failure resets the count)
//! ```
//!
//! Until the first result a target counts as up (optimistic), so a process that has just
//! started answers with every site rather than none; the first probe runs as soon as the target
//! is added, so that window is at most one probe timeout.

use std::fmt;

/// What a target is believed to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Up,
    Down,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Up => "up",
            Status::Down => "down",
        }
    }

    pub fn is_up(self) -> bool {
        self == Status::Up
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verdict on one target: its status and how many results in a row contradicted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    status: Status,
    /// Consecutive results that disagree with `status`.
    streak: u32,
    /// False until the first result arrives.
    decided: bool,
}

impl Default for Verdict {
    fn default() -> Self {
        Verdict::new()
    }
}

impl Verdict {
    /// A target not probed yet: up, undecided.
    pub const fn new() -> Verdict {
        Verdict {
            status: Status::Up,
            streak: 0,
            decided: false,
        }
    }

    pub fn status(&self) -> Status {
        self.status
    }

    /// True once a probe result has been seen.
    pub fn decided(&self) -> bool {
        self.decided
    }

    /// Feeds one probe result; returns the new status when it changed. `rise` and `fall` of 0
    /// behave as 1.
    pub fn observe(&mut self, ok: bool, rise: u32, fall: u32) -> Option<Status> {
        let seen = if ok { Status::Up } else { Status::Down };
        if !self.decided {
            self.decided = true;
            self.streak = 0;
            let changed = self.status != seen;
            self.status = seen;
            return changed.then_some(seen);
        }
        if seen == self.status {
            self.streak = 0;
            return None;
        }
        self.streak = self.streak.saturating_add(1);
        let needed = match seen {
            Status::Up => rise,
            Status::Down => fall,
        }
        .max(1);
        if self.streak >= needed {
            self.status = seen;
            self.streak = 0;
            Some(seen)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds a string of results (`+` success, `-` failure) and returns the status after each.
    fn run(results: &str, rise: u32, fall: u32) -> String {
        let mut v = Verdict::new();
        results
            .chars()
            .map(|c| {
                v.observe(c == '+', rise, fall);
                match v.status() {
                    Status::Up => 'U',
                    Status::Down => 'D',
                }
            })
            .collect()
    }

    #[test]
    fn the_first_result_decides_at_once() {
        assert_eq!(run("-", 2, 3), "D");
        assert_eq!(run("+", 2, 3), "U");
        let mut v = Verdict::new();
        assert!(!v.decided());
        assert_eq!(v.observe(true, 2, 2), None, "already up: no transition");
        assert!(v.decided());
    }

    #[test]
    fn fall_failures_in_a_row_take_it_down_and_rise_successes_bring_it_back() {
        assert_eq!(
            run("+--+---", 2, 3),
            "UUUUUUD",
            "a success resets the failure count"
        );
        assert_eq!(run("+---++", 2, 3), "UUUDDU");
        assert_eq!(
            run("-+-++", 2, 2),
            "DDDDU",
            "a failure resets the success count"
        );
    }

    #[test]
    fn zero_thresholds_behave_as_one() {
        assert_eq!(run("+-+", 0, 0), "UDU");
    }

    #[test]
    fn transitions_are_reported_once() {
        let mut v = Verdict::new();
        assert_eq!(v.observe(true, 1, 2), None);
        assert_eq!(v.observe(false, 1, 2), None);
        assert_eq!(v.observe(false, 1, 2), Some(Status::Down));
        assert_eq!(v.observe(false, 1, 2), None);
        assert_eq!(v.observe(true, 1, 2), Some(Status::Up));
    }
}

//! A warning that repeats, logged at most once per period: while etcd has no quorum every
//! BUSY answer had its WARN line, and a Linux guest re-sends its PR OUT every few milliseconds
//! (about 300 lines for one 7-second PR OUT).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::util::lock::lock;

/// How often a repeated BUSY warning is logged at most.
pub const BUSY_LOG_EVERY: Duration = Duration::from_secs(1);

/// The first warning is logged; those within `every` of the last one logged are only counted,
/// and the count goes with the next one logged (or with [`RateLimited::flush`]).
pub struct RateLimited {
    every: Duration,
    /// When the last line was logged, and how many were left out since.
    inner: Mutex<(Option<Instant>, u64)>,
}

impl RateLimited {
    pub fn new(every: Duration) -> Self {
        RateLimited {
            every,
            inner: Mutex::new((None, 0)),
        }
    }

    /// Whether a warning at `now` is to be logged: `Some(n)` with the number left out since the
    /// last one logged, `None` when it is only counted.
    pub fn check(&self, now: Instant) -> Option<u64> {
        let mut g = lock(&self.inner);
        match g.0 {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                g.1 = g.1.saturating_add(1);
                None
            }
            _ => {
                g.0 = Some(now);
                Some(std::mem::take(&mut g.1))
            }
        }
    }

    /// The number left out since the last line logged, now reported (the next warning is
    /// logged at once).
    pub fn flush(&self) -> u64 {
        let mut g = lock(&self.inner);
        g.0 = None;
        std::mem::take(&mut g.1)
    }

    /// Logs `line` as a warning unless one was logged within the period; says how many were
    /// left out.
    pub fn warn(&self, line: std::fmt::Arguments<'_>) {
        match self.check(Instant::now()) {
            Some(0) => log::warn!("{line}"),
            Some(n) => log::warn!("{line} ({n} more like it not logged)"),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests;

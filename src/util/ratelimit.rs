//! Log lines that a network peer can cause, rate-limited per source address: a flood of
//! connections (half-open logins, discovery sessions, refused logins) must not flood the log,
//! while an operator trying logins by hand sees each one. Each source has a bucket of `burst`
//! lines that refills by one per period; what it left out is counted and reported with its
//! next line. At most `max_sources` sources are followed at once; beyond them (an attacker with
//! many addresses) the rest share one more bucket.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::util::lock::lock;

/// A source's lines left to log, when it last earned one, and how many were left out.
#[derive(Clone, Copy, Default)]
struct Budget {
    lines: u32,
    earned: Option<Instant>,
    left_out: u64,
}

impl Budget {
    /// `Some(left out)` when a line at `now` is logged, `None` when it is only counted.
    fn take(&mut self, now: Instant, every: Duration, burst: u32) -> Option<u64> {
        match self.earned {
            None => (self.lines, self.earned) = (burst, Some(now)),
            Some(at) => {
                let periods =
                    now.saturating_duration_since(at).as_nanos() / every.as_nanos().max(1);
                if periods > 0 {
                    let lines = u128::from(self.lines) + periods;
                    self.lines = u32::try_from(lines).unwrap_or(burst).min(burst);
                    self.earned = Some(now);
                }
            }
        }
        if self.lines == 0 {
            self.left_out = self.left_out.saturating_add(1);
            return None;
        }
        self.lines -= 1;
        Some(std::mem::take(&mut self.left_out))
    }

    /// Whether the bucket is full again at `now` (the source can be forgotten).
    fn full(&self, now: Instant, every: Duration, burst: u32) -> bool {
        self.earned
            .is_none_or(|at| now.saturating_duration_since(at) >= every.saturating_mul(burst))
    }
}

/// A burst of lines per source, then one per period.
pub struct PerSource {
    /// The log target of its lines (the module whose lines they are).
    target: &'static str,
    every: Duration,
    burst: u32,
    max_sources: usize,
    inner: Mutex<(HashMap<IpAddr, Budget>, Budget)>,
}

impl PerSource {
    pub fn new(target: &'static str, every: Duration, burst: u32, max_sources: usize) -> Self {
        PerSource {
            target,
            every,
            burst: burst.max(1),
            max_sources: max_sources.max(1),
            inner: Mutex::default(),
        }
    }

    /// Whether a line from `source` at `now` is logged: `Some(n)` with the number left out
    /// since its last one, `None` when it is only counted.
    pub fn check(&self, source: IpAddr, now: Instant) -> Option<u64> {
        let (every, burst) = (self.every, self.burst);
        let mut g = lock(&self.inner);
        let (sources, others) = &mut *g;
        if !sources.contains_key(&source) && sources.len() >= self.max_sources {
            // Sources whose bucket is full again are forgotten (with what they left out).
            sources.retain(|_, b| !b.full(now, every, burst));
            if sources.len() >= self.max_sources {
                return others.take(now, every, burst);
            }
        }
        sources.entry(source).or_default().take(now, every, burst)
    }

    /// Logs `line` at `level` unless `source` used up its lines.
    pub fn log(&self, level: log::Level, source: IpAddr, line: std::fmt::Arguments<'_>) {
        match self.check(source, Instant::now()) {
            Some(0) => log::log!(target: self.target, level, "{line}"),
            Some(n) => log::log!(
                target: self.target,
                level,
                "{line} ({n} more from {source} not logged)"
            ),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests;

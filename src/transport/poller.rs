//! Busy-polling for the next request, shared by the transports: a daemon-wide budget of
//! polling threads ([`Poller`]) and a window that adapts to the peer ([`PollWindow`]). A thread
//! that has just answered watches for the next request a little before it sleeps, so that a
//! peer about to send it neither wakes the thread (a system call and a context switch, costly
//! on an idle virtual machine) nor waits for it.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

/// Threads of the whole daemon busy-polling right now.
static POLLERS: AtomicUsize = AtomicUsize::new(0);

/// A turn at busy-polling. At most half the host's cores (at least one) poll at once: a
/// spinning thread takes a core from the guests and their clients, and on a small host more
/// pollers than that measured slower than none (docs/benchmarks.md).
pub struct Poller;

impl Poller {
    /// A turn, if fewer threads than the budget poll now; given back when dropped.
    pub fn take() -> Option<Poller> {
        static LIMIT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        let limit = *LIMIT.get_or_init(|| {
            std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
        });
        let ok = POLLERS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok();
        // Built only with a turn taken: a `Poller` gives its turn back when dropped.
        ok.then(|| Poller)
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        POLLERS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How long to busy-poll one ring or connection, in µs; 0 until its first poll. The window
/// adapts to the peer: a poll that finds a request restores the whole window, one that times
/// out halves it, down to an eighth, so a peer that pauses longer than the window costs little
/// while a busy one keeps the full window.
#[derive(Debug, Default)]
pub struct PollWindow(AtomicU32);

impl PollWindow {
    /// The window of the next poll, at most `max`.
    pub fn window(&self, max: Duration) -> Duration {
        let max_us = max.as_micros().min(u128::from(u32::MAX)) as u32;
        match self.0.load(Ordering::Relaxed) {
            0 => max,
            us => Duration::from_micros(u64::from(us.min(max_us))),
        }
    }

    /// Records whether the last poll (of `window`, at most `max`) found a request.
    pub fn outcome(&self, found: bool, window: Duration, max: Duration) {
        let max_us = max.as_micros().min(u128::from(u32::MAX)) as u32;
        let next = if found {
            max_us
        } else {
            let us = window.as_micros() as u32;
            (us / 2).max(max_us / 8).max(1)
        };
        self.0.store(next, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;

//! The read lease: whether this daemon may admit I/O now.
//!
//! The deadline is a point on this host's `CLOCK_BOOTTIME`, which keeps counting through a
//! suspend (`CLOCK_MONOTONIC`, Rust's `Instant`, stops then, and a suspended host must come back
//! with its lease already over). No other clock is compared with it: etcd's lease TTLs restart
//! on a leader change and are never used for safety.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Nanoseconds on `CLOCK_BOOTTIME`.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_BOOTTIME exists on every Linux since
    // 2.6.39, so the call cannot fail and only writes `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// When the lease ends, on [`boottime_ns`]; 0 while it is not held.
#[derive(Debug, Default)]
pub struct ReadLease {
    valid_until: AtomicU64,
}

impl ReadLease {
    /// A lease not held yet: nothing is admitted until the first renewal.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether I/O may be admitted now.
    pub fn valid(&self) -> bool {
        boottime_ns() < self.valid_until.load(Ordering::Acquire)
    }

    /// What is left of the lease (zero when it is over).
    pub fn remaining(&self) -> Duration {
        Duration::from_nanos(
            self.valid_until
                .load(Ordering::Acquire)
                .saturating_sub(boottime_ns()),
        )
    }

    /// A renewal sent at `sent_ns` proved this daemon current: the lease holds until
    /// `sent_ns + lease`. Never moves the deadline back (an older renewal answered late).
    pub fn renewed(&self, sent_ns: u64, lease: Duration) {
        let until = sent_ns.saturating_add(super::config::nanos(lease));
        self.valid_until.fetch_max(until, Ordering::AcqRel);
    }

    /// Ends the lease now (a graceful leave, or the state was found replaced).
    pub fn revoke(&self) {
        self.valid_until.store(0, Ordering::Release);
    }

    /// Waits for the lease to be valid, but only until `hold` after it ran out (so a long
    /// outage fails each new command at once rather than one hold after another); whether it is
    /// valid. A lease never held is not waited for.
    pub fn wait_held(&self, hold: Duration) -> bool {
        loop {
            let now = boottime_ns();
            let until = self.valid_until.load(Ordering::Acquire);
            if now < until {
                return true;
            }
            if until == 0 || now >= until.saturating_add(super::config::nanos(hold)) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

#[cfg(test)]
mod tests;

//! The read lease: whether this daemon may admit I/O now.
//!
//! The deadline is a point on this host's `CLOCK_BOOTTIME`, which keeps counting through a
//! suspend (`CLOCK_MONOTONIC`, Rust's `Instant`, stops then, and a suspended host must come back
//! with its lease already over). No other clock is compared with it: etcd's lease TTLs restart
//! on a leader change and are never used for safety.
//!
//! **The I/O bound.** An admission's I/O must end by the end of the lease it was admitted under
//! plus `max_io_ms` (D_io): another daemon's PREEMPT that this one did not acknowledge returns
//! GOOD only after that much time, on its own clock. [`ReadLease::io_deadline`] gives each
//! admission that deadline; an I/O that ends after it ([`ReadLease::overran`]) raises the
//! *I/O overrun* fault: nothing is admitted until the operator resumes or restarts the daemon.

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
    /// The end of the latest lease granted, never cleared ([`ReadLease::revoke`] clears
    /// `valid_until` only): the I/O deadline of an admission made just before a revocation.
    granted_until: AtomicU64,
    /// When the last renewal that extended the lease was sent (a resume needs one sent after
    /// the fault).
    renewed_sent: AtomicU64,
    /// When the I/O overrun fault was raised, on [`boottime_ns`]; 0 while there is none.
    overrun_at: AtomicU64,
    /// How far past its deadline the latest overrunning I/O ended, in nanoseconds.
    overrun_ns: AtomicU64,
    /// How many admissions' I/O ended past their deadline since the daemon started.
    overruns: AtomicU64,
}

/// Why [`ReadLease::resume`] refused to clear the I/O overrun fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResumeRefused {
    /// There is no fault to clear.
    #[error("no I/O overrun to resume from: this daemon is admitting I/O")]
    NoFault,
    /// No renewal sent after the fault has proved this daemon current yet.
    #[error(
        "no renewal of the read lease since the overrun has proved this daemon current yet \
         (is etcd reachable?); try again in a moment"
    )]
    NotRenewed,
}

impl ReadLease {
    /// A lease not held yet: nothing is admitted until the first renewal.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the lease is valid now (I/O is admitted while it is and no fault is raised: see
    /// [`ReadLease::admits`]).
    pub fn valid(&self) -> bool {
        boottime_ns() < self.valid_until.load(Ordering::Acquire)
    }

    /// Whether I/O may be admitted now: the lease is valid and no I/O overran its bound.
    pub fn admits(&self) -> bool {
        self.overrun_at.load(Ordering::Acquire) == 0 && self.valid()
    }

    /// The deadline, on [`boottime_ns`], by which the I/O of an admission made now (with the
    /// lease valid) must end: the lease's end plus `max_io`. One atomic load, no clock read.
    /// The latest lease granted counts: a renewal that extended it proved this daemon current
    /// when it was sent, so any other daemon's later commit waits for at least that much.
    pub fn io_deadline(&self, max_io: Duration) -> u64 {
        self.granted_until
            .load(Ordering::Acquire)
            .saturating_add(super::config::nanos(max_io))
    }

    /// Checks an admission's I/O, now done, against its `deadline`
    /// ([`ReadLease::io_deadline`]); past it, raises the I/O overrun fault (admission stops)
    /// and returns by how much it was missed.
    pub fn overran(&self, deadline: u64) -> Option<Duration> {
        let now = boottime_ns();
        if now <= deadline {
            return None;
        }
        let late = now - deadline;
        self.overrun_ns.store(late, Ordering::Release);
        self.overruns.fetch_add(1, Ordering::AcqRel);
        // The first overrun's time stays: the hold of new I/O counts from it.
        let _ =
            self.overrun_at
                .compare_exchange(0, now.max(1), Ordering::AcqRel, Ordering::Acquire);
        Some(Duration::from_nanos(late))
    }

    /// The I/O overrun fault: how far past its deadline the latest overrunning I/O ended, while
    /// the fault is raised.
    pub fn overrun(&self) -> Option<Duration> {
        (self.overrun_at.load(Ordering::Acquire) != 0)
            .then(|| Duration::from_nanos(self.overrun_ns.load(Ordering::Acquire)))
    }

    /// How many admissions' I/O ended past their deadline since the start.
    pub fn overruns(&self) -> u64 {
        self.overruns.load(Ordering::Acquire)
    }

    /// Clears the I/O overrun fault, once a renewal sent after it proved this daemon current.
    /// The caller has waited for every admitted I/O to end (nothing is admitted while the fault
    /// is raised, so none can overrun after this).
    pub fn resume(&self) -> Result<(), ResumeRefused> {
        let at = self.overrun_at.load(Ordering::Acquire);
        if at == 0 {
            return Err(ResumeRefused::NoFault);
        }
        if self.renewed_sent.load(Ordering::Acquire) <= at || !self.valid() {
            return Err(ResumeRefused::NotRenewed);
        }
        self.overrun_at.store(0, Ordering::Release);
        Ok(())
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
        self.granted_until.fetch_max(until, Ordering::AcqRel);
        self.renewed_sent.fetch_max(sent_ns, Ordering::AcqRel);
        self.valid_until.fetch_max(until, Ordering::AcqRel);
    }

    /// Ends the lease now (a graceful leave, or the state was found replaced).
    pub fn revoke(&self) {
        self.valid_until.store(0, Ordering::Release);
    }

    /// Waits for the lease to be valid, but only until `hold` after it ran out (so a long
    /// outage fails each new command at once rather than one hold after another); whether it is
    /// valid. A lease never held is not waited for. While the I/O overrun fault is raised, waits
    /// for a resume, until `hold` after the fault.
    pub fn wait_held(&self, hold: Duration) -> bool {
        loop {
            let now = boottime_ns();
            let until = self.valid_until.load(Ordering::Acquire);
            let fault = self.overrun_at.load(Ordering::Acquire);
            if fault == 0 && now < until {
                return true;
            }
            let since = if fault != 0 { fault } else { until };
            if since == 0 || now >= since.saturating_add(super::config::nanos(hold)) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

#[cfg(test)]
mod tests;

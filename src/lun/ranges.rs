//! The LU's write-range lock: what makes COMPARE AND WRITE atomic (SBC-4 §5.3) against every
//! other write to the image, from any transport and any initiator.
//!
//! A COMPARE AND WRITE holds its byte range from before its read until its write is done; a
//! write (WRITE, WRITE SAME, UNMAP, virtio-blk OUT, DISCARD, WRITE ZEROES, another COMPARE AND
//! WRITE) whose range overlaps a held or awaited one waits for it, and a COMPARE AND WRITE waits
//! for the overlapping writes already under way.
//!
//! **Cheap while no COMPARE AND WRITE is outstanding.** Most of the time none is, so a write does
//! not look at ranges at all: it counts itself in `fast` and checks that `caws` is zero (the two
//! sequentially consistent operations of Dekker's protocol), and leaves by counting itself out.
//! A COMPARE AND WRITE first counts itself in `caws`, which closes that fast path, then waits
//! until the fast writes have drained (each is one bounded image I/O) and no overlapping range is
//! held. While a COMPARE AND WRITE is outstanding, writes take the slow path: under the mutex
//! they record their own ranges, then wait for the overlapping COMPARE AND WRITEs recorded
//! before them. Reads never take the lock: a read racing a COMPARE AND WRITE sees the data
//! before or after it.
//!
//! **No starvation, no deadlock.** A COMPARE AND WRITE and a slow-path write record their ranges
//! as soon as they arrive, each with the next ticket, so overlapping ones take turns in arrival
//! order: a stream of COMPARE AND WRITEs on one block cannot starve a write of it. Each waits
//! only for ranges with a lower ticket (and a COMPARE AND WRITE for the fast writes, which wait
//! for nothing), so no cycle of waits can form; every holder's I/O is bounded.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::util::lock::lock;

/// One recorded byte range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Held {
    ticket: u64,
    start: u64,
    end: u64,
    /// A COMPARE AND WRITE (waiting or holding); otherwise a plain write under way.
    caw: bool,
}

impl Held {
    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start < end && start < self.end
    }
}

#[derive(Default)]
struct Ranges {
    next: u64,
    held: Vec<Held>,
}

impl Ranges {
    fn record(&mut self, start: u64, end: u64, caw: bool) -> u64 {
        self.next += 1;
        let ticket = self.next;
        self.held.push(Held {
            ticket,
            start,
            end,
            caw,
        });
        ticket
    }
}

/// The write-range lock of one LU (see the module's text).
#[derive(Default)]
pub struct WriteRanges {
    /// COMPARE AND WRITEs waiting for or holding a range: while 0, writes take the fast path.
    caws: AtomicUsize,
    /// Writes that took the fast path and are not done.
    fast: AtomicUsize,
    ranges: Mutex<Ranges>,
    /// Signalled when a range is released or the last fast write leaves while a COMPARE AND
    /// WRITE waits.
    released: Condvar,
}

/// A write's hold of its ranges, released when dropped.
#[must_use = "the ranges are released when the guard drops"]
pub struct WriteGuard<'a> {
    lock: &'a WriteRanges,
    /// `None`: the fast path (no range recorded).
    tickets: Option<smallvec::SmallVec<[u64; 4]>>,
}

/// A COMPARE AND WRITE's exclusive hold of its range, released when dropped.
#[must_use = "the range is released when the guard drops"]
pub struct CawGuard<'a> {
    lock: &'a WriteRanges,
    ticket: u64,
}

impl WriteRanges {
    /// Holds the byte ranges `(offset, len)` of one write (or one batch of writes) until the
    /// guard drops: at once while no COMPARE AND WRITE is outstanding, else once no overlapping
    /// COMPARE AND WRITE that arrived before it waits or holds.
    pub fn write(&self, ranges: impl Iterator<Item = (u64, u64)> + Clone) -> WriteGuard<'_> {
        self.fast.fetch_add(1, SeqCst);
        if self.caws.load(SeqCst) == 0 {
            return WriteGuard {
                lock: self,
                tickets: None,
            };
        }
        self.leave_fast();
        let spans = ranges.filter(|&(_, len)| len > 0).map(|(o, l)| span(o, l));
        let mut r = lock(&self.ranges);
        // Recorded before waiting, so a COMPARE AND WRITE that comes later waits for this write
        // (one mutex hold: the tickets are consecutive, no other lies between them).
        let first = r.next + 1;
        let tickets = spans.clone().map(|(s, e)| r.record(s, e, false)).collect();
        while spans.clone().any(|(s, e)| {
            r.held
                .iter()
                .any(|h| h.caw && h.ticket < first && h.overlaps(s, e))
        }) {
            r = self.wait(r);
        }
        WriteGuard {
            lock: self,
            tickets: Some(tickets),
        }
    }

    /// Holds `(offset, len)` for a COMPARE AND WRITE until the guard drops, once every earlier
    /// overlapping write and COMPARE AND WRITE is done.
    pub fn compare_and_write(&self, offset: u64, len: u64) -> CawGuard<'_> {
        self.caws.fetch_add(1, SeqCst);
        let (start, end) = span(offset, len);
        let mut r = lock(&self.ranges);
        let ticket = r.record(start, end, true);
        while self.fast.load(SeqCst) != 0
            || r.held
                .iter()
                .any(|h| h.ticket < ticket && h.overlaps(start, end))
        {
            r = self.wait(r);
        }
        CawGuard { lock: self, ticket }
    }

    /// Whether any range is recorded (for tests).
    #[cfg(test)]
    fn idle(&self) -> bool {
        lock(&self.ranges).held.is_empty() && self.fast.load(SeqCst) == 0
    }

    fn wait<'g>(&self, g: MutexGuard<'g, Ranges>) -> MutexGuard<'g, Ranges> {
        self.released
            .wait(g)
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn leave_fast(&self) {
        // The last fast write wakes a COMPARE AND WRITE that waits for the fast path to drain;
        // taking the mutex orders the wake-up after that waiter's check.
        if self.fast.fetch_sub(1, SeqCst) == 1 && self.caws.load(SeqCst) != 0 {
            let _r = lock(&self.ranges);
            self.released.notify_all();
        }
    }

    fn release(&self, tickets: &[u64]) {
        let mut r = lock(&self.ranges);
        r.held.retain(|h| !tickets.contains(&h.ticket));
        drop(r);
        self.released.notify_all();
    }
}

/// `[offset, offset + len)`, saturating (ranges come from checked commands, but never trust).
fn span(offset: u64, len: u64) -> (u64, u64) {
    (offset, offset.saturating_add(len))
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        match &self.tickets {
            None => self.lock.leave_fast(),
            Some(t) => self.lock.release(t),
        }
    }
}

impl Drop for CawGuard<'_> {
    fn drop(&mut self) {
        self.lock.release(&[self.ticket]);
        self.lock.caws.fetch_sub(1, SeqCst);
    }
}

#[cfg(test)]
mod tests;

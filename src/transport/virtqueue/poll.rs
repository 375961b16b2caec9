//! Busy-polling a ring after a round, within a daemon-wide budget of polling threads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use vhost_user_backend::VringT;
use virtio_queue::QueueT;
use vm_memory::GuestAddressSpace;

use super::{AtomicMem, QuiesceLatch, Vring};

/// Queue threads of the whole daemon busy-polling right now.
static POLLERS: AtomicUsize = AtomicUsize::new(0);

/// A turn at busy-polling. At most half the host's cores (at least one) poll at once: a
/// spinning thread takes a core from the guests and their clients, and on a small host more
/// pollers than that measured slower than none (docs/benchmarks.md).
pub(super) struct Poller;

impl Poller {
    pub(super) fn take() -> Option<Poller> {
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

/// Spins for up to `window` until the driver makes a request available on `vring`; `false`
/// when none came (or the ring stopped, or the latch is closing). Notifications stay disabled
/// meanwhile (with EVENT_IDX, `avail_event` stays behind), so the driver does not kick.
pub(super) fn poll_avail(
    vring: &Vring,
    mem: &AtomicMem,
    latch: &QuiesceLatch,
    window: Duration,
) -> bool {
    let deadline = Instant::now() + window;
    let guard = mem.memory();
    let mut spins = 0u32;
    loop {
        let more = {
            let state = vring.get_ref();
            let queue = state.get_queue();
            queue.ready()
                && queue
                    .avail_idx(&*guard, Ordering::Acquire)
                    .is_ok_and(|a| a.0 != queue.next_avail())
        };
        if more {
            return true;
        }
        // The clock every few rounds only: reading it costs about as much as a look at the ring.
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(8) && (latch.closing() || Instant::now() >= deadline) {
            return false;
        }
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests;

//! Busy-polling a ring after a round, within the daemon-wide budget of polling threads
//! ([`crate::transport::poller`]).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vhost_user_backend::VringT;
use virtio_queue::QueueT;
use vm_memory::GuestAddressSpace;

use super::{AtomicMem, QuiesceLatch, Vring};

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

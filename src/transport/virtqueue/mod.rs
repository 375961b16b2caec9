//! Shared virtqueue plumbing for both devices: turning a guest's descriptor chain into bounded
//! lists of memory slices (`chain`), the drain/notify loop of a queue (`drain`) and its
//! busy-polling (`poll`), ending a connection cleanly (`quiesce`), the ring type (`vring`) and
//! the dirty log of a live migration (`dirty`) and its handoff between two connections
//! (`handoff`), and how rings are spread over worker threads (`threads`).
//!
//! Descriptor chains are hostile input. Every address is resolved through `GuestMemory`, which
//! refuses anything outside guest RAM, and nothing here trusts a length the guest wrote.

mod chain;
mod dirty;
mod drain;
mod handoff;
mod poll;
mod quiesce;
mod threads;
pub mod vring;

use std::io;

use vhost_user_backend::bitmap::BitmapMmapRegion;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

pub use crate::pr::replay::Slot;
pub use chain::{Chain, ChainError, Limits};
pub use dirty::DirtyLog;
pub use drain::{drain_queue, kicked_ring, EachAtOnce, Handler, Reply, UsedLens};
pub use handoff::{Gate, Handoff, Ticket};
pub use quiesce::{Quiesce, QuiesceLatch};
pub use threads::QueueThreads;
pub use vring::Vring;

/// Guest memory, each region with its page of the frontend's dirty log (empty until
/// SET_LOG_BASE): what vm-memory writes through it (the used rings) is marked there.
pub type Mem = GuestMemoryMmap<BitmapMmapRegion>;
pub type AtomicMem = GuestMemoryAtomic<Mem>;

/// A virtio feature bit (virtio 1.2 §2.2) as a mask of the 64-bit feature word.
pub fn feature(bit: u32) -> u64 {
    1u64 << bit
}

/// One exit eventfd per worker thread: vhost-user-backend joins its threads when a connection
/// ends, and a thread without one would never leave its epoll loop.
pub struct ExitEvents(Vec<(EventConsumer, EventNotifier)>);

impl ExitEvents {
    pub fn new(threads: usize) -> io::Result<Self> {
        (0..threads)
            .map(|_| new_event_consumer_and_notifier(EventFlag::NONBLOCK))
            .collect::<io::Result<Vec<_>>>()
            .map(ExitEvents)
    }

    /// What `VhostUserBackend::exit_event` returns for `thread`.
    pub fn get(&self, thread: usize) -> Option<(EventConsumer, EventNotifier)> {
        let (c, n) = self.0.get(thread)?;
        Some((c.try_clone().ok()?, n.try_clone().ok()?))
    }
}

//! Ending a connection cleanly: the quiesce latch a device's queue threads pass through.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

use crate::util::lock::{read, write};

/// Whether a connection's rings may still be served. A daemon that ends a connection itself
/// (SIGTERM) closes the latch first: it waits for the requests being processed and takes no
/// more, so no completion reaches guest memory after the frontend saw the connection go (QEMU
/// then reads each ring's used index and restarts the ring from it on the next connection).
#[derive(Default)]
pub struct QuiesceLatch {
    closed: RwLock<bool>,
    /// Set before the write lock is taken: a drain in progress stops between batches instead of
    /// serving a guest that keeps queueing for ever.
    closing: AtomicBool,
}

impl QuiesceLatch {
    /// Held while a ring is served; `None` once the latch is closed.
    pub fn enter(&self) -> Option<RwLockReadGuard<'_, bool>> {
        let closed = read(&self.closed);
        (!*closed).then_some(closed)
    }

    /// Whether a drain should stop at its next batch.
    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
        *write(&self.closed) = true;
    }
}

/// A device whose connection the daemon can end cleanly (see [`QuiesceLatch`]).
pub trait Quiesce {
    /// Waits for the requests being processed; serves none after.
    fn quiesce(&self);
}

//! How a device's rings are spread over its worker threads. vhost-user-backend starts one
//! thread per entry of `queues_per_thread` for every connection; a thread per advertised ring
//! (16 request queues) costs 16 threads per device even when the guest uses one. The daemon
//! sizes the threads to the guest's configured `queues` instead, and still serves every ring
//! the device advertises: ring `first + i` runs on thread `i % threads`, so a frontend that
//! uses more queues than configured shares the threads (ring by ring, no busy-polling then).

/// `rings` rings from `first` on, over `threads` worker threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueThreads {
    first: u16,
    rings: u16,
    threads: u16,
}

impl QueueThreads {
    /// `threads` is clamped to 1..=`rings` (and `rings` to the 64 rings a mask can name).
    pub fn new(first: u16, rings: u16, threads: u16) -> Self {
        let rings = rings.clamp(1, 64 - first.min(63));
        QueueThreads {
            first,
            rings,
            threads: threads.clamp(1, rings),
        }
    }

    /// Worker threads.
    pub fn threads(&self) -> usize {
        usize::from(self.threads)
    }

    /// Each thread's rings, as `VhostUserBackend::queues_per_thread` wants them.
    pub fn masks(&self) -> Vec<u64> {
        let mut masks = vec![0u64; self.threads()];
        for i in 0..self.rings {
            masks[usize::from(i % self.threads)] |= 1u64 << (self.first + i);
        }
        masks
    }

    /// The ring that `device_event` (an index among `thread`'s rings, as vhost-user-backend
    /// numbers them) names; `None` outside the thread's rings.
    pub fn ring(&self, thread: usize, device_event: u16) -> Option<u16> {
        let thread = u16::try_from(thread).ok().filter(|t| *t < self.threads)?;
        let i = device_event
            .checked_mul(self.threads)?
            .checked_add(thread)
            .filter(|i| *i < self.rings)?;
        Some(self.first + i)
    }

    /// Whether `thread` serves a single ring (and may busy-poll it).
    pub fn alone(&self, thread: usize) -> bool {
        // Its rings are `thread`, `thread + threads`, …: one when the second is past the end.
        thread < self.threads() && thread + self.threads() >= usize::from(self.rings)
    }
}

#[cfg(test)]
mod tests;

//! The dirty log of a live migration (vhost-user "Migration"): while the frontend has acked
//! `VHOST_F_LOG_ALL`, every guest page the device writes is marked in the bitmap SET_LOG_BASE
//! shared (one bit per 4 KiB page), so that QEMU sends it again.
//!
//! Two kinds of writes reach guest memory. The used rings are written by virtio-queue through
//! vm-memory, which marks them itself: the memory is bitmap-typed ([`super::Mem`]). The data-in
//! buffers are written by the image through raw pointers (io_uring, `readv`, the bounce copies
//! under `--direct`), which nothing marks: the drain collects each request's device-writable
//! descriptors when it takes the request ([`Written`]) and marks them all once the round's
//! requests are done, before their used entries are written ([`DirtyLog::mark`]). That is under
//! the ring's lock, so by the time GET_VRING_BASE answers every request taken is completed and
//! marked. A whole descriptor is marked, not only the bytes the device wrote: marking more pages
//! than needed only costs the migration a resend.
//!
//! The descriptors are collected whether the log is on or not: a request taken just before the
//! frontend turns logging on may write its data after QEMU sent the page, and must be marked.

use std::sync::atomic::{AtomicBool, Ordering};

use smallvec::SmallVec;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use virtio_queue::DescriptorChain;
use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestAddress, GuestMemory, Permissions};

use super::Mem;
use crate::testhooks::failpoint;

/// Whether the frontend has acked `VHOST_F_LOG_ALL` on this connection.
#[derive(Default)]
pub struct DirtyLog {
    on: AtomicBool,
}

impl DirtyLog {
    /// The feature bit both devices offer for it (`VHOST_F_LOG_ALL`).
    pub const FEATURES: u64 = VhostUserVirtioFeatures::LOG_ALL.bits();
    /// The protocol feature that brings SET_LOG_BASE with the bitmap's memfd.
    pub const PROTOCOL_FEATURES: VhostUserProtocolFeatures = VhostUserProtocolFeatures::LOG_SHMFD;

    /// Follows the features the frontend acked (SET_FEATURES): QEMU turns logging on and off
    /// with `VHOST_F_LOG_ALL` while the rings run.
    pub fn set_features(&self, features: u64) {
        let on = features & VhostUserVirtioFeatures::LOG_ALL.bits() != 0;
        if self.on.swap(on, Ordering::AcqRel) != on {
            log::info!("dirty page logging {}", if on { "on" } else { "off" });
        }
    }

    /// Whether data-in buffers are to be marked now.
    pub fn on(&self) -> bool {
        self.on.load(Ordering::Acquire)
    }

    /// Marks every range of `written` dirty, if logging is on. vm-memory marks nothing while
    /// SET_LOG_BASE has not given a bitmap, so this is also safe before it.
    pub fn mark(&self, m: &Mem, written: &Written) {
        if !self.on() || failpoint::skip("data-in-unmarked") {
            return;
        }
        for &(addr, len) in &written.0 {
            let Ok(slices) = m.get_slices(addr, len as usize, Permissions::Write) else {
                continue;
            };
            for slice in slices.flatten() {
                slice.bitmap().mark_dirty(0, slice.len());
            }
        }
    }
}

/// The device-writable descriptors (guest address, length) of a round's requests.
#[derive(Default)]
pub struct Written(SmallVec<[(GuestAddress, u32); 64]>);

impl Written {
    /// Adds the device-writable descriptors of `chain` (a copy of the chain the request is
    /// served from). virtio-queue bounds the walk (a loop or an oversized chain ends it).
    pub fn collect(&mut self, chain: DescriptorChain<&Mem>) {
        self.0.extend(
            chain
                .filter(|d| d.is_write_only())
                .map(|d| (d.addr(), d.len())),
        );
    }
}

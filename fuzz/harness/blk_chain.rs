//! virtio-blk requests in any descriptor layout (direct, indirect, chained, read-only and
//! write-only mixes, addresses outside guest RAM, huge lengths, broken rings), through the
//! device's own queue handler (`VhostUserBackend::handle_event`, hence `virtio::drain_queue` and
//! the blk request processing) against an in-memory image.
//!
//! Input: one device byte (bits 0-1 the initiator, bit 2 a read-only image, bits 3-4 the
//! reservation state), then the virtqueue (see `ring.rs`).
//!
//! Checks: no panic, no hang (libFuzzer's -timeout), and the medium changes only for an
//! initiator the arbiter lets write.

use std::sync::Arc;

use sharedisk::pr::Access;
use sharedisk::transport::blk::BlkBackend;
use vhost_user_backend::VhostUserBackend;
use vmm_sys_util::epoll::EventSet;

use super::{MemImage, Reader, INITIATORS};

const IMAGE_BYTES: usize = 256 * 512;

/// One fuzz input; panics on a finding.
pub fn run(data: &[u8]) {
    let mut r = Reader(data);
    let dev = r.u8();
    let initiator = INITIATORS[usize::from(dev & 3)];
    let read_only = dev & 0x04 != 0;
    let image = Arc::new(MemImage::new(IMAGE_BYTES, read_only));
    let lun = super::lun(image.clone(), super::preset_state(dev >> 3));
    let may_write = lun.reservations.with(|a| a.check(initiator, Access::Write));
    let ring = super::ring::build(&mut r);

    let blk = BlkBackend::new(lun.clone(), initiator.into(), ring.mem.clone()).unwrap();
    blk.set_event_idx(ring.event_idx);
    blk.handle_event(0, EventSet::IN, std::slice::from_ref(&ring.vring), 0)
        .unwrap();
    super::ring::trace(&ring, super::ring::DATA + 0x1000, 3);

    if image.mutations() > 0 {
        assert!(
            may_write && !read_only,
            "{initiator} wrote without write access"
        );
    }
    super::assert_state_valid(&lun);
}

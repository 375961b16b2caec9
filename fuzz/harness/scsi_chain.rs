//! virtio-scsi requests and task management functions in any descriptor layout (direct,
//! indirect, chained, read-only and write-only mixes, addresses outside guest RAM, huge lengths,
//! broken rings), through the device's own queue handler (`VhostUserBackend::handle_event`,
//! hence `virtio::drain_queue` and `process_request`/`process_control`) against an in-memory LU.
//!
//! Input: one device byte (bits 0-1 the initiator, bit 2 a read-only image, bits 3-4 the
//! reservation state, bit 5 the control queue instead of a request queue), then the virtqueue
//! (see `ring.rs`).
//!
//! Checks: no panic, no hang (libFuzzer's -timeout), the arbiter's state stays valid.

use std::sync::Arc;

use sharedisk::scsi::target::Target;
use sharedisk::transport::virtio_scsi::ScsiBackend;
use vhost_user_backend::VhostUserBackend;
use vmm_sys_util::epoll::EventSet;

use super::{MemImage, Reader, INITIATORS};

const IMAGE_BYTES: usize = 256 * 512;

/// One fuzz input; panics on a finding.
pub fn run(data: &[u8]) {
    let mut r = Reader(data);
    let dev = r.u8();
    let initiator = INITIATORS[usize::from(dev & 3)];
    let image = Arc::new(MemImage::new(IMAGE_BYTES, dev & 0x04 != 0));
    let lun = super::lun(image, super::preset_state(dev >> 3));
    let target = Arc::new(Target::new(lun.clone()));
    let ring = super::ring::build(&mut r);

    let scsi = ScsiBackend::new(target, initiator.into(), ring.mem.clone()).unwrap();
    scsi.set_event_idx(ring.event_idx);
    // Worker thread 0 serves the control queue (its ring 0); thread 1 the first request queue.
    let thread = if dev & 0x20 != 0 { 0 } else { 1 };
    scsi.handle_event(0, EventSet::IN, std::slice::from_ref(&ring.vring), thread)
        .unwrap();
    super::ring::trace(&ring, super::ring::DATA + 0x800, 16);
    super::assert_state_valid(&lun);
}

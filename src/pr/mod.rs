//! SCSI-3 persistent reservations (SPC-4 §5.9): the pure arbiter, the fencing that gates I/O by
//! it, and where its state lives (a local state file, or etcd in cluster mode).

pub mod arbiter;
pub mod backend;
#[cfg(feature = "cluster")]
pub mod cluster;
pub mod fencing;
pub mod replay;
pub mod state_file;
pub mod wire;

pub use arbiter::*;

/// What a command does to the medium, for the access check of SPC-4 §5.9.1 / SBC-3 table 13.
///
/// Every command maps to one class; commands outside these (INQUIRY, TEST UNIT READY, PR IN, ...)
/// are never checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// READ*, VERIFY, PRE-FETCH, MODE SENSE, virtio-blk IN.
    Read,
    /// WRITE*, WRITE SAME, UNMAP, MODE SELECT, virtio-blk OUT/DISCARD/WRITE_ZEROES.
    Write,
    /// SYNCHRONIZE CACHE, virtio-blk FLUSH: gated exactly like a write.
    Flush,
}

//! Transports: how initiators reach the logical unit. Each turns its wire into commands for the
//! SCSI core (`crate::scsi`) or, for virtio-blk, into admitted image I/O, and carries the
//! answers back. `virtqueue` is the plumbing the two vhost-user devices share.

pub mod blk;
pub mod iscsi;
pub mod virtio_scsi;
pub mod virtqueue;

//! sharedisk: one disk image shared by many QEMU guests over vhost-user, with SCSI-3 persistent
//! reservations arbitrating who may read and write.

pub mod pr;
pub mod sense;

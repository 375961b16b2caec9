//! SCSI disk emulation (SPC-4 / SBC-3) for the vhost-user-scsi device.
//!
//! `cdb` decodes command descriptor blocks and `pages` builds the data the device returns; both
//! are pure logic over guest-supplied bytes, so neither panics nor trusts a length.

pub mod cdb;
pub mod device;
pub mod pages;
pub mod target;

//! SCSI disk emulation (SPC-4 / SBC-3) for the vhost-user-scsi device.
//!
//! `cdb` decodes command descriptor blocks (it owns the opcode table and the page tables) and
//! `pages` builds the data the device returns, depending on `cdb` and not the reverse; both
//! are pure logic over guest-supplied bytes, so neither panics nor trusts a length.

pub mod cdb;
pub mod device;
pub mod pages;
pub mod target;

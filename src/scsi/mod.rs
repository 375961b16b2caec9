//! The SCSI core (SPC-4 / SBC-3): one logical unit's command set, for any transport.
//!
//! `cdb` decodes command descriptor blocks (it owns the opcode table and the page tables) and
//! `pages` builds the data the device returns, depending on `cdb` and not the reverse; both
//! are pure logic over initiator-supplied bytes, so neither panics nor trusts a length.
//! `target` executes a decoded command against the arbiter and the image. No transport lives
//! here (as in rust-vmm's vhost-device-scsi): a transport hands in a CDB, the LUN it addresses
//! ([`target::Target::execute`] or [`target::Target::execute_missing_lun`]), the initiator, and
//! the data buffers as a [`data::DataOut`] reader and a [`data::DataIn`] writer, and carries the
//! status, sense and data-in back. The buffers are the image's scatter list
//! ([`crate::image::buffers`]), so a READ or WRITE still goes from the image straight into the
//! initiator's memory.

pub mod cdb;
pub mod data;
pub mod fields;
pub mod pages;
pub mod sense;
pub mod target;
pub mod tasks;

//! The SCSI core (SPC-4 / SBC-3): one logical unit's command set, for any transport.
//!
//! `cdb` decodes command descriptor blocks (it owns the opcode table and the page tables) and
//! `pages` builds the data the device returns, depending on `cdb` and not the reverse; both
//! are pure logic over initiator-supplied bytes, so neither panics nor trusts a length.
//! `target` executes a decoded command against the arbiter and the image. No transport lives
//! here: the transports hand in a CDB, an initiator and the data buffers (`data`),
//! and carry the status, sense and data-in back.

pub mod cdb;
pub mod data;
pub mod fields;
pub mod pages;
pub mod sense;
pub mod target;

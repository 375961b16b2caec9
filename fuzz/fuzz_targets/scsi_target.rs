//! cargo-fuzz target: see `harness/scsi_target.rs`.
#![no_main]

#[path = "../harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::scsi_target::run(data));

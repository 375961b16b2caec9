//! cargo-fuzz target: see `harness/scsi_chain.rs`.
#![no_main]

#[path = "../harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::scsi_chain::run(data));

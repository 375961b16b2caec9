//! cargo-fuzz target: see `harness/state_file.rs`.
#![no_main]

#[path = "../harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::state_file::run(data));

//! cargo-fuzz target: see `harness/config_file.rs`.
#![no_main]

#[path = "../harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::config_file::run(data));

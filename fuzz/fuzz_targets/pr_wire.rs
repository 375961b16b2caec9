//! cargo-fuzz target: see `harness/pr_wire.rs`.
#![no_main]

#[path = "../harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::pr_wire::run(data));

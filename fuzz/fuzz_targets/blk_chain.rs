//! cargo-fuzz target: see `harness/blk_chain.rs`.
#![no_main]

#[path = "../harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::blk_chain::run(data));

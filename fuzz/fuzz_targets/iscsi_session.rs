//! cargo-fuzz target: see `harness/iscsi_session.rs`.
#![no_main]

#[path = "../harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::iscsi_session::run(data));

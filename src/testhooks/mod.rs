//! Test hooks, built only with the `test-hooks` feature (the test command builds it; the release
//! build that users run has none of them): the probe that records and slows image I/O, and the
//! crash and error points.

pub mod failpoint;
pub mod probe;

//! Test hooks, built only with the `test-hooks` feature (the test command builds it; the release
//! build that users run has none of them): the probe that records and slows image I/O, and the
//! crash and error points. Without the feature the probe does not exist and the crash and error
//! points are inline no-ops, so their call sites need no `cfg` and cost nothing.

pub mod failpoint;
#[cfg(feature = "test-hooks")]
pub mod probe;

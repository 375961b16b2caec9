//! Small helpers that several rooms need: locks that outlive a panicking holder, files
//! replaced atomically and durably, and log lines rate-limited per source address.

pub mod atomic_file;
pub mod lock;
pub mod ratelimit;
pub mod secret_file;
pub mod state_dir;

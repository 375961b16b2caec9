//! Small helpers that several rooms need: locks that outlive a panicking holder, and files
//! replaced atomically and durably.

pub mod atomic_file;
pub mod lock;
pub mod secret_file;
pub mod state_dir;

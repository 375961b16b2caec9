//! A watchdog for tests that could otherwise hang: a PREEMPT starved by I/O that never ends
//! must fail the test binary with a message, not stall the suite.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

/// Ends the whole test process (exit status 101, as a failed test) if it is still alive
/// `limit` after [`Deadline::start`]; dropping it disarms the watchdog.
pub struct Deadline {
    disarm: Option<mpsc::Sender<()>>,
}

impl Deadline {
    pub fn start(what: &str, limit: Duration) -> Deadline {
        let (tx, rx) = mpsc::channel::<()>();
        let what = what.to_string();
        std::thread::spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!("DEADLINE: {what} did not finish within {limit:?}; failing the test");
                std::process::exit(101);
            }
        });
        Deadline { disarm: Some(tx) }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        // A test that panics stays under the watchdog: unwinding may itself wait for threads
        // (a `thread::scope`) that never end.
        if std::thread::panicking() {
            if let Some(tx) = self.disarm.take() {
                std::mem::forget(tx);
            }
            return;
        }
        if let Some(tx) = self.disarm.take() {
            let _ = tx.send(());
        }
    }
}

/// Sets a flag when dropped, so that a thread told to stop by it also stops when the test
/// panics first.
pub struct SetOnDrop<'a>(pub &'a std::sync::atomic::AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

//! Detects daemon panics in tests that run the daemon in-process: a panic on any thread that is
//! not a test thread is the daemon's, even when a thread catches it and keeps serving.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

static DAEMON_PANICS: AtomicUsize = AtomicUsize::new(0);
static HOOK: Once = Once::new();
thread_local! {
    static TEST_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as a test thread and installs the hook once per process.
pub fn watch() {
    TEST_THREAD.with(|t| t.set(true));
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !TEST_THREAD.with(|t| t.get()) {
                DAEMON_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

pub fn assert_none() {
    assert_eq!(
        DAEMON_PANICS.load(Ordering::SeqCst),
        0,
        "a daemon thread panicked"
    );
}

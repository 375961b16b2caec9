//! systemd's notifications (sd_notify): READY once every socket listens, STATUS= lines while
//! serving, STOPPING at the end.

use std::io;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use signal_hook::iterator::Handle;

/// Tells the service manager `states`; without one (not under systemd) this does nothing.
pub(super) fn notify(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        log::warn!("cannot notify the service manager: {e}");
    }
}

/// Sends `status()` as STATUS= whenever it changes, looking every 500 ms, until `signals` is
/// closed.
pub(super) fn spawn_status(
    signals: Handle,
    status: impl Fn() -> String + Send + 'static,
) -> io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("notify-status".into())
        .spawn(move || {
            let mut last = String::new();
            while !signals.is_closed() {
                let line = status();
                if line != last {
                    notify(&[sd_notify::NotifyState::Status(&line)]);
                    last = line;
                }
                thread::sleep(Duration::from_millis(500));
            }
        })
}

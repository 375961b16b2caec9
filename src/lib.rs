//! sharedisk: one disk image shared by many QEMU guests over vhost-user, with SCSI-3 persistent
//! reservations arbitrating who may read and write.

pub mod blk;
pub mod config;
pub mod image;
pub mod lun;
pub mod pr;
pub mod probe;
pub mod qemu;
pub mod reservations;
pub mod scsi;
pub mod sense;
pub mod server;
pub mod state;
pub mod virtio;

/// Starts the daemon as `sharedisk serve` does.
///
/// Test hook: with `SHAREDISK_TEST_WRITE_DELAY_MS=N` in the environment every change to the
/// image waits N ms after its admission before it reaches the image (a [`probe::Probe`]), so
/// that end-to-end tests can tell a write fenced by its admission from one that slipped past it.
pub fn start_server(config: config::Config) -> Result<server::Server, server::ServerError> {
    let delay = std::env::var("SHAREDISK_TEST_WRITE_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    match delay {
        None => server::Server::start(config),
        Some(ms) => {
            log::warn!("test hook: every write to the image is delayed by {ms} ms");
            let recorder = probe::Recorder::new();
            recorder.set_write_delay(std::time::Duration::from_millis(ms));
            server::Server::start_wrapped(config, move |image| {
                Box::new(probe::Probe::new(image, recorder))
            })
        }
    }
}

/// Runs `server` until SIGINT or SIGTERM, then shuts it down cleanly (sockets removed).
///
/// A panic on any daemon thread fails the run, even though the thread's owner (vhost-user-backend
/// for queue threads) only logs it and the daemon keeps serving: the exit status tells.
pub fn run_until_signal(server: server::Server) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    use std::sync::atomic::{AtomicUsize, Ordering};
    static PANICS: AtomicUsize = AtomicUsize::new(0);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    if let Some(sig) = signals.forever().next() {
        log::info!("signal {sig}: shutting down");
    }
    server.shutdown();
    match PANICS.load(Ordering::SeqCst) {
        0 => Ok(()),
        n => Err(std::io::Error::other(format!(
            "{n} daemon thread(s) panicked while serving (see the log)"
        ))),
    }
}

//! sharedisk: one disk image shared by many QEMU guests over vhost-user, with SCSI-3 persistent
//! reservations arbitrating who may read and write.

pub mod be;
pub mod blk;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod failpoint;
pub mod image;
pub mod lun;
pub mod metrics;
pub mod pr;
pub mod probe;
pub mod qemu;
pub mod replay;
pub mod reservations;
pub mod runtime_guests;
pub mod scsi;
pub mod sense;
pub mod server;
pub mod service;
pub mod sockets;
pub mod state;
pub mod stats;
pub mod virtio;
pub mod vring;

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

/// Counts the panics of every thread from now on (the previous panic hook still runs).
pub fn count_panics() -> &'static std::sync::atomic::AtomicUsize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static PANICS: AtomicUsize = AtomicUsize::new(0);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
    &PANICS
}

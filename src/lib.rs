//! sharedisk: one disk image shared by many initiators, with SCSI-3 persistent reservations
//! arbitrating who may read and write.
//!
//! The layers, from the wire down (docs/architecture.md):
//! - [`transport`]: vhost-user-blk, virtio-scsi over vhost-user, and their shared virtqueue
//!   plumbing;
//! - [`scsi`]: the SCSI core, which knows no transport;
//! - [`lun`] and [`pr`]: the logical unit, the reservation arbiter and the fencing that gates
//!   every I/O by it, and where the reservation state lives;
//! - [`image`]: the backing file.
//!
//! Beside them: [`config`], [`ops`] (statistics, metrics, the control socket), [`daemon`] (the
//! assembly: listeners, runtime guests, signals, systemd) and [`cli`].

pub mod cli;
pub mod config;
pub mod daemon;
pub mod image;
pub mod lun;
pub mod ops;
pub mod pr;
pub mod scsi;
pub mod testhooks;
pub mod transport;
pub mod util;

/// Starts the daemon as `sharedisk serve` does.
///
/// Test hook, with the `test-hooks` feature only: with `SHAREDISK_TEST_WRITE_DELAY_MS=N` in the
/// environment every change to the image waits N ms after its admission before it reaches the
/// image (a `testhooks::probe::Probe`), so that end-to-end tests can tell a write fenced by its
/// admission from one that slipped past it. Without the feature this is
/// [`daemon::server::Server::start`].
#[cfg(feature = "test-hooks")]
pub fn start_server(
    config: config::Config,
) -> Result<daemon::server::Server, daemon::server::ServerError> {
    let delay = std::env::var("SHAREDISK_TEST_WRITE_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    match delay {
        None => daemon::server::Server::start(config),
        Some(ms) => {
            log::warn!("test hook: every write to the image is delayed by {ms} ms");
            let recorder = testhooks::probe::Recorder::new();
            recorder.set_write_delay(std::time::Duration::from_millis(ms));
            daemon::server::Server::start_wrapped(config, move |image| {
                Box::new(testhooks::probe::Probe::new(image, recorder))
            })
        }
    }
}

/// Starts the daemon as `sharedisk serve` does (built without the `test-hooks` feature: no
/// write delay).
#[cfg(not(feature = "test-hooks"))]
pub fn start_server(
    config: config::Config,
) -> Result<daemon::server::Server, daemon::server::ServerError> {
    daemon::server::Server::start(config)
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

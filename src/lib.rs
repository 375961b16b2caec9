//! sharedisk: one disk image shared by many QEMU guests over vhost-user, with SCSI-3 persistent
//! reservations arbitrating who may read and write.

pub mod blk;
pub mod cli;
pub mod config;
pub mod control;
pub mod failpoint;
pub mod image;
pub mod lun;
pub mod metrics;
pub mod pr;
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

/// Runs `server` until SIGINT or SIGTERM, then shuts it down cleanly (sockets removed).
pub fn run_until_signal(server: server::Server) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    if let Some(sig) = signals.forever().next() {
        log::info!("signal {sig}: shutting down");
    }
    server.shutdown();
    Ok(())
}

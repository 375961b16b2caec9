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

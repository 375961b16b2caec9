//! Transports: how initiators reach the logical unit. Each turns its wire into commands for the
//! SCSI core (`crate::scsi`) or, for virtio-blk, into admitted image I/O, and carries the
//! answers back. `virtqueue` is the plumbing the two vhost-user devices share.

pub mod blk;
pub mod iscsi;
pub mod poller;
pub mod virtio_scsi;
pub mod virtqueue;

/// How the daemon serves one guest's device on one connection.
pub struct Options {
    /// This guest alone sees a read-only disk (`guest.read_only` in the configuration).
    pub read_only: bool,
    /// The guest's counters for this device.
    pub stats: std::sync::Arc<crate::ops::stats::DeviceStats>,
    /// How long a queue thread watches its ring after a round (`--poll-us`).
    pub poll: std::time::Duration,
    /// The connection's place among the guest's connections to this device.
    pub ticket: virtqueue::Ticket,
    /// Worker threads for the request queues (the guest's `queues`): every advertised ring is
    /// served, spread over these (`virtqueue::QueueThreads`).
    pub queue_threads: u16,
}

impl Default for Options {
    /// A writable disk, fresh counters, no polling, the guest's only connection, a thread per
    /// ring.
    fn default() -> Self {
        Options {
            read_only: false,
            stats: std::sync::Arc::default(),
            poll: std::time::Duration::ZERO,
            ticket: virtqueue::Ticket::alone(),
            queue_threads: u16::MAX,
        }
    }
}

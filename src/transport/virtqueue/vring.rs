//! The ring type both devices give vhost-user-backend: its `VringRwLock` with one rule added, so
//! that no completion's interrupt is ever lost across a (re)connection.
//!
//! **Why.** A frontend may replace a ring's call eventfd at any time, and QEMU does so while the
//! ring already runs. On every connection QEMU first installs a placeholder call eventfd of its
//! own (`vhost_dev_init` gives each ring its "masked notifier"), and only later the eventfd that
//! really interrupts the guest. vhost-user-scsi installs the real one *after* SET_VRING_KICK and
//! SET_VRING_ENABLE (`vhost_scsi_common_start` unmasks after `vhost_dev_start`); vhost-user-blk
//! does it before. A ring that starts with requests already available (QEMU replays every request
//! it had not seen completed, and its fresh kick eventfd starts signalled) completes them at
//! once and signals the placeholder. QEMU drops what arrived there when it switches eventfds, and
//! the Linux virtio-scsi driver never times a command out: the disk hangs for good. That was the
//! `/dev/sda` hang after a daemon restart under load.
//!
//! A daemon can also die between writing a round's used entries and interrupting the driver
//! (SIGKILL, a crash). QEMU then restarts the ring at that used index: nothing is replayed,
//! nothing new completes, and the driver waits for ever for requests that are done. With
//! vhost-user-blk's order (the real call eventfd before SET_VRING_KICK) no later message brings
//! an interrupt either. That was the `/dev/vda` hang of the soak test on QEMU 10 (vm1's writer
//! stalled after a SIGKILL restart while every other device went on).
//!
//! **The rule.** Whenever a ring starts (SET_VRING_KICK makes it ready) with a call eventfd in
//! place, and whenever a started ring gets a new call eventfd, signal that eventfd once. Every
//! used entry was then either signalled on the eventfd in place when it was added, or is covered
//! by one of these signals (entries an earlier connection or an earlier daemon left unsignalled
//! by the signal at the start), whatever the order of SET_VRING_KICK, SET_VRING_ENABLE and
//! SET_VRING_CALL and however often the eventfd changes (the lock below orders the two). The
//! extra interrupt is harmless: a driver finds no new used entry and returns.
//!
//! The other half, processing requests that are already available when a ring starts or is
//! re-enabled, is vhost-user-backend's: registering the kick eventfd of an enabled, started ring
//! queues a pending event for its worker thread, which then drains the ring without a kick.
//!
//! Besides, the ring remembers the index the frontend (re)started it at (SET_VRING_BASE): QEMU
//! replays a ring from its used index, so requests at positions from there on that were already
//! available may be replays of requests an earlier connection executed (see `replay.rs`).

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vhost_user_backend::{VringRwLock, VringStateGuard, VringStateMutGuard, VringT};
use virtio_queue::{Error as VirtQueError, QueueT};

use crate::transport::poller::PollWindow;
use crate::transport::virtqueue::AtomicMem;

#[derive(Clone)]
pub struct Vring {
    inner: VringRwLock<AtomicMem>,
    base: Arc<AtomicU16>,
    /// SET_VRING_BASE messages on this connection: each precedes a start of the ring.
    starts: Arc<AtomicU32>,
    /// Set by SET_VRING_BASE, taken by the first drain after it.
    started: Arc<AtomicBool>,
    /// The busy-poll window this ring has earned (see [`Vring::poll_window`]).
    poll: Arc<PollWindow>,
}

impl Vring {
    /// The avail index the frontend started this ring at on this connection (0 when it never
    /// sent SET_VRING_BASE).
    pub fn base(&self) -> u16 {
        self.base.load(Ordering::Acquire)
    }

    /// Whether the ring runs in its first start on this connection (a frontend that never sends
    /// SET_VRING_BASE starts it once).
    pub fn first_start(&self) -> bool {
        self.starts.load(Ordering::Acquire) <= 1
    }

    /// Whether the ring was (re)started since the last call (SET_VRING_BASE).
    pub fn take_started(&self) -> bool {
        self.started.swap(false, Ordering::AcqRel)
    }

    /// How long to busy-poll this ring after a round, at most `max` ([`PollWindow`]).
    pub fn poll_window(&self, max: Duration) -> Duration {
        self.poll.window(max)
    }

    /// Signals the call eventfd in place once, if the ring runs (see the module documentation).
    fn signal_call_once(&self) {
        let state = self.inner.get_ref();
        if !state.get_queue().ready() {
            return;
        }
        if let Some(call) = state.get_call() {
            log::debug!("signalling the ring's call eventfd once");
            if let Err(e) = call.notify() {
                log::warn!(
                    "cannot signal the ring's call eventfd: {e}; the guest may miss a completion \
                     until its next request"
                );
            }
        }
    }

    /// Records whether the last poll (of `window`, at most `max`) found a request.
    pub fn poll_outcome(&self, found: bool, window: Duration, max: Duration) {
        self.poll.outcome(found, window, max);
    }
}

impl<'a> VringStateGuard<'a, AtomicMem> for Vring {
    type G = <VringRwLock<AtomicMem> as VringStateGuard<'a, AtomicMem>>::G;
}

impl<'a> VringStateMutGuard<'a, AtomicMem> for Vring {
    type G = <VringRwLock<AtomicMem> as VringStateMutGuard<'a, AtomicMem>>::G;
}

impl VringT<AtomicMem> for Vring {
    fn new(mem: AtomicMem, max_queue_size: u16) -> Result<Self, VirtQueError> {
        Ok(Vring {
            inner: VringRwLock::new(mem, max_queue_size)?,
            base: Arc::new(AtomicU16::new(0)),
            starts: Arc::new(AtomicU32::new(0)),
            started: Arc::new(AtomicBool::new(false)),
            poll: Arc::default(),
        })
    }

    fn get_ref(&self) -> <Self as VringStateGuard<'_, AtomicMem>>::G {
        self.inner.get_ref()
    }

    fn get_mut(&self) -> <Self as VringStateMutGuard<'_, AtomicMem>>::G {
        self.inner.get_mut()
    }

    fn add_used(&self, desc_index: u16, len: u32) -> Result<(), VirtQueError> {
        self.inner.add_used(desc_index, len)
    }

    fn signal_used_queue(&self) -> io::Result<()> {
        self.inner.signal_used_queue()
    }

    fn enable_notification(&self) -> Result<bool, VirtQueError> {
        self.inner.enable_notification()
    }

    fn disable_notification(&self) -> Result<(), VirtQueError> {
        self.inner.disable_notification()
    }

    fn needs_notification(&self) -> Result<bool, VirtQueError> {
        self.inner.needs_notification()
    }

    fn set_enabled(&self, enabled: bool) {
        self.inner.set_enabled(enabled)
    }

    fn set_queue_info(
        &self,
        desc_table: u64,
        avail_ring: u64,
        used_ring: u64,
    ) -> Result<(), VirtQueError> {
        self.inner.set_queue_info(desc_table, avail_ring, used_ring)
    }

    fn queue_next_avail(&self) -> u16 {
        self.inner.queue_next_avail()
    }

    fn set_queue_next_avail(&self, base: u16) {
        self.inner.set_queue_next_avail(base);
        self.base.store(base, Ordering::Release);
        self.starts.fetch_add(1, Ordering::AcqRel);
        self.started.store(true, Ordering::Release);
    }

    fn set_queue_next_used(&self, idx: u16) {
        self.inner.set_queue_next_used(idx)
    }

    fn queue_used_idx(&self) -> Result<u16, VirtQueError> {
        self.inner.queue_used_idx()
    }

    fn set_queue_size(&self, num: u16) {
        self.inner.set_queue_size(num)
    }

    fn set_queue_event_idx(&self, enabled: bool) {
        self.inner.set_queue_event_idx(enabled)
    }

    /// Marks the ring started (SET_VRING_KICK) or stopped (GET_VRING_BASE); a ring that starts
    /// with a call eventfd in place signals it once (see the module documentation).
    fn set_queue_ready(&self, ready: bool) {
        self.inner.set_queue_ready(ready);
        if ready {
            self.signal_call_once();
        }
    }

    fn set_kick(&self, file: Option<File>) {
        self.inner.set_kick(file)
    }

    fn read_kick(&self) -> io::Result<bool> {
        self.inner.read_kick()
    }

    /// Installs the new call eventfd and, on a started ring, signals it once (see the module
    /// documentation). A completion that read the previous eventfd did so before the swap and is
    /// covered by this signal; one that reads it later gets the new eventfd, since a worker reads
    /// the call eventfd only after adding its used entries.
    fn set_call(&self, file: Option<File>) {
        self.inner.set_call(file);
        self.signal_call_once();
    }

    fn set_err(&self, file: Option<File>) {
        self.inner.set_err(file)
    }
}

#[cfg(test)]
mod tests;

//! Shared virtqueue plumbing for both devices: turning a guest's descriptor chain into bounded
//! lists of memory slices, and the drain/notify loop of a queue.
//!
//! Descriptor chains are hostile input. Every address is resolved through `GuestMemory`, which
//! refuses anything outside guest RAM, and nothing here trusts a length the guest wrote.

pub mod vring;

use crate::util::lock::{read, write};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use smallvec::SmallVec;
use vhost_user_backend::VringT;
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemory, GuestMemoryAtomic, GuestMemoryMmap, Permissions};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

pub use crate::image::{Buf, Bufs};
pub use crate::pr::replay::Slot;

pub type Mem = GuestMemoryMmap<()>;
pub type AtomicMem = GuestMemoryAtomic<Mem>;
pub use crate::transport::virtqueue::vring::Vring;

/// What became of a request when its handler returned.
pub enum Reply {
    /// Completed: this many bytes were written into the chain.
    Done(u32),
    /// Left in the round's batch; [`Handler::complete`] completes it.
    Deferred,
}

/// Serves the requests of one ring, a round at a time: every request available when the round
/// starts goes through [`Handler::request`], which completes it or defers it into the round's
/// batch; [`Handler::complete`] then completes the deferred ones together, and the used ring
/// gets every request of the round in the order the driver queued them.
pub trait Handler {
    /// The requests deferred in a round (and whatever their completion needs).
    type Batch<'m>: Default;

    fn request<'m>(
        &mut self,
        mem: &'m Mem,
        chain: DescriptorChain<&'m Mem>,
        slot: Slot,
        batch: &mut Self::Batch<'m>,
    ) -> Reply;

    /// Completes the round's deferred requests, pushing their used lengths onto `lens` in the
    /// order they were deferred.
    fn complete(&mut self, batch: &mut Self::Batch<'_>, lens: &mut UsedLens);
}

/// Used lengths of a round's deferred requests.
pub type UsedLens = SmallVec<[u32; 64]>;

/// A [`Handler`] that completes every request at once: `f(mem, chain, slot)` returns its used
/// length.
pub struct EachAtOnce<F>(F);

impl<F> EachAtOnce<F>
where
    F: for<'m> FnMut(&'m Mem, DescriptorChain<&'m Mem>, Slot) -> u32,
{
    pub fn new(f: F) -> Self {
        EachAtOnce(f)
    }
}

impl<F> Handler for EachAtOnce<F>
where
    F: for<'m> FnMut(&'m Mem, DescriptorChain<&'m Mem>, Slot) -> u32,
{
    type Batch<'m> = ();

    fn request<'m>(
        &mut self,
        mem: &'m Mem,
        chain: DescriptorChain<&'m Mem>,
        slot: Slot,
        _: &mut (),
    ) -> Reply {
        Reply::Done((self.0)(mem, chain, slot))
    }

    fn complete(&mut self, _: &mut (), _: &mut UsedLens) {}
}

/// One exit eventfd per worker thread: vhost-user-backend joins its threads when a connection
/// ends, and a thread without one would never leave its epoll loop.
pub struct ExitEvents(Vec<(EventConsumer, EventNotifier)>);

impl ExitEvents {
    pub fn new(threads: usize) -> io::Result<Self> {
        (0..threads)
            .map(|_| new_event_consumer_and_notifier(EventFlag::NONBLOCK))
            .collect::<io::Result<Vec<_>>>()
            .map(ExitEvents)
    }

    /// What `VhostUserBackend::exit_event` returns for `thread`.
    pub fn get(&self, thread: usize) -> Option<(EventConsumer, EventNotifier)> {
        let (c, n) = self.0.get(thread)?;
        Some((c.try_clone().ok()?, n.try_clone().ok()?))
    }
}

/// Whether a connection's rings may still be served. A daemon that ends a connection itself
/// (SIGTERM) closes the gate first: it waits for the requests being processed and takes no more,
/// so no completion reaches guest memory after the frontend saw the connection go (QEMU then
/// reads each ring's used index and restarts the ring from it on the next connection).
#[derive(Default)]
pub struct Gate {
    closed: RwLock<bool>,
    /// Set before the write lock is taken: a drain in progress stops between batches instead of
    /// serving a guest that keeps queueing for ever.
    closing: AtomicBool,
}

impl Gate {
    /// Held while a ring is served; `None` once the gate is closed.
    pub fn enter(&self) -> Option<RwLockReadGuard<'_, bool>> {
        let closed = read(&self.closed);
        (!*closed).then_some(closed)
    }

    /// Whether a drain should stop at its next batch.
    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
        *write(&self.closed) = true;
    }
}

/// A device whose connection the daemon can end cleanly (see [`Gate`]).
pub trait Quiesce {
    /// Waits for the requests being processed; serves none after.
    fn quiesce(&self);
}

/// Why a chain could not be used at all.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("descriptor points outside guest memory")]
    BadAddress,
    #[error("device-readable descriptor after a device-writable one")]
    Order,
    /// virtio-queue ends a chain silently where it loops, leaves the table, or reaches 4 GiB
    /// (which a used length could not count); the last descriptor then still says NEXT.
    #[error("chain broken off (a loop, a next index outside the table, or 4 GiB or more)")]
    BrokenOff,
}

/// A chain split into what the device reads (driver -> device) and writes (device -> driver).
pub struct Chain<'m> {
    pub readable: Bufs<'m>,
    pub writable: Bufs<'m>,
}

impl<'m> Chain<'m> {
    pub fn parse(mem: &'m Mem, chain: DescriptorChain<&'m Mem>) -> Result<Self, ChainError> {
        let mut readable = Bufs::new();
        let mut writable = Bufs::new();
        let mut more = false;
        for desc in chain {
            more = desc.has_next();
            // virtio 1.2 §2.7.4.2: all device-readable descriptors come first.
            let list = if desc.is_write_only() {
                &mut writable
            } else if writable.is_empty() {
                &mut readable
            } else {
                return Err(ChainError::Order);
            };
            let access = if desc.is_write_only() {
                Permissions::Write
            } else {
                Permissions::Read
            };
            let slices = mem
                .get_slices(desc.addr(), desc.len() as usize, access)
                .map_err(|_| ChainError::BadAddress)?;
            for slice in slices {
                list.push(slice.map_err(|_| ChainError::BadAddress)?);
            }
        }
        if more {
            return Err(ChainError::BrokenOff);
        }
        Ok(Chain { readable, writable })
    }
}

/// Total byte length of a slice list.
pub fn total(bufs: &[Buf]) -> usize {
    bufs.iter().map(|b| b.len()).sum()
}

/// Splits a slice list after `n` bytes. `None` when the list is shorter than `n`.
pub fn split_at<'m>(bufs: &[Buf<'m>], mut n: usize) -> Option<(Bufs<'m>, Bufs<'m>)> {
    let mut head = Bufs::new();
    let mut tail = Bufs::new();
    for b in bufs {
        if n == 0 {
            tail.push(*b);
        } else if b.len() <= n {
            n -= b.len();
            head.push(*b);
        } else {
            head.push(b.subslice(0, n).ok()?);
            tail.push(b.offset(n).ok()?);
            n = 0;
        }
    }
    (n == 0).then_some((head, tail))
}

/// Copies the first `out.len()` bytes of `bufs` into `out`; returns how many were available.
pub fn read_bytes(bufs: &[Buf], out: &mut [u8]) -> usize {
    let mut done = 0;
    for b in bufs {
        if done == out.len() {
            break;
        }
        done += b.copy_to(&mut out[done..]);
    }
    done
}

/// Copies `data` into the front of `bufs`; returns how many bytes fitted.
pub fn write_bytes(bufs: &[Buf], data: &[u8]) -> usize {
    let mut done = 0;
    for b in bufs {
        if done == data.len() {
            break;
        }
        let n = b.len().min(data.len() - done);
        b.copy_from(&data[done..done + n]);
        done += n;
    }
    done
}

/// The ring a `handle_event` call is about: `device_event` indexes the worker thread's own rings
/// (vhost-user-backend numbers them per thread). `None` for anything but a readable kick.
pub fn kicked_ring(evset: EventSet, device_event: u16, vrings: &[Vring]) -> Option<&Vring> {
    if evset != EventSet::IN {
        return None;
    }
    vrings.get(device_event as usize)
}

/// At a ring's (re)start, requests whose completions are already in the used ring are not
/// served again. The frontend restarts a ring at the used index it last read; if the previous
/// connection completed more after that read (its worker raced the frontend noticing the
/// disconnection), those requests would run twice and the driver would see one descriptor
/// completed twice, which breaks a virtqueue for good. Requests complete in order here, so the
/// used index says exactly how many of them are done.
fn skip_completed(queue: &mut virtio_queue::Queue) -> bool {
    let ahead = queue.next_used().wrapping_sub(queue.next_avail());
    let skip = ahead != 0 && ahead <= queue.size();
    if skip {
        log::warn!(
            "ring restarted at {} but its used index is {}: not serving {ahead} completed \
             request(s) again",
            queue.next_avail(),
            queue.next_used()
        );
        queue.set_next_avail(queue.next_used());
    }
    skip
}

/// Queue threads of the whole daemon busy-polling right now.
static POLLERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A turn at busy-polling. At most half the host's cores (at least one) poll at once: a
/// spinning thread takes a core from the guests and their clients, and on a small host more
/// pollers than that measured slower than none (README, Benchmarks).
struct Poller;

impl Poller {
    fn take() -> Option<Poller> {
        static LIMIT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        let limit = *LIMIT.get_or_init(|| {
            std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
        });
        let ok = POLLERS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok();
        // Built only with a turn taken: a `Poller` gives its turn back when dropped.
        ok.then(|| Poller)
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        POLLERS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Spins for up to `window` until the driver makes a request available on `vring`; `false`
/// when none came (or the ring stopped, or the gate is closing). Notifications stay disabled
/// meanwhile (with EVENT_IDX, `avail_event` stays behind), so the driver does not kick.
fn poll_avail(vring: &Vring, mem: &AtomicMem, gate: &Gate, window: Duration) -> bool {
    let deadline = Instant::now() + window;
    let guard = mem.memory();
    let mut spins = 0u32;
    loop {
        let more = {
            let state = vring.get_ref();
            let queue = state.get_queue();
            queue.ready()
                && queue
                    .avail_idx(&*guard, Ordering::Acquire)
                    .is_ok_and(|a| a.0 != queue.next_avail())
        };
        if more {
            return true;
        }
        // The clock every few rounds only: reading it costs about as much as a look at the ring.
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(8) && (gate.closing() || Instant::now() >= deadline) {
            return false;
        }
        std::hint::spin_loop();
    }
}

/// Pops and completes every available chain of `vring` through `handler`, a round at a time,
/// then notifies the driver if it wants. After a round, the ring is watched for up to `poll`
/// (adapted to the driver: [`Vring::poll_window`]) before the thread goes back to sleep on the
/// kick.
///
/// The vring lock is held while requests are processed, so a GET_VRING_BASE (the frontend
/// stopping the ring) never observes a popped but uncompleted request.
pub fn drain_queue<H: Handler>(
    vring: &Vring,
    mem: &AtomicMem,
    event_idx: bool,
    gate: &Gate,
    poll: Duration,
    handler: &mut H,
) -> io::Result<()> {
    // Errors here come from rings the driver placed in bad memory. Returning them would end the
    // queue's worker thread; log and wait for the next kick (or the next ring setup) instead.
    let broken = |e: virtio_queue::Error| {
        log::warn!("virtqueue: {e}");
        Ok(())
    };
    loop {
        if gate.closing() {
            return Ok(());
        }
        if event_idx {
            if let Err(e) = vring.disable_notification() {
                return broken(e);
            }
        }
        let mut completed = false;
        let mut unreadable = false;
        let mut skipped = false;
        {
            let mut state = vring.get_mut();
            let queue = state.get_queue_mut();
            if vring.take_started() {
                skipped = skip_completed(queue);
            }
            let avail = match queue.avail_idx(&*mem.memory(), Ordering::Acquire) {
                Ok(a) => a,
                Err(e) => return broken(e),
            };
            // virtio 1.2 §2.7.13.3: a driver never makes more than the queue size available. A
            // ring that claims otherwise is broken; leave it alone instead of tripping over it
            // (and logging) at every kick.
            let pending = avail.0.wrapping_sub(queue.next_avail());
            if pending > queue.size() {
                log::debug!("ignoring a ring whose avail index jumped by more than its size");
                return Ok(());
            }
            // Take the memory map only now, after the avail index: a driver that added a memory
            // region (ADD_MEM_REG) and then queued a request into it is then always seen with
            // that region. Requests queued after this point wait for the next round.
            let guard = mem.memory();
            let m: &Mem = &guard;
            let (base, first_start) = (vring.base(), vring.first_start());
            let mut batch = H::Batch::default();
            let mut replies: SmallVec<[(u16, Reply); 64]> = SmallVec::new();
            for _ in 0..pending {
                let position = queue.next_avail();
                let used = queue.next_used();
                let Some(chain) = queue.pop_descriptor_chain(m) else {
                    // The avail index promises chains that virtio-queue cannot hand out: the
                    // avail ring is at guest address 0 (which it takes for "not set up") or its
                    // entries lie outside guest RAM. The index stays ahead of us, so looping
                    // back for those chains would keep a host core busy for ever (found by
                    // fuzzing). Give up on this kick instead; the next kick or ring setup retries.
                    unreadable = true;
                    break;
                };
                let head = chain.head_index();
                let slot = Slot {
                    position,
                    head,
                    used,
                    base,
                    size: queue.size(),
                    first_start,
                };
                replies.push((head, handler.request(m, chain, slot, &mut batch)));
            }
            let mut lens = UsedLens::new();
            handler.complete(&mut batch, &mut lens);
            let mut deferred = lens.into_iter();
            for (head, reply) in replies {
                let len = match reply {
                    Reply::Done(len) => len,
                    Reply::Deferred => deferred.next().unwrap_or(0),
                };
                if let Err(e) = queue.add_used(m, head, len) {
                    log::warn!("cannot complete descriptor {head}: {e}");
                }
                completed = true;
            }
        }
        if skipped {
            // The previous connection wrote those used entries, perhaps after the frontend had
            // stopped listening: interrupt the driver for them (a spurious interrupt is
            // harmless; EVENT_IDX's bookkeeping knows nothing of them).
            vring.signal_used_queue()?;
        }
        if completed {
            match vring.needs_notification() {
                // With no call eventfd yet, the one the frontend installs is signalled then
                // (`vring.rs`).
                Ok(true) => vring.signal_used_queue()?,
                Ok(false) => {}
                Err(e) => return broken(e),
            }
        }
        if unreadable {
            log::warn!(
                "virtqueue: the avail ring's entries cannot be read; waiting for the next kick"
            );
            return Ok(());
        }
        // After a burst, watch the ring a little longer before sleeping on the kick: a driver
        // that is about to queue its next request then neither kicks nor waits for a wake-up.
        let window = vring.poll_window(poll);
        if completed && !window.is_zero() {
            if let Some(_turn) = Poller::take() {
                let found = poll_avail(vring, mem, gate, window);
                vring.poll_outcome(found, window, poll);
                if found {
                    continue;
                }
            }
        }
        // virtio 1.2 §2.7.10: re-check after re-enabling so that no kick is lost; without
        // EVENT_IDX, also come back for requests queued while this round ran.
        if event_idx {
            match vring.enable_notification() {
                Ok(true) => continue,
                Ok(false) => return Ok(()),
                Err(e) => return broken(e),
            }
        }
        let more = {
            let state = vring.get_ref();
            let queue = state.get_queue();
            queue
                .avail_idx(&*mem.memory(), Ordering::Acquire)
                .map(|a| a.0 != queue.next_avail())
        };
        match more {
            Ok(true) => continue,
            Ok(false) => return Ok(()),
            Err(e) => return broken(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polling_turns_are_counted_exactly() {
        let before = POLLERS.load(Ordering::Acquire);
        let limit = std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1));
        let turns: Vec<Poller> = std::iter::from_fn(Poller::take).take(64).collect();
        assert!(turns.len() <= limit);
        // Refused turns leave the count alone (a refused `take` once gave one back anyway).
        for _ in 0..4 {
            assert!(Poller::take().is_none() || turns.len() < limit);
        }
        drop(turns);
        assert_eq!(POLLERS.load(Ordering::Acquire), before);
    }
}

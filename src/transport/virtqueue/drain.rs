//! The drain/notify loop of a queue: rounds of requests through a [`Handler`], completions in
//! the driver's order, notification suppression and busy-polling between rounds.

use std::io;
use std::sync::atomic::Ordering;
use std::time::Duration;

use smallvec::SmallVec;
use vhost_user_backend::VringT;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestAddressSpace;
use vmm_sys_util::epoll::EventSet;

use super::dirty::{DirtyLog, Written};
use super::poll::poll_avail;
use super::{AtomicMem, Mem, QuiesceLatch, Slot, Vring};
use crate::testhooks::failpoint;
use crate::transport::poller::Poller;

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

    /// Whether the ring may be served another round (a ring that never runs empty is served
    /// round after round without a kick): false when its connection may admit no more now
    /// (cluster mode: the guest is not owned here any more), the ring then waits for a kick.
    fn next_round(&mut self) -> bool {
        true
    }
}

/// Used lengths of a round's deferred requests.
pub type UsedLens = SmallVec<[u32; 64]>;

/// A round's requests in the driver's order: each one's head index and what became of it.
type Replies = SmallVec<[(u16, Reply); 64]>;

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
fn skip_completed(queue: &mut Queue) -> bool {
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

/// Why a drain stops early.
enum Halt {
    /// The ring lies in bad memory (see [`drain_queue`]).
    Ring(virtio_queue::Error),
    /// Signalling the driver failed.
    Io(io::Error),
}

impl From<virtio_queue::Error> for Halt {
    fn from(e: virtio_queue::Error) -> Self {
        Halt::Ring(e)
    }
}

impl From<io::Error> for Halt {
    fn from(e: io::Error) -> Self {
        Halt::Io(e)
    }
}

/// What one round did.
struct Round {
    /// Some request reached the used ring.
    completed: bool,
    /// The avail ring's entries could not be read.
    unreadable: bool,
    /// Completed requests were skipped at the ring's start ([`skip_completed`]).
    skipped: bool,
}

/// Pops and completes every available chain of `vring` through `handler`, a round at a time,
/// then notifies the driver if it wants. After a round, the ring is watched for up to `poll`
/// (adapted to the driver: [`Vring::poll_window`]) before the thread goes back to sleep on the
/// kick.
///
/// The vring lock is held while requests are processed, so a GET_VRING_BASE (the frontend
/// stopping the ring) never observes a popped but uncompleted request, nor a data-in buffer not
/// yet marked in `log`.
pub fn drain_queue<H: Handler>(
    vring: &Vring,
    mem: &AtomicMem,
    event_idx: bool,
    log: &DirtyLog,
    latch: &QuiesceLatch,
    poll: Duration,
    handler: &mut H,
) -> io::Result<()> {
    match drain(vring, mem, event_idx, log, latch, poll, handler) {
        Ok(()) => Ok(()),
        // Errors here come from rings the driver placed in bad memory. Returning them would end
        // the queue's worker thread; log and wait for the next kick (or the next ring setup)
        // instead.
        Err(Halt::Ring(e)) => {
            log::warn!("virtqueue: {e}");
            Ok(())
        }
        Err(Halt::Io(e)) => Err(e),
    }
}

/// The loop of [`drain_queue`].
fn drain<H: Handler>(
    vring: &Vring,
    mem: &AtomicMem,
    event_idx: bool,
    log: &DirtyLog,
    latch: &QuiesceLatch,
    poll: Duration,
    handler: &mut H,
) -> Result<(), Halt> {
    let mut first = true;
    loop {
        if latch.closing() || !(std::mem::take(&mut first) || handler.next_round()) {
            return Ok(());
        }
        if event_idx {
            vring.disable_notification()?;
        }
        let Some(round) = serve_round(vring, mem, log, handler)? else {
            return Ok(());
        };
        if round.completed {
            failpoint::hit("used-written");
        }
        signal(vring, &round)?;
        if round.unreadable {
            log::warn!(
                "virtqueue: the avail ring's entries cannot be read; waiting for the next kick"
            );
            return Ok(());
        }
        // After a burst, watch the ring a little longer before sleeping on the kick: a driver
        // that is about to queue its next request then neither kicks nor waits for a wake-up.
        let window = vring.poll_window(poll);
        if round.completed && !window.is_zero() {
            if let Some(_turn) = Poller::take() {
                let found = poll_avail(vring, mem, latch, window);
                vring.poll_outcome(found, window, poll);
                if found {
                    continue;
                }
            }
        }
        if !more_queued(vring, mem, event_idx)? {
            return Ok(());
        }
    }
}

/// One round under the vring lock: every request available now, completed (its data-in buffers
/// marked in `log`) in the used ring. `None` for a ring to leave alone.
fn serve_round<H: Handler>(
    vring: &Vring,
    mem: &AtomicMem,
    log: &DirtyLog,
    handler: &mut H,
) -> Result<Option<Round>, Halt> {
    let mut state = vring.get_mut();
    let queue = state.get_queue_mut();
    let skipped = vring.take_started() && skip_completed(queue);
    let avail = queue.avail_idx(&*mem.memory(), Ordering::Acquire)?;
    // virtio 1.2 §2.7.13.3: a driver never makes more than the queue size available. A ring
    // that claims otherwise is broken; leave it alone instead of tripping over it (and logging)
    // at every kick.
    let pending = avail.0.wrapping_sub(queue.next_avail());
    if pending > queue.size() {
        log::debug!("ignoring a ring whose avail index jumped by more than its size");
        return Ok(None);
    }
    // Take the memory map only now, after the avail index: a driver that added a memory region
    // (ADD_MEM_REG) and then queued a request into it is then always seen with that region.
    // Requests queued after this point wait for the next round.
    let guard = mem.memory();
    let m: &Mem = &guard;
    let mut batch = H::Batch::default();
    let mut replies = Replies::new();
    let mut written = Written::default();
    let mut taken = Taken {
        batch: &mut batch,
        replies: &mut replies,
        written: &mut written,
    };
    let unreadable = !take_requests(vring, queue, m, pending, handler, &mut taken);
    let mut lens = UsedLens::new();
    handler.complete(&mut batch, &mut lens);
    log.mark(m, &written);
    let completed = !replies.is_empty();
    let mut deferred = lens.into_iter();
    for (head, reply) in replies {
        let len = match reply {
            Reply::Done(len) => len,
            Reply::Deferred => deferred.next().unwrap_or(0),
        };
        if let Err(e) = queue.add_used(m, head, len) {
            log::warn!("cannot complete descriptor {head}: {e}");
        }
    }
    Ok(Some(Round {
        completed,
        unreadable,
        skipped,
    }))
}

/// What a round's requests left when they were taken.
struct Taken<'a, 'm, H: Handler> {
    batch: &'a mut H::Batch<'m>,
    replies: &'a mut Replies,
    written: &'a mut Written,
}

/// Pops `pending` chains and hands each to `handler`; `false` when the avail ring promised a
/// chain it could not hand out.
fn take_requests<'m, H: Handler>(
    vring: &Vring,
    queue: &mut Queue,
    m: &'m Mem,
    pending: u16,
    handler: &mut H,
    taken: &mut Taken<'_, 'm, H>,
) -> bool {
    let (base, first_start) = (vring.base(), vring.first_start());
    for _ in 0..pending {
        let position = queue.next_avail();
        let used = queue.next_used();
        let Some(chain) = queue.pop_descriptor_chain(m) else {
            // The avail index promises chains that virtio-queue cannot hand out: the avail ring
            // is at guest address 0 (which it takes for "not set up") or its entries lie
            // outside guest RAM. The index stays ahead of us, so looping back for those chains
            // would keep a host core busy for ever (found by fuzzing). Give up on this kick
            // instead; the next kick or ring setup retries.
            return false;
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
        taken.written.collect(chain.clone());
        let reply = handler.request(m, chain, slot, taken.batch);
        taken.replies.push((head, reply));
    }
    true
}

/// Interrupts the driver after a round, if it wants to be.
fn signal(vring: &Vring, round: &Round) -> Result<(), Halt> {
    if round.skipped {
        // The previous connection wrote those used entries, perhaps after the frontend had
        // stopped listening: interrupt the driver for them (a spurious interrupt is harmless;
        // EVENT_IDX's bookkeeping knows nothing of them).
        vring.signal_used_queue()?;
    }
    // With no call eventfd yet, the one the frontend installs is signalled then (`vring.rs`).
    if round.completed && vring.needs_notification()? {
        vring.signal_used_queue()?;
    }
    Ok(())
}

/// Whether another round is due. virtio 1.2 §2.7.10: re-check after re-enabling so that no kick
/// is lost; without EVENT_IDX, also come back for requests queued while this round ran.
fn more_queued(vring: &Vring, mem: &AtomicMem, event_idx: bool) -> Result<bool, Halt> {
    if event_idx {
        return Ok(vring.enable_notification()?);
    }
    let state = vring.get_ref();
    let queue = state.get_queue();
    let avail = queue.avail_idx(&*mem.memory(), Ordering::Acquire)?;
    Ok(avail.0 != queue.next_avail())
}

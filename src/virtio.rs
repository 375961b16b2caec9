//! Shared virtqueue plumbing for both devices: turning a guest's descriptor chain into bounded
//! lists of memory slices, and the drain/notify loop of a queue.
//!
//! Descriptor chains are hostile input. Every address is resolved through `GuestMemory`, which
//! refuses anything outside guest RAM, and nothing here trusts a length the guest wrote.

use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use smallvec::SmallVec;
use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemory, GuestMemoryAtomic, GuestMemoryMmap, Permissions};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::image::Buf;

pub type Mem = GuestMemoryMmap<()>;
pub type AtomicMem = GuestMemoryAtomic<Mem>;
pub type Vring = VringRwLock<AtomicMem>;
pub type Bufs<'m> = SmallVec<[Buf<'m>; 8]>;

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

/// Interrupts the driver about completed requests.
///
/// A frontend sends SET_VRING_CALL right after SET_VRING_KICK without waiting for us, so on a ring
/// that stayed enabled across a device restart (QEMU, when the kernel takes over from the
/// firmware) a request can complete before the call eventfd arrives. vhost-user-backend would drop
/// that interrupt silently and the driver would wait for ever; wait for the eventfd instead.
fn signal(vring: &Vring) -> io::Result<()> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(5);
    loop {
        if vring.get_ref().get_call().is_some() {
            if start.elapsed() >= Duration::from_millis(1) {
                log::debug!("waited {:?} for the ring's call eventfd", start.elapsed());
            }
            return vring.signal_used_queue();
        }
        if Instant::now() > deadline {
            log::warn!("requests completed, but the frontend never set the ring's call eventfd");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Pops and completes every available chain of `vring`, then notifies the driver if it wants.
///
/// The vring lock is held while requests are processed, so a GET_VRING_BASE (the frontend
/// stopping the ring) never observes a popped but uncompleted request.
pub fn drain_queue(
    vring: &Vring,
    mem: &AtomicMem,
    event_idx: bool,
    mut process: impl for<'m> FnMut(&'m Mem, DescriptorChain<&'m Mem>) -> u32,
) -> io::Result<()> {
    // Errors here come from rings the driver placed in bad memory. Returning them would end the
    // queue's worker thread; log and wait for the next kick (or the next ring setup) instead.
    let broken = |e: virtio_queue::Error| {
        log::warn!("virtqueue: {e}");
        Ok(())
    };
    loop {
        if event_idx {
            if let Err(e) = vring.disable_notification() {
                return broken(e);
            }
        }
        let mut completed = false;
        {
            let mut state = vring.get_mut();
            let queue = state.get_queue_mut();
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
            for _ in 0..pending {
                let Some(chain) = queue.pop_descriptor_chain(m) else {
                    break;
                };
                let head = chain.head_index();
                let len = process(m, chain);
                if let Err(e) = queue.add_used(m, head, len) {
                    log::warn!("cannot complete descriptor {head}: {e}");
                }
                completed = true;
            }
        }
        if completed {
            match vring.needs_notification() {
                Ok(true) => signal(vring)?,
                Ok(false) => {}
                Err(e) => return broken(e),
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

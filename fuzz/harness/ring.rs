//! A split virtqueue laid out in guest memory from fuzz bytes, for the device targets.
//!
//! Input, after the device's own byte:
//!
//! | field  | bytes | meaning |
//! |--------|-------|---------|
//! | flags  | 1     | bits 0-2: queue size `1 << n`; bit 3: VIRTIO_RING_F_EVENT_IDX; bit 4: ring addresses follow |
//! | start  | 2 LE  | the ring position the device starts at (its next avail and used index) |
//! | count  | 1     | chains made available: avail idx = start + count (more than the size is a broken ring) |
//! | addrs  | 24    | only with flag bit 4: descriptor table, avail ring, used ring addresses (u64 LE each) |
//! | table  | 16 × size | the descriptor table, written at [`DESC`] (addr u64, len u32, flags u16, next u16) |
//! | heads  | 2 × count | avail ring entries, from position `start` on |
//! | data   | rest  | written at [`DATA`]: headers, payloads, indirect tables |
//!
//! The rings are written at [`DESC`], [`AVAIL`] and [`USED`] whatever addresses the queue is
//! given, so fuzzed addresses land on real ring contents, on data, or outside guest RAM.

use std::fs::File;
use std::os::fd::{FromRawFd, IntoRawFd};

use sharedisk::transport::virtqueue::{AtomicMem, Mem, Vring};
use vhost_user_backend::VringT;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::Reader;

pub const DESC: u64 = 0x0;
pub const AVAIL: u64 = 0x1000;
pub const USED: u64 = 0x2000;
pub const DATA: u64 = 0x3000;
/// Guest RAM: two adjacent regions (a buffer may straddle them), then one past a hole.
pub const REGIONS: [(u64, usize); 3] = [(0, 0x10000), (0x10000, 0x10000), (0x40000, 0x1000)];
/// The largest queue the devices accept (both advertise 1024).
const MAX_QUEUE_SIZE: u16 = 1024;

pub struct Ring {
    pub mem: AtomicMem,
    pub vring: Vring,
    pub event_idx: bool,
}

pub fn build(r: &mut Reader) -> Ring {
    let flags = r.u8();
    let size = 1u16 << (flags & 7);
    let event_idx = flags & 0x08 != 0;
    let start = r.u16();
    let count = u16::from(r.u8());
    let (desc, avail, used) = if flags & 0x10 != 0 {
        (r.u64(), r.u64(), r.u64())
    } else {
        (DESC, AVAIL, USED)
    };

    let ranges: Vec<(GuestAddress, usize)> = REGIONS
        .iter()
        .map(|&(a, len)| (GuestAddress(a), len))
        .collect();
    let mem = Mem::from_ranges(&ranges).expect("guest memory");
    let table = r.bytes(16 * usize::from(size));
    mem.write_slice(table, GuestAddress(DESC)).unwrap();

    let end = start.wrapping_add(count);
    mem.write_obj(0u16, GuestAddress(AVAIL)).unwrap();
    mem.write_obj(end, GuestAddress(AVAIL + 2)).unwrap();
    for i in 0..count {
        let pos = u64::from(start.wrapping_add(i) % size);
        mem.write_obj(r.u16(), GuestAddress(AVAIL + 4 + 2 * pos))
            .unwrap();
    }
    // used_event: interrupt after the first completion.
    mem.write_obj(start, GuestAddress(AVAIL + 4 + 2 * u64::from(size)))
        .unwrap();
    mem.write_obj(0u16, GuestAddress(USED)).unwrap();
    mem.write_obj(start, GuestAddress(USED + 2)).unwrap();
    let data = r.rest();
    let room = (REGIONS[1].0 as usize + REGIONS[1].1) - DATA as usize;
    mem.write_slice(&data[..data.len().min(room)], GuestAddress(DATA))
        .unwrap();

    let mem = GuestMemoryAtomic::new(mem);
    let vring = Vring::new(mem.clone(), MAX_QUEUE_SIZE).expect("vring");
    vring.set_queue_size(size);
    // Misaligned addresses are refused and the queue keeps its previous ones (here: 0), as
    // when a frontend's SET_VRING_ADDR fails.
    let _ = vring.set_queue_info(desc, avail, used);
    vring.set_queue_next_avail(start);
    vring.set_queue_next_used(start);
    vring.set_queue_event_idx(event_idx);
    vring.set_queue_ready(true);
    vring.set_enabled(true);
    let call = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    // SAFETY: the descriptor was just created and is owned by nothing else from here on.
    vring.set_call(Some(unsafe { File::from_raw_fd(call.into_raw_fd()) }));
    Ring {
        mem,
        vring,
        event_idx,
    }
}

/// The used ring's index and first entries, and the bytes at `at`, when tracing.
pub fn trace(ring: &Ring, at: u64, n: usize) {
    if !super::tracing() {
        return;
    }
    let mem = ring.mem.memory();
    let idx: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap_or(0);
    let used: Vec<(u32, u32)> = (0..4)
        .map(|i| {
            let e = GuestAddress(USED + 4 + 8 * i);
            (
                mem.read_obj(e).unwrap_or(0),
                mem.read_obj(GuestAddress(e.0 + 4)).unwrap_or(0),
            )
        })
        .collect();
    let mut bytes = vec![0u8; n];
    let _ = mem.read_slice(&mut bytes, GuestAddress(at));
    eprintln!("used idx {idx} {used:?}; at {at:#x}: {bytes:02x?}");
}

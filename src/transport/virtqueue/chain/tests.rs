//! Unit tests of `Chain::parse_within`: limits counted on the descriptors parsed, in one walk.

use std::cell::Cell;

use virtio_queue::desc::split::Descriptor;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::*;

const NEXT: u16 = 1;
const WRITE: u16 = 2;
const LIMITS: Limits = Limits {
    descriptors: 4,
    descriptor_len: 4096,
};

fn mem() -> Mem {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
}

/// A chain of `lens` readable descriptors and a 1-byte status.
fn chain(lens: &[u32]) -> Vec<Descriptor> {
    let mut addr = 0;
    let mut v: Vec<Descriptor> = lens
        .iter()
        .map(|&len| {
            let d = Descriptor::new(addr, len, NEXT, 0);
            addr += u64::from(len);
            d
        })
        .collect();
    v.push(Descriptor::new(addr, 1, WRITE, 0));
    v
}

#[test]
fn limits_are_counted_on_the_descriptors_parsed() {
    let m = mem();
    let ok = Chain::parse_within(&m, chain(&[16, 4096, 512]), LIMITS).unwrap();
    assert!(ok.within_limits);
    assert_eq!(crate::image::buffers::total(&ok.readable), 16 + 4096 + 512);
    // One descriptor too many, or one byte too long: beyond, yet parsed whole.
    let many = Chain::parse_within(&m, chain(&[16, 512, 512, 512]), LIMITS).unwrap();
    assert!(!many.within_limits);
    assert_eq!(crate::image::buffers::total(&many.writable), 1);
    let long = Chain::parse_within(&m, chain(&[16, 4097]), LIMITS).unwrap();
    assert!(!long.within_limits);
    assert!(
        Chain::parse_within(&m, chain(&[16, 4097]), Limits::NONE)
            .unwrap()
            .within_limits
    );
}

/// A driver rewriting its table while the device reads it: each descriptor is read once, so the
/// verdict is about exactly the buffers the device will use. Here the table shrinks the
/// oversized descriptor right after the device read it: a second walk (as the device did
/// before, to check the limits) would have seen only small ones.
#[test]
fn a_table_rewritten_after_the_walk_cannot_hide_an_oversized_descriptor() {
    let m = mem();
    let walks = Cell::new(0);
    let racing = || {
        walks.set(walks.get() + 1);
        let big = walks.get() == 1;
        chain(&[16, if big { 1 << 16 } else { 512 }])
    };
    let parsed = Chain::parse_within(&m, racing(), LIMITS).unwrap();
    assert_eq!(walks.get(), 1, "one walk");
    assert!(!parsed.within_limits);
    assert_eq!(
        crate::image::buffers::total(&parsed.readable),
        16 + (1 << 16)
    );
    // What a second walk would have judged: within the limits, for other buffers.
    assert!(
        Chain::parse_within(&m, racing(), LIMITS)
            .unwrap()
            .within_limits
    );
}

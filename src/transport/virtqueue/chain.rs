//! Turning a guest's descriptor chain into bounded lists of memory slices.
//!
//! Descriptor chains are hostile input. Every address is resolved through `GuestMemory`, which
//! refuses anything outside guest RAM, and nothing here trusts a length the guest wrote.

use vhost_user_backend::bitmap::BitmapMmapRegion;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{GuestMemory, Permissions, VolatileSlice};

use super::Mem;
use crate::image::{Buf, Bufs};

/// Why a chain could not be used at all.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// A descriptor names memory outside guest RAM.
    #[error("descriptor points outside guest memory")]
    BadAddress,
    /// A device-readable descriptor follows a device-writable one (virtio 1.2 §2.7.4.2).
    #[error("device-readable descriptor after a device-writable one")]
    Order,
    /// virtio-queue ends a chain silently where it loops, leaves the table, or reaches 4 GiB
    /// (which a used length could not count); the last descriptor then still says NEXT.
    #[error("chain broken off (a loop, a next index outside the table, or 4 GiB or more)")]
    BrokenOff,
}

/// The most a device takes in one chain (virtio-blk's `seg_max` and `size_max`), counted while
/// the chain is parsed: the driver may rewrite its descriptor table at any time, so a limit
/// checked on a second walk would judge other descriptors than the ones parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Descriptors in the chain, the indirect table's included.
    pub descriptors: u32,
    /// Bytes of one descriptor.
    pub descriptor_len: u32,
}

impl Limits {
    /// No limit beyond what virtio-queue enforces (a chain ends at 4 GiB or at a loop).
    pub const NONE: Limits = Limits {
        descriptors: u32::MAX,
        descriptor_len: u32::MAX,
    };
}

/// A chain split into what the device reads (driver -> device) and writes (device -> driver).
pub struct Chain<'m> {
    pub readable: Bufs<'m>,
    pub writable: Bufs<'m>,
    /// Whether the descriptors parsed stayed within the [`Limits`] given: a chain beyond them
    /// is still parsed whole, so that the device can answer it (its status byte is found).
    pub within_limits: bool,
}

impl<'m> Chain<'m> {
    pub fn parse(mem: &'m Mem, chain: DescriptorChain<&'m Mem>) -> Result<Self, ChainError> {
        Self::parse_within(mem, chain, Limits::NONE)
    }

    /// Parses `descs` in one walk, counting `limits` on the very descriptors it parses.
    pub fn parse_within(
        mem: &'m Mem,
        descs: impl IntoIterator<Item = Descriptor>,
        limits: Limits,
    ) -> Result<Self, ChainError> {
        let mut readable = Bufs::new();
        let mut writable = Bufs::new();
        let mut more = false;
        let mut count = 0u32;
        let mut within_limits = true;
        for desc in descs {
            more = desc.has_next();
            count = count.saturating_add(1);
            within_limits &= count <= limits.descriptors && desc.len() <= limits.descriptor_len;
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
                list.push(unlogged(slice.map_err(|_| ChainError::BadAddress)?));
            }
        }
        if more {
            return Err(ChainError::BrokenOff);
        }
        Ok(Chain {
            readable,
            writable,
            within_limits,
        })
    }
}

/// The same guest memory as a plain slice, as the image's scatter lists take it. What the image
/// writes into it (io_uring, `readv`, a bounce copy) is not marked in the dirty log through this
/// slice: the drain marks every device-writable descriptor of a request once the request is done
/// (`drain.rs`, [`super::DirtyLog`]).
fn unlogged(slice: VolatileSlice<'_, BitmapMmapRegion>) -> Buf<'_> {
    let guard = slice.ptr_guard_mut();
    // SAFETY: the new slice covers exactly the `slice.len()` bytes of guest memory `slice`
    // covers, and lives no longer than it (both borrow the same guest memory map, `'m`); guest
    // memory is accessed only volatilely, through slices like these or raw I/O into them.
    unsafe { VolatileSlice::new(guard.as_ptr(), slice.len()) }
}

#[cfg(test)]
mod tests;

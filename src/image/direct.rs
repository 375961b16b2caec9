//! O_DIRECT (`--direct`): what the file system requires of a buffer, and an aligned bounce
//! buffer for guest buffers that do not meet it.
//!
//! Direct I/O must start and end on the file system's direct-I/O offset alignment and use
//! memory aligned to its memory alignment (statx(2) `STATX_DIOALIGN`). sharedisk serves
//! 512-byte sectors, so it needs an offset alignment of at most 512; a guest's buffers are
//! usually page-aligned, but nothing obliges them to be, so those that are not go through a
//! bounce buffer.

use std::alloc::{self, Layout};
use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;

use super::Buf;

/// Bounce buffers are aligned to a page, enough for any device.
const BOUNCE_ALIGN: usize = 4096;

#[derive(Clone, Copy, Debug)]
pub struct Alignment {
    /// Every buffer's address and length must be a multiple of this.
    mem: usize,
}

impl Alignment {
    /// Finds what `file`, opened with O_DIRECT, requires. Fails when the file system wants
    /// offsets aligned to more than a 512-byte sector, which sharedisk cannot serve directly.
    pub fn probe(file: &File, size: u64) -> io::Result<Self> {
        let (mem, offset) = match dio_align(file) {
            Some(a) => a,
            None => probe_by_reading(file, size)?,
        };
        if offset > crate::lun::SECTOR as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "--direct: the file system needs direct I/O aligned to {offset} bytes; \
                     sharedisk serves 512-byte sectors, so use a file system (or device) with \
                     512-byte direct I/O, or leave --direct off"
                ),
            ));
        }
        log::info!("O_DIRECT: memory alignment {mem} bytes, offset alignment {offset} bytes");
        Ok(Alignment { mem: mem.max(1) })
    }

    /// Whether O_DIRECT can take `bufs` as they are.
    pub fn takes(&self, bufs: &[Buf]) -> bool {
        bufs.iter().all(|b| {
            (b.ptr_guard().as_ptr() as usize).is_multiple_of(self.mem)
                && b.len().is_multiple_of(self.mem)
        })
    }
}

/// The kernel's own answer (Linux 6.1 and later): (memory, offset) alignment.
fn dio_align(file: &File) -> Option<(usize, usize)> {
    // SAFETY: `statx` is a plain C struct of integers, for which all zeroes is a valid value.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: statx writes at most size_of::<statx>() bytes into `st`, which is ours; the empty
    // path with AT_EMPTY_PATH names the descriptor itself.
    let r = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut st,
        )
    };
    if r != 0 || st.stx_mask & libc::STATX_DIOALIGN == 0 || st.stx_dio_offset_align == 0 {
        return None;
    }
    Some((
        st.stx_dio_mem_align as usize,
        st.stx_dio_offset_align as usize,
    ))
}

/// For kernels without STATX_DIOALIGN: try a 512-byte read at offset 0 into a page-aligned
/// buffer (offset alignment 512 if it works), then into a buffer aligned to 512 only (memory
/// alignment 512 if that works too, else a page).
fn probe_by_reading(file: &File, size: u64) -> io::Result<(usize, usize)> {
    if size < BOUNCE_ALIGN as u64 * 2 {
        return Ok((BOUNCE_ALIGN, 512));
    }
    let buf = Bounce::new(2 * BOUNCE_ALIGN)?;
    let read = |at: usize| {
        // SAFETY: `at + 512` is within the bounce buffer, which lives across the call.
        let r = unsafe {
            libc::pread(
                file.as_raw_fd(),
                buf.ptr.add(at) as *mut libc::c_void,
                512,
                0,
            )
        };
        r == 512
    };
    if !read(0) {
        return Ok((BOUNCE_ALIGN, BOUNCE_ALIGN));
    }
    Ok((if read(512) { 512 } else { BOUNCE_ALIGN }, 512))
}

/// A zeroed, page-aligned host buffer.
pub struct Bounce {
    ptr: *mut u8,
    layout: Layout,
}

impl Bounce {
    pub fn new(len: usize) -> io::Result<Self> {
        let len = len.max(1).next_multiple_of(BOUNCE_ALIGN);
        let layout = Layout::from_size_align(len, BOUNCE_ALIGN).map_err(io::Error::other)?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        Ok(Bounce { ptr, layout })
    }

    /// Runs `io` on the first `len` bytes of this buffer, never written to: zeroes.
    pub fn with_zeroes(
        &self,
        len: usize,
        io: impl FnOnce(&[Buf]) -> io::Result<()>,
    ) -> io::Result<()> {
        if len > self.layout.size() {
            return Err(io::Error::other("zeroes longer than their bounce buffer"));
        }
        // SAFETY: the buffer holds at least `len` bytes (checked above), is exclusively ours,
        // and outlives the slice, which is dropped at the end of this call.
        let host = unsafe { vm_memory::VolatileSlice::new(self.ptr, len) };
        io(std::slice::from_ref(&host))
    }

    /// Runs `io` on the first `total(bufs)` bytes of this buffer instead of `bufs`: copies
    /// `bufs` in first for a write, out after a successful read.
    pub fn io(
        &self,
        bufs: &[Buf],
        io: impl FnOnce(&[Buf]) -> io::Result<()>,
        write: bool,
    ) -> io::Result<()> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        // SAFETY: the buffer holds at least `len` bytes, is exclusively ours, and outlives the
        // slice, which is dropped at the end of this call.
        let host = unsafe { vm_memory::VolatileSlice::new(self.ptr, len) };
        if write {
            let mut at = 0;
            for b in bufs {
                b.copy_to_volatile_slice(host.offset(at).map_err(io::Error::other)?);
                at += b.len();
            }
        }
        io(std::slice::from_ref(&host))?;
        if !write {
            let mut at = 0;
            for b in bufs {
                host.offset(at)
                    .map_err(io::Error::other)?
                    .copy_to_volatile_slice(*b);
                at += b.len();
            }
        }
        Ok(())
    }
}

impl Drop for Bounce {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { alloc::dealloc(self.ptr, self.layout) };
    }
}

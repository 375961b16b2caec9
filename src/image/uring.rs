//! Batches of image reads and writes through io_uring: one submission and one wait for a whole
//! virtqueue round instead of a system call per request, and real queue depth at the disk under
//! `--direct` (where a synchronous `preadv` would leave every ring at depth 1).
//!
//! Each queue thread has its own ring (a thread-local), created at its first batch; a kernel
//! without io_uring (or a sandbox that forbids it) makes the image fall back to synchronous I/O
//! for good, with one log line.

use std::cell::RefCell;
use std::io;
use std::os::unix::io::RawFd;

use io_uring::{opcode, types, IoUring};
use smallvec::SmallVec;

use super::IoOp;

/// Submission queue entries per ring; a larger batch is submitted in pieces.
const ENTRIES: u32 = 128;

thread_local! {
    /// `None` inside: io_uring could not be set up on this thread.
    static RING: RefCell<Option<Option<IoUring>>> = const { RefCell::new(None) };
}

/// What the kernel did with one op: bytes transferred (possibly fewer than asked) or the error.
pub(super) type Transferred = io::Result<usize>;

/// Runs `ops[i]` for every `i` of `which` on `fd` through this thread's ring, setting `done[i]`
/// for each. `Err` when io_uring is unavailable; nothing was submitted then.
pub(super) fn run(
    fd: RawFd,
    ops: &[IoOp],
    which: &[usize],
    rw_flags: impl Fn(&IoOp) -> i32,
    done: &mut [Transferred],
) -> io::Result<()> {
    RING.with(|cell| {
        let mut cell = cell.borrow_mut();
        let ring = cell.get_or_insert_with(|| match IoUring::new(ENTRIES) {
            Ok(r) => Some(r),
            Err(e) => {
                log::warn!("io_uring unavailable ({e}); image I/O stays synchronous");
                None
            }
        });
        let Some(ring) = ring.as_mut() else {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        };
        for chunk in which.chunks(ENTRIES as usize) {
            submit(ring, fd, ops, chunk, &rw_flags, done);
        }
        Ok(())
    })
}

/// Submits `ops[i]` for every `i` in `which` (at most the ring's size) and waits for them all.
fn submit(
    ring: &mut IoUring,
    fd: RawFd,
    ops: &[IoOp],
    which: &[usize],
    rw_flags: &impl Fn(&IoOp) -> i32,
    done: &mut [Transferred],
) {
    // The iovec arrays must stay put until the kernel has completed every entry: they are built
    // first and only read (by the kernel) until the wait below returns.
    let iovecs: SmallVec<[SmallVec<[libc::iovec; 4]>; 32]> = which
        .iter()
        .map(|&i| super::file::iovecs(&ops[i].bufs))
        .collect();
    let mut left = 0;
    {
        let mut sq = ring.submission();
        for (&i, iov) in which.iter().zip(&iovecs) {
            let op = &ops[i];
            let entry = if op.write {
                opcode::Writev::new(types::Fd(fd), iov.as_ptr(), iov.len() as u32)
                    .offset(op.offset)
                    .rw_flags(rw_flags(op))
                    .build()
            } else {
                opcode::Readv::new(types::Fd(fd), iov.as_ptr(), iov.len() as u32)
                    .offset(op.offset)
                    .build()
            };
            // SAFETY: the iovecs (and the guest or host memory they point into, borrowed by
            // `op.bufs`) outlive the submission: this function waits for every completion
            // before `iovecs` is dropped or `ops` is released.
            // (The ring holds ENTRIES and `which` never more, so the push cannot fail.)
            match unsafe { sq.push(&entry.user_data(i as u64)) } {
                Ok(()) => left += 1,
                Err(_) => done[i] = Err(io::Error::other("io_uring submission queue full")),
            }
        }
    }
    while left > 0 {
        match ring.submit_and_wait(left) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // Entries may be in flight, and the iovecs must outlive them: keep waiting
                // (EBUSY and the like pass) rather than return.
                log::warn!("io_uring wait: {e}; waiting again");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        for cqe in ring.completion() {
            let Some(slot) = done.get_mut(cqe.user_data() as usize) else {
                continue;
            };
            *slot = if cqe.result() < 0 {
                Err(io::Error::from_raw_os_error(-cqe.result()))
            } else {
                Ok(cqe.result() as usize)
            };
            left = left.saturating_sub(1);
        }
    }
}

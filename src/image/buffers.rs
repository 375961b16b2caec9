//! The buffers vocabulary of every I/O path: a scatter list of memory slices ([`Buf`],
//! [`Bufs`]) and the few operations on it.
//!
//! The image owns this type because the image is what reads and writes through it: the zero-copy
//! data path hands a request's buffers (slices of guest memory a transport resolved from a
//! descriptor chain) straight to `preadv`/`pwritev2` or io_uring, so the scatter list is the
//! image's input type, like an iovec array is a file's. The transports build it, the SCSI core
//! passes it on (wrapped in its own data-out/data-in types) without knowing where the memory
//! comes from, and neither layer has to depend on the other for it.

use smallvec::SmallVec;
use vm_memory::VolatileSlice;

/// A block of guest (or host) memory the image reads into or writes from.
pub type Buf<'a> = VolatileSlice<'a>;
/// The buffers of one request, in order.
pub type Bufs<'a> = SmallVec<[Buf<'a>; 8]>;

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

//! The backing image: the one small interface every device path goes through.
//!
//! Devices never touch the file directly. [`Image`] validates every range against the image size
//! itself, so a bug in a device's parsing cannot turn into a read or write outside the image.
//!
//! Here: the [`Image`] trait and what goes through it ([`IoOp`], [`Aio`], [`OpenMode`]);
//! `buffers` is the scatter list every I/O path shares, `file` the raw image file, `direct` its
//! O_DIRECT alignment and bounce buffers, `uring` its io_uring batches.

use std::io;

pub mod buffers;
mod direct;
mod file;
mod uring;

use crate::scsi::tasks::TaskId;
pub use buffers::{Buf, Bufs};
pub use file::FileImage;

/// How the image file is read and written (`[image] aio`, `--aio`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Aio {
    /// A batch of requests (a virtqueue round) is one io_uring submission.
    IoUring,
    /// One `preadv`/`pwritev2` per request, in order.
    #[default]
    Sync,
}

/// How [`FileImage::open_with`] opens the file.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenMode {
    pub read_only: bool,
    /// O_DIRECT: bypass this host's page cache (for images other hosts also write).
    pub direct: bool,
    pub aio: Aio,
    /// Cluster mode: daemons on other hosts (or on this one) serve the image too, under one
    /// shared reservation state. The lock is then shared: cluster daemons coexist, and a
    /// single-host daemon, which locks exclusively, is kept out (and keeps them out).
    pub shared: bool,
}

/// One read or write of a batch (see [`Image::run_batch`]).
pub struct IoOp<'a> {
    pub write: bool,
    pub offset: u64,
    pub bufs: Bufs<'a>,
    /// Durable on completion (FUA, or no write cache).
    pub fua: bool,
    /// Set by [`Image::run_batch`].
    pub result: io::Result<()>,
    /// The command's task in the LU's task set, when its transport keeps one there: the op
    /// does not start once a TMF aborted it (`Lun::run_admitted`).
    pub task: Option<TaskId>,
}

impl<'a> IoOp<'a> {
    pub fn new(write: bool, offset: u64, bufs: Bufs<'a>, fua: bool) -> Self {
        IoOp {
            write,
            offset,
            bufs,
            fua,
            result: Ok(()),
            task: None,
        }
    }
}

/// What the device paths need from storage.
pub trait Image: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    fn read_only(&self) -> bool;
    /// Fills `bufs`, in order, from `offset`.
    fn read_at(&self, bufs: &[Buf], offset: u64) -> io::Result<()>;
    /// Writes `bufs`, in order, at `offset`; with `fua` the data is durable on return.
    fn write_at(&self, bufs: &[Buf], offset: u64, fua: bool) -> io::Result<()>;
    /// Makes every completed write durable.
    fn flush(&self) -> io::Result<()>;
    /// Deallocates a range; it reads back as zeroes afterwards (we advertise LBPRZ).
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Zeroes a range, deallocating it when `unmap` allows.
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()>;
    /// Runs every read and write of `ops`, setting each one's `result`. They may run
    /// concurrently and complete in any order, like requests in flight on a disk; all are done
    /// on return. By default one after another.
    fn run_batch(&self, ops: &mut [IoOp]) {
        for op in ops {
            op.result = if op.write {
                self.write_at(&op.bufs, op.offset, op.fua)
            } else {
                self.read_at(&op.bufs, op.offset)
            };
        }
    }
}

/// Checks `offset..offset+len` against `size`, overflow included.
pub fn range_ok(offset: u64, len: u64, size: u64) -> bool {
    offset.checked_add(len).is_some_and(|end| end <= size)
}

#[cfg(test)]
mod tests;

//! [`FileImage`]: the image as a raw file, read and written with `preadv`/`pwritev2` or a batch
//! of io_uring submissions, straight from and into the request's buffers.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use smallvec::SmallVec;

use super::buffers::total;
use super::direct::{Alignment, Bounce};
use super::{range_ok, uring, Aio, Buf, Bufs, Image, IoOp, OpenMode};
use crate::testhooks::failpoint;

fn out_of_range() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "range outside the image")
}

/// A raw image file.
pub struct FileImage {
    file: File,
    size: u64,
    read_only: bool,
    aio: Aio,
    /// What O_DIRECT requires of buffers; `None` without it.
    direct: Option<Alignment>,
}

impl FileImage {
    /// Opens `path`, creating it with `create_size` bytes when it is missing and a size is given.
    ///
    /// The image is locked (`flock`) so that two daemons can never arbitrate the same disk with
    /// two separate reservation states.
    pub fn open(path: &Path, create_size: Option<u64>, read_only: bool) -> io::Result<Self> {
        let mode = OpenMode {
            read_only,
            ..OpenMode::default()
        };
        Self::open_with(path, create_size, mode)
    }

    /// Like [`FileImage::open`], with O_DIRECT and the I/O engine chosen by `mode`.
    pub fn open_with(path: &Path, create_size: Option<u64>, mode: OpenMode) -> io::Result<Self> {
        let read_only = mode.read_only;
        let exists = path.exists();
        if !exists {
            let Some(size) = create_size else {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "does not exist (pass --size to create it)",
                ));
            };
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)?;
            f.set_len(size)?;
            f.sync_all()?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(if mode.direct { libc::O_DIRECT } else { 0 })
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EINVAL) if mode.direct => io::Error::new(
                    e.kind(),
                    "the file system does not support O_DIRECT (--direct)",
                ),
                _ => e,
            })?;
        let lock = if mode.shared {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), lock | libc::LOCK_NB) } != 0 {
            let err = io::Error::last_os_error();
            return Err(io::Error::new(
                err.kind(),
                format!(
                    "locked by another process ({err}); is another sharedisk serving it{}?",
                    if mode.shared {
                        " without [cluster]"
                    } else {
                        ""
                    }
                ),
            ));
        }
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        let size = meta.len();
        if exists {
            if let Some(want) = create_size {
                if want != size {
                    log::warn!(
                        "image {} exists with {} bytes; ignoring --size {}",
                        path.display(),
                        size,
                        want
                    );
                }
            }
        }
        if size % crate::lun::SECTOR != 0 {
            log::warn!(
                "image size {size} is not a multiple of 512; the last partial sector is not served"
            );
        }
        let direct = if mode.direct {
            Some(Alignment::probe(&file, size)?)
        } else {
            None
        };
        Ok(FileImage {
            file,
            size: size & !511,
            read_only,
            aio: mode.aio,
            direct,
        })
    }

    /// Reads or writes one op synchronously, through an aligned bounce buffer when O_DIRECT
    /// cannot take the op's own buffers.
    fn sync_io(&self, bufs: &[Buf], offset: u64, write: bool, fua: bool) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        let flags = write_flags(fua);
        match self.direct {
            Some(a) if !a.takes(bufs) => Bounce::new(total(bufs))?.io(
                bufs,
                |b| vectored_io(fd, b, offset, write, flags),
                write,
            ),
            _ => vectored_io(fd, bufs, offset, write, flags),
        }
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        // SAFETY: fallocate on a descriptor we own with a validated range; no memory is involved.
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                mode,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Writes zeroes by hand, for file systems without fallocate zeroing. The zeroes come from
    /// a page-aligned buffer, as any bounced write's data does, so that O_DIRECT takes them.
    fn write_zeroes_slow(&self, mut offset: u64, len: u64) -> io::Result<()> {
        const CHUNK: u64 = 1 << 20;
        let zeroes = Bounce::new(CHUNK.min(len) as usize)?;
        let fd = self.file.as_raw_fd();
        let end = offset + len;
        while offset < end {
            let n = CHUNK.min(end - offset) as usize;
            zeroes.with_zeroes(n, |b| vectored_io(fd, b, offset, true, 0))?;
            offset += n as u64;
        }
        Ok(())
    }

    fn check_writable(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        if !range_ok(offset, len, self.size) {
            return Err(out_of_range());
        }
        Ok(())
    }
}

/// Runs preadv/pwritev2 over `bufs`, continuing after short transfers.
fn vectored_io(
    fd: libc::c_int,
    bufs: &[Buf],
    mut offset: u64,
    write: bool,
    flags: libc::c_int,
) -> io::Result<()> {
    let mut iov: SmallVec<[libc::iovec; 4]> = iovecs(bufs);
    let mut start = 0;
    while start < iov.len() {
        let cnt = (iov.len() - start).min(libc::UIO_MAXIOV as usize);
        // SAFETY: every iovec points into a VolatileSlice of guest or host memory that stays
        // mapped for the duration of this call (the slices borrow the memory); the kernel
        // reads or writes at most iov_len bytes of each.
        let r = unsafe {
            if write {
                libc::pwritev2(
                    fd,
                    iov[start..].as_ptr(),
                    cnt as libc::c_int,
                    offset as libc::off_t,
                    flags,
                )
            } else {
                libc::preadv(
                    fd,
                    iov[start..].as_ptr(),
                    cnt as libc::c_int,
                    offset as libc::off_t,
                )
            }
        };
        if r < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if r == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "short transfer at end of file",
            ));
        }
        let mut done = r as usize;
        offset += done as u64;
        while start < iov.len() && done >= iov[start].iov_len {
            done -= iov[start].iov_len;
            start += 1;
        }
        if done > 0 {
            let v = &mut iov[start];
            // SAFETY: `done < iov_len`, so the advanced pointer stays inside the same buffer.
            v.iov_base = unsafe { (v.iov_base as *mut u8).add(done) } as *mut libc::c_void;
            v.iov_len -= done;
        }
    }
    Ok(())
}

/// The iovecs of `bufs`, empty ones left out.
pub(super) fn iovecs(bufs: &[Buf]) -> SmallVec<[libc::iovec; 4]> {
    bufs.iter()
        .filter(|b| !b.is_empty())
        .map(|b| libc::iovec {
            iov_base: b.ptr_guard_mut().as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect()
}

/// `bufs` without their first `n` bytes.
fn skip<'a>(bufs: &[Buf<'a>], mut n: usize) -> io::Result<Bufs<'a>> {
    let mut rest = Bufs::new();
    for b in bufs {
        if n >= b.len() {
            n -= b.len();
        } else {
            rest.push(b.offset(n).map_err(io::Error::other)?);
            n = 0;
        }
    }
    Ok(rest)
}

impl Image for FileImage {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, bufs: &[Buf], offset: u64) -> io::Result<()> {
        if !range_ok(offset, total(bufs) as u64, self.size) {
            return Err(out_of_range());
        }
        self.sync_io(bufs, offset, false, false)
    }

    fn write_at(&self, bufs: &[Buf], offset: u64, fua: bool) -> io::Result<()> {
        self.check_writable(offset, total(bufs) as u64)?;
        self.sync_io(bufs, offset, true, fua)
    }

    fn run_batch(&self, ops: &mut [IoOp]) {
        // Ops the ring cannot take as they are run synchronously first: those out of range
        // (refused), and under O_DIRECT those whose buffers need a bounce.
        let mut queued: SmallVec<[usize; 64]> = SmallVec::new();
        for (i, op) in ops.iter_mut().enumerate() {
            let len = total(&op.bufs) as u64;
            let checked = if op.write {
                self.check_writable(op.offset, len)
            } else if range_ok(op.offset, len, self.size) {
                Ok(())
            } else {
                Err(out_of_range())
            };
            let ring_takes = self.aio == Aio::IoUring
                && len > 0
                && self.direct.is_none_or(|a| a.takes(&op.bufs));
            op.result = match checked {
                Ok(()) if ring_takes => {
                    queued.push(i);
                    continue;
                }
                Ok(()) => self.sync_io(&op.bufs, op.offset, op.write, op.fua),
                Err(e) => Err(e),
            };
        }
        if queued.is_empty() {
            return;
        }
        let mut done: SmallVec<[uring::Transferred; 64]> = ops.iter().map(|_| Ok(0)).collect();
        let fd = self.file.as_raw_fd();
        let ran = uring::run(fd, ops, &queued, |op| write_flags(op.fua), &mut done).is_ok();
        for &i in &queued {
            let op = &mut ops[i];
            let transferred = std::mem::replace(&mut done[i], Ok(0));
            op.result = match transferred {
                // io_uring is unavailable on this thread: do it here.
                _ if !ran => self.sync_io(&op.bufs, op.offset, op.write, op.fua),
                Ok(n) if n == total(&op.bufs) => Ok(()),
                Ok(0) => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "short transfer at end of file",
                )),
                // A short transfer: finish the rest here.
                Ok(n) => skip(&op.bufs, n)
                    .and_then(|rest| self.sync_io(&rest, op.offset + n as u64, op.write, op.fua)),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    self.sync_io(&op.bufs, op.offset, op.write, op.fua)
                }
                Err(e) => Err(e),
            };
        }
    }

    fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len, true)
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        self.check_writable(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        for mode in zeroing_modes(unmap) {
            let unsupported = failpoint::error("fallocate-unsupported")
                .map_err(|_| io::Error::from_raw_os_error(libc::EOPNOTSUPP));
            match unsupported.and_then(|()| self.fallocate(*mode, offset, len)) {
                Ok(()) => return Ok(()),
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL)
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e),
            }
        }
        self.write_zeroes_slow(offset, len)
    }
}

/// The pwritev2 flags of a write: RWF_DSYNC when it must be durable on return (FUA, or no
/// write cache).
pub(super) fn write_flags(durable: bool) -> libc::c_int {
    if durable {
        libc::RWF_DSYNC
    } else {
        0
    }
}

/// The fallocate modes to try for zeroing, cheapest exact one first; plain writes come last.
/// Only `unmap` may deallocate: without it the range stays allocated (FALLOC_FL_ZERO_RANGE keeps
/// the blocks, as SBC-3 WRITE SAME with UNMAP=0 and virtio-blk WRITE_ZEROES without the UNMAP
/// flag require), so a hole is never punched.
pub(super) fn zeroing_modes(unmap: bool) -> &'static [libc::c_int] {
    const PUNCH: libc::c_int = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    const ZERO: libc::c_int = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
    if unmap {
        &[PUNCH, ZERO]
    } else {
        &[ZERO]
    }
}

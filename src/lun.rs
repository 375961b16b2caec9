//! The logical unit: the one disk every guest and both device types share.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use smallvec::SmallVec;

use crate::image::{Image, IoOp};
use crate::pr::fencing::{Refusal, Reservations};
use crate::pr::Access;
use crate::scsi::sense;
use crate::scsi::tasks::{TaskSet, TaskState};

pub mod ranges;
use ranges::WriteRanges;

pub use crate::pr::fencing::{ChunkError, ADMISSION_CHUNK};

/// Length of the virtio-blk serial (VIRTIO_BLK_ID_BYTES), also used as the SCSI unit serial.
pub const SERIAL_LEN: usize = 20;

/// The sector, and the SCSI logical block: 512 bytes on both devices.
pub const SECTOR: u64 = 512;

pub struct Lun {
    pub image: Box<dyn Image>,
    pub reservations: Reservations,
    /// The disk's identity, identical for every guest and stable across restarts.
    pub serial: String,
    /// The volatile write cache (SCSI WCE, virtio-blk `writeback`): one setting for the LU,
    /// whichever device and guest changes it, kept across reconnects.
    write_cache: AtomicBool,
    /// Every transport's commands between their arrival and their response, for task
    /// management (`scsi/tasks.rs`).
    pub tasks: TaskSet,
    /// Orders every write against COMPARE AND WRITE (`ranges.rs`).
    pub write_ranges: WriteRanges,
}

impl Lun {
    pub fn new(image: Box<dyn Image>, reservations: Reservations, canonical_path: &Path) -> Self {
        let id = fnv1a(canonical_path.as_os_str().as_encoded_bytes());
        Lun {
            image,
            reservations,
            serial: serial_for(id),
            write_cache: AtomicBool::new(true),
            tasks: TaskSet::default(),
            write_ranges: WriteRanges::default(),
        }
    }

    /// Cluster mode: the disk's identity (serial, NAA) comes from its configured id, the same on
    /// every host, instead of this host's path to it.
    pub fn identified_by(self, disk_id: &str) -> Self {
        Lun {
            serial: serial_for(fnv1a(disk_id.as_bytes())),
            ..self
        }
    }

    /// Whether completed writes may sit in a volatile cache (WCE=1).
    pub fn write_cache(&self) -> bool {
        self.write_cache.load(Ordering::Relaxed)
    }

    /// Changes the LU's write cache for every guest (MODE SELECT, or a virtio-blk driver writing
    /// `writeback`), if `initiator` may write: checked and changed under the arbiter's exclusive
    /// lock, so a guest preempted meanwhile cannot change it. Turning it off then makes every
    /// earlier write durable; a change queues 2A/01 MODE PARAMETERS CHANGED for every other
    /// initiator (SPC-4 §7.5.2). Returns whether the setting changed.
    pub fn set_write_cache(&self, initiator: &str, on: bool) -> Result<io::Result<bool>, Refusal> {
        let changed = self
            .reservations
            .with_mut_if_allowed(initiator, Access::Write, |a| {
                if on == self.write_cache.swap(on, Ordering::Relaxed) {
                    return false;
                }
                a.ua_all_except(initiator, sense::MODE_PARAMETERS_CHANGED);
                true
            })?;
        if !changed {
            return Ok(Ok(false));
        }
        log::info!(
            "{initiator}: write cache {} for the LU",
            if on {
                "on (write-back)"
            } else {
                "off (write-through)"
            }
        );
        if !on {
            if let Err(e) = self.image.flush() {
                return Ok(Err(e));
            }
        }
        Ok(Ok(true))
    }

    /// Makes data written by a command durable on completion when the write cache is off: the
    /// zeroing and deallocating commands, which have no per-write DSYNC. Runs outside any
    /// admission (a flush changes no data, so fencing does not need it).
    pub fn sync_if_write_through(&self) -> io::Result<()> {
        if self.write_cache() {
            Ok(())
        } else {
            self.image.flush()
        }
    }

    /// Runs a batch of reads and writes of `initiator` (one virtqueue round) in admission pieces
    /// of at most [`ADMISSION_CHUNK`] bytes, each under its own hold of the reservation lock
    /// (see [`Reservations::run_admitted`]): a piece's admitted ops run on the image together
    /// (one `run_batch`), a refused op never reaches it.
    pub fn run_admitted(
        &self,
        initiator: &str,
        ops: &mut [IoOp<'_>],
    ) -> SmallVec<[Result<(), Refusal>; 64]> {
        self.reservations
            .run_admitted(initiator, ops, |admitted| self.run_tasks(admitted))
    }

    /// Runs admitted ops on the image, but not those whose task a TMF aborted before their I/O
    /// started (`IoOp::task`); their result stays untouched, the transport learns of the abort
    /// when it retires the task.
    fn run_tasks(&self, ops: &mut [IoOp<'_>]) {
        // The batch's writes hold their ranges against COMPARE AND WRITE while they run.
        let writes = ops
            .iter()
            .filter(|op| op.write)
            .map(|op| (op.offset, crate::image::buffers::total(&op.bufs) as u64));
        let _ranges = (ops.iter().any(|op| op.write)).then(|| self.write_ranges.write(writes));
        if ops.iter().all(|op| op.task.is_none()) {
            return self.image.run_batch(ops);
        }
        let go: SmallVec<[bool; 64]> = ops
            .iter()
            .map(|op| op.task.is_none_or(|t| self.tasks.begin_io(t)))
            .collect();
        let mut front = 0;
        for (i, &g) in go.iter().enumerate() {
            if g {
                ops.swap(front, i);
                front += 1;
            }
        }
        if front > 0 {
            self.image.run_batch(&mut ops[..front]);
        }
        for op in &ops[..front] {
            if let Some(t) = op.task {
                self.tasks.settle(t, TaskState::Done);
            }
        }
        // The same swaps in reverse order restore the driver's order.
        for (i, &g) in go.iter().enumerate().rev() {
            if g {
                front -= 1;
                ops.swap(front, i);
            }
        }
    }

    /// Runs a long command on bytes `offset..offset + len` in pieces of at most
    /// [`ADMISSION_CHUNK`], each under its own admission (see
    /// [`Reservations::admitted_chunks`]); a write's piece also holds its range against
    /// COMPARE AND WRITE (`ranges.rs`).
    pub fn admitted_chunks(
        &self,
        initiator: &str,
        access: Access,
        offset: u64,
        len: u64,
        mut step: impl FnMut(u64, u64) -> io::Result<()>,
    ) -> Result<(), ChunkError> {
        self.reservations
            .admitted_chunks(initiator, access, len, |done, n| {
                let _range = (access == Access::Write).then(|| {
                    self.write_ranges
                        .write(std::iter::once((offset.saturating_add(done), n)))
                });
                step(done, n)
            })
    }
}

/// `sharedisk-` and ten hex digits: exactly 20 bytes, printable, stable for a given image path.
pub fn serial_for(id: u64) -> String {
    format!("sharedisk-{:010x}", id & 0xff_ffff_ffff)
}

/// A stable locally assigned NAA (type 3h, SPC-4 §7.8.6.6.5) from the serial: FNV-1a, so every
/// daemon serving the same image reports the same identity, across builds.
pub fn naa_from_serial(serial: &str) -> u64 {
    (3u64 << 60) | (fnv1a(serial.as_bytes()) >> 4)
}

/// FNV-1a: a stable hash that does not change between Rust releases, unlike `DefaultHasher`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests;

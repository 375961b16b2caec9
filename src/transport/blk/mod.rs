//! The vhost-user-blk device: a thin translator from virtio-blk requests (virtio 1.2 §5.2) to the
//! arbiter and the image.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::bitmap::BitmapMmapRegion;
use vhost_user_backend::VhostUserBackend;
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::DescriptorChain;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use std::time::{Duration, Instant};

use crate::image::buffers::{self, Buf, Bufs};
use crate::image::{range_ok, IoOp};
use crate::lun::{ChunkError, Lun, ADMISSION_CHUNK, SECTOR, SERIAL_LEN};
use crate::ops::stats::{self, DeviceStats, Op};
use crate::pr::fencing::Refusal;
use crate::pr::Access;
use crate::transport::virtqueue::{
    self, feature, AtomicMem, Chain, DirtyLog, ExitEvents, Handler, Limits, Mem, QueueThreads,
    Quiesce, QuiesceLatch, Reply, Slot, Ticket, UsedLens, Vring,
};
use crate::transport::Options;

/// Queues we advertise; the frontend enables however many it wants, one worker thread each.
pub const MAX_QUEUES: usize = 16;
/// Largest ring the frontend may set (QEMU uses 128 by default, libblkio 256).
pub const MAX_QUEUE_SIZE: usize = 1024;

/// Data segments per request (virtio_blk_config.seg_max); indirect descriptors make more
/// useless. A chain may hold two more descriptors: the header and the status.
const SEG_MAX: u32 = 254;
/// Largest single segment, in bytes (virtio_blk_config.size_max). With SEG_MAX this bounds a
/// request at 254 MiB, and any chain well below the 4 GiB a used length can express; longer
/// requests are done in [`crate::lun::ADMISSION_CHUNK`] pieces.
const SIZE_MAX: u32 = 1 << 20;
/// DISCARD/WRITE_ZEROES limits: 1 GiB per segment, 32 segments per request (done in pieces).
const MAX_DWZ_SECTORS: u32 = 1 << 21;
const MAX_DWZ_SEG: u32 = 32;
const DWZ_SEG_LEN: usize = 16;
const HEADER_LEN: usize = 16;
/// What one chain may hold: `SEG_MAX` data segments plus the header and the status, each at
/// most `SIZE_MAX` bytes; counted while the chain is parsed (`Chain::parse_within`).
const BLK_LIMITS: Limits = Limits {
    descriptors: SEG_MAX + 2,
    descriptor_len: SIZE_MAX,
};

/// Byte offset of `writeback` in virtio_blk_config; the only field a driver may write.
const CONFIG_WCE_OFFSET: usize = 32;
const CONFIG_LEN: usize = 60;

pub struct BlkDevice {
    lun: Arc<Lun>,
    initiator: Arc<str>,
    mem: AtomicMem,
    event_idx: AtomicBool,
    /// What this connection's driver acknowledged (SET_FEATURES).
    acked_features: AtomicU64,
    /// Whether this connection's data-in buffers go into a migration's dirty log.
    log: DirtyLog,
    /// This connection's place among the guest's connections (a live migration has two).
    ticket: Ticket,
    /// Whether the driver has acknowledged its features yet (QEMU reads the config space once,
    /// before the guest's driver negotiates, and shows the guest that copy).
    negotiated: AtomicBool,
    exit: ExitEvents,
    /// The rings' worker threads (the guest's `queues`).
    threads: QueueThreads,
    /// Closed before the daemon ends this connection.
    latch: QuiesceLatch,
    /// This guest alone sees a read-only disk (`guest.read_only` in the configuration).
    guest_read_only: bool,
    stats: Arc<DeviceStats>,
    /// How long a queue thread watches its ring after a round (`--poll-us`).
    poll: Duration,
}

/// The backend handed to vhost-user-backend: cheap to clone, `&self` everywhere so that queue
/// threads run in parallel.
#[derive(Clone)]
pub struct BlkBackend(Arc<BlkDevice>);

impl BlkBackend {
    pub fn new(lun: Arc<Lun>, initiator: Arc<str>, mem: AtomicMem) -> io::Result<Self> {
        Self::with_options(lun, initiator, mem, Options::default())
    }

    /// A device for a guest as the daemon serves it (see [`Options`]).
    pub fn with_options(
        lun: Arc<Lun>,
        initiator: Arc<str>,
        mem: AtomicMem,
        options: Options,
    ) -> io::Result<Self> {
        let Options {
            read_only,
            stats,
            poll,
            ticket,
            queue_threads,
        } = options;
        let threads = QueueThreads::new(0, MAX_QUEUES as u16, queue_threads);
        let exit = ExitEvents::new(threads.threads())?;
        Ok(BlkBackend(Arc::new(BlkDevice {
            lun,
            initiator,
            mem,
            event_idx: AtomicBool::new(false),
            log: DirtyLog::default(),
            ticket,
            acked_features: AtomicU64::new(0),
            negotiated: AtomicBool::new(false),
            exit,
            threads,
            latch: QuiesceLatch::default(),
            guest_read_only: read_only,
            stats,
            poll,
        })))
    }
}

impl BlkDevice {
    /// Read-only for this guest: the whole image, or this guest alone.
    fn read_only(&self) -> bool {
        self.guest_read_only || self.lun.image.read_only()
    }

    /// Whether this connection's driver negotiated VIRTIO_BLK_F_FLUSH: without it the driver
    /// cannot make a write stable, so each of its writes is stable on completion (virtio 1.2
    /// §5.2.6.2) and it sees `writeback` 0 (§5.2.5.2), whatever the LU's cache does for the
    /// others. Before negotiation: `None`.
    fn flush_negotiated(&self) -> Option<bool> {
        self.negotiated
            .load(Ordering::Acquire)
            .then(|| self.acked_features.load(Ordering::Acquire) & feature(VIRTIO_BLK_F_FLUSH) != 0)
    }

    /// Whether this connection's writes must be stable on completion: the LU is write-through,
    /// or its driver cannot flush (see [`BlkDevice::flush_negotiated`]).
    fn write_through(&self) -> bool {
        !self.lun.write_cache() || self.flush_negotiated() != Some(true)
    }

    /// The `writeback` this connection's driver sees: the LU's write cache once FLUSH is
    /// negotiated, 0 without it; before negotiation the LU's, which is what QEMU keeps and
    /// shows a guest that then negotiates FLUSH (a 0 there would keep it from ever flushing).
    fn writeback(&self) -> bool {
        self.lun.write_cache() && self.flush_negotiated() != Some(false)
    }

    /// A driver's write of `writeback` (virtio 1.2 §5.2.5, VIRTIO_BLK_F_CONFIG_WCE): the LU's
    /// write cache for every guest, like MODE SELECT, and so refused to a guest that may not
    /// write (fenced by the reservation, or read-only) and to a driver that cannot flush. virtio
    /// has no error path for a config write: a refused one is ignored and logged.
    fn set_writeback(&self, wce: bool) -> io::Result<()> {
        let who = &self.initiator;
        let acked = self.acked_features.load(Ordering::Acquire);
        if self.negotiated.load(Ordering::Acquire) && acked & feature(VIRTIO_BLK_F_CONFIG_WCE) == 0
        {
            log::warn!(
                "{who}: blk: writeback {} ignored: the driver did not negotiate \
                 VIRTIO_BLK_F_CONFIG_WCE (virtio 1.2 §5.2.5.1), the LU's cache is unchanged",
                wce as u8
            );
            return Ok(());
        }
        if self.flush_negotiated() == Some(false) {
            log::warn!(
                "{who}: blk: writeback {} ignored: the driver did not negotiate \
                 VIRTIO_BLK_F_FLUSH, so its writes stay write-through and the LU's cache is \
                 unchanged",
                wce as u8
            );
            return Ok(());
        }
        if self.read_only() {
            log::warn!(
                "{who}: blk: writeback {} ignored: the guest is read-only, it may not change \
                 the LU's write cache",
                wce as u8
            );
            return Ok(());
        }
        // Allowed as a write, as MODE SELECT is, checked and changed in one hold of the arbiter.
        match self.lun.set_write_cache(who, wce) {
            Ok(r) => r.map(drop),
            Err(why) => {
                log::warn!(
                    "{who}: blk: writeback {} ignored: {}; the LU's write cache stays {}",
                    wce as u8,
                    match why {
                        Refusal::Conflict => "the reservation does not let this guest write",
                        Refusal::Unavailable => "the shared reservation state is out of reach",
                    },
                    if self.lun.write_cache() { "on" } else { "off" }
                );
                Ok(())
            }
        }
    }

    fn config(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        let sectors = self.lun.image.size() / SECTOR;
        c[0..8].copy_from_slice(&sectors.to_le_bytes());
        c[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        // 16..20 geometry: unused (no VIRTIO_BLK_F_GEOMETRY).
        c[20..24].copy_from_slice(&(SECTOR as u32).to_le_bytes());
        // 24 physical_block_exp, 25 alignment_offset, 26..28 min_io_size, 28..32 opt_io_size.
        c[26..28].copy_from_slice(&1u16.to_le_bytes());
        // writeback: with 0 every write is durable before completion.
        c[CONFIG_WCE_OFFSET] = self.writeback() as u8;
        c[34..36].copy_from_slice(&(MAX_QUEUES as u16).to_le_bytes());
        c[36..40].copy_from_slice(&MAX_DWZ_SECTORS.to_le_bytes());
        c[40..44].copy_from_slice(&MAX_DWZ_SEG.to_le_bytes());
        c[44..48].copy_from_slice(&1u32.to_le_bytes()); // discard_sector_alignment
        c[48..52].copy_from_slice(&MAX_DWZ_SECTORS.to_le_bytes());
        c[52..56].copy_from_slice(&MAX_DWZ_SEG.to_le_bytes());
        c[56] = 1; // write_zeroes_may_unmap
        c
    }

    /// Handles one request: a read or write joins `batch` (see [`BlkQueue`]); anything else
    /// completes here.
    fn process<'m>(
        &self,
        mem: &'m Mem,
        chain: DescriptorChain<&'m Mem>,
        batch: &mut BlkBatch<'m>,
    ) -> Reply {
        let chain = match Chain::parse_within(mem, chain, BLK_LIMITS) {
            Ok(c) => c,
            Err(e) => {
                log::warn!("{}: blk: dropping request: {e}", self.initiator);
                return Reply::Done(0);
            }
        };
        // The status byte is the last device-writable byte (virtio 1.2 §5.2.6).
        let in_len = buffers::total(&chain.writable);
        let Some((data_in, status)) = in_len
            .checked_sub(1)
            .and_then(|n| buffers::split_at(&chain.writable, n))
        else {
            log::warn!("{}: blk: request without a status byte", self.initiator);
            return Reply::Done(0);
        };
        let within_limits = chain.within_limits;
        if within_limits {
            if let Some(io) = self.batchable(&chain.readable, &data_in) {
                // The status byte is in the one non-empty slice of the 1-byte tail.
                if let Some(&status) = status.iter().find(|b| !b.is_empty()) {
                    batch.push(io, status);
                    return Reply::Deferred;
                }
            }
        }
        let start = Instant::now();
        let (end, written) = if within_limits {
            self.execute(&chain.readable, &data_in)
        } else {
            log::warn!(
                "{}: blk: request beyond seg_max {SEG_MAX} / size_max {SIZE_MAX}",
                self.initiator
            );
            (Status::IOERR, 0)
        };
        self.count(&chain.readable, end, written, start.elapsed());
        buffers::write_bytes(&status, &[end.code]);
        // `written` never exceeds data_in, which the limits keep far below 4 GiB.
        Reply::Done((written + 1) as u32)
    }

    /// The image I/O of a read or write small enough for one admission, if the request is one.
    fn batchable<'m>(&self, readable: &[Buf<'m>], data_in: &[Buf<'m>]) -> Option<IoOp<'m>> {
        let mut header = [0u8; HEADER_LEN];
        if buffers::read_bytes(readable, &mut header) < HEADER_LEN {
            return None;
        }
        let (_, data_out) = buffers::split_at(readable, HEADER_LEN)?;
        let in_len = buffers::total(data_in);
        let size = self.lun.image.size();
        let (write, offset, bufs) =
            match BlkRequest::parse(&header, &data_out, in_len, size, self.read_only()) {
                Ok(BlkRequest::Read { offset }) => {
                    (false, offset, data_in.iter().copied().collect())
                }
                Ok(BlkRequest::Write { offset }) => (true, offset, data_out),
                _ => return None,
            };
        (buffers::total(&bufs) as u64 <= ADMISSION_CHUNK)
            .then(|| IoOp::new(write, offset, bufs, write && self.write_through()))
    }

    /// Completes a round's reads and writes: admitted in pieces of at most 4 MiB, each under one
    /// hold of the reservation lock (`pr/fencing.rs`) that stays held until the image has done
    /// the piece, so a PR OUT waits for one piece and no refused request touches the image.
    fn complete(&self, batch: &mut BlkBatch, lens: &mut UsedLens) {
        if batch.ops.is_empty() {
            return;
        }
        let allowed = self.lun.run_admitted(&self.initiator, &mut batch.ops);
        let took = batch.start.take().map_or(Duration::ZERO, |t| t.elapsed());
        let ops = batch.ops.drain(..).zip(allowed);
        for (done, (op, allowed)) in batch.done.drain(..).zip(ops) {
            let what = if done.write { "write" } else { "read" };
            let end = match allowed.map(|()| op.result) {
                Err(why) => self.refused(why, what, None),
                Ok(Err(e)) => {
                    log::warn!("{}: blk {what}: {e}", self.initiator);
                    Status::IOERR
                }
                Ok(Ok(())) => Status::OK,
            };
            let ok = end == Status::OK;
            let (kind, bytes) = if done.write {
                (Op::Write, done.len)
            } else {
                (Op::Read, if ok { done.len } else { 0 })
            };
            self.stats.record(kind, end.result(), bytes, took);
            done.status.copy_from(&[end.code]);
            let written = if ok && !done.write { done.len } else { 0 };
            // A batched request is at most ADMISSION_CHUNK long.
            lens.push(written as u32 + 1);
        }
    }

    /// Counts a completed request (see `stats.rs`).
    fn count(&self, readable: &[Buf], end: Status, written: usize, took: Duration) {
        let mut header = [0u8; 4];
        buffers::read_bytes(readable, &mut header);
        let (op, bytes) = match u32::from_le_bytes(header) {
            VIRTIO_BLK_T_IN => (Op::Read, written as u64),
            VIRTIO_BLK_T_OUT => (
                Op::Write,
                buffers::total(readable).saturating_sub(HEADER_LEN) as u64,
            ),
            VIRTIO_BLK_T_FLUSH => (Op::Flush, 0),
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => (Op::Discard, 0),
            _ => (Op::Other, 0),
        };
        self.stats.record(op, end.result(), bytes, took);
    }

    /// Returns the status and the number of data bytes written to `data_in`.
    fn execute(&self, readable: &[Buf], data_in: &[Buf]) -> (Status, usize) {
        let mut header = [0u8; HEADER_LEN];
        if buffers::read_bytes(readable, &mut header) < HEADER_LEN {
            return (Status::IOERR, 0);
        }
        let Some((_, data_out)) = buffers::split_at(readable, HEADER_LEN) else {
            return (Status::IOERR, 0);
        };
        let in_len = buffers::total(data_in);
        let image = &self.lun.image;
        let req =
            match BlkRequest::parse(&header, &data_out, in_len, image.size(), self.read_only()) {
                Ok(req) => req,
                Err(code) => return (Status::of(code), 0),
            };
        match req {
            BlkRequest::Read { offset } => {
                let r = self.chunked_io(Access::Read, offset, data_in, |bufs, done| {
                    image.read_at(bufs, offset + done)
                });
                let end = self.status(r, "read");
                (end, if end == Status::OK { in_len } else { 0 })
            }
            BlkRequest::Write { offset } => {
                let durable = self.write_through();
                let r = self.chunked_io(Access::Write, offset, &data_out, |bufs, done| {
                    image.write_at(bufs, offset + done, durable)
                });
                (self.status(r, "write"), 0)
            }
            BlkRequest::Flush => (self.flush(), 0),
            BlkRequest::GetId => {
                // Always allowed: identification is not gated (reference access table).
                let mut id = [0u8; SERIAL_LEN];
                let serial = self.lun.serial.as_bytes();
                let n = serial.len().min(SERIAL_LEN);
                id[..n].copy_from_slice(&serial[..n]);
                (Status::OK, buffers::write_bytes(data_in, &id))
            }
            BlkRequest::DiscardWriteZeroes { discard, segments } => {
                (self.discard_write_zeroes(discard, segments), 0)
            }
        }
    }

    /// FLUSH (virtio 1.2 §5.2.6.1), admitted like any access.
    fn flush(&self) -> Status {
        let access = Access::Flush;
        if let Err(why) = self.lun.reservations.admit(&self.initiator, access) {
            return self.refused(why, format_args!("{access:?}"), None);
        }
        // The flush itself changes no data, so it runs outside the admission: a PR OUT never
        // waits for a file system sync.
        match self.lun.image.flush() {
            Ok(()) => Status::OK,
            Err(e) => {
                log::warn!("{}: blk flush: {e}", self.initiator);
                Status::IOERR
            }
        }
    }

    /// DISCARD and WRITE_ZEROES (virtio 1.2 §5.2.6.2) of segments [`BlkRequest::parse`] has
    /// validated, all of them before any is applied, so a bad request changes nothing.
    fn discard_write_zeroes(&self, discard: bool, segments: Segments) -> Status {
        let what = if discard { "discard" } else { "write-zeroes" };
        for (offset, bytes, unmap) in segments {
            let image = &self.lun.image;
            let r = self.lun.admitted_chunks(
                &self.initiator,
                Access::Write,
                offset,
                bytes,
                |done, n| {
                    if discard {
                        image.discard(offset + done, n)
                    } else {
                        image.write_zeroes(offset + done, n, unmap)
                    }
                },
            );
            let end = self.status(r, what);
            if end != Status::OK {
                return end;
            }
        }
        let synced = if self.write_through() {
            self.lun.image.flush()
        } else {
            Ok(())
        };
        match synced {
            Ok(()) => Status::OK,
            Err(e) => {
                log::warn!("{}: blk {what}: sync: {e}", self.initiator);
                Status::IOERR
            }
        }
    }

    /// Runs `io` over `bufs` in pieces of at most [`crate::lun::ADMISSION_CHUNK`] bytes, each
    /// under its own admission; `io(piece, done)` handles the piece starting `done` bytes in.
    fn chunked_io(
        &self,
        access: Access,
        offset: u64,
        bufs: &[Buf],
        mut op: impl FnMut(&[Buf], u64) -> io::Result<()>,
    ) -> Result<(), ChunkError> {
        let mut rest: Bufs = bufs.iter().copied().collect();
        let len = buffers::total(bufs) as u64;
        self.lun
            .admitted_chunks(&self.initiator, access, offset, len, |done, n| {
                let (piece, tail) = buffers::split_at(&rest, n as usize)
                    .ok_or_else(|| io::Error::other("buffer shorter than the request"))?;
                rest = tail;
                op(&piece, done)
            })
    }

    /// The status of a chunked operation, logging what went wrong.
    fn status(&self, r: Result<(), ChunkError>, what: &str) -> Status {
        match r {
            Ok(()) => Status::OK,
            Err(ChunkError::Conflict { done }) => self.refused(Refusal::Conflict, what, Some(done)),
            Err(ChunkError::Unavailable { done }) => {
                self.refused(Refusal::Unavailable, what, Some(done))
            }
            Err(ChunkError::Io(e)) => {
                log::warn!("{}: blk {what}: {e}", self.initiator);
                Status::IOERR
            }
        }
    }

    /// The status of a request the reservation refused (`done` bytes in, for one done in
    /// pieces), logged.
    fn refused(&self, why: Refusal, what: impl fmt::Display, done: Option<u64>) -> Status {
        let after = After(done);
        match why {
            Refusal::Conflict => {
                log::debug!(
                    "{}: blk {what} refused{after}: reservation conflict",
                    self.initiator
                );
                Status::CONFLICT
            }
            Refusal::Unavailable => {
                log::debug!(
                    "{}: blk {what} failed{after}: the shared reservation state is out of reach",
                    self.initiator
                );
                Status::IOERR
            }
        }
    }
}

/// How a request ended: its status byte (virtio 1.2 §5.2.6), and whether the reservation refused
/// it. virtio-blk answers a refusal with IOERR like any failure; the counters tell them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Status {
    code: u8,
    conflict: bool,
}

impl Status {
    const OK: Status = Status::of(VIRTIO_BLK_S_OK as u8);
    const IOERR: Status = Status::of(VIRTIO_BLK_S_IOERR as u8);
    /// Refused by the reservation rules (RESERVATION CONFLICT on scsi).
    const CONFLICT: Status = Status {
        code: VIRTIO_BLK_S_IOERR as u8,
        conflict: true,
    };

    const fn of(code: u8) -> Self {
        Status {
            code,
            conflict: false,
        }
    }

    /// What the counters make of it (see `stats.rs`).
    fn result(self) -> stats::Result {
        if self == Status::OK {
            stats::Result::Ok
        } else if self.conflict {
            stats::Result::Conflict
        } else {
            stats::Result::Error
        }
    }
}

/// " after N bytes" in the log of a request refused part way through its pieces.
struct After(Option<u64>);

impl fmt::Display for After {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.0 {
            Some(done) => write!(f, " after {done} bytes"),
            None => Ok(()),
        }
    }
}

/// DISCARD / WRITE_ZEROES segments: (byte offset, byte length, UNMAP flag).
type Segments = smallvec::SmallVec<[(u64, u64, bool); 4]>;

/// A virtio-blk request (virtio 1.2 §5.2.6), decoded and checked against the disk before
/// anything runs: a request that parses only needs its admission and its I/O.
#[derive(Debug, PartialEq, Eq)]
enum BlkRequest {
    Read { offset: u64 },
    Write { offset: u64 },
    Flush,
    GetId,
    DiscardWriteZeroes { discard: bool, segments: Segments },
}

impl BlkRequest {
    /// Decodes the request whose `header` was followed by `data_out` and that has `in_len`
    /// device-writable data bytes, for an image of `size` bytes. `Err` is the status to return.
    fn parse(
        header: &[u8; HEADER_LEN],
        data_out: &[Buf],
        in_len: usize,
        size: u64,
        read_only: bool,
    ) -> Result<Self, u8> {
        const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
        const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

        let req_type = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let sector = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
        let out_len = buffers::total(data_out);
        match req_type {
            VIRTIO_BLK_T_IN => {
                let offset = data_range(sector, in_len, out_len, size).ok_or(IOERR)?;
                Ok(Self::Read { offset })
            }
            VIRTIO_BLK_T_OUT => {
                let offset = data_range(sector, out_len, in_len, size).ok_or(IOERR)?;
                if read_only {
                    return Err(IOERR);
                }
                Ok(Self::Write { offset })
            }
            VIRTIO_BLK_T_FLUSH => Ok(Self::Flush),
            VIRTIO_BLK_T_GET_ID => Ok(Self::GetId),
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                let discard = req_type == VIRTIO_BLK_T_DISCARD;
                let segments = dwz_segments(discard, data_out, in_len, size)?;
                if read_only {
                    return Err(IOERR);
                }
                Ok(Self::DiscardWriteZeroes { discard, segments })
            }
            _ => Err(UNSUPP),
        }
    }
}

/// Validates a data request: no buffers in the wrong direction, whole sectors, inside an image
/// of `size` bytes. Returns the byte offset.
fn data_range(sector: u64, len: usize, wrong_way: usize, size: u64) -> Option<u64> {
    if wrong_way != 0 || !(len as u64).is_multiple_of(SECTOR) {
        return None;
    }
    let offset = sector.checked_mul(SECTOR)?;
    range_ok(offset, len as u64, size).then_some(offset)
}

/// The segments of a DISCARD or WRITE_ZEROES (virtio 1.2 §5.2.6.2), every one validated.
fn dwz_segments(discard: bool, data_out: &[Buf], in_len: usize, size: u64) -> Result<Segments, u8> {
    const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
    const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

    let len = buffers::total(data_out);
    if in_len != 0 || len == 0 || !len.is_multiple_of(DWZ_SEG_LEN) {
        return Err(IOERR);
    }
    if len / DWZ_SEG_LEN > MAX_DWZ_SEG as usize {
        return Err(UNSUPP);
    }
    let mut raw = [0u8; DWZ_SEG_LEN * MAX_DWZ_SEG as usize];
    let raw = &mut raw[..len];
    buffers::read_bytes(data_out, raw);
    let mut segments = Segments::new();
    for seg in raw.chunks_exact(DWZ_SEG_LEN) {
        let sector = u64::from_le_bytes(seg[0..8].try_into().unwrap_or_default());
        let num = u32::from_le_bytes(seg[8..12].try_into().unwrap_or_default());
        let flags = u32::from_le_bytes(seg[12..16].try_into().unwrap_or_default());
        let unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
        // Unknown flags, and UNMAP on a DISCARD, are UNSUPP.
        if (discard && flags != 0) || flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 {
            return Err(UNSUPP);
        }
        if num > MAX_DWZ_SECTORS {
            return Err(IOERR);
        }
        let offset = sector.checked_mul(SECTOR).ok_or(IOERR)?;
        let bytes = u64::from(num) * SECTOR;
        if !range_ok(offset, bytes, size) {
            return Err(IOERR);
        }
        segments.push((offset, bytes, unmap));
    }
    Ok(segments)
}

impl Quiesce for BlkBackend {
    fn quiesce(&self) {
        self.0.latch.close();
    }
}

impl VhostUserBackend for BlkBackend {
    type Bitmap = BitmapMmapRegion;
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        MAX_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        let mut f = feature(VIRTIO_F_VERSION_1)
            | feature(VIRTIO_RING_F_EVENT_IDX)
            | feature(VIRTIO_RING_F_INDIRECT_DESC)
            | feature(VIRTIO_BLK_F_SEG_MAX)
            | feature(VIRTIO_BLK_F_SIZE_MAX)
            | feature(VIRTIO_BLK_F_BLK_SIZE)
            | feature(VIRTIO_BLK_F_FLUSH)
            | feature(VIRTIO_BLK_F_CONFIG_WCE)
            | feature(VIRTIO_BLK_F_TOPOLOGY)
            | feature(VIRTIO_BLK_F_MQ)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
            | DirtyLog::FEATURES;
        if self.0.read_only() {
            f |= feature(VIRTIO_BLK_F_RO);
        } else {
            f |= feature(VIRTIO_BLK_F_DISCARD) | feature(VIRTIO_BLK_F_WRITE_ZEROES);
        }
        f
    }

    fn acked_features(&self, features: u64) {
        self.0.acked_features.store(features, Ordering::Release);
        self.0.negotiated.store(true, Ordering::Release);
        self.0.log.set_features(features);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | DirtyLog::PROTOCOL_FEATURES
    }

    fn set_event_idx(&self, enabled: bool) {
        self.0.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        // Frontends may ask for a newer, larger config struct: pad with zeroes.
        let config = self.0.config();
        let mut out = vec![0u8; size.min(256) as usize];
        let start = (offset as usize).min(CONFIG_LEN);
        let end = (start + out.len()).min(CONFIG_LEN);
        out[..end - start].copy_from_slice(&config[start..end]);
        out
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // Only `writeback` is writable (virtio 1.2 §5.2.5, VIRTIO_BLK_F_CONFIG_WCE).
        let offset = offset as usize;
        if offset <= CONFIG_WCE_OFFSET && CONFIG_WCE_OFFSET < offset + buf.len() {
            let wce = buf[CONFIG_WCE_OFFSET - offset] != 0;
            self.0.set_writeback(wce)?;
        }
        Ok(())
    }

    fn update_memory(&self, _mem: AtomicMem) -> io::Result<()> {
        // We hold a clone of the same `GuestMemoryAtomic`, which the handler updates in place.
        Ok(())
    }

    /// The guest's `queues` threads, every ring served (`QueueThreads`).
    fn queues_per_thread(&self) -> Vec<u64> {
        self.0.threads.masks()
    }

    fn exit_event(&self, thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        self.0.exit.get(thread_index)
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        self.0.ticket.stopped(queue_index);
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        let Some(vring) = virtqueue::kicked_ring(evset, device_event, vrings) else {
            return Ok(());
        };
        let d = &self.0;
        let Some(ring) = d.threads.ring(thread_id, device_event) else {
            return Ok(());
        };
        let Some(_open) = d.latch.enter() else {
            return Ok(());
        };
        if !d.ticket.enter(ring, vring) {
            return Ok(());
        }
        // A thread that serves several rings does not spin on one of them.
        let poll = if d.threads.alone(thread_id) {
            d.poll
        } else {
            Duration::ZERO
        };
        virtqueue::drain_queue(
            vring,
            &d.mem,
            d.event_idx.load(Ordering::Relaxed),
            &d.log,
            &d.latch,
            poll,
            &mut BlkQueue(d, ring, vring),
        )
    }
}

/// A round's reads and writes, done together at its end.
#[derive(Default)]
struct BlkBatch<'m> {
    ops: Vec<IoOp<'m>>,
    /// For each op: where its status goes and its length.
    done: Vec<Pending<'m>>,
    /// When the first of them arrived: the counters time a batched request from its round's
    /// start to its completion (one clock read per round, not two per request).
    start: Option<Instant>,
}

struct Pending<'m> {
    status: Buf<'m>,
    write: bool,
    len: u64,
}

impl<'m> BlkBatch<'m> {
    fn push(&mut self, op: IoOp<'m>, status: Buf<'m>) {
        self.start.get_or_insert_with(Instant::now);
        let len = buffers::total(&op.bufs) as u64;
        let write = op.write;
        self.ops.push(op);
        self.done.push(Pending { status, write, len });
    }
}

/// One request queue of a blk device, as [`virtqueue::drain_queue`] serves it: the reads and writes
/// of a round become one batch of image I/O (one io_uring submission), everything else is done
/// as it comes.
struct BlkQueue<'d>(&'d BlkDevice, u16, &'d Vring);

impl Handler for BlkQueue<'_> {
    type Batch<'m> = BlkBatch<'m>;

    fn request<'m>(
        &mut self,
        mem: &'m Mem,
        chain: DescriptorChain<&'m Mem>,
        _slot: Slot,
        batch: &mut BlkBatch<'m>,
    ) -> Reply {
        self.0.process(mem, chain, batch)
    }

    fn complete(&mut self, batch: &mut BlkBatch<'_>, lens: &mut UsedLens) {
        self.0.complete(batch, lens)
    }

    fn next_round(&mut self) -> bool {
        self.0.ticket.keeps(self.1, self.2)
    }
}

#[cfg(test)]
mod tests;

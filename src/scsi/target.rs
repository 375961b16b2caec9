//! The SCSI logical unit: executes one decoded command against the arbiter and the image.
//!
//! Order of checks for every command, as LIO does it (SPC-4 §5.14, §5.9.1):
//! 1. a pending unit attention (except INQUIRY, REPORT LUNS, REQUEST SENSE);
//! 2. CDB decoding (05/20/00, 05/24/00);
//! 3. LBA range (05/21/00);
//! 4. the reservation access check (RESERVATION CONFLICT), whose admission is held until the
//!    command's I/O is complete (see [`crate::pr::fencing`]); commands longer than
//!    [`crate::lun::ADMISSION_CHUNK`] (WRITE SAME, UNMAP) are re-admitted for every piece, so a
//!    preempt stops them part way with RESERVATION CONFLICT;
//! 5. write protection (07/27/00), then execution.

use std::sync::Arc;

use crate::image::buffers::{self, Buf, Bufs};
use crate::image::IoOp;
use crate::lun::{ChunkError, Lun, SECTOR};
use crate::pr::arbiter::ServiceAction;
use crate::pr::fencing::{Admitted, Refusal};
use crate::pr::replay::Origin;
use crate::pr::Access;
use crate::pr::{wire, PrStatus};
use crate::scsi::cdb::{self, Command, Rw};
use crate::scsi::data::{DataIn, DataOut};
use crate::scsi::pages::{self, DiskInfo};
use crate::scsi::sense::{self, Sense};
use crate::scsi::tasks::Scope;

pub const GOOD: u8 = 0x00;
pub const CHECK_CONDITION: u8 = 0x02;
pub const RESERVATION_CONFLICT: u8 = 0x18;
pub const BUSY: u8 = 0x08;

/// MAXIMUM TRANSFER LENGTH in VPD 0xB0: 4 MiB, as a typical SAN LUN.
const MAX_TRANSFER_BLOCKS: u32 = 8192;
/// Largest parameter list we read (MODE SELECT, UNMAP, PR OUT); anything longer is an error
/// further down, so there is no reason to copy more of it.
const MAX_PARAM_LEN: usize = 8192;
/// UNMAP limits advertised in VPD 0xB0: 512 MiB per command (libiscsi's Inquiry.BlockLimits
/// holds a limit above 2^20 blocks, other than "none", for insane).
const MAX_UNMAP_LBAS: u32 = 1 << 20;
const MAX_UNMAP_DESCRIPTORS: u32 = 32;
/// MAXIMUM WRITE SAME LENGTH in VPD 0xB0: LIO's 0xFFFF blocks (just under 32 MiB), which the
/// 16-bit NUMBER OF LOGICAL BLOCKS of WRITE SAME(10) can reach; a longer WRITE SAME(16) gets
/// 05/24/00 (SBC-4 §5.50), as libiscsi's WriteSame16.Unmap expects of a LU reporting it.
const MAX_WRITE_SAME_BLOCKS: u32 = 0xffff;
/// MAXIMUM COMPARE AND WRITE LENGTH in VPD 0xB0 (outside cluster mode): 8 blocks, one 4 KiB
/// page, enough for a file system with 4 KiB blocks to update one of them atomically; LIO
/// offers 1. A longer COMPARE AND WRITE gets 05/24/00 (SBC-4 §5.3).
pub const MAX_COMPARE_AND_WRITE_BLOCKS: u8 = 8;
/// The pattern buffer a WRITE SAME writes from, repeated as often as a piece needs.
const WRITE_SAME_BUF: usize = 1 << 20;

/// What a command produced: SCSI status, sense, and how much of each buffer it used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub status: u8,
    pub sense: Option<Sense>,
    /// Bytes written to the data-in buffer.
    pub data_in: usize,
}

/// How often a PR IN settles again when a newer change arrived while it settled, before BUSY.
const PR_IN_TRIES: usize = 3;

impl Outcome {
    fn good(data_in: usize) -> Self {
        Outcome {
            status: GOOD,
            sense: None,
            data_in,
        }
    }

    fn check(sense: Sense) -> Self {
        Outcome {
            status: CHECK_CONDITION,
            sense: Some(sense),
            data_in: 0,
        }
    }

    /// BUSY (SAM-5 §5.3.1): cluster mode, this daemon cannot know the shared state now.
    fn busy() -> Self {
        Outcome {
            status: BUSY,
            sense: None,
            data_in: 0,
        }
    }

    fn conflict() -> Self {
        Outcome {
            status: RESERVATION_CONFLICT,
            sense: None,
            data_in: 0,
        }
    }

    fn refused(why: Refusal) -> Self {
        match why {
            Refusal::Conflict => Outcome::conflict(),
            Refusal::Unavailable => Outcome::busy(),
        }
    }

    fn from_pr(status: PrStatus) -> Self {
        match status {
            PrStatus::Good => Outcome::good(0),
            PrStatus::Conflict => Outcome::conflict(),
            PrStatus::CheckCondition(s) => Outcome::check(s),
            PrStatus::Busy => Outcome::busy(),
        }
    }
}

type Result<T> = std::result::Result<T, Outcome>;

/// What [`Target::start_for`] made of a command.
// Moved once per command; boxing the I/O would allocate per request instead.
#[allow(clippy::large_enum_variant)]
pub enum Started<'m> {
    Done(Outcome),
    /// A READ or WRITE, checked but for its access: its image I/O.
    Io(IoOp<'m>),
}

/// What [`Target::prepare`] made of a command: answer a replayed PR OUT from its record, or run
/// the command with its admission (when the access check admitted it, see
/// [`crate::pr::fencing`]).
enum Prepared<'a> {
    Replayed(PrStatus),
    Run(Command, Option<Admitted<'a>>),
}

/// One command's initiator and buffers, as the dispatch sees them.
struct Request<'r, 'm> {
    initiator: &'r str,
    /// The image's or this guest's read-only.
    read_only: bool,
    data_out: DataOut<'r, 'm>,
    data_in: DataIn<'r, 'm>,
    origin: Option<&'r Origin>,
}

impl From<Sense> for Outcome {
    fn from(s: Sense) -> Self {
        Outcome::check(s)
    }
}

/// LU state shared by every initiator's scsi connection.
pub struct Target {
    lun: Arc<Lun>,
}

impl Target {
    pub fn new(lun: Arc<Lun>) -> Self {
        Target { lun }
    }

    pub fn lun(&self) -> &Arc<Lun> {
        &self.lun
    }

    /// The LU's size in logical blocks.
    pub fn num_blocks(&self) -> u64 {
        self.lun.image.size() / SECTOR
    }

    /// What `read_only` (the image's or one guest's) makes of the LU's description.
    fn info_for(&self, read_only: bool) -> DiskInfo {
        DiskInfo {
            num_blocks: self.num_blocks(),
            block_size: SECTOR as u32,
            read_only,
            write_cache: self.lun.write_cache(),
            serial: self.lun.serial.clone(),
            naa: crate::lun::naa_from_serial(&self.lun.serial),
            unmap: !read_only,
            max_unmap_lbas: MAX_UNMAP_LBAS,
            max_unmap_descriptors: MAX_UNMAP_DESCRIPTORS,
            max_transfer_blocks: MAX_TRANSFER_BLOCKS,
            optimal_transfer_blocks: 0,
            max_write_same_blocks: MAX_WRITE_SAME_BLOCKS,
            max_compare_and_write_blocks: if self.compare_and_write_offered() {
                MAX_COMPARE_AND_WRITE_BLOCKS
            } else {
                0
            },
        }
    }

    /// Whether this LU offers COMPARE AND WRITE: only when this daemon alone writes the image.
    /// In cluster mode other daemons write it too, and nothing orders their writes against this
    /// one's compare (no cluster-wide range lock exists), so the command is not offered at all
    /// rather than offered without its atomicity.
    fn compare_and_write_offered(&self) -> bool {
        self.lun.reservations.cluster_view().is_none()
    }

    /// Commands addressed to a LUN that does not exist (SPC-4 §5.10): INQUIRY reports
    /// "no device", REPORT LUNS and REQUEST SENSE work, everything else is 05/25/00.
    pub fn execute_missing_lun(&self, cdb: &[u8], data_in: DataIn) -> Outcome {
        match cdb::parse(cdb) {
            Ok(Command::Inquiry {
                evpd: false,
                alloc_len,
                ..
            }) => reply(data_in, &pages::inquiry_no_lun(), alloc_len),
            Ok(Command::ReportLuns {
                select_report,
                alloc_len,
            }) => reply(data_in, &pages::report_luns(select_report), alloc_len),
            Ok(Command::RequestSense { desc, alloc_len }) => reply(
                data_in,
                &pages::request_sense(Some(sense::LUN_NOT_SUPPORTED), desc),
                alloc_len,
            ),
            _ => Outcome::check(sense::LUN_NOT_SUPPORTED),
        }
    }

    /// Executes one command from `initiator` on LUN 0. `origin` identifies a PR OUT's request
    /// in its transport queue, so that a replay of it is not executed twice (`replay.rs`).
    pub fn execute(
        &self,
        initiator: &str,
        cdb: &[u8],
        data_out: DataOut,
        data_in: DataIn,
        origin: Option<&Origin>,
    ) -> Outcome {
        self.execute_for(initiator, false, cdb, data_out, data_in, origin)
    }

    /// Like [`Target::execute`], for an initiator that may be read-only on its own: it sees
    /// MODE SENSE WP and its writes fail with 07/27/00, whoever else writes.
    pub fn execute_for(
        &self,
        initiator: &str,
        guest_read_only: bool,
        cdb: &[u8],
        data_out: DataOut,
        data_in: DataIn,
        origin: Option<&Origin>,
    ) -> Outcome {
        self.try_execute(initiator, guest_read_only, cdb, data_out, data_in, origin)
            .unwrap_or_else(|o| o)
    }

    /// Like [`Target::execute_for`], except that a READ or WRITE that passes every check but
    /// the access check comes back as [`Started::Io`]: its image I/O, for the caller to admit and
    /// run in a batch with others and to finish with [`Target::finish_io`].
    pub fn start_for<'m>(
        &self,
        initiator: &str,
        guest_read_only: bool,
        cdb: &[u8],
        data_out: DataOut<'_, 'm>,
        data_in: DataIn<'_, 'm>,
    ) -> Started<'m> {
        let data = matches!(
            cdb.first().copied(),
            Some(
                cdb::op::READ_6
                    | cdb::op::READ_10
                    | cdb::op::READ_12
                    | cdb::op::READ_16
                    | cdb::op::WRITE_6
                    | cdb::op::WRITE_10
                    | cdb::op::WRITE_12
                    | cdb::op::WRITE_16
            )
        );
        if !data {
            return Started::Done(self.execute_for(
                initiator,
                guest_read_only,
                cdb,
                data_out,
                data_in,
                None,
            ));
        }
        let read_only = guest_read_only || self.lun.image.read_only();
        let started =
            self.prepare(initiator, cdb, None, false)
                .and_then(|prepared| match prepared {
                    Prepared::Run(Command::Read(rw), _) => {
                        self.read_io(rw, data_in).map(Started::Io)
                    }
                    Prepared::Run(Command::Write(_), _) if read_only => {
                        Err(Outcome::check(sense::WRITE_PROTECTED))
                    }
                    Prepared::Run(Command::Write(rw), _) => {
                        self.write_io(rw, data_out).map(Started::Io)
                    }
                    // Not reached: the opcodes above decode to READ or WRITE, or fail.
                    Prepared::Run(..) | Prepared::Replayed(_) => {
                        Err(Outcome::check(sense::INVALID_OPCODE))
                    }
                });
        started.unwrap_or_else(Started::Done)
    }

    /// The outcome of a READ or WRITE that [`Target::start_for`] left to the caller: refused by
    /// the access check (RESERVATION CONFLICT), or the result of its image I/O.
    pub fn finish_io(&self, io: &IoOp, admitted: std::result::Result<(), Refusal>) -> Outcome {
        if let Err(why) = admitted {
            return Outcome::refused(why);
        }
        match (&io.result, io.write) {
            (Ok(()), false) => Outcome::good(buffers::total(&io.bufs)),
            (Ok(()), true) => Outcome::good(0),
            (Err(_), false) => Outcome::check(sense::MEDIUM_ERROR_UNRECOVERED_READ),
            (Err(_), true) => Outcome::check(sense::WRITE_ERROR),
        }
    }

    fn try_execute(
        &self,
        initiator: &str,
        guest_read_only: bool,
        cdb: &[u8],
        data_out: DataOut,
        data_in: DataIn,
        origin: Option<&Origin>,
    ) -> Result<Outcome> {
        let (cmd, admitted) = match self.prepare(initiator, cdb, origin, true)? {
            Prepared::Replayed(status) => return Ok(Outcome::from_pr(status)),
            Prepared::Run(cmd, admitted) => (cmd, admitted),
        };
        let req = Request {
            initiator,
            read_only: guest_read_only || self.lun.image.read_only(),
            data_out,
            data_in,
            origin,
        };
        self.dispatch(&req, cmd, admitted)
    }

    /// Decodes, checks and admits one command (steps 1 to 4 of the module's order), after the
    /// replay check, which comes before everything. Without `admit`, a command with an access
    /// check (a data command) is let through unchecked: its caller does that check later, and
    /// holds that admission through the I/O ([`Target::start_for`]).
    fn prepare(
        &self,
        initiator: &str,
        cdb: &[u8],
        origin: Option<&Origin>,
        admit: bool,
    ) -> Result<Prepared<'_>> {
        let res = &self.lun.reservations;
        // A PR OUT that QEMU presents again after a reconnection already passed every check
        // below, unit attentions included, and ran: it gets its first answer, and runs no more.
        if let Some(status) = origin.and_then(|o| res.replayed(initiator, o)) {
            return Ok(Prepared::Replayed(status));
        }
        // SPC-4 §5.14: a pending UA terminates any command but these three, before decoding.
        let exempt = matches!(
            cdb.first(),
            Some(&cdb::op::INQUIRY) | Some(&cdb::op::REPORT_LUNS) | Some(&cdb::op::REQUEST_SENSE)
        );
        if !exempt {
            if let Some(ua) = res.take_unit_attention(initiator) {
                return Err(Outcome::check(ua));
            }
        }
        let cmd = cdb::parse(cdb)?;
        if matches!(cmd, Command::CompareAndWrite { .. }) && !self.compare_and_write_offered() {
            return Err(Outcome::check(sense::INVALID_OPCODE));
        }
        if let Some((lba, blocks)) = cmd.lba_range() {
            pages::check_range(lba, blocks, self.num_blocks())?;
        }
        // SPC-4 §5.9.1, SBC-3 table 13: the access check; the admission is held through the I/O,
        // except by the commands that drop it to work in pieces or to flush.
        let admitted = match cmd.access() {
            Some(_) if !admit => None,
            Some(access) => Some(res.admit(initiator, access).map_err(Outcome::refused)?),
            None => {
                // SPC-2 §5.5.1: under an SPC-2 reservation only a few commands pass.
                let passes = cmd.ua_exempt()
                    || matches!(
                        cmd,
                        Command::Release6
                            | Command::Reserve6
                            | Command::PersistentReserveOut { .. }
                    );
                if !passes && res.with(|a| a.spc2_conflicts(initiator)) {
                    return Err(Outcome::conflict());
                }
                None
            }
        };
        Ok(Prepared::Run(cmd, admitted))
    }

    /// Executes a command [`Target::prepare`] let through (step 5). `admitted` is held until the command
    /// is done, unless its function drops it first; a command that has an admission never calls
    /// into the arbiter while it holds it.
    fn dispatch(&self, req: &Request, cmd: Command, admitted: Option<Admitted>) -> Result<Outcome> {
        let (data_in, data_out) = (req.data_in, req.data_out);
        let info = || self.info_for(req.read_only);
        Ok(match cmd {
            Command::TestUnitReady => Outcome::good(0),
            // The reference keeps UAs queued across REQUEST SENSE; report "no sense".
            Command::RequestSense { desc, alloc_len } => {
                reply(data_in, &pages::request_sense(None, desc), alloc_len)
            }
            Command::Inquiry {
                evpd,
                page_code,
                alloc_len,
            } => reply(
                data_in,
                &pages::inquiry(&info(), evpd, page_code)?,
                alloc_len,
            ),
            Command::ReportLuns {
                select_report,
                alloc_len,
            } => reply(data_in, &pages::report_luns(select_report), alloc_len),
            Command::ReadCapacity10 => reply(data_in, &pages::read_capacity_10(&info()), 8),
            Command::ReadCapacity16 { alloc_len } => {
                reply(data_in, &pages::read_capacity_16(&info()), alloc_len)
            }
            Command::ModeSense(m) => reply(data_in, &pages::mode_sense(&info(), &m)?, m.alloc_len),
            Command::ModeSelect { ten, param_len, .. } => {
                self.mode_select(req, ten, param_len, admitted)?
            }
            Command::Read(rw) => self.read(rw, data_in)?,
            Command::Write(rw) => {
                if req.read_only {
                    return Err(Outcome::check(sense::WRITE_PROTECTED));
                }
                self.write(rw, data_out)?
            }
            Command::CompareAndWrite {
                lba, blocks, fua, ..
            } => {
                if req.read_only {
                    return Err(Outcome::check(sense::WRITE_PROTECTED));
                }
                // The admission stays held across the compare and the write, as for a WRITE.
                let done = self.compare_and_write(lba, blocks, fua, data_out);
                drop(admitted);
                done?
            }
            Command::SynchronizeCache { .. } => self.synchronize_cache(admitted)?,
            Command::WriteSame {
                lba,
                blocks,
                unmap,
                ndob,
                ..
            } => {
                if req.read_only {
                    return Err(Outcome::check(sense::WRITE_PROTECTED));
                }
                drop(admitted);
                self.write_same(req.initiator, lba, blocks, unmap, ndob, data_out)?
            }
            Command::Unmap { param_len } => self.unmap(req, param_len, admitted)?,
            Command::Verify {
                lba,
                blocks,
                bytchk,
                ..
            } => self.verify(lba, blocks, bytchk, data_out)?,
            // PRE-FETCH: GOOD means "not all blocks fit the cache" (SBC-3 §5.12); nothing to do.
            Command::PreFetch { .. } => Outcome::good(0),
            Command::StartStopUnit {
                start, no_flush, ..
            } => self.start_stop_unit(req, start, no_flush, admitted)?,
            Command::PersistentReserveIn { cdb } => self.persistent_reserve_in(req, &cdb)?,
            Command::PersistentReserveOut { cdb } => self.persistent_reserve_out(req, &cdb)?,
            Command::Reserve6 => {
                let res = &self.lun.reservations;
                Outcome::from_pr(res.with_mut(|a| a.spc2_reserve(req.initiator)))
            }
            Command::Release6 => {
                let res = &self.lun.reservations;
                Outcome::from_pr(res.with_mut(|a| a.spc2_release(req.initiator)))
            }
            Command::ReportOpcodes(r) => reply(
                data_in,
                &cdb::report_supported_opcodes(info().features(), &r)?,
                r.alloc_len,
            ),
        })
    }

    /// MODE SELECT (SPC-4 §6.9, §6.10): only WCE of the caching page can change.
    fn mode_select(
        &self,
        req: &Request,
        ten: bool,
        param_len: u32,
        admitted: Option<Admitted>,
    ) -> Result<Outcome> {
        let params = param_list(req.data_out, param_len)?;
        let change = pages::parse_mode_select(ten, &params, &self.info_for(req.read_only))?;
        // The change is allowed and made in one hold of the arbiter's exclusive lock (it queues
        // unit attentions): the admission, a read hold, ends first.
        drop(admitted);
        if let Some(wce) = change.wce {
            match self.lun.set_write_cache(req.initiator, wce) {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return Err(Outcome::check(sense::WRITE_ERROR)),
                Err(why) => return Err(Outcome::refused(why)),
            }
        }
        Ok(Outcome::good(0))
    }

    /// SYNCHRONIZE CACHE (SBC-3 §5.22, §5.23).
    fn synchronize_cache(&self, admitted: Option<Admitted>) -> Result<Outcome> {
        // A flush changes no data: no PR OUT has to wait for it.
        drop(admitted);
        self.lun
            .image
            .flush()
            .map_err(|_| Outcome::check(sense::WRITE_ERROR))?;
        Ok(Outcome::good(0))
    }

    /// UNMAP (SBC-3 §5.28), in pieces each admitted on its own.
    fn unmap(&self, req: &Request, param_len: u32, admitted: Option<Admitted>) -> Result<Outcome> {
        if req.read_only {
            return Err(Outcome::check(sense::WRITE_PROTECTED));
        }
        let params = param_list(req.data_out, param_len)?;
        let ranges = pages::parse_unmap(&params, &self.info_for(req.read_only))?;
        // SBC-3 §5.28: validate every descriptor before changing anything.
        for &(lba, blocks) in &ranges {
            pages::check_range(lba, u64::from(blocks), self.num_blocks())?;
        }
        drop(admitted);
        let image = &self.lun.image;
        for (lba, blocks) in ranges {
            let offset = lba * SECTOR;
            self.lun
                .admitted_chunks(
                    req.initiator,
                    Access::Write,
                    offset,
                    u64::from(blocks) * SECTOR,
                    |done, n| image.discard(offset + done, n),
                )
                .map_err(chunk_outcome)?;
        }
        self.sync_if_write_through()?;
        Ok(Outcome::good(0))
    }

    /// START STOP UNIT (SBC-3 §5.25).
    fn start_stop_unit(
        &self,
        req: &Request,
        start: bool,
        no_flush: bool,
        admitted: Option<Admitted>,
    ) -> Result<Outcome> {
        // A stop flushes the cache first unless NO_FLUSH (SBC-3 §5.25).
        drop(admitted);
        if !start && !no_flush && !req.read_only {
            self.lun
                .image
                .flush()
                .map_err(|_| Outcome::check(sense::WRITE_ERROR))?;
        }
        Ok(Outcome::good(0))
    }

    /// PERSISTENT RESERVE IN (SPC-4 §6.15); never admitted, so it may read the arbiter.
    fn persistent_reserve_in(&self, req: &Request, cdb: &[u8; 10]) -> Result<Outcome> {
        // Cluster mode: `current` settles the state held; a change applied after that (another
        // daemon's, adopted meanwhile) is settled again before it is shown.
        for _ in 0..PR_IN_TRIES {
            if !self.lun.reservations.current() {
                return Err(Outcome::busy());
            }
            if let Some(data) = self.lun.reservations.with_settled(|a| wire::prin(a, cdb)) {
                // `prin` already cut the data to the ALLOCATION LENGTH, never ADDITIONAL LENGTH.
                return Ok(reply(req.data_in, &data?, u32::MAX));
            }
        }
        Err(Outcome::busy())
    }

    /// PERSISTENT RESERVE OUT (SPC-4 §6.16); never admitted: the arbiter decides.
    fn persistent_reserve_out(&self, req: &Request, cdb: &[u8; 10]) -> Result<Outcome> {
        let res = &self.lun.reservations;
        let param_len = u32::from_be_bytes([cdb[5], cdb[6], cdb[7], cdb[8]]);
        let params = param_list(req.data_out, param_len)?;
        let pr = wire::parse_prout(cdb, &params, |name| {
            res.with(|a| a.is_known(name) || a.is_registered(name))
                .then(|| name.to_string())
        })?;
        let (status, preempted) = res.prout_preempting(req.initiator, &pr, req.origin);
        // SPC-4 §5.9.11.5: PREEMPT AND ABORT aborts every task of the preempted I_T nexuses
        // (any transport) as SAM-5 §7.1 says: queued ones never run, in-flight ones are waited
        // for. They learn of it from the 2A/05 the preempt queued for them.
        if pr.action == ServiceAction::PreemptAndAbort && status == PrStatus::Good {
            for victim in &preempted {
                let n = self.lun.tasks.abort(Scope::Nexus(victim));
                if n > 0 {
                    log::info!(
                        "{}: PREEMPT AND ABORT aborted {n} task(s) of {victim}",
                        req.initiator
                    );
                }
            }
        }
        Ok(Outcome::from_pr(status))
    }

    fn read(&self, rw: Rw, data_in: DataIn) -> Result<Outcome> {
        let mut io = self.read_io(rw, data_in)?;
        io.result = self.lun.image.read_at(&io.bufs, io.offset);
        Ok(self.finish_io(&io, Ok(())))
    }

    fn write(&self, rw: Rw, data_out: DataOut) -> Result<Outcome> {
        let mut io = self.write_io(rw, data_out)?;
        let len = buffers::total(&io.bufs) as u64;
        let _range = self
            .lun
            .write_ranges
            .write(std::iter::once((io.offset, len)));
        io.result = self.lun.image.write_at(&io.bufs, io.offset, io.fua);
        Ok(self.finish_io(&io, Ok(())))
    }

    /// The image read of a READ.
    fn read_io<'m>(&self, rw: Rw, data_in: DataIn<'_, 'm>) -> Result<IoOp<'m>> {
        let bytes = self.transfer_len(rw.blocks)?;
        // A buffer shorter than the transfer gets what fits (the residual tells the initiator).
        let len = bytes.min(data_in.capacity() as u64 / SECTOR * SECTOR) as usize;
        let bufs = data_in.take(len).ok_or(sense::INVALID_FIELD_IN_CDB)?;
        Ok(IoOp::new(false, rw.lba * SECTOR, bufs, false))
    }

    /// The image write of a WRITE.
    fn write_io<'m>(&self, rw: Rw, data_out: DataOut<'_, 'm>) -> Result<IoOp<'m>> {
        let bytes = self.transfer_len(rw.blocks)? as usize;
        // Less data than the CDB announces: refuse rather than write a torn, partial command.
        let bufs = data_out.take(bytes).ok_or(sense::INVALID_FIELD_IN_CDB)?;
        let fua = rw.fua || !self.lun.write_cache();
        Ok(IoOp::new(true, rw.lba * SECTOR, bufs, fua))
    }

    /// Bytes of a READ/WRITE, bounded by MAXIMUM TRANSFER LENGTH (SBC-3 §6.6.4: 05/24/00).
    fn transfer_len(&self, blocks: u32) -> Result<u64> {
        if blocks > MAX_TRANSFER_BLOCKS {
            return Err(Outcome::check(sense::INVALID_FIELD_IN_CDB));
        }
        Ok(u64::from(blocks) * SECTOR)
    }

    /// WRITE SAME (SBC-3 §5.42-5.44), in [`crate::lun::ADMISSION_CHUNK`] pieces each admitted
    /// on its own: a preempt between two pieces ends the command with RESERVATION CONFLICT and
    /// the pieces before it written (the range is then indeterminate, as after any failed
    /// write).
    fn write_same(
        &self,
        initiator: &str,
        lba: u64,
        blocks: u32,
        unmap: bool,
        ndob: bool,
        data_out: DataOut,
    ) -> Result<Outcome> {
        if blocks > MAX_WRITE_SAME_BLOCKS {
            return Err(Outcome::check(sense::INVALID_FIELD_IN_CDB));
        }
        let mut block = [0u8; SECTOR as usize];
        if !ndob && data_out.read(&mut block) < block.len() {
            return Err(Outcome::check(sense::PARAM_LIST_LENGTH_ERROR));
        }
        let (offset, len) = (lba * SECTOR, u64::from(blocks) * SECTOR);
        let image = &self.lun.image;
        if block.iter().all(|&b| b == 0) {
            // Zeroes, with or without UNMAP: LBPRZ=1 makes both read back as zeroes; only
            // UNMAP=1 may deallocate.
            self.lun
                .admitted_chunks(initiator, Access::Write, offset, len, |done, n| {
                    image.write_zeroes(offset + done, n, unmap)
                })
                .map_err(chunk_outcome)?;
            self.sync_if_write_through()?;
        } else {
            // One buffer of the block repeated, written as many times as a piece needs.
            let mut pattern = vec![0u8; WRITE_SAME_BUF.min(len as usize)];
            for c in pattern.chunks_mut(SECTOR as usize) {
                c.copy_from_slice(&block[..c.len()]);
            }
            let durable = !self.lun.write_cache();
            self.lun
                .admitted_chunks(initiator, Access::Write, offset, len, |done, mut n| {
                    let buf = Buf::from(&mut pattern[..]);
                    let mut bufs = Bufs::new();
                    while n > 0 {
                        let m = n.min(buf.len() as u64);
                        bufs.push(buf.subslice(0, m as usize).map_err(std::io::Error::other)?);
                        n -= m;
                    }
                    image.write_at(&bufs, offset + done, durable)
                })
                .map_err(chunk_outcome)?;
        }
        Ok(Outcome::good(0))
    }

    /// Zeroing and unmapping have no per-write DSYNC: with the write cache off, sync before
    /// GOOD.
    fn sync_if_write_through(&self) -> Result<()> {
        self.lun
            .sync_if_write_through()
            .map_err(|_| Outcome::check(sense::WRITE_ERROR))
    }

    /// COMPARE AND WRITE (SBC-4 §5.3): the data-out buffer holds `blocks` blocks of verify data
    /// then `blocks` blocks of write data. Under the LU's write-range lock (`lun/ranges.rs`), so
    /// no other write to the range lands between the read for the compare and the write; on a
    /// miscompare nothing is written and the sense's INFORMATION is the offset of the first
    /// byte that differs.
    fn compare_and_write(
        &self,
        lba: u64,
        blocks: u8,
        fua: bool,
        data_out: DataOut,
    ) -> Result<Outcome> {
        if blocks > MAX_COMPARE_AND_WRITE_BLOCKS {
            return Err(Outcome::check(sense::INVALID_FIELD_IN_CDB));
        }
        let len = usize::from(blocks) * SECTOR as usize;
        // A data-out buffer of any other length than 2N blocks (SBC-4 §5.3) is refused, as LIO
        // does: the halves would not line up. This includes N = 0 with data (an initiator that
        // meant 256 blocks, which the 8-bit field cannot say).
        if data_out.len() != 2 * len {
            return Err(Outcome::check(sense::INVALID_FIELD_IN_CDB));
        }
        if blocks == 0 {
            return Ok(Outcome::good(0));
        }
        let mut data = vec![0u8; 2 * len];
        if data_out.read(&mut data) < data.len() {
            return Err(Outcome::check(sense::INVALID_FIELD_IN_CDB));
        }
        let (verify, write) = data.split_at_mut(len);
        let offset = lba * SECTOR;
        let unlocked = crate::testhooks::failpoint::skip("caw-unlocked");
        let _range =
            (!unlocked).then(|| self.lun.write_ranges.compare_and_write(offset, len as u64));
        let mut have = vec![0u8; len];
        self.lun
            .image
            .read_at(&[Buf::from(&mut have[..])], offset)
            .map_err(|_| Outcome::check(sense::MEDIUM_ERROR_UNRECOVERED_READ))?;
        if let Some(at) = first_difference(&have, verify) {
            return Err(Outcome::check(
                sense::MISCOMPARE_DURING_VERIFY.with_information(at),
            ));
        }
        if unlocked {
            // The broken variant's race window, wide enough for a test to see it every time.
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let fua = fua || !self.lun.write_cache();
        self.lun
            .image
            .write_at(&[Buf::from(write)], offset, fua)
            .map_err(|_| Outcome::check(sense::WRITE_ERROR))?;
        Ok(Outcome::good(0))
    }

    /// VERIFY (SBC-3 §5.33): BYTCHK=0 checks the medium (always readable here); 1 compares the
    /// data-out with the medium; 3 compares one block with every block.
    fn verify(&self, lba: u64, blocks: u32, bytchk: u8, data_out: DataOut) -> Result<Outcome> {
        if bytchk == 0 || blocks == 0 {
            return Ok(Outcome::good(0));
        }
        let bytes = self.transfer_len(blocks)? as usize;
        let want_len = if bytchk == 3 { SECTOR as usize } else { bytes };
        let mut want = vec![0u8; want_len];
        if data_out.read(&mut want) < want_len {
            return Err(Outcome::check(sense::PARAM_LIST_LENGTH_ERROR));
        }
        let mut have = vec![0u8; bytes];
        self.lun
            .image
            .read_at(&[Buf::from(&mut have[..])], lba * SECTOR)
            .map_err(|_| Outcome::check(sense::MEDIUM_ERROR_UNRECOVERED_READ))?;
        let same = have.chunks(want_len).all(|c| c == &want[..c.len()]);
        if same {
            Ok(Outcome::good(0))
        } else {
            Err(Outcome::check(sense::MISCOMPARE_DURING_VERIFY))
        }
    }
}

/// The offset of the first byte where `have` and `want` differ (SBC-4 §5.3: the miscompare's
/// INFORMATION field), if any.
pub fn first_difference(have: &[u8], want: &[u8]) -> Option<u32> {
    let at = have.iter().zip(want).position(|(a, b)| a != b)?;
    Some(u32::try_from(at).unwrap_or(u32::MAX))
}

/// How a command done in admitted pieces ended early.
fn chunk_outcome(e: ChunkError) -> Outcome {
    match e {
        ChunkError::Conflict { .. } => Outcome::conflict(),
        ChunkError::Unavailable { .. } => Outcome::busy(),
        ChunkError::Io(_) => Outcome::check(sense::WRITE_ERROR),
    }
}

/// Copies the PARAMETER LIST LENGTH bytes of a parameter list, at most [`MAX_PARAM_LEN`] (the
/// parsers reject a longer list as such). A data-out buffer shorter than the announced length is
/// 05/1A/00 PARAMETER LIST LENGTH ERROR, even when it is empty.
fn param_list(data_out: DataOut, param_len: u32) -> Result<Vec<u8>> {
    let want = (param_len as usize).min(MAX_PARAM_LEN);
    if data_out.len() < want {
        return Err(Outcome::check(sense::PARAM_LIST_LENGTH_ERROR));
    }
    let mut params = vec![0u8; want];
    data_out.read(&mut params);
    Ok(params)
}

/// Returns `data` cut to the allocation length and the buffer (SPC-4 §4.2.5.6).
fn reply(data_in: DataIn, data: &[u8], alloc_len: u32) -> Outcome {
    let n = data.len().min(alloc_len as usize);
    Outcome::good(data_in.write(&data[..n]))
}

#[cfg(test)]
mod tests;

//! The full feature phase of one connection (one session: MaxConnections=1, ERL 0): SCSI
//! commands with immediate, unsolicited and solicited (R2T) data, Data-In with status, SCSI
//! Response with sense, NOP, Text (SendTargets), TMF, Logout, Reject. Commands run one at a
//! time in CmdSN order; PDUs that arrive while a write's data is collected wait in a bounded
//! queue.

use std::collections::{HashSet, VecDeque};
use std::io::{self, BufReader, Read, Write};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::keys::{self, OUR_MRDSL};
use super::login::{LoggedIn, SessionKind, CMD_WINDOW};
use super::pdu::{self, header, op, put, read_pdu, write_pdu, Pdu, PduError, RESERVED_TAG};
use super::{SessionInfo, Shared};
use crate::image::buffers::Buf;
use crate::scsi::cdb::{self, Command};
use crate::scsi::data::{DataIn, DataOut};
use crate::scsi::sense::{self, Sense};
use crate::scsi::target::{Outcome, CHECK_CONDITION, GOOD};
use crate::scsi::tasks::{Scope, TaskId, TaskState};

/// The largest data buffer of one command (the LU's MAXIMUM TRANSFER LENGTH is 4 MiB; a
/// parameter list is at most 8 KiB). An EDTL above it is refused, never allocated.
const MAX_DATA: usize = 4 << 20;
/// PDUs that may wait while a write's data is collected (bounds the session's outstanding
/// commands together with the CmdSN window), and their data bytes: a window of commands with
/// their first bursts fits (32 × 256 KiB), a flood does not.
const MAX_PENDING: usize = 1024;
const MAX_PENDING_BYTES: usize = 8 << 20;
/// The longest Text request, continuations reassembled.
const MAX_TEXT: usize = 64 * 1024;

/// Reject reasons (RFC 7143 §11.17.1).
mod reject {
    pub const PROTOCOL_ERROR: u8 = 0x04;
    pub const NOT_SUPPORTED: u8 = 0x05;
}

/// Why a connection ends.
#[derive(Debug, thiserror::Error)]
pub enum End {
    /// The initiator logged out (the response was sent).
    #[error("logout")]
    Logout,
    /// A TARGET COLD RESET was answered: every connection closes.
    #[error("target cold reset")]
    ColdReset,
    /// The initiator closed the connection (or it was shut down).
    #[error("closed")]
    Closed,
    /// The connection failed.
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    /// A PDU could not be read (digest, length): at ERL 0, session recovery.
    #[error("{0}")]
    Pdu(#[from] PduError),
    /// A protocol error: at ERL 0 the connection closes.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// What waiting for a write's Data-Out produced.
enum Collected {
    Data(Option<Vec<u8>>),
    /// A TMF that aborts this command arrived instead: the command ends without a response.
    Aborted(Pdu),
}

/// One connection in the full feature phase, reading from `R` and writing to `W` (the two
/// halves of a TCP connection, or in-memory buffers for the fuzz target).
pub struct Connection<'s, R: Read, W: Write> {
    shared: &'s Shared,
    reader: BufReader<R>,
    writer: W,
    session: LoggedIn,
    /// The arbiter's name for this I_T nexus (`<initiator>,i,0x<ISID>`).
    nexus: String,
    /// `nexus`, as the LU's task set names it.
    nexus_tasks: Arc<str>,
    pending: VecDeque<Pdu>,
    /// Data bytes of the PDUs in `pending`.
    pending_bytes: usize,
    /// ITTs of queued commands a TMF aborted: dropped when their turn comes.
    aborted: HashSet<u32>,
    /// CmdSNs above ExpCmdSN that an ABORT TASK counted as received and aborted (RFC 7143
    /// §11.5.1): ExpCmdSN steps over them when it reaches them.
    received_ahead: HashSet<u32>,
    next_ttt: u32,
    /// What `ctl` and the metrics show of this session; its counters.
    info: Arc<SessionInfo>,
}

fn protocol(why: impl Into<String>) -> End {
    End::Protocol(why.into())
}

impl<'s, R: Read, W: Write> Connection<'s, R, W> {
    pub fn new(
        shared: &'s Shared,
        reader: R,
        writer: W,
        session: LoggedIn,
        nexus: String,
        info: Arc<SessionInfo>,
    ) -> Self {
        Connection {
            shared,
            reader: BufReader::with_capacity(64 * 1024, reader),
            writer,
            session,
            nexus_tasks: Arc::from(nexus.as_str()),
            nexus,
            pending: VecDeque::new(),
            pending_bytes: 0,
            aborted: HashSet::new(),
            received_ahead: HashSet::new(),
            next_ttt: 1,
            info,
        }
    }

    /// Serves PDUs until the connection ends.
    pub fn run(&mut self) -> End {
        loop {
            let r = self.next().and_then(|p| self.dispatch(p));
            if let Err(e) = r {
                let kind = match &e {
                    End::Pdu(PduError::HeaderDigest | PduError::DataDigest) => Some(0),
                    End::Pdu(PduError::TooLong { .. }) => Some(1),
                    End::Protocol(_) => Some(2),
                    _ => None,
                };
                if let Some(k) = kind {
                    self.info.counters.pdu_errors.fetch_add(1, Relaxed);
                    self.shared.counters.pdu_error(k);
                }
                return e;
            }
        }
    }

    fn next(&mut self) -> Result<Pdu, End> {
        match self.pending.pop_front() {
            Some(p) => {
                self.pending_bytes -= p.data.len();
                Ok(p)
            }
            None => self.read(),
        }
    }

    fn read(&mut self) -> Result<Pdu, End> {
        match read_pdu(&mut self.reader, self.session.params.digests, OUR_MRDSL) {
            Ok(p) => Ok(p),
            Err(PduError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Err(End::Closed),
            Err(e) => Err(e.into()),
        }
    }

    fn dispatch(&mut self, p: Pdu) -> Result<(), End> {
        let discovery = self.session.kind == SessionKind::Discovery;
        match p.opcode() {
            op::NOP_OUT => self.nop_out(&p),
            op::TEXT_REQUEST => self.text(p),
            op::LOGOUT_REQUEST => self.logout(&p),
            op::SCSI_COMMAND if !discovery => self.scsi_command(p),
            op::TMF_REQUEST if !discovery => self.tmf(&p, None),
            // A Data-Out no command waits for: an aborted task's, dropped (open-iscsi's
            // FastAbort, RFC 7143 §11.5.1).
            op::DATA_OUT if !discovery => {
                log::debug!(
                    "{}: iscsi: Data-Out for no command (ITT {:#x}) dropped",
                    self.nexus,
                    p.itt()
                );
                Ok(())
            }
            op::SCSI_COMMAND | op::TMF_REQUEST | op::DATA_OUT | op::SNACK | op::LOGIN_REQUEST => {
                self.reject(&p, reject::PROTOCOL_ERROR)
            }
            _ => self.reject(&p, reject::NOT_SUPPORTED),
        }
    }

    /// Accounts a request's CmdSN: immediate ones pass; others must be the next expected,
    /// else they are dropped (RFC 7143 §3.2.2.1: outside the window, silently).
    fn admit_sn(&mut self, p: &Pdu) -> bool {
        if p.immediate() {
            return true;
        }
        if p.cmd_sn() == self.session.exp_cmd_sn {
            self.advance_exp_cmd_sn();
            return true;
        }
        log::debug!(
            "{}: iscsi: CmdSN {} dropped (expected {})",
            self.nexus,
            p.cmd_sn(),
            self.session.exp_cmd_sn
        );
        false
    }

    /// ExpCmdSN past the CmdSN just received, and past those counted as received already.
    fn advance_exp_cmd_sn(&mut self) {
        let s = &mut self.session;
        s.exp_cmd_sn = s.exp_cmd_sn.wrapping_add(1);
        while self.received_ahead.remove(&s.exp_cmd_sn) {
            s.exp_cmd_sn = s.exp_cmd_sn.wrapping_add(1);
        }
    }

    /// A TMF that interrupted a write's data though commands with lower CmdSNs wait in the
    /// queue: it acts now (the write's data will not come), and its CmdSN, in the window, counts
    /// as received so that ExpCmdSN steps over it. Dropped, neither the write nor the TMF would
    /// ever be answered.
    fn admit_ahead(&mut self, p: &Pdu) -> bool {
        let ahead = p.cmd_sn().wrapping_sub(self.session.exp_cmd_sn);
        (1..CMD_WINDOW).contains(&ahead) && self.received_ahead.insert(p.cmd_sn())
    }

    /// ABORT TASK for a task that does not exist (RFC 7143 §11.5.1): when its RefCmdSN is in
    /// the window, not received yet and below the TMF's own CmdSN, that CmdSN counts as
    /// received (its command, should it come, is dropped) and the task as aborted.
    fn abort_not_received(&mut self, p: &Pdu) -> bool {
        let (ref_sn, exp) = (p.u32_at(32), self.session.exp_cmd_sn);
        let in_window = ref_sn.wrapping_sub(exp) < CMD_WINDOW;
        let before_tmf = (1..1 << 31).contains(&p.cmd_sn().wrapping_sub(ref_sn));
        if !(in_window && before_tmf) {
            return false;
        }
        if ref_sn == exp {
            self.advance_exp_cmd_sn();
        } else {
            self.received_ahead.insert(ref_sn);
        }
        true
    }

    /// StatSN, ExpCmdSN and MaxCmdSN into a response header; advances StatSN if `status`.
    fn numbers(&mut self, b: &mut [u8; pdu::BHS_LEN], status: bool) {
        put(b, 24, self.session.stat_sn);
        if status {
            self.session.stat_sn = self.session.stat_sn.wrapping_add(1);
        }
        let exp = self.session.exp_cmd_sn;
        put(b, 28, exp);
        put(b, 32, exp.wrapping_add(CMD_WINDOW - 1));
    }

    fn send(&mut self, b: [u8; pdu::BHS_LEN], data: &[u8]) -> Result<(), End> {
        Ok(write_pdu(
            &mut self.writer,
            b,
            data,
            self.session.params.digests,
        )?)
    }

    fn reject(&mut self, p: &Pdu, reason: u8) -> Result<(), End> {
        let line = format_args!(
            "{}: iscsi: PDU opcode {:#04x} rejected (reason {reason:#04x})",
            self.nexus,
            p.opcode()
        );
        self.shared.peer_line(&self.info, log::Level::Info, line);
        self.info.counters.pdu_errors.fetch_add(1, Relaxed);
        self.shared.counters.pdu_error(3);
        let mut b = header(op::REJECT, 0x80, RESERVED_TAG);
        b[2] = reason;
        self.numbers(&mut b, true);
        self.send(b, &p.bhs)
    }

    fn nop_out(&mut self, p: &Pdu) -> Result<(), End> {
        if !self.admit_sn(p) {
            return Ok(());
        }
        // ITT 0xffffffff: an answer to our ping, or a ping wanting no answer.
        if p.itt() == RESERVED_TAG {
            return Ok(());
        }
        let mut b = header(op::NOP_IN, 0x80, p.itt());
        b[8..16].copy_from_slice(&p.lun());
        put(&mut b, 20, RESERVED_TAG);
        self.numbers(&mut b, true);
        let n = p.data.len().min(self.session.params.their_mrdsl);
        self.send(b, &p.data[..n])
    }

    fn logout(&mut self, p: &Pdu) -> Result<(), End> {
        self.admit_sn(p);
        let reason = p.flags() & 0x7f;
        let mut b = header(op::LOGOUT_RESPONSE, 0x80, p.itt());
        // Reason 2 (remove the connection for recovery) needs ERL 2: "recovery not supported".
        b[2] = if reason == 2 { 2 } else { 0 };
        self.numbers(&mut b, true);
        self.send(b, &[])?;
        if reason == 2 {
            return Ok(());
        }
        Err(End::Logout)
    }

    /// Text Request: SendTargets, anything else NotUnderstood (RFC 7143 §11.10).
    fn text(&mut self, first: Pdu) -> Result<(), End> {
        let mut text = first.data.clone();
        let mut p = first;
        // C bit: the text continues; each part gets an empty response.
        while p.flags() & 0x40 != 0 {
            let mut b = header(op::TEXT_RESPONSE, 0, p.itt());
            put(&mut b, 20, 0x7fff_ffff);
            self.numbers(&mut b, true);
            self.send(b, &[])?;
            p = self.read()?;
            if p.opcode() != op::TEXT_REQUEST || text.len() + p.data.len() > MAX_TEXT {
                return Err(protocol("text request continuation"));
            }
            text.extend_from_slice(&p.data);
        }
        if !self.admit_sn(&p) {
            return Ok(());
        }
        let pairs = keys::parse(&text).ok_or_else(|| protocol("malformed text request"))?;
        let mut answer = Vec::new();
        for (k, v) in &pairs {
            if k == "SendTargets" {
                answer.extend(self.shared.send_targets(v, self.session.kind));
            } else {
                answer.push((k.clone(), "NotUnderstood".into()));
            }
        }
        let data = keys::encode(&answer);
        if data.len() > self.session.params.their_mrdsl {
            return Err(protocol(
                "text response beyond the initiator's MaxRecvDataSegmentLength",
            ));
        }
        let mut b = header(op::TEXT_RESPONSE, 0x80, p.itt());
        put(&mut b, 20, RESERVED_TAG);
        self.numbers(&mut b, true);
        self.send(b, &data)
    }

    fn scsi_command(&mut self, p: Pdu) -> Result<(), End> {
        // Forgotten whether its CmdSN admits it or drops it: the ITT is free again either way.
        let aborted = self.aborted.remove(&p.itt());
        if !self.admit_sn(&p) || aborted {
            return Ok(());
        }
        // In the LU's task set from here to its response, so that a TMF from another nexus
        // (any transport) aborts it before it runs, or waits for it while it runs.
        let tasks = &self.shared.target.lun().tasks;
        let task = tasks.enter(&self.nexus_tasks, u64::from(p.itt()), TaskState::Queued);
        let r = self.command(p, task);
        tasks.retire(task);
        r
    }

    /// A SCSI command, `task` in the LU's task set: its data, its execution, its response.
    fn command(&mut self, p: Pdu, task: TaskId) -> Result<(), End> {
        self.info.counters.commands.fetch_add(1, Relaxed);
        let (read, write) = (p.flags() & 0x40 != 0, p.flags() & 0x20 != 0);
        let edtl = p.u32_at(20) as usize;
        let data_out = if write {
            match self.collect(&p, edtl)? {
                Collected::Data(d) => d,
                Collected::Aborted(tmf) => return self.tmf(&tmf, Some(p.itt())),
            }
        } else {
            Some(Vec::new())
        };
        let mut cdb = [0u8; 16];
        cdb.copy_from_slice(&p.bhs[32..48]);
        // An extended CDB (AHS type 1) or a bidirectional command is not provided; neither is a
        // transfer above the LU's largest.
        let ext_cdb = p.ahs.len() >= 3 && p.ahs[2] == 1;
        // A READ whose EDTL is below its transfer (not a whole block, say) reads the blocks and
        // sends the first EDTL bytes with the overflow in the residual (RFC 7143 §11.4.5.1).
        let room = if read {
            edtl.max(implied_len(&cdb).unwrap_or(0)).min(MAX_DATA)
        } else {
            0
        };
        let mut din = vec![0u8; room];
        let tasks = &self.shared.target.lun().tasks;
        if !tasks.begin_io(task) {
            // Another nexus's TMF aborted it: no response of its own (RFC 7143 §11.5.1); its
            // initiator learns of it from the unit attention the TMF established.
            log::info!("{}: iscsi: task {:#x} aborted", self.nexus, p.itt());
            return Ok(());
        }
        if let Some(d) = &data_out {
            let n = d.len() as u64;
            self.info.counters.bytes_in.fetch_add(n, Relaxed);
        }
        let outcome = match data_out {
            Some(mut dout) if !(ext_cdb || (read && write) || edtl > MAX_DATA) => {
                self.execute(&p.lun(), &cdb, &mut dout, &mut din)
            }
            _ => Outcome {
                status: CHECK_CONDITION,
                sense: Some(sense::INVALID_FIELD_IN_CDB),
                data_in: 0,
            },
        };
        // Its I/O ended: a TMF no longer waits for it, whether or not the initiator reads its
        // Data-In (one that stops reading would hold every LU reset for ever).
        tasks.settle(task, TaskState::Done);
        self.respond(&p, &cdb, edtl, read, write, outcome, &din)
    }

    /// Runs `cdb` on the LU the LUN field names.
    fn execute(&self, lun: &[u8; 8], cdb: &[u8], dout: &mut [u8], din: &mut [u8]) -> Outcome {
        let out_buf = [Buf::from(dout)];
        let in_buf = [Buf::from(din)];
        let data_out = DataOut::new(if out_buf[0].is_empty() { &[] } else { &out_buf });
        let data_in = DataIn::new(if in_buf[0].is_empty() { &[] } else { &in_buf });
        let target = &self.shared.target;
        if lun.iter().all(|&b| b == 0) {
            target.execute(&self.nexus, cdb, data_out, data_in, None)
        } else {
            target.execute_missing_lun(cdb, data_in)
        }
    }

    /// Data-In (with the status in the last PDU when it is GOOD), else a SCSI Response.
    #[allow(clippy::too_many_arguments)]
    fn respond(
        &mut self,
        p: &Pdu,
        cdb: &[u8],
        edtl: usize,
        read: bool,
        write: bool,
        o: Outcome,
        din: &[u8],
    ) -> Result<(), End> {
        let sent = if read {
            o.data_in.min(din.len()).min(edtl)
        } else {
            0
        };
        self.info.counters.bytes_out.fetch_add(sent as u64, Relaxed);
        let (flag, resid) = residual(cdb, edtl, read, write, sent);
        let collapse = o.status == GOOD && sent > 0;
        let mut data_sn = 0u32;
        let chunk = self.session.params.their_mrdsl.max(512);
        let mut off = 0;
        while off < sent {
            let n = chunk.min(sent - off);
            let last = off + n == sent;
            let burst_end = (off + n) % self.session.params.max_burst == 0;
            let mut f = if last || burst_end { 0x80 } else { 0 };
            if last && collapse {
                f |= 0x01 | flag;
            }
            let mut b = header(op::DATA_IN, f, p.itt());
            b[8..16].copy_from_slice(&p.lun());
            put(&mut b, 20, RESERVED_TAG);
            if last && collapse {
                b[3] = o.status;
                put(&mut b, 44, resid);
            }
            self.numbers(&mut b, last && collapse);
            put(&mut b, 36, data_sn);
            put(&mut b, 40, off as u32);
            self.send(b, &din[off..off + n])?;
            data_sn += 1;
            off += n;
        }
        if collapse {
            return Ok(());
        }
        let mut b = header(op::SCSI_RESPONSE, 0x80 | flag, p.itt());
        b[3] = o.status;
        self.numbers(&mut b, true);
        put(&mut b, 36, data_sn);
        put(&mut b, 44, resid);
        let data = o.sense.map(sense_data).unwrap_or_default();
        self.send(b, &data)
    }

    /// A write's data: immediate, unsolicited Data-Out (InitialR2T=No) and R2T-solicited
    /// bursts, each checked (TTT, DataSN, offset, length) against the command. `Data(None)`:
    /// an EDTL too large to hold; the unsolicited data was read and dropped, nothing solicited.
    fn collect(&mut self, cmd: &Pdu, edtl: usize) -> Result<Collected, End> {
        let prm = self.session.params;
        let imm = cmd.data.len();
        if imm > 0 && !prm.immediate_data {
            return Err(protocol("immediate data without ImmediateData=Yes"));
        }
        if imm > edtl || imm > prm.first_burst {
            return Err(protocol("immediate data beyond EDTL or FirstBurstLength"));
        }
        let keep = edtl <= MAX_DATA;
        let mut buf = Vec::with_capacity(if keep { edtl } else { 0 });
        if keep {
            buf.extend_from_slice(&cmd.data);
        }
        let mut received = imm;
        if !cmd.final_bit() {
            if prm.initial_r2t {
                return Err(protocol("unsolicited data with InitialR2T=Yes"));
            }
            let limit = prm.first_burst.min(edtl);
            match self.sequence(cmd, RESERVED_TAG, received, limit, &mut buf, keep)? {
                Ok(end) => received = end,
                Err(tmf) => return Ok(Collected::Aborted(tmf)),
            }
        }
        if !keep {
            return Ok(Collected::Data(None));
        }
        let mut r2t_sn = 0;
        while received < edtl {
            let len = prm.max_burst.min(edtl - received);
            let ttt = self.r2t(cmd, r2t_sn, received, len)?;
            r2t_sn += 1;
            match self.sequence(cmd, ttt, received, received + len, &mut buf, true)? {
                Ok(end) if end == received + len => received = end,
                Ok(_) => return Err(protocol("R2T burst ended short")),
                Err(tmf) => return Ok(Collected::Aborted(tmf)),
            }
        }
        Ok(Collected::Data(Some(buf)))
    }

    /// Sends an R2T for `len` bytes at `offset`; returns its Target Transfer Tag.
    fn r2t(&mut self, cmd: &Pdu, r2t_sn: u32, offset: usize, len: usize) -> Result<u32, End> {
        let ttt = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1).max(1) & 0x7fff_ffff;
        let mut b = header(op::R2T, 0x80, cmd.itt());
        b[8..16].copy_from_slice(&cmd.lun());
        put(&mut b, 20, ttt);
        self.numbers(&mut b, false);
        put(&mut b, 36, r2t_sn);
        put(&mut b, 40, offset as u32);
        put(&mut b, 44, len as u32);
        self.send(b, &[])?;
        Ok(ttt)
    }

    /// One data sequence of `cmd` with tag `ttt` from `start` up to `end` (the F bit ends it):
    /// DataSN from 0, offsets in order. `Ok(Err(tmf))`: a TMF aborting the command came.
    fn sequence(
        &mut self,
        cmd: &Pdu,
        ttt: u32,
        start: usize,
        end: usize,
        buf: &mut Vec<u8>,
        keep: bool,
    ) -> Result<Result<usize, Pdu>, End> {
        let mut offset = start;
        let mut data_sn = 0u32;
        loop {
            let p = match self.data_out_for(cmd.itt())? {
                Ok(p) => p,
                Err(tmf) => return Ok(Err(tmf)),
            };
            let len = p.data.len();
            if p.u32_at(20) != ttt {
                return Err(protocol(format!(
                    "Data-Out TTT {:#x}, expected {ttt:#x}",
                    p.u32_at(20)
                )));
            }
            if p.u32_at(36) != data_sn {
                return Err(protocol(format!(
                    "Data-Out DataSN {}, expected {data_sn}",
                    p.u32_at(36)
                )));
            }
            if p.u32_at(40) as usize != offset || offset + len > end {
                return Err(protocol(format!(
                    "Data-Out offset {} length {len}, expected offset {offset} up to {end}",
                    p.u32_at(40)
                )));
            }
            if keep {
                buf.extend_from_slice(&p.data);
            }
            offset += len;
            data_sn += 1;
            if p.final_bit() {
                return Ok(Ok(offset));
            }
        }
    }

    /// The next Data-Out of task `itt`; other PDUs wait in the queue, except immediate NOPs
    /// (answered now) and a TMF that aborts this task (`Err`).
    fn data_out_for(&mut self, itt: u32) -> Result<Result<Pdu, Pdu>, End> {
        let queued = self
            .pending
            .iter()
            .position(|p| p.opcode() == op::DATA_OUT && p.itt() == itt);
        if let Some(p) = queued.and_then(|i| self.pending.remove(i)) {
            self.pending_bytes -= p.data.len();
            return Ok(Ok(p));
        }
        loop {
            let p = self.read()?;
            match p.opcode() {
                op::DATA_OUT if p.itt() == itt => return Ok(Ok(p)),
                op::NOP_OUT if p.immediate() => self.nop_out(&p)?,
                op::TMF_REQUEST if aborts(&p, itt) => return Ok(Err(p)),
                op::LOGOUT_REQUEST => return Err(protocol("logout while a write's data was due")),
                _ if self.pending.len() >= MAX_PENDING
                    || self.pending_bytes + p.data.len() > MAX_PENDING_BYTES =>
                {
                    return Err(protocol("too many PDUs while a write's data was due"));
                }
                _ => {
                    self.pending_bytes += p.data.len();
                    self.pending.push_back(p);
                }
            }
        }
    }

    /// Task management (RFC 7143 §11.5) mapped onto what the SCSI core does for virtio-scsi.
    /// This session's commands run one at a time, so of its own only queued ones can be
    /// aborted; a function that aborts the nexus's or the LU's tasks also aborts them in the
    /// LU's task set (other transports' and sessions' commands: queued ones never do their I/O,
    /// in-flight ones are waited for) before it answers. `current`: the command this TMF
    /// interrupted (aborted, no response of its own).
    fn tmf(&mut self, p: &Pdu, current: Option<u32>) -> Result<(), End> {
        let admitted = self.admit_sn(p) || (current.is_some() && self.admit_ahead(p));
        if !admitted {
            return Ok(());
        }
        let function = p.flags() & 0x7f;
        let lun0 = p.lun().iter().all(|&b| b == 0);
        let res = &self.shared.target.lun().reservations;
        let tasks = &self.shared.target.lun().tasks;
        let response = match function {
            1 => {
                let r = p.u32_at(20);
                if current == Some(r)
                    || self.abort_queued(|q| q.itt() == r) > 0
                    || self.abort_not_received(p)
                {
                    0
                } else {
                    1
                }
            }
            2 | 4 | 5 if !lun0 => 2,
            2 | 4 => {
                self.abort_queued(|_| true);
                tasks.abort(Scope::Nexus(&self.nexus));
                0
            }
            3 => 255,
            5..=7 => {
                self.abort_queued(|_| true);
                tasks.abort(Scope::All);
                log::info!("{}: iscsi: logical unit reset (TMF {function})", self.nexus);
                res.with_mut(|a| a.logical_unit_reset());
                0
            }
            8 => 4,
            _ => 5,
        };
        let mut b = header(op::TMF_RESPONSE, 0x80, p.itt());
        b[2] = response;
        self.numbers(&mut b, true);
        self.send(b, &[])?;
        if function == 7 && response == 0 {
            return Err(End::ColdReset);
        }
        Ok(())
    }

    /// Marks queued SCSI commands `pick` selects as aborted; returns how many.
    fn abort_queued(&mut self, pick: impl Fn(&Pdu) -> bool) -> usize {
        let itts: Vec<u32> = self
            .pending
            .iter()
            .filter(|q| q.opcode() == op::SCSI_COMMAND && pick(q))
            .map(Pdu::itt)
            .collect();
        let n = itts.len();
        self.aborted.extend(itts);
        n
    }
}

/// Whether TMF `p` aborts task `itt` (of LUN 0): ABORT TASK naming it, a function that aborts
/// every task of the LU when it names LUN 0 (for another, [`Connection::tmf`] answers "LUN does
/// not exist" and aborts nothing), or a target reset.
fn aborts(p: &Pdu, itt: u32) -> bool {
    match p.flags() & 0x7f {
        1 => p.u32_at(20) == itt,
        2 | 4 | 5 => p.lun().iter().all(|&b| b == 0),
        6 | 7 => true,
        _ => false,
    }
}

/// The SCSI Response data segment: SenseLength, then fixed-format sense (RFC 7143 §11.4.7).
fn sense_data(s: Sense) -> Vec<u8> {
    let fixed = s.to_fixed();
    let mut d = Vec::with_capacity(2 + fixed.len());
    d.extend_from_slice(&(fixed.len() as u16).to_be_bytes());
    d.extend_from_slice(&fixed);
    d
}

/// The bytes a READ or WRITE CDB transfers; `None` for other commands.
fn implied_len(cdb: &[u8]) -> Option<usize> {
    match cdb::parse(cdb) {
        Ok(Command::Read(rw)) | Ok(Command::Write(rw)) => Some(rw.blocks as usize * 512),
        _ => None,
    }
}

/// The O/U flag and residual count (RFC 7143 §11.4.5.1): against the bytes a READ or WRITE
/// CDB implies when it is one, else against what was transferred.
fn residual(cdb: &[u8], edtl: usize, read: bool, write: bool, sent: usize) -> (u8, u32) {
    const OVER: u8 = 0x04;
    const UNDER: u8 = 0x02;
    let implied = implied_len(cdb);
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    match implied {
        Some(n) if (read || write || edtl == 0) && n > edtl => (OVER, count(n - edtl)),
        Some(n) if n < edtl => (UNDER, count(edtl - n)),
        Some(_) => (0, 0),
        None if read && sent < edtl => (UNDER, count(edtl - sent)),
        None => (0, 0),
    }
}

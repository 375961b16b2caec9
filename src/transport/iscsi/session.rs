//! The full feature phase of one connection (one session: MaxConnections=1, ERL 0): SCSI
//! commands with immediate, unsolicited and solicited (R2T) data, Data-In with status, SCSI
//! Response with sense, NOP, Text (SendTargets), TMF, Logout, Reject. This thread reads the
//! PDUs: it admits commands in CmdSN order, collects each write's data (PDUs that arrive
//! meanwhile wait in a bounded queue, their commands already in the LU's task set) and hands
//! the commands to the session's workers (`workers.rs`), which run them side by side and send
//! their responses.

use std::cell::Cell;
use std::collections::{HashSet, VecDeque};
use std::io::{self, BufReader, Read, Write};
use std::os::fd::RawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::keys::{self, OUR_MRDSL};
use super::login::{LoggedIn, SessionKind, CMD_WINDOW};
use super::pdu::{self, header, op, put, read_pdu, Pdu, PduError, RESERVED_TAG};
use super::workers::{implied_len, solicited, Handed, Hangup, Job, Link, TASK_SET_FULL};
use super::{SessionInfo, Shared};
use crate::scsi::tasks::{Scope, TaskId, TaskState};
use crate::transport::poller::Poller;

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
/// The ORDERED task attribute (SAM-5 §8.6; byte 1 of the SCSI Command BHS, bits 0-2).
const ORDERED: u8 = 2;

/// TMF response codes (RFC 7143 §11.6.1; 7 from RFC 7144 §4.1.2).
mod tmf_response {
    pub const COMPLETE: u8 = 0;
    pub const NO_TASK: u8 = 1;
    pub const NO_LUN: u8 = 2;
    pub const REASSIGN_NOT_SUPPORTED: u8 = 4;
    pub const NOT_SUPPORTED: u8 = 5;
    pub const SUCCEEDED: u8 = 7;
    pub const REJECTED: u8 = 255;
}

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
pub struct Connection<'s, R: Read, W: Write + Send> {
    shared: &'s Shared,
    reader: BufReader<R>,
    /// The writer, the numbers and the workers.
    link: Arc<Link<W>>,
    session: LoggedIn,
    /// The arbiter's name for this I_T nexus (`<initiator>,i,0x<ISID>`).
    nexus: String,
    /// `nexus`, as the LU's task set names it.
    nexus_tasks: Arc<str>,
    /// PDUs read while a write's data was due; SCSI commands among them are in the task set.
    pending: VecDeque<(Pdu, Option<TaskId>)>,
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
    /// The connection's socket, asked whether bytes wait on it before a command runs on this
    /// thread ([`Link::run_inline`]); `None`: never (an in-memory connection).
    socket: Option<RawFd>,
    /// A command was queued for the workers and its wake-up deferred while further PDUs wait
    /// in the reader's buffer: one worker is woken for the batch before the reader can block
    /// ([`Connection::kick`]).
    owed: Cell<bool>,
}

fn protocol(why: impl Into<String>) -> End {
    End::Protocol(why.into())
}

impl<'s, R: Read, W: Write + Send> Connection<'s, R, W> {
    pub fn new(
        shared: &'s Shared,
        (reader, writer, socket): (R, W, Option<RawFd>),
        session: LoggedIn,
        (nexus, info): (String, Arc<SessionInfo>),
        hangup: Hangup,
    ) -> Self {
        let nexus_tasks: Arc<str> = Arc::from(nexus.as_str());
        let numbers = (session.stat_sn, session.exp_cmd_sn);
        let link = Link::new(
            writer,
            session.params,
            numbers,
            (nexus_tasks.clone(), info.clone()),
            hangup,
        );
        Connection {
            shared,
            reader: BufReader::with_capacity(64 * 1024, reader),
            link: Arc::new(link),
            session,
            nexus_tasks,
            nexus,
            pending: VecDeque::new(),
            pending_bytes: 0,
            aborted: HashSet::new(),
            received_ahead: HashSet::new(),
            next_ttt: 1,
            info,
            socket,
            owed: Cell::new(false),
        }
    }

    /// Serves PDUs until the connection ends; the session's workers end with it, after the
    /// command each runs (queued ones are dropped: at ERL 0 they end without responses).
    /// `inline`: no workers, each command runs on this thread as it comes (in CmdSN order, one
    /// at a time: the in-memory connection of the fuzz target and unit tests, deterministic).
    pub fn run(&mut self, inline: bool) -> End {
        let (link, shared) = (self.link.clone(), self.shared);
        let end = std::thread::scope(|s| {
            if inline {
                let end = self.serve(&|| false);
                self.link.close();
                return end;
            }
            let spawn = || {
                let link = link.clone();
                let started = std::thread::Builder::new()
                    .name("iscsi-worker".into())
                    .spawn_scoped(s, move || link.worker(shared));
                if let Err(e) = &started {
                    log::warn!("iscsi: no worker thread: {e}");
                }
                started.is_ok()
            };
            let end = self.serve(&spawn);
            self.link.close();
            end
        });
        let tasks = &self.shared.target.lun().tasks;
        for (_, task) in self.pending.drain(..) {
            if let Some(t) = task {
                tasks.retire(t);
            }
        }
        end
    }

    fn serve(&mut self, spawn: &dyn Fn() -> bool) -> End {
        loop {
            let r = self.next().and_then(|(p, t)| self.dispatch(p, t, spawn));
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

    fn next(&mut self) -> Result<(Pdu, Option<TaskId>), End> {
        match self.pending.pop_front() {
            Some((p, t)) => {
                self.pending_bytes -= p.data.len();
                Ok((p, t))
            }
            None => Ok((self.read()?, None)),
        }
    }

    fn read(&mut self) -> Result<Pdu, End> {
        if !self.pdu_buffered() {
            self.kick();
            self.poll_socket();
        }
        match read_pdu(&mut self.reader, self.session.params.digests, OUR_MRDSL) {
            Ok(p) => Ok(p),
            Err(PduError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Err(End::Closed),
            Err(e) => Err(e.into()),
        }
    }

    fn dispatch(
        &mut self,
        p: Pdu,
        task: Option<TaskId>,
        spawn: &dyn Fn() -> bool,
    ) -> Result<(), End> {
        let discovery = self.session.kind == SessionKind::Discovery;
        match p.opcode() {
            op::NOP_OUT => self.nop_out(&p),
            op::TEXT_REQUEST => self.text(p),
            op::LOGOUT_REQUEST => self.logout(&p),
            op::SCSI_COMMAND if !discovery => self.scsi_command(p, task, spawn),
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

    /// Accounts a request's CmdSN: immediate ones pass; others must be the next expected and
    /// in the window, else they are dropped (RFC 7143 §3.2.2.1: outside the window, silently).
    /// `slot`: an admitted command holds a slot of the window until it is answered.
    fn admit_sn(&mut self, p: &Pdu, slot: bool) -> bool {
        if p.immediate() {
            return true;
        }
        let ahead = &mut self.received_ahead;
        if self.link.admit(p.cmd_sn(), slot, |sn| next_exp(sn, ahead)) {
            return true;
        }
        log::debug!(
            "{}: iscsi: CmdSN {} dropped (expected {}, or the window is full)",
            self.nexus,
            p.cmd_sn(),
            self.link.exp_cmd_sn()
        );
        false
    }

    /// A TMF that interrupted a write's data though commands with lower CmdSNs wait in the
    /// queue: it acts now (the write's data will not come), and its CmdSN, in the window, counts
    /// as received so that ExpCmdSN steps over it. Dropped, neither the write nor the TMF would
    /// ever be answered.
    fn admit_ahead(&mut self, p: &Pdu) -> bool {
        let ahead = p.cmd_sn().wrapping_sub(self.link.exp_cmd_sn());
        (1..CMD_WINDOW).contains(&ahead) && self.received_ahead.insert(p.cmd_sn())
    }

    /// ABORT TASK for a task that does not exist (RFC 7143 §11.5.1): when its RefCmdSN is in
    /// the window, not received yet and below the TMF's own CmdSN, that CmdSN counts as
    /// received (its command, should it come, is dropped) and the task as aborted.
    fn abort_not_received(&mut self, p: &Pdu) -> bool {
        let (ref_sn, exp) = (p.u32_at(32), self.link.exp_cmd_sn());
        let in_window = ref_sn.wrapping_sub(exp) < CMD_WINDOW;
        let before_tmf = (1..1 << 31).contains(&p.cmd_sn().wrapping_sub(ref_sn));
        if !(in_window && before_tmf) {
            return false;
        }
        if ref_sn == exp {
            let next = next_exp(ref_sn, &mut self.received_ahead);
            self.link.set_exp_cmd_sn(next);
        } else {
            self.received_ahead.insert(ref_sn);
        }
        true
    }

    /// Sends one PDU with the session's numbers; advances StatSN if `status`.
    fn send(&self, b: [u8; pdu::BHS_LEN], data: &[u8], status: bool) -> Result<(), End> {
        self.kick();
        Ok(self.link.send(b, data, status)?)
    }

    /// Wakes a worker for the commands queued without one ([`Connection::owed`]); called before
    /// anything that may block the reader (a read that needs the socket, a send, a wait).
    fn kick(&self) {
        if self.owed.replace(false) {
            self.link.wake_owed();
        }
    }

    /// Before the reader blocks on an empty buffer, it watches the socket for up to the
    /// daemon's `poll_us`, if a turn of the daemon-wide polling budget is free ([`Poller`]): a
    /// depth-1 initiator's next command, sent tens of µs after the last response, then costs
    /// the reader no sleep and wake-up (on an idle virtual machine, about as long as the command
    /// itself). The window does not adapt as a ring's does
    /// ([`crate::transport::poller::PollWindow`]): an initiator's turnaround hovers around it,
    /// and halving it on each miss lost the gain (docs/benchmarks.md).
    fn poll_socket(&self) {
        let Some(fd) = self.socket.filter(|_| self.reader.buffer().is_empty()) else {
            return;
        };
        let window = Duration::from_micros(self.shared.poll_us.load(Relaxed).into());
        if window.is_zero() {
            return;
        }
        let Some(_turn) = Poller::take() else {
            return;
        };
        let deadline = Instant::now() + window;
        while nothing_waiting(fd) && Instant::now() < deadline {
            std::hint::spin_loop();
        }
    }

    /// Whether a whole PDU waits in the reader's buffer (reading it will not block).
    fn pdu_buffered(&self) -> bool {
        let b = self.reader.buffer();
        b.len() >= pdu::BHS_LEN && b.len() >= pdu::wire_len(b, self.session.params.digests)
    }

    /// Waits until no command whose ITT `pick` selects is handed over and unfinished.
    fn wait_finished(&self, pick: impl Fn(u32) -> bool) {
        self.kick();
        self.link.wait_finished(pick);
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
        self.send(b, &p.bhs, true)
    }

    fn nop_out(&mut self, p: &Pdu) -> Result<(), End> {
        if !self.admit_sn(p, false) {
            return Ok(());
        }
        // ITT 0xffffffff: an answer to our ping, or a ping wanting no answer.
        if p.itt() == RESERVED_TAG {
            return Ok(());
        }
        let mut b = header(op::NOP_IN, 0x80, p.itt());
        b[8..16].copy_from_slice(&p.lun());
        put(&mut b, 20, RESERVED_TAG);
        let n = p.data.len().min(self.session.params.their_mrdsl);
        self.send(b, &p.data[..n], true)
    }

    fn logout(&mut self, p: &Pdu) -> Result<(), End> {
        self.admit_sn(p, false);
        let reason = p.flags() & 0x7f;
        let mut b = header(op::LOGOUT_RESPONSE, 0x80, p.itt());
        // Reason 2 (remove the connection for recovery) needs ERL 2: "recovery not supported".
        b[2] = if reason == 2 { 2 } else { 0 };
        if reason != 2 {
            // The session's commands are answered before the Logout Response (RFC 7143
            // §11.14: it is the last PDU of the connection).
            self.wait_finished(|_| true);
        }
        self.send(b, &[], true)?;
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
            self.send(b, &[], true)?;
            p = self.read()?;
            if p.opcode() != op::TEXT_REQUEST || text.len() + p.data.len() > MAX_TEXT {
                return Err(protocol("text request continuation"));
            }
            text.extend_from_slice(&p.data);
        }
        if !self.admit_sn(&p, false) {
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
        self.send(b, &data, true)
    }

    /// A SCSI command, in CmdSN order: admitted (or dropped), its data collected, handed to the
    /// workers. `task`: its entry in the LU's task set when it waited in the PDU queue.
    fn scsi_command(
        &mut self,
        p: Pdu,
        task: Option<TaskId>,
        spawn: &dyn Fn() -> bool,
    ) -> Result<(), End> {
        let tasks = &self.shared.target.lun().tasks;
        // Forgotten whether its CmdSN admits it or drops it: the ITT is free again either way.
        let aborted = self.aborted.remove(&p.itt());
        let admitted = self.admit_sn(&p, true);
        if !admitted || aborted {
            if admitted && !p.immediate() {
                self.link.free_slot();
            }
            if let Some(t) = task {
                tasks.retire(t);
            }
            return Ok(());
        }
        if p.immediate() && !self.link.take_immediate() {
            if let Some(t) = task {
                tasks.retire(t);
            }
            return self.task_set_full(&p);
        }
        self.info.counters.commands.fetch_add(1, Relaxed);
        // In the LU's task set from here to its response, so that a TMF from another nexus
        // (any transport) aborts it before it runs, or waits for it while it runs.
        let task = task.unwrap_or_else(|| {
            tasks.enter(&self.nexus_tasks, u64::from(p.itt()), TaskState::Queued)
        });
        self.command(p, task, spawn)
    }

    /// An admitted SCSI command in the task set as `task`: its data, then to the workers.
    fn command(&mut self, p: Pdu, task: TaskId, spawn: &dyn Fn() -> bool) -> Result<(), End> {
        let (read, write) = (p.flags() & 0x40 != 0, p.flags() & 0x20 != 0);
        let (itt, immediate) = (p.itt(), p.immediate());
        let edtl = p.u32_at(20) as usize;
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
        let held = room + if write && edtl <= MAX_DATA { edtl } else { 0 };
        // ORDERED (SAM-5 §8.6): after every command before it, before every command after it.
        let ordered = p.flags() & 0x07 == ORDERED;
        if ordered {
            self.wait_finished(|_| true);
        }
        self.link.reserve(held, || self.kick());
        let data_out = if write {
            match self.collect(&p, edtl, solicited(&cdb, edtl)) {
                Ok(Collected::Data(d)) => d,
                Ok(Collected::Aborted(tmf)) => {
                    self.abandon(task, immediate, held);
                    return self.tmf(&tmf, Some(itt));
                }
                Err(e) => {
                    self.abandon(task, immediate, held);
                    return Err(e);
                }
            }
        } else {
            Some(Vec::new())
        };
        let valid = !(ext_cdb || (read && write) || edtl > MAX_DATA);
        let job = Job {
            itt,
            lun: p.lun(),
            cdb,
            task,
            edtl,
            read,
            write,
            data_out: data_out.filter(|_| valid),
            room,
            held,
            immediate,
        };
        let idle = || self.reader.buffer().is_empty() && self.socket.is_some_and(nothing_waiting);
        let handed = self.link.run_inline(self.shared, job, idle);
        if let Some(job) = handed {
            match self.link.submit(job, spawn, self.pdu_buffered()) {
                Handed::Queued => {}
                Handed::Owed => self.owed.set(true),
                Handed::NoWorker => self.link.run_queued(self.shared),
            }
        }
        if ordered {
            self.wait_finished(|i| i == itt);
        }
        Ok(())
    }

    /// A command that will not reach a worker: out of the task set, its slot and bytes free.
    fn abandon(&self, task: TaskId, immediate: bool, held: usize) {
        self.shared.target.lun().tasks.retire(task);
        self.link.abandon(immediate, held);
    }

    /// An immediate command beyond [`super::workers::MAX_IMMEDIATE`]: TASK SET FULL (SAM-5
    /// §5.3.1), not run.
    fn task_set_full(&mut self, p: &Pdu) -> Result<(), End> {
        let mut b = header(op::SCSI_RESPONSE, 0x80, p.itt());
        b[3] = TASK_SET_FULL;
        self.send(b, &[], true)
    }

    /// A write's data: immediate, unsolicited Data-Out (InitialR2T=No), both up to EDTL, and
    /// R2T-solicited bursts up to `want`, each checked (TTT, DataSN, offset, length) against the
    /// command. `Data(None)`: an EDTL too large to hold; the unsolicited data was read and
    /// dropped, nothing solicited.
    fn collect(&mut self, cmd: &Pdu, edtl: usize, want: usize) -> Result<Collected, End> {
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
        while received < want {
            let len = prm.max_burst.min(want - received);
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
        put(&mut b, 36, r2t_sn);
        put(&mut b, 40, offset as u32);
        put(&mut b, 44, len as u32);
        self.send(b, &[], false)?;
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
            .position(|(p, _)| p.opcode() == op::DATA_OUT && p.itt() == itt);
        if let Some((p, _)) = queued.and_then(|i| self.pending.remove(i)) {
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
                _ => self.queue(p),
            }
        }
    }

    /// Task management (RFC 7143 §11.5, RFC 7144 §4.1) mapped onto what the SCSI core does for
    /// virtio-scsi. A function that aborts marks the tasks it names in the LU's task set (this
    /// session's, queued for a worker or waiting in the PDU queue, and other transports' and
    /// sessions': queued ones never do their I/O, in-flight ones are waited for), drops this
    /// session's queued commands, and answers once this session's affected commands have
    /// finished (their responses, if any, sent before the TMF's: this session's own ABORT TASK
    /// and ABORT TASK SET leave the tasks they name unanswered). `current`: the command whose
    /// data this TMF interrupted (aborted, no response of its own).
    fn tmf(&mut self, p: &Pdu, current: Option<u32>) -> Result<(), End> {
        let admitted = self.admit_sn(p, false) || (current.is_some() && self.admit_ahead(p));
        if !admitted {
            return Ok(());
        }
        let function = p.flags() & 0x7f;
        let lun0 = p.lun().iter().all(|&b| b == 0);
        let lun = self.shared.target.lun();
        let me = self.nexus_tasks.clone();
        let nexus = Scope::Nexus(&me);
        let response = match function {
            1 => self.abort_task(p, current),
            2 | 4 | 5 | 9 | 10 if !lun0 => tmf_response::NO_LUN,
            2 | 4 | 11 => {
                self.abort_queued(|_| true);
                // ABORT TASK SET and CLEAR TASK SET: no response for a task in flight either;
                // I_T NEXUS RESET answers it as it ended (a nexus loss, as a TMF of another
                // nexus or transport does).
                if function == 11 {
                    lun.tasks.abort(nexus);
                } else {
                    lun.tasks.abort_own(nexus);
                }
                self.wait_finished(|_| true);
                if function == 11 {
                    log::info!("{}: iscsi: I_T nexus reset", self.nexus);
                    lun.reservations
                        .with_mut(|a| a.i_t_nexus_reset(&self.nexus));
                }
                tmf_response::COMPLETE
            }
            3 => tmf_response::REJECTED,
            5..=7 => {
                self.abort_queued(|_| true);
                lun.tasks.abort(Scope::All);
                self.wait_finished(|_| true);
                log::info!("{}: iscsi: logical unit reset (TMF {function})", self.nexus);
                lun.reservations.with_mut(|a| a.logical_unit_reset());
                tmf_response::COMPLETE
            }
            8 => tmf_response::REASSIGN_NOT_SUPPORTED,
            // QUERY TASK, QUERY TASK SET (SAM-5 §7.9, §7.10): whether the task, or any task of
            // the nexus, is in the task set.
            9 | 10 => {
                let scope = if function == 9 {
                    Scope::Task(&me, u64::from(p.u32_at(20)))
                } else {
                    nexus
                };
                if lun.tasks.contains(scope) {
                    tmf_response::SUCCEEDED
                } else {
                    tmf_response::COMPLETE
                }
            }
            _ => tmf_response::NOT_SUPPORTED,
        };
        let mut b = header(op::TMF_RESPONSE, 0x80, p.itt());
        b[2] = response;
        self.send(b, &[], true)?;
        if function == 7 && response == tmf_response::COMPLETE {
            return Err(End::ColdReset);
        }
        Ok(())
    }

    /// ABORT TASK: the task with the Referenced Task Tag, wherever it is (the write whose data
    /// this TMF interrupted, the PDU queue, the workers' queue, in flight), or one never
    /// received ([`Connection::abort_not_received`]); answered once it has finished.
    fn abort_task(&mut self, p: &Pdu, current: Option<u32>) -> u8 {
        let r = p.u32_at(20);
        let tasks = &self.shared.target.lun().tasks;
        let in_set = tasks.abort_own(Scope::Task(&self.nexus, u64::from(r))) > 0;
        let queued = self.abort_queued(|q| q.itt() == r) > 0;
        let found = current == Some(r) || in_set || queued || self.abort_not_received(p);
        self.wait_finished(|i| i == r);
        if found {
            tmf_response::COMPLETE
        } else {
            tmf_response::NO_TASK
        }
    }

    /// Marks queued SCSI commands `pick` selects as aborted; returns how many.
    fn abort_queued(&mut self, pick: impl Fn(&Pdu) -> bool) -> usize {
        let itts: Vec<u32> = self
            .pending
            .iter()
            .map(|(q, _)| q)
            .filter(|q| q.opcode() == op::SCSI_COMMAND && pick(q))
            .map(Pdu::itt)
            .collect();
        let n = itts.len();
        self.aborted.extend(itts);
        n
    }

    /// Queues a PDU read while a write's data is due; a SCSI command enters the LU's task set
    /// now, so that any nexus's TMF aborts it there.
    fn queue(&mut self, p: Pdu) {
        let task = (p.opcode() == op::SCSI_COMMAND).then(|| {
            let tasks = &self.shared.target.lun().tasks;
            tasks.enter(&self.nexus_tasks, u64::from(p.itt()), TaskState::Queued)
        });
        self.pending_bytes += p.data.len();
        self.pending.push_back((p, task));
    }
}

/// Whether no byte waits to be read on socket `fd` (FIONREAD); false when it cannot tell.
fn nothing_waiting(fd: RawFd) -> bool {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which points at `n`; `fd` is the
    // connection's socket, open while the connection (which owns it) lives.
    let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    r == 0 && n == 0
}

/// ExpCmdSN after `sn` was received: past it, and past the CmdSNs in `ahead` (counted as
/// received already) that follow it.
fn next_exp(sn: u32, ahead: &mut HashSet<u32>) -> u32 {
    let mut e = sn.wrapping_add(1);
    while ahead.remove(&e) {
        e = e.wrapping_add(1);
    }
    e
}

/// Whether TMF `p` aborts task `itt` (of LUN 0): ABORT TASK naming it, a function that aborts
/// every task of the LU when it names LUN 0 (for another, [`Connection::tmf`] answers "LUN does
/// not exist" and aborts nothing), a target reset or an I_T nexus reset.
fn aborts(p: &Pdu, itt: u32) -> bool {
    match p.flags() & 0x7f {
        1 => p.u32_at(20) == itt,
        2 | 4 | 5 => p.lun().iter().all(|&b| b == 0),
        6 | 7 | 11 => true,
        _ => false,
    }
}

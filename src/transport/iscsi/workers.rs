//! The commands of one session run side by side. The connection's reader (`session.rs`) admits
//! each SCSI command in CmdSN order, collects its write data and hands it, entered in the LU's
//! task set, to the session's workers: threads started as the depth needs them (at most
//! [`MAX_WORKERS`], never one per command) that end with the connection. A worker runs the
//! command through the SCSI core and sends its Data-In and status; every PDU of the session goes
//! out through one writer (`writer.rs`), which numbers it (StatSN) and advertises the window:
//! MaxCmdSN = ExpCmdSN − 1 + the window's free slots, a slot being held by each non-immediate
//! command from its admission to its response, so that no more than [`CMD_WINDOW`] commands are
//! outstanding and the window never shrinks (RFC 7143 §3.2.2.1).
//!
//! A command that would wait for a worker to wake while the session is idle runs on the reader
//! instead ([`Link::run_inline`]): when no other command of the session is outstanding, no
//! further byte waits on the connection and the session's last [`INLINE_STREAK`] commands of
//! its kind (read, write, neither) each did their I/O within [`INLINE_FAST`]. A depth-1
//! initiator so pays no thread wake-up per command; a command that arrives meanwhile waits for
//! the inline one (which its kind's history says is short), and a session whose commands are
//! slow (a slow disk, a delayed write) always hands them over, so none waits behind them.
//!
//! At depth the session's workers cost no wake-up per command either: a command of a fast kind
//! queued while a worker runs a fast command stays in the queue for that worker, up to [`BATCH`]
//! for each ([`Link::batches`]), and the reader, when further PDUs wait in its buffer, defers the
//! wake-up a command needs to the end of the batch ([`Handed::Owed`]): one worker wakes for the
//! batch, and a worker that takes a command wakes another when the rest of the queue needs one.
//! The bet is the one made for a command run on the reader: a command that turns out slower
//! than its kind's history holds the commands queued behind it, once (it resets the history).
//!
//! What the session's commands hold at once is bounded: [`MAX_HELD`] bytes of data buffers (the
//! reader waits for workers before it takes more), [`CMD_WINDOW`] non-immediate commands and
//! [`MAX_IMMEDIATE`] immediate ones (more get TASK SET FULL).

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::keys::Params;
use super::login::CMD_WINDOW;
use super::pdu::{self, header, op, put, RESERVED_TAG};
use super::writer::{Outgoing, Writer};
use super::{SessionInfo, Shared};
use crate::image::buffers::Buf;
use crate::scsi::cdb::{self, Command};
use crate::scsi::data::{DataIn, DataOut};
use crate::scsi::pages;
use crate::scsi::sense::{self, Sense};
use crate::scsi::target::{Outcome, CHECK_CONDITION, GOOD};
use crate::scsi::tasks::{TaskId, TaskState};
use crate::util::lock::lock;

/// Worker threads of one session at most: commands beyond them wait in the session's queue
/// (in the task set, queued) for the next free one.
pub(super) const MAX_WORKERS: usize = 8;
/// Bytes of data buffers (write data collected, room for read data) the session's commands hold
/// at once; one command alone may take up to the LU's largest transfer (4 MiB) in any case.
pub(super) const MAX_HELD: usize = 16 << 20;
/// Immediate SCSI commands outstanding at once (they take no slot of the CmdSN window).
pub(super) const MAX_IMMEDIATE: usize = 8;

/// A command runs on the reader only after this many commands of its kind in a row did their
/// I/O within [`INLINE_FAST`].
pub(super) const INLINE_STREAK: u32 = 4;
/// The I/O time under which a command counts as fast for [`INLINE_STREAK`]: what a command that
/// arrives while one runs on the reader may expect to wait.
pub(super) const INLINE_FAST: Duration = Duration::from_micros(200);

/// Commands of a fast kind that may wait in the queue for each worker running a fast command,
/// rather than wake another worker ([`Link::batches`]).
pub(super) const BATCH: usize = 16;

/// The SAM status TASK SET FULL.
pub(super) const TASK_SET_FULL: u8 = 0x28;

/// The CmdSN window, apart from the writer so that the reader admits commands while a worker's
/// Data-In waits for the initiator to read.
#[derive(Clone, Copy)]
struct Window {
    exp_cmd_sn: u32,
    /// Non-immediate commands admitted and not answered: slots of the window taken.
    used: u32,
}

impl Window {
    /// ExpCmdSN and MaxCmdSN: ExpCmdSN − 1 + the free slots.
    fn numbers(self) -> (u32, u32) {
        let free = CMD_WINDOW.saturating_sub(self.used);
        (
            self.exp_cmd_sn,
            self.exp_cmd_sn.wrapping_add(free).wrapping_sub(1),
        )
    }
}

/// Commands handed to workers, and the workers.
#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    workers: usize,
    /// Workers waiting for a command.
    idle: usize,
    /// Idle workers signalled and not awake yet: a command queued while every idle worker
    /// is signalled already wakes none (the signalled ones take the queue until it is empty).
    signalled: usize,
    /// Threads waiting for a command to finish ([`Link::reserve`], [`Link::wait_finished`]):
    /// a command that finishes while there are none signals nobody (no system call).
    finish_waiters: usize,
    /// Workers running a command whose kind's history was fast when it started: each takes
    /// the next queued command when it ends ([`Link::batches`]).
    fast_running: usize,
    /// The connection ended: queued commands are dropped, workers end.
    closing: bool,
    /// ITTs of the commands handed over and not finished (their response sent or dropped).
    active: HashMap<u32, usize>,
    /// Bytes of data buffers reserved ([`MAX_HELD`]).
    held: usize,
    /// Immediate commands outstanding ([`MAX_IMMEDIATE`]).
    immediate: usize,
}

/// One admitted SCSI command, its write data collected, ready to run.
pub(super) struct Job {
    pub itt: u32,
    pub lun: [u8; 8],
    pub cdb: [u8; 16],
    pub task: TaskId,
    pub edtl: usize,
    pub read: bool,
    pub write: bool,
    /// The write data; `None` when the command is refused (05/24/00) without running.
    pub data_out: Option<Vec<u8>>,
    /// Bytes of read data to make room for.
    pub room: usize,
    /// Bytes reserved for it ([`Link::reserve`]).
    pub held: usize,
    pub immediate: bool,
}

/// What the reader and the workers of one connection share.
pub(super) struct Link<W: Write> {
    /// Every PDU of the connection goes out through it, numbered.
    out: Writer<W>,
    window: Mutex<Window>,
    state: Mutex<State>,
    /// Signalled when a command is queued or the connection ends.
    work: Condvar,
    /// Signalled when a command finishes.
    done: Condvar,
    params: Params,
    nexus: Arc<str>,
    info: Arc<SessionInfo>,
    /// Closes the connection when a response cannot be sent (the initiator took nothing for
    /// `send_timeout_s`, or the connection broke), so that its reader, waiting for the next
    /// PDU, ends the session and frees its share.
    hangup: Hangup,
    /// Per kind of command ([`Job::kind`]): how many in a row did their I/O within
    /// [`INLINE_FAST`].
    fast: [AtomicU32; 3],
}

impl Job {
    /// Its kind, as [`Link::run_inline`] keeps their history: 0 read, 1 write, 2 neither.
    fn kind(&self) -> usize {
        match (self.read, self.write) {
            (true, _) => 0,
            (false, true) => 1,
            (false, false) => 2,
        }
    }
}

/// What [`Link::submit`] did with a command.
pub(super) enum Handed {
    /// Queued for a worker that runs, or was woken or started.
    Queued,
    /// Queued, and the wake-up of an idle worker deferred: the caller owes a
    /// [`Link::wake_owed`] before it blocks.
    Owed,
    /// Queued, but no worker runs at all (none could be started): the caller runs the queue
    /// itself ([`Link::run_queued`]).
    NoWorker,
}

/// Closes a connection from any thread (shuts its socket down).
pub(super) type Hangup = Box<dyn Fn() + Send + Sync>;

impl<W: Write> Link<W> {
    pub fn new(
        writer: W,
        params: Params,
        (stat_sn, exp_cmd_sn): (u32, u32),
        (nexus, info): (Arc<str>, Arc<SessionInfo>),
        hangup: Hangup,
    ) -> Self {
        Link {
            out: Writer::new(writer, stat_sn, params.digests),
            window: Mutex::new(Window {
                exp_cmd_sn,
                used: 0,
            }),
            state: Mutex::default(),
            work: Condvar::new(),
            done: Condvar::new(),
            params,
            nexus,
            info,
            fast: Default::default(),
            hangup,
        }
    }

    fn window(&self) -> MutexGuard<'_, Window> {
        lock(&self.window)
    }

    /// Whether a non-immediate request with `cmd_sn` is the next expected and in the window; if
    /// so ExpCmdSN becomes `next` (past it and past CmdSNs counted as received already) and,
    /// with `slot`, it takes a slot of the window until [`Link::free_slot`].
    pub fn admit(&self, cmd_sn: u32, slot: bool, next: impl FnOnce(u32) -> u32) -> bool {
        let mut w = self.window();
        if cmd_sn != w.exp_cmd_sn || w.used >= CMD_WINDOW {
            return false;
        }
        w.exp_cmd_sn = next(cmd_sn);
        w.used += u32::from(slot);
        true
    }

    /// ExpCmdSN now.
    pub fn exp_cmd_sn(&self) -> u32 {
        self.window().exp_cmd_sn
    }

    /// Sets ExpCmdSN (a CmdSN counted as received without its command).
    pub fn set_exp_cmd_sn(&self, sn: u32) {
        self.window().exp_cmd_sn = sn;
    }

    /// A command that took a slot ends without reaching a worker.
    pub fn free_slot(&self) {
        let mut w = self.window();
        w.used = w.used.saturating_sub(1);
    }

    /// Sends one PDU with StatSN, ExpCmdSN and MaxCmdSN filled in; advances StatSN if
    /// `status`.
    pub fn send(&self, bhs: [u8; pdu::BHS_LEN], data: &[u8], status: bool) -> io::Result<()> {
        let pdu = Outgoing { bhs, data, status };
        self.out.send(&[pdu], || self.window().numbers())
    }

    /// Reserves `n` bytes of data buffers, waiting for commands to finish while the session
    /// holds too much (never while it holds nothing); `before_wait` is called once before it
    /// waits.
    pub fn reserve(&self, n: usize, before_wait: impl FnOnce()) {
        let mut s = lock(&self.state);
        let mut before_wait = Some(before_wait);
        while s.held > 0 && s.held + n > MAX_HELD {
            if let Some(f) = before_wait.take() {
                drop(s);
                f();
                s = lock(&self.state);
                continue;
            }
            s = self.wait_done(s);
        }
        s.held += n;
    }

    /// Returns bytes [`Link::reserve`] took for a command that does not reach a worker.
    fn unreserve(&self, n: usize) {
        let mut s = lock(&self.state);
        s.held -= n;
        self.finished(s);
    }

    /// Waits for a command to finish.
    fn wait_done<'a>(&self, mut s: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        s.finish_waiters += 1;
        let mut s = wait(&self.done, s);
        s.finish_waiters -= 1;
        s
    }

    /// A command finished (the state changed under `s`): wakes the threads waiting for one.
    fn finished(&self, s: MutexGuard<'_, State>) {
        let wake = s.finish_waiters > 0;
        drop(s);
        if wake {
            self.done.notify_all();
        }
    }

    /// Counts an immediate command in, unless [`MAX_IMMEDIATE`] are outstanding.
    pub fn take_immediate(&self) -> bool {
        let mut s = lock(&self.state);
        if s.immediate >= MAX_IMMEDIATE {
            return false;
        }
        s.immediate += 1;
        true
    }

    /// A command that took a slot (or counted as immediate) and bytes ends without reaching a
    /// worker.
    pub fn abandon(&self, immediate: bool, held: usize) {
        if immediate {
            let mut s = lock(&self.state);
            s.immediate = s.immediate.saturating_sub(1);
        } else {
            self.free_slot();
        }
        self.unreserve(held);
    }

    /// Hands `job` to the workers; `spawn` starts one more when none is idle and fewer than
    /// [`MAX_WORKERS`] run. `defer`: more commands follow at once, so the wake-up of an idle
    /// worker is left to the caller ([`Handed::Owed`]), one for the batch.
    pub fn submit(&self, job: Job, spawn: &dyn Fn() -> bool, defer: bool) -> Handed {
        let mut s = lock(&self.state);
        *s.active.entry(job.itt).or_default() += 1;
        let fast = self.is_fast(&job);
        s.queue.push_back(job);
        let batched = self.batches(&s, fast);
        // Batched, a command wakes no worker; but one is started when none is idle, so that
        // one is there to wake should a running command turn out slow.
        let wake = !batched && s.idle > s.signalled;
        let room = s.workers < MAX_WORKERS;
        let start = room
            && if batched {
                s.idle == 0
            } else {
                s.idle < s.queue.len()
            };
        if wake && defer && !start {
            return Handed::Owed;
        }
        if !(wake || start) {
            return Handed::Queued;
        }
        if start {
            s.workers += 1;
        }
        s.signalled += usize::from(wake);
        drop(s);
        if wake {
            self.work.notify_one();
        }
        if start && !spawn() {
            let mut s = lock(&self.state);
            s.workers -= 1;
            if s.workers == 0 {
                return Handed::NoWorker;
            }
        }
        Handed::Queued
    }

    /// Wakes an idle worker for queued commands, unless one is signalled already (the one woken
    /// wakes others when the queue needs them, [`Link::next_job`]).
    pub fn wake_owed(&self) {
        let mut s = lock(&self.state);
        let wake = !s.queue.is_empty() && s.idle > s.signalled && s.signalled == 0;
        s.signalled += usize::from(wake);
        drop(s);
        if wake {
            self.work.notify_one();
        }
    }

    /// Whether the last [`INLINE_STREAK`] commands of `job`'s kind did their I/O within
    /// [`INLINE_FAST`].
    fn is_fast(&self, job: &Job) -> bool {
        self.fast[job.kind()].load(Relaxed) >= INLINE_STREAK
    }

    /// Whether a queued command of a fast kind (`fast`) is left in the queue, waking no worker:
    /// workers running fast commands take the queue as each ends, up to [`BATCH`] queued
    /// commands for each, so that a deep queue of fast commands costs no wake-up (a system call
    /// and a context switch each) per command. A command that turns out slower than its kind's
    /// history holds the commands queued behind it (the same bet, and limit, as a command run
    /// on the reader); it resets the history, and its worker wakes others for the rest.
    fn batches(&self, s: &State, fast: bool) -> bool {
        fast && s.fast_running > 0 && s.queue.len() <= s.fast_running * BATCH
    }

    /// Runs `job` on this thread (the reader's) when the session is idle: nothing queued or
    /// running, and its kind's last [`INLINE_STREAK`] commands were fast; `socket_idle` says
    /// whether no further byte waits on the connection (asked last, under the state's lock). Gives `job` back otherwise (to
    /// [`Link::submit`]).
    pub fn run_inline(
        &self,
        shared: &Shared,
        job: Job,
        socket_idle: impl FnOnce() -> bool,
    ) -> Option<Job> {
        if !self.is_fast(&job) {
            return Some(job);
        }
        {
            let mut s = lock(&self.state);
            if !(s.queue.is_empty() && s.active.is_empty() && socket_idle()) {
                return Some(job);
            }
            s.active.insert(job.itt, 1);
        }
        self.info.counters.inline.fetch_add(1, Relaxed);
        self.run_and_finish(shared, job, false);
        None
    }

    /// Runs the queued commands on this thread (no worker could be started).
    pub fn run_queued(&self, shared: &Shared) {
        loop {
            let next = {
                let mut s = lock(&self.state);
                let closing = s.closing;
                s.queue.pop_front().map(|j| (j, closing))
            };
            let Some((job, closing)) = next else {
                return;
            };
            self.run_and_finish(shared, job, closing);
        }
    }

    /// Waits until no command whose ITT `pick` selects is handed over and unfinished.
    pub fn wait_finished(&self, pick: impl Fn(u32) -> bool) {
        let mut s = lock(&self.state);
        while s.active.keys().any(|&itt| pick(itt)) {
            s = self.wait_done(s);
        }
    }

    /// The connection ended: queued commands are dropped, the workers end (after the command
    /// each runs).
    pub fn close(&self) {
        lock(&self.state).closing = true;
        self.work.notify_all();
    }

    /// A worker: runs queued commands until the connection ends.
    pub fn worker(&self, shared: &Shared) {
        while let Some((job, closing, fast)) = self.next_job() {
            self.run_counted(shared, job, closing, fast);
        }
    }

    /// Runs `job`, then counts it out of what the session holds.
    fn run_and_finish(&self, shared: &Shared, job: Job, closing: bool) {
        self.run_counted(shared, job, closing, false);
    }

    /// [`Link::run_and_finish`]; `fast`: it counted in [`State::fast_running`].
    fn run_counted(&self, shared: &Shared, job: Job, closing: bool, fast: bool) {
        let itt = job.itt;
        let (held, immediate) = (job.held, job.immediate);
        self.run(shared, job, closing);
        let mut s = lock(&self.state);
        if let Some(n) = s.active.get_mut(&itt) {
            *n -= 1;
            if *n == 0 {
                s.active.remove(&itt);
            }
        }
        s.held -= held;
        s.immediate -= usize::from(immediate);
        s.fast_running -= usize::from(fast);
        self.finished(s);
    }

    /// The next queued command, whether the connection ended and whether it counts as fast
    /// ([`State::fast_running`]); `None`: none will come. When commands remain queued that
    /// this worker's would not hold ([`Link::batches`]), it wakes another worker for them.
    fn next_job(&self) -> Option<(Job, bool, bool)> {
        let mut s = lock(&self.state);
        loop {
            if let Some(j) = s.queue.pop_front() {
                let fast = self.is_fast(&j);
                s.fast_running += usize::from(fast);
                let rest_fast = s.queue.front().is_some_and(|n| self.is_fast(n));
                let wake =
                    !s.queue.is_empty() && !self.batches(&s, rest_fast) && s.idle > s.signalled;
                s.signalled += usize::from(wake);
                let closing = s.closing;
                drop(s);
                if wake {
                    self.work.notify_one();
                }
                return Some((j, closing, fast));
            }
            if s.closing {
                s.workers -= 1;
                return None;
            }
            s.idle += 1;
            s = wait(&self.work, s);
            s.idle -= 1;
            s.signalled = s.signalled.saturating_sub(1);
        }
    }

    /// One command: its I/O unless a TMF aborted it (or the connection ended) before it
    /// started, then its response.
    fn run(&self, shared: &Shared, mut job: Job, closing: bool) {
        let tasks = &shared.target.lun().tasks;
        if closing || !tasks.begin_io(job.task) {
            // No response of its own (RFC 7143 §11.5.1; at ERL 0 a lost connection's tasks
            // end without one); its slot of the window is free again.
            log::info!("{}: iscsi: task {:#x} aborted", self.nexus, job.itt);
            if !job.immediate {
                self.free_slot();
            }
            tasks.retire(job.task);
            return;
        }
        if let Some(d) = &job.data_out {
            self.info
                .counters
                .bytes_in
                .fetch_add(d.len() as u64, Relaxed);
        }
        let mut din = vec![0u8; job.room];
        let started = Instant::now();
        let num_blocks = shared.target.num_blocks();
        let outcome = match (
            job.data_out.as_mut(),
            fit_write(&job.cdb, job.edtl, num_blocks),
        ) {
            (Some(dout), Ok(cdb)) => execute(shared, &self.nexus, &job.lun, &cdb, dout, &mut din),
            (None, _) => refused(sense::INVALID_FIELD_IN_CDB),
            (Some(_), Err(s)) => refused(s),
        };
        let fast = &self.fast[job.kind()];
        if started.elapsed() >= INLINE_FAST {
            fast.store(0, Relaxed);
        } else if fast.load(Relaxed) < INLINE_STREAK {
            fast.fetch_add(1, Relaxed);
        }
        // Its I/O ended: a TMF of another nexus no longer waits for it, whether or not the
        // initiator reads its Data-In (one that stops reading would hold every LU reset for
        // ever); one of this session waits for its response ([`Link::wait_finished`]).
        tasks.settle(job.task, TaskState::Done);
        if let Err(e) = self.respond(shared, &job, outcome, &din) {
            log::info!(
                "{}: iscsi: response to {:#x} not sent ({e}): closing the connection",
                self.nexus,
                job.itt
            );
            (self.hangup)();
        }
    }

    /// Data-In (with the status in the last PDU when it is GOOD), else a SCSI Response; the
    /// command's slot of the window is free in the numbers it carries, and it has left the task
    /// set before the initiator can see its status (a QUERY TASK after it finds no task).
    /// A task its own nexus aborted while it ran (ABORT TASK, ABORT TASK SET) gets no response.
    /// A unit attention such a task took stays pending.
    fn respond(&self, shared: &Shared, job: &Job, o: Outcome, din: &[u8]) -> io::Result<()> {
        if !job.immediate {
            self.free_slot();
        }
        let lun = shared.target.lun();
        if !lun.tasks.retire_to_respond(job.task) {
            log::info!(
                "{}: iscsi: task {:#x} aborted by its session while in flight: no response",
                self.nexus,
                job.itt
            );
            if let Some(ua) = o
                .sense
                .filter(|s| o.status == CHECK_CONDITION && s.key == 0x06)
            {
                lun.reservations
                    .with_mut(|a| a.unreport_unit_attention(&self.nexus, ua));
            }
            return Ok(());
        }
        let sent = if job.read {
            o.data_in.min(din.len()).min(job.edtl)
        } else {
            0
        };
        self.info.counters.bytes_out.fetch_add(sent as u64, Relaxed);
        let (flag, resid) = residual(&job.cdb, job.edtl, job.read, job.write, sent);
        let collapse = o.status == GOOD && sent > 0;
        let prm = &self.params;
        let chunk = prm.their_mrdsl.max(512);
        let mut pdus = Vec::with_capacity(sent.div_ceil(chunk) + 1);
        let (mut off, mut data_sn) = (0, 0u32);
        while off < sent {
            let n = chunk.min(sent - off);
            let last = off + n == sent;
            let burst_end = (off + n) % prm.max_burst.max(1) == 0;
            let mut f = if last || burst_end { 0x80 } else { 0 };
            if last && collapse {
                f |= 0x01 | flag;
            }
            let mut b = header(op::DATA_IN, f, job.itt);
            b[8..16].copy_from_slice(&job.lun);
            put(&mut b, 20, RESERVED_TAG);
            if last && collapse {
                b[3] = o.status;
                put(&mut b, 44, resid);
            }
            put(&mut b, 36, data_sn);
            put(&mut b, 40, off as u32);
            pdus.push(Outgoing {
                bhs: b,
                data: &din[off..off + n],
                status: last && collapse,
            });
            data_sn += 1;
            off += n;
        }
        let sense = o.sense.map(sense_data).unwrap_or_default();
        if !collapse {
            let mut b = header(op::SCSI_RESPONSE, 0x80 | flag, job.itt);
            b[3] = o.status;
            put(&mut b, 36, data_sn);
            put(&mut b, 44, resid);
            pdus.push(Outgoing {
                bhs: b,
                data: &sense,
                status: true,
            });
        }
        self.out.send(&pdus, || self.window().numbers())
    }
}

fn wait<'a>(c: &Condvar, g: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
    c.wait(g).unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `cdb` of `nexus` on the LU the LUN field names.
fn execute(
    shared: &Shared,
    nexus: &str,
    lun: &[u8; 8],
    cdb: &[u8],
    dout: &mut [u8],
    din: &mut [u8],
) -> Outcome {
    let out_buf = [Buf::from(dout)];
    let in_buf = [Buf::from(din)];
    let data_out = DataOut::new(if out_buf[0].is_empty() { &[] } else { &out_buf });
    let data_in = DataIn::new(if in_buf[0].is_empty() { &[] } else { &in_buf });
    let target = &shared.target;
    if lun.iter().all(|&b| b == 0) {
        target.execute(nexus, cdb, data_out, data_in, None)
    } else {
        target.execute_missing_lun(cdb, data_in)
    }
}

/// CHECK CONDITION with `sense`, the command not run.
fn refused(sense: Sense) -> Outcome {
    Outcome {
        status: CHECK_CONDITION,
        sense: Some(sense),
        data_in: 0,
    }
}

/// The CDB to run for a command whose EDTL is `edtl` (RFC 7143 §11.4.5.1). A WRITE whose EDTL
/// is below its transfer (residual overflow) writes only the whole blocks the EDTL covers: its
/// CDB is rewritten to that many blocks, at the same LBA. An EDTL that ends inside a block is
/// `Err` (INVALID FIELD IN COMMAND INFORMATION UNIT): a partial block is never written, and
/// neither is any block of that command. A cut WRITE whose range as sent does not lie within
/// the LU's `num_blocks` is `Err` (LBA OUT OF RANGE), as it would be uncut (SBC-3 §4.5): the
/// cut never makes a write the CDB does not allow. Any other command, and a WRITE whose EDTL
/// covers its transfer (residual underflow: the bytes past the transfer are ignored), runs as
/// sent.
pub(super) fn fit_write(cdb: &[u8; 16], edtl: usize, num_blocks: u64) -> Result<[u8; 16], Sense> {
    let Ok(Command::Write(rw)) = cdb::parse(cdb) else {
        return Ok(*cdb);
    };
    if edtl >= rw.blocks as usize * BLOCK {
        return Ok(*cdb);
    }
    pages::check_range(rw.lba, u64::from(rw.blocks), num_blocks)?;
    if !edtl.is_multiple_of(BLOCK) {
        return Err(sense::INVALID_FIELD_IN_COMMAND_IU);
    }
    // Below the transfer, so below 2^32 blocks (and below 256 for a WRITE(6)).
    let blocks = (edtl / BLOCK) as u32;
    let mut c = *cdb;
    match cdb[0] {
        cdb::op::WRITE_6 if blocks > 0 => c[4] = blocks as u8,
        // WRITE(6) cannot say 0 blocks (0 is 256): the same LBA as a WRITE(10) of none, which
        // still checks the LBA and the reservation as the WRITE(6) would have.
        cdb::op::WRITE_6 => {
            c = [0; 16];
            c[0] = cdb::op::WRITE_10;
            c[2..6].copy_from_slice(&(rw.lba as u32).to_be_bytes());
            c[9] = cdb[5];
        }
        cdb::op::WRITE_10 => c[7..9].copy_from_slice(&(blocks as u16).to_be_bytes()),
        cdb::op::WRITE_12 => c[6..10].copy_from_slice(&blocks.to_be_bytes()),
        _ => c[10..14].copy_from_slice(&blocks.to_be_bytes()),
    }
    Ok(c)
}

/// The SCSI Response data segment: SenseLength, then fixed-format sense (RFC 7143 §11.4.7).
fn sense_data(s: Sense) -> Vec<u8> {
    let fixed = s.to_fixed();
    let mut d = Vec::with_capacity(2 + fixed.len());
    d.extend_from_slice(&(fixed.len() as u16).to_be_bytes());
    d.extend_from_slice(&fixed);
    d
}

/// The LU's logical block length.
const BLOCK: usize = 512;

/// The bytes a READ or WRITE CDB transfers; `None` for other commands.
pub(super) fn implied_len(cdb: &[u8]) -> Option<usize> {
    match cdb::parse(cdb) {
        Ok(Command::Read(rw)) | Ok(Command::Write(rw)) => Some(rw.blocks as usize * BLOCK),
        _ => None,
    }
}

/// The bytes a command's R2Ts solicit (RFC 7143 §11.4.5.1): a WRITE's, up to its transfer when
/// its EDTL is longer (the target asks for no data it would not use), else the EDTL.
pub(super) fn solicited(cdb: &[u8; 16], edtl: usize) -> usize {
    match cdb::parse(cdb) {
        Ok(Command::Write(rw)) => edtl.min(rw.blocks as usize * BLOCK),
        _ => edtl,
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

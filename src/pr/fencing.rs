//! The arbiter as every device thread sees it: one lock that makes reservation changes and data
//! I/O mutually exclusive. Where a change is made durable (a local state file, or the shared
//! state of cluster mode) is its [`PrBackend`]'s business (`backend/`).
//!
//! **Fencing.** A data command is admitted by [`Reservations::admit`] and keeps the returned guard
//! until its I/O on the image is complete. A PR OUT takes the write side of the same lock, so it
//! waits for every admitted command to finish, and every command admitted after it returns sees
//! the new state. Hence, once GOOD reaches the preempting initiator, no write of a preempted
//! initiator (in flight or queued, on any queue of either device) can still reach the image.
//!
//! **No starvation.** A writer must not wait for ever behind readers that keep coming back:
//! std's `RwLock` stops admitting readers while a writer waits, but when the last reader leaves
//! it hands over by clearing the waiting flag and waking the writer, and a queue thread that
//! re-admits its next request (or its next piece, see [`Reservations::admitted_chunks`]) in
//! that window wins again and again. So a writer passes a turnstile first, and holds it until it
//! has the lock; every reader passes the same turnstile, and cannot overtake a waiting writer.
//! A PR OUT thus waits for the admissions in progress only.
//!
//! **Exactly once.** A PR OUT that QEMU replays after a reconnection is answered from the
//! [`ReplayLog`] with its first execution's status instead of running again; its record is saved
//! with the state change it made, in the same atomic write.

use crate::util::lock::{lock, read, write};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};

use smallvec::SmallVec;

use crate::image::IoOp;
use crate::lun::Lun;
use crate::pr::backend::local::LocalBackend;
use crate::pr::backend::{Change, Committed, PrBackend, SharedView};
use crate::pr::replay::{Origin, ReplayLog};
use crate::pr::state_file::StateStore;
use crate::pr::{Access, Arbiter, FenceRefusal, PrStatus, ProutOutcome, ProutRequest};
use crate::scsi::sense::Sense;

mod snapshot;
pub use snapshot::PrSnapshot;
use snapshot::{ArbiterWrite, Published};

/// A PR change made by the operator through the control socket (`sharedisk ctl pr
/// clear|preempt`) rather than by an initiator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OperatorAction {
    /// Drop every registration and the reservation.
    Clear,
    /// Fence `victim` (`arbiter/host.rs`): with `by`, that registered guest's own PREEMPT
    /// (AND ABORT) of the victim's key, so it takes over a reservation the victim held; without,
    /// the victim's registration alone goes. Refused, changing nothing, if the victim could
    /// still write afterwards. `abort` is PREEMPT AND ABORT: commands complete before a PR
    /// change is applied, so both wait for every admitted command of the victim to finish.
    Preempt {
        victim: String,
        abort: bool,
        by: Option<String>,
    },
}

impl std::fmt::Display for OperatorAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OperatorAction::Clear => write!(f, "host CLEAR"),
            OperatorAction::Preempt { victim, abort, by } => write!(
                f,
                "host PREEMPT{} of {victim}{}",
                if *abort { " AND ABORT" } else { "" },
                by.as_ref()
                    .map_or(String::new(), |h| format!(" by {h} with its key"))
            ),
        }
    }
}

pub struct Reservations {
    arbiter: RwLock<Arbiter>,
    /// Where the state lives: a local file, or shared with other hosts (`backend/`).
    backend: Arc<dyn PrBackend>,
    /// Taken only with the arbiter's write lock held, or on its own for bookkeeping.
    replay: Mutex<ReplayLog>,
    /// Passed by every reader and held by a writer until it has the lock (see above).
    turnstile: Mutex<()>,
    /// The state as of the last change, for readers that must not wait (the metrics).
    published: Published,
}

/// Proof that one data command was admitted; hold it until the command's I/O is done.
pub struct Admitted<'a> {
    // Declared first, so dropped first: its check runs while the lock is still held.
    _bound: IoBound<'a>,
    _arb: RwLockReadGuard<'a, Arbiter>,
}

/// The time bound of one admission's I/O (cluster mode: the read lease's end + `max_io_ms`),
/// checked when the admission ends, before its hold of the lock is released.
///
/// Why every op of a piece is covered by the lease that admitted it: a piece is admitted only
/// while [`PrBackend::may_admit`] holds, with the read lock held, and its ops are issued only
/// by the `run`/`step` of that admission, before this guard drops; nothing is issued after.
/// A renewal that fails in between does not move the lease's end, so the piece's deadline stays
/// that lease's end + `max_io_ms`. A renewal that finds a newer state adopts it under the write
/// lock, so it waits for this piece to end before it acknowledges; a daemon whose PR OUT this one
/// did not acknowledge waits `lease_ms × (1 + drift) / (1 − drift) + max_io_ms` after its commit,
/// which (clock drift allowed for) is past this deadline. So an op that ends by the deadline
/// ended before that PR OUT's GOOD, whenever it was issued within the piece, and one that ends
/// after it is the one case left: the backend is told here ([`PrBackend::io_done`]) and stops
/// admitting, so it happens at most once per piece in flight.
struct IoBound<'a> {
    backend: &'a dyn PrBackend,
    /// `None` on one host, and for a batch that admits nothing.
    deadline: Option<u64>,
}

impl Drop for IoBound<'_> {
    fn drop(&mut self) {
        if let Some(deadline) = self.deadline {
            self.backend.io_done(deadline);
        }
    }
}

/// Why a data command was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The reservation rules refuse it: RESERVATION CONFLICT on scsi, IOERR on blk.
    Conflict,
    /// Cluster mode: this daemon cannot know the current state (its read lease ran out and did
    /// not come back within the hold time): BUSY on scsi, IOERR on blk.
    Unavailable,
}

/// One hold of the arbiter over a batch of data commands, one virtqueue round (see
/// [`Reservations::admission`]).
pub struct AdmissionBatch<'a> {
    // Declared first, so dropped first: its check runs while the lock is still held.
    bound: IoBound<'a>,
    arb: RwLockReadGuard<'a, Arbiter>,
    available: bool,
}

impl AdmissionBatch<'_> {
    /// Whether `initiator` may do `access` (the same rule as [`Reservations::admit`]).
    pub fn allows(&self, initiator: &str, access: Access) -> Result<(), Refusal> {
        if !self.available {
            Err(Refusal::Unavailable)
        } else if self.arb.check(initiator, access) {
            Ok(())
        } else {
            Err(Refusal::Conflict)
        }
    }
}

/// The most image I/O done under one admission (see [`Reservations::admitted_chunks`]): a
/// PREEMPT waits for at most this much I/O per busy queue, whatever the size of the commands in
/// flight.
pub const ADMISSION_CHUNK: u64 = 4 << 20;

/// Why a chunked operation stopped early.
#[derive(Debug)]
pub enum ChunkError {
    /// The initiator lost access after `done` bytes (which are on the image).
    Conflict { done: u64 },
    /// Cluster mode: this daemon could not know the shared state after `done` bytes.
    Unavailable { done: u64 },
    /// A piece failed on the image.
    Io(std::io::Error),
}

/// BUSY: the target cannot serve the command now; the initiator retries (SAM-5 §5.3.1).
pub(crate) const BUSY: PrStatus = PrStatus::Busy;

impl Reservations {
    /// The state kept in `store` on this host; `None` only for purely in-memory use (tests).
    pub fn new(arbiter: Arbiter, store: Option<StateStore>) -> Self {
        Reservations {
            published: Published::of(&arbiter),
            arbiter: RwLock::new(arbiter),
            backend: Arc::new(LocalBackend::new(store)),
            replay: Mutex::new(ReplayLog::default()),
            turnstile: Mutex::new(()),
        }
    }

    /// Starts from `arbiter` instead (cluster mode: the shared state replaces the local file's).
    pub fn with_arbiter(self, arbiter: Arbiter) -> Self {
        Reservations {
            published: Published::of(&arbiter),
            arbiter: RwLock::new(arbiter),
            ..self
        }
    }

    /// Starts with the PR OUT records saved in the state file.
    pub fn with_replay_log(self, replay: ReplayLog) -> Self {
        Reservations {
            replay: Mutex::new(replay),
            ..self
        }
    }

    /// Keeps the state in `backend` instead of this host's state file (cluster mode).
    pub fn with_backend(self, backend: Arc<dyn PrBackend>) -> Self {
        Reservations { backend, ..self }
    }

    /// Starts the backend's background work for `lun`, whose reservations these are.
    pub fn start(&self, lun: Arc<Lun>) {
        self.backend.start(lun);
    }

    /// Stops the backend's background work (cluster mode: leaves the cluster).
    pub fn stop(&self) {
        self.backend.stop();
    }

    /// A guest added at run time, or an iSCSI session's nexus at its login, is one of this
    /// daemon's initiators.
    pub fn serve(&self, initiator: &str) {
        self.backend.serve(initiator);
    }

    /// A guest removed at run time, or a nexus whose session ended, is not.
    pub fn unserve(&self, initiator: &str) {
        self.backend.unserve(initiator);
    }

    /// Whether `initiator` is one of this daemon's (one host: every initiator is).
    pub fn serves(&self, initiator: &str) -> bool {
        self.backend.serves(initiator)
    }

    /// Cluster mode: the gate of the guest `initiator`'s devices (see [`PrBackend::gate`]).
    pub fn gate(&self, initiator: &str) -> Option<Arc<dyn crate::transport::virtqueue::Gate>> {
        self.backend.gate(initiator)
    }

    /// Cluster mode: the epoch held and the read lease, for metrics; `None` on one host.
    pub fn cluster_view(&self) -> Option<SharedView> {
        self.backend.view()
    }

    /// Cluster mode: `sharedisk ctl cluster status`; `None` on one host.
    pub fn cluster_status(&self) -> Option<serde_json::Value> {
        self.backend.status()
    }

    /// Cluster mode: `sharedisk ctl cluster republish` or `evict`; `None` on one host.
    pub fn cluster_operate(
        &self,
        op: &crate::pr::backend::ClusterOp,
    ) -> Option<Result<serde_json::Value, String>> {
        self.backend.operate(self, op)
    }

    pub(crate) fn replay_log(&self) -> MutexGuard<'_, ReplayLog> {
        lock(&self.replay)
    }

    pub(crate) fn read_lock(&self) -> RwLockReadGuard<'_, Arbiter> {
        // A poisoned lock only means another thread panicked; the arbiter itself is consistent
        // after every call, so keep serving.
        drop(lock(&self.turnstile));
        read(&self.arbiter)
    }

    /// The arbiter's write lock, after the turnstile: every admitted command has finished.
    /// Dropping it publishes the state it leaves (see [`Reservations::snapshot`]).
    pub(crate) fn write_lock(&self) -> ArbiterWrite<'_> {
        let _turn = lock(&self.turnstile);
        ArbiterWrite {
            arb: write(&self.arbiter),
            published: &self.published,
        }
    }

    /// The PR state as of the last change, without the arbiter's lock: never waits for a PR OUT
    /// in progress (it shows the state before it until it is done). For the metrics.
    pub fn snapshot(&self) -> Arc<PrSnapshot> {
        self.published.get()
    }

    /// Admits a data command of `initiator`, or says why not.
    pub fn admit(&self, initiator: &str, access: Access) -> Result<Admitted<'_>, Refusal> {
        let batch = self.admission();
        if !batch.available {
            Err(Refusal::Unavailable)
        } else if batch.arb.check(initiator, access) {
            let AdmissionBatch { bound, arb, .. } = batch;
            Ok(Admitted {
                _bound: bound,
                _arb: arb,
            })
        } else {
            Err(Refusal::Conflict)
        }
    }

    /// Holds the arbiter steady for a batch of data commands: each is admitted with
    /// [`AdmissionBatch::allows`], and all keep the guard until their I/O is done, like
    /// [`Admitted`].
    ///
    /// Cluster mode: the state held here counts only while the read lease is valid; while it
    /// is not, this waits for it until the hold time after the lease's end has passed, and then
    /// admits nothing ([`Refusal::Unavailable`]).
    pub fn admission(&self) -> AdmissionBatch<'_> {
        loop {
            let arb = self.read_lock();
            // Checked with the guard held: a state change waits for this admission to end.
            if self.backend.may_admit() {
                return AdmissionBatch {
                    bound: IoBound {
                        backend: &*self.backend,
                        deadline: self.backend.io_deadline(),
                    },
                    arb,
                    available: true,
                };
            }
            drop(arb);
            if !self.backend.wait_to_admit() {
                return AdmissionBatch {
                    bound: IoBound {
                        backend: &*self.backend,
                        deadline: None,
                    },
                    arb: self.read_lock(),
                    available: false,
                };
            }
        }
    }

    /// Runs a batch of reads and writes of `initiator` (one virtqueue round) in admission
    /// pieces: consecutive ops of at most [`ADMISSION_CHUNK`] bytes together (one op at least),
    /// each piece admitted under its own hold of the lock, which lasts until `run` has done the
    /// piece's admitted ops on the image (the fencing guarantee, as for one command). A PR OUT
    /// thus waits for at most one piece per busy queue, whatever the round's depth, and an op
    /// of a piece admitted after it is checked against the new state. `ops` keeps its order
    /// (the driver's) and the pieces run in it; the result says which ops were admitted (or
    /// why not), and a refused op never reaches `run`.
    pub fn run_admitted<'o>(
        &self,
        initiator: &str,
        ops: &mut [IoOp<'o>],
        mut run: impl FnMut(&mut [IoOp<'o>]),
    ) -> SmallVec<[Result<(), Refusal>; 64]> {
        let mut allowed = SmallVec::with_capacity(ops.len());
        let mut start = 0;
        while start < ops.len() {
            let end = start + piece_len(&ops[start..]);
            // Every piece is admitted afresh: `admission` asks the backend whether this
            // daemon may still admit (cluster mode: the lease) with the lock held, and takes
            // the piece's I/O deadline, checked when `batch` drops (see `IoBound`).
            let batch = self.admission();
            for op in &ops[start..end] {
                let access = if op.write {
                    Access::Write
                } else {
                    Access::Read
                };
                allowed.push(batch.allows(initiator, access));
            }
            run_allowed(&mut ops[start..end], &allowed[start..end], &mut run);
            drop(batch);
            start = end;
        }
        allowed
    }

    /// Runs a long command as `len` bytes of work in pieces of at most [`ADMISSION_CHUNK`],
    /// each under its own admission: `step(done, n)` does bytes `done..done + n` of it.
    ///
    /// A PR OUT waits only for the piece in progress, and once it has returned the next piece
    /// is checked against the new state: a fenced initiator's command stops there, with its
    /// earlier pieces on the image (as when a real target aborts a command part way).
    pub fn admitted_chunks(
        &self,
        initiator: &str,
        access: Access,
        len: u64,
        mut step: impl FnMut(u64, u64) -> std::io::Result<()>,
    ) -> Result<(), ChunkError> {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(ADMISSION_CHUNK);
            let _admitted = match self.admit(initiator, access) {
                Ok(a) => a,
                Err(Refusal::Conflict) => return Err(ChunkError::Conflict { done }),
                Err(Refusal::Unavailable) => return Err(ChunkError::Unavailable { done }),
            };
            step(done, n).map_err(ChunkError::Io)?;
            done += n;
        }
        Ok(())
    }

    /// Cluster mode: `sharedisk ctl cluster resume`, admitting I/O again after an I/O overrun
    /// (see [`PrBackend::resume`]).
    pub fn cluster_resume(&self) -> Result<(), String> {
        self.backend.resume(self)
    }

    /// Cluster mode: whether PR commands can be served now (the lease is valid, or comes back
    /// within the hold time); they get BUSY otherwise. Always true on one host.
    pub fn serving(&self) -> bool {
        self.backend.wait_to_admit()
    }

    /// The status a PR OUT got the first time, if `origin` is its replay after a reconnection
    /// (`replay.rs`); the replay is then not to be executed.
    /// Cluster mode: the replay of a change answers only once the state held is current and
    /// settled (the record may come from a commit whose settle never ended), BUSY until then.
    pub fn replayed(&self, initiator: &str, origin: &Origin) -> Option<PrStatus> {
        let status = self.replay_log().replay(initiator, origin)?;
        if !self.backend.confirm_current(self) {
            log::info!(
                "{initiator}: PR OUT replayed after a reconnection: its change is not settled \
                 yet: BUSY"
            );
            return Some(BUSY);
        }
        log::info!(
            "{initiator}: PR OUT replayed after a reconnection (ring {}, index {}): answered \
             {status:?} from its first execution",
            origin.ring,
            origin.slot.position
        );
        Some(status)
    }

    /// Applies a PERSISTENT RESERVE OUT and makes it durable before returning its status.
    /// `origin` identifies a request from a virtqueue: its outcome is recorded, so that a replay
    /// gets the same answer (see [`Reservations::replayed`]).
    pub fn prout(&self, initiator: &str, req: &ProutRequest, origin: Option<&Origin>) -> PrStatus {
        self.prout_preempting(initiator, req, origin).0
    }

    /// [`Reservations::prout`], and the initiators whose registration it removed (as the
    /// change that decided was applied): PREEMPT AND ABORT aborts their tasks.
    pub fn prout_preempting(
        &self,
        initiator: &str,
        req: &ProutRequest,
        origin: Option<&Origin>,
    ) -> (PrStatus, Vec<String>) {
        let what = format!("PR OUT {:?} type {}", req.action, req.res_type);
        let mut preempted = Vec::new();
        let status = self.change(initiator, &what, origin, |arb| {
            let o = arb.prout(initiator, req);
            preempted.clone_from(&o.preempted);
            o
        });
        (status, preempted)
    }

    /// A PR change made by the operator (`sharedisk ctl pr clear|preempt`), not by an
    /// initiator. It takes the same path as a guest's PR OUT: it waits for every admitted
    /// command to finish (the fencing guarantee), queues the unit attentions, counts in
    /// PRgeneration and is saved durably before this returns; the log names it a host action.
    /// A preempt that would not fence its victim is refused and changes nothing.
    pub fn operator(&self, action: &OperatorAction) -> Result<PrStatus, FenceRefusal> {
        let mut refused = None;
        let status = self.change("host", &action.to_string(), None, |arb| match action {
            OperatorAction::Clear => arb.operator_clear(),
            OperatorAction::Preempt { victim, abort, by } => {
                // The backend may apply a change more than once (cluster mode: on a newer
                // state after a lost compare-and-swap); the last application decides.
                refused = None;
                arb.host_preempt(victim, by.as_deref(), *abort)
                    .unwrap_or_else(|why| {
                        refused = Some(why);
                        ProutOutcome::refused()
                    })
            }
        });
        // A refusal stands only when the state it was decided on is confirmed (the refused
        // outcome's CONFLICT came back); anything else (BUSY: the commit or the settle was not
        // answered) says nothing about it.
        match refused {
            Some(why) if status == PrStatus::Conflict => Err(why),
            _ => Ok(status),
        }
    }

    /// Whether the state held here may answer a PR IN now. Always on one host; in cluster mode
    /// once a linearizable check has confirmed it is the newest, after adopting a newer one if
    /// there is. False: the command gets BUSY.
    pub fn current(&self) -> bool {
        self.backend.confirm_current(self)
    }

    /// Applies one PR change with `apply` through the backend and returns its status once it
    /// is durable (and, in cluster mode, settled).
    fn change(
        &self,
        initiator: &str,
        what: &str,
        origin: Option<&Origin>,
        mut apply: impl FnMut(&mut Arbiter) -> ProutOutcome,
    ) -> PrStatus {
        let change = Change {
            initiator,
            what,
            origin,
            apply: &mut apply,
        };
        let unsettled = match self.backend.commit(self, change) {
            Committed::Answered(status) => return status,
            Committed::Unsettled(u) => u,
        };
        match self.backend.settle(&unsettled) {
            Ok(()) => unsettled.status,
            Err(why) => {
                log::error!(
                    "{initiator}: {what} is committed (shared state {}) but not settled: {why}: \
                     BUSY",
                    unsettled.epoch
                );
                self.record(initiator, origin, &BUSY);
                BUSY
            }
        }
    }

    /// Records `status` as the answer to the PR OUT from `origin`, if it came from a virtqueue.
    pub(crate) fn record(&self, initiator: &str, origin: Option<&Origin>, status: &PrStatus) {
        if let Some(o) = origin {
            self.replay_log().record(initiator, o, status.clone());
        }
    }

    /// Every request `initiator` took from `ring` so far is completed (its used entry is in the
    /// ring): none of them can be replayed any more.
    pub fn completed(&self, initiator: &str, ring: u16) {
        self.replay_log().completed(initiator, ring);
    }

    /// Runs `f` on the arbiter if the state it holds is settled (cluster mode; always on one
    /// host), checked under the same read lock `f` runs with: a PR IN or `ctl pr show` never
    /// shows a change applied after its settle. `None`: a newer change came meanwhile.
    pub fn with_settled<R>(&self, f: impl FnOnce(&Arbiter) -> R) -> Option<R> {
        let arb = self.read_lock();
        self.backend.shows_settled().then(|| f(&arb))
    }

    /// Runs `f` on a consistent view of the arbiter (PR IN, tests).
    pub fn with<R>(&self, f: impl FnOnce(&Arbiter) -> R) -> R {
        f(&self.read_lock())
    }

    /// Runs `f` with exclusive access, for changes that are not persisted (unit attentions,
    /// SPC-2 reservations). Like a PR OUT it waits for admitted I/O to drain.
    pub fn with_mut<R>(&self, f: impl FnOnce(&mut Arbiter) -> R) -> R {
        f(&mut self.write_lock())
    }

    /// Runs `f` with exclusive access if `initiator` may do `access`, checked under that same
    /// lock: no PR change (a PREEMPT of `initiator`) can come between the check and `f`. For
    /// changes a fenced initiator may not make that are not I/O (the write cache). Cluster mode:
    /// waits for the read lease like [`Reservations::admission`], else `Unavailable`.
    pub fn with_mut_if_allowed<R>(
        &self,
        initiator: &str,
        access: Access,
        f: impl FnOnce(&mut Arbiter) -> R,
    ) -> Result<R, Refusal> {
        loop {
            let mut arb = self.write_lock();
            if self.backend.may_admit() {
                if !arb.check(initiator, access) {
                    return Err(Refusal::Conflict);
                }
                return Ok(f(&mut arb));
            }
            drop(arb);
            if !self.backend.wait_to_admit() {
                return Err(Refusal::Unavailable);
            }
        }
    }

    /// Takes the oldest unit attention queued for `initiator`.
    pub fn take_unit_attention(&self, initiator: &str) -> Option<Sense> {
        // Cheap shared check first: UAs are rare and this runs for every SCSI command.
        if !self.read_lock().has_unit_attention(initiator) {
            return None;
        }
        self.write_lock().pop_unit_attention(initiator)
    }
}

/// ", preempted a,b" for the log line of a PR OUT that preempted someone.
pub(crate) fn preempted(outcome: &ProutOutcome) -> String {
    if outcome.preempted.is_empty() {
        String::new()
    } else {
        format!(", preempted {}", outcome.preempted.join(","))
    }
}

/// How many of `ops`, from the first, make one admission piece: at most [`ADMISSION_CHUNK`]
/// bytes, and at least one op (a batched op is never longer than that).
fn piece_len(ops: &[IoOp]) -> usize {
    let mut bytes = 0u64;
    let n = ops
        .iter()
        .take_while(|op| {
            bytes = bytes.saturating_add(crate::image::buffers::total(&op.bufs) as u64);
            bytes <= ADMISSION_CHUNK
        })
        .count();
    n.max(1)
}

/// Runs the ops of one piece that `allowed` admits, in their order, as one `run`: all of them
/// in place when none is refused (the usual case), else the admitted ones swapped to the
/// front, run, and swapped back, so that no allocation is needed either way.
fn run_allowed<'o>(
    ops: &mut [IoOp<'o>],
    allowed: &[Result<(), Refusal>],
    run: &mut impl FnMut(&mut [IoOp<'o>]),
) {
    if allowed.iter().all(Result::is_ok) {
        return run(ops);
    }
    let mut front = 0;
    for (i, verdict) in allowed.iter().enumerate() {
        if verdict.is_ok() {
            ops.swap(front, i);
            front += 1;
        }
    }
    if front > 0 {
        run(&mut ops[..front]);
    }
    // The same swaps in reverse order undo the permutation.
    for (i, verdict) in allowed.iter().enumerate().rev() {
        if verdict.is_ok() {
            front -= 1;
            ops.swap(front, i);
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod lock_tests;

//! The arbiter as every device thread sees it: one lock that makes reservation changes and data
//! I/O mutually exclusive, plus durable persistence of every change.
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
//! re-admits its next request (or its next piece, see [`crate::lun::Lun::admitted_chunks`]) in
//! that window wins again and again. So a writer passes a turnstile first, and holds it until it
//! has the lock; every reader passes the same turnstile, and cannot overtake a waiting writer.
//! A PR OUT thus waits for the admissions in progress only.
//!
//! **Exactly once.** A PR OUT that QEMU replays after a reconnection is answered from the
//! [`ReplayLog`] with its first execution's status instead of running again; its record is saved
//! with the state change it made, in the same atomic write.

use crate::util::lock::{lock, read, write};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use crate::pr::cluster::lease::ReadLease;
use crate::pr::replay::{Origin, ReplayLog};
use crate::pr::state_file::{StateError, StateStore};
use crate::pr::{Access, Arbiter, PrState, PrStatus, ProutOutcome, ProutRequest};
use crate::scsi::sense::Sense;
use crate::testhooks::failpoint;

/// INTERNAL TARGET FAILURE: the change could not be made durable, so it was not made.
const INTERNAL_TARGET_FAILURE: Sense = Sense::new(0x04, 0x44, 0x00);

/// A PR change made from the host rather than by an initiator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostAction {
    /// Drop every registration and the reservation.
    Clear,
    /// Remove `victim`'s registration (and its reservation). `abort` is PREEMPT AND ABORT:
    /// commands complete before a PR change is applied, so both wait for every admitted
    /// command of the victim to finish; `abort` only names the action in the log.
    Preempt { victim: String, abort: bool },
}

impl std::fmt::Display for HostAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostAction::Clear => write!(f, "host CLEAR"),
            HostAction::Preempt { victim, abort } => write!(
                f,
                "host PREEMPT{} of {victim}",
                if *abort { " AND ABORT" } else { "" }
            ),
        }
    }
}

pub struct Reservations {
    arbiter: RwLock<Arbiter>,
    /// Cluster mode: the state is shared with daemons on other hosts (`cluster.rs`).
    shared: Option<Arc<dyn SharedState>>,
    /// Cluster mode: which shared state the arbiter holds, `(epoch, version)`; changed only
    /// with the write lock held.
    held: Mutex<(u64, i64)>,
    /// Taken only with the arbiter's write lock held, or on its own for bookkeeping.
    replay: Mutex<ReplayLog>,
    /// Passed by every reader and held by a writer until it has the lock (see above).
    turnstile: Mutex<()>,
    store: Option<StateStore>,
}

/// Proof that a data command was admitted; hold it until the command's I/O is done.
pub struct Admitted<'a>(#[allow(dead_code)] RwLockReadGuard<'a, Arbiter>);

/// Why a data command was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The reservation rules refuse it: RESERVATION CONFLICT on scsi, IOERR on blk.
    Conflict,
    /// Cluster mode: this daemon cannot know the current state (its read lease ran out and did
    /// not come back within the hold time): BUSY on scsi, IOERR on blk.
    Unavailable,
}

/// One hold of the arbiter for a batch of data commands (see [`Reservations::admission`]).
pub struct Admission<'a> {
    arb: RwLockReadGuard<'a, Arbiter>,
    available: bool,
}

impl Admission<'_> {
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

/// A state another daemon committed (cluster mode), for [`Reservations::adopt`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remote {
    /// The shared state's sequence number: one more for every committed change.
    pub epoch: u64,
    /// The shared state's version in the store (etcd's `mod_revision`), which a commit names.
    pub version: i64,
    pub state: PrState,
    /// The unit attentions the changes since our epoch queued, per initiator.
    pub unit_attentions: Vec<(String, Sense)>,
}

/// Cluster mode, as metrics show it.
pub struct ClusterView {
    pub epoch: u64,
    pub lease_valid: bool,
    pub lease_remaining: Duration,
}

/// What committing a PR change to the shared state gave (cluster mode).
pub enum Commit {
    /// Committed as the shared state's `epoch`, stored as `version`.
    Done { epoch: u64, version: i64 },
    /// Nothing to change, and the state this daemon holds was still the newest: the outcome
    /// stands as computed.
    Confirmed,
    /// Committed as `epoch` (`version`) by an attempt whose answer was lost, and another
    /// daemon's change followed before the commit was sent again: apply this one, then adopt
    /// `newer`.
    Superseded {
        epoch: u64,
        version: i64,
        newer: Remote,
    },
    /// Another daemon changed the state first: here it is, to adopt and compute again.
    Stale(Remote),
    /// No answer that proves either; the command gets BUSY and nothing was changed, or the
    /// change is resolved later (see `cluster::etcd`).
    Unavailable(String),
}

/// The shared state of cluster mode, as the arbiter's lock sees it (implemented by
/// `cluster::etcd`). Every call but the lease's blocks on the network.
pub trait SharedState: Send + Sync {
    /// Whether this daemon may admit I/O now.
    fn lease(&self) -> &ReadLease;
    /// How long new I/O waits for a lost lease before it fails.
    fn hold(&self) -> Duration;
    /// The most a PR command may take before it gets BUSY.
    fn budget(&self) -> Duration;
    /// Whether `initiator` is one of this daemon's guests.
    fn hosts(&self, initiator: &str) -> bool;
    /// Commits `next` (computed from the state at `epoch`) with the unit attentions it queued
    /// for other daemons' initiators, or, for `None`, confirms that `epoch` is still the newest.
    /// Every attempt ends by `deadline`; a change whose fate is unknown is sent again until it
    /// is known, for at most the hold time. Called with the arbiter's write lock held.
    fn commit(
        &self,
        epoch: u64,
        version: i64,
        next: Option<&PrState>,
        unit_attentions: &[(String, Sense)],
        deadline: Instant,
    ) -> Commit;
    /// Returns once no other daemon can admit I/O under the state before `epoch`: each has
    /// acknowledged it or its lease has surely run out (strict mode: or it was fenced). An error
    /// means the change is committed but the wait failed; the command gets BUSY.
    /// `deadline` is the command's budget: past it, the answer is BUSY.
    fn settle(&self, epoch: u64, deadline: Instant) -> Result<(), String>;
}

/// BUSY: the target cannot serve the command now; the initiator retries (SAM-5 §5.3.1).
const BUSY: PrStatus = PrStatus::Busy;

/// How often a PR command computes again after losing a compare-and-swap race.
const MAX_TRIES: usize = 8;

impl Reservations {
    /// `store` is `None` only for purely in-memory use (tests).
    pub fn new(arbiter: Arbiter, store: Option<StateStore>) -> Self {
        Reservations {
            arbiter: RwLock::new(arbiter),
            shared: None,
            held: Mutex::new((0, 0)),
            replay: Mutex::new(ReplayLog::default()),
            turnstile: Mutex::new(()),
            store,
        }
    }

    /// Starts from `arbiter` instead (cluster mode: the shared state replaces the local file's).
    pub fn with_arbiter(self, arbiter: Arbiter) -> Self {
        Reservations {
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

    /// Shares the state with other daemons (cluster mode), starting at `epoch` and `version`.
    pub fn shared(self, shared: Arc<dyn SharedState>, epoch: u64, version: i64) -> Self {
        Reservations {
            shared: Some(shared),
            held: Mutex::new((epoch, version)),
            ..self
        }
    }

    /// Cluster mode: the epoch held and the read lease, for metrics; `None` on one host.
    pub fn cluster_view(&self) -> Option<ClusterView> {
        self.shared.as_ref().map(|s| ClusterView {
            epoch: self.held().0,
            lease_valid: s.lease().valid(),
            lease_remaining: s.lease().remaining(),
        })
    }

    /// Cluster mode: which shared state is held here, `(epoch, version)`.
    pub fn held(&self) -> (u64, i64) {
        *lock(&self.held)
    }

    fn set_held(&self, epoch: u64, version: i64) {
        *lock(&self.held) = (epoch, version);
    }

    fn replay_log(&self) -> std::sync::MutexGuard<'_, ReplayLog> {
        lock(&self.replay)
    }

    fn read_lock(&self) -> RwLockReadGuard<'_, Arbiter> {
        // A poisoned lock only means another thread panicked; the arbiter itself is consistent
        // after every call, so keep serving.
        drop(lock(&self.turnstile));
        read(&self.arbiter)
    }

    fn write_lock(&self) -> RwLockWriteGuard<'_, Arbiter> {
        let _turn = lock(&self.turnstile);
        write(&self.arbiter)
    }

    /// Admits a data command of `initiator`, or says why not.
    pub fn admit(&self, initiator: &str, access: Access) -> Result<Admitted<'_>, Refusal> {
        let Admission { arb, available } = self.admission();
        if !available {
            Err(Refusal::Unavailable)
        } else if arb.check(initiator, access) {
            Ok(Admitted(arb))
        } else {
            Err(Refusal::Conflict)
        }
    }

    /// Holds the arbiter steady for a batch of data commands: each is admitted with
    /// [`Admission::allows`], and all keep the guard until their I/O is done, like [`Admitted`].
    ///
    /// Cluster mode: the state held here counts only while the read lease is valid; while it
    /// is not, this waits for it until the hold time after the lease's end has passed, and then
    /// admits nothing ([`Refusal::Unavailable`]).
    pub fn admission(&self) -> Admission<'_> {
        let Some(shared) = &self.shared else {
            return Admission {
                arb: self.read_lock(),
                available: true,
            };
        };
        loop {
            let arb = self.read_lock();
            // Checked with the guard held: a state change waits for this admission to end.
            if shared.lease().valid() {
                return Admission {
                    arb,
                    available: true,
                };
            }
            drop(arb);
            if !shared.lease().wait_held(shared.hold()) {
                return Admission {
                    arb: self.read_lock(),
                    available: false,
                };
            }
        }
    }

    /// Cluster mode: whether PR commands can be served now (the lease is valid, or comes back
    /// within the hold time); they get BUSY otherwise. Always true on one host.
    pub fn serving(&self) -> bool {
        self.shared
            .as_ref()
            .is_none_or(|s| s.lease().wait_held(s.hold()))
    }

    /// Cluster mode: takes in a state another daemon committed. Like a PR OUT it waits for every
    /// admitted command to finish; then the state is replaced and the unit attentions for this
    /// daemon's initiators are queued. Returns false (and changes nothing) for a state that is
    /// not newer than the one held.
    pub fn adopt(&self, remote: Remote) -> bool {
        let mut arb = self.write_lock();
        self.adopt_locked(&mut arb, remote)
    }

    fn adopt_locked(&self, arb: &mut Arbiter, remote: Remote) -> bool {
        let (held, _) = self.held();
        if remote.epoch <= held {
            return false;
        }
        let hosts = |i: &str| self.shared.as_ref().is_some_and(|s| s.hosts(i));
        arb.replace_state(remote.state);
        for (initiator, sense) in &remote.unit_attentions {
            if hosts(initiator) {
                arb.queue_unit_attention(initiator, *sense);
            }
        }
        self.set_held(remote.epoch, remote.version);
        self.save_local_copy(arb);
        log::info!(
            "adopted shared state {} (generation {}, {} registrations)",
            remote.epoch,
            arb.state().generation,
            arb.state().registrations.len()
        );
        true
    }

    /// The status a PR OUT got the first time, if `origin` is its replay after a reconnection
    /// (`replay.rs`); the replay is then not to be executed.
    pub fn replayed(&self, initiator: &str, origin: &Origin) -> Option<PrStatus> {
        let status = self.replay_log().replay(initiator, origin)?;
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
        let what = format!("PR OUT {:?} type {}", req.action, req.res_type);
        self.change(initiator, &what, origin, |arb| arb.prout(initiator, req))
    }

    /// A PR change made by the host (`sharedisk ctl pr clear|preempt`), not by an initiator. It
    /// takes the same path as a guest's PR OUT: it waits for every admitted command to finish
    /// (the fencing guarantee), queues the unit attentions, counts in PRgeneration and is saved
    /// durably before this returns; the log names it a host action.
    pub fn host(&self, action: &HostAction) -> PrStatus {
        self.change("host", &action.to_string(), None, |arb| match action {
            HostAction::Clear => arb.host_clear(),
            HostAction::Preempt { victim, .. } => arb.host_preempt(victim),
        })
    }

    /// Whether the state held here may answer a PR IN now. Always on one host; in cluster mode
    /// once a linearizable check has confirmed it is the newest, after adopting a newer one if
    /// there is. False: the command gets BUSY.
    pub fn current(&self) -> bool {
        let Some(shared) = &self.shared else {
            return true;
        };
        if !self.serving() {
            return false;
        }
        for _ in 0..MAX_TRIES {
            let (epoch, version) = self.held();
            match shared.commit(epoch, version, None, &[], Instant::now() + shared.budget()) {
                Commit::Confirmed | Commit::Done { .. } | Commit::Superseded { .. } => return true,
                Commit::Stale(remote) => {
                    self.adopt(remote);
                }
                Commit::Unavailable(why) => {
                    log::warn!("PR IN: {why}: BUSY");
                    return false;
                }
            }
        }
        false
    }

    /// Applies one PR change with `apply` under the write lock and makes it durable before
    /// returning its status; undone if it cannot be saved.
    fn change(
        &self,
        initiator: &str,
        what: &str,
        origin: Option<&Origin>,
        mut apply: impl FnMut(&mut Arbiter) -> ProutOutcome,
    ) -> PrStatus {
        if let Some(shared) = &self.shared {
            return self.change_shared(shared.as_ref(), initiator, what, origin, apply);
        }
        let mut arb = self.write_lock();
        let mut replay = self.replay_log();
        let before = arb.clone();
        let outcome = apply(&mut arb);
        if let Some(o) = origin {
            replay.record(initiator, o, outcome.status.clone());
        }
        if outcome.changed {
            if let Some(store) = &self.store {
                if let Err(e) = store.save(arb.state(), replay.records()) {
                    if let Some(o) = origin {
                        replay.forget(initiator, o);
                    }
                    // What the guest is told and what a restart finds must agree: a change that
                    // reached the file without being made durable is taken out of it again.
                    let undone = match &e {
                        StateError::NotDurable { .. } => {
                            match store.save(before.state(), replay.records()) {
                                Ok(()) | Err(StateError::NotDurable { .. }) => true,
                                Err(e2) => {
                                    log::error!("{e2}: the change cannot be taken out again");
                                    false
                                }
                            }
                        }
                        _ => true,
                    };
                    if undone {
                        log::error!("{e}; {initiator}'s {what} is undone");
                        *arb = before;
                    } else {
                        log::error!("{e}; {initiator}'s {what} stays in effect: the file holds it");
                    }
                    return PrStatus::CheckCondition(INTERNAL_TARGET_FAILURE);
                }
                failpoint::hit("prout-persisted");
            }
            log::info!(
                "{initiator}: {what} -> {:?}, generation {}{}",
                outcome.status,
                arb.state().generation,
                preempted(&outcome)
            );
        } else {
            log::debug!("{initiator}: {what} -> {:?}", outcome.status);
        }
        outcome.status
    }

    /// Cluster mode: a PR change is computed on a copy of the state held here and committed to
    /// the shared state by compare-and-swap on its epoch; when another daemon changed it first,
    /// that state is adopted and the change computed again. Once committed, the change is
    /// applied here (under the write lock, so I/O admitted under the old state has finished)
    /// and then settled: the status is returned only when no other daemon can still admit I/O
    /// under the old state. Anything that cannot be proven in time gets BUSY, never GOOD.
    fn change_shared(
        &self,
        shared: &dyn SharedState,
        initiator: &str,
        what: &str,
        origin: Option<&Origin>,
        mut apply: impl FnMut(&mut Arbiter) -> ProutOutcome,
    ) -> PrStatus {
        let deadline = Instant::now() + shared.budget();
        if !self.serving() {
            log::warn!("{initiator}: {what}: the shared state is out of reach: BUSY");
            return BUSY;
        }
        for _ in 0..MAX_TRIES {
            if Instant::now() >= deadline {
                break;
            }
            let mut arb = self.write_lock();
            let mut next = arb.clone();
            let outcome = apply(&mut next);
            // The unit attentions for other daemons' initiators travel with the change; each
            // daemon queues those of its own guests when it adopts it.
            let theirs = next.take_unit_attentions(|i| !shared.hosts(i));
            let (epoch, version) = self.held();
            let proposed = outcome.changed.then(|| next.state());
            let (epoch, version, newer) =
                match shared.commit(epoch, version, proposed, &theirs, deadline) {
                    Commit::Confirmed => {
                        // Nothing changed in the shared state; unit attentions of a failed command
                        // (none today) would still be local.
                        *arb = next;
                        self.record(initiator, origin, &outcome.status);
                        log::debug!("{initiator}: {what} -> {:?}", outcome.status);
                        return outcome.status;
                    }
                    Commit::Done { epoch, version } => (epoch, version, None),
                    Commit::Superseded {
                        epoch,
                        version,
                        newer,
                    } => (epoch, version, Some(newer)),
                    Commit::Stale(remote) => {
                        self.adopt_locked(&mut arb, remote);
                        continue;
                    }
                    Commit::Unavailable(why) => {
                        log::warn!("{initiator}: {what}: {why}: BUSY");
                        return BUSY;
                    }
                };
            *arb = next;
            self.set_held(epoch, version);
            self.record(initiator, origin, &outcome.status);
            self.save_local_copy(&arb);
            log::info!(
                "{initiator}: {what} -> {:?}, generation {}, shared state {epoch}{}",
                outcome.status,
                arb.state().generation,
                preempted(&outcome)
            );
            if let Some(newer) = newer {
                self.adopt_locked(&mut arb, newer);
            }
            drop(arb);
            return match shared.settle(epoch, deadline) {
                Ok(()) => outcome.status,
                Err(why) => {
                    log::error!(
                        "{initiator}: {what} is committed (shared state {epoch}) but not \
                         settled: {why}: BUSY"
                    );
                    self.record(initiator, origin, &BUSY);
                    BUSY
                }
            };
        }
        log::warn!(
            "{initiator}: {what}: the shared state kept changing under it, or the command's \
             budget is spent: BUSY"
        );
        BUSY
    }

    /// Cluster mode: the state file is a local copy of the shared state (etcd wins at start),
    /// so a failure to write it is logged, not answered.
    fn save_local_copy(&self, arb: &Arbiter) {
        if let Some(store) = &self.store {
            if let Err(e) = store.save(arb.state(), self.replay_log().records()) {
                log::warn!("{e} (a local copy only: the shared state is in etcd)");
            }
        }
    }

    fn record(&self, initiator: &str, origin: Option<&Origin>, status: &PrStatus) {
        if let Some(o) = origin {
            self.replay_log().record(initiator, o, status.clone());
        }
    }

    /// Every request `initiator` took from `ring` so far is completed (its used entry is in the
    /// ring): none of them can be replayed any more.
    pub fn completed(&self, initiator: &str, ring: u16) {
        self.replay_log().completed(initiator, ring);
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
fn preempted(outcome: &ProutOutcome) -> String {
    if outcome.preempted.is_empty() {
        String::new()
    } else {
        format!(", preempted {}", outcome.preempted.join(","))
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod lock_tests;

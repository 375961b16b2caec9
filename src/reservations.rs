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

use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::failpoint;
use crate::pr::{Access, Arbiter, PrStatus, ProutOutcome, ProutRequest};
use crate::replay::{Origin, ReplayLog};
use crate::sense::Sense;
use crate::state::{StateError, StateStore};

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
    /// Taken only with the arbiter's write lock held, or on its own for bookkeeping.
    replay: Mutex<ReplayLog>,
    /// Passed by every reader and held by a writer until it has the lock (see above).
    turnstile: Mutex<()>,
    store: Option<StateStore>,
}

/// Proof that a data command was admitted; hold it until the command's I/O is done.
pub struct Admitted<'a>(#[allow(dead_code)] RwLockReadGuard<'a, Arbiter>);

/// One hold of the arbiter for a batch of data commands (see [`Reservations::admission`]).
pub struct Admission<'a>(RwLockReadGuard<'a, Arbiter>);

impl Admission<'_> {
    /// Whether `initiator` may do `access` (the same rule as [`Reservations::admit`]).
    pub fn allows(&self, initiator: &str, access: Access) -> bool {
        self.0.check(initiator, access)
    }
}

impl Reservations {
    /// `store` is `None` only for purely in-memory use (tests).
    pub fn new(arbiter: Arbiter, store: Option<StateStore>) -> Self {
        Reservations {
            arbiter: RwLock::new(arbiter),
            replay: Mutex::new(ReplayLog::default()),
            turnstile: Mutex::new(()),
            store,
        }
    }

    /// Starts with the PR OUT records saved in the state file.
    pub fn with_replay_log(self, replay: ReplayLog) -> Self {
        Reservations {
            replay: Mutex::new(replay),
            ..self
        }
    }

    fn replay_log(&self) -> std::sync::MutexGuard<'_, ReplayLog> {
        self.replay.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read_lock(&self) -> RwLockReadGuard<'_, Arbiter> {
        // A poisoned lock only means another thread panicked; the arbiter itself is consistent
        // after every call, so keep serving.
        drop(self.turnstile.lock().unwrap_or_else(|e| e.into_inner()));
        self.arbiter.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_lock(&self) -> RwLockWriteGuard<'_, Arbiter> {
        let _turn = self.turnstile.lock().unwrap_or_else(|e| e.into_inner());
        self.arbiter.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a data command of `initiator`, or `None` on a reservation conflict.
    pub fn admit(&self, initiator: &str, access: Access) -> Option<Admitted<'_>> {
        let arb = self.read_lock();
        if arb.check(initiator, access) {
            Some(Admitted(arb))
        } else {
            None
        }
    }

    /// Holds the arbiter steady for a batch of data commands: each is admitted with
    /// [`Admission::allows`], and all keep the guard until their I/O is done, like [`Admitted`].
    pub fn admission(&self) -> Admission<'_> {
        Admission(self.read_lock())
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

    /// Applies one PR change with `apply` under the write lock and makes it durable before
    /// returning its status; undone if it cannot be saved.
    fn change(
        &self,
        initiator: &str,
        what: &str,
        origin: Option<&Origin>,
        apply: impl FnOnce(&mut Arbiter) -> ProutOutcome,
    ) -> PrStatus {
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
                if outcome.preempted.is_empty() {
                    String::new()
                } else {
                    format!(", preempted {}", outcome.preempted.join(","))
                }
            );
        } else {
            log::debug!("{initiator}: {what} -> {:?}", outcome.status);
        }
        outcome.status
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

#[cfg(test)]
#[path = "tests/reservations.rs"]
mod tests;

#[cfg(test)]
#[path = "tests/reservations_lock.rs"]
mod lock_tests;

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

use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::pr::{Access, Arbiter, PrStatus, ProutRequest};
use crate::sense::Sense;
use crate::state::StateStore;

/// INTERNAL TARGET FAILURE: the change could not be made durable, so it was not made.
const INTERNAL_TARGET_FAILURE: Sense = Sense::new(0x04, 0x44, 0x00);

pub struct Reservations {
    arbiter: RwLock<Arbiter>,
    /// Passed by every reader and held by a writer until it has the lock (see above).
    turnstile: Mutex<()>,
    store: Option<StateStore>,
}

/// Proof that a data command was admitted; hold it until the command's I/O is done.
pub struct Admitted<'a>(#[allow(dead_code)] RwLockReadGuard<'a, Arbiter>);

impl Reservations {
    /// `store` is `None` only for purely in-memory use (tests).
    pub fn new(arbiter: Arbiter, store: Option<StateStore>) -> Self {
        Reservations {
            arbiter: RwLock::new(arbiter),
            turnstile: Mutex::new(()),
            store,
        }
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

    /// Applies a PERSISTENT RESERVE OUT and makes it durable before returning its status.
    pub fn prout(&self, initiator: &str, req: &ProutRequest) -> PrStatus {
        let mut arb = self.write_lock();
        let before = arb.clone();
        let outcome = arb.prout(initiator, req);
        if outcome.changed {
            if let Some(store) = &self.store {
                if let Err(e) = store.save(arb.state()) {
                    log::error!("{e}; {initiator}'s {:?} is undone", req.action);
                    *arb = before;
                    return PrStatus::CheckCondition(INTERNAL_TARGET_FAILURE);
                }
            }
            log::info!(
                "{initiator}: PR OUT {:?} type {} -> {:?}, generation {}{}",
                req.action,
                req.res_type,
                outcome.status,
                arb.state().generation,
                if outcome.preempted.is_empty() {
                    String::new()
                } else {
                    format!(", preempted {}", outcome.preempted.join(","))
                }
            );
        } else {
            log::debug!(
                "{initiator}: PR OUT {:?} -> {:?}",
                req.action,
                outcome.status
            );
        }
        outcome.status
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

//! One host: the state lives in a file next to the image, saved with the replay records of the
//! PR OUTs QEMU may still replay, in one atomic write per change.

use super::{BackendError, Change, Committed, PrBackend, Unsettled};
use crate::pr::fencing::{preempted, Reservations};
use crate::pr::state_file::{StateError, StateStore};
use crate::pr::PrStatus;
use crate::scsi::sense::Sense;
use crate::testhooks::failpoint;

/// INTERNAL TARGET FAILURE: the change could not be made durable, so it was not made.
const INTERNAL_TARGET_FAILURE: Sense = Sense::new(0x04, 0x44, 0x00);

/// The state file of one host; `None` only for purely in-memory use (tests).
pub struct LocalBackend {
    store: Option<StateStore>,
}

impl LocalBackend {
    pub fn new(store: Option<StateStore>) -> Self {
        LocalBackend { store }
    }
}

impl PrBackend for LocalBackend {
    fn may_admit(&self) -> bool {
        true
    }

    fn wait_to_admit(&self) -> bool {
        true
    }

    /// Applies the change under the write lock and makes it durable before returning its
    /// status; undone if it cannot be saved.
    fn commit(&self, fencing: &Reservations, change: Change<'_>) -> Committed {
        let Change {
            initiator,
            what,
            origin,
            apply,
        } = change;
        let mut arb = fencing.write_lock();
        let mut replay = fencing.replay_log();
        let before = arb.clone();
        let outcome = apply(&mut arb);
        if let Some(o) = origin {
            replay.record(initiator, o, outcome.status.clone());
        }
        if !outcome.changed {
            log::debug!("{initiator}: {what} -> {:?}", outcome.status);
            return Committed::Answered(outcome.status);
        }
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
                return Committed::Answered(PrStatus::CheckCondition(INTERNAL_TARGET_FAILURE));
            }
            failpoint::hit("prout-persisted");
        }
        log::info!(
            "{initiator}: {what} -> {:?}, generation {}{}",
            outcome.status,
            arb.state().generation,
            preempted(&outcome)
        );
        Committed::Answered(outcome.status)
    }

    fn confirm_current(&self, _fencing: &Reservations) -> bool {
        true
    }

    fn settle(&self, _unsettled: &Unsettled) -> Result<(), BackendError> {
        Ok(())
    }

    fn serves(&self, _initiator: &str) -> bool {
        true
    }
}

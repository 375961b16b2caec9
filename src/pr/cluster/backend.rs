//! The etcd backend: what the fencing asks of the shared state (see [`PrBackend`]), computed on
//! the state held here and committed to etcd by compare-and-swap (`etcd.rs`).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::etcd::{Agent, EtcdState};
use crate::lun::Lun;
use crate::pr::backend::{BackendError, Change, Committed, PrBackend, SharedView, Unsettled};
use crate::pr::fencing::{preempted, Reservations, BUSY};
use crate::pr::replay::Origin;
use crate::pr::PrStatus;
use crate::pr::{Arbiter, PrState};
use crate::scsi::sense::Sense;
use crate::testhooks::failpoint;
use crate::util::lock::lock;

/// How often a PR command computes again after losing a compare-and-swap race.
const MAX_TRIES: usize = 8;

/// A state another daemon committed, for [`EtcdState::adopt`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remote {
    /// The shared state's sequence number: one more for every committed change.
    pub epoch: u64,
    /// The shared state's version in the store (etcd's `mod_revision`), which a commit names.
    pub version: i64,
    pub state: PrState,
    /// The unit attentions the changes since our epoch queued, per initiator, each with the
    /// epoch of the change that established it.
    pub unit_attentions: Vec<(String, Sense, u64)>,
    /// Which line of states this is (see `etcd.rs`, `StateValue::history`).
    pub history: String,
}

/// What committing a PR change to the shared state gave.
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
    /// change is resolved later (see `etcd.rs`).
    Unavailable(String),
}

/// The shared state in etcd as the fencing's backend, with the agent that keeps the read lease
/// once started.
pub struct EtcdBackend {
    state: Arc<EtcdState>,
    agent: Mutex<Option<Agent>>,
}

impl EtcdBackend {
    pub fn new(state: Arc<EtcdState>) -> Self {
        EtcdBackend {
            state,
            agent: Mutex::new(None),
        }
    }
}

impl EtcdState {
    /// Takes in a state another daemon committed. Like a PR OUT it waits for every admitted
    /// command to finish; then the state is replaced and the unit attentions for this daemon's
    /// initiators are queued. Returns false (and changes nothing) for a state that is not newer
    /// than the one held.
    pub fn adopt(&self, fencing: &Reservations, remote: Remote) -> bool {
        let mut arb = fencing.write_lock();
        self.adopt_locked(fencing, &mut arb, remote)
    }

    fn adopt_locked(&self, fencing: &Reservations, arb: &mut Arbiter, remote: Remote) -> bool {
        let (held, _) = self.held();
        if remote.epoch <= held {
            return false;
        }
        arb.replace_state(remote.state);
        for (initiator, sense, epoch) in &remote.unit_attentions {
            if self.serves(initiator) {
                arb.queue_unit_attention(initiator, *sense);
            } else {
                self.note_moving(initiator, *sense, *epoch);
            }
        }
        self.set_held(remote.epoch, remote.version);
        self.save_local_copy(fencing, arb);
        log::info!(
            "adopted shared state {} (generation {}, {} registrations)",
            remote.epoch,
            arb.state().generation,
            arb.state().registrations.len()
        );
        true
    }

    /// The state file is a local copy of the shared state (etcd wins at start), so a failure
    /// to write it is logged, not answered.
    fn save_local_copy(&self, fencing: &Reservations, arb: &Arbiter) {
        if let Some(store) = self.store() {
            if let Err(e) = store.save(arb.state(), fencing.replay_log().records()) {
                log::warn!("{e} (a local copy only: the shared state is in etcd)");
                return;
            }
            self.save_mark();
        }
    }

    /// A PR change is computed on a copy of the state held here and committed to the shared
    /// state by compare-and-swap on its epoch; when another daemon changed it first, that state
    /// is adopted and the change computed again. Once committed, the change is applied here
    /// (under the write lock, so I/O admitted under the old state has finished); the fencing
    /// then settles it. Anything that cannot be proven in time gets BUSY, never GOOD.
    fn commit_change(&self, fencing: &Reservations, change: Change<'_>) -> Committed {
        let Change {
            initiator,
            what,
            origin,
            apply,
        } = change;
        let deadline = super::config::after(self.budget());
        if !self.lease().wait_held(self.hold()) {
            self.busy_log.warn(format_args!(
                "{initiator}: {what}: the shared state is out of reach: BUSY"
            ));
            return Committed::Answered(BUSY);
        }
        for _ in 0..MAX_TRIES {
            if Instant::now() >= deadline {
                break;
            }
            let mut arb = fencing.write_lock();
            let mut next = arb.clone();
            let outcome = apply(&mut next);
            // The unit attentions for other daemons' initiators travel with the change; each
            // daemon queues those of its own guests when it adopts it.
            let theirs = next.take_unit_attentions(|i| !self.serves(i));
            let (epoch, version) = self.held();
            let proposed = outcome.changed.then(|| next.state());
            let replay = proposed
                .and(origin)
                .map(|o| self.replay_value(fencing, epoch + 1, initiator, o, &outcome.status));
            let (epoch, version, newer) = match self.commit(
                epoch,
                version,
                proposed,
                &theirs,
                replay.as_deref(),
                deadline,
            ) {
                Commit::Confirmed => {
                    // Nothing changed in the shared state; unit attentions of a failed command
                    // (none today) would still be local. The answer shows the state held
                    // here, so it waits until that state is settled, like a change.
                    *arb = next;
                    fencing.record(initiator, origin, &outcome.status);
                    log::debug!("{initiator}: {what} -> {:?}", outcome.status);
                    return Committed::Unsettled(Unsettled {
                        status: outcome.status,
                        epoch,
                        deadline,
                    });
                }
                Commit::Done { epoch, version } => {
                    self.note_moving_all(&theirs, epoch);
                    (epoch, version, None)
                }
                Commit::Superseded {
                    epoch,
                    version,
                    newer,
                } => {
                    self.note_moving_all(&theirs, epoch);
                    (epoch, version, Some(newer))
                }
                Commit::Stale(remote) => {
                    self.adopt_locked(fencing, &mut arb, remote);
                    continue;
                }
                Commit::Unavailable(why) => {
                    self.busy_log
                        .warn(format_args!("{initiator}: {what}: {why}: BUSY"));
                    return Committed::Answered(BUSY);
                }
            };
            // The commit is answered; nothing local is saved yet (a crash here is resolved
            // through the replay records committed with it).
            failpoint::hit("prout-committed");
            *arb = next;
            self.set_held(epoch, version);
            fencing.record(initiator, origin, &outcome.status);
            self.save_local_copy(fencing, &arb);
            log::info!(
                "{initiator}: {what} -> {:?}, generation {}, shared state {epoch}{}",
                outcome.status,
                arb.state().generation,
                preempted(&outcome)
            );
            if let Some(newer) = newer {
                self.adopt_locked(fencing, &mut arb, newer);
            }
            return Committed::Unsettled(Unsettled {
                status: outcome.status,
                epoch,
                deadline,
            });
        }
        self.busy_log.warn(format_args!(
            "{initiator}: {what}: the shared state kept changing under it, or the command's \
             budget is spent: BUSY"
        ));
        Committed::Answered(BUSY)
    }

    /// The `replay/<node>` value a commit of `epoch` writes: this node's replay records once the
    /// command from `origin` is recorded with `status` (the status it gets once settled). Too
    /// many to fit [`super::etcd`]'s bound: only this command's.
    fn replay_value(
        &self,
        fencing: &Reservations,
        epoch: u64,
        initiator: &str,
        origin: &Origin,
        status: &PrStatus,
    ) -> Vec<u8> {
        let mut log = fencing.replay_log().clone();
        log.record(initiator, origin, status.clone());
        let value = self.replay_records_value(epoch, log.records());
        if value.len() <= super::etcd::MAX_REPLAY_BYTES {
            return value;
        }
        let mine = log
            .records()
            .last()
            .cloned()
            .into_iter()
            .collect::<Vec<_>>();
        self.replay_records_value(epoch, &mine)
    }

    /// Whether the state held here is the newest, after adopting a newer one if there is, and
    /// settled: a PR IN must not show a change some daemon may still admit I/O against. A held
    /// epoch above the settled marker is settled here within the command's budget, else false.
    fn confirm_current(&self, fencing: &Reservations) -> bool {
        if !self.lease().wait_held(self.hold()) {
            return false;
        }
        let deadline = super::config::after(self.budget());
        for _ in 0..MAX_TRIES {
            let (epoch, version) = self.held();
            match self.commit(epoch, version, None, &[], None, deadline) {
                Commit::Confirmed | Commit::Done { .. } | Commit::Superseded { .. } => {
                    return self.held_settled(deadline)
                }
                Commit::Stale(remote) => {
                    self.adopt(fencing, remote);
                }
                Commit::Unavailable(why) => {
                    self.busy_log.warn(format_args!("PR IN: {why}: BUSY"));
                    return false;
                }
            }
        }
        false
    }

    /// Whether the epoch held here is settled, settling it by `deadline` if it is not yet.
    fn held_settled(&self, deadline: Instant) -> bool {
        let (held, _) = self.held();
        match self.settle(held, deadline) {
            Ok(()) => true,
            Err(why) => {
                self.busy_log.warn(format_args!(
                    "PR IN: shared state {held} is committed but not settled ({why}): BUSY \
                     until it is (retried in the background; `ctl cluster status` shows it)"
                ));
                false
            }
        }
    }
}

impl PrBackend for EtcdBackend {
    fn may_admit(&self) -> bool {
        self.state.lease().admits()
    }

    fn io_deadline(&self) -> Option<u64> {
        Some(self.state.lease().io_deadline(self.state.max_io()))
    }

    fn io_done(&self, deadline: u64) {
        let Some(late) = self.state.lease().overran(deadline) else {
            return;
        };
        log::error!(
            "cluster: an admitted I/O ended {} ms after its bound (the read lease's end + \
             max_io_ms {} ms): it may have reached the image after another host's PR OUT \
             returned GOOD. This daemon admits no I/O and answers PR commands BUSY from now on. \
             The storage is slower than max_io_ms: fix the storage, or raise max_io_ms on every \
             host (the wait bound and budget_ms with it); then restart this daemon or run \
             `sharedisk ctl cluster resume`",
            late.as_millis(),
            self.state.max_io().as_millis()
        );
    }

    fn resume(&self, fencing: &Reservations) -> Result<(), String> {
        // Nothing is admitted while the fault is raised: with the write lock held, every
        // admitted I/O has ended, and none can overrun after the fault is cleared.
        fencing
            .with_mut(|_| self.state.lease().resume())
            .map_err(|e| e.to_string())?;
        log::warn!(
            "cluster: resumed after an I/O overrun by the operator (`sharedisk ctl cluster \
             resume`): admitting I/O again"
        );
        Ok(())
    }

    fn wait_to_admit(&self) -> bool {
        self.state.lease().wait_held(self.state.hold())
    }

    fn commit(&self, fencing: &Reservations, change: Change<'_>) -> Committed {
        self.state.commit_change(fencing, change)
    }

    fn confirm_current(&self, fencing: &Reservations) -> bool {
        self.state.confirm_current(fencing)
    }

    fn shows_settled(&self) -> bool {
        self.state.held().0 <= self.state.settled()
    }

    fn settle(&self, unsettled: &Unsettled) -> Result<(), BackendError> {
        Ok(self.state.settle(unsettled.epoch, unsettled.deadline)?)
    }

    fn serves(&self, initiator: &str) -> bool {
        self.state.serves(initiator)
    }

    fn serve(&self, initiator: &str) {
        self.state.serve(initiator);
    }

    fn unserve(&self, initiator: &str) {
        self.state.unserve(initiator);
    }

    fn gate(&self, initiator: &str) -> Option<Arc<dyn crate::transport::virtqueue::Gate>> {
        Some(self.state.gate(initiator))
    }

    fn start(&self, lun: Arc<Lun>) {
        *lock(&self.agent) = Some(Agent::start(self.state.clone(), lun));
    }

    fn stop(&self) {
        // Taken out first: stopping waits for admitted I/O, which must not wait on this lock.
        let agent = lock(&self.agent).take();
        if let Some(mut agent) = agent {
            agent.stop();
        }
    }

    fn view(&self) -> Option<SharedView> {
        Some(SharedView {
            epoch: self.state.held().0,
            settled_epoch: self.state.settled(),
            lease_valid: self.state.lease().valid(),
            lease_remaining: self.state.lease().remaining(),
            fault: self
                .state
                .fault()
                .map(|f| f.kind())
                .or_else(|| self.state.lease().overrun().map(|_| "io_overrun")),
            io_overruns: self.state.lease().overruns(),
        })
    }

    fn status(&self) -> Option<serde_json::Value> {
        Some(self.state.status())
    }

    fn operate(
        &self,
        fencing: &Reservations,
        op: &crate::pr::backend::ClusterOp,
    ) -> Option<Result<serde_json::Value, String>> {
        use crate::pr::backend::ClusterOp;
        let r = match op {
            ClusterOp::Republish => self.state.republish(fencing),
            ClusterOp::Evict(node) => self.state.evict(node),
        };
        Some(r.map_err(|e| e.to_string()))
    }
}

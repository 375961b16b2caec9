//! Where the reservation state lives: the one trait for what differs between one host and
//! several. The fencing ([`crate::pr::fencing`]) holds the arbiter's lock and the replay log and
//! drives every change through a [`PrBackend`]; [`local::LocalBackend`] keeps the state in a
//! file next to the image, and the etcd backend (`crate::pr::cluster`, feature `cluster`)
//! shares it with daemons on other hosts.
//!
//! The guarantee the backends serve: once a PR OUT that removed access returns GOOD, no write
//! of the initiator it removed reaches the image, and a PR OUT that QEMU replays after a
//! reconnection gets its first execution's answer (exactly once).

pub mod local;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::lun::Lun;
use crate::pr::fencing::Reservations;
use crate::pr::replay::Origin;
use crate::pr::state_file::StateStore;
use crate::pr::{Arbiter, PrState, PrStatus, ProutOutcome};

#[cfg(feature = "cluster")]
pub use crate::pr::cluster::ClusterConfig;

/// `[cluster]` in a build without the `cluster` feature: read as an opaque table only so that
/// [`join`] refuses it with a clear message when the daemon starts.
#[cfg(not(feature = "cluster"))]
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(transparent)]
pub struct ClusterConfig(toml::Table);

#[cfg(not(feature = "cluster"))]
impl ClusterConfig {
    /// Nothing to check: [`join`] refuses the section.
    pub fn validate(&self) -> Result<(), JoinError> {
        Ok(())
    }

    /// The line `sharedisk` shows for this section when it describes the configuration.
    pub fn describe(&self) -> String {
        format!(
            "cluster:        [cluster] given, but {}\n",
            JoinError::Unsupported
        )
    }
}

/// One PR change, as the fencing hands it to [`PrBackend::commit`].
pub struct Change<'a> {
    /// Who asked: an initiator, or `"host"` for an [`crate::pr::fencing::OperatorAction`].
    pub initiator: &'a str,
    /// The change in words, for the log.
    pub what: &'a str,
    /// Where the PR OUT came from on its virtqueue, for the replay log.
    pub origin: Option<&'a Origin>,
    /// Computes the change on an arbiter (the one held, or a copy of it).
    pub apply: &'a mut dyn FnMut(&mut Arbiter) -> ProutOutcome,
}

/// What [`PrBackend::commit`] made of a change.
pub enum Committed {
    /// The command's final status.
    Answered(PrStatus),
    /// Committed and applied here, but the status may be returned only once
    /// [`PrBackend::settle`] says no other daemon can still admit I/O under the older state.
    Unsettled(Unsettled),
}

/// A committed change still to settle (see [`Committed::Unsettled`]).
pub struct Unsettled {
    /// The status the command gets once settled.
    pub status: PrStatus,
    /// The shared state's sequence number the change was committed as.
    pub epoch: u64,
    /// The command's budget: past it, the answer is BUSY.
    pub deadline: Instant,
}

/// Why a committed change could not be settled in time; the command gets BUSY.
pub type BackendError = Box<dyn std::error::Error + Send + Sync>;

/// The shared state as metrics show it; `None` from [`PrBackend::view`] on one host.
pub struct SharedView {
    /// The sequence number of the shared state held here.
    pub epoch: u64,
    /// The highest epoch known settled: PR IN and `ctl pr show` show the state held only when
    /// `epoch` is at most this.
    pub settled_epoch: u64,
    /// Whether the read lease is valid (I/O is admitted).
    pub lease_valid: bool,
    /// What is left of the read lease.
    pub lease_remaining: Duration,
    /// Why the daemon stopped admitting beyond a lost lease ("regression", "replaced",
    /// "io_overrun").
    pub fault: Option<&'static str>,
    /// How many admissions' I/O ended past their bound (lease end + `max_io_ms`) since the
    /// start.
    pub io_overruns: u64,
}

/// What differs between one host and several. Every method is called by the fencing; `commit`
/// and `confirm_current` with access to its lock, the others without it.
pub trait PrBackend: Send + Sync {
    /// Whether the state held here counts now, so that I/O may be admitted under it. Called
    /// with the arbiter's read lock held (a change waits for the admission to end), for every
    /// admission: it must be cheap and never block. One host: always.
    fn may_admit(&self) -> bool;

    /// The deadline by which the I/O of an admission made now must be done, on the backend's
    /// own clock; called with the arbiter's read lock held, right after
    /// [`PrBackend::may_admit`] said yes, for every admission: one atomic load, no clock read,
    /// no etcd call. Several hosts: the read lease's end + `max_io_ms`. One host: `None`
    /// (nothing to bound).
    fn io_deadline(&self) -> Option<u64> {
        None
    }

    /// The I/O of an admission whose [`PrBackend::io_deadline`] was `deadline` is done (called
    /// before the lock is released, one clock read). Past the deadline, the backend stops
    /// admitting and says so. One host: never called.
    fn io_done(&self, _deadline: u64) {}

    /// `sharedisk ctl cluster resume`: admits I/O again after an I/O overrun, once it is safe;
    /// what refused it otherwise. Called without the lock. One host: nothing to resume.
    fn resume(&self, _fencing: &Reservations) -> Result<(), String> {
        Err("not in cluster mode: nothing to resume".into())
    }

    /// Waits, at most the hold time, for [`PrBackend::may_admit`] to come back; false when it
    /// did not (new I/O and PR commands are then refused). Called without the lock.
    fn wait_to_admit(&self) -> bool;

    /// Commits one change: it is applied to the arbiter under the fencing's write lock (so I/O
    /// admitted under the old state has finished), recorded in the replay log when it has an
    /// origin, and made durable (one host: saved with the replay records in one atomic write,
    /// or undone and answered CHECK CONDITION) or shared (several hosts: compare-and-swap,
    /// adopting a newer state first) before the status is returned. Anything that cannot be
    /// proven in time is BUSY, never GOOD.
    fn commit(&self, fencing: &Reservations, change: Change<'_>) -> Committed;

    /// Whether the state held here may answer a PR IN (or a replayed PR OUT) now: it is the
    /// newest and settled (several hosts: confirmed by a linearizable read, after adopting a
    /// newer one if there is, and settled within the command's budget if it was not yet).
    /// False: the command gets BUSY. One host: always.
    fn confirm_current(&self, fencing: &Reservations) -> bool;

    /// Returns once no other daemon can admit I/O under the state before a committed change:
    /// each has acknowledged it or its lease has surely run out (strict mode: or it was
    /// fenced). Called without the lock. An error means the change is committed but the
    /// command gets BUSY. One host: nothing to wait for.
    fn settle(&self, unsettled: &Unsettled) -> Result<(), BackendError>;

    /// Whether the state held here is settled, so that it may be shown (PR IN, `ctl pr show`).
    /// Called with the arbiter's read lock held, under which the state held does not change:
    /// cheap, never blocks. One host: always.
    fn shows_settled(&self) -> bool {
        true
    }

    /// Whether `initiator` is one of this daemon's guests or live iSCSI nexuses (its unit
    /// attentions are queued here, the others travel with the change). One host: every
    /// initiator.
    fn serves(&self, initiator: &str) -> bool;

    /// A guest added at run time, or an iSCSI session's nexus at its login, is one of this
    /// daemon's initiators; [`PrBackend::unserve`] undoes it. One host: nothing to do.
    fn serve(&self, _initiator: &str) {}

    /// A guest removed at run time, or a nexus whose session ended, is not one of this daemon's
    /// initiators any more.
    fn unserve(&self, _initiator: &str) {}

    /// Cluster mode: what admits the guest `initiator`'s devices only while this daemon owns
    /// the guest (it may move to another daemon, `pr/cluster/owner.rs`). One host: `None`.
    fn gate(&self, _initiator: &str) -> Option<Arc<dyn crate::transport::virtqueue::Gate>> {
        None
    }

    /// Starts what keeps the state current in the background for `lun`, whose reservations use
    /// this backend (several hosts: the read lease's renewer). One host: nothing to start.
    fn start(&self, _lun: Arc<Lun>) {}

    /// Stops what [`PrBackend::start`] started: waits for admitted I/O and leaves the cluster.
    fn stop(&self) {}

    /// The shared state for metrics; `None` on one host.
    fn view(&self) -> Option<SharedView> {
        None
    }

    /// `sharedisk ctl cluster status`; `None` on one host.
    fn status(&self) -> Option<serde_json::Value> {
        None
    }

    /// An operator's step on the shared state (`ctl cluster republish`, `evict`); `None` on
    /// one host. Called without the lock.
    fn operate(
        &self,
        _fencing: &Reservations,
        _op: &ClusterOp,
    ) -> Option<Result<serde_json::Value, String>> {
        None
    }
}

/// An operator's step on the shared state (see [`PrBackend::operate`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterOp {
    /// Write the state held here as the newest (after the shared state went back in time).
    Republish,
    /// Remove this member (its host is gone).
    Evict(String),
}

/// Why this daemon could not join the cluster its `[cluster]` section names.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// etcd could not be reached in time, or holds an unusable state.
    #[cfg(feature = "cluster")]
    #[error(transparent)]
    Cluster(#[from] crate::pr::cluster::etcd::ClusterError),
    /// This build has no cluster support.
    #[error(
        "this sharedisk was built without cluster support; build it with `cargo build --release \
         --features cluster` (which needs protoc) to use [cluster]"
    )]
    Unsupported,
}

/// This daemon in the cluster, once joined (see [`join`]).
pub struct Joined {
    /// The shared state's backend, for [`Reservations::with_backend`].
    pub backend: Arc<dyn PrBackend>,
    /// The newest shared state, which the daemon starts from.
    pub state: PrState,
    /// The disk's id, the same on every host: the LU's identity comes from it.
    pub disk_id: String,
    /// This node's PR OUT replay records as the shared state holds them (committed with its
    /// last change), to merge into the local copy's ([`crate::pr::replay::ReplayLog::restore`]).
    pub replay: Vec<crate::pr::replay::Record>,
}

/// Joins the cluster `cfg` names (`local`, this host's state, is imported by the first daemon of
/// a disk, `None` when it could not be read; `store` then keeps a local copy of the shared state).
pub fn join(
    cfg: &ClusterConfig,
    guests: &[String],
    local: Option<&PrState>,
    store: Option<StateStore>,
) -> Result<Joined, JoinError> {
    #[cfg(feature = "cluster")]
    {
        let (backend, remote, replay) = crate::pr::cluster::join(cfg, guests, local, store)?;
        Ok(Joined {
            backend,
            state: remote.state,
            disk_id: cfg.disk_id.clone(),
            replay,
        })
    }
    #[cfg(not(feature = "cluster"))]
    {
        let _ = (cfg, guests, local, store);
        Err(JoinError::Unsupported)
    }
}

#[doc(hidden)]
#[cfg(any(test, feature = "test-hooks"))]
pub mod conformance;

#[cfg(test)]
mod tests;

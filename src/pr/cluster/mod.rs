//! Several daemons on several hosts serving one disk share one reservation state through etcd
//! (`[cluster]` in the configuration).
//!
//! The pieces, and the guarantee they keep together — once a PREEMPT, PREEMPT AND ABORT, CLEAR or
//! unregistration returns GOOD, no write of the initiator it removed reaches the disk, whichever
//! host serves that initiator:
//! - [`lease::ReadLease`]: a daemon admits I/O only while its own read lease is valid, measured on
//!   its own `CLOCK_BOOTTIME`. It is renewed by a linearizable etcd transaction proving that the
//!   daemon holds the newest state. Admission costs one atomic load and one clock read, never an
//!   etcd call.
//! - `etcd` (with `etcd/join.rs`, `renew.rs`, `commit.rs`, `settle.rs`, `members.rs`,
//!   `operate.rs`): the state
//!   is one etcd key, changed only by compare-and-swap on its
//!   revision; the agent keeps the lease, applies peers' changes and acknowledges them; a PR OUT
//!   returns only after every other member acknowledged it or its lease surely ran out.
//!
//! - `backend`: the fencing's [`crate::pr::backend::PrBackend`] on top of it.
//!
//! Compiled with the `cluster` feature only. Without a `[cluster]` section none of this runs and
//! nothing changes.

pub mod backend;
pub mod config;
mod endpoints;
pub mod etcd;
pub mod lease;
mod ratelimit;

use std::sync::Arc;

pub use config::{ClusterConfig, ClusterConfigError};

/// Joins the cluster `cfg` names (see `etcd.rs`): the daemon then starts from the newest shared
/// state (returned with the backend), importing `local` if it is the first daemon of this disk
/// (`None`: the local copy could not be read, and etcd must hold the state).
/// `store` keeps a local copy of the shared state. Also returns this node's replay records as
/// etcd holds them.
pub fn join(
    cfg: &ClusterConfig,
    guests: &[String],
    local: Option<&crate::pr::PrState>,
    store: Option<crate::pr::state_file::StateStore>,
) -> Result<
    (
        Arc<backend::EtcdBackend>,
        backend::Remote,
        Vec<crate::pr::replay::Record>,
    ),
    etcd::ClusterError,
> {
    let (state, remote) = etcd::EtcdState::join(cfg, guests, local, store)?;
    let replay = state.take_restored_replay();
    Ok((Arc::new(backend::EtcdBackend::new(state)), remote, replay))
}

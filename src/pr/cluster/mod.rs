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
//! - `etcd` (feature `cluster`): the state is one etcd key, changed only by compare-and-swap on its
//!   revision; the agent keeps the lease, applies peers' changes and acknowledges them; a PR OUT
//!   returns only after every other member acknowledged it or its lease surely ran out.
//!
//! Without a `[cluster]` section none of this runs and nothing changes.

#[cfg(feature = "cluster")]
pub mod backend;
#[cfg(feature = "cluster")]
mod endpoints;
#[cfg(feature = "cluster")]
pub mod etcd;
#[cfg(feature = "cluster")]
pub mod lease;

#[cfg(feature = "cluster")]
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

/// `[cluster]`: where the shared state lives and the timing the guarantee rests on.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// etcd client URLs (`http://host:2379`), every member of the etcd cluster. Plain HTTP only:
    /// TLS to etcd is not supported yet.
    pub etcd: Vec<String>,
    /// This daemon's name in the cluster: unique per host, stable across restarts.
    pub node: String,
    /// The disk's id, the same on every host (inode identities differ between hosts).
    pub disk_id: String,
    /// Prefix of every key in etcd; the disk's keys are under `<prefix>/<disk_id>/`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// V, the read lease in milliseconds: how long after sending a renewal that proved it
    /// current a daemon may admit I/O.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// How often the lease is renewed, in milliseconds (default V/3).
    pub renew_ms: Option<u64>,
    /// ε, the largest relative rate error of the hosts' clocks (0.01 = 1 %).
    #[serde(default = "default_drift")]
    pub drift: f64,
    /// D_io, in milliseconds: the longest an admitted I/O takes to finish on the image. It must
    /// cover the storage's own timeouts (NFS `timeo`, iSCSI `replacement_timeout`).
    #[serde(default = "default_max_io_ms")]
    pub max_io_ms: u64,
    /// While the lease is lost, new I/O waits this long (milliseconds) for it to come back, then
    /// fails: BUSY on scsi, IOERR on blk.
    #[serde(default = "default_hold_ms")]
    pub hold_ms: u64,
    /// The most a PR OUT may take, in milliseconds, before it gets BUSY (Linux sd gives a
    /// command 30 s).
    #[serde(default = "default_budget_ms")]
    pub budget_ms: u64,
    /// Strict mode: before a PR OUT that removed access returns GOOD, every member that did not
    /// acknowledge it must be fenced by this command (run with `sh -c`, the member's node name in
    /// `$SHAREDISK_FENCE_NODE`); if the hook fails, the PR OUT gets BUSY, never GOOD.
    pub fence_hook: Option<String>,
}

fn default_prefix() -> String {
    "/sharedisk/v1".into()
}
fn default_lease_ms() -> u64 {
    5000
}
fn default_drift() -> f64 {
    0.01
}
fn default_max_io_ms() -> u64 {
    10_000
}
fn default_hold_ms() -> u64 {
    20_000
}
fn default_budget_ms() -> u64 {
    25_000
}

impl ClusterConfig {
    /// The configuration's mistakes, in words.
    pub fn validate(&self) -> Result<(), String> {
        if self.etcd.is_empty() {
            return Err("`cluster.etcd` lists no endpoint".into());
        }
        if let Some(e) = self
            .etcd
            .iter()
            .find(|e| !e.starts_with("http://") || e.len() <= "http://".len())
        {
            return Err(format!(
                "`cluster.etcd` endpoint {e:?} is not an http:// URL (TLS to etcd is not \
                 supported yet)"
            ));
        }
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        if !name_ok(&self.node) {
            return Err(format!(
                "`cluster.node` {:?}: 1 to 64 letters, digits, '-', '_' or '.'",
                self.node
            ));
        }
        if !name_ok(&self.disk_id) {
            return Err(format!(
                "`cluster.disk_id` {:?}: 1 to 64 letters, digits, '-', '_' or '.'",
                self.disk_id
            ));
        }
        if !self.prefix.starts_with('/') || self.prefix.ends_with('/') {
            return Err(format!(
                "`cluster.prefix` {:?} must start with '/' and not end with one",
                self.prefix
            ));
        }
        if !(100..=600_000).contains(&self.lease_ms) {
            return Err(format!(
                "`cluster.lease_ms` {} is out of range (100 to 600000)",
                self.lease_ms
            ));
        }
        if let Some(r) = self.renew_ms {
            if r == 0 || r * 2 > self.lease_ms {
                return Err(format!(
                    "`cluster.renew_ms` {r} must be above 0 and at most half of lease_ms ({})",
                    self.lease_ms
                ));
            }
        }
        if !(0.0..0.5).contains(&self.drift) {
            return Err(format!(
                "`cluster.drift` {} is out of range (0 to 0.5)",
                self.drift
            ));
        }
        if self.max_io_ms == 0 {
            return Err("`cluster.max_io_ms` must be above 0".into());
        }
        if self.budget_ms <= self.wait_bound().as_millis() as u64 {
            return Err(format!(
                "`cluster.budget_ms` {} must exceed lease_ms × (1 + drift) + max_io_ms ({} ms): \
                 a PREEMPT may have to wait that long for a member that is cut off",
                self.budget_ms,
                self.wait_bound().as_millis()
            ));
        }
        Ok(())
    }

    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }

    pub fn renew_every(&self) -> Duration {
        Duration::from_millis(self.renew_ms.unwrap_or(self.lease_ms / 3).max(1))
    }

    pub fn hold(&self) -> Duration {
        Duration::from_millis(self.hold_ms)
    }

    pub fn budget(&self) -> Duration {
        Duration::from_millis(self.budget_ms)
    }

    /// How long after it received the reply to its commit an issuer waits for a member that does
    /// not acknowledge: that member's lease, renewed at the latest just before the commit, has
    /// run out even on a clock running ε fast (V·(1+ε)), and the I/O it admitted last has
    /// finished (D_io).
    pub fn wait_bound(&self) -> Duration {
        Duration::from_secs_f64(self.lease_ms as f64 * (1.0 + self.drift) / 1000.0)
            + Duration::from_millis(self.max_io_ms)
    }

    /// The etcd key prefix of this disk, ending in '/'.
    pub fn disk_prefix(&self) -> String {
        format!("{}/{}/", self.prefix, self.disk_id)
    }
}

/// Joins the cluster `cfg` names (see `etcd.rs`): the daemon then starts from the newest shared
/// state (returned with the backend), importing `local` if it is the first daemon of this disk.
/// `store` keeps a local copy of the shared state.
#[cfg(feature = "cluster")]
pub fn join(
    cfg: &ClusterConfig,
    guests: &[String],
    local: &crate::pr::PrState,
    store: Option<crate::pr::state_file::StateStore>,
) -> Result<(Arc<backend::EtcdBackend>, backend::Remote), etcd::ClusterError> {
    let (state, remote) = etcd::EtcdState::join(cfg, guests, local, store)?;
    Ok((Arc::new(backend::EtcdBackend::new(state)), remote))
}

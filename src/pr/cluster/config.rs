//! `[cluster]`: the configuration of cluster mode, and its mistakes.

use std::time::Duration;

use serde::Deserialize;

/// A mistake in `[cluster]`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClusterConfigError {
    /// `etcd` is empty.
    #[error("`cluster.etcd` lists no endpoint")]
    NoEndpoint,
    /// An `etcd` endpoint is not a plain http:// URL.
    #[error(
        "`cluster.etcd` endpoint {0:?} is not an http:// URL (TLS to etcd is not supported yet)"
    )]
    NotHttp(String),
    /// `node` is not a usable name.
    #[error(
        "`cluster.node` {0:?}: 1 to 64 letters, digits, '-', '_' or '.', not starting with '-'"
    )]
    BadNode(String),
    /// `disk_id` is not a usable name.
    #[error(
        "`cluster.disk_id` {0:?}: 1 to 64 letters, digits, '-', '_' or '.', not starting with '-'"
    )]
    BadDiskId(String),
    /// `prefix` is not an absolute key prefix without a trailing '/'.
    #[error("`cluster.prefix` {0:?} must start with '/' and not end with one")]
    BadPrefix(String),
    /// `lease_ms` is outside 100 to 600000.
    #[error("`cluster.lease_ms` {0} is out of range (100 to 600000)")]
    LeaseOutOfRange(u64),
    /// `renew_ms` is 0 or more than half of `lease_ms`.
    #[error(
        "`cluster.renew_ms` {renew_ms} must be above 0 and at most half of lease_ms ({lease_ms})"
    )]
    BadRenew { renew_ms: u64, lease_ms: u64 },
    /// `drift` is outside 0 to 0.5.
    #[error("`cluster.drift` {0} is out of range (0 to 0.5)")]
    DriftOutOfRange(f64),
    /// A millisecond setting is outside its documented range (all fit in a `u64` of nanoseconds
    /// with room to add them together).
    #[error("`cluster.{key}` {value} is out of range ({min} to {max})")]
    MsOutOfRange {
        key: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    /// `budget_ms` does not cover the longest wait for a member that is cut off.
    #[error(
        "`cluster.budget_ms` {budget_ms} must exceed lease_ms × (1 + drift) / (1 - drift) + \
         max_io_ms ({bound_ms} ms): a PREEMPT may have to wait that long for a member that is cut \
         off"
    )]
    BudgetTooShort { budget_ms: u64, bound_ms: u128 },
}

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
    /// The host-local directory of this node's local copy of the shared state,
    /// `<state_dir>/<disk_id>.<node>.pr` (default [`DEFAULT_STATE_DIR`]). etcd holds the truth:
    /// the copy is imported only by the first daemon of a disk, and a missing or unreadable one
    /// never stops a daemon that etcd answers. `image.state` (`--state`), when set, names the
    /// file instead: it must then be per node and host-local too.
    #[serde(default)]
    pub state_dir: Option<std::path::PathBuf>,
}

/// Where a node keeps its local copy of the shared state unless `state_dir` says otherwise:
/// host-local, never beside the shared image (every host would write the same file).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/sharedisk";

/// `d` in nanoseconds, saturating at `u64::MAX` instead of wrapping (`as u64` would).
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `d` from now: an `Instant` far in the future instead of the panic of `Instant + Duration` when
/// the sum does not fit.
pub fn after(d: Duration) -> std::time::Instant {
    let now = std::time::Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(u64::from(u32::MAX))))
        .unwrap_or(now)
}

/// The largest `max_io_ms`, `hold_ms` and `budget_ms`: one day. With `lease_ms` at most 600000
/// and `drift` below 0.5, every deadline built from them stays far below 2^64 ns (584 years).
pub const MAX_MS: u64 = 86_400_000;

fn default_prefix() -> String {
    "/sharedisk/v1".into()
}
/// V's default, in milliseconds.
pub const DEFAULT_LEASE_MS: u64 = 5000;

fn default_lease_ms() -> u64 {
    DEFAULT_LEASE_MS
}
fn default_drift() -> f64 {
    0.01
}
fn default_max_io_ms() -> u64 {
    10_000
}
/// `hold_ms` unless configured. The systemd unit's `TimeoutStopSec` covers it plus
/// [`DEFAULT_BUDGET_MS`] (a stop during an etcd outage may wait for both).
pub const DEFAULT_HOLD_MS: u64 = 20_000;
/// `budget_ms` unless configured.
pub const DEFAULT_BUDGET_MS: u64 = 25_000;

fn default_hold_ms() -> u64 {
    DEFAULT_HOLD_MS
}
fn default_budget_ms() -> u64 {
    DEFAULT_BUDGET_MS
}

/// The node-name (and disk id) rule: 1 to 64 letters, digits, '-', '_' or '.', not starting with
/// '-' (a name reaches the fence hook as an argument, where it must never read as an option).
pub fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl ClusterConfig {
    /// The configuration's mistakes, in words.
    pub fn validate(&self) -> Result<(), ClusterConfigError> {
        use ClusterConfigError as E;
        if self.etcd.is_empty() {
            return Err(E::NoEndpoint);
        }
        if let Some(e) = self
            .etcd
            .iter()
            .find(|e| !e.starts_with("http://") || e.len() <= "http://".len())
        {
            return Err(E::NotHttp(e.clone()));
        }
        if !name_ok(&self.node) {
            return Err(E::BadNode(self.node.clone()));
        }
        if !name_ok(&self.disk_id) {
            return Err(E::BadDiskId(self.disk_id.clone()));
        }
        if !self.prefix.starts_with('/') || self.prefix.ends_with('/') {
            return Err(E::BadPrefix(self.prefix.clone()));
        }
        if !(100..=600_000).contains(&self.lease_ms) {
            return Err(E::LeaseOutOfRange(self.lease_ms));
        }
        if let Some(r) = self.renew_ms {
            if r == 0 || r > self.lease_ms / 2 {
                return Err(E::BadRenew {
                    renew_ms: r,
                    lease_ms: self.lease_ms,
                });
            }
        }
        if !(0.0..0.5).contains(&self.drift) {
            return Err(E::DriftOutOfRange(self.drift));
        }
        for (key, value, min) in [
            ("max_io_ms", self.max_io_ms, 1),
            ("hold_ms", self.hold_ms, 0),
            ("budget_ms", self.budget_ms, 1),
        ] {
            if !(min..=MAX_MS).contains(&value) {
                return Err(E::MsOutOfRange {
                    key,
                    value,
                    min,
                    max: MAX_MS,
                });
            }
        }
        if u128::from(self.budget_ms) <= self.wait_bound().as_millis() {
            return Err(E::BudgetTooShort {
                budget_ms: self.budget_ms,
                bound_ms: self.wait_bound().as_millis(),
            });
        }
        Ok(())
    }

    /// The lines `sharedisk` shows for this section when it describes the configuration.
    pub fn describe(&self) -> String {
        format!(
            "cluster:        node {} of disk {} through etcd {}\n  read lease {} ms renewed every \
             {} ms, drift {}, max I/O {} ms: a PR OUT waits at most {} ms for a member that does \
             not acknowledge\n  lost lease: I/O held {} ms, then BUSY/IOERR; PR OUT budget {} ms; \
             {}\n",
            self.node,
            self.disk_id,
            self.etcd.join(","),
            self.lease_ms,
            self.renew_every().as_millis(),
            self.drift,
            self.max_io_ms,
            self.wait_bound().as_millis(),
            self.hold_ms,
            self.budget_ms,
            if self.fence_hook.is_some() {
                "strict mode (fence hook)"
            } else {
                "soft mode (no fence hook)"
            }
        )
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
    /// run out, and the I/O it admitted last has finished (D_io). The member's clock may run ε
    /// slow, so its lease V lasts up to V/(1−ε) of real time; the issuer's clock may run ε fast,
    /// so its wait must measure V(1+ε)/(1−ε) on it: W = V·(1+ε)/(1−ε) + D_io. Saturates rather than
    /// wraps on a configuration `validate` refuses.
    pub fn wait_bound(&self) -> Duration {
        let v = self.lease_ms as f64 * (1.0 + self.drift) / (1.0 - self.drift) / 1000.0;
        Duration::try_from_secs_f64(v)
            .unwrap_or(Duration::MAX)
            .saturating_add(Duration::from_millis(self.max_io_ms))
    }

    /// This node's local copy of the shared state: `<state_dir>/<disk_id>.<node>.pr`.
    pub fn local_copy(&self) -> std::path::PathBuf {
        self.state_dir
            .as_deref()
            .unwrap_or(std::path::Path::new(DEFAULT_STATE_DIR))
            .join(format!("{}.{}.pr", self.disk_id, self.node))
    }

    /// The etcd key prefix of this disk, ending in '/'.
    pub fn disk_prefix(&self) -> String {
        format!("{}/{}/", self.prefix, self.disk_id)
    }
}

//! `[cluster]`: the configuration of cluster mode, and its mistakes.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// A mistake in `[cluster]`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClusterConfigError {
    /// `etcd` is empty.
    #[error("`cluster.etcd` lists no endpoint")]
    NoEndpoint,
    /// An `etcd` endpoint is neither an http:// nor an https:// URL with a host.
    #[error("`cluster.etcd` endpoint {0:?} is not an https:// (or http://) URL with a host")]
    NotUrl(String),
    /// Some endpoints are https:// and others http://.
    #[error(
        "`cluster.etcd` mixes https:// and http:// endpoints ({0:?}): every member of one etcd \
         cluster speaks the same"
    )]
    MixedSchemes(String),
    /// http:// endpoints without `insecure = true`.
    #[error(
        "`cluster.etcd` endpoint {0:?} is plain http://: anyone who can reach etcd could then \
         read and change the reservations. Use https:// with `ca_file` (and `cert_file` + \
         `key_file` or `user` + `password_file`), or set `insecure = true` in [cluster] to accept \
         plain http:// knowingly"
    )]
    PlainHttp(String),
    /// https:// endpoints without `ca_file`.
    #[error(
        "`cluster.etcd` is https:// but `cluster.ca_file` is not set: name the PEM file of the \
         CA that signed etcd's server certificates"
    )]
    NoCaFile,
    /// TLS settings given with http:// endpoints.
    #[error("`cluster.{0}` needs https:// endpoints in `cluster.etcd` (they are http://)")]
    TlsWithoutHttps(&'static str),
    /// `insecure = true` with https:// endpoints.
    #[error(
        "`cluster.insecure = true` is for plain http:// endpoints; `cluster.etcd` is https://: \
         remove `insecure`"
    )]
    InsecureWithHttps,
    /// One of `cert_file` and `key_file` without the other.
    #[error("`cluster.cert_file` and `cluster.key_file` come together: set both or neither")]
    CertWithoutKey,
    /// One of `user` and `password_file` without the other.
    #[error("`cluster.user` and `cluster.password_file` come together: set both or neither")]
    UserWithoutPassword,
    /// `user` is empty, too long, or holds control characters or spaces.
    #[error("`cluster.user` {0:?}: 1 to 128 characters, no spaces or control characters")]
    BadUser(String),
    /// A key, certificate or password file cannot be read.
    #[error("`cluster.{key}` {path:?} cannot be read: {reason}")]
    FileUnreadable {
        key: &'static str,
        path: std::path::PathBuf,
        reason: String,
    },
    /// A key, certificate or password file is not a regular file.
    #[error("`cluster.{key}` {path:?} is not a regular file")]
    NotRegularFile {
        key: &'static str,
        path: std::path::PathBuf,
    },
    /// A private key or password file that other users may read.
    #[error(
        "`cluster.{key}` {path:?} has mode {mode:04o}: a secret must not be readable by group or \
         others (chmod 600 {path:?})"
    )]
    SecretTooOpen {
        key: &'static str,
        path: std::path::PathBuf,
        mode: u32,
    },
    /// A file does not hold what its key names (PEM certificates, a PEM key, one password line).
    #[error("`cluster.{key}` {path:?} does not hold {want}")]
    BadContent {
        key: &'static str,
        path: std::path::PathBuf,
        want: &'static str,
    },
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
    /// etcd client URLs (`https://host:2379`), every member of the etcd cluster. https:// needs
    /// `ca_file`; plain `http://` needs `insecure = true`.
    pub etcd: Vec<String>,
    /// The PEM file of the CA that signed etcd's server certificates (https:// endpoints).
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// This daemon's client certificate (PEM), for etcd's `--client-cert-auth`; with `key_file`.
    /// With etcd authentication on and no `user`, its common name is the etcd user.
    #[serde(default)]
    pub cert_file: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM): a regular file only its owner may read.
    #[serde(default)]
    pub key_file: Option<std::path::PathBuf>,
    /// The etcd user (etcd authentication by password); with `password_file`.
    #[serde(default)]
    pub user: Option<String>,
    /// The file holding `user`'s password on one line: a regular file only its owner may read.
    #[serde(default)]
    pub password_file: Option<std::path::PathBuf>,
    /// Accept plain `http://` endpoints (no TLS, anyone who reaches etcd controls the fencing).
    /// Every start then logs a warning.
    #[serde(default)]
    pub insecure: bool,
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
        self.validate_security()?;
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

    /// Whether the endpoints are https://; the rules on TLS, authentication and `insecure`.
    fn validate_security(&self) -> Result<(), ClusterConfigError> {
        use ClusterConfigError as E;
        let https = |e: &str| e.strip_prefix("https://").is_some_and(|h| !h.is_empty());
        let http = |e: &str| e.strip_prefix("http://").is_some_and(|h| !h.is_empty());
        if let Some(e) = self.etcd.iter().find(|e| !https(e) && !http(e)) {
            return Err(E::NotUrl(e.clone()));
        }
        let tls = https(&self.etcd[0]);
        if self.etcd.iter().any(|e| https(e) != tls) {
            return Err(E::MixedSchemes(self.etcd.join(",")));
        }
        if tls {
            if self.insecure {
                return Err(E::InsecureWithHttps);
            }
            if self.ca_file.is_none() {
                return Err(E::NoCaFile);
            }
        } else {
            if !self.insecure {
                return Err(E::PlainHttp(self.etcd[0].clone()));
            }
            for (key, set) in [
                ("ca_file", self.ca_file.is_some()),
                ("cert_file", self.cert_file.is_some()),
                ("key_file", self.key_file.is_some()),
            ] {
                if set {
                    return Err(E::TlsWithoutHttps(key));
                }
            }
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(E::CertWithoutKey);
        }
        if self.user.is_some() != self.password_file.is_some() {
            return Err(E::UserWithoutPassword);
        }
        if let Some(u) = &self.user {
            if u.is_empty()
                || u.chars().count() > 128
                || u.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                return Err(E::BadUser(u.clone()));
            }
        }
        Ok(())
    }

    /// Whether the endpoints are https://.
    pub fn tls(&self) -> bool {
        self.etcd.first().is_some_and(|e| e.starts_with("https://"))
    }

    /// Reads the CA, the client certificate and key, and the password, refusing a secret that
    /// others may read and a file that does not hold what its key names. Called at every start.
    pub fn read_secrets(&self) -> Result<EtcdSecrets, ClusterConfigError> {
        let ca = match &self.ca_file {
            Some(p) => Some(read_pem(
                p,
                "ca_file",
                false,
                "CERTIFICATE",
                "a PEM certificate",
            )?),
            None => None,
        };
        let identity = match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => Some((
                read_pem(c, "cert_file", false, "CERTIFICATE", "a PEM certificate")?,
                read_pem(k, "key_file", true, "PRIVATE KEY", "a PEM private key")?,
            )),
            _ => None,
        };
        let user = match (&self.user, &self.password_file) {
            (Some(u), Some(p)) => Some((u.clone(), read_password(p)?)),
            _ => None,
        };
        Ok(EtcdSecrets { ca, identity, user })
    }

    /// The lines `sharedisk` shows for this section when it describes the configuration.
    pub fn describe(&self) -> String {
        format!(
            "cluster:        node {} of disk {} through etcd {}\n  read lease {} ms renewed every \
             {} ms, drift {}, max I/O {} ms: a PR OUT waits at most {} ms for a member that does \
             not acknowledge\n  lost lease: I/O held {} ms, then BUSY/IOERR; PR OUT budget {} ms; \
             {}\n  etcd access: {}\n",
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
            },
            self.describe_access()
        )
    }

    /// How this daemon reaches etcd and who it is to etcd, in words.
    fn describe_access(&self) -> String {
        if !self.tls() {
            return "INSECURE plain http:// (`insecure = true`): anyone who reaches etcd controls \
                    the fencing"
                .into();
        }
        let mut s = format!(
            "TLS, server certificates checked against {}",
            self.ca_file.as_deref().unwrap_or(Path::new("?")).display()
        );
        if let Some(c) = &self.cert_file {
            s.push_str(&format!("; client certificate {}", c.display()));
        }
        match (&self.user, &self.password_file) {
            (Some(u), Some(p)) => s.push_str(&format!("; user {u} (password in {})", p.display())),
            _ if self.cert_file.is_some() => s.push_str(" (its common name is the etcd user)"),
            _ => s.push_str("; no client identity (etcd must not require one)"),
        }
        s
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

/// What `[cluster]`'s files hold: read at start, kept in memory only.
#[derive(Clone)]
pub struct EtcdSecrets {
    /// The CA's PEM certificates.
    pub ca: Option<Vec<u8>>,
    /// The client certificate and its key, PEM.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The user and its password.
    pub user: Option<(String, String)>,
}

impl std::fmt::Debug for EtcdSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSecrets")
            .field("ca", &self.ca.is_some())
            .field("identity", &self.identity.is_some())
            .field("user", &self.user.as_ref().map(|u| &u.0))
            .finish()
    }
}

/// The largest file read for a certificate, key or password.
const MAX_SECRET_FILE: u64 = 1 << 20;

/// The contents of `path` (`key` in `[cluster]`): a regular file (checked on the opened file, so
/// a swap between check and read cannot fool it), at most [`MAX_SECRET_FILE`] bytes, and when
/// `secret`, readable by its owner only.
fn read_file(path: &Path, key: &'static str, secret: bool) -> Result<Vec<u8>, ClusterConfigError> {
    use crate::util::secret_file::{read_checked, FileCheckError as F};
    use ClusterConfigError as E;
    let path_buf = path.to_path_buf();
    read_checked(path, secret, MAX_SECRET_FILE).map_err(|e| match e {
        F::NotRegularFile => E::NotRegularFile {
            key,
            path: path_buf,
        },
        F::TooOpen { mode } => E::SecretTooOpen {
            key,
            path: path_buf,
            mode,
        },
        F::Unreadable(_) | F::TooLarge { .. } => E::FileUnreadable {
            key,
            path: path_buf,
            reason: e.to_string(),
        },
    })
}

/// A PEM file holding a `-----BEGIN ...<label>-----` block.
fn read_pem(
    path: &Path,
    key: &'static str,
    secret: bool,
    label: &str,
    want: &'static str,
) -> Result<Vec<u8>, ClusterConfigError> {
    let data = read_file(path, key, secret)?;
    let text = String::from_utf8_lossy(&data);
    let found = text
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.trim_end().ends_with(&format!("{label}-----")));
    if !found {
        return Err(ClusterConfigError::BadContent {
            key,
            path: path.to_path_buf(),
            want,
        });
    }
    Ok(data)
}

/// The password: the file's one line, without its line end.
fn read_password(path: &Path) -> Result<String, ClusterConfigError> {
    let data = read_file(path, "password_file", true)?;
    let bad = || ClusterConfigError::BadContent {
        key: "password_file",
        path: path.to_path_buf(),
        want: "one line with the password",
    };
    let text = String::from_utf8(data).map_err(|_| bad())?;
    let line = text
        .strip_suffix('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .unwrap_or(&text);
    if line.is_empty() || line.contains(['\n', '\r']) {
        return Err(bad());
    }
    Ok(line.to_string())
}

#[cfg(test)]
mod tests;

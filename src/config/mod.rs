//! What the daemon serves, validated before anything is opened: from `serve` flags, from a TOML
//! file (`serve --config FILE`), or both, in which case they must agree.
//!
//! This module holds the settings and their validation; `file` reads the TOML file, `flags`
//! reconciles it with the `serve` flags, and `describe` renders what `config check` prints.

mod describe;
mod file;
mod flags;
mod iscsi;

pub use flags::Flags;
pub use iscsi::{
    valid_iscsi_name, ChapFiles, ChapSettings, IscsiConfig, PortalLimits, DEFAULT_TARGET_PREFIX,
};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::image::Aio;
pub use crate::pr::backend::ClusterConfig;

/// Azure's default maxShares is small; 16 keeps thread counts sane on a laptop.
pub const DEFAULT_MAX_SHARES: usize = 16;
/// Where sockets go when neither a flag nor the file says (systemd's RuntimeDirectory).
pub const DEFAULT_SOCKET_DIR: &str = "/run/sharedisk";
/// The control socket's name inside the socket directory, unless set.
pub const CONTROL_SOCKET_NAME: &str = "control.sock";
/// Queues per device a guest uses unless its entry says otherwise.
pub const DEFAULT_QUEUES: u16 = 1;
/// The most queues a guest may ask for (the devices advertise 16).
pub const MAX_GUEST_QUEUES: u16 = 16;

/// One guest: one SCSI initiator, owning `<name>-blk.sock` and, unless `scsi` is off,
/// `<name>-scsi.sock`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct GuestConfig {
    pub name: String,
    /// This guest alone sees a write-protected disk on both devices.
    pub read_only: bool,
    /// Queues per device the guest's QEMU is told to use (`qemu-args`).
    pub queues: u16,
    /// Whether the guest gets the vhost-user-scsi companion.
    pub scsi: bool,
}

impl GuestConfig {
    pub fn new(name: &str) -> Self {
        GuestConfig {
            name: name.to_string(),
            read_only: false,
            queues: DEFAULT_QUEUES,
            scsi: true,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub image: PathBuf,
    /// Create the image with this many bytes when it is missing (an existing image is never
    /// shrunk or grown).
    pub size: Option<u64>,
    pub socket_dir: PathBuf,
    pub guests: Vec<GuestConfig>,
    /// Every guest sees a read-only disk.
    pub read_only: bool,
    pub max_shares: usize,
    /// The PR state file; `<image>.pr` (cluster mode: `<cluster.state_dir>/<disk_id>.<node>.pr`)
    /// when `None`.
    pub state: Option<PathBuf>,
    /// Start with no registrations even if a state file exists (it is overwritten).
    pub reset_reservations: bool,
    /// Serve the vhost-user-scsi companion sockets at all (per guest: [`GuestConfig::scsi`]).
    pub scsi: bool,
    /// Group owning the guests' sockets (QEMU under libvirt runs as another user).
    pub socket_group: Option<String>,
    /// Mode of the guests' sockets; the process umask decides when `None`.
    pub socket_mode: Option<u32>,
    /// Allow a `socket_mode` (or umask) that lets every local user connect to the guests'
    /// sockets, and so act as an initiator; refused unless this says so.
    pub socket_world_access: bool,
    /// The control socket; `<socket_dir>/control.sock` when `None`.
    pub control_socket: Option<PathBuf>,
    /// The read group: its members may call the control socket's reading methods. It owns the
    /// control socket (mode 0660 instead of 0600).
    pub control_group: Option<String>,
    /// The admin group: its members may also call the changing methods (root and the daemon's
    /// own user always may). It owns the control socket when `control_group` is unset.
    pub admin_group: Option<String>,
    /// Serve `GET /metrics` on this TCP address.
    pub metrics_listen: Option<SocketAddr>,
    /// Open the image with O_DIRECT (bypassing this host's page cache).
    pub direct: bool,
    /// How reads and writes reach the image; `None` picks by `direct` (see [`Config::aio`]).
    pub aio: Option<Aio>,
    /// How long, in microseconds, a queue thread keeps watching its ring after a round before
    /// it sleeps on the kick, and an iSCSI connection's reader its socket before it blocks (0:
    /// never).
    pub poll_us: u32,
    /// Share the reservation state with daemons on other hosts through etcd (`cluster.rs`).
    pub cluster: Option<ClusterConfig>,
    /// Serve the disk to iSCSI initiators too (`[iscsi]`, `--iscsi-listen`).
    pub iscsi: Option<IscsiConfig>,
}

/// The default of [`Config::poll_us`].
pub const DEFAULT_POLL_US: u32 = 50;
/// The largest [`Config::poll_us`]: a millisecond of a core per idle ring is plenty.
pub const MAX_POLL_US: u32 = 1000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("no guests given: name at least one with --guests or [[guest]] (or serve iSCSI)")]
    NoGuests,
    #[error("guest name {0:?} is invalid: use 1 to 64 characters from [A-Za-z0-9_.-]")]
    BadName(String),
    #[error("guest {0:?} is named twice")]
    Duplicate(String),
    #[error("{count} guests exceed max-shares {max}")]
    TooMany { count: usize, max: usize },
    #[error("max-shares must be between 1 and 128 (the registration limit)")]
    BadMaxShares,
    #[error("guest {0:?}: queues must be between 1 and {MAX_GUEST_QUEUES}")]
    BadQueues(String),
    #[error("[cluster]: {0}")]
    Cluster(String),
    /// The guests' socket mode lets every local user connect, and that was not allowed.
    #[error(
        "socket mode {0:04o} lets every local user connect to the guests' sockets (and act as an \
         initiator): give them a group instead (`socket_group` with `socket_mode = \"0660\"`), \
         or, if every local user may, set `socket_world_access = true` (--socket-world-access)"
    )]
    WorldAccess(u32),
    /// A configuration file is unusable; the message names the file, line and key.
    #[error("{0}")]
    File(String),
    /// The `[iscsi]` settings are unusable.
    #[error("[iscsi]: {0}")]
    Iscsi(String),
}

/// A guest name becomes a socket file name and an iSCSI-style initiator name, so keep it tame.
pub fn valid_guest_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && name != "."
        && name != ".."
}

impl Config {
    pub fn new(image: impl Into<PathBuf>, socket_dir: impl Into<PathBuf>, guests: &[&str]) -> Self {
        Config {
            image: image.into(),
            size: None,
            socket_dir: socket_dir.into(),
            guests: guests.iter().map(|g| GuestConfig::new(g)).collect(),
            read_only: false,
            max_shares: DEFAULT_MAX_SHARES,
            state: None,
            reset_reservations: false,
            scsi: true,
            socket_group: None,
            socket_mode: None,
            socket_world_access: false,
            control_socket: None,
            control_group: None,
            admin_group: None,
            metrics_listen: None,
            direct: false,
            aio: None,
            poll_us: DEFAULT_POLL_US,
            cluster: None,
            iscsi: None,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=128).contains(&self.max_shares) {
            return Err(ConfigError::BadMaxShares);
        }
        // An iSCSI portal alone is a daemon with initiators; otherwise guests are needed.
        if self.guests.is_empty() && self.iscsi.is_none() {
            return Err(ConfigError::NoGuests);
        }
        for (i, g) in self.guests.iter().enumerate() {
            if !valid_guest_name(&g.name) {
                return Err(ConfigError::BadName(g.name.clone()));
            }
            if self.guests[..i].iter().any(|o| o.name == g.name) {
                return Err(ConfigError::Duplicate(g.name.clone()));
            }
            if !(1..=MAX_GUEST_QUEUES).contains(&g.queues) {
                return Err(ConfigError::BadQueues(g.name.clone()));
            }
        }
        if let Some(mode) = self.socket_mode {
            if mode & crate::daemon::sockets::WORLD_BITS != 0 && !self.socket_world_access {
                return Err(ConfigError::WorldAccess(mode));
            }
        }
        if self.guests.len() > self.max_shares {
            return Err(ConfigError::TooMany {
                count: self.guests.len(),
                max: self.max_shares,
            });
        }
        if let Some(i) = &self.iscsi {
            i.validate().map_err(ConfigError::Iscsi)?;
        }
        if let Some(c) = &self.cluster {
            c.validate()
                .map_err(|e| ConfigError::Cluster(e.to_string()))?;
            if !self.direct {
                return Err(ConfigError::Cluster(
                    "cluster mode needs the image opened with O_DIRECT (`image.direct`): page \
                     caches are per host"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    pub fn guest(&self, name: &str) -> Option<&GuestConfig> {
        self.guests.iter().find(|g| g.name == name)
    }

    pub fn guest_names(&self) -> Vec<String> {
        self.guests.iter().map(|g| g.name.clone()).collect()
    }

    /// The PR state file: `state` if set; in cluster mode this node's host-local copy of the
    /// shared state (`<cluster.state_dir>/<disk_id>.<node>.pr`); else `<image>.pr`.
    pub fn state_path(&self) -> PathBuf {
        if let Some(p) = &self.state {
            return p.clone();
        }
        #[cfg(feature = "cluster")]
        if let Some(c) = &self.cluster {
            return c.local_copy();
        }
        let mut p = self.image.as_os_str().to_owned();
        p.push(".pr");
        PathBuf::from(p)
    }

    /// The group owning the control socket: the read group, else the admin group.
    pub fn control_socket_group(&self) -> Option<&str> {
        self.control_group
            .as_deref()
            .or(self.admin_group.as_deref())
    }

    pub fn control_socket_path(&self) -> PathBuf {
        self.control_socket
            .clone()
            .unwrap_or_else(|| self.socket_dir.join(CONTROL_SOCKET_NAME))
    }

    pub fn blk_socket(&self, guest: &str) -> PathBuf {
        socket_path(&self.socket_dir, guest, "blk")
    }

    pub fn scsi_socket(&self, guest: &str) -> PathBuf {
        socket_path(&self.socket_dir, guest, "scsi")
    }

    /// The I/O engine: as configured, else io_uring under O_DIRECT (where it gives the disk a
    /// real queue depth) and synchronous calls on the page cache (where a call is a copy, and
    /// io_uring measured slower: docs/benchmarks.md).
    pub fn aio(&self) -> Aio {
        self.aio
            .unwrap_or(if self.direct { Aio::IoUring } else { Aio::Sync })
    }
}

pub fn socket_path(dir: &Path, guest: &str, kind: &str) -> PathBuf {
    dir.join(format!("{guest}-{kind}.sock"))
}

/// Parses sizes like `1G`, `512M`, `4096`, `1.5GiB` (binary units, as QEMU and truncate use).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("invalid size {s:?}: unknown unit {unit:?}")),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected a number like 1G or 512M"))?;
    let bytes = value * mult as f64;
    if !(bytes.is_finite() && bytes >= 512.0 && bytes <= (1u64 << 60) as f64) {
        return Err(format!(
            "invalid size {s:?}: must be between 512 bytes and 1 EiB"
        ));
    }
    let bytes = bytes as u64;
    if !bytes.is_multiple_of(512) {
        return Err(format!(
            "invalid size {s:?}: must be a multiple of 512 bytes"
        ));
    }
    Ok(bytes)
}

/// Parses a socket mode like `0660` or `660` (octal, permission bits only).
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 && !digits.is_empty() => Ok(m),
        _ => Err(format!(
            "invalid mode {s:?}: expected octal permission bits like \"0660\""
        )),
    }
}

/// `io_uring` or `sync`.
pub fn parse_aio(s: &str) -> Result<Aio, String> {
    match s {
        "io_uring" => Ok(Aio::IoUring),
        "sync" => Ok(Aio::Sync),
        _ => Err(format!("{s:?} is not an I/O engine: use io_uring or sync")),
    }
}

/// A poll window in microseconds, 0 to [`MAX_POLL_US`].
pub fn check_poll_us(us: u32) -> Result<u32, String> {
    if us <= MAX_POLL_US {
        Ok(us)
    } else {
        Err(format!(
            "poll_us {us} is above the limit of {MAX_POLL_US} µs"
        ))
    }
}

fn aio_name(aio: Aio) -> &'static str {
    match aio {
        Aio::IoUring => "io_uring",
        Aio::Sync => "sync",
    }
}

/// Reads a configuration file: every error names the file, the line and the key.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    Flags::default().resolve(Some(path))
}

#[cfg(test)]
mod tests;

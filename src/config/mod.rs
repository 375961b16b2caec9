//! What the daemon serves, validated before anything is opened: from `serve` flags, from a TOML
//! file (`serve --config FILE`), or both, in which case they must agree.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

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
    /// The PR state file; `<image>.pr` when `None`.
    pub state: Option<PathBuf>,
    /// Start with no registrations even if a state file exists (it is overwritten).
    pub reset_reservations: bool,
    /// Serve the vhost-user-scsi companion sockets at all (per guest: [`GuestConfig::scsi`]).
    pub scsi: bool,
    /// Group owning the guests' sockets (QEMU under libvirt runs as another user).
    pub socket_group: Option<String>,
    /// Mode of the guests' sockets; the process umask decides when `None`.
    pub socket_mode: Option<u32>,
    /// The control socket; `<socket_dir>/control.sock` when `None`.
    pub control_socket: Option<PathBuf>,
    /// Group owning the control socket (its mode is then 0660 instead of 0600).
    pub control_group: Option<String>,
    /// Serve `GET /metrics` on this TCP address.
    pub metrics_listen: Option<SocketAddr>,
    /// Open the image with O_DIRECT (bypassing this host's page cache).
    pub direct: bool,
    /// How reads and writes reach the image; `None` picks by `direct` (see [`Config::aio`]).
    pub aio: Option<Aio>,
    /// How long, in microseconds, a queue thread keeps watching its ring after a round before
    /// it sleeps on the kick (0: never).
    pub poll_us: u32,
    /// Share the reservation state with daemons on other hosts through etcd (`cluster.rs`).
    pub cluster: Option<ClusterConfig>,
}

/// The default of [`Config::poll_us`].
pub const DEFAULT_POLL_US: u32 = 50;
/// The largest [`Config::poll_us`]: a millisecond of a core per idle ring is plenty.
pub const MAX_POLL_US: u32 = 1000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("no guests given: name at least one with --guests or [[guest]]")]
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
    /// A configuration file is unusable; the message names the file, line and key.
    #[error("{0}")]
    File(String),
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
            control_socket: None,
            control_group: None,
            metrics_listen: None,
            direct: false,
            aio: None,
            poll_us: DEFAULT_POLL_US,
            cluster: None,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=128).contains(&self.max_shares) {
            return Err(ConfigError::BadMaxShares);
        }
        if self.guests.is_empty() {
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
        if self.guests.len() > self.max_shares {
            return Err(ConfigError::TooMany {
                count: self.guests.len(),
                max: self.max_shares,
            });
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

    pub fn state_path(&self) -> PathBuf {
        self.state.clone().unwrap_or_else(|| {
            let mut p = self.image.as_os_str().to_owned();
            p.push(".pr");
            PathBuf::from(p)
        })
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
    /// io_uring measured slower: README, Benchmarks).
    pub fn aio(&self) -> Aio {
        self.aio
            .unwrap_or(if self.direct { Aio::IoUring } else { Aio::Sync })
    }

    /// What `config check` prints: every setting the daemon would use, defaults filled in.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let opt = |p: &Option<String>| p.clone().unwrap_or_else(|| "-".into());
        let _ = writeln!(s, "image:          {}", self.image.display());
        let _ = writeln!(
            s,
            "size:           {}",
            self.size
                .map(|b| format!("{b} bytes if missing"))
                .unwrap_or_else(|| "the image must exist".into())
        );
        let _ = writeln!(s, "read-only:      {}", yes_no(self.read_only));
        let _ = writeln!(s, "O_DIRECT:       {}", yes_no(self.direct));
        let _ = writeln!(s, "aio:            {}", aio_name(self.aio()));
        let _ = writeln!(s, "poll:           {} µs", self.poll_us);
        let _ = writeln!(s, "state file:     {}", self.state_path().display());
        let _ = writeln!(s, "max-shares:     {}", self.max_shares);
        let _ = writeln!(s, "socket dir:     {}", self.socket_dir.display());
        let _ = writeln!(s, "socket group:   {}", opt(&self.socket_group));
        let _ = writeln!(
            s,
            "socket mode:    {}",
            self.socket_mode
                .map(|m| format!("{m:04o}"))
                .unwrap_or_else(|| "umask".into())
        );
        let _ = writeln!(
            s,
            "control socket: {} (mode {}, group {})",
            self.control_socket_path().display(),
            if self.control_group.is_some() {
                "0660"
            } else {
                "0600"
            },
            opt(&self.control_group)
        );
        let _ = writeln!(
            s,
            "metrics:        {}",
            self.metrics_listen
                .map(|a| format!("http://{a}/metrics"))
                .unwrap_or_else(|| "control socket only".into())
        );
        match &self.cluster {
            None => {
                let _ = writeln!(
                    s,
                    "cluster:        no (this daemon alone arbitrates the disk)"
                );
            }
            Some(c) => s.push_str(&c.describe()),
        }
        let _ = writeln!(s, "guests:         {}", self.guests.len());
        for g in &self.guests {
            let scsi = self.scsi && g.scsi;
            let _ = writeln!(
                s,
                "  {:<16} {}{} queues {}{}",
                g.name,
                self.blk_socket(&g.name).display(),
                if scsi {
                    format!(" {}", self.scsi_socket(&g.name).display())
                } else {
                    String::new()
                },
                g.queues,
                if g.read_only || self.read_only {
                    " read-only"
                } else {
                    ""
                }
            );
        }
        s
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
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

// ---------------------------------------------------------------------------------------------
// The TOML file.

/// The file's layout; unknown keys are errors.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    image: Option<ImageSection>,
    #[serde(default)]
    server: ServerSection,
    #[serde(default)]
    guest: Vec<GuestEntry>,
    cluster: Option<ClusterConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageSection {
    path: PathBuf,
    #[serde(default, deserialize_with = "size_value")]
    size: Option<u64>,
    state: Option<PathBuf>,
    #[serde(default)]
    read_only: bool,
    max_shares: Option<usize>,
    #[serde(default)]
    direct: bool,
    #[serde(default, deserialize_with = "aio_value")]
    aio: Option<Aio>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ServerSection {
    socket_dir: Option<PathBuf>,
    socket_group: Option<String>,
    #[serde(default, deserialize_with = "mode_value")]
    socket_mode: Option<u32>,
    control_socket: Option<PathBuf>,
    control_group: Option<String>,
    metrics_listen: Option<SocketAddr>,
    #[serde(default, deserialize_with = "poll_value")]
    poll_us: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GuestEntry {
    #[serde(deserialize_with = "guest_name")]
    name: toml::Spanned<String>,
    #[serde(default)]
    read_only: bool,
    queues: Option<u16>,
    scsi: Option<bool>,
}

/// `size = "1G"` or `size = 1073741824`.
fn size_value<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    let s = match Size::deserialize(d)? {
        Size::Bytes(b) => b.to_string(),
        Size::Text(t) => t,
    };
    parse_size(&s).map(Some).map_err(serde::de::Error::custom)
}

fn aio_value<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Aio>, D::Error> {
    let s = String::deserialize(d)?;
    parse_aio(&s).map(Some).map_err(serde::de::Error::custom)
}

fn poll_value<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let us = u32::deserialize(d)?;
    check_poll_us(us)
        .map(Some)
        .map_err(serde::de::Error::custom)
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

fn mode_value<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let s = String::deserialize(d)?;
    parse_mode(&s).map(Some).map_err(serde::de::Error::custom)
}

fn guest_name<'de, D: Deserializer<'de>>(d: D) -> Result<toml::Spanned<String>, D::Error> {
    let name = toml::Spanned::<String>::deserialize(d)?;
    if !valid_guest_name(name.get_ref()) {
        return Err(serde::de::Error::custom(format!(
            "guest name {:?} is invalid: use 1 to 64 characters from [A-Za-z0-9_.-]",
            name.get_ref()
        )));
    }
    Ok(name)
}

/// The `serve` flags, each optional so that a file can supply it instead.
#[derive(Clone, Debug, Default)]
pub struct Flags {
    pub image: Option<PathBuf>,
    pub size: Option<u64>,
    pub socket_dir: Option<PathBuf>,
    pub guests: Option<Vec<String>>,
    pub read_only: bool,
    pub max_shares: Option<usize>,
    pub state: Option<PathBuf>,
    pub reset_reservations: bool,
    pub socket_group: Option<String>,
    pub socket_mode: Option<u32>,
    pub control_socket: Option<PathBuf>,
    pub metrics_listen: Option<SocketAddr>,
    pub direct: bool,
    pub aio: Option<Aio>,
    pub poll_us: Option<u32>,
}

impl Flags {
    /// The configuration from the flags alone.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        self.resolve(None)
    }

    /// The configuration from `file` (if any) and the flags. A flag may set what the file
    /// leaves unset; a flag that contradicts the file is an error naming both.
    pub fn resolve(self, file: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = file else {
            let image = self.image.clone().ok_or_else(|| {
                ConfigError::File("no image given: pass --image or --config FILE".into())
            })?;
            let mut c = Config::new(
                image,
                self.socket_dir
                    .clone()
                    .unwrap_or_else(|| DEFAULT_SOCKET_DIR.into()),
                &[],
            );
            c.guests = self
                .guests
                .clone()
                .unwrap_or_default()
                .iter()
                .map(|g| GuestConfig::new(g))
                .collect();
            c.max_shares = self.max_shares.unwrap_or(DEFAULT_MAX_SHARES);
            c.aio = self.aio;
            c.poll_us = self.poll_us.unwrap_or(DEFAULT_POLL_US);
            self.apply_rest(&mut c);
            c.validate()?;
            return Ok(c);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::File(format!("{}: {e}", path.display())))?;
        let mut c = parse_file(path, &text)?;
        let at = |key: &str| {
            let line = find_key_line(&text, key)
                .map(|l| format!(":{l}"))
                .unwrap_or_default();
            format!("{}{line}", path.display())
        };
        let disagree = |flag: &str, key: &str, flag_val: String, file_val: String| {
            ConfigError::File(format!(
                "{flag} {flag_val} disagrees with {}: key `{key}` = {file_val}; change one of them",
                at(key)
            ))
        };
        if let Some(image) = &self.image {
            if *image != c.image {
                return Err(disagree(
                    "--image",
                    "image.path",
                    image.display().to_string(),
                    c.image.display().to_string(),
                ));
            }
        }
        if let (Some(a), Some(b)) = (self.size, c.size) {
            if a != b {
                return Err(disagree(
                    "--size",
                    "image.size",
                    a.to_string(),
                    b.to_string(),
                ));
            }
        }
        if let (Some(a), true) = (
            &self.socket_dir,
            text_has_key(&text, "server", "socket_dir"),
        ) {
            if *a != c.socket_dir {
                return Err(disagree(
                    "--socket-dir",
                    "server.socket_dir",
                    a.display().to_string(),
                    c.socket_dir.display().to_string(),
                ));
            }
        }
        if let Some(names) = &self.guests {
            if !c.guests.is_empty() && *names != c.guest_names() {
                return Err(disagree(
                    "--guests",
                    "guest.name",
                    names.join(","),
                    c.guest_names().join(","),
                ));
            }
        }
        if let (Some(a), true) = (self.max_shares, text_has_key(&text, "image", "max_shares")) {
            if a != c.max_shares {
                return Err(disagree(
                    "--max-shares",
                    "image.max_shares",
                    a.to_string(),
                    c.max_shares.to_string(),
                ));
            }
        }
        if let (Some(a), Some(b)) = (&self.state, &c.state) {
            if a != b {
                return Err(disagree(
                    "--state",
                    "image.state",
                    a.display().to_string(),
                    b.display().to_string(),
                ));
            }
        }
        if let (Some(a), Some(b)) = (&self.socket_group, &c.socket_group) {
            if a != b {
                return Err(disagree(
                    "--socket-group",
                    "server.socket_group",
                    a.clone(),
                    b.clone(),
                ));
            }
        }
        if let (Some(a), Some(b)) = (self.socket_mode, c.socket_mode) {
            if a != b {
                return Err(disagree(
                    "--socket-mode",
                    "server.socket_mode",
                    format!("{a:04o}"),
                    format!("{b:04o}"),
                ));
            }
        }
        if let (Some(a), Some(b)) = (&self.control_socket, &c.control_socket) {
            if a != b {
                return Err(disagree(
                    "--control-socket",
                    "server.control_socket",
                    a.display().to_string(),
                    b.display().to_string(),
                ));
            }
        }
        if let (Some(a), Some(b)) = (self.metrics_listen, c.metrics_listen) {
            if a != b {
                return Err(disagree(
                    "--metrics-listen",
                    "server.metrics_listen",
                    a.to_string(),
                    b.to_string(),
                ));
            }
        }
        if self.direct && !c.direct && text_has_key(&text, "image", "direct") {
            return Err(disagree(
                "--direct",
                "image.direct",
                String::new(),
                "false".into(),
            ));
        }
        if let (Some(a), true) = (self.aio, text_has_key(&text, "image", "aio")) {
            if Some(a) != c.aio {
                return Err(disagree(
                    "--aio",
                    "image.aio",
                    aio_name(a).into(),
                    format!("{:?}", c.aio.map_or("", aio_name)),
                ));
            }
        }
        if let (Some(a), true) = (self.poll_us, text_has_key(&text, "server", "poll_us")) {
            if a != c.poll_us {
                return Err(disagree(
                    "--poll-us",
                    "server.poll_us",
                    a.to_string(),
                    c.poll_us.to_string(),
                ));
            }
        }
        if let (Some(a), false) = (self.aio, text_has_key(&text, "image", "aio")) {
            c.aio = Some(a);
        }
        if let (Some(a), false) = (self.poll_us, text_has_key(&text, "server", "poll_us")) {
            c.poll_us = a;
        }
        if self.read_only && !c.read_only && text_has_key(&text, "image", "read_only") {
            return Err(disagree(
                "--read-only",
                "image.read_only",
                String::new(),
                "false".into(),
            ));
        }
        if let Some(names) = &self.guests {
            if c.guests.is_empty() {
                c.guests = names.iter().map(|g| GuestConfig::new(g)).collect();
            }
        }
        if let (Some(d), false) = (
            &self.socket_dir,
            text_has_key(&text, "server", "socket_dir"),
        ) {
            c.socket_dir = d.clone();
        }
        if let (Some(m), false) = (self.max_shares, text_has_key(&text, "image", "max_shares")) {
            c.max_shares = m;
        }
        self.apply_rest(&mut c);
        c.validate().map_err(|e| match &e {
            ConfigError::Duplicate(n) | ConfigError::BadQueues(n) => ConfigError::File(format!(
                "{}: key `guest.name`: {e}",
                at_value(path, &text, n)
            )),
            ConfigError::TooMany { .. } | ConfigError::BadMaxShares => ConfigError::File(format!(
                "{}: key `image.max_shares`: {e}",
                at("image.max_shares")
            )),
            ConfigError::NoGuests => ConfigError::File(format!(
                "{}: no [[guest]] entries and no --guests: {e}",
                path.display()
            )),
            _ => ConfigError::File(format!("{}: {e}", path.display())),
        })?;
        Ok(c)
    }

    /// Settings the file may leave unset and a flag then supplies.
    fn apply_rest(&self, c: &mut Config) {
        c.size = c.size.or(self.size);
        c.read_only |= self.read_only;
        c.state = c.state.clone().or_else(|| self.state.clone());
        c.reset_reservations |= self.reset_reservations;
        c.socket_group = c.socket_group.clone().or_else(|| self.socket_group.clone());
        c.socket_mode = c.socket_mode.or(self.socket_mode);
        c.control_socket = c
            .control_socket
            .clone()
            .or_else(|| self.control_socket.clone());
        c.metrics_listen = c.metrics_listen.or(self.metrics_listen);
        c.direct |= self.direct;
    }
}

/// Reads a configuration file: every error names the file, the line and the key.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    Flags::default().resolve(Some(path))
}

fn parse_file(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let file: File = toml::from_str(text).map_err(|e| file_error(path, text, &e))?;
    let Some(image) = file.image else {
        return Err(ConfigError::File(format!(
            "{}: missing [image] section (with at least `path`)",
            path.display()
        )));
    };
    // Relative paths in a file are relative to the file, not to wherever the daemon starts.
    let base = path.parent().unwrap_or(Path::new("."));
    let rel = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };
    let mut seen = BTreeSet::new();
    let mut guests = Vec::new();
    for g in file.guest {
        let span = g.name.span();
        let name = g.name.into_inner();
        if !seen.insert(name.clone()) {
            return Err(ConfigError::File(format!(
                "{}:{}: key `guest.name`: guest {name:?} is named twice",
                path.display(),
                line_of(text, span.start)
            )));
        }
        guests.push(GuestConfig {
            queues: g.queues.unwrap_or(DEFAULT_QUEUES),
            read_only: g.read_only,
            scsi: g.scsi.unwrap_or(true),
            name,
        });
    }
    let server = file.server;
    Ok(Config {
        image: rel(image.path),
        size: image.size,
        socket_dir: rel(server
            .socket_dir
            .unwrap_or_else(|| DEFAULT_SOCKET_DIR.into())),
        guests,
        read_only: image.read_only,
        max_shares: image.max_shares.unwrap_or(DEFAULT_MAX_SHARES),
        state: image.state.map(rel),
        reset_reservations: false,
        scsi: true,
        socket_group: server.socket_group,
        socket_mode: server.socket_mode,
        control_socket: server.control_socket.map(rel),
        control_group: server.control_group,
        metrics_listen: server.metrics_listen,
        aio: image.aio,
        poll_us: server.poll_us.unwrap_or(DEFAULT_POLL_US),
        // Page caches are per host: in cluster mode every host must read the disk itself.
        direct: image.direct || file.cluster.is_some(),
        cluster: file.cluster,
    })
}

/// `FILE:LINE: key `section.key`: what is wrong`, from a TOML or serde error and its span.
fn file_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let msg = e.message().trim().to_string();
    let Some(span) = e.span() else {
        return ConfigError::File(format!("{}: {msg}", path.display()));
    };
    let line = line_of(text, span.start);
    let key = key_at(text, span.start)
        .map(|k| format!(" key `{k}`:"))
        .unwrap_or_default();
    ConfigError::File(format!("{}:{line}:{key} {msg}", path.display()))
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The dotted key whose line holds `offset`: the nearest `[section]` above, plus the key
/// before the `=` on that line (or the key that starts at `offset`, for unknown keys).
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = text[start..end].trim();
    let section = text[..start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    let key = if line.starts_with('[') {
        return Some(
            line.trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string(),
        );
    } else {
        line.split('=').next()?.trim().trim_matches('"').to_string()
    };
    if key.is_empty() {
        return section;
    }
    Some(match section {
        Some(s) => format!("{s}.{key}"),
        None => key,
    })
}

/// The line on which `dotted` (`section.key`) is set, if it is.
fn find_key_line(text: &str, dotted: &str) -> Option<usize> {
    let (section, key) = dotted.rsplit_once('.').unwrap_or(("", dotted));
    let mut current = String::new();
    for (i, l) in text.lines().enumerate() {
        let t = l.trim_start();
        if t.starts_with('[') {
            current = t
                .split('#')
                .next()
                .unwrap_or("")
                .trim()
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string();
            continue;
        }
        if current == section
            && t.strip_prefix(key)
                .is_some_and(|r| r.trim_start().starts_with('='))
        {
            return Some(i + 1);
        }
    }
    None
}

fn text_has_key(text: &str, section: &str, key: &str) -> bool {
    find_key_line(text, &format!("{section}.{key}")).is_some()
}

fn at_value(path: &Path, text: &str, value: &str) -> String {
    let quoted = format!("\"{value}\"");
    match text.lines().position(|l| l.contains(&quoted)) {
        Some(i) => format!("{}:{}", path.display(), i + 1),
        None => path.display().to_string(),
    }
}

#[cfg(test)]
mod tests;

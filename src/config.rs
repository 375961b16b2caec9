//! What the daemon serves, validated before anything is opened.

use std::path::{Path, PathBuf};

/// Azure's default maxShares is small; 16 keeps thread counts sane on a laptop.
pub const DEFAULT_MAX_SHARES: usize = 16;

#[derive(Clone, Debug)]
pub struct Config {
    pub image: PathBuf,
    /// Create the image with this many bytes when it is missing.
    pub size: Option<u64>,
    pub socket_dir: PathBuf,
    /// Guest names: each is one SCSI initiator and owns `<name>-blk.sock` and `<name>-scsi.sock`.
    pub guests: Vec<String>,
    pub read_only: bool,
    pub max_shares: usize,
    /// The PR state file; `<image>.pr` when `None`.
    pub state: Option<PathBuf>,
    /// Start with no registrations even if a state file exists (it is overwritten).
    pub reset_reservations: bool,
    /// Serve the vhost-user-scsi companion sockets too.
    pub scsi: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("no guests given: name at least one with --guests")]
    NoGuests,
    #[error("guest name {0:?} is invalid: use 1 to 64 characters from [A-Za-z0-9_.-]")]
    BadName(String),
    #[error("guest {0:?} is named twice")]
    Duplicate(String),
    #[error("{count} guests exceed --max-shares {max}")]
    TooMany { count: usize, max: usize },
    #[error("--max-shares must be between 1 and 128 (the registration limit)")]
    BadMaxShares,
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
            guests: guests.iter().map(|g| g.to_string()).collect(),
            read_only: false,
            max_shares: DEFAULT_MAX_SHARES,
            state: None,
            reset_reservations: false,
            scsi: true,
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
            if !valid_guest_name(g) {
                return Err(ConfigError::BadName(g.clone()));
            }
            if self.guests[..i].contains(g) {
                return Err(ConfigError::Duplicate(g.clone()));
            }
        }
        if self.guests.len() > self.max_shares {
            return Err(ConfigError::TooMany {
                count: self.guests.len(),
                max: self.max_shares,
            });
        }
        Ok(())
    }

    pub fn state_path(&self) -> PathBuf {
        self.state.clone().unwrap_or_else(|| {
            let mut p = self.image.as_os_str().to_owned();
            p.push(".pr");
            PathBuf::from(p)
        })
    }

    pub fn blk_socket(&self, guest: &str) -> PathBuf {
        socket_path(&self.socket_dir, guest, "blk")
    }

    pub fn scsi_socket(&self, guest: &str) -> PathBuf {
        socket_path(&self.socket_dir, guest, "scsi")
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

#[cfg(test)]
#[path = "tests/config.rs"]
mod tests;

//! The persistent reservation state file (`<image>.pr` by default).
//!
//! SPC-4 §5.9.4 lets a target keep registrations across power loss (APTPL); like Elastic SAN we do
//! it always. The file is replaced atomically (temp file, fsync, rename, fsync of the directory)
//! before a PR OUT is acknowledged, and it names the image it belongs to, so a state file can
//! never be applied to the wrong disk and is never reset silently.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::pr::replay::Record;
use crate::pr::PrState;
use crate::util::atomic_file;

const FORMAT: u32 = 1;

/// What identifies the image a state file belongs to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ImageIdentity {
    /// Canonical path of the image.
    pub path: PathBuf,
    /// Inode number: a different file at the same path is a different disk.
    pub inode: u64,
}

impl ImageIdentity {
    pub fn of(image: &Path) -> io::Result<Self> {
        let path = fs::canonicalize(image)?;
        let inode = fs::metadata(&path)?.ino();
        Ok(ImageIdentity { path, inode })
    }
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    format: u32,
    image: ImageIdentity,
    reservations: PrState,
    /// Executed PR OUTs that QEMU may still replay (`replay.rs`); absent in older files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    replay: Vec<Record>,
}

/// What a state file holds.
#[derive(Debug, PartialEq, Eq)]
pub struct Saved {
    pub reservations: PrState,
    pub replay: Vec<Record>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read reservation state {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "reservation state {path} is corrupt ({reason}); refusing to start rather than drop \
         reservations. Inspect or move the file, or pass --reset-reservations to start empty"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "reservation state {path} belongs to image {theirs} (inode {their_inode}), not to \
         {ours} (inode {our_inode}); pass --state to use another file, or --reset-reservations \
         to start empty"
    )]
    OtherImage {
        path: PathBuf,
        theirs: String,
        their_inode: u64,
        ours: String,
        our_inode: u64,
    },
    /// The state file was left as it was.
    #[error("cannot write reservation state {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    /// The state file was replaced, but its directory could not be synced: the new state is in
    /// the file and may or may not survive a power loss.
    #[error("reservation state {path} was replaced but not made durable: {source}")]
    NotDurable { path: PathBuf, source: io::Error },
}

/// Reads a state file without checking which image it belongs to (`sharedisk pr show --state`,
/// with the daemon stopped): the image it names, and what it holds.
pub fn inspect(path: &Path) -> Result<(ImageIdentity, Saved), StateError> {
    let text = fs::read(path).map_err(|source| StateError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let corrupt = |reason: String| StateError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let disk: OnDisk = serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
    if disk.format != FORMAT {
        return Err(corrupt(format!("unknown format version {}", disk.format)));
    }
    disk.reservations.validate().map_err(corrupt)?;
    Ok((
        disk.image,
        Saved {
            reservations: disk.reservations,
            replay: disk.replay,
        },
    ))
}

/// Reads and atomically replaces one state file.
#[derive(Clone)]
pub struct StateStore {
    path: PathBuf,
    identity: ImageIdentity,
}

impl StateStore {
    pub fn new(path: PathBuf, identity: ImageIdentity) -> Self {
        StateStore { path, identity }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads the saved state: `None` when there is no file yet.
    pub fn load(&self) -> Result<Option<Saved>, StateError> {
        let text = match atomic_file::read_own(&self.path) {
            Ok(Some(t)) => t,
            Ok(None) => return Ok(None),
            Err(source) => {
                return Err(StateError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let corrupt = |reason: String| StateError::Corrupt {
            path: self.path.clone(),
            reason,
        };
        let disk: OnDisk = serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
        if disk.format != FORMAT {
            return Err(corrupt(format!("unknown format version {}", disk.format)));
        }
        disk.reservations.validate().map_err(corrupt)?;
        if disk.image != self.identity {
            return Err(StateError::OtherImage {
                path: self.path.clone(),
                theirs: disk.image.path.display().to_string(),
                their_inode: disk.image.inode,
                ours: self.identity.path.display().to_string(),
                our_inode: self.identity.inode,
            });
        }
        Ok(Some(Saved {
            reservations: disk.reservations,
            replay: disk.replay,
        }))
    }

    /// Replaces the file with `state`, durably, before returning. On `Write` errors the file is
    /// unchanged; on `NotDurable` it holds the new state.
    pub fn save(&self, state: &PrState, replay: &[Record]) -> Result<(), StateError> {
        self.replace(state, replay)
            .map_err(|source| StateError::Write {
                path: self.path.clone(),
                source,
            })?;
        self.sync_dir().map_err(|source| StateError::NotDurable {
            path: self.path.clone(),
            source,
        })
    }

    /// Writes and syncs a temporary copy, then renames it over the file.
    fn replace(&self, state: &PrState, replay: &[Record]) -> io::Result<()> {
        let disk = OnDisk {
            format: FORMAT,
            image: self.identity.clone(),
            reservations: state.clone(),
            replay: replay.to_vec(),
        };
        let mut bytes = serde_json::to_vec_pretty(&disk).map_err(io::Error::other)?;
        bytes.push(b'\n');
        atomic_file::replace(&self.path, &bytes, "state")
    }

    /// Makes the rename durable.
    fn sync_dir(&self) -> io::Result<()> {
        atomic_file::sync_dir(&self.path, "state")
    }
}

#[cfg(test)]
mod tests;

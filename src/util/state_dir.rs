//! The directory of the reservation state (and, beside it, the guests file, the temporary copies
//! and, in cluster mode, the node lock): checked at start, since whoever may write in it may
//! replace the state the daemon trusts.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Why the state directory is refused.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    /// Users other than the daemon's may create, rename or remove files in it.
    #[error(
        "state directory {path} (mode {mode:04o}) is writable by {who}: they could plant or \
         replace the reservation state, the guests file or their temporary copies (the sticky \
         bit does not stop them creating a name the daemon has not created yet). Run \
         `chmod go-w {path}`, or keep the state in a directory of the daemon's own \
         (--state / image.state, cluster.state_dir)"
    )]
    Writable {
        path: PathBuf,
        mode: u32,
        who: &'static str,
    },
    /// Another non-root user owns it, and so may change its mode at will.
    #[error(
        "state directory {path} belongs to uid {owner}, not to this daemon's user (uid {euid}) \
         or root: that user could replace the reservation state. Run `chown {euid} {path}`, or \
         keep the state elsewhere (--state / image.state, cluster.state_dir)"
    )]
    Owner {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    /// It cannot be examined.
    #[error("state directory {path}: {source}")]
    Stat { path: PathBuf, source: io::Error },
}

/// The directory holding `state` (`.` for a bare file name).
pub fn of(state: &Path) -> &Path {
    match state.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Why a directory is not the daemon's alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shared {
    /// Its group or every user may create, rename or remove entries in it (`who` says which).
    Writable { mode: u32, who: &'static str },
    /// Another non-root user owns it, and so may change its mode at will.
    Owner { owner: u32, euid: u32 },
}

/// Whether users other than the daemon's (and root) may write in `dir`: group- or
/// world-writable, sticky or not (the sticky bit only protects names that exist: another user
/// could create the names the daemon has not created yet), or owned by another non-root user.
/// `None` when the directory is missing.
pub fn shared(dir: &Path) -> io::Result<Option<Shared>> {
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let owner = meta.uid();
    if owner != euid && owner != 0 {
        return Ok(Some(Shared::Owner { owner, euid }));
    }
    let mode = meta.mode() & 0o7777;
    Ok(match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (_, true) => Some(Shared::Writable {
            mode,
            who: "every user",
        }),
        (true, false) => Some(Shared::Writable {
            mode,
            who: "its group",
        }),
        (false, false) => None,
    })
}

/// Refuses a state directory that others than the daemon's user (and root) may write in (see
/// [`shared`]). A missing directory passes (writing the state there fails later, naming it).
pub fn check(dir: &Path) -> Result<(), StateDirError> {
    let path = dir.to_path_buf();
    match shared(dir) {
        Ok(None) => Ok(()),
        Ok(Some(Shared::Writable { mode, who })) => {
            Err(StateDirError::Writable { path, mode, who })
        }
        Ok(Some(Shared::Owner { owner, euid })) => Err(StateDirError::Owner { path, owner, euid }),
        Err(source) => Err(StateDirError::Stat { path, source }),
    }
}

#[cfg(test)]
mod tests;

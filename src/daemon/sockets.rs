//! Who may connect to the daemon's Unix sockets: the directory they live in, their group and
//! their mode, and how a socket gets to its path.
//!
//! The directory of a socket path is checked first: one that users other than the daemon's (and
//! root) may write in is refused, sticky or not, since such a user could swap the entries the
//! daemon makes there. A socket is then bound in a private directory beside its path (so on the
//! same file system) with an unpredictable name, mode 0700, used only through a descriptor opened
//! without following links and checked to be ours: bound at `/proc/self/fd/N/s`, given its group
//! and mode with `fchownat`/`fchmodat` relative to that descriptor, renamed from it into place.
//! Nobody but root can connect before its group and mode are the configured ones, and no path
//! another user may change is followed. Only a socket is ever replaced at a socket path, and only
//! a stale one (nobody answers on it).

use std::ffi::CString;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// The mode bit that lets every local user connect to a socket: write for others (connecting to
/// a Unix socket needs write permission on it; read alone grants nothing).
pub const WORLD_BITS: u32 = 0o002;

/// Longest path a Unix socket can be bound at (`sun_path` holds 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Who may connect to a socket being bound.
#[derive(Clone, Copy, Debug, Default)]
pub struct Access<'a> {
    /// The socket's group (a name or a number); the daemon's own group when `None`.
    pub group: Option<&'a str>,
    /// The socket's mode; the umask's when `None`.
    pub mode: Option<u32>,
    /// A mode that lets every local user connect is allowed (`server.socket_world_access`).
    pub world: bool,
}

/// Why a socket could not be bound at its path.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Something other than a socket is at the path; it was left untouched.
    #[error(
        "{path} is {kind}, not a socket: sharedisk only ever replaces a stale socket, so it left \
         it untouched; move it away or choose another socket path"
    )]
    NotASocket { path: PathBuf, kind: &'static str },
    /// A process answers on the socket at the path (another daemon, most likely).
    #[error("{path}: another process is listening on it (is another sharedisk running?)")]
    InUse { path: PathBuf },
    /// The socket would have had a mode open to every local user, which was not allowed.
    #[error(
        "{path} would get mode {mode:04o}, which lets every local user connect: give the \
         sockets a group instead (`socket_group` with `socket_mode = \"0660\"`), or, if every \
         local user may really act as an initiator, set `socket_world_access = true` \
         (--socket-world-access)"
    )]
    WorldAccess { path: PathBuf, mode: u32 },
    /// The path is too long for a Unix socket: no client could connect to it.
    #[error(
        "{path} is longer than the {MAX_SOCKET_PATH} bytes a Unix socket path may have, so no \
         client could connect to it; choose a shorter socket directory"
    )]
    TooLong { path: PathBuf },
    /// Users other than the daemon's (and root) may write in the socket's directory.
    #[error(
        "socket directory {dir} (mode {mode:04o}) is writable by {who}: they could swap the \
         entries the daemon makes there and have it change the owner or mode of a file of its \
         own (the sticky bit does not prevent that). Run `chmod go-w {dir}`, or choose a socket \
         directory of the daemon's own (QEMU needs only to search it: mode 0755, or 0750 with \
         QEMU's group)"
    )]
    DirWritable {
        dir: PathBuf,
        mode: u32,
        who: &'static str,
    },
    /// Another non-root user owns the socket's directory.
    #[error(
        "socket directory {dir} belongs to uid {owner}, not to this daemon's user (uid {euid}) \
         or root: that user could swap the entries the daemon makes there. Run \
         `chown {euid} {dir}`, or choose a socket directory of the daemon's own"
    )]
    DirOwner { dir: PathBuf, owner: u32, euid: u32 },
    /// The private directory made beside the path is not the daemon's (someone swapped it).
    #[error(
        "{path}: the private directory {dir} made for binding it is not this daemon's (owner uid \
         {owner}, mode {mode:04o}): someone replaced it; nothing was bound through it. Check who \
         may write in the socket directory"
    )]
    NotPrivate {
        path: PathBuf,
        dir: PathBuf,
        owner: u32,
        mode: u32,
    },
    /// A system call failed; `what` says which step.
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
}

impl From<SocketError> for io::Error {
    fn from(e: SocketError) -> Self {
        let kind = match &e {
            SocketError::InUse { .. } => io::ErrorKind::AddrInUse,
            SocketError::NotASocket { .. } => io::ErrorKind::AlreadyExists,
            SocketError::WorldAccess { .. } | SocketError::TooLong { .. } => {
                io::ErrorKind::InvalidInput
            }
            SocketError::DirWritable { .. }
            | SocketError::DirOwner { .. }
            | SocketError::NotPrivate { .. } => io::ErrorKind::PermissionDenied,
            SocketError::Io { source, .. } => source.kind(),
        };
        io::Error::new(kind, e)
    }
}

/// A socket file the daemon put at `path`: removed when dropped, if it is still the same file
/// (a socket someone else put there since is left alone).
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    /// The lstat and the unlink race only with the daemon's own user (or root): the socket
    /// directory was checked at bind, so nobody else can swap the entry in between.
    fn drop(&mut self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if m.file_type().is_socket() && m.dev() == self.dev && m.ino() == self.ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Binds a listening socket at `path` with `access` in place before any connection can reach
/// it: bound in a private directory beside `path`, given its group and mode there, then renamed
/// over `path`. A socket directory others may write in is refused; a stale socket at `path` is
/// replaced; anything else there, or a socket someone answers on, stops the bind with the path
/// named.
pub fn bind(path: &Path, access: Access<'_>) -> Result<(UnixListener, SocketFile), SocketError> {
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(SocketError::TooLong {
            path: path.to_path_buf(),
        });
    }
    check_dir(parent_of(path))?;
    check_target(path)?;
    let private = PrivateDir::create(path)?;
    let io_err = |what| {
        move |source| SocketError::Io {
            path: path.to_path_buf(),
            what,
            source,
        }
    };
    let listener = UnixListener::bind(private.socket_path()).map_err(io_err("bind"))?;
    private
        .restrict(access.group, access.mode)
        .map_err(io_err("setting its group and mode"))?;
    let (mode, dev, ino) = private.stat().map_err(io_err("stat"))?;
    if mode & WORLD_BITS != 0 && !access.world {
        return Err(SocketError::WorldAccess {
            path: path.to_path_buf(),
            mode,
        });
    }
    // A socket or nothing was at `path` a moment ago; rename replaces a stale socket atomically.
    // The check and the rename race only with the daemon's own user (or root): the socket
    // directory was checked above, so nobody else can put anything at `path` in between.
    check_target(path)?;
    private
        .rename_to(path)
        .map_err(io_err("renaming the socket into place"))?;
    Ok((
        listener,
        SocketFile {
            path: path.to_path_buf(),
            dev,
            ino,
        },
    ))
}

/// The directory holding a socket path (`.` for a bare name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Refuses a socket directory that users other than the daemon's (and root) may write in.
pub fn check_dir(dir: &Path) -> Result<(), SocketError> {
    use crate::util::state_dir::{shared, Shared};
    match shared(dir) {
        Ok(None) => Ok(()),
        Ok(Some(Shared::Writable { mode, who })) => Err(SocketError::DirWritable {
            dir: dir.to_path_buf(),
            mode,
            who,
        }),
        Ok(Some(Shared::Owner { owner, euid })) => Err(SocketError::DirOwner {
            dir: dir.to_path_buf(),
            owner,
            euid,
        }),
        Err(source) => Err(SocketError::Io {
            path: dir.to_path_buf(),
            what: "stat",
            source,
        }),
    }
}

/// What is at a socket path before binding: nothing or a stale socket is fine.
fn check_target(path: &Path) -> Result<(), SocketError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(SocketError::Io {
                path: path.to_path_buf(),
                what: "stat",
                source,
            })
        }
    };
    let t = meta.file_type();
    let kind = if t.is_socket() {
        if UnixStream::connect(path).is_ok() {
            return Err(SocketError::InUse {
                path: path.to_path_buf(),
            });
        }
        return Ok(());
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else if t.is_fifo() {
        "a FIFO"
    } else {
        "a device file"
    };
    Err(SocketError::NotASocket {
        path: path.to_path_buf(),
        kind,
    })
}

/// Creates `dir` (and its parents) when missing, mode 0755 like systemd's RuntimeDirectory, so
/// that a QEMU running as another user can reach the sockets in it.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
}

/// The id of the group named `name` (or given as a number).
pub fn gid_of(name: &str) -> io::Result<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let c_name = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "group name contains NUL"))?;
    let mut buf = vec![0u8; 16 << 10];
    // SAFETY: all-zero bytes are a valid `group` (null pointers, zero gid).
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: the name is NUL-terminated, `grp` and
    // `result` are live locals, and `buf` is a writable buffer of the length passed.
    let r = unsafe {
        libc::getgrnam_r(
            c_name.as_ptr(),
            &mut grp,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    if result.is_null() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no group named {name:?}"),
        ));
    }
    Ok(grp.gr_gid)
}

mod private_dir;
use private_dir::PrivateDir;

#[cfg(test)]
mod tests;

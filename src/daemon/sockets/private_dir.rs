//! The private directory a socket is bound in before it is renamed into place: created beside the
//! socket path with an unpredictable name, then used only through a descriptor opened without
//! following links and checked to be the daemon's (owner, no access for group or others). Every
//! step after the `mkdir` goes through that descriptor, so whoever renames or replaces the
//! directory's name in the socket directory cannot redirect the bind, the `chown`, the `chmod`
//! or the rename to a file of their choice: nobody but the daemon's user (and root) may add or
//! swap entries inside a 0700 directory of its own.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{gid_of, parent_of, SocketError};

/// The socket's name inside the private directory.
const NAME: &str = "s";

/// A directory only the daemon's user can enter, beside a socket path, held by a descriptor;
/// removed when dropped (with the socket in it, if that was not renamed away).
pub(super) struct PrivateDir {
    /// Its path beside the socket path (used only to remove it).
    path: PathBuf,
    /// The directory itself, opened `O_DIRECTORY|O_NOFOLLOW` and checked to be ours.
    dir: File,
}

impl PrivateDir {
    /// Creates the directory beside `target` and opens it; refuses it (NotPrivate) unless the
    /// opened directory is the daemon's own, without access for group or others.
    pub(super) fn create(target: &Path) -> Result<Self, SocketError> {
        let parent = parent_of(target);
        let io_err = |what| {
            move |source| SocketError::Io {
                path: target.to_path_buf(),
                what,
                source,
            }
        };
        let path = loop {
            let path = parent.join(format!(".sd{:016x}", random(target)?));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => break path,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("creating a private directory beside it")(e)),
            }
        };
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path);
        let dir = match opened {
            Ok(d) => d,
            Err(e) => return Err(io_err("opening the private directory beside it")(e)),
        };
        let meta = dir
            .metadata()
            .map_err(io_err("stat of the private directory"))?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        let mode = meta.mode() & 0o7777;
        if !meta.is_dir() || meta.uid() != euid || mode & 0o077 != 0 {
            // Not ours: leave the name alone (whoever swapped it in owns it).
            return Err(SocketError::NotPrivate {
                path: target.to_path_buf(),
                dir: path,
                owner: meta.uid(),
                mode,
            });
        }
        Ok(PrivateDir { path, dir })
    }

    /// The socket's path through the directory's descriptor, `/proc/self/fd/N/s`: short whatever
    /// the socket directory, and resolved to this very directory whatever its name points to now.
    pub(super) fn socket_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}/{NAME}", self.dir.as_raw_fd()))
    }

    /// Gives the socket to `group` (keeping its owner) and sets its `mode`, relative to the
    /// directory's descriptor.
    pub(super) fn restrict(&self, group: Option<&str>, mode: Option<u32>) -> io::Result<()> {
        let name = c_name(OsStr::new(NAME))?;
        if let Some(group) = group {
            let gid = gid_of(group)?;
            // SAFETY: a live directory descriptor and a NUL-terminated name; uid -1 keeps it.
            let r = unsafe {
                libc::fchownat(
                    self.dir.as_raw_fd(),
                    name.as_ptr(),
                    u32::MAX,
                    gid,
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            };
            if r != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if let Some(mode) = mode {
            // SAFETY: a live directory descriptor and a NUL-terminated name. Only the daemon's
            // user can have put the entry there (the directory is 0700 and ours).
            let r = unsafe { libc::fchmodat(self.dir.as_raw_fd(), name.as_ptr(), mode, 0) };
            if r != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// The socket's mode, device and inode (not following a link), refused if not a socket.
    pub(super) fn stat(&self) -> io::Result<(u32, u64, u64)> {
        let name = c_name(OsStr::new(NAME))?;
        // SAFETY: all-zero bytes are a valid `stat`.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a live directory descriptor, a NUL-terminated name and a live `stat` to fill.
        let r = unsafe {
            libc::fstatat(
                self.dir.as_raw_fd(),
                name.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            return Err(io::Error::other("the bound entry is not a socket"));
        }
        Ok((st.st_mode & 0o7777, st.st_dev, st.st_ino))
    }

    /// Renames the socket from the directory's descriptor over `target`.
    pub(super) fn rename_to(&self, target: &Path) -> io::Result<()> {
        let from = c_name(OsStr::new(NAME))?;
        let to = c_name(target.as_os_str())?;
        // SAFETY: a live directory descriptor and two NUL-terminated paths.
        let r = unsafe {
            libc::renameat(
                self.dir.as_raw_fd(),
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        if let Ok(name) = c_name(OsStr::new(NAME)) {
            // SAFETY: a live directory descriptor and a NUL-terminated name.
            unsafe { libc::unlinkat(self.dir.as_raw_fd(), name.as_ptr(), 0) };
        }
        // By name: only the daemon's user (or root) may change the entries of the checked
        // socket directory, and `rmdir` never follows a link nor removes a non-empty directory.
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// 64 unpredictable bits from the kernel.
fn random(target: &Path) -> Result<u64, SocketError> {
    let mut b = [0u8; 8];
    // SAFETY: `b` is a live, writable buffer of the length passed.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != 8 {
        return Err(SocketError::Io {
            path: target.to_path_buf(),
            what: "naming a private directory",
            source: io::Error::last_os_error(),
        });
    }
    Ok(u64::from_ne_bytes(b))
}

/// `s` as a C string (refused if it holds a NUL).
fn c_name(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

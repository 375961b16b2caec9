//! Replacing a small file atomically and durably: write a temporary copy beside it, sync it,
//! rename it over the file, then sync the directory. A crash at any point leaves either the old
//! file or the new one, never a torn one.
//!
//! The temporary copy is created exclusively (`O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600), never
//! through a symbolic link; a leftover one from a crash is removed only when it is a regular
//! file of the daemon's own user, else the write fails naming it.
//!
//! Each step is a crash point and the writes are error points of the test hooks
//! (`crate::testhooks::failpoint`), named `<name>-tmp-written`, `<name>-tmp-synced`,
//! `<name>-renamed`, `<name>-dir-synced`, `<name>-write-error` and `<name>-dir-sync-error`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::testhooks::failpoint;

/// Writes `bytes` to a synced temporary copy of `path` and renames it over `path`. On error
/// `path` is unchanged. The rename is durable only after [`sync_dir`].
pub fn replace(path: &Path, bytes: &[u8], name: &str) -> io::Result<()> {
    let tmp = temporary(path);
    {
        let mut f = create_temporary(&tmp)?;
        failpoint::error(format_args!("{name}-write-error"))?;
        f.write_all(bytes)?;
        failpoint::hit(format_args!("{name}-tmp-written"));
        f.sync_all()?;
        failpoint::hit(format_args!("{name}-tmp-synced"));
    }
    std::fs::rename(&tmp, path)?;
    failpoint::hit(format_args!("{name}-renamed"));
    Ok(())
}

/// Makes a rename in `path`'s directory durable.
pub fn sync_dir(path: &Path, name: &str) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    failpoint::error(format_args!("{name}-dir-sync-error"))?;
    File::open(dir)?.sync_all()?;
    failpoint::hit(format_args!("{name}-dir-synced"));
    Ok(())
}

/// [`replace`] then [`sync_dir`]: the file holds `bytes`, durably, when this returns Ok.
pub fn save(path: &Path, bytes: &[u8], name: &str) -> io::Result<()> {
    replace(path, bytes, name)?;
    sync_dir(path, name)
}

/// Reads a file the daemon wrote itself (the reservation state, the guests file): opened without
/// following a symbolic link, and refused unless it is a regular file owned by the daemon's user
/// (or root) that neither its group nor other users may write: a file someone else planted or
/// may change is never trusted. `None` when there is no file.
pub fn read_own(path: &Path) -> io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let mut f = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} is a symbolic link: the daemon never reads its own files through one. \
                     Find out who put it there, then remove it (the daemon writes the file \
                     itself)",
                    path.display()
                ),
            ))
        }
        Err(e) => return Err(named(e)),
    };
    let meta = f.metadata().map_err(named)?;
    check_own(path, &meta)?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).map_err(named)?;
    Ok(Some(bytes))
}

/// Refuses a file that is not a regular file of the daemon's user (or root), or that its group or
/// other users may write.
pub fn check_own(path: &Path, meta: &std::fs::Metadata) -> io::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let mode = meta.mode() & 0o7777;
    let why = if !meta.file_type().is_file() {
        "not a regular file".to_string()
    } else if meta.uid() != euid && meta.uid() != 0 {
        format!(
            "owned by uid {}, not by this daemon's user (uid {euid}) or root",
            meta.uid()
        )
    } else if mode & 0o022 != 0 {
        format!("mode {mode:04o}: its group or other users may change it")
    } else {
        return Ok(());
    };
    Err(io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "{} is {why}, so it is not trusted and nothing was read from it. Find out who put \
             it there; remove it if it is not the daemon's (`chown` it to the daemon's user and \
             `chmod go-w` it if it is)",
            path.display()
        ),
    ))
}

/// `<path>.tmp`.
fn temporary(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    PathBuf::from(tmp)
}

/// Creates the temporary file `tmp` for writing: exclusively, mode 0600, never through a symbolic
/// link. A leftover `tmp` (a crash between its creation and the rename) is removed first when it
/// is a regular file owned by this process's user; anything else there fails, naming it.
pub fn create_temporary(tmp: &Path) -> io::Result<File> {
    match open_new(tmp) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            remove_leftover(tmp)?;
            open_new(tmp)
        }
        r => r,
    }
}

fn open_new(tmp: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(tmp)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", tmp.display())))
}

/// Removes a leftover temporary file if it is a regular file of ours.
fn remove_leftover(tmp: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(tmp)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", tmp.display())))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.file_type().is_file() && meta.uid() == euid {
        return std::fs::remove_file(tmp)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", tmp.display())));
    }
    let kind = if meta.file_type().is_symlink() {
        "a symbolic link"
    } else if meta.file_type().is_file() {
        "a regular file"
    } else {
        "not a regular file"
    };
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "{} is in the way: {kind} owned by uid {}, not a leftover of this daemon (uid \
             {euid}); left untouched and nothing written through it. Find out who put it \
             there, then remove it",
            tmp.display(),
            meta.uid()
        ),
    ))
}

#[cfg(test)]
mod tests;

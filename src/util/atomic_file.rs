//! Replacing a small file atomically and durably: write a temporary copy beside it, sync it,
//! rename it over the file, then sync the directory. A crash at any point leaves either the old
//! file or the new one, never a torn one.
//!
//! Each step is a crash point and the writes are error points of the test hooks
//! (`crate::testhooks::failpoint`), named `<name>-tmp-written`, `<name>-tmp-synced`,
//! `<name>-renamed`, `<name>-dir-synced`, `<name>-write-error` and `<name>-dir-sync-error`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::testhooks::failpoint;

/// Writes `bytes` to a synced temporary copy of `path` and renames it over `path`. On error
/// `path` is unchanged. The rename is durable only after [`sync_dir`].
pub fn replace(path: &Path, bytes: &[u8], name: &str) -> io::Result<()> {
    let tmp = temporary(path);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
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

/// `<path>.tmp`.
fn temporary(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    PathBuf::from(tmp)
}

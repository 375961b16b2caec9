//! Reading a file that holds a secret (a key, a password, a CHAP secret): checked on the opened
//! file, so a swap between check and read cannot fool it. `[cluster]`'s key and password files
//! and `[[iscsi.initiator]]`'s CHAP secret files go through it.

use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub enum FileCheckError {
    /// It could not be opened or read.
    #[error("{0}")]
    Unreadable(#[from] std::io::Error),
    /// It is not a regular file (a directory, a FIFO, a device).
    #[error("not a regular file")]
    NotRegularFile,
    /// A secret that users other than its owner may read.
    #[error("readable by group or others (mode {mode:o})")]
    TooOpen { mode: u32 },
    /// It is larger than the caller reads.
    #[error("larger than {max} bytes")]
    TooLarge { max: u64 },
}

/// The contents of `path`: a regular file of at most `max` bytes, and when `secret`, with no
/// group or other permission bits.
pub fn read_checked(path: &Path, secret: bool, max: u64) -> Result<Vec<u8>, FileCheckError> {
    // O_NONBLOCK: a FIFO opens at once (and is then refused) instead of waiting for a writer.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(FileCheckError::NotRegularFile);
    }
    let mode = meta.permissions().mode() & 0o7777;
    if secret && mode & 0o077 != 0 {
        return Err(FileCheckError::TooOpen { mode });
    }
    let mut data = Vec::new();
    file.take(max + 1).read_to_end(&mut data)?;
    if data.len() as u64 > max {
        return Err(FileCheckError::TooLarge { max });
    }
    Ok(data)
}

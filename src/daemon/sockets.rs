//! Who may connect to the daemon's Unix sockets: the directory they live in, their group and
//! their mode.

use std::ffi::CString;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

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

/// Gives the socket at `path` to `group` (keeping its owner) and sets its `mode`.
pub fn restrict(path: &Path, group: Option<&str>, mode: Option<u32>) -> io::Result<()> {
    if let Some(group) = group {
        let gid = gid_of(group)?;
        std::os::unix::fs::chown(path, None, Some(gid))?;
    }
    if let Some(mode) = mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
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

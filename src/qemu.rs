//! The QEMU command-line fragment that attaches one guest to the daemon.

use std::path::Path;

use crate::config::{parse_size, socket_path, valid_guest_name};

/// Flags for one guest: the shared memory backend vhost-user needs, and both devices.
pub fn args(socket_dir: &Path, guest: &str, memory: &str) -> Result<String, String> {
    if !valid_guest_name(guest) {
        return Err(format!("invalid guest name {guest:?}: use [A-Za-z0-9_.-]"));
    }
    let bytes = parse_size(memory)?;
    if bytes % (1 << 20) != 0 {
        return Err(format!("memory {memory:?} must be a whole number of MiB"));
    }
    let mib = bytes >> 20;
    let blk = socket_path(socket_dir, guest, "blk");
    let scsi = socket_path(socket_dir, guest, "scsi");
    Ok(format!(
        "-m {mib}M -object memory-backend-memfd,id=mem,size={mib}M,share=on -machine memory-backend=mem \
         -chardev socket,id=sd-blk,path={} -device vhost-user-blk-pci,chardev=sd-blk,num-queues=1 \
         -chardev socket,id=sd-scsi,path={} -device vhost-user-scsi-pci,chardev=sd-scsi,num_queues=1",
        blk.display(),
        scsi.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_name_both_sockets_and_the_shared_memory() {
        let a = args(Path::new("/run/sd"), "vm1", "1G").unwrap();
        assert!(a.contains("size=1024M,share=on"));
        assert!(a.contains("path=/run/sd/vm1-blk.sock"));
        assert!(a.contains("path=/run/sd/vm1-scsi.sock"));
        assert!(args(Path::new("/x"), "a b", "1G").is_err());
        assert!(args(Path::new("/x"), "vm1", "1000K").is_err());
    }
}

//! The QEMU command-line fragment that attaches one guest to the daemon.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use crate::config::{parse_size, socket_path, valid_guest_name, GuestConfig};

/// The QEMU binary: `$SHAREDISK_QEMU`, else `qemu-system-x86_64` on the PATH (the scripts and
/// the tests use the same variable).
pub fn binary() -> OsString {
    std::env::var_os("SHAREDISK_QEMU")
        .filter(|q| !q.is_empty())
        .unwrap_or_else(|| "qemu-system-x86_64".into())
}

/// That QEMU's version as (major, minor), from its `--version`; `None` if it does not run.
pub fn installed_version() -> Option<(u32, u32)> {
    let out = Command::new(binary()).arg("--version").output().ok()?;
    parse_version(&String::from_utf8_lossy(&out.stdout))
}

/// (major, minor) from `QEMU emulator version 10.0.2 (...)`.
pub fn parse_version(text: &str) -> Option<(u32, u32)> {
    let v = text.split("version ").nth(1)?;
    let mut it = v.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// The chardev options that let QEMU reconnect after a daemon restart, per device: `reconnect=`
/// became `reconnect-ms=` in QEMU 9.2, and vhost-user-scsi only reconnects from QEMU 8.2 on (on
/// older QEMU a reconnecting chardev keeps the device from starting at all).
fn reconnect_options(version: Option<(u32, u32)>) -> (&'static str, &'static str) {
    let v = version.unwrap_or((7, 2));
    let opt = if v >= (9, 2) {
        ",reconnect-ms=1000"
    } else {
        ",reconnect=1"
    };
    (opt, if v >= (8, 2) { opt } else { "" })
}

/// Flags for one guest: the shared memory backend vhost-user needs, and both devices, with the
/// reconnect options of the QEMU [`binary`].
pub fn args(socket_dir: &Path, guest: &str, memory: &str) -> Result<String, String> {
    let version = installed_version();
    if version.is_none() {
        log::warn!(
            "cannot run `{} --version`; printing the flags for QEMU 7.2",
            binary().to_string_lossy()
        );
    }
    args_for(socket_dir, guest, memory, version)
}

fn args_for(
    socket_dir: &Path,
    guest: &str,
    memory: &str,
    version: Option<(u32, u32)>,
) -> Result<String, String> {
    if !valid_guest_name(guest) {
        return Err(format!("invalid guest name {guest:?}: use [A-Za-z0-9_.-]"));
    }
    let bytes = parse_size(memory)?;
    if !bytes.is_multiple_of(1 << 20) {
        return Err(format!("memory {memory:?} must be a whole number of MiB"));
    }
    let mib = bytes >> 20;
    let blk = socket_path(socket_dir, guest, "blk");
    let scsi = socket_path(socket_dir, guest, "scsi");
    let (blk_rc, scsi_rc) = reconnect_options(version);
    Ok(format!(
        "-m {mib}M -object memory-backend-memfd,id=mem,size={mib}M,share=on -machine memory-backend=mem \
         -chardev socket,id=sd-blk,path={}{blk_rc} -device vhost-user-blk-pci,chardev=sd-blk,num-queues=1 \
         -chardev socket,id=sd-scsi,path={}{scsi_rc} -device vhost-user-scsi-pci,chardev=sd-scsi,num_queues=1",
        blk.display(),
        scsi.display()
    ))
}

/// A live migration's destination: the source's flags `args` (the same devices on the same
/// sockets, served by the same daemon) and `-incoming uri`, where QEMU waits for the migration
/// stream. The daemon accepts the destination's connections while the source's are live.
pub fn incoming(args: &str, uri: &str) -> Result<String, String> {
    if uri.is_empty() || uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("invalid migration URI {uri:?}"));
    }
    Ok(format!("{args} -incoming {uri}"))
}

/// What `qemu-args` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// QEMU command-line flags.
    Qemu,
    /// libvirt domain XML fragments.
    Libvirt,
}

/// The attachment of `guest` (its queues and devices from the configuration), in `format`, for
/// the QEMU [`binary`].
pub fn guest_args(
    socket_dir: &Path,
    guest: &GuestConfig,
    memory: &str,
    format: Format,
) -> Result<String, String> {
    let version = installed_version();
    if version.is_none() {
        log::warn!(
            "cannot run `{} --version`; printing for QEMU 7.2",
            binary().to_string_lossy()
        );
    }
    match format {
        Format::Qemu => {
            let mut a = args_for(socket_dir, &guest.name, memory, version)?;
            a = a.replace("num-queues=1", &format!("num-queues={}", guest.queues));
            a = a.replace("num_queues=1", &format!("num_queues={}", guest.queues));
            if !guest.scsi {
                a = a[..a.find(" -chardev socket,id=sd-scsi").unwrap_or(a.len())].to_string();
            }
            Ok(a)
        }
        Format::Libvirt => libvirt_for(socket_dir, guest, version),
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// The libvirt XML for one guest: shared memfd memory, the vhost-user-blk `<disk>` (libvirt
/// 7.1 and later), and the vhost-user-scsi device through `<qemu:commandline>` (libvirt has no
/// element for it). Each fragment starts with a comment saying where it goes.
fn libvirt_for(
    socket_dir: &Path,
    guest: &GuestConfig,
    version: Option<(u32, u32)>,
) -> Result<String, String> {
    if !valid_guest_name(&guest.name) {
        return Err(format!(
            "invalid guest name {:?}: use [A-Za-z0-9_.-]",
            guest.name
        ));
    }
    let blk = socket_path(socket_dir, &guest.name, "blk");
    let scsi = socket_path(socket_dir, &guest.name, "scsi");
    let blk = xml_escape(&blk.to_string_lossy());
    let mut out = format!(
        "<!-- sharedisk: guest {name}. Declare the qemu namespace on the domain:\n     \
         <domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'> -->\n\
         <!-- in <domain>: vhost-user needs guest RAM that is shared and fd-backed -->\n\
         <memoryBacking>\n  <source type='memfd'/>\n  <access mode='shared'/>\n</memoryBacking>\n\
         <!-- in <devices>: vhost-user-blk; sharedisk supplies the serial and read-only, which \
         libvirt refuses on this disk type -->\n\
         <disk type='vhostuser' device='disk'>\n  \
         <driver name='qemu' type='raw' queues='{queues}'/>\n  \
         <source type='unix' path='{blk}'>\n    <reconnect enabled='yes' timeout='1'/>\n  </source>\n  \
         <target dev='vdb' bus='virtio'/>\n</disk>\n",
        name = xml_escape(&guest.name),
        queues = guest.queues,
    );
    if guest.scsi {
        let (_, scsi_reconnect) = reconnect_options(version);
        let chardev = xml_escape(&format!(
            "socket,id=sd-scsi,path={}{scsi_reconnect}",
            scsi.to_string_lossy().replace(',', ",,")
        ));
        out.push_str(&format!(
            "<!-- in <domain>: vhost-user-scsi, which libvirt has no element for. Its PCI address \
             keeps it off the slots libvirt assigns (on q35 use bus=pcie.0) -->\n\
             <qemu:commandline>\n  <qemu:arg value='-chardev'/>\n  <qemu:arg value='{chardev}'/>\n  \
             <qemu:arg value='-device'/>\n  \
             <qemu:arg value='vhost-user-scsi-pci,id=sd-scsi,chardev=sd-scsi,num_queues={q},bus=pci.0,addr=0x10'/>\n\
             </qemu:commandline>\n",
            q = guest.queues
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;

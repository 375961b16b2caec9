//! A QEMU guest live-migrating to another QEMU (`guest_migrate*.rs`): the QEMUs with their QMP,
//! a destination's start, and the checks of the guest and of a fenced neighbour around a move.

use std::path::{Path, PathBuf};

use super::guest::{Guest, GuestOpts};
use super::qmp::{qmp_args, Qmp};
use super::scsi_client::{conflict, ScsiClient};
use super::vu_frontend::{VuFrontend, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_T_OUT};

/// One QEMU of the guest and its QMP.
pub struct Vm {
    pub guest: Guest,
    pub qmp: Qmp,
}

/// Guest vm1's QEMU flags (256 MiB) on the device sockets `blk` and `scsi`, with QMP on
/// `dir/<tag>-qmp.sock`, then `extra`.
pub fn vm1_opts<'a>(
    (blk, scsi): (PathBuf, PathBuf),
    dir: &Path,
    tag: &str,
    extra: &[String],
) -> GuestOpts<'a> {
    let mut o = GuestOpts::new("vm1");
    o.blk = Some(blk);
    o.scsi = Some(scsi);
    o.memory = "256M";
    o.extra_args = qmp_args(&dir.join(format!("{tag}-qmp.sock")));
    o.extra_args.extend(extra.iter().cloned());
    o
}

/// Starts a destination QEMU waiting on `dir/<tag>-migrate.sock`, with the flags `opts` makes of
/// the `-incoming` arguments; returns it and the URI to migrate to.
pub fn destination<'a>(
    dir: &Path,
    tag: &str,
    opts: impl FnOnce(&[String]) -> GuestOpts<'a>,
) -> (Vm, String) {
    let uri = format!("unix:{}", dir.join(format!("{tag}-migrate.sock")).display());
    let guest = Guest::start_incoming(opts(&["-incoming".into(), uri.clone()]));
    let qmp = Qmp::new(dir.join(format!("{tag}-qmp.sock")));
    assert_eq!(
        qmp.run_state(),
        "inmigrate",
        "the destination waits for the stream"
    );
    (Vm { guest, qmp }, uri)
}

/// The PR state as the guest sees it: its keys and its reservation.
pub fn pr_state(g: &Guest) -> String {
    g.sh("sg_persist -n -i -k /dev/sda; sg_persist -n -i -r /dev/sda")
}

/// The guest does I/O on both devices: a direct write and read back of one 4 KiB block each,
/// `block` on /dev/vda and the next on /dev/sda.
pub fn io_works(g: &Guest, block: u64, what: &str) {
    for (dev, block) in [("vda", block), ("sda", block + 1)] {
        let out = g.sh(&format!(
            "yes {what}-{dev} | head -c 4096 > /tmp/io && \
             dd if=/tmp/io of=/dev/{dev} bs=4096 seek={block} count=1 oflag=direct 2>/dev/null && \
             dd if=/dev/{dev} bs=4096 skip={block} count=1 iflag=direct 2>/dev/null | cmp - /tmp/io \
             && echo same"
        ));
        assert!(out.contains("same"), "{what}: I/O on /dev/{dev}: {out}");
    }
}

/// vm2, another initiator (raw clients on its sockets), is fenced on both devices by vm1's
/// Write Exclusive reservation: a write on scsi gets RESERVATION CONFLICT, one at `blk_sector`
/// on blk an I/O error.
pub fn vm2_fenced(scsi: &mut ScsiClient, blk: &mut VuFrontend, blk_sector: u64, what: &str) {
    conflict(
        &scsi.write16(20000, &[0xee; 512]),
        &format!("{what}: vm2 scsi"),
    );
    let (status, _) = blk.blk_request(VIRTIO_BLK_T_OUT, blk_sector, &[0xee; 512], 0);
    assert_eq!(status, VIRTIO_BLK_S_IOERR, "{what}: vm2 blk write");
}

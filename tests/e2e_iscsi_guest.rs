//! QEMU's own iSCSI initiator (libiscsi: `-drive driver=iscsi` under `-device scsi-block`) as a
//! guest's disk, beside a vhost-user guest of the same daemon: the guest's `sg_persist` reaches
//! sharedisk's reservations through QEMU's SG_IO passthrough, READ FULL STATUS names the iSCSI
//! nexus by its TransportID (`<initiator name>,i,0x<ISID>`, the ISID QEMU logged in with), and
//! the seed's failover flow runs across the two transports, each side fencing the other.
//!
//! Runs on QEMU 7.2 and 10.0 (both passes of tests/run.sh): the `block-iscsi` module is Debian's
//! `qemu-block-extra`, installed for the system's 7.2 by images/install-deps.sh and unpacked
//! beside 10.0 from backports by images/install-qemu10.sh.

mod common;

use std::path::Path;

use common::cluster::{self, host_block, GuestPr};
use common::ctl::ctl_json;
use common::guest::{Guest, GuestOpts};
use common::iscsi_client::{free_port, served_target};
use common::process::DaemonProcess;

/// The initiator name QEMU's libiscsi logs in with (`initiator-name=` of the drive).
const QEMU_INITIATOR: &str = "iqn.2026-12.io.sharedisk.test:qemu-vm2";

/// Boots `name` with no vhost-user device: its /dev/sda is the iSCSI LUN, through QEMU's libiscsi
/// driver and a `scsi-block` device on a virtio-scsi controller.
fn boot_on_iscsi(name: &str, portal: &str, target: &str) -> Guest {
    let mut o = GuestOpts::new(name);
    o.extra_args = vec![
        "-drive".into(),
        format!(
            "driver=iscsi,transport=tcp,portal={portal},target={target},lun=0,\
             initiator-name={QEMU_INITIATOR},if=none,id=iscsi0,cache.direct=on"
        ),
        "-device".into(),
        "virtio-scsi-pci,id=vscsi0".into(),
        "-device".into(),
        "scsi-block,drive=iscsi0,bus=vscsi0.0".into(),
    ];
    let g = Guest::boot(o);
    g.sh("ls /dev/sda");
    g
}

/// The ISID of the one live iSCSI session, as `ctl iscsi sessions` shows it (hex).
fn session_isid(d: &DaemonProcess) -> String {
    let v = ctl_json(&d.control(), &["iscsi", "sessions"]);
    let sessions = v["sessions"].as_array().expect("a sessions list");
    assert_eq!(sessions.len(), 1, "one session, QEMU's: {v}");
    assert_eq!(sessions[0]["initiator"], QEMU_INITIATOR, "{v}");
    sessions[0]["isid"]
        .as_str()
        .expect("an ISID")
        .to_ascii_lowercase()
}

/// Asserts that `g`'s write of `block` to `dev` succeeds and lands on the image.
#[track_caller]
fn assert_write_lands(g: &Guest, dev: &str, block: u64, image: &Path, what: &str) {
    assert!(g.dd_write(dev, block), "[{}] {what}: failed", g.name());
    assert_eq!(
        host_block(image, block),
        cluster::dd_record(g.name(), block),
        "[{}] {what}: the record is not on the image",
        g.name()
    );
}

#[test]
fn qemu_libiscsi_guest_shares_reservations_with_a_vhost_user_guest() {
    let dir = tempfile::tempdir().unwrap();
    let portal = format!("127.0.0.1:{}", free_port());
    let d = DaemonProcess::start_args(
        dir.path(),
        &["vm1"],
        "64M",
        &[
            "--iscsi-listen",
            &portal,
            "--iscsi-initiator",
            QEMU_INITIATOR,
        ],
    );
    let target = served_target(&d);
    let image = d.image.clone();
    let (vm1, vm2) = std::thread::scope(|s| {
        let vu = s.spawn(|| cluster::boot_one("vm1", d.blk("vm1"), d.scsi("vm1")));
        let is = s.spawn(|| boot_on_iscsi("vm2", &portal, &target));
        (vu.join().unwrap(), is.join().unwrap())
    });

    // 1. Both register; the vhost-user guest reads the iSCSI nexus's TransportID.
    vm1.pr_ok("-o -I -S 0x1");
    vm2.pr_ok("-o -I -S 0x2");
    let isid = session_isid(&d);
    let full = vm1.pr_ok("-i -s");
    let want = format!("{QEMU_INITIATOR},i,0x{isid}");
    assert!(
        full.to_ascii_lowercase()
            .contains(&want.to_ascii_lowercase()),
        "READ FULL STATUS names the iSCSI nexus as {want}:\n{full}"
    );
    assert!(vm2.pr_ok("-i -k").contains("0x1"), "vm2 reads vm1's key");

    // 2. The iSCSI guest holds the disk (Write Exclusive); the vhost-user guest is refused.
    vm2.pr_ok("-o -R -K 0x2 -T 1");
    let res = vm1.pr_ok("-i -r");
    assert!(
        res.contains("Key=0x2") && res.contains("Write Exclusive"),
        "{res}"
    );
    assert_write_lands(&vm2, "/dev/sda", 10, &image, "the holder's write (iSCSI)");
    for dev in ["/dev/vda", "/dev/sda"] {
        vm1.assert_write_refused(dev, 11, &image, "vm1's write under vm2's reservation");
    }
    assert!(vm1.dd_read("/dev/sda", 10), "vm1 still reads");

    // 3. The vhost-user guest preempts the iSCSI guest (PREEMPT AND ABORT): the iSCSI side is
    //    fenced, its writes fail and never reach the image.
    vm1.pr_ok("-o -A -K 0x1 -S 0x2 -T 1");
    assert!(vm2.pr_ok("-i -r").contains("Key=0x1"), "vm1 holds it");
    vm2.assert_write_refused("/dev/sda", 12, &image, "the fenced iSCSI guest's write");
    assert_write_lands(
        &vm1,
        "/dev/sda",
        13,
        &image,
        "the new holder's write (vhost-user)",
    );

    // 4. The reverse: the iSCSI guest registers again and preempts the vhost-user guest.
    vm2.pr_ok("-o -I -S 0x3");
    vm2.pr_ok("-o -A -K 0x3 -S 0x1 -T 1");
    let res = vm1.pr("-i -r").1;
    assert!(res.contains("Key=0x3"), "vm2 holds it: {res}");
    for dev in ["/dev/vda", "/dev/sda"] {
        vm1.assert_write_refused(dev, 14, &image, "the fenced vhost-user guest's write");
    }
    assert_write_lands(&vm2, "/dev/sda", 15, &image, "the iSCSI holder's write");

    // 5. The holder on iSCSI dies (its QEMU killed): the vhost-user guest takes the disk over
    //    from its key alone, as the seed's failover does.
    vm2.kill();
    vm1.pr_ok("-o -I -S 0x1");
    vm1.pr_ok("-o -A -K 0x1 -S 0x3 -T 1");
    assert!(vm1.pr_ok("-i -r").contains("Key=0x1"));
    assert_write_lands(&vm1, "/dev/sda", 16, &image, "the survivor's write");
    vm1.poweroff();
    d.assert_no_panic();
}

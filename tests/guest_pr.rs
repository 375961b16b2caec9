//! Persistent reservations driven from real guests: sg_persist, the Linux IOC_PR_* ioctls, the
//! fencing of a preempted guest on both devices, and what survives resets and restarts.

mod common;

use common::cluster::{self, GuestPr, SG_RC};
use common::daemon::TestDaemon;
use common::guest::{Guest, GuestOpts};

fn reboot(d: &TestDaemon, g: Guest) -> Guest {
    let name: &'static str = Box::leak(g.name().to_string().into_boxed_str());
    g.kill();
    drop(g);
    let mut o = GuestOpts::new(name);
    o.blk = Some(d.blk(name));
    o.scsi = Some(d.scsi(name));
    o.reconnect = true;
    o.allow_reboot = true;
    Guest::boot(o)
}

#[test]
fn sg_persist_preempt_ioctls_and_persistence() {
    let mut d = TestDaemon::start(&["vm1", "vm2"]);
    let mut g = cluster::boot(&d, &["vm1", "vm2"]);

    eprintln!("=== vm1 registers and takes Write Exclusive; vm2 is fenced on both devices");
    g[0].pr_ok("-o -I -S 0x1");
    g[1].pr_ok("-o -G -S 0x2");
    g[0].pr_ok("-o -R -K 0x1 -T 1");
    for dev in ["/dev/vda", "/dev/sda"] {
        assert!(g[0].dd_write(dev, 100), "vm1 writes {dev}");
        g[1].assert_write_refused(
            dev,
            101,
            d.image(),
            &format!("vm2's write to {dev} is refused"),
        );
        assert!(g[1].dd_read(dev, 100), "vm2 still reads {dev}");
    }
    let keys = g[1].pr_ok("-i -k");
    assert!(keys.contains("PR generation=0x2"), "{keys}");
    assert!(keys.contains("0x1") && keys.contains("0x2"), "{keys}");
    let (rc, _) = g[1].pr("-o -R -K 0x2 -T 1");
    assert_eq!(rc, SG_RC, "a second reservation is a conflict");
    let (rc, _) = g[1].pr("-o -R -K 0x9 -T 1");
    assert_eq!(rc, SG_RC, "a wrong key is a conflict");

    eprintln!("=== vm2 preempts and aborts vm1, then writes; vm1 is fenced");
    g[1].pr_ok("-o -A -K 0x2 -S 0x1 -T 1");
    for dev in ["/dev/vda", "/dev/sda"] {
        assert!(g[1].dd_write(dev, 102), "vm2 writes {dev} after preempting");
        g[0].drain_ua();
        g[0].assert_write_refused(
            dev,
            103,
            d.image(),
            &format!("preempted vm1's write to {dev} is refused"),
        );
    }
    let keys = g[0].pr_ok("-i -k");
    assert!(keys.contains("PR generation=0x3"), "{keys}");
    assert!(keys.contains("0x2") && !keys.contains("    0x1"), "{keys}");
    let res = g[0].pr_ok("-i -r");
    assert!(
        res.contains("Key=0x2") && res.contains("type: Write Exclusive"),
        "{res}"
    );
    let status = g[0].pr_ok("-i -s");
    assert!(status.contains("iqn.2026-11.io.sharedisk:vm2"), "{status}");
    assert!(status.contains("Reservation holder"), "{status}");
    let caps = g[0].pr_ok("-i -c");
    for line in [
        "Compatible Reservation Handling(CRH): 1",
        "Specify Initiator Ports Capable(SIP_C): 0",
        "All Target Ports Capable(ATP_C): 1",
        "Persist Through Power Loss Capable(PTPL_C): 1",
        "Type Mask Valid(TMV): 1",
        "Exclusive Access, all registrants: 1",
    ] {
        assert!(caps.contains(line), "{line} in {caps}");
    }
    let (rc, _) = g[0].pr("-o -R -K 0x1 -T 1");
    assert_eq!(rc, SG_RC, "an unregistered initiator cannot reserve");

    eprintln!("=== COMPARE AND WRITE from the guests: sg_compare_and_write");
    compare_and_write_in_guests(&d, &g[1], &g[0]);

    eprintln!("=== the reservation survives a LUN reset, a guest reboot, a QEMU restart, a daemon restart");
    let before = g[1].pr_ok("-i -s");
    g[1].sh("sg_reset -d /dev/sda");
    assert_eq!(g[1].pr_ok("-i -s"), before, "after a LUN reset");
    g[0].reboot();
    assert_eq!(g[0].pr_ok("-i -s"), before, "after vm1 rebooted");
    g[0].assert_write_refused(
        "/dev/sda",
        109,
        d.image(),
        "vm1 is still fenced after its reboot",
    );
    let vm1 = g.remove(0);
    let vm1 = reboot(&d, vm1);
    assert_eq!(vm1.pr_ok("-i -s"), before, "after vm1's QEMU restarted");
    vm1.assert_write_refused("/dev/vda", 104, d.image(), "vm1 is still fenced");
    for g in [vm1, g.remove(0)] {
        g.kill();
    }
    d.restart();
    let g = cluster::boot(&d, &["vm1", "vm2"]);
    assert_eq!(g[0].pr_ok("-i -s"), before, "after a daemon restart");
    assert!(g[1].dd_write("/dev/sda", 105), "the holder still writes");
    g[0].assert_write_refused("/dev/sda", 106, d.image(), "vm1 is still fenced");

    eprintln!("=== the Linux PR ioctls (APTPL=1) on /dev/sda");
    g[1].pr_ok("-o -C -K 0x2");
    g[0].sh("pr-ioctl /dev/sda register 0 0xa1");
    g[0].sh("pr-ioctl /dev/sda reserve 0xa1 1");
    g[1].drain_ua();
    g[1].sh("pr-ioctl /dev/sda register 0 0xb2");
    let (rc, _) = g[1].run("pr-ioctl /dev/sda reserve 0xb2 1");
    assert_eq!(rc, 24, "IOC_PR_RESERVE of a reserved LU is a conflict");
    g[1].sh("pr-ioctl /dev/sda preempt 0xb2 0xa1 1");
    let res = g[1].pr_ok("-i -r");
    assert!(res.contains("Key=0xb2"), "{res}");
    let caps = g[1].pr_ok("-i -c");
    assert!(
        caps.contains("Persist Through Power Loss Active(PTPL_A): 1"),
        "APTPL accepted: {caps}"
    );
    g[0].drain_ua();
    g[0].assert_write_refused(
        "/dev/sda",
        107,
        d.image(),
        "vm1 preempted through the ioctl",
    );
    g[1].sh("pr-ioctl /dev/sda release 0xb2 1");
    g[1].sh("pr-ioctl /dev/sda clear 0xb2");
    assert!(g[1]
        .pr_ok("-i -k")
        .contains("there are NO registered reservation keys"));
    g[0].drain_ua();
    assert!(
        g[0].dd_write("/dev/sda", 108),
        "vm1 writes again once cleared"
    );
    for g in g {
        g.poweroff();
    }
}

/// The 29h UAs a guest kernel has seen on /dev/sda: it logs this line for each one, whether its
/// own I/O or a tool's SG_IO command reported it.
/// sg3-utils' `sg_compare_and_write` on /dev/sda: the holder's succeeds and lands, the same
/// one again miscompares (exit 14) and changes nothing, the fenced guest's gets RESERVATION
/// CONFLICT (exit 24) and changes nothing.
fn compare_and_write_in_guests(d: &TestDaemon, holder: &Guest, fenced: &Guest) {
    const LBA: u64 = 2000;
    // Verify data (one block of `from`) then write data (one block of `to`).
    let halves = |from: &str, to: &str| {
        format!(
            "yes {from} | tr -d '\\n' | head -c 512 > /tmp/cw && \
             yes {to} | tr -d '\\n' | head -c 512 >> /tmp/cw"
        )
    };
    let caw = format!("sg_compare_and_write --in=/tmp/cw --lba={LBA} --num=1 /dev/sda");
    let block = || common::image::image_bytes(d.image(), LBA * 512, 512);
    holder.sh("head -c 512 /dev/zero > /tmp/cw && yes C | tr -d '\\n' | head -c 512 >> /tmp/cw");
    holder.sh(&caw);
    assert_eq!(
        block(),
        vec![b'C'; 512],
        "the holder's COMPARE AND WRITE landed"
    );
    let (rc, out) = holder.run(&caw);
    assert_eq!(rc, 14, "the same compare again is a MISCOMPARE: {out}");
    assert_eq!(block(), vec![b'C'; 512]);
    fenced.sh(&halves("C", "D"));
    let (rc, out) = fenced.run(&caw);
    assert_eq!(rc, SG_RC, "the fenced guest's COMPARE AND WRITE: {out}");
    assert_eq!(block(), vec![b'C'; 512], "nothing of it landed");
}

fn reset_uas_logged(g: &Guest) -> usize {
    let (_, out) = g.run("dmesg | grep -c 'Power-on or device reset occurred'");
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("[{}] grep -c printed {out:?}", g.name()))
}

/// `sg_turs -v` until it passes; returns every sense description it printed on the way.
fn turs_until_ready(g: &Guest) -> String {
    g.sh("for i in 1 2 3 4 5 6; do sg_turs -v /dev/sda 2>&1 && break; done; true")
}

/// A LOGICAL UNIT RESET from one guest (`sg_reset -d`, which the Linux virtio-scsi driver sends
/// as the TMF) gives every guest's I_T nexus one 06/29/03 and releases an SPC-2 reservation.
/// A guest kernel may meet a UA before the tools do (it may retry quietly after a reset it asked
/// for), so what is asserted holds whoever consumes it: each guest logged exactly one new reset
/// UA, its tools saw no UA but 29/03, and the guest that did not ask sees 29/03 in sg_turs.
#[test]
fn lun_reset_from_one_guest_gives_every_guest_one_29_03() {
    let d = TestDaemon::start(&["vm1", "vm2"]);
    let g = cluster::boot(&d, &["vm1", "vm2"]);
    for x in &g {
        x.drain_ua();
    }

    eprintln!("=== vm2 takes an SPC-2 reservation (RESERVE(6)); vm1 is shut out");
    g[1].sh("sg_raw -v /dev/sda 16 00 00 00 00 00");
    assert!(
        !g[0].dd_write("/dev/sda", 200),
        "vm1 shut out by RESERVE(6)"
    );
    assert!(g[1].dd_write("/dev/sda", 201), "vm2 holds the LU");
    let before = [reset_uas_logged(&g[0]), reset_uas_logged(&g[1])];

    eprintln!("=== vm1 resets the LU; both guests see one BUS DEVICE RESET FUNCTION OCCURRED");
    let out = g[0].sh("sg_reset -v -d /dev/sda");
    assert!(out.contains("completed device"), "{out}");
    let seen = [turs_until_ready(&g[0]), turs_until_ready(&g[1])];
    for (i, out) in seen.iter().enumerate() {
        assert_eq!(
            out.matches("Additional sense:").count(),
            out.matches("Bus device reset function occurred").count(),
            "vm{}: a UA other than 29/03: {out}",
            i + 1
        );
        assert!(
            out.matches("Bus device reset function occurred").count() <= 1,
            "vm{}: reported more than once: {out}",
            i + 1
        );
        assert_eq!(
            reset_uas_logged(&g[i]),
            before[i] + 1,
            "vm{}: exactly one reset UA since the reset",
            i + 1
        );
    }
    assert!(
        seen[1].contains("Bus device reset function occurred"),
        "vm2's sg_turs reports 06/29/03: {}",
        seen[1]
    );

    eprintln!("=== the reset released vm2's RESERVE(6): vm1 writes");
    assert!(
        g[0].dd_write("/dev/sda", 202),
        "vm1 writes after the LUN reset"
    );
    for x in &g {
        x.poweroff();
    }
}

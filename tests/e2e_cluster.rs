//! End-to-end cluster scenarios on the daemon binary with real guests: Pacemaker's fence_scsi
//! sequences, a guest that keeps writing while it is fenced, and a daemon restart under running
//! guests.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{self, GuestPr};
use common::guest::{qemu_version, Guest};
use common::process::DaemonProcess;

/// fence_scsi "on" for one node: drain UAs, register the node's key, reserve type 5 (WE-RO) if
/// nobody holds a reservation yet.
fn fence_scsi_on(g: &Guest, key: &str) {
    g.pr_ok(&format!("-o -I -S {key}"));
    if g.pr_ok("-i -r").contains("NO reservation") {
        g.pr_ok(&format!("-o -R -K {key} -T 5"));
    }
}

/// fence_scsi "off": the survivor preempts (and aborts) the victim's key.
fn fence_scsi_off(survivor: &Guest, my_key: &str, victim_key: &str) {
    survivor.pr_ok(&format!("-o -A -K {my_key} -S {victim_key} -T 5"));
}

/// Starts a background loop in `g` writing sequence-numbered 4 KiB blocks to both devices:
/// block `base + i` gets the text `%08d` of i; every outcome is logged to /tmp/wlog.
///
/// Whole 4 KiB blocks: busybox dd falls back to a buffered write when O_DIRECT refuses a short
/// or unaligned buffer (as it does for 512 bytes), and a buffered write hides the device's answer.
fn start_writer(g: &Guest, base: u64) {
    g.sh(&format!(
        "rm -f /tmp/stop /tmp/wlog; (i=0; while [ ! -e /tmp/stop ]; do (printf '%08d' $i; head -c 4088 /dev/zero) > /tmp/b; \
         for d in vda sda; do if dd if=/tmp/b of=/dev/$d bs=4096 seek=$(({base}+i)) count=1 oflag=direct 2>/dev/null; \
         then echo ok $d $i; else echo fail $d $i; fi >> /tmp/wlog; done; i=$((i+1)); done; echo done >> /tmp/wlog) \
         </dev/null >/dev/null 2>&1 &"
    ));
}

fn writer_log(g: &Guest) -> Vec<(bool, String, u64)> {
    // The log may not exist yet right after the writer started.
    g.run("cat /tmp/wlog 2>/dev/null")
        .1
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let ok = match w.next()? {
                "ok" => true,
                "fail" => false,
                _ => return None,
            };
            Some((ok, w.next()?.to_string(), w.next()?.parse().ok()?))
        })
        .collect()
}

#[test]
fn fence_scsi_sequences_and_a_guest_writing_while_fenced() {
    let dir = tempfile::tempdir().unwrap();
    // Every write takes a second between its admission and the image: a write of the fenced
    // node that its admission did not hold back would land after the snapshot below.
    let mut d = DaemonProcess::start_env(
        dir.path(),
        &["node1", "node2", "node3"],
        "128M",
        &[("SHAREDISK_TEST_WRITE_DELAY_MS", "1000")],
    );
    let g = cluster::boot_with(&["node1", "node2", "node3"], |n| (d.blk(n), d.scsi(n)));
    let keys = ["0x1001", "0x1002", "0x1003"];

    eprintln!("=== fence_scsi on: every node registers, the first one reserves type 5");
    for (g, key) in g.iter().zip(keys) {
        fence_scsi_on(g, key);
    }
    let k = g[2].pr_ok("-i -k");
    assert!(keys.iter().all(|key| k.contains(key)), "{k}");
    let r = g[2].pr_ok("-i -r");
    assert!(
        r.contains("Key=0x1001") && r.contains("Write Exclusive, registrants only"),
        "{r}"
    );

    eprintln!("=== node3 writes continuously on both devices; node1 fences it (fence_scsi off)");
    const BASE: u64 = 8192;
    start_writer(&g[2], BASE);
    let deadline = Instant::now() + Duration::from_secs(60);
    while writer_log(&g[2]).iter().filter(|(ok, ..)| *ok).count() < 6 {
        assert!(Instant::now() < deadline, "the writer never got going");
        std::thread::sleep(Duration::from_millis(200));
    }
    fence_scsi_off(&g[0], "0x1001", "0x1003");
    // GOOD has reached node1: from now on the image must not change.
    let snapshot = std::fs::read(&d.image).unwrap();
    let k = g[0].pr_ok("-i -k");
    assert!(!k.contains("0x1003"), "the victim's key is gone: {k}");
    assert!(
        g[0].pr_ok("-i -r").contains("Key=0x1001"),
        "a reservation is still present"
    );
    std::thread::sleep(Duration::from_secs(3));
    g[2].sh("touch /tmp/stop; while ! grep -q done /tmp/wlog; do sleep 0.1; done");
    let log = writer_log(&g[2]);
    assert!(
        !g[2].sh("dmesg").contains("lost async page write"),
        "every write of the writer was direct, so its outcome is the device's answer"
    );
    let fin = std::fs::read(&d.image).unwrap();
    assert!(
        snapshot == fin,
        "a write of the fenced node landed after the preempt returned"
    );
    let landed = log.iter().filter(|(ok, ..)| *ok).count();
    let refused = log.len() - landed;
    eprintln!("writer: {landed} writes landed, {refused} refused after fencing");
    assert!(refused >= 2, "the writer kept writing after it was fenced");
    // vda and sda alternate on the same block numbers, so read what each block holds.
    for (ok, dev, i) in &log {
        let block = &fin[((BASE + i) * 4096) as usize..][..8];
        let text = format!("{i:08}");
        if *ok {
            assert_eq!(
                block,
                text.as_bytes(),
                "acknowledged write {dev} {i} is on the image"
            );
        } else if dev == "vda" {
            assert_ne!(
                block,
                text.as_bytes(),
                "refused write {dev} {i} never landed"
            );
        }
    }
    for dev in ["/dev/vda", "/dev/sda"] {
        g[2].drain_ua();
        g[2].assert_write_refused(
            dev,
            5,
            &d.image,
            &format!("fenced node3 cannot write {dev}"),
        );
        assert!(
            g[2].dd_read(dev, 5),
            "fenced node3 still reads {dev} (type 5)"
        );
    }

    eprintln!("=== fence_scsi on again for node3 (unfence): it registers and writes again");
    fence_scsi_on(&g[2], "0x1003");
    assert!(g[2].dd_write("/dev/vda", 6) && g[2].dd_write("/dev/sda", 7));
    for g in g {
        g.kill();
    }
    d.stop();
}

#[test]
fn daemon_restart_with_guests_running() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = DaemonProcess::start(dir.path(), &["vm1", "vm2", "vm3"], "128M");
    let g = cluster::boot_with(&["vm1", "vm2"], |n| (d.blk(n), d.scsi(n)));
    g[0].pr_ok("-o -I -S 0x1");
    g[1].pr_ok("-o -I -S 0x2");
    g[0].pr_ok("-o -R -K 0x1 -T 1");
    let before = g[1].pr_ok("-i -s");
    assert!(g[0].dd_write("/dev/vda", 1));
    g[1].assert_write_refused("/dev/vda", 2, &d.image, "vm2 is fenced");

    eprintln!("=== the daemon restarts under running guests");
    d.restart();
    // QEMU reconnects the blk device and replays what was in flight; no guest reboots.
    assert!(
        g[0].dd_write("/dev/vda", 3),
        "vm1's blk I/O resumes after the restart"
    );
    assert!(
        g[1].dd_read("/dev/vda", 3),
        "vm2's blk I/O resumes after the restart"
    );
    g[1].assert_write_refused(
        "/dev/vda",
        4,
        &d.image,
        "vm2 is still fenced after the restart",
    );
    let (major, minor) = qemu_version();
    if (major, minor) >= (8, 2) {
        // vhost-user-scsi reconnects too from QEMU 8.2 on.
        assert_eq!(
            g[1].pr_ok("-i -s"),
            before,
            "PR state over the reconnected scsi device"
        );
    } else {
        eprintln!(
            "QEMU {major}.{minor}: vhost-user-scsi cannot reconnect before 8.2; reading the PR \
             state from a guest started after the restart"
        );
        let vm3 = cluster::boot_one("vm3", d.blk("vm3"), d.scsi("vm3"));
        assert_eq!(
            vm3.pr_ok("-i -s"),
            before,
            "registrations and reservation intact"
        );
        vm3.kill();
    }
    for g in g {
        g.kill();
    }
    d.stop();
}

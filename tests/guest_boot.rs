//! Proves the test-guest harness with QEMU's own emulated virtio-blk and virtio-scsi devices
//! (no sharedisk daemon involved): boot, command agent, /dev/vda + /dev/sda, direct I/O,
//! sg3-utils and pr-ioctl in the guest.
mod common;

use common::guest::{sparse_image, Guest, GuestOpts};
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

const IMG_SIZE: u64 = 32 << 20;

struct TempImages(Vec<PathBuf>);
impl Drop for TempImages {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

fn read_host(path: &PathBuf, offset: u64, len: usize) -> Vec<u8> {
    let mut f = fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf).unwrap();
    buf
}

/// `yes WORD | head -c LEN` on the host.
fn pattern(word: &str, len: usize) -> Vec<u8> {
    format!("{word}\n").bytes().cycle().take(len).collect()
}

#[test]
fn guest_boots_and_runs_commands() {
    let dir = std::env::temp_dir();
    let pid = std::process::id();
    let blk_img = dir.join(format!("sharedisk-guest-boot-{pid}-blk.img"));
    let scsi_img = dir.join(format!("sharedisk-guest-boot-{pid}-scsi.img"));
    let _cleanup = TempImages(vec![blk_img.clone(), scsi_img.clone()]);
    sparse_image(&blk_img, IMG_SIZE);
    sparse_image(&scsi_img, IMG_SIZE);

    let extra: Vec<String> = [
        "-drive".to_string(),
        format!("file={},if=none,id=d0,format=raw", blk_img.display()),
        "-device".into(),
        "virtio-blk-pci,drive=d0,serial=blk-serial-0".into(),
        "-drive".into(),
        format!("file={},if=none,id=d1,format=raw", scsi_img.display()),
        "-device".into(),
        "virtio-scsi-pci,id=scsi0".into(),
        "-device".into(),
        "scsi-hd,drive=d1,bus=scsi0.0".into(),
    ]
    .into();

    let g = Guest::boot(GuestOpts {
        extra_args: extra,
        ..GuestOpts::new("gboot")
    });
    eprintln!("boot time: {:.2}s", g.boot_time().as_secs_f64());

    // Kernel command line carries the guest name.
    let cmdline = g.sh("cat /proc/cmdline");
    assert!(cmdline.contains("console=ttyS0"), "cmdline: {cmdline}");
    assert!(
        cmdline.contains("sharedisk.name=gboot"),
        "cmdline: {cmdline}"
    );
    assert_eq!(g.sh("hostname").trim(), "gboot");

    // Exit status and output plumbing.
    assert_eq!(g.run("exit 7").0, 7);
    assert_eq!(
        g.run("echo out; echo err >&2; false"),
        (1, "out\nerr\n".to_string())
    );
    assert_eq!(g.sh("printf no-newline"), "no-newline");
    assert_eq!(g.sh("echo 'a  b'; echo \"$((6*7))\""), "a  b\n42\n");

    // Both disks are there, with the expected sizes.
    let ls = g.sh("ls /dev/vda /dev/sda");
    assert!(
        ls.contains("/dev/vda") && ls.contains("/dev/sda"),
        "ls: {ls}"
    );
    assert_eq!(
        g.sh("blockdev --getsize64 /dev/vda").trim(),
        IMG_SIZE.to_string()
    );
    assert_eq!(
        g.sh("blockdev --getsize64 /dev/sda").trim(),
        IMG_SIZE.to_string()
    );
    assert_eq!(g.sh("cat /sys/block/vda/serial").trim(), "blk-serial-0");

    // Direct-I/O pattern write + read-back on both disks (64 KiB at 1 MiB).
    for (dev, word) in [
        ("vda", "sharedisk-vda-pattern"),
        ("sda", "sharedisk-sda-pattern"),
    ] {
        g.sh(&format!("yes {word} | head -c 65536 > /tmp/{dev}.pat"));
        g.sh(&format!(
            "dd if=/tmp/{dev}.pat of=/dev/{dev} bs=4096 seek=256 count=16 oflag=direct conv=notrunc"
        ));
        g.sh(&format!(
            "dd if=/dev/{dev} of=/tmp/{dev}.back bs=4096 skip=256 count=16 iflag=direct"
        ));
        let (rc, out) = g.run(&format!("cmp /tmp/{dev}.pat /tmp/{dev}.back && echo SAME"));
        assert_eq!((rc, out.trim()), (0, "SAME"), "{dev} read-back differs");
        // A region that was never written reads as zeroes.
        let z = g.sh(&format!(
            "dd if=/dev/{dev} bs=4096 skip=512 count=1 iflag=direct 2>/dev/null | od -An -tx1 | sort -u"
        ));
        assert!(
            z.split_whitespace()
                .filter(|t| *t != "*")
                .all(|t| t == "00"),
            "{dev}: unwritten region not zero: {z}"
        );
    }

    // SCSI tools run against QEMU's scsi-hd.
    let inq = g.sh("sg_inq /dev/sda");
    assert!(inq.contains("QEMU"), "sg_inq: {inq}");
    assert!(
        inq.contains("Peripheral device type: disk"),
        "sg_inq: {inq}"
    );
    g.sh("sg_turs /dev/sda");
    let cap = g.sh("sg_readcap /dev/sda");
    assert!(
        cap.contains(&format!("Last LBA={}", IMG_SIZE / 512 - 1)),
        "sg_readcap: {cap}"
    );
    // QEMU's scsi-hd without a pr-manager rejects PERSISTENT RESERVE IN: only check the
    // binary runs and reports a SCSI error (not "not found" = 127).
    let (rc, out) = g.run("sg_persist -n -i -k /dev/sda");
    assert!(rc != 0 && rc != 127, "sg_persist rc={rc}: {out}");
    assert!(
        out.contains("not supported") || out.contains("Illegal request"),
        "{out}"
    );
    g.sh("sg_rep_opcodes --help >/dev/null 2>&1 || [ $? -ne 127 ]");

    // pr-ioctl: usage error, unsupported device (virtio-blk has no pr_ops), SCSI error.
    assert_eq!(g.run("pr-ioctl").0, 64);
    let (rc, out) = g.run("pr-ioctl /dev/vda register 0 0x1234");
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains("errno"), "{out}");
    let (rc, out) = g.run("pr-ioctl /dev/sda register 0 0x1234");
    assert_eq!(
        rc, 98,
        "QEMU scsi-hd should fail PR OUT with CHECK CONDITION: {out}"
    );

    // A timed-out command does not desynchronise later ones.
    assert!(g
        .try_run("sleep 3; echo late", Duration::from_millis(500))
        .is_err());
    assert_eq!(g.sh("echo after-timeout"), "after-timeout\n");

    g.sh("sync");
    let st = g.poweroff().expect("QEMU exit status");
    assert!(st.success(), "QEMU exit status after poweroff: {st}");

    // The guest's writes reached the host image files.
    assert_eq!(
        read_host(&blk_img, 1 << 20, 65536),
        pattern("sharedisk-vda-pattern", 65536)
    );
    assert_eq!(
        read_host(&scsi_img, 1 << 20, 65536),
        pattern("sharedisk-sda-pattern", 65536)
    );
}

#[test]
fn guest_kill_and_no_disks() {
    // No disks at all: the guest must still come up (the device wait is conditional).
    let g = Guest::boot(GuestOpts::new("gkill"));
    let (rc, _) = g.run("ls /dev/vda /dev/sda");
    assert_ne!(rc, 0, "no disks expected");
    // The modules are loaded anyway.
    g.sh("for m in virtio_pci virtio_blk virtio_scsi sd_mod sg; do [ -d /sys/module/$m ] || { echo missing $m; exit 1; }; done");
    assert!(g.is_running());
    let st = g.kill().expect("exit status");
    assert!(!st.success());
    assert!(g.wait_exit(Duration::from_secs(1)).is_some());
    assert!(g.try_run("true", Duration::from_secs(5)).is_err());
}

//! Several QEMU guests on one daemon, each with its blk (/dev/vda) and scsi (/dev/sda) device,
//! and the guest-side commands the PR tests use.

use std::path::{Path, PathBuf};

use super::daemon::TestDaemon;
use super::guest::{Guest, GuestOpts};

/// Boots `names` in parallel, each attached to both of its sockets.
pub fn boot(d: &TestDaemon, names: &[&'static str]) -> Vec<Guest> {
    boot_with(names, |n| (d.blk(n), d.scsi(n)))
}

/// Boots `names` in parallel; `sockets` gives each guest's (blk, scsi) socket.
pub fn boot_with(
    names: &[&'static str],
    sockets: impl Fn(&str) -> (PathBuf, PathBuf) + Sync,
) -> Vec<Guest> {
    std::thread::scope(|s| {
        let handles: Vec<_> = names
            .iter()
            .map(|&name| {
                let (blk, scsi) = sockets(name);
                s.spawn(move || boot_one(name, blk, scsi))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Boots one guest on its sockets and checks that both disks appeared.
pub fn boot_one(name: &'static str, blk: PathBuf, scsi: PathBuf) -> Guest {
    let mut o = GuestOpts::new(name);
    o.blk = Some(blk);
    o.scsi = Some(scsi);
    o.reconnect = true;
    o.allow_reboot = true;
    let g = Guest::boot(o);
    g.sh("ls /dev/vda /dev/sda");
    g
}

/// `sg_persist` exit status for RESERVATION CONFLICT.
pub const SG_RC: i32 = 24;

pub trait GuestPr {
    /// Drains pending unit attentions the way fence_scsi does (`sg_turs` until it passes).
    fn drain_ua(&self);
    /// Runs `sg_persist -n ARGS /dev/sda` after draining UAs; returns (exit status, output).
    fn pr(&self, args: &str) -> (i32, String);
    /// Like [`GuestPr::pr`], asserting success.
    fn pr_ok(&self, args: &str) -> String;
    /// One direct 4 KiB write of a recognisable block to `dev` at 4 KiB block `block`.
    fn dd_write(&self, dev: &str, block: u64) -> bool;
    /// One direct 4 KiB read from `dev`.
    fn dd_read(&self, dev: &str, block: u64) -> bool;
    /// How many RESERVATION CONFLICT statuses the guest kernel has logged ("reservation
    /// conflict", from the SCSI midlayer).
    fn conflicts(&self) -> usize;
    /// Asserts that [`GuestPr::dd_write`] of `block` fails, that the host `image` does not
    /// change there (the record is absent), and on a SCSI disk that the guest saw a RESERVATION
    /// CONFLICT (a blk IOERR says no more than "failed").
    #[track_caller]
    fn assert_write_refused(&self, dev: &str, block: u64, image: &Path, what: &str);
}

/// The 4 KiB that [`GuestPr::dd_write`] writes: `yes NAME-BLOCK`, cut.
pub fn dd_record(name: &str, block: u64) -> Vec<u8> {
    format!("{name}-{block}\n")
        .into_bytes()
        .into_iter()
        .cycle()
        .take(4096)
        .collect()
}

/// 4 KiB block `block` of the host image.
pub fn host_block(image: &Path, block: u64) -> Vec<u8> {
    super::image::image_bytes(image, block * 4096, 4096)
}

impl GuestPr for Guest {
    fn drain_ua(&self) {
        self.run("for i in 1 2 3 4 5 6 7 8; do sg_turs /dev/sda >/dev/null 2>&1 && break; done");
    }

    fn pr(&self, args: &str) -> (i32, String) {
        self.drain_ua();
        self.run(&format!("sg_persist -n {args} /dev/sda"))
    }

    fn pr_ok(&self, args: &str) -> String {
        let (rc, out) = self.pr(args);
        assert_eq!(rc, 0, "[{}] sg_persist {args} failed: {out}", self.name());
        out
    }

    fn dd_write(&self, dev: &str, block: u64) -> bool {
        let name = self.name().to_string();
        self.run(&format!(
            "yes {name}-{block} | head -c 4096 > /tmp/w && \
             dd if=/tmp/w of={dev} bs=4096 count=1 seek={block} oflag=direct 2>/dev/null"
        ))
        .0 == 0
    }

    fn conflicts(&self) -> usize {
        self.sh("dmesg")
            .lines()
            .filter(|l| l.contains("reservation conflict"))
            .count()
    }

    #[track_caller]
    fn assert_write_refused(&self, dev: &str, block: u64, image: &Path, what: &str) {
        let scsi = dev.contains("sd");
        let before = host_block(image, block);
        let conflicts = if scsi { self.conflicts() } else { 0 };
        assert!(
            !self.dd_write(dev, block),
            "[{}] {what}: the write succeeded",
            self.name()
        );
        let after = host_block(image, block);
        assert_eq!(after, before, "[{}] {what}: the image changed", self.name());
        assert_ne!(
            after,
            dd_record(self.name(), block),
            "[{}] {what}: the record is on the image",
            self.name()
        );
        if scsi {
            assert!(
                self.conflicts() > conflicts,
                "[{}] {what}: the failure was not a reservation conflict",
                self.name()
            );
        }
    }

    fn dd_read(&self, dev: &str, block: u64) -> bool {
        self.run(&format!(
            "dd if={dev} of=/dev/null bs=4096 count=1 skip={block} iflag=direct 2>/dev/null"
        ))
        .0 == 0
    }
}

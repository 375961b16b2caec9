//! `sharedisk ctl pr preempt --victim G [--by H]` through the daemon binary, for every class of
//! reservation type: after exit 0 the victim's writes fail on both devices (a raw
//! vhost-user-blk frontend and the SCSI client) and never reach the image; a preempt that would
//! leave the victim able to write is refused with exit 24 and changes nothing.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;

use common::ctl::{ctl, ctl_json};
use common::process::DaemonProcess;
use common::scsi_client::*;
use common::vu_frontend::{VuFrontend, VIRTIO_BLK_T_OUT};

const VICTIM_KEY: u64 = 0x11;
const SURVIVOR_KEY: u64 = 0x22;
/// The sector both guests write to; the victim's pattern must never land there once fenced.
const SECTOR: u64 = 2048;

/// The daemon with `vm1` (the victim), `vm2` (a survivor) and `vm3` (never registered).
struct Lab {
    d: DaemonProcess,
    victim: ScsiClient,
    survivor: ScsiClient,
    victim_blk: VuFrontend,
}

impl Lab {
    fn start(dir: &Path) -> Lab {
        let d = DaemonProcess::start(dir, &["vm1", "vm2", "vm3"], "16M");
        let mut victim = ScsiClient::connect(&d.scsi("vm1"));
        let mut survivor = ScsiClient::connect(&d.scsi("vm2"));
        victim.drain_ua();
        survivor.drain_ua();
        let victim_blk = VuFrontend::connect(&d.blk("vm1"), 1, 128);
        Lab {
            d,
            victim,
            survivor,
            victim_blk,
        }
    }

    /// A fresh PR state: both registered, `holder` (if any) reserving `typ`.
    fn setup(&mut self, holder: Option<&str>, typ: u8) {
        ctl(&self.d.control(), &["pr", "clear", "--yes"]).ok();
        self.victim.drain_ua();
        self.survivor.drain_ua();
        assert!(self
            .victim
            .prout(SA_REGISTER, 0, 0, VICTIM_KEY, false)
            .is_good());
        assert!(self
            .survivor
            .prout(SA_REGISTER, 0, 0, SURVIVOR_KEY, false)
            .is_good());
        match holder {
            Some("vm1") => assert!(self
                .victim
                .prout(SA_RESERVE, typ, VICTIM_KEY, 0, false)
                .is_good()),
            Some(_) => assert!(self
                .survivor
                .prout(SA_RESERVE, typ, SURVIVOR_KEY, 0, false)
                .is_good()),
            None => {}
        }
        self.survivor.drain_ua();
    }

    fn preempt(&self, args: &[&str]) -> common::ctl::CtlOutput {
        let mut all = vec!["pr", "preempt", "--victim", "vm1"];
        all.extend_from_slice(args);
        all.push("--yes");
        ctl(&self.d.control(), &all)
    }

    fn image_sector(&self) -> Vec<u8> {
        let f = std::fs::File::open(self.d.dir.join("disk.img")).unwrap();
        let mut b = vec![0; 512];
        f.read_exact_at(&mut b, SECTOR * 512).unwrap();
        b
    }

    /// The victim is fenced: its writes fail on blk (IOERR) and scsi (RESERVATION CONFLICT)
    /// and the image keeps what was there.
    fn assert_fenced(&mut self, what: &str) {
        let before = self.image_sector();
        let (st, _) = self
            .victim_blk
            .blk_request(VIRTIO_BLK_T_OUT, SECTOR, &[0xbb; 512], 0);
        assert_eq!(st, 1, "{what}: the victim's blk write is IOERR");
        self.victim.drain_ua();
        let r = self.victim.write16(SECTOR, &[0xcc; 512]);
        assert_eq!(
            r.status, RESERVATION_CONFLICT,
            "{what}: the victim's scsi write"
        );
        assert_eq!(
            self.image_sector(),
            before,
            "{what}: a fenced write reached the image"
        );
        self.survivor.drain_ua();
        assert!(
            self.survivor.write16(SECTOR, &[0xdd; 512]).is_good(),
            "{what}: the survivor writes"
        );
    }

    /// The victim still writes on both devices (before a fence, or after a refused one).
    fn assert_writes(&mut self, what: &str) {
        let (st, _) = self
            .victim_blk
            .blk_request(VIRTIO_BLK_T_OUT, SECTOR, &[0xbb; 512], 0);
        assert_eq!(st, 0, "{what}: the victim's blk write");
        self.victim.drain_ua();
        assert!(
            self.victim.write16(SECTOR, &[0xcc; 512]).is_good(),
            "{what}: scsi write"
        );
        assert_eq!(self.image_sector(), vec![0xcc; 512], "{what}");
    }
}

/// Types 1, 3, 5, 6 held by the victim: preempting it alone would release the reservation, so
/// it is refused; `--by vm2` makes vm2 take it over with the same type, and the victim is
/// fenced.
#[test]
fn a_single_holder_is_fenced_by_a_survivor_that_takes_its_reservation_over() {
    let dir = tempfile::tempdir().unwrap();
    let mut lab = Lab::start(dir.path());
    for typ in [1u8, 3, 5, 6] {
        lab.setup(Some("vm1"), typ);
        let gen = lab.survivor.generation();
        let alone = lab.preempt(&["--abort"]);
        assert_eq!(alone.code, 24, "type {typ}: {}", alone.stderr);
        assert!(
            alone.stderr.contains("--by"),
            "type {typ}: {}",
            alone.stderr
        );
        assert_eq!(
            lab.survivor.generation(),
            gen,
            "type {typ}: a refusal changed nothing"
        );
        lab.assert_writes(&format!("type {typ}, refused"));

        let pr = ctl_json(
            &lab.d.control(),
            &[
                "pr", "preempt", "--victim", "vm1", "--by", "vm2", "--abort", "--yes",
            ],
        );
        assert_eq!(pr["generation"], gen + 1, "type {typ}");
        assert_eq!(pr["reservation"]["holder"], "vm2", "type {typ}");
        assert_eq!(pr["reservation"]["type"], typ, "type {typ}");
        assert_eq!(pr["registrations"].as_array().unwrap().len(), 1);
        assert_eq!(lab.victim.drain_ua(), vec![(6, 0x2a, 5)], "type {typ}");
        lab.assert_fenced(&format!("type {typ}, by vm2"));
    }
    lab.d.assert_no_panic();
}

/// Types 7 and 8 (every registrant a holder), and any type held by another: the victim's
/// registration alone goes and it is fenced, with or without `--by`.
#[test]
fn an_all_registrants_holder_or_a_mere_registrant_is_fenced_with_or_without_by() {
    let dir = tempfile::tempdir().unwrap();
    let mut lab = Lab::start(dir.path());
    for (holder, typ, by) in [
        ("vm1", 7u8, None),
        ("vm1", 8, Some("vm2")),
        ("vm2", 1, None),
        ("vm2", 3, Some("vm2")),
        ("vm2", 5, None),
        ("vm2", 6, Some("vm2")),
        ("vm2", 7, None),
        ("vm2", 8, None),
    ] {
        lab.setup(Some(holder), typ);
        let what = format!("type {typ} held by {holder}, by {by:?}");
        let args: Vec<&str> = by.map_or(vec![], |b| vec!["--by", b]);
        let out = lab.preempt(&args);
        assert_eq!(out.code, 0, "{what}: {}", out.stderr);
        lab.assert_fenced(&what);
    }
    lab.d.assert_no_panic();
}

/// No reservation: an unregistered victim writes freely, so there is no fence to give; a
/// survivor that is not registered, or the victim itself, cannot preempt. All exit 24, and
/// the victim's registration stays.
#[test]
fn a_preempt_that_would_not_fence_is_refused_with_exit_24() {
    let dir = tempfile::tempdir().unwrap();
    let mut lab = Lab::start(dir.path());
    lab.setup(None, 0);
    for (args, says) in [
        (vec![], "no reservation"),
        (vec!["--by", "vm2"], "no reservation"),
    ] {
        let out = lab.preempt(&args);
        assert_eq!(out.code, 24, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
    }
    lab.setup(Some("vm1"), 5);
    for (args, says) in [
        (vec!["--by", "vm3"], "vm3 is not registered"),
        (vec!["--by", "vm1"], "--by names the victim"),
    ] {
        let out = lab.preempt(&args);
        assert_eq!(out.code, 24, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
    }
    let unknown = lab.preempt(&["--by", "vm9"]);
    assert_eq!(unknown.code, 1, "{}", unknown.stderr);
    let (_, keys) = lab.survivor.read_keys();
    assert!(keys.contains(&VICTIM_KEY), "{keys:x?}");
    lab.assert_writes("after the refusals");
    lab.d.assert_no_panic();
}

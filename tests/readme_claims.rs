//! Claims of the README that only the daemon's own behaviour can back, checked through the raw
//! frontends (so that no client library refuses anything on the daemon's behalf) and on the host
//! image: `--read-only`, the write cache (write-through really is durable, on both devices, for
//! every guest, across reconnects), and zeroing that keeps the blocks allocated.

mod common;

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use common::daemon::{TestDaemon, IMAGE_SIZE};
use common::image::{image_bytes, pattern};
use common::scsi_client::*;
use common::vu_frontend::*;
use sharedisk::testhooks::probe::{Event, Op};

const WRITE_PROTECTED: SenseTriple = (0x07, 0x27, 0x00);
const MODE_PARAMETERS_CHANGED: SenseTriple = (0x06, 0x2a, 0x01);
/// virtio-blk feature bits (virtio 1.2 §5.2.3).
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_DISCARD: u64 = 1 << 13;
const VIRTIO_BLK_F_WRITE_ZEROES: u64 = 1 << 14;
/// Offset of `writeback` in virtio_blk_config.
const WRITEBACK: u32 = 32;

/// 512-byte blocks allocated to the image file.
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks()
}

fn unmap(c: &mut ScsiClient, lba: u64, blocks: u32) -> ScsiResult {
    let mut list = vec![0u8; 24];
    list[0..2].copy_from_slice(&22u16.to_be_bytes());
    list[2..4].copy_from_slice(&16u16.to_be_bytes());
    list[8..16].copy_from_slice(&lba.to_be_bytes());
    list[16..20].copy_from_slice(&blocks.to_be_bytes());
    c.cmd(&[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &list, 0)
}

fn write_same(c: &mut ScsiClient, lba: u64, blocks: u32, unmap: bool, block: &[u8]) -> ScsiResult {
    c.cmd(&write_same16_cdb(lba, blocks, unmap, false), block, 0)
}

fn vpd(c: &mut ScsiClient, page: u8) -> Vec<u8> {
    let r = c.cmd(&[0x12, 1, page, 0, 255, 0], &[], 255);
    assert!(r.is_good(), "VPD {page:#x}: {r:?}");
    r.data
}

/// One command of a write-cache case, sent through the scsi client or the blk frontend.
type Step = Box<dyn Fn(&mut ScsiClient, &mut VuFrontend)>;

/// The operations of `events`, for comparing with what a command must have done.
fn ops(events: &[Event]) -> Vec<Op> {
    events.iter().map(|e| e.op).collect()
}

#[test]
fn read_only_refuses_every_change_on_both_devices_and_says_so() {
    let d = TestDaemon::start_with(&["vm1"], |c| {
        c.read_only = true;
        let f = std::fs::File::create(&c.image).unwrap();
        f.set_len(IMAGE_SIZE).unwrap();
        f.write_all_at(&pattern(3, 1 << 20), 0).unwrap();
    });
    let original = pattern(3, 1 << 20);

    // SCSI: every kind of change is 07/27/00 DATA PROTECT, WRITE PROTECTED.
    let mut c = ScsiClient::connect(&d.scsi("vm1"));
    c.drain_ua();
    check(&c.write16(0, &[0x11; 4096]), WRITE_PROTECTED, "WRITE(16)");
    check(
        &write_same(&mut c, 0, 8, false, &[0x22; 512]),
        WRITE_PROTECTED,
        "WRITE SAME(16)",
    );
    check(
        &write_same(&mut c, 0, 8, true, &[0; 512]),
        WRITE_PROTECTED,
        "WRITE SAME(16) UNMAP",
    );
    check(&unmap(&mut c, 0, 8), WRITE_PROTECTED, "UNMAP");
    // MODE SENSE: WP in the device-specific parameter; no logical block provisioning.
    let r = c.cmd(&[0x1a, 0x08, 0x3f, 0, 255, 0], &[], 255);
    assert!(r.is_good(), "{r:?}");
    assert_eq!(r.data[2] & 0x80, 0x80, "MODE SENSE WP");
    assert_eq!(vpd(&mut c, 0xb2)[5] & 0xe0, 0, "LBPU/LBPWS/LBPWS10 clear");
    assert_eq!(&vpd(&mut c, 0xb0)[20..28], &[0; 8], "no UNMAP limits");
    let r = c.read16(0, 8);
    assert!(r.is_good());
    assert_eq!(r.data, original[..4096]);

    // blk: RO is offered, and the daemon itself refuses OUT, DISCARD and WRITE_ZEROES (the raw
    // frontend sends them anyway).
    let mut fe = VuFrontend::connect(&d.blk("vm1"), 1, 128);
    let features = fe.acked_features();
    assert_ne!(features & VIRTIO_BLK_F_RO, 0, "VIRTIO_BLK_F_RO");
    assert_eq!(
        features & (VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES),
        0
    );
    let (s, _) = fe.blk_request(VIRTIO_BLK_T_OUT, 0, &[0x44; 4096], 0);
    assert_eq!(s, VIRTIO_BLK_S_IOERR, "OUT");
    for (t, flags) in [
        (VIRTIO_BLK_T_DISCARD, 0),
        (VIRTIO_BLK_T_WRITE_ZEROES, 0),
        (
            VIRTIO_BLK_T_WRITE_ZEROES,
            VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
        ),
    ] {
        let (s, _) = fe.blk_request(t, 0, &dwz_segment(0, 8, flags), 0);
        assert_eq!(s, VIRTIO_BLK_S_IOERR, "type {t} flags {flags}");
    }
    assert_eq!(fe.blk_read(0, 4096), original[..4096]);
    assert_eq!(
        image_bytes(d.image(), 0, 1 << 20),
        original,
        "the image is intact"
    );
}

#[test]
fn the_write_cache_is_one_lu_setting_and_write_through_is_durable() {
    let d = TestDaemon::start_probed(&["vm1", "vm2"], |_| {});
    let probe = d.probe();
    let mut a = ScsiClient::connect(&d.scsi("vm1"));
    let mut b = ScsiClient::connect(&d.scsi("vm2"));
    a.drain_ua();
    b.drain_ua();
    let mut fe = VuFrontend::connect(&d.blk("vm2"), 1, 128);
    assert!(a.wce() && b.wce());
    assert_eq!(fe.get_config(WRITEBACK, 1), [1]);

    // Write-back: plain writes are not durable, FUA and the flush commands are.
    probe.clear();
    assert!(a.write16(0, &[1; 4096]).is_good());
    let mut fua = write16_cdb(8, 8);
    fua[1] |= 0x08;
    assert!(a.cmd(&fua, &[2; 4096], 0).is_good());
    assert!(a.cmd(&[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0).is_good());
    fe.blk_write(16, &[3; 4096]);
    assert_eq!(
        fe.blk_request(VIRTIO_BLK_T_FLUSH, 0, &[], 0).0,
        VIRTIO_BLK_S_OK
    );
    assert_eq!(
        ops(&probe.events()),
        [
            Op::Write { durable: false },
            Op::Write { durable: true },
            Op::Flush,
            Op::Write { durable: false },
            Op::Flush
        ]
    );

    // MODE SELECT WCE=0 from vm1: flushes, is seen by every device and guest, and tells vm2.
    probe.clear();
    assert!(a.mode_select_wce(false).is_good());
    assert_eq!(ops(&probe.events()), [Op::Flush]);
    assert!(!a.wce(), "vm1 MODE SENSE");
    assert_eq!(fe.get_config(WRITEBACK, 1), [0], "vm2's blk config");
    check(&b.tur(), MODE_PARAMETERS_CHANGED, "vm2 is told");
    assert!(!b.wce(), "vm2 MODE SENSE");
    assert!(a.tur().is_good(), "vm1 made the change: no UA");
    // Setting it to what it is already changes nothing and tells no one.
    assert!(a.mode_select_wce(false).is_good());
    assert!(b.tur().is_good());

    // Write-through: every write is durable, every zeroing and unmap is followed by a flush
    // before it completes, on both devices.
    let block = [0x5a; 512];
    let cases: Vec<(&str, Step, Vec<Op>)> = vec![
        (
            "WRITE(16)",
            Box::new(|a, _| assert!(a.write16(0, &[4; 4096]).is_good())),
            vec![Op::Write { durable: true }],
        ),
        (
            "WRITE SAME(16) with a pattern",
            Box::new(move |a, _| assert!(write_same(a, 0, 16, false, &block).is_good())),
            vec![Op::Write { durable: true }],
        ),
        (
            "WRITE SAME(16) of zeroes, UNMAP=0",
            Box::new(|a, _| assert!(write_same(a, 0, 16, false, &[0; 512]).is_good())),
            vec![Op::Zeroes { unmap: false }, Op::Flush],
        ),
        (
            "WRITE SAME(16) of zeroes, UNMAP=1",
            Box::new(|a, _| assert!(write_same(a, 0, 16, true, &[0; 512]).is_good())),
            vec![Op::Zeroes { unmap: true }, Op::Flush],
        ),
        (
            "UNMAP",
            Box::new(|a, _| assert!(unmap(a, 0, 16).is_good())),
            vec![Op::Discard, Op::Flush],
        ),
        (
            "blk OUT",
            Box::new(|_, fe| fe.blk_write(0, &[5; 4096])),
            vec![Op::Write { durable: true }],
        ),
        (
            "blk DISCARD",
            Box::new(|_, fe| {
                let seg = dwz_segment(0, 16, 0);
                assert_eq!(fe.blk_request(VIRTIO_BLK_T_DISCARD, 0, &seg, 0).0, 0);
            }),
            vec![Op::Discard, Op::Flush],
        ),
        (
            "blk WRITE_ZEROES",
            Box::new(|_, fe| {
                let seg = dwz_segment(0, 16, 0);
                assert_eq!(fe.blk_request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &seg, 0).0, 0);
            }),
            vec![Op::Zeroes { unmap: false }, Op::Flush],
        ),
    ];
    for (what, run, want) in &cases {
        probe.clear();
        run(&mut a, &mut fe);
        let events = probe.events();
        assert_eq!(&ops(&events), want, "{what}");
        // The flush started after the change ended (the events are recorded in order of end).
        if let [change, flush] = &events[..] {
            assert!(flush.start >= change.end, "{what}: flush after the change");
        }
    }

    // A reconnecting blk driver finds the LU as it was left: write-through.
    drop(fe);
    let mut fe = VuFrontend::connect(&d.blk("vm2"), 1, 128);
    assert_eq!(fe.get_config(WRITEBACK, 1), [0], "after a reconnect");
    probe.clear();
    fe.blk_write(0, &[6; 4096]);
    assert_eq!(ops(&probe.events()), [Op::Write { durable: true }]);

    // The blk driver turns the cache back on: for everyone, and the SCSI initiators are told.
    fe.set_config(WRITEBACK, &[1]);
    assert_eq!(fe.get_config(WRITEBACK, 1), [1]);
    check(&a.tur(), MODE_PARAMETERS_CHANGED, "vm1 is told");
    assert!(a.wce(), "vm1 MODE SENSE after the blk change");
    assert!(b.tur().is_good(), "vm2 made the change: no UA");
    probe.clear();
    assert!(a.write16(0, &[7; 4096]).is_good());
    assert_eq!(ops(&probe.events()), [Op::Write { durable: false }]);
}

#[test]
fn zeroing_without_unmap_keeps_the_blocks_allocated() {
    let d = TestDaemon::start(&["vm1"]);
    let img = d.image().to_path_buf();
    let mut c = ScsiClient::connect(&d.scsi("vm1"));
    c.drain_ua();
    let mut fe = VuFrontend::connect(&d.blk("vm1"), 1, 128);
    // 4 MiB written, then made durable so that the allocation is settled.
    for lba in (0..8192u64).step_by(2048) {
        assert!(c.write16(lba, &pattern(lba as u8, 1 << 20)).is_good());
    }
    assert!(c.cmd(&[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0).is_good());
    let full = allocated(&img);
    assert!(full >= 8192, "4 MiB allocated: {full} blocks");

    // WRITE SAME(16) of zeroes with UNMAP=0 over the first 2 MiB, and blk WRITE_ZEROES without
    // the UNMAP flag over the next 1 MiB: zeroes, and still allocated.
    assert!(write_same(&mut c, 0, 4096, false, &[0; 512]).is_good());
    let seg = dwz_segment(4096, 2048, 0);
    assert_eq!(fe.blk_request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &seg, 0).0, 0);
    assert_eq!(image_bytes(&img, 0, 3 << 20), vec![0; 3 << 20]);
    assert_eq!(allocated(&img), full, "zeroing without UNMAP deallocated");

    // With UNMAP it deallocates, and still reads back as zeroes.
    assert!(write_same(&mut c, 0, 2048, true, &[0; 512]).is_good());
    let after_ws = allocated(&img);
    assert!(after_ws < full, "WRITE SAME with UNMAP deallocates");
    let seg = dwz_segment(2048, 2048, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
    assert_eq!(fe.blk_request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &seg, 0).0, 0);
    assert!(
        allocated(&img) < after_ws,
        "WRITE_ZEROES with UNMAP deallocates"
    );
    assert_eq!(image_bytes(&img, 0, 3 << 20), vec![0; 3 << 20]);
    assert_eq!(
        image_bytes(&img, 3 << 20, 1 << 20),
        pattern(6144u64 as u8, 1 << 20)
    );
}

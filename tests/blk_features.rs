//! virtio-blk honours what each driver negotiated (virtio 1.2 §5.2.5.2, §5.2.6.2), and a guest
//! that may not write cannot change the LU's write cache through `writeback` either. Raw
//! vhost-user-blk frontends that acknowledge only some features, the SCSI client beside them;
//! durability is seen from the host's side of the image interface (the test-hooks probe).

mod common;

use common::ctl::ctl;
use common::daemon::TestDaemon;
use common::process::DaemonProcess;
use common::scsi_client::*;
use common::vu_frontend::*;
use sharedisk::testhooks::probe::{Event, Op};

/// virtio-blk feature bits (virtio 1.2 §5.2.3).
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const VIRTIO_BLK_F_CONFIG_WCE: u64 = 1 << 11;
/// Offset of `writeback` in virtio_blk_config.
const WRITEBACK: u32 = 32;
const MODE_PARAMETERS_CHANGED: SenseTriple = (0x06, 0x2a, 0x01);

fn ops(events: &[Event]) -> Vec<Op> {
    events.iter().map(|e| e.op).collect()
}

/// A driver without FLUSH (with or without CONFIG_WCE) reads `writeback` 0 and each of its
/// writes is stable on completion, while the LU's cache stays on for a driver that can flush,
/// connected at the same time; its writes to `writeback` change nothing.
#[test]
fn a_driver_without_flush_sees_write_through_and_its_writes_are_stable() {
    let d = TestDaemon::start_probed(&["vm1", "vm2", "vm3"], |_| {});
    let probe = d.probe();
    let mut scsi = ScsiClient::connect(&d.scsi("vm3"));
    scsi.drain_ua();
    assert!(scsi.wce(), "the LU starts write-back");
    let mut flushing = VuFrontend::connect(&d.blk("vm3"), 1, 128);
    for (guest, refused) in [
        ("vm1", VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_CONFIG_WCE),
        ("vm2", VIRTIO_BLK_F_FLUSH),
    ] {
        let what = format!("{guest}, refusing {refused:#x}");
        let mut fe = VuFrontend::connect_refusing(&d.blk(guest), 1, 128, refused);
        assert_eq!(fe.acked_features() & refused, 0, "{what}");
        assert_eq!(fe.get_config(WRITEBACK, 1), [0], "{what}: writeback");

        probe.clear();
        fe.blk_write(0, &[1; 4096]);
        assert_eq!(
            ops(&probe.events()),
            [Op::Write { durable: true }],
            "{what}"
        );
        probe.clear();
        let seg = dwz_segment(0, 8, 0);
        let (st, _) = fe.blk_request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &seg, 0);
        assert_eq!(st, VIRTIO_BLK_S_OK, "{what}");
        let events = probe.events();
        assert_eq!(
            ops(&events),
            [Op::Zeroes { unmap: false }, Op::Flush],
            "{what}"
        );
        assert!(
            events[1].start >= events[0].end,
            "{what}: flushed after the zeroing"
        );

        // It cannot flush: its writes to `writeback` are ignored, the LU keeps its cache.
        fe.set_config(WRITEBACK, &[0]);
        assert!(scsi.tur().is_good(), "{what}: nobody is told of a change");
        assert!(scsi.wce(), "{what}: the LU's cache stays on");

        // The driver that negotiated FLUSH still sees and uses the LU's write-back cache.
        assert_eq!(flushing.get_config(WRITEBACK, 1), [1], "{what}");
        probe.clear();
        flushing.blk_write(8, &[2; 4096]);
        assert_eq!(
            ops(&probe.events()),
            [Op::Write { durable: false }],
            "{what}"
        );
    }
}

/// A guest fenced by a Write Exclusive – registrants only reservation writes `writeback` 0: the
/// write is ignored and logged, the holder gets no 2A/01 and WCE stays on; the holder's own
/// blk driver still changes it.
#[test]
fn a_fenced_guest_cannot_change_the_write_cache_through_writeback() {
    let dir = tempfile::tempdir().unwrap();
    let d = DaemonProcess::start(dir.path(), &["vm1", "vm2"], "16M");
    let mut holder = ScsiClient::connect(&d.scsi("vm1"));
    holder.drain_ua();
    assert!(holder.prout(SA_REGISTER, 0, 0, 0x11, false).is_good());
    assert!(holder.prout(SA_RESERVE, 5, 0x11, 0, false).is_good());
    let mut holder_blk = VuFrontend::connect(&d.blk("vm1"), 1, 128);
    let mut fenced = VuFrontend::connect(&d.blk("vm2"), 1, 128);
    assert!(holder.wce());
    let (st, _) = fenced.blk_request(VIRTIO_BLK_T_OUT, 0, &[3; 512], 0);
    assert_eq!(st, VIRTIO_BLK_S_IOERR, "vm2 is fenced");

    fenced.set_config(WRITEBACK, &[0]);
    assert!(holder.tur().is_good(), "the holder gets no 2A/01");
    assert!(holder.wce(), "WCE stays on");
    assert_eq!(holder_blk.get_config(WRITEBACK, 1), [1]);
    assert_eq!(fenced.get_config(WRITEBACK, 1), [1]);
    let log = d.log();
    assert!(
        log.contains(
            "vm2: blk: writeback 0 ignored: the reservation does not let this guest write"
        ),
        "{log}"
    );

    // The same write from the holder's blk driver changes it (the check above can fail).
    holder_blk.set_config(WRITEBACK, &[0]);
    assert!(!holder.wce(), "the holder turned the cache off");
    assert_eq!(fenced.get_config(WRITEBACK, 1), [0]);
    // Once the reservation is gone, vm2 may write, and may change the cache again.
    ctl(&d.control(), &["pr", "clear", "--yes"]).ok();
    holder.drain_ua();
    fenced.set_config(WRITEBACK, &[1]);
    check(
        &holder.tur(),
        MODE_PARAMETERS_CHANGED,
        "vm1 is told of vm2's change",
    );
    assert!(holder.wce());
    d.assert_no_panic();
}

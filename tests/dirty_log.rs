//! Dirty page logging for live migration (vhost-user "Migration"), through the daemon binary and
//! a raw frontend that does what QEMU does when a migration starts: SET_LOG_BASE with a shared
//! bitmap, then SET_FEATURES with `VHOST_F_LOG_ALL`. Every guest page the daemon writes must then
//! be marked: the used ring (vm-memory marks it) and every data-in buffer, which the image fills
//! through raw pointers (readv, io_uring, the bounce copy under `--direct`) and the drain marks.
//! `SHAREDISK_FAILPOINT=data-in-unmarked` leaves the data-in marking out: these tests then fail.
//!
//! `dirty_log_cost` prints what logging costs the blk data path (docs/benchmarks.md).

mod common;

use std::time::{Duration, Instant};

use common::process::DaemonProcess;
use common::scsi_client::{read16_cdb, ScsiClient, LUN0, REQUEST_Q};
use common::vu_frontend::{
    blk_header, Desc, DirtyLogArea, VuFrontend, MEM_BASE, TIMEOUT, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN,
};

/// One data-in buffer: 64 KiB, 16 pages.
const DATA: usize = 64 << 10;

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i % 241) as u8))
        .collect()
}

/// A blk read of `len` bytes at `sector` into the guest buffer at `gpa`, in `pieces`
/// descriptors; returns the status.
fn blk_read_into(fe: &mut VuFrontend, sector: u64, gpa: u64, len: usize, pieces: usize) -> u8 {
    let mark = fe.alloc_mark();
    let hdr = fe.alloc(16);
    fe.write_mem(hdr, &blk_header(VIRTIO_BLK_T_IN, sector));
    let mut descs = vec![Desc::r(hdr, 16)];
    let piece = len / pieces;
    for i in 0..pieces {
        let n = if i + 1 == pieces {
            len - piece * i
        } else {
            piece
        };
        descs.push(Desc::w(gpa + (piece * i) as u64, n as u32));
    }
    let status = fe.alloc(1);
    fe.write_mem(status, &[0xff]);
    descs.push(Desc::w(status, 1));
    let head = fe.submit(0, &descs);
    let (id, _) = fe.wait_used(0, TIMEOUT).expect("blk read completed");
    assert_eq!(id, head);
    let status = fe.read_mem(status, 1)[0];
    fe.release(mark);
    status
}

/// Asserts that every page of `[gpa, gpa + len)` is marked in `log`.
fn assert_marked(log: &DirtyLogArea, gpa: u64, len: usize, what: &str) {
    let (marked, pages) = log.dirty_in(gpa, len as u64);
    assert_eq!(
        marked, pages,
        "{what}: {marked} of the data-in buffer's {pages} pages are marked in the dirty log"
    );
}

/// Reads through blk with logging on, for one set of `serve` flags: the data arrives, and its
/// pages and the used ring's page are marked; after SET_FEATURES without LOG_ALL, a read marks
/// no data-in page.
fn blk_marks_data_in(flags: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let d = DaemonProcess::start_args(dir.path(), &["vm1"], "64M", flags);
    let mut fe = VuFrontend::connect(&d.blk("vm1"), 1, 128);
    let data = pattern(7, DATA);
    fe.blk_write(2048, &data);
    let log = fe.start_dirty_log();
    for (pieces, misalign) in [(1, 0u64), (4, 0), (3, 1)] {
        log.clear();
        let gpa = fe.alloc(DATA + 1) + misalign;
        let status = blk_read_into(&mut fe, 2048, gpa, DATA, pieces);
        assert_eq!(status, VIRTIO_BLK_S_OK, "{flags:?}: read status");
        assert_eq!(fe.read_mem(gpa, DATA), data, "{flags:?}: data read");
        let what = format!("blk {flags:?}, {pieces} descriptor(s), offset {misalign}");
        assert_marked(&log, gpa, DATA, &what);
        assert!(
            log.dirty(MEM_BASE),
            "{what}: the used ring's page is marked"
        );
        fe.reset();
    }
    // QEMU ends logging with SET_FEATURES without LOG_ALL (a completed or cancelled migration).
    fe.set_log_all(false);
    log.clear();
    let gpa = fe.alloc(DATA);
    assert_eq!(blk_read_into(&mut fe, 2048, gpa, DATA, 1), VIRTIO_BLK_S_OK);
    assert_eq!(fe.read_mem(gpa, DATA), data);
    let (marked, _) = log.dirty_in(gpa + 4096, (DATA - 8192) as u64);
    assert_eq!(
        marked, 0,
        "{flags:?}: data-in pages marked after logging ended"
    );
    d.assert_no_panic();
}

#[test]
fn blk_reads_are_marked_in_the_dirty_log_on_every_io_path() {
    blk_marks_data_in(&["--aio", "sync"]);
    blk_marks_data_in(&["--aio", "io_uring"]);
    blk_marks_data_in(&["--direct", "--aio", "io_uring"]);
    blk_marks_data_in(&["--direct", "--aio", "sync"]);
}

#[test]
fn scsi_reads_are_marked_in_the_dirty_log() {
    let dir = tempfile::tempdir().unwrap();
    let d = DaemonProcess::start_args(dir.path(), &["vm1"], "64M", &["--direct"]);
    let mut c = ScsiClient::connect(&d.scsi("vm1"));
    // Clear the power-on unit attention first.
    c.drain_ua();
    let data = pattern(3, DATA);
    let mut blk = VuFrontend::connect(&d.blk("vm1"), 1, 128);
    blk.blk_write(4096, &data);
    let log = c.fe.start_dirty_log();
    log.clear();
    c.fe.reset();
    let p = c.submit(
        &LUN0,
        &read16_cdb(4096, (DATA / 512) as u32),
        &[],
        DATA,
        true,
    );
    let r = c.finish(&p, TIMEOUT).expect("READ(16) completed");
    assert!(r.is_good(), "READ(16): {r:?}");
    assert_eq!(r.data, data, "READ(16) data");
    assert_marked(&log, p.data_in, DATA, "scsi READ(16)");
    let used_page = MEM_BASE + (REQUEST_Q as u64) * (32 << 10);
    assert!(
        log.dirty(used_page),
        "the request queue's used ring is marked"
    );
    d.assert_no_panic();
}

/// Reads of `len` bytes for `dur`, queue depth 1; returns reads per second.
fn reads_per_second(fe: &mut VuFrontend, len: usize, dur: Duration, expect: &[u8]) -> f64 {
    let gpa = fe.alloc(len);
    let start = Instant::now();
    let mut n = 0u64;
    let mut at = 0;
    while start.elapsed() < dur {
        let sector = (n % 64) * (len as u64 / 512);
        assert_eq!(blk_read_into(fe, sector, gpa, len, 1), VIRTIO_BLK_S_OK);
        at = (sector as usize * 512) % DATA;
        n += 1;
    }
    assert_eq!(&fe.read_mem(gpa, len)[..], &expect[at..at + len]);
    n as f64 / start.elapsed().as_secs_f64()
}

/// What dirty logging costs the blk data path: 4 KiB and 64 KiB reads at queue depth 1 from the
/// page cache, logging off, on, and off again (the mean of the two). Printed, not asserted.
#[test]
fn dirty_log_cost() {
    let dir = tempfile::tempdir().unwrap();
    let d = DaemonProcess::start_args(dir.path(), &["vm1"], "64M", &["--aio", "io_uring"]);
    let mut fe = VuFrontend::connect(&d.blk("vm1"), 1, 128);
    let data = pattern(9, DATA);
    for i in 0..64u64 {
        fe.blk_write(i * (DATA as u64 / 512), &data);
    }
    let dur = Duration::from_secs(1);
    let mut log = None;
    for len in [4096usize, DATA] {
        fe.reset();
        let off1 = reads_per_second(&mut fe, len, dur, &data);
        if log.is_none() {
            log = Some(fe.start_dirty_log());
        } else {
            fe.set_log_all(true);
        }
        fe.reset();
        let on = reads_per_second(&mut fe, len, dur, &data);
        fe.set_log_all(false);
        fe.reset();
        let off2 = reads_per_second(&mut fe, len, dur, &data);
        let off = (off1 + off2) / 2.0;
        println!(
            "dirty log cost, {} KiB reads, depth 1: off {off:.0}/s, on {on:.0}/s, on/off {:.3}",
            len / 1024,
            on / off
        );
    }
    d.assert_no_panic();
}

//! `max_io_ms` is a bound the daemon enforces (issue 19, finding 1 in cluster mode): an admitted
//! I/O that ends after the end of the read lease it was admitted under plus `max_io_ms` may have
//! reached the image after another host's PREEMPT returned GOOD (that host waits no longer for a
//! member that does not acknowledge). The daemon then stops admitting: an ERROR line in its log,
//! a fault of kind `io_overrun` in `ctl cluster status`, `sharedisk_cluster_io_overruns_total` and
//! `sharedisk_cluster_fault{kind="io_overrun"}` in its metrics; new writes fail, PR commands get
//! BUSY, until `sharedisk ctl cluster resume` (or a restart). Storage within the bound raises
//! nothing. Through a real etcd, a daemon process slowed by the write-delay test hook, and a
//! raw vhost-user-blk frontend.

mod common;

use std::time::{Duration, Instant};

use common::ctl::{ctl, ctl_json};
use common::etcd::{ClusterDaemon, Etcd, Timing};
use common::image::image_bytes;
use common::scsi_client::ScsiClient;
use common::vu_frontend::{blk_header, Desc, VuFrontend, TIMEOUT, VIRTIO_BLK_T_OUT};
use serde_json::Value;

/// Lease 1 s, D_io 200 ms: an admission's I/O must end within 0.87 to 1.2 s of it (renewed
/// every 333 ms).
const BOUNDED: Timing = Timing {
    lease_ms: 1000,
    max_io_ms: 200,
    hold_ms: 400,
    budget_ms: 5000,
};

/// One 4 KiB block tagged with `tag` and its sector.
fn block(tag: u8, sector: u64) -> Vec<u8> {
    let mut b = vec![tag; 4096];
    b[..8].copy_from_slice(&sector.to_le_bytes());
    b
}

/// Writes `sectors` (4 KiB each, tagged) with all of them in flight at once, and returns each
/// one's virtio-blk status in order.
fn write_in_flight(f: &mut VuFrontend, tag: u8, sectors: &[u64]) -> Vec<u8> {
    let mut pending = Vec::new();
    for &sector in sectors {
        let hdr = f.alloc(16);
        f.write_mem(hdr, &blk_header(VIRTIO_BLK_T_OUT, sector));
        let data = f.alloc(4096);
        f.write_mem(data, &block(tag, sector));
        let status = f.alloc(1);
        f.write_mem(status, &[0xff]);
        let head = f.submit(
            0,
            &[Desc::r(hdr, 16), Desc::r(data, 4096), Desc::w(status, 1)],
        );
        pending.push((head, status));
    }
    let mut done = Vec::new();
    let end = Instant::now() + TIMEOUT;
    while done.len() < pending.len() {
        let left = end.saturating_duration_since(Instant::now());
        let (id, _) = f.wait_used(0, left).expect("the writes complete");
        done.push(id);
    }
    pending
        .iter()
        .map(|&(_, status)| f.read_mem(status, 1)[0])
        .collect()
}

fn status(d: &ClusterDaemon) -> Value {
    ctl_json(&d.control(), &["cluster", "status"])
}

fn metrics(d: &ClusterDaemon) -> String {
    ctl(&d.control(), &["metrics"]).ok().stdout
}

/// The value of the metric line starting with `name` (labels included), if any.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A daemon whose writes take 1.5 s from admission (the hook): longer than any lease end +
/// max_io_ms it can be admitted under. The first overrunning write raises the fault.
#[test]
fn an_io_past_lease_end_plus_max_io_stops_admission_loudly() {
    common::daemon::init_logging();
    let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    let etcd = Etcd::start(dir.path());
    let d = ClusterDaemon::start(
        dir.path(),
        &etcd.endpoints(),
        "h1",
        &["v"],
        &BOUNDED,
        &[("SHAREDISK_TEST_WRITE_DELAY_MS", "1500")],
    );
    let before = status(&d);
    assert_eq!(before["fault"], Value::Null, "{before}");
    let mut f = VuFrontend::connect(&d.blk("v"), 1, 64);
    let statuses = write_in_flight(&mut f, b'A', &[8, 16]);
    assert_eq!(statuses[0], 0, "the first write was admitted and done");

    let s = status(&d);
    assert_eq!(
        s["fault"]["kind"], "io_overrun",
        "no fault after a write ended past lease end + max_io_ms: {s}"
    );
    assert!(
        s["fault"]["overrun_ms"].as_u64().is_some_and(|ms| ms > 0),
        "{s}"
    );
    assert_eq!(s["serving"], false, "{s}");
    let text = ctl(&d.control(), &["cluster", "status"]).ok().stdout;
    assert!(text.contains("NOT serving (I/O overrun"), "{text}");
    let m = metrics(&d);
    assert!(
        metric(&m, "sharedisk_cluster_io_overruns_total").is_some_and(|n| n >= 1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "sharedisk_cluster_fault{kind=\"io_overrun\"}"),
        Some(1.0),
        "{m}"
    );
    let log = d.log_text();
    assert!(
        log.lines().any(|l| l.contains("ERROR")
            && l.contains("ended")
            && l.contains("max_io_ms 200 ms")
            && l.contains("ctl cluster resume")),
        "no ERROR line telling the operator:\n{log}"
    );

    // Nothing is admitted now: a new write fails (the hold after the fault is over) and never
    // reaches the image; a PR command gets BUSY.
    std::thread::sleep(Duration::from_millis(BOUNDED.hold_ms));
    let start = Instant::now();
    assert_eq!(write_in_flight(&mut f, b'B', &[24]), vec![1], "IOERR");
    assert!(
        start.elapsed() < Duration::from_millis(1000),
        "failed at once"
    );
    assert_ne!(
        image_bytes(&dir.path().join("disk.img"), 24 * 512, 4096),
        block(b'B', 24),
        "a write reached the image after the fault"
    );
    let mut scsi = ScsiClient::connect(&d.scsi("v"));
    scsi.drain_ua();
    let r = scsi.prin(0, 256);
    assert_eq!(
        r.status, 0x08,
        "a PR IN gets BUSY while the fault is raised"
    );

    // `ctl cluster resume` once a renewal proved the daemon current; the bound still holds:
    // the next write is admitted, and overruns again.
    let end = Instant::now() + Duration::from_secs(3);
    loop {
        let out = ctl(&d.control(), &["cluster", "resume"]);
        if out.code == 0 {
            break;
        }
        assert!(Instant::now() < end, "resume refused: {}", out.stderr);
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = status(&d);
    assert_eq!(s["fault"], Value::Null, "{s}");
    assert_eq!(s["serving"], true, "{s}");
    assert_eq!(
        write_in_flight(&mut f, b'C', &[32]),
        vec![0],
        "admitted again"
    );
    let s = status(&d);
    assert_eq!(s["fault"]["kind"], "io_overrun", "{s}");
    let m = metrics(&d);
    assert!(
        metric(&m, "sharedisk_cluster_io_overruns_total").is_some_and(|n| n >= 2.0),
        "{m}"
    );
}

/// Storage within the bound: many writes in flight, each admission's I/O well before lease end
/// + max_io_ms: nothing is raised, everything is admitted.
#[test]
fn storage_within_max_io_raises_nothing() {
    common::daemon::init_logging();
    let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    let etcd = Etcd::start(dir.path());
    let d = ClusterDaemon::start(
        dir.path(),
        &etcd.endpoints(),
        "h1",
        &["v"],
        &BOUNDED,
        &[("SHAREDISK_TEST_WRITE_DELAY_MS", "20")],
    );
    let mut f = VuFrontend::connect(&d.blk("v"), 1, 64);
    let start = Instant::now();
    let mut rounds = 0;
    // Longer than a few leases, so that admissions straddle renewals.
    while start.elapsed() < Duration::from_millis(2500) {
        let sectors: Vec<u64> = (0..16).map(|i| 8 * (i + 16 * (rounds % 4))).collect();
        let statuses = write_in_flight(&mut f, b'D', &sectors);
        assert!(statuses.iter().all(|&s| s == 0), "{statuses:?}");
        rounds += 1;
    }
    let s = status(&d);
    assert_eq!(s["fault"], Value::Null, "{s}");
    assert_eq!(s["serving"], true, "{s}");
    let m = metrics(&d);
    assert_eq!(
        metric(&m, "sharedisk_cluster_io_overruns_total"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "sharedisk_cluster_fault{kind=\"io_overrun\"}"),
        Some(0.0),
        "{m}"
    );
    assert!(!d.log_text().contains("ERROR"), "{}", d.log_text());
}

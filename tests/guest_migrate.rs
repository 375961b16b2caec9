//! Live migration of a guest with both devices between two QEMUs on one host, served by one
//! daemon (issue 21, points 1, 3 and 5), on one boot shared by the cases:
//!
//! 1. a cancelled migration (`migrate_cancel`) and one whose destination QEMU is killed leave
//!    the guest running on the source, its disk and reservation as they were;
//! 2. an idle migration: the guest's registration and Write Exclusive reservation are unchanged
//!    (`sg_persist` in the guest), no unit attention (`sg_turs`), vm2 is still fenced on both
//!    devices;
//! 3. a migration under load: the guest writes sequence-numbered blocks with `dd oflag=direct`
//!    on both devices, reads two checksummed regions with `dd iflag=direct` in a loop and keeps
//!    dirtying memory; after the move no write failed, every acknowledged write is in the image
//!    and every read matched the disk. While QEMU holds the migration in its iterative phase
//!    (`migrate_under_load`), the guest reads a region into its page cache, so the daemon writes
//!    pages QEMU already sent; on the destination that region must still read back as on disk
//!    from the page cache. That is the dirty log's check: with
//!    `SHAREDISK_FAILPOINT=data-in-unmarked` those pages reach the destination stale.
//!
//! The guest kernel runs with `init_on_alloc=0` (see [`opts`]). Runs on QEMU 7.2 and 10.0;
//! about 20 to 40 s (one boot, four incoming QEMUs).
//! Prints the migration time and downtime (QMP `query-migrate`) idle and under load.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::{RngCore, SeedableRng};
use serde_json::json;

use common::guest::{Guest, GuestOpts};
use common::migration::{self, pr_state, vm1_opts, Vm};
use common::process::DaemonProcess;
use common::qmp::Qmp;
use common::scsi_client::ScsiClient;
use common::vu_frontend::VuFrontend;

const IMAGE: u64 = 160 << 20;
/// The writers' regions, in 4 KiB blocks: vda from 0, sda from `REGION_BLOCKS`.
const REGION_BLOCKS: u64 = 4096;
/// The two checksummed regions the reader loop alternates between, and the region read into
/// the page cache during the migration, in MiB.
const READ_A: u64 = 64;
const READ_B: u64 = 80;
const CACHED: u64 = 96;
const READ_MIB: u64 = 16;
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(180);
/// The bandwidth of the migrations (bytes/s).
const BANDWIDTH: u64 = 64 << 20;
/// The bandwidth while a migration is held in its iterative phase, from when it sent this much.
const HOLD_BANDWIDTH: u64 = 4 << 20;
const HOLD_AFTER: u64 = 80 << 20;

/// The guest's QEMU flags on `d`'s sockets, with QMP on `dir/<tag>-qmp.sock` and `extra`.
fn opts<'a>(d: &DaemonProcess, dir: &Path, tag: &str, extra: &[String]) -> GuestOpts<'a> {
    let mut o = vm1_opts((d.blk("vm1"), d.scsi("vm1")), dir, tag, extra);
    // The Debian kernel zeroes every page it allocates (init_on_alloc): that dirties a page
    // cache page in QEMU's own log just before the device fills it, which would hide a missing
    // data-in mark almost always. Real workloads do not have that luck (long-lived direct I/O
    // buffers, recycled pages): turn it off so that the check sees what the dirty log does.
    o.kernel_args = vec!["init_on_alloc=0".into()];
    o
}

/// Starts a destination QEMU on `d` waiting on `dir/<tag>-migrate.sock`; returns it and the URI.
fn destination(d: &DaemonProcess, dir: &Path, tag: &str) -> (Vm, String) {
    migration::destination(dir, tag, |incoming| opts(d, dir, tag, incoming))
}

/// The guest still does I/O on both devices.
fn io_works(g: &Guest, what: &str) {
    migration::io_works(g, 30000, what);
}

/// vm2, another initiator, is fenced on both devices by vm1's Write Exclusive reservation.
fn vm2_fenced(scsi: &mut ScsiClient, blk: &mut VuFrontend, what: &str) {
    migration::vm2_fenced(scsi, blk, 160000, what);
}

/// Migrates from `src` to `uri` at `bandwidth` bytes/s; returns `query-migrate` once
/// completed.
fn migrate(src: &Vm, uri: &str, bandwidth: u64) -> serde_json::Value {
    src.qmp.cmd(
        "migrate-set-parameters",
        json!({ "max-bandwidth": bandwidth }),
    );
    src.qmp.cmd("migrate", json!({ "uri": uri }));
    src.qmp
        .wait_migration(&["completed", "failed", "cancelled"], MIGRATION_TIMEOUT)
}

/// A failed migration left the guest running on `src` as it was.
fn still_on_the_source(src: &Vm, before: &str, what: &str) {
    assert_eq!(src.qmp.run_state(), "running", "{what}: the source runs");
    io_works(&src.guest, what);
    assert_eq!(
        pr_state(&src.guest),
        before,
        "{what}: registration and reservation"
    );
}

/// The image with random data in the three read regions; returns their MD5 sums as the guest's
/// `md5sum` prints them.
fn prepare_image(path: &Path) -> [String; 3] {
    let f = File::create(path).unwrap();
    f.set_len(IMAGE).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    let mut sums = [String::new(), String::new(), String::new()];
    for (i, mib) in [READ_A, READ_B, CACHED].into_iter().enumerate() {
        let mut data = vec![0u8; (READ_MIB << 20) as usize];
        rng.fill_bytes(&mut data);
        f.write_all_at(&data, mib << 20).unwrap();
        let out = std::process::Command::new("md5sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(&data)?;
                c.wait_with_output()
            })
            .expect("md5sum on the host");
        sums[i] = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string();
    }
    sums
}

/// The guest's loops: a writer per device (`/tmp/w.sh DEV BASE`: acknowledged sequence numbers
/// to /tmp/ack-DEV, failures to /tmp/err-DEV) and the reader (`/tmp/r.sh`: reads region A, then
/// B, with direct I/O through /dev/vda; a checksum that differs from the disk's goes to
/// /tmp/read-bad), each written with one `printf` (one line per command).
fn install_loops(g: &Guest, sums: &[String; 3]) {
    let writer = format!(
        "dev=$1; base=$2; s=0\n\
         while [ $s -lt {REGION_BLOCKS} ] && [ ! -e /tmp/stop ]; do\n\
         yes vm1-$dev-$s | head -c 4096 > /tmp/blk-$dev\n\
         if dd if=/tmp/blk-$dev of=/dev/$dev bs=4096 count=1 seek=$((base + s)) oflag=direct 2>/dev/null; then\n\
         echo $s >> /tmp/ack-$dev; else echo $s >> /tmp/err-$dev; fi\n\
         s=$((s + 1))\n\
         done\n"
    );
    let reader = format!(
        "while [ ! -e /tmp/stop ]; do\n\
         for r in {READ_A}:{a} {READ_B}:{b}; do\n\
         s=$(dd if=/dev/vda bs=1M skip=${{r%%:*}} count={READ_MIB} iflag=direct 2>/dev/null | md5sum)\n\
         [ \"${{s%% *}}\" = \"${{r#*:}}\" ] || echo \"$r $s\" >> /tmp/read-bad\n\
         done\n\
         done\n",
        a = sums[0],
        b = sums[1]
    );
    for (file, script) in [("/tmp/w.sh", writer), ("/tmp/r.sh", reader)] {
        g.sh(&format!(
            "printf '%b' '{}' > {file}",
            script.replace('\n', "\\n")
        ));
    }
}

/// The MD5 sum of the region at `mib` MiB read through the page cache (after dropping it if
/// `drop`).
fn cached_region_sum(g: &Guest, mib: u64, drop: bool) -> String {
    let drop = if drop {
        "echo 1 > /proc/sys/vm/drop_caches; "
    } else {
        ""
    };
    g.sh(&format!(
        "{drop}dd if=/dev/vda bs=1M skip={mib} count={READ_MIB} 2>/dev/null | md5sum"
    ))
}

/// Waits until QEMU has synced its dirty bitmap (and the daemon's log) `n` more times.
fn wait_syncs(q: &Qmp, n: u64) {
    let syncs = q.migration()["ram"]["dirty-sync-count"]
        .as_u64()
        .unwrap_or(0);
    wait_syncs_until(q, syncs + n);
}

/// Waits until QEMU has synced its dirty bitmap `count` times in this migration.
fn wait_syncs_until(q: &Qmp, count: u64) {
    let syncs = |m: &serde_json::Value| m["ram"]["dirty-sync-count"].as_u64().unwrap_or(0);
    let deadline = std::time::Instant::now() + MIGRATION_TIMEOUT;
    loop {
        let m = q.migration();
        assert!(
            m["status"] == "active" || m["status"] == "setup",
            "the migration is held: {m}"
        );
        if syncs(&m) >= count {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "no dirty sync: {m}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Migrates `src` to `uri` while the guest runs its loops, checking the dirty log on the way.
/// The migration is held in its iterative phase (a downtime limit of 1 ms cannot be met while the guest dirties memory). Once
/// QEMU sent all of the guest's memory, the guest reads region A into its page cache; after two
/// more syncs QEMU has sent those pages with that content; then the guest drops the cache and
/// reads region `CACHED`, mostly into the same pages (the page allocator hands out the pages
/// freed last first), so the daemon rewrites pages QEMU already sent, which only the dirty log
/// has sent again. Then the migration may converge.
fn migrate_under_load(src: &Vm, uri: &str, sums: &[String; 3]) -> serde_json::Value {
    let q = &src.qmp;
    q.cmd(
        "migrate-set-parameters",
        json!({ "max-bandwidth": BANDWIDTH, "downtime-limit": 1 }),
    );
    q.cmd("migrate", json!({ "uri": uri }));
    // Near the end of the first pass, slow down: each round then takes long enough (a quarter
    // of a second for the churn's 1 MiB) that the guest always dirties memory in it, however
    // the host schedules its vCPU, and the migration cannot meet the 1 ms limit.
    let deadline = std::time::Instant::now() + MIGRATION_TIMEOUT;
    loop {
        let m = q.migration();
        let ram = &m["ram"];
        if ram["transferred"].as_u64().unwrap_or(0) >= HOLD_AFTER
            || ram["dirty-sync-count"].as_u64().unwrap_or(0) >= 2
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "first pass too slow: {m}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    q.cmd(
        "migrate-set-parameters",
        json!({ "max-bandwidth": HOLD_BANDWIDTH }),
    );
    wait_syncs_until(q, 2);
    let first = cached_region_sum(&src.guest, READ_A, true);
    assert!(
        first.contains(sums[0].as_str()),
        "region A on the source: {first}"
    );
    wait_syncs(q, 2);
    let second = cached_region_sum(&src.guest, CACHED, true);
    assert!(
        second.contains(sums[2].as_str()),
        "region read on the source: {second}"
    );
    assert_eq!(
        q.migration()["status"],
        "active",
        "read while the migration runs"
    );
    q.cmd(
        "migrate-set-parameters",
        json!({ "max-bandwidth": BANDWIDTH, "downtime-limit": 300 }),
    );
    q.wait_migration(&["completed", "failed", "cancelled"], MIGRATION_TIMEOUT)
}

fn start_loops(g: &Guest) {
    g.sh(
        ": > /tmp/ack-vda; : > /tmp/err-vda; : > /tmp/ack-sda; : > /tmp/err-sda; \
          : > /tmp/read-bad; rm -f /tmp/stop; : > /tmp/pids",
    );
    for (dev, base) in [("vda", 0), ("sda", REGION_BLOCKS)] {
        g.sh(&format!(
            "sh /tmp/w.sh {dev} {base} </dev/null >/dev/null 2>&1 & echo $! >> /tmp/pids"
        ));
    }
    g.sh("sh /tmp/r.sh </dev/null >/dev/null 2>&1 & echo $! >> /tmp/pids");
    // Memory the guest keeps dirtying (dd's 1 MiB buffer, filled again and again), so that a
    // migration held at a downtime limit of 1 ms (`migrate_under_load`) cannot converge.
    g.sh("dd if=/dev/zero of=/dev/null bs=1M </dev/null >/dev/null 2>&1 & echo $! > /tmp/churn");
}

/// Stops the loops and waits for them to end.
fn stop_loops(g: &Guest) {
    g.run_timeout(
        "touch /tmp/stop; kill $(cat /tmp/churn); for p in $(cat /tmp/pids); do while kill -0 $p 2>/dev/null; do sleep 0.2; done; done",
        Duration::from_secs(300),
    );
}

/// Every acknowledged write of the guest's writers is in the image; returns how many.
fn acked_writes_on_disk(g: &Guest, image: &Path) -> usize {
    let img = File::open(image).unwrap();
    let mut n = 0;
    for (dev, base) in [("vda", 0), ("sda", REGION_BLOCKS)] {
        let errs = g.sh(&format!("cat /tmp/err-{dev}"));
        assert!(errs.trim().is_empty(), "writes on {dev} failed: {errs}");
        let acked = g.sh(&format!("cat /tmp/ack-{dev}"));
        for s in acked.split_whitespace() {
            let s: u64 = s.parse().unwrap();
            let mut block = vec![0u8; 4096];
            img.read_exact_at(&mut block, (base + s) * 4096).unwrap();
            let line = format!("vm1-{dev}-{s}\n");
            let want: Vec<u8> = line.bytes().cycle().take(4096).collect();
            assert!(
                block == want,
                "{dev} block {s} acknowledged but not in the image"
            );
            n += 1;
        }
    }
    n
}

/// Migration time and downtime from a completed `query-migrate`.
fn figures(m: &serde_json::Value, what: &str) -> (u64, u64) {
    assert_eq!(m["status"], "completed", "{what}: {m}");
    let total = m["total-time"].as_u64().unwrap_or(0);
    let down = m["downtime"].as_u64().unwrap_or(0);
    let ram = &m["ram"];
    eprintln!(
        "migration {what}: total-time {total} ms, downtime {down} ms, {} MiB sent, {} dirty-sync rounds",
        ram["transferred"].as_u64().unwrap_or(0) >> 20,
        ram["dirty-sync-count"].as_u64().unwrap_or(0)
    );
    (total, down)
}

#[test]
fn a_guest_migrates_with_its_disk_and_reservation() {
    let dir = tempfile::tempdir().unwrap();
    let image: PathBuf = dir.path().join("disk.img");
    let sums = prepare_image(&image);
    let d = DaemonProcess::start(dir.path(), &["vm1", "vm2"], "160M");
    let src = Vm {
        guest: Guest::boot(opts(&d, dir.path(), "src", &[])),
        qmp: Qmp::new(dir.path().join("src-qmp.sock")),
    };
    let g = &src.guest;
    g.sh("sg_persist -n -o -G -S 0x21 /dev/sda && sg_persist -n -o -R -K 0x21 -T 1 /dev/sda");
    let before = pr_state(g);
    assert!(before.contains("0x21"), "registered and reserved: {before}");
    let mut vm2_scsi = ScsiClient::connect(&d.scsi("vm2"));
    vm2_scsi.drain_ua();
    let mut vm2_blk = VuFrontend::connect(&d.blk("vm2"), 1, 128);
    vm2_fenced(&mut vm2_scsi, &mut vm2_blk, "before");
    install_loops(g, &sums);

    // A cancelled migration, slowed down so that it is still running when cancelled.
    let (dest, uri) = destination(&d, dir.path(), "cancelled");
    src.qmp.cmd(
        "migrate-set-parameters",
        json!({ "max-bandwidth": 1 << 20 }),
    );
    src.qmp.cmd("migrate", json!({ "uri": uri }));
    src.qmp.wait_migration(&["active"], Duration::from_secs(60));
    src.qmp.cmd("migrate_cancel", json!({}));
    src.qmp
        .wait_migration(&["cancelled"], Duration::from_secs(60));
    dest.guest.kill();
    still_on_the_source(&src, &before, "after migrate_cancel");

    // A destination QEMU that dies mid-migration.
    let (dest, uri) = destination(&d, dir.path(), "killed");
    src.qmp.cmd("migrate", json!({ "uri": uri }));
    src.qmp.wait_migration(&["active"], Duration::from_secs(60));
    dest.guest.kill();
    src.qmp.wait_migration(&["failed"], Duration::from_secs(60));
    still_on_the_source(&src, &before, "after the destination was killed");

    // An idle migration.
    let (first, uri) = destination(&d, dir.path(), "first");
    let idle = figures(&migrate(&src, &uri, BANDWIDTH), "idle");
    src.guest.kill();
    let g = &first.guest;
    let (rc, out) = g.run("sg_turs /dev/sda");
    assert_eq!(rc, 0, "no unit attention from the move: {out}");
    assert_eq!(
        pr_state(g),
        before,
        "registration and reservation after the move"
    );
    io_works(g, "after the idle migration");
    vm2_fenced(&mut vm2_scsi, &mut vm2_blk, "after the idle migration");

    // A migration under load.
    start_loops(g);
    g.sh("sleep 3");
    let (second, uri) = destination(&d, dir.path(), "second");
    let load = figures(&migrate_under_load(&first, &uri, &sums), "under load");
    first.guest.kill();
    let g = &second.guest;
    // What the daemon wrote into the page cache during the migration reached the destination.
    let cached = cached_region_sum(g, CACHED, false);
    assert!(
        cached.contains(sums[2].as_str()),
        "region at {CACHED} MiB as the guest's page cache holds it after the move: {cached}, \
         the disk's: {}",
        sums[2]
    );
    stop_loops(g);
    let writes = acked_writes_on_disk(g, &image);
    assert!(writes > 0, "the writers wrote");
    let bad = g.sh("cat /tmp/read-bad");
    assert!(
        bad.trim().is_empty(),
        "reads that differ from the disk: {bad}"
    );
    assert_eq!(
        pr_state(g),
        before,
        "registration and reservation after the second move"
    );
    vm2_fenced(
        &mut vm2_scsi,
        &mut vm2_blk,
        "after the migration under load",
    );
    eprintln!(
        "guest_migrate: idle {} ms (downtime {} ms), under load {} ms (downtime {} ms), \
         {writes} acknowledged writes checked",
        idle.0, idle.1, load.0, load.1
    );
    d.assert_no_panic();
}

//! Live migration of a guest with both devices to a QEMU served by another daemon of the cluster
//! (issue 21, point 2): two daemons of one disk through a real etcd stand for two hosts. The
//! guest registers and takes Write Exclusive with `sg_persist` on A, migrates (QMP `migrate`,
//! `unix:` URI) to a QEMU served by B, and back to a QEMU served by A; after each move its
//! registration and reservation are unchanged, no unit attention is reported (`sg_turs`), it
//! does I/O on both devices, and vm2 (on A, unregistered) is fenced on both; the guest's owner
//! record in etcd names the daemon serving it. The move back runs under load: the guest writes
//! sequence-numbered blocks with `dd oflag=direct` on both devices throughout; no write fails and
//! every acknowledged one is in the image. Runs on QEMU 7.2 and 10.0; about 30 s (one boot, two
//! incoming QEMUs). Prints the migration time and downtime of both moves.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use serde_json::json;

use common::etcd::{ClusterDaemon, Etcd, FAST};
use common::guest::{Guest, GuestOpts};
use common::migration::{self, pr_state, vm1_opts, Vm};
use common::owners::owner_node;
use common::qmp::Qmp;
use common::scsi_client::ScsiClient;
use common::vu_frontend::VuFrontend;

const MIGRATION_TIMEOUT: Duration = Duration::from_secs(180);
const BANDWIDTH: u64 = 64 << 20;
/// The writers' first blocks (4 KiB) on vda and sda, and how many each writes at most.
const WRITERS: [(&str, u64); 2] = [("vda", 4096), ("sda", 8192)];
const WRITES: u64 = 2048;

/// The guest's QEMU flags on daemon `d`'s sockets, with QMP on `dir/<tag>-qmp.sock`.
fn opts<'a>(d: &ClusterDaemon, dir: &Path, tag: &str, extra: &[String]) -> GuestOpts<'a> {
    vm1_opts((d.blk("vm1"), d.scsi("vm1")), dir, tag, extra)
}

/// A destination QEMU served by `d`, waiting on `dir/<tag>-migrate.sock`; returns it and the URI.
fn destination(d: &ClusterDaemon, dir: &Path, tag: &str) -> (Vm, String) {
    migration::destination(dir, tag, |incoming| opts(d, dir, tag, incoming))
}

/// A direct write and read back of one block on each device.
fn io_works(g: &Guest, what: &str) {
    migration::io_works(g, 3000, what);
}

fn vm2_fenced(scsi: &mut ScsiClient, blk: &mut VuFrontend, what: &str) {
    migration::vm2_fenced(scsi, blk, 16000, what);
}

/// Migrates `src` to `uri`; returns (total time, downtime) in ms.
fn migrate(src: &Vm, uri: &str, what: &str) -> (u64, u64) {
    src.qmp.cmd(
        "migrate-set-parameters",
        json!({ "max-bandwidth": BANDWIDTH }),
    );
    src.qmp.cmd("migrate", json!({ "uri": uri }));
    let m = src
        .qmp
        .wait_migration(&["completed", "failed", "cancelled"], MIGRATION_TIMEOUT);
    assert_eq!(m["status"], "completed", "{what}: {m}");
    let (total, down) = (
        m["total-time"].as_u64().unwrap_or(0),
        m["downtime"].as_u64().unwrap_or(0),
    );
    eprintln!("migration {what}: total-time {total} ms, downtime {down} ms");
    (total, down)
}

/// After a move to `to`: no unit attention, the same PR state, I/O works, vm2 fenced.
fn after_move(g: &Guest, before: &str, vm2: &mut (ScsiClient, VuFrontend), what: &str) {
    let (rc, out) = g.run("sg_turs /dev/sda");
    assert_eq!(rc, 0, "{what}: no unit attention from the move: {out}");
    assert_eq!(pr_state(g), before, "{what}: registration and reservation");
    io_works(g, what);
    vm2_fenced(&mut vm2.0, &mut vm2.1, what);
}

/// Starts one writer per device: block `base + s` gets `vm1-<dev>-<s>` repeated, written with
/// `dd oflag=direct`; `s` goes to `/tmp/ack-<dev>` once dd succeeded, else to `/tmp/err-<dev>`.
fn start_writers(g: &Guest) {
    g.sh(&format!(
        "printf '%b' 'dev=$1; base=$2; s=0\\n\
         while [ $s -lt {WRITES} ] && [ ! -e /tmp/stop ]; do\\n\
         yes vm1-$dev-$s | head -c 4096 > /tmp/blk-$dev\\n\
         if dd if=/tmp/blk-$dev of=/dev/$dev bs=4096 count=1 seek=$((base + s)) oflag=direct \
         2>/dev/null; then echo $s >> /tmp/ack-$dev; else echo $s >> /tmp/err-$dev; fi\\n\
         s=$((s + 1))\\n\
         done\\n' > /tmp/w.sh; rm -f /tmp/stop; : > /tmp/pids"
    ));
    for (dev, base) in WRITERS {
        g.sh(&format!(
            ": > /tmp/ack-{dev}; : > /tmp/err-{dev}; \
             sh /tmp/w.sh {dev} {base} </dev/null >/dev/null 2>&1 & echo $! >> /tmp/pids"
        ));
    }
}

/// Stops the writers; checks that none failed and that every acknowledged block is in the image.
/// Returns how many were acknowledged.
fn writes_on_disk(g: &Guest, image: &Path) -> usize {
    g.sh("touch /tmp/stop; for p in $(cat /tmp/pids); do while kill -0 $p 2>/dev/null; do sleep 0.2; done; done");
    let img = File::open(image).unwrap();
    let mut n = 0;
    for (dev, base) in WRITERS {
        let errs = g.sh(&format!("cat /tmp/err-{dev}"));
        assert!(errs.trim().is_empty(), "writes on {dev} failed: {errs}");
        for s in g.sh(&format!("cat /tmp/ack-{dev}")).split_whitespace() {
            let s: u64 = s.parse().unwrap();
            let mut block = vec![0u8; 4096];
            img.read_exact_at(&mut block, (base + s) * 4096).unwrap();
            let want: Vec<u8> = format!("vm1-{dev}-{s}\n")
                .bytes()
                .cycle()
                .take(4096)
                .collect();
            assert!(
                block == want,
                "{dev} block {s} acknowledged, not in the image"
            );
            n += 1;
        }
    }
    n
}

#[test]
fn a_guest_migrates_to_another_daemon_and_back_with_its_reservation() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    let ep = [etcd.url.clone()];
    let a = ClusterDaemon::start(dir.path(), &ep, "a", &["vm1", "vm2"], &FAST, &[]);
    let b = ClusterDaemon::start(dir.path(), &ep, "b", &["vm1"], &FAST, &[]);
    let src = Vm {
        guest: Guest::boot(opts(&a, dir.path(), "src", &[])),
        qmp: Qmp::new(dir.path().join("src-qmp.sock")),
    };
    let g = &src.guest;
    g.sh("sg_persist -n -o -G -S 0x21 /dev/sda && sg_persist -n -o -R -K 0x21 -T 1 /dev/sda");
    let before = pr_state(g);
    assert!(before.contains("0x21"), "registered and reserved: {before}");
    let mut vm2 = (
        ScsiClient::connect(&a.scsi("vm2")),
        VuFrontend::connect(&a.blk("vm2"), 1, 128),
    );
    vm2.0.drain_ua();
    vm2_fenced(&mut vm2.0, &mut vm2.1, "before");
    assert_eq!(owner_node(&etcd, "vm1"), "a");

    let (on_b, uri) = destination(&b, dir.path(), "on-b");
    let to_b = migrate(&src, &uri, "from daemon A to daemon B");
    src.guest.kill();
    after_move(&on_b.guest, &before, &mut vm2, "on B");
    assert_eq!(owner_node(&etcd, "vm1"), "b", "B serves vm1");

    start_writers(&on_b.guest);
    on_b.guest.sh("sleep 2");
    let (on_a, uri) = destination(&a, dir.path(), "on-a");
    let to_a = migrate(&on_b, &uri, "from daemon B back to daemon A, under dd load");
    on_b.guest.kill();
    on_a.guest.sh("sleep 2");
    let writes = writes_on_disk(&on_a.guest, &dir.path().join("disk.img"));
    assert!(writes > 0, "the writers wrote");
    after_move(&on_a.guest, &before, &mut vm2, "back on A");
    assert_eq!(owner_node(&etcd, "vm1"), "a", "A serves vm1 again");
    eprintln!(
        "guest_migrate_cluster: A to B idle {} ms (downtime {} ms), B to A under load {} ms \
         (downtime {} ms), {writes} acknowledged writes checked",
        to_b.0, to_b.1, to_a.0, to_a.1
    );
    for d in [&a, &b] {
        assert!(!d.log_text().contains("panicked"), "{}", d.log_text());
    }
}

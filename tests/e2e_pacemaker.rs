//! Seed flow 1 with a real Pacemaker cluster (Debian 12: pacemaker 2.1, corosync 3.1, crmsh,
//! fence-agents, resource-agents; nothing patched) on three guests sharing one image.
//!
//! The configuration is images/cluster.crm. Stonith is `fence_scsi` (`devices=/dev/sda`,
//! `meta provides=unfencing`); the resources are an ext4 `Filesystem` on /dev/vda and
//! `ocf:sharedisk:recorder` (images/recorder.ocf), which appends
//! sequence-numbered, checksummed records and acknowledges each one, after fsync, on the guest's
//! second serial port: the host timestamps every acknowledgement.
//!
//! First node1 live-migrates to a new QEMU on this host (served by the same daemon) while it runs
//! the application (issue 21, point 4): the records continue, the application is the same
//! process on node1 (not restarted or moved), corosync keeps its ring, `crm_mon` shows no failed
//! action and no fail count, the fence history is as before (no fencing), node1's registration
//! and the reservation are as before, and `fence_scsi -o monitor`/`-o status` pass on the moved
//! node. The migration's time and downtime are printed.
//!
//! Then node1's QEMU (the migrated one) is killed while the application writes. The cluster must fence node1 through
//! sharedisk (PREEMPT AND ABORT) and start the file system and the application on node2, which
//! continues the sequence. From the image afterwards: every acknowledged record is there, intact,
//! in one gapless sequence, node1's records end before node2's begin, and node1 wrote nothing after
//! the fence. node1 booted again cannot write until Pacemaker unfences it; then it rejoins.
//! The timeline (kill, fence, file system up on node2, first new record) is printed.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster_vm::{agent_ok, image_bytes, wait_guest, write_block, ClusterLab};
use common::ctl::ctl;
use common::guest::Guest;
use serde_json::Value;

/// The file system covers the first 192 MiB of the 256 MiB image; blocks from 50000 (195 MiB)
/// on are free for direct writes.
const FS_SIZE: &str = "192M";
const FREE_BLOCK: u64 = 50_000;

/// Every line the guests wrote to their second serial port, with the host's time of arrival.
struct AckWatcher {
    lines: Arc<Mutex<Vec<(Instant, usize, String)>>>,
    stop: Arc<AtomicBool>,
}

impl AckWatcher {
    fn start(files: Vec<PathBuf>) -> AckWatcher {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (lines.clone(), stop.clone());
        std::thread::spawn(move || {
            // Read offsets per file; a file that shrinks (QEMU truncates it at a new boot) is
            // read from its start again.
            let mut off = vec![0usize; files.len()];
            let mut partial = vec![String::new(); files.len()];
            while !s.load(Ordering::Relaxed) {
                for (i, f) in files.iter().enumerate() {
                    let Ok(data) = std::fs::read(f) else { continue };
                    if data.len() < off[i] {
                        off[i] = 0;
                        partial[i].clear();
                    }
                    let now = Instant::now();
                    partial[i].push_str(&String::from_utf8_lossy(&data[off[i]..]));
                    off[i] = data.len();
                    while let Some(pos) = partial[i].find('\n') {
                        let line: String = partial[i][..pos].trim_end_matches('\r').to_string();
                        partial[i].drain(..=pos);
                        l.lock().unwrap().push((now, i + 1, line));
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        AckWatcher { lines, stop }
    }

    /// (time, seq) of every acknowledgement of node `k`.
    fn acks(&self, k: usize) -> Vec<(Instant, u64)> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, n, _)| *n == k)
            .filter_map(|(t, _, l)| {
                let seq = l.strip_prefix("ACK ")?.split_whitespace().next()?;
                Some((*t, seq.parse().ok()?))
            })
            .collect()
    }

    /// When node `k` first printed `line`.
    fn event(&self, k: usize, line: &str) -> Option<Instant> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .find(|(_, n, l)| *n == k && l == line)
            .map(|(t, _, _)| *t)
    }
}

impl Drop for AckWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn pr_show(lab: &ClusterLab) -> Value {
    ctl(&lab.daemon.control(), &["--json", "pr", "show"])
        .ok()
        .json()
}

fn registered(lab: &ClusterLab, guest: &str) -> bool {
    pr_show(lab)["registrations"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["guest"] == guest)
}

/// Successful writes of `guest` on both devices, and `guest`'s successful PR OUT `action`s.
fn counters(lab: &ClusterLab, guest: &str, action: &str) -> (u64, u64) {
    let st = ctl(&lab.daemon.control(), &["--json", "stats"]).ok().json();
    let g = st["guests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == guest)
        .expect("guest in stats")
        .clone();
    let writes = g["devices"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|d| d["ops"].as_array().unwrap().clone())
        .filter(|o| o["op"] == "write")
        .map(|o| o["ok"].as_u64().unwrap())
        .sum();
    let prout = g["pr_out"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action"] == action)
        .map(|a| a["ok"].as_u64().unwrap())
        .unwrap_or(0);
    (writes, prout)
}

/// Waits for `cmd` on `g`; on a timeout, prints the cluster's status and the tail of Pacemaker's
/// log first, so that the failure explains itself.
#[track_caller]
fn wait_cluster(g: &Guest, cmd: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let (rc, _) = g.run(cmd);
        if rc == 0 {
            return started.elapsed();
        }
        if started.elapsed() > timeout {
            let _ = g.run(
                "crm_mon -1 -r -f; grep -E 'error|warning|crit|fatal|fenc' \
                 /var/log/pacemaker/pacemaker.log | grep -v cib_perform_op | tail -n 80",
            );
            panic!("[{}] `{cmd}` did not succeed within {timeout:?}", g.name());
        }
        // crm_mon costs CPU in a TCG guest: ask every 2 s.
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Waits until the application runs on node1, unfencing done. pacemaker-fenced gives
/// `fence_scsi -o metadata` 10 s when the device is configured; in a TCG guest on a loaded host
/// that can time out even after the warm-up run, and unfencing then fails ("Agent does not
/// support 'on'") and is not tried again. Then the failed action is cleaned up, as an
/// administrator would, at most twice, so that Pacemaker unfences again (the metadata is there by
/// then).
fn wait_unfenced_start(n1: &Guest) {
    let deadline = Instant::now() + Duration::from_secs(360);
    let mut cleanups = 0;
    loop {
        let (rc, _) = n1.run("crm_mon -1 | grep -E 'app.*Started node1'");
        if rc == 0 {
            return;
        }
        let (failed, _) = n1.run("crm_mon -1 | grep -q 'Failed Fencing Actions'");
        if failed == 0 && cleanups < 2 {
            cleanups += 1;
            eprintln!("[pacemaker] unfencing failed (fence_scsi's metadata too slow?): cleanup");
            n1.sh("stonith_admin --cleanup --history '*'; crm_resource --cleanup");
        }
        if Instant::now() > deadline {
            // wait_cluster's diagnostics.
            wait_cluster(
                n1,
                "crm_mon -1 | grep -E 'app.*Started node1'",
                Duration::ZERO,
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn start_pacemaker(g: &Guest) {
    g.sh("setsid pacemakerd </dev/null >/var/log/pacemaker/pacemakerd.out 2>&1 &");
}

/// What must not change when a node migrates: the application's process on node1, corosync's
/// ring (seen from node2), the fence history, and the PR state.
#[derive(Debug, PartialEq)]
struct Unmoved {
    recorder_pid: String,
    ring_id: String,
    fence_history: String,
    registrations: Value,
    reservation: Value,
}

fn unmoved(lab: &ClusterLab) -> Unmoved {
    let n2 = lab.node(2);
    let pr = pr_show(lab);
    Unmoved {
        recorder_pid: lab.node(1).sh("cat /run/sharedisk-recorder-*.pid"),
        ring_id: n2.sh("corosync-quorumtool -s | grep 'Ring ID'"),
        fence_history: n2.sh("stonith_admin --history '*'"),
        registrations: pr["registrations"].clone(),
        reservation: pr["reservation"].clone(),
    }
}

/// Waits until node `k` acknowledged `more` records beyond the `since` it had.
fn wait_acks(watcher: &AckWatcher, k: usize, since: usize, more: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while watcher.acks(k).len() < since + more {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// node1 live-migrates to a new QEMU while it runs the file system and the application, and the
/// cluster does not notice; returns `query-migrate`'s answer.
fn migrate_node1(lab: &mut ClusterLab, watcher: &AckWatcher, t0: Instant) -> Value {
    let before = unmoved(lab);
    assert!(
        !before.fence_history.contains("reboot") && !before.fence_history.contains("off of"),
        "only unfencing so far: {}",
        before.fence_history
    );
    let acks = watcher.acks(1).len();
    let m = lab.migrate_node(1, 1 << 30);
    step(
        t0,
        format!(
            "node1 live-migrated to a new QEMU while the application writes: total-time {} ms, \
             downtime {} ms",
            m["total-time"], m["downtime"]
        ),
    );
    wait_acks(
        watcher,
        1,
        acks,
        10,
        "node1's application writes after the move",
    );
    // Long enough for the recurring monitors of app (10 s) and fs (20 s) to run on the new QEMU.
    let moved = Instant::now();
    let n1 = lab.node(1);
    agent_ok(n1, "-o monitor --devices=/dev/sda", "");
    agent_ok(n1, "-o status --devices=/dev/sda -n node1", "Status: ON");
    while moved.elapsed() < Duration::from_secs(25) {
        std::thread::sleep(Duration::from_secs(1));
    }
    let status = n1.sh("crm_mon -1 -f");
    assert!(
        status.contains("Online: [ node1 node2 node3 ]")
            && status
                .lines()
                .any(|l| l.contains("app") && l.contains("Started node1")),
        "the cluster and the application as before: {status}"
    );
    assert!(
        !status.contains("Failed") && !status.contains("fail-count="),
        "no failed action, no fail count: {status}"
    );
    assert_eq!(
        unmoved(lab),
        before,
        "the application's process, corosync's ring, the fence history, the PR state"
    );
    wait_acks(watcher, 1, acks, 20, "node1's application still writes");
    step(
        t0,
        "after the move: same application process on node1, same corosync ring, no failed \
         action or fail count, no fencing, registrations and reservation as before, \
         fence_scsi monitor and status pass on node1",
    );
    m
}

/// One line per step that behaved as flow 1 says (`qemu-scripts/cluster-demo.sh` shows them; a
/// deviation panics with its reason instead).
fn step(t0: Instant, what: impl std::fmt::Display) {
    eprintln!("[pacemaker] ✔ {what}  ({:.1}s)", t0.elapsed().as_secs_f64());
}

/// The records file, read from the image with debugfs (the file system is frozen or unmounted).
fn records_from_image(image: &Path) -> String {
    let out = Command::new("debugfs")
        .args(["-R", "cat /records"])
        .arg(image)
        .output()
        .expect("debugfs (e2fsprogs) runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("records are ASCII")
}

/// (seq, node) of every record, asserting each is intact (length and CRC32).
fn parse_records(text: &str) -> Vec<(u64, String)> {
    text.lines()
        .map(|line| {
            assert_eq!(line.len(), 41, "torn record {line:?}");
            let (body, crc) = line.rsplit_once(' ').unwrap();
            let want = u32::from_str_radix(crc, 16).unwrap();
            assert_eq!(crc32(body.as_bytes()), want, "bad checksum: {line:?}");
            let mut w = body.split_whitespace();
            let seq = w.next().unwrap().parse().unwrap();
            (seq, w.next().unwrap().to_string())
        })
        .collect()
}

/// zlib's CRC-32 (IEEE 802.3, reflected), as the recorder's Python computes it.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn pacemaker_fails_over_with_fence_scsi() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut lab = ClusterLab::start_migratable(dir.path(), 3, "256M");
    let boot = t0.elapsed();
    step(
        t0,
        "3 Debian guests booted, each with /dev/vda (blk) and /dev/sda (scsi) on one image",
    );
    let image = lab.daemon.image.clone();
    let watcher = AckWatcher::start((1..=3).map(|k| lab.ack_file(k)).collect());

    // The shared file system, made before the cluster exists.
    lab.node(1)
        .sh(&format!("mkfs.ext4 -q -F /dev/vda {FS_SIZE} && sync"));
    for k in 1..=3 {
        lab.node(k).sh("mkdir -p /mnt/shared");
    }
    lab.start_corosync();
    for k in 1..=3 {
        start_pacemaker(lab.node(k));
    }
    let n1 = lab.node(1);
    wait_cluster(
        n1,
        "crm_mon -1 | grep -q 'Online: \\[ node1 node2 node3 \\]'",
        Duration::from_secs(180),
    );
    step(t0, "corosync and Pacemaker: node1 node2 node3 online");
    // pacemaker-fenced reads fence_scsi's metadata when the device is configured and gives the
    // agent 10 s; a Python start in a busy TCG guest can take longer, and without the metadata
    // the fencer does not know the agent can unfence. Run it once beforehand on every node, so
    // that the fencer's run finds the interpreter and the agent's modules in the page cache.
    for k in 1..=3 {
        lab.node(k).sh("fence_scsi -o metadata >/dev/null");
    }
    // images/cluster.crm: fence_scsi with unfencing, Filesystem + recorder as a group.
    n1.sh("crm configure load update /usr/share/sharedisk/cluster.crm");
    // Unfencing registers every node; the application runs on node1.
    wait_unfenced_start(n1);
    for k in 1..=3 {
        assert!(registered(&lab, &format!("node{k}")), "node{k} unfenced");
    }
    step(
        t0,
        "fence_scsi unfenced every node (3 keys, WE-RO reservation); fs and app started on node1",
    );
    let cluster_up = t0.elapsed();
    n1.sh("crm_mon -1");
    // Let it write, and watch node2 for the file system coming up.
    lab.node(2).sh(
        "(while ! mountpoint -q /mnt/shared; do sleep 0.1; done; echo MOUNTED > /dev/ttyS1) \
         </dev/null >/dev/null 2>&1 &",
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while watcher.acks(1).len() < 10 {
        assert!(Instant::now() < deadline, "node1's application writes");
        std::thread::sleep(Duration::from_millis(100));
    }
    step(t0, "node1's application appends acknowledged records");
    let t_migrate = Instant::now();
    let migration = migrate_node1(&mut lab, &watcher, t0);
    let migrated = t_migrate.elapsed();

    // Kill node1 while it writes.
    let t_kill = Instant::now();
    lab.kill_node(1);
    step(
        t0,
        "node1's QEMU killed (SIGKILL) while the application writes",
    );
    let acked1: Vec<u64> = watcher.acks(1).into_iter().map(|(_, s)| s).collect();
    let t_fence = loop {
        if !registered(&lab, "node1") {
            break Instant::now();
        }
        assert!(t_kill.elapsed() < Duration::from_secs(180), "node1 fenced");
        std::thread::sleep(Duration::from_millis(100));
    };
    let (writes1_at_fence, _) = counters(&lab, "node1", "preempt_and_abort");
    let reservation = pr_show(&lab)["reservation"].clone();
    assert_eq!(reservation["type"], 5, "WE-RO held: {reservation}");
    step(
        t0,
        "node1 fenced through sharedisk: its key is gone, WE-RO still held",
    );
    let deadline = Instant::now() + Duration::from_secs(180);
    let t_first = loop {
        if let Some((t, _)) = watcher.acks(2).first() {
            break *t;
        }
        assert!(Instant::now() < deadline, "node2 continues the sequence");
        std::thread::sleep(Duration::from_millis(100));
    };
    let t_mounted = watcher
        .event(2, "MOUNTED")
        .expect("node2 mounted the file system");
    let fencers: Vec<String> = ["node2", "node3"]
        .into_iter()
        .filter(|g| counters(&lab, g, "preempt_and_abort").1 > 0)
        .map(str::to_string)
        .collect();
    assert!(!fencers.is_empty(), "the fence was a PREEMPT AND ABORT");
    step(
        t0,
        format!("the fence was a PREEMPT AND ABORT, by {fencers:?}"),
    );
    let n2 = lab.node(2);
    wait_guest(
        n2,
        "crm_mon -1 | grep -E 'app.*Started node2'",
        Duration::from_secs(60),
    );
    step(
        t0,
        "file system and application started on node2, which continues the sequence",
    );
    n2.sh("crm_mon -1");
    std::thread::sleep(Duration::from_secs(3));

    // Freeze the file system on node2 (ext4 writes its journal back home: the image alone holds
    // the file), read the records from the image, thaw. Every acknowledgement that arrived before
    // the freeze is of a record fsynced before it.
    n2.sh("fsfreeze --freeze /mnt/shared");
    let acked2: Vec<u64> = watcher.acks(2).into_iter().map(|(_, s)| s).collect();
    let text = records_from_image(&image);
    n2.sh("fsfreeze --unfreeze /mnt/shared");
    let (writes1_later, _) = counters(&lab, "node1", "preempt_and_abort");
    assert_eq!(
        writes1_later, writes1_at_fence,
        "node1 wrote nothing after the fence"
    );
    let records = parse_records(&text);
    let by_seq: BTreeMap<u64, String> = records.iter().cloned().collect();
    assert_eq!(by_seq.len(), records.len(), "no sequence number twice");
    let seqs: Vec<u64> = records.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        (1..=records.len() as u64).collect::<Vec<_>>(),
        "one gapless sequence"
    );
    for s in &acked1 {
        assert_eq!(
            by_seq.get(s).map(String::as_str),
            Some("node1"),
            "acked record {s}"
        );
    }
    for s in &acked2 {
        assert_eq!(
            by_seq.get(s).map(String::as_str),
            Some("node2"),
            "acked record {s}"
        );
    }
    let last1 = records
        .iter()
        .filter(|(_, n)| n == "node1")
        .map(|(s, _)| *s)
        .max()
        .unwrap();
    let first2 = records
        .iter()
        .filter(|(_, n)| n == "node2")
        .map(|(s, _)| *s)
        .min()
        .unwrap();
    assert_eq!(first2, last1 + 1, "node2 continues node1's sequence");
    assert!(
        last1 <= acked1.last().copied().unwrap_or(0) + 1,
        "node1 records beyond its last acknowledgement + the one in flight: {last1}"
    );
    assert!(
        records.iter().all(|(_, n)| n == "node1" || n == "node2"),
        "only node1 and node2 wrote records"
    );
    step(
        t0,
        format!(
            "from the image: {} records intact and gapless, every acknowledged one there, node1's \
             end before node2's, no write of node1 after the fence",
            records.len()
        ),
    );

    // node1 comes back: fenced until Pacemaker unfences it, then it rejoins.
    let t_reboot = Instant::now();
    lab.reboot_node(1);
    let n1 = lab.node(1);
    for (dev, b) in [("/dev/sda", FREE_BLOCK), ("/dev/vda", FREE_BLOCK + 1)] {
        assert!(!write_block(n1, dev, b, "node1-before-unfencing"));
        assert!(image_bytes(&image, b * 4096, 8) != b"node1-be".as_slice());
    }
    step(
        t0,
        "node1 booted again: its writes fail on /dev/sda and /dev/vda until unfenced",
    );
    n1.sh("mkdir -p /mnt/shared");
    n1.sh("fence_scsi -o metadata >/dev/null");
    n1.sh("corosync </dev/null >/var/log/corosync/start.log 2>&1");
    start_pacemaker(n1);
    wait_cluster(
        lab.node(2),
        "crm_mon -1 | grep -q 'Online: \\[ node1 node2 node3 \\]'",
        Duration::from_secs(240),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while !registered(&lab, "node1") {
        assert!(Instant::now() < deadline, "Pacemaker unfences node1");
        std::thread::sleep(Duration::from_millis(200));
    }
    let t_rejoined = Instant::now();
    for (dev, b) in [("/dev/sda", FREE_BLOCK + 2), ("/dev/vda", FREE_BLOCK + 3)] {
        assert!(write_block(n1, dev, b, "node1-unfenced"), "{dev}");
        assert_eq!(image_bytes(&image, b * 4096, 14), b"node1-unfenced");
    }
    step(
        t0,
        "Pacemaker unfenced node1: it rejoined the cluster and writes",
    );
    lab.node(2).sh("crm_mon -1");

    let s = |t: Instant| format!("{:>7.2}s", (t - t_kill).as_secs_f64());
    eprintln!("[pacemaker] timeline (from the kill of node1's QEMU):");
    eprintln!(
        "[pacemaker]   {}  node1 killed (last acknowledged record {:?})",
        s(t_kill),
        acked1.last()
    );
    eprintln!(
        "[pacemaker]   {}  node1 fenced: its key preempted (PREEMPT AND ABORT by {fencers:?})",
        s(t_fence)
    );
    eprintln!(
        "[pacemaker]   {}  file system mounted on node2",
        s(t_mounted)
    );
    eprintln!(
        "[pacemaker]   {}  first record acknowledged by node2 (seq {first2})",
        s(t_first)
    );
    eprintln!("[pacemaker]   {}  node1 boots again", s(t_reboot));
    eprintln!(
        "[pacemaker]   {}  node1 unfenced by Pacemaker, rejoined",
        s(t_rejoined)
    );
    eprintln!(
        "[pacemaker] node1's live migration: total-time {} ms, downtime {} ms, {} MiB sent, \
         {:.1}s with the checks after it",
        migration["total-time"],
        migration["downtime"],
        migration["ram"]["transferred"].as_u64().unwrap_or(0) >> 20,
        migrated.as_secs_f64()
    );
    eprintln!(
        "[pacemaker] boot {:.1}s, cluster and resources up at {:.1}s, whole test {:.1}s; \
         {} records ({} by node1, {} acknowledged to node1, {} to node2)",
        boot.as_secs_f64(),
        cluster_up.as_secs_f64(),
        t0.elapsed().as_secs_f64(),
        records.len(),
        last1,
        acked1.len(),
        acked2.len()
    );
    assert!(
        t_fence <= t_mounted && t_mounted <= t_first,
        "fence, mount, write, in order"
    );
    for k in 1..=3 {
        lab.kill_node(k);
    }
    lab.daemon.stop();
}

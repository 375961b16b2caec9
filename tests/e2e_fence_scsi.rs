//! The unmodified `fence_scsi` agent (Debian's fence-agents 4.12) in three Debian guests on one
//! image, each with /dev/sda (vhost-user-scsi) and /dev/vda (vhost-user-blk), corosync running
//! (the agent derives its default key from corosync's cluster name and node list):
//!
//! 1. `fence_scsi -o on` on every node (default key derivation on node1 and node2, an explicit
//!    `--key` on node3), then `-o status`, `-o list`, `-o monitor`;
//! 2. node2 fences node1 (`-o off`: PREEMPT AND ABORT): node1's key is gone, the Write Exclusive
//!    registrants-only reservation is held, node1's writes fail on both devices and do not reach
//!    the image, node2's and node3's succeed;
//! 3. `fence_scsi_check` (the watchdog's check, run by hand) reports the key missing on node1 and
//!    present on node2;
//! 4. `fence_scsi -o on` on node1 again: it is unfenced and writes;
//! 5. the same with `--key-value=hash`, and on QEMU >= 8.2 (vhost-user-scsi reconnects) across a
//!    restart of the daemon under the running guests;
//! 6. seed flow 2, one writer and many readers: node1 holds the reservation (`fence_scsi -o on`)
//!    and publishes results on an ext4 file system, twice; node2 and node3, no longer registered,
//!    mount it read-only from /dev/sda and from /dev/vda and find node1's checksum; their writes
//!    over the results fail on both devices and leave the image unchanged ([`seed_flow_2`]).
//!
//! One cluster boot for the whole sequence; the wall time of each step is printed.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster_vm::{
    agent, agent_ok, check_writes, derived_key, image_bytes, keys, reservation, sg_persist, Blocks,
    ClusterLab,
};
use common::ctl::ctl;
use common::guest::{qemu_version, Guest};

const DEVS: &str = "--devices=/dev/sda";
const WERO: &str = "Write Exclusive, registrants only";

struct Steps {
    started: Instant,
    last: Instant,
    times: Vec<(String, Duration)>,
}

impl Steps {
    fn new() -> Self {
        let now = Instant::now();
        Steps {
            started: now,
            last: now,
            times: Vec::new(),
        }
    }
    fn done(&mut self, what: &str) {
        let d = self.last.elapsed();
        eprintln!("[fence_scsi] step done in {:.1}s: {what}", d.as_secs_f64());
        self.times.push((what.to_string(), d));
        self.last = Instant::now();
    }
    fn print(&self) {
        eprintln!("[fence_scsi] wall times:");
        for (what, d) in &self.times {
            eprintln!("  {:>6.1}s  {what}", d.as_secs_f64());
        }
        eprintln!("  {:>6.1}s  total", self.started.elapsed().as_secs_f64());
    }
}

#[test]
fn fence_scsi_agent_on_three_nodes() {
    let mut steps = Steps::new();
    let dir = tempfile::tempdir().unwrap();
    let mut lab = ClusterLab::start(dir.path(), 3, "256M");
    lab.start_corosync();
    steps.done("boot 3 nodes, corosync membership of 3");
    let mut blocks = Blocks(16);
    let image = lab.daemon.image.clone();
    let image = image.as_path();
    let nodes = &lab.nodes;
    let node = |k: usize| nodes[k - 1].as_ref().unwrap();
    let (n1, n2, n3) = (node(1), node(2), node(3));
    let k1 = derived_key(1, false);
    let k2 = derived_key(2, false);
    let k3 = "3abc0003".to_string();

    // 1. Unfence every node: register, and the first one reserves (WE-RO).
    agent_ok(n1, &format!("-o on {DEVS} -n node1"), "Success: Powered ON");
    agent_ok(n2, &format!("-o on {DEVS} -n node2"), "Success: Powered ON");
    agent_ok(
        n3,
        &format!("-o on {DEVS} --key={k3}"),
        "Success: Powered ON",
    );
    let mut want = vec![k1.clone(), k2.clone(), k3.clone()];
    want.sort();
    let mut got = keys(n2, "/dev/sda");
    got.sort();
    assert_eq!(got, want, "the three keys fence_scsi registered");
    let (holder, ty) = reservation(n3, "/dev/sda").expect("a reservation");
    assert_eq!(holder, k1, "node1 unfenced first and reserved");
    assert!(ty.contains(WERO), "{ty}");
    // The daemon agrees on who registered what.
    let pr = ctl(&lab.daemon.control(), &["--json", "pr", "show"])
        .ok()
        .json();
    let by_guest: Vec<(String, String)> = pr["registrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["guest"].as_str().unwrap().to_string(),
                r["key"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("0x")
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        by_guest,
        vec![
            ("node1".to_string(), k1.clone()),
            ("node2".to_string(), k2.clone()),
            ("node3".to_string(), k3.clone())
        ]
    );
    agent_ok(n1, &format!("-o status {DEVS} -n node1"), "Status: ON");
    agent_ok(n2, &format!("-o status {DEVS} -n node1"), "Status: ON");
    agent_ok(n3, &format!("-o status {DEVS} --key={k3}"), "Status: ON");
    let (rc, out) = agent(n1, &format!("-o status {DEVS} --key=99"));
    assert!(rc == 2 && out.contains("Status: OFF"), "{rc}: {out}");
    // The agent does not list nodes on SCSI devices; it says so and succeeds.
    agent_ok(n2, &format!("-o list {DEVS} -n node2"), "");
    agent_ok(n1, &format!("-o monitor {DEVS}"), "");
    for g in [n1, n2, n3] {
        check_writes(image, g, &mut blocks, true, "registered");
    }
    steps.done("1. fence_scsi -o on/status/list/monitor on 3 nodes");

    // 2. node2 fences node1.
    agent_ok(
        n2,
        &format!("-o off {DEVS} -n node1"),
        "Success: Powered OFF",
    );
    let mut want = vec![k2.clone(), k3.clone()];
    want.sort();
    let mut got = keys(n3, "/dev/sda");
    got.sort();
    assert_eq!(got, want, "node1's key is gone");
    let (holder, ty) = reservation(n1, "/dev/sda").expect("still reserved");
    assert_eq!(holder, k2, "the fencing node took over node1's reservation");
    assert!(ty.contains(WERO), "{ty}");
    let (rc, out) = agent(n3, &format!("-o status {DEVS} -n node1"));
    assert!(rc == 2 && out.contains("Status: OFF"), "{rc}: {out}");
    check_writes(image, n1, &mut blocks, false, "fenced");
    n1.sh("dd if=/dev/sda of=/dev/null bs=4096 count=1 iflag=direct && dd if=/dev/vda of=/dev/null bs=4096 count=1 iflag=direct");
    check_writes(image, n2, &mut blocks, true, "fencer");
    check_writes(image, n3, &mut blocks, true, "bystander");
    steps.done("2. node2: fence_scsi -o off node1; writes checked");

    // 3. The watchdog check, by hand (verbose through the agent's own configuration file).
    for g in [n1, n2] {
        g.sh("mkdir -p /etc/sysconfig && echo verbose=yes > /etc/sysconfig/stonith");
    }
    let (rc, out) = n1.run("/usr/share/cluster/fence_scsi_check");
    assert_eq!(rc, 2, "fence_scsi_check on the fenced node1: {out}");
    assert!(out.contains(&format!("key {k1} not registered")), "{out}");
    let (rc, out) = n2.run("/usr/share/cluster/fence_scsi_check");
    assert_eq!(rc, 0, "fence_scsi_check on node2: {out}");
    assert!(out.contains(&format!("key {k2} registered")), "{out}");
    steps.done("3. fence_scsi_check: missing on node1, present on node2");

    // 4. node1 unfences itself.
    agent_ok(n1, &format!("-o on {DEVS} -n node1"), "Success: Powered ON");
    assert!(keys(n2, "/dev/sda").contains(&k1));
    check_writes(image, n1, &mut blocks, true, "unfenced");
    let (rc, out) = n1.run("/usr/share/cluster/fence_scsi_check");
    assert_eq!(rc, 0, "{out}");
    steps.done("4. node1: fence_scsi -o on again; writes");

    // 5. key_value=hash, after the operator clears the old keys.
    ctl(&lab.daemon.control(), &["pr", "clear", "--yes"]).ok();
    let h: Vec<String> = (1..=3).map(|k| derived_key(k, true)).collect();
    for (k, g) in [n1, n2, n3].into_iter().enumerate() {
        agent_ok(
            g,
            &format!("-o on {DEVS} --key-value=hash -n node{}", k + 1),
            "Success: Powered ON",
        );
    }
    let mut want = h.clone();
    want.sort();
    let mut got = keys(n1, "/dev/sda");
    got.sort();
    assert_eq!(got, want, "the hash keys");
    agent_ok(
        n2,
        &format!("-o off {DEVS} --key-value=hash -n node1"),
        "Success: Powered OFF",
    );
    assert!(!keys(n3, "/dev/sda").contains(&h[0]));
    check_writes(image, n1, &mut blocks, false, "hash-fenced");
    check_writes(image, n3, &mut blocks, true, "hash-bystander");
    let (rc, out) = n1.run("/usr/share/cluster/fence_scsi_check");
    assert_eq!(rc, 2, "{out}");
    steps.done("5. key_value=hash: on x3, node2 fences node1");

    let (major, minor) = qemu_version();
    if (major, minor) >= (8, 2) {
        lab.daemon.restart();
        for g in [n1, n2, n3] {
            common::cluster_vm::wait_guest(
                g,
                "sg_persist -n -i -k /dev/sda >/dev/null && dd if=/dev/vda of=/dev/null bs=4096 count=1 iflag=direct",
                Duration::from_secs(60),
            );
        }
        let mut got = keys(n2, "/dev/sda");
        got.sort();
        let mut want = vec![h[1].clone(), h[2].clone()];
        want.sort();
        assert_eq!(got, want, "after the restart");
        let (holder, ty) = reservation(n1, "/dev/sda").expect("still reserved");
        assert!(ty.contains(WERO) && h.contains(&holder), "{holder} {ty}");
        check_writes(image, n1, &mut blocks, false, "fenced-after-restart");
        check_writes(image, n2, &mut blocks, true, "after-restart");
        let (rc, out) = n1.run("/usr/share/cluster/fence_scsi_check");
        assert_eq!(rc, 2, "{out}");
        let (rc, out) = n2.run("/usr/share/cluster/fence_scsi_check");
        assert_eq!(rc, 0, "{out}");
        steps.done("5. daemon restart under the guests: the fence holds");
    } else {
        eprintln!(
            "[fence_scsi] QEMU {major}.{minor}: vhost-user-scsi cannot reconnect before 8.2; the \
             daemon restart part runs on QEMU 10 (tests/run.sh's second pass)"
        );
    }
    agent_ok(
        n1,
        &format!("-o on {DEVS} --key-value=hash -n node1"),
        "Success: Powered ON",
    );
    check_writes(image, n1, &mut blocks, true, "hash-unfenced");
    let (rc, out) = n1.run("/usr/share/cluster/fence_scsi_check");
    assert_eq!(rc, 0, "{out}");
    steps.done("5. node1 unfenced with the hash key; writes");

    seed_flow_2(&lab, &h, &mut steps);

    for k in 1..=3 {
        node(k).kill();
    }
    lab.daemon.stop();
    steps.print();
}

/// The requests of `guest` the daemon refused with a reservation conflict, per device (`blk`,
/// `scsi`), every op summed.
fn conflicts(lab: &ClusterLab, guest: &str) -> (u64, u64) {
    let stats = ctl(&lab.daemon.control(), &["--json", "stats"]).ok().json();
    let count = |path: &str| {
        stats["guests"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["name"] == guest)
            .flat_map(|g| g["devices"].as_array().unwrap())
            .filter(|d| d["path"] == path)
            .flat_map(|d| d["ops"].as_array().unwrap())
            .map(|o| o["conflicts"].as_u64().unwrap())
            .sum::<u64>()
    };
    (count("blk"), count("scsi"))
}

/// node1 publishes a new version of the results through ext4 on `dev` (`mkfs`: a new file
/// system first): 2 MiB of results written beside the old ones, renamed over them, their SHA-256
/// in `SHA256SUMS`, then unmounted, which writes everything back and leaves the file system
/// clean for the readers. Returns the checksum and the 4 KiB block of the disk that holds the
/// results' first block (`debugfs bmap`; the file system starts at block 0 and has 4 KiB blocks).
fn publish(g: &Guest, dev: &str, mkfs: bool) -> (String, u64) {
    let mkfs = if mkfs {
        format!("mkfs.ext4 -q -F -b 4096 -L results {dev}; ")
    } else {
        String::new()
    };
    let out = g.sh(&format!(
        "set -e; {mkfs}blockdev --flushbufs {dev}; mount {dev} /mnt; mkdir -p /mnt/results; \
         cd /mnt/results; head -c 2M /dev/urandom >model.new; mv model.new model.bin; \
         sha256sum model.bin >SHA256SUMS; cat SHA256SUMS; cd /; umount /mnt; \
         echo block=$(debugfs -R 'bmap /results/model.bin 0' {dev} 2>/dev/null)"
    ));
    let sum = out
        .lines()
        .find_map(|l| l.strip_suffix("  model.bin"))
        .unwrap_or_else(|| panic!("no checksum in {out}"))
        .to_string();
    let block = out
        .lines()
        .find_map(|l| l.strip_prefix("block="))
        .and_then(|b| b.trim().parse().ok())
        .unwrap_or_else(|| panic!("no block in {out}"));
    assert_eq!(sum.len(), 64, "{out}");
    (sum, block)
}

/// Reader `g` mounts the results read-only from /dev/sda, then from /dev/vda, and checks that
/// both the published checksum and the checksum of the results as read are `want`. `noload`:
/// a file system that needs journal recovery would otherwise be written to even read-only. The
/// reader drops its block cache before it mounts: it may hold blocks that node1 has rewritten.
#[track_caller]
fn read_results(g: &Guest, want: &str, what: &str) {
    let out = g.sh(
        "set -e; for d in /dev/sda /dev/vda; do blockdev --flushbufs $d; \
         mount -o ro,noload $d /mnt; echo \"read $d $(cut -d' ' -f1 /mnt/results/SHA256SUMS) \
         $(sha256sum </mnt/results/model.bin | cut -d' ' -f1)\"; umount /mnt; done",
    );
    let reads: Vec<Vec<&str>> = out
        .lines()
        .filter_map(|l| l.strip_prefix("read "))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        reads,
        [vec!["/dev/sda", want, want], vec!["/dev/vda", want, want]],
        "[{}] {what}: (device, published checksum, checksum of the results as read)",
        g.name()
    );
}

/// Reader `g` tries to overwrite the results' block `block` on `dev` with a direct 4 KiB `dd`:
/// the write fails, on /dev/sda with RESERVATION CONFLICT (which the guest kernel logs and turns
/// into EBADE, "Invalid exchange"), on /dev/vda with an I/O error (virtio-blk has no reservation
/// status), and the image is unchanged there.
#[track_caller]
fn refused_overwrite(g: &Guest, dev: &str, block: u64, image: &Path) {
    let before = image_bytes(image, block * 4096, 4096);
    let out = g.sh(&format!(
        "c=$(dmesg | grep -c 'reservation conflict'); \
         head -c 4096 /dev/zero | tr '\\0' x >/tmp/junk; \
         dd if=/tmp/junk of={dev} bs=4096 count=1 seek={block} oflag=direct 2>&1; \
         echo \"rc=$? conflicts=$(($(dmesg | grep -c 'reservation conflict') - c))\""
    ));
    let (error, conflicts) = if dev == "/dev/sda" {
        ("Invalid exchange", 1)
    } else {
        ("Input/output error", 0)
    };
    assert!(
        out.contains(&format!("dd: error writing '{dev}': {error}"))
            && out.contains(&format!("rc=1 conflicts={conflicts}\n")),
        "[{}] overwriting the results on {dev}: {out}",
        g.name()
    );
    let after = image_bytes(image, block * 4096, 4096);
    assert!(
        after == before && after != [b'x'; 4096],
        "[{}] the image changed under the refused write to {dev}",
        g.name()
    );
}

/// Runs `f` on each of `guests` at the same time, as a seed's parallel readers would.
fn at_once(guests: [&Guest; 2], f: impl Fn(&Guest) + Sync) {
    std::thread::scope(|s| {
        for g in guests {
            let f = &f;
            s.spawn(move || f(g));
        }
    })
}

/// Seed flow 2, many readers and one writer, played by the cluster: node1 holds the reservation
/// and writes results; node2 and node3 read them on both their devices; a reader's write fails.
///
/// The reservation is fence_scsi's Write Exclusive, Registrants Only (type 5). Its row of the
/// reservation types (SPC-4 §6.16.2 table 187; SBC-3 §4.17 table 13 per command, the numbering
/// of `src/pr/arbiter.rs`) reads: reads shared, writes exclusive to registered initiators. A
/// registration is a write permit and a reader needs none; a registered reader could write. So
/// node1 keeps its key and holds the reservation (`fence_scsi -o on`, as a cluster unfences its
/// nodes), and the readers give up their keys (REGISTER with a service action key of 0, through
/// `sg_persist`: the agent refuses to fence the node it runs on). node2 held the reservation (it
/// fenced node1 in step 5); its unregistering releases it, and node1's `-o on` reserves again.
///
/// node1 makes an ext4 file system on /dev/vda and publishes results there, then a new version
/// through /dev/sda; after each, the readers (both at once) mount it read-only from each device
/// and check the checksum node1 wrote against the data they read. Between the versions each
/// reader tries to overwrite the results in place through each device: refused, and the image
/// keeps them. The daemon refuses exactly those four writes and nothing else of the readers':
/// mounting, reading and unmounting read-only write nothing, not even a cache flush.
fn seed_flow_2(lab: &ClusterLab, h: &[String], steps: &mut Steps) {
    let image = lab.daemon.image.as_path();
    let (n1, n2, n3) = (lab.node(1), lab.node(2), lab.node(3));
    let conflicts_before = [conflicts(lab, "node2"), conflicts(lab, "node3")];
    for (g, key) in [(n2, &h[1]), (n3, &h[2])] {
        sg_persist(g, &format!("-n -o -G -K 0x{key} -S 0 /dev/sda"));
    }
    agent_ok(
        n1,
        &format!("-o on {DEVS} --key-value=hash -n node1"),
        "Success: Powered ON",
    );
    assert_eq!(keys(n2, "/dev/sda"), [h[0].clone()], "node1's key alone");
    let (holder, ty) = reservation(n3, "/dev/sda").expect("a reservation");
    assert!(holder == h[0] && ty.contains(WERO), "{holder} {ty}");
    let pr = ctl(&lab.daemon.control(), &["--json", "pr", "show"])
        .ok()
        .json();
    assert_eq!(pr["reservation"]["holder"], "node1");
    assert_eq!(pr["reservation"]["type"], 5);
    assert_eq!(pr["registrations"].as_array().unwrap().len(), 1);
    steps.done("6. flow 2: node1 reserves WE-RO (fence_scsi -o on), the readers unregister");

    let (v1, block) = publish(n1, "/dev/vda", true);
    at_once([n2, n3], |g| read_results(g, &v1, "results v1"));
    at_once([n2, n3], |g| {
        for dev in ["/dev/sda", "/dev/vda"] {
            refused_overwrite(g, dev, block, image);
        }
    });
    let (v2, _) = publish(n1, "/dev/sda", false);
    assert_ne!(v1, v2);
    at_once([n2, n3], |g| read_results(g, &v2, "results v2"));
    for (k, before) in [(2, conflicts_before[0]), (3, conflicts_before[1])] {
        let (blk, scsi) = conflicts(lab, &format!("node{k}"));
        assert_eq!(
            (blk - before.0, scsi - before.1),
            (1, 1),
            "node{k}'s refused requests (blk, scsi), as the daemon counts them"
        );
    }
    steps.done(
        "6. flow 2: node1 publishes twice, node2 and node3 read on both devices, their writes fail",
    );
}

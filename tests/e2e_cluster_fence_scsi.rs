//! The unmodified `fence_scsi` across hosts: three Debian cluster guests with corosync, each
//! served by its own daemon in cluster mode (h1 serves node1, h2 node2, h3 node3) sharing the
//! image and a real etcd. What one node's agent does through its daemon, the others see through
//! theirs, and the fence holds on the other host's daemon, on both devices:
//!
//! 1. `fence_scsi -o on` on every node: node3 (on h3) sees the three keys, node2 (on h2) sees
//!    node1's Write Exclusive – Registrants Only reservation;
//! 2. node2 fences node1 (`-o off`, PREEMPT AND ABORT committed through h2): node1's writes fail
//!    on /dev/sda and /dev/vda served by h1 and do not reach the image; node2's and node3's pass;
//!    `-o status` on node3 reports node1 off;
//! 3. `fence_scsi -o on` on node1 again: it writes;
//! 4. the three daemons hold the same epoch.

mod common;

use std::time::Instant;

use common::cluster_vm::{
    agent, agent_ok, boot_node, check_writes, derived_key, hosts_of, keys, net_addr, reservation,
    start_corosync, Blocks, NODES,
};
use common::ctl::ctl_json;
use common::etcd::{ClusterDaemon, Etcd, Timing};
use common::guest::Guest;

const DEVS: &str = "--devices=/dev/sda";
/// Roomy: three TCG guests keep both cores busy, and a lease lost to a slow etcd answer would
/// fail guest I/O that the test expects to pass.
const TIMING: Timing = Timing {
    lease_ms: 3000,
    max_io_ms: 1000,
    hold_ms: 5000,
    budget_ms: 20000,
};
const WERO: &str = "Write Exclusive, registrants only";

#[test]
fn fence_scsi_across_three_daemons() {
    let started = Instant::now();
    // O_DIRECT (cluster mode) needs a disk file system: the crate's directory is one.
    let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    let etcd = Etcd::start(dir.path());
    let daemons: Vec<ClusterDaemon> = (1..=3)
        .map(|k| {
            ClusterDaemon::start(
                dir.path(),
                &etcd.endpoints(),
                &format!("h{k}"),
                &[NODES[k - 1]],
                &TIMING,
                &[],
            )
        })
        .collect();
    let image = dir.path().join("disk.img");
    let (net, hosts) = (net_addr(), hosts_of(3));
    let nodes: Vec<Guest> = std::thread::scope(|s| {
        let hs: Vec<_> = (1..=3)
            .map(|k| {
                let (d, net, hosts) = (&daemons[k - 1], &net, &hosts);
                let ack = dir.path().join(format!("node{k}.ack"));
                s.spawn(move || {
                    let name = NODES[k - 1];
                    boot_node(k, (d.blk(name), d.scsi(name)), net, hosts, ack)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    start_corosync(&nodes.iter().collect::<Vec<_>>());
    eprintln!(
        "[cluster fence_scsi] 3 nodes on 3 daemons, corosync up in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);
    let log = || {
        daemons
            .iter()
            .map(|d| format!("== {}:\n{}", d.node, d.log_text()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let k1 = derived_key(1, false);
    let k2 = derived_key(2, false);
    let k3 = derived_key(3, false);
    let mut blocks = Blocks(16);

    // 1. Unfence every node, each through its own daemon.
    for (k, n) in [n1, n2, n3].into_iter().enumerate() {
        agent_ok(
            n,
            &format!("-o on {DEVS} -n node{}", k + 1),
            "Success: Powered ON",
        );
    }
    let mut want = vec![k1.clone(), k2.clone(), k3.clone()];
    want.sort();
    let mut got = keys(n3, "/dev/sda");
    got.sort();
    assert_eq!(got, want, "node3 (h3) sees every key\n{}", log());
    let (holder, ty) = reservation(n2, "/dev/sda").expect("a reservation");
    assert_eq!(holder, k1, "node2 (h2) sees node1's reservation");
    assert!(ty.contains(WERO), "{ty}");
    for n in [n1, n2, n3] {
        check_writes(&image, n, &mut blocks, true, "all unfenced");
    }

    // 2. node2 fences node1: committed through h2, enforced by h1.
    agent_ok(
        n2,
        &format!("-o off {DEVS} -n node1"),
        "Success: Powered OFF",
    );
    let mut got = keys(n3, "/dev/sda");
    got.sort();
    assert_eq!(
        got,
        vec![k2.clone(), k3.clone()],
        "node1's key is gone on h3\n{}",
        log()
    );
    assert_eq!(
        reservation(n1, "/dev/sda").map(|r| r.0),
        Some(k2.clone()),
        "node2 took the reservation over, as node1 (h1) sees it"
    );
    check_writes(
        &image,
        n1,
        &mut blocks,
        false,
        "node1 fenced from another host",
    );
    check_writes(&image, n2, &mut blocks, true, "node1 fenced");
    check_writes(&image, n3, &mut blocks, true, "node1 fenced");
    // Fence agents exit 2 for a node that is off.
    let (rc, out) = agent(n3, &format!("-o status {DEVS} -n node1"));
    assert!(
        rc == 2 && out.contains("Status: OFF"),
        "status on node3: {rc} {out}"
    );

    // 3. node1 unfences itself again through h1.
    agent_ok(n1, &format!("-o on {DEVS} -n node1"), "Success: Powered ON");
    agent_ok(n2, &format!("-o status {DEVS} -n node1"), "Status: ON");
    check_writes(&image, n1, &mut blocks, true, "node1 unfenced again");

    // 4. One state: every daemon holds the same epoch.
    let epochs: Vec<u64> = daemons
        .iter()
        .map(|d| {
            ctl_json(&d.control(), &["cluster", "status"])["epoch"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(
        epochs.windows(2).all(|w| w[0] == w[1]) && epochs[0] >= 4,
        "epochs {epochs:?}: register ×3, reserve, preempt, register"
    );
    eprintln!(
        "[cluster fence_scsi] done in {:.1}s, epoch {}",
        started.elapsed().as_secs_f64(),
        epochs[0]
    );
    drop(nodes);
}

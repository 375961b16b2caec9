//! Seed flow 1 (failover) across two daemons in cluster mode: QEMU guests run `sg_persist` and
//! `dd` as in `tests/e2e_flows.rs`, but vm1 is served by daemon h1 and vm2 by daemon h2, which
//! share the reservation state through a real etcd and the image file. Every check of the flow
//! must hold across the daemons: vm2 sees vm1's key, vm1's Write Exclusive refuses vm2's writes
//! on both devices, vm2's PREEMPT AND ABORT fences vm1 on the other daemon. Afterwards both
//! daemons report the same epoch in `ctl cluster status`.

mod common;

use std::path::{Path, PathBuf};

use common::ctl::ctl_json;
use common::etcd::{ClusterDaemon, Etcd, FAST};
use common::flows::{self, Narrator, Served};

/// vm1 on h1, vm2 on h2.
struct TwoHosts {
    h1: ClusterDaemon,
    h2: ClusterDaemon,
    image: PathBuf,
}

impl TwoHosts {
    fn on(&self, guest: &str) -> &ClusterDaemon {
        if guest == "vm1" {
            &self.h1
        } else {
            &self.h2
        }
    }
}

impl Served for TwoHosts {
    fn blk(&self, guest: &str) -> PathBuf {
        self.on(guest).blk(guest)
    }
    fn scsi(&self, guest: &str) -> PathBuf {
        self.on(guest).scsi(guest)
    }
    fn image(&self) -> &Path {
        &self.image
    }
}

#[test]
fn seed_flow_1_across_two_daemons() {
    // O_DIRECT (cluster mode) needs a disk file system: the crate's directory is one.
    let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    let etcd = Etcd::start(dir.path());
    let h1 = ClusterDaemon::start(dir.path(), &etcd.endpoints(), "h1", &["vm1"], &FAST, &[]);
    let h2 = ClusterDaemon::start(dir.path(), &etcd.endpoints(), "h2", &["vm2"], &FAST, &[]);
    let hosts = TwoHosts {
        h1,
        h2,
        image: dir.path().join("disk.img"),
    };
    let mut n = Narrator::default();
    flows::failover(&mut n, &hosts);
    let s1 = ctl_json(&hosts.h1.control(), &["cluster", "status"]);
    let s2 = ctl_json(&hosts.h2.control(), &["cluster", "status"]);
    let metrics = ctl_json(&hosts.h2.control(), &["metrics"])["text"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let ok = n.summary();
    assert!(
        ok,
        "steps that did not behave as the seed says: {:?}\nh1:\n{}\nh2:\n{}",
        n.failures(),
        hosts.h1.log_text(),
        hosts.h2.log_text()
    );
    assert_eq!(n.passed(), 14, "every step of flow 1 ran and passed");
    assert_eq!(s1["epoch"], s2["epoch"], "{s1}\n{s2}");
    assert_eq!(s1["members"].as_array().map(Vec::len), Some(2), "{s1}");
    assert!(
        s1["epoch"].as_u64().unwrap() >= 5,
        "register ×2, reserve, preempt, clear: {s1}"
    );
    assert!(
        metrics.contains(&format!("sharedisk_cluster_epoch {}", s2["epoch"]))
            && metrics.contains("sharedisk_cluster_lease_valid 1"),
        "{metrics}"
    );
}

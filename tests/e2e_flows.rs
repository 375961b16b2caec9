//! The seeds' two persistent reservation flows, as assertions, on the real daemon binary.

mod common;

use common::flows::{self, Narrator};
use common::process::DaemonProcess;

#[test]
fn seed_flows_failover_and_one_writer() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = DaemonProcess::start(dir.path(), &["vm1", "vm2", "vm3"], "256M");
    let mut n = Narrator::default();
    flows::failover(&mut n, &d);
    flows::one_writer(&mut n, &d);
    d.stop();
    let ok = n.summary();
    assert!(
        ok,
        "steps that did not behave as the seed says: {:?}",
        n.failures()
    );
    assert_eq!(n.passed(), 29, "every step of both flows ran and passed");
}

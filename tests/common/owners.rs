//! The guests' owner records in etcd (`owners/<guest>`, `src/pr/cluster/etcd/owner.rs`), read
//! and written with etcdctl as an operator, or a hostile etcd client, would.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::etcd::Etcd;

/// The keys of the disk [`super::etcd::ClusterDaemon::config`] names (`disk_id = "test-disk"`).
pub const PREFIX: &str = "/sharedisk/v1/test-disk/";

/// The guest's owner record (`Value::Null` when there is none or it is not JSON).
pub fn owner(etcd: &Etcd, guest: &str) -> Value {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &etcd.url, "get", "--print-value-only"])
        .arg(format!("{PREFIX}owners/{guest}"))
        .output()
        .expect("etcdctl runs (Debian's etcd-client)");
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// The node the guest's owner record names ("" when none).
pub fn owner_node(etcd: &Etcd, guest: &str) -> String {
    owner(etcd, guest)["node"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Writes `value` as the guest's owner record.
pub fn put_owner(etcd: &Etcd, guest: &str, value: &Value) {
    let ok = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &etcd.url, "put"])
        .arg(format!("{PREFIX}owners/{guest}"))
        .arg(value.to_string())
        .status()
        .expect("etcdctl runs (Debian's etcd-client)");
    assert!(ok.success(), "etcdctl put");
}

/// Waits up to `within` for the guest's owner record to satisfy `done` (`what` says how);
/// returns it.
#[track_caller]
pub fn wait_owner(
    etcd: &Etcd,
    guest: &str,
    within: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let end = Instant::now() + within;
    loop {
        let rec = owner(etcd, guest);
        if done(&rec) {
            return rec;
        }
        assert!(Instant::now() < end, "{guest}'s record: {what}: {rec}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

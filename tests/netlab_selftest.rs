//! The network lab of tests/common/netlab.rs on its own, without a daemon: the etcd cluster comes
//! up healthy, the leader is found and replaced when it stops, and every fault does what it says
//! (link down both ways, one-way drops, kill and restart), and labs clean up after themselves.
//! Needs root, `ip`, `nft`, `etcd` and `etcdctl`.

mod common;

use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use common::netlab::{self, NetLab};

/// Whether a datagram from `from` reaches `to` (which drains stale datagrams first).
fn delivers(from: &UdpSocket, to: &UdpSocket) -> bool {
    let mut buf = [0u8; 64];
    to.set_nonblocking(true).unwrap();
    while to.recv_from(&mut buf).is_ok() {}
    to.set_nonblocking(false).unwrap();
    let token = rand::random::<u64>().to_le_bytes();
    from.send_to(&token, to.local_addr().unwrap()).unwrap();
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        if let Ok((n, _)) = to.recv_from(&mut buf) {
            if buf[..n] == token {
                return true;
            }
        }
    }
    false
}

fn namespaces() -> String {
    let o = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn put(lab: &NetLab, from: usize, key: &str, value: &str) {
    let o = lab
        .etcdctl(from, &lab.etcd_endpoints())
        .args(["put", key, value])
        .output()
        .unwrap();
    assert!(o.status.success(), "put: {o:?}");
}

fn get(lab: &NetLab, from: usize, endpoint: usize, key: &str) -> Option<String> {
    let o = lab
        .etcdctl(from, &[netlab::client_url(endpoint)])
        .args(["get", "--print-value-only", key])
        .output()
        .unwrap();
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

#[test]
fn cluster_comes_up_and_addresses_stay_inside() {
    let lab = NetLab::new();
    assert_eq!(
        lab.etcd_endpoints(),
        [
            "http://10.77.0.1:2379",
            "http://10.77.0.2:2379",
            "http://10.77.0.3:2379"
        ]
    );
    for k in 1..=3 {
        assert!(lab.member_healthy(k), "member {k}");
    }
    let l = lab.leader();
    assert!((1..=3).contains(&l));
    // A write through all endpoints is read back from every member, from every host.
    put(&lab, 1, "/netlab/x", "42");
    for from in 1..=3 {
        for to in 1..=3 {
            assert_eq!(
                get(&lab, from, to, "/netlab/x").as_deref(),
                Some("42"),
                "h{from} -> e{to}"
            );
        }
    }
    // The lab's addresses exist only inside its namespaces.
    let root = Command::new("ip").args(["-j", "addr"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&root.stdout).contains("10.77.0."));
    let inside = lab.exec(2, "ip").args(["-j", "addr"]).output().unwrap();
    assert!(String::from_utf8_lossy(&inside.stdout).contains("\"10.77.0.2\""));
}

#[test]
fn link_down_cuts_both_ways_and_heals() {
    let lab = NetLab::new();
    let s1 = lab.udp_socket(1, 4000);
    let s3 = lab.udp_socket(3, 4000);
    assert!(delivers(&s1, &s3) && delivers(&s3, &s1), "healthy network");

    lab.link_down(3);
    assert!(!delivers(&s1, &s3), "h1 -> h3 with h3's link down");
    assert!(!delivers(&s3, &s1), "h3 -> h1 with h3's link down");
    assert!(!lab.reaches(1, 3) && !lab.reaches(3, 1));
    // The majority keeps its quorum; the cut-off member cannot serve linearizable reads.
    assert!(lab.member_healthy(1) && lab.member_healthy(2));
    assert!(!lab.member_healthy(3), "e3 healthy while cut off");
    put(&lab, 1, "/netlab/during", "cut");

    lab.link_up(3);
    lab.wait_healthy(Duration::from_secs(10));
    assert!(delivers(&s1, &s3) && delivers(&s3, &s1), "healed");
    assert_eq!(get(&lab, 3, 3, "/netlab/during").as_deref(), Some("cut"));
}

#[test]
fn one_way_drops() {
    let lab = NetLab::new();
    let s1 = lab.udp_socket(1, 4001);
    let s2 = lab.udp_socket(2, 4001);
    let lo1 = lab.udp_socket(1, 4002);

    lab.drop_outgoing(1, true);
    assert!(!delivers(&s1, &s2), "h1 -> h2 dropped");
    assert!(delivers(&s2, &s1), "h2 -> h1 still delivered");
    assert!(delivers(&s1, &lo1), "h1's own traffic is not dropped");
    assert!(!lab.reaches(2, 1), "TCP needs both ways");
    assert!(!lab.member_healthy(1), "e1 cannot reach a quorum");
    lab.drop_outgoing(1, false);
    assert!(delivers(&s1, &s2));
    lab.wait_healthy(Duration::from_secs(10));

    lab.drop_incoming(1, true);
    assert!(delivers(&s1, &s2), "h1 -> h2 still delivered");
    assert!(!delivers(&s2, &s1), "h2 -> h1 dropped");
    assert!(delivers(&s1, &lo1), "h1's own traffic is not dropped");
    let (rx0, _) = lab.uplink_packets(1);
    assert!(!lab.reaches(1, 2), "TCP needs both ways");
    let (rx1, _) = lab.uplink_packets(1);
    assert!(
        rx1 > rx0,
        "h2's answers arrive at h1's uplink before the drop"
    );
    lab.drop_incoming(1, false);
    assert!(delivers(&s2, &s1));
    lab.wait_healthy(Duration::from_secs(10));
}

#[test]
fn leader_stop_elects_another_and_kill_restart_keeps_data() {
    let mut lab = NetLab::new();
    put(&lab, 1, "/netlab/k", "v");
    let old = lab.leader();
    lab.stop_etcd(old);
    let t = Instant::now();
    let new = lab.leader();
    assert_ne!(new, old, "a stopped member cannot stay leader");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "election took {:?}",
        t.elapsed()
    );
    assert!(!lab.member_healthy(old), "a stopped member answered");
    lab.cont_etcd(old);
    lab.wait_healthy(Duration::from_secs(10));

    let k = lab.leader();
    lab.kill_etcd(k);
    let other = if k == 1 { 2 } else { 1 };
    assert!(!lab.reaches(other, k), "a killed member answered");
    put(&lab, other, "/netlab/k", "w");
    lab.restart_etcd(k);
    lab.wait_healthy(Duration::from_secs(20));
    assert_eq!(get(&lab, k, k, "/netlab/k").as_deref(), Some("w"));
}

#[test]
fn labs_are_independent_and_leave_nothing_behind() {
    // A namespace of a lab whose process is gone is removed when the next lab starts.
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let stale = format!("{}{dead_pid}-0-h1", netlab::PREFIX);
    assert!(Command::new("ip")
        .args(["netns", "add", &stale])
        .status()
        .unwrap()
        .success());

    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(NetLab::new);
        let b = s.spawn(NetLab::new);
        (a.join().unwrap(), b.join().unwrap())
    });
    assert!(
        !namespaces().contains(&stale),
        "stale namespace {stale} left"
    );
    assert_ne!(a.name, b.name);
    assert!(a.member_healthy(1) && b.member_healthy(1));
    // A fault in one lab does not touch the other.
    a.link_down(2);
    assert!(!a.reaches(1, 2));
    assert!(b.reaches(1, 2));

    let names: Vec<String> = (1..=3).map(|k| a.host_ns(k)).collect();
    let dir = a.dir().to_path_buf();
    drop(a);
    let list = namespaces();
    for n in &names {
        assert!(!list.contains(n.as_str()), "{n} left behind");
    }
    assert!(!dir.exists() || std::env::var_os("SHAREDISK_LAB_KEEP").is_some());
    assert!(b.member_healthy(2));
}

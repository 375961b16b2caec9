//! Cluster mode on one machine, quickly: one real etcd on loopback and two daemons in this
//! process sharing one image file. What one daemon commits the other holds by the time the
//! PR OUT returns; unit attentions cross daemons; a daemon whose etcd stops answering stops
//! admitting I/O at the end of its read lease and answers PR commands with BUSY, and comes
//! back when etcd does. (`tests/cluster_etcd.rs` runs separate hosts in network namespaces.)

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sharedisk::cluster::ClusterConfig;
use sharedisk::config::Config;
use sharedisk::pr::{Access, PrStatus, ProutRequest, ResType, ServiceAction};
use sharedisk::reservations::Refusal;
use sharedisk::sense;
use sharedisk::server::Server;

/// A free loopback port (closed again; etcd binds it right after).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Etcd {
    child: Child,
    url: String,
}

impl Etcd {
    fn start(dir: &Path) -> Etcd {
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.join("etcd.log")).unwrap();
        let child = Command::new("etcd")
            .args(["--name", "e1", "--data-dir"])
            .arg(dir.join("etcd"))
            .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("e1={peer_url}")])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd runs (Debian's etcd-server; tests/run.sh installs it)");
        let e = Etcd { child, url };
        let end = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&e.url[7..]).is_err() {
            assert!(Instant::now() < end, "etcd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        e
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cluster(etcd: &Etcd, node: &str) -> ClusterConfig {
    ClusterConfig {
        etcd: vec![etcd.url.clone()],
        node: node.into(),
        disk_id: "loopback-disk".into(),
        prefix: "/sharedisk/v1".into(),
        lease_ms: 600,
        renew_ms: None,
        drift: 0.01,
        max_io_ms: 300,
        hold_ms: 400,
        budget_ms: 5000,
        fence_hook: None,
    }
}

fn serve(dir: &Path, etcd: &Etcd, node: &str, guest: &str) -> Server {
    let mut c = Config::new(dir.join("disk.img"), dir.join(node), &[guest]);
    c.size = Some(16 << 20);
    c.direct = true;
    c.cluster = Some(cluster(etcd, node));
    Server::start(c).expect("the daemon joins the cluster")
}

fn register(key: u64) -> ProutRequest {
    ProutRequest::new(ServiceAction::Register).sa_key(key)
}

#[test]
fn two_daemons_share_one_state_and_fence_without_etcd() {
    common::daemon::init_logging();
    // O_DIRECT needs a disk file system; the crate's directory is one.
    let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    let etcd = Etcd::start(dir.path());
    let a = serve(dir.path(), &etcd, "h1", "a");
    let b = serve(dir.path(), &etcd, "h2", "b");
    let (ra, rb) = (a.arbiter(), b.arbiter());
    // Both start with the POWER ON RESET of a new nexus.
    assert_eq!(ra.take_unit_attention("a"), Some(sense::POWER_ON_RESET));
    assert_eq!(rb.take_unit_attention("b"), Some(sense::POWER_ON_RESET));

    // What h1 commits, h2 holds when the PR OUT returns (it acknowledged before GOOD).
    assert_eq!(ra.prout("a", &register(0xa), None), PrStatus::Good);
    assert!(rb.with(|s| s.is_registered("a")), "h2 holds h1's change");
    assert_eq!(rb.prout("b", &register(0xb), None), PrStatus::Good);
    let reserve = ProutRequest::new(ServiceAction::Reserve)
        .key(0xa)
        .typ(ResType::WriteExclusive);
    assert_eq!(ra.prout("a", &reserve, None), PrStatus::Good);
    assert_eq!(
        rb.admit("b", Access::Write).err(),
        Some(Refusal::Conflict),
        "Write Exclusive held on h1 refuses h2's writes"
    );
    assert!(rb.admit("b", Access::Read).is_ok());
    assert!(ra.admit("a", Access::Write).is_ok());
    assert_eq!(
        ra.with(|s| s.generation()),
        rb.with(|s| s.generation()),
        "one PRgeneration"
    );
    assert_eq!(rb.with(|s| s.generation()), 2, "REGISTER twice; RESERVE does not count");

    // h2 cannot take the reservation h1 holds.
    assert_eq!(rb.prout("b", &reserve.clone().key(0xb), None), PrStatus::Conflict);

    // PREEMPT from h2: h1's initiator is told (2A/05), then refused.
    let preempt = ProutRequest::new(ServiceAction::PreemptAndAbort)
        .key(0xb)
        .sa_key(0xa)
        .typ(ResType::WriteExclusive);
    assert_eq!(rb.prout("b", &preempt, None), PrStatus::Good);
    assert!(!ra.with(|s| s.is_registered("a")));
    assert_eq!(
        ra.take_unit_attention("a"),
        Some(sense::REGISTRATIONS_PREEMPTED),
        "the unit attention crossed to h1"
    );
    assert_eq!(ra.admit("a", Access::Write).err(), Some(Refusal::Conflict));
    assert!(rb.admit("b", Access::Write).is_ok());
    let (ea, eb) = (ra.held().0, rb.held().0);
    assert_eq!(ea, eb, "both daemons hold the same epoch");

    // etcd stops answering: each daemon admits until its lease ends, holds new I/O for
    // hold_ms, then refuses it as unavailable; PR commands get BUSY.
    etcd.signal("-STOP");
    let stopped = Instant::now();
    let end = stopped + Duration::from_secs(5);
    while rb.admit("b", Access::Write).is_ok() {
        assert!(Instant::now() < end, "h2 kept admitting without etcd");
        std::thread::sleep(Duration::from_millis(20));
    }
    let lost = stopped.elapsed();
    assert!(
        lost <= Duration::from_millis(600 + 400 + 100) + Duration::from_millis(300),
        "I/O failed {lost:?} after etcd stopped: more than the lease and the hold"
    );
    assert_eq!(rb.admit("b", Access::Read).err(), Some(Refusal::Unavailable));
    assert_eq!(rb.prout("b", &register(0xc), None), PrStatus::Busy);
    assert!(!rb.current(), "PR IN gets BUSY too");

    // etcd is back: the lease is renewed and I/O flows again.
    etcd.signal("-CONT");
    let back = Instant::now();
    while rb.admit("b", Access::Write).is_err() {
        assert!(back.elapsed() < Duration::from_secs(10), "h2 never came back");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(rb.current());
    // h1 comes back on its own renewal; its initiator is still preempted.
    while ra.admit("a", Access::Read).is_err() {
        assert!(back.elapsed() < Duration::from_secs(10), "h1 never came back");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(ra.admit("a", Access::Write).err(), Some(Refusal::Conflict));
    drop(a);
    drop(b);
}

//! Cluster mode with iSCSI portals: two daemon processes (nodes h1 and h2) in cluster mode on
//! one real etcd serve one disk, each with its own portal, and share one reservation state. An
//! iSCSI session's I_T nexus is an initiator of the daemon whose portal it is logged in to (its
//! unit attentions are queued there, the other daemon sends them with its changes), and
//! fencing holds across daemons and transports: once a PREEMPT AND ABORT through one portal
//! returns GOOD, no write of the victim's session on the other portal lands on the image.
//!
//! The raw initiator of `tests/common/iscsi_client.rs` drives the sessions, the raw vhost-user
//! SCSI client the guest; the image is read from the host to see what landed.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::ctl::ctl_json;
use common::etcd::{signal, ClusterDaemon, Etcd, FAST};
use common::image::image_bytes;
use common::iscsi_client::{free_port, IscsiClient, INITIATOR_A, INITIATOR_B};
use common::scsi_client::{
    ScsiClient, ScsiResult, BUSY, PRIN_READ_FULL_STATUS, PRIN_READ_RESERVATION,
    RESERVATION_CONFLICT, SA_PREEMPT, SA_PREEMPT_AND_ABORT, SA_REGISTER, SA_RESERVE,
};

/// Write Exclusive, and Write Exclusive - Registrants Only.
const WE: u8 = 1;
const WE_RO: u8 = 5;
const ISID_1: [u8; 6] = [0x80, 0x12, 0x34, 0x56, 0x00, 0x01];
const ISID_2: [u8; 6] = [0x80, 0x12, 0x34, 0x56, 0x00, 0x02];
const REGISTRATIONS_PREEMPTED: (u8, u8, u8) = (0x06, 0x2a, 0x05);
const CHECK_CONDITION: u8 = 0x02;

/// The two daemons load the machine; one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// One node: its daemon process, its portal and the target name it logged.
struct Node {
    daemon: ClusterDaemon,
    portal: SocketAddr,
    target: String,
    cfg: PathBuf,
}

/// Fields drop in order: the daemons stop before etcd and the directory go.
struct Lab {
    h1: Node,
    h2: Node,
    _etcd: Etcd,
    dir: tempfile::TempDir,
}

/// Node `node` in cluster mode with `guests` and a portal on a free loopback port that admits
/// any initiator; the target name left to its default.
fn start_node(dir: &Path, etcd: &Etcd, node: &str, guests: &[&str]) -> Node {
    let cfg = ClusterDaemon::config(
        dir,
        &etcd.endpoints(),
        node,
        guests,
        &FAST,
        "insecure = true\n",
    );
    let portal: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "[iscsi]\nlisten = [\"{portal}\"]\nallow_any_initiator = true\n"
    ));
    std::fs::write(&cfg, text).unwrap();
    restart_node(dir, node, cfg, portal, guests)
}

/// Starts node `node` from its configuration `cfg` (again).
fn restart_node(dir: &Path, node: &str, cfg: PathBuf, portal: SocketAddr, guests: &[&str]) -> Node {
    let daemon = ClusterDaemon::start_config(dir, node, &cfg, guests, &[]);
    let target = served_target(&daemon);
    Node {
        daemon,
        portal,
        target,
        cfg,
    }
}

/// The target name from the log line `iscsi: target NAME on ...` (waited for up to 20 s).
fn served_target(d: &ClusterDaemon) -> String {
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        if let Some(line) = d.log_text().lines().find(|l| l.contains("iscsi: target ")) {
            let rest = line.split("iscsi: target ").nth(1).unwrap_or_default();
            return rest.split_whitespace().next().unwrap_or_default().to_string();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{}: no portal started: {}", d.node, d.log_text());
}

impl Lab {
    /// h1 with `h1_guests`, then h2, each with a portal.
    fn start(h1_guests: &[&str]) -> Lab {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let etcd = Etcd::start(dir.path());
        let h1 = start_node(dir.path(), &etcd, "h1", h1_guests);
        let h2 = start_node(dir.path(), &etcd, "h2", &[]);
        Lab {
            h1,
            h2,
            _etcd: etcd,
            dir,
        }
    }

    fn image(&self) -> PathBuf {
        self.dir.path().join("disk.img")
    }

    /// A session of `initiator` with `isid` to `node`'s portal, past its unit attentions.
    fn login(node: &Node, initiator: &str, isid: [u8; 6]) -> IscsiClient {
        let mut c = IscsiClient::login(node.portal, initiator, &node.target, isid)
            .unwrap_or_else(|s| panic!("login to {} refused: {s:#06x}", node.daemon.node));
        c.drain_ua();
        c
    }
}

/// `f` again while it answers BUSY (a PR command of a daemon whose lease is being renewed, or
/// that waits for a dead member's bound), for up to 30 s.
fn retry_busy(mut f: impl FnMut() -> ScsiResult) -> ScsiResult {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let r = f();
        if r.status != BUSY || Instant::now() > end {
            return r;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[track_caller]
fn good(r: &ScsiResult, what: &str) {
    assert!(
        r.status == 0 && r.sense.is_none(),
        "{what}: expected GOOD, got {r:?}"
    );
}

#[track_caller]
fn conflict(r: &ScsiResult, what: &str) {
    assert_eq!(r.status, RESERVATION_CONFLICT, "{what}: {r:?}");
}

#[track_caller]
fn unit_attention(r: &ScsiResult, s: (u8, u8, u8), what: &str) {
    assert_eq!((r.status, r.sense), (CHECK_CONDITION, Some(s)), "{what}");
}

/// READ RESERVATION: the holder's key and the type, if reserved.
fn reservation(c: &mut IscsiClient) -> Option<(u64, u8)> {
    let r = retry_busy(|| c.cmd(&ScsiClient::prin_cdb(PRIN_READ_RESERVATION, 64), &[], 64));
    good(&r, "READ RESERVATION");
    let len = u32::from_be_bytes(r.data[4..8].try_into().unwrap());
    (len >= 16).then(|| {
        (
            u64::from_be_bytes(r.data[8..16].try_into().unwrap()),
            r.data[21] & 0x0f,
        )
    })
}

fn read_keys(c: &mut IscsiClient) -> Vec<u64> {
    let r = retry_busy(|| c.cmd(&ScsiClient::prin_cdb(0, 4096), &[], 4096));
    good(&r, "READ KEYS");
    let len = u32::from_be_bytes(r.data[4..8].try_into().unwrap()) as usize;
    r.data[8..8 + len]
        .chunks(8)
        .map(|k| u64::from_be_bytes(k.try_into().unwrap()))
        .collect()
}

/// The nexus name an ISID gives `initiator` (what READ FULL STATUS shows).
fn nexus(initiator: &str, isid: [u8; 6]) -> String {
    let hex: String = isid.iter().map(|b| format!("{b:02x}")).collect();
    format!("{initiator},i,0x{hex}")
}

/// A 512-byte block tagged with `seq`.
fn tagged(seq: u64) -> Vec<u8> {
    let mut b = vec![0u8; 512];
    b[..8].copy_from_slice(b"victim!!");
    b[8..16].copy_from_slice(&seq.to_le_bytes());
    b
}

/// The tag of a block [`tagged`] wrote, `None` for anything else.
fn tag_of(b: &[u8]) -> Option<u64> {
    (&b[..8] == b"victim!!").then(|| u64::from_le_bytes(b[8..16].try_into().unwrap()))
}

/// The initiators h2 acknowledged with, as h1's `ctl cluster status` shows them.
fn h2_initiators(lab: &Lab) -> Vec<String> {
    let s = ctl_json(&lab.h1.daemon.control(), &["cluster", "status"]);
    let members = s["members"].as_array().cloned().unwrap_or_default();
    let h2 = members.iter().find(|m| m["node"] == "h2").expect("h2 is a member");
    h2["initiators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// Waits up to 10 s (a few renewals) for h2's acknowledged initiators to be `want`.
fn wait_h2_initiators(lab: &Lab, want: &[String]) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let got = h2_initiators(lab);
        if got == want {
            return;
        }
        assert!(Instant::now() < end, "h2 serves {got:?}, expected {want:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn one_initiator_with_a_session_to_each_portal_sees_one_state() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::start(&[]);
    assert_eq!(
        lab.h1.target, lab.h2.target,
        "the default target name comes from the disk_id"
    );
    // One initiator, two sessions (two ISIDs): two nexuses, one through each daemon.
    let mut a = Lab::login(&lab.h1, INITIATOR_A, ISID_1);
    let mut b = Lab::login(&lab.h2, INITIATOR_A, ISID_2);
    good(&retry_busy(|| a.prout(SA_REGISTER, 0, 0, 0xa1)), "REGISTER on h1");
    assert_eq!(read_keys(&mut b), vec![0xa1], "READ KEYS on h2");
    good(&retry_busy(|| b.prout(SA_REGISTER, 0, 0, 0xb2)), "REGISTER on h2");
    good(&retry_busy(|| b.prout(SA_RESERVE, WE, 0xb2, 0)), "RESERVE on h2");
    assert_eq!(reservation(&mut a), Some((0xb2, WE)), "h1 sees h2's reservation");
    conflict(&a.write16(8, &[0x11; 512]), "h1's nexus writes under h2's WE");
    good(&b.write16(8, &[0x22; 512]), "the holder writes through h2");
    let full = retry_busy(|| a.cmd(&ScsiClient::prin_cdb(PRIN_READ_FULL_STATUS, 4096), &[], 4096));
    good(&full, "READ FULL STATUS on h1");
    let text = String::from_utf8_lossy(&full.data);
    for isid in [ISID_1, ISID_2] {
        let n = nexus(INITIATOR_A, isid);
        assert!(text.contains(&n), "READ FULL STATUS names {n}: {text:?}");
    }
    // A PREEMPT through h1 reaches h2's nexus as a unit attention queued there.
    good(&retry_busy(|| a.prout(SA_PREEMPT, WE, 0xa1, 0xb2)), "PREEMPT on h1");
    unit_attention(
        &b.write16(8, &[0x33; 512]),
        REGISTRATIONS_PREEMPTED,
        "h2's nexus after h1's PREEMPT",
    );
    conflict(&b.write16(8, &[0x33; 512]), "h2's nexus, preempted");
    assert_eq!(image_bytes(&lab.image(), 8 * 512, 512), vec![0x22; 512]);
    assert_eq!(reservation(&mut b), Some((0xa1, WE)), "h2 sees h1's reservation");

    // h2's nexuses are its initiators while their sessions live, and no longer: sessions that
    // come and go with new ISIDs leave nothing behind in the shared bookkeeping.
    wait_h2_initiators(&lab, &[nexus(INITIATOR_A, ISID_2)]);
    for i in 0..8u8 {
        let mut c = Lab::login(&lab.h2, INITIATOR_B, [0x80, 0, 0, 0x77, 0, i]);
        good(&c.read16(16, 1), "a session that comes and goes reads");
        assert!(c.logout(), "logout");
    }
    assert!(b.logout(), "logout");
    wait_h2_initiators(&lab, &[]);
}

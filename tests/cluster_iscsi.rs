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
use common::etcd::{signal, ClusterDaemon, Etcd, Timing};
use common::image::image_bytes;
use common::iscsi_client::{free_port, IscsiClient, INITIATOR_A, INITIATOR_B, TARGET_LOGGED};
use common::logs::word_after;
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

/// Leases long enough for a loaded 2-core machine (renewals late by a second do not cost the
/// lease), short enough that the dead member's wait bound (about 2 s) keeps the test short.
const TIMING: Timing = Timing {
    lease_ms: 1500,
    max_io_ms: 500,
    hold_ms: 2000,
    budget_ms: 10000,
};

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
        &TIMING,
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
    word_after(|| d.log_text(), TARGET_LOGGED, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("{}: no portal started: {}", d.node, d.log_text()))
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

/// A PR OUT through `c` (service action, type, reservation key, service action reservation
/// key), sent again while BUSY: GOOD expected.
#[track_caller]
fn prout_good(c: &mut IscsiClient, sa: u8, typ: u8, rk: u64, sark: u64, what: &str) {
    good(&retry_busy(|| c.prout(sa, typ, rk, sark)), what);
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
    let h2 = members
        .iter()
        .find(|m| m["node"] == "h2")
        .expect("h2 is a member");
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
    let check = common::ctl::sharedisk(&["config", "check", lab.h1.cfg.to_str().unwrap()]);
    assert!(
        check
            .stdout
            .contains(&format!("iscsi target:   {}", lab.h1.target)),
        "config check names the served target: {}{}",
        check.stdout,
        check.stderr
    );
    // One initiator, two sessions (two ISIDs): two nexuses, one through each daemon.
    let mut a = Lab::login(&lab.h1, INITIATOR_A, ISID_1);
    let mut b = Lab::login(&lab.h2, INITIATOR_A, ISID_2);
    prout_good(&mut a, SA_REGISTER, 0, 0, 0xa1, "REGISTER on h1");
    assert_eq!(read_keys(&mut b), vec![0xa1], "READ KEYS on h2");
    prout_good(&mut b, SA_REGISTER, 0, 0, 0xb2, "REGISTER on h2");
    prout_good(&mut b, SA_RESERVE, WE, 0xb2, 0, "RESERVE on h2");
    assert_eq!(
        reservation(&mut a),
        Some((0xb2, WE)),
        "h1 sees h2's reservation"
    );
    conflict(
        &retry_busy(|| a.write16(8, &[0x11; 512])),
        "h1's nexus writes under h2's WE",
    );
    good(
        &retry_busy(|| b.write16(8, &[0x22; 512])),
        "the holder writes through h2",
    );
    let full = retry_busy(|| {
        a.cmd(
            &ScsiClient::prin_cdb(PRIN_READ_FULL_STATUS, 4096),
            &[],
            4096,
        )
    });
    good(&full, "READ FULL STATUS on h1");
    let text = String::from_utf8_lossy(&full.data);
    for isid in [ISID_1, ISID_2] {
        let n = nexus(INITIATOR_A, isid);
        assert!(text.contains(&n), "READ FULL STATUS names {n}: {text:?}");
    }
    // A PREEMPT through h1 reaches h2's nexus as a unit attention queued there.
    prout_good(&mut a, SA_PREEMPT, WE, 0xa1, 0xb2, "PREEMPT on h1");
    unit_attention(
        &retry_busy(|| b.write16(8, &[0x33; 512])),
        REGISTRATIONS_PREEMPTED,
        "h2's nexus after h1's PREEMPT",
    );
    conflict(
        &retry_busy(|| b.write16(8, &[0x33; 512])),
        "h2's nexus, preempted",
    );
    assert_eq!(image_bytes(&lab.image(), 8 * 512, 512), vec![0x22; 512]);
    assert_eq!(
        reservation(&mut b),
        Some((0xa1, WE)),
        "h2 sees h1's reservation"
    );

    // h2's nexuses are its initiators while their sessions live, and no longer: sessions that
    // come and go with new ISIDs leave nothing behind in the shared bookkeeping.
    wait_h2_initiators(&lab, &[nexus(INITIATOR_A, ISID_2)]);
    for i in 0..8u8 {
        let mut c = Lab::login(&lab.h2, INITIATOR_B, [0x80, 0, 0, 0x77, 0, i]);
        good(
            &retry_busy(|| c.read16(16, 1)),
            "a session that comes and goes reads",
        );
        assert!(c.logout(), "logout");
    }
    assert!(b.logout(), "logout");
    wait_h2_initiators(&lab, &[]);
}

#[test]
fn preempt_and_abort_through_one_portal_fences_the_victims_session_on_the_other() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::start(&[]);
    let mut holder = Lab::login(&lab.h1, INITIATOR_A, ISID_1);
    let mut victim = Lab::login(&lab.h2, INITIATOR_B, ISID_2);
    prout_good(&mut holder, SA_REGISTER, 0, 0, 0xa1, "holder REGISTER");
    prout_good(
        &mut holder,
        SA_RESERVE,
        WE_RO,
        0xa1,
        0,
        "holder RESERVE (registrants only)",
    );
    prout_good(&mut victim, SA_REGISTER, 0, 0, 0xb2, "victim REGISTER");
    // The victim writes tagged blocks to LBA 32 through h2, one after the other, until told to
    // stop; the tags of the writes answered GOOD are kept.
    const LBA: u64 = 32;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut landed, mut refused) = (Vec::new(), Vec::new());
            let mut seq = 1u64;
            while !stop.load(Ordering::SeqCst) {
                let cdb = common::scsi_client::write16_cdb(LBA, 1);
                match victim.try_cmd(&cdb, &tagged(seq), 0) {
                    Some(r) if r.status == 0 => landed.push(seq),
                    // BUSY (a lease renewal late on a loaded machine) changes nothing.
                    Some(r) if r.status == BUSY => {}
                    Some(r) => refused.push((seq, r.status, r.sense)),
                    None => break,
                }
                seq += 1;
            }
            (landed, refused)
        })
    };
    // Let some writes land, then fence the victim through the other daemon's portal.
    std::thread::sleep(Duration::from_millis(500));
    let sent = Instant::now();
    let r = retry_busy(|| holder.prout(SA_PREEMPT_AND_ABORT, WE_RO, 0xa1, 0xb2));
    good(&r, "PREEMPT AND ABORT through h1");
    // A figure, not an assertion: how long the victim's daemon took to be settled.
    println!(
        "PREEMPT AND ABORT through h1 of a session writing through h2: GOOD after {:?}",
        sent.elapsed()
    );
    let at_good = image_bytes(&lab.image(), LBA * 512, 512);
    // The victim keeps trying for a while after the GOOD.
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::SeqCst);
    let (landed, refused) = writer.join().unwrap();
    let after = image_bytes(&lab.image(), LBA * 512, 512);
    assert!(
        landed.len() >= 2,
        "the victim wrote before the preempt: {landed:?}"
    );
    assert!(
        refused.len() >= 2,
        "the victim tried after the preempt: {refused:?}"
    );
    assert_eq!(
        tag_of(&after),
        tag_of(&at_good),
        "a write of the victim landed after PREEMPT AND ABORT returned GOOD"
    );
    let last = tag_of(&after).expect("the victim's block");
    assert!(
        landed.contains(&last) && landed.iter().all(|&s| s <= last),
        "the block holds the last write answered GOOD ({last}; GOOD: {landed:?})"
    );
    // The first refusal reports the preempt (or a command it aborted), the rest conflict.
    for (_, status, sense) in &refused[1..] {
        assert_eq!(
            (*status, *sense),
            (RESERVATION_CONFLICT, None),
            "{refused:?}"
        );
    }
    assert_eq!(read_keys(&mut holder), vec![0xa1]);
}

#[test]
fn a_guest_on_one_daemon_and_an_iscsi_session_on_the_other_fence_each_other() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::start(&["g1"]);
    let mut guest = ScsiClient::connect(&lab.h1.daemon.scsi("g1"));
    guest.drain_ua();
    let mut session = Lab::login(&lab.h2, INITIATOR_A, ISID_1);
    let image = lab.image();
    good(
        &retry_busy(|| guest.prout(SA_REGISTER, 0, 0, 0x11, false)),
        "guest REGISTER",
    );
    good(
        &retry_busy(|| guest.prout(SA_RESERVE, WE_RO, 0x11, 0, false)),
        "guest RESERVE",
    );
    prout_good(&mut session, SA_REGISTER, 0, 0, 0x22, "iSCSI REGISTER");
    good(
        &retry_busy(|| guest.write16(40, &[0x01; 512])),
        "guest writes",
    );
    good(
        &retry_busy(|| session.write16(41, &[0x02; 512])),
        "iSCSI session writes",
    );
    let full = retry_busy(|| guest.prin(PRIN_READ_FULL_STATUS, 4096));
    let n = nexus(INITIATOR_A, ISID_1);
    assert!(
        String::from_utf8_lossy(&full.data).contains(&n),
        "the guest's READ FULL STATUS names {n}: {full:?}"
    );

    // The guest on h1 fences the iSCSI session on h2.
    good(
        &retry_busy(|| guest.prout(SA_PREEMPT_AND_ABORT, WE_RO, 0x11, 0x22, false)),
        "guest PREEMPT AND ABORT",
    );
    unit_attention(
        &retry_busy(|| session.write16(41, &[0x03; 512])),
        REGISTRATIONS_PREEMPTED,
        "the session on h2",
    );
    conflict(
        &retry_busy(|| session.write16(41, &[0x03; 512])),
        "the preempted session",
    );
    assert_eq!(image_bytes(&image, 41 * 512, 512), vec![0x02; 512]);

    // And the reverse: the session registers again and fences the guest.
    prout_good(
        &mut session,
        SA_REGISTER,
        0,
        0,
        0x22,
        "iSCSI REGISTER again",
    );
    prout_good(
        &mut session,
        SA_PREEMPT_AND_ABORT,
        WE_RO,
        0x22,
        0x11,
        "iSCSI PREEMPT AND ABORT",
    );
    let r = retry_busy(|| guest.write16(40, &[0x04; 512]));
    assert_eq!(
        (r.status, r.sense),
        (CHECK_CONDITION, Some(REGISTRATIONS_PREEMPTED)),
        "the guest on h1: {r:?}"
    );
    let r = retry_busy(|| guest.write16(40, &[0x04; 512]));
    assert_eq!(r.status, RESERVATION_CONFLICT, "the preempted guest: {r:?}");
    assert_eq!(image_bytes(&image, 40 * 512, 512), vec![0x01; 512]);
    good(
        &retry_busy(|| session.write16(41, &[0x05; 512])),
        "the new holder writes",
    );
}

#[test]
fn a_killed_daemons_session_keeps_its_reservation_and_another_portal_preempts_it() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = Lab::start(&[]);
    let mut a = Lab::login(&lab.h1, INITIATOR_A, ISID_1);
    {
        let mut b = Lab::login(&lab.h2, INITIATOR_B, ISID_2);
        prout_good(&mut b, SA_REGISTER, 0, 0, 0xb2, "REGISTER on h2");
        prout_good(&mut b, SA_RESERVE, WE, 0xb2, 0, "RESERVE on h2");
        good(
            &retry_busy(|| b.write16(48, &[0x0b; 512])),
            "the holder writes",
        );
        // h2 dies with the session logged in and holding the reservation.
        signal(lab.h2.daemon.child.id(), "-KILL");
        let _ = lab.h2.daemon.child.wait();
    }
    assert_eq!(
        reservation(&mut a),
        Some((0xb2, WE)),
        "the reservation outlives h2"
    );
    assert_eq!(read_keys(&mut a), vec![0xb2]);
    // h1's PR OUTs wait for the dead member's lease bound, then proceed.
    prout_good(&mut a, SA_REGISTER, 0, 0, 0xa1, "REGISTER on h1");
    conflict(
        &retry_busy(|| a.write16(48, &[0x0a; 512])),
        "h1's nexus under h2's session's WE",
    );
    prout_good(&mut a, SA_PREEMPT, WE, 0xa1, 0xb2, "PREEMPT on h1");
    good(
        &retry_busy(|| a.write16(48, &[0x0a; 512])),
        "the new holder writes",
    );
    assert_eq!(reservation(&mut a), Some((0xa1, WE)));

    // h2 comes back: the dead session's nexus logs in again, holding nothing.
    let (cfg, portal) = (lab.h2.cfg.clone(), lab.h2.portal);
    lab.h2 = restart_node(lab.dir.path(), "h2", cfg, portal, &[]);
    let mut b = Lab::login(&lab.h2, INITIATOR_B, ISID_2);
    assert_eq!(
        read_keys(&mut b),
        vec![0xa1],
        "READ KEYS on the restarted h2"
    );
    conflict(
        &retry_busy(|| b.write16(48, &[0x0b; 512])),
        "the preempted nexus on the restarted h2",
    );
    assert_eq!(image_bytes(&lab.image(), 48 * 512, 512), vec![0x0a; 512]);
}

#[test]
fn a_nexus_preempted_while_it_had_no_session_hears_of_it_at_its_next_login() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::start(&[]);
    let mut x = Lab::login(&lab.h2, INITIATOR_A, ISID_1);
    prout_good(&mut x, SA_REGISTER, 0, 0, 0x0a, "x REGISTER");
    assert!(x.logout(), "logout");
    // Another session of the same daemon preempts x while x has no session anywhere: the
    // unit attention it establishes for x has no daemon to be queued on.
    let mut y = Lab::login(&lab.h2, INITIATOR_B, ISID_2);
    prout_good(&mut y, SA_REGISTER, 0, 0, 0x0b, "y REGISTER");
    prout_good(&mut y, SA_RESERVE, WE, 0x0b, 0, "y RESERVE");
    prout_good(&mut y, SA_PREEMPT, WE, 0x0b, 0x0a, "y PREEMPT x");
    // x logs in again, here and on the other daemon: each time a new initiator there (29/00),
    // told that the state may have changed before it finds its key gone.
    for node in [&lab.h2, &lab.h1] {
        let mut x = IscsiClient::login(node.portal, INITIATOR_A, &node.target, ISID_1).unwrap();
        let r = x.cmd(&[0u8; 6], &[], 0);
        assert_eq!(
            (r.status, r.sense),
            (CHECK_CONDITION, Some((0x06, 0x29, 0x00))),
            "x's first command on {}",
            node.daemon.node
        );
        x.drain_ua();
        conflict(&retry_busy(|| x.write16(56, &[0x0a; 512])), "x, preempted");
        assert_eq!(read_keys(&mut x), vec![0x0b]);
        assert!(x.logout(), "logout");
    }
}

#[test]
fn the_registration_limit_counts_the_nexuses_of_every_daemon() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::start(&[]);
    // 128 sessions, one after the other, half through each portal, each a new ISID (as
    // libiscsi logs in), each registering and logging out: its registration stays.
    let isid = |i: u16| [0x80, 0, 0, 0x12, (i >> 8) as u8, i as u8];
    for i in 0..128u16 {
        let node = if i % 2 == 0 { &lab.h1 } else { &lab.h2 };
        let mut c = Lab::login(node, INITIATOR_A, isid(i));
        let key = 0x1000 + u64::from(i);
        prout_good(&mut c, SA_REGISTER, 0, 0, key, "REGISTER");
        assert!(c.logout(), "logout");
    }
    const INSUFFICIENT_REGISTRATION_RESOURCES: (u8, u8, u8) = (0x05, 0x55, 0x04);
    for node in [&lab.h1, &lab.h2] {
        let mut c = Lab::login(node, INITIATOR_B, ISID_2);
        let r = retry_busy(|| c.prout(SA_REGISTER, 0, 0, 0xb2));
        assert_eq!(
            (r.status, r.sense),
            (CHECK_CONDITION, Some(INSUFFICIENT_REGISTRATION_RESOURCES)),
            "the 129th registration, through {}",
            node.daemon.node
        );
        assert_eq!(read_keys(&mut c).len(), 128);
        assert!(c.logout(), "logout");
    }
    // The sessions that ended are no daemon's initiators any more.
    wait_h2_initiators(&lab, &[]);
}

/// `iscsi-test-cu --dataloss` with libiscsi's two initiator names running `tests` against h1's
/// portal, and h2's as the multipath URL: its output, and its Run Summary's `tests` counts
/// (run, passed, failed).
fn iscsi_test_cu(lab: &Lab, tests: &str) -> (String, [usize; 3]) {
    let url = |n: &Node| format!("iscsi://{}/{}/0", n.portal, n.target);
    let out = std::process::Command::new("iscsi-test-cu")
        .args([&format!("--test={tests}"), "--dataloss", "-i", INITIATOR_A])
        .args(["-I", INITIATOR_B, &url(&lab.h1), &url(&lab.h2)])
        .output()
        .expect("iscsi-test-cu (Debian's libiscsi-bin, images/install-deps.sh) must be installed");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    // CUnit's summary line: `tests  TOTAL  RAN  PASSED  FAILED  INACTIVE`.
    let counts = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("tests"))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect::<Vec<usize>>()
        })
        .find(|n| n.len() >= 4)
        .map_or([0; 3], |n| [n[1], n[2], n[3]]);
    (text, counts)
}

/// libiscsi's PR suites through h1 (committed through etcd, settled with h2), and its multipath
/// write-then-read with one path on each daemon. Not run: MultipathIO.Reset (a LOGICAL UNIT
/// RESET's unit attentions stay on the daemon that ran it, docs/cluster.md "Known limits") and
/// the COMPARE AND WRITE tests (not provided in cluster mode, see
/// `compare_and_write_is_refused_and_not_advertised_in_cluster_mode`).
#[test]
fn libiscsi_persistent_reservation_and_multipath_suites_across_two_daemons() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::start(&[]);
    for tests in ["ALL.Prin*", "ALL.Prout*", "ALL.MultipathIO.Simple"] {
        let (text, [ran, passed, failed]) = iscsi_test_cu(&lab, tests);
        println!("iscsi-test-cu {tests}: {ran} run, {passed} passed, {failed} failed");
        assert!(ran >= 1 && failed == 0 && passed == ran, "{tests}:\n{text}");
        assert!(
            !text.contains("[SKIPPED]"),
            "{tests}: a test skipped:\n{text}"
        );
    }
}

/// A known limit (docs/cluster.md, "One nexus logged in to two daemons"): the daemons do not
/// reinstate each other's sessions, so one initiator name and ISID logged in to both runs as two
/// sessions of one nexus. Reports what it saw; asserts what stays safe: one registration, and
/// once preempted, no write of the nexus through either daemon.
#[test]
fn known_limit_one_nexus_logged_in_to_two_daemons() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::start(&[]);
    let mut on_h1 = Lab::login(&lab.h1, INITIATOR_A, ISID_1);
    let mut on_h2 = Lab::login(&lab.h2, INITIATOR_A, ISID_1);
    let still_open = on_h1.try_cmd(&[0u8; 6], &[], 0).is_some();
    println!("the session on h1 after the same nexus logged in to h2: open {still_open}");
    prout_good(&mut on_h1, SA_REGISTER, 0, 0, 0x0a, "REGISTER on h1");
    assert_eq!(
        read_keys(&mut on_h2),
        vec![0x0a],
        "one registration, seen on h2"
    );
    let mut other = Lab::login(&lab.h1, INITIATOR_B, ISID_2);
    prout_good(&mut other, SA_REGISTER, 0, 0, 0x0b, "REGISTER");
    prout_good(&mut other, SA_RESERVE, WE, 0x0b, 0, "RESERVE");
    prout_good(&mut other, SA_PREEMPT, WE, 0x0b, 0x0a, "PREEMPT");
    for (name, c) in [("h1", &mut on_h1), ("h2", &mut on_h2)] {
        let first = retry_busy(|| c.write16(64, &[0x0a; 512]));
        println!(
            "the nexus's first write through {name} after the preempt: status {:#04x} sense {:02x?}",
            first.status, first.sense
        );
        conflict(&retry_busy(|| c.write16(64, &[0x0a; 512])), name);
    }
    assert_eq!(image_bytes(&lab.image(), 64 * 512, 512), vec![0; 512]);
}

/// COMPARE AND WRITE is not provided in cluster mode (README, "Not provided"): its atomicity
/// would need a lock across daemons, which does not exist. Through either portal it is refused
/// as an unsupported opcode (05/20/00) and advertised nowhere: MAXIMUM COMPARE AND WRITE LENGTH
/// 0 in the Block Limits VPD, absent from REPORT SUPPORTED OPERATION CODES. Nothing is written.
#[test]
fn compare_and_write_is_refused_and_not_advertised_in_cluster_mode() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::start(&[]);
    const INVALID_OPCODE: (u8, u8, u8) = (0x05, 0x20, 0x00);
    let mut caw = [0u8; 16];
    caw[0] = 0x89;
    caw[9] = 8; // LBA 8
    caw[13] = 1;
    let data = [vec![0u8; 512], vec![0xc5; 512]].concat();
    for (i, node) in [&lab.h1, &lab.h2].into_iter().enumerate() {
        let mut c = Lab::login(node, INITIATOR_A, [0x80, 0, 0, 0x13, 0, i as u8]);
        let what = &node.daemon.node;
        let r = retry_busy(|| c.cmd(&caw, &data, 0));
        assert_eq!(
            (r.status, r.sense),
            (CHECK_CONDITION, Some(INVALID_OPCODE)),
            "COMPARE AND WRITE through {what}"
        );
        let vpd = c.cmd(&[0x12, 1, 0xb0, 0, 64, 0], &[], 64);
        good(&vpd, "INQUIRY Block Limits");
        assert_eq!(
            vpd.data[5], 0,
            "MAXIMUM COMPARE AND WRITE LENGTH through {what}"
        );
        let one = c.cmd(&[0xa3, 0x0c, 0x01, 0x89, 0, 0, 0, 0, 0, 64, 0, 0], &[], 64);
        good(&one, "REPORT SUPPORTED OPERATION CODES, one command");
        assert_eq!(
            one.data[1] & 0x07,
            0x01,
            "SUPPORT: not supported, through {what}"
        );
        let all = c.cmd(&[0xa3, 0x0c, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0], &[], 4096);
        good(&all, "REPORT SUPPORTED OPERATION CODES, all");
        let listed = all
            .data
            .get(4..)
            .unwrap_or_default()
            .chunks(8)
            .any(|d| d[0] == 0x89);
        assert!(!listed, "COMPARE AND WRITE listed through {what}");
        assert!(c.logout(), "logout");
    }
    let block = image_bytes(&lab.image(), 8 * 512, 512);
    assert!(block.iter().all(|&b| b == 0), "nothing written");
}

//! A guest moving between two daemons of a cluster (a live migration to another host), through
//! one real etcd, with raw vhost-user frontends standing for the source and destination QEMUs
//! (`src/pr/cluster/etcd/owner.rs`): the destination daemon admits nothing of the guest before
//! the source daemon's rings stopped and the move is committed, the guest keeps its registration
//! and reservation and its pending unit attention moves with it; a daemon killed mid-move
//! (test-hooks failpoints) leaves the guest with exactly one owner once it is restarted.

mod common;

use std::path::Path;
use std::time::Duration;

use common::ctl::{ctl, ctl_json};
use common::etcd::{ClusterDaemon, Etcd, Timing, FAST};
use common::image::image_bytes;
use common::owners::{owner, put_owner, wait_owner};
use common::scsi_client::*;
use common::vu_frontend::{VuFrontend, TIMEOUT, VIRTIO_BLK_S_OK};

/// What a daemon logs when the record of a guest its device holds names another daemon.
const TAKEN_HERE: &str = "while this daemon owned it";

/// How long a test waits for a log line that follows a read of etcd: [`TIMEOUT`] and a lease
/// more (a read of a stopped etcd gives up after a lease).
const LOG_WAIT: Duration = Duration::from_millis(10_000 + STEADY.lease_ms);

/// How long a parked request is watched for not completing: an admitted one completes in
/// milliseconds, and the daemons look at the owner records every 50 ms.
const PARKED: Duration = Duration::from_millis(1500);

/// The sector both daemons write, A's last write first, then B's first.
const SECTOR: u64 = 64;

/// The timing of the tests that time no lease: FAST's 600 ms lease is also the bound of every
/// etcd round trip, and on a loaded machine etcd answered a join in more than 600 ms; a lease
/// not renewed in time then made B fail vm1's first write (IOERR: the shared state out of reach,
/// as designed) and a PR OUT answer BUSY. These tests prove the order and the state of a move,
/// not the lease, so they give etcd more time.
const STEADY: Timing = Timing {
    lease_ms: 2000,
    max_io_ms: 1000,
    hold_ms: 2000,
    budget_ms: 5000,
};

/// RESERVATIONS RELEASED and POWER ON, RESET OCCURRED.
const RELEASED: SenseTriple = (6, 0x2a, 0x04);
const POWER_ON: SenseTriple = (6, 0x29, 0x00);

/// The PR state as the guests see it: vm1 (on A, key 0x11) and vm3 (on B, key 0x33) registered,
/// vm3 holding Write Exclusive – Registrants Only, and RESERVATIONS RELEASED pending for vm1
/// (vm3 released once, then reserved again). Returns vm1's source client and vm3's client.
fn reservations(a: &ClusterDaemon, b: &ClusterDaemon) -> (ScsiClient, ScsiClient) {
    let mut vm1 = ScsiClient::connect(&a.scsi("vm1"));
    let mut vm3 = ScsiClient::connect(&b.scsi("vm3"));
    vm1.drain_ua();
    vm3.drain_ua();
    good(&prout(&mut vm1, SA_REGISTER, 0, 0, 0x11), "vm1 REGISTER");
    good(&prout(&mut vm3, SA_REGISTER, 0, 0, 0x33), "vm3 REGISTER");
    good(
        &prout(&mut vm3, SA_RESERVE, 5, 0x33, 0),
        "vm3 RESERVE WE-RO",
    );
    good(&prout(&mut vm3, SA_RELEASE, 5, 0x33, 0), "vm3 RELEASE");
    good(
        &prout(&mut vm3, SA_RESERVE, 5, 0x33, 0),
        "vm3 RESERVE again",
    );
    (vm1, vm3)
}

/// A PR OUT, sent again while it is answered BUSY (etcd out of reach for a moment), as an
/// initiator does (SAM-5 §5.3.1: BUSY, the command may be sent again later).
fn prout(c: &mut ScsiClient, sa: u8, typ: u8, rk: u64, sark: u64) -> ScsiResult {
    for _ in 0..20 {
        let r = c.prout(sa, typ, rk, sark, false);
        if r.status != BUSY {
            return r;
        }
        eprintln!("cluster_migrate: PR OUT service action {sa:#x} answered BUSY; sent again");
        std::thread::sleep(Duration::from_millis(250));
    }
    c.prout(sa, typ, rk, sark, false)
}

/// vm1's line in `sharedisk ctl --json cluster status` of daemon `d` (through its control
/// socket).
fn owner_status(d: &ClusterDaemon, guest: &str) -> serde_json::Value {
    let status = ctl_json(&d.control(), &["cluster", "status"]);
    let guests = status["guests"].as_array().cloned().unwrap_or_default();
    guests
        .into_iter()
        .find(|g| g["guest"] == guest)
        .unwrap_or_else(|| panic!("{guest} in node {}'s cluster status: {status}", d.node))
}

/// Asserts what `ctl cluster status` of `d` says of `guest`: its owning node, whether that is
/// `d`'s incarnation and `d` serves it, its move count and the node that asked for it.
#[track_caller]
fn assert_owner_status(
    d: &ClusterDaemon,
    guest: &str,
    (node, here, moves, want): (&str, bool, u64, Option<&str>),
) {
    let g = owner_status(d, guest);
    let seen = (
        g["node"].as_str(),
        g["this_incarnation"].as_bool(),
        g["served_here"].as_bool(),
        g["moves"].as_u64(),
        g["want"]["node"].as_str(),
    );
    assert_eq!(
        seen,
        (Some(node), Some(here), Some(here), Some(moves), want),
        "node {}'s cluster status of {guest}: {g}",
        d.node
    );
}

/// vm1 moves from A to B: B's write waits while A's frontends run, A's last write lands first,
/// B's first after it; on B vm1 gets its pending unit attention once and keeps its registration
/// and the reservation; vm2 (on A, unregistered) stays fenced. `ctl cluster status` shows vm1's
/// owner record on both daemons before, during and after the move.
#[test]
fn a_guest_moves_to_another_daemon_with_its_reservation_and_unit_attention() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    let ep = [etcd.url.clone()];
    let a = ClusterDaemon::start(dir.path(), &ep, "a", &["vm1", "vm2"], &STEADY, &[]);
    let b = ClusterDaemon::start(dir.path(), &ep, "b", &["vm1", "vm3"], &STEADY, &[]);
    let image = dir.path().join("disk.img");
    let (mut source_scsi, mut vm3) = reservations(&a, &b);
    let before = (vm3.read_keys(), vm3.read_reservation());
    let mut vm2 = ScsiClient::connect(&a.scsi("vm2"));
    vm2.drain_ua();
    conflict(&vm2.write16(8, &[2; 512]), "vm2 fenced before the move");
    let mut source = VuFrontend::connect(&a.blk("vm1"), 1, 128);
    source.blk_write(0, &[0x5a; 4096]);
    // B may have created vm1's record first (A's join slow) and handed it to A at A's first
    // request: the migration is the one move after this.
    let rec = owner(&etcd, "vm1");
    assert_eq!(rec["node"], "a", "A owns vm1");
    let moves = rec["moves"].as_u64().expect("the record counts the moves");

    // The destination QEMU's device on B has work: it waits while A's frontends run.
    let mut dest = VuFrontend::connect(&b.blk("vm1"), 1, 128);
    let dest_status = dest.queue_blk_write(SECTOR, 0xb2);
    assert!(
        dest.wait_used(0, PARKED).is_none(),
        "B admitted vm1's write while A's frontends still run"
    );
    assert_eq!(owner(&etcd, "vm1")["want"]["node"], "b", "B asked for vm1");
    assert_owner_status(&a, "vm1", ("a", true, moves, Some("b")));
    assert_owner_status(&b, "vm1", ("a", false, moves, Some("b")));
    assert_eq!(owner_status(&b, "vm1")["wanted_here"], true);
    let text = ctl(&a.control(), &["cluster", "status"]).ok().stdout;
    let line = text
        .lines()
        .find(|l| l.starts_with("vm1 "))
        .unwrap_or_default();
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        words.get(..6),
        Some(&["vm1", "a", "*", moves.to_string().as_str(), "yes", "b"][..]),
        "vm1's line in A's `ctl cluster status`:\n{text}"
    );
    let last = source.queue_blk_write(SECTOR, 0xa1);
    source
        .wait_used(0, TIMEOUT)
        .expect("A's last write completes");
    assert_eq!(source.read_mem(last, 1)[0], VIRTIO_BLK_S_OK);
    assert!(
        dest.wait_used(0, PARKED).is_none(),
        "B admitted vm1's write while A's frontends still run"
    );
    // The source QEMU stops its devices (GET_VRING_BASE on every ring).
    source.stop_rings();
    source_scsi.fe.stop_rings();
    let stopped = std::time::Instant::now();
    dest.wait_used(0, TIMEOUT)
        .expect("B admits vm1's write once A stopped its rings");
    eprintln!(
        "cluster_migrate: B's first write done {} ms after A's rings stopped",
        stopped.elapsed().as_millis()
    );
    assert_eq!(dest.read_mem(dest_status, 1)[0], VIRTIO_BLK_S_OK);
    assert_eq!(
        image_bytes(&image, SECTOR * 512, 4096),
        vec![0xb2; 4096],
        "B's first write landed after A's last"
    );
    let rec = owner(&etcd, "vm1");
    assert_eq!(
        (rec["node"].as_str(), rec["moves"].as_u64()),
        (Some("b"), Some(moves + 1)),
        "vm1 moved once, to B"
    );
    assert!(
        rec["want"].is_null(),
        "A, none of whose devices has work, asked for vm1 back: {rec}"
    );
    assert_owner_status(&a, "vm1", ("b", false, moves + 1, None));
    assert_owner_status(&b, "vm1", ("b", true, moves + 1, None));

    let mut dest_scsi = ScsiClient::connect(&b.scsi("vm1"));
    check(
        &dest_scsi.tur(),
        RELEASED,
        "vm1's pending unit attention moved",
    );
    good(&dest_scsi.tur(), "reported once");
    assert_eq!(
        (dest_scsi.read_keys(), dest_scsi.read_reservation()),
        before,
        "registration and reservation after the move"
    );
    good(
        &dest_scsi.write16(8, &[9; 512]),
        "vm1, a registrant, writes on B",
    );
    conflict(&vm2.write16(8, &[2; 512]), "vm2 fenced after the move");
    assert_eq!(dest.blk_read(0, 4096), vec![0x5a; 4096]);
    assert!(!a.log_text().contains("panicked") && !b.log_text().contains("panicked"));
}

/// A guest holding its daemon's SPC-2 reservation (RESERVE(6); each daemon of a cluster keeps
/// its own) takes it along when it moves: after the move a guest of the destination daemon
/// conflicts, one of the source daemon writes again, and the guest's RELEASE(6) on the
/// destination releases it.
#[test]
fn a_guest_takes_its_spc2_reservation_along() {
    const RELEASE6: [u8; 6] = [0x17, 0, 0, 0, 0, 0];
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    let ep = [etcd.url.clone()];
    let a = ClusterDaemon::start(dir.path(), &ep, "a", &["vm1", "vm2"], &STEADY, &[]);
    let b = ClusterDaemon::start(dir.path(), &ep, "b", &["vm1", "vm3"], &STEADY, &[]);
    let mut source = ScsiClient::connect(&a.scsi("vm1"));
    let mut vm2 = ScsiClient::connect(&a.scsi("vm2"));
    let mut vm3 = ScsiClient::connect(&b.scsi("vm3"));
    for c in [&mut source, &mut vm2, &mut vm3] {
        c.drain_ua();
    }
    good(&source.cmd(&RESERVE6, &[], 0), "vm1 RESERVE(6) on A");
    conflict(&vm2.write16(8, &[2; 512]), "vm2 (A) under vm1's RESERVE(6)");
    good(
        &vm3.write16(8, &[3; 512]),
        "vm3 (B) under vm1's RESERVE(6) on A: each daemon has its own",
    );
    assert_eq!(owner(&etcd, "vm1")["node"], "a", "A owns vm1");

    // The destination's device on B has work; the source stops its rings.
    let mut dest = ScsiClient::connect(&b.scsi("vm1"));
    let first = dest.submit(&LUN0, &[0, 0, 0, 0, 0, 0], &[], 0, true);
    assert!(
        dest.finish(&first, PARKED).is_none(),
        "B admitted vm1 while A's frontend still runs"
    );
    source.fe.stop_rings();
    let r = dest
        .finish(&first, TIMEOUT)
        .expect("B admits vm1 once A stopped its rings");
    good(
        &r,
        "vm1's first command on B: no unit attention from the move",
    );
    assert_eq!(owner(&etcd, "vm1")["node"], "b", "vm1 moved to B");
    dest.fe.reset();

    good(&dest.write16(8, &[1; 512]), "vm1, the holder, writes on B");
    conflict(
        &vm3.write16(8, &[3; 512]),
        "vm3 (B) under the RESERVE(6) vm1 took along",
    );
    good(
        &vm2.write16(8, &[2; 512]),
        "vm2 (A): A holds no reservation after vm1 left",
    );
    good(&dest.cmd(&RELEASE6, &[], 0), "vm1 RELEASE(6) on B");
    good(&vm3.write16(8, &[3; 512]), "vm3 (B) after vm1's RELEASE(6)");
    assert!(!a.log_text().contains("panicked") && !b.log_text().contains("panicked"));
}

const RESERVE6: [u8; 6] = [0x16, 0, 0, 0, 0, 0];

/// I_T NEXUS LOSS OCCURRED: what a guest whose SPC-2 reservation was lost in a move gets.
const NEXUS_LOSS: SenseTriple = (6, 0x29, 0x07);

/// vm1 holds RESERVE(6) on A and moves to B, and vm3 registers and reserves (PR) on B between
/// A's commit of the hand-over and B's taking vm1 (the record is written as A's hand-over
/// writes it, `spc2` set, after vm3's PR OUTs: the race made certain). vm1's SPC-2 reservation
/// is not given back on B (it could not have been made under vm3's registration, and A would
/// have dropped it on adopting that state): vm1 gets I_T NEXUS LOSS OCCURRED and vm3, the PR
/// holder, writes. Before, B gave vm1 the reservation beside the registrations and vm3's write
/// conflicted.
#[test]
fn an_spc2_reservation_taken_along_gives_way_to_a_registration_made_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    let ep = [etcd.url.clone()];
    let a = ClusterDaemon::start(dir.path(), &ep, "a", &["vm1", "vm2"], &STEADY, &[]);
    let b = ClusterDaemon::start(dir.path(), &ep, "b", &["vm1", "vm3"], &STEADY, &[]);
    let mut source = ScsiClient::connect(&a.scsi("vm1"));
    let mut vm3 = ScsiClient::connect(&b.scsi("vm3"));
    source.drain_ua();
    vm3.drain_ua();
    good(&source.cmd(&RESERVE6, &[], 0), "vm1 RESERVE(6) on A");
    assert_eq!(owner(&etcd, "vm1")["node"], "a", "A owns vm1");
    let mut dest = ScsiClient::connect(&b.scsi("vm1"));
    let first = dest.submit(&LUN0, &[0, 0, 0, 0, 0, 0], &[], 0, true);
    let mut rec = wait_owner(&etcd, "vm1", TIMEOUT, "B asked", |r| {
        r["want"]["node"] == "b"
    });
    good(&prout(&mut vm3, SA_REGISTER, 0, 0, 0x33), "vm3 REGISTER");
    good(&prout(&mut vm3, SA_RESERVE, 1, 0x33, 0), "vm3 RESERVE WE");
    rec["node"] = rec["want"]["node"].clone();
    rec["incarnation"] = rec["want"]["incarnation"].clone();
    rec["want"] = serde_json::Value::Null;
    // What A's hand-over writes: its pending unit attentions (none: drained), the reservation.
    rec["uas"] = serde_json::json!([]);
    rec["spc2"] = true.into();
    put_owner(&etcd, "vm1", &rec);
    let r = dest
        .finish(&first, TIMEOUT)
        .expect("B serves vm1 once the record names it");
    good(
        &vm3.write16(8, &[3; 512]),
        "vm3, the PR holder, writes on B after vm1 moved there",
    );
    check(&r, NEXUS_LOSS, "vm1's SPC-2 reservation lost in the move");
    assert!(b.log_text().contains("the guest's is lost"));
    drop(source);
    assert!(!a.log_text().contains("panicked") && !b.log_text().contains("panicked"));
}

/// vm1 holds RESERVE(6) on A and B asks for it, but every compare-and-swap of A's hand-over
/// fails (test-hooks failpoint `move-swap-error`, as etcd out of reach would): vm1 stays A's,
/// and A's other guest, vm2, conflicts all the while. Before, A took the reservation from its
/// arbiter before the swap and gave it back only once the record was read again, so vm2's
/// writes landed in between, under the reservation vm1 still held.
#[test]
fn a_failed_hand_over_keeps_the_spc2_reservation_on_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    let ep = [etcd.url.clone()];
    let swap = [("SHAREDISK_FAILPOINT", "move-swap-error")];
    let a = ClusterDaemon::start(dir.path(), &ep, "a", &["vm1", "vm2"], &STEADY, &swap);
    let b = ClusterDaemon::start(dir.path(), &ep, "b", &["vm1"], &STEADY, &[]);
    let mut source = ScsiClient::connect(&a.scsi("vm1"));
    let mut vm2 = ScsiClient::connect(&a.scsi("vm2"));
    source.drain_ua();
    vm2.drain_ua();
    good(&source.cmd(&RESERVE6, &[], 0), "vm1 RESERVE(6) on A");
    conflict(&vm2.write16(8, &[2; 512]), "vm2 under vm1's RESERVE(6)");
    assert_eq!(owner(&etcd, "vm1")["node"], "a", "A owns vm1");
    let mut dest = ScsiClient::connect(&b.scsi("vm1"));
    let first = dest.submit(&LUN0, &[0, 0, 0, 0, 0, 0], &[], 0, true);
    wait_owner(&etcd, "vm1", TIMEOUT, "B asked", |r| {
        r["want"]["node"] == "b"
    });
    source.fe.stop_rings();
    a.wait_log("failpoint move-swap-error", LOG_WAIT);
    let end = std::time::Instant::now() + Duration::from_secs(2);
    let mut tries = 0;
    while std::time::Instant::now() < end {
        tries += 1;
        conflict(
            &vm2.write16(8, &[2; 512]),
            &format!("vm2's write {tries} while A fails to hand vm1 over"),
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        dest.finish(&first, Duration::from_millis(100)).is_none(),
        "B admitted vm1: the hand-over never committed"
    );
    assert_eq!(owner(&etcd, "vm1")["node"], "a", "vm1 stays A's");
    assert!(!a.log_text().contains("panicked") && !b.log_text().contains("panicked"));
}

/// A move of vm1 asked for: A's frontend (the source QEMU) wrote, so A owns vm1; B's frontend
/// (the destination QEMU) queued a write, held while A's frontend runs. The frontends drop
/// first.
struct Asked {
    source: VuFrontend,
    dest: VuFrontend,
    /// The status byte's address of B's held write.
    dest_status: u64,
    a: ClusterDaemon,
    b: ClusterDaemon,
}

/// Starts A (vm1) and B (vm1, vm3) with `timing` and `a_env` / `b_env`, and has B ask for vm1
/// ([`Asked`]).
fn ask_for_vm1(
    dir: &Path,
    etcd: &Etcd,
    timing: &Timing,
    a_env: &[(&str, &str)],
    b_env: &[(&str, &str)],
) -> Asked {
    let ep = etcd.endpoints();
    let a = ClusterDaemon::start(dir, &ep, "a", &["vm1"], timing, a_env);
    let b = ClusterDaemon::start(dir, &ep, "b", &["vm1", "vm3"], timing, b_env);
    let mut source = VuFrontend::connect(&a.blk("vm1"), 1, 128);
    source.blk_write(SECTOR, &[0xa1; 4096]);
    let mut dest = VuFrontend::connect(&b.blk("vm1"), 1, 128);
    let dest_status = dest.queue_blk_write(SECTOR, 0xb2);
    assert!(dest.wait_used(0, PARKED).is_none(), "B waits for A");
    Asked {
        source,
        dest,
        dest_status,
        a,
        b,
    }
}

/// [`ask_for_vm1`] with FAST timing, then A's frontend stops its rings and goes away: returns
/// the daemons, B's waiting frontend and its write's status.
fn start_a_move(
    dir: &Path,
    etcd: &Etcd,
    a_env: &[(&str, &str)],
    b_env: &[(&str, &str)],
) -> (ClusterDaemon, ClusterDaemon, VuFrontend, u64) {
    let Asked {
        mut source,
        dest,
        dest_status,
        a,
        b,
    } = ask_for_vm1(dir, etcd, &FAST, a_env, b_env);
    source.stop_rings();
    drop(source);
    (a, b, dest, dest_status)
}

/// vm1's record as it is now, rewritten to name the incarnation that asked for it, with no
/// request left: what a forged record or a take-over behind the owner's back would write.
fn vm1_given_to_its_want(etcd: &Etcd) -> serde_json::Value {
    let mut rec = owner(etcd, "vm1");
    let want = rec["want"].clone();
    rec["node"] = want["node"].clone();
    rec["incarnation"] = want["incarnation"].clone();
    rec["want"] = serde_json::Value::Null;
    rec
}

/// The hand-over's answer is lost although etcd applied it: A, not knowing, admits nothing of
/// vm1 until it read the record, which names B; B serves vm1 with its pending unit attention,
/// reported once.
#[test]
fn a_hand_over_whose_answer_was_lost_is_resolved_from_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    let ep = [etcd.url.clone()];
    let lost = [("SHAREDISK_FAILPOINT", "move-answer-lost")];
    let a = ClusterDaemon::start(dir.path(), &ep, "a", &["vm1"], &STEADY, &lost);
    let b = ClusterDaemon::start(dir.path(), &ep, "b", &["vm1", "vm3"], &STEADY, &[]);
    let (mut source, _vm3) = reservations(&a, &b);
    let moves = owner(&etcd, "vm1")["moves"].as_u64().expect("A owns vm1");
    let mut dest = VuFrontend::connect(&b.blk("vm1"), 1, 128);
    let status = dest.queue_blk_write(SECTOR, 0xb2);
    assert!(dest.wait_used(0, PARKED).is_none(), "B waits for A");
    source.fe.stop_rings();
    dest.wait_used(0, TIMEOUT).expect("B admits vm1");
    assert_eq!(dest.read_mem(status, 1)[0], VIRTIO_BLK_S_OK);
    assert!(a.log_text().contains("failpoint move-answer-lost"));
    let rec = owner(&etcd, "vm1");
    assert_eq!(
        (rec["node"].as_str(), rec["moves"].as_u64()),
        (Some("b"), Some(moves + 1))
    );
    let mut vm1 = ScsiClient::connect(&b.scsi("vm1"));
    check(&vm1.tur(), RELEASED, "vm1's pending unit attention moved");
    good(&vm1.tur(), "reported once");
    let mut back = ScsiClient::connect(&a.scsi("vm1"));
    let pending = back.submit(&LUN0, &[0, 0, 0, 0, 0, 0], &[], 0, true);
    assert!(
        back.finish(&pending, PARKED).is_none(),
        "A admitted vm1 after it was handed over"
    );
}

/// A stops cleanly (its member key removed) while it owns vm1 and does not start again: B's
/// device wants vm1 and takes it once the wait bound passed since A's incarnation was gone
/// (`lease_ms × (1 + drift) / (1 − drift) + max_io_ms`, 912 ms here), with POWER ON, RESET.
#[test]
fn a_guest_whose_daemon_stopped_is_taken_after_the_wait_bound() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    let ep = [etcd.url.clone()];
    let a = ClusterDaemon::start(dir.path(), &ep, "a", &["vm1"], &FAST, &[]);
    let b = ClusterDaemon::start(dir.path(), &ep, "b", &["vm1"], &FAST, &[]);
    let mut source = VuFrontend::connect(&a.blk("vm1"), 1, 128);
    source.blk_write(SECTOR, &[0xa1; 4096]);
    drop(source);
    drop(a);
    let gone = std::time::Instant::now();
    let mut dest = VuFrontend::connect(&b.blk("vm1"), 1, 128);
    dest.blk_write(SECTOR, &[0xb2; 4096]);
    let waited = gone.elapsed();
    assert!(
        waited >= Duration::from_millis(912),
        "B took vm1 {waited:?} after A stopped, before the wait bound"
    );
    let rec = owner(&etcd, "vm1");
    assert_eq!(
        (rec["node"].as_str(), rec["moves"].as_u64()),
        (Some("b"), Some(1))
    );
    let mut vm1 = ScsiClient::connect(&b.scsi("vm1"));
    check(&vm1.tur(), POWER_ON, "taken after its daemon stopped");
}

/// Restarts node `node` (killed) with no failpoint.
fn restart(dir: &Path, etcd: &Etcd, node: &str, guests: &[&str]) -> ClusterDaemon {
    for e in std::fs::read_dir(dir.join(node)).unwrap().flatten() {
        let _ = std::fs::remove_file(e.path());
    }
    let _ = std::fs::rename(
        dir.join(format!("{node}.log")),
        dir.join(format!("{node}.1.log")),
    );
    ClusterDaemon::start(
        dir,
        std::slice::from_ref(&etcd.url),
        node,
        guests,
        &FAST,
        &[],
    )
}

/// A is killed after it stopped admitting vm1 and took its unit attentions, before the move is
/// committed: B's write waits; once A is restarted (a new incarnation) it takes vm1 back and
/// hands it over, and vm1 has one owner, B.
#[test]
fn a_source_killed_before_committing_the_move_hands_over_once_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    let (mut a, b, mut dest, status) = start_a_move(
        dir.path(),
        &etcd,
        &[("SHAREDISK_FAILPOINT", "move-stopped")],
        &[],
    );
    a.wait_exit();
    assert!(
        dest.wait_used(0, PARKED).is_none(),
        "B admitted vm1 while A's record still names A"
    );
    assert_eq!(owner(&etcd, "vm1")["node"], "a");
    let _a = restart(dir.path(), &etcd, "a", &["vm1"]);
    dest.wait_used(0, TIMEOUT)
        .expect("B admits vm1 once A's new incarnation handed it over");
    assert_eq!(dest.read_mem(status, 1)[0], VIRTIO_BLK_S_OK);
    let rec = owner(&etcd, "vm1");
    assert_eq!(
        (rec["node"].as_str(), rec["moves"].as_u64()),
        (Some("b"), Some(2))
    );
    let mut vm1 = ScsiClient::connect(&b.scsi("vm1"));
    check(
        &vm1.tur(),
        POWER_ON,
        "A's restart: POWER ON, RESET moved with vm1",
    );
}

/// A is killed once the move is committed: B serves vm1 without waiting for A.
#[test]
fn a_source_killed_after_committing_the_move_leaves_the_guest_to_the_destination() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    let (mut a, _b, mut dest, status) = start_a_move(
        dir.path(),
        &etcd,
        &[("SHAREDISK_FAILPOINT", "move-committed")],
        &[],
    );
    a.wait_exit();
    dest.wait_used(0, TIMEOUT)
        .expect("B admits vm1: the move was committed");
    assert_eq!(dest.read_mem(status, 1)[0], VIRTIO_BLK_S_OK);
    assert_eq!(owner(&etcd, "vm1")["node"], "b");
}

/// B is killed once the move names it, before it served vm1: after B's restart vm1 is served by
/// B's new incarnation, and A's source, running again, waits: one owner.
#[test]
fn a_destination_killed_before_serving_serves_the_guest_once_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    let (a, mut b, _dest, _) = start_a_move(
        dir.path(),
        &etcd,
        &[],
        &[("SHAREDISK_FAILPOINT", "move-received")],
    );
    b.wait_exit();
    assert_eq!(owner(&etcd, "vm1")["node"], "b", "the move was committed");
    let b = restart(dir.path(), &etcd, "b", &["vm1", "vm3"]);
    let mut dest = VuFrontend::connect(&b.blk("vm1"), 1, 128);
    dest.blk_write(SECTOR, &[0xb3; 4096]);
    assert_eq!(owner(&etcd, "vm1")["node"], "b");
    let mut source = VuFrontend::connect(&a.blk("vm1"), 1, 128);
    source.queue_blk_write(SECTOR, 0xa2);
    assert!(
        source.wait_used(0, PARKED).is_none(),
        "A admitted vm1 while B's new incarnation serves it"
    );
    assert_eq!(
        image_bytes(&dir.path().join("disk.img"), SECTOR * 512, 4096),
        vec![0xb3; 4096]
    );
}

/// vm1's record is rewritten to name B while A's frontend holds vm1 and runs (a forged record,
/// or a take-over of a daemon thought gone that comes back): B takes vm1, and from then A admits
/// nothing more of it, so the two QEMUs are never two writers.
#[test]
fn a_daemon_whose_guest_was_taken_while_it_held_it_admits_no_more_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    let Asked {
        mut source,
        mut dest,
        dest_status,
        a,
        b: _b,
    } = ask_for_vm1(dir.path(), &etcd, &FAST, &[], &[]);
    let image = dir.path().join("disk.img");
    let rec = vm1_given_to_its_want(&etcd);
    assert_eq!(rec["node"], "b", "B asked for vm1");
    put_owner(&etcd, "vm1", &rec);
    dest.wait_used(0, TIMEOUT)
        .expect("B serves vm1 once the record names it");
    assert_eq!(dest.read_mem(dest_status, 1)[0], VIRTIO_BLK_S_OK);
    a.wait_log(TAKEN_HERE, TIMEOUT);
    source.queue_blk_write(SECTOR, 0xa3);
    assert!(
        source.wait_used(0, PARKED).is_none(),
        "A admitted vm1's write after the record named B: two writers"
    );
    assert_eq!(
        image_bytes(&image, SECTOR * 512, 4096),
        vec![0xb2; 4096],
        "B's write is the last that landed"
    );
}

/// vm1's owner record is unreadable (garbage written in etcd): B's device, which wants vm1,
/// admits nothing of it, and B says so once rather than at every look at the records (every
/// 50 ms while a device waits: about 30 lines in this test's 1.5 s before).
#[test]
fn an_unreadable_owner_record_holds_the_guest_and_is_logged_once() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    let ep = [etcd.url.clone()];
    // Before B starts: B creates the record of a guest that has none at its first look.
    put_owner(&etcd, "vm1", &serde_json::json!({"node": 7}));
    let b = ClusterDaemon::start(dir.path(), &ep, "b", &["vm1"], &FAST, &[]);
    let mut dest = VuFrontend::connect(&b.blk("vm1"), 1, 128);
    dest.queue_blk_write(SECTOR, 0xb2);
    assert!(
        dest.wait_used(0, PARKED).is_none(),
        "B admitted vm1's write under an unreadable owner record"
    );
    let lines = b.log_text().matches("owner record is unreadable").count();
    assert_eq!(lines, 1, "the unreadable record logged once");
}

/// vm1's record carries a hostile move count (the largest u64) when A hands it to B: the move
/// completes and neither daemon panics. Before, A's mover thread panicked on the count's
/// overflow (the debug build the tests run) and vm1 never moved: B's write waited for ever.
#[test]
fn a_hostile_move_count_does_not_stop_the_mover() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    let Asked {
        mut source,
        mut dest,
        dest_status,
        a,
        b,
    } = ask_for_vm1(dir.path(), &etcd, &FAST, &[], &[]);
    let mut rec = owner(&etcd, "vm1");
    assert_eq!(rec["want"]["node"], "b", "B asked for vm1");
    rec["moves"] = serde_json::json!(u64::MAX);
    put_owner(&etcd, "vm1", &rec);
    source.stop_rings();
    dest.wait_used(0, TIMEOUT)
        .expect("B admits vm1's write once A stopped its rings");
    assert_eq!(dest.read_mem(dest_status, 1)[0], VIRTIO_BLK_S_OK);
    assert_eq!(owner(&etcd, "vm1")["node"], "b");
    assert!(!a.log_text().contains("panicked") && !b.log_text().contains("panicked"));
}

/// As [`a_daemon_whose_guest_was_taken_while_it_held_it_admits_no_more_of_it`], with A's ring
/// never running empty (each write held 300 ms by the test-hooks delay while the next ones are
/// queued): a write queued after A read the record is not served. Before, the ring was served
/// round after round for as long as it had work.
#[test]
fn a_busy_ring_of_a_guest_taken_from_its_daemon_admits_no_more() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    let delay = [("SHAREDISK_TEST_WRITE_DELAY_MS", "300")];
    let Asked {
        mut source,
        dest: _dest,
        a,
        b,
        ..
    } = ask_for_vm1(dir.path(), &etcd, &FAST, &delay, &[]);
    let rec = vm1_given_to_its_want(&etcd);
    // A's ring has work from here on.
    source.queue_blk_write(SECTOR + 8, 0xa2);
    std::thread::sleep(Duration::from_millis(100));
    source.queue_blk_write(SECTOR + 8, 0xa3);
    put_owner(&etcd, "vm1", &rec);
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut n = 0u8;
    while !a.log_text().contains(TAKEN_HERE) {
        assert!(std::time::Instant::now() < deadline, "A saw the record");
        source.queue_blk_write(SECTOR + 8, 0xa4 + n % 8);
        n += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let late = source.queue_blk_write(SECTOR, 0xa9);
    std::thread::sleep(PARKED);
    assert_eq!(
        source.read_mem(late, 1)[0],
        0xff,
        "A served a write queued after it read that vm1 is B's"
    );
    drop(b);
}

/// What a daemon logs when a guest it does not own has work while etcd is out of reach.
const WAITS_FOR_ETCD: &str = "its requests wait until etcd answers";

/// etcd stops answering (SIGSTOP) before the first request of vm2, a guest added then with
/// `ctl guest add`, which no daemon owns yet: A says once that vm2 waits for etcd (its mover
/// tries the records again every lease meanwhile: at least twice more in the 5 s watched), and
/// serves vm2's write once etcd answers again; meanwhile `ctl cluster status` shows vm2 waiting
/// here, its record unknown. Before, A logged nothing about vm2.
#[test]
fn a_guest_no_daemon_owns_waits_for_etcd_and_says_so_once() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    let a = ClusterDaemon::start(dir.path(), &etcd.endpoints(), "a", &["vm1"], &STEADY, &[]);
    etcd.signal("-STOP");
    ctl(&a.control(), &["guest", "add", "vm2"]).ok();
    let mut fe = VuFrontend::connect(&a.blk("vm2"), 1, 128);
    let status = fe.queue_blk_write(SECTOR, 0xc2);
    a.wait_log(WAITS_FOR_ETCD, LOG_WAIT);
    assert!(
        fe.wait_used(0, Duration::from_secs(5)).is_none(),
        "A admitted vm2 with no owner record"
    );
    assert_eq!(
        a.log_text().matches(WAITS_FOR_ETCD).count(),
        1,
        "the wait logged once"
    );
    let vm2 = owner_status(&a, "vm2");
    assert_eq!(
        (&vm2["record"], &vm2["served_here"], &vm2["wanted_here"]),
        (&"unknown".into(), &false.into(), &true.into()),
        "A's cluster status of vm2 with etcd out of reach: {vm2}"
    );
    etcd.signal("-CONT");
    fe.wait_used(0, TIMEOUT)
        .expect("A serves vm2 once etcd answers");
    assert_eq!(fe.read_mem(status, 1)[0], VIRTIO_BLK_S_OK);
    assert_eq!(owner(&etcd, "vm2")["node"], "a");
    a.wait_log("guest vm2: etcd answers again", LOG_WAIT);
}

/// B asks for vm1 (its frontend, the destination QEMU, has work) and its connection then ends
/// (the destination QEMU killed): B withdraws its request, so when A's rings stop (the source
/// QEMU restarts) A keeps vm1 and its next connection's write is served, vm1 never
/// moved. Before, the request stayed: A handed vm1 over to B as soon as its rings stopped, B
/// had nothing to serve it with, and A's next write waited for vm1 to come back (two moves).
#[test]
fn a_destination_that_went_away_after_asking_withdraws_its_request() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    let Asked {
        mut source,
        dest,
        a,
        b,
        ..
    } = ask_for_vm1(dir.path(), &etcd, &STEADY, &[], &[]);
    let rec = owner(&etcd, "vm1");
    assert_eq!(rec["node"], "a", "A owns vm1");
    assert_eq!(rec["want"]["node"], "b", "B asked for vm1");
    drop(dest);
    let after = wait_owner(&etcd, "vm1", TIMEOUT, "the request withdrawn", |r| {
        r["want"].is_null()
    });
    assert_eq!(
        (&after["node"], &after["moves"]),
        (&rec["node"], &rec["moves"])
    );
    b.wait_log(
        "the request to node \"a\" to hand it over is withdrawn",
        LOG_WAIT,
    );
    source.stop_rings();
    drop(source);
    let mut again = VuFrontend::connect(&a.blk("vm1"), 1, 128);
    let status = again.queue_blk_write(SECTOR, 0xa3);
    again
        .wait_used(0, TIMEOUT)
        .expect("A serves vm1's write: it kept vm1");
    assert_eq!(again.read_mem(status, 1)[0], VIRTIO_BLK_S_OK);
    let last = owner(&etcd, "vm1");
    assert_eq!(
        (&last["node"], &last["moves"]),
        (&rec["node"], &rec["moves"]),
        "vm1 never moved"
    );
    assert_eq!(
        image_bytes(&dir.path().join("disk.img"), SECTOR * 512, 4096),
        vec![0xa3; 4096]
    );
}

/// The destination goes away while the source hands the guest over: A stopped admitting vm1
/// (its rings stopped) and waits for vm2's admitted write (1 s, the test-hooks delay) before
/// its compare-and-swap; meanwhile B's connection ends and B withdraws its request, and a new
/// connection of vm1 on A (the source QEMU restarting its rings: the migration failed) has a
/// write, held while A hands over. A's swap fails: A serves vm1 again and that write with it,
/// vm1 never moved. Before, A opened its gate without kicking the held ring: the write waited
/// for the guest's next kick.
#[test]
fn a_hand_over_that_finds_the_request_withdrawn_serves_the_held_ring_here() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    let ep = etcd.endpoints();
    let delay = [("SHAREDISK_TEST_WRITE_DELAY_MS", "1000")];
    let a = ClusterDaemon::start(dir.path(), &ep, "a", &["vm1", "vm2"], &STEADY, &delay);
    let b = ClusterDaemon::start(dir.path(), &ep, "b", &["vm1"], &STEADY, &[]);
    let mut source = VuFrontend::connect(&a.blk("vm1"), 1, 128);
    source.blk_write(SECTOR, &[0xa1; 4096]);
    let mut vm2 = VuFrontend::connect(&a.blk("vm2"), 1, 128);
    vm2.blk_write(SECTOR + 64, &[0xc1; 4096]);
    let dest = {
        let mut d = VuFrontend::connect(&b.blk("vm1"), 1, 128);
        d.queue_blk_write(SECTOR, 0xb2);
        d
    };
    let rec = wait_owner(&etcd, "vm1", TIMEOUT, "B asked", |r| {
        r["want"]["node"] == "b"
    });
    // vm2's write is admitted, and holds A's hand-over of vm1 back for a second.
    vm2.queue_blk_write(SECTOR + 64, 0xc2);
    std::thread::sleep(Duration::from_millis(200));
    source.stop_rings();
    std::thread::sleep(Duration::from_millis(200));
    drop(dest);
    let mut again = VuFrontend::connect(&a.blk("vm1"), 1, 128);
    let status = again.queue_blk_write(SECTOR, 0xa3);
    assert!(
        again.wait_used(0, Duration::from_millis(300)).is_none(),
        "the scenario: A was handing vm1 over when the new connection's write came"
    );
    again
        .wait_used(0, TIMEOUT)
        .expect("A serves vm1's held write once its hand-over failed");
    assert_eq!(again.read_mem(status, 1)[0], VIRTIO_BLK_S_OK);
    let last = owner(&etcd, "vm1");
    assert_eq!(
        (&last["node"], &last["moves"], &last["want"]),
        (&rec["node"], &rec["moves"], &serde_json::Value::Null),
        "the scenario: the request was withdrawn before A's swap, vm1 never moved"
    );
    drop(source);
}

/// The destination's connection ends after asking and a new one comes at once with work (a
/// QEMU restarted on the destination host): whether or not B withdrew its request in between,
/// B asks again and serves the new connection's write once A's rings stopped: vm1 moved once.
#[test]
fn a_destination_that_reconnects_at_once_after_asking_still_gets_the_guest() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    let Asked {
        mut source,
        dest,
        a: _a,
        b,
        ..
    } = ask_for_vm1(dir.path(), &etcd, &STEADY, &[], &[]);
    let rec = owner(&etcd, "vm1");
    assert_eq!(rec["want"]["node"], "b", "B asked for vm1");
    drop(dest);
    let mut again = VuFrontend::connect(&b.blk("vm1"), 1, 128);
    let status = again.queue_blk_write(SECTOR, 0xb3);
    std::thread::sleep(Duration::from_millis(500));
    source.stop_rings();
    again
        .wait_used(0, TIMEOUT)
        .expect("B serves the new connection's write once A's rings stopped");
    assert_eq!(again.read_mem(status, 1)[0], VIRTIO_BLK_S_OK);
    let last = owner(&etcd, "vm1");
    assert_eq!(
        (last["node"].as_str(), last["moves"].as_u64()),
        (Some("b"), rec["moves"].as_u64().map(|m| m + 1))
    );
    assert_eq!(
        image_bytes(&dir.path().join("disk.img"), SECTOR * 512, 4096),
        vec![0xb3; 4096]
    );
}

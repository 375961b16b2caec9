//! The iSCSI target of the daemon binary against a vhost-user guest on the same disk: one
//! reservation state across transports (the type table both ways, PREEMPT fencing the other
//! transport), an iSCSI session's I_T nexus as (initiator name, ISID) (READ FULL STATUS's
//! format 01b TransportID, reinstatement keeps the nexus, a new ISID is another nexus,
//! registrations persisted across a restart), the login's refusals, and hostile PDUs.

mod common;

use common::iscsi_client::{IscsiClient, RawPdu, INITIATOR_A, INITIATOR_B};
use common::scsi_client::{
    check, conflict, good, ScsiClient, POWER_ON, PRIN_READ_FULL_STATUS, SA_PREEMPT, SA_REGISTER,
    SA_RESERVE,
};

const WE: u8 = 1;
const EA: u8 = 3;
const ISID_1: [u8; 6] = [0x80, 0x12, 0x34, 0x56, 0x00, 0x01];
const ISID_2: [u8; 6] = [0x80, 0x12, 0x34, 0x56, 0x00, 0x02];
const REGISTRATIONS_PREEMPTED: (u8, u8, u8) = (0x06, 0x2a, 0x05);

use common::iscsi_portal::PortalDaemon as Setup;

/// The daemon binary with guest `vm1` and a portal that admits libiscsi's two test names.
fn setup() -> Setup {
    setup_with(&[])
}

/// [`setup`] with extra `serve` arguments.
fn setup_with(extra: &[&str]) -> Setup {
    Setup::start(&[INITIATOR_A, INITIATOR_B], extra, &[])
}

fn session(s: &Setup, initiator: &str, isid: [u8; 6]) -> IscsiClient {
    let mut c = IscsiClient::login(s.addr, initiator, &s.target, isid)
        .unwrap_or_else(|st| panic!("login of {initiator} refused: {st:#06x}"));
    c.drain_ua();
    c
}

fn guest(s: &Setup) -> ScsiClient {
    let mut g = ScsiClient::connect(&s.daemon.scsi("vm1"));
    assert_eq!(g.drain_ua(), vec![POWER_ON]);
    g
}

/// The TransportIDs READ FULL STATUS reports, as text after the 4-byte header, with format.
fn full_status_names(g: &mut ScsiClient) -> Vec<(u8, String)> {
    let (_, descs) = g.read_full_status();
    descs
        .iter()
        .map(|d| {
            let name = d.tid[4..].split(|&b| b == 0).next().unwrap();
            (d.tid[0] >> 6, String::from_utf8_lossy(name).into_owned())
        })
        .collect()
}

#[test]
fn type_table_holds_across_transports_and_preempt_fences_the_other_side() {
    let s = setup();
    let mut g = guest(&s);
    let mut i = session(&s, INITIATOR_A, ISID_1);
    let block = vec![0x5a; 512];
    good(&i.prout(SA_REGISTER, 0, 0, 0xa), "iSCSI REGISTER");
    good(&g.prout(SA_REGISTER, 0, 0, 0xb, false), "guest REGISTER");
    // The iSCSI nexus holds WRITE EXCLUSIVE: the guest (registered, not holder) reads but
    // cannot write; the holder writes.
    good(&i.prout(SA_RESERVE, WE, 0xa, 0), "iSCSI RESERVE WE");
    good(&g.read16(0, 1), "guest READ under WE");
    conflict(&g.write16(0, &block), "guest WRITE under the iSCSI WE");
    good(&i.write16(0, &block), "iSCSI holder WRITE");
    // READ FULL STATUS names the iSCSI nexus with its ISID (format 01b), the guest as before.
    let names = full_status_names(&mut g);
    assert!(
        names.contains(&(1, format!("{INITIATOR_A},i,0x801234560001"))),
        "{names:?}"
    );
    assert!(
        names.contains(&(0, "iqn.2026-11.io.sharedisk:vm1".to_string())),
        "{names:?}"
    );
    // The guest preempts the iSCSI nexus, taking EXCLUSIVE ACCESS: the iSCSI side learns of it
    // and is fenced from reads and writes.
    good(&g.prout(SA_PREEMPT, EA, 0xb, 0xa, false), "guest PREEMPT");
    let r = i.write16(0, &block);
    check(
        &r,
        REGISTRATIONS_PREEMPTED,
        "iSCSI after the preempt: its UA first",
    );
    conflict(&i.write16(0, &block), "iSCSI WRITE after the preempt");
    conflict(&i.read16(0, 1), "iSCSI READ under the guest's EA");
    good(&g.write16(0, &block), "guest holder WRITE");
    // And the other way: the iSCSI initiator registers again and preempts the guest.
    good(&i.prout(SA_REGISTER, 0, 0, 0xc), "iSCSI REGISTER again");
    good(&i.prout(SA_PREEMPT, EA, 0xc, 0xb), "iSCSI PREEMPT");
    let r = g.write16(0, &block);
    check(
        &r,
        REGISTRATIONS_PREEMPTED,
        "guest after the preempt: its UA first",
    );
    conflict(&g.write16(0, &block), "guest WRITE after the iSCSI preempt");
    conflict(&g.read16(0, 1), "guest READ under the iSCSI EA");
    good(&i.write16(0, &block), "iSCSI holder WRITE");
    assert!(i.logout());
    s.daemon.assert_no_panic();
}

#[test]
fn each_isid_is_a_nexus_and_reinstatement_keeps_it() {
    let mut s = setup();
    let mut a1 = session(&s, INITIATOR_A, ISID_1);
    let mut a2 = session(&s, INITIATOR_A, ISID_2);
    // Two sessions of one initiator register the same key: two nexuses (keyed by name, the
    // second REGISTER with RK=0 would conflict).
    good(&a1.prout(SA_REGISTER, 0, 0, 0x77), "ISID 1 REGISTER");
    good(&a2.prout(SA_REGISTER, 0, 0, 0x77), "ISID 2 REGISTER");
    assert_eq!(a1.read_keys(), vec![0x77, 0x77]);
    // Reinstatement: a new login with ISID 1, the old connection left as it is, is the same
    // nexus: it is registered (REGISTER with its key as RK passes).
    let mut again = IscsiClient::login(s.addr, INITIATOR_A, &s.target, ISID_1).unwrap();
    let uas = again.drain_ua();
    assert!(
        !uas.contains(&POWER_ON),
        "a reinstated nexus is not new: {uas:?}"
    );
    good(
        &again.prout(SA_REGISTER, 0, 0x77, 0x78),
        "reinstated ISID 1 re-REGISTER",
    );
    assert!(
        a1.read().is_none(),
        "the reinstated session's old connection was closed"
    );
    // A third ISID is a new nexus: not registered, so RK=0x78 conflicts.
    let mut other = session(&s, INITIATOR_A, [0x80, 0, 0, 0, 0, 3]);
    conflict(
        &other.prout(SA_REGISTER, 0, 0x78, 0x79),
        "new ISID REGISTER with RK",
    );
    // Registrations persist like the guests': after a restart ISID 2 is still registered.
    drop((again, a2, other));
    s.daemon.restart();
    let mut back = session(&s, INITIATOR_A, ISID_2);
    let mut keys = back.read_keys();
    keys.sort();
    assert_eq!(keys, vec![0x77, 0x78]);
    good(
        &back.prout(SA_REGISTER, 0, 0x77, 0x7a),
        "ISID 2 after restart",
    );
    s.daemon.assert_no_panic();
}

#[test]
fn login_refusals_carry_the_rfc_status() {
    let s = setup();
    let unknown = IscsiClient::login(
        s.addr,
        "iqn.2026-01.org.example:stranger",
        &s.target,
        ISID_1,
    );
    assert_eq!(unknown.err(), Some(0x0202), "an initiator not in the list");
    let wrong = IscsiClient::login(s.addr, INITIATOR_A, "iqn.2026-01.org.example:nope", ISID_1);
    assert_eq!(wrong.err(), Some(0x0203), "a target that is not ours");
    let chap = IscsiClient::login_with(
        s.addr,
        &[
            ("InitiatorName", INITIATOR_A),
            ("TargetName", &s.target),
            ("AuthMethod", "CHAP"),
        ],
        &[],
        ISID_1,
    );
    assert_eq!(
        chap.err(),
        Some(0x0201),
        "CHAP only, and none configured for it"
    );
    let log = s.daemon.log();
    assert!(log.contains("stranger is not allowed to log in"), "{log}");
    // The portal still serves.
    let mut ok = session(&s, INITIATOR_A, ISID_1);
    good(&ok.read16(0, 1), "READ after the refusals");
}

#[test]
fn sessions_and_guests_share_max_shares() {
    // One guest and max-shares 3: two iSCSI sessions fit, a third is refused with 0302 (out of
    // resources) until one logs out.
    let s = setup_with(&["--max-shares", "3"]);
    let mut one = session(&s, INITIATOR_A, ISID_1);
    let _two = session(&s, INITIATOR_B, ISID_1);
    let third = IscsiClient::login(s.addr, INITIATOR_A, &s.target, ISID_2);
    assert_eq!(third.err(), Some(0x0302));
    // A reinstatement of a live nexus is not a new session: it fits.
    let mut again = session(&s, INITIATOR_A, ISID_1);
    assert!(
        one.read().is_none(),
        "the reinstated session's connection closed"
    );
    assert!(again.logout());
    // The target closes the connection once the session is gone.
    assert!(again.read().is_none());
    let mut third = session(&s, INITIATOR_A, ISID_2);
    good(&third.read16(0, 1), "a session after a logout made room");
}

#[test]
fn hostile_pdus_close_only_their_connection() {
    let s = setup();
    let mut other = session(&s, INITIATOR_B, ISID_2);
    let mut i = session(&s, INITIATOR_A, ISID_1);
    // A command outside the CmdSN window is dropped without an answer; the session goes on.
    let mut b = i.cmd_header(&common::scsi_client::read16_cdb(0, 1), 512, true, false);
    b[24..28].copy_from_slice(&(i.cmd_sn + 1000).to_be_bytes());
    i.cmd_sn -= 1;
    i.send(b, &[]);
    good(&i.read16(0, 1), "READ after a command outside the window");
    // A WRITE whose Data-Out carries a wrong DataSN: the connection closes, nothing lands.
    let before = i.read16(8, 1).data;
    let cdb = common::scsi_client::write16_cdb(8, 1);
    let b = i.cmd_header(&cdb, 512, false, true);
    let itt = u32::from_be_bytes(b[16..20].try_into().unwrap());
    i.send(b, &[]);
    let r2t: RawPdu = i.read().expect("an R2T");
    assert_eq!(r2t.opcode(), 0x31);
    let mut d = [0u8; 48];
    d[0] = common::iscsi_client::DATA_OUT;
    d[1] = 0x80;
    d[16..20].copy_from_slice(&itt.to_be_bytes());
    d[20..24].copy_from_slice(&r2t.bhs[20..24]);
    d[36..40].copy_from_slice(&5u32.to_be_bytes());
    i.send(d, &[0xee; 512]);
    assert!(
        i.read().is_none(),
        "a bad DataSN ends the connection (ERL 0)"
    );
    assert_eq!(
        other.read16(8, 1).data,
        before,
        "the refused write did not land"
    );
    // A data segment longer than the target declared: the connection closes before reading it.
    let mut big = session(&s, INITIATOR_A, ISID_1);
    let mut n = [0u8; 48];
    n[0] = 0x40 | common::iscsi_client::NOP_OUT;
    n[1] = 0x80;
    n[5] = 0xff; // 16 MiB announced
    big.stream.write_all_bytes(&n);
    assert!(
        big.read().is_none(),
        "an oversized segment ends the connection"
    );
    // The other session never noticed.
    good(
        &other.read16(0, 1),
        "the other session after the hostile ones",
    );
    s.daemon.assert_no_panic();
}

/// Raw writes on the client's socket.
trait WriteAll {
    fn write_all_bytes(&mut self, b: &[u8]);
}

impl WriteAll for std::net::TcpStream {
    fn write_all_bytes(&mut self, b: &[u8]) {
        use std::io::Write;
        self.write_all(b).unwrap();
    }
}

#[test]
fn lun_reset_reaches_every_transport_and_the_session_protocol_works() {
    const LUN_RESET: u8 = 5;
    const BUS_DEVICE_RESET: (u8, u8, u8) = (0x06, 0x29, 0x03);
    let s = setup();
    let mut g = guest(&s);
    let mut i = session(&s, INITIATOR_A, ISID_1);
    // A LOGICAL UNIT RESET from iSCSI: 29/03 for the guest and for the sender (SAM-5 §7.7).
    assert_eq!(i.tmf(LUN_RESET), 0, "FUNCTION COMPLETE");
    assert_eq!(g.drain_ua(), vec![BUS_DEVICE_RESET]);
    assert_eq!(i.drain_ua(), vec![BUS_DEVICE_RESET]);
    // And from the guest: the iSCSI nexus gets it.
    assert_eq!(
        g.tmf(
            common::scsi_client::TMF_LOGICAL_UNIT_RESET,
            &common::scsi_client::LUN0
        ),
        0
    );
    assert_eq!(i.drain_ua(), vec![BUS_DEVICE_RESET]);
    // CLEAR ACA is rejected (255), TASK REASSIGN not supported at ERL 0 (4).
    assert_eq!(i.tmf(3), 255);
    assert_eq!(i.tmf(8), 4);
    // NOP-Out with a ping: the NOP-In echoes the data.
    let nop = i.immediate(0x00, 0x80, b"ping", |b| {
        b[20..24].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
    });
    let nop = nop.expect("a NOP-In");
    assert_eq!((nop.opcode(), nop.data.as_slice()), (0x20, &b"ping"[..]));
    // SendTargets in a Normal session: our name and portal.
    let text = i.immediate(0x04, 0x80, b"SendTargets=All\0", |b| {
        b[20..24].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
    });
    let text = String::from_utf8_lossy(&text.expect("a Text response").data).into_owned();
    assert!(text.contains(&format!("TargetName={}", s.target)), "{text}");
    assert!(
        text.contains(&format!("TargetAddress={},1", s.addr)),
        "{text}"
    );
    // A SNACK (ERL 1) gets a Reject carrying its header; the session goes on.
    let rej = i.immediate(0x10, 0x80, &[], |_| {}).expect("a Reject");
    assert_eq!(
        (rej.opcode(), rej.bhs[2]),
        (0x3f, 0x04),
        "Reject, protocol error"
    );
    assert_eq!(rej.data[0] & 0x3f, 0x10, "the rejected header");
    good(&i.read16(0, 1), "READ after the Reject");
    assert!(i.logout());
}

#[test]
fn crc32c_digests_both_ways_and_a_bad_header_digest_closes() {
    let s = setup();
    let security = [
        ("InitiatorName", INITIATOR_A),
        ("TargetName", s.target.as_str()),
        ("AuthMethod", "None"),
    ];
    let operational = [
        ("HeaderDigest", "CRC32C,None"),
        ("DataDigest", "CRC32C,None"),
        ("InitialR2T", "Yes"),
        ("MaxRecvDataSegmentLength", "65536"),
    ];
    let mut i = IscsiClient::login_with(s.addr, &security, &operational, ISID_1).unwrap();
    assert!(i.header_digest && i.data_digest, "{:?}", i.answers);
    i.drain_ua();
    // 128 KiB: 64 KiB immediate, the rest on R2T; read back; every PDU digested both ways.
    let data: Vec<u8> = (0..128 * 1024).map(|n| (n % 251) as u8).collect();
    good(&i.write16(64, &data), "WRITE with digests");
    let r = i.read16(64, 256);
    good(&r, "READ with digests");
    assert!(r.data == data, "the data came back");
    // A PDU whose header digest is wrong: the connection closes (its lengths can't be trusted).
    let b = i.cmd_header(&common::scsi_client::read16_cdb(0, 1), 512, true, false);
    i.header_digest = false;
    let mut raw = b.to_vec();
    raw.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    use std::io::Write;
    i.stream.write_all(&raw).unwrap();
    assert!(
        i.read().is_none(),
        "a bad header digest ends the connection"
    );
}

#[test]
fn an_orphaned_nexus_is_shown_and_preempted_by_the_operator() {
    use common::ctl::{ctl, ctl_json};
    let s = setup();
    // A session registers and goes away without unregistering (libiscsi's next login has a
    // new ISID): its registration stays behind, under its nexus name.
    let mut gone = session(&s, INITIATOR_A, ISID_1);
    good(&gone.prout(SA_REGISTER, 0, 0, 0x5a), "REGISTER");
    good(&gone.prout(SA_RESERVE, WE, 0x5a, 0), "RESERVE");
    drop(gone);
    let nexus = format!("{INITIATOR_A},i,0x801234560001");
    let sock = s.daemon.control();
    let shown = ctl_json(&sock, &["pr", "show"]);
    // The JSON keeps its schema: the nexus is under "guest", its TransportID format 01b.
    assert_eq!(
        shown["registrations"][0]["guest"],
        nexus.as_str(),
        "{shown}"
    );
    let tid = shown["registrations"][0]["transport_id"].as_str().unwrap();
    assert!(tid.starts_with("45"), "{tid}");
    let text = ctl(&sock, &["pr", "show"]).ok().stdout;
    assert!(text.contains(&nexus), "{text}");
    // Preempting the holder alone would leave the reservation free for the nexus to use again
    // (it may come back with the same ISID): refused with exit 24, nothing changed.
    let refused = ctl(&sock, &["pr", "preempt", "--victim", &nexus, "--yes"]);
    assert_eq!(refused.code, 24, "{}", refused.stderr);
    // A new session registers and the operator has it take the reservation over (`--by`): the
    // orphaned nexus is gone from the registrations and the new session writes.
    let mut next = session(&s, INITIATOR_A, ISID_2);
    good(
        &next.prout(SA_REGISTER, 0, 0, 0x77),
        "REGISTER (new session)",
    );
    let survivor = format!("{INITIATOR_A},i,0x801234560002");
    let after = ctl_json(
        &sock,
        &[
            "pr", "preempt", "--victim", &nexus, "--by", &survivor, "--yes",
        ],
    );
    let regs = after["registrations"].as_array().unwrap();
    assert_eq!(regs.len(), 1, "{after}");
    assert_eq!(regs[0]["guest"], survivor.as_str(), "{after}");
    assert_eq!(after["reservation"]["holder"], survivor.as_str(), "{after}");
    good(
        &next.write16(0, &[1; 512]),
        "the new session writes after taking the reservation over",
    );
}

#[test]
fn config_check_names_the_target_the_daemon_serves() {
    let s = setup();
    let file = s.daemon.dir.join("check.toml");
    let toml = format!(
        "[image]\npath = {:?}\n[iscsi]\nlisten = [\"{}\"]\nallow_any_initiator = true\n",
        s.daemon.image, s.addr
    );
    std::fs::write(&file, toml).unwrap();
    let out = common::ctl::sharedisk(&["config", "check", file.to_str().unwrap()]).ok();
    let line = format!("iscsi target:   {}", s.target);
    assert!(out.stdout.contains(&line), "{}", out.stdout);
}

#[test]
fn read_full_status_cdb_is_answered_over_iscsi() {
    let s = setup();
    let mut i = session(&s, INITIATOR_B, ISID_2);
    good(&i.prout(SA_REGISTER, 0, 0, 0x42), "REGISTER");
    let cdb = ScsiClient::prin_cdb(PRIN_READ_FULL_STATUS, 1024);
    let r = i.cmd(&cdb, &[], 1024);
    good(&r, "READ FULL STATUS over iSCSI");
    let tid = &r.data[8 + 24..];
    assert_eq!(tid[0], 0x45, "format 01b, protocol iSCSI");
    let name = tid[4..].split(|&b| b == 0).next().unwrap();
    assert_eq!(
        String::from_utf8_lossy(name),
        format!("{INITIATOR_B},i,0x801234560002")
    );
}

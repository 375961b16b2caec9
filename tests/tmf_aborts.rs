//! Task management that really aborts (SAM-5 §7), on virtio-scsi and across transports: while a
//! WRITE's I/O is held in flight (the test-hooks write delay) and another WRITE waits behind it,
//! a TMF answers only once the write in flight has reached the image, the queued one is
//! reported aborted (VIRTIO_SCSI_S_ABORTED) and never reaches it, and a LOGICAL UNIT RESET from
//! an iSCSI initiator does the same to a vhost-user guest's commands, and the reverse (a
//! COMPARE AND WRITE in flight included).

mod common;

use std::time::{Duration, Instant};

use common::daemon::TestDaemon;
use common::iscsi_client::{IscsiClient, RawPdu, INITIATOR_A};
use common::scsi_client::*;

/// How long every write waits before it reaches the image: long enough for the TMF to arrive
/// while the first write is in flight, on a loaded machine.
const DELAY: Duration = Duration::from_millis(1500);
/// The first write: 4 MiB, one admission piece of its own, so the second runs after it.
const BIG: usize = 4 << 20;
const BIG_LBA: u64 = 0;
/// The second write, queued behind the first in the same round.
const SMALL_LBA: u64 = 16384;
const FILL: u8 = 0x5a;
const AFTER_FILL: u8 = 0xc3;
const LU_RESET: SenseTriple = (0x06, 0x29, 0x03);
const ISID: [u8; 6] = [0x80, 0x12, 0x34, 0x56, 0x00, 0x01];

/// A 4 MiB WRITE at `BIG_LBA`, then a one-block WRITE at `SMALL_LBA`, made available together
/// (one kick: one round of the request queue), then time for the first to start its I/O.
fn write_in_flight_and_one_behind(c: &mut ScsiClient) -> (Pending, Pending) {
    c.fe.reset();
    let big = c.submit(
        &LUN0,
        &write16_cdb(BIG_LBA, (BIG / 512) as u32),
        &vec![FILL; BIG],
        0,
        false,
    );
    let small = c.submit(
        &LUN0,
        &write16_cdb(SMALL_LBA, 1),
        &[AFTER_FILL; 512],
        0,
        true,
    );
    std::thread::sleep(DELAY / 5);
    (big, small)
}

fn finish(c: &mut ScsiClient, p: &Pending, what: &str) -> ScsiResult {
    c.finish(p, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("{what}: no response"))
}

fn on_image(image: &[u8], lba: u64, len: usize) -> &[u8] {
    &image[lba as usize * 512..lba as usize * 512 + len]
}

/// The first write either ended before the TMF's response (GOOD, and its data was on the
/// image when the response came) or was aborted before its I/O (nothing of it ever lands).
#[track_caller]
fn in_flight_write_ended_first(r: &ScsiResult, snapshot: &[u8], fin: &[u8]) {
    if r.response == VIRTIO_SCSI_S_ABORTED {
        assert!(
            on_image(fin, BIG_LBA, BIG).iter().all(|&b| b == 0),
            "aborted, yet landed"
        );
    } else {
        good(r, "the write in flight");
        assert!(
            on_image(snapshot, BIG_LBA, BIG).iter().all(|&b| b == FILL),
            "the TMF answered before the write in flight reached the image"
        );
    }
}

/// The queued write was reported aborted and nothing of it reached the image.
#[track_caller]
fn queued_write_aborted(r: &ScsiResult, fin: &[u8]) {
    assert_eq!(r.response, VIRTIO_SCSI_S_ABORTED, "the queued write: {r:?}");
    assert_eq!(
        on_image(fin, SMALL_LBA, 512),
        [0; 512],
        "the aborted write landed"
    );
}

/// ABORT TASK SET (SAM-5 §7.3): the write in flight is waited for, the one behind it never
/// starts; the queue keeps serving afterwards.
#[test]
fn abort_task_set_waits_for_the_write_in_flight_and_aborts_the_queued_one() {
    let d = TestDaemon::start_probed(&["a"], |_| {});
    let mut c = ScsiClient::connect(&d.scsi("a"));
    c.drain_ua();
    d.probe().set_write_delay(DELAY);
    let (big, small) = write_in_flight_and_one_behind(&mut c);
    let r = c.tmf_for(TMF_ABORT_TASK_SET, &LUN0, 0);
    let answered = Instant::now();
    let snapshot = std::fs::read(d.image()).unwrap();
    assert_eq!(r, VIRTIO_SCSI_S_FUNCTION_COMPLETE);
    let (r1, r2) = (finish(&mut c, &big, "big"), finish(&mut c, &small, "small"));
    d.probe().set_write_delay(Duration::ZERO);
    let fin = std::fs::read(d.image()).unwrap();
    in_flight_write_ended_first(&r1, &snapshot, &fin);
    queued_write_aborted(&r2, &fin);
    for e in d.probe().events().iter().filter(|e| e.op.changes_data()) {
        assert!(
            e.end <= answered,
            "a write reached the image after the TMF: {e:?}"
        );
    }
    c.fe.reset();
    good(&c.write16(SMALL_LBA, &[1; 512]), "a write after the abort");
    assert_eq!(c.read16(SMALL_LBA, 1).data, vec![1; 512]);
}

/// ABORT TASK (SAM-5 §7.2) names one task: QUERY TASK finds it, the queued one named never
/// starts while the other completes; named while in flight, it is waited for.
#[test]
fn abort_task_aborts_only_the_task_it_names() {
    let d = TestDaemon::start_probed(&["a"], |_| {});
    let mut c = ScsiClient::connect(&d.scsi("a"));
    c.drain_ua();
    d.probe().set_write_delay(DELAY);
    let (big, small) = write_in_flight_and_one_behind(&mut c);
    let q = c.tmf_for(TMF_QUERY_TASK, &LUN0, small.tag);
    assert_eq!(q, VIRTIO_SCSI_S_FUNCTION_SUCCEEDED, "QUERY TASK: present");
    assert_eq!(
        c.tmf_for(TMF_ABORT_TASK, &LUN0, small.tag),
        VIRTIO_SCSI_S_FUNCTION_COMPLETE
    );
    let (r1, r2) = (finish(&mut c, &big, "big"), finish(&mut c, &small, "small"));
    let fin = std::fs::read(d.image()).unwrap();
    good(&r1, "the task not named");
    assert!(on_image(&fin, BIG_LBA, BIG).iter().all(|&b| b == FILL));
    queued_write_aborted(&r2, &fin);
    let q = c.tmf_for(TMF_QUERY_TASK, &LUN0, small.tag);
    assert_eq!(q, VIRTIO_SCSI_S_FUNCTION_COMPLETE, "QUERY TASK: gone");

    // Now name the write in flight: the response waits for it; the other one is untouched.
    std::fs::write(d.image(), vec![0u8; common::daemon::IMAGE_SIZE as usize]).unwrap();
    let (big, small) = write_in_flight_and_one_behind(&mut c);
    let r = c.tmf_for(TMF_ABORT_TASK, &LUN0, big.tag);
    let snapshot = std::fs::read(d.image()).unwrap();
    assert_eq!(r, VIRTIO_SCSI_S_FUNCTION_COMPLETE);
    let (r1, r2) = (finish(&mut c, &big, "big"), finish(&mut c, &small, "small"));
    d.probe().set_write_delay(Duration::ZERO);
    let fin = std::fs::read(d.image()).unwrap();
    in_flight_write_ended_first(&r1, &snapshot, &fin);
    good(&r2, "the task not named");
    assert_eq!(on_image(&fin, SMALL_LBA, 512), [AFTER_FILL; 512]);
}

use common::iscsi_portal::PortalDaemon as Setup;

fn setup() -> Setup {
    let delay = DELAY.as_millis().to_string();
    Setup::start(
        &[INITIATOR_A],
        &[],
        &[("SHAREDISK_TEST_WRITE_DELAY_MS", &delay)],
    )
}

/// A session of INITIATOR_A with ISID to the portal, past its unit attentions; `what` names the
/// login in the panic of a refusal.
fn login(s: &Setup, what: &str) -> IscsiClient {
    let mut i = IscsiClient::login(s.addr, INITIATOR_A, &s.target, ISID)
        .unwrap_or_else(|st| panic!("{what} refused: {st:#06x}"));
    i.drain_ua();
    i
}

fn clients(s: &Setup) -> (ScsiClient, IscsiClient) {
    let mut g = ScsiClient::connect(&s.daemon.scsi("vm1"));
    g.drain_ua();
    (g, login(s, "login"))
}

/// Sends a one-block WRITE at SMALL_LBA without its data: returns the R2T the target asks for
/// it with.
fn write_awaiting_r2t(i: &mut IscsiClient) -> RawPdu {
    let cmd = i.cmd_header(&write16_cdb(SMALL_LBA, 1), 512, false, true);
    i.send(cmd, &[]);
    let r2t = i.read().expect("an R2T");
    assert_eq!(r2t.opcode(), 0x31, "R2T");
    r2t
}

/// Sends a TEST UNIT READY and asserts that the next response is its own (no response of an
/// aborted command before it) and reports `sense`; returns it.
#[track_caller]
fn tur_reports_first(i: &mut IscsiClient, sense: SenseTriple) -> RawPdu {
    let tur = i.cmd_header(&[0; 6], 0, false, false);
    i.send(tur, &[]);
    let r = i.read().expect("a response");
    assert_eq!(
        (r.opcode(), r.u32_at(16)),
        (0x21, u32::from_be_bytes(tur[16..20].try_into().unwrap())),
        "the first response is the TEST UNIT READY's: {:02x?}",
        r.bhs
    );
    assert_eq!(
        r.data.get(4..16).map(|d| (d[0] & 0x0f, d[10], d[11])),
        Some(sense),
        "TUR: {:02x?}",
        r.data
    );
    r
}

/// A LOGICAL UNIT RESET from an iSCSI initiator (RFC 7143 §11.5.1 function 5) aborts a
/// vhost-user guest's queued write and waits for its write in flight, before it answers.
#[test]
fn iscsi_logical_unit_reset_aborts_a_vhost_user_guests_commands() {
    let s = setup();
    let (mut g, mut i) = clients(&s);
    let (big, small) = write_in_flight_and_one_behind(&mut g);
    assert_eq!(i.tmf(5), 0, "LOGICAL UNIT RESET: function complete");
    let snapshot = std::fs::read(&s.daemon.image).unwrap();
    let (r1, r2) = (finish(&mut g, &big, "big"), finish(&mut g, &small, "small"));
    let fin = std::fs::read(&s.daemon.image).unwrap();
    in_flight_write_ended_first(&r1, &snapshot, &fin);
    queued_write_aborted(&r2, &fin);
    g.fe.reset();
    check(&g.tur(), LU_RESET, "the guest learns of the reset");
    assert_eq!(i.drain_ua(), vec![LU_RESET]);
}

/// A LOGICAL UNIT RESET from a vhost-user guest aborts an iSCSI write whose data is still
/// due (R2T sent): when the data comes the write does not run and gets no response of its own
/// (RFC 7143 §11.5.1); the next command reports the reset.
#[test]
fn vhost_user_logical_unit_reset_aborts_an_iscsi_write_not_started() {
    let s = setup();
    let (mut g, mut i) = clients(&s);
    let data = [AFTER_FILL; 512];
    // No immediate data: the target asks for it with an R2T and waits.
    let r2t = write_awaiting_r2t(&mut i);
    assert_eq!(
        g.tmf(TMF_LOGICAL_UNIT_RESET, &LUN0),
        VIRTIO_SCSI_S_FUNCTION_COMPLETE
    );
    i.answer_r2t(&r2t, &data);
    // The next response is the TEST UNIT READY's, with the reset's UA: a response to the
    // write (run, or failed with that UA) would come first.
    let r = tur_reports_first(&mut i, LU_RESET);
    assert_eq!(r.bhs[3], CHECK_CONDITION, "TUR: {:02x?}", r.bhs);
    good(&i.cmd(&[0; 6], &[], 0), "once");
    let fin = std::fs::read(&s.daemon.image).unwrap();
    assert_eq!(
        on_image(&fin, SMALL_LBA, 512),
        [0; 512],
        "the aborted write landed"
    );
}

/// A LOGICAL UNIT RESET from a vhost-user guest waits for an iSCSI initiator's write in
/// flight: it answers once that write is on the image.
#[test]
fn vhost_user_logical_unit_reset_waits_for_an_iscsi_write_in_flight() {
    let s = setup();
    let (mut g, mut i) = clients(&s);
    let data = [AFTER_FILL; 512];
    let cmd = i.cmd_header(&write16_cdb(SMALL_LBA, 1), 512, false, true);
    i.send(cmd, &data);
    std::thread::sleep(DELAY / 5);
    assert_eq!(
        g.tmf(TMF_LOGICAL_UNIT_RESET, &LUN0),
        VIRTIO_SCSI_S_FUNCTION_COMPLETE
    );
    let snapshot = std::fs::read(&s.daemon.image).unwrap();
    let r = i.finish(&data).expect("the iSCSI write's status");
    assert_eq!(r.status, GOOD, "the write in flight: {r:?}");
    assert_eq!(
        on_image(&snapshot, SMALL_LBA, 512),
        data,
        "the LU reset answered before the iSCSI write in flight reached the image"
    );
    assert_eq!(i.drain_ua(), vec![LU_RESET]);
    check(&g.tur(), LU_RESET, "the guest that reset");
}

/// RFC 7143 §11.5.1: ABORT TASK naming a task the target never saw, whose RefCmdSN is in the
/// window and below the TMF's CmdSN, counts that CmdSN as received and the task as aborted:
/// FUNCTION COMPLETE, ExpCmdSN steps over it, and the command, should it come late, is dropped.
#[test]
fn iscsi_abort_task_counts_a_cmd_sn_not_received_as_received_and_aborted() {
    let s = setup();
    let mut i = login(&s, "login");
    // The command numbered `lost` never reaches the target (yet).
    let lost = i.cmd_sn;
    i.cmd_sn += 1;
    let r = i
        .immediate(0x02, 0x80 | 1, &[], |b| {
            b[20..24].copy_from_slice(&0x7777u32.to_be_bytes());
            b[32..36].copy_from_slice(&lost.to_be_bytes());
        })
        .expect("a TMF response");
    assert_eq!(
        (r.opcode(), r.bhs[2]),
        (0x22, 0),
        "ABORT TASK: function complete"
    );
    assert_eq!(
        r.u32_at(28),
        lost + 1,
        "ExpCmdSN stepped over the aborted CmdSN"
    );
    good(&i.cmd(&[0; 6], &[], 0), "the next command is served");
    // The aborted command arrives late: dropped, so the next response is the READ's.
    let mut late = i.cmd_header(&write16_cdb(SMALL_LBA, 1), 512, false, true);
    late[24..28].copy_from_slice(&lost.to_be_bytes());
    i.cmd_sn -= 1;
    i.send(late, &[AFTER_FILL; 512]);
    let r = i.read16(SMALL_LBA, 1);
    good(&r, "READ after the late command");
    assert_eq!(r.data, vec![0; 512], "the aborted command ran");
    // A RefCmdSN already received (or outside the window) names no task: 1.
    assert_eq!(i.tmf(1), 1, "task does not exist");
}

/// A LOGICAL UNIT RESET from a vhost-user guest does not wait for an iSCSI initiator that
/// stops reading its Data-In: the READs' I/O ended, only their responses are left, so the
/// reset answers (it once waited for the send to finish, for ever).
#[test]
fn vhost_user_logical_unit_reset_does_not_wait_for_an_iscsi_reader_that_stopped_reading() {
    let s = setup();
    let (mut g, mut i) = clients(&s);
    // 64 MiB of Data-In, more than the loopback socket buffers hold: the session's thread
    // blocks sending it, its READ's I/O long done.
    for _ in 0..16 {
        let cmd = i.cmd_header(&read16_cdb(0, 8192), BIG as u32, true, false);
        i.send(cmd, &[]);
    }
    std::thread::sleep(Duration::from_secs(1));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(g.tmf(TMF_LOGICAL_UNIT_RESET, &LUN0));
    });
    let r = rx.recv_timeout(Duration::from_secs(15));
    assert_eq!(
        r,
        Ok(VIRTIO_SCSI_S_FUNCTION_COMPLETE),
        "the LU reset waits for an iSCSI session that does not read"
    );
    drop(i);
}

/// A LOGICAL UNIT RESET affects the tasks in the task set when it is processed (SAM-5 §7): it
/// waits for an iSCSI write in flight, not for the writes the initiator sends while it waits.
/// Here a new write starts before the one before it ends, so one is always in flight (as under
/// steady I/O): the reset answers all the same, before the last of them reaches the image.
#[test]
fn vhost_user_logical_unit_reset_does_not_wait_for_iscsi_writes_sent_after_it() {
    let s = setup();
    let (mut g, mut i) = clients(&s);
    let write = |i: &mut IscsiClient, lba: u64| {
        let cmd = i.cmd_header(&write16_cdb(lba, 1), 512, false, true);
        i.send(cmd, &[AFTER_FILL; 512]);
    };
    write(&mut i, SMALL_LBA);
    std::thread::sleep(DELAY / 5);
    let image = s.daemon.image.clone();
    let reset = std::thread::spawn(move || {
        let r = g.tmf(TMF_LOGICAL_UNIT_RESET, &LUN0);
        (r, std::fs::read(image).unwrap())
    });
    let later: Vec<u64> = (1..=4).map(|k| SMALL_LBA + 8 * k).collect();
    for &lba in &later {
        std::thread::sleep(DELAY * 2 / 3);
        write(&mut i, lba);
    }
    let (r, snapshot) = reset.join().unwrap();
    assert_eq!(r, VIRTIO_SCSI_S_FUNCTION_COMPLETE);
    assert_eq!(
        on_image(&snapshot, SMALL_LBA, 512),
        [AFTER_FILL; 512],
        "the LU reset answered before the write in flight reached the image"
    );
    assert!(
        on_image(&snapshot, later[3], 512).iter().all(|&b| b == 0),
        "the LU reset waited for the writes sent after it"
    );
    for _ in 0..5 {
        i.finish(&[]).expect("a status");
    }
}

/// Session reinstatement (RFC 7143 §6.3.5) ends the old session's tasks before the new session
/// is logged in: a write of the old session still in flight has reached the image by then, so
/// the new session reads what stays there, never a block a late write changes afterwards.
#[test]
fn reinstatement_waits_for_the_old_sessions_write_in_flight() {
    let s = setup();
    let (_g, mut old) = clients(&s);
    let data = [AFTER_FILL; 512];
    let cmd = old.cmd_header(&write16_cdb(SMALL_LBA, 1), 512, false, true);
    old.send(cmd, &data);
    std::thread::sleep(DELAY / 5);
    let mut new = login(&s, "reinstatement");
    let r = new.read16(SMALL_LBA, 1);
    good(&r, "READ on the new session");
    std::thread::sleep(DELAY);
    let fin = std::fs::read(&s.daemon.image).unwrap();
    assert_eq!(
        r.data,
        on_image(&fin, SMALL_LBA, 512),
        "the old session's write landed after the new session was logged in"
    );
}

/// A LOGICAL UNIT RESET from a vhost-user guest also aborts an iSCSI command still waiting in
/// the session's PDU queue (sent while an earlier write's data was due): when the data comes,
/// neither write runs nor gets a response of its own, and the next command reports the reset.
/// Before, the queued one was not in the task set: it ran when its turn came (and answered
/// CHECK CONDITION with the reset's unit attention).
#[test]
fn vhost_user_logical_unit_reset_aborts_an_iscsi_command_queued_behind_a_write() {
    let s = setup();
    let (mut g, mut i) = clients(&s);
    let data = [AFTER_FILL; 512];
    let r2t = write_awaiting_r2t(&mut i);
    // Behind it, in the session's queue: a WRITE with its data as immediate data.
    let queued = i.cmd_header(&write16_cdb(SMALL_LBA + 8, 1), 512, false, true);
    i.send(queued, &data);
    std::thread::sleep(DELAY / 5);
    assert_eq!(
        g.tmf(TMF_LOGICAL_UNIT_RESET, &LUN0),
        VIRTIO_SCSI_S_FUNCTION_COMPLETE
    );
    i.answer_r2t(&r2t, &data);
    tur_reports_first(&mut i, LU_RESET);
    good(&i.cmd(&[0; 6], &[], 0), "once");
    let fin = std::fs::read(&s.daemon.image).unwrap();
    assert_eq!(
        on_image(&fin, SMALL_LBA, 512),
        [0; 512],
        "the first write landed"
    );
    assert_eq!(
        on_image(&fin, SMALL_LBA + 8, 512),
        [0; 512],
        "the queued write landed"
    );
}

/// PREEMPT AND ABORT from a vhost-user guest aborts the preempted iSCSI nexus's task whose
/// data is still due (SPC-4 §5.9.11.5, through the task set): when the data comes the write
/// does not run and gets no response of its own; the next command reports 2A/05. Before, the
/// write ran when its data came and answered RESERVATION CONFLICT.
#[test]
fn preempt_and_abort_aborts_the_victims_queued_iscsi_write() {
    let s = setup();
    let (mut g, mut i) = clients(&s);
    good(&i.prout(0, 0, 0, 0x1), "iSCSI REGISTER");
    good(&i.prout(1, 1, 0x1, 0), "iSCSI RESERVE (write exclusive)");
    g.fe.reset();
    good(&g.prout(0, 0, 0, 0x2, false), "guest REGISTER");
    let data = [AFTER_FILL; 512];
    let r2t = write_awaiting_r2t(&mut i);
    good(&g.prout(5, 1, 0x2, 0x1, false), "guest PREEMPT AND ABORT");
    i.answer_r2t(&r2t, &data);
    tur_reports_first(&mut i, (0x06, 0x2a, 0x05));
    let fin = std::fs::read(&s.daemon.image).unwrap();
    assert_eq!(
        on_image(&fin, SMALL_LBA, 512),
        [0; 512],
        "the aborted write landed"
    );
}

/// A LOGICAL UNIT RESET from a vhost-user guest while an iSCSI initiator's COMPARE AND WRITE is
/// in flight (its write held by the write delay) answers only once that COMPARE AND WRITE has
/// compared and written: nothing of it lands after the TMF response.
#[test]
fn vhost_user_logical_unit_reset_waits_for_an_iscsi_compare_and_write_in_flight() {
    let s = setup();
    let (mut g, mut i) = clients(&s);
    let mut caw = [0u8; 16];
    caw[0] = 0x89;
    caw[2..10].copy_from_slice(&SMALL_LBA.to_be_bytes());
    caw[13] = 1;
    // Verify data: the zeroes on the image; write data: AFTER_FILL.
    let data = [[0u8; 512], [AFTER_FILL; 512]].concat();
    let cmd = i.cmd_header(&caw, 1024, false, true);
    i.send(cmd, &data);
    std::thread::sleep(DELAY / 5);
    assert_eq!(
        g.tmf(TMF_LOGICAL_UNIT_RESET, &LUN0),
        VIRTIO_SCSI_S_FUNCTION_COMPLETE
    );
    let snapshot = std::fs::read(&s.daemon.image).unwrap();
    let r = i.finish(&data).expect("the COMPARE AND WRITE's status");
    assert_eq!(r.status, GOOD, "the COMPARE AND WRITE in flight: {r:?}");
    assert_eq!(
        on_image(&snapshot, SMALL_LBA, 512),
        [AFTER_FILL; 512],
        "the LU reset answered before the COMPARE AND WRITE in flight reached the image"
    );
    assert_eq!(i.drain_ua(), vec![LU_RESET]);
    check(&g.tur(), LU_RESET, "the guest that reset");
}

/// PREEMPT AND ABORT from a guest while the preempted iSCSI nexus's COMPARE AND WRITE is in
/// flight (its write held by the write delay): the PREEMPT's GOOD comes only after that COMPARE
/// AND WRITE has written, and none of the victim's later ones runs.
#[test]
fn preempt_and_abort_waits_for_the_victims_compare_and_write_in_flight() {
    let s = setup();
    let (mut g, mut i) = clients(&s);
    good(&i.prout(0, 0, 0, 0x1), "iSCSI REGISTER");
    good(&i.prout(1, 1, 0x1, 0), "iSCSI RESERVE (write exclusive)");
    g.fe.reset();
    good(&g.prout(0, 0, 0, 0x2, false), "guest REGISTER");
    let mut caw = [0u8; 16];
    caw[0] = 0x89;
    caw[2..10].copy_from_slice(&SMALL_LBA.to_be_bytes());
    caw[13] = 1;
    let data = [[0u8; 512], [AFTER_FILL; 512]].concat();
    let cmd = i.cmd_header(&caw, 1024, false, true);
    i.send(cmd, &data);
    std::thread::sleep(DELAY / 5);
    good(&g.prout(5, 1, 0x2, 0x1, false), "guest PREEMPT AND ABORT");
    let snapshot = std::fs::read(&s.daemon.image).unwrap();
    let r = i.finish(&data).expect("the COMPARE AND WRITE's status");
    assert_eq!(r.status, GOOD, "the COMPARE AND WRITE in flight: {r:?}");
    assert_eq!(
        on_image(&snapshot, SMALL_LBA, 512),
        [AFTER_FILL; 512],
        "the PREEMPT AND ABORT returned before the victim's COMPARE AND WRITE reached the image"
    );
    // The victim's next one: its unit attention, then RESERVATION CONFLICT; nothing lands.
    let again = [[AFTER_FILL; 512], [FILL; 512]].concat();
    let r = i.cmd(&caw, &again, 0);
    assert_eq!(r.sense, Some((0x06, 0x2a, 0x05)), "{r:?}");
    let r = i.cmd(&caw, &again, 0);
    assert_eq!(r.status, RESERVATION_CONFLICT, "{r:?}");
    let fin = std::fs::read(&s.daemon.image).unwrap();
    assert_eq!(on_image(&fin, SMALL_LBA, 512), [AFTER_FILL; 512]);
}

//! Task management over the wire (SAM-5 §7; virtio 1.2 §5.6.6.2 for the mapping): for every
//! virtio-scsi TMF, its response, the unit attentions it establishes and for whom, and what it
//! does to SPC-2 and persistent reservations, as several initiators on one daemon see it. What
//! the aborting TMFs do to commands in flight or queued is tests/tmf_aborts.rs.

mod common;

use common::daemon::TestDaemon;
use common::scsi_client::*;

const K_A: u64 = 0xaaaa_0000_0000_00a1;
const K_B: u64 = 0xbbbb_0000_0000_00b2;
const K_C: u64 = 0xcccc_0000_0000_00c3;

const LU_RESET: SenseTriple = (0x06, 0x29, 0x03);
const NEXUS_LOSS: SenseTriple = (0x06, 0x29, 0x07);
const REG_PREEMPTED: SenseTriple = (0x06, 0x2a, 0x05);
const LUN_NOT_SUPPORTED: SenseTriple = (0x05, 0x25, 0x00);

const RESERVE6: [u8; 6] = [0x16, 0, 0, 0, 0, 0];
const RELEASE6: [u8; 6] = [0x17, 0, 0, 0, 0, 0];

/// The TMFs that find nothing to do when no command is outstanding (with commands in flight:
/// tests/tmf_aborts.rs).
const NOTHING_TO_ABORT: [(u32, &str); 5] = [
    (TMF_ABORT_TASK, "ABORT TASK"),
    (TMF_ABORT_TASK_SET, "ABORT TASK SET"),
    (TMF_CLEAR_TASK_SET, "CLEAR TASK SET"),
    (TMF_QUERY_TASK, "QUERY TASK"),
    (TMF_QUERY_TASK_SET, "QUERY TASK SET"),
];

#[track_caller]
fn tmf(c: &mut ScsiClient, subtype: u32, want: u8, what: &str) {
    assert_eq!(c.tmf(subtype, &LUN0), want, "{what}");
}

/// The unit attentions `c` has pending, in the order TEST UNIT READY reports them. Unlike
/// `drain_ua` this works under another initiator's RESERVE(6), where TEST UNIT READY conflicts
/// (SPC-2 §5.5.1) once no UA is left to report.
fn pending(c: &mut ScsiClient) -> Vec<SenseTriple> {
    let mut seen = Vec::new();
    loop {
        let r = c.tur();
        assert_eq!(r.response, VIRTIO_SCSI_S_OK, "TUR: {r:?}");
        match (r.status, r.sense) {
            (CHECK_CONDITION, Some(s)) if s.0 == 0x06 => seen.push(s),
            (GOOD | RESERVATION_CONFLICT, None) => return seen,
            _ => panic!("TUR: {r:?}"),
        }
        assert!(seen.len() <= 16, "UAs never drained: {seen:02x?}");
    }
}

#[track_caller]
fn no_ua(c: &mut [ScsiClient], what: &str) {
    for (i, x) in c.iter_mut().enumerate() {
        assert_eq!(pending(x), vec![], "{what}: initiator {i}");
    }
}

fn reg(c: &mut ScsiClient, key: u64) {
    good(
        &c.prout(SA_REGISTER_AND_IGNORE, 0, 0, key, false),
        "register",
    );
}

/// The PR state as READ KEYS and READ RESERVATION report it.
#[derive(Debug, PartialEq)]
struct PrState {
    generation: u32,
    keys: Vec<u64>,
    reservation: Option<(u64, u8)>,
}

fn pr_state(c: &mut ScsiClient) -> PrState {
    let (generation, keys) = c.read_keys();
    PrState {
        generation,
        keys,
        reservation: c.read_reservation().1,
    }
}

// ---- LOGICAL UNIT RESET ----

/// SAM-5 §6.3.3 e): a LU reset establishes 29/03 BUS DEVICE RESET FUNCTION OCCURRED for every
/// I_T nexus, the one that sent it included, and it is reported once, by the next command that
/// is not INQUIRY, REPORT LUNS or REQUEST SENSE.
#[test]
fn logical_unit_reset_gives_every_initiator_one_29_03() {
    let d = TestDaemon::start(&["a", "b", "c", "d", "e"]);
    let mut c: Vec<ScsiClient> = ["a", "b", "c", "d"]
        .iter()
        .map(|g| ScsiClient::connect(&d.scsi(g)))
        .collect();
    for x in c.iter_mut() {
        assert_eq!(pending(x), vec![POWER_ON]);
    }
    tmf(
        &mut c[0],
        TMF_LOGICAL_UNIT_RESET,
        VIRTIO_SCSI_S_FUNCTION_COMPLETE,
        "LU reset",
    );
    // a, the sender, on a TEST UNIT READY.
    check(&c[0].tur(), LU_RESET, "a");
    good(&c[0].tur(), "a, once");
    // b: INQUIRY, REPORT LUNS and REQUEST SENSE neither fail nor consume it; a READ does.
    good(&c[1].cmd(&[0x12, 0, 0, 0, 96, 0], &[], 96), "INQUIRY");
    good(
        &c[1].cmd(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[], 256),
        "REPORT LUNS",
    );
    good(&c[1].cmd(&[0x03, 0, 0, 0, 18, 0], &[], 18), "REQUEST SENSE");
    check(&c[1].read16(0, 1), LU_RESET, "b's READ");
    good(&c[1].read16(0, 1), "b, once");
    // c on a PR IN; d on a WRITE, which is not carried out.
    check(&c[2].prin(PRIN_READ_KEYS, 64), LU_RESET, "c's PR IN");
    good(&c[2].prin(PRIN_READ_KEYS, 64), "c, once");
    check(&c[3].write16(7, &[0x22; 512]), LU_RESET, "d's WRITE");
    let r = c[3].read16(7, 1);
    good(&r, "d, once");
    assert_eq!(
        r.data,
        vec![0; 512],
        "the WRITE that reported the UA wrote nothing"
    );
    // e was not connected: on its first commands it learns of the power on, then the resets.
    let mut e = ScsiClient::connect(&d.scsi("e"));
    assert_eq!(pending(&mut e), vec![POWER_ON, LU_RESET]);
    // Two resets before the next command: reported once.
    for _ in 0..2 {
        tmf(
            &mut c[2],
            TMF_LOGICAL_UNIT_RESET,
            VIRTIO_SCSI_S_FUNCTION_COMPLETE,
            "again",
        );
    }
    for x in c.iter_mut().chain([&mut e]) {
        assert_eq!(pending(x), vec![LU_RESET]);
    }
}

/// Persistent reservations survive a LU reset (SPC-4 §5.9.1), and so do the UAs already
/// pending; the reset's is reported first (SAM-5 §5.14).
#[test]
fn logical_unit_reset_keeps_pr_state_and_pending_uas() {
    let (_d, mut c) = four_clients();
    reg(&mut c[0], K_A);
    reg(&mut c[1], K_B);
    reg(&mut c[2], K_C);
    good(&c[0].prout(SA_RESERVE, 5, K_A, 0, false), "reserve WE-RO");
    good(&c[0].prout(SA_PREEMPT, 5, K_A, K_C, false), "a preempts c");
    let before = pr_state(&mut c[0]);
    tmf(
        &mut c[1],
        TMF_LOGICAL_UNIT_RESET,
        VIRTIO_SCSI_S_FUNCTION_COMPLETE,
        "b resets",
    );
    assert_eq!(pending(&mut c[2]), vec![LU_RESET, REG_PREEMPTED], "c");
    for i in [0, 1, 3] {
        assert_eq!(pending(&mut c[i]), vec![LU_RESET], "initiator {i}");
    }
    assert_eq!(pr_state(&mut c[3]), before, "keys, generation, reservation");
    good(&c[0].write16(0, &[1; 512]), "the holder writes");
    good(
        &c[1].write16(0, &[1; 512]),
        "a registrant writes under WE-RO",
    );
    conflict(&c[2].write16(0, &[1; 512]), "c, preempted, is still fenced");
    conflict(&c[3].write16(0, &[1; 512]), "d was never registered");
}

/// SAM-5 §6.3.3 c): a LU reset releases a reservation made with RESERVE(6).
#[test]
fn logical_unit_reset_releases_an_spc2_reservation() {
    let (_d, mut c) = four_clients();
    good(&c[1].cmd(&RESERVE6, &[], 0), "b RESERVE(6)");
    conflict(&c[0].write16(0, &[1; 512]), "a is shut out");
    tmf(
        &mut c[0],
        TMF_LOGICAL_UNIT_RESET,
        VIRTIO_SCSI_S_FUNCTION_COMPLETE,
        "a resets",
    );
    assert_eq!(pending(&mut c[0]), vec![LU_RESET]);
    good(&c[0].write16(0, &[1; 512]), "a writes");
    assert_eq!(pending(&mut c[2]), vec![LU_RESET]);
    good(&c[2].cmd(&RESERVE6, &[], 0), "the LU is free to reserve");
    assert_eq!(pending(&mut c[1]), vec![LU_RESET]);
    conflict(&c[1].write16(0, &[1; 512]), "b no longer holds it");
}

// ---- I_T NEXUS RESET ----

/// SAM-5 §7.6: an I_T nexus loss for the sender alone (29/07 I_T NEXUS LOSS OCCURRED); PR state
/// survives. The LUN field beyond the target is not looked at; another target is BAD TARGET.
#[test]
fn i_t_nexus_reset_is_a_nexus_loss_for_its_initiator_only() {
    let (_d, mut c) = four_clients();
    reg(&mut c[0], K_A);
    reg(&mut c[1], K_B);
    good(&c[0].prout(SA_RESERVE, 1, K_A, 0, false), "reserve WE");
    let before = pr_state(&mut c[2]);
    tmf(
        &mut c[0],
        TMF_I_T_NEXUS_RESET,
        VIRTIO_SCSI_S_FUNCTION_COMPLETE,
        "a",
    );
    assert_eq!(pending(&mut c[0]), vec![NEXUS_LOSS]);
    no_ua(&mut c[1..], "only the sender");
    assert_eq!(pr_state(&mut c[2]), before);
    good(&c[0].write16(0, &[1; 512]), "a still holds");
    conflict(&c[1].write16(0, &[1; 512]), "b still fenced");
    // Any LUN of target 0 names the same nexus.
    for lun in [1u16, 0x3fff] {
        let r = c[1].tmf(TMF_I_T_NEXUS_RESET, &lun_bytes(0, lun));
        assert_eq!(r, VIRTIO_SCSI_S_FUNCTION_COMPLETE, "LUN {lun}");
        assert_eq!(pending(&mut c[1]), vec![NEXUS_LOSS], "LUN {lun}");
    }
    let r = c[1].tmf(TMF_I_T_NEXUS_RESET, &lun_bytes(1, 0));
    assert_eq!(r, VIRTIO_SCSI_S_BAD_TARGET, "target 1");
    no_ua(&mut c, "after the rest");
}

/// SAM-5 §6.3.4: an I_T nexus loss releases the SPC-2 reservation that nexus held, and only
/// that one.
#[test]
fn i_t_nexus_reset_releases_only_its_own_spc2_reservation() {
    let (_d, mut c) = four_clients();
    good(&c[1].cmd(&RESERVE6, &[], 0), "b RESERVE(6)");
    tmf(
        &mut c[0],
        TMF_I_T_NEXUS_RESET,
        VIRTIO_SCSI_S_FUNCTION_COMPLETE,
        "a",
    );
    assert_eq!(pending(&mut c[0]), vec![NEXUS_LOSS]);
    conflict(&c[0].write16(0, &[1; 512]), "b's reservation stays");
    tmf(
        &mut c[1],
        TMF_I_T_NEXUS_RESET,
        VIRTIO_SCSI_S_FUNCTION_COMPLETE,
        "b",
    );
    assert_eq!(pending(&mut c[1]), vec![NEXUS_LOSS]);
    good(&c[0].write16(0, &[1; 512]), "released");
    no_ua(&mut c, "nobody else noticed");
}

// ---- the aborts, the queries, CLEAR ACA ----

/// ABORT TASK, ABORT TASK SET, CLEAR TASK SET (SAM-5 §7.2, §7.3, §7.5): nothing is outstanding,
/// so FUNCTION COMPLETE with no UA (nobody had a command aborted) and no reservation touched.
/// QUERY TASK and QUERY TASK SET (§7.9, §7.10): FUNCTION COMPLETE, i.e. "not present".
#[test]
fn aborts_and_queries_complete_and_change_nothing() {
    let (_d, mut c) = four_clients();
    reg(&mut c[0], K_A);
    reg(&mut c[1], K_B);
    good(&c[0].prout(SA_RESERVE, 3, K_A, 0, false), "reserve EA");
    let before = pr_state(&mut c[0]);
    for (subtype, name) in NOTHING_TO_ABORT {
        for (i, x) in c.iter_mut().enumerate() {
            tmf(
                x,
                subtype,
                VIRTIO_SCSI_S_FUNCTION_COMPLETE,
                &format!("{name} from {i}"),
            );
        }
        no_ua(&mut c, name);
    }
    assert_eq!(pr_state(&mut c[0]), before);
    conflict(&c[1].read16(0, 1), "EA still keeps b out");
    // An SPC-2 reservation survives them too.
    let (_d, mut c) = four_clients();
    good(&c[1].cmd(&RESERVE6, &[], 0), "b RESERVE(6)");
    for (subtype, name) in NOTHING_TO_ABORT {
        for x in c.iter_mut().take(2) {
            tmf(x, subtype, VIRTIO_SCSI_S_FUNCTION_COMPLETE, name);
        }
    }
    no_ua(&mut c, "after the aborts");
    conflict(&c[0].write16(0, &[1; 512]), "b still holds the LU");
    good(&c[1].cmd(&RELEASE6, &[], 0), "b releases");
    good(&c[0].write16(0, &[1; 512]), "then a writes");
}

/// CLEAR ACA (SAM-5 §7.4) is for a LU with NormACA=1; ours has none, so it is not supported:
/// FUNCTION REJECTED, as are subtypes virtio does not define. Neither does anything.
#[test]
fn clear_aca_and_unknown_functions_are_rejected() {
    let (_d, mut c) = four_clients();
    good(&c[1].cmd(&RESERVE6, &[], 0), "b RESERVE(6)");
    for subtype in [TMF_CLEAR_ACA, 8, 9, 99, u32::MAX] {
        tmf(
            &mut c[0],
            subtype,
            VIRTIO_SCSI_S_FUNCTION_REJECTED,
            &format!("subtype {subtype}"),
        );
    }
    no_ua(&mut c, "nothing happened");
    conflict(&c[0].write16(0, &[1; 512]), "b still holds the LU");
}

/// TMFs other than I_T NEXUS RESET address LUN 0 of target 0: another LUN is INCORRECT LUN,
/// another target BAD TARGET, and neither does anything.
#[test]
fn tmfs_for_another_lun_or_target_do_nothing() {
    let (_d, mut c) = four_clients();
    good(&c[1].cmd(&RESERVE6, &[], 0), "b RESERVE(6)");
    let subtypes = [
        TMF_ABORT_TASK,
        TMF_ABORT_TASK_SET,
        TMF_CLEAR_TASK_SET,
        TMF_LOGICAL_UNIT_RESET,
        TMF_QUERY_TASK,
        TMF_QUERY_TASK_SET,
    ];
    for subtype in subtypes {
        for lun in [1u16, 7, 0x3fff] {
            let r = c[0].tmf(subtype, &lun_bytes(0, lun));
            assert_eq!(r, VIRTIO_SCSI_S_INCORRECT_LUN, "{subtype} on LUN {lun}");
        }
        for target in [1u8, 255] {
            let r = c[0].tmf(subtype, &lun_bytes(target, 0));
            assert_eq!(r, VIRTIO_SCSI_S_BAD_TARGET, "{subtype} on target {target}");
        }
    }
    no_ua(&mut c, "nothing was reset");
    conflict(&c[0].write16(0, &[1; 512]), "b's RESERVE(6) stands");
    let r = c[0].cmd_lun(&lun_bytes(0, 1), &[0; 6], &[], 0);
    check(&r, LUN_NOT_SUPPORTED, "LUN 1 is still absent");
}

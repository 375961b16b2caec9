//! The persistent-reservation rules of the reference (scsi-pr.md), proven over the wire: several
//! initiators, each a guest's own vhost-user-scsi connection to one daemon, send real CDBs
//! through a hand-written virtqueue. Plus the SCSI emulation basics every guest depends on.

mod common;

use common::blkio_client::BlkClient;
use common::daemon::{TestDaemon, IMAGE_SIZE};
use common::scsi_client::*;
use sharedisk::pr::{PrStatus, ProutRequest, ResType, ServiceAction};

const K_A: u64 = 0xaaaa_0000_0000_00a1;
const K_B: u64 = 0xbbbb_0000_0000_00b2;
const K_C: u64 = 0xcccc_0000_0000_00c3;
const K_D: u64 = 0xdddd_0000_0000_00d4;
const NUM_BLOCKS: u64 = IMAGE_SIZE / 512;

const RES_PREEMPTED: SenseTriple = (0x06, 0x2a, 0x03);
const RES_RELEASED: SenseTriple = (0x06, 0x2a, 0x04);
const REG_PREEMPTED: SenseTriple = (0x06, 0x2a, 0x05);
const INVALID_OPCODE: SenseTriple = (0x05, 0x20, 0x00);
const LBA_OUT_OF_RANGE: SenseTriple = (0x05, 0x21, 0x00);
const INVALID_FIELD_CDB: SenseTriple = (0x05, 0x24, 0x00);
const LUN_NOT_SUPPORTED: SenseTriple = (0x05, 0x25, 0x00);
const INVALID_FIELD_PARAM: SenseTriple = (0x05, 0x26, 0x00);
const INVALID_RELEASE: SenseTriple = (0x05, 0x26, 0x04);
const PARAM_LIST_LENGTH: SenseTriple = (0x05, 0x1a, 0x00);

const ALL_TYPES: [u8; 6] = [1, 3, 5, 6, 7, 8];

// ---- helpers ----

/// The initiator's next command reports exactly `s`.
#[track_caller]
fn ua(c: &mut ScsiClient, s: SenseTriple, what: &str) {
    check(&c.tur(), s, what);
}

#[track_caller]
fn no_ua(c: &mut ScsiClient, what: &str) {
    good(&c.tur(), what);
}

/// REGISTER AND IGNORE EXISTING KEY.
#[track_caller]
fn reg(c: &mut ScsiClient, key: u64) {
    good(
        &c.prout(SA_REGISTER_AND_IGNORE, 0, 0, key, false),
        "register",
    );
}

#[track_caller]
fn reserve(c: &mut ScsiClient, key: u64, typ: u8) {
    good(&c.prout(SA_RESERVE, typ, key, 0, false), "reserve");
}

fn sorted(mut v: Vec<u64>) -> Vec<u64> {
    v.sort_unstable();
    v
}

fn reservation(c: &mut ScsiClient) -> Option<(u64, u8)> {
    c.read_reservation().1
}

// ---- unit attentions at power on ----

#[test]
fn power_on_ua_is_reported_on_each_initiators_first_command_after_start() {
    let d = TestDaemon::start(&["a", "b", "c"]);
    let mut a = ScsiClient::connect(&d.scsi("a"));
    let mut b = ScsiClient::connect(&d.scsi("b"));
    let mut c = ScsiClient::connect(&d.scsi("c"));
    // INQUIRY, REPORT LUNS, REQUEST SENSE neither fail with nor consume the UA.
    good(&a.cmd(&[0x12, 0, 0, 0, 96, 0], &[], 96), "INQUIRY");
    good(
        &a.cmd(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[], 256),
        "REPORT LUNS",
    );
    good(&a.cmd(&[0x03, 0, 0, 0, 252, 0], &[], 252), "REQUEST SENSE");
    ua(&mut a, POWER_ON, "a's first TUR");
    no_ua(&mut a, "a's second TUR");
    // Each initiator has its own: a READ and a PR IN are reported the UA as well.
    check(&b.read16(0, 1), POWER_ON, "b's first READ");
    good(&b.read16(0, 1), "b's second READ");
    check(&c.prin(PRIN_READ_KEYS, 64), POWER_ON, "c's first PR IN");
    good(&c.prin(PRIN_READ_KEYS, 64), "c's second PR IN");
    // A second connection of the same guest is the same initiator: no new UA.
    drop(a);
    let mut a = ScsiClient::connect(&d.scsi("a"));
    no_ua(&mut a, "a reconnected");
}

// ---- PR OUT: common rules ----

/// The PR OUT service actions with the basic 24-byte parameter list.
const BASIC_ACTIONS: [u8; 7] = [
    SA_REGISTER,
    SA_RESERVE,
    SA_RELEASE,
    SA_CLEAR,
    SA_PREEMPT,
    SA_PREEMPT_AND_ABORT,
    SA_REGISTER_AND_IGNORE,
];

/// a (K_A) holds type 5, b (K_B) is registered: the state the validation tests start from, in
/// which every service action would otherwise do something.
fn a_holds_5() -> (TestDaemon, Vec<ScsiClient>) {
    let (d, mut c) = four_clients();
    reg(&mut c[0], K_A);
    reg(&mut c[1], K_B);
    reserve(&mut c[0], K_A, 5);
    (d, c)
}

/// Nothing changed since `a_holds_5`, and nobody has a UA.
#[track_caller]
fn unchanged(c: &mut [ScsiClient], what: &str) {
    assert_eq!(c[0].read_keys(), (2, vec![K_A, K_B]), "{what}");
    assert_eq!(reservation(&mut c[0]), Some((K_A, 5)), "{what}");
    for x in c.iter_mut() {
        no_ua(x, what);
    }
}

#[test]
fn prout_parameter_list_length_other_than_24_is_05_1a_00() {
    let (_d, mut c) = a_holds_5();
    for len in [0usize, 1, 8, 16, 23, 25, 28, 32, 48] {
        for sa in BASIC_ACTIONS {
            let mut params = vec![0u8; len];
            if len >= 16 {
                params[0..8].copy_from_slice(&K_A.to_be_bytes());
                params[8..16].copy_from_slice(&K_B.to_be_bytes());
            }
            let r = c[0].prout_raw(&prout_cdb(sa, 5, len as u32), &params);
            check(
                &r,
                PARAM_LIST_LENGTH,
                &format!("SA {sa} with a {len}-byte list"),
            );
        }
    }
    // Announced 24, but only 16 sent.
    let r = c[2].prout_raw(&prout_cdb(SA_REGISTER, 0, 24), &[0; 16]);
    check(
        &r,
        PARAM_LIST_LENGTH,
        "data-out shorter than the announced list",
    );
    // REGISTER AND MOVE: 24 bytes plus exactly the TransportID it announces (SPC-4 §6.16.4).
    let tid = iscsi_tid(&guest_iqn("c"));
    let good_list = register_and_move_params(K_A, K_C, false, false, &tid);
    for (what, list) in [
        ("header cut to 23 bytes", good_list[..23].to_vec()),
        (
            "TransportID cut short",
            good_list[..good_list.len() - 4].to_vec(),
        ),
        ("list padded past the TransportID", {
            let mut l = good_list.clone();
            l.extend_from_slice(&[0; 4]);
            l
        }),
    ] {
        let r = c[0].prout_raw(
            &prout_cdb(SA_REGISTER_AND_MOVE, 0, list.len() as u32),
            &list,
        );
        check(&r, PARAM_LIST_LENGTH, &format!("REGISTER AND MOVE, {what}"));
    }
    unchanged(&mut c, "after the length errors");
}

/// SPC-4 §6.16.2: SCOPE must be LU_SCOPE and TYPE one of table 187's where they are used:
/// RESERVE, RELEASE, and a PREEMPT (AND ABORT) that preempts the reservation.
#[test]
fn prout_scope_and_type_are_validated_where_they_are_used() {
    let bad: Vec<u8> = (1..=15u8)
        .map(|scope| (scope << 4) | 5)
        .chain([0u8, 2, 4, 9, 10, 11, 12, 13, 14, 15])
        .collect();
    let (_d, mut c) = a_holds_5();
    for &st in &bad {
        let what = format!("scope/type {st:#04x}");
        for sa in [SA_RESERVE, SA_RELEASE] {
            let r = c[0].prout(sa, st, K_A, 0, false);
            check(&r, INVALID_FIELD_CDB, &format!("holder's SA {sa}, {what}"));
            let r = c[1].prout(sa, st, K_B, 0, false);
            check(&r, INVALID_FIELD_CDB, &format!("other's SA {sa}, {what}"));
        }
        for sa in PREEMPTS {
            // b preempts the holder's key; a preempts its own reservation.
            let r = c[1].prout(sa, st, K_B, K_A, false);
            check(&r, INVALID_FIELD_CDB, &format!("SA {sa} of a, {what}"));
            let r = c[0].prout(sa, st, K_A, K_A, false);
            check(&r, INVALID_FIELD_CDB, &format!("SA {sa} of itself, {what}"));
        }
    }
    unchanged(&mut c, "after the invalid fields");
    // With no reservation: RESERVE and RELEASE still validate them.
    good(&c[0].prout(SA_RELEASE, 5, K_A, 0, false), "release");
    ua(&mut c[1], RES_RELEASED, "b");
    for &st in &bad {
        for sa in [SA_RESERVE, SA_RELEASE] {
            let r = c[0].prout(sa, st, K_A, 0, false);
            check(&r, INVALID_FIELD_CDB, &format!("SA {sa}, {st:#04x}"));
        }
    }
    assert_eq!(reservation(&mut c[0]), None);
    // Under an all-registrants type, PREEMPT with SARK=0 preempts the reservation.
    reserve(&mut c[0], K_A, 7);
    for &st in &bad {
        for sa in PREEMPTS {
            let r = c[1].prout(sa, st, K_B, 0, false);
            check(&r, INVALID_FIELD_CDB, &format!("SA {sa} SARK=0, {st:#04x}"));
        }
    }
    assert_eq!(c[0].read_keys(), (2, vec![K_A, K_B]));
    assert_eq!(reservation(&mut c[0]), Some((0, 7)));
    for x in c.iter_mut() {
        no_ua(x, "nobody was preempted");
    }
}

/// The fault of issue 7: a PREEMPT that only removes registrations (no reservation, or SARK not
/// the holder's key, or SARK≠0 under an all-registrants type) ignores SCOPE and TYPE
/// (SPC-4 §5.9.11.4.4 b), so TYPE = 0 must not be 05/24/00.
#[test]
fn preempt_that_only_removes_registrations_ignores_scope_and_type() {
    for sa in PREEMPTS {
        for (held, st) in [
            (None, 0x00u8),
            (Some(1u8), 0x00),
            (Some(7), 0x00),
            (Some(5), 0xf9),
        ] {
            let what = format!("SA {sa} under {held:?} with scope/type {st:#04x}");
            let (_d, mut c) = four_clients();
            reg(&mut c[0], K_A);
            reg(&mut c[1], K_B);
            reg(&mut c[2], K_C);
            if let Some(t) = held {
                reserve(&mut c[1], K_B, t);
            }
            let before = c[0].read_reservation();
            good(&c[0].prout(sa, st, K_A, K_C, false), &what);
            assert_eq!(c[0].read_keys(), (before.0 + 1, vec![K_A, K_B]), "{what}");
            assert_eq!(c[0].read_reservation().1, before.1, "{what}: kept");
            ua(&mut c[2], REG_PREEMPTED, &what);
            no_ua(&mut c[1], &what);
            no_ua(&mut c[0], &what);
        }
    }
}

/// Everything one PR OUT from a changed, as the four initiators see it afterwards.
#[derive(Debug, PartialEq)]
struct Seen {
    status: u8,
    sense: Option<SenseTriple>,
    /// Each initiator's unit attentions, in the order they are reported.
    uas: Vec<Vec<SenseTriple>>,
    keys: (u32, Vec<u64>),
    reservation: Option<(u64, u8)>,
    ptpl_a: bool,
}

type Setup = fn(&mut [ScsiClient]);

/// On a fresh daemon: `setup`, then a's PR OUT `cdb` with `params`.
fn prout_seen(setup: Setup, cdb: &[u8], params: &[u8]) -> Seen {
    let (_d, mut c) = four_clients();
    setup(&mut c);
    for x in c.iter_mut() {
        x.drain_ua();
    }
    let r = c[0].prout_raw(cdb, params);
    assert_eq!(r.response, VIRTIO_SCSI_S_OK, "{r:?}");
    let uas = c.iter_mut().map(|x| x.drain_ua()).collect();
    let caps = c[0].prin(PRIN_REPORT_CAPABILITIES, 8);
    good(&caps, "REPORT CAPABILITIES");
    Seen {
        status: r.status,
        sense: r.sense,
        uas,
        keys: c[0].read_keys(),
        reservation: reservation(&mut c[0]),
        ptpl_a: caps.data[3] & 1 == 1,
    }
}

/// Changes one field of a PR OUT CDB or parameter list.
type Mutation = (&'static str, fn(&mut [u8; 10], &mut [u8]));

const SCOPE: Mutation = ("SCOPE 15", |cdb, _| cdb[2] |= 0xf0);
const TYPE_0: Mutation = ("TYPE 0", |cdb, _| cdb[2] &= 0xf0);
const TYPE_9: Mutation = ("TYPE 9", |cdb, _| cdb[2] = (cdb[2] & 0xf0) | 9);
const RK: Mutation = ("RESERVATION KEY", |_, p| p[0..8].fill(0xee));
const SARK: Mutation = ("SERVICE ACTION RESERVATION KEY", |_, p| p[8..16].fill(0xee));
const APTPL: Mutation = ("APTPL", |_, p| p[20] |= FLAG_APTPL);
const ALL_TG_PT: Mutation = ("ALL_TG_PT", |_, p| p[20] |= FLAG_ALL_TG_PT);
/// Obsolete bytes 16-19 and 22-23, reserved byte 21 and the reserved bits of byte 20.
const RESERVED: Mutation = ("reserved and obsolete parameter bytes", |_, p| {
    p[16..20].fill(0xff);
    p[20] |= 0xf2;
    p[21] = 0xff;
    p[22..24].fill(0xff);
});
/// REGISTER AND MOVE: reserved byte 16 and the reserved bits of byte 17.
const RM_RESERVED: Mutation = ("reserved parameter bytes", |_, p| {
    p[16] = 0xff;
    p[17] |= 0xfc;
});

/// A PR OUT CDB and its parameter list.
type Prout = ([u8; 10], Vec<u8>);

fn basic(sa: u8, scope_type: u8, rk: u64, sark: u64) -> Prout {
    (
        prout_cdb(sa, scope_type, 24),
        prout_params(rk, sark, 0).to_vec(),
    )
}

/// SPC-4 §6.16.2 (table "PERSISTENT RESERVE OUT service actions and valid parameters"),
/// §6.16.3, §6.16.4: for every service action, each field it ignores can hold anything without
/// changing what the command does, as the initiators see it.
#[test]
fn fields_a_service_action_ignores_change_nothing() {
    let none: Setup = |_| {};
    let a_b: Setup = |c| {
        reg(&mut c[0], K_A);
        reg(&mut c[1], K_B);
    };
    let a_b_c: Setup = |c| {
        reg(&mut c[0], K_A);
        reg(&mut c[1], K_B);
        reg(&mut c[2], K_C);
    };
    let a_holds: Setup = |c| {
        reg(&mut c[0], K_A);
        reg(&mut c[1], K_B);
        reserve(&mut c[0], K_A, 5);
    };
    let b_holds_1: Setup = |c| {
        reg(&mut c[0], K_A);
        reg(&mut c[1], K_B);
        reg(&mut c[2], K_C);
        reserve(&mut c[1], K_B, 1);
    };
    let b_holds_7: Setup = |c| {
        reg(&mut c[0], K_A);
        reg(&mut c[1], K_B);
        reg(&mut c[2], K_C);
        reserve(&mut c[1], K_B, 7);
    };
    let rm = {
        let tid = iscsi_tid(&guest_iqn("c"));
        let p = register_and_move_params(K_A, K_D, false, false, &tid);
        (prout_cdb(SA_REGISTER_AND_MOVE, 5, p.len() as u32), p)
    };
    let registers = vec![SCOPE, TYPE_9, ALL_TG_PT, RESERVED];
    let mut cases: Vec<(&str, Setup, Prout, Vec<Mutation>)> = vec![
        (
            "REGISTER",
            none,
            basic(SA_REGISTER, 0, 0, K_A),
            registers.clone(),
        ),
        (
            "REGISTER, new key",
            a_b,
            basic(SA_REGISTER, 0, K_A, K_D),
            registers.clone(),
        ),
        (
            "REGISTER, the holder unregisters",
            a_holds,
            basic(SA_REGISTER, 5, K_A, 0),
            vec![SCOPE, TYPE_0, ALL_TG_PT, RESERVED],
        ),
        (
            "REGISTER AND IGNORE EXISTING KEY",
            a_b,
            basic(SA_REGISTER_AND_IGNORE, 0, 0, K_D),
            vec![SCOPE, TYPE_9, RK, ALL_TG_PT, RESERVED],
        ),
        (
            "RESERVE",
            a_b,
            basic(SA_RESERVE, 5, K_A, 0),
            vec![SARK, APTPL, ALL_TG_PT, RESERVED],
        ),
        (
            "RELEASE",
            a_holds,
            basic(SA_RELEASE, 5, K_A, 0),
            vec![SARK, APTPL, ALL_TG_PT, RESERVED],
        ),
        (
            "CLEAR",
            a_holds,
            basic(SA_CLEAR, 0, K_A, 0),
            vec![SCOPE, TYPE_0, TYPE_9, SARK, APTPL, ALL_TG_PT, RESERVED],
        ),
        (
            "REGISTER AND MOVE",
            a_holds,
            rm,
            vec![SCOPE, TYPE_0, TYPE_9, RM_RESERVED],
        ),
    ];
    let removal = vec![SCOPE, TYPE_0, TYPE_9, APTPL, ALL_TG_PT, RESERVED];
    let takeover = vec![APTPL, ALL_TG_PT, RESERVED];
    for sa in PREEMPTS {
        cases.extend([
            (
                "PREEMPT, no reservation",
                a_b_c,
                basic(sa, 1, K_A, K_C),
                removal.clone(),
            ),
            (
                "PREEMPT of a non-holder",
                b_holds_1,
                basic(sa, 1, K_A, K_C),
                removal.clone(),
            ),
            (
                "PREEMPT under type 7, SARK≠0",
                b_holds_7,
                basic(sa, 1, K_A, K_C),
                removal.clone(),
            ),
            (
                "PREEMPT of the holder",
                b_holds_1,
                basic(sa, 3, K_A, K_B),
                takeover.clone(),
            ),
            (
                "PREEMPT of type 7, SARK=0",
                b_holds_7,
                basic(sa, 3, K_A, 0),
                takeover.clone(),
            ),
        ]);
    }
    for (what, setup, (cdb, params), mutations) in cases {
        let want = prout_seen(setup, &cdb, &params);
        assert_eq!((want.status, want.sense), (GOOD, None), "{what}: {want:?}");
        for (field, mutate) in mutations {
            let (mut cdb, mut params) = (cdb, params.clone());
            mutate(&mut cdb, &mut params);
            let got = prout_seen(setup, &cdb, &params);
            assert_eq!(got, want, "{what}: {field} must be ignored");
        }
    }
}

#[test]
fn spec_i_pt_is_05_26_00_for_every_service_action() {
    let (_d, mut c) = a_holds_5();
    for sa in BASIC_ACTIONS {
        let r = c[0].prout_flags(sa, 5, K_A, K_B, FLAG_SPEC_I_PT);
        check(&r, INVALID_FIELD_PARAM, &format!("SA {sa} SPEC_I_PT"));
    }
    let r = c[2].prout_flags(SA_REGISTER, 0, 0, K_C, FLAG_SPEC_I_PT);
    check(&r, INVALID_FIELD_PARAM, "unregistered REGISTER SPEC_I_PT");
    // With a TransportID list after the 24 bytes, as SPEC_I_PT would carry.
    let tid = iscsi_tid(&guest_iqn("d"));
    let mut p = prout_params(0, K_C, FLAG_SPEC_I_PT).to_vec();
    p.extend_from_slice(&(tid.len() as u32).to_be_bytes());
    p.extend_from_slice(&tid);
    let r = c[2].prout_raw(&prout_cdb(SA_REGISTER, 0, p.len() as u32), &p);
    check(&r, INVALID_FIELD_PARAM, "SPEC_I_PT with a TransportID list");
    unchanged(&mut c, "after SPEC_I_PT");
}

/// SPC-4 §6.16.1: reserved CDB bits and NACA (ACA is not supported) are 05/24/00; so are the
/// service actions we do not implement, REPLACE LOST RESERVATION (08h) among them (§6.16.2).
#[test]
fn prout_cdb_reserved_bits_and_unsupported_service_actions_are_05_24_00() {
    let (_d, mut c) = a_holds_5();
    let params = prout_params(K_A, K_B, 0);
    for sa in BASIC_ACTIONS {
        for (what, byte, bits) in [
            ("byte 1 bit 5", 1, 0x20u8),
            ("byte 1 bit 7", 1, 0x80),
            ("byte 3", 3, 0x01),
            ("byte 4", 4, 0x80),
            ("NACA", 9, 0x04),
        ] {
            let mut cdb = prout_cdb(sa, 5, 24);
            cdb[byte] |= bits;
            check(
                &c[0].prout_raw(&cdb, &params),
                INVALID_FIELD_CDB,
                &format!("SA {sa}, {what}"),
            );
        }
    }
    for sa in 8..=0x1fu8 {
        check(
            &c[0].prout_raw(&prout_cdb(sa, 5, 24), &params),
            INVALID_FIELD_CDB,
            &format!("SA {sa:#04x}"),
        );
    }
    unchanged(&mut c, "after the invalid CDBs");
}

#[test]
fn aptpl_is_accepted_and_reported_as_ptpl_a() {
    let (_d, mut c) = four_clients();
    let caps = |c: &mut ScsiClient| {
        let r = c.prin(PRIN_REPORT_CAPABILITIES, 8);
        good(&r, "REPORT CAPABILITIES");
        r.data
    };
    assert_eq!(caps(&mut c[0])[3] & 1, 0, "PTPL_A before any APTPL");
    good(
        &c[0].prout(SA_REGISTER, 0, 0, K_A, true),
        "REGISTER APTPL=1",
    );
    assert_eq!(caps(&mut c[0])[3] & 1, 1, "PTPL_A after APTPL=1");
    assert_eq!(c[0].read_keys(), (1, vec![K_A]));
    good(
        &c[0].prout(SA_REGISTER, 0, K_A, K_A, false),
        "re-REGISTER APTPL=0",
    );
    assert_eq!(caps(&mut c[0])[3] & 1, 0, "PTPL_A follows the last APTPL");
    good(
        &c[1].prout(SA_REGISTER_AND_IGNORE, 0, 0, K_B, true),
        "R&I APTPL=1",
    );
    assert_eq!(caps(&mut c[1])[3] & 1, 1);
}

#[test]
fn report_capabilities_bits() {
    let (_d, mut c) = four_clients();
    let r = c[0].prin(PRIN_REPORT_CAPABILITIES, 8);
    good(&r, "REPORT CAPABILITIES");
    let d = &r.data;
    assert_eq!(d.len(), 8);
    assert_eq!(u16::from_be_bytes([d[0], d[1]]), 8, "LENGTH");
    assert_eq!(d[2] & 0x10, 0x10, "CRH");
    assert_eq!(d[2] & 0x08, 0, "SIP_C=0");
    assert_eq!(d[2] & 0x04, 0x04, "ATP_C");
    assert_eq!(d[2] & 0x01, 0x01, "PTPL_C");
    assert_eq!(d[3] & 0x80, 0x80, "TMV");
    assert_eq!((d[3] >> 4) & 0x07, 1, "ALLOW COMMANDS 001b");
    // Type mask: WR_EX_AR(7) EX_AC_RO(6) WR_EX_RO(5) EX_AC(3) WR_EX(1); EX_AC_AR(0) of byte 5.
    assert_eq!(d[4], 0x80 | 0x40 | 0x20 | 0x08 | 0x02, "type mask byte 4");
    assert_eq!(d[5], 0x01, "type mask byte 5");
}

#[test]
fn all_tg_pt_is_accepted() {
    let (_d, mut c) = four_clients();
    good(
        &c[0].prout_flags(SA_REGISTER, 0, 0, K_A, FLAG_ALL_TG_PT),
        "REGISTER ALL_TG_PT",
    );
    good(
        &c[1].prout_flags(
            SA_REGISTER_AND_IGNORE,
            0,
            0,
            K_B,
            FLAG_ALL_TG_PT | FLAG_APTPL,
        ),
        "R&I ALL_TG_PT APTPL",
    );
    assert_eq!(c[0].read_keys(), (2, vec![K_A, K_B]));
}

#[test]
fn unregistered_initiator_gets_reservation_conflict() {
    let (_d, mut c) = four_clients();
    reg(&mut c[0], K_A);
    reserve(&mut c[0], K_A, 5);
    let gen = c[0].generation();
    let x = &mut c[2];
    for rk in [0, K_A, K_C] {
        conflict(&x.prout(SA_RESERVE, 5, rk, 0, false), "RESERVE");
        conflict(&x.prout(SA_RELEASE, 5, rk, 0, false), "RELEASE");
        conflict(&x.prout(SA_CLEAR, 0, rk, 0, false), "CLEAR");
        conflict(&x.prout(SA_PREEMPT, 5, rk, K_A, false), "PREEMPT");
        conflict(
            &x.prout(SA_PREEMPT_AND_ABORT, 5, rk, K_A, false),
            "PREEMPT AND ABORT",
        );
        conflict(
            &x.register_and_move(rk, K_C, false, "b"),
            "REGISTER AND MOVE",
        );
    }
    assert_eq!(c[0].generation(), gen);
    assert_eq!(c[0].read_keys().1, vec![K_A]);
    assert_eq!(reservation(&mut c[0]), Some((K_A, 5)));
    no_ua(&mut c[0], "holder untouched");
}

// ---- REGISTER / REGISTER AND IGNORE EXISTING KEY ----

#[test]
fn register_all_cases_and_generation() {
    let (_d, mut c) = four_clients();
    // Unregistered, SARK=0: GOOD no-op, no generation bump.
    good(&c[0].prout(SA_REGISTER, 0, 0, 0, false), "no-op REGISTER");
    good(
        &c[0].prout(SA_REGISTER_AND_IGNORE, 0, K_C, 0, false),
        "no-op R&I",
    );
    assert_eq!(c[0].read_keys(), (0, vec![]));
    // Unregistered, RK≠0: RC.
    conflict(
        &c[0].prout(SA_REGISTER, 0, K_A, K_A, false),
        "RK≠0 unregistered",
    );
    assert_eq!(c[0].read_keys(), (0, vec![]));
    // Unregistered, RK=0, SARK≠0: registers, +1.
    good(&c[0].prout(SA_REGISTER, 0, 0, K_A, false), "REGISTER");
    assert_eq!(c[0].read_keys(), (1, vec![K_A]));
    // Two initiators may register the same key.
    good(&c[1].prout(SA_REGISTER, 0, 0, K_A, false), "same key");
    assert_eq!(c[0].read_keys(), (2, vec![K_A, K_A]));
    // Registered, RK ≠ its key: RC.
    conflict(&c[0].prout(SA_REGISTER, 0, K_B, K_C, false), "wrong RK");
    conflict(
        &c[0].prout(SA_REGISTER, 0, 0, K_C, false),
        "RK=0 while registered",
    );
    assert_eq!(c[0].read_keys(), (2, vec![K_A, K_A]));
    // Registered, SARK≠0: the key changes, +1; a holder stays holder with the new key.
    reserve(&mut c[0], K_A, 1);
    assert_eq!(c[0].generation(), 2, "RESERVE does not count");
    good(&c[0].prout(SA_REGISTER, 0, K_A, K_D, false), "change key");
    assert_eq!(c[0].read_keys(), (3, vec![K_D, K_A]));
    assert_eq!(reservation(&mut c[0]), Some((K_D, 1)), "holder keeps it");
    good(&c[0].write16(5, &[1; 512]), "holder still writes");
    conflict(&c[1].write16(5, &[1; 512]), "other still fenced");
    // Registered, SARK=0: unregisters, +1.
    good(&c[1].prout(SA_REGISTER, 0, K_A, 0, false), "unregister");
    assert_eq!(c[0].read_keys(), (4, vec![K_D]));
    // R&I: RK ignored.
    good(
        &c[0].prout(SA_REGISTER_AND_IGNORE, 0, 0x1234, K_B, false),
        "R&I with a wrong RK",
    );
    assert_eq!(c[0].read_keys(), (5, vec![K_B]));
    assert_eq!(reservation(&mut c[0]), Some((K_B, 1)));
    good(
        &c[0].prout(SA_REGISTER_AND_IGNORE, 0, 0x9999, 0, false),
        "R&I unregister",
    );
    assert_eq!(c[0].read_keys(), (6, vec![]));
    assert_eq!(
        reservation(&mut c[0]),
        None,
        "type 1 released by unregister"
    );
    for x in c.iter_mut() {
        no_ua(x, "no UA from REGISTER or a type 1 release");
    }
}

#[test]
fn unregistering_a_we_or_ea_holder_releases_without_ua() {
    for typ in [1u8, 3] {
        let (_d, mut c) = four_clients();
        reg(&mut c[0], K_A);
        reg(&mut c[1], K_B);
        reserve(&mut c[0], K_A, typ);
        good(&c[0].prout(SA_REGISTER, 0, K_A, 0, false), "unregister");
        assert_eq!(c[0].read_keys(), (3, vec![K_B]));
        assert_eq!(reservation(&mut c[0]), None, "type {typ} released");
        no_ua(&mut c[1], "no UA for types 1/3");
        good(&c[1].write16(0, &[2; 512]), "other writes again");
    }
}

#[test]
fn unregistering_a_registrants_only_holder_releases_with_2a04() {
    for typ in [5u8, 6] {
        let (_d, mut c) = four_clients();
        reg(&mut c[0], K_A);
        reg(&mut c[1], K_B);
        reg(&mut c[2], K_C);
        reserve(&mut c[0], K_A, typ);
        good(
            &c[0].prout(SA_REGISTER_AND_IGNORE, 0, 0, 0, false),
            "unregister",
        );
        assert_eq!(c[0].read_keys(), (4, vec![K_B, K_C]));
        assert_eq!(reservation(&mut c[0]), None);
        no_ua(&mut c[0], "the unregistering holder gets no UA");
        ua(&mut c[1], RES_RELEASED, "b: 2A/04");
        ua(&mut c[2], RES_RELEASED, "c: 2A/04");
        no_ua(&mut c[3], "d was never registered");
        no_ua(&mut c[1], "one UA only");
    }
}

#[test]
fn unregistering_under_all_registrants_keeps_the_reservation_until_the_last_leaves() {
    for typ in [7u8, 8] {
        let (_d, mut c) = four_clients();
        reg(&mut c[0], K_A);
        reg(&mut c[1], K_B);
        reserve(&mut c[0], K_A, typ);
        good(&c[0].prout(SA_REGISTER, 0, K_A, 0, false), "a leaves");
        assert_eq!(reservation(&mut c[1]), Some((0, typ)), "stays with b");
        good(&c[1].write16(0, &[3; 512]), "b is a holder");
        conflict(&c[0].write16(0, &[3; 512]), "a is no longer a registrant");
        good(&c[1].prout(SA_REGISTER, 0, K_B, 0, false), "b leaves");
        assert_eq!(c[1].read_keys(), (4, vec![]));
        assert_eq!(
            reservation(&mut c[1]),
            None,
            "gone with the last registrant"
        );
        good(&c[2].write16(0, &[3; 512]), "anyone writes again");
    }
}

// ---- RESERVE / RELEASE ----

#[test]
fn reserve_all_cases() {
    let (_d, mut c) = four_clients();
    reg(&mut c[0], K_A);
    reg(&mut c[1], K_B);
    let gen = c[0].generation();
    conflict(
        &c[0].prout(SA_RESERVE, 5, K_B, 0, false),
        "wrong RK, no reservation",
    );
    assert_eq!(reservation(&mut c[0]), None);
    reserve(&mut c[0], K_A, 5);
    assert_eq!(reservation(&mut c[0]), Some((K_A, 5)));
    good(
        &c[0].prout(SA_RESERVE, 5, K_A, 0, false),
        "holder, same type",
    );
    conflict(
        &c[0].prout(SA_RESERVE, 6, K_A, 0, false),
        "holder, other type",
    );
    conflict(
        &c[0].prout(SA_RESERVE, 5, K_B, 0, false),
        "holder, wrong RK",
    );
    conflict(
        &c[1].prout(SA_RESERVE, 5, K_B, 0, false),
        "non-holder, same type",
    );
    conflict(
        &c[1].prout(SA_RESERVE, 1, K_B, 0, false),
        "non-holder, other type",
    );
    assert_eq!(reservation(&mut c[0]), Some((K_A, 5)));
    assert_eq!(c[0].generation(), gen, "RESERVE never counts");
    // All-registrants: every registrant is a holder and may repeat it.
    good(&c[0].prout(SA_RELEASE, 5, K_A, 0, false), "release");
    ua(&mut c[1], RES_RELEASED, "b");
    reserve(&mut c[0], K_A, 7);
    good(
        &c[1].prout(SA_RESERVE, 7, K_B, 0, false),
        "another holder of 7",
    );
    conflict(
        &c[1].prout(SA_RESERVE, 8, K_B, 0, false),
        "other type under 7",
    );
    assert_eq!(c[0].generation(), gen);
}

#[test]
fn release_all_cases() {
    for typ in ALL_TYPES {
        let (_d, mut c) = four_clients();
        reg(&mut c[0], K_A);
        reg(&mut c[1], K_B);
        let gen = c[0].generation();
        good(
            &c[0].prout(SA_RELEASE, typ, K_A, 0, false),
            "no reservation",
        );
        reserve(&mut c[0], K_A, typ);
        if typ != 7 && typ != 8 {
            good(
                &c[1].prout(SA_RELEASE, typ, K_B, 0, false),
                "registered non-holder",
            );
            assert_eq!(reservation(&mut c[0]), Some((K_A, typ)), "unchanged");
        }
        conflict(
            &c[0].prout(SA_RELEASE, typ, K_B, 0, false),
            "holder, wrong RK",
        );
        let other = if typ == 1 { 3 } else { 1 };
        check(
            &c[0].prout(SA_RELEASE, other, K_A, 0, false),
            INVALID_RELEASE,
            "holder, other type",
        );
        let key = if typ >= 7 { 0 } else { K_A };
        assert_eq!(reservation(&mut c[0]), Some((key, typ)), "still reserved");
        no_ua(&mut c[1], "nothing happened yet");
        good(&c[0].prout(SA_RELEASE, typ, K_A, 0, false), "release");
        assert_eq!(reservation(&mut c[0]), None, "released");
        assert_eq!(c[0].generation(), gen, "RELEASE never counts");
        no_ua(&mut c[0], "the releaser");
        if typ >= 5 {
            ua(&mut c[1], RES_RELEASED, "types 5-8 tell the others");
        }
        no_ua(&mut c[1], "no (further) UA");
        no_ua(&mut c[2], "unregistered");
    }
}

// ---- CLEAR ----

#[test]
fn clear_removes_everything_and_reports_2a03_to_the_others() {
    let (_d, mut c) = four_clients();
    reg(&mut c[0], K_A);
    reg(&mut c[1], K_B);
    reg(&mut c[2], K_C);
    reserve(&mut c[1], K_B, 3);
    let gen = c[0].generation();
    conflict(&c[0].prout(SA_CLEAR, 0, K_B, 0, false), "wrong RK");
    conflict(&c[3].prout(SA_CLEAR, 0, 0, 0, false), "unregistered");
    assert_eq!(c[0].generation(), gen);
    good(&c[0].prout(SA_CLEAR, 0, K_A, 0, false), "CLEAR");
    assert_eq!(c[0].read_keys(), (gen + 1, vec![]), "exactly +1");
    assert_eq!(reservation(&mut c[0]), None);
    no_ua(&mut c[0], "the caller");
    ua(&mut c[1], RES_PREEMPTED, "b");
    ua(&mut c[2], RES_PREEMPTED, "c");
    no_ua(&mut c[1], "one UA");
    no_ua(&mut c[3], "never registered");
    good(&c[3].write16(0, &[4; 512]), "no reservation any more");
}

// ---- PREEMPT / PREEMPT AND ABORT ----

const PREEMPTS: [u8; 2] = [SA_PREEMPT, SA_PREEMPT_AND_ABORT];

#[test]
fn preempt_without_reservation_removes_the_key_and_reports_2a05() {
    for sa in PREEMPTS {
        let (_d, mut c) = four_clients();
        reg(&mut c[0], K_A);
        reg(&mut c[1], K_B);
        reg(&mut c[2], K_B);
        reg(&mut c[3], K_D);
        let gen = c[0].generation();
        good(&c[0].prout(sa, 5, K_A, K_B, false), "preempt K_B");
        assert_eq!(c[0].read_keys(), (gen + 1, vec![K_A, K_D]), "exactly +1");
        assert_eq!(reservation(&mut c[0]), None, "no reservation created");
        ua(&mut c[1], REG_PREEMPTED, "b");
        ua(&mut c[2], REG_PREEMPTED, "c");
        no_ua(&mut c[3], "d kept its key");
        no_ua(&mut c[0], "caller");
        conflict(
            &c[1].prout(SA_RESERVE, 5, K_B, 0, false),
            "b is unregistered now",
        );
    }
}

#[test]
fn preempt_of_the_holder_takes_over_with_2a05_and_2a04_on_type_change() {
    for sa in PREEMPTS {
        for (old, new) in [(5u8, 5u8), (5, 6), (1, 3), (6, 1), (3, 3)] {
            let what = format!("SA {sa} {old}->{new}");
            let (_d, mut c) = four_clients();
            reg(&mut c[0], K_A);
            reg(&mut c[1], K_B);
            reg(&mut c[2], K_C);
            reserve(&mut c[1], K_B, old);
            let gen = c[0].generation();
            good(&c[0].prout(sa, new, K_A, K_B, false), &what);
            assert_eq!(c[0].read_keys(), (gen + 1, vec![K_A, K_C]), "{what}");
            assert_eq!(reservation(&mut c[0]), Some((K_A, new)), "{what}");
            no_ua(&mut c[0], &what);
            ua(&mut c[1], REG_PREEMPTED, &what);
            no_ua(&mut c[1], &what);
            if old != new {
                ua(&mut c[2], RES_RELEASED, &format!("{what}: type changed"));
            }
            no_ua(&mut c[2], &what);
            no_ua(&mut c[3], &what);
        }
    }
}

#[test]
fn preempt_of_a_non_holder_key_keeps_the_reservation() {
    for sa in PREEMPTS {
        let (_d, mut c) = four_clients();
        reg(&mut c[0], K_A);
        reg(&mut c[1], K_B);
        reg(&mut c[2], K_C);
        reserve(&mut c[1], K_B, 5);
        let gen = c[0].generation();
        good(&c[0].prout(sa, 6, K_A, K_C, false), "preempt c");
        assert_eq!(c[0].read_keys(), (gen + 1, vec![K_A, K_B]));
        assert_eq!(reservation(&mut c[0]), Some((K_B, 5)), "unchanged");
        ua(&mut c[2], REG_PREEMPTED, "c");
        no_ua(&mut c[1], "holder");
        conflict(
            &c[2].write16(0, &[1; 512]),
            "c is now unregistered under WE-RO",
        );
    }
}

#[test]
fn preempt_under_all_registrants() {
    for sa in PREEMPTS {
        for typ in [7u8, 8] {
            // SARK=0: every other registration goes; the caller holds with the CDB's type.
            let (_d, mut c) = four_clients();
            reg(&mut c[0], K_A);
            reg(&mut c[1], K_B);
            reg(&mut c[2], K_C);
            reserve(&mut c[1], K_B, typ);
            let gen = c[0].generation();
            good(&c[0].prout(sa, 5, K_A, 0, false), "SARK=0");
            assert_eq!(c[0].read_keys(), (gen + 1, vec![K_A]));
            assert_eq!(reservation(&mut c[0]), Some((K_A, 5)));
            ua(&mut c[1], REG_PREEMPTED, "b");
            ua(&mut c[2], REG_PREEMPTED, "c");
            no_ua(&mut c[0], "caller");

            // SARK≠0: only that key goes; the reservation stays.
            let (_d, mut c) = four_clients();
            reg(&mut c[0], K_A);
            reg(&mut c[1], K_B);
            reg(&mut c[2], K_C);
            reserve(&mut c[1], K_B, typ);
            let gen = c[0].generation();
            good(&c[0].prout(sa, typ, K_A, K_C, false), "SARK=K_C");
            assert_eq!(c[0].read_keys(), (gen + 1, vec![K_A, K_B]));
            assert_eq!(reservation(&mut c[0]), Some((0, typ)));
            ua(&mut c[2], REG_PREEMPTED, "c");
            no_ua(&mut c[1], "b untouched");
            good(&c[1].write16(0, &[1; 512]), "b still a holder");
            conflict(&c[2].write16(0, &[1; 512]), "c no longer a registrant");
        }
    }
}

#[test]
fn preempt_with_sark_0_under_single_holder_types_is_05_26_00() {
    for sa in PREEMPTS {
        for typ in [1u8, 3, 5, 6] {
            let (_d, mut c) = four_clients();
            reg(&mut c[0], K_A);
            reg(&mut c[1], K_B);
            reserve(&mut c[1], K_B, typ);
            let gen = c[0].generation();
            let r = c[0].prout(sa, typ, K_A, 0, false);
            check(&r, INVALID_FIELD_PARAM, &format!("SA {sa} type {typ}"));
            assert_eq!(c[0].read_keys(), (gen, vec![K_A, K_B]));
            assert_eq!(reservation(&mut c[0]), Some((K_B, typ)));
        }
    }
}

#[test]
fn preempt_of_an_unknown_key_or_with_a_wrong_rk_is_rc() {
    for sa in PREEMPTS {
        let (_d, mut c) = four_clients();
        reg(&mut c[0], K_A);
        reg(&mut c[1], K_B);
        let gen = c[0].generation();
        conflict(
            &c[0].prout(sa, 5, K_A, K_D, false),
            "unknown SARK, no reservation",
        );
        reserve(&mut c[1], K_B, 5);
        conflict(
            &c[0].prout(sa, 5, K_A, K_D, false),
            "unknown SARK, reserved",
        );
        conflict(&c[0].prout(sa, 5, K_C, K_B, false), "wrong RK");
        assert_eq!(c[0].read_keys(), (gen, vec![K_A, K_B]));
        assert_eq!(reservation(&mut c[0]), Some((K_B, 5)));
        no_ua(&mut c[1], "nothing happened");
    }
}

#[test]
fn preempting_ones_own_key_keeps_the_registration() {
    for sa in PREEMPTS {
        // Without a reservation: the caller stays, another initiator with the same key goes.
        let (_d, mut c) = four_clients();
        reg(&mut c[0], K_A);
        reg(&mut c[1], K_A);
        let gen = c[0].generation();
        good(&c[0].prout(sa, 5, K_A, K_A, false), "own key");
        assert_eq!(c[0].read_keys(), (gen + 1, vec![K_A]), "+1 even so");
        ua(&mut c[1], REG_PREEMPTED, "b shared the key");
        no_ua(&mut c[0], "caller");
        // As holder: it keeps holding, and may change the type.
        reserve(&mut c[0], K_A, 5);
        reg(&mut c[2], K_C);
        good(&c[0].prout(sa, 6, K_A, K_A, false), "own key, holder");
        assert_eq!(c[0].read_keys().1, vec![K_A, K_C]);
        assert_eq!(reservation(&mut c[0]), Some((K_A, 6)));
        ua(&mut c[2], RES_RELEASED, "type changed");
    }
}

// ---- REGISTER AND MOVE ----

#[test]
fn register_and_move_all_cases() {
    let (_d, mut c) = four_clients();
    reg(&mut c[0], K_A);
    reg(&mut c[1], K_B);
    reserve(&mut c[0], K_A, 5);
    let gen = c[0].generation();
    // Naming the caller, or an initiator the daemon does not know: 05/26/00.
    check(
        &c[0].register_and_move(K_A, K_C, false, "a"),
        INVALID_FIELD_PARAM,
        "move to self",
    );
    check(
        &c[0].register_and_move(K_A, K_C, false, "nobody"),
        INVALID_FIELD_PARAM,
        "move to an unknown initiator",
    );
    conflict(&c[0].register_and_move(K_B, K_C, false, "c"), "wrong RK");
    assert_eq!(c[0].generation(), gen);
    // Move to c (unregistered): c registered with SARK and holder; a stays registered.
    good(&c[0].register_and_move(K_A, K_C, false, "c"), "move to c");
    assert_eq!(c[0].read_keys(), (gen + 1, vec![K_A, K_B, K_C]));
    assert_eq!(reservation(&mut c[0]), Some((K_C, 5)));
    c[2].drain_ua();
    good(&c[2].write16(0, &[5; 512]), "c holds");
    // c moves it on to b (registered) with UNREG: b takes SARK as its key, c leaves.
    good(
        &c[2].register_and_move(K_C, K_D, true, "b"),
        "move to b, UNREG",
    );
    assert_eq!(sorted(c[0].read_keys().1), sorted(vec![K_A, K_D]));
    assert_eq!(c[0].generation(), gen + 2);
    assert_eq!(reservation(&mut c[0]), Some((K_D, 5)));
    c[2].drain_ua();
    conflict(&c[2].write16(0, &[5; 512]), "c unregistered now");
    // A non-holder (a) cannot move it.
    conflict(&c[0].register_and_move(K_A, K_C, false, "c"), "non-holder");
    // Types 7/8: RC.
    for typ in [7u8, 8] {
        let (_d, mut c) = four_clients();
        reg(&mut c[0], K_A);
        reg(&mut c[1], K_B);
        reserve(&mut c[0], K_A, typ);
        let gen = c[0].generation();
        conflict(
            &c[0].register_and_move(K_A, K_C, false, "c"),
            "all-registrants",
        );
        assert_eq!(c[0].read_keys(), (gen, vec![K_A, K_B]));
        assert_eq!(reservation(&mut c[0]), Some((0, typ)));
    }
}

// ---- PR IN ----

#[test]
fn read_keys_and_read_reservation() {
    let (_d, mut c) = four_clients();
    assert_eq!(c[0].read_keys(), (0, vec![]));
    assert_eq!(c[0].read_reservation(), (0, None));
    reg(&mut c[0], K_A);
    reg(&mut c[1], K_B);
    reg(&mut c[2], K_C);
    assert_eq!(c[3].read_keys(), (3, vec![K_A, K_B, K_C]), "any initiator");
    for typ in ALL_TYPES {
        reserve(&mut c[1], K_B, typ);
        let key = if typ >= 7 { 0 } else { K_B };
        assert_eq!(c[3].read_reservation(), (3, Some((key, typ))), "type {typ}");
        good(&c[1].prout(SA_RELEASE, typ, K_B, 0, false), "release");
        for x in [0, 2] {
            c[x].drain_ua();
        }
    }
}

fn full_status_of(c: &mut ScsiClient) -> Vec<FullStatus> {
    c.read_full_status().1
}

#[test]
fn read_full_status_reports_keys_holders_ports_and_distinct_transport_ids() {
    let (_d, mut c) = four_clients();
    reg(&mut c[0], K_A);
    reg(&mut c[1], K_B);
    reg(&mut c[2], K_B);
    reserve(&mut c[1], K_B, 6);
    let (gen, st) = c[3].read_full_status();
    assert_eq!(gen, 3);
    assert_eq!(st.len(), 3);
    for (s, (g, key)) in st.iter().zip([("a", K_A), ("b", K_B), ("c", K_B)]) {
        assert_eq!(s.key, key, "{g}");
        assert_eq!(s.rel_port, 1, "{g}: relative target port 1");
        assert_eq!(s.tid, iscsi_tid(&guest_iqn(g)), "{g}: iSCSI TransportID");
        assert_eq!(s.tid[0], 0x05, "protocol iSCSI, format 00b");
        assert_eq!(s.tid.len() % 4, 0);
        let holder = g == "b";
        assert_eq!(s.holder(), holder, "{g}: R_HOLDER");
        assert_eq!(s.scope_type, if holder { 6 } else { 0 }, "{g}");
    }
    let mut tids: Vec<_> = st.iter().map(|s| s.tid.clone()).collect();
    tids.dedup();
    assert_eq!(tids.len(), 3, "distinct per guest");
    // Types 7/8: every registrant is R_HOLDER.
    good(&c[1].prout(SA_RELEASE, 6, K_B, 0, false), "release");
    c[0].drain_ua();
    c[2].drain_ua();
    reserve(&mut c[0], K_A, 8);
    for s in full_status_of(&mut c[3]) {
        assert!(s.holder(), "all registrants hold: {s:?}");
        assert_eq!(s.scope_type, 8);
    }
}

#[test]
fn prin_allocation_length_truncates_the_data_never_the_additional_length() {
    let (_d, mut c) = four_clients();
    reg(&mut c[0], K_A);
    reg(&mut c[1], K_B);
    reg(&mut c[2], K_C);
    for alloc in [0u16, 4, 7, 8, 12, 16, 31] {
        let r = c[0].prin(PRIN_READ_KEYS, alloc);
        good(&r, "READ KEYS");
        assert_eq!(r.data.len(), usize::from(alloc).min(32), "alloc {alloc}");
        if alloc >= 8 {
            assert_eq!(&r.data[4..8], &24u32.to_be_bytes(), "ADDITIONAL LENGTH");
        }
    }
    // A buffer bigger than ALLOCATION LENGTH: the residual says what was not used.
    let r = c[0].cmd(&ScsiClient::prin_cdb(PRIN_READ_KEYS, 12), &[], 512);
    good(&r, "READ KEYS");
    assert_eq!(r.data.len(), 12);
    assert_eq!(r.resid, 500);
    reserve(&mut c[0], K_A, 5);
    let full = c[0].prin(PRIN_READ_FULL_STATUS, 8192).data;
    for alloc in [8u16, 20, 40, 100] {
        let r = c[0].prin(PRIN_READ_FULL_STATUS, alloc);
        good(&r, "READ FULL STATUS");
        assert_eq!(&r.data[..], &full[..usize::from(alloc).min(full.len())]);
    }
    let r = c[0].prin(PRIN_READ_RESERVATION, 10);
    assert_eq!(&r.data[4..8], &16u32.to_be_bytes());
    assert_eq!(r.data.len(), 10);
}

#[test]
fn prin_service_action_above_3_is_05_24_00() {
    let (_d, mut c) = four_clients();
    for sa in 4..=0x1fu8 {
        check(
            &c[0].prin(sa, 64),
            INVALID_FIELD_CDB,
            &format!("PR IN SA {sa}"),
        );
    }
}

// ---- unit attentions (task management: scsi_tmf.rs) ----

#[test]
fn unit_attentions_queue_per_initiator_one_per_command() {
    let (_d, mut c) = four_clients();
    reg(&mut c[0], K_A);
    reg(&mut c[1], K_B);
    reserve(&mut c[0], K_A, 5);
    good(
        &c[0].prout(SA_RELEASE, 5, K_A, 0, false),
        "release: b gets 2A/04",
    );
    reserve(&mut c[0], K_A, 5);
    good(
        &c[0].prout(SA_PREEMPT, 5, K_A, K_B, false),
        "preempt: b gets 2A/05",
    );
    // Not consumed by INQUIRY, REPORT LUNS, REQUEST SENSE.
    for _ in 0..2 {
        good(&c[1].cmd(&[0x12, 0, 0, 0, 96, 0], &[], 96), "INQUIRY");
        good(
            &c[1].cmd(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[], 256),
            "REPORT LUNS",
        );
        good(&c[1].cmd(&[0x03, 0, 0, 0, 18, 0], &[], 18), "REQUEST SENSE");
    }
    // Reported in order, one per command, by any command (here a READ, then PR IN).
    check(&c[1].read16(0, 1), RES_RELEASED, "first UA");
    check(&c[1].prin(PRIN_READ_KEYS, 64), REG_PREEMPTED, "second UA");
    good(&c[1].read16(0, 1), "drained");
    // Other initiators saw none of it.
    no_ua(&mut c[0], "a");
    no_ua(&mut c[2], "c");
}

#[test]
fn spc2_reserve_and_release_with_registrations() {
    let reserve6 = [0x16u8, 0, 0, 0, 0, 0];
    let release6 = [0x17u8, 0, 0, 0, 0, 0];
    let (_d, mut c) = four_clients();
    reg(&mut c[0], K_A);
    reg(&mut c[1], K_B);
    // Registrations alone: nobody holds, so RC for everyone.
    conflict(&c[0].cmd(&reserve6, &[], 0), "registered, no reservation");
    reserve(&mut c[0], K_A, 5);
    let gen = c[0].generation();
    conflict(
        &c[1].cmd(&reserve6, &[], 0),
        "registered non-holder RESERVE(6)",
    );
    conflict(
        &c[1].cmd(&release6, &[], 0),
        "registered non-holder RELEASE(6)",
    );
    conflict(&c[2].cmd(&reserve6, &[], 0), "unregistered RESERVE(6)");
    conflict(&c[2].cmd(&release6, &[], 0), "unregistered RELEASE(6)");
    good(&c[0].cmd(&reserve6, &[], 0), "holder RESERVE(6)");
    good(&c[0].cmd(&release6, &[], 0), "holder RELEASE(6)");
    assert_eq!(c[0].generation(), gen);
    assert_eq!(
        reservation(&mut c[0]),
        Some((K_A, 5)),
        "no-op for the holder"
    );
    good(&c[1].write16(0, &[1; 512]), "b, a registrant, still writes");
    // All registrants hold under 7/8.
    good(&c[0].prout(SA_RELEASE, 5, K_A, 0, false), "release");
    c[1].drain_ua();
    reserve(&mut c[0], K_A, 7);
    good(&c[1].cmd(&reserve6, &[], 0), "registrant of 7 is a holder");
    good(&c[1].cmd(&release6, &[], 0), "registrant of 7 is a holder");
    conflict(&c[2].cmd(&reserve6, &[], 0), "unregistered under 7");
    assert_eq!(reservation(&mut c[0]), Some((0, 7)));
}

// ---- the access table ----

#[derive(Clone, Copy, Debug, PartialEq)]
enum Class {
    Read,
    Write,
    Always,
}

/// Name, CDB, data-out, data-in length, access class.
type AccessCmd = (&'static str, Vec<u8>, Vec<u8>, usize, Class);

fn access_commands() -> Vec<AccessCmd> {
    vec![
        (
            "READ(16)",
            read16_cdb(10, 1).to_vec(),
            vec![],
            512,
            Class::Read,
        ),
        (
            "READ(10)",
            vec![0x28, 0, 0, 0, 0, 10, 0, 0, 1, 0],
            vec![],
            512,
            Class::Read,
        ),
        (
            "VERIFY(16)",
            vec![0x8f, 0, 0, 0, 0, 0, 0, 0, 0, 10, 0, 0, 0, 1, 0, 0],
            vec![],
            0,
            Class::Read,
        ),
        (
            "PRE-FETCH(10)",
            vec![0x34, 0, 0, 0, 0, 10, 0, 0, 1, 0],
            vec![],
            0,
            Class::Read,
        ),
        (
            "MODE SENSE(6)",
            vec![0x1a, 0, 0x3f, 0, 255, 0],
            vec![],
            255,
            Class::Read,
        ),
        (
            "WRITE(16)",
            write16_cdb(2000, 1).to_vec(),
            vec![9; 512],
            0,
            Class::Write,
        ),
        (
            "WRITE(10)",
            vec![0x2a, 0, 0, 0, 0x07, 0xd1, 0, 0, 1, 0],
            vec![9; 512],
            0,
            Class::Write,
        ),
        (
            "SYNCHRONIZE CACHE(10)",
            vec![0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            vec![],
            0,
            Class::Write,
        ),
        (
            "SYNCHRONIZE CACHE(16)",
            vec![0x91, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            vec![],
            0,
            Class::Write,
        ),
        (
            "MODE SELECT(6)",
            vec![0x15, 0x10, 0, 0, 0, 0],
            vec![],
            0,
            Class::Write,
        ),
        (
            "INQUIRY",
            vec![0x12, 0, 0, 0, 96, 0],
            vec![],
            96,
            Class::Always,
        ),
        ("TEST UNIT READY", vec![0; 6], vec![], 0, Class::Always),
        (
            "READ CAPACITY(10)",
            vec![0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            vec![],
            8,
            Class::Always,
        ),
        (
            "READ CAPACITY(16)",
            vec![0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
            vec![],
            32,
            Class::Always,
        ),
        (
            "REPORT LUNS",
            vec![0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
            vec![],
            256,
            Class::Always,
        ),
        (
            "REQUEST SENSE",
            vec![0x03, 0, 0, 0, 18, 0],
            vec![],
            18,
            Class::Always,
        ),
        (
            "PR IN READ KEYS",
            ScsiClient::prin_cdb(0, 64).to_vec(),
            vec![],
            64,
            Class::Always,
        ),
    ]
}

/// The reference's table. `registered` excludes the holder; under 7/8 registrants hold.
fn allowed(typ: u8, registered: bool, class: Class) -> bool {
    match (typ, class) {
        (_, Class::Always) => true,
        (7 | 8, _) if registered => true,
        (1, Class::Read) => true,
        (1, Class::Write) => false,
        (3, _) => false,
        (5, Class::Read) => true,
        (5, Class::Write) => registered,
        (6, _) => registered,
        (7, Class::Read) => true,
        (7, Class::Write) => false,
        (8, _) => false,
        _ => unreachable!(),
    }
}

#[test]
fn access_table_for_every_type_holder_registered_and_unregistered() {
    let cmds = access_commands();
    for typ in ALL_TYPES {
        let (_d, mut c) = four_clients();
        reg(&mut c[0], K_A);
        reg(&mut c[1], K_B);
        reserve(&mut c[0], K_A, typ);
        for (name, cdb, out, inl, class) in &cmds {
            for (who, role) in [(0usize, "holder"), (1, "registered"), (2, "unregistered")] {
                let r = c[who].cmd(cdb, out, *inl);
                let what = format!("type {typ}, {role}, {name}");
                let ok = who == 0 || allowed(typ, who == 1, *class);
                if ok {
                    good(&r, &what);
                } else {
                    conflict(&r, &what);
                }
            }
        }
        // No reservation: registrations alone restrict nothing.
        let g = if typ >= 5 { Some(RES_RELEASED) } else { None };
        good(&c[0].prout(SA_RELEASE, typ, K_A, 0, false), "release");
        if let Some(s) = g {
            ua(&mut c[1], s, "release UA");
        }
        for (name, cdb, out, inl, _) in &cmds {
            for x in c.iter_mut().take(3) {
                good(&x.cmd(cdb, out, *inl), &format!("no reservation, {name}"));
            }
        }
    }
}

// ---- across devices and paths ----

#[test]
fn a_reservation_taken_over_scsi_fences_blk_and_one_taken_via_the_arbiter_fences_scsi() {
    let (d, mut c) = daemon_with_clients(&["a", "b"]);
    reg(&mut c[0], K_A);
    reserve(&mut c[0], K_A, 5);
    let mut b_blk = BlkClient::connect(&d.blk("b")).unwrap();
    assert!(b_blk.write(0, &[7; 512]).is_err(), "b's blk write fenced");
    b_blk.read(0, 512).unwrap();
    let mut a_blk = BlkClient::connect(&d.blk("a")).unwrap();
    a_blk.write(0, &[7; 512]).unwrap();
    // Registering over SCSI makes b's blk device a registrant too: same initiator.
    reg(&mut c[1], K_B);
    b_blk.write(512, &[8; 512]).unwrap();
    good(&c[0].prout(SA_CLEAR, 0, K_A, 0, false), "clear");
    c[1].drain_ua();

    // A reservation through the arbiter API (as a blk-only guest's would be) fences SCSI.
    let arb = d.server().arbiter();
    let req = ProutRequest::new(ServiceAction::RegisterAndIgnore).sa_key(K_A);
    assert_eq!(arb.prout("a", &req, None), PrStatus::Good);
    let req = ProutRequest::new(ServiceAction::Reserve)
        .key(K_A)
        .typ(ResType::WriteExclusive);
    assert_eq!(arb.prout("a", &req, None), PrStatus::Good);
    conflict(&c[1].write16(0, &[1; 512]), "b's scsi write fenced");
    good(&c[1].read16(0, 1), "WE lets b read");
    good(&c[0].write16(0, &[1; 512]), "a's scsi write");
    assert_eq!(c[1].read_reservation().1, Some((K_A, 1)));
}

#[test]
fn keys_generation_and_reservation_survive_a_restart() {
    let (mut d, mut c) = daemon_with_clients(&["a", "b", "c"]);
    good(&c[0].prout(SA_REGISTER, 0, 0, K_A, true), "register APTPL");
    reg(&mut c[1], K_B);
    reserve(&mut c[0], K_A, 5);
    good(&c[0].prout(SA_PREEMPT, 5, K_A, K_A, false), "bump");
    let keys = c[0].read_keys();
    let res = c[0].read_reservation();
    let full = c[0].read_full_status();
    let caps = c[0].prin(PRIN_REPORT_CAPABILITIES, 8).data;
    assert_eq!(keys, (3, vec![K_A, K_B]));
    drop(c);
    d.restart();
    let mut c: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|g| ScsiClient::connect(&d.scsi(g)))
        .collect();
    for (x, g) in c.iter_mut().zip(["a", "b", "c"]) {
        assert_eq!(x.drain_ua(), vec![POWER_ON], "{g}: restart is a power on");
    }
    assert_eq!(c[2].read_keys(), keys);
    assert_eq!(c[2].read_reservation(), res);
    assert_eq!(c[2].read_full_status(), full, "TransportIDs stable");
    assert_eq!(c[2].prin(PRIN_REPORT_CAPABILITIES, 8).data, caps);
    conflict(&c[2].write16(0, &[1; 512]), "still fenced");
    good(&c[1].write16(0, &[1; 512]), "registrant writes");
}

// ---- SCSI emulation basics ----

#[test]
fn unknown_opcode_bad_field_and_lba_out_of_range() {
    let (_d, mut c) = daemon_with_clients(&["a"]);
    for opcode in [0x02u8, 0x0c, 0x3b, 0x7f, 0xc0, 0xff] {
        check(
            &c[0].cmd(&[opcode, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0),
            INVALID_OPCODE,
            &format!("opcode {opcode:#x}"),
        );
    }
    check(
        &c[0].cmd(&[0x12, 0, 0x80, 0, 96, 0], &[], 96),
        INVALID_FIELD_CDB,
        "INQUIRY page code without EVPD",
    );
    check(
        &c[0].cmd(&[0x12, 1, 0x42, 0, 96, 0], &[], 96),
        INVALID_FIELD_CDB,
        "unknown VPD page",
    );
    check(
        &c[0].cmd(&[0, 0xff, 0, 0, 0, 0], &[], 0),
        INVALID_FIELD_CDB,
        "TUR with reserved bits",
    );
    check(
        &c[0].read16(NUM_BLOCKS, 1),
        LBA_OUT_OF_RANGE,
        "READ past the end",
    );
    check(
        &c[0].read16(NUM_BLOCKS - 1, 2),
        LBA_OUT_OF_RANGE,
        "READ across the end",
    );
    check(
        &c[0].write16(NUM_BLOCKS, &[0; 512]),
        LBA_OUT_OF_RANGE,
        "WRITE past the end",
    );
    check(&c[0].read16(u64::MAX, 1), LBA_OUT_OF_RANGE, "LBA 2^64-1");
    good(&c[0].read16(NUM_BLOCKS - 1, 1), "last block");
}

#[test]
fn inquiry_allocation_length_truncates_with_residual() {
    let (_d, mut c) = daemon_with_clients(&["a"]);
    let full = c[0].cmd(&[0x12, 0, 0, 0, 255, 0], &[], 255);
    good(&full, "INQUIRY");
    assert_eq!(full.data.len(), 96);
    assert_eq!(full.resid, 255 - 96);
    assert_eq!(full.data[0], 0x00, "PQ 0, direct access");
    let r = c[0].cmd(&[0x12, 0, 0, 0, 36, 0], &[], 96);
    good(&r, "INQUIRY 36");
    assert_eq!(r.data, full.data[..36]);
    assert_eq!(r.resid, 60);
    // Buffer smaller than ALLOCATION LENGTH.
    let r = c[0].cmd(&[0x12, 0, 0, 0, 96, 0], &[], 5);
    good(&r, "INQUIRY into 5 bytes");
    assert_eq!(r.data, full.data[..5]);
    assert_eq!(r.resid, 0);
}

#[test]
fn read_capacity_values() {
    let (_d, mut c) = daemon_with_clients(&["a"]);
    let r = c[0].cmd(
        &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
        &[],
        32,
    );
    good(&r, "READ CAPACITY(16)");
    assert_eq!(r.data.len(), 32);
    assert_eq!(
        u64::from_be_bytes(r.data[0..8].try_into().unwrap()),
        NUM_BLOCKS - 1
    );
    assert_eq!(u32::from_be_bytes(r.data[8..12].try_into().unwrap()), 512);
    assert_eq!(r.data[14] & 0xc0, 0xc0, "LBPME and LBPRZ");
    let r = c[0].cmd(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8);
    good(&r, "READ CAPACITY(10)");
    assert_eq!(
        u32::from_be_bytes(r.data[0..4].try_into().unwrap()) as u64,
        NUM_BLOCKS - 1
    );
    assert_eq!(u32::from_be_bytes(r.data[4..8].try_into().unwrap()), 512);
}

#[test]
fn vpd_serial_matches_the_lun_and_device_id_is_the_same_for_every_guest() {
    let (d, mut c) = daemon_with_clients(&["a", "b"]);
    let r = c[0].cmd(&[0x12, 1, 0x80, 0, 255, 0], &[], 255);
    good(&r, "VPD 0x80");
    assert_eq!(r.data[1], 0x80);
    let len = u16::from_be_bytes([r.data[2], r.data[3]]) as usize;
    let serial = std::str::from_utf8(&r.data[4..4 + len]).unwrap().trim();
    assert_eq!(serial, d.server().lun().serial);
    let a = c[0].cmd(&[0x12, 1, 0x83, 0, 255, 0], &[], 255);
    let b = c[1].cmd(&[0x12, 1, 0x83, 0, 255, 0], &[], 255);
    good(&a, "VPD 0x83 a");
    good(&b, "VPD 0x83 b");
    assert_eq!(a.data[1], 0x83);
    assert!(a.data.len() > 4);
    assert_eq!(a.data, b.data, "same LU identity for every initiator");
}

#[test]
fn other_targets_are_bad_target_and_other_luns_not_supported() {
    let (_d, mut c) = daemon_with_clients(&["a"]);
    for target in [1u8, 2, 255] {
        let r = c[0].cmd_lun(&lun_bytes(target, 0), &[0x12, 0, 0, 0, 96, 0], &[], 96);
        assert_eq!(r.response, VIRTIO_SCSI_S_BAD_TARGET, "target {target}");
        let r = c[0].cmd_lun(&lun_bytes(target, 0), &[0; 6], &[], 0);
        assert_eq!(r.response, VIRTIO_SCSI_S_BAD_TARGET, "target {target}");
    }
    for lun in [1u16, 7, 0x3fff] {
        let l = lun_bytes(0, lun);
        check(&c[0].cmd_lun(&l, &[0; 6], &[], 0), LUN_NOT_SUPPORTED, "TUR");
        check(
            &c[0].cmd_lun(&l, &read16_cdb(0, 1), &[], 512),
            LUN_NOT_SUPPORTED,
            "READ",
        );
        let r = c[0].cmd_lun(&l, &[0x12, 0, 0, 0, 96, 0], &[], 96);
        good(&r, "INQUIRY of a missing LUN");
        assert_eq!(r.data[0] >> 5, 3, "PERIPHERAL QUALIFIER 3");
    }
    good(&c[0].tur(), "LUN 0 still fine");
}

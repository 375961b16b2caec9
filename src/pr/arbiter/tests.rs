//! One test per rule of the PR reference, plus a randomized model test (`model.rs`).

mod model;

use crate::pr::wire::{parse_prout, parse_transport_id, prin, transport_id, IQN_PREFIX};
use crate::pr::*;
use crate::scsi::sense::*;
use rand::{Rng, SeedableRng};
use ServiceAction::*;

const A: &str = "a";
const B: &str = "b";
const C: &str = "c";
const D: &str = "d";
const ALL_ACCESS: [Access; 3] = [Access::Read, Access::Write, Access::Flush];

fn arb() -> Arbiter {
    let mut a = Arbiter::new([A, B, C, D].map(String::from));
    for i in [A, B, C, D] {
        while a.pop_unit_attention(i).is_some() {}
    }
    a
}

fn req(action: ServiceAction) -> ProutRequest {
    ProutRequest::new(action)
}

fn good(o: &ProutOutcome) {
    assert_eq!(o.status, PrStatus::Good, "{o:?}");
}

fn reg(a: &mut Arbiter, who: &str, key: Key) {
    let o = a.prout(who, &req(Register).sa_key(key));
    good(&o);
}

fn reserve(a: &mut Arbiter, who: &str, key: Key, t: ResType) {
    let o = a.prout(who, &req(Reserve).key(key).typ(t));
    good(&o);
}

fn uas(a: &mut Arbiter, who: &str) -> Vec<Sense> {
    let mut v = Vec::new();
    while let Some(s) = a.pop_unit_attention(who) {
        v.push(s);
    }
    v
}

fn cc(s: Sense) -> PrStatus {
    PrStatus::CheckCondition(s)
}

// ---------------------------------------------------------------- REGISTER

#[test]
fn register_unregistered_with_sark_registers() {
    let mut a = arb();
    let o = a.prout(A, &req(Register).sa_key(7));
    good(&o);
    assert!(o.changed);
    assert_eq!(a.key_of(A), Some(7));
    assert_eq!(a.generation(), 1);
}

#[test]
fn register_unregistered_with_nonzero_rk_is_conflict() {
    let mut a = arb();
    let o = a.prout(A, &req(Register).key(1).sa_key(7));
    assert_eq!(o.status, PrStatus::Conflict);
    assert!(!o.changed);
    // RC even with SARK=0.
    assert_eq!(a.prout(A, &req(Register).key(1)).status, PrStatus::Conflict);
    assert_eq!(a.generation(), 0);
    assert!(a.registrations().is_empty());
}

#[test]
fn register_unregistered_zero_sark_is_noop_without_generation() {
    let mut a = arb();
    let o = a.prout(A, &req(Register));
    good(&o);
    assert!(!o.changed);
    assert_eq!(a.generation(), 0);
    assert!(a.registrations().is_empty());
}

#[test]
fn register_registered_wrong_rk_is_conflict() {
    let mut a = arb();
    reg(&mut a, A, 7);
    let o = a.prout(A, &req(Register).key(8).sa_key(9));
    assert_eq!(o.status, PrStatus::Conflict);
    assert_eq!(a.key_of(A), Some(7));
    assert_eq!(a.generation(), 1);
}

#[test]
fn register_registered_changes_key_and_holder_stays_holder() {
    let mut a = arb();
    reg(&mut a, A, 7);
    reserve(&mut a, A, 7, ResType::WriteExclusive);
    let o = a.prout(A, &req(Register).key(7).sa_key(9));
    good(&o);
    assert!(o.changed);
    assert_eq!(a.key_of(A), Some(9));
    assert!(a.is_holder(A));
    assert_eq!(a.generation(), 2);
}

#[test]
fn register_same_key_again_changes_nothing() {
    let mut a = arb();
    reg(&mut a, A, 7);
    let o = a.prout(A, &req(Register).key(7).sa_key(7));
    good(&o);
    assert!(!o.changed);
    assert_eq!(a.generation(), 1);
}

#[test]
fn unregister_holder_of_we_or_ea_releases_without_ua() {
    for t in [ResType::WriteExclusive, ResType::ExclusiveAccess] {
        let mut a = arb();
        reg(&mut a, A, 1);
        reg(&mut a, B, 2);
        reserve(&mut a, A, 1, t);
        let o = a.prout(A, &req(Register).key(1));
        good(&o);
        assert!(o.changed);
        assert_eq!(a.reservation(), None);
        assert_eq!(a.key_of(A), None);
        assert_eq!(a.generation(), 3);
        assert!(!a.has_unit_attention(B));
    }
}

#[test]
fn unregister_holder_of_registrants_only_releases_and_gives_others_2a04() {
    for t in [
        ResType::WriteExclusiveRegistrantsOnly,
        ResType::ExclusiveAccessRegistrantsOnly,
    ] {
        let mut a = arb();
        reg(&mut a, A, 1);
        reg(&mut a, B, 2);
        reg(&mut a, C, 3);
        reserve(&mut a, A, 1, t);
        good(&a.prout(A, &req(Register).key(1)));
        assert_eq!(a.reservation(), None);
        assert_eq!(uas(&mut a, B), vec![RESERVATIONS_RELEASED]);
        assert_eq!(uas(&mut a, C), vec![RESERVATIONS_RELEASED]);
        assert!(uas(&mut a, A).is_empty());
        assert!(uas(&mut a, D).is_empty());
    }
}

#[test]
fn unregister_all_registrants_keeps_reservation_until_last_leaves() {
    for t in [
        ResType::WriteExclusiveAllRegistrants,
        ResType::ExclusiveAccessAllRegistrants,
    ] {
        let mut a = arb();
        reg(&mut a, A, 1);
        reg(&mut a, B, 2);
        reserve(&mut a, A, 1, t);
        assert!(a.is_holder(B));
        good(&a.prout(A, &req(Register).key(1)));
        assert_eq!(a.reservation().map(|r| r.res_type), Some(t));
        assert!(a.is_holder(B));
        assert!(!a.is_holder(A));
        good(&a.prout(B, &req(Register).key(2)));
        assert_eq!(a.reservation(), None);
        assert!(!a.has_unit_attention(A) && !a.has_unit_attention(B));
    }
}

#[test]
fn register_beyond_128_is_insufficient_registration_resources() {
    let names: Vec<String> = (0..130).map(|i| format!("g{i}")).collect();
    let mut a = Arbiter::new(names.clone());
    for n in names.iter().take(MAX_REGISTRATIONS) {
        reg(&mut a, n, 5);
    }
    let g = a.generation();
    let o = a.prout(&names[128], &req(Register).sa_key(5));
    assert_eq!(o.status, cc(INSUFFICIENT_REGISTRATION_RESOURCES));
    let o = a.prout(&names[128], &req(RegisterAndIgnore).sa_key(5));
    assert_eq!(o.status, cc(INSUFFICIENT_REGISTRATION_RESOURCES));
    assert_eq!(a.registrations().len(), MAX_REGISTRATIONS);
    assert_eq!(a.generation(), g);
    // A registrant may still change its key.
    good(&a.prout(&names[0], &req(Register).key(5).sa_key(6)));
}

#[test]
fn register_and_ignore_ignores_rk() {
    let mut a = arb();
    // Unregistered with RK≠0: accepted.
    good(&a.prout(A, &req(RegisterAndIgnore).key(99).sa_key(7)));
    assert_eq!(a.key_of(A), Some(7));
    // Registered with the wrong RK: key changes.
    good(&a.prout(A, &req(RegisterAndIgnore).key(42).sa_key(8)));
    assert_eq!(a.key_of(A), Some(8));
    // SARK=0 unregisters (Windows clustering).
    good(&a.prout(A, &req(RegisterAndIgnore).key(42)));
    assert_eq!(a.key_of(A), None);
    assert_eq!(a.generation(), 3);
    // Unregistered with SARK=0: no-op.
    let o = a.prout(A, &req(RegisterAndIgnore));
    good(&o);
    assert!(!o.changed);
    assert_eq!(a.generation(), 3);
}

#[test]
fn aptpl_is_accepted_and_reported_as_ptpl_a() {
    let mut a = arb();
    good(&a.prout(A, &req(Register).sa_key(1).aptpl(true)));
    assert!(a.aptpl());
    let caps = prin(&a, &prin_cdb(2, 100)).unwrap();
    assert_eq!(caps[3] & 1, 1);
    good(&a.prout(A, &req(Register).key(1).sa_key(1).aptpl(false)));
    assert!(!a.aptpl());
    let caps = prin(&a, &prin_cdb(2, 100)).unwrap();
    assert_eq!(caps[3] & 1, 0);
}

#[test]
fn all_tg_pt_is_accepted_as_noop() {
    let mut a = arb();
    good(&a.prout(A, &req(Register).sa_key(1).all_tg_pt(true)));
    good(
        &a.prout(
            A,
            &req(Reserve)
                .key(1)
                .typ(ResType::WriteExclusive)
                .all_tg_pt(true),
        ),
    );
    assert!(a.is_holder(A));
}

#[test]
fn spec_i_pt_is_invalid_field_in_parameter_list() {
    let mut a = arb();
    for action in [Register, RegisterAndIgnore, Reserve, Clear, Preempt] {
        let o = a.prout(A, &req(action).sa_key(1).spec_i_pt(true));
        assert_eq!(o.status, cc(INVALID_FIELD_IN_PARAM_LIST));
        assert!(!o.changed);
    }
    assert!(a.registrations().is_empty());
}

#[test]
fn scope_nonzero_is_invalid_field_in_cdb() {
    let mut a = arb();
    reg(&mut a, A, 1);
    reg(&mut a, B, 2);
    let check = |a: &mut Arbiter, action: ServiceAction, sark: Key| {
        let before = a.snapshot();
        for scope in 1..=15 {
            let r = req(action)
                .key(1)
                .sa_key(sark)
                .typ(ResType::WriteExclusive)
                .scope(scope);
            let o = a.prout(A, &r);
            assert_eq!(o.status, cc(INVALID_FIELD_IN_CDB), "{action:?} {scope}");
            assert!(!o.changed);
        }
        assert_eq!(a.snapshot(), before, "{action:?}: nothing changed");
    };
    // RESERVE and RELEASE always validate SCOPE (with or without a reservation).
    check(&mut a, Reserve, 0);
    check(&mut a, Release, 0);
    reserve(&mut a, A, 1, ResType::WriteExclusive);
    check(&mut a, Reserve, 0);
    check(&mut a, Release, 0);
    // A PREEMPT that preempts the reservation (SARK = the holder's key, its own here) too.
    check(&mut a, Preempt, 1);
    check(&mut a, PreemptAndAbort, 1);
    assert!(uas(&mut a, B).is_empty());
    // REGISTER ignores scope.
    good(&a.prout(C, &req(Register).sa_key(3).scope(2)));
}

#[test]
fn invalid_type_is_invalid_field_in_cdb() {
    let mut a = arb();
    reg(&mut a, A, 1);
    reg(&mut a, B, 2);
    let check = |a: &mut Arbiter, action: ServiceAction, sark: Key| {
        let before = a.snapshot();
        for t in [0u8, 2, 4, 9, 10, 15] {
            let o = a.prout(A, &req(action).key(1).sa_key(sark).res_type(t));
            assert_eq!(o.status, cc(INVALID_FIELD_IN_CDB), "{action:?} {t}");
            assert!(!o.changed);
        }
        assert_eq!(a.snapshot(), before, "{action:?}: nothing changed");
    };
    check(&mut a, Reserve, 0);
    check(&mut a, Release, 0);
    reserve(&mut a, B, 2, ResType::WriteExclusive);
    check(&mut a, Reserve, 0);
    // A PREEMPT of the holder's key takes the reservation over with the CDB's TYPE.
    check(&mut a, Preempt, 2);
    check(&mut a, PreemptAndAbort, 2);
    assert!(uas(&mut a, B).is_empty(), "nobody was preempted");
    // CLEAR and REGISTER ignore TYPE.
    good(&a.prout(A, &req(Register).key(1).sa_key(2).res_type(0)));
}

/// SPC-4 §5.9.11.4.4 b): a PREEMPT that only removes registrations ignores SCOPE and TYPE,
/// whatever they hold, in each of the three situations where it only removes registrations.
#[test]
fn preempt_that_only_removes_registrations_ignores_scope_and_type() {
    // (reservation before, SARK): no reservation; SARK ≠ the holder's key; SARK≠0 under 7/8.
    let cases = [
        (None, 3),
        (Some(ResType::WriteExclusive), 3),
        (Some(ResType::ExclusiveAccessRegistrantsOnly), 3),
        (Some(ResType::WriteExclusiveAllRegistrants), 3),
        (Some(ResType::ExclusiveAccessAllRegistrants), 3),
    ];
    for action in [Preempt, PreemptAndAbort] {
        for (res, sark) in cases {
            for (scope, t) in [(0u8, 0u8), (0, 2), (0, 4), (0, 9), (0, 15), (1, 5), (15, 0)] {
                let what = format!("{action:?} under {res:?}, scope {scope} type {t}");
                let mut a = arb();
                reg(&mut a, A, 1);
                reg(&mut a, B, 2);
                reg(&mut a, C, 3);
                if let Some(rt) = res {
                    reserve(&mut a, B, 2, rt);
                }
                let before = a.reservation().cloned();
                let gen = a.generation();
                let r = req(action).key(1).sa_key(sark).scope(scope).res_type(t);
                let o = a.prout(A, &r);
                assert_eq!(o.status, PrStatus::Good, "{what}");
                assert_eq!(o.preempted, vec![C.to_string()], "{what}");
                assert_eq!(a.generation(), gen + 1, "{what}");
                assert_eq!(a.key_of(C), None, "{what}: C's key removed");
                assert_eq!(a.reservation(), before.as_ref(), "{what}: reservation kept");
                assert_eq!(uas(&mut a, C), vec![REGISTRATIONS_PREEMPTED], "{what}");
                assert!(uas(&mut a, B).is_empty(), "{what}");
            }
        }
    }
}

/// SPC-4 §5.9.11.4.3 c): a PREEMPT that preempts the reservation (SARK = the holder's key, or
/// SARK=0 under types 7/8) establishes the new one from SCOPE and TYPE, which are validated
/// before anything changes.
#[test]
fn preempt_that_preempts_the_reservation_validates_scope_and_type() {
    let cases = [
        (ResType::WriteExclusive, 2),
        (ResType::ExclusiveAccessRegistrantsOnly, 2),
        (ResType::WriteExclusiveAllRegistrants, 0),
        (ResType::ExclusiveAccessAllRegistrants, 0),
    ];
    for action in [Preempt, PreemptAndAbort] {
        for (rt, sark) in cases {
            for (scope, t) in [(0u8, 0u8), (0, 2), (0, 4), (0, 9), (0, 15), (1, 5), (15, 1)] {
                let what = format!("{action:?} of {rt:?}, scope {scope} type {t}");
                let mut a = arb();
                reg(&mut a, A, 1);
                reg(&mut a, B, 2);
                reserve(&mut a, B, 2, rt);
                let before = a.snapshot();
                let r = req(action).key(1).sa_key(sark).scope(scope).res_type(t);
                let o = a.prout(A, &r);
                assert_eq!(o.status, cc(INVALID_FIELD_IN_CDB), "{what}");
                assert!(!o.changed && o.preempted.is_empty(), "{what}");
                assert_eq!(a.snapshot(), before, "{what}");
                assert!(uas(&mut a, B).is_empty(), "{what}");
            }
        }
    }
}

#[test]
fn unregistered_sending_other_actions_is_conflict() {
    let mut a = arb();
    reg(&mut a, B, 2);
    for action in [
        Reserve,
        Release,
        Clear,
        Preempt,
        PreemptAndAbort,
        RegisterAndMove,
    ] {
        let o = a.prout(
            A,
            &req(action)
                .typ(ResType::WriteExclusive)
                .sa_key(2)
                .move_to(Some(C)),
        );
        assert_eq!(o.status, PrStatus::Conflict, "{action:?}");
    }
    assert_eq!(a.key_of(B), Some(2));
}

// ---------------------------------------------------------------- RESERVE

#[test]
fn reserve_registered_right_rk_becomes_holder_without_generation() {
    let mut a = arb();
    reg(&mut a, A, 1);
    let o = a.prout(A, &req(Reserve).key(1).typ(ResType::ExclusiveAccess));
    good(&o);
    assert!(o.changed);
    assert!(a.is_holder(A));
    assert_eq!(a.generation(), 1);
}

#[test]
fn reserve_holder_same_type_is_good() {
    let mut a = arb();
    reg(&mut a, A, 1);
    reserve(&mut a, A, 1, ResType::WriteExclusive);
    let o = a.prout(A, &req(Reserve).key(1).typ(ResType::WriteExclusive));
    good(&o);
    assert!(!o.changed);
}

#[test]
fn reserve_different_type_or_non_holder_is_conflict() {
    let mut a = arb();
    reg(&mut a, A, 1);
    reg(&mut a, B, 2);
    reserve(&mut a, A, 1, ResType::WriteExclusive);
    let o = a.prout(A, &req(Reserve).key(1).typ(ResType::ExclusiveAccess));
    assert_eq!(o.status, PrStatus::Conflict);
    let o = a.prout(B, &req(Reserve).key(2).typ(ResType::WriteExclusive));
    assert_eq!(o.status, PrStatus::Conflict);
    assert!(a.is_holder(A) && !a.is_holder(B));
}

#[test]
fn reserve_wrong_rk_is_conflict() {
    let mut a = arb();
    reg(&mut a, A, 1);
    let o = a.prout(A, &req(Reserve).key(2).typ(ResType::WriteExclusive));
    assert_eq!(o.status, PrStatus::Conflict);
    assert_eq!(a.reservation(), None);
}

#[test]
fn reserve_all_registrants_makes_every_registrant_holder() {
    let mut a = arb();
    reg(&mut a, A, 1);
    reg(&mut a, B, 2);
    reserve(&mut a, A, 1, ResType::ExclusiveAccessAllRegistrants);
    assert!(a.is_holder(A) && a.is_holder(B) && !a.is_holder(C));
    // Another registrant repeating the type is a holder repeating it.
    reserve(&mut a, B, 2, ResType::ExclusiveAccessAllRegistrants);
    reg(&mut a, C, 3);
    assert!(a.is_holder(C));
}

// ---------------------------------------------------------------- RELEASE

#[test]
fn release_without_reservation_is_good_noop() {
    let mut a = arb();
    reg(&mut a, A, 1);
    let o = a.prout(A, &req(Release).key(1).typ(ResType::WriteExclusive));
    good(&o);
    assert!(!o.changed);
}

#[test]
fn release_by_registered_non_holder_is_good_noop() {
    let mut a = arb();
    reg(&mut a, A, 1);
    reg(&mut a, B, 2);
    reserve(&mut a, A, 1, ResType::WriteExclusive);
    let o = a.prout(B, &req(Release).key(2).typ(ResType::WriteExclusive));
    good(&o);
    assert!(!o.changed);
    assert!(a.is_holder(A));
}

#[test]
fn release_holder_wrong_rk_is_conflict() {
    let mut a = arb();
    reg(&mut a, A, 1);
    reserve(&mut a, A, 1, ResType::WriteExclusive);
    let o = a.prout(A, &req(Release).key(9).typ(ResType::WriteExclusive));
    assert_eq!(o.status, PrStatus::Conflict);
    assert!(a.is_holder(A));
}

#[test]
fn release_holder_wrong_type_is_invalid_release() {
    let mut a = arb();
    reg(&mut a, A, 1);
    reserve(&mut a, A, 1, ResType::WriteExclusive);
    let o = a.prout(A, &req(Release).key(1).typ(ResType::ExclusiveAccess));
    assert_eq!(o.status, cc(INVALID_RELEASE_OF_PR));
    assert!(a.is_holder(A));
}

#[test]
fn release_types_5_to_8_give_other_registrants_2a04() {
    for t in [
        ResType::WriteExclusiveRegistrantsOnly,
        ResType::ExclusiveAccessRegistrantsOnly,
        ResType::WriteExclusiveAllRegistrants,
        ResType::ExclusiveAccessAllRegistrants,
    ] {
        let mut a = arb();
        reg(&mut a, A, 1);
        reg(&mut a, B, 2);
        reserve(&mut a, A, 1, t);
        let g = a.generation();
        let o = a.prout(A, &req(Release).key(1).typ(t));
        good(&o);
        assert!(o.changed);
        assert_eq!(a.generation(), g, "RELEASE never bumps PRgeneration");
        assert_eq!(a.reservation(), None);
        assert_eq!(uas(&mut a, B), vec![RESERVATIONS_RELEASED]);
        assert!(uas(&mut a, A).is_empty());
        assert!(uas(&mut a, C).is_empty());
    }
}

#[test]
fn release_types_1_and_3_give_no_ua() {
    for t in [ResType::WriteExclusive, ResType::ExclusiveAccess] {
        let mut a = arb();
        reg(&mut a, A, 1);
        reg(&mut a, B, 2);
        reserve(&mut a, A, 1, t);
        good(&a.prout(A, &req(Release).key(1).typ(t)));
        assert_eq!(a.reservation(), None);
        assert!(!a.has_unit_attention(B));
    }
}

#[test]
fn release_all_registrants_by_any_registrant() {
    let mut a = arb();
    reg(&mut a, A, 1);
    reg(&mut a, B, 2);
    reserve(&mut a, A, 1, ResType::WriteExclusiveAllRegistrants);
    good(
        &a.prout(
            B,
            &req(Release)
                .key(2)
                .typ(ResType::WriteExclusiveAllRegistrants),
        ),
    );
    assert_eq!(a.reservation(), None);
    assert_eq!(uas(&mut a, A), vec![RESERVATIONS_RELEASED]);
}

// ---------------------------------------------------------------- CLEAR

#[test]
fn clear_removes_every_registration_and_the_reservation() {
    let mut a = arb();
    reg(&mut a, A, 1);
    reg(&mut a, B, 2);
    reserve(&mut a, B, 2, ResType::ExclusiveAccess);
    let o = a.prout(A, &req(Clear).key(1));
    good(&o);
    assert!(o.changed);
    assert!(a.registrations().is_empty());
    assert_eq!(a.reservation(), None);
    assert_eq!(o.preempted, vec![B.to_string()]);
}

#[test]
fn clear_gives_others_2a03() {
    let mut a = arb();
    reg(&mut a, A, 1);
    reg(&mut a, B, 2);
    reg(&mut a, C, 2);
    good(&a.prout(A, &req(Clear).key(1)));
    assert_eq!(uas(&mut a, B), vec![RESERVATIONS_PREEMPTED]);
    assert_eq!(uas(&mut a, C), vec![RESERVATIONS_PREEMPTED]);
    assert!(uas(&mut a, A).is_empty());
    assert!(uas(&mut a, D).is_empty(), "D was never registered");
}

#[test]
fn clear_wrong_rk_is_conflict() {
    let mut a = arb();
    reg(&mut a, A, 1);
    let o = a.prout(A, &req(Clear).key(2));
    assert_eq!(o.status, PrStatus::Conflict);
    assert_eq!(a.registrations().len(), 1);
}

#[test]
fn generation_plus_one_per_clear_not_n() {
    let mut a = arb();
    reg(&mut a, A, 1);
    reg(&mut a, B, 2);
    reg(&mut a, C, 3);
    reg(&mut a, D, 4);
    assert_eq!(a.generation(), 4);
    good(&a.prout(A, &req(Clear).key(1)));
    assert_eq!(a.generation(), 5);
}

// ---------------------------------------------------------------- PREEMPT

#[test]
fn preempt_without_reservation_removes_key_and_gives_2a05() {
    for action in [Preempt, PreemptAndAbort] {
        let mut a = arb();
        reg(&mut a, A, 1);
        reg(&mut a, B, 2);
        reg(&mut a, C, 2);
        reg(&mut a, D, 4);
        let o = a.prout(
            A,
            &req(action).key(1).sa_key(2).typ(ResType::ExclusiveAccess),
        );
        good(&o);
        assert_eq!(o.preempted, vec![B.to_string(), C.to_string()]);
        assert_eq!(a.reservation(), None, "no reservation is created");
        assert_eq!(a.key_of(B), None);
        assert_eq!(a.key_of(C), None);
        assert_eq!(a.key_of(D), Some(4));
        assert_eq!(uas(&mut a, B), vec![REGISTRATIONS_PREEMPTED]);
        assert_eq!(uas(&mut a, C), vec![REGISTRATIONS_PREEMPTED]);
        assert!(uas(&mut a, D).is_empty());
        assert_eq!(a.generation(), 5);
    }
}

#[test]
fn preempt_holder_key_takes_over_with_cdb_type() {
    let mut a = arb();
    reg(&mut a, A, 1);
    reg(&mut a, B, 2);
    reserve(&mut a, B, 2, ResType::WriteExclusiveRegistrantsOnly);
    let o = a.prout(
        A,
        &req(Preempt)
            .key(1)
            .sa_key(2)
            .typ(ResType::WriteExclusiveRegistrantsOnly),
    );
    good(&o);
    assert_eq!(o.preempted, vec![B.to_string()]);
    assert!(a.is_holder(A));
    assert_eq!(a.key_of(B), None);
    assert_eq!(
        a.reservation().map(|r| r.res_type),
        Some(ResType::WriteExclusiveRegistrantsOnly)
    );
    assert_eq!(uas(&mut a, B), vec![REGISTRATIONS_PREEMPTED]);
}

#[test]
fn preempt_type_change_gives_remaining_registrants_2a04() {
    let mut a = arb();
    reg(&mut a, A, 1);
    reg(&mut a, B, 2);
    reg(&mut a, C, 3);
    reserve(&mut a, B, 2, ResType::WriteExclusive);
    good(&a.prout(
        A,
        &req(Preempt).key(1).sa_key(2).typ(ResType::ExclusiveAccess),
    ));
    assert_eq!(
        a.reservation().map(|r| r.res_type),
        Some(ResType::ExclusiveAccess)
    );
    assert_eq!(uas(&mut a, B), vec![REGISTRATIONS_PREEMPTED]);
    assert_eq!(uas(&mut a, C), vec![RESERVATIONS_RELEASED]);
    assert!(uas(&mut a, A).is_empty());
}

#[test]
fn preempt_same_type_gives_no_2a04() {
    let mut a = arb();
    reg(&mut a, A, 1);
    reg(&mut a, B, 2);
    reg(&mut a, C, 3);
    reserve(&mut a, B, 2, ResType::WriteExclusive);
    good(&a.prout(
        A,
        &req(Preempt).key(1).sa_key(2).typ(ResType::WriteExclusive),
    ));
    assert!(uas(&mut a, C).is_empty());
}

#[test]
fn preempt_non_holder_key_keeps_reservation() {
    let mut a = arb();
    reg(&mut a, A, 1);
    reg(&mut a, B, 2);
    reg(&mut a, C, 3);
    reserve(&mut a, B, 2, ResType::ExclusiveAccess);
    let o = a.prout(
        A,
        &req(Preempt).key(1).sa_key(3).typ(ResType::WriteExclusive),
    );
    good(&o);
    assert_eq!(o.preempted, vec![C.to_string()]);
    assert!(a.is_holder(B));
    assert_eq!(
        a.reservation().map(|r| r.res_type),
        Some(ResType::ExclusiveAccess)
    );
    assert!(uas(&mut a, B).is_empty());
}

#[test]
fn preempt_all_registrants_zero_sark_takes_over() {
    let mut a = arb();
    reg(&mut a, A, 1);
    reg(&mut a, B, 2);
    reg(&mut a, C, 3);
    reserve(&mut a, B, 2, ResType::WriteExclusiveAllRegistrants);
    let o = a.prout(A, &req(Preempt).key(1).typ(ResType::ExclusiveAccess));
    good(&o);
    assert_eq!(o.preempted, vec![B.to_string(), C.to_string()]);
    assert_eq!(a.registrations().len(), 1);
    assert_eq!(
        a.reservation(),
        Some(&Reservation {
            holder: Holder::Initiator(A.into()),
            res_type: ResType::ExclusiveAccess
        })
    );
}

#[test]
fn preempt_all_registrants_nonzero_sark_removes_only_that_key() {
    let mut a = arb();
    reg(&mut a, A, 1);
    reg(&mut a, B, 2);
    reg(&mut a, C, 3);
    reserve(&mut a, B, 2, ResType::ExclusiveAccessAllRegistrants);
    let o = a.prout(
        A,
        &req(Preempt).key(1).sa_key(3).typ(ResType::WriteExclusive),
    );
    good(&o);
    assert_eq!(o.preempted, vec![C.to_string()]);
    assert_eq!(
        a.reservation(),
        Some(&Reservation {
            holder: Holder::AllRegistrants,
            res_type: ResType::ExclusiveAccessAllRegistrants
        })
    );
    assert!(a.is_holder(B));
}

#[test]
fn preempt_zero_sark_for_single_holder_types_is_invalid_field() {
    for t in [
        ResType::WriteExclusive,
        ResType::ExclusiveAccess,
        ResType::WriteExclusiveRegistrantsOnly,
        ResType::ExclusiveAccessRegistrantsOnly,
    ] {
        let mut a = arb();
        reg(&mut a, A, 1);
        reg(&mut a, B, 2);
        reserve(&mut a, B, 2, t);
        let o = a.prout(A, &req(Preempt).key(1).typ(t));
        assert_eq!(o.status, cc(INVALID_FIELD_IN_PARAM_LIST));
        assert!(a.is_holder(B));
    }
    // Without a reservation too.
    let mut a = arb();
    reg(&mut a, A, 1);
    let o = a.prout(A, &req(Preempt).key(1).typ(ResType::WriteExclusive));
    assert_eq!(o.status, cc(INVALID_FIELD_IN_PARAM_LIST));
}

#[test]
fn preempt_unknown_key_is_conflict() {
    let mut a = arb();
    reg(&mut a, A, 1);
    reg(&mut a, B, 2);
    let g = a.generation();
    let o = a.prout(
        A,
        &req(Preempt).key(1).sa_key(77).typ(ResType::WriteExclusive),
    );
    assert_eq!(o.status, PrStatus::Conflict);
    reserve(&mut a, B, 2, ResType::WriteExclusive);
    let o = a.prout(
        A,
        &req(PreemptAndAbort)
            .key(1)
            .sa_key(77)
            .typ(ResType::WriteExclusive),
    );
    assert_eq!(o.status, PrStatus::Conflict);
    assert_eq!(a.generation(), g);
}

#[test]
fn preempt_wrong_rk_is_conflict() {
    let mut a = arb();
    reg(&mut a, A, 1);
    reg(&mut a, B, 2);
    let o = a.prout(
        A,
        &req(Preempt).key(9).sa_key(2).typ(ResType::WriteExclusive),
    );
    assert_eq!(o.status, PrStatus::Conflict);
    assert_eq!(a.key_of(B), Some(2));
}

#[test]
fn preempt_own_key_keeps_callers_registration() {
    let mut a = arb();
    reg(&mut a, A, 1);
    reg(&mut a, B, 1);
    reserve(&mut a, A, 1, ResType::WriteExclusive);
    // The holder preempts its own key to change type atomically.
    let o = a.prout(
        A,
        &req(Preempt).key(1).sa_key(1).typ(ResType::ExclusiveAccess),
    );
    good(&o);
    assert_eq!(o.preempted, vec![B.to_string()]);
    assert_eq!(a.key_of(A), Some(1));
    assert!(a.is_holder(A));
    assert_eq!(
        a.reservation().map(|r| r.res_type),
        Some(ResType::ExclusiveAccess)
    );
}

#[test]
fn generation_plus_one_per_preempt_not_n() {
    let mut a = arb();
    reg(&mut a, A, 1);
    reg(&mut a, B, 2);
    reg(&mut a, C, 2);
    reg(&mut a, D, 2);
    reserve(&mut a, B, 2, ResType::WriteExclusive);
    good(
        &a.prout(
            A,
            &req(PreemptAndAbort)
                .key(1)
                .sa_key(2)
                .typ(ResType::WriteExclusive),
        ),
    );
    assert_eq!(a.generation(), 5);
}

#[test]
fn fence_scsi_off_leaves_victim_gone_and_reservation_present() {
    let mut a = arb();
    // on: R&I + RESERVE type 5 on both nodes.
    good(&a.prout(A, &req(RegisterAndIgnore).sa_key(0xa).aptpl(true)));
    reserve(&mut a, A, 0xa, ResType::WriteExclusiveRegistrantsOnly);
    good(&a.prout(B, &req(RegisterAndIgnore).sa_key(0xb).aptpl(true)));
    assert!(a.check(B, Access::Write));
    // off: B fences A.
    let o = a.prout(
        B,
        &req(PreemptAndAbort)
            .key(0xb)
            .sa_key(0xa)
            .typ(ResType::WriteExclusiveRegistrantsOnly),
    );
    good(&o);
    assert_eq!(o.preempted, vec![A.to_string()]);
    assert_eq!(a.key_of(A), None);
    assert!(a.reservation().is_some());
    assert!(a.is_holder(B));
    assert!(!a.check(A, Access::Write));
    assert!(!a.check(A, Access::Flush));
}

// ---------------------------------------------------------------- REGISTER AND MOVE

fn rm_setup() -> Arbiter {
    let mut a = arb();
    reg(&mut a, A, 1);
    reserve(&mut a, A, 1, ResType::ExclusiveAccess);
    a
}

#[test]
fn register_and_move_moves_reservation_and_registers_target() {
    let mut a = rm_setup();
    let o = a.prout(A, &req(RegisterAndMove).key(1).sa_key(5).move_to(Some(B)));
    good(&o);
    assert!(o.changed);
    assert_eq!(a.generation(), 2);
    assert_eq!(a.key_of(B), Some(5));
    assert_eq!(a.key_of(A), Some(1));
    assert!(a.is_holder(B) && !a.is_holder(A));
    assert_eq!(
        a.reservation().map(|r| r.res_type),
        Some(ResType::ExclusiveAccess)
    );
}

#[test]
fn register_and_move_unreg_unregisters_caller() {
    let mut a = rm_setup();
    good(
        &a.prout(
            A,
            &req(RegisterAndMove)
                .key(1)
                .sa_key(5)
                .unreg(true)
                .move_to(Some(B)),
        ),
    );
    assert_eq!(a.key_of(A), None);
    assert!(a.is_holder(B));
    assert_eq!(a.generation(), 2);
}

#[test]
fn register_and_move_to_registered_target_sets_sark() {
    let mut a = rm_setup();
    reg(&mut a, B, 2);
    good(&a.prout(A, &req(RegisterAndMove).key(1).sa_key(5).move_to(Some(B))));
    assert_eq!(a.key_of(B), Some(5));
    assert_eq!(a.registrations().len(), 2);
}

#[test]
fn register_and_move_to_self_unknown_or_unparsed_is_invalid_field() {
    let mut a = rm_setup();
    for target in [None, Some(A), Some("stranger")] {
        let o = a.prout(A, &req(RegisterAndMove).key(1).sa_key(5).move_to(target));
        assert_eq!(o.status, cc(INVALID_FIELD_IN_PARAM_LIST), "{target:?}");
    }
    assert!(a.is_holder(A));
    // A registered initiator that is no longer configured is still a valid target.
    let mut st = a.snapshot();
    st.registrations.push(Registration {
        initiator: "old".into(),
        key: 9,
    });
    let mut a = Arbiter::from_state(st, [A.to_string()]);
    good(&a.prout(
        A,
        &req(RegisterAndMove).key(1).sa_key(5).move_to(Some("old")),
    ));
    assert!(a.is_holder("old"));
}

#[test]
fn register_and_move_all_registrants_is_conflict() {
    for t in [
        ResType::WriteExclusiveAllRegistrants,
        ResType::ExclusiveAccessAllRegistrants,
    ] {
        let mut a = arb();
        reg(&mut a, A, 1);
        reserve(&mut a, A, 1, t);
        let o = a.prout(A, &req(RegisterAndMove).key(1).sa_key(5).move_to(Some(B)));
        assert_eq!(o.status, PrStatus::Conflict);
    }
}

#[test]
fn register_and_move_by_non_holder_is_conflict() {
    let mut a = rm_setup();
    reg(&mut a, B, 2);
    let o = a.prout(B, &req(RegisterAndMove).key(2).sa_key(5).move_to(Some(C)));
    assert_eq!(o.status, PrStatus::Conflict);
    // No reservation at all.
    let mut a = arb();
    reg(&mut a, A, 1);
    let o = a.prout(A, &req(RegisterAndMove).key(1).sa_key(5).move_to(Some(B)));
    assert_eq!(o.status, PrStatus::Conflict);
    // Wrong RK.
    let mut a = rm_setup();
    let o = a.prout(A, &req(RegisterAndMove).key(2).sa_key(5).move_to(Some(B)));
    assert_eq!(o.status, PrStatus::Conflict);
}

#[test]
fn register_and_move_zero_sark_is_invalid_field() {
    let mut a = rm_setup();
    let o = a.prout(A, &req(RegisterAndMove).key(1).move_to(Some(B)));
    assert_eq!(o.status, cc(INVALID_FIELD_IN_PARAM_LIST));
}

// ---------------------------------------------------------------- fields each action ignores

type Setup = fn(&mut Arbiter);
type Vary = fn(ProutRequest) -> ProutRequest;
/// Named variations of one kind of field.
type Fields<'a> = &'a [(&'a str, Vary)];

/// Everything a PR OUT can affect: its outcome, the persistent state, every initiator's UAs.
fn run_prout(
    setup: Setup,
    who: &str,
    r: &ProutRequest,
) -> (ProutOutcome, PrState, Vec<Vec<Sense>>) {
    let mut a = arb();
    setup(&mut a);
    let o = a.prout(who, r);
    let uas = [A, B, C, D].map(|i| uas(&mut a, i)).to_vec();
    (o, a.snapshot(), uas)
}

/// SPC-4 §6.16.2 (table "PERSISTENT RESERVE OUT service actions and valid parameters") and
/// §6.16.3: a field a service action ignores leaves its outcome unchanged, whatever it holds.
/// Validated fields have their own tests (scope, type, SPEC_I_PT, RK, SARK).
#[test]
fn fields_a_service_action_ignores_change_nothing() {
    let scope: Fields = &[("SCOPE 1", |r| r.scope(1)), ("SCOPE 15", |r| r.scope(15))];
    let typ: Fields = &[
        ("TYPE 0", |r| r.res_type(0)),
        ("TYPE 9", |r| r.res_type(9)),
        ("TYPE 15", |r| r.res_type(15)),
        ("TYPE 6", |r| r.res_type(6)),
    ];
    let rk: Fields = &[("RK", |r| r.key(0xdead))];
    let sark: Fields = &[("SARK", |r| r.sa_key(0xdead))];
    let aptpl: Fields = &[("APTPL", |r| r.aptpl(true))];
    let atp: Fields = &[("ALL_TG_PT", |r| r.all_tg_pt(true))];
    let we = ResType::WriteExclusive;
    let wero = ResType::WriteExclusiveRegistrantsOnly;

    let mut cases: Vec<(String, Setup, ProutRequest, Vec<Fields>)> = vec![
        (
            "REGISTER (new key)".into(),
            |a| reg(a, A, 1),
            req(Register).key(1).sa_key(5),
            vec![scope, typ, atp],
        ),
        (
            "REGISTER (unregistered)".into(),
            |_| {},
            req(Register).sa_key(5),
            vec![scope, typ, atp],
        ),
        (
            "REGISTER (unregister a holder)".into(),
            |a| {
                reg(a, A, 1);
                reg(a, B, 2);
                reserve(a, A, 1, ResType::WriteExclusiveRegistrantsOnly);
            },
            req(Register).key(1),
            vec![scope, typ, atp],
        ),
        (
            "REGISTER AND IGNORE EXISTING KEY".into(),
            |a| reg(a, A, 1),
            req(RegisterAndIgnore).sa_key(6),
            vec![scope, typ, rk, atp],
        ),
        (
            "RESERVE".into(),
            |a| {
                reg(a, A, 1);
                reg(a, B, 2);
            },
            req(Reserve).key(1).typ(wero),
            vec![sark, aptpl, atp],
        ),
        (
            "RELEASE".into(),
            |a| {
                reg(a, A, 1);
                reg(a, B, 2);
                reserve(a, A, 1, ResType::WriteExclusiveRegistrantsOnly);
            },
            req(Release).key(1).typ(wero),
            vec![sark, aptpl, atp],
        ),
        (
            "CLEAR".into(),
            |a| {
                reg(a, A, 1);
                reg(a, B, 2);
                reserve(a, B, 2, ResType::ExclusiveAccess);
            },
            req(Clear).key(1),
            vec![scope, typ, sark, aptpl, atp],
        ),
        (
            "REGISTER AND MOVE".into(),
            |a| {
                reg(a, A, 1);
                reg(a, B, 2);
                reserve(a, A, 1, ResType::WriteExclusiveRegistrantsOnly);
            },
            req(RegisterAndMove).key(1).sa_key(7).move_to(Some(C)),
            vec![scope, typ],
        ),
    ];
    for action in [Preempt, PreemptAndAbort] {
        let removal: [(&str, Setup); 3] = [
            ("no reservation", |a| {
                reg(a, A, 1);
                reg(a, B, 2);
                reg(a, C, 3);
            }),
            ("SARK not the holder's", |a| {
                reg(a, A, 1);
                reg(a, B, 2);
                reg(a, C, 3);
                reserve(a, B, 2, ResType::WriteExclusive);
            }),
            ("SARK≠0 under type 7", |a| {
                reg(a, A, 1);
                reg(a, B, 2);
                reg(a, C, 3);
                reserve(a, B, 2, ResType::WriteExclusiveAllRegistrants);
            }),
        ];
        for (what, setup) in removal {
            cases.push((
                format!("{action:?}, {what}"),
                setup,
                req(action).key(1).sa_key(3).typ(we),
                vec![scope, typ, aptpl, atp],
            ));
        }
        cases.push((
            format!("{action:?} of the holder"),
            |a| {
                reg(a, A, 1);
                reg(a, B, 2);
                reserve(a, B, 2, ResType::WriteExclusive);
            },
            req(action).key(1).sa_key(2).typ(we),
            vec![aptpl, atp],
        ));
    }

    for (what, setup, base, varies) in cases {
        let want = run_prout(setup, A, &base);
        assert_eq!(want.0.status, PrStatus::Good, "{what}: baseline");
        for (field, vary) in varies.into_iter().flatten() {
            let got = run_prout(setup, A, &vary(base.clone()));
            assert_eq!(got, want, "{what}: {field} must be ignored");
        }
    }
}

// ---------------------------------------------------------------- access table

/// The reference table, independently: (type, registered, access) -> allowed for a non-holder.
fn table(t: ResType, registered: bool, access: Access) -> bool {
    use ResType::*;
    let read = access == Access::Read;
    match t {
        WriteExclusive => read,
        ExclusiveAccess => false,
        WriteExclusiveRegistrantsOnly => read || registered,
        ExclusiveAccessRegistrantsOnly => registered,
        // Registrants are holders under 7/8: only the unregistered column applies.
        WriteExclusiveAllRegistrants => read,
        ExclusiveAccessAllRegistrants => false,
    }
}

#[test]
fn access_table_every_type_role_and_access() {
    for t in ResType::ALL {
        let mut a = arb();
        reg(&mut a, A, 1); // holder
        reg(&mut a, B, 2); // registered non-holder (a holder under 7/8)
        reserve(&mut a, A, 1, t);
        for acc in ALL_ACCESS {
            assert!(a.check(A, acc), "holder {t:?} {acc:?}");
            let reg_expected = t.all_registrants() || table(t, true, acc);
            assert_eq!(a.check(B, acc), reg_expected, "registered {t:?} {acc:?}");
            assert_eq!(a.check(C, acc), table(t, false, acc), "unreg {t:?} {acc:?}");
        }
        // Flush is gated exactly like write.
        for who in [A, B, C] {
            assert_eq!(a.check(who, Access::Flush), a.check(who, Access::Write));
        }
    }
}

#[test]
fn access_table_spot_checks() {
    let mut a = arb();
    reg(&mut a, A, 1);
    reg(&mut a, B, 2);
    reserve(&mut a, A, 1, ResType::WriteExclusive);
    assert!(a.check(B, Access::Read) && a.check(C, Access::Read));
    assert!(!a.check(B, Access::Write) && !a.check(C, Access::Flush));
    let mut a = arb();
    reg(&mut a, A, 1);
    reserve(&mut a, A, 1, ResType::ExclusiveAccessAllRegistrants);
    assert!(
        !a.check(C, Access::Read),
        "SPDK #3409: EA-AR must block unregistered"
    );
}

#[test]
fn no_reservation_allows_everything_and_registrations_alone_restrict_nothing() {
    let mut a = arb();
    for acc in ALL_ACCESS {
        assert!(a.check(A, acc) && a.check("nobody", acc));
    }
    reg(&mut a, A, 1);
    for acc in ALL_ACCESS {
        assert!(a.check(B, acc));
    }
}

// ---------------------------------------------------------------- SPC-2

#[test]
fn spc2_taken_along_and_restored_only_where_nobody_else_holds_one() {
    let mut a = arb();
    assert_eq!(a.spc2_reserve(A), PrStatus::Good);
    assert!(!a.take_spc2(B), "B holds none");
    assert_eq!(a.spc2_holder(), Some(A));
    assert!(a.take_spc2(A));
    assert_eq!(a.spc2_holder(), None);
    assert!(a.check(B, Access::Write), "taken away: B writes");
    assert!(a.restore_spc2(A));
    assert!(!a.check(B, Access::Write));
    assert!(a.restore_spc2(A), "again: still A's");
    assert!(!a.restore_spc2(B), "A holds one here");
    assert_eq!(a.spc2_holder(), Some(A));
}

/// A guest's SPC-2 reservation taken along to another daemon of a cluster is not given back
/// where another initiator registered meanwhile (a PR OUT committed while it moved): it could
/// not have been made there, and a registrant, or the PR holder, would be kept out by it.
#[test]
fn spc2_not_restored_where_another_initiator_registered() {
    let mut a = arb();
    reg(&mut a, B, 2);
    reserve(&mut a, B, 2, ResType::WriteExclusive);
    assert!(!a.restore_spc2(A), "B registered: A's is lost");
    assert_eq!(a.spc2_holder(), None);
    assert!(a.check(B, Access::Write), "B, the PR holder, writes");
    let mut own = arb();
    reg(&mut own, A, 1);
    assert!(
        own.restore_spc2(A),
        "the guest's own registration does not stand in its way"
    );
    assert_eq!(own.spc2_holder(), Some(A));
}

#[test]
fn spc2_with_registrations_conflicts_for_non_holder_and_is_noop_for_holder() {
    let mut a = arb();
    reg(&mut a, A, 1);
    reg(&mut a, B, 2);
    // Registrations but no reservation: nobody is a holder.
    assert_eq!(a.spc2_reserve(A), PrStatus::Conflict);
    reserve(&mut a, A, 1, ResType::WriteExclusive);
    assert_eq!(a.spc2_reserve(A), PrStatus::Good);
    assert_eq!(a.spc2_release(A), PrStatus::Good);
    assert_eq!(a.spc2_reserve(B), PrStatus::Conflict);
    assert_eq!(a.spc2_release(B), PrStatus::Conflict);
    assert_eq!(a.spc2_holder(), None);
    assert!(a.is_holder(A), "RELEASE(6) leaves the PR alone");
}

#[test]
fn spc2_reservation_without_registrations_blocks_others() {
    let mut a = arb();
    assert_eq!(a.spc2_reserve(A), PrStatus::Good);
    assert_eq!(a.spc2_reserve(A), PrStatus::Good);
    assert_eq!(a.spc2_reserve(B), PrStatus::Conflict);
    for acc in ALL_ACCESS {
        assert!(a.check(A, acc));
        assert!(!a.check(B, acc));
    }
    assert!(a.spc2_conflicts(B) && !a.spc2_conflicts(A));
    // PR OUT from others conflicts.
    let o = a.prout(B, &req(Register).sa_key(2));
    assert_eq!(o.status, PrStatus::Conflict);
    assert!(a.registrations().is_empty());
}

#[test]
fn spc2_release_by_non_holder_is_good_noop_and_by_holder_releases() {
    let mut a = arb();
    a.spc2_reserve(A);
    assert_eq!(a.spc2_release(B), PrStatus::Good);
    assert_eq!(a.spc2_holder(), Some(A));
    assert_eq!(a.spc2_release(A), PrStatus::Good);
    assert_eq!(a.spc2_holder(), None);
    assert!(a.check(B, Access::Write));
}

#[test]
fn spc2_is_not_persisted_and_reset_clears_only_spc2() {
    let mut a = arb();
    a.spc2_reserve(A);
    // The SPC-2 holder may still register; it can then release its SPC-2 reservation.
    reg(&mut a, A, 1);
    assert_eq!(a.state().registrations.len(), 1);
    a.logical_unit_reset();
    assert_eq!(a.spc2_holder(), None);
    assert_eq!(a.key_of(A), Some(1));
    reserve(&mut a, A, 1, ResType::WriteExclusive);
    let st = a.snapshot();
    a.spc2_reserve(A);
    a.logical_unit_reset();
    assert_eq!(a.spc2_holder(), None);
    assert_eq!(a.snapshot(), st, "LUN reset leaves PR state untouched");
}

// ---------------------------------------------------------------- unit attentions

#[test]
fn new_queues_power_on_reset_for_each_known_initiator() {
    let mut a = Arbiter::new([A.to_string(), B.to_string()]);
    assert!(a.has_unit_attention(A));
    assert_eq!(a.pop_unit_attention(A), Some(POWER_ON_RESET));
    assert_eq!(a.pop_unit_attention(A), None);
    assert!(!a.has_unit_attention(A));
    assert_eq!(a.pop_unit_attention(B), Some(POWER_ON_RESET));
    assert!(!a.has_unit_attention(C));
    assert!(a.is_known(A) && !a.is_known(C));
}

#[test]
fn from_state_restores_and_queues_power_on_reset() {
    let mut a = arb();
    reg(&mut a, A, 1);
    reserve(&mut a, A, 1, ResType::ExclusiveAccessRegistrantsOnly);
    let json = serde_json::to_string(a.state()).unwrap();
    let st: PrState = serde_json::from_str(&json).unwrap();
    st.validate().unwrap();
    let mut b = Arbiter::from_state(st, [A.to_string(), B.to_string()]);
    assert_eq!(b.state(), a.state());
    assert!(b.is_holder(A));
    assert_eq!(b.pop_unit_attention(A), Some(POWER_ON_RESET));
    assert_eq!(b.pop_unit_attention(B), Some(POWER_ON_RESET));
}

#[test]
fn ua_queue_is_fifo_without_consecutive_duplicates() {
    let mut a = arb();
    reg(&mut a, A, 1);
    reg(&mut a, B, 2);
    reserve(&mut a, A, 1, ResType::WriteExclusiveRegistrantsOnly);
    good(
        &a.prout(
            A,
            &req(Release)
                .key(1)
                .typ(ResType::WriteExclusiveRegistrantsOnly),
        ),
    );
    reserve(&mut a, A, 1, ResType::WriteExclusiveRegistrantsOnly);
    good(
        &a.prout(
            A,
            &req(Release)
                .key(1)
                .typ(ResType::WriteExclusiveRegistrantsOnly),
        ),
    );
    good(&a.prout(A, &req(Clear).key(1)));
    assert_eq!(
        uas(&mut a, B),
        vec![RESERVATIONS_RELEASED, RESERVATIONS_PREEMPTED]
    );
}

#[test]
fn a_unit_attention_not_reported_is_put_back_first() {
    let mut a = arb();
    a.queue_unit_attention(B, RESERVATIONS_RELEASED);
    a.queue_unit_attention(B, RESERVATIONS_PREEMPTED);
    let taken = a.pop_unit_attention(B).unwrap();
    a.unreport_unit_attention(B, taken);
    a.unreport_unit_attention(B, RESERVATIONS_PREEMPTED);
    assert_eq!(
        uas(&mut a, B),
        vec![RESERVATIONS_RELEASED, RESERVATIONS_PREEMPTED],
        "put back first, once"
    );
}

#[test]
fn ua_queue_is_bounded() {
    let mut a = arb();
    let t = ResType::WriteExclusiveRegistrantsOnly;
    for _ in 0..100 {
        good(&a.prout(A, &req(RegisterAndIgnore).sa_key(1)));
        good(&a.prout(B, &req(RegisterAndIgnore).sa_key(2)));
        reserve(&mut a, A, 1, t);
        good(&a.prout(A, &req(Release).key(1).typ(t))); // B: 2A/04
        good(&a.prout(A, &req(Clear).key(1))); // B: 2A/03
    }
    let q = uas(&mut a, B);
    assert_eq!(q.len(), UA_QUEUE_LIMIT);
    assert_eq!(
        q.last(),
        Some(&RESERVATIONS_PREEMPTED),
        "oldest are dropped"
    );
}

// ---------------------------------------------------------------- resets

const LU_RESET: Sense = BUS_DEVICE_RESET_FUNCTION_OCCURRED;
const NEXUS_LOSS: Sense = I_T_NEXUS_LOSS_OCCURRED;

#[test]
fn logical_unit_reset_gives_every_known_initiator_29_03_and_keeps_pr_state() {
    let mut a = Arbiter::new([A, B, C, D].map(String::from));
    reg(&mut a, A, 1);
    reg(&mut a, B, 2);
    reserve(&mut a, A, 1, ResType::ExclusiveAccessRegistrantsOnly);
    let st = a.snapshot();
    a.logical_unit_reset();
    assert_eq!(a.snapshot(), st, "registrations and reservation survive");
    assert!(a.is_holder(A) && !a.check(C, Access::Read), "still fenced");
    // The power-on UA of `new` comes first, then the reset; the caller is one of "every".
    for i in [A, B, C, D] {
        assert_eq!(uas(&mut a, i), vec![POWER_ON_RESET, LU_RESET], "{i}");
    }
    assert!(
        !a.has_unit_attention("stranger"),
        "only configured initiators"
    );
}

#[test]
fn logical_unit_reset_releases_an_spc2_reservation() {
    let mut a = arb();
    assert_eq!(a.spc2_reserve(B), PrStatus::Good);
    assert!(!a.check(A, Access::Write));
    a.logical_unit_reset();
    assert_eq!(a.spc2_holder(), None);
    assert!(a.check(A, Access::Write));
}

#[test]
fn i_t_nexus_reset_gives_only_that_initiator_29_07() {
    let mut a = arb();
    reg(&mut a, A, 1);
    reserve(&mut a, A, 1, ResType::WriteExclusive);
    let st = a.snapshot();
    a.i_t_nexus_reset(A);
    assert_eq!(a.snapshot(), st, "PR state survives an I_T nexus loss");
    assert_eq!(uas(&mut a, A), vec![NEXUS_LOSS]);
    for i in [B, C, D] {
        assert!(uas(&mut a, i).is_empty(), "{i}");
    }
    a.i_t_nexus_reset("stranger");
    assert!(!a.has_unit_attention("stranger"));
}

#[test]
fn i_t_nexus_reset_releases_only_its_own_spc2_reservation() {
    let mut a = arb();
    assert_eq!(a.spc2_reserve(B), PrStatus::Good);
    a.i_t_nexus_reset(A);
    assert_eq!(
        a.spc2_holder(),
        Some(B),
        "another initiator's reservation stays"
    );
    a.i_t_nexus_reset(B);
    assert_eq!(a.spc2_holder(), None);
}

#[test]
fn reset_uas_are_reported_before_older_ones_and_never_twice() {
    let mut a = arb();
    reg(&mut a, A, 1);
    reg(&mut a, B, 2);
    let t = ResType::WriteExclusiveRegistrantsOnly;
    reserve(&mut a, A, 1, t);
    good(&a.prout(A, &req(Release).key(1).typ(t))); // B: 2A/04
    good(&a.prout(A, &req(Clear).key(1))); // B: 2A/03
    a.i_t_nexus_reset(B);
    a.logical_unit_reset();
    a.logical_unit_reset();
    a.i_t_nexus_reset(B);
    assert_eq!(
        uas(&mut a, B),
        vec![
            LU_RESET,
            NEXUS_LOSS,
            RESERVATIONS_RELEASED,
            RESERVATIONS_PREEMPTED
        ],
        "SAM-5 §5.14 order, each reset once, the PR UAs kept"
    );
    assert_eq!(uas(&mut a, A), vec![LU_RESET]);
}

#[test]
fn a_reset_ua_enters_a_full_queue_at_the_front() {
    let mut a = arb();
    let t = ResType::WriteExclusiveRegistrantsOnly;
    for _ in 0..20 {
        good(&a.prout(A, &req(RegisterAndIgnore).sa_key(1)));
        good(&a.prout(B, &req(RegisterAndIgnore).sa_key(2)));
        reserve(&mut a, A, 1, t);
        good(&a.prout(A, &req(Release).key(1).typ(t))); // B: 2A/04
        good(&a.prout(A, &req(Clear).key(1))); // B: 2A/03
    }
    a.logical_unit_reset();
    let q = uas(&mut a, B);
    assert_eq!(q.len(), UA_QUEUE_LIMIT);
    assert_eq!(q[0], LU_RESET);
    assert_eq!(q.last(), Some(&RESERVATIONS_PREEMPTED), "the newest kept");
}

// ---------------------------------------------------------------- wire: PR OUT

fn prout_cdb(sa: u8, scope: u8, typ: u8, plen: u32) -> [u8; 10] {
    let l = plen.to_be_bytes();
    [
        0x5f,
        sa,
        (scope << 4) | typ,
        0,
        0,
        l[0],
        l[1],
        l[2],
        l[3],
        0,
    ]
}

fn basic_list(rk: u64, sark: u64, flags: u8) -> Vec<u8> {
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&rk.to_be_bytes());
    p[8..16].copy_from_slice(&sark.to_be_bytes());
    p[20] = flags;
    p
}

fn rm_list(rk: u64, sark: u64, flags17: u8, tid: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&rk.to_be_bytes());
    p[8..16].copy_from_slice(&sark.to_be_bytes());
    p[17] = flags17;
    p[19] = 1;
    p[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
    p.extend_from_slice(tid);
    p
}

fn known(n: &str) -> Option<String> {
    [A, B, C, D].contains(&n).then(|| n.to_string())
}

#[test]
fn parse_prout_basic_list() {
    let p = basic_list(0x1122334455667788, 0x99, 0x08 | 0x04 | 0x01);
    let r = parse_prout(&prout_cdb(4, 0, 5, 24), &p, known).unwrap();
    assert_eq!(r.action, Preempt);
    assert_eq!((r.scope, r.res_type), (0, 5));
    assert_eq!(r.key, 0x1122334455667788);
    assert_eq!(r.sa_key, 0x99);
    assert!(r.spec_i_pt && r.all_tg_pt && r.aptpl);
    let r = parse_prout(&prout_cdb(0, 2, 0, 24), &basic_list(0, 1, 0), known).unwrap();
    assert_eq!(r.scope, 2);
    assert!(!r.spec_i_pt && !r.all_tg_pt && !r.aptpl);
}

#[test]
fn parse_prout_short_cdb_wrong_opcode_and_bad_service_action() {
    let p = basic_list(0, 1, 0);
    for n in 0..10 {
        let cdb = prout_cdb(0, 0, 0, 24);
        assert_eq!(parse_prout(&cdb[..n], &p, known), Err(INVALID_FIELD_IN_CDB));
    }
    let mut cdb = prout_cdb(0, 0, 0, 24);
    cdb[0] = 0x5e;
    assert_eq!(parse_prout(&cdb, &p, known), Err(INVALID_OPCODE));
    for sa in 8..32 {
        assert_eq!(
            parse_prout(&prout_cdb(sa, 0, 0, 24), &p, known),
            Err(INVALID_FIELD_IN_CDB)
        );
    }
    // The high three bits of byte 1 are not part of the service action.
    assert!(parse_prout(&prout_cdb(0xe0, 0, 0, 24), &p, known).is_ok());
}

#[test]
fn parse_prout_parameter_list_lengths_0_23_25_huge_are_length_errors() {
    let big = vec![0u8; 4096];
    for sa in 0..7 {
        for plen in [0u32, 8, 23, 25, 28, 4096, u32::MAX] {
            let r = parse_prout(&prout_cdb(sa, 0, 1, plen), &big, known);
            assert_eq!(r, Err(PARAM_LIST_LENGTH_ERROR), "sa {sa} plen {plen}");
        }
    }
}

#[test]
fn parse_prout_params_shorter_than_cdb_length_is_length_error() {
    let p = basic_list(0, 1, 0);
    assert_eq!(
        parse_prout(&prout_cdb(0, 0, 0, 24), &p[..20], known),
        Err(PARAM_LIST_LENGTH_ERROR)
    );
    // Extra data-out beyond PARAMETER LIST LENGTH is ignored.
    let mut longer = p.clone();
    longer.extend_from_slice(&[0xff; 8]);
    assert!(parse_prout(&prout_cdb(0, 0, 0, 24), &longer, known).is_ok());
}

#[test]
fn parse_prout_spec_i_pt_long_list_reaches_arbiter_as_invalid_field() {
    let mut p = basic_list(0, 1, 0x08);
    p.extend_from_slice(&transport_id(B));
    let r = parse_prout(&prout_cdb(0, 0, 0, p.len() as u32), &p, known).unwrap();
    assert!(r.spec_i_pt);
    let mut a = arb();
    assert_eq!(a.prout(A, &r).status, cc(INVALID_FIELD_IN_PARAM_LIST));
}

#[test]
fn parse_register_and_move() {
    let tid = transport_id(B);
    let p = rm_list(1, 5, 0x03, &tid);
    let r = parse_prout(&prout_cdb(7, 0, 3, p.len() as u32), &p, known).unwrap();
    assert_eq!(r.action, RegisterAndMove);
    assert_eq!((r.key, r.sa_key), (1, 5));
    assert!(r.unreg && r.aptpl);
    assert_eq!(r.move_to.as_deref(), Some(B));
    // Unknown initiators resolve to None (the arbiter answers 05/26/00).
    let p = rm_list(1, 5, 0, &transport_id("zz"));
    let r = parse_prout(&prout_cdb(7, 0, 3, p.len() as u32), &p, known).unwrap();
    assert_eq!(r.move_to, None);
}

#[test]
fn parse_register_and_move_hostile_transport_id_lengths() {
    let tid = transport_id(B);
    // TRANSPORTID PARAMETER DATA LENGTH that overflows, exceeds or undershoots the list.
    for bogus in [
        u32::MAX,
        u32::MAX - 23,
        0x8000_0000,
        tid.len() as u32 + 4,
        4,
        0,
    ] {
        let mut p = rm_list(1, 5, 0, &tid);
        p[20..24].copy_from_slice(&bogus.to_be_bytes());
        let r = parse_prout(&prout_cdb(7, 0, 0, p.len() as u32), &p, known);
        assert_eq!(r, Err(PARAM_LIST_LENGTH_ERROR), "tid len {bogus:#x}");
    }
    // A header shorter than 24 bytes.
    for n in [0usize, 17, 23] {
        let p = vec![0u8; n];
        assert_eq!(
            parse_prout(&prout_cdb(7, 0, 0, n as u32), &p, known),
            Err(PARAM_LIST_LENGTH_ERROR)
        );
    }
    // TransportID whose own ADDITIONAL LENGTH overflows it: parses, names nobody.
    let mut bad = tid.clone();
    bad[2] = 0xff;
    bad[3] = 0xfc;
    let p = rm_list(1, 5, 0, &bad);
    let r = parse_prout(&prout_cdb(7, 0, 0, p.len() as u32), &p, known).unwrap();
    assert_eq!(r.move_to, None);
    // Empty TransportID.
    let p = rm_list(1, 5, 0, &[]);
    let r = parse_prout(&prout_cdb(7, 0, 0, 24), &p, known).unwrap();
    assert_eq!(r.move_to, None);
}

// ---------------------------------------------------------------- wire: TransportID

#[test]
fn transport_id_layout_and_round_trip() {
    for name in ["a", "guest-1", "a-much-longer-guest-name-for-padding"] {
        let t = transport_id(name);
        assert_eq!(t[0], 0x05, "format 00b, iSCSI");
        assert!(t.len() >= 24 && t.len().is_multiple_of(4));
        let addl = u16::from_be_bytes([t[2], t[3]]) as usize;
        assert_eq!(addl + 4, t.len());
        let iqn = format!("{IQN_PREFIX}{name}");
        assert_eq!(&t[4..4 + iqn.len()], iqn.as_bytes());
        assert_eq!(t[4 + iqn.len()], 0);
        assert_eq!(parse_transport_id(&t).as_deref(), Some(name));
    }
    assert_ne!(transport_id("a"), transport_id("b"));
    // Absurdly long names still produce a consistent, bounded TransportID.
    let t = transport_id(&"x".repeat(100_000));
    let addl = u16::from_be_bytes([t[2], t[3]]) as usize;
    assert_eq!(addl + 4, t.len());
    assert!(addl.is_multiple_of(4));
}

#[test]
fn parse_transport_id_format_01_with_isid() {
    let body = format!("{IQN_PREFIX}guest,i,0x23d000000001\0");
    let mut body = body.into_bytes();
    while !body.len().is_multiple_of(4) {
        body.push(0);
    }
    let mut t = vec![0x45, 0, 0, body.len() as u8];
    t.extend_from_slice(&body);
    // A port name (format 01b) names an iSCSI initiator port, an I_T nexus with an ISID, even
    // when its name has our guests' prefix: a guest (no ISID) is named by format 00b only.
    assert_eq!(
        parse_transport_id(&t).as_deref(),
        Some(format!("{IQN_PREFIX}guest,i,0x23d000000001").as_str())
    );
    // Format 01b without the separator is malformed.
    let mut t2 = transport_id("guest");
    t2[0] = 0x45;
    assert_eq!(parse_transport_id(&t2), None);
}

#[test]
fn parse_transport_id_rejects_foreign_and_malformed() {
    // Not our prefix.
    let mut body = b"iqn.1994-05.com.redhat:guest\0\0\0\0".to_vec();
    body.truncate(28);
    let mut t = vec![0x05, 0, 0, 28];
    t.extend_from_slice(&body);
    assert_eq!(parse_transport_id(&t), None);
    // Wrong protocol (FC), unknown format, no terminator, odd length, truncated.
    let good_t = transport_id("a");
    let mut fc = good_t.clone();
    fc[0] = 0x00;
    assert_eq!(parse_transport_id(&fc), None);
    let mut f2 = good_t.clone();
    f2[0] = 0x85;
    assert_eq!(parse_transport_id(&f2), None);
    let mut unterminated = vec![0x05, 0, 0, 4];
    unterminated.extend_from_slice(b"iqn.");
    assert_eq!(parse_transport_id(&unterminated), None);
    let mut odd = good_t.clone();
    odd[3] -= 1;
    assert_eq!(parse_transport_id(&odd), None);
    assert_eq!(parse_transport_id(&good_t[..good_t.len() - 1]), None);
    for n in 0..4 {
        assert_eq!(parse_transport_id(&good_t[..n]), None);
    }
    // The bare prefix names nobody.
    assert_eq!(parse_transport_id(&transport_id("")), None);
}

// ---------------------------------------------------------------- wire: PR IN

fn prin_cdb(sa: u8, alloc: u16) -> [u8; 10] {
    let l = alloc.to_be_bytes();
    [0x5e, sa, 0, 0, 0, 0, 0, l[0], l[1], 0]
}

fn be32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

#[test]
fn prin_read_keys_layout_and_truncation_keeps_additional_length() {
    let mut a = arb();
    reg(&mut a, B, 0x0b);
    reg(&mut a, A, 0x0a);
    reg(&mut a, C, 0x0b);
    let d = prin(&a, &prin_cdb(0, 1000)).unwrap();
    assert_eq!(d.len(), 8 + 24);
    assert_eq!(be32_at(&d, 0), 3);
    assert_eq!(be32_at(&d, 4), 24);
    let keys: Vec<u64> = d[8..]
        .chunks(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(keys, vec![0x0b, 0x0a, 0x0b], "registration order");
    let t = prin(&a, &prin_cdb(0, 12)).unwrap();
    assert_eq!(t.len(), 12);
    assert_eq!(be32_at(&t, 4), 24, "ADDITIONAL LENGTH is never truncated");
    assert!(prin(&a, &prin_cdb(0, 0)).unwrap().is_empty());
}

#[test]
fn prin_read_reservation_layout() {
    let mut a = arb();
    reg(&mut a, A, 0xabc);
    let d = prin(&a, &prin_cdb(1, 100)).unwrap();
    assert_eq!(d, vec![0, 0, 0, 1, 0, 0, 0, 0]);
    reserve(&mut a, A, 0xabc, ResType::ExclusiveAccessRegistrantsOnly);
    let d = prin(&a, &prin_cdb(1, 100)).unwrap();
    assert_eq!(d.len(), 24);
    assert_eq!(be32_at(&d, 4), 16);
    assert_eq!(u64::from_be_bytes(d[8..16].try_into().unwrap()), 0xabc);
    assert_eq!(d[21], 0x06);
    // Truncated to 10 bytes, ADDITIONAL LENGTH intact.
    let t = prin(&a, &prin_cdb(1, 10)).unwrap();
    assert_eq!(t.len(), 10);
    assert_eq!(be32_at(&t, 4), 16);
}

#[test]
fn prin_read_reservation_all_registrants_reports_key_zero() {
    for t in [
        ResType::WriteExclusiveAllRegistrants,
        ResType::ExclusiveAccessAllRegistrants,
    ] {
        let mut a = arb();
        reg(&mut a, A, 0xabc);
        reserve(&mut a, A, 0xabc, t);
        let d = prin(&a, &prin_cdb(1, 100)).unwrap();
        assert_eq!(u64::from_be_bytes(d[8..16].try_into().unwrap()), 0);
        assert_eq!(d[21], t.code());
    }
}

#[test]
fn prin_report_capabilities_layout() {
    let a = arb();
    let d = prin(&a, &prin_cdb(2, 100)).unwrap();
    assert_eq!(d, vec![0, 8, 0x15, 0x90, 0xea, 0x01, 0, 0]);
    let t = prin(&a, &prin_cdb(2, 3)).unwrap();
    assert_eq!(t, vec![0, 8, 0x15]);
}

#[test]
fn prin_read_full_status_layout() {
    let mut a = arb();
    reg(&mut a, A, 0xa);
    reg(&mut a, B, 0xb);
    reserve(&mut a, B, 0xb, ResType::WriteExclusive);
    let d = prin(&a, &prin_cdb(3, 0xffff)).unwrap();
    assert_eq!(be32_at(&d, 0), 2);
    let addl = be32_at(&d, 4) as usize;
    assert_eq!(addl + 8, d.len());
    let mut off = 8;
    for (name, key, holder) in [(A, 0xa_u64, false), (B, 0xb, true)] {
        let desc = &d[off..];
        assert_eq!(u64::from_be_bytes(desc[0..8].try_into().unwrap()), key);
        assert_eq!(desc[12] & 1, u8::from(holder));
        assert_eq!(desc[12] & 2, 0, "ALL_TG_PT");
        assert_eq!(desc[13], if holder { 0x01 } else { 0 });
        assert_eq!(&desc[18..20], &[0, 1], "RELATIVE TARGET PORT IDENTIFIER");
        let tl = be32_at(desc, 20) as usize;
        assert_eq!(&desc[24..24 + tl], transport_id(name).as_slice());
        off += 24 + tl;
    }
    assert_eq!(off, d.len());
    let t = prin(&a, &prin_cdb(3, 20)).unwrap();
    assert_eq!(t.len(), 20);
    assert_eq!(be32_at(&t, 4) as usize, addl);
}

#[test]
fn prin_full_status_all_registrants_marks_every_registrant_holder() {
    let mut a = arb();
    reg(&mut a, A, 0xa);
    reg(&mut a, B, 0xb);
    reserve(&mut a, A, 0xa, ResType::ExclusiveAccessAllRegistrants);
    let d = prin(&a, &prin_cdb(3, 0xffff)).unwrap();
    let first = &d[8..];
    let tl = be32_at(first, 20) as usize;
    let second = &first[24 + tl..];
    for desc in [first, second] {
        assert_eq!(desc[12] & 1, 1);
        assert_eq!(desc[13], 0x08);
    }
}

#[test]
fn prin_bad_service_action_short_cdb_and_opcode() {
    let a = arb();
    for sa in 4..32 {
        assert_eq!(prin(&a, &prin_cdb(sa, 100)), Err(INVALID_FIELD_IN_CDB));
    }
    let cdb = prin_cdb(0, 100);
    for n in 0..10 {
        assert_eq!(prin(&a, &cdb[..n]), Err(INVALID_FIELD_IN_CDB));
    }
    let mut cdb = prin_cdb(0, 100);
    cdb[0] = 0x5f;
    assert_eq!(prin(&a, &cdb), Err(INVALID_OPCODE));
}

#[test]
fn hostile_random_bytes_never_panic() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let a = arb();
    for _ in 0..20_000 {
        let n = rng.gen_range(0..16);
        let mut cdb: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
        if n > 0 && rng.gen_bool(0.7) {
            cdb[0] = if rng.gen() { 0x5e } else { 0x5f };
        }
        let m = rng.gen_range(0..80);
        let params: Vec<u8> = (0..m).map(|_| rng.gen()).collect();
        let _ = parse_prout(&cdb, &params, known);
        let _ = parse_transport_id(&params);
        let _ = prin(&a, &cdb);
    }
}

// ---------------------------------------------------------------- persistence

#[test]
fn state_round_trips_through_serde_json() {
    let mut a = arb();
    reg(&mut a, A, u64::MAX);
    reg(&mut a, B, 2);
    reserve(&mut a, A, u64::MAX, ResType::WriteExclusiveAllRegistrants);
    good(&a.prout(B, &req(Register).key(2).sa_key(3).aptpl(true)));
    let json = serde_json::to_string(&a.snapshot()).unwrap();
    let back: PrState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, *a.state());
    back.validate().unwrap();
}

#[test]
fn validate_rejects_broken_state() {
    let bad = PrState {
        registrations: vec![Registration {
            initiator: A.into(),
            key: 0,
        }],
        ..PrState::default()
    };
    assert!(bad.validate().is_err());
    let bad = PrState {
        reservation: Some(Reservation {
            holder: Holder::Initiator(A.into()),
            res_type: ResType::WriteExclusive,
        }),
        ..PrState::default()
    };
    assert!(bad.validate().is_err());
}

// ---------------------------------------------------------------- randomized model

/// The reference table for any initiator, holders included.
fn oracle(a: &Arbiter, who: &str, access: Access) -> bool {
    if matches!(a.spc2_holder(), Some(h) if h != who) {
        return false;
    }
    let Some(res) = a.reservation() else {
        return true;
    };
    if a.is_holder(who) {
        return true;
    }
    table(res.res_type, a.key_of(who).is_some(), access)
}

#[test]
fn randomized_model_keeps_invariants() {
    let who = [A, B, C, D];
    let pool: [Key; 5] = [0, 1, 2, 3, 0xdead_beef];
    for seed in 0..8u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut a = Arbiter::new(who.map(String::from));
        for _step in 0..3000 {
            let me = who[rng.gen_range(0..4)];
            // Occasionally exercise SPC-2 and resets.
            if rng.gen_ratio(1, 50) {
                match rng.gen_range(0..4) {
                    0 => {
                        a.spc2_reserve(me);
                    }
                    1 => {
                        a.spc2_release(me);
                    }
                    2 => a.i_t_nexus_reset(me),
                    _ => a.logical_unit_reset(),
                }
                continue;
            }
            let action = ServiceAction::from_code(rng.gen_range(0..8)).unwrap();
            let rk = if rng.gen_bool(0.6) {
                a.key_of(me).unwrap_or(0)
            } else {
                pool[rng.gen_range(0..pool.len())]
            };
            let sark = if rng.gen_bool(0.3) {
                // Someone's actual key.
                a.key_of(who[rng.gen_range(0..4)]).unwrap_or(0)
            } else {
                pool[rng.gen_range(0..pool.len())]
            };
            let typ = if rng.gen_bool(0.9) {
                ResType::ALL[rng.gen_range(0..6)].code()
            } else {
                rng.gen_range(0..16)
            };
            let target = match rng.gen_range(0..6) {
                0 => None,
                1 => Some("stranger"),
                n => Some(who[n - 2]),
            };
            let r = req(action)
                .key(rk)
                .sa_key(sark)
                .res_type(typ)
                .scope(if rng.gen_ratio(1, 20) { 1 } else { 0 })
                .aptpl(rng.gen())
                .all_tg_pt(rng.gen())
                .spec_i_pt(rng.gen_ratio(1, 50))
                .unreg(rng.gen())
                .move_to(target);

            let before = a.snapshot();
            let o = a.prout(me, &r);
            let after = a.snapshot();

            // Generation: +1 exactly for a counted action that succeeded and changed state.
            let expected = if o.status == PrStatus::Good && o.changed && action.counted() {
                before.generation.wrapping_add(1)
            } else {
                before.generation
            };
            assert_eq!(after.generation, expected, "seed {seed} {r:?} {o:?}");
            if o.status != PrStatus::Good {
                assert_eq!(before, after, "failed command changed state: {r:?} {o:?}");
                assert!(!o.changed && o.preempted.is_empty());
            }
            if !o.changed {
                assert_eq!(before, after, "unchanged outcome changed state: {r:?}");
            }
            // Preempted initiators are gone, and never the caller.
            for p in &o.preempted {
                assert_ne!(p, me);
                assert_eq!(a.key_of(p), None);
            }
            // Structural invariants: holders registered, keys non-zero, bounded, unique.
            after.validate().unwrap();
            assert!(after.registrations.iter().all(|r| r.key != 0));
            assert!(after.registrations.len() <= MAX_REGISTRATIONS);
            // Access rules.
            for w in who.iter().copied().chain(["stranger"]) {
                for acc in ALL_ACCESS {
                    let allowed = a.check(w, acc);
                    assert_eq!(allowed, oracle(&a, w, acc), "{w} {acc:?} {after:?}");
                    if let Some(res) = a.reservation() {
                        let holder = a.is_holder(w);
                        let registered = a.key_of(w).is_some();
                        let write = acc != Access::Read;
                        use ResType::*;
                        match res.res_type {
                            WriteExclusive | ExclusiveAccess if write && !holder => {
                                assert!(!allowed)
                            }
                            _ if write && !registered && !holder => assert!(!allowed),
                            ExclusiveAccess if !holder => assert!(!allowed),
                            ExclusiveAccessRegistrantsOnly | ExclusiveAccessAllRegistrants
                                if !registered =>
                            {
                                assert!(!allowed)
                            }
                            _ => {}
                        }
                    }
                }
            }
            // Round-trip through serde_json.
            let json = serde_json::to_string(&after).unwrap();
            let back: PrState = serde_json::from_str(&json).unwrap();
            assert_eq!(back, after);
        }
    }
}

#[test]
fn iscsi_nexus_transport_ids_are_format_01b_and_parse_back() {
    let nexus = "iqn.1993-08.org.debian:01:node1,i,0x80123456789a";
    let tid = transport_id(nexus);
    assert_eq!(tid[0], 0x45, "format 01b, protocol iSCSI");
    assert_eq!(tid.len() % 4, 0);
    let text = &tid[4..4 + nexus.len()];
    assert_eq!(
        text,
        nexus.as_bytes(),
        "the name as is, without our guest prefix"
    );
    assert_eq!(parse_transport_id(&tid).as_deref(), Some(nexus));
    // Guests keep format 00b with the prefix, exactly as before.
    let g = transport_id("vm1");
    assert_eq!(g[0], 0x05);
    assert_eq!(
        &g[4..4 + IQN_PREFIX.len() + 3],
        format!("{IQN_PREFIX}vm1").as_bytes()
    );
    // A format 00b iSCSI name (no ISID) names no nexus of ours.
    let mut plain = transport_id("x");
    plain.truncate(4);
    plain.extend_from_slice(b"iqn.1993-08.org.debian:01:node1\0");
    plain[3] = (plain.len() - 4) as u8;
    assert_eq!(parse_transport_id(&plain), None);
}

#[test]
fn forgotten_nexuses_keep_registrations() {
    let mut a = Arbiter::new([A.to_string(), B.to_string()]);
    let reg = ProutRequest::new(ServiceAction::Register).sa_key(7);
    assert_eq!(a.prout(A, &reg).status, PrStatus::Good);
    assert!(!a.forget_initiator(A), "a registered nexus stays known");
    assert!(a.is_known(A));
    assert!(a.forget_initiator(B), "an unregistered one is forgotten");
    assert!(!a.is_known(B));
    assert!(!a.has_unit_attention(B), "with its unit attentions");
}

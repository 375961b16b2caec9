//! The operator's fence against every reservation type: after `Ok` the victim may not write;
//! after `Err` nothing changed.

use super::FenceRefusal;
use crate::pr::*;

const H: &str = "h";
const S: &str = "s";
const V: &str = "v";

/// `v` (key 1), `h` (key 2) and `s` (key 3) registered; `holder` reserved with `t`.
fn lab(t: Option<(ResType, &str)>) -> Arbiter {
    let mut a = Arbiter::new([H, S, V].map(String::from));
    for (who, key) in [(V, 1), (H, 2), (S, 3)] {
        let o = a.prout(who, &ProutRequest::new(ServiceAction::Register).sa_key(key));
        assert_eq!(o.status, PrStatus::Good);
    }
    if let Some((t, holder)) = t {
        let key = a.key_of(holder).unwrap();
        let o = a.prout(
            holder,
            &ProutRequest::new(ServiceAction::Reserve).key(key).typ(t),
        );
        assert_eq!(o.status, PrStatus::Good);
    }
    for who in [H, S, V] {
        while a.pop_unit_attention(who).is_some() {}
    }
    a
}

/// Runs the fence and checks its promise: fenced after `Ok`, untouched after `Err`.
fn fence(a: &mut Arbiter, victim: &str, by: Option<&str>) -> Result<(), FenceRefusal> {
    let before = a.snapshot();
    let r = a.host_preempt(victim, by, true).map(|o| {
        assert_eq!(o.status, PrStatus::Good);
        assert!(o.changed);
    });
    match &r {
        Ok(()) => {
            assert!(!a.check(victim, Access::Write), "{victim} still writes");
            assert!(!a.is_registered(victim));
            assert_eq!(a.generation(), before.generation + 1);
            assert_eq!(
                a.pop_unit_attention(victim),
                Some(crate::scsi::sense::REGISTRATIONS_PREEMPTED)
            );
        }
        Err(_) => {
            assert_eq!(a.snapshot(), before, "a refusal changed the state");
            assert_eq!(a.pop_unit_attention(victim), None);
        }
    }
    r
}

#[test]
fn a_holder_is_fenced_by_a_survivor_that_takes_its_reservation_over_with_the_same_type() {
    for t in ResType::ALL {
        let mut a = lab(Some((t, V)));
        assert_eq!(fence(&mut a, V, Some(H)), Ok(()), "type {}", t.code());
        let r = a.reservation().unwrap();
        assert_eq!(r.res_type, t);
        assert!(a.is_holder(H), "type {}", t.code());
        assert!(a.check(H, Access::Write));
        // Type 7/8: the survivors keep holding it; elsewhere only H does.
        assert_eq!(a.is_holder(S), t.all_registrants(), "type {}", t.code());
    }
}

#[test]
fn a_single_holder_preempted_alone_is_refused_as_it_would_write_again() {
    for t in ResType::ALL.into_iter().filter(|t| !t.all_registrants()) {
        let mut a = lab(Some((t, V)));
        assert_eq!(
            fence(&mut a, V, None),
            Err(FenceRefusal::VictimHolds {
                victim: V.into(),
                code: t.code()
            })
        );
    }
}

#[test]
fn an_all_registrants_holder_is_fenced_alone_while_other_registrants_hold_on() {
    for t in ResType::ALL.into_iter().filter(|t| t.all_registrants()) {
        let mut a = lab(Some((t, V)));
        assert_eq!(fence(&mut a, V, None), Ok(()), "type {}", t.code());
        assert_eq!(a.reservation().map(|r| r.res_type), Some(t));
    }
}

#[test]
fn the_last_registrant_of_an_all_registrants_reservation_is_refused() {
    for t in ResType::ALL.into_iter().filter(|t| t.all_registrants()) {
        let mut a = lab(Some((t, V)));
        for who in [H, S] {
            let key = a.key_of(who).unwrap();
            let unreg = ProutRequest::new(ServiceAction::Register)
                .key(key)
                .sa_key(0);
            assert_eq!(a.prout(who, &unreg).status, PrStatus::Good);
        }
        assert!(matches!(
            fence(&mut a, V, None),
            Err(FenceRefusal::VictimCouldWrite { .. })
        ));
    }
}

#[test]
fn a_registrant_that_holds_nothing_is_fenced_with_or_without_a_survivor_named() {
    for t in ResType::ALL {
        for by in [None, Some(H)] {
            let mut a = lab(Some((t, S)));
            assert_eq!(fence(&mut a, V, by), Ok(()), "type {} by {by:?}", t.code());
            assert!(a.is_holder(S), "the holder keeps its reservation");
        }
    }
}

#[test]
fn without_a_reservation_nobody_is_fenced_so_the_preempt_is_refused() {
    for by in [None, Some(H)] {
        let mut a = lab(None);
        assert_eq!(
            fence(&mut a, V, by),
            Err(FenceRefusal::NoReservation { victim: V.into() })
        );
    }
}

#[test]
fn a_survivor_must_be_registered_and_not_the_victim() {
    let mut a = lab(Some((ResType::WriteExclusiveRegistrantsOnly, V)));
    assert!(matches!(
        fence(&mut a, V, Some(V)),
        Err(FenceRefusal::ByIsVictim { .. })
    ));
    let unreg = ProutRequest::new(ServiceAction::Register).key(2).sa_key(0);
    assert_eq!(a.prout(H, &unreg).status, PrStatus::Good);
    assert!(matches!(
        fence(&mut a, V, Some(H)),
        Err(FenceRefusal::ByNotRegistered { .. })
    ));
    assert!(matches!(
        fence(&mut a, H, Some(S)),
        Err(FenceRefusal::VictimNotRegistered { .. })
    ));
}

//! The guarantees every [`super::PrBackend`] gives, as tests written once against the fencing
//! it sits under: run by the unit tests for the local backend and by `tests/cluster_loopback.rs`
//! for the etcd backend against a real etcd.
//!
//! Each case gets fresh reservations from the caller (a new state file, or a new disk in etcd),
//! with initiators `a` and `b` served by this daemon and their power-on unit attentions taken.

use crate::pr::fencing::{OperatorAction, Refusal, Reservations};
use crate::pr::replay::{Origin, Slot};
use crate::pr::{Access, PrStatus, ProutRequest, ResType, ServiceAction};
use crate::scsi::sense;

/// Runs a case on fresh reservations.
pub type Fresh<'a> = dyn FnMut(&mut dyn FnMut(&Reservations)) + 'a;

/// One case: its name and its checks.
type Case = (&'static str, fn(&Reservations));

/// Every case, each on fresh reservations from `fresh`.
pub fn run_all(fresh: &mut Fresh<'_>) {
    let cases: [Case; 5] = [
        ("a change is committed", a_change_is_committed),
        (
            "a refused command changes nothing",
            a_refused_command_changes_nothing,
        ),
        ("admission follows the state", admission_follows_the_state),
        (
            "a replay gets its first answer once",
            a_replay_gets_its_first_answer_once,
        ),
        (
            "an operator CLEAR is a change",
            an_operator_clear_is_a_change,
        ),
    ];
    for (name, case) in cases {
        log::info!("backend conformance: {name}");
        fresh(&mut |res| case(res));
    }
}

fn register(res: &Reservations, who: &str, key: u64) {
    let req = ProutRequest::new(ServiceAction::Register).sa_key(key);
    assert_eq!(
        res.prout(who, &req, None),
        PrStatus::Good,
        "{who} registers"
    );
}

/// A PR OUT that changes the state returns GOOD once the change is committed; the state held
/// here shows it, and is current.
fn a_change_is_committed(res: &Reservations) {
    let generation = res.with(|a| a.generation());
    register(res, "a", 0xa);
    assert!(res.with(|a| a.is_registered("a")));
    assert_eq!(res.with(|a| a.generation()), generation + 1);
    assert!(res.current(), "the state held here is current");
    assert!(res.serving());
}

/// A command the rules refuse is answered without a change: PRgeneration does not count it.
fn a_refused_command_changes_nothing(res: &Reservations) {
    let generation = res.with(|a| a.generation());
    let reserve = ProutRequest::new(ServiceAction::Reserve)
        .key(0xb)
        .typ(ResType::WriteExclusive);
    assert_eq!(res.prout("b", &reserve, None), PrStatus::Conflict);
    assert_eq!(res.with(|a| a.generation()), generation);
    assert!(res.with(|a| a.reservation().is_none()));
    assert!(res.current());
}

/// Data commands are admitted by the state the last change committed.
fn admission_follows_the_state(res: &Reservations) {
    register(res, "a", 0xa);
    register(res, "b", 0xb);
    let reserve = ProutRequest::new(ServiceAction::Reserve)
        .key(0xa)
        .typ(ResType::WriteExclusive);
    assert_eq!(res.prout("a", &reserve, None), PrStatus::Good);
    assert!(res.admit("a", Access::Write).is_ok());
    assert_eq!(res.admit("b", Access::Write).err(), Some(Refusal::Conflict));
    assert!(res.admit("b", Access::Read).is_ok());
    let batch = res.admission();
    assert_eq!(batch.allows("b", Access::Flush), Err(Refusal::Conflict));
    assert_eq!(batch.allows("a", Access::Flush), Ok(()));
}

/// A PR OUT QEMU replays after a reconnection is answered from its first execution, once, and
/// not executed again.
fn a_replay_gets_its_first_answer_once(res: &Reservations) {
    let origin = |connection, base| Origin {
        connection,
        ring: 2,
        slot: Slot {
            position: 10,
            head: 10,
            used: 9,
            base,
            size: 128,
            first_start: true,
        },
        digest: 0xfeed,
    };
    let req = ProutRequest::new(ServiceAction::Register).sa_key(0xa);
    assert_eq!(res.prout("a", &req, Some(&origin(1, 0))), PrStatus::Good);
    let generation = res.with(|a| a.generation());
    assert_eq!(res.replayed("a", &origin(2, 9)), Some(PrStatus::Good));
    assert_eq!(res.replayed("a", &origin(2, 9)), None, "answered once");
    assert_eq!(
        res.with(|a| a.generation()),
        generation,
        "not executed again"
    );
}

/// An operator's CLEAR takes the path of a PR OUT: committed, counted, and told to the
/// registrants.
fn an_operator_clear_is_a_change(res: &Reservations) {
    register(res, "a", 0xa);
    let generation = res.with(|a| a.generation());
    assert_eq!(res.operator(&OperatorAction::Clear), Ok(PrStatus::Good));
    assert!(!res.with(|a| a.is_registered("a")));
    assert_eq!(res.with(|a| a.generation()), generation + 1);
    assert_eq!(
        res.take_unit_attention("a"),
        Some(sense::RESERVATIONS_PREEMPTED)
    );
    assert!(res.admit("a", Access::Write).is_ok(), "nothing reserved");
}

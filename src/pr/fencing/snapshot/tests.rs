//! Unit tests of the published PR snapshot.

use std::sync::mpsc;
use std::time::Duration;

use crate::pr::arbiter::Holder;
use crate::pr::fencing::Reservations;
use crate::pr::{Arbiter, PrStatus, ProutRequest, ResType, ServiceAction};

fn reservations() -> Reservations {
    Reservations::new(Arbiter::new(["vm1", "vm2"].map(String::from)), None)
}

#[test]
fn every_change_is_published_when_its_lock_is_dropped() {
    let res = reservations();
    assert_eq!(res.snapshot().registrations, 0);
    let register = ProutRequest::new(ServiceAction::Register).sa_key(7);
    assert_eq!(res.prout("vm1", &register, None), PrStatus::Good);
    let reserve = ProutRequest::new(ServiceAction::Reserve)
        .key(7)
        .typ(ResType::WriteExclusive);
    assert_eq!(res.prout("vm1", &reserve, None), PrStatus::Good);
    let snap = res.snapshot();
    assert_eq!(snap.registrations, 1);
    assert_eq!(snap.generation, res.with(|a| a.generation()));
    let held = snap.reservation.as_ref().map(|r| (&r.holder, r.res_type));
    assert_eq!(
        held,
        Some((&Holder::Initiator("vm1".into()), ResType::WriteExclusive))
    );
}

#[test]
fn the_snapshot_is_read_while_a_writer_holds_the_lock() {
    let res = reservations();
    let (held_tx, held_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let res = &res;
        s.spawn(move || {
            let mut arb = res.write_lock();
            arb.add_initiator("vm3".into());
            held_tx.send(()).unwrap();
            // Holds the write lock until the reader is done.
            let _ = done_rx.recv_timeout(Duration::from_secs(10));
        });
        held_rx.recv().unwrap();
        // Would deadlock through the arbiter's lock; the snapshot answers at once.
        assert_eq!(res.snapshot().registrations, 0);
        done_tx.send(()).unwrap();
    });
}

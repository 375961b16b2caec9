use std::sync::Arc;

use vhost_user_backend::VringT;

use super::Handoff;
use crate::transport::virtqueue::{AtomicMem, Mem, Vring};

fn ring() -> Vring {
    Vring::new(AtomicMem::new(Mem::new()), 256).unwrap()
}

#[test]
fn the_first_connection_with_work_holds_the_device_until_its_rings_stop() {
    let handoff = Arc::new(Handoff::default());
    let (source, dest) = (handoff.ticket(), handoff.ticket());
    let r = ring();
    assert!(source.enter(0, &r));
    assert!(source.enter(1, &r));
    assert!(
        !dest.enter(0, &r),
        "the destination waits while the source holds"
    );
    source.stopped(0);
    assert!(!dest.enter(0, &r), "one of the source's rings still runs");
    source.stopped(1);
    assert!(dest.enter(0, &r), "every ring of the source stopped");
    assert!(!source.enter(0, &r), "now the source waits");
}

#[test]
fn a_connection_that_ends_lets_go() {
    let handoff = Arc::new(Handoff::default());
    let (source, dest) = (handoff.ticket(), handoff.ticket());
    let r = ring();
    assert!(source.enter(2, &r));
    assert!(!dest.enter(2, &r));
    source.end();
    assert!(dest.enter(2, &r));
}

#[test]
fn stopping_a_ring_it_never_served_does_not_let_go() {
    let handoff = Arc::new(Handoff::default());
    let (source, dest) = (handoff.ticket(), handoff.ticket());
    let r = ring();
    assert!(source.enter(0, &r));
    source.stopped(1);
    dest.stopped(0);
    dest.end();
    assert!(!handoff.ticket().enter(0, &r), "the source still holds");
}

/// A gate that admits while `open`, counting its holds.
#[derive(Default)]
struct TestGate {
    open: std::sync::atomic::AtomicBool,
    holds: std::sync::atomic::AtomicI32,
}

impl super::Gate for TestGate {
    fn hold(&self) -> bool {
        let open = self.open.load(std::sync::atomic::Ordering::SeqCst);
        if open {
            self.holds.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        open
    }
    fn admits(&self) -> bool {
        self.open.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn unhold(&self) {
        self.holds.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
    fn attach(&self, _handoff: std::sync::Weak<Handoff>) {}
}

#[test]
fn a_gated_device_admits_only_while_the_gate_does_and_gives_its_hold_back() {
    use std::sync::atomic::Ordering::SeqCst;
    let gate = Arc::new(TestGate::default());
    let handoff = Handoff::gated(Some(gate.clone()));
    let (first, second) = (handoff.ticket(), handoff.ticket());
    let r = ring();
    assert!(!first.enter(0, &r), "the gate is closed");
    gate.open.store(true, SeqCst);
    handoff.wake();
    assert!(first.enter(0, &r));
    assert!(
        first.enter(1, &r),
        "a holder's other ring takes no second hold"
    );
    assert_eq!(gate.holds.load(SeqCst), 1);
    first.stopped(0);
    assert_eq!(gate.holds.load(SeqCst), 1, "ring 1 still runs");
    first.stopped(1);
    assert_eq!(
        gate.holds.load(SeqCst),
        0,
        "every ring stopped: the hold is given back"
    );
    gate.open.store(false, SeqCst);
    assert!(
        !second.enter(0, &r),
        "closed again: nobody takes the device"
    );
    gate.open.store(true, SeqCst);
    assert!(second.enter(0, &r));
    second.end();
    assert_eq!(
        gate.holds.load(SeqCst),
        0,
        "a connection that ends gives its hold back"
    );
}

#[test]
fn a_holder_admits_nothing_once_the_gate_closes_and_again_when_it_opens() {
    use std::sync::atomic::Ordering::SeqCst;
    let gate = Arc::new(TestGate::default());
    gate.open.store(true, SeqCst);
    let handoff = Handoff::gated(Some(gate.clone()));
    let holder = handoff.ticket();
    let r = ring();
    assert!(holder.enter(0, &r));
    gate.open.store(false, SeqCst);
    assert!(
        !holder.enter(0, &r),
        "the guest is not owned here any more: the holder's ring waits"
    );
    assert_eq!(gate.holds.load(SeqCst), 1, "the device still holds it");
    gate.open.store(true, SeqCst);
    handoff.wake();
    assert!(holder.enter(0, &r), "owned again");
    assert_eq!(gate.holds.load(SeqCst), 1, "no second hold");
}

#[test]
fn another_round_only_for_the_holder_and_never_taking_the_device() {
    use std::sync::atomic::Ordering::SeqCst;
    let gate = Arc::new(TestGate::default());
    gate.open.store(true, SeqCst);
    let handoff = Handoff::gated(Some(gate.clone()));
    let (holder, other) = (handoff.ticket(), handoff.ticket());
    let r = ring();
    assert!(holder.enter(0, &r));
    assert!(holder.keeps(0, &r));
    assert!(!other.keeps(0, &r), "another connection's ring waits");
    gate.open.store(false, SeqCst);
    assert!(!holder.keeps(0, &r), "the gate closed");
    gate.open.store(true, SeqCst);
    holder.stopped(0);
    assert!(
        !holder.keeps(0, &r),
        "its rings stopped: it holds nothing, and takes nothing"
    );
    assert!(other.enter(0, &r), "the device is free for the other");
}

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

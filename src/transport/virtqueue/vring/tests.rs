use super::*;

#[test]
fn the_poll_window_halves_on_a_miss_to_an_eighth_and_recovers_on_a_hit() {
    let mem = AtomicMem::new(crate::transport::virtqueue::Mem::new());
    let ring = Vring::new(mem, 256).unwrap();
    let max = Duration::from_micros(64);
    let us = |d: Duration| d.as_micros();
    assert_eq!(
        us(ring.poll_window(max)),
        64,
        "a new ring polls the whole window"
    );
    for want in [32, 16, 8, 8] {
        let w = ring.poll_window(max);
        ring.poll_outcome(false, w, max);
        assert_eq!(us(ring.poll_window(max)), want);
    }
    let w = ring.poll_window(max);
    ring.poll_outcome(true, w, max);
    assert_eq!(
        us(ring.poll_window(max)),
        64,
        "a hit restores the whole window"
    );
    // A smaller --poll-us caps what the ring earned.
    assert_eq!(us(ring.poll_window(Duration::from_micros(10))), 10);
    assert!(ring.poll_window(Duration::ZERO).is_zero());
}

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

/// An eventfd as the `File` a frontend hands over, and a second handle to read it.
fn eventfd() -> (File, File) {
    // SAFETY: eventfd(2) with valid flags; the result is checked before use.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(fd >= 0, "eventfd: {}", io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let reader = file.try_clone().unwrap();
    (file, reader)
}

/// How many signals are pending on an eventfd (0 when none), consuming them.
fn signals(reader: &File) -> u64 {
    use std::io::Read;
    let mut buf = [0u8; 8];
    match (&*reader).read(&mut buf) {
        Ok(8) => u64::from_ne_bytes(buf),
        _ => 0,
    }
}

#[test]
fn a_ring_that_starts_or_gets_a_new_call_eventfd_signals_it_once() {
    let mem = AtomicMem::new(crate::transport::virtqueue::Mem::new());
    let ring = Vring::new(mem, 256).unwrap();
    // vhost-user-blk's order: the call eventfd before the ring starts.
    let (call, first) = eventfd();
    ring.set_call(Some(call));
    assert_eq!(
        signals(&first),
        0,
        "a ring that is not started signals nothing"
    );
    ring.set_queue_ready(true);
    assert_eq!(
        signals(&first),
        1,
        "the start covers used entries an earlier daemon never signalled"
    );
    // vhost-user-scsi's order: the real call eventfd after the start.
    let (call, second) = eventfd();
    ring.set_call(Some(call));
    assert_eq!(signals(&second), 1, "a new call eventfd of a started ring");
    assert_eq!(signals(&first), 0);
    ring.set_queue_ready(false);
    assert_eq!(signals(&second), 0, "stopping a ring signals nothing");
}

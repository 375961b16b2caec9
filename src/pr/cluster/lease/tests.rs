use super::*;

#[test]
fn a_lease_is_valid_from_its_renewal_until_it_runs_out() {
    let l = ReadLease::new();
    assert!(!l.valid(), "nothing is admitted before the first renewal");
    l.renewed(boottime_ns(), Duration::from_millis(300));
    assert!(l.valid());
    assert!(l.remaining() > Duration::from_millis(200));
    std::thread::sleep(Duration::from_millis(350));
    assert!(!l.valid(), "the lease ran out");
    assert_eq!(l.remaining(), Duration::ZERO);
}

#[test]
fn a_late_answer_to_an_older_renewal_does_not_shorten_the_lease() {
    let l = ReadLease::new();
    let now = boottime_ns();
    l.renewed(now, Duration::from_secs(10));
    l.renewed(now - 9_000_000_000, Duration::from_secs(10));
    assert!(l.remaining() > Duration::from_secs(9));
    l.revoke();
    assert!(!l.valid());
}

#[test]
fn io_waits_for_a_lost_lease_only_until_the_hold_after_its_end() {
    let l = std::sync::Arc::new(ReadLease::new());
    assert!(!l.wait_held(Duration::from_secs(5)), "a lease never held");
    l.renewed(boottime_ns(), Duration::from_millis(20));
    std::thread::sleep(Duration::from_millis(30));
    let start = std::time::Instant::now();
    assert!(!l.wait_held(Duration::from_millis(150)));
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(90),
        "held until the hold: {waited:?}"
    );
    let start = std::time::Instant::now();
    assert!(!l.wait_held(Duration::from_millis(150)));
    assert!(
        start.elapsed() < Duration::from_millis(20),
        "once the hold is over, fails at once"
    );
    let l2 = l.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        l2.renewed(boottime_ns(), Duration::from_secs(5));
    });
    assert!(l.wait_held(Duration::from_secs(60)), "renewed while held");
    t.join().unwrap();
}

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

#[test]
fn an_io_deadline_is_the_latest_lease_end_plus_max_io_even_after_a_revoke() {
    let l = ReadLease::new();
    let sent = boottime_ns();
    l.renewed(sent, Duration::from_millis(1000));
    let max_io = Duration::from_millis(200);
    assert_eq!(l.io_deadline(max_io), sent + 1_200_000_000);
    // An admission just before a revocation keeps its lease's bound, not 0 + max_io.
    l.revoke();
    assert_eq!(l.io_deadline(max_io), sent + 1_200_000_000);
}

#[test]
fn an_io_past_its_deadline_stops_admission_until_a_resume_after_a_renewal() {
    let l = ReadLease::new();
    l.renewed(boottime_ns(), Duration::from_secs(10));
    assert!(l.admits());
    assert_eq!(l.overran(boottime_ns() + 1_000_000_000), None, "in time");
    assert!(l.admits());
    assert_eq!(l.resume(), Err(ResumeRefused::NoFault));
    let late = l.overran(boottime_ns() - 50_000_000).expect("late");
    assert!(late >= Duration::from_millis(50), "{late:?}");
    assert!(!l.admits(), "no admission after an overrun");
    assert!(l.valid(), "the lease itself is untouched");
    assert_eq!(l.overruns(), 1);
    assert!(l.overrun().is_some());
    // No renewal since the fault: no resume.
    assert_eq!(l.resume(), Err(ResumeRefused::NotRenewed));
    l.renewed(boottime_ns(), Duration::from_secs(10));
    assert_eq!(l.resume(), Ok(()));
    assert!(l.admits());
    assert_eq!(l.overrun(), None);
    assert_eq!(l.overruns(), 1, "the count stays");
}

#[test]
fn io_waits_for_a_resume_only_until_the_hold_after_the_overrun() {
    let l = ReadLease::new();
    l.renewed(boottime_ns(), Duration::from_secs(10));
    l.overran(0);
    let start = std::time::Instant::now();
    assert!(!l.wait_held(Duration::from_millis(100)));
    assert!(start.elapsed() >= Duration::from_millis(90));
    let start = std::time::Instant::now();
    assert!(!l.wait_held(Duration::from_millis(100)), "the hold is over");
    assert!(start.elapsed() < Duration::from_millis(50));
}

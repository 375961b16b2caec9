//! Unit tests of `ratelimit`.

use std::time::{Duration, Instant};

use super::*;

#[test]
fn the_first_is_logged_then_a_count_at_most_once_per_period() {
    let l = RateLimited::new(Duration::from_secs(1));
    let t0 = Instant::now();
    assert_eq!(l.check(t0), Some(0), "the first is logged");
    // 300 re-sends in the next 0.9 s: none logged.
    for i in 1..=300u64 {
        assert_eq!(l.check(t0 + Duration::from_millis(3 * i)), None);
    }
    // The next one after the period is logged with the count left out.
    assert_eq!(l.check(t0 + Duration::from_millis(1000)), Some(300));
    assert_eq!(l.check(t0 + Duration::from_millis(1001)), None);
    // Seven seconds of re-sends every 3 ms: one line per second, every one logged or counted.
    let l = RateLimited::new(Duration::from_secs(1));
    let (mut lines, mut accounted) = (0, 0);
    let calls = 7000 / 3;
    for i in 0..calls {
        if let Some(n) = l.check(t0 + Duration::from_millis(3 * i)) {
            lines += 1;
            accounted += n + 1;
        }
    }
    assert_eq!(lines, 7, "one line per second");
    accounted += l.flush();
    assert_eq!(accounted, calls, "every warning logged or counted");
    assert_eq!(l.flush(), 0);
    assert_eq!(
        l.check(t0 + Duration::from_millis(8100)),
        Some(0),
        "after a flush the next is logged at once"
    );
}

#[test]
fn a_clock_going_back_does_not_panic_and_still_limits() {
    let l = RateLimited::new(Duration::from_secs(1));
    let t0 = Instant::now() + Duration::from_secs(10);
    assert_eq!(l.check(t0), Some(0));
    assert_eq!(l.check(t0 - Duration::from_secs(5)), None);
}

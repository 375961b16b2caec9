use super::*;

/// Other tests of the library (the rings' drains) take turns of the same daemon-wide budget
/// meanwhile, so an attempt counts only when no turn was held by another before and after it.
#[test]
fn polling_turns_are_counted_exactly() {
    let limit = std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1));
    for _ in 0..200 {
        if POLLERS.load(Ordering::Acquire) != 0 {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let turns: Vec<Poller> = std::iter::from_fn(Poller::take).take(64).collect();
        // Refused turns leave the count alone (a refused `take` once gave one back anyway).
        let refused = (0..4).all(|_| Poller::take().is_none());
        let held = turns.len();
        drop(turns);
        if POLLERS.load(Ordering::Acquire) != 0 || held < limit {
            continue; // another thread took or held a turn meanwhile
        }
        assert_eq!(held, limit, "no more turns than the budget");
        assert!(refused, "a turn beyond the budget");
        return;
    }
    panic!("other threads held polling turns through every attempt");
}

#[test]
fn the_window_halves_on_a_miss_to_an_eighth_and_recovers_on_a_hit() {
    let max = Duration::from_micros(80);
    let w = PollWindow::default();
    assert_eq!(w.window(max), max, "the whole window before the first poll");
    for want in [40, 20, 10, 10] {
        let now = w.window(max);
        w.outcome(false, now, max);
        assert_eq!(w.window(max), Duration::from_micros(want));
    }
    let now = w.window(max);
    w.outcome(true, now, max);
    assert_eq!(w.window(max), max, "a hit restores the whole window");
    assert!(w.window(Duration::ZERO).is_zero());
}

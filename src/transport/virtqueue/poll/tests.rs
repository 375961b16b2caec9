use super::*;

#[test]
fn polling_turns_are_counted_exactly() {
    let before = POLLERS.load(Ordering::Acquire);
    let limit = std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1));
    let turns: Vec<Poller> = std::iter::from_fn(Poller::take).take(64).collect();
    assert!(turns.len() <= limit);
    // Refused turns leave the count alone (a refused `take` once gave one back anyway).
    for _ in 0..4 {
        assert!(Poller::take().is_none() || turns.len() < limit);
    }
    drop(turns);
    assert_eq!(POLLERS.load(Ordering::Acquire), before);
}

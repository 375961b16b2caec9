use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use super::PerSource;

fn ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))
}

#[test]
fn a_burst_per_source_then_one_per_period_and_the_rest_counted() {
    let l = PerSource::new("test", Duration::from_secs(1), 3, 8);
    let t = Instant::now();
    let ms = |n| t + Duration::from_millis(n);
    assert_eq!(l.check(ip(1), t), Some(0));
    assert_eq!(l.check(ip(1), ms(1)), Some(0));
    assert_eq!(l.check(ip(1), ms(2)), Some(0));
    assert_eq!(l.check(ip(1), ms(3)), None);
    assert_eq!(l.check(ip(1), ms(4)), None);
    // Another source has its own bucket.
    assert_eq!(l.check(ip(2), ms(5)), Some(0));
    // A period later one more line, with the count of those left out.
    assert_eq!(l.check(ip(1), ms(1005)), Some(2));
    assert_eq!(l.check(ip(1), ms(1006)), None);
    // A flood for 10 s gets the burst and about one line a second.
    let logged = (0..10_000u64)
        .filter(|i| l.check(ip(3), ms(2000 + i)).is_some())
        .count();
    assert!((3..=3 + 10).contains(&logged), "{logged}");
}

#[test]
fn many_sources_share_one_more_bucket() {
    let l = PerSource::new("test", Duration::from_secs(1), 1, 4);
    let t = Instant::now();
    let logged = (0..200)
        .filter(|i| l.check(ip(*i as u8), t).is_some())
        .count();
    assert_eq!(logged, 4 + 1);
    // Later the quiet sources are forgotten and new ones followed.
    assert_eq!(l.check(ip(250), t + Duration::from_secs(2)), Some(0));
}

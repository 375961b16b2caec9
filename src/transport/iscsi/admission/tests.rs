use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::{Conns, Open, Phase};

fn src(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// `n` connections to a local listener (their far ends are kept in `keep`).
fn streams(n: usize, keep: &mut Vec<TcpStream>) -> Vec<TcpStream> {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    (0..n)
        .map(|_| {
            let s = TcpStream::connect(addr).unwrap();
            keep.push(l.accept().unwrap().0);
            s
        })
        .collect()
}

#[test]
fn room_is_made_at_the_busiest_source_oldest_first() {
    let mut keep = Vec::new();
    let mut conns = Conns::default();
    let t = Instant::now();
    // Source 1 holds three logins, source 2 one (the oldest of all).
    for (id, stream) in streams(4, &mut keep).into_iter().enumerate() {
        let (source, since) = match id {
            0 => (src(2), t),
            i => (src(1), t + Duration::from_millis(i as u64)),
        };
        let phase = Phase::Login;
        conns.insert(
            id as u64,
            Open {
                stream,
                source,
                phase,
                since,
            },
        );
    }
    assert_eq!(conns.victim(Phase::Login, 5), None);
    assert_eq!(conns.victim(Phase::Login, 4), Some(1));
    assert_eq!(conns.close(1), Some((src(1), Phase::Login)));
    assert_eq!(conns.count(Phase::Login), 3);
    assert_eq!(conns.count(Phase::Closing), 1);
    // Other phases have their own bounds.
    conns.enter(2, Phase::Discovery);
    assert_eq!(conns.victim(Phase::Discovery, 2), None);
    assert_eq!(conns.victim(Phase::Discovery, 1), Some(2));
    // A tie between sources: the oldest.
    assert_eq!(conns.victim(Phase::Login, 2), Some(0));
}

//! Unit tests of the metrics listener's slots.

use std::io::Read;
use std::net::{TcpListener, TcpStream};

use super::*;

/// A connected pair on loopback: (the client's end, the server's end).
fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    (client, server)
}

#[test]
fn a_new_connection_takes_the_slot_of_the_oldest_still_reading() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let slots = Slots::default();
    let conns: Vec<_> = (0..MAX_HTTP_CLIENTS as u64)
        .map(|id| {
            let (client, server) = pair(&listener);
            assert!(slots.admit(id, &server));
            (client, server)
        })
        .collect();
    // Connection 0 has its head and is being answered: it keeps its slot.
    assert!(slots.answering(0));
    let (_c, s) = pair(&listener);
    assert!(
        slots.admit(100, &s),
        "silent connections give their slot up at once"
    );
    // Connection 1, the oldest still reading, was closed.
    let mut c1 = &conns[1].0;
    c1.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(c1.read(&mut [0u8; 8]).unwrap(), 0, "evicted: end of stream");
    assert!(!slots.answering(1), "an evicted connection is not answered");
    assert_eq!(lock(&slots.0).len(), MAX_HTTP_CLIENTS);
}

#[test]
fn a_connection_is_refused_when_every_slot_is_answering() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let slots = Slots::default();
    let _conns: Vec<_> = (0..MAX_HTTP_CLIENTS as u64)
        .map(|id| {
            let (client, server) = pair(&listener);
            assert!(slots.admit(id, &server));
            assert!(slots.answering(id));
            (client, server)
        })
        .collect();
    let (_c, s) = pair(&listener);
    assert!(!slots.admit(100, &s));
    slots.leave(3);
    assert!(slots.admit(101, &s), "a freed slot is taken");
}

#[test]
fn a_connection_whose_head_waits_keeps_its_slot_and_a_gone_one_goes_first() {
    use std::io::Write;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let slots = Slots::default();
    let mut conns: Vec<_> = (0..MAX_HTTP_CLIENTS as u64)
        .map(|id| {
            let (client, server) = pair(&listener);
            assert!(slots.admit(id, &server));
            (client, server)
        })
        .collect();
    // 0 and 1 sent their heads (not read yet): a scrape. 5's client is gone.
    for c in &mut conns[..2] {
        c.0.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    }
    conns[5].0.shutdown(Shutdown::Both).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let evicted = |slots: &Slots| {
        let ids: Vec<u64> = lock(&slots.0).iter().map(|s| s.id).collect();
        (0..MAX_HTTP_CLIENTS as u64)
            .filter(|i| !ids.contains(i))
            .collect::<Vec<_>>()
    };
    let (_a, s) = pair(&listener);
    assert!(slots.admit(100, &s));
    assert_eq!(evicted(&slots), [5], "the gone one first");
    let (_b, s) = pair(&listener);
    assert!(slots.admit(101, &s));
    assert_eq!(
        evicted(&slots),
        [2, 5],
        "then the oldest silent one, not 0 or 1"
    );
    // A flood of silent connections never takes the slots of 0 and 1.
    for id in 200..300 {
        let (_c, s) = pair(&listener);
        assert!(slots.admit(id, &s));
    }
    let ids: Vec<u64> = lock(&slots.0).iter().map(|s| s.id).collect();
    assert!(ids.contains(&0) && ids.contains(&1), "{ids:?}");
}

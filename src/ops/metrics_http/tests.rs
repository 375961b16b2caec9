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
        !slots.admit(100, &s),
        "connections in their grace keep their slots"
    );
    std::thread::sleep(EVICTION_GRACE);
    assert!(slots.admit(100, &s));
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

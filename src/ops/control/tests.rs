use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use super::access::{Method, Need, Peer, Policy, Role};
use super::server::{read_line, Caller, LineError, Slots, MAX_LINE};

fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
    Peer {
        pid: 1,
        uid,
        gid,
        groups: groups.to_vec(),
    }
}

#[test]
fn roles_follow_uid_and_groups() {
    let p = Policy {
        daemon_uid: 990,
        read_gid: Some(500),
        admin_gid: Some(600),
    };
    assert_eq!(p.role(&peer(0, 0, &[])), Role::Admin);
    assert_eq!(p.role(&peer(990, 990, &[])), Role::Admin);
    assert_eq!(p.role(&peer(1000, 1000, &[600])), Role::Admin);
    assert_eq!(p.role(&peer(1000, 600, &[])), Role::Admin, "primary group");
    assert_eq!(p.role(&peer(1000, 1000, &[7, 500])), Role::Reader);
    assert_eq!(p.role(&peer(1000, 1000, &[7])), Role::Stranger);
    let none = Policy {
        daemon_uid: 990,
        read_gid: None,
        admin_gid: None,
    };
    assert_eq!(none.role(&peer(1000, 500, &[600])), Role::Stranger);
}

#[test]
fn every_method_is_in_the_table_once_and_changes_need_an_admin() {
    for m in Method::ALL {
        assert_eq!(Method::from_name(m.name()), Some(m));
        let changes = !matches!(
            m,
            Method::Version
                | Method::Status
                | Method::Guests
                | Method::PrShow
                | Method::Stats
                | Method::Metrics
                | Method::ClusterStatus
                | Method::IscsiSessions
        );
        assert_eq!(m.need() == Need::Change, changes, "{m:?}");
        assert!(Role::Admin.may(m.need()));
        assert_eq!(Role::Reader.may(m.need()), !changes);
        assert!(!Role::Stranger.may(m.need()));
    }
    assert_eq!(Method::from_name("pr.nuke"), None);
}

#[test]
fn the_peer_of_a_socket_pair_is_this_process() {
    let (a, _b) = UnixStream::pair().unwrap();
    let p = Peer::of(&a).unwrap();
    assert_eq!(p.pid as u32, std::process::id());
    // SAFETY: getuid has no preconditions.
    assert_eq!(p.uid, unsafe { libc::getuid() });
}

#[test]
fn lines_are_split_bounded_and_kept_across_reads() {
    let (a, mut b) = UnixStream::pair().unwrap();
    b.write_all(b"one\ntw").unwrap();
    let mut pending = Vec::new();
    assert_eq!(read_line(&a, &mut pending).unwrap(), b"one");
    b.write_all(b"o\nthree").unwrap();
    assert_eq!(read_line(&a, &mut pending).unwrap(), b"two");
    drop(b);
    assert_eq!(
        read_line(&a, &mut pending).unwrap(),
        b"three",
        "last line at EOF"
    );
    assert!(matches!(
        read_line(&a, &mut pending),
        Err(LineError::Closed)
    ));

    let (a, mut b) = UnixStream::pair().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = b.write_all(&vec![b'x'; 4 * MAX_LINE]);
        let mut rest = Vec::new();
        let _ = b.read_to_end(&mut rest);
    });
    let mut pending = Vec::new();
    assert!(matches!(
        read_line(&a, &mut pending),
        Err(LineError::TooLong)
    ));
    assert!(pending.len() <= MAX_LINE + 1);
    drop(a);
    writer.join().unwrap();
}

fn caller(uid: u32, role: Role) -> Caller {
    Caller { uid, pid: 1, role }
}

#[test]
fn an_admin_takes_the_idlest_admin_slot_and_others_are_capped() {
    let slots = Slots::default();
    let mut peers = Vec::new();
    let mut take = |c: Caller| {
        let (a, b) = UnixStream::pair().unwrap();
        peers.push(b);
        slots.take(&c, a)
    };
    // One uid outside the groups: four connections, then refused.
    for _ in 0..4 {
        take(caller(1000, Role::Stranger)).unwrap();
    }
    assert!(take(caller(1000, Role::Stranger)).is_err());
    // Admins: 16, then each newcomer evicts the idlest one that is not running a request.
    let first = take(caller(0, Role::Admin)).unwrap();
    assert!(slots.begin(first), "the first runs a request");
    for _ in 1..16 {
        take(caller(0, Role::Admin)).unwrap();
    }
    let newcomer = take(caller(0, Role::Admin)).unwrap();
    assert!(slots.begin(newcomer));
    assert!(slots.begin(first), "the busy one kept its slot");
    slots.end(first);
}

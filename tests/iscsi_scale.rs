//! Elastic SAN's scale on one disk, through the daemon binary: 128 I_T nexuses at once (124
//! iSCSI sessions from four client hosts' initiator names, 31 ISIDs each, and four vhost-user
//! guests through raw frontends) all register, one reserves, one PREEMPT fences the other 127
//! on both transports, and maxShares (128) refuses the 129th login. Correctness only: the
//! figures at 1, 32 and 128 sessions are `cargo bench --bench iscsi_scale`'s.

mod common;

use std::net::SocketAddr;

use common::iscsi_client::{free_port, IscsiClient};
use common::process::DaemonProcess;
use common::scsi_client::{conflict, good, write16_cdb, ScsiClient, ScsiResult};

const GUESTS: [&str; 4] = ["vm1", "vm2", "vm3", "vm4"];
const SESSIONS: usize = 124;
const HOLDER_KEY: u64 = 0x1000;
const OTHERS_KEY: u64 = 0x2000;
/// PERSISTENT RESERVE OUT service actions and the type used (SPC-4 §6.16).
const REGISTER: u8 = 0;
const RESERVE: u8 = 1;
const PREEMPT: u8 = 4;
const WRITE_EXCLUSIVE_REGISTRANTS_ONLY: u8 = 5;
/// Login status: out of resources (RFC 7143 §11.13.5).
const OUT_OF_RESOURCES: u16 = 0x0302;

/// Client host `c`'s initiator name.
fn client(c: usize) -> String {
    format!("iqn.2026-12.test.elastic-san:client{c}")
}

/// Session `i`: its client host's name and an ISID of its own.
fn session(i: usize) -> (String, [u8; 6]) {
    (client(i % 4), [0x80, 0, 0, 0x01, (i >> 8) as u8, i as u8])
}

/// One initiator of either transport.
enum Initiator {
    Iscsi(IscsiClient),
    Guest(ScsiClient),
}

impl Initiator {
    fn prout(&mut self, sa: u8, typ: u8, rk: u64, sark: u64) -> ScsiResult {
        match self {
            Initiator::Iscsi(c) => c.prout(sa, typ, rk, sark),
            Initiator::Guest(c) => c.prout(sa, typ, rk, sark, false),
        }
    }

    fn write(&mut self, lba: u64, data: &[u8]) -> ScsiResult {
        match self {
            Initiator::Iscsi(c) => c.write16(lba, data),
            Initiator::Guest(c) => c.cmd(&write16_cdb(lba, 1), data, 0),
        }
    }

    fn drain_ua(&mut self) {
        match self {
            Initiator::Iscsi(c) => drop(c.drain_ua()),
            Initiator::Guest(c) => drop(c.drain_ua()),
        }
    }
}

#[test]
fn sessions_and_guests_128_register_and_one_preempt_fences_127() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let addr: SocketAddr = listen.parse().unwrap();
    let names: Vec<String> = (0..4).map(client).collect();
    let mut args = vec!["--max-shares", "128", "--iscsi-listen", &listen];
    for n in &names {
        args.extend(["--iscsi-initiator", n.as_str()]);
    }
    let d = DaemonProcess::start_args(dir.path(), &GUESTS, "64M", &args);
    let target = common::iscsi_client::served_target(&d);

    // The four client hosts log their sessions in side by side.
    let login = |i: usize| {
        let (name, isid) = session(i);
        let c = IscsiClient::login(addr, &name, &target, isid)
            .unwrap_or_else(|s| panic!("session {i} refused: {s:04x}"));
        (i, Initiator::Iscsi(c))
    };
    let mut sessions: Vec<(usize, Initiator)> = std::thread::scope(|s| {
        let hosts: Vec<_> = (0..4)
            .map(|h| s.spawn(move || (h..SESSIONS).step_by(4).map(login).collect::<Vec<_>>()))
            .collect();
        hosts.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    sessions.sort_by_key(|(i, _)| *i);
    let mut all: Vec<Initiator> = sessions.into_iter().map(|(_, c)| c).collect();
    all.extend(
        GUESTS
            .iter()
            .map(|g| Initiator::Guest(ScsiClient::connect(&d.scsi(g)))),
    );
    assert_eq!(all.len(), 128);
    let (name, isid) = session(SESSIONS);
    let refused = IscsiClient::login(addr, &name, &target, isid).err();
    assert_eq!(refused, Some(OUT_OF_RESOURCES), "the 129th share");

    for (i, c) in all.iter_mut().enumerate() {
        c.drain_ua();
        let key = if i == 0 { HOLDER_KEY } else { OTHERS_KEY };
        good(
            &c.prout(REGISTER, 0, 0, key),
            &format!("REGISTER of nexus {i}"),
        );
    }
    let typ = WRITE_EXCLUSIVE_REGISTRANTS_ONLY;
    good(&all[0].prout(RESERVE, typ, HOLDER_KEY, 0), "RESERVE");
    let Initiator::Iscsi(holder) = &mut all[0] else {
        unreachable!()
    };
    assert_eq!(holder.read_keys().len(), 128, "every nexus registered");
    let block = vec![0x5a; 512];
    for (i, c) in all.iter_mut().enumerate() {
        good(
            &c.write(i as u64, &block),
            &format!("nexus {i}, a registrant"),
        );
    }

    good(
        &all[0].prout(PREEMPT, typ, HOLDER_KEY, OTHERS_KEY),
        "PREEMPT",
    );
    let fenced = vec![0xa5; 512];
    for (i, c) in all.iter_mut().enumerate().skip(1) {
        c.drain_ua();
        conflict(
            &c.write(i as u64, &fenced),
            &format!("nexus {i} after PREEMPT"),
        );
    }
    let Initiator::Iscsi(holder) = &mut all[0] else {
        unreachable!()
    };
    assert_eq!(holder.read_keys(), vec![HOLDER_KEY]);
    good(&holder.write16(0, &block), "the holder writes");
    let r = holder.read16(0, 128);
    good(&r, "READ");
    assert!(
        r.data.chunks(512).all(|b| b == block.as_slice()),
        "a fenced write reached the image"
    );
    d.assert_no_panic();
}

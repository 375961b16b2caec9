//! COMPARE AND WRITE (SBC-4 §5.3) on the daemon binary, from two initiators on two transports
//! (a vhost-user-scsi frontend and an iSCSI session) racing on one LBA: exactly one of two
//! racing COMPARE AND WRITEs wins each round; a plain WRITE racing a COMPARE AND WRITE never
//! lands between its compare and its write, nor does a guest's virtio-blk write or WRITE ZEROES;
//! the reservation type table gates it as a write; and
//! the LU advertises it (Block Limits VPD, REPORT SUPPORTED OPERATION CODES).
//!
//! `SHAREDISK_FAILPOINT=caw-unlocked` (a `--features test-hooks` build) leaves the write-range
//! lock out and widens the compare-to-write window to 50 ms: the race tests then fail (two
//! winners in the first round; the racing writes lost). About 5 s on a loaded 2-core machine.

mod common;

use std::sync::Barrier;

use common::blkio_client::BlkClient;
use common::iscsi_client::{IscsiClient, INITIATOR_A, INITIATOR_B};
use common::scsi_client::{
    check, conflict, good, ScsiClient, ScsiResult, CHECK_CONDITION, POWER_ON, SA_REGISTER,
    SA_RESERVE,
};

const LBA: u64 = 8;
const MISCOMPARE: (u8, u8, u8) = (0x0e, 0x1d, 0x00);
const WE: u8 = 1;
const ROUNDS: u32 = 60;

use common::iscsi_portal::PortalDaemon as Setup;

/// The daemon binary with guest `vm1` and a portal that admits libiscsi's two test names.
fn setup() -> Setup {
    Setup::start(&[INITIATOR_A, INITIATOR_B], &[], &[])
}

fn session(s: &Setup) -> IscsiClient {
    let isid = [0x80, 0, 0, 0, 0, 1];
    let mut c = IscsiClient::login(s.addr, INITIATOR_A, &s.target, isid)
        .unwrap_or_else(|st| panic!("login refused: {st:#06x}"));
    c.drain_ua();
    c
}

fn guest(s: &Setup) -> ScsiClient {
    let mut g = ScsiClient::connect(&s.daemon.scsi("vm1"));
    assert_eq!(g.drain_ua(), vec![POWER_ON]);
    g
}

/// COMPARE AND WRITE of one block at `lba`.
fn caw_cdb(lba: u64) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x89;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[13] = 1;
    c
}

/// Verify data then write data, one block each.
fn halves(verify: &[u8], write: &[u8]) -> Vec<u8> {
    [verify, write].concat()
}

/// A block no other round or writer uses: `tag` and the round, repeated.
fn block(tag: u8, round: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(512);
    while b.len() < 512 {
        b.push(tag);
        b.extend_from_slice(&round.to_be_bytes());
    }
    b.truncate(512);
    b
}

/// One command on each client at (about) the same moment.
fn race(
    g: &mut ScsiClient,
    i: &mut IscsiClient,
    on_guest: (&[u8], &[u8]),
    on_iscsi: (&[u8], &[u8]),
) -> (ScsiResult, ScsiResult) {
    let start = Barrier::new(2);
    std::thread::scope(|sc| {
        let a = sc.spawn(|| {
            start.wait();
            g.cmd(on_guest.0, on_guest.1, 0)
        });
        start.wait();
        let b = i.cmd(on_iscsi.0, on_iscsi.1, 0);
        (a.join().unwrap(), b)
    })
}

fn is_miscompare(r: &ScsiResult) -> bool {
    r.status == CHECK_CONDITION && r.sense == Some(MISCOMPARE)
}

#[test]
fn exactly_one_of_two_racing_compare_and_writes_wins() {
    let s = setup();
    let (mut g, mut i) = (guest(&s), session(&s));
    let mut current = block(b'0', 0);
    good(&g.write16(LBA, &current), "initial WRITE");
    let mut wins = [0u32; 2];
    for round in 1..=ROUNDS {
        let (mine, theirs) = (block(b'g', round), block(b'i', round));
        let cdb = caw_cdb(LBA);
        let (dg, di) = (halves(&current, &mine), halves(&current, &theirs));
        let (rg, ri) = race(&mut g, &mut i, (&cdb, &dg), (&cdb, &di));
        let winner = match (rg.is_good(), ri.is_good()) {
            (true, false) if is_miscompare(&ri) => mine,
            (false, true) if is_miscompare(&rg) => theirs,
            _ => panic!("round {round}: not exactly one winner: guest {rg:?}, iSCSI {ri:?}"),
        };
        wins[usize::from(ri.is_good())] += 1;
        let r = g.read16(LBA, 1);
        good(&r, "READ");
        assert!(
            r.data == winner,
            "round {round}: the block is not the winner's data"
        );
        current = winner;
    }
    println!(
        "{ROUNDS} rounds: the vhost-user-scsi guest won {}, the iSCSI session {}",
        wins[0], wins[1]
    );
    s.daemon.assert_no_panic();
}

#[test]
fn a_write_racing_a_compare_and_write_never_lands_between_its_compare_and_its_write() {
    let s = setup();
    let (mut g, mut i) = (guest(&s), session(&s));
    let mut caw_won = 0;
    for round in 1..=ROUNDS {
        let (old, new, plain) = (block(b'a', round), block(b'b', round), block(b'x', round));
        good(&g.write16(LBA, &old), "WRITE of the compared data");
        let caw = (caw_cdb(LBA), halves(&old, &new));
        let mut write = [0u8; 16];
        write[0] = 0x8a;
        write[2..10].copy_from_slice(&LBA.to_be_bytes());
        write[13] = 1;
        // Each transport in turn does the COMPARE AND WRITE, the other the WRITE.
        let (caw_r, write_r) = if round % 2 == 0 {
            race(&mut g, &mut i, (&caw.0, &caw.1), (&write, &plain))
        } else {
            let (w, c) = race(&mut g, &mut i, (&write, &plain), (&caw.0, &caw.1));
            (c, w)
        };
        good(&write_r, "racing WRITE");
        assert!(
            caw_r.is_good() || is_miscompare(&caw_r),
            "round {round}: {caw_r:?}"
        );
        caw_won += u32::from(caw_r.is_good());
        // Either order is a serialization: COMPARE AND WRITE then WRITE ends with the WRITE's
        // data, WRITE then COMPARE AND WRITE miscompares. The COMPARE AND WRITE's data at the
        // end means the WRITE landed between its compare and its write, and was lost.
        let r = g.read16(LBA, 1);
        good(&r, "READ");
        assert!(
            r.data == plain,
            "round {round}: the racing WRITE was lost (COMPARE AND WRITE {})",
            if caw_r.is_good() {
                "GOOD"
            } else {
                "miscompared"
            }
        );
    }
    println!("{ROUNDS} rounds: the COMPARE AND WRITE went first in {caw_won}");
    s.daemon.assert_no_panic();
}

/// The same on the guests' fast path: a virtio-blk OUT (libblkio), or a WRITE ZEROES, from
/// guest vm1 racing an iSCSI COMPARE AND WRITE is never lost between its compare and its write.
#[test]
fn a_blk_write_racing_a_compare_and_write_never_lands_between_its_compare_and_its_write() {
    let s = setup();
    let mut i = session(&s);
    let mut blk = BlkClient::connect(&s.daemon.blk("vm1")).expect("libblkio connects");
    let offset = LBA * 512;
    let mut caw_won = 0;
    for round in 1..=ROUNDS {
        let (old, new) = (block(b'a', round), block(b'b', round));
        // Odd rounds a write of the block, even rounds WRITE ZEROES over it.
        let plain = if round % 2 == 1 {
            block(b'x', round)
        } else {
            vec![0u8; 512]
        };
        blk.write(offset, &old)
            .expect("blk WRITE of the compared data");
        let data = halves(&old, &new);
        let start = Barrier::new(2);
        let caw_r = std::thread::scope(|sc| {
            let caw = sc.spawn(|| {
                start.wait();
                i.cmd(&caw_cdb(LBA), &data, 0)
            });
            start.wait();
            let r = if round % 2 == 1 {
                blk.write(offset, &plain)
            } else {
                blk.write_zeroes(offset, 512, false)
            };
            r.expect("the racing blk write");
            caw.join().unwrap()
        });
        assert!(
            caw_r.is_good() || is_miscompare(&caw_r),
            "round {round}: {caw_r:?}"
        );
        caw_won += u32::from(caw_r.is_good());
        let now = blk.read(offset, 512).expect("blk READ");
        assert!(
            now == plain,
            "round {round}: the racing blk write was lost (COMPARE AND WRITE {})",
            if caw_r.is_good() {
                "GOOD"
            } else {
                "miscompared"
            }
        );
    }
    println!("{ROUNDS} rounds: the COMPARE AND WRITE went first in {caw_won}");
    s.daemon.assert_no_panic();
}

#[test]
fn reservations_gate_it_as_a_write_and_the_lu_advertises_it() {
    let s = setup();
    let (mut g, mut i) = (guest(&s), session(&s));
    let zero = vec![0u8; 512];
    let data = halves(&zero, &block(b'w', 1));
    // Block Limits VPD: MAXIMUM COMPARE AND WRITE LENGTH (byte 5) is not 0.
    let vpd = g.cmd(&[0x12, 1, 0xb0, 0, 64, 0], &[], 64);
    good(&vpd, "INQUIRY Block Limits");
    assert!(
        vpd.data[5] >= 1,
        "MAXIMUM COMPARE AND WRITE LENGTH {}",
        vpd.data[5]
    );
    // REPORT SUPPORTED OPERATION CODES, one command: SUPPORT 011b.
    let rsoc = i.cmd(&[0xa3, 0x0c, 0x01, 0x89, 0, 0, 0, 0, 0, 64, 0, 0], &[], 64);
    good(&rsoc, "REPORT SUPPORTED OPERATION CODES");
    assert_eq!(rsoc.data[1] & 0x07, 0x03, "{:?}", rsoc.data);
    // The iSCSI nexus holds WRITE EXCLUSIVE: the guest, unregistered and then registered, gets
    // RESERVATION CONFLICT and nothing is written; the holder's COMPARE AND WRITE is GOOD.
    good(&i.prout(SA_REGISTER, 0, 0, 0xa), "iSCSI REGISTER");
    good(&i.prout(SA_RESERVE, WE, 0xa, 0), "iSCSI RESERVE WE");
    conflict(&g.cmd(&caw_cdb(LBA), &data, 0), "non-registrant CAW");
    good(&g.prout(SA_REGISTER, 0, 0, 0xb, false), "guest REGISTER");
    conflict(&g.cmd(&caw_cdb(LBA), &data, 0), "registrant CAW under WE");
    assert_eq!(g.read16(LBA, 1).data, zero, "nothing written");
    good(&i.cmd(&caw_cdb(LBA), &data, 0), "holder CAW");
    // A miscompare: CHECK CONDITION, MISCOMPARE DURING VERIFY OPERATION.
    check(&i.cmd(&caw_cdb(LBA), &data, 0), MISCOMPARE, "stale CAW");
    assert_eq!(g.read16(LBA, 1).data, block(b'w', 1));
    s.daemon.assert_no_panic();
}

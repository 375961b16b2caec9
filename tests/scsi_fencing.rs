//! The fencing guarantee on the scsi path: once a PREEMPT AND ABORT sent over SCSI returns GOOD,
//! no WRITE(16) of the preempted initiator reaches the image, even with 64 in flight on two
//! request queues when it happens.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::daemon::{TestDaemon, IMAGE_SIZE};
use common::deadline::{Deadline, SetOnDrop};
use common::fencing::{assert_writes_ended_before, WRITE_DELAY};
use common::scsi_client::*;
use common::vu_frontend::Desc;

const VICTIM_KEY: u64 = 0xdead;
const SURVIVOR_KEY: u64 = 0xbeef;
const WE_RO: u8 = 5;
const DEPTH: usize = 32;
const QUEUES: usize = 2;
const BLOCK: usize = 4096;

/// What happened to one sequence-numbered write.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fate {
    Pending,
    Good,
    /// RESERVATION CONFLICT, or the 2A/05 unit attention that reports the preemption.
    Refused,
}

struct Slot {
    hdr: u64,
    data: u64,
    resp: u64,
}

/// Writes 4 KiB block `seq` (LBA seq*8, content seq+1) for seq = 0, 1, ... with DEPTH commands in
/// flight per request queue, until `stop` is set.
fn flood(c: &mut ScsiClient, stop: &AtomicBool, progress: &AtomicUsize) -> Vec<Fate> {
    let max = IMAGE_SIZE as usize / BLOCK;
    let mut fates = Vec::new();
    let mut free: Vec<Vec<Slot>> = (0..QUEUES)
        .map(|_| {
            (0..DEPTH)
                .map(|_| Slot {
                    hdr: c.fe.alloc(REQ_HEADER_LEN),
                    data: c.fe.alloc(BLOCK),
                    resp: c.fe.alloc(RESP_LEN),
                })
                .collect()
        })
        .collect();
    let mut in_flight: Vec<HashMap<u16, (usize, Slot)>> =
        (0..QUEUES).map(|_| HashMap::new()).collect();
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        for q in 0..QUEUES {
            while !stopping && fates.len() < max {
                let Some(slot) = free[q].pop() else { break };
                let seq = fates.len();
                fates.push(Fate::Pending);
                let tag = c.next_tag();
                let cdb = write16_cdb((seq * BLOCK / 512) as u64, (BLOCK / 512) as u32);
                c.fe.write_mem(slot.hdr, &req_header(&LUN0, tag, &cdb));
                let mut data = vec![0u8; BLOCK];
                data[..8].copy_from_slice(&(seq as u64 + 1).to_le_bytes());
                c.fe.write_mem(slot.data, &data);
                c.fe.write_mem(slot.resp, &[0xee; RESP_LEN]);
                let head = c.fe.submit(
                    REQUEST_Q + q,
                    &[
                        Desc::r(slot.hdr, REQ_HEADER_LEN as u32),
                        Desc::r(slot.data, BLOCK as u32),
                        Desc::w(slot.resp, RESP_LEN as u32),
                    ],
                );
                assert!(in_flight[q].insert(head, (seq, slot)).is_none());
            }
        }
        if in_flight.iter().all(|m| m.is_empty()) {
            return fates;
        }
        let mut done = 0;
        for q in 0..QUEUES {
            while let Some((id, len)) = c.fe.try_used(REQUEST_Q + q) {
                let (seq, slot) = in_flight[q].remove(&id).expect("unknown completion");
                assert_eq!(len as usize, RESP_LEN, "write {seq}: used length");
                let (response, status, sense, _) = parse_resp(&c.fe.read_mem(slot.resp, RESP_LEN));
                // PREEMPT AND ABORT aborts the victim's queued writes (SPC-4 §5.9.11.5).
                let aborted = response == VIRTIO_SCSI_S_ABORTED;
                assert!(
                    aborted || response == VIRTIO_SCSI_S_OK,
                    "write {seq}: {response}"
                );
                fates[seq] = match (status, sense) {
                    _ if aborted => Fate::Refused,
                    (GOOD, None) => Fate::Good,
                    (RESERVATION_CONFLICT, None) => Fate::Refused,
                    (CHECK_CONDITION, Some((6, 0x2a, 5))) => Fate::Refused,
                    other => panic!("write {seq}: unexpected outcome {other:02x?}"),
                };
                free[q].push(slot);
                done += 1;
            }
        }
        if done == 0 {
            std::thread::sleep(Duration::from_micros(50));
        } else {
            progress.fetch_add(done, Ordering::Relaxed);
        }
    }
}

fn block_seq(image: &[u8], seq: usize) -> u64 {
    u64::from_le_bytes(image[seq * BLOCK..seq * BLOCK + 8].try_into().unwrap())
}

#[test]
fn no_scsi_write_of_the_preempted_lands_after_preempt_and_abort_returns() {
    // A queue thread per request queue, so the victim's queues run side by side.
    let d = TestDaemon::start_probed(&["victim", "survivor"], |c| {
        c.guests[0].queues = QUEUES as u16;
    });
    let mut victim = ScsiClient::connect_queues(&d.scsi("victim"), QUEUES, 256);
    let mut survivor = ScsiClient::connect(&d.scsi("survivor"));
    victim.drain_ua();
    survivor.drain_ua();
    let r = victim.prout(SA_REGISTER_AND_IGNORE, 0, 0, VICTIM_KEY, false);
    assert!(r.is_good(), "{r:?}");
    let r = survivor.prout(SA_REGISTER_AND_IGNORE, 0, 0, SURVIVOR_KEY, false);
    assert!(r.is_good(), "{r:?}");
    let r = victim.prout(SA_RESERVE, WE_RO, VICTIM_KEY, 0, false);
    assert!(r.is_good(), "{r:?}");

    // Every write takes WRITE_DELAY between its admission and the moment it reaches the image:
    // a write that was not fenced by the admission would land well after the preempt returns.
    d.probe().set_write_delay(WRITE_DELAY);
    d.probe().clear();
    let stop = AtomicBool::new(false);
    let progress = AtomicUsize::new(0);
    let _deadline = Deadline::start("the fencing test", Duration::from_secs(120));
    let (fates, snapshot, returned) = std::thread::scope(|s| {
        let _stop_on_panic = SetOnDrop(&stop);
        let flooder = s.spawn(|| flood(&mut victim, &stop, &progress));
        while progress.load(Ordering::Relaxed) < 10 {
            assert!(!flooder.is_finished(), "the flood ended early");
            std::thread::sleep(Duration::from_millis(1));
        }
        let r = survivor.prout(SA_PREEMPT_AND_ABORT, WE_RO, SURVIVOR_KEY, VICTIM_KEY, false);
        let returned = Instant::now();
        assert!(r.is_good(), "PREEMPT AND ABORT: {r:?}");
        // GOOD has returned: from here on the image must not change.
        let snapshot = std::fs::read(d.image()).unwrap();
        // Let the flood run into the fence for a while (it may also run out of blocks).
        let at_preempt = progress.load(Ordering::Relaxed);
        while progress.load(Ordering::Relaxed) < at_preempt + 500 && !flooder.is_finished() {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(100));
        stop.store(true, Ordering::Relaxed);
        (flooder.join().unwrap(), snapshot, returned)
    });
    assert_writes_ended_before(d.probe(), returned);
    let fin = std::fs::read(d.image()).unwrap();
    let landed = fates.iter().filter(|&&f| f == Fate::Good).count();
    let refused = fates.iter().filter(|&&f| f == Fate::Refused).count();
    eprintln!("scsi flood: {landed} writes landed before the preempt, {refused} refused after");
    assert!(fates.iter().all(|&f| f != Fate::Pending));
    assert!(landed > 0, "the flood was writing before the preempt");
    assert!(refused > 0, "the flood kept writing after the preempt");
    assert!(
        snapshot == fin,
        "a write landed after PREEMPT AND ABORT returned"
    );
    for (seq, &f) in fates.iter().enumerate() {
        let on_disk = block_seq(&fin, seq);
        match f {
            Fate::Good => assert_eq!(on_disk, seq as u64 + 1, "acknowledged write {seq}"),
            _ => assert_eq!(on_disk, 0, "refused write {seq} reached the image"),
        }
    }
    // The survivor holds and writes; the victim is unregistered.
    let (_, keys) = survivor.read_keys();
    assert_eq!(keys, vec![SURVIVOR_KEY]);
    assert_eq!(survivor.read_reservation().1, Some((SURVIVOR_KEY, WE_RO)));
}

//! The fencing guarantee on the blk path: once a PREEMPT AND ABORT returns GOOD, no write of the
//! preempted initiator reaches the image, even with 32 writes in flight when it happens.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::blkio_client::BlkClient;
use common::daemon::TestDaemon;
use common::deadline::{Deadline, SetOnDrop};
use common::fencing::{assert_writes_ended_before, WRITE_DELAY};
use sharedisk::config::{Aio, Config};
use sharedisk::pr::{PrStatus, ProutRequest, ResType, ServiceAction};

fn prout(d: &TestDaemon, who: &str, req: ProutRequest) {
    assert_eq!(
        d.server().arbiter().prout(who, &req, None),
        PrStatus::Good,
        "{who}: {req:?}"
    );
}

fn block_seq(image: &[u8], seq: usize) -> u64 {
    u64::from_le_bytes(image[seq * 4096..seq * 4096 + 8].try_into().unwrap())
}

#[test]
fn no_write_of_the_preempted_lands_after_preempt_and_abort_returns() {
    preempt_and_abort_under_a_write_flood(|_| {});
}

/// The same with the image under O_DIRECT and io_uring: a round's writes are in flight in the
/// kernel together, and the PREEMPT must still wait for all of them.
#[test]
fn the_guarantee_holds_with_direct_io_and_io_uring_batches() {
    preempt_and_abort_under_a_write_flood(|c| {
        c.direct = true;
        c.aio = Some(Aio::IoUring);
    });
}

fn preempt_and_abort_under_a_write_flood(tweak: impl FnOnce(&mut Config)) {
    let d = TestDaemon::start_probed(&["victim", "survivor"], tweak);
    prout(
        &d,
        "victim",
        ProutRequest::new(ServiceAction::RegisterAndIgnore).sa_key(0xdead),
    );
    prout(
        &d,
        "survivor",
        ProutRequest::new(ServiceAction::RegisterAndIgnore).sa_key(0xbeef),
    );
    prout(
        &d,
        "victim",
        ProutRequest::new(ServiceAction::Reserve)
            .key(0xdead)
            .typ(ResType::WriteExclusiveRegistrantsOnly),
    );
    d.probe().set_write_delay(WRITE_DELAY);
    d.probe().clear();
    let stop = AtomicBool::new(false);
    let progress = AtomicUsize::new(0);
    let max = (common::daemon::IMAGE_SIZE / 4096) as usize;
    let sock = d.blk("victim");
    let _deadline = Deadline::start("the fencing test", Duration::from_secs(120));
    let (result, snapshot, returned) = std::thread::scope(|s| {
        let _stop_on_panic = SetOnDrop(&stop);
        let flood = s.spawn(|| {
            let mut c = BlkClient::connect(&sock).unwrap();
            c.flood(32, max, &stop, &progress)
        });
        while progress.load(Ordering::Relaxed) < 10 {
            assert!(!flood.is_finished(), "the flood ended early");
            std::thread::sleep(Duration::from_millis(1));
        }
        prout(
            &d,
            "survivor",
            ProutRequest::new(ServiceAction::PreemptAndAbort)
                .key(0xbeef)
                .sa_key(0xdead)
                .typ(ResType::WriteExclusiveRegistrantsOnly),
        );
        let returned = Instant::now();
        // GOOD has returned: from here on the image must not change.
        let snapshot = std::fs::read(d.image()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        (flood.join().unwrap(), snapshot, returned)
    });
    assert_writes_ended_before(d.probe(), returned);
    let fin = std::fs::read(d.image()).unwrap();
    let landed = result.ok.iter().filter(|&&ok| ok).count();
    let refused = result.ok.len() - landed;
    eprintln!("flood: {landed} writes landed before the preempt, {refused} refused after it");
    assert!(landed > 0, "the flood was writing before the preempt");
    assert!(refused > 0, "the flood kept writing after the preempt");
    assert!(
        snapshot == fin,
        "a write landed after PREEMPT AND ABORT returned"
    );
    for (seq, &ok) in result.ok.iter().enumerate() {
        let on_disk = block_seq(&fin, seq);
        if ok {
            assert_eq!(
                on_disk,
                seq as u64 + 1,
                "acknowledged write {seq} is on the image"
            );
        } else {
            assert_eq!(on_disk, 0, "refused write {seq} never reached the image");
        }
    }
    // Acknowledged writes form a prefix: nothing got through once the first was refused.
    let first_refused = result.ok.iter().position(|&ok| !ok).unwrap();
    assert!(result.ok[first_refused..].iter().all(|&ok| !ok));
}

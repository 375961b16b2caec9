//! Unit tests of `reservations`: the lock that is the fencing guarantee.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::*;
use crate::pr::{ResType, ServiceAction};

fn res() -> Reservations {
    let r = Reservations::new(Arbiter::new(["a".to_string(), "b".to_string()]), None);
    let ok = |who: &str, req: ProutRequest| assert_eq!(r.prout(who, &req, None), PrStatus::Good);
    ok(
        "a",
        ProutRequest::new(ServiceAction::RegisterAndIgnore).sa_key(0xa),
    );
    ok(
        "b",
        ProutRequest::new(ServiceAction::RegisterAndIgnore).sa_key(0xb),
    );
    ok(
        "a",
        ProutRequest::new(ServiceAction::Reserve)
            .key(0xa)
            .typ(ResType::WriteExclusiveRegistrantsOnly),
    );
    r
}

fn preempt_a() -> ProutRequest {
    ProutRequest::new(ServiceAction::PreemptAndAbort)
        .key(0xb)
        .sa_key(0xa)
        .typ(ResType::WriteExclusiveRegistrantsOnly)
}

#[test]
fn admission_follows_the_arbiter() {
    let r = res();
    assert!(r.admit("a", Access::Write).is_ok());
    assert!(r.admit("b", Access::Write).is_ok());
    assert_eq!(r.prout("b", &preempt_a(), None), PrStatus::Good);
    assert!(r.admit("a", Access::Write).is_err());
    assert!(r.admit("a", Access::Read).is_ok());
    assert!(r.admit("b", Access::Write).is_ok());
}

/// A PR OUT returns only after every admission taken before it has been dropped, and no
/// admission it refuses is granted after it returns.
#[test]
fn a_pr_out_waits_for_the_admissions_in_progress() {
    let r = res();
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        let admitted = r.admit("a", Access::Write).unwrap();
        let waiter = s.spawn(|| {
            let status = r.prout("b", &preempt_a(), None);
            tx.send(Instant::now()).unwrap();
            status
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "PR OUT did not wait"
        );
        let released = Instant::now();
        drop(admitted);
        let returned = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(returned >= released);
        assert_eq!(waiter.join().unwrap(), PrStatus::Good);
    });
    assert!(r.admit("a", Access::Write).is_err());
}

/// An initiator that re-admits as soon as it drops an admission (a queue thread doing a long
/// command in pieces, or requests back to back) cannot keep a waiting PR OUT out: the PR OUT
/// waits for the admission in progress and then goes first. Three rounds, as a starving lock
/// lets the writer in now and then.
#[test]
fn back_to_back_admissions_cannot_starve_a_pr_out() {
    for round in 0..3 {
        let r = res();
        let pieces = AtomicUsize::new(0);
        let refused = AtomicBool::new(false);
        std::thread::scope(|s| {
            // Runs until the preempt refuses it (at most 25 s, should the preempt never come).
            s.spawn(|| {
                for _ in 0..500 {
                    let Ok(_admitted) = r.admit("a", Access::Write) else {
                        refused.store(true, Ordering::Relaxed);
                        return;
                    };
                    pieces.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
            while pieces.load(Ordering::SeqCst) < 2 {
                std::thread::sleep(Duration::from_millis(1));
            }
            let before = pieces.load(Ordering::SeqCst);
            let status = r.prout("b", &preempt_a(), None);
            let during = pieces.load(Ordering::SeqCst) - before;
            assert_eq!(status, PrStatus::Good);
            // The piece in progress when the PR OUT started finishes; at most one more may slip
            // in between reading the counter and the PR OUT reaching the lock.
            assert!(
                during <= 1,
                "round {round}: {during} admissions overtook the waiting PR OUT"
            );
        });
        assert!(
            refused.load(Ordering::Relaxed),
            "the next piece was refused"
        );
    }
}

#[test]
fn with_mut_waits_like_a_pr_out_and_is_not_starved_either() {
    let r = res();
    let pieces = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(_a) = r.admit("b", Access::Write) {
                    pieces.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        });
        for round in 0..3 {
            let start = pieces.load(Ordering::SeqCst);
            while pieces.load(Ordering::SeqCst) < start + 2 {
                std::thread::sleep(Duration::from_millis(1));
            }
            let before = pieces.load(Ordering::SeqCst);
            let t = Instant::now();
            r.with_mut(|a| a.i_t_nexus_reset("b"));
            let during = pieces.load(Ordering::SeqCst) - before;
            if during > 1 || t.elapsed() > Duration::from_secs(5) {
                stop.store(true, Ordering::Relaxed);
            }
            assert!(
                during <= 1,
                "round {round}: {during} admissions overtook with_mut"
            );
        }
        stop.store(true, Ordering::Relaxed);
    });
}

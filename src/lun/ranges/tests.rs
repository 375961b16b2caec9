//! Unit tests of the write-range lock.

use super::*;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// Whether `f` (run on another thread) is still blocked after a while.
fn blocks(l: &Arc<WriteRanges>, f: impl FnOnce(&WriteRanges) + Send + 'static) -> Arc<AtomicBool> {
    let done = Arc::new(AtomicBool::new(false));
    let (l, d) = (Arc::clone(l), Arc::clone(&done));
    std::thread::spawn(move || {
        f(&l);
        d.store(true, SeqCst);
    });
    std::thread::sleep(Duration::from_millis(100));
    done
}

fn until(flag: &AtomicBool) {
    for _ in 0..500 {
        if flag.load(SeqCst) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("never finished");
}

#[test]
fn writes_pass_at_once_while_no_compare_and_write_is_outstanding() {
    let l = WriteRanges::default();
    let a = l.write([(0, 512)].into_iter());
    let b = l.write([(0, 512)].into_iter());
    assert!(a.tickets.is_none() && b.tickets.is_none(), "fast path");
    drop((a, b));
    assert!(l.idle());
}

#[test]
fn an_overlapping_write_waits_for_a_compare_and_write() {
    let l = Arc::new(WriteRanges::default());
    let caw = l.compare_and_write(4096, 512);
    let done = blocks(&l, |l| drop(l.write([(4000, 200)].into_iter())));
    assert!(
        !done.load(SeqCst),
        "the write landed inside the compare and write"
    );
    drop(caw);
    until(&done);
    assert!(l.idle());
}

#[test]
fn a_disjoint_write_does_not_wait() {
    let l = Arc::new(WriteRanges::default());
    let _caw = l.compare_and_write(4096, 512);
    let done = blocks(&l, |l| drop(l.write([(0, 4096), (4608, 512)].into_iter())));
    until(&done);
}

#[test]
fn a_compare_and_write_waits_for_writes_under_way() {
    let l = Arc::new(WriteRanges::default());
    let w = l.write([(0, 512)].into_iter());
    let done = blocks(&l, |l| drop(l.compare_and_write(1 << 20, 512)));
    // A fast-path write has no recorded range: the compare and write waits for it whatever its
    // range.
    assert!(!done.load(SeqCst));
    drop(w);
    until(&done);
    assert!(l.idle());
}

#[test]
fn overlapping_compare_and_writes_take_turns() {
    let l = Arc::new(WriteRanges::default());
    let first = l.compare_and_write(0, 1024);
    let done = blocks(&l, |l| drop(l.compare_and_write(512, 512)));
    assert!(!done.load(SeqCst));
    drop(first);
    until(&done);
    assert!(l.idle());
    assert_eq!(l.caws.load(SeqCst), 0);
}

#[test]
fn a_slow_path_write_recorded_first_is_waited_for() {
    let l = Arc::new(WriteRanges::default());
    let far = l.compare_and_write(1 << 30, 512);
    // With a compare and write outstanding, this write takes the slow path and records its range.
    let w = l.write([(0, 512)].into_iter());
    assert!(w.tickets.is_some());
    let done = blocks(&l, |l| drop(l.compare_and_write(0, 512)));
    assert!(!done.load(SeqCst));
    drop(w);
    until(&done);
    drop(far);
    assert!(l.idle());
}

#[test]
fn a_waiting_write_is_not_overtaken_by_a_later_compare_and_write() {
    // A stream of COMPARE AND WRITEs on one block (VMFS's ATS locks) must not starve a plain
    // write of it: the one that comes after the write waits for it.
    let l = Arc::new(WriteRanges::default());
    let first = l.compare_and_write(0, 512);
    let write = blocks(&l, |l| drop(l.write([(0, 512)].into_iter())));
    assert!(!write.load(SeqCst));
    let (release, held) = std::sync::mpsc::channel::<()>();
    let later = blocks(&l, move |l| {
        let _g = l.compare_and_write(0, 512);
        let _ = held.recv_timeout(Duration::from_secs(10));
    });
    drop(first);
    let overtaken = (0..100).all(|_| {
        std::thread::sleep(Duration::from_millis(10));
        !write.load(SeqCst)
    });
    drop(release);
    until(&later);
    assert!(
        !overtaken,
        "the write waited for a COMPARE AND WRITE that came after it"
    );
    assert!(l.idle());
}

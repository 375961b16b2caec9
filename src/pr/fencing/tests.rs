//! Unit tests of `fencing`: the operator's PR actions (`sharedisk ctl pr`).

use std::sync::mpsc;
use std::time::Duration;

use super::*;
use crate::pr::state_file::ImageIdentity;
use crate::pr::{ResType, ServiceAction};
use crate::scsi::sense;

fn setup() -> (tempfile::TempDir, Reservations) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.img");
    std::fs::write(&img, b"").unwrap();
    let store = StateStore::new(
        dir.path().join("d.img.pr"),
        ImageIdentity::of(&img).unwrap(),
    );
    let names = ["vm1", "vm2", "vm3"].map(String::from);
    let res = Reservations::new(Arbiter::new(names), Some(store));
    for n in ["vm1", "vm2", "vm3"] {
        while res.take_unit_attention(n).is_some() {}
    }
    (dir, res)
}

fn register(res: &Reservations, who: &str, key: u64) {
    let req = ProutRequest::new(ServiceAction::Register).sa_key(key);
    assert_eq!(res.prout(who, &req, None), PrStatus::Good);
}

fn reserve(res: &Reservations, who: &str, key: u64, t: ResType) {
    let req = ProutRequest::new(ServiceAction::Reserve).key(key).typ(t);
    assert_eq!(res.prout(who, &req, None), PrStatus::Good);
}

fn saved(dir: &tempfile::TempDir) -> crate::pr::PrState {
    let img = dir.path().join("d.img");
    StateStore::new(
        dir.path().join("d.img.pr"),
        ImageIdentity::of(&img).unwrap(),
    )
    .load()
    .unwrap()
    .unwrap()
    .reservations
}

#[test]
fn operator_clear_has_clears_side_effects_and_is_saved() {
    let (dir, res) = setup();
    register(&res, "vm1", 1);
    register(&res, "vm2", 2);
    reserve(&res, "vm1", 1, ResType::WriteExclusiveRegistrantsOnly);
    let gen = res.with(|a| a.generation());
    assert_eq!(res.operator(&OperatorAction::Clear), Ok(PrStatus::Good));
    res.with(|a| {
        assert_eq!(a.generation(), gen + 1);
        assert!(a.registrations().is_empty());
        assert!(a.reservation().is_none());
    });
    assert_eq!(saved(&dir).generation, gen + 1);
    assert!(saved(&dir).registrations.is_empty());
    for g in ["vm1", "vm2"] {
        assert_eq!(
            res.take_unit_attention(g),
            Some(sense::RESERVATIONS_PREEMPTED)
        );
    }
    assert_eq!(res.take_unit_attention("vm3"), None);
    // Nothing left to clear: no change, no new generation.
    assert_eq!(res.operator(&OperatorAction::Clear), Ok(PrStatus::Good));
    assert_eq!(res.with(|a| a.generation()), gen + 1);
}

#[test]
fn operator_preempt_of_the_holder_is_refused_without_a_survivor_to_take_over() {
    let (dir, res) = setup();
    register(&res, "vm1", 1);
    register(&res, "vm2", 2);
    reserve(&res, "vm1", 1, ResType::WriteExclusiveRegistrantsOnly);
    let gen = res.with(|a| a.generation());
    let alone = OperatorAction::Preempt {
        victim: "vm1".into(),
        abort: true,
        by: None,
    };
    assert!(matches!(
        res.operator(&alone),
        Err(FenceRefusal::VictimHolds { code: 5, .. })
    ));
    res.with(|a| {
        assert_eq!(a.generation(), gen);
        assert!(a.is_holder("vm1"));
    });
    assert_eq!(saved(&dir).generation, gen);
    assert_eq!(res.take_unit_attention("vm1"), None);
}

#[test]
fn operator_preempt_by_a_survivor_takes_the_reservation_over_and_is_saved() {
    let (dir, res) = setup();
    register(&res, "vm1", 1);
    register(&res, "vm2", 2);
    reserve(&res, "vm1", 1, ResType::WriteExclusiveRegistrantsOnly);
    let gen = res.with(|a| a.generation());
    let victim = OperatorAction::Preempt {
        victim: "vm1".into(),
        abort: true,
        by: Some("vm2".into()),
    };
    assert_eq!(res.operator(&victim), Ok(PrStatus::Good));
    res.with(|a| {
        assert_eq!(a.generation(), gen + 1);
        assert!(!a.is_registered("vm1"));
        assert!(a.is_holder("vm2"));
        assert_eq!(
            a.reservation().map(|r| r.res_type),
            Some(ResType::WriteExclusiveRegistrantsOnly)
        );
        assert!(!a.check("vm1", Access::Write));
    });
    assert_eq!(saved(&dir).generation, gen + 1);
    assert_eq!(
        res.take_unit_attention("vm1"),
        Some(sense::REGISTRATIONS_PREEMPTED)
    );
    // The same type: the survivor is told of nothing (SPC-4 §5.9.11.4.3).
    assert_eq!(res.take_unit_attention("vm2"), None);
    // The victim is no longer registered: a second preempt is refused.
    assert!(matches!(
        res.operator(&victim),
        Err(FenceRefusal::VictimNotRegistered { .. })
    ));
    assert_eq!(res.with(|a| a.generation()), gen + 1);
}

#[test]
fn operator_preempt_fences_a_non_holder_under_registrants_only() {
    let (_dir, res) = setup();
    register(&res, "vm1", 1);
    register(&res, "vm2", 2);
    reserve(&res, "vm1", 1, ResType::WriteExclusiveRegistrantsOnly);
    assert!(res.admit("vm2", Access::Write).is_ok());
    let victim = OperatorAction::Preempt {
        victim: "vm2".into(),
        abort: false,
        by: None,
    };
    assert_eq!(res.operator(&victim), Ok(PrStatus::Good));
    assert!(res.admit("vm2", Access::Write).is_err());
    assert!(res.admit("vm1", Access::Write).is_ok());
}

#[test]
fn host_actions_wait_for_admitted_io() {
    let (_dir, res) = setup();
    register(&res, "vm1", 1);
    let res = std::sync::Arc::new(res);
    let admitted = res.admit("vm1", Access::Write).unwrap();
    let (tx, rx) = mpsc::channel();
    let r = res.clone();
    let t = std::thread::spawn(move || {
        let status = r.operator(&OperatorAction::Clear);
        tx.send(status).unwrap();
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "a host clear completed while a write was in flight"
    );
    drop(admitted);
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        Ok(PrStatus::Good)
    );
    t.join().unwrap();
}

/// One op per slice of `mem`, the i-th at offset `i` (so that the order can be checked).
fn ops_over<'m>(mem: &'m mut [Vec<u8>], write: impl Fn(usize) -> bool) -> Vec<IoOp<'m>> {
    mem.iter_mut()
        .enumerate()
        .map(|(i, m)| {
            let bufs = std::iter::once(crate::image::buffers::Buf::from(&mut m[..])).collect();
            IoOp::new(write(i), i as u64, bufs, false)
        })
        .collect()
}

#[test]
fn a_round_is_admitted_in_pieces_of_at_most_the_chunk() {
    let (_dir, res) = setup();
    // 1 MiB ops, and one that does not fit beside the piece before it.
    let mut mem: Vec<Vec<u8>> = [1, 1, 1, 1, 1, 1, 3, 2, 1]
        .iter()
        .map(|&mib| vec![0u8; mib << 20])
        .collect();
    let mut ops = ops_over(&mut mem, |i| i % 2 == 0);
    let mut pieces = Vec::new();
    let allowed = res.run_admitted("vm1", &mut ops, |piece| {
        let bytes: usize = piece
            .iter()
            .map(|op| crate::image::buffers::total(&op.bufs))
            .sum();
        assert!(bytes as u64 <= ADMISSION_CHUNK, "a piece of {bytes} bytes");
        pieces.push(piece.iter().map(|op| op.offset).collect::<Vec<_>>());
    });
    assert!(allowed.iter().all(Result::is_ok));
    assert_eq!(
        pieces,
        vec![vec![0, 1, 2, 3], vec![4, 5], vec![6], vec![7, 8]]
    );
    let order: Vec<u64> = ops.iter().map(|op| op.offset).collect();
    assert_eq!(order, (0..9).collect::<Vec<u64>>());
}

#[test]
fn refused_ops_of_a_piece_never_reach_the_image_and_keep_their_place() {
    let (_dir, res) = setup();
    register(&res, "vm2", 2);
    reserve(&res, "vm2", 2, ResType::WriteExclusive);
    // vm1 may read, not write.
    let mut mem: Vec<Vec<u8>> = (0..6).map(|_| vec![0u8; 4096]).collect();
    let mut ops = ops_over(&mut mem, |i| i % 3 == 1);
    let mut ran = Vec::new();
    let allowed = res.run_admitted("vm1", &mut ops, |piece| {
        ran.extend(piece.iter().map(|op| (op.offset, op.write)));
    });
    assert_eq!(
        ran,
        vec![(0, false), (2, false), (3, false), (5, false)],
        "only the reads, in order, in one piece"
    );
    let verdicts: Vec<bool> = allowed.iter().map(Result::is_ok).collect();
    assert_eq!(verdicts, vec![true, false, true, true, false, true]);
    assert!(matches!(allowed[1], Err(Refusal::Conflict)));
    let order: Vec<(u64, bool)> = ops.iter().map(|op| (op.offset, op.write)).collect();
    assert_eq!(order, (0..6).map(|i| (i, i % 3 == 1)).collect::<Vec<_>>());
}

/// A one-host backend that gives each admission a deadline and records, when told that the
/// admission's I/O is done, whether the arbiter's lock was still held.
struct BoundedBackend {
    local: LocalBackend,
    res: std::sync::OnceLock<std::sync::Weak<Reservations>>,
    next: std::sync::atomic::AtomicU64,
    done: Mutex<Vec<(u64, bool)>>,
}

impl PrBackend for BoundedBackend {
    fn may_admit(&self) -> bool {
        true
    }
    fn wait_to_admit(&self) -> bool {
        true
    }
    fn io_deadline(&self) -> Option<u64> {
        Some(self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
    fn io_done(&self, deadline: u64) {
        let res = self.res.get().and_then(std::sync::Weak::upgrade).unwrap();
        let locked = res.arbiter.try_write().is_err();
        lock(&self.done).push((deadline, locked));
    }
    fn commit(&self, fencing: &Reservations, change: Change<'_>) -> Committed {
        self.local.commit(fencing, change)
    }
    fn confirm_current(&self, fencing: &Reservations) -> bool {
        self.local.confirm_current(fencing)
    }
    fn settle(
        &self,
        u: &crate::pr::backend::Unsettled,
    ) -> Result<(), crate::pr::backend::BackendError> {
        self.local.settle(u)
    }
    fn serves(&self, initiator: &str) -> bool {
        self.local.serves(initiator)
    }
}

#[test]
fn every_piece_is_checked_against_its_deadline_before_its_hold_ends() {
    let backend = Arc::new(BoundedBackend {
        local: LocalBackend::new(None),
        res: std::sync::OnceLock::new(),
        next: std::sync::atomic::AtomicU64::new(0),
        done: Mutex::new(Vec::new()),
    });
    let names = ["vm1", "vm2"].map(String::from);
    let res = Arc::new(Reservations::new(Arbiter::new(names), None).with_backend(backend.clone()));
    let _ = backend.res.set(Arc::downgrade(&res));
    // A round of three pieces (1+1+1+1, 3, 2 MiB), then a 9 MiB command in three chunks.
    let mut mem: Vec<Vec<u8>> = [1, 1, 1, 1, 3, 2]
        .iter()
        .map(|&mib| vec![0u8; mib << 20])
        .collect();
    let mut ops = ops_over(&mut mem, |_| true);
    res.run_admitted("vm1", &mut ops, |_| {});
    res.admitted_chunks("vm1", Access::Write, 9 << 20, |_, _| Ok(()))
        .unwrap();
    drop(res.admit("vm1", Access::Read).unwrap());
    let done = lock(&backend.done).clone();
    assert_eq!(
        done,
        (0..7).map(|d| (d, true)).collect::<Vec<_>>(),
        "each admission's own deadline, checked with the lock held"
    );
}

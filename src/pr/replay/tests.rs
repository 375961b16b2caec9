use super::*;

const CONFLICT: PrStatus = PrStatus::Conflict;

fn origin(connection: u64, position: u16, used: u16, base: u16) -> Origin {
    Origin {
        connection,
        ring: 2,
        slot: Slot {
            position,
            head: position % 128,
            used,
            base,
            size: 128,
            first_start: true,
        },
        digest: 0xfeed,
    }
}

#[test]
fn a_replay_on_a_new_connection_gets_the_first_outcome_once() {
    let mut log = ReplayLog::default();
    log.record("vm1", &origin(1, 10, 9, 0), PrStatus::Good);
    // QEMU reconnects and restarts the ring at its used index, 9.
    let replayed = origin(2, 10, 9, 9);
    assert_eq!(log.replay("vm1", &replayed), Some(PrStatus::Good));
    // The record now belongs to connection 2: nothing there is answered from it again.
    assert_eq!(log.replay("vm1", &replayed), None);
}

#[test]
fn the_same_connection_never_replays() {
    let mut log = ReplayLog::default();
    log.record("vm1", &origin(1, 10, 9, 0), CONFLICT);
    assert_eq!(log.replay("vm1", &origin(1, 10, 9, 0)), None);
}

#[test]
fn another_initiator_ring_head_or_digest_is_a_new_request() {
    let mut log = ReplayLog::default();
    log.record("vm1", &origin(1, 10, 9, 0), PrStatus::Good);
    let o = origin(2, 10, 9, 9);
    assert_eq!(log.replay("vm2", &o), None);
    assert_eq!(log.replay("vm1", &Origin { ring: 3, ..o }), None);
    let mut other_head = o;
    other_head.slot.head = 77;
    assert_eq!(log.replay("vm1", &other_head), None);
    assert_eq!(log.replay("vm1", &Origin { digest: 1, ..o }), None);
    assert_eq!(log.replay("vm1", &o), Some(PrStatus::Good));
}

#[test]
fn a_completed_request_is_not_replayed() {
    let mut log = ReplayLog::default();
    log.record("vm1", &origin(1, 10, 9, 0), PrStatus::Good);
    // The used index went past it (base 11): QEMU saw the completion; position 10 now holds a
    // request 65536 positions later only after a wrap, which the base rules out.
    assert_eq!(log.replay("vm1", &origin(2, 10, 9, 11)), None);
    // A fresh ring (a restarted QEMU) starts at 0, behind the used index the original saw.
    assert_eq!(log.replay("vm1", &origin(2, 10, 9, 0)), None);
}

#[test]
fn a_restarted_ring_is_not_replayed() {
    let mut log = ReplayLog::default();
    log.record("vm1", &origin(1, 10, 9, 0), PrStatus::Good);
    let mut o = origin(2, 10, 9, 9);
    o.slot.first_start = false;
    assert_eq!(log.replay("vm1", &o), None);
}

#[test]
fn indices_wrap() {
    let mut log = ReplayLog::default();
    log.record("vm1", &origin(1, 2, 65534, 65000), PrStatus::Good);
    assert_eq!(
        log.replay("vm1", &origin(2, 2, 65534, 65535)),
        Some(PrStatus::Good)
    );
}

#[test]
fn saved_records_replay_on_any_connection_and_keep_their_sense() {
    let mut log = ReplayLog::default();
    let sense = Sense::new(0x05, 0x24, 0x00);
    log.record("vm1", &origin(1, 10, 9, 0), PrStatus::CheckCondition(sense));
    let saved: Vec<Record> =
        serde_json::from_str(&serde_json::to_string(log.records()).expect("serialize"))
            .expect("parse");
    let mut loaded = ReplayLog::from_saved(saved);
    assert_eq!(
        loaded.replay("vm1", &origin(1, 10, 9, 9)),
        Some(PrStatus::CheckCondition(sense))
    );
}

#[test]
fn completion_and_failure_drop_records() {
    let mut log = ReplayLog::default();
    log.record("vm1", &origin(1, 10, 9, 0), PrStatus::Good);
    log.completed("vm1", 2);
    assert!(log.records().is_empty());
    log.record("vm1", &origin(1, 11, 10, 0), PrStatus::Good);
    log.forget("vm1", &origin(1, 11, 10, 0));
    assert!(log.records().is_empty());
}

#[test]
fn records_per_ring_are_bounded_and_one_per_slot() {
    let mut log = ReplayLog::default();
    for p in 0..20 {
        log.record("vm1", &origin(1, p, p, 0), PrStatus::Good);
    }
    log.record("vm1", &origin(1, 19, 19, 0), CONFLICT);
    assert_eq!(log.records().len(), MAX_PER_RING);
    assert_eq!(log.records().last().map(|r| r.status), Some(0x18));
    assert_eq!(log.records().iter().filter(|r| r.position == 19).count(), 1);
}

/// As requests complete in order, a request is always taken at `used == position`; a record then
/// matches only a ring restarted exactly at its position, never one restarted behind or ahead.
#[test]
fn the_real_case_matches_only_a_restart_at_the_request() {
    let mut log = ReplayLog::default();
    log.record("vm1", &origin(1, 40, 40, 0), PrStatus::Good);
    assert_eq!(log.replay("vm1", &origin(2, 40, 40, 39)), None);
    assert_eq!(log.replay("vm1", &origin(2, 40, 40, 41)), None);
    assert_eq!(
        log.replay("vm1", &origin(2, 40, 40, 40)),
        Some(PrStatus::Good)
    );
}

#[test]
fn records_restored_from_the_shared_state_replace_the_same_slots_only() {
    // The local copy: slot 10 saw an older request (another digest); slot 20 a record of its own.
    let mut local = ReplayLog::default();
    let mut older = origin(1, 10, 9, 0);
    older.digest = 0xdead;
    local.record("vm1", &older, CONFLICT);
    local.record("vm1", &origin(1, 20, 19, 0), CONFLICT);
    let mut local = ReplayLog::from_saved(local.records().to_vec());
    // The shared state's records: slot 10's request, committed just before a crash.
    let mut shared = ReplayLog::default();
    shared.record("vm1", &origin(1, 10, 9, 0), PrStatus::Good);
    local.restore(shared.records().to_vec());
    assert_eq!(local.records().len(), 2);
    assert_eq!(
        local.replay("vm1", &origin(2, 10, 9, 9)),
        Some(PrStatus::Good),
        "the committed request's record, replayable on the new connection"
    );
    assert_eq!(local.replay("vm1", &origin(2, 20, 19, 19)), Some(CONFLICT));
}

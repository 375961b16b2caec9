//! Unit tests of `state`.

use super::*;
use crate::pr::Registration;

fn setup() -> (tempfile::TempDir, StateStore) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.img");
    fs::write(&img, b"").unwrap();
    let store = StateStore::new(
        dir.path().join("d.img.pr"),
        ImageIdentity::of(&img).unwrap(),
    );
    (dir, store)
}

#[test]
fn missing_file_loads_as_none() {
    let (_d, store) = setup();
    assert_eq!(store.load().unwrap(), None);
}

#[test]
fn save_then_load_round_trips() {
    let (_d, store) = setup();
    let state = PrState {
        generation: 7,
        registrations: vec![Registration {
            initiator: "vm1".into(),
            key: 0xabc,
        }],
        ..Default::default()
    };
    let mut replay = crate::pr::replay::ReplayLog::default();
    let origin = crate::pr::replay::Origin {
        connection: 3,
        ring: 2,
        slot: crate::pr::replay::Slot {
            position: 5,
            head: 5,
            used: 4,
            base: 0,
            size: 128,
            first_start: true,
        },
        digest: 42,
    };
    replay.record("vm1", &origin, crate::pr::PrStatus::Good);
    store.save(&state, replay.records()).unwrap();
    let loaded = store.load().unwrap().expect("saved state");
    assert_eq!(loaded.reservations, state);
    // What was saved is what a restarted daemon starts with.
    let expected = crate::pr::replay::ReplayLog::from_saved(replay.records().to_vec());
    assert_eq!(loaded.replay, expected.records());
}

#[test]
fn a_file_without_replay_records_loads() {
    let (_d, store) = setup();
    store.save(&PrState::default(), &[]).unwrap();
    let text = fs::read_to_string(store.path()).unwrap();
    assert!(!text.contains("replay"), "{text}");
    assert_eq!(store.load().unwrap().map(|s| s.replay), Some(vec![]));
}

#[test]
fn corrupt_file_is_an_error_never_a_reset() {
    let (_d, store) = setup();
    fs::write(store.path(), b"{ not json").unwrap();
    let err = store.load().unwrap_err();
    assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("--reset-reservations"));
}

#[test]
fn state_of_another_image_is_refused() {
    let (d, store) = setup();
    store.save(&PrState::default(), &[]).unwrap();
    let other = d.path().join("other.img");
    fs::write(&other, b"").unwrap();
    let foreign = StateStore::new(
        store.path().to_path_buf(),
        ImageIdentity::of(&other).unwrap(),
    );
    assert!(matches!(
        foreign.load().unwrap_err(),
        StateError::OtherImage { .. }
    ));
}

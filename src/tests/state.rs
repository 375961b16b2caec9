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
    store.save(&state).unwrap();
    assert_eq!(store.load().unwrap(), Some(state));
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
    store.save(&PrState::default()).unwrap();
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

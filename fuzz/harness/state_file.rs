//! The reservation state file: any bytes as `<image>.pr`, loaded by `state::StateStore::load`
//! exactly as the daemon does at start.
//!
//! Checks: a state that loads is valid, survives a save and a reload unchanged, and the arbiter
//! built from it keeps it valid through a fixed round of PR OUT commands from every initiator
//! with every key it holds (a file can carry states no sequence of commands makes, such as a
//! generation at u32::MAX or keys shared between initiators).

use std::path::{Path, PathBuf};

use sharedisk::pr::state_file::{ImageIdentity, StateStore};
use sharedisk::pr::{Arbiter, ProutRequest, ResType, ServiceAction};

use super::{INITIATORS, KNOWN};

/// A fresh directory per input (on tmpfs when there is one): inputs never see each other's
/// files, harnesses on parallel test threads never race, and nothing outlives the input.
fn temp_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("temp dir")
}

fn store(dir: &Path, name: &str) -> StateStore {
    StateStore::new(
        dir.join(name),
        ImageIdentity {
            path: PathBuf::from("/fuzz/disk.img"),
            inode: 42,
        },
    )
}

fn exercise(arb: &mut Arbiter) {
    let mut keys: Vec<u64> = arb.registrations().iter().map(|r| r.key).collect();
    keys.extend([0, 1]);
    for initiator in INITIATORS {
        for &key in &keys {
            let sark = key.wrapping_add(1);
            let mut reqs = vec![
                ProutRequest::new(ServiceAction::Register)
                    .key(key)
                    .sa_key(sark),
                ProutRequest::new(ServiceAction::RegisterAndIgnore).sa_key(key),
                ProutRequest::new(ServiceAction::Release)
                    .key(key)
                    .typ(ResType::WriteExclusive),
                ProutRequest::new(ServiceAction::RegisterAndMove)
                    .key(key)
                    .sa_key(sark)
                    .move_to(Some("vm1")),
            ];
            for t in ResType::ALL {
                reqs.push(ProutRequest::new(ServiceAction::Reserve).key(key).typ(t));
                for &victim in &keys {
                    reqs.push(
                        ProutRequest::new(ServiceAction::Preempt)
                            .key(key)
                            .sa_key(victim)
                            .typ(t),
                    );
                }
            }
            reqs.push(ProutRequest::new(ServiceAction::Clear).key(key));
            for req in reqs {
                let mut a = arb.clone();
                a.prout(initiator, &req);
                if let Err(e) = a.state().validate() {
                    panic!("{req:?} from {initiator} on {:?}: {e}", arb.state());
                }
                for init in INITIATORS {
                    let _ = a.check(init, sharedisk::pr::Access::Write);
                    let _ = a.spc2_reserve(init);
                }
            }
        }
    }
}

/// One fuzz input; panics on a finding.
pub fn run(data: &[u8]) {
    let dir = temp_dir();
    let s = store(dir.path(), "disk.img.pr");
    std::fs::write(s.path(), data).expect("write state file");
    let loaded = s.load();
    if super::tracing() {
        eprintln!("{loaded:?}");
    }
    let Ok(Some(saved)) = loaded else {
        return;
    };
    let state = saved.reservations;
    state.validate().expect("load returned an invalid state");

    let copy = store(dir.path(), "copy.pr");
    copy.save(&state, &saved.replay).expect("save");
    let reloaded = copy.load().expect("reload").expect("a saved state");
    assert_eq!(reloaded.reservations, state);
    assert_eq!(reloaded.replay, saved.replay);

    let mut arb = Arbiter::from_state(state, KNOWN.iter().map(|s| s.to_string()));
    exercise(&mut arb);
}

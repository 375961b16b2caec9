//! Reservations gate the blk path: an initiator acts through the arbiter API, and libblkio
//! clients on the other guests' sockets see exactly the access table (reference, SBC-3 table).

mod common;

use common::blkio_client::BlkClient;
use common::daemon::TestDaemon;
use sharedisk::pr::{PrStatus, ProutRequest, ResType, ServiceAction};

const HOLDER: &str = "holder";
const REG: &str = "registered";
const OTHER: &str = "other";

fn prout(d: &TestDaemon, who: &str, req: ProutRequest) {
    assert_eq!(
        d.server().arbiter().prout(who, &req, None),
        PrStatus::Good,
        "{who}: {req:?}"
    );
}

fn register(d: &TestDaemon, who: &str, key: u64) {
    prout(
        d,
        who,
        ProutRequest::new(ServiceAction::RegisterAndIgnore).sa_key(key),
    );
}

/// (read allowed, write allowed) for the registered and the unregistered non-holder.
fn expected(t: ResType) -> [(bool, bool); 2] {
    use ResType::*;
    match t {
        WriteExclusive => [(true, false), (true, false)],
        ExclusiveAccess => [(false, false), (false, false)],
        WriteExclusiveRegistrantsOnly => [(true, true), (true, false)],
        ExclusiveAccessRegistrantsOnly => [(true, true), (false, false)],
        // Registrants are holders under the all-registrants types.
        WriteExclusiveAllRegistrants => [(true, true), (true, false)],
        ExclusiveAccessAllRegistrants => [(true, true), (false, false)],
    }
}

#[test]
fn every_type_gates_reads_writes_and_flushes_as_the_table_says() {
    let d = TestDaemon::start(&[HOLDER, REG, OTHER]);
    let mut holder = BlkClient::connect(&d.blk(HOLDER)).unwrap();
    let mut clients = [
        (REG, BlkClient::connect(&d.blk(REG)).unwrap()),
        (OTHER, BlkClient::connect(&d.blk(OTHER)).unwrap()),
    ];
    for t in ResType::ALL {
        register(&d, HOLDER, 0x11);
        register(&d, REG, 0x22);
        prout(
            &d,
            HOLDER,
            ProutRequest::new(ServiceAction::Reserve).key(0x11).typ(t),
        );
        holder.write(0, &[1u8; 4096]).expect("the holder writes");
        holder.read(0, 4096).expect("the holder reads");
        holder.flush().expect("the holder flushes");
        for ((who, c), (read, write)) in clients.iter_mut().zip(expected(t)) {
            // A pattern where the others aim, so that a refused discard or zeroing would show.
            holder.write(8192, &[9u8; 4096]).expect("the holder writes");
            assert_eq!(c.read(0, 4096).is_ok(), read, "{who} read under {t:?}");
            assert_eq!(
                c.write(8192, &[2u8; 4096]).is_ok(),
                write,
                "{who} write under {t:?}"
            );
            assert_eq!(c.flush().is_ok(), write, "{who} flush under {t:?}");
            assert_eq!(
                c.discard(8192, 4096).is_ok(),
                write,
                "{who} discard under {t:?}"
            );
            assert_eq!(
                c.write_zeroes(8192, 4096, false).is_ok(),
                write,
                "{who} write-zeroes under {t:?}"
            );
            if !write {
                // Refused writes, discards and zeroings never reach the image.
                assert_eq!(
                    holder.read(8192, 4096).unwrap(),
                    vec![9u8; 4096],
                    "{who} under {t:?}"
                );
            }
        }
        prout(
            &d,
            HOLDER,
            ProutRequest::new(ServiceAction::Clear).key(0x11),
        );
        for (who, c) in clients.iter_mut() {
            c.write(8192, &[0u8; 4096])
                .unwrap_or_else(|e| panic!("{who} writes once the reservation is cleared: {e}"));
        }
    }
}

#[test]
fn registrations_alone_restrict_nothing() {
    let d = TestDaemon::start(&[HOLDER, OTHER]);
    register(&d, HOLDER, 0x11);
    let mut other = BlkClient::connect(&d.blk(OTHER)).unwrap();
    other.write(0, &[3u8; 512]).unwrap();
    other.read(0, 512).unwrap();
}

#[test]
fn reservations_survive_a_daemon_restart() {
    let mut d = TestDaemon::start(&[HOLDER, OTHER]);
    register(&d, HOLDER, 0xaa);
    register(&d, OTHER, 0xbb);
    prout(
        &d,
        HOLDER,
        ProutRequest::new(ServiceAction::Reserve)
            .key(0xaa)
            .typ(ResType::WriteExclusive),
    );
    let before = d.server().arbiter().with(|a| a.state().clone());
    d.restart();
    let after = d.server().arbiter().with(|a| a.state().clone());
    assert_eq!(before, after);
    assert_eq!(after.registrations.len(), 2);
    let mut other = BlkClient::connect(&d.blk(OTHER)).unwrap();
    assert!(
        other.write(0, &[1u8; 512]).is_err(),
        "still fenced after the restart"
    );
    other.read(0, 512).unwrap();
    let mut holder = BlkClient::connect(&d.blk(HOLDER)).unwrap();
    holder.write(0, &[1u8; 512]).unwrap();
}

#[test]
fn a_corrupt_state_file_stops_the_start_with_a_clear_message() {
    let mut d = TestDaemon::start(&[HOLDER]);
    register(&d, HOLDER, 0xaa);
    d.stop();
    let state = d.config.state_path();
    std::fs::write(&state, b"{\"format\": 1, \"image\": ").unwrap();
    let mut config = d.config.clone();
    config.size = None;
    let err = sharedisk::daemon::server::Server::start(config.clone())
        .err()
        .expect("start fails");
    let msg = err.to_string();
    assert!(
        msg.contains("corrupt") && msg.contains(state.to_str().unwrap()),
        "{msg}"
    );
    assert!(msg.contains("--reset-reservations"), "{msg}");
    // The file is left alone for the operator to inspect.
    assert_eq!(
        std::fs::read(&state).unwrap(),
        b"{\"format\": 1, \"image\": "
    );
    config.reset_reservations = true;
    let server = sharedisk::daemon::server::Server::start(config).expect("explicit reset starts");
    assert_eq!(server.arbiter().with(|a| a.registrations().len()), 0);
}

#[test]
fn a_state_file_of_another_image_is_refused() {
    let mut d = TestDaemon::start(&[HOLDER]);
    register(&d, HOLDER, 0xaa);
    d.stop();
    let other = d.dir.path().join("other.img");
    std::fs::write(&other, vec![0u8; 4096]).unwrap();
    let mut config = d.config.clone();
    config.image = other;
    config.size = None;
    config.state = Some(d.config.state_path());
    let msg = sharedisk::daemon::server::Server::start(config)
        .err()
        .expect("start fails")
        .to_string();
    assert!(msg.contains("belongs to image"), "{msg}");
}

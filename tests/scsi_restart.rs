//! Reconnections and daemon crashes through a raw vhost-user frontend that behaves as QEMU does
//! after the backend went away: same guest memory, every ring restarted at its used index, a fresh
//! kick eventfd that starts signalled, and (vhost-user-scsi) the real call eventfd installed only
//! after every ring was started and enabled.

mod common;

use std::time::Duration;

use common::process::DaemonProcess;
use common::scsi_client::*;
use common::vu_frontend::{
    blk_header, wait_out_poll, Desc, StartOrder, VuFrontend, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};

const INTERRUPT_TIMEOUT: Duration = Duration::from_secs(5);

/// The `/dev/sda` hang after a daemon restart: a request that is already available when the
/// ring starts completes before QEMU installs the call eventfd that reaches the guest. Its
/// interrupt must reach that eventfd all the same.
#[test]
fn a_replayed_scsi_request_interrupts_the_call_eventfd_installed_last() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = DaemonProcess::start(dir.path(), &["vm1"], "16M");
    let mut c = ScsiClient::connect(&d.scsi("vm1"));
    c.drain_ua();
    for round in 0..5 {
        // In flight when the daemon dies: available, never kicked.
        wait_out_poll();
        let p = c.submit(&LUN0, &[0, 0, 0, 0, 0, 0], &[], 0, false);
        d.kill(libc::SIGKILL);
        d.respawn();
        c.fe.reconnect(&d.scsi("vm1"), StartOrder::CallLast)
            .expect("reconnect");
        assert!(
            c.fe.wait_interrupt(REQUEST_Q, INTERRUPT_TIMEOUT),
            "round {round}: the replayed request completed without an interrupt on the call \
             eventfd the frontend installed last"
        );
        let r = c
            .finish(&p, INTERRUPT_TIMEOUT)
            .expect("replayed request completed");
        // The new daemon's first command reports its power-on.
        assert_eq!(r.status, CHECK_CONDITION, "round {round}: {r:?}");
        assert_eq!(r.sense, Some((6, 0x29, 0)), "round {round}: {r:?}");
        c.fe.reset();
        c.drain_ua();
    }
    assert!(!d.log().contains("panicked"), "{}", d.log());
}

/// The same on the blk device, whose rings share the code.
#[test]
fn a_replayed_blk_request_interrupts_the_call_eventfd_installed_last() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = DaemonProcess::start(dir.path(), &["vm1"], "16M");
    let mut fe = VuFrontend::connect(&d.blk("vm1"), 1, 128);
    for round in 0..5 {
        let hdr = fe.alloc(16);
        fe.write_mem(hdr, &blk_header(VIRTIO_BLK_T_IN, 8));
        let data = fe.alloc(512);
        let status = fe.alloc(1);
        fe.write_mem(status, &[0xff]);
        let head = fe.submit_without_kick(
            0,
            &[Desc::r(hdr, 16), Desc::w(data, 512), Desc::w(status, 1)],
        );
        d.kill(libc::SIGKILL);
        d.respawn();
        fe.reconnect(&d.blk("vm1"), StartOrder::CallLast)
            .expect("reconnect");
        assert!(
            fe.wait_interrupt(0, INTERRUPT_TIMEOUT),
            "round {round}: no interrupt on the call eventfd installed last"
        );
        let (id, _) = fe.wait_used(0, INTERRUPT_TIMEOUT).expect("completed");
        assert_eq!(id, head);
        assert_eq!(fe.read_mem(status, 1), [0], "round {round}: status");
        fe.reset();
    }
}

/// The soak's `/dev/vda` hang (`e2e_soak`, QEMU 10): the daemon dies after a round's
/// completions reached the used ring and before it interrupted the driver (the `used-written`
/// failpoint). QEMU restarts the ring at that used index, so nothing is replayed and nothing new
/// completes: unless the new daemon interrupts the driver by itself, the driver waits for ever
/// for a request that is done. In both orders of SET_VRING_CALL: before SET_VRING_KICK
/// (vhost-user-blk), and after every ring was started and enabled (vhost-user-scsi).
#[test]
fn a_completion_the_dead_daemon_never_signalled_is_signalled_after_the_restart() {
    for order in [StartOrder::CallFirst, StartOrder::CallLast] {
        let dir = tempfile::tempdir().unwrap();
        let mut d = DaemonProcess::start_env(
            dir.path(),
            &["vm1"],
            "16M",
            &[("SHAREDISK_FAILPOINT", "used-written")],
        );
        let mut fe = VuFrontend::connect(&d.blk("vm1"), 1, 128);
        // Whatever the ring's start signalled.
        let _ = fe.wait_interrupt(0, Duration::from_millis(100));
        let hdr = fe.alloc(16);
        fe.write_mem(hdr, &blk_header(VIRTIO_BLK_T_OUT, 8));
        let data = fe.alloc(512);
        fe.write_mem(data, &[0x5a; 512]);
        let status = fe.alloc(1);
        fe.write_mem(status, &[0xff]);
        let head = fe.submit(
            0,
            &[Desc::r(hdr, 16), Desc::r(data, 512), Desc::w(status, 1)],
        );
        let st = d
            .wait_exit(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{order:?}: the failpoint never fired: {}", d.log()));
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&st),
            Some(libc::SIGKILL),
            "{order:?}"
        );
        assert_eq!(
            fe.used_idx(0),
            1,
            "{order:?}: the completion is in the used ring"
        );
        assert!(
            !fe.wait_interrupt(0, Duration::from_millis(100)),
            "{order:?}: the dead daemon interrupted the driver after all"
        );
        d.env.clear();
        d.respawn();
        fe.reconnect(&d.blk("vm1"), order).expect("reconnect");
        assert!(
            fe.wait_interrupt(0, INTERRUPT_TIMEOUT),
            "{order:?}: the completion the dead daemon wrote was never signalled: the driver \
             would wait for it for ever"
        );
        assert_eq!(fe.try_used(0).map(|(id, _)| id), Some(head), "{order:?}");
        assert_eq!(fe.read_mem(status, 1), [0], "{order:?}: status");
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(fe.used_idx(0), 1, "{order:?}: the request was served again");
        assert!(!d.log().contains("panicked"), "{}", d.log());
    }
}

/// Kills per run of [`a_pr_out_persisted_before_a_crash_is_executed_once`]
/// (`SHAREDISK_REPLAY_KILLS`, default 20).
fn kills() -> u32 {
    std::env::var("SHAREDISK_REPLAY_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

/// The daemon dies right after a PR OUT's change is durable and before its completion is sent
/// (the `prout-persisted` failpoint), every time. The frontend reconnects as QEMU does and so
/// presents the same request again: it must get GOOD, the change must have happened once, and
/// PRgeneration must count exactly one change per command.
#[test]
fn a_pr_out_persisted_before_a_crash_is_executed_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = DaemonProcess::start_env(
        dir.path(),
        &["vm1", "vm2"],
        "16M",
        &[("SHAREDISK_FAILPOINT", "prout-persisted")],
    );
    let mut c = ScsiClient::connect(&d.scsi("vm1"));
    c.drain_ua();
    let g0 = c.generation();
    let key = |i: u32| 0x5d00_0000_0000_0000 + u64::from(i);
    let (mut spurious, mut kills_seen) = (0, 0);
    for i in 0..kills() {
        // REGISTER from the previous key to the next one: run twice, the second answers
        // RESERVATION CONFLICT (its RESERVATION KEY is no longer registered).
        let old = if i == 0 { 0 } else { key(i) };
        let p = c.submit(
            &LUN0,
            &prout_cdb(SA_REGISTER, 0, 24),
            &prout_params(old, key(i + 1), 0),
            0,
            true,
        );
        let st = d
            .wait_exit(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("round {i}: the failpoint never fired: {}", d.log()));
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&st),
            Some(libc::SIGKILL),
            "round {i}"
        );
        kills_seen += 1;
        d.respawn();
        c.fe.reconnect(&d.scsi("vm1"), StartOrder::CallLast)
            .expect("reconnect");
        let r = c
            .finish(&p, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("round {i}: the replayed PR OUT never completed"));
        c.fe.reset();
        // RESERVATION CONFLICT: the replay was executed a second time (its old key was gone).
        // Counted, and the round goes on (the change itself must still be there once), so that
        // the end reports in how many rounds out of all it happened.
        if r.status == RESERVATION_CONFLICT {
            eprintln!("round {i}: the replayed REGISTER was executed twice: {r:?}");
            spurious += 1;
        } else {
            assert!(r.is_good(), "round {i}: replayed REGISTER answered {r:?}");
        }
        c.drain_ua();
        let (generation, keys) = c.read_keys();
        assert_eq!(keys, vec![key(i + 1)], "round {i}: registered keys");
        assert_eq!(
            generation,
            g0 + i + 1,
            "round {i}: PRgeneration counts one change per command"
        );
    }
    eprintln!(
        "exactly-once: {kills_seen} kills between persist and completion, {spurious} spurious \
         conflicts, generation {} -> {}",
        g0,
        g0 + kills()
    );
    assert_eq!(
        spurious, 0,
        "{spurious} of {kills_seen} replayed REGISTERs answered RESERVATION CONFLICT: a PR OUT \
         persisted before the crash was executed again"
    );
    // A genuinely repeated command (a new request) still gets its SPC outcome.
    let r = c.prout(SA_REGISTER, 0, key(kills()), key(kills()), false);
    assert!(r.is_good(), "{r:?}");
    let r = c.prout(SA_REGISTER, 0, 0, 0x77, false);
    assert_eq!(
        r.status, RESERVATION_CONFLICT,
        "a new REGISTER with the wrong key"
    );
    assert!(!d.log().contains("panicked"), "{}", d.log());
}

/// The daemon dies at every step of saving the state file: after writing the temporary copy,
/// after syncing it, after the rename, after syncing the directory. After each restart the state
/// is the old or the new one, never corrupt, never reset, and every acknowledged change is there.
#[test]
fn a_crash_at_any_step_of_a_save_keeps_the_old_or_the_new_state() {
    let steps = [
        ("state-tmp-written", false),
        ("state-tmp-synced", false),
        ("state-renamed", true),
        ("state-dir-synced", true),
    ];
    for (step, new_state) in steps {
        let dir = tempfile::tempdir().unwrap();
        let mut d = DaemonProcess::start(dir.path(), &["vm1", "vm2"], "16M");
        // An acknowledged change before the crash.
        let mut c2 = ScsiClient::connect(&d.scsi("vm2"));
        c2.drain_ua();
        assert!(c2.prout(SA_REGISTER, 0, 0, 0x22, false).is_good());
        drop(c2);
        d.stop();
        d.env = vec![("SHAREDISK_FAILPOINT".into(), step.into())];
        d.respawn();
        let mut c1 = ScsiClient::connect(&d.scsi("vm1"));
        c1.drain_ua();
        let _unacknowledged = c1.submit(
            &LUN0,
            &prout_cdb(SA_REGISTER, 0, 24),
            &prout_params(0, 0x11, 0),
            0,
            true,
        );
        let st = d
            .wait_exit(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{step}: the failpoint never fired: {}", d.log()));
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&st),
            Some(libc::SIGKILL),
            "{step}"
        );
        drop(c1);
        d.env.clear();
        d.respawn();
        let mut c = ScsiClient::connect(&d.scsi("vm2"));
        c.drain_ua();
        let (generation, mut keys) = c.read_keys();
        keys.sort();
        let want: Vec<u64> = if new_state {
            vec![0x11, 0x22]
        } else {
            vec![0x22]
        };
        assert_eq!(keys, want, "{step}: registrations after the restart");
        assert_eq!(generation as usize, want.len(), "{step}: PRgeneration");
        assert!(!d.log().contains("corrupt"), "{step}: {}", d.log());
    }
}

/// Requests that are already available when a ring starts are processed without a kick: a
/// driver that notified before the daemon came back (or, under EVENT_IDX, will not notify
/// again) must not be left waiting.
#[test]
fn requests_available_at_ring_start_need_no_kick() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = DaemonProcess::start(dir.path(), &["vm1"], "16M");
    let mut c = ScsiClient::connect(&d.scsi("vm1"));
    c.drain_ua();
    let mut fe = VuFrontend::connect(&d.blk("vm1"), 1, 128);
    wait_out_poll();
    let p = c.submit(&LUN0, &[0, 0, 0, 0, 0, 0], &[], 0, false);
    let hdr = fe.alloc(16);
    fe.write_mem(hdr, &blk_header(VIRTIO_BLK_T_IN, 0));
    let data = fe.alloc(512);
    let status = fe.alloc(1);
    let head = fe.submit_without_kick(
        0,
        &[Desc::r(hdr, 16), Desc::w(data, 512), Desc::w(status, 1)],
    );
    d.kill(libc::SIGKILL);
    d.respawn();
    c.fe.reconnect_with(&d.scsi("vm1"), StartOrder::CallFirst, false)
        .expect("reconnect scsi");
    fe.reconnect_with(&d.blk("vm1"), StartOrder::CallFirst, false)
        .expect("reconnect blk");
    let r = c
        .finish(&p, INTERRUPT_TIMEOUT)
        .expect("the scsi request waiting in the ring was processed without a kick");
    assert_eq!(r.sense, Some((6, 0x29, 0)), "{r:?}");
    let (id, _) = fe
        .wait_used(0, INTERRUPT_TIMEOUT)
        .expect("the blk request waiting in the ring was processed without a kick");
    assert_eq!(id, head);
    assert_eq!(fe.read_mem(status, 1), [0]);
}

/// A state file that cannot be written, or whose directory cannot be synced after the rename:
/// the PR OUT fails with 04/44/00, and neither the running daemon nor a restarted one has the
/// change: what the guest was told and what the disk holds agree.
#[test]
fn a_change_that_cannot_be_made_durable_is_nowhere() {
    for step in ["state-write-error", "state-dir-sync-error"] {
        let dir = tempfile::tempdir().unwrap();
        let mut d = DaemonProcess::start(dir.path(), &["vm1"], "16M");
        let mut c = ScsiClient::connect(&d.scsi("vm1"));
        c.drain_ua();
        assert!(c.prout(SA_REGISTER, 0, 0, 0x11, false).is_good());
        drop(c);
        d.stop();
        d.env = vec![("SHAREDISK_FAILPOINT".into(), step.into())];
        d.respawn();
        let mut c = ScsiClient::connect(&d.scsi("vm1"));
        c.drain_ua();
        let r = c.prout(SA_REGISTER, 0, 0x11, 0x22, false);
        assert_eq!(r.status, CHECK_CONDITION, "{step}: {r:?}");
        assert_eq!(r.sense, Some((4, 0x44, 0)), "{step}: {r:?}");
        assert_eq!(c.read_keys(), (1, vec![0x11]), "{step}: running daemon");
        drop(c);
        d.stop();
        d.env.clear();
        d.respawn();
        let mut c = ScsiClient::connect(&d.scsi("vm1"));
        c.drain_ua();
        assert_eq!(c.read_keys(), (1, vec![0x11]), "{step}: after a restart");
        assert!(c.prout(SA_REGISTER, 0, 0x11, 0x22, false).is_good());
        assert_eq!(c.read_keys(), (2, vec![0x22]), "{step}: a later change");
    }
}

/// QEMU restarts a ring at the used index it read when the connection went; a completion the
/// old daemon wrote after that read must not make the request run (and complete) a second time.
#[test]
fn a_ring_restarted_behind_its_used_index_serves_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = DaemonProcess::start(dir.path(), &["vm1"], "16M");
    let mut c = ScsiClient::connect(&d.scsi("vm1"));
    c.drain_ua();
    assert!(c.prout(SA_REGISTER, 0, 0, 0x11, false).is_good());
    d.kill(libc::SIGKILL);
    d.respawn();
    c.fe.reconnect_lagging(&d.scsi("vm1"), StartOrder::CallFirst, 1)
        .expect("reconnect");
    // The entry the frontend did not see yet is signalled, on the eventfd installed first too.
    assert!(
        c.fe.wait_interrupt(REQUEST_Q, INTERRUPT_TIMEOUT),
        "no interrupt for the used entry the ring restarted behind"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        c.fe.try_used(REQUEST_Q),
        None,
        "a completed request was served again"
    );
    c.drain_ua();
    assert_eq!(c.read_keys(), (1, vec![0x11]));
}

//! The second connection of a live migration, with two raw frontends on one guest socket of the
//! daemon binary (`transport/virtqueue/handoff.rs`): the destination's connection is accepted
//! while the source's is live, nothing of the destination is admitted before the source's rings
//! stopped (GET_VRING_BASE) or the source went away, the guest stays one initiator (same
//! registration and reservation, no unit attention from the move), and a third connection is
//! refused.

mod common;

use std::time::Duration;

use common::image::image_bytes;
use common::process::DaemonProcess;
use common::scsi_client::*;
use common::vu_frontend::{VuFrontend, TIMEOUT, VIRTIO_BLK_S_OK};

/// How long a parked request is watched for not completing: a request the daemon admitted
/// completes in milliseconds, so a wrong admission shows within this window on any machine.
const PARKED: Duration = Duration::from_millis(500);

/// The destination's write waits while the source holds the device, and is done once `let_go`
/// made the source let go.
fn destination_waits_for_the_source(let_go: impl FnOnce(VuFrontend) -> Option<VuFrontend>) {
    let dir = tempfile::tempdir().unwrap();
    let d = DaemonProcess::start(dir.path(), &["vm1"], "64M");
    let mut source = VuFrontend::connect(&d.blk("vm1"), 1, 128);
    source.blk_write(0, &[0x5a; 4096]);
    let mut dest = VuFrontend::try_connect(&d.blk("vm1"), 1, 128)
        .expect("the destination's connection is accepted while the source's is live");
    let status = dest.queue_blk_write(8, 0xd5);
    assert!(
        dest.wait_used(0, PARKED).is_none(),
        "the destination's write completed while the source still runs"
    );
    assert_eq!(image_bytes(&d.image, 8 * 512, 4096), vec![0u8; 4096]);
    let _source = let_go(source);
    let (_, len) = dest
        .wait_used(0, TIMEOUT)
        .expect("the destination's write is done once the source let go");
    assert_eq!(len, 1);
    assert_eq!(dest.read_mem(status, 1)[0], VIRTIO_BLK_S_OK);
    assert_eq!(image_bytes(&d.image, 8 * 512, 4096), vec![0xd5; 4096]);
    assert_eq!(dest.blk_read(0, 4096), vec![0x5a; 4096]);
    d.assert_no_panic();
}

#[test]
fn destination_is_admitted_only_after_the_source_stopped_its_rings() {
    destination_waits_for_the_source(|mut source| {
        source.stop_rings();
        Some(source)
    });
}

#[test]
fn destination_is_admitted_once_the_source_disconnects() {
    destination_waits_for_the_source(|source| {
        drop(source);
        None
    });
}

#[test]
fn a_third_connection_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = DaemonProcess::start(dir.path(), &["vm1"], "64M");
    let mut a = VuFrontend::connect(&d.blk("vm1"), 1, 128);
    let _b = VuFrontend::connect(&d.blk("vm1"), 1, 128);
    assert!(
        VuFrontend::try_connect(&d.blk("vm1"), 1, 128).is_err(),
        "a third connection is refused"
    );
    a.blk_write(0, &[1; 512]);
    drop(a);
    let mut c = VuFrontend::try_connect(&d.blk("vm1"), 1, 128)
        .expect("a connection once one of the two left");
    drop(_b);
    c.blk_write(0, &[2; 512]);
    d.assert_no_panic();
}

/// The guest holds Write Exclusive through its scsi device and moves to a new connection: the
/// destination sees the same registration and reservation, gets no unit attention, may write;
/// vm2 stays fenced throughout.
#[test]
fn the_guest_stays_one_initiator_across_the_move() {
    let dir = tempfile::tempdir().unwrap();
    let d = DaemonProcess::start(dir.path(), &["vm1", "vm2"], "64M");
    let mut source = ScsiClient::connect(&d.scsi("vm1"));
    let mut other = ScsiClient::connect(&d.scsi("vm2"));
    source.drain_ua();
    other.drain_ua();
    good(&source.prout(SA_REGISTER, 0, 0, 0x11, false), "REGISTER");
    good(&source.prout(SA_RESERVE, 1, 0x11, 0, false), "RESERVE WE");
    let before = (source.read_keys(), source.read_reservation());
    conflict(&other.write16(16, &[7; 512]), "vm2 fenced before the move");

    let mut dest = ScsiClient::connect(&d.scsi("vm1"));
    let pending = dest.submit(&LUN0, &[0, 0, 0, 0, 0, 0], &[], 0, true);
    assert!(
        dest.finish(&pending, PARKED).is_none(),
        "the destination's TUR completed while the source still runs"
    );
    source.fe.stop_rings();
    let r = dest
        .finish(&pending, TIMEOUT)
        .expect("TUR done after the move");
    good(
        &r,
        "the destination's first TUR: no unit attention from the move",
    );
    assert_eq!(
        (dest.read_keys(), dest.read_reservation()),
        before,
        "registration and reservation after the move"
    );
    good(
        &dest.write16(16, &[9; 512]),
        "the holder writes after the move",
    );
    conflict(&other.write16(16, &[7; 512]), "vm2 fenced after the move");
    drop(source);
    good(&dest.tur(), "no unit attention when the source goes away");
    assert_eq!(image_bytes(&d.image, 16 * 512, 512), vec![9; 512]);
    d.assert_no_panic();
}

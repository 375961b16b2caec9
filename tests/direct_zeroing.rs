//! Under `--direct`, zeroing that the file system cannot do with fallocate (the test-hooks
//! failpoint `fallocate-unsupported` answers EOPNOTSUPP, as ext4 without extents does) falls
//! back to writing zeroes, from an aligned buffer that O_DIRECT takes: virtio-blk WRITE_ZEROES
//! (with and without UNMAP), DISCARD and SCSI WRITE SAME of zeroes all succeed and zero the
//! range. Through the daemon binary, a raw vhost-user-blk frontend and the SCSI client.

mod common;

use common::image::{image_bytes, pattern};
use common::process::DaemonProcess;
use common::scsi_client::*;
use common::vu_frontend::*;

const LEN: usize = 256 << 10;

#[test]
fn zeroing_falls_back_to_aligned_writes_under_direct() {
    let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    let d = DaemonProcess::start_full(
        dir.path(),
        &["vm1"],
        "16M",
        &["--direct"],
        &[("SHAREDISK_FAILPOINT", "fallocate-unsupported")],
    );
    let mut fe = VuFrontend::connect(&d.blk("vm1"), 1, 128);
    let mut scsi = ScsiClient::connect(&d.scsi("vm1"));
    scsi.drain_ua();
    let sectors = (LEN / 512) as u32;
    // Four ranges of data, each zeroed by a different command.
    for i in 0..4u64 {
        fe.blk_write(i * (LEN as u64 / 512), &pattern(i as u8 + 1, LEN));
    }
    let seg = |i: u64, flags| dwz_segment(i * u64::from(sectors), sectors, flags);
    let zeroes = VIRTIO_BLK_T_WRITE_ZEROES;
    let unmap = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
    assert_eq!(
        fe.blk_request(zeroes, 0, &seg(0, 0), 0).0,
        VIRTIO_BLK_S_OK,
        "WRITE_ZEROES"
    );
    assert_eq!(
        fe.blk_request(zeroes, 0, &seg(1, unmap), 0).0,
        VIRTIO_BLK_S_OK,
        "WRITE_ZEROES, UNMAP"
    );
    assert_eq!(
        fe.blk_request(VIRTIO_BLK_T_DISCARD, 0, &seg(2, 0), 0).0,
        VIRTIO_BLK_S_OK,
        "DISCARD"
    );
    let cdb = write_same16_cdb(3 * u64::from(sectors), sectors, false, false);
    let r = scsi.cmd(&cdb, &[0; 512], 0);
    assert!(r.is_good(), "WRITE SAME(16) of zeroes: {r:?}");
    let image = image_bytes(&d.image, 0, 4 * LEN);
    assert!(image.iter().all(|&b| b == 0), "every range is zeroed");
    let log = d.log();
    assert!(log.contains("O_DIRECT: memory alignment"), "{log}");
    assert!(
        log.contains("failpoint fallocate-unsupported"),
        "the fallback ran: {log}"
    );
    d.assert_no_panic();
}

//! Unit tests of `target`: COMPARE AND WRITE's field checks, miscompare and write.

use super::*;
use crate::image::FileImage;
use crate::pr::fencing::Reservations;
use crate::pr::{Arbiter, ProutRequest, ResType, ServiceAction};

/// A target on a 1 MiB temporary image with `vm1` and `vm2` configured.
fn target() -> (tempfile::TempDir, Target) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.img");
    let image = FileImage::open(&path, Some(1 << 20), false).unwrap();
    let arbiter = Arbiter::new(["vm1", "vm2"].map(String::from));
    let lun = Lun::new(Box::new(image), Reservations::new(arbiter, None), &path);
    let t = Target::new(Arc::new(lun));
    // Consume the power-on unit attentions.
    for who in ["vm1", "vm2"] {
        t.execute(
            who,
            &[0, 0, 0, 0, 0, 0],
            DataOut::empty(),
            DataIn::empty(),
            None,
        );
    }
    (dir, t)
}

fn caw_cdb(lba: u64, blocks: u8) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = cdb::op::COMPARE_AND_WRITE;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[13] = blocks;
    c
}

fn caw(t: &Target, who: &str, cdb: &[u8], data: &mut [u8]) -> Outcome {
    let bufs = [Buf::from(data)];
    t.execute(who, cdb, DataOut::new(&bufs), DataIn::empty(), None)
}

fn block_at(t: &Target, lba: u64) -> Vec<u8> {
    let mut b = vec![0u8; SECTOR as usize];
    t.lun()
        .image
        .read_at(&[Buf::from(&mut b[..])], lba * SECTOR)
        .unwrap();
    b
}

/// Verify data `old` then write data `new`, one byte value each, for `n` blocks.
fn halves(n: usize, old: u8, new: u8) -> Vec<u8> {
    let len = n * SECTOR as usize;
    let mut d = vec![old; 2 * len];
    d[len..].fill(new);
    d
}

#[test]
fn a_matching_compare_writes_the_second_half() {
    let (_d, t) = target();
    let o = caw(&t, "vm1", &caw_cdb(3, 2), &mut halves(2, 0, 0xab));
    assert_eq!(o, Outcome::good(0));
    assert_eq!(block_at(&t, 3), vec![0xab; 512]);
    assert_eq!(block_at(&t, 4), vec![0xab; 512]);
    assert_eq!(block_at(&t, 5), vec![0; 512], "nothing past the range");
}

#[test]
fn a_miscompare_writes_nothing_and_reports_the_first_differing_byte() {
    let (_d, t) = target();
    let mut d = halves(2, 0, 0xab);
    d[512 + 17] = 1; // the second block's 18th byte differs from the medium
    let o = caw(&t, "vm1", &caw_cdb(3, 2), &mut d);
    assert_eq!(o.status, CHECK_CONDITION);
    let s = o.sense.unwrap();
    assert_eq!((s.key, s.asc, s.ascq), (0x0e, 0x1d, 0x00));
    assert_eq!(s.information, Some(529));
    let fixed = s.to_fixed();
    assert_eq!(fixed[0], 0xf0, "VALID set");
    assert_eq!(&fixed[3..7], &529u32.to_be_bytes());
    assert_eq!(block_at(&t, 3), vec![0; 512]);
    assert_eq!(block_at(&t, 4), vec![0; 512]);
}

#[test]
fn first_difference_is_the_offset_of_the_first_differing_byte() {
    assert_eq!(first_difference(b"abcd", b"abcd"), None);
    assert_eq!(first_difference(b"abcd", b"xbcd"), Some(0));
    assert_eq!(first_difference(b"abcd", b"abcx"), Some(3));
}

#[test]
fn zero_blocks_is_good_and_changes_nothing() {
    let (_d, t) = target();
    let o = caw(&t, "vm1", &caw_cdb(0, 0), &mut []);
    assert_eq!(o, Outcome::good(0));
    // With data, N = 0 is a mismatch (libiscsi's 256 blocks, cut to 8 bits).
    let o = caw(&t, "vm1", &caw_cdb(0, 0), &mut halves(1, 0, 1));
    assert_eq!(o.sense, Some(sense::INVALID_FIELD_IN_CDB));
    assert_eq!(block_at(&t, 0), vec![0; 512]);
}

#[test]
fn field_checks() {
    let (_d, t) = target();
    let bad = |cdb: &[u8], data: &mut [u8]| caw(&t, "vm1", cdb, data).sense;
    let n = MAX_COMPARE_AND_WRITE_BLOCKS as usize + 1;
    assert_eq!(
        bad(&caw_cdb(0, n as u8), &mut halves(n, 0, 1)),
        Some(sense::INVALID_FIELD_IN_CDB),
        "more blocks than MAXIMUM COMPARE AND WRITE LENGTH"
    );
    let mut wrprotect = caw_cdb(0, 1);
    wrprotect[1] = 0x20;
    assert_eq!(
        bad(&wrprotect, &mut halves(1, 0, 1)),
        Some(sense::INVALID_FIELD_IN_CDB),
        "WRPROTECT without protection information"
    );
    assert_eq!(
        bad(&caw_cdb(0, 1), &mut halves(2, 0, 1)),
        Some(sense::INVALID_FIELD_IN_CDB),
        "data-out longer than 2N blocks"
    );
    assert_eq!(
        bad(&caw_cdb(0, 2), &mut halves(1, 0, 1)),
        Some(sense::INVALID_FIELD_IN_CDB),
        "data-out shorter than 2N blocks"
    );
    let last = (1 << 20) / SECTOR;
    assert_eq!(
        bad(&caw_cdb(last - 1, 2), &mut halves(2, 0, 1)),
        Some(sense::LBA_OUT_OF_RANGE)
    );
    assert_eq!(
        bad(&caw_cdb(u64::MAX, 1), &mut halves(1, 0, 1)),
        Some(sense::LBA_OUT_OF_RANGE)
    );
    assert_eq!(block_at(&t, 0), vec![0; 512], "none of them wrote");
}

#[test]
fn a_non_registrant_under_write_exclusive_gets_reservation_conflict() {
    let (_d, t) = target();
    let res = &t.lun().reservations;
    res.prout(
        "vm1",
        &ProutRequest::new(ServiceAction::Register).sa_key(1),
        None,
    );
    let reserve = ProutRequest::new(ServiceAction::Reserve)
        .key(1)
        .typ(ResType::WriteExclusive);
    res.prout("vm1", &reserve, None);
    let o = caw(&t, "vm2", &caw_cdb(0, 1), &mut halves(1, 0, 7));
    assert_eq!(o.status, RESERVATION_CONFLICT);
    assert_eq!(block_at(&t, 0), vec![0; 512]);
    let o = caw(&t, "vm1", &caw_cdb(0, 1), &mut halves(1, 0, 7));
    assert_eq!(o, Outcome::good(0), "the holder may");
}

#[test]
fn block_limits_and_report_opcodes_offer_it() {
    let (_d, t) = target();
    let info = t.info_for(false);
    assert_eq!(
        info.max_compare_and_write_blocks,
        MAX_COMPARE_AND_WRITE_BLOCKS
    );
    let r = cdb::ReportOpcodes {
        rctd: false,
        options: 1,
        opcode: cdb::op::COMPARE_AND_WRITE,
        service_action: 0,
        alloc_len: 64,
    };
    let v = cdb::report_supported_opcodes(info.features(), &r).unwrap();
    assert_eq!(v[1] & 0x07, 0x03, "supported");
    let without = cdb::Features {
        compare_and_write: false,
        ..info.features()
    };
    let v = cdb::report_supported_opcodes(without, &r).unwrap();
    assert_eq!(v[1] & 0x07, 0x01, "not supported");
}

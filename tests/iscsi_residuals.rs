//! iSCSI residuals and Data-Out sequencing through a raw initiator on the daemon binary (RFC 7143
//! §11.4.5.1, §7.1.1): a WRITE whose Expected Data Transfer Length (EDTL) differs from its CDB's
//! transfer, immediate and unsolicited data up to EDTL beyond the transfer, and Data-Out PDUs with
//! a wrong DataSN. Each case checks the SCSI Response (status, sense, the O/U bit and Residual
//! Count), what the R2Ts solicited, and the bytes that landed in the image file. About 2 s.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use common::iscsi_client::{IscsiClient, DATA_OUT, INITIATOR_A};

const BLOCK: usize = 512;
const OVERFLOW: u8 = 0x04;
const UNDERFLOW: u8 = 0x02;

use common::iscsi_portal::PortalDaemon as Setup;

fn setup() -> Setup {
    Setup::start(&[INITIATOR_A], &[], &[])
}

/// A session with `InitialR2T` as given (ImmediateData=Yes, FirstBurstLength 64 KiB).
fn login(s: &Setup, initial_r2t: &str) -> IscsiClient {
    login_isid(s, initial_r2t, [0x80, 0x52, 0x45, 0x53, 0x00, 0x01])
}

/// [`login`] as the I_T nexus of `isid`.
fn login_isid(s: &Setup, initial_r2t: &str, isid: [u8; 6]) -> IscsiClient {
    let security = [
        ("InitiatorName", INITIATOR_A),
        ("TargetName", s.target.as_str()),
        ("SessionType", "Normal"),
        ("AuthMethod", "None"),
    ];
    let operational = [
        ("HeaderDigest", "None"),
        ("DataDigest", "None"),
        ("InitialR2T", initial_r2t),
        ("ImmediateData", "Yes"),
        ("MaxBurstLength", "262144"),
        ("FirstBurstLength", "65536"),
        ("MaxRecvDataSegmentLength", "65536"),
        ("ErrorRecoveryLevel", "0"),
        ("MaxConnections", "1"),
    ];
    let mut c = IscsiClient::login_with(s.addr, &security, &operational, isid).expect("login");
    c.drain_ua();
    c
}

/// What the target answered to one command.
#[derive(Debug)]
struct Response {
    status: u8,
    /// Sense key, ASC, ASCQ.
    sense: Option<(u8, u8, u8)>,
    /// The SCSI Response's O and U bits.
    flags: u8,
    residual: u32,
    /// Bytes the R2Ts asked for, in all.
    solicited: usize,
}

/// Reads until the SCSI Response, answering each R2T from `data` (offsets into it, so that
/// the test sees exactly which bytes were asked for); `None` when the connection closed first.
fn response(c: &mut IscsiClient, data: &[u8]) -> Option<Response> {
    let mut solicited = 0;
    loop {
        let p = c.read()?;
        match p.opcode() {
            0x31 => {
                let (off, len) = (p.u32_at(40) as usize, p.u32_at(44) as usize);
                assert!(off + len <= data.len(), "R2T beyond EDTL: {off}+{len}");
                solicited += len;
                c.answer_r2t(&p, data);
            }
            0x21 => {
                c.exp_stat_sn = p.u32_at(24).wrapping_add(1);
                let sense =
                    (p.data.len() >= 16).then(|| (p.data[4] & 0x0f, p.data[14], p.data[15]));
                return Some(Response {
                    status: p.bhs[3],
                    sense,
                    flags: p.bhs[1] & (OVERFLOW | UNDERFLOW),
                    residual: p.u32_at(44),
                    solicited,
                });
            }
            other => panic!("unexpected PDU {other:#x} while a write was in flight"),
        }
    }
}

/// A WRITE `cdb` with iSCSI EDTL `edtl`: `data` (EDTL bytes) sent as `immediate` bytes of
/// immediate data, the rest on R2T.
fn write(c: &mut IscsiClient, cdb: &[u8], data: &[u8], immediate: usize) -> Option<Response> {
    let b = c.cmd_header(cdb, data.len() as u32, false, true);
    c.send(b, &data[..immediate]);
    response(c, data)
}

fn write10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x2a;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn write6(lba: u32, blocks: u8) -> [u8; 6] {
    let l = lba.to_be_bytes();
    [0x0a, l[1] & 0x1f, l[2], l[3], blocks, 0]
}

fn write12(lba: u32, blocks: u32) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[0] = 0xaa;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[6..10].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn write16(lba: u32, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x8a;
    c[2..10].copy_from_slice(&u64::from(lba).to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// The image's blocks `lba..lba + n`, read from the file.
fn on_image(image: &PathBuf, lba: u32, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n * BLOCK];
    File::open(image)
        .unwrap()
        .read_exact_at(&mut b, u64::from(lba) * BLOCK as u64)
        .unwrap();
    b
}

/// Fills blocks `lba..lba + n` with `byte` through the target, as any initiator would.
fn fill(c: &mut IscsiClient, lba: u32, n: usize, byte: u8) {
    let r = c.write16(u64::from(lba), &vec![byte; n * BLOCK]);
    assert_eq!(r.status, 0, "fill: {r:?}");
}

fn assert_blocks(image: &PathBuf, lba: u32, expect: &[u8], what: &str) {
    let got = on_image(image, lba, expect.len());
    for (i, &b) in expect.iter().enumerate() {
        let block = &got[i * BLOCK..(i + 1) * BLOCK];
        assert!(
            block.iter().all(|&x| x == b),
            "{what}: block {} holds {:?}…, expected all {:?}",
            lba as usize + i,
            &block[..4],
            b as char
        );
    }
}

#[test]
fn a_write_whose_edtl_is_short_by_whole_blocks_writes_only_those_blocks() {
    let s = setup();
    let mut c = login(&s, "Yes");
    let cdbs: [(&str, u32, Vec<u8>, Vec<u8>); 4] = [
        (
            "WRITE(6)",
            10,
            write6(10, 2).to_vec(),
            write6(10, 1).to_vec(),
        ),
        (
            "WRITE(10)",
            20,
            write10(20, 2).to_vec(),
            write10(20, 1).to_vec(),
        ),
        (
            "WRITE(12)",
            30,
            write12(30, 2).to_vec(),
            write12(30, 1).to_vec(),
        ),
        (
            "WRITE(16)",
            40,
            write16(40, 2).to_vec(),
            write16(40, 1).to_vec(),
        ),
    ];
    for (name, lba, two, one) in &cdbs {
        let lba = *lba;
        fill(&mut c, lba, 2, b'a');
        // Two blocks, EDTL one block, sent on R2T: one block lands, one block overflows.
        let r = write(&mut c, two, &[b'b'; BLOCK], 0).expect("a response");
        assert_eq!((r.status, r.sense), (0, None), "{name}: {r:?}");
        assert_eq!((r.flags, r.residual), (OVERFLOW, BLOCK as u32), "{name}");
        assert_eq!(r.solicited, BLOCK, "{name}: R2Ts ask for EDTL only");
        assert_blocks(&s.daemon.image, lba, b"ba", name);
        // EDTL 0: nothing is written, the whole transfer overflows.
        let r = write(&mut c, one, &[], 0).expect("a response");
        assert_eq!((r.status, r.sense), (0, None), "{name} EDTL 0: {r:?}");
        assert_eq!((r.flags, r.residual), (OVERFLOW, BLOCK as u32), "{name}");
        assert_blocks(&s.daemon.image, lba, b"ba", name);
    }
    // The LBA is still checked on a truncated write: past the end is 05/21/00, nothing written.
    let end = (16 << 20) / BLOCK as u32;
    let r = write(&mut c, &write10(end, 2), &[b'c'; BLOCK], BLOCK).expect("a response");
    assert_eq!((r.status, r.sense), (2, Some((5, 0x21, 0))), "{r:?}");
    // So is the CDB's whole range: a write that runs past the end is refused as sent, even
    // when the blocks EDTL covers lie inside (a WRITE(6) cut to none as well).
    fill(&mut c, end - 1, 1, b'a');
    let r = write(&mut c, &write10(end - 1, 2), &[b'c'; BLOCK], BLOCK).expect("a response");
    assert_eq!((r.status, r.sense), (2, Some((5, 0x21, 0))), "{r:?}");
    let r = write(&mut c, &write6(end - 1, 0), &[], 0).expect("a response");
    assert_eq!((r.status, r.sense), (2, Some((5, 0x21, 0))), "{r:?}");
    assert_blocks(&s.daemon.image, end - 1, b"a", "a write past the end");
    s.daemon.assert_no_panic();
}

/// A write cut to no block at all is still a write: an initiator the reservation holder
/// fences gets RESERVATION CONFLICT, not GOOD, whatever its EDTL.
#[test]
fn a_write_cut_to_no_block_is_still_checked_against_the_reservation() {
    let s = setup();
    let mut holder = login_isid(&s, "Yes", [0x80, 0x52, 0x45, 0x53, 0x00, 0x02]);
    let mut other = login(&s, "Yes");
    let r = holder.prout(0, 0, 0, 0x11);
    assert_eq!(r.status, 0, "REGISTER: {r:?}");
    let r = holder.prout(1, 3, 0x11, 0);
    assert_eq!(r.status, 0, "RESERVE Exclusive Access: {r:?}");
    other.drain_ua();
    for (name, cdb) in [
        ("WRITE(6)", write6(80, 1).to_vec()),
        ("WRITE(10)", write10(80, 1).to_vec()),
        ("WRITE(16)", write16(80, 1).to_vec()),
    ] {
        let r = write(&mut other, &cdb, &[], 0).expect("a response");
        assert_eq!(r.status, 0x18, "{name} with EDTL 0: {r:?}");
    }
}

#[test]
fn a_write_whose_edtl_ends_inside_a_block_is_refused_and_writes_nothing() {
    let s = setup();
    let mut c = login(&s, "Yes");
    fill(&mut c, 50, 2, b'a');
    // One block, EDTL 200 (immediate data): 05/0E/03 with the 312 bytes of overflow.
    let r = write(&mut c, &write10(50, 1), &[b'b'; 200], 200).expect("a response");
    assert_eq!((r.status, r.sense), (2, Some((5, 0x0e, 3))), "{r:?}");
    assert_eq!((r.flags, r.residual), (OVERFLOW, 312));
    // Two blocks, EDTL 700: not even the whole first block is written.
    let r = write(&mut c, &write10(50, 2), &[b'b'; 700], 0).expect("a response");
    assert_eq!((r.status, r.sense), (2, Some((5, 0x0e, 3))), "{r:?}");
    assert_eq!((r.flags, r.residual), (OVERFLOW, 2 * BLOCK as u32 - 700));
    assert_blocks(&s.daemon.image, 50, b"aa", "after partial-block EDTLs");
    // The session goes on.
    fill(&mut c, 50, 1, b'c');
    assert_blocks(&s.daemon.image, 50, b"ca", "after a later write");
}

#[test]
fn a_write_whose_edtl_exceeds_its_transfer_writes_the_transfer_only() {
    let s = setup();
    let mut c = login(&s, "Yes");
    fill(&mut c, 60, 2, b'a');
    // On R2T: only the transfer is solicited, the rest of EDTL underflows.
    let r = write(&mut c, &write10(60, 1), &[b'b'; 10000], 0).expect("a response");
    assert_eq!((r.status, r.sense), (0, None), "{r:?}");
    assert_eq!((r.flags, r.residual), (UNDERFLOW, 10000 - BLOCK as u32));
    assert_eq!(r.solicited, BLOCK, "R2Ts ask for the transfer only");
    assert_blocks(&s.daemon.image, 60, b"ba", "EDTL 10000 on R2T");
    // As immediate data, all EDTL sent: the first block lands, the second does not.
    let r = write(&mut c, &write10(61, 1), &[b'c'; 2 * BLOCK], 2 * BLOCK).expect("a response");
    assert_eq!(
        (r.status, r.flags, r.residual),
        (0, UNDERFLOW, BLOCK as u32)
    );
    assert_eq!(r.solicited, 0);
    assert_blocks(&s.daemon.image, 60, b"bc", "EDTL 2 blocks, immediate");
    let r = on_image(&s.daemon.image, 62, 1);
    assert!(r.iter().all(|&b| b == 0), "nothing past the transfer");
}

/// An unsolicited Data-Out (TTT 0xffffffff) of the command `itt` with `data_sn` and `offset`,
/// the F bit as `last`.
fn data_out(c: &mut IscsiClient, itt: u32, data_sn: u32, offset: usize, last: bool, data: &[u8]) {
    let ttt = u32::MAX;
    let mut b = [0u8; 48];
    b[0] = DATA_OUT;
    b[1] = if last { 0x80 } else { 0 };
    b[16..20].copy_from_slice(&itt.to_be_bytes());
    b[20..24].copy_from_slice(&ttt.to_be_bytes());
    b[28..32].copy_from_slice(&c.exp_stat_sn.to_be_bytes());
    b[36..40].copy_from_slice(&data_sn.to_be_bytes());
    b[40..44].copy_from_slice(&(offset as u32).to_be_bytes());
    c.send(b, data);
}

#[test]
fn unsolicited_data_out_past_the_transfer_is_taken_and_not_written() {
    let s = setup();
    let mut c = login(&s, "No");
    fill(&mut c, 70, 4, b'a');
    // WRITE(10) of 1 block, EDTL 4 blocks all as one unsolicited Data-Out (InitialR2T=No).
    let b = c.cmd_header(&write10(70, 1), 4 * BLOCK as u32, false, true);
    let itt = u32::from_be_bytes(b[16..20].try_into().unwrap());
    let mut b = b;
    b[1] &= !0x80; // unsolicited Data-Out follows: no F bit on the command
    c.send(b, &[]);
    data_out(&mut c, itt, 0, 0, true, &[b'b'; 4 * BLOCK]);
    let r = response(&mut c, &[]).expect("a response");
    assert_eq!(
        (r.status, r.flags, r.residual),
        (0, UNDERFLOW, 3 * BLOCK as u32)
    );
    assert_blocks(
        &s.daemon.image,
        70,
        b"baaa",
        "unsolicited past the transfer",
    );
    // Immediate data beyond EDTL is a protocol error: the connection closes, nothing written.
    let b = c.cmd_header(&write10(71, 1), BLOCK as u32, false, true);
    c.send(b, &[b'c'; 2 * BLOCK]);
    assert!(response(&mut c, &[]).is_none(), "the connection closes");
    assert_blocks(&s.daemon.image, 70, b"baaa", "immediate data beyond EDTL");
    s.daemon.assert_no_panic();
}

/// libiscsi's iSCSIdatasn cases, each on a fresh session with InitialR2T=No and ImmediateData
/// unused: Data-Out PDUs of 512 bytes with the DataSNs `sns` (offsets in order) for a WRITE(10)
/// of `sns.len()` blocks. A wrong DataSN is a protocol error at ErrorRecoveryLevel 0 (RFC 7143
/// §7.1.1, §7.2): the connection closes with no SCSI Response, and no block of it is written.
#[test]
fn a_data_out_with_a_wrong_data_sn_closes_the_connection_and_writes_nothing() {
    let s = setup();
    let cases: [(&str, &[u32]); 5] = [
        ("two Data-Outs with DataSN 0", &[0, 0]),
        ("DataSN 27", &[27]),
        ("DataSN -1", &[u32::MAX]),
        ("DataSN 1 then 0", &[1, 0]),
        ("in order (the control)", &[0, 1]),
    ];
    for (i, (name, sns)) in cases.iter().enumerate() {
        let mut c = login(&s, "No");
        let lba = 100 + 2 * i as u32;
        let n = sns.len();
        let b = c.cmd_header(&write10(lba, n as u16), (n * BLOCK) as u32, false, true);
        let itt = u32::from_be_bytes(b[16..20].try_into().unwrap());
        let mut b = b;
        b[1] &= !0x80;
        c.send(b, &[]);
        for (k, &sn) in sns.iter().enumerate() {
            data_out(&mut c, itt, sn, k * BLOCK, k + 1 == n, &[b'x'; BLOCK]);
        }
        let r = response(&mut c, &[]);
        let landed = on_image(&s.daemon.image, lba, n);
        if sns.iter().enumerate().all(|(k, &sn)| sn == k as u32) {
            assert_eq!(r.map(|r| r.status), Some(0), "{name}");
            assert!(landed.iter().all(|&b| b == b'x'), "{name}: written");
        } else {
            assert!(
                r.is_none(),
                "{name}: answered {r:?}, the connection should close"
            );
            assert!(
                landed.iter().all(|&b| b == 0),
                "{name}: a block was written"
            );
        }
    }
    let log = s.daemon.log();
    assert!(log.contains("Data-Out DataSN 27, expected 0"), "{log}");
    s.daemon.assert_no_panic();
}

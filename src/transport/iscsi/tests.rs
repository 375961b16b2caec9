use super::keys::{self, negotiate, Params};
use super::nexus_name;
use super::pdu::{self, read_pdu, write_pdu, Digests, PduError};
use super::workers::{fit_write, solicited};
use crate::scsi::sense;

#[test]
fn crc32c_is_castagnoli() {
    // RFC 3720 appendix B.4: 32 bytes of zeros.
    assert_eq!(pdu::crc32c(&[&[0u8; 32]]), 0x8a91_36aa);
}

#[test]
fn pdu_round_trip_with_digests_and_padding() {
    let d = Digests {
        header: true,
        data: true,
    };
    let mut b = pdu::header(pdu::op::NOP_IN, 0x80, 7);
    pdu::put(&mut b, 24, 99);
    let mut wire = Vec::new();
    write_pdu(&mut wire, b, b"hello", d).unwrap();
    assert_eq!(wire.len(), 48 + 4 + 8 + 4);
    let p = read_pdu(&mut wire.as_slice(), d, 8192).unwrap();
    assert_eq!(p.itt(), 7);
    assert_eq!(p.data, b"hello");
    // A flipped data byte fails the data digest; a flipped header byte the header digest.
    let mut bad = wire.clone();
    bad[52] ^= 1;
    assert!(matches!(
        read_pdu(&mut bad.as_slice(), d, 8192),
        Err(PduError::DataDigest)
    ));
    let mut bad = wire;
    bad[20] ^= 1;
    assert!(matches!(
        read_pdu(&mut bad.as_slice(), d, 8192),
        Err(PduError::HeaderDigest)
    ));
}

#[test]
fn pdu_longer_than_declared_is_refused_before_allocation() {
    let mut b = [0u8; 48];
    b[5] = 0xff; // 16 MiB - 1 announced, nothing sent
    let r = read_pdu(&mut b.as_slice(), Digests::default(), 8192);
    assert!(matches!(r, Err(PduError::TooLong { .. })));
}

#[test]
fn keys_negotiate_the_profile() {
    let mut p = Params::default();
    let a = |k, v, p: &mut Params| negotiate(k, v, p);
    assert_eq!(
        a("HeaderDigest", "None,CRC32C", &mut p).as_deref(),
        Some("None")
    );
    assert_eq!(
        a("DataDigest", "CRC32C,None", &mut p).as_deref(),
        Some("CRC32C")
    );
    assert!(p.digests.data && !p.digests.header);
    assert_eq!(a("MaxConnections", "8", &mut p).as_deref(), Some("1"));
    assert_eq!(a("ErrorRecoveryLevel", "2", &mut p).as_deref(), Some("0"));
    assert_eq!(
        a("MaxBurstLength", "16776192", &mut p).as_deref(),
        Some("1048576")
    );
    assert_eq!(
        a("FirstBurstLength", "262144", &mut p).as_deref(),
        Some("262144")
    );
    assert_eq!(a("InitialR2T", "No", &mut p).as_deref(), Some("No"));
    assert_eq!(
        a("OFMarkInt", "2048~8192", &mut p).as_deref(),
        Some("Reject")
    );
    assert_eq!(
        a("X-com.example.Foo", "1", &mut p).as_deref(),
        Some("NotUnderstood")
    );
    assert_eq!(a("MaxRecvDataSegmentLength", "65536", &mut p), None);
    assert_eq!(p.their_mrdsl, 65536);
    assert_eq!(a("MaxBurstLength", "12", &mut p).as_deref(), Some("Reject"));
    assert!(!p.initial_r2t);
}

#[test]
fn immediate_data_is_and_and_initial_r2t_is_or_of_both_offers() {
    // RFC 7143 §13.10, §13.11: ours are ImmediateData=Yes and InitialR2T=No, so either result
    // is the initiator's offer, whatever was negotiated before (a reconnect starts afresh).
    for (offer, yes) in [("Yes", true), ("No", false)] {
        let mut p = Params::default();
        assert_eq!(
            negotiate("ImmediateData", offer, &mut p).as_deref(),
            Some(offer)
        );
        assert_eq!(p.immediate_data, yes);
        assert_eq!(
            negotiate("InitialR2T", offer, &mut p).as_deref(),
            Some(offer)
        );
        assert_eq!(p.initial_r2t, yes);
    }
}

/// The LU's size in blocks that [`fit_write`] checks a cut write's range against.
const DISK: u64 = 1 << 20;

/// A 16-byte CDB buffer holding `c`.
fn cdb16(c: &[u8]) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..c.len()].copy_from_slice(c);
    b
}

#[test]
fn a_write_short_of_its_transfer_is_cut_to_the_whole_blocks_of_its_edtl() {
    // WRITE(10) of 2 blocks at LBA 7: EDTL 512 runs as 1 block, EDTL 0 as none.
    let w10 = cdb16(&[0x2a, 0, 0, 0, 0, 7, 0, 0, 2, 0]);
    assert_eq!(
        fit_write(&w10, 512, DISK),
        Ok(cdb16(&[0x2a, 0, 0, 0, 0, 7, 0, 0, 1, 0]))
    );
    assert_eq!(
        fit_write(&w10, 0, DISK),
        Ok(cdb16(&[0x2a, 0, 0, 0, 0, 7, 0, 0, 0, 0]))
    );
    // WRITE(12) and WRITE(16): their 32-bit TRANSFER LENGTH.
    let w12 = cdb16(&[0xaa, 0, 0, 0, 0, 7, 0, 0, 1, 0, 0, 0]);
    assert_eq!(
        fit_write(&w12, 1024, DISK),
        Ok(cdb16(&[0xaa, 0, 0, 0, 0, 7, 0, 0, 0, 2, 0, 0]))
    );
    let mut w16 = cdb16(&[0x8a, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
    w16[13] = 3;
    let mut cut = w16;
    cut[13] = 1;
    assert_eq!(fit_write(&w16, 512, DISK), Ok(cut));
    // WRITE(6) of 256 blocks (length 0) at LBA 0x10203: to 255 blocks; to none, as a WRITE(10)
    // of 0 blocks at the same LBA.
    let w6 = cdb16(&[0x0a, 0x01, 0x02, 0x03, 0, 0]);
    assert_eq!(
        fit_write(&w6, 255 * 512, DISK),
        Ok(cdb16(&[0x0a, 1, 2, 3, 255, 0]))
    );
    assert_eq!(
        fit_write(&w6, 0, DISK),
        Ok(cdb16(&[0x2a, 0, 0, 0x01, 0x02, 0x03, 0, 0, 0, 0]))
    );
}

#[test]
fn a_write_edtl_inside_a_block_is_refused_and_others_run_as_sent() {
    let w10 = cdb16(&[0x2a, 0, 0, 0, 0, 7, 0, 0, 2, 0]);
    for edtl in [1, 200, 511, 513, 1023] {
        assert_eq!(
            fit_write(&w10, edtl, DISK),
            Err(sense::INVALID_FIELD_IN_COMMAND_IU)
        );
    }
    // The transfer or more (underflow): as sent.
    assert_eq!(fit_write(&w10, 1024, DISK), Ok(w10));
    assert_eq!(fit_write(&w10, 10000, DISK), Ok(w10));
    // READs and other commands are not rewritten, whatever their EDTL.
    let r10 = cdb16(&[0x28, 0, 0, 0, 0, 7, 0, 0, 2, 0]);
    assert_eq!(fit_write(&r10, 200, DISK), Ok(r10));
    let prout = cdb16(&[0x5f, 0, 0, 0, 0, 0, 0, 0, 24, 0]);
    assert_eq!(fit_write(&prout, 0, DISK), Ok(prout));
    // A cut write is checked as sent: its range runs past the LU's end (the blocks EDTL
    // covers lie inside), a WRITE(6) cut to none included; uncut, the SCSI core checks it.
    let last = cdb16(&[0x2a, 0, 0, 0x0f, 0xff, 0xff, 0, 0, 2, 0]);
    for edtl in [0, 512, 700] {
        assert_eq!(
            fit_write(&last, edtl, DISK),
            Err(sense::LBA_OUT_OF_RANGE),
            "{edtl}"
        );
    }
    let w6 = cdb16(&[0x0a, 0x0f, 0xff, 0xff, 0, 0]);
    assert_eq!(fit_write(&w6, 0, DISK), Err(sense::LBA_OUT_OF_RANGE));
    assert_eq!(fit_write(&last, 1024, DISK), Ok(last));
    // A CDB that does not parse runs as sent: the SCSI core answers it.
    let bad = cdb16(&[0x2a, 0xff, 0, 0, 0, 7, 0, 0, 2, 0]);
    assert_eq!(fit_write(&bad, 0, DISK), Ok(bad));
}

#[test]
fn r2ts_solicit_a_writes_transfer_at_most_and_other_commands_edtl() {
    let w10 = cdb16(&[0x2a, 0, 0, 0, 0, 7, 0, 0, 1, 0]);
    assert_eq!(solicited(&w10, 10000), 512);
    assert_eq!(solicited(&w10, 200), 200);
    assert_eq!(solicited(&w10, 0), 0);
    let prout = cdb16(&[0x5f, 0, 0, 0, 0, 0, 0, 0, 24, 0]);
    assert_eq!(solicited(&prout, 24), 24);
    assert_eq!(solicited(&prout, 10000), 10000);
}

#[test]
fn key_text_parsing_refuses_malformed_lists() {
    let ok = keys::parse(b"InitiatorName=iqn.x\0SessionType=Normal\0").unwrap();
    assert_eq!(ok.len(), 2);
    assert!(keys::parse(b"NoEquals\0").is_none());
    let long = format!("{}=1\0", "K".repeat(64));
    assert!(keys::parse(long.as_bytes()).is_none());
    assert!(keys::parse(&[0xff, b'=', b'1', 0]).is_none());
}

#[test]
fn nexus_names_carry_the_isid() {
    let n = nexus_name(
        "IQN.1993-08.org.debian:01:node1",
        [0x80, 0x12, 0x34, 0x56, 0x78, 0x9a],
    );
    assert_eq!(n, "iqn.1993-08.org.debian:01:node1,i,0x80123456789a");
    assert!(!crate::config::valid_guest_name(&n));
}

#[test]
fn serial_arithmetic_wraps() {
    assert!(pdu::sn_lt(0xffff_fffe, 1));
    assert!(!pdu::sn_lt(1, 0xffff_fffe));
    assert!(!pdu::sn_lt(5, 5));
}

/// A target on a 1 MiB temporary image with `vm1` configured, and an `[iscsi]` that admits any
/// initiator under a fixed target name.
fn memory_target() -> (
    tempfile::TempDir,
    std::sync::Arc<crate::scsi::target::Target>,
    crate::config::IscsiConfig,
) {
    use crate::image::FileImage;
    use crate::pr::fencing::Reservations;
    use crate::pr::Arbiter;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.img");
    let image = FileImage::open(&path, Some(1 << 20), false).unwrap();
    let arbiter = Arbiter::new(["vm1".to_string()]);
    let lun = crate::lun::Lun::new(Box::new(image), Reservations::new(arbiter, None), &path);
    let target = std::sync::Arc::new(crate::scsi::target::Target::new(std::sync::Arc::new(lun)));
    let config = crate::config::IscsiConfig {
        listen: vec!["127.0.0.1:3260".parse().unwrap()],
        target: Some("iqn.2026-12.io.sharedisk:t".into()),
        allow_any_initiator: true,
        ..Default::default()
    };
    (dir, target, config)
}

/// A PDU as an initiator sends it (no digests).
fn request(opcode: u8, flags: u8, f: impl Fn(&mut [u8; 48]), data: &[u8]) -> Vec<u8> {
    let mut b = [0u8; 48];
    b[0] = opcode;
    b[1] = flags;
    f(&mut b);
    let mut out = Vec::new();
    write_pdu(&mut out, b, data, Digests::default()).unwrap();
    out
}

/// The PDUs in `out`, as (header, data).
fn responses(mut out: &[u8]) -> Vec<([u8; 48], Vec<u8>)> {
    let mut v = Vec::new();
    while !out.is_empty() {
        let p = read_pdu(&mut out, Digests::default(), 1 << 24).unwrap();
        v.push((p.bhs, p.data));
    }
    v
}

fn login_bytes(initiator: &str, isid_last: u8) -> Vec<u8> {
    let keys = format!(
        "InitiatorName={initiator}\0TargetName=iqn.2026-12.io.sharedisk:t\0AuthMethod=None\0\
         InitialR2T=Yes\0ImmediateData=Yes\0MaxRecvDataSegmentLength=8192\0"
    );
    request(
        0x43,
        0x80 | 3,
        |b| {
            b[8] = 0x80;
            b[13] = isid_last;
            b[16..20].copy_from_slice(&1u32.to_be_bytes());
            b[24..28].copy_from_slice(&1u32.to_be_bytes());
        },
        keys.as_bytes(),
    )
}

#[test]
fn in_memory_login_command_and_logout() {
    let (_d, target, config) = memory_target();
    let mut input = login_bytes("iqn.2026-01.org.example:a", 1);
    // TEST UNIT READY (CmdSN 1): the new nexus's power-on UA; then INQUIRY (CmdSN 2); a command
    // outside the window (CmdSN 99) gets no answer; then a logout.
    input.extend(request(
        0x01,
        0x80,
        |b| {
            b[16..20].copy_from_slice(&2u32.to_be_bytes());
            b[24..28].copy_from_slice(&1u32.to_be_bytes());
        },
        &[],
    ));
    input.extend(request(
        0x01,
        0x80,
        |b| {
            b[16..20].copy_from_slice(&9u32.to_be_bytes());
            b[24..28].copy_from_slice(&99u32.to_be_bytes());
        },
        &[],
    ));
    input.extend(request(
        0x01,
        0xc0,
        |b| {
            b[16..20].copy_from_slice(&3u32.to_be_bytes());
            b[20..24].copy_from_slice(&36u32.to_be_bytes());
            b[24..28].copy_from_slice(&2u32.to_be_bytes());
            b[32] = 0x12;
            b[36] = 36;
        },
        &[],
    ));
    input.extend(request(
        0x46,
        0x80,
        |b| {
            b[16..20].copy_from_slice(&4u32.to_be_bytes());
            b[24..28].copy_from_slice(&3u32.to_be_bytes());
        },
        &[],
    ));
    let out = super::serve_in_memory(target.clone(), config, &input);
    let r = responses(&out);
    let ops: Vec<u8> = r.iter().map(|(b, _)| b[0] & 0x3f).collect();
    assert_eq!(
        ops,
        vec![0x23, 0x21, 0x25, 0x26],
        "login, TUR's response, INQUIRY's Data-In, logout"
    );
    assert_eq!(&r[0].0[36..38], &[0, 0], "login status success");
    assert_ne!(&r[0].0[14..16], &[0, 0], "a TSIH");
    let keys = String::from_utf8_lossy(&r[0].1);
    assert!(keys.contains("TargetPortalGroupTag=1"), "{keys}");
    assert!(keys.contains("MaxRecvDataSegmentLength=262144"), "{keys}");
    assert_eq!(r[1].0[3], 0x02, "CHECK CONDITION");
    assert_eq!(&r[1].1[2 + 12..2 + 14], &[0x29, 0x00], "the power-on UA");
    assert_eq!(r[2].0[1] & 0x81, 0x81, "INQUIRY's status in its Data-In");
    assert_eq!(r[2].1.len(), 36);
    // The session ended with the connection: its unregistered nexus is forgotten.
    let nexus = nexus_name("iqn.2026-01.org.example:a", [0x80, 0, 0, 0, 0, 1]);
    assert!(!target.lun().reservations.with(|a| a.is_known(&nexus)));
}

#[test]
fn in_memory_refusals() {
    let (_d, target, mut config) = memory_target();
    config.allow_any_initiator = false;
    config.initiators = vec!["iqn.2026-01.org.example:a".into()];
    let out = super::serve_in_memory(
        target.clone(),
        config.clone(),
        &login_bytes("iqn.2026-01.org.example:b", 1),
    );
    let r = responses(&out);
    assert_eq!(r.len(), 1);
    assert_eq!(&r[0].0[36..38], &[0x02, 0x02], "authorization failure");
    // A login PDU with 9000 bytes of keys: refused before it is read (8 KiB during login).
    let big = request(0x43, 0x80 | 3, |_| {}, &vec![b'a'; 9000]);
    assert!(super::serve_in_memory(target, config, &big).is_empty());
}

#[test]
fn chap_response_is_rfc_1994_md5() {
    use super::chap::{decode_binary, encode_hex, response};
    // MD5 of 0x01 "secretsecret" 0x0102...: computed independently with `md5sum`.
    let r = response(1, b"secretsecret", &[1, 2, 3, 4]);
    assert_eq!(encode_hex(&r), "0xc071931ccd7c017cb13042b1963a77e4");
    assert_eq!(decode_binary("0x0a0B").unwrap(), vec![0x0a, 0x0b]);
    assert_eq!(decode_binary("0xabc").unwrap(), vec![0x0a, 0xbc]);
    assert_eq!(decode_binary("0bAQID").unwrap(), vec![1, 2, 3]);
    assert_eq!(decode_binary("0bAQI=").unwrap(), vec![1, 2]);
    assert_eq!(decode_binary("0bAQ==").unwrap(), vec![1]);
    for bad in ["", "0x", "0xg1", "12", "0bA", "0b!!!!", "0bAQ==="] {
        assert_eq!(decode_binary(bad), None, "{bad:?}");
    }
}

/// A queued command an ABORT TASK SET marked aborted leaves no trace when its CmdSN then drops
/// it: its ITT, reused by a later command once the TMF answered, is served (the set of aborted
/// ITTs does not grow with every such command either).
#[test]
fn in_memory_aborted_itt_dropped_by_cmd_sn_is_forgotten() {
    let (_d, target, config) = memory_target();
    let cmd = |itt: u32, sn: u32, flags: u8, cdb: &[u8], edtl: u32| {
        let cdb = cdb.to_vec();
        request(
            0x01,
            flags,
            move |b| {
                b[16..20].copy_from_slice(&itt.to_be_bytes());
                b[20..24].copy_from_slice(&edtl.to_be_bytes());
                b[24..28].copy_from_slice(&sn.to_be_bytes());
                b[32..32 + cdb.len()].copy_from_slice(&cdb);
            },
            &[],
        )
    };
    let mut input = login_bytes("iqn.2026-01.org.example:a", 1);
    // WRITE(10) of one block, no immediate data: the target sends an R2T and waits.
    input.extend(cmd(2, 1, 0xa0, &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], 512));
    // A TEST UNIT READY with a CmdSN outside the window waits in the queue meanwhile.
    input.extend(cmd(5, 77, 0x80, &[0; 6], 0));
    // An immediate ABORT TASK SET: the write and the queued command are aborted.
    input.extend(request(
        0x42,
        0x82,
        |b| {
            b[16..20].copy_from_slice(&6u32.to_be_bytes());
            b[20..24].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
            b[24..28].copy_from_slice(&2u32.to_be_bytes());
        },
        &[],
    ));
    // ITT 5 again, CmdSN in order: answered.
    input.extend(cmd(5, 2, 0x80, &[0; 6], 0));
    let out = super::serve_in_memory(target, config, &input);
    let ops: Vec<(u8, u32)> = responses(&out)
        .iter()
        .map(|(b, _)| {
            (
                b[0] & 0x3f,
                u32::from_be_bytes(b[16..20].try_into().unwrap()),
            )
        })
        .collect();
    assert_eq!(
        ops[1..],
        [(0x31, 2), (0x22, 6), (0x21, 5)],
        "R2T, the TMF's response, the reused ITT's response"
    );
}

/// An ABORT TASK SET for a LUN that does not exist, arriving while a write's data is due, does
/// not abort that write (of LUN 0): the write completes with its response, the TMF answers
/// "LUN does not exist".
#[test]
fn in_memory_tmf_for_another_lun_leaves_a_write_collecting_data() {
    let (_d, target, config) = memory_target();
    let mut input = login_bytes("iqn.2026-01.org.example:a", 1);
    input.extend(request(
        0x01,
        0xa0,
        |b| {
            b[16..20].copy_from_slice(&2u32.to_be_bytes());
            b[20..24].copy_from_slice(&512u32.to_be_bytes());
            b[24..28].copy_from_slice(&1u32.to_be_bytes());
            b[32..42].copy_from_slice(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        },
        &[],
    ));
    input.extend(request(
        0x42,
        0x82,
        |b| {
            b[9] = 1; // LUN 1
            b[16..20].copy_from_slice(&6u32.to_be_bytes());
            b[20..24].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
            b[24..28].copy_from_slice(&2u32.to_be_bytes());
        },
        &[],
    ));
    // The write's data, for the R2T's TTT (the first, 1).
    input.extend(request(
        0x05,
        0x80,
        |b| {
            b[16..20].copy_from_slice(&2u32.to_be_bytes());
            b[20..24].copy_from_slice(&1u32.to_be_bytes());
        },
        &[0xab; 512],
    ));
    let out = super::serve_in_memory(target, config, &input);
    let r = responses(&out);
    let ops: Vec<(u8, u32, u8)> = r
        .iter()
        .map(|(b, _)| {
            let itt = u32::from_be_bytes(b[16..20].try_into().unwrap());
            (b[0] & 0x3f, itt, if b[0] & 0x3f == 0x22 { b[2] } else { 0 })
        })
        .collect();
    assert_eq!(
        ops[1..],
        [(0x31, 2, 0), (0x21, 2, 0), (0x22, 6, 2)],
        "R2T, the write's response, the TMF's (LUN does not exist)"
    );
}

/// A connection that reads `input` and cannot be written to (the peer reset it).
struct ResetWire<'a>(&'a [u8]);

impl std::io::Read for ResetWire<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl std::io::Write for ResetWire<'_> {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::ConnectionReset.into())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl super::login::Wire for ResetWire<'_> {
    fn set_read_deadline(&mut self, _: Option<std::time::Duration>) -> std::io::Result<()> {
        Ok(())
    }
}

/// A login whose final response cannot be sent (the initiator reset the connection after its
/// last request) leaves no session behind: it would count against maxShares for ever.
#[test]
fn a_login_whose_last_response_fails_leaves_no_session() {
    let (_d, target, config) = memory_target();
    let shared = super::Shared::new(target.clone(), config, Default::default(), 4, 0);
    let input = login_bytes("iqn.2026-01.org.example:a", 1);
    assert!(shared
        .login(&mut ResetWire(&input), "peer", [127, 0, 0, 1].into(), 7)
        .is_none());
    assert!(
        crate::util::lock::lock(&shared.sessions).is_empty(),
        "the session admitted for the failed login stays"
    );
    let nexus = nexus_name("iqn.2026-01.org.example:a", [0x80, 0, 0, 0, 0, 1]);
    assert!(!target.lun().reservations.with(|a| a.is_known(&nexus)));
}

/// A non-immediate ABORT TASK naming a write whose data is due, sent after another command
/// (lower CmdSN, queued meanwhile): the TMF answers, the write ends without a response, the
/// queued command runs, and ExpCmdSN steps over the TMF's CmdSN.
#[test]
fn in_memory_non_immediate_abort_task_behind_a_queued_command() {
    let (_d, target, config) = memory_target();
    let sn = |b: &mut [u8; 48], itt: u32, sn: u32| {
        b[16..20].copy_from_slice(&itt.to_be_bytes());
        b[24..28].copy_from_slice(&sn.to_be_bytes());
    };
    let mut input = login_bytes("iqn.2026-01.org.example:a", 1);
    let write = |b: &mut [u8; 48]| {
        sn(b, 2, 1);
        b[20..24].copy_from_slice(&512u32.to_be_bytes());
        b[32..42].copy_from_slice(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    };
    input.extend(request(0x01, 0xa0, write, &[]));
    input.extend(request(0x01, 0x80, |b| sn(b, 3, 2), &[]));
    let abort = |b: &mut [u8; 48]| {
        sn(b, 6, 3);
        b[20..24].copy_from_slice(&2u32.to_be_bytes());
        b[32..36].copy_from_slice(&1u32.to_be_bytes());
    };
    input.extend(request(0x02, 0x81, abort, &[]));
    // CmdSN 4: admitted once ExpCmdSN stepped over the TMF's 3.
    input.extend(request(0x01, 0x80, |b| sn(b, 7, 4), &[]));
    let out = super::serve_in_memory(target, config, &input);
    let ops: Vec<(u8, u32)> = responses(&out)
        .iter()
        .map(|(b, _)| {
            (
                b[0] & 0x3f,
                u32::from_be_bytes(b[16..20].try_into().unwrap()),
            )
        })
        .collect();
    assert_eq!(
        ops[1..],
        [(0x31, 2), (0x22, 6), (0x21, 3), (0x21, 7)],
        "R2T, the TMF's response, the queued command's, the next command's"
    );
}

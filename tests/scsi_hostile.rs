//! The vhost-user-scsi device against a hostile driver: malformed chains, headers, CDBs and
//! parameter lists. Every request gets the right answer (or a zero used length), nothing it
//! should not touch changes, the daemon never panics and keeps serving.

mod common;

use common::daemon::{TestDaemon, IMAGE_SIZE};
use common::image::{image_bytes, pattern};
use common::scsi_client::*;
use common::vu_frontend::{Desc, MEM_BASE, MEM_SIZE, TIMEOUT};

const NUM_BLOCKS: u64 = IMAGE_SIZE / 512;
/// A pattern at GUARD_LBA..+GUARD_BLOCKS that hostile requests aim at and must not change.
const GUARD_LBA: u64 = 4096;
const GUARD_BLOCKS: u32 = 16;
const SCRATCH_LBA: u64 = 100_000;

const PARAM_LIST_LENGTH: SenseTriple = (0x05, 0x1a, 0x00);
const INVALID_FIELD_PARAM: SenseTriple = (0x05, 0x26, 0x00);
const LBA_OUT_OF_RANGE: SenseTriple = (0x05, 0x21, 0x00);
const INVALID_FIELD_CDB: SenseTriple = (0x05, 0x24, 0x00);

// ---- helpers ----

fn setup() -> (TestDaemon, ScsiClient) {
    common::panics::watch();
    let d = TestDaemon::start(&["vm1"]);
    let mut c = ScsiClient::connect(&d.scsi("vm1"));
    c.drain_ua();
    let r = c.write16(GUARD_LBA, &pattern(7, GUARD_BLOCKS as usize * 512));
    assert!(r.is_good(), "{r:?}");
    (d, c)
}

fn read_image(d: &TestDaemon, lba: u64, len: usize) -> Vec<u8> {
    image_bytes(d.image(), lba * 512, len)
}

/// A TUR plus a WRITE/READ round trip works, the guard is intact, no daemon thread panicked.
#[track_caller]
fn assert_serving(d: &TestDaemon, c: &mut ScsiClient, seed: u8) {
    let r = c.tur();
    assert!(r.is_good(), "TUR after a hostile request: {r:?}");
    let data = pattern(seed, 4096);
    assert!(c.write16(SCRATCH_LBA, &data).is_good());
    let r = c.read16(SCRATCH_LBA, 8);
    assert!(r.is_good());
    assert_eq!(r.data, data);
    assert_eq!(
        read_image(d, GUARD_LBA, GUARD_BLOCKS as usize * 512),
        pattern(7, GUARD_BLOCKS as usize * 512),
        "guard area changed"
    );
    common::panics::assert_none();
}

/// Submits `descs` on the request queue; returns the used length.
fn used_len(c: &mut ScsiClient, queue: usize, descs: &[Desc]) -> u32 {
    let head = c.fe.submit(queue, descs);
    let (id, len) = c.fe.wait_used(queue, TIMEOUT).expect("chain not completed");
    assert_eq!(id, head);
    len
}

fn header(c: &mut ScsiClient, cdb: &[u8]) -> u64 {
    let tag = c.next_tag();
    let h = c.fe.alloc(REQ_HEADER_LEN);
    c.fe.write_mem(h, &req_header(&LUN0, tag, cdb));
    h
}

// ---- chains ----

#[test]
fn a_chain_without_room_for_the_response_completes_with_used_length_0() {
    let (d, mut c) = setup();
    c.fe.reset();
    for room in [0u32, 1, 50, 107] {
        let h = header(&mut c, &write16_cdb(GUARD_LBA, 1));
        let data = c.fe.alloc(512);
        c.fe.write_mem(data, &[0x55; 512]);
        let mut descs = vec![Desc::r(h, REQ_HEADER_LEN as u32), Desc::r(data, 512)];
        if room > 0 {
            let resp = c.fe.alloc(room as usize);
            descs.push(Desc::w(resp, room));
        }
        assert_eq!(
            used_len(&mut c, REQUEST_Q, &descs),
            0,
            "{room} bytes of room"
        );
    }
    c.fe.reset();
    assert_serving(&d, &mut c, 1);
}

#[test]
fn a_chain_of_4_gib_or_more_completes_with_used_length_0() {
    common::panics::watch();
    let d = TestDaemon::start(&["vm1"]);
    let mut c = ScsiClient::connect_queues(&d.scsi("vm1"), 1, 512);
    c.drain_ua();
    // A READ(16) of one block whose data-in is 300 descriptors of 15 MiB, all over the same
    // guest memory: 4.4 GiB, more than a used length can count.
    let h = header(&mut c, &read16_cdb(0, 1));
    let resp = c.fe.alloc(RESP_LEN);
    let big = c.fe.alloc(15 << 20);
    let mut descs = vec![
        Desc::r(h, REQ_HEADER_LEN as u32),
        Desc::w(resp, RESP_LEN as u32),
    ];
    descs.extend((0..300).map(|_| Desc::w(big, 15 << 20)));
    assert_eq!(used_len(&mut c, REQUEST_Q, &descs), 0, "4.4 GiB chain");
    c.fe.reset();
    let r = c.tur();
    assert!(r.is_good(), "{r:?}");
    assert!(c.read16(0, 8).is_good());
    common::panics::assert_none();
}

#[test]
fn a_request_header_shorter_than_51_bytes_is_virtio_scsi_failure() {
    let (d, mut c) = setup();
    for short in [0usize, 1, 8, 19, 50] {
        c.fe.reset();
        let full = req_header(&LUN0, 1, &write16_cdb(GUARD_LBA, 1));
        let h = c.fe.alloc(REQ_HEADER_LEN);
        c.fe.write_mem(h, &full);
        let resp = c.fe.alloc(RESP_LEN);
        c.fe.write_mem(resp, &[0xee; RESP_LEN]);
        let mut descs = Vec::new();
        if short > 0 {
            descs.push(Desc::r(h, short as u32));
        }
        descs.push(Desc::w(resp, RESP_LEN as u32));
        assert_eq!(used_len(&mut c, REQUEST_Q, &descs), RESP_LEN as u32);
        let (response, ..) = parse_resp(&c.fe.read_mem(resp, RESP_LEN));
        assert_eq!(response, VIRTIO_SCSI_S_FAILURE, "{short}-byte header");
    }
    c.fe.reset();
    assert_serving(&d, &mut c, 2);
}

#[test]
fn a_header_split_across_descriptors_is_read_through_the_chain() {
    let (d, mut c) = setup();
    c.fe.reset();
    let data = pattern(33, 4096);
    let full = req_header(&LUN0, 9, &write16_cdb(SCRATCH_LBA + 64, 8));
    let h = c.fe.alloc(REQ_HEADER_LEN);
    c.fe.write_mem(h, &full);
    let out = c.fe.alloc(4096);
    c.fe.write_mem(out, &data);
    let resp = c.fe.alloc(RESP_LEN);
    // Header in three pieces, data-out in two odd pieces, response in two.
    let descs = [
        Desc::r(h, 7),
        Desc::r(h + 7, 20),
        Desc::r(h + 27, 24),
        Desc::r(out, 100),
        Desc::r(out + 100, 3996),
        Desc::w(resp, 10),
        Desc::w(resp + 10, 98),
    ];
    assert_eq!(used_len(&mut c, REQUEST_Q, &descs), RESP_LEN as u32);
    let (response, status, sense, _) = parse_resp(&c.fe.read_mem(resp, RESP_LEN));
    assert_eq!((response, status, sense), (0, GOOD, None));
    c.fe.reset();
    assert_eq!(read_image(&d, SCRATCH_LBA + 64, 4096), data);
    assert_serving(&d, &mut c, 3);
}

#[test]
fn descriptors_outside_guest_memory_complete_with_used_length_0() {
    let (d, mut c) = setup();
    let outside = [
        0x1000u64,
        MEM_BASE - 512,
        MEM_BASE + MEM_SIZE as u64,
        u64::MAX - 4096,
    ];
    for (i, &bad) in outside.iter().enumerate() {
        c.fe.reset();
        let h = header(&mut c, &write16_cdb(GUARD_LBA, 1));
        let data = c.fe.alloc(512);
        c.fe.write_mem(data, &[0x66; 512]);
        let resp = c.fe.alloc(RESP_LEN);
        let cases = [
            vec![Desc::r(bad, 51), Desc::r(data, 512), Desc::w(resp, 108)],
            vec![Desc::r(h, 51), Desc::r(bad, 512), Desc::w(resp, 108)],
            vec![Desc::r(h, 51), Desc::r(data, 512), Desc::w(bad, 108)],
            // The header straddles the end of guest memory.
            vec![
                Desc::r(MEM_BASE + MEM_SIZE as u64 - 20, 51),
                Desc::w(resp, 108),
            ],
        ];
        for (j, descs) in cases.iter().enumerate() {
            assert_eq!(
                used_len(&mut c, REQUEST_Q, descs),
                0,
                "address {i}, case {j}"
            );
        }
        // A READ whose data-in lies outside.
        let h = header(&mut c, &read16_cdb(GUARD_LBA, 1));
        let descs = [Desc::r(h, 51), Desc::w(resp, 108), Desc::w(bad, 512)];
        assert_eq!(
            used_len(&mut c, REQUEST_Q, &descs),
            0,
            "data-in at {bad:#x}"
        );
    }
    c.fe.reset();
    assert_serving(&d, &mut c, 4);
}

// ---- CDBs ----

#[test]
fn garbage_cdbs_for_every_opcode_get_an_answer() {
    let (d, mut c) = setup();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..3 {
        for opcode in 0..=255u8 {
            let mut cdb = [0u8; 32];
            for b in cdb.iter_mut() {
                *b = rnd() as u8;
            }
            cdb[0] = opcode;
            if opcode == 0x93 {
                // WRITE SAME(16) with NDOB writes zeroes without a data-out buffer: legitimate,
                // but it would scribble over the guard.
                cdb[1] &= !0x01;
            }
            let r = c.cmd(&cdb, &[], 4096);
            assert_eq!(r.response, VIRTIO_SCSI_S_OK, "opcode {opcode:#x}: {r:?}");
            assert!(
                matches!(r.status, GOOD | CHECK_CONDITION | RESERVATION_CONFLICT),
                "opcode {opcode:#x}: {r:?}"
            );
            if r.status == CHECK_CONDITION {
                assert!(r.sense.is_some(), "CHECK CONDITION without sense");
            }
        }
        // RESERVE(6) may have been hit; let go so the next round starts the same.
        let _ = c.cmd(&[0x17, 0, 0, 0, 0, 0], &[], 0);
        assert_serving(&d, &mut c, 10 + round);
    }
}

#[test]
fn huge_transfer_lengths_are_refused_without_a_huge_allocation() {
    let (d, mut c) = setup();
    for (lba, blocks) in [(0u64, u32::MAX), (GUARD_LBA, 0x00ff_ffff), (0, 8193)] {
        let r = c.cmd(&read16_cdb(lba, blocks), &[], 4096);
        assert_eq!(r.status, CHECK_CONDITION, "READ {blocks} blocks: {r:?}");
        let s = r.sense.unwrap();
        assert!(
            s == LBA_OUT_OF_RANGE || s == INVALID_FIELD_CDB,
            "READ {blocks} blocks: {s:02x?}"
        );
        assert!(r.data.is_empty());
        let r = c.cmd(&write16_cdb(GUARD_LBA, blocks), &[0x77; 4096], 0);
        assert_eq!(r.status, CHECK_CONDITION, "WRITE {blocks} blocks: {r:?}");
    }
    // Within range but above MAXIMUM TRANSFER LENGTH: 05/24/00.
    check(
        &c.cmd(&read16_cdb(0, 8193), &[], 512),
        INVALID_FIELD_CDB,
        "8193 blocks",
    );
    assert_serving(&d, &mut c, 5);
}

#[test]
fn a_write_with_less_data_out_than_its_transfer_length_writes_nothing() {
    let (d, mut c) = setup();
    // docs/conformance.md: 05/24/00 and nothing written (assert_serving checks the guard area).
    for have in [0usize, 1, 511, 512, 1024, 4095] {
        let r = c.cmd(&write16_cdb(GUARD_LBA, 8), &pattern(99, have), 0);
        check(&r, INVALID_FIELD_CDB, &format!("{have} of 4096 bytes"));
    }
    assert_serving(&d, &mut c, 6);
}

#[test]
fn a_read_into_a_smaller_data_in_buffer_does_not_overflow() {
    let (d, mut c) = setup();
    for room in [1u32, 100, 512, 1000, 4095] {
        c.fe.reset();
        let h = header(&mut c, &read16_cdb(GUARD_LBA, 8));
        let resp = c.fe.alloc(RESP_LEN);
        let data = c.fe.alloc(8192);
        c.fe.write_mem(data, &[0xab; 8192]);
        let descs = [Desc::r(h, 51), Desc::w(resp, 108), Desc::w(data, room)];
        let used = used_len(&mut c, REQUEST_Q, &descs);
        let (response, status, sense, resid) = parse_resp(&c.fe.read_mem(resp, RESP_LEN));
        assert_eq!(response, VIRTIO_SCSI_S_OK);
        // docs/conformance.md: GOOD, the whole blocks that fit, and the residual says what was not used.
        assert_eq!((status, sense), (GOOD, None), "{room}");
        let written = used as usize - RESP_LEN;
        assert_eq!(written, room as usize / 512 * 512, "{room}: whole blocks");
        let mem = c.fe.read_mem(data, 8192);
        assert!(
            mem[room as usize..].iter().all(|&b| b == 0xab),
            "{room}: written past the buffer"
        );
        assert_eq!(
            &mem[..written],
            &pattern(7, written)[..],
            "{room}: data read"
        );
        assert_eq!(resid as usize, room as usize - written, "{room}: residual");
    }
    c.fe.reset();
    assert_serving(&d, &mut c, 7);
}

// ---- parameter lists ----

#[test]
fn pr_out_parameter_list_length_errors() {
    let (d, mut c) = setup();
    let p24 = prout_params(0, 0x1234, 0);
    let cases: Vec<(u32, Vec<u8>)> = vec![
        (0, vec![]),
        (0, p24.to_vec()),
        (23, p24[..23].to_vec()),
        (25, [&p24[..], &[0]].concat()),
        (u32::MAX, p24.to_vec()),
        (u32::MAX, vec![]),
        (24, p24[..10].to_vec()),
        (24, vec![]),
        (0x8000_0000, p24.to_vec()),
    ];
    for (len, data) in cases {
        for sa in [SA_REGISTER, SA_REGISTER_AND_IGNORE, SA_RESERVE, SA_PREEMPT] {
            let r = c.prout_raw(&prout_cdb(sa, 5, len), &data);
            check(
                &r,
                PARAM_LIST_LENGTH,
                &format!("SA {sa} length {len:#x}, {} bytes", data.len()),
            );
        }
    }
    assert_eq!(c.read_keys(), (0, vec![]), "nothing registered");
    assert_serving(&d, &mut c, 8);
}

#[test]
fn register_and_move_with_broken_transport_ids() {
    let (d, mut c) = setup();
    let k = 0x77;
    assert!(c.prout(SA_REGISTER, 0, 0, k, false).is_good());
    assert!(c.prout(SA_RESERVE, 5, k, 0, false).is_good());
    let gen = c.generation();
    let tid = iscsi_tid(&guest_iqn("vm1"));
    let rm = |tid: &[u8], tid_len: u32| {
        let mut p = register_and_move_params(k, 0x88, false, false, tid);
        p[20..24].copy_from_slice(&tid_len.to_be_bytes());
        p
    };
    // TRANSPORTID PARAMETER DATA LENGTH inconsistent with the list: length errors.
    for tid_len in [u32::MAX, u32::MAX - 23, tid.len() as u32 + 4, 0x8000_0000] {
        let p = rm(&tid, tid_len);
        let r = c.prout_raw(&prout_cdb(SA_REGISTER_AND_MOVE, 0, p.len() as u32), &p);
        check(&r, PARAM_LIST_LENGTH, &format!("TID length {tid_len:#x}"));
    }
    // A list shorter than its 24-byte header.
    let p = rm(&tid, tid.len() as u32);
    let r = c.prout_raw(&prout_cdb(SA_REGISTER_AND_MOVE, 0, 20), &p[..20]);
    check(&r, PARAM_LIST_LENGTH, "20-byte R&M list");
    // Announced longer than sent.
    let r = c.prout_raw(&prout_cdb(SA_REGISTER_AND_MOVE, 0, p.len() as u32 + 8), &p);
    check(&r, PARAM_LIST_LENGTH, "R&M list shorter than announced");
    // TransportIDs malformed inside: ADDITIONAL LENGTH beyond it, not a multiple of 4, no NUL,
    // another protocol, empty.
    let mut beyond = tid.clone();
    beyond[2..4].copy_from_slice(&0xfffcu16.to_be_bytes());
    let mut odd = tid.clone();
    odd[3] = odd[3].wrapping_sub(1);
    let mut no_nul = tid.clone();
    for b in no_nul[4..].iter_mut() {
        if *b == 0 {
            *b = b'x';
        }
    }
    let mut fc = tid.clone();
    fc[0] = 0x00;
    for (what, t) in [
        ("beyond", beyond),
        ("odd", odd),
        ("no NUL", no_nul),
        ("FC", fc),
        ("empty", vec![]),
        ("3 bytes", vec![5, 0, 0]),
    ] {
        let p = rm(&t, t.len() as u32);
        let r = c.prout_raw(&prout_cdb(SA_REGISTER_AND_MOVE, 0, p.len() as u32), &p);
        check(&r, INVALID_FIELD_PARAM, what);
    }
    assert_eq!(c.generation(), gen);
    assert_eq!(c.read_reservation().1, Some((k, 5)));
    assert_serving(&d, &mut c, 9);
}

fn unmap_cdb(param_len: u16) -> [u8; 10] {
    let mut cdb = [0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    cdb[7..9].copy_from_slice(&param_len.to_be_bytes());
    cdb
}

fn unmap_list(data_len: u16, bd_len: u16, descs: &[(u64, u32)]) -> Vec<u8> {
    let mut p = vec![0u8; 8];
    p[0..2].copy_from_slice(&data_len.to_be_bytes());
    p[2..4].copy_from_slice(&bd_len.to_be_bytes());
    for &(lba, n) in descs {
        p.extend_from_slice(&lba.to_be_bytes());
        p.extend_from_slice(&n.to_be_bytes());
        p.extend_from_slice(&[0; 4]);
    }
    p
}

#[test]
fn unmap_with_inconsistent_lengths_unmaps_nothing() {
    let (d, mut c) = setup();
    let guard = [(GUARD_LBA, GUARD_BLOCKS)];
    let ok = unmap_list(22, 16, &guard);
    let cases: Vec<(&str, u16, Vec<u8>)> = vec![
        (
            "block descriptors beyond the list",
            24,
            unmap_list(22, 32, &guard),
        ),
        (
            "block descriptor length 0xffff",
            24,
            unmap_list(22, 0xffff, &guard),
        ),
        ("list shorter than its header", 4, ok[..4].to_vec()),
        ("data-out shorter than announced", 24, ok[..12].to_vec()),
    ];
    for (what, len, data) in cases {
        let r = c.cmd(&unmap_cdb(len), &data, 0);
        check(&r, PARAM_LIST_LENGTH, what);
    }
    // PARAMETER LIST LENGTH 24 with no data-out at all is a length error too.
    check(
        &c.cmd(&unmap_cdb(24), &[], 0),
        PARAM_LIST_LENGTH,
        "announced 24, nothing sent",
    );
    // One descriptor out of range: 05/21/00 and the valid one before it is not applied.
    let p = unmap_list(38, 32, &[(GUARD_LBA, GUARD_BLOCKS), (NUM_BLOCKS, 1)]);
    check(
        &c.cmd(&unmap_cdb(p.len() as u16), &p, 0),
        LBA_OUT_OF_RANGE,
        "second descriptor past the end",
    );
    let p = unmap_list(38, 32, &[(GUARD_LBA, GUARD_BLOCKS), (u64::MAX, 2)]);
    check(
        &c.cmd(&unmap_cdb(p.len() as u16), &p, 0),
        LBA_OUT_OF_RANGE,
        "descriptor wrapping around",
    );
    assert_serving(&d, &mut c, 11);
}

#[test]
fn mode_select_with_truncated_parameter_lists() {
    let (d, mut c) = setup();
    let sense_cache = |c: &mut ScsiClient| {
        let r = c.cmd(&[0x1a, 0x08, 0x08, 0, 255, 0], &[], 255);
        assert!(r.is_good(), "{r:?}");
        r.data
    };
    let before = sense_cache(&mut c);
    // Header says an 8-byte block descriptor follows; the list ends first.
    let hdr_bd = [0u8, 0, 0, 8];
    let cases: Vec<(&str, u8, Vec<u8>)> = vec![
        ("2 bytes of a 4-byte header", 2, vec![0, 0]),
        ("block descriptor cut", 8, [&hdr_bd[..], &[0; 4]].concat()),
        ("announced 12, sent 6", 12, [&hdr_bd[..], &[0; 2]].concat()),
    ];
    for (what, len, data) in cases {
        let r = c.cmd(&[0x15, 0x10, 0, 0, len, 0], &data, 0);
        check(&r, PARAM_LIST_LENGTH, what);
    }
    // A caching page header that claims more than the list holds.
    let r = c.cmd(
        &[0x15, 0x10, 0, 0, 8, 0],
        &[0, 0, 0, 0, 0x08, 0x12, 0x04, 0],
        0,
    );
    assert_eq!(r.status, CHECK_CONDITION, "truncated caching page: {r:?}");
    let s = r.sense.unwrap();
    assert!(
        s == PARAM_LIST_LENGTH || s == INVALID_FIELD_PARAM,
        "truncated caching page: {s:02x?}"
    );
    // MODE SELECT(10) with a header cut short.
    let r = c.cmd(&[0x55, 0x10, 0, 0, 0, 0, 0, 0, 6, 0], &[0; 6], 0);
    check(&r, PARAM_LIST_LENGTH, "MODE SELECT(10), 6-byte header");
    assert_eq!(sense_cache(&mut c), before, "nothing changed");
    assert_serving(&d, &mut c, 12);
}

// ---- the control queue ----

#[test]
fn short_or_malformed_control_requests() {
    let (d, mut c) = setup();
    let lun = LUN0;
    let tmf = |subtype: u32| {
        let mut r = [0u8; 24];
        r[4..8].copy_from_slice(&subtype.to_le_bytes());
        r[8..16].copy_from_slice(&lun);
        r
    };
    for (what, req, room) in [
        ("TMF cut to 10 bytes", tmf(5)[..10].to_vec(), 1u32),
        ("TMF cut to 23 bytes", tmf(5)[..23].to_vec(), 1),
        ("4 bytes", tmf(5)[..4].to_vec(), 1),
        (
            "AN query cut to 8 bytes",
            [1u8, 0, 0, 0, 0, 0, 0, 0].to_vec(),
            8,
        ),
        ("unknown type", [9u8; 24].to_vec(), 8),
        ("TMF without room for the response", tmf(5).to_vec(), 0),
    ] {
        c.fe.reset();
        let q = c.fe.alloc(req.len().max(1));
        c.fe.write_mem(q, &req);
        let mut descs = Vec::new();
        if !req.is_empty() {
            descs.push(Desc::r(q, req.len() as u32));
        }
        if room > 0 {
            let w = c.fe.alloc(room as usize);
            descs.push(Desc::w(w, room));
        }
        assert_eq!(used_len(&mut c, CONTROL_Q, &descs), 0, "{what}");
    }
    // Outside guest memory.
    c.fe.reset();
    let w = c.fe.alloc(1);
    assert_eq!(
        used_len(&mut c, CONTROL_Q, &[Desc::r(0x1000, 24), Desc::w(w, 1)]),
        0
    );
    // An AN query is answered with event_actual = 0.
    let q = c.fe.alloc(16);
    c.fe.write_mem(q, &[1, 0, 0, 0, 1, 0, 0x40, 0, 0, 0, 0, 0, 0xff, 0, 0, 0]);
    let w = c.fe.alloc(5);
    c.fe.write_mem(w, &[0xee; 5]);
    assert_eq!(
        used_len(&mut c, CONTROL_Q, &[Desc::r(q, 16), Desc::w(w, 5)]),
        5
    );
    assert_eq!(c.fe.read_mem(w, 5), [0, 0, 0, 0, VIRTIO_SCSI_S_OK]);
    c.fe.reset();
    // None of the malformed LU resets above was carried out: no 29/03 is pending.
    assert_eq!(c.drain_ua(), vec![], "a malformed TMF did something");
    assert_eq!(c.tmf(TMF_LOGICAL_UNIT_RESET, &LUN0), VIRTIO_SCSI_S_OK);
    assert_eq!(
        c.drain_ua(),
        vec![(0x06, 0x29, 0x03)],
        "the well-formed one"
    );
    assert_serving(&d, &mut c, 13);
}

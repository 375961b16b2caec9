//! The vhost-user-blk device against a hostile driver: malformed descriptor chains and requests
//! (virtio 1.2 §2.7, §5.2.6) through a hand-written frontend. Every request must get the right
//! status (or be dropped with a zero used length), nothing outside the request may change, the
//! daemon must never panic and must keep serving.

mod common;

use std::time::Duration;

use common::daemon::{TestDaemon, IMAGE_SIZE};
use common::image::{image_bytes, pattern};
use common::vu_frontend::*;

const QSIZE: u16 = 128;
const CAPACITY: u64 = IMAGE_SIZE / 512;
/// A pattern covers the image's first GUARD_LEN bytes; hostile requests aim inside it, and it
/// must never change.
const GUARD_LEN: usize = 128 << 10;
/// Sector of the scratch area used for the health-check round trip.
const SCRATCH: u64 = 100_000;
const SCRATCH_LEN: usize = 8192;

// ---- helpers ----

/// A daemon with one guest and a connected frontend; the guard pattern is written.
fn setup() -> (TestDaemon, VuFrontend) {
    common::panics::watch();
    let d = TestDaemon::start(&["vm1"]);
    let mut fe = VuFrontend::connect(&d.blk("vm1"), 1, QSIZE);
    assert_eq!(fe.blk_capacity(), CAPACITY);
    fe.blk_write(0, &pattern(7, GUARD_LEN));
    (d, fe)
}

fn read_image(d: &TestDaemon, offset: u64, len: usize) -> Vec<u8> {
    image_bytes(d.image(), offset, len)
}

/// A normal write + read round trip works and the guard area is intact.
fn assert_serving(d: &TestDaemon, fe: &mut VuFrontend, seed: u8) {
    let data = pattern(seed, SCRATCH_LEN);
    fe.blk_write(SCRATCH, &data);
    assert_eq!(fe.blk_read(SCRATCH, SCRATCH_LEN), data);
    assert_eq!(
        read_image(d, 0, GUARD_LEN),
        pattern(7, GUARD_LEN),
        "guard area changed"
    );
    common::panics::assert_none();
}

/// Drops `fe`, connects a new frontend and checks it serves; then checks that the image holds
/// nothing but the guard pattern and the last scratch data.
fn finish(d: &TestDaemon, fe: VuFrontend) {
    drop(fe);
    let mut fe = VuFrontend::connect(&d.blk("vm1"), 1, QSIZE);
    assert_serving(d, &mut fe, 99);
    drop(fe);
    let image = read_image(d, 0, IMAGE_SIZE as usize);
    let scratch = (SCRATCH * 512) as usize..(SCRATCH * 512) as usize + SCRATCH_LEN;
    assert_eq!(&image[..GUARD_LEN], &pattern(7, GUARD_LEN)[..]);
    assert_eq!(&image[scratch.clone()], &pattern(99, SCRATCH_LEN)[..]);
    let stray = image
        .iter()
        .enumerate()
        .find(|&(i, &b)| b != 0 && i >= GUARD_LEN && !scratch.contains(&i));
    assert_eq!(stray, None, "image changed outside the tested ranges");
    common::panics::assert_none();
}

/// Submits `descs` on queue 0 and returns the used length; panics on a timeout or a foreign id.
fn used_len(fe: &mut VuFrontend, descs: &[Desc]) -> u32 {
    let head = fe.submit(0, descs);
    let (id, len) = fe.wait_used(0, TIMEOUT).expect("chain not completed");
    assert_eq!(id, head);
    len
}

/// A header buffer in guest memory.
fn header(fe: &mut VuFrontend, type_: u32, sector: u64) -> u64 {
    let h = fe.alloc(16);
    fe.write_mem(h, &blk_header(type_, sector));
    h
}

/// A status byte preset to 0xff, which no status code is.
fn status(fe: &mut VuFrontend) -> u64 {
    let s = fe.alloc(1);
    fe.write_mem(s, &[0xff]);
    s
}

/// Submits `descs` whose last descriptor is the status byte at `st`; returns (status, used len).
fn request(fe: &mut VuFrontend, descs: &[Desc], st: u64) -> (u8, u32) {
    let len = used_len(fe, descs);
    (fe.read_mem(st, 1)[0], len)
}

fn segments(segs: &[[u8; 16]]) -> Vec<u8> {
    segs.concat()
}

/// Descriptor table entries (index, descriptor) of a hand-made chain.
type RawChain = Vec<(u16, RawDesc)>;

// ---- cases ----

#[test]
fn chain_without_status_descriptor_is_dropped() {
    let (d, mut fe) = setup();
    // Header and data, all device-readable: an OUT with no place for the status.
    let h = header(&mut fe, VIRTIO_BLK_T_OUT, 4);
    let data = fe.alloc(512);
    fe.write_mem(data, &[0xaa; 512]);
    let fake_status = fe.alloc(1);
    fe.write_mem(fake_status, &[0xff]);
    let len = used_len(
        &mut fe,
        &[Desc::r(h, 16), Desc::r(data, 512), Desc::r(fake_status, 1)],
    );
    assert_eq!(len, 0);
    assert_eq!(fe.read_mem(fake_status, 1), [0xff]);
    // A lone header.
    let h = header(&mut fe, VIRTIO_BLK_T_IN, 0);
    assert_eq!(used_len(&mut fe, &[Desc::r(h, 16)]), 0);
    // A lone zero-length writable descriptor after the header: still no status byte.
    let h = header(&mut fe, VIRTIO_BLK_T_IN, 0);
    let st = status(&mut fe);
    assert_eq!(used_len(&mut fe, &[Desc::r(h, 16), Desc::w(st, 0)]), 0);
    assert_eq!(fe.read_mem(st, 1), [0xff]);
    assert_serving(&d, &mut fe, 1);
    finish(&d, fe);
}

#[test]
fn short_header_is_ioerr_and_split_header_works() {
    let (d, mut fe) = setup();
    for short in [0u32, 1, 8, 15] {
        let h = header(&mut fe, VIRTIO_BLK_T_IN, 0);
        let st = status(&mut fe);
        let mut descs = vec![];
        if short > 0 {
            descs.push(Desc::r(h, short));
        }
        descs.push(Desc::w(st, 1));
        assert_eq!(
            request(&mut fe, &descs, st),
            (VIRTIO_BLK_S_IOERR, 1),
            "{short}-byte header"
        );
    }
    // A header split over two descriptors, and the status sharing the data's descriptor, are
    // legal (virtio 1.2 §2.7.4: no framing assumptions).
    let h = header(&mut fe, VIRTIO_BLK_T_IN, 2);
    let buf = fe.alloc(513);
    fe.write_mem(buf + 512, &[0xff]);
    let (s, len) = request(
        &mut fe,
        &[Desc::r(h, 8), Desc::r(h + 8, 8), Desc::w(buf, 513)],
        buf + 512,
    );
    assert_eq!((s, len), (VIRTIO_BLK_S_OK, 513));
    assert_eq!(fe.read_mem(buf, 512), &pattern(7, GUARD_LEN)[1024..1536]);
    assert_serving(&d, &mut fe, 2);
    finish(&d, fe);
}

#[test]
fn descriptors_in_the_wrong_direction() {
    let (d, mut fe) = setup();
    // IN whose data buffer is device-readable.
    let h = header(&mut fe, VIRTIO_BLK_T_IN, 4);
    let data = fe.alloc(512);
    fe.write_mem(data, &[0x55; 512]);
    let st = status(&mut fe);
    let r = request(
        &mut fe,
        &[Desc::r(h, 16), Desc::r(data, 512), Desc::w(st, 1)],
        st,
    );
    assert_eq!(r, (VIRTIO_BLK_S_IOERR, 1), "IN with a readable data buffer");
    assert_eq!(fe.read_mem(data, 512), [0x55; 512]);
    // OUT whose data buffer is device-writable: nothing written to the image nor the buffer.
    let h = header(&mut fe, VIRTIO_BLK_T_OUT, 4);
    let st = status(&mut fe);
    let r = request(
        &mut fe,
        &[Desc::r(h, 16), Desc::w(data, 512), Desc::w(st, 1)],
        st,
    );
    assert_eq!(
        r,
        (VIRTIO_BLK_S_IOERR, 1),
        "OUT with a writable data buffer"
    );
    assert_eq!(fe.read_mem(data, 512), [0x55; 512]);
    // OUT with data on both sides.
    let h = header(&mut fe, VIRTIO_BLK_T_OUT, 4);
    let data2 = fe.alloc(512);
    let st = status(&mut fe);
    let r = request(
        &mut fe,
        &[
            Desc::r(h, 16),
            Desc::r(data, 512),
            Desc::w(data2, 512),
            Desc::w(st, 1),
        ],
        st,
    );
    assert_eq!(
        r,
        (VIRTIO_BLK_S_IOERR, 1),
        "OUT with an extra writable buffer"
    );
    // A readable descriptor after a writable one: the chain is refused.
    let h = header(&mut fe, VIRTIO_BLK_T_OUT, 4);
    let st = status(&mut fe);
    let r = request(
        &mut fe,
        &[
            Desc::r(h, 16),
            Desc::w(data2, 512),
            Desc::r(data, 512),
            Desc::w(st, 1),
        ],
        st,
    );
    assert_eq!(r, (0xff, 0), "readable after writable");
    assert_eq!(fe.read_mem(data2, 512), [0; 512]);
    assert_serving(&d, &mut fe, 3);
    finish(&d, fe);
}

#[test]
fn out_of_range_and_unaligned_data_requests() {
    let (d, mut fe) = setup();
    let overflow = u64::MAX / 512 + 1;
    let cases: &[(&str, u32, u64, usize)] = &[
        ("read at the end", VIRTIO_BLK_T_IN, CAPACITY, 512),
        (
            "read far past the end",
            VIRTIO_BLK_T_IN,
            CAPACITY + 1000,
            512,
        ),
        (
            "read with sector*512 overflowing",
            VIRTIO_BLK_T_IN,
            overflow,
            512,
        ),
        ("read at sector u64::MAX", VIRTIO_BLK_T_IN, u64::MAX, 512),
        ("read crossing the end", VIRTIO_BLK_T_IN, CAPACITY - 1, 1024),
        ("read of 100 bytes", VIRTIO_BLK_T_IN, 4, 100),
        ("read of 513 bytes", VIRTIO_BLK_T_IN, 4, 513),
        ("write at the end", VIRTIO_BLK_T_OUT, CAPACITY, 512),
        (
            "write with sector*512 overflowing",
            VIRTIO_BLK_T_OUT,
            overflow,
            512,
        ),
        (
            "write crossing the end",
            VIRTIO_BLK_T_OUT,
            CAPACITY - 1,
            1024,
        ),
        ("write of 100 bytes", VIRTIO_BLK_T_OUT, 4, 100),
        ("write of 1000 bytes", VIRTIO_BLK_T_OUT, 4, 1000),
    ];
    for &(what, type_, sector, len) in cases {
        let (s, data, used) = if type_ == VIRTIO_BLK_T_IN {
            fe.blk_request_on(0, type_, sector, &[], len)
        } else {
            fe.blk_request_on(0, type_, sector, &vec![0xee; len], 0)
        };
        assert_eq!((s, used), (VIRTIO_BLK_S_IOERR, 1), "{what}");
        assert!(data.iter().all(|&b| b == 0), "{what}: data written");
    }
    // The last sector itself is fine.
    let last = fe.blk_read(CAPACITY - 1, 512);
    assert_eq!(last, [0; 512]);
    assert_serving(&d, &mut fe, 4);
    finish(&d, fe);
}

#[test]
fn malformed_discard_and_write_zeroes() {
    let (d, mut fe) = setup();
    for type_ in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
        let name = if type_ == VIRTIO_BLK_T_DISCARD {
            "DISCARD"
        } else {
            "WRITE_ZEROES"
        };
        let mut check = |what: &str, data: &[u8], in_len: usize, want: u8| {
            let (s, _, used) = fe.blk_request_on(0, type_, 0, data, in_len);
            assert_eq!(s, want, "{name}: {what}");
            assert_eq!(used, 1, "{name}: {what}: used length");
        };
        // Segments all in the guard area: none may be applied.
        let many: Vec<[u8; 16]> = (0..33).map(|i| dwz_segment(i * 8, 8, 0)).collect();
        check("33 segments", &segments(&many), 0, VIRTIO_BLK_S_UNSUPP);
        let too_big = dwz_segment(0, (1 << 21) + 1, 0);
        check("num_sectors > 2^21", &too_big, 0, VIRTIO_BLK_S_IOERR);
        let max_too_big = dwz_segment(0, u32::MAX, 0);
        check("num_sectors u32::MAX", &max_too_big, 0, VIRTIO_BLK_S_IOERR);
        for flags in [2u32, 4, 1 << 31, 3] {
            let seg = dwz_segment(0, 8, flags);
            check(&format!("flags {flags:#x}"), &seg, 0, VIRTIO_BLK_S_UNSUPP);
        }
        if type_ == VIRTIO_BLK_T_DISCARD {
            let seg = dwz_segment(0, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
            check("DISCARD with UNMAP", &seg, 0, VIRTIO_BLK_S_UNSUPP);
        }
        check("20 bytes of segments", &[0u8; 20], 0, VIRTIO_BLK_S_IOERR);
        check(
            "8 bytes of segments",
            &dwz_segment(0, 8, 0)[..8],
            0,
            VIRTIO_BLK_S_IOERR,
        );
        check("no segment", &[], 0, VIRTIO_BLK_S_IOERR);
        check(
            "a device-writable buffer",
            &dwz_segment(0, 8, 0),
            512,
            VIRTIO_BLK_S_IOERR,
        );
        // The first segment is valid, a later one is not: nothing is applied.
        for bad in [
            dwz_segment(CAPACITY, 1, 0),
            dwz_segment(CAPACITY - 1, 2, 0),
            dwz_segment(u64::MAX / 512 + 1, 1, 0),
            dwz_segment(u64::MAX, 1, 0),
        ] {
            let segs = segments(&[dwz_segment(0, 8, 0), dwz_segment(16, 8, 0), bad]);
            check("out-of-range last segment", &segs, 0, VIRTIO_BLK_S_IOERR);
        }
        assert_eq!(
            read_image(&d, 0, GUARD_LEN),
            pattern(7, GUARD_LEN),
            "{name} changed the guard area"
        );
    }
    // A valid WRITE_ZEROES and DISCARD on the scratch area work after all that.
    fe.blk_write(SCRATCH, &pattern(5, SCRATCH_LEN));
    let segs = segments(&[dwz_segment(SCRATCH, 8, 0), dwz_segment(SCRATCH + 8, 8, 1)]);
    let (s, _) = fe.blk_request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &segs, 0);
    assert_eq!(s, VIRTIO_BLK_S_OK);
    assert_eq!(fe.blk_read(SCRATCH, SCRATCH_LEN), vec![0; SCRATCH_LEN]);
    let seg = dwz_segment(SCRATCH, 16, 0);
    let (s, _) = fe.blk_request(VIRTIO_BLK_T_DISCARD, 0, &seg, 0);
    assert_eq!(s, VIRTIO_BLK_S_OK);
    assert_serving(&d, &mut fe, 5);
    finish(&d, fe);
}

#[test]
fn unknown_type_get_id_and_flush() {
    let (d, mut fe) = setup();
    for type_ in [0xffu32, 2, 3, 5, 0x8000_0000, u32::MAX] {
        let (s, data, used) = fe.blk_request_on(0, type_, 0, &[], 512);
        assert_eq!((s, used), (VIRTIO_BLK_S_UNSUPP, 1), "type {type_:#x}");
        assert_eq!(data, [0; 512]);
    }
    let serial = d.server().lun().serial.clone();
    assert_eq!(serial.len(), 20);
    let (s, id, used) = fe.blk_request_on(0, VIRTIO_BLK_T_GET_ID, 0, &[], 20);
    assert_eq!((s, used), (VIRTIO_BLK_S_OK, 21));
    assert_eq!(id, serial.as_bytes());
    // A shorter buffer gets a prefix; a longer one the serial and nothing more.
    let (s, id) = fe.blk_request(VIRTIO_BLK_T_GET_ID, 0, &[], 8);
    assert_eq!(s, VIRTIO_BLK_S_OK);
    assert_eq!(id, &serial.as_bytes()[..8]);
    let (s, id) = fe.blk_request(VIRTIO_BLK_T_GET_ID, 0, &[], 64);
    assert_eq!(s, VIRTIO_BLK_S_OK);
    assert_eq!(&id[..20], serial.as_bytes());
    assert!(id[20..].iter().all(|&b| b == 0));
    let (s, _) = fe.blk_request(VIRTIO_BLK_T_FLUSH, 0, &[], 0);
    assert_eq!(s, VIRTIO_BLK_S_OK);
    assert_serving(&d, &mut fe, 6);
    finish(&d, fe);
}

#[test]
fn descriptors_outside_guest_memory() {
    let (d, mut fe) = setup();
    let end = MEM_BASE + MEM_SIZE as u64;
    let outside: &[(&str, u64, u32)] = &[
        ("address 0", 0, 512),
        ("just below guest memory", MEM_BASE - 512, 512),
        ("straddling the start", MEM_BASE - 256, 512),
        ("at the end", end, 512),
        ("straddling the end", end - 256, 512),
        ("near u64::MAX", u64::MAX - 100, 512),
        ("u64::MAX", u64::MAX, 1),
    ];
    for &(what, addr, len) in outside {
        // The header outside.
        let st = status(&mut fe);
        let r = request(&mut fe, &[Desc::r(addr, len), Desc::w(st, 1)], st);
        assert_eq!(r, (0xff, 0), "header {what}");
        // A data buffer outside, for a read and a write.
        for type_ in [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT] {
            let h = header(&mut fe, type_, 4);
            let st = status(&mut fe);
            let r = request(
                &mut fe,
                &[
                    Desc::r(h, 16),
                    Desc {
                        addr,
                        len,
                        write: type_ == VIRTIO_BLK_T_IN,
                    },
                    Desc::w(st, 1),
                ],
                st,
            );
            assert_eq!(r, (0xff, 0), "type {type_} data {what}");
        }
        // The status outside.
        let h = header(&mut fe, VIRTIO_BLK_T_FLUSH, 0);
        assert_eq!(
            used_len(&mut fe, &[Desc::r(h, 16), Desc::w(addr, len)]),
            0,
            "status {what}"
        );
        fe.reset();
    }
    // A huge length from a valid address.
    let h = header(&mut fe, VIRTIO_BLK_T_IN, 0);
    let st = status(&mut fe);
    let r = request(
        &mut fe,
        &[Desc::r(h, 16), Desc::w(h, u32::MAX), Desc::w(st, 1)],
        st,
    );
    assert_eq!(r, (0xff, 0), "4 GiB data buffer");
    assert_serving(&d, &mut fe, 7);
    finish(&d, fe);
}

#[test]
fn looping_and_dangling_chains_do_not_hang() {
    let (d, mut fe) = setup();
    let h = header(&mut fe, VIRTIO_BLK_T_IN, 0);
    let st = status(&mut fe);
    let d_ = |addr, len, flags, next| RawDesc {
        addr,
        len,
        flags,
        next,
    };
    let n = VRING_DESC_F_NEXT;
    let w = VRING_DESC_F_WRITE;
    let chains: Vec<(&str, RawChain, u16)> = vec![
        ("readable self-loop", vec![(10, d_(h, 16, n, 10))], 10),
        (
            "writable self-loop",
            vec![(20, d_(h, 16, n, 21)), (21, d_(st, 1, n | w, 21))],
            20,
        ),
        (
            "two-descriptor cycle",
            vec![(30, d_(h, 16, n, 31)), (31, d_(st, 1, n | w, 30))],
            30,
        ),
        (
            "next outside the table",
            vec![(40, d_(h, 16, n, QSIZE)), (41, d_(st, 1, w, 0))],
            40,
        ),
        ("next 0xffff", vec![(50, d_(h, 16, n, 0xffff))], 50),
        (
            "indirect table outside memory (INDIRECT not negotiated)",
            vec![(60, d_(0x1000, 64, VRING_DESC_F_INDIRECT, 0))],
            60,
        ),
        (
            "indirect table of length 17",
            vec![(61, d_(h, 17, VRING_DESC_F_INDIRECT, 0))],
            61,
        ),
        (
            "empty indirect table",
            vec![(62, d_(h, 0, VRING_DESC_F_INDIRECT, 0))],
            62,
        ),
    ];
    for (what, descs, head) in chains {
        fe.submit_raw(0, &descs, head);
        // Completed or ignored; either way promptly, and the device keeps serving.
        if let Some((id, _)) = fe.wait_used(0, Duration::from_secs(2)) {
            assert_eq!(id, head, "{what}");
        }
        assert!(kick_consumed(&fe), "{what}: the kick was consumed");
        assert_serving(&d, &mut fe, 8);
    }
    // A self-referencing indirect table: its one descriptor is itself INDIRECT.
    let table = fe.alloc(16);
    let mut entry = [0u8; 16];
    entry[0..8].copy_from_slice(&table.to_le_bytes());
    entry[8..12].copy_from_slice(&16u32.to_le_bytes());
    entry[12..14].copy_from_slice(&VRING_DESC_F_INDIRECT.to_le_bytes());
    fe.write_mem(table, &entry);
    fe.submit_raw(0, &[(70, d_(table, 16, VRING_DESC_F_INDIRECT, 0))], 70);
    if let Some((id, _)) = fe.wait_used(0, Duration::from_secs(2)) {
        assert_eq!(id, 70, "nested indirect table");
    }
    assert!(
        kick_consumed(&fe),
        "nested indirect table: the kick was consumed"
    );
    assert_serving(&d, &mut fe, 9);
    // A head index outside the descriptor table.
    fe.push_avail(0, QSIZE + 3);
    let _ = fe.wait_used(0, Duration::from_secs(2));
    assert!(
        kick_consumed(&fe),
        "head outside the table: the kick was consumed"
    );
    let _ = fe.blk_request_on(0, VIRTIO_BLK_T_FLUSH, 0, &[], 0);
    finish(&d, fe);
}

/// Whether the daemon reads ring 0's kick within 2 s. A queue thread that was busy-polling may
/// complete the request before it reads the kick, which it then does on its next wake-up.
fn kick_consumed(fe: &VuFrontend) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while fe.kick_pending(0) {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

#[test]
fn avail_index_jump_does_not_crash_the_daemon() {
    let (d, mut fe) = setup();
    assert_serving(&d, &mut fe, 10);
    let idx = fe.avail_idx(0);
    fe.set_avail_idx(0, idx.wrapping_add(QSIZE + 5));
    fe.kick(0);
    std::thread::sleep(Duration::from_millis(300));
    // The device may refuse to go on with this ring, but it read the kick and answered nothing.
    assert!(!fe.kick_pending(0), "the kick was consumed");
    assert_eq!(fe.try_used(0), None, "nothing completed on the broken ring");
    common::panics::assert_none();
    drop(fe);
    // A new connection works.
    let mut fe = VuFrontend::connect(&d.blk("vm1"), 1, QSIZE);
    assert_serving(&d, &mut fe, 11);
    // An index going backwards, on a fresh ring.
    fe.set_avail_idx(0, 0xfff0);
    fe.kick(0);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!fe.kick_pending(0), "the kick was consumed");
    assert_eq!(fe.try_used(0), None, "nothing completed on the broken ring");
    common::panics::assert_none();
    finish(&d, fe);
}

#[test]
fn two_queues_and_reconnects() {
    let (d, fe) = setup();
    drop(fe);
    for round in 0..3u8 {
        let mut fe = VuFrontend::connect(&d.blk("vm1"), 2, 256);
        for q in 0..2 {
            let data = pattern(20 + round + q as u8, 4096);
            let sector = SCRATCH + 8 * q as u64;
            let (s, _, _) = fe.blk_request_on(q, VIRTIO_BLK_T_OUT, sector, &data, 0);
            assert_eq!(s, VIRTIO_BLK_S_OK);
            let (s, back, used) = fe.blk_request_on(q, VIRTIO_BLK_T_IN, sector, &[], 4096);
            assert_eq!((s, used), (VIRTIO_BLK_S_OK, 4097));
            assert_eq!(back, data);
        }
    }
    finish(&d, VuFrontend::connect(&d.blk("vm1"), 1, QSIZE));
}

#[test]
fn chains_beyond_seg_max_or_size_max_are_ioerr_and_write_nothing() {
    common::panics::watch();
    let d = TestDaemon::start(&["vm1"]);
    let mut fe = VuFrontend::connect(&d.blk("vm1"), 1, 512);
    fe.blk_write(0, &pattern(7, GUARD_LEN));
    // What the device advertises: seg_max 254, size_max 1 MiB.
    let cfg = fe.get_config(8, 8);
    let size_max = u32::from_le_bytes(cfg[0..4].try_into().unwrap());
    let seg_max = u32::from_le_bytes(cfg[4..8].try_into().unwrap());
    assert_eq!((size_max, seg_max), (1 << 20, 254));
    let buf = fe.alloc(size_max as usize + 512);
    fe.write_mem(buf, &vec![0x66; size_max as usize + 512]);
    let st = status(&mut fe);
    let out = |fe: &mut VuFrontend, segs: &[u32]| {
        let h = header(fe, VIRTIO_BLK_T_OUT, 0);
        let mut descs = vec![Desc::r(h, 16)];
        descs.extend(segs.iter().map(|&len| Desc::r(buf, len)));
        descs.push(Desc::w(st, 1));
        fe.write_mem(st, &[0xff]);
        request(fe, &descs, st)
    };
    // seg_max + 1 segments of 512 bytes; one segment of size_max + 512 bytes.
    let too_many = vec![512; seg_max as usize + 1];
    assert_eq!(
        out(&mut fe, &too_many),
        (VIRTIO_BLK_S_IOERR, 1),
        "seg_max + 1"
    );
    assert_eq!(
        out(&mut fe, &[size_max + 512]),
        (VIRTIO_BLK_S_IOERR, 1),
        "size_max + 512"
    );
    assert_eq!(
        read_image(&d, 0, GUARD_LEN),
        pattern(7, GUARD_LEN),
        "nothing written"
    );
    // At the limits, it is served.
    let at_limit = vec![512; seg_max as usize];
    assert_eq!(out(&mut fe, &at_limit), (VIRTIO_BLK_S_OK, 1), "seg_max");
    assert_eq!(out(&mut fe, &[size_max]), (VIRTIO_BLK_S_OK, 1), "size_max");
    assert_eq!(read_image(&d, 0, 4096), vec![0x66; 4096]);
    common::panics::assert_none();
}

/// A driver that keeps rewriting a data descriptor's length between 512 bytes and size_max +
/// 512 while the device reads the chain: the device walks the chain once, so it either sees the
/// oversized descriptor (IOERR, nothing written) or the small one (512 bytes written), never the
/// oversized one passing the size_max check. Before, the limits were checked on a first walk and
/// the buffers taken from a second one, and writes of size_max + 512 bytes got through.
#[test]
fn a_descriptor_rewritten_while_the_device_reads_the_chain_cannot_pass_size_max() {
    common::panics::watch();
    let d = TestDaemon::start(&["vm1"]);
    let mut fe = VuFrontend::connect(&d.blk("vm1"), 1, QSIZE);
    const SECTOR: u64 = 4096;
    let small = 512u32;
    let big = (1u32 << 20) + 512;
    let h = header(&mut fe, VIRTIO_BLK_T_OUT, SECTOR);
    let buf = fe.alloc(big as usize);
    fe.write_mem(buf, &vec![0x5b; big as usize]);
    let st = status(&mut fe);
    let desc = |addr, len, flags, next| RawDesc {
        addr,
        len,
        flags,
        next,
    };
    fe.write_desc(0, 0, desc(h, 16, 1, 1));
    fe.write_desc(0, 1, desc(buf, small, 1, 2));
    fe.write_desc(0, 2, desc(st, 1, 2, 0));
    // The `len` of descriptor 1, as the driver sees its table.
    // SAFETY: entry 1's `len` (offset 8), inside the table of `size` 16-byte entries.
    let len_ptr = unsafe { fe.ring_handle(0).desc.add(16 + 8) } as usize;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (mut ok, mut ioerr) = (0, 0);
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: an aligned u32 inside the frontend's mapping, which outlives the scope.
            let len = unsafe { &*(len_ptr as *const std::sync::atomic::AtomicU32) };
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                len.store(big, std::sync::atomic::Ordering::Relaxed);
                len.store(small, std::sync::atomic::Ordering::Relaxed);
            }
        });
        let _stop = common::deadline::SetOnDrop(&stop);
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while std::time::Instant::now() < deadline {
            fe.write_mem(st, &[0xff]);
            fe.push_avail(0, 0);
            let (id, _) = fe.wait_used(0, TIMEOUT).expect("chain not completed");
            assert_eq!(id, 0);
            match fe.read_mem(st, 1)[0] {
                VIRTIO_BLK_S_OK => ok += 1,
                VIRTIO_BLK_S_IOERR => ioerr += 1,
                other => panic!("status {other}"),
            }
        }
    });
    eprintln!("{ok} written, {ioerr} refused");
    let beyond = read_image(&d, SECTOR * 512 + 512, big as usize - 512);
    assert!(
        beyond.iter().all(|&b| b == 0),
        "a write of more than size_max reached the image ({ok} OK, {ioerr} IOERR)"
    );
    assert!(
        ok > 0 && ioerr > 0,
        "both lengths were seen: {ok} OK, {ioerr} IOERR"
    );
    common::panics::assert_none();
}

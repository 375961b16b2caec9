//! Unit tests of `pages`.

use super::*;
use crate::scsi::cdb::{self, tests::sample_cdb, Command};
use crate::scsi::sense::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

fn info() -> DiskInfo {
    DiskInfo {
        num_blocks: 0x1_0000_0000 + 5,
        block_size: 512,
        read_only: false,
        write_cache: true,
        serial: "SERIAL-0123456789abcdefXYZ".into(),
        naa: naa_from_serial("SERIAL"),
        unmap: true,
        max_unmap_lbas: 1 << 20,
        max_unmap_descriptors: 4,
        max_transfer_blocks: 4096,
        optimal_transfer_blocks: 128,
        max_write_same_blocks: 1 << 16,
        max_compare_and_write_blocks: 1,
    }
}

fn be32(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes(b[i..i + 4].try_into().unwrap())
}

#[test]
fn standard_inquiry_layout() {
    let v = standard_inquiry();
    assert_eq!(v.len(), 96);
    assert_eq!(&v[..8], &[0x00, 0x00, 0x06, 0x12, 91, 0, 0, 0x02]);
    assert_eq!(&v[8..16], b"SHAREDSK");
    assert_eq!(&v[16..32], b"sharedisk       ");
    assert!(v[32..36].iter().all(|b| b.is_ascii_graphic() || *b == b' '));
    assert_eq!(&v[58..64], &[0x00, 0xa0, 0x04, 0x60, 0x04, 0xc0]);
    assert_eq!(inquiry_no_lun()[0], 0x7f);
    assert_eq!(inquiry(&info(), false, 0).unwrap(), v);
    assert_eq!(inquiry(&info(), false, 0x80), Err(INVALID_FIELD_IN_CDB));
    assert_eq!(inquiry(&info(), true, 0x81), Err(INVALID_FIELD_IN_CDB));
}

#[test]
fn vpd_pages() {
    let i = info();
    for &page in &VPD_PAGES {
        let v = vpd_page(&i, page).unwrap();
        assert_eq!(v[0], 0);
        assert_eq!(v[1], page);
        assert_eq!(
            usize::from(u16::from_be_bytes([v[2], v[3]])),
            v.len() - 4,
            "{page:02x}"
        );
    }
    assert_eq!(
        vpd_page(&i, 0x00).unwrap(),
        [0, 0, 0, 6, 0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]
    );
    let s = vpd_page(&i, 0x80).unwrap();
    assert_eq!(&s[4..], b"SERIAL-0123456789abc");
    let weird = DiskInfo {
        serial: "a\u{e9}\nb".into(),
        ..info()
    };
    assert_eq!(&vpd_page(&weird, 0x80).unwrap()[4..], b"ab");

    let d = vpd_page(&i, 0x83).unwrap();
    assert_eq!(&d[4..8], &[0x01, 0x03, 0x00, 0x08]);
    assert_eq!(&d[8..16], &i.naa.to_be_bytes());
    assert_eq!(i.naa >> 60, 3);
    assert_eq!(&d[16..20], &[0x02, 0x01, 0x00, 28]);
    assert_eq!(&d[20..28], b"SHAREDSK");
    assert_eq!(&d[28..48], b"SERIAL-0123456789abc");
    assert_eq!(&d[48..], &[0x01, 0x14, 0x00, 0x04, 0, 0, 0, 1]);

    let b0 = vpd_page(&i, 0xb0).unwrap();
    assert_eq!(b0.len(), 64);
    assert_eq!(&b0[2..4], &[0x00, 0x3c]);
    assert_eq!(b0[4], 0x01);
    assert_eq!(be32(&b0, 8), 4096);
    assert_eq!(be32(&b0, 12), 128);
    assert_eq!(be32(&b0, 20), 1 << 20);
    assert_eq!(be32(&b0, 24), 4);
    assert_eq!(be32(&b0, 28), 8);
    assert_eq!(u64::from_be_bytes(b0[36..44].try_into().unwrap()), 1 << 16);
    let no = DiskInfo {
        unmap: false,
        ..info()
    };
    let b0 = vpd_page(&no, 0xb0).unwrap();
    assert_eq!(&b0[20..36], &[0; 16]);
    assert_eq!(u64::from_be_bytes(b0[36..44].try_into().unwrap()), 1 << 16);

    let b1 = vpd_page(&i, 0xb1).unwrap();
    assert_eq!((b1.len(), &b1[4..6]), (64, &[0, 1][..]));
    assert_eq!(
        vpd_page(&i, 0xb2).unwrap(),
        [0, 0xb2, 0, 4, 0, 0xe4, 0x02, 0]
    );
    assert_eq!(vpd_page(&no, 0xb2).unwrap(), [0, 0xb2, 0, 4, 0, 0, 0, 0]);
    assert_eq!(vpd_page(&i, 0x86), Err(INVALID_FIELD_IN_CDB));
}

#[test]
fn read_capacity() {
    let i = info();
    assert_eq!(read_capacity_10(&i), [0xff, 0xff, 0xff, 0xff, 0, 0, 2, 0]);
    let small = DiskInfo {
        num_blocks: 2048,
        ..info()
    };
    assert_eq!(read_capacity_10(&small), [0, 0, 0x07, 0xff, 0, 0, 2, 0]);
    let exact = DiskInfo {
        num_blocks: 1 << 32,
        ..info()
    };
    assert_eq!(
        read_capacity_10(&exact),
        [0xff, 0xff, 0xff, 0xff, 0, 0, 2, 0]
    );
    let v = read_capacity_16(&i);
    assert_eq!(v.len(), 32);
    assert_eq!(
        u64::from_be_bytes(v[..8].try_into().unwrap()),
        0x1_0000_0004
    );
    assert_eq!(be32(&v, 8), 512);
    assert_eq!(&v[12..16], &[0, 0, 0xc0, 0]);
    assert!(v[16..].iter().all(|&b| b == 0));
    let v = read_capacity_16(&DiskInfo {
        unmap: false,
        ..info()
    });
    assert_eq!(&v[12..16], &[0, 0, 0, 0]);
}

fn ms(ten: bool, dbd: bool, llbaa: bool, pc: PageControl, page: u8) -> cdb::ModeSense {
    cdb::ModeSense {
        ten,
        dbd,
        llbaa,
        pc,
        page,
        subpage: 0,
        alloc_len: 255,
    }
}

#[test]
fn mode_sense_layout() {
    let i = info();
    let v = mode_sense(&i, &ms(false, false, false, PageControl::Current, 0x3f)).unwrap();
    assert_eq!(usize::from(v[0]), v.len() - 1);
    assert_eq!(&v[1..4], &[0, 0x10, 8]);
    assert_eq!(&v[4..12], &[0xff, 0xff, 0xff, 0xff, 0, 0, 2, 0]);
    assert_eq!(&v[12..15], &[0x08, 0x12, 0x04]);
    assert_eq!(&v[32..34], &[0x0a, 0x0a]);
    assert_eq!(&v[44..46], &[0x1c, 0x0a]);
    assert_eq!(v.len(), 4 + 8 + 20 + 12 + 12);

    let ro = DiskInfo {
        read_only: true,
        write_cache: false,
        ..info()
    };
    let v = mode_sense(&ro, &ms(false, true, false, PageControl::Current, 0x08)).unwrap();
    assert_eq!(v, {
        let mut e = vec![23, 0, 0x90, 0, 0x08, 0x12];
        e.resize(24, 0);
        e
    });

    let v = mode_sense(&i, &ms(true, false, true, PageControl::Current, 0x0a)).unwrap();
    assert_eq!(usize::from(u16::from_be_bytes([v[0], v[1]])), v.len() - 2);
    assert_eq!(&v[2..8], &[0, 0x10, 1, 0, 0, 16]);
    assert_eq!(
        u64::from_be_bytes(v[8..16].try_into().unwrap()),
        i.num_blocks
    );
    assert_eq!(&v[16..24], &[0, 0, 0, 0, 0, 0, 2, 0]);
    assert_eq!(&v[24..], &[0x0a, 0x0a, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0]);

    let v = mode_sense(&i, &ms(true, false, false, PageControl::Current, 0x1c)).unwrap();
    assert_eq!(&v[..8], &[0, 26, 0, 0x10, 0, 0, 0, 8]);
    assert_eq!(v.len(), 28);
    let v = mode_sense(&i, &ms(true, true, true, PageControl::Default, 0x3f)).unwrap();
    assert_eq!(&v[..8], &[0, 50, 0, 0x10, 0, 0, 0, 0]);
    assert_eq!(v.len(), 52);

    let v = mode_sense(&i, &ms(false, true, false, PageControl::Changeable, 0x3f)).unwrap();
    assert_eq!(&v[4..7], &[0x08, 0x12, 0x04]);
    assert!(v[7..24].iter().all(|&b| b == 0));
    assert_eq!(&v[24..26], &[0x0a, 0x0a]);
    assert_eq!(&v[36..38], &[0x1c, 0x0a]);
    assert!(v[26..36].iter().chain(&v[38..]).all(|&b| b == 0));

    assert_eq!(
        mode_sense(&i, &ms(false, false, false, PageControl::Saved, 0x08)),
        Err(SAVING_PARAMETERS_NOT_SUPPORTED)
    );
    assert_eq!(
        mode_sense(&i, &ms(false, false, false, PageControl::Current, 0x19)),
        Err(INVALID_FIELD_IN_CDB)
    );
    let mut m = ms(false, false, false, PageControl::Current, 0x3f);
    m.subpage = 0xff;
    assert!(mode_sense(&i, &m).is_ok());
    m.page = 0x08;
    assert_eq!(mode_sense(&i, &m), Err(INVALID_FIELD_IN_CDB));
}

#[test]
fn mode_select_round_trip_and_toggle() {
    let i = info();
    for ten in [false, true] {
        for (dbd, llbaa) in [(false, false), (true, false), (false, true)] {
            if llbaa && !ten {
                continue;
            }
            let v = mode_sense(&i, &ms(ten, dbd, llbaa, PageControl::Current, 0x3f)).unwrap();
            assert_eq!(
                parse_mode_select(ten, &v, &i),
                Ok(ModeSelectChange { wce: Some(true) })
            );
            // Linux clears WCE in the caching page, with PS set as MODE SENSE might.
            let mut off = if ten { 8 } else { 4 };
            off += if dbd {
                0
            } else if llbaa {
                16
            } else {
                8
            };
            let mut w = v.clone();
            w[off] |= 0x80;
            w[off + 2] &= !0x04;
            assert_eq!(
                parse_mode_select(ten, &w, &i),
                Ok(ModeSelectChange { wce: Some(false) })
            );
            // RCD is not changeable.
            let mut w = v.clone();
            w[off + 2] |= 0x01;
            assert_eq!(
                parse_mode_select(ten, &w, &i),
                Err(INVALID_FIELD_IN_PARAM_LIST)
            );
            // Nor is anything in the control page.
            let mut w = v.clone();
            w[off + 20 + 2] = 0x04;
            assert_eq!(
                parse_mode_select(ten, &w, &i),
                Err(INVALID_FIELD_IN_PARAM_LIST)
            );
            // Any truncation inside a page or header is a length error.
            for cut in 1..v.len() {
                let r = parse_mode_select(ten, &v[..cut], &i);
                let boundary = [off, off + 20, off + 32].contains(&cut);
                if boundary {
                    assert!(r.is_ok(), "cut {cut}");
                } else {
                    assert_eq!(r, Err(PARAM_LIST_LENGTH_ERROR), "ten {ten} cut {cut}");
                }
            }
        }
    }
}

#[test]
fn mode_select_hostile() {
    let i = info();
    let none = Ok(ModeSelectChange { wce: None });
    assert_eq!(parse_mode_select(false, &[], &i), none);
    assert_eq!(parse_mode_select(true, &[], &i), none);
    assert_eq!(parse_mode_select(false, &[0, 0, 0, 0], &i), none);
    assert_eq!(parse_mode_select(true, &[0; 8], &i), none);
    assert_eq!(
        parse_mode_select(true, &[0; 7], &i),
        Err(PARAM_LIST_LENGTH_ERROR)
    );
    // Block descriptor longer than the list, or of a bad length.
    assert_eq!(
        parse_mode_select(false, &[0, 0, 0, 8, 0, 0], &i),
        Err(PARAM_LIST_LENGTH_ERROR)
    );
    assert_eq!(
        parse_mode_select(false, &[0, 0, 0, 255], &i),
        Err(INVALID_FIELD_IN_PARAM_LIST)
    );
    assert_eq!(
        parse_mode_select(true, &[0, 0, 0, 0, 0, 0, 0xff, 0xf0], &i),
        Err(INVALID_FIELD_IN_PARAM_LIST)
    );
    assert_eq!(
        parse_mode_select(true, &[0, 0, 0, 0, 1, 0, 0, 16], &i),
        Err(PARAM_LIST_LENGTH_ERROR)
    );
    assert_eq!(
        parse_mode_select(true, &[0, 0, 0, 0, 2, 0, 0, 0], &i),
        Err(INVALID_FIELD_IN_PARAM_LIST)
    );
    // Medium type.
    assert_eq!(
        parse_mode_select(false, &[0, 1, 0, 0], &i),
        Err(INVALID_FIELD_IN_PARAM_LIST)
    );
    // Block descriptor: keep (0 blocks), same, or different block size.
    let bd = |blocks: u32, bl: u32| {
        let mut v = vec![0, 0, 0, 8];
        v.extend_from_slice(&blocks.to_be_bytes());
        v.extend_from_slice(&bl.to_be_bytes());
        v
    };
    assert_eq!(parse_mode_select(false, &bd(0, 512), &i), none);
    assert_eq!(parse_mode_select(false, &bd(u32::MAX, 512), &i), none);
    assert_eq!(
        parse_mode_select(false, &bd(7, 512), &i),
        Err(INVALID_FIELD_IN_PARAM_LIST)
    );
    assert_eq!(
        parse_mode_select(false, &bd(0, 4096), &i),
        Err(INVALID_FIELD_IN_PARAM_LIST)
    );
    assert_eq!(
        parse_mode_select(false, &bd(0, 512 | 1 << 24), &i),
        Err(INVALID_FIELD_IN_PARAM_LIST)
    );
    // Pages: one stray byte, a length past the end, a wrong length, unknown, subpage format.
    let page = |p: &[u8]| {
        let mut v = vec![0, 0, 0, 0];
        v.extend_from_slice(p);
        parse_mode_select(false, &v, &i)
    };
    assert_eq!(page(&[0x08]), Err(PARAM_LIST_LENGTH_ERROR));
    assert_eq!(page(&[0x08, 0xff, 0x04]), Err(PARAM_LIST_LENGTH_ERROR));
    assert_eq!(page(&[0x08, 0x01, 0x04]), Err(INVALID_FIELD_IN_PARAM_LIST));
    assert_eq!(page(&[0x19, 0x02, 0, 0]), Err(INVALID_FIELD_IN_PARAM_LIST));
    assert_eq!(page(&[0x48, 0x12, 0, 0]), Err(INVALID_FIELD_IN_PARAM_LIST));
    let mut caching = vec![0x08, 0x12];
    caching.resize(20, 0);
    assert_eq!(page(&caching), Ok(ModeSelectChange { wce: Some(false) }));
}

#[test]
fn report_luns_layout() {
    assert_eq!(
        report_luns(0),
        [0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(report_luns(2), report_luns(0));
    assert_eq!(report_luns(1), [0, 0, 0, 0, 0, 0, 0, 0]);
}

fn rsoc(info: &DiskInfo, rctd: bool, options: u8, opcode: u8, sa: u16) -> Result<Vec<u8>, Sense> {
    let r = cdb::ReportOpcodes {
        rctd,
        options,
        opcode,
        service_action: sa,
        alloc_len: 0,
    };
    cdb::report_supported_opcodes(info.features(), &r)
}

#[test]
fn report_opcodes_agrees_with_parse() {
    for unmap in [true, false] {
        let i = DiskInfo { unmap, ..info() };
        for rctd in [false, true] {
            let v = rsoc(&i, rctd, 0, 0, 0).unwrap();
            let step = if rctd { 20 } else { 8 };
            assert_eq!(be32(&v, 0) as usize, v.len() - 4);
            assert_eq!((v.len() - 4) % step, 0);
            let mut listed = Vec::new();
            for d in v[4..].chunks(step) {
                let sa = u16::from_be_bytes([d[2], d[3]]);
                let servactv = d[5] & 1 != 0;
                assert_eq!(d[5] & 2 != 0, rctd);
                let e = cdb::lookup(d[0], sa).unwrap();
                assert_eq!(e.service_action.is_some(), servactv);
                assert_eq!(usize::from(u16::from_be_bytes([d[6], d[7]])), e.usage.len());
                if rctd {
                    assert_eq!(&d[8..10], &[0, 0x0a]);
                }
                // Every advertised command parses.
                assert!(cdb::parse(&sample_cdb(e)).is_ok());
                listed.push((d[0], e.service_action));
            }
            // Every command that parses is advertised (UNMAP only with unmap support).
            for e in cdb::SUPPORTED_OPS {
                let want = e.opcode != cdb::op::UNMAP || unmap;
                assert_eq!(listed.contains(&(e.opcode, e.service_action)), want);
            }
        }
    }
    // Exhaustively: any (opcode, SA) that parses has a table entry that is advertised.
    for opc in 0..=255u8 {
        for sa in 0..32u8 {
            let mut c = [0u8; 32];
            c[0] = opc;
            c[1] = sa;
            if cdb::parse(&c).is_ok() {
                let one = rsoc(&info(), false, 3, opc, sa.into()).unwrap();
                assert_eq!(one[1], 0x03, "{opc:02x}/{sa}");
            }
        }
    }
}

#[test]
fn report_opcodes_one_command() {
    let i = info();
    let v = rsoc(&i, false, 1, 0x28, 0).unwrap();
    assert_eq!(&v[..4], &[0, 0x03, 0, 10]);
    assert_eq!(&v[4..], cdb::lookup(0x28, 0).unwrap().usage);
    let v = rsoc(&i, true, 3, 0x5e, 1).unwrap();
    assert_eq!(&v[..4], &[0, 0x83, 0, 10]);
    assert_eq!(v.len(), 4 + 10 + 12);
    assert_eq!(rsoc(&i, false, 3, 0x93, 0x55).unwrap()[1], 0x03);
    assert_eq!(rsoc(&i, false, 2, 0x5f, 9).unwrap(), [0, 1, 0, 0]);
    assert_eq!(rsoc(&i, true, 1, 0xc1, 0).unwrap(), [0, 1, 0, 0]);
    assert_eq!(
        rsoc(
            &DiskInfo {
                unmap: false,
                ..info()
            },
            false,
            1,
            0x42,
            0
        )
        .unwrap(),
        [0, 1, 0, 0]
    );
    assert_eq!(rsoc(&i, false, 1, 0x9e, 0), Err(INVALID_FIELD_IN_CDB));
    assert_eq!(rsoc(&i, false, 2, 0x28, 0), Err(INVALID_FIELD_IN_CDB));
    assert_eq!(rsoc(&i, false, 5, 0x28, 0), Err(INVALID_FIELD_IN_CDB));
}

#[test]
fn request_sense_formats() {
    assert_eq!(request_sense(None, false), NO_SENSE.to_fixed().to_vec());
    let f = request_sense(Some(POWER_ON_RESET), false);
    assert_eq!(
        (f.len(), f[0], f[2], f[7], f[12], f[13]),
        (18, 0x70, 6, 10, 0x29, 0)
    );
    assert_eq!(
        request_sense(Some(LBA_OUT_OF_RANGE), true),
        [0x72, 5, 0x21, 0, 0, 0, 0, 0]
    );
    assert_eq!(request_sense(None, true), [0x72, 0, 0, 0, 0, 0, 0, 0]);
}

fn unmap_list(descs: &[(u64, u32)]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&((6 + 16 * descs.len()) as u16).to_be_bytes());
    v.extend_from_slice(&((16 * descs.len()) as u16).to_be_bytes());
    v.extend_from_slice(&[0; 4]);
    for &(lba, n) in descs {
        v.extend_from_slice(&lba.to_be_bytes());
        v.extend_from_slice(&n.to_be_bytes());
        v.extend_from_slice(&[0; 4]);
    }
    v
}

#[test]
fn unmap_lists() {
    let i = info();
    assert_eq!(parse_unmap(&[], &i), Ok(vec![]));
    for len in 1..8 {
        assert_eq!(
            parse_unmap(&[0; 8][..len], &i),
            Err(PARAM_LIST_LENGTH_ERROR)
        );
    }
    assert_eq!(parse_unmap(&unmap_list(&[]), &i), Ok(vec![]));
    let l = unmap_list(&[(1, 2), (u64::MAX, 0), (100, 8)]);
    assert_eq!(parse_unmap(&l, &i), Ok(vec![(1, 2), (100, 8)]));
    // Declared descriptors missing from the list.
    assert_eq!(
        parse_unmap(&l[..l.len() - 1], &i),
        Err(PARAM_LIST_LENGTH_ERROR)
    );
    // A partial trailing descriptor is ignored.
    let mut odd = l.clone();
    odd[3] += 5;
    odd.extend_from_slice(&[0xff; 5]);
    assert_eq!(parse_unmap(&odd, &i), Ok(vec![(1, 2), (100, 8)]));
    // Inconsistent UNMAP DATA LENGTH is tolerated.
    let mut dl = l.clone();
    dl[0] = 0xff;
    assert!(parse_unmap(&dl, &i).is_ok());
    let five = unmap_list(&[(0, 1); 5]);
    assert_eq!(parse_unmap(&five, &i), Err(INVALID_FIELD_IN_PARAM_LIST));
    let big = unmap_list(&[(0, 1 << 19), (1 << 19, (1 << 19) + 1)]);
    assert_eq!(parse_unmap(&big, &i), Err(INVALID_FIELD_IN_PARAM_LIST));
    let max = unmap_list(&[(0, u32::MAX); 4]);
    assert_eq!(
        parse_unmap(
            &max,
            &DiskInfo {
                max_unmap_lbas: u32::MAX,
                ..info()
            }
        ),
        Err(INVALID_FIELD_IN_PARAM_LIST)
    );
    assert_eq!(
        parse_unmap(
            &l,
            &DiskInfo {
                unmap: false,
                ..info()
            }
        ),
        Err(INVALID_OPCODE)
    );
}

#[test]
fn ranges() {
    assert_eq!(check_range(0, 10, 10), Ok(()));
    assert_eq!(check_range(9, 1, 10), Ok(()));
    assert_eq!(check_range(9, 0, 10), Ok(()));
    assert_eq!(check_range(10, 0, 10), Err(LBA_OUT_OF_RANGE));
    assert_eq!(check_range(9, 2, 10), Err(LBA_OUT_OF_RANGE));
    assert_eq!(check_range(u64::MAX, 2, u64::MAX), Err(LBA_OUT_OF_RANGE));
    assert_eq!(check_range(0, 0, 0), Err(LBA_OUT_OF_RANGE));
}

/// Random CDBs and parameter lists through every parser and builder: nothing may panic.
#[test]
fn fuzz_no_panic() {
    let mut rng = StdRng::seed_from_u64(0x5ca1_ab1e);
    let infos = [
        info(),
        DiskInfo {
            num_blocks: 0,
            block_size: 0,
            unmap: false,
            serial: String::new(),
            ..info()
        },
        DiskInfo {
            num_blocks: u64::MAX,
            block_size: u32::MAX,
            read_only: true,
            ..info()
        },
    ];
    let ops: Vec<u8> = cdb::SUPPORTED_OPS.iter().map(|e| e.opcode).collect();
    for round in 0..6000 {
        let i = &infos[round % infos.len()];
        let len = rng.gen_range(0..=32);
        let mut c: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        if len > 0 && rng.gen_bool(0.8) {
            c[0] = ops[rng.gen_range(0..ops.len())];
        }
        if len > 1 && rng.gen_bool(0.5) {
            c[1] &= 0x1f;
        }
        if let Ok(cmd) = cdb::parse(&c) {
            let _ = (
                cmd.access(),
                cmd.ua_exempt(),
                cmd.alloc_len(),
                cmd.lba_range(),
            );
            if let Some((lba, n)) = cmd.lba_range() {
                let _ = check_range(lba, n, i.num_blocks);
            }
            match cmd {
                Command::Inquiry {
                    evpd, page_code, ..
                } => {
                    inquiry(i, evpd, page_code).unwrap();
                }
                Command::ModeSense(m) => {
                    let v = mode_sense(i, &m).unwrap();
                    let _ = parse_mode_select(m.ten, &v, i);
                }
                Command::ReportOpcodes(r) => {
                    cdb::report_supported_opcodes(i.features(), &r).unwrap();
                }
                Command::ReportLuns { select_report, .. } => {
                    report_luns(select_report);
                }
                Command::ReadCapacity10 => assert_eq!(read_capacity_10(i).len(), 8),
                Command::ReadCapacity16 { .. } => assert_eq!(read_capacity_16(i).len(), 32),
                Command::RequestSense { desc, .. } => {
                    request_sense(None, desc);
                }
                _ => {}
            }
        }
        let plen = rng.gen_range(0..600);
        let mut params: Vec<u8> = (0..plen).map(|_| rng.gen()).collect();
        if plen >= 8 && rng.gen_bool(0.5) {
            // Plausible headers reach deeper into the parsers.
            params[..8].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
            let bd = rng.gen_range(0..3u8) * 8;
            params[3] = bd;
            params[7] = bd;
            if rng.gen_bool(0.3) {
                // UNMAP: BLOCK DESCRIPTOR DATA LENGTH a multiple of 16.
                let bdl = rng.gen_range(0..40u16) * 16;
                params[2..4].copy_from_slice(&bdl.to_be_bytes());
            }
            if plen > 12 && rng.gen_bool(0.5) {
                params[4] = [0x08, 0x0a, 0x1c][rng.gen_range(0..3)];
            }
        }
        for ten in [false, true] {
            let _ = parse_mode_select(ten, &params, i);
        }
        let _ = parse_unmap(&params, i);
        let _ = vpd_page(i, rng.gen());
        for pc in [
            PageControl::Current,
            PageControl::Changeable,
            PageControl::Default,
            PageControl::Saved,
        ] {
            let m = cdb::ModeSense {
                ten: rng.gen(),
                dbd: rng.gen(),
                llbaa: rng.gen(),
                pc,
                page: rng.gen(),
                subpage: rng.gen(),
                alloc_len: 0,
            };
            let _ = mode_sense(i, &m);
        }
        let r = cdb::ReportOpcodes {
            rctd: rng.gen(),
            options: rng.gen_range(0..8),
            opcode: rng.gen(),
            service_action: rng.gen(),
            alloc_len: 0,
        };
        let _ = cdb::report_supported_opcodes(i.features(), &r);
    }
}

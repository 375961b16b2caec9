//! Unit tests of `cdb`.

use super::*;
use crate::scsi::sense::*;

/// A CDB for `e` that parses: zeros plus whatever fields must be non-zero.
pub(crate) fn sample_cdb(e: &OpInfo) -> [u8; 32] {
    let mut c = [0u8; 32];
    c[0] = e.opcode;
    if let Some(sa) = e.service_action {
        c[1] = sa as u8;
    }
    match e.opcode {
        op::MODE_SENSE_6 | op::MODE_SENSE_10 => c[2] = 0x3f,
        op::WRITE_SAME_10 => c[8] = 1,
        op::WRITE_SAME_16 => c[13] = 1,
        _ => {}
    }
    c
}

fn p(bytes: &[u8]) -> Result<Command, Sense> {
    let mut c = [0u8; 32];
    c[..bytes.len()].copy_from_slice(bytes);
    parse(&c)
}

#[test]
fn table_is_sorted_and_unique() {
    for w in SUPPORTED_OPS.windows(2) {
        let a = (w[0].opcode, w[0].service_action);
        let b = (w[1].opcode, w[1].service_action);
        assert!(a < b, "{a:?} !< {b:?}");
    }
    for e in SUPPORTED_OPS {
        assert_eq!(e.usage[0], e.opcode);
        assert!(matches!(e.usage.len(), 6 | 10 | 12 | 16));
        // Mixed SA / non-SA entries for one opcode would make lookup ambiguous.
        assert_eq!(e.service_action.is_some(), has_service_actions(e.opcode));
    }
}

#[test]
fn every_entry_parses_and_rejects_truncation_and_stray_bits() {
    for e in SUPPORTED_OPS {
        let c = sample_cdb(e);
        let n = e.usage.len();
        assert!(parse(&c).is_ok(), "{:02x}", e.opcode);
        assert!(parse(&c[..n]).is_ok(), "exact length {:02x}", e.opcode);
        for len in 0..n {
            assert_eq!(
                parse(&c[..len]),
                Err(INVALID_FIELD_IN_CDB),
                "{:02x} len {len}",
                e.opcode
            );
        }
        for i in 1..n - 1 {
            for b in 0..8 {
                let m = 1u8 << b;
                if e.usage[i] & m == 0 {
                    let mut x = c;
                    x[i] |= m;
                    assert_eq!(
                        parse(&x),
                        Err(INVALID_FIELD_IN_CDB),
                        "{:02x} byte {i} bit {b}",
                        e.opcode
                    );
                }
            }
        }
        let mut x = c;
        x[n - 1] = CONTROL_NACA;
        assert_eq!(parse(&x), Err(INVALID_FIELD_IN_CDB));
        // Vendor-specific and LINK bits are ignored; bytes past the CDB too.
        x[n - 1] = 0xc3;
        x[n..].fill(0xff);
        assert!(parse(&x).is_ok(), "{:02x}", e.opcode);
    }
}

#[test]
fn unknown_opcodes_and_service_actions() {
    assert_eq!(parse(&[]), Err(INVALID_FIELD_IN_CDB));
    for opc in 0..=255u8 {
        for sa in 0..32u8 {
            let r = p(&[opc, sa]);
            if !opcode_known(opc) {
                assert_eq!(r, Err(INVALID_OPCODE));
                assert_eq!(parse(&[opc]), Err(INVALID_OPCODE));
            } else if has_service_actions(opc) && lookup(opc, sa.into()).is_none() {
                assert_eq!(r, Err(INVALID_FIELD_IN_CDB), "{opc:02x}/{sa:02x}");
            }
        }
    }
    // GET LBA STATUS is SERVICE ACTION IN(16) SA 0x12: not supported.
    assert_eq!(p(&[0x9e, 0x12]), Err(INVALID_FIELD_IN_CDB));
    assert_eq!(p(&[0xa3, 0x0a]), Err(INVALID_FIELD_IN_CDB));
    assert_eq!(p(&[0x5e, 0x04]), Err(INVALID_FIELD_IN_CDB));
    assert_eq!(parse(&[0x9e]), Err(INVALID_FIELD_IN_CDB));
}

#[test]
fn read_write_decoding() {
    let r = |lba, blocks, fua, dpo| Rw {
        lba,
        blocks,
        fua,
        dpo,
    };
    assert_eq!(
        p(&[0x08, 0x1f, 0xff, 0xfe, 0, 0]),
        Ok(Command::Read(r(0x1f_fffe, 256, false, false)))
    );
    assert_eq!(
        p(&[0x0a, 0, 0, 7, 3, 0]),
        Ok(Command::Write(r(7, 3, false, false)))
    );
    assert_eq!(p(&[0x08, 0x20, 0, 0, 1, 0]), Err(INVALID_FIELD_IN_CDB));
    assert_eq!(
        p(&[0x28, 0x18, 0x12, 0x34, 0x56, 0x78, 0, 0xab, 0xcd, 0]),
        Ok(Command::Read(r(0x1234_5678, 0xabcd, true, true)))
    );
    assert_eq!(
        p(&[0x2a, 0x08, 0, 0, 0, 1, 0, 0, 0, 0]),
        Ok(Command::Write(r(1, 0, true, false)))
    );
    // RDPROTECT / WRPROTECT without protection information.
    assert_eq!(p(&[0x28, 0x20]), Err(INVALID_FIELD_IN_CDB));
    assert_eq!(p(&[0x2a, 0x04]), Err(INVALID_FIELD_IN_CDB));
    assert_eq!(
        p(&[0xa8, 0, 0, 0, 0, 9, 0xff, 0xff, 0xff, 0xff, 0, 0]),
        Ok(Command::Read(r(9, u32::MAX, false, false)))
    );
    assert_eq!(
        p(&[0xaa, 0x10, 0, 0, 0, 9, 0, 0, 0, 2, 0, 0]),
        Ok(Command::Write(r(9, 2, false, true)))
    );
    let mut c = [0u8; 16];
    c[0] = 0x88;
    c[2..10].fill(0xff);
    c[10..14].copy_from_slice(&[0xff; 4]);
    let cmd = parse(&c).unwrap();
    assert_eq!(cmd, Command::Read(r(u64::MAX, u32::MAX, false, false)));
    let (lba, n) = cmd.lba_range().unwrap();
    assert_eq!(
        crate::scsi::pages::check_range(lba, n, u64::MAX),
        Err(LBA_OUT_OF_RANGE)
    );
    c[0] = 0x8a;
    c[1] = 0x08;
    assert_eq!(
        parse(&c),
        Ok(Command::Write(r(u64::MAX, u32::MAX, true, false)))
    );
}

#[test]
fn other_medium_commands() {
    assert_eq!(
        p(&[0x35, 0x02, 0, 0, 1, 0, 0, 0, 8, 0]),
        Ok(Command::SynchronizeCache {
            lba: 256,
            blocks: 8,
            immed: true
        })
    );
    let mut c = [0u8; 16];
    c[0] = 0x91;
    c[9] = 5;
    assert_eq!(
        parse(&c),
        Ok(Command::SynchronizeCache {
            lba: 5,
            blocks: 0,
            immed: false
        })
    );
    assert_eq!(
        p(&[0x41, 0x08, 0, 0, 0, 4, 0, 0, 0, 0]),
        Err(INVALID_FIELD_IN_CDB)
    ); // WSNZ
    assert_eq!(
        p(&[0x41, 0x08, 0, 0, 0, 4, 0, 0, 2, 0]),
        Ok(Command::WriteSame {
            lba: 4,
            blocks: 2,
            unmap: true,
            ndob: false,
            sixteen: false
        })
    );
    assert_eq!(
        p(&[0x41, 0x10, 0, 0, 0, 4, 0, 0, 2, 0]),
        Err(INVALID_FIELD_IN_CDB)
    ); // ANCHOR
    assert_eq!(
        p(&[0x41, 0x01, 0, 0, 0, 4, 0, 0, 2, 0]),
        Err(INVALID_FIELD_IN_CDB)
    ); // no NDOB in 10
    let mut c = [0u8; 16];
    c[0] = 0x93;
    c[1] = 0x09;
    c[13] = 3;
    assert_eq!(
        parse(&c),
        Ok(Command::WriteSame {
            lba: 0,
            blocks: 3,
            unmap: true,
            ndob: true,
            sixteen: true
        })
    );
    c[1] = 0x06; // PBDATA/LBDATA
    assert_eq!(parse(&c), Err(INVALID_FIELD_IN_CDB));
    assert_eq!(
        p(&[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0]),
        Ok(Command::Unmap { param_len: 24 })
    );
    assert_eq!(
        p(&[0x42, 1, 0, 0, 0, 0, 0, 0, 24, 0]),
        Err(INVALID_FIELD_IN_CDB)
    );
    for (b1, ok) in [
        (0x00, true),
        (0x02, true),
        (0x04, false),
        (0x06, true),
        (0x10, true),
    ] {
        let r = p(&[0x2f, b1, 0, 0, 0, 1, 0, 0, 1, 0]);
        assert_eq!(r.is_ok(), ok, "{b1:02x}");
    }
    assert_eq!(
        p(&[0x2f, 0x12, 0, 0, 0, 1, 0, 0, 1, 0]),
        Ok(Command::Verify {
            lba: 1,
            blocks: 1,
            bytchk: 1,
            dpo: true
        })
    );
    assert_eq!(
        p(&[0x34, 0x02, 0, 0, 0, 1, 0, 0, 1, 0]),
        Ok(Command::PreFetch {
            lba: 1,
            blocks: 1,
            immed: true
        })
    );
    assert_eq!(
        p(&[0x1b, 1, 0, 0, 0x23, 0]),
        Ok(Command::StartStopUnit {
            immed: true,
            power_condition: 2,
            no_flush: false,
            loej: true,
            start: true
        })
    );
    assert_eq!(p(&[0x1b, 0, 0, 0, 0x08, 0]), Err(INVALID_FIELD_IN_CDB));
}

#[test]
fn informational_commands() {
    assert_eq!(p(&[0x00]), Ok(Command::TestUnitReady));
    assert_eq!(p(&[0x00, 1]), Err(INVALID_FIELD_IN_CDB));
    assert_eq!(
        p(&[0x03, 1, 0, 0, 252, 0]),
        Ok(Command::RequestSense {
            desc: true,
            alloc_len: 252
        })
    );
    assert_eq!(
        p(&[0x12, 0, 0, 0x01, 0x00, 0]),
        Ok(Command::Inquiry {
            evpd: false,
            page_code: 0,
            alloc_len: 256
        })
    );
    assert_eq!(
        p(&[0x12, 1, 0x83, 0, 0xff, 0]),
        Ok(Command::Inquiry {
            evpd: true,
            page_code: 0x83,
            alloc_len: 255
        })
    );
    assert_eq!(p(&[0x12, 0, 0x83, 0, 0xff, 0]), Err(INVALID_FIELD_IN_CDB)); // page w/o EVPD
    assert_eq!(p(&[0x12, 2, 0, 0, 0xff, 0]), Err(INVALID_FIELD_IN_CDB)); // CMDDT
    assert_eq!(p(&[0x12, 1, 0x89, 0, 0xff, 0]), Err(INVALID_FIELD_IN_CDB)); // unknown VPD
    assert_eq!(
        p(&[0xa0, 0, 2, 0, 0, 0, 0, 0, 0x10, 0, 0, 0]),
        Ok(Command::ReportLuns {
            select_report: 2,
            alloc_len: 4096
        })
    );
    assert_eq!(
        p(&[0xa0, 0, 3, 0, 0, 0, 0, 0, 0x10, 0, 0, 0]),
        Err(INVALID_FIELD_IN_CDB)
    );
    assert_eq!(p(&[0x25]), Ok(Command::ReadCapacity10));
    assert_eq!(
        p(&[0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0]),
        Err(INVALID_FIELD_IN_CDB)
    );
    assert_eq!(
        p(&[0x25, 0, 0, 0, 0, 1, 0, 0, 1, 0]),
        Ok(Command::ReadCapacity10)
    );
    let mut c = [0u8; 16];
    c[0] = 0x9e;
    c[1] = 0x10;
    c[13] = 32;
    assert_eq!(parse(&c), Ok(Command::ReadCapacity16 { alloc_len: 32 }));
    c[9] = 1;
    assert_eq!(parse(&c), Err(INVALID_FIELD_IN_CDB));
    assert_eq!(p(&[0x16]), Ok(Command::Reserve6));
    assert_eq!(p(&[0x17]), Ok(Command::Release6));
    assert_eq!(p(&[0x16, 0x10]), Err(INVALID_FIELD_IN_CDB)); // 3RDPTY
    let pr = [0x5f, 0x01, 0x05, 0, 0, 0, 0, 0, 24, 0];
    assert_eq!(p(&pr), Ok(Command::PersistentReserveOut { cdb: pr }));
    let pr = [0x5e, 0x03, 0, 0, 0, 0, 0, 0x10, 0, 0];
    assert_eq!(p(&pr), Ok(Command::PersistentReserveIn { cdb: pr }));
}

#[test]
fn mode_commands() {
    let ms = |ten, dbd, llbaa, pc, page, subpage, alloc_len| {
        Ok(Command::ModeSense(ModeSense {
            ten,
            dbd,
            llbaa,
            pc,
            page,
            subpage,
            alloc_len,
        }))
    };
    assert_eq!(
        p(&[0x1a, 0x08, 0x3f, 0, 0xff, 0]),
        ms(false, true, false, PageControl::Current, 0x3f, 0, 255)
    );
    assert_eq!(
        p(&[0x1a, 0x10, 0x3f, 0, 0xff, 0]),
        Err(INVALID_FIELD_IN_CDB)
    ); // LLBAA in (6)
    assert_eq!(
        p(&[0x5a, 0x10, 0x48, 0, 0, 0, 0, 1, 0, 0]),
        ms(true, false, true, PageControl::Changeable, 0x08, 0, 256)
    );
    assert_eq!(
        p(&[0x5a, 0, 0xbf, 0xff, 0, 0, 0, 1, 0, 0]),
        ms(true, false, false, PageControl::Default, 0x3f, 0xff, 256)
    );
    assert_eq!(
        p(&[0x1a, 0, 0xc8, 0, 0xff, 0]),
        Err(SAVING_PARAMETERS_NOT_SUPPORTED)
    );
    assert_eq!(p(&[0x1a, 0, 0x01, 0, 0xff, 0]), Err(INVALID_FIELD_IN_CDB));
    assert_eq!(p(&[0x1a, 0, 0x08, 1, 0xff, 0]), Err(INVALID_FIELD_IN_CDB));
    assert_eq!(
        p(&[0x1a, 0, 0x08, 0xff, 0xff, 0]),
        Err(INVALID_FIELD_IN_CDB)
    );
    assert_eq!(p(&[0x1a, 0, 0x3f, 1, 0xff, 0]), Err(INVALID_FIELD_IN_CDB));
    assert_eq!(
        p(&[0x15, 0x10, 0, 0, 24, 0]),
        Ok(Command::ModeSelect {
            ten: false,
            pf: true,
            param_len: 24
        })
    );
    assert_eq!(p(&[0x15, 0x11, 0, 0, 24, 0]), Err(INVALID_FIELD_IN_CDB)); // SP
    assert_eq!(
        p(&[0x55, 0x10, 0, 0, 0, 0, 0, 1, 2, 0]),
        Ok(Command::ModeSelect {
            ten: true,
            pf: true,
            param_len: 258
        })
    );
}

#[test]
fn report_opcodes_cdb() {
    let rsoc = |b2: u8, opc: u8, sa: u16| {
        p(&[
            0xa3,
            0x0c,
            b2,
            opc,
            (sa >> 8) as u8,
            sa as u8,
            0,
            0,
            1,
            0,
            0,
            0,
        ])
    };
    assert_eq!(
        rsoc(0x80, 0, 0),
        Ok(Command::ReportOpcodes(ReportOpcodes {
            rctd: true,
            options: 0,
            opcode: 0,
            service_action: 0,
            alloc_len: 256
        }))
    );
    for o in 4..8 {
        assert_eq!(rsoc(o, 0x28, 0), Err(INVALID_FIELD_IN_CDB));
    }
    assert!(rsoc(1, 0x28, 0).is_ok());
    assert_eq!(rsoc(1, 0x5e, 0), Err(INVALID_FIELD_IN_CDB));
    assert_eq!(rsoc(2, 0x28, 0), Err(INVALID_FIELD_IN_CDB));
    assert!(rsoc(2, 0x5e, 1).is_ok());
    assert!(rsoc(2, 0xc0, 1).is_ok()); // unknown opcode: reported as not supported
    assert!(rsoc(3, 0x28, 7).is_ok());
    assert_eq!(rsoc(0x08, 0, 0), Err(INVALID_FIELD_IN_CDB)); // reserved bit
}

#[test]
fn access_classes() {
    let cases: &[(&[u8], Option<Access>, bool)] = &[
        (&[0x00], None, false),
        (&[0x03], None, true),
        (&[0x12], None, true),
        (&[0xa0], None, true),
        (&[0x25], None, false),
        (&[0x9e, 0x10], None, false),
        (&[0xa3, 0x0c], None, false),
        (&[0x5e, 0x00], None, false),
        (&[0x5f, 0x00], None, false),
        (&[0x16], None, false),
        (&[0x17], None, false),
        (&[0x28], Some(Access::Read), false),
        (&[0x08, 0, 0, 0, 1], Some(Access::Read), false),
        (&[0x2f], Some(Access::Read), false),
        (&[0x90], Some(Access::Read), false),
        (&[0x1a, 0, 0x3f], Some(Access::Read), false),
        (&[0x2a], Some(Access::Write), false),
        (&[0x8a], Some(Access::Write), false),
        (&[0x41, 0, 0, 0, 0, 0, 0, 0, 1], Some(Access::Write), false),
        (&[0x42], Some(Access::Write), false),
        (&[0x55], Some(Access::Write), false),
        (&[0x35], Some(Access::Flush), false),
        (&[0x91], Some(Access::Flush), false),
        (&[0x1b, 0, 0, 0, 0x01], None, false),
        (&[0x1b, 0, 0, 0, 0x00], Some(Access::Write), false),
        (&[0x1b, 0, 0, 0, 0x31], Some(Access::Write), false),
    ];
    for (c, access, exempt) in cases {
        let cmd = p(c).unwrap();
        assert_eq!(cmd.access(), *access, "{cmd:?}");
        assert_eq!(cmd.ua_exempt(), *exempt, "{cmd:?}");
    }
}

#[test]
fn compare_and_write_decoding() {
    let mut c = [0u8; 16];
    c[0] = op::COMPARE_AND_WRITE;
    c[1] = 0x18; // DPO, FUA
    c[2..10].copy_from_slice(&0x0102_0304_0506_0708u64.to_be_bytes());
    c[13] = 3;
    let cmd = p(&c).unwrap();
    assert_eq!(
        cmd,
        Command::CompareAndWrite {
            lba: 0x0102_0304_0506_0708,
            blocks: 3,
            fua: true,
            dpo: true,
        }
    );
    assert_eq!(
        cmd.access(),
        Some(crate::pr::Access::Write),
        "gated as a write"
    );
    assert_eq!(cmd.lba_range(), Some((0x0102_0304_0506_0708, 3)));
    // WRPROTECT (byte 1, bits 7:5) without protection information, and the reserved bytes
    // 10..=12, are invalid fields.
    for (i, v) in [
        (1, 0x20),
        (1, 0x80),
        (10, 1),
        (11, 0x80),
        (12, 1),
        (1, 0x01),
    ] {
        let mut bad = c;
        bad[i] |= v;
        assert_eq!(p(&bad), Err(INVALID_FIELD_IN_CDB), "byte {i} bit {v:#x}");
    }
}

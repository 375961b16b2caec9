//! One iSCSI connection from its first byte to its end, through
//! `sharedisk::transport::iscsi::serve_in_memory` on an in-memory LU: PDU framing and digests,
//! login and text negotiation, the full feature phase with Data-Out sequencing, TMF, NOP, Text
//! and Logout, as a hostile initiator can drive them.
//!
//! Input (seeds: `fuzz/make_seeds.py`): byte 0 sets the target up: bit 0 puts a valid login
//! (InitiatorName `iqn.2026-01.org.example:a`, our target, AuthMethod=None, straight to the full
//! feature phase) before the rest, so the fuzzer starts past it; bit 1 admits only that
//! initiator (else any); bit 2 makes that initiator authenticate with mutual CHAP (user `a`,
//! secret `fuzz-secret-0123`, target `t`/`fuzz-target-4567`), so the CHAP exchange and its
//! binary values are driven too (the valid login of bit 0 then fails with 0201). The rest is the
//! initiator's byte stream.
//!
//! Checks: no panic, no hang; the answer starts with a Login Response, which is a success when
//! bit 0 put the valid login there; the arbiter's state still validates.

use sharedisk::config::{ChapFiles, ChapSettings, IscsiConfig};
use sharedisk::transport::iscsi::serve_in_memory;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use super::{MemImage, Reader};

const INITIATOR: &str = "iqn.2026-01.org.example:a";
const TARGET: &str = "iqn.2026-12.io.sharedisk:fuzz";

/// The valid login bit 0 puts first: CSG 0 → full feature phase in one request.
pub fn valid_login() -> Vec<u8> {
    let keys = format!(
        "InitiatorName={INITIATOR}\0TargetName={TARGET}\0AuthMethod=None\0InitialR2T=No\0\
         ImmediateData=Yes\0MaxRecvDataSegmentLength=4096\0MaxBurstLength=8192\0\
         FirstBurstLength=4096\0"
    );
    let mut b = vec![0u8; 48];
    b[0] = 0x43;
    b[1] = 0x80 | 3;
    let len = keys.len();
    b[5] = (len >> 16) as u8;
    b[6] = (len >> 8) as u8;
    b[7] = len as u8;
    b[8] = 0x80;
    b[16..20].copy_from_slice(&1u32.to_be_bytes());
    b[24..28].copy_from_slice(&1u32.to_be_bytes());
    b.extend_from_slice(keys.as_bytes());
    b.resize(48 + len.div_ceil(4) * 4, 0);
    b
}

/// The CHAP settings of bit 2: secret files written once per process.
fn chap() -> ChapSettings {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("sharedisk-fuzz-chap-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        for (f, s) in [("i", "fuzz-secret-0123\n"), ("t", "fuzz-target-4567\n")] {
            std::fs::write(d.join(f), s).unwrap();
            std::fs::set_permissions(d.join(f), std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        d
    });
    ChapSettings {
        initiator: INITIATOR.into(),
        initiator_chap: ChapFiles {
            user: "a".into(),
            secret_file: dir.join("i"),
        },
        target_chap: Some(ChapFiles {
            user: "t".into(),
            secret_file: dir.join("t"),
        }),
    }
}

/// One fuzz input; panics on a finding.
pub fn run(data: &[u8]) {
    let mut r = Reader(data);
    let setup = r.u8();
    let image = Arc::new(MemImage::new(64 * 512, false));
    let lun = super::lun(image, super::preset_state(0));
    let target = Arc::new(sharedisk::scsi::target::Target::new(lun.clone()));
    let only = setup & 2 != 0;
    let config = IscsiConfig {
        listen: vec!["127.0.0.1:3260".parse().unwrap()],
        target: Some(TARGET.into()),
        initiators: if only {
            vec![INITIATOR.into()]
        } else {
            Vec::new()
        },
        allow_any_initiator: !only,
        chap: if setup & 4 != 0 {
            vec![chap()]
        } else {
            Vec::new()
        },
        limits: Default::default(),
    };
    let mut input = if setup & 1 != 0 {
        valid_login()
    } else {
        Vec::new()
    };
    input.extend_from_slice(r.rest());
    let out = serve_in_memory(target, config, &input);
    if out.len() >= 48 {
        assert_eq!(out[0] & 0x3f, 0x23, "the first answer is a Login Response");
        if setup & 1 != 0 && setup & 4 == 0 {
            assert_eq!(&out[36..38], &[0, 0], "the valid login succeeds");
        }
        if setup & 5 == 5 {
            assert_eq!(
                &out[36..38],
                &[2, 1],
                "AuthMethod=None from a CHAP initiator"
            );
        }
    } else {
        assert!(out.is_empty(), "a partial PDU was written: {out:?}");
    }
    lun.reservations.with(|a| a.state().validate()).unwrap();
}

//! The pure wire parsers, fast: PERSISTENT RESERVE OUT CDBs and parameter lists with their
//! TransportIDs (`pr::wire`), applied to an arbiter; PERSISTENT RESERVE IN; CDB decoding
//! (`scsi::cdb`); and the other parameter lists a guest sends (MODE SELECT, UNMAP).
//!
//! Input: byte 0 selects the initiator (bits 0-1), the reservation state the arbiter starts from
//! (bits 2-3), MODE SELECT(6) or (10) (bit 4), and whether byte 1 of the input is the real
//! opcode (bit 5; otherwise PR OUT, 5Fh, so the fuzzer does not spend its time on opcodes).
//! Bytes 1-10 are the PR OUT CDB; the rest is the parameter list, which every parser gets.
//!
//! Checks: a parsed request leaves the arbiter's state valid; PR IN data never exceeds the
//! ALLOCATION LENGTH; TransportIDs round-trip; a decoded CDB decodes the same with trailing
//! bytes added; UNMAP descriptors respect the limits.

use sharedisk::pr::{wire, Arbiter};
use sharedisk::scsi::cdb;
use sharedisk::scsi::pages::{self, DiskInfo};

use super::{Reader, INITIATORS, KNOWN};

fn disk(num_blocks: u64) -> DiskInfo {
    DiskInfo {
        num_blocks,
        block_size: 512,
        read_only: false,
        write_cache: true,
        serial: "sharedisk-0123456789".into(),
        naa: pages::naa_from_serial("sharedisk-0123456789"),
        unmap: true,
        max_unmap_lbas: 1 << 21,
        max_unmap_descriptors: 32,
        max_transfer_blocks: 8192,
        optimal_transfer_blocks: 0,
        max_write_same_blocks: 1 << 16,
        max_compare_and_write_blocks: 8,
    }
}

/// Decoding ignores bytes past the command's CDB length (`cdb::parse`'s contract).
fn check_cdb(bytes: &[u8]) {
    let Ok(cmd) = cdb::parse(bytes) else {
        return;
    };
    let mut padded = [0xffu8; 32];
    let n = bytes.len().min(32);
    padded[..n].copy_from_slice(&bytes[..n]);
    assert_eq!(cdb::parse(&padded), Ok(cmd), "cdb {bytes:02x?}");
    let _ = (
        cmd.access(),
        cmd.alloc_len(),
        cmd.lba_range(),
        cmd.ua_exempt(),
    );
}

/// Our own TransportID for `name` names `name` again.
fn check_transport_id_round_trip(name: &str) {
    if name.is_empty() || name.contains('\0') || name.len() > 60_000 {
        return;
    }
    let tid = wire::transport_id(name);
    assert!(tid.len() >= 24 && tid.len().is_multiple_of(4), "{tid:02x?}");
    let back = wire::parse_transport_id(&tid);
    if name.contains(",i,0x") {
        // An iSCSI session's nexus name (guest names cannot hold a comma): only a well-formed
        // one (a 12-digit ISID) names an initiator again, lower-cased as sessions name theirs;
        // a malformed one names nobody.
        if let Some(back) = back {
            assert_eq!(back, name.to_ascii_lowercase(), "{tid:02x?}");
        }
        return;
    }
    assert_eq!(back.as_deref(), Some(name), "{tid:02x?}");
}

/// One fuzz input; panics on a finding.
pub fn run(data: &[u8]) {
    let mut r = Reader(data);
    let sel = r.u8();
    let initiator = INITIATORS[usize::from(sel & 3)];
    let mut arb = Arbiter::from_state(
        super::preset_state(sel >> 2),
        KNOWN.iter().map(|s| s.to_string()),
    );
    let mut prout_cdb = [0u8; 10];
    let c = r.bytes(10);
    prout_cdb[..c.len()].copy_from_slice(c);
    if sel & 0x20 == 0 {
        prout_cdb[0] = wire::PROUT_OPCODE;
    }
    let params = r.rest();

    // PR OUT, then the arbiter with whatever it decoded.
    let parsed = wire::parse_prout(&prout_cdb, params, |name| {
        (arb.is_known(name) || arb.is_registered(name)).then(|| name.to_string())
    });
    if let Ok(req) = parsed {
        let before = arb.generation();
        let out = arb.prout(initiator, &req);
        if let Err(e) = arb.state().validate() {
            panic!("{req:?} from {initiator}: {e}: {:?}", arb.state());
        }
        let after = arb.generation();
        assert!(
            after == before || after == before.wrapping_add(1),
            "{req:?}: generation {before} -> {after}"
        );
        assert!(out.changed || after == before);
    }

    // PR IN with the same CDB bytes, every service action.
    let mut prin_cdb = prout_cdb;
    prin_cdb[0] = wire::PRIN_OPCODE;
    if let Ok(d) = wire::prin(&arb, &prin_cdb) {
        let alloc = usize::from(u16::from_be_bytes([prin_cdb[7], prin_cdb[8]]));
        assert!(d.len() <= alloc);
    }

    // TransportIDs: where REGISTER AND MOVE has one, and the whole list as one.
    for tid in [params.get(24..).unwrap_or(&[]), params] {
        if let Some(name) = wire::parse_transport_id(tid) {
            check_transport_id_round_trip(&name);
        }
    }
    if let Ok(text) = std::str::from_utf8(params) {
        check_transport_id_round_trip(text);
    }

    // CDB decoding: the CDB bytes, and the parameter list read as a CDB.
    check_cdb(&prout_cdb);
    check_cdb(params);

    // The other parameter lists.
    let info = disk(u64::from(sel) << 24);
    let _ = pages::parse_mode_select(sel & 0x10 != 0, params, &info);
    if let Ok(ranges) = pages::parse_unmap(params, &info) {
        assert!(ranges.len() <= info.max_unmap_descriptors as usize);
        let total: u64 = ranges.iter().map(|&(_, b)| u64::from(b)).sum();
        assert!(total <= u64::from(info.max_unmap_lbas));
        assert!(ranges.iter().all(|&(_, b)| b != 0));
    }
}

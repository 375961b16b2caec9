//! CDB decoding (SPC-4 §4.2, SBC-3 §5).
//!
//! Every CDB comes from a guest, so `parse` is total: it never panics, and any CDB it does not
//! understand becomes CHECK CONDITION sense. The set of supported commands lives in one table,
//! [`SUPPORTED_OPS`], which `parse` consults first and REPORT SUPPORTED OPERATION CODES reports,
//! so the two cannot drift apart.

use crate::pr::Access;
use crate::scsi::fields::{get16, get32, get64, put16, put32, sat16, sat32};
use crate::scsi::sense::{
    Sense, INVALID_FIELD_IN_CDB, INVALID_OPCODE, SAVING_PARAMETERS_NOT_SUPPORTED,
};

/// Operation codes (SPC-4 §D.3.1, SBC-3 §5).
pub mod op {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0a;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SELECT_6: u8 = 0x15;
    pub const RESERVE_6: u8 = 0x16;
    pub const RELEASE_6: u8 = 0x17;
    pub const MODE_SENSE_6: u8 = 0x1a;
    pub const START_STOP_UNIT: u8 = 0x1b;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2a;
    pub const VERIFY_10: u8 = 0x2f;
    pub const PRE_FETCH_10: u8 = 0x34;
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    pub const WRITE_SAME_10: u8 = 0x41;
    pub const UNMAP: u8 = 0x42;
    pub const MODE_SELECT_10: u8 = 0x55;
    pub const MODE_SENSE_10: u8 = 0x5a;
    pub const PERSISTENT_RESERVE_IN: u8 = 0x5e;
    pub const PERSISTENT_RESERVE_OUT: u8 = 0x5f;
    pub const READ_16: u8 = 0x88;
    pub const COMPARE_AND_WRITE: u8 = 0x89;
    pub const WRITE_16: u8 = 0x8a;
    pub const VERIFY_16: u8 = 0x8f;
    pub const PRE_FETCH_16: u8 = 0x90;
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    pub const WRITE_SAME_16: u8 = 0x93;
    /// SERVICE ACTION IN(16); READ CAPACITY(16) is its service action 0x10.
    pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
    pub const REPORT_LUNS: u8 = 0xa0;
    /// MAINTENANCE IN; REPORT SUPPORTED OPERATION CODES is its service action 0x0c.
    pub const MAINTENANCE_IN: u8 = 0xa3;
    pub const READ_12: u8 = 0xa8;
    pub const WRITE_12: u8 = 0xaa;

    pub const SA_READ_CAPACITY_16: u16 = 0x10;
    pub const SA_REPORT_SUPPORTED_OPCODES: u16 = 0x0c;
}

/// One supported command: what REPORT SUPPORTED OPERATION CODES says about it, and what `parse`
/// accepts.
#[derive(Debug)]
pub struct OpInfo {
    pub opcode: u8,
    /// `Some` for opcodes that multiplex service actions in byte 1 bits 4:0.
    pub service_action: Option<u16>,
    /// CDB USAGE DATA (SPC-4 §6.35.3): its length is the CDB length, byte 0 is the opcode, and a
    /// bit is set only where the device server looks at that bit. `parse` rejects any CDB with a
    /// bit set outside this map (except the control byte, see [`CONTROL_NACA`]), so the map is
    /// also the reserved-bit check.
    pub usage: &'static [u8],
    /// Only offered when the disk supports unmapping (LBPU=1); SBC-3 §5.28 ties UNMAP to it.
    pub needs_unmap: bool,
    /// Only offered where COMPARE AND WRITE can be atomic: not in cluster mode (see
    /// [`Features`]).
    pub needs_caw: bool,
}

/// The optional commands this LU offers, which `parse` cannot know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// UNMAP (LBPU=1).
    pub unmap: bool,
    /// COMPARE AND WRITE: one daemon serves the image, so its write-range lock makes it atomic.
    pub compare_and_write: bool,
}

/// NACA in the control byte (SAM-5 §5.2). We do not implement ACA, so NACA=1 is rejected
/// (SPC-4 §4.2.5.3); the vendor-specific and obsolete LINK bits are ignored.
pub const CONTROL_NACA: u8 = 0x04;
const C: u8 = CONTROL_NACA;
const FF: u8 = 0xff;

const fn entry(opcode: u8, usage: &'static [u8]) -> OpInfo {
    OpInfo {
        opcode,
        service_action: None,
        usage,
        needs_unmap: false,
        needs_caw: false,
    }
}

const fn entry_sa(opcode: u8, sa: u16, usage: &'static [u8]) -> OpInfo {
    OpInfo {
        opcode,
        service_action: Some(sa),
        usage,
        needs_unmap: false,
        needs_caw: false,
    }
}

// Byte 1 of the read/write family: RDPROTECT/WRPROTECT (7:5) are absent since the disk has no
// protection information (SBC-3 §4.22: non-zero => INVALID FIELD IN CDB); DPO, FUA, RARC (reads)
// and the SBC-3 FUA_NV bit are accepted; the obsolete RELADR bit 0 is rejected.
const RD1: u8 = 0x1e;
const WR1: u8 = 0x1a;
const PR_IN_USAGE: &[u8] = &[op::PERSISTENT_RESERVE_IN, 0x1f, 0, 0, 0, 0, 0, FF, FF, C];
const PR_OUT_USAGE: &[u8] = &[
    op::PERSISTENT_RESERVE_OUT,
    0x1f,
    FF,
    0,
    0,
    FF,
    FF,
    FF,
    FF,
    C,
];

/// Every command the disk implements, sorted by opcode then service action.
pub static SUPPORTED_OPS: &[OpInfo] = &[
    entry(op::TEST_UNIT_READY, &[0x00, 0, 0, 0, 0, C]),
    entry(op::REQUEST_SENSE, &[0x03, 0x01, 0, 0, FF, C]),
    entry(op::READ_6, &[0x08, 0x1f, FF, FF, FF, C]),
    entry(op::WRITE_6, &[0x0a, 0x1f, FF, FF, FF, C]),
    entry(op::INQUIRY, &[0x12, 0x01, FF, FF, FF, C]),
    entry(op::MODE_SELECT_6, &[0x15, 0x11, 0, 0, FF, C]),
    entry(op::RESERVE_6, &[0x16, 0, 0, 0, 0, C]),
    entry(op::RELEASE_6, &[0x17, 0, 0, 0, 0, C]),
    entry(op::MODE_SENSE_6, &[0x1a, 0x08, FF, FF, FF, C]),
    entry(op::START_STOP_UNIT, &[0x1b, 0x01, 0, 0x0f, 0xf7, C]),
    entry(
        op::READ_CAPACITY_10,
        &[0x25, 0, FF, FF, FF, FF, 0, 0, 0x01, C],
    ),
    entry(op::READ_10, &[0x28, RD1, FF, FF, FF, FF, 0x1f, FF, FF, C]),
    entry(op::WRITE_10, &[0x2a, WR1, FF, FF, FF, FF, 0x1f, FF, FF, C]),
    entry(
        op::VERIFY_10,
        &[0x2f, 0x16, FF, FF, FF, FF, 0x1f, FF, FF, C],
    ),
    entry(
        op::PRE_FETCH_10,
        &[0x34, 0x02, FF, FF, FF, FF, 0x1f, FF, FF, C],
    ),
    entry(
        op::SYNCHRONIZE_CACHE_10,
        &[0x35, 0x06, FF, FF, FF, FF, 0x1f, FF, FF, C],
    ),
    entry(
        op::WRITE_SAME_10,
        &[0x41, 0x08, FF, FF, FF, FF, 0x1f, FF, FF, C],
    ),
    OpInfo {
        opcode: op::UNMAP,
        service_action: None,
        usage: &[0x42, 0, 0, 0, 0, 0, 0x1f, FF, FF, C],
        needs_unmap: true,
        needs_caw: false,
    },
    entry(op::MODE_SELECT_10, &[0x55, 0x11, 0, 0, 0, 0, 0, FF, FF, C]),
    entry(op::MODE_SENSE_10, &[0x5a, 0x18, FF, FF, 0, 0, 0, FF, FF, C]),
    entry_sa(op::PERSISTENT_RESERVE_IN, 0x00, PR_IN_USAGE),
    entry_sa(op::PERSISTENT_RESERVE_IN, 0x01, PR_IN_USAGE),
    entry_sa(op::PERSISTENT_RESERVE_IN, 0x02, PR_IN_USAGE),
    entry_sa(op::PERSISTENT_RESERVE_IN, 0x03, PR_IN_USAGE),
    entry_sa(op::PERSISTENT_RESERVE_OUT, 0x00, PR_OUT_USAGE),
    entry_sa(op::PERSISTENT_RESERVE_OUT, 0x01, PR_OUT_USAGE),
    entry_sa(op::PERSISTENT_RESERVE_OUT, 0x02, PR_OUT_USAGE),
    entry_sa(op::PERSISTENT_RESERVE_OUT, 0x03, PR_OUT_USAGE),
    entry_sa(op::PERSISTENT_RESERVE_OUT, 0x04, PR_OUT_USAGE),
    entry_sa(op::PERSISTENT_RESERVE_OUT, 0x05, PR_OUT_USAGE),
    entry_sa(op::PERSISTENT_RESERVE_OUT, 0x06, PR_OUT_USAGE),
    entry_sa(op::PERSISTENT_RESERVE_OUT, 0x07, PR_OUT_USAGE),
    entry(
        op::READ_16,
        &[
            0x88, RD1, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x1f, C,
        ],
    ),
    // SBC-4 §5.3: WRPROTECT (7:5) absent as for WRITE; NUMBER OF LOGICAL BLOCKS in byte 13.
    OpInfo {
        opcode: op::COMPARE_AND_WRITE,
        service_action: None,
        usage: &[
            0x89, WR1, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0, 0, FF, 0x1f, C,
        ],
        needs_unmap: false,
        needs_caw: true,
    },
    entry(
        op::WRITE_16,
        &[
            0x8a, WR1, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x1f, C,
        ],
    ),
    entry(
        op::VERIFY_16,
        &[
            0x8f, 0x16, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x1f, C,
        ],
    ),
    entry(
        op::PRE_FETCH_16,
        &[
            0x90, 0x02, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x1f, C,
        ],
    ),
    entry(
        op::SYNCHRONIZE_CACHE_16,
        &[
            0x91, 0x06, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x1f, C,
        ],
    ),
    entry(
        op::WRITE_SAME_16,
        &[
            0x93, 0x09, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x1f, C,
        ],
    ),
    entry_sa(
        op::SERVICE_ACTION_IN_16,
        op::SA_READ_CAPACITY_16,
        &[
            0x9e, 0x1f, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x01, C,
        ],
    ),
    entry(
        op::REPORT_LUNS,
        &[0xa0, 0, FF, 0, 0, 0, FF, FF, FF, FF, 0, C],
    ),
    entry_sa(
        op::MAINTENANCE_IN,
        op::SA_REPORT_SUPPORTED_OPCODES,
        &[0xa3, 0x1f, 0x87, FF, FF, FF, FF, FF, FF, FF, 0, C],
    ),
    entry(
        op::READ_12,
        &[0xa8, RD1, FF, FF, FF, FF, FF, FF, FF, FF, 0x1f, C],
    ),
    entry(
        op::WRITE_12,
        &[0xaa, WR1, FF, FF, FF, FF, FF, FF, FF, FF, 0x1f, C],
    ),
];

/// Whether `opcode` multiplexes service actions (so its identity needs byte 1 too).
pub fn has_service_actions(opcode: u8) -> bool {
    SUPPORTED_OPS
        .iter()
        .any(|e| e.opcode == opcode && e.service_action.is_some())
}

/// Whether any entry of the table has this opcode.
pub fn opcode_known(opcode: u8) -> bool {
    SUPPORTED_OPS.iter().any(|e| e.opcode == opcode)
}

/// The table entry for `opcode` (and `sa`, only looked at for opcodes with service actions).
pub fn lookup(opcode: u8, sa: u16) -> Option<&'static OpInfo> {
    SUPPORTED_OPS
        .iter()
        .find(|e| e.opcode == opcode && e.service_action.is_none_or(|s| s == sa))
}

/// VPD pages we implement, in ascending order as VPD page 0x00 must list them (SPC-4 §7.8.13).
pub const VPD_PAGES: [u8; 6] = [0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2];
/// Mode pages we implement: caching, control, informational exceptions control.
pub const MODE_PAGES: [u8; 3] = [0x08, 0x0a, 0x1c];
/// Page code meaning "all pages" (SPC-4 §6.11).
pub const ALL_PAGES: u8 = 0x3f;

/// 05/24/00 for a VPD page we do not implement (SPC-4 §6.6.1).
pub fn check_vpd_page(page: u8) -> Result<(), Sense> {
    if VPD_PAGES.contains(&page) {
        Ok(())
    } else {
        Err(INVALID_FIELD_IN_CDB)
    }
}

/// 05/24/00 unless the page/subpage pair names something we have (SPC-4 §6.11): one of
/// [`MODE_PAGES`] with subpage 0, or all pages with subpage 0 or FFh.
pub fn check_mode_page(page: u8, subpage: u8) -> Result<(), Sense> {
    let ok = match page {
        ALL_PAGES => subpage == 0 || subpage == 0xff,
        p => MODE_PAGES.contains(&p) && subpage == 0,
    };
    if ok {
        Ok(())
    } else {
        Err(INVALID_FIELD_IN_CDB)
    }
}

/// PC field of MODE SENSE (SPC-4 §6.11, table 154).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageControl {
    Current,
    Changeable,
    Default,
    Saved,
}

/// A medium access: READ/WRITE of any size (SBC-3 §5.8–5.11, §5.38–5.41).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rw {
    pub lba: u64,
    /// Already expanded: READ(6)/WRITE(6) length 0 is 256 here; for the others 0 means no
    /// transfer, which is not an error (SBC-3 §5.8) but the LBA is still range-checked.
    pub blocks: u32,
    pub fua: bool,
    pub dpo: bool,
}

/// MODE SENSE(6)/(10) fields (SPC-4 §6.11, §6.12), already validated against the pages we have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModeSense {
    pub ten: bool,
    pub dbd: bool,
    /// Only settable in MODE SENSE(10): asks for the 16-byte block descriptor.
    pub llbaa: bool,
    pub pc: PageControl,
    pub page: u8,
    pub subpage: u8,
    pub alloc_len: u32,
}

/// REPORT SUPPORTED OPERATION CODES fields (SPC-4 §6.35).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportOpcodes {
    /// Append a command timeouts descriptor to each entry.
    pub rctd: bool,
    /// REPORTING OPTIONS, 0..=3.
    pub options: u8,
    pub opcode: u8,
    pub service_action: u16,
    pub alloc_len: u32,
}

/// A decoded, field-checked CDB. Capacity checks are left to the caller (see
/// [`check_range`](crate::scsi::pages::check_range)) because the decoder does not know the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    TestUnitReady,
    /// DESC asks for descriptor-format sense (SPC-4 §6.39).
    RequestSense {
        desc: bool,
        alloc_len: u32,
    },
    /// `page_code` is only non-zero with `evpd`, and then names a page we have.
    Inquiry {
        evpd: bool,
        page_code: u8,
        alloc_len: u32,
    },
    /// `select_report` is 0, 1 or 2 (SPC-4 §6.33).
    ReportLuns {
        select_report: u8,
        alloc_len: u32,
    },
    ReadCapacity10,
    ReadCapacity16 {
        alloc_len: u32,
    },
    ModeSense(ModeSense),
    /// SP=1 is rejected (no saved pages); PF is informational only.
    ModeSelect {
        ten: bool,
        pf: bool,
        param_len: u32,
    },
    Read(Rw),
    Write(Rw),
    /// `blocks` 0 means through the last LBA (SBC-3 §5.22).
    SynchronizeCache {
        lba: u64,
        blocks: u32,
        immed: bool,
    },
    /// `blocks` is never 0: we report WSNZ=1 (SBC-3 §6.6.4). With UNMAP set but no unmap support
    /// the caller writes the block instead, which SBC-3 §5.45 allows. ANCHOR is rejected because
    /// ANC_SUP=0.
    WriteSame {
        lba: u64,
        blocks: u32,
        unmap: bool,
        ndob: bool,
        sixteen: bool,
    },
    /// SBC-4 §5.3: compare `blocks` blocks at `lba` with the first half of the data-out
    /// buffer and, if equal, write its second half there, atomically. `blocks` 0 is not an
    /// error (nothing is compared or written).
    CompareAndWrite {
        lba: u64,
        blocks: u8,
        fua: bool,
        dpo: bool,
    },
    /// ANCHOR is rejected because ANC_SUP=0 (SBC-3 §5.28).
    Unmap {
        param_len: u32,
    },
    /// `bytchk` is 0 (medium check only), 1 (compare `blocks` blocks) or 3 (compare one block
    /// against each); 2 is reserved and rejected (SBC-3 §5.33).
    Verify {
        lba: u64,
        blocks: u32,
        bytchk: u8,
        dpo: bool,
    },
    PreFetch {
        lba: u64,
        blocks: u32,
        immed: bool,
    },
    StartStopUnit {
        immed: bool,
        power_condition: u8,
        no_flush: bool,
        loej: bool,
        start: bool,
    },
    /// Raw CDB, decoded by the PR module.
    PersistentReserveIn {
        cdb: [u8; 10],
    },
    /// Raw CDB, decoded by the PR module.
    PersistentReserveOut {
        cdb: [u8; 10],
    },
    Reserve6,
    Release6,
    ReportOpcodes(ReportOpcodes),
}

/// Decode one CDB. `cdb` may be the whole 32-byte virtio-scsi field; bytes past the command's
/// CDB length are ignored.
///
/// Errors: unknown opcode => 05/20/00; CDB shorter than the command, unknown service action,
/// reserved bit set, or a bad field => 05/24/00; MODE SENSE of saved values => 05/39/00.
pub fn parse(cdb: &[u8]) -> Result<Command, Sense> {
    let &opcode = cdb.first().ok_or(INVALID_FIELD_IN_CDB)?;
    if !opcode_known(opcode) {
        return Err(INVALID_OPCODE);
    }
    let sa = if has_service_actions(opcode) {
        u16::from(cdb.get(1).ok_or(INVALID_FIELD_IN_CDB)? & 0x1f)
    } else {
        0
    };
    // SPC-4 §4.2.5.1: an unsupported service action of a supported opcode is INVALID FIELD.
    let info = lookup(opcode, sa).ok_or(INVALID_FIELD_IN_CDB)?;
    let n = info.usage.len();
    let given = cdb.get(..n).ok_or(INVALID_FIELD_IN_CDB)?;
    // A fixed 32-byte copy: every field access below uses a constant index below 32, so none can
    // be out of bounds, whatever the command.
    let mut c = [0u8; 32];
    c.get_mut(..n)
        .ok_or(INVALID_FIELD_IN_CDB)?
        .copy_from_slice(given);
    let (body, control) = match given.split_last() {
        Some((&control, body)) => (body, control),
        None => return Err(INVALID_FIELD_IN_CDB),
    };
    if control & CONTROL_NACA != 0 {
        return Err(INVALID_FIELD_IN_CDB);
    }
    if body
        .iter()
        .zip(info.usage)
        .skip(1)
        .any(|(b, u)| b & !u != 0)
    {
        return Err(INVALID_FIELD_IN_CDB);
    }
    decode(&c)
}

// CDB fields: the CDB is padded to 32 bytes, so every field `decode` reads is present.
fn be16(c: &[u8; 32], i: usize) -> u32 {
    get16(c, i).map_or(0, u32::from)
}

fn be32(c: &[u8; 32], i: usize) -> u32 {
    get32(c, i).unwrap_or(0)
}

fn be64(c: &[u8; 32], i: usize) -> u64 {
    get64(c, i).unwrap_or(0)
}

fn bit(c: &[u8; 32], i: usize, mask: u8) -> bool {
    c[i] & mask != 0
}

fn rw(c: &[u8; 32], lba: u64, blocks: u32) -> Rw {
    Rw {
        lba,
        blocks,
        fua: bit(c, 1, 0x08),
        dpo: bit(c, 1, 0x10),
    }
}

/// Field decoding proper; reserved bits were already rejected by `parse` via the usage map.
fn decode(c: &[u8; 32]) -> Result<Command, Sense> {
    Ok(match c[0] {
        op::TEST_UNIT_READY => Command::TestUnitReady,
        op::REQUEST_SENSE => Command::RequestSense {
            desc: bit(c, 1, 0x01),
            alloc_len: u32::from(c[4]),
        },
        op::INQUIRY => {
            let evpd = bit(c, 1, 0x01);
            let page_code = c[2];
            // SPC-4 §6.6: a page code without EVPD is invalid; CMDDT is not in the usage map.
            if evpd {
                check_vpd_page(page_code)?;
            } else if page_code != 0 {
                return Err(INVALID_FIELD_IN_CDB);
            }
            Command::Inquiry {
                evpd,
                page_code,
                alloc_len: be16(c, 3),
            }
        }
        op::REPORT_LUNS => {
            let select_report = c[2];
            // 0x10..0x12 concern administrative LUs, which we do not have (SPC-4 table 282).
            if select_report > 2 {
                return Err(INVALID_FIELD_IN_CDB);
            }
            Command::ReportLuns {
                select_report,
                alloc_len: be32(c, 6),
            }
        }
        op::READ_CAPACITY_10 => {
            // SBC-3 §5.15: with PMI=0 the LOGICAL BLOCK ADDRESS field must be zero.
            if !bit(c, 8, 0x01) && be32(c, 2) != 0 {
                return Err(INVALID_FIELD_IN_CDB);
            }
            Command::ReadCapacity10
        }
        op::SERVICE_ACTION_IN_16 => {
            if !bit(c, 14, 0x01) && be64(c, 2) != 0 {
                return Err(INVALID_FIELD_IN_CDB);
            }
            Command::ReadCapacity16 {
                alloc_len: be32(c, 10),
            }
        }
        op::MODE_SENSE_6 | op::MODE_SENSE_10 => {
            let ten = c[0] == op::MODE_SENSE_10;
            let pc = match c[2] >> 6 {
                0 => PageControl::Current,
                1 => PageControl::Changeable,
                2 => PageControl::Default,
                _ => PageControl::Saved,
            };
            let page = c[2] & 0x3f;
            let subpage = c[3];
            check_mode_page(page, subpage)?;
            if pc == PageControl::Saved {
                return Err(SAVING_PARAMETERS_NOT_SUPPORTED);
            }
            Command::ModeSense(ModeSense {
                ten,
                dbd: bit(c, 1, 0x08),
                llbaa: ten && bit(c, 1, 0x10),
                pc,
                page,
                subpage,
                alloc_len: if ten { be16(c, 7) } else { u32::from(c[4]) },
            })
        }
        op::MODE_SELECT_6 | op::MODE_SELECT_10 => {
            let ten = c[0] == op::MODE_SELECT_10;
            // SPC-4 §6.9: SP=1 without saved pages is INVALID FIELD IN CDB.
            if bit(c, 1, 0x01) {
                return Err(INVALID_FIELD_IN_CDB);
            }
            Command::ModeSelect {
                ten,
                pf: bit(c, 1, 0x10),
                param_len: if ten { be16(c, 7) } else { u32::from(c[4]) },
            }
        }
        op::READ_6 | op::WRITE_6 => {
            let lba = u64::from(u32::from_be_bytes([0, c[1] & 0x1f, c[2], c[3]]));
            // SBC-3 §5.7: a TRANSFER LENGTH of 0 means 256 blocks.
            let blocks = if c[4] == 0 { 256 } else { u32::from(c[4]) };
            // FUA/DPO do not exist in the 6-byte CDBs; byte 1 holds the LBA.
            let r = Rw {
                lba,
                blocks,
                fua: false,
                dpo: false,
            };
            if c[0] == op::READ_6 {
                Command::Read(r)
            } else {
                Command::Write(r)
            }
        }
        op::READ_10 => Command::Read(rw(c, u64::from(be32(c, 2)), be16(c, 7))),
        op::WRITE_10 => Command::Write(rw(c, u64::from(be32(c, 2)), be16(c, 7))),
        op::READ_12 => Command::Read(rw(c, u64::from(be32(c, 2)), be32(c, 6))),
        op::WRITE_12 => Command::Write(rw(c, u64::from(be32(c, 2)), be32(c, 6))),
        op::READ_16 => Command::Read(rw(c, be64(c, 2), be32(c, 10))),
        op::WRITE_16 => Command::Write(rw(c, be64(c, 2), be32(c, 10))),
        op::SYNCHRONIZE_CACHE_10 => Command::SynchronizeCache {
            lba: u64::from(be32(c, 2)),
            blocks: be16(c, 7),
            immed: bit(c, 1, 0x02),
        },
        op::SYNCHRONIZE_CACHE_16 => Command::SynchronizeCache {
            lba: be64(c, 2),
            blocks: be32(c, 10),
            immed: bit(c, 1, 0x02),
        },
        op::WRITE_SAME_10 | op::WRITE_SAME_16 => {
            let sixteen = c[0] == op::WRITE_SAME_16;
            let (lba, blocks) = if sixteen {
                (be64(c, 2), be32(c, 10))
            } else {
                (u64::from(be32(c, 2)), be16(c, 7))
            };
            if blocks == 0 {
                return Err(INVALID_FIELD_IN_CDB);
            }
            Command::WriteSame {
                lba,
                blocks,
                unmap: bit(c, 1, 0x08),
                ndob: sixteen && bit(c, 1, 0x01),
                sixteen,
            }
        }
        op::UNMAP => Command::Unmap {
            param_len: be16(c, 7),
        },
        op::COMPARE_AND_WRITE => Command::CompareAndWrite {
            lba: be64(c, 2),
            blocks: c[13],
            fua: bit(c, 1, 0x08),
            dpo: bit(c, 1, 0x10),
        },
        op::VERIFY_10 | op::VERIFY_16 => {
            let bytchk = (c[1] >> 1) & 0x03;
            if bytchk == 2 {
                return Err(INVALID_FIELD_IN_CDB);
            }
            let (lba, blocks) = if c[0] == op::VERIFY_16 {
                (be64(c, 2), be32(c, 10))
            } else {
                (u64::from(be32(c, 2)), be16(c, 7))
            };
            Command::Verify {
                lba,
                blocks,
                bytchk,
                dpo: bit(c, 1, 0x10),
            }
        }
        op::PRE_FETCH_10 => Command::PreFetch {
            lba: u64::from(be32(c, 2)),
            blocks: be16(c, 7),
            immed: bit(c, 1, 0x02),
        },
        op::PRE_FETCH_16 => Command::PreFetch {
            lba: be64(c, 2),
            blocks: be32(c, 10),
            immed: bit(c, 1, 0x02),
        },
        op::START_STOP_UNIT => Command::StartStopUnit {
            immed: bit(c, 1, 0x01),
            power_condition: c[4] >> 4,
            no_flush: bit(c, 4, 0x04),
            loej: bit(c, 4, 0x02),
            start: bit(c, 4, 0x01),
        },
        op::PERSISTENT_RESERVE_IN => Command::PersistentReserveIn { cdb: raw10(c) },
        op::PERSISTENT_RESERVE_OUT => Command::PersistentReserveOut { cdb: raw10(c) },
        op::RESERVE_6 => Command::Reserve6,
        op::RELEASE_6 => Command::Release6,
        op::MAINTENANCE_IN => {
            let r = ReportOpcodes {
                rctd: bit(c, 2, 0x80),
                options: c[2] & 0x07,
                opcode: c[3],
                service_action: u16::from_be_bytes([c[4], c[5]]),
                alloc_len: be32(c, 6),
            };
            check_report_opcodes(&r)?;
            Command::ReportOpcodes(r)
        }
        // Unreachable while the table and this match agree; the consistency test checks that.
        _ => return Err(INVALID_OPCODE),
    })
}

fn raw10(c: &[u8; 32]) -> [u8; 10] {
    let mut r = [0u8; 10];
    r.copy_from_slice(&c[..10]);
    r
}

/// REPORTING OPTIONS checks of SPC-4 §6.35.1 that do not depend on the disk.
pub fn check_report_opcodes(r: &ReportOpcodes) -> Result<(), Sense> {
    match r.options {
        0 | 3 => Ok(()),
        // "One command, no service action" for an opcode that has them is an error, and so is
        // "one command with service action" for an opcode we know has none.
        1 if !has_service_actions(r.opcode) => Ok(()),
        2 if has_service_actions(r.opcode) || !opcode_known(r.opcode) => Ok(()),
        _ => Err(INVALID_FIELD_IN_CDB),
    }
}

/// Whether the disk offers this command (UNMAP only when the disk supports unmap, COMPARE AND
/// WRITE only outside cluster mode).
pub fn op_enabled(e: &OpInfo, f: Features) -> bool {
    (!e.needs_unmap || f.unmap) && (!e.needs_caw || f.compare_and_write)
}

/// Command timeouts descriptor (SPC-4 §6.35.4): length 0Ah, timeouts 0 = not specified.
const TIMEOUTS_DESCRIPTOR: [u8; 12] = [0, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// REPORT SUPPORTED OPERATION CODES data (SPC-4 §6.35), from the same table `parse` uses;
/// `f` says which optional commands the disk offers.
pub fn report_supported_opcodes(f: Features, r: &ReportOpcodes) -> Result<Vec<u8>, Sense> {
    check_report_opcodes(r)?;
    let enabled = SUPPORTED_OPS.iter().filter(|e| op_enabled(e, f));
    let mut v = Vec::new();
    if r.options == 0 {
        // All commands: COMMAND DATA LENGTH, then one descriptor per (opcode, service action).
        put32(&mut v, 0);
        for e in enabled {
            v.push(e.opcode);
            v.push(0);
            put16(&mut v, e.service_action.unwrap_or(0));
            v.push(0);
            v.push(if r.rctd { 0x02 } else { 0 } | u8::from(e.service_action.is_some()));
            put16(&mut v, sat16(e.usage.len()));
            if r.rctd {
                v.extend_from_slice(&TIMEOUTS_DESCRIPTOR);
            }
        }
        let len = sat32(v.len() - 4).to_be_bytes();
        v[..4].copy_from_slice(&len);
        return Ok(v);
    }
    let sa = r.service_action;
    let found = enabled.into_iter().find(|e| {
        e.opcode == r.opcode
            && match (r.options, e.service_action) {
                (1, s) => s.is_none(),
                (2, s) => s == Some(sa),
                // Option 3 ignores the service action of opcodes that have none.
                (_, s) => s.is_none_or(|s| s == sa),
            }
    });
    match found {
        Some(e) => {
            v.push(0);
            v.push(if r.rctd { 0x80 } else { 0 } | 0x03); // CTDP, SUPPORT 011b.
            put16(&mut v, sat16(e.usage.len()));
            v.extend_from_slice(e.usage);
            if r.rctd {
                v.extend_from_slice(&TIMEOUTS_DESCRIPTOR);
            }
        }
        // SUPPORT 001b: not supported; no usage data.
        None => v.extend_from_slice(&[0, 0x01, 0, 0]),
    }
    Ok(v)
}

impl Command {
    /// The PR access class of SBC-3 §4.17.2 table 13 (see `/reference/scsi-pr.md`), or `None`
    /// when the command is always allowed or the arbiter decides itself (PR OUT, RESERVE(6),
    /// RELEASE(6)).
    ///
    /// START STOP UNIT: SBC-3 table 13 allows START=1 with POWER CONDITION 0 to everyone and
    /// gives every other form the same column pattern as a write, so it is classed as Write.
    pub fn access(&self) -> Option<Access> {
        match self {
            Command::Read(_)
            | Command::Verify { .. }
            | Command::PreFetch { .. }
            | Command::ModeSense(_) => Some(Access::Read),
            Command::Write(_)
            | Command::CompareAndWrite { .. }
            | Command::WriteSame { .. }
            | Command::Unmap { .. }
            | Command::ModeSelect { .. } => Some(Access::Write),
            Command::SynchronizeCache { .. } => Some(Access::Flush),
            Command::StartStopUnit {
                start: true,
                power_condition: 0,
                ..
            } => None,
            Command::StartStopUnit { .. } => Some(Access::Write),
            Command::TestUnitReady
            | Command::RequestSense { .. }
            | Command::Inquiry { .. }
            | Command::ReportLuns { .. }
            | Command::ReadCapacity10
            | Command::ReadCapacity16 { .. }
            | Command::PersistentReserveIn { .. }
            | Command::PersistentReserveOut { .. }
            | Command::Reserve6
            | Command::Release6
            | Command::ReportOpcodes(_) => None,
        }
    }

    /// Commands that neither fail with nor consume a pending unit attention (SAM-5 §5.14,
    /// SPC-4 §5.14): INQUIRY, REPORT LUNS and REQUEST SENSE.
    pub fn ua_exempt(&self) -> bool {
        matches!(
            self,
            Command::Inquiry { .. } | Command::ReportLuns { .. } | Command::RequestSense { .. }
        )
    }

    /// ALLOCATION LENGTH for data-in commands: the caller truncates the built data to it.
    pub fn alloc_len(&self) -> Option<u32> {
        match *self {
            Command::RequestSense { alloc_len, .. }
            | Command::Inquiry { alloc_len, .. }
            | Command::ReportLuns { alloc_len, .. }
            | Command::ReadCapacity16 { alloc_len } => Some(alloc_len),
            Command::ModeSense(m) => Some(m.alloc_len),
            Command::ReportOpcodes(r) => Some(r.alloc_len),
            // READ CAPACITY(10) has no allocation length; its data is always 8 bytes.
            Command::ReadCapacity10 => Some(8),
            _ => None,
        }
    }

    /// The LBA range a medium command addresses, for [`check_range`](crate::scsi::pages::check_range). SYNCHRONIZE CACHE
    /// with 0 blocks covers `lba..` to the end, so it is reported as zero blocks at `lba`.
    pub fn lba_range(&self) -> Option<(u64, u64)> {
        match *self {
            Command::Read(r) | Command::Write(r) => Some((r.lba, u64::from(r.blocks))),
            Command::SynchronizeCache { lba, blocks, .. }
            | Command::WriteSame { lba, blocks, .. }
            | Command::Verify { lba, blocks, .. }
            | Command::PreFetch { lba, blocks, .. } => Some((lba, u64::from(blocks))),
            Command::CompareAndWrite { lba, blocks, .. } => Some((lba, u64::from(blocks))),
            _ => None,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;

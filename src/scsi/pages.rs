//! Data-in builders (INQUIRY, VPD, READ CAPACITY, MODE SENSE, REPORT LUNS, REPORT SUPPORTED
//! OPERATION CODES, REQUEST SENSE) and data-out parsers (MODE SELECT, UNMAP).
//!
//! Builders return the full data; the caller truncates it to the ALLOCATION LENGTH, which SPC-4
//! §4.2.5.6 says must never change the length fields inside. Parsers take guest bytes and bound
//! every loop and allocation by the bytes actually present.

use crate::scsi::cdb::{
    check_report_opcodes, ModeSense, OpInfo, PageControl, ReportOpcodes, SUPPORTED_OPS,
};
use crate::sense::{
    Sense, INVALID_FIELD_IN_CDB, INVALID_FIELD_IN_PARAM_LIST, INVALID_OPCODE, LBA_OUT_OF_RANGE,
    NO_SENSE, PARAM_LIST_LENGTH_ERROR, SAVING_PARAMETERS_NOT_SUPPORTED,
};

/// What the guest is told about the disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskInfo {
    pub num_blocks: u64,
    /// Logical block size in bytes (512).
    pub block_size: u32,
    pub read_only: bool,
    /// Current WCE (changed by MODE SELECT).
    pub write_cache: bool,
    /// Unit serial, the same as virtio-blk GET_ID; printable ASCII, 20 bytes at most are used.
    pub serial: String,
    /// 8-byte NAA designator, see [`naa_from_serial`].
    pub naa: u64,
    /// Discard is implemented by punching holes in the image, which read back as zeros: this
    /// enables UNMAP, WRITE SAME with UNMAP, LBPME and LBPRZ.
    pub unmap: bool,
    pub max_unmap_lbas: u32,
    pub max_unmap_descriptors: u32,
    pub max_transfer_blocks: u32,
    pub optimal_transfer_blocks: u32,
}

/// T10 vendor identification (SPC-4 §6.4.2): 8 ASCII bytes.
pub const VENDOR: &[u8; 8] = b"SHAREDSK";
/// PRODUCT IDENTIFICATION: 16 ASCII bytes, space padded.
pub const PRODUCT: &[u8; 16] = b"sharedisk       ";
/// VPD pages we implement, in ascending order as VPD page 0x00 must list them (SPC-4 §7.8.13).
pub const VPD_PAGES: [u8; 6] = [0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2];
/// Mode pages we implement: caching, control, informational exceptions control.
pub const MODE_PAGES: [u8; 3] = [0x08, 0x0a, 0x1c];
/// Page code meaning "all pages" (SPC-4 §6.11).
pub const ALL_PAGES: u8 = 0x3f;

/// Peripheral device type 0: direct access block device (SPC-4 table 139).
const PDT_DISK: u8 = 0x00;

fn put16(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_be_bytes());
}
fn put32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_be_bytes());
}
fn put64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_be_bytes());
}
fn sat16(x: usize) -> u16 {
    u16::try_from(x).unwrap_or(u16::MAX)
}
fn sat32(x: usize) -> u32 {
    u32::try_from(x).unwrap_or(u32::MAX)
}
fn get16(b: &[u8], i: usize) -> Option<usize> {
    let s = b.get(i..i.checked_add(2)?)?;
    Some(usize::from(u16::from_be_bytes([s[0], s[1]])))
}
fn get32(b: &[u8], i: usize) -> Option<u32> {
    b.get(i..i.checked_add(4)?)?
        .try_into()
        .ok()
        .map(u32::from_be_bytes)
}
fn get64(b: &[u8], i: usize) -> Option<u64> {
    b.get(i..i.checked_add(8)?)?
        .try_into()
        .ok()
        .map(u64::from_be_bytes)
}

/// A stable locally assigned NAA (type 3h, SPC-4 §7.8.6.6.5) from the serial: FNV-1a, so every
/// daemon serving the same image reports the same identity, across builds.
pub fn naa_from_serial(serial: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in serial.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (3u64 << 60) | (h >> 4)
}

/// The serial as reported: printable ASCII only, at most 20 bytes (the virtio-blk ID size).
fn serial_bytes(info: &DiskInfo) -> Vec<u8> {
    info.serial
        .bytes()
        .filter(|b| (0x20..0x7f).contains(b))
        .take(20)
        .collect()
}

fn revision() -> [u8; 4] {
    let mut r = *b"    ";
    let v = concat!(
        env!("CARGO_PKG_VERSION_MAJOR"),
        ".",
        env!("CARGO_PKG_VERSION_MINOR")
    );
    for (d, s) in r.iter_mut().zip(v.bytes()) {
        *d = s;
    }
    r
}

/// Standard INQUIRY data (SPC-4 §6.6.2), 96 bytes.
pub fn standard_inquiry() -> Vec<u8> {
    let mut v = vec![0u8; 96];
    v[0] = PDT_DISK; // PERIPHERAL QUALIFIER 0: the LU is connected.
    v[2] = 0x06; // VERSION: SPC-4.
    v[3] = 0x10 | 0x02; // HISUP (LUNs are SAM-hierarchical), RESPONSE DATA FORMAT 2.
    v[4] = 96 - 5; // ADDITIONAL LENGTH.
    v[7] = 0x02; // CMDQUE: tagged commands are processed concurrently.
    v[8..16].copy_from_slice(VENDOR);
    v[16..32].copy_from_slice(PRODUCT);
    v[32..36].copy_from_slice(&revision());
    // Version descriptors (SPC-4 table 144): SAM-5, SPC-4, SBC-3, no version claimed.
    for (i, d) in [0x00a0u16, 0x0460, 0x04c0].iter().enumerate() {
        v[58 + 2 * i..60 + 2 * i].copy_from_slice(&d.to_be_bytes());
    }
    v
}

/// INQUIRY for a LUN that does not exist: PERIPHERAL QUALIFIER 3, type 1Fh (SPC-4 §6.6.2), which
/// tells the initiator's LUN scan to skip it.
pub fn inquiry_no_lun() -> Vec<u8> {
    let mut v = standard_inquiry();
    v[0] = 0x7f;
    v
}

/// Answer an INQUIRY for LUN 0.
pub fn inquiry(info: &DiskInfo, evpd: bool, page_code: u8) -> Result<Vec<u8>, Sense> {
    match (evpd, page_code) {
        (false, 0) => Ok(standard_inquiry()),
        (false, _) => Err(INVALID_FIELD_IN_CDB),
        (true, page) => vpd_page(info, page),
    }
}

/// 05/24/00 for a VPD page we do not implement (SPC-4 §6.6.1).
pub fn check_vpd_page(page: u8) -> Result<(), Sense> {
    if VPD_PAGES.contains(&page) {
        Ok(())
    } else {
        Err(INVALID_FIELD_IN_CDB)
    }
}

/// VPD header plus body; PAGE LENGTH is the body length (SPC-4 §7.8.1).
fn vpd(page: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![PDT_DISK, page];
    put16(&mut v, sat16(body.len()));
    v.extend_from_slice(body);
    v
}

/// One designation descriptor (SPC-4 §7.8.6.1).
fn designator(v: &mut Vec<u8>, code_set: u8, assoc_type: u8, id: &[u8]) {
    v.extend_from_slice(&[
        code_set,
        assoc_type,
        0,
        u8::try_from(id.len()).unwrap_or(u8::MAX),
    ]);
    v.extend_from_slice(id.get(..255).unwrap_or(id));
}

/// A vital product data page (SPC-4 §7.8, SBC-3 §6.6).
pub fn vpd_page(info: &DiskInfo, page: u8) -> Result<Vec<u8>, Sense> {
    check_vpd_page(page)?;
    let block_size = info.block_size.max(1);
    Ok(match page {
        0x00 => vpd(0x00, &VPD_PAGES),
        0x80 => vpd(0x80, &serial_bytes(info)),
        0x83 => {
            // One LU, so every initiator sees the same designators (SPC-4 §7.8.6).
            let mut d = Vec::new();
            // Binary code set, association LU, type NAA.
            designator(&mut d, 0x01, 0x03, &info.naa.to_be_bytes());
            // ASCII, association LU, type T10 vendor ID: vendor then the serial.
            let mut t10 = VENDOR.to_vec();
            t10.extend_from_slice(&serial_bytes(info));
            designator(&mut d, 0x02, 0x01, &t10);
            // Binary, association target port, relative target port 1 (we have one port).
            designator(&mut d, 0x01, 0x14, &[0, 0, 0, 1]);
            vpd(0x83, &d)
        }
        0xb0 => {
            // Block limits (SBC-3 §6.6.4): PAGE LENGTH 3Ch.
            let mut b = Vec::with_capacity(0x3c);
            b.push(0x01); // WSNZ: WRITE SAME with NUMBER OF LOGICAL BLOCKS 0 is rejected.
            b.push(0); // MAXIMUM COMPARE AND WRITE LENGTH: not supported.
            put16(&mut b, 0); // OPTIMAL TRANSFER LENGTH GRANULARITY: not reported.
            put32(&mut b, info.max_transfer_blocks);
            put32(&mut b, info.optimal_transfer_blocks);
            put32(&mut b, 0); // MAXIMUM PREFETCH LENGTH: not reported.
            if info.unmap {
                put32(&mut b, info.max_unmap_lbas);
                put32(&mut b, info.max_unmap_descriptors);
                // Host file systems free whole 4 KiB blocks; smaller holes only zero.
                put32(&mut b, (4096 / block_size).max(1));
            } else {
                put32(&mut b, 0);
                put32(&mut b, 0);
                put32(&mut b, 0);
            }
            put32(&mut b, 0); // UGAVALID=0.
            put64(&mut b, max_write_same_blocks(info));
            b.resize(0x3c, 0);
            vpd(0xb0, &b)
        }
        0xb1 => {
            // Block device characteristics (SBC-3 §6.6.2): MEDIUM ROTATION RATE 1 = non-rotating,
            // so the guest does not waste effort on seek-avoiding I/O scheduling.
            let mut b = vec![0u8; 0x3c];
            b[1] = 0x01;
            vpd(0xb1, &b)
        }
        _ => {
            // Logical block provisioning (SBC-3 §6.6.4), 0xb2.
            let mut b = vec![0u8; 4];
            if info.unmap {
                // LBPU, LBPWS, LBPWS10, LBPRZ; ANC_SUP=0, DP=0. PROVISIONING TYPE 2: thin.
                b[1] = 0x80 | 0x40 | 0x20 | 0x04;
                b[2] = 0x02;
            }
            vpd(0xb2, &b)
        }
    })
}

/// MAXIMUM WRITE SAME LENGTH as reported in VPD 0xB0; the caller rejects longer WRITE SAMEs with
/// 05/24/00 (SBC-3 §5.45).
pub fn max_write_same_blocks(info: &DiskInfo) -> u64 {
    let m = if info.unmap {
        info.max_unmap_lbas.max(info.max_transfer_blocks)
    } else {
        info.max_transfer_blocks
    };
    u64::from(m)
}

fn last_lba(info: &DiskInfo) -> u64 {
    info.num_blocks.saturating_sub(1)
}

/// READ CAPACITY(10) data (SBC-3 §5.15): FFFF_FFFFh tells the guest to use READ CAPACITY(16).
pub fn read_capacity_10(info: &DiskInfo) -> Vec<u8> {
    let mut v = Vec::with_capacity(8);
    put32(&mut v, u32::try_from(last_lba(info)).unwrap_or(u32::MAX));
    put32(&mut v, info.block_size);
    v
}

/// READ CAPACITY(16) data (SBC-3 §5.16), 32 bytes.
pub fn read_capacity_16(info: &DiskInfo) -> Vec<u8> {
    let mut v = Vec::with_capacity(32);
    put64(&mut v, last_lba(info));
    put32(&mut v, info.block_size);
    v.push(0); // No protection information.
    v.push(0); // LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT 0.
               // LBPME and LBPRZ live in the top bits of the LOWEST ALIGNED LBA word.
    v.push(if info.unmap { 0x80 | 0x40 } else { 0 });
    v.push(0);
    v.resize(32, 0);
    v
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

/// One mode page in the form selected by `pc`. Pages report PS=0: nothing can be saved.
fn mode_page(page: u8, pc: PageControl, info: &DiskInfo) -> Vec<u8> {
    let changeable = pc == PageControl::Changeable;
    match page {
        0x08 => {
            // Caching (SBC-3 §6.4.5). Only WCE may change, so MODE SELECT can toggle the write
            // cache as Linux's `cache_type` and Windows' write-caching policy do. RCD=0.
            let mut p = vec![0u8; 20];
            p[0] = 0x08;
            p[1] = 0x12;
            let wce = match pc {
                PageControl::Current => info.write_cache,
                // Default and changeable: WCE set; the daemon starts with the cache enabled.
                _ => true,
            };
            if wce {
                p[2] = 0x04;
            }
            p
        }
        0x0a => {
            // Control (SPC-4 §7.5.8): QUEUE ALGORITHM MODIFIER 1 (unrestricted reordering, as
            // queues are served in parallel), QERR 0, TST 0, D_SENSE 0. Nothing changeable.
            let mut p = vec![0u8; 12];
            p[0] = 0x0a;
            p[1] = 0x0a;
            if !changeable {
                p[3] = 0x10;
            }
            p
        }
        _ => {
            // Informational exceptions control (SPC-4 §7.5.10), 0x1c: DEXCPT=1, there is no
            // failure prediction. Nothing changeable.
            let mut p = vec![0u8; 12];
            p[0] = 0x1c;
            p[1] = 0x0a;
            if !changeable {
                p[2] = 0x08;
            }
            p
        }
    }
}

/// MODE SENSE(6)/(10) data (SPC-4 §6.11, §6.12; SBC-3 §6.4).
pub fn mode_sense(info: &DiskInfo, m: &ModeSense) -> Result<Vec<u8>, Sense> {
    check_mode_page(m.page, m.subpage)?;
    if m.pc == PageControl::Saved {
        return Err(SAVING_PARAMETERS_NOT_SUPPORTED);
    }
    let mut body = Vec::new();
    if !m.dbd {
        if m.ten && m.llbaa {
            // Long LBA block descriptor (SBC-3 §6.4.2.3).
            put64(&mut body, info.num_blocks);
            put32(&mut body, 0);
            put32(&mut body, info.block_size);
        } else {
            // Short descriptor: FFFF_FFFFh when the block count does not fit (SBC-3 §6.4.2.2).
            put32(&mut body, short_bd_blocks(info));
            body.push(0);
            body.extend_from_slice(&info.block_size.to_be_bytes()[1..]);
        }
    }
    let bd_len = body.len();
    for &p in &MODE_PAGES {
        if m.page == ALL_PAGES || m.page == p {
            body.extend_from_slice(&mode_page(p, m.pc, info));
        }
    }
    // DEVICE-SPECIFIC PARAMETER (SBC-3 §6.4.1): WP tells the truth; DPOFUA since FUA is honoured.
    let dsp = if info.read_only { 0x80 } else { 0 } | 0x10;
    let mut v = Vec::with_capacity(8 + body.len());
    if m.ten {
        put16(&mut v, sat16(body.len() + 6)); // MODE DATA LENGTH excludes itself.
        v.push(0); // MEDIUM TYPE.
        v.push(dsp);
        v.push(u8::from(m.llbaa && !m.dbd)); // LONGLBA.
        v.push(0);
        put16(&mut v, sat16(bd_len));
    } else {
        v.push(u8::try_from(body.len() + 3).unwrap_or(u8::MAX));
        v.push(0);
        v.push(dsp);
        v.push(u8::try_from(bd_len).unwrap_or(u8::MAX));
    }
    v.extend_from_slice(&body);
    Ok(v)
}

fn short_bd_blocks(info: &DiskInfo) -> u32 {
    u32::try_from(info.num_blocks).unwrap_or(u32::MAX)
}

/// What a MODE SELECT asked for; `None` fields are left as they are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModeSelectChange {
    /// New write-cache-enable, if the caching page was sent.
    pub wce: Option<bool>,
}

/// Validate a MODE SELECT(6)/(10) parameter list (SPC-4 §6.9, §6.10, §7.5). `params` is the
/// data-out buffer cut to the PARAMETER LIST LENGTH; an empty list changes nothing (SPC-4 §6.9).
///
/// Errors: truncated header, block descriptor or page => 05/1A/00; a non-changeable field that
/// differs from its current value, an unknown or subpage-format page, a wrong page length, or a
/// block descriptor other than the current geometry => 05/26/00.
pub fn parse_mode_select(
    ten: bool,
    params: &[u8],
    info: &DiskInfo,
) -> Result<ModeSelectChange, Sense> {
    let mut change = ModeSelectChange::default();
    if params.is_empty() {
        return Ok(change);
    }
    let hdr = if ten { 8 } else { 4 };
    let header = params.get(..hdr).ok_or(PARAM_LIST_LENGTH_ERROR)?;
    // MODE DATA LENGTH and DEVICE-SPECIFIC PARAMETER are reserved/ignored for MODE SELECT
    // (SPC-4 §7.5.5, SBC-3 §6.4.1); MEDIUM TYPE must be the one we report.
    let (medium, long_lba, bd_len) = if ten {
        if header[4] & !0x01 != 0 {
            return Err(INVALID_FIELD_IN_PARAM_LIST);
        }
        (
            header[2],
            header[4] & 0x01 != 0,
            get16(header, 6).unwrap_or(0),
        )
    } else {
        (header[1], false, usize::from(header[3]))
    };
    if medium != 0 {
        return Err(INVALID_FIELD_IN_PARAM_LIST);
    }
    let want_bd = if long_lba { 16 } else { 8 };
    if bd_len != 0 && bd_len != want_bd {
        return Err(INVALID_FIELD_IN_PARAM_LIST);
    }
    let bd = params
        .get(hdr..hdr + bd_len)
        .ok_or(PARAM_LIST_LENGTH_ERROR)?;
    if bd_len != 0 {
        // The geometry cannot change: NUMBER OF LOGICAL BLOCKS 0 means "keep" (SBC-3 §6.4.2).
        let (blocks, reserved_zero, blen) = if long_lba {
            (get64(bd, 0), get32(bd, 8) == Some(0), get32(bd, 12))
        } else {
            let blen = bd
                .get(4..8)
                .and_then(|s| s.try_into().ok())
                .map(u32::from_be_bytes);
            (get32(bd, 0).map(u64::from), true, blen)
        };
        let current = if long_lba {
            info.num_blocks
        } else {
            u64::from(short_bd_blocks(info))
        };
        let blocks_ok = matches!(blocks, Some(b) if b == 0 || b == current);
        // In the short form, byte 4 (reserved) is the top byte of `blen` and must be zero.
        if !blocks_ok || !reserved_zero || blen != Some(info.block_size) {
            return Err(INVALID_FIELD_IN_PARAM_LIST);
        }
    }
    let mut rest = params.get(hdr + bd_len..).unwrap_or(&[]);
    while let Some(&code) = rest.first() {
        // PS is reserved in MODE SELECT and ignored (Linux copies it from MODE SENSE); SPF=1
        // would be a subpage, of which we have none.
        if code & 0x40 != 0 {
            return Err(INVALID_FIELD_IN_PARAM_LIST);
        }
        let page = code & 0x3f;
        let &len = rest.get(1).ok_or(PARAM_LIST_LENGTH_ERROR)?;
        let given = rest
            .get(..2 + usize::from(len))
            .ok_or(PARAM_LIST_LENGTH_ERROR)?;
        if !MODE_PAGES.contains(&page) {
            return Err(INVALID_FIELD_IN_PARAM_LIST);
        }
        let current = mode_page(page, PageControl::Current, info);
        let mask = mode_page(page, PageControl::Changeable, info);
        if given.len() != current.len() {
            return Err(INVALID_FIELD_IN_PARAM_LIST);
        }
        let differs = given
            .iter()
            .zip(&current)
            .zip(&mask)
            .skip(2)
            .any(|((g, c), m)| (g ^ c) & !m != 0);
        if differs {
            return Err(INVALID_FIELD_IN_PARAM_LIST);
        }
        if page == 0x08 {
            change.wce = given.get(2).map(|b| b & 0x04 != 0);
        }
        rest = rest.get(given.len()..).unwrap_or(&[]);
    }
    Ok(change)
}

/// REPORT LUNS data (SPC-4 §6.33): only LUN 0 exists. SELECT REPORT 1 asks for well-known LUNs
/// only, of which we have none.
pub fn report_luns(select_report: u8) -> Vec<u8> {
    let luns: &[[u8; 8]] = if select_report == 1 { &[] } else { &[[0; 8]] };
    let mut v = Vec::with_capacity(8 + 8 * luns.len());
    put32(&mut v, sat32(8 * luns.len()));
    put32(&mut v, 0);
    for l in luns {
        v.extend_from_slice(l);
    }
    v
}

/// Whether the disk offers this command (UNMAP only with unmap support).
pub fn op_enabled(e: &OpInfo, info: &DiskInfo) -> bool {
    !e.needs_unmap || info.unmap
}

/// Command timeouts descriptor (SPC-4 §6.35.4): length 0Ah, timeouts 0 = not specified.
const TIMEOUTS_DESCRIPTOR: [u8; 12] = [0, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// REPORT SUPPORTED OPERATION CODES data (SPC-4 §6.35), from the same table `parse` uses.
pub fn report_supported_opcodes(info: &DiskInfo, r: &ReportOpcodes) -> Result<Vec<u8>, Sense> {
    check_report_opcodes(r)?;
    let enabled = SUPPORTED_OPS.iter().filter(|e| op_enabled(e, info));
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

/// REQUEST SENSE data (SPC-4 §6.39): the pending sense, or NO SENSE; fixed format (70h) unless
/// DESC=1 asks for descriptor format (72h, SPC-4 §4.5.2) with no descriptors.
pub fn request_sense(pending: Option<Sense>, desc: bool) -> Vec<u8> {
    let s = pending.unwrap_or(NO_SENSE);
    if desc {
        vec![0x72, s.key & 0x0f, s.asc, s.ascq, 0, 0, 0, 0]
    } else {
        s.to_fixed().to_vec()
    }
}

/// UNMAP parameter list (SBC-3 §5.28.2) as (LBA, blocks) pairs, zero-length descriptors dropped.
/// The caller range-checks each pair with [`check_range`].
///
/// Errors: unmap unsupported => 05/20/00 (LBPU=0, as LIO does); a list of 1..=7 bytes, or one
/// shorter than its UNMAP BLOCK DESCRIPTOR DATA LENGTH => 05/1A/00; more descriptors than
/// MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT or more blocks than MAXIMUM UNMAP LBA COUNT => 05/26/00.
/// A partial trailing descriptor is ignored, as SBC-3 requires.
pub fn parse_unmap(params: &[u8], info: &DiskInfo) -> Result<Vec<(u64, u32)>, Sense> {
    if !info.unmap {
        return Err(INVALID_OPCODE);
    }
    if params.is_empty() {
        return Ok(Vec::new());
    }
    // UNMAP DATA LENGTH (bytes 0-1) is informational only; SBC-3 only says it "should" match.
    let bd_len = get16(params, 2).ok_or(PARAM_LIST_LENGTH_ERROR)?;
    if params.len() < 8 {
        return Err(PARAM_LIST_LENGTH_ERROR);
    }
    let descs = params.get(8..8 + bd_len).ok_or(PARAM_LIST_LENGTH_ERROR)?;
    let count = descs.len() / 16;
    if u32::try_from(count).unwrap_or(u32::MAX) > info.max_unmap_descriptors {
        return Err(INVALID_FIELD_IN_PARAM_LIST);
    }
    let mut out = Vec::with_capacity(count);
    let mut total: u64 = 0;
    for d in descs.chunks_exact(16) {
        let lba = get64(d, 0).ok_or(PARAM_LIST_LENGTH_ERROR)?;
        let blocks = get32(d, 8).ok_or(PARAM_LIST_LENGTH_ERROR)?;
        total = total.saturating_add(u64::from(blocks));
        if total > u64::from(info.max_unmap_lbas) {
            return Err(INVALID_FIELD_IN_PARAM_LIST);
        }
        if blocks != 0 {
            out.push((lba, blocks));
        }
    }
    Ok(out)
}

/// 05/21/00 unless `lba..lba+blocks` lies on the medium (SBC-3 §4.5). The LBA itself must exist
/// even for a zero-length transfer.
pub fn check_range(lba: u64, blocks: u64, num_blocks: u64) -> Result<(), Sense> {
    match lba.checked_add(blocks) {
        Some(end) if end <= num_blocks && lba < num_blocks => Ok(()),
        _ => Err(LBA_OUT_OF_RANGE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::cdb::{self, tests::sample_cdb, Command};
    use crate::sense::*;
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
        assert_eq!(u64::from_be_bytes(b0[36..44].try_into().unwrap()), 1 << 20);
        let no = DiskInfo {
            unmap: false,
            ..info()
        };
        let b0 = vpd_page(&no, 0xb0).unwrap();
        assert_eq!(&b0[20..36], &[0; 16]);
        assert_eq!(u64::from_be_bytes(b0[36..44].try_into().unwrap()), 4096);

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

    fn rsoc(
        info: &DiskInfo,
        rctd: bool,
        options: u8,
        opcode: u8,
        sa: u16,
    ) -> Result<Vec<u8>, Sense> {
        let r = cdb::ReportOpcodes {
            rctd,
            options,
            opcode,
            service_action: sa,
            alloc_len: 0,
        };
        report_supported_opcodes(info, &r)
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
                        report_supported_opcodes(i, &r).unwrap();
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
            let _ = report_supported_opcodes(i, &r);
        }
    }
}

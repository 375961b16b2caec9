//! Data-in builders (INQUIRY, VPD, READ CAPACITY, MODE SENSE, REPORT LUNS, REQUEST SENSE) and
//! data-out parsers (MODE SELECT, UNMAP). The tables of the pages we implement, and their
//! checks, are the decoder's (`cdb`); the builders check again because they are public.
//!
//! Builders return the full data; the caller truncates it to the ALLOCATION LENGTH, which SPC-4
//! §4.2.5.6 says must never change the length fields inside. Parsers take guest bytes and bound
//! every loop and allocation by the bytes actually present.

pub use crate::lun::naa_from_serial;
use crate::lun::SERIAL_LEN;
use crate::scsi::cdb::{
    check_mode_page, check_vpd_page, ModeSense, PageControl, ALL_PAGES, MODE_PAGES, VPD_PAGES,
};
use crate::scsi::fields::{get16, get32, get64, put16, put32, put64, sat16, sat32};
use crate::scsi::sense::{
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
    /// MAXIMUM WRITE SAME LENGTH.
    pub max_write_same_blocks: u32,
    /// MAXIMUM COMPARE AND WRITE LENGTH; 0 where COMPARE AND WRITE is not offered (cluster
    /// mode, a read-only disk).
    pub max_compare_and_write_blocks: u8,
}

/// T10 vendor identification (SPC-4 §6.4.2): 8 ASCII bytes.
pub const VENDOR: &[u8; 8] = b"SHAREDSK";
/// PRODUCT IDENTIFICATION: 16 ASCII bytes, space padded.
pub const PRODUCT: &[u8; 16] = b"sharedisk       ";

/// Peripheral device type 0: direct access block device (SPC-4 table 139).
const PDT_DISK: u8 = 0x00;

/// The serial as reported: printable ASCII only, at most [`SERIAL_LEN`] bytes (the virtio-blk ID
/// size).
fn serial_bytes(info: &DiskInfo) -> Vec<u8> {
    info.serial
        .bytes()
        .filter(|b| (0x20..0x7f).contains(b))
        .take(SERIAL_LEN)
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
            b.push(info.max_compare_and_write_blocks);
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

impl DiskInfo {
    /// The optional commands this description offers (REPORT SUPPORTED OPERATION CODES).
    pub fn features(&self) -> crate::scsi::cdb::Features {
        crate::scsi::cdb::Features {
            unmap: self.unmap,
            compare_and_write: self.max_compare_and_write_blocks > 0,
        }
    }
}

/// MAXIMUM WRITE SAME LENGTH as reported in VPD 0xB0; the caller rejects longer WRITE SAMEs with
/// 05/24/00 (SBC-3 §5.45).
pub fn max_write_same_blocks(info: &DiskInfo) -> u64 {
    u64::from(info.max_write_same_blocks)
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
            get16(header, 6).map(usize::from).unwrap_or(0),
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
    let bd_len = get16(params, 2)
        .map(usize::from)
        .ok_or(PARAM_LIST_LENGTH_ERROR)?;
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
mod tests;

//! iSCSI PDU framing (RFC 7143 §11.2): the 48-byte Basic Header Segment, the optional AHS,
//! header and data digests (CRC32C, little-endian on the wire) and the padded data segment.
//! Lengths from the wire are checked against caps before anything is allocated.

use std::io::{self, Read, Write};

use crate::scsi::fields::get32;

/// Basic Header Segment length.
pub const BHS_LEN: usize = 48;
/// The largest AHS we read (TotalAHSLength is in 4-byte words; 255 words is the field's
/// maximum, so this only bounds the allocation).
const MAX_AHS: usize = 255 * 4;
/// The reserved Initiator Task Tag / Target Transfer Tag.
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// Opcodes, initiator to target (RFC 7143 §11.2.1.2).
pub mod op {
    pub const NOP_OUT: u8 = 0x00;
    pub const SCSI_COMMAND: u8 = 0x01;
    pub const TMF_REQUEST: u8 = 0x02;
    pub const LOGIN_REQUEST: u8 = 0x03;
    pub const TEXT_REQUEST: u8 = 0x04;
    pub const DATA_OUT: u8 = 0x05;
    pub const LOGOUT_REQUEST: u8 = 0x06;
    pub const SNACK: u8 = 0x10;
    /// Target to initiator.
    pub const NOP_IN: u8 = 0x20;
    pub const SCSI_RESPONSE: u8 = 0x21;
    pub const TMF_RESPONSE: u8 = 0x22;
    pub const LOGIN_RESPONSE: u8 = 0x23;
    pub const TEXT_RESPONSE: u8 = 0x24;
    pub const DATA_IN: u8 = 0x25;
    pub const LOGOUT_RESPONSE: u8 = 0x26;
    pub const R2T: u8 = 0x31;
    pub const REJECT: u8 = 0x3f;
}

/// Why a PDU could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PduError {
    /// The connection failed or closed.
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    /// The header digest did not match: the lengths in it cannot be trusted.
    #[error("header digest mismatch")]
    HeaderDigest,
    /// The data digest did not match.
    #[error("data digest mismatch")]
    DataDigest,
    /// DataSegmentLength is above what this target declared it receives.
    #[error("data segment of {len} bytes exceeds the {max} declared")]
    TooLong { len: usize, max: usize },
}

/// Which digests a connection uses (negotiated at login, in force after it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

/// One PDU as read: its header, additional header segments and data (padding removed).
#[derive(Clone, Debug)]
pub struct Pdu {
    pub bhs: [u8; BHS_LEN],
    pub ahs: Vec<u8>,
    pub data: Vec<u8>,
}

impl Pdu {
    pub fn opcode(&self) -> u8 {
        self.bhs[0] & 0x3f
    }

    /// The I bit: an immediate request (does not advance CmdSN).
    pub fn immediate(&self) -> bool {
        self.bhs[0] & 0x40 != 0
    }

    /// Byte 1: F and the opcode-specific flags.
    pub fn flags(&self) -> u8 {
        self.bhs[1]
    }

    pub fn final_bit(&self) -> bool {
        self.bhs[1] & 0x80 != 0
    }

    pub fn lun(&self) -> [u8; 8] {
        let mut l = [0; 8];
        l.copy_from_slice(&self.bhs[8..16]);
        l
    }

    pub fn itt(&self) -> u32 {
        self.u32_at(16)
    }

    /// The big-endian word at byte `at` of the BHS.
    pub fn u32_at(&self, at: usize) -> u32 {
        get32(&self.bhs, at).unwrap_or(0)
    }

    pub fn cmd_sn(&self) -> u32 {
        self.u32_at(24)
    }
}

/// CRC32C as iSCSI computes it (RFC 7143 §13.1; Castagnoli, reflected, all-ones seed and xor).
pub fn crc32c(parts: &[&[u8]]) -> u32 {
    parts.iter().fold(0, |crc, p| crc32c::crc32c_append(crc, p))
}

fn pad_len(n: usize) -> usize {
    (4 - n % 4) % 4
}

/// The bytes on the wire of the PDU whose BHS starts `bhs` (at least [`BHS_LEN`] bytes): the
/// BHS, AHS, digests in force and padded data segment.
pub fn wire_len(bhs: &[u8], digests: Digests) -> usize {
    let ahs_len = usize::from(bhs[4]) * 4;
    let data_len = (usize::from(bhs[5]) << 16) | (usize::from(bhs[6]) << 8) | usize::from(bhs[7]);
    let digest = |on: bool| if on { 4 } else { 0 };
    BHS_LEN
        + ahs_len
        + digest(digests.header)
        + data_len
        + pad_len(data_len)
        + digest(digests.data && data_len > 0)
}

/// Reads one PDU. `max_data` caps DataSegmentLength (what this target declared).
pub fn read_pdu(r: &mut impl Read, digests: Digests, max_data: usize) -> Result<Pdu, PduError> {
    let mut bhs = [0u8; BHS_LEN];
    r.read_exact(&mut bhs)?;
    let ahs_len = usize::from(bhs[4]) * 4;
    let data_len = (usize::from(bhs[5]) << 16) | (usize::from(bhs[6]) << 8) | usize::from(bhs[7]);
    let mut ahs = vec![0u8; ahs_len.min(MAX_AHS)];
    r.read_exact(&mut ahs)?;
    if digests.header {
        let mut d = [0u8; 4];
        r.read_exact(&mut d)?;
        if u32::from_le_bytes(d) != crc32c(&[&bhs, &ahs]) {
            return Err(PduError::HeaderDigest);
        }
    }
    if data_len > max_data {
        return Err(PduError::TooLong {
            len: data_len,
            max: max_data,
        });
    }
    let mut data = vec![0u8; data_len + pad_len(data_len)];
    r.read_exact(&mut data)?;
    if digests.data && data_len > 0 {
        let mut d = [0u8; 4];
        r.read_exact(&mut d)?;
        if u32::from_le_bytes(d) != crc32c(&[&data]) {
            return Err(PduError::DataDigest);
        }
    }
    data.truncate(data_len);
    Ok(Pdu { bhs, ahs, data })
}

/// One PDU's bytes around its data segment: the BHS with its header digest, and the padding
/// with the data digest, as [`frame`] lays them out for the wire.
pub struct Framed {
    head: [u8; BHS_LEN + 4],
    head_len: usize,
    tail: [u8; 7],
    tail_len: usize,
}

impl Framed {
    /// The BHS (DataSegmentLength set) and its digest when in force.
    pub fn head(&self) -> &[u8] {
        &self.head[..self.head_len]
    }

    /// The padding after the data, and its digest when in force.
    pub fn tail(&self) -> &[u8] {
        &self.tail[..self.tail_len]
    }
}

/// Frames one PDU whose data segment is `data` (at most 16 MiB − 1 bytes of it are sent: the
/// field's maximum): sets DataSegmentLength in `bhs` and computes the digests in force.
pub fn frame(mut bhs: [u8; BHS_LEN], data: &[u8], digests: Digests) -> Framed {
    let len = data.len().min(0x00ff_ffff);
    bhs[4] = 0;
    bhs[5] = (len >> 16) as u8;
    bhs[6] = (len >> 8) as u8;
    bhs[7] = len as u8;
    let mut f = Framed {
        head: [0; BHS_LEN + 4],
        head_len: BHS_LEN,
        tail: [0; 7],
        tail_len: pad_len(len),
    };
    f.head[..BHS_LEN].copy_from_slice(&bhs);
    if digests.header {
        f.head[BHS_LEN..].copy_from_slice(&crc32c(&[&bhs]).to_le_bytes());
        f.head_len += 4;
    }
    if digests.data && len > 0 {
        let pad = [0u8; 3];
        let crc = crc32c(&[&data[..len], &pad[..f.tail_len]]);
        f.tail[f.tail_len..f.tail_len + 4].copy_from_slice(&crc.to_le_bytes());
        f.tail_len += 4;
    }
    f
}

/// The part of `data` a PDU framed by [`frame`] carries.
pub fn segment(data: &[u8]) -> &[u8] {
    &data[..data.len().min(0x00ff_ffff)]
}

/// Writes one PDU: `bhs` (its DataSegmentLength is set here from `data`), the digests in force
/// and the padded data, in one write.
pub fn write_pdu(
    w: &mut impl Write,
    bhs: [u8; BHS_LEN],
    data: &[u8],
    digests: Digests,
) -> io::Result<()> {
    let f = frame(bhs, data, digests);
    let data = segment(data);
    let mut out = Vec::with_capacity(f.head().len() + data.len() + f.tail().len());
    out.extend_from_slice(f.head());
    out.extend_from_slice(data);
    out.extend_from_slice(f.tail());
    w.write_all(&out)
}

/// A response header: opcode, flags byte, ITT, and zeros elsewhere.
pub fn header(opcode: u8, flags: u8, itt: u32) -> [u8; BHS_LEN] {
    let mut b = [0u8; BHS_LEN];
    b[0] = opcode;
    b[1] = flags;
    put(&mut b, 16, itt);
    b
}

/// Stores `v` big-endian at byte `at` of a header.
pub fn put(b: &mut [u8; BHS_LEN], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// Serial number arithmetic (RFC 1982, 32 bits): whether `a` comes before `b`.
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 0x8000_0000
}

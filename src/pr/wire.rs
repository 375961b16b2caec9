//! Wire formats of PERSISTENT RESERVE IN/OUT (SPC-4 §6.15, §6.16) and iSCSI TransportIDs
//! (SPC-4 §7.6.4.6). Pure functions over byte slices: every length the guest sends is checked
//! before it is used, so hostile input yields sense data, never a panic.

use super::arbiter::{Arbiter, Holder, ProutRequest, ServiceAction};
use crate::scsi::fields::{get16, get32, get64};
use crate::scsi::sense::{self, Sense};

pub const PRIN_OPCODE: u8 = 0x5e;
pub const PROUT_OPCODE: u8 = 0x5f;

/// Prefix of the iSCSI names we derive from initiator (guest) names: stable across restarts
/// and distinct per guest, which is all READ FULL STATUS needs.
pub const IQN_PREFIX: &str = "iqn.2026-11.io.sharedisk:";

/// Protocol identifier for iSCSI (SPC-4 §7.6.1, table 444).
const PROTOCOL_ISCSI: u8 = 0x5;

/// The fixed PR OUT parameter list length (SPC-4 §6.16.3).
const BASIC_LIST_LEN: usize = 24;

/// The relative target port identifier of our one and only target port.
const RELATIVE_TARGET_PORT: u16 = 1;

/// Decodes a PERSISTENT RESERVE OUT CDB and its data-out buffer (SPC-4 §6.16).
///
/// `resolve` maps the initiator name a REGISTER AND MOVE TransportID carries to the name the
/// arbiter knows it by (`None` if there is no such initiator); the arbiter then rejects a
/// missing target with 05/26/00 after its registration checks.
pub fn parse_prout(
    cdb: &[u8],
    params: &[u8],
    resolve: impl Fn(&str) -> Option<String>,
) -> Result<ProutRequest, Sense> {
    // SPC-4 §6.16.1: the CDB is 10 bytes; a shorter one leaves fields undefined.
    if cdb.len() < 10 {
        return Err(sense::INVALID_FIELD_IN_CDB);
    }
    if cdb[0] != PROUT_OPCODE {
        return Err(sense::INVALID_OPCODE);
    }
    // SPC-4 §6.16.2: service actions beyond REGISTER AND MOVE are not supported.
    let action = ServiceAction::from_code(cdb[1] & 0x1f).ok_or(sense::INVALID_FIELD_IN_CDB)?;
    let scope = cdb[2] >> 4;
    let res_type = cdb[2] & 0x0f;
    let plen = get32(cdb, 5).ok_or(sense::INVALID_FIELD_IN_CDB)?;
    // SPC-4 §6.16.1: the initiator must actually send PARAMETER LIST LENGTH bytes.
    let plen = usize::try_from(plen).map_err(|_| sense::PARAM_LIST_LENGTH_ERROR)?;
    let list = params.get(..plen).ok_or(sense::PARAM_LIST_LENGTH_ERROR)?;

    let mut req = ProutRequest::new(action).scope(scope).res_type(res_type);

    if action != ServiceAction::RegisterAndMove {
        // SPC-4 §6.16.3: with SPEC_I_PT=0 the list is exactly 24 bytes. A longer list with
        // SPEC_I_PT=1 is decoded only far enough for the arbiter to reject SPEC_I_PT with
        // 05/26/00 (SIP_C=0), the more telling error.
        if list.len() < BASIC_LIST_LEN {
            return Err(sense::PARAM_LIST_LENGTH_ERROR);
        }
        let flags = list[20];
        let spec_i_pt = flags & 0x08 != 0;
        if list.len() != BASIC_LIST_LEN && !spec_i_pt {
            return Err(sense::PARAM_LIST_LENGTH_ERROR);
        }
        req.key = get64(list, 0).ok_or(sense::PARAM_LIST_LENGTH_ERROR)?;
        req.sa_key = get64(list, 8).ok_or(sense::PARAM_LIST_LENGTH_ERROR)?;
        req.spec_i_pt = spec_i_pt;
        req.all_tg_pt = flags & 0x04 != 0;
        req.aptpl = flags & 0x01 != 0;
        return Ok(req);
    }

    // SPC-4 §6.16.4: REGISTER AND MOVE list: a 24-byte header, then the TransportID.
    if list.len() < BASIC_LIST_LEN {
        return Err(sense::PARAM_LIST_LENGTH_ERROR);
    }
    req.key = get64(list, 0).ok_or(sense::PARAM_LIST_LENGTH_ERROR)?;
    req.sa_key = get64(list, 8).ok_or(sense::PARAM_LIST_LENGTH_ERROR)?;
    req.unreg = list[17] & 0x02 != 0;
    req.aptpl = list[17] & 0x01 != 0;
    // Bytes 18-19, RELATIVE TARGET PORT IDENTIFIER: with a single target port any value
    // names it (sg_persist sends 0 unless told otherwise), so it is not checked.
    let tid_len = get32(list, 20).ok_or(sense::PARAM_LIST_LENGTH_ERROR)?;
    // SPC-4 §6.16.4: TRANSPORTID PARAMETER DATA LENGTH must account for exactly the rest of
    // the list; a TransportID truncated (or padded) by the list length is a length error.
    // Compared in u64 so a hostile 0xFFFF_FFFF cannot overflow.
    if u64::from(tid_len) + BASIC_LIST_LEN as u64 != list.len() as u64 {
        return Err(sense::PARAM_LIST_LENGTH_ERROR);
    }
    let tid = &list[BASIC_LIST_LEN..];
    req.move_to = parse_transport_id(tid).and_then(|name| resolve(&name));
    Ok(req)
}

/// Marks the arbiter's name of an iSCSI session's I_T nexus (`<name>,i,0x<ISID>`, see
/// `crate::transport::iscsi::nexus_name`); guest names never contain it.
const ISCSI_PORT_MARK: &str = ",i,0x";

/// Whether `name` is one an initiator of this daemon can have: a guest's name, or an iSCSI
/// session's nexus (`<iSCSI name, lower-cased>,i,0x<ISID, 12 lower-case hex digits>`). State
/// read from elsewhere (another daemon, through etcd) is checked with it.
pub fn valid_initiator(name: &str) -> bool {
    match name.split_once(ISCSI_PORT_MARK) {
        None => crate::config::valid_guest_name(name),
        Some((iscsi, isid)) => {
            crate::config::valid_iscsi_name(iscsi)
                && !iscsi.bytes().any(|b| b.is_ascii_uppercase())
                && isid.len() == 12
                && isid
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }
    }
}

/// The iSCSI TransportID (SPC-4 §7.6.4.6) that names `initiator` in READ FULL STATUS: for a
/// guest, format 00b `iqn.2026-11.io.sharedisk:<guest>`; for an iSCSI session's nexus, format
/// 01b `<initiator name>,i,0x<ISID>`. Null-terminated, padded to a multiple of 4 and to at
/// least 24 bytes.
pub fn transport_id(initiator: &str) -> Vec<u8> {
    let port = initiator.contains(ISCSI_PORT_MARK);
    let mut name = Vec::with_capacity(IQN_PREFIX.len() + initiator.len() + 4);
    if !port {
        name.extend_from_slice(IQN_PREFIX.as_bytes());
    }
    name.extend_from_slice(initiator.as_bytes());
    // ADDITIONAL LENGTH is 16 bits and a multiple of 4: cap the name (terminator included) so
    // an absurd initiator name cannot wrap it.
    name.truncate(usize::from(u16::MAX) - 4);
    name.push(0);
    // SPC-4 §7.6.4.6: ADDITIONAL LENGTH is at least 20 and a multiple of 4.
    let padded = name.len().div_ceil(4).saturating_mul(4).max(20);
    name.resize(padded, 0);
    let addl = u16::try_from(padded).unwrap_or(0xfffc);
    let mut out = Vec::with_capacity(4 + padded);
    // FORMAT CODE 00b (device name) or 01b (port name), PROTOCOL IDENTIFIER 5.
    out.push(if port { 0x40 } else { 0 } | PROTOCOL_ISCSI);
    out.push(0);
    out.extend_from_slice(&addl.to_be_bytes());
    out.extend_from_slice(&name);
    out
}

/// The initiator an iSCSI TransportID names (SPC-4 §7.6.4.6), formats 00b (name) and 01b
/// (name + ",i,0x" + ISID): a guest (our prefix), or an iSCSI session's nexus (format 01b with
/// any other name); `None` for anything malformed.
pub fn parse_transport_id(bytes: &[u8]) -> Option<String> {
    let head = bytes.get(..4)?;
    if head[0] & 0x0f != PROTOCOL_ISCSI {
        return None;
    }
    let format = head[0] >> 6;
    let addl = usize::from(get16(head, 2)?);
    // SPC-4 §7.6.4.6: ADDITIONAL LENGTH is a multiple of 4 and lies within the TransportID.
    if !addl.is_multiple_of(4) {
        return None;
    }
    let body = bytes.get(4..4 + addl)?;
    // The iSCSI name is null-terminated within ADDITIONAL LENGTH.
    let nul = body.iter().position(|&b| b == 0)?;
    let text = std::str::from_utf8(&body[..nul]).ok()?;
    match format {
        // A device name: one of our guests (our prefix), nobody else.
        0 => {
            let guest = text.strip_prefix(IQN_PREFIX)?;
            (!guest.is_empty()).then(|| guest.to_owned())
        }
        // SPC-4 §7.6.4.6: "<name>,i,0x<ISID in hex>", an iSCSI initiator port: the nexus name
        // its session has (lower-cased), whatever the name (a guest's TransportID is never a
        // port name, so an initiator named like a guest stays an iSCSI nexus).
        1 => {
            let (name, isid) = text.split_once(ISCSI_PORT_MARK)?;
            let isid_ok = isid.len() == 12 && isid.bytes().all(|b| b.is_ascii_hexdigit());
            (isid_ok && !name.is_empty()).then(|| {
                format!(
                    "{}{ISCSI_PORT_MARK}{}",
                    name.to_ascii_lowercase(),
                    isid.to_ascii_lowercase()
                )
            })
        }
        _ => None,
    }
}

/// Executes a PERSISTENT RESERVE IN (SPC-4 §6.15): the whole response, cut to ALLOCATION
/// LENGTH. The length fields always describe the untruncated data (SPC-4 §4.2.5.6), so a
/// guest can size its next request.
pub fn prin(arb: &Arbiter, cdb: &[u8]) -> Result<Vec<u8>, Sense> {
    // SPC-4 §6.15.1: the CDB is 10 bytes.
    if cdb.len() < 10 {
        return Err(sense::INVALID_FIELD_IN_CDB);
    }
    if cdb[0] != PRIN_OPCODE {
        return Err(sense::INVALID_OPCODE);
    }
    let alloc = usize::from(get16(cdb, 7).ok_or(sense::INVALID_FIELD_IN_CDB)?);
    let mut out = match cdb[1] & 0x1f {
        0 => read_keys(arb),
        1 => read_reservation(arb),
        2 => report_capabilities(arb),
        3 => read_full_status(arb),
        // SPC-4 §6.15.1: unknown service action.
        _ => return Err(sense::INVALID_FIELD_IN_CDB),
    };
    out.truncate(alloc);
    Ok(out)
}

/// A 32-bit length field; saturates rather than wrapping (cannot happen with 128 entries).
fn len32(n: usize) -> [u8; 4] {
    u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes()
}

/// READ KEYS (SPC-4 §6.15.2): PRgeneration, ADDITIONAL LENGTH, the keys in registration order.
fn read_keys(arb: &Arbiter) -> Vec<u8> {
    let regs = arb.registrations();
    let mut out = Vec::with_capacity(8 + 8 * regs.len());
    out.extend_from_slice(&arb.generation().to_be_bytes());
    out.extend_from_slice(&len32(8 * regs.len()));
    for r in regs {
        out.extend_from_slice(&r.key.to_be_bytes());
    }
    out
}

/// READ RESERVATION (SPC-4 §6.15.3): header, then a 16-byte descriptor if reserved.
fn read_reservation(arb: &Arbiter) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    out.extend_from_slice(&arb.generation().to_be_bytes());
    let Some(res) = arb.reservation() else {
        out.extend_from_slice(&0u32.to_be_bytes());
        return out;
    };
    out.extend_from_slice(&16u32.to_be_bytes());
    // SPC-4 §6.15.3: for all-registrants types the RESERVATION KEY is zero.
    let key = match &res.holder {
        Holder::Initiator(h) => arb.key_of(h).unwrap_or(0),
        Holder::AllRegistrants => 0,
    };
    out.extend_from_slice(&key.to_be_bytes()); // bytes 8-15
    out.extend_from_slice(&[0; 4]); // 16-19 obsolete
    out.push(0); // 20 reserved
    out.push(res.res_type.code() & 0x0f); // 21: SCOPE 0 (LU_SCOPE) | TYPE
    out.extend_from_slice(&[0; 2]); // 22-23 obsolete
    out
}

/// REPORT CAPABILITIES (SPC-4 §6.15.4).
fn report_capabilities(arb: &Arbiter) -> Vec<u8> {
    // Byte 2: CRH (bit 4) SIP_C=0 (bit 3) ATP_C (bit 2) PTPL_C (bit 0).
    let b2 = 0x10 | 0x04 | 0x01;
    // Byte 3: TMV (bit 7), ALLOW COMMANDS 001b (bits 6-4), PTPL_A (bit 0).
    let b3 = 0x80 | (0b001 << 4) | u8::from(arb.aptpl());
    // Bytes 4-5: PERSISTENT RESERVATION TYPE MASK, all six types.
    let b4 = 0x80 | 0x40 | 0x20 | 0x08 | 0x02; // WR_EX_AR EX_AC_RO WR_EX_RO EX_AC WR_EX
    let b5 = 0x01; // EX_AC_AR
    vec![0, 8, b2, b3, b4, b5, 0, 0]
}

/// READ FULL STATUS (SPC-4 §6.15.5): one descriptor per registration.
fn read_full_status(arb: &Arbiter) -> Vec<u8> {
    let mut descs = Vec::new();
    for r in arb.registrations() {
        let holder = arb.is_holder(&r.initiator);
        let tid = transport_id(&r.initiator);
        descs.extend_from_slice(&r.key.to_be_bytes()); // 0-7
        descs.extend_from_slice(&[0; 4]); // 8-11 reserved
                                          // Byte 12: ALL_TG_PT (bit 1) is reported 0: with one port the registration is simply
                                          // on port 1 either way. R_HOLDER is bit 0.
        descs.push(u8::from(holder));
        // Byte 13: SCOPE | TYPE, meaningful only for a holder.
        descs.push(match (holder, arb.reservation()) {
            (true, Some(res)) => res.res_type.code() & 0x0f,
            _ => 0,
        });
        descs.extend_from_slice(&[0; 4]); // 14-17 reserved
        descs.extend_from_slice(&RELATIVE_TARGET_PORT.to_be_bytes()); // 18-19
        descs.extend_from_slice(&len32(tid.len())); // 20-23 ADDITIONAL DESCRIPTOR LENGTH
        descs.extend_from_slice(&tid);
    }
    let mut out = Vec::with_capacity(8 + descs.len());
    out.extend_from_slice(&arb.generation().to_be_bytes());
    out.extend_from_slice(&len32(descs.len()));
    out.extend_from_slice(&descs);
    out
}

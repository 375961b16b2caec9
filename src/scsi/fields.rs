//! Big-endian fields, the byte order of every SCSI CDB, parameter list and data-in field
//! (SPC-4 §3.5.1): bounded reads of guest bytes and appends to data being built.

/// The 16-bit field at `at`, if `b` holds all of it.
pub fn get16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

/// The 32-bit field at `at`, if `b` holds all of it.
pub fn get32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at.checked_add(4)?)?
        .try_into()
        .ok()
        .map(u32::from_be_bytes)
}

/// The 64-bit field at `at`, if `b` holds all of it.
pub fn get64(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at.checked_add(8)?)?
        .try_into()
        .ok()
        .map(u64::from_be_bytes)
}

pub fn put16(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_be_bytes());
}

pub fn put32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_be_bytes());
}

pub fn put64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_be_bytes());
}

/// A length as a 16-bit field, saturated.
pub fn sat16(x: usize) -> u16 {
    u16::try_from(x).unwrap_or(u16::MAX)
}

/// A length as a 32-bit field, saturated.
pub fn sat32(x: usize) -> u32 {
    u32::try_from(x).unwrap_or(u32::MAX)
}

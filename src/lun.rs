//! The logical unit: the one disk every guest and both device types share.

use std::path::Path;

use crate::image::Image;
use crate::reservations::Reservations;

/// Length of the virtio-blk serial (VIRTIO_BLK_ID_BYTES), also used as the SCSI unit serial.
pub const SERIAL_LEN: usize = 20;

pub struct Lun {
    pub image: Box<dyn Image>,
    pub reservations: Reservations,
    /// The disk's identity, identical for every guest and stable across restarts.
    pub serial: String,
}

impl Lun {
    pub fn new(image: Box<dyn Image>, reservations: Reservations, canonical_path: &Path) -> Self {
        let id = fnv1a(canonical_path.as_os_str().as_encoded_bytes());
        Lun {
            image,
            reservations,
            serial: serial_for(id),
        }
    }
}

/// `sharedisk-` and ten hex digits: exactly 20 bytes, printable, stable for a given image path.
pub fn serial_for(id: u64) -> String {
    format!("sharedisk-{:010x}", id & 0xff_ffff_ffff)
}

/// FNV-1a: a stable hash that does not change between Rust releases, unlike `DefaultHasher`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
#[path = "tests/lun.rs"]
mod tests;

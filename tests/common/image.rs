//! The image file as the host sees it, and the data tests write to it.

use std::os::unix::fs::FileExt;
use std::path::Path;

/// Reads `len` bytes of `image` at byte `offset`.
pub fn image_bytes(image: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open(image).unwrap();
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset).unwrap();
    buf
}

/// `len` bytes counting up from `seed` (mod 251, so a shifted copy differs), never zero.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i % 251) as u8) | 1)
        .collect()
}

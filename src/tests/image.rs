//! Unit tests of `image`.

use super::*;

fn image(size: u64) -> (tempfile::TempDir, FileImage) {
    let dir = tempfile::tempdir().unwrap();
    let img = FileImage::open(&dir.path().join("d.img"), Some(size), false).unwrap();
    (dir, img)
}

#[test]
fn missing_image_without_size_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = FileImage::open(&dir.path().join("nope.img"), None, false)
        .err()
        .unwrap();
    assert!(err.to_string().contains("--size"), "{err}");
}

#[test]
fn second_open_is_refused_by_the_lock() {
    let (dir, _img) = image(4096);
    let err = FileImage::open(&dir.path().join("d.img"), None, false)
        .err()
        .unwrap();
    assert!(err.to_string().contains("locked"), "{err}");
}

#[test]
fn vectored_write_then_read() {
    let (_d, img) = image(1 << 20);
    let mut a = vec![1u8; 512];
    let mut b = vec![2u8; 1024];
    img.write_at(&[Buf::from(&mut a[..]), Buf::from(&mut b[..])], 4096, false)
        .unwrap();
    let mut out = vec![0u8; 1536];
    img.read_at(&[Buf::from(&mut out[..])], 4096).unwrap();
    assert!(out[..512].iter().all(|&x| x == 1));
    assert!(out[512..].iter().all(|&x| x == 2));
}

#[test]
fn out_of_range_and_overflow_are_refused() {
    let (_d, img) = image(8192);
    let mut buf = vec![0u8; 512];
    assert!(img.read_at(&[Buf::from(&mut buf[..])], 8192 - 256).is_err());
    assert!(img
        .write_at(&[Buf::from(&mut buf[..])], u64::MAX - 10, false)
        .is_err());
    assert!(img.write_zeroes(4096, u64::MAX, false).is_err());
    assert!(img.discard(8192, 1).is_err());
}

#[test]
fn zeroes_and_discard_read_back_as_zero() {
    let (_d, img) = image(1 << 20);
    let mut data = vec![0xabu8; 65536];
    img.write_at(&[Buf::from(&mut data[..])], 0, false).unwrap();
    img.write_zeroes(0, 4096, false).unwrap();
    img.discard(8192, 8192).unwrap();
    let mut out = vec![0u8; 65536];
    img.read_at(&[Buf::from(&mut out[..])], 0).unwrap();
    assert!(out[..4096].iter().all(|&x| x == 0));
    assert!(out[4096..8192].iter().all(|&x| x == 0xab));
    assert!(out[8192..16384].iter().all(|&x| x == 0));
    assert!(out[16384..].iter().all(|&x| x == 0xab));
}

#[test]
fn read_only_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ro.img");
    drop(FileImage::open(&p, Some(4096), false).unwrap());
    let img = FileImage::open(&p, None, true).unwrap();
    let mut buf = vec![0u8; 512];
    assert!(img.write_at(&[Buf::from(&mut buf[..])], 0, false).is_err());
    assert!(img.write_zeroes(0, 512, true).is_err());
    img.read_at(&[Buf::from(&mut buf[..])], 0).unwrap();
}

#[test]
fn durable_writes_use_dsync() {
    assert_eq!(write_flags(true), libc::RWF_DSYNC);
    assert_eq!(write_flags(false), 0);
}

#[test]
fn zeroing_without_unmap_never_punches_a_hole() {
    assert!(zeroing_modes(false)
        .iter()
        .all(|m| m & libc::FALLOC_FL_PUNCH_HOLE == 0));
    assert_eq!(
        zeroing_modes(true)[0] & libc::FALLOC_FL_PUNCH_HOLE,
        libc::FALLOC_FL_PUNCH_HOLE
    );
}

#[test]
fn write_zeroes_without_unmap_keeps_the_blocks_allocated() {
    use std::os::unix::fs::MetadataExt;
    let (dir, img) = image(8 << 20);
    let mut data = vec![0x5au8; 4 << 20];
    img.write_at(&[Buf::from(&mut data[..])], 0, true).unwrap();
    let path = dir.path().join("d.img");
    let blocks = || std::fs::metadata(&path).unwrap().blocks();
    let allocated = blocks();
    assert!(allocated >= (4 << 20) / 512, "{allocated}");
    img.write_zeroes(0, 2 << 20, false).unwrap();
    assert_eq!(blocks(), allocated, "zeroing without unmap deallocated");
    img.write_zeroes(2 << 20, 1 << 20, true).unwrap();
    assert!(blocks() < allocated, "zeroing with unmap deallocates");
    let mut out = vec![0xffu8; 4 << 20];
    img.read_at(&[Buf::from(&mut out[..])], 0).unwrap();
    assert!(out[..3 << 20].iter().all(|&b| b == 0));
    assert!(out[3 << 20..].iter().all(|&b| b == 0x5a));
}

//! Unit tests of `image`.

use super::file::{write_flags, zeroing_modes};
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

fn open_mode(dir: &tempfile::TempDir, size: u64, mode: OpenMode) -> io::Result<FileImage> {
    FileImage::open_with(&dir.path().join("m.img"), Some(size), mode)
}

/// A batch as a virtqueue round makes it: writes and reads mixed, one refused for its range.
fn batch_round_trip(img: &FileImage) {
    let mut a = vec![0xa5u8; 4096];
    let mut b = vec![0x5au8; 8192];
    let mut past_end = vec![1u8; 512];
    let mut ops = vec![
        IoOp::new(
            true,
            0,
            [Buf::from(&mut a[..])].into_iter().collect(),
            false,
        ),
        IoOp::new(
            true,
            65536,
            [Buf::from(&mut b[..])].into_iter().collect(),
            true,
        ),
        IoOp::new(
            true,
            img.size(),
            [Buf::from(&mut past_end[..])].into_iter().collect(),
            false,
        ),
    ];
    img.run_batch(&mut ops);
    assert!(ops[0].result.is_ok() && ops[1].result.is_ok());
    assert_eq!(
        ops[2].result.as_ref().unwrap_err().kind(),
        io::ErrorKind::InvalidInput,
        "a write past the end is refused"
    );
    let mut x = vec![0u8; 4096];
    let mut y1 = vec![0u8; 4096];
    let mut y2 = vec![0u8; 4096];
    let mut ops = vec![
        IoOp::new(
            false,
            0,
            [Buf::from(&mut x[..])].into_iter().collect(),
            false,
        ),
        IoOp::new(
            false,
            65536,
            [Buf::from(&mut y1[..]), Buf::from(&mut y2[..])]
                .into_iter()
                .collect(),
            false,
        ),
    ];
    img.run_batch(&mut ops);
    assert!(ops.iter().all(|op| op.result.is_ok()));
    drop(ops);
    assert!(x.iter().all(|&v| v == 0xa5));
    assert!(y1.iter().chain(&y2).all(|&v| v == 0x5a));
}

#[test]
fn batches_through_io_uring_and_sync_alike() {
    for aio in [Aio::IoUring, Aio::Sync] {
        let dir = tempfile::tempdir().unwrap();
        let mode = OpenMode {
            aio,
            ..OpenMode::default()
        };
        batch_round_trip(&open_mode(&dir, 1 << 20, mode).unwrap());
    }
}

/// Page-aligned host memory of `len` bytes, plus one byte so a misaligned slice fits.
fn aligned(len: usize) -> Vec<u8> {
    vec![0u8; len + 8192]
}

fn aligned_at(v: &mut [u8], skew: usize) -> &mut [u8] {
    let start = (4096 - (v.as_ptr() as usize) % 4096) % 4096 + skew;
    &mut v[start..start + 4096]
}

#[test]
fn direct_io_takes_aligned_buffers_and_bounces_the_others() {
    // The crate directory: a disk file system, where O_DIRECT means something.
    let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    let mode = OpenMode {
        direct: true,
        aio: Aio::IoUring,
        ..OpenMode::default()
    };
    let img = match open_mode(&dir, 1 << 20, mode) {
        Ok(img) => img,
        Err(e) => panic!("O_DIRECT on the target directory's file system: {e}"),
    };
    batch_round_trip(&img);
    // A buffer at an odd address: O_DIRECT would refuse it, the bounce buffer takes it.
    let mut w = aligned(4096);
    let src = aligned_at(&mut w, 3);
    src.fill(0x3c);
    img.write_at(&[Buf::from(&mut src[..])], 8192, false)
        .unwrap();
    let mut r = aligned(4096);
    let dst = aligned_at(&mut r, 1);
    let mut ops = vec![IoOp::new(
        false,
        8192,
        [Buf::from(&mut dst[..])].into_iter().collect(),
        false,
    )];
    img.run_batch(&mut ops);
    assert!(ops[0].result.is_ok());
    drop(ops);
    assert!(dst.iter().all(|&v| v == 0x3c));
    // What the page cache sees is what O_DIRECT wrote.
    let on_disk = std::fs::read(dir.path().join("m.img")).unwrap();
    assert!(on_disk[8192..12288].iter().all(|&v| v == 0x3c));
}

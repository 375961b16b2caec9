//! Unit tests of `BlkRequest::parse`: the blk path's decoding and checks, without a frontend.

use super::*;

const SIZE: u64 = 8 * SECTOR;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

fn header(req_type: u32, sector: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&req_type.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

fn parse(req_type: u32, sector: u64, out: &mut [u8], in_len: usize) -> Result<BlkRequest, u8> {
    let bufs: Vec<Buf> = if out.is_empty() {
        Vec::new()
    } else {
        vec![Buf::from(out)]
    };
    BlkRequest::parse(&header(req_type, sector), &bufs, in_len, SIZE, false)
}

fn segment(sector: u64, num: u32, flags: u32) -> [u8; DWZ_SEG_LEN] {
    let mut s = [0u8; DWZ_SEG_LEN];
    s[0..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&num.to_le_bytes());
    s[12..16].copy_from_slice(&flags.to_le_bytes());
    s
}

#[test]
fn reads_and_writes_are_whole_sectors_inside_the_image() {
    let r = parse(VIRTIO_BLK_T_IN, 2, &mut [], 1024);
    assert_eq!(r, Ok(BlkRequest::Read { offset: 1024 }));
    assert_eq!(
        parse(VIRTIO_BLK_T_IN, 7, &mut [], 512),
        Ok(BlkRequest::Read { offset: 3584 })
    );
    assert_eq!(parse(VIRTIO_BLK_T_IN, 7, &mut [], 1024), Err(IOERR));
    assert_eq!(parse(VIRTIO_BLK_T_IN, 0, &mut [], 100), Err(IOERR));
    assert_eq!(parse(VIRTIO_BLK_T_IN, u64::MAX, &mut [], 512), Err(IOERR));
    // A read with data going the wrong way.
    assert_eq!(parse(VIRTIO_BLK_T_IN, 0, &mut [0; 512], 512), Err(IOERR));
    let mut data = [0u8; 512];
    assert_eq!(
        parse(VIRTIO_BLK_T_OUT, 1, &mut data, 0),
        Ok(BlkRequest::Write { offset: 512 })
    );
    assert_eq!(parse(VIRTIO_BLK_T_OUT, 1, &mut data, 1), Err(IOERR));
    let h = header(VIRTIO_BLK_T_OUT, 1);
    assert_eq!(
        BlkRequest::parse(&h, &[Buf::from(&mut data[..])], 0, SIZE, true),
        Err(IOERR)
    );
}

#[test]
fn other_types() {
    assert_eq!(
        parse(VIRTIO_BLK_T_FLUSH, 0, &mut [], 0),
        Ok(BlkRequest::Flush)
    );
    assert_eq!(
        parse(VIRTIO_BLK_T_GET_ID, 0, &mut [], 20),
        Ok(BlkRequest::GetId)
    );
    assert_eq!(parse(0xdead, 0, &mut [], 0), Err(UNSUPP));
}

#[test]
fn discard_and_write_zeroes_segments() {
    let flag = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
    let mut two = [segment(0, 1, 0), segment(4, 4, flag)].concat();
    assert_eq!(
        parse(VIRTIO_BLK_T_WRITE_ZEROES, 0, &mut two, 0),
        Ok(BlkRequest::DiscardWriteZeroes {
            discard: false,
            segments: [(0, 512, false), (2048, 2048, true)].into_iter().collect(),
        })
    );
    // UNMAP on a DISCARD, and unknown flags, are UNSUPP.
    assert_eq!(parse(VIRTIO_BLK_T_DISCARD, 0, &mut two, 0), Err(UNSUPP));
    let mut odd = segment(0, 1, 0x8);
    assert_eq!(
        parse(VIRTIO_BLK_T_WRITE_ZEROES, 0, &mut odd, 0),
        Err(UNSUPP)
    );
    // Past the end, a partial segment, data in, no segment at all.
    let mut past = segment(7, 2, 0);
    assert_eq!(parse(VIRTIO_BLK_T_DISCARD, 0, &mut past, 0), Err(IOERR));
    assert_eq!(parse(VIRTIO_BLK_T_DISCARD, 0, &mut [0; 8], 0), Err(IOERR));
    let mut one = segment(0, 1, 0);
    assert_eq!(parse(VIRTIO_BLK_T_DISCARD, 0, &mut one, 1), Err(IOERR));
    assert_eq!(parse(VIRTIO_BLK_T_DISCARD, 0, &mut [], 0), Err(IOERR));
    // More segments than advertised.
    let mut many = segment(0, 1, 0).repeat(MAX_DWZ_SEG as usize + 1);
    assert_eq!(parse(VIRTIO_BLK_T_DISCARD, 0, &mut many, 0), Err(UNSUPP));
}

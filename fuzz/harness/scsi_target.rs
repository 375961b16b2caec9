//! Any CDB with any data-out buffer and data-in size, from any of four initiators, executed in
//! sequence by `scsi::target::Target` over an in-memory LU, so that PR OUT moves the reservation
//! state (and the arbiter with it) and every later command meets it.
//!
//! Input (seeds: `fuzz/make_seeds.py`): byte 0 sets the LU up, bits 0-2 the image size
//! ([`SIZES`] blocks), bit 3 read-only, bits 4-5 the reservation state it starts from. Then
//! commands until the input ends, each:
//!
//! | field    | bytes | meaning |
//! |----------|-------|---------|
//! | h        | 1     | initiator `INITIATORS[h & 3]`; kind `(h >> 2) & 3`: 0, 1 LUN 0, 2 a missing LUN, 3 a task management function (LUN RESET if bit 4, else I_T NEXUS RESET), which has no further fields; bit 7 multiplies the data-in size by 64 |
//! | n        | 1     | CDB length, `n % 33` |
//! | cdb      | n     | |
//! | out_len  | 2 LE  | data-out length (less if the input ends) |
//! | out      | out_len | |
//! | in_len   | 2 LE  | data-in buffer size |
//! | splits   | 2     | where the data-out and the data-in buffers are cut in two (0: whole), as a descriptor chain would cut them |
//!
//! After each command: the arbiter's state validates; status and sense agree; the data-in count
//! fits the buffer; only an initiator the arbiter lets write changes the medium; only PR OUT
//! changes the persistent reservation state; a unit attention stops the command before it acts.

use std::sync::Arc;

use sharedisk::image::Buf;
use sharedisk::pr::Access;
use sharedisk::scsi::data::{DataIn, DataOut};
use sharedisk::scsi::target::{Target, CHECK_CONDITION, GOOD, RESERVATION_CONFLICT};

use super::{MemImage, Reader, INITIATORS};

const SIZES: [usize; 8] = [0, 1, 8, 64, 256, 1024, 2048, 8192];
const PROUT: u8 = 0x5f;

/// One buffer as a list of at most two slices, cut at `at` (0 or past the end: one slice).
fn bufs(v: &mut [u8], at: usize) -> Vec<Buf<'_>> {
    if at == 0 || at >= v.len() {
        return vec![Buf::from(v)];
    }
    let (a, b) = v.split_at_mut(at);
    vec![Buf::from(a), Buf::from(b)]
}

/// One fuzz input; panics on a finding.
pub fn run(data: &[u8]) {
    let mut r = Reader(data);
    let setup = r.u8();
    let read_only = setup & 0x08 != 0;
    let image = Arc::new(MemImage::new(
        SIZES[usize::from(setup & 7)] * 512,
        read_only,
    ));
    let lun = super::lun(image.clone(), super::preset_state(setup >> 4));
    let target = Target::new(lun.clone());
    let res = &lun.reservations;

    while !r.is_empty() {
        let h = r.u8();
        let initiator = INITIATORS[usize::from(h & 3)];
        let kind = (h >> 2) & 3;
        if kind == 3 {
            // What scsi/device.rs does for the two resets that touch reservations.
            res.with_mut(|a| {
                if h & 0x10 != 0 {
                    a.logical_unit_reset();
                } else {
                    a.i_t_nexus_reset(initiator);
                }
            });
            super::assert_state_valid(&lun);
            continue;
        }
        let n = usize::from(r.u8() % 33);
        let cdb = r.bytes(n);
        let out_len = usize::from(r.u16());
        let mut out = r.bytes(out_len).to_vec();
        let in_len = usize::from(r.u16()) * if h & 0x80 != 0 { 64 } else { 1 };
        let mut din = vec![0u8; in_len];
        let (out_at, in_at) = (usize::from(r.u8()), usize::from(r.u8()));
        let data_out = bufs(&mut out, out_at);
        let data_in = bufs(&mut din, in_at);

        let state_before = res.with(|a| a.snapshot());
        let could_write = res.with(|a| a.check(initiator, Access::Write));
        let mutations = image.mutations();

        let o = if kind == 2 {
            target.execute_missing_lun(cdb, DataIn::new(&data_in))
        } else {
            target.execute(
                initiator,
                cdb,
                DataOut::new(&data_out),
                DataIn::new(&data_in),
                None,
            )
        };

        if super::tracing() {
            eprintln!("{initiator} {cdb:02x?}: {o:?}");
        }
        match o.status {
            GOOD | RESERVATION_CONFLICT => assert!(o.sense.is_none(), "{o:?}"),
            CHECK_CONDITION => assert!(o.sense.is_some(), "{o:?}"),
            s => panic!("status {s:#x}"),
        }
        assert!(o.data_in <= in_len, "{o:?} with a {in_len}-byte buffer");
        if image.mutations() != mutations {
            assert!(
                could_write && !read_only && kind != 2,
                "{initiator} changed the medium without write access: cdb {cdb:02x?}"
            );
        }
        let state_after = res.with(|a| a.snapshot());
        if kind == 2 || cdb.first() != Some(&PROUT) {
            assert_eq!(state_before, state_after, "cdb {cdb:02x?} changed PR state");
        }
        if o.sense.is_some_and(|s| s.key == 6) {
            // SPC-4 §5.14: the unit attention is the command's whole result.
            assert_eq!(image.mutations(), mutations);
            assert_eq!(state_before, state_after);
            assert_eq!(o.data_in, 0);
        }
        super::assert_state_valid(&lun);
    }
}

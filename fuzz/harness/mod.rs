//! The fuzz harnesses, one module per target, each a plain `run(&[u8])` that panics on a finding,
//! and the glue they share: an in-memory image, a byte reader, a LUN with a chosen reservation
//! state, a virtqueue laid out from fuzz bytes.
//!
//! The cargo-fuzz targets (`fuzz_targets/*.rs`) only call `run`; so does the main crate's
//! `tests/fuzz_regressions.rs`, which replays every committed corpus and every input a finding
//! was minimized to, under plain `cargo test`.
#![allow(dead_code)]

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use sharedisk::image::{range_ok, Buf, Image};
use sharedisk::lun::Lun;
use sharedisk::pr::fencing::Reservations;
use sharedisk::pr::{Arbiter, Holder, PrState, Registration, ResType, Reservation};

pub mod blk_chain;
pub mod cli;
pub mod config_file;
pub mod control;
pub mod iscsi_session;
pub mod pr_wire;
pub mod ring;
pub mod scsi_chain;
pub mod scsi_target;
pub mod state_file;

/// The initiators the LU is configured for, as `serve --guests vm1,vm2,vm3` would make them.
pub const KNOWN: [&str; 3] = ["vm1", "vm2", "vm3"];
/// The initiator a fuzz byte selects: the known three, and one the LU was never told about.
pub const INITIATORS: [&str; 4] = ["vm1", "vm2", "vm3", "stranger"];

/// A disk in memory with the semantics of `FileImage`: every range checked, EROFS when
/// read-only, discarded ranges read back as zeroes. It counts the calls that change data, so a
/// target can tell whether a command reached the medium.
pub struct MemImage {
    data: RwLock<Vec<u8>>,
    read_only: bool,
    mutations: AtomicU64,
}

impl MemImage {
    pub fn new(bytes: usize, read_only: bool) -> Self {
        MemImage {
            data: RwLock::new(vec![0u8; bytes & !511]),
            read_only,
            mutations: AtomicU64::new(0),
        }
    }

    /// How many calls so far changed (or may have changed) the medium.
    pub fn mutations(&self) -> u64 {
        self.mutations.load(Ordering::Relaxed)
    }

    fn writable(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(EROFS));
        }
        if !range_ok(offset, len, self.size()) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "out of range"));
        }
        if len > 0 {
            self.mutations.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Linux's EROFS, what `FileImage` returns for a write to a read-only image.
const EROFS: i32 = 30;

fn total(bufs: &[Buf]) -> u64 {
    bufs.iter().map(|b| b.len() as u64).sum()
}

impl Image for MemImage {
    fn size(&self) -> u64 {
        self.data.read().unwrap().len() as u64
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, bufs: &[Buf], offset: u64) -> io::Result<()> {
        let data = self.data.read().unwrap();
        if !range_ok(offset, total(bufs), data.len() as u64) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "out of range"));
        }
        let mut at = offset as usize;
        for b in bufs {
            b.copy_from(&data[at..at + b.len()]);
            at += b.len();
        }
        Ok(())
    }

    fn write_at(&self, bufs: &[Buf], offset: u64, _fua: bool) -> io::Result<()> {
        self.writable(offset, total(bufs))?;
        let mut data = self.data.write().unwrap();
        let mut at = offset as usize;
        for b in bufs {
            b.copy_to(&mut data[at..at + b.len()]);
            at += b.len();
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len, true)
    }

    fn write_zeroes(&self, offset: u64, len: u64, _unmap: bool) -> io::Result<()> {
        self.writable(offset, len)?;
        let mut data = self.data.write().unwrap();
        data[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }
}

/// Reads fields off the fuzz input; past its end every read yields zeroes, so any input is a
/// complete program.
pub struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        head
    }

    pub fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        let s = self.bytes(8);
        b[..s.len()].copy_from_slice(s);
        u64::from_le_bytes(b)
    }

    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.0.len())
    }
}

/// A few reservation states to start from (chosen by two fuzz bits), so that the device paths
/// meet every gating outcome without having to build it with PR OUT first.
pub fn preset_state(choice: u8) -> PrState {
    let reg = |initiator: &str, key| Registration {
        initiator: initiator.into(),
        key,
    };
    match choice & 3 {
        0 => PrState::default(),
        // vm2 holds WRITE EXCLUSIVE; vm1 is a registrant.
        1 => PrState {
            generation: 2,
            registrations: vec![reg("vm2", 2), reg("vm1", 1)],
            reservation: Some(Reservation {
                holder: Holder::Initiator("vm2".into()),
                res_type: ResType::WriteExclusive,
            }),
            aptpl: false,
        },
        // vm2 holds EXCLUSIVE ACCESS, REGISTRANTS ONLY; vm1 is a registrant.
        2 => PrState {
            generation: 3,
            registrations: vec![reg("vm2", 2), reg("vm1", 1)],
            reservation: Some(Reservation {
                holder: Holder::Initiator("vm2".into()),
                res_type: ResType::ExclusiveAccessRegistrantsOnly,
            }),
            aptpl: true,
        },
        // EXCLUSIVE ACCESS, ALL REGISTRANTS held by vm3 and vm2 (who share a key).
        _ => PrState {
            generation: u32::MAX,
            registrations: vec![reg("vm3", 7), reg("vm2", 7)],
            reservation: Some(Reservation {
                holder: Holder::AllRegistrants,
                res_type: ResType::ExclusiveAccessAllRegistrants,
            }),
            aptpl: false,
        },
    }
}

/// A LUN over `image`, with the known initiators and `state`, persisted nowhere.
pub fn lun(image: Arc<MemImage>, state: PrState) -> Arc<Lun> {
    let arbiter = Arbiter::from_state(state, KNOWN.iter().map(|s| s.to_string()));
    Arc::new(Lun::new(
        Box::new(SharedImage(image)),
        Reservations::new(arbiter, None),
        Path::new("/fuzz/disk.img"),
    ))
}

/// `Lun` owns a `Box<dyn Image>`; this lets the target keep a handle on the same image.
struct SharedImage(Arc<MemImage>);

impl Image for SharedImage {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_only(&self) -> bool {
        self.0.read_only()
    }
    fn read_at(&self, bufs: &[Buf], offset: u64) -> io::Result<()> {
        self.0.read_at(bufs, offset)
    }
    fn write_at(&self, bufs: &[Buf], offset: u64, fua: bool) -> io::Result<()> {
        self.0.write_at(bufs, offset, fua)
    }
    fn flush(&self) -> io::Result<()> {
        self.0.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.0.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        self.0.write_zeroes(offset, len, unmap)
    }
}

/// The arbiter's persistent state must satisfy what a state file is checked for on load: the
/// arbiter keeps these invariants after every command.
pub fn assert_state_valid(lun: &Lun) {
    lun.reservations.with(|a| {
        if let Err(e) = a.state().validate() {
            panic!("arbiter state broke its invariants: {e}: {:?}", a.state());
        }
    });
}

/// `SHAREDISK_FUZZ_TRACE=1` makes the targets print what each input did (to check seeds).
pub fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("SHAREDISK_FUZZ_TRACE").is_some())
}

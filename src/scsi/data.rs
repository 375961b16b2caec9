//! A command's data buffers as the SCSI core sees them: [`DataOut`], what the initiator sends
//! (a reader), and [`DataIn`], what the device returns (a writer).
//!
//! Both wrap the image's scatter list ([`crate::image::Buf`]) without copying it: a READ or
//! WRITE takes its piece of the list as it is ([`DataIn::take`], [`DataOut::take`]) and the
//! image reads or writes straight into that memory; every other command copies bytes out of or
//! into it. Where the memory comes from (a virtqueue's descriptor chain, a test's `Vec`) is the
//! transport's business; nothing here needs to know.

use crate::image::buffers::{self, Buf, Bufs};

/// The data-out buffer of a command (driver to device), read from the front.
#[derive(Clone, Copy)]
pub struct DataOut<'r, 'm> {
    bufs: &'r [Buf<'m>],
}

impl<'r, 'm> DataOut<'r, 'm> {
    pub fn new(bufs: &'r [Buf<'m>]) -> Self {
        DataOut { bufs }
    }

    /// A command without data-out.
    pub fn empty() -> Self {
        DataOut { bufs: &[] }
    }

    /// Bytes the initiator sent.
    pub fn len(&self) -> usize {
        buffers::total(self.bufs)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies the first `out.len()` bytes into `out`; returns how many there were.
    pub fn read(&self, out: &mut [u8]) -> usize {
        buffers::read_bytes(self.bufs, out)
    }

    /// The first `n` bytes as they are, for the image to write from; `None` when there are
    /// fewer.
    pub fn take(&self, n: usize) -> Option<Bufs<'m>> {
        buffers::split_at(self.bufs, n).map(|(head, _)| head)
    }
}

/// The data-in buffer of a command (device to driver), written from the front.
#[derive(Clone, Copy)]
pub struct DataIn<'r, 'm> {
    bufs: &'r [Buf<'m>],
}

impl<'r, 'm> DataIn<'r, 'm> {
    pub fn new(bufs: &'r [Buf<'m>]) -> Self {
        DataIn { bufs }
    }

    /// A command without data-in.
    pub fn empty() -> Self {
        DataIn { bufs: &[] }
    }

    /// Bytes the initiator has room for.
    pub fn capacity(&self) -> usize {
        buffers::total(self.bufs)
    }

    /// Copies `data` into the front; returns how many bytes fitted.
    pub fn write(&self, data: &[u8]) -> usize {
        buffers::write_bytes(self.bufs, data)
    }

    /// The first `n` bytes as they are, for the image to read into; `None` when there is less
    /// room.
    pub fn take(&self, n: usize) -> Option<Bufs<'m>> {
        buffers::split_at(self.bufs, n).map(|(head, _)| head)
    }
}

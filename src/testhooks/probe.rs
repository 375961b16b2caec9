//! Test instrumentation: an [`Image`] decorator that can make changes to the image slow and
//! records when each call started and ended, and whether it asked for durability.
//!
//! Tests wrap the daemon's image with it ([`crate::daemon::server::Server::start_wrapped`]) to see, from
//! the host's side of the one image interface, what a device really did: that a fenced write
//! ended before a PREEMPT returned, that a write-through LU made every write durable. The daemon
//! binary never uses it.

use crate::util::lock::lock;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::image::{Buf, Image, IoOp};

/// What one call on the image did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    /// `durable`: FUA or write-through, durable on return.
    Write {
        durable: bool,
    },
    Zeroes {
        unmap: bool,
    },
    Discard,
    Flush,
}

impl Op {
    /// Whether the call changes the image's content.
    pub fn changes_data(self) -> bool {
        matches!(self, Op::Write { .. } | Op::Zeroes { .. } | Op::Discard)
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Event {
    pub op: Op,
    pub offset: u64,
    pub len: u64,
    pub start: Instant,
    /// When the inner image returned: the change is on the image from here on.
    pub end: Instant,
    pub ok: bool,
}

/// The shared side of a [`Probe`]: what the test reads and tunes while the daemon runs.
#[derive(Default)]
pub struct Recorder {
    slowness: Mutex<Slowness>,
    events: Mutex<Vec<Event>>,
}

/// How long a data change waits before it reaches the image: `fixed`, plus its length at
/// `bytes_per_sec` when set (a slow disk).
#[derive(Clone, Copy, Debug, Default)]
struct Slowness {
    fixed: Duration,
    bytes_per_sec: Option<u64>,
}

impl Slowness {
    fn delay(self, len: u64) -> Duration {
        let transfer = match self.bytes_per_sec {
            Some(bps) if bps > 0 => Duration::from_secs_f64(len as f64 / bps as f64),
            _ => Duration::ZERO,
        };
        self.fixed + transfer
    }
}

impl Recorder {
    pub fn new() -> Arc<Self> {
        Arc::new(Recorder::default())
    }

    /// Every later data change waits `d` before it reaches the image.
    pub fn set_write_delay(&self, d: Duration) {
        lock(&self.slowness).fixed = d;
    }

    /// Every later data change also waits as long as moving its bytes at `bytes_per_sec` takes.
    pub fn set_write_bandwidth(&self, bytes_per_sec: Option<u64>) {
        lock(&self.slowness).bytes_per_sec = bytes_per_sec;
    }

    /// The calls so far, in the order they ended.
    pub fn events(&self) -> Vec<Event> {
        lock(&self.events).clone()
    }

    /// Forgets the calls so far.
    pub fn clear(&self) {
        lock(&self.events).clear();
    }

    fn run(
        &self,
        op: Op,
        offset: u64,
        len: u64,
        f: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<()> {
        let start = Instant::now();
        if op.changes_data() {
            let slowness = *lock(&self.slowness);
            let delay = slowness.delay(len);
            if !delay.is_zero() {
                std::thread::sleep(delay);
            }
        }
        let r = f();
        let event = Event {
            op,
            offset,
            len,
            start,
            end: Instant::now(),
            ok: r.is_ok(),
        };
        lock(&self.events).push(event);
        r
    }
}

/// The decorator: forwards every call to `inner` through a [`Recorder`].
pub struct Probe {
    inner: Box<dyn Image>,
    recorder: Arc<Recorder>,
}

impl Probe {
    pub fn new(inner: Box<dyn Image>, recorder: Arc<Recorder>) -> Self {
        Probe { inner, recorder }
    }
}

fn total(bufs: &[Buf]) -> u64 {
    bufs.iter().map(|b| b.len() as u64).sum()
}

impl Image for Probe {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_only(&self) -> bool {
        self.inner.read_only()
    }

    fn read_at(&self, bufs: &[Buf], offset: u64) -> io::Result<()> {
        self.recorder.run(Op::Read, offset, total(bufs), || {
            self.inner.read_at(bufs, offset)
        })
    }

    fn write_at(&self, bufs: &[Buf], offset: u64, fua: bool) -> io::Result<()> {
        self.recorder
            .run(Op::Write { durable: fua }, offset, total(bufs), || {
                self.inner.write_at(bufs, offset, fua)
            })
    }

    fn flush(&self) -> io::Result<()> {
        self.recorder.run(Op::Flush, 0, 0, || self.inner.flush())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.recorder
            .run(Op::Discard, offset, len, || self.inner.discard(offset, len))
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        self.recorder.run(Op::Zeroes { unmap }, offset, len, || {
            self.inner.write_zeroes(offset, len, unmap)
        })
    }

    /// The whole batch goes to the inner image as one (so that its io_uring path is what the
    /// tests see), slowed by the sum of its writes' delays; every op is recorded as running
    /// from the batch's start to its end.
    fn run_batch(&self, ops: &mut [IoOp]) {
        let start = Instant::now();
        let slowness = *lock(&self.recorder.slowness);
        let delay: Duration = ops
            .iter()
            .filter(|op| op.write)
            .map(|op| slowness.delay(total(&op.bufs)))
            .sum();
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let shape: Vec<(Op, u64, u64)> = ops
            .iter()
            .map(|op| {
                let kind = if op.write {
                    Op::Write { durable: op.fua }
                } else {
                    Op::Read
                };
                (kind, op.offset, total(&op.bufs))
            })
            .collect();
        self.inner.run_batch(ops);
        let end = Instant::now();
        let mut events = lock(&self.recorder.events);
        for ((op, offset, len), done) in shape.into_iter().zip(ops.iter()) {
            events.push(Event {
                op,
                offset,
                len,
                start,
                end,
                ok: done.result.is_ok(),
            });
        }
    }
}

//! The session's one writer. Every PDU of a connection goes out through it, numbered (StatSN,
//! ExpCmdSN, MaxCmdSN) in the order it reaches the wire. A thread that sends while no other is
//! writing becomes the flusher: it writes its own PDUs in one gathered write (no copy), then
//! whatever other threads queued meanwhile, until nothing is queued. A thread that sends while
//! another writes copies its PDUs into the queue and returns at once: the responses that become
//! ready during one write go out together in the next, and no thread waits on a lock while
//! another is in a system call.
//!
//! **Turns end.** A flusher is a session's worker, and its own command counts as finished (for a
//! TMF, an ORDERED command, a logout, the buffers it holds) only when it stops. So it writes at
//! most [`FLUSH_ROUNDS`] batches of others' PDUs: after that, a thread that sends waits for the
//! turn instead of queueing, and a flusher stops once a thread waits for the turn; the first of
//! them to take it writes what is still queued (numbered earlier) before its own PDUs. Under a
//! steady stream of small responses the turn so passes from thread to thread, and a large
//! response that waits for it gets it after one batch.
//!
//! The queue is bounded: a response with more than [`GATHER_MAX`] data bytes, or one that finds
//! [`GATHER_LIMIT`] bytes queued, waits for its turn and writes itself, so that a peer that stops
//! reading holds at most the queue and the responses waiting (whose buffers the session's
//! [`super::workers::MAX_HELD`] bounds). A write that fails (the socket's send timeout, a broken
//! connection) fails every later send of the connection.

use std::io::{self, IoSlice, Write};
use std::sync::{Condvar, Mutex, MutexGuard};

use super::pdu::{self, frame, put, Digests, Framed, BHS_LEN};
use crate::util::lock::lock;

/// The largest data segment total of one send that may be queued behind another thread's write.
pub(super) const GATHER_MAX: usize = 16 * 1024;
/// Bytes queued at most behind another thread's write.
pub(super) const GATHER_LIMIT: usize = 64 * 1024;
/// Batches of queued PDUs a flusher writes after its own, at most (see the module's text).
pub(super) const FLUSH_ROUNDS: usize = 8;

/// One PDU to send: its header (StatSN, ExpCmdSN and MaxCmdSN are filled in), its data, and
/// whether it carries a status (StatSN advances past it).
pub(super) struct Outgoing<'a> {
    pub bhs: [u8; BHS_LEN],
    pub data: &'a [u8],
    pub status: bool,
}

/// What the threads that send share, under one lock.
struct Queue {
    /// The StatSN of the next PDU that carries a status.
    stat_sn: u32,
    /// PDUs framed and numbered, waiting for the flusher.
    queued: Vec<u8>,
    /// The flusher's last batch, kept for its capacity.
    spare: Vec<u8>,
    /// A thread is writing: what is sent now is queued (or waits).
    flushing: bool,
    /// A write failed: the connection is being closed.
    broken: bool,
    /// Threads waiting for their turn to write.
    waiting: usize,
    /// Batches the flusher wrote after its own PDUs.
    rounds: usize,
}

/// The writer of one connection.
pub(super) struct Writer<W: Write> {
    queue: Mutex<Queue>,
    /// Signalled when the flusher stops.
    turn: Condvar,
    /// The connection; only the flusher writes to it.
    stream: Mutex<W>,
    digests: Digests,
}

impl<W: Write> Writer<W> {
    pub fn new(stream: W, stat_sn: u32, digests: Digests) -> Self {
        Writer {
            queue: Mutex::new(Queue {
                stat_sn,
                queued: Vec::new(),
                spare: Vec::new(),
                flushing: false,
                broken: false,
                waiting: 0,
                rounds: 0,
            }),
            turn: Condvar::new(),
            stream: Mutex::new(stream),
            digests,
        }
    }

    /// Sends `pdus` in order, after every PDU sent before; `numbers` gives ExpCmdSN and
    /// MaxCmdSN, asked under the writer's lock as each PDU is numbered, so that the MaxCmdSN
    /// PDUs carry never goes back in the order they go out. Returns once the PDUs are written
    /// or queued behind another thread's write (which then writes them).
    pub fn send(&self, pdus: &[Outgoing], numbers: impl Fn() -> (u32, u32)) -> io::Result<()> {
        let bytes: usize = pdus.iter().map(|p| p.data.len()).sum();
        let mut q = lock(&self.queue);
        loop {
            if q.broken {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "an earlier write of the connection failed",
                ));
            }
            // While threads wait for their turn, a small send queues even between two
            // flushers: one of those threads, woken, writes it.
            if !q.flushing && q.waiting == 0 {
                break;
            }
            if bytes <= GATHER_MAX && q.queued.len() < GATHER_LIMIT && q.rounds < FLUSH_ROUNDS {
                for p in pdus {
                    let f = self.number(&mut q, p, &numbers);
                    q.queued.extend_from_slice(f.head());
                    q.queued.extend_from_slice(pdu::segment(p.data));
                    q.queued.extend_from_slice(f.tail());
                }
                return Ok(());
            }
            if !q.flushing {
                break;
            }
            q.waiting += 1;
            q = self.turn.wait(q).unwrap_or_else(|e| e.into_inner());
            q.waiting -= 1;
        }
        q.flushing = true;
        q.rounds = 0;
        // What a flusher that stopped for the waiting threads left, numbered before these.
        let left = std::mem::take(&mut q.queued);
        let framed: Vec<Framed> = pdus
            .iter()
            .map(|p| self.number(&mut q, p, &numbers))
            .collect();
        drop(q);
        let mut stream = lock(&self.stream);
        let first = write_gathered(&mut *stream, &left, pdus, &framed);
        self.drain(&mut stream, first)
    }

    /// Numbers and frames one PDU.
    fn number(&self, q: &mut Queue, p: &Outgoing, numbers: &impl Fn() -> (u32, u32)) -> Framed {
        let mut b = p.bhs;
        put(&mut b, 24, q.stat_sn);
        if p.status {
            q.stat_sn = q.stat_sn.wrapping_add(1);
        }
        let (exp, max) = numbers();
        put(&mut b, 28, exp);
        put(&mut b, 32, max);
        frame(b, p.data, self.digests)
    }

    /// The flusher, after its own write (`first`): writes what was queued meanwhile until
    /// nothing is, or until a thread waits for the turn (a large response, or one that found
    /// the queue full), then hands the turn on; what is still queued goes out first in the
    /// next flusher's write. So a stream of small responses cannot keep the turn for ever.
    fn drain(&self, stream: &mut MutexGuard<'_, W>, first: io::Result<()>) -> io::Result<()> {
        let mut result = first;
        let mut q = lock(&self.queue);
        loop {
            if result.is_err() {
                q.broken = true;
                q.queued.clear();
                break;
            }
            if q.queued.is_empty() || q.waiting > 0 {
                break;
            }
            q.rounds += 1;
            let mut batch = std::mem::take(&mut q.spare);
            std::mem::swap(&mut batch, &mut q.queued);
            drop(q);
            result = stream.write_all(&batch).and_then(|()| stream.flush());
            batch.clear();
            q = lock(&self.queue);
            q.spare = batch;
        }
        q.flushing = false;
        let wake = q.waiting > 0;
        drop(q);
        if wake {
            self.turn.notify_all();
        }
        result
    }
}

/// Writes `left` (PDUs framed and queued earlier), then framed PDUs with their data, in
/// gathered writes until every byte is out.
fn write_gathered(
    w: &mut impl Write,
    left: &[u8],
    pdus: &[Outgoing],
    framed: &[Framed],
) -> io::Result<()> {
    let mut slices: Vec<IoSlice> = Vec::with_capacity(pdus.len() * 3 + 1);
    if !left.is_empty() {
        slices.push(IoSlice::new(left));
    }
    for (p, f) in pdus.iter().zip(framed) {
        for part in [f.head(), pdu::segment(p.data), f.tail()] {
            if !part.is_empty() {
                slices.push(IoSlice::new(part));
            }
        }
    }
    let mut bufs = &mut slices[..];
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    w.flush()
}

#[cfg(test)]
impl<W: Write> Writer<W> {
    /// Bytes queued behind the flusher now.
    fn queued_len(&self) -> usize {
        lock(&self.queue).queued.len()
    }
}

#[cfg(test)]
mod tests;

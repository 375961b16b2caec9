use std::io::{self, Write};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Outgoing, Writer, GATHER_LIMIT, GATHER_MAX};
use crate::transport::iscsi::pdu::{self, header, op, read_pdu, Digests, Pdu};

/// A connection that takes `delay` per write and keeps what it was given.
#[derive(Clone, Default)]
struct Wire {
    bytes: Arc<Mutex<Vec<u8>>>,
    writes: Arc<AtomicUsize>,
    delay: Duration,
    /// Writes fail from this one on (counting from 1); 0: never.
    fail_from: usize,
    /// Each write waits for a message on it first.
    gate: Option<Arc<Mutex<mpsc::Receiver<()>>>>,
}

impl Write for Wire {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        if let Some(g) = &self.gate {
            let _ = g.lock().unwrap().recv();
        }
        let n = self.writes.fetch_add(1, Relaxed) + 1;
        if self.fail_from > 0 && n >= self.fail_from {
            return Err(io::ErrorKind::TimedOut.into());
        }
        std::thread::sleep(self.delay);
        self.bytes.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn pdus_on(wire: &Wire, digests: Digests) -> Vec<Pdu> {
    let bytes = wire.bytes.lock().unwrap().clone();
    let mut r = bytes.as_slice();
    let mut out = Vec::new();
    while !r.is_empty() {
        out.push(read_pdu(&mut r, digests, 1 << 20).expect("a whole PDU"));
    }
    out
}

/// A Data-In of `len` bytes, all `fill`, its ITT `itt`.
fn data_in(itt: u32, fill: u8, len: usize) -> ([u8; pdu::BHS_LEN], Vec<u8>) {
    (header(op::DATA_IN, 0x81, itt), vec![fill; len])
}

/// Eight threads send 50 responses each through one writer whose every write takes 1 ms: each
/// PDU reaches the wire whole (its data and digests intact), StatSN runs on by one from PDU to
/// PDU in wire order, the MaxCmdSN they carry never goes back, and responses that became ready
/// during a write went out together (far fewer writes than PDUs). With the numbering taken out
/// of the writer's order (each sender writing its own PDUs at once, under the connection's
/// lock), StatSN went back on the wire.
#[test]
fn responses_from_many_threads_reach_the_wire_whole_and_in_stat_sn_order() {
    let digests = Digests {
        header: true,
        data: true,
    };
    let wire = Wire {
        delay: Duration::from_millis(1),
        ..Wire::default()
    };
    let w = Arc::new(Writer::new(wire.clone(), 1000, digests));
    let max_cmd_sn = Arc::new(AtomicU32::new(0));
    std::thread::scope(|s| {
        for t in 0..8u8 {
            let (w, max_cmd_sn) = (w.clone(), max_cmd_sn.clone());
            s.spawn(move || {
                for n in 0..50u32 {
                    let (bhs, data) = data_in(u32::from(t) << 16 | n, t + 1, 500 + t as usize);
                    let p = Outgoing {
                        bhs,
                        data: &data,
                        status: true,
                    };
                    let numbers = || (7, max_cmd_sn.fetch_add(1, Relaxed));
                    w.send(&[p], numbers).expect("sent");
                }
            });
        }
    });
    let pdus = pdus_on(&wire, digests);
    assert_eq!(pdus.len(), 400);
    for (i, p) in pdus.iter().enumerate() {
        assert_eq!(p.u32_at(24), 1000 + i as u32, "StatSN of PDU {i}");
        assert_eq!(p.u32_at(28), 7, "ExpCmdSN");
        let t = (p.itt() >> 16) as u8;
        assert_eq!(p.data, vec![t + 1; 500 + t as usize], "data of PDU {i}");
        if i > 0 {
            assert!(
                p.u32_at(32) > pdus[i - 1].u32_at(32),
                "MaxCmdSN went back at PDU {i}"
            );
        }
    }
    let writes = wire.writes.load(Relaxed);
    eprintln!("400 PDUs in {writes} writes");
    assert!(writes < 200, "400 PDUs took {writes} writes");
}

/// A write that fails (the send timeout of a peer that stopped reading) fails the send that
/// made it and every later send of the connection, though the connection would take them.
#[test]
fn a_failed_write_fails_every_later_send() {
    let wire = Wire {
        fail_from: 1,
        ..Wire::default()
    };
    let w = Writer::new(wire.clone(), 0, Digests::default());
    let (bhs, data) = data_in(1, 1, 512);
    let p = || Outgoing {
        bhs,
        data: &data,
        status: true,
    };
    assert!(w.send(&[p()], || (0, 0)).is_err(), "the failed write");
    let writes = wire.writes.load(Relaxed);
    let e = w.send(&[p()], || (0, 0)).expect_err("a send after it");
    assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    assert_eq!(wire.writes.load(Relaxed), writes, "nothing more written");
}

/// The connection takes nothing while one thread's write is under way: other threads' 4 KiB
/// responses queue behind it up to the bound, then wait, so that what a session whose peer
/// stops reading holds stays bounded; once the connection takes bytes again, every response
/// goes out, in order. With the bound taken out, all 100 responses (400 KiB) were queued.
#[test]
fn responses_queued_behind_a_stuck_write_are_bounded() {
    let (open, gate) = mpsc::channel();
    let wire = Wire {
        gate: Some(Arc::new(Mutex::new(gate))),
        ..Wire::default()
    };
    let w = Arc::new(Writer::new(wire.clone(), 0, Digests::default()));
    let (first, _) = data_in(0, 9, 0);
    std::thread::scope(|s| {
        let stuck = w.clone();
        s.spawn(move || {
            let p = Outgoing {
                bhs: first,
                data: &[],
                status: true,
            };
            stuck.send(&[p], || (0, 0)).expect("sent");
        });
        // The first sender waits in its write until the gate opens.
        while !lock_flushing(&w) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let done = Arc::new(AtomicUsize::new(0));
        let (others, count) = (w.clone(), done.clone());
        s.spawn(move || {
            for n in 1..=100u32 {
                let (bhs, data) = data_in(n, n as u8, 4096);
                let p = Outgoing {
                    bhs,
                    data: &data,
                    status: true,
                };
                others.send(&[p], || (0, 0)).expect("sent");
                count.fetch_add(1, Relaxed);
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        let queued = w.queued_len();
        assert!(
            queued <= GATHER_LIMIT + GATHER_MAX,
            "{queued} bytes queued behind a stuck write"
        );
        assert!(done.load(Relaxed) < 100, "every response queued");
        while done.load(Relaxed) < 100 || w.queued_len() > 0 {
            let _ = open.send(());
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(open);
    });
    let pdus = pdus_on(&wire, Digests::default());
    let itts: Vec<u32> = pdus.iter().map(Pdu::itt).collect();
    assert_eq!(itts, (0..=100).collect::<Vec<_>>());
}

/// A response too large to queue (a 64 KiB READ's Data-In) waits for the writer's turn; small
/// responses that keep coming from other threads (a session at depth) must not keep the turn
/// away from it: it goes out while they still flow.
#[test]
fn a_large_response_is_not_starved_by_a_stream_of_small_ones() {
    let wire = Wire {
        delay: Duration::from_millis(2),
        ..Wire::default()
    };
    let w = Arc::new(Writer::new(wire.clone(), 0, Digests::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        for t in 0..4u32 {
            let (w, stop) = (w.clone(), stop.clone());
            s.spawn(move || {
                let (bhs, data) = data_in(t, 1, 512);
                while !stop.load(Relaxed) {
                    let p = Outgoing {
                        bhs,
                        data: &data,
                        status: true,
                    };
                    let _ = w.send(&[p], || (0, 0));
                    std::thread::sleep(Duration::from_micros(200));
                }
            });
        }
        std::thread::sleep(Duration::from_millis(50));
        let big = w.clone();
        s.spawn(move || {
            let (bhs, data) = data_in(99, 2, 4 * GATHER_MAX);
            let p = Outgoing {
                bhs,
                data: &data,
                status: true,
            };
            big.send(&[p], || (0, 0)).expect("sent");
            let _ = tx.send(());
        });
        let sent = rx.recv_timeout(Duration::from_secs(3));
        stop.store(true, Relaxed);
        assert!(
            sent.is_ok(),
            "the large response waited while small ones flowed"
        );
    });
}

/// Whether a thread is writing now.
fn lock_flushing<W: Write>(w: &Writer<W>) -> bool {
    crate::util::lock::lock(&w.queue).flushing
}

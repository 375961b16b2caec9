//! What counting costs per request on the data path: the two clock reads and the counter and
//! histogram updates a device does for every request (`stats.rs`), measured alone, on one
//! thread and with two threads counting into the same device (two queues of one guest). It
//! prints figures; it asserts nothing about speed. Run: `cargo bench --bench counters`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use sharedisk::ops::stats::{self, DeviceStats, Op};

const N: u64 = 5_000_000;

/// Nanoseconds per request of what a device adds around each request.
fn per_request(d: &DeviceStats) -> f64 {
    let start = Instant::now();
    for i in 0..N {
        let t = Instant::now();
        black_box(i);
        let op = if i & 1 == 0 { Op::Read } else { Op::Write };
        let result = if black_box(false) {
            stats::Result::Conflict
        } else {
            stats::Result::Ok
        };
        d.record(op, result, 4096, t.elapsed());
    }
    start.elapsed().as_nanos() as f64 / N as f64
}

fn baseline() -> f64 {
    let start = Instant::now();
    for i in 0..N {
        black_box(i);
    }
    start.elapsed().as_nanos() as f64 / N as f64
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let d = Arc::new(DeviceStats::default());
    let empty = baseline();
    let one = per_request(&d);
    let two: Vec<f64> = (0..2)
        .map(|_| {
            let d = d.clone();
            std::thread::spawn(move || per_request(&d))
        })
        .map(|t| t.join().unwrap())
        .collect();
    println!("sharedisk counters: cost per request ({N} requests per thread)");
    println!("  empty loop                       {empty:6.1} ns");
    println!("  count, one queue                 {:6.1} ns", one - empty);
    println!(
        "  count, two queues of one device  {:6.1} ns",
        two.iter().sum::<f64>() / 2.0 - empty
    );
}

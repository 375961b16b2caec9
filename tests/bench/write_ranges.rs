//! What the write-range lock (`lun/ranges.rs`, COMPARE AND WRITE's atomicity) costs a write:
//! the fast path every write takes while no COMPARE AND WRITE is outstanding, on one thread and
//! on two threads writing the same LU (two queues, or two guests), and the slow path taken while
//! one is outstanding on another range. It prints figures; it asserts nothing about speed.
//! Run: `cargo bench --bench write_ranges`.

use std::hint::black_box;
use std::time::Instant;

use sharedisk::lun::ranges::WriteRanges;

const N: u64 = 5_000_000;

/// Nanoseconds per write of taking and releasing its range, `threads` threads at once.
fn per_write(ranges: &WriteRanges, threads: u64) -> f64 {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                for i in 0..N {
                    let offset = black_box((t * N + i) % (1 << 18) * 4096);
                    let g = ranges.write(std::iter::once((offset, 4096)));
                    black_box(&g);
                }
            });
        }
    });
    start.elapsed().as_nanos() as f64 / N as f64
}

fn baseline() -> f64 {
    let start = Instant::now();
    for i in 0..N {
        black_box((i % (1 << 18)) * 4096);
    }
    start.elapsed().as_nanos() as f64 / N as f64
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let ranges = WriteRanges::default();
    let base = baseline();
    let one = per_write(&ranges, 1);
    let two = per_write(&ranges, 2);
    println!("loop alone: {base:.1} ns");
    println!(
        "fast path (no COMPARE AND WRITE outstanding), one thread: {:.1} ns per write",
        one - base
    );
    println!(
        "fast path, two threads on one LU: {:.1} ns per write per thread",
        two - base
    );
    let _far = ranges.compare_and_write(u64::MAX / 2, 512);
    let slow = per_write(&ranges, 1);
    println!(
        "slow path (a COMPARE AND WRITE outstanding elsewhere): {:.1} ns per write",
        slow - base
    );
}

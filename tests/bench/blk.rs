//! Throughput of the vhost-user-blk path through libblkio: 4 KiB random writes and reads, QD32,
//! one queue, 10 s each (SHAREDISK_BENCH_SECS changes it). It prints figures; it asserts nothing
//! about speed. Run: `cargo bench --bench blk`.

#[path = "../common/mod.rs"]
mod common;

use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

use blkio::ReqFlags;
use common::blkio_client::BlkClient;
use common::daemon::TestDaemon;
use sharedisk::pr::{PrStatus, ProutRequest, ResType, ServiceAction};

const BLOCK: usize = 4096;
const DEPTH: usize = 32;
const SPAN: u64 = 1 << 30;

fn run(c: &mut BlkClient, write: bool, secs: u64) -> (f64, f64) {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    let blocks = SPAN / BLOCK as u64;
    let buf = c.buf(BLOCK * DEPTH).as_mut_ptr() as usize;
    let (queue, _) = c.queue_and_region();
    let mut comps: Vec<MaybeUninit<blkio::Completion>> =
        (0..DEPTH).map(|_| MaybeUninit::uninit()).collect();
    let mut in_flight = 0;
    let mut done = 0u64;
    let mut errors = 0u64;
    let mut slot = 0;
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    loop {
        let now_ok = Instant::now() < end;
        while now_ok && in_flight < DEPTH {
            let off = rng.gen_range(0..blocks) * BLOCK as u64;
            let p = buf + (slot % DEPTH) * BLOCK;
            slot += 1;
            if write {
                queue.write(off, p as *const u8, BLOCK, 0, ReqFlags::empty());
            } else {
                queue.read(off, p as *mut u8, BLOCK, 0, ReqFlags::empty());
            }
            in_flight += 1;
        }
        if in_flight == 0 {
            break;
        }
        let n = queue.do_io(&mut comps, 1, None, None).expect("do_io");
        for c in &comps[..n] {
            // SAFETY: do_io initialised the first `n` completions.
            if unsafe { c.assume_init_ref() }.ret != 0 {
                errors += 1;
            }
        }
        in_flight -= n;
        done += n as u64;
    }
    assert_eq!(errors, 0, "benchmark I/O failed");
    let secs = start.elapsed().as_secs_f64();
    let iops = done as f64 / secs;
    (iops, iops * BLOCK as f64 / (1 << 20) as f64)
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let secs: u64 = std::env::var("SHAREDISK_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let d = TestDaemon::start_with(&["bench", "other"], |c| c.size = Some(SPAN));
    let mut c = BlkClient::connect(&d.blk("bench")).expect("connect");
    println!("sharedisk blk benchmark: libblkio, 4 KiB random, QD{DEPTH}, 1 queue, {secs} s, 1 GiB image");
    for (label, reserved) in [("no reservation", false), ("under WE-RO, registered", true)] {
        if reserved {
            let a = d.server().arbiter();
            let reg = ProutRequest::new(ServiceAction::RegisterAndIgnore).sa_key(1);
            assert_eq!(a.prout("bench", &reg, None), PrStatus::Good);
            let reg = ProutRequest::new(ServiceAction::RegisterAndIgnore).sa_key(2);
            assert_eq!(a.prout("other", &reg, None), PrStatus::Good);
            let res = ProutRequest::new(ServiceAction::Reserve)
                .key(2)
                .typ(ResType::WriteExclusiveRegistrantsOnly);
            assert_eq!(a.prout("other", &res, None), PrStatus::Good);
        }
        let (wiops, wmib) = run(&mut c, true, secs);
        let (riops, rmib) = run(&mut c, false, secs);
        println!("  {label:26} randwrite {wiops:>9.0} IOPS {wmib:>7.1} MiB/s | randread {riops:>9.0} IOPS {rmib:>7.1} MiB/s");
    }
    println!("  process RSS (daemon and client): {:.1} MiB", rss_mib());
}

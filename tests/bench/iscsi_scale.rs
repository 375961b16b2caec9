//! Elastic SAN's scale on one disk: the daemon binary's RSS and threads, and the aggregate 4 KiB
//! random-read IOPS, at 1, 32 and 128 sessions. At 1: one iSCSI session; at 32 and 128: that
//! many minus one iSCSI sessions (four client hosts' initiator names, many ISIDs each) and one
//! vhost-user-scsi guest through a raw frontend. Every session reads at depth 1 from its own
//! client thread (the guest from the main thread), 5 s per step (SHAREDISK_BENCH_SECS changes
//! it), on a 1 GiB sparse image. It prints figures and asserts nothing about speed.
//! Run: `cargo bench --bench iscsi_scale` (a release build).

#[path = "../common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::iscsi_client::{free_port, IscsiClient};
use common::process::DaemonProcess;
use common::scsi_client::{read16_cdb, ScsiClient};

const BLOCKS: u64 = (1 << 30) / 512;
const STEPS: [usize; 3] = [1, 32, 128];

fn client(c: usize) -> String {
    format!("iqn.2026-12.bench.elastic-san:client{c}")
}

/// A random 4 KiB-aligned LBA of the image.
fn lba(rng: &mut impl rand::Rng) -> u64 {
    rng.gen_range(0..BLOCKS / 8) * 8
}

/// VmRSS (MiB) and Threads of process `pid`.
fn rss_and_threads(pid: u32) -> (f64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().trim_end_matches(" kB").to_string())
    };
    let rss = field("VmRSS:").and_then(|v| v.parse::<f64>().ok());
    let threads = field("Threads:").and_then(|v| v.parse().ok());
    (rss.unwrap_or(0.0) / 1024.0, threads.unwrap_or(0))
}

/// `iscsi` sessions (and the guest, if any) read for `secs`: the reads done.
fn read_for(
    addr: SocketAddr,
    target: &str,
    iscsi: usize,
    guest: Option<&mut ScsiClient>,
    secs: u64,
) -> u64 {
    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for i in 0..iscsi {
            let (done, stop) = (&done, &stop);
            s.spawn(move || {
                let isid = [0x80, 0, 0, 0x02, (i >> 8) as u8, i as u8];
                let mut c = IscsiClient::login(addr, &client(i % 4), target, isid)
                    .unwrap_or_else(|st| panic!("session {i} refused: {st:04x}"));
                c.drain_ua();
                let mut rng = rand::thread_rng();
                while !stop.load(Ordering::Relaxed) {
                    let r = c.read16(lba(&mut rng), 8);
                    assert_eq!(r.status, 0, "READ(16) of session {i}");
                    done.fetch_add(1, Ordering::Relaxed);
                }
                assert!(c.logout());
            });
        }
        let end = Instant::now() + Duration::from_secs(secs);
        match guest {
            Some(g) => {
                let mut rng = rand::thread_rng();
                while Instant::now() < end {
                    let r = g.cmd(&read16_cdb(lba(&mut rng), 8), &[], 4096);
                    assert_eq!(r.status, 0, "the guest's READ(16)");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => std::thread::sleep(Duration::from_secs(secs)),
        }
        stop.store(true, Ordering::Relaxed);
    });
    done.load(Ordering::Relaxed)
}

fn main() {
    let secs: u64 = std::env::var("SHAREDISK_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let addr: SocketAddr = listen.parse().unwrap();
    let names: Vec<String> = (0..4).map(client).collect();
    let mut args = vec!["--max-shares", "128", "--iscsi-listen", &listen];
    for n in &names {
        args.extend(["--iscsi-initiator", n.as_str()]);
    }
    let d = DaemonProcess::start_args(dir.path(), &["vm1"], "1G", &args);
    let pid = d.pid().unwrap();
    let target = common::iscsi_client::served_target(&d);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "sharedisk iSCSI scale: 4 KiB random reads at depth 1 per session, {secs} s per step, \
         1 GiB sparse image, {} cores, load {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let (rss, threads) = rss_and_threads(pid);
    println!("  idle daemon: RSS {rss:.1} MiB, {threads} threads");
    for n in STEPS {
        let mut guest = (n > 1).then(|| ScsiClient::connect(&d.scsi("vm1")));
        if let Some(g) = guest.as_mut() {
            g.drain_ua();
        }
        let iscsi = if guest.is_some() { n - 1 } else { n };
        // RSS and threads are sampled while every session is logged in and reading.
        let sample = std::sync::Mutex::new((0.0, 0));
        let reads = std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_secs(secs).mul_f64(0.8));
                *sample.lock().unwrap() = rss_and_threads(pid);
            });
            read_for(addr, &target, iscsi, guest.as_mut(), secs)
        });
        let (rss, threads) = *sample.lock().unwrap();
        let iops = reads as f64 / secs as f64;
        let mix = if guest.is_some() {
            format!("{iscsi} iSCSI + 1 guest")
        } else {
            "1 iSCSI".to_string()
        };
        println!(
            "  {n:>3} sessions ({mix:>17}): {iops:>8.0} IOPS | daemon RSS {rss:>6.1} MiB, \
             {threads:>3} threads"
        );
        drop(guest);
        std::thread::sleep(Duration::from_millis(500));
    }
    d.assert_no_panic();
}

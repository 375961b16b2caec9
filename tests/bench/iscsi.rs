//! The iSCSI benchmark (issue 22): 4 KiB random reads and writes at depth 1 and 32 on one
//! session, against the release daemon's portal and against Debian's tgt (`tgtd`, as root) serving
//! the same image file, one after the other; IOPS, the time per I/O at depth 1, and the target's
//! CPU per I/O (utime + stime of its process from /proc/<pid>/stat over the run, divided by the
//! I/Os). Reads are libiscsi's `iscsi-perf -r -b 8 -m DEPTH` (Debian's libiscsi-bin), which has
//! no write mode; writes are this file's pipelined initiator (`tests/common/iscsi_client.rs`:
//! WRITE(16) with the block as immediate data, DEPTH commands outstanding). It prints the table
//! and sharedisk's ratios to tgt; it asserts nothing about speed.
//!
//! Run: `cargo build --release && cargo bench --bench iscsi`. Knobs: SHAREDISK_BENCH_SECS (per
//! run, 8), SHAREDISK_BENCH_DIR (the image's directory, /dev/shm), SHAREDISK_BENCH_BIN (the
//! daemon, target/release/sharedisk), SHAREDISK_BENCH_DEPTHS (`1,32`), SHAREDISK_BENCH_TGT=0
//! (sharedisk alone).

#[path = "../common/mod.rs"]
mod common;

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::iscsi_client::{free_port, IscsiClient};
use common::tgt::Tgt;

const INITIATOR: &str = "iqn.2026-12.io.sharedisk.bench:perf";
/// The image: 256 MiB, the span of the random offsets.
const SPAN: u64 = 256 << 20;
const BLOCK: usize = 4096;

/// One target under test: its process, portal, target name and LUN.
struct Target {
    name: &'static str,
    running: Running,
    addr: SocketAddr,
    iqn: String,
    lun: u8,
}

/// The target's process: the daemon (killed when the target is dropped) or tgtd.
enum Running {
    Sharedisk(Child),
    Tgt(Tgt),
}

impl Target {
    fn pid(&self) -> u32 {
        match &self.running {
            Running::Sharedisk(c) => c.id(),
            Running::Tgt(t) => t.child.id(),
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Running::Sharedisk(child) = &mut self.running {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One figure: I/Os per second and the target's CPU microseconds per I/O.
#[derive(Clone, Copy, Default)]
struct Figure {
    iops: f64,
    cpu_us: f64,
}

/// utime + stime of a process (all its threads), in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The image, filled with non-zero data.
fn make_image(dir: &Path) -> PathBuf {
    use std::io::Write as _;
    let image = dir.join("disk.img");
    let mut f = std::fs::File::create(&image).unwrap();
    let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8 | 1).collect();
    for _ in 0..SPAN >> 20 {
        f.write_all(&chunk).unwrap();
    }
    image
}

/// The daemon serving `image` on a portal, waited for until it logs its target name.
fn start_sharedisk(bin: &Path, image: &Path, dir: &Path) -> Target {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let log = dir.join("sharedisk.log");
    let child = Command::new(bin)
        .args(["serve", "--image"])
        .arg(image)
        .arg("--socket-dir")
        .arg(dir.join("sock"))
        .args(["--iscsi-listen", &addr.to_string()])
        .args(["--iscsi-initiator", INITIATOR])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    let deadline = Instant::now() + Duration::from_secs(20);
    let iqn = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let name = text
            .lines()
            .find_map(|l| l.split_once("iscsi: target ")?.1.split(' ').next());
        if let Some(n) = name {
            break n.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not start: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    Target {
        name: "sharedisk",
        running: Running::Sharedisk(child),
        addr,
        iqn,
        lun: 0,
    }
}

/// Debian's tgt serving `image`; `None` when it cannot run here (why is printed).
fn start_tgt(image: &Path) -> Option<Target> {
    let tgt = Tgt::start(image, "iqn.2026-12.io.sharedisk.bench:tgt")?;
    Some(Target {
        name: "tgt",
        addr: tgt.addr,
        iqn: tgt.iqn.clone(),
        lun: common::tgt::LUN,
        running: Running::Tgt(tgt),
    })
}

/// `iscsi-perf -r -b 8 -m depth` for `secs`, then SIGINT: its last average IOPS.
fn run_reads(t: &Target, depth: usize, secs: f64) -> Figure {
    let url = format!("iscsi://{}/{}/{}", t.addr, t.iqn, t.lun);
    let mut child = Command::new("iscsi-perf")
        .args([
            "-i",
            INITIATOR,
            "-r",
            "-b",
            "8",
            "-m",
            &depth.to_string(),
            &url,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("iscsi-perf (Debian's libiscsi-bin) must be installed");
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    // Let it log in and start, then measure the target's CPU over the run.
    std::thread::sleep(Duration::from_millis(500));
    let cpu0 = cpu_seconds(t.pid());
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let cpu = cpu_seconds(t.pid()) - cpu0;
    let elapsed = start.elapsed().as_secs_f64();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = reader.join().unwrap_or_default();
    let iops = text
        .rsplit("iops average ")
        .next()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or(0.0);
    let ios = iops * elapsed;
    Figure {
        iops,
        cpu_us: if ios > 0.0 { cpu * 1e6 / ios } else { 0.0 },
    }
}

/// A WRITE(16) of one 4 KiB block at a random offset, its data as immediate data.
fn send_write(c: &mut IscsiClient, lun: u8, rng: &mut u64, data: &[u8]) {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let lba = (*rng % (SPAN / BLOCK as u64)) * (BLOCK as u64 / 512);
    let mut cdb = [0u8; 16];
    cdb[0] = 0x8a;
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&((BLOCK / 512) as u32).to_be_bytes());
    let mut b = c.cmd_header(&cdb, BLOCK as u32, false, true);
    b[9] = lun;
    c.send(b, data);
}

/// `depth` WRITEs outstanding on one session for `secs`: IOPS and the target's CPU per I/O.
fn run_writes(t: &Target, depth: usize, secs: f64) -> Figure {
    let isid = [0x80, 0, 0, 0x22, (depth >> 8) as u8, depth as u8];
    let mut c = IscsiClient::login(t.addr, INITIATOR, &t.iqn, isid)
        .unwrap_or_else(|s| panic!("{}: login refused: {s:#06x}", t.name));
    let data = vec![0x5au8; BLOCK];
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    // The unit attentions of a new nexus first.
    for _ in 0..4 {
        send_write(&mut c, t.lun, &mut rng, &data);
        next_response(&mut c);
    }
    let cpu0 = cpu_seconds(t.pid());
    let start = Instant::now();
    let (mut outstanding, mut done, mut failed) = (0, 0u64, 0u64);
    loop {
        let running = start.elapsed().as_secs_f64() < secs;
        while running && outstanding < depth {
            send_write(&mut c, t.lun, &mut rng, &data);
            outstanding += 1;
        }
        if outstanding == 0 {
            break;
        }
        if next_response(&mut c) != 0 {
            failed += 1;
        }
        outstanding -= 1;
        done += 1;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds(t.pid()) - cpu0;
    if failed > 0 {
        println!("{}: {failed} of {done} writes failed", t.name);
    }
    c.logout();
    Figure {
        iops: done as f64 / elapsed,
        cpu_us: cpu * 1e6 / done.max(1) as f64,
    }
}

/// The status of the next SCSI Response (NOP-In pings answered on the way).
fn next_response(c: &mut IscsiClient) -> u8 {
    loop {
        let p = c.read().expect("a response");
        match p.opcode() {
            0x21 => {
                c.exp_stat_sn = p.u32_at(24).wrapping_add(1);
                return p.bhs[3];
            }
            0x20 if p.u32_at(20) != 0xffff_ffff => {
                let mut b = [0u8; 48];
                b[0] = 0x40;
                b[1] = 0x80;
                b[8..16].copy_from_slice(&p.bhs[8..16]);
                b[16..20].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
                b[20..24].copy_from_slice(&p.bhs[20..24]);
                b[24..28].copy_from_slice(&c.cmd_sn.to_be_bytes());
                b[28..32].copy_from_slice(&c.exp_stat_sn.to_be_bytes());
                c.send(b, &[]);
            }
            0x20 => {}
            other => panic!("unexpected PDU {other:#04x} while writes were outstanding"),
        }
    }
}

/// Every figure of one target: (pattern, figure).
fn measure(t: &Target, secs: f64) -> Vec<(String, Figure)> {
    let depths: String = env_or("SHAREDISK_BENCH_DEPTHS", "1,32".to_string());
    let mut out = Vec::new();
    for depth in depths
        .split(',')
        .filter_map(|d| d.trim().parse::<usize>().ok())
    {
        let f = run_reads(t, depth, secs);
        println!(
            "  {:9} 4k-randread-qd{depth:<2}  {:>9.0} IOPS  {:6.1} us CPU/IO",
            t.name, f.iops, f.cpu_us
        );
        out.push((format!("4k-randread-qd{depth}"), f));
        let f = run_writes(t, depth, secs);
        println!(
            "  {:9} 4k-randwrite-qd{depth:<2} {:>9.0} IOPS  {:6.1} us CPU/IO",
            t.name, f.iops, f.cpu_us
        );
        out.push((format!("4k-randwrite-qd{depth}"), f));
    }
    out
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let secs: f64 = env_or("SHAREDISK_BENCH_SECS", 8.0);
    let base: PathBuf = env_or("SHAREDISK_BENCH_DIR", PathBuf::from("/dev/shm"));
    let dir = base.join(format!("sharedisk-iscsi-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin: PathBuf = env_or(
        "SHAREDISK_BENCH_BIN",
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/sharedisk"),
    );
    assert!(
        bin.exists(),
        "{} is missing: cargo build --release",
        bin.display()
    );
    let image = make_image(&dir);
    println!(
        "iscsi bench: {secs} s per run, one session, image {SPAN} bytes in {}",
        dir.display()
    );
    let ours = {
        let t = start_sharedisk(&bin, &image, &dir);
        measure(&t, secs)
    };
    let theirs = if env_or("SHAREDISK_BENCH_TGT", 1) == 1 {
        start_tgt(&image).map(|t| measure(&t, secs))
    } else {
        None
    };
    let _ = std::fs::remove_dir_all(&dir);
    println!();
    println!("pattern              sharedisk IOPS   tgt IOPS   ratio   CPU/IO sharedisk  tgt");
    for (i, (name, f)) in ours.iter().enumerate() {
        let t = theirs
            .as_ref()
            .and_then(|v| v.get(i))
            .map(|f| f.1)
            .unwrap_or_default();
        let ratio = if t.iops > 0.0 { f.iops / t.iops } else { 0.0 };
        println!(
            "{name:20} {:>14.0} {:>10.0} {:>6.2}x {:>12.1} us {:>6.1} us",
            f.iops, t.iops, ratio, f.cpu_us, t.cpu_us
        );
    }
    for (name, f) in &ours {
        if let Some(t) = theirs
            .as_ref()
            .and_then(|v| v.iter().find(|(n, _)| n == name))
        {
            if name.ends_with("qd1") && t.1.iops > 0.0 {
                println!(
                    "{name}: time per I/O {:.1} us (tgt {:.1} us)",
                    1e6 / f.iops,
                    1e6 / t.1.iops
                );
            }
        }
    }
}

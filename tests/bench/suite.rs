//! The comparison of issue 10, in one run on one image's data: sharedisk against
//! qemu-storage-daemon (`aio=threads`, `aio=io_uring`) with the same in-process libblkio client,
//! fio (`io_uring`, `psync`) directly on the file as the raw limit, the scsi path against the blk
//! path through the same raw vhost-user driver, the cost of reservation gating, and the daemon's
//! memory with 8 guests. fio and qemu-storage-daemon use the image itself; every sharedisk
//! daemon (two cannot lock one image) serves its own copy, written back and dropped from the page
//! cache like the image. Rounds are interleaved (round, pattern, system); the table shows medians.
//! It prints figures and target lines; it asserts nothing about speed.
//!
//! Issue 11, the cost of cluster mode on the data path: `sharedisk-cluster` is the `sharedisk`
//! daemon (same flags) plus `--config` with a `[cluster]` section pointing at a single-member etcd
//! this bench starts on 127.0.0.1 (free ports, data under the scratch directory, killed at the
//! end and after a panic). It is in the run only with SHAREDISK_BENCH_DIRECT=1 (cluster mode
//! needs O_DIRECT) and in a build with `--features cluster`:
//! `SHAREDISK_BENCH_DIRECT=1 cargo bench --features cluster --bench suite`.
//!
//! Run: `tests/bench/run.sh` (installs fio, gnuplot and qemu-storage-daemon, then this), or
//! `cargo bench --bench suite`. Knobs: SHAREDISK_BENCH_SECS (per sample, 3),
//! SHAREDISK_BENCH_ROUNDS (3), SHAREDISK_BENCH_DIR (/dev/shm), SHAREDISK_BENCH_PATTERNS and
//! SHAREDISK_BENCH_SYSTEMS (comma-separated substrings of the names below, or `=name` for that
//! name alone: `sharedisk` also picks every `sharedisk-*`, `=sharedisk` only it; empty: all),
//! SHAREDISK_BENCH_OUT (the CSV and PNG directory; default `<target>/bench`),
//! SHAREDISK_BENCH_DIRECT=1 (O_DIRECT everywhere: `sharedisk --direct`, which brings io_uring,
//! qemu-storage-daemon `cache.direct=on`, fio `--direct=1`; the image then defaults to the target
//! directory's disk, since tmpfs takes no O_DIRECT).

#[path = "../common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{fence, AtomicU16, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use blkio::{Blkio, ReqFlags};
use common::blkio_client::BlkClient;
use common::process::DaemonProcess;
use common::scsi_client::{self, ScsiClient};
use common::vu_frontend::{
    self, RawDesc, RingHandle, VuFrontend, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
};

const SPAN: u64 = 1 << 30;

/// SHAREDISK_BENCH_DIRECT=1: every system bypasses the page cache.
fn direct() -> bool {
    static DIRECT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DIRECT.get_or_init(|| std::env::var("SHAREDISK_BENCH_DIRECT").is_ok_and(|v| v == "1"))
}
const RING_SIZE: u16 = 128;
/// libblkio's buffer region per connection (4 queues x QD32 x 4 KiB or 4 x QD8 x 128 KiB fit).
const REGION: usize = 8 << 20;
/// Sequential patterns keep this many requests in flight per queue.
const SEQ_QD: usize = 8;

// ---------------------------------------------------------------------------------------------
// Patterns and systems

#[derive(Clone, Copy, Debug)]
struct Pattern {
    write: bool,
    random: bool,
    bs: usize,
    qd: usize,
    queues: usize,
}

impl Pattern {
    fn name(&self) -> String {
        let kind = match (self.random, self.write) {
            (true, false) => "randread",
            (true, true) => "randwrite",
            (false, false) => "seqread",
            (false, true) => "seqwrite",
        };
        format!("{}k-{kind}-qd{}-{}q", self.bs / 1024, self.qd, self.queues)
    }

    fn all() -> Vec<Pattern> {
        let mut v = Vec::new();
        for queues in [1, 4] {
            for qd in [1, 32] {
                for write in [false, true] {
                    v.push(Pattern {
                        write,
                        random: true,
                        bs: 4096,
                        qd,
                        queues,
                    });
                }
            }
            for write in [false, true] {
                v.push(Pattern {
                    write,
                    random: false,
                    bs: 128 << 10,
                    qd: SEQ_QD,
                    queues,
                });
            }
        }
        v
    }

    /// The patterns the gating cost is measured on.
    fn gated(&self) -> bool {
        self.random && self.bs == 4096 && self.qd == 32 && self.queues == 1
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum System {
    FioUring,
    FioPsync,
    QsdThreads,
    QsdUring,
    Sharedisk,
    SharediskGated,
    VuBlk,
    /// `VuBlk` with dirty page logging on (SET_LOG_BASE and `VHOST_F_LOG_ALL`, as during a
    /// migration).
    VuBlkLogged,
    VuScsi,
    NoPoll,
    AioUring,
    AioSync,
    Cluster,
    Baseline,
}

impl System {
    const ALL: [System; 14] = [
        System::FioUring,
        System::FioPsync,
        System::QsdThreads,
        System::QsdUring,
        System::Sharedisk,
        System::SharediskGated,
        System::VuBlk,
        System::VuBlkLogged,
        System::VuScsi,
        System::NoPoll,
        System::AioUring,
        System::AioSync,
        System::Cluster,
        System::Baseline,
    ];

    /// Short name: the filter's and the CSV's.
    fn key(self) -> &'static str {
        match self {
            System::FioUring => "fio-io_uring",
            System::FioPsync => "fio-psync",
            System::QsdThreads => "qsd-threads",
            System::QsdUring => "qsd-io_uring",
            System::Sharedisk => "sharedisk",
            System::SharediskGated => "sharedisk-gated",
            System::VuBlk => "sharedisk-vu-blk",
            System::VuBlkLogged => "sharedisk-vu-blk-logged",
            System::VuScsi => "sharedisk-vu-scsi",
            System::NoPoll => "sharedisk-nopoll",
            System::AioUring => "sharedisk-aio-io_uring",
            System::AioSync => "sharedisk-aio-sync",
            System::Cluster => "sharedisk-cluster",
            System::Baseline => "sharedisk-baseline",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            System::FioUring => "fio io_uring on the file",
            System::FioPsync => "fio psync on the file (depth 1 per job)",
            System::QsdThreads => "qemu-storage-daemon aio=threads, libblkio",
            System::QsdUring => "qemu-storage-daemon aio=io_uring, libblkio",
            System::Sharedisk => "sharedisk blk, libblkio",
            System::SharediskGated => "sharedisk blk, libblkio, under WE-RO as a registrant",
            System::VuBlk => "sharedisk blk, raw vhost-user driver",
            System::VuBlkLogged => {
                "sharedisk blk, raw vhost-user driver, dirty page logging on (as in a migration)"
            }
            System::VuScsi => "sharedisk scsi READ/WRITE(16), raw vhost-user driver",
            System::NoPoll => "sharedisk blk, libblkio, --poll-us 0 (own image copy)",
            System::AioUring => "sharedisk blk, libblkio, --aio io_uring (own image copy)",
            System::AioSync => "sharedisk blk, libblkio, --aio sync (own image copy)",
            System::Cluster => {
                "sharedisk blk, libblkio, [cluster] on a local 1-member etcd (own image copy)"
            }
            System::Baseline => "$SHAREDISK_BENCH_BASELINE blk, libblkio (own image copy)",
        }
    }

    fn is_qsd(self) -> bool {
        matches!(self, System::QsdThreads | System::QsdUring)
    }

    fn is_fio(self) -> bool {
        matches!(self, System::FioUring | System::FioPsync)
    }
}

/// One measurement.
#[derive(Clone, Debug, Default)]
struct Sample {
    ios: u64,
    errors: u64,
    secs: f64,
    iops: f64,
    mbps: f64,
    p50_us: f64,
    p99_us: f64,
    /// CPU seconds of the serving process (fio: fio itself) during the sample.
    cpu_s: f64,
    /// CPU seconds of this process (the client) during the sample; fio: 0 (it is its own).
    client_cpu_s: f64,
}

impl Sample {
    fn cpu_per_mio(&self) -> f64 {
        if self.ios == 0 {
            0.0
        } else {
            self.cpu_s / self.ios as f64 * 1e6
        }
    }

    fn client_per_mio(&self) -> f64 {
        if self.ios == 0 {
            0.0
        } else {
            self.client_cpu_s / self.ios as f64 * 1e6
        }
    }
}

/// What each driver thread brings back.
struct ThreadOut {
    ios: u64,
    errors: u64,
    secs: f64,
    lat_ns: Vec<u32>,
}

fn summarize(outs: Vec<ThreadOut>, bs: usize, cpu_s: f64, client_cpu_s: f64) -> Sample {
    let mut lat: Vec<u32> = Vec::new();
    let mut s = Sample {
        cpu_s,
        client_cpu_s,
        ..Sample::default()
    };
    for o in outs {
        s.ios += o.ios;
        s.errors += o.errors;
        s.secs = s.secs.max(o.secs);
        if o.secs > 0.0 {
            s.iops += o.ios as f64 / o.secs;
        }
        lat.extend_from_slice(&o.lat_ns);
    }
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i] as f64 / 1000.0
    };
    s.p50_us = pct(0.50);
    s.p99_us = pct(0.99);
    s.mbps = s.iops * bs as f64 / 1e6;
    s
}

/// A small xorshift generator: random offsets without a lock or a syscall.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// Where queue `q` of a pattern puts its next request: random blocks over the whole image, or a
/// sequential stream through its own 1/queues of it.
struct Offsets {
    rng: Rng,
    bs: u64,
    random: bool,
    base: u64,
    len: u64,
    next: u64,
}

impl Offsets {
    fn new(p: &Pattern, q: usize, seed: u64) -> Offsets {
        let len = SPAN / p.queues as u64;
        Offsets {
            rng: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
            bs: p.bs as u64,
            random: p.random,
            base: len * q as u64,
            len,
            next: 0,
        }
    }

    fn next(&mut self) -> u64 {
        if self.random {
            (self.rng.next() % (SPAN / self.bs)) * self.bs
        } else {
            let o = self.base + self.next;
            self.next = (self.next + self.bs) % self.len;
            o
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Process figures

/// utime + stime of a process (all its threads), in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

/// A field of /proc/<pid>/status in KiB (VmRSS, RssAnon, ...).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn wait_for_socket(path: &Path, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("{what} exited with {st} before {} appeared", path.display());
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Another sharedisk on its own copy of the image (two daemons cannot lock one image): a step
/// of the data path turned off, or another build (SHAREDISK_BENCH_BASELINE=path of a binary).
struct Variant {
    child: Child,
    dir: PathBuf,
}

impl Variant {
    fn start(bin: &Path, image: &Path, dir: &Path, extra: &[&str]) -> Variant {
        let copy = copy_image(image, dir);
        let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg("--image")
            .arg(&copy)
            .arg("--socket-dir")
            .arg(dir.join("sock"))
            .arg("--guests")
            .arg("bench,other")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let v = Variant {
            child,
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !v.blk().exists() {
            assert!(Instant::now() < deadline, "{} did not start", bin.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        v
    }

    fn blk(&self) -> PathBuf {
        self.dir.join("sock/bench-blk.sock")
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Variant {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// qemu-storage-daemon serving the image as `exports` vhost-user-blk exports, 4 queues each.
struct Qsd {
    child: Child,
    sockets: Vec<PathBuf>,
}

impl Qsd {
    fn start(image: &Path, dir: &Path, aio: &str, exports: usize) -> Qsd {
        let mut cmd = Command::new("qemu-storage-daemon");
        cmd.arg("--blockdev").arg(format!(
            "driver=file,node-name=disk,filename={},aio={aio},locking=off,cache.direct={}",
            image.display(),
            if direct() { "on" } else { "off" }
        ));
        let mut sockets = Vec::new();
        for i in 0..exports {
            let sock = dir.join(format!("qsd-{aio}-{i}.sock"));
            let _ = std::fs::remove_file(&sock);
            cmd.arg("--export").arg(format!(
                "type=vhost-user-blk,id=exp{i},node-name=disk,addr.type=unix,addr.path={},writable=on,num-queues=4",
                sock.display()
            ));
            sockets.push(sock);
        }
        let log = std::fs::File::create(dir.join(format!("qsd-{aio}.log"))).unwrap();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn qemu-storage-daemon (tests/bench/run.sh installs it)");
        for s in &sockets {
            wait_for_socket(s, &mut child, "qemu-storage-daemon");
        }
        Qsd { child, sockets }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Qsd {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of a child we own and have not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// The libblkio driver: one thread per queue, QD requests in flight on each.

fn run_blkio(socket: &Path, p: &Pattern, secs: f64, pid: u32, seed: u64) -> Sample {
    let mut b = Blkio::new("virtio-blk-vhost-user").expect("libblkio");
    b.set_str("path", socket.to_str().unwrap()).unwrap();
    b.connect()
        .unwrap_or_else(|e| panic!("{}: {e}", socket.display()));
    b.set_i32("num-queues", p.queues as i32).unwrap();
    let started = b.start().expect("libblkio start");
    let region = b.alloc_mem_region(REGION).expect("alloc_mem_region");
    b.map_mem_region(&region).expect("map_mem_region");
    // SAFETY: the region is REGION bytes, mapped while `b` lives (past the threads below).
    unsafe { std::ptr::write_bytes(region.addr as *mut u8, 0xa5, REGION) };
    let per_queue = p.qd * p.bs;
    assert!(per_queue * p.queues <= REGION);
    let barrier = Arc::new(Barrier::new(p.queues + 1));
    let mut threads = Vec::new();
    for (q, mut queue) in started.queues.into_iter().enumerate() {
        let base = region.addr + q * per_queue;
        let barrier = barrier.clone();
        let p = *p;
        threads.push(std::thread::spawn(move || {
            let mut offs = Offsets::new(&p, q, seed + q as u64);
            let mut comps: Vec<MaybeUninit<blkio::Completion>> =
                (0..p.qd).map(|_| MaybeUninit::uninit()).collect();
            let mut sent = vec![Instant::now(); p.qd];
            let mut free: Vec<usize> = (0..p.qd).collect();
            let mut lat = Vec::with_capacity(1 << 20);
            let (mut ios, mut errors, mut in_flight) = (0u64, 0u64, 0usize);
            barrier.wait();
            let start = Instant::now();
            let end = start + Duration::from_secs_f64(secs);
            let mut now = start;
            loop {
                if now < end {
                    while let Some(slot) = free.pop() {
                        let buf = base + slot * p.bs;
                        let off = offs.next();
                        sent[slot] = now;
                        if p.write {
                            queue.write(off, buf as *const u8, p.bs, slot, ReqFlags::empty());
                        } else {
                            queue.read(off, buf as *mut u8, p.bs, slot, ReqFlags::empty());
                        }
                        in_flight += 1;
                    }
                }
                if in_flight == 0 {
                    break;
                }
                let n = queue.do_io(&mut comps, 1, None, None).expect("do_io");
                now = Instant::now();
                for c in &comps[..n] {
                    // SAFETY: do_io initialised the first `n` completions.
                    let c = unsafe { c.assume_init_ref() };
                    if c.ret != 0 {
                        errors += 1;
                    }
                    lat.push((now - sent[c.user_data]).as_nanos().min(u32::MAX as u128) as u32);
                    free.push(c.user_data);
                }
                in_flight -= n;
                ios += n as u64;
            }
            let secs = (now - start).as_secs_f64();
            drop(queue);
            ThreadOut {
                ios,
                errors,
                secs,
                lat_ns: lat,
            }
        }));
    }
    barrier.wait();
    let cpu0 = cpu_seconds(pid);
    let client0 = cpu_seconds(std::process::id());
    let outs: Vec<ThreadOut> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let cpu = cpu_seconds(pid) - cpu0;
    let client = cpu_seconds(std::process::id()) - client0;
    drop(b);
    summarize(outs, p.bs, cpu, client)
}

// ---------------------------------------------------------------------------------------------
// The raw vhost-user driver: the same loop for virtio-blk and virtio-scsi requests.

#[derive(Clone, Copy)]
enum Wire {
    Blk,
    /// READ(16)/WRITE(16) with this logical block size.
    Scsi {
        block: u32,
    },
}

/// One request slot of a ring: a fixed chain of three descriptors at 3*slot.
struct Slot {
    hdr: *mut u8,
    /// virtio-blk status byte, or the 108-byte virtio_scsi_cmd_resp.
    status: *mut u8,
}

struct RingJob {
    ring: RingHandle,
    slots: Vec<Slot>,
}

// SAFETY: raw addresses into the frontend's shared guest memory, which outlives the job; each
// job is used by one thread.
unsafe impl Send for RingJob {}

/// Lays out `qd` slots on ring `ring` of `fe`: header, data and status buffers, and their chains.
fn prepare_ring(fe: &mut VuFrontend, ring: usize, wire: Wire, p: &Pattern) -> RingJob {
    let mut slots = Vec::new();
    for i in 0..p.qd {
        let hdr = fe.alloc(64);
        let data = fe.alloc(p.bs);
        fe.write_mem(data, &vec![0xa5; p.bs]);
        let status_len = match wire {
            Wire::Blk => 1,
            Wire::Scsi { .. } => scsi_client::RESP_LEN,
        };
        let status = fe.alloc(status_len);
        let chain: [(u64, u32, bool); 3] = match wire {
            Wire::Blk => {
                let typ = if p.write {
                    VIRTIO_BLK_T_OUT
                } else {
                    VIRTIO_BLK_T_IN
                };
                fe.write_mem(hdr, &vu_frontend::blk_header(typ, 0));
                [
                    (hdr, 16, false),
                    (data, p.bs as u32, !p.write),
                    (status, 1, true),
                ]
            }
            Wire::Scsi { block } => {
                let blocks = (p.bs / block as usize) as u32;
                let cdb = if p.write {
                    scsi_client::write16_cdb(0, blocks)
                } else {
                    scsi_client::read16_cdb(0, blocks)
                };
                fe.write_mem(hdr, &scsi_client::req_header(&scsi_client::LUN0, 0, &cdb));
                let resp = (status, scsi_client::RESP_LEN as u32, true);
                let hdr_d = (hdr, scsi_client::REQ_HEADER_LEN as u32, false);
                if p.write {
                    [hdr_d, (data, p.bs as u32, false), resp]
                } else {
                    [hdr_d, resp, (data, p.bs as u32, true)]
                }
            }
        };
        for (j, &(addr, len, write)) in chain.iter().enumerate() {
            let index = (3 * i + j) as u16;
            let last = j == 2;
            fe.write_desc(
                ring,
                index,
                RawDesc {
                    addr,
                    len,
                    flags: if write { VRING_DESC_F_WRITE } else { 0 }
                        | if last { 0 } else { VRING_DESC_F_NEXT },
                    next: if last { 0 } else { index + 1 },
                },
            );
        }
        slots.push(Slot {
            hdr: fe.host_ptr(hdr, 64),
            status: fe.host_ptr(status, status_len),
        });
    }
    RingJob {
        ring: fe.ring_handle(ring),
        slots,
    }
}

fn eventfd_write(fd: RawFd) {
    let one = 1u64;
    // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
    unsafe { libc::write(fd, &one as *const u64 as *const libc::c_void, 8) };
}

fn eventfd_read(fd: RawFd) {
    let mut v = 0u64;
    // SAFETY: reads 8 bytes into a live u64 from a non-blocking eventfd we own.
    unsafe { libc::read(fd, &mut v as *mut u64 as *mut libc::c_void, 8) };
}

/// Drives one ring: keeps `qd` requests in flight, kicks once per batch of submissions (unless
/// the device set VRING_USED_F_NO_NOTIFY), and waits on the call eventfd when the used ring has
/// nothing new. Returns the thread's figures and how many times a lost notification had to be
/// covered by a kick after 100 ms.
fn drive_ring(
    mut job: RingJob,
    wire: Wire,
    p: Pattern,
    secs: f64,
    seed: u64,
    q: usize,
    barrier: Arc<Barrier>,
) -> (ThreadOut, u64) {
    let r = &mut job.ring;
    let size = r.size as usize;
    // SAFETY (all ring accesses below): the pointers come from `ring_handle` and stay valid while
    // the frontend lives; offsets stay inside the rings (indices are taken modulo `size`).
    let avail_idx = unsafe { &*(r.avail.add(2) as *const AtomicU16) };
    let used_flags = unsafe { &*(r.used as *const AtomicU16) };
    let used_idx = unsafe { &*(r.used.add(2) as *const AtomicU16) };
    let mut offs = Offsets::new(&p, q, seed);
    let mut sent = vec![Instant::now(); p.qd];
    let mut free: Vec<usize> = (0..p.qd).collect();
    let mut lat = Vec::with_capacity(1 << 20);
    let (mut ios, mut errors, mut in_flight, mut rekicks) = (0u64, 0u64, 0usize, 0u64);
    let mut tag = 0u64;
    barrier.wait();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut now = start;
    loop {
        if now < end && !free.is_empty() {
            while let Some(slot) = free.pop() {
                let s = &job.slots[slot];
                let off = offs.next();
                // SAFETY: header and status buffers of this slot, allocated by prepare_ring.
                unsafe {
                    match wire {
                        Wire::Blk => {
                            std::ptr::write_volatile(s.status, 0xff);
                            let sector = (off / 512).to_le_bytes();
                            std::ptr::copy_nonoverlapping(sector.as_ptr(), s.hdr.add(8), 8);
                        }
                        Wire::Scsi { block } => {
                            std::ptr::write_volatile(s.status.add(10), 0xee);
                            std::ptr::write_volatile(s.status.add(11), 0xee);
                            tag += 1;
                            let t = tag.to_le_bytes();
                            std::ptr::copy_nonoverlapping(t.as_ptr(), s.hdr.add(8), 8);
                            let lba = (off / block as u64).to_be_bytes();
                            // The CDB starts at byte 19; READ/WRITE(16) carry the LBA at 2..10.
                            std::ptr::copy_nonoverlapping(lba.as_ptr(), s.hdr.add(21), 8);
                        }
                    }
                    let head = (3 * slot) as u16;
                    let e = r.avail.add(4 + 2 * (r.avail_idx as usize % size));
                    std::ptr::write_volatile(e as *mut [u8; 2], head.to_le_bytes());
                }
                r.avail_idx = r.avail_idx.wrapping_add(1);
                sent[slot] = now;
                in_flight += 1;
            }
            fence(Ordering::SeqCst);
            avail_idx.store(r.avail_idx, Ordering::Release);
            fence(Ordering::SeqCst);
            if used_flags.load(Ordering::Acquire) & 1 == 0 {
                eventfd_write(r.kick_fd);
            }
        }
        if in_flight == 0 {
            break;
        }
        // Wait for completions: the used ring first, then the call eventfd.
        let mut ui = used_idx.load(Ordering::Acquire);
        while ui == r.last_used {
            let mut pfd = libc::pollfd {
                fd: r.call_fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            if unsafe { libc::poll(&mut pfd, 1, 100) } == 0 {
                rekicks += 1;
                eventfd_write(r.kick_fd);
            }
            eventfd_read(r.call_fd);
            ui = used_idx.load(Ordering::Acquire);
        }
        fence(Ordering::Acquire);
        now = Instant::now();
        while r.last_used != ui {
            // SAFETY: used element `last_used % size`, inside the used ring.
            let id = unsafe {
                let e = r.used.add(4 + 8 * (r.last_used as usize % size));
                u32::from_le_bytes(std::ptr::read_volatile(e as *const [u8; 4]))
            };
            r.last_used = r.last_used.wrapping_add(1);
            let slot = id as usize / 3;
            let s = &job.slots[slot];
            // SAFETY: this slot's status buffer.
            let ok = unsafe {
                match wire {
                    Wire::Blk => std::ptr::read_volatile(s.status) == 0,
                    Wire::Scsi { .. } => {
                        std::ptr::read_volatile(s.status.add(10)) == 0
                            && std::ptr::read_volatile(s.status.add(11)) == 0
                    }
                }
            };
            if !ok {
                errors += 1;
            }
            lat.push((now - sent[slot]).as_nanos().min(u32::MAX as u128) as u32);
            free.push(slot);
            in_flight -= 1;
            ios += 1;
        }
    }
    let out = ThreadOut {
        ios,
        errors,
        secs: (now - start).as_secs_f64(),
        lat_ns: lat,
    };
    (out, rekicks)
}

/// READ CAPACITY(10)'s block length.
fn scsi_block_size(c: &mut ScsiClient) -> u32 {
    let r = c.cmd(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8);
    assert!(r.is_good(), "READ CAPACITY(10): {r:?}");
    u32::from_be_bytes(r.data[4..8].try_into().unwrap())
}

fn run_raw(socket: &Path, wire: Wire, p: &Pattern, secs: f64, pid: u32, seed: u64) -> Sample {
    run_raw_logged(socket, wire, p, secs, pid, seed, false)
}

/// [`run_raw`], with dirty page logging on if `log`: SET_LOG_BASE with a bitmap over the
/// driver's memory, then `VHOST_F_LOG_ALL`, as QEMU does when a migration starts, so that the
/// daemon marks every page it writes (data-in buffers, used rings) for the whole sample.
fn run_raw_logged(
    socket: &Path,
    wire: Wire,
    p: &Pattern,
    secs: f64,
    pid: u32,
    seed: u64,
    log: bool,
) -> Sample {
    assert!(p.qd * 3 <= RING_SIZE as usize);
    let (mut fe, first_ring, wire) = match wire {
        Wire::Blk => (VuFrontend::connect(socket, p.queues, RING_SIZE), 0, wire),
        Wire::Scsi { .. } => {
            let mut c = ScsiClient::connect_queues(socket, p.queues, RING_SIZE);
            c.drain_ua();
            let block = scsi_block_size(&mut c);
            c.fe.reset();
            (c.fe, scsi_client::REQUEST_Q, Wire::Scsi { block })
        }
    };
    let jobs: Vec<RingJob> = (0..p.queues)
        .map(|q| prepare_ring(&mut fe, first_ring + q, wire, p))
        .collect();
    let dirty_log = log.then(|| fe.start_dirty_log());
    let barrier = Arc::new(Barrier::new(p.queues + 1));
    let threads: Vec<_> = jobs
        .into_iter()
        .enumerate()
        .map(|(q, job)| {
            let barrier = barrier.clone();
            let p = *p;
            std::thread::spawn(move || drive_ring(job, wire, p, secs, seed + q as u64, q, barrier))
        })
        .collect();
    barrier.wait();
    let cpu0 = cpu_seconds(pid);
    let client0 = cpu_seconds(std::process::id());
    let mut outs = Vec::new();
    let mut rekicks = 0;
    for t in threads {
        let (o, k) = t.join().unwrap();
        outs.push(o);
        rekicks += k;
    }
    let cpu = cpu_seconds(pid) - cpu0;
    let client = cpu_seconds(std::process::id()) - client0;
    if rekicks > 0 {
        eprintln!(
            "suite: {} {}: {rekicks} waits of 100 ms ended by a second kick",
            socket.display(),
            p.name()
        );
    }
    if let Some(area) = &dirty_log {
        let (marked, pages) = area.dirty_in(vu_frontend::MEM_BASE, vu_frontend::MEM_SIZE as u64);
        eprintln!(
            "suite: {} {}: dirty log on, {marked} of the driver's {pages} pages marked",
            socket.display(),
            p.name()
        );
    }
    drop(fe);
    drop(dirty_log);
    summarize(outs, p.bs, cpu, client)
}

// ---------------------------------------------------------------------------------------------
// fio

fn run_fio(image: &Path, dir: &Path, engine: &str, p: &Pattern, secs: f64) -> Sample {
    let out = dir.join("fio.json");
    let rw = match (p.random, p.write) {
        (true, false) => "randread",
        (true, true) => "randwrite",
        (false, false) => "read",
        (false, true) => "write",
    };
    let per_job = SPAN / p.queues as u64;
    let mut cmd = Command::new("fio");
    cmd.arg("--name=bench")
        .arg(format!("--filename={}", image.display()))
        .arg(format!("--ioengine={engine}"))
        .arg(format!("--rw={rw}"))
        .arg(format!("--bs={}", p.bs))
        // A synchronous engine has one request in flight per job whatever the depth.
        .arg(format!(
            "--iodepth={}",
            if engine == "psync" { 1 } else { p.qd }
        ))
        .arg(format!("--numjobs={}", p.queues))
        .arg(format!("--runtime={secs}s"))
        .arg("--time_based")
        .arg("--thread")
        .arg("--group_reporting")
        .arg("--norandommap")
        .arg("--randrepeat=0")
        .arg("--invalidate=0")
        .arg(format!("--direct={}", u8::from(direct())))
        .arg("--lat_percentiles=1")
        .arg("--output-format=json")
        .arg(format!("--output={}", out.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("fio.err")).unwrap());
    if p.random {
        cmd.arg(format!("--size={SPAN}"));
    } else {
        cmd.arg(format!("--size={per_job}"))
            .arg(format!("--offset_increment={per_job}"));
    }
    // Reaped by wait4 below, which also gives fio's own CPU time.
    #[allow(clippy::zombie_processes)]
    let child = cmd
        .spawn()
        .expect("spawn fio (tests/bench/run.sh installs it)");
    let pid = child.id() as i32;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for and reaps our child; `child` is not waited on again.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(r, pid, "wait4 fio");
    let stderr = std::fs::read_to_string(dir.join("fio.err")).unwrap_or_default();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "fio failed: {stderr}"
    );
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let cpu = tv(ru.ru_utime) + tv(ru.ru_stime);
    // fio may put notes before the JSON object.
    let text = std::fs::read_to_string(&out).expect("fio output");
    let json: serde_json::Value = serde_json::from_str(&text[text.find('{').unwrap_or(0)..])
        .unwrap_or_else(|e| panic!("fio output {}: {e}: {text}", out.display()));
    let job = &json["jobs"][0];
    let dir_ = &job[if p.write { "write" } else { "read" }];
    let ios = dir_["total_ios"].as_u64().unwrap_or(0);
    let iops = dir_["iops"].as_f64().unwrap_or(0.0);
    let pct = |k: &str| dir_["lat_ns"]["percentile"][k].as_f64().unwrap_or(0.0) / 1000.0;
    Sample {
        ios,
        errors: job["error"].as_u64().unwrap_or(0),
        secs,
        iops,
        mbps: iops * p.bs as f64 / 1e6,
        p50_us: pct("50.000000"),
        p99_us: pct("99.000000"),
        cpu_s: cpu,
        client_cpu_s: 0.0,
    }
}

// ---------------------------------------------------------------------------------------------
// Gating: "other" holds Write Exclusive - Registrants Only, "bench" is registered.

const BENCH_KEY: u64 = 0xbe;
const OTHER_KEY: u64 = 0x07;
const WE_RO: u8 = 5;

fn prout_ok(socket: &Path, sa: u8, typ: u8, rk: u64, sark: u64) {
    let mut c = ScsiClient::connect(socket);
    c.drain_ua();
    let r = c.prout(sa, typ, rk, sark, false);
    assert!(r.is_good(), "PR OUT {sa} on {}: {r:?}", socket.display());
}

fn reserve(d: &DaemonProcess) {
    prout_ok(
        &d.scsi("bench"),
        scsi_client::SA_REGISTER_AND_IGNORE,
        0,
        0,
        BENCH_KEY,
    );
    prout_ok(
        &d.scsi("other"),
        scsi_client::SA_REGISTER_AND_IGNORE,
        0,
        0,
        OTHER_KEY,
    );
    prout_ok(
        &d.scsi("other"),
        scsi_client::SA_RESERVE,
        WE_RO,
        OTHER_KEY,
        0,
    );
    let mut c = ScsiClient::connect(&d.scsi("bench"));
    c.drain_ua();
    let (_, res) = c.read_reservation();
    assert_eq!(
        res,
        Some((OTHER_KEY, WE_RO)),
        "the reservation of the gated run"
    );
    assert!(
        c.read_keys().1.contains(&BENCH_KEY),
        "bench is a registrant"
    );
}

fn clear(d: &DaemonProcess) {
    prout_ok(&d.scsi("other"), scsi_client::SA_CLEAR, 0, OTHER_KEY, 0);
}

// ---------------------------------------------------------------------------------------------
// Memory with 8 guests

struct Rss {
    system: &'static str,
    vm_rss: u64,
    anon: u64,
    shmem: u64,
}

fn memory(base: &Path) -> Vec<Rss> {
    let dir = base.join("rss");
    std::fs::create_dir_all(&dir).unwrap();
    let guests: Vec<String> = (1..=8).map(|i| format!("g{i}")).collect();
    let names: Vec<&str> = guests.iter().map(|s| s.as_str()).collect();
    let mut out = Vec::new();
    {
        let d = DaemonProcess::start(&dir, &names, "1G");
        let pid = d.pid().unwrap();
        let mut blks = Vec::new();
        let mut scsis = Vec::new();
        for (i, g) in names.iter().enumerate() {
            let mut b = BlkClient::connect(&d.blk(g)).expect("libblkio connect");
            assert_eq!(b.random_writes(256, 4096, 8, SPAN), 0, "writes of {g}");
            for k in 0..64u64 {
                b.read(((i as u64 * 64 + k) * 4096) % SPAN, 4096).unwrap();
            }
            let mut s = ScsiClient::connect(&d.scsi(g));
            s.drain_ua();
            for k in 0..32u64 {
                assert!(s.write16(k * 8, &[0x5a; 4096]).is_good());
                assert!(s.read16(k * 8, 8).is_good());
            }
            blks.push(b);
            scsis.push(s);
        }
        out.push(Rss {
            system: "sharedisk",
            vm_rss: status_kib(pid, "VmRSS"),
            anon: status_kib(pid, "RssAnon"),
            shmem: status_kib(pid, "RssShmem"),
        });
        drop(scsis);
        drop(blks);
    }
    let q = Qsd::start(&dir.join("disk.img"), &dir, "io_uring", 8);
    let mut blks = Vec::new();
    for s in &q.sockets {
        let mut b = BlkClient::connect(s).expect("libblkio connect");
        assert_eq!(b.random_writes(256, 4096, 8, SPAN), 0);
        for k in 0..64u64 {
            b.read(k * 4096, 4096).unwrap();
        }
        blks.push(b);
    }
    out.push(Rss {
        system: "qsd-io_uring",
        vm_rss: status_kib(q.pid(), "VmRSS"),
        anon: status_kib(q.pid(), "RssAnon"),
        shmem: status_kib(q.pid(), "RssShmem"),
    });
    drop(blks);
    out
}

// ---------------------------------------------------------------------------------------------
// Output

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[derive(Clone, Copy, Default)]
struct Med {
    iops: f64,
    mbps: f64,
    p50: f64,
    p99: f64,
    cpu: f64,
    client: f64,
    errors: u64,
}

fn medians(samples: &[Sample]) -> Med {
    let m = |f: fn(&Sample) -> f64| median(samples.iter().map(f).collect());
    Med {
        iops: m(|s| s.iops),
        mbps: m(|s| s.mbps),
        p50: m(|s| s.p50_us),
        p99: m(|s| s.p99_us),
        cpu: m(|s| s.cpu_per_mio()),
        client: m(|s| s.client_per_mio()),
        errors: samples.iter().map(|s| s.errors).sum(),
    }
}

fn ratio(a: f64, b: f64) -> String {
    if a > 0.0 && b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".into()
    }
}

fn mark(ok: bool) -> &'static str {
    if ok {
        "✔"
    } else {
        "✘"
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn filter(name: &str) -> impl Fn(&str) -> bool {
    let words: Vec<String> = std::env::var(name)
        .unwrap_or_default()
        .split(',')
        .map(|w| w.trim().to_string())
        .filter(|w| !w.is_empty())
        .collect();
    move |s: &str| {
        words.is_empty()
            || words.iter().any(|w| match w.strip_prefix('=') {
                Some(exact) => s == exact,
                None => s.contains(w.as_str()),
            })
    }
}

fn utc_stamp() -> String {
    Command::new("date")
        .args(["-u", "+%Y%m%dT%H%M%SZ"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "now".into())
}

fn out_dir() -> PathBuf {
    if let Ok(d) = std::env::var("SHAREDISK_BENCH_OUT") {
        return d.into();
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("bench")
}

/// Fills the image with non-zero data, 1 MiB at a time.
fn fill_image(image: &Path) {
    let mut f = std::fs::File::create(image).expect("create image");
    let mut rng = Rng(0x5eed);
    let chunk: Vec<u8> = (0..1 << 20).map(|_| (rng.next() as u8) | 1).collect();
    for _ in 0..SPAN / chunk.len() as u64 {
        f.write_all(&chunk).unwrap();
    }
    drop(f);
    settle(image);
}

/// A copy of `image` as `dir/disk.img`, made the same way for every sharedisk daemon: on disk and
/// out of the page cache, like the original after [`fill_image`].
fn copy_image(image: &Path, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let copy = dir.join("disk.img");
    std::fs::copy(image, &copy).expect("copy the image");
    settle(&copy);
    copy
}

/// Writes `image` back and drops its cached pages, so that the original and every variant's
/// copy start alike: on disk, not in the page cache (with O_DIRECT no dirty page of a fresh
/// copy is flushed by the first requests of whichever system happens to run first).
fn settle(image: &Path) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(image).expect("open the image");
    f.sync_all().unwrap();
    // SAFETY: a valid descriptor; the call only advises the kernel.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

fn chart(
    out: &Path,
    patterns: &[Pattern],
    systems: &[System],
    med: &BTreeMap<(String, System), Med>,
) {
    let dat = out.join("suite-medians.dat");
    let mut t = String::from("pattern");
    for s in systems {
        write!(t, "\t{}", s.key()).unwrap();
    }
    t.push('\n');
    for p in patterns {
        write!(t, "{}", p.name()).unwrap();
        for s in systems {
            let v = med.get(&(p.name(), *s)).map_or(f64::NAN, |m| m.iops);
            if v.is_nan() {
                t.push_str("\tNaN");
            } else {
                write!(t, "\t{v:.0}").unwrap();
            }
        }
        t.push('\n');
    }
    std::fs::write(&dat, t).unwrap();
    let png = out.join("suite.png");
    let mut gp = format!(
        "set terminal pngcairo size 1400,600 noenhanced font ',9'\n\
         set output '{}'\n\
         set title 'Median IOPS by pattern and system (one run, 1 GiB image on tmpfs)'\n\
         set style data histograms\nset style histogram clustered gap 1\n\
         set style fill solid 0.8 border -1\nset boxwidth 0.9\n\
         set logscale y\nset ylabel 'IOPS (log scale)'\nset grid ytics\n\
         set xtics rotate by -30\nset key outside right top\nset datafile missing 'NaN'\n\
         plot ",
        png.display()
    );
    for (i, _) in systems.iter().enumerate() {
        if i > 0 {
            gp.push_str(", ");
        }
        write!(
            gp,
            "'{}' using {}:xtic(1) title columnheader",
            dat.display(),
            i + 2
        )
        .unwrap();
    }
    gp.push('\n');
    let script = out.join("suite.gp");
    std::fs::write(&script, gp).unwrap();
    match Command::new("gnuplot").arg(&script).status() {
        Ok(s) if s.success() => println!("chart: {}", png.display()),
        Ok(s) => eprintln!("suite: gnuplot exited with {s}; no chart"),
        Err(e) => eprintln!("suite: gnuplot: {e}; no chart (tests/bench/run.sh installs it)"),
    }
}

/// A single-member etcd on 127.0.0.1 for `sharedisk-cluster`; killed when dropped (after a panic
/// too).
struct Etcd {
    child: Child,
    url: String,
}

impl Etcd {
    fn start(dir: &Path) -> Etcd {
        std::fs::create_dir_all(dir).unwrap();
        let free_port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .unwrap()
        };
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.join("etcd.log")).unwrap();
        let child = Command::new("etcd")
            .args(["--name", "bench", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &url])
            .args(["--advertise-client-urls", &url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("bench={peer_url}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd runs (Debian's etcd-server)");
        let mut e = Etcd { child, url };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
            if let Ok(Some(st)) = e.child.try_wait() {
                panic!(
                    "etcd exited with {st}; see {}",
                    dir.join("etcd.log").display()
                );
            }
            assert!(Instant::now() < deadline, "etcd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        e
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The configuration file of `sharedisk-cluster` in its variant directory `dir`: the paths and
/// guests [`Variant::start`] also passes as flags (they must agree), and `[cluster]` on `etcd`.
fn cluster_config(etcd: &Etcd, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("cluster.toml");
    let text = format!(
        "[image]\npath = {:?}\n[server]\nsocket_dir = {:?}\n\
         [[guest]]\nname = \"bench\"\n[[guest]]\nname = \"other\"\n\
         [cluster]\netcd = [{:?}]\ninsecure = true\nnode = \"bench\"\ndisk_id = \"bench-disk\"\nstate_dir = {:?}\n",
        dir.join("disk.img").to_str().unwrap(),
        dir.join("sock").to_str().unwrap(),
        etcd.url,
        dir,
    );
    std::fs::write(&path, text).unwrap();
    path
}

// ---------------------------------------------------------------------------------------------

fn main() {
    // `cargo bench` passes --bench; nothing else is taken from the command line.
    let secs: f64 = env_or("SHAREDISK_BENCH_SECS", 3.0);
    let rounds: usize = env_or("SHAREDISK_BENCH_ROUNDS", 3);
    let base_dir: PathBuf = env_or(
        "SHAREDISK_BENCH_DIR",
        if direct() {
            out_dir()
        } else {
            PathBuf::from("/dev/shm")
        },
    );
    let pat_ok = filter("SHAREDISK_BENCH_PATTERNS");
    let sys_ok = filter("SHAREDISK_BENCH_SYSTEMS");
    let patterns: Vec<Pattern> = Pattern::all()
        .into_iter()
        .filter(|p| pat_ok(&p.name()))
        .collect();
    let baseline = std::env::var_os("SHAREDISK_BENCH_BASELINE").map(PathBuf::from);
    let systems: Vec<System> = System::ALL
        .into_iter()
        .filter(|s| sys_ok(s.key()))
        .filter(|s| *s != System::Baseline || baseline.is_some())
        // The engine that is not the default: io_uring on the page cache, sync under O_DIRECT.
        .filter(|s| *s != System::AioUring || !direct())
        .filter(|s| *s != System::AioSync || direct())
        // Cluster mode needs O_DIRECT and a build with the `cluster` feature.
        .filter(|s| *s != System::Cluster || (direct() && cfg!(feature = "cluster")))
        .collect();
    // The memory figures: "rss" in SHAREDISK_BENCH_SYSTEMS, or no filter.
    let want_rss = sys_ok("rss");

    let base = base_dir.join(format!("sharedisk-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    // Absolute: the cluster daemon's `--image` and `--socket-dir` must equal its file's paths.
    let base = base.canonicalize().unwrap();
    // The 1 GiB image goes with the directory, after a panic too.
    let _cleanup = RemoveDir(base.clone());
    let out = out_dir();
    std::fs::create_dir_all(&out).unwrap();
    let stamp = utc_stamp();
    let csv_path = out.join(format!("suite-{stamp}.csv"));
    let mut csv = std::fs::File::create(&csv_path).unwrap();
    writeln!(csv, "round,pattern,system,queues,qd,bs,secs,ios,errors,iops,mbps,p50_us,p99_us,cpu_s,cpu_s_per_mio_io,client_cpu_s,client_cpu_s_per_mio_io,rss_kib,rss_anon_kib,rss_shmem_kib").unwrap();

    let image = base.join("disk.img");
    println!(
        "sharedisk bench suite: {} round(s) x {secs} s per sample, image {} (1 GiB, non-zero data{}), {} cores",
        rounds,
        image.display(),
        if direct() { ", O_DIRECT everywhere" } else { "" },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    fill_image(&image);

    let need_sd = systems.iter().any(|s| {
        matches!(
            s,
            System::Sharedisk
                | System::SharediskGated
                | System::VuBlk
                | System::VuBlkLogged
                | System::VuScsi
        )
    });
    let flags: &[&str] = if direct() { &["--direct"] } else { &[] };
    // On its own copy like every variant, so that `sharedisk` and its variants (the cluster's
    // included) serve the same kind of file; fio and qemu-storage-daemon use the original.
    let daemon = need_sd.then(|| {
        let dir = base.join(System::Sharedisk.key());
        copy_image(&image, &dir);
        DaemonProcess::start_args(&dir, &["bench", "other"], "1G", flags)
    });
    let variant = |sys: System, bin: &Path, extra: &[&str]| {
        let mut args: Vec<&str> = flags.to_vec();
        args.extend_from_slice(extra);
        systems
            .contains(&sys)
            .then(|| Variant::start(bin, &image, &base.join(sys.key()), &args))
    };
    let this = Path::new(env!("CARGO_BIN_EXE_sharedisk"));
    let no_poll = variant(System::NoPoll, this, &["--poll-us", "0"]);
    let aio_uring = variant(System::AioUring, this, &["--aio", "io_uring"]);
    let aio_sync = variant(System::AioSync, this, &["--aio", "sync"]);
    // Declared before the cluster daemon and after `_cleanup`: after a panic the daemon goes
    // first, then etcd, then the directory with etcd's data.
    let etcd = systems
        .contains(&System::Cluster)
        .then(|| Etcd::start(&base.join("etcd")));
    let cluster = etcd.as_ref().and_then(|e| {
        let dir = base.join(System::Cluster.key());
        let config = cluster_config(e, &dir);
        variant(
            System::Cluster,
            this,
            &["--config", config.to_str().unwrap()],
        )
    });
    let old = baseline
        .as_deref()
        .and_then(|bin| variant(System::Baseline, bin, &[]));
    let qsd_threads = systems
        .contains(&System::QsdThreads)
        .then(|| Qsd::start(&image, &base, "threads", 1));
    let qsd_uring = systems
        .contains(&System::QsdUring)
        .then(|| Qsd::start(&image, &base, "io_uring", 1));

    let mut samples: BTreeMap<(String, System), Vec<Sample>> = BTreeMap::new();
    for round in 1..=rounds {
        for p in &patterns {
            for &sys in &systems {
                if sys == System::SharediskGated && !p.gated() {
                    continue;
                }
                let seed = (round * 1000) as u64;
                let s = match sys {
                    System::FioUring => run_fio(&image, &base, "io_uring", p, secs),
                    System::FioPsync => run_fio(&image, &base, "psync", p, secs),
                    System::QsdThreads | System::QsdUring => {
                        let q = if sys == System::QsdThreads {
                            qsd_threads.as_ref()
                        } else {
                            qsd_uring.as_ref()
                        }
                        .unwrap();
                        run_blkio(&q.sockets[0], p, secs, q.pid(), seed)
                    }
                    System::Sharedisk => {
                        let d = daemon.as_ref().unwrap();
                        run_blkio(&d.blk("bench"), p, secs, d.pid().unwrap(), seed)
                    }
                    System::SharediskGated => {
                        let d = daemon.as_ref().unwrap();
                        reserve(d);
                        let s = run_blkio(&d.blk("bench"), p, secs, d.pid().unwrap(), seed);
                        clear(d);
                        s
                    }
                    System::VuBlk => {
                        let d = daemon.as_ref().unwrap();
                        run_raw(&d.blk("bench"), Wire::Blk, p, secs, d.pid().unwrap(), seed)
                    }
                    System::VuBlkLogged => {
                        let d = daemon.as_ref().unwrap();
                        let pid = d.pid().unwrap();
                        run_raw_logged(&d.blk("bench"), Wire::Blk, p, secs, pid, seed, true)
                    }
                    System::VuScsi => {
                        let d = daemon.as_ref().unwrap();
                        let wire = Wire::Scsi { block: 0 };
                        run_raw(&d.scsi("bench"), wire, p, secs, d.pid().unwrap(), seed)
                    }
                    System::NoPoll
                    | System::AioUring
                    | System::AioSync
                    | System::Cluster
                    | System::Baseline => {
                        let v = match sys {
                            System::NoPoll => &no_poll,
                            System::AioUring => &aio_uring,
                            System::AioSync => &aio_sync,
                            System::Cluster => &cluster,
                            _ => &old,
                        };
                        let v = v.as_ref().unwrap();
                        run_blkio(&v.blk(), p, secs, v.pid(), seed)
                    }
                };
                writeln!(
                    csv,
                    "{round},{},{},{},{},{},{:.3},{},{},{:.0},{:.1},{:.1},{:.1},{:.3},{:.3},{:.3},{:.3},,,",
                    p.name(),
                    sys.key(),
                    p.queues,
                    p.qd,
                    p.bs,
                    s.secs,
                    s.ios,
                    s.errors,
                    s.iops,
                    s.mbps,
                    s.p50_us,
                    s.p99_us,
                    s.cpu_s,
                    s.cpu_per_mio(),
                    s.client_cpu_s,
                    s.client_per_mio()
                )
                .unwrap();
                eprintln!(
                    "round {round} {:22} {:18} {:>9.0} IOPS p50 {:>7.1} us",
                    p.name(),
                    sys.key(),
                    s.iops,
                    s.p50_us
                );
                samples.entry((p.name(), sys)).or_default().push(s);
            }
        }
    }
    drop(qsd_threads);
    drop(qsd_uring);
    drop((no_poll, aio_uring, aio_sync, cluster, old));
    drop(etcd);
    drop(daemon);

    let rss = if want_rss { memory(&base) } else { Vec::new() };
    for r in &rss {
        writeln!(
            csv,
            "1,rss-8-guests,{},1,,,,,,,,,,,,,,{},{},{}",
            r.system, r.vm_rss, r.anon, r.shmem
        )
        .unwrap();
    }
    drop(csv);

    // ---- the table ----
    let med: BTreeMap<(String, System), Med> = samples
        .iter()
        .map(|(k, v)| (k.clone(), medians(v)))
        .collect();
    let get = |p: &Pattern, s: System| med.get(&(p.name(), s)).copied();
    let best = |p: &Pattern, f: fn(System) -> bool| -> Option<Med> {
        System::ALL
            .into_iter()
            .filter(|s| f(*s))
            .filter_map(|s| get(p, s))
            .max_by(|a, b| a.iops.total_cmp(&b.iops))
    };
    println!();
    println!("Medians of {rounds} interleaved round(s), {secs} s per sample; 4 KiB patterns at QD1/QD32, 128 KiB sequential at QD{SEQ_QD}; Nq = queues (fio: jobs).");
    println!("CPU = the serving process's utime+stime per million I/Os (fio: fio's own); cli = the client's (this process's), same unit.");
    println!("Ratios: IOPS, p50, p99, CPU against the best qemu-storage-daemon (by IOPS) and the raw limit (the better fio, by IOPS).");
    for s in &systems {
        println!("  {:18} {}", s.key(), s.describe());
    }
    let mut table = String::new();
    for p in patterns
        .iter()
        .filter(|p| systems.iter().any(|&s| get(p, s).is_some()))
    {
        writeln!(
            table,
            "\n{:24} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}  {:<23}  {:<23}",
            p.name(),
            "IOPS",
            "MB/s",
            "p50 us",
            "p99 us",
            "CPU s/M",
            "cli s/M",
            "xQSD iops p50 p99 cpu",
            "xraw iops p50 p99 cpu"
        )
        .unwrap();
        let bq = best(p, System::is_qsd);
        let raw = best(p, System::is_fio);
        for &s in &systems {
            let Some(m) = get(p, s) else { continue };
            let rel = |b: Option<Med>| match b {
                Some(b) => format!(
                    "{:>5} {:>5} {:>5} {:>5}",
                    ratio(m.iops, b.iops),
                    ratio(m.p50, b.p50),
                    ratio(m.p99, b.p99),
                    ratio(m.cpu, b.cpu)
                ),
                None => format!("{:>23}", "-"),
            };
            let err = if m.errors > 0 {
                format!("  {} ERRORS", m.errors)
            } else {
                String::new()
            };
            let client = if s.is_fio() {
                "-".to_string()
            } else {
                format!("{:.2}", m.client)
            };
            writeln!(
                table,
                "  {:22} {:>10.0} {:>8.1} {:>8.1} {:>8.1} {:>8.2} {client:>8}  {}  {}{err}",
                s.key(),
                m.iops,
                m.mbps,
                m.p50,
                m.p99,
                m.cpu,
                rel(bq),
                rel(raw)
            )
            .unwrap();
        }
    }
    print!("{table}");
    for r in &rss {
        println!(
            "\nRSS with 8 guests connected ({}): VmRSS {:.1} MiB (anon {:.1} MiB, shmem {:.1} MiB)",
            r.system,
            r.vm_rss as f64 / 1024.0,
            r.anon as f64 / 1024.0,
            r.shmem as f64 / 1024.0
        );
    }

    // ---- the targets of issue 10 ----
    println!("\nTargets (issue 10):");
    let sd = System::Sharedisk;
    for p in patterns.iter().filter(|p| p.bs == 4096 && p.queues == 1) {
        if let (Some(m), Some(q)) = (get(p, sd), best(p, System::is_qsd)) {
            let r = m.iops / q.iops;
            println!(
                "  {} {}: {r:.2}x best QSD IOPS (>= 2x)",
                mark(r >= 2.0),
                p.name()
            );
            if p.qd == 1 {
                println!(
                    "  {} {}: p50 {:.1} us vs best QSD {:.1} us (no worse)",
                    mark(m.p50 <= q.p50),
                    p.name(),
                    m.p50,
                    q.p50
                );
            }
        }
        if p.qd == 32 {
            if let (Some(m), Some(raw)) = (get(p, sd), best(p, System::is_fio)) {
                let r = m.iops / raw.iops;
                println!(
                    "  {} {}: {r:.2}x the raw limit (>= 0.7x)",
                    mark(r >= 0.7),
                    p.name()
                );
            }
        }
    }
    for p in &patterns {
        if let (Some(s), Some(b)) = (get(p, System::VuScsi), get(p, System::VuBlk)) {
            let r = s.iops / b.iops;
            println!(
                "  {} {}: scsi {r:.2}x blk, same raw driver (>= 0.8x)",
                mark(r >= 0.8),
                p.name()
            );
        }
    }
    for p in &patterns {
        if let (Some(l), Some(b)) = (get(p, System::VuBlkLogged), get(p, System::VuBlk)) {
            let r = l.iops / b.iops;
            println!(
                "  {} {}: dirty logging on: {r:.2}x the IOPS without, same raw driver (>= 0.8x)",
                mark(r >= 0.8),
                p.name()
            );
        }
    }
    for p in patterns.iter().filter(|p| p.gated()) {
        if let (Some(g), Some(m)) = (get(p, System::SharediskGated), get(p, sd)) {
            let cost = 1.0 - g.iops / m.iops;
            println!(
                "  {} {}: gating costs {:.1}% of IOPS under WE-RO (<= 3%)",
                mark(cost <= 0.03),
                p.name(),
                cost * 100.0
            );
        }
    }
    if let Some(r) = rss.iter().find(|r| r.system == "sharedisk") {
        let mib = r.vm_rss as f64 / 1024.0;
        println!(
            "  {} RSS with 8 guests {mib:.1} MiB (< 32 MiB)",
            mark(mib < 32.0)
        );
    }
    // Scaling: sharedisk's 4-queue/1-queue ratio against what the cores allow fio.
    for one in patterns.iter().filter(|p| p.queues == 1 && p.qd > 1) {
        let four = Pattern { queues: 4, ..*one };
        let ratio_of = |s: fn(System) -> bool| -> Option<f64> {
            let a = best(one, s)?;
            let b = best(&four, s)?;
            Some(b.iops / a.iops)
        };
        if let (Some(sdr), Some(raw)) = (
            ratio_of(|s| s == System::Sharedisk),
            ratio_of(System::is_fio),
        ) {
            println!(
                "  {} {} -> 4q: sharedisk x{sdr:.2}, raw x{raw:.2} (scales on the cores there are: >= 0.8 of raw's)",
                mark(sdr >= 0.8 * raw),
                one.name()
            );
        }
    }
    // Issue 11: what cluster mode costs on the data path (no target: the figure is the answer).
    let both = |p: &&Pattern| get(p, System::Cluster).is_some() && get(p, sd).is_some();
    if patterns.iter().any(|p| both(&p)) {
        println!("\nCluster mode against sharedisk alone, same run (issue 11):");
    }
    for p in patterns.iter().filter(both) {
        if let (Some(c), Some(m)) = (get(p, System::Cluster), get(p, sd)) {
            println!(
                "  {}: cluster mode {:.3}x plain IOPS, p50 {:.1} vs {:.1} us, CPU {:.2} vs {:.2} s/M",
                p.name(),
                c.iops / m.iops,
                c.p50,
                m.p50,
                c.cpu,
                m.cpu
            );
        }
    }
    println!("\nCSV: {}", csv_path.display());
    let measured = |p: &Pattern, s: System| med.contains_key(&(p.name(), s));
    let chart_patterns: Vec<Pattern> = patterns
        .iter()
        .filter(|p| systems.iter().any(|&s| measured(p, s)))
        .copied()
        .collect();
    let chart_systems: Vec<System> = systems
        .iter()
        .filter(|&&s| patterns.iter().any(|p| measured(p, s)))
        .copied()
        .collect();
    if !chart_systems.is_empty() {
        chart(&out, &chart_patterns, &chart_systems, &med);
    }
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

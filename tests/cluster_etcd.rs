//! Cluster mode across hosts: three daemons, each in its own network namespace with its own etcd
//! member (tests/common/netlab.rs), serving one image file. The guarantee under test: once a
//! PREEMPT (AND ABORT) returns GOOD, no write of the preempted initiator reaches the disk, on
//! whichever host it runs, healthy or cut off; a daemon without etcd stops admitting I/O at the
//! end of its read lease; and the state, its unit attentions and `ctl cluster status` are shared.
//!
//! The oracle (the canary): a victim writes blocks tagged with its initiator, round and sequence
//! number into region i with several writes in flight; right after PREEMPT AND ABORT returns
//! GOOD the preemptor overwrites region i with a pattern; at the end every region must hold only
//! its pattern (read from the image file with O_DIRECT, not through a daemon).
//!
//! `SHAREDISK_CLUSTER_ROUNDS` (default 30) sets the healthy preempts, `SHAREDISK_CLUSTER_CUT_ROUNDS`
//! (default 2) the preempts with the victim's host cut off. Needs root, `ip`, `nft`, `etcd`,
//! `etcdctl`. The tests take turns (timing assertions on 2 cores).

mod common;

use std::collections::BTreeMap;
use std::mem::MaybeUninit;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use blkio::ReqFlags;
use serde_json::Value;

use common::blkio_client::BlkClient;
use common::ctl::ctl;
use common::deadline::SetOnDrop;
use common::netlab::{self, ClusterOpts, DaemonConfig, NetLab, ELECTION_TIMEOUT_MS};
use common::scsi_client::*;
use common::vu_frontend::{VuFrontend, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_OUT};

const BUSY: u8 = 0x08;
const WRITE_EXCLUSIVE: u8 = 1;
const WRITE_EXCLUSIVE_RO: u8 = 5;
/// The PR key of host k's guest.
fn key(k: usize) -> u64 {
    0x5eed_0000 + k as u64
}
fn guest(k: usize) -> String {
    format!("g{k}")
}

/// One test at a time: each brings up its own lab, and the timing bounds assume an idle machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A lab with one daemon per host, each serving guest `g<k>`, all serving.
struct Cluster {
    lab: NetLab,
    cfg: Vec<DaemonConfig>,
    opts: ClusterOpts,
}

impl Cluster {
    fn start(opts: ClusterOpts) -> Cluster {
        let mut lab = NetLab::new();
        let mut cfg = Vec::new();
        // One after the other: the first creates the image, the others open it.
        for k in 1..=lab.n {
            let c = lab.daemon_config(k, &[&guest(k)], &opts);
            lab.start_daemon(&c);
            cfg.push(c);
        }
        let c = Cluster { lab, cfg, opts };
        for k in 1..=c.lab.n {
            c.wait_serving(k, true, Duration::from_secs(20));
        }
        c
    }

    fn cfg(&self, k: usize) -> &DaemonConfig {
        &self.cfg[k - 1]
    }

    fn status(&self, k: usize) -> Value {
        let out = ctl(&self.cfg(k).control, &["--json", "cluster", "status"]);
        assert_eq!(
            out.code, 0,
            "ctl cluster status on h{k}: {}{}",
            out.stdout, out.stderr
        );
        out.json()
    }

    #[track_caller]
    fn wait_serving(&self, k: usize, serving: bool, timeout: Duration) -> Duration {
        let t = Instant::now();
        loop {
            let s = self.status(k);
            if s["serving"] == serving {
                return t.elapsed();
            }
            assert!(
                t.elapsed() < timeout,
                "h{k} serving != {serving} after {timeout:?}: {s}\n{}",
                self.lab.logs_summary()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn scsi(&self, k: usize) -> ScsiClient {
        let mut c = ScsiClient::connect(&self.cfg(k).scsi(&guest(k)));
        c.drain_ua();
        c
    }

    fn blk(&self, k: usize) -> VuFrontend {
        VuFrontend::connect(&self.cfg(k).blk(&guest(k)), 1, 128)
    }

    fn blkio(&self, k: usize) -> BlkClient {
        BlkClient::connect(&self.cfg(k).blk(&guest(k))).expect("libblkio connects")
    }
}

/// Asserts a PR OUT answered GOOD.
#[track_caller]
fn good(r: ScsiResult, what: &str) {
    assert!(r.is_good(), "{what}: {r:?}");
}

// ---- the canary ----

const REGION_SECTORS: u64 = 64;
/// Regions start here (sector), clear of the sectors the other tests scribble on.
const REGIONS_START: u64 = 2048;
const REQ_SECTORS: u64 = 8;

fn region_sector(i: usize) -> u64 {
    REGIONS_START + i as u64 * REGION_SECTORS
}

/// The pattern the preemptor writes over region `i`.
fn pattern(i: usize) -> Vec<u8> {
    let mut v = vec![0u8; (REGION_SECTORS * 512) as usize];
    for (s, block) in v.chunks_mut(512).enumerate() {
        block[..8].copy_from_slice(b"PATTERN!");
        block[8..16].copy_from_slice(&(i as u64).to_le_bytes());
        block[16..24].copy_from_slice(&(s as u64).to_le_bytes());
    }
    v
}

/// A victim's block: initiator, round, sequence number.
fn tag_block(block: &mut [u8], initiator: u64, round: u64, seq: u64) {
    block.fill(0);
    block[..8].copy_from_slice(b"VICTIM!!");
    block[8..16].copy_from_slice(&initiator.to_le_bytes());
    block[16..24].copy_from_slice(&round.to_le_bytes());
    block[24..32].copy_from_slice(&seq.to_le_bytes());
}

#[derive(Clone, Copy, Debug)]
struct Rec {
    submitted: Instant,
    done: Instant,
    ret: i32,
}

/// Writes tagged 4 KiB requests into region `round` with `depth` in flight until `stop` is set,
/// then waits for those in flight. Returns every request's outcome.
fn tagged_writes(
    c: &mut BlkClient,
    initiator: u64,
    round: usize,
    depth: usize,
    stop: &AtomicBool,
    ok: &AtomicUsize,
    failed: &AtomicUsize,
) -> Vec<Rec> {
    let (q, region) = c.queue_and_region();
    let base = region.addr;
    let mut free: Vec<usize> = (0..depth).collect();
    let mut inflight: Vec<Option<Instant>> = vec![None; depth];
    let mut recs = Vec::new();
    let mut comps: Vec<MaybeUninit<blkio::Completion>> =
        (0..depth).map(|_| MaybeUninit::uninit()).collect();
    let mut seq = 0u64;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        while let Some(slot) = (!stopping).then(|| free.pop()).flatten() {
            let pos = (seq * REQ_SECTORS) % REGION_SECTORS;
            // SAFETY: the region is mapped for REGION_LEN bytes; slot buffers do not overlap.
            let buf =
                unsafe { std::slice::from_raw_parts_mut((base + slot * 4096) as *mut u8, 4096) };
            for (s, b) in buf.chunks_mut(512).enumerate() {
                tag_block(b, initiator, round as u64, seq * 8 + s as u64);
            }
            let sector = region_sector(round) + pos;
            q.write(
                sector * 512,
                (base + slot * 4096) as *const u8,
                4096,
                slot,
                ReqFlags::empty(),
            );
            inflight[slot] = Some(Instant::now());
            seq += 1;
        }
        if free.len() == depth {
            return recs;
        }
        let mut timeout = Duration::from_secs(30);
        let n = q
            .do_io(&mut comps, 1, Some(&mut timeout), None)
            .expect("do_io");
        assert!(n > 0, "victim writes not completed within 30 s");
        let now = Instant::now();
        for comp in &comps[..n] {
            // SAFETY: do_io initialised the first `n` completions.
            let comp = unsafe { comp.assume_init_ref() };
            let slot = comp.user_data;
            recs.push(Rec {
                submitted: inflight[slot].take().expect("completion of a free slot"),
                done: now,
                ret: comp.ret,
            });
            if comp.ret == 0 { ok } else { failed }.fetch_add(1, Ordering::Relaxed);
            free.push(slot);
        }
    }
}

/// Reads `len` bytes at `offset` of the image with O_DIRECT (no page cache of this process).
fn read_direct(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap();
    let layout = std::alloc::Layout::from_size_align(len, 4096).unwrap();
    // SAFETY: a fresh allocation of `len` bytes, freed below; read_exact_at fills it.
    unsafe {
        let p = std::alloc::alloc_zeroed(layout);
        let buf = std::slice::from_raw_parts_mut(p, len);
        f.read_exact_at(buf, offset).unwrap();
        let v = buf.to_vec();
        std::alloc::dealloc(p, layout);
        v
    }
}

/// Blocks of regions `0..rounds` that do not hold their pattern: (region, sector, what is there).
fn late_blocks(image: &Path, rounds: usize) -> Vec<(usize, u64, String)> {
    let mut late = Vec::new();
    for i in 0..rounds {
        let got = read_direct(
            image,
            region_sector(i) * 512,
            (REGION_SECTORS * 512) as usize,
        );
        let want = pattern(i);
        for (s, (g, w)) in got.chunks(512).zip(want.chunks(512)).enumerate() {
            if g != w {
                let what = if &g[..8] == b"VICTIM!!" {
                    format!(
                        "victim block: initiator {} round {} seq {}",
                        u64::from_le_bytes(g[8..16].try_into().unwrap()),
                        u64::from_le_bytes(g[16..24].try_into().unwrap()),
                        u64::from_le_bytes(g[24..32].try_into().unwrap())
                    )
                } else {
                    format!("{:02x?}", &g[..32])
                };
                late.push((i, s as u64, what));
            }
        }
    }
    late
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

/// Sets up the canary: h1's guest holds Write Exclusive – Registrants Only, h2's guest (the
/// victim) is registered and may write.
fn canary_setup(c: &Cluster) -> (ScsiClient, VuFrontend, ScsiClient, BlkClient) {
    let mut s1 = c.scsi(1);
    good(s1.prout(SA_REGISTER, 0, 0, key(1), false), "h1 REGISTER");
    good(
        s1.prout(SA_RESERVE, WRITE_EXCLUSIVE_RO, key(1), 0, false),
        "h1 RESERVE WERO",
    );
    let mut s2 = c.scsi(2);
    good(s2.prout(SA_REGISTER, 0, 0, key(2), false), "h2 REGISTER");
    (s1, c.blk(1), s2, c.blkio(2))
}

/// The victim (h2) re-registers after a preempt: its first commands (with the UAs in `seen`
/// that the caller took already) must report REGISTRATIONS PREEMPTED (the unit attention crossed hosts), then a write gets RESERVATION CONFLICT, then
/// REGISTER succeeds.
#[track_caller]
fn victim_rejoins(s2: &mut ScsiClient, round: usize, seen: &[SenseTriple]) {
    let mut ua = seen.to_vec();
    ua.extend(s2.drain_ua());
    assert!(
        ua.contains(&(6, 0x2a, 0x05)),
        "round {round}: the victim's UAs {ua:02x?} lack 2A/05 REGISTRATIONS PREEMPTED"
    );
    let w = retry_busy(|| s2.write16(region_sector(round), &[0u8; 512]));
    assert_eq!(
        w.status, RESERVATION_CONFLICT,
        "round {round}: write of a preempted initiator: {w:?}"
    );
    good(
        retry_busy(|| s2.prout(SA_REGISTER, 0, 0, key(2), false)),
        "victim REGISTER again",
    );
}

/// READ KEYS, sent again while BUSY: (PRgeneration, keys).
fn keys_of(s: &mut ScsiClient) -> (u32, Vec<u64>) {
    let r = retry_busy(|| s.prin(PRIN_READ_KEYS, 8192));
    assert!(r.is_good(), "READ KEYS: {r:?}");
    let d = &r.data;
    let keys = d[8..]
        .chunks(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
        .collect();
    (u32::from_be_bytes(d[0..4].try_into().unwrap()), keys)
}

/// Sends a command again while it gets BUSY, as an initiator does (etcd may still be electing a
/// leader after a heal: a member that was cut off disrupts the term when it comes back), for up
/// to 10 s.
fn retry_busy(mut f: impl FnMut() -> ScsiResult) -> ScsiResult {
    let t = Instant::now();
    loop {
        let r = f();
        if r.status != BUSY || t.elapsed() > Duration::from_secs(10) {
            return r;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Round {
    /// From the first PREEMPT AND ABORT sent to GOOD.
    latency: Duration,
    /// The victim's writes.
    recs: Vec<Rec>,
    /// When the first PREEMPT AND ABORT was sent.
    sent: Instant,
    /// How many times it got BUSY first.
    busy: usize,
}

/// One canary round: the victim writes into region `round` while `before_preempt` runs, the
/// preempt is sent and the preemptor overwrites the region, then for `keep_writing` more.
#[allow(clippy::too_many_arguments)]
fn canary_round(
    c: &Cluster,
    round: usize,
    s1: &mut ScsiClient,
    b1: &mut VuFrontend,
    b2: &mut BlkClient,
    before_preempt: &(dyn Fn() + Sync),
    keep_writing: Duration,
) -> Round {
    let stop = AtomicBool::new(false);
    let ok = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let preemptor = s.spawn(|| {
            // The victim stops writing also when this thread fails.
            let _stop = SetOnDrop(&stop);
            // The victim has writes in flight and completing before the preempt.
            let t = Instant::now();
            while ok.load(Ordering::Relaxed) < 16 {
                assert!(
                    t.elapsed() < Duration::from_secs(10),
                    "round {round}: victim writes do not complete ({} failed)\n{}",
                    failed.load(Ordering::Relaxed),
                    c.lab.logs_summary()
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            before_preempt();
            let sent = Instant::now();
            // BUSY is retried as an initiator would (for up to 20 s); the caller decides
            // whether it may happen.
            let mut busy = 0;
            let r = loop {
                let r = s1.prout(
                    SA_PREEMPT_AND_ABORT,
                    WRITE_EXCLUSIVE_RO,
                    key(1),
                    key(2),
                    false,
                );
                if r.status != BUSY || sent.elapsed() > Duration::from_secs(20) {
                    break r;
                }
                busy += 1;
                std::thread::sleep(Duration::from_millis(50));
            };
            let latency = sent.elapsed();
            good(r, "PREEMPT AND ABORT");
            // Right after GOOD: the preemptor owns the region.
            let (st, _) =
                b1.blk_request(VIRTIO_BLK_T_OUT, region_sector(round), &pattern(round), 0);
            assert_eq!(
                st, VIRTIO_BLK_S_OK,
                "round {round}: the preemptor's overwrite"
            );
            std::thread::sleep(keep_writing);
            (latency, sent, busy)
        });
        let recs = tagged_writes(b2, 2, round, 8, &stop, &ok, &failed);
        let (latency, sent, busy) = preemptor.join().unwrap();
        Round {
            latency,
            recs,
            sent,
            busy,
        }
    })
}

/// (a) What h1's guest commits, h2's guest sees and obeys.
#[test]
fn shared_state_across_hosts() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = Cluster::start(ClusterOpts::default());
    let mut s1 = c.scsi(1);
    let mut s2 = c.scsi(2);
    let (gen0, keys0) = s2.read_keys();
    assert!(keys0.is_empty(), "fresh disk has keys {keys0:x?}");

    good(s1.prout(SA_REGISTER, 0, 0, key(1), false), "h1 REGISTER");
    good(
        s1.prout(SA_RESERVE, WRITE_EXCLUSIVE, key(1), 0, false),
        "h1 RESERVE WE",
    );
    // No wait: by the time h1's PR OUT returned, h2's daemon must answer from the new state.
    let (gen, keys) = s2.read_keys();
    assert_eq!(keys, vec![key(1)], "h2 sees h1's key");
    assert_eq!(gen, gen0 + 1, "PRgeneration counts the REGISTER only");
    assert_eq!(
        s2.read_reservation(),
        (gen, Some((key(1), WRITE_EXCLUSIVE))),
        "h2 sees h1's reservation"
    );
    assert_eq!(s1.read_keys(), (gen, vec![key(1)]));

    // h2's guest is not the holder: its writes conflict on both paths, its reads pass.
    let mut b2 = c.blk(2);
    let (st, _) = b2.blk_request(VIRTIO_BLK_T_OUT, 100, &[0x22; 512], 0);
    assert_eq!(st, VIRTIO_BLK_S_IOERR, "blk write of a non-holder on h2");
    let w = s2.write16(100, &[0x22; 512]);
    assert_eq!(w.status, RESERVATION_CONFLICT, "scsi write on h2: {w:?}");
    assert_eq!(b2.blk_read(100, 512), vec![0u8; 512], "reads pass under WE");

    // The holder's succeed, on both paths.
    let mut b1 = c.blk(1);
    b1.blk_write(100, &[0x11; 512]);
    good(s1.write16(101, &[0x12; 512]), "holder's scsi write");
    assert_eq!(b2.blk_read(100, 1024)[..512], [0x11; 512]);
    assert_eq!(b2.blk_read(101, 512), vec![0x12; 512]);

    // A third host joins the view too, and after the holder releases, h2 may write.
    let mut s3 = c.scsi(3);
    assert_eq!(s3.read_reservation().1, Some((key(1), WRITE_EXCLUSIVE)));
    good(
        s1.prout(SA_RELEASE, WRITE_EXCLUSIVE, key(1), 0, false),
        "RELEASE",
    );
    assert_eq!(s2.read_reservation().1, None);
    let (st, _) = b2.blk_request(VIRTIO_BLK_T_OUT, 100, &[0x22; 512], 0);
    assert_eq!(
        st, VIRTIO_BLK_S_OK,
        "h2 writes once the reservation is gone"
    );
}

/// (b) Healthy preempts under the victim's write load: no victim block after the pattern.
#[test]
fn canary_healthy_preempts() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rounds = env_usize("SHAREDISK_CLUSTER_ROUNDS", 30);
    let c = Cluster::start(ClusterOpts::default());
    let (mut s1, mut b1, mut s2, mut b2) = canary_setup(&c);
    let mut lat = Vec::new();
    let mut failed_writes = 0;
    let mut busy = 0;
    for round in 0..rounds {
        let Round {
            latency: l,
            recs,
            sent,
            busy: b,
        } = canary_round(
            &c,
            round,
            &mut s1,
            &mut b1,
            &mut b2,
            &|| {},
            Duration::from_millis(20),
        );
        lat.push(l);
        busy += b;
        // After GOOD no victim write may succeed; before the preempt, they all did.
        let returned = sent + l;
        for r in &recs {
            if r.submitted > returned {
                assert_ne!(
                    r.ret, 0,
                    "round {round}: a victim write sent after GOOD succeeded"
                );
            }
            if r.done < sent {
                assert_eq!(
                    r.ret, 0,
                    "round {round}: a victim write failed before the preempt"
                );
            }
        }
        failed_writes += recs.iter().filter(|r| r.ret != 0).count();
        victim_rejoins(&mut s2, round, &[]);
    }
    assert!(failed_writes > 0, "the victim never wrote after a preempt");
    assert_eq!(busy, 0, "healthy PREEMPTs answered BUSY");
    let late = late_blocks(&c.lab.image(), rounds);
    assert!(late.is_empty(), "late blocks: {late:?}");
    lat.sort();
    println!(
        "healthy PREEMPT AND ABORT x{rounds}: p50 {:?}, p99 {:?}, max {:?}; 0 late blocks",
        percentile(&lat, 50),
        percentile(&lat, 99),
        lat.last().unwrap()
    );
    // No victim or wait for a lease: the wait is one ack round trip.
    assert!(
        percentile(&lat, 50) < c.opts.lease(),
        "healthy preempts wait for acks, not for leases: {lat:?}"
    );
}

/// (c) The victim's host is cut off just before the preempt.
#[test]
fn canary_victim_cut_off() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rounds = env_usize("SHAREDISK_CLUSTER_CUT_ROUNDS", 2);
    let c = Cluster::start(ClusterOpts::default());
    let bound = c.opts.fence_bound() + Duration::from_millis(500);
    // Two things before the wait for the victim's lease can add to a PREEMPT: when the issuer's
    // calls went to the victim's etcd member, the commit waits for that member's share of the
    // call (half a lease) before it goes to another; when that member led etcd, the others
    // elect a new leader first (one to two election timeouts, three when a vote splits: CI saw
    // terms 18 to 20 in one election and a PREEMPT 85 ms over a two-timeout allowance).
    let share = c.opts.lease() / 2;
    let election = Duration::from_millis(3 * ELECTION_TIMEOUT_MS);
    let (mut s1, mut b1, mut s2, mut b2) = canary_setup(&c);
    // PREEMPT latencies by (issuer's calls went to the victim's member, that member led).
    let mut lat: BTreeMap<(bool, bool), Vec<Duration>> = BTreeMap::new();
    let mut busy = 0;
    for round in 0..rounds {
        let cut = Mutex::new(None);
        let led = AtomicBool::new(false);
        let via = AtomicBool::new(false);
        let Round {
            latency: l,
            recs,
            sent,
            busy: b,
        } = canary_round(
            &c,
            round,
            &mut s1,
            &mut b1,
            &mut b2,
            &|| {
                led.store(c.lab.leader() == 2, Ordering::Relaxed);
                let answering = c.status(1)["etcd_answering"].clone();
                via.store(answering == netlab::client_url(2), Ordering::Relaxed);
                c.lab.link_down(2);
                *cut.lock().unwrap() = Some(Instant::now());
            },
            // The victim keeps writing through its lease's end and a whole hold.
            c.opts.hold() + Duration::from_millis(500),
        );
        let cut = cut.into_inner().unwrap().unwrap();
        lat.entry((via.into_inner(), led.into_inner()))
            .or_default()
            .push(l);
        busy += b;
        // Writes sent once the victim's lease surely ended fail, and so do writes sent after
        // GOOD; the first ones after the lease's end were held for hold_ms before failing.
        let lease_end =
            cut + c.opts.lease().mul_f64(1.0 + c.opts.drift) + Duration::from_millis(100);
        let returned = sent + l;
        for r in &recs {
            if r.submitted > lease_end.min(returned) {
                assert_eq!(
                    r.ret,
                    -libc::EIO,
                    "round {round}: a write after the lease: {r:?}"
                );
            }
        }
        let failed: Vec<&Rec> = recs.iter().filter(|r| r.ret != 0).collect();
        assert!(!failed.is_empty(), "round {round}: no victim write failed");
        assert!(failed.iter().all(|r| r.ret == -libc::EIO));
        let held = failed.iter().map(|r| r.done - r.submitted).max().unwrap();
        assert!(
            held >= c.opts.hold().mul_f64(0.9) && held <= c.opts.hold() + Duration::from_secs(1),
            "round {round}: writes without a lease were failed after at most {held:?}, not held \
             for hold_ms ({:?})",
            c.opts.hold()
        );

        c.lab.link_up(2);
        let healed = Instant::now();
        c.wait_serving(2, true, Duration::from_secs(10));
        // After the heal: UA 2A/05 first (BUSY while still catching up), then conflict.
        let ua = loop {
            let r = s2.tur();
            if r.status == BUSY {
                assert!(
                    healed.elapsed() < Duration::from_secs(5),
                    "h2 BUSY 5 s after heal"
                );
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            break r;
        };
        assert_eq!(
            (ua.status, ua.sense),
            (CHECK_CONDITION, Some((6, 0x2a, 0x05))),
            "round {round}: the victim's first command after the heal"
        );
        println!("round {round}: UA after the heal in {:?}", healed.elapsed());
        victim_rejoins(&mut s2, round, &[ua.sense.unwrap()]);
    }
    let late = late_blocks(&c.lab.image(), rounds);
    assert!(late.is_empty(), "late blocks: {late:?}");
    let mut worst = Duration::ZERO;
    let mut report = Vec::new();
    for (&(via, led), l) in lat.iter_mut() {
        l.sort();
        let limit = bound
            + if via { share } else { Duration::ZERO }
            + if led { election } else { Duration::ZERO };
        let max = *l.last().unwrap();
        report.push(format!(
            "issuer {} the victim's member, which {}: x{} p50 {:?} max {max:?} (bound {limit:?})",
            if via { "on" } else { "not on" },
            if led { "led" } else { "followed" },
            l.len(),
            percentile(l, 50),
        ));
        if max > limit {
            worst = worst.max(max - limit);
        }
    }
    let all: Vec<Duration> = {
        let mut v: Vec<Duration> = lat.values().flatten().copied().collect();
        v.sort();
        v
    };
    println!(
        "PREEMPT AND ABORT with the victim cut off x{rounds}: p50 {:?}, max {:?}; {}; {busy} BUSY \
         answers retried; 0 late blocks",
        percentile(&all, 50),
        all.last().unwrap(),
        report.join("; ")
    );
    // Checked last, so that a failure here comes with the figures above.
    assert_eq!(busy, 0, "PREEMPT answered BUSY with the victim cut off");
    assert!(
        worst.is_zero(),
        "a PREEMPT with the victim cut off took {worst:?} longer than its bound"
    );
}

/// (d) etcd loses its quorum: every daemon stops admitting within its lease, PR OUT gets BUSY;
/// with the quorum back, I/O and PR OUT work again.
#[test]
fn quorum_lost_fences_every_daemon() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = Cluster::start(ClusterOpts::default());
    let mut blks: Vec<VuFrontend> = (1..=3).map(|k| c.blk(k)).collect();
    let mut s3 = c.scsi(3);
    for (i, b) in blks.iter_mut().enumerate() {
        b.blk_write(10 + i as u64, &[0xa0 + i as u8; 512]);
    }
    let leader = c.lab.leader();
    let other = if leader == 1 { 2 } else { 1 };
    c.lab.stop_etcd(leader);
    c.lab.stop_etcd(other);
    let stopped = Instant::now();
    let lease_end = c.opts.lease().mul_f64(1.0 + c.opts.drift) + Duration::from_millis(200);
    std::thread::sleep(lease_end);
    // Writes sent now, on every host at once, are held until hold_ms after the lease ended
    // (not before `stopped`), then fail.
    let done: Vec<(u8, Instant)> = std::thread::scope(|sc| {
        let hs: Vec<_> = blks
            .iter_mut()
            .enumerate()
            .map(|(i, b)| {
                sc.spawn(move || {
                    let (st, _) = b.blk_request(VIRTIO_BLK_T_OUT, 10 + i as u64, &[0xee; 512], 0);
                    (st, Instant::now())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (st, at)) in done.iter().enumerate() {
        assert_eq!(
            *st,
            VIRTIO_BLK_S_IOERR,
            "h{}: a write without a quorum",
            i + 1
        );
        let after = *at - stopped;
        assert!(
            after >= c.opts.hold() && after <= lease_end + c.opts.hold() + Duration::from_secs(1),
            "h{}: the write failed {after:?} after the quorum was lost; it should be held for \
             hold_ms ({:?}) after the lease ended",
            i + 1,
            c.opts.hold()
        );
    }
    for k in 1..=3 {
        let s = c.status(k);
        assert_eq!(s["serving"], false, "h{k} serves without a quorum: {s}");
    }
    let r = s3.prout(SA_REGISTER, 0, 0, key(3), false);
    assert_eq!(r.status, BUSY, "PR OUT without a quorum: {r:?}");
    assert!(stopped.elapsed() < Duration::from_secs(30));

    c.lab.cont_etcd(leader);
    c.lab.cont_etcd(other);
    c.lab.wait_healthy(Duration::from_secs(10));
    for k in 1..=3 {
        c.wait_serving(k, true, Duration::from_secs(10));
    }
    for (i, b) in blks.iter_mut().enumerate() {
        b.blk_write(10 + i as u64, &[0xb0 + i as u8; 512]);
    }
    let r = s3.prout(SA_REGISTER, 0, 0, key(3), false);
    // The BUSY one was never committed: the register is new now.
    good(r, "PR OUT with the quorum back");
    let mut s1 = c.scsi(1);
    assert_eq!(s1.read_keys().1, vec![key(3)]);
    // The failed writes did not land.
    let got = read_direct(&c.lab.image(), 0, 8192);
    for i in 0..3 {
        let s = (10 + i) * 512;
        assert_eq!(got[s..s + 512], [0xb0 + i as u8; 512], "sector {}", 10 + i);
    }
}

/// (e) `ctl cluster status` lists the members with their initiators; a daemon that leaves
/// cleanly is no longer listed.
#[test]
fn ctl_cluster_status_lists_members() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::start(ClusterOpts::default());
    let mut s1 = c.scsi(1);
    good(s1.prout(SA_REGISTER, 0, 0, key(1), false), "REGISTER");
    let mut epochs = Vec::new();
    for k in 1..=3 {
        let s = c.status(k);
        assert_eq!(s["node"], format!("h{k}"), "{s}");
        assert_eq!(s["serving"], true, "{s}");
        let lr = s["lease_remaining_ms"]
            .as_u64()
            .expect("lease_remaining_ms");
        assert!(lr > 0 && lr <= c.opts.lease_ms, "{s}");
        let members = s["members"].as_array().expect("members");
        let mut nodes: Vec<(String, Vec<String>)> = members
            .iter()
            .map(|m| {
                (
                    m["node"].as_str().unwrap().to_string(),
                    m["initiators"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|i| i.as_str().unwrap().to_string())
                        .collect(),
                )
            })
            .collect();
        nodes.sort();
        assert_eq!(
            nodes,
            (1..=3)
                .map(|j| (format!("h{j}"), vec![guest(j)]))
                .collect::<Vec<_>>(),
            "h{k}'s view: {s}"
        );
        epochs.push(s["epoch"].as_u64().expect("epoch"));
    }
    // The REGISTER returned after every member acknowledged it: all apply the same epoch.
    assert!(epochs.windows(2).all(|w| w[0] == w[1]), "epochs {epochs:?}");

    c.lab.term_daemon(3);
    let s = c.status(1);
    let nodes: Vec<&str> = s["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["node"].as_str().unwrap())
        .collect();
    assert!(!nodes.contains(&"h3"), "h3 left but is listed: {s}");
    assert_eq!(nodes.len(), 2, "{s}");
}

/// (f) The issuer's host is cut off (for longer than its lease) while its PR OUT is on the way
/// to etcd: the answer is GOOD only if the change committed, and PRgeneration moves by one or
/// not at all, never more (a commit sent again after an unanswered attempt is the same commit,
/// and it is sent again until etcd tells whether it landed, within the command's budget).
#[test]
fn issuer_cut_off_mid_transaction() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rounds = env_usize("SHAREDISK_CLUSTER_ISSUER_ROUNDS", 8);
    let c = Cluster::start(ClusterOpts {
        budget_ms: Some(3000),
        ..ClusterOpts::default()
    });
    let budget = Duration::from_millis(3000);
    let mut s1 = c.scsi(1);
    let mut s2 = c.scsi(2);
    let mut held = key(1) << 16;
    good(s1.prout(SA_REGISTER, 0, 0, held, false), "h1 REGISTER");
    let port = c.lab.port_switch(1);
    // (GOOD, +1), (BUSY, +1), (BUSY, +0)
    let mut seen = [0usize; 3];
    for round in 0..rounds {
        let (gen0, keys0) = keys_of(&mut s2);
        assert_eq!(keys0, vec![held], "round {round}: before");
        let next = held + 1;
        // The cut lands anywhere from before etcd got the transaction to after it answered.
        let delay = Duration::from_micros((round as u64 * 700) % 6_000);
        // Cut for longer than the lease (the daemon loses it while the command waits), and in
        // odd rounds for longer than the command's budget too (then it cannot know: BUSY).
        let cut = if round % 2 == 0 {
            c.opts.lease() + Duration::from_millis(500)
        } else {
            budget + Duration::from_millis(1000)
        };
        let r = std::thread::scope(|sc| {
            sc.spawn(|| {
                std::thread::sleep(delay);
                port.set(false);
                std::thread::sleep(cut);
                port.set(true);
            });
            s1.prout(SA_REGISTER, 0, held, next, false)
        });
        c.lab.wait_healthy(Duration::from_secs(15));
        for k in 1..=3 {
            c.wait_serving(k, true, Duration::from_secs(15));
        }
        let (gen1, keys1) = keys_of(&mut s2);
        let committed = match keys1.as_slice() {
            [k] if *k == next => true,
            [k] if *k == held => false,
            other => panic!("round {round}: keys {other:x?} after REGISTER {held:x} -> {next:x}"),
        };
        assert_eq!(
            gen1,
            gen0 + committed as u32,
            "round {round}: PRgeneration {gen0} -> {gen1} (committed: {committed}, answer {r:?})"
        );
        assert!(
            r.is_good() || r.status == BUSY,
            "round {round}: answer {r:?}"
        );
        assert!(
            !r.is_good() || committed,
            "round {round}: GOOD without a commit"
        );
        // h1 sees the same state once it serves again.
        assert_eq!(
            keys_of(&mut s1),
            (gen1, keys1.clone()),
            "round {round}: h1's view"
        );
        seen[match (r.is_good(), committed) {
            (true, _) => 0,
            (false, true) => 1,
            (false, false) => 2,
        }] += 1;
        println!(
            "round {round}: cut {delay:?} after sending, for {cut:?}: {}, PRgeneration +{}",
            if r.is_good() { "GOOD" } else { "BUSY" },
            committed as u32
        );
        if committed {
            held = next;
        }
        s1.drain_ua();
        s2.drain_ua();
    }
    println!(
        "issuer cut off mid-transaction x{rounds}: GOOD +1: {}, BUSY +1: {}, BUSY +0: {}; never \
         GOOD without a commit, never +2",
        seen[0], seen[1], seen[2]
    );
}

/// (g) The etcd leader is killed (SIGKILL, then restarted) or stopped (SIGSTOP, then SIGCONT)
/// just before a PREEMPT AND ABORT: the PREEMPT may get BUSY while etcd elects, and once GOOD no
/// write of the victim lands.
#[test]
fn leader_lost_during_preempt() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rounds = env_usize("SHAREDISK_CLUSTER_LEADER_ROUNDS", 4);
    let mut c = Cluster::start(ClusterOpts::default());
    let (mut s1, mut b1, mut s2, mut b2) = canary_setup(&c);
    let mut lat = Vec::new();
    let mut busy = 0;
    for round in 0..rounds {
        let leader = c.lab.leader();
        let kill = round % 2 == 0;
        let Round {
            latency: l,
            busy: b,
            ..
        } = canary_round(
            &c,
            round,
            &mut s1,
            &mut b1,
            &mut b2,
            &|| {
                if kill {
                    signal_etcd(&c, leader, libc::SIGKILL);
                } else {
                    c.lab.stop_etcd(leader);
                }
            },
            Duration::from_millis(200),
        );
        lat.push(l);
        busy += b;
        if kill {
            c.lab.restart_etcd(leader);
        } else {
            c.lab.cont_etcd(leader);
        }
        c.lab.wait_healthy(Duration::from_secs(15));
        for k in 1..=3 {
            c.wait_serving(k, true, Duration::from_secs(15));
        }
        println!(
            "round {round}: leader h{leader} {}: PREEMPT AND ABORT GOOD after {l:?}, {b} BUSY",
            if kill { "killed" } else { "stopped" }
        );
        victim_rejoins(&mut s2, round, &[]);
    }
    let late = late_blocks(&c.lab.image(), rounds);
    assert!(late.is_empty(), "late blocks: {late:?}");
    lat.sort();
    println!(
        "PREEMPT AND ABORT with the etcd leader lost x{rounds}: p50 {:?}, max {:?}, {busy} BUSY \
         answers retried; 0 late blocks",
        percentile(&lat, 50),
        lat.last().unwrap()
    );
}

/// SIGKILL of etcd member `k` without reaping it (the lab restarts it after the round).
fn signal_etcd(c: &Cluster, k: usize, sig: i32) {
    let pid = c.lab.etcd_pid(k);
    // SAFETY: kill(2) of a child process of this test.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

/// (h) A short lease outlives a silent first member: with `lease_ms = 300` a renewal has 100 ms,
/// less than a member's least share, so one call cannot move past a member that does not
/// answer. The next call must start after it: with etcd member 1 (every daemon's first
/// endpoint) stopped, every daemon keeps or regains its lease through the others, and serves
/// I/O and PR OUTs.
#[test]
fn short_lease_outlives_a_silent_first_member() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = Cluster::start(ClusterOpts {
        lease_ms: 300,
        max_io_ms: 200,
        ..ClusterOpts::default()
    });
    let mut blks: Vec<VuFrontend> = (1..=3).map(|k| c.blk(k)).collect();
    c.lab.stop_etcd(1);
    // Long past any lease renewed through member 1 (and past an election if it led). Nothing
    // but the renewals talks to etcd meanwhile (a `ctl cluster status` call, with a whole lease
    // to answer, would move on by itself), and the writes then must be admitted, not held
    // until `hold_ms` ends and failed.
    std::thread::sleep(Duration::from_secs(2));
    for (i, b) in blks.iter_mut().enumerate() {
        let (st, _) = b.blk_request(VIRTIO_BLK_T_OUT, 20 + i as u64, &[0xc0 + i as u8; 512], 0);
        assert_eq!(
            st,
            VIRTIO_BLK_S_OK,
            "h{}: a write with etcd member 1 silent\n{}",
            i + 1,
            c.lab.logs_summary()
        );
    }
    for k in 1..=3 {
        c.wait_serving(k, true, Duration::from_secs(5));
    }
    for k in 1..=3 {
        let mut s = c.scsi(k);
        good(
            retry_busy(|| s.prout(SA_REGISTER, 0, 0, key(k), false)),
            &format!("REGISTER on h{k} with etcd member 1 silent"),
        );
    }
    let mut s3 = c.scsi(3);
    let (_, keys) = keys_of(&mut s3);
    assert_eq!(keys.len(), 3, "every host's key: {keys:x?}");
    c.lab.cont_etcd(1);
}

/// (i) The victim's daemon crashes (SIGKILL: it leaves its member key behind) and is started
/// again. The PREEMPT AND ABORT cannot have the dead member's acknowledgement: GOOD only once
/// its lease has surely run out, within the bound. Nothing of the victim's gets through the
/// restarted daemon, which catches up before it serves and acknowledges again once the killed
/// incarnation's bound has passed (the next PR OUT then does not wait).
#[test]
fn victim_daemon_killed_and_restarted() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::start(ClusterOpts::default());
    let (mut s1, mut b1, s2, _) = canary_setup(&c);
    drop(s2);
    let round = 0;
    let mut v2 = c.blk(2);
    v2.blk_write(region_sector(round), &[0x5a; 4096]);
    c.lab.kill_daemon(2);
    let sent = Instant::now();
    good(
        s1.prout(
            SA_PREEMPT_AND_ABORT,
            WRITE_EXCLUSIVE_RO,
            key(1),
            key(2),
            false,
        ),
        "PREEMPT AND ABORT of the dead daemon's initiator",
    );
    let l = sent.elapsed();
    assert!(
        l >= c.opts.lease() && l <= c.opts.fence_bound() + Duration::from_secs(1),
        "GOOD {l:?} after the PREEMPT was sent; the dead member's lease ({:?}) must have run out \
         first, within the bound ({:?})",
        c.opts.lease(),
        c.opts.fence_bound()
    );
    let (st, _) = b1.blk_request(VIRTIO_BLK_T_OUT, region_sector(round), &pattern(round), 0);
    assert_eq!(st, VIRTIO_BLK_S_OK, "the preemptor's overwrite");

    let restarted = Instant::now();
    c.lab.restart_daemon(2);
    c.wait_serving(2, true, Duration::from_secs(20));
    let mut s2 = ScsiClient::connect(&c.cfg(2).scsi(&guest(2)));
    let first = retry_busy(|| s2.tur());
    assert_eq!(
        (first.status, first.sense.map(|s| s.0)),
        (CHECK_CONDITION, Some(6)),
        "the victim's first command on the restarted daemon: a unit attention"
    );
    s2.drain_ua();
    let w = retry_busy(|| s2.write16(region_sector(round), &[0u8; 512]));
    assert_eq!(
        w.status, RESERVATION_CONFLICT,
        "victim write on scsi: {w:?}"
    );
    let mut v2 = c.blk(2);
    let (st, _) = v2.blk_request(VIRTIO_BLK_T_OUT, region_sector(round), &[0u8; 512], 0);
    assert_eq!(st, VIRTIO_BLK_S_IOERR, "victim write on blk");
    assert_eq!(
        keys_of(&mut s2).1,
        vec![key(1)],
        "keys seen on the restarted daemon"
    );
    let late = late_blocks(&c.lab.image(), 1);
    assert!(late.is_empty(), "late blocks: {late:?}");

    // The restarted daemon acknowledges once the killed incarnation's bound has passed since
    // its join (a new incarnation vouches for nothing before): a PR OUT from h3 then settles
    // without waiting for a lease.
    std::thread::sleep(c.opts.fence_bound().saturating_sub(restarted.elapsed()));
    let mut s3 = c.scsi(3);
    let sent = Instant::now();
    good(
        retry_busy(|| s3.prout(SA_REGISTER, 0, 0, key(3), false)),
        "h3 REGISTER",
    );
    assert!(
        sent.elapsed() < c.opts.lease(),
        "a PR OUT after the restart waited {:?}",
        sent.elapsed()
    );
}

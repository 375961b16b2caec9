//! A random nemesis against cluster mode across hosts: three daemons, each in its own network
//! namespace with its own etcd member (tests/common/netlab.rs), serve one image file. Each
//! daemon's initiator writes tagged blocks without pause; random PR OUTs come from all three
//! (REGISTER AND IGNORE EXISTING KEY with a fresh key, RESERVE Write Exclusive – Registrants
//! Only, PREEMPT AND ABORT of another's key, CLEAR) while faults strike: a host's link down
//! (both ways), one-way drops, a daemon paused for less than `max_io_ms`, an etcd member paused,
//! the etcd leader killed and restarted, quorum lost (two members paused).
//!
//! **The fencing oracle**, per initiator: it writes into a region of its own. When a PREEMPT
//! AND ABORT of its key returns GOOD and PR IN then shows a reservation (so an unregistered
//! initiator may not write), the test moves it to a fresh region, at once overwrites the old one
//! with a canary, and waits for the writer's request in flight. At the end (every fault healed)
//! each closed region must still be all canary: a block that is not is a write admitted under
//! the old state that landed after GOOD. (After CLEAR nothing is fenced: no reservation is left.)
//!
//! **The history** must be linearizable against SPC-4's sequential rules (a model of the four
//! service actions, `Model`): the PR OUTs come from one thread, one at a time; a GOOD or
//! RESERVATION CONFLICT answer must be what the model answers in some state the history allows;
//! a BUSY one may have taken effect or not, and may still take effect until the state next
//! changes (its transaction is conditioned on the revision it read). After every PR OUT, READ
//! FULL STATUS through a random daemon must show one of the allowed states (PRgeneration
//! included), and at the end every daemon must show the same one.
//!
//! `SHAREDISK_NEMESIS_SECS` sets the length (default 30 s; the report's figure is 600 s),
//! `SHAREDISK_NEMESIS_SEED` the seed. Daemon pauses longer than `max_io_ms` are the pause gap,
//! covered by `tests/cluster_loopback.rs` (strict mode).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use common::ctl::ctl;
use common::deadline::SetOnDrop;
use common::netlab::{ClusterOpts, NetLab};
use common::scsi_client::*;
use common::vu_frontend::{VuFrontend, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_OUT};

const HOSTS: usize = 3;
const TYPE_WE_RO: u8 = 5;
/// A region: 8 blocks of 4 KiB.
const REGION_SECTORS: u64 = 64;

fn secs() -> u64 {
    std::env::var("SHAREDISK_NEMESIS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30)
}

// ---- the sequential model (scsi-pr.md; SPC-4 §5.14.11, §6.16.2) ----

/// A PR OUT as the driver sends it; `y` is the initiator (0-based host index).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Op {
    /// REGISTER AND IGNORE EXISTING KEY with a fresh, nonzero key.
    Register {
        y: usize,
        key: u64,
    },
    /// RESERVE, type 5.
    Reserve {
        y: usize,
        key: u64,
    },
    /// PREEMPT AND ABORT of `victim`'s key, type 5.
    Preempt {
        y: usize,
        key: u64,
        victim: u64,
    },
    Clear {
        y: usize,
        key: u64,
    },
}

/// The PR state as SPC-4 defines it, reduced to what these service actions touch (the
/// reservation is always type 5).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
struct Model {
    gen: u32,
    regs: BTreeMap<usize, u64>,
    holder: Option<usize>,
}

/// What READ FULL STATUS shows: PRgeneration, the keys (sorted), the holder's key.
type Obs = (u32, Vec<u64>, Option<u64>);

impl Model {
    fn registered(&self, y: usize, key: u64) -> bool {
        self.regs.get(&y) == Some(&key)
    }

    /// The status the command gets in this state, and the state after it.
    fn apply(&self, op: &Op) -> (u8, Model) {
        let mut m = self.clone();
        let status = match *op {
            // R&I: registers or replaces the key; a holder stays holder. +1.
            Op::Register { y, key } => {
                m.regs.insert(y, key);
                m.gen += 1;
                GOOD
            }
            // RESERVE: registered with the right key, and no reservation or its own of the same
            // type; never counted.
            Op::Reserve { y, key } => match self.holder {
                _ if !self.registered(y, key) => RESERVATION_CONFLICT,
                None => {
                    m.holder = Some(y);
                    GOOD
                }
                Some(h) if h == y => GOOD,
                Some(_) => RESERVATION_CONFLICT,
            },
            // PREEMPT (AND ABORT): the caller registered with the right key; the registrations
            // with the victim's key go (none: RC); preempting the holder's key makes the caller
            // the holder. +1.
            Op::Preempt { y, key, victim } => {
                let hit: Vec<usize> = self
                    .regs
                    .iter()
                    .filter(|(&x, &k)| k == victim && x != y)
                    .map(|(&x, _)| x)
                    .collect();
                if !self.registered(y, key) || hit.is_empty() {
                    RESERVATION_CONFLICT
                } else {
                    let holder_key = self.holder.and_then(|h| self.regs.get(&h).copied());
                    for x in hit {
                        m.regs.remove(&x);
                    }
                    if holder_key == Some(victim) {
                        m.holder = Some(y);
                    }
                    m.gen += 1;
                    GOOD
                }
            }
            // CLEAR: every registration and the reservation. +1.
            Op::Clear { y, key } => {
                if !self.registered(y, key) {
                    RESERVATION_CONFLICT
                } else {
                    m.regs.clear();
                    m.holder = None;
                    m.gen += 1;
                    GOOD
                }
            }
        };
        if status == GOOD {
            (status, m)
        } else {
            (status, self.clone())
        }
    }

    fn observed(&self) -> Obs {
        let mut keys: Vec<u64> = self.regs.values().copied().collect();
        keys.sort();
        (
            self.gen,
            keys,
            self.holder.and_then(|h| self.regs.get(&h).copied()),
        )
    }
}

/// A state the history allows, with the BUSY commands that may still take effect in it (at most
/// one of them will: each is conditioned on this state's revision).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Cand {
    m: Model,
    pending: Vec<Op>,
}

impl Cand {
    /// This state, or one of its pending commands taken effect.
    fn bases(&self) -> Vec<Cand> {
        let mut v = vec![self.clone()];
        for p in &self.pending {
            let (s, m) = self.m.apply(p);
            if s == GOOD && m != self.m {
                v.push(Cand { m, pending: vec![] });
            }
        }
        v
    }
}

/// The linearizability check of a single sequential client's history.
struct History {
    cands: HashSet<Cand>,
    log: Vec<String>,
}

impl History {
    fn new(start: Model) -> History {
        History {
            cands: HashSet::from([Cand {
                m: start,
                pending: vec![],
            }]),
            log: Vec::new(),
        }
    }

    fn fail(&self, what: String) -> ! {
        let from = self.log.len().saturating_sub(30);
        panic!(
            "the PR history is not linearizable: {what}\nlast commands:\n{}\nallowed states \
             before: {:?}",
            self.log[from..].join("\n"),
            self.cands
        );
    }

    /// A PR OUT answered `status`.
    fn step(&mut self, op: &Op, status: u8) {
        self.log.push(format!("{op:?} -> {status:#04x}"));
        let mut next = HashSet::new();
        for c in &self.cands {
            for b in c.bases() {
                let (s, m) = b.m.apply(op);
                if status == BUSY {
                    let mut pending = b.pending.clone();
                    if s == GOOD && m != b.m {
                        pending.push(op.clone());
                    }
                    next.insert(Cand { m: b.m, pending });
                } else if s == status {
                    let pending = if m == b.m { b.pending } else { vec![] };
                    next.insert(Cand { m, pending });
                }
            }
        }
        if next.is_empty() {
            self.fail(format!(
                "{op:?} answered {status:#04x}, which no allowed state gives"
            ));
        }
        if next.len() >= 10_000 {
            let from = self.log.len().saturating_sub(30);
            panic!(
                "{} states allowed after {op:?} -> {status:#04x}: too many to follow; last \
                 commands:\n{}",
                next.len(),
                self.log[from..].join("\n")
            );
        }
        self.cands = next;
    }

    /// READ FULL STATUS through host `from` showed `obs`.
    fn observe(&mut self, obs: &Obs, from: usize) {
        self.log.push(format!("  h{} sees {obs:?}", from + 1));
        let next: HashSet<Cand> = self
            .cands
            .iter()
            .flat_map(|c| c.bases())
            .filter(|b| b.m.observed() == *obs)
            .collect();
        if next.is_empty() {
            self.fail(format!(
                "h{} shows {obs:?}, which no allowed state is",
                from + 1
            ));
        }
        self.cands = next;
    }
}

// ---- the clients ----

/// A PR OUT, with unit attentions taken and the command sent again; the final status.
fn prout(c: &mut ScsiClient, sa: u8, typ: u8, rk: u64, sark: u64) -> u8 {
    for _ in 0..8 {
        let r = c.prout(sa, typ, rk, sark, false);
        match (r.status, r.sense) {
            (CHECK_CONDITION, Some((6, _, _))) => continue,
            (CHECK_CONDITION, s) => panic!("PR OUT {sa}: CHECK CONDITION {s:02x?}"),
            _ => return r.status,
        }
    }
    panic!("PR OUT {sa}: unit attentions without end");
}

/// READ FULL STATUS as the model sees it; None while the daemon answers BUSY.
fn observe(c: &mut ScsiClient) -> Option<Obs> {
    for _ in 0..8 {
        let r = c.prin(PRIN_READ_FULL_STATUS, 8192);
        match (r.status, r.sense) {
            (GOOD, _) => {
                let d = &r.data;
                let gen = u32::from_be_bytes(d[0..4].try_into().unwrap());
                let mut keys = Vec::new();
                let mut holder = None;
                let mut p = &d[8..];
                while p.len() >= 24 {
                    let key = u64::from_be_bytes(p[0..8].try_into().unwrap());
                    if p[12] & 1 != 0 {
                        assert_eq!(p[13] & 0x0f, TYPE_WE_RO, "reservation type");
                        holder = Some(key);
                    }
                    keys.push(key);
                    let tid_len = u32::from_be_bytes(p[20..24].try_into().unwrap()) as usize;
                    p = &p[24 + tid_len..];
                }
                keys.sort();
                return Some((gen, keys, holder));
            }
            (CHECK_CONDITION, Some((6, _, _))) => continue,
            (BUSY, _) => return None,
            other => panic!("READ FULL STATUS: {other:02x?}"),
        }
    }
    None
}

fn canary(region: u64) -> Vec<u8> {
    let mut b = vec![0u8; (REGION_SECTORS * 512) as usize];
    for (i, c) in b.chunks_mut(16).enumerate() {
        c[..8].copy_from_slice(b"CANARY!!");
        c[8..].copy_from_slice(&(region ^ (i as u64) << 40).to_le_bytes());
    }
    b
}

/// Writes `data` at `sector` of the image with O_DIRECT, as the preemptor's host would.
fn host_write(image: &std::path::Path, sector: u64, data: &[u8]) {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(image)
        .unwrap();
    let layout = std::alloc::Layout::from_size_align(data.len(), 4096).unwrap();
    // SAFETY: a fresh allocation of data.len() bytes, written in full before being read, and
    // freed with the same layout.
    unsafe {
        let p = std::alloc::alloc(layout);
        std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len());
        let buf = std::slice::from_raw_parts(p, data.len());
        f.write_all_at(buf, sector * 512).unwrap();
        std::alloc::dealloc(p, layout);
    }
    f.sync_all().unwrap();
}

/// What each initiator's writer shares with the PR driver.
struct Writer {
    /// The region it writes into.
    region: AtomicU64,
    /// Held while a write is prepared and in flight: taking it waits out a write aimed at a
    /// region that was just closed.
    busy: Mutex<()>,
    ok: AtomicU64,
    failed: AtomicU64,
}

fn wait_serving(control: &std::path::Path, timeout: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < timeout {
        let out = ctl(control, &["--json", "cluster", "status"]);
        if out.code == 0 && out.json()["serving"] == true {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn random_faults_and_pr_outs_keep_fencing_and_history() {
    let opts = ClusterOpts::default();
    let mut lab = NetLab::new();
    let names: Vec<String> = (1..=HOSTS).map(|i| format!("g{i}")).collect();
    let mut cfgs = Vec::new();
    for k in 1..=HOSTS {
        let c = lab.daemon_config(k, &[&names[k - 1]], &opts);
        lab.start_daemon(&c);
        cfgs.push(c);
    }
    for c in &cfgs {
        assert!(
            wait_serving(&c.control, Duration::from_secs(20)),
            "h{} never served\n{}",
            c.host,
            lab.logs_summary()
        );
    }
    let image: PathBuf = lab.image();
    let lab = Arc::new(Mutex::new(lab));
    let next_region = Arc::new(AtomicU64::new(64));
    let writers: Vec<Arc<Writer>> = (0..HOSTS)
        .map(|_| {
            Arc::new(Writer {
                region: AtomicU64::new(next_region.fetch_add(1, Ordering::SeqCst)),
                busy: Mutex::new(()),
                ok: AtomicU64::new(0),
                failed: AtomicU64::new(0),
            })
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let seed: u64 = std::env::var("SHAREDISK_NEMESIS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("nemesis: seed {seed}, {} s", secs());

    std::thread::scope(|s| {
        // The writers: tagged 4 KiB blocks, round robin over their region, one at a time.
        for (i, w) in writers.iter().enumerate() {
            let (w, stop, sock) = (w.clone(), stop.clone(), cfgs[i].blk(&names[i]));
            s.spawn(move || {
                let mut f = VuFrontend::connect(&sock, 1, 64);
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let busy = w.busy.lock().unwrap();
                    let region = w.region.load(Ordering::SeqCst);
                    let block = seq % (REGION_SECTORS / 8);
                    let mut data = vec![0u8; 4096];
                    for c in data.chunks_mut(32) {
                        c[..8].copy_from_slice(&(i as u64).to_le_bytes());
                        c[8..16].copy_from_slice(&region.to_le_bytes());
                        c[16..24].copy_from_slice(&seq.to_le_bytes());
                    }
                    let sector = region * REGION_SECTORS + block * 8;
                    let (st, _) = f.blk_request(VIRTIO_BLK_T_OUT, sector, &data, 0);
                    drop(busy);
                    if st == VIRTIO_BLK_S_OK {
                        w.ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        w.failed.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    seq += 1;
                }
            });
        }

        // The nemesis: one fault at a time, each healed before the next.
        let (stop2, lab2) = (stop.clone(), lab.clone());
        let faults = s.spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
            let mut tally = BTreeMap::<&'static str, u32>::new();
            while !stop2.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(rng.gen_range(300..1500)));
                let k = rng.gen_range(1..=HOSTS);
                let hold = Duration::from_millis(rng.gen_range(300..3500));
                let name = match rng.gen_range(0..7) {
                    0 => {
                        let l = lab2.lock().unwrap();
                        l.link_down(k);
                        std::thread::sleep(hold);
                        l.link_up(k);
                        "link down"
                    }
                    1 => {
                        let out = rng.gen_bool(0.5);
                        let l = lab2.lock().unwrap();
                        if out {
                            l.drop_outgoing(k, true);
                        } else {
                            l.drop_incoming(k, true);
                        }
                        std::thread::sleep(hold);
                        l.drop_outgoing(k, false);
                        l.drop_incoming(k, false);
                        "one-way drop"
                    }
                    2 => {
                        // Shorter than max_io_ms: longer is the pause gap.
                        let l = lab2.lock().unwrap();
                        l.stop_daemon(k);
                        std::thread::sleep(Duration::from_millis(rng.gen_range(20..400)));
                        l.cont_daemon(k);
                        "daemon paused"
                    }
                    3 => {
                        let l = lab2.lock().unwrap();
                        l.stop_etcd(k);
                        std::thread::sleep(hold);
                        l.cont_etcd(k);
                        "etcd member paused"
                    }
                    4 => {
                        let leader = lab2.lock().unwrap().leader();
                        lab2.lock().unwrap().kill_etcd(leader);
                        std::thread::sleep(hold);
                        lab2.lock().unwrap().restart_etcd(leader);
                        "etcd leader killed"
                    }
                    5 => {
                        let leader = lab2.lock().unwrap().leader();
                        let l = lab2.lock().unwrap();
                        l.stop_etcd(leader);
                        std::thread::sleep(hold);
                        l.cont_etcd(leader);
                        "etcd leader paused"
                    }
                    _ => {
                        // Quorum lost: two members paused.
                        let l = lab2.lock().unwrap();
                        let others: Vec<usize> = (1..=HOSTS).filter(|&j| j != k).collect();
                        for &j in &others {
                            l.stop_etcd(j);
                        }
                        std::thread::sleep(hold);
                        for &j in &others {
                            l.cont_etcd(j);
                        }
                        "quorum lost"
                    }
                };
                *tally.entry(name).or_default() += 1;
            }
            tally
        });

        // The PR driver, in this thread. The writers and the nemesis stop when it ends, or fails.
        let _stop = SetOnDrop(&stop);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut clients: Vec<ScsiClient> = cfgs
            .iter()
            .zip(&names)
            .map(|(c, g)| ScsiClient::connect(&c.scsi(g)))
            .collect();
        let start = observe(&mut clients[0]).expect("PR IN answers before the faults");
        assert_eq!((start.1.len(), start.2), (0, None), "a fresh disk");
        let mut history = History::new(Model {
            gen: start.0,
            ..Model::default()
        });
        // The key each initiator holds as far as GOOD answers tell; None: unregistered or not
        // known (after BUSY).
        let mut keys: Vec<Option<u64>> = vec![None; HOSTS];
        let mut key_counter = 0u64;
        let mut closed: Vec<u64> = Vec::new();
        let mut tally = BTreeMap::<String, u32>::new();
        let mut observations = 0;
        let end = Instant::now() + Duration::from_secs(secs());
        while Instant::now() < end {
            let y = rng.gen_range(0..HOSTS);
            let op = match rng.gen_range(0..10) {
                0..=3 => {
                    key_counter += 1;
                    Op::Register {
                        y,
                        key: ((y as u64 + 1) << 32) | key_counter,
                    }
                }
                4..=5 => match keys[y] {
                    Some(key) => Op::Reserve { y, key },
                    None => continue,
                },
                6..=8 => {
                    let x = (y + rng.gen_range(1..HOSTS)) % HOSTS;
                    match (keys[y], keys[x]) {
                        (Some(key), Some(victim)) => Op::Preempt { y, key, victim },
                        _ => continue,
                    }
                }
                _ => match keys[y] {
                    Some(key) => Op::Clear { y, key },
                    None => continue,
                },
            };
            if let Op::Register { .. } = op {
                // Its writer must have let go of any region closed for it.
                drop(writers[y].busy.lock().unwrap());
            }
            let c = &mut clients[y];
            let status = match op {
                Op::Register { key, .. } => prout(c, SA_REGISTER_AND_IGNORE, 0, 0, key),
                Op::Reserve { key, .. } => prout(c, SA_RESERVE, TYPE_WE_RO, key, 0),
                Op::Preempt { key, victim, .. } => {
                    prout(c, SA_PREEMPT_AND_ABORT, TYPE_WE_RO, key, victim)
                }
                Op::Clear { key, .. } => prout(c, SA_CLEAR, 0, key, 0),
            };
            history.step(&op, status);
            // What the driver believes next.
            match (&op, status) {
                (Op::Register { key, .. }, GOOD) => keys[y] = Some(*key),
                (Op::Register { .. }, _) => keys[y] = None,
                (Op::Preempt { victim, .. }, GOOD | BUSY) => {
                    for k in keys.iter_mut().filter(|k| **k == Some(*victim)) {
                        *k = None;
                    }
                }
                (Op::Clear { .. }, GOOD | BUSY) => keys.fill(None),
                _ => {}
            }
            // Right after the answer: read the state through the issuer's daemon (the fencing
            // oracle needs it) or another one.
            let from = if matches!(op, Op::Preempt { .. }) && status == GOOD {
                y
            } else {
                rng.gen_range(0..HOSTS)
            };
            let seen = observe(&mut clients[from]);
            if let Some(obs) = &seen {
                history.observe(obs, from);
                observations += 1;
            }
            // A GOOD PREEMPT AND ABORT fenced the victim if a reservation is left (then an
            // unregistered initiator may not write): close its region.
            if let (Op::Preempt { victim, .. }, GOOD, Some((_, now, Some(_)))) =
                (&op, status, &seen)
            {
                let x = (*victim >> 32) as usize - 1;
                if !now.iter().any(|k| (*k >> 32) as usize == x + 1) {
                    let fresh = next_region.fetch_add(1, Ordering::SeqCst);
                    let old = writers[x].region.swap(fresh, Ordering::SeqCst);
                    host_write(&image, old * REGION_SECTORS, &canary(old));
                    closed.push(old);
                    // The write in flight (aimed at the old region) ends before the state may
                    // change again.
                    drop(writers[x].busy.lock().unwrap());
                }
            }
            if status == BUSY {
                // As an initiator would (fence_scsi reads the keys after a failure): not at once,
                // and only once the state can be read again. Each BUSY command may still take
                // effect until the state changes; many in a row would leave the model too many
                // states to follow.
                let t = Instant::now();
                loop {
                    std::thread::sleep(Duration::from_millis(50));
                    let from = rng.gen_range(0..HOSTS);
                    if let Some(obs) = observe(&mut clients[from]) {
                        history.observe(&obs, from);
                        observations += 1;
                        break;
                    }
                    assert!(
                        t.elapsed() < Duration::from_secs(60),
                        "no daemon answers PR IN 60 s after a BUSY"
                    );
                }
            }
            let name = format!("{op:?}");
            let name = name.split_whitespace().next().unwrap_or("?").to_string();
            *tally.entry(format!("{name} -> {status:#04x}")).or_default() += 1;
        }
        stop.store(true, Ordering::Relaxed);
        let faults = faults.join().unwrap();

        // Healed: wait for etcd and every daemon, and for every lease and I/O to be over.
        {
            let l = lab.lock().unwrap();
            l.wait_healthy(Duration::from_secs(30));
        }
        for c in &cfgs {
            assert!(
                wait_serving(&c.control, Duration::from_secs(30)),
                "h{} does not serve after the faults",
                c.host
            );
        }
        std::thread::sleep(opts.fence_bound() * 2 + opts.hold());
        let all = std::fs::read(&image).unwrap();
        let mut late = Vec::new();
        for r in &closed {
            let at = (r * REGION_SECTORS * 512) as usize;
            let got = &all[at..at + (REGION_SECTORS * 512) as usize];
            for (b, (g, w)) in got.chunks(4096).zip(canary(*r).chunks(4096)).enumerate() {
                if g != w {
                    late.push((
                        *r,
                        b,
                        u64::from_le_bytes(g[..8].try_into().unwrap()),
                        u64::from_le_bytes(g[16..24].try_into().unwrap()),
                    ));
                }
            }
        }
        // Every daemon shows the same state, one the history allows.
        let finals: Vec<Option<Obs>> = clients.iter_mut().map(observe).collect();
        for (i, f) in finals.iter().enumerate() {
            let f = f
                .as_ref()
                .unwrap_or_else(|| panic!("h{} BUSY after healing", i + 1));
            history.observe(f, i);
        }
        eprintln!(
            "nemesis: seed {seed}, {} s; faults {faults:?}; PR OUTs {tally:?}; {observations} \
             states read and checked; {} regions closed; writes ok/failed {:?}; final \
             PRgeneration {:?}; late blocks: {}",
            secs(),
            closed.len(),
            writers
                .iter()
                .map(|w| (
                    w.ok.load(Ordering::Relaxed),
                    w.failed.load(Ordering::Relaxed)
                ))
                .collect::<Vec<_>>(),
            finals[0].as_ref().map(|f| f.0),
            late.len()
        );
        assert!(
            late.is_empty(),
            "writes landed after the PREEMPT that fenced them returned GOOD (region, block, \
             writer, seq): {late:?}"
        );
        assert!(
            !closed.is_empty(),
            "the run fenced nothing: it means nothing"
        );
        assert!(
            writers.iter().all(|w| w.ok.load(Ordering::Relaxed) > 0),
            "every writer wrote"
        );
    });
}

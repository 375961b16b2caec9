//! A random nemesis against cluster mode across hosts: three daemons, each in its own network
//! namespace with its own etcd member (tests/common/netlab.rs), serve one image file. Each
//! daemon's initiator writes tagged blocks without pause; random PR OUTs come from all three
//! (REGISTER AND IGNORE EXISTING KEY with a fresh key, RESERVE Write Exclusive – Registrants
//! Only, PREEMPT AND ABORT of another's key, CLEAR) while faults strike, one at a time, each
//! healed before the next. The classes (`SHAREDISK_NEMESIS_FAULTS`, a comma list of these names,
//! or `all`, the default):
//! - `link`: a host's link down (both ways); `oneway`: one-way drops; `pause`: a daemon paused
//!   for less than `max_io_ms`; `etcdpause`: an etcd member paused; `leaderkill`: the etcd
//!   leader killed and restarted; `leaderpause`: the leader paused; `quorum`: two members paused.
//! - `kill`: a daemon SIGKILLed and restarted (same node name, same state_dir); its initiators
//!   reconnect, as QEMU does (requests in the ring are presented again).
//! - `replace`: a host cut off from etcd (link down) and, meanwhile, a second daemon with the
//!   same node name started in another host's namespace with its own state_dir and sockets (as
//!   if on another machine); when the link heals the old one is killed, as an operator would, and
//!   the initiator follows to the new one. Then the new one is killed and the host's own daemon
//!   restarted.
//! - `statedel`: the `state` key deleted with etcdctl, then a random daemon restarted: its start
//!   must be refused (no state while members are registered) until the operator's step below.
//! - `snapshot`: `etcdctl snapshot save`, a few seconds of PR OUTs, then every member restored
//!   from that snapshot (all stopped, `etcdctl snapshot restore` into fresh data directories with
//!   the same names and peer URLs and a new cluster token, all started: a real restore, not an
//!   emulation), then a random daemon restarted.
//!   After `statedel` and `snapshot` the nemesis plays the operator: while a daemon's `ctl --json
//!   cluster status` shows `"fault": {"kind": "regression"}`, it runs `ctl cluster republish --yes` on
//!   the daemon showing the highest `epoch`, and waits (20 s at most) for every daemon to serve.
//! - `slow`: a standing condition, not an event: host 3's daemon writes at about 25 MB/s (the
//!   test hook `SHAREDISK_TEST_WRITE_DELAY_MS`, 160 ms per write) while its initiator keeps 64
//!   writes of 4 MiB in flight (into regions of 4 MiB); `max_io_ms` covers one such write. While
//!   its writes flow, the driver mostly preempts it.
//!
//! **The fencing oracle**, per initiator: it writes into a region of its own. When a PREEMPT
//! AND ABORT of its key returns GOOD and PR IN then shows a reservation (so an unregistered
//! initiator may not write), the test moves it to a fresh region, at once overwrites the old one
//! with a canary, and waits for the writer's requests in flight. At the end (every fault healed)
//! each closed region must still be all canary: a block that is not is a write admitted under
//! the old state that landed after GOOD (a *late block*). The fresh region is quarantined: the
//! fenced initiator may not write at all until it registers again or a CLEAR lifts the
//! reservation, so before that command the region must still be empty (a block in it is a late
//! block too: a write admitted after GOOD, e.g. by a cut-off incarnation whose name another one
//! took). (After CLEAR nothing is fenced: no reservation is left.)
//!
//! **The PR IN oracle**: every READ FULL STATUS answered GOOD, through any daemon, that shows a
//! reservation and an initiator's key gone (while that initiator's region was opened since it was
//! last seen registered) counts like a GOOD: the region is closed the same way. A late block in
//! such a region is an *unsettled observation*: a daemon showed a change before it was settled
//! (counted apart from late blocks after GOOD). BUSY answers to PR IN are counted.
//!
//! **The history** must be linearizable against SPC-4's sequential rules (a model of the four
//! service actions, `Model`): the PR OUTs come from one thread, one at a time; a GOOD or
//! RESERVATION CONFLICT answer must be what the model answers in some state the history allows;
//! a BUSY one (or one without an answer: its daemon was killed) may have taken effect or not, and
//! may still take effect until the state next changes (its transaction is conditioned on the
//! revision it read). After every PR OUT, READ FULL STATUS through a random daemon must show one
//! of the allowed states (PRgeneration included), and at the end every daemon must show the same
//! one.
//!
//! `SHAREDISK_NEMESIS_SECS` sets the length (default 30 s; the report's figure is 600 s),
//! `SHAREDISK_NEMESIS_SEED` the seed. The run ends with one `nemesis summary:` line (faults per
//! class, PR OUTs by answer, the longest GOOD PREEMPT, PR IN GOOD/BUSY, regions closed, late
//! blocks, unsettled observations). Daemon
//! pauses longer than `max_io_ms` are the pause gap, covered by `tests/cluster_loopback.rs`
//! (strict mode).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use common::ctl::ctl;
use common::deadline::SetOnDrop;
use common::netlab::{ClusterOpts, DaemonConfig, NetLab};
use common::scsi_client::*;
use common::vu_frontend::{
    blk_header, RawDesc, StartOrder, VuFrontend, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_OUT,
    VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};

const HOSTS: usize = 3;
const TYPE_WE_RO: u8 = 5;
/// A region: 8 blocks of 4 KiB.
const REGION_SECTORS: u64 = 64;
/// The host whose daemon writes slowly under `slow` (1-based).
const SLOW_HOST: usize = 3;
/// Per write of 4 MiB: about 25 MB/s.
const SLOW_WRITE_DELAY_MS: &str = "160";
/// The slow initiator's writes: 64 of 4 MiB in flight.
const SLOW_QD: usize = 64;
const SLOW_PIECE: usize = 4 << 20;
/// Region numbers from here are the slow initiator's regions of 4 MiB, from 256 MiB on.
const BIG_REGION0: u64 = 1 << 32;
const BIG_FIRST_SECTOR: u64 = (256 << 20) / 512;
/// The image's size (sparse): room for 448 regions of 4 MiB.
const IMAGE_BYTES: u64 = 2 << 30;
/// How long a command may go without an answer before its daemon counts as gone.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

fn secs() -> u64 {
    std::env::var("SHAREDISK_NEMESIS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30)
}

/// A fault class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    Link,
    OneWay,
    Pause,
    EtcdPause,
    LeaderKill,
    LeaderPause,
    Quorum,
    Kill,
    Replace,
    StateDel,
    Snapshot,
    Slow,
}

impl Fault {
    const ALL: [Fault; 12] = [
        Fault::Link,
        Fault::OneWay,
        Fault::Pause,
        Fault::EtcdPause,
        Fault::LeaderKill,
        Fault::LeaderPause,
        Fault::Quorum,
        Fault::Kill,
        Fault::Replace,
        Fault::StateDel,
        Fault::Snapshot,
        Fault::Slow,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::Link => "link",
            Fault::OneWay => "oneway",
            Fault::Pause => "pause",
            Fault::EtcdPause => "etcdpause",
            Fault::LeaderKill => "leaderkill",
            Fault::LeaderPause => "leaderpause",
            Fault::Quorum => "quorum",
            Fault::Kill => "kill",
            Fault::Replace => "replace",
            Fault::StateDel => "statedel",
            Fault::Snapshot => "snapshot",
            Fault::Slow => "slow",
        }
    }
}

/// The classes played without `SHAREDISK_NEMESIS_FAULTS`: every one.
const DEFAULT_FAULTS: &str = "all";

/// The classes `SHAREDISK_NEMESIS_FAULTS` selects (`all`: every class).
fn selected_faults() -> Vec<Fault> {
    let list = std::env::var("SHAREDISK_NEMESIS_FAULTS").unwrap_or(DEFAULT_FAULTS.into());
    if list.trim() == "all" {
        return Fault::ALL.to_vec();
    }
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            Fault::ALL
                .into_iter()
                .find(|f| f.name() == s)
                .unwrap_or_else(|| {
                    let names: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
                    panic!("SHAREDISK_NEMESIS_FAULTS: no class {s:?}; the classes: {names:?}")
                })
        })
        .collect()
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

// ---- where each initiator reaches its daemon ----

/// Host `k`'s initiator's sockets: its own daemon's, or (under `replace`) the replacement's.
/// `gen` counts the changes: a daemon restarted or replaced, so clients connect again.
struct Endpoint {
    blk: Mutex<PathBuf>,
    scsi: Mutex<PathBuf>,
    gen: AtomicU64,
}

impl Endpoint {
    fn new(c: &DaemonConfig, guest: &str) -> Endpoint {
        Endpoint {
            blk: Mutex::new(c.blk(guest)),
            scsi: Mutex::new(c.scsi(guest)),
            gen: AtomicU64::new(0),
        }
    }

    /// Its daemon went away: commands in flight end without an answer, clients connect again.
    fn bump(&self) {
        self.gen.fetch_add(1, Ordering::SeqCst);
    }

    /// The initiator now reaches `c`'s daemon (started and serving sockets).
    fn set(&self, c: &DaemonConfig, guest: &str) {
        *self.blk.lock().unwrap() = c.blk(guest);
        *self.scsi.lock().unwrap() = c.scsi(guest);
        self.gen.fetch_add(1, Ordering::SeqCst);
    }
}

// ---- the PR clients ----

/// One SCSI client per initiator, connected again after its daemon changed.
struct Peers<'a> {
    eps: &'a [Endpoint],
    clients: Vec<Option<ScsiClient>>,
    gens: Vec<u64>,
}

impl<'a> Peers<'a> {
    fn new(eps: &'a [Endpoint]) -> Peers<'a> {
        Peers {
            eps,
            clients: eps.iter().map(|_| None).collect(),
            gens: vec![0; eps.len()],
        }
    }

    /// Initiator `i`'s client; None while its daemon cannot be reached (2 s of tries).
    fn get(&mut self, i: usize) -> Option<Link<'_>> {
        let gen = self.eps[i].gen.load(Ordering::SeqCst);
        if self.gens[i] != gen || self.clients[i].is_none() {
            self.clients[i] = None;
            self.gens[i] = gen;
            let path = self.eps[i].scsi.lock().unwrap().clone();
            for _ in 0..20 {
                if let Ok(c) = ScsiClient::try_connect(&path) {
                    self.clients[i] = Some(c);
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Some(Link {
            c: self.clients[i].as_mut()?,
            gen: &self.eps[i].gen,
            at: gen,
        })
    }

    /// A command without an answer: the client is dropped and connects again next time.
    fn lost(&mut self, i: usize) {
        self.clients[i] = None;
    }
}

/// A client and the daemon generation it was connected at.
struct Link<'a> {
    c: &'a mut ScsiClient,
    gen: &'a AtomicU64,
    at: u64,
}

impl Link<'_> {
    /// One command; None without an answer within [`ANSWER_TIMEOUT`], or once its daemon was
    /// killed or replaced (the initiator's generation moved on).
    fn ask(&mut self, cdb: &[u8], data_out: &[u8], data_in_len: usize) -> Option<ScsiResult> {
        self.c.fe.reset();
        let p = self.c.submit(&LUN0, cdb, data_out, data_in_len, true);
        let t = Instant::now();
        loop {
            if let Some(r) = self.c.finish(&p, Duration::from_millis(100)) {
                self.c.fe.reset();
                return Some(r);
            }
            if self.gen.load(Ordering::SeqCst) != self.at || t.elapsed() > ANSWER_TIMEOUT {
                return None;
            }
        }
    }
}

/// A PR OUT, with unit attentions taken and the command sent again; the final status, None
/// without an answer.
fn prout(c: &mut Link, sa: u8, typ: u8, rk: u64, sark: u64) -> Option<u8> {
    for _ in 0..8 {
        let r = c.ask(&prout_cdb(sa, typ, 24), &prout_params(rk, sark, 0), 0)?;
        match (r.status, r.sense) {
            (CHECK_CONDITION, Some((6, _, _))) => continue,
            (CHECK_CONDITION, s) => panic!("PR OUT {sa}: CHECK CONDITION {s:02x?}"),
            _ => return Some(r.status),
        }
    }
    panic!("PR OUT {sa}: unit attentions without end");
}

/// What one READ FULL STATUS got.
enum Seen {
    State(Obs),
    Busy,
    NoAnswer,
}

/// READ FULL STATUS as the model sees it.
fn observe(c: &mut Link) -> Seen {
    for _ in 0..8 {
        let cdb = ScsiClient::prin_cdb(PRIN_READ_FULL_STATUS, 8192);
        let Some(r) = c.ask(&cdb, &[], 8192) else {
            return Seen::NoAnswer;
        };
        match (r.status, r.sense) {
            (GOOD, _) => return Seen::State(parse_full_status(&r.data)),
            (CHECK_CONDITION, Some((6, _, _))) => continue,
            (BUSY, _) => return Seen::Busy,
            other => panic!("READ FULL STATUS: {other:02x?}"),
        }
    }
    Seen::Busy
}

/// PRgeneration, the keys (sorted) and the holder's key of READ FULL STATUS parameter data
/// (SPC-4 §6.16.5); a daemon's answer, so every length is checked.
fn parse_full_status(d: &[u8]) -> Obs {
    assert!(d.len() >= 8, "READ FULL STATUS: {} bytes", d.len());
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
        p = &p[(24 + tid_len).min(p.len())..];
    }
    keys.sort();
    (gen, keys, holder)
}

/// Whether initiator `x` (0-based) holds one of `keys` (its keys carry x + 1 in the high half).
fn has_key(keys: &[u64], x: usize) -> bool {
    keys.iter().any(|k| (*k >> 32) as usize == x + 1)
}

// ---- regions and the writers ----

/// Region `r`'s first sector and length in sectors.
fn span(r: u64) -> (u64, u64) {
    if r >= BIG_REGION0 {
        let s = (SLOW_PIECE / 512) as u64;
        (BIG_FIRST_SECTOR + (r - BIG_REGION0) * s, s)
    } else {
        (r * REGION_SECTORS, REGION_SECTORS)
    }
}

fn canary(region: u64) -> Vec<u8> {
    let mut b = vec![0u8; (span(region).1 * 512) as usize];
    for (i, c) in b.chunks_mut(16).enumerate() {
        c[..8].copy_from_slice(b"CANARY!!");
        c[8..].copy_from_slice(&(region ^ (i as u64) << 40).to_le_bytes());
    }
    b
}

/// Writes `data` at `sector` of the image with O_DIRECT, as the preemptor's host would.
fn host_write(image: &Path, sector: u64, data: &[u8]) {
    use std::os::unix::fs::OpenOptionsExt;
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
    /// Held while writes are prepared and in flight: taking it waits out the writes aimed at a
    /// region that was just closed.
    busy: Mutex<()>,
    /// Set while the driver waits for `busy`: the writer stops refilling its queue.
    hold: AtomicBool,
    /// Set while a round's writes complete OK (its daemon admits them).
    flowing: AtomicBool,
    ok: AtomicU64,
    failed: AtomicU64,
}

impl Writer {
    fn new(region: u64) -> Writer {
        Writer {
            region: AtomicU64::new(region),
            busy: Mutex::new(()),
            hold: AtomicBool::new(false),
            flowing: AtomicBool::new(false),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    /// Waits until no write of this writer is in flight.
    fn quiesce(&self) {
        self.hold.store(true, Ordering::SeqCst);
        drop(self.busy.lock().unwrap());
        self.hold.store(false, Ordering::SeqCst);
    }
}

/// A vhost-user-blk connection to `ep`, tried until it succeeds or `stop`.
fn connect_blk(ep: &Endpoint, stop: &AtomicBool, queue_size: u16) -> Option<VuFrontend> {
    while !stop.load(Ordering::Relaxed) {
        let path = ep.blk.lock().unwrap().clone();
        if let Ok(f) = VuFrontend::try_connect(&path, 1, queue_size) {
            return Some(f);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// Writer `i`'s loop: rounds of `qd` writes of `piece` bytes in flight (refilled as they
/// complete) into its region, each round's blocks tagged (writer, region, round). A round ends
/// when its region changes, the driver asks (`hold`), or a write fails. After its daemon
/// changed (`ep.gen`) it connects again, as QEMU does: the requests in the ring are presented
/// again.
fn write_loop(i: usize, w: &Writer, ep: &Endpoint, stop: &AtomicBool, qd: usize, piece: usize) {
    // The daemon takes segments of 1 MiB at most (size_max): a chain is the header, the
    // segments and the status byte, with descriptors of its own per request slot.
    let seg = piece.min(1 << 20);
    let segs = piece / seg;
    let chain = segs + 2;
    let qsize = ((qd * chain).next_power_of_two() as u16).max(64);
    let Some(mut fe) = connect_blk(ep, stop, qsize) else {
        return;
    };
    let mut gen = ep.gen.load(Ordering::SeqCst);
    let buf = fe.alloc(piece);
    let hdrs: Vec<u64> = (0..qd).map(|_| fe.alloc(16)).collect();
    let stats: Vec<u64> = (0..qd).map(|_| fe.alloc(1)).collect();
    let piece_sectors = (piece / 512) as u64;
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let busy = w.busy.lock().unwrap();
        let region = w.region.load(Ordering::SeqCst);
        let (first, sectors) = span(region);
        let sector = first + (round % (sectors / piece_sectors)) * piece_sectors;
        let mut data = vec![0u8; piece];
        for c in data.chunks_mut(32) {
            c[..8].copy_from_slice(&(i as u64).to_le_bytes());
            c[8..16].copy_from_slice(&region.to_le_bytes());
            c[16..24].copy_from_slice(&round.to_le_bytes());
        }
        fe.write_mem(buf, &data);
        let submit = |fe: &mut VuFrontend, s: usize| {
            let d = (chain * s) as u16;
            fe.write_mem(hdrs[s], &blk_header(VIRTIO_BLK_T_OUT, sector));
            fe.write_mem(stats[s], &[0xff]);
            let desc = |n: usize, addr, len, flags| {
                let next = if flags & VRING_DESC_F_NEXT != 0 {
                    d + n as u16 + 1
                } else {
                    0
                };
                (
                    d + n as u16,
                    RawDesc {
                        addr,
                        len,
                        flags,
                        next,
                    },
                )
            };
            let mut descs = vec![desc(0, hdrs[s], 16, VRING_DESC_F_NEXT)];
            for g in 0..segs {
                let at = buf + (g * seg) as u64;
                descs.push(desc(1 + g, at, seg as u32, VRING_DESC_F_NEXT));
            }
            descs.push(desc(1 + segs, stats[s], 1, VRING_DESC_F_WRITE));
            fe.submit_raw(0, &descs, d);
        };
        let mut inflight: HashMap<u16, usize> = HashMap::new();
        for s in 0..qd {
            submit(&mut fe, s);
            inflight.insert((chain * s) as u16, s);
        }
        let mut failed = false;
        while !inflight.is_empty() {
            if let Some((id, _)) = fe.wait_used(0, Duration::from_millis(200)) {
                let Some(s) = inflight.remove(&id) else {
                    continue;
                };
                if fe.read_mem(stats[s], 1)[0] == VIRTIO_BLK_S_OK {
                    w.ok.fetch_add(1, Ordering::Relaxed);
                    w.flowing.store(true, Ordering::SeqCst);
                } else {
                    w.failed.fetch_add(1, Ordering::Relaxed);
                    failed = true;
                }
                let go_on = !failed
                    && !stop.load(Ordering::Relaxed)
                    && !w.hold.load(Ordering::SeqCst)
                    && w.region.load(Ordering::SeqCst) == region;
                if go_on {
                    submit(&mut fe, s);
                    inflight.insert(id, s);
                }
            } else if ep.gen.load(Ordering::SeqCst) != gen {
                gen = ep.gen.load(Ordering::SeqCst);
                let path = ep.blk.lock().unwrap().clone();
                if fe.reconnect(&path, StartOrder::CallFirst).is_err() {
                    // Not up yet: the next timeout tries again.
                    gen = gen.wrapping_sub(1);
                    std::thread::sleep(Duration::from_millis(100));
                }
            } else if stop.load(Ordering::Relaxed) {
                break;
            }
        }
        w.flowing.store(false, Ordering::SeqCst);
        drop(busy);
        round += 1;
        if failed {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

// ---- the faults ----

/// What the fault thread works with.
struct Faults<'a> {
    lab: &'a Mutex<NetLab>,
    eps: &'a [Endpoint],
    cfgs: &'a [DaemonConfig],
    names: &'a [String],
    opts: &'a ClusterOpts,
    classes: Vec<Fault>,
    /// Events on the way (regressions seen, republish runs, ...), for the summary.
    notes: BTreeMap<String, u32>,
    /// The handshake with the driver under `replace` (see [`race_step`]).
    race: &'a AtomicU64,
    replacements: u32,
}

impl Faults<'_> {
    fn note(&mut self, what: impl Into<String>) {
        *self.notes.entry(what.into()).or_default() += 1;
    }

    fn env(&self, k: usize) -> Vec<(&'static str, &'static str)> {
        if k == SLOW_HOST && self.classes.contains(&Fault::Slow) {
            vec![("SHAREDISK_TEST_WRITE_DELAY_MS", SLOW_WRITE_DELAY_MS)]
        } else {
            vec![]
        }
    }

    /// One fault of a random selected class, healed; its class.
    fn play(&mut self, rng: &mut StdRng) -> Option<Fault> {
        let events: Vec<Fault> = self
            .classes
            .iter()
            .copied()
            .filter(|f| *f != Fault::Slow)
            .collect();
        if events.is_empty() {
            return None;
        }
        let f = events[rng.gen_range(0..events.len())];
        let k = rng.gen_range(1..=HOSTS);
        let hold = Duration::from_millis(rng.gen_range(300..3500));
        let lab = self.lab;
        match f {
            Fault::Link => {
                let l = lab.lock().unwrap();
                l.link_down(k);
                std::thread::sleep(hold);
                l.link_up(k);
            }
            Fault::OneWay => {
                let out = rng.gen_bool(0.5);
                let l = lab.lock().unwrap();
                if out {
                    l.drop_outgoing(k, true);
                } else {
                    l.drop_incoming(k, true);
                }
                std::thread::sleep(hold);
                l.drop_outgoing(k, false);
                l.drop_incoming(k, false);
            }
            Fault::Pause => {
                // Shorter than max_io_ms: longer is the pause gap.
                let l = lab.lock().unwrap();
                l.stop_daemon(k);
                std::thread::sleep(Duration::from_millis(rng.gen_range(20..400)));
                l.cont_daemon(k);
            }
            Fault::EtcdPause => {
                let l = lab.lock().unwrap();
                l.stop_etcd(k);
                std::thread::sleep(hold);
                l.cont_etcd(k);
            }
            Fault::LeaderKill => {
                let leader = lab.lock().unwrap().leader();
                lab.lock().unwrap().kill_etcd(leader);
                std::thread::sleep(hold);
                lab.lock().unwrap().restart_etcd(leader);
            }
            Fault::LeaderPause => {
                let l = lab.lock().unwrap();
                let leader = l.leader();
                l.stop_etcd(leader);
                std::thread::sleep(hold);
                l.cont_etcd(leader);
            }
            Fault::Quorum => {
                let l = lab.lock().unwrap();
                let others: Vec<usize> = (1..=HOSTS).filter(|&j| j != k).collect();
                for &j in &others {
                    l.stop_etcd(j);
                }
                std::thread::sleep(hold);
                for &j in &others {
                    l.cont_etcd(j);
                }
            }
            Fault::Kill => {
                lab.lock().unwrap().kill_daemon(k);
                self.eps[k - 1].bump();
                std::thread::sleep(Duration::from_millis(rng.gen_range(0..1500)));
                self.restart(k);
            }
            Fault::Replace => self.replace(rng, k),
            Fault::StateDel => {
                let key = format!("/sharedisk/v1/{}/state", self.opts.disk_id);
                let ok = self.etcdctl(&["del", &key]);
                self.note(if ok {
                    "state deleted"
                } else {
                    "state del failed"
                });
                std::thread::sleep(hold);
                let k = rng.gen_range(1..=HOSTS);
                // With no state in etcd and members registered, a start must refuse to create
                // one (it would be older); it starts again once the operator republished.
                let refused = match self.lab.lock().unwrap().try_restart_daemon(k) {
                    Ok(_) => false,
                    Err(log) => {
                        assert!(
                            log.contains("will not create"),
                            "h{k} did not start after the state was deleted, and not for the \
                             expected reason:\n{log}"
                        );
                        true
                    }
                };
                if refused {
                    self.note("start refused without a state");
                } else {
                    self.eps[k - 1].set(&self.cfgs[k - 1], &self.names[k - 1]);
                }
                self.recover();
                if refused {
                    self.restart(k);
                }
            }
            Fault::Snapshot => self.snapshot(rng, hold),
            Fault::Slow => unreachable!("slow is a standing condition"),
        }
        Some(f)
    }

    /// Host `k`'s own daemon SIGKILLed (if it runs) and started again; its initiator follows.
    fn restart(&mut self, k: usize) {
        self.lab.lock().unwrap().restart_daemon(k);
        self.eps[k - 1].set(&self.cfgs[k - 1], &self.names[k - 1]);
    }

    /// etcdctl against every member, from host 1 (tried three times); whether it succeeded.
    fn etcdctl(&self, args: &[&str]) -> bool {
        let l = self.lab.lock().unwrap();
        (0..3).any(|_| {
            l.etcdctl(1, &l.etcd_endpoints())
                .args(args)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        })
    }

    /// A replacement incarnation of node h`k` in another host's namespace while h`k` is cut off.
    fn replace(&mut self, rng: &mut StdRng, k: usize) {
        self.replacements += 1;
        let j = (k + rng.gen_range(0..HOSTS - 1)) % HOSTS + 1;
        let guest = self.names[k - 1].clone();
        // The driver prepares a PREEMPT AND ABORT of k's initiator, sent once k is cut off.
        self.race
            .store(race_code(k, RACE_PREPARE), Ordering::SeqCst);
        let t = Instant::now();
        while self.race.load(Ordering::SeqCst) != race_code(k, RACE_READY)
            && t.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        if self.race.load(Ordering::SeqCst) != race_code(k, RACE_READY) {
            self.note("replace: the driver was not ready within 10 s");
        }
        let cfg = {
            let l = self.lab.lock().unwrap();
            l.link_down(k);
            self.race.store(race_code(k, RACE_CUT), Ordering::SeqCst);
            l.daemon_config_in(
                &format!("h{k}-r{}", self.replacements),
                k,
                &[&guest],
                self.opts,
            )
        };
        // As if on another machine: it asks its own host's member first, not the cut-off one.
        let toml = std::fs::read_to_string(&cfg.path).unwrap();
        let etcd = format!("etcd = [{:?}]", common::netlab::client_url(j));
        let toml: Vec<String> = toml
            .lines()
            .map(|l| {
                if l.starts_with("etcd = ") {
                    etcd.clone()
                } else {
                    l.to_string()
                }
            })
            .collect();
        std::fs::write(&cfg.path, toml.join("\n")).unwrap();
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..300)));
        let env = self.env(k);
        let t = Instant::now();
        let slot = self.lab.lock().unwrap().start_extra_daemon(j, &cfg, &env);
        eprintln!(
            "nemesis: replacement h{k} up in h{j}'s namespace {} ms after its start",
            t.elapsed().as_millis()
        );
        std::thread::sleep(Duration::from_millis(rng.gen_range(300..3000)));
        self.race.store(0, Ordering::SeqCst);
        {
            let mut l = self.lab.lock().unwrap();
            l.link_up(k);
            l.kill_daemon(k);
        }
        self.eps[k - 1].set(&cfg, &guest);
        std::thread::sleep(Duration::from_millis(rng.gen_range(500..3000)));
        self.lab.lock().unwrap().kill_extra_daemon(slot);
        self.eps[k - 1].bump();
        self.restart(k);
    }

    /// A snapshot saved, a few seconds of PR OUTs, every member restored from it, a daemon
    /// restarted, the operator's step.
    fn snapshot(&mut self, rng: &mut StdRng, hold: Duration) {
        let path = {
            let l = self.lab.lock().unwrap();
            let path = l.dir().join("nemesis.snapshot");
            l.snapshot_save(l.leader(), &path);
            path
        };
        std::thread::sleep(hold + Duration::from_secs(1));
        self.replacements += 1;
        {
            let mut l = self.lab.lock().unwrap();
            let token = format!("{}-restore{}", l.name, self.replacements);
            l.restore_etcd(&path, &token);
        }
        self.restart(rng.gen_range(1..=HOSTS));
        self.recover();
    }

    /// The operator after a state regression: while a daemon shows `"fault": "regression"`,
    /// `ctl cluster republish --yes` on the daemon with the highest epoch; waits up to 20 s for every
    /// daemon to serve.
    fn recover(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut republished = false;
        while Instant::now() < deadline {
            let st: Vec<serde_json::Value> = self
                .cfgs
                .iter()
                .map(|c| ctl(&c.control, &["--json", "cluster", "status"]))
                .map(|o| {
                    if o.code == 0 {
                        o.json()
                    } else {
                        serde_json::Value::Null
                    }
                })
                .collect();
            // A daemon that is down (its start refused) is brought back after the step.
            if st.iter().all(|s| s.is_null() || s["serving"] == true)
                && st.iter().any(|s| !s.is_null())
                && (republished || st.iter().all(|s| !s.is_null()))
            {
                self.note("serving again");
                return;
            }
            if !republished && st.iter().any(|s| s["fault"]["kind"] == "regression") {
                self.note("regression shown");
                let newest = (0..HOSTS)
                    .max_by_key(|&i| st[i]["epoch"].as_u64().unwrap_or(0))
                    .unwrap();
                let out = ctl(
                    &self.cfgs[newest].control,
                    &["cluster", "republish", "--yes"],
                );
                republished = true;
                if out.code == 0 {
                    self.note("republished");
                } else {
                    eprintln!(
                        "nemesis: ctl cluster republish failed: {}",
                        out.stderr.trim()
                    );
                    self.note("republish failed");
                }
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        self.note("not serving 20 s after the fault");
    }
}

// ---- the replacement race ----

/// `replace`'s handshake, in one atomic: host k << 2 | phase; 0 when no race is on. The fault
/// thread asks the driver to prepare (RACE_PREPARE), the driver answers RACE_READY, the fault
/// thread cuts host k off and says RACE_CUT, and the driver sends the PREEMPT AND ABORT at once,
/// so that it is in flight while the replacement starts.
const RACE_PREPARE: u64 = 1;
const RACE_READY: u64 = 2;
const RACE_CUT: u64 = 3;

fn race_code(k: usize, phase: u64) -> u64 {
    (k as u64) << 2 | phase
}

/// What the driver does next for the race.
enum RaceStep {
    /// No race on: a random PR OUT.
    Idle,
    Send(Op),
    /// Waiting for the fault thread.
    Wait,
}

/// The driver's side of the handshake: while preparing, k's initiator and another one
/// registered and a reservation held (each a PR OUT of the history); once cut, the PREEMPT AND
/// ABORT of k's initiator's key.
fn race_step(
    race: &AtomicU64,
    keys: &[Option<u64>],
    holder: Option<u64>,
    counter: &mut u64,
    rng: &mut StdRng,
) -> RaceStep {
    let code = race.load(Ordering::SeqCst);
    if code == 0 {
        return RaceStep::Idle;
    }
    let x = (code >> 2) as usize - 1;
    let y = (x + 1 + rng.gen_range(0..HOSTS - 1)) % HOSTS;
    let mut register = |y: usize| {
        *counter += 1;
        RaceStep::Send(Op::Register {
            y,
            key: ((y as u64 + 1) << 32) | *counter,
        })
    };
    match code & 3 {
        RACE_PREPARE => match (keys[x], keys[y]) {
            (None, _) => register(x),
            (_, None) => register(y),
            (Some(key), Some(_)) if holder.is_none() => RaceStep::Send(Op::Reserve { y: x, key }),
            _ => {
                race.store(race_code(x + 1, RACE_READY), Ordering::SeqCst);
                RaceStep::Wait
            }
        },
        RACE_CUT => {
            let _ = race.compare_exchange(code, 0, Ordering::SeqCst, Ordering::SeqCst);
            let preemptor = (0..HOSTS).find(|&z| z != x && keys[z].is_some());
            match (keys[x], preemptor) {
                (Some(victim), Some(y)) => RaceStep::Send(Op::Preempt {
                    y,
                    key: keys[y].unwrap(),
                    victim,
                }),
                _ => {
                    eprintln!(
                        "nemesis: h{} cut off, but no PREEMPT of its initiator possible",
                        x + 1
                    );
                    RaceStep::Idle
                }
            }
        }
        _ => RaceStep::Wait,
    }
}

// ---- the test ----

/// Why a region was closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    /// A PREEMPT AND ABORT returned GOOD.
    Good,
    /// A READ FULL STATUS showed the key gone.
    Observed,
}

/// The PR driver's side of the fencing oracle.
struct Oracle<'a> {
    writers: &'a [Writer],
    image: PathBuf,
    next_region: u64,
    next_big: u64,
    /// Whether initiator x was seen registered since its region opened.
    armed: Vec<bool>,
    closed: Vec<(u64, Cause)>,
    /// Per initiator: the fresh region it moved to when fenced, while it may not write at all
    /// (until it registers again or a CLEAR lifts the reservation).
    quarantine: Vec<Option<(u64, Cause)>>,
    /// A BUSY (or unanswered) PR OUT that may still take effect and let initiators write again:
    /// a CLEAR (`HOSTS`: all) or a REGISTER of one initiator; no quarantine meanwhile.
    unfence_pending: Vec<bool>,
    /// Blocks found in quarantined regions: (region, block, writer, round, cause).
    landed: Vec<(u64, usize, u64, u64, Cause)>,
}

impl Oracle<'_> {
    /// Initiator `x`'s region closed: a fresh one for it, the canary over the old one, its
    /// writes in flight waited out.
    fn close(&mut self, x: usize, cause: Cause) {
        let fresh = if self.writers[x].region.load(Ordering::SeqCst) >= BIG_REGION0 {
            self.next_big += 1;
            self.next_big - 1
        } else {
            self.next_region += 1;
            self.next_region - 1
        };
        let (first, sectors) = span(fresh);
        let limit = if fresh >= BIG_REGION0 {
            IMAGE_BYTES / 512
        } else {
            BIG_FIRST_SECTOR
        };
        assert!(
            first + sectors <= limit,
            "region {fresh:#x} beyond its area: too many regions closed for a {IMAGE_BYTES}-byte image"
        );
        let old = self.writers[x].region.swap(fresh, Ordering::SeqCst);
        host_write(&self.image, span(old).0, &canary(old));
        self.closed.push((old, cause));
        self.armed[x] = false;
        self.writers[x].quiesce();
        if !self.unfence_pending[x] {
            self.quarantine[x] = Some((fresh, cause));
        }
    }

    /// Initiator `x` may write again from the next PR OUT on: its quarantined region (written
    /// only after it was fenced) must be empty. Waits out its writes in flight, if quarantined
    /// (a region closed for it was waited out when it closed).
    fn release(&mut self, x: usize) {
        let Some((r, cause)) = self.quarantine[x].take() else {
            return;
        };
        let w = &self.writers[x];
        w.hold.store(true, Ordering::SeqCst);
        let _busy = w.busy.lock().unwrap();
        w.hold.store(false, Ordering::SeqCst);
        for (b, block) in read_region(&self.image, r).chunks(4096).enumerate() {
            if block.iter().any(|&v| v != 0) {
                let word = |at: usize| u64::from_le_bytes(block[at..at + 8].try_into().unwrap());
                self.landed.push((r, b, word(0), word(16), cause));
            }
        }
    }

    /// A PR OUT about to be sent: what it may lift is released first.
    fn before(&mut self, op: &Op) {
        match *op {
            Op::Register { y, .. } => self.release(y),
            Op::Clear { .. } => (0..HOSTS).for_each(|x| self.release(x)),
            _ => {}
        }
    }

    /// Its answer: a BUSY REGISTER or CLEAR may still lift a fence; a GOOD change of the state
    /// ends what was pending.
    fn after(&mut self, op: &Op, status: u8) {
        match (op, status) {
            (Op::Register { y, .. }, BUSY) => self.unfence_pending[*y] = true,
            (Op::Clear { .. }, BUSY) => self.unfence_pending.fill(true),
            (Op::Register { .. } | Op::Preempt { .. } | Op::Clear { .. }, GOOD) => {
                self.unfence_pending.fill(false)
            }
            _ => {}
        }
    }

    /// A READ FULL STATUS answer: initiators with a key are armed; with a reservation, an armed
    /// initiator without a key may not write from now on.
    fn seen(&mut self, obs: &Obs) {
        for x in 0..HOSTS {
            if has_key(&obs.1, x) {
                self.armed[x] = true;
            } else if self.armed[x] && obs.2.is_some() {
                self.close(x, Cause::Observed);
            }
        }
    }

    /// Blocks of closed regions that are not canary, and blocks that landed in quarantined
    /// regions: (region, block, writer, round, cause). With every writer stopped.
    fn late(&mut self) -> Vec<(u64, usize, u64, u64, Cause)> {
        for x in 0..HOSTS {
            self.release(x);
        }
        let mut late = self.landed.clone();
        for &(r, cause) in &self.closed {
            let got = read_region(&self.image, r);
            for (b, (g, w)) in got.chunks(4096).zip(canary(r).chunks(4096)).enumerate() {
                if g != w {
                    let word = |at: usize| u64::from_le_bytes(g[at..at + 8].try_into().unwrap());
                    late.push((r, b, word(0), word(16), cause));
                }
            }
        }
        late
    }
}

/// Region `r` as the image holds it.
fn read_region(image: &Path, r: u64) -> Vec<u8> {
    let (first, sectors) = span(r);
    let mut got = vec![0u8; (sectors * 512) as usize];
    let f = std::fs::File::open(image).unwrap();
    f.read_exact_at(&mut got, first * 512).unwrap();
    got
}

fn wait_serving(control: &Path, timeout: Duration) -> bool {
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

/// What the PR driver counts.
#[derive(Default)]
struct Counts {
    prouts: BTreeMap<String, u32>,
    prin_good: u32,
    prin_busy: u32,
    prin_lost: u32,
    /// The longest PREEMPT AND ABORT answered GOOD.
    preempt_max: Duration,
}

impl Counts {
    /// A READ FULL STATUS answer counted; the state if it gave one.
    fn prin(&mut self, seen: Seen) -> Option<Obs> {
        match seen {
            Seen::State(o) => {
                self.prin_good += 1;
                Some(o)
            }
            Seen::Busy => {
                self.prin_busy += 1;
                None
            }
            Seen::NoAnswer => {
                self.prin_lost += 1;
                None
            }
        }
    }
}

/// The next PR OUT, or None when the driver's knowledge of the keys does not allow the draw.
fn draw_op(rng: &mut StdRng, keys: &[Option<u64>], counter: &mut u64) -> Option<Op> {
    let y = rng.gen_range(0..HOSTS);
    Some(match rng.gen_range(0..10) {
        0..=3 => {
            *counter += 1;
            Op::Register {
                y,
                key: ((y as u64 + 1) << 32) | *counter,
            }
        }
        4..=5 => Op::Reserve { y, key: keys[y]? },
        6..=8 => {
            let x = (y + rng.gen_range(1..HOSTS)) % HOSTS;
            Op::Preempt {
                y,
                key: keys[y]?,
                victim: keys[x]?,
            }
        }
        _ => Op::Clear { y, key: keys[y]? },
    })
}

fn op_initiator(op: &Op) -> usize {
    match *op {
        Op::Register { y, .. }
        | Op::Reserve { y, .. }
        | Op::Preempt { y, .. }
        | Op::Clear { y, .. } => y,
    }
}

/// Sends `op`; its status, BUSY when no answer came (it may have taken effect or not).
fn send(peers: &mut Peers, op: &Op, counts: &mut Counts) -> Option<u8> {
    let y = op_initiator(op);
    let mut c = peers.get(y)?;
    let c = &mut c;
    let answer = match *op {
        Op::Register { key, .. } => prout(c, SA_REGISTER_AND_IGNORE, 0, 0, key),
        Op::Reserve { key, .. } => prout(c, SA_RESERVE, TYPE_WE_RO, key, 0),
        Op::Preempt { key, victim, .. } => prout(c, SA_PREEMPT_AND_ABORT, TYPE_WE_RO, key, victim),
        Op::Clear { key, .. } => prout(c, SA_CLEAR, 0, key, 0),
    };
    let name = format!("{op:?}");
    let name = name.split_whitespace().next().unwrap_or("?").to_string();
    let status = match answer {
        Some(s) => {
            *counts
                .prouts
                .entry(format!("{name} -> {s:#04x}"))
                .or_default() += 1;
            s
        }
        None => {
            peers.lost(y);
            *counts
                .prouts
                .entry(format!("{name} -> no answer"))
                .or_default() += 1;
            BUSY
        }
    };
    Some(status)
}

/// READ FULL STATUS through initiator `i`'s daemon, counted; the state if it answered GOOD.
fn read_state(peers: &mut Peers, counts: &mut Counts, i: usize) -> Option<Obs> {
    let seen = observe(&mut peers.get(i)?);
    if matches!(seen, Seen::NoAnswer) {
        peers.lost(i);
    }
    counts.prin(seen)
}

/// The three daemons started (host 3's slow under `slow`) and serving.
fn start_lab(opts: &ClusterOpts, names: &[String], slow: bool) -> (NetLab, Vec<DaemonConfig>) {
    let mut lab = NetLab::new();
    let mut cfgs = Vec::new();
    for k in 1..=HOSTS {
        let c = lab.daemon_config(k, &[&names[k - 1]], opts);
        if slow && k == SLOW_HOST {
            lab.start_daemon_env(
                &c,
                &[("SHAREDISK_TEST_WRITE_DELAY_MS", SLOW_WRITE_DELAY_MS)],
            );
        } else {
            lab.start_daemon(&c);
        }
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
    (lab, cfgs)
}

/// The PR driver: random PR OUTs one at a time, each followed by a READ FULL STATUS, checked
/// against the history and fed to the fencing oracle.
struct Driver<'a> {
    rng: StdRng,
    peers: Peers<'a>,
    counts: Counts,
    history: History,
    /// The key each initiator holds as far as GOOD answers tell; None: unregistered or not
    /// known (after BUSY).
    keys: Vec<Option<u64>>,
    key_counter: u64,
    /// The holder's key as last read.
    holder: Option<u64>,
    oracle: Oracle<'a>,
    race: &'a AtomicU64,
    /// The slow initiator (under `slow`): mostly preempted while its writes flow.
    slow: Option<usize>,
}

impl<'a> Driver<'a> {
    fn new(
        seed: u64,
        eps: &'a [Endpoint],
        writers: &'a [Writer],
        image: PathBuf,
        race: &'a AtomicU64,
        slow: Option<usize>,
    ) -> Driver<'a> {
        let mut peers = Peers::new(eps);
        let mut counts = Counts::default();
        let start =
            read_state(&mut peers, &mut counts, 0).expect("PR IN answers before the faults");
        assert_eq!((start.1.len(), start.2), (0, None), "a fresh disk");
        Driver {
            rng: StdRng::seed_from_u64(seed),
            peers,
            counts,
            history: History::new(Model {
                gen: start.0,
                ..Model::default()
            }),
            keys: vec![None; HOSTS],
            key_counter: 0,
            holder: None,
            oracle: Oracle {
                writers,
                image,
                next_region: 64 + HOSTS as u64,
                next_big: BIG_REGION0 + 1,
                armed: vec![false; HOSTS],
                closed: Vec::new(),
                quarantine: vec![None; HOSTS],
                unfence_pending: vec![false; HOSTS],
                landed: Vec::new(),
            },
            race,
            slow,
        }
    }

    /// READ FULL STATUS through `from`, checked and fed to the oracle; the state if any.
    fn read(&mut self, from: usize) -> Option<Obs> {
        let obs = read_state(&mut self.peers, &mut self.counts, from)?;
        self.history.observe(&obs, from);
        self.holder = obs.2;
        Some(obs)
    }

    /// The next PR OUT: drawn (or the replacement race's), or None to wait.
    fn next_op(&mut self) -> Option<(Op, bool)> {
        let step = race_step(
            self.race,
            &self.keys,
            self.holder,
            &mut self.key_counter,
            &mut self.rng,
        );
        match step {
            RaceStep::Idle => {
                if let Some(op) = self.preempt_slow() {
                    return Some((op, false));
                }
                draw_op(&mut self.rng, &self.keys, &mut self.key_counter).map(|op| (op, false))
            }
            RaceStep::Send(op) => {
                let raced = matches!(op, Op::Preempt { .. });
                Some((op, raced))
            }
            RaceStep::Wait => {
                std::thread::sleep(Duration::from_millis(10));
                None
            }
        }
    }

    /// Under `slow`, while the slow initiator's writes flow (its 64 writes of 4 MiB admitted),
    /// half the time a PREEMPT AND ABORT of it by a registered initiator.
    fn preempt_slow(&mut self) -> Option<Op> {
        let x = self.slow?;
        if !self.oracle.writers[x].flowing.load(Ordering::SeqCst) || !self.rng.gen_bool(0.5) {
            return None;
        }
        let victim = self.keys[x]?;
        let y = (0..HOSTS).find(|&y| y != x && self.keys[y].is_some())?;
        Some(Op::Preempt {
            y,
            key: self.keys[y]?,
            victim,
        })
    }

    /// One PR OUT and what follows it.
    fn command(&mut self) {
        let Some((op, raced)) = self.next_op() else {
            return;
        };
        let y = op_initiator(&op);
        // A REGISTER's writer must have let go of any region closed for it; what may write
        // again after this command is checked now.
        self.oracle.before(&op);
        let sent = Instant::now();
        let answer = send(&mut self.peers, &op, &mut self.counts);
        if raced {
            eprintln!(
                "nemesis: {op:?} racing a replacement: {answer:02x?} in {} ms",
                sent.elapsed().as_millis()
            );
        }
        let Some(status) = answer else {
            // Its daemon is down (being restarted): not sent.
            std::thread::sleep(Duration::from_millis(100));
            return;
        };
        if matches!(op, Op::Preempt { .. }) && status == GOOD {
            self.counts.preempt_max = self.counts.preempt_max.max(sent.elapsed());
        }
        self.history.step(&op, status);
        self.oracle.after(&op, status);
        // What the driver believes next.
        match (&op, status) {
            (Op::Register { key, .. }, GOOD) => {
                self.keys[y] = Some(*key);
                self.oracle.armed[y] = true;
            }
            (Op::Register { .. }, _) => self.keys[y] = None,
            (Op::Preempt { victim, .. }, GOOD | BUSY) => {
                for k in self.keys.iter_mut().filter(|k| **k == Some(*victim)) {
                    *k = None;
                }
            }
            (Op::Clear { .. }, GOOD | BUSY) => self.keys.fill(None),
            _ => {}
        }
        // Right after the answer: read the state through the issuer's daemon (the fencing
        // oracle needs it) or another one.
        let good_preempt = matches!(op, Op::Preempt { .. }) && status == GOOD;
        let from = if good_preempt {
            y
        } else {
            self.rng.gen_range(0..HOSTS)
        };
        let seen = self.read(from);
        // A GOOD PREEMPT AND ABORT fenced the victim if a reservation is left (then an
        // unregistered initiator may not write): close its region.
        if let (Op::Preempt { victim, .. }, GOOD, Some((_, now, Some(_)))) = (&op, status, &seen) {
            let x = (*victim >> 32) as usize - 1;
            if !has_key(now, x) {
                self.oracle.close(x, Cause::Good);
            }
        }
        if let Some(obs) = &seen {
            self.oracle.seen(obs);
        }
        if status == BUSY {
            self.after_busy();
        }
    }

    /// As an initiator would after BUSY (fence_scsi reads the keys after a failure): not at
    /// once, and only once the state can be read again. Each BUSY command may still take effect
    /// until the state changes; many in a row would leave the model too many states to follow.
    fn after_busy(&mut self) {
        let t = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let from = self.rng.gen_range(0..HOSTS);
            if let Some(obs) = self.read(from) {
                self.oracle.seen(&obs);
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "no daemon answers PR IN 60 s after a BUSY"
            );
        }
    }

    /// After the run, every fault healed: the summary line, then the oracles' verdicts.
    fn check(&mut self, what: &str, not_serving: &[String]) {
        let late = self.oracle.late();
        let after_good: Vec<_> = late.iter().filter(|l| l.4 == Cause::Good).collect();
        let unsettled: Vec<_> = late.iter().filter(|l| l.4 == Cause::Observed).collect();
        let closed = &self.oracle.closed;
        let closed_good = closed.iter().filter(|c| c.1 == Cause::Good).count();
        let slow_closed = closed.iter().filter(|c| c.0 >= BIG_REGION0).count();
        let finals: Vec<Option<Obs>> = (0..HOSTS)
            .map(|i| read_state(&mut self.peers, &mut self.counts, i))
            .collect();
        let c = &self.counts;
        let writes: Vec<(u64, u64)> = self
            .oracle
            .writers
            .iter()
            .map(|w| {
                (
                    w.ok.load(Ordering::Relaxed),
                    w.failed.load(Ordering::Relaxed),
                )
            })
            .collect();
        eprintln!(
            "nemesis summary: {what}; PR OUTs {} {:?} (longest GOOD PREEMPT {} ms); PR IN GOOD {} \
             BUSY {} no answer {}; \
             regions closed after GOOD {closed_good}, after a PR IN observation {} (slow \
             initiator's {slow_closed}); writes ok/failed {writes:?}; final PRgeneration {:?}; \
             late blocks: {}; unsettled observations: {}",
            c.prouts.values().sum::<u32>(),
            c.prouts,
            c.preempt_max.as_millis(),
            c.prin_good,
            c.prin_busy,
            c.prin_lost,
            closed.len() - closed_good,
            finals[0].as_ref().map(|f| f.0),
            after_good.len(),
            unsettled.len(),
        );
        assert!(
            after_good.is_empty(),
            "writes landed after the PREEMPT that fenced them returned GOOD (region, block, \
             writer, round, cause): {:?}",
            &after_good[..after_good.len().min(40)]
        );
        assert!(
            unsettled.is_empty(),
            "writes landed after a PR IN showed their initiator's key gone: a change shown \
             before it settled (region, block, writer, round, cause): {:?}",
            &unsettled[..unsettled.len().min(40)]
        );
        assert!(
            not_serving.is_empty(),
            "{not_serving:?} do not serve 30 s after the faults healed"
        );
        // Every daemon shows the same state, one the history allows.
        for (i, f) in finals.iter().enumerate() {
            let f = f
                .as_ref()
                .unwrap_or_else(|| panic!("h{} BUSY after healing", i + 1));
            self.history.observe(f, i);
        }
        assert!(
            !closed.is_empty(),
            "the run fenced nothing: it means nothing"
        );
        assert!(writes.iter().all(|w| w.0 > 0), "every writer wrote");
    }
}

#[test]
fn random_faults_and_pr_outs_keep_fencing_and_history() {
    let classes = selected_faults();
    let slow = classes.contains(&Fault::Slow);
    // 2 GiB, sparse: the slow initiator's regions of 4 MiB start at 256 MiB.
    let opts = ClusterOpts {
        size: IMAGE_BYTES.to_string(),
        ..ClusterOpts::default()
    };
    let names: Vec<String> = (1..=HOSTS).map(|i| format!("g{i}")).collect();
    let (lab, cfgs) = start_lab(&opts, &names, slow);
    let image: PathBuf = lab.image();
    let lab = Mutex::new(lab);
    let eps: Vec<Endpoint> = (0..HOSTS)
        .map(|i| Endpoint::new(&cfgs[i], &names[i]))
        .collect();
    let is_slow = |i: usize| slow && i + 1 == SLOW_HOST;
    let writers: Vec<Writer> = (0..HOSTS)
        .map(|i| {
            Writer::new(if is_slow(i) {
                BIG_REGION0
            } else {
                64 + i as u64
            })
        })
        .collect();
    let stop = AtomicBool::new(false);
    let race = AtomicU64::new(0);
    let seed: u64 = std::env::var("SHAREDISK_NEMESIS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    let class_names: Vec<&str> = classes.iter().map(|f| f.name()).collect();
    eprintln!("nemesis: seed {seed}, {} s, faults {class_names:?}", secs());

    std::thread::scope(|s| {
        for i in 0..HOSTS {
            let (w, ep, stop) = (&writers[i], &eps[i], &stop);
            let (qd, piece) = if is_slow(i) {
                (SLOW_QD, SLOW_PIECE)
            } else {
                (1, 4096)
            };
            s.spawn(move || write_loop(i, w, ep, stop, qd, piece));
        }

        // The nemesis: one fault at a time, each healed before the next.
        let faults = s.spawn(|| {
            let mut f = Faults {
                lab: &lab,
                eps: &eps,
                cfgs: &cfgs,
                names: &names,
                opts: &opts,
                classes: classes.clone(),
                notes: BTreeMap::new(),
                race: &race,
                replacements: 0,
            };
            let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
            let mut tally = BTreeMap::<&'static str, u32>::new();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(rng.gen_range(300..1500)));
                if let Some(c) = f.play(&mut rng) {
                    *tally.entry(c.name()).or_default() += 1;
                }
            }
            (tally, f.notes)
        });

        // The PR driver, in this thread. The writers and the nemesis stop when it ends, or fails.
        let _stop = SetOnDrop(&stop);
        let slow_initiator = slow.then_some(SLOW_HOST - 1);
        let mut d = Driver::new(seed, &eps, &writers, image.clone(), &race, slow_initiator);
        let end = Instant::now() + Duration::from_secs(secs());
        while Instant::now() < end {
            d.command();
        }
        stop.store(true, Ordering::Relaxed);
        let (faults, notes) = faults.join().unwrap();

        // Healed: wait for etcd and every daemon, and for every lease and I/O to be over.
        lab.lock().unwrap().wait_healthy(Duration::from_secs(30));
        let not_serving: Vec<String> = cfgs
            .iter()
            .filter(|c| !wait_serving(&c.control, Duration::from_secs(30)))
            .map(|c| c.node())
            .collect();
        std::thread::sleep(opts.fence_bound() * 2 + opts.hold());
        let slow = if slow {
            " + slow (h3 at ~25 MB/s, QD64 x 4 MiB)"
        } else {
            ""
        };
        let what = format!(
            "seed {seed}, {} s; faults {faults:?}{slow}; operator {notes:?}",
            secs()
        );
        d.check(&what, &not_serving);
    });
}

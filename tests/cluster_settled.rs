//! Cluster mode: nothing is shown before it is settled, and a PR OUT runs exactly once across a
//! crash between its commit and anything saved locally. One real etcd on loopback; h1 and h3
//! run in this process, the victim's daemon h2 (and the crashing daemon) as processes that can
//! be stopped and killed. PR IN goes through each daemon's vhost-user-scsi socket.
//!
//! The oracle for "settled": a change removing the victim is settled no earlier than the wait
//! bound after its commit (the victim's daemon is stopped and never acknowledges), so a READ
//! KEYS that answers GOOD without the victim's key before then showed an unsettled change.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::ctl::ctl;
use common::deadline::SetOnDrop;
use common::etcd::{signal, ClusterDaemon, Etcd, FAST};
use common::image::image_bytes;
use common::scsi_client::*;
use common::vu_frontend::{StartOrder, VuFrontend, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_OUT};
use sharedisk::config::Config;
use sharedisk::daemon::server::Server;
use sharedisk::pr::cluster::ClusterConfig;
use sharedisk::pr::fencing::OperatorAction;
use sharedisk::pr::{PrStatus, ProutRequest, ResType, ServiceAction};

const BUSY: u8 = 0x08;
/// The victim's key.
const VICTIM_KEY: u64 = 0x77;
const HOLDER_KEY: u64 = 0xaa;

/// One test at a time: the bounds below assume an idle machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn cluster(dir: &Path, etcd: &Etcd, node: &str, fence_hook: Option<&str>) -> ClusterConfig {
    ClusterConfig {
        fence_hook: fence_hook.map(str::to_string),
        ..common::etcd::loopback_cluster(&etcd.url, node, dir.join("state"))
    }
}

fn serve(dir: &Path, etcd: &Etcd, node: &str, guest: &str, hook: Option<&str>) -> Server {
    let mut c = Config::new(dir.join("disk.img"), dir.join(node), &[guest]);
    c.size = Some(64 << 20);
    c.direct = true;
    c.cluster = Some(cluster(dir, etcd, node, hook));
    Server::start(c).expect("the daemon joins the cluster")
}

/// h2 (a process, serving the victim `v`) joins first and creates the image; h1 (guest `a`)
/// runs here, h3 (guest `c`) is a process too. `v` is registered with [`VICTIM_KEY`].
struct Lab {
    dir: tempfile::TempDir,
    _etcd: Etcd,
    h2: ClusterDaemon,
    h1: Server,
    _h3: ClusterDaemon,
    bound: Duration,
}

impl Lab {
    fn start(hook: Option<&str>) -> Lab {
        Self::start_with(hook, None)
    }

    /// [`Lab::start`], h2 reaching etcd through `proxy` if given.
    fn start_with(hook: Option<&str>, proxy: Option<&Proxy>) -> Lab {
        common::daemon::init_logging();
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let etcd = Etcd::start(dir.path());
        let hook = hook.map(|h| h.replace("{dir}", &dir.path().display().to_string()));
        let h2_etcd = match proxy {
            Some(p) => vec![p.start(&etcd.url)],
            None => etcd.endpoints(),
        };
        let h2 = ClusterDaemon::start(dir.path(), &h2_etcd, "h2", &["v"], &FAST, &[]);
        std::fs::write(dir.path().join("h2.pid"), h2.child.id().to_string()).unwrap();
        let h1 = serve(dir.path(), &etcd, "h1", "a", hook.as_deref());
        let toml = hook
            .as_ref()
            .map_or(String::new(), |h| format!("fence_hook = {h:?}\n"));
        let h3 = ClusterDaemon::start_with(
            dir.path(),
            &etcd.endpoints(),
            "h3",
            &["c"],
            &FAST,
            &format!("insecure = true\n{toml}"),
            &[],
        );
        let bound = cluster(dir.path(), &etcd, "h1", None).wait_bound();
        let register = ProutRequest::new(ServiceAction::Register).sa_key(VICTIM_KEY);
        assert_eq!(h1.arbiter().prout("v", &register, None), PrStatus::Good);
        // `a` holds Write Exclusive, registrants only: the host's preempt of `v` fences it.
        let register = ProutRequest::new(ServiceAction::Register).sa_key(HOLDER_KEY);
        assert_eq!(h1.arbiter().prout("a", &register, None), PrStatus::Good);
        let reserve = ProutRequest::new(ServiceAction::Reserve)
            .key(HOLDER_KEY)
            .typ(ResType::WriteExclusiveRegistrantsOnly);
        assert_eq!(h1.arbiter().prout("a", &reserve, None), PrStatus::Good);
        Lab {
            dir,
            _etcd: etcd,
            h2,
            h1,
            _h3: h3,
            bound,
        }
    }

    fn scsi(&self, node: &str, guest: &str) -> ScsiClient {
        let mut c = ScsiClient::connect(
            &self
                .dir
                .path()
                .join(node)
                .join(format!("{guest}-scsi.sock")),
        );
        c.drain_ua();
        c
    }

    fn preempt_victim(&self) -> PrStatus {
        self.h1
            .arbiter()
            .operator(&OperatorAction::Preempt {
                victim: "v".into(),
                abort: true,
                by: None,
            })
            .expect("v is fenced: a holds type 5")
    }
}

/// READ KEYS once: the keys, or the status it got instead of GOOD.
fn read_keys(c: &mut ScsiClient) -> Result<Vec<u64>, u8> {
    let r = c.prin(PRIN_READ_KEYS, 8192);
    if !r.is_good() {
        return Err(r.status);
    }
    let len = u32::from_be_bytes(r.data[4..8].try_into().unwrap()) as usize;
    Ok(r.data[8..8 + len.min(r.data.len() - 8)]
        .chunks(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
        .collect())
}

/// READ KEYS, sent again while BUSY for up to `within`.
fn keys_within(c: &mut ScsiClient, within: Duration) -> Vec<u64> {
    let t = Instant::now();
    loop {
        match read_keys(c) {
            Ok(k) => return k,
            Err(BUSY) if t.elapsed() < within => std::thread::sleep(Duration::from_millis(50)),
            Err(s) => panic!("READ KEYS answered {s:#x}"),
        }
    }
}

/// One READ KEYS answer: when it came, from which daemon, and what it said.
type Observation = (Instant, &'static str, Result<Vec<u64>, u8>);

/// READ KEYS on h1 and h3 over and over while `run` runs, and for `after` more.
fn observe_while<R: Send>(
    lab: &Lab,
    after: Duration,
    run: impl FnOnce() -> R + Send,
) -> (R, Vec<Observation>) {
    let stop = AtomicBool::new(false);
    let seen = Mutex::new(Vec::new());
    let mut clients = [("h1", lab.scsi("h1", "a")), ("h3", lab.scsi("h3", "c"))];
    let r = std::thread::scope(|s| {
        for (node, c) in clients.iter_mut() {
            let (stop, seen, node) = (&stop, &seen, *node);
            s.spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    let r = read_keys(c);
                    seen.lock().unwrap().push((Instant::now(), node, r));
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        }
        let r = run();
        std::thread::sleep(after);
        stop.store(true, Ordering::Release);
        r
    });
    (r, seen.into_inner().unwrap())
}

/// (a) Soft mode, the victim's daemon stopped: h1's PREEMPT AND ABORT waits out the bound. No
/// READ KEYS, on h1 or on h3, shows the victim's key gone before that bound passed after the
/// commit (BUSY or the old keys meanwhile); after GOOD both show it gone.
#[test]
fn pr_in_shows_no_change_before_it_is_settled() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::start(None);
    for (node, guest) in [("h1", "a"), ("h3", "c")] {
        let keys = keys_within(&mut lab.scsi(node, guest), Duration::from_secs(5));
        assert!(keys.contains(&VICTIM_KEY), "{node}: {keys:x?}");
    }
    signal(lab.h2.child.id(), "-STOP");
    let sent = Instant::now();
    let (status, seen) = observe_while(&lab, Duration::from_millis(300), || lab.preempt_victim());
    signal(lab.h2.child.id(), "-CONT");
    assert_eq!(
        status,
        PrStatus::Good,
        "soft mode answers once the bound passed"
    );
    let early: Vec<_> = seen
        .iter()
        .filter(|(at, _, r)| {
            r.as_ref().is_ok_and(|k| !k.contains(&VICTIM_KEY)) && *at < sent + lab.bound
        })
        .map(|(at, node, _)| format!("{node} at {:?}", at.duration_since(sent)))
        .collect();
    assert!(
        early.is_empty(),
        "READ KEYS showed the victim's key gone before the change was settled (bound {:?}): {}",
        lab.bound,
        early.join(", ")
    );
    for (node, guest) in [("h1", "a"), ("h3", "c")] {
        let keys = keys_within(&mut lab.scsi(node, guest), Duration::from_secs(5));
        assert!(!keys.contains(&VICTIM_KEY), "{node} after GOOD: {keys:x?}");
    }
    eprintln!(
        "{} READ KEYS during the PREEMPT ({} BUSY); GOOD after {:?}",
        seen.len(),
        seen.iter().filter(|o| o.2 == Err(BUSY)).count(),
        lab.bound
    );
}

/// (b) Strict mode, the fence hook failing (until `fence-ok` exists; then it kills h2): the
/// PREEMPT gets BUSY, READ KEYS on h1 and h3 keeps answering BUSY, `ctl pr show` refuses and
/// `ctl cluster status` shows the unsettled epoch; once the hook succeeds the background retry
/// settles it and READ KEYS shows the key gone. No write the victim sent lands.
#[test]
fn after_a_failed_fence_pr_in_answers_busy_until_the_background_retry_settles() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::start(Some(
        "echo \"$SHAREDISK_FENCE_NODE\" >> {dir}/fenced; [ -e {dir}/fence-ok ] && \
         kill -9 \"$(cat {dir}/h2.pid)\"",
    ));
    let mut victim = VuFrontend::connect(&lab.h2.blk("v"), 1, 64);
    signal(lab.h2.child.id(), "-STOP");
    // Sent while its daemon is stopped: it may only land if h2 ever admits again.
    victim.queue_blk_write_len(100, b'V', 512);
    assert_eq!(
        lab.preempt_victim(),
        PrStatus::Busy,
        "the hook failed: never GOOD"
    );
    let (_, seen) = observe_while(&lab, Duration::from_secs(2), || ());
    let shown: Vec<_> = seen.iter().filter(|o| o.2 != Err(BUSY)).collect();
    assert!(
        shown.is_empty() && !seen.is_empty(),
        "{} of {} READ KEYS answered while the change was not settled, first {:x?}",
        shown.len(),
        seen.len(),
        shown.first()
    );
    let control = lab.dir.path().join("h3").join("control.sock");
    let show = ctl(&control, &["pr", "show"]);
    assert!(
        show.code != 0 && show.stderr.contains("not settled"),
        "ctl pr show on h3: {}{}",
        show.stdout,
        show.stderr
    );
    let status = lab.h1.cluster_status().unwrap();
    assert!(
        status["settled_epoch"].as_u64() < status["epoch"].as_u64()
            && status["unsettled_since_ms"].is_u64(),
        "ctl cluster status: {status}"
    );
    std::fs::write(lab.dir.path().join("fence-ok"), "").unwrap();
    // No PR IN meanwhile: the background retry settles it.
    let settled = Instant::now();
    loop {
        let status = lab.h1.cluster_status().unwrap();
        if status["settled_epoch"] == status["epoch"] {
            break;
        }
        assert!(
            settled.elapsed() < Duration::from_secs(10),
            "the background retry did not settle: {status}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "settled in the background {:?} after the hook was let succeed",
        settled.elapsed()
    );
    for (node, guest) in [("h1", "a"), ("h3", "c")] {
        let keys = keys_within(&mut lab.scsi(node, guest), Duration::from_secs(10));
        assert!(!keys.contains(&VICTIM_KEY), "{node}: {keys:x?}");
    }
    let status = lab.h1.cluster_status().unwrap();
    assert_eq!(status["settled_epoch"], status["epoch"], "{status}");
    let show = ctl(&control, &["--json", "pr", "show"]);
    assert_eq!(show.code, 0, "{}{}", show.stdout, show.stderr);
    assert_eq!(show.json()["settled"], true);
    std::thread::sleep(Duration::from_millis(500));
    let image = lab.dir.path().join("disk.img");
    assert_ne!(
        image_bytes(&image, 100 * 512, 512),
        vec![b'V'; 512],
        "the victim's write landed"
    );
}

/// (d) The daemon is killed right after each REGISTER's commit is answered, before anything is
/// saved locally (the `prout-committed` failpoint). Restarted, it gets the same request again as
/// QEMU replays it (same ring slot): GOOD every time, and PRgeneration counts each once.
#[test]
fn a_pr_out_committed_before_a_crash_is_executed_once() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    common::daemon::init_logging();
    let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    let etcd = Etcd::start(dir.path());
    let failpoint = [("SHAREDISK_FAILPOINT", "prout-committed")];
    let start = || {
        ClusterDaemon::start(
            dir.path(),
            &etcd.endpoints(),
            "h1",
            &["vm1"],
            &FAST,
            &failpoint,
        )
    };
    let mut d = start();
    let mut c = ScsiClient::connect(&d.scsi("vm1"));
    c.drain_ua();
    let g0 = c.generation();
    let key = |i: u64| 0x5d00_0000_0000_0000 + i;
    const ROUNDS: u64 = 3;
    for i in 0..ROUNDS {
        // REGISTER from the previous key to the next one: run twice, the second answers
        // RESERVATION CONFLICT (its RESERVATION KEY is no longer registered).
        let old = if i == 0 { 0 } else { key(i) };
        let p = c.submit(
            &LUN0,
            &prout_cdb(SA_REGISTER, 0, 24),
            &prout_params(old, key(i + 1), 0),
            0,
            true,
        );
        let t = Instant::now();
        let st = loop {
            if let Some(st) = d.child.try_wait().unwrap() {
                break st;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "round {i}: the failpoint never fired: {}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&st),
            Some(libc::SIGKILL),
            "round {i}"
        );
        // Reaped: its Drop must not signal a pid that may be reused.
        std::mem::forget(std::mem::replace(&mut d, start()));
        c.fe.reconnect(&d.scsi("vm1"), StartOrder::CallLast)
            .expect("reconnect");
        let r = c
            .finish(&p, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("round {i}: the replayed PR OUT never completed"));
        c.fe.reset();
        assert!(
            r.is_good(),
            "round {i}: the replayed REGISTER answered {r:?}: it was run again instead of \
             answered from its record\n{}",
            d.log_text()
        );
        c.drain_ua();
    }
    let (generation, keys) = c.read_keys();
    assert_eq!(
        generation,
        g0 + ROUNDS as u32,
        "one PRgeneration per REGISTER"
    );
    assert_eq!(keys, [key(ROUNDS)]);
}

/// A TCP proxy on loopback in front of etcd, for one daemon: [`Proxy::cut`] drops every
/// connection and refuses new ones (the daemon is cut off from etcd, and keeps running).
#[derive(Default)]
struct Proxy {
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    /// Listens on a free port, forwarding to `target` (`http://host:port`); returns its URL.
    fn start(&self, target: &str) -> String {
        let target = target.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (cut, conns) = (self.cut.clone(), self.conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if cut.load(Ordering::Acquire) {
                    continue; // dropped: refused
                }
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let mut list = conns.lock().unwrap();
                list.extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                drop(list);
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        url
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::Release);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

/// Copies `from` to `to` until either side closes.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}

/// (c) The fence_scsi sequence (PREEMPT AND ABORT from h1, here the operator's) in strict mode, the victim's daemon running but cut off from etcd
/// (its lease still valid for a while) and the fence hook failing: PREEMPT AND ABORT gets BUSY,
/// and READ KEYS, sent again and again on h1 and h3 as fence_scsi's `off` does, never shows the
/// victim's key gone while the victim's writes are still acknowledged. Once the hook fences h2
/// (kills it), READ KEYS shows it gone.
#[test]
fn a_retried_fence_never_reads_already_off_while_the_victim_writes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let proxy = Proxy::default();
    let lab = Lab::start_with(
        Some("[ -e {dir}/fence-ok ] && kill -9 \"$(cat {dir}/h2.pid)\""),
        Some(&proxy),
    );
    let mut victim = VuFrontend::connect(&lab.h2.blk("v"), 1, 64);
    let stop = AtomicBool::new(false);
    let (writes, (preempt, seen)) = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut acked = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Acquire) {
                let (st, _) = victim.blk_request(VIRTIO_BLK_T_OUT, 200 + n % 64, &[b'V'; 512], 0);
                if st == VIRTIO_BLK_S_OK {
                    acked.push(Instant::now());
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            acked
        });
        // The victim stops writing also when this thread fails.
        let _stop = SetOnDrop(&stop);
        std::thread::sleep(Duration::from_millis(200));
        proxy.cut();
        let seen = observe_while(&lab, Duration::from_secs(2), || lab.preempt_victim());
        stop.store(true, Ordering::Release);
        (writer.join().unwrap(), seen)
    });
    assert_eq!(preempt, PrStatus::Busy, "the hook failed: never GOOD");
    let gone = seen
        .iter()
        .filter(|o| o.2.as_ref().is_ok_and(|k| !k.contains(&VICTIM_KEY)))
        .map(|o| o.0)
        .min();
    if let Some(gone) = gone {
        let late = writes.iter().filter(|w| **w > gone).count();
        assert_eq!(
            late, 0,
            "READ KEYS read the victim's key as gone (\"Already OFF\") while {late} of its writes \
             were still acknowledged afterwards"
        );
    }
    std::fs::write(lab.dir.path().join("fence-ok"), "").unwrap();
    let keys = keys_within(&mut lab.scsi("h1", "a"), Duration::from_secs(10));
    assert!(!keys.contains(&VICTIM_KEY), "after the fence: {keys:x?}");
    eprintln!(
        "{} victim writes acknowledged; {} READ KEYS during the fence, {} BUSY",
        writes.len(),
        seen.len(),
        seen.iter().filter(|o| o.2 == Err(BUSY)).count()
    );
}

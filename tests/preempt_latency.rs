//! One guest must not delay its own fencing: a PREEMPT AND ABORT returns within a bounded time
//! while the initiator it fences streams the largest requests the device accepts, with the write
//! cache off (every write synchronous). The daemon re-admits long requests every
//! `ADMISSION_CHUNK` (4 MiB), so a PR OUT waits for at most one such piece per busy queue.

mod common;

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use blkio::ReqFlags;
use common::blkio_client::BlkClient;
use common::daemon::TestDaemon;
use common::deadline::{Deadline, SetOnDrop};
use common::scsi_client::*;
use common::vu_frontend::{Desc, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_OUT};

const VICTIM_KEY: u64 = 0xdead;
const SURVIVOR_KEY: u64 = 0xbeef;
const WE_RO: u8 = 5;
/// The image is made as slow as a 25 MB/s disk (the test probe delays every write by its
/// length), so that one 4 MiB piece takes about 170 ms whatever the machine's real disk does.
const DISK_BYTES_PER_SEC: u64 = 25_000_000;
/// What a PREEMPT may take under this load: one 4 MiB piece per busy queue (they run in
/// parallel), plus the state file's fsync and scheduling on a loaded 2-core CI machine. Without
/// the per-piece admission it waits for the rest of a 32 MiB (scsi, 1.3 s) or 254 MiB (blk, 10 s)
/// request.
const BOUND: Duration = Duration::from_millis(700);
/// When the survivor preempts, counted from the start of the victim's first requests.
const PREEMPT_AFTER: Duration = Duration::from_millis(100);

/// Creates the image fully written, so that the synchronous writes under test overwrite
/// allocated blocks and the time they take does not depend on the file system's allocator.
fn allocated_image(path: &std::path::Path, size: u64) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..size / chunk.len() as u64 {
        f.write_all(&chunk).unwrap();
    }
    f.sync_all().unwrap();
}

/// Registers both, reserves Write Exclusive - Registrants Only for the victim, and turns the
/// LU's write cache off from the victim's scsi connection (every write is then synchronous).
fn setup(victim: &mut ScsiClient, survivor: &mut ScsiClient) {
    victim.drain_ua();
    survivor.drain_ua();
    assert!(victim
        .prout(SA_REGISTER_AND_IGNORE, 0, 0, VICTIM_KEY, false)
        .is_good());
    assert!(survivor
        .prout(SA_REGISTER_AND_IGNORE, 0, 0, SURVIVOR_KEY, false)
        .is_good());
    assert!(victim
        .prout(SA_RESERVE, WE_RO, VICTIM_KEY, 0, false)
        .is_good());
    let r = victim.mode_select_wce(false);
    assert!(r.is_good(), "MODE SELECT WCE=0: {r:?}");
    assert!(!victim.wce());
    // The survivor takes its 2A/01 MODE PARAMETERS CHANGED now, so that its PREEMPT is the
    // first command it sends under load.
    assert_eq!(survivor.drain_ua(), vec![(6, 0x2a, 1)]);
}

/// The survivor's PREEMPT AND ABORT of the victim, under a deadline; returns how long it took.
fn preempt(survivor: &mut ScsiClient) -> Duration {
    let _deadline = Deadline::start("PREEMPT AND ABORT under load", Duration::from_secs(120));
    let t = Instant::now();
    let r = survivor.prout(SA_PREEMPT_AND_ABORT, WE_RO, SURVIVOR_KEY, VICTIM_KEY, false);
    let took = t.elapsed();
    assert!(r.is_good(), "PREEMPT AND ABORT: {r:?}");
    took
}

/// MAXIMUM WRITE SAME LENGTH from VPD page B0h.
fn max_write_same(c: &mut ScsiClient) -> u64 {
    let r = c.cmd(&[0x12, 0x01, 0xb0, 0, 64, 0], &[], 64);
    assert!(r.is_good(), "VPD B0: {r:?}");
    u64::from_be_bytes(r.data[36..44].try_into().unwrap())
}

#[test]
fn preempt_is_quick_while_the_victim_streams_maximal_write_sames() {
    const QUEUES: usize = 2;
    // A queue thread per request queue, so the victim's queues run side by side.
    let d = TestDaemon::start_probed(&["victim", "survivor"], |c| {
        allocated_image(&c.image, common::daemon::IMAGE_SIZE);
        c.guests[0].queues = QUEUES as u16;
    });
    let mut victim = ScsiClient::connect_queues(&d.scsi("victim"), QUEUES, 128);
    let mut survivor = ScsiClient::connect(&d.scsi("survivor"));
    setup(&mut victim, &mut survivor);
    d.probe().set_write_bandwidth(Some(DISK_BYTES_PER_SEC));
    // Each queue streams WRITE SAME(16)s of the largest length, with a non-zero pattern, over
    // its own half of the image.
    let blocks = max_write_same(&mut victim).min(common::daemon::IMAGE_SIZE / 512 / QUEUES as u64);
    assert!(blocks >= 8192, "MAXIMUM WRITE SAME LENGTH {blocks}");
    let stop = AtomicBool::new(false);
    let started = AtomicUsize::new(0);
    let _deadline = Deadline::start("the test", Duration::from_secs(240));
    let took = std::thread::scope(|s| {
        let _stop_on_panic = SetOnDrop(&stop);
        let stream = s.spawn(|| {
            let c = &mut victim;
            let slots: Vec<(u64, u64, u64)> = (0..QUEUES)
                .map(|_| {
                    (
                        c.fe.alloc(REQ_HEADER_LEN),
                        c.fe.alloc(512),
                        c.fe.alloc(RESP_LEN),
                    )
                })
                .collect();
            let mut outcomes = Vec::new();
            let mut busy = [false; QUEUES];
            loop {
                for q in 0..QUEUES {
                    if !busy[q] && !stop.load(Ordering::Relaxed) {
                        let (hdr, data, resp) = slots[q];
                        let tag = c.next_tag();
                        let cdb = write_same16_cdb(q as u64 * blocks, blocks as u32, false, false);
                        c.fe.write_mem(hdr, &req_header(&LUN0, tag, &cdb));
                        c.fe.write_mem(data, &[0x5a; 512]);
                        c.fe.submit(
                            REQUEST_Q + q,
                            &[
                                Desc::r(hdr, REQ_HEADER_LEN as u32),
                                Desc::r(data, 512),
                                Desc::w(resp, RESP_LEN as u32),
                            ],
                        );
                        busy[q] = true;
                        started.fetch_add(1, Ordering::Relaxed);
                    }
                    if busy[q] && c.fe.try_used(REQUEST_Q + q).is_some() {
                        let (_, status, sense, _) =
                            parse_resp(&c.fe.read_mem(slots[q].2, RESP_LEN));
                        outcomes.push((status, sense));
                        busy[q] = false;
                    }
                }
                if stop.load(Ordering::Relaxed) && !busy.iter().any(|&b| b) {
                    return outcomes;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        while started.load(Ordering::Relaxed) < QUEUES {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(PREEMPT_AFTER);
        let took = preempt(&mut survivor);
        stop.store(true, Ordering::Relaxed);
        let _deadline = Deadline::start("the victim's stream to end", Duration::from_secs(120));
        let outcomes = stream.join().unwrap();
        eprintln!(
            "scsi: PREEMPT AND ABORT took {took:?}; the victim's WRITE SAMEs: {outcomes:02x?}"
        );
        for (status, sense) in &outcomes {
            assert!(
                matches!(
                    (*status, *sense),
                    (GOOD, None)
                        | (RESERVATION_CONFLICT, None)
                        | (CHECK_CONDITION, Some((6, 0x2a, 5)))
                ),
                "unexpected WRITE SAME outcome {status:02x} {sense:02x?}"
            );
        }
        assert!(
            outcomes.iter().any(|&(st, _)| st == RESERVATION_CONFLICT),
            "a WRITE SAME in flight at the preempt was stopped part way"
        );
        took
    });
    assert!(
        took < BOUND,
        "PREEMPT AND ABORT took {took:?} (bound {BOUND:?})"
    );
}

#[test]
fn preempt_is_quick_while_the_victim_streams_maximal_blk_writes() {
    const IMAGE: u64 = 256 << 20;
    let d = TestDaemon::start_probed(&["victim", "survivor"], |c| {
        c.size = Some(IMAGE);
        allocated_image(&c.image, IMAGE);
    });
    let mut victim_scsi = ScsiClient::connect(&d.scsi("victim"));
    let mut survivor = ScsiClient::connect(&d.scsi("survivor"));
    setup(&mut victim_scsi, &mut survivor);
    d.probe().set_write_bandwidth(Some(DISK_BYTES_PER_SEC));
    let stop = AtomicBool::new(false);
    let started = AtomicUsize::new(0);
    let sock = d.blk("victim");
    let _deadline = Deadline::start("the test", Duration::from_secs(240));
    let took = std::thread::scope(|s| {
        let _stop_on_panic = SetOnDrop(&stop);
        let stream = s.spawn(|| {
            let mut c = BlkClient::connect(&sock).unwrap();
            // seg_max segments of size_max bytes: the largest request the device advertises.
            let seg_len = c.property("max-segment-len") as usize;
            let segs = c.property("max-segments") as usize;
            assert_eq!((seg_len, segs), (1 << 20, 254), "advertised limits");
            c.buf(seg_len).fill(0x6b);
            let (q, region) = c.queue_and_region();
            let iov: Vec<libc::iovec> = (0..segs)
                .map(|_| libc::iovec {
                    iov_base: region.addr as *mut libc::c_void,
                    iov_len: seg_len,
                })
                .collect();
            const DEPTH: usize = 2;
            let mut comps: Vec<MaybeUninit<blkio::Completion>> =
                (0..DEPTH).map(|_| MaybeUninit::uninit()).collect();
            let (mut in_flight, mut results) = (0, Vec::new());
            loop {
                while in_flight < DEPTH && !stop.load(Ordering::Relaxed) {
                    q.writev(0, iov.as_ptr(), segs as u32, 0, ReqFlags::empty());
                    in_flight += 1;
                    started.fetch_add(1, Ordering::Relaxed);
                }
                if in_flight == 0 {
                    return results;
                }
                let mut timeout = Duration::from_millis(50);
                let n = q
                    .do_io(&mut comps, 0, Some(&mut timeout), None)
                    .unwrap_or(0);
                for c in &comps[..n] {
                    // SAFETY: do_io initialised the first `n` completions.
                    results.push(unsafe { c.assume_init_ref() }.ret);
                }
                in_flight -= n;
            }
        });
        while started.load(Ordering::Relaxed) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(PREEMPT_AFTER);
        let took = preempt(&mut survivor);
        stop.store(true, Ordering::Relaxed);
        let _deadline = Deadline::start("the victim's stream to end", Duration::from_secs(120));
        let results = stream.join().unwrap();
        eprintln!("blk: PREEMPT AND ABORT took {took:?}; the victim's writes: {results:?}");

        assert!(
            results.iter().any(|&r| r != 0),
            "a write in flight at the preempt failed part way"
        );
        took
    });
    assert!(
        took < BOUND,
        "PREEMPT AND ABORT took {took:?} (bound {BOUND:?})"
    );
}

/// Requests of one deep round: the largest a round batches (4 MiB), as many as a guest keeps in
/// flight on one queue.
const DEEP_ROUND: usize = 32;
const DEEP_LEN: usize = 4 << 20;
/// Data segments of 1 MiB (blk's size_max), so a request is header, four segments and a status:
/// `DEEP_ROUND` requests fill this many descriptors.
const DEEP_QUEUE_SIZE: u16 = 256;

/// Makes `chains` available on `queue` with one kick, so that the device takes them all in one
/// round; the survivor preempts while that round runs. Returns how long the PREEMPT took, after
/// every chain has completed.
fn preempt_behind_one_deep_round(
    fe: &mut common::vu_frontend::VuFrontend,
    queue: usize,
    chains: &[Vec<Desc>],
    survivor: &mut ScsiClient,
) -> (Duration, Instant) {
    common::vu_frontend::wait_out_poll();
    for chain in chains {
        fe.submit_without_kick(queue, chain);
    }
    fe.kick(queue);
    std::thread::sleep(PREEMPT_AFTER);
    let took = preempt(survivor);
    let returned = Instant::now();
    let _deadline = Deadline::start("the deep round to complete", Duration::from_secs(120));
    for _ in chains {
        fe.wait_used(queue, Duration::from_secs(60))
            .expect("a request of the deep round not completed");
    }
    (took, returned)
}

/// The fencing guarantee across the pieces of a round: no write reached the image after the
/// PREEMPT returned, and the blocks of every refused write (from `first_refused` on, each
/// `DEEP_LEN` long, in order from sector 0) still hold the allocated image's zeroes.
fn assert_fenced_across_pieces(d: &TestDaemon, returned: Instant, first_refused: usize) {
    common::fencing::assert_writes_ended_before(d.probe(), returned);
    for i in first_refused..DEEP_ROUND {
        let bytes = common::image::image_bytes(d.image(), (i * DEEP_LEN) as u64, DEEP_LEN);
        assert!(
            bytes.iter().all(|&b| b == 0),
            "refused write {i} reached the image"
        );
    }
}

/// The survivor preempts while one virtqueue round of the victim holds `DEEP_ROUND` 4 MiB
/// writes on a 25 MB/s disk (5.4 s of I/O): the round is admitted in 4 MiB pieces, so the
/// PREEMPT waits for one piece, and the writes of the pieces after it fail.
#[test]
fn preempt_is_quick_behind_one_deep_blk_round() {
    const IMAGE: u64 = 256 << 20;
    let d = TestDaemon::start_probed(&["victim", "survivor"], |c| {
        c.size = Some(IMAGE);
        allocated_image(&c.image, IMAGE);
    });
    let mut victim_scsi = ScsiClient::connect(&d.scsi("victim"));
    let mut survivor = ScsiClient::connect(&d.scsi("survivor"));
    setup(&mut victim_scsi, &mut survivor);
    let mut fe = common::vu_frontend::VuFrontend::connect(&d.blk("victim"), 1, DEEP_QUEUE_SIZE);
    let data = fe.alloc(DEEP_LEN);
    fe.write_mem(data, &vec![0x6b; DEEP_LEN]);
    let chains: Vec<(Vec<Desc>, u64)> = (0..DEEP_ROUND)
        .map(|i| {
            let hdr = fe.alloc(16);
            let sector = (i * DEEP_LEN / 512) as u64;
            fe.write_mem(
                hdr,
                &common::vu_frontend::blk_header(VIRTIO_BLK_T_OUT, sector),
            );
            let status = fe.alloc(1);
            fe.write_mem(status, &[0xff]);
            let mut chain = vec![Desc::r(hdr, 16)];
            chain.extend((0..DEEP_LEN >> 20).map(|s| Desc::r(data + (s << 20) as u64, 1 << 20)));
            chain.push(Desc::w(status, 1));
            (chain, status)
        })
        .collect();
    let (chains, statuses): (Vec<_>, Vec<_>) = chains.into_iter().unzip();
    d.probe().set_write_bandwidth(Some(DISK_BYTES_PER_SEC));
    let (took, returned) = preempt_behind_one_deep_round(&mut fe, 0, &chains, &mut survivor);
    let got: Vec<u8> = statuses.iter().map(|&s| fe.read_mem(s, 1)[0]).collect();
    eprintln!("blk: PREEMPT AND ABORT took {took:?}; the deep round's statuses: {got:?}");
    assert!(
        took < BOUND,
        "PREEMPT AND ABORT took {took:?} behind one round of {DEEP_ROUND} x 4 MiB (bound {BOUND:?})"
    );
    assert!(
        got.iter()
            .all(|&s| s == VIRTIO_BLK_S_OK || s == VIRTIO_BLK_S_IOERR),
        "statuses {got:?}"
    );
    // Driver order: the pieces run in it, so once one write is refused every later one is.
    let first_refused = got.iter().position(|&s| s == VIRTIO_BLK_S_IOERR);
    let first_refused = first_refused.expect("the writes after the preempt were refused");
    assert!(
        got[first_refused..]
            .iter()
            .all(|&s| s == VIRTIO_BLK_S_IOERR),
        "statuses {got:?}"
    );
    assert_fenced_across_pieces(&d, returned, first_refused);
}

/// As on blk, through vhost-user-scsi: `DEEP_ROUND` WRITE(16)s of 4 MiB in one round.
#[test]
fn preempt_is_quick_behind_one_deep_scsi_round() {
    const IMAGE: u64 = 256 << 20;
    let d = TestDaemon::start_probed(&["victim", "survivor"], |c| {
        c.size = Some(IMAGE);
        allocated_image(&c.image, IMAGE);
    });
    let mut victim = ScsiClient::connect_queues(&d.scsi("victim"), 1, DEEP_QUEUE_SIZE);
    let mut survivor = ScsiClient::connect(&d.scsi("survivor"));
    setup(&mut victim, &mut survivor);
    let fe = &mut victim.fe;
    fe.reset();
    let data = fe.alloc(DEEP_LEN);
    fe.write_mem(data, &vec![0x5a; DEEP_LEN]);
    let mut chains = Vec::new();
    let mut resps = Vec::new();
    for i in 0..DEEP_ROUND {
        let hdr = fe.alloc(REQ_HEADER_LEN);
        let lba = (i * DEEP_LEN / 512) as u64;
        let cdb = write16_cdb(lba, (DEEP_LEN / 512) as u32);
        fe.write_mem(hdr, &req_header(&LUN0, 1000 + i as u64, &cdb));
        let resp = fe.alloc(RESP_LEN);
        fe.write_mem(resp, &[0xee; RESP_LEN]);
        let mut chain = vec![Desc::r(hdr, REQ_HEADER_LEN as u32)];
        chain.extend((0..DEEP_LEN >> 20).map(|s| Desc::r(data + (s << 20) as u64, 1 << 20)));
        chain.push(Desc::w(resp, RESP_LEN as u32));
        chains.push(chain);
        resps.push(resp);
    }
    d.probe().set_write_bandwidth(Some(DISK_BYTES_PER_SEC));
    let (took, returned) = preempt_behind_one_deep_round(fe, REQUEST_Q, &chains, &mut survivor);
    let got: Vec<(u8, Option<SenseTriple>)> = resps
        .iter()
        .map(|&r| {
            let (response, status, sense, _) = parse_resp(&fe.read_mem(r, RESP_LEN));
            // PREEMPT AND ABORT aborts the victim's writes not started yet (SPC-4 §5.9.11.5).
            if response == VIRTIO_SCSI_S_ABORTED {
                (ABORTED, None)
            } else {
                (status, sense)
            }
        })
        .collect();
    eprintln!("scsi: PREEMPT AND ABORT took {took:?}; the deep round's outcomes: {got:02x?}");
    assert!(
        took < BOUND,
        "PREEMPT AND ABORT took {took:?} behind one round of {DEEP_ROUND} x 4 MiB (bound {BOUND:?})"
    );
    let refused = |o: &(u8, Option<SenseTriple>)| {
        matches!(
            o,
            (RESERVATION_CONFLICT, None) | (CHECK_CONDITION, Some((6, 0x2a, 5))) | (ABORTED, None)
        )
    };
    assert!(
        got.iter().all(|o| *o == (GOOD, None) || refused(o)),
        "outcomes {got:02x?}"
    );
    let first_refused = got.iter().position(refused);
    let first_refused = first_refused.expect("the writes after the preempt were refused");
    assert!(
        got[first_refused..].iter().all(refused),
        "outcomes {got:02x?}"
    );
    assert_fenced_across_pieces(&d, returned, first_refused);
}

/// A write the PREEMPT AND ABORT aborted (VIRTIO_SCSI_S_ABORTED), among SAM statuses.
const ABORTED: u8 = 0xab;

/// The figure of issue 19 (run once, outside CI: `cargo test --release --features
/// cluster,test-hooks --test preempt_latency -- --ignored --nocapture qd128`): how long a PREEMPT
/// AND ABORT waits while its victim keeps `QD128` 4 MiB blk writes in flight on one queue on a
/// 25 MB/s image (the probe's bandwidth), on one host and in cluster mode (two daemons in this
/// process, one etcd; the victim on the other daemon). Prints the waits; asserts only that the
/// PREEMPT returned GOOD and that writes after it were refused.
#[test]
#[ignore = "a figure, run by hand"]
fn qd128_preempt_wait_figures() {
    const RUNS: usize = 5;
    let mut modes = vec![false];
    if cfg!(feature = "cluster") {
        modes.push(true);
    }
    for cluster in modes {
        // The PREEMPT at a different point of a piece each run (the pieces start at fixed times).
        let piece_ms = (DEEP_LEN as u64 * 1000 / DISK_BYTES_PER_SEC) as usize;
        let mut waits: Vec<Duration> = (0..RUNS)
            .map(|i| {
                let phase = Duration::from_millis((i * piece_ms / RUNS) as u64);
                qd128_preempt_wait(cluster, phase)
            })
            .collect();
        waits.sort();
        eprintln!(
            "QD128 x 4 MiB at 25 MB/s, {}: PREEMPT AND ABORT waits {waits:?} (median {:?}, max \
             {:?}; one 4 MiB piece is {:?})",
            if cluster { "cluster mode" } else { "one host" },
            waits[RUNS / 2],
            waits[RUNS - 1],
            Duration::from_secs_f64(DEEP_LEN as f64 / DISK_BYTES_PER_SEC as f64)
        );
    }
}

const QD128: usize = 128;

/// One run of [`qd128_preempt_wait_figures`]: the survivor `s` preempts the victim `v` (Write
/// Exclusive – Registrants Only) `phase` after 0.5 s of `v`'s `QD128` 4 MiB writes in flight;
/// returns the wait.
fn qd128_preempt_wait(cluster: bool, phase: Duration) -> Duration {
    use sharedisk::config::Config;
    use sharedisk::daemon::server::Server;
    use sharedisk::pr::{PrStatus, ProutRequest, ResType, ServiceAction};
    use sharedisk::testhooks::probe::{Probe, Recorder};
    const IMAGE: u64 = 256 << 20;
    let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    let image = dir.path().join("disk.img");
    allocated_image(&image, IMAGE);
    #[cfg(feature = "cluster")]
    let etcd = cluster.then(|| common::etcd::Etcd::start(dir.path()));
    let config = |node: &str, guests: &[&str]| {
        let mut c = Config::new(image.clone(), dir.path().join(node), guests);
        c.size = Some(IMAGE);
        c.direct = true;
        #[cfg(feature = "cluster")]
        if let Some(etcd) = &etcd {
            c.cluster = Some(sharedisk::pr::cluster::ClusterConfig {
                etcd: vec![etcd.url.clone()],
                node: node.into(),
                disk_id: "figures".into(),
                prefix: "/sharedisk/v1".into(),
                lease_ms: 1000,
                renew_ms: None,
                drift: 0.01,
                max_io_ms: 2000,
                hold_ms: 2000,
                budget_ms: 20_000,
                fence_hook: None,
                state_dir: Some(dir.path().join("state")),
                ca_file: None,
                cert_file: None,
                key_file: None,
                user: None,
                password_file: None,
                insecure: true,
            });
        }
        c
    };
    let recorder = Recorder::new();
    let probed = |c: Config| {
        let r = recorder.clone();
        Server::start_wrapped(c, move |image| Box::new(Probe::new(image, r))).expect("starts")
    };
    // One host: one daemon serves both; cluster mode: the survivor's daemon is another one.
    let (victim_daemon, survivor_daemon) = if cluster {
        let v = probed(config("h2", &["v"]));
        let s = Server::start(config("h1", &["s"])).expect("joins");
        (v, Some(s))
    } else {
        (probed(config("h1", &["v", "s"])), None)
    };
    let survivor = survivor_daemon.as_ref().unwrap_or(&victim_daemon).arbiter();
    let prout = |who: &str, req: ProutRequest| survivor.prout(who, &req, None);
    let register = |k| ProutRequest::new(ServiceAction::Register).sa_key(k);
    assert_eq!(prout("v", register(VICTIM_KEY)), PrStatus::Good);
    assert_eq!(prout("s", register(SURVIVOR_KEY)), PrStatus::Good);
    let we_ro = ResType::WriteExclusiveRegistrantsOnly;
    let reserve = ProutRequest::new(ServiceAction::Reserve)
        .key(VICTIM_KEY)
        .typ(we_ro);
    assert_eq!(prout("v", reserve), PrStatus::Good);

    let mut fe = common::vu_frontend::VuFrontend::connect(
        &dir.path()
            .join(if cluster { "h2" } else { "h1" })
            .join("v-blk.sock"),
        1,
        1024,
    );
    let data = fe.alloc(DEEP_LEN);
    fe.write_mem(data, &vec![0x6b; DEEP_LEN]);
    let mut statuses = Vec::new();
    recorder.set_write_bandwidth(Some(DISK_BYTES_PER_SEC));
    common::vu_frontend::wait_out_poll();
    for i in 0..QD128 {
        let hdr = fe.alloc(16);
        let sector = ((i * DEEP_LEN) as u64 % IMAGE) / 512;
        fe.write_mem(
            hdr,
            &common::vu_frontend::blk_header(VIRTIO_BLK_T_OUT, sector),
        );
        let status = fe.alloc(1);
        fe.write_mem(status, &[0xff]);
        let mut chain = vec![Desc::r(hdr, 16)];
        chain.extend((0..DEEP_LEN >> 20).map(|s| Desc::r(data + (s << 20) as u64, 1 << 20)));
        chain.push(Desc::w(status, 1));
        fe.submit_without_kick(0, &chain);
        statuses.push(status);
    }
    fe.kick(0);
    std::thread::sleep(Duration::from_millis(500) + phase);
    let preempt = ProutRequest::new(ServiceAction::PreemptAndAbort)
        .key(SURVIVOR_KEY)
        .sa_key(VICTIM_KEY)
        .typ(we_ro);
    let _deadline = Deadline::start("PREEMPT AND ABORT under QD128", Duration::from_secs(120));
    let start = Instant::now();
    assert_eq!(prout("s", preempt), PrStatus::Good);
    let took = start.elapsed();
    for _ in 0..QD128 {
        fe.wait_used(0, Duration::from_secs(120))
            .expect("a write of the QD128 round not completed");
    }
    let got: Vec<u8> = statuses.iter().map(|&s| fe.read_mem(s, 1)[0]).collect();
    let ok = got.iter().filter(|&&s| s == VIRTIO_BLK_S_OK).count();
    eprintln!(
        "cluster {cluster}: {ok} of {QD128} writes done before the PREEMPT, the rest refused"
    );
    assert!(
        got[ok..].iter().all(|&s| s == VIRTIO_BLK_S_IOERR),
        "{got:?}"
    );
    assert!(ok < QD128, "writes after the PREEMPT were refused");
    took
}

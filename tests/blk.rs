//! The vhost-user-blk device through libblkio, a real independent client, against the daemon
//! binary in its own process (as in production: a client can never corrupt the daemon's memory
//! or file descriptors, nor the other way round).

mod common;

use common::blkio_client::BlkClient;
use common::process::DaemonProcess;

const IMAGE_SIZE: u64 = 64 << 20;

struct TestDaemon {
    d: DaemonProcess,
    _dir: tempfile::TempDir,
}

impl TestDaemon {
    fn start(guests: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        TestDaemon {
            d: DaemonProcess::start(dir.path(), guests, "64M"),
            _dir: dir,
        }
    }

    fn blk(&self, guest: &str) -> std::path::PathBuf {
        self.d.blk(guest)
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i % 251) as u8))
        .collect()
}

#[test]
fn three_clients_share_data() {
    let d = TestDaemon::start(&["vm1", "vm2", "vm3"]);
    let mut c: Vec<BlkClient> = ["vm1", "vm2", "vm3"]
        .iter()
        .map(|g| BlkClient::connect(&d.blk(g)).expect("connect"))
        .collect();
    assert_eq!(c[0].capacity(), IMAGE_SIZE);
    for (i, off) in [(0usize, 0u64), (1, 1 << 20), (2, 7 << 20)] {
        c[i].write(off, &pattern(i as u8 + 1, 65536)).unwrap();
    }
    for (reader, client) in c.iter_mut().enumerate() {
        for (i, off) in [(0usize, 0u64), (1, 1 << 20), (2, 7 << 20)] {
            assert_eq!(
                client.read(off, 65536).unwrap(),
                pattern(i as u8 + 1, 65536),
                "client {reader} reads what client {i} wrote"
            );
        }
    }
}

#[test]
fn discard_and_write_zeroes_read_back_as_zeroes_and_flush_works() {
    let d = TestDaemon::start(&["vm1", "vm2"]);
    let mut a = BlkClient::connect(&d.blk("vm1")).unwrap();
    let mut b = BlkClient::connect(&d.blk("vm2")).unwrap();
    a.write(0, &pattern(9, 1 << 20)).unwrap();
    a.flush().unwrap();
    a.discard(0, 65536).unwrap();
    a.write_zeroes(131072, 65536, false).unwrap();
    a.write_zeroes(262144, 4096, true).unwrap();
    let data = b.read(0, 1 << 20).unwrap();
    let expect = pattern(9, 1 << 20);
    for (i, (&got, &want)) in data.iter().zip(&expect).enumerate() {
        let zeroed = i < 65536 || (131072..196608).contains(&i) || (262144..266240).contains(&i);
        assert_eq!(got, if zeroed { 0 } else { want }, "byte {i}");
    }
    b.flush().unwrap();
}

#[test]
fn out_of_range_requests_fail_and_the_device_keeps_serving() {
    let d = TestDaemon::start(&["vm1"]);
    let mut a = BlkClient::connect(&d.blk("vm1")).unwrap();
    assert!(a.read(IMAGE_SIZE - 512, 1024).is_err());
    assert!(a.write(IMAGE_SIZE, &[1u8; 512]).is_err());
    assert!(a.discard(IMAGE_SIZE - 512, 1024).is_err());
    a.write(IMAGE_SIZE - 512, &[7u8; 512]).unwrap();
    assert_eq!(a.read(IMAGE_SIZE - 512, 512).unwrap(), vec![7u8; 512]);
}

#[test]
fn reconnect_while_others_keep_doing_io() {
    let d = TestDaemon::start(&["vm1", "vm2", "vm3"]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = ["vm2", "vm3"]
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let sock = d.blk(g);
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut c = BlkClient::connect(&sock).unwrap();
                let off = (i as u64 + 1) << 20;
                let mut n = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let data = pattern(n as u8, 4096);
                    c.write(off, &data).unwrap();
                    assert_eq!(c.read(off, 4096).unwrap(), data);
                    n += 1;
                }
                n
            })
        })
        .collect();
    for round in 0..5u8 {
        let mut c = BlkClient::connect(&d.blk("vm1")).expect("reconnect");
        c.write(0, &pattern(round, 4096)).unwrap();
        assert_eq!(c.read(0, 4096).unwrap(), pattern(round, 4096));
        drop(c);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        assert!(w.join().unwrap() > 0, "the other clients kept doing I/O");
    }
}

/// A second connection is a migration's destination (tests/migration_handoff.rs); a third is
/// refused.
#[test]
fn third_connection_to_an_active_socket_is_refused() {
    let d = TestDaemon::start(&["vm1"]);
    let mut a = BlkClient::connect(&d.blk("vm1")).unwrap();
    let b = BlkClient::connect(&d.blk("vm1")).expect("a second connection is accepted");
    assert!(BlkClient::connect(&d.blk("vm1")).is_err());
    a.write(0, &[1u8; 512]).unwrap();
    drop(a);
    drop(b);
    BlkClient::connect(&d.blk("vm1")).expect("connect after the others left");
}

#[test]
fn read_only_image_refuses_writes() {
    let mut d = TestDaemon::start(&["vm1"]);
    d.d.extra.push("--read-only".into());
    d.d.restart();
    assert!(
        BlkClient::connect(&d.blk("vm1")).is_err(),
        "a read-write open of a read-only device is refused"
    );
    let mut a = BlkClient::connect_read_only(&d.blk("vm1")).unwrap();
    assert!(a.read_only());
    assert!(a.write(0, &[1u8; 512]).is_err());
    assert_eq!(a.read(0, 512).unwrap(), vec![0u8; 512]);
}

#[test]
fn every_queue_the_client_enables_is_served() {
    let d = TestDaemon::start(&["vm1"]);
    let mut c = BlkClient::connect_queues(&d.blk("vm1"), 4).unwrap();
    for q in 0..4 {
        c.use_queue(q);
        c.write(q as u64 * 65536, &pattern(q as u8, 4096)).unwrap();
        c.use_queue(q);
    }
    for q in 0..4 {
        assert_eq!(
            c.read(q as u64 * 65536, 4096).unwrap(),
            pattern(q as u8, 4096),
            "queue {q}"
        );
    }
}

/// Sets the daemon's soft RLIMIT_NOFILE; returns the previous limits.
fn set_fd_limit(pid: i32, soft: u64) -> libc::rlimit {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit reads the current limits into `old`; both pointers are valid.
    assert_eq!(
        unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) },
        0
    );
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    // SAFETY: as above, with a valid new limit.
    assert_eq!(
        unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) },
        0
    );
    old
}

#[test]
fn a_guest_connects_again_after_the_daemon_ran_out_of_file_descriptors() {
    use common::vu_frontend::VuFrontend;
    use std::time::{Duration, Instant};
    let d = TestDaemon::start(&["vm1"]);
    let pid = d.d.pid().expect("the daemon runs") as i32;
    // No descriptor left for a new connection's eventfds: a new descriptor takes the lowest
    // free number, so the limit is that number (not the count of open ones: a descriptor closed
    // during startup leaves a gap below the count).
    let open: std::collections::BTreeSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let lowest_free = (0..).find(|n| !open.contains(n)).unwrap();
    let old = set_fd_limit(pid, lowest_free);
    let sock = d.blk("vm1");
    let client = std::thread::spawn(move || {
        let mut fe = VuFrontend::try_connect(&sock, 1, 128)?;
        fe.blk_write(0, &[0x42; 4096]);
        Ok::<_, String>(fe.blk_read(0, 4096))
    });
    // Out of descriptors while building the device ("cannot create a device") or, when a
    // descriptor closed elsewhere in the daemon left a gap below the limit, while accepting the
    // connection ("accepting a connection failed"): either way the frontend stays waiting.
    let deadline = Instant::now() + Duration::from_secs(10);
    let failed = |log: &str| {
        log.contains("cannot create a device") || log.contains("accepting a connection failed")
    };
    while !failed(&d.d.log()) {
        assert!(
            Instant::now() < deadline,
            "the failure was never logged: {}",
            d.d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Resources come back: the waiting guest is served, without anyone restarting anything.
    set_fd_limit(pid, old.rlim_cur);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !client.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the guest was never served: {}",
            d.d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(client.join().unwrap().unwrap(), vec![0x42; 4096]);
    // And it can leave and come back as usual.
    let mut again = BlkClient::connect(&d.blk("vm1")).expect("reconnect");
    assert_eq!(again.read(0, 4096).unwrap(), vec![0x42; 4096]);
}

/// `--direct --aio io_uring`, the mode for images other hosts also write: 32 writes in flight
/// become io_uring batches under O_DIRECT, and every acknowledged block is in the file (as a
/// buffered read of it shows) and visible to another guest.
#[test]
fn direct_io_with_io_uring_batches_lands_every_acknowledged_write() {
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    let dir = tempfile::tempdir().unwrap();
    let d = DaemonProcess::start_args(
        dir.path(),
        &["vm1", "vm2"],
        "64M",
        &["--direct", "--aio", "io_uring"],
    );
    assert!(
        d.log().contains("O_DIRECT: memory alignment"),
        "{}",
        d.log()
    );
    let mut writer = BlkClient::connect(&d.blk("vm1")).expect("connect");
    let blocks = 4096;
    let (stop, progress) = (AtomicBool::new(false), AtomicUsize::new(0));
    let result = writer.flood(32, blocks, &stop, &progress);
    assert_eq!(result.ok.len(), blocks);
    assert!(result.ok.iter().all(|&ok| ok), "every write succeeded");
    let mut reader = BlkClient::connect(&d.blk("vm2")).expect("connect");
    let image = std::fs::read(dir.path().join("disk.img")).unwrap();
    for seq in [0usize, 1, 31, 32, 1000, blocks - 1] {
        let want = (seq as u64 + 1).to_le_bytes();
        let on_disk = &image[seq * 4096..seq * 4096 + 8];
        assert_eq!(on_disk, want, "block {seq} in the image file");
        assert_eq!(reader.read(seq as u64 * 4096, 8 * 512).unwrap()[..8], want);
    }
    for seq in 0..blocks {
        let got = u64::from_le_bytes(image[seq * 4096..seq * 4096 + 8].try_into().unwrap());
        assert_eq!(got, seq as u64 + 1, "block {seq}");
    }
}

/// The daemon's vhost-user queue threads (vhost-user-backend names them `vring_worker`).
fn queue_threads(pid: u32) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim() == "vring_worker")
        .count()
}

/// A guest configured with one queue (the default) costs one queue thread on its blk device
/// and two on its scsi device (control and events, requests), not one per advertised ring;
/// a frontend that enables more rings than configured is still served on every one of them.
#[test]
fn queue_threads_follow_the_guest_queues() {
    let d = TestDaemon::start(&["vm1"]);
    let pid = d.d.pid().unwrap();
    let mut blk = BlkClient::connect_queues(&d.blk("vm1"), 4).unwrap();
    let mut scsi = common::scsi_client::ScsiClient::connect_queues(&d.d.scsi("vm1"), 4, 64);
    // The queue threads start as the connections are set up: wait until they all have.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut threads = queue_threads(pid);
    while threads < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        threads = queue_threads(pid);
    }
    eprintln!("queue threads with one guest connected on both devices: {threads}");
    assert_eq!(
        threads,
        1 + 2,
        "one blk thread, scsi control and request threads"
    );
    for q in 0..4 {
        blk.use_queue(q);
        blk.write(q as u64 * 65536, &pattern(q as u8, 4096))
            .unwrap();
        blk.use_queue(q);
    }
    for q in 0..4 {
        assert_eq!(
            blk.read(q as u64 * 65536, 4096).unwrap(),
            pattern(q as u8, 4096)
        );
    }
    // A TEST UNIT READY on each request ring (rings 2 to 5).
    use common::scsi_client::{parse_resp, req_header, LUN0, REQ_HEADER_LEN, RESP_LEN};
    use common::vu_frontend::Desc;
    for ring in 2..6 {
        let fe = &mut scsi.fe;
        let hdr = fe.alloc(REQ_HEADER_LEN);
        fe.write_mem(hdr, &req_header(&LUN0, ring as u64, &[0u8; 6]));
        let resp = fe.alloc(RESP_LEN);
        let head = fe.submit(
            ring,
            &[
                Desc::r(hdr, REQ_HEADER_LEN as u32),
                Desc::w(resp, RESP_LEN as u32),
            ],
        );
        let used = fe.wait_used(ring, std::time::Duration::from_secs(30));
        assert_eq!(used.map(|u| u.0), Some(head), "request ring {ring} served");
        // GOOD, or the power-on unit attention on the first: answered by the SCSI core.
        let (response, status, _, _) = parse_resp(&fe.read_mem(resp, RESP_LEN));
        assert!(
            response == 0 && [0, 2].contains(&status),
            "request ring {ring}"
        );
    }
}

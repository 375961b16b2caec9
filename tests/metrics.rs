//! Prometheus metrics, proved with the real programs: `promtool check metrics` accepts what
//! `ctl metrics` and `GET /metrics` serve, and a real Prometheus server (Debian's `prometheus`,
//! started here on loopback) scrapes the daemon and answers queries whose counters grew by
//! exactly the I/O this test did. The `GET /metrics` listener against hostile clients: clients
//! trickling request bytes neither keep scrapes out nor hold a connection past its deadline; an
//! address beyond loopback is warned about.

mod common;

use common::prometheus::promtool_check;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::blkio_client::BlkClient;
use common::ctl::ctl;
use common::http::{free_port, get};
use common::process::DaemonProcess;
use common::prometheus::Prometheus;
use common::scsi_client::*;

/// The value of `name{labels}` in a text exposition.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

#[test]
fn metrics_pass_promtool_and_prometheus_scrapes_the_io() {
    let dir = tempfile::tempdir().unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let listen_s = listen.to_string();
    let d = DaemonProcess::start_args(
        dir.path(),
        &["vm1", "vm2"],
        "64M",
        &["--metrics-listen", &listen_s],
    );

    // Some traffic of every kind first, so that promtool sees every family with samples.
    let mut b1 = BlkClient::connect(&d.blk("vm1")).unwrap();
    b1.write(0, &[1; 8192]).unwrap();
    b1.read(0, 4096).unwrap();
    b1.flush().unwrap();
    b1.discard(1 << 20, 1 << 20).unwrap();
    let mut s2 = ScsiClient::connect(&d.scsi("vm2"));
    s2.drain_ua();
    assert!(s2.prout(SA_REGISTER, 0, 0, 0x2, false).is_good());
    assert!(s2.prout(SA_RESERVE, 1, 0x2, 0, false).is_good());
    assert!(
        b1.write(0, &[1; 512]).is_err(),
        "vm1 is fenced by vm2's reservation"
    );
    assert!(s2.write16(0, &[2; 1024]).is_good());

    let text = ctl(&d.control(), &["metrics"]).ok().stdout;
    promtool_check(&text);
    let (code, head, body) = get(listen, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    promtool_check(&body);
    assert_eq!(get(listen, "/other").unwrap().0, 404);

    let series = |s: &str| sample(&body, s);
    assert_eq!(
        series("sharedisk_written_bytes_total{guest=\"vm1\",path=\"blk\"}"),
        8192.0
    );
    assert_eq!(
        series("sharedisk_writes_completed_total{guest=\"vm2\",path=\"scsi\"}"),
        1.0
    );
    assert_eq!(
        series("sharedisk_written_bytes_total{guest=\"vm2\",path=\"scsi\"}"),
        1024.0
    );
    assert_eq!(
        series("sharedisk_flushes_completed_total{guest=\"vm1\",path=\"blk\"}"),
        1.0
    );
    assert_eq!(
        series("sharedisk_discards_completed_total{guest=\"vm1\",path=\"blk\"}"),
        1.0
    );
    assert_eq!(
        series("sharedisk_reservation_conflicts_total{guest=\"vm1\",path=\"blk\",op=\"write\"}"),
        1.0
    );
    assert_eq!(
        series("sharedisk_pr_out_commands_total{guest=\"vm2\",action=\"reserve\",result=\"ok\"}"),
        1.0
    );
    assert_eq!(
        series("sharedisk_guest_connected{guest=\"vm1\",path=\"blk\"}"),
        1.0
    );
    assert_eq!(
        series("sharedisk_guest_connected{guest=\"vm1\",path=\"scsi\"}"),
        0.0
    );
    assert_eq!(series("sharedisk_pr_registrations"), 1.0);
    assert_eq!(
        series("sharedisk_pr_reservation_info{holder=\"vm2\",type=\"1\"}"),
        1.0
    );
    assert_eq!(
        series("sharedisk_request_duration_seconds_count{guest=\"vm1\",path=\"blk\",op=\"write\"}"),
        2.0
    );
    // The +Inf bucket counts every request once, as `_count` does.
    assert_eq!(
        series(
            "sharedisk_request_duration_seconds_bucket{guest=\"vm1\",path=\"blk\",op=\"write\",le=\"+Inf\"}"
        ),
        2.0
    );
    assert!(!body.contains("0x2"), "no keys in labels");

    // A real Prometheus scrapes the endpoint; its counters grow by the I/O done in between.
    let prom = Prometheus::start(dir.path(), listen);
    let q = "sharedisk_read_bytes_total{guest=\"vm2\",path=\"scsi\",job=\"sharedisk\"}";
    let before = prom.wait(q, |_| true, "a first scrape");
    assert_eq!(before, 0.0);
    for lba in 0..16 {
        assert!(s2.read16(lba * 8, 8).is_good());
    }
    let after = prom.wait(q, |v| v > before, "the reads");
    assert_eq!(
        after - before,
        16.0 * 4096.0,
        "read bytes grew by exactly the reads"
    );
    let reads = "sharedisk_reads_completed_total{guest=\"vm2\",path=\"scsi\"}";
    assert_eq!(prom.wait(reads, |v| v >= 16.0, "16 reads"), 16.0);
    let rate = "sum(rate(sharedisk_request_duration_seconds_count{guest=\"vm2\"}[1m]))";
    prom.wait(rate, |v| v > 0.0, "a request rate from the histogram");
}

/// A client that sends a request head one byte a second, reconnecting whenever the daemon closes
/// it, until `stop`.
fn slow_client(addr: SocketAddr, stop: &AtomicBool, closed: &AtomicUsize) {
    let head = b"GET /metrics HTTP/1.1\r\nHost: slow\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut conn) = TcpStream::connect(addr) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        for b in head.iter().take(head.len() - 2) {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if conn.write_all(&[*b]).is_err() {
                closed.fetch_add(1, Ordering::Relaxed);
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// Twelve clients sending their request heads a byte a second (more than the 8 slots) never
/// keep a real scrape out: each scrape is answered at once, complete, and a real Prometheus
/// scraping every second sees the target up throughout.
#[test]
fn slow_clients_do_not_keep_a_scrape_out() {
    let dir = tempfile::tempdir().unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let d = DaemonProcess::start_args(
        dir.path(),
        &["vm1"],
        "16M",
        &["--metrics-listen", &listen.to_string()],
    );
    // A real Prometheus scrapes every second throughout.
    let prom = Prometheus::start(dir.path(), listen);
    let up = "up{job=\"sharedisk\"}";
    prom.wait(up, |v| v == 1.0, "the target up");
    let (stop, closed) = (AtomicBool::new(false), AtomicUsize::new(0));
    std::thread::scope(|s| {
        let _stop = common::deadline::SetOnDrop(&stop);
        for _ in 0..12 {
            s.spawn(|| slow_client(listen, &stop, &closed));
        }
        // Every slot is held by a slow client by now.
        std::thread::sleep(Duration::from_secs(2));
        for i in 0..8 {
            let asked = Instant::now();
            let answer = get(listen, "/metrics");
            let took = asked.elapsed();
            let (code, _, body) =
                answer.unwrap_or_else(|e| panic!("scrape {i} among slow clients: {e}"));
            assert_eq!(code, 200, "scrape {i}");
            assert!(body.contains("sharedisk_build_info"), "scrape {i}: {body}");
            assert!(took < Duration::from_secs(2), "scrape {i} took {took:?}");
            std::thread::sleep(Duration::from_secs(1));
        }
        // Prometheus' own scrapes of the last 6 s all succeeded.
        let window = format!("min_over_time({up}[6s])");
        assert_eq!(prom.query(&window), Some(1.0), "{window}");
        let scrapes = prom.query(&format!("count_over_time({up}[6s])"));
        assert!(
            scrapes >= Some(4.0),
            "Prometheus scraped {scrapes:?} times in 6 s"
        );
    });
    // Each was closed at least once (its slot taken by a newer client, or its deadline up).
    let closed = closed.load(Ordering::Relaxed);
    assert!(
        closed >= 12,
        "the daemon closed slow clients {closed} times"
    );
    assert!(
        !d.log().contains("reachable from other hosts"),
        "{}",
        d.log()
    );
}

/// A client that sends its request head a byte a second is closed once the request's deadline
/// (5 s from the accept) is up, even with slots to spare.
#[test]
fn a_slow_request_is_closed_at_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _d = DaemonProcess::start_args(
        dir.path(),
        &["vm1"],
        "16M",
        &["--metrics-listen", &listen.to_string()],
    );
    let mut conn = TcpStream::connect(listen).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let connected = Instant::now();
    let closed = loop {
        assert!(
            connected.elapsed() < Duration::from_secs(15),
            "a client sending a byte a second still held its connection after 15 s"
        );
        if conn.write_all(b"G").is_err() {
            break connected.elapsed();
        }
        match conn.read(&mut [0u8; 64]) {
            Ok(0) => break connected.elapsed(),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break connected.elapsed(),
            Ok(n) => panic!("{n} bytes of answer to an incomplete request"),
        }
    };
    assert!(
        closed >= Duration::from_secs(4) && closed < Duration::from_secs(8),
        "closed after {closed:?}, expected at the 5 s deadline"
    );
}

/// A metrics address other hosts can reach is announced in the log with what it exposes.
#[test]
fn a_metrics_address_beyond_loopback_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("0.0.0.0:{}", free_port());
    let d = DaemonProcess::start_args(dir.path(), &["vm1"], "16M", &["--metrics-listen", &listen]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.log().contains("reachable from other hosts") {
        assert!(Instant::now() < deadline, "no warning in:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = d.log();
    for what in [
        "without authentication",
        "guests' names",
        "reservation's holder",
        "127.0.0.1",
    ] {
        assert!(
            log.contains(what),
            "the warning does not say {what:?}:\n{log}"
        );
    }
}

//! Metrics measured against time, on a daemon process slowed by the write-delay test hook
//! (`SHAREDISK_TEST_WRITE_DELAY_MS`: every write waits that long after its admission): the
//! latency histogram of a known distribution, as a real Prometheus computes its quantile, and a
//! scrape answered while a PR OUT waits for an admitted write.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::http::{free_port, get};
use common::process::DaemonProcess;
use common::prometheus::Prometheus;
use common::scsi_client::*;
use common::vu_frontend::*;

/// A daemon for guests vm1 and vm2 with every write delayed by `delay_ms` and the metrics on
/// loopback.
fn slowed_daemon(dir: &std::path::Path, delay_ms: u64) -> (DaemonProcess, SocketAddr) {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let d = DaemonProcess::start_full(
        dir,
        &["vm1", "vm2"],
        "64M",
        &["--metrics-listen", &listen.to_string()],
        &[("SHAREDISK_TEST_WRITE_DELAY_MS", &delay_ms.to_string())],
    );
    (d, listen)
}

/// The value of `series` (name and labels, as exposed) in a text exposition.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

/// N writes that each take the 60 ms delay: every one lands in the (50 ms, 100 ms] bucket, so
/// Prometheus' `histogram_quantile(0.5, …)` falls in that bucket and the +Inf bucket and
/// `_count` both say N. With cumulative counts summed again by the encoder the +Inf bucket said
/// 5 N and the median 0.6 s.
#[test]
fn prometheus_quantile_of_a_known_latency_distribution() {
    const N: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let (d, listen) = slowed_daemon(dir.path(), 60);
    let mut fe = VuFrontend::connect(&d.blk("vm1"), 1, 64);
    for i in 0..N {
        fe.blk_write(i as u64 * 8, &[i as u8; 4096]);
    }
    let prom = Prometheus::start(dir.path(), listen);
    let labels = "guest=\"vm1\",path=\"blk\",op=\"write\"";
    let count = format!("sharedisk_request_duration_seconds_count{{{labels}}}");
    prom.wait(&count, |v| v == N as f64, "the N writes");
    let inf = format!("sharedisk_request_duration_seconds_bucket{{le=\"+Inf\",{labels}}}");
    assert_eq!(prom.query(&inf), Some(N as f64), "+Inf bucket");
    let bucket = |le: &str| {
        let q = format!("sharedisk_request_duration_seconds_bucket{{le=\"{le}\",{labels}}}");
        prom.query(&q)
    };
    assert_eq!(bucket("0.05"), Some(0.0), "no write faster than its delay");
    let median =
        format!("histogram_quantile(0.5, sharedisk_request_duration_seconds_bucket{{{labels}}})");
    let median = prom.query(&median).expect("a median");
    eprintln!("Prometheus: median write latency {median} s for writes delayed by 60 ms");
    assert!(
        median > 0.05 && median <= 0.1,
        "median write latency {median} s, expected in (0.05, 0.1] s (writes delayed by 60 ms); \
         bucket le=0.1: {:?}",
        bucket("0.1")
    );
}

/// Submits one 4 KiB write on vm1's blk queue 0 without waiting for it.
fn submit_write(fe: &mut VuFrontend) {
    let hdr = fe.alloc(16);
    fe.write_mem(hdr, &blk_header(VIRTIO_BLK_T_OUT, 0));
    let data = fe.alloc(4096);
    let status = fe.alloc(1);
    fe.write_mem(status, &[0xff]);
    fe.submit(
        0,
        &[Desc::r(hdr, 16), Desc::r(data, 4096), Desc::w(status, 1)],
    );
}

/// A PR OUT waits for the admitted write (4 s of delay) holding the arbiter's turnstile; a
/// scrape meanwhile answers at once from the published snapshot, showing the state before the
/// PR OUT, and the next scrape after it shows its change.
#[test]
fn a_scrape_never_waits_for_a_pr_out() {
    let dir = tempfile::tempdir().unwrap();
    let (d, listen) = slowed_daemon(dir.path(), 4000);
    let mut s2 = ScsiClient::connect(&d.scsi("vm2"));
    s2.drain_ua();
    let (code, _, body) = get(listen, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert_eq!(sample(&body, "sharedisk_pr_registrations"), 0.0);

    let mut fe = VuFrontend::connect(&d.blk("vm1"), 1, 64);
    submit_write(&mut fe);
    // Let the write be admitted: it then holds the admission for 4 s.
    std::thread::sleep(Duration::from_millis(500));
    let (scrape, prout_returned) = std::thread::scope(|s| {
        let scrape = s.spawn(|| {
            // The PR OUT below is waiting by then.
            std::thread::sleep(Duration::from_millis(700));
            let asked = Instant::now();
            let answer = get(listen, "/metrics");
            (asked.elapsed(), Instant::now(), answer)
        });
        let sent = Instant::now();
        let prout = s2.prout(SA_REGISTER, 0, 0, 0x2, false);
        let returned = Instant::now();
        assert!(prout.is_good(), "REGISTER: {prout:?}");
        let waited = returned - sent;
        assert!(
            waited > Duration::from_secs(2),
            "the PR OUT took {waited:?}: it did not wait for the delayed write (admitted late?)"
        );
        (scrape.join().unwrap(), returned)
    });
    let (took, answered, answer) = scrape;
    eprintln!("a scrape during the PR OUT took {took:?}");
    let (code, _, body) = answer.expect("a scrape while the PR OUT waits");
    assert_eq!(code, 200);
    assert!(
        answered < prout_returned,
        "the scrape was answered only after the PR OUT returned (it took {took:?})"
    );
    assert!(took < Duration::from_secs(1), "the scrape took {took:?}");
    assert_eq!(sample(&body, "sharedisk_pr_registrations"), 0.0);
    assert_eq!(sample(&body, "sharedisk_pr_generation"), 0.0);
    assert_eq!(
        fe.wait_used(0, TIMEOUT).map(|(_, len)| len),
        Some(1),
        "the write completed"
    );

    let (_, _, body) = get(listen, "/metrics").unwrap();
    assert_eq!(sample(&body, "sharedisk_pr_registrations"), 1.0);
    assert_eq!(sample(&body, "sharedisk_pr_generation"), 1.0);
}

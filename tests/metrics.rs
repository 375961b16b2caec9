//! Prometheus metrics, proved with the real programs: `promtool check metrics` accepts what
//! `ctl metrics` and `GET /metrics` serve, and a real Prometheus server (Debian's `prometheus`,
//! started here on loopback) scrapes the daemon and answers queries whose counters grew by
//! exactly the I/O this test did.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::blkio_client::BlkClient;
use common::ctl::ctl;
use common::http::{free_port, get};
use common::process::DaemonProcess;
use common::scsi_client::*;

/// Runs `promtool check metrics` on `text`; returns its output, panics unless it accepts.
fn promtool_check(text: &str) -> String {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; images/install-deps.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool rejects the metrics: {report}"
    );
    assert!(report.trim().is_empty(), "promtool lint findings: {report}");
    report
}

/// The value of `name{labels}` in a text exposition.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
}

impl Prometheus {
    fn start(dir: &std::path::Path, target: SocketAddr) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: sharedisk\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.join("prometheus.err")).unwrap())
            .spawn()
            .expect("prometheus (Debian package prometheus; images/install-deps.sh installs it)");
        Prometheus { child, addr, log }
    }

    /// The value of an instant query, once it has one.
    fn query(&self, q: &str) -> Option<f64> {
        let path = format!("/api/v1/query?query={}", encode(q));
        let (code, _, body) = get(self.addr, &path).ok()?;
        if code != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Polls `q` until `want(value)`; panics after 60 s.
    fn wait(&self, q: &str, want: impl Fn(f64) -> bool, what: &str) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(v) = self.query(q) {
                if want(v) {
                    return v;
                }
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus never showed {what} for {q} (last {:?}); targets: {:?}; log: {}",
                self.query(q),
                get(self.addr, "/api/v1/targets").map(|r| r.2),
                std::fs::read_to_string(self.log.with_extension("err")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
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

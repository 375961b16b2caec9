//! A cluster of Debian guests (`images/build-cluster-guest.sh`: pacemaker, corosync,
//! fence-agents, multipath-tools) on one `sharedisk serve` process: node K is `nodeK`, with
//! /dev/vda (blk) and /dev/sda (scsi) on the shared image, eth0 10.77.0.K on a private multicast
//! network of its own (loopback only), and its /dev/ttyS1 written to `DIR/nodeK.ack`.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use super::guest::{ClusterNet, Guest, GuestOpts};
use super::process::DaemonProcess;

pub const NODES: [&str; 3] = ["node1", "node2", "node3"];

pub struct ClusterLab {
    /// `None` while a node is down. (Declared first: the guests go before the daemon.)
    pub nodes: Vec<Option<Guest>>,
    pub daemon: DaemonProcess,
    pub dir: PathBuf,
    net: String,
    hosts: String,
}

/// A multicast port of this process's own, so that concurrent test processes (and labs) never
/// share a network.
fn net_addr() -> String {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let port = 20000 + (std::process::id() % 2000) as u16 * 8 + n % 8;
    format!("239.255.77.1:{port}")
}

impl ClusterLab {
    /// Starts the daemon on a `size` image in `dir` and boots `n` nodes in parallel.
    pub fn start(dir: &Path, n: usize, size: &str) -> ClusterLab {
        let names = &NODES[..n];
        let daemon = DaemonProcess::start(dir, names, size);
        let hosts = names
            .iter()
            .enumerate()
            .map(|(i, name)| format!("{name}=10.77.0.{}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut lab = ClusterLab {
            daemon,
            nodes: Vec::new(),
            dir: dir.to_path_buf(),
            net: net_addr(),
            hosts,
        };
        let started = Instant::now();
        let booted: Vec<Guest> = std::thread::scope(|s| {
            let handles: Vec<_> = (1..=n)
                .map(|k| {
                    let lab = &lab;
                    s.spawn(move || lab.boot_node(k))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        eprintln!(
            "[cluster] {n} nodes booted in {:.1}s (each: {})",
            started.elapsed().as_secs_f64(),
            booted
                .iter()
                .map(|g| format!("{} {:.1}s", g.name(), g.boot_time().as_secs_f64()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        lab.nodes = booted.into_iter().map(Some).collect();
        lab
    }

    fn boot_node(&self, k: usize) -> Guest {
        let name = NODES[k - 1];
        let mut o = GuestOpts::new(name);
        o.blk = Some(self.daemon.blk(name));
        o.scsi = Some(self.daemon.scsi(name));
        o.memory = "1024M";
        o.reconnect = true;
        o.cluster = Some(ClusterNet {
            net: self.net.clone(),
            mac: format!("52:54:00:77:00:{k:02x}"),
            ip: format!("10.77.0.{k}/24"),
            hosts: self.hosts.clone(),
            ack: Some(self.ack_file(k)),
        });
        let g = Guest::boot(o);
        g.set_run_timeout(Duration::from_secs(120));
        g.sh("test -b /dev/vda && test -b /dev/sda && ip -br addr show eth0");
        g
    }

    /// Boots node `k` (1-based) again after it went down.
    pub fn reboot_node(&mut self, k: usize) {
        assert!(self.nodes[k - 1].is_none(), "node{k} still runs");
        let g = self.boot_node(k);
        self.nodes[k - 1] = Some(g);
    }

    /// Node `k` (1-based).
    #[track_caller]
    pub fn node(&self, k: usize) -> &Guest {
        self.nodes[k - 1].as_ref().expect("the node runs")
    }

    /// SIGKILLs node `k`'s QEMU: the machine is gone.
    pub fn kill_node(&mut self, k: usize) {
        if let Some(g) = self.nodes[k - 1].take() {
            g.kill();
        }
    }

    pub fn ack_file(&self, k: usize) -> PathBuf {
        self.dir.join(format!("{}.ack", NODES[k - 1]))
    }

    /// Starts corosync on every running node and waits until each sees all of them.
    pub fn start_corosync(&self) {
        for g in self.nodes.iter().flatten() {
            g.sh("corosync </dev/null >/var/log/corosync/start.log 2>&1");
        }
        let want = self.nodes.len();
        for g in self.nodes.iter().flatten() {
            wait_guest(
                g,
                &format!(
                    "test $(corosync-quorumtool -l 2>/dev/null | grep -c ' node[0-9]') -eq {want}"
                ),
                Duration::from_secs(60),
            );
        }
    }
}

/// Reads `len` bytes of `image` at byte `offset`.
pub fn image_bytes(image: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open(image).unwrap();
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset).unwrap();
    buf
}

/// Runs `cmd` on `g` until it exits 0, at most `timeout`.
#[track_caller]
pub fn wait_guest(g: &Guest, cmd: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let (rc, _) = g.run(cmd);
        if rc == 0 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "[{}] `{cmd}` did not succeed within {:.0}s",
            g.name(),
            timeout.as_secs_f64()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Runs `sg_persist ARGS` and returns its output. A UNIT ATTENTION (exit status 6: a PR change
/// by another initiator, a restart of the daemon) is reported once per event to the first
/// command, as SPC says; like any initiator, ask again.
#[track_caller]
pub fn sg_persist(g: &Guest, args: &str) -> String {
    let cmd = format!("sg_persist {args}");
    for _ in 0..3 {
        let (rc, out) = g.run(&cmd);
        match rc {
            0 => return out,
            6 => continue,
            _ => panic!("[{}] `{cmd}` failed with status {rc}: {out}", g.name()),
        }
    }
    panic!(
        "[{}] `{cmd}`: unit attention three times in a row",
        g.name()
    );
}

/// The registered keys `sg_persist -i -k` shows on `dev`, lower-case hex without 0x.
pub fn keys(g: &Guest, dev: &str) -> Vec<String> {
    let out = sg_persist(g, &format!("-n -i -k {dev}"));
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("0x"))
        .map(|k| k.trim_start_matches('0').to_lowercase())
        .collect()
}

/// `(key, type line)` of the reservation `sg_persist -i -r` shows on `dev`, if any.
pub fn reservation(g: &Guest, dev: &str) -> Option<(String, String)> {
    let out = sg_persist(g, &format!("-n -i -r {dev}"));
    let key = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Key=0x"))?
        .trim_start_matches('0')
        .to_lowercase();
    let ty = out
        .lines()
        .find(|l| l.contains("type:"))
        .unwrap_or_default()
        .trim()
        .to_string();
    Some((key, ty))
}

/// Writes one 4 KiB block at `block` of `dev` with `tag` (space-padded) and `oflag=direct`;
/// returns whether `dd` succeeded.
pub fn write_block(g: &Guest, dev: &str, block: u64, tag: &str) -> bool {
    let (rc, _) = g.run(&format!(
        "printf '%-4096s' '{tag}' | dd of={dev} bs=4096 count=1 seek={block} oflag=direct \
         iflag=fullblock 2>&1"
    ));
    rc == 0
}

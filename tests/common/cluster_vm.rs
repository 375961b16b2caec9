//! A cluster of Debian guests (`images/build-cluster-guest.sh`: pacemaker, corosync,
//! fence-agents, multipath-tools) on one `sharedisk serve` process: node K is `nodeK`, with
//! /dev/vda (blk) and /dev/sda (scsi) on the shared image, eth0 10.77.0.K on a private multicast
//! network of its own (loopback only), and its /dev/ttyS1 written to `DIR/nodeK.ack`.
//! A lab started with [`ClusterLab::start_migratable`] gives each node a root overlay of its own
//! (`DIR/nodeK-bootB-root.qcow2`) and QMP (`DIR/nodeK-qemuQ-qmp.sock`), so that a node can move
//! to a new QEMU on this host ([`ClusterLab::migrate_node`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::guest::{ClusterNet, Guest, GuestOpts};
use super::process::DaemonProcess;
use super::qmp::{qmp_args, Qmp};

pub const NODES: [&str; 3] = ["node1", "node2", "node3"];

pub struct ClusterLab {
    /// `None` while a node is down. (Declared first: the guests go before the daemon.)
    pub nodes: Vec<Option<Guest>>,
    pub daemon: DaemonProcess,
    pub dir: PathBuf,
    net: String,
    hosts: String,
    /// Whether the nodes can migrate (a root overlay of their own and QMP).
    migratable: bool,
    /// Per node: its boots (the root overlay's number) and its QEMUs (the QMP socket's).
    boots: Vec<u32>,
    qemus: Vec<u32>,
}

/// A multicast port of this process's own, so that concurrent test processes (and labs) never
/// share a network.
pub fn net_addr() -> String {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let port = 20000 + (std::process::id() % 2000) as u16 * 8 + n % 8;
    format!("239.255.77.1:{port}")
}

impl ClusterLab {
    /// Starts the daemon on a `size` image in `dir` and boots `n` nodes in parallel.
    pub fn start(dir: &Path, n: usize, size: &str) -> ClusterLab {
        Self::start_with(dir, n, size, false)
    }

    /// [`ClusterLab::start`] with nodes that can migrate ([`ClusterLab::migrate_node`]).
    pub fn start_migratable(dir: &Path, n: usize, size: &str) -> ClusterLab {
        Self::start_with(dir, n, size, true)
    }

    fn start_with(dir: &Path, n: usize, size: &str, migratable: bool) -> ClusterLab {
        let names = &NODES[..n];
        let daemon = DaemonProcess::start(dir, names, size);
        let hosts = hosts_of(n);
        let mut lab = ClusterLab {
            daemon,
            nodes: Vec::new(),
            dir: dir.to_path_buf(),
            net: net_addr(),
            hosts,
            migratable,
            boots: vec![0; n],
            qemus: vec![0; n],
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
        if self.migratable {
            new_root_overlay(&self.root_overlay(k));
        }
        let g = boot_opts(self.node_opts(k));
        if self.migratable {
            // The root (virtio-blk too) comes after sharedisk's /dev/vda.
            g.sh("test \"$(cat /sys/block/vda/serial)\" != sharedisk-root");
        }
        g
    }

    /// Node `k`'s QEMU flags: its devices, network and acknowledgements; if the lab is
    /// migratable, its root overlay and QMP socket too.
    fn node_opts(&self, k: usize) -> GuestOpts<'static> {
        let name = NODES[k - 1];
        let mut o = node_opts(
            k,
            (self.daemon.blk(name), self.daemon.scsi(name)),
            &self.net,
            &self.hosts,
            self.ack_file(k),
        );
        if self.migratable {
            o.cluster.as_mut().unwrap().root = Some(self.root_overlay(k));
            o.extra_args = qmp_args(&self.qmp_socket(k));
        }
        o
    }

    fn root_overlay(&self, k: usize) -> PathBuf {
        let boot = self.boots[k - 1];
        self.dir.join(format!("node{k}-boot{boot}-root.qcow2"))
    }

    /// The QMP socket of node `k`'s current QEMU (a migratable lab).
    pub fn qmp_socket(&self, k: usize) -> PathBuf {
        let qemu = self.qemus[k - 1];
        self.dir.join(format!("node{k}-qemu{qemu}-qmp.sock"))
    }

    /// Boots node `k` (1-based) again after it went down.
    pub fn reboot_node(&mut self, k: usize) {
        assert!(self.nodes[k - 1].is_none(), "node{k} still runs");
        self.boots[k - 1] += 1;
        self.qemus[k - 1] += 1;
        let g = self.boot_node(k);
        self.nodes[k - 1] = Some(g);
    }

    /// Live-migrates node `k`'s running guest to a new QEMU on this host, served by the same
    /// daemon (QMP `migrate` over a unix socket, at `bandwidth` bytes/s), and kills the source
    /// once the migration completed; the node's [`Guest`] is the destination's from then on.
    /// Returns the source's `query-migrate` answer.
    pub fn migrate_node(&mut self, k: usize, bandwidth: u64) -> Value {
        assert!(self.migratable, "a lab started with start_migratable");
        let source = Qmp::new(self.qmp_socket(k));
        self.qemus[k - 1] += 1;
        let uri = format!(
            "unix:{}",
            self.dir
                .join(format!("node{k}-qemu{}-incoming.sock", self.qemus[k - 1]))
                .display()
        );
        let mut o = self.node_opts(k);
        o.extra_args.extend(["-incoming".to_string(), uri.clone()]);
        let dest = Guest::start_incoming(o);
        dest.set_run_timeout(Duration::from_secs(120));
        let target = Qmp::new(self.qmp_socket(k));
        assert_eq!(target.run_state(), "inmigrate", "the destination waits");
        source.cmd(
            "migrate-set-parameters",
            json!({ "max-bandwidth": bandwidth }),
        );
        source.cmd("migrate", json!({ "uri": uri }));
        let m = source.wait_migration(
            &["completed", "failed", "cancelled"],
            Duration::from_secs(300),
        );
        assert_eq!(m["status"], "completed", "node{k}'s migration: {m}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while target.run_state() != "running" {
            assert!(Instant::now() < deadline, "the destination runs the guest");
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(src) = self.nodes[k - 1].replace(dest) {
            src.kill();
        }
        m
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
        start_corosync(&self.nodes.iter().flatten().collect::<Vec<_>>());
    }
}

/// `/etc/hosts` of a cluster of `n` nodes: `nodeK=10.77.0.K`.
pub fn hosts_of(n: usize) -> String {
    NODES[..n]
        .iter()
        .enumerate()
        .map(|(i, name)| format!("{name}=10.77.0.{}", i + 1))
        .collect::<Vec<_>>()
        .join(",")
}

/// A fresh qcow2 overlay of the cluster guest's root.img at `path` (`qemu-img`, from
/// qemu-utils); `run-guest.sh --root` boots it through the test guest's initramfs.
fn new_root_overlay(path: &Path) {
    let base = super::guest::ensure_cluster_images().join("root.img");
    super::guest::ensure_guest_images();
    let _ = std::fs::remove_file(path);
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base)
        .arg(path)
        .output()
        .expect("qemu-img runs (qemu-utils, images/install-deps.sh)");
    assert!(
        out.status.success(),
        "qemu-img create {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Boots node `k` (1-based) of a cluster on network `net` (see [`net_addr`]) with `/dev/vda` and
/// `/dev/sda` on the `(blk, scsi)` sockets, whichever daemon serves them; its /dev/ttyS1 goes to
/// `ack`.
pub fn boot_node(
    k: usize,
    sockets: (PathBuf, PathBuf),
    net: &str,
    hosts: &str,
    ack: PathBuf,
) -> Guest {
    boot_opts(node_opts(k, sockets, net, hosts, ack))
}

fn boot_opts(o: GuestOpts<'_>) -> Guest {
    let g = Guest::boot(o);
    g.set_run_timeout(Duration::from_secs(120));
    g.sh("test -b /dev/vda && test -b /dev/sda && ip -br addr show eth0");
    g
}

/// [`boot_node`]'s QEMU flags.
fn node_opts(
    k: usize,
    sockets: (PathBuf, PathBuf),
    net: &str,
    hosts: &str,
    ack: PathBuf,
) -> GuestOpts<'static> {
    let name = NODES[k - 1];
    let mut o = GuestOpts::new(name);
    o.blk = Some(sockets.0);
    o.scsi = Some(sockets.1);
    o.memory = "1024M";
    o.reconnect = true;
    o.cluster = Some(ClusterNet {
        net: net.to_string(),
        mac: format!("52:54:00:77:00:{k:02x}"),
        ip: format!("10.77.0.{k}/24"),
        hosts: hosts.to_string(),
        ack: Some(ack),
        root: None,
    });
    o
}

/// Starts corosync on `nodes` and waits until each sees all of them.
pub fn start_corosync(nodes: &[&Guest]) {
    for g in nodes {
        g.sh("corosync </dev/null >/var/log/corosync/start.log 2>&1");
    }
    let want = nodes.len();
    for g in nodes {
        wait_guest(
            g,
            &format!(
                "test $(corosync-quorumtool -l 2>/dev/null | grep -c ' node[0-9]') -eq {want}"
            ),
            Duration::from_secs(60),
        );
    }
}

pub use super::image::image_bytes;

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

// ---- fence_scsi ----

pub fn md5_hex(s: &str) -> String {
    let out = Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(s.as_bytes())?;
            c.wait_with_output()
        })
        .expect("md5sum runs");
    String::from_utf8(out.stdout).unwrap()[..32].to_string()
}

/// The key `fence_scsi` derives: 4 hex digits of md5(cluster name), then the node's position in
/// corosync's node list (`id`, 4 decimal digits) or 4 hex digits of md5(node name) (`hash`),
/// without leading zeros, as sg_persist prints it.
pub fn derived_key(node: usize, hash: bool) -> String {
    let cluster = &md5_hex("sharedisk")[..4];
    let k = if hash {
        format!("{cluster}{}", &md5_hex(&format!("node{node}"))[..4])
    } else {
        format!("{cluster}{:04}", node - 1)
    };
    k.trim_start_matches('0').to_string()
}

/// `fence_scsi ARGS` on `g`: (exit status, output).
pub fn agent(g: &Guest, args: &str) -> (i32, String) {
    g.run(&format!("fence_scsi {args}"))
}

#[track_caller]
pub fn agent_ok(g: &Guest, args: &str, want: &str) {
    let (rc, out) = agent(g, args);
    assert_eq!(rc, 0, "[{}] fence_scsi {args}: {out}", g.name());
    assert!(
        out.contains(want),
        "[{}] fence_scsi {args}: {out}",
        g.name()
    );
}

/// Every block a test writes gets its own 4 KiB block number.
pub struct Blocks(pub u64);
impl Blocks {
    pub fn next(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
}

/// Node `g` writes a fresh block on both devices; asserts whether it may, in the guest and on
/// the image.
#[track_caller]
pub fn check_writes(image: &Path, g: &Guest, blocks: &mut Blocks, allowed: bool, step: &str) {
    for dev in ["/dev/sda", "/dev/vda"] {
        let b = blocks.next();
        let tag = format!("{}-{}-{step}", g.name(), &dev[5..]);
        let ok = write_block(g, dev, b, &tag);
        let on_image = image_bytes(image, b * 4096, tag.len()) == tag.as_bytes();
        assert_eq!(
            (ok, on_image),
            (allowed, allowed),
            "{step}: {}'s write to {dev} (block {b}): dd ok={ok}, on the image={on_image}, \
             expected {allowed}",
            g.name()
        );
    }
}

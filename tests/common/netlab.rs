//! A network lab on one machine: N "hosts", each a network namespace with one etcd member (and,
//! when a test starts one, one sharedisk daemon), joined by veth pairs to a bridge in a switch
//! namespace. Addresses 10.77.0.K/24 exist only inside these namespaces.
//!
//! Faults: a host's link down (both directions: its switch port goes down, so packets to and from
//! it vanish without an error), one-way drops (nftables netdev rules on the host's uplink, silent
//! like a lossy network; its loopback traffic, e.g. a daemon talking to its local etcd member,
//! still flows), SIGSTOP/SIGCONT
//! and SIGKILL/restart of an etcd member or a daemon, every member restored from an `etcdctl
//! snapshot save` ([`NetLab::restore_etcd`]). Besides each host's own daemon, extra daemons (e.g.
//! another incarnation of a node, with its own state_dir) run in any host's namespace
//! ([`NetLab::start_extra_daemon`]).
//!
//! Namespace names carry the test process's pid and a counter, so several labs can exist at once;
//! everything is removed on drop (also on panic, when the logs are printed first), and namespaces
//! of earlier runs whose process is gone are removed when a lab starts. Needs root, `ip`, `nft`
//! (Debian's nftables), `etcd` and `etcdctl` (etcd-server, etcd-client).
//!
//! The lab's directory (logs, etcd data, the shared image) is under /var/tmp, not /tmp: the daemon
//! opens the image with O_DIRECT in cluster mode and /tmp may be a tmpfs, which refuses O_DIRECT.
//! `SHAREDISK_LAB_KEEP=1` keeps the directory after the lab ends.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Every lab namespace starts with this; see [`clean_stale`].
pub const PREFIX: &str = "sdlab";
/// The uplink of each host namespace.
pub const UPLINK: &str = "eth0";
const BRIDGE: &str = "br0";
/// etcd's `--election-timeout` in the lab, milliseconds (heartbeats every 50 ms). Followers
/// that lose the leader wait one to two of these before they elect another.
pub const ELECTION_TIMEOUT_MS: u64 = 500;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Host `k`'s address (1-based).
pub fn addr(k: usize) -> String {
    format!("10.77.0.{k}")
}

pub fn client_url(k: usize) -> String {
    format!("http://{}:2379", addr(k))
}

pub fn peer_url(k: usize) -> String {
    format!("http://{}:2380", addr(k))
}

/// Runs a command to completion; panics with its output unless it succeeds.
#[track_caller]
fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ip() -> Command {
    Command::new("ip")
}

/// A command that runs inside network namespace `ns` (setns(2) in the child before exec, so the
/// child's pid is the program's own: signals reach it directly).
pub fn netns_command(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let path = CString::new(format!("/run/netns/{ns}")).unwrap();
    let mut cmd = Command::new(program);
    // SAFETY: the hook only makes async-signal-safe syscalls (open, setns, close) on memory
    // prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let r = libc::setns(fd, libc::CLONE_NEWNET);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if r != 0 {
                return Err(err);
            }
            Ok(())
        });
    }
    cmd
}

fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes lab namespaces left by test processes that are gone (a crash, a SIGKILL): kills the
/// processes still inside them (their etcd members and daemons), then deletes them.
pub fn clean_stale() {
    let out = run(ip().args(["netns", "list"]));
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if pid == std::process::id() as i32 || pid_alive(pid) {
            continue;
        }
        if let Ok(o) = ip().args(["netns", "pids", name]).output() {
            for p in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                if let Ok(p) = p.parse::<i32>() {
                    // SAFETY: kill(2) of a process left in a namespace of a dead lab.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
            }
        }
        // Another lab starting at the same time may have removed it already.
        let _ = ip()
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Sends `sig` to `pid`.
fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on the pid of a child we own and have not reaped.
    let r = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(
        r,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// SIGKILL (after SIGCONT, harmless) and reap.
fn kill_child(c: &mut Child) {
    let _ = c.kill();
    let _ = c.wait();
}

/// The last `lines` lines of a log file.
pub fn tail(path: &Path, lines: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Settings of a daemon's `[cluster]` section (and its image size).
#[derive(Clone, Debug)]
pub struct ClusterOpts {
    pub disk_id: String,
    pub size: String,
    pub lease_ms: u64,
    pub max_io_ms: u64,
    pub hold_ms: u64,
    pub drift: f64,
    /// `budget_ms`; the daemon's default when None.
    pub budget_ms: Option<u64>,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        ClusterOpts {
            disk_id: "lab-disk".into(),
            size: "64M".into(),
            lease_ms: 1000,
            max_io_ms: 500,
            hold_ms: 2000,
            drift: 0.01,
            budget_ms: None,
        }
    }
}

impl ClusterOpts {
    /// How long after a commit a PREEMPT may wait for a member that does not acknowledge: its
    /// lease surely ran out, and its longest I/O ended.
    /// The daemon's wait bound (`ClusterConfig::wait_bound`): V(1+ε)/(1−ε) + D_io.
    pub fn fence_bound(&self) -> Duration {
        Duration::from_secs_f64(
            self.lease_ms as f64 * (1.0 + self.drift) / (1.0 - self.drift) / 1000.0
                + self.max_io_ms as f64 / 1000.0,
        )
    }

    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }

    pub fn hold(&self) -> Duration {
        Duration::from_millis(self.hold_ms)
    }
}

/// A daemon configuration written for one host.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub host: usize,
    pub path: PathBuf,
    pub socket_dir: PathBuf,
    pub control: PathBuf,
    pub guests: Vec<String>,
    pub opts: ClusterOpts,
}

impl DaemonConfig {
    /// The naming of `sharedisk::config::socket_path`.
    pub fn blk(&self, guest: &str) -> PathBuf {
        self.socket_dir.join(format!("{guest}-blk.sock"))
    }

    pub fn scsi(&self, guest: &str) -> PathBuf {
        self.socket_dir.join(format!("{guest}-scsi.sock"))
    }

    pub fn node(&self) -> String {
        format!("h{}", self.host)
    }
}

struct DaemonSlot {
    /// The host whose namespace it runs in (its node name may be another host's).
    ns: usize,
    child: Option<Child>,
    config: DaemonConfig,
    log: PathBuf,
    env: Vec<(String, String)>,
}

pub struct NetLab {
    /// The namespace prefix of this lab: `sdlab<pid>-<counter>`.
    pub name: String,
    pub n: usize,
    dir: Option<tempfile::TempDir>,
    etcd: Vec<Option<Child>>,
    daemons: Vec<Option<DaemonSlot>>,
    namespaces: Vec<String>,
}

impl NetLab {
    /// A lab of 3 hosts with a healthy 3-member etcd cluster.
    pub fn new() -> NetLab {
        Self::with_hosts(3)
    }

    /// A lab of `n` hosts (1..=250) with a healthy `n`-member etcd cluster.
    pub fn with_hosts(n: usize) -> NetLab {
        assert!((1..=250).contains(&n));
        clean_stale();
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        std::fs::create_dir_all("/var/tmp").unwrap();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}."))
            .tempdir_in("/var/tmp")
            .unwrap();
        let mut lab = NetLab {
            name,
            n,
            dir: Some(dir),
            etcd: (0..n).map(|_| None).collect(),
            daemons: (0..n).map(|_| None).collect(),
            namespaces: Vec::new(),
        };
        lab.check_o_direct();
        lab.build_network();
        for k in 1..=n {
            lab.spawn_etcd(k);
        }
        lab.wait_healthy(Duration::from_secs(30));
        lab
    }

    pub fn dir(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    /// The image every host's daemon serves (one file: namespaces do not isolate mounts).
    pub fn image(&self) -> PathBuf {
        self.dir().join("disk.img")
    }

    pub fn switch_ns(&self) -> String {
        format!("{}-sw", self.name)
    }

    pub fn host_ns(&self, k: usize) -> String {
        assert!((1..=self.n).contains(&k), "host {k} of {}", self.n);
        format!("{}-h{k}", self.name)
    }

    fn check_o_direct(&self) {
        let probe = self.dir().join("o_direct.probe");
        let r = OpenOptions::new()
            .create(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&probe);
        assert!(
            r.is_ok(),
            "{} does not support O_DIRECT ({:?}); the cluster daemon needs it",
            self.dir().display(),
            r.err()
        );
        let _ = std::fs::remove_file(probe);
    }

    fn add_ns(&mut self, ns: &str) {
        run(ip().args(["netns", "add", ns]));
        self.namespaces.push(ns.to_string());
        run(ip().args(["-n", ns, "link", "set", "lo", "up"]));
    }

    fn build_network(&mut self) {
        let sw = self.switch_ns();
        self.add_ns(&sw);
        run(ip().args(["-n", &sw, "link", "add", BRIDGE, "type", "bridge"]));
        run(ip().args(["-n", &sw, "link", "set", BRIDGE, "up"]));
        for k in 1..=self.n {
            let h = self.host_ns(k);
            self.add_ns(&h);
            let port = format!("p{k}");
            run(ip().args([
                "link", "add", "name", UPLINK, "netns", &h, "type", "veth", "peer", "name", &port,
                "netns", &sw,
            ]));
            run(ip().args(["-n", &sw, "link", "set", &port, "master", BRIDGE]));
            run(ip().args(["-n", &sw, "link", "set", &port, "up"]));
            run(ip().args([
                "-n",
                &h,
                "addr",
                "add",
                &format!("{}/24", addr(k)),
                "dev",
                UPLINK,
            ]));
            run(ip().args(["-n", &h, "link", "set", UPLINK, "up"]));
            // One table per host for the one-way drops, on the uplink's egress and ingress
            // hooks: a drop there is silent (a drop on the output hook would fail the sender's
            // send with EPERM, which a real network never does). The chains stay empty while no
            // drop is on.
            let script = format!(
                "table netdev netlab {{\n\
                 chain out {{ type filter hook egress device {UPLINK} priority 0; policy accept; }}\n\
                 chain in {{ type filter hook ingress device {UPLINK} priority 0; policy accept; }}\n\
                 }}\n"
            );
            let path = self.dir().join(format!("nft-h{k}.conf"));
            std::fs::write(&path, script).unwrap();
            run(self.exec(k, "nft").arg("-f").arg(&path));
        }
    }

    /// A command that runs inside host `k`'s namespace.
    pub fn exec(&self, k: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        netns_command(&self.host_ns(k), program)
    }

    // ---- etcd ----

    pub fn etcd_endpoints(&self) -> Vec<String> {
        (1..=self.n).map(client_url).collect()
    }

    pub fn etcd_log(&self, k: usize) -> PathBuf {
        self.dir().join(format!("etcd{k}.log"))
    }

    fn spawn_etcd(&mut self, k: usize) {
        assert!(self.etcd[k - 1].is_none(), "etcd {k} runs already");
        let cluster: Vec<String> = (1..=self.n)
            .map(|i| format!("e{i}={}", peer_url(i)))
            .collect();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.etcd_log(k))
            .unwrap();
        // With a data directory from an earlier run, etcd ignores the --initial-* flags.
        let child = self
            .exec(k, "etcd")
            .args(["--name", &format!("e{k}")])
            .arg("--data-dir")
            .arg(self.dir().join(format!("etcd{k}.data")))
            .args(["--listen-client-urls", &client_url(k)])
            .args(["--advertise-client-urls", &client_url(k)])
            .args(["--listen-peer-urls", &peer_url(k)])
            .args(["--initial-advertise-peer-urls", &peer_url(k)])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.name])
            .args(["--heartbeat-interval", "50"])
            .args(["--election-timeout", &ELECTION_TIMEOUT_MS.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.etcd[k - 1] = Some(child);
    }

    /// `etcdctl` (API v3) run inside host `from`'s namespace against `endpoints`, with short
    /// timeouts.
    pub fn etcdctl(&self, from: usize, endpoints: &[String]) -> Command {
        let mut c = self.exec(from, "etcdctl");
        c.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .args(["--dial-timeout=1s", "--command-timeout=2s"]);
        c
    }

    /// Whether member `k` answers a health check (a linearizable read: it needs a quorum),
    /// asked from its own host.
    pub fn member_healthy(&self, k: usize) -> bool {
        self.etcdctl(k, &[client_url(k)])
            .args(["endpoint", "health"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// Whether host `from` can reach member `to`'s client port (a health check sent across the
    /// network).
    pub fn reaches(&self, from: usize, to: usize) -> bool {
        self.etcdctl(from, &[client_url(to)])
            .args(["endpoint", "status"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// Waits until every running (not stopped) member is healthy.
    #[track_caller]
    pub fn wait_healthy(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let sick: Vec<usize> = (1..=self.n)
                .filter(|&k| self.etcd[k - 1].is_some() && !self.member_healthy(k))
                .collect();
            if sick.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "etcd members {sick:?} not healthy after {timeout:?}\n{}",
                    self.logs_summary()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `endpoint status` of member `k`, asked from its own host: (its member id, the leader it
    /// knows, raft term).
    pub fn member_status(&self, k: usize) -> Option<(u64, u64, u64)> {
        let o = self
            .etcdctl(k, &[client_url(k)])
            .args(["endpoint", "status", "-w", "json"])
            .output()
            .ok()?;
        if !o.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&o.stdout).ok()?;
        let st = &v[0]["Status"];
        Some((
            st["header"]["member_id"].as_u64()?,
            st["leader"].as_u64()?,
            st["raftTerm"].as_u64()?,
        ))
    }

    /// The host whose member leads, as the members that answer see it (the newest term wins);
    /// waits up to 10 s for one.
    #[track_caller]
    pub fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let st: Vec<(usize, (u64, u64, u64))> = (1..=self.n)
                .filter(|&k| self.etcd[k - 1].is_some())
                .filter_map(|k| self.member_status(k).map(|s| (k, s)))
                .collect();
            if let Some((_, (_, leader, _))) = st.iter().max_by_key(|(_, s)| s.2) {
                if let Some((k, _)) = st.iter().find(|(_, s)| s.0 == *leader) {
                    return *k;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no etcd leader: {st:?}\n{}",
                self.logs_summary()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn etcd_pid(&self, k: usize) -> u32 {
        self.etcd[k - 1]
            .as_ref()
            .unwrap_or_else(|| panic!("etcd {k} is not running"))
            .id()
    }

    /// SIGSTOP of member `k`.
    pub fn stop_etcd(&self, k: usize) {
        signal(self.etcd_pid(k), libc::SIGSTOP);
    }

    /// SIGCONT of member `k`.
    pub fn cont_etcd(&self, k: usize) {
        signal(self.etcd_pid(k), libc::SIGCONT);
    }

    /// SIGKILL of member `k`; its data directory stays.
    pub fn kill_etcd(&mut self, k: usize) {
        if let Some(mut c) = self.etcd[k - 1].take() {
            kill_child(&mut c);
        }
    }

    /// Starts member `k` again on its data directory (after [`NetLab::kill_etcd`]).
    pub fn restart_etcd(&mut self, k: usize) {
        self.kill_etcd(k);
        self.spawn_etcd(k);
    }

    /// `etcdctl snapshot save` of member `k`'s keyspace into `path`, asked from host `k`.
    #[track_caller]
    pub fn snapshot_save(&self, k: usize, path: &Path) {
        let _ = std::fs::remove_file(path);
        let mut c = self.etcdctl(k, &[client_url(k)]);
        run(c.args(["snapshot", "save"]).arg(path));
    }

    /// Every member restored from `snapshot`, as an operator restores a cluster: all members
    /// stopped (SIGKILL), `etcdctl snapshot restore` into fresh data directories with the same
    /// member names and peer URLs and a new cluster token (`token`), all started again.
    /// Returns once they are healthy.
    #[track_caller]
    pub fn restore_etcd(&mut self, snapshot: &Path, token: &str) {
        for k in 1..=self.n {
            self.kill_etcd(k);
        }
        let cluster: Vec<String> = (1..=self.n)
            .map(|i| format!("e{i}={}", peer_url(i)))
            .collect();
        for k in 1..=self.n {
            let data = self.dir().join(format!("etcd{k}.data"));
            let _ = std::fs::remove_dir_all(&data);
            run(Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["snapshot", "restore"])
                .arg(snapshot)
                .args(["--name", &format!("e{k}")])
                .args(["--initial-cluster", &cluster.join(",")])
                .args(["--initial-cluster-token", token])
                .args(["--initial-advertise-peer-urls", &peer_url(k)])
                .arg("--data-dir")
                .arg(&data));
        }
        for k in 1..=self.n {
            self.spawn_etcd(k);
        }
        self.wait_healthy(Duration::from_secs(30));
    }

    // ---- the network ----

    /// Host `k`'s switch port down: nothing passes to or from it, without an error.
    pub fn link_down(&self, k: usize) {
        self.set_port(k, "down");
    }

    pub fn link_up(&self, k: usize) {
        self.set_port(k, "up");
    }

    fn set_port(&self, k: usize, state: &str) {
        let port = format!("p{k}");
        run(ip().args(["-n", &self.switch_ns(), "link", "set", &port, state]));
    }

    fn drop_rule(&self, k: usize, chain: &str, on: bool) {
        if on {
            // IP only: ARP still flows, so the other direction keeps working.
            run(self.exec(k, "nft").args([
                "add", "rule", "netdev", "netlab", chain, "meta", "protocol", "{", "ip", ",",
                "ip6", "}", "drop",
            ]));
        } else {
            run(self
                .exec(k, "nft")
                .args(["flush", "chain", "netdev", "netlab", chain]));
        }
    }

    /// Silently drops every IP packet host `k` sends to the network (its loopback traffic still
    /// flows).
    pub fn drop_outgoing(&self, k: usize, on: bool) {
        self.drop_rule(k, "out", on);
    }

    /// Silently drops every IP packet host `k` receives from the network.
    pub fn drop_incoming(&self, k: usize, on: bool) {
        self.drop_rule(k, "in", on);
    }

    /// Runs `f` on a thread that joined host `k`'s network namespace (setns(2) moves only the
    /// calling thread): sockets it creates live in that namespace, also after it returns.
    pub fn in_netns<T: Send + 'static>(
        &self,
        k: usize,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let path = format!("/run/netns/{}", self.host_ns(k));
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            // SAFETY: setns(2) of this thread into a namespace file we opened.
            let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    }

    /// A UDP socket bound to host `k`'s address and `port`, with a short read timeout.
    pub fn udp_socket(&self, k: usize, port: u16) -> UdpSocket {
        let a = addr(k);
        let s = self.in_netns(k, move || UdpSocket::bind((a.as_str(), port)).unwrap());
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        s
    }

    /// Packets host `k`'s uplink received and sent so far (device counters).
    pub fn uplink_packets(&self, k: usize) -> (u64, u64) {
        let o = run(ip().args(["-n", &self.host_ns(k), "-s", "-j", "link", "show", UPLINK]));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        let s = &v[0]["stats64"];
        (
            s["rx"]["packets"].as_u64().unwrap(),
            s["tx"]["packets"].as_u64().unwrap(),
        )
    }

    /// A switch for host `k`'s port that flips it in microseconds (an ioctl on a socket in the
    /// switch's namespace), for faults timed inside one request; [`NetLab::link_down`] runs
    /// `ip`, which takes milliseconds.
    pub fn port_switch(&self, k: usize) -> PortSwitch {
        let path = format!("/run/netns/{}", self.switch_ns());
        let socket = std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            // SAFETY: setns(2) of this thread into a namespace file we opened.
            let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
            UdpSocket::bind("0.0.0.0:0").unwrap()
        })
        .join()
        .unwrap();
        PortSwitch {
            socket,
            port: format!("p{k}"),
        }
    }

    // ---- daemons ----

    /// Writes host `k`'s daemon configuration serving `guests` on the shared image.
    pub fn daemon_config(&self, k: usize, guests: &[&str], opts: &ClusterOpts) -> DaemonConfig {
        self.daemon_config_in(&format!("h{k}"), k, guests, opts)
    }

    /// Like [`NetLab::daemon_config`], in the lab's directory `dir` (its state_dir, sockets and
    /// control socket): another incarnation of node `h{k}`, as if on another machine.
    pub fn daemon_config_in(
        &self,
        dir: &str,
        k: usize,
        guests: &[&str],
        opts: &ClusterOpts,
    ) -> DaemonConfig {
        let hdir = self.dir().join(dir);
        std::fs::create_dir_all(&hdir).unwrap();
        let socket_dir = hdir.join("sock");
        let control = hdir.join("control.sock");
        let etcd: Vec<String> = self
            .etcd_endpoints()
            .iter()
            .map(|e| format!("{e:?}"))
            .collect();
        let mut toml = format!(
            "[image]\npath = {:?}\nsize = {:?}\n\n[server]\nsocket_dir = {:?}\ncontrol_socket = {:?}\n\n",
            self.image(),
            opts.size,
            socket_dir,
            control
        );
        for g in guests {
            toml += &format!("[[guest]]\nname = {g:?}\n\n");
        }
        toml += &format!(
            "[cluster]\netcd = [{}]\ninsecure = true\nnode = \"h{k}\"\ndisk_id = {:?}\nlease_ms = {}\n\
             max_io_ms = {}\nhold_ms = {}\ndrift = {}\nstate_dir = {:?}\n",
            etcd.join(", "),
            opts.disk_id,
            opts.lease_ms,
            opts.max_io_ms,
            opts.hold_ms,
            opts.drift,
            hdir
        );
        if let Some(b) = opts.budget_ms {
            toml += &format!("budget_ms = {b}\n");
        }
        let path = hdir.join("sharedisk.toml");
        std::fs::write(&path, toml).unwrap();
        DaemonConfig {
            host: k,
            path,
            socket_dir,
            control,
            guests: guests.iter().map(|g| g.to_string()).collect(),
            opts: opts.clone(),
        }
    }

    pub fn daemon_log(&self, k: usize) -> PathBuf {
        self.dir().join(format!("daemon-h{k}.log"))
    }

    /// Starts `sharedisk serve --config` inside host `k` and waits for its sockets; returns its
    /// pid.
    #[track_caller]
    pub fn start_daemon(&mut self, config: &DaemonConfig) -> u32 {
        self.start_daemon_env(config, &[])
    }

    /// Like [`NetLab::start_daemon`], with `env` added to the daemon's environment.
    #[track_caller]
    pub fn start_daemon_env(&mut self, config: &DaemonConfig, env: &[(&str, &str)]) -> u32 {
        let k = config.host;
        if let Some(slot) = &self.daemons[k - 1] {
            assert!(slot.child.is_none(), "a daemon runs on host {k} already");
        }
        self.daemons[k - 1] = Some(DaemonSlot {
            ns: k,
            child: None,
            config: config.clone(),
            log: self.daemon_log(k),
            env: env
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        });
        self.spawn_daemon(k - 1)
    }

    /// Starts another daemon (`config`, e.g. from [`NetLab::daemon_config_in`]) inside host
    /// `ns`'s namespace, beside the hosts' own; returns its slot for
    /// [`NetLab::kill_extra_daemon`]. Its log is `daemon-x<slot>.log`.
    #[track_caller]
    pub fn start_extra_daemon(
        &mut self,
        ns: usize,
        config: &DaemonConfig,
        env: &[(&str, &str)],
    ) -> usize {
        let i = self.daemons.len();
        self.daemons.push(Some(DaemonSlot {
            ns,
            child: None,
            config: config.clone(),
            log: self.dir().join(format!("daemon-x{i}.log")),
            env: env
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        }));
        self.spawn_daemon(i);
        i
    }

    /// SIGKILL of the daemon in `slot` (from [`NetLab::start_extra_daemon`]), reaped.
    pub fn kill_extra_daemon(&mut self, slot: usize) {
        if let Some(mut c) = self.daemons[slot].as_mut().and_then(|s| s.child.take()) {
            kill_child(&mut c);
        }
    }

    /// Slot `i` (host `i + 1`'s daemon, or an extra one) spawned and waited for.
    #[track_caller]
    fn spawn_daemon(&mut self, i: usize) -> u32 {
        self.try_spawn_daemon(i)
            .unwrap_or_else(|why| panic!("{why}"))
    }

    /// Starts host `i + 1`'s daemon and waits for its sockets; `Err` (with its log's tail) when
    /// it exits first.
    fn try_spawn_daemon(&mut self, i: usize) -> Result<u32, String> {
        let k = i + 1;
        let cmd = {
            let slot = self.daemons[i].as_ref().unwrap();
            for g in &slot.config.guests {
                let _ = std::fs::remove_file(slot.config.blk(g));
                let _ = std::fs::remove_file(slot.config.scsi(g));
            }
            let _ = std::fs::remove_file(&slot.config.control);
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&slot.log)
                .unwrap();
            let mut cmd = self.exec(slot.ns, env!("CARGO_BIN_EXE_sharedisk"));
            cmd.arg("serve")
                .arg("--config")
                .arg(&slot.config.path)
                .env(
                    "RUST_LOG",
                    std::env::var("SHAREDISK_DAEMON_LOG").unwrap_or_else(|_| "info".into()),
                )
                .envs(slot.env.iter().map(|(a, b)| (a, b)))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log);
            cmd
        };
        let mut cmd = cmd;
        let child = cmd.spawn().expect("spawn sharedisk");
        let pid = child.id();
        self.daemons[i].as_mut().unwrap().child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let slot = self.daemons[i].as_mut().unwrap();
            let c = &slot.config;
            if c.guests
                .iter()
                .all(|g| c.blk(g).exists() && c.scsi(g).exists())
                && c.control.exists()
            {
                return Ok(pid);
            }
            if let Some(st) = slot.child.as_mut().unwrap().try_wait().unwrap() {
                slot.child = None;
                return Err(format!(
                    "daemon on h{k} exited with {st}:\n{}",
                    tail(&slot.log, 80)
                ));
            }
            assert!(
                Instant::now() < deadline,
                "daemon sockets on h{k} never appeared:\n{}",
                tail(&slot.log, 80)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn daemon_config_of(&self, k: usize) -> &DaemonConfig {
        &self.daemons[k - 1]
            .as_ref()
            .unwrap_or_else(|| panic!("no daemon on h{k}"))
            .config
    }

    pub fn daemon_pid(&self, k: usize) -> Option<u32> {
        self.daemons[k - 1]
            .as_ref()
            .and_then(|s| s.child.as_ref())
            .map(|c| c.id())
    }

    fn daemon_pid_running(&self, k: usize) -> u32 {
        self.daemon_pid(k)
            .unwrap_or_else(|| panic!("no daemon runs on h{k}"))
    }

    /// SIGSTOP of host `k`'s daemon.
    pub fn stop_daemon(&self, k: usize) {
        signal(self.daemon_pid_running(k), libc::SIGSTOP);
    }

    /// SIGCONT of host `k`'s daemon.
    pub fn cont_daemon(&self, k: usize) {
        signal(self.daemon_pid_running(k), libc::SIGCONT);
    }

    /// SIGKILL of host `k`'s daemon (a crash), reaped.
    pub fn kill_daemon(&mut self, k: usize) {
        if let Some(slot) = self.daemons[k - 1].as_mut() {
            if let Some(mut c) = slot.child.take() {
                kill_child(&mut c);
            }
        }
    }

    /// SIGTERM of host `k`'s daemon; it must exit 0 within 20 s.
    #[track_caller]
    pub fn term_daemon(&mut self, k: usize) {
        let slot = self.daemons[k - 1].as_mut().expect("no daemon");
        let Some(mut c) = slot.child.take() else {
            return;
        };
        signal(c.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                assert!(
                    st.success(),
                    "daemon h{k} exit status {st}:\n{}",
                    tail(&slot.log, 80)
                );
                return;
            }
            if Instant::now() > deadline {
                kill_child(&mut c);
                panic!(
                    "daemon h{k} did not stop on SIGTERM:\n{}",
                    tail(&slot.log, 80)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Host `k`'s daemon killed (if it runs) and started again with the same configuration.
    #[track_caller]
    pub fn restart_daemon(&mut self, k: usize) -> u32 {
        self.kill_daemon(k);
        self.spawn_daemon(k - 1)
    }

    /// Like [`NetLab::restart_daemon`], but a daemon that exits at start is an answer, not a
    /// failure: `Err` holds its log's tail.
    pub fn try_restart_daemon(&mut self, k: usize) -> Result<u32, String> {
        self.kill_daemon(k);
        self.try_spawn_daemon(k - 1)
    }

    /// Whether host `k`'s daemon is still running (it may have exited on its own).
    pub fn daemon_running(&mut self, k: usize) -> bool {
        let Some(slot) = self.daemons[k - 1].as_mut() else {
            return false;
        };
        match slot.child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// The daemon log of host `k`.
    pub fn daemon_log_text(&self, k: usize) -> String {
        std::fs::read_to_string(self.daemon_log(k)).unwrap_or_default()
    }

    /// The tail of every etcd and daemon log.
    pub fn logs_summary(&self) -> String {
        let mut s = format!("== lab {} in {}\n", self.name, self.dir().display());
        for k in 1..=self.n {
            s += &format!(
                "== etcd e{k} ({}):\n{}\n",
                self.etcd_log(k).display(),
                tail(&self.etcd_log(k), 15)
            );
        }
        for slot in self.daemons.iter().flatten() {
            if slot.log.exists() {
                s += &format!(
                    "== daemon {} in h{}'s namespace ({}):\n{}\n",
                    slot.config.node(),
                    slot.ns,
                    slot.log.display(),
                    tail(&slot.log, 60)
                );
            }
        }
        s
    }
}

impl Default for NetLab {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            eprintln!("{}", self.logs_summary());
        }
        for slot in self.daemons.iter_mut().flatten() {
            if let Some(mut c) = slot.child.take() {
                kill_child(&mut c);
            }
        }
        for c in self.etcd.iter_mut() {
            if let Some(mut c) = c.take() {
                kill_child(&mut c);
            }
        }
        for ns in self.namespaces.iter().rev() {
            let _ = ip().args(["netns", "del", ns]).status();
        }
        if let Some(dir) = self.dir.take() {
            if panicking || std::env::var_os("SHAREDISK_LAB_KEEP").is_some() {
                let kept = dir.keep();
                eprintln!("lab directory kept: {}", kept.display());
            }
        }
    }
}

/// See [`NetLab::port_switch`].
pub struct PortSwitch {
    socket: UdpSocket,
    port: String,
}

impl PortSwitch {
    /// Sets the port up or down (IFF_UP), as `ip link set pK up|down` does.
    pub fn set(&self, up: bool) {
        // SAFETY: ifreq is plain data; zeroed is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in req.ifr_name.iter_mut().zip(self.port.bytes()) {
            *d = s as libc::c_char;
        }
        let fd = self.socket.as_raw_fd();
        // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write `req`, which lives across the calls.
        unsafe {
            assert_eq!(
                libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req),
                0,
                "SIOCGIFFLAGS"
            );
            let flags = &mut req.ifr_ifru.ifru_flags;
            if up {
                *flags |= libc::IFF_UP as libc::c_short;
            } else {
                *flags &= !(libc::IFF_UP as libc::c_short);
            }
            assert_eq!(
                libc::ioctl(fd, libc::SIOCSIFFLAGS, &req),
                0,
                "SIOCSIFFLAGS {}: {}",
                self.port,
                std::io::Error::last_os_error()
            );
        }
    }
}

//! A real etcd (Debian's etcd-server) on loopback, and sharedisk daemons in cluster mode
//! around it, for the cluster-mode tests.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (closed again; the server binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A one-member etcd on 127.0.0.1, killed on drop.
pub struct Etcd {
    child: Child,
    pub url: String,
}

impl Etcd {
    pub fn start(dir: &Path) -> Etcd {
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.join("etcd.log")).unwrap();
        let child = Command::new("etcd")
            .args(["--name", "e1", "--data-dir"])
            .arg(dir.join("etcd"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("e1={peer_url}")])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd runs (Debian's etcd-server; tests/run.sh installs it)");
        let e = Etcd { child, url };
        let end = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&e.url[7..]).is_err() {
            assert!(Instant::now() < end, "etcd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        e
    }

    /// The client URLs, for [`ClusterDaemon::start`].
    pub fn endpoints(&self) -> Vec<String> {
        vec![self.url.clone()]
    }

    /// Sends `sig` (`-STOP`, `-CONT`, ...) to etcd.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Timing of the test clusters: short, so that partitions end quickly.
pub struct Timing {
    pub lease_ms: u64,
    pub max_io_ms: u64,
    pub hold_ms: u64,
    pub budget_ms: u64,
}

pub const FAST: Timing = Timing {
    lease_ms: 600,
    max_io_ms: 300,
    hold_ms: 400,
    budget_ms: 5000,
};

/// A `sharedisk serve --config` process in cluster mode: node `node` serving `guests` from
/// `dir/disk.img` (created with 64 MiB if missing), sockets in `dir/<node>/`, its log in
/// `dir/<node>.log`. Returns once its guests' sockets exist.
pub struct ClusterDaemon {
    pub child: Child,
    pub node: String,
    pub sockets: PathBuf,
    pub log: PathBuf,
}

impl ClusterDaemon {
    pub fn start(
        dir: &Path,
        etcd: &[String],
        node: &str,
        guests: &[&str],
        timing: &Timing,
        env: &[(&str, &str)],
    ) -> ClusterDaemon {
        Self::start_with(dir, etcd, node, guests, timing, env, "")
    }

    /// [`ClusterDaemon::start`] with `cluster_toml` (lines such as `fence_hook = "..."`) added
    /// to its `[cluster]` section.
    pub fn start_with(
        dir: &Path,
        etcd: &[String],
        node: &str,
        guests: &[&str],
        timing: &Timing,
        env: &[(&str, &str)],
        cluster_toml: &str,
    ) -> ClusterDaemon {
        let sockets = dir.join(node);
        let cfg = dir.join(format!("{node}.toml"));
        let mut text = format!(
            "[image]\npath = {:?}\nsize = \"64M\"\n[server]\nsocket_dir = {:?}\n",
            dir.join("disk.img"),
            sockets
        );
        for g in guests {
            text.push_str(&format!("[[guest]]\nname = \"{g}\"\n"));
        }
        text.push_str(&format!(
            "[cluster]\netcd = {etcd:?}\nnode = \"{node}\"\ndisk_id = \"test-disk\"\n\
             lease_ms = {}\nmax_io_ms = {}\nhold_ms = {}\nbudget_ms = {}\nstate_dir = {:?}\n",
            timing.lease_ms,
            timing.max_io_ms,
            timing.hold_ms,
            timing.budget_ms,
            dir.join("state")
        ));
        text.push_str(cluster_toml);
        std::fs::write(&cfg, text).unwrap();
        let log = dir.join(format!("{node}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_sharedisk"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .envs(env.iter().copied())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("info".into()),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut d = ClusterDaemon {
            child,
            node: node.to_string(),
            sockets,
            log,
        };
        let blk: Vec<PathBuf> = guests.iter().map(|g| d.blk(g)).collect();
        let log = d.log.clone();
        let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
        super::process::wait_for_sockets(&mut d.child, &blk, node, log_text);
        d
    }

    pub fn blk(&self, guest: &str) -> PathBuf {
        self.sockets.join(format!("{guest}-blk.sock"))
    }

    pub fn scsi(&self, guest: &str) -> PathBuf {
        self.sockets.join(format!("{guest}-scsi.sock"))
    }

    pub fn control(&self) -> PathBuf {
        self.sockets.join("control.sock")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ClusterDaemon {
    fn drop(&mut self) {
        // SIGTERM: a clean stop leaves the cluster.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `sig` (`-STOP`, `-CONT`, `-KILL`, ...) to `pid`.
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

/// A three-member etcd on loopback ports, each member restartable on its data.
pub struct EtcdCluster {
    dir: PathBuf,
    clients: Vec<u16>,
    peers: Vec<u16>,
    members: Vec<Option<Child>>,
}

impl EtcdCluster {
    pub fn start(dir: &Path, n: usize) -> EtcdCluster {
        let mut c = EtcdCluster {
            dir: dir.to_path_buf(),
            clients: (0..n).map(|_| free_port()).collect(),
            peers: (0..n).map(|_| free_port()).collect(),
            members: (0..n).map(|_| None).collect(),
        };
        for i in 0..n {
            c.spawn(i);
        }
        let end = Instant::now() + Duration::from_secs(30);
        while c.leader().is_none() {
            assert!(Instant::now() < end, "etcd cluster never elected a leader");
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    fn spawn(&mut self, i: usize) {
        let url = |p: u16| format!("http://127.0.0.1:{p}");
        let initial: Vec<String> = self
            .peers
            .iter()
            .enumerate()
            .map(|(j, p)| format!("m{j}={}", url(*p)))
            .collect();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("etcd-m{i}.log")))
            .unwrap();
        let child = Command::new("etcd")
            .args(["--name", &format!("m{i}"), "--data-dir"])
            .arg(self.dir.join(format!("etcd-m{i}")))
            .args(["--listen-client-urls", &url(self.clients[i])])
            .args(["--advertise-client-urls", &url(self.clients[i])])
            .args(["--listen-peer-urls", &url(self.peers[i])])
            .args(["--initial-advertise-peer-urls", &url(self.peers[i])])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd runs (Debian's etcd-server; tests/run.sh installs it)");
        self.members[i] = Some(child);
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.clients
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// The member that leads now, as one of the running members reports it.
    pub fn leader(&self) -> Option<usize> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--command-timeout=1s", "endpoint", "status", "-w", "json"])
            .arg(format!("--endpoints={}", self.endpoints().join(",")))
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        for e in v.as_array()? {
            let id = e["Status"]["header"]["member_id"].as_u64()?;
            if id == e["Status"]["leader"].as_u64()? {
                let ep = e["Endpoint"].as_str()?;
                return self.endpoints().iter().position(|u| u == ep);
            }
        }
        None
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].as_ref().map(Child::id)
    }

    /// SIGKILL of member `i` (its data stays for [`EtcdCluster::restart`]).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self, i: usize) {
        if self.members[i].is_none() {
            self.spawn(i);
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            if let Some(p) = self.pid(i) {
                signal(p, "-CONT");
            }
            self.kill(i);
        }
    }
}

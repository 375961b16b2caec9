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
        Etcd::start_args(dir, "http", &[])
    }

    /// An etcd that speaks TLS only, with the server certificate of `pki`, requires a client
    /// certificate its CA signed (`--client-cert-auth`), and whose simple tokens live
    /// `token_ttl_s` seconds after their last use. Authentication is off until
    /// [`Etcd::enable_auth`].
    pub fn start_tls(dir: &Path, pki: &Pki, token_ttl_s: u32) -> Etcd {
        let p = |n: &str| pki.dir.join(n).to_str().unwrap().to_string();
        let ttl = token_ttl_s.to_string();
        let args = [
            "--client-cert-auth",
            "--trusted-ca-file",
            &p("ca.pem"),
            "--cert-file",
            &p("server.pem"),
            "--key-file",
            &p("server.key"),
            "--auth-token",
            "simple",
            "--auth-token-ttl",
            &ttl,
        ];
        Etcd::start_args(dir, "https", &args)
    }

    fn start_args(dir: &Path, scheme: &str, extra: &[&str]) -> Etcd {
        let (client, peer) = (free_port(), free_port());
        let url = format!("{scheme}://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.join("etcd.log")).unwrap();
        let child = Command::new("etcd")
            .args(extra)
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
        let addr = format!("127.0.0.1:{client}");
        while std::net::TcpStream::connect(&addr).is_err() {
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

/// A CA, etcd's server certificate for 127.0.0.1, and client certificates, made with the
/// `openssl` CLI in `dir`: keys mode 0600.
pub struct Pki {
    pub dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the openssl CLI runs (images/install-deps.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let pki = Pki {
            dir: dir.to_path_buf(),
        };
        pki.ca("ca");
        pki.ca("other-ca");
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .unwrap();
        pki.sign("ca", "server", "etcd-server", "server.ext");
        pki
    }

    /// A self-signed CA `name` (`name.pem`, `name.key`).
    fn ca(&self, name: &str) {
        let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
        openssl(&self.dir, &["genrsa", "-out", &key, "2048"]);
        let subj = format!("/CN=sharedisk test {name}");
        openssl(
            &self.dir,
            &[
                "req", "-x509", "-new", "-key", &key, "-subj", &subj, "-days", "2", "-out", &pem,
            ],
        );
    }

    /// `name.pem` and `name.key` (mode 0600), common name `cn`, signed by CA `ca`.
    fn sign(&self, ca: &str, name: &str, cn: &str, ext: &str) {
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        openssl(&self.dir, &["genrsa", "-out", &key, "2048"]);
        let subj = format!("/CN={cn}");
        openssl(
            &self.dir,
            &["req", "-new", "-key", &key, "-subj", &subj, "-out", &csr],
        );
        let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_pem,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                ext,
                "-out",
                &pem,
            ],
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::Permissions::from_mode(0o600);
        std::fs::set_permissions(self.dir.join(&key), mode).unwrap();
    }

    /// A client certificate with common name `cn` signed by the CA etcd trusts (`ca`) or by
    /// another (`other-ca`): its (certificate, key) paths.
    pub fn client(&self, ca: &str, cn: &str) -> (PathBuf, PathBuf) {
        let name = format!("{ca}-client-{cn}");
        std::fs::write(self.dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        self.sign(ca, &name, cn, "client.ext");
        (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        )
    }

    /// The `[cluster]` lines of a daemon with the client certificate `(cert, key)`.
    pub fn settings(&self, cert: &(PathBuf, PathBuf)) -> String {
        format!(
            "ca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n",
            self.dir.join("ca.pem"),
            cert.0,
            cert.1
        )
    }
}

impl Etcd {
    /// `etcdctl` on this etcd as `root` (its client certificate's common name), over TLS.
    pub fn etcdctl(&self, pki: &Pki, args: &[&str]) -> std::process::Output {
        let root = pki.dir.join("ca-client-root.pem");
        if !root.exists() {
            pki.client("ca", "root");
        }
        let p = |n: &str| pki.dir.join(n).to_str().unwrap().to_string();
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.url))
            .arg(format!("--cacert={}", p("ca.pem")))
            .arg(format!("--cert={}", p("ca-client-root.pem")))
            .arg(format!("--key={}", p("ca-client-root.key")))
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs `etcdctl args` as root, and panics if it fails.
    pub fn etcdctl_ok(&self, pki: &Pki, args: &[&str]) -> String {
        let out = self.etcdctl(pki, args);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// etcd authentication on: the user `root`, a role per disk in `disks` with readwrite on
    /// `/sharedisk/v1/<disk>/` only, and per `(user, password, disk)` a user with that role
    /// (a password of "" makes a user without one, for client certificates).
    pub fn enable_auth(&self, pki: &Pki, disks: &[&str], users: &[(&str, &str, &str)]) {
        self.etcdctl_ok(pki, &["user", "add", "root:root-password"]);
        for disk in disks {
            let role = format!("sharedisk-{disk}");
            let prefix = format!("/sharedisk/v1/{disk}/");
            self.etcdctl_ok(pki, &["role", "add", &role]);
            self.etcdctl_ok(
                pki,
                &[
                    "role",
                    "grant-permission",
                    "--prefix=true",
                    &role,
                    "readwrite",
                    &prefix,
                ],
            );
        }
        for (user, password, disk) in users {
            if password.is_empty() {
                self.etcdctl_ok(pki, &["user", "add", user, "--no-password"]);
            } else {
                self.etcdctl_ok(pki, &["user", "add", &format!("{user}:{password}")]);
            }
            self.etcdctl_ok(
                pki,
                &["user", "grant-role", user, &format!("sharedisk-{disk}")],
            );
        }
        self.etcdctl_ok(pki, &["auth", "enable"]);
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
        Self::start_with(dir, etcd, node, guests, timing, "insecure = true\n", env)
    }

    /// `dir/<node>.toml`: node `node` serving `guests`, with `security` (the TLS and
    /// authentication lines, or `insecure = true`) and anything else in `[cluster]`.
    pub fn config(
        dir: &Path,
        etcd: &[String],
        node: &str,
        guests: &[&str],
        timing: &Timing,
        security: &str,
    ) -> PathBuf {
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
            "[cluster]\netcd = {etcd:?}\n{security}node = \"{node}\"\ndisk_id = \"test-disk\"\n\
             lease_ms = {}\nmax_io_ms = {}\nhold_ms = {}\nbudget_ms = {}\nstate_dir = {:?}\n",
            timing.lease_ms,
            timing.max_io_ms,
            timing.hold_ms,
            timing.budget_ms,
            dir.join("state")
        ));
        std::fs::write(&cfg, text).unwrap();
        cfg
    }

    /// Like [`ClusterDaemon::start`], with `security` in `[cluster]` (see
    /// [`ClusterDaemon::config`]).
    pub fn start_with(
        dir: &Path,
        etcd: &[String],
        node: &str,
        guests: &[&str],
        timing: &Timing,
        security: &str,
        env: &[(&str, &str)],
    ) -> ClusterDaemon {
        let cfg = Self::config(dir, etcd, node, guests, timing, security);
        Self::start_config(dir, node, &cfg, guests, env)
    }

    /// Starts node `node` with the configuration file `cfg` (see [`ClusterDaemon::config`]),
    /// serving `guests`; returns once their sockets and the control socket exist.
    pub fn start_config(
        dir: &Path,
        node: &str,
        cfg: &Path,
        guests: &[&str],
        env: &[(&str, &str)],
    ) -> ClusterDaemon {
        let sockets = dir.join(node);
        let log = dir.join(format!("{node}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_sharedisk"))
            .args(["serve", "--config"])
            .arg(cfg)
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
        // The guests' sockets are bound before the join; the control socket once it is done.
        let mut blk: Vec<PathBuf> = guests.iter().map(|g| d.blk(g)).collect();
        blk.push(d.control());
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

    /// Waits until the log contains `what`, for up to `within`.
    #[track_caller]
    pub fn wait_log(&self, what: &str, within: Duration) {
        let end = Instant::now() + within;
        while !self.log_text().contains(what) {
            assert!(
                Instant::now() < end,
                "node {} never logged {what:?}",
                self.node
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to 10 s for the process to exit (a failpoint that kills it).
    #[track_caller]
    pub fn wait_exit(&mut self) {
        let end = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < end,
                "{} is still running: {}",
                self.node,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `sharedisk serve --config cfg` as node `node`, expecting it to stop by itself within
    /// 30 s: whether it exited with success, and its log.
    pub fn run_to_exit(dir: &Path, node: &str, cfg: &Path) -> (bool, String) {
        let log = dir.join(format!("{node}.log"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_sharedisk"))
            .args(["serve", "--config"])
            .arg(cfg)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let end = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{node} still runs after 30 s: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (
            status.success(),
            std::fs::read_to_string(&log).unwrap_or_default(),
        )
    }
}

impl Drop for ClusterDaemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- log of node {} ----\n{}", self.node, self.log_text());
        }
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

/// `[cluster]` for a daemon in the test process: node `node` of disk `test-disk` on the plain
/// loopback etcd at `url`, the [`FAST`] timing, its local copy in `state_dir`.
#[cfg(feature = "cluster")]
pub fn loopback_cluster(
    url: &str,
    node: &str,
    state_dir: PathBuf,
) -> sharedisk::pr::cluster::ClusterConfig {
    sharedisk::pr::cluster::ClusterConfig {
        etcd: vec![url.to_string()],
        node: node.into(),
        disk_id: "test-disk".into(),
        prefix: "/sharedisk/v1".into(),
        lease_ms: FAST.lease_ms,
        renew_ms: None,
        drift: 0.01,
        max_io_ms: FAST.max_io_ms,
        hold_ms: FAST.hold_ms,
        budget_ms: FAST.budget_ms,
        fence_hook: None,
        state_dir: Some(state_dir),
        ca_file: None,
        cert_file: None,
        key_file: None,
        user: None,
        password_file: None,
        insecure: true,
    }
}

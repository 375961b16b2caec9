//! The `sharedisk` binary run as a separate process, as a user runs it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct DaemonProcess {
    child: Option<Child>,
    pub dir: PathBuf,
    pub image: PathBuf,
    pub socket_dir: PathBuf,
    pub guests: Vec<String>,
    log: PathBuf,
    /// Extra `serve` arguments (e.g. `--read-only`).
    pub extra: Vec<String>,
    /// Extra environment of the daemon (e.g. `SHAREDISK_FAILPOINT`, its test hooks).
    pub env: Vec<(String, String)>,
}

impl DaemonProcess {
    /// Starts `sharedisk serve` on `dir/disk.img` (created with `size` if missing).
    pub fn start(dir: &Path, guests: &[&str], size: &str) -> Self {
        Self::start_env(dir, guests, size, &[])
    }

    /// Like [`DaemonProcess::start`], with `env` added to the daemon's environment.
    pub fn start_env(dir: &Path, guests: &[&str], size: &str, env: &[(&str, &str)]) -> Self {
        Self::start_full(dir, guests, size, &[], env)
    }

    /// Like [`DaemonProcess::start`], with extra `serve` arguments (e.g. `--config FILE`).
    pub fn start_args(dir: &Path, guests: &[&str], size: &str, extra: &[&str]) -> Self {
        Self::start_full(dir, guests, size, extra, &[])
    }

    /// Starts `sharedisk serve` with extra arguments `extra` and environment `env`.
    pub fn start_full(
        dir: &Path,
        guests: &[&str],
        size: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let owned = |s: &str| s.to_string();
        let mut d = DaemonProcess {
            child: None,
            dir: dir.to_path_buf(),
            image: dir.join("disk.img"),
            socket_dir: dir.join("sock"),
            guests: guests.iter().copied().map(owned).collect(),
            log: dir.join("daemon.log"),
            extra: extra.iter().copied().map(owned).collect(),
            env: env.iter().map(|&(k, v)| (owned(k), owned(v))).collect(),
        };
        d.spawn(Some(size));
        d
    }

    /// The daemon's control socket (the default one, in the socket directory).
    pub fn control(&self) -> PathBuf {
        self.socket_dir.join("control.sock")
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn spawn(&mut self, size: Option<&str>) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sharedisk"));
        cmd.arg("serve")
            .arg("--image")
            .arg(&self.image)
            .arg("--socket-dir")
            .arg(&self.socket_dir)
            .arg("--guests")
            .arg(self.guests.join(","))
            .env(
                "RUST_LOG",
                std::env::var("SHAREDISK_DAEMON_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(size) = size {
            cmd.arg("--size").arg(size);
        }
        cmd.args(&self.extra);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let mut child = cmd.spawn().expect("spawn sharedisk");
        let mut sockets = vec![self.control()];
        for g in &self.guests {
            sockets.extend([self.blk(g), self.scsi(g)]);
        }
        wait_for_sockets(&mut child, &sockets, "daemon", || self.log());
        self.child = Some(child);
    }

    pub fn blk(&self, guest: &str) -> PathBuf {
        self.socket_dir.join(format!("{guest}-blk.sock"))
    }

    pub fn scsi(&self, guest: &str) -> PathBuf {
        self.socket_dir.join(format!("{guest}-scsi.sock"))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails the test if a daemon thread panicked: vhost-user-backend only logs a queue
    /// thread's panic and the daemon keeps serving.
    #[track_caller]
    pub fn assert_no_panic(&self) {
        let log = self.log();
        assert!(!log.contains("panicked"), "a daemon thread panicked: {log}");
    }

    /// SIGTERM, then wait: the daemon must exit 0 and remove its sockets.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        self.assert_no_panic();
        // SAFETY: kill(2) on the pid of a child we own and have not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                assert!(st.success(), "daemon exit status {st}: {}", self.log());
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("daemon did not stop on SIGTERM: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for g in &self.guests {
            assert!(
                !self.blk(g).exists(),
                "{} removed on exit",
                self.blk(g).display()
            );
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn(None);
    }

    /// Waits up to `timeout` for the daemon to exit on its own (a failpoint, a crash).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Ends the daemon with `signal` (SIGKILL: a crash) and reaps it.
    /// A daemon that does not end within 20 s fails the test; one that ends on SIGTERM must exit
    /// cleanly (status 0).
    pub fn kill(&mut self, signal: i32) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the pid of a child we own and have not reaped.
            unsafe { libc::kill(child.id() as i32, signal) };
            let deadline = Instant::now() + Duration::from_secs(20);
            let status = loop {
                if let Some(st) = child.try_wait().unwrap() {
                    break st;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("daemon did not end on signal {signal}: {}", self.log());
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            if signal == libc::SIGTERM {
                assert!(
                    status.success(),
                    "daemon exit status {status}: {}",
                    self.log()
                );
            }
        }
    }

    /// Starts the daemon again after it died. The sockets a killed daemon left behind are
    /// removed first, so that the wait for the new ones means the new daemon listens.
    pub fn respawn(&mut self) {
        assert!(self.child.is_none(), "respawn of a running daemon");
        for g in self.guests.clone() {
            let _ = std::fs::remove_file(self.blk(&g));
            let _ = std::fs::remove_file(self.scsi(&g));
        }
        let _ = std::fs::remove_file(self.control());
        self.spawn(None);
    }
}

/// Waits up to 20 s until every one of `sockets` exists; fails the test, with `log()`, when it
/// does not or when `child` (the daemon called `who`) exits first.
#[track_caller]
pub fn wait_for_sockets(
    child: &mut Child,
    sockets: &[PathBuf],
    who: &str,
    log: impl Fn() -> String,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sockets.iter().all(|s| s.exists()) {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("{who} exited with {st}: {}", log());
        }
        if Instant::now() >= deadline {
            // The caller does not own the child yet: kill it here, or it outlives the test.
            let _ = child.kill();
            let _ = child.wait();
            panic!("{who}: sockets never appeared: {}", log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        // A test that did not stop the daemon itself still stops it cleanly, so that it fails on
        // a daemon panic or a bad exit; after a failure, just kill it.
        if !std::thread::panicking() {
            self.stop();
        } else if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

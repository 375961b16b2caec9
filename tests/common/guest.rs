//! Test-guest harness: boots a QEMU guest (kernel + initramfs from `images/build-guest.sh`)
//! through `qemu-scripts/run-guest.sh` with its serial console on piped stdio, and talks to
//! the line-oriented command agent in the guest's `/init`.
//!
//! Protocol (see `images/init`): after boot the guest prints a line containing `@@READY@@`;
//! then for every line written to its console it runs `sh -c LINE` (stdout+stderr to the
//! console) and prints `@@RC=<status>@@` (at the end of a line: output without a trailing
//! newline ends up on the marker's line).  The line `poweroff` powers the guest off.
//!
//! Everything the guest prints is echoed to stderr as `[name] ...`, every command as
//! `[name] $ cmd`, so CI logs show which guest ran what.
//!
//! Only std is used.  Tests FAIL (panic), never skip, when QEMU or the images are unavailable.
//!
//! Environment knobs: `SHAREDISK_QEMU` (the QEMU binary, default `qemu-system-x86_64` on the
//! PATH), `SHAREDISK_CACHE` (cache root, default `~/.cache/sharedisk`),
//! `SHAREDISK_ACCEL=kvm|tcg`, `SHAREDISK_BOOT_TIMEOUT` / `SHAREDISK_RUN_TIMEOUT` (seconds).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

pub const READY_MARKER: &str = "@@READY@@";
const RC_PREFIX: &str = "@@RC=";
const RC_SUFFIX: &str = "@@";

pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(120);
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_POWEROFF_TIMEOUT: Duration = Duration::from_secs(30);

/// Repository root (where Cargo.toml lives).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Directory holding `vmlinuz` and `initramfs.img`.
pub fn guest_cache_dir() -> PathBuf {
    let root = match std::env::var_os("SHAREDISK_CACHE") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
            PathBuf::from(home).join(".cache/sharedisk")
        }
    };
    root.join("guest")
}

/// The QEMU the guests run on (`$SHAREDISK_QEMU`, the variable `run-guest.sh` reads too), as
/// `qemu-args` sees it.
pub fn qemu_binary() -> String {
    sharedisk::cli::qemu::binary()
        .to_string_lossy()
        .into_owned()
}

/// That QEMU's (major, minor) version.  Panics when it does not run: tests need it.
pub fn qemu_version() -> (u32, u32) {
    static VERSION: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    VERSION
        .get_or_init(sharedisk::cli::qemu::installed_version)
        .unwrap_or_else(|| {
            panic!(
                "`{} --version` does not run: install qemu-system-x86 (images/install-deps.sh) or \
                 point SHAREDISK_QEMU at a QEMU",
                qemu_binary()
            )
        })
}

fn env_secs(var: &str, default: Duration) -> Duration {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(default)
}

/// An image build script (run as `bash SCRIPT DIR`) and what it must leave in DIR.
struct ImageBuild {
    /// What is built, in messages.
    what: &'static str,
    /// The prefix of its timing line.
    tag: &'static str,
    /// The script, from the repository's root.
    script: &'static str,
    /// The files DIR holds afterwards.
    files: &'static [&'static str],
    /// What the script needs, said when it fails.
    needs: &'static str,
}

const TEST_GUEST: ImageBuild = ImageBuild {
    what: "the test guest",
    tag: "guest-images",
    script: "images/build-guest.sh",
    files: &["vmlinuz", "initramfs.img"],
    needs: "it needs apt-get access to install qemu-system-x86, busybox-static, sg3-utils, \
            cpio, kmod, gcc and to download the cloud kernel",
};

const CLUSTER_GUEST: ImageBuild = ImageBuild {
    what: "the cluster guest",
    tag: "cluster-images",
    script: "images/build-cluster-guest.sh",
    files: &["root.img"],
    needs: "it needs root and the Debian mirror for debootstrap and apt-get",
};

impl ImageBuild {
    /// Runs the script into `dir` (a fast no-op when the images are up to date); its output is
    /// inherited so that a slow first build (apt-get, a kernel download) is visible.
    fn run(&self, dir: PathBuf) -> Result<PathBuf, String> {
        let script = repo_root().join(self.script);
        let started = Instant::now();
        let status = Command::new("bash")
            .arg(&script)
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !status.success() {
            return Err(format!(
                "building {} failed: `{} {}` exited with {status} (see its output above; {})",
                self.what,
                script.display(),
                dir.display(),
                self.needs
            ));
        }
        if let Some(f) = self.files.iter().find(|f| !dir.join(f).is_file()) {
            return Err(format!(
                "{} succeeded but {} is missing",
                script.display(),
                dir.join(f).display()
            ));
        }
        let el = started.elapsed();
        if el > Duration::from_secs(2) {
            eprintln!(
                "[{}] built in {:.1}s: {}",
                self.tag,
                el.as_secs_f64(),
                dir.display()
            );
        }
        Ok(dir)
    }
}

/// Runs `images/build-guest.sh` once per process (a fast no-op when the images are up to
/// date) and returns the image directory.  Panics with a clear message when it fails.
pub fn ensure_guest_images() -> PathBuf {
    static RESULT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let res = RESULT.get_or_init(|| TEST_GUEST.run(guest_cache_dir()));
    res.clone().unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `images/build-cluster-guest.sh` once per process (a fast no-op when the image is up to
/// date) and returns its directory. Panics with a clear message when it fails.
pub fn ensure_cluster_images() -> PathBuf {
    static RESULT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let res = RESULT.get_or_init(|| CLUSTER_GUEST.run(guest_cache_dir().with_file_name("cluster")));
    res.clone().unwrap_or_else(|e| panic!("{e}"))
}

/// Options for [`Guest::boot`].
#[derive(Clone, Debug)]
pub struct GuestOpts<'a> {
    /// Guest name: QEMU -name, guest hostname and the `[name]` log prefix.  [A-Za-z0-9_.-]+
    pub name: &'a str,
    /// vhost-user-blk socket (guest /dev/vda).
    pub blk: Option<PathBuf>,
    /// vhost-user-scsi socket (guest /dev/sda).
    pub scsi: Option<PathBuf>,
    /// Guest RAM, also the memfd backend size, e.g. "512M".
    pub memory: &'a str,
    /// Extra QEMU arguments (after `--`).
    pub extra_args: Vec<String>,
    /// Add the chardev reconnect option to the vhost-user sockets.
    pub reconnect: bool,
    /// Let a guest reboot stay inside QEMU (no `-no-reboot`), for [`Guest::reboot`].
    pub allow_reboot: bool,
    /// Extra kernel command line arguments (`run-guest.sh --append`).
    pub kernel_args: Vec<String>,
    /// Boot the cluster guest (Debian 12 with the cluster stack, `images/build-cluster-guest.sh`)
    /// on this private network instead of the small guest.
    pub cluster: Option<ClusterNet>,
}

/// Where a cluster guest sits on the private guest network (`run-guest.sh --cluster`).
#[derive(Clone, Debug)]
pub struct ClusterNet {
    /// Multicast `GROUP:PORT` on the loopback interface shared by the cluster's guests.
    pub net: String,
    pub mac: String,
    /// eth0's `ADDR/PREFIX`.
    pub ip: String,
    /// Every node, `NAME=IP,...` in node id order (`/etc/hosts`, `corosync.conf`).
    pub hosts: String,
    /// File that receives the guest's second serial port (`/dev/ttyS1`), appended to.
    pub ack: Option<PathBuf>,
    /// The root disk: a qcow2 overlay of `root.img` that keeps the guest's writes, which a
    /// migration's destination QEMU opens too (`run-guest.sh --root`); `None`: a private
    /// snapshot.
    pub root: Option<PathBuf>,
}

impl Default for GuestOpts<'static> {
    fn default() -> Self {
        GuestOpts::new("guest")
    }
}

impl<'a> GuestOpts<'a> {
    pub fn new(name: &'a str) -> Self {
        GuestOpts {
            name,
            blk: None,
            scsi: None,
            memory: "512M",
            extra_args: Vec::new(),
            reconnect: false,
            allow_reboot: false,
            kernel_args: Vec::new(),
            cluster: None,
        }
    }
}

enum Msg {
    Line(String),
    Eof,
}

struct Session {
    rx: Receiver<Msg>,
    stdin: Option<ChildStdin>,
    /// Commands that timed out whose `@@RC` marker has not arrived yet: skip that many markers.
    stale: usize,
    eof: bool,
}

/// A running test guest.  Dropping it kills QEMU.
pub struct Guest {
    name: String,
    child: Mutex<Child>,
    exit: Mutex<Option<ExitStatus>>,
    session: Mutex<Session>,
    console: Arc<Mutex<Vec<String>>>,
    qemu_stderr: Arc<Mutex<Vec<String>>>,
    run_timeout: Mutex<Duration>,
    boot_time: Duration,
}

/// `Some((text before the marker, rc))` when the line ends with `@@RC=<n>@@`.
fn parse_rc(line: &str) -> Option<(&str, i32)> {
    let body = line.strip_suffix(RC_SUFFIX)?;
    let pos = body.rfind(RC_PREFIX)?;
    let rc = body[pos + RC_PREFIX.len()..].parse::<i32>().ok()?;
    Some((&body[..pos], rc))
}

fn tail(lines: &[String], n: usize) -> String {
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

impl Guest {
    /// Boots a guest and waits for its ready marker (timeout `SHAREDISK_BOOT_TIMEOUT`,
    /// default 120 s).  Panics (with the console and QEMU stderr) when that fails.
    pub fn boot(opts: GuestOpts<'_>) -> Guest {
        Self::boot_with_timeout(
            opts,
            env_secs("SHAREDISK_BOOT_TIMEOUT", DEFAULT_BOOT_TIMEOUT),
        )
    }

    pub fn boot_with_timeout(opts: GuestOpts<'_>, boot_timeout: Duration) -> Guest {
        let (mut guest, started) = Self::spawn(opts);
        let name = guest.name.clone();
        // Wait for the ready marker.
        let deadline = started + boot_timeout;
        let ready = {
            let mut s = guest.session.lock().unwrap();
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match s.rx.recv_timeout(left) {
                    Ok(Msg::Line(l)) if l.contains(READY_MARKER) => break Ok(()),
                    Ok(Msg::Line(_)) => {}
                    Ok(Msg::Eof) | Err(RecvTimeoutError::Disconnected) => {
                        s.eof = true;
                        break Err("QEMU exited (console EOF) before the guest was ready");
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        break Err("timed out waiting for the guest's ready marker")
                    }
                }
            }
        };
        if let Err(why) = ready {
            guest.kill();
            // Give the stderr reader a moment to collect QEMU's last words.
            thread::sleep(Duration::from_millis(200));
            panic!(
                "[{name}] boot failed: {why} after {:.1}s (exit: {:?})\n--- console (tail) ---\n{}\n--- qemu stderr ---\n{}",
                started.elapsed().as_secs_f64(),
                guest.exit_status(),
                tail(&guest.console.lock().unwrap(), 40),
                tail(&guest.qemu_stderr.lock().unwrap(), 40),
            );
        }
        guest.boot_time = started.elapsed();
        eprintln!("[{name}] ready after {:.2}s", guest.boot_time.as_secs_f64());
        guest
    }

    /// Starts the destination QEMU of a live migration: the same guest's command line with
    /// `-incoming uri` (put it in `opts.extra_args`), which waits for the migration stream
    /// instead of booting. Once the migration completed, the returned `Guest` talks to the
    /// guest's agent, which runs there from then on.
    pub fn start_incoming(opts: GuestOpts<'_>) -> Guest {
        Self::spawn(opts).0
    }

    /// Spawns QEMU through `run-guest.sh` and the threads that read its console and stderr.
    fn spawn(opts: GuestOpts<'_>) -> (Guest, Instant) {
        let cache = match opts.cluster {
            Some(_) => ensure_cluster_images(),
            None => ensure_guest_images(),
        };
        let name = opts.name.to_string();
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)),
            "guest name {name:?} must match [A-Za-z0-9_.-]+"
        );
        let script = repo_root().join("qemu-scripts/run-guest.sh");
        let mut cmd = Command::new("bash");
        cmd.arg(&script)
            .arg("--name")
            .arg(&name)
            .arg("--memory")
            .arg(opts.memory)
            .arg("--serial")
            .arg("stdio")
            .arg("--cache")
            .arg(&cache);
        if let Some(b) = &opts.blk {
            cmd.arg("--blk").arg(b);
        }
        if let Some(s) = &opts.scsi {
            cmd.arg("--scsi").arg(s);
        }
        if opts.reconnect {
            cmd.arg("--reconnect");
        }
        if opts.allow_reboot {
            cmd.arg("--allow-reboot");
        }
        for a in &opts.kernel_args {
            cmd.arg("--append").arg(a);
        }
        if let Some(c) = &opts.cluster {
            cmd.arg("--cluster").args([
                "--net", &c.net, "--mac", &c.mac, "--ip", &c.ip, "--hosts", &c.hosts,
            ]);
            if let Some(ack) = &c.ack {
                cmd.arg("--ack").arg(ack);
            }
            if let Some(root) = &c.root {
                cmd.arg("--root").arg(root);
            }
        }
        if !opts.extra_args.is_empty() {
            cmd.arg("--").args(&opts.extra_args);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (major, minor) = qemu_version();
        eprintln!(
            "[{name}] booting on {} ({major}.{minor}): blk={:?} scsi={:?} memory={} reconnect={} \
             extra={:?}",
            qemu_binary(),
            opts.blk,
            opts.scsi,
            opts.memory,
            opts.reconnect,
            opts.extra_args
        );
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("[{name}] cannot spawn {}: {e}", script.display()));

        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let stdin = child.stdin.take();
        let console = Arc::new(Mutex::new(Vec::new()));
        let qemu_stderr = Arc::new(Mutex::new(Vec::new()));

        let (tx, rx) = mpsc::channel();
        {
            let name = name.clone();
            let console = console.clone();
            thread::Builder::new()
                .name(format!("{name}-console"))
                .spawn(move || {
                    let mut r = BufReader::new(stdout);
                    let mut buf = Vec::new();
                    loop {
                        buf.clear();
                        match r.read_until(b'\n', &mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {
                                while matches!(buf.last(), Some(b'\n') | Some(b'\r')) {
                                    buf.pop();
                                }
                                let line = String::from_utf8_lossy(&buf).replace('\r', "");
                                eprintln!("[{name}] {line}");
                                console.lock().unwrap().push(line.clone());
                                if tx.send(Msg::Line(line)).is_err() {
                                    // Nobody listens any more; keep draining for the log.
                                }
                            }
                        }
                    }
                    let _ = tx.send(Msg::Eof);
                })
                .expect("spawn console reader");
        }
        {
            let name = name.clone();
            let qemu_stderr = qemu_stderr.clone();
            thread::Builder::new()
                .name(format!("{name}-stderr"))
                .spawn(move || {
                    for line in BufReader::new(stderr).lines() {
                        let Ok(line) = line else { break };
                        eprintln!("[{name}] qemu: {line}");
                        qemu_stderr.lock().unwrap().push(line);
                    }
                })
                .expect("spawn stderr reader");
        }

        let guest = Guest {
            name: name.clone(),
            child: Mutex::new(child),
            exit: Mutex::new(None),
            session: Mutex::new(Session {
                rx,
                stdin,
                stale: 0,
                eof: false,
            }),
            console,
            qemu_stderr,
            run_timeout: Mutex::new(env_secs("SHAREDISK_RUN_TIMEOUT", DEFAULT_RUN_TIMEOUT)),
            boot_time: Duration::ZERO,
        };
        (guest, started)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Wall-clock time from spawning QEMU to the ready marker.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// Process id of QEMU (run-guest.sh execs it).
    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    /// Everything the guest printed so far (one entry per line).
    pub fn console_log(&self) -> Vec<String> {
        self.console.lock().unwrap().clone()
    }

    /// QEMU's stderr so far.
    pub fn qemu_stderr(&self) -> Vec<String> {
        self.qemu_stderr.lock().unwrap().clone()
    }

    /// Default timeout for [`Guest::run`] / [`Guest::sh`].
    pub fn set_run_timeout(&self, t: Duration) {
        *self.run_timeout.lock().unwrap() = t;
    }

    /// Runs `cmd` (`sh -c cmd` in the guest); returns (exit status, output).  Panics on
    /// timeout (default 60 s) or when the guest goes away.
    pub fn run(&self, cmd: &str) -> (i32, String) {
        let t = *self.run_timeout.lock().unwrap();
        self.run_timeout(cmd, t)
    }

    /// [`Guest::run`] with an explicit timeout.
    pub fn run_timeout(&self, cmd: &str, timeout: Duration) -> (i32, String) {
        match self.try_run(cmd, timeout) {
            Ok(r) => r,
            Err(e) => panic!("[{}] `{cmd}`: {e}", self.name),
        }
    }

    /// Runs `cmd`, asserts exit status 0, returns the output.
    pub fn sh(&self, cmd: &str) -> String {
        let (rc, out) = self.run(cmd);
        assert_eq!(
            rc, 0,
            "[{}] `{cmd}` failed with status {rc}; output:\n{out}",
            self.name
        );
        out
    }

    /// Like [`Guest::run`] but returns Err on timeout or guest exit instead of panicking.
    /// After a timeout the guest stays usable once the slow command finishes: its late
    /// `@@RC` marker is recognised and skipped.
    pub fn try_run(&self, cmd: &str, timeout: Duration) -> Result<(i32, String), String> {
        assert!(
            !cmd.contains('\n') && !cmd.contains('\r'),
            "guest commands must be a single line: {cmd:?}"
        );
        assert!(!cmd.trim().is_empty(), "empty guest command");
        let name = &self.name;
        let mut s = self.session.lock().unwrap();
        if s.eof {
            return Err("the guest has exited".into());
        }
        eprintln!("[{name}] $ {cmd}");
        let started = Instant::now();
        {
            let Some(stdin) = s.stdin.as_mut() else {
                return Err("the guest's console input is closed".into());
            };
            if let Err(e) = stdin
                .write_all(format!("{cmd}\n").as_bytes())
                .and_then(|_| stdin.flush())
            {
                return Err(format!("writing to the guest console failed: {e}"));
            }
        }
        let deadline = started + timeout;
        let mut out = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match s.rx.recv_timeout(left) {
                Ok(Msg::Line(line)) => {
                    if let Some((prefix, rc)) = parse_rc(&line) {
                        if s.stale > 0 {
                            // Marker of an earlier command that timed out.
                            s.stale -= 1;
                            out.clear();
                            continue;
                        }
                        out.push_str(prefix);
                        eprintln!(
                            "[{name}] => rc={rc} ({:.2}s)",
                            started.elapsed().as_secs_f64()
                        );
                        return Ok((rc, out));
                    }
                    out.push_str(&line);
                    out.push('\n');
                }
                Ok(Msg::Eof) | Err(RecvTimeoutError::Disconnected) => {
                    s.eof = true;
                    return Err(format!(
                        "the guest exited while running the command; output so far:\n{out}"
                    ));
                }
                Err(RecvTimeoutError::Timeout) => {
                    s.stale += 1;
                    eprintln!("[{name}] => TIMEOUT after {:.1}s", timeout.as_secs_f64());
                    return Err(format!(
                        "timed out after {:.1}s; output so far:\n{out}",
                        timeout.as_secs_f64()
                    ));
                }
            }
        }
    }

    /// Reboots the guest inside the same QEMU (needs `GuestOpts::allow_reboot`): the firmware
    /// and the kernel drive the devices again, on the same vhost-user connections.
    pub fn reboot(&self) {
        let name = &self.name;
        let mut s = self.session.lock().unwrap();
        eprintln!("[{name}] $ (reboot)");
        let stdin = s.stdin.as_mut().expect("console input");
        stdin
            .write_all(b"echo b > /proc/sysrq-trigger\n")
            .and_then(|_| stdin.flush())
            .expect("write to the guest console");
        let started = Instant::now();
        let deadline = started + env_secs("SHAREDISK_BOOT_TIMEOUT", DEFAULT_BOOT_TIMEOUT);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match s.rx.recv_timeout(left) {
                Ok(Msg::Line(l)) if l.contains(READY_MARKER) => break,
                Ok(Msg::Line(_)) => {}
                other => panic!("[{name}] reboot failed: {:?}", other.is_ok()),
            }
        }
        eprintln!(
            "[{name}] rebooted in {:.2}s",
            started.elapsed().as_secs_f64()
        );
    }

    /// Status of QEMU if it has exited (non-blocking).
    pub fn exit_status(&self) -> Option<ExitStatus> {
        let mut exit = self.exit.lock().unwrap();
        if exit.is_none() {
            if let Ok(Some(st)) = self.child.lock().unwrap().try_wait() {
                *exit = Some(st);
            }
        }
        *exit
    }

    pub fn is_running(&self) -> bool {
        self.exit_status().is_none()
    }

    /// Waits up to `timeout` for QEMU to exit.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.exit_status() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs QEMU ("the VM crashed") and reaps it.
    pub fn kill(&self) -> Option<ExitStatus> {
        if let Some(st) = self.exit_status() {
            return Some(st);
        }
        eprintln!("[{}] killing QEMU (SIGKILL)", self.name);
        let st = {
            let mut child = self.child.lock().unwrap();
            let _ = child.kill();
            child.wait().ok()
        };
        *self.exit.lock().unwrap() = st;
        st
    }

    /// Sends `poweroff`, waits for QEMU to exit (30 s), then kills it.  Returns QEMU's exit
    /// status.
    pub fn poweroff(&self) -> Option<ExitStatus> {
        self.poweroff_timeout(DEFAULT_POWEROFF_TIMEOUT)
    }

    pub fn poweroff_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(st) = self.exit_status() {
            return Some(st);
        }
        eprintln!("[{}] $ poweroff", self.name);
        if let Ok(mut s) = self.session.lock() {
            if let Some(mut stdin) = s.stdin.take() {
                let _ = stdin.write_all(b"poweroff\n").and_then(|_| stdin.flush());
                // dropping stdin closes the console input as well
            }
        }
        match self.wait_exit(timeout) {
            Some(st) => {
                eprintln!("[{}] powered off ({st})", self.name);
                Some(st)
            }
            None => {
                eprintln!(
                    "[{}] did not power off within {:.0}s",
                    self.name,
                    timeout.as_secs_f64()
                );
                self.kill()
            }
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if self.is_running() {
            self.kill();
        }
    }
}

/// Creates a sparse file of `size` bytes (a scratch disk image for QEMU's emulated devices).
pub fn sparse_image(path: &Path, size: u64) {
    let f =
        std::fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.set_len(size)
        .unwrap_or_else(|e| panic!("truncate {}: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    // The demo is built with cfg(test) but without the test harness.
    #[allow(unused_imports)]
    use super::parse_rc;

    #[test]
    fn rc_marker() {
        assert_eq!(parse_rc("@@RC=0@@"), Some(("", 0)));
        assert_eq!(parse_rc("nonl@@RC=24@@"), Some(("nonl", 24)));
        assert_eq!(parse_rc("@@RC=x@@"), None);
        assert_eq!(parse_rc("hello"), None);
    }
}

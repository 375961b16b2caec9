//! What the daemon binary does with the names it is given on a shared host: only a stale socket
//! is ever replaced at a socket path (a regular file or a symbolic link there stops the start and
//! survives untouched), a socket has its configured group and mode before anyone can connect (a
//! racing connector as another user, and a watcher of its mode, see nothing else), a mode open to
//! every local user needs `socket_world_access`, temporary state files are never written through
//! a symbolic link, and a state directory others may write in is refused.

mod common;

use std::ffi::CString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::ctl::{ctl, sharedisk};
use common::process::{wait_for_sockets, DaemonProcess};
use common::scsi_client::*;

/// `sharedisk serve` on `dir/disk.img` (16 MiB) for `guests`, with sockets in `dir/sock`.
fn serve_cmd(dir: &Path, guests: &[&str], extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sharedisk"));
    cmd.arg("serve")
        .arg("--image")
        .arg(dir.join("disk.img"))
        .arg("--size")
        .arg("16M")
        .arg("--socket-dir")
        .arg(dir.join("sock"))
        .arg("--guests")
        .arg(guests.join(","))
        .args(extra)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    cmd
}

/// Runs `serve` expecting it to refuse to start: its exit code and output. A daemon still running
/// after 10 s started, which fails the test.
#[track_caller]
fn serve_refused(dir: &Path, extra: &[&str]) -> (i32, String) {
    let mut child = serve_cmd(dir, &["vm1"], extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the daemon started: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

#[test]
fn a_regular_file_at_the_control_socket_path_stops_the_start_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("sock");
    std::fs::create_dir(&sock).unwrap();
    let control = sock.join("control.sock");
    std::fs::write(&control, "an operator's notes\n").unwrap();

    let (code, out) = serve_refused(dir.path(), &[]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(&control.display().to_string()) && out.contains("is a regular file"),
        "the message names the path and what is there: {out}"
    );
    assert_eq!(
        std::fs::read_to_string(&control).unwrap(),
        "an operator's notes\n"
    );
    // The guests' sockets bound before the control socket are gone again; nothing else is left.
    assert_eq!(names(&sock), ["control.sock"], "{out}");
}

#[test]
fn a_regular_file_or_a_symlink_at_a_guest_socket_path_stops_the_start_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("sock");
    std::fs::create_dir(&sock).unwrap();
    let blk = sock.join("vm1-blk.sock");
    std::fs::write(&blk, "not a socket\n").unwrap();

    let (code, out) = serve_refused(dir.path(), &[]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(&blk.display().to_string()) && out.contains("is a regular file"),
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(&blk).unwrap(), "not a socket\n");
    assert_eq!(names(&sock), ["vm1-blk.sock"], "{out}");

    // A symbolic link (to a file someone cares about) is neither followed nor removed.
    std::fs::remove_file(&blk).unwrap();
    let target = dir.path().join("precious");
    std::fs::write(&target, "keep\n").unwrap();
    std::os::unix::fs::symlink(&target, &blk).unwrap();
    let (code, out) = serve_refused(dir.path(), &[]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("is a symbolic link"), "{out}");
    assert_eq!(std::fs::read_link(&blk).unwrap(), target);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep\n");
}

#[test]
fn a_symlinked_state_tmp_is_not_written_through() {
    let dir = tempfile::tempdir().unwrap();
    let d = DaemonProcess::start(dir.path(), &["vm1", "vm2"], "16M");
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "victim\n").unwrap();
    let state = dir.path().join("disk.img.pr");
    let tmp = dir.path().join("disk.img.pr.tmp");
    let guests_tmp = dir.path().join("disk.img.pr.guests.tmp");
    std::os::unix::fs::symlink(&victim, &tmp).unwrap();
    std::os::unix::fs::symlink(&victim, &guests_tmp).unwrap();

    // A PR OUT must save the state first: it fails, and nothing is written through the link.
    let mut s1 = ScsiClient::connect(&d.scsi("vm1"));
    s1.drain_ua();
    let r = s1.prout(SA_REGISTER, 0, 0, 0x11, false);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "victim\n");
    assert!(!r.is_good(), "the registration cannot be saved");
    // Adding a guest must save the guests file first: refused too.
    let add = ctl(&d.control(), &["guest", "add", "vm3"]);
    assert_ne!(add.code, 0, "{}", add.stderr);
    assert!(
        add.stderr.contains(&guests_tmp.display().to_string()),
        "the refusal names the temporary file: {}",
        add.stderr
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "victim\n");
    assert!(std::fs::symlink_metadata(&tmp).unwrap().is_symlink());
    assert!(std::fs::symlink_metadata(&guests_tmp).unwrap().is_symlink());
    let log = d.log();
    assert!(
        log.contains(&tmp.display().to_string()) && log.contains("symbolic link"),
        "the log names the link: {log}"
    );

    // A leftover regular file of the daemon's own (a crash before the rename) is replaced; the
    // state file then exists with mode 0600.
    std::fs::remove_file(&tmp).unwrap();
    std::fs::write(&tmp, "half a state from a crash").unwrap();
    assert!(s1.prout(SA_REGISTER, 0, 0, 0x11, false).is_good());
    assert!(!tmp.exists());
    assert_eq!(mode(&state), 0o600);
    assert!(std::fs::read_to_string(&state)
        .unwrap()
        .contains("\"format\""));
}

#[test]
fn a_state_directory_others_may_write_in_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // The sticky bit does not help: another user could still create the names the daemon has
    // not created yet (tests/host_hostile.rs plants the guests file that way).
    for (m, who) in [
        (0o777, "every user"),
        (0o775, "its group"),
        (0o1777, "every user"),
        (0o1770, "its group"),
    ] {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(m)).unwrap();
        let (code, out) = serve_refused(dir.path(), &[]);
        assert_ne!(code, 0, "{out}");
        assert!(
            out.contains("state directory")
                && out.contains(&dir.path().display().to_string())
                && out.contains(who)
                && out.contains("chmod go-w")
                && !out.contains("chmod +t"),
            "the message says what is wrong and what to do: {out}"
        );
    }
    // Nothing was created before the refusal: no image, no sockets.
    assert!(!dir.path().join("disk.img").exists());
    // A private mode is fine.
    for m in [0o755, 0o700] {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(m)).unwrap();
        DaemonProcess::start(dir.path(), &["vm1"], "16M").stop();
    }
}

#[test]
fn a_world_socket_mode_is_refused_unless_allowed_explicitly() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = serve_refused(dir.path(), &["--socket-mode", "0666"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("0666") && out.contains("socket_world_access = true"),
        "{out}"
    );
    assert!(!dir.path().join("sock").join("vm1-blk.sock").exists());

    // In a file, `config check` names the key and its line.
    let cfg = dir.path().join("sd.toml");
    let text = format!(
        "[image]\npath = \"{}/disk.img\"\n[server]\nsocket_mode = \"0777\"\n[[guest]]\nname = \"vm1\"\n",
        dir.path().display()
    );
    std::fs::write(&cfg, &text).unwrap();
    let check = sharedisk(&["config", "check", cfg.to_str().unwrap()]);
    assert_ne!(check.code, 0, "{}", check.stdout);
    assert!(
        check.stderr.contains(":4:") && check.stderr.contains("server.socket_mode"),
        "{}",
        check.stderr
    );
    std::fs::write(
        &cfg,
        text.replace("[[guest]]", "socket_world_access = true\n[[guest]]"),
    )
    .unwrap();
    let check = sharedisk(&["config", "check", cfg.to_str().unwrap()]);
    assert_eq!(check.code, 0, "{}", check.stderr);
    assert!(
        check.stdout.contains("every local user"),
        "{}",
        check.stdout
    );

    let mut d = DaemonProcess::start_args(
        dir.path(),
        &["vm1"],
        "16M",
        &["--socket-mode", "0666", "--socket-world-access"],
    );
    assert_eq!(mode(&d.blk("vm1")), 0o666);
    assert_eq!(
        mode(&d.control()),
        0o600,
        "the control socket is never opened up"
    );
    d.stop();

    // A umask that would leave the sockets open to everyone is refused the same way.
    let mut cmd = serve_cmd(dir.path(), &["vm1"], &[]);
    // SAFETY: umask(2) is async-signal-safe and touches only the child's own mask.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        })
    };
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("0777") && err.contains("socket_world_access"),
        "{err}"
    );
}

/// Another local user, racing the daemon's start: what it saw.
#[derive(Debug, Default)]
struct RaceReport {
    /// Paths it connected to.
    connected: Vec<PathBuf>,
    /// Paths it saw with another mode than expected, and that mode.
    modes: Vec<(PathBuf, u32)>,
}

/// A forked child running as `nobody` (uid and gid 65534, no supplementary groups) that connects
/// to and stats `paths` in a tight loop until killed. `expected[i]` is the mode `paths[i]` must
/// have whenever it exists.
struct Racer {
    pid: libc::pid_t,
    read: libc::c_int,
    paths: Vec<PathBuf>,
}

impl Racer {
    fn start(paths: &[PathBuf], expected: &[u32]) -> Racer {
        let c_paths: Vec<CString> = paths
            .iter()
            .map(|p| CString::new(p.as_os_str().as_encoded_bytes()).unwrap())
            .collect();
        let addrs: Vec<libc::sockaddr_un> = c_paths.iter().map(sockaddr).collect();
        let mut fds = [0; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe(2) to fill.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the child only makes system calls on memory prepared before the fork (no
        // allocation, no locks) and ends with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            // SAFETY: see above; the child never returns.
            unsafe { race(&c_paths, &addrs, expected, fds[1]) }
        }
        // SAFETY: closing our copy of the write end, a descriptor we own.
        unsafe { libc::close(fds[1]) };
        Racer {
            pid,
            read: fds[0],
            paths: paths.to_vec(),
        }
    }

    /// Stops the racer and says what it saw.
    fn finish(self) -> RaceReport {
        // SAFETY: kill and waitpid on our own child, then reading from our pipe into a local
        // buffer of the length passed.
        let bytes = unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            let mut all = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = libc::read(self.read, buf.as_mut_ptr().cast(), buf.len());
                if n <= 0 {
                    break;
                }
                all.extend_from_slice(&buf[..n as usize]);
            }
            libc::close(self.read);
            all
        };
        let mut report = RaceReport::default();
        for rec in bytes.chunks_exact(4) {
            let path = self.paths[rec[1] as usize].clone();
            match rec[0] {
                b'C' => report.connected.push(path),
                b'M' => report
                    .modes
                    .push((path, u16::from_le_bytes([rec[2], rec[3]]) as u32)),
                b'E' => panic!("the racer could not become nobody"),
                _ => {}
            }
        }
        report
    }
}

fn sockaddr(path: &CString) -> libc::sockaddr_un {
    // SAFETY: all-zero bytes are a valid sockaddr_un.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in a.sun_path.iter_mut().zip(path.as_bytes()) {
        *d = *s as libc::c_char;
    }
    a
}

/// The racer's body, in the forked child: become nobody, then loop. Each finding is written
/// once, as 4 bytes: kind (`C` connected, `M` mode), index, mode (little-endian u16).
///
/// # Safety
/// Runs after fork in a multithreaded process: makes system calls only, never returns.
unsafe fn race(
    paths: &[CString],
    addrs: &[libc::sockaddr_un],
    expected: &[u32],
    out: libc::c_int,
) -> ! {
    let report = |kind: u8, i: usize, mode: u32| {
        let rec = [kind, i as u8, mode as u8, (mode >> 8) as u8];
        libc::write(out, rec.as_ptr().cast(), 4);
    };
    if libc::setgroups(0, std::ptr::null()) != 0
        || libc::setresgid(65534, 65534, 65534) != 0
        || libc::setresuid(65534, 65534, 65534) != 0
    {
        report(b'E', 0, 0);
        libc::_exit(1);
    }
    let mut connected = [false; 64];
    let mut odd_mode = [false; 64];
    let mut fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
    loop {
        for i in 0..paths.len() {
            let mut st: libc::stat = std::mem::zeroed();
            if !odd_mode[i] && libc::lstat(paths[i].as_ptr(), &mut st) == 0 {
                let m = st.st_mode & 0o7777;
                if m != expected[i] {
                    odd_mode[i] = true;
                    report(b'M', i, m);
                }
            }
            if connected[i] {
                continue;
            }
            let addr = (&addrs[i] as *const libc::sockaddr_un).cast();
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            if libc::connect(fd, addr, len) == 0 {
                connected[i] = true;
                report(b'C', i, 0);
                libc::close(fd);
                fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            }
        }
    }
}

#[test]
fn a_socket_has_its_mode_before_anyone_can_connect() {
    let dir = tempfile::tempdir().unwrap();
    // Another user may reach the socket directory (as QEMU must), and the daemon runs under
    // umask 000: only the configured group and mode keep that user out.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = dir.path().join("sock");
    std::fs::create_dir(&sock).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o755)).unwrap();
    let image = dir.path().join("disk.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o600)).unwrap();
    let guests: Vec<String> = (0..16).map(|i| format!("g{i}")).collect();
    let guest_refs: Vec<&str> = guests.iter().map(String::as_str).collect();
    let mut paths = vec![sock.join("control.sock")];
    let mut expected = vec![0o600];
    for g in &guests {
        paths.extend([
            sock.join(format!("{g}-blk.sock")),
            sock.join(format!("{g}-scsi.sock")),
        ]);
        expected.extend([0o660, 0o660]);
    }
    // A socket open to everyone proves the racer connects and watches where it may.
    let probe = sock.join("probe.sock");
    let _probe = std::os::unix::net::UnixListener::bind(&probe).unwrap();
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o777)).unwrap();
    paths.push(probe.clone());
    expected.push(0o777);

    let racer = Racer::start(&paths, &expected);
    for _ in 0..8 {
        let mut cmd = serve_cmd(
            dir.path(),
            &guest_refs,
            &["--socket-group", "disk", "--socket-mode", "0660"],
        );
        // SAFETY: umask(2) is async-signal-safe and touches only the child's own mask.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0);
                Ok(())
            })
        };
        let log = dir.path().join("daemon.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let mut child: Child = cmd
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap();
        let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
        wait_for_sockets(&mut child, &paths[..paths.len() - 1], "daemon", read_log);
        for (p, m) in paths.iter().zip(&expected) {
            assert_eq!(mode(p), *m, "{}", p.display());
        }
        // SAFETY: kill(2) on the pid of a child we own and have not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        assert!(child.wait().unwrap().success(), "{}", read_log());
    }
    let report = racer.finish();
    assert_eq!(report.connected, [probe], "{report:?}");
    assert!(report.modes.is_empty(), "{report:?}");
}

/// Cluster mode's per-node files (local copy, its `.epoch`, the node lock) live in
/// `cluster.state_dir`: checked like the state directory, and the lock is never opened through a
/// symbolic link. Both refusals come before the daemon opens the image or touches etcd (no etcd
/// is needed: the endpoint is closed).
#[test]
#[cfg(feature = "cluster")]
fn cluster_state_dir_is_checked_and_the_node_lock_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("st");
    std::fs::create_dir(&st).unwrap();
    let cfg = dir.path().join("sd.toml");
    std::fs::write(
        &cfg,
        "[image]\npath = \"disk.img\"\nsize = \"16M\"\n[server]\nsocket_dir = \"sock\"\n\
         [[guest]]\nname = \"vm1\"\n[cluster]\netcd = [\"http://127.0.0.1:9\"]\ninsecure = true\n\
         node = \"n1\"\ndisk_id = \"d\"\nstate_dir = \"st\"\n",
    )
    .unwrap();
    let run = || {
        let out = Command::new(env!("CARGO_BIN_EXE_sharedisk"))
            .args(["serve", "--config", cfg.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    std::fs::set_permissions(&st, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = run();
    assert!(
        err.contains("state directory") && err.contains(&st.display().to_string()),
        "{err}"
    );
    std::fs::set_permissions(&st, std::fs::Permissions::from_mode(0o700)).unwrap();
    let target = dir.path().join("not-a-lock");
    let lock = st.join("d.n1.lock");
    std::os::unix::fs::symlink(&target, &lock).unwrap();
    let err = run();
    assert!(
        err.contains(&lock.display().to_string()) && err.contains("never followed"),
        "{err}"
    );
    assert!(
        !target.exists(),
        "nothing is created through the link: {err}"
    );
    assert!(!dir.path().join("disk.img").exists(), "{err}");
}

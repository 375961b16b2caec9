//! The Debian package, installed as an operator installs it, and the daemon under the real
//! unit's sandbox with a real systemd. `cargo deb` builds the package (the release build), and
//! `lintian` must find no error in it. This machine's own root file system is then booted as a
//! container (`systemd-nspawn --volatile=overlay`: read-only, every change in a tmpfs, so the
//! host's package database and users stay as they were), with systemd as its PID 1. In it:
//! `dpkg -i` creates the user sharedisk, `systemd-analyze verify` and `security` accept the
//! installed unit, and `systemctl start sharedisk@lab` serves the packaged example configuration
//! (with O_DIRECT, io_uring and a metrics listener, so that the system call filter and the
//! address families are exercised) as that user, with no capabilities, under the seccomp filter.
//! From outside, a vhost-user-blk client running as another user in the group kvm writes and
//! reads the disk and a SCSI client registers a key; a user outside the group is refused; QEMU,
//! run as that other user, boots the test guest on the daemon. The image and the reservation
//! state belong to sharedisk, mode 0600. `dpkg --purge` stops the instance and removes the
//! package.
//!
//! Needs root, `systemd-nspawn` (package systemd-container), `lintian` and `cargo-deb`
//! (tests/run.sh installs them), and the test guest.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::blkio_client::BlkClient;
use common::guest::{Guest, GuestOpts};
use common::scsi_client::*;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// The highest `systemd-analyze security` exposure the unit may have.
const MAX_EXPOSURE: f64 = 3.0;

/// A user and group of this test's own, in no group of the host: "another user".
const STRANGER: u32 = 47_111;
/// A user that is not sharedisk, connecting through the group kvm (libvirt's QEMU's place).
const QEMU_USER: u32 = 47_112;

/// Runs `cmd`, returning its status and its stdout and stderr together.
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Builds the package with `cargo deb` (a release build without features); its path.
fn build_deb() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let (ok, out) = run(Command::new(cargo)
        .args(["deb", "--quiet"])
        .current_dir(MANIFEST_DIR));
    assert!(
        ok,
        "cargo deb (cargo install --locked cargo-deb) failed: {out}"
    );
    let deb = out
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .unwrap_or_else(|| panic!("no .deb named in cargo deb's output: {out}"));
    PathBuf::from(deb)
}

/// This machine's root booted as a container, with systemd as its PID 1.
struct Container {
    nspawn: Child,
    /// The container's PID 1, as the host sees it.
    leader: u32,
    /// The read-only bind mount of `/` the container boots from.
    root: PathBuf,
    log: PathBuf,
}

impl Container {
    /// Boots `/` (read-only, changes in a tmpfs) with `binds` (`host:container` pairs).
    fn boot(dir: &Path, binds: &[(PathBuf, &str)]) -> Container {
        let root = dir.join("root");
        std::fs::create_dir_all(&root).unwrap();
        let (ok, out) = run(Command::new("mount").args(["--bind", "/"]).arg(&root));
        assert!(ok, "mount --bind / {}: {out}", root.display());
        let (ok, out) = run(Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(&root));
        assert!(ok, "remount read-only: {out}");
        let log = dir.join("nspawn.log");
        let mut cmd = Command::new("systemd-nspawn");
        cmd.args([
            "--register=no",
            "--keep-unit",
            "--link-journal=no",
            "--quiet",
        ])
        .arg("--volatile=overlay")
        .arg(format!("--machine=sharedisk-pkg-{}", std::process::id()))
        .arg("-D")
        .arg(&root);
        for (host, inside) in binds {
            cmd.arg(format!("--bind={}:{inside}", host.display()));
        }
        let nspawn = cmd
            .args(["-b", "--", "systemd.unit=basic.target"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.join("nspawn.err")).unwrap())
            .spawn()
            .expect("systemd-nspawn (package systemd-container)");
        let mut c = Container {
            leader: 0,
            nspawn,
            root,
            log,
        };
        c.leader = c.find_leader();
        c.wait_booted();
        c
    }

    /// Waits until the container's systemd has booted (its bus listens only after a moment).
    fn wait_booted(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut state = String::new();
        while Instant::now() < deadline {
            state = self.sh("systemctl is-system-running --wait").1;
            if matches!(state.trim(), "running" | "degraded") {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "the container's systemd did not boot: {state}\n{}",
            self.console()
        );
    }

    /// The process whose parent is systemd-nspawn: the container's init.
    fn find_leader(&mut self) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(30);
        let ppid = format!("PPid:\t{}", self.nspawn.id());
        while Instant::now() < deadline {
            if let Some(status) = self.nspawn.try_wait().unwrap() {
                panic!("systemd-nspawn ended ({status}): {}", self.console());
            }
            for e in std::fs::read_dir("/proc").unwrap().flatten() {
                let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
                if status.lines().any(|l| l == ppid) && status.starts_with("Name:\tsystemd") {
                    return e.file_name().to_str().unwrap().parse().unwrap();
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no systemd under systemd-nspawn: {}", self.console());
    }

    fn console(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `script` with sh as root inside the container.
    fn sh(&self, script: &str) -> (bool, String) {
        run(Command::new("nsenter")
            .arg("-t")
            .arg(self.leader.to_string())
            .args(["-m", "-u", "-i", "-p", "--", "/bin/sh", "-c", script]))
    }

    /// Like [`Container::sh`], failing the test when `script` fails; its output.
    fn ok(&self, script: &str) -> String {
        let (ok, out) = self.sh(script);
        assert!(ok, "in the container, `{script}` failed: {out}");
        out
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // SIGTERM makes systemd-nspawn power the container off.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.nspawn.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if matches!(self.nspawn.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
        let _ = Command::new("umount").arg(&self.root).status();
    }
}

/// Runs `f` on a thread whose credentials are `uid`, `gid` and the groups `groups` (Linux keeps
/// credentials per thread; the raw system calls change only this one).
fn as_user<T: Send>(uid: u32, gid: u32, groups: &[u32], f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: raw setgroups/setresgid/setresuid with a valid array of `groups.len()`
            // gids; they change this thread's credentials only, which ends after `f`.
            unsafe {
                assert_eq!(
                    libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()),
                    0
                );
                assert_eq!(libc::syscall(libc::SYS_setresgid, gid, gid, gid), 0);
                assert_eq!(libc::syscall(libc::SYS_setresuid, uid, uid, uid), 0);
            }
            f()
        })
        .join()
        .unwrap()
    })
}

/// The numeric id in `getent` output (`name:x:ID:...`).
fn getent_id(line: &str) -> u32 {
    line.split(':').nth(2).unwrap().trim().parse().unwrap()
}

/// The value of `key` in a /proc status text.
fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {status}"))
        .trim()
}

/// The packaged example configuration, with O_DIRECT and io_uring (a disk other hosts write too)
/// and an ephemeral metrics port.
const CONFIG_EDIT: &str =
    "sed -e 's/^aio = .*/aio = \"io_uring\"/' -e 's/^direct = .*/direct = true/' \
     -e 's/^metrics_listen = .*/metrics_listen = \"127.0.0.1:0\"/' \
     /usr/share/doc/sharedisk/examples/sharedisk-example.toml > /etc/sharedisk/lab.toml";

#[test]
fn deb_installs_and_serves_as_its_user_in_the_sandbox() {
    let deb = build_deb();
    let (ok, lint) = run(Command::new("lintian")
        .args(["--fail-on", "error", "--tag-display-limit", "0"])
        .arg(&deb));
    assert!(ok, "lintian finds errors in {}: {lint}", deb.display());
    println!("lintian: {lint}");

    let dir = tempfile::tempdir().unwrap();
    // The clients below run as other users: they must reach the socket directory.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let (pkg, run_dir, lib_dir) = (
        dir.path().join("pkg"),
        dir.path().join("run"),
        dir.path().join("lib"),
    );
    for d in [&pkg, &run_dir, &lib_dir] {
        std::fs::create_dir_all(d).unwrap();
    }
    // The container's systemd creates /run/sharedisk/lab and /var/lib/sharedisk/lab in these.
    std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::copy(&deb, pkg.join("sharedisk.deb")).unwrap();
    let c = Container::boot(
        dir.path(),
        &[
            (pkg, "/mnt/sharedisk-pkg"),
            (run_dir.clone(), "/run/sharedisk"),
            (lib_dir.clone(), "/var/lib/sharedisk"),
        ],
    );
    c.ok("dpkg -i /mnt/sharedisk-pkg/sharedisk.deb");
    let user = c.ok("getent passwd sharedisk");
    assert!(user.trim().ends_with(":/usr/sbin/nologin"), "{user}");
    let uid = getent_id(&user);
    let kvm = getent_id(&c.ok("getent group kvm"));
    assert_ne!(uid, 0);

    let verify = c.ok("systemd-analyze verify sharedisk@lab.service 2>&1");
    assert!(
        verify.trim().is_empty(),
        "systemd-analyze verify warns: {verify}"
    );
    c.ok(&format!("mkdir -p /etc/sharedisk && {CONFIG_EDIT}"));
    let (started, out) = c.sh("systemctl start sharedisk@lab");
    let journal = c.sh("journalctl -b --no-pager -u sharedisk@lab").1;
    assert!(started, "systemctl start sharedisk@lab: {out}\n{journal}");
    serves_as_its_user(&c, uid);
    exposure_at_most(&c, MAX_EXPOSURE);

    let lab_run = run_dir.join("lab");
    let lab_lib = lib_dir.join("lab");
    guests_reach_it_through_the_group(&lab_run, kvm);
    qemu_as_another_user(dir.path(), &lab_run, kvm);
    for file in ["disk.img", "disk.img.pr"] {
        let m = std::fs::metadata(lab_lib.join(file)).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o777), (uid, 0o600), "{file}");
    }
    let m = std::fs::metadata(&lab_lib).unwrap();
    assert_eq!(
        (m.uid(), m.mode() & 0o777),
        (uid, 0o700),
        "the state directory"
    );
    let guests = c.ok("sharedisk ctl --socket /run/sharedisk/lab/control.sock guests");
    assert!(guests.contains("node1"), "{guests}");
    metrics_answer(&c.ok("journalctl -b --no-pager -u sharedisk@lab"));

    #[cfg(feature = "cluster")]
    cluster_mode_in_the_sandbox(&c, dir.path(), &dir.path().join("pkg"), kvm);
    // The removal stops the running instance (prerm).
    c.ok("dpkg --purge sharedisk");
    let (active, state) = c.sh("systemctl is-active sharedisk@lab");
    assert!(!active, "sharedisk@lab outlived the package: {state}");
    let (still, _) = c.sh("test -e /usr/bin/sharedisk");
    assert!(!still, "dpkg --purge left /usr/bin/sharedisk");
}

/// The daemon's process: the user sharedisk, no capabilities, no new privileges, a seccomp
/// filter, the unit's file limit.
fn serves_as_its_user(c: &Container, uid: u32) {
    let pid = c.ok("systemctl show -P MainPID sharedisk@lab");
    let status = c.ok(&format!("cat /proc/{}/status", pid.trim()));
    let uids = format!("{uid}\t{uid}\t{uid}\t{uid}");
    assert_eq!(status_field(&status, "Uid:"), uids, "{status}");
    assert_eq!(status_field(&status, "CapEff:"), "0000000000000000");
    assert_eq!(status_field(&status, "CapBnd:"), "0000000000000000");
    assert_eq!(status_field(&status, "NoNewPrivs:"), "1");
    assert_eq!(status_field(&status, "Seccomp:"), "2", "no seccomp filter");
    // LimitNOFILE=65536, or as much as the container's systemd may give (its own hard limit).
    let files = |limits: &str| -> (u64, u64) {
        let line = limits.lines().find(|l| l.starts_with("Max open files"));
        let mut n = line
            .unwrap()
            .split_whitespace()
            .skip(3)
            .map(|v| v.parse().unwrap());
        (n.next().unwrap(), n.next().unwrap())
    };
    let (_, init_hard) = files(&c.ok("cat /proc/1/limits"));
    let daemon = files(&c.ok(&format!("cat /proc/{}/limits", pid.trim())));
    assert_eq!(
        daemon.0,
        init_hard.min(65536),
        "the daemon's open file limit"
    );
}

/// The metrics listener the daemon logged (AF_INET under RestrictAddressFamilies) answers.
fn metrics_answer(journal: &str) {
    let addr = journal
        .split("metrics on http://")
        .nth(1)
        .and_then(|rest| rest.split("/metrics").next())
        .unwrap_or_else(|| panic!("no metrics listener in the journal: {journal}"));
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.") && answer.contains(" 200 ") && answer.contains("sharedisk_"),
        "{answer}"
    );
}

/// `systemd-analyze security` of the running instance: at most `max`.
fn exposure_at_most(c: &Container, max: f64) {
    let out = c.ok("systemd-analyze security --no-pager sharedisk@lab.service 2>&1");
    let level: f64 = out
        .lines()
        .find_map(|l| l.split("sharedisk@lab.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in {out}"));
    println!("systemd-analyze security: exposure {level}");
    assert!(level <= max, "exposure {level} > {max}: {out}");
}

/// A client of the group kvm writes and reads through blk and registers through scsi; a user
/// outside the group cannot connect.
fn guests_reach_it_through_the_group(lab_run: &Path, kvm: u32) {
    let blk = lab_run.join("node1-blk.sock");
    let m = std::fs::metadata(&blk).unwrap();
    assert_eq!((m.gid(), m.mode() & 0o777), (kvm, 0o660), "node1-blk.sock");
    let refused = as_user(STRANGER, STRANGER, &[], || {
        BlkClient::connect(&blk).err().map(|e| e.to_string())
    });
    let refused = refused.expect("a user outside the group kvm connected");
    assert!(refused.contains("ermission"), "{refused}");
    let scsi = lab_run.join("node1-scsi.sock");
    as_user(QEMU_USER, kvm, &[kvm], || {
        let mut b = BlkClient::connect(&blk).expect("a member of kvm connects");
        let data = vec![0x5a; 4096];
        b.write(1 << 20, &data).unwrap();
        assert_eq!(b.read(1 << 20, 4096).unwrap(), data);
        let mut s = ScsiClient::connect(&scsi);
        s.drain_ua();
        assert!(s.prout(SA_REGISTER, 0, 0, 0x51, false).is_good());
    });
}

/// Cluster mode under the sandbox (the test's own binary, built with `cluster`, in place of the
/// packaged one): the daemon joins a real etcd on the host's loopback (AF_INET), records the
/// host's boot id from /proc/sys in its member key, keeps its local copy in the default
/// `state_dir` (/var/lib/sharedisk), and a PR OUT from a kvm member commits through etcd.
#[cfg(feature = "cluster")]
fn cluster_mode_in_the_sandbox(c: &Container, dir: &Path, pkg: &Path, kvm: u32) {
    let etcd = common::etcd::Etcd::start(dir);
    std::fs::copy(
        env!("CARGO_BIN_EXE_sharedisk"),
        pkg.join("sharedisk-cluster"),
    )
    .unwrap();
    let config = format!(
        "[image]\npath = \"/var/lib/sharedisk/c1/disk.img\"\nsize = \"64M\"\n\
         [server]\nsocket_dir = \"/run/sharedisk/c1\"\nsocket_group = \"kvm\"\n\
         socket_mode = \"0660\"\n[[guest]]\nname = \"n1\"\n\
         [cluster]\netcd = [\"{}\"]\ninsecure = true\nnode = \"h1\"\ndisk_id = \"pkg-disk\"\n",
        etcd.url
    );
    std::fs::write(pkg.join("c1.toml"), config).unwrap();
    c.ok(
        "install -m 755 /mnt/sharedisk-pkg/sharedisk-cluster /usr/bin/sharedisk \
          && cp /mnt/sharedisk-pkg/c1.toml /etc/sharedisk/c1.toml",
    );
    let (started, out) = c.sh("systemctl start sharedisk@c1");
    let journal = c.sh("journalctl -b --no-pager -u sharedisk@c1").1;
    assert!(started, "systemctl start sharedisk@c1: {out}\n{journal}");
    let scsi = dir.join("run/c1/n1-scsi.sock");
    as_user(QEMU_USER, kvm, &[kvm], || {
        let mut s = ScsiClient::connect(&scsi);
        s.drain_ua();
        assert!(s.prout(SA_REGISTER, 0, 0, 0x61, false).is_good());
        assert!(s.prout(SA_RESERVE, 1, 0x61, 0, false).is_good());
    });
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &etcd.url, "get", "--prefix", ""])
        .output()
        .expect("etcdctl (Debian's etcd-client)");
    let keys = String::from_utf8_lossy(&out.stdout);
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert!(keys.contains(boot_id.trim()), "no boot id in etcd: {keys}");
    let copies = c.ok("ls /var/lib/sharedisk");
    assert!(copies.contains("pkg-disk.h1.pr"), "{copies}");
    c.ok("systemctl stop sharedisk@c1");
}

/// QEMU itself, run as another user of the group kvm (through setpriv), boots the test guest on
/// node2's sockets of the sandboxed daemon: what it writes through vhost-user-blk reads back
/// through vhost-user-scsi.
fn qemu_as_another_user(dir: &Path, lab_run: &Path, kvm: u32) {
    // The guest's kernel and initramfs sit in root's cache: the wrapper copies them where that
    // user may read them.
    let files = dir.join("qemu-files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::set_permissions(&files, std::fs::Permissions::from_mode(0o755)).unwrap();
    let wrapper = dir.join("qemu-as-another-user");
    let script = format!(
        "#!/bin/bash\nargs=()\nfor a in \"$@\"; do\n  case $a in\n    \
         */vmlinuz|*/initramfs.img) cp \"$a\" {files}/ && a={files}/${{a##*/}} && \
         chmod 644 \"$a\" ;;\n  esac\n  args+=(\"$a\")\ndone\n\
         exec setpriv --reuid={QEMU_USER} --regid={kvm} --groups={kvm} -- {qemu} \"${{args[@]}}\"\n",
        files = files.display(),
        qemu = common::guest::qemu_binary(),
    );
    std::fs::write(&wrapper, script).unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::env::set_var("SHAREDISK_QEMU", &wrapper);
    // /dev/kvm is the group kvm's on a host with udev; where it is root's alone, TCG.
    let kvm_dev = std::fs::metadata("/dev/kvm");
    if !kvm_dev.is_ok_and(|m| m.gid() == kvm && m.mode() & 0o060 == 0o060) {
        std::env::set_var("SHAREDISK_ACCEL", "tcg");
    }
    let vm = Guest::boot(GuestOpts {
        blk: Some(lab_run.join("node2-blk.sock")),
        scsi: Some(lab_run.join("node2-scsi.sock")),
        ..GuestOpts::new("pkgvm")
    });
    let qemu_uid = std::fs::metadata(format!("/proc/{}", vm.pid()))
        .unwrap()
        .uid();
    vm.sh("yes sandboxed | head -c 65536 > /tmp/p");
    vm.sh("dd if=/tmp/p of=/dev/vda bs=65536 count=1 seek=8 oflag=direct");
    vm.sh("dd if=/dev/sda of=/tmp/r bs=65536 count=1 skip=8 iflag=direct && cmp /tmp/p /tmp/r");
    vm.poweroff();
    assert_eq!(qemu_uid, QEMU_USER, "QEMU ran as root");
}

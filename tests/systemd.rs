//! systemd: the template unit passes `systemd-analyze verify` (against a root holding the unit,
//! the daemon binary and systemd's own units), its example configuration passes `config check`,
//! and the daemon's sd_notify messages, read from a NOTIFY_SOCKET this test provides, say
//! READY=1 only once every socket listens and the PR state is loaded, STATUS= with the connected
//! guests and the holder, and STOPPING=1 on SIGTERM; an abstract `NOTIFY_SOCKET=@name` gets
//! them too.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::blkio_client::BlkClient;
use common::ctl::{ctl_json, sharedisk};
use common::process::DaemonProcess;
use common::scsi_client::*;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/sharedisk@.service");
const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/systemd/sharedisk-example.toml"
);

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        let ty = e.file_type().unwrap();
        if ty.is_symlink() {
            let _ = std::os::unix::fs::symlink(std::fs::read_link(e.path()).unwrap(), &dest);
        } else if ty.is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

fn verify(root: &Path) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg("sharedisk@lab.service")
        .output()
        .expect("systemd-analyze (package systemd)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `TimeoutStopSec=` of the unit, in milliseconds (`60s`, `2min`, `90`).
#[cfg(feature = "cluster")]
fn timeout_stop_ms(unit: &str) -> u64 {
    let v = unit
        .lines()
        .find_map(|l| l.trim().strip_prefix("TimeoutStopSec="))
        .expect("the unit sets TimeoutStopSec")
        .trim();
    let (n, scale) = if let Some(n) = v.strip_suffix("min") {
        (n, 60_000)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1)
    } else {
        (v.strip_suffix('s').unwrap_or(v), 1000)
    };
    n.trim()
        .parse::<u64>()
        .expect("TimeoutStopSec is a plain number")
        * scale
}

/// A stop during an etcd outage may wait a PR OUT's budget and the lease hold: the unit's stop
/// timeout covers both defaults (it was 15 s, under either, so such a stop ended in SIGKILL).
#[test]
#[cfg(feature = "cluster")]
fn the_stop_timeout_covers_hold_and_budget() {
    use sharedisk::pr::cluster::config::{DEFAULT_BUDGET_MS, DEFAULT_HOLD_MS, DEFAULT_LEASE_MS};
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let stop = timeout_stop_ms(&unit);
    // Leaving is one more etcd transaction of at most a lease, after the renewer's own.
    let leave = 2 * DEFAULT_LEASE_MS;
    assert!(
        stop > DEFAULT_HOLD_MS + DEFAULT_BUDGET_MS + leave,
        "TimeoutStopSec {stop} ms does not cover hold_ms {DEFAULT_HOLD_MS} + budget_ms \
         {DEFAULT_BUDGET_MS} + leaving ({leave} ms)"
    );
    assert_eq!(timeout_stop_ms("TimeoutStopSec=15s\n"), 15_000);
    assert_eq!(timeout_stop_ms("TimeoutStopSec=2min\n"), 120_000);
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    copy_dir(
        Path::new("/lib/systemd/system"),
        &r.join("usr/lib/systemd/system"),
    );
    std::fs::create_dir_all(r.join("etc/systemd/system")).unwrap();
    std::fs::create_dir_all(r.join("usr/bin")).unwrap();
    std::fs::copy(UNIT, r.join("etc/systemd/system/sharedisk@.service")).unwrap();
    // Without the binary the unit is wrong: proves the check looks.
    let (ok, out) = verify(r);
    assert!(!ok && out.contains("/usr/bin/sharedisk"), "{out}");
    let bin = r.join("usr/bin/sharedisk");
    if std::fs::hard_link(env!("CARGO_BIN_EXE_sharedisk"), &bin).is_err() {
        std::fs::copy(env!("CARGO_BIN_EXE_sharedisk"), &bin).unwrap();
    }
    let (ok, out) = verify(r);
    assert!(ok, "systemd-analyze verify fails: {out}");
    assert!(out.trim().is_empty(), "systemd-analyze verify warns: {out}");

    let check = sharedisk(&["config", "check", EXAMPLE]).ok();
    assert!(
        check.stdout.contains("/run/sharedisk/lab/node1-blk.sock"),
        "{}",
        check.stdout
    );
}

/// The next notify datagram, as its `KEY=value` lines.
fn recv(sock: &UnixDatagram) -> Vec<String> {
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .expect("a notify message within the timeout");
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .map(String::from)
        .collect()
}

/// Reads messages until one has a line for which `want` holds; returns that line.
fn wait_for(sock: &UnixDatagram, want: impl Fn(&str) -> bool, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        for l in recv(sock) {
            if want(&l) {
                return l;
            }
            seen.push(l);
        }
    }
    panic!("no {what} in {seen:?}");
}

#[test]
fn notify_ready_status_stopping() {
    let dir = tempfile::tempdir().unwrap();
    // A first run leaves a registration in the state file.
    let mut first = DaemonProcess::start(dir.path(), &["vm1", "vm2"], "64M");
    let mut s = ScsiClient::connect(&first.scsi("vm1"));
    s.drain_ua();
    assert!(s.prout(SA_REGISTER, 0, 0, 0x99, false).is_good());
    drop(s);
    first.stop();

    let notify = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let socket_dir = dir.path().join("sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sharedisk"))
        .args(["serve", "--guests", "vm1,vm2", "--image"])
        .arg(dir.path().join("disk.img"))
        .arg("--socket-dir")
        .arg(&socket_dir)
        .env("NOTIFY_SOCKET", &notify)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("notify-daemon.log")).unwrap())
        .spawn()
        .unwrap();

    let ready = recv(&sock);
    assert!(ready.contains(&"READY=1".to_string()), "{ready:?}");
    // At READY every socket listens and the saved registration is loaded.
    for g in ["vm1", "vm2"] {
        for kind in ["blk", "scsi"] {
            assert!(socket_dir.join(format!("{g}-{kind}.sock")).exists());
        }
    }
    let control = socket_dir.join("control.sock");
    let pr = ctl_json(&control, &["pr", "show"]);
    assert_eq!(pr["registrations"][0]["key"], "0x99");
    let status = ready.iter().find(|l| l.starts_with("STATUS=")).unwrap();
    assert_eq!(status, "STATUS=0/2 guests connected; no reservation");

    let _b = BlkClient::connect(&socket_dir.join("vm1-blk.sock")).unwrap();
    wait_for(
        &sock,
        |l| l == "STATUS=1/2 guests connected (vm1); no reservation",
        "vm1 connected",
    );
    let mut s = ScsiClient::connect(&socket_dir.join("vm1-scsi.sock"));
    s.drain_ua();
    assert!(s.prout(SA_RESERVE, 1, 0x99, 0, false).is_good());
    wait_for(
        &sock,
        |l| l == "STATUS=1/2 guests connected (vm1); vm1 holds type 1",
        "the holder",
    );
    drop(s);

    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    wait_for(&sock, |l| l == "STOPPING=1", "STOPPING=1");
    assert!(child.wait().unwrap().success());
}

/// sd_notify(3): `NOTIFY_SOCKET=@name` is a name in the abstract namespace (systemd itself may
/// hand one out), not a file: READY=1 and STOPPING=1 arrive on a datagram socket bound there.
#[test]
fn notify_on_an_abstract_socket() {
    use std::os::linux::net::SocketAddrExt;
    let dir = tempfile::tempdir().unwrap();
    let name = format!("sharedisk-test-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sharedisk"))
        .args(["serve", "--guests", "vm1", "--size", "16M", "--image"])
        .arg(dir.path().join("disk.img"))
        .arg("--socket-dir")
        .arg(dir.path().join("sock"))
        .env("NOTIFY_SOCKET", format!("@{name}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
    let mut buf = [0u8; 4096];
    let ready = sock.recv(&mut buf).map(|n| buf[..n].to_vec());
    let ready = String::from_utf8_lossy(&ready.unwrap_or_else(|e| {
        let _ = child.kill();
        panic!("no READY=1 on @{name}: {e}; daemon log:\n{}", log())
    }))
    .into_owned();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    wait_for(&sock, |l| l == "STOPPING=1", "STOPPING=1");
    assert!(child.wait().unwrap().success(), "{}", log());
    assert!(!log().contains("cannot notify"), "{}", log());
}

/// The unit's sandbox: `systemd-analyze security --offline=yes` (the unit file as written, no
/// running systemd needed) puts its exposure at 3.0 or lower, with the daemon as its own user and
/// no capabilities (the unit without them measured 8.9, "EXPOSED").
#[test]
fn unit_sandbox_exposure_at_most_3() {
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("sharedisk@lab.service");
    std::fs::copy(UNIT, &unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (package systemd)");
    let text = String::from_utf8_lossy(&out.stdout);
    let level: f64 = text
        .lines()
        .find_map(|l| l.split("sharedisk@lab.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in {text}"));
    assert!(level <= 3.0, "exposure {level} > 3.0:\n{text}");
    for line in [
        "User=sharedisk",
        "CapabilityBoundingSet=",
        "ProtectSystem=strict",
        "PrivateDevices=yes",
    ] {
        assert!(
            std::fs::read_to_string(UNIT)
                .unwrap()
                .lines()
                .any(|l| l == line),
            "the unit lacks {line}"
        );
    }
}

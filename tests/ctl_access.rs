//! The control socket on a shared host, through the daemon binary: who may do what (callers run
//! as another uid with `setpriv`), no lock-out by idle or flooding clients while a raw
//! vhost-user-blk frontend measures guest I/O, hostile lines (100 MB, not UTF-8), `ctl`'s exit
//! code when the outcome is unknown, CLI output into a closed pipe, and a SIGTERM after the
//! control socket file was deleted.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::ctl::{ctl, ctl_json, sharedisk, CtlOutput};
use common::process::DaemonProcess;
use common::scsi_client::{ScsiClient, SA_REGISTER};
use common::vu_frontend::{VuFrontend, VIRTIO_BLK_T_IN};
use serde_json::Value;

/// Group ids for the read and admin groups: numbers, so the test needs no /etc/group entries.
const READ_GID: &str = "4241";
const ADMIN_GID: &str = "4242";
/// `nobody`.
const OTHER_UID: &str = "65534";

/// A daemon on `dir` whose control socket any local user can reach (as an operator who widened
/// the socket's mode would have it): the groups then decide, not the mode.
fn open_daemon(dir: &Path, extra: &[&str]) -> DaemonProcess {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = DaemonProcess::start_args(dir, &["vm1"], "64M", extra);
    std::fs::set_permissions(d.control(), std::fs::Permissions::from_mode(0o666)).unwrap();
    d
}

/// `sharedisk ctl --socket S ARGS` as uid 65534 with exactly `groups` as its groups.
fn ctl_as(socket: &Path, groups: &[&str], args: &[&str]) -> CtlOutput {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", OTHER_UID, "--regid", OTHER_UID]);
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        cmd.arg(format!("--groups={}", groups.join(",")));
    }
    cmd.arg(env!("CARGO_BIN_EXE_sharedisk"))
        .args(["ctl", "--socket", socket.to_str().unwrap()])
        .args(args);
    let out = cmd.output().expect("run setpriv");
    CtlOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn registrations(socket: &Path) -> usize {
    ctl_json(socket, &["pr", "show"])["registrations"]
        .as_array()
        .unwrap()
        .len()
}

#[test]
fn each_caller_may_do_what_the_permission_table_says_and_a_refusal_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sharedisk.toml");
    std::fs::write(
        &cfg,
        format!(
            "[image]\npath = \"{d}/disk.img\"\n[server]\nsocket_dir = \"{d}/sock\"\n\
             control_group = \"{READ_GID}\"\n[[guest]]\nname = \"vm1\"\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let d = open_daemon(
        dir.path(),
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--admin-group",
            ADMIN_GID,
        ],
    );
    let sock = d.control();
    let mut s1 = ScsiClient::connect(&d.scsi("vm1"));
    s1.drain_ua();
    assert!(s1.prout(SA_REGISTER, 0, 0, 0x11, false).is_good());
    assert_eq!(registrations(&sock), 1);

    // Neither group: every method refused, reads included; exit 5, wire code 13.
    let stranger = |args: &[&str]| ctl_as(&sock, &[], args);
    for args in [
        &["pr", "show"][..],
        &["status"],
        &["pr", "clear", "--yes"],
        &["guest", "add", "vm9"],
    ] {
        let out = stranger(args);
        assert_eq!(
            out.code, 5,
            "{args:?} by a stranger: {}{}",
            out.stdout, out.stderr
        );
        assert!(
            out.stderr.contains("not permitted") && out.stderr.contains("uid 65534"),
            "{}",
            out.stderr
        );
    }
    let json = ctl_as(&sock, &[], &["--json", "pr", "clear", "--yes"]);
    assert_eq!(json.code, 5);
    assert_eq!(json.json()["error"]["code"], 13);
    assert_eq!(
        registrations(&sock),
        1,
        "a refused pr clear changed nothing"
    );

    // The read group: reads yes, changes no.
    let reader = |args: &[&str]| ctl_as(&sock, &[READ_GID], args);
    for args in [
        &["pr", "show"][..],
        &["status"],
        &["guests"],
        &["stats"],
        &["metrics"],
    ] {
        let out = reader(args);
        assert_eq!(out.code, 0, "{args:?} by the read group: {}", out.stderr);
    }
    for args in [
        &["pr", "clear", "--yes"][..],
        &["pr", "preempt", "--victim", "vm1", "--yes"],
        &["guest", "add", "vm9"],
        &["guest", "remove", "vm1", "--force"],
        &["cluster", "resume"],
    ] {
        let out = reader(args);
        assert_eq!(out.code, 5, "{args:?} by the read group: {}", out.stderr);
    }
    assert_eq!(registrations(&sock), 1, "a refused change changed nothing");
    assert_eq!(
        ctl_json(&sock, &["guests"])["guests"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // The admin group (as a supplementary group): changes too.
    let admin = |args: &[&str]| ctl_as(&sock, &["100", ADMIN_GID], args);
    assert_eq!(admin(&["pr", "show"]).code, 0);
    let out = admin(&["guest", "add", "vm9"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = admin(&["pr", "clear", "--yes"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(registrations(&sock), 0);

    let log = d.log();
    assert!(
        log.contains("refused pr.clear to uid 65534"),
        "refusals are logged with the uid: {log}"
    );
}

/// The daemon's resident memory, in kB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Reads from the guest's disk `n` times; the latencies, sorted.
fn blk_reads(fe: &mut VuFrontend, n: usize) -> Vec<Duration> {
    let mut lat: Vec<Duration> = (0..n)
        .map(|i| {
            let t = Instant::now();
            let (st, _) = fe.blk_request(VIRTIO_BLK_T_IN, (i % 128) as u64, &[], 4096);
            assert_eq!(st, 0);
            t.elapsed()
        })
        .collect();
    lat.sort();
    lat
}

fn show(lat: &[Duration]) -> String {
    format!(
        "p50 {:?}, p99 {:?}, max {:?}",
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100],
        lat[lat.len() - 1]
    )
}

#[test]
fn idle_and_flooding_clients_do_not_lock_out_root_ctl_nor_slow_the_guests() {
    let dir = tempfile::tempdir().unwrap();
    let d = open_daemon(dir.path(), &[]);
    let sock = d.control();
    let mut fe = VuFrontend::connect(&d.blk("vm1"), 1, 128);
    let quiet = blk_reads(&mut fe, 2000);

    // 20 idle root clients (what locked ctl out: 16 slots, 600 s idle timeout).
    let idle: Vec<UnixStream> = (0..20)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    let t = Instant::now();
    let out = ctl(&sock, &["pr", "show"]);
    assert_eq!(
        out.code, 0,
        "root ctl beside 20 idle clients: {}",
        out.stderr
    );
    println!("root ctl pr show beside 20 idle clients: {:?}", t.elapsed());

    // 1,000 connections held by another user, and 1,000 more by root, while the guest reads.
    let mut flood = Command::new("setpriv")
        .args(["--reuid", OTHER_UID, "--regid", OTHER_UID, "--clear-groups"])
        .args(["perl", "-MIO::Socket::UNIX", "-e"])
        .arg(
            "my @s; for (1..1000) { my $c = IO::Socket::UNIX->new(Peer => $ARGV[0]) \
             or die \"connect $_: $!\"; push @s, $c } $| = 1; print \"held\\n\"; sleep 30",
        )
        .arg(&sock)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut held = String::new();
    BufReader::new(flood.stdout.take().unwrap())
        .read_line(&mut held)
        .unwrap();
    assert_eq!(
        held, "held\n",
        "the other user's 1,000 connections were made"
    );
    let root_flood: Vec<UnixStream> = (0..1000)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    let busy = blk_reads(&mut fe, 2000);
    let t = Instant::now();
    let out = ctl(&sock, &["--json", "pr", "show"]);
    let took = t.elapsed();
    assert_eq!(out.code, 0, "root ctl during the flood: {}", out.stderr);
    let cleared = ctl(&sock, &["pr", "clear", "--yes"]);
    assert_eq!(
        cleared.code, 0,
        "a root change during the flood: {}",
        cleared.stderr
    );
    println!("root ctl pr show with 20 idle + 2,000 flooding connections: {took:?}");
    println!("guest 4 KiB reads, quiet:  {}", show(&quiet));
    println!("guest 4 KiB reads, flood:  {}", show(&busy));
    let _ = flood.kill();
    let _ = flood.wait();
    drop((idle, root_flood));
    assert!(d.log().contains("refused a connection of uid 65534"));
    d.assert_no_panic();
}

#[test]
fn a_100_mb_line_is_refused_at_the_cap_with_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let d = open_daemon(dir.path(), &[]);
    let before = rss_kb(d.pid().unwrap());
    let conn = UnixStream::connect(d.control()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut writer = conn.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        // 100 MB in 1 MiB writes, counting what the socket took before the daemon closed it.
        let chunk = vec![b'x'; 1 << 20];
        let mut sent = 0usize;
        while sent < 100 << 20 {
            match writer.write(&chunk) {
                Ok(n) if n > 0 => sent += n,
                _ => break,
            }
        }
        sent
    });
    let mut answer = String::new();
    let mut reader = BufReader::new(&conn);
    reader.read_line(&mut answer).unwrap();
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["error"]["code"], -32600, "{answer}");
    let mut rest = Vec::new();
    assert_eq!(reader.read_to_end(&mut rest).unwrap_or(0), 0, "then closed");
    let sent = sender.join().unwrap();
    let after = rss_kb(d.pid().unwrap());
    println!(
        "100 MB line: the socket took {sent} bytes before the daemon closed it; daemon RSS \
         {before} kB -> {after} kB"
    );
    assert!(sent < 100 << 20, "the daemon stopped reading at the cap");
    assert!(
        after < before + 32 * 1024,
        "RSS grew by {} kB",
        after - before
    );
    assert_eq!(ctl(&d.control(), &["status"]).code, 0);
}

#[test]
fn a_client_that_never_reads_its_answers_is_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let d = open_daemon(dir.path(), &[]);
    let mut conn = UnixStream::connect(d.control()).unwrap();
    let (done, finished) = std::sync::mpsc::channel();
    let started = Instant::now();
    std::thread::spawn(move || {
        // Requests whose answers (a few kB each) fill the socket buffer, never read.
        let line = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"stats\"}\n".repeat(64);
        let mut sent = 0usize;
        while conn.write_all(&line).is_ok() {
            sent += 64;
        }
        let _ = done.send(sent);
    });
    // Meanwhile the operator is served.
    assert_eq!(ctl(&d.control(), &["status"]).code, 0);
    let sent = finished
        .recv_timeout(Duration::from_secs(30))
        .expect("the daemon never closed the connection of a client that does not read");
    println!(
        "a client that never reads: closed after {:?}, {sent} requests sent",
        started.elapsed()
    );
    assert_eq!(ctl(&d.control(), &["status"]).code, 0);
}

#[test]
fn a_request_that_is_not_utf8_gets_a_parse_error_and_the_connection_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let d = open_daemon(dir.path(), &[]);
    let mut conn = UnixStream::connect(d.control()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"st\xffatus\"}\n")
        .unwrap();
    conn.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"version\"}\n")
        .unwrap();
    let mut lines = BufReader::new(&conn).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["error"]["code"], -32700, "{first}");
    assert_eq!(first["id"], Value::Null);
    let second: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(second["id"], 2, "{second}");
    assert!(second["result"]["version"].is_string(), "{second}");
}

/// A stub daemon that reads one request and then does `then` with the connection.
fn stub(path: &Path, then: fn(UnixStream)) -> std::thread::JoinHandle<()> {
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&conn).read_line(&mut line).unwrap();
        assert!(line.contains("pr.clear"), "{line}");
        then(conn);
    })
}

#[test]
fn ctl_exits_4_when_the_request_was_sent_and_the_answer_never_came() {
    let dir = tempfile::tempdir().unwrap();
    // The connection lost after the request: the clear may have been done.
    let lost = dir.path().join("lost.sock");
    let t = stub(&lost, drop);
    let out = ctl(&lost, &["pr", "clear", "--yes"]);
    t.join().unwrap();
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.stderr.contains("may or may not have been done"),
        "{}",
        out.stderr
    );

    // No answer within --timeout.
    let slow = dir.path().join("slow.sock");
    let t = stub(&slow, |conn| {
        std::thread::sleep(Duration::from_secs(3));
        drop(conn);
    });
    let started = Instant::now();
    let out = ctl(&slow, &["--timeout", "1", "--json", "pr", "clear", "--yes"]);
    assert_eq!(out.code, 4, "{}{}", out.stdout, out.stderr);
    assert_eq!(out.json()["error"]["code"], 4);
    assert!(started.elapsed() < Duration::from_secs(3));
    t.join().unwrap();

    // Nobody listening: not sent, so exit 3 as before.
    let out = ctl(&dir.path().join("none.sock"), &["pr", "clear", "--yes"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
}

/// Runs `sharedisk ARGS` with its stdout a pipe nobody reads any more.
fn into_closed_pipe(args: &[&str]) -> (Option<i32>, String) {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) writes two new descriptors into the array we pass.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors are new and owned here only.
    let (read, write) = unsafe {
        use std::os::fd::FromRawFd;
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    };
    drop(read);
    let out = Command::new(env!("CARGO_BIN_EXE_sharedisk"))
        .args(args)
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_commands_end_quietly_on_a_closed_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let d = open_daemon(dir.path(), &[]);
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[image]\npath = \"/srv/disk.img\"\n[[guest]]\nname = \"vm1\"\n",
    )
    .unwrap();
    let sock = d.control();
    // A registration, so that the state file exists.
    let mut s1 = ScsiClient::connect(&d.scsi("vm1"));
    s1.drain_ua();
    assert!(s1.prout(SA_REGISTER, 0, 0, 0x11, false).is_good());
    let state = ctl_json(&sock, &["status"])["state_file"]
        .as_str()
        .unwrap()
        .to_string();
    let state = state.as_str();
    let sock = sock.to_str().unwrap();
    let cfg = cfg.to_str().unwrap();
    for args in [
        &["config", "check", cfg][..],
        &["ctl", "--socket", sock, "status"],
        &["ctl", "--socket", sock, "--json", "pr", "show"],
        &["ctl", "--socket", sock, "metrics"],
        &["qemu-args", "--config", cfg, "--guest", "vm1"],
        &[
            "qemu-args",
            "--config",
            cfg,
            "--guest",
            "vm1",
            "--format",
            "libvirt",
        ],
        &["pr", "show", "--state", state],
    ] {
        let (code, stderr) = into_closed_pipe(args);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(code, Some(141), "{args:?}: {stderr}");
    }
    // The same output into a pipe that is read: all there, exit 0.
    assert_eq!(sharedisk(&["config", "check", cfg]).ok().code, 0);
}

#[test]
fn a_daemon_whose_control_socket_was_deleted_stops_promptly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = DaemonProcess::start(dir.path(), &["vm1"], "64M");
    std::fs::remove_file(d.control()).unwrap();
    let t = Instant::now();
    d.kill(libc::SIGTERM);
    println!("SIGTERM to exit, control socket deleted: {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

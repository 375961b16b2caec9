//! Portal admission against hostile initiators, through the daemon binary and raw TCP peers:
//! half-open logins by the hundred do not keep a legitimate initiator out (nor its I/O), a
//! discovery flood is bounded and idle discovery sessions are closed, a session that never
//! reads its Data-In is dropped and its share freed, and what peers make the daemon log stays
//! bounded (`[iscsi]` `max_logins`, `max_discovery_sessions`, `discovery_idle_timeout_s`,
//! `max_sessions`, `send_timeout_s`; docs/operations.md).

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::iscsi_client::{free_port, IscsiClient, INITIATOR_A, INITIATOR_B};
use common::process::DaemonProcess;
use common::scsi_client::{good, read16_cdb};

const ISID_1: [u8; 6] = [0x80, 0x12, 0x34, 0x56, 0x00, 0x01];
const ISID_2: [u8; 6] = [0x80, 0x12, 0x34, 0x56, 0x00, 0x02];
/// Another client host, as the portal sees it.
const OTHER_HOST: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// Login status: out of resources (RFC 7143 §11.13.5).
const OUT_OF_RESOURCES: u16 = 0x0302;

use common::iscsi_portal::PortalDaemon as Setup;

/// A daemon with a portal allowing initiators A and B, `limits` added to its `[iscsi]`.
fn setup(limits: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = dir.path().join("sharedisk.toml");
    std::fs::write(
        &cfg,
        format!(
            "[image]\npath = \"{d}/disk.img\"\n[server]\nsocket_dir = \"{d}/sock\"\n\
             [[guest]]\nname = \"vm1\"\n[iscsi]\nlisten = [\"{addr}\"]\n{limits}\n\
             [[iscsi.initiator]]\nname = \"{INITIATOR_A}\"\n\
             [[iscsi.initiator]]\nname = \"{INITIATOR_B}\"\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let daemon = DaemonProcess::start_args(
        dir.path(),
        &["vm1"],
        "64M",
        &["--config", cfg.to_str().unwrap()],
    );
    let target = common::iscsi_client::served_target(&daemon);
    Setup {
        daemon,
        addr,
        target,
        _dir: dir,
    }
}

/// Whether the portal closed `s`: a read returns end of file (or a reset) rather than waiting.
fn closed(mut s: &TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            }
        }
    }
}

/// Waits up to `secs` for `f`.
fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    f()
}

/// The daemon's threads named `name`.
fn threads(pid: u32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .filter(|comm| comm.trim() == name)
                .count()
        })
        .unwrap_or(0)
}

/// Log lines of the daemon that contain `what`.
fn log_lines(s: &Setup, what: &str) -> usize {
    s.daemon.log().lines().filter(|l| l.contains(what)).count()
}

/// A write and a read back through `c`.
fn io_works(c: &mut IscsiClient) {
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    good(&c.write16(64, &data), "WRITE(16)");
    let r = c.read16(64, 8);
    good(&r, "READ(16)");
    assert_eq!(r.data, data, "the data read back");
}

/// 300 connections that send half a login PDU and stop (from one host) hold no room a
/// legitimate initiator on another host needs: its login and I/O go through, the portal's
/// connection threads stay within `max_logins` (default 128), and the lines the flood causes
/// are a burst of 20 and about one a second (without the limit, 271 lines). Before the bounds
/// per kind, the 256-connection cap was full and the legitimate connection was closed at accept.
#[test]
fn half_open_logins_do_not_keep_a_legitimate_initiator_out() {
    let s = setup("");
    let pid = s.daemon.pid().unwrap();
    let started = Instant::now();
    let mut flood = Vec::new();
    for _ in 0..300 {
        let mut t = TcpStream::connect(s.addr).unwrap();
        t.write_all(&[0x43, 0x87, 0, 0, 0, 0, 0, 0, 0x80, 0, 0, 0])
            .unwrap();
        flood.push(t);
    }
    let mut c = IscsiClient::connect_from(s.addr, OTHER_HOST, ISID_1);
    c.login_normal(INITIATOR_A, &s.target)
        .expect("the legitimate login goes through");
    c.drain_ua();
    io_works(&mut c);
    assert!(
        eventually(60, || threads(pid, "iscsi-conn") <= 128 + 1),
        "connection threads: {}",
        threads(pid, "iscsi-conn")
    );
    let still_open = flood.iter().filter(|t| !closed(t)).count();
    assert!(
        still_open <= 128,
        "{still_open} half-open logins still open"
    );
    let flood_lines = log_lines(&s, "127.0.0.1:");
    eprintln!("log lines about the flood's connections: {flood_lines}");
    // 20 at once, one a second since, a few about the legitimate login and the start.
    let bound = 20 + started.elapsed().as_secs() as usize + 10;
    assert!(
        flood_lines <= bound,
        "{flood_lines} lines:\n{}",
        s.daemon.log()
    );
    assert!(c.logout());
    s.daemon.assert_no_panic();
}

/// A discovery login of `initiator` on `c`: SendTargets then answers with our target.
fn discover(c: &mut IscsiClient, target: &str) {
    c.log_in(
        &[
            ("InitiatorName", INITIATOR_A),
            ("SessionType", "Discovery"),
            ("AuthMethod", "None"),
        ],
        &[("HeaderDigest", "None"), ("DataDigest", "None")],
    )
    .expect("discovery login");
    let text = c.immediate(0x04, 0x80, b"SendTargets=All\0", |b| {
        b[20..24].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
    });
    let text = String::from_utf8_lossy(&text.expect("a Text response").data).into_owned();
    assert!(text.contains(&format!("TargetName={target}")), "{text}");
}

/// Twelve discovery sessions from one host left open: at most `max_discovery_sessions` (4)
/// stay, a discovery from another host and a Normal login go through, and an idle discovery
/// session is closed after `discovery_idle_timeout_s` while the idle Normal session stays.
#[test]
fn a_discovery_flood_is_bounded_and_idle_discovery_sessions_close() {
    let s = setup("max_discovery_sessions = 4\ndiscovery_idle_timeout_s = 3");
    let flood: Vec<IscsiClient> = (0..12)
        .map(|_| {
            let mut c = IscsiClient::connect(s.addr, ISID_1);
            discover(&mut c, &s.target);
            c
        })
        .collect();
    let mut other = IscsiClient::connect_from(s.addr, OTHER_HOST, ISID_1);
    discover(&mut other, &s.target);
    let open = flood.iter().filter(|c| !closed(&c.stream)).count();
    assert!(open <= 3, "{open} of the flood's discovery sessions open");
    let mut normal = IscsiClient::login(s.addr, INITIATOR_B, &s.target, ISID_2).unwrap();
    normal.drain_ua();
    assert!(
        eventually(30, || closed(&other.stream)),
        "the idle discovery session is closed"
    );
    io_works(&mut normal);
    assert!(normal.logout());
    s.daemon.assert_no_panic();
}

/// A session that asks for 32 × 4 MiB of Data-In and never reads it blocks the portal's
/// writes: after `send_timeout_s` (5) it is dropped, and its share goes to another session
/// (`max_sessions = 1`), whose login was refused (0302) while the first held it.
#[test]
fn a_session_that_never_reads_its_data_in_is_dropped_and_its_share_freed() {
    let s = setup("max_sessions = 1\nsend_timeout_s = 5");
    let mut stalled = IscsiClient::login(s.addr, INITIATOR_A, &s.target, ISID_1).unwrap();
    stalled.drain_ua();
    for _ in 0..32 {
        let b = stalled.cmd_header(&read16_cdb(0, 8192), 8192 * 512, true, false);
        stalled.send(b, &[]);
    }
    let refused = IscsiClient::login(s.addr, INITIATOR_B, &s.target, ISID_2);
    assert_eq!(
        refused.err(),
        Some(OUT_OF_RESOURCES),
        "max_sessions = 1 is taken"
    );
    let mut next = None;
    assert!(
        eventually(60, || {
            next = IscsiClient::login(s.addr, INITIATOR_B, &s.target, ISID_2).ok();
            next.is_some()
        }),
        "the stalled session's share is never freed"
    );
    let mut next = next.unwrap();
    next.drain_ua();
    io_works(&mut next);
    assert!(next.logout());
    s.daemon.assert_no_panic();
}

/// A logged-in initiator that sends 200 PDUs the target rejects gets 200 Rejects, and the log a
/// burst of 20 lines and about one a second, the rest counted.
#[test]
fn rejected_pdus_are_logged_within_the_sources_share() {
    let s = setup("");
    let mut c = IscsiClient::login(s.addr, INITIATOR_A, &s.target, ISID_1).unwrap();
    c.drain_ua();
    for _ in 0..200 {
        // Opcode 0x1c: none an initiator sends (RFC 7143 §11.1.1).
        let r = c.immediate(0x1c, 0x80, &[], |_| {}).expect("a Reject");
        assert_eq!(r.opcode(), 0x3f, "Reject");
    }
    io_works(&mut c);
    let lines = log_lines(&s, "rejected (reason");
    eprintln!("log lines for 200 rejected PDUs: {lines}");
    assert!((1..=40).contains(&lines), "{lines} lines");
    assert!(c.logout());
}

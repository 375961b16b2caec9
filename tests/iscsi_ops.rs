//! The operator's view of the iSCSI target, through the daemon binary: `sharedisk ctl iscsi
//! sessions` (each session's nexus, ISID, TSIH, addresses, digests and counters), and maxShares
//! counting iSCSI sessions and guests together both ways (a login refused with 0302 when guests
//! fill it, `ctl guest add` refused when sessions do), and the iSCSI metrics (sessions, logins
//! by result, PDU errors by kind, per-session I/O labelled by nexus) through `promtool`.

mod common;

use common::prometheus::promtool_check;

use common::ctl::{ctl, ctl_json};
use common::iscsi_client::{IscsiClient, INITIATOR_A, INITIATOR_B};
use common::process::DaemonProcess;
use common::scsi_client::good;

const ISID_1: [u8; 6] = [0x80, 0x12, 0x34, 0x56, 0x00, 0x01];
const ISID_2: [u8; 6] = [0x80, 0x12, 0x34, 0x56, 0x00, 0x02];

use common::iscsi_portal::PortalDaemon as Setup;

fn setup(extra: &[&str]) -> Setup {
    Setup::start(&[INITIATOR_A, INITIATOR_B], extra, &[])
}

fn login(s: &Setup, initiator: &str, isid: [u8; 6]) -> Result<IscsiClient, u16> {
    let mut c = IscsiClient::login(s.addr, initiator, &s.target, isid)?;
    c.drain_ua();
    Ok(c)
}

#[test]
fn ctl_iscsi_sessions_shows_each_session_with_its_counters() {
    let s = setup(&[]);
    let sock = s.daemon.control();
    let empty = ctl_json(&sock, &["iscsi", "sessions"]);
    assert_eq!(empty["sessions"], serde_json::json!([]), "{empty}");
    // A session with a CRC32C header digest: one write of 8 blocks, one read of 2.
    let mut a = IscsiClient::login_with(
        s.addr,
        &[
            ("InitiatorName", INITIATOR_A),
            ("TargetName", &s.target),
            ("AuthMethod", "None"),
        ],
        &[("HeaderDigest", "CRC32C"), ("DataDigest", "None")],
        ISID_1,
    )
    .expect("login");
    a.drain_ua();
    good(&a.write16(0, &[0x5a; 4096]), "WRITE");
    good(&a.read16(0, 2), "READ");
    // A SNACK at ERL 0: a Reject, one PDU error.
    let rej = a.immediate(0x10, 0x80, &[], |_| {}).expect("a Reject");
    assert_eq!(rej.opcode(), 0x3f);
    let mut b = login(&s, INITIATOR_B, ISID_2).unwrap();
    good(&b.read16(0, 1), "READ");

    let v = ctl_json(&sock, &["iscsi", "sessions"]);
    let list = v["sessions"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{v}");
    let x = &list[0];
    assert_eq!(x["nexus"], format!("{INITIATOR_A},i,0x801234560001"), "{v}");
    assert_eq!(x["initiator"], INITIATOR_A);
    assert_eq!(x["isid"], "801234560001");
    assert_eq!(x["tsih"], a.tsih);
    assert_eq!(x["portal"], s.addr.to_string());
    assert_eq!(x["peer"], a.stream.local_addr().unwrap().to_string());
    assert_eq!(
        (x["header_digest"].as_str(), x["data_digest"].as_str()),
        (Some("CRC32C"), Some("None"))
    );
    // drain_ua's TEST UNIT READYs count too: at least the write and the read.
    assert!(x["commands"].as_u64().unwrap() >= 2, "{x}");
    assert_eq!(x["bytes_in"], 4096, "{x}");
    assert_eq!(x["bytes_out"], 1024, "{x}");
    assert_eq!(x["pdu_errors"], 1, "{x}");
    assert_eq!(x["auth"], "None", "{x}");
    let since = x["since"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(since <= now && since + 600 > now, "{since} {now}");
    assert_eq!(list[1]["nexus"], format!("{INITIATOR_B},i,0x801234560002"));
    assert_eq!(list[1]["pdu_errors"], 0);
    // The text lists both; `pr show` names the session's registration by the same nexus.
    let text = ctl(&sock, &["iscsi", "sessions"]).ok().stdout;
    assert!(
        text.contains(&format!("{INITIATOR_A},i,0x801234560001")),
        "{text}"
    );
    assert!(text.contains("digests header CRC32C data None"), "{text}");
    good(&a.prout(0x00, 0, 0, 0xabc), "REGISTER");
    // `guests` names the sessions by the same nexus, beside the guests.
    let g = ctl_json(&sock, &["guests"]);
    assert_eq!(g["guests"][0]["name"], "vm1", "{g}");
    assert_eq!(g["iscsi_sessions"][0]["nexus"], x["nexus"], "{g}");
    let text = ctl(&sock, &["guests"]).ok().stdout;
    assert!(
        text.lines()
            .any(|l| l.starts_with("(iscsi)") && l.ends_with(x["nexus"].as_str().unwrap())),
        "{text}"
    );
    let pr = ctl_json(&sock, &["pr", "show"]);
    assert_eq!(pr["registrations"][0]["guest"], x["nexus"], "{pr}");
    // A session that logged out is gone.
    assert!(b.logout());
    assert!(b.read().is_none());
    let v = ctl_json(&sock, &["iscsi", "sessions"]);
    assert_eq!(v["sessions"].as_array().unwrap().len(), 1, "{v}");
    s.daemon.assert_no_panic();
}

#[test]
fn ctl_iscsi_sessions_without_a_portal_fails() {
    let dir = tempfile::tempdir().unwrap();
    let d = DaemonProcess::start(dir.path(), &["vm1"], "16M");
    let out = ctl(&d.control(), &["iscsi", "sessions"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("no [iscsi] section"), "{}", out.stderr);
}

#[test]
fn max_shares_counts_sessions_and_guests_both_ways() {
    // max-shares 3 and guest vm1: two sessions fill it.
    let s = setup(&["--max-shares", "3"]);
    let sock = s.daemon.control();
    let mut one = login(&s, INITIATOR_A, ISID_1).unwrap();
    let _two = login(&s, INITIATOR_B, ISID_1).unwrap();
    // Sessions fill it: a guest add is refused.
    let out = ctl(&sock, &["guest", "add", "vm2"]);
    assert_eq!(out.code, 1, "guest add beyond max-shares: {}", out.stdout);
    assert!(out.stderr.contains("max-shares is 3"), "{}", out.stderr);
    // A session logs out: the guest fits; now guests fill it and a login is refused (0302).
    assert!(one.logout());
    assert!(one.read().is_none());
    ctl(&sock, &["guest", "add", "vm2"]).ok();
    let third = login(&s, INITIATOR_A, ISID_2);
    assert_eq!(third.err(), Some(0x0302), "a login beyond max-shares");
    // The guest goes: the login fits again.
    ctl(&sock, &["guest", "remove", "vm2"]).ok();
    let mut third = login(&s, INITIATOR_A, ISID_2).expect("a login after guest remove");
    good(&third.read16(0, 1), "READ");
    let log = s.daemon.log();
    assert!(
        log.contains("2 sessions and 1 guests already (max-shares 3)")
            || log.contains("1 sessions and 2 guests already (max-shares 3)"),
        "{log}"
    );
    s.daemon.assert_no_panic();
}

/// The value of `series` (name and labels) in a text exposition; `None` if absent.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn metrics(s: &Setup) -> String {
    ctl(&s.daemon.control(), &["metrics"]).ok().stdout
}

#[test]
fn iscsi_metrics_count_logins_sessions_and_io_and_pass_promtool() {
    let s = setup(&[]);
    let text = metrics(&s);
    assert_eq!(
        sample(&text, "sharedisk_iscsi_sessions"),
        Some(0.0),
        "{text}"
    );
    let mut a = login(&s, INITIATOR_A, ISID_1).unwrap();
    good(&a.write16(8, &[7; 1024]), "WRITE");
    good(&a.read16(8, 4), "READ");
    let rej = a.immediate(0x10, 0x80, &[], |_| {}).expect("a Reject");
    assert_eq!(rej.opcode(), 0x3f);
    let stranger = login(&s, "iqn.2026-01.org.example:stranger", ISID_2);
    assert_eq!(stranger.err(), Some(0x0202));
    let wrong = IscsiClient::login(s.addr, INITIATOR_B, "iqn.2026-01.org.example:nope", ISID_2);
    assert_eq!(wrong.err(), Some(0x0203));

    let text = metrics(&s);
    promtool_check(&text);
    let nexus = format!("{INITIATOR_A},i,0x801234560001");
    let v = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series} in {text}"));
    assert_eq!(v("sharedisk_iscsi_sessions"), 1.0);
    assert_eq!(v(r#"sharedisk_iscsi_logins_total{result="accepted"}"#), 1.0);
    assert_eq!(
        v(r#"sharedisk_iscsi_logins_total{result="not_allowed"}"#),
        1.0
    );
    assert_eq!(
        v(r#"sharedisk_iscsi_logins_total{result="not_found"}"#),
        1.0
    );
    assert_eq!(
        v(r#"sharedisk_iscsi_logins_total{result="auth_failed"}"#),
        0.0
    );
    assert_eq!(
        v(r#"sharedisk_iscsi_pdu_errors_total{kind="rejected"}"#),
        1.0
    );
    let per = |family: &str| {
        v(&format!(
            "sharedisk_iscsi_session_{family}_total{{guest=\"{nexus}\"}}"
        ))
    };
    assert_eq!(per("written_bytes"), 1024.0);
    assert_eq!(per("read_bytes"), 2048.0);
    assert_eq!(per("pdu_errors"), 1.0);
    assert!(per("commands") >= 2.0);
    // The session ends: its series go (bounded cardinality), the portal's counters stay.
    assert!(a.logout());
    assert!(a.read().is_none());
    let text = metrics(&s);
    promtool_check(&text);
    assert_eq!(sample(&text, "sharedisk_iscsi_sessions"), Some(0.0));
    assert!(!text.contains(&nexus), "{text}");
    assert_eq!(
        sample(&text, r#"sharedisk_iscsi_logins_total{result="accepted"}"#),
        Some(1.0)
    );
}

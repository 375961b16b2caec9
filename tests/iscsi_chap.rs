//! CHAP on the iSCSI target of the daemon binary (RFC 7143 §12.1.3, RFC 1994 MD5): libiscsi's
//! tools log in with one-way and mutual CHAP (and fail with a wrong secret, or when the target
//! answers a mutual challenge with the wrong secret); the raw initiator drives the hostile
//! cases, each refused with 0201 and logged with the initiator and portal, never the secret;
//! `config check` refuses secret files that are open to others, too short, or not files; a
//! discovery session does SendTargets and nothing else.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::iscsi_client::{free_port, IscsiClient, INITIATOR_A, INITIATOR_B};
use common::process::DaemonProcess;
use common::scsi_client::good;
use md5::{Digest, Md5};

const ISID: [u8; 6] = [0x80, 0x12, 0x34, 0x56, 0x00, 0x01];
const PLAIN: &str = "iqn.2026-01.org.example:plain";
/// INITIATOR_A: one-way CHAP.
const ALICE: (&str, &str) = ("alice", "alice-secret-16b");
/// INITIATOR_B: mutual CHAP, the target answering as TARGET.
const BOB: (&str, &str) = ("bob", "bob-secret-0123456");
const TARGET: (&str, &str) = ("target", "target-secret-987");
const AUTH_FAILURE: u16 = 0x0201;

use common::iscsi_portal::PortalDaemon as Setup;

fn secret(dir: &Path, name: &str, text: &str, mode: u32) {
    let p = dir.join(name);
    std::fs::write(&p, format!("{text}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The configuration: guest vm1, INITIATOR_A with one-way CHAP, INITIATOR_B with mutual CHAP,
/// PLAIN without; `extra` is appended to the first initiator's entry.
fn config(dir: &Path, listen: &str, extra: &str) -> std::path::PathBuf {
    let file = dir.join("sharedisk.toml");
    let toml = format!(
        r#"[image]
path = "{dir}/disk.img"

[server]
socket_dir = "{dir}/sock"

[[guest]]
name = "vm1"

[iscsi]
listen = ["{listen}"]

[[iscsi.initiator]]
name = "{INITIATOR_A}"
chap_user = "{a}"
chap_secret_file = "a.secret"
{extra}
[[iscsi.initiator]]
name = "{INITIATOR_B}"
chap_user = "{b}"
chap_secret_file = "b.secret"
target_chap_user = "{t}"
target_chap_secret_file = "t.secret"

[[iscsi.initiator]]
name = "{PLAIN}"
"#,
        dir = dir.display(),
        a = ALICE.0,
        b = BOB.0,
        t = TARGET.0,
    );
    std::fs::write(&file, toml).unwrap();
    file
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    for (f, s) in [
        ("a.secret", ALICE.1),
        ("b.secret", BOB.1),
        ("t.secret", TARGET.1),
    ] {
        secret(dir.path(), f, s, 0o600);
    }
    let listen = format!("127.0.0.1:{}", free_port());
    let cfg = config(dir.path(), &listen, "");
    let daemon = DaemonProcess::start_args(
        dir.path(),
        &["vm1"],
        "16M",
        &["--config", cfg.to_str().unwrap()],
    );
    let target = common::iscsi_client::served_target(&daemon);
    Setup {
        daemon,
        addr: listen.parse().unwrap(),
        target,
        _dir: dir,
    }
}

/// RFC 1994's response, computed here independently of the target's code.
fn md5_response(id: u8, secret: &[u8], challenge: &[u8]) -> String {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    let mut s = "0x".to_string();
    for b in h.finalize() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn unhex(v: &str) -> Vec<u8> {
    let h = v.strip_prefix("0x").expect("a hex value");
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
        .collect()
}

fn get<'a>(keys: &'a [(String, String)], k: &str) -> Option<&'a str> {
    keys.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

/// Security stage, CSG 0, no transit.
const SECURITY: u8 = 0x01;
/// Security stage, transit to the operational stage.
const SECURITY_TO_OP: u8 = 0x80 | 0x01;
/// Operational stage, transit to the full feature phase.
const OP_TO_FULL: u8 = 0x80 | (1 << 2) | 3;

/// A CHAP login up to the challenge: the connection, CHAP_I and the challenge.
fn challenged(
    s: &Setup,
    initiator: &str,
    session: &str,
) -> Result<(IscsiClient, u8, Vec<u8>), u16> {
    let mut c = IscsiClient::connect(s.addr, ISID);
    let mut keys = vec![
        ("InitiatorName", initiator),
        ("SessionType", session),
        ("AuthMethod", "CHAP,None"),
    ];
    if session == "Normal" {
        keys.push(("TargetName", &s.target));
    }
    let (_, a) = c.login_request(SECURITY, &keys)?;
    assert_eq!(get(&a, "AuthMethod"), Some("CHAP"), "{a:?}");
    let (_, a) = c.login_request(SECURITY, &[("CHAP_A", "7,5")])?;
    assert_eq!(get(&a, "CHAP_A"), Some("5"), "{a:?}");
    let id: u8 = get(&a, "CHAP_I").unwrap().parse().unwrap();
    let challenge = unhex(get(&a, "CHAP_C").unwrap());
    Ok((c, id, challenge))
}

/// The operational stage after the security stage.
fn finish(c: &mut IscsiClient) -> Result<(), u16> {
    c.login_request(
        OP_TO_FULL,
        &[("HeaderDigest", "None"), ("DataDigest", "None")],
    )
    .map(|_| ())
}

/// A complete one-way CHAP login of `initiator` as `(user, secret)`.
fn chap_login(
    s: &Setup,
    initiator: &str,
    (user, secret): (&str, &str),
) -> Result<IscsiClient, u16> {
    let (mut c, id, challenge) = challenged(s, initiator, "Normal")?;
    let r = md5_response(id, secret.as_bytes(), &challenge);
    let (flags, _) = c.login_request(SECURITY_TO_OP, &[("CHAP_N", user), ("CHAP_R", &r)])?;
    assert_eq!(
        flags & 0x83,
        0x81,
        "the target moves to the operational stage"
    );
    finish(&mut c)?;
    Ok(c)
}

#[test]
fn raw_one_way_and_mutual_chap_and_every_hostile_case_fails_with_0201() {
    let s = setup();
    // One-way: the session works.
    let mut a = chap_login(&s, INITIATOR_A, ALICE)
        .unwrap_or_else(|e| panic!("one-way CHAP login: {e:#06x}: {}", s.daemon.log()));
    a.drain_ua();
    good(&a.read16(0, 1), "READ after one-way CHAP");
    assert!(a.logout());

    // Mutual: the target's CHAP_N and CHAP_R answer our challenge with its own secret.
    let (mut b, id, challenge) = challenged(&s, INITIATOR_B, "Normal").unwrap();
    let ours = [0x5a; 16];
    let r = md5_response(id, BOB.1.as_bytes(), &challenge);
    let (_, ans) = b
        .login_request(
            SECURITY_TO_OP,
            &[
                ("CHAP_N", BOB.0),
                ("CHAP_R", &r),
                ("CHAP_I", "77"),
                ("CHAP_C", "0x5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a"),
            ],
        )
        .expect("mutual CHAP");
    assert_eq!(get(&ans, "CHAP_N"), Some(TARGET.0));
    assert_eq!(
        get(&ans, "CHAP_R").unwrap(),
        md5_response(77, TARGET.1.as_bytes(), &ours)
    );
    finish(&mut b).unwrap();
    b.drain_ua();
    good(&b.read16(0, 1), "READ after mutual CHAP");
    let v = common::ctl::ctl_json(&s.daemon.control(), &["iscsi", "sessions"]);
    assert_eq!(v["sessions"][0]["initiator"], INITIATOR_B, "{v}");
    assert_eq!(v["sessions"][0]["auth"], "mutual CHAP", "{v}");

    // Challenges are fresh per login.
    let (_, _, c1) = challenged(&s, INITIATOR_A, "Normal").unwrap();
    let (_, _, c2) = challenged(&s, INITIATOR_A, "Normal").unwrap();
    assert_eq!(c1.len(), 16);
    assert_ne!(c1, c2, "two logins, two challenges");

    hostile_cases(&s);

    // A transit asked before CHAP completes is declined: the target stays in the security stage.
    let mut c = IscsiClient::connect(s.addr, ISID);
    let (flags, _) = c
        .login_request(
            SECURITY_TO_OP,
            &[
                ("InitiatorName", INITIATOR_A),
                ("TargetName", &s.target),
                ("AuthMethod", "CHAP"),
            ],
        )
        .unwrap();
    assert_eq!(flags & 0x80, 0, "transit declined");
    // Someone without CHAP configured logs in with None, and cannot force CHAP.
    let mut p = IscsiClient::login(s.addr, PLAIN, &s.target, ISID).expect("AuthMethod=None");
    assert!(p.logout());

    let log = s.daemon.log();
    for line in [
        &format!("initiator {INITIATOR_A}: wrong CHAP_R"),
        &format!("initiator {INITIATOR_A}: CHAP_N is not the configured chap_user"),
        &format!("initiator {INITIATOR_B}: CHAP_C reflects the target's challenge"),
        &format!("initiator {INITIATOR_A} must authenticate with CHAP: it offered AuthMethod=None"),
        &format!("(portal {})", s.addr),
    ] {
        assert!(log.contains(line.as_str()), "{line:?} not in {log}");
    }
    for secret in [ALICE.1, BOB.1, TARGET.1] {
        assert!(!log.contains(secret), "a secret in the log");
    }
    s.daemon.assert_no_panic();
}

/// Every way to fail CHAP: 0201 at the request that fails.
fn hostile_cases(s: &Setup) {
    let refused = |r: Result<IscsiClient, u16>, what: &str| {
        assert_eq!(r.err(), Some(AUTH_FAILURE), "{what}");
    };
    refused(
        chap_login(s, INITIATOR_A, (ALICE.0, "alice-secret-16c")),
        "a wrong secret",
    );
    refused(
        chap_login(s, INITIATOR_A, ("mallory", ALICE.1)),
        "an unknown CHAP_N",
    );
    refused(
        chap_login(s, INITIATOR_A, BOB),
        "another initiator's credentials",
    );
    let none = IscsiClient::login(s.addr, INITIATOR_A, &s.target, ISID);
    assert_eq!(
        none.err(),
        Some(AUTH_FAILURE),
        "AuthMethod=None from a CHAP initiator"
    );
    // The security stage skipped: the first request in the operational stage.
    let mut c = IscsiClient::connect(s.addr, ISID);
    let skip = c.login_request(
        OP_TO_FULL,
        &[("InitiatorName", INITIATOR_A), ("TargetName", &s.target)],
    );
    assert_eq!(skip.err(), Some(AUTH_FAILURE), "security stage skipped");
    // No AuthMethod at all (None implied).
    let mut c = IscsiClient::connect(s.addr, ISID);
    let silent = c.login_request(
        SECURITY_TO_OP,
        &[("InitiatorName", INITIATOR_A), ("TargetName", &s.target)],
    );
    assert_eq!(silent.err(), Some(AUTH_FAILURE), "no AuthMethod offered");
    // A reflected challenge: the initiator's CHAP_C is ours.
    let (mut c, id, challenge) = challenged(s, INITIATOR_B, "Normal").unwrap();
    let r = md5_response(id, BOB.1.as_bytes(), &challenge);
    let mut hex = "0x".to_string();
    for b in &challenge {
        hex.push_str(&format!("{b:02x}"));
    }
    let reflected = c.login_request(
        SECURITY_TO_OP,
        &[
            ("CHAP_N", BOB.0),
            ("CHAP_R", &r),
            ("CHAP_I", "1"),
            ("CHAP_C", &hex),
        ],
    );
    assert_eq!(reflected.err(), Some(AUTH_FAILURE), "a reflected challenge");
    // Mutual CHAP asked of a target with no target secret for this initiator.
    let (mut c, id, challenge) = challenged(s, INITIATOR_A, "Normal").unwrap();
    let r = md5_response(id, ALICE.1.as_bytes(), &challenge);
    let mutual = c.login_request(
        SECURITY_TO_OP,
        &[
            ("CHAP_N", ALICE.0),
            ("CHAP_R", &r),
            ("CHAP_I", "1"),
            ("CHAP_C", "0x0102030405060708"),
        ],
    );
    assert_eq!(
        mutual.err(),
        Some(AUTH_FAILURE),
        "mutual CHAP not configured"
    );
    // An algorithm other than MD5; a malformed response.
    let mut c = IscsiClient::connect(s.addr, ISID);
    c.login_request(
        SECURITY,
        &[
            ("InitiatorName", INITIATOR_A),
            ("TargetName", &s.target),
            ("AuthMethod", "CHAP"),
        ],
    )
    .unwrap();
    assert_eq!(
        c.login_request(SECURITY, &[("CHAP_A", "6,7")]).err(),
        Some(AUTH_FAILURE),
        "CHAP_A without MD5"
    );
    let (mut c, _, _) = challenged(s, INITIATOR_A, "Normal").unwrap();
    let bad = c.login_request(SECURITY_TO_OP, &[("CHAP_N", ALICE.0), ("CHAP_R", "0xzz")]);
    assert_eq!(bad.err(), Some(AUTH_FAILURE), "a malformed CHAP_R");
    // CHAP only, from an initiator without CHAP configured.
    let chap_only = IscsiClient::login_with(
        s.addr,
        &[
            ("InitiatorName", PLAIN),
            ("TargetName", &s.target),
            ("AuthMethod", "CHAP"),
        ],
        &[],
        ISID,
    );
    assert_eq!(
        chap_only.err(),
        Some(AUTH_FAILURE),
        "CHAP offered, none configured"
    );
}

#[test]
fn a_discovery_session_authenticates_and_does_send_targets_only() {
    let s = setup();
    let (mut c, id, challenge) = challenged(&s, INITIATOR_A, "Discovery").unwrap();
    let r = md5_response(id, ALICE.1.as_bytes(), &challenge);
    c.login_request(SECURITY_TO_OP, &[("CHAP_N", ALICE.0), ("CHAP_R", &r)])
        .unwrap();
    finish(&mut c).unwrap();
    let text = c.immediate(0x04, 0x80, b"SendTargets=All\0", |b| {
        b[20..24].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
    });
    let text = String::from_utf8_lossy(&text.expect("a Text response").data).into_owned();
    assert!(text.contains(&format!("TargetName={}", s.target)), "{text}");
    // A SCSI command (TEST UNIT READY) on a discovery session: Reject, protocol error.
    let rej = c.immediate(0x01, 0x80, &[], |_| {}).expect("a Reject");
    assert_eq!(
        (rej.opcode(), rej.bhs[2]),
        (0x3f, 0x04),
        "Reject, protocol error"
    );
    assert!(c.logout());
}

/// Runs a libiscsi tool; whether it succeeded, and its output.
fn libiscsi(tool: &str, initiator: &str, url: &str) -> (bool, String) {
    let out = Command::new(tool)
        .args(["-i", initiator, url])
        .output()
        .unwrap_or_else(|e| panic!("{tool} (libiscsi-bin): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn libiscsi_logs_in_with_one_way_and_mutual_chap() {
    let s = setup();
    let (host, t) = (s.addr, &s.target);
    let url = |user: &str, pw: &str, args: &str| format!("iscsi://{user}%{pw}@{host}/{t}/0{args}");
    let (ok, out) = libiscsi("iscsi-inq", INITIATOR_A, &url(ALICE.0, ALICE.1, ""));
    assert!(ok, "one-way CHAP: {out}");
    assert!(out.contains("sharedisk") || out.contains("Vendor"), "{out}");
    let (ok, out) = libiscsi(
        "iscsi-inq",
        INITIATOR_A,
        &url(ALICE.0, "alice-secret-xxx", ""),
    );
    assert!(!ok, "a wrong secret logs in: {out}");
    // Mutual: libiscsi checks the target's answer against target_password.
    let mutual = |pw: &str| {
        url(
            BOB.0,
            BOB.1,
            &format!("?target_user={}&target_password={pw}", TARGET.0),
        )
    };
    let (ok, out) = libiscsi("iscsi-inq", INITIATOR_B, &mutual(TARGET.1));
    assert!(ok, "mutual CHAP: {out}");
    let (ok, out) = libiscsi("iscsi-inq", INITIATOR_B, &mutual("target-secret-xxx"));
    assert!(
        !ok,
        "libiscsi accepted a target with the wrong secret: {out}"
    );
    // Discovery with CHAP lists the target; without, the login fails.
    let (ok, out) = libiscsi(
        "iscsi-ls",
        INITIATOR_A,
        &format!("iscsi://{}%{}@{host}", ALICE.0, ALICE.1),
    );
    assert!(ok && out.contains(t.as_str()), "iscsi-ls with CHAP: {out}");
    let (ok, out) = libiscsi("iscsi-ls", INITIATOR_A, &format!("iscsi://{host}"));
    assert!(
        !ok || !out.contains(t.as_str()),
        "iscsi-ls without CHAP: {out}"
    );
}

#[test]
fn config_check_refuses_weak_or_exposed_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (f, s) in [("b.secret", BOB.1), ("t.secret", TARGET.1)] {
        secret(d, f, s, 0o600);
    }
    std::fs::write(d.join("disk.img"), vec![0u8; 1 << 20]).unwrap();
    let cfg = config(d, "127.0.0.1:3260", "");
    let check = || common::ctl::sharedisk(&["config", "check", cfg.to_str().unwrap()]);
    let cases: [(&str, u32, &str); 4] = [
        (ALICE.1, 0o600, ""),
        (ALICE.1, 0o640, "readable by group or others (mode 640)"),
        (ALICE.1, 0o604, "readable by group or others (mode 604)"),
        ("short-secret", 0o600, ""),
    ];
    for (text, mode, want) in cases {
        secret(d, "a.secret", text, mode);
        let out = check();
        if want.is_empty() {
            assert_eq!(out.code, 0, "{text} {mode:o}: {}", out.stderr);
            let line = format!(
                "iscsi access:   {INITIATOR_A} (CHAP), {INITIATOR_B} (mutual CHAP), {PLAIN}"
            );
            assert!(out.stdout.contains(&line), "{}", out.stdout);
        } else {
            assert_ne!(out.code, 0, "{mode:o} accepted");
            assert!(out.stderr.contains(want), "{}", out.stderr);
        }
    }
    secret(d, "a.secret", "eleven-byte", 0o600);
    let out = check();
    assert!(
        out.stderr.contains("the CHAP secret is 11 bytes"),
        "{}",
        out.stderr
    );
    // A directory, and the same secret both ways.
    std::fs::remove_file(d.join("a.secret")).unwrap();
    std::fs::create_dir(d.join("a.secret")).unwrap();
    let out = check();
    assert!(out.stderr.contains("not a regular file"), "{}", out.stderr);
    std::fs::remove_dir(d.join("a.secret")).unwrap();
    secret(d, "a.secret", ALICE.1, 0o600);
    secret(d, "t.secret", BOB.1, 0o600);
    let out = check();
    assert!(
        out.stderr.contains("one secret for both directions"),
        "{}",
        out.stderr
    );
    // A user without a secret file.
    std::fs::write(
        &cfg,
        format!("[image]\npath = \"{}/disk.img\"\n[iscsi]\nlisten = [\"127.0.0.1:3260\"]\n[[iscsi.initiator]]\nname = \"{PLAIN}\"\nchap_user = \"x\"\n", d.display()),
    )
    .unwrap();
    let out = check();
    assert!(
        out.stderr.contains("`chap_user` needs `chap_secret_file`"),
        "{}",
        out.stderr
    );
}

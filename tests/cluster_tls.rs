//! An etcd only the daemons can write: a real etcd (Debian's 3.4) speaking TLS only, requiring
//! client certificates (`--client-cert-auth`) and with authentication on (a role per disk with
//! readwrite on that disk's prefix only). A daemon with the right certificate (its common name
//! an etcd user with the disk's role), or the right user and password, joins and fences as
//! before; one without is refused at start with a message saying what failed and which setting
//! to check, and leaves the state untouched. Passwords' tokens expire (`--auth-token-ttl`) and
//! are renewed. Plain http:// needs `insecure = true` and warns at every start.
//!
//! Needs `etcd`, `etcdctl` and `openssl`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::etcd::{ClusterDaemon, Etcd, Pki, Timing, FAST};
use common::scsi_client::*;

/// WRITE EXCLUSIVE – REGISTRANTS ONLY.
const WE_RO: u8 = 5;

/// The keys under `/sharedisk/` with their mod revisions, read by root; `acks/h1` (rewritten by
/// h1's renewals) without its revision.
fn disk_keys(etcd: &Etcd, pki: &Pki) -> Vec<String> {
    let out = etcd.etcdctl_ok(pki, &["get", "--prefix", "/sharedisk/", "-w", "fields"]);
    let mut keys = Vec::new();
    for l in out.lines() {
        if let Some(k) = l.strip_prefix("\"Key\" : ") {
            keys.push(k.to_string());
        } else if let Some(r) = l.strip_prefix("\"ModRevision\" : ") {
            if let Some(k) = keys.last_mut() {
                if !k.ends_with("acks/h1\"") {
                    k.push_str(&format!(" at {r}"));
                }
            }
        }
    }
    keys
}

/// An etcd with TLS, client certificates and authentication, its PKI in `dir/pki`: users `h1`
/// and `h2` (certificates only) and `pw` (password `right-password`) with the role of
/// `test-disk`, and `intruder` with the role of `other-disk` only.
fn secure_etcd(dir: &Path, token_ttl_s: u32) -> (Pki, Etcd) {
    let pki = Pki::new(&dir.join("pki"));
    let etcd = Etcd::start_tls(dir, &pki, token_ttl_s);
    etcd.enable_auth(
        &pki,
        &["test-disk", "other-disk"],
        &[
            ("h1", "", "test-disk"),
            ("h2", "", "test-disk"),
            ("pw", "right-password", "test-disk"),
            ("intruder", "", "other-disk"),
        ],
    );
    (pki, etcd)
}

/// A client past its power-on unit attention.
fn client(socket: &Path) -> ScsiClient {
    let mut c = ScsiClient::connect(socket);
    assert_eq!(c.drain_ua(), vec![POWER_ON]);
    c
}

/// A 0600 file holding `text`.
fn secret(dir: &Path, name: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

#[test]
fn mutual_tls_with_certificate_users_fences_across_two_daemons() {
    let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    let (pki, etcd) = secure_etcd(dir.path(), 300);
    let h1_cert = pki.client("ca", "h1");
    let h2_cert = pki.client("ca", "h2");
    let eps = etcd.endpoints();
    let h1 = ClusterDaemon::start_with(
        dir.path(),
        &eps,
        "h1",
        &["vm1"],
        &FAST,
        &pki.settings(&h1_cert),
        &[],
    );
    let h2 = ClusterDaemon::start_with(
        dir.path(),
        &eps,
        "h2",
        &["vm2"],
        &FAST,
        &pki.settings(&h2_cert),
        &[],
    );
    let mut vm1 = client(&h1.scsi("vm1"));
    let mut vm2 = client(&h2.scsi("vm2"));
    good(&vm1.prout(SA_REGISTER, 0, 0, 0x1, false), "vm1 REGISTER");
    good(&vm1.prout(SA_RESERVE, WE_RO, 0x1, 0, false), "vm1 RESERVE");
    good(&vm1.write16(8, &[0x11; 512]), "vm1 writes as a registrant");
    good(&vm2.prout(SA_REGISTER, 0, 0, 0x2, false), "vm2 REGISTER");
    good(
        &vm2.prout(SA_PREEMPT_AND_ABORT, WE_RO, 0x2, 0x1, false),
        "vm2 PREEMPT AND ABORT of vm1, across daemons, over TLS",
    );
    vm1.drain_ua();
    conflict(&vm1.write16(8, &[0x66; 512]), "vm1 after it was preempted");
    assert_eq!(vm1.read_keys().1, vec![0x2]);
    // The shared state is in etcd under the disk's prefix, and no start warned about plain http.
    let keys = disk_keys(&etcd, &pki);
    assert!(
        keys.iter()
            .any(|k| k.starts_with("\"/sharedisk/v1/test-disk/state\"")),
        "{keys:?}"
    );
    for d in [&h1, &h2] {
        assert!(!d.log_text().contains("plain http://"), "{}", d.log_text());
    }
}

/// What one wrong setting must make the daemon say (the substrings its log must hold).
struct Refusal {
    what: &'static str,
    security: String,
    says: &'static [&'static str],
}

#[test]
fn a_daemon_without_the_right_certificate_or_role_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    let (pki, etcd) = secure_etcd(dir.path(), 300);
    let h1_cert = pki.client("ca", "h1");
    let eps = etcd.endpoints();
    let h1 = ClusterDaemon::start_with(
        dir.path(),
        &eps,
        "h1",
        &["vm1"],
        &FAST,
        &pki.settings(&h1_cert),
        &[],
    );
    let mut vm1 = client(&h1.scsi("vm1"));
    good(&vm1.prout(SA_REGISTER, 0, 0, 0x1, false), "vm1 REGISTER");
    let ca = pki.dir.join("ca.pem");
    let foreign = pki.client("other-ca", "h2");
    let intruder = pki.client("ca", "intruder");
    let nobody = pki.client("ca", "nobody");
    let open_key = pki.client("ca", "h2");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::Permissions::from_mode(0o644);
        std::fs::set_permissions(&open_key.1, mode).unwrap();
    }
    let bad_pw = secret(dir.path(), "bad-pw", "wrong-password\n");
    let cases = [
        Refusal {
            what: "no client certificate",
            security: format!("ca_file = {ca:?}\n"),
            says: &["TLS handshake", "cert_file"],
        },
        Refusal {
            what: "a certificate of another CA",
            security: pki.settings(&foreign),
            says: &["TLS handshake", "cert_file"],
        },
        Refusal {
            what: "the server checked against another CA",
            security: pki.settings(&intruder).replace("ca.pem", "other-ca.pem"),
            says: &["TLS handshake", "ca_file"],
        },
        Refusal {
            what: "a user whose role is on another disk's prefix",
            security: pki.settings(&intruder),
            says: &[
                "permission",
                "/sharedisk/v1/test-disk/",
                "cluster.cert_file",
            ],
        },
        Refusal {
            what: "a wrong password",
            security: format!(
                "{}user = \"pw\"\npassword_file = {bad_pw:?}\n",
                pki.settings(&nobody)
            ),
            says: &["refused the user and password", "cluster.password_file"],
        },
        Refusal {
            what: "a private key others may read",
            security: pki.settings(&open_key),
            says: &["key_file", "mode 0644", "chmod 600"],
        },
    ];
    let before = disk_keys(&etcd, &pki);
    for (i, case) in cases.iter().enumerate() {
        let node = format!("x{i}");
        let cfg = ClusterDaemon::config(dir.path(), &eps, &node, &["vmx"], &FAST, &case.security);
        let (ok, log) = ClusterDaemon::run_to_exit(dir.path(), &node, &cfg);
        assert!(!ok, "{}: the daemon started: {log}", case.what);
        eprintln!("{}: {}", case.what, log.lines().last().unwrap_or_default());
        for s in case.says {
            assert!(log.contains(s), "{}: the log lacks {s:?}: {log}", case.what);
        }
        // It could not change the state: not a key more, not a revision newer.
        assert_eq!(disk_keys(&etcd, &pki), before, "{}", case.what);
    }
    // And it cannot read it: etcd refuses the intruder's certificate user.
    let p = |f: &PathBuf| f.to_str().unwrap().to_string();
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", etcd.url))
        .arg(format!("--cacert={}", p(&ca)))
        .arg(format!("--cert={}", p(&intruder.0)))
        .arg(format!("--key={}", p(&intruder.1)))
        .args(["get", "/sharedisk/v1/test-disk/state"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission denied"),
        "{out:?}"
    );
    // The daemon that belongs goes on.
    good(&vm1.prout(SA_RESERVE, WE_RO, 0x1, 0, false), "vm1 RESERVE");
}

#[test]
fn a_password_user_keeps_its_lease_past_the_token_ttl() {
    let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    // Tokens expire 2 s after their last use; the lease is renewed every 2.5 s.
    let (pki, etcd) = secure_etcd(dir.path(), 2);
    // TLS needs a client certificate; its common name is no etcd user, so only the password
    // authenticates.
    let cert = pki.client("ca", "nobody");
    let pw = secret(dir.path(), "pw", "right-password\n");
    let timing = Timing {
        lease_ms: 7500,
        max_io_ms: 300,
        hold_ms: 400,
        budget_ms: 10_000,
    };
    let security = format!(
        "{}user = \"pw\"\npassword_file = {pw:?}\nrenew_ms = 2500\n",
        pki.settings(&cert)
    );
    let eps = etcd.endpoints();
    let h1 = ClusterDaemon::start_with(dir.path(), &eps, "h1", &["vm1"], &timing, &security, &[]);
    let mut vm1 = client(&h1.scsi("vm1"));
    good(&vm1.prout(SA_REGISTER, 0, 0, 0x1, false), "vm1 REGISTER");
    // Four renewals, each with a token idle for longer than its ttl.
    std::thread::sleep(Duration::from_millis(10_500));
    good(&vm1.write16(8, &[0x11; 512]), "vm1 writes");
    good(&vm1.prout(SA_RESERVE, WE_RO, 0x1, 0, false), "vm1 RESERVE");
    let log = h1.log_text();
    assert!(!log.contains("read lease lost"), "{log}");
    assert!(!log.contains("invalid auth token"), "{log}");
}

/// A member that does not answer at start does not stop a password user: its client
/// authenticates on its first call, and the calls go to the member that answers.
#[test]
fn a_password_user_starts_with_an_etcd_member_down() {
    let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    let (pki, etcd) = secure_etcd(dir.path(), 300);
    let cert = pki.client("ca", "nobody");
    let pw = secret(dir.path(), "pw", "right-password\n");
    let security = format!(
        "{}user = \"pw\"\npassword_file = {pw:?}\n",
        pki.settings(&cert)
    );
    let down = format!("https://127.0.0.1:{}", common::etcd::free_port());
    let eps = [down.clone(), etcd.url.clone()];
    let h1 = ClusterDaemon::start_with(dir.path(), &eps, "h1", &["vm1"], &FAST, &security, &[]);
    let mut vm1 = client(&h1.scsi("vm1"));
    good(&vm1.prout(SA_REGISTER, 0, 0, 0x1, false), "vm1 REGISTER");
    let log = h1.log_text();
    assert!(
        log.contains(&format!("etcd {down}: cannot authenticate yet")),
        "{log}"
    );
}

#[test]
fn plain_http_needs_insecure_true_and_warns_at_every_start() {
    let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    let etcd = Etcd::start(dir.path());
    let eps = etcd.endpoints();
    let cfg = ClusterDaemon::config(dir.path(), &eps, "h0", &["vm0"], &FAST, "");
    let (ok, log) = ClusterDaemon::run_to_exit(dir.path(), "h0", &cfg);
    assert!(!ok, "{log}");
    assert!(
        log.contains("insecure = true") && log.contains("ca_file"),
        "{log}"
    );
    for _ in 0..2 {
        let h1 = ClusterDaemon::start(dir.path(), &eps, "h1", &["vm1"], &FAST, &[]);
        let log = h1.log_text();
        assert!(
            log.contains("WARN") && log.contains("plain http://"),
            "{log}"
        );
    }
}

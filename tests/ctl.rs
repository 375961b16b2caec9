//! The control socket and `sharedisk ctl`, through the daemon binary: a configuration file with
//! socket group and mode, guests doing real I/O and PR commands (libblkio on blk, a raw
//! virtio-scsi initiator on scsi), host-side PR administration with its SPC side effects, the
//! counters, exit codes, per-guest read-only, and the state file read offline.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::blkio_client::BlkClient;
use common::ctl::{ctl, ctl_json, sharedisk};
use common::process::DaemonProcess;
use common::scsi_client::*;
use common::vu_frontend::{VuFrontend, VIRTIO_BLK_T_OUT};

const RO_FEATURE: u64 = 1 << 5; // VIRTIO_BLK_F_RO

fn write_config(dir: &Path) -> std::path::PathBuf {
    let cfg = dir.join("sharedisk.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"# a lab
[image]
path = "{dir}/disk.img"

[server]
socket_dir = "{dir}/sock"
socket_group = "disk"
socket_mode = "0660"

[[guest]]
name = "vm1"

[[guest]]
name = "vm2"

[[guest]]
name = "vm3"
read_only = true
"#,
            dir = dir.display()
        ),
    )
    .unwrap();
    cfg
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn ctl_reads_and_administers_a_running_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path());
    // The flags DaemonProcess passes agree with the file; --size fills in what it leaves out.
    let mut d = DaemonProcess::start_args(
        dir.path(),
        &["vm1", "vm2", "vm3"],
        "64M",
        &["--config", cfg.to_str().unwrap()],
    );
    let sock = d.control();

    // The socket directory was created; guests' sockets get the configured group and mode, the
    // control socket stays the owner's.
    let disk_gid = sharedisk::daemon::sockets::gid_of("disk").unwrap();
    for g in ["vm1", "vm2", "vm3"] {
        for s in [d.blk(g), d.scsi(g)] {
            assert_eq!(mode(&s), 0o660, "{}", s.display());
            assert_eq!(std::fs::metadata(&s).unwrap().gid(), disk_gid);
        }
    }
    assert_eq!(mode(&sock), 0o600);

    let status = ctl_json(&sock, &["status"]);
    assert_eq!(status["schema"], 1);
    assert_eq!(status["size_bytes"], 64 << 20);
    assert_eq!(status["block_size"], 512);
    assert_eq!(status["max_shares"], 16);
    assert_eq!(status["guests"], 3);
    assert!(status["serial"].as_str().unwrap().starts_with("sharedisk-"));
    let text = ctl(&sock, &["status"]).ok().stdout;
    assert!(text.contains(status["serial"].as_str().unwrap()), "{text}");
    // --json (and --socket) after the subcommand too (it was a usage error).
    let after = sharedisk(&[
        "ctl",
        "status",
        "--json",
        "--socket",
        sock.to_str().unwrap(),
    ])
    .ok()
    .json();
    assert_eq!(after["serial"], status["serial"]);
    assert!(text.contains("67108864 bytes"), "{text}");

    // vm1 holds a Write Exclusive, registrants only reservation; vm2 is registered and writes.
    let mut s1 = ScsiClient::connect(&d.scsi("vm1"));
    let mut s2 = ScsiClient::connect(&d.scsi("vm2"));
    s1.drain_ua();
    s2.drain_ua();
    assert!(s1.prout(SA_REGISTER, 0, 0, 0x11, false).is_good());
    assert!(s2.prout(SA_REGISTER, 0, 0, 0x22, false).is_good());
    assert!(s1.prout(SA_RESERVE, 5, 0x11, 0, false).is_good());
    let mut b2 = BlkClient::connect(&d.blk("vm2")).unwrap();
    b2.write(4096, &[0x5a; 4096]).expect("a registrant writes");

    let pr = ctl_json(&sock, &["pr", "show"]);
    assert_eq!(pr["generation"], s1.generation());
    assert_eq!(pr["reservation"]["holder"], "vm1");
    assert_eq!(pr["reservation"]["key"], "0x11");
    assert_eq!(pr["reservation"]["type"], 5);
    let regs = pr["registrations"].as_array().unwrap();
    assert_eq!(regs.len(), 2);
    assert_eq!(
        (&regs[1]["guest"], &regs[1]["key"]),
        (&"vm2".into(), &"0x22".into())
    );
    let text = ctl(&sock, &["pr", "show"]).ok().stdout;
    assert!(
        text.contains("held by vm1 (key 0x11), type 5"),
        "pr show prints the holder: {text}"
    );

    let guests = ctl_json(&sock, &["guests"]);
    let g = &guests["guests"];
    assert_eq!(g[0]["name"], "vm1");
    assert_eq!(g[0]["scsi"]["connected"], true);
    assert_eq!(g[0]["blk"]["connected"], false);
    assert_eq!(g[1]["blk"]["connected"], true);
    assert_eq!(g[2]["read_only"], true);
    assert_eq!(g[0]["initiator"], "iqn.2026-11.io.sharedisk:vm1");

    // Usage errors, an unreachable daemon, an unknown guest.
    assert_eq!(ctl(&sock, &["pr", "preempt", "--victim", "vm2"]).code, 2);
    assert_eq!(ctl(&sock, &["pr", "clear"]).code, 2);
    assert_eq!(ctl(&dir.path().join("nope.sock"), &["status"]).code, 3);
    assert_eq!(
        ctl(&sock, &["pr", "preempt", "--victim", "vm9", "--yes"]).code,
        1
    );

    // The host preempts vm2: a real PR change, fencing vm2 on both devices.
    let gen = s1.generation();
    let after = ctl_json(
        &sock,
        &["pr", "preempt", "--victim", "vm2", "--abort", "--yes"],
    );
    assert_eq!(after["generation"], gen + 1);
    assert_eq!(after["registrations"].as_array().unwrap().len(), 1);
    assert_eq!(s1.generation(), gen + 1);
    assert!(
        b2.write(4096, &[0xa5; 4096]).is_err(),
        "vm2 is fenced on blk"
    );
    assert_eq!(s2.drain_ua(), vec![(6, 0x2a, 5)]);
    assert_eq!(s2.write16(8, &[1; 512]).status, RESERVATION_CONFLICT);
    assert!(
        s1.write16(8, &[1; 512]).is_good(),
        "the holder still writes"
    );
    // vm2 is no longer registered: refused by the reservation rules.
    let again = ctl(&sock, &["pr", "preempt", "--victim", "vm2", "--yes"]);
    assert_eq!(again.code, 24, "{}", again.stderr);
    let again = ctl(
        &sock,
        &["--json", "pr", "preempt", "--victim", "vm2", "--yes"],
    );
    assert_eq!(again.code, 24);
    assert_eq!(again.json()["error"]["code"], 24);

    // A read-only guest: the feature bit on blk, and refused writes on both devices.
    let mut fe = VuFrontend::connect(&d.blk("vm3"), 1, 128);
    assert_ne!(
        fe.acked_features() & RO_FEATURE,
        0,
        "vm3 sees VIRTIO_BLK_F_RO"
    );
    let (st, _) = fe.blk_request(VIRTIO_BLK_T_OUT, 64, &[7; 512], 0);
    assert_eq!(st, 1, "vm3's blk write is IOERR");
    drop(fe);
    let mut s3 = ScsiClient::connect(&d.scsi("vm3"));
    s3.drain_ua();
    assert!(s3.prout(SA_REGISTER, 0, 0, 0x33, false).is_good());
    check(&s3.write16(64, &[7; 512]), (7, 0x27, 0), "vm3's scsi write");
    assert!(s3.read16(64, 1).is_good());

    // The counters saw all of it.
    let stats = ctl_json(&sock, &["stats"]);
    let guest = |name: &str| {
        stats["guests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == name)
            .unwrap()
            .clone()
    };
    let op = |g: &serde_json::Value, path: &str, op: &str| {
        g["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["path"] == path)
            .unwrap()["ops"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["op"] == op)
            .unwrap()
            .clone()
    };
    let vm2 = guest("vm2");
    let w = op(&vm2, "blk", "write");
    assert_eq!(
        (w["ok"].as_u64(), w["bytes"].as_u64()),
        (Some(1), Some(4096))
    );
    assert_eq!(w["conflicts"], 1);
    assert!(w["latency_p50_seconds"].as_f64().is_some());
    assert_eq!(op(&vm2, "scsi", "write")["conflicts"], 1);
    let vm3 = guest("vm3");
    assert_eq!(op(&vm3, "blk", "write")["errors"], 1);
    assert_eq!(op(&vm3, "scsi", "write")["errors"], 1);
    assert_eq!(op(&vm3, "scsi", "read")["bytes"], 512);
    let pr_out = |g: &serde_json::Value, action: &str| {
        g["pr_out"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["action"] == action)
            .unwrap()
            .clone()
    };
    let vm1 = guest("vm1");
    assert_eq!(pr_out(&vm1, "register")["ok"], 1);
    assert_eq!(pr_out(&vm1, "reserve")["ok"], 1);
    let text = ctl(&sock, &["stats"]).ok().stdout;
    assert!(
        text.lines()
            .any(|l| l.starts_with("vm2") && l.contains("blk") && l.contains("write")),
        "{text}"
    );

    // The host clears everything: 2A/03 to the registrants, persisted before the reply.
    let cleared = ctl_json(&sock, &["pr", "clear", "--yes"]);
    assert_eq!(cleared["generation"], gen + 3);
    assert!(cleared["registrations"].as_array().unwrap().is_empty());
    assert!(cleared["reservation"].is_null());
    assert_eq!(s1.drain_ua(), vec![(6, 0x2a, 3)]);
    assert_eq!(s3.drain_ua(), vec![(6, 0x2a, 3)]);
    assert!(d.log().contains("host CLEAR"), "logged as a host action");

    // Register again, stop, and read the state file offline.
    assert!(s1.prout(SA_REGISTER, 0, 0, 0x77, false).is_good());
    drop((s1, s2, s3, b2));
    d.stop();
    let state = dir.path().join("disk.img.pr");
    let out = sharedisk(&["pr", "show", "--state", state.to_str().unwrap(), "--json"]).ok();
    let v = out.json();
    assert_eq!(v["generation"], gen + 4);
    assert_eq!(v["registrations"][0]["guest"], "vm1");
    assert_eq!(v["registrations"][0]["key"], "0x77");
    let out = sharedisk(&["pr", "show", "--state", state.to_str().unwrap()]).ok();
    assert!(
        out.stdout.contains("vm1") && out.stdout.contains("0x77"),
        "{}",
        out.stdout
    );
    assert_eq!(
        sharedisk(&["pr", "show", "--state", "/nonexistent.pr"]).code,
        1
    );
}

#[test]
fn config_check_prints_or_names_the_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path());
    let out = sharedisk(&["config", "check", cfg.to_str().unwrap()]).ok();
    assert!(out.stdout.contains("OK"), "{}", out.stdout);
    assert!(out.stdout.contains("vm3"), "{}", out.stdout);
    assert!(out.stdout.contains("0660"), "{}", out.stdout);
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[image]\npath = \"/x\"\n\n[[guest]]\nname = \"vm1\"\nqueus = 2\n",
    )
    .unwrap();
    let out = sharedisk(&["config", "check", bad.to_str().unwrap()]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains(&format!("{}:6:", bad.display())) && out.stderr.contains("queus"),
        "{}",
        out.stderr
    );
    // A flag that contradicts the file stops the start with both named.
    let out = sharedisk(&[
        "serve",
        "--config",
        cfg.to_str().unwrap(),
        "--socket-dir",
        "/elsewhere",
    ]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("--socket-dir") && out.stderr.contains("server.socket_dir"),
        "{}",
        out.stderr
    );
}

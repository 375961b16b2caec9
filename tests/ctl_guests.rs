//! Guests added and removed at run time with `sharedisk ctl guest add|remove`, through the
//! daemon binary: limits, a connected guest needs --force (which disconnects it), registrations
//! stay, and the changes survive a restart.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::blkio_client::BlkClient;
use common::ctl::{ctl, ctl_json};
use common::process::DaemonProcess;
use common::scsi_client::*;

fn names(guests: &serde_json::Value) -> Vec<String> {
    guests["guests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn guests_come_and_go_at_run_time_and_stay_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut d =
        DaemonProcess::start_args(dir.path(), &["vm1", "vm2"], "64M", &["--max-shares", "3"]);
    let sock = d.control();

    let after = ctl_json(&sock, &["guest", "add", "vm3", "--read-only"]);
    assert_eq!(names(&after), ["vm1", "vm2", "vm3"]);
    assert_eq!(after["guests"][2]["read_only"], true);
    let mut b3 = BlkClient::connect_read_only(&d.blk("vm3")).expect("vm3 is served");
    assert!(b3.read_only());
    assert_eq!(b3.read(0, 512).unwrap(), vec![0; 512]);
    drop(b3);
    assert!(d.scsi("vm3").exists());

    let full = ctl(&sock, &["guest", "add", "vm4"]);
    assert_eq!(full.code, 1);
    assert!(full.stderr.contains("max-shares"), "{}", full.stderr);
    assert_eq!(ctl(&sock, &["guest", "add", "vm3"]).code, 1);
    assert_eq!(ctl(&sock, &["guest", "add", "a/b"]).code, 2);
    assert_eq!(ctl(&sock, &["guest", "remove", "vm9"]).code, 1);

    // vm2 registers, keeps its blk device open: removal needs --force and disconnects it.
    let mut s2 = ScsiClient::connect(&d.scsi("vm2"));
    s2.drain_ua();
    assert!(s2.prout(SA_REGISTER, 0, 0, 0x22, false).is_good());
    drop(s2);
    let mut b2 = BlkClient::connect(&d.blk("vm2")).unwrap();
    b2.write(0, &[2; 512]).unwrap();
    let refused = ctl(&sock, &["guest", "remove", "vm2"]);
    assert_eq!(refused.code, 1);
    assert!(refused.stderr.contains("--force"), "{}", refused.stderr);
    let after = ctl_json(&sock, &["guest", "remove", "vm2", "--force"]);
    assert_eq!(names(&after), ["vm1", "vm3"]);
    assert!(!d.blk("vm2").exists() && !d.scsi("vm2").exists());
    let log = d.log();
    assert!(
        log.contains("vm2-blk: frontend disconnected") || log.contains("vm2-blk: connection ended"),
        "vm2 was disconnected: {log}"
    );
    drop(b2);
    // Registrations are PR state: they stay until cleared.
    let pr = ctl_json(&sock, &["pr", "show"]);
    assert_eq!(pr["registrations"][0]["guest"], "vm2");
    // Room again under max-shares.
    ctl_json(&sock, &["guest", "add", "vm4"]);
    ctl_json(&sock, &["guest", "remove", "vm4"]);

    // A restart with the same command line serves the guests as changed at run time.
    let image = d.image.clone();
    let socket_dir = d.socket_dir.clone();
    d.guests = vec!["vm1".into(), "vm3".into()];
    d.stop();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sharedisk"))
        .args([
            "serve",
            "--guests",
            "vm1,vm2",
            "--max-shares",
            "3",
            "--image",
        ])
        .arg(&image)
        .arg("--socket-dir")
        .arg(&socket_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("restart.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "the daemon did not restart");
        assert!(child.try_wait().unwrap().is_none(), "the daemon exited");
        std::thread::sleep(Duration::from_millis(20));
    }
    let guests = ctl_json(&sock, &["guests"]);
    assert_eq!(names(&guests), ["vm1", "vm3"]);
    assert_eq!(guests["guests"][1]["read_only"], true);
    assert!(!socket_dir.join("vm2-blk.sock").exists());
    assert!(BlkClient::connect_read_only(&socket_dir.join("vm3-blk.sock")).is_ok());
    let pr = ctl_json(&sock, &["pr", "show"]);
    assert_eq!(pr["registrations"][0]["key"], "0x22");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

//! The demo: the seeds' two persistent reservation flows, narrated. Run it with
//! `qemu-scripts/demo.sh`, which installs what it needs and cleans up, also on Ctrl-C.

mod common;

use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;

use common::flows::{self, Narrator};
use common::process::DaemonProcess;

fn main() -> ExitCode {
    let dir = std::env::var_os("SHAREDISK_DEMO_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("sharedisk-demo-{}", std::process::id()))
        });
    std::fs::create_dir_all(&dir).expect("demo directory");
    // Guest consoles and QEMU chatter go to a log; the terminal gets the story.
    let log_path = dir.join("guests.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    // SAFETY: dup2 onto our own stderr descriptor; `log` stays open until exit.
    unsafe { libc::dup2(log.as_raw_fd(), 2) };

    println!(
        "sharedisk demo: one disk image, shared by QEMU guests with SCSI-3 persistent reservations"
    );
    println!("  work directory: {}", dir.display());
    common::guest::ensure_guest_images();
    let accel = std::process::Command::new("bash")
        .arg(common::guest::repo_root().join("qemu-scripts/accel.sh"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!("  accelerator: {accel} (SHAREDISK_ACCEL=kvm|tcg forces one)");
    let (major, minor) = common::guest::qemu_version();
    println!(
        "  QEMU: {} ({major}.{minor}; SHAREDISK_QEMU names another)",
        common::guest::qemu_binary()
    );

    let mut d = DaemonProcess::start(&dir, &["vm1", "vm2", "vm3"], "256M");
    println!(
        "  daemon: sharedisk serve --image {} --size 256M --socket-dir {} --guests vm1,vm2,vm3",
        d.image.display(),
        d.socket_dir.display()
    );
    let mut n = Narrator::default();
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        flows::failover(&mut n, &d);
        flows::one_writer(&mut n, &d);
    }));
    d.stop();
    if run.is_err() {
        n.check("the demo ran to the end (see the log)", false);
    }
    let ok = n.summary();
    if !ok {
        println!(
            "guest consoles and daemon log: {} and {}",
            log_path.display(),
            dir.join("daemon.log").display()
        );
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

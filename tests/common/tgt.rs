//! Debian's tgt (`tgtd`, package tgt), the yardstick iSCSI target: one target node serving an
//! image file at LUN 1 (rdwr backing store, its default) on a loopback portal, for the
//! conformance table and the benchmark beside sharedisk's.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::iscsi_client::free_port;

/// A running `tgtd`; killed when dropped.
pub struct Tgt {
    pub child: Child,
    pub addr: SocketAddr,
    pub iqn: String,
}

/// tgt serves the image at this LUN (tgtd keeps LUN 0 for its own controller).
pub const LUN: u8 = 1;

impl Tgt {
    /// tgtd serving `image` as target `iqn`; `None` (and why, printed) when it cannot run here:
    /// not root, not installed, or tgtadm could not set the target up.
    pub fn start(image: &Path, iqn: &str) -> Option<Tgt> {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 || Command::new("tgtd").arg("--help").output().is_err() {
            println!("tgt: not run (it needs root and Debian's tgt installed)");
            return None;
        }
        let port = free_port();
        // tgtadm takes control ports up to 32767 only.
        let control = (std::process::id() % 30_000 + 1000).to_string();
        let child = Command::new("tgtd")
            .args(["-f", "-C", &control, "--iscsi"])
            .arg(format!("portal=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let tgt = Tgt {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            iqn: iqn.to_string(),
        };
        // tgtd takes a moment to listen on its control port: each step is tried for 5 s.
        let adm = |args: &[&str]| {
            (0..50).any(|_| {
                let ok = Command::new("tgtadm")
                    .args(["-C", &control, "--lld", "iscsi"])
                    .args(args)
                    .status()
                    .is_ok_and(|s| s.success());
                if !ok {
                    std::thread::sleep(Duration::from_millis(100));
                }
                ok
            })
        };
        let image = image.to_string_lossy();
        let lun = LUN.to_string();
        let ok = adm(&["--op", "new", "--mode", "target", "--tid", "1", "-T", iqn])
            && adm(&[
                "--op",
                "new",
                "--mode",
                "logicalunit",
                "--tid",
                "1",
                "--lun",
                &lun,
                "-b",
                &image,
            ])
            && adm(&[
                "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL",
            ]);
        if !ok {
            println!("tgt: not run (tgtadm could not set up the target)");
            return None;
        }
        Some(tgt)
    }

    /// The target's URL for libiscsi's tools: `iscsi://127.0.0.1:PORT/IQN/1`.
    pub fn url(&self) -> String {
        format!("iscsi://{}/{}/{LUN}", self.addr, self.iqn)
    }
}

impl Drop for Tgt {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

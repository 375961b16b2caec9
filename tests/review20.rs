//! Review of issue 20 (fresh reviewer): tests through the real binary that FAIL on the merged
//! code, each naming the promise it breaks. Not ignored: the lead fixes the code, then these pass.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::ctl::ctl_json;
use common::process::DaemonProcess;

/// `sh -c SCRIPT` as uid/gid 65534 (another local user), no supplementary groups.
fn as_other_user(script: &str) {
    let st = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .args(["sh", "-c", script])
        .status()
        .expect("run setpriv");
    assert!(st.success(), "{script}");
}

fn guest_names(control: &Path) -> Vec<String> {
    let g = ctl_json(control, &["guests"]);
    let list = g["guests"].as_array().cloned().unwrap_or_default();
    list.iter()
        .filter_map(|x| x["name"].as_str().map(str::to_owned))
        .collect()
}

/// Breaks "the state directory's ownership and mode are checked at start ... since whoever may
/// write in it may replace the state the daemon trusts": a sticky world-writable directory passes
/// the check (and the refusal's message even suggests `chmod +t`), yet in it any local user may
/// *create* every name the daemon has not created yet: `<state>`, `<state>.guests`, the `.tmp`
/// copies. Here another user plants `disk.img.pr.guests` before the first start, and the daemon
/// serves (and creates sockets for) a guest that user chose.
#[test]
fn review_another_user_cannot_plant_the_guests_file_in_a_sticky_state_dir() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let planted = dir.path().join("disk.img.pr.guests");
    as_other_user(&format!(
        "printf '%s' '{{\"added\":[{{\"name\":\"intruder\",\"read_only\":false,\"queues\":1,\
         \"scsi\":true}}]}}' > '{}'",
        planted.display()
    ));
    // The daemon either refuses to start or ignores a file it did not make; it must never
    // serve the guest another user put there.
    let started = std::panic::catch_unwind(|| DaemonProcess::start(dir.path(), &["vm1"], "16M"));
    let Ok(mut d) = started else {
        return; // refused to start: fine
    };
    let names = guest_names(&d.control());
    d.stop();
    assert!(
        !names.iter().any(|n| n == "intruder"),
        "the daemon serves a guest planted by uid 65534 in its state directory: {names:?}"
    );
}

/// Breaks "slow clients cannot keep a real scrape out" (issue 20: a hostile client must not
/// starve Prometheus): a connection is not evictable during its first 250 ms
/// (`EVICTION_GRACE`, src/ops/metrics_http.rs), so a local client that opens a new, silent
/// connection every few milliseconds keeps all 8 slots younger than that: each of its
/// connections evicts its own oldest one the moment that one becomes evictable, and a real
/// scrape arriving in between finds no slot it may take and is closed unanswered. No slow
/// reads, no bytes sent: about 1,000 connects a second from one unprivileged process.
#[test]
fn review_a_connect_flood_does_not_keep_a_scrape_out() {
    use std::net::{SocketAddr, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", common::http::free_port())
        .parse()
        .unwrap();
    let _d = DaemonProcess::start_args(
        dir.path(),
        &["vm1"],
        "16M",
        &["--metrics-listen", &listen.to_string()],
    );
    assert_eq!(common::http::get(listen, "/metrics").unwrap().0, 200);
    let stop = AtomicBool::new(false);
    let failed = std::thread::scope(|s| {
        s.spawn(|| {
            // Connections kept open (silent), the oldest dropped beyond 64.
            let mut held = std::collections::VecDeque::new();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(c) = TcpStream::connect(listen) {
                    held.push_back(c);
                }
                if held.len() > 64 {
                    held.pop_front();
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        std::thread::sleep(Duration::from_millis(500));
        let mut failed = Vec::new();
        for i in 0..10 {
            match common::http::get(listen, "/metrics") {
                Ok((200, _, body)) if body.contains("sharedisk_build_info") => {}
                other => failed.push(format!("scrape {i}: {other:?}")),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        stop.store(true, Ordering::Relaxed);
        failed
    });
    assert!(
        failed.is_empty(),
        "{} of 10 scrapes failed during a connect flood: {failed:?}",
        failed.len()
    );
}

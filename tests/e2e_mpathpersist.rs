//! `mpathpersist` (Debian's multipath-tools 0.9.4, unmodified) on a dm-multipath map over
//! node1's /dev/sda (one path): register, reserve, read keys, read the reservation; node2, with
//! plain sg_persist, registers and preempts node1. Each step is checked with `sg_persist` on both
//! nodes, with the daemon's view (`sharedisk ctl pr show`) and with writes against the image.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster_vm::{
    image_bytes, keys, reservation, sg_persist, wait_guest, write_block, ClusterLab,
};
use common::ctl::ctl;
use common::guest::Guest;

const MAP: &str = "/dev/mapper/mpatha";
const WERO: &str = "Write Exclusive, registrants only";

const MULTIPATH_CONF: &str = "defaults {\\n    user_friendly_names yes\\n    find_multipaths no\\n    \
reservation_key file\\n    no_path_retry fail\\n}\\nblacklist {\\n    devnode \\\"^(vd|nvme)\\\"\\n}\\n";

/// `g` writes a fresh 4 KiB block through `dev`; asserts whether it may, in the guest and on the
/// image.
#[track_caller]
fn check_write(image: &Path, g: &Guest, dev: &str, block: u64, allowed: bool) {
    let tag = format!("{}-{block}", g.name());
    let ok = write_block(g, dev, block, &tag);
    let on_image = image_bytes(image, block * 4096, tag.len()) == tag.as_bytes();
    assert_eq!(
        (ok, on_image),
        (allowed, allowed),
        "{}'s write through {dev} (block {block}): dd ok={ok}, on the image={on_image}",
        g.name()
    );
}

/// (guest, key) of every registration, and the holder, as the daemon sees them.
fn daemon_view(lab: &ClusterLab) -> (Vec<(String, String)>, Option<String>) {
    let pr = ctl(&lab.daemon.control(), &["--json", "pr", "show"])
        .ok()
        .json();
    let regs = pr["registrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["guest"].as_str().unwrap().to_string(),
                r["key"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let holder = pr["reservation"]["holder"].as_str().map(str::to_string);
    (regs, holder)
}

#[test]
fn mpathpersist_on_a_multipath_map() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let lab = ClusterLab::start(dir.path(), 2, "64M");
    let boot = started.elapsed();
    let image = lab.daemon.image.clone();
    let (n1, n2) = (lab.node(1), lab.node(2));

    // dm-multipath over /dev/sda, multipathd as the package ships it.
    n1.sh(&format!(
        "printf '{MULTIPATH_CONF}' > /etc/multipath.conf && cat /etc/multipath.conf"
    ));
    n1.sh("multipathd </dev/null >/dev/null 2>&1");
    wait_guest(n1, &format!("test -b {MAP}"), Duration::from_secs(60));
    let topo = n1.sh("multipath -ll");
    assert!(
        topo.contains("mpatha") && topo.contains(" sda ") && topo.contains("active"),
        "{topo}"
    );

    // Register and reserve through mpathpersist.
    n1.sh(&format!(
        "mpathpersist --out --register --param-sark=0xabc1 {MAP}"
    ));
    assert_eq!(keys(n1, "/dev/sda"), vec!["abc1"]);
    assert_eq!(keys(n2, "/dev/sda"), vec!["abc1"]);
    n1.sh(&format!(
        "mpathpersist --out --reserve --param-rk=0xabc1 --prout-type=5 {MAP}"
    ));
    let out = n1.sh(&format!("mpathpersist --in --read-keys {MAP}"));
    assert!(
        out.contains("0xabc1") && out.contains("1 registered reservation key"),
        "{out}"
    );
    let out = n1.sh(&format!("mpathpersist --in --read-reservation {MAP}"));
    assert!(
        out.contains("Key = 0xabc1") || out.contains("Key=0xabc1"),
        "{out}"
    );
    assert!(out.contains(WERO), "{out}");
    let (holder, ty) = reservation(n2, "/dev/sda").expect("reserved");
    assert_eq!(holder, "abc1");
    assert!(ty.contains(WERO), "{ty}");
    assert_eq!(
        daemon_view(&lab),
        (
            vec![("node1".to_string(), "0xabc1".to_string())],
            Some("node1".to_string())
        )
    );
    check_write(&image, n1, MAP, 10, true);
    check_write(&image, n2, "/dev/sda", 11, false);
    check_write(&image, n2, "/dev/vda", 12, false);

    // node2 registers and preempts node1's registration (and with it the reservation).
    sg_persist(n2, "-n -o -G -S 0xbbb2 /dev/sda");
    sg_persist(n2, "-n -o -P -K 0xbbb2 -S 0xabc1 -T 5 /dev/sda");
    let out = n1.sh(&format!("mpathpersist --in --read-keys {MAP}"));
    assert!(out.contains("0xbbb2") && !out.contains("0xabc1"), "{out}");
    let out = n1.sh(&format!("mpathpersist --in --read-reservation {MAP}"));
    assert!(out.contains("0xbbb2") && out.contains(WERO), "{out}");
    assert_eq!(keys(n1, "/dev/sda"), vec!["bbb2"]);
    assert_eq!(
        daemon_view(&lab),
        (
            vec![("node2".to_string(), "0xbbb2".to_string())],
            Some("node2".to_string())
        )
    );
    check_write(&image, n1, MAP, 13, false);
    check_write(&image, n1, "/dev/vda", 14, false);
    check_write(&image, n2, "/dev/sda", 15, true);
    // The map's path stays up: a reservation conflict is not a path failure.
    let topo = n1.sh("multipath -ll");
    assert!(
        topo.contains("active") && !topo.contains("failed"),
        "{topo}"
    );

    drop(lab);
    eprintln!(
        "[mpathpersist] boot of 2 nodes {:.1}s, whole test {:.1}s",
        boot.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
